//! A parser for the Prometheus text format (0.0.4) and OpenMetrics 1.0, written for the
//! tests, so that they check what a scraper would read rather than search for substrings.
//!
//! It is strict where our output must be: every sample belongs to a family declared by a
//! `# TYPE` line before it (with the suffixes its type allows), label values are quoted
//! with `\\`, `\"` and `\n` escapes, exemplars appear only in OpenMetrics and only on
//! histogram buckets, and OpenMetrics ends with `# EOF`.

use std::collections::HashMap;

/// One `name{labels} value` line.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
    pub exemplar: Option<Exemplar>,
}

impl Sample {
    /// The value of label `name`, if the sample has it.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

/// An OpenMetrics exemplar: `# {labels} value [timestamp]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Exemplar {
    pub labels: Vec<(String, String)>,
    pub value: f64,
    pub timestamp: Option<f64>,
}

/// A metric family's `HELP` and `TYPE`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Family {
    pub kind: String,
    pub help: Option<String>,
}

/// A parsed scrape.
#[derive(Debug, Default)]
pub struct Scrape {
    /// By the name in `# TYPE`.
    pub families: HashMap<String, Family>,
    /// In order.
    pub samples: Vec<Sample>,
}

impl Scrape {
    /// Samples named `name` that carry every label in `labels`.
    pub fn find<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |sample| {
            sample.name == name
                && labels
                    .iter()
                    .all(|(key, value)| sample.label(key) == Some(*value))
        })
    }

    /// The one sample named `name` with `labels`; panics unless there is exactly one.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let found: Vec<_> = self.find(name, labels).collect();
        assert_eq!(found.len(), 1, "{name} {labels:?}: {found:?}");
        found[0].value
    }

    /// A histogram's buckets as `(le, cumulative count, exemplar)`, in order.
    pub fn buckets(&self, name: &str) -> Vec<(f64, f64, Option<Exemplar>)> {
        self.find(&format!("{name}_bucket"), &[])
            .map(|sample| {
                let le = sample.label("le").expect("a bucket has le");
                (
                    parse_float(le).expect("le is a float"),
                    sample.value,
                    sample.exemplar.clone(),
                )
            })
            .collect()
    }
}

/// Parses `text`; `openmetrics` selects the format's rules.
pub fn parse(text: &str, openmetrics: bool) -> Result<Scrape, String> {
    let mut scrape = Scrape::default();
    let mut lines = text.split('\n').enumerate().peekable();
    let mut saw_eof = false;
    while let Some((index, line)) = lines.next() {
        let at = |message: String| format!("line {}: {message}: {line:?}", index + 1);
        if saw_eof {
            // Only the newline after `# EOF` may follow it.
            if line.is_empty() && lines.peek().is_none() {
                break;
            }
            return Err(at("text after # EOF".into()));
        }
        if line.is_empty() {
            if lines.peek().is_none() {
                break;
            }
            if openmetrics {
                return Err(at("empty line".into()));
            }
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            if comment == " EOF" && openmetrics {
                saw_eof = true;
                continue;
            }
            let comment = comment.strip_prefix(' ').unwrap_or(comment);
            let (keyword, rest) = comment.split_once(' ').unwrap_or((comment, ""));
            match keyword {
                "HELP" => {
                    let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
                    let help = unescape(help, openmetrics).map_err(at)?;
                    let family = scrape.families.entry(name.to_string()).or_default();
                    if family.help.replace(help).is_some() {
                        return Err(at(format!("a second HELP for {name}")));
                    }
                }
                "TYPE" => {
                    let (name, kind) = rest
                        .split_once(' ')
                        .ok_or_else(|| at("TYPE without a type".into()))?;
                    let known = [
                        "counter",
                        "gauge",
                        "histogram",
                        "summary",
                        "untyped",
                        "unknown",
                    ];
                    if !known.contains(&kind) {
                        return Err(at(format!("unknown type {kind}")));
                    }
                    if scrape.samples.iter().any(|s| family_of(&s.name) == name) {
                        return Err(at(format!("TYPE of {name} after its samples")));
                    }
                    let family = scrape.families.entry(name.to_string()).or_default();
                    if !family.kind.is_empty() {
                        return Err(at(format!("a second TYPE for {name}")));
                    }
                    family.kind = kind.to_string();
                }
                _ if openmetrics => return Err(at("unknown comment".into())),
                _ => {}
            }
            continue;
        }
        let sample = parse_sample(line, openmetrics).map_err(at)?;
        check_family(&scrape.families, &sample, openmetrics).map_err(at)?;
        scrape.samples.push(sample);
    }
    if openmetrics && !saw_eof {
        return Err("no # EOF at the end".into());
    }
    if !text.is_empty() && !text.ends_with('\n') {
        return Err("the last line has no newline".into());
    }
    Ok(scrape)
}

