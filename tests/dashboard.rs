//! The Grafana dashboard queries only metrics the server exposes (checked against what
//! `/metrics` renders, not against a list kept by hand).

use std::collections::BTreeSet;
use std::path::Path;

use waypoint::metrics::{Format, Metrics};

/// Every `expr` string in the dashboard JSON.
fn expressions(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("expr" | "query", serde_json::Value::String(expr)) => out.push(expr.clone()),
                    _ => expressions(value, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| expressions(v, out)),
        _ => {}
    }
}

/// Identifiers starting with `waypoint_` in a PromQL expression.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while let Some(found) = expr[i..].find("waypoint_") {
        let start = i + found;
        let boundary =
            start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        if boundary {
            names.push(expr[start..end].to_string());
        }
        i = end;
    }
    names
}

#[test]
fn every_dashboard_metric_is_exposed() {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/grafana/dashboards/waypoint.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let mut exprs = Vec::new();
    expressions(&dashboard, &mut exprs);
    assert!(exprs.len() >= 10, "{exprs:?}");

    // Sample names as the text format writes them (`_bucket`, `_sum`, `_count`, `_total`).
    let rendered = Metrics::new("model", 2048).render(Format::PrometheusText);
    let exposed: BTreeSet<&str> = rendered
        .lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .map(|line| line.split(['{', ' ']).next().unwrap())
        .collect();
    let mut used = BTreeSet::new();
    for expr in &exprs {
        for name in metric_names(expr) {
            assert!(
                exposed.contains(name.as_str()),
                "the dashboard queries {name}, which /metrics does not expose: {expr}"
            );
            used.insert(name);
        }
    }
    // The panels the issue asks for.
    for needed in [
        "waypoint_time_to_first_token_seconds_bucket",
        "waypoint_inter_token_latency_seconds_bucket",
        "waypoint_generation_tokens_total",
        "waypoint_num_requests_running",
        "waypoint_num_requests_waiting",
        "waypoint_kv_cache_usage_ratio",
        "waypoint_num_preemptions_total",
    ] {
        assert!(used.contains(needed), "no panel shows {needed}");
    }
}
