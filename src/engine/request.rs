//! One request's token state as the scheduler sees it.
//!
//! A request is a list of tokens (prompt, then output) of which the first
//! `num_computed_tokens` have their keys and values in the KV cache. There are no prefill or
//! decode phases: each step the scheduler lets the computed tokens catch up with the tokens,
//! within the step's budget. A prompt is computed in one or more chunks; a decode step
//! computes the one token sampled last; after a preemption the computed count drops back to
//! zero and the whole sequence, outputs included, is computed again.
//!
//! ```text
//!  all_token_ids: | prompt ............ | output ...... |
//!                 |<- num_computed_tokens ->|            |
//!                                           |<- to compute: scheduled in later steps
//! ```

use std::fmt;
use std::time::Instant;

use super::types::FinishReason;

/// Where a request is in its life.
///
/// A preempted request is `Waiting` again (with its outputs kept and
/// [`Request::num_preemptions`] raised), so the scheduler has one path for first admission
/// and resumption.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RequestStatus {
    /// In the waiting queue: new, or preempted and waiting to be computed again.
    Waiting,
    /// Holds KV-cache blocks and is scheduled each step while the budget allows.
    Running,
    /// Ended on an end-of-sequence token, a stop token or a stop string.
    FinishedStopped,
    /// Ended at `max_tokens` or at the longest sequence the model (or cache) can hold.
    FinishedLength,
    /// Cancelled: the client went away, or the server is shutting down.
    FinishedAborted,
    /// The engine failed while running it.
    FinishedError,
}

impl RequestStatus {
    /// The finished status for `reason`.
    pub fn finished(reason: FinishReason) -> Self {
        match reason {
            FinishReason::Stop => RequestStatus::FinishedStopped,
            FinishReason::Length => RequestStatus::FinishedLength,
            FinishReason::Abort => RequestStatus::FinishedAborted,
            FinishReason::Error => RequestStatus::FinishedError,
        }
    }

    /// Whether the request has ended (it then holds no blocks and is tracked no more).
    pub fn is_finished(self) -> bool {
        self.finish_reason().is_some()
    }

    /// Why the request ended, or `None` while it is waiting or running.
    pub fn finish_reason(self) -> Option<FinishReason> {
        match self {
            RequestStatus::Waiting | RequestStatus::Running => None,
            RequestStatus::FinishedStopped => Some(FinishReason::Stop),
            RequestStatus::FinishedLength => Some(FinishReason::Length),
            RequestStatus::FinishedAborted => Some(FinishReason::Abort),
            RequestStatus::FinishedError => Some(FinishReason::Error),
        }
    }
}

/// A request's tokens, progress and bookkeeping.
///
/// Fields are private so that only the scheduler moves the token state, keeping
/// `num_computed_tokens <= num_tokens()` and the output append-only. Its `Debug` prints
/// counts, never token ids: prompts must not reach the logs.
#[derive(Clone)]
pub struct Request {
    request_id: String,
    /// Prompt then output, in one vector so that block hashing and recomputation slice it
    /// without copying.
    all_token_ids: Vec<u32>,
    num_prompt_tokens: usize,
    num_computed_tokens: usize,
    status: RequestStatus,
    priority: i64,
    arrival: Instant,
    arrival_seq: u64,
    /// The engine's index of the request's output processor; the scheduler only carries it
    /// into each step's batch, so the engine finds the processor without a search.
    output_slot: usize,
    num_preemptions: u32,
    num_blocks_allocated: usize,
    num_cached_blocks_hit: usize,
    num_computed_prompt_tokens: usize,
    num_cached_prompt_tokens: Option<usize>,
    /// Tokens it had computed when it was last preempted.
    tokens_lost_to_preemption: usize,
}

impl Request {
    /// A waiting request for `prompt_ids`. When it ends is not the scheduler's business: the
    /// engine's output processor decides, and the scheduler appends until told.
    ///
    /// By default its priority is 0, it arrived now and its output slot is 0; see
    /// [`Request::with_priority`], [`Request::with_arrival`] and [`Request::with_output_slot`].
    pub fn new(request_id: impl Into<String>, prompt_ids: Vec<u32>) -> Self {
        Self {
            request_id: request_id.into(),
            num_prompt_tokens: prompt_ids.len(),
            all_token_ids: prompt_ids,
            num_computed_tokens: 0,
            status: RequestStatus::Waiting,
            priority: 0,
            arrival: Instant::now(),
            arrival_seq: 0,
            output_slot: 0,
            num_preemptions: 0,
            num_blocks_allocated: 0,
            num_cached_blocks_hit: 0,
            num_computed_prompt_tokens: 0,
            num_cached_prompt_tokens: None,
            tokens_lost_to_preemption: 0,
        }
    }

