//! What reaches the exporter when `RotatingSpanLayer` puts process-level events on rotating
//! spans.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use opentelemetry::trace::{
    Event, Link, SpanContext, SpanId, SpanKind, TraceId, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue, Value};
use opentelemetry_sdk::trace::{
    InMemorySpanExporter, Sampler, SamplingDecision, SamplingResult, SdkTracer, SdkTracerProvider,
    ShouldSample, SpanData, TracerProviderBuilder,
};
use tracing::{field, Dispatch, Level};
use tracing_subscriber::prelude::*;
use waypoint_layers::{
    monotonic_seconds, wall_time_of, RotatingSpanHandle, RotatingSpanLayer, SpanEventLayer,
    END_REASON_ATTRIBUTE, MAX_EVENTS_ATTRIBUTE, SEQUENCE_ATTRIBUTE, WINDOW_SECONDS_ATTRIBUTE,
};

const SCOPE: &str = "waypoint.scheduler.step";
const SPAN_NAME: &str = "scheduler_steps";

/// A provider that exports to memory as each span ends, and its exporter.
struct Export {
    provider: SdkTracerProvider,
    exporter: InMemorySpanExporter,
}

impl Export {
    fn with(builder: TracerProviderBuilder) -> Self {
        let exporter = InMemorySpanExporter::default();
        let provider = builder.with_simple_exporter(exporter.clone()).build();
        Self { provider, exporter }
    }

    fn new() -> Self {
        Self::with(SdkTracerProvider::builder())
    }

    fn layer(&self) -> RotatingSpanLayer<SdkTracer> {
        RotatingSpanLayer::new(self.provider.tracer(SCOPE), SPAN_NAME)
            .with_target("waypoint::step", "step")
    }

    fn spans(&self) -> Vec<SpanData> {
        self.exporter.get_finished_spans().unwrap()
    }
}

/// Emits under `layer` alone, and hands back a handle on it.
fn run(layer: RotatingSpanLayer<SdkTracer>, emit: impl FnOnce()) -> RotatingSpanHandle {
    let handle = layer.handle();
    tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), emit);
    handle
}

fn step(id: u64, at: f64) {
    tracing::event!(
        target: "waypoint::step",
        Level::INFO,
        "event.type" = "BATCH_SUMMARY",
        ts.monotonic = at,
        step.id = id,
    );
}

fn attribute<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a Value> {
    attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| &kv.value)
}

fn sequence(span: &SpanData) -> &Value {
    attribute(&span.attributes, SEQUENCE_ATTRIBUTE).expect("every span has a sequence")
}

fn end_reason(span: &SpanData) -> &Value {
    attribute(&span.attributes, END_REASON_ATTRIBUTE).expect("every span has an end reason")
}

fn step_ids(span: &SpanData) -> Vec<i64> {
    span.events
        .iter()
        .map(|event| match attribute(&event.attributes, "step.id") {
            Some(Value::I64(id)) => *id,
            other => panic!("step.id: {other:?}"),
        })
        .collect()
}

fn linked(span: &SpanData) -> Vec<&SpanContext> {
    span.links.iter().map(|link| &link.span_context).collect()
}

