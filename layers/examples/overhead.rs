//! What one chosen event costs, in nanoseconds, inside (a) a span that is sampled out and
//! (b) a span that records, with (c) an event of a target the layer does not choose, in a
//! recording span, for comparison; then what a step event costs `RotatingSpanLayer` when its
//! span is (d) sampled out and (e) recording (rotations, every 1,000 events, included).
//!
//! ```text
//! cargo run --release --example overhead [events per case]
//! ```
//!
//! A plain loop over `Instant`, the median of five runs per case: figures to report, not a
//! statistically careful benchmark. The events carry a `ts.monotonic` read once per span, so
//! that the figures are the subscriber's and the layers' cost, not the clock's.

use std::hint::black_box;
use std::time::{Duration, Instant};

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{InMemorySpanExporter, Sampler, SdkTracerProvider};
use tracing::Level;
use tracing_subscriber::prelude::*;
use waypoint_layers::{monotonic_seconds, RotatingSpanLayer, SpanEventLayer};

/// Events per span: the provider keeps them all, as a tuned deployment would.
const EVENTS_PER_SPAN: usize = 1_000;

fn main() {
    let events: usize = std::env::args()
        .nth(1)
        .map(|arg| arg.parse().expect("events per case: a whole number"))
        .unwrap_or(200_000);
    let sampled_out = median_of_runs(|| nanos_per_event(Sampler::AlwaysOff, true, events));
    let recording = median_of_runs(|| nanos_per_event(Sampler::AlwaysOn, true, events));
    let other_target = median_of_runs(|| nanos_per_event(Sampler::AlwaysOn, false, events));
    println!("ns per event, {events} events per case, {EVENTS_PER_SPAN} events per span:");
    println!("  (a) sampled-out span:                   {sampled_out:8.1}");
    println!("  (b) recording span:                     {recording:8.1}");
    println!("  (c) recording span, target not chosen:  {other_target:8.1}");
    let rotating_out = median_of_runs(|| nanos_per_step_event(Sampler::AlwaysOff, events));
    let rotating = median_of_runs(|| nanos_per_step_event(Sampler::AlwaysOn, events));
    println!("  (d) rotating span, sampled out:         {rotating_out:8.1}");
    println!("  (e) rotating span, recording:           {rotating:8.1}");
}

fn median_of_runs(mut run: impl FnMut() -> f64) -> f64 {
    let mut runs: Vec<f64> = (0..5).map(|_| run()).collect();
    runs.sort_by(f64::total_cmp);
    runs[runs.len() / 2]
}

fn nanos_per_event(sampler: Sampler, chosen_target: bool, events: usize) -> f64 {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_sampler(sampler)
        .with_max_events_per_span(EVENTS_PER_SPAN as u32)
        .with_simple_exporter(exporter.clone())
        .build();
    let span_events = SpanEventLayer::new().with_target("waypoint::journey", "journey");
    // The otel layer sees spans only, so that (c) measures the subscriber's dispatch, not
    // tracing_opentelemetry's own span events.
    let otel = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("overhead"))
        .with_filter(tracing_subscriber::filter::filter_fn(|metadata| {
            metadata.is_span()
        }));
    let subscriber = tracing_subscriber::registry().with(otel).with(span_events);

    let mut measured = Duration::ZERO;
    tracing::subscriber::with_default(subscriber, || {
        let mut emitted = 0;
        while emitted < events {
            let span = tracing::info_span!("request", request.id = emitted as u64);
            let _entered = span.enter();
            let batch = EVENTS_PER_SPAN.min(events - emitted);
            let ts = monotonic_seconds();
            let start = Instant::now();
            for step in 0..batch {
                if chosen_target {
                    emit_journey(step, ts);
                } else {
                    emit_engine(step, ts);
                }
            }
            measured += start.elapsed();
            emitted += batch;
            drop(_entered);
            drop(span);
            exporter.reset();
        }
    });
    measured.as_nanos() as f64 / events as f64
}

fn nanos_per_step_event(sampler: Sampler, events: usize) -> f64 {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_sampler(sampler)
        .with_max_events_per_span(EVENTS_PER_SPAN as u32)
        .with_simple_exporter(exporter.clone())
        .build();
    let steps = RotatingSpanLayer::new(provider.tracer("overhead"), "scheduler_steps")
        .with_target("waypoint::step", "step")
        .with_max_events(EVENTS_PER_SPAN);
    let handle = steps.handle();
    let subscriber = tracing_subscriber::registry().with(steps);

    let mut measured = Duration::ZERO;
    tracing::subscriber::with_default(subscriber, || {
        let mut emitted = 0;
        while emitted < events {
            let batch = EVENTS_PER_SPAN.min(events - emitted);
            let ts = monotonic_seconds();
            let start = Instant::now();
            for step in 0..batch {
                emit_step(step, ts);
            }
            measured += start.elapsed();
            emitted += batch;
            exporter.reset();
        }
    });
    handle.end_current();
    measured.as_nanos() as f64 / events as f64
}

fn emit_step(step: usize, ts: f64) {
    tracing::event!(
        target: "waypoint::step",
        Level::INFO,
        "event.type" = "BATCH_SUMMARY",
        ts.monotonic = ts,
        step.id = black_box(step) as u64,
        queue.running_depth = 17i64,
        kv.usage_gpu_ratio = 0.5,
        preempted = false,
    );
}

fn emit_journey(step: usize, ts: f64) {
    tracing::event!(
        target: "waypoint::journey",
        Level::INFO,
        "event.type" = "TOKEN",
        ts.monotonic = ts,
        step = black_box(step) as u64,
        tokens.generated = 17i64,
        finish_reason = "length",
        preempted = false,
    );
}

fn emit_engine(step: usize, ts: f64) {
    tracing::event!(
        target: "waypoint::engine",
        Level::INFO,
        "event.type" = "TOKEN",
        ts.monotonic = ts,
        step = black_box(step) as u64,
        tokens.generated = 17i64,
        finish_reason = "length",
        preempted = false,
    );
}
