//! The API side of a request's journey: the `llm_request` span and its events.
//!
//! Decided once per request, here: a journey is live (head-sampled, forced by
//! `x-waypoint-trace: 1`, or under a sampled `traceparent`), recorded (tail retention: the
//! sample rate is below 1 and the head draw missed; see `crate::engine::retention`), or
//! absent. Events go to target `waypoint::api`: `ARRIVED`, `HANDOFF_TO_CORE`,
//! `FIRST_RESPONSE_FROM_CORE`, then `DEPARTED`, or `ABORTED` (with `abort.reason`) if the
//! request ends any other way, including the client hanging up (the journey is dropped
//! with the response). A live journey emits them as they happen; a recorded one keeps them
//! in memory with its attributes, and replays the whole span, with its true times and the
//! trace id the response announced, only if the request ends up kept.

use std::sync::Arc;
use std::time::Instant;

use axum::http::{HeaderMap, HeaderName};
use opentelemetry::trace::{SpanId, TraceId};
use tracing::field::Empty;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::engine::journey::{
    monotonic_seconds, monotonic_seconds_at, replay_fields, JourneyMode, MemoryTally,
    RecordedJourney, TailRetention,
};
use crate::engine::retention::{KeepRules, RetentionReason};
use crate::engine::{EngineRequest, FinishReason, FinishedInfo};
use crate::metrics::Metrics;
use crate::telemetry::propagation::{RemoteParent, TraceHeaders};

use super::output::Api;
use super::ServerConfig;

/// Target of the API's journey events.
pub const TARGET: &str = "waypoint::api";

/// `gen_ai.provider.name`: the convention names the service that serves the model; a
/// self-hosted server names itself, as vLLM's spans do.
pub const PROVIDER_NAME: &str = "waypoint";

/// The request header that forces journey tracing for one request (`1`).
pub const FORCE_TRACE_HEADER: &str = "x-waypoint-trace";

/// The two header names sampling looks up, parsed once: a lookup by `&str` validates the
/// name on every call, and made a sampled-out request cost ~42 ns instead of ~19 ns
/// (`benches/tracing.rs`, `sampled_out_request`).
static FORCE_TRACE: HeaderName = HeaderName::from_static(FORCE_TRACE_HEADER);
static TRACEPARENT: HeaderName =
    HeaderName::from_static(crate::telemetry::propagation::TRACEPARENT);

/// One request's `llm_request` journey, live or recorded.
///
/// Integers are recorded as `i64`: `tracing_opentelemetry` turns a span field recorded as
/// `u64` into a string attribute.
#[derive(Debug)]
pub struct ApiJourney {
    sink: ApiSink,
    request_id: String,
    arrival: Instant,
    /// Validated and tokenized: handed to the engine.
    handed_off: Option<Instant>,
    first_response: Option<Instant>,
    /// The first byte of output handed to the connection.
    first_byte: Option<Instant>,
    ended: bool,
    /// Whether the caller chose this trace (see [`ApiJourney::exemplar_allowed`]).
    caller_chose: bool,
    /// Where the decision is counted (`waypoint_journeys_total`).
    metrics: Arc<Metrics>,
}

#[derive(Debug)]
enum ApiSink {
    /// Exported for this reason; its events are emitted as they happen.
    Live { span: Span, reason: RetentionReason },
    /// Kept in memory until the request ends and the rules judge it.
    Recorded(Box<ApiRecord>),
}