    /// Sets the priority: lower runs first under the priority policy (vLLM's convention).
    /// By default, 0.
    pub fn with_priority(mut self, priority: i64) -> Self {
        self.priority = priority;
        self
    }

    /// Sets when the request arrived (for latency metrics). By default, when it was created.
    pub fn with_arrival(mut self, arrival: Instant) -> Self {
        self.arrival = arrival;
        self
    }

    /// Sets the index of the request's output processor in the engine. By default, 0.
    pub fn with_output_slot(mut self, output_slot: usize) -> Self {
        self.output_slot = output_slot;
        self
    }

    /// The index of the request's output processor in the engine.
    pub fn output_slot(&self) -> usize {
        self.output_slot
    }

    /// The request's unique id.
    pub fn request_id(&self) -> &str {
        &self.request_id
    }

    /// The prompt's token ids.
    pub fn prompt_ids(&self) -> &[u32] {
        &self.all_token_ids[..self.num_prompt_tokens]
    }

    /// The tokens generated so far (kept across preemptions).
    pub fn output_ids(&self) -> &[u32] {
        &self.all_token_ids[self.num_prompt_tokens..]
    }

    /// Prompt then output: what a preempted request computes again.
    pub fn all_token_ids(&self) -> &[u32] {
        &self.all_token_ids
    }

    /// Prompt plus output tokens.
    pub fn num_tokens(&self) -> usize {
        self.all_token_ids.len()
    }

    /// Tokens in the prompt.
    pub fn num_prompt_tokens(&self) -> usize {
        self.num_prompt_tokens
    }

    /// Tokens generated so far.
    pub fn num_output_tokens(&self) -> usize {
        self.all_token_ids.len() - self.num_prompt_tokens
    }

    /// The last token generated, if any.
    pub fn last_output_token(&self) -> Option<u32> {
        self.output_ids().last().copied()
    }

    /// Leading tokens whose keys and values are in the KV cache (computed, or served from the
    /// prefix cache).
    pub fn num_computed_tokens(&self) -> usize {
        self.num_computed_tokens
    }

    /// Where the request is in its life.
    pub fn status(&self) -> RequestStatus {
        self.status
    }

    /// Whether the request has ended.
    pub fn is_finished(&self) -> bool {
        self.status.is_finished()
    }

    /// Why the request ended, or `None` while it is waiting or running.
    pub fn finish_reason(&self) -> Option<FinishReason> {
        self.status.finish_reason()
    }

    /// Lower runs first under the priority policy.
    pub fn priority(&self) -> i64 {
        self.priority
    }

    /// When the request arrived.
    pub fn arrival(&self) -> Instant {
        self.arrival
    }

    /// Order of arrival at the scheduler, which assigns it (0 before then). Unique per
    /// scheduler, so it breaks every tie between requests.
    pub fn arrival_seq(&self) -> u64 {
        self.arrival_seq
    }

    /// Times the request was preempted (its blocks freed, to be computed again).
    pub fn num_preemptions(&self) -> u32 {
        self.num_preemptions
    }

    /// Blocks taken from the free pool for this request over its life (prefix-cache hits not
    /// included; blocks taken again after a preemption counted again).
    pub fn num_blocks_allocated(&self) -> usize {
        self.num_blocks_allocated
    }

    /// Blocks served from the prefix cache over the request's life (each admission counts,
    /// so a preempted request that finds its own blocks again counts them again).
    pub fn num_cached_blocks_hit(&self) -> usize {
        self.num_cached_blocks_hit
    }

    /// Prompt tokens the model computed (not served from the prefix cache); a prompt
    /// computed again after a preemption counts again.
    pub fn num_computed_prompt_tokens(&self) -> usize {
        self.num_computed_prompt_tokens
    }

    /// Tokens it had computed when it was last preempted (0 if it never was).
    pub fn tokens_lost_to_preemption(&self) -> usize {
        self.tokens_lost_to_preemption
    }

    /// Prompt tokens served from the prefix cache when the request was first admitted (what
    /// OpenAI's `usage.prompt_tokens_details.cached_tokens` reports); 0 before admission.
    pub fn num_cached_prompt_tokens(&self) -> usize {
        self.num_cached_prompt_tokens.unwrap_or(0)
    }

    pub(super) fn set_arrival_seq(&mut self, arrival_seq: u64) {
        self.arrival_seq = arrival_seq;
    }

