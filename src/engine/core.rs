//! The engine loop: an actor on its own thread that owns the scheduler, the model runner and
//! every request's output state (sampler, detokenizer, stop strings, response channel).
//!
//! Each iteration: take commands, drop requests whose client left, schedule, run the model,
//! sample, let the scheduler advance and judge lengths, turn tokens into text deltas, and
//! send them. Nothing about a request outlives it: when it finishes or is aborted its blocks
//! are freed by the scheduler and its state here is removed in the same iteration.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc::UnboundedSender;

use super::handle::{
    Admission, EngineCommand, EngineHandle, EngineRequest, EngineTimings, FinishReason,
    FinishedInfo, ModelInfo, StreamEvent, TokenLogprob,
};
use super::journey::Journey;
use super::output::SchedulerOutput;
use super::request::Request;
use super::runner::ModelRunner;
use super::scheduler::{Scheduler, SchedulerConfig};
use super::step_trace::{self, StepTracer, StepTracingConfig};
use crate::metrics::{Metrics, TraceId};
use crate::model::{ForwardBatch, SequenceSlice};
use crate::sampling::{Sampler, SamplingParams, StopStringMatcher};
use crate::tokenizer::{IncrementalDetokenizer, Tokenizer};

/// How the engine schedules and how much it queues.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Batching, KV pool and policy.
    pub scheduler: SchedulerConfig,
    /// Requests allowed to wait before new ones are refused.
    pub max_waiting_requests: usize,
    /// Step tracing, when on.
    pub step_tracing: Option<StepTracingConfig>,
}

/// What the engine tracks right now (for health checks and leak tests).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EngineStats {
    /// Requests waiting.
    pub waiting: usize,
    /// Requests running.
    pub running: usize,
    /// Requests with output state (sampler, channel) in the engine.
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

/// A started engine: its handle and its thread.
#[derive(Debug)]
pub struct RunningEngine {
    /// Talk to the engine through this.
    pub handle: EngineHandle,
    thread: std::thread::JoinHandle<()>,
}

impl RunningEngine {
    /// Drops this handle and waits for the engine thread, which ends once every handle and
    /// request stream is gone.
    pub fn shutdown(self) {
        drop(self.handle);
        if self.thread.join().is_err() {
            tracing::error!("the engine thread panicked");
        }
    }
}

/// Starts the engine on its own thread.
pub fn start<R: ModelRunner>(
    runner: R,
    tokenizer: Arc<Tokenizer>,
    model: ModelInfo,
    config: EngineConfig,
) -> Result<RunningEngine, String> {
    let scheduler = Scheduler::new(config.scheduler.clone()).map_err(|e| e.to_string())?;
    let (commands_tx, commands) = std::sync::mpsc::channel();
    let waiting = Arc::new(AtomicUsize::new(0));
    let handle = EngineHandle::new(
        commands_tx,
        waiting.clone(),
        config.max_waiting_requests,
        tokenizer.clone(),
        model,
    );
    let engine = Engine {
        runner,
        scheduler,
        tokenizer,
        outputs: HashMap::new(),
        commands,
        waiting,
        metrics: handle.metrics().clone(),
        healthy: handle.health_flag(),
        unpublished_admissions: Vec::new(),
        steps: 0,
        aborted: 0,
        step_time: Duration::ZERO,
        model_time: Duration::ZERO,
        scheduler_step: 0,
        step_tracer: StepTracer::new(config.step_tracing),
    };
    let thread = std::thread::Builder::new()
        .name("waypoint-engine".into())
        .spawn(move || engine.run())
        .map_err(|e| format!("cannot start the engine thread: {e}"))?;
    Ok(RunningEngine { handle, thread })
}

