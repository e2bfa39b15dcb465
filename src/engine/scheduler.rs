//! The scheduler: which requests compute how many tokens in each forward pass.
//!
//! The engine loop drives it (vLLM v1's shape):
//!
//! 1. [`Scheduler::schedule`] picks this step's batch within the token budget
//!    (`max_num_batched_tokens`) and the sequence limit (`max_num_seqs`): first the running
//!    requests, in order, each asking for all its uncomputed tokens (one, when decoding)
//!    up to what budget is left; then waiting requests from the head of the queue, each
//!    taking what the prefix cache holds of it and then a chunk of the rest. When a running
//!    request needs a block and the pool has none, the running request that
//!    [`SchedulingPolicy::preemption_key`] ranks last is preempted and the allocation
//!    retried.
//! 2. The model runs [`SchedulerOutput::batch`] and samples one token per sequence.
//! 3. [`Scheduler::update_from_output`] advances each request's computed tokens, caches the
//!    blocks they filled, and appends the sampled token where a sequence's tokens are all
//!    computed (not mid-prompt). It judges nothing.
//! 4. The engine's output processors decide which of those requests end;
//!    [`Scheduler::finish_running`] ends them and frees their blocks.
//!
//! Preemption is by recomputation: the request's blocks are freed and it goes back to the
//! front of the waiting queue with its outputs; when admitted again it computes prompt and
//! outputs anew (from whatever the prefix cache still holds of them) and carries on where it
//! stopped. So a preempted request produces the same tokens it would have without the
//! preemption, as long as sampling depends only on the tokens.
//!
//! What ends a request is decided outside: every stop rule (length included) by the
//! request's `OutputProcessor` (`engine/output_processor.rs`), then
//! [`Scheduler::finish_running`]; aborts and failures through [`Scheduler::abort_request`]
//! and [`Scheduler::finish_request`]. The scheduler only refuses, at
//! [`Scheduler::add_request`], a prompt longer than [`Scheduler::max_sequence_len`].

use std::collections::HashSet;

use super::kv_cache::{ComputedBlocks, KvCacheConfigError, KvCacheManager, PrefixCacheStats};
use super::output::{
    NewRequestData, RunningRequestData, SchedulerOutput, SequenceLocation, StepStats,
};
use super::queue::{RequestQueue, SchedulingPolicy};
use super::request::{Request, RequestStatus};
use super::types::{max_sequence_len, FinishReason};

// The scheduler's tests live beside this file in `tests.rs`, pulled in from here (with an
// explicit path) so that `engine/mod.rs` need not know of them.
#[cfg(test)]
#[path = "tests.rs"]
mod tests;

/// A waiting request with this prompt makes `schedule()` panic, in test builds only (the
/// engine-panic drill; a prompt, so that a test can send it over HTTP too).
#[cfg(test)]
pub(crate) const PANIC_IN_SCHEDULE: &[u32] = &[1, 3, 3, 7, 1, 3, 3, 7];

/// How the scheduler batches and what the KV cache holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SchedulerConfig {
    /// Most tokens computed in one step, over all sequences. By default, 2048.
    pub max_num_batched_tokens: usize,
    /// Most requests running at once (holding blocks, in the batch). By default, 64.
    pub max_num_seqs: usize,
    /// Split prompts longer than the step's remaining budget over several steps. Without
    /// it, a prompt waits until its whole remainder fits in one step. By default, on.
    pub enable_chunked_prefill: bool,
    /// Admission and preemption order. By default, first come, first served.
    pub policy: SchedulingPolicy,
    /// Token slots per KV-cache block. By default, 16.
    pub block_size: usize,
    /// Blocks in the KV pool.
    pub num_blocks: usize,
    /// Keep computed full blocks for requests that share a prefix. By default, on.
    pub enable_prefix_caching: bool,
    /// Longest sequence (prompt plus output) the model supports.
    pub max_model_len: usize,
}

impl SchedulerConfig {
    /// The defaults, for a pool of `num_blocks` blocks and a model of `max_model_len`
    /// tokens.
    pub fn new(num_blocks: usize, max_model_len: usize) -> Self {
        Self {
            max_num_batched_tokens: 2048,
            max_num_seqs: 64,
            enable_chunked_prefill: true,
            policy: SchedulingPolicy::Fcfs,
            block_size: 16,
            num_blocks,
            enable_prefix_caching: true,
            max_model_len,
        }
    }
}

