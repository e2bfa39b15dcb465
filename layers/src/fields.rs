//! Reading an event's fields into span-event attributes, for every layer of the crate.

use std::borrow::Cow;
use std::fmt;

use opentelemetry::{KeyValue, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Metadata};

use crate::clock::monotonic_seconds;
use crate::{EVENT_TYPE_FIELD, MESSAGE_FIELD, MONOTONIC_TIMESTAMP_FIELD};

/// One event's fields, read as the crate documents: typed attributes, and what names and dates
/// the span event.
pub(crate) struct EventFields {
    attributes: Vec<KeyValue>,
    /// Index in `attributes` of the `event.type` value.
    event_type: Option<usize>,
    message: Option<String>,
    monotonic_seconds: Option<f64>,
}

impl EventFields {
    /// Reads every field of `event`: the one pass that builds the attributes.
    pub(crate) fn record(event: &Event<'_>) -> Self {
        let fields = event.metadata().fields();
        let declares_event_type = fields.field(EVENT_TYPE_FIELD).is_some();
        let mut visitor = AttributeVisitor {
            fields: EventFields {
                attributes: Vec::with_capacity(fields.len()),
                event_type: None,
                message: None,
                monotonic_seconds: None,
            },
            wants_message: !declares_event_type,
        };
        event.record(&mut visitor);
        let mut fields = visitor.fields;
        if fields.event_type.is_none() && declares_event_type {
            // `event.type` was declared but left `Empty`: the message names the event after all.
            let mut fallback = MessageVisitor(None);
            event.record(&mut fallback);
            fields.message = fallback.0;
        }
        fields
    }

    /// The recorded `event.type`, as text.
    pub(crate) fn event_type(&self) -> Option<Cow<'_, str>> {
        self.event_type
            .map(|index| self.attributes[index].value.as_str())
    }

    /// What follows the namespace in the span event's name: the `event.type`, else the
    /// message, else the callsite's name.
    pub(crate) fn name_suffix<'a>(&'a self, metadata: &'static Metadata<'static>) -> Cow<'a, str> {
        match (self.event_type(), &self.message) {
            (Some(event_type), _) => event_type,
            (None, Some(message)) => Cow::Borrowed(message.as_str()),
            (None, None) => Cow::Borrowed(metadata.name()),
        }
    }

    /// When the event happened, on the crate's monotonic clock: its `ts.monotonic`, or now.
    pub(crate) fn monotonic_seconds(&self) -> f64 {
        or_now(self.monotonic_seconds)
    }

    pub(crate) fn into_attributes(self) -> Vec<KeyValue> {
        self.attributes
    }
}

/// When `event` happened, read as [`EventFields::monotonic_seconds`] reads it, without building
/// anything: no allocation.
pub(crate) fn monotonic_seconds_of(event: &Event<'_>) -> f64 {
    let mut visitor = SecondsVisitor(None);
    event.record(&mut visitor);
    or_now(visitor.0)
}

/// A usable `ts.monotonic`, or the current reading of the clock.
fn or_now(seconds: Option<f64>) -> f64 {
    seconds
        .filter(|seconds| seconds.is_finite())
        .unwrap_or_else(monotonic_seconds)
}

/// Turns an event's fields into attributes, and picks out what names and dates the event.
struct AttributeVisitor {
    fields: EventFields,
    /// Whether to keep the message: only when it may name the event.
    wants_message: bool,
}

impl AttributeVisitor {
    fn push(&mut self, field: &Field, value: Value) {
        let fields = &mut self.fields;
        if field.name() == EVENT_TYPE_FIELD {
            fields.event_type = Some(fields.attributes.len());
        }
        fields.attributes.push(KeyValue::new(field.name(), value));
    }

    fn note_seconds(&mut self, field: &Field, seconds: f64) {
        if field.name() == MONOTONIC_TIMESTAMP_FIELD {
            self.fields.monotonic_seconds = Some(seconds);
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

    fn keep_message(&mut self, message: impl FnOnce() -> String) {
        if self.wants_message {
            self.fields.message = Some(message());
        }
    }
}

impl Visit for AttributeVisitor {
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
            self.keep_message(|| value.to_owned());
        } else {
            self.push(field, Value::String(value.to_owned().into()));
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.push(field, Value::String(value.to_string().into()));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == MESSAGE_FIELD {
            self.keep_message(|| format!("{value:?}"));
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

/// Reads `ts.monotonic` alone, with the conversions [`AttributeVisitor`] applies to it.
struct SecondsVisitor(Option<f64>);

impl SecondsVisitor {
    fn note(&mut self, field: &Field, seconds: f64) {
        if field.name() == MONOTONIC_TIMESTAMP_FIELD {
            self.0 = Some(seconds);
        }
    }

    /// As [`AttributeVisitor::push_integer`]: only integers that fit in `i64` are seconds.
    fn note_integer(&mut self, field: &Field, value: impl TryInto<i64>) {
        if let Ok(value) = value.try_into() {
            self.note(field, value as f64);
        }
    }
}

impl Visit for SecondsVisitor {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.note(field, value);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.note(field, value as f64);
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.note_integer(field, value);
    }

    fn record_i128(&mut self, field: &Field, value: i128) {
        self.note_integer(field, value);
    }

    fn record_u128(&mut self, field: &Field, value: u128) {
        self.note_integer(field, value);
    }

    // Every other kind of value reaches `record_debug`, which must not format it.
    fn record_debug(&mut self, _: &Field, _: &dyn fmt::Debug) {}
}
