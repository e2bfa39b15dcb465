//! `GET /metrics` over real HTTP, with the real engine and the tiny model: a known set of
//! requests (length, stop, a traced one, an abort) and the scrape a Prometheus server would
//! read, checked against what the responses reported.

#[path = "common/tiny.rs"]
mod tiny;
use tiny::TinyEngine;
#[path = "common/prometheus.rs"]
mod prometheus;

use std::time::{Duration, Instant};

use futures::StreamExt;
use prometheus::{parse, Scrape};
use serde_json::{json, Value};
use waypoint::engine::{EngineHandle, EngineRequest, RunningEngine, StreamEvent};
use waypoint::sampling::SamplingParams;
use waypoint::server::ServerConfig;

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const LATENCY_HISTOGRAMS: [&str; 6] = [
    "waypoint_time_to_first_token_seconds",
    "waypoint_inter_token_latency_seconds",
    "waypoint_e2e_request_latency_seconds",
    "waypoint_request_queue_time_seconds",
    "waypoint_request_prefill_time_seconds",
    "waypoint_request_decode_time_seconds",
];
const TOKEN_HISTOGRAMS: [&str; 2] = [
    "waypoint_request_prompt_tokens",
    "waypoint_request_generation_tokens",
];

struct TestServer {
    url: String,
    engine: EngineHandle,
    client: reqwest::Client,
    _running: RunningEngine,
}

async fn start() -> TestServer {
    let running = TinyEngine {
        num_blocks: 512,
        max_num_seqs: 8,
        max_waiting_requests: 100,
        max_model_len: None,
    }
    .start();
    // With a key: scrapes must not need it.
    let config = ServerConfig {
        api_key: Some("sk-metrics".to_string()),
        ..ServerConfig::default()
    };
    let url = tiny::serve(&running.handle, config).await;
    TestServer {
        url,
        engine: running.handle.clone(),
        client: reqwest::Client::new(),
        _running: running,
    }
}

/// What the responses (or the engine, for the request submitted directly) reported.
#[derive(Debug, Default)]
struct Expected {
    requests: u64,
    by_reason: [u64; 4],
    prompt_tokens: u64,
    completion_tokens: u64,
    cached_tokens: u64,
    /// Tokens after each request's first.
    later_tokens: u64,
}

impl Expected {
    fn add(&mut self, reason: &str, usage: &Value) {
        let count = |key: &str| usage[key].as_u64().unwrap_or_else(|| panic!("{usage}"));
        let index = ["stop", "length", "abort", "error"]
            .iter()
            .position(|r| *r == reason)
            .unwrap_or_else(|| panic!("finish reason {reason}"));
        let completion = count("completion_tokens");
        assert!(completion >= 1, "{usage}");
        self.requests += 1;
        self.by_reason[index] += 1;
        self.prompt_tokens += count("prompt_tokens");
        self.completion_tokens += completion;
        self.later_tokens += completion - 1;
        self.cached_tokens += usage["prompt_tokens_details"]["cached_tokens"]
            .as_u64()
            .unwrap();
    }
}

impl TestServer {
    /// A completion; returns its finish reason and usage.
    async fn complete(&self, body: Value) -> (String, Value) {
        let response = self
            .client
            .post(format!("{}/v1/completions", self.url))
            .bearer_auth("sk-metrics")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.unwrap();
        let reason = body["choices"][0]["finish_reason"].as_str().unwrap();
        (reason.to_string(), body["usage"].clone())
    }

    /// A streamed chat completion with usage; returns its finish reason and usage.
    async fn chat_stream(&self, body: Value) -> (String, Value) {
        let response = self
            .client
            .post(format!("{}/v1/chat/completions", self.url))
            .bearer_auth("sk-metrics")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let text = response.text().await.unwrap();
        let chunks: Vec<Value> = text
            .lines()
            .filter_map(|line| line.strip_prefix("data: "))
            .filter(|data| *data != "[DONE]")
            .map(|data| serde_json::from_str(data).unwrap())
            .collect();
        let reason = chunks
            .iter()
            .find_map(|c| c["choices"][0]["finish_reason"].as_str())
            .unwrap();
        let usage = chunks.last().unwrap()["usage"].clone();
        (reason.to_string(), usage)
    }

