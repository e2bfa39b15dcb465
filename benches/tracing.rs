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
//! - `recorded_request_dropped`: what tail retention costs a request the head draw missed
//!   and the rules drop (the common case below rate 1): both journeys recorded in memory
//!   from the decision to the drop (the same eight events and attributes as below, no span).
//! - `recorded/event`: one engine journey event kept in memory by a recorded journey (what
//!   tail retention costs the engine thread per event). Target: under 1 µs.
//! - `recorded/step_share`: what one step adds to a scheduled request's journey
//!   (interference attribution), per request.
//! - `journey_event_recording`: one engine journey event (`QUEUED`: the nine fields every
//!   journey event has) on a recording `llm_core` span, both spans alive, a fresh pair every
//!   60 events so the journey's own bound (`MAX_JOURNEY_EVENTS`) never drops one. Target:
//!   under 2 µs.
//! - `whole_journey_sampled_in`: a sampled request's two spans, from the sampling decision to
//!   both spans ended (eight events, the response's trace headers, attributes), for context.
//! - `step_not_sampled`: the step sampler's draw at `--step-tracing-sample-rate 0.01`.
//! - `step_batch_summary`, `step_request_snapshot`: one step event on the rotating
//!   `scheduler_steps` spans (rotations every 1024 events included).
//!
//! The layers alone (no console, no `waypoint` crate) are measured per event by
//! `cargo run --release -p waypoint-layers --example overhead`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderValue};
use criterion::{criterion_group, criterion_main, Criterion};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{BatchSpanProcessor, SpanData, SpanExporter};
use waypoint::engine::journey::{Journey, JourneyMode, StepShare, TailRetention};
use waypoint::engine::kv_cache::BlockId;
use waypoint::engine::output::{ScheduledSequence, StepStats};
use waypoint::engine::request::Request;
use waypoint::engine::retention::{KeepRules, Outcome};
use waypoint::engine::step_trace::{self, StepTracer};
use waypoint::engine::{
    EngineRequest, EngineTimings, FinishReason, FinishedInfo, StepTracingConfig,
};
use waypoint::metrics::Metrics;
use waypoint::sampling::SamplingParams;
use waypoint::server::journey::{ApiJourney, JourneyContext, JourneySettings};
use waypoint::server::output::Api;
use waypoint::server::ServerConfig;
use waypoint::telemetry::{self, replay, LogFormat};

/// Events per `llm_core` span in `journey_event_recording`, below the journey's bound.
const EVENTS_PER_SPAN: u64 = 60;

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
        let provider = replay::with_processor(
            replay::provider_builder(),
            BatchSpanProcessor::builder(DroppingExporter).build(),
        )
        .with_max_events_per_span(max_events)
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

fn metrics() -> Arc<Metrics> {
    Arc::new(Metrics::new(MODEL, 2048))
}

/// A finished request of 128 prompt and 64 output tokens.
fn finished_info() -> FinishedInfo {
    FinishedInfo {
        reason: FinishReason::Length,
        prompt_tokens: 128,
        completion_tokens: 64,
        cached_prompt_tokens: 0,
        num_preemptions: 0,
        error: None,
        timings: EngineTimings {
            received: Some(0.001),
            queue: Some(0.01),
            prefill: Some(0.2),
            decode: Some(3.0),
        },
        journey: None,
        kept: None,
    }
}

/// How a fast request went: within every default rule.
fn fast_outcome() -> Outcome {
    Outcome {
        reason: FinishReason::Length,
        num_preemptions: 0,
        queue: Some(0.01),
        ttft: Some(0.2),
        itl_max: Some(0.05),
        e2e: 3.2,
    }
}

/// The whole life of one journey, API and engine, as the server drives it.
fn one_journey(config: &ServerConfig, headers: &HeaderMap, metrics: &Arc<Metrics>, n: u64) {
    let request = scheduler_request(n);
    let id = request.request_id().to_string();
    let mut submitted =
        EngineRequest::new(id.clone(), (0..128).collect(), SamplingParams::default());
    let context = JourneyContext {
        config,
        settings: JourneySettings::of(config).expect("journey tracing is on"),
        metrics,
    };
    let mut api = ApiJourney::start(
        &context,
        headers,
        Api::Completions,
        &id,
        MODEL,
        Instant::now(),
    )
    .expect("no unsampled caller");
    black_box(api.trace_headers());
    api.handoff(&submitted, false);
    submitted.journey = api.engine_mode();
    let parent = api.live_span().cloned().unwrap_or_else(tracing::Span::none);
    let mut core = Journey::start(&submitted.journey, &parent, &id, 64).expect("the journey is on");
    core.queued(&request, 1);
    core.scheduled(&request, 2);
    core.token(&request, 2);
    api.response();
    let ended = core.finished(
        &request,
        65,
        FinishReason::Length,
        &fast_outcome(),
        &EngineTimings::default(),
    );
    let mut info = finished_info();
    info.kept = ended.kept;
    info.journey = ended.record.map(Box::new);
    api.finished(&info, 200);
}

