//! Thousands of mixed requests through the full journey-export stack leave nothing behind:
//! no live span, no engine state, no block, no recorded journey (half of them are recorded
//! for tail retention); every journey span that was opened was ended and exported. Requests end every way they can: length, stop string, stream, client
//! disconnect mid-stream, client timeout while waiting, rejected as invalid, shutdown abort.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SimpleSpanProcessor};
use serde_json::json;
use tracing::span::{Attributes, Id};
use tracing_subscriber::layer::{Context, SubscriberExt as _};
use tracing_subscriber::Layer;
use waypoint::server::ServerConfig;
use waypoint::telemetry::replay;

#[path = "common/tiny.rs"]
mod tiny;
use tiny::TinyEngine;

/// Counts the journey spans alive in the registry.
#[derive(Clone, Default)]
struct LiveSpans(Arc<AtomicI64>);

impl<S> Layer<S> for LiveSpans
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, _: &Id, _: Context<'_, S>) {
        if matches!(attrs.metadata().name(), "llm_request" | "llm_core") {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(&id) {
            if matches!(span.name(), "llm_request" | "llm_core") {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }
}

const REQUESTS: usize = 2400;
const CONCURRENCY: usize = 24;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_mixed_requests_leave_nothing_behind() {
    let exporter = InMemorySpanExporter::default();
    // Half the journeys are recorded and replayed if kept: the provider must apply their ids
    // and end times, as the server's does.
    let provider = replay::with_processor(
        replay::provider_builder(),
        SimpleSpanProcessor::new(exporter.clone()),
    )
    .with_max_events_per_span(waypoint::telemetry::MAX_EVENTS_PER_SPAN)
    .build();
    let live = LiveSpans::default();
    let subscriber = waypoint::telemetry::journey_export_subscriber(&provider).with(live.clone());
    // The engine thread emits too: the subscriber must be global.
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let engine = TinyEngine {
        num_blocks: 256,
        max_num_seqs: 32,
        max_waiting_requests: 10_000,
        max_model_len: Some(1024),
    }
    .start();
    let config = ServerConfig {
        journey_sample_rate: Some(0.5),
        ..Default::default()
    };
    let url = format!(
        "{}/v1/completions",
        tiny::serve(&engine.handle, config).await
    );

    let client = reqwest::Client::new();
    let outcomes = futures::stream::iter(0..REQUESTS)
        .map(|i| {
            let client = client.clone();
            let url = url.clone();
            async move { one_request(&client, &url, i).await }
        })
        .buffer_unordered(CONCURRENCY)
        .collect::<Vec<&'static str>>()
        .await;
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for outcome in outcomes {
        *counts.entry(outcome).or_default() += 1;
    }
    // Every way of ending happened, many times.
    for kind in [
        "length",
        "stream",
        "stop",
        "disconnected",
        "timed_out",
        "rejected",
    ] {
        assert!(
            counts.get(kind).copied().unwrap_or(0) > 50,
            "{kind}: {counts:?}"
        );
    }

    // Shutdown: long requests in flight, then every request aborted, as the timeout does.
    let mut streams = Vec::new();
    for i in 0..16 {
        let response = client
            .post(&url)
            .header("x-waypoint-trace", "1")
            .json(&json!({"prompt": format!("shutdown {i}"), "max_tokens": 900, "ignore_eos": true, "stream": true}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        streams.push(response.bytes_stream());
    }
    engine.handle.abort_all();
    for mut stream in streams {
        while let Some(chunk) = stream.next().await {
            chunk.unwrap();
        }
    }

    // Nothing is left: engine state, blocks, live journey spans, recorded journeys.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let stats = engine.handle.stats().await.unwrap();
        let idle = stats.live_outputs == 0
            && stats.blocks_in_use == 0
            && stats.scheduler_empty
            && stats.waiting == 0
            && stats.running == 0;
        let recorded = waypoint::engine::journey::journeys_in_memory();
        if idle && live.0.load(Ordering::SeqCst) == 0 && recorded == (0, 0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still held: {stats:?}, live journey spans {}, recorded journeys {recorded:?}",
            live.0.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Every journey span ended and was exported; each llm_core under an exported
    // llm_request, which it never outlives.
    provider.force_flush().unwrap();
    let spans = exporter.get_finished_spans().unwrap();
    let requests: HashMap<_, _> = spans
        .iter()
        .filter(|s| s.name == "llm_request")
        .map(|s| (s.span_context.span_id(), s))
        .collect();
    let cores: Vec<_> = spans.iter().filter(|s| s.name == "llm_core").collect();
    assert!(requests.len() > REQUESTS / 4, "{} sampled", requests.len());
    assert!(!cores.is_empty());
    for core in &cores {
        let parent = requests
            .get(&core.parent_span_id)
            .expect("llm_core without its llm_request");
        assert!(core.end_time <= parent.end_time);
        let last = core.events.events.last().map(|e| e.name.as_ref());
        assert_eq!(last, Some("journey.FINISHED"), "{core:?}");
    }
    for request in requests.values() {
        let last = request.events.events.last().map(|e| e.name.as_ref());
        assert!(
            matches!(last, Some("api.DEPARTED" | "api.ABORTED")),
            "{last:?}"
        );
    }
}

/// One request of kind `i % 6`; says how it ended.
async fn one_request(client: &reqwest::Client, url: &str, i: usize) -> &'static str {
    let prompt = format!("request {i}");
    match i % 6 {
        0 => {
            let body = json!({"prompt": prompt, "max_tokens": 3, "ignore_eos": true});
            let response = client.post(url).json(&body).send().await.unwrap();
            assert_eq!(response.status(), 200);
            response.bytes().await.unwrap();
            "length"
        }
        1 => {
            let body = json!({"prompt": prompt, "max_tokens": 4, "stream": true,
                "stream_options": {"include_usage": true}});
            let response = client.post(url).json(&body).send().await.unwrap();
            assert_eq!(response.status(), 200);
            let text = response.text().await.unwrap();
            assert!(text.trim_end().ends_with("data: [DONE]"));
            "stream"
        }
        2 => {
            // Stop strings the tiny model's output is likely to contain: stop or length.
            let body = json!({"prompt": prompt, "max_tokens": 8, "ignore_eos": true,
                "stop": ["e", "a", "o", " "]});
            let response = client.post(url).json(&body).send().await.unwrap();
            assert_eq!(response.status(), 200);
            response.bytes().await.unwrap();
            "stop"
        }
        3 => {
            // Leaves after the first chunk of a long stream.
            let body = json!({"prompt": prompt, "max_tokens": 500, "ignore_eos": true,
                "stream": true});
            let response = client.post(url).json(&body).send().await.unwrap();
            assert_eq!(response.status(), 200);
            let mut body = response.bytes_stream();
            body.next().await.unwrap().unwrap();
            "disconnected"
        }
        4 => {
            // Gives up while waiting for a long answer.
            let body = json!({"prompt": prompt, "max_tokens": 500, "ignore_eos": true});
            let sent = client
                .post(url)
                .timeout(Duration::from_millis(30))
                .json(&body)
                .send()
                .await;
            assert!(sent.is_err(), "answered 500 tokens in 30 ms?");
            "timed_out"
        }
        _ => {
            let body = json!({"prompt": prompt, "max_tokens": 4, "top_p": 1.5});
            let response = client
                .post(url)
                .header("x-waypoint-trace", "1")
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 400);
            assert!(response.headers().contains_key("x-trace-id"));
            "rejected"
        }
    }
}
