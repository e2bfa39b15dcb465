//! Journey events: each traced request's lifecycle in the engine, as `tracing` events.
//!
//! Every event goes to target `waypoint::journey` at DEBUG level, inside the request's
//! `llm_core` span, with typed fields (the contract is in `docs/JOURNEY_TRACING.md`):
//! `event.type`, `ts.monotonic`, `scheduler.step`, `phase`, `prefill.done_tokens`,
//! `prefill.total_tokens`, `decode.done_tokens`, `decode.max_tokens`, `num_preemptions`, plus
//! `schedule.kind` on SCHEDULED and `finish.status` on FINISHED. When the request ends, the
//! span gets its interference attributes ([`Interference`]).
//!
//! A journey is either live (head-sampled, forced, or under a sampled parent: each event is
//! emitted as it happens) or recorded (tail retention: each event is kept in memory as a
//! [`CoreEvent`], and the whole journey is replayed through the same [`emit`] once it is
//! kept, with its recorded times; see [`super::retention`]). Either way a journey holds at
//! most [`MAX_JOURNEY_EVENTS`] events; the rest are counted in a closing `TRUNCATED` event.
//! Nothing here knows about OpenTelemetry; layers translate the events. A request that is
//! neither traced nor recorded has no [`Journey`], so it costs one `Option` check per point.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tracing::field::Empty;
use tracing::Span;

use super::request::{Request, RequestStatus};
use super::retention::{KeepRules, Outcome, RetentionReason};
use super::types::{EngineTimings, FinishReason};

/// Target of every journey event.
pub const TARGET: &str = "waypoint::journey";

/// Name of the per-request engine span.
pub const CORE_SPAN_NAME: &str = "llm_core";

/// Most events one journey span holds, `TRUNCATED` included, unless the span event limit
/// is lower ([`fit_journeys_to_span_limit`]).
pub const MAX_JOURNEY_EVENTS: usize = 64;

/// The bound in force: [`MAX_JOURNEY_EVENTS`], or the exporter's span event limit if lower.
static JOURNEY_EVENT_BOUND: AtomicUsize = AtomicUsize::new(MAX_JOURNEY_EVENTS);

/// Fits journeys to a per-span event limit of `limit` (at least 2: `FINISHED` and
/// `TRUNCATED`), so that the SDK never drops a journey event silently: past the bound, a
/// journey counts what it leaves out in `TRUNCATED`. Set once, before serving.
pub fn fit_journeys_to_span_limit(limit: usize) {
    JOURNEY_EVENT_BOUND.store(limit.clamp(2, MAX_JOURNEY_EVENTS), Ordering::Relaxed);
}

/// Preemptions described one by one in `interference.preemptions`; later ones are counted
/// in `num_preemptions` only.
const MAX_DESCRIBED_PREEMPTIONS: usize = 8;

/// Seconds on the process's monotonic clock: the clock `waypoint-layers` maps to wall time
/// through its one anchor per process, so exported timestamps match `ts.monotonic`.
pub use waypoint_layers::{monotonic_seconds, monotonic_seconds_at};

/// Private span fields of a replayed span (its true start, end and ids), which the
/// telemetry turns into the span's own and strips (defined and read there).
pub mod replay_fields {
    pub use crate::telemetry::replay::{END, PREFIX, SPAN_ID, START, TRACE_ID};
}

/// Journeys recorded for tail retention and not yet decided, process-wide, and the bytes
/// their records hold (the `waypoint_journeys_in_memory` gauges).
static IN_MEMORY: AtomicUsize = AtomicUsize::new(0);
static IN_MEMORY_BYTES: AtomicUsize = AtomicUsize::new(0);

/// Journeys recorded for tail retention and alive now, and their bytes.
pub fn journeys_in_memory() -> (usize, usize) {
    (
        IN_MEMORY.load(Ordering::Relaxed),
        IN_MEMORY_BYTES.load(Ordering::Relaxed),
    )
}

/// One part of a recorded journey in [`journeys_in_memory`], from its creation to its drop.
#[derive(Debug)]
pub struct MemoryTally {
    bytes: usize,
    /// Whether this part counts the journey itself (one part per journey does).
    counts_journey: bool,
}

impl MemoryTally {
    /// The part that counts a journey.
    pub fn journey() -> Self {
        IN_MEMORY.fetch_add(1, Ordering::Relaxed);
        Self {
            bytes: 0,
            counts_journey: true,
        }
    }