fn recorded_request_dropped(c: &mut Criterion) {
    install_serve_subscriber();
    let config = ServerConfig {
        journey_keep: KeepRules::default(),
        ..config(0.0)
    };
    let headers = typical_headers();
    let metrics = metrics();
    let mut n = 0;
    c.bench_function("recorded_request_dropped", |b| {
        b.iter(|| {
            n += 1;
            one_journey(&config, &headers, &metrics, n);
        })
    });
}

/// The API's and the engine's spans of one sampled request.
fn sampled_journey(n: u64, metrics: &Arc<Metrics>) -> (ApiJourney, Journey) {
    let id = request_id(n);
    let config = config(1.0);
    let context = JourneyContext {
        config: &config,
        settings: JourneySettings::of(&config).expect("journey tracing is on"),
        metrics,
    };
    let api = ApiJourney::start(
        &context,
        &HeaderMap::new(),
        Api::Completions,
        &id,
        MODEL,
        Instant::now(),
    )
    .expect("rate 1.0 samples every request");
    let span = api.live_span().expect("sampled in: live");
    let core = Journey::start(&api.engine_mode(), span, &id, 64).expect("live");
    (api, core)
}

fn scheduler_request(n: u64) -> Request {
    Request::new(request_id(n), (0..128).collect())
}

fn journey_event_recording(c: &mut Criterion) {
    install_serve_subscriber();
    let request = scheduler_request(0);
    let metrics = metrics();
    c.bench_function("journey_event_recording", |b| {
        b.iter_custom(|iters| {
            let mut measured = Duration::ZERO;
            let mut done = 0;
            while done < iters {
                let (api, mut core) = sampled_journey(done, &metrics);
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

/// A recorded (tail-retention) engine journey.
fn recorded_journey(n: u64) -> Journey {
    let mode = JourneyMode::Recorded(Arc::new(TailRetention::new(KeepRules::default())));
    Journey::start(&mode, &tracing::Span::none(), &request_id(n), 64).expect("recorded")
}

fn journey_event_recorded(c: &mut Criterion) {
    install_serve_subscriber();
    let request = scheduler_request(0);
    let mut group = c.benchmark_group("recorded");
    // One event kept in memory (a fresh journey every 60, below the bound).
    group.bench_function("event", |b| {
        b.iter_custom(|iters| {
            let mut measured = Duration::ZERO;
            let mut done = 0;
            while done < iters {
                let mut core = recorded_journey(done);
                let batch = EVENTS_PER_SPAN.min(iters - done);
                let start = Instant::now();
                for step in 0..batch {
                    core.queued(black_box(&request), step);
                }
                measured += start.elapsed();
                done += batch;
            }
            measured
        })
    });
    // What each step adds to a scheduled request's journey (interference attribution).
    let mut core = recorded_journey(1);
    let share = StepShare {
        batch_sequences: 32,
        batch_tokens: 287,
        batch_prefill_tokens: 256,
        own_tokens: 1,
        own_prefill_tokens: 0,
    };
    group.bench_function("step_share", |b| {
        b.iter(|| core.scheduled_in(black_box(share)))
    });
    group.finish();
}

fn whole_journey_sampled_in(c: &mut Criterion) {
    install_serve_subscriber();
    let config = config(1.0);
    let headers = typical_headers();
    let metrics = metrics();
    let mut n = 0;
    c.bench_function("whole_journey_sampled_in", |b| {
        b.iter(|| {
            n += 1;
            one_journey(&config, &headers, &metrics, n);
        })
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

/// What the debug API's step ring costs the engine thread per step: a summary built from
/// the step's stats, a clock read and a push into the ring (the rest of the live view is
/// built only when `/debug` asks).
fn debug_step_ring(c: &mut Criterion) {
    use waypoint::engine::inspect::{StepRing, StepSummary};
    let stats = StepStats {
        step: 812,
        num_decode_tokens: 64,
        num_decode_seqs: 64,
        num_running: 64,
        kv_usage: 0.42,
        ..StepStats::default()
    };
    let mut ring = StepRing::default();
    c.bench_function("debug_step_ring_push", |b| {
        b.iter(|| {
            ring.push(StepSummary::of(
                black_box(&stats),
                waypoint_layers::monotonic_seconds(),
                0.1,
                0.09,
                0,
            ))
        })
    });
}

criterion_group!(
    benches,
    recorded_request_dropped,
    journey_event_recorded,
    journey_event_recording,
    whole_journey_sampled_in,
    step_events,
    debug_step_ring
);
criterion_main!(benches);