/// The family a sample name would belong to once its type's suffix is dropped.
fn family_of(sample_name: &str) -> &str {
    for suffix in ["_total", "_bucket", "_sum", "_count"] {
        if let Some(family) = sample_name.strip_suffix(suffix) {
            return family;
        }
    }
    sample_name
}

/// Finds the sample's family and checks the suffix and exemplar its type allows.
fn check_family(
    families: &HashMap<String, Family>,
    sample: &Sample,
    openmetrics: bool,
) -> Result<(), String> {
    let name = &sample.name;
    let declared = |family: &str| families.get(family).filter(|f| !f.kind.is_empty());
    let (family, kind) = if let Some(family) = declared(name) {
        (name.as_str(), family.kind.as_str())
    } else {
        let family = family_of(name);
        let kind = declared(family)
            .ok_or_else(|| format!("{name} has no TYPE"))?
            .kind
            .as_str();
        (family, kind)
    };
    let suffix = &name[family.len()..];
    let allowed: &[&str] = match (kind, openmetrics) {
        // OpenMetrics names the counter family without `_total`; 0.0.4 with it.
        ("counter", true) => &["_total"],
        ("counter", false) => &[""],
        ("histogram", _) => &["_bucket", "_sum", "_count"],
        _ => &[""],
    };
    if !allowed.contains(&suffix) {
        return Err(format!("{name} does not fit its family {family} ({kind})"));
    }
    if kind == "counter" && !openmetrics && !name.ends_with("_total") {
        return Err(format!("counter {name} lacks _total"));
    }
    if sample.exemplar.is_some() && suffix != "_bucket" {
        return Err(format!("an exemplar on {name}, which is not a bucket"));
    }
    Ok(())
}

fn parse_sample(line: &str, openmetrics: bool) -> Result<Sample, String> {
    let name_end = line
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .unwrap_or(line.len());
    let name = &line[..name_end];
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        return Err("no metric name".into());
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if rest.starts_with('{') {
        let (parsed, after) = parse_labels(rest)?;
        labels = parsed;
        rest = after;
    }
    let rest = rest.strip_prefix(' ').ok_or("no space before the value")?;
    let (value_part, exemplar_part) = match rest.split_once(" # ") {
        Some((value, exemplar)) => (value, Some(exemplar)),
        None => (rest, None),
    };
    let mut fields = value_part.split(' ');
    let value = parse_float(fields.next().unwrap_or_default())?;
    if let Some(timestamp) = fields.next() {
        parse_float(timestamp)?;
    }
    if fields.next().is_some() {
        return Err("more than a value and a timestamp".into());
    }
    let exemplar = match exemplar_part {
        None => None,
        Some(_) if !openmetrics => return Err("an exemplar outside OpenMetrics".into()),
        Some(text) => Some(parse_exemplar(text)?),
    };
    Ok(Sample {
        name: name.to_string(),
        labels,
        value,
        exemplar,
    })
}

fn parse_exemplar(text: &str) -> Result<Exemplar, String> {
    if !text.starts_with('{') {
        return Err("an exemplar without labels".into());
    }
    let (labels, rest) = parse_labels(text)?;
    let label_chars: usize = labels
        .iter()
        .map(|(k, v)| k.chars().count() + v.chars().count())
        .sum();
    if label_chars > 128 {
        return Err("exemplar labels longer than 128 characters".into());
    }
    let mut fields = rest
        .strip_prefix(' ')
        .ok_or("no space before the exemplar's value")?
        .split(' ');
    let value = parse_float(fields.next().unwrap_or_default())?;
    let timestamp = fields.next().map(parse_float).transpose()?;
    if fields.next().is_some() {
        return Err("more than a value and a timestamp in an exemplar".into());
    }
    Ok(Exemplar {
        labels,
        value,
        timestamp,
    })
}