/// The engine's per-request output state.
struct RequestOutput {
    sender: UnboundedSender<StreamEvent>,
    params: SamplingParams,
    sampler: Sampler,
    detokenizer: IncrementalDetokenizer,
    stops: StopStringMatcher,
    /// End-of-sequence ids that stop this request (empty with `ignore_eos`).
    eos_token_ids: Vec<u32>,
    /// Text and logprobs produced this step, sent after the scheduler's update.
    pending_text: String,
    pending_logprobs: Vec<TokenLogprob>,
    /// A stop string ended it: the held-back text is dropped, not flushed.
    stopped_by_string: bool,
    detokenize_error: Option<String>,
    span: tracing::Span,
    /// Present when the request's journey is traced.
    journey: Option<Journey>,
    arrival: Instant,
    first_scheduled: Option<Instant>,
    first_token: Option<Instant>,
    /// For the inter-token latency.
    last_token: Option<Instant>,
    num_prompt_tokens: usize,
    /// Shown as the exemplar of this request's latency observations.
    trace_id: Option<TraceId>,
}

struct Engine<R: ModelRunner> {
    runner: R,
    scheduler: Scheduler,
    tokenizer: Arc<Tokenizer>,
    outputs: HashMap<String, RequestOutput>,
    commands: Receiver<EngineCommand>,
    waiting: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
    /// [`EngineHandle::is_healthy`]'s flag.
    healthy: Arc<AtomicBool>,
    /// Submissions taken since the last `publish_load`.
    unpublished_admissions: Vec<Admission>,
    steps: u64,
    aborted: u64,
    step_time: Duration,
    model_time: Duration,
    /// The scheduler's latest step number, for journey events between steps.
    scheduler_step: u64,
    step_tracer: StepTracer,
}

impl<R: ModelRunner> Engine<R> {
    fn run(mut self) {
        loop {
            let idle = !self.scheduler.has_unfinished_requests();
            // Block when idle; otherwise only look at what has arrived.
            let first = if idle {
                match self.commands.recv() {
                    Ok(command) => Some(command),
                    Err(_) => break,
                }
            } else {
                None
            };
            if let Some(command) = first {
                self.handle_command(command);
            }
            while let Ok(command) = self.commands.try_recv() {
                self.handle_command(command);
            }
            self.drop_departed_clients();
            self.publish_load();
            if !self.scheduler.has_unfinished_requests() {
                continue;
            }
            let step_started = Instant::now();
            let output = self.scheduler.schedule();
            if output.is_empty() {
                // Nothing fits right now; wait for a command rather than spin.
                match self.commands.recv_timeout(Duration::from_millis(5)) {
                    Ok(command) => self.handle_command(command),
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => {}
                }
                continue;
            }
            let traced_step = self.step_tracer.sample();
            if traced_step.is_some() && self.step_tracer.sample_snapshots() {
                self.snapshot_requests(&output);
            }
            let num_finished = self.step(&output);
            if let Some(traced_step) = traced_step {
                traced_step.batch_summary(&output.stats, num_finished);
            }
            // Before the loop may block: the gauges must not show finished requests.
            self.publish_load();
            self.step_time += step_started.elapsed();
        }
        if self.steps > 0 {
            let overhead = self.step_time.saturating_sub(self.model_time);
            tracing::info!(
                steps = self.steps,
                step_seconds = self.step_time.as_secs_f64(),
                model_seconds = self.model_time.as_secs_f64(),
                overhead_percent = 100.0 * overhead.as_secs_f64() / self.step_time.as_secs_f64(),
                "engine stopped"
            );
        }
        // Every handle is gone: end whatever is left.
        for request in self.scheduler.abort_all() {
            self.finish(&request, None);
        }
    }

    fn handle_command(&mut self, command: EngineCommand) {
        match command {
            EngineCommand::Submit {
                request,
                output,
                span,
                admission,
            } => {
                self.add(request, output, span);
                self.unpublished_admissions.push(admission);
            }
            EngineCommand::Abort { request_id } => {
                if let Some(request) = self.scheduler.abort_request(&request_id) {
                    self.finish(&request, None);
                }
            }
            EngineCommand::AbortAll => {
                for request in self.scheduler.abort_all() {
                    self.finish(&request, None);
                }
            }
            EngineCommand::Stats(reply) => {
                let _ = reply.send(self.stats());
            }
        }
    }

    /// Commands and finished requests change the queue and the cache: the handle's
    /// admission check and the load gauges see it here.
    fn publish_load(&mut self) {
        let waiting = self.scheduler.num_waiting();
        self.waiting.store(waiting, Ordering::Release);
        // Only now that `waiting` counts them (see `Admission`).
        self.unpublished_admissions.clear();
        self.metrics.set_load(
            self.scheduler.num_running(),
            waiting,
            self.scheduler.kv_usage(),
        );
    }

