//! The server over real HTTP on loopback, with the real engine and the tiny model.

use std::time::{Duration, Instant};

use burn::backend::Flex;
use burn::tensor::FloatDType;
use futures::StreamExt;
use serde_json::{json, Value};
use waypoint::engine::{EngineHandle, RunningEngine};
use waypoint::generate::generate;
use waypoint::model::{KvCacheConfig, PagedKvCache};
use waypoint::sampling::SamplingParams;
use waypoint::server::ServerConfig;

#[path = "common/tiny.rs"]
mod tiny;
use tiny::TinyEngine;

struct TestServer {
    url: String,
    engine: EngineHandle,
    _running: RunningEngine,
}

/// Starts the tiny model behind the HTTP API on an ephemeral port.
async fn start(num_blocks: usize, max_num_seqs: usize) -> TestServer {
    let running = TinyEngine {
        num_blocks,
        max_num_seqs,
        max_waiting_requests: 1000,
        max_model_len: None,
    }
    .start();
    let url = tiny::serve(&running.handle, ServerConfig::default()).await;
    TestServer {
        url,
        engine: running.handle.clone(),
        _running: running,
    }
}

async fn post(url: &str, body: Value) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(url)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

/// SSE `data:` payloads of a whole streamed response.
async fn stream_events(url: &str, body: Value) -> Vec<String> {
    let response = reqwest::Client::new()
        .post(url)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    text.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(str::to_string)
        .collect()
}

