//! [`Metrics`]: every Waypoint metric, what the engine calls to feed them, and the scrape.

use std::fmt;
use std::time::Duration;

use super::exposition::{render_labels, Exposition, Format, Writer};
use super::instruments::{Counter, Gauge, Histogram, TraceId};
use super::protobuf::ProtoWriter;

/// Time to first token (vLLM's buckets): from a millisecond for a cached short prompt to
/// minutes for a long one queued behind others.
const TIME_TO_FIRST_TOKEN_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
];

/// Time between two tokens of a request (vLLM's buckets, which hold the GenAI convention's
/// `gen_ai.server.time_per_output_token` boundaries): one step, or more when a step carries a
/// long prefill, up to 960 s for a request preempted behind a long queue: a top bucket of a
/// minute hides exactly the stalls people look for.
const INTER_TOKEN_LATENCY_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
    40.0, 80.0, 160.0, 320.0, 640.0, 960.0,
];

/// Whole requests and their phases: the GenAI convention's `gen_ai.server.request.duration`
/// boundaries (0.01 to 81.92 s, doubling) below vLLM's (up to two hours), so that short
/// requests and phases (a queue wait of 20 ms) land in a bucket of their own.
const REQUEST_LATENCY_BUCKETS: &[f64] = &[
    0.01, 0.02, 0.04, 0.08, 0.16, 0.3, 0.5, 0.8, 1.0, 1.28, 1.5, 2.0, 2.5, 2.56, 5.0, 5.12, 10.0,
    10.24, 15.0, 20.0, 20.48, 30.0, 40.0, 40.96, 50.0, 60.0, 81.92, 120.0, 240.0, 480.0, 960.0,
    1920.0, 7680.0,
];

/// The finish reasons a request can end with (the engine's `FinishReason::as_str`), in the
/// order of [`Metrics::request_success`]'s counters. Plain strings, so that metrics depend on
/// nothing of the engine's.
pub const FINISH_REASONS: [&str; 4] = ["stop", "length", "abort", "error"];

/// Why the API refused a request before the engine saw it, in the order of
/// [`Metrics::request_rejected`]'s counters: the queue was full (429), the body too large
/// (413) or not sent in time (408), the request invalid (400, 404 for an unknown model), or the server could not take
/// it (503: loading, shutting down, engine gone).
pub const REJECTION_REASONS: [&str; 5] = [
    "queue_full",
    "too_large",
    "body_timeout",
    "invalid",
    "unavailable",
];

/// The journey decisions `waypoint_journeys_total` counts, as (decision, reason) label
/// pairs: kept for one of tail retention's reasons (the engine's `RetentionReason`), dropped
/// because it stayed within the rules, or never recorded because the caller's
/// `traceparent` was unsampled.
pub const JOURNEY_OUTCOMES: [(&str, &str); 12] = [
    ("kept", "head"),
    ("kept", "forced"),
    ("kept", "parent"),
    ("kept", "error"),
    ("kept", "aborted"),
    ("kept", "preempted"),
    ("kept", "slow_queue"),
    ("kept", "slow_ttft"),
    ("kept", "slow_itl"),
    ("kept", "slow_e2e"),
    ("dropped", "within_rules"),
    ("dropped", "unsampled_parent"),
];

/// A request that ended, in plain values.
#[derive(Clone, Debug, PartialEq)]
pub struct FinishedRequest {
    /// One of [`FINISH_REASONS`].
    pub reason: &'static str,
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Generated tokens.
    pub completion_tokens: usize,
    /// From arrival at the API to the end.
    pub e2e: Duration,
    /// Seconds queued, in prefill and in decode; `None` for phases it never reached.
    pub queue: Option<f64>,
    /// See `queue`.
    pub prefill: Option<f64>,
    /// See `queue`.
    pub decode: Option<f64>,
}

/// What the telemetry pipeline holds and lost, as plain counts taken at scrape time.
#[derive(Debug, Default, Clone, Copy)]
pub struct TelemetryCounts {
    /// Spans in batches whose export failed.
    pub spans_export_failed: u64,
    /// Spans dropped because the export queue was full.
    pub spans_queue_full: u64,
    /// Journeys recorded for tail retention and not yet decided.
    pub journeys_in_memory: u64,
    /// The bytes those records hold.
    pub journey_bytes_in_memory: u64,
}

