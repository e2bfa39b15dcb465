//! Spans emitted after the fact, with their true times and ids: how a journey recorded in
//! memory (tail retention, `docs/JOURNEY_TRACING.md`) is exported once it is kept.
//!
//! A kept journey is replayed through `tracing` like a live one (the same spans, events and
//! fields), so one code path writes the contract. Three things differ from a live span, and
//! `tracing_opentelemetry` has no way to say them, so the replaying code records them as
//! private span fields that this module turns into the real thing and strips:
//!
//! - [`START`]: the span's start, in [`waypoint_layers::monotonic_seconds`]. Read by
//!   [`apply_to_builder`] (called by [`super::scopes::ScopedTracer`]) into the builder's
//!   start time.
//! - [`TRACE_ID`] and [`SPAN_ID`] (hex): the ids the request was given at arrival and
//!   announced in its response headers. The SDK ignores a builder's ids and asks its
//!   `IdGenerator`, so [`apply_to_builder`] hands them to [`ReplayIdGenerator`] for the one
//!   build that follows, on the same thread.
//! - [`END`]: the span's end, applied by [`RetimingProcessor`] when the span ends (a replayed
//!   span is closed when it is replayed, not when it ended).

use std::cell::Cell;

use opentelemetry::trace::{SpanBuilder, SpanId, TraceId};
use opentelemetry::{Context, Key, Value};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    IdGenerator, RandomIdGenerator, SdkTracerProvider, Span, SpanData, SpanProcessor,
    TracerProviderBuilder,
};
use opentelemetry_sdk::Resource;
use waypoint_layers::wall_time_of;

/// Prefix of the private fields; none of them is exported.
pub const PREFIX: &str = "waypoint.replay.";
/// The span's start (f64, monotonic seconds).
pub const START: &str = "waypoint.replay.start";
/// The span's end (f64, monotonic seconds).
pub const END: &str = "waypoint.replay.end";
/// The trace id of a root span (32 hex digits).
pub const TRACE_ID: &str = "waypoint.replay.trace_id";
/// The span's own id (16 hex digits).
pub const SPAN_ID: &str = "waypoint.replay.span_id";

thread_local! {
    /// Ids for the next span built on this thread; set and taken within one build.
    static NEXT_IDS: Cell<(Option<TraceId>, Option<SpanId>)> = const { Cell::new((None, None)) };
}

/// Applies and removes the private fields of a span about to be built: its start time now,
/// its ids through [`ReplayIdGenerator`] for the build that follows. [`END`] stays, for
/// [`RetimingProcessor`].
pub fn apply_to_builder(builder: &mut SpanBuilder) {
    let Some(attributes) = builder.attributes.as_mut() else {
        return;
    };
    if !attributes
        .iter()
        .any(|kv| kv.key.as_str().starts_with(PREFIX))
    {
        return;
    }
    let mut ids = (None, None);
    attributes.retain(|kv| {
        match (kv.key.as_str(), &kv.value) {
            (START, Value::F64(seconds)) => builder.start_time = Some(wall_time_of(*seconds)),
            (TRACE_ID, value) => ids.0 = TraceId::from_hex(value.as_str().as_ref()).ok(),
            (SPAN_ID, value) => ids.1 = SpanId::from_hex(value.as_str().as_ref()).ok(),
            // Read when the span ends, by `RetimingProcessor`.
            (END, _) => return true,
            (key, _) if key.starts_with(PREFIX) => {}
            _ => return true,
        }
        false
    });
    NEXT_IDS.with(|next| next.set(ids));
}

/// Forgets ids [`apply_to_builder`] set that no build took (a span the sampler dropped).
pub fn clear_pending_ids() {
    NEXT_IDS.with(|next| next.set((None, None)));
}

/// The SDK's random ids, except for a replayed span, which gets the ids it was given.
#[derive(Debug, Default)]
pub struct ReplayIdGenerator {
    random: RandomIdGenerator,
}

impl IdGenerator for ReplayIdGenerator {
    fn new_trace_id(&self) -> TraceId {
        NEXT_IDS
            .with(|next| {
                let (trace, span) = next.get();
                next.set((None, span));
                trace
            })
            .unwrap_or_else(|| self.random.new_trace_id())
    }

