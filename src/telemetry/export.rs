//! Where spans go: the OTLP exporter, chosen by flags or the standard `OTEL_*` variables,
//! behind a batch processor, with export errors logged at most once per interval.
//!
//! A collector that is down or slow must never block or slow serving. Ending a span only
//! queues it for the batch processor's own thread (a bounded queue: when it is full, spans
//! are dropped, so memory stays bounded); that thread exports with a timeout.

use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use opentelemetry_otlp::{Protocol, WithExportConfig as _};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, SpanData, SpanExporter, SpanProcessor,
};
use opentelemetry_sdk::Resource;

/// How long one export may take before it is abandoned.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// Export failures are logged at most once per this interval, with a count of the rest.
pub const ERROR_LOG_INTERVAL: Duration = Duration::from_secs(30);

/// Spans in batches whose export failed, since the process started: one exporter per process,
/// read by `/metrics` (`waypoint_telemetry_dropped_spans_total{reason="export_failed"}`).
static SPANS_LOST_TO_FAILED_EXPORTS: AtomicU64 = AtomicU64::new(0);

/// How many spans were lost because their export failed (collector down, refused, timed out).
pub fn spans_lost_to_failed_exports() -> u64 {
    SPANS_LOST_TO_FAILED_EXPORTS.load(Ordering::Relaxed)
}

/// Spans handed to the batch processor whose export has not finished yet.
static SPANS_PENDING: AtomicUsize = AtomicUsize::new(0);

/// Spans dropped because the export queue was full (`reason="queue_full"`).
static SPANS_LOST_TO_A_FULL_QUEUE: AtomicU64 = AtomicU64::new(0);

/// How many spans were dropped because the export queue was full (the collector was slower
/// than the server, or down long enough for the queue to fill).
pub fn spans_lost_to_a_full_queue() -> u64 {
    SPANS_LOST_TO_A_FULL_QUEUE.load(Ordering::Relaxed)
}

/// The OpenTelemetry default for `OTEL_BSP_MAX_QUEUE_SIZE`.
const DEFAULT_MAX_QUEUE_SIZE: usize = 2048;

/// The export queue's bound: `OTEL_BSP_MAX_QUEUE_SIZE`, read as the SDK reads it.
fn max_queue_size(env: impl Fn(&str) -> Option<String>) -> usize {
    env("OTEL_BSP_MAX_QUEUE_SIZE")
        .and_then(|value| value.parse().ok())
        .unwrap_or(DEFAULT_MAX_QUEUE_SIZE)
}

/// A span processor that bounds the spans waiting for export itself, so that it can count
/// what it drops: the SDK's batch processor drops spans past its queue silently (its count
/// is private). The inner processor's own queue is made larger than this bound, so that it
/// never drops one.
#[derive(Debug)]
pub struct CountedQueue<P> {
    inner: P,
    limit: usize,
}

impl<P: SpanProcessor> SpanProcessor for CountedQueue<P> {
    fn on_start(&self, span: &mut opentelemetry_sdk::trace::Span, cx: &opentelemetry::Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        if SPANS_PENDING.fetch_add(1, Ordering::Relaxed) >= self.limit {
            SPANS_PENDING.fetch_sub(1, Ordering::Relaxed);
            SPANS_LOST_TO_A_FULL_QUEUE.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.inner.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// The OTLP transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OtlpProtocol {
    /// OTLP over gRPC (a collector's port 4317).
    #[value(name = "grpc")]
    Grpc,
    /// OTLP over HTTP with protobuf bodies (a collector's port 4318, path `/v1/traces`).
    #[value(name = "http/protobuf")]
    HttpProtobuf,
}

impl OtlpProtocol {
    fn parse(value: &str) -> Result<Self, String> {
        match value.trim() {
            "grpc" => Ok(Self::Grpc),
            "http/protobuf" => Ok(Self::HttpProtobuf),
            other => Err(format!(
                "unsupported OTLP protocol {other:?}: use grpc or http/protobuf"
            )),
        }
    }
}

impl fmt::Display for OtlpProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Grpc => "grpc",
            Self::HttpProtobuf => "http/protobuf",
        })
    }
}

/// A resolved export destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportTarget {
    /// The URL spans are sent to, as the exporter takes it.
    pub endpoint: String,
    /// The transport.
    pub protocol: OtlpProtocol,
}