/// Every metric the server exports, as atomics the engine thread updates and a scrape reads.
///
/// The engine creates one per served model (see
/// [`EngineHandle::metrics`](crate::engine::EngineHandle::metrics)) and calls the
/// `record_*` methods beside the events it already handles: a step, a token, a finished
/// request. See `docs/METRICS.md` for the table of metrics.
///
/// # Cost
///
/// Each call is a handful of relaxed atomic operations on memory no other thread writes, so
/// none waits (a scrape only loads):
/// - per step: up to 4 adds ([`Metrics::record_step`], [`Metrics::record_generated_tokens`];
///   zero counts are skipped), and 3 stores each time the load gauges are published
///   ([`Metrics::set_load`]: after taking commands and after the step);
/// - per generated token after the first: one histogram observation (a binary search of
///   23 bounds, one add, one compare-exchange);
/// - per first token: one observation and one add;
/// - per finished request: up to 6 observations and one add.
///
/// A traced request's latency observations also take one uncontended lock and read the
/// clock, to keep their exemplar. Nothing allocates after [`Metrics::new`].
pub struct Metrics {
    /// The `model_name` label every sample carries.
    model_name: String,
    /// `model_name="..."`, escaped once for the text formats.
    common_labels: String,
    requests_running: Gauge,
    requests_waiting: Gauge,
    kv_cache_usage: Gauge,
    preemptions: Counter,
    prompt_tokens: Counter,
    generation_tokens: Counter,
    /// One per entry of [`FINISH_REASONS`].
    request_success: [Counter; 4],
    /// One per entry of [`REJECTION_REASONS`].
    request_rejected: [Counter; REJECTION_REASONS.len()],
    /// One per entry of [`JOURNEY_OUTCOMES`].
    journeys: [Counter; JOURNEY_OUTCOMES.len()],
    prefix_cache_queries: Counter,
    prefix_cache_hits: Counter,
    time_to_first_token: Histogram,
    inter_token_latency: Histogram,
    e2e_request_latency: Histogram,
    request_queue_time: Histogram,
    request_prefill_time: Histogram,
    request_decode_time: Histogram,
    request_prompt_tokens: Histogram,
    request_generation_tokens: Histogram,
}

impl Metrics {
    /// All metrics at zero, labelled with `model_name`; the token-count histograms' buckets
    /// go up to `max_context` tokens.
    pub fn new(model_name: &str, max_context: usize) -> Self {
        let token_buckets = one_two_five_buckets(max_context);
        Self {
            model_name: model_name.to_string(),
            common_labels: render_labels(&[("model_name", model_name)]),
            requests_running: Gauge::default(),
            requests_waiting: Gauge::default(),
            kv_cache_usage: Gauge::default(),
            preemptions: Counter::default(),
            prompt_tokens: Counter::default(),
            generation_tokens: Counter::default(),
            request_success: Default::default(),
            request_rejected: Default::default(),
            journeys: Default::default(),
            prefix_cache_queries: Counter::default(),
            prefix_cache_hits: Counter::default(),
            time_to_first_token: Histogram::new(TIME_TO_FIRST_TOKEN_BUCKETS),
            inter_token_latency: Histogram::new(INTER_TOKEN_LATENCY_BUCKETS),
            e2e_request_latency: Histogram::new(REQUEST_LATENCY_BUCKETS),
            request_queue_time: Histogram::new(REQUEST_LATENCY_BUCKETS),
            request_prefill_time: Histogram::new(REQUEST_LATENCY_BUCKETS),
            request_decode_time: Histogram::new(REQUEST_LATENCY_BUCKETS),
            request_prompt_tokens: Histogram::new(&token_buckets),
            request_generation_tokens: Histogram::new(&token_buckets),
        }
    }

    /// Sets the load gauges: requests running (holding KV blocks) and waiting, and the
    /// fraction of KV-cache blocks in use.
    pub fn set_load(&self, running: usize, waiting: usize, kv_cache_usage: f32) {
        self.requests_running.set(running as f64);
        self.requests_waiting.set(waiting as f64);
        self.kv_cache_usage.set(f64::from(kv_cache_usage));
    }

