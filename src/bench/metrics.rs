//! Latency metrics: one request's timings from its token stream, and their aggregation over a
//! run.
//!
//! Definitions (all measured on the client, from the moment the request is sent, which is
//! after any wait for a `--max-concurrency` slot):
//! - TTFT: until the first chunk that delivers output.
//! - ITL: the gaps between successive output chunks of a request, pooled over all requests. A
//!   server that packs several tokens into one chunk yields one (longer) gap for them.
//! - E2EL: until the last output chunk (the trailing usage chunk and `[DONE]` are not output).
//! - TPOT: per request, `(E2EL - TTFT) / (output_tokens - 1)`, for requests with more than one
//!   output token; the mean TPOT weighs every request equally, however long.
//!
//! Only successful requests contribute; a failed request only counts in `failed`.

use std::time::{Duration, Instant};

use serde::ser::{Serialize, SerializeMap, Serializer};

use super::sse::StreamEvent;

/// The `p`-th percentile (`0..=100`) of ascending `sorted` samples, interpolating linearly
/// between the two nearest ranks as numpy's default (`method="linear"`) does; `None` when there
/// are no samples.
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    let last = sorted.len().checked_sub(1)?;
    let rank = p.clamp(0.0, 100.0) / 100.0 * last as f64;
    let below = rank.floor() as usize;
    let above = rank.ceil() as usize;
    let fraction = rank - below as f64;
    Some(sorted[below] + (sorted[above] - sorted[below]) * fraction)
}

/// Summary statistics of one latency metric, in milliseconds; `None` where there are no
/// samples (all requests failed, or no request produced more than one token).
#[derive(Debug, Clone, PartialEq)]
pub struct LatencyStats {
    /// The metric's short name (`ttft`, `tpot`, `itl`, `e2el`), which names its JSON keys:
    /// `mean_ttft_ms`, `median_ttft_ms`, `std_ttft_ms`, `p90_ttft_ms`, `p99_ttft_ms`.
    pub metric: &'static str,
    /// Number of samples.
    pub count: usize,
    /// Arithmetic mean.
    pub mean_ms: Option<f64>,
    /// The 50th percentile.
    pub median_ms: Option<f64>,
    /// Population standard deviation (numpy's default, `ddof=0`).
    pub std_ms: Option<f64>,
    /// The 90th percentile.
    pub p90_ms: Option<f64>,
    /// The 99th percentile.
    pub p99_ms: Option<f64>,
}

impl LatencyStats {
    /// Statistics of `seconds` (in any order), reported in milliseconds.
    pub fn from_seconds(metric: &'static str, seconds: &[f64]) -> Self {
        let mut ms: Vec<f64> = seconds.iter().map(|s| s * 1e3).collect();
        ms.sort_by(f64::total_cmp);
        let mean = (!ms.is_empty()).then(|| ms.iter().sum::<f64>() / ms.len() as f64);
        let std = mean.map(|mean| {
            let variance = ms.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / ms.len() as f64;
            variance.sqrt()
        });
        LatencyStats {
            metric,
            count: ms.len(),
            mean_ms: mean,
            median_ms: percentile(&ms, 50.0),
            std_ms: std,
            p90_ms: percentile(&ms, 90.0),
            p99_ms: percentile(&ms, 99.0),
        }
    }

    /// The statistics as (label, value) rows, in the order the report prints them.
    pub fn rows(&self) -> [(&'static str, Option<f64>); 4] {
        [
            ("Mean", self.mean_ms),
            ("Median", self.median_ms),
            ("P90", self.p90_ms),
            ("P99", self.p99_ms),
        ]
    }
}

/// Flat keys named after the metric, so that a report's JSON reads like vLLM's
/// (`mean_ttft_ms`, ...) while Rust code gets one struct per metric.
impl Serialize for LatencyStats {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let m = self.metric;
        let mut map = serializer.serialize_map(Some(6))?;
        map.serialize_entry(&format!("num_{m}_samples"), &self.count)?;
        map.serialize_entry(&format!("mean_{m}_ms"), &self.mean_ms)?;
        map.serialize_entry(&format!("median_{m}_ms"), &self.median_ms)?;
        map.serialize_entry(&format!("std_{m}_ms"), &self.std_ms)?;
        map.serialize_entry(&format!("p90_{m}_ms"), &self.p90_ms)?;
        map.serialize_entry(&format!("p99_{m}_ms"), &self.p99_ms)?;
        map.end()
    }
}

/// The timings of one successful request.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestTiming {
    /// Time to the first output chunk.
    pub ttft: Duration,
    /// Gaps between successive output chunks (one fewer than the chunks).
    pub itls: Vec<Duration>,
    /// Time to the last output chunk.
    pub e2el: Duration,
    /// Prompt tokens sent.
    pub input_tokens: u64,
    /// Tokens generated: the server's `usage.completion_tokens`, else the output chunks.
    pub output_tokens: u64,
}

