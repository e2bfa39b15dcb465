//! One request's output side: the role vLLM v1's `OutputProcessor`, its detokenizer and
//! `check_stop` play.
//!
//! The scheduler owns a request's tokens and blocks; an [`OutputProcessor`] owns everything
//! else about it, each exactly once: the sampling parameters (inside the [`Sampler`]), the
//! incremental detokenizer, the stop-string matcher, the end-of-sequence ids, the timings,
//! the journey and where the output goes (an [`OutputSink`]). Its three calls follow a
//! request through a step:
//!
//! 1. [`OutputProcessor::sample`] picks the token from the request's row of logits;
//! 2. once the scheduler appended it, [`OutputProcessor::on_token`] turns it into text,
//!    sends it, and decides whether the request ends. Every stop rule is decided there and
//!    nowhere else: end-of-sequence and stop token ids (masked until `min_tokens`), stop
//!    strings, `max_tokens` and the longest sequence;
//! 3. [`OutputProcessor::finish`] releases the text held back and sends the request's last
//!    event, whatever ended it (a stop, an abort, a failure).
//!
//! `waypoint serve` (the engine loop) and `waypoint generate` drive the same processor, so
//! both stop for the same reasons on the same tokens.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc::UnboundedSender;

use super::handle::{EngineTimings, FinishedInfo, StreamEvent, TokenLogprob};
use super::inspect::RequestView;
use super::journey::{Journey, StepShare};
use super::request::{Request, RequestStatus};
use super::retention::Outcome;
use super::types::FinishReason;
use crate::metrics::{FinishedRequest, Metrics, TraceId};
use crate::sampling::{Sampler, SamplingParams, StopStringMatcher};
use crate::tokenizer::{IncrementalDetokenizer, Tokenizer};

/// Where a request's [`StreamEvent`]s go.
pub trait OutputSink {
    /// Delivers one event; a receiver that is gone is not an error (the engine notices it
    /// through [`OutputSink::is_closed`] and aborts the request).
    fn send(&mut self, event: StreamEvent);

    /// Whether nobody listens any more (the client went away).
    fn is_closed(&self) -> bool;
}

impl OutputSink for UnboundedSender<StreamEvent> {
    fn send(&mut self, event: StreamEvent) {
        let _ = UnboundedSender::send(self, event);
    }

    fn is_closed(&self) -> bool {
        UnboundedSender::is_closed(self)
    }
}

/// When a request reached each phase, for its timings and latency metrics.
#[derive(Clone, Copy, Debug)]
struct Timeline {
    arrival: Instant,
    /// When the engine took the request.
    received: Instant,
    first_scheduled: Option<Instant>,
    first_token: Option<Instant>,
    /// For the inter-token latency.
    last_token: Option<Instant>,
    /// The longest gap between two tokens so far, in seconds.
    itl_max: Option<f64>,
}

impl Timeline {
    /// Seconds in queue, prefill and decode, as far as the request got: the phase it is in
    /// counts until `now`.
    fn so_far(&self, now: Instant) -> PhasesSoFar {
        let seconds = |from: Instant, to: Instant| to.duration_since(from).as_secs_f64();
        PhasesSoFar {
            queue: seconds(self.arrival, self.first_scheduled.unwrap_or(now)),
            prefill: self
                .first_scheduled
                .map(|s| seconds(s, self.first_token.unwrap_or(now))),
            decode: self.first_token.map(|t| seconds(t, now)),
        }
    }

    /// Seconds in the phases the request completed, decode counted until `end`.
    fn timings(&self, end: Instant) -> EngineTimings {
        let phases = self.so_far(end);
        EngineTimings {
            received: Some(self.received.duration_since(self.arrival).as_secs_f64()),
            queue: self.first_scheduled.map(|_| phases.queue),
            prefill: self.first_token.and(phases.prefill),
            decode: phases.decode,
        }
    }
}

/// [`Timeline::so_far`].
struct PhasesSoFar {
    queue: f64,
    prefill: Option<f64>,
    decode: Option<f64>,
}

/// The metrics a served request feeds, and the trace its observations point at.
#[derive(Debug)]
struct MetricsTarget {
    metrics: Arc<Metrics>,
    /// Shown as the exemplar of this request's latency observations.
    trace_id: Option<TraceId>,
}

