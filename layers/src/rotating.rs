//! [`RotatingSpanLayer`]: process-level events on a chain of short, linked spans.

use std::borrow::Cow;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, TryLockError};
use std::time::Duration;

use opentelemetry::trace::{Link, Span, SpanBuilder, SpanContext, SpanKind, Tracer};
use opentelemetry::{Context as OtelContext, KeyValue};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::Layer;

use crate::clock::{monotonic_seconds, wall_time_of};
use crate::fields::{monotonic_seconds_of, EventFields};
use crate::filter::ExceptSpanEvents;
use crate::routes::{Route, Routes};
use crate::{
    END_REASON_ATTRIBUTE, MAX_EVENTS_ATTRIBUTE, SEQUENCE_ATTRIBUTE, WINDOW_SECONDS_ATTRIBUTE,
};

/// How long a span takes events, by default.
const DEFAULT_WINDOW: Duration = Duration::from_secs(10);

/// How many events a span takes, by default: the OpenTelemetry SDK's default limit per span.
const DEFAULT_MAX_EVENTS: usize = 128;

/// Span event names built from an `event.type` that are kept for the life of the process,
/// per layer. Past this many distinct names, each event builds its name anew.
const MAX_KEPT_NAMES: usize = 32;

/// The [`END_REASON_ATTRIBUTE`] of a span ended because its time window had passed.
const ENDED_BY_WINDOW: &str = "window";
/// The [`END_REASON_ATTRIBUTE`] of a span ended because it held as many events as it may.
const ENDED_FULL: &str = "max_events";
/// The [`END_REASON_ATTRIBUTE`] of a span ended by [`RotatingSpanHandle::end_current`].
const ENDED_ON_REQUEST: &str = "end_current";
/// The [`END_REASON_ATTRIBUTE`] of a span ended because the layer and its handles were dropped.
const ENDED_ON_DROP: &str = "dropped";

/// A [`Layer`] that adds chosen `tracing` events, wherever they happen, to one process-wide
/// OpenTelemetry span that it ends and replaces as time passes, each span linked to the one
/// before.
///
/// Some events belong to the process rather than to a unit of work: a scheduler's summary of
/// each step, say. A single span for the whole process would reach the collector only when it
/// ends, at shutdown, and the SDK keeps only the first events of a span. This layer starts a
/// span (of [`SpanKind::Internal`], with no parent) at the first chosen event, ends it once its
/// time window has passed or it holds [`max_events`](Self::with_max_events) events, and starts
/// the next one at the next event. Each span's data reaches the collector within one window
/// and no event is dropped. The [crate documentation](crate#process-level-events-on-rotating-spans)
/// has a walk-through and the exact contract.
///
/// Events are chosen by target prefix, as [`SpanEventLayer`](crate::SpanEventLayer) chooses
/// them, and become span events named and built as it builds them. Unlike it, this layer looks
/// at no `tracing` span, needs neither a registry nor `tracing_opentelemetry`'s layer, and
/// starts its spans from the [`Tracer`] it is given. It starts no thread: call
/// [`RotatingSpanHandle::rotate_if_due`] from a timer of the application, and
/// [`RotatingSpanHandle::end_current`] before shutting the tracer provider down.
///
/// ```
/// use std::time::Duration;
///
/// use opentelemetry::trace::TracerProvider as _;
/// use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
/// use tracing::Level;
/// use tracing_subscriber::prelude::*;
/// use waypoint_layers::{monotonic_seconds, RotatingSpanLayer};
///
/// let exporter = InMemorySpanExporter::default();
/// let provider = SdkTracerProvider::builder()
///     .with_simple_exporter(exporter.clone())
///     .build();
/// let steps = RotatingSpanLayer::new(provider.tracer("waypoint.scheduler.step"), "scheduler_steps")
///     .with_target("waypoint::step", "step")
///     .with_window(Duration::from_secs(10))
///     .with_max_events(2);
/// let handle = steps.handle();
///
/// tracing::subscriber::with_default(tracing_subscriber::registry().with(steps), || {
///     for step in 0..3u64 {
///         tracing::event!(
///             target: "waypoint::step",
///             Level::INFO,
///             "event.type" = "BATCH_SUMMARY",
///             ts.monotonic = monotonic_seconds(),
///             step.id = step,
///         );
///     }
/// });
/// handle.end_current(); // at shutdown, before `provider.shutdown()`
///
/// let spans = exporter.get_finished_spans().unwrap();
/// let events: Vec<usize> = spans.iter().map(|span| span.events.len()).collect();
/// assert_eq!(events, [2, 1]);
/// assert_eq!(spans[1].links[0].span_context, spans[0].span_context);
/// ```
pub struct RotatingSpanLayer<T: Tracer> {
    tracer: T,
    span_name: Cow<'static, str>,
    routes: Routes,
    /// Shared with the handles.
    rotation: Arc<Mutex<Rotation<T::Span>>>,
}

