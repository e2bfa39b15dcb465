//! What one scheduling step decided: plain data for the model runner and for telemetry.
//!
//! The batch is the scheduled running requests, in running order, then the newly admitted
//! ones, in admission order. [`SchedulerOutput::batch`] walks it in that order with what a
//! forward pass needs per sequence; the sampled tokens go back to
//! [`Scheduler::update_from_output`](super::scheduler::Scheduler::update_from_output) in
//! the same order.
//!
//! No `Debug` here prints token ids: prompts never go into logs.

use std::fmt;

use super::kv_cache::BlockId;
use crate::model::{ForwardBatch, SequenceSlice};

/// A request admitted this step (new, or resumed after a preemption).
#[derive(Clone, PartialEq, Eq)]
pub struct NewRequestData {
    /// The request.
    pub request_id: String,
    /// Where the request is in the scheduler's running list, and its engine output slot:
    /// so the engine and the scheduler's update find it without a search.
    pub location: SequenceLocation,
    /// The tokens this step computes: positions `num_computed_tokens..` of the sequence
    /// (a prompt chunk, or all of a preempted request's tokens from the first not cached).
    pub token_ids: Vec<u32>,
    /// Leading tokens already in the cache: served from the prefix cache at admission.
    pub num_computed_tokens: usize,
    /// The request's whole block table.
    pub block_table: Vec<BlockId>,
    /// Whether this step reaches the end of the sequence, so that its sampled token is
    /// kept (false for a prompt chunk with more to come).
    pub samples: bool,
}

/// A request that was already running and is scheduled again (a prompt chunk or a decode).
#[derive(Clone, PartialEq, Eq)]
pub struct RunningRequestData {
    /// The request.
    pub request_id: String,
    /// See [`NewRequestData::location`].
    pub location: SequenceLocation,
    /// The tokens this step computes (one for a decode).
    pub token_ids: Vec<u32>,
    /// Leading tokens already in the cache.
    pub num_computed_tokens: usize,
    /// The request's whole block table (the model runner keeps no state between steps).
    pub block_table: Vec<BlockId>,
    /// Whether this step reaches the end of the sequence, so that its sampled token is
    /// kept (false for a prompt chunk with more to come).
    pub samples: bool,
}

/// Where a scheduled request lives, valid from `schedule()` until its update.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SequenceLocation {
    /// Its index in the scheduler's running list
    /// ([`Scheduler::running_request`](super::scheduler::Scheduler::running_request)).
    pub running_index: usize,
    /// [`Request::output_slot`](super::request::Request::output_slot).
    pub output_slot: usize,
}

/// One sequence of the batch, as the model runner needs it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ScheduledSequence<'a> {
    /// The request.
    pub request_id: &'a str,
    /// Where it lives in the scheduler and the engine.
    pub location: SequenceLocation,
    /// Tokens to compute this step, at positions `num_computed_tokens..`.
    pub token_ids: &'a [u32],
    /// Tokens already in the cache (the model's `num_cached_tokens`).
    pub num_computed_tokens: usize,
    /// The sequence's blocks; they cover `num_computed_tokens + token_ids.len()` tokens.
    pub block_table: &'a [BlockId],
    /// Whether the token sampled at the last position is kept. When false (a prompt chunk
    /// with more to come) the runner may skip sampling and pass any token.
    pub samples: bool,
}

/// Counts of one step, for metrics and traces.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StepStats {
    /// The step.
    pub step: u64,
    /// Tokens computed for prompts (including prompts and outputs computed again after a
    /// preemption).
    pub num_prefill_tokens: usize,
    /// Tokens decoded: one per decoding sequence.
    pub num_decode_tokens: usize,
    /// Sequences computing (part of) a prompt.
    pub num_prefill_seqs: usize,
    /// Sequences decoding one token.
    pub num_decode_seqs: usize,
    /// Requests waiting after this step's admissions.
    pub num_waiting: usize,
    /// Requests running after this step's admissions and preemptions.
    pub num_running: usize,
    /// Fraction of the KV-cache blocks in use, after allocation.
    pub kv_usage: f32,
    /// Free KV-cache blocks (including evictable cached ones), after allocation.
    pub num_free_blocks: usize,
    /// KV-cache blocks in all.
    pub num_total_blocks: usize,
    /// Requests preempted this step.
    pub num_preemptions: usize,
    /// Tokens looked up in the prefix cache by requests admitted this step.
    pub prefix_cache_queries: u64,
    /// Of those, tokens found.
    pub prefix_cache_hits: u64,
}

/// Everything one call to `schedule()` decided.
#[derive(Clone, Default, PartialEq)]
pub struct SchedulerOutput {
    /// The step, counting from 1.
    pub step: u64,
    /// Requests admitted this step, in admission order (after the running ones in the
    /// batch).
    pub scheduled_new: Vec<NewRequestData>,
    /// Running requests scheduled this step, in running order (first in the batch).
    pub scheduled_running: Vec<RunningRequestData>,
    /// Tokens per scheduled request, in batch order.
    pub num_scheduled_tokens: Vec<(String, usize)>,
    /// Their sum: at most the step's token budget.
    pub total_num_scheduled_tokens: usize,
    /// Requests preempted this step (their blocks are freed; they wait to be recomputed).
    pub preempted: Vec<String>,
    /// The step's counts.
    pub stats: StepStats,
}

impl SchedulerOutput {
    /// Whether nothing was scheduled (the model need not run).
    pub fn is_empty(&self) -> bool {
        self.num_scheduled_tokens.is_empty()
    }

