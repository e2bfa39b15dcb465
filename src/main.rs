//! The `waypoint` command line.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use waypoint::cli::{CacheArgs, Device, Dtype, Weights};
use waypoint::generate::generate;
use waypoint::model::{ModelBackend, PagedKvCache};
use waypoint::sampling::{SamplingParams, DEFAULT_MAX_TOKENS};
use waypoint::telemetry::{ExportArgs, ExportConfig, LogFormat, Traces};
use waypoint::tokenizer::ChatMessage;

/// Waypoint: an LLM inference server in which every request can be followed from arrival to
/// last token.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// Console log format on stderr: `text` for people, `json` (one object per line) for
    /// log collectors. What is logged follows `RUST_LOG` (default `info`).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Generate text for one prompt, streaming it to stdout.
    Generate(GenerateArgs),
    /// Serve a model over an OpenAI-compatible HTTP API.
    Serve(Box<ServeArgs>),
    /// Benchmark a running server: Poisson arrivals, TTFT/TPOT/ITL/E2E latencies, throughput.
    Bench(waypoint::bench::BenchArgs),
}

#[derive(clap::Args, Debug)]
struct GenerateArgs {
    /// A GGUF file, a Hugging Face model directory, or `tiny` (built in, random weights).
    #[arg(long, env = "WAYPOINT_MODEL")]
    model: String,
    /// The prompt, tokenized as is unless --chat is given.
    #[arg(long)]
    prompt: String,
    /// Wrap the prompt as a user message in the model's chat template.
    #[arg(long)]
    chat: bool,
    /// Most tokens to generate.
    #[arg(long, default_value_t = DEFAULT_MAX_TOKENS, value_parser = waypoint::cli::bounded("--max-tokens", 1, 1 << 20))]
    max_tokens: usize,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Nucleus sampling: keep the smallest set of tokens whose probability reaches P.
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// Keep only the K most likely tokens (0: all).
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// Seed for reproducible sampling.
    #[arg(long)]
    seed: Option<u64>,
    /// Stop when this string is generated (repeatable).
    #[arg(long)]
    stop: Vec<String>,
    /// Keep generating past end-of-sequence tokens.
    #[arg(long)]
    ignore_eos: bool,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: Device,
    /// What weights, activations and the KV cache are stored in: auto (f32 on cpu, bf16 on
    /// cuda), f32, f16 or bf16. The CPU computes in f32 whatever is asked, with a warning.
    #[arg(long, value_enum, default_value_t = Dtype::Auto)]
    dtype: Dtype,
    /// How a checkpoint's quantized (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K) and F16/BF16
    /// projections are held on the CPU: native (the blocks only, read in place), auto (the
    /// blocks for one-token steps plus their f32 expansion for batches), or f32.
    #[arg(long, value_enum, default_value_t = Weights::Native)]
    weights: Weights,
    #[command(flatten)]
    cache: CacheArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        // `serve` installs its subscriber itself, inside its runtime (the exporter needs it).
        Command::Serve(args) => run_serve(*args, cli.log_format),
        command => waypoint::telemetry::install(cli.log_format, None)
            .map_err(anyhow::Error::from)
            .and_then(|_| match command {
                Command::Generate(args) => run_generate(args),
                Command::Bench(args) => run_bench(args),
                Command::Serve(_) => unreachable!("handled above"),
            }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

#[derive(clap::Args, Debug)]
struct ServeArgs {
    /// A GGUF file, a Hugging Face model directory, or `tiny` (built in, random weights).
    #[arg(long, env = "WAYPOINT_MODEL")]
    model: String,
    /// The model name clients use (default: the file or directory name, `tiny` for tiny).
    #[arg(long)]
    served_model_name: Option<String>,
    /// Address to listen on (use 0.0.0.0 in a container).
    #[arg(long, env = "WAYPOINT_HOST", default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on.
    #[arg(long, env = "WAYPOINT_PORT", default_value_t = 8000)]
    port: u16,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: Device,
    /// What weights, activations and the KV cache are stored in: auto (f32 on cpu, bf16 on
    /// cuda), f32, f16 or bf16. The CPU computes in f32 whatever is asked, with a warning.
    #[arg(long, value_enum, default_value_t = Dtype::Auto)]
    dtype: Dtype,
    /// How a checkpoint's quantized (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K) and F16/BF16
    /// projections are held on the CPU: native (the blocks only, read in place), auto (the
    /// blocks for one-token steps plus their f32 expansion for batches), or f32.
    #[arg(long, value_enum, default_value_t = Weights::Native)]
    weights: Weights,
    #[command(flatten)]
    cache: CacheArgs,
    #[command(flatten)]
    engine: waypoint::cli::EngineArgs,
    /// Largest request body in bytes (suffixes K, M, G accepted; at most 1G).
    #[arg(long, default_value = "4M", value_parser = waypoint::cli::parse_request_bytes)]
    max_request_bytes: usize,
    /// Require `Authorization: Bearer KEY` on /v1 routes.
    #[arg(long, env = "WAYPOINT_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Serve the debug API and page under /debug (in-flight requests, the engine's state,
    /// tracing and log settings changed at run time; docs/DEBUG_API.md).
    #[arg(long)]
    enable_debug_api: bool,
    /// The key /debug requires (`Authorization: Bearer KEY`); without it, --api-key's.
    #[arg(long, env = "WAYPOINT_ADMIN_API_KEY", hide_env_values = true)]
    admin_api_key: Option<String>,
    /// Jaeger's UI (e.g. http://localhost:16686), for the debug page's links to traces.
    #[arg(long)]
    debug_jaeger_url: Option<String>,
    /// Seconds to let in-flight requests finish after SIGINT/SIGTERM before aborting them
    /// (a second signal exits at once).
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(0..=86_400))]
    shutdown_timeout: u64,
    /// Seconds a connection may take to send a request's headers, counted from when it
    /// opens or goes idle after a response: also how long an idle keep-alive connection is
    /// kept.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3_600))]
    header_read_timeout: u64,
    /// Seconds a request body may take, on top of its length at --body-min-rate; slower
    /// bodies get 408.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3_600))]
    body_read_timeout: u64,
    /// Slowest request body upload accepted, in bytes per second (suffixes K, M, G).
    #[arg(long, default_value = "64K", value_parser = waypoint::cli::parse_rate)]
    body_min_rate: usize,
    /// Answer clients that shut down their sending side after a request (`false`: treat
    /// that as leaving, which aborts a non-streamed request at once).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    half_close: bool,
    /// Most connections served at once; more wait in the listen backlog.
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u64).range(1..=65_536))]
    max_connections: u64,
    /// Emit each request's journey (arrival, queueing, scheduling, preemption, first token,
    /// finish) as tracing spans and events; `RUST_LOG=waypoint::journey=debug` prints them.
    #[arg(long)]
    enable_journey_tracing: bool,
    /// Fraction of requests whose journey is traced, decided once per request
    /// (`x-waypoint-trace: 1` forces it). Below 1, every other request's journey is recorded
    /// in memory and exported only if tail retention keeps it (`--journey-tracing-keep`).
    #[arg(long, default_value_t = 1.0)]
    journey_tracing_sample_rate: f64,
    /// Tail retention: latency rules over which a request the head draw missed is exported
    /// anyway, as `NAME>DURATION` pairs (names queue, ttft, itl_max, e2e; units ms, s, m),
    /// or `none`. Failed, aborted and preempted requests are always kept.
    #[arg(
        long,
        default_value = waypoint::engine::retention::DEFAULT_KEEP_RULES,
        value_parser = clap::value_parser!(waypoint::engine::retention::KeepRules)
    )]
    journey_tracing_keep: waypoint::engine::retention::KeepRules,
    /// Let tail retention keep requests whose caller sent an unsampled `traceparent` (by
    /// default such a request is neither traced nor recorded: the caller decided).
    #[arg(long)]
    journey_tracing_keep_unsampled_parents: bool,
    /// Trace sampled scheduler steps: a batch summary per sampled step (and, subsampled,
    /// a snapshot of each scheduled request) on rotating `scheduler_steps` spans.
    #[arg(long)]
    step_tracing_enabled: bool,
    /// Fraction of scheduler steps traced.
    #[arg(long, default_value_t = 0.01)]
    step_tracing_sample_rate: f64,
    /// Fraction of traced steps whose scheduled requests each get a snapshot.
    #[arg(long, default_value_t = 0.001)]
    step_tracing_rich_subsample_rate: f64,
    /// Seconds a `scheduler_steps` span collects events before the next one starts (it also
    /// ends early when it holds the most events a span may keep); at most a day.
    #[arg(long, default_value_t = 10.0, value_parser = waypoint::cli::parse_span_window)]
    step_tracing_span_window: f64,
    #[command(flatten)]
    export: ExportArgs,
}