    /// Moves a waiting request to running, with its first `num_cached_tokens` tokens served
    /// from `num_hit_blocks` prefix-cache blocks.
    pub(super) fn admit(&mut self, num_cached_tokens: usize, num_hit_blocks: usize) {
        debug_assert_eq!(self.status, RequestStatus::Waiting);
        debug_assert_eq!(self.num_computed_tokens, 0);
        self.status = RequestStatus::Running;
        self.num_computed_tokens = num_cached_tokens.min(self.num_tokens());
        self.num_cached_blocks_hit += num_hit_blocks;
        if self.num_cached_prompt_tokens.is_none() {
            self.num_cached_prompt_tokens =
                Some(self.num_computed_tokens.min(self.num_prompt_tokens));
        }
    }

    pub(super) fn record_allocated_blocks(&mut self, num_blocks: usize) {
        self.num_blocks_allocated += num_blocks;
    }

    /// Marks `num_tokens` more tokens as computed (never beyond the tokens there are).
    pub(super) fn advance_computed(&mut self, num_tokens: usize) {
        let before = self.num_computed_tokens;
        let after = before.saturating_add(num_tokens).min(self.num_tokens());
        debug_assert_eq!(
            after,
            before + num_tokens,
            "computed more tokens than exist"
        );
        self.num_computed_tokens = after;
        let prompt_end = self.num_prompt_tokens;
        self.num_computed_prompt_tokens += after.min(prompt_end).saturating_sub(before);
    }

    pub(super) fn append_output_token(&mut self, token_id: u32) {
        self.all_token_ids.push(token_id);
    }

    /// Drops the computed state (the blocks are freed by the caller) and sends the request
    /// back to waiting; its outputs stay, to be computed again with the prompt.
    pub(super) fn preempt(&mut self) {
        self.status = RequestStatus::Waiting;
        self.tokens_lost_to_preemption = self.num_computed_tokens;
        self.num_computed_tokens = 0;
        self.num_preemptions = self.num_preemptions.saturating_add(1);
    }

    pub(super) fn finish(&mut self, reason: FinishReason) {
        self.status = RequestStatus::finished(reason);
    }
}

impl fmt::Debug for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Counts only: token ids are the user's text.
        f.debug_struct("Request")
            .field("request_id", &self.request_id)
            .field("status", &self.status)
            .field("num_prompt_tokens", &self.num_prompt_tokens)
            .field("num_output_tokens", &self.num_output_tokens())
            .field("num_computed_tokens", &self.num_computed_tokens)
            .field("priority", &self.priority)
            .field("arrival_seq", &self.arrival_seq)
            .field("num_preemptions", &self.num_preemptions)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_maps_to_finish_reason_and_back() {
        for reason in [
            FinishReason::Stop,
            FinishReason::Length,
            FinishReason::Abort,
            FinishReason::Error,
        ] {
            let status = RequestStatus::finished(reason);
            assert!(status.is_finished());
            assert_eq!(status.finish_reason(), Some(reason));
        }
        assert!(!RequestStatus::Waiting.is_finished());
        assert!(!RequestStatus::Running.is_finished());
    }

    #[test]
    fn tokens_and_prompt_accounting() {
        let mut request = Request::new("r", vec![1, 2, 3]);
        request.admit(2, 1);
        assert_eq!(request.num_cached_prompt_tokens(), 2);
        request.advance_computed(1);
        assert_eq!(request.num_computed_prompt_tokens(), 1);
        request.append_output_token(9);
        assert_eq!(request.all_token_ids(), &[1, 2, 3, 9]);
        assert_eq!(request.output_ids(), &[9]);
        assert_eq!(request.last_output_token(), Some(9));
        request.preempt();
        assert_eq!(request.num_computed_tokens(), 0);
        assert_eq!(request.status(), RequestStatus::Waiting);
        request.admit(0, 0);
        request.advance_computed(4);
        // The whole prompt again (3), counted on top of the first admission's 1.
        assert_eq!(request.num_computed_prompt_tokens(), 4);
        // The first admission is what usage reports.
        assert_eq!(request.num_cached_prompt_tokens(), 2);
        assert_eq!(request.num_preemptions(), 1);
    }

    #[test]
    fn debug_prints_no_token_ids() {
        let request = Request::new("secret-test", vec![424242, 171717]);
        let printed = format!("{request:?}");
        assert!(printed.contains("secret-test"));
        assert!(!printed.contains("424242") && !printed.contains("171717"));
    }
}
