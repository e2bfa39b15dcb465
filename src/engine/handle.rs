//! The engine's front door: what the API layer sends in and what streams back.
//!
//! The engine runs on its own thread and owns all scheduling state. Callers hold an
//! [`EngineHandle`]; each submitted request gets its own [`RequestStream`]. Dropping the
//! stream (the client went away) aborts the request at the engine's next step.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;

use super::inspect::EngineView;
use super::journey::{JourneyMode, RecordedJourney};
use super::retention::RetentionReason;
use super::step_trace::StepTracingConfig;
pub use super::types::EngineTimings;
use super::types::{EngineStats, FinishReason};
use crate::metrics::Metrics;
use crate::sampling::SamplingParams;
use crate::tokenizer::Tokenizer;

/// A validated request, ready for the engine. Its `Debug` prints counts, never the prompt.
#[derive(Clone)]
pub struct EngineRequest {
    /// Unique id (also the API response id).
    pub request_id: String,
    /// Prompt token ids, already checked against the vocabulary and context.
    pub prompt_ids: Vec<u32>,
    /// Sampling and stopping, already validated.
    pub params: SamplingParams,
    /// Lower runs first under `--scheduling-policy priority` (vLLM's convention).
    pub priority: i64,
    /// When the API received it.
    pub arrival: Instant,
    /// How this request's journey is told: not at all, live, or recorded for tail
    /// retention (decided once, at the API).
    pub journey: JourneyMode,
    /// The W3C trace id (32 hex digits) of the request's trace, when it has one: latency
    /// metrics show it as an exemplar. The API's journey sets it.
    pub trace_id: Option<String>,
    /// The trace id of the request's journey whenever journey tracing follows it (live or
    /// recorded), for the debug API; unlike `trace_id`, never shown on `/metrics`.
    pub journey_trace_id: Option<String>,
}

impl EngineRequest {
    /// A request for `prompt_ids` with `params`, arriving now, priority 0, untraced: the
    /// API fills the rest in when it has them.
    pub fn new(
        request_id: impl Into<String>,
        prompt_ids: Vec<u32>,
        params: SamplingParams,
    ) -> Self {
        Self {
            request_id: request_id.into(),
            prompt_ids,
            params,
            priority: 0,
            arrival: Instant::now(),
            journey: JourneyMode::Off,
            trace_id: None,
            journey_trace_id: None,
        }
    }
}

impl fmt::Debug for EngineRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EngineRequest")
            .field("request_id", &self.request_id)
            .field("num_prompt_tokens", &self.prompt_ids.len())
            .field("max_tokens", &self.params.max_tokens)
            .field("num_stop_strings", &self.params.stop.len())
            .field("priority", &self.priority)
            .field("journey", &self.journey)
            .finish_non_exhaustive()
    }
}

/// Log-probability information for one generated token.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenLogprob {
    /// The token.
    pub token_id: u32,
    /// Its log-probability.
    pub logprob: f32,
    /// The most likely alternatives, most likely first.
    pub top: Vec<(u32, f32)>,
}

/// Counts reported when a request ends.
#[derive(Clone, Debug, PartialEq)]
pub struct FinishedInfo {
    /// Why it ended.
    pub reason: FinishReason,
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Generated tokens.
    pub completion_tokens: usize,
    /// Prompt tokens served from the prefix cache.
    pub cached_prompt_tokens: usize,
    /// Times the request was preempted.
    pub num_preemptions: u32,
    /// What went wrong, for `FinishReason::Error`.
    pub error: Option<String>,
    /// Where the request's time went inside the engine; `None` for phases it never reached.
    pub timings: EngineTimings,
    /// A recorded journey (tail retention), for the API to replay if it is kept.
    pub journey: Option<Box<RecordedJourney>>,
    /// Why the engine keeps the recorded journey, if it does.
    pub kept: Option<RetentionReason>,
}

impl FinishedInfo {
    /// A request of `prompt_tokens` that failed before it produced anything.
    pub fn failed(prompt_tokens: usize, error: String) -> Self {
        Self {
            reason: FinishReason::Error,
            prompt_tokens,
            completion_tokens: 0,
            cached_prompt_tokens: 0,
            num_preemptions: 0,
            error: Some(error),
            timings: EngineTimings::default(),
            journey: None,
            kept: None,
        }
    }
}