/// Parses `{a="x",b="y"}` at the start of `text`; returns the labels and what follows.
#[allow(clippy::type_complexity)] // a pair of plain values reads better than a new type here
fn parse_labels(text: &str) -> Result<(Vec<(String, String)>, &str), String> {
    let mut labels: Vec<(String, String)> = Vec::new();
    let mut rest = &text[1..];
    loop {
        if let Some(after) = rest.strip_prefix('}') {
            return Ok((labels, after));
        }
        let name_end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .ok_or("unterminated labels")?;
        let name = &rest[..name_end];
        if name.is_empty() {
            return Err(format!("a label without a name at {rest:?}"));
        }
        rest = rest[name_end..]
            .strip_prefix("=\"")
            .ok_or("a label name without =\"")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err("an unterminated label value".into()),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    other => return Err(format!("a bad escape {other:?} in a label value")),
                },
                Some((_, '\n')) => return Err("a raw newline in a label value".into()),
                Some((_, c)) => value.push(c),
            }
        };
        if labels.iter().any(|(existing, _)| existing == name) {
            return Err(format!("label {name} twice"));
        }
        labels.push((name.to_string(), value));
        rest = &rest[end + 1..];
        if let Some(after) = rest.strip_prefix(',') {
            rest = after;
        } else if !rest.starts_with('}') {
            return Err("labels not separated by commas".into());
        }
    }
}

/// HELP text: `\\` and `\n` escapes, and `\"` in OpenMetrics.
fn unescape(text: &str, openmetrics: bool) -> Result<String, String> {
    let mut out = String::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('\\') => out.push('\\'),
            Some('n') => out.push('\n'),
            Some('"') if openmetrics => out.push('"'),
            // 0.0.4 keeps other backslashes as they are.
            Some(other) if !openmetrics => {
                out.push('\\');
                out.push(other);
            }
            other => return Err(format!("a bad escape {other:?} in HELP")),
        }
    }
    Ok(out)
}

pub fn parse_float(text: &str) -> Result<f64, String> {
    match text {
        "+Inf" | "Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => text
            .parse::<f64>()
            .ok()
            // Rust also reads "inf" and "nan", which neither format allows.
            .filter(|value| value.is_finite())
            .ok_or_else(|| format!("not a number: {text:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_both_formats_and_refuses_what_they_forbid() {
        let text = "# HELP a_total Things \\\\ and\\nmore.\n# TYPE a_total counter\n\
                    a_total{l=\"x\\\"y\\\\z\\n\"} 3\n";
        let scrape = parse(text, false).unwrap();
        assert_eq!(
            scrape.families["a_total"].help.as_deref(),
            Some("Things \\ and\nmore.")
        );
        assert_eq!(scrape.samples[0].label("l"), Some("x\"y\\z\n"));
        assert_eq!(scrape.value("a_total", &[]), 3.0);
        // OpenMetrics names the family without `_total` and ends with EOF.
        assert!(parse(text, true).is_err());
        let om = "# TYPE a counter\na_total 1\n# TYPE h histogram\n\
                  h_bucket{le=\"1.0\"} 1 # {trace_id=\"ab\"} 0.5 1700000000.5\n\
                  h_bucket{le=\"+Inf\"} 1\nh_sum 0.5\nh_count 1\n# EOF\n";
        let scrape = parse(om, true).unwrap();
        let buckets = scrape.buckets("h");
        assert_eq!(buckets[0].2.as_ref().unwrap().value, 0.5);
        assert_eq!(buckets[1].0, f64::INFINITY);
        assert!(parse(&om.replace("# EOF\n", ""), true).is_err());
        assert!(parse(&om.replace("# TYPE a counter\na_total 1\n", ""), false).is_err());
        assert!(parse("# TYPE g gauge\ng_total 1\n", false).is_err());
        assert!(parse("# TYPE g gauge\ng{l=\"x} 1\n", false).is_err());
        assert!(parse("# TYPE g gauge\ng inf\n", false).is_err());
    }
}
