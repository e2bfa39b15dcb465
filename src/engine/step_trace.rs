//! Step tracing: sampled scheduler iterations as `tracing` events on target `waypoint::step`.
//!
//! A sampled step emits one `BATCH_SUMMARY`, built from the counters the scheduler already
//! keeps for the step ([`StepStats`]), never from a pass over the requests. Within a sampled
//! step, with the rich subsample rate, every scheduled request also gets a
//! `REQUEST_SNAPSHOT`. The contract (attribute names and meaning) is in
//! `docs/STEP_TRACING.md`; `waypoint_layers::RotatingSpanLayer` puts the events on rotating
//! `scheduler_steps` spans. A step that is not sampled costs one branch and, for rates
//! strictly between 0 and 1, one xorshift draw: no allocation, no clock read, no event.

use std::time::Instant;

use super::journey::phase;
use super::output::{ScheduledSequence, StepStats};
use super::request::Request;

/// Target of every step event.
pub const TARGET: &str = "waypoint::step";

/// How steps are sampled.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepTracingConfig {
    /// Fraction of steps that emit a batch summary, in [0, 1].
    pub sample_rate: f64,
    /// Fraction of sampled steps whose scheduled requests each get a snapshot, in [0, 1].
    pub rich_subsample_rate: f64,
}

impl StepTracingConfig {
    /// Checks both rates are in [0, 1].
    pub fn validate(&self) -> Result<(), String> {
        for (name, rate) in [
            ("--step-tracing-sample-rate", self.sample_rate),
            (
                "--step-tracing-rich-subsample-rate",
                self.rich_subsample_rate,
            ),
        ] {
            if !(0.0..=1.0).contains(&rate) {
                return Err(format!("{name} must be in [0, 1], got {rate}"));
            }
        }
        Ok(())
    }
}

/// A yes/no draw with a fixed probability, decided by comparing a xorshift draw with a
/// threshold computed once, so that a "no" costs a few instructions.
#[derive(Debug, Clone)]
struct Bernoulli {
    /// `u64::MAX` means always; 0 never (for rate 0).
    threshold: u64,
    always: bool,
    state: u64,
}

impl Bernoulli {
    fn new(rate: f64, seed: u64) -> Self {
        Self {
            threshold: (rate.clamp(0.0, 1.0) * u64::MAX as f64) as u64,
            always: rate >= 1.0,
            // xorshift must not start at 0.
            state: seed | 1,
        }
    }

    #[inline]
    fn draw(&mut self) -> bool {
        if self.always {
            return true;
        }
        if self.threshold == 0 {
            return false;
        }
        let mut x = self.state;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.state = x;
        x < self.threshold
    }
}

/// The engine's step sampler and event writer.
#[derive(Debug, Clone)]
pub struct StepTracer {
    steps: Option<Bernoulli>,
    rich: Bernoulli,
    /// The rates in force (none when step tracing is off).
    config: Option<StepTracingConfig>,
}

/// What a sampled step needs to remember until it ends.
#[derive(Debug, Clone, Copy)]
pub struct SampledStep {
    started: Instant,
}

impl StepTracer {
    /// A tracer for `config`, or one that never samples.
    pub fn new(config: Option<StepTracingConfig>) -> Self {
        let seed: u64 = rand::random();
        Self {
            steps: config.map(|c| Bernoulli::new(c.sample_rate, seed)),
            rich: Bernoulli::new(
                config.map_or(0.0, |c| c.rich_subsample_rate),
                seed.rotate_left(32),
            ),
            config,
        }
    }

    /// Takes `config`'s rates from the next step, if step tracing is on (it cannot be turned
    /// on at run time: its spans' layer is only installed at start). Returns the previous
    /// rates, or `None` (and changes nothing) when it is off.
    pub fn set(&mut self, config: StepTracingConfig) -> Option<StepTracingConfig> {
        let previous = self.config?;
        *self = Self::new(Some(config));
        Some(previous)
    }

    /// Decides whether the step about to run is traced.
    #[inline]
    pub fn sample(&mut self) -> Option<SampledStep> {
        let steps = self.steps.as_mut()?;
        steps.draw().then(|| SampledStep {
            started: Instant::now(),
        })
    }

    /// Decides whether this sampled step's requests get snapshots.
    pub fn sample_snapshots(&mut self) -> bool {
        self.rich.draw()
    }
}