/// A cheap, clonable handle on a [`RotatingSpanLayer`]'s current span, for the application to
/// end it when no event will: from a timer ([`rotate_if_due`](Self::rotate_if_due)) and at
/// shutdown ([`end_current`](Self::end_current)).
///
/// ```no_run
/// use std::time::Duration;
///
/// # let steps = waypoint_layers::RotatingSpanLayer::new(
/// #     opentelemetry::trace::noop::NoopTracer::new(), "scheduler_steps");
/// let handle = steps.handle();
/// // Any timer will do; the layer itself starts no thread.
/// std::thread::spawn(move || loop {
///     std::thread::sleep(Duration::from_secs(1));
///     handle.rotate_if_due();
/// });
/// ```
#[derive(Clone)]
pub struct RotatingSpanHandle {
    rotation: Arc<dyn Rotate>,
}

/// What the handle does with the layer's state, whatever the span type.
trait Rotate: Send + Sync {
    fn end_if_expired(&self, now: f64) -> bool;
    fn end_current(&self) -> bool;
}

/// The rotation's state: one lock, taken once per chosen event.
struct Rotation<S: Span> {
    limits: Limits,
    current: Option<CurrentSpan<S>>,
    chain: Chain,
    names: KeptNames,
}

/// When a span stops taking events. In the shared state, so that the handles see the values
/// the builder set, whenever they were made.
#[derive(Debug, Clone, Copy)]
struct Limits {
    window_seconds: f64,
    max_events: usize,
}

/// The span that takes events now. Times are readings of the crate's monotonic clock.
struct CurrentSpan<S> {
    span: S,
    /// The time of the event that started the span.
    started: f64,
    /// The time of the latest event, never before `started`: the span's end time.
    latest: f64,
    /// Events added to the span; only a recording span counts them.
    events: usize,
}

/// What ties each span to the ones before it.
#[derive(Debug, Default)]
struct Chain {
    next_sequence: i64,
    /// The latest ended span that was sampled, which the next span links to.
    previous: Option<SpanContext>,
}

/// A span taken out of the rotation, to be ended once the lock is released: ending may export
/// the span there and then, and the exporter is no business of the lock.
#[must_use]
struct Retired<S> {
    span: S,
    end: f64,
    reason: &'static str,
}