    /// Another part of a journey, counted in bytes only.
    pub fn part() -> Self {
        Self {
            bytes: 0,
            counts_journey: false,
        }
    }

    /// The part now holds `bytes`.
    pub fn set(&mut self, bytes: usize) {
        if bytes >= self.bytes {
            IN_MEMORY_BYTES.fetch_add(bytes - self.bytes, Ordering::Relaxed);
        } else {
            IN_MEMORY_BYTES.fetch_sub(self.bytes - bytes, Ordering::Relaxed);
        }
        self.bytes = bytes;
    }
}

/// A copy holds its bytes too (counted as a part, not as another journey).
impl Clone for MemoryTally {
    fn clone(&self) -> Self {
        let mut copy = Self::part();
        copy.set(self.bytes);
        copy
    }
}

/// Bookkeeping, not content: two records with the same content are equal.
impl PartialEq for MemoryTally {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Drop for MemoryTally {
    fn drop(&mut self) {
        IN_MEMORY_BYTES.fetch_sub(self.bytes, Ordering::Relaxed);
        if self.counts_journey {
            IN_MEMORY.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// How the API wants a request's engine journey told.
#[derive(Clone, Debug, Default)]
pub enum JourneyMode {
    /// Not at all.
    #[default]
    Off,
    /// Live, under the span current at submission (the API's `llm_request`), exported
    /// for this reason (head, forced or parent).
    Live(RetentionReason),
    /// Recorded, judged by the request's own rules when it ends.
    Recorded(Arc<TailRetention>),
}

/// What a recorded journey shares between the API and the engine.
#[derive(Debug, Default)]
pub struct TailRetention {
    /// The rules the request arrived under.
    pub rules: KeepRules,
    /// Where the two halves of a journey whose client left meet (see [`Self::client_left`]).
    orphan: Mutex<Orphan>,
}

/// The half of an abandoned journey that arrived first.
#[derive(Debug, Default)]
struct Orphan {
    /// The API's replayed `llm_request` span, and its end.
    parent: Option<(Span, f64)>,
    /// The engine's record.
    record: Option<RecordedJourney>,
}

impl TailRetention {
    /// Retention under `rules`.
    pub fn new(rules: KeepRules) -> Self {
        Self {
            rules,
            orphan: Mutex::default(),
        }
    }

    /// The API side of a request whose client left: `parent` is its replayed `llm_request`
    /// span, which ended at `ended`. The engine's record, if it is already here, is replayed
    /// under it now; otherwise [`Self::orphaned`] replays it when it comes.
    pub fn client_left(&self, parent: Span, ended: f64) {
        let mut orphan = self.orphan.lock().unwrap_or_else(PoisonError::into_inner);
        match orphan.record.take() {
            Some(record) => record.replay_orphan(&parent, ended),
            None => orphan.parent = Some((parent, ended)),
        }
    }

    /// The engine side of a request that ended with nobody reading its stream: an aborted
    /// request is always kept, so its record is replayed under the API's span, now or
    /// when [`Self::client_left`] brings it.
    pub fn orphaned(&self, record: RecordedJourney) {
        let mut orphan = self.orphan.lock().unwrap_or_else(PoisonError::into_inner);
        match orphan.parent.take() {
            Some((parent, ended)) => record.replay_orphan(&parent, ended),
            None => orphan.record = Some(record),
        }
    }
}

/// One event of a journey, as recorded.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct CoreEvent {
    /// `event.type`.
    pub kind: &'static str,
    /// `ts.monotonic`.
    pub ts: f64,
    /// `scheduler.step`.
    pub step: u64,
    /// `phase`.
    pub phase: &'static str,
    /// `prefill.done_tokens`.
    pub prefill_done: u64,
    /// `prefill.total_tokens`.
    pub prefill_total: u64,
    /// `decode.done_tokens`.
    pub decode_done: u64,
    /// `num_preemptions`.
    pub num_preemptions: u64,
    /// `schedule.kind` (SCHEDULED) or `finish.status` (FINISHED).
    pub detail: Option<&'static str>,
}

/// One preemption, as `interference.preemptions` describes it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Preemption {
    /// The step that preempted it.
    pub step: u64,
    /// When (monotonic seconds).
    pub at: f64,
    /// Tokens it had computed, lost with its blocks.
    pub tokens_lost: u64,
    /// Seconds until it was scheduled again (none if it never was).
    pub resumed_after: Option<f64>,
    /// Tokens computed again after it resumed (lost minus prefix-cache hits on resume).
    pub tokens_recomputed: Option<u64>,
}

/// What a request shared its steps with, accumulated step by step (the `interference.*`
/// attributes of `llm_core`, documented in `docs/JOURNEY_TRACING.md`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Interference {
    /// Steps it was scheduled in.
    pub steps_scheduled: u64,
    /// Steps that ran while it waited in the queue.
    pub steps_waited: u64,
    /// Prompt tokens of other requests computed in its steps.
    pub prefill_tokens_of_others: u64,
    /// Other requests in its steps, summed over its steps.
    pub shared_requests: u64,
    /// Tokens of other requests in its steps, summed over its steps.
    pub shared_tokens: u64,
    /// KV-cache usage (0..1) summed over the steps it waited in.
    pub kv_usage_waiting_sum: f64,
    /// The highest KV-cache usage while it waited.
    pub kv_usage_waiting_max: f64,
    /// Its preemptions, the first [`MAX_DESCRIBED_PREEMPTIONS`].
    pub preemptions: Vec<Preemption>,
}

/// One step as a scheduled request saw it: the batch's totals and its own share.
#[derive(Clone, Copy, Debug)]
pub struct StepShare {
    /// Sequences in the batch.
    pub batch_sequences: u64,
    /// Tokens computed in the step.
    pub batch_tokens: u64,
    /// Prompt tokens computed in the step.
    pub batch_prefill_tokens: u64,
    /// This request's tokens in the step.
    pub own_tokens: u64,
    /// This request's prompt tokens in the step.
    pub own_prefill_tokens: u64,
}

impl Interference {
    fn scheduled_in(&mut self, share: StepShare) {
        self.steps_scheduled += 1;
        self.shared_requests += share.batch_sequences.saturating_sub(1);
        self.shared_tokens += share.batch_tokens.saturating_sub(share.own_tokens);
        self.prefill_tokens_of_others += share
            .batch_prefill_tokens
            .saturating_sub(share.own_prefill_tokens);
    }

