//! What the engine holds now, for the debug API (`/debug/requests`, `/debug/engine`,
//! `docs/DEBUG_API.md`): plain snapshots taken between steps, and the ring of the last step
//! summaries, kept whether or not step tracing samples the step. Nothing here carries
//! prompt or output text.

use std::collections::VecDeque;

use serde::Serialize;

use super::journey::CoreEvent;
use super::output::StepStats;
use super::scheduler::SchedulerConfig;

/// Step summaries the ring keeps.
pub const STEP_RING: usize = 512;

/// Requests one view describes at most: the view is built on the engine thread, between two
/// steps, so its cost must stay bounded however many requests wait.
pub const MAX_VIEWED_REQUESTS: usize = 1024;

/// One request the engine holds.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct RequestView {
    /// The id the API gave it (`cmpl-…`, `chatcmpl-…`).
    pub id: String,
    /// `waiting` (queued, new or preempted) or `running` (holding blocks).
    pub state: &'static str,
    /// `WAITING`, `PREFILL` or `DECODE`, as journey events name it.
    pub phase: &'static str,
    /// Seconds since it arrived at the API.
    pub age_s: f64,
    /// Seconds from arrival to its first scheduling (so far, if it is still waiting for it).
    pub queue_s: f64,
    /// Seconds from its first scheduling to its first token (so far, while prefilling).
    pub prefill_s: Option<f64>,
    /// Seconds since its first token.
    pub decode_s: Option<f64>,
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Tokens in the KV cache.
    pub computed_tokens: usize,
    /// Tokens generated.
    pub output_tokens: usize,
    /// The most it may generate.
    pub max_tokens: usize,
    /// KV-cache blocks it holds.
    pub blocks: usize,
    /// Times it was preempted.
    pub preemptions: u32,
    /// Its priority (lower runs first under `--scheduling-policy priority`).
    pub priority: i64,
    /// The trace its journey belongs to, when journey tracing follows it.
    pub trace_id: Option<String>,
    /// Its engine journey so far, when tail retention records it (otherwise the state
    /// above is all there is).
    pub journey: Option<Vec<CoreEvent>>,
}

/// One scheduler step, as the ring keeps it.
#[derive(Clone, Copy, Debug, Serialize, PartialEq)]
pub struct StepSummary {
    /// The step number (`scheduler.step` of journey events).
    pub step: u64,
    /// When it ended, in seconds on the process's monotonic clock (`ts.monotonic`).
    pub at: f64,
    /// Seconds it took, and of that in the model.
    pub duration_s: f64,
    /// See `duration_s`.
    pub model_s: f64,
    /// Sequences in the batch.
    pub batch_size: usize,
    /// Prompt tokens computed.
    pub prefill_tokens: usize,
    /// Tokens decoded.
    pub decode_tokens: usize,
    /// Requests running and waiting after its admissions.
    pub running: usize,
    /// See `running`.
    pub waiting: usize,
    /// KV-cache usage after allocation (0..1).
    pub kv_usage: f32,
    /// Requests preempted in it.
    pub preemptions: usize,
    /// Requests that finished in it.
    pub finished: usize,
}

impl StepSummary {
    /// The summary of a step with `stats`, which ended `at` after `duration_s` (`model_s` in
    /// the model) and finished `finished` requests.
    pub fn of(stats: &StepStats, at: f64, duration_s: f64, model_s: f64, finished: usize) -> Self {
        Self {
            step: stats.step,
            at,
            duration_s,
            model_s,
            batch_size: stats.num_prefill_seqs + stats.num_decode_seqs,
            prefill_tokens: stats.num_prefill_tokens,
            decode_tokens: stats.num_decode_tokens,
            running: stats.num_running,
            waiting: stats.num_waiting,
            kv_usage: stats.kv_usage,
            preemptions: stats.num_preemptions,
            finished,
        }
    }
}

/// The last [`STEP_RING`] steps.
#[derive(Debug, Default)]
pub struct StepRing(VecDeque<StepSummary>);

impl StepRing {
    /// Keeps `summary`, forgetting the oldest past the ring's size.
    pub fn push(&mut self, summary: StepSummary) {
        if self.0.len() == STEP_RING {
            self.0.pop_front();
        }
        self.0.push_back(summary);
    }

    /// The last `n` steps, oldest first.
    pub fn last(&self, n: usize) -> Vec<StepSummary> {
        let skip = self.0.len().saturating_sub(n);
        self.0.iter().skip(skip).copied().collect()
    }
}

/// The scheduler's configuration, as the debug API shows it.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct SchedulerView {
    /// `--max-num-seqs`.
    pub max_num_seqs: usize,
    /// `--max-num-batched-tokens`.
    pub max_num_batched_tokens: usize,
    /// Chunked prefill on.
    pub chunked_prefill: bool,
    /// `fcfs` or `priority`.
    pub policy: String,
    /// Tokens per KV block.
    pub block_size: usize,
    /// Blocks in the pool.
    pub num_blocks: usize,
    /// Prefix caching on.
    pub prefix_caching: bool,
    /// The longest sequence served.
    pub max_model_len: usize,
}

impl SchedulerView {
    /// The view of `config`.
    pub fn of(config: &SchedulerConfig) -> Self {
        Self {
            max_num_seqs: config.max_num_seqs,
            max_num_batched_tokens: config.max_num_batched_tokens,
            chunked_prefill: config.enable_chunked_prefill,
            policy: format!("{:?}", config.policy).to_lowercase(),
            block_size: config.block_size,
            num_blocks: config.num_blocks,
            prefix_caching: config.enable_prefix_caching,
            max_model_len: config.max_model_len,
        }
    }
}

/// The engine now.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct EngineView {
    /// How it schedules.
    pub scheduler: SchedulerView,
    /// Requests waiting and running.
    pub waiting: usize,
    /// See `waiting`.
    pub running: usize,
    /// KV-cache usage (0..1).
    pub kv_usage: f32,
    /// Blocks free (cached ones included).
    pub free_blocks: usize,
    /// Prefix-cache lookups since start, in tokens, and hits.
    pub prefix_cache_queries: u64,
    /// See `prefix_cache_queries`.
    pub prefix_cache_hits: u64,
    /// `hits / queries` (0 before any).
    pub prefix_cache_hit_rate: f64,
    /// Steps run, and preemptions, since start.
    pub steps: u64,
    /// See `steps`.
    pub preemptions: u64,
    /// The process's monotonic clock now, to place `recent_steps` and journeys in time.
    pub now: f64,
    /// The last steps, oldest first.
    pub recent_steps: Vec<StepSummary>,
    /// The requests it holds, oldest first: all of them, or the running ones and the
    /// first waiting ones up to [`MAX_VIEWED_REQUESTS`].
    pub requests: Vec<RequestView>,
    /// How many it holds (more than `requests` lists when the view is cut).
    pub num_held: usize,
}
