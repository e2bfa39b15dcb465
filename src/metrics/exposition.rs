//! Writing metrics as Prometheus text (format 0.0.4) or OpenMetrics 1.0.
//!
//! The two differ in little, and all of it is here:
//!
//! | | Prometheus text 0.0.4 | OpenMetrics 1.0 |
//! |---|---|---|
//! | counter `TYPE`/`HELP` name | `x_total` | `x` (samples stay `x_total`) |
//! | exemplars | never | `# {trace_id="…"} value timestamp` after a bucket |
//! | `"` in `HELP` | as is | escaped |
//! | end | nothing | `# EOF` |
//!
//! Label values escape `\`, `"` and newlines in both. Floats are written so that both
//! Prometheus and OpenMetrics parsers read them back exactly (`1.0`, `0.005`, `+Inf`).

use std::fmt::Write;

use super::instruments::{Exemplar, HistogramSnapshot};

/// A scrape's text format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Prometheus text format 0.0.4: what every scraper reads.
    PrometheusText,
    /// OpenMetrics 1.0: the same numbers plus exemplars (trace ids on latency buckets).
    OpenMetrics,
}

impl Format {
    /// OpenMetrics when the `Accept` header lists `application/openmetrics-text` (with a
    /// non-zero `q`), as Prometheus does when exemplar storage is on; otherwise
    /// Prometheus text.
    pub fn from_accept(accept: Option<&str>) -> Self {
        let wants_openmetrics = media_ranges(accept)
            .any(|range| range.is("application/openmetrics-text") && range.q > 0.0);
        if wants_openmetrics {
            Format::OpenMetrics
        } else {
            Format::PrometheusText
        }
    }

    /// The `Content-Type` of a response in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::PrometheusText => "text/plain; version=0.0.4; charset=utf-8",
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// Whether the `Accept` header ranks Prometheus' delimited protobuf format first (as
/// Prometheus does with `scrape_native_histograms` on): the format native histograms need.
pub fn protobuf_preferred(accept: Option<&str>) -> bool {
    let best_other = media_ranges(accept)
        .filter(|range| !range.is_protobuf())
        .map(|range| range.q)
        .fold(0.0, f64::max);
    media_ranges(accept).any(|range| range.is_protobuf() && range.q > 0.0 && range.q >= best_other)
}

/// One entry of an `Accept` header.
struct MediaRange<'a> {
    media_type: &'a str,
    params: Vec<(&'a str, &'a str)>,
    q: f64,
}

impl MediaRange<'_> {
    fn is(&self, media_type: &str) -> bool {
        self.media_type.eq_ignore_ascii_case(media_type)
    }

    fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| *value)
    }

    fn is_protobuf(&self) -> bool {
        self.is("application/vnd.google.protobuf")
            && self.param("proto") == Some("io.prometheus.client.MetricFamily")
            && self.param("encoding") == Some("delimited")
    }
}

/// The entries of an `Accept` header; `q` is 1 unless given (and 0 if unreadable).
fn media_ranges(accept: Option<&str>) -> impl Iterator<Item = MediaRange<'_>> {
    accept.unwrap_or_default().split(',').map(|range| {
        let mut parts = range.split(';').map(str::trim);
        let media_type = parts.next().unwrap_or_default();
        let params: Vec<(&str, &str)> = parts
            .filter_map(|param| param.split_once('='))
            .map(|(key, value)| (key.trim(), value.trim().trim_matches('"')))
            .collect();
        let q = params
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case("q"))
            .map_or(1.0, |(_, q)| q.parse::<f64>().unwrap_or(0.0));
        MediaRange {
            media_type,
            params,
            q,
        }
    })
}

/// What a scrape is written through: the text [`Writer`] or the protobuf writer. The
/// catalogue of metrics is written once, against this.
pub trait Exposition {
    /// A gauge family with one sample.
    fn gauge(&mut self, name: &str, help: &str, value: f64);

    /// A counter family with one sample per combination of values of `labels` (each
    /// entry of `values` gives one value per label); `name` ends in `_total`.
    fn multi_labelled_counter<const N: usize>(
        &mut self,
        name: &str,
        help: &str,
        labels: [&str; N],
        values: &[([&str; N], u64)],
    );