    fn waited_in(&mut self, kv_usage: f64) {
        self.steps_waited += 1;
        self.kv_usage_waiting_sum += kv_usage;
        self.kv_usage_waiting_max = self.kv_usage_waiting_max.max(kv_usage);
    }

    fn mean_per_step(&self, total: u64) -> f64 {
        if self.steps_scheduled == 0 {
            0.0
        } else {
            total as f64 / self.steps_scheduled as f64
        }
    }

    /// `interference.mean_shared_requests`: other sequences per step it was in.
    pub fn mean_shared_requests(&self) -> f64 {
        self.mean_per_step(self.shared_requests)
    }

    /// `interference.mean_shared_tokens`: other requests' tokens per step it was in.
    pub fn mean_shared_tokens(&self) -> f64 {
        self.mean_per_step(self.shared_tokens)
    }

    /// `interference.kv_usage_waiting_mean`: KV-cache usage over the steps it waited in (0
    /// if none).
    pub fn kv_usage_waiting_mean(&self) -> f64 {
        self.kv_usage_waiting_sum / self.steps_waited.max(1) as f64
    }

    /// `interference.preemptions`: a JSON array, one object per described preemption.
    fn preemptions_json(&self) -> String {
        let items: Vec<_> = self
            .preemptions
            .iter()
            .map(|p| {
                serde_json::json!({
                    "step": p.step,
                    "tokens_lost": p.tokens_lost,
                    "resumed_after_s": p.resumed_after,
                    "tokens_recomputed": p.tokens_recomputed,
                })
            })
            .collect();
        serde_json::Value::Array(items).to_string()
    }
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

impl CoreEvent {
    fn of(kind: &'static str, request: &Request, step: u64, detail: Option<&'static str>) -> Self {
        Self {
            kind,
            ts: monotonic_seconds(),
            step,
            phase: phase(request),
            prefill_done: request
                .num_computed_tokens()
                .min(request.num_prompt_tokens()) as u64,
            prefill_total: request.num_prompt_tokens() as u64,
            decode_done: request.num_output_tokens() as u64,
            num_preemptions: u64::from(request.num_preemptions()),
            detail,
        }
    }
}

/// Emits `event` of request `request_id` (which may generate `max_tokens`) on `span`.
pub fn emit(span: &Span, request_id: &str, max_tokens: u64, event: &CoreEvent) {
    macro_rules! journey_event {
        ($($extra:tt)*) => {
            tracing::event!(
                target: TARGET,
                parent: span,
                tracing::Level::DEBUG,
                request_id,
                event.type = event.kind,
                ts.monotonic = event.ts,
                scheduler.step = event.step,
                phase = event.phase,
                prefill.done_tokens = event.prefill_done,
                prefill.total_tokens = event.prefill_total,
                decode.done_tokens = event.decode_done,
                decode.max_tokens = max_tokens,
                num_preemptions = event.num_preemptions,
                $($extra)*
                "journey {}", event.kind
            )
        };
    }
    match (event.kind, event.detail) {
        ("SCHEDULED", Some(kind)) => journey_event!(schedule.kind = kind,),
        ("FINISHED", Some(status)) => journey_event!(finish.status = status,),
        _ => journey_event!(),
    }
}

/// Opens an `llm_core` span under `parent`, with every attribute [`CoreSummary::record`]
/// fills in declared.
fn core_span(parent: &Span, request_id: &str) -> Span {
    tracing::info_span!(
        target: TARGET,
        parent: parent,
        CORE_SPAN_NAME,
        otel.kind = "internal",
        gen_ai.request.id = request_id,
        waypoint.retention.reason = Empty,
        time.queue = Empty,
        time.prefill = Empty,
        time.decode = Empty,
        prefix_cache.hit_tokens = Empty,
        interference.steps_scheduled = Empty,
        interference.steps_waited = Empty,
        interference.prefill_tokens_of_others = Empty,
        interference.mean_shared_requests = Empty,
        interference.mean_shared_tokens = Empty,
        interference.kv_usage_waiting_mean = Empty,
        interference.kv_usage_waiting_max = Empty,
        interference.preemptions = Empty,
        { replay_fields::START } = Empty,
        { replay_fields::END } = Empty,
    )
}

/// What `llm_core` says about the whole request when it ends.
#[derive(Clone, Debug, PartialEq)]
pub struct CoreSummary {
    /// Seconds queued, prefilling and decoding ([`super::handle::EngineTimings`]).
    pub queue: Option<f64>,
    /// See `queue`.
    pub prefill: Option<f64>,
    /// See `queue`.
    pub decode: Option<f64>,
    /// Prompt tokens served from the prefix cache.
    pub prefix_cache_hit_tokens: u64,
    /// What it shared its steps with.
    pub interference: Interference,
}

impl CoreSummary {
    fn record(&self, span: &Span) {
        for (field, value) in [
            ("time.queue", self.queue),
            ("time.prefill", self.prefill),
            ("time.decode", self.decode),
        ] {
            if let Some(seconds) = value {
                span.record(field, seconds);
            }
        }
        let interference = &self.interference;
        span.record(
            "prefix_cache.hit_tokens",
            self.prefix_cache_hit_tokens as i64,
        )
        .record(
            "interference.steps_scheduled",
            interference.steps_scheduled as i64,
        )
        .record(
            "interference.steps_waited",
            interference.steps_waited as i64,
        )
        .record(
            "interference.prefill_tokens_of_others",
            interference.prefill_tokens_of_others as i64,
        )
        .record(
            "interference.mean_shared_requests",
            interference.mean_shared_requests(),
        )
        .record(
            "interference.mean_shared_tokens",
            interference.mean_shared_tokens(),
        )
        .record(
            "interference.kv_usage_waiting_mean",
            interference.kv_usage_waiting_mean(),
        )
        .record(
            "interference.kv_usage_waiting_max",
            interference.kv_usage_waiting_max,
        )
        .record(
            "interference.preemptions",
            interference.preemptions_json().as_str(),
        );
    }
}

/// A recorded journey that ended: everything needed to replay its `llm_core` span.
#[derive(Clone, Debug, PartialEq)]
pub struct RecordedJourney {
    request_id: String,
    max_tokens: u64,
    /// When the span would have started (monotonic seconds).
    started: f64,
    events: Vec<CoreEvent>,
    /// Events left out over the bound.
    dropped: u64,
    summary: CoreSummary,
    /// Its bytes in [`journeys_in_memory`].
    tally: MemoryTally,
}

impl RecordedJourney {
    /// Emits the journey as a finished `llm_core` span under `parent`, with its recorded
    /// times, carrying `reason` as `waypoint.retention.reason`.
    pub fn replay(&self, parent: &Span, reason: RetentionReason) {
        let span = core_span(parent, &self.request_id);
        let ended = self.ended();
        span.record(replay_fields::START, self.started)
            .record(replay_fields::END, ended)
            .record("waypoint.retention.reason", reason.as_str());
        self.summary.record(&span);
        for event in &self.events {
            emit(&span, &self.request_id, self.max_tokens, event);
        }
        truncated(&span, &self.request_id, ended, self.dropped);
    }

