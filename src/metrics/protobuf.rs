//! Writing metrics in Prometheus' protobuf exposition format: the one format that carries
//! native histograms.
//!
//! A scrape is a sequence of `io.prometheus.client.MetricFamily` messages, each preceded by
//! its length as a varint. The messages below are the parts of Prometheus' `metrics.proto`
//! the server writes, with that file's field numbers; prost encodes them.
//!
//! Histograms carry both their classic buckets (with exemplars) and their native ones.
//! Prometheus keeps the native ones when `scrape_native_histograms` is on, the classic ones
//! otherwise (or both, with `always_scrape_classic_histograms`).

use prost::Message;

use super::exposition::Exposition;
use super::instruments::{Exemplar, HistogramSnapshot};
use super::native::{NativeSnapshot, SCHEMA, ZERO_THRESHOLD};

/// The `Content-Type` of a protobuf scrape.
pub const CONTENT_TYPE: &str =
    "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited";

/// `MetricType` in `metrics.proto`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, prost::Enumeration)]
#[repr(i32)]
pub enum MetricType {
    /// A counter.
    Counter = 0,
    /// A gauge.
    Gauge = 1,
    /// A histogram (classic, native or both).
    Histogram = 4,
}

/// `MetricFamily`.
#[derive(Clone, PartialEq, Message)]
pub struct MetricFamily {
    /// The family's name (`_total` included for counters, as Prometheus' own clients do).
    #[prost(string, tag = "1")]
    pub name: String,
    /// Its help text.
    #[prost(string, tag = "2")]
    pub help: String,
    /// Its type.
    #[prost(enumeration = "MetricType", tag = "3")]
    pub kind: i32,
    /// One per label set.
    #[prost(message, repeated, tag = "4")]
    pub metric: Vec<Metric>,
}

/// `Metric`: one label set's value.
#[derive(Clone, PartialEq, Message)]
pub struct Metric {
    /// Its labels.
    #[prost(message, repeated, tag = "1")]
    pub label: Vec<LabelPair>,
    /// Set for a gauge.
    #[prost(message, optional, tag = "2")]
    pub gauge: Option<Value>,
    /// Set for a counter.
    #[prost(message, optional, tag = "3")]
    pub counter: Option<Value>,
    /// Set for a histogram.
    #[prost(message, optional, tag = "7")]
    pub histogram: Option<Histogram>,
}

/// `LabelPair`.
#[derive(Clone, PartialEq, Message)]
pub struct LabelPair {
    /// The label's name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Its value.
    #[prost(string, tag = "2")]
    pub value: String,
}

/// `Gauge` and `Counter` (both hold their value in field 1).
#[derive(Clone, PartialEq, Message)]
pub struct Value {
    /// The value.
    #[prost(double, tag = "1")]
    pub value: f64,
}

/// `Histogram`, classic and native parts together.
#[derive(Clone, PartialEq, Message)]
pub struct Histogram {
    /// Observations in all.
    #[prost(uint64, tag = "1")]
    pub sample_count: u64,
    /// Their sum.
    #[prost(double, tag = "2")]
    pub sample_sum: f64,
    /// Classic buckets, cumulative, `+Inf` left out (it is `sample_count`).
    #[prost(message, repeated, tag = "3")]
    pub bucket: Vec<Bucket>,
    /// Native: the resolution.
    #[prost(sint32, tag = "5")]
    pub schema: i32,
    /// Native: the zero bucket's width.
    #[prost(double, tag = "6")]
    pub zero_threshold: f64,
    /// Native: the zero bucket's count.
    #[prost(uint64, tag = "7")]
    pub zero_count: u64,
    /// Native: runs of positive buckets.
    #[prost(message, repeated, tag = "12")]
    pub positive_span: Vec<BucketSpan>,
    /// Native: each bucket's count as the difference from the one before.
    #[prost(sint64, repeated, tag = "13")]
    pub positive_delta: Vec<i64>,
    /// Native: exemplars (Prometheus reads native histograms' exemplars from here).
    #[prost(message, repeated, tag = "16")]
    pub exemplars: Vec<ProtoExemplar>,
}

/// `Bucket`: one classic bucket.
#[derive(Clone, PartialEq, Message)]
pub struct Bucket {
    /// Observations at most `upper_bound`.
    #[prost(uint64, tag = "1")]
    pub cumulative_count: u64,
    /// Its `le`.
    #[prost(double, tag = "2")]
    pub upper_bound: f64,
    /// The latest traced observation in it.
    #[prost(message, optional, tag = "3")]
    pub exemplar: Option<ProtoExemplar>,
}

/// `BucketSpan`: `length` consecutive native buckets, `offset` after the previous span.
#[derive(Clone, PartialEq, Message)]
pub struct BucketSpan {
    /// Gap from the end of the previous span (from index 0 for the first).
    #[prost(sint32, tag = "1")]
    pub offset: i32,
    /// Buckets in the span.
    #[prost(uint32, tag = "2")]
    pub length: u32,
}

