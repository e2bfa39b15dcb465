//! The process's `tracing` subscriber: console output and OpenTelemetry export, as
//! independent layers over one registry.
//!
//! - Console: `RUST_LOG` (default `info`) filters it; text or JSON lines on stderr; journey
//!   events as one readable line each in text mode ([`crate::journey_console`]).
//! - Export (only with `--enable-journey-tracing`): `tracing_opentelemetry`'s layer turns the
//!   journey spans (`llm_request`, `llm_core`) into OpenTelemetry spans, each in its
//!   instrumentation scope ([`scopes`]); `waypoint_layers::SpanEventLayer` turns journey
//!   events into span events on them; spans leave through OTLP ([`export`]). These layers
//!   filter for themselves, so journey events (DEBUG) are exported whatever `RUST_LOG` says,
//!   and nothing else is.
//!
//! The API and the engine only emit `tracing` spans and events; apart from `traceparent`
//! handling ([`propagation`]), OpenTelemetry is confined to this module.

use std::sync::{Arc, Mutex, PoisonError};

use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::{Metadata, Subscriber};
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::layer::Identity;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{reload, EnvFilter, Layer, Registry};
use waypoint_layers::{RotatingSpanHandle, RotatingSpanLayer, SpanEventLayer};

use crate::journey_console::{is_journey_target, JourneyConsoleLayer};

pub mod export;
pub mod propagation;
pub mod replay;
pub mod scopes;

pub use export::{ExportTarget, InstallError, OtlpProtocol};

/// Most events one exported span keeps, unless `OTEL_SPAN_EVENT_COUNT_LIMIT` says otherwise
/// (the SDK's own default is 128, and it drops the rest silently). A journey has a handful,
/// plus two per preemption; a step span rotates before it reaches the limit.
pub const MAX_EVENTS_PER_SPAN: u32 = 1024;

/// The per-span event limit: `OTEL_SPAN_EVENT_COUNT_LIMIT` if it is a positive integer, else
/// [`MAX_EVENTS_PER_SPAN`]. The provider and the step spans' rotation use the same value.
/// At least 2, the room a journey needs to end (`FINISHED`, `TRUNCATED`).
pub fn max_events_per_span(env: impl Fn(&str) -> Option<String>) -> u32 {
    env("OTEL_SPAN_EVENT_COUNT_LIMIT")
        .and_then(|value| value.trim().parse::<u32>().ok())
        .filter(|&limit| limit > 0)
        .unwrap_or(MAX_EVENTS_PER_SPAN)
        .max(2)
}

/// Console output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// The export flags of `waypoint serve`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ExportArgs {
    /// Where to send traces (OTLP), e.g. http://localhost:4317 for gRPC or
    /// http://localhost:4318/v1/traces for HTTP. Default: $OTEL_EXPORTER_OTLP_TRACES_ENDPOINT,
    /// then $OTEL_EXPORTER_OTLP_ENDPOINT; none means no export.
    #[arg(long)]
    pub otlp_traces_endpoint: Option<String>,
    /// OTLP transport. Default: $OTEL_EXPORTER_OTLP_TRACES_PROTOCOL,
    /// $OTEL_EXPORTER_OTLP_PROTOCOL, then grpc.
    #[arg(long, value_enum)]
    pub otlp_protocol: Option<OtlpProtocol>,
}

/// What to export, resolved from flags and environment.
#[derive(Debug, Clone)]
pub struct ExportConfig {
    /// `None`: spans are made (for trace ids) but go nowhere.
    pub target: Option<ExportTarget>,
    /// `service.name` of the resource (`OTEL_SERVICE_NAME`, default `waypoint`).
    pub service_name: String,
}

impl ExportConfig {
    /// Resolves `args` against the process environment.
    pub fn from_args(args: &ExportArgs) -> Result<Self, String> {
        let env = |name: &str| std::env::var(name).ok();
        Ok(Self {
            target: export::resolve_target(
                args.otlp_traces_endpoint.as_deref(),
                args.otlp_protocol,
                env,
            )?,
            service_name: export::service_name(env),
        })
    }
}

/// Name of the rotating spans that carry step events.
pub const STEP_SPAN_NAME: &str = "scheduler_steps";

/// What goes to OpenTelemetry, and where.
#[derive(Debug, Clone, Copy)]
pub struct Traces<'a> {
    /// Destination and service name.
    pub export: &'a ExportConfig,
    /// Export request journeys (`llm_request`, `llm_core`).
    pub journeys: bool,
    /// Export step events on `scheduler_steps` spans rotated after this window.
    pub step_span_window: Option<std::time::Duration>,
}

/// The installed subscriber's export side, kept to flush it at shutdown.
#[derive(Debug, Default)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
    step_spans: Option<RotatingSpanHandle>,
    log_filter: Option<Arc<LogFilter>>,
}