#[test]
fn events_become_span_events_of_a_root_span() {
    let export = Export::new();
    let nothing: Option<u64> = None;
    // In the past, so that the event without a time, dated now, comes last.
    let t = monotonic_seconds() - 1.0;
    let handle = run(export.layer(), || {
        // Whatever span an event is in, it goes on the rotating span.
        let _unrelated = tracing::info_span!("unrelated").entered();
        tracing::event!(
            target: "waypoint::step",
            Level::INFO,
            "event.type" = "BATCH_SUMMARY",
            ts.monotonic = t,
            step.id = 41u64,
            queue.running_depth = 3i64,
            kv.usage_gpu_ratio = 0.25,
            preempted = false,
            model = "llama",
            huge = u64::MAX,
            reason = field::Empty,
            maybe = nothing,
            "the message is no attribute"
        );
        tracing::event!(
            target: "waypoint::step::requests",
            Level::INFO,
            event.r#type = "REQUEST_SNAPSHOT",
            ts.monotonic = t + 0.5,
            request.id = 7,
        );
        tracing::event!(target: "waypoint::step", Level::INFO, step.id = 1, "no type");
    });
    assert!(export.spans().is_empty(), "nothing ends on its own");
    assert!(handle.end_current());

    let spans = export.spans();
    assert_eq!(spans.len(), 1);
    let span = &spans[0];
    assert_eq!(span.name, SPAN_NAME);
    assert_eq!(span.span_kind, SpanKind::Internal);
    assert_eq!(span.instrumentation_scope.name(), SCOPE);
    assert_eq!(span.parent_span_id, SpanId::INVALID, "a root span");
    assert!(span.links.is_empty(), "the first span links to nothing");
    assert_eq!(span.start_time, wall_time_of(t));

    let names: Vec<&str> = span.events.iter().map(|event| &*event.name).collect();
    assert_eq!(
        names,
        [
            "step.BATCH_SUMMARY",
            "step.REQUEST_SNAPSHOT",
            "step.no type"
        ]
    );
    let expected: Vec<KeyValue> = [
        ("event.type", Value::from("BATCH_SUMMARY")),
        ("ts.monotonic", Value::F64(t)),
        ("step.id", Value::I64(41)),
        ("queue.running_depth", Value::I64(3)),
        ("kv.usage_gpu_ratio", Value::F64(0.25)),
        ("preempted", Value::Bool(false)),
        ("model", Value::from("llama")),
        ("huge", Value::from(u64::MAX.to_string())),
    ]
    .into_iter()
    .map(|(key, value)| KeyValue::new(key, value))
    .collect();
    assert_eq!(span.events[0].attributes, expected);
    assert_eq!(span.events[0].timestamp, wall_time_of(t));
    assert_eq!(span.events[1].timestamp, wall_time_of(t + 0.5));
    // No `ts.monotonic`: the mapped current time.
    let untimed = span.events[2].timestamp;
    assert!(wall_time_of(t + 0.5) <= untimed && untimed <= wall_time_of(monotonic_seconds()));
    assert_eq!(span.end_time, untimed, "a span ends at its latest event");
}

#[test]
fn a_full_span_ends_and_the_next_links_to_it() {
    let export = Export::new();
    let t = monotonic_seconds();
    let handle = run(export.layer().with_max_events(3), || {
        for id in 0..7 {
            step(id, t + id as f64 * 0.1);
        }
    });
    assert_eq!(export.spans().len(), 2, "full spans end at once");
    assert!(handle.end_current());
    assert!(!handle.end_current(), "nothing left to end");

    let spans = export.spans();
    let ids: Vec<Vec<i64>> = spans.iter().map(step_ids).collect();
    assert_eq!(ids, [vec![0, 1, 2], vec![3, 4, 5], vec![6]]);
    for (index, span) in spans.iter().enumerate() {
        assert_eq!(sequence(span), &Value::I64(index as i64));
        assert_eq!(span.events.dropped_count, 0);
        assert_eq!(
            attribute(&span.attributes, MAX_EVENTS_ATTRIBUTE),
            Some(&Value::I64(3))
        );
        assert_eq!(
            attribute(&span.attributes, WINDOW_SECONDS_ATTRIBUTE),
            Some(&Value::F64(10.0))
        );
        assert_eq!(span.start_time, span.events[0].timestamp);
        assert_eq!(span.end_time, span.events.last().unwrap().timestamp);
    }
    assert_eq!(linked(&spans[1]), [&spans[0].span_context]);
    assert_eq!(linked(&spans[2]), [&spans[1].span_context]);
    let reasons: Vec<&Value> = spans.iter().map(end_reason).collect();
    assert_eq!(
        reasons,
        [
            &Value::from("max_events"),
            &Value::from("max_events"),
            &Value::from("end_current")
        ]
    );
    // Each span is a trace of its own: only the links chain them.
    assert_ne!(
        spans[0].span_context.trace_id(),
        spans[1].span_context.trace_id()
    );
}