/// Span event names made from an `event.type`, kept so that each event of a known type costs
/// no allocation for its name: they live as long as the process (at most [`MAX_KEPT_NAMES`]).
#[derive(Debug, Default)]
struct KeptNames(Vec<&'static str>);

impl<T: Tracer> RotatingSpanLayer<T> {
    /// A layer that starts spans named `span_name` from `tracer`, and chooses no events yet:
    /// add targets with [`with_target`](Self::with_target).
    ///
    /// The tracer decides the spans' instrumentation scope (Waypoint gives one named
    /// `waypoint.scheduler.step`) and, through its provider's sampler, whether they record.
    pub fn new(tracer: T, span_name: impl Into<Cow<'static, str>>) -> Self {
        let rotation = Rotation {
            limits: Limits {
                window_seconds: DEFAULT_WINDOW.as_secs_f64(),
                max_events: DEFAULT_MAX_EVENTS,
            },
            current: None,
            chain: Chain::default(),
            names: KeptNames::default(),
        };
        Self {
            tracer,
            span_name: span_name.into(),
            routes: Routes::default(),
            rotation: Arc::new(Mutex::new(rotation)),
        }
    }

    /// Chooses the events whose target starts with `target_prefix`, and names their span events
    /// `<namespace>.<event.type>`, as [`SpanEventLayer::with_target`] does: the longest
    /// matching prefix wins, a prefix given again gets the new namespace, and an empty
    /// namespace names events by `event.type` alone.
    ///
    /// By default, no target is chosen and the layer starts no span.
    ///
    /// [`SpanEventLayer::with_target`]: crate::SpanEventLayer::with_target
    pub fn with_target(mut self, target_prefix: &str, namespace: &str) -> Self {
        self.routes.insert(target_prefix, namespace);
        self
    }

    /// How long a span takes events: the first event at or past `window` after the event that
    /// started the span goes to a new span. [`RotatingSpanHandle::rotate_if_due`] ends a span
    /// whose window has passed when no event comes. A zero window gives each event a span.
    ///
    /// By default, 10 seconds.
    pub fn with_window(self, window: Duration) -> Self {
        lock(&self.rotation).limits.window_seconds = window.as_secs_f64();
        self
    }

    /// How many events a span takes: the span is ended as soon as it holds `max_events`
    /// events, and the next event starts a new one. `0` counts as `1`.
    ///
    /// Keep it at or below the tracer provider's limit of events per span
    /// (`SdkTracerProvider::builder().with_max_events_per_span(n)`, 128 by default): the SDK
    /// drops the events past its limit, and this layer cannot see the provider's settings.
    ///
    /// By default, 128, the SDK's default limit.
    pub fn with_max_events(self, max_events: usize) -> Self {
        lock(&self.rotation).limits.max_events = max_events.max(1);
        self
    }

    /// The filter to put on `tracing_opentelemetry`'s layer so that it leaves the events this
    /// layer chooses alone, should they happen inside a `tracing` span; combine it with another
    /// through [`ExceptSpanEvents::and_except`]. Call it after the last
    /// [`with_target`](Self::with_target): it copies the prefixes given so far.
    pub fn otel_filter(&self) -> ExceptSpanEvents {
        self.routes.otel_filter()
    }
}

impl<T> RotatingSpanLayer<T>
where
    T: Tracer,
    T::Span: Send + 'static,
{
    /// A handle on this layer's current span, for the application's timer and shutdown. Handles
    /// share the layer's state: make as many as needed, before or after installing the layer.
    pub fn handle(&self) -> RotatingSpanHandle {
        RotatingSpanHandle {
            rotation: self.rotation.clone(),
        }
    }
}

impl RotatingSpanHandle {
    /// Ends the current span if its window has passed by now; the next event starts a new
    /// one. Returns whether a span was ended.
    ///
    /// Call it every second or so: without it, the span of a server that has gone idle would
    /// wait for the next event, or for shutdown, to reach the collector.
    pub fn rotate_if_due(&self) -> bool {
        self.rotate_if_due_at(monotonic_seconds())
    }

    /// [`rotate_if_due`](Self::rotate_if_due) as if the clock of
    /// [`monotonic_seconds`](crate::monotonic_seconds) read `now`.
    pub fn rotate_if_due_at(&self, now: f64) -> bool {
        self.rotation.end_if_expired(now)
    }

    /// Ends the current span, whatever its window and events; the next event, if any, starts a
    /// new one. Returns whether there was a span to end.
    ///
    /// Call it at shutdown, before shutting the tracer provider down, so that the last events
    /// are exported.
    pub fn end_current(&self) -> bool {
        self.rotation.end_current()
    }
}

impl<S, T> Layer<S> for RotatingSpanLayer<T>
where
    S: Subscriber,
    T: Tracer + Send + Sync + 'static,
    T::Span: Send + 'static,
{
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let metadata = event.metadata();
        let Some(route) = self.routes.find(metadata.target()) else {
            return;
        };
        let mut guard = lock(&self.rotation);
        let rotation = &mut *guard;

        // Sampling first: the fields are read in full only for a span that records. Until
        // the span that takes the event is known, the event's time alone is read, which
        // builds nothing.
        let mut fields = None;
        let seconds = if rotation.is_recording() {
            fields
                .insert(EventFields::record(event))
                .monotonic_seconds()
        } else {
            monotonic_seconds_of(event)
        };

        let expired = rotation.retire_if_expired(seconds);
        let limits = rotation.limits;
        let current = rotation.current.get_or_insert_with(|| {
            rotation
                .chain
                .start(&self.tracer, self.span_name.clone(), seconds, limits)
        });
        if current.span.is_recording() {
            // Read now if the span was started for this event.
            let fields = fields.unwrap_or_else(|| EventFields::record(event));
            let name = match fields.event_type() {
                Some(event_type) => rotation.names.name(route, &event_type),
                None => Cow::Owned([&*route.name_prefix, &*fields.name_suffix(metadata)].concat()),
            };
            let timestamp = wall_time_of(seconds);
            current
                .span
                .add_event_with_timestamp(name, timestamp, fields.into_attributes());
            current.events += 1;
        }
        current.latest = current.latest.max(seconds);
        let full = if current.events >= limits.max_events {
            rotation.retire(ENDED_FULL)
        } else {
            None
        };

        drop(guard);
        for retired in [expired, full].into_iter().flatten() {
            retired.end();
        }
    }
}

impl<S: Span> Rotation<S> {
    fn is_recording(&self) -> bool {
        self.current
            .as_ref()
            .is_some_and(|current| current.span.is_recording())
    }

    /// Takes the current span out, and makes it the one the next span links to if it was
    /// sampled: a span that never reaches the collector would leave a link to nothing.
    fn retire(&mut self, reason: &'static str) -> Option<Retired<S>> {
        let current = self.current.take()?;
        let context = current.span.span_context();
        if context.is_sampled() {
            self.chain.previous = Some(context.clone());
        }
        Some(Retired {
            span: current.span,
            end: current.latest,
            reason,
        })
    }

