//! The API side of a request's journey: the `llm_request` span and its events.
//!
//! Created only for requests that journey sampling picks (decided once, here). Events go to
//! target `waypoint::api` inside the span: `ARRIVED`, `HANDOFF_TO_CORE`,
//! `FIRST_RESPONSE_FROM_CORE`, then `DEPARTED`, or `ABORTED` (with `abort.reason`) if the
//! request ends any other way, including the client hanging up (the journey is dropped
//! with the response). Attributes are recorded on the span as they become known.

use std::time::Instant;

use axum::http::{HeaderMap, HeaderName};
use tracing::field::Empty;
use tracing::Span;

use crate::engine::journey::monotonic_seconds;
use crate::engine::{EngineRequest, FinishReason, FinishedInfo};
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

/// One sampled request's `llm_request` span.
///
/// Integers are recorded as `i64`: `tracing_opentelemetry` turns a span field recorded as
/// `u64` into a string attribute.
#[derive(Debug)]
pub struct ApiJourney {
    span: Span,
    request_id: String,
    arrival: Instant,
    first_response: Option<Instant>,
    ended: bool,
    /// Whether the caller chose this trace (see [`ApiJourney::exemplar_allowed`]).
    caller_chose: bool,
}

/// Emits a journey event on `span`, inside it: tracing-opentelemetry ends a span at its last
/// exit, not at its close, so an event emitted from outside (after the handler's last poll, or
/// from a drop) would land after the span's end. Entering it moves the end past the event.
fn event(span: &Span, request_id: &str, kind: &'static str) {
    span.in_scope(|| {
        tracing::event!(
            target: TARGET,
            parent: span,
            tracing::Level::DEBUG,
            request_id,
            event.type = kind,
            ts.monotonic = monotonic_seconds(),
            "api {kind}"
        )
    });
}

impl ApiJourney {
    /// Starts the journey if tracing is on and the request is sampled: the header
    /// `x-waypoint-trace: 1` forces it; otherwise a caller's `traceparent` decides (its
    /// sampled flag is respected), and without one a draw against the sample rate. The span
    /// becomes the child of the caller's span when there is one.
    pub fn start(
        config: &ServerConfig,
        headers: &HeaderMap,
        api: Api,
        request_id: &str,
        model: &str,
        arrival: Instant,
    ) -> Option<Self> {
        let rate = config.journey_sample_rate?;
        let forced = headers
            .get(&FORCE_TRACE)
            .is_some_and(|v| v.as_bytes() == b"1");
        let remote_parent = if headers.contains_key(&TRACEPARENT) {
            RemoteParent::from_headers(headers)
        } else {
            None
        };
        let sampled = forced
            || match &remote_parent {
                Some(parent) => parent.is_sampled(),
                None => rate >= 1.0 || (rate > 0.0 && rand::random::<f64>() < rate),
            };
        if !sampled {
            return None;
        }
        let span = tracing::info_span!(
            target: TARGET,
            "llm_request",
            otel.kind = "server",
            gen_ai.operation.name = api.operation_name(),
            gen_ai.provider.name = PROVIDER_NAME,
            server.address = config.host.as_str(),
            server.port = i64::from(config.port),
            gen_ai.request.id = request_id,
            gen_ai.request.model = model,
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
            gen_ai.response.model = model,
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
            http.response.status_code = Empty,
        );
        // Before the span's first event starts its OpenTelemetry span.
        if let Some(parent) = &remote_parent {
            parent.adopt(&span, forced);
        }
        event(&span, request_id, "ARRIVED");
        Some(Self {
            span,
            request_id: request_id.to_string(),
            arrival,
            first_response: None,
            ended: false,
            // Past the `sampled` check, a remote parent means the caller's trace was sampled.
            caller_chose: forced || remote_parent.is_some(),
        })
    }

    /// Whether this trace's id may appear as an exemplar on the unauthenticated `/metrics`:
    /// only when the caller chose the trace (`x-waypoint-trace: 1`, or a sampled
    /// `traceparent` of its own). A trace sampled by the server's draw belongs to a caller
    /// who never asked for it to be visible, and `/metrics` is open to anyone who can reach
    /// the port, so its id stays off the page.
    pub fn exemplar_allowed(&self) -> bool {
        self.caller_chose
    }

    /// The span the engine's `llm_core` span hangs under.
    pub fn span(&self) -> &Span {
        &self.span
    }

    /// The trace this journey belongs to, for the response headers (none without an
    /// OpenTelemetry layer).
    pub fn trace_headers(&self) -> Option<TraceHeaders> {
        TraceHeaders::of(&self.span)
    }

