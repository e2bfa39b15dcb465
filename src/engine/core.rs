//! The engine loop: an actor on its own thread that owns the scheduler, the model runner and
//! every request's [`OutputProcessor`].
//!
//! Each iteration takes commands, drops requests whose client left, then runs a step:
//! schedule, run the model, sample, let the scheduler append, let each processor judge its
//! token and emit it, finish what ended. Nothing about a request outlives it: when it
//! finishes or is aborted its blocks are freed by the scheduler and its processor is removed
//! in the same iteration.
//!
//! A panic anywhere in an iteration is caught at the loop's top: the engine is then dead.
//! Every request still in it gets an error, `/health` turns 503 (through the health flag),
//! [`EngineHandle::died`] wakes (so `waypoint serve` can drain and exit non-zero), and the
//! thread only answers commands until every handle is gone.

use std::ops::ControlFlow;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc::UnboundedSender;

use super::handle::{
    Admission, EngineCommand, EngineHandle, EngineRequest, FinishedInfo, ModelInfo, StreamEvent,
};
use super::inspect::{
    EngineView, RequestView, SchedulerView, StepRing, StepSummary, MAX_VIEWED_REQUESTS, STEP_RING,
};
use super::journey::{monotonic_seconds, Journey, StepShare};
use super::output::SchedulerOutput;
use super::output_processor::OutputProcessor;
use super::request::Request;
use super::runner::{ExecuteError, ModelRunner};
use super::scheduler::{Scheduler, SchedulerConfig, SchedulerConfigError};
use super::step_trace::{self, StepTracer, StepTracingConfig};
use super::types::{EngineStats, FinishReason};
use crate::metrics::{Metrics, TraceId};
use crate::model::Logits;
use crate::tokenizer::Tokenizer;

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

/// Why [`start`] could not start an engine.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The scheduler configuration is unusable.
    #[error(transparent)]
    Scheduler(#[from] SchedulerConfigError),
    /// The operating system refused the thread.
    #[error("cannot start the engine thread: {0}")]
    Thread(#[from] std::io::Error),
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
) -> Result<RunningEngine, StartError> {
    let scheduler = Scheduler::new(config.scheduler.clone())?;
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
        live: Slots::default(),
        live_journeys: 0,
        commands,
        waiting,
        metrics: handle.metrics().clone(),
        healthy: handle.health_flag(),
        death: handle.death_notifier(),
        unpublished_admissions: Vec::new(),
        steps: 0,
        aborted: 0,
        step_time: Duration::ZERO,
        model_time: Duration::ZERO,
        scheduler_step: 0,
        step_tracer: StepTracer::new(config.step_tracing),
        step_ring: StepRing::default(),
    };
    let thread = std::thread::Builder::new()
        .name("waypoint-engine".into())
        .spawn(move || engine.run())?;
    Ok(RunningEngine { handle, thread })
}

/// A request the engine is serving: its id (to abort it by) and its output processor.
#[derive(Debug)]
struct LiveRequest {
    request_id: String,
    processor: OutputProcessor,
}

/// A slab: values at stable indices, reused after removal, found without a search.
#[derive(Debug)]
struct Slots<T> {
    entries: Vec<Option<T>>,
    free: Vec<usize>,
    len: usize,
}

impl<T> Default for Slots<T> {
    fn default() -> Self {
        Self {
            entries: Vec::new(),
            free: Vec::new(),
            len: 0,
        }
    }
}

impl<T> Slots<T> {
    /// The index the next [`Slots::insert`] will use.
    fn next_index(&self) -> usize {
        self.free.last().copied().unwrap_or(self.entries.len())
    }

    fn insert(&mut self, value: T) -> usize {
        self.len += 1;
        match self.free.pop() {
            Some(index) => {
                self.entries[index] = Some(value);
                index
            }
            None => {
                self.entries.push(Some(value));
                self.entries.len() - 1
            }
        }
    }

    fn get(&self, index: usize) -> Option<&T> {
        self.entries.get(index)?.as_ref()
    }

    fn get_mut(&mut self, index: usize) -> Option<&mut T> {
        self.entries.get_mut(index)?.as_mut()
    }