    /// Takes the current span out if `now` is at or past the end of its window.
    fn retire_if_expired(&mut self, now: f64) -> Option<Retired<S>> {
        let window = self.limits.window_seconds;
        let expired = self
            .current
            .as_ref()
            .is_some_and(|current| now >= current.started + window);
        if expired {
            self.retire(ENDED_BY_WINDOW)
        } else {
            None
        }
    }
}

impl<S: Span> Drop for Rotation<S> {
    fn drop(&mut self) {
        // The SDK would end the span anyway, at the current time and with no reason given.
        if let Some(retired) = self.retire(ENDED_ON_DROP) {
            retired.end();
        }
    }
}

impl<S: Span + Send> Rotate for Mutex<Rotation<S>> {
    fn end_if_expired(&self, now: f64) -> bool {
        let retired = lock(self).retire_if_expired(now);
        retired.map(Retired::end).is_some()
    }

    fn end_current(&self) -> bool {
        let retired = lock(self).retire(ENDED_ON_REQUEST);
        retired.map(Retired::end).is_some()
    }
}

impl Chain {
    /// Starts the next span at `seconds`: a root span, whatever OpenTelemetry context is
    /// current, linked to the previous sampled span.
    fn start<T: Tracer>(
        &mut self,
        tracer: &T,
        name: Cow<'static, str>,
        seconds: f64,
        limits: Limits,
    ) -> CurrentSpan<T::Span> {
        let sequence = self.next_sequence;
        self.next_sequence += 1;
        let attributes = [
            KeyValue::new(SEQUENCE_ATTRIBUTE, sequence),
            KeyValue::new(WINDOW_SECONDS_ATTRIBUTE, limits.window_seconds),
            KeyValue::new(
                MAX_EVENTS_ATTRIBUTE,
                i64::try_from(limits.max_events).unwrap_or(i64::MAX),
            ),
        ];
        let builder = SpanBuilder::from_name(name)
            .with_kind(SpanKind::Internal)
            .with_start_time(wall_time_of(seconds))
            .with_attributes(attributes)
            .with_links(
                self.previous
                    .iter()
                    .cloned()
                    .map(Link::with_context)
                    .collect(),
            );
        CurrentSpan {
            span: tracer.build_with_context(builder, &OtelContext::new()),
            started: seconds,
            latest: seconds,
            events: 0,
        }
    }
}

impl<S: Span> Retired<S> {
    fn end(mut self) {
        self.span
            .set_attribute(KeyValue::new(END_REASON_ATTRIBUTE, self.reason));
        self.span.end_with_timestamp(wall_time_of(self.end));
    }
}

impl KeptNames {
    /// `<namespace>.<event_type>` for `route`, kept from an earlier event if there is room.
    fn name(&mut self, route: &Route, event_type: &str) -> Cow<'static, str> {
        let prefix = &*route.name_prefix;
        let kept = self.0.iter().find(|name| {
            name.len() == prefix.len() + event_type.len()
                && name.starts_with(prefix)
                && name.ends_with(event_type)
        });
        if let Some(&name) = kept {
            return Cow::Borrowed(name);
        }
        let name = [prefix, event_type].concat();
        if self.0.len() == MAX_KEPT_NAMES {
            return Cow::Owned(name);
        }
        // Leaked on purpose, and bounded: span event names must be `'static` to be shared,
        // and a process has a handful of event types.
        let name: &'static str = Box::leak(name.into_boxed_str());
        self.0.push(name);
        Cow::Borrowed(name)
    }
}

/// The state, even if a thread panicked while holding it: every update leaves it consistent
/// (a span is taken out before it is ended).
fn lock<S: Span>(rotation: &Mutex<Rotation<S>>) -> MutexGuard<'_, Rotation<S>> {
    rotation.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<T: Tracer> fmt::Debug for RotatingSpanLayer<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut debug = f.debug_struct("RotatingSpanLayer");
        debug
            .field("span_name", &self.span_name)
            .field("routes", &self.routes);
        // `try_lock`: formatting must not wait for, or deadlock on, an event in flight.
        let rotation = match self.rotation.try_lock() {
            Ok(rotation) => Some(rotation),
            Err(TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        };
        if let Some(rotation) = rotation {
            debug
                .field("limits", &rotation.limits)
                .field("chain", &rotation.chain)
                .field("has_current_span", &rotation.current.is_some());
        }
        debug.finish_non_exhaustive()
    }
}

impl fmt::Debug for RotatingSpanHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RotatingSpanHandle").finish_non_exhaustive()
    }
}