impl RequestTiming {
    /// Time per output token after the first, in seconds; `None` for a single-token output,
    /// which has no decode phase to measure.
    pub fn tpot_seconds(&self) -> Option<f64> {
        (self.output_tokens > 1).then(|| {
            self.e2el.saturating_sub(self.ttft).as_secs_f64() / (self.output_tokens - 1) as f64
        })
    }
}

/// A request's timings, or the message that says why it failed.
pub type RequestOutcome = Result<RequestTiming, String>;

/// Follows one request's stream and turns it into a [`RequestOutcome`].
///
/// Timestamps are passed in rather than taken here so that every event decoded from one network
/// read gets the time of that read, not the time its JSON happened to be parsed.
#[derive(Debug)]
pub struct StreamRecorder {
    sent: Instant,
    first: Option<Instant>,
    last: Option<Instant>,
    itls: Vec<Duration>,
    output_chunks: u64,
    usage_tokens: Option<u64>,
    done: bool,
    error: Option<String>,
}

impl StreamRecorder {
    /// Starts recording a request sent at `sent`.
    pub fn new(sent: Instant) -> Self {
        StreamRecorder {
            sent,
            first: None,
            last: None,
            itls: Vec::new(),
            output_chunks: 0,
            usage_tokens: None,
            done: false,
            error: None,
        }
    }

    /// Records an event received at `at`. Events after `[DONE]` or an error are ignored.
    pub fn record(&mut self, at: Instant, event: StreamEvent) {
        if self.is_finished() {
            return;
        }
        match event {
            StreamEvent::Done => self.done = true,
            StreamEvent::Error(message) => self.error = Some(message),
            StreamEvent::Chunk {
                token,
                completion_tokens,
            } => {
                if token {
                    if let Some(last) = self.last {
                        self.itls.push(at.saturating_duration_since(last));
                    } else {
                        self.first = Some(at);
                    }
                    self.last = Some(at);
                    self.output_chunks += 1;
                }
                if completion_tokens.is_some() {
                    self.usage_tokens = completion_tokens;
                }
            }
        }
    }

    /// Whether the stream has said all it will: `[DONE]` or an error.
    pub fn is_finished(&self) -> bool {
        self.done || self.error.is_some()
    }

    /// The request's outcome. A stream that reported an error, ended before `[DONE]`, or
    /// delivered no output is a failure: its timings would not describe a served request.
    pub fn finish(self, input_tokens: u64) -> RequestOutcome {
        if let Some(error) = self.error {
            return Err(error);
        }
        if !self.done {
            return Err("the stream ended before `data: [DONE]`".to_string());
        }
        let (Some(first), Some(last)) = (self.first, self.last) else {
            return Err("the stream delivered no output tokens".to_string());
        };
        Ok(RequestTiming {
            ttft: first.saturating_duration_since(self.sent),
            itls: self.itls,
            e2el: last.saturating_duration_since(self.sent),
            input_tokens,
            output_tokens: self.usage_tokens.unwrap_or(self.output_chunks),
        })
    }
}

/// The numbers of a benchmark run.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct BenchMetrics {
    /// Successful requests.
    pub completed: usize,
    /// Failed requests.
    pub failed: usize,
    /// The error of the first failed request (in request order).
    pub first_error: Option<String>,
    /// Wall time of the run in seconds, from the first request sent to the last one finished.
    pub duration: f64,
    /// Prompt tokens of the successful requests.
    pub total_input_tokens: u64,
    /// Generated tokens of the successful requests.
    pub total_output_tokens: u64,
    /// Successful requests per second.
    pub request_throughput: f64,
    /// Generated tokens per second.
    pub output_throughput: f64,
    /// Prompt plus generated tokens per second.
    pub total_token_throughput: f64,
    /// Time to first token.
    #[serde(flatten)]
    pub ttft: LatencyStats,
    /// Time per output token, excluding the first.
    #[serde(flatten)]
    pub tpot: LatencyStats,
    /// Inter-token latency.
    #[serde(flatten)]
    pub itl: LatencyStats,
    /// End-to-end latency.
    #[serde(flatten)]
    pub e2el: LatencyStats,
}