/// Installs the global subscriber: the console, and trace export when `traces` is given.
/// With gRPC export this must run inside the tokio runtime that serves (the exporter's
/// connection lives there).
pub fn install(format: LogFormat, traces: Option<Traces<'_>>) -> Result<Telemetry, InstallError> {
    let mut telemetry = Telemetry::default();
    let mut exporting: BoxedLayer = Box::new(Identity::new());
    if let Some(traces) = traces {
        let export = traces.export;
        let max_events = max_events_per_span(|name| std::env::var(name).ok());
        crate::engine::journey::fit_journeys_to_span_limit(max_events as usize);
        let mut builder = replay::provider_builder()
            .with_resource(export::resource(export.service_name.clone()))
            .with_max_events_per_span(max_events);
        if let Some(target) = &export.target {
            builder = replay::with_processor(builder, export::batch_processor(target)?);
        }
        let provider = builder.build();
        (exporting, telemetry.step_spans) = export_layers(
            &provider,
            traces.journeys,
            traces.step_span_window,
            max_events,
        );
        telemetry.provider = Some(provider);
    }
    let (console, log_filter) = console_layers(format);
    telemetry.log_filter = Some(Arc::new(log_filter));
    tracing_subscriber::registry()
        .with(console.and_then(exporting))
        .try_init()?;
    if let Some(traces) = traces {
        let what = match (traces.journeys, traces.step_span_window.is_some()) {
            (true, true) => "journey and step traces",
            (true, false) => "journey traces",
            _ => "step traces",
        };
        match &traces.export.target {
            Some(target) => tracing::info!(
                endpoint = %target.endpoint,
                protocol = %target.protocol,
                service = %traces.export.service_name,
                "exporting {what}"
            ),
            None => tracing::info!(
                "{what}: on, but no OTLP endpoint is set (--otlp-traces-endpoint or \
                 OTEL_EXPORTER_OTLP_TRACES_ENDPOINT), so they go to the console only, with \
                 RUST_LOG=waypoint::journey=debug,waypoint::api=debug,waypoint::step=debug"
            ),
        }
    }
    Ok(telemetry)
}

impl Telemetry {
    /// The console's log filter, to change while serving.
    pub fn log_filter(&self) -> Option<Arc<LogFilter>> {
        self.log_filter.clone()
    }

    /// The step spans' rotation handle, for a timer that calls `rotate_if_due` every second
    /// or so: an idle server emits no step event that would end the open span, and its
    /// events would wait.
    pub fn step_span_rotator(&self) -> Option<RotatingSpanHandle> {
        self.step_spans.clone()
    }

    /// Ends export: ends the open step span, flushes the spans still queued and stops the
    /// exporter. Blocks (up to the export timeout): call it from `spawn_blocking` inside the
    /// serving runtime, after the engine has stopped, so that every journey span has ended.
    pub fn shutdown(self) {
        if let Some(step_spans) = &self.step_spans {
            step_spans.end_current();
        }
        if let Some(provider) = self.provider {
            if let Err(error) = provider.shutdown() {
                tracing::warn!("trace export did not shut down cleanly: {error}");
            }
        }
    }
}

/// Layers are combined with `and_then` (and absent ones are `Identity`) rather than put in a
/// `Vec` or an `Option`: those do not pass `on_register_dispatch` on, which
/// `SpanEventLayer` uses to find OpenTelemetry spans under a scoped dispatcher.
type BoxedLayer = Box<dyn Layer<Registry> + Send + Sync>;

/// The export layers: journeys if `journeys`, step events on spans rotated after
/// `step_span_window` (and holding at most `max_events`) if given; with the step spans'
/// rotation handle.
fn export_layers(
    provider: &SdkTracerProvider,
    journeys: bool,
    step_span_window: Option<std::time::Duration>,
    max_events: u32,
) -> (BoxedLayer, Option<RotatingSpanHandle>) {
    let mut exporting: BoxedLayer = Box::new(Identity::new());
    let mut step_spans = None;
    if journeys {
        exporting = journey_export_layers(provider);
    }
    if let Some(window) = step_span_window {
        let steps = RotatingSpanLayer::new(
            scopes::scope_tracer(provider, scopes::STEP_SCOPE),
            STEP_SPAN_NAME,
        )
        .with_target(crate::engine::step_trace::TARGET, "step")
        .with_window(window)
        .with_max_events(max_events as usize);
        step_spans = Some(steps.handle());
        let steps = steps.with_filter(filter_fn(|metadata| {
            metadata.target() == crate::engine::step_trace::TARGET
        }));
        exporting = exporting.and_then(steps).boxed();
    }
    (exporting, step_spans)
}