impl ServeArgs {
    /// Step tracing's configuration, when it is on.
    fn step_tracing(&self) -> anyhow::Result<Option<waypoint::engine::StepTracingConfig>> {
        if !self.step_tracing_enabled {
            return Ok(None);
        }
        let config = waypoint::engine::StepTracingConfig {
            sample_rate: self.step_tracing_sample_rate,
            rich_subsample_rate: self.step_tracing_rich_subsample_rate,
        };
        config.validate().map_err(anyhow::Error::msg)?;
        let window = self.step_tracing_span_window;
        if !(window.is_finite() && window > 0.0) {
            bail!("--step-tracing-span-window must be a positive number of seconds, got {window}");
        }
        Ok(Some(config))
    }
}

fn run_serve(args: ServeArgs, log_format: LogFormat) -> anyhow::Result<()> {
    let rate = args.journey_tracing_sample_rate;
    if !(0.0..=1.0).contains(&rate) {
        bail!("--journey-tracing-sample-rate must be in [0, 1], got {rate}");
    }
    let step_tracing = args.step_tracing()?;
    let export = ExportConfig::from_args(&args.export).map_err(anyhow::Error::msg)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let telemetry = {
        // The gRPC exporter's connection lives on this runtime.
        let _entered = runtime.enter();
        let traces = (args.enable_journey_tracing || step_tracing.is_some()).then(|| Traces {
            export: &export,
            journeys: args.enable_journey_tracing,
            step_span_window: step_tracing
                .map(|_| std::time::Duration::from_secs_f64(args.step_tracing_span_window)),
        });
        waypoint::telemetry::install(log_format, traces)?
    };
    if traces_off(&args) && export.target.is_some() {
        tracing::warn!(
            "an OTLP endpoint is set but no tracing is on: nothing will be exported \
             (add --enable-journey-tracing and/or --step-tracing-enabled)"
        );
    }
    if let Some(rotator) = telemetry.step_span_rotator() {
        // An idle server emits no step event that would rotate the open span.
        runtime.spawn(async move {
            let mut every_second = tokio::time::interval(std::time::Duration::from_secs(1));
            loop {
                every_second.tick().await;
                rotator.rotate_if_due();
            }
        });
    }
    let serve_tracing = ServeTracing {
        step_tracing,
        log_filter: telemetry.log_filter(),
    };
    let served = match args.device {
        Device::Cpu => {
            serve_on::<burn::backend::Flex>(args, serve_tracing, Default::default(), &runtime)
        }
        #[cfg(feature = "cuda")]
        Device::Cuda(index) => serve_on::<burn::backend::Cuda>(
            args,
            serve_tracing,
            burn::backend::cuda::CudaDevice::new(index),
            &runtime,
        ),
        #[cfg(not(feature = "cuda"))]
        Device::Cuda(_) => Err(anyhow::anyhow!(
            "this waypoint was built without CUDA support; rebuild with `--features cuda`"
        )),
    };
    // Flush what is queued, whatever happened; blocking, so off the runtime's workers. The
    // exporter has its own timeout; this bound holds even if a collector never answers.
    let flushed = runtime.spawn_blocking(move || telemetry.shutdown());
    // (The timer is made inside the runtime, which it needs.)
    let flush = async { tokio::time::timeout(EXPORT_FLUSH_TIMEOUT, flushed).await };
    if runtime.block_on(flush).is_err() {
        tracing::warn!("trace export did not flush in time; exiting without it");
    }
    runtime.shutdown_background();
    served
}