/// One message on a request's stream. Its `Debug` prints counts, never the text.
#[derive(Clone, PartialEq)]
pub enum StreamEvent {
    /// New output: text safe to show (never half a character, never part of a stop string)
    /// and the token ids it came from.
    Delta {
        /// New text (may be empty while text is held back).
        text: String,
        /// Tokens generated since the previous delta.
        token_ids: Vec<u32>,
        /// One entry per token when logprobs were requested.
        logprobs: Vec<TokenLogprob>,
    },
    /// The last message.
    Finished(FinishedInfo),
}

impl fmt::Debug for StreamEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StreamEvent::Delta {
                text,
                token_ids,
                logprobs,
            } => f
                .debug_struct("Delta")
                .field("text_bytes", &text.len())
                .field("num_tokens", &token_ids.len())
                .field("num_logprobs", &logprobs.len())
                .finish(),
            // Counts and the reason; an error message names no user text.
            StreamEvent::Finished(info) => f.debug_tuple("Finished").field(info).finish(),
        }
    }
}

/// Why the engine refused a request outright.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    /// `--max-waiting-requests` requests are already waiting.
    #[error("the server is at capacity ({0} requests waiting); retry later")]
    QueueFull(usize),
    /// The engine is shutting down or gone.
    #[error("the server is shutting down")]
    ShuttingDown,
    /// The engine thread failed (a panic): nothing more will run until a restart.
    #[error("the engine failed and cannot take requests; the server must be restarted")]
    EngineDead,
}

/// Messages from handles to the engine thread.
#[derive(Debug)]
// Submits dominate the traffic and are moved once; boxing them would buy nothing.
#[allow(clippy::large_enum_variant)]
pub enum EngineCommand {
    /// Start a request; its output goes to `output`.
    Submit {
        /// The request.
        request: EngineRequest,
        /// Where its events go.
        output: mpsc::UnboundedSender<StreamEvent>,
        /// The caller's span, so engine events join the request's trace.
        span: tracing::Span,
        /// Counts the request against `--max-waiting-requests` until the engine's published
        /// waiting count includes it; an engine keeps it until then.
        admission: Admission,
    },
    /// Stop a request (its stream gets `Finished` with `Abort`).
    Abort {
        /// Which one.
        request_id: String,
    },
    /// Stop every request (shutdown timeout).
    AbortAll,
    /// Report what the engine tracks.
    Stats(tokio::sync::oneshot::Sender<EngineStats>),
    /// Show what the engine holds now (the debug API): every request, or only the one with
    /// this id.
    Inspect(Option<String>, tokio::sync::oneshot::Sender<EngineView>),
    /// Change step tracing's rates from the next step; answers with the previous ones.
    SetStepTracing(
        StepTracingConfig,
        tokio::sync::oneshot::Sender<Option<StepTracingConfig>>,
    ),
}

/// A submitted request that the engine's published waiting count does not include yet.
///
/// The engine publishes its waiting count between steps; a step can take seconds, and every
/// request submitted meanwhile would pass an admission check against the stale count. So each
/// admission counts itself until dropped, and the engine drops it only after publishing a
/// count that includes the request: the check may briefly count a request twice (refusing
/// early), never zero times.
#[derive(Debug)]
pub struct Admission(Arc<AtomicUsize>);

impl Drop for Admission {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Static facts about the served model.
#[derive(Clone, Debug)]
pub struct ModelInfo {
    /// The name clients use (`--served-model-name`, or the file name).
    pub name: String,
    /// Longest prompt + output.
    pub max_context: usize,
    /// Vocabulary size (token ids must be below it).
    pub vocab_size: usize,
}

/// A cheap, cloneable way to talk to the engine.
#[derive(Clone, Debug)]
pub struct EngineHandle {
    commands: std::sync::mpsc::Sender<EngineCommand>,
    waiting: Arc<AtomicUsize>,
    /// Live [`Admission`]s: submitted requests `waiting` does not count yet.
    admitted: Arc<AtomicUsize>,
    max_waiting: usize,
    accepting: Arc<AtomicBool>,
    /// False once the model can no longer compute (its cache was lost with a failed step),
    /// or the engine thread died.
    healthy: Arc<AtomicBool>,
    /// Turns true once, when the engine thread dies (a panic it caught at its top).
    death: Arc<tokio::sync::watch::Sender<bool>>,
    tokenizer: Arc<Tokenizer>,
    model: Arc<ModelInfo>,
    metrics: Arc<Metrics>,
}

impl EngineHandle {
    /// A handle over a command channel; `waiting` is the engine's count of waiting requests.
    /// Its [`Metrics`] start at zero, labelled with the model's name.
    pub fn new(
        commands: std::sync::mpsc::Sender<EngineCommand>,
        waiting: Arc<AtomicUsize>,
        max_waiting: usize,
        tokenizer: Arc<Tokenizer>,
        model: ModelInfo,
    ) -> Self {
        Self {
            commands,
            waiting,
            admitted: Arc::new(AtomicUsize::new(0)),
            max_waiting,
            accepting: Arc::new(AtomicBool::new(true)),
            healthy: Arc::new(AtomicBool::new(true)),
            death: Arc::new(tokio::sync::watch::Sender::new(false)),
            tokenizer,
            metrics: Arc::new(Metrics::new(&model.name, model.max_context)),
            model: Arc::new(model),
        }
    }