/// Whether `metadata` is a journey span (`llm_request`, `llm_core`) or event.
fn is_journey(metadata: &Metadata<'_>) -> bool {
    is_journey_target(metadata.target())
}

/// The two layers that export journeys, each with its own filter.
fn journey_export_layers(provider: &SdkTracerProvider) -> BoxedLayer {
    let span_events = SpanEventLayer::new()
        .with_target(crate::engine::journey::TARGET, "journey")
        .with_target(crate::server::journey::TARGET, "api");
    // Only the journey spans, and no events: `span_events` adds the journey events, and
    // other events (logs) do not belong in the trace.
    let otel = tracing_opentelemetry::layer()
        .with_tracer(scopes::ScopedTracer::new(provider))
        .with_tracked_inactivity(false)
        .with_threads(false)
        .with_location(false)
        .with_filter(filter_fn(|metadata| {
            metadata.is_span() && is_journey(metadata)
        }));
    otel.and_then(span_events.with_filter(filter_fn(is_journey)))
        .boxed()
}

/// The console's `RUST_LOG` filter, which `PUT /debug/log-filter` changes while serving
/// (tracing-subscriber's reload): one handle per console layer, all set together.
#[derive(Debug)]
pub struct LogFilter {
    handles: Vec<reload::Handle<EnvFilter, Registry>>,
    current: Mutex<String>,
}

impl LogFilter {
    /// The directives in force.
    pub fn current(&self) -> String {
        self.current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Replaces the directives (`RUST_LOG` syntax) from the next event on; returns the
    /// previous ones. Invalid directives change nothing, and the error says why.
    pub fn set(&self, directives: &str) -> Result<String, String> {
        let directives = directives.trim();
        EnvFilter::try_new(directives).map_err(|error| error.to_string())?;
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        for handle in &self.handles {
            handle
                .reload(EnvFilter::new(directives))
                .map_err(|error| error.to_string())?;
        }
        Ok(std::mem::replace(&mut current, directives.to_string()))
    }
}

/// The console: general lines filtered by `RUST_LOG`, and in text mode journey events in
/// their own one-line format; with the filter's reload handles.
fn console_layers(format: LogFormat) -> (BoxedLayer, LogFilter) {
    let mut directives = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".to_string());
    if let Err(error) = EnvFilter::try_new(&directives) {
        eprintln!("warning: ignoring RUST_LOG={directives:?}: {error}");
        directives = "info".to_string();
    }
    let mut handles = Vec::new();
    let mut env_filter = || {
        let (filter, handle) = reload::Layer::new(EnvFilter::new(&directives));
        handles.push(handle);
        filter
    };
    let text = format == LogFormat::Text;
    let general = match format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .boxed(),
    };
    let general = general
        .with_filter(env_filter())
        .with_filter(filter_fn(move |metadata| {
            !(text && metadata.is_event() && is_journey(metadata))
        }))
        .boxed();
    let journeys: BoxedLayer = if text {
        JourneyConsoleLayer.with_filter(env_filter()).boxed()
    } else {
        Box::new(Identity::new())
    };
    let log_filter = LogFilter {
        handles,
        current: Mutex::new(directives.clone()),
    };
    (general.and_then(journeys).boxed(), log_filter)
}

/// A subscriber with just the journey export layers, for tests and benchmarks that bring
/// their own provider (for instance one with an in-memory exporter).
pub fn journey_export_subscriber(
    provider: &SdkTracerProvider,
) -> impl Subscriber + for<'a> LookupSpan<'a> + Send + Sync {
    tracing_subscriber::registry().with(journey_export_layers(provider))
}

/// The subscriber [`install`] sets up for `waypoint serve` with journey tracing if
/// `journeys` and step tracing if `step_span_window` is given, over `provider`, not installed
/// and without the start-up log lines: for benchmarks of what tracing costs in the server's
/// own stack (`benches/tracing.rs`). The console follows `RUST_LOG` as in [`install`]; step
/// spans hold at most [`max_events_per_span`] events, which `provider` should allow. Returns
/// the step spans' rotation handle too.
pub fn serve_subscriber(
    format: LogFormat,
    provider: &SdkTracerProvider,
    journeys: bool,
    step_span_window: Option<std::time::Duration>,
) -> (
    impl Subscriber + for<'a> LookupSpan<'a> + Send + Sync,
    Option<RotatingSpanHandle>,
) {
    let max_events = max_events_per_span(|name| std::env::var(name).ok());
    let (exporting, step_spans) = export_layers(provider, journeys, step_span_window, max_events);
    let (console, _) = console_layers(format);
    let subscriber = tracing_subscriber::registry().with(console.and_then(exporting));
    (subscriber, step_spans)
}