    /// [`Self::replay`] under the span of an API that stopped waiting at `parent_ended`
    /// (its client left), as `aborted`; the parent's end moves to the engine's, so that
    /// `llm_core` lies within `llm_request` as it does in a live trace.
    fn replay_orphan(&self, parent: &Span, parent_ended: f64) {
        self.replay(parent, RetentionReason::Aborted);
        if self.ended() > parent_ended {
            parent.record(replay_fields::END, self.ended());
        }
    }

    /// When the request ended in the engine (its last event).
    fn ended(&self) -> f64 {
        self.events.last().map_or(self.started, |event| event.ts)
    }

    /// The events, in order (the closing `TRUNCATED` is not among them).
    pub fn events(&self) -> &[CoreEvent] {
        &self.events
    }

    /// What `llm_core` says about the whole request.
    pub fn summary(&self) -> &CoreSummary {
        &self.summary
    }

    /// Events left out over the bound.
    pub fn num_dropped(&self) -> u64 {
        self.dropped
    }

    /// Events recorded (at most [`MAX_JOURNEY_EVENTS`]).
    pub fn num_events(&self) -> usize {
        self.events.len() + usize::from(self.dropped > 0)
    }

    /// Bytes the record holds, for the memory gauge.
    pub fn bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.request_id.len()
            + events_bytes(&self.events)
            + self.summary.interference.preemptions.capacity() * std::mem::size_of::<Preemption>()
    }
}

/// The closing `TRUNCATED` event of a journey that left `dropped` events out, if it did.
fn truncated(span: &Span, request_id: &str, ts: f64, dropped: u64) {
    if dropped > 0 {
        tracing::event!(
            target: TARGET,
            parent: span,
            tracing::Level::DEBUG,
            request_id,
            event.type = "TRUNCATED",
            ts.monotonic = ts,
            events.dropped = dropped,
            "journey TRUNCATED"
        );
    }
}

/// The heap bytes of a journey's event list.
fn events_bytes(events: &Vec<CoreEvent>) -> usize {
    events.capacity() * std::mem::size_of::<CoreEvent>()
}

/// Where a journey's events go.
#[derive(Debug)]
enum Sink {
    Live(Span),
    Recorded {
        events: Vec<CoreEvent>,
        retention: Arc<TailRetention>,
        tally: MemoryTally,
    },
}

/// The journey of one request in the engine, live or recorded.
#[derive(Debug)]
pub struct Journey {
    sink: Sink,
    request_id: String,
    /// The request's `max_tokens`, reported as `decode.max_tokens`.
    max_tokens: u64,
    started: f64,
    first_token_sent: bool,
    /// Events so far, and those left out over the bound.
    num_events: usize,
    dropped: u64,
    interference: Interference,
}

/// How a journey ended: replay it (recorded and kept), or nothing more to do.
#[derive(Debug)]
pub struct Ended {
    /// Why it is kept, if it is recorded and kept.
    pub kept: Option<RetentionReason>,
    /// The record, for a recorded journey (kept or not: the API may still keep it).
    pub record: Option<RecordedJourney>,
}

impl Journey {
    /// The journey of request `request_id` (which may generate `max_tokens` tokens) as `mode`
    /// asks, under `parent` (the API's `llm_request` span) when live; `None` for `Off`.
    pub fn start(
        mode: &JourneyMode,
        parent: &Span,
        request_id: &str,
        max_tokens: usize,
    ) -> Option<Self> {
        let sink = match mode {
            JourneyMode::Off => return None,
            JourneyMode::Live(reason) => {
                let span = core_span(parent, request_id);
                span.record("waypoint.retention.reason", reason.as_str());
                Sink::Live(span)
            }
            JourneyMode::Recorded(retention) => {
                let events = Vec::with_capacity(8);
                let mut tally = MemoryTally::part();
                tally.set(events_bytes(&events) + request_id.len());
                Sink::Recorded {
                    events,
                    retention: retention.clone(),
                    tally,
                }
            }
        };
        Some(Self {
            sink,
            request_id: request_id.to_string(),
            max_tokens: max_tokens as u64,
            started: monotonic_seconds(),
            first_token_sent: false,
            num_events: 0,
            dropped: 0,
            interference: Interference::default(),
        })
    }