    fn stats(&self) -> EngineStats {
        let kv = self.scheduler.kv_cache();
        EngineStats {
            waiting: self.scheduler.num_waiting(),
            running: self.scheduler.num_running(),
            live_outputs: self.outputs.len(),
            blocks_in_use: kv.num_total_blocks() - kv.num_free_blocks(),
            scheduler_empty: self.scheduler.is_empty(),
            total_preemptions: self.scheduler.total_preemptions(),
            steps: self.steps,
            aborted: self.aborted,
            step_time: self.step_time,
            model_time: self.model_time,
        }
    }

    fn add(
        &mut self,
        request: EngineRequest,
        sender: UnboundedSender<StreamEvent>,
        span: tracing::Span,
    ) {
        let EngineRequest {
            request_id,
            prompt_ids,
            params,
            priority,
            arrival,
            traced,
            trace_id,
        } = request;
        let trace_id = trace_id.as_deref().and_then(|id| {
            let parsed = TraceId::parse(id);
            if parsed.is_none() {
                tracing::debug!(%request_id, "not a W3C trace id: no exemplars");
            }
            parsed
        });
        let scheduled = Request::new(request_id.clone(), prompt_ids.clone(), params.max_tokens)
            .with_priority(priority)
            .with_arrival(arrival);
        if let Err(error) = self.scheduler.add_request(scheduled) {
            let info = FinishedInfo {
                reason: FinishReason::Error,
                prompt_tokens: prompt_ids.len(),
                completion_tokens: 0,
                cached_prompt_tokens: 0,
                num_preemptions: 0,
                error: Some(error.to_string()),
                timings: EngineTimings::default(),
            };
            self.metrics
                .record_finished(&info, arrival.elapsed(), trace_id);
            let _ = sender.send(StreamEvent::Finished(info));
            return;
        }
        let journey = traced.then(|| Journey::start(&span, &request_id));
        if let (Some(journey), Some(request)) = (&journey, self.scheduler.request(&request_id)) {
            journey.queued(request, self.scheduler_step);
        }
        let eos_token_ids = if params.ignore_eos {
            Vec::new()
        } else {
            self.tokenizer.eos_token_ids().to_vec()
        };
        self.outputs.insert(
            request_id,
            RequestOutput {
                sender,
                sampler: Sampler::new(&params),
                detokenizer: IncrementalDetokenizer::new(&prompt_ids, true),
                stops: StopStringMatcher::new(&params.stop),
                params,
                eos_token_ids,
                pending_text: String::new(),
                pending_logprobs: Vec::new(),
                stopped_by_string: false,
                detokenize_error: None,
                span,
                journey,
                arrival,
                first_scheduled: None,
                first_token: None,
                last_token: None,
                num_prompt_tokens: prompt_ids.len(),
                trace_id,
            },
        );
    }

    /// A closed response channel means the client left: abort now so its blocks are freed
    /// before this step is scheduled.
    fn drop_departed_clients(&mut self) {
        let departed: Vec<String> = self
            .outputs
            .iter()
            .filter(|(_, out)| out.sender.is_closed())
            .map(|(id, _)| id.clone())
            .collect();
        for id in departed {
            if let Some(request) = self.scheduler.abort_request(&id) {
                self.finish(&request, None);
            } else {
                self.outputs.remove(&id);
            }
        }
    }

    /// `REQUEST_SNAPSHOT`s of the requests scheduled in `output`, before the model runs.
    fn snapshot_requests(&self, output: &SchedulerOutput) {
        let block_size = self.scheduler.kv_cache().block_size();
        for sequence in output.batch() {
            if let Some(request) = self.scheduler.request(sequence.request_id) {
                step_trace::request_snapshot(output.step, request, &sequence, block_size);
            }
        }
    }

