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

use super::ServerConfig;

/// Target of the API's journey events.
pub const TARGET: &str = "waypoint::api";

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

fn event(span: &Span, request_id: &str, kind: &'static str) {
    tracing::event!(
        target: TARGET,
        parent: span,
        tracing::Level::DEBUG,
        request_id,
        event.type = kind,
        event.ts.monotonic = monotonic_seconds(),
        "api {kind}"
    );
}

impl ApiJourney {
    /// Starts the journey if tracing is on and the request is sampled: the header
    /// `x-waypoint-trace: 1` forces it; otherwise a caller's `traceparent` decides (its
    /// sampled flag is respected), and without one a draw against the sample rate. The span
    /// becomes the child of the caller's span when there is one.
    pub fn start(
        config: &ServerConfig,
        headers: &HeaderMap,
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
            gen_ai.request.id = request_id,
            gen_ai.request.model = model,
            gen_ai.request.max_tokens = Empty,
            gen_ai.request.temperature = Empty,
            gen_ai.request.top_p = Empty,
            gen_ai.usage.input_tokens = Empty,
            gen_ai.usage.output_tokens = Empty,
            gen_ai.response.finish_reasons = Empty,
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
    /// with `status` and no engine span.
    pub fn rejected(mut self, status: u16) {
        self.ended = true;
        self.span
            .record("http.response.status_code", i64::from(status))
            .record("gen_ai.latency.e2e", self.arrival.elapsed().as_secs_f64());
        event(&self.span, &self.request_id, "DEPARTED");
    }

    /// The validated request goes to the engine.
    pub fn handoff(&self, request: &EngineRequest) {
        let params = &request.params;
        self.span
            .record("gen_ai.request.max_tokens", params.max_tokens as i64)
            .record("gen_ai.request.temperature", f64::from(params.temperature))
            .record("gen_ai.request.top_p", f64::from(params.top_p))
            .record("gen_ai.usage.input_tokens", request.prompt_ids.len() as i64);
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
        if info.reason == FinishReason::Abort {
            self.aborted("engine_abort");
        } else {
            event(span, &self.request_id, "DEPARTED");
        }
    }

    fn aborted(&self, reason: &'static str) {
        tracing::event!(
            target: TARGET,
            parent: &self.span,
            tracing::Level::DEBUG,
            request_id = self.request_id.as_str(),
            event.type = "ABORTED",
            event.ts.monotonic = monotonic_seconds(),
            abort.reason = reason,
            "api ABORTED"
        );
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