    fn new_span_id(&self) -> SpanId {
        NEXT_IDS
            .with(|next| {
                let (trace, span) = next.get();
                next.set((trace, None));
                span
            })
            .unwrap_or_else(|| self.random.new_span_id())
    }
}

/// A tracer provider builder that gives replayed spans their ids; add every span processor
/// with [`with_processor`], so that they get their end times too. Anything that builds its
/// own provider for the journey subscriber (tests, benchmarks) must start here.
pub fn provider_builder() -> TracerProviderBuilder {
    SdkTracerProvider::builder().with_id_generator(ReplayIdGenerator::default())
}

/// `builder` with `processor` behind a [`RetimingProcessor`].
pub fn with_processor(
    builder: TracerProviderBuilder,
    processor: impl SpanProcessor + 'static,
) -> TracerProviderBuilder {
    builder.with_span_processor(RetimingProcessor::new(processor))
}

/// A span processor that gives a replayed span its recorded end ([`END`]) before passing it
/// on to `inner`.
#[derive(Debug)]
pub struct RetimingProcessor<P> {
    inner: P,
}

impl<P> RetimingProcessor<P> {
    /// Wraps `inner`.
    pub fn new(inner: P) -> Self {
        Self { inner }
    }
}

impl<P: SpanProcessor> SpanProcessor for RetimingProcessor<P> {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, mut span: SpanData) {
        let end = Key::from_static_str(END);
        // The last one recorded wins (an abandoned journey's end moves to its engine's).
        let mut recorded_end = None;
        span.attributes.retain(|kv| {
            if kv.key != end {
                return true;
            }
            if let Value::F64(seconds) = kv.value {
                recorded_end = Some(seconds);
            }
            false
        });
        if let Some(seconds) = recorded_end {
            span.end_time = wall_time_of(seconds).max(span.start_time);
        }
        self.inner.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: std::time::Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::{Span as _, Tracer, TracerProvider as _};
    use opentelemetry::KeyValue;
    use opentelemetry_sdk::trace::{InMemorySpanExporter, SimpleSpanProcessor};

    use super::*;

    #[test]
    fn a_replayed_span_keeps_its_ids_and_times_and_loses_the_private_fields() {
        let exporter = InMemorySpanExporter::default();
        let provider = with_processor(
            provider_builder(),
            SimpleSpanProcessor::new(exporter.clone()),
        )
        .build();
        let tracer = provider.tracer("test");
        let now = waypoint_layers::monotonic_seconds();
        let mut builder = tracer.span_builder("replayed").with_attributes([
            KeyValue::new(START, now - 2.0),
            KeyValue::new(TRACE_ID, "0af7651916cd43dd8448eb211c80319c"),
            KeyValue::new(SPAN_ID, "b7ad6b7169203331"),
            KeyValue::new(END, now - 1.5),
            KeyValue::new("kept", true),
        ]);
        apply_to_builder(&mut builder);
        let mut span = builder.start(&tracer);
        // Recorded again after the start: the last one wins.
        span.set_attribute(KeyValue::new(END, now - 1.0));
        span.end();
        // An ordinary span afterwards gets fresh ids.
        tracer.start("ordinary").end();

        let spans = exporter.get_finished_spans().unwrap();
        let replayed = &spans[0];
        assert_eq!(
            replayed.span_context.trace_id().to_string(),
            "0af7651916cd43dd8448eb211c80319c"
        );
        assert_eq!(
            replayed.span_context.span_id().to_string(),
            "b7ad6b7169203331"
        );
        assert_eq!(replayed.start_time, wall_time_of(now - 2.0));
        assert_eq!(replayed.end_time, wall_time_of(now - 1.0));
        let keys: Vec<_> = replayed
            .attributes
            .iter()
            .map(|kv| kv.key.as_str())
            .collect();
        assert_eq!(keys, ["kept"]);
        assert_ne!(
            spans[1].span_context.trace_id(),
            replayed.span_context.trace_id()
        );
        assert_ne!(
            spans[1].span_context.span_id(),
            replayed.span_context.span_id()
        );
    }
}