    /// Sends `request` to the engine.
    pub fn submit(&self, request: EngineRequest) -> Result<RequestStream, SubmitError> {
        if self.has_died() {
            return Err(SubmitError::EngineDead);
        }
        if !self.is_accepting() {
            return Err(SubmitError::ShuttingDown);
        }
        // Count this request first, then check: two racing submissions cannot both see room
        // for one.
        self.admitted.fetch_add(1, Ordering::AcqRel);
        let admission = Admission(self.admitted.clone());
        let queued =
            self.waiting.load(Ordering::Acquire) + self.admitted.load(Ordering::Acquire) - 1;
        if queued >= self.max_waiting {
            return Err(SubmitError::QueueFull(queued));
        }
        let (output, events) = mpsc::unbounded_channel();
        let request_id = request.request_id.clone();
        self.commands
            .send(EngineCommand::Submit {
                request,
                output,
                span: tracing::Span::current(),
                admission,
            })
            .map_err(|_| SubmitError::ShuttingDown)?;
        Ok(RequestStream {
            request_id,
            events,
            commands: self.commands.clone(),
            finished: false,
        })
    }

    /// The served model's tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The served model.
    pub fn model(&self) -> &ModelInfo {
        &self.model
    }

    /// The metrics the engine feeds, for `GET /metrics`.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Whether new requests are taken (false once shutdown began).
    pub fn is_accepting(&self) -> bool {
        self.accepting.load(Ordering::Acquire)
    }

    /// Whether the model can still compute. False after a failed step took the model's
    /// state with it (the KV cache lost in a backend panic): every later request would fail
    /// too, so `/health` turns 503 and an orchestrator can restart the server.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    /// Records that the model can no longer compute (see [`Self::is_healthy`]).
    pub fn mark_unhealthy(&self) {
        self.healthy.store(false, Ordering::Release);
    }

    /// The flag behind [`Self::is_healthy`], for the engine thread, which must not hold a
    /// handle (its command sender would keep the engine's own channel open).
    pub(crate) fn health_flag(&self) -> Arc<AtomicBool> {
        self.healthy.clone()
    }

    /// The sender behind [`Self::died`], for the engine thread (a sender, not a handle: see
    /// [`Self::health_flag`]).
    pub(crate) fn death_notifier(&self) -> tokio::sync::watch::Sender<bool> {
        (*self.death).clone()
    }

    /// Whether the engine thread died (see [`Self::died`]).
    pub fn has_died(&self) -> bool {
        *self.death.borrow()
    }

    /// Resolves once the engine thread has died: a panic escaped one of its iterations,
    /// every request in it was failed, and it takes no more work. `waypoint serve` drains
    /// and exits non-zero then, so that an orchestrator restarts it. Never resolves for an
    /// engine that stops normally.
    pub async fn died(&self) {
        let mut watching = self.death.subscribe();
        if watching.wait_for(|&dead| dead).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Aborts every request in the engine (used when the shutdown grace period ends).
    pub fn abort_all(&self) {
        let _ = self.commands.send(EngineCommand::AbortAll);
    }

    /// What the engine tracks right now, or `None` if it is gone.
    pub async fn stats(&self) -> Option<EngineStats> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.commands.send(EngineCommand::Stats(reply)).ok()?;
        answer.await.ok()
    }