impl SchedulerConfig {
    /// Longest sequence (prompt plus output): see [`max_sequence_len`].
    pub fn max_sequence_len(&self) -> usize {
        max_sequence_len(
            self.max_model_len,
            self.num_blocks.saturating_mul(self.block_size),
        )
    }

    /// Checks the fields together. The one place these rules are written: `waypoint serve`
    /// calls it on its flags before the model loads, and [`Scheduler::new`] on what it gets.
    pub fn validate(&self) -> Result<(), SchedulerConfigError> {
        KvCacheManager::check_config(self.num_blocks, self.block_size)?;
        if self.max_num_batched_tokens == 0 {
            return Err(SchedulerConfigError::ZeroTokenBudget);
        }
        if self.max_num_seqs == 0 {
            return Err(SchedulerConfigError::ZeroMaxNumSeqs);
        }
        if self.max_model_len == 0 {
            return Err(SchedulerConfigError::ZeroMaxModelLen);
        }
        let max_len = self.max_sequence_len();
        if !self.enable_chunked_prefill && self.max_num_batched_tokens < max_len {
            return Err(SchedulerConfigError::BudgetBelowMaxLen {
                budget: self.max_num_batched_tokens,
                max_len,
            });
        }
        Ok(())
    }
}

/// Why a scheduler cannot be built from a configuration.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SchedulerConfigError {
    /// The KV-cache shape is unusable.
    #[error(transparent)]
    KvCache(#[from] KvCacheConfigError),
    /// Nothing could ever be scheduled.
    #[error("max_num_batched_tokens must be at least 1")]
    ZeroTokenBudget,
    /// Nothing could ever run.
    #[error("max_num_seqs must be at least 1")]
    ZeroMaxNumSeqs,
    /// No sequence fits.
    #[error("max_model_len must be at least 1")]
    ZeroMaxModelLen,
    /// Without chunked prefill a prompt is computed in one step, so the longest must fit.
    #[error(
        "without chunked prefill, max_num_batched_tokens ({budget}) must be at least the \
         longest sequence ({max_len})"
    )]
    BudgetBelowMaxLen {
        /// `max_num_batched_tokens`.
        budget: usize,
        /// The longest sequence.
        max_len: usize,
    },
}

/// Why [`Scheduler::add_request`] refused a request (it is dropped).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AddRequestError {
    /// Another tracked request has this id.
    #[error("a request with id {0:?} is already scheduled")]
    DuplicateId(String),
    /// There is nothing to compute.
    #[error("the prompt is empty")]
    EmptyPrompt,
    /// Finished, or otherwise not fresh.
    #[error("the request is {0:?}, not waiting")]
    NotWaiting(RequestStatus),
    /// Longer than the model's context or than the whole KV cache: it could never run.
    #[error("the request has {num_tokens} tokens, more than the {max_len} a sequence may have")]
    TooLong {
        /// Prompt (and output) tokens.
        num_tokens: usize,
        /// [`Scheduler::max_sequence_len`].
        max_len: usize,
    },
}

/// Why [`Scheduler::update_from_output`] refused a model output (nothing changed).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UpdateError {
    /// The output is not from the latest `schedule()`, or was already applied.
    #[error("output of step {got} does not match the pending step {pending:?}")]
    StaleOutput {
        /// The output's step.
        got: u64,
        /// The step awaiting its update, if any.
        pending: Option<u64>,
    },
    /// One sampled token per scheduled sequence is needed.
    #[error("{got} sampled tokens for a batch of {expected} sequences")]
    SampledCountMismatch {
        /// Sequences in the batch.
        expected: usize,
        /// Tokens given.
        got: usize,
    },
}

/// What a model step changed.
#[derive(Debug, Default)]
pub struct StepUpdate {
    /// The requests that got a token this step (their tokens were all computed), as indices
    /// for [`Scheduler::running_request`], in batch order. Valid until the next change to
    /// the running list ([`Scheduler::finish_running`], `schedule()`, an abort).
    pub new_tokens: Vec<usize>,
}

/// This step's share of one running request.
#[derive(Debug, Default)]
struct Plan {
    num_tokens: usize,
    admitted: bool,
}