/// `Exemplar`.
#[derive(Clone, PartialEq, Message)]
pub struct ProtoExemplar {
    /// `trace_id`.
    #[prost(message, repeated, tag = "1")]
    pub label: Vec<LabelPair>,
    /// The value observed.
    #[prost(double, tag = "2")]
    pub value: f64,
    /// When.
    #[prost(message, optional, tag = "3")]
    pub timestamp: Option<Timestamp>,
}

/// `google.protobuf.Timestamp`.
#[derive(Clone, PartialEq, Message)]
pub struct Timestamp {
    /// Whole seconds since the Unix epoch.
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    /// The rest, in nanoseconds.
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

/// Builds one protobuf scrape, family by family.
#[derive(Debug)]
pub struct ProtoWriter {
    out: Vec<u8>,
    common_labels: Vec<LabelPair>,
}

impl ProtoWriter {
    /// An empty scrape whose metrics all carry `common_labels`.
    pub fn new(common_labels: &[(&str, &str)]) -> Self {
        Self {
            out: Vec::with_capacity(16 * 1024),
            common_labels: common_labels.iter().map(|(n, v)| label(n, v)).collect(),
        }
    }

    /// The scrape's bytes.
    pub fn finish(self) -> Vec<u8> {
        self.out
    }

    fn family(&mut self, name: &str, help: &str, kind: MetricType, metric: Vec<Metric>) {
        let family = MetricFamily {
            name: name.to_string(),
            help: help.to_string(),
            kind: kind as i32,
            metric,
        };
        // Encoding into a `Vec` cannot run out of room.
        let _ = family.encode_length_delimited(&mut self.out);
    }

    fn metric(&self, extra: &[(&str, &str)]) -> Metric {
        let mut labels = self.common_labels.clone();
        labels.extend(extra.iter().map(|(n, v)| label(n, v)));
        Metric {
            label: labels,
            gauge: None,
            counter: None,
            histogram: None,
        }
    }
}

impl Exposition for ProtoWriter {
    fn gauge(&mut self, name: &str, help: &str, value: f64) {
        let metric = Metric {
            gauge: Some(Value { value }),
            ..self.metric(&[])
        };
        self.family(name, help, MetricType::Gauge, vec![metric]);
    }

    fn multi_labelled_counter<const N: usize>(
        &mut self,
        name: &str,
        help: &str,
        labels: [&str; N],
        values: &[([&str; N], u64)],
    ) {
        let metrics = values
            .iter()
            .map(|(label_values, count)| {
                let extra: [(&str, &str); N] =
                    std::array::from_fn(|i| (labels[i], label_values[i]));
                Metric {
                    counter: Some(Value {
                        value: *count as f64,
                    }),
                    ..self.metric(&extra)
                }
            })
            .collect();
        self.family(name, help, MetricType::Counter, metrics);
    }