    /// A histogram family.
    fn histogram(&mut self, name: &str, help: &str, snapshot: &HistogramSnapshot<'_>);

    /// A counter family with one sample; `name` ends in `_total`.
    fn counter(&mut self, name: &str, help: &str, value: u64) {
        self.labelled_counter(name, help, "", &[("", value)]);
    }

    /// A counter family with one sample per value of `label`; `name` ends in `_total`.
    /// An empty `label` means the samples have only the common labels.
    fn labelled_counter(&mut self, name: &str, help: &str, label: &str, values: &[(&str, u64)]) {
        if label.is_empty() {
            let values: Vec<([&str; 0], u64)> = values.iter().map(|(_, n)| ([], *n)).collect();
            self.multi_labelled_counter(name, help, [], &values);
        } else {
            let values: Vec<([&str; 1], u64)> = values.iter().map(|(v, n)| ([*v], *n)).collect();
            self.multi_labelled_counter(name, help, [label], &values);
        }
    }
}

/// `name="value",...` with values escaped, to give [`Writer::new`] once rather than escape
/// the same labels at every scrape.
pub fn render_labels(labels: &[(&str, &str)]) -> String {
    let mut out = String::new();
    for (index, (name, value)) in labels.iter().enumerate() {
        if index > 0 {
            out.push(',');
        }
        out.push_str(name);
        out.push_str("=\"");
        escape_label_value(&mut out, value);
        out.push('"');
    }
    out
}

/// Builds one scrape's text, family by family.
#[derive(Debug)]
pub struct Writer<'a> {
    out: String,
    format: Format,
    /// Labels on every sample, from [`render_labels`].
    common_labels: &'a str,
}

impl<'a> Writer<'a> {
    /// An empty scrape whose samples all carry `common_labels` (from [`render_labels`]).
    pub fn new(format: Format, common_labels: &'a str) -> Self {
        Self {
            out: String::with_capacity(16 * 1024),
            format,
            common_labels,
        }
    }

    /// The scrape's text, with OpenMetrics' `# EOF`.
    pub fn finish(mut self) -> String {
        if self.format == Format::OpenMetrics {
            self.out.push_str("# EOF\n");
        }
        self.out
    }

    fn header(&mut self, name: &str, help: &str, kind: &str) {
        self.out.push_str("# HELP ");
        self.out.push_str(name);
        self.out.push(' ');
        for c in help.chars() {
            match c {
                '\\' => self.out.push_str("\\\\"),
                '\n' => self.out.push_str("\\n"),
                '"' if self.format == Format::OpenMetrics => self.out.push_str("\\\""),
                c => self.out.push(c),
            }
        }
        self.out.push('\n');
        // Writing to a `String` cannot fail.
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    fn sample(
        &mut self,
        name: &str,
        extra_labels: &[(&str, &str)],
        value: &str,
        exemplar: Option<&Exemplar>,
    ) {
        self.out.push_str(name);
        let has_common = !self.common_labels.is_empty();
        if has_common || !extra_labels.is_empty() {
            self.out.push('{');
            self.out.push_str(self.common_labels);
            for (index, (label, label_value)) in extra_labels.iter().enumerate() {
                if has_common || index > 0 {
                    self.out.push(',');
                }
                self.out.push_str(label);
                self.out.push_str("=\"");
                escape_label_value(&mut self.out, label_value);
                self.out.push('"');
            }
            self.out.push('}');
        }
        self.out.push(' ');
        self.out.push_str(value);
        if let (Some(exemplar), Format::OpenMetrics) = (exemplar, self.format) {
            let _ = write!(
                self.out,
                " # {{trace_id=\"{}\"}} {} {:.3}",
                exemplar.trace_id,
                format_float(exemplar.value),
                exemplar.timestamp
            );
        }
        self.out.push('\n');
    }
}

impl Exposition for Writer<'_> {
    fn gauge(&mut self, name: &str, help: &str, value: f64) {
        self.header(name, help, "gauge");
        self.sample(name, &[], &format_float(value), None);
    }

    fn multi_labelled_counter<const N: usize>(
        &mut self,
        name: &str,
        help: &str,
        labels: [&str; N],
        values: &[([&str; N], u64)],
    ) {
        let family = name.strip_suffix("_total").unwrap_or(name);
        let header_name = match self.format {
            Format::PrometheusText => name,
            Format::OpenMetrics => family,
        };
        self.header(header_name, help, "counter");
        let sample_name = format!("{family}_total");
        for (label_values, count) in values {
            let extra: [(&str, &str); N] = std::array::from_fn(|i| (labels[i], label_values[i]));
            self.sample(&sample_name, &extra, &count.to_string(), None);
        }
    }