/// Aggregates the outcomes of a run that took `duration`.
pub fn aggregate(outcomes: &[RequestOutcome], duration: Duration) -> BenchMetrics {
    let timings: Vec<&RequestTiming> = outcomes.iter().filter_map(|o| o.as_ref().ok()).collect();
    let failed = outcomes.len() - timings.len();
    let first_error = outcomes.iter().find_map(|o| o.as_ref().err()).cloned();
    let total_input_tokens: u64 = timings.iter().map(|t| t.input_tokens).sum();
    let total_output_tokens: u64 = timings.iter().map(|t| t.output_tokens).sum();
    let secs = duration.as_secs_f64();
    // A zero duration only happens with a coarse clock or no requests; report no throughput
    // rather than an infinity that JSON cannot carry.
    let per_second = |x: f64| if secs > 0.0 { x / secs } else { 0.0 };

    let ttfts: Vec<f64> = timings.iter().map(|t| t.ttft.as_secs_f64()).collect();
    let tpots: Vec<f64> = timings.iter().filter_map(|t| t.tpot_seconds()).collect();
    let itls: Vec<f64> = timings
        .iter()
        .flat_map(|t| t.itls.iter().map(Duration::as_secs_f64))
        .collect();
    let e2els: Vec<f64> = timings.iter().map(|t| t.e2el.as_secs_f64()).collect();

    BenchMetrics {
        completed: timings.len(),
        failed,
        first_error,
        duration: secs,
        total_input_tokens,
        total_output_tokens,
        request_throughput: per_second(timings.len() as f64),
        output_throughput: per_second(total_output_tokens as f64),
        total_token_throughput: per_second((total_input_tokens + total_output_tokens) as f64),
        ttft: LatencyStats::from_seconds("ttft", &ttfts),
        tpot: LatencyStats::from_seconds("tpot", &tpots),
        itl: LatencyStats::from_seconds("itl", &itls),
        e2el: LatencyStats::from_seconds("e2el", &e2els),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: Option<f64>, b: f64) -> bool {
        a.is_some_and(|a| (a - b).abs() < 1e-9)
    }

    #[test]
    fn percentiles_match_numpy_linear() {
        // np.percentile([1, 2, 3, 4], [0, 50, 90, 99, 100]) == [1, 2.5, 3.7, 3.97, 4]
        let xs = [1.0, 2.0, 3.0, 4.0];
        assert!(close(percentile(&xs, 0.0), 1.0));
        assert!(close(percentile(&xs, 50.0), 2.5));
        assert!(close(percentile(&xs, 90.0), 3.7));
        assert!(close(percentile(&xs, 99.0), 3.97));
        assert!(close(percentile(&xs, 100.0), 4.0));
        // np.percentile([10, 20, 40], 75) == 30
        assert!(close(percentile(&[10.0, 20.0, 40.0], 75.0), 30.0));
        assert!(close(percentile(&[7.0], 99.0), 7.0));
        assert_eq!(percentile(&[], 50.0), None);
        // Out-of-range percentiles clamp instead of indexing out of bounds.
        assert!(close(percentile(&xs, 150.0), 4.0));
        assert!(close(percentile(&xs, -5.0), 1.0));
    }

    #[test]
    fn stats_sort_convert_and_handle_empty() {
        let stats = LatencyStats::from_seconds("ttft", &[0.004, 0.001, 0.003, 0.002]);
        assert_eq!(stats.count, 4);
        assert!(close(stats.mean_ms, 2.5));
        assert!(close(stats.median_ms, 2.5));
        assert!(close(stats.p90_ms, 3.7));
        // Population std of 1, 2, 3, 4.
        assert!(close(stats.std_ms, 1.25f64.sqrt()));

        let empty = LatencyStats::from_seconds("tpot", &[]);
        assert_eq!(empty.count, 0);
        assert_eq!(empty.rows().map(|(_, v)| v), [None; 4]);
        assert_eq!(empty.std_ms, None);
    }

    #[test]
    fn stats_serialize_to_vllm_style_keys() {
        let json = serde_json::to_value(LatencyStats::from_seconds("itl", &[0.5])).unwrap();
        assert_eq!(json["mean_itl_ms"], 500.0);
        assert_eq!(json["median_itl_ms"], 500.0);
        assert_eq!(json["p90_itl_ms"], 500.0);
        assert_eq!(json["p99_itl_ms"], 500.0);
        assert_eq!(json["std_itl_ms"], 0.0);
        assert_eq!(json["num_itl_samples"], 1);
        let empty = serde_json::to_value(LatencyStats::from_seconds("itl", &[])).unwrap();
        assert!(empty["mean_itl_ms"].is_null());
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn chunk(token: bool, completion_tokens: Option<u64>) -> StreamEvent {
        StreamEvent::Chunk {
            token,
            completion_tokens,
        }
    }

    #[test]
    fn recorder_times_output_chunks_only() {
        let t0 = Instant::now();
        let mut rec = StreamRecorder::new(t0);
        rec.record(t0 + ms(10), chunk(true, None));
        rec.record(t0 + ms(15), chunk(true, None));
        rec.record(t0 + ms(22), chunk(true, None));
        // Finish marker and usage: neither moves the last-token time nor adds an ITL.
        rec.record(t0 + ms(30), chunk(false, None));
        rec.record(t0 + ms(31), chunk(false, Some(3)));
        assert!(!rec.is_finished());
        rec.record(t0 + ms(32), StreamEvent::Done);
        assert!(rec.is_finished());
        let timing = rec.finish(8).unwrap();
        assert_eq!(timing.ttft, ms(10));
        assert_eq!(timing.itls, vec![ms(5), ms(7)]);
        assert_eq!(timing.e2el, ms(22));
        assert_eq!(timing.input_tokens, 8);
        assert_eq!(timing.output_tokens, 3);
        assert!(close(timing.tpot_seconds(), 0.006));
    }

    #[test]
    fn recorder_prefers_usage_and_falls_back_to_chunks() {
        let t0 = Instant::now();
        let mut rec = StreamRecorder::new(t0);
        // Two chunks that carried five tokens between them.
        rec.record(t0 + ms(1), chunk(true, None));
        rec.record(t0 + ms(2), chunk(true, Some(5)));
        rec.record(t0 + ms(3), StreamEvent::Done);
        assert_eq!(rec.finish(1).unwrap().output_tokens, 5);

        let mut rec = StreamRecorder::new(t0);
        rec.record(t0 + ms(1), chunk(true, None));
        rec.record(t0 + ms(2), chunk(true, None));
        rec.record(t0 + ms(3), StreamEvent::Done);
        assert_eq!(rec.finish(1).unwrap().output_tokens, 2);
    }

    #[test]
    fn recorder_failures() {
        let t0 = Instant::now();
        let mut rec = StreamRecorder::new(t0);
        rec.record(t0 + ms(1), chunk(true, None));
        assert!(rec.finish(1).unwrap_err().contains("[DONE]"));

        let mut rec = StreamRecorder::new(t0);
        rec.record(t0 + ms(1), StreamEvent::Done);
        assert!(rec.finish(1).unwrap_err().contains("no output"));

        let mut rec = StreamRecorder::new(t0);
        rec.record(t0 + ms(1), chunk(true, None));
        rec.record(t0 + ms(2), StreamEvent::Error("engine died".into()));
        // Whatever follows an error cannot repair the request.
        rec.record(t0 + ms(3), StreamEvent::Done);
        assert_eq!(rec.finish(1), Err("engine died".to_string()));
    }

    fn timing(ttft: u64, itls: &[u64], output_tokens: u64) -> RequestOutcome {
        let itls: Vec<Duration> = itls.iter().copied().map(ms).collect();
        let e2el = ms(ttft) + itls.iter().sum::<Duration>();
        Ok(RequestTiming {
            ttft: ms(ttft),
            itls,
            e2el,
            input_tokens: 10,
            output_tokens,
        })
    }

    #[test]
    fn aggregation_pools_successes_and_counts_failures() {
        let outcomes = vec![
            timing(100, &[10, 20], 3),
            Err("HTTP 500: first".to_string()),
            timing(300, &[30], 2),
            // One token: contributes TTFT and E2EL but neither TPOT nor ITL.
            timing(200, &[], 1),
            Err("second".to_string()),
        ];
        let m = aggregate(&outcomes, Duration::from_secs(2));
        assert_eq!((m.completed, m.failed), (3, 2));
        assert_eq!(m.first_error.as_deref(), Some("HTTP 500: first"));
        assert_eq!(m.total_input_tokens, 30);
        assert_eq!(m.total_output_tokens, 6);
        assert!(close(Some(m.duration), 2.0));
        assert!(close(Some(m.request_throughput), 1.5));
        assert!(close(Some(m.output_throughput), 3.0));
        assert!(close(Some(m.total_token_throughput), 18.0));
        assert_eq!(m.ttft.count, 3);
        assert!(close(m.ttft.mean_ms, 200.0));
        assert!(close(m.ttft.median_ms, 200.0));
        assert_eq!(m.itl.count, 3);
        assert!(close(m.itl.mean_ms, 20.0));
        // TPOTs: (130 - 100) / 2 = 15 and (330 - 300) / 1 = 30.
        assert_eq!(m.tpot.count, 2);
        assert!(close(m.tpot.mean_ms, 22.5));
        assert!(close(m.e2el.mean_ms, (130.0 + 330.0 + 200.0) / 3.0));
    }

    #[test]
    fn aggregation_of_nothing_does_not_panic() {
        let m = aggregate(&[], Duration::ZERO);
        assert_eq!((m.completed, m.failed), (0, 0));
        assert_eq!(m.request_throughput, 0.0);
        assert_eq!(m.ttft.mean_ms, None);

        let m = aggregate(&[Err("down".to_string())], Duration::from_millis(5));
        assert_eq!((m.completed, m.failed), (0, 1));
        assert_eq!(m.e2el.p99_ms, None);
        let json = serde_json::to_value(&m).unwrap();
        assert!(json["p99_e2el_ms"].is_null());
        assert_eq!(json["failed"], 1);
    }
}
