//! Journey events: each traced request's lifecycle in the engine, as `tracing` events.
//!
//! Every event goes to target `waypoint::journey` at DEBUG level, inside the request's
//! `llm_core` span, with typed fields (the contract is in `docs/JOURNEY_TRACING.md`):
//! `event.type`, `ts.monotonic`, `scheduler.step`, `phase`, `prefill.done_tokens`,
//! `prefill.total_tokens`, `decode.done_tokens`, `decode.max_tokens`, `num_preemptions`, plus
//! `schedule.kind` on SCHEDULED and `finish.status` on FINISHED. Nothing here knows about
//! OpenTelemetry; layers translate the events. A request that was not sampled has no
//! [`Journey`], so it costs one `Option` check per point.

use tracing::Span;

use super::request::{Request, RequestStatus};
use super::types::FinishReason;

/// Target of every journey event.
pub const TARGET: &str = "waypoint::journey";

/// Name of the per-request engine span.
pub const CORE_SPAN_NAME: &str = "llm_core";

/// Seconds on the process's monotonic clock: the clock `waypoint-layers` maps to wall time
/// through its one anchor per process, so exported timestamps match `ts.monotonic`.
pub use waypoint_layers::monotonic_seconds;

/// The `llm_core` span of a traced request, and what has been said about it.
#[derive(Debug)]
pub struct Journey {
    span: Span,
    /// The request's `max_tokens`, reported as `decode.max_tokens`.
    max_tokens: usize,
    first_token_sent: bool,
}

/// Where a request is, as the events report it.
pub(super) fn phase(request: &Request) -> &'static str {
    match request.status() {
        RequestStatus::Waiting => "WAITING",
        _ if request.num_computed_tokens() < request.num_tokens().saturating_sub(1) => "PREFILL",
        _ => "DECODE",
    }
}

fn finish_status(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Stop => "stopped",
        FinishReason::Length => "length",
        FinishReason::Abort => "aborted",
        FinishReason::Error => "error",
    }
}

/// One journey event with the progress fields every event carries; `$extra` adds the
/// event-specific ones.
macro_rules! journey_event {
    ($journey:expr, $request:expr, $step:expr, $kind:literal $(, $($extra:tt)+)?) => {{
        let request: &Request = $request;
        tracing::event!(
            target: TARGET,
            parent: &$journey.span,
            tracing::Level::DEBUG,
            request_id = request.request_id(),
            event.type = $kind,
            ts.monotonic = monotonic_seconds(),
            scheduler.step = $step,
            phase = phase(request),
            prefill.done_tokens = request.num_computed_tokens().min(request.num_prompt_tokens()) as u64,
            prefill.total_tokens = request.num_prompt_tokens() as u64,
            decode.done_tokens = request.num_output_tokens() as u64,
            decode.max_tokens = $journey.max_tokens as u64,
            num_preemptions = request.num_preemptions() as u64,
            $($($extra)+,)?
            "journey {}", $kind
        );
    }};
}

impl Journey {
    /// Opens the `llm_core` span under `parent` (the API's `llm_request` span) for a request
    /// that may generate `max_tokens` tokens.
    pub fn start(parent: &Span, request_id: &str, max_tokens: usize) -> Self {
        let span = tracing::info_span!(
            target: TARGET,
            parent: parent,
            CORE_SPAN_NAME,
            otel.kind = "internal",
            gen_ai.request.id = request_id,
        );
        Self {
            span,
            max_tokens,
            first_token_sent: false,
        }
    }

    /// The request entered the waiting queue.
    pub fn queued(&self, request: &Request, step: u64) {
        journey_event!(self, request, step, "QUEUED");
    }

    /// The request was admitted to the running batch (again, after a preemption).
    pub fn scheduled(&self, request: &Request, step: u64) {
        let kind = if request.num_preemptions() == 0 {
            "FIRST"
        } else {
            "RESUME"
        };
        journey_event!(self, request, step, "SCHEDULED", schedule.kind = kind);
    }

    /// The request lost its blocks and waits to be recomputed.
    pub fn preempted(&self, request: &Request, step: u64) {
        journey_event!(self, request, step, "PREEMPTED");
    }

    /// A token was generated; the first one is reported.
    pub fn token(&mut self, request: &Request, step: u64) {
        if !self.first_token_sent {
            self.first_token_sent = true;
            journey_event!(self, request, step, "FIRST_TOKEN");
        }
    }

    /// The request ended and its blocks are free; the span closes with this value.
    pub fn finished(self, request: &Request, step: u64, reason: FinishReason) {
        journey_event!(
            self,
            request,
            step,
            "FINISHED",
            finish.status = finish_status(reason)
        );
    }
}