/// Waits until the engine holds nothing: no request, no output state, no block in use.
async fn assert_engine_drains(engine: &EngineHandle) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stats = engine.stats().await.unwrap();
        if stats.scheduler_empty && stats.live_outputs == 0 && stats.blocks_in_use == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "engine still holds state: {stats:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_and_chat_work_streaming_and_not() {
    let server = start(512, 8).await;
    let (status, body) = post(
        &format!("{}/v1/completions", server.url),
        json!({"prompt": "Hello", "max_tokens": 7, "temperature": 0, "ignore_eos": true}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["usage"]["completion_tokens"], 7);
    assert_eq!(body["choices"][0]["finish_reason"], "length");

    let events = stream_events(
        &format!("{}/v1/chat/completions", server.url),
        json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 5, "ignore_eos": true,
               "stream": true, "stream_options": {"include_usage": true}}),
    )
    .await;
    assert_eq!(events.last().unwrap(), "[DONE]");
    let usage: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(usage["usage"]["completion_tokens"], 5);

    // The same long prompt twice: the second is served from the prefix cache.
    let prompt = "a prompt long enough to fill several four-token cache blocks";
    let body = json!({"prompt": prompt, "max_tokens": 2, "temperature": 0});
    let (_, first) = post(&format!("{}/v1/completions", server.url), body.clone()).await;
    let (_, second) = post(&format!("{}/v1/completions", server.url), body).await;
    assert_eq!(first["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
    let cached = second["usage"]["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap();
    assert!(cached >= 48, "{second}");
    assert_eq!(first["choices"][0]["text"], second["choices"][0]["text"]);

    // Token-id prompts outside the vocabulary and prompts beyond the context are 400s.
    let (status, body) = post(
        &format!("{}/v1/completions", server.url),
        json!({"prompt": [1, 2, 99999]}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["param"], "prompt");
    let long: Vec<u32> = vec![5; 3000];
    let (status, body) = post(
        &format!("{}/v1/completions", server.url),
        json!({"prompt": long}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_engine_drains(&server.engine).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_concurrent_streams_all_finish_with_the_right_counts() {
    let server = start(2048, 64).await;
    let url = format!("{}/v1/completions", server.url);
    let requests = (0..64).map(|i| {
        let url = url.clone();
        async move {
            let max_tokens = 3 + i % 13;
            let events = stream_events(
                &url,
                json!({"prompt": format!("request {i}"), "max_tokens": max_tokens, "ignore_eos": true,
                       "temperature": 0.8, "seed": i, "stream": true, "stream_options": {"include_usage": true}}),
            )
            .await;
            assert_eq!(events.last().unwrap(), "[DONE]");
            let usage: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
            assert_eq!(usage["usage"]["completion_tokens"], max_tokens, "request {i}");
        }
    });
    futures::future::join_all(requests).await;
    assert_engine_drains(&server.engine).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_leaving_mid_stream_aborts_its_request_and_frees_its_blocks() {
    let server = start(512, 8).await;
    let response = reqwest::Client::new()
        .post(format!("{}/v1/completions", server.url))
        .json(&json!({"prompt": "a long one", "max_tokens": 1500, "ignore_eos": true, "stream": true}))
        .send()
        .await
        .unwrap();
    let mut body = response.bytes_stream();
    let first = body.next().await.unwrap().unwrap();
    assert!(!first.is_empty());
    let stats = server.engine.stats().await.unwrap();
    assert!(stats.running + stats.waiting >= 1, "{stats:?}");
    drop(body);
    assert_engine_drains(&server.engine).await;

    // Non-streaming too: the handler future is dropped with the connection. A raw socket
    // that sends the request and hangs up long before 2000 tokens can be generated. Only a
    // server that does not answer half-closed clients can tell that this one left (with
    // `half_close`, the request would run until its answer is written).
    let url = tiny::serve_with(
        &server.engine,
        ServerConfig::default(),
        waypoint::server::ConnectionConfig {
            half_close: false,
            ..Default::default()
        },
    )
    .await;
    let aborted_before = server.engine.stats().await.unwrap().aborted;
    let body =
        json!({"prompt": "another long one", "max_tokens": 2000, "ignore_eos": true}).to_string();
    let address = url.trim_start_matches("http://").to_string();
    let mut socket = tokio::net::TcpStream::connect(&address).await.unwrap();
    let request = format!(
        "POST /v1/completions HTTP/1.1\r\nhost: {address}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    tokio::io::AsyncWriteExt::write_all(&mut socket, request.as_bytes())
        .await
        .unwrap();
    // Hang up once the engine holds the request (a fixed sleep lost the race on a loaded
    // machine: a socket closed before the server read the request never reaches the engine).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let stats = server.engine.stats().await.unwrap();
        if stats.running + stats.waiting >= 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the request never reached the engine: {stats:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    drop(socket);
    assert_engine_drains(&server.engine).await;
    assert_eq!(
        server.engine.stats().await.unwrap().aborted,
        aborted_before + 1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn greedy_output_through_the_server_equals_generate() {
    let server = start(512, 8).await;
    let prompt = "The quick brown fox";
    let (status, body) = post(
        &format!("{}/v1/completions", server.url),
        json!({"prompt": prompt, "max_tokens": 24, "temperature": 0}),
    )
    .await;
    assert_eq!(status, 200, "{body}");

    let files = waypoint::loader::open("tiny").unwrap();
    let (model, tokenizer, _) = files
        .load::<Flex>(&Default::default(), FloatDType::F32)
        .unwrap();
    let mut cache = PagedKvCache::new(
        KvCacheConfig::with_blocks(16, 8),
        model.config(),
        &Default::default(),
    );
    let ids = tokenizer.encode(prompt, true).unwrap();
    let params = SamplingParams {
        max_tokens: 24,
        ..SamplingParams::greedy()
    };
    let tokenizer = std::sync::Arc::new(tokenizer);
    let generation = generate(&model, &tokenizer, &mut cache, &ids, &params, |_| {}).unwrap();
    assert_eq!(body["choices"][0]["text"], generation.text);
    assert_eq!(
        body["usage"]["completion_tokens"],
        generation.token_ids.len()
    );
}

/// Every stop rule, through `waypoint generate`'s loop and through the server, on the same
/// prompts and parameters: the same text, the same number of tokens, the same reason. Both
/// drive the one output processor; this shows that nothing else between them stops a
/// request differently.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_stop_rule_ends_generate_and_serve_alike() {
    let server = start(512, 8).await;
    let files = waypoint::loader::open("tiny").unwrap();
    let (model, tokenizer, _) = files
        .load::<Flex>(&Default::default(), FloatDType::F32)
        .unwrap();
    let tokenizer = std::sync::Arc::new(tokenizer);
    // As many slots as the server's pool (512 blocks of 4): the same longest sequence.
    let pool = KvCacheConfig::with_blocks(16, 128);
    let run_generate = |prompt: &str, params: &SamplingParams| {
        let mut cache = PagedKvCache::new(pool, model.config(), &Default::default());
        let ids = tokenizer.encode(prompt, true).unwrap();
        generate(&model, &tokenizer, &mut cache, &ids, params, |_| {}).unwrap()
    };

    // What the model says when nothing stops it, to pick stops it will meet.
    let prompt = "The quick brown fox";
    let free = run_generate(
        prompt,
        &SamplingParams {
            max_tokens: 12,
            ignore_eos: true,
            ..SamplingParams::greedy()
        },
    );
    let chars: Vec<char> = free.text.chars().collect();
    assert!(chars.len() >= 6, "{:?}", free.text);
    let stop_string: String = chars[3..5].iter().collect();
    let long_prompt = "a".repeat(2030);

    let cases: Vec<(&str, Value, SamplingParams)> = vec![
        (
            prompt,
            json!({"max_tokens": 7, "ignore_eos": true}),
            SamplingParams {
                max_tokens: 7,
                ignore_eos: true,
                ..SamplingParams::greedy()
            },
        ),
        (
            prompt,
            json!({"max_tokens": 12, "stop_token_ids": [free.token_ids[3]]}),
            SamplingParams {
                max_tokens: 12,
                stop_token_ids: vec![free.token_ids[3]],
                ..SamplingParams::greedy()
            },
        ),
        (
            prompt,
            json!({"max_tokens": 12, "stop_token_ids": [free.token_ids[1]], "min_tokens": 4}),
            SamplingParams {
                max_tokens: 12,
                stop_token_ids: vec![free.token_ids[1]],
                min_tokens: 4,
                ..SamplingParams::greedy()
            },
        ),
        (
            prompt,
            json!({"max_tokens": 12, "stop": [stop_string]}),
            SamplingParams {
                max_tokens: 12,
                stop: vec![stop_string.clone()],
                ..SamplingParams::greedy()
            },
        ),
        (
            prompt,
            json!({"max_tokens": 40}),
            SamplingParams {
                max_tokens: 40,
                ..SamplingParams::greedy()
            },
        ),
        // No max_tokens: the context's end (2048 tokens) ends it, in both.
        (
            &long_prompt,
            json!({"ignore_eos": true}),
            SamplingParams {
                ignore_eos: true,
                ..SamplingParams::greedy()
            },
        ),
    ];
    let url = format!("{}/v1/completions", server.url);
    for (prompt, extra, params) in cases {
        let mut body = json!({"prompt": prompt, "temperature": 0});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let (status, served) = post(&url, body).await;
        assert_eq!(status, 200, "{served}");
        let generated = run_generate(prompt, &params);
        let choice = &served["choices"][0];
        assert_eq!(choice["text"], generated.text, "{extra}");
        assert_eq!(
            choice["finish_reason"],
            generated.finish_reason.as_str(),
            "{extra}"
        );
        assert_eq!(
            served["usage"]["completion_tokens"],
            generated.token_ids.len(),
            "{extra}"
        );
    }
    assert_engine_drains(&server.engine).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tiny_pool_preempts_yet_every_request_finishes_correctly() {
    // 24 blocks of 4 tokens (96 slots) for 6 requests of ~90 tokens each: any two that overlap
    // cannot both finish without a preemption.
    let server = start(24, 6).await;
    let url = format!("{}/v1/completions", server.url);
    let prompts: Vec<String> = (0..6)
        .map(|i| format!("prompt number {i}: tell me"))
        .collect();
    let body =
        |p: &str| json!({"prompt": p, "max_tokens": 80, "temperature": 0, "ignore_eos": true});
    let together = futures::future::join_all(prompts.iter().map(|p| post(&url, body(p)))).await;
    let preemptions = server.engine.stats().await.unwrap().total_preemptions;
    assert!(preemptions > 0, "the pool was meant to be too small");
    for (p, (status, got)) in prompts.iter().zip(together) {
        assert_eq!(status, 200, "{got}");
        let (_, alone) = post(&url, body(p)).await;
        assert_eq!(
            got["choices"][0]["text"], alone["choices"][0]["text"],
            "{p}"
        );
    }
    assert_engine_drains(&server.engine).await;
}
