//! The built-in tiny model behind the real engine, and the HTTP API in front of it.

use std::sync::Arc;

use burn::backend::Flex;
use waypoint::engine::{
    BurnRunner, EngineConfig, EngineHandle, ModelInfo, RunningEngine, SchedulerConfig,
};
use waypoint::model::{KvCacheConfig, Llama, ModelBackend, PagedKvCache};
use waypoint::server::{AppState, ServerConfig};

/// Block size of every tiny engine: small, so a few tokens already span blocks.
pub const BLOCK_SIZE: usize = 4;

/// How the tiny engine is sized.
#[derive(Clone, Copy, Debug)]
pub struct TinyEngine {
    /// KV blocks of [`BLOCK_SIZE`] tokens.
    pub num_blocks: usize,
    pub max_num_seqs: usize,
    pub max_waiting_requests: usize,
    /// The context limit; `None` for the model's own.
    pub max_model_len: Option<usize>,
}

impl TinyEngine {
    /// Starts the engine on flex (a 256-token step budget).
    pub fn start(self) -> RunningEngine {
        self.start_on::<Flex>()
    }

    /// Starts the engine on backend `B` (a 256-token step budget).
    pub fn start_on<B: ModelBackend>(self) -> RunningEngine
    where
        Llama<B>: Send,
        PagedKvCache<B>: Send,
    {
        let files = waypoint::loader::open("tiny").unwrap();
        let (model, tokenizer, name) = files
            .load::<B>(&Default::default(), burn::tensor::FloatDType::F32)
            .unwrap();
        let max_model_len = self
            .max_model_len
            .unwrap_or(model.config().max_position_embeddings);
        let mut scheduler = SchedulerConfig::new(self.num_blocks, max_model_len);
        scheduler.block_size = BLOCK_SIZE;
        scheduler.max_num_seqs = self.max_num_seqs;
        scheduler.max_num_batched_tokens = 256;
        let info = ModelInfo {
            name,
            max_context: max_model_len,
            vocab_size: model.config().vocab_size,
        };
        let pool = KvCacheConfig::with_blocks(BLOCK_SIZE, self.num_blocks);
        waypoint::engine::start(
            BurnRunner::new(model, pool),
            Arc::new(tokenizer),
            info,
            EngineConfig {
                scheduler,
                max_waiting_requests: self.max_waiting_requests,
                step_tracing: None,
            },
        )
        .unwrap()
    }
}

/// Serves `engine` over HTTP on an ephemeral loopback port until the test ends; returns the
/// base URL (`http://127.0.0.1:PORT`).
#[allow(dead_code)] // only some of the test binaries that include this file use it
pub async fn serve(engine: &EngineHandle, config: ServerConfig) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let state = AppState::new(engine.clone(), config);
    tokio::spawn(async move {
        waypoint::server::serve(listener, state, std::future::pending())
            .await
            .unwrap();
    });
    url
}

/// [`serve`] with chosen connection settings.
#[allow(dead_code)] // only some of the test binaries that include this file use it
pub async fn serve_with(
    engine: &EngineHandle,
    config: ServerConfig,
    connections: waypoint::server::ConnectionConfig,
) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let state = AppState::new(engine.clone(), config);
    tokio::spawn(async move {
        waypoint::server::serve_connections(
            listener,
            std::future::ready(Some(state)),
            std::future::pending(),
            connections,
        )
        .await
        .unwrap();
    });
    url
}