/// A recorded `llm_request`: what the live span would have been told, and when.
#[derive(Debug)]
struct ApiRecord {
    identity: SpanIdentity,
    trace_id: TraceId,
    span_id: SpanId,
    /// The caller's unsampled span, when tail rules may keep such a request.
    parent: Option<RemoteParent>,
    /// The span's start (monotonic seconds).
    started: f64,
    fields: Vec<(&'static str, FieldValue)>,
    events: Vec<ApiEvent>,
    retention: Arc<TailRetention>,
    /// Counts the journey in `waypoint_journeys_in_memory`, with its bytes.
    tally: MemoryTally,
}

/// The attributes an `llm_request` span is created with.
#[derive(Debug, Clone)]
struct SpanIdentity {
    operation: &'static str,
    host: String,
    port: u16,
    model: String,
}

/// A span field's value, as recorded.
#[derive(Debug, Clone, PartialEq)]
enum FieldValue {
    I64(i64),
    F64(f64),
    Bool(bool),
    Str(String),
}

impl FieldValue {
    fn record_on(&self, span: &Span, field: &str) {
        match self {
            Self::I64(value) => span.record(field, *value),
            Self::F64(value) => span.record(field, *value),
            Self::Bool(value) => span.record(field, *value),
            Self::Str(value) => span.record(field, value.as_str()),
        };
    }
}

/// One API event, as recorded.
#[derive(Debug, Clone, Copy, PartialEq)]
struct ApiEvent {
    kind: &'static str,
    ts: f64,
    abort_reason: Option<&'static str>,
}

/// Emits `event` on `span`, inside it: tracing-opentelemetry ends a span at its last exit,
/// not at its close, so an event emitted from outside (after the handler's last poll, or
/// from a drop) would land after the span's end. Entering it moves the end past the event.
fn emit(span: &Span, request_id: &str, event: &ApiEvent) {
    span.in_scope(|| match event.abort_reason {
        Some(reason) => tracing::event!(
            target: TARGET,
            parent: span,
            tracing::Level::DEBUG,
            request_id,
            event.type = event.kind,
            ts.monotonic = event.ts,
            abort.reason = reason,
            "api {}", event.kind
        ),
        None => tracing::event!(
            target: TARGET,
            parent: span,
            tracing::Level::DEBUG,
            request_id,
            event.type = event.kind,
            ts.monotonic = event.ts,
            "api {}", event.kind
        ),
    });
}

/// Opens an `llm_request` span with every attribute the journey may record declared.
fn request_span(identity: &SpanIdentity, request_id: &str) -> Span {
    tracing::info_span!(
        target: TARGET,
        "llm_request",
        otel.kind = "server",
        gen_ai.operation.name = identity.operation,
        gen_ai.provider.name = PROVIDER_NAME,
        server.address = identity.host.as_str(),
        server.port = i64::from(identity.port),
        gen_ai.request.id = request_id,
        gen_ai.request.model = identity.model.as_str(),
        gen_ai.request.max_tokens = Empty,
        gen_ai.request.temperature = Empty,
        gen_ai.request.top_p = Empty,
        gen_ai.request.top_k = Empty,
        gen_ai.request.seed = Empty,
        gen_ai.request.frequency_penalty = Empty,
        gen_ai.request.presence_penalty = Empty,
        gen_ai.request.stop_sequences = Empty,
        gen_ai.request.choice.count = Empty,
        gen_ai.request.stream = Empty,
        gen_ai.response.id = request_id,
        gen_ai.response.model = identity.model.as_str(),
        gen_ai.usage.input_tokens = Empty,
        gen_ai.usage.output_tokens = Empty,
        gen_ai.usage.cache_read.input_tokens = Empty,
        gen_ai.response.finish_reasons = Empty,
        error.type = Empty,
        gen_ai.latency.time_to_first_token = Empty,
        gen_ai.latency.e2e = Empty,
        gen_ai.latency.time_in_queue = Empty,
        gen_ai.latency.time_in_model_prefill = Empty,
        gen_ai.latency.time_in_model_decode = Empty,
        waypoint.latency.validation = Empty,
        waypoint.latency.handoff = Empty,
        waypoint.latency.engine_queue = Empty,
        waypoint.latency.engine_to_api = Empty,
        waypoint.latency.first_byte = Empty,
        waypoint.latency.time_to_first_byte = Empty,
        http.response.status_code = Empty,
        waypoint.retention.reason = Empty,
        { replay_fields::START } = Empty,
        { replay_fields::END } = Empty,
        { replay_fields::TRACE_ID } = Empty,
        { replay_fields::SPAN_ID } = Empty,
    )
}

/// Journey tracing's settings in force; `PUT /debug/tracing` replaces them while serving,
/// and each request keeps the ones it arrived under.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct JourneySettings {
    /// `--journey-tracing-sample-rate`.
    pub sample_rate: f64,
    /// `--journey-tracing-keep`.
    pub keep: KeepRules,
    /// `--journey-tracing-keep-unsampled-parents`.
    pub keep_unsampled_parents: bool,
}

