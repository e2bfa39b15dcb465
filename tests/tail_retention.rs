//! End to end: tail retention (`docs/JOURNEY_TRACING.md`). At journey sample rate 0, every
//! request is recorded in memory; `waypoint serve --model tiny` exports only the ones the
//! rules keep (preempted, aborted, slow, 5xx), complete, with their true times and the trace
//! ids their responses announced, and counts every decision.

#[path = "common/journeys.rs"]
mod journeys;
use journeys::journeys_counted;
#[path = "common/otlp.rs"]
mod otlp;
#[path = "common/process.rs"]
mod process;

use std::time::Duration;

use futures::StreamExt as _;
use otlp::{Attr, ReceivedSpan, Receiver, Transport};
use process::ServerProcess;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(30);

/// A tail-retention server (rate 0) exporting to `receiver`.
fn server_for(receiver: &Receiver, extra: &[&str]) -> ServerProcess {
    let mut args = vec![
        "--enable-journey-tracing",
        "--journey-tracing-sample-rate",
        "0",
    ];
    args.extend_from_slice(extra);
    receiver.serve(&args, &[])
}

/// What a response said about its trace.
#[derive(Debug)]
struct Announced {
    id: String,
    trace_id: String,
    span_id: String,
    flags: String,
}

fn announced(headers: &reqwest::header::HeaderMap, body: &Value) -> Announced {
    let header = |name: &str| headers[name].to_str().unwrap().to_string();
    let traceparent = header("traceparent");
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "{traceparent}");
    assert_eq!(parts[1], header("x-trace-id"));
    Announced {
        id: body["id"].as_str().unwrap_or_default().to_string(),
        trace_id: parts[1].to_string(),
        span_id: parts[2].to_string(),
        flags: parts[3].to_string(),
    }
}

async fn complete(server: &ServerProcess, body: Value) -> Announced {
    let response = reqwest::Client::new()
        .post(format!("{}/v1/completions", server.base_url))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let headers = response.headers().clone();
    announced(&headers, &response.json().await.unwrap())
}

/// The two spans of the trace `announced`, once exported.
async fn kept(receiver: &Receiver, announced: &Announced) -> (ReceivedSpan, ReceivedSpan) {
    let spans = receiver
        .wait_for(&format!("the spans of {announced:?}"), WAIT, |spans| {
            spans
                .iter()
                .filter(|s| s.trace_id == announced.trace_id)
                .count()
                == 2
        })
        .await;
    let of = |name: &str| {
        spans
            .iter()
            .find(|s| s.trace_id == announced.trace_id && s.name == name)
            .unwrap_or_else(|| panic!("no {name} in {spans:#?}"))
            .clone()
    };
    let (request, core) = (of("llm_request"), of("llm_core"));
    // Exactly the ids the response announced, the engine's span under the API's.
    assert_eq!(request.span_id, announced.span_id);
    assert_eq!(request.parent_span_id, "");
    assert_eq!(core.parent_span_id, request.span_id);
    (request, core)
}

fn reason(span: &ReceivedSpan) -> &str {
    span.attr("waypoint.retention.reason")
        .and_then(Attr::as_str)
        .unwrap_or_else(|| panic!("no retention reason on {span:#?}"))
}

