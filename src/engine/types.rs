//! Plain types every engine file shares, with no dependency on any other engine file: so
//! `request.rs`, `scheduler.rs`, `core.rs` and `handle.rs` all depend on this one and none
//! of them on each other in a circle.

use std::time::Duration;

/// Why a request ended (OpenAI's `finish_reason`, plus our `abort` and `error`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FinishReason {
    /// An end-of-sequence token, a stop token id or a stop string.
    Stop,
    /// `max_tokens` or the longest sequence the model and the KV cache can hold.
    Length,
    /// The client went away or the request was cancelled (also at shutdown).
    Abort,
    /// The engine failed while running it.
    Error,
}

impl FinishReason {
    /// The name used in API responses and metric labels.
    pub fn as_str(&self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Abort => "abort",
            FinishReason::Error => "error",
        }
    }
}

/// The longest sequence (prompt plus output) one request may reach: the model's context
/// (`max_model_len`), or fewer tokens if the whole KV pool holds fewer (`kv_slots`), since a
/// sequence's blocks must all fit at once.
///
/// The one place this rule is written: the scheduler, `waypoint serve` (the context the API
/// validates against) and `waypoint generate` all call it.
pub fn max_sequence_len(max_model_len: usize, kv_slots: usize) -> usize {
    max_model_len.min(kv_slots)
}

/// What the engine tracks right now (for health checks and leak tests).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EngineStats {
    /// Requests waiting.
    pub waiting: usize,
    /// Requests running.
    pub running: usize,
    /// Requests with an output processor (sampler, channel) in the engine.
    pub live_outputs: usize,
    /// KV blocks in use.
    pub blocks_in_use: usize,
    /// Whether the scheduler holds no request and no block.
    pub scheduler_empty: bool,
    /// Preemptions since start.
    pub total_preemptions: u64,
    /// Steps run since start.
    pub steps: u64,
    /// Requests aborted since start (client gone, cancelled, shutdown).
    pub aborted: u64,
    /// Wall time of all steps (scheduling, model, sampling, detokenizing, sending).
    pub step_time: Duration,
    /// Of that, time inside the model call.
    pub model_time: Duration,
}

/// Seconds a request spent in each engine phase.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EngineTimings {
    /// From arrival at the API to the engine taking it (validation, tokenization and the
    /// hand-off).
    pub received: Option<f64>,
    /// From arrival at the API to its first scheduling.
    pub queue: Option<f64>,
    /// From its first scheduling to its first token.
    pub prefill: Option<f64>,
    /// From its first token to its end.
    pub decode: Option<f64>,
}