/// Decides each step's batch and keeps every request's token and block state.
#[derive(Debug)]
pub struct Scheduler {
    config: SchedulerConfig,
    max_len: usize,
    kv: KvCacheManager,
    waiting: Box<dyn RequestQueue>,
    /// In admission order, which is the order they are scheduled in.
    running: Vec<Request>,
    /// Ids of waiting and running requests, to refuse duplicates without a search.
    tracked: HashSet<String>,
    last_arrival_seq: u64,
    step: u64,
    /// The step whose output `update_from_output` expects.
    pending_step: Option<u64>,
    total_preemptions: u64,
}

impl Scheduler {
    /// An idle scheduler with an empty KV cache.
    pub fn new(config: SchedulerConfig) -> Result<Self, SchedulerConfigError> {
        config.validate()?;
        let kv = KvCacheManager::new(
            config.num_blocks,
            config.block_size,
            config.enable_prefix_caching,
        )?;
        let max_len = config.max_sequence_len();
        Ok(Self {
            waiting: config.policy.new_queue(),
            config,
            max_len,
            kv,
            running: Vec::new(),
            tracked: HashSet::new(),
            last_arrival_seq: 0,
            step: 0,
            pending_step: None,
            total_preemptions: 0,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }

    /// Longest sequence (prompt plus output): `max_model_len`, or less if the whole KV
    /// cache holds fewer tokens. A request reaching it must be finished (its output
    /// processor says `Length`).
    pub fn max_sequence_len(&self) -> usize {
        self.max_len
    }

    /// The KV cache, read-only (block tables, prefix-cache counters).
    pub fn kv_cache(&self) -> &KvCacheManager {
        &self.kv
    }

    /// Queues `request` (its arrival order is assigned here).
    pub fn add_request(&mut self, mut request: Request) -> Result<(), AddRequestError> {
        if self.tracked.contains(request.request_id()) {
            return Err(AddRequestError::DuplicateId(
                request.request_id().to_owned(),
            ));
        }
        if request.num_prompt_tokens() == 0 {
            return Err(AddRequestError::EmptyPrompt);
        }
        if request.status() != RequestStatus::Waiting || request.num_computed_tokens() != 0 {
            return Err(AddRequestError::NotWaiting(request.status()));
        }
        if request.num_tokens() > self.max_len {
            return Err(AddRequestError::TooLong {
                num_tokens: request.num_tokens(),
                max_len: self.max_len,
            });
        }
        self.last_arrival_seq += 1;
        request.set_arrival_seq(self.last_arrival_seq);
        self.tracked.insert(request.request_id().to_owned());
        self.waiting.push_back(request);
        Ok(())
    }

    /// Ends `request_id` (waiting or running) with `reason`, freeing its blocks: for stops
    /// the caller notices outside [`Scheduler::update_from_output`], and for failures.
    /// Returns the finished request, or `None` if no such request is tracked.
    pub fn finish_request(&mut self, request_id: &str, reason: FinishReason) -> Option<Request> {
        let mut request = match self
            .running
            .iter()
            .position(|r| r.request_id() == request_id)
        {
            Some(index) => self.running.remove(index),
            None => self.waiting.remove(request_id)?,
        };
        self.kv.free(request_id);
        request.finish(reason);
        self.untrack(request_id);
        Some(request)
    }

    /// Aborts `request_id` (the client went away): [`Scheduler::finish_request`] with
    /// `Abort`.
    pub fn abort_request(&mut self, request_id: &str) -> Option<Request> {
        self.finish_request(request_id, FinishReason::Abort)
    }

    /// Aborts every request (shutdown), running ones first.
    pub fn abort_all(&mut self) -> Vec<Request> {
        let mut ids: Vec<String> = self
            .running
            .iter()
            .map(|r| r.request_id().to_owned())
            .collect();
        ids.extend(self.waiting.iter().map(|r| r.request_id().to_owned()));
        ids.iter().filter_map(|id| self.abort_request(id)).collect()
    }

    /// The running request at `index` (a [`SequenceLocation::running_index`] of the pending
    /// step, or an index from [`StepUpdate::new_tokens`]).
    pub fn running_request(&self, index: usize) -> Option<&Request> {
        self.running.get(index)
    }

    /// Ends the running requests at these indices (from [`StepUpdate::new_tokens`], before
    /// any other change to the running list) with their reasons, freeing their blocks after
    /// their computed full blocks went into the prefix cache. Returns them in running order;
    /// an index out of range is ignored.
    pub fn finish_running(&mut self, finished: &[(usize, FinishReason)]) -> Vec<Request> {
        if finished.is_empty() {
            return Vec::new();
        }
        for &(index, reason) in finished {
            if let Some(request) = self.running.get_mut(index) {
                request.finish(reason);
            }
        }
        let (finished, running) = std::mem::take(&mut self.running)
            .into_iter()
            .partition::<Vec<_>, _>(Request::is_finished);
        self.running = running;
        for request in &finished {
            self.kv.free(request.request_id());
            self.tracked.remove(request.request_id());
        }
        finished
    }

    /// The tracked (waiting or running) request with this id, found by a search: for
    /// tests and rare events, not for every sequence of a step.
    pub fn request(&self, request_id: &str) -> Option<&Request> {
        self.running
            .iter()
            .find(|r| r.request_id() == request_id)
            .or_else(|| self.waiting.iter().find(|r| r.request_id() == request_id))
    }

    /// The running requests, in the order they are scheduled.
    pub fn running_requests(&self) -> impl Iterator<Item = &Request> + '_ {
        self.running.iter()
    }

    /// The waiting requests, in the order they would be admitted.
    pub fn waiting_requests(&self) -> impl Iterator<Item = &Request> + '_ {
        self.waiting.iter()
    }

