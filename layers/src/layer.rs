//! [`SpanEventLayer`]: chosen `tracing` events become OpenTelemetry span events.

use std::sync::OnceLock;

use opentelemetry::trace::TraceContextExt as _;
use opentelemetry::Context as OtelContext;
use tracing::dispatcher::WeakDispatch;
use tracing::span::{Attributes, Id};
use tracing::{Dispatch, Event, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::{LookupSpan, SpanRef};
use tracing_subscriber::Layer;

use crate::clock::wall_time_of;
use crate::fields::EventFields;
use crate::filter::ExceptSpanEvents;
use crate::routes::Routes;

/// A [`Layer`] that adds chosen `tracing` events to the OpenTelemetry span of their parent
/// `tracing` span, as span events with typed attributes and the time the event says it
/// happened.
///
/// An event is chosen when its target starts with a prefix given to
/// [`with_target`](Self::with_target). The [crate documentation](crate) has a walk-through and
/// the exact contract: event names, attributes, timestamps, sampling.
///
/// The layer needs `tracing_opentelemetry`'s layer in the same subscriber, and a registry
/// ([`LookupSpan`]) below both. Give that layer [`otel_filter`](Self::otel_filter), so that it
/// does not add the same events a second time.
#[derive(Debug, Default)]
pub struct SpanEventLayer {
    routes: Routes,
    /// The dispatch this layer belongs to: `tracing_opentelemetry` finds a span's OpenTelemetry
    /// context through it. Weak, because the dispatch owns the layer.
    dispatch: OnceLock<WeakDispatch>,
}

/// What this layer keeps on every span, from `on_new_span` to `on_close`.
#[derive(Debug, Default)]
struct SpanState {
    /// The span's OpenTelemetry context, resolved at the span's first chosen event: `None`
    /// when the span has no OpenTelemetry span, or one that was not recording then (a span
    /// that is sampled out never starts recording later).
    otel: OnceLock<Option<OtelContext>>,
}

impl SpanEventLayer {
    /// A layer that chooses no events yet; add targets with [`with_target`](Self::with_target).
    pub fn new() -> Self {
        Self::default()
    }

    /// Chooses the events whose target starts with `target_prefix` (compared as plain strings,
    /// as `tracing_subscriber`'s target filters do), and names their span events
    /// `<namespace>.<event.type>`.
    ///
    /// When several prefixes match a target, the longest one wins. Giving a prefix again
    /// replaces its namespace. An empty namespace names events by `event.type` alone.
    ///
    /// ```
    /// use waypoint_layers::SpanEventLayer;
    ///
    /// let layer = SpanEventLayer::new()
    ///     .with_target("waypoint::journey", "journey") // `journey.QUEUED`
    ///     .with_target("waypoint::api", "api"); // `api.ARRIVED`
    /// # drop(layer);
    /// ```
    ///
    /// By default, no target is chosen and the layer adds nothing.
    pub fn with_target(mut self, target_prefix: &str, namespace: &str) -> Self {
        self.routes.insert(target_prefix, namespace);
        self
    }

    /// The filter to put on `tracing_opentelemetry`'s layer so that it leaves the events this
    /// layer chooses alone. Call it after the last [`with_target`](Self::with_target): it
    /// copies the prefixes given so far.
    pub fn otel_filter(&self) -> ExceptSpanEvents {
        self.routes.otel_filter()
    }

    /// The span's OpenTelemetry context if it has a recording OpenTelemetry span, resolving and
    /// keeping it at the span's first chosen event.
    fn recording_context<S>(&self, span: &SpanRef<'_, S>) -> Option<OtelContext>
    where
        S: for<'a> LookupSpan<'a>,
    {
        if let Some(resolved) = span.extensions().get::<SpanState>()?.otel.get() {
            return resolved.clone();
        }
        // `get_otel_context` reads the span's extensions itself: hold no guard across it.
        let resolved = self.resolve(span.id());
        let extensions = span.extensions();
        extensions
            .get::<SpanState>()?
            .otel
            .get_or_init(|| resolved)
            .clone()
    }

    /// Asks `tracing_opentelemetry` for the span's context. This starts the OpenTelemetry span
    /// if nothing has started it yet (entering the span does too), which is when its sampler
    /// decides whether it records.
    fn resolve(&self, id: Id) -> Option<OtelContext> {
        let cx = match self.dispatch.get() {
            Some(dispatch) => tracing_opentelemetry::get_otel_context(&id, &dispatch.upgrade()?)?,
            // `tracing_subscriber` forwards `on_register_dispatch` through `Layered`, `Box`
            // and `Filtered`, but not through `Vec<L>` or `Option<L>`; a layer inside those
            // never learns its dispatch. The global default can still be read while it
            // dispatches this event (a scoped one cannot: `tracing` blocks re-entry), so
            // inside those wrappers the layer works under the global default only.
            None => tracing::dispatcher::get_default(|dispatch| {
                tracing_opentelemetry::get_otel_context(&id, dispatch)
            })?,
        };
        cx.span().is_recording().then_some(cx)
    }
}

impl<S> Layer<S> for SpanEventLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_register_dispatch(&self, dispatch: &Dispatch) {
        // A layer lives in one dispatch; a second registration cannot happen.
        let _ = self.dispatch.set(dispatch.downgrade());
    }

    fn on_new_span(&self, _: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut extensions = span.extensions_mut();
        // Two of these layers in one subscriber share the state rather than panic on insert.
        if extensions.get_mut::<SpanState>().is_none() {
            extensions.insert(SpanState::default());
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let metadata = event.metadata();
        let Some(route) = self.routes.find(metadata.target()) else {
            return;
        };
        let Some(span) = ctx.event_span(event) else {
            return;
        };
        let Some(otel) = self.recording_context(&span) else {
            return;
        };
        drop(span);
        let otel_span = otel.span();
        // The span may have ended since it was resolved; nothing below is built for it then.
        if !otel_span.is_recording() {
            return;
        }

        let fields = EventFields::record(event);
        let name = [&*route.name_prefix, &*fields.name_suffix(metadata)].concat();
        let timestamp = wall_time_of(fields.monotonic_seconds());
        otel_span.add_event_with_timestamp(name, timestamp, fields.into_attributes());
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(&id) {
            span.extensions_mut().remove::<SpanState>();
        }
    }
}