/// Resolves the destination the way the OpenTelemetry specification describes, the flags
/// taking the place of the signal-specific variables:
/// - endpoint: `--otlp-traces-endpoint`, else `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (both used
///   as given), else `OTEL_EXPORTER_OTLP_ENDPOINT` (a base URL: for HTTP, `/v1/traces` is
///   appended). A traces endpoint for HTTP given without a path also gets `/v1/traces`, since
///   a bare collector address is the common mistake and a collector serves nothing at `/`.
/// - protocol: `--otlp-protocol`, else `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`, else
///   `OTEL_EXPORTER_OTLP_PROTOCOL`, else gRPC.
///
/// `None` when no endpoint is set anywhere: export is off. Empty values count as unset.
pub fn resolve_target(
    endpoint_flag: Option<&str>,
    protocol_flag: Option<OtlpProtocol>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Option<ExportTarget>, String> {
    let env = |name: &str| env(name).filter(|value| !value.trim().is_empty());
    let protocol = match protocol_flag {
        Some(protocol) => protocol,
        None => match env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            .or_else(|| env("OTEL_EXPORTER_OTLP_PROTOCOL"))
        {
            Some(value) => OtlpProtocol::parse(&value)?,
            None => OtlpProtocol::Grpc,
        },
    };
    let signal_endpoint = endpoint_flag
        .map(str::to_string)
        .filter(|value| !value.trim().is_empty())
        .or_else(|| env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"));
    let (endpoint, is_base) = match signal_endpoint {
        Some(endpoint) => (endpoint, false),
        None => match env("OTEL_EXPORTER_OTLP_ENDPOINT") {
            Some(endpoint) => (endpoint, true),
            None => return Ok(None),
        },
    };
    let endpoint = endpoint.trim().to_string();
    let Some((scheme, rest)) = endpoint.split_once("://") else {
        return Err(format!(
            "OTLP endpoint {endpoint:?} is not a URL: expected http://host:port"
        ));
    };
    if scheme != "http" && scheme != "https" {
        return Err(format!(
            "OTLP endpoint {endpoint:?}: scheme must be http or https"
        ));
    }
    if scheme == "https" {
        return Err(format!(
            "OTLP endpoint {endpoint:?}: this build exports without TLS; \
             use http:// to a local collector (which can forward over TLS)"
        ));
    }
    let has_path = rest.find('/').is_some_and(|slash| rest.len() > slash + 1);
    let endpoint = if protocol == OtlpProtocol::HttpProtobuf && (is_base || !has_path) {
        format!("{}/v1/traces", endpoint.trim_end_matches('/'))
    } else {
        endpoint
    };
    Ok(Some(ExportTarget { endpoint, protocol }))
}

/// The service name: `OTEL_SERVICE_NAME`, else `waypoint`.
pub fn service_name(env: impl Fn(&str) -> Option<String>) -> String {
    env("OTEL_SERVICE_NAME")
        .filter(|name| !name.trim().is_empty())
        .unwrap_or_else(|| "waypoint".to_string())
}

/// The resource every span carries: the service name (and `OTEL_RESOURCE_ATTRIBUTES`,
/// which the SDK reads).
pub fn resource(service_name: String) -> Resource {
    Resource::builder().with_service_name(service_name).build()
}

/// Why the process's telemetry could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// The OTLP exporter could not be built for the endpoint.
    #[error("cannot build the OTLP exporter for {endpoint}: {source}")]
    Exporter {
        /// Where it was to export.
        endpoint: String,
        /// What the exporter's builder said.
        #[source]
        source: opentelemetry_otlp::ExporterBuildError,
    },
    /// A global subscriber is installed already.
    #[error("cannot install the tracing subscriber: {0}")]
    Subscriber(#[from] tracing_subscriber::util::TryInitError),
}

/// A batch processor exporting to `target`. For gRPC this must run inside a tokio runtime,
/// which must outlive the processor: the channel's connection lives on it.
pub fn batch_processor(
    target: &ExportTarget,
) -> Result<CountedQueue<BatchSpanProcessor>, InstallError> {
    let built = match target.protocol {
        OtlpProtocol::Grpc => opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(&target.endpoint)
            .with_timeout(EXPORT_TIMEOUT)
            .build(),
        OtlpProtocol::HttpProtobuf => opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(&target.endpoint)
            .with_timeout(EXPORT_TIMEOUT)
            .build(),
    };
    let exporter = built.map_err(|source| InstallError::Exporter {
        endpoint: target.endpoint.clone(),
        source,
    })?;
    let exporter = LoggedFailures::new(exporter, target.endpoint.clone(), ERROR_LOG_INTERVAL);
    // The batch settings honour the OTEL_BSP_* variables (delay, batch size); the queue's
    // bound is `CountedQueue`'s, and the SDK's own queue has room to spare beyond it.
    let limit = max_queue_size(|name| std::env::var(name).ok());
    let config = BatchConfigBuilder::default()
        .with_max_queue_size(limit.saturating_mul(2).max(DEFAULT_MAX_QUEUE_SIZE))
        .build();
    let inner = BatchSpanProcessor::builder(exporter)
        .with_batch_config(config)
        .build();
    Ok(CountedQueue { inner, limit })
}

/// A [`SpanExporter`] that logs its inner exporter's failures at most once per interval,
/// with how many spans were lost since the last report.
#[derive(Debug)]
pub struct LoggedFailures<E> {
    inner: E,
    endpoint: String,
    interval: Duration,
    last_logged: Mutex<Option<Instant>>,
    failed_batches: AtomicU64,
    lost_spans: AtomicU64,
}

impl<E> LoggedFailures<E> {
    /// Wraps `inner`, which exports to `endpoint`.
    pub fn new(inner: E, endpoint: String, interval: Duration) -> Self {
        Self {
            inner,
            endpoint,
            interval,
            last_logged: Mutex::new(None),
            failed_batches: AtomicU64::new(0),
            lost_spans: AtomicU64::new(0),
        }
    }

    fn failed(&self, spans: usize, error: &dyn fmt::Display) {
        SPANS_LOST_TO_FAILED_EXPORTS.fetch_add(spans as u64, Ordering::Relaxed);
        self.failed_batches.fetch_add(1, Ordering::Relaxed);
        self.lost_spans.fetch_add(spans as u64, Ordering::Relaxed);
        let mut last = self
            .last_logged
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let now = Instant::now();
        if last.is_some_and(|at| now.duration_since(at) < self.interval) {
            return;
        }
        *last = Some(now);
        let batches = self.failed_batches.swap(0, Ordering::Relaxed);
        let lost = self.lost_spans.swap(0, Ordering::Relaxed);
        tracing::warn!(
            endpoint = %self.endpoint,
            failed_batches = batches,
            lost_spans = lost,
            "trace export failed: {error} (reported at most every {}s; serving goes on)",
            self.interval.as_secs()
        );
    }
}

impl<E: SpanExporter> SpanExporter for LoggedFailures<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let spans = batch.len();
        let result = self.inner.export(batch).await;
        if let Err(error) = &result {
            self.failed(spans, error);
        }
        // Saturating: spans that did not come through `CountedQueue` (none in the server)
        // must not wrap the count.
        let _ = SPANS_PENDING.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |pending| {
            Some(pending.saturating_sub(spans))
        });
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// A processor that keeps every span (its export never finishes).
    #[derive(Debug, Default)]
    struct Holding(Mutex<Vec<SpanData>>);

    impl SpanProcessor for Holding {
        fn on_start(&self, _: &mut opentelemetry_sdk::trace::Span, _: &opentelemetry::Context) {}
        fn on_end(&self, span: SpanData) {
            self.0.lock().unwrap().push(span);
        }
        fn force_flush(&self) -> OTelSdkResult {
            Ok(())
        }
        fn shutdown_with_timeout(&self, _: Duration) -> OTelSdkResult {
            Ok(())
        }
    }

    #[test]
    fn a_full_queue_drops_and_counts_what_does_not_fit() {
        use opentelemetry::trace::{Tracer as _, TracerProvider as _};
        let queue = CountedQueue {
            inner: Holding::default(),
            limit: SPANS_PENDING.load(Ordering::Relaxed) + 3,
        };
        let exporter = opentelemetry_sdk::trace::InMemorySpanExporter::default();
        let capture = opentelemetry_sdk::trace::SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let tracer = capture.tracer("test");
        for _ in 0..5 {
            tracer.start("span");
        }
        let before = spans_lost_to_a_full_queue();
        for span in exporter.get_finished_spans().unwrap() {
            queue.on_end(span);
        }
        assert_eq!(queue.inner.0.lock().unwrap().len(), 3);
        assert_eq!(spans_lost_to_a_full_queue() - before, 2);
        assert_eq!(max_queue_size(env(&[])), 2048);
        assert_eq!(
            max_queue_size(env(&[("OTEL_BSP_MAX_QUEUE_SIZE", "64")])),
            64
        );
    }

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| map.get(name).cloned()
    }

    fn target(endpoint: &str, protocol: OtlpProtocol) -> Option<ExportTarget> {
        Some(ExportTarget {
            endpoint: endpoint.to_string(),
            protocol,
        })
    }

    #[test]
    fn no_endpoint_anywhere_means_no_export() {
        assert_eq!(resolve_target(None, None, env(&[])), Ok(None));
        assert_eq!(
            resolve_target(Some(" "), None, env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "")])),
            Ok(None)
        );
    }

    #[test]
    fn the_flag_wins_over_the_variables_and_grpc_is_the_default() {
        let vars = env(&[
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://traces:4317"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://base:4317"),
        ]);
        assert_eq!(
            resolve_target(Some("http://flag:4317"), None, &vars),
            Ok(target("http://flag:4317", OtlpProtocol::Grpc))
        );
        assert_eq!(
            resolve_target(None, None, &vars),
            Ok(target("http://traces:4317", OtlpProtocol::Grpc))
        );
        assert_eq!(
            resolve_target(
                None,
                None,
                env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://base:4317")])
            ),
            Ok(target("http://base:4317", OtlpProtocol::Grpc))
        );
    }

    #[test]
    fn http_gets_the_traces_path_on_a_base_url_or_a_bare_address() {
        let http = Some(OtlpProtocol::HttpProtobuf);
        let base = env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/")]);
        assert_eq!(
            resolve_target(None, http, base),
            Ok(target(
                "http://collector:4318/v1/traces",
                OtlpProtocol::HttpProtobuf
            ))
        );
        assert_eq!(
            resolve_target(Some("http://collector:4318"), http, env(&[])),
            Ok(target(
                "http://collector:4318/v1/traces",
                OtlpProtocol::HttpProtobuf
            ))
        );
        // A signal endpoint with a path is used as given.
        assert_eq!(
            resolve_target(Some("http://collector:4318/custom"), http, env(&[])),
            Ok(target(
                "http://collector:4318/custom",
                OtlpProtocol::HttpProtobuf
            ))
        );
    }

    #[test]
    fn the_protocol_comes_from_the_signal_variable_first() {
        let vars = env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ]);
        assert_eq!(
            resolve_target(None, None, vars),
            Ok(target(
                "http://c:4318/v1/traces",
                OtlpProtocol::HttpProtobuf
            ))
        );
    }

    #[test]
    fn bad_values_are_clear_errors() {
        let bad_protocol = resolve_target(
            Some("http://c:4317"),
            None,
            env(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")]),
        );
        assert!(bad_protocol.unwrap_err().contains("http/json"));
        assert!(resolve_target(Some("collector:4317"), None, env(&[]))
            .unwrap_err()
            .contains("not a URL"));
        assert!(resolve_target(Some("ftp://c:4317"), None, env(&[]))
            .unwrap_err()
            .contains("scheme"));
        assert!(resolve_target(Some("https://c:4317"), None, env(&[]))
            .unwrap_err()
            .contains("TLS"));
    }

    #[test]
    fn the_service_name_defaults_to_waypoint() {
        assert_eq!(service_name(env(&[])), "waypoint");
        assert_eq!(
            service_name(env(&[("OTEL_SERVICE_NAME", "llm-prod")])),
            "llm-prod"
        );
    }

    #[derive(Debug)]
    struct FailingExporter;

    impl SpanExporter for FailingExporter {
        async fn export(&self, _batch: Vec<SpanData>) -> OTelSdkResult {
            Err(opentelemetry_sdk::error::OTelSdkError::InternalFailure(
                "connection refused".into(),
            ))
        }
    }

    #[test]
    fn failures_are_counted_between_reports() {
        let exporter = LoggedFailures::new(
            FailingExporter,
            "http://down:4317".into(),
            Duration::from_secs(3600),
        );
        for _ in 0..3 {
            let result = futures::executor::block_on(exporter.export(Vec::new()));
            assert!(result.is_err(), "the failure must reach the processor");
        }
        // The first failure was reported (and reset the counts); two wait for the next report.
        assert_eq!(exporter.failed_batches.load(Ordering::Relaxed), 2);
        assert!(exporter.last_logged.lock().unwrap().is_some());
    }
}