    /// Counts what one `schedule()` decided: preemptions, and the prefix-cache lookups (in
    /// tokens) of the requests it admitted.
    pub fn record_step(
        &self,
        preemptions: usize,
        prefix_cache_queries: u64,
        prefix_cache_hits: u64,
    ) {
        add_unless_zero(&self.preemptions, preemptions as u64);
        add_unless_zero(&self.prefix_cache_queries, prefix_cache_queries);
        add_unless_zero(&self.prefix_cache_hits, prefix_cache_hits);
    }

    /// A request the API refused before the engine saw it; `reason` is one of
    /// [`REJECTION_REASONS`] (anything else is not counted: it would be a bug, caught by
    /// the debug assertion).
    pub fn record_rejected(&self, reason: &str) {
        let index = REJECTION_REASONS.iter().position(|&r| r == reason);
        debug_assert!(index.is_some(), "unknown rejection reason {reason}");
        if let Some(index) = index {
            self.request_rejected[index].inc_by(1);
        }
    }

    /// A journey decision, one of [`JOURNEY_OUTCOMES`] (anything else is not counted, and
    /// caught by the debug assertion).
    pub fn record_journey(&self, decision: &str, reason: &str) {
        let index = JOURNEY_OUTCOMES
            .iter()
            .position(|&outcome| outcome == (decision, reason));
        debug_assert!(
            index.is_some(),
            "unknown journey outcome {decision}/{reason}"
        );
        if let Some(index) = index {
            self.journeys[index].inc_by(1);
        }
    }

    /// Counts the tokens one step generated (over all its requests).
    pub fn record_generated_tokens(&self, count: usize) {
        add_unless_zero(&self.generation_tokens, count as u64);
    }

    /// A request's first token: its time from arrival, and its whole prompt counted as
    /// processed (cached tokens included, as vLLM counts them).
    pub fn record_first_token(
        &self,
        since_arrival: Duration,
        prompt_tokens: usize,
        trace_id: Option<TraceId>,
    ) {
        self.time_to_first_token
            .observe_traced(since_arrival.as_secs_f64(), trace_id);
        self.prompt_tokens.inc_by(prompt_tokens as u64);
    }

    /// A token after a request's first: the time since its previous token.
    pub fn record_inter_token(&self, since_previous: Duration, trace_id: Option<TraceId>) {
        self.inter_token_latency
            .observe_traced(since_previous.as_secs_f64(), trace_id);
    }

    /// A request that ended, for any reason: `e2e` is from its arrival at the API to now.
    /// Phases it never reached (say, an abort while waiting) are not observed.
    pub fn record_finished(&self, info: &FinishedRequest, trace_id: Option<TraceId>) {
        let index = FINISH_REASONS.iter().position(|&r| r == info.reason);
        debug_assert!(index.is_some(), "unknown finish reason {}", info.reason);
        if let Some(index) = index {
            self.request_success[index].inc_by(1);
        }
        self.e2e_request_latency
            .observe_traced(info.e2e.as_secs_f64(), trace_id);
        let phases = [
            (&self.request_queue_time, info.queue),
            (&self.request_prefill_time, info.prefill),
            (&self.request_decode_time, info.decode),
        ];
        for (histogram, seconds) in phases {
            if let Some(seconds) = seconds {
                histogram.observe_traced(seconds, trace_id);
            }
        }
        self.request_prompt_tokens
            .observe(info.prompt_tokens as f64);
        self.request_generation_tokens
            .observe(info.completion_tokens as f64);
    }

    /// The scrape: every metric, in `format`, with no telemetry counts.
    pub fn render(&self, format: Format) -> String {
        self.render_with(format, &TelemetryCounts::default())
    }

    /// The scrape: every metric, in `format`, plus what the telemetry pipeline holds and
    /// lost (counted outside the engine's metrics, by the journeys and the exporter).
    pub fn render_with(&self, format: Format, losses: &TelemetryCounts) -> String {
        let mut out = Writer::new(format, &self.common_labels);
        self.write(&mut out, losses);
        out.finish()
    }

