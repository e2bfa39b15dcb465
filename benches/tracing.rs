//! What journey and step tracing cost, through the subscriber `waypoint serve` installs with
//! `--enable-journey-tracing --step-tracing-enabled`: the console layers (`RUST_LOG`, `info`
//! unless set) and the export layers (`tracing_opentelemetry` with the scoped tracer,
//! `SpanEventLayer`, `RotatingSpanLayer`), over a provider whose batch span processor feeds an
//! exporter that drops every batch, so export costs its queue and its thread but no network.
//!
//! ```text
//! cargo bench --bench tracing [-- FILTER]
//! ```
//!
//! - `sampled_out_request`: what the API's sampling decision costs a request it rejects
//!   (`ApiJourney::start` returning `None`, and the engine's `Option` check), at rate 0 (no
//!   draw) and at a rate just above 0 (one draw). Target: under 50 ns.
//! - `journey_event_recording`: one engine journey event (`QUEUED`: the nine fields every
//!   journey event has) on a recording `llm_core` span, both spans alive, a fresh pair every
//!   500 events so the SDK's per-span event limit never drops one. Target: under 2 µs.
//! - `whole_journey_sampled_in`: a sampled request's two spans, from the sampling decision to
//!   both spans ended (eight events, the response's trace headers, attributes), for context.
//! - `step_not_sampled`: the step sampler's draw at `--step-tracing-sample-rate 0.01`.
//! - `step_batch_summary`, `step_request_snapshot`: one step event on the rotating
//!   `scheduler_steps` spans (rotations every 1024 events included).
//!
//! The layers alone (no console, no `waypoint` crate) are measured per event by
//! `cargo run --release -p waypoint-layers --example overhead`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderValue};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{BatchSpanProcessor, SdkTracerProvider, SpanData, SpanExporter};
use waypoint::engine::journey::Journey;
use waypoint::engine::kv_cache::BlockId;
use waypoint::engine::output::{ScheduledSequence, StepStats};
use waypoint::engine::request::Request;
use waypoint::engine::step_trace::{self, StepTracer};
use waypoint::engine::{
    EngineRequest, EngineTimings, FinishReason, FinishedInfo, StepTracingConfig,
};
use waypoint::sampling::SamplingParams;
use waypoint::server::journey::ApiJourney;
use waypoint::server::output::Api;
use waypoint::server::ServerConfig;
use waypoint::telemetry::{self, LogFormat};

/// Events per `llm_core` span in `journey_event_recording`, below the provider's limit.
const EVENTS_PER_SPAN: u64 = 500;

const MODEL: &str = "SmolLM2-135M-Instruct";

/// An exporter that accepts and drops every batch.
#[derive(Debug)]
struct DroppingExporter;

impl SpanExporter for DroppingExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        drop(black_box(batch));
        Ok(())
    }
}

/// Installs `waypoint serve`'s subscriber (journeys and step spans) as the global default,
/// as the server does, once for the whole run.
fn install_serve_subscriber() {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        if std::env::var_os("RUST_LOG").is_none() {
            // The server's default; journey and step events are DEBUG, so none is printed.
            std::env::set_var("RUST_LOG", "info");
        }
        let max_events = telemetry::max_events_per_span(|name| std::env::var(name).ok());
        let provider = SdkTracerProvider::builder()
            .with_max_events_per_span(max_events)
            .with_span_processor(BatchSpanProcessor::builder(DroppingExporter).build())
            .build();
        let (subscriber, step_spans) = telemetry::serve_subscriber(
            LogFormat::Text,
            &provider,
            true,
            Some(Duration::from_secs(10)),
        );
        tracing::subscriber::set_global_default(subscriber)
            .expect("no other subscriber in this benchmark");
        // Kept for the life of the process: dropping the provider would stop export.
        std::mem::forget(provider);
        std::mem::forget(step_spans);
    });
}