/// A replayed span says what a live one says, at the times things happened.
fn check_replayed(request: &ReceivedSpan, core: &ReceivedSpan) {
    for span in [request, core] {
        assert!(
            span.attributes
                .keys()
                .all(|k| !k.starts_with("waypoint.replay.")),
            "{span:#?}"
        );
        assert!(span.start_time_unix_nano <= span.end_time_unix_nano);
        let mono = |e: &otlp::ReceivedEvent| e.attributes["ts.monotonic"].as_double().unwrap();
        let first = &span.events[0];
        for event in &span.events {
            // Inside its span, and where ts.monotonic says.
            assert!(
                event.time_unix_nano >= span.start_time_unix_nano,
                "{event:?}"
            );
            assert!(event.time_unix_nano <= span.end_time_unix_nano, "{event:?}");
            let wall_gap = event.time_unix_nano as f64 - first.time_unix_nano as f64;
            let mono_gap = (mono(event) - mono(first)) * 1e9;
            assert!((wall_gap - mono_gap).abs() < 2_000.0, "{}", event.name);
        }
    }
    assert_eq!(request.event_names()[0], "api.ARRIVED");
    assert_eq!(core.event_names()[0], "journey.QUEUED");
    assert!(core.start_time_unix_nano >= request.start_time_unix_nano);
    assert!(core.end_time_unix_nano <= request.end_time_unix_nano);
    assert_eq!(reason(request), reason(core));
    for key in [
        "interference.steps_scheduled",
        "interference.steps_waited",
        "interference.prefill_tokens_of_others",
        "prefix_cache.hit_tokens",
    ] {
        assert!(core.attr(key).and_then(Attr::as_int).is_some(), "{key}");
    }
}