    /// A histogram family: cumulative `_bucket` samples up to `+Inf`, then `_sum` and
    /// `_count`. In OpenMetrics, each bucket's exemplar follows its sample.
    fn histogram(&mut self, name: &str, help: &str, snapshot: &HistogramSnapshot<'_>) {
        self.header(name, help, "histogram");
        let bucket_name = format!("{name}_bucket");
        for bucket in &snapshot.buckets {
            let le = format_float(bucket.upper_bound);
            self.sample(
                &bucket_name,
                &[("le", &le)],
                &bucket.cumulative_count.to_string(),
                bucket.exemplar.as_ref(),
            );
        }
        self.sample(
            &format!("{name}_sum"),
            &[],
            &format_float(snapshot.sum),
            None,
        );
        self.sample(
            &format!("{name}_count"),
            &[],
            &snapshot.count().to_string(),
            None,
        );
    }
}

fn escape_label_value(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// A float as both formats read it: `+Inf`/`-Inf`/`NaN`, whole numbers with `.0` (so `le`
/// values look the same as other clients'), others in Rust's shortest exact form, which
/// never uses an exponent.
fn format_float(value: f64) -> String {
    if value.is_nan() {
        "NaN".to_string()
    } else if value.is_infinite() {
        if value > 0.0 { "+Inf" } else { "-Inf" }.to_string()
    } else if value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{value:.1}")
    } else {
        value.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::instruments::{Histogram, TraceId};

    const TRACE: &str = "0af7651916cd43dd8448eb211c80319c";

    fn traced_histogram() -> Histogram {
        let histogram = Histogram::new(&[0.5, 1.0]);
        histogram.observe(0.5);
        histogram.observe_traced(0.75, TraceId::parse(TRACE));
        histogram.observe(3.0);
        histogram
    }

    fn render(format: Format, labels: &str) -> String {
        let histogram = traced_histogram();
        let mut writer = Writer::new(format, labels);
        writer.histogram("latency_seconds", "Latency.", &histogram.snapshot());
        writer.finish()
    }

    #[test]
    fn histograms_have_cumulative_buckets_inf_sum_and_count() {
        let labels = render_labels(&[("model_name", "m")]);
        let text = render(Format::PrometheusText, &labels);
        assert_eq!(
            text,
            "# HELP latency_seconds Latency.\n\
             # TYPE latency_seconds histogram\n\
             latency_seconds_bucket{model_name=\"m\",le=\"0.5\"} 1\n\
             latency_seconds_bucket{model_name=\"m\",le=\"1.0\"} 2\n\
             latency_seconds_bucket{model_name=\"m\",le=\"+Inf\"} 3\n\
             latency_seconds_sum{model_name=\"m\"} 4.25\n\
             latency_seconds_count{model_name=\"m\"} 3\n"
        );
    }

    #[test]
    fn exemplars_follow_their_bucket_in_openmetrics_only() {
        let text = render(Format::OpenMetrics, "");
        let line = text
            .lines()
            .find(|line| line.starts_with("latency_seconds_bucket{le=\"1.0\"}"))
            .unwrap();
        let (sample, exemplar) = line.split_once(" # ").unwrap();
        assert_eq!(sample, "latency_seconds_bucket{le=\"1.0\"} 2");
        let rest = exemplar
            .strip_prefix(&format!("{{trace_id=\"{TRACE}\"}} 0.75 "))
            .unwrap_or_else(|| panic!("{line}"));
        let timestamp: f64 = rest.parse().unwrap();
        assert!(timestamp > 1.6e9, "{line}");
        assert_eq!(text.matches(" # {").count(), 1, "{text}");
        assert!(text.ends_with("latency_seconds_count 3\n# EOF\n"), "{text}");

        let plain = render(Format::PrometheusText, "");
        assert!(!plain.contains("trace_id"), "{plain}");
        assert!(
            plain
                .lines()
                .all(|l| l.starts_with('#') || !l.contains('#')),
            "{plain}"
        );
        assert!(!plain.contains("EOF"), "{plain}");
    }

    #[test]
    fn counters_are_typed_without_total_in_openmetrics_only() {
        let labels = render_labels(&[("model_name", "m")]);
        for (format, family) in [
            (Format::PrometheusText, "requests_total"),
            (Format::OpenMetrics, "requests"),
        ] {
            let mut writer = Writer::new(format, &labels);
            writer.labelled_counter(
                "requests_total",
                "Requests.",
                "reason",
                &[("stop", 2), ("length", 0)],
            );
            let text = writer.finish();
            let mut lines = text.lines();
            assert_eq!(lines.next(), Some(&*format!("# HELP {family} Requests.")));
            assert_eq!(lines.next(), Some(&*format!("# TYPE {family} counter")));
            assert_eq!(
                lines.next(),
                Some("requests_total{model_name=\"m\",reason=\"stop\"} 2")
            );
            assert_eq!(
                lines.next(),
                Some("requests_total{model_name=\"m\",reason=\"length\"} 0")
            );
        }
    }

    #[test]
    fn gauges_and_unlabelled_samples() {
        let mut writer = Writer::new(Format::PrometheusText, "");
        writer.gauge("usage_ratio", "Usage.", 0.25);
        writer.counter("things_total", "Things.", 7);
        assert_eq!(
            writer.finish(),
            "# HELP usage_ratio Usage.\n# TYPE usage_ratio gauge\nusage_ratio 0.25\n\
             # HELP things_total Things.\n# TYPE things_total counter\nthings_total 7\n"
        );
    }

    #[test]
    fn label_values_and_help_are_escaped() {
        let labels = render_labels(&[("model_name", "a\\b\"c\nd"), ("x", "é")]);
        assert_eq!(labels, r#"model_name="a\\b\"c\nd",x="é""#);

        let help = "Say \"hi\" \\ twice\nplease.";
        let mut writer = Writer::new(Format::PrometheusText, "");
        writer.gauge("g", help, 1.0);
        let text = writer.finish();
        assert!(
            text.starts_with("# HELP g Say \"hi\" \\\\ twice\\nplease.\n"),
            "{text}"
        );
        let mut writer = Writer::new(Format::OpenMetrics, "");
        writer.gauge("g", help, 1.0);
        let text = writer.finish();
        assert!(
            text.starts_with("# HELP g Say \\\"hi\\\" \\\\ twice\\nplease.\n"),
            "{text}"
        );
    }

    #[test]
    fn floats_read_back_exactly() {
        for (value, text) in [
            (0.001, "0.001"),
            (2560.0, "2560.0"),
            (0.0, "0.0"),
            (1e-7, "0.0000001"),
            (f64::INFINITY, "+Inf"),
            (f64::NEG_INFINITY, "-Inf"),
            (f64::NAN, "NaN"),
            (0.1 + 0.2, "0.30000000000000004"),
        ] {
            assert_eq!(format_float(value), text);
        }
    }

    #[test]
    fn openmetrics_only_when_asked_for() {
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;\
                          version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(Format::from_accept(Some(prometheus)), Format::OpenMetrics);
        assert_eq!(
            Format::from_accept(Some("Application/OpenMetrics-Text")),
            Format::OpenMetrics
        );
        for other in [
            None,
            Some("text/plain;version=0.0.4"),
            Some("*/*"),
            Some("application/openmetrics-text;q=0, text/plain"),
        ] {
            assert_eq!(
                Format::from_accept(other),
                Format::PrometheusText,
                "{other:?}"
            );
        }
    }

    #[test]
    fn protobuf_only_when_ranked_first() {
        // Prometheus 3 with `scrape_native_histograms: true`.
        let native = "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;\
                      encoding=delimited;q=0.5,application/openmetrics-text;version=1.0.0;q=0.4,\
                      text/plain;version=0.0.4;q=0.2,*/*;q=0.1";
        assert!(protobuf_preferred(Some(native)));
        for other in [
            None,
            Some("*/*"),
            Some("application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"),
            // Listed, but below OpenMetrics.
            Some(
                "application/openmetrics-text;q=0.9,application/vnd.google.protobuf;\
                  proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.5",
            ),
            // Not the delimited MetricFamily stream.
            Some("application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily"),
            Some(
                "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;\
                  encoding=delimited;q=0",
            ),
        ] {
            assert!(!protobuf_preferred(other), "{other:?}");
        }
    }
}