    fn remove(&mut self, index: usize) -> Option<T> {
        let value = self.entries.get_mut(index)?.take()?;
        self.free.push(index);
        self.len -= 1;
        Some(value)
    }

    fn iter(&self) -> impl Iterator<Item = &T> + '_ {
        self.entries.iter().flatten()
    }

    fn drain(&mut self) -> impl Iterator<Item = T> + '_ {
        self.free.clear();
        self.len = 0;
        self.entries.drain(..).flatten()
    }
}

struct Engine<R: ModelRunner> {
    runner: R,
    scheduler: Scheduler,
    tokenizer: Arc<Tokenizer>,
    /// Indexed by [`Request::output_slot`].
    live: Slots<LiveRequest>,
    /// How many of `live` have a journey: with none, a step has no interference to report.
    live_journeys: usize,
    commands: Receiver<EngineCommand>,
    waiting: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
    /// [`EngineHandle::is_healthy`]'s flag.
    healthy: Arc<AtomicBool>,
    /// Wakes [`EngineHandle::died`].
    death: tokio::sync::watch::Sender<bool>,
    /// Submissions taken since the last `publish_load`.
    unpublished_admissions: Vec<Admission>,
    steps: u64,
    aborted: u64,
    step_time: Duration,
    model_time: Duration,
    /// The scheduler's latest step number, for journey events between steps.
    scheduler_step: u64,
    step_tracer: StepTracer,
    /// The last steps, for the debug API, kept whatever step tracing samples.
    step_ring: StepRing,
}

impl<R: ModelRunner> Engine<R> {
    fn run(mut self) {
        loop {
            match std::panic::catch_unwind(AssertUnwindSafe(|| self.iterate())) {
                Ok(ControlFlow::Continue(())) => {}
                Ok(ControlFlow::Break(())) => break,
                Err(panic) => {
                    self.die(&panic_message(panic.as_ref()));
                    return;
                }
            }
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

    /// One turn of the loop: commands, then a step if there is work. `Break` once every
    /// handle is gone and nothing is left to do.
    fn iterate(&mut self) -> ControlFlow<()> {
        if !self.scheduler.has_unfinished_requests() {
            // Idle: block until a command comes.
            match self.commands.recv() {
                Ok(command) => self.handle_command(command),
                Err(_) => return ControlFlow::Break(()),
            }
        }
        while let Ok(command) = self.commands.try_recv() {
            self.handle_command(command);
        }
        self.drop_departed_clients();
        self.publish_load();
        if !self.scheduler.has_unfinished_requests() {
            return ControlFlow::Continue(());
        }
        let step_started = Instant::now();
        let mut output = self.scheduler.schedule();
        if output.is_empty() {
            // Nothing fits right now; wait for a command rather than spin.
            match self.commands.recv_timeout(Duration::from_millis(5)) {
                Ok(command) => self.handle_command(command),
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {}
            }
            return ControlFlow::Continue(());
        }
        let traced_step = self.step_tracer.sample();
        if traced_step.is_some() && self.step_tracer.sample_snapshots() {
            self.snapshot_requests(&output);
        }
        let model_time_before = self.model_time;
        let num_finished = self.step(&mut output);
        if let Some(traced_step) = traced_step {
            traced_step.batch_summary(&output.stats, num_finished);
        }
        // Before the loop may block: the gauges must not show finished requests.
        self.publish_load();
        let took = step_started.elapsed();
        self.step_time += took;
        self.step_ring.push(StepSummary::of(
            &output.stats,
            monotonic_seconds(),
            took.as_secs_f64(),
            (self.model_time - model_time_before).as_secs_f64(),
            num_finished,
        ));
        ControlFlow::Continue(())
    }

    /// Runs one scheduled step: run the model, sample, let the scheduler append, let each
    /// processor judge and emit its token, finish what ended. Returns how many requests
    /// finished in it.
    fn step(&mut self, output: &mut SchedulerOutput) -> usize {
        self.steps += 1;
        self.scheduler_step = output.step;
        let stats = &output.stats;
        self.metrics.record_step(
            stats.num_preemptions,
            stats.prefix_cache_queries,
            stats.prefix_cache_hits,
        );
        self.report_scheduling(output);
        self.report_interference(output);

        let mut logits = match self.run_model(output) {
            Ok(logits) => logits,
            Err(error) => return self.fail_sequences(output, &error),
        };
        let sampled = self.sample(output, &mut logits);
        let update = match self.scheduler.update_from_output(output, &sampled) {
            Ok(update) => update,
            Err(error) => {
                // Only a bug gets here (the output is the one just scheduled); the requests
                // are scheduled again next step.
                tracing::error!(%error, "scheduler update failed");
                return 0;
            }
        };
        self.metrics
            .record_generated_tokens(update.new_tokens.len());
        let mut ended = Vec::new();
        for &index in &update.new_tokens {
            let Some(request) = self.scheduler.running_request(index) else {
                continue;
            };
            let Some(live) = self.live.get_mut(request.output_slot()) else {
                continue;
            };
            if let Some(reason) = live.processor.on_token(request, output.step) {
                ended.push((index, reason));
            }
        }
        let finished = self.scheduler.finish_running(&ended);
        for request in &finished {
            self.finish(request, None);
        }
        finished.len()
    }

    /// The model's logits for the batch; a panic inside the model is caught here and fails
    /// the batch, since a backend panic need not mean the engine's own state is broken.
    fn run_model(&mut self, output: &mut SchedulerOutput) -> Result<Logits, ExecuteError> {
        let batch = output.take_forward_batch();
        let started = Instant::now();
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| self.runner.execute(&batch)))
            .unwrap_or_else(|panic| Err(ExecuteError::Panicked(panic_message(panic.as_ref()))));
        self.model_time += started.elapsed();
        result
    }