#[test]
fn an_event_past_the_window_starts_the_next_span() {
    let export = Export::new();
    // Whole seconds, so that every sum below is exact and each boundary falls where written.
    let t = monotonic_seconds().floor();
    // A window runs from the event that starts its span, not from a multiple of the window:
    // [t, t + 10), then [t + 13, t + 23), then from t + 23.
    let stamps = [0.0, 4.0, 9.999, 13.0, 20.0, 22.999, 23.0];
    let handle = run(export.layer().with_window(Duration::from_secs(10)), || {
        for (id, offset) in stamps.into_iter().enumerate() {
            step(id as u64, t + offset);
        }
    });
    handle.end_current();

    let spans = export.spans();
    let ids: Vec<Vec<i64>> = spans.iter().map(step_ids).collect();
    assert_eq!(ids, [vec![0, 1, 2], vec![3, 4, 5], vec![6]]);
    let starts: Vec<SystemTime> = spans.iter().map(|span| span.start_time).collect();
    assert_eq!(
        starts,
        [
            wall_time_of(t),
            wall_time_of(t + 13.0),
            wall_time_of(t + 23.0)
        ]
    );
    // Each span ends at its latest event: the gap from t + 9.999 to t + 13 is in no span.
    let ends: Vec<SystemTime> = spans.iter().map(|span| span.end_time).collect();
    assert_eq!(
        ends,
        [
            wall_time_of(t + 9.999),
            wall_time_of(t + 22.999),
            wall_time_of(t + 23.0)
        ]
    );
    assert_eq!(end_reason(&spans[0]), &Value::from("window"));
    assert_eq!(end_reason(&spans[1]), &Value::from("window"));
    assert_eq!(linked(&spans[1]), [&spans[0].span_context]);
    assert_eq!(linked(&spans[2]), [&spans[1].span_context]);
}

#[test]
fn an_event_dated_before_its_span_stays_on_it() {
    let export = Export::new();
    let t = monotonic_seconds();
    let handle = run(export.layer(), || {
        step(0, t + 5.0);
        step(1, t); // reported late
        step(2, t + 6.0);
    });
    handle.end_current();
    let spans = export.spans();
    assert_eq!(spans.iter().map(step_ids).collect::<Vec<_>>(), [[0, 1, 2]]);
    assert_eq!(spans[0].start_time, wall_time_of(t + 5.0));
    assert_eq!(spans[0].end_time, wall_time_of(t + 6.0));
}

#[test]
fn the_handle_ends_a_span_whose_window_has_passed() {
    let export = Export::new();
    let layer = export.layer();
    // A handle made before `with_window` sees the window set after it.
    let handle = layer.handle();
    let layer = layer.with_window(Duration::from_secs(10));
    let dispatch = Dispatch::new(tracing_subscriber::registry().with(layer));
    let t = monotonic_seconds();

    assert!(!handle.rotate_if_due_at(t + 100.0), "no span yet");
    tracing::dispatcher::with_default(&dispatch, || step(0, t));
    assert!(!handle.rotate_if_due_at(t + 9.5));
    assert!(export.spans().is_empty());
    assert!(handle.clone().rotate_if_due_at(t + 10.0));
    assert!(!handle.rotate_if_due_at(t + 30.0), "already ended");

    let spans = export.spans();
    assert_eq!(spans.len(), 1);
    assert_eq!(end_reason(&spans[0]), &Value::from("window"));
    assert_eq!(
        spans[0].end_time,
        wall_time_of(t),
        "its latest event, not the timer's"
    );

    // The next event starts the next span, linked to the one the handle ended.
    tracing::dispatcher::with_default(&dispatch, || step(1, t + 40.0));
    handle.end_current();
    let spans = export.spans();
    assert_eq!(spans.len(), 2);
    assert_eq!(sequence(&spans[1]), &Value::I64(1));
    assert_eq!(linked(&spans[1]), [&spans[0].span_context]);
}

#[test]
fn the_handle_reads_the_clock_itself() {
    let export = Export::new();
    let handle = run(export.layer().with_window(Duration::ZERO), || {
        step(0, monotonic_seconds());
        // A zero window: each event has a span of its own.
        step(1, monotonic_seconds());
    });
    assert_eq!(export.spans().len(), 1);
    assert!(handle.rotate_if_due(), "now is at or past the last start");
    let spans = export.spans();
    assert_eq!(spans.iter().map(step_ids).collect::<Vec<_>>(), [[0], [1]]);
}

#[test]
fn events_of_other_targets_are_left_alone() {
    let export = Export::new();
    let layer = export
        .layer()
        .with_target("waypoint::step::quiet", "quiet")
        .with_target("waypoint::journey::step", "");
    let handle = run(layer, || {
        tracing::event!(target: "waypoint::engine", Level::INFO, "event.type" = "STEP");
        tracing::event!(target: "waypoint", Level::INFO, "event.type" = "ROOT");
        tracing::event!(Level::INFO, "event.type" = "DEFAULT_TARGET");
        tracing::event!(target: "waypoint::step::quiet::x", Level::INFO, "event.type" = "LONGEST");
        tracing::event!(target: "waypoint::journey::step", Level::INFO, "event.type" = "BARE");
    });
    handle.end_current();
    let spans = export.spans();
    let names: Vec<&str> = spans[0].events.iter().map(|e| &*e.name).collect();
    assert_eq!(names, ["quiet.LONGEST", "BARE"]);
}

