//! The server over real HTTP on loopback, against a fake engine.
//!
//! The fake engine is a thread that answers [`EngineCommand`]s the way the real one does:
//! it echoes the prompt's byte tokens back as output, one delta per token, up to
//! `max_tokens`, and finishes with `stop` (echo complete) or `length` (cut short). Prompts
//! containing a marker behave differently: `HANG` sends one token and then waits for an
//! abort, `FAIL` finishes with an engine error, `VANISH` drops the request without
//! finishing it, `FLOOD` sends 20 MB of deltas and then waits like `HANG`. Every submit and
//! abort is recorded for the tests to inspect. Connection limits and shutdown are tested
//! over raw TCP in `tests/connections.rs`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::engine::{
    EngineCommand, EngineHandle, EngineRequest, FinishReason, FinishedInfo, ModelInfo, StreamEvent,
    TokenLogprob,
};
use crate::tokenizer::{
    ChatTemplate, Tokenizer, TINY_IM_START_ID, TINY_NUM_BYTE_TOKENS, TINY_VOCAB_SIZE,
};

use super::{serve, serve_once_loaded, AppState, ServerConfig};

const MODEL: &str = "tiny";
const MAX_CONTEXT: usize = 64;

/// What the fake engine saw.
#[derive(Default)]
struct Record {
    submitted: Vec<EngineRequest>,
    aborted: Vec<String>,
}

struct FakeEngine {
    handle: EngineHandle,
    record: Arc<Mutex<Record>>,
}

fn fake_engine(max_waiting: usize) -> FakeEngine {
    let (commands, receiver) = std::sync::mpsc::channel::<EngineCommand>();
    let tokenizer = Arc::new(Tokenizer::tiny());
    let handle = EngineHandle::new(
        commands,
        Arc::new(AtomicUsize::new(0)),
        max_waiting,
        tokenizer.clone(),
        ModelInfo {
            name: MODEL.to_string(),
            max_context: MAX_CONTEXT,
            vocab_size: TINY_VOCAB_SIZE,
        },
    );
    let record = Arc::new(Mutex::new(Record::default()));
    let engine_record = record.clone();
    std::thread::spawn(move || {
        let mut hanging: HashMap<String, mpsc::UnboundedSender<StreamEvent>> = HashMap::new();
        // Ends when every handle and stream (each holds a sender) is gone.
        for command in receiver {
            match command {
                EngineCommand::Submit {
                    request, output, ..
                } => {
                    // Recorded before answering, so that a test that got its answer finds it.
                    engine_record
                        .lock()
                        .unwrap()
                        .submitted
                        .push(request.clone());
                    if answer(&tokenizer, &request, &output) {
                        hanging.insert(request.request_id, output);
                    }
                }
                EngineCommand::Abort { request_id } => {
                    if let Some(output) = hanging.remove(&request_id) {
                        let _ =
                            output.send(StreamEvent::Finished(finished(FinishReason::Abort, 0, 1)));
                    }
                    engine_record.lock().unwrap().aborted.push(request_id);
                }
                EngineCommand::AbortAll => {
                    for (_, output) in hanging.drain() {
                        let _ =
                            output.send(StreamEvent::Finished(finished(FinishReason::Abort, 0, 1)));
                    }
                }
                EngineCommand::Stats(reply) => {
                    let _ = reply.send(Default::default());
                }
                // The debug API is tested against the real engine (tests/debug_api.rs).
                EngineCommand::Inspect(..) | EngineCommand::SetStepTracing(..) => {}
            }
        }
    });
    FakeEngine { handle, record }
}

fn finished(reason: FinishReason, prompt_tokens: usize, completion_tokens: usize) -> FinishedInfo {
    FinishedInfo {
        reason,
        prompt_tokens,
        completion_tokens,
        cached_prompt_tokens: 0,
        num_preemptions: 0,
        error: None,
        timings: Default::default(),
        journey: None,
        kept: None,
    }
}

/// Sends the request's scripted output; true if it should hang until aborted.
fn answer(
    tokenizer: &Tokenizer,
    request: &EngineRequest,
    output: &mpsc::UnboundedSender<StreamEvent>,
) -> bool {
    let prompt = tokenizer.decode(&request.prompt_ids, false).unwrap();
    let delta = |id: u32| StreamEvent::Delta {
        text: tokenizer.decode(&[id], false).unwrap(),
        token_ids: vec![id],
        logprobs: request
            .params
            .logprobs
            .map(|k| {
                vec![TokenLogprob {
                    token_id: id,
                    logprob: -0.5,
                    top: (0..k as u32)
                        .map(|i| (b'a' as u32 + i, -1.0 - i as f32))
                        .collect(),
                }]
            })
            .unwrap_or_default(),
    };
    let prompt_tokens = request.prompt_ids.len();
    if prompt.contains("HANG") {
        let _ = output.send(delta(u32::from(b'x')));
        return true;
    }
    if prompt.contains("FAIL") {
        let _ = output.send(delta(u32::from(b'x')));
        let _ = output.send(StreamEvent::Finished(FinishedInfo {
            error: Some("secret engine detail".to_string()),
            ..finished(FinishReason::Error, prompt_tokens, 1)
        }));
        return false;
    }
    if prompt.contains("VANISH") {
        return false;
    }
    if prompt.contains("FLOOD") {
        // Far more than socket buffers hold, then hang: a client that stops reading leaves
        // the response stuck mid-write.
        let text = "x".repeat(1000);
        for _ in 0..20_000 {
            let _ = output.send(StreamEvent::Delta {
                text: text.clone(),
                token_ids: vec![u32::from(b'x')],
                logprobs: Vec::new(),
            });
        }
        return true;
    }
    let echo: Vec<u32> = request
        .prompt_ids
        .iter()
        .copied()
        .filter(|&id| (id as usize) < TINY_NUM_BYTE_TOKENS)
        .collect();
    let n = echo.len().min(request.params.max_tokens);
    for &id in &echo[..n] {
        let _ = output.send(delta(id));
    }
    let reason = if n < echo.len() {
        FinishReason::Length
    } else {
        FinishReason::Stop
    };
    let _ = output.send(StreamEvent::Finished(finished(reason, prompt_tokens, n)));
    false
}

