//! Serving throughput with tracing off and on, alternating, in one run.
//!
//! Starts two `waypoint serve` processes on the same model and binary: one with no tracing
//! flag ("off"), one with journey tracing at sample rate 1.0 exporting over OTLP/gRPC to a
//! receiver inside this process, plus step tracing at sample and rich-subsample rate 1.0 when
//! the binary's `serve --help` lists those flags and `--journey-only` is not given ("on").
//! Each round sends the same fixed workload (N concurrent `/v1/completions` requests,
//! token-id prompts unique to the round, `max_tokens` fixed, `ignore_eos`, temperature 0) to
//! each server in turn, the order swapped every round (off-on, on-off, ...) so that drift
//! falls on both. Throughput is generated tokens over the workload's wall time; the on/off
//! ratio is taken per round and summarized by its median, min and max. The receiver counts
//! what was exported, and the engines' `engine stopped` lines give each engine thread's time
//! outside the model per step.
//!
//! ```text
//! cargo build --release --bin waypoint --example tracing_overhead
//! target/release/examples/tracing_overhead [--waypoint-bin PATH] [--model PATH]
//!     [--rounds 3] [--requests 64] [--prompt-tokens 32] [--max-tokens 64] [--repeats 1]
//!     [--journey-only] [--journey-rate 1.0] [--vocab-size 49152]
//!     [--otlp-endpoint http://127.0.0.1:4317 [--collector-pid PID]]
//! ```
//!
//! With `--otlp-endpoint`, "on" exports to that collector instead of the in-process receiver
//! (`scripts/telemetry-stack.sh up` starts a real one); `--collector-pid` then reports the
//! collector's CPU time per 1,000 traced requests, from `/proc/PID/stat`.
//!
//! The binary defaults to the `waypoint` next to this example's directory (same profile);
//! the model to `scripts/fetch-smollm2.sh`'s. Prints a markdown table for
//! `docs/BENCHMARKS.md`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Parser;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};

/// Serving throughput with tracing off and on.
#[derive(Parser, Debug)]
struct Options {
    /// The `waypoint` binary (default: `../waypoint` from this example's directory).
    #[arg(long, env = "WAYPOINT_BIN")]
    waypoint_bin: Option<PathBuf>,
    /// The model (default: SmolLM2 from `scripts/fetch-smollm2.sh`).
    #[arg(long)]
    model: Option<String>,
    /// Rounds; each measures both configurations once.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Concurrent requests in the workload.
    #[arg(long, default_value_t = 64)]
    requests: usize,
    /// Prompt length in tokens.
    #[arg(long, default_value_t = 32)]
    prompt_tokens: usize,
    /// Tokens generated per request.
    #[arg(long, default_value_t = 64)]
    max_tokens: usize,
    /// Times the workload runs, one after the other, per measurement.
    #[arg(long, default_value_t = 1)]
    repeats: usize,
    /// Leave step tracing off even when the binary has it.
    #[arg(long)]
    journey_only: bool,
    /// "on"'s journey sample rate: 1.0 traces every request live; below 1 the rest are
    /// recorded for tail retention (e.g. 0.01, tail retention's usual setting).
    #[arg(long, default_value_t = 1.0)]
    journey_rate: f64,
    /// Prompt token ids stay below this (SmolLM2's vocabulary by default; 256 for `tiny`).
    #[arg(long, default_value_t = 49_152)]
    vocab_size: u32,
    /// Export "on"'s spans to this OTLP/gRPC endpoint (a real collector) instead of the
    /// receiver inside this process.
    #[arg(long)]
    otlp_endpoint: Option<String>,
    /// The collector's process id: its CPU time per 1,000 traced requests is reported.
    #[arg(long, requires = "otlp_endpoint")]
    collector_pid: Option<u32>,
}

/// A process's user plus system CPU time, in seconds (`/proc/PID/stat` fields 14 and 15, in
/// clock ticks of 1/100 s on Linux).
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = |i: usize| -> anyhow::Result<f64> {
        Ok(fields
            .get(i)
            .context("short /proc stat line")?
            .parse::<f64>()?)
    };
    Ok((ticks(11)? + ticks(12)?) / 100.0)
}

// ---------------------------------------------------------------------------------------
// The OTLP receiver: counts spans by name, and their events.

#[derive(Debug, Default)]
struct Counts {
    spans: Mutex<BTreeMap<String, u64>>,
    events: AtomicU64,
    dropped_events: AtomicU64,
    exports: AtomicU64,
}

