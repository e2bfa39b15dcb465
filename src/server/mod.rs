//! The HTTP API: OpenAI-compatible completions and chat completions, streamed or not, over
//! axum.
//!
//! A request goes through these steps, each in its own file:
//!
//! 1. [`extract`]: the body is read (at most [`ServerConfig::max_request_bytes`]) and parsed
//!    into an [`openai`] request type; every rejection is an [`ApiError`], so clients always
//!    get OpenAI's error JSON.
//! 2. [`validation`]: the request becomes an [`EngineRequest`](crate::engine::EngineRequest)
//!    (prompt encoded or chat template rendered, parameters checked, `max_tokens` fitted
//!    into the context), or a 400 naming the field.
//! 3. `routes`: the request is submitted to the engine and its events are collected into
//!    one answer, or streamed as server-sent events (`sse`), both shaped by `output`.
//!
//! | Route | |
//! |---|---|
//! | `POST /v1/completions` | text completion |
//! | `POST /v1/chat/completions` | chat completion |
//! | `GET /v1/models` | the served model |
//! | `GET /health` | 200 when ready; 503 while loading, shutting down, or after the model failed for good |
//! | `GET /version` | the server's version |
//! | `GET /metrics` | Prometheus metrics (`docs/METRICS.md`) |
//!
//! With an API key configured, the `/v1` routes want `Authorization: Bearer <key>`;
//! `/health`, `/version` and `/metrics` stay open for probes and scrapers.
//!
//! A client that disconnects aborts its request: the engine's
//! [`RequestStream`](crate::engine::RequestStream) lives in the handler future (non-streaming)
//! or the response body (streaming), hyper drops either when the connection closes, and
//! dropping the stream sends the engine an abort.
//!
//! This module knows the engine only through [`EngineHandle`]; the engine knows nothing of
//! HTTP.

pub mod debug;
pub mod error;
pub mod extract;
pub mod journey;
pub mod listener;
pub mod openai;
pub mod output;
pub mod parse_errors;
pub mod routes;
pub mod shutdown;
pub mod sse;
pub mod validation;

#[cfg(test)]
mod tests;

use std::fmt;
use std::future::Future;
use std::io;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
use tokio::net::TcpListener;

use crate::engine::EngineHandle;

pub use error::ApiError;
pub use listener::{serve_connections, ConnectionConfig};

/// How the HTTP server behaves. The served model's name comes from the engine's
/// [`ModelInfo`](crate::engine::ModelInfo), so that there is one source for it.
#[derive(Clone)]
pub struct ServerConfig {
    /// Address to bind. By default `127.0.0.1`, so that exposing the server is a choice.
    pub host: String,
    /// Port to bind. By default 8000, as vLLM.
    pub port: u16,
    /// When set, `/v1` routes require `Authorization: Bearer <api_key>`. By default none.
    pub api_key: Option<String>,
    /// Largest request body accepted, in bytes; larger ones get 413. By default 4 MiB,
    /// which holds a 128k-token prompt sent as token ids (about 7 bytes per id) with
    /// room to spare, while bounding what one request can make the server buffer.
    pub max_request_bytes: usize,
    /// `max_tokens` for requests that do not set it: this, or what the context has left if
    /// that is less. By default [`DEFAULT_MAX_TOKENS`](crate::sampling::DEFAULT_MAX_TOKENS).
    pub default_max_tokens: usize,
    /// Fraction of requests whose journey is traced, in [0, 1]; `None` turns journey tracing
    /// off. A request header `x-waypoint-trace: 1` forces it on for that request while
    /// tracing is enabled. By default off.
    pub journey_sample_rate: Option<f64>,
    /// Tail retention's latency rules (`--journey-tracing-keep`): a request the head draw
    /// missed is still exported if it fails, is aborted or preempted, or breaks one of
    /// these. By default [`DEFAULT_KEEP_RULES`](crate::engine::retention::DEFAULT_KEEP_RULES).
    pub journey_keep: crate::engine::retention::KeepRules,
    /// Whether tail retention may keep a request whose caller sent an unsampled
    /// `traceparent` (by default not: the caller's decision is respected).
    pub journey_keep_unsampled_parents: bool,
    /// Step tracing's rates at start (`None`: step tracing is off), which
    /// `PUT /debug/tracing` may change while serving.
    pub step_tracing: Option<crate::engine::StepTracingConfig>,
    /// Serve `/debug/*` (`--enable-debug-api`). By default off.
    pub enable_debug_api: bool,
    /// The key `/debug/*` requires (`--admin-api-key`); without one, the API key.
    pub admin_api_key: Option<String>,
    /// Jaeger's UI, for the debug page's links to traces (`--debug-jaeger-url`).
    pub jaeger_url: Option<String>,
    /// How long a request body may take to arrive, before the time its length needs at
    /// [`body_min_rate`](Self::body_min_rate) is added; a body that takes longer is
    /// refused with 408. By default 10 s.
    pub body_read_timeout: Duration,
    /// The slowest upload accepted, in bytes per second: a body of `n` bytes (or, without
    /// a `Content-Length`, of [`max_request_bytes`](Self::max_request_bytes)) gets
    /// `body_read_timeout + n / body_min_rate`. By default 64 KiB/s, so a client that
    /// trickles a byte a second cannot hold a connection and a handler for hours.
    pub body_min_rate: usize,
}