    fn histogram(&mut self, name: &str, help: &str, snapshot: &HistogramSnapshot<'_>) {
        let finite = &snapshot.buckets[..snapshot.buckets.len().saturating_sub(1)];
        let exemplars: Vec<ProtoExemplar> = snapshot
            .buckets
            .iter()
            .filter_map(|bucket| bucket.exemplar.as_ref().map(exemplar))
            .collect();
        let (positive_span, positive_delta) = spans_and_deltas(&snapshot.native);
        let histogram = Histogram {
            // The native buckets' total, so that Prometheus' check that the buckets add up
            // to the count holds even when an observation lands between the two reads.
            sample_count: snapshot.native.zero_count
                + snapshot.native.buckets.iter().map(|(_, n)| n).sum::<u64>(),
            sample_sum: snapshot.sum,
            bucket: finite
                .iter()
                .map(|bucket| Bucket {
                    cumulative_count: bucket.cumulative_count,
                    upper_bound: bucket.upper_bound,
                    exemplar: bucket.exemplar.as_ref().map(exemplar),
                })
                .collect(),
            schema: SCHEMA,
            zero_threshold: ZERO_THRESHOLD,
            zero_count: snapshot.native.zero_count,
            positive_span,
            positive_delta,
            exemplars,
        };
        let metric = Metric {
            histogram: Some(histogram),
            ..self.metric(&[])
        };
        self.family(name, help, MetricType::Histogram, vec![metric]);
    }
}

/// Non-empty buckets as Prometheus' spans (a new span at every gap) and deltas.
fn spans_and_deltas(native: &NativeSnapshot) -> (Vec<BucketSpan>, Vec<i64>) {
    let mut spans: Vec<BucketSpan> = Vec::new();
    let mut deltas = Vec::with_capacity(native.buckets.len());
    let mut next_index = 0; // the index just past the last span
    let mut previous_count = 0i64;
    for &(index, count) in &native.buckets {
        match spans.last_mut() {
            Some(span) if index == next_index => span.length += 1,
            _ => spans.push(BucketSpan {
                offset: index - next_index,
                length: 1,
            }),
        }
        next_index = index + 1;
        let count = count as i64;
        deltas.push(count - previous_count);
        previous_count = count;
    }
    (spans, deltas)
}

fn label(name: &str, value: &str) -> LabelPair {
    LabelPair {
        name: name.to_string(),
        value: value.to_string(),
    }
}

fn exemplar(exemplar: &Exemplar) -> ProtoExemplar {
    let seconds = exemplar.timestamp.floor();
    ProtoExemplar {
        label: vec![label("trace_id", &exemplar.trace_id.to_string())],
        value: exemplar.value,
        timestamp: Some(Timestamp {
            seconds: seconds as i64,
            nanos: ((exemplar.timestamp - seconds) * 1e9) as i32,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_break_at_gaps_and_deltas_are_differences() {
        let native = NativeSnapshot {
            zero_count: 0,
            buckets: vec![(-3, 2), (-2, 5), (4, 1), (5, 1), (6, 4)],
        };
        let (spans, deltas) = spans_and_deltas(&native);
        assert_eq!(
            spans,
            [
                BucketSpan {
                    offset: -3,
                    length: 2
                },
                BucketSpan {
                    offset: 5,
                    length: 3
                }
            ]
        );
        assert_eq!(deltas, [2, 3, -4, 0, 3]);
    }
}

#[cfg(test)]
mod scrape_tests {
    use std::time::Duration;

    use prost::Message;

    use super::{MetricFamily, MetricType};
    use crate::metrics::{Metrics, TelemetryCounts, TraceId};

    fn decode(mut bytes: &[u8]) -> Vec<MetricFamily> {
        let mut families = Vec::new();
        while !bytes.is_empty() {
            families.push(MetricFamily::decode_length_delimited(&mut bytes).unwrap());
        }
        families
    }

    #[test]
    fn a_scrape_decodes_into_every_family_with_native_and_classic_buckets() {
        let metrics = Metrics::new("tiny", 2048);
        let trace_id = TraceId::parse("0af7651916cd43dd8448eb211c80319c");
        for millis in [3, 30, 30, 700, 125_000] {
            metrics.record_first_token(Duration::from_millis(millis), 12, trace_id);
        }
        let families = decode(&metrics.render_protobuf(&TelemetryCounts::default()));
        let text = metrics.render(crate::metrics::Format::PrometheusText);
        let text_families = text.lines().filter(|l| l.starts_with("# TYPE")).count();
        assert_eq!(families.len(), text_families);

        let ttft = families
            .iter()
            .find(|f| f.name == "waypoint_time_to_first_token_seconds")
            .unwrap();
        assert_eq!(ttft.kind, MetricType::Histogram as i32);
        let metric = &ttft.metric[0];
        assert_eq!(metric.label[0].name, "model_name");
        assert_eq!(metric.label[0].value, "tiny");
        let histogram = metric.histogram.as_ref().unwrap();
        assert_eq!(histogram.sample_count, 5);
        assert!((histogram.sample_sum - 125.763).abs() < 1e-9);
        // Classic: cumulative, the last finite bucket short of the 125 s observation only
        // when the top bound is below it.
        let last = histogram.bucket.last().unwrap();
        assert!(last.upper_bound >= 960.0, "{last:?}");
        assert_eq!(last.cumulative_count, 5);
        assert!(histogram.bucket.iter().any(|b| b.exemplar.is_some()));
        // Native: deltas add back up to one count per bucket (3 ms, 30 ms twice, 700 ms and
        // 125 s: four buckets), and those to the total.
        let mut count = 0i64;
        let counts: Vec<i64> = histogram
            .positive_delta
            .iter()
            .map(|delta| {
                count += delta;
                count
            })
            .collect();
        assert_eq!(counts, [1, 2, 1, 1]);
        assert_eq!(histogram.zero_count, 0);
        let spanned: u32 = histogram.positive_span.iter().map(|s| s.length).sum();
        assert_eq!(spanned as usize, counts.len());
        // The first span starts at the 3 ms bucket: ceil(log2(0.003) * 8) = -67.
        assert_eq!(histogram.positive_span[0].offset, -67);
        assert_eq!(histogram.schema, 3);
        assert!(!histogram.exemplars.is_empty());

        let counter = families
            .iter()
            .find(|f| f.name == "waypoint_prompt_tokens_total")
            .unwrap();
        assert_eq!(counter.kind, MetricType::Counter as i32);
        assert_eq!(counter.metric[0].counter.as_ref().unwrap().value, 60.0);
    }
}