    /// [`Self::render_with`] in Prometheus' protobuf format, whose histograms also carry
    /// native (exponential) buckets.
    pub fn render_protobuf(&self, losses: &TelemetryCounts) -> Vec<u8> {
        let mut out = ProtoWriter::new(&[("model_name", &self.model_name)]);
        self.write(&mut out, losses);
        out.finish()
    }

    /// Every metric, through `out`.
    fn write(&self, out: &mut impl Exposition, losses: &TelemetryCounts) {
        out.gauge(
            "waypoint_num_requests_running",
            "Requests running: scheduled, holding KV-cache blocks.",
            self.requests_running.get(),
        );
        out.gauge(
            "waypoint_num_requests_waiting",
            "Requests waiting to be scheduled (new, or preempted).",
            self.requests_waiting.get(),
        );
        out.gauge(
            "waypoint_kv_cache_usage_ratio",
            "Fraction of KV-cache blocks in use by requests (1 = full).",
            self.kv_cache_usage.get(),
        );
        out.counter(
            "waypoint_num_preemptions_total",
            "Preemptions: running requests that lost their KV-cache blocks and wait to be \
             computed again.",
            self.preemptions.get(),
        );
        out.counter(
            "waypoint_prompt_tokens_total",
            "Prompt tokens of requests that produced their first token, prefix-cache hits \
             included.",
            self.prompt_tokens.get(),
        );
        out.counter(
            "waypoint_generation_tokens_total",
            "Tokens generated.",
            self.generation_tokens.get(),
        );
        let successes: [(&str, u64); 4] =
            std::array::from_fn(|i| (FINISH_REASONS[i], self.request_success[i].get()));
        out.labelled_counter(
            "waypoint_request_success_total",
            "Requests that ended, by finish reason (stop, length, abort, error).",
            "finished_reason",
            &successes,
        );
        let rejections: [(&str, u64); REJECTION_REASONS.len()] =
            std::array::from_fn(|i| (REJECTION_REASONS[i], self.request_rejected[i].get()));
        out.labelled_counter(
            "waypoint_request_rejected_total",
            "Requests refused before the engine saw them, by reason (queue_full: 429, \
             too_large: 413, body_timeout: 408, invalid: 400/404, unavailable: 503).",
            "reason",
            &rejections,
        );
        let journeys: [([&str; 2], u64); JOURNEY_OUTCOMES.len()] = std::array::from_fn(|i| {
            let (decision, reason) = JOURNEY_OUTCOMES[i];
            ([decision, reason], self.journeys[i].get())
        });
        out.multi_labelled_counter(
            "waypoint_journeys_total",
            "Requests whose journey was decided with journey tracing on: kept (exported) by \
             reason, or dropped (within the tail-retention rules, or under an unsampled \
             caller).",
            ["decision", "reason"],
            &journeys,
        );
        out.counter(
            "waypoint_prefix_cache_queries_total",
            "Tokens looked up in the prefix cache when requests are scheduled.",
            self.prefix_cache_queries.get(),
        );
        out.counter(
            "waypoint_prefix_cache_hits_total",
            "Tokens found in the prefix cache when requests are scheduled.",
            self.prefix_cache_hits.get(),
        );
        out.labelled_counter(
            "waypoint_telemetry_dropped_spans_total",
            "Trace spans that never reached the collector, by reason (export_failed: the \
             collector was down, refused the batch or timed out; queue_full: more spans \
             waited for export than OTEL_BSP_MAX_QUEUE_SIZE).",
            "reason",
            &[
                ("export_failed", losses.spans_export_failed),
                ("queue_full", losses.spans_queue_full),
            ],
        );
        out.gauge(
            "waypoint_journeys_in_memory",
            "Journeys recorded for tail retention whose request has not ended yet.",
            losses.journeys_in_memory as f64,
        );
        out.gauge(
            "waypoint_journey_bytes_in_memory",
            "Bytes held by the journeys recorded for tail retention.",
            losses.journey_bytes_in_memory as f64,
        );
        let histograms = [
            (
                "waypoint_time_to_first_token_seconds",
                "Seconds from a request's arrival to its first token.",
                &self.time_to_first_token,
            ),
            (
                "waypoint_inter_token_latency_seconds",
                "Seconds between consecutive tokens of a request.",
                &self.inter_token_latency,
            ),
            (
                "waypoint_e2e_request_latency_seconds",
                "Seconds from a request's arrival to its end.",
                &self.e2e_request_latency,
            ),
            (
                "waypoint_request_queue_time_seconds",
                "Seconds from a request's arrival to its first scheduling.",
                &self.request_queue_time,
            ),
            (
                "waypoint_request_prefill_time_seconds",
                "Seconds from a request's first scheduling to its first token.",
                &self.request_prefill_time,
            ),
            (
                "waypoint_request_decode_time_seconds",
                "Seconds from a request's first token to its end.",
                &self.request_decode_time,
            ),
            (
                "waypoint_request_prompt_tokens",
                "Prompt tokens per ended request.",
                &self.request_prompt_tokens,
            ),
            (
                "waypoint_request_generation_tokens",
                "Generated tokens per ended request.",
                &self.request_generation_tokens,
            ),
        ];
        for (name, help, histogram) in histograms {
            out.histogram(name, help, &histogram.snapshot());
        }
    }
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics")
            .field("labels", &self.common_labels)
            .finish_non_exhaustive()
    }
}