/// The headers a typical OpenAI client sends, with neither `x-waypoint-trace` nor
/// `traceparent`.
fn typical_headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in [
        ("host", "127.0.0.1:8000"),
        ("user-agent", "OpenAI/Python 1.54.0"),
        ("accept", "application/json"),
        ("content-type", "application/json"),
        ("content-length", "187"),
        ("authorization", "Bearer sk-0123456789"),
        ("x-stainless-lang", "python"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    headers
}

fn config(rate: f64) -> ServerConfig {
    ServerConfig {
        journey_sample_rate: Some(rate),
        ..ServerConfig::default()
    }
}

fn request_id(n: u64) -> String {
    format!("cmpl-{n:032x}")
}

fn sampled_out_request(c: &mut Criterion) {
    install_serve_subscriber();
    let headers = typical_headers();
    let id = request_id(1);
    let arrival = Instant::now(); // the handler reads the clock whether or not it traces
    let mut group = c.benchmark_group("sampled_out_request");
    // Rate 0: no draw. Rate 1e-12: one draw, (practically) never sampled.
    for (name, rate) in [("rate_0", 0.0), ("rate_1e-12", 1e-12)] {
        let config = config(rate);
        group.bench_function(name, |b| {
            b.iter(|| {
                let journey = ApiJourney::start(
                    black_box(&config),
                    black_box(&headers),
                    Api::Completions,
                    black_box(&id),
                    MODEL,
                    arrival,
                );
                // The engine's check at each journey point.
                black_box(journey.is_some())
            })
        });
    }
    group.finish();
}

/// The API's and the engine's spans of one sampled request.
fn sampled_journey(n: u64) -> (ApiJourney, Journey) {
    let id = request_id(n);
    let api = ApiJourney::start(
        &config(1.0),
        &HeaderMap::new(),
        Api::Completions,
        &id,
        MODEL,
        Instant::now(),
    )
    .expect("rate 1.0 samples every request");
    let core = Journey::start(api.span(), &id, 64);
    (api, core)
}

fn scheduler_request(n: u64) -> Request {
    Request::new(request_id(n), (0..128).collect())
}

fn journey_event_recording(c: &mut Criterion) {
    install_serve_subscriber();
    let request = scheduler_request(0);
    c.bench_function("journey_event_recording", |b| {
        b.iter_custom(|iters| {
            let mut measured = Duration::ZERO;
            let mut done = 0;
            while done < iters {
                let (api, core) = sampled_journey(done);
                let batch = EVENTS_PER_SPAN.min(iters - done);
                let start = Instant::now();
                for step in 0..batch {
                    core.queued(black_box(&request), step);
                }
                measured += start.elapsed();
                done += batch;
                drop(core);
                drop(api);
            }
            measured
        })
    });
}

fn whole_journey_sampled_in(c: &mut Criterion) {
    install_serve_subscriber();
    let config = config(1.0);
    let headers = typical_headers();
    let submitted = EngineRequest {
        request_id: request_id(2),
        prompt_ids: (0..128).collect(),
        params: SamplingParams {
            max_tokens: 64,
            ..SamplingParams::default()
        },
        priority: 0,
        arrival: Instant::now(),
        traced: true,
        trace_id: None,
    };
    let finished = FinishedInfo {
        reason: FinishReason::Length,
        prompt_tokens: 128,
        completion_tokens: 64,
        cached_prompt_tokens: 0,
        num_preemptions: 0,
        error: None,
        timings: EngineTimings {
            queue: Some(0.01),
            prefill: Some(0.2),
            decode: Some(3.0),
        },
    };
    c.bench_function("whole_journey_sampled_in", |b| {
        b.iter_batched(
            || scheduler_request(2),
            |request| {
                let id = &submitted.request_id;
                let mut api = ApiJourney::start(
                    &config,
                    &headers,
                    Api::Completions,
                    id,
                    MODEL,
                    Instant::now(),
                )
                .expect("rate 1.0 samples every request");
                black_box(api.trace_headers());
                api.handoff(&submitted, false);
                let mut core = Journey::start(api.span(), id, 64);
                core.queued(&request, 1);
                core.scheduled(&request, 2);
                core.token(&request, 2);
                api.response();
                core.finished(&request, 65, FinishReason::Length);
                api.finished(&finished, 200);
            },
            BatchSize::SmallInput,
        )
    });
}

fn step_events(c: &mut Criterion) {
    install_serve_subscriber();
    let mut group = c.benchmark_group("step");
    let mut rare = StepTracer::new(Some(StepTracingConfig {
        sample_rate: 0.01,
        rich_subsample_rate: 0.001,
    }));
    group.bench_function("not_sampled", |b| {
        b.iter(|| black_box(rare.sample()).is_some())
    });

    let mut every = StepTracer::new(Some(StepTracingConfig {
        sample_rate: 1.0,
        rich_subsample_rate: 1.0,
    }));
    let stats = StepStats {
        step: 812,
        num_prefill_tokens: 256,
        num_decode_tokens: 31,
        num_prefill_seqs: 1,
        num_decode_seqs: 31,
        num_waiting: 4,
        num_running: 32,
        kv_usage: 0.42,
        num_free_blocks: 1187,
        num_total_blocks: 2048,
        ..StepStats::default()
    };
    group.bench_function("batch_summary", |b| {
        b.iter(|| {
            let step = every.sample().expect("rate 1.0 samples every step");
            step.batch_summary(black_box(&stats), 1);
        })
    });

    let request = scheduler_request(3);
    let blocks: Vec<BlockId> = (0..9).map(BlockId).collect();
    let sequence = ScheduledSequence {
        request_id: request.request_id(),
        location: Default::default(),
        token_ids: &[17],
        num_computed_tokens: 130,
        block_table: &blocks,
        samples: true,
    };
    group.bench_function("request_snapshot", |b| {
        b.iter(|| step_trace::request_snapshot(812, black_box(&request), &sequence, 16))
    });
    group.finish();
}

criterion_group!(
    benches,
    sampled_out_request,
    journey_event_recording,
    whole_journey_sampled_in,
    step_events
);
criterion_main!(benches);