/// One request's output state; see the module docs.
pub struct OutputProcessor<S: OutputSink = UnboundedSender<StreamEvent>> {
    /// Owns the request's one copy of its [`SamplingParams`].
    sampler: Sampler,
    detokenizer: IncrementalDetokenizer,
    stops: StopStringMatcher,
    tokenizer: Arc<Tokenizer>,
    /// End-of-sequence ids that stop this request (empty with `ignore_eos`).
    eos_token_ids: Vec<u32>,
    /// [`super::types::max_sequence_len`] of the engine serving it.
    max_sequence_len: usize,
    num_prompt_tokens: usize,
    sink: S,
    /// The sampled token's logprobs, until `on_token` sends them with the token.
    pending_logprob: Option<TokenLogprob>,
    /// A stop string ended it: the held-back text is dropped, not flushed.
    stopped_by_string: bool,
    detokenize_error: Option<String>,
    timeline: Timeline,
    /// The caller's span: the request's finish is logged inside it.
    span: tracing::Span,
    /// Present when the request's journey is traced.
    journey: Option<Journey>,
    /// The trace of the request's journey, for the debug API.
    journey_trace_id: Option<String>,
    /// Absent for `waypoint generate`, which serves no metrics.
    metrics: Option<MetricsTarget>,
}

impl<S: OutputSink> std::fmt::Debug for OutputProcessor<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Counts and flags only: the text and tokens are the user's.
        f.debug_struct("OutputProcessor")
            .field("max_tokens", &self.params().max_tokens)
            .field("num_stop_strings", &self.params().stop.len())
            .field("stopped_by_string", &self.stopped_by_string)
            .field("traced", &self.journey.is_some())
            .finish_non_exhaustive()
    }
}

impl<S: OutputSink> OutputProcessor<S> {
    /// The output side of a request for `prompt_ids` that arrived at `arrival`, sending its
    /// events to `sink`. `max_sequence_len` is the serving engine's
    /// [`max_sequence_len`](super::types::max_sequence_len).
    pub fn new(
        params: &SamplingParams,
        prompt_ids: &[u32],
        tokenizer: Arc<Tokenizer>,
        max_sequence_len: usize,
        sink: S,
        arrival: Instant,
    ) -> Self {
        let eos_token_ids = if params.ignore_eos {
            Vec::new()
        } else {
            tokenizer.eos_token_ids().to_vec()
        };
        Self {
            sampler: Sampler::new(params),
            detokenizer: IncrementalDetokenizer::new(prompt_ids, true),
            stops: StopStringMatcher::new(&params.stop),
            tokenizer,
            eos_token_ids,
            max_sequence_len,
            num_prompt_tokens: prompt_ids.len(),
            sink,
            pending_logprob: None,
            stopped_by_string: false,
            detokenize_error: None,
            timeline: Timeline {
                arrival,
                received: Instant::now(),
                first_scheduled: None,
                first_token: None,
                last_token: None,
                itl_max: None,
            },
            span: tracing::Span::none(),
            journey: None,
            journey_trace_id: None,
            metrics: None,
        }
    }

    /// Logs the request's finish inside `span`, and reports its journey when it has one.
    pub fn with_trace(mut self, span: tracing::Span, journey: Option<Journey>) -> Self {
        self.span = span;
        self.journey = journey;
        self
    }

    /// Names the trace of the request's journey (`trace_id`, 32 hex digits) in the debug API.
    pub fn with_journey_trace_id(mut self, trace_id: Option<String>) -> Self {
        self.journey_trace_id = trace_id;
        self
    }