#[test]
fn with_no_chosen_event_no_span_starts() {
    let export = Export::new();
    let handle = run(export.layer(), || {
        tracing::event!(target: "elsewhere", Level::INFO, "event.type" = "STEP");
    });
    assert!(!handle.end_current());
    assert!(export.spans().is_empty());
}

#[test]
fn an_always_off_sampler_exports_nothing() {
    let export = Export::with(SdkTracerProvider::builder().with_sampler(Sampler::AlwaysOff));
    let t = monotonic_seconds();
    let handle = run(export.layer().with_max_events(2), || {
        for id in 0..10 {
            step(id, t + id as f64);
        }
    });
    handle.rotate_if_due_at(t + 100.0);
    handle.end_current();
    assert!(export.spans().is_empty());
}

/// Samples the spans with an even sequence attribute, drops the others.
#[derive(Debug, Clone)]
struct EvenSequencesOnly;

impl ShouldSample for EvenSequencesOnly {
    fn should_sample(
        &self,
        _: Option<&Context>,
        _: TraceId,
        _: &str,
        _: &SpanKind,
        attributes: &[KeyValue],
        _: &[Link],
    ) -> SamplingResult {
        let even =
            matches!(attribute(attributes, SEQUENCE_ATTRIBUTE), Some(Value::I64(n)) if n % 2 == 0);
        SamplingResult {
            decision: if even {
                SamplingDecision::RecordAndSample
            } else {
                SamplingDecision::Drop
            },
            attributes: Vec::new(),
            trace_state: Default::default(),
        }
    }
}

#[test]
fn links_skip_the_spans_the_sampler_dropped() {
    let export = Export::with(SdkTracerProvider::builder().with_sampler(EvenSequencesOnly));
    // Whole seconds: exact sums, so each window ends where written.
    let t = monotonic_seconds().floor();
    // Two events per window; a dropped span is never full, so its window alone ends it.
    let handle = run(export.layer().with_max_events(2), || {
        for window in 0..5u64 {
            for id in 0..2 {
                step(window * 10 + id, t + window as f64 * 10.0 + id as f64);
            }
        }
    });
    handle.end_current();
    let spans = export.spans();
    let sequences: Vec<&Value> = spans.iter().map(sequence).collect();
    // Span 0 is full after two events; span 1 starts at the third.
    assert_eq!(sequences, [&Value::I64(0), &Value::I64(2), &Value::I64(4)]);
    assert_eq!(
        spans.iter().map(step_ids).collect::<Vec<_>>(),
        [vec![0, 1], vec![20, 21], vec![40, 41]]
    );
    assert_eq!(linked(&spans[1]), [&spans[0].span_context]);
    assert_eq!(linked(&spans[2]), [&spans[1].span_context]);
}

#[test]
fn events_from_four_threads_all_land_in_order() {
    const THREADS: u64 = 4;
    const EVENTS: u64 = 250;
    let export = Export::new();
    let layer = export.layer().with_max_events(16);
    let handle = layer.handle();
    let dispatch = Dispatch::new(tracing_subscriber::registry().with(layer));
    std::thread::scope(|scope| {
        for thread in 0..THREADS {
            let dispatch = &dispatch;
            scope.spawn(move || {
                tracing::dispatcher::with_default(dispatch, || {
                    for n in 0..EVENTS {
                        step(thread * 1_000 + n, monotonic_seconds());
                    }
                })
            });
        }
    });
    handle.end_current();

    let mut spans = export.spans();
    // Spans are ended once the lock is released, so two threads may export two spans in
    // either order: the sequence and the links give the chain's order.
    spans.sort_by_key(|span| match sequence(span) {
        Value::I64(n) => *n,
        other => panic!("sequence: {other:?}"),
    });
    let ids: Vec<i64> = spans.iter().flat_map(step_ids).collect();
    assert_eq!(ids.len() as u64, THREADS * EVENTS, "no event lost");
    for thread in 0..THREADS as i64 {
        let own: Vec<i64> = ids
            .iter()
            .copied()
            .filter(|id| id / 1_000 == thread)
            .collect();
        let expected: Vec<i64> = (0..EVENTS as i64).map(|n| thread * 1_000 + n).collect();
        assert_eq!(own, expected, "each thread's events in its order");
    }
    for (index, span) in spans.iter().enumerate() {
        assert!(span.events.len() <= 16 && span.events.dropped_count == 0);
        assert_eq!(sequence(span), &Value::I64(index as i64));
        if index > 0 {
            assert_eq!(linked(span), [&spans[index - 1].span_context]);
        }
    }
}