    /// Requests waiting to be admitted (new or preempted).
    pub fn num_waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Requests running (holding blocks).
    pub fn num_running(&self) -> usize {
        self.running.len()
    }

    /// Fraction of KV-cache blocks in use.
    pub fn kv_usage(&self) -> f32 {
        self.kv.usage()
    }

    /// Preemptions since the start.
    pub fn total_preemptions(&self) -> u64 {
        self.total_preemptions
    }

    /// Whether any request is waiting or running.
    pub fn has_unfinished_requests(&self) -> bool {
        !self.running.is_empty() || !self.waiting.is_empty()
    }

    /// Whether no request is tracked and every block is free: nothing leaked.
    pub fn is_empty(&self) -> bool {
        !self.has_unfinished_requests()
            && self.tracked.is_empty()
            && self.kv.num_requests() == 0
            && self.kv.num_free_blocks() == self.kv.num_total_blocks()
    }

    /// Empties the prefix cache if no request holds blocks; returns whether it did.
    pub fn reset_prefix_cache(&mut self) -> bool {
        self.kv.reset_prefix_cache()
    }

    /// Decides the next step's batch. See the module docs for the order of things.
    ///
    /// Calling it again without [`Scheduler::update_from_output`] (the step failed) is
    /// allowed: nothing advanced, so the same tokens are scheduled again.
    pub fn schedule(&mut self) -> SchedulerOutput {
        // The engine-panic drill: a panic from inside the scheduler, as a bug would raise.
        #[cfg(test)]
        if self
            .waiting
            .iter()
            .any(|r| r.prompt_ids() == PANIC_IN_SCHEDULE)
        {
            panic!("injected scheduler panic");
        }
        self.step += 1;
        self.pending_step = Some(self.step);
        let prefix_stats_before = self.kv.prefix_cache_stats();
        let mut budget = self.config.max_num_batched_tokens;
        let mut running = std::mem::take(&mut self.running);
        // Parallel to `running`: removed from in step with it.
        let mut plans: Vec<Plan> = running.iter().map(|_| Plan::default()).collect();
        let mut preempted = Vec::new();

        // Running requests first, in order: decodes and unfinished prompts keep going.
        let mut index = 0;
        while index < running.len() && budget > 0 {
            let request = &running[index];
            let num_new = request
                .num_tokens()
                .saturating_sub(request.num_computed_tokens())
                .min(budget);
            if num_new == 0 {
                // Not expected: an update appends a token whenever all are computed.
                index += 1;
                continue;
            }
            loop {
                let none = ComputedBlocks::default();
                if let Some(new_blocks) = self.kv.allocate_slots(&running[index], num_new, &none) {
                    running[index].record_allocated_blocks(new_blocks.len());
                    plans[index] = Plan {
                        num_tokens: num_new,
                        admitted: false,
                    };
                    budget -= num_new;
                    index += 1;
                    break;
                }
                // No block: preempt the request ranked last and retry. `running` is not
                // empty (it holds the current request), so there is always a victim.
                let policy = self.config.policy;
                let Some(victim) =
                    (0..running.len()).max_by_key(|&i| policy.preemption_key(&running[i]))
                else {
                    break;
                };
                let victim_request = running.remove(victim);
                // A victim scheduled earlier in this step gives its tokens back.
                budget += plans.remove(victim).num_tokens;
                preempted.push(victim_request.request_id().to_owned());
                self.preempt(victim_request);
                match victim.cmp(&index) {
                    // The request itself: nothing left to do for it this step.
                    std::cmp::Ordering::Equal => break,
                    std::cmp::Ordering::Less => index -= 1,
                    std::cmp::Ordering::Greater => {}
                }
            }
        }

        // Then waiting requests, unless this step preempted: admitting now would only
        // take the blocks back from the requests just preempted (vLLM does the same).
        if preempted.is_empty() {
            while budget > 0 && running.len() < self.config.max_num_seqs {
                let Some(request) = self.waiting.peek() else {
                    break;
                };
                let hit = self.kv.get_computed_blocks(request);
                // At least one token: the lookup never covers the whole sequence.
                let remaining = request.num_tokens().saturating_sub(hit.num_tokens());
                if !self.config.enable_chunked_prefill && remaining > budget {
                    break;
                }
                let num_new = remaining.min(budget);
                let Some(new_blocks) = self.kv.allocate_slots(request, num_new, &hit) else {
                    // The head waits for blocks; later requests wait behind it, in order.
                    break;
                };
                let Some(mut request) = self.waiting.pop() else {
                    break;
                };
                request.admit(hit.num_tokens(), hit.blocks().len());
                request
                    .record_allocated_blocks(new_blocks.len().saturating_sub(hit.blocks().len()));
                tracing::trace!(
                    request_id = request.request_id(),
                    num_cached_tokens = hit.num_tokens(),
                    num_new_tokens = num_new,
                    "admitted"
                );
                running.push(request);
                plans.push(Plan {
                    num_tokens: num_new,
                    admitted: true,
                });
                budget -= num_new;
            }
        }

        let output = self.build_output(&running, plans, preempted, prefix_stats_before);
        self.running = running;

        debug_assert!(output.total_num_scheduled_tokens <= self.config.max_num_batched_tokens);
        debug_assert_eq!(
            output.total_num_scheduled_tokens,
            self.config.max_num_batched_tokens - budget
        );
        debug_assert_eq!(
            output.total_num_scheduled_tokens,
            output
                .num_scheduled_tokens
                .iter()
                .map(|(_, n)| n)
                .sum::<usize>()
        );
        debug_assert!(self.running.len() <= self.config.max_num_seqs);
        debug_assert!(output.num_sequences() <= self.running.len());
        debug_assert!(output.batch().all(|s| !s.token_ids.is_empty()
            && (s.num_computed_tokens + s.token_ids.len()).div_ceil(self.kv.block_size())
                <= s.block_table.len()));
        tracing::trace!(stats = ?output.stats, "scheduled");
        output
    }