struct TestServer {
    base: String,
    client: reqwest::Client,
    engine: FakeEngine,
    state: AppState,
}

async fn start_with(config: ServerConfig, max_waiting: usize) -> TestServer {
    let engine = fake_engine(max_waiting);
    let state = AppState::new(engine.handle.clone(), config);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(serve(listener, state.clone(), std::future::pending()));
    TestServer {
        base,
        client: reqwest::Client::new(),
        engine,
        state,
    }
}

/// A server that treats a client's end of sending as leaving: only then can it tell a
/// client that left before anything was written (see `ConnectionConfig::half_close`).
async fn start_without_half_close() -> TestServer {
    let engine = fake_engine(16);
    let state = AppState::new(engine.handle.clone(), ServerConfig::default());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(super::serve_connections(
        listener,
        std::future::ready(Some(state.clone())),
        std::future::pending(),
        super::ConnectionConfig {
            half_close: false,
            ..Default::default()
        },
    ));
    TestServer {
        base,
        client: reqwest::Client::new(),
        engine,
        state,
    }
}

async fn start() -> TestServer {
    start_with(ServerConfig::default(), 16).await
}

impl TestServer {
    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let response = self
            .client
            .post(format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap())
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let response = self
            .client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap())
    }

    /// A streamed response's `data` payloads, `[DONE]` included.
    async fn stream(&self, path: &str, body: Value) -> Vec<String> {
        let response = self
            .client
            .post(format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.headers()["content-type"].to_str().unwrap(),
            "text/event-stream"
        );
        let text = response.text().await.unwrap();
        assert!(text.ends_with("\n\n"), "{text:?}");
        text.split("\n\n")
            .filter(|event| !event.is_empty())
            .map(|event| {
                event
                    .strip_prefix("data: ")
                    .unwrap_or_else(|| panic!("not a data event: {event:?}"))
                    .to_string()
            })
            .collect()
    }

    fn last_submitted(&self) -> EngineRequest {
        self.engine
            .record
            .lock()
            .unwrap()
            .submitted
            .last()
            .unwrap()
            .clone()
    }

    /// Waits (up to 5 s) for the engine to see an abort for `id`.
    async fn wait_for_abort(&self, id: &str) {
        for _ in 0..500 {
            if self
                .engine
                .record
                .lock()
                .unwrap()
                .aborted
                .iter()
                .any(|a| a == id)
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("no abort reached the engine for {id}");
    }

    /// Waits (up to 5 s) until the engine has `n` requests.
    async fn wait_for_submits(&self, n: usize) {
        for _ in 0..500 {
            if self.engine.record.lock().unwrap().submitted.len() >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the engine never got {n} requests");
    }
}

fn chunks_json(events: &[String]) -> Vec<Value> {
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    events[..events.len() - 1]
        .iter()
        .map(|event| serde_json::from_str(event).unwrap())
        .collect()
}

/// Checks OpenAI's error shape and returns (type, param).
fn error_of(body: &Value) -> (String, Option<String>) {
    let error = &body["error"];
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    let object = error.as_object().unwrap();
    for key in ["message", "type", "param", "code"] {
        assert!(object.contains_key(key), "{body} lacks {key}");
    }
    (
        error["type"].as_str().unwrap().to_string(),
        error["param"].as_str().map(str::to_string),
    )
}

#[tokio::test]
async fn completion_returns_the_text_usage_and_ids() {
    let server = start().await;
    let (status, body) = server
        .post(
            "/v1/completions",
            json!({"model": MODEL, "prompt": "hello", "max_tokens": 3}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(body["id"].as_str().unwrap().starts_with("cmpl-"));
    assert_eq!(body["object"], "text_completion");
    assert!(body["created"].as_u64().unwrap() > 1_600_000_000);
    assert_eq!(body["model"], MODEL);
    assert_eq!(body["choices"][0]["text"], "hel");
    assert_eq!(body["choices"][0]["index"], 0);
    assert_eq!(body["choices"][0]["finish_reason"], "length");
    assert_eq!(body["choices"][0]["logprobs"], Value::Null);
    // BOS + 5 bytes.
    assert_eq!(body["usage"]["prompt_tokens"], 6);
    assert_eq!(body["usage"]["completion_tokens"], 3);
    assert_eq!(body["usage"]["total_tokens"], 9);
    let submitted = server.last_submitted();
    assert_eq!(submitted.request_id, body["id"].as_str().unwrap());
    assert_eq!(submitted.prompt_ids[0], crate::tokenizer::TINY_BOS_ID);

    // Without `model` (lenient), with `stop` reached: finish_reason stop.
    let (status, body) = server
        .post("/v1/completions", json!({"prompt": "hi"}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["text"], "hi");
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
}

#[tokio::test]
async fn token_prompts_and_batches_of_one() {
    let server = start().await;
    for prompt in [json!([104, 105]), json!([[104, 105]])] {
        let (status, body) = server
            .post("/v1/completions", json!({"prompt": prompt}))
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["choices"][0]["text"], "hi");
        // Token prompts are taken as they are: no BOS.
        assert_eq!(body["usage"]["prompt_tokens"], 2);
    }
    let (status, body) = server
        .post("/v1/completions", json!({"prompt": ["hi"]}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["usage"]["prompt_tokens"], 3);
}

#[tokio::test]
async fn sampling_fields_reach_the_engine() {
    let server = start().await;
    let (status, body) = server
        .post(
            "/v1/completions",
            json!({
                "prompt": "hi", "temperature": 0.5, "top_p": 0.9, "top_k": -1, "min_p": 0.1,
                "repetition_penalty": 1.1, "presence_penalty": 0.5, "frequency_penalty": -0.5,
                "seed": -1, "stop": "x", "stop_token_ids": [257], "min_tokens": 1,
                "ignore_eos": true, "priority": -3, "user": "u", "n": 1, "best_of": 1,
                "echo": false, "logit_bias": {}, "unknown_extra": {"a": 1}
            }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let request = server.last_submitted();
    let params = &request.params;
    assert_eq!(params.temperature, 0.5);
    assert_eq!(params.top_p, 0.9);
    assert_eq!(params.top_k, None);
    assert_eq!(params.min_p, 0.1);
    assert_eq!(params.repetition_penalty, 1.1);
    assert_eq!(params.presence_penalty, 0.5);
    assert_eq!(params.frequency_penalty, -0.5);
    assert_eq!(params.seed, Some(u64::MAX));
    assert_eq!(params.stop, ["x"]);
    assert_eq!(params.stop_token_ids, [257]);
    assert_eq!(params.min_tokens, 1);
    assert!(params.ignore_eos);
    assert_eq!(request.priority, -3);
    assert_eq!(params.logprobs, None);

    // `max_completion_tokens` wins over `max_tokens`; `top_k` 5 is kept.
    server
        .post(
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3,
                   "max_completion_tokens": 7, "top_k": 5, "stop": ["a", "b"]}),
        )
        .await;
    let params = server.last_submitted().params;
    assert_eq!(params.max_tokens, 7);
    assert_eq!(params.top_k, Some(5));
    assert_eq!(params.stop, ["a", "b"]);
}

#[tokio::test]
async fn max_tokens_defaults_to_the_smaller_of_the_config_and_the_context_left() {
    let server = start().await;
    server
        .post("/v1/completions", json!({"prompt": "hello"}))
        .await;
    // 64 - 6 prompt tokens; the default 4096 is more.
    assert_eq!(server.last_submitted().params.max_tokens, MAX_CONTEXT - 6);

    let config = ServerConfig {
        default_max_tokens: 10,
        ..ServerConfig::default()
    };
    let server = start_with(config, 16).await;
    server
        .post("/v1/completions", json!({"prompt": "hello"}))
        .await;
    assert_eq!(server.last_submitted().params.max_tokens, 10);
    // Exactly filling the context is allowed.
    let (status, body) = server
        .post(
            "/v1/completions",
            json!({"prompt": "hello", "max_tokens": MAX_CONTEXT - 6}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn chat_renders_the_template_without_adding_bos() {
    let server = start().await;
    let (status, body) = server
        .post(
            "/v1/chat/completions",
            json!({"model": MODEL, "messages": [{"role": "user", "content": "Hi"}]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(body["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(body["object"], "chat.completion");
    let choice = &body["choices"][0];
    assert_eq!(choice["message"]["role"], "assistant");
    // The fake engine echoes the prompt's byte tokens: the template without its specials.
    assert_eq!(choice["message"]["content"], "user\nHi\nassistant\n");
    assert_eq!(choice["finish_reason"], "stop");
    assert_eq!(choice["logprobs"], Value::Null);
    let expected = Tokenizer::tiny()
        .encode(
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
            false,
        )
        .unwrap();
    let submitted = server.last_submitted();
    assert_eq!(submitted.prompt_ids, expected);
    assert_eq!(submitted.prompt_ids[0], TINY_IM_START_ID);
    assert_eq!(body["usage"]["prompt_tokens"], expected.len());

    // Text parts are joined; a null content is empty.
    let (status, body) = server
        .post(
            "/v1/chat/completions",
            json!({"messages": [
                {"role": "assistant", "content": null},
                {"role": "user", "content": [{"type": "text", "text": "H"}, {"type": "text", "text": "i"}]}
            ]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "assistant\n\nuser\nHi\nassistant\n"
    );
}

#[tokio::test]
async fn completion_streams_chunks_then_done() {
    let server = start().await;
    let events = server
        .stream(
            "/v1/completions",
            json!({"prompt": "hello", "max_tokens": 4, "stream": true}),
        )
        .await;
    let chunks = chunks_json(&events);
    let id = chunks[0]["id"].as_str().unwrap();
    assert!(id.starts_with("cmpl-"));
    let mut text = String::new();
    for chunk in &chunks {
        assert_eq!(chunk["id"], id);
        assert_eq!(chunk["object"], "text_completion");
        assert_eq!(chunk["model"], MODEL);
        assert!(chunk.get("usage").is_none(), "{chunk}");
        text.push_str(chunk["choices"][0]["text"].as_str().unwrap());
    }
    assert_eq!(text, "hell");
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], "length");
    for chunk in &chunks[..chunks.len() - 1] {
        assert_eq!(chunk["choices"][0]["finish_reason"], Value::Null);
    }

    // With include_usage: a last chunk with no choices and the usage.
    let events = server
        .stream(
            "/v1/completions",
            json!({"prompt": "hi", "stream": true, "stream_options": {"include_usage": true}}),
        )
        .await;
    let chunks = chunks_json(&events);
    let usage_chunk = chunks.last().unwrap();
    assert_eq!(usage_chunk["choices"], json!([]));
    assert_eq!(usage_chunk["usage"]["prompt_tokens"], 3);
    assert_eq!(usage_chunk["usage"]["completion_tokens"], 2);
    assert_eq!(usage_chunk["usage"]["total_tokens"], 5);
    assert_eq!(
        chunks[chunks.len() - 2]["choices"][0]["finish_reason"],
        "stop"
    );
}

#[tokio::test]
async fn chat_streams_role_content_finish_and_usage() {
    let server = start().await;
    let events = server
        .stream(
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "Hi"}], "stream": true,
                   "stream_options": {"include_usage": true}, "max_tokens": 5}),
        )
        .await;
    let chunks = chunks_json(&events);
    assert!(chunks
        .iter()
        .all(|c| c["object"] == "chat.completion.chunk"));
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let content: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(content, "user\n");
    for chunk in &chunks[1..] {
        assert!(chunk["choices"][0]["delta"].get("role").is_none());
    }
    let finish = &chunks[chunks.len() - 2];
    assert_eq!(finish["choices"][0]["finish_reason"], "length");
    assert_eq!(finish["choices"][0]["delta"], json!({}));
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["completion_tokens"], 5);
}

#[tokio::test]
async fn logprobs_in_both_shapes() {
    let server = start().await;
    let (status, body) = server
        .post("/v1/completions", json!({"prompt": "hi", "logprobs": 2}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(server.last_submitted().params.logprobs, Some(2));
    let logprobs = &body["choices"][0]["logprobs"];
    assert_eq!(logprobs["tokens"], json!(["h", "i"]));
    assert_eq!(logprobs["token_logprobs"], json!([-0.5, -0.5]));
    assert_eq!(logprobs["text_offset"], json!([0, 1]));
    assert_eq!(logprobs["top_logprobs"][0], json!({"a": -1.0, "b": -2.0}));

    let (status, body) = server
        .post(
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "x"}], "max_tokens": 2,
                   "logprobs": true, "top_logprobs": 1}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let content = &body["choices"][0]["logprobs"]["content"];
    assert_eq!(
        content[0],
        json!({"token": "u", "logprob": -0.5, "bytes": [117],
               "top_logprobs": [{"token": "a", "logprob": -1.0, "bytes": [97]}]})
    );
    assert_eq!(content.as_array().unwrap().len(), 2);

    // `logprobs: true` alone: the sampled tokens, no alternatives.
    server
        .post(
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "x"}], "logprobs": true}),
        )
        .await;
    assert_eq!(server.last_submitted().params.logprobs, Some(0));

    // Streamed: offsets continue across chunks.
    let events = server
        .stream(
            "/v1/completions",
            json!({"prompt": "abc", "logprobs": 0, "stream": true}),
        )
        .await;
    let offsets: Vec<Value> = chunks_json(&events)
        .iter()
        .filter(|c| c["choices"][0]["logprobs"].is_object())
        .map(|c| c["choices"][0]["logprobs"]["text_offset"][0].clone())
        .collect();
    assert_eq!(offsets, [json!(0), json!(1), json!(2)]);
}

#[tokio::test]
async fn bad_requests_are_400s_naming_the_field() {
    let server = start().await;
    let long_prompt = "a".repeat(MAX_CONTEXT);
    let messages = json!([{"role": "user", "content": "hi"}]);
    let cases: Vec<(&str, Value, Option<&str>)> = vec![
        ("/v1/completions", json!({}), Some("prompt")),
        ("/v1/completions", json!({"prompt": null}), Some("prompt")),
        ("/v1/completions", json!({"prompt": ""}), Some("prompt")),
        ("/v1/completions", json!({"prompt": []}), Some("prompt")),
        ("/v1/completions", json!({"prompt": 5}), Some("prompt")),
        (
            "/v1/completions",
            json!({"prompt": [1, -1]}),
            Some("prompt"),
        ),
        (
            "/v1/completions",
            json!({"prompt": [1, TINY_VOCAB_SIZE]}),
            Some("prompt"),
        ),
        (
            "/v1/completions",
            json!({"prompt": ["a", "b"]}),
            Some("prompt"),
        ),
        (
            "/v1/completions",
            json!({"prompt": [[1], [2]]}),
            Some("prompt"),
        ),
        (
            "/v1/completions",
            json!({"prompt": long_prompt}),
            Some("prompt"),
        ),
        (
            "/v1/completions",
            json!({"prompt": "hi", "max_tokens": MAX_CONTEXT}),
            Some("max_tokens"),
        ),
        (
            "/v1/completions",
            json!({"prompt": "hi", "max_tokens": 0}),
            Some("max_tokens"),
        ),
        (
            "/v1/completions",
            json!({"prompt": "hi", "max_tokens": -5}),
            Some("max_tokens"),
        ),
        (
            "/v1/completions",
            json!({"prompt": "hi", "max_tokens": "ten"}),
            Some("max_tokens"),
        ),
        (
            "/v1/completions",
            json!({"prompt": "hi", "max_completion_tokens": 1000}),
            Some("max_completion_tokens"),
        ),
        (
            "/v1/completions",
            json!({"prompt": "hi", "temperature": "hot"}),
            Some("temperature"),
        ),
        (
            "/v1/completions",
            json!({"prompt": "hi", "temperature": -1}),
            Some("temperature"),
        ),
        (
            "/v1/completions",
            json!({"prompt": "hi", "temperature": 1e39}),
            Some("temperature"),
        ),
        (
            "/v1/completions",
            json!({"prompt": "hi", "top_p": 0}),
            Some("top_p"),
        ),
        (
            "/v1/completions",
            json!({"prompt": "hi", "top_p": 1.5}),
            Some("top_p"),
        ),
        (
            "/v1/completions",
            json!({"prompt": "hi", "min_p": 2}),
            Some("min_p"),
        ),
        (
            "/v1/completions",
            json!({"prompt": "hi", "top_k": -2}),
            Some("top_k"),
        ),
        (
            "/v1/completions",
            json!({"prompt": "hi", "repetition_penalty": 0}),
            Some("repetition_penalty"),
        ),
        (
            "/v1/completions",
            json!({"prompt": "hi", "presence_penalty": 3}),
            Some("presence_penalty"),
        ),
        (
            "/v1/completions",
            json!({"prompt": "hi", "frequency_penalty": -3}),
            Some("frequency_penalty"),
        ),
        (
            "/v1/completions",
            json!({"prompt": "hi", "n": 2}),
            Some("n"),
        ),
        (
            "/v1/completions",
            json!({"prompt": "hi", "best_of": 2}),
            Some("best_of"),
        ),
        (
            "/v1/completions",
            json!({"prompt": "hi", "echo": true}),
            Some("echo"),
        ),
        (
            "/v1/completions",
            json!({"prompt": "hi", "suffix": "x"}),
            Some("suffix"),
        ),
        (
            "/v1/completions",
            json!({"prompt": "hi", "logit_bias": {"1": 5}}),
            Some("logit_bias"),
        ),
        (
            "/v1/completions",
            json!({"prompt": "hi", "logprobs": 6}),
            Some("logprobs"),
        ),
        (
            "/v1/completions",
            json!({"prompt": "hi", "logprobs": true}),
            Some("logprobs"),
        ),
        (
            "/v1/completions",
            json!({"prompt": "hi", "stop": ""}),
            Some("stop"),
        ),
        (
            "/v1/completions",
            json!({"prompt": "hi", "stop": [1]}),
            Some("stop"),
        ),
        (
            "/v1/completions",
            json!({"prompt": "hi", "stop": vec!["x"; 17]}),
            Some("stop"),
        ),
        (
            "/v1/completions",
            json!({"prompt": "hi", "stop_token_ids": [999]}),
            Some("stop_token_ids"),
        ),
        (
            "/v1/completions",
            json!({"prompt": "hi", "min_tokens": 5, "max_tokens": 2}),
            Some("min_tokens"),
        ),
        (
            "/v1/completions",
            json!({"prompt": "hi", "min_tokens": -1}),
            Some("min_tokens"),
        ),
        (
            "/v1/completions",
            json!({"prompt": "hi", "stream_options": {"include_usage": true}}),
            Some("stream_options"),
        ),
        (
            "/v1/completions",
            json!({"prompt": "hi", "stream": "yes"}),
            Some("stream"),
        ),
        (
            "/v1/completions",
            json!({"prompt": "hi", "seed": 1.5}),
            Some("seed"),
        ),
        ("/v1/completions", json!([1, 2]), None),
        ("/v1/chat/completions", json!({}), Some("messages")),
        (
            "/v1/chat/completions",
            json!({"messages": []}),
            Some("messages"),
        ),
        (
            "/v1/chat/completions",
            json!({"messages": "hi"}),
            Some("messages"),
        ),
        (
            "/v1/chat/completions",
            json!({"messages": [{"content": "hi"}]}),
            Some("messages"),
        ),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": 3}]}),
            Some("messages"),
        ),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}),
            Some("messages"),
        ),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": long_prompt}]}),
            Some("messages"),
        ),
        (
            "/v1/chat/completions",
            json!({"messages": messages, "top_logprobs": 2}),
            Some("top_logprobs"),
        ),
        (
            "/v1/chat/completions",
            json!({"messages": messages, "logprobs": true, "top_logprobs": 21}),
            Some("top_logprobs"),
        ),
        (
            "/v1/chat/completions",
            json!({"messages": messages, "n": 3}),
            Some("n"),
        ),
        (
            "/v1/chat/completions",
            json!({"messages": messages, "tools": [{"type": "function"}]}),
            Some("tools"),
        ),
        (
            "/v1/chat/completions",
            json!({"messages": messages, "response_format": {"type": "json_object"}}),
            Some("response_format"),
        ),
        (
            "/v1/chat/completions",
            json!({"messages": messages, "max_completion_tokens": 0}),
            Some("max_completion_tokens"),
        ),
    ];
    for (path, body, param) in cases {
        let (status, response) = server.post(path, body.clone()).await;
        assert_eq!(status, 400, "{path} {body} -> {response}");
        let (kind, got) = error_of(&response);
        assert_eq!(kind, "invalid_request_error", "{body} -> {response}");
        assert_eq!(got.as_deref(), param, "{body} -> {response}");
    }
    assert!(server.engine.record.lock().unwrap().submitted.is_empty());
}