async fn metrics(server: &ServerProcess) -> String {
    reqwest::get(format!("{}/metrics", server.base_url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tail_is_kept_complete_and_the_rest_is_dropped() {
    let receiver = Receiver::start(Transport::Grpc).await;
    // The pool of `a_preempted_request_reports_each_step_of_its_journey`: the long prompt
    // arriving while the first request decodes is preempted.
    let server = server_for(
        &receiver,
        &[
            "--block-size",
            "4",
            "--num-kv-blocks",
            "40",
            "--max-num-batched-tokens",
            "8",
            "--max-num-seqs",
            "4",
        ],
    );
    let client = reqwest::Client::new();
    let url = format!("{}/v1/completions", server.base_url);

    // Fast and unremarkable: announced as undecided, and never exported.
    let plain = complete(&server, json!({"prompt": [256, 1, 2], "max_tokens": 3})).await;
    assert_eq!(plain.flags, "00", "undecided at the time of the headers");

    // Preempted.
    let first = client
        .post(&url)
        .json(&json!({"prompt": [256, 1, 2, 3], "max_tokens": 140, "ignore_eos": true, "stream": true}))
        .send()
        .await
        .unwrap();
    let first_announced = announced(first.headers(), &Value::Null);
    let mut first_body = first.bytes_stream();
    first_body.next().await.unwrap().unwrap();
    let long_prompt: Vec<u32> = (0..140).map(|i| 10 + i % 200).collect();
    let preempted = complete(
        &server,
        json!({"prompt": long_prompt, "max_tokens": 8, "ignore_eos": true}),
    )
    .await;
    while first_body.next().await.is_some() {}
    let (request, core) = kept(&receiver, &preempted).await;
    check_replayed(&request, &core);
    assert_eq!(reason(&request), "preempted");
    assert!(core.event_names().contains(&"journey.PREEMPTED"));
    let described: Value = serde_json::from_str(
        core.attr("interference.preemptions")
            .and_then(Attr::as_str)
            .unwrap(),
    )
    .unwrap();
    assert!(!described.as_array().unwrap().is_empty());
    assert_eq!(
        request.attr("gen_ai.request.id").and_then(Attr::as_str),
        Some(preempted.id.as_str())
    );

    // A request refused as invalid (400) is not kept.
    let invalid = client
        .post(&url)
        .json(&json!({"prompt": "x", "max_tokens": 0}))
        .send()
        .await
        .unwrap();
    assert_eq!(invalid.status(), 400);
    assert!(invalid.headers().contains_key("x-trace-id"));

    // An unsampled caller is respected: no trace named, nothing recorded.
    let unsampled = client
        .post(&url)
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
        )
        .json(&json!({"prompt": "caller said no", "max_tokens": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(unsampled.status(), 200);
    assert!(!unsampled.headers().contains_key("x-trace-id"));

    // Every decision counted; nothing left in memory.
    let text = metrics(&server).await;
    assert_eq!(journeys_counted(&text, "kept", "preempted"), 1, "{text}");
    assert_eq!(journeys_counted(&text, "kept", "head"), 0, "{text}");
    // The plain one, the first long one (not preempted: it was the older) and the 400.
    assert_eq!(
        journeys_counted(&text, "dropped", "within_rules"),
        3,
        "{text}"
    );
    assert_eq!(
        journeys_counted(&text, "dropped", "unsampled_parent"),
        1,
        "{text}"
    );
    assert!(
        text.contains("waypoint_journeys_in_memory{model_name=\"tiny\"} 0.0\n"),
        "{text}"
    );
    assert!(
        text.contains("waypoint_journey_bytes_in_memory{model_name=\"tiny\"} 0.0\n"),
        "{text}"
    );

    assert!(server.terminate().success());
    let spans = receiver.spans();
    assert_eq!(spans.len(), 2, "only the preempted journey: {spans:#?}");
    for dropped in [&plain, &first_announced] {
        assert!(spans.iter().all(|s| s.trace_id != dropped.trace_id));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_rules_keep_slow_requests_aborts_and_an_unsampled_caller_when_allowed() {
    let receiver = Receiver::start(Transport::HttpProtobuf).await;
    // Every request takes longer than 0 ms to its first token; one that is aborted is kept
    // as aborted all the same.
    let server = server_for(
        &receiver,
        &[
            "--journey-tracing-keep",
            "ttft>0ms",
            "--journey-tracing-keep-unsampled-parents",
        ],
    );
    let slow = complete(&server, json!({"prompt": "slow", "max_tokens": 3})).await;
    let (request, core) = kept(&receiver, &slow).await;
    check_replayed(&request, &core);
    assert_eq!(reason(&request), "slow_ttft");
    assert!(request.attr("gen_ai.latency.time_to_first_token").is_some());

    // The caller's unsampled trace: recorded inside it, kept by the rule, exported as the
    // caller's child.
    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let response = reqwest::Client::new()
        .post(format!("{}/v1/completions", server.base_url))
        .header("traceparent", format!("00-{caller_trace}-{caller_span}-00"))
        .json(&json!({"prompt": "child", "max_tokens": 3}))
        .send()
        .await
        .unwrap();
    let headers = response.headers().clone();
    let child = announced(&headers, &response.json().await.unwrap());
    assert_eq!(child.trace_id, caller_trace);
    assert_eq!(child.flags, "00");
    let spans = receiver
        .wait_for("the caller's child", WAIT, |spans| {
            spans.iter().filter(|s| s.trace_id == caller_trace).count() == 2
        })
        .await;
    let request = spans
        .iter()
        .find(|s| s.trace_id == caller_trace && s.name == "llm_request")
        .unwrap();
    assert_eq!(request.parent_span_id, caller_span);
    assert_eq!(request.span_id, child.span_id);
    assert_eq!(reason(request), "slow_ttft");

    // Aborted: the client leaves mid-stream.
    let leaving = reqwest::Client::new()
        .post(format!("{}/v1/completions", server.base_url))
        .json(&json!({"prompt": "leave", "max_tokens": 2000, "ignore_eos": true, "stream": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(leaving.status(), 200);
    let leaving_announced = announced(leaving.headers(), &Value::Null);
    let mut body = leaving.bytes_stream();
    body.next().await.unwrap().unwrap();
    drop(body);
    let (request, core) = kept(&receiver, &leaving_announced).await;
    check_replayed(&request, &core);
    assert_eq!(reason(&request), "aborted");
    assert!(request.event_names().contains(&"api.ABORTED"));
    assert_eq!(
        core.events.last().unwrap().attributes["finish.status"],
        Attr::Str("aborted".into())
    );

    let text = metrics(&server).await;
    assert_eq!(journeys_counted(&text, "kept", "slow_ttft"), 2, "{text}");
    assert_eq!(journeys_counted(&text, "kept", "aborted"), 1, "{text}");
    assert!(server.terminate().success());
}

/// What the mixed run sent, and what it must find exported.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    /// Short and fast: exported only if the head draw (1%) or a preemption picked it.
    Plain,
    /// 1,900 tokens (at least ~0.1 s even for the tiny model): over the `e2e` rule, or
    /// preempted first.
    Slow,
    /// The client leaves after the first chunk.
    Aborted,
}

/// Sends one request of `kind`; returns what its response announced.
async fn mixed_request(client: &reqwest::Client, url: &str, kind: Kind, i: usize) -> Announced {
    let body = match kind {
        Kind::Plain => json!({"prompt": format!("plain {i}"), "max_tokens": 4, "ignore_eos": true}),
        Kind::Slow | Kind::Aborted => json!({
            "prompt": format!("long {i}"), "max_tokens": 1900, "ignore_eos": true, "stream": true
        }),
    };
    let response = client.post(url).json(&body).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let mut announced = announced(response.headers(), &Value::Null);
    match kind {
        Kind::Plain => {
            let body: Value = response.json().await.unwrap();
            announced.id = body["id"].as_str().unwrap().to_string();
        }
        Kind::Slow => {
            let mut body = response.bytes_stream();
            while body.next().await.transpose().unwrap().is_some() {}
        }
        Kind::Aborted => {
            let mut body = response.bytes_stream();
            body.next().await.unwrap().unwrap();
        }
    }
    announced
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_rate_one_percent_the_slow_preempted_and_aborted_are_all_kept() {
    const REQUESTS: usize = 500;
    const E2E_RULE_S: f64 = 0.05;
    let receiver = Receiver::start(Transport::Grpc).await;
    // 6,144 token slots: the first seven requests (slow, ~1,910 tokens each) cannot all
    // fit, so preemption is certain; later, two or three slow ones at a time do.
    let server = ServerProcess::start(
        &[
            "--enable-journey-tracing",
            "--journey-tracing-sample-rate",
            "0.01",
            "--journey-tracing-keep",
            "e2e>50ms",
            "--otlp-traces-endpoint",
            &receiver.endpoint(),
            "--num-kv-blocks",
            "384",
            "--block-size",
            "16",
        ],
        &[("OTEL_BSP_SCHEDULE_DELAY", "100")],
    );
    let client = reqwest::Client::new();
    let url = format!("{}/v1/completions", server.base_url);
    // The first seven slow, together; then every twentieth slow, every tenth aborted, the
    // rest plain.
    let kind = |i: usize| match i {
        _ if i < 7 => Kind::Slow,
        _ if i % 20 == 3 => Kind::Slow,
        _ if i % 10 == 7 => Kind::Aborted,
        _ => Kind::Plain,
    };
    let sent: Vec<(Kind, Announced)> = futures::stream::iter(0..REQUESTS)
        .map(|i| {
            let (client, url) = (client.clone(), url.clone());
            async move { (kind(i), mixed_request(&client, &url, kind(i), i).await) }
        })
        .buffer_unordered(8)
        .collect()
        .await;

    // Every decision is counted once; nothing is left in memory.
    let deadline = std::time::Instant::now() + WAIT;
    let text = loop {
        let text = metrics(&server).await;
        let decided: u64 = text
            .lines()
            .filter(|l| l.starts_with("waypoint_journeys_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum();
        if decided == REQUESTS as u64
            && text.contains("waypoint_journeys_in_memory{model_name=\"tiny\"} 0.0\n")
        {
            break text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{decided} decided: {text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let kept = |reason: &str| journeys_counted(&text, "kept", reason);
    let exported_journeys = ["head", "preempted", "aborted", "slow_e2e"]
        .iter()
        .map(|reason| kept(reason))
        .sum::<u64>();
    assert!(server.terminate().success());
    let spans = receiver.spans();
    assert_eq!(spans.len() as u64, 2 * exported_journeys, "{text}");

    let find = |announced: &Announced, name: &str| {
        spans
            .iter()
            .find(|s| s.trace_id == announced.trace_id && s.name == name)
            .cloned()
    };
    let mut plain_exported = 0;
    let mut preempted = 0;
    let mut aborted = 0;
    for (kind, announced) in &sent {
        let Some(request) = find(announced, "llm_request") else {
            assert_eq!(*kind, Kind::Plain, "{announced:?} was not exported");
            continue;
        };
        let core = find(announced, "llm_core").expect("both spans of a kept journey");
        check_replayed(&request, &core);
        let was_preempted = core.event_names().contains(&"journey.PREEMPTED");
        preempted += usize::from(was_preempted);
        let e2e = request
            .attr("gen_ai.latency.e2e")
            .and_then(Attr::as_double)
            .unwrap();
        // The first rule that holds, in the documented order (a head-sampled one is live).
        let expected = match (kind, reason(&request)) {
            (_, "head") => "head",
            (Kind::Aborted, _) => "aborted",
            _ if was_preempted => "preempted",
            (Kind::Slow, _) => "slow_e2e",
            (Kind::Plain, _) if e2e > E2E_RULE_S => "slow_e2e",
            (Kind::Plain, other) => panic!("a plain request kept as {other}: {request:#?}"),
        };
        assert_eq!(reason(&request), expected, "{kind:?} {request:#?}");
        if expected == "slow_e2e" {
            assert!(e2e > E2E_RULE_S, "{e2e}");
        }
        plain_exported += usize::from(*kind == Kind::Plain);
        aborted += u64::from(expected == "aborted");
    }
    assert!(preempted > 0, "the pool was meant to be too small: {text}");
    // About 1% of the ~400 plain ones by the head draw (20 would be 5x the mean).
    assert!(kept("head") <= 20, "{text}");
    assert!(plain_exported as u64 <= kept("head") + kept("preempted") + kept("slow_e2e"));
    assert_eq!(kept("aborted"), aborted, "{text}");
    assert!(
        aborted >= 40,
        "{aborted} of 50 aborted (the rest head-sampled?): {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_503_during_the_drain_is_kept_as_an_error() {
    use std::io::Write as _;
    let receiver = Receiver::start(Transport::HttpProtobuf).await;
    let mut server = server_for(&receiver, &["--shutdown-timeout", "20"]);
    // Half a body holds the drain open: the request is in flight until its body comes.
    let mut held = std::net::TcpStream::connect(server.address()).unwrap();
    write!(
        held,
        "POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
         content-length: 100\r\n\r\n{{\"prompt\""
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    server.signal("TERM");
    let client = reqwest::Client::new();
    let health = format!("{}/health", server.base_url);
    let deadline = std::time::Instant::now() + WAIT;
    while client.get(&health).send().await.unwrap().status() != 503 {
        assert!(std::time::Instant::now() < deadline, "never drained");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let refused = client
        .post(format!("{}/v1/completions", server.base_url))
        .json(&json!({"prompt": "too late", "max_tokens": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 503);
    let refused = announced(refused.headers(), &Value::Null);
    drop(held);
    let status = server.exited_within(WAIT).expect("the drain ends");
    assert!(status.success());
    // Flushed at exit: the refusal, kept as an error, with no engine span.
    let spans: Vec<_> = receiver
        .spans()
        .into_iter()
        .filter(|s| s.trace_id == refused.trace_id)
        .collect();
    assert_eq!(spans.len(), 1, "{spans:#?}");
    let request = &spans[0];
    assert_eq!(request.name, "llm_request");
    assert_eq!(request.span_id, refused.span_id);
    assert_eq!(reason(request), "error");
    assert_eq!(
        request
            .attr("http.response.status_code")
            .and_then(Attr::as_int),
        Some(503)
    );
    assert_eq!(
        request.event_names(),
        ["api.ARRIVED", "api.DEPARTED"],
        "{request:#?}"
    );
}
