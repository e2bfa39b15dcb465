//! The filter that keeps span events from being exported twice.

use std::sync::Arc;

use tracing::subscriber::Interest;
use tracing::Metadata;
use tracing_subscriber::layer::{Context, Filter};

/// A per-layer [`Filter`] for `tracing_opentelemetry`'s layer that passes every span and every
/// event except the events a [`SpanEventLayer`](crate::SpanEventLayer) (or a
/// [`RotatingSpanLayer`](crate::RotatingSpanLayer)) turns into span events.
///
/// `tracing_opentelemetry`'s layer adds every event inside a span to that span as a span event
/// of its own (named after the message, with `level` and `target` attributes and the time it
/// was logged). Without this filter, each of our events would be exported twice. Build it with
/// [`SpanEventLayer::otel_filter`](crate::SpanEventLayer::otel_filter) after the last
/// [`with_target`](crate::SpanEventLayer::with_target), and attach it with
/// [`Layer::with_filter`](tracing_subscriber::Layer::with_filter). It can be combined with
/// other filters through [`FilterExt`](tracing_subscriber::filter::FilterExt), and with the
/// filter of another layer of this crate through [`and_except`](Self::and_except).
///
/// Prefer it to `OpenTelemetryLayer::with_counting_event_filter`, which in
/// `tracing-opentelemetry` 0.34 also prints a line to standard output for every event.
///
/// ```
/// use tracing_subscriber::prelude::*;
/// use waypoint_layers::SpanEventLayer;
///
/// let span_events = SpanEventLayer::new().with_target("waypoint::journey", "journey");
/// let otel = tracing_opentelemetry::layer().with_filter(span_events.otel_filter());
/// let subscriber = tracing_subscriber::registry().with(otel).with(span_events);
/// # drop(subscriber);
/// ```
#[derive(Debug, Clone)]
pub struct ExceptSpanEvents {
    prefixes: Arc<[Box<str>]>,
}

impl ExceptSpanEvents {
    pub(crate) fn new(prefixes: impl IntoIterator<Item = Box<str>>) -> Self {
        Self {
            prefixes: prefixes.into_iter().collect(),
        }
    }

    /// The filter that also keeps out the events `other` keeps out: one filter for
    /// `tracing_opentelemetry`'s layer when several layers of this crate choose events.
    ///
    /// A [`RotatingSpanLayer`](crate::RotatingSpanLayer) chooses events outside any span, which
    /// `tracing_opentelemetry` ignores anyway; but an application that runs inside a span of
    /// its own would see them exported a second time, on that span, without this.
    ///
    /// ```
    /// use opentelemetry::trace::noop::NoopTracer;
    /// use tracing_subscriber::prelude::*;
    /// use waypoint_layers::{RotatingSpanLayer, SpanEventLayer};
    ///
    /// let span_events = SpanEventLayer::new().with_target("waypoint::journey", "journey");
    /// let steps = RotatingSpanLayer::new(NoopTracer::new(), "scheduler_steps")
    ///     .with_target("waypoint::step", "step");
    /// let otel = tracing_opentelemetry::layer()
    ///     .with_filter(span_events.otel_filter().and_except(steps.otel_filter()));
    /// let subscriber = tracing_subscriber::registry()
    ///     .with(otel)
    ///     .with(span_events)
    ///     .with(steps);
    /// # drop(subscriber);
    /// ```
    pub fn and_except(self, other: ExceptSpanEvents) -> ExceptSpanEvents {
        ExceptSpanEvents::new(self.prefixes.iter().chain(other.prefixes.iter()).cloned())
    }

    /// Whether the filter lets `metadata` through: spans always, events unless their target
    /// starts with one of the prefixes.
    pub fn passes(&self, metadata: &Metadata<'_>) -> bool {
        !(metadata.is_event()
            && self
                .prefixes
                .iter()
                .any(|prefix| metadata.target().starts_with(&**prefix)))
    }
}

impl<S> Filter<S> for ExceptSpanEvents {
    fn enabled(&self, metadata: &Metadata<'_>, _: &Context<'_, S>) -> bool {
        self.passes(metadata)
    }

    // The answer depends on the callsite alone, so tracing can cache it.
    fn callsite_enabled(&self, metadata: &'static Metadata<'static>) -> Interest {
        if self.passes(metadata) {
            Interest::always()
        } else {
            Interest::never()
        }
    }
}
