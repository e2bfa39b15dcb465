//! [`tracing_subscriber`] layers that turn [`tracing`] events into OpenTelemetry span events.
//!
//! Code instrumented with `tracing` already tells the story of a unit of work: a span for the
//! work, and events inside it as things happen to it ("queued", "first token sent"). Exported
//! to OpenTelemetry, that story belongs on the span itself, as span events, so that a trace
//! viewer draws each event on the span's timeline. [`SpanEventLayer`] does this for the events
//! you choose by target, with typed attributes and with the time at which each event says it
//! happened. Events that belong to the process rather than to a unit of work go, through
//! [`RotatingSpanLayer`], on a chain of short spans of their own (see
//! [below](#process-level-events-on-rotating-spans)). The crate depends on `tracing`, `tracing-subscriber`, `tracing-opentelemetry` and
//! `opentelemetry` only, so any `tracing` application can use it.
//!
//! # Emitting events
//!
//! Nothing here is needed to emit events: give them a target, an `event.type` and, if you
//! know it, the `ts.monotonic` at which the thing happened, read from this crate's clock
//! ([`monotonic_seconds`], or [`monotonic_seconds_at`] for an [`Instant`] kept from earlier).
//! `type` is a keyword, so spell the field `"event.type"`, `event.r#type` or
//! `{ EVENT_TYPE_FIELD }`. Prefer `tracing::event!` to the level macros: in `tracing` 0.1,
//! `info!(target: ..., a.b = ...)` does not compile when a dotted name comes first.
//!
//! ```
//! use tracing::{field, Level};
//!
//! let request = tracing::info_span!("request", request.id = 7);
//! let _entered = request.enter();
//! tracing::event!(
//!     target: "waypoint::journey",
//!     Level::INFO,
//!     "event.type" = "QUEUED",
//!     ts.monotonic = waypoint_layers::monotonic_seconds(),
//!     queue.depth = 3u64,
//!     prompt.tokens = 512,
//!     preempted = false,
//!     reason = field::Empty, // not known here: the span event will not have it
//! );
//! ```
//!
//! # Installing the layers
//!
//! Put [`SpanEventLayer`] next to `tracing_opentelemetry`'s layer, over a registry, and give
//! that layer the filter from [`SpanEventLayer::otel_filter`]: `tracing_opentelemetry` adds
//! every event inside a span as a span event of its own, so without the filter the chosen
//! events would be exported twice. Here spans go to the SDK's in-memory exporter.
//!
//! ```
//! use opentelemetry::trace::TracerProvider as _;
//! use opentelemetry::Value;
//! use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
//! use tracing::Level;
//! use tracing_subscriber::prelude::*;
//! use waypoint_layers::{monotonic_seconds, wall_time_of, SpanEventLayer};
//!
//! let exporter = InMemorySpanExporter::default();
//! let provider = SdkTracerProvider::builder()
//!     .with_simple_exporter(exporter.clone())
//!     .build();
//!
//! let span_events = SpanEventLayer::new()
//!     .with_target("waypoint::journey", "journey")
//!     .with_target("waypoint::api", "api");
//! let otel = tracing_opentelemetry::layer()
//!     .with_tracer(provider.tracer("waypoint"))
//!     .with_filter(span_events.otel_filter());
//! let subscriber = tracing_subscriber::registry().with(otel).with(span_events);
//!
//! let queued_at = monotonic_seconds();
//! tracing::subscriber::with_default(subscriber, || {
//!     let request = tracing::info_span!("request");
//!     let _entered = request.enter();
//!     tracing::event!(target: "waypoint::api", Level::INFO, "event.type" = "ARRIVED", "arrived");
//!     tracing::event!(
//!         target: "waypoint::journey",
//!         Level::INFO,
//!         "event.type" = "QUEUED",
//!         ts.monotonic = queued_at,
//!     );
//!     // Not a chosen target: `tracing_opentelemetry` adds this one, as usual.
//!     tracing::info!(target: "my_app", "an ordinary log line");
//! });
//!
//! let spans = exporter.get_finished_spans().unwrap();
//! let events = &spans[0].events;
//! assert_eq!(events.len(), 3);
//! assert_eq!(events[0].name, "api.ARRIVED");
//! assert_eq!(events[1].name, "journey.QUEUED");
//! assert_eq!(events[1].timestamp, wall_time_of(queued_at));
//! assert!(events[1].attributes.iter().any(|kv| kv.key.as_str() == "ts.monotonic"
//!     && kv.value == Value::F64(queued_at)));
//! assert_eq!(events[2].name, "an ordinary log line");
//! ```
//!
//! # The contract
//!
//! For each event whose target starts with a prefix given to
//! [`with_target`](SpanEventLayer::with_target) (the longest matching prefix decides), the
//! layer finds the event's parent span: the explicit `parent:` if the event has one, else the
//! current span. Events with no parent span (outside any span, or `parent: None`) are ignored.
//!
//! - **Sampling first.** If the parent span has no OpenTelemetry span, or one that is not
//!   recording (`is_recording()` is false: sampled out, or already ended), the layer returns
//!   before building anything: no attribute vector, no string, no allocation. A span that does
//!   not record when it starts never will, so the answer is kept on the span, and each later
//!   event of that span costs a registry lookup and a few comparisons. A span that records
//!   without being sampled (`RecordOnly`) does get events. The first chosen event of a span
//!   starts its OpenTelemetry span, as entering the span does: call
//!   `OpenTelemetrySpanExt::set_parent` before either.
//! - **Name.** `<namespace>.<event.type>`, the namespace being the one given with the
//!   matching prefix ([`NAMESPACE_SEPARATOR`] in between; an empty namespace gives
//!   `<event.type>` alone). With no [`EVENT_TYPE_FIELD`] recorded, the message takes its
//!   place, and with no message either, the callsite's name (`event src/file.rs:12`).
//! - **Attributes.** Every recorded field except [`MESSAGE_FIELD`] becomes one attribute, in
//!   the order of the fields, `event.type` and `ts.monotonic` included:
//!
//!   | field value                         | attribute value                             |
//!   |-------------------------------------|---------------------------------------------|
//!   | integers that fit in `i64`          | `Int`                                       |
//!   | integers beyond `i64` (`u64`, `u128`, `i128`) | `String`, the exact decimal value |
//!   | `f64`, `f32`                        | `Double`                                    |
//!   | `bool`                              | `Bool`                                      |
//!   | `&str`, `String`                    | `String`                                    |
//!   | `?value`, `%value`, bytes           | `String`, formatted with `Debug`/`Display`  |
//!   | `&dyn Error`                        | `String`, its `Display` (no source chain)   |
//!   | `field::Empty` never recorded, `None` | no attribute at all                       |
//!
//!   The message is not an attribute: with an `event.type` it is dropped, and otherwise it is
//!   the name.
//! - **Timestamp.** The wall-clock time [`wall_time_of`] maps the event's
//!   [`MONOTONIC_TIMESTAMP_FIELD`] (`f64` seconds; integers are accepted) to. Events without
//!   it, or with a value that is not finite, get the mapped current time,
//!   `wall_time_of(monotonic_seconds())`. One anchor per process maps both, so events keep
//!   their order and spacing even if the system clock jumps, and an event reported late (a
//!   time kept from earlier) lands where it happened.
//!
//! # How many events a span keeps
//!
//! The OpenTelemetry SDK keeps the first 128 events of a span and counts the rest as dropped.
//! A long generation can emit more; raise the limit on the tracer provider, since this layer
//! cannot see the provider's limits:
//!
//! ```
//! use opentelemetry_sdk::trace::SdkTracerProvider;
//!
//! let provider = SdkTracerProvider::builder()
//!     .with_max_events_per_span(4096)
//!     .build();
//! # drop(provider);
//! ```
//!
//! # Process-level events on rotating spans
//!
//! Some events happen outside any unit of work: a scheduler's summary of a step, the state of
//! every running request at a sampled step. They have no span to go on, so
//! [`RotatingSpanLayer`] gives them spans of their own, started from a [`Tracer`] the
//! application passes in. One span for the life of the process would reach the collector only
//! at shutdown and lose the events past the SDK's limit; these spans **rotate** instead, each
//! linked to the one before, so the events reach the collector within seconds and none is
//! dropped.
//!
//! ```
//! use std::time::Duration;
//!
//! use opentelemetry::trace::TracerProvider as _;
//! use opentelemetry::Value;
//! use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
//! use tracing::Level;
//! use tracing_subscriber::prelude::*;
//! use waypoint_layers::{monotonic_seconds, wall_time_of, RotatingSpanLayer, SEQUENCE_ATTRIBUTE};
//!
//! let exporter = InMemorySpanExporter::default();
//! let provider = SdkTracerProvider::builder()
//!     .with_max_events_per_span(128) // the SDK's default: `with_max_events` must not exceed it
//!     .with_simple_exporter(exporter.clone())
//!     .build();
//! let steps = RotatingSpanLayer::new(provider.tracer("waypoint.scheduler.step"), "scheduler_steps")
//!     .with_target("waypoint::step", "step")
//!     .with_window(Duration::from_secs(10))
//!     .with_max_events(128);
//! let handle = steps.handle(); // for a timer (`rotate_if_due`) and for shutdown
//! let subscriber = tracing_subscriber::registry().with(steps);
//!
//! let start = monotonic_seconds();
//! tracing::subscriber::with_default(subscriber, || {
//!     for (step, at) in [(1u64, start), (2, start + 4.0), (3, start + 11.0)] {
//!         tracing::event!(
//!             target: "waypoint::step",
//!             Level::INFO,
//!             "event.type" = "BATCH_SUMMARY",
//!             ts.monotonic = at,
//!             step.id = step,
//!             kv.usage_gpu_ratio = 0.5,
//!         );
//!     }
//! });
//! handle.end_current(); // at shutdown, before `provider.shutdown()`
//!
//! // Step 3 came 11 s after step 1, past the 10 s window: it is on a second span.
//! let spans = exporter.get_finished_spans().unwrap();
//! assert_eq!(spans.len(), 2);
//! assert_eq!(spans[0].name, "scheduler_steps");
//! assert_eq!(spans[0].events.len(), 2);
//! assert_eq!(spans[0].events[0].name, "step.BATCH_SUMMARY");
//! assert_eq!(spans[0].end_time, wall_time_of(start + 4.0));
//! assert_eq!(spans[1].start_time, wall_time_of(start + 11.0));
//! assert_eq!(spans[1].links[0].span_context, spans[0].span_context);
//! assert!(spans[1].attributes.iter().any(|kv| kv.key.as_str() == SEQUENCE_ATTRIBUTE
//!     && kv.value == Value::I64(1)));
//! ```
//!
//! For each event whose target starts with a prefix given to
//! [`with_target`](RotatingSpanLayer::with_target) (the longest matching prefix decides), in
//! whatever `tracing` span it happens, or none:
//!
//! - **The span event** is named, typed and dated exactly as [`SpanEventLayer`]'s (see [the
//!   contract](#the-contract)): `<namespace>.<event.type>`, one attribute per recorded field,
//!   at `wall_time_of(ts.monotonic)`, or the mapped now.
//! - **The span.** The first chosen event starts a span named as the layer was told, of kind
//!   `INTERNAL`, with no parent whatever context is current, starting at that event's time.
//!   It takes events until one comes at or past its start plus the window
//!   ([`with_window`](RotatingSpanLayer::with_window), 10 s by default): that span is ended and
//!   the event starts the next one. A span is also ended as soon as it holds
//!   [`with_max_events`](RotatingSpanLayer::with_max_events) events (128 by default), and the
//!   next event starts the next one. An event dated before its span's start (reported late)
//!   still goes on the current span.
//! - **End time.** A span ends at the time of its latest event, so it covers exactly the time
//!   its events do: it never claims idle time, and an early end (shutdown) never lies in the
//!   future. Spans do not overlap; an idle gap between two spans shows as a gap.
//! - **Links and attributes.** Every span but the first links to the span before it that was
//!   sampled (all of them, unless the provider's sampler drops some), so a viewer can walk the
//!   chain back. Each span starts with [`SEQUENCE_ATTRIBUTE`] (0, 1, 2... per layer: a gap
//!   shows spans the sampler dropped), [`WINDOW_SECONDS_ATTRIBUTE`] and
//!   [`MAX_EVENTS_ATTRIBUTE`], and ends with [`END_REASON_ATTRIBUTE`]: `"window"`,
//!   `"max_events"`, `"end_current"` or `"dropped"` (the layer and its handles were dropped).
//! - **Sampling first.** If the provider's sampler drops a span, the events of its window are
//!   read for their time alone: no attribute, no string, no allocation. A dropped span is not
//!   counted full, so it ends when its window does, and the next span is sampled again.
//! - **No thread.** The layer ends spans only when events come. The application calls
//!   [`RotatingSpanHandle::rotate_if_due`] from a timer (every second, say) so that the last
//!   span of a server gone idle reaches the collector, and
//!   [`RotatingSpanHandle::end_current`] at shutdown, before shutting the provider down.
//! - **Threads.** The state is behind one mutex, taken once per chosen event (the scheduler's
//!   single thread never contends for it); events from several threads all land, in the order
//!   they take the lock. Spans are ended (and may be exported) once the lock is released, so
//!   with several threads two spans may reach the exporter in either order; the sequence and
//!   the links give the chain's order. A panic while the lock was held does not stop the layer.
//!
//! The layer cannot see the provider's limits: keep `with_max_events` at or below the
//! provider's events per span (`with_max_events_per_span`, 128 by default), or the SDK drops
//! the excess. These events happen outside any span, so `tracing_opentelemetry`'s layer leaves
//! them alone; if the application runs inside a span of its own, combine the filters with
//! [`ExceptSpanEvents::and_except`].
//!
//! [`Instant`]: std::time::Instant
//! [`Tracer`]: opentelemetry::trace::Tracer
#![deny(
    missing_docs,
    missing_debug_implementations,
    unreachable_pub,
    rust_2018_idioms
)]

