//! `waypoint bench`: a serving benchmark client, after vLLM's `vllm bench serve`.
//!
//! It sends `--num-prompts` streamed `POST /v1/completions` requests to a running server, each
//! with a prompt of exactly `--input-len` random token ids and `max_tokens = --output-len`
//! with `ignore_eos`, arriving as a Poisson process at `--request-rate` (or all at once), at
//! most `--max-concurrency` at a time. It times every stream (see [`metrics`] for the
//! definitions of TTFT, TPOT, ITL and E2EL), prints vLLM's result table to stdout and can write
//! the same numbers as JSON with vLLM's key names.
//!
//! Prompt token ids are drawn uniformly from `[--min-token-id, --vocab-size)`, by default
//! `[1000, 10000)`: low ids are skipped because tokenizers keep special and byte tokens there,
//! and 10000 is below the vocabulary of every real model. Models with smaller vocabularies (the
//! built-in `tiny` one has 260) need `--vocab-size`.

pub mod metrics;
pub mod sse;
pub mod workload;

mod client;

#[cfg(test)]
mod tests;

use std::fmt::{self, Write as _};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Serialize, Serializer};
use tokio::sync::Semaphore;

use metrics::{aggregate, BenchMetrics, LatencyStats, RequestOutcome};

/// Arguments of `waypoint bench`.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Base URL of the server; `/v1/completions` and `/v1/models` are appended (a trailing `/v1`
    /// is tolerated, and `http://` is assumed without a scheme).
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    pub url: String,
    /// Model name sent with every request [default: the first id from GET /v1/models].
    #[arg(long)]
    pub model: Option<String>,
    /// Number of requests to send.
    #[arg(long, default_value_t = 100, value_parser = parse_at_least_one)]
    pub num_prompts: usize,
    /// Requests per second, arriving as a Poisson process; `inf` sends them all at once.
    #[arg(long, default_value = "inf")]
    pub request_rate: RequestRate,
    /// Prompt length in tokens (random token ids, so exact whatever the tokenizer).
    #[arg(long, default_value_t = 1024, value_parser = parse_at_least_one)]
    pub input_len: usize,
    /// Tokens generated per request (sent as max_tokens with ignore_eos).
    #[arg(long, default_value_t = 128, value_parser = parse_at_least_one)]
    pub output_len: usize,
    /// Most requests in flight at once; later arrivals wait for a slot [default: no limit].
    #[arg(long, value_parser = parse_at_least_one)]
    pub max_concurrency: Option<usize>,
    /// Seed for the prompts and the arrival times.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Upper bound (exclusive) of the random prompt token ids; at most the model's vocabulary.
    #[arg(long, default_value_t = 10_000)]
    pub vocab_size: u32,
    /// Lowest random prompt token id [default: vocab-size / 10, skipping the low ids where
    /// tokenizers keep special and byte tokens].
    #[arg(long)]
    pub min_token_id: Option<u32>,
    /// Also write the results as JSON (vLLM's key names) to this file.
    #[arg(long)]
    pub output_json: Option<PathBuf>,
    /// Do not draw the progress bar on stderr.
    #[arg(long)]
    pub no_progress: bool,
}

impl BenchArgs {
    /// Checks what clap cannot when the arguments are built in code rather than parsed.
    pub fn validate(&self) -> anyhow::Result<()> {
        for (name, value) in [
            ("--num-prompts", self.num_prompts),
            ("--input-len", self.input_len),
            ("--output-len", self.output_len),
        ] {
            if value == 0 {
                bail!("{name} must be at least 1");
            }
        }
        if self.max_concurrency == Some(0) {
            bail!("--max-concurrency must be at least 1");
        }
        if let RequestRate::PerSecond(rate) = self.request_rate {
            if !(rate.is_finite() && rate > 0.0) {
                bail!("--request-rate {rate} must be a positive number or `inf`");
            }
        }
        let ids = self.token_ids();
        if ids.is_empty() {
            bail!(
                "no token ids to draw prompts from: --min-token-id {} must be below --vocab-size {}",
                ids.start,
                ids.end
            );
        }
        Ok(())
    }

    /// The range prompt token ids are drawn from.
    pub fn token_ids(&self) -> std::ops::Range<u32> {
        self.min_token_id.unwrap_or(self.vocab_size / 10)..self.vocab_size
    }
}

/// Parses a count that must be at least 1.
fn parse_at_least_one(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".to_string()),
        Ok(n) => Ok(n),
        Err(e) => Err(format!("`{s}` is not a whole number ({e})")),
    }
}

/// How fast requests arrive.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RequestRate {
    /// All requests are sent at once.
    Infinite,
    /// This many requests per second on average, as a Poisson process (finite and positive).
    PerSecond(f64),
}

impl RequestRate {
    /// Requests per second, `None` when infinite.
    pub fn per_second(self) -> Option<f64> {
        match self {
            RequestRate::Infinite => None,
            RequestRate::PerSecond(rate) => Some(rate),
        }
    }
}