    /// Sequences in the batch.
    pub fn num_sequences(&self) -> usize {
        self.scheduled_running.len() + self.scheduled_new.len()
    }

    /// The batch in order: running requests first, then new ones, each with the tokens to
    /// compute, the tokens already cached and the full block table.
    pub fn batch(&self) -> impl Iterator<Item = ScheduledSequence<'_>> + '_ {
        let running = self.scheduled_running.iter().map(|r| ScheduledSequence {
            request_id: &r.request_id,
            location: r.location,
            token_ids: &r.token_ids,
            num_computed_tokens: r.num_computed_tokens,
            block_table: &r.block_table,
            samples: r.samples,
        });
        let new = self.scheduled_new.iter().map(|r| ScheduledSequence {
            request_id: &r.request_id,
            location: r.location,
            token_ids: &r.token_ids,
            num_computed_tokens: r.num_computed_tokens,
            block_table: &r.block_table,
            samples: r.samples,
        });
        running.chain(new)
    }

    /// The model's input for this batch, in batch order. Each block table moves into it
    /// (the scheduler copied it from the KV cache once; it is not copied again), so
    /// afterwards [`SchedulerOutput::batch`] shows empty block tables: take it after
    /// anything that reads them (step snapshots).
    pub fn take_forward_batch(&mut self) -> ForwardBatch {
        let mut batch = ForwardBatch {
            token_ids: Vec::with_capacity(self.total_num_scheduled_tokens),
            sequences: Vec::with_capacity(self.num_sequences()),
            ..ForwardBatch::default()
        };
        let running = self
            .scheduled_running
            .iter_mut()
            .map(|r| (&r.token_ids, r.num_computed_tokens, &mut r.block_table));
        let new = self
            .scheduled_new
            .iter_mut()
            .map(|r| (&r.token_ids, r.num_computed_tokens, &mut r.block_table));
        for (token_ids, num_computed_tokens, block_table) in running.chain(new) {
            batch.token_ids.extend_from_slice(token_ids);
            batch.sequences.push(SequenceSlice {
                num_cached_tokens: num_computed_tokens,
                num_new_tokens: token_ids.len(),
                // `BlockId` is a `u32`: collecting in place reuses the allocation.
                block_table: std::mem::take(block_table)
                    .into_iter()
                    .map(|b| b.0)
                    .collect(),
            });
        }
        batch
    }
}

// The `Debug`s below print ids and counts; token ids are users' text.

impl fmt::Debug for NewRequestData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewRequestData")
            .field("request_id", &self.request_id)
            .field("num_new_tokens", &self.token_ids.len())
            .field("num_computed_tokens", &self.num_computed_tokens)
            .field("num_blocks", &self.block_table.len())
            .field("samples", &self.samples)
            .finish()
    }
}

impl fmt::Debug for RunningRequestData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RunningRequestData")
            .field("request_id", &self.request_id)
            .field("num_new_tokens", &self.token_ids.len())
            .field("num_computed_tokens", &self.num_computed_tokens)
            .field("num_blocks", &self.block_table.len())
            .field("samples", &self.samples)
            .finish()
    }
}

impl fmt::Debug for ScheduledSequence<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScheduledSequence")
            .field("request_id", &self.request_id)
            .field("num_new_tokens", &self.token_ids.len())
            .field("num_computed_tokens", &self.num_computed_tokens)
            .field("num_blocks", &self.block_table.len())
            .field("samples", &self.samples)
            .finish()
    }
}

impl fmt::Debug for SchedulerOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SchedulerOutput")
            .field("step", &self.step)
            .field("scheduled_new", &self.scheduled_new)
            .field("scheduled_running", &self.scheduled_running)
            .field(
                "total_num_scheduled_tokens",
                &self.total_num_scheduled_tokens,
            )
            .field("preempted", &self.preempted)
            .field("stats", &self.stats)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_is_running_then_new_and_debug_hides_tokens() {
        let output = SchedulerOutput {
            step: 3,
            scheduled_new: vec![NewRequestData {
                request_id: "new".into(),
                location: SequenceLocation {
                    running_index: 1,
                    output_slot: 7,
                },
                token_ids: vec![987_654, 123_321],
                num_computed_tokens: 16,
                block_table: vec![BlockId(4), BlockId(5)],
                samples: false,
            }],
            scheduled_running: vec![RunningRequestData {
                request_id: "old".into(),
                token_ids: vec![555_777],
                location: SequenceLocation::default(),
                num_computed_tokens: 7,
                block_table: vec![BlockId(1)],
                samples: true,
            }],
            num_scheduled_tokens: vec![("old".into(), 1), ("new".into(), 2)],
            total_num_scheduled_tokens: 3,
            ..SchedulerOutput::default()
        };
        let batch: Vec<_> = output.batch().collect();
        assert_eq!(batch.len(), output.num_sequences());
        assert_eq!(batch[0].request_id, "old");
        assert_eq!(batch[1].token_ids, &[987_654, 123_321]);
        assert_eq!(batch[1].num_computed_tokens, 16);
        assert!(batch[0].samples && !batch[1].samples);
        let ids: Vec<_> = batch.iter().map(|s| s.request_id).collect();
        let listed: Vec<_> = output
            .num_scheduled_tokens
            .iter()
            .map(|(id, _)| id)
            .collect();
        assert_eq!(ids, listed);

        let printed = format!("{output:?} {:?}", batch[1]);
        assert!(printed.contains("old") && printed.contains("new"));
        for token in ["987654", "123321", "555777"] {
            assert!(!printed.contains(token), "{printed}");
        }
    }
}