    /// Tells or records `event`, unless the journey is full: the last two places are kept
    /// for `FINISHED` and `TRUNCATED`.
    fn push(&mut self, event: CoreEvent) {
        let finishing = event.kind == "FINISHED";
        if !finishing && self.num_events + 2 >= JOURNEY_EVENT_BOUND.load(Ordering::Relaxed) {
            self.dropped += 1;
            return;
        }
        self.num_events += 1;
        match &mut self.sink {
            Sink::Live(span) => emit(span, &self.request_id, self.max_tokens, &event),
            Sink::Recorded { events, tally, .. } => {
                let capacity = events.capacity();
                events.push(event);
                if events.capacity() != capacity {
                    tally.set(events_bytes(events) + self.request_id.len());
                }
            }
        }
    }

    /// The request entered the waiting queue.
    pub fn queued(&mut self, request: &Request, step: u64) {
        self.push(CoreEvent::of("QUEUED", request, step, None));
    }

    /// The request was admitted to the running batch (again, after a preemption).
    pub fn scheduled(&mut self, request: &Request, step: u64) {
        let kind = if request.num_preemptions() == 0 {
            "FIRST"
        } else {
            "RESUME"
        };
        let event = CoreEvent::of("SCHEDULED", request, step, Some(kind));
        if let Some(last) = self.interference.preemptions.last_mut() {
            if last.resumed_after.is_none() {
                last.resumed_after = Some(event.ts - last.at);
                last.tokens_recomputed = Some(
                    last.tokens_lost
                        .saturating_sub(request.num_computed_tokens() as u64),
                );
            }
        }
        self.push(event);
    }