/// One `REQUEST_SNAPSHOT` for a request scheduled in step `step_id`, as scheduled (before
/// the model runs).
pub fn request_snapshot(
    step_id: u64,
    request: &Request,
    sequence: &ScheduledSequence<'_>,
    block_size: usize,
) {
    let cached_tokens = request.num_cached_prompt_tokens();
    let effective_prompt_len =
        (cached_tokens > 0).then(|| (request.num_prompt_tokens() - cached_tokens) as u64);
    tracing::event!(
        target: TARGET,
        tracing::Level::DEBUG,
        event.type = "REQUEST_SNAPSHOT",
        ts.monotonic = waypoint_layers::monotonic_seconds(),
        step.id = step_id,
        request.id = request.request_id(),
        request.phase = phase(request),
        request.num_prompt_tokens = request.num_prompt_tokens() as u64,
        request.num_computed_tokens = request.num_computed_tokens() as u64,
        request.num_output_tokens = request.num_output_tokens() as u64,
        request.num_preemptions = u64::from(request.num_preemptions()),
        request.scheduled_tokens_this_step = sequence.token_ids.len() as u64,
        kv.blocks_allocated_gpu = sequence.block_table.len() as u64,
        kv.blocks_cached_gpu = cached_tokens.div_ceil(block_size.max(1)) as u64,
        request.effective_prompt_len = effective_prompt_len,
    );
}

impl SampledStep {
    /// The step's `BATCH_SUMMARY`, from its counters; `num_finished` counts requests that
    /// finished during it.
    pub fn batch_summary(self, stats: &StepStats, num_finished: usize) {
        let ended = Instant::now();
        let to_ns = |at: Instant| (waypoint_layers::monotonic_seconds_at(at) * 1e9) as u64;
        let duration = ended.duration_since(self.started);
        tracing::event!(
            target: TARGET,
            tracing::Level::DEBUG,
            event.type = "BATCH_SUMMARY",
            ts.monotonic = waypoint_layers::monotonic_seconds_at(ended),
            step.id = stats.step,
            step.ts_start_ns = to_ns(self.started),
            step.ts_end_ns = to_ns(ended),
            step.duration_us = duration.as_micros() as u64,
            queue.running_depth = stats.num_running as u64,
            queue.waiting_depth = stats.num_waiting as u64,
            batch.num_prefill_reqs = stats.num_prefill_seqs as u64,
            batch.num_decode_reqs = stats.num_decode_seqs as u64,
            batch.scheduled_tokens = (stats.num_prefill_tokens + stats.num_decode_tokens) as u64,
            batch.prefill_tokens = stats.num_prefill_tokens as u64,
            batch.decode_tokens = stats.num_decode_tokens as u64,
            batch.num_finished = num_finished as u64,
            batch.num_preempted = stats.num_preemptions as u64,
            kv.usage_gpu_ratio = f64::from(stats.kv_usage),
            kv.blocks_total_gpu = stats.num_total_blocks as u64,
            kv.blocks_free_gpu = stats.num_free_blocks as u64,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_zero_and_one_are_exact() {
        let mut never = Bernoulli::new(0.0, 42);
        let mut always = Bernoulli::new(1.0, 42);
        for _ in 0..10_000 {
            assert!(!never.draw());
            assert!(always.draw());
        }
    }

    #[test]
    fn a_rate_gives_about_that_fraction() {
        let mut draw = Bernoulli::new(0.01, 7);
        let hits = (0..1_000_000).filter(|_| draw.draw()).count();
        // 10_000 expected; the standard deviation is about 100.
        assert!((9_500..10_500).contains(&hits), "{hits}");
    }

    #[test]
    fn a_disabled_tracer_never_samples() {
        let mut tracer = StepTracer::new(None);
        assert!((0..1000).all(|_| tracer.sample().is_none()));
        assert!(!tracer.sample_snapshots());
    }

    #[test]
    fn rates_outside_zero_to_one_are_refused() {
        let config = |sample_rate, rich_subsample_rate| StepTracingConfig {
            sample_rate,
            rich_subsample_rate,
        };
        assert!(config(0.5, 0.5).validate().is_ok());
        assert!(config(1.5, 0.5)
            .validate()
            .unwrap_err()
            .contains("sample-rate"));
        assert!(config(0.5, -0.1).validate().unwrap_err().contains("rich"));
        assert!(config(f64::NAN, 0.0).validate().is_err());
    }
}