impl JourneySettings {
    /// The settings `config` starts with, if journey tracing is on.
    pub fn of(config: &ServerConfig) -> Option<Self> {
        Some(Self {
            sample_rate: config.journey_sample_rate?,
            keep: config.journey_keep,
            keep_unsampled_parents: config.journey_keep_unsampled_parents,
        })
    }
}

/// What a journey starts from: the settings in force, and the server it runs in.
#[derive(Debug, Clone, Copy)]
pub struct JourneyContext<'a> {
    /// Where the server listens (`server.address`, `server.port`).
    pub config: &'a ServerConfig,
    /// The settings in force.
    pub settings: JourneySettings,
    /// Where decisions are counted.
    pub metrics: &'a Arc<Metrics>,
}

/// How the API decided to follow a request at arrival.
enum Decision {
    /// Exported for this reason, under the caller's span if it sent one.
    Live(RetentionReason, Option<RemoteParent>),
    Recorded(Option<RemoteParent>),
    /// Not followed: an unsampled caller, and tail rules may not keep it.
    UnsampledParent,
}

/// The decision for a request with `headers`, and whether it was forced.
fn decide(settings: &JourneySettings, headers: &HeaderMap) -> (Decision, bool) {
    let rate = settings.sample_rate;
    let forced = headers
        .get(&FORCE_TRACE)
        .is_some_and(|v| v.as_bytes() == b"1");
    let remote_parent = if headers.contains_key(&TRACEPARENT) {
        RemoteParent::from_headers(headers)
    } else {
        None
    };
    let decision = if forced {
        Decision::Live(RetentionReason::Forced, remote_parent)
    } else {
        match remote_parent {
            Some(parent) if parent.is_sampled() => {
                Decision::Live(RetentionReason::Parent, Some(parent))
            }
            Some(parent) if settings.keep_unsampled_parents => Decision::Recorded(Some(parent)),
            Some(_) => Decision::UnsampledParent,
            None if rate >= 1.0 || (rate > 0.0 && rand::random::<f64>() < rate) => {
                Decision::Live(RetentionReason::Head, None)
            }
            None => Decision::Recorded(None),
        }
    };
    (decision, forced)
}

impl ApiJourney {
    /// Starts the journey under `context`'s settings: live when the request is sampled (the
    /// header `x-waypoint-trace: 1` forces it; otherwise a caller's `traceparent` decides,
    /// its sampled flag respected, and without one a draw against the sample rate),
    /// recorded for tail retention otherwise; `None` under an unsampled caller that tail
    /// retention may not keep. The span becomes the child of the caller's span when there
    /// is one.
    pub fn start(
        context: &JourneyContext<'_>,
        headers: &HeaderMap,
        api: Api,
        request_id: &str,
        model: &str,
        arrival: Instant,
    ) -> Option<Self> {
        let JourneyContext {
            config,
            settings,
            metrics,
        } = *context;
        let (decision, forced) = decide(&settings, headers);
        let identity = SpanIdentity {
            operation: api.operation_name(),
            host: config.host.clone(),
            port: config.port,
            model: model.to_string(),
        };
        let (sink, caller_chose) = match decision {
            Decision::UnsampledParent => {
                metrics.record_journey("dropped", "unsampled_parent");
                return None;
            }
            Decision::Live(reason, parent) => {
                let span = request_span(&identity, request_id);
                span.record("waypoint.retention.reason", reason.as_str());
                // Before the span's first event starts its OpenTelemetry span.
                if let Some(parent) = parent {
                    parent.adopt(&span, forced);
                }
                (
                    ApiSink::Live { span, reason },
                    reason != RetentionReason::Head,
                )
            }
            Decision::Recorded(parent) => {
                let trace_id = parent.as_ref().map_or_else(
                    || TraceId::from(rand::random::<u128>().max(1)),
                    RemoteParent::trace_id,
                );
                let mut record = ApiRecord {
                    identity,
                    trace_id,
                    span_id: SpanId::from(rand::random::<u64>().max(1)),
                    parent,
                    started: monotonic_seconds_at(arrival),
                    fields: Vec::with_capacity(24),
                    events: Vec::with_capacity(4),
                    retention: Arc::new(TailRetention::new(settings.keep)),
                    tally: MemoryTally::journey(),
                };
                record.tally.set(record.bytes());
                (ApiSink::Recorded(Box::new(record)), false)
            }
        };
        let mut journey = Self {
            sink,
            request_id: request_id.to_string(),
            arrival,
            handed_off: None,
            first_response: None,
            first_byte: None,
            ended: false,
            caller_chose,
            metrics: metrics.clone(),
        };
        journey.event("ARRIVED", None);
        Some(journey)
    }