impl FromStr for RequestRate {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // f64's parser already accepts `inf`, `Infinity`, `+inf` in any case.
        match s.trim().parse::<f64>() {
            Ok(rate) if rate == f64::INFINITY => Ok(RequestRate::Infinite),
            Ok(rate) if rate.is_finite() && rate > 0.0 => Ok(RequestRate::PerSecond(rate)),
            _ => Err(format!(
                "`{s}` is not a request rate: use a positive number of requests per second, or `inf`"
            )),
        }
    }
}

impl fmt::Display for RequestRate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RequestRate::Infinite => f.write_str("inf"),
            RequestRate::PerSecond(rate) => write!(f, "{rate}"),
        }
    }
}

/// A number, or the string `"inf"` as vLLM writes it, since JSON has no infinity.
impl Serialize for RequestRate {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            RequestRate::Infinite => serializer.serialize_str("inf"),
            RequestRate::PerSecond(rate) => serializer.serialize_f64(*rate),
        }
    }
}

/// What a run was asked to do, as recorded in its report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BenchConfig {
    /// The server's base URL, normalized.
    pub base_url: String,
    /// The model the requests named.
    pub model_id: String,
    /// Requests sent.
    pub num_prompts: usize,
    /// Arrival rate.
    pub request_rate: RequestRate,
    /// Concurrency limit, if any.
    pub max_concurrency: Option<usize>,
    /// Prompt tokens per request.
    pub input_len: usize,
    /// Tokens requested per request.
    pub output_len: usize,
    /// Seed of prompts and arrivals.
    pub seed: u64,
    /// Lowest prompt token id.
    pub min_token_id: u32,
    /// Prompt token ids are below this.
    pub vocab_size: u32,
}

/// The result of `waypoint bench`; serializes to one flat JSON object (the config's keys, then
/// the metrics' keys such as `completed` and `mean_ttft_ms`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BenchReport {
    /// The run's parameters.
    #[serde(flatten)]
    pub config: BenchConfig,
    /// The measurements.
    #[serde(flatten)]
    pub metrics: BenchMetrics,
}

/// Runs the benchmark against a server, prints the result table to stdout (progress and
/// warnings go to stderr), writes the JSON file if asked, and returns the report.
///
/// Call it on a multi-threaded tokio runtime: every request is a task, and on one thread the
/// client's own JSON parsing would queue behind other streams and inflate the latencies.
///
/// Failed requests do not make this fail; they are counted in the report. It fails on invalid
/// arguments, when the model cannot be discovered, or when the JSON file cannot be written.
pub async fn run(args: BenchArgs) -> anyhow::Result<BenchReport> {
    args.validate()?;
    let base_url = normalize_base_url(&args.url);
    let http = client::client()?;
    let model_id = match &args.model {
        Some(model) => model.clone(),
        None => client::first_model(&http, &base_url).await?,
    };
    let ids = args.token_ids();
    let config = BenchConfig {
        base_url,
        model_id,
        num_prompts: args.num_prompts,
        request_rate: args.request_rate,
        max_concurrency: args.max_concurrency,
        input_len: args.input_len,
        output_len: args.output_len,
        seed: args.seed,
        min_token_id: ids.start,
        vocab_size: ids.end,
    };

    // Everything that costs CPU happens before the clock starts.
    let bodies: Vec<Vec<u8>> =
        workload::random_prompts(config.num_prompts, config.input_len, ids, config.seed)
            .iter()
            .map(|prompt| client::request_body(&config.model_id, prompt, config.output_len))
            .collect();
    let offsets = workload::arrival_offsets(
        config.num_prompts,
        config.request_rate.per_second(),
        config.seed,
    );

    eprintln!(
        "Benchmarking {} at {}: {} requests of {} prompt + {} output tokens, request rate {}, \
         max concurrency {}",
        config.model_id,
        config.base_url,
        config.num_prompts,
        config.input_len,
        config.output_len,
        config.request_rate,
        config
            .max_concurrency
            .map_or("unlimited".to_string(), |c| c.to_string()),
    );

    let progress = if args.no_progress {
        ProgressBar::hidden()
    } else {
        progress_bar(config.num_prompts)
    };
    let url = format!("{}/v1/completions", config.base_url);
    let (outcomes, duration) = drive(
        &http,
        &url,
        bodies,
        &offsets,
        config.max_concurrency,
        config.input_len as u64,
        &progress,
    )
    .await;
    progress.finish_and_clear();

    let report = BenchReport {
        metrics: aggregate(&outcomes, duration),
        config,
    };
    print!("{}", render_table(&report));
    let m = &report.metrics;
    if let Some(error) = &m.first_error {
        let all = if m.completed == 0 {
            " (all of them)"
        } else {
            ""
        };
        eprintln!(
            "warning: {} requests failed{all}; the first: {error}",
            m.failed
        );
    }
    if let Some(path) = &args.output_json {
        let json = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, json + "\n")
            .with_context(|| format!("writing the results to {}", path.display()))?;
    }
    Ok(report)
}