    /// Feeds `metrics` with the request's latencies, with `trace_id` as their exemplar.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>, trace_id: Option<TraceId>) -> Self {
        self.metrics = Some(MetricsTarget { metrics, trace_id });
        self
    }

    /// The request's sampling and stopping parameters.
    pub fn params(&self) -> &SamplingParams {
        self.sampler.params()
    }

    /// Whether nobody listens to the request's output any more.
    pub fn is_closed(&self) -> bool {
        self.sink.is_closed()
    }

    /// The request entered the waiting queue (journey only).
    pub fn on_queued(&mut self, request: &Request, step: u64) {
        if let Some(journey) = &mut self.journey {
            journey.queued(request, step);
        }
    }

    /// What the debug API shows of `request` (which holds `blocks` KV blocks) at `now`.
    pub fn view(&self, request: &Request, blocks: usize, now: Instant) -> RequestView {
        let phases = self.timeline.so_far(now);
        let state = match request.status() {
            RequestStatus::Waiting => "waiting",
            _ => "running",
        };
        RequestView {
            id: request.request_id().to_string(),
            state,
            phase: super::journey::phase(request),
            age_s: now.duration_since(self.timeline.arrival).as_secs_f64(),
            queue_s: phases.queue,
            prefill_s: phases.prefill,
            decode_s: phases.decode,
            prompt_tokens: request.num_prompt_tokens(),
            computed_tokens: request.num_computed_tokens(),
            output_tokens: request.num_output_tokens(),
            max_tokens: self.sampler.params().max_tokens,
            blocks,
            preemptions: request.num_preemptions(),
            priority: request.priority(),
            trace_id: self.journey_trace_id.clone(),
            journey: self
                .journey
                .as_ref()
                .and_then(Journey::recorded_events)
                .map(<[_]>::to_vec),
        }
    }

    /// Whether a journey follows the request, so that the engine tells it each step.
    pub fn has_journey(&self) -> bool {
        self.journey.is_some()
    }

    /// The request was scheduled in a step, with `share` (journey only).
    pub fn on_step(&mut self, share: StepShare) {
        if let Some(journey) = &mut self.journey {
            journey.scheduled_in(share);
        }
    }

    /// A step ran while the request waited, the KV cache `kv_usage` full (journey only).
    pub fn on_waited(&mut self, kv_usage: f64) {
        if let Some(journey) = &mut self.journey {
            journey.waited_in(kv_usage);
        }
    }

    /// The request was admitted to the batch (first time or after a preemption) at `now`.
    pub fn on_scheduled(&mut self, request: &Request, step: u64, now: Instant) {
        self.timeline.first_scheduled.get_or_insert(now);
        if let Some(journey) = &mut self.journey {
            journey.scheduled(request, step);
        }
    }

    /// The request lost its blocks and waits to be computed again (journey only).
    pub fn on_preempted(&mut self, request: &Request, step: u64) {
        if let Some(journey) = &mut self.journey {
            journey.preempted(request, step, request.tokens_lost_to_preemption());
        }
    }

    /// Picks the request's next token from its row of raw logits; the row is processed in
    /// place (it is sampled once, so no vocabulary-sized copy is needed).
    pub fn sample(&mut self, row: &mut [f32], request: &Request) -> u32 {
        let token = self.sampler.sample(
            row,
            request.prompt_ids(),
            request.output_ids(),
            &self.eos_token_ids,
        );
        if self.sampler.params().logprobs.is_some() {
            self.pending_logprob = Some(TokenLogprob {
                token_id: token.token_id,
                logprob: token.logprob,
                top: token.top_logprobs,
            });
        }
        token.token_id
    }

    /// The scheduler appended a token to `request` (in `step`): sends it with the text it
    /// completes, and says whether the request ends here. Every stop rule is decided here:
    ///
    /// - an end-of-sequence or stop token id, once `min_tokens` are out: `Stop` (the token's
    ///   text is not shown);
    /// - a stop string in the text: `Stop` (the text from the stop string on is dropped);
    /// - `max_tokens` outputs, or the longest sequence: `Length`;
    /// - a token that cannot be turned into text: `Error`.
    pub fn on_token(&mut self, request: &Request, step: u64) -> Option<FinishReason> {
        let token = request.last_output_token()?;
        self.record_token_time(request, step);
        let mut text = String::new();
        let reason = self.check_stop(request, token, &mut text);
        self.sink.send(StreamEvent::Delta {
            text,
            token_ids: vec![token],
            logprobs: self.pending_logprob.take().into_iter().collect(),
        });
        reason
    }

    /// The stop rules of [`Self::on_token`], in the order they win; `text` receives the
    /// text now safe to show.
    fn check_stop(
        &mut self,
        request: &Request,
        token: u32,
        text: &mut String,
    ) -> Option<FinishReason> {
        let params = self.sampler.params();
        let min_reached = request.num_output_tokens() >= params.min_tokens;
        if min_reached
            && (self.eos_token_ids.contains(&token) || params.stop_token_ids.contains(&token))
        {
            return Some(FinishReason::Stop);
        }
        let delta = match self.detokenizer.push(&self.tokenizer, token) {
            Ok(delta) => delta,
            Err(error) => {
                self.detokenize_error = Some(error.to_string());
                return Some(FinishReason::Error);
            }
        };
        let outcome = self.stops.push(&delta);
        *text = outcome.emit;
        if outcome.stopped.is_some() {
            self.stopped_by_string = true;
            return Some(FinishReason::Stop);
        }
        let at_limit = request.num_output_tokens() >= self.sampler.params().max_tokens
            || request.num_tokens() >= self.max_sequence_len;
        at_limit.then_some(FinishReason::Length)
    }

    fn record_token_time(&mut self, request: &Request, step: u64) {
        let now = Instant::now();
        self.timeline.first_token.get_or_insert(now);
        let previous = self.timeline.last_token.replace(now);
        if let Some(previous) = previous {
            let gap = now.duration_since(previous).as_secs_f64();
            self.timeline.itl_max = Some(self.timeline.itl_max.map_or(gap, |max| max.max(gap)));
        }
        if let Some(target) = &self.metrics {
            match previous {
                Some(previous) => target
                    .metrics
                    .record_inter_token(now.duration_since(previous), target.trace_id),
                None => target.metrics.record_first_token(
                    now.duration_since(self.timeline.arrival),
                    request.num_prompt_tokens(),
                    target.trace_id,
                ),
            }
        }
        if let Some(journey) = &mut self.journey {
            journey.token(request, step);
        }
    }

    /// Ends the request (finished by the scheduler, with its reason set; `Abort` if none):
    /// sends the text held back (unless a stop string ended it, or it failed), then the
    /// `Finished` event, and returns what that event said. `error` marks a failure found
    /// outside the processor (the model failed on its sequence).
    pub fn finish(mut self, request: &Request, error: Option<String>, step: u64) -> FinishedInfo {
        let reason = request.finish_reason().unwrap_or(FinishReason::Abort);
        if matches!(reason, FinishReason::Stop | FinishReason::Length) && !self.stopped_by_string {
            let flushed = self.detokenizer.flush();
            let outcome = self.stops.push(&flushed);
            let mut tail = outcome.emit;
            if outcome.stopped.is_none() {
                tail.push_str(&self.stops.finish());
            }
            if !tail.is_empty() {
                self.sink.send(StreamEvent::Delta {
                    text: tail,
                    token_ids: Vec::new(),
                    logprobs: Vec::new(),
                });
            }
        }
        let error = error.or(self.detokenize_error.take());
        let reason = if error.is_some() {
            FinishReason::Error
        } else {
            reason
        };
        let now = Instant::now();
        let timings = self.timeline.timings(now);
        let (recorded, kept) = match self.journey.take() {
            Some(journey) => {
                let outcome = self.outcome(request, reason, &timings, now);
                let retention = journey.retention().cloned();
                let ended = journey.finished(request, step, reason, &outcome, &timings);
                match (ended.record, retention) {
                    // The client left: nobody reads the `Finished` event, and the API has
                    // ended (or is ending) its side as aborted; the two meet there.
                    (Some(record), Some(retention)) if self.sink.is_closed() => {
                        retention.orphaned(record);
                        (None, None)
                    }
                    (record, _) => (record.map(Box::new), ended.kept),
                }
            }
            None => (None, None),
        };
        {
            let _entered = self.span.enter();
            tracing::debug!(
                request_id = request.request_id(),
                finish_reason = reason.as_str(),
                prompt_tokens = request.num_prompt_tokens(),
                output_tokens = request.num_output_tokens(),
                num_preemptions = request.num_preemptions(),
                blocks_allocated = request.num_blocks_allocated(),
                blocks_from_prefix_cache = request.num_cached_blocks_hit(),
                prompt_tokens_computed = request.num_computed_prompt_tokens(),
                "request finished"
            );
        }
        let info = FinishedInfo {
            reason,
            prompt_tokens: request.num_prompt_tokens(),
            completion_tokens: request.num_output_tokens(),
            cached_prompt_tokens: request.num_cached_prompt_tokens(),
            num_preemptions: request.num_preemptions(),
            error,
            timings,
            journey: recorded,
            kept,
        };
        self.send_finished(info)
    }

    /// How the request went, for the tail-retention rules.
    fn outcome(
        &self,
        request: &Request,
        reason: FinishReason,
        timings: &super::handle::EngineTimings,
        now: Instant,
    ) -> Outcome {
        let arrival = self.timeline.arrival;
        Outcome {
            reason,
            num_preemptions: request.num_preemptions(),
            queue: timings.queue,
            ttft: self
                .timeline
                .first_token
                .map(|t| t.duration_since(arrival).as_secs_f64()),
            itl_max: self.timeline.itl_max,
            e2e: now.duration_since(arrival).as_secs_f64(),
        }
    }

    /// Ends a request without the scheduler's word on it (the scheduler refused it, or the
    /// engine died): `Error`, with `error` saying why.
    pub fn refuse(self, error: String) -> FinishedInfo {
        let info = FinishedInfo::failed(self.num_prompt_tokens, error);
        self.send_finished(info)
    }

    fn send_finished(mut self, info: FinishedInfo) -> FinishedInfo {
        if let Some(target) = &self.metrics {
            target.metrics.record_finished(
                &FinishedRequest {
                    reason: info.reason.as_str(),
                    prompt_tokens: info.prompt_tokens,
                    completion_tokens: info.completion_tokens,
                    e2e: self.timeline.arrival.elapsed(),
                    queue: info.timings.queue,
                    prefill: info.timings.prefill,
                    decode: info.timings.decode,
                },
                target.trace_id,
            );
        }
        self.sink.send(StreamEvent::Finished(info.clone()));
        info
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::scheduler::{Scheduler, SchedulerConfig};
    use crate::tokenizer::TINY_EOS_ID;

    /// Collects what a processor sends.
    #[derive(Default)]
    struct Collected {
        text: String,
        token_ids: Vec<u32>,
        finished: Option<FinishedInfo>,
    }

    impl OutputSink for &mut Collected {
        fn send(&mut self, event: StreamEvent) {
            match event {
                StreamEvent::Delta {
                    text, token_ids, ..
                } => {
                    self.text.push_str(&text);
                    self.token_ids.extend(token_ids);
                }
                StreamEvent::Finished(info) => self.finished = Some(info),
            }
        }

        fn is_closed(&self) -> bool {
            false
        }
    }

    /// Feeds `tokens` one per step through a real scheduler and a processor for `params`,
    /// as the engine does, until the processor ends the request; returns what was sent.
    /// `max_model_len` bounds the sequence.
    fn run(params: SamplingParams, tokens: &[u32], max_model_len: usize) -> Collected {
        let prompt = vec![u32::from(b'>'), u32::from(b' ')];
        let mut scheduler = Scheduler::new(SchedulerConfig {
            block_size: 4,
            ..SchedulerConfig::new(64, max_model_len)
        })
        .unwrap();
        let mut collected = Collected::default();
        let mut processor = OutputProcessor::new(
            &params,
            &prompt,
            Arc::new(Tokenizer::tiny()),
            scheduler.max_sequence_len(),
            &mut collected,
            Instant::now(),
        );
        scheduler
            .add_request(Request::new("r", prompt.clone()))
            .unwrap();
        for (step, &token) in tokens.iter().enumerate() {
            let output = scheduler.schedule();
            let update = scheduler.update_from_output(&output, &[token]).unwrap();
            let index = update.new_tokens[0];
            let request = scheduler.running_request(index).unwrap();
            if let Some(reason) = processor.on_token(request, step as u64) {
                let ended = scheduler.finish_running(&[(index, reason)]);
                processor.finish(&ended[0], None, step as u64);
                assert!(scheduler.is_empty());
                return collected;
            }
        }
        panic!(
            "the processor did not end the request within {} tokens",
            tokens.len()
        );
    }

    fn bytes(text: &str) -> Vec<u32> {
        text.bytes().map(u32::from).collect()
    }

    fn params(f: impl FnOnce(&mut SamplingParams)) -> SamplingParams {
        let mut params = SamplingParams::greedy();
        f(&mut params);
        params
    }

    fn reason(collected: &Collected) -> FinishReason {
        collected.finished.as_ref().expect("finished").reason
    }

    #[test]
    fn end_of_sequence_stops_and_its_text_is_not_shown() {
        let tokens = [bytes("hi"), vec![TINY_EOS_ID], bytes("never")].concat();
        let out = run(SamplingParams::greedy(), &tokens, 64);
        assert_eq!(reason(&out), FinishReason::Stop);
        assert_eq!(out.text, "hi");
        assert_eq!(out.token_ids, [bytes("hi"), vec![TINY_EOS_ID]].concat());
    }

    #[test]
    fn ignore_eos_makes_end_of_sequence_an_ordinary_token() {
        let tokens = [bytes("hi"), vec![TINY_EOS_ID], bytes("yo")].concat();
        let out = run(
            params(|p| (p.ignore_eos, p.max_tokens) = (true, 5)),
            &tokens,
            64,
        );
        assert_eq!(reason(&out), FinishReason::Length);
        assert_eq!(out.token_ids, tokens[..5]);
    }

    #[test]
    fn a_stop_token_id_stops() {
        let tokens = bytes("abcdef");
        let out = run(
            params(|p| p.stop_token_ids = vec![u32::from(b'c')]),
            &tokens,
            64,
        );
        assert_eq!(reason(&out), FinishReason::Stop);
        assert_eq!(out.text, "ab");
        assert_eq!(out.token_ids, bytes("abc"));
    }

    #[test]
    fn min_tokens_masks_stop_tokens_until_reached() {
        // `c` comes third; with min_tokens 4 it is ignored, and the next `c` stops.
        let tokens = bytes("abcdcx");
        let out = run(
            params(|p| {
                p.stop_token_ids = vec![u32::from(b'c')];
                p.min_tokens = 4;
            }),
            &tokens,
            64,
        );
        assert_eq!(reason(&out), FinishReason::Stop);
        assert_eq!(out.token_ids, bytes("abcdc"));
        assert_eq!(out.text, "abcd");
    }

    #[test]
    fn a_stop_string_stops_and_is_never_shown() {
        let tokens = bytes("one, two; three");
        let out = run(params(|p| p.stop = vec!["two;".into()]), &tokens, 64);
        assert_eq!(reason(&out), FinishReason::Stop);
        assert_eq!(out.text, "one, ");
        assert_eq!(out.token_ids, bytes("one, two;"));
    }

    #[test]
    fn max_tokens_ends_with_length_and_flushes_held_text() {
        // "ab" could start the stop string "abc": held back, then released at the end.
        let tokens = bytes("xyzab-never");
        let out = run(
            params(|p| {
                p.max_tokens = 5;
                p.stop = vec!["abc".into()];
            }),
            &tokens,
            64,
        );
        assert_eq!(reason(&out), FinishReason::Length);
        assert_eq!(out.text, "xyzab");
        assert_eq!(out.finished.unwrap().completion_tokens, 5);
    }

    #[test]
    fn the_longest_sequence_ends_with_length() {
        // A prompt of 2 and a context of 8: 6 tokens, whatever max_tokens says.
        let tokens = bytes("abcdefghij");
        let out = run(SamplingParams::greedy(), &tokens, 8);
        assert_eq!(reason(&out), FinishReason::Length);
        assert_eq!(out.token_ids, bytes("abcdef"));
    }

    #[test]
    fn a_failure_found_outside_is_an_error_and_debug_shows_no_text() {
        let mut collected = Collected::default();
        let params = params(|p| p.stop = vec!["secret stop".into()]);
        let processor = OutputProcessor::new(
            &params,
            &bytes("secret prompt"),
            Arc::new(Tokenizer::tiny()),
            64,
            &mut collected,
            Instant::now(),
        );
        let printed = format!("{processor:?}");
        assert!(!printed.contains("secret"), "{printed}");
        let info = processor.refuse("the model failed".into());
        assert_eq!(info.reason, FinishReason::Error);
        assert_eq!(info.prompt_tokens, 13);
        assert_eq!(collected.finished, Some(info));
    }
}