    /// Whether this trace's id may appear as an exemplar on the unauthenticated `/metrics`:
    /// only when the caller chose the trace (`x-waypoint-trace: 1`, or a sampled
    /// `traceparent` of its own). A trace sampled by the server's draw belongs to a caller
    /// who never asked for it to be visible, and `/metrics` is open to anyone who can reach
    /// the port, so its id stays off the page.
    pub fn exemplar_allowed(&self) -> bool {
        self.caller_chose
    }

    /// How the engine is to tell its part: live under this span, or recorded under the same
    /// retention.
    pub fn engine_mode(&self) -> JourneyMode {
        match &self.sink {
            ApiSink::Live { reason, .. } => JourneyMode::Live(*reason),
            ApiSink::Recorded(record) => JourneyMode::Recorded(record.retention.clone()),
        }
    }

    /// The live span, which the engine's `llm_core` span hangs under.
    pub fn live_span(&self) -> Option<&Span> {
        match &self.sink {
            ApiSink::Live { span, .. } => Some(span),
            ApiSink::Recorded(_) => None,
        }
    }

    /// The trace this journey belongs to, for the response headers. A live journey names
    /// its span (none without an OpenTelemetry layer); a recorded one names the ids it will
    /// be exported with if it is kept, with the sampled flag off while that is undecided.
    pub fn trace_headers(&self) -> Option<TraceHeaders> {
        match &self.sink {
            ApiSink::Live { span, .. } => TraceHeaders::of(span),
            ApiSink::Recorded(record) => Some(TraceHeaders {
                trace_id: record.trace_id.to_string(),
                traceparent: format!("00-{}-{}-00", record.trace_id, record.span_id),
            }),
        }
    }

    fn record(&mut self, field: &'static str, value: FieldValue) {
        match &mut self.sink {
            ApiSink::Live { span, .. } => value.record_on(span, field),
            ApiSink::Recorded(record) => record.fields.push((field, value)),
        }
    }

    fn event(&mut self, kind: &'static str, abort_reason: Option<&'static str>) {
        let event = ApiEvent {
            kind,
            ts: monotonic_seconds(),
            abort_reason,
        };
        match &mut self.sink {
            ApiSink::Live { span, .. } => emit(span, &self.request_id, &event),
            ApiSink::Recorded(record) => record.events.push(event),
        }
    }

    fn record_e2e(&mut self) {
        let e2e = self.arrival.elapsed().as_secs_f64();
        self.record("gen_ai.latency.e2e", FieldValue::F64(e2e));
    }

    /// The request was refused before reaching the engine (invalid, queue full): it departs
    /// with `status`, the error's type, and no engine span.
    pub fn rejected(mut self, status: u16, error_type: &'static str) {
        self.ended = true;
        self.record("http.response.status_code", FieldValue::I64(status.into()));
        self.record("error.type", FieldValue::Str(error_type.to_string()));
        self.record_e2e();
        self.event("DEPARTED", None);
        let kept = (status >= 500).then_some(RetentionReason::Error);
        self.conclude(kept, None, monotonic_seconds());
    }

