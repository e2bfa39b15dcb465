//! What reaches the exporter when `SpanEventLayer` runs beside `tracing_opentelemetry`'s layer.

use std::collections::HashMap;
use std::time::SystemTime;

use opentelemetry::propagation::TextMapPropagator as _;
use opentelemetry::trace::{
    Event, Link, SpanKind, TraceContextExt as _, TraceId, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue, Value};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    InMemorySpanExporter, Sampler, SamplingDecision, SamplingResult, SdkTracerProvider,
    ShouldSample, SpanData, TracerProviderBuilder,
};
use tracing::{field, Dispatch, Level};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::prelude::*;
use waypoint_layers::{monotonic_seconds, wall_time_of, SpanEventLayer, EVENT_TYPE_FIELD};

/// Which filter `tracing_opentelemetry`'s layer gets.
#[derive(Clone, Copy)]
enum OtelFilter {
    /// `SpanEventLayer::otel_filter`, as the crate documents.
    ExceptSpanEvents,
    /// None: the otel layer adds every event in a span, ours included.
    Nothing,
    /// Spans only: every span event on an exported span comes from our layer.
    SpansOnly,
}

fn span_events() -> SpanEventLayer {
    SpanEventLayer::new()
        .with_target("waypoint::journey", "journey")
        .with_target("waypoint::api", "api")
}

/// Runs `emit` under a subscriber built from `provider`, `span_events()` and the otel layer
/// with `filter`, and returns the spans the in-memory exporter received.
fn export_with(
    provider: TracerProviderBuilder,
    filter: OtelFilter,
    emit: impl FnOnce(&Dispatch),
) -> Vec<SpanData> {
    let exporter = InMemorySpanExporter::default();
    let provider = provider.with_simple_exporter(exporter.clone()).build();
    let otel = tracing_opentelemetry::layer().with_tracer(provider.tracer("test"));
    let events = span_events();
    let dispatch = match filter {
        OtelFilter::ExceptSpanEvents => {
            let otel = otel.with_filter(events.otel_filter());
            Dispatch::new(tracing_subscriber::registry().with(otel).with(events))
        }
        OtelFilter::Nothing => {
            Dispatch::new(tracing_subscriber::registry().with(otel).with(events))
        }
        OtelFilter::SpansOnly => {
            let otel = otel.with_filter(filter_fn(|metadata| metadata.is_span()));
            Dispatch::new(tracing_subscriber::registry().with(otel).with(events))
        }
    };
    tracing::dispatcher::with_default(&dispatch, || emit(&dispatch));
    provider.force_flush().unwrap();
    exporter.get_finished_spans().unwrap()
}

fn export(emit: impl FnOnce()) -> Vec<SpanData> {
    export_with(
        SdkTracerProvider::builder(),
        OtelFilter::ExceptSpanEvents,
        |_| emit(),
    )
}

fn span<'a>(spans: &'a [SpanData], name: &str) -> &'a SpanData {
    spans
        .iter()
        .find(|span| span.name == name)
        .unwrap_or_else(|| panic!("no span named {name} in {spans:#?}"))
}

fn names(span: &SpanData) -> Vec<&str> {
    span.events.iter().map(|event| &*event.name).collect()
}

fn attribute<'a>(event: &'a Event, key: &str) -> Option<&'a Value> {
    event
        .attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| &kv.value)
}

fn keys(event: &Event) -> Vec<&str> {
    event.attributes.iter().map(|kv| kv.key.as_str()).collect()
}

#[test]
fn events_are_named_by_namespace_and_event_type() {
    let spans = export(|| {
        let _request = tracing::info_span!("request").entered();
        tracing::event!(target: "waypoint::api", Level::INFO, "event.type" = "ARRIVED");
        tracing::event!(target: "waypoint::journey", Level::INFO, "event.type" = "QUEUED", "waiting for a slot");
        tracing::event!(target: "waypoint::journey::sched", Level::INFO, "event.type" = ?Stage::Prefill);
        tracing::event!(target: "waypoint::journey", Level::INFO, "event.type" = %Stage::Decode);
    });
    assert_eq!(
        names(span(&spans, "request")),
        [
            "api.ARRIVED",
            "journey.QUEUED",
            "journey.Prefill",
            "journey.decode"
        ]
    );
}

#[derive(Debug)]
enum Stage {
    Prefill,
    Decode,
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Stage::Prefill => "prefill",
            Stage::Decode => "decode",
        })
    }
}

