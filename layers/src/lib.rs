//! [`tracing_subscriber`] layers that turn [`tracing`] events into OpenTelemetry span events.
//!
//! Code instrumented with `tracing` already tells the story of a unit of work: a span for the
//! work, and events inside it as things happen to it ("queued", "first token sent"). Exported
//! to OpenTelemetry, that story belongs on the span itself, as span events, so that a trace
//! viewer draws each event on the span's timeline. [`SpanEventLayer`] does this for the events
//! you choose by target, with typed attributes and with the time at which each event says it
//! happened. It depends on `tracing`, `tracing-subscriber`, `tracing-opentelemetry` and
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
//! [`Instant`]: std::time::Instant
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

mod clock;
mod filter;
mod layer;

pub use clock::{monotonic_seconds, monotonic_seconds_at, wall_time_of};
pub use filter::ExceptSpanEvents;
pub use layer::SpanEventLayer;