    /// The validated request goes to the engine, streamed or not.
    pub fn handoff(&mut self, request: &EngineRequest, stream: bool) {
        use FieldValue::{Bool, F64, I64};
        self.handed_off = Some(Instant::now());
        let params = &request.params;
        for (field, value) in [
            ("gen_ai.request.max_tokens", I64(params.max_tokens as i64)),
            ("gen_ai.request.temperature", F64(params.temperature.into())),
            ("gen_ai.request.top_p", F64(params.top_p.into())),
            (
                "gen_ai.request.frequency_penalty",
                F64(params.frequency_penalty.into()),
            ),
            (
                "gen_ai.request.presence_penalty",
                F64(params.presence_penalty.into()),
            ),
            // One choice per request: `n` above 1 is refused at validation.
            ("gen_ai.request.choice.count", I64(1)),
            ("gen_ai.request.stream", Bool(stream)),
            (
                "gen_ai.usage.input_tokens",
                I64(request.prompt_ids.len() as i64),
            ),
        ] {
            self.record(field, value);
        }
        if let Some(top_k) = params.top_k {
            self.record("gen_ai.request.top_k", I64(top_k as i64));
        }
        // A seed beyond i64 has no faithful integer attribute; it is left out.
        if let Some(seed) = params.seed.and_then(|seed| i64::try_from(seed).ok()) {
            self.record("gen_ai.request.seed", I64(seed));
        }
        if !params.stop.is_empty() {
            // The convention's string[]; `tracing` fields hold no arrays, so a JSON array.
            let stops = serde_json::to_string(&params.stop).unwrap_or_default();
            self.record("gen_ai.request.stop_sequences", FieldValue::Str(stops));
        }
        self.event("HANDOFF_TO_CORE", None);
        self.update_tally();
    }

    /// Recounts a recorded journey's bytes after a batch of fields.
    fn update_tally(&mut self) {
        if let ApiSink::Recorded(record) = &mut self.sink {
            let bytes = record.bytes();
            record.tally.set(bytes);
        }
    }

    /// Output arrived from the engine; only the first time counts.
    pub fn response(&mut self) {
        if self.first_response.is_none() {
            self.first_response = Some(Instant::now());
            self.event("FIRST_RESPONSE_FROM_CORE", None);
        }
    }

    /// The first byte of output (a streamed token, or a whole answer) goes to the
    /// connection; only the first time counts.
    pub fn first_byte(&mut self) {
        self.first_byte.get_or_insert_with(Instant::now);
    }

    /// The request ended with `info`, answered with `status` (a whole answer's first byte
    /// goes out now, if no stream sent one before).
    pub fn finished(mut self, info: &FinishedInfo, status: u16) {
        use FieldValue::{F64, I64};
        self.ended = true;
        self.first_byte();
        for (field, value) in [
            ("gen_ai.usage.input_tokens", info.prompt_tokens),
            ("gen_ai.usage.output_tokens", info.completion_tokens),
            (
                "gen_ai.usage.cache_read.input_tokens",
                info.cached_prompt_tokens,
            ),
        ] {
            self.record(field, I64(value as i64));
        }
        self.record(
            "gen_ai.response.finish_reasons",
            FieldValue::Str(info.reason.as_str().to_string()),
        );
        self.record("http.response.status_code", I64(status.into()));
        self.record_e2e();
        if let Some(first) = self.first_response {
            let ttft = first.duration_since(self.arrival).as_secs_f64();
            self.record("gen_ai.latency.time_to_first_token", F64(ttft));
        }
        for (field, seconds) in self.ttft_breakdown(info) {
            self.record(field, F64(seconds));
        }
        if info.reason == FinishReason::Error {
            self.record("error.type", FieldValue::Str("engine_error".to_string()));
        }
        if info.reason == FinishReason::Abort {
            self.event("ABORTED", Some("engine_abort"));
        } else {
            self.event("DEPARTED", None);
        }
        let kept = info
            .kept
            .or((status >= 500).then_some(RetentionReason::Error));
        self.conclude(kept, info.journey.as_deref(), monotonic_seconds());
    }