/// Sends the requests on schedule and waits for all of them; returns their outcomes in request
/// order and the run's wall time.
async fn drive(
    http: &reqwest::Client,
    url: &str,
    bodies: Vec<Vec<u8>>,
    offsets: &[std::time::Duration],
    max_concurrency: Option<usize>,
    input_tokens: u64,
    progress: &ProgressBar,
) -> (Vec<RequestOutcome>, std::time::Duration) {
    let slots = max_concurrency.map(|n| Arc::new(Semaphore::new(n)));
    let failed = Arc::new(AtomicUsize::new(0));
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::with_capacity(bodies.len());
    for (body, offset) in bodies.into_iter().zip(offsets) {
        // `sleep` rather than `sleep_until`: it saturates where an absurdly low rate puts an
        // arrival beyond what an `Instant` can hold.
        let wait = offset.saturating_sub(start.elapsed());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        let (http, url, slots) = (http.clone(), url.to_string(), slots.clone());
        let (progress, failed) = (progress.clone(), failed.clone());
        // One task per request, so that slow streams never delay later arrivals.
        tasks.push(tokio::spawn(async move {
            // Waiting for a slot is client-side queueing, not server latency: the request's
            // clock starts when it is sent.
            let _slot = match &slots {
                Some(slots) => slots.clone().acquire_owned().await.ok(),
                None => None,
            };
            let outcome = client::stream_completion(&http, &url, body, input_tokens).await;
            if outcome.is_err() {
                let failed = failed.fetch_add(1, Ordering::Relaxed) + 1;
                progress.set_message(format!("{failed} failed"));
            }
            progress.inc(1);
            outcome
        }));
    }
    let mut outcomes = Vec::with_capacity(tasks.len());
    for task in tasks {
        outcomes.push(
            task.await
                .unwrap_or_else(|e| Err(format!("the request task failed: {e}"))),
        );
    }
    (outcomes, start.elapsed())
}

fn progress_bar(len: usize) -> ProgressBar {
    let bar = ProgressBar::new(len as u64);
    // indicatif draws to stderr and stays silent when stderr is not a terminal.
    if let Ok(style) =
        ProgressStyle::with_template("{bar:40} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}")
    {
        bar.set_style(style);
    }
    bar
}

/// `host:port`, `http://host:port/`, `http://host:port/v1` all mean the same server.
fn normalize_base_url(url: &str) -> String {
    let url = url.trim().trim_end_matches('/');
    let url = url.strip_suffix("/v1").unwrap_or(url);
    if url.contains("://") {
        url.to_string()
    } else {
        format!("http://{url}")
    }
}

/// The result table, laid out like vLLM's; statistics without samples read `n/a`.
pub fn render_table(report: &BenchReport) -> String {
    let (c, m) = (&report.config, &report.metrics);
    let mut out = format!("{:=^50}\n", " Serving Benchmark Result ");
    row(&mut out, "Successful requests:", m.completed);
    row(&mut out, "Failed requests:", m.failed);
    if let Some(limit) = c.max_concurrency {
        row(&mut out, "Maximum request concurrency:", limit);
    }
    if let Some(rate) = c.request_rate.per_second() {
        row(
            &mut out,
            "Request rate configured (RPS):",
            format!("{rate:.2}"),
        );
    }
    row(
        &mut out,
        "Benchmark duration (s):",
        format!("{:.2}", m.duration),
    );
    row(&mut out, "Total input tokens:", m.total_input_tokens);
    row(&mut out, "Total generated tokens:", m.total_output_tokens);
    let throughputs = [
        ("Request throughput (req/s):", m.request_throughput),
        ("Output token throughput (tok/s):", m.output_throughput),
        ("Total Token throughput (tok/s):", m.total_token_throughput),
    ];
    for (label, value) in throughputs {
        row(&mut out, label, format!("{value:.2}"));
    }
    let sections: [(&LatencyStats, &str, &str); 4] = [
        (&m.ttft, "TTFT", "Time to First Token"),
        (&m.tpot, "TPOT", "Time per Output Token (excl. 1st token)"),
        (&m.itl, "ITL", "Inter-token Latency"),
        (&m.e2el, "E2EL", "End-to-end Latency"),
    ];
    for (stats, name, title) in sections {
        out.push_str(&format!("{title:-^50}\n"));
        for (stat, value) in stats.rows() {
            let value = value.map_or("n/a".to_string(), |v| format!("{v:.2}"));
            row(&mut out, &format!("{stat} {name} (ms):"), value);
        }
    }
    out.push_str(&"=".repeat(50));
    out.push('\n');
    out
}

fn row(out: &mut String, label: &str, value: impl fmt::Display) {
    // Writing to a String cannot fail.
    let _ = writeln!(out, "{label:<40} {value}");
}