    /// Applies a model step: `sampled` holds one token per sequence of `output.batch()`,
    /// in that order (any value where the sequence's `samples` is false: mid-prompt).
    ///
    /// Each scheduled request advances its computed tokens and caches the full blocks they
    /// filled; where its tokens are now all computed, the sampled token is appended and the
    /// request is listed in [`StepUpdate::new_tokens`]. Whether it ends is for the caller to
    /// decide ([`Scheduler::finish_running`]). A sequence whose request was aborted since
    /// `schedule()` is skipped.
    pub fn update_from_output(
        &mut self,
        output: &SchedulerOutput,
        sampled: &[u32],
    ) -> Result<StepUpdate, UpdateError> {
        if self.pending_step != Some(output.step) {
            return Err(UpdateError::StaleOutput {
                got: output.step,
                pending: self.pending_step,
            });
        }
        if sampled.len() != output.num_sequences() {
            return Err(UpdateError::SampledCountMismatch {
                expected: output.num_sequences(),
                got: sampled.len(),
            });
        }
        self.pending_step = None;
        let block_size = self.kv.block_size();
        let mut update = StepUpdate::default();
        for (seq, &token) in output.batch().zip(sampled) {
            let Some(index) = self.running_index(seq.location.running_index, seq.request_id) else {
                continue;
            };
            let request = &mut self.running[index];
            // Holds for every output of the pending step; a hand-made one is not trusted
            // to move a request beyond its tokens or its blocks.
            let computed = seq.num_computed_tokens + seq.token_ids.len();
            let covered = self.kv.block_table(request.request_id()).len() * block_size;
            if request.num_computed_tokens() != seq.num_computed_tokens
                || computed > request.num_tokens()
                || computed > covered
            {
                continue;
            }
            request.advance_computed(seq.token_ids.len());
            self.kv.cache_full_blocks(request);
            if request.num_computed_tokens() < request.num_tokens() {
                // Mid-prompt: the sample at a chunk's end means nothing.
                continue;
            }
            request.append_output_token(token);
            update.new_tokens.push(index);
        }
        Ok(update)
    }