impl ServerConfig {
    /// How long a body of `declared` bytes (the limit if not declared) may take to arrive.
    pub fn body_deadline(&self, declared: Option<usize>) -> Duration {
        let bytes = declared.unwrap_or(self.max_request_bytes);
        let rate = self.body_min_rate.max(1) as f64;
        self.body_read_timeout + Duration::from_secs_f64(bytes as f64 / rate)
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".to_string(),
            port: 8000,
            api_key: None,
            max_request_bytes: 4 * 1024 * 1024,
            default_max_tokens: crate::sampling::DEFAULT_MAX_TOKENS,
            journey_sample_rate: None,
            journey_keep: crate::engine::retention::KeepRules::default(),
            journey_keep_unsampled_parents: false,
            step_tracing: None,
            enable_debug_api: false,
            admin_api_key: None,
            jaeger_url: None,
            body_read_timeout: Duration::from_secs(10),
            body_min_rate: 64 * 1024,
        }
    }
}

impl fmt::Debug for ServerConfig {
    // The API key must not end up in logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field(
                "admin_api_key",
                &self.admin_api_key.as_ref().map(|_| "<redacted>"),
            )
            .field("enable_debug_api", &self.enable_debug_api)
            .field("max_request_bytes", &self.max_request_bytes)
            .field("default_max_tokens", &self.default_max_tokens)
            .field("body_read_timeout", &self.body_read_timeout)
            .field("body_min_rate", &self.body_min_rate)
            .field("journey_sample_rate", &self.journey_sample_rate)
            .field("journey_keep", &format_args!("{}", self.journey_keep))
            .field(
                "journey_keep_unsampled_parents",
                &self.journey_keep_unsampled_parents,
            )
            .finish()
    }
}

/// What every handler shares.
#[derive(Clone, Debug)]
pub struct AppState {
    /// The way to the engine, its tokenizer and model facts.
    pub engine: EngineHandle,
    /// The server's configuration.
    pub config: Arc<ServerConfig>,
    /// Whether `/health` reports ready. [`AppState::new`] sets it; clear it to report
    /// "loading" (during a warm-up, say). [`serve`] clears it when shutdown begins.
    pub ready: Arc<AtomicBool>,
    /// Unix seconds when the state was built: the `created` of `/v1/models`.
    pub started_at: u64,
    /// The settings operators change while serving (`/debug/tracing`, `/debug/log-filter`).
    pub runtime: Arc<debug::RuntimeSettings>,
}

impl AppState {
    /// State for serving `engine`, ready from the start.
    pub fn new(engine: EngineHandle, config: ServerConfig) -> Self {
        Self {
            engine,
            runtime: Arc::new(debug::RuntimeSettings::new(&config)),
            config: Arc::new(config),
            ready: Arc::new(AtomicBool::new(true)),
            started_at: unix_now(),
        }
    }

    /// This state with the console's log filter, which `PUT /debug/log-filter` changes.
    pub fn with_log_filter(self, log_filter: Arc<crate::telemetry::LogFilter>) -> Self {
        self.runtime.set_log_filter(log_filter);
        self
    }
}

/// All routes, with the API-key check, the body limit and JSON errors for unknown routes
/// (404) and wrong methods (405).
pub fn router(state: AppState) -> Router {
    let v1 = Router::new()
        .route("/v1/completions", post(routes::completions))
        .route("/v1/chat/completions", post(routes::chat_completions))
        .route("/v1/models", get(routes::models))
        // A route layer, so that unknown paths are 404 rather than 401.
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            routes::require_api_key,
        ));
    Router::new()
        .route("/health", get(routes::health))
        .route("/version", get(routes::version))
        .route("/metrics", get(routes::metrics))
        .merge(v1)
        .merge(debug::router(&state))
        .fallback(routes::not_found)
        .method_not_allowed_fallback(routes::method_not_allowed)
        .layer(DefaultBodyLimit::max(state.config.max_request_bytes))
        .with_state(state)
}

/// Serves [`router`] on `listener` until `shutdown` completes, then drains: `/health` turns
/// 503, the engine refuses new work, requests in flight get the shutdown timeout to finish,
/// and connections are closed (see [`listener`]).
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    serve_once_loaded(listener, std::future::ready(Some(state)), shutdown).await
}

/// [`serve`] from before the model is loaded: until `loaded` yields the state, `GET /health`
/// answers 503 `{"status": "loading"}` and every other route a 503 error in OpenAI's shape;
/// then the full [`router`]. Binding first lets probes tell "loading" from "down". If
/// `loaded` yields `None` (loading failed), serving stops. Connection limits and shutdown
/// are [`ConnectionConfig`]'s defaults; see [`serve_connections`] to choose them.
pub async fn serve_once_loaded(
    listener: TcpListener,
    loaded: impl Future<Output = Option<AppState>> + Send + 'static,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    serve_connections(listener, loaded, shutdown, ConnectionConfig::default()).await
}

/// Seconds since the Unix epoch (0 if the clock is before it).
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}
