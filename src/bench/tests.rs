//! Argument handling, the table, and whole runs against a fake OpenAI-compatible server.
//!
//! The fake server's delays are a few milliseconds, so the runs take well under a second; the
//! assertions are about counts and orderings, never about how long anything took.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use axum::{Json, Router};
use clap::Parser;
use futures::StreamExt;
use serde_json::{json, Value};

use super::*;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: BenchArgs,
}

fn parse(extra: &[&str]) -> Result<BenchArgs, clap::Error> {
    let argv = ["bench"].iter().chain(extra).copied();
    Cli::try_parse_from(argv).map(|cli| cli.args)
}

#[test]
fn arguments_have_sensible_defaults() {
    let args = parse(&[]).unwrap();
    assert_eq!(args.url, "http://127.0.0.1:8000");
    assert_eq!(args.model, None);
    assert_eq!(args.request_rate, RequestRate::Infinite);
    assert_eq!(
        (args.num_prompts, args.input_len, args.output_len),
        (100, 1024, 128)
    );
    assert_eq!(args.max_concurrency, None);
    assert_eq!(args.token_ids(), 1000..10_000);
    args.validate().unwrap();
}

#[test]
fn request_rate_parses_inf_or_a_positive_number() {
    for inf in ["inf", "INF", "Infinity", "+inf"] {
        assert_eq!(
            inf.parse::<RequestRate>(),
            Ok(RequestRate::Infinite),
            "{inf}"
        );
    }
    assert_eq!(
        "2.5".parse::<RequestRate>(),
        Ok(RequestRate::PerSecond(2.5))
    );
    for bad in ["0", "-1", "-inf", "nan", "fast", ""] {
        let err = bad.parse::<RequestRate>().unwrap_err();
        assert!(err.contains("request rate"), "{bad}: {err}");
    }
    assert_eq!(RequestRate::Infinite.to_string(), "inf");
    assert_eq!(serde_json::to_value(RequestRate::Infinite).unwrap(), "inf");
    assert_eq!(
        serde_json::to_value(RequestRate::PerSecond(4.0)).unwrap(),
        4.0
    );

    let args = parse(&["--request-rate", "8"]).unwrap();
    assert_eq!(args.request_rate, RequestRate::PerSecond(8.0));
    assert!(parse(&["--request-rate", "0"]).is_err());
}

#[test]
fn bad_counts_are_rejected_with_the_flag_named() {
    for flag in [
        "--num-prompts",
        "--input-len",
        "--output-len",
        "--max-concurrency",
    ] {
        let err = parse(&[flag, "0"]).unwrap_err().to_string();
        assert!(err.contains(flag) && err.contains("at least 1"), "{err}");
        assert!(parse(&[flag, "-3"]).is_err());
        assert!(parse(&[flag, "many"]).is_err());
    }
    // Built in code, the arguments bypass clap; `validate` catches the same mistakes.
    let mut args = parse(&[]).unwrap();
    args.output_len = 0;
    assert!(args
        .validate()
        .unwrap_err()
        .to_string()
        .contains("--output-len"));
    let mut args = parse(&[]).unwrap();
    args.request_rate = RequestRate::PerSecond(f64::NAN);
    assert!(args.validate().is_err());
    let mut args = parse(&[]).unwrap();
    args.max_concurrency = Some(0);
    assert!(args.validate().is_err());
}

#[test]
fn token_id_range_follows_vocab_size() {
    let args = parse(&["--vocab-size", "260"]).unwrap();
    assert_eq!(args.token_ids(), 26..260);
    let args = parse(&["--vocab-size", "260", "--min-token-id", "3"]).unwrap();
    assert_eq!(args.token_ids(), 3..260);
    let args = parse(&["--vocab-size", "100", "--min-token-id", "100"]).unwrap();
    let err = args.validate().unwrap_err().to_string();
    assert!(
        err.contains("--min-token-id") && err.contains("--vocab-size"),
        "{err}"
    );
}