    /// One token per sequence of the batch, in batch order (0 where none is kept).
    fn sample(&mut self, output: &SchedulerOutput, logits: &mut Logits) -> Vec<u32> {
        let mut sampled = Vec::with_capacity(output.num_sequences());
        for (row, seq) in output.batch().enumerate() {
            let request = self.scheduler.running_request(seq.location.running_index);
            let live = self.live.get_mut(seq.location.output_slot);
            let token = match (request, live) {
                (Some(request), Some(live)) if seq.samples => {
                    live.processor.sample(logits.row_mut(row), request)
                }
                _ => 0,
            };
            sampled.push(token);
        }
        sampled
    }

    /// The model could not compute the batch: the sequences at fault fail (all of them
    /// when the error names none); the others are scheduled again next step, since nothing
    /// of this step was applied. Returns how many requests ended.
    fn fail_sequences(&mut self, output: &SchedulerOutput, error: &ExecuteError) -> usize {
        tracing::error!(step = output.step, %error, "model step failed");
        if !self.runner.can_continue() && self.healthy.swap(false, Ordering::AcqRel) {
            tracing::error!(
                "the model cannot compute any more batches; /health now reports 503, \
                 restart the server"
            );
        }
        let failing: Vec<String> = output
            .batch()
            .enumerate()
            .filter(|(row, _)| {
                error
                    .failed_sequences()
                    .is_none_or(|rows| rows.contains(row))
            })
            .map(|(_, seq)| seq.request_id.to_owned())
            .collect();
        let message = match error.failed_sequences() {
            Some(_) => format!("the model cannot compute this request: {error}"),
            None => "the model failed on this batch".to_string(),
        };
        for request_id in &failing {
            if let Some(request) = self
                .scheduler
                .finish_request(request_id, FinishReason::Error)
            {
                self.finish(&request, Some(message.clone()));
            }
        }
        failing.len()
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
            EngineCommand::Inspect(only, reply) => {
                let _ = reply.send(self.view(only.as_deref()));
            }
            EngineCommand::SetStepTracing(config, reply) => {
                let _ = reply.send(self.step_tracer.set(config));
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

    /// What the debug API shows: the scheduler, the pool, the last steps and the requests
    /// held (oldest first, at most [`MAX_VIEWED_REQUESTS`]), or only the one called `only`.
    fn view(&self, only: Option<&str>) -> EngineView {
        let kv = self.scheduler.kv_cache();
        let prefix = kv.prefix_cache_stats();
        let now = Instant::now();
        let held: Box<dyn Iterator<Item = &Request>> = match only {
            // Once per call, so a search is fine.
            Some(id) => Box::new(self.scheduler.request(id).into_iter()),
            None => Box::new(
                self.scheduler
                    .running_requests()
                    .chain(self.scheduler.waiting_requests()),
            ),
        };
        let mut requests: Vec<RequestView> = held
            .take(MAX_VIEWED_REQUESTS)
            .filter_map(|request| {
                let live = self.live.get(request.output_slot())?;
                let blocks = kv.block_table(request.request_id()).len();
                Some(live.processor.view(request, blocks, now))
            })
            .collect();
        requests.sort_by(|a, b| b.age_s.total_cmp(&a.age_s));
        EngineView {
            scheduler: SchedulerView::of(self.scheduler.config()),
            waiting: self.scheduler.num_waiting(),
            running: self.scheduler.num_running(),
            kv_usage: self.scheduler.kv_usage(),
            free_blocks: kv.num_free_blocks(),
            prefix_cache_queries: prefix.queries,
            prefix_cache_hits: prefix.hits,
            prefix_cache_hit_rate: prefix.hit_rate(),
            steps: self.steps,
            preemptions: self.scheduler.total_preemptions(),
            now: monotonic_seconds(),
            recent_steps: self.step_ring.last(STEP_RING),
            requests,
            num_held: self.scheduler.num_running() + self.scheduler.num_waiting(),
        }
    }

    fn stats(&self) -> EngineStats {
        let kv = self.scheduler.kv_cache();
        EngineStats {
            waiting: self.scheduler.num_waiting(),
            running: self.scheduler.num_running(),
            live_outputs: self.live.len,
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
            journey,
            trace_id,
            journey_trace_id,
        } = request;
        let trace_id = trace_id.as_deref().and_then(|id| {
            let parsed = TraceId::parse(id);
            if parsed.is_none() {
                tracing::debug!(%request_id, "not a W3C trace id: no exemplars");
            }
            parsed
        });
        let processor = OutputProcessor::new(
            &params,
            &prompt_ids,
            self.tokenizer.clone(),
            self.scheduler.max_sequence_len(),
            sender,
            arrival,
        )
        .with_metrics(self.metrics.clone(), trace_id)
        .with_journey_trace_id(journey_trace_id);
        let slot = self.live.next_index();
        let scheduled = Request::new(request_id.clone(), prompt_ids)
            .with_priority(priority)
            .with_arrival(arrival)
            .with_output_slot(slot);
        if let Err(error) = self.scheduler.add_request(scheduled) {
            processor.refuse(error.to_string());
            return;
        }
        let journey = Journey::start(&journey, &span, &request_id, params.max_tokens);
        let mut processor = processor.with_trace(span, journey);
        // Once per request, so a search is fine.
        if let Some(request) = self.scheduler.request(&request_id) {
            processor.on_queued(request, self.scheduler_step);
        }
        self.live_journeys += usize::from(processor.has_journey());
        let inserted = self.live.insert(LiveRequest {
            request_id,
            processor,
        });
        debug_assert_eq!(inserted, slot);
    }

    /// A closed response channel means the client left: abort now so its blocks are freed
    /// before this step is scheduled.
    fn drop_departed_clients(&mut self) {
        let departed: Vec<String> = self
            .live
            .iter()
            .filter(|live| live.processor.is_closed())
            .map(|live| live.request_id.clone())
            .collect();
        for id in departed {
            if let Some(request) = self.scheduler.abort_request(&id) {
                self.finish(&request, None);
            }
        }
    }

    /// `REQUEST_SNAPSHOT`s of the requests scheduled in `output`, before the model runs.
    fn snapshot_requests(&self, output: &SchedulerOutput) {
        let block_size = self.scheduler.kv_cache().block_size();
        for sequence in output.batch() {
            if let Some(request) = self
                .scheduler
                .running_request(sequence.location.running_index)
            {
                step_trace::request_snapshot(output.step, request, &sequence, block_size);
            }
        }
    }

    /// What `schedule()` decided, told to the processors: admissions (first scheduling
    /// time, journey) and preemptions (journey).
    fn report_scheduling(&mut self, output: &SchedulerOutput) {
        let now = Instant::now();
        for new in &output.scheduled_new {
            let request = self.scheduler.running_request(new.location.running_index);
            let live = self.live.get_mut(new.location.output_slot);
            if let (Some(request), Some(live)) = (request, live) {
                live.processor.on_scheduled(request, output.step, now);
            }
        }
        // Preemptions are rare: a search by id is fine.
        for id in &output.preempted {
            if let Some(request) = self.scheduler.request(id) {
                if let Some(live) = self.live.get_mut(request.output_slot()) {
                    live.processor.on_preempted(request, output.step);
                }
            }
        }
    }

    /// Each journey's share of the step it is scheduled in, and the step to each journey
    /// waiting in the queue (the `interference.*` attributes).
    fn report_interference(&mut self, output: &SchedulerOutput) {
        if self.live_journeys == 0 {
            return;
        }
        let stats = &output.stats;
        let batch_sequences = output.num_sequences() as u64;
        let batch_tokens = output.total_num_scheduled_tokens as u64;
        let batch_prefill_tokens = stats.num_prefill_tokens as u64;
        for sequence in output.batch() {
            let Some(live) = self.live.get_mut(sequence.location.output_slot) else {
                continue;
            };
            if !live.processor.has_journey() {
                continue;
            }
            let num_prompt_tokens = self
                .scheduler
                .running_request(sequence.location.running_index)
                .map_or(0, Request::num_prompt_tokens);
            let own_tokens = sequence.token_ids.len();
            let own_prefill_tokens = num_prompt_tokens
                .saturating_sub(sequence.num_computed_tokens)
                .min(own_tokens);
            live.processor.on_step(StepShare {
                batch_sequences,
                batch_tokens,
                batch_prefill_tokens,
                own_tokens: own_tokens as u64,
                own_prefill_tokens: own_prefill_tokens as u64,
            });
        }
        let kv_usage = f64::from(stats.kv_usage);
        for request in self.scheduler.waiting_requests() {
            if let Some(live) = self.live.get_mut(request.output_slot()) {
                live.processor.on_waited(kv_usage);
            }
        }
    }

    /// Ends a request the scheduler has let go of: its processor sends the last text and
    /// the `Finished` event, and is dropped.
    fn finish(&mut self, request: &Request, error: Option<String>) -> Option<FinishedInfo> {
        let slot = request.output_slot();
        // Slots are reused: make sure this one is still the request's.
        let owned = self
            .live
            .get_mut(slot)
            .is_some_and(|live| live.request_id == request.request_id());
        debug_assert!(owned, "{request:?} does not own output slot {slot}");
        if !owned {
            return None;
        }
        let live = self.live.remove(slot)?;
        self.live_journeys -= usize::from(live.processor.has_journey());
        if request
            .finish_reason()
            .is_none_or(|r| r == FinishReason::Abort)
        {
            self.aborted += 1;
        }
        Some(live.processor.finish(request, error, self.scheduler_step))
    }

    /// A panic escaped an iteration: the engine's state can no longer be trusted. Every
    /// request still here fails, the engine reports itself dead, and the thread only
    /// answers commands (refusing new work) until every handle is gone.
    fn die(&mut self, what: &str) {
        tracing::error!(
            panic = what,
            "the engine thread panicked; failing every request. /health now reports 503; \
             restart the server"
        );
        self.healthy.store(false, Ordering::Release);
        self.death.send_replace(true);
        let message = format!("the engine failed: {what}");
        for live in self.live.drain() {
            live.processor.refuse(message.clone());
        }
        self.live_journeys = 0;
        self.waiting.store(0, Ordering::Release);
        self.unpublished_admissions.clear();
        self.metrics.set_load(0, 0, 0.0);
        while let Ok(command) = self.commands.recv() {
            match command {
                EngineCommand::Submit {
                    output, request, ..
                } => {
                    // Only a submission racing the death gets here: the handle refuses
                    // the rest.
                    let info = FinishedInfo::failed(request.prompt_ids.len(), message.clone());
                    let _ = output.send(StreamEvent::Finished(info));
                }
                EngineCommand::Stats(reply) => {
                    let _ = reply.send(EngineStats {
                        steps: self.steps,
                        aborted: self.aborted,
                        ..EngineStats::default()
                    });
                }
                EngineCommand::Abort { .. }
                | EngineCommand::AbortAll
                | EngineCommand::Inspect(..)
                | EngineCommand::SetStepTracing(..) => {}
            }
        }
    }
}

/// What a caught panic said, when it said it with a string.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::RequestStream;
    use crate::metrics::Format;
    use crate::model::{BatchError, ForwardError};
    use crate::sampling::SamplingParams;
    use crate::tokenizer::TINY_VOCAB_SIZE;

    /// What a [`FakeRunner`] does on a given call.
    #[derive(Clone, Copy, Debug, PartialEq)]
    enum Fault {
        /// Panic inside `execute` (caught around the model call).
        PanicInExecute,
        /// Fail, blaming the sequences whose first new token is this id.
        RejectToken(u32),
        /// Fail the batch holding a sequence whose first new token is this id, then panic
        /// when asked whether it can continue: a panic outside the model call, which only
        /// the loop's top catches.
        PanicInCanContinue(u32),
    }

    /// Always predicts byte `A`, except for its fault on the first call (if any);
    /// `broken_by_fault` makes it say it cannot continue, like a model whose cache went down
    /// with a panic.
    struct FakeRunner {
        calls: usize,
        fault: Option<Fault>,
        broken_by_fault: bool,
        /// Set once `PanicInCanContinue` failed a batch.
        failed: bool,
        /// How long each call takes, so that a test can act while a request runs.
        delay: Duration,
    }

    impl ModelRunner for FakeRunner {
        fn execute(&mut self, batch: &crate::model::ForwardBatch) -> Result<Logits, ExecuteError> {
            self.calls += 1;
            std::thread::sleep(self.delay);
            // The sequences whose first new token is `bad`.
            let starting_with = |bad: u32| {
                let mut start = 0;
                let mut sequences = Vec::new();
                for (index, seq) in batch.sequences.iter().enumerate() {
                    if batch.token_ids[start] == bad {
                        sequences.push(index);
                    }
                    start += seq.num_new_tokens;
                }
                sequences
            };
            match self.fault {
                Some(Fault::PanicInExecute) if self.calls == 1 => panic!("backend exploded"),
                Some(Fault::PanicInCanContinue(bad)) if !starting_with(bad).is_empty() => {
                    self.failed = true;
                    return Err(ExecuteError::Batch(ForwardError::Readback("lost".into())));
                }
                Some(Fault::RejectToken(bad)) => {
                    let sequences = starting_with(bad);
                    if let Some(&index) = sequences.first() {
                        return Err(ExecuteError::Sequences {
                            sequences,
                            source: ForwardError::Batch(BatchError::EmptySequence { index }),
                        });
                    }
                }
                _ => {}
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
            if self.failed {
                panic!("the runner's health check exploded");
            }
            !self.broken_by_fault
        }
    }

    /// An engine over a [`FakeRunner`], serving the tiny tokenizer as model `name`.
    fn start_fake(name: &str, fault: Option<Fault>, broken_by_fault: bool) -> RunningEngine {
        start_fake_with_delay(name, fault, broken_by_fault, Duration::ZERO)
    }

    fn start_fake_with_delay(
        name: &str,
        fault: Option<Fault>,
        broken_by_fault: bool,
        delay: Duration,
    ) -> RunningEngine {
        let runner = FakeRunner {
            calls: 0,
            fault,
            broken_by_fault,
            failed: false,
            delay,
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
        request_with_prompt(id, vec![1, 2, 3])
    }

    fn request_with_prompt(id: &str, prompt_ids: Vec<u32>) -> EngineRequest {
        let params = SamplingParams {
            max_tokens: 3,
            ..SamplingParams::greedy()
        };
        EngineRequest::new(id, prompt_ids, params)
    }

    async fn finish(mut stream: RequestStream) -> (String, FinishedInfo) {
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
        let engine = start_fake("flaky", Some(Fault::PanicInExecute), false);
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
        let engine = start_fake("broken", Some(Fault::PanicInExecute), true);
        assert!(engine.handle.is_healthy());
        let (_, failed) = finish(engine.handle.submit(request("first")).unwrap()).await;
        assert_eq!(failed.reason, FinishReason::Error);
        assert!(!engine.handle.is_healthy());
        assert!(!engine.handle.has_died(), "unhealthy, not dead");
        engine.shutdown();
    }

    /// Three requests share every step; the model cannot compute the one whose prompt starts
    /// with token 99. That one fails alone; the others are computed again without it and
    /// finish as they would have.
    #[tokio::test]
    async fn a_failing_sequence_fails_alone_and_the_rest_of_its_batch_completes() {
        let engine = start_fake("picky", Some(Fault::RejectToken(99)), false);
        let streams = [
            engine
                .handle
                .submit(request_with_prompt("good-1", vec![1, 2, 3])),
            engine
                .handle
                .submit(request_with_prompt("bad", vec![99, 2, 3])),
            engine
                .handle
                .submit(request_with_prompt("good-2", vec![4, 5, 6])),
        ]
        .map(Result::unwrap);
        let mut results = Vec::new();
        for stream in streams {
            results.push(finish(stream).await);
        }
        let [(good_1, good_1_info), (bad, bad_info), (good_2, good_2_info)] =
            <[_; 3]>::try_from(results).unwrap();
        assert_eq!(bad_info.reason, FinishReason::Error);
        assert!(bad.is_empty());
        assert!(
            bad_info.error.as_deref().unwrap().contains("sequence"),
            "{bad_info:?}"
        );
        for (text, info) in [(good_1, good_1_info), (good_2, good_2_info)] {
            assert_eq!((text.as_str(), info.reason), ("AAA", FinishReason::Length));
            assert_eq!(info.completion_tokens, 3);
        }
        assert!(engine.handle.is_healthy());
        let stats = engine.handle.stats().await.unwrap();
        assert!(
            stats.scheduler_empty && stats.live_outputs == 0,
            "{stats:?}"
        );
        engine.shutdown();
    }

    /// The drill: a panic outside the model call reaches the loop's top. Every request in
    /// the engine fails (a bystander mid-generation too), the engine says it is dead and
    /// unhealthy, and refuses new work.
    async fn engine_panic_drill(engine: RunningEngine, panicking: EngineRequest) {
        // Long enough (50 tokens at 5 ms a step) to be still running when the panic comes.
        let mut bystander = engine
            .handle
            .submit(EngineRequest {
                params: SamplingParams {
                    max_tokens: 50,
                    ..SamplingParams::greedy()
                },
                ..request("bystander")
            })
            .unwrap();
        assert!(matches!(
            bystander.next().await,
            Some(StreamEvent::Delta { .. })
        ));
        let culprit = engine.handle.submit(panicking).unwrap();
        let (_, culprit) = finish(culprit).await;
        let (_, bystander) = finish(bystander).await;
        for info in [&culprit, &bystander] {
            assert_eq!(info.reason, FinishReason::Error, "{info:?}");
            assert!(
                info.error.as_deref().unwrap().contains("the engine failed"),
                "{info:?}"
            );
        }
        tokio::time::timeout(Duration::from_secs(5), engine.handle.died())
            .await
            .expect("the engine reports its death");
        assert!(engine.handle.has_died() && !engine.handle.is_healthy());
        assert_eq!(
            engine.handle.submit(request("after")).err(),
            Some(crate::engine::SubmitError::EngineDead)
        );
        // Still answers (it does not hang a caller), and ends when the handles go.
        assert!(engine.handle.stats().await.is_some());
        engine.shutdown();
    }

    #[tokio::test]
    async fn a_panic_in_the_scheduler_kills_the_engine_visibly() {
        let engine = start_fake_with_delay("drill", None, false, Duration::from_millis(5));
        let panicking = request_with_prompt(
            "culprit",
            super::super::scheduler::PANIC_IN_SCHEDULE.to_vec(),
        );
        engine_panic_drill(engine, panicking).await;
    }

    #[tokio::test]
    async fn a_panic_from_the_runner_outside_the_model_call_kills_the_engine_visibly() {
        let engine = start_fake_with_delay(
            "drill",
            Some(Fault::PanicInCanContinue(77)),
            false,
            Duration::from_millis(5),
        );
        engine_panic_drill(engine, request_with_prompt("culprit", vec![77, 1])).await;
    }
}