    /// The engine's timings and the parts of time to first token (`docs/JOURNEY_TRACING.md`),
    /// each the gap between two instants on one monotonic clock, so that they add up:
    /// `validation + handoff + engine_queue = time_in_queue`,
    /// `time_in_queue + time_in_model_prefill + engine_to_api = time_to_first_token`,
    /// `time_to_first_token + first_byte = time_to_first_byte`. Parts the request never
    /// reached are left out.
    fn ttft_breakdown(&self, info: &FinishedInfo) -> Vec<(&'static str, f64)> {
        let since_arrival = |instant: Option<Instant>| {
            instant.map(|instant| instant.duration_since(self.arrival).as_secs_f64())
        };
        let timings = &info.timings;
        let validation = since_arrival(self.handed_off);
        let ttft = since_arrival(self.first_response);
        let engine_ttft = timings.queue.zip(timings.prefill).map(|(q, p)| q + p);
        let minus = |a: Option<f64>, b: Option<f64>| a.zip(b).map(|(a, b)| (a - b).max(0.0));
        let mut parts = vec![
            ("gen_ai.latency.time_in_queue", timings.queue),
            ("gen_ai.latency.time_in_model_prefill", timings.prefill),
            ("gen_ai.latency.time_in_model_decode", timings.decode),
            ("waypoint.latency.validation", validation),
            (
                "waypoint.latency.handoff",
                minus(timings.received, validation),
            ),
            (
                "waypoint.latency.engine_queue",
                minus(timings.queue, timings.received),
            ),
            ("waypoint.latency.engine_to_api", minus(ttft, engine_ttft)),
        ];
        if ttft.is_some() {
            let first_byte = since_arrival(self.first_byte);
            parts.push(("waypoint.latency.first_byte", minus(first_byte, ttft)));
            parts.push(("waypoint.latency.time_to_first_byte", first_byte));
        }
        parts
            .into_iter()
            .filter_map(|(field, seconds)| Some((field, seconds?)))
            .collect()
    }

    /// Counts the decision and, for a recorded journey that is kept (`kept`), exports it:
    /// its `llm_request` span, ending at `ended`, and under it the engine's record if there
    /// is one. Returns the replayed span.
    fn conclude(
        &mut self,
        kept: Option<RetentionReason>,
        engine_record: Option<&RecordedJourney>,
        ended: f64,
    ) -> Option<Span> {
        let reason = match &self.sink {
            ApiSink::Live { reason, .. } => Some(*reason),
            ApiSink::Recorded(_) => kept,
        };
        match reason {
            Some(reason) => self.metrics.record_journey("kept", reason.as_str()),
            None => self.metrics.record_journey("dropped", "within_rules"),
        }
        let (ApiSink::Recorded(record), Some(reason)) = (&self.sink, kept) else {
            return None;
        };
        let span = record.replay(&self.request_id, reason, ended);
        if let Some(engine_record) = engine_record {
            engine_record.replay(&span, reason);
        }
        Some(span)
    }
}

impl ApiRecord {
    /// Bytes the record holds (itself, its strings and lists), for the memory gauge.
    fn bytes(&self) -> usize {
        let strings: usize = self
            .fields
            .iter()
            .map(|(_, value)| match value {
                FieldValue::Str(text) => text.capacity(),
                _ => 0,
            })
            .sum();
        std::mem::size_of::<Self>()
            + self.identity.host.capacity()
            + self.identity.model.capacity()
            + self.fields.capacity() * std::mem::size_of::<(&str, FieldValue)>()
            + strings
            + self.events.capacity() * std::mem::size_of::<ApiEvent>()
    }

    /// Emits the recorded `llm_request` as a finished span with its true start, `ended` as
    /// its end, the ids its response announced, and `reason` as
    /// `waypoint.retention.reason`.
    fn replay(&self, request_id: &str, reason: RetentionReason, ended: f64) -> Span {
        let span = request_span(&self.identity, request_id);
        // Before anything starts the OpenTelemetry span.
        match &self.parent {
            Some(parent) => parent.adopt(&span, true),
            None => {
                let _ = span.set_parent(opentelemetry::Context::new());
                span.record(replay_fields::TRACE_ID, self.trace_id.to_string().as_str());
            }
        }
        span.record(replay_fields::SPAN_ID, self.span_id.to_string().as_str())
            .record(replay_fields::START, self.started)
            .record(replay_fields::END, ended)
            .record("waypoint.retention.reason", reason.as_str());
        for (field, value) in &self.fields {
            value.record_on(&span, field);
        }
        for event in &self.events {
            emit(&span, request_id, event);
        }
        span
    }
}

impl Drop for ApiJourney {
    fn drop(&mut self) {
        // Dropped without an answer: the client went away (or the handler failed).
        if self.ended {
            return;
        }
        self.record_e2e();
        self.event("ABORTED", Some("client_disconnected"));
        let ended = monotonic_seconds();
        let replayed = self.conclude(Some(RetentionReason::Aborted), None, ended);
        if let (Some(span), ApiSink::Recorded(record)) = (replayed, &self.sink) {
            // The engine's record meets this span whenever the engine lets the request go.
            record.retention.client_left(span, ended);
        }
    }
}