/// The longest shutdown waits for the trace exporter to flush.
const EXPORT_FLUSH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

fn traces_off(args: &ServeArgs) -> bool {
    !args.enable_journey_tracing && !args.step_tracing_enabled
}

/// What `serve` takes from the installed telemetry.
struct ServeTracing {
    step_tracing: Option<waypoint::engine::StepTracingConfig>,
    /// The console's filter, which `PUT /debug/log-filter` changes.
    log_filter: Option<std::sync::Arc<waypoint::telemetry::LogFilter>>,
}

fn serve_on<B: ModelBackend>(
    args: ServeArgs,
    serve_tracing: ServeTracing,
    device: B::Device,
    runtime: &tokio::runtime::Runtime,
) -> anyhow::Result<()>
where
    waypoint::engine::BurnRunner<B>: waypoint::engine::ModelRunner,
{
    // Bad flags and a missing file fail before anything listens: every check between flags
    // (and against the model's shape, which opening reads) runs here, once. The slow part
    // (reading and packing the weights) runs while the server answers 503 "loading".
    let mut files = waypoint::loader::open(&args.model)?;
    files.weight_policy = args.weights.into();
    let dtype = waypoint::cli::model_dtype::<B>(args.dtype, args.device, &device);
    let pool = args.cache.pool(&files.config, dtype)?;
    // The RoPE table covers what will be served, not what the checkpoint claims.
    files.config.max_position_embeddings = waypoint::cli::served_context(
        files.config.max_position_embeddings,
        args.engine.max_model_len,
        &pool,
    );
    let mut engine_config = args.engine.config(&files.config, pool)?;
    let ServeTracing {
        step_tracing,
        log_filter,
    } = serve_tracing;
    engine_config.step_tracing = step_tracing;
    let name = args
        .served_model_name
        .clone()
        .unwrap_or_else(|| files.name.clone());
    let load = move || -> anyhow::Result<waypoint::engine::RunningEngine> {
        let (model, tokenizer, _) = files.load::<B>(&device, dtype)?;
        let scheduler = &engine_config.scheduler;
        let model_info = waypoint::engine::ModelInfo {
            name: name.clone(),
            max_context: waypoint::engine::max_sequence_len(
                scheduler.max_model_len,
                pool.num_slots(),
            ),
            vocab_size: model.config().vocab_size,
        };
        tracing::info!(
            kv_blocks = pool.num_blocks,
            block_size = pool.block_size,
            kv_bytes = pool.bytes(model.config()),
            // What the pool holds, in the units an operator sizes it by.
            kv_tokens = pool.num_slots(),
            full_context_sequences = pool.num_slots() / model_info.max_context.max(1),
            max_model_len = model_info.max_context,
            "KV cache allocated"
        );
        let runner = waypoint::engine::BurnRunner::new(model, pool);
        Ok(waypoint::engine::start(
            runner,
            Arc::new(tokenizer),
            model_info,
            engine_config,
        )?)
    };

    let config = waypoint::server::ServerConfig {
        host: args.host.clone(),
        port: args.port,
        api_key: args.api_key.clone(),
        admin_api_key: args.admin_api_key.clone(),
        enable_debug_api: args.enable_debug_api,
        jaeger_url: args.debug_jaeger_url.clone(),
        step_tracing,
        max_request_bytes: args.max_request_bytes,
        journey_sample_rate: args
            .enable_journey_tracing
            .then_some(args.journey_tracing_sample_rate),
        journey_keep: args.journey_tracing_keep,
        journey_keep_unsampled_parents: args.journey_tracing_keep_unsampled_parents,
        body_read_timeout: std::time::Duration::from_secs(args.body_read_timeout),
        body_min_rate: args.body_min_rate,
        ..Default::default()
    };
    let connections = waypoint::server::ConnectionConfig {
        header_read_timeout: std::time::Duration::from_secs(args.header_read_timeout),
        half_close: args.half_close,
        // Bounded to 65,536 by its parser.
        max_connections: args.max_connections as usize,
        shutdown_timeout: std::time::Duration::from_secs(args.shutdown_timeout),
        ..Default::default()
    };
    runtime.block_on(async {
        let address = format!("{}:{}", args.host, args.port);
        let listener = tokio::net::TcpListener::bind(&address)
            .await
            .with_context(|| format!("cannot listen on {address}"))?;
        let local = listener.local_addr()?;
        tracing::info!(address = %local, "listening; loading the model");
        // The port actually bound (`--port 0` picks one), which spans report as `server.port`.
        let config = waypoint::server::ServerConfig {
            port: local.port(),
            ..config
        };

        // How loading ended, for after serving: the engine to join, or the error to report.
        let (loaded_tx, loaded_rx) = tokio::sync::oneshot::channel::<anyhow::Result<_>>();
        // The engine's handle, for the watch on the engine's death (absent while loading).
        let (watch_tx, watch_rx) =
            tokio::sync::oneshot::channel::<waypoint::engine::EngineHandle>();
        let loaded = async move {
            let outcome = tokio::task::spawn_blocking(load)
                .await
                .unwrap_or_else(|panic| Err(anyhow::anyhow!("loading panicked: {panic}")));
            let state = outcome.as_ref().ok().map(|engine| {
                let _ = watch_tx.send(engine.handle.clone());
                let state = waypoint::server::AppState::new(engine.handle.clone(), config);
                match log_filter {
                    Some(log_filter) => state.with_log_filter(log_filter),
                    None => state,
                }
            });
            let _ = loaded_tx.send(outcome);
            state
        };
        // The first signal drains (the server aborts what is left after the shutdown
        // timeout and closes every connection); a second one exits at once.
        let signals = waypoint::server::shutdown::Signals::new()
            .context("cannot listen for signals")?
            .first_then_force_exit();
        // A dead engine shuts the server down as a signal does, so that `serve` exits
        // non-zero and an orchestrator restarts it (rather than keep a process up that can
        // only answer 503). The dead engine has already failed every request it held, so the
        // drain only lets their error responses out.
        let engine_died = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let died_flag = engine_died.clone();
        let shutdown = async move {
            let death = async move {
                match watch_rx.await {
                    Ok(handle) => handle.died().await,
                    Err(_) => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = signals => {}
                _ = death => {
                    died_flag.store(true, std::sync::atomic::Ordering::Release);
                    tracing::error!("the engine died: draining, then exiting with an error");
                }
            }
        };
        let served =
            waypoint::server::serve_connections(listener, loaded, shutdown, connections).await;
        // A shutdown during loading waits for the load to finish, then stops the engine.
        let engine = match loaded_rx.await {
            Ok(Ok(engine)) => engine,
            Ok(Err(error)) => return Err(error.context("loading the model failed")),
            Err(_) => anyhow::bail!("loading the model ended without an outcome"),
        };
        served?;
        // The engine thread ends once every handle is gone; joining it blocks.
        tokio::task::spawn_blocking(move || engine.shutdown()).await?;
        if engine_died.load(std::sync::atomic::Ordering::Acquire) {
            anyhow::bail!("the engine failed (see the log above); exiting so that it is restarted");
        }
        anyhow::Ok(())
    })?;
    tracing::info!("waypoint stopped");
    Ok(())
}

fn run_bench(args: waypoint::bench::BenchArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(waypoint::bench::run(args))?;
    Ok(())
}

fn run_generate(args: GenerateArgs) -> anyhow::Result<()> {
    match args.device {
        Device::Cpu => generate_on::<burn::backend::Flex>(&args, &Default::default()),
        #[cfg(feature = "cuda")]
        Device::Cuda(index) => {
            generate_on::<burn::backend::Cuda>(&args, &burn::backend::cuda::CudaDevice::new(index))
        }
        #[cfg(not(feature = "cuda"))]
        Device::Cuda(_) => {
            bail!("this waypoint was built without CUDA support; rebuild with `--features cuda`")
        }
    }
}

fn generate_on<B: ModelBackend>(args: &GenerateArgs, device: &B::Device) -> anyhow::Result<()> {
    let mut files = waypoint::loader::open(&args.model)?;
    files.weight_policy = args.weights.into();
    let dtype = waypoint::cli::model_dtype::<B>(args.dtype, args.device, device);
    let pool = args.cache.pool(&files.config, dtype)?;
    // The RoPE table covers what the cache can hold, not what the checkpoint claims.
    files.config.max_position_embeddings =
        waypoint::cli::served_context(files.config.max_position_embeddings, None, &pool);
    let (model, tokenizer, _name) = files.load::<B>(device, dtype)?;
    let tokenizer = Arc::new(tokenizer);

    let prompt_ids = if args.chat {
        let template = tokenizer
            .chat_template()
            .context("--chat: this model has no chat template")?;
        let text = template.render(
            &[ChatMessage {
                role: "user".into(),
                content: args.prompt.clone(),
            }],
            true,
        )?;
        // The template writes its own BOS when it wants one.
        tokenizer.encode(&text, false)?
    } else {
        tokenizer.encode(&args.prompt, true)?
    };
    let params = SamplingParams {
        temperature: args.temperature,
        top_p: args.top_p,
        top_k: (args.top_k > 0).then_some(args.top_k),
        seed: args.seed,
        max_tokens: args.max_tokens,
        stop: args.stop.clone(),
        ignore_eos: args.ignore_eos,
        ..SamplingParams::default()
    };
    if let Err(invalid) = params.validate(model.config().vocab_size) {
        bail!("--{}: {}", invalid.param.replace('_', "-"), invalid.message);
    }

    let pool = waypoint::cli::pool_for_one_request(pool, prompt_ids.len() + args.max_tokens);
    tracing::debug!(
        kv_blocks = pool.num_blocks,
        kv_bytes = pool.bytes(model.config()),
        "KV cache sized to the request"
    );
    let mut cache = PagedKvCache::new(pool, model.config(), device);

    let mut stdout = std::io::stdout().lock();
    let generation = generate(
        &model,
        &tokenizer,
        &mut cache,
        &prompt_ids,
        &params,
        |text| {
            // A closed pipe (e.g. `| head`) must not turn into a panic.
            let _ = stdout
                .write_all(text.as_bytes())
                .and_then(|_| stdout.flush());
        },
    )?;
    // A shell prompt should not start mid-line; a pipe gets exactly the generated text.
    if stdout.is_terminal() {
        let _ = writeln!(stdout);
    }
    let generated = generation.token_ids.len();
    let rate =
        |tokens: usize, time: std::time::Duration| tokens as f64 / time.as_secs_f64().max(1e-9);
    eprintln!(
        "prompt tokens: {}, generated tokens: {}, prefill: {:.1} tok/s, decode: {:.1} tok/s, finish: {}",
        generation.prompt_tokens,
        generated,
        rate(generation.prompt_tokens, generation.prefill_time),
        rate(generated.saturating_sub(1), generation.decode_time),
        generation.finish_reason.as_str(),
    );
    Ok(())
}