    /// The request lost its blocks and waits to be recomputed; it had computed
    /// `tokens_lost` tokens.
    pub fn preempted(&mut self, request: &Request, step: u64, tokens_lost: usize) {
        let event = CoreEvent::of("PREEMPTED", request, step, None);
        if self.interference.preemptions.len() < MAX_DESCRIBED_PREEMPTIONS {
            self.interference.preemptions.push(Preemption {
                step,
                at: event.ts,
                tokens_lost: tokens_lost as u64,
                resumed_after: None,
                tokens_recomputed: None,
            });
        }
        self.push(event);
    }

    /// A token was generated; the first one is reported.
    pub fn token(&mut self, request: &Request, step: u64) {
        if !self.first_token_sent {
            self.first_token_sent = true;
            self.push(CoreEvent::of("FIRST_TOKEN", request, step, None));
        }
    }

    /// The request was scheduled in a step, with `share`.
    pub fn scheduled_in(&mut self, share: StepShare) {
        self.interference.scheduled_in(share);
    }

    /// A step ran while the request waited, with the KV cache `kv_usage` full.
    pub fn waited_in(&mut self, kv_usage: f64) {
        self.interference.waited_in(kv_usage);
    }

    /// The request ended; a live span closes with this, a recorded journey is judged by
    /// its rules against `outcome`.
    pub fn finished(
        mut self,
        request: &Request,
        step: u64,
        reason: FinishReason,
        outcome: &Outcome,
        timings: &EngineTimings,
    ) -> Ended {
        self.push(CoreEvent::of(
            "FINISHED",
            request,
            step,
            Some(finish_status(reason)),
        ));
        let summary = CoreSummary {
            queue: timings.queue,
            prefill: timings.prefill,
            decode: timings.decode,
            prefix_cache_hit_tokens: request.num_cached_prompt_tokens() as u64,
            interference: std::mem::take(&mut self.interference),
        };
        match self.sink {
            Sink::Live(span) => {
                summary.record(&span);
                truncated(&span, &self.request_id, monotonic_seconds(), self.dropped);
                Ended {
                    kept: None,
                    record: None,
                }
            }
            Sink::Recorded {
                events,
                retention,
                tally,
            } => {
                let kept = retention.rules.judge(outcome);
                let mut record = RecordedJourney {
                    request_id: self.request_id,
                    max_tokens: self.max_tokens,
                    started: self.started,
                    events,
                    dropped: self.dropped,
                    summary,
                    tally,
                };
                record.tally.set(record.bytes());
                Ended {
                    kept,
                    record: Some(record),
                }
            }
        }
    }