#[test]
fn every_spelling_of_the_event_type_field_works() {
    let spans = export(|| {
        let _request = tracing::info_span!("request").entered();
        tracing::event!(target: "waypoint::api", Level::INFO, "event.type" = "QUOTED");
        tracing::event!(target: "waypoint::api", Level::INFO, event.r#type = "RAW");
        tracing::event!(target: "waypoint::api", Level::INFO, { EVENT_TYPE_FIELD } = "CONST");
        tracing::info!(target: "waypoint::api", tokens = 1, event.r#type = "INFO");
    });
    assert_eq!(
        names(span(&spans, "request")),
        ["api.QUOTED", "api.RAW", "api.CONST", "api.INFO"]
    );
}

#[test]
fn the_message_names_events_without_event_type() {
    let spans = export(|| {
        let _request = tracing::info_span!("request").entered();
        tracing::event!(target: "waypoint::journey", Level::INFO, tokens = 3, "first token sent");
        tracing::event!(target: "waypoint::journey", Level::INFO, "event.type" = field::Empty, "type left empty");
        tracing::event!(target: "waypoint::journey", Level::INFO, tokens = 3);
    });
    let request = span(&spans, "request");
    let names = names(request);
    assert_eq!(
        names[..2],
        ["journey.first token sent", "journey.type left empty"]
    );
    assert!(
        // The callsite's file path is relative to wherever cargo was run from.
        names[2].starts_with("journey.event ") && names[2].contains("tests/span_events.rs:"),
        "{}",
        names[2]
    );
    for event in request.events.iter() {
        assert!(attribute(event, "message").is_none());
        assert!(attribute(event, "event.type").is_none());
    }
}

#[test]
fn the_longest_matching_prefix_picks_the_namespace() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let events = SpanEventLayer::new()
        .with_target("app", "app")
        .with_target("app::db", "db")
        .with_target("bare", "")
        .with_target("app::db", "database");
    let otel = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("test"))
        .with_filter(events.otel_filter());
    let subscriber = tracing_subscriber::registry().with(otel).with(events);
    tracing::subscriber::with_default(subscriber, || {
        let _work = tracing::info_span!("work").entered();
        tracing::event!(target: "app::http", Level::INFO, "event.type" = "A");
        tracing::event!(target: "app::db::pool", Level::INFO, "event.type" = "B");
        tracing::event!(target: "bare", Level::INFO, "event.type" = "C");
    });
    let spans = exporter.get_finished_spans().unwrap();
    assert_eq!(names(span(&spans, "work")), ["app.A", "database.B", "C"]);
}

