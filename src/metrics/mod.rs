//! Prometheus metrics: what `GET /metrics` serves.
//!
//! [`Metrics`] holds every metric as atomics. The engine thread updates them beside the
//! events it already handles (a step scheduled, a token generated, a request ended) and a
//! scrape renders them, as Prometheus text or, when the scraper asks for it, OpenMetrics
//! with exemplars that link latency buckets to traces. The metric table and the reasons
//! for this design are in `docs/METRICS.md`.
//!
//! - `instruments`: [`Counter`], [`Gauge`], [`Histogram`] (fixed buckets, the latest
//!   exemplar per bucket), [`TraceId`];
//! - `exposition`: the two text formats ([`Format`]) and the choice between them and
//!   protobuf;
//! - `protobuf`: Prometheus' protobuf format, which also carries native histograms
//!   (`native`: their exponential buckets, kept beside every histogram's fixed ones);
//! - `registry`: [`Metrics`], the catalogue, its feeding and its rendering.
//!
//! ```
//! use std::time::Duration;
//! use waypoint::metrics::{Format, Metrics, TraceId};
//!
//! let metrics = Metrics::new("tiny", 2048);
//! let trace_id = TraceId::parse("0af7651916cd43dd8448eb211c80319c");
//! metrics.record_first_token(Duration::from_millis(30), 12, trace_id);
//! let scrape = metrics.render(Format::OpenMetrics);
//! assert!(scrape.contains(
//!     r#"waypoint_time_to_first_token_seconds_bucket{model_name="tiny",le="0.04"} 1 # {trace_id="0af7651916cd43dd8448eb211c80319c"} 0.03 "#
//! ));
//! assert!(scrape.ends_with("# EOF\n"));
//! ```

mod exposition;
mod instruments;
mod native;
mod protobuf;
mod registry;

pub use exposition::{protobuf_preferred, Format};
pub use instruments::{
    BucketSnapshot, Counter, Exemplar, Gauge, Histogram, HistogramSnapshot, TraceId,
};
pub use protobuf::CONTENT_TYPE as PROTOBUF_CONTENT_TYPE;
pub use registry::{
    FinishedRequest, Metrics, TelemetryCounts, FINISH_REASONS, JOURNEY_OUTCOMES, REJECTION_REASONS,
};