    /// The events so far of a recorded journey (a live one keeps none).
    pub fn recorded_events(&self) -> Option<&[CoreEvent]> {
        match &self.sink {
            Sink::Live(_) => None,
            Sink::Recorded { events, .. } => Some(events),
        }
    }

    /// The request's retention, for a recorded journey.
    pub fn retention(&self) -> Option<&Arc<TailRetention>> {
        match &self.sink {
            Sink::Live(_) => None,
            Sink::Recorded { retention, .. } => Some(retention),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use tracing::field::{Field, Visit};
    use tracing_subscriber::layer::{Context, SubscriberExt as _};
    use tracing_subscriber::Layer;

    use super::*;

    /// An event's `event.type`, and its `events.dropped` if it has one.
    type Kind = (String, Option<u64>);

    /// Every journey event's kind, in order.
    #[derive(Clone, Default)]
    struct Kinds(Arc<Mutex<Vec<Kind>>>);

    struct KindVisitor(Option<String>, Option<u64>);

    impl Visit for KindVisitor {
        fn record_str(&mut self, field: &Field, value: &str) {
            if field.name() == "event.type" {
                self.0 = Some(value.to_string());
            }
        }
        fn record_u64(&mut self, field: &Field, value: u64) {
            if field.name() == "events.dropped" {
                self.1 = Some(value);
            }
        }
        fn record_debug(&mut self, _: &Field, _: &dyn std::fmt::Debug) {}
    }

    impl<S: tracing::Subscriber> Layer<S> for Kinds {
        fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
            let mut visitor = KindVisitor(None, None);
            event.record(&mut visitor);
            if let Some(kind) = visitor.0 {
                self.0.lock().unwrap().push((kind, visitor.1));
            }
        }
    }

    fn outcome() -> Outcome {
        Outcome {
            reason: FinishReason::Length,
            num_preemptions: 40,
            queue: Some(0.0),
            ttft: None,
            itl_max: None,
            e2e: 1.0,
        }
    }

    #[test]
    fn a_journey_preempted_again_and_again_is_bounded_and_ends_truncated() {
        let kinds = Kinds::default();
        let subscriber = tracing_subscriber::registry().with(kinds.clone());
        tracing::subscriber::with_default(subscriber, || {
            let mode = JourneyMode::Recorded(Arc::new(TailRetention::new(KeepRules::NONE)));
            let request = Request::new("r".to_string(), vec![1, 2, 3]);
            let mut journey = Journey::start(&mode, &Span::none(), "r", 8).unwrap();
            journey.queued(&request, 0);
            for step in 0..40 {
                journey.scheduled(&request, step);
                journey.preempted(&request, step, 3);
            }
            let ended = journey.finished(
                &request,
                99,
                FinishReason::Length,
                &outcome(),
                &EngineTimings::default(),
            );
            // Kept for its preemptions, whatever the latency rules say.
            assert_eq!(ended.kept, Some(RetentionReason::Preempted));
            let record = ended.record.unwrap();
            // 62 events, then FINISHED; TRUNCATED makes 64.
            assert_eq!(record.events().len(), MAX_JOURNEY_EVENTS - 1);
            assert_eq!(record.events().last().unwrap().kind, "FINISHED");
            assert_eq!(record.num_dropped(), 81 - 62);
            assert_eq!(record.num_events(), MAX_JOURNEY_EVENTS);
            // Only the first preemptions are described.
            let described = &record.summary().interference.preemptions;
            assert_eq!(described.len(), MAX_DESCRIBED_PREEMPTIONS);
            assert!(described.iter().all(|p| p.resumed_after.is_some()));

            record.replay(&Span::none(), RetentionReason::Preempted);
        });
        let kinds = kinds.0.lock().unwrap();
        assert_eq!(kinds.len(), MAX_JOURNEY_EVENTS);
        assert_eq!(kinds[MAX_JOURNEY_EVENTS - 2].0, "FINISHED");
        assert_eq!(
            kinds[MAX_JOURNEY_EVENTS - 1],
            ("TRUNCATED".to_string(), Some(81 - 62))
        );
    }
}
