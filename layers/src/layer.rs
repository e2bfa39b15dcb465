//! [`SpanEventLayer`]: chosen `tracing` events become OpenTelemetry span events.

use std::borrow::Cow;
use std::fmt;
use std::sync::OnceLock;

use opentelemetry::trace::TraceContextExt as _;
use opentelemetry::{Context as OtelContext, KeyValue, Value};
use tracing::dispatcher::WeakDispatch;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::{Dispatch, Event, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::{LookupSpan, SpanRef};
use tracing_subscriber::Layer;

use crate::clock::{monotonic_seconds, wall_time_of};
use crate::filter::ExceptSpanEvents;
use crate::{EVENT_TYPE_FIELD, MESSAGE_FIELD, MONOTONIC_TIMESTAMP_FIELD, NAMESPACE_SEPARATOR};

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
    /// Longest prefix first, so that the first match is the most specific one.
    routes: Vec<Route>,
    /// The dispatch this layer belongs to: `tracing_opentelemetry` finds a span's OpenTelemetry
    /// context through it. Weak, because the dispatch owns the layer.
    dispatch: OnceLock<WeakDispatch>,
}

/// Where the events of one target prefix go.
#[derive(Debug)]
struct Route {
    target_prefix: Box<str>,
    /// The namespace and its separator (`"journey."`), or nothing for an empty namespace.
    name_prefix: Box<str>,
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
        let target_prefix = Box::<str>::from(target_prefix);
        let name_prefix = if namespace.is_empty() {
            Box::default()
        } else {
            format!("{namespace}{NAMESPACE_SEPARATOR}").into_boxed_str()
        };
        self.routes
            .retain(|route| route.target_prefix != target_prefix);
        self.routes.push(Route {
            target_prefix,
            name_prefix,
        });
        self.routes
            .sort_by_key(|route| std::cmp::Reverse(route.target_prefix.len()));
        self
    }

    /// The filter to put on `tracing_opentelemetry`'s layer so that it leaves the events this
    /// layer chooses alone. Call it after the last [`with_target`](Self::with_target): it
    /// copies the prefixes given so far.
    pub fn otel_filter(&self) -> ExceptSpanEvents {
        ExceptSpanEvents::new(self.routes.iter().map(|route| route.target_prefix.clone()))
    }

    fn route(&self, target: &str) -> Option<&Route> {
        self.routes
            .iter()
            .find(|route| target.starts_with(&*route.target_prefix))
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
        let dispatch = self.dispatch.get()?.upgrade()?;
        let cx = tracing_opentelemetry::get_otel_context(&id, &dispatch)?;
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
        let Some(route) = self.route(metadata.target()) else {
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

        let declares_event_type = metadata.fields().field(EVENT_TYPE_FIELD).is_some();
        let mut visitor = SpanEventVisitor {
            attributes: Vec::with_capacity(metadata.fields().len()),
            event_type: None,
            wants_message: !declares_event_type,
            message: None,
            monotonic_seconds: None,
        };
        event.record(&mut visitor);
        if visitor.event_type.is_none() && declares_event_type {
            // `event.type` was declared but left `Empty`: the message names the event after all.
            let mut fallback = MessageVisitor(None);
            event.record(&mut fallback);
            visitor.message = fallback.0;
        }

        let suffix = match (visitor.event_type, &visitor.message) {
            (Some(index), _) => visitor.attributes[index].value.as_str(),
            (None, Some(message)) => Cow::Borrowed(message.as_str()),
            (None, None) => Cow::Borrowed(metadata.name()),
        };
        let name = [&*route.name_prefix, &*suffix].concat();
        let seconds = visitor
            .monotonic_seconds
            .filter(|seconds| seconds.is_finite())
            .unwrap_or_else(monotonic_seconds);
        otel_span.add_event_with_timestamp(name, wall_time_of(seconds), visitor.attributes);
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(&id) {
            span.extensions_mut().remove::<SpanState>();
        }
    }
}

/// Turns one event's fields into a span event's attributes, and picks out what names and
/// dates it.
struct SpanEventVisitor {
    attributes: Vec<KeyValue>,
    /// Index in `attributes` of the `event.type` value.
    event_type: Option<usize>,
    /// Whether to keep the message: only when it may name the event.
    wants_message: bool,
    message: Option<String>,
    monotonic_seconds: Option<f64>,
}

impl SpanEventVisitor {
    fn push(&mut self, field: &Field, value: Value) {
        if field.name() == EVENT_TYPE_FIELD {
            self.event_type = Some(self.attributes.len());
        }
        self.attributes.push(KeyValue::new(field.name(), value));
    }

    fn note_seconds(&mut self, field: &Field, seconds: f64) {
        if field.name() == MONOTONIC_TIMESTAMP_FIELD {
            self.monotonic_seconds = Some(seconds);
        }
    }

    /// Integers that `i64` cannot hold keep their exact value, as a decimal string.
    fn push_integer<T>(&mut self, field: &Field, value: T)
    where
        T: Copy + fmt::Display + TryInto<i64>,
    {
        match value.try_into() {
            Ok(value) => self.record_i64(field, value),
            Err(_) => self.push(field, Value::String(value.to_string().into())),
        }
    }
}

impl Visit for SpanEventVisitor {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.note_seconds(field, value);
        self.push(field, Value::F64(value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.note_seconds(field, value as f64);
        self.push(field, Value::I64(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.push_integer(field, value);
    }

    fn record_i128(&mut self, field: &Field, value: i128) {
        self.push_integer(field, value);
    }

    fn record_u128(&mut self, field: &Field, value: u128) {
        self.push_integer(field, value);
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.push(field, Value::Bool(value));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == MESSAGE_FIELD {
            if self.wants_message {
                self.message = Some(value.to_owned());
            }
        } else {
            self.push(field, Value::String(value.to_owned().into()));
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.push(field, Value::String(value.to_string().into()));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == MESSAGE_FIELD {
            if self.wants_message {
                self.message = Some(format!("{value:?}"));
            }
        } else {
            self.push(field, Value::String(format!("{value:?}").into()));
        }
    }
}

/// Reads the message alone, to name an event whose `event.type` was declared but not recorded.
struct MessageVisitor(Option<String>);

impl Visit for MessageVisitor {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == MESSAGE_FIELD {
            self.0 = Some(value.to_owned());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == MESSAGE_FIELD {
            self.0 = Some(format!("{value:?}"));
        }
    }
}