    /// What the engine holds now, with every request or (`only`) the one with that id;
    /// `None` if the engine is gone. Answered between steps.
    pub async fn inspect(&self, only: Option<String>) -> Option<EngineView> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.commands
            .send(EngineCommand::Inspect(only, reply))
            .ok()?;
        answer.await.ok()
    }

    /// Sets step tracing's rates from the next step. `Err(())` if the engine is gone;
    /// `Ok(None)` if step tracing is off (nothing changed); otherwise the previous rates.
    pub async fn set_step_tracing(
        &self,
        config: StepTracingConfig,
    ) -> Result<Option<StepTracingConfig>, ()> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.commands
            .send(EngineCommand::SetStepTracing(config, reply))
            .map_err(drop)?;
        answer.await.map_err(drop)
    }

    /// Refuses new requests from now on.
    pub fn stop_accepting(&self) {
        self.accepting.store(false, Ordering::Release);
    }
}

/// The events of one request. Dropping it before `Finished` aborts the request.
#[derive(Debug)]
pub struct RequestStream {
    request_id: String,
    events: mpsc::UnboundedReceiver<StreamEvent>,
    commands: std::sync::mpsc::Sender<EngineCommand>,
    finished: bool,
}

impl RequestStream {
    /// The request's id.
    pub fn request_id(&self) -> &str {
        &self.request_id
    }

    /// The next event, or `None` once the request finished.
    pub async fn next(&mut self) -> Option<StreamEvent> {
        if self.finished {
            return None;
        }
        let event = self.events.recv().await;
        match &event {
            Some(StreamEvent::Finished(_)) | None => self.finished = true,
            Some(StreamEvent::Delta { .. }) => {}
        }
        event
    }
}

impl Drop for RequestStream {
    fn drop(&mut self) {
        if !self.finished {
            // The engine also notices the closed channel; the explicit abort frees the
            // request's blocks at the next step even if it has nothing to send yet.
            let _ = self.commands.send(EngineCommand::Abort {
                request_id: std::mem::take(&mut self.request_id),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(id: &str) -> EngineRequest {
        EngineRequest::new(id, vec![1, 2, 3], SamplingParams::greedy())
    }

    /// While the engine is busy with a step it publishes no new waiting count; submissions
    /// meanwhile must still stop at `max_waiting`.
    #[test]
    fn debug_prints_no_prompt_and_no_text() {
        let request = EngineRequest::new(
            "visible-id",
            vec![424_242, 171_717],
            SamplingParams {
                stop: vec!["secret stop".into()],
                ..SamplingParams::greedy()
            },
        );
        let delta = StreamEvent::Delta {
            text: "secret text".into(),
            token_ids: vec![424_242],
            logprobs: Vec::new(),
        };
        let printed = format!("{request:?} {delta:?}");
        assert!(printed.contains("visible-id"), "{printed}");
        for secret in ["424242", "171717", "secret"] {
            assert!(!printed.contains(secret), "{printed}");
        }
    }

    #[test]
    fn admission_counts_submissions_the_engine_has_not_published() {
        let (commands, engine_side) = std::sync::mpsc::channel();
        let published_waiting = Arc::new(AtomicUsize::new(1));
        let handle = EngineHandle::new(
            commands,
            published_waiting.clone(),
            3,
            Arc::new(Tokenizer::tiny()),
            ModelInfo {
                name: "m".into(),
                max_context: 16,
                vocab_size: 300,
            },
        );
        let _first = handle.submit(request("a")).unwrap();
        let _second = handle.submit(request("b")).unwrap();
        // One published + two in the channel: full.
        assert!(matches!(
            handle.submit(request("c")),
            Err(SubmitError::QueueFull(3))
        ));
        // The engine takes both, publishes a count that includes them, then lets go of their
        // admissions: still full.
        let taken: Vec<EngineCommand> = engine_side.try_iter().collect();
        assert_eq!(taken.len(), 2);
        published_waiting.store(3, Ordering::Release);
        drop(taken);
        assert!(handle.submit(request("d")).is_err());
        // Two start running: room for two more, not three.
        published_waiting.store(1, Ordering::Release);
        let _third = handle.submit(request("e")).unwrap();
        let _fourth = handle.submit(request("f")).unwrap();
        assert!(handle.submit(request("g")).is_err());
    }
}