    /// Runs one scheduled step; returns how many requests finished in it.
    fn step(&mut self, output: &SchedulerOutput) -> usize {
        self.steps += 1;
        self.scheduler_step = output.step;
        self.report_scheduling(output);
        self.metrics.record_step(&output.stats);
        let now = Instant::now();
        for new in &output.scheduled_new {
            if let Some(out) = self.outputs.get_mut(&new.request_id) {
                out.first_scheduled.get_or_insert(now);
            }
        }
        let batch = forward_batch(output);
        let model_started = Instant::now();
        // A panic in the backend must not take the engine thread (and every request) down:
        // the batch fails with an error instead, and the server stays up to say so.
        let result =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.runner.execute(&batch)))
                .unwrap_or_else(|panic| {
                    let what = panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "unknown panic".to_string());
                    Err(format!("the model panicked: {what}"))
                });
        self.model_time += model_started.elapsed();
        let mut logits = match result {
            Ok(logits) => logits,
            Err(error) => {
                tracing::error!(step = output.step, %error, "model step failed");
                if !self.runner.can_continue() && self.healthy.swap(false, Ordering::AcqRel) {
                    tracing::error!(
                        "the model cannot compute any more batches; /health now reports 503, \
                         restart the server"
                    );
                }
                for seq in output.batch() {
                    let id = seq.request_id.to_string();
                    if let Some(request) = self.scheduler.finish_request(&id, FinishReason::Error) {
                        self.finish(&request, Some("the model failed on this batch".into()));
                    }
                }
                return output.num_sequences();
            }
        };

        // Sample where a sequence's tokens are all computed; mid-prompt chunks get a
        // placeholder the scheduler ignores.
        let mut sampled = Vec::with_capacity(output.num_sequences());
        for (row, seq) in output.batch().enumerate() {
            let request = self.scheduler.request(seq.request_id);
            match (request, self.outputs.get_mut(seq.request_id)) {
                (Some(request), Some(out)) if seq.samples => {
                    // Each row is sampled once, so the sampler may process it in place
                    // (no vocab-sized copy per sequence per step).
                    let token = out.sampler.sample(
                        logits.row_mut(row),
                        request.prompt_ids(),
                        request.output_ids(),
                        &out.eos_token_ids,
                    );
                    if out.params.logprobs.is_some() {
                        out.pending_logprobs.push(TokenLogprob {
                            token_id: token.token_id,
                            logprob: token.logprob,
                            top: token.top_logprobs,
                        });
                    }
                    sampled.push(token.token_id);
                }
                _ => sampled.push(0),
            }
        }

        let outputs = &mut self.outputs;
        let tokenizer = &self.tokenizer;
        let update = self
            .scheduler
            .update_from_output(output, &sampled, |request| {
                let out = outputs.get_mut(request.request_id())?;
                check_stop(out, request, tokenizer)
            });
        let update = match update {
            Ok(update) => update,
            Err(error) => {
                tracing::error!(%error, "scheduler update failed");
                return 0;
            }
        };
        let now = Instant::now();
        self.metrics
            .record_generated_tokens(update.new_tokens.len());
        for (request_id, token) in &update.new_tokens {
            if let Some(out) = self.outputs.get_mut(request_id) {
                out.first_token.get_or_insert(now);
                match out.last_token.replace(now) {
                    Some(previous) => self
                        .metrics
                        .record_inter_token(now.duration_since(previous), out.trace_id),
                    None => self.metrics.record_first_token(
                        now.duration_since(out.arrival),
                        out.num_prompt_tokens,
                        out.trace_id,
                    ),
                }
                if let Some(journey) = &mut out.journey {
                    let request = self.scheduler.request(request_id).or_else(|| {
                        update
                            .finished
                            .iter()
                            .find(|r| r.request_id() == request_id)
                    });
                    if let Some(request) = request {
                        journey.token(request, output.step);
                    }
                }
                let event = StreamEvent::Delta {
                    text: std::mem::take(&mut out.pending_text),
                    token_ids: vec![*token],
                    logprobs: std::mem::take(&mut out.pending_logprobs),
                };
                let _ = out.sender.send(event);
            }
        }
        for request in &update.finished {
            self.finish(request, None);
        }
        update.finished.len()
    }

    /// Journey events for what `schedule()` decided: admissions and preemptions.
    fn report_scheduling(&self, output: &SchedulerOutput) {
        let traced = |id: &str| self.outputs.get(id).and_then(|out| out.journey.as_ref());
        for new in &output.scheduled_new {
            if let (Some(journey), Some(request)) = (
                traced(&new.request_id),
                self.scheduler.request(&new.request_id),
            ) {
                journey.scheduled(request, output.step);
            }
        }
        for id in &output.preempted {
            if let (Some(journey), Some(request)) = (traced(id), self.scheduler.request(id)) {
                journey.preempted(request, output.step);
            }
        }
    }

    /// Sends the last text and the `Finished` event, and forgets the request.
    fn finish(&mut self, request: &Request, error: Option<String>) {
        let Some(mut out) = self.outputs.remove(request.request_id()) else {
            return;
        };
        let reason = request.finish_reason().unwrap_or(FinishReason::Abort);
        if reason == FinishReason::Abort {
            self.aborted += 1;
        }
        if matches!(reason, FinishReason::Stop | FinishReason::Length) && !out.stopped_by_string {
            let flushed = out.detokenizer.flush();
            let outcome = out.stops.push(&flushed);
            let mut tail = outcome.emit;
            if outcome.stopped.is_none() {
                tail.push_str(&out.stops.finish());
            }
            if !tail.is_empty() {
                let _ = out.sender.send(StreamEvent::Delta {
                    text: tail,
                    token_ids: Vec::new(),
                    logprobs: Vec::new(),
                });
            }
        }
        let error = error.or(out.detokenize_error.take());
        if let Some(journey) = out.journey.take() {
            let status = if error.is_some() {
                FinishReason::Error
            } else {
                reason
            };
            journey.finished(request, self.scheduler_step, status);
        }
        let _entered = out.span.enter();
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
        let info = FinishedInfo {
            reason: if error.is_some() {
                FinishReason::Error
            } else {
                reason
            },
            prompt_tokens: request.num_prompt_tokens(),
            completion_tokens: request.num_output_tokens(),
            cached_prompt_tokens: request.num_cached_prompt_tokens(),
            num_preemptions: request.num_preemptions(),
            error,
            timings: out.timings(),
        };
        self.metrics
            .record_finished(&info, out.arrival.elapsed(), out.trace_id);
        let _ = out.sender.send(StreamEvent::Finished(info));
    }
}