#[test]
fn base_urls_are_normalized() {
    for url in [
        "http://127.0.0.1:8000",
        "http://127.0.0.1:8000/",
        "http://127.0.0.1:8000/v1",
        "http://127.0.0.1:8000/v1/",
        "127.0.0.1:8000",
    ] {
        assert_eq!(normalize_base_url(url), "http://127.0.0.1:8000", "{url}");
    }
    assert_eq!(normalize_base_url("https://h/api/"), "https://h/api");
}

/// How the fake server misbehaves.
#[derive(Clone, Copy, Default)]
struct Behavior {
    /// Answer every n-th completion request with a 500.
    fail_every: Option<usize>,
    /// End streams without `data: [DONE]`.
    omit_done: bool,
}

struct Fake {
    behavior: Behavior,
    requests: AtomicUsize,
}

const FAKE_MODEL: &str = "fake-model";
const CHUNK_DELAY: Duration = Duration::from_millis(2);

async fn models() -> Json<Value> {
    Json(json!({ "object": "list", "data": [{ "id": FAKE_MODEL, "object": "model" }] }))
}

fn error(status: StatusCode, message: String) -> Response {
    (status, Json(json!({ "error": { "message": message } }))).into_response()
}

/// Streams `max_tokens` one-token chunks (the last one with its finish reason), a keep-alive
/// comment, a usage chunk and `[DONE]`, each after a short sleep.
async fn completions(State(fake): State<Arc<Fake>>, Json(body): Json<Value>) -> Response {
    let n = fake.requests.fetch_add(1, Ordering::SeqCst) + 1;
    if fake.behavior.fail_every.is_some_and(|k| n % k == 0) {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "injected failure".into());
    }
    // The benchmark's promises about its requests, checked where they arrive.
    let prompt_len = body["prompt"].as_array().map_or(0, Vec::len);
    let max_tokens = body["max_tokens"].as_u64().unwrap_or(0);
    let as_promised = body["model"] == FAKE_MODEL
        && body["stream"] == true
        && body["ignore_eos"] == true
        && body["stream_options"]["include_usage"] == true
        && prompt_len > 0
        && max_tokens > 0;
    if !as_promised {
        return error(
            StatusCode::BAD_REQUEST,
            format!("unexpected request {body}"),
        );
    }

    let mut events: Vec<String> = (0..max_tokens)
        .map(|i| {
            let finish = if i + 1 == max_tokens {
                json!("length")
            } else {
                Value::Null
            };
            let chunk = json!({
                "object": "text_completion",
                "choices": [{ "index": 0, "text": format!(" t{i}"), "finish_reason": finish }],
                "usage": null,
            });
            format!("data: {chunk}\n\n")
        })
        .collect();
    events.push(": keep-alive\n\n".to_string());
    let usage = json!({
        "choices": [],
        "usage": { "prompt_tokens": prompt_len, "completion_tokens": max_tokens },
    });
    events.push(format!("data: {usage}\n\n"));
    if !fake.behavior.omit_done {
        events.push("data: [DONE]\n\n".to_string());
    }
    let stream = futures::stream::iter(events).then(|event| async move {
        tokio::time::sleep(CHUNK_DELAY).await;
        Ok::<_, Infallible>(Bytes::from(event))
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

/// Starts a fake server on a free port; returns its base URL and its state.
async fn serve(behavior: Behavior) -> (String, Arc<Fake>) {
    let fake = Arc::new(Fake {
        behavior,
        requests: AtomicUsize::new(0),
    });
    let app = Router::new()
        .route("/v1/models", get(models))
        .route("/v1/completions", post(completions))
        .with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // Without TCP_NODELAY, Nagle's algorithm meets the client's delayed ACKs and holds small
    // chunks back for ~40 ms, so the stream would arrive in bursts, not token by token.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), fake)
}

fn bench_args(url: &str, extra: &[&str]) -> BenchArgs {
    let mut argv = vec!["--url", url, "--no-progress"];
    argv.extend(extra);
    parse(&argv).unwrap()
}

/// Each request's TTFT is at most its E2EL, so every order statistic of the TTFTs is at most
/// the same order statistic of the E2ELs.
fn assert_ttft_within_e2el(m: &BenchMetrics) {
    let ttft = m.ttft.rows();
    let e2el = m.e2el.rows();
    for ((stat, ttft), (_, e2el)) in ttft.iter().zip(e2el) {
        let (ttft, e2el) = (ttft.unwrap(), e2el.unwrap());
        assert!(
            ttft > 0.0 && ttft <= e2el,
            "{stat}: TTFT {ttft} ms, E2EL {e2el} ms"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn benchmark_against_a_fake_server() {
    let (url, fake) = serve(Behavior::default()).await;
    let json_path =
        std::env::temp_dir().join(format!("waypoint-bench-{}.json", std::process::id()));
    let json_arg = json_path.to_str().unwrap();
    let args = bench_args(
        &url,
        &[
            "--num-prompts",
            "8",
            "--input-len",
            "16",
            "--output-len",
            "4",
            "--max-concurrency",
            "3",
            "--vocab-size",
            "50",
            "--output-json",
            json_arg,
        ],
    );
    let report = run(args).await.unwrap();
    let m = &report.metrics;

    assert_eq!(fake.requests.load(Ordering::SeqCst), 8);
    assert_eq!(
        report.config.model_id, FAKE_MODEL,
        "discovered through /v1/models"
    );
    assert_eq!(
        (m.completed, m.failed, m.first_error.as_deref()),
        (8, 0, None)
    );
    assert_eq!(m.total_input_tokens, 8 * 16);
    assert_eq!(m.total_output_tokens, 8 * 4);
    assert_eq!(m.ttft.count, 8);
    assert_eq!(m.e2el.count, 8);
    assert_eq!(m.tpot.count, 8);
    assert_eq!(
        m.itl.count,
        8 * 3,
        "the finish reason rides on the last token chunk"
    );
    assert!(m.duration > 0.0 && m.request_throughput > 0.0);
    assert!(m.output_throughput > 0.0 && m.total_token_throughput > m.output_throughput);
    assert_ttft_within_e2el(m);
    assert!(m.itl.mean_ms.unwrap() > 0.0 && m.tpot.mean_ms.unwrap() > 0.0);
    for stats in [&m.ttft, &m.tpot, &m.itl, &m.e2el] {
        let (median, p90, p99) = (stats.median_ms, stats.p90_ms, stats.p99_ms);
        assert!(median <= p90 && p90 <= p99, "{}: {stats:?}", stats.metric);
    }

    let json: Value = serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).unwrap();
    let _ = std::fs::remove_file(&json_path);
    assert_eq!(json["completed"], 8);
    assert_eq!(json["failed"], 0);
    assert_eq!(json["total_output_tokens"], 32);
    assert_eq!(json["model_id"], FAKE_MODEL);
    assert_eq!(json["request_rate"], "inf");
    assert_eq!(json["max_concurrency"], 3);
    for key in [
        "duration",
        "request_throughput",
        "output_throughput",
        "total_token_throughput",
        "mean_ttft_ms",
        "median_ttft_ms",
        "p90_ttft_ms",
        "p99_ttft_ms",
        "mean_tpot_ms",
        "p99_tpot_ms",
        "mean_itl_ms",
        "p99_itl_ms",
        "mean_e2el_ms",
        "p99_e2el_ms",
    ] {
        assert!(
            json[key].as_f64().is_some_and(|v| v > 0.0),
            "{key}: {}",
            json[key]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_requests_are_counted_not_fatal() {
    let (url, _fake) = serve(Behavior {
        fail_every: Some(3),
        ..Behavior::default()
    })
    .await;
    // A finite rate exercises the Poisson schedule; at 500 req/s it stays fast.
    let args = bench_args(
        &url,
        &[
            "--num-prompts",
            "6",
            "--input-len",
            "4",
            "--output-len",
            "3",
            "--request-rate",
            "500",
            "--model",
            FAKE_MODEL,
        ],
    );
    let report = run(args).await.unwrap();
    let m = &report.metrics;
    assert_eq!((m.completed, m.failed), (4, 2));
    let error = m.first_error.as_deref().unwrap();
    assert!(
        error.contains("500") && error.contains("injected failure"),
        "{error}"
    );
    assert_eq!(m.total_output_tokens, 4 * 3);
    assert_eq!(m.ttft.count, 4);
    assert_ttft_within_e2el(m);
    assert!(render_table(&report).contains("Request rate configured (RPS):           500.00"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_without_done_is_a_failure() {
    let (url, _fake) = serve(Behavior {
        omit_done: true,
        ..Behavior::default()
    })
    .await;
    let args = bench_args(
        &url,
        &[
            "--num-prompts",
            "2",
            "--input-len",
            "4",
            "--output-len",
            "2",
        ],
    );
    let report = run(args).await.unwrap();
    let m = &report.metrics;
    assert_eq!((m.completed, m.failed), (0, 2));
    assert!(m.first_error.as_deref().unwrap().contains("[DONE]"));
    assert_eq!(
        (m.total_output_tokens, m.ttft.mean_ms, m.itl.p99_ms),
        (0, None, None)
    );
    assert!(render_table(&report).contains("Mean TTFT (ms):                          n/a"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server() {
    // A port that was free a moment ago: connections are refused.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);

    let err = run(bench_args(&url, &["--num-prompts", "1"]))
        .await
        .unwrap_err();
    assert!(format!("{err:#}").contains("--model"), "{err:#}");

    let args = bench_args(&url, &["--num-prompts", "3", "--model", "m"]);
    let report = run(args).await.unwrap();
    assert_eq!((report.metrics.completed, report.metrics.failed), (0, 3));
}

#[test]
fn table_reads_like_vllms() {
    let outcomes = vec![Ok(metrics::RequestTiming {
        ttft: Duration::from_millis(20),
        itls: vec![Duration::from_millis(5)],
        e2el: Duration::from_millis(25),
        input_tokens: 7,
        output_tokens: 2,
    })];
    let report = BenchReport {
        config: BenchConfig {
            base_url: "http://h".into(),
            model_id: "m".into(),
            num_prompts: 1,
            request_rate: RequestRate::Infinite,
            max_concurrency: Some(4),
            input_len: 7,
            output_len: 2,
            seed: 0,
            min_token_id: 1000,
            vocab_size: 10_000,
        },
        metrics: aggregate(&outcomes, Duration::from_millis(500)),
    };
    let table = render_table(&report);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(
        lines[0],
        "============ Serving Benchmark Result ============"
    );
    assert_eq!(lines[1], "Successful requests:                     1");
    assert_eq!(*lines.last().unwrap(), "=".repeat(50));
    for line in [
        "Failed requests:                         0",
        "Maximum request concurrency:             4",
        "Benchmark duration (s):                  0.50",
        "Total input tokens:                      7",
        "Total generated tokens:                  2",
        "Request throughput (req/s):              2.00",
        "Output token throughput (tok/s):         4.00",
        "Total Token throughput (tok/s):          18.00",
        "---------------Time to First Token----------------",
        "Mean TTFT (ms):                          20.00",
        "P99 TTFT (ms):                           20.00",
        "-----Time per Output Token (excl. 1st token)------",
        "Median TPOT (ms):                        5.00",
        "---------------Inter-token Latency----------------",
        "P90 ITL (ms):                            5.00",
        "----------------End-to-end Latency----------------",
        "Mean E2EL (ms):                          25.00",
    ] {
        assert!(lines.contains(&line), "missing {line:?} in\n{table}");
    }
    assert!(
        !table.contains("Request rate configured"),
        "infinite rate has no row"
    );
}