#[tokio::test]
async fn unreadable_bodies_get_our_error_shape() {
    let server = start().await;
    let url = format!("{}/v1/completions", server.base);
    let cases: [(&str, &str); 5] = [
        ("application/json", r#"{"prompt": "#),
        (
            "application/json",
            r#"{"prompt": "hi", "temperature": NaN}"#,
        ),
        ("application/json", "\u{feff}not json"),
        ("text/plain", r#"{"prompt": "hi"}"#),
        ("application/x-www-form-urlencoded", "prompt=hi"),
    ];
    for (content_type, body) in cases {
        let response = server
            .client
            .post(&url)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{content_type} {body}");
        let json: Value = response.json().await.unwrap();
        assert_eq!(error_of(&json), ("invalid_request_error".to_string(), None));
    }
    // No content type at all.
    let response = server.client.post(&url).body("{}").send().await.unwrap();
    assert_eq!(response.status(), 400);
    // `+json` media types and charsets are JSON.
    let response = server
        .client
        .post(&url)
        .header("content-type", "application/json; charset=utf-8")
        .body(r#"{"prompt": "hi"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn unknown_model_route_and_method() {
    let server = start().await;
    let (status, body) = server
        .post("/v1/completions", json!({"model": "gpt-4", "prompt": "hi"}))
        .await;
    assert_eq!(status, 404);
    assert_eq!(
        error_of(&body),
        ("model_not_found".to_string(), Some("model".to_string()))
    );
    assert_eq!(body["error"]["code"], "model_not_found");

    let (status, body) = server
        .post(
            "/v1/chat/completions",
            json!({"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    assert_eq!(status, 404);
    assert_eq!(error_of(&body).0, "model_not_found");

    let (status, body) = server.get("/v1/nothing").await;
    assert_eq!(status, 404);
    assert_eq!(error_of(&body).0, "not_found_error");
    let (status, body) = server.post("/", json!({})).await;
    assert_eq!(status, 404);
    assert_eq!(error_of(&body).0, "not_found_error");

    let (status, body) = server.get("/v1/completions").await;
    assert_eq!(status, 405);
    assert_eq!(error_of(&body).0, "method_not_allowed");
    let (status, body) = server.post("/health", json!({})).await;
    assert_eq!(status, 405);
    assert_eq!(error_of(&body).0, "method_not_allowed");
}

#[tokio::test]
async fn bodies_over_the_limit_are_413() {
    let config = ServerConfig {
        max_request_bytes: 1024,
        ..ServerConfig::default()
    };
    let server = start_with(config, 16).await;
    let (status, body) = server
        .post("/v1/completions", json!({"prompt": "a".repeat(4096)}))
        .await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(error_of(&body).0, "request_too_large");
    // Just under the limit is fine.
    let (status, body) = server
        .post(
            "/v1/completions",
            json!({"prompt": "a".repeat(30), "max_tokens": 1}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn the_api_key_guards_v1_but_not_probes() {
    let config = ServerConfig {
        api_key: Some("sk-test".to_string()),
        ..ServerConfig::default()
    };
    let server = start_with(config, 16).await;
    let url = format!("{}/v1/completions", server.base);
    let body = json!({"prompt": "hi"});
    for auth in [
        None,
        Some("Bearer wrong"),
        Some("sk-test"),
        Some("Basic sk-test"),
    ] {
        let mut request = server.client.post(&url).json(&body);
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 401, "{auth:?}");
        assert_eq!(response.headers()["www-authenticate"], "Bearer");
        let json: Value = response.json().await.unwrap();
        assert_eq!(error_of(&json).0, "authentication_error");
        assert_eq!(json["error"]["code"], "invalid_api_key");
    }
    let response = server
        .client
        .post(&url)
        .bearer_auth("sk-test")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(server.get("/v1/models").await.0, 401);
    assert_eq!(server.get("/health").await.0, 200);
    assert_eq!(server.get("/version").await.0, 200);
    // Unknown routes stay 404 without the key: nothing to protect.
    assert_eq!(server.get("/v1/other").await.0, 404);
}

#[tokio::test]
async fn metrics_need_no_key_and_come_in_the_format_asked_for() {
    let config = ServerConfig {
        api_key: Some("sk-test".to_string()),
        ..ServerConfig::default()
    };
    let server = start_with(config, 16).await;
    let url = format!("{}/metrics", server.base);
    let response = server.client.get(&url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let text = response.text().await.unwrap();
    assert!(
        text.contains("# TYPE waypoint_request_success_total counter\n"),
        "{text}"
    );
    assert!(text.contains(&format!("model_name=\"{MODEL}\"")), "{text}");
    assert!(!text.contains("# EOF"), "{text}");

    let response = server
        .client
        .get(&url)
        .header("accept", "application/openmetrics-text; version=1.0.0")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    let text = response.text().await.unwrap();
    assert!(
        text.contains("# TYPE waypoint_request_success counter\n"),
        "{text}"
    );
    assert!(text.ends_with("# EOF\n"), "{text}");

    // What Prometheus sends with `scrape_native_histograms: true`.
    let response = server
        .client
        .get(&url)
        .header(
            "accept",
            "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;\
             encoding=delimited;q=0.5,application/openmetrics-text;version=1.0.0;q=0.4",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        crate::metrics::PROTOBUF_CONTENT_TYPE
    );
    let body = response.bytes().await.unwrap();
    let name = b"waypoint_request_success_total";
    assert!(body.windows(name.len()).any(|w| w == name));
    assert!(!body.windows(6).any(|w| w == b"# TYPE"));
    assert_eq!(server.client.post(&url).send().await.unwrap().status(), 405);
}

#[tokio::test]
async fn a_full_queue_is_429_and_shutdown_is_503() {
    let server = start_with(ServerConfig::default(), 0).await;
    let (status, body) = server
        .post("/v1/completions", json!({"prompt": "hi"}))
        .await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(error_of(&body).0, "server_overloaded");

    let server = start().await;
    server.engine.handle.stop_accepting();
    let (status, body) = server
        .post(
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "hi"}], "stream": true}),
        )
        .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(error_of(&body).0, "service_unavailable");
    let (status, body) = server.get("/health").await;
    assert_eq!((status, body), (503, json!({"status": "shutting_down"})));
}

#[tokio::test]
async fn before_the_model_is_loaded_every_route_answers_503() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (loaded_tx, loaded_rx) = tokio::sync::oneshot::channel::<AppState>();
    tokio::spawn(serve_once_loaded(
        listener,
        async move { loaded_rx.await.ok() },
        std::future::pending(),
    ));
    let client = reqwest::Client::new();
    let get = |path: &'static str| {
        let request = client.get(format!("{base}{path}"));
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.unwrap())
        }
    };
    assert_eq!(get("/health").await, (503, json!({"status": "loading"})));
    for path in ["/v1/models", "/no/such/route"] {
        let (status, body) = get(path).await;
        assert_eq!(status, 503, "{path}");
        assert_eq!(body["error"]["type"], "service_unavailable", "{path}");
        assert!(body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("loading"));
    }
    let completion = client
        .post(format!("{base}/v1/completions"))
        .json(&json!({"model": MODEL, "prompt": "hi", "max_tokens": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(completion.status().as_u16(), 503);

    // Loaded: the same listener now serves the API.
    let engine = fake_engine(16);
    loaded_tx
        .send(AppState::new(
            engine.handle.clone(),
            ServerConfig::default(),
        ))
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while get("/health").await.0 != 200 {
        assert!(std::time::Instant::now() < deadline, "never became ready");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(get("/v1/models").await.0, 200);
    assert_eq!(get("/no/such/route").await.0, 404);
}

#[tokio::test]
async fn a_failed_load_stops_serving() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let served = serve_once_loaded(listener, std::future::ready(None), std::future::pending());
    tokio::time::timeout(Duration::from_secs(10), served)
        .await
        .expect("serving should stop when loading fails")
        .unwrap();
}

#[tokio::test]
async fn health_version_and_models() {
    let server = start().await;
    assert_eq!(server.get("/health").await, (200, json!({"status": "ok"})));
    server.state.engine.mark_unhealthy();
    assert_eq!(
        server.get("/health").await,
        (503, json!({"status": "unhealthy"}))
    );
    let server = start().await;
    server.state.ready.store(false, Ordering::Release);
    assert_eq!(
        server.get("/health").await,
        (503, json!({"status": "loading"}))
    );
    assert_eq!(
        server.get("/version").await,
        (200, json!({"version": env!("CARGO_PKG_VERSION")}))
    );
    let (status, body) = server.get("/v1/models").await;
    assert_eq!(status, 200);
    assert_eq!(body["object"], "list");
    let card = &body["data"][0];
    assert_eq!(card["id"], MODEL);
    assert_eq!(card["object"], "model");
    assert_eq!(card["owned_by"], "waypoint");
    assert_eq!(card["max_model_len"], MAX_CONTEXT);
    assert!(card["created"].as_u64().unwrap() > 1_600_000_000);
}

#[tokio::test]
async fn engine_failures_are_500_without_detail() {
    let server = start().await;
    for prompt in ["FAIL", "VANISH"] {
        let (status, body) = server
            .post("/v1/completions", json!({"prompt": prompt}))
            .await;
        assert_eq!(status, 500, "{body}");
        assert_eq!(error_of(&body).0, "internal_error");
        assert!(!body.to_string().contains("secret"), "{body}");
    }

    // Streaming: an error event, then [DONE].
    for prompt in ["FAIL", "VANISH"] {
        let events = server
            .stream(
                "/v1/chat/completions",
                json!({"messages": [{"role": "user", "content": prompt}], "stream": true,
                       "stream_options": {"include_usage": true}}),
            )
            .await;
        let chunks = chunks_json(&events);
        let last = chunks.last().unwrap();
        assert_eq!(error_of(last).0, "internal_error", "{events:?}");
        assert!(!events.concat().contains("secret"));
        assert!(chunks[..chunks.len() - 1]
            .iter()
            .all(|c| c.get("error").is_none() && c.get("usage").is_none()));
    }
}

#[tokio::test]
async fn a_client_leaving_a_stream_aborts_the_request() {
    use futures::StreamExt;

    let server = start_without_half_close().await;
    let response = server
        .client
        .post(format!("{}/v1/completions", server.base))
        .json(&json!({"prompt": "HANG", "stream": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.bytes_stream();
    let first = body.next().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).contains("\"text\":\"x\""));
    let id = server.last_submitted().request_id;
    assert!(server.engine.record.lock().unwrap().aborted.is_empty());
    // Dropping the body closes the connection (it cannot be reused mid-response).
    drop(body);
    server.wait_for_abort(&id).await;
}

#[tokio::test]
async fn a_client_leaving_a_non_streaming_request_aborts_it() {
    let server = start_without_half_close().await;
    let request = server
        .client
        .post(format!("{}/v1/chat/completions", server.base))
        .json(&json!({"messages": [{"role": "user", "content": "HANG"}]}))
        .send();
    let client = tokio::spawn(request);
    server.wait_for_submits(1).await;
    let id = server.last_submitted().request_id;
    // Give the handler time to be waiting on the engine, then hang up.
    tokio::time::sleep(Duration::from_millis(50)).await;
    client.abort();
    server.wait_for_abort(&id).await;
}

#[tokio::test]
async fn graceful_shutdown_stops_accepting() {
    let engine = fake_engine(16);
    let state = AppState::new(engine.handle.clone(), ServerConfig::default());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, state, async {
        let _ = stopped.await;
    }));
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("serve returns after the shutdown signal")
        .unwrap()
        .unwrap();
    assert!(!engine.handle.is_accepting());
}

#[test]
fn template_rejections_are_the_clients_fault() {
    use crate::tokenizer::ChatMessage;

    let template =
        ChatTemplate::new("{{ raise_exception('roles must alternate') }}", None, None).unwrap();
    let err = template
        .render(&[ChatMessage::new("user", "x")], true)
        .unwrap_err();
    let api = super::validation::tokenizer_error("messages", err);
    assert_eq!(api.status(), 400);
    assert!(api.to_string().contains("roles must alternate"), "{api}");
}

/// Predicts byte `A` for every sequence, a few milliseconds per step (so a request runs
/// long enough for a test to act meanwhile).
struct SlowConstantRunner;

impl crate::engine::ModelRunner for SlowConstantRunner {
    fn execute(
        &mut self,
        batch: &crate::model::ForwardBatch,
    ) -> Result<crate::model::Logits, crate::engine::ExecuteError> {
        std::thread::sleep(Duration::from_millis(5));
        let mut data = vec![0.0; batch.sequences.len() * TINY_VOCAB_SIZE];
        for row in 0..batch.sequences.len() {
            data[row * TINY_VOCAB_SIZE + usize::from(b'A')] = 10.0;
        }
        Ok(crate::model::Logits {
            data,
            vocab_size: TINY_VOCAB_SIZE,
        })
    }
}

/// The engine-panic drill over HTTP: a panic in the engine's scheduler fails every waiting
/// client with a 500 in OpenAI's error shape, `/health` turns 503 `unhealthy`, and new
/// requests get 503 (counted as rejected).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_engine_fails_its_clients_and_reports_unhealthy() {
    let engine = crate::engine::start(
        SlowConstantRunner,
        Arc::new(Tokenizer::tiny()),
        ModelInfo {
            name: MODEL.to_string(),
            max_context: MAX_CONTEXT,
            vocab_size: TINY_VOCAB_SIZE,
        },
        crate::engine::EngineConfig {
            scheduler: crate::engine::SchedulerConfig::new(64, MAX_CONTEXT),
            max_waiting_requests: 16,
            step_tracing: None,
        },
    )
    .unwrap();
    let state = AppState::new(engine.handle.clone(), ServerConfig::default());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(serve(listener, state, std::future::pending()));
    let client = reqwest::Client::new();
    let post = |body: Value| {
        let request = client.post(format!("{base}/v1/completions")).json(&body);
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.unwrap())
        }
    };

    // A bystander that is mid-generation when the engine dies.
    let bystander = tokio::spawn(post(
        json!({"prompt": [65, 66], "max_tokens": 50, "ignore_eos": true}),
    ));
    while engine.handle.stats().await.unwrap().running == 0 {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let culprit = crate::engine::scheduler::PANIC_IN_SCHEDULE;
    let (status, body) = post(json!({"prompt": culprit, "max_tokens": 5})).await;
    let (bystander_status, bystander_body) = bystander.await.unwrap();
    for (status, body) in [(status, &body), (bystander_status, &bystander_body)] {
        assert_eq!(status, 500, "{body}");
        assert_eq!(body["error"]["type"], "internal_error", "{body}");
        assert!(body["error"]["message"].is_string(), "{body}");
    }
    tokio::time::timeout(Duration::from_secs(5), engine.handle.died())
        .await
        .expect("the engine reports its death");
    let health = client.get(format!("{base}/health")).send().await.unwrap();
    assert_eq!(health.status().as_u16(), 503);
    assert_eq!(
        health.json::<Value>().await.unwrap(),
        json!({"status": "unhealthy"})
    );
    let (status, body) = post(json!({"prompt": "hello", "max_tokens": 5})).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["type"], "service_unavailable", "{body}");
    let scrape = engine
        .handle
        .metrics()
        .render(crate::metrics::Format::PrometheusText);
    assert!(
        scrape.contains(
            "waypoint_request_rejected_total{model_name=\"tiny\",reason=\"unavailable\"} 1\n"
        ),
        "{scrape}"
    );
}