    /// Scrapes `/metrics` (without the API key) and parses it in the format served.
    async fn scrape(&self, openmetrics: bool) -> (String, Scrape) {
        let mut request = self.client.get(format!("{}/metrics", self.url));
        if openmetrics {
            request = request.header(
                "accept",
                "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
            );
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200);
        let content_type = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_owned();
        let expected = if openmetrics {
            "application/openmetrics-text; version=1.0.0; charset=utf-8"
        } else {
            "text/plain; version=0.0.4; charset=utf-8"
        };
        assert_eq!(content_type, expected);
        let text = response.text().await.unwrap();
        let scrape = parse(&text, openmetrics).unwrap_or_else(|e| panic!("{e}\n{text}"));
        (text, scrape)
    }

    /// Waits, by scraping only, until the gauges show no request running or waiting: a
    /// scraper sends the engine no command, so this fails if the gauges wait for one.
    async fn wait_for_idle_gauges(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let (_, scrape) = self.scrape(false).await;
            let running = scrape.value("waypoint_num_requests_running", &[]);
            let waiting = scrape.value("waypoint_num_requests_waiting", &[]);
            if running == 0.0 && waiting == 0.0 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "gauges stuck at {running} running, {waiting} waiting"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until the engine holds no request: every finish has been recorded.
    async fn drain(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let stats = self.engine.stats().await.unwrap();
            if stats.scheduler_empty && stats.live_outputs == 0 {
                return;
            }
            assert!(Instant::now() < deadline, "engine still busy: {stats:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Submits `request` straight to the engine and returns its tokens and finish.
async fn run_direct(engine: &EngineHandle, request: EngineRequest) -> (Vec<u32>, Value, String) {
    let mut stream = engine.submit(request).unwrap();
    let mut tokens = Vec::new();
    while let Some(event) = stream.next().await {
        match event {
            StreamEvent::Delta { token_ids, .. } => tokens.extend(token_ids),
            StreamEvent::Finished(info) => {
                let usage = json!({
                    "prompt_tokens": info.prompt_tokens,
                    "completion_tokens": info.completion_tokens,
                    "prompt_tokens_details": {"cached_tokens": info.cached_prompt_tokens},
                });
                return (tokens, usage, info.reason.as_str().to_string());
            }
        }
    }
    panic!("the stream ended without Finished");
}

/// Checks every histogram: increasing `le`, cumulative counts, `+Inf` equal to `_count`.
fn check_histograms(scrape: &Scrape) {
    for name in LATENCY_HISTOGRAMS.iter().chain(&TOKEN_HISTOGRAMS) {
        assert_eq!(scrape.families[*name].kind, "histogram", "{name}");
        let buckets = scrape.buckets(name);
        assert!(buckets.len() >= 2, "{name}");
        for pair in buckets.windows(2) {
            assert!(pair[0].0 < pair[1].0, "{name}: le not increasing: {pair:?}");
            assert!(pair[0].1 <= pair[1].1, "{name}: not cumulative: {pair:?}");
        }
        let (last_le, last_count, _) = buckets.last().unwrap();
        assert_eq!(*last_le, f64::INFINITY, "{name}");
        assert_eq!(
            *last_count,
            scrape.value(&format!("{name}_count"), &[]),
            "{name}"
        );
    }
}

fn success(scrape: &Scrape, reason: &str) -> f64 {
    scrape.value(
        "waypoint_request_success_total",
        &[("finished_reason", reason)],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_agree_with_what_the_requests_reported() {
    let server = start().await;
    let model = server.engine.model().name.clone();
    let tokenizer = server.engine.tokenizer();

    // Before any request: every series exists, at zero.
    let (_, scrape) = server.scrape(false).await;
    for reason in ["stop", "length", "abort", "error"] {
        assert_eq!(success(&scrape, reason), 0.0, "{reason}");
    }
    assert_eq!(scrape.value("waypoint_generation_tokens_total", &[]), 0.0);

    let mut expected = Expected::default();
    // Length: max_tokens reached.
    for max_tokens in [3, 5, 8] {
        let (reason, usage) = server
            .complete(
                json!({"prompt": format!("count {max_tokens}"), "max_tokens": max_tokens,
                             "ignore_eos": true, "temperature": 0}),
            )
            .await;
        assert_eq!(reason, "length");
        assert_eq!(usage["completion_tokens"], max_tokens);
        expected.add(&reason, &usage);
    }
    let (reason, usage) = server
        .chat_stream(
            json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4,
                            "ignore_eos": true, "stream": true,
                            "stream_options": {"include_usage": true}}),
        )
        .await;
    assert_eq!(reason, "length");
    expected.add(&reason, &usage);

    // A traced request, straight through the engine: greedy, so its first token is the one
    // the next request (same prompt) stops on.
    let prompt_ids = tokenizer
        .encode(
            "a prompt that is long enough to fill several cache blocks",
            true,
        )
        .unwrap();
    let greedy = |max_tokens| SamplingParams {
        max_tokens,
        ignore_eos: true,
        ..SamplingParams::greedy()
    };
    let traced = EngineRequest {
        trace_id: Some(TRACE_ID.to_string()),
        ..EngineRequest::new("traced", prompt_ids.clone(), greedy(4))
    };
    let (tokens, usage, reason) = run_direct(&server.engine, traced).await;
    assert_eq!(reason, "length");
    expected.add(&reason, &usage);

    // Stop: a stop token that greedy decoding is certain to produce first.
    let (reason, usage) = server
        .complete(
            json!({"prompt": prompt_ids, "max_tokens": 10, "temperature": 0,
                         "ignore_eos": true, "stop_token_ids": [tokens[0]]}),
        )
        .await;
    assert_eq!(reason, "stop");
    assert_eq!(usage["completion_tokens"], 1);
    assert!(
        usage["prompt_tokens_details"]["cached_tokens"]
            .as_u64()
            .unwrap()
            > 0
    );
    expected.add(&reason, &usage);
    server.wait_for_idle_gauges().await;
    server.drain().await;

    let (text, scrape) = server.scrape(false).await;
    assert!(!text.contains("trace_id"), "{text}");
    for sample in &scrape.samples {
        assert_eq!(
            sample.label("model_name"),
            Some(model.as_str()),
            "{sample:?}"
        );
    }
    for family in scrape.families.values() {
        assert!(
            family.help.as_deref().is_some_and(|h| !h.is_empty()),
            "{family:?}"
        );
    }
    check_histograms(&scrape);
    let value = |name: &str| scrape.value(name, &[]);
    for (index, reason) in ["stop", "length", "abort", "error"].iter().enumerate() {
        assert_eq!(
            success(&scrape, reason),
            expected.by_reason[index] as f64,
            "{reason}"
        );
    }
    let requests = expected.requests as f64;
    assert_eq!(value("waypoint_request_generation_tokens_count"), requests);
    assert_eq!(
        value("waypoint_request_generation_tokens_sum"),
        expected.completion_tokens as f64
    );
    assert_eq!(
        value("waypoint_generation_tokens_total"),
        expected.completion_tokens as f64
    );
    assert_eq!(value("waypoint_request_prompt_tokens_count"), requests);
    assert_eq!(
        value("waypoint_request_prompt_tokens_sum"),
        expected.prompt_tokens as f64
    );
    // Every request produced a token, so every prompt counts, cached tokens included.
    assert_eq!(
        value("waypoint_prompt_tokens_total"),
        expected.prompt_tokens as f64
    );
    // No preemption here, so each prompt was looked up once.
    assert_eq!(value("waypoint_num_preemptions_total"), 0.0);
    assert_eq!(
        value("waypoint_prefix_cache_queries_total"),
        expected.prompt_tokens as f64
    );
    assert_eq!(
        value("waypoint_prefix_cache_hits_total"),
        expected.cached_tokens as f64
    );
    for name in [
        "waypoint_time_to_first_token_seconds",
        "waypoint_e2e_request_latency_seconds",
        "waypoint_request_queue_time_seconds",
        "waypoint_request_prefill_time_seconds",
        "waypoint_request_decode_time_seconds",
    ] {
        assert_eq!(value(&format!("{name}_count")), requests, "{name}");
    }
    assert_eq!(
        value("waypoint_inter_token_latency_seconds_count"),
        expected.later_tokens as f64
    );
    for gauge in [
        "waypoint_num_requests_running",
        "waypoint_num_requests_waiting",
        "waypoint_kv_cache_usage_ratio",
    ] {
        assert_eq!(scrape.families[gauge].kind, "gauge");
        assert_eq!(value(gauge), 0.0, "{gauge}");
    }

    // OpenMetrics: the same numbers, counters typed without `_total`, the traced request's
    // trace id on its latency buckets, and `# EOF` last.
    let (text, open) = server.scrape(true).await;
    assert!(text.ends_with("# EOF\n"), "{text}");
    assert_eq!(open.families["waypoint_request_success"].kind, "counter");
    assert!(!open.families.contains_key("waypoint_request_success_total"));
    assert_eq!(success(&open, "length"), success(&scrape, "length"));
    check_histograms(&open);
    for name in [
        "waypoint_time_to_first_token_seconds",
        "waypoint_inter_token_latency_seconds",
        "waypoint_e2e_request_latency_seconds",
    ] {
        let buckets = open.buckets(name);
        let traced: Vec<_> = buckets
            .iter()
            .enumerate()
            .filter_map(|(i, (le, _, exemplar))| exemplar.as_ref().map(|e| (i, *le, e)))
            .collect();
        // One observation each for TTFT and e2e; three inter-token ones, perhaps in
        // different buckets.
        assert!(!traced.is_empty(), "{name}");
        if name != "waypoint_inter_token_latency_seconds" {
            assert_eq!(traced.len(), 1, "{name}: {traced:?}");
        }
        for (index, le, exemplar) in traced {
            assert_eq!(
                exemplar.labels,
                [("trace_id".to_string(), TRACE_ID.to_string())],
                "{name}"
            );
            // The bucket the value fell in: at most its `le`, above the one before.
            assert!(exemplar.value <= le, "{name}: {exemplar:?} above {le}");
            if index > 0 {
                assert!(
                    exemplar.value > buckets[index - 1].0,
                    "{name}: {exemplar:?}"
                );
            }
            let age = unix_now() - exemplar.timestamp.unwrap();
            assert!((0.0..600.0).contains(&age), "{name}: {exemplar:?}");
        }
    }
    for name in TOKEN_HISTOGRAMS {
        assert!(open.buckets(name).iter().all(|b| b.2.is_none()), "{name}");
    }

    // A client leaving mid-stream: an abort, with the tokens it had generated.
    let response = server
        .client
        .post(format!("{}/v1/completions", server.url))
        .bearer_auth("sk-metrics")
        .json(
            &json!({"prompt": "a long one", "max_tokens": 1500, "ignore_eos": true,
                      "stream": true}),
        )
        .send()
        .await
        .unwrap();
    let mut body = response.bytes_stream();
    assert!(!body.next().await.unwrap().unwrap().is_empty());
    drop(body);
    server.wait_for_idle_gauges().await;
    server.drain().await;
    let (_, after) = server.scrape(false).await;
    check_histograms(&after);
    let delta = |name: &str| after.value(name, &[]) - value(name);
    assert_eq!(success(&after, "abort"), 1.0);
    assert_eq!(success(&after, "length"), success(&scrape, "length"));
    assert_eq!(delta("waypoint_e2e_request_latency_seconds_count"), 1.0);
    assert_eq!(delta("waypoint_request_generation_tokens_count"), 1.0);
    let generated = delta("waypoint_request_generation_tokens_sum");
    assert!((1.0..1500.0).contains(&generated), "{generated}");
    assert_eq!(delta("waypoint_generation_tokens_total"), generated);
    assert_eq!(delta("waypoint_time_to_first_token_seconds_count"), 1.0);
    assert_eq!(
        delta("waypoint_inter_token_latency_seconds_count"),
        generated - 1.0
    );
    assert_eq!(
        delta("waypoint_prompt_tokens_total"),
        delta("waypoint_request_prompt_tokens_sum")
    );
    assert_eq!(after.value("waypoint_num_requests_running", &[]), 0.0);
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}