/// A zero add would still be an atomic read-modify-write; most steps have nothing to add.
fn add_unless_zero(counter: &Counter, n: u64) {
    if n > 0 {
        counter.inc_by(n);
    }
}

/// 1, 2, 5, 10, 20, 50, ... up to `max` (vLLM's token-count buckets).
fn one_two_five_buckets(max: usize) -> Vec<f64> {
    let mut bounds = Vec::new();
    let mut decade = 1usize;
    loop {
        for mantissa in [1, 2, 5] {
            match decade.checked_mul(mantissa) {
                Some(bound) if bound <= max => bounds.push(bound as f64),
                _ => return bounds,
            }
        }
        let Some(next) = decade.checked_mul(10) else {
            return bounds;
        };
        decade = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finished(reason: &'static str, completion_tokens: usize, e2e: Duration) -> FinishedRequest {
        FinishedRequest {
            reason,
            prompt_tokens: 12,
            completion_tokens,
            e2e,
            queue: Some(0.001),
            prefill: Some(0.002),
            decode: None,
        }
    }

    #[test]
    fn token_buckets_are_one_two_five_up_to_the_context() {
        assert_eq!(
            one_two_five_buckets(2048),
            [1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0]
        );
        assert_eq!(one_two_five_buckets(5), [1.0, 2.0, 5.0]);
        assert!(one_two_five_buckets(0).is_empty());
        assert_eq!(one_two_five_buckets(usize::MAX).len(), 3 * 19 + 1);
    }

    #[test]
    fn every_family_has_help_type_and_the_model_label() {
        let metrics = Metrics::new("my \"model\"", 64);
        let text = metrics.render(Format::PrometheusText);
        let families = text.lines().filter(|l| l.starts_with("# TYPE ")).count();
        // Gauges (3 of the engine, 2 of the journeys), counters, histograms.
        assert_eq!(families, 5 + 9 + 8, "{text}");
        assert_eq!(
            text.lines().filter(|l| l.starts_with("# HELP ")).count(),
            families
        );
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(line.contains(r#"model_name="my \"model\"""#), "{line}");
        }
        for reason in ["stop", "length", "abort", "error"] {
            let sample = format!(
                "waypoint_request_success_total{{model_name=\"my \\\"model\\\"\",finished_reason=\"{reason}\"}} 0"
            );
            assert!(text.contains(&sample), "{sample} in {text}");
        }
        for (decision, reason) in JOURNEY_OUTCOMES {
            let sample = format!(
                "waypoint_journeys_total{{model_name=\"my \\\"model\\\"\",decision=\"{decision}\",reason=\"{reason}\"}} 0"
            );
            assert!(text.contains(&sample), "{sample} in {text}");
        }
        for reason in REJECTION_REASONS {
            let sample = format!(
                "waypoint_request_rejected_total{{model_name=\"my \\\"model\\\"\",reason=\"{reason}\"}} 0"
            );
            assert!(text.contains(&sample), "{sample} in {text}");
        }
    }

    #[test]
    fn rejected_requests_count_by_reason() {
        let metrics = Metrics::new("m", 64);
        metrics.record_rejected("queue_full");
        metrics.record_rejected("invalid");
        metrics.record_rejected("invalid");
        let text = metrics.render(Format::PrometheusText);
        for (reason, count) in [
            ("queue_full", 1),
            ("too_large", 0),
            ("body_timeout", 0),
            ("invalid", 2),
            ("unavailable", 0),
        ] {
            let sample = format!(
                "waypoint_request_rejected_total{{model_name=\"m\",reason=\"{reason}\"}} {count}\n"
            );
            assert!(text.contains(&sample), "{sample} in {text}");
        }
    }

    #[test]
    fn finished_requests_count_by_reason_and_skip_phases_not_reached() {
        let metrics = Metrics::new("m", 64);
        let trace = TraceId::parse("0af7651916cd43dd8448eb211c80319c");
        metrics.record_finished(&finished("length", 4, Duration::from_millis(3)), trace);
        metrics.record_finished(&finished("abort", 0, Duration::from_millis(1)), None);
        assert_eq!(
            metrics.request_success.each_ref().map(Counter::get),
            [0, 1, 1, 0]
        );
        assert_eq!(metrics.e2e_request_latency.snapshot().count(), 2);
        assert_eq!(metrics.request_queue_time.snapshot().count(), 2);
        assert_eq!(metrics.request_decode_time.snapshot().count(), 0);
        let generated = metrics.request_generation_tokens.snapshot();
        assert_eq!((generated.count(), generated.sum), (2, 4.0));

        let text = metrics.render(Format::OpenMetrics);
        let exemplar_lines: Vec<&str> = text.lines().filter(|l| l.contains("trace_id")).collect();
        // e2e, queue and prefill: the phases the traced request reached, each in the first
        // bucket above its 1-3 ms.
        assert_eq!(exemplar_lines.len(), 3, "{text}");
        assert!(
            exemplar_lines
                .iter()
                .all(|l| l.contains("le=\"0.01\"} ")
                    && l.contains("0af7651916cd43dd8448eb211c80319c"))
        );
        assert!(!metrics.render(Format::PrometheusText).contains("trace_id"));
    }

    #[test]
    fn telemetry_losses_are_rendered_as_given() {
        let metrics = Metrics::new("m", 64);
        let line =
            "waypoint_telemetry_dropped_spans_total{model_name=\"m\",reason=\"export_failed\"}";
        let quiet = metrics.render(Format::PrometheusText);
        assert!(quiet.contains(&format!("{line} 0\n")), "{quiet}");
        let losses = TelemetryCounts {
            spans_export_failed: 17,
            ..TelemetryCounts::default()
        };
        let lossy = metrics.render_with(Format::OpenMetrics, &losses);
        assert!(lossy.contains(&format!("{line} 17\n")), "{lossy}");
    }

    #[test]
    fn steps_and_tokens_feed_the_counters_and_gauges() {
        let metrics = Metrics::new("m", 64);
        metrics.record_step(2, 40, 32);
        metrics.record_generated_tokens(3);
        metrics.record_first_token(Duration::from_millis(5), 40, None);
        metrics.record_inter_token(Duration::from_millis(20), None);
        metrics.set_load(2, 1, 0.5);
        let text = metrics.render(Format::PrometheusText);
        for sample in [
            "waypoint_num_preemptions_total{model_name=\"m\"} 2",
            "waypoint_prefix_cache_queries_total{model_name=\"m\"} 40",
            "waypoint_prefix_cache_hits_total{model_name=\"m\"} 32",
            "waypoint_generation_tokens_total{model_name=\"m\"} 3",
            "waypoint_prompt_tokens_total{model_name=\"m\"} 40",
            "waypoint_num_requests_running{model_name=\"m\"} 2.0",
            "waypoint_num_requests_waiting{model_name=\"m\"} 1.0",
            "waypoint_kv_cache_usage_ratio{model_name=\"m\"} 0.5",
            "waypoint_time_to_first_token_seconds_bucket{model_name=\"m\",le=\"0.005\"} 1",
            "waypoint_inter_token_latency_seconds_bucket{model_name=\"m\",le=\"0.01\"} 0",
            "waypoint_inter_token_latency_seconds_bucket{model_name=\"m\",le=\"0.025\"} 1",
        ] {
            assert!(text.contains(sample), "{sample} in {text}");
        }
    }
}