#[derive(Debug, Clone)]
struct Sink(Arc<Counts>);

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let counts = &self.0;
        counts.exports.fetch_add(1, Ordering::Relaxed);
        let mut spans = counts.spans.lock().unwrap();
        let all = request
            .get_ref()
            .resource_spans
            .iter()
            .flat_map(|resource| &resource.scope_spans)
            .flat_map(|scope| &scope.spans);
        for span in all {
            *spans.entry(span.name.clone()).or_default() += 1;
            counts
                .events
                .fetch_add(span.events.len() as u64, Ordering::Relaxed);
            counts
                .dropped_events
                .fetch_add(u64::from(span.dropped_events_count), Ordering::Relaxed);
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

impl Counts {
    fn total_spans(&self) -> u64 {
        self.spans.lock().unwrap().values().sum()
    }
}

// ---------------------------------------------------------------------------------------
// `waypoint serve` as a child process: the integration tests' launcher, waited on without
// blocking this single-threaded runtime (the OTLP receiver runs on it and must answer).

#[path = "../tests/common/process.rs"]
mod process;
use process::{field, ServerProcess};

struct Server(ServerProcess);

impl Server {
    async fn start(bin: &Path, model: &str, args: &[String]) -> anyhow::Result<Self> {
        let mut server = ServerProcess::spawn(bin, model, args, &[]).map_err(anyhow::Error::msg)?;
        let deadline = Instant::now() + Duration::from_secs(180);
        while !server.poll_ready().map_err(anyhow::Error::msg)? {
            if Instant::now() > deadline {
                bail!("waypoint serve was not ready within 180 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(Self(server))
    }

    fn base_url(&self) -> &str {
        &self.0.base_url
    }

    /// SIGTERM (a graceful shutdown, which flushes queued spans), then what the engine's
    /// `engine stopped` line says. Waits asynchronously: the receiver runs on this thread and
    /// must answer the final export.
    async fn stop(mut self) -> anyhow::Result<Option<EngineTime>> {
        self.0.send_sigterm();
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.0.try_wait().is_none() {
            if Instant::now() > deadline {
                bail!("waypoint serve ignored SIGTERM");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let lines = self.0.stderr();
        for line in lines
            .iter()
            .filter(|line| line.contains("WARN") || line.contains("ERROR"))
        {
            eprintln!("server: {line}");
        }
        let stopped = lines.iter().find(|line| line.contains("engine stopped"));
        Ok(stopped.and_then(|line| {
            let number = |name: &str| field(line, name)?.parse::<f64>().ok();
            Some(EngineTime {
                steps: number("steps")?,
                step_seconds: number("step_seconds")?,
                model_seconds: number("model_seconds")?,
            })
        }))
    }
}

/// The engine's own account of its steps, from its `engine stopped` line.
#[derive(Debug, Clone, Copy)]
struct EngineTime {
    steps: f64,
    /// Wall time of every step.
    step_seconds: f64,
    /// Of which, inside the model call.
    model_seconds: f64,
}

impl EngineTime {
    /// Milliseconds per step outside the model: scheduling, sampling, detokenizing, sending,
    /// and the engine's journey and step events.
    fn outside_model_ms(&self) -> f64 {
        1e3 * (self.step_seconds - self.model_seconds) / self.steps
    }

    fn step_ms(&self) -> f64 {
        1e3 * self.step_seconds / self.steps
    }
}

// ---------------------------------------------------------------------------------------
// The workload.

/// The prompts of one workload: token ids below `vocab`, the first one unique to (`tag`,
/// request) when the vocabulary allows, so that no two prompts share a prefix-cache block;
/// the same lengths every time.
fn prompts(tag: usize, requests: usize, len: usize, vocab: u32) -> Vec<Vec<u32>> {
    let vocab = vocab.max(2) as usize;
    (0..requests)
        .map(|i| {
            let first = 1 + (tag * requests + i) % (vocab - 1);
            std::iter::once(first)
                .chain((1..len).map(|k| 1 + (i * 131 + k * 17) % (vocab - 1)))
                .map(|id| id as u32)
                .collect()
        })
        .collect()
}

/// Sends every prompt at once; the generated tokens and the wall time.
async fn run_workload(
    client: &reqwest::Client,
    base_url: &str,
    prompts: &[Vec<u32>],
    max_tokens: usize,
) -> anyhow::Result<(u64, Duration)> {
    let url = format!("{base_url}/v1/completions");
    let started = Instant::now();
    let responses = futures::future::join_all(prompts.iter().map(|prompt| {
        let body = serde_json::json!({
            "prompt": prompt,
            "max_tokens": max_tokens,
            "temperature": 0,
            "ignore_eos": true,
        });
        let request = client.post(&url).json(&body).send();
        async move {
            let response = request.await?;
            let status = response.status();
            let body: serde_json::Value = response.json().await?;
            if !status.is_success() {
                bail!("{status}: {body}");
            }
            body["usage"]["completion_tokens"]
                .as_u64()
                .context("no usage.completion_tokens in the response")
        }
    }))
    .await;
    let elapsed = started.elapsed();
    let mut tokens = 0;
    for response in responses {
        tokens += response?;
    }
    Ok((tokens, elapsed))
}

// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Config {
    Off,
    On,
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    }
}

fn min_max(values: &[f64]) -> (f64, f64) {
    values
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        })
}

fn default_binary() -> anyhow::Result<PathBuf> {
    // target/<profile>/examples/tracing_overhead -> target/<profile>/waypoint
    let exe = std::env::current_exe()?;
    let profile_dir = exe
        .parent()
        .and_then(|examples| examples.parent())
        .context("cannot find the target directory")?;
    Ok(profile_dir.join("waypoint"))
}

fn fetch_model() -> anyhow::Result<String> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/fetch-smollm2.sh");
    let output = Command::new("bash")
        .arg(script)
        .stderr(Stdio::inherit())
        .output()?;
    if !output.status.success() {
        bail!("{script} failed");
    }
    Ok(String::from_utf8(output.stdout)?.trim().to_string())
}

fn first_line_of(path: &str, prefix: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()?
        .lines()
        .find(|line| line.starts_with(prefix))
        .and_then(|line| line.split(':').nth(1))
        .map(|value| value.trim().to_string())
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|_| "?".to_string())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let options = Options::parse();
    let bin = match &options.waypoint_bin {
        Some(bin) => bin.clone(),
        None => default_binary()?,
    };
    if !bin.exists() {
        bail!(
            "no waypoint binary at {} (build it, or pass --waypoint-bin)",
            bin.display()
        );
    }
    let model = match &options.model {
        Some(model) => model.clone(),
        None => fetch_model()?,
    };
    let help = Command::new(&bin).args(["serve", "--help"]).output()?;
    let help = String::from_utf8_lossy(&help.stdout);
    let step_flags = [
        "--step-tracing-enabled",
        "--step-tracing-sample-rate",
        "--step-tracing-rich-subsample-rate",
    ];
    let has_step_tracing = step_flags.iter().all(|flag| help.contains(flag));
    let step_tracing = has_step_tracing && !options.journey_only;

    // The receiver.
    let counts = Arc::new(Counts::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let sink_address = listener.local_addr()?;
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(Sink(counts.clone())))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );

    let mut on_args: Vec<String> = [
        "--enable-journey-tracing",
        "--journey-tracing-sample-rate",
        &options.journey_rate.to_string(),
        "--otlp-traces-endpoint",
    ]
    .iter()
    .map(|arg| arg.to_string())
    .collect();
    let destination = match &options.otlp_endpoint {
        Some(endpoint) => endpoint.clone(),
        None => format!("http://{sink_address}"),
    };
    on_args.push(destination);
    if step_tracing {
        for arg in [
            "--step-tracing-enabled",
            "--step-tracing-sample-rate",
            "1.0",
            "--step-tracing-rich-subsample-rate",
            "1.0",
        ] {
            on_args.push(arg.to_string());
        }
    }
    let journeys = format!("journey tracing (sample rate {})", options.journey_rate);
    let what_on = if step_tracing {
        format!(
            "{journeys} and step tracing (sample rate 1.0, rich subsample 1.0), OTLP/gRPC to a \
             local receiver"
        )
    } else if has_step_tracing {
        format!("{journeys}, OTLP/gRPC to a local receiver (step tracing left off: --journey-only)")
    } else {
        format!("{journeys}, OTLP/gRPC to a local receiver (this binary has no step tracing flags)")
    };

    let cpu = first_line_of("/proc/cpuinfo", "model name").unwrap_or_else(|| "?".into());
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    println!("binary:   {}", bin.display());
    println!("model:    {model}");
    println!(
        "machine:  {cores} cores, {cpu}; load average at start {}",
        load_average()
    );
    println!(
        "workload: {} concurrent /v1/completions, {}-token prompts, max_tokens {}, ignore_eos, \
         temperature 0, x{} per measurement",
        options.requests, options.prompt_tokens, options.max_tokens, options.repeats
    );
    println!("off:      no tracing flag");
    println!("on:       {}", on_args.join(" "));
    println!("          = {what_on}");

    let collector_cpu_at_start = options.collector_pid.map(cpu_seconds).transpose()?;
    let run_started = Instant::now();
    let off = Server::start(&bin, &model, &[]).await?;
    let on = Server::start(&bin, &model, &on_args).await?;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(options.requests)
        .timeout(Duration::from_secs(600))
        .build()?;

    // Warm-up: the same batch shapes, few tokens, prompts of their own.
    let warm = prompts(
        9_999,
        options.requests,
        options.prompt_tokens,
        options.vocab_size,
    );
    for server in [&off, &on] {
        run_workload(&client, server.base_url(), &warm, 8).await?;
    }
    let expected_requests = options.requests * (1 + options.rounds * options.repeats);

    let mut rows = Vec::new();
    for round in 0..options.rounds {
        let order = if round % 2 == 0 {
            [Config::Off, Config::On]
        } else {
            [Config::On, Config::Off]
        };
        let mut throughput = [0.0; 2]; // off, on
        for config in order {
            let server = match config {
                Config::Off => &off,
                Config::On => &on,
            };
            let mut tokens = 0;
            let mut elapsed = Duration::ZERO;
            for repeat in 0..options.repeats {
                let prompts = prompts(
                    round * options.repeats + repeat,
                    options.requests,
                    options.prompt_tokens,
                    options.vocab_size,
                );
                let (t, e) =
                    run_workload(&client, server.base_url(), &prompts, options.max_tokens).await?;
                tokens += t;
                elapsed += e;
            }
            let rate = tokens as f64 / elapsed.as_secs_f64();
            throughput[(config == Config::On) as usize] = rate;
            eprintln!(
                "round {}: {:?} {tokens} tokens in {:.2} s = {rate:.1} tok/s (load {})",
                round + 1,
                config,
                elapsed.as_secs_f64(),
                load_average()
            );
        }
        rows.push((round + 1, order, throughput));
    }

    let off_stopped = off.stop().await?;
    let on_stopped = on.stop().await?;
    // Shutdown flushes; the receiver may still be decoding the last batch.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = u64::MAX;
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = counts.total_spans();
        if now == last || Instant::now() > deadline {
            break;
        }
        last = now;
    }

    println!();
    println!("| round | order | off tok/s | on tok/s | on/off |");
    println!("|---|---|---|---|---|");
    let mut ratios = Vec::new();
    let mut offs = Vec::new();
    let mut ons = Vec::new();
    for (round, order, [off_rate, on_rate]) in &rows {
        let ratio = on_rate / off_rate;
        ratios.push(ratio);
        offs.push(*off_rate);
        ons.push(*on_rate);
        let order = match order[0] {
            Config::Off => "off, on",
            Config::On => "on, off",
        };
        println!("| {round} | {order} | {off_rate:.1} | {on_rate:.1} | {ratio:.4} |");
    }
    let (lo, hi) = min_max(&ratios);
    let (off_lo, off_hi) = min_max(&offs);
    println!(
        "| median | | {:.1} | {:.1} | **{:.4}** (min {lo:.4}, max {hi:.4}) |",
        median(&offs),
        median(&ons),
        median(&ratios)
    );
    println!();
    println!(
        "off rounds spread {:.1}% (min {off_lo:.1}, max {off_hi:.1} tok/s): the noise between \
         identical runs",
        100.0 * (off_hi - off_lo) / median(&offs)
    );
    if let (Some(pid), Some(start)) = (options.collector_pid, collector_cpu_at_start) {
        let used = cpu_seconds(pid)? - start;
        println!(
            "collector (pid {pid}): {used:.2} s of CPU for {expected_requests} traced requests \
             = {:.2} s per 1,000 requests",
            used * 1000.0 / expected_requests as f64
        );
    }
    println!(
        "exported to this process's receiver: {} spans {:?}, {} span events, {} dropped events, \
         in {} export requests; {} requests sent to \"on\" (warm-up included)",
        counts.total_spans(),
        counts.spans.lock().unwrap(),
        counts.events.load(Ordering::Relaxed),
        counts.dropped_events.load(Ordering::Relaxed),
        counts.exports.load(Ordering::Relaxed),
        expected_requests
    );
    match (off_stopped, on_stopped) {
        (Some(off), Some(on)) => {
            println!(
                "engine, per step (warm-up included, {} steps each): off {:.2} ms of which \
                 {:.3} ms outside the model; on {:.2} ms of which {:.3} ms outside the model",
                off.steps,
                off.step_ms(),
                off.outside_model_ms(),
                on.step_ms(),
                on.outside_model_ms()
            );
            let extra = on.outside_model_ms() - off.outside_model_ms();
            println!(
                "engine thread's extra time outside the model with tracing on: {extra:.3} ms per \
                 step = {:.2}% of an off step",
                100.0 * extra / off.step_ms()
            );
        }
        _ => println!("no `engine stopped` line from one of the servers"),
    }
    println!(
        "total run {:.0} s; load average at end {}",
        run_started.elapsed().as_secs_f64(),
        load_average()
    );
    Ok(())
}