#[test]
fn fields_become_typed_attributes() {
    let error = std::io::Error::other("disk full");
    let spans = export(|| {
        let _request = tracing::info_span!("request").entered();
        tracing::event!(
            target: "waypoint::journey",
            Level::INFO,
            "event.type" = "FINISHED",
            ts.monotonic = 12.5,
            tokens = -3i64,
            request.id = 42u64,
            huge = u64::MAX,
            wide = -5i128,
            small = 7u8,
            size = 9usize,
            ratio = 0.25,
            half = 0.5f32,
            streamed = true,
            model = "llama",
            owned = String::from("text"),
            stage = ?Stage::Decode,
            shown = %Stage::Decode,
            error = &error as &(dyn std::error::Error + 'static),
            "all done"
        );
    });
    let event = &span(&spans, "request").events[0];
    let expected = [
        ("event.type", Value::from("FINISHED")),
        ("ts.monotonic", Value::F64(12.5)),
        ("tokens", Value::I64(-3)),
        ("request.id", Value::I64(42)),
        ("huge", Value::from(u64::MAX.to_string())),
        ("wide", Value::I64(-5)),
        ("small", Value::I64(7)),
        ("size", Value::I64(9)),
        ("ratio", Value::F64(0.25)),
        ("half", Value::F64(0.5)),
        ("streamed", Value::Bool(true)),
        ("model", Value::from("llama")),
        ("owned", Value::from("text")),
        ("stage", Value::from("Decode")),
        ("shown", Value::from("decode")),
        ("error", Value::from("disk full")),
    ];
    let expected: Vec<KeyValue> = expected
        .into_iter()
        .map(|(key, value)| KeyValue::new(key, value))
        .collect();
    assert_eq!(event.attributes, expected);
}

#[test]
fn unrecorded_fields_are_absent() {
    let nothing: Option<u64> = None;
    let spans = export(|| {
        let _request = tracing::info_span!("request").entered();
        tracing::event!(
            target: "waypoint::journey",
            Level::INFO,
            "event.type" = "PREEMPTED",
            reason = field::Empty,
            tokens = field::Empty,
            maybe = nothing,
            kept = 1,
        );
    });
    let event = &span(&spans, "request").events[0];
    assert_eq!(keys(event), ["event.type", "kept"]);
}

#[test]
fn timestamps_are_the_mapped_monotonic_times() {
    let now = monotonic_seconds();
    // Out of order, long ago, and before the clock started.
    let stamps = [now + 0.5, now - 0.25, 0.125, -3.0, now];
    let spans = export(|| {
        let _request = tracing::info_span!("request").entered();
        for stamp in stamps {
            tracing::event!(target: "waypoint::journey", Level::INFO, "event.type" = "STEP", ts.monotonic = stamp);
        }
    });
    let request = span(&spans, "request");
    let timestamps: Vec<SystemTime> = request.events.iter().map(|e| e.timestamp).collect();
    let expected: Vec<SystemTime> = stamps.into_iter().map(wall_time_of).collect();
    assert_eq!(timestamps, expected);
    let gap = expected[0].duration_since(expected[1]).unwrap();
    assert!((gap.as_secs_f64() - 0.75).abs() < 1e-6, "{gap:?}");
}

#[test]
fn events_without_a_usable_monotonic_time_get_the_mapped_current_time() {
    let before = wall_time_of(monotonic_seconds());
    let spans = export(|| {
        let _request = tracing::info_span!("request").entered();
        tracing::event!(target: "waypoint::journey", Level::INFO, "event.type" = "NO_TS");
        tracing::event!(target: "waypoint::journey", Level::INFO, "event.type" = "NAN_TS", ts.monotonic = f64::NAN);
    });
    let after = wall_time_of(monotonic_seconds());
    for event in span(&spans, "request").events.iter() {
        assert!(
            before <= event.timestamp && event.timestamp <= after,
            "{event:?}"
        );
    }
}

/// Drops the spans with one name, records and samples the others.
#[derive(Debug, Clone)]
struct DropSpansNamed(&'static str);

impl ShouldSample for DropSpansNamed {
    fn should_sample(
        &self,
        parent: Option<&Context>,
        _: TraceId,
        name: &str,
        _: &SpanKind,
        _: &[KeyValue],
        _: &[Link],
    ) -> SamplingResult {
        SamplingResult {
            decision: if name == self.0 {
                SamplingDecision::Drop
            } else {
                SamplingDecision::RecordAndSample
            },
            attributes: Vec::new(),
            trace_state: parent
                .map(|cx| cx.span().span_context().trace_state().clone())
                .unwrap_or_default(),
        }
    }
}

#[test]
fn sampled_out_spans_get_no_events_and_lend_them_to_no_one() {
    let provider = SdkTracerProvider::builder().with_sampler(DropSpansNamed("dropped"));
    let spans = export_with(provider, OtelFilter::SpansOnly, |_| {
        let root = tracing::info_span!("root");
        let _root = root.enter();
        {
            let _dropped = tracing::info_span!("dropped").entered();
            tracing::event!(target: "waypoint::journey", Level::INFO, "event.type" = "IN_DROPPED");
            tracing::event!(target: "waypoint::journey", Level::INFO, "event.type" = "IN_DROPPED_AGAIN");
        }
        tracing::event!(target: "waypoint::journey", Level::INFO, "event.type" = "IN_ROOT");
    });
    assert_eq!(spans.len(), 1, "only the root is sampled");
    assert_eq!(names(span(&spans, "root")), ["journey.IN_ROOT"]);
}

#[test]
fn an_always_off_sampler_exports_nothing() {
    let provider = SdkTracerProvider::builder().with_sampler(Sampler::AlwaysOff);
    let spans = export_with(provider, OtelFilter::SpansOnly, |_| {
        let _request = tracing::info_span!("request").entered();
        tracing::event!(target: "waypoint::journey", Level::INFO, "event.type" = "QUEUED");
    });
    assert!(spans.is_empty());
}

#[test]
fn no_event_is_exported_twice() {
    let spans = export(|| {
        let _request = tracing::info_span!("request").entered();
        tracing::event!(target: "waypoint::journey", Level::INFO, "event.type" = "QUEUED", "queued");
        tracing::event!(target: "waypoint::api", Level::INFO, "event.type" = "ARRIVED", "arrived");
        tracing::event!(target: "elsewhere", Level::INFO, "an ordinary log line");
    });
    assert_eq!(
        names(span(&spans, "request")),
        ["journey.QUEUED", "api.ARRIVED", "an ordinary log line"]
    );
}

#[test]
fn without_the_filter_the_otel_layer_adds_each_event_again() {
    let spans = export_with(SdkTracerProvider::builder(), OtelFilter::Nothing, |_| {
        let _request = tracing::info_span!("request").entered();
        tracing::event!(target: "waypoint::journey", Level::INFO, "event.type" = "QUEUED", "queued");
    });
    // The otel layer sits under ours, so it sees the event first.
    assert_eq!(names(span(&spans, "request")), ["queued", "journey.QUEUED"]);
}

#[test]
fn events_of_other_targets_are_left_alone() {
    let spans = export_with(SdkTracerProvider::builder(), OtelFilter::SpansOnly, |_| {
        let _request = tracing::info_span!("request").entered();
        tracing::event!(target: "waypoint::engine", Level::INFO, "event.type" = "STEP");
        tracing::event!(target: "waypoint", Level::INFO, "event.type" = "ROOT");
        tracing::event!(Level::INFO, "event.type" = "DEFAULT_TARGET");
        tracing::event!(target: "waypoint::journey", Level::INFO, "event.type" = "CHOSEN");
    });
    assert_eq!(names(span(&spans, "request")), ["journey.CHOSEN"]);
}

#[test]
fn an_explicit_parent_takes_the_event() {
    let spans = export(|| {
        let request = tracing::info_span!("request");
        let _step = tracing::info_span!("step").entered();
        tracing::event!(target: "waypoint::journey", parent: &request, Level::INFO, "event.type" = "SCHEDULED");
        tracing::event!(target: "waypoint::journey", Level::INFO, "event.type" = "IN_STEP");
    });
    assert_eq!(names(span(&spans, "request")), ["journey.SCHEDULED"]);
    assert_eq!(names(span(&spans, "step")), ["journey.IN_STEP"]);
}

#[test]
fn events_from_another_thread_reach_the_span() {
    let spans = export_with(
        SdkTracerProvider::builder(),
        OtelFilter::ExceptSpanEvents,
        |dispatch| {
            let request = tracing::info_span!("request");
            std::thread::scope(|scope| {
                scope.spawn(|| {
                    tracing::dispatcher::with_default(dispatch, || {
                        tracing::event!(
                            target: "waypoint::journey",
                            parent: &request,
                            Level::INFO,
                            "event.type" = "DECODED",
                        );
                    })
                });
            });
        },
    );
    assert_eq!(names(span(&spans, "request")), ["journey.DECODED"]);
}

#[test]
fn events_outside_spans_are_ignored() {
    let spans = export(|| {
        tracing::event!(target: "waypoint::journey", Level::INFO, "event.type" = "ORPHAN");
        let _request = tracing::info_span!("request").entered();
        tracing::event!(target: "waypoint::journey", parent: None, Level::INFO, "event.type" = "ROOTLESS");
    });
    assert!(span(&spans, "request").events.is_empty());
    assert_eq!(spans.len(), 1);
}

#[test]
fn a_parent_set_before_the_first_event_is_kept() {
    let remote = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let spans = export(|| {
        let carrier = HashMap::from([("traceparent".to_string(), remote.to_string())]);
        let parent = TraceContextPropagator::new().extract(&carrier);
        let request = tracing::info_span!("request");
        request.set_parent(parent).unwrap();
        tracing::event!(target: "waypoint::api", parent: &request, Level::INFO, "event.type" = "ARRIVED");
        // The event started the OpenTelemetry span: its parent is fixed now.
        assert!(request.set_parent(Context::new()).is_err());
    });
    let request = span(&spans, "request");
    assert_eq!(
        request.span_context.trace_id().to_string(),
        "0af7651916cd43dd8448eb211c80319c"
    );
    assert_eq!(request.parent_span_id.to_string(), "b7ad6b7169203331");
    assert_eq!(names(request), ["api.ARRIVED"]);
}

#[test]
fn the_sdk_keeps_128_events_unless_its_limit_is_raised() {
    let emit = |_: &Dispatch| {
        let _request = tracing::info_span!("request").entered();
        for step in 0..200u64 {
            tracing::event!(target: "waypoint::journey", Level::INFO, "event.type" = "TOKEN", step);
        }
    };
    let spans = export_with(
        SdkTracerProvider::builder(),
        OtelFilter::ExceptSpanEvents,
        emit,
    );
    let events = &span(&spans, "request").events;
    assert_eq!((events.len(), events.dropped_count), (128, 72));

    let raised = SdkTracerProvider::builder().with_max_events_per_span(256);
    let spans = export_with(raised, OtelFilter::ExceptSpanEvents, emit);
    let events = &span(&spans, "request").events;
    assert_eq!((events.len(), events.dropped_count), (200, 0));
}