impl RequestOutput {
    /// Seconds in queue, prefill and decode, as far as the request got.
    fn timings(&self) -> EngineTimings {
        let seconds = |from: Instant, to: Instant| to.duration_since(from).as_secs_f64();
        let end = Instant::now();
        EngineTimings {
            queue: self.first_scheduled.map(|s| seconds(self.arrival, s)),
            prefill: self
                .first_scheduled
                .zip(self.first_token)
                .map(|(s, t)| seconds(s, t)),
            decode: self.first_token.map(|t| seconds(t, end)),
        }
    }
}

/// Decides whether the token just appended to `request` ends it, and turns it into text.
fn check_stop(
    out: &mut RequestOutput,
    request: &Request,
    tokenizer: &Tokenizer,
) -> Option<FinishReason> {
    let token = request.last_output_token()?;
    let min_reached = request.num_output_tokens() >= out.params.min_tokens;
    if min_reached
        && (out.eos_token_ids.contains(&token) || out.params.stop_token_ids.contains(&token))
    {
        return Some(FinishReason::Stop);
    }
    let delta = match out.detokenizer.push(tokenizer, token) {
        Ok(delta) => delta,
        Err(error) => {
            out.detokenize_error = Some(error.to_string());
            return Some(FinishReason::Error);
        }
    };
    let outcome = out.stops.push(&delta);
    out.pending_text.push_str(&outcome.emit);
    if outcome.stopped.is_some() {
        out.stopped_by_string = true;
        return Some(FinishReason::Stop);
    }
    None
}