/// The count of `waypoint_request_rejected_total{reason}` in the server's scrape.
fn rejected(server: &TestServer, reason: &str) -> u64 {
    let scrape = server
        .state
        .engine
        .metrics()
        .render(crate::metrics::Format::PrometheusText);
    let prefix =
        format!("waypoint_request_rejected_total{{model_name=\"{MODEL}\",reason=\"{reason}\"}} ");
    scrape
        .lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {prefix} in {scrape}"))
        .parse()
        .unwrap()
}

#[tokio::test]
async fn refused_requests_are_counted_by_reason() {
    let config = ServerConfig {
        max_request_bytes: 1024,
        ..ServerConfig::default()
    };
    let server = start_with(config, 0).await;
    let (status, _) = server
        .post("/v1/completions", json!({"prompt": "a".repeat(4096)}))
        .await;
    assert_eq!(status, 413);
    let (status, _) = server
        .post(
            "/v1/completions",
            json!({"prompt": "hi", "temperature": -1}),
        )
        .await;
    assert_eq!(status, 400);
    let (status, _) = server
        .post(
            "/v1/chat/completions",
            json!({"model": "other", "messages": []}),
        )
        .await;
    assert_eq!(status, 404);
    let (status, _) = server
        .post("/v1/completions", json!({"prompt": "hi"}))
        .await;
    assert_eq!(status, 429);
    assert_eq!(rejected(&server, "too_large"), 1);
    assert_eq!(rejected(&server, "invalid"), 2);
    assert_eq!(rejected(&server, "queue_full"), 1);
    assert_eq!(rejected(&server, "unavailable"), 0);
    // Not a refusal of a generation request: not counted.
    let (status, _) = server.get("/v1/nothing").await;
    assert_eq!(status, 404);
    assert_eq!(rejected(&server, "invalid"), 2);
}

mod connections;