    /// The request was refused before reaching the engine (invalid, queue full): it departs
    /// with `status`, the error's type, and no engine span.
    pub fn rejected(mut self, status: u16, error_type: &'static str) {
        self.ended = true;
        self.span
            .record("http.response.status_code", i64::from(status))
            .record("error.type", error_type)
            .record("gen_ai.latency.e2e", self.arrival.elapsed().as_secs_f64());
        event(&self.span, &self.request_id, "DEPARTED");
    }

    /// The validated request goes to the engine, streamed or not.
    pub fn handoff(&self, request: &EngineRequest, stream: bool) {
        let params = &request.params;
        let span = &self.span;
        span.record("gen_ai.request.max_tokens", params.max_tokens as i64)
            .record("gen_ai.request.temperature", f64::from(params.temperature))
            .record("gen_ai.request.top_p", f64::from(params.top_p))
            .record(
                "gen_ai.request.frequency_penalty",
                f64::from(params.frequency_penalty),
            )
            .record(
                "gen_ai.request.presence_penalty",
                f64::from(params.presence_penalty),
            )
            // One choice per request: `n` above 1 is refused at validation.
            .record("gen_ai.request.choice.count", 1_i64)
            .record("gen_ai.request.stream", stream)
            .record("gen_ai.usage.input_tokens", request.prompt_ids.len() as i64);
        if let Some(top_k) = params.top_k {
            span.record("gen_ai.request.top_k", top_k as i64);
        }
        // A seed beyond i64 has no faithful integer attribute; it is left out.
        if let Some(seed) = params.seed.and_then(|seed| i64::try_from(seed).ok()) {
            span.record("gen_ai.request.seed", seed);
        }
        if !params.stop.is_empty() {
            // The convention's string[]; `tracing` fields hold no arrays, so a JSON array.
            let stops = serde_json::to_string(&params.stop).unwrap_or_default();
            span.record("gen_ai.request.stop_sequences", stops.as_str());
        }
        event(&self.span, &self.request_id, "HANDOFF_TO_CORE");
    }

    /// Output arrived from the engine; only the first time counts.
    pub fn response(&mut self) {
        if self.first_response.is_none() {
            self.first_response = Some(Instant::now());
            event(&self.span, &self.request_id, "FIRST_RESPONSE_FROM_CORE");
        }
    }

    /// The request ended with `info`, answered with `status`.
    pub fn finished(mut self, info: &FinishedInfo, status: u16) {
        self.ended = true;
        let now = Instant::now();
        let span = &self.span;
        span.record("gen_ai.usage.input_tokens", info.prompt_tokens as i64)
            .record("gen_ai.usage.output_tokens", info.completion_tokens as i64)
            .record(
                "gen_ai.usage.cache_read.input_tokens",
                info.cached_prompt_tokens as i64,
            )
            .record("gen_ai.response.finish_reasons", info.reason.as_str())
            .record("http.response.status_code", i64::from(status))
            .record(
                "gen_ai.latency.e2e",
                now.duration_since(self.arrival).as_secs_f64(),
            );
        if let Some(first) = self.first_response {
            span.record(
                "gen_ai.latency.time_to_first_token",
                first.duration_since(self.arrival).as_secs_f64(),
            );
        }
        let timings = &info.timings;
        for (field, value) in [
            ("gen_ai.latency.time_in_queue", timings.queue),
            ("gen_ai.latency.time_in_model_prefill", timings.prefill),
            ("gen_ai.latency.time_in_model_decode", timings.decode),
        ] {
            if let Some(seconds) = value {
                span.record(field, seconds);
            }
        }
        if info.reason == FinishReason::Error {
            span.record("error.type", "engine_error");
        }
        if info.reason == FinishReason::Abort {
            self.aborted("engine_abort");
        } else {
            event(span, &self.request_id, "DEPARTED");
        }
    }

    fn aborted(&self, reason: &'static str) {
        // Inside the span, as in `event`.
        self.span.in_scope(|| {
            tracing::event!(
                target: TARGET,
                parent: &self.span,
                tracing::Level::DEBUG,
                request_id = self.request_id.as_str(),
                event.type = "ABORTED",
                ts.monotonic = monotonic_seconds(),
                abort.reason = reason,
                "api ABORTED"
            )
        });
    }
}

impl Drop for ApiJourney {
    fn drop(&mut self) {
        // Dropped without an answer: the client went away (or the handler failed).
        if !self.ended {
            self.span
                .record("gen_ai.latency.e2e", self.arrival.elapsed().as_secs_f64());
            self.aborted("client_disconnected");
        }
    }
}
