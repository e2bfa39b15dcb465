//! Sampled-out spans cost no allocation: the layers return before building anything.
//!
//! Its own test binary, because it counts allocations with a global allocator (per thread,
//! so the tests in this file can still run side by side).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{InMemorySpanExporter, Sampler, SdkTracerProvider};
use tracing::{field, Level};
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::prelude::*;
use waypoint_layers::{RotatingSpanLayer, SpanEventLayer};

struct CountingAllocator;

thread_local! {
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

fn count_one() {
    // `try_with`: allocations can happen while the thread-local is being torn down.
    let _ = ALLOCATIONS.try_with(|count| count.set(count.get() + 1));
}

// SAFETY: every call is forwarded unchanged to the system allocator.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count_one();
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count_one();
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count_one();
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

#[derive(Clone, Copy, PartialEq)]
enum Case {
    /// The sampler says no to every span.
    SampledOut,
    /// The otel layer's filter hides the span: it has no OpenTelemetry span at all.
    NoOtelSpan,
    /// Every span is recorded.
    Recording,
}

/// Allocations on this thread while `events` events are emitted in one span, after a first
/// event (which resolves the span's OpenTelemetry context).
fn allocations_for_events(case: Case, events: usize) -> usize {
    let sampler = match case {
        Case::SampledOut => Sampler::AlwaysOff,
        Case::NoOtelSpan | Case::Recording => Sampler::AlwaysOn,
    };
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_sampler(sampler)
        .with_simple_exporter(exporter)
        .build();
    let span_events = SpanEventLayer::new().with_target("waypoint::journey", "journey");
    let otel_filter = span_events.otel_filter();
    let otel = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("test"))
        .with_filter(filter_fn(move |metadata| {
            metadata.name() != "invisible" && otel_filter.passes(metadata)
        }));
    let subscriber = tracing_subscriber::registry().with(otel).with(span_events);
    tracing::subscriber::with_default(subscriber, || {
        let span = if case == Case::NoOtelSpan {
            tracing::info_span!("invisible")
        } else {
            tracing::info_span!("request")
        };
        let _entered = span.enter();
        let emit = |step: usize| {
            tracing::event!(
                target: "waypoint::journey",
                Level::INFO,
                "event.type" = "TOKEN",
                ts.monotonic = 1.5,
                step = step as u64,
                model = "llama",
                stage = ?("decode", step),
                reason = field::Empty,
                "token {step} of {events}"
            );
        };
        emit(0);
        let before = ALLOCATIONS.with(Cell::get);
        for step in 1..=events {
            emit(step);
        }
        ALLOCATIONS.with(Cell::get) - before
    })
}

#[test]
fn a_sampled_out_span_costs_no_allocation() {
    assert_eq!(allocations_for_events(Case::SampledOut, 100), 0);
}

#[test]
fn a_span_without_an_opentelemetry_span_costs_no_allocation() {
    assert_eq!(allocations_for_events(Case::NoOtelSpan, 100), 0);
}

#[test]
fn a_recording_span_does_allocate() {
    // The counter sees the work that the two tests above prove is skipped.
    assert!(allocations_for_events(Case::Recording, 100) >= 100);
}

/// Allocations on this thread for `events` step events on a `RotatingSpanLayer`, after a first
/// one (which starts the rotating span).
fn allocations_for_step_events(sampler: Sampler, events: usize) -> usize {
    let provider = SdkTracerProvider::builder()
        .with_sampler(sampler)
        .with_simple_exporter(InMemorySpanExporter::default())
        .build();
    let steps = RotatingSpanLayer::new(provider.tracer("waypoint.scheduler.step"), "steps")
        .with_target("waypoint::step", "step")
        .with_max_events(events + 1);
    let subscriber = tracing_subscriber::registry().with(steps);
    tracing::subscriber::with_default(subscriber, || {
        let emit = |step: usize| {
            tracing::event!(
                target: "waypoint::step",
                Level::INFO,
                "event.type" = "BATCH_SUMMARY",
                ts.monotonic = 1.5,
                step.id = step as u64,
                model = "llama",
                stage = ?("decode", step),
                reason = field::Empty,
                "step {step} of {events}"
            );
        };
        emit(0);
        let before = ALLOCATIONS.with(Cell::get);
        for step in 1..=events {
            emit(step);
        }
        ALLOCATIONS.with(Cell::get) - before
    })
}

#[test]
fn a_sampled_out_rotating_span_costs_no_allocation() {
    assert_eq!(allocations_for_step_events(Sampler::AlwaysOff, 100), 0);
}

#[test]
fn a_recording_rotating_span_does_allocate() {
    assert!(allocations_for_step_events(Sampler::AlwaysOn, 100) >= 100);
}