    /// Where the request `request_id`, scheduled at `hint`, is in the running list now: at
    /// `hint` unless the list changed since `schedule()` (an abort), then found by a search;
    /// `None` if it is no longer running.
    fn running_index(&self, hint: usize, request_id: &str) -> Option<usize> {
        if self
            .running
            .get(hint)
            .is_some_and(|r| r.request_id() == request_id)
        {
            return Some(hint);
        }
        self.running
            .iter()
            .position(|r| r.request_id() == request_id)
    }

    fn preempt(&mut self, mut request: Request) {
        self.kv.free(request.request_id());
        request.preempt();
        self.total_preemptions += 1;
        tracing::debug!(
            request_id = request.request_id(),
            num_preemptions = request.num_preemptions(),
            "preempted: KV-cache blocks exhausted"
        );
        self.waiting.push_front(request);
    }

    fn untrack(&mut self, request_id: &str) {
        self.tracked.remove(request_id);
    }

    fn build_output(
        &mut self,
        running: &[Request],
        plans: Vec<Plan>,
        preempted: Vec<String>,
        prefix_stats_before: PrefixCacheStats,
    ) -> SchedulerOutput {
        let prefix = self.kv.prefix_cache_stats().since(&prefix_stats_before);
        let mut output = SchedulerOutput {
            step: self.step,
            stats: StepStats {
                step: self.step,
                num_waiting: self.waiting.len(),
                num_running: running.len(),
                kv_usage: self.kv.usage(),
                num_free_blocks: self.kv.num_free_blocks(),
                num_total_blocks: self.kv.num_total_blocks(),
                num_preemptions: preempted.len(),
                prefix_cache_queries: prefix.queries,
                prefix_cache_hits: prefix.hits,
                ..StepStats::default()
            },
            preempted,
            ..SchedulerOutput::default()
        };
        // Running requests come before admitted ones in `running`, so this is batch order.
        for (running_index, (request, plan)) in running.iter().zip(plans).enumerate() {
            if plan.num_tokens == 0 {
                continue;
            }
            let start = request.num_computed_tokens();
            let token_ids = request
                .all_token_ids()
                .get(start..start + plan.num_tokens)
                .unwrap_or_default()
                .to_vec();
            let block_table = self.kv.block_table(request.request_id()).to_vec();
            let stats = &mut output.stats;
            let is_decode = plan.num_tokens == 1
                && start + 1 == request.num_tokens()
                && start >= request.num_prompt_tokens();
            if is_decode {
                stats.num_decode_tokens += 1;
                stats.num_decode_seqs += 1;
            } else {
                stats.num_prefill_tokens += plan.num_tokens;
                stats.num_prefill_seqs += 1;
            }
            let samples = start + plan.num_tokens == request.num_tokens();
            let request_id = request.request_id().to_owned();
            let location = SequenceLocation {
                running_index,
                output_slot: request.output_slot(),
            };
            output
                .num_scheduled_tokens
                .push((request_id.clone(), plan.num_tokens));
            output.total_num_scheduled_tokens += plan.num_tokens;
            if plan.admitted {
                output.scheduled_new.push(NewRequestData {
                    request_id,
                    location,
                    token_ids,
                    num_computed_tokens: start,
                    block_table,
                    samples,
                });
            } else {
                output.scheduled_running.push(RunningRequestData {
                    request_id,
                    location,
                    token_ids,
                    num_computed_tokens: start,
                    block_table,
                    samples,
                });
            }
        }
        output
    }
}