/// Panics at its first decision, while the layer holds its lock, and samples afterwards.
#[derive(Debug, Default, Clone)]
struct PanicsOnce(Arc<AtomicBool>);

impl ShouldSample for PanicsOnce {
    fn should_sample(
        &self,
        _: Option<&Context>,
        _: TraceId,
        _: &str,
        _: &SpanKind,
        _: &[KeyValue],
        _: &[Link],
    ) -> SamplingResult {
        assert!(
            self.0.swap(true, Ordering::SeqCst),
            "the sampler fails once"
        );
        SamplingResult {
            decision: SamplingDecision::RecordAndSample,
            attributes: Vec::new(),
            trace_state: Default::default(),
        }
    }
}

#[test]
fn a_panic_while_the_lock_is_held_does_not_stop_the_layer() {
    let export = Export::with(SdkTracerProvider::builder().with_sampler(PanicsOnce::default()));
    let layer = export.layer();
    let handle = layer.handle();
    let dispatch = Dispatch::new(tracing_subscriber::registry().with(layer));
    let t = monotonic_seconds();
    tracing::dispatcher::with_default(&dispatch, || {
        let panicked = catch_unwind(AssertUnwindSafe(|| step(0, t)));
        assert!(panicked.is_err());
        step(1, t + 1.0);
        step(2, t + 2.0);
    });
    assert!(handle.end_current());
    let spans = export.spans();
    assert_eq!(spans.iter().map(step_ids).collect::<Vec<_>>(), [[1, 2]]);
    // The span that failed to start used up its number.
    assert_eq!(sequence(&spans[0]), &Value::I64(1));
}

#[test]
fn dropping_the_layer_ends_its_span() {
    let export = Export::new();
    let t = monotonic_seconds();
    drop(run(export.layer(), || step(0, t)));
    let spans = export.spans();
    assert_eq!(spans.len(), 1);
    assert_eq!(end_reason(&spans[0]), &Value::from("dropped"));
    assert_eq!(spans[0].end_time, wall_time_of(t));
}

#[test]
fn the_otel_filter_keeps_step_events_off_an_enclosing_span() {
    let export = Export::new();
    let span_events = SpanEventLayer::new().with_target("waypoint::journey", "journey");
    let steps = export.layer();
    let handle = steps.handle();
    let otel = tracing_opentelemetry::layer()
        .with_tracer(export.provider.tracer("waypoint"))
        .with_filter(span_events.otel_filter().and_except(steps.otel_filter()));
    let subscriber = tracing_subscriber::registry()
        .with(otel)
        .with(span_events)
        .with(steps);
    tracing::subscriber::with_default(subscriber, || {
        let _run = tracing::info_span!("run").entered();
        step(0, monotonic_seconds());
        tracing::event!(target: "waypoint::journey", Level::INFO, "event.type" = "QUEUED");
        tracing::info!(target: "my_app", "an ordinary log line");
    });
    handle.end_current();

    let spans = export.spans();
    let names_on = |name: &str| -> Vec<String> {
        let span = spans.iter().find(|span| span.name == name).unwrap();
        span.events
            .iter()
            .map(|e: &Event| e.name.to_string())
            .collect()
    };
    assert_eq!(names_on("run"), ["journey.QUEUED", "an ordinary log line"]);
    assert_eq!(names_on(SPAN_NAME), ["step.BATCH_SUMMARY"]);
}

#[test]
fn the_layer_and_its_handle_print_for_debugging() {
    let export = Export::new();
    let layer = export.layer().with_max_events(7);
    let handle = layer.handle();
    let printed = format!("{layer:?}");
    assert!(printed.starts_with("RotatingSpanLayer"), "{printed}");
    assert!(printed.contains("max_events: 7"), "{printed}");
    assert!(format!("{handle:?}").starts_with("RotatingSpanHandle"));
}