fn forward_batch(output: &SchedulerOutput) -> ForwardBatch {
    let mut batch = ForwardBatch::default();
    for seq in output.batch() {
        batch.token_ids.extend_from_slice(seq.token_ids);
        batch.sequences.push(SequenceSlice {
            num_cached_tokens: seq.num_computed_tokens,
            num_new_tokens: seq.token_ids.len(),
            block_table: seq.block_table.iter().map(|b| b.0).collect(),
        });
    }
    batch
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Format;
    use crate::model::Logits;
    use crate::tokenizer::TINY_VOCAB_SIZE;

    /// Panics on its first call, then always predicts byte `A` (or, when `broken_by_panic`,
    /// says it cannot continue, like a model whose cache went down with the panic).
    struct FlakyRunner {
        calls: usize,
        broken_by_panic: bool,
    }

    impl ModelRunner for FlakyRunner {
        fn execute(&mut self, batch: &ForwardBatch) -> Result<Logits, String> {
            self.calls += 1;
            if self.calls == 1 {
                panic!("backend exploded");
            }
            let mut data = vec![0.0; batch.sequences.len() * TINY_VOCAB_SIZE];
            for row in 0..batch.sequences.len() {
                data[row * TINY_VOCAB_SIZE + usize::from(b'A')] = 10.0;
            }
            Ok(Logits {
                data,
                vocab_size: TINY_VOCAB_SIZE,
            })
        }

        fn can_continue(&self) -> bool {
            !self.broken_by_panic
        }
    }

    /// An engine over a [`FlakyRunner`], serving the tiny tokenizer as model `name`.
    fn start_flaky(name: &str, broken_by_panic: bool) -> RunningEngine {
        let runner = FlakyRunner {
            calls: 0,
            broken_by_panic,
        };
        let model = ModelInfo {
            name: name.into(),
            max_context: 64,
            vocab_size: TINY_VOCAB_SIZE,
        };
        let config = EngineConfig {
            scheduler: SchedulerConfig::new(16, 64),
            max_waiting_requests: 8,
            step_tracing: None,
        };
        start(runner, Arc::new(Tokenizer::tiny()), model, config).unwrap()
    }

    fn request(id: &str) -> EngineRequest {
        EngineRequest {
            request_id: id.to_string(),
            prompt_ids: vec![1, 2, 3],
            params: SamplingParams {
                max_tokens: 3,
                ..SamplingParams::greedy()
            },
            priority: 0,
            arrival: Instant::now(),
            traced: false,
            trace_id: None,
        }
    }

    async fn finish(mut stream: crate::engine::RequestStream) -> (String, FinishedInfo) {
        let mut text = String::new();
        while let Some(event) = stream.next().await {
            match event {
                StreamEvent::Delta { text: t, .. } => text.push_str(&t),
                StreamEvent::Finished(info) => return (text, info),
            }
        }
        panic!("stream ended without Finished");
    }

    #[tokio::test]
    async fn a_panicking_model_fails_its_batch_and_the_engine_lives_on() {
        let engine = start_flaky("flaky", false);
        let (_, failed) = finish(engine.handle.submit(request("first")).unwrap()).await;
        assert_eq!(failed.reason, FinishReason::Error);
        assert!(failed.error.unwrap().contains("failed"));

        assert!(
            engine.handle.is_healthy(),
            "the runner said it can continue"
        );

        let (text, ok) = finish(engine.handle.submit(request("second")).unwrap()).await;
        assert_eq!(ok.reason, FinishReason::Length);
        assert_eq!(text, "AAA");
        let stats = engine.handle.stats().await.unwrap();
        assert!(
            stats.scheduler_empty && stats.live_outputs == 0,
            "{stats:?}"
        );
        // The failed request counts too, by its reason.
        let scrape = engine.handle.metrics().render(Format::PrometheusText);
        for (reason, count) in [("error", 1), ("length", 1), ("stop", 0), ("abort", 0)] {
            let sample = format!(
                "waypoint_request_success_total{{model_name=\"flaky\",finished_reason=\"{reason}\"}} {count}\n"
            );
            assert!(scrape.contains(&sample), "{sample} in {scrape}");
        }
        assert!(
            scrape.contains("waypoint_e2e_request_latency_seconds_count{model_name=\"flaky\"} 2\n"),
            "{scrape}"
        );
        engine.shutdown();
    }

    #[tokio::test]
    async fn a_model_that_cannot_continue_marks_the_engine_unhealthy() {
        let engine = start_flaky("broken", true);
        assert!(engine.handle.is_healthy());
        let (_, failed) = finish(engine.handle.submit(request("first")).unwrap()).await;
        assert_eq!(failed.reason, FinishReason::Error);
        assert!(!engine.handle.is_healthy());
        engine.shutdown();
    }
}