/// The field whose value names the span event, after the namespace.
pub const EVENT_TYPE_FIELD: &str = "event.type";

/// The field that dates the span event: `f64` seconds on the clock of [`monotonic_seconds`].
pub const MONOTONIC_TIMESTAMP_FIELD: &str = "ts.monotonic";

/// The field `tracing` gives an event's message; it names the span event when there is no
/// [`EVENT_TYPE_FIELD`], and never becomes an attribute.
pub const MESSAGE_FIELD: &str = "message";

/// What separates the namespace from the event type in a span event's name.
pub const NAMESPACE_SEPARATOR: char = '.';

/// The attribute that numbers a [`RotatingSpanLayer`]'s spans in the order they start, from 0.
pub const SEQUENCE_ATTRIBUTE: &str = "rotation.sequence";

/// The attribute that gives a [`RotatingSpanLayer`]'s window, in seconds, on each of its spans.
pub const WINDOW_SECONDS_ATTRIBUTE: &str = "rotation.window_s";

/// The attribute that gives the most events a [`RotatingSpanLayer`]'s span takes, on each span.
pub const MAX_EVENTS_ATTRIBUTE: &str = "rotation.max_events";

/// The attribute that says why a [`RotatingSpanLayer`]'s span ended: `"window"`,
/// `"max_events"`, `"end_current"` or `"dropped"`.
pub const END_REASON_ATTRIBUTE: &str = "rotation.end_reason";

mod clock;
mod fields;
mod filter;
mod layer;
mod rotating;
mod routes;

pub use clock::{monotonic_seconds, monotonic_seconds_at, wall_time_of};
pub use filter::ExceptSpanEvents;
pub use layer::SpanEventLayer;
pub use rotating::{RotatingSpanHandle, RotatingSpanLayer};
