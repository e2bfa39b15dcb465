//! End to end: `waypoint serve --model tiny` exports journeys over OTLP to a receiver started
//! inside the test (gRPC and HTTP/protobuf), and the spans honour the contract in
//! docs/JOURNEY_TRACING.md.

#[path = "common/otlp.rs"]
mod otlp;
#[path = "common/process.rs"]
mod process;

use std::time::Duration;

use futures::StreamExt as _;
use otlp::{Attr, ReceivedSpan, Receiver, Transport, SPAN_KIND_INTERNAL, SPAN_KIND_SERVER};
use process::ServerProcess;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(30);

/// A journey-tracing server exporting to `receiver`.
fn server_for(receiver: &Receiver, extra: &[&str]) -> ServerProcess {
    let mut args = vec!["--enable-journey-tracing"];
    args.extend_from_slice(extra);
    receiver.serve(&args, &[])
}

struct Answer {
    body: Value,
    trace_id: Option<String>,
    traceparent: Option<String>,
}

async fn complete(server: &ServerProcess, body: Value, headers: &[(&str, &str)]) -> Answer {
    let mut request = reqwest::Client::new()
        .post(format!("{}/v1/completions", server.base_url))
        .json(&body);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 200);
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
    };
    let (trace_id, traceparent) = (header("x-trace-id"), header("traceparent"));
    Answer {
        body: response.json().await.unwrap(),
        trace_id,
        traceparent,
    }
}

/// The `llm_request` and `llm_core` spans of the request with this id.
fn journey_spans(spans: &[ReceivedSpan], request_id: &str) -> Option<(ReceivedSpan, ReceivedSpan)> {
    let of = |name: &str| {
        spans
            .iter()
            .find(|s| {
                s.name == name
                    && s.attr("gen_ai.request.id").and_then(Attr::as_str) == Some(request_id)
            })
            .cloned()
    };
    Some((of("llm_request")?, of("llm_core")?))
}

async fn wait_journey(receiver: &Receiver, request_id: &str) -> (ReceivedSpan, ReceivedSpan) {
    let spans = receiver
        .wait_for(&format!("the spans of {request_id}"), WAIT, |spans| {
            journey_spans(spans, request_id).is_some()
        })
        .await;
    journey_spans(&spans, request_id).unwrap()
}

fn int(event: &otlp::ReceivedEvent, key: &str) -> i64 {
    match event.attributes.get(key) {
        Some(Attr::Int(value)) => *value,
        other => panic!("{} {key}: expected an integer, got {other:?}", event.name),
    }
}

/// Every check of the contract that holds for any request the engine took. A request whose
/// client left has no answer: no status code, no output count, no engine timings.
fn check_contract(request: &ReceivedSpan, core: &ReceivedSpan) {
    let answered = !request.event_names().contains(&"api.ABORTED");
    assert_eq!(request.scope, "waypoint.api");
    assert_eq!(request.kind, SPAN_KIND_SERVER);
    assert_eq!(request.service_name.as_deref(), Some("waypoint"));
    assert_eq!(core.scope, "waypoint.scheduler");
    assert_eq!(core.kind, SPAN_KIND_INTERNAL);
    assert_eq!(core.trace_id, request.trace_id);
    assert_eq!(
        core.parent_span_id, request.span_id,
        "llm_core hangs under llm_request"
    );
    assert_eq!(request.dropped_events, 0);
    assert_eq!(core.dropped_events, 0);

    for key in ["gen_ai.request.id", "gen_ai.request.model"] {
        assert!(request.attr(key).and_then(Attr::as_str).is_some(), "{key}");
    }
    for key in ["gen_ai.request.max_tokens", "gen_ai.usage.input_tokens"] {
        assert!(request.attr(key).and_then(Attr::as_int).is_some(), "{key}");
    }
    for key in ["gen_ai.usage.output_tokens", "http.response.status_code"] {
        let value = request.attr(key);
        assert_eq!(
            value.and_then(Attr::as_int).is_some(),
            answered,
            "{key}: {value:?}"
        );
    }
    let double = |key: &str| request.attr(key).and_then(Attr::as_double);
    for key in [
        "gen_ai.request.temperature",
        "gen_ai.request.top_p",
        "gen_ai.latency.e2e",
    ] {
        assert!(
            double(key).is_some_and(|v| v >= 0.0),
            "{key}: {:?}",
            double(key)
        );
    }
    if answered {
        for key in [
            "gen_ai.latency.time_to_first_token",
            "gen_ai.latency.time_in_queue",
            "gen_ai.latency.time_in_model_prefill",
            "gen_ai.latency.time_in_model_decode",
        ] {
            assert!(
                double(key).is_some_and(|v| v >= 0.0),
                "{key}: {:?}",
                double(key)
            );
        }
        assert!(double("gen_ai.latency.time_to_first_token") <= double("gen_ai.latency.e2e"));
        check_ttft_breakdown(request);
    }
    // No attribute is ever an empty string standing in for "unknown".
    for (key, value) in request
        .attributes
        .iter()
        .chain(core.events.iter().flat_map(|e| e.attributes.iter()))
    {
        assert_ne!(value, &Attr::Str(String::new()), "{key} is empty");
    }

    let api_events = request.event_names();
    assert_eq!(api_events.first(), Some(&"api.ARRIVED"), "{api_events:?}");
    assert_eq!(
        api_events.get(1),
        Some(&"api.HANDOFF_TO_CORE"),
        "{api_events:?}"
    );
    for event in &request.events {
        assert!(
            matches!(event.attributes.get("ts.monotonic"), Some(Attr::Double(_))),
            "{event:?}"
        );
    }

    let core_events = core.event_names();
    assert_eq!(
        core_events.first(),
        Some(&"journey.QUEUED"),
        "{core_events:?}"
    );
    assert_eq!(
        core_events.last(),
        Some(&"journey.FINISHED"),
        "{core_events:?}"
    );
    let first = &core.events[0];
    for event in &core.events {
        let kind = event.attributes["event.type"].as_str().unwrap().to_string();
        assert_eq!(event.name, format!("journey.{kind}"));
        let phase = event.attributes["phase"].as_str().unwrap();
        assert!(["WAITING", "PREFILL", "DECODE"].contains(&phase), "{phase}");
        for key in [
            "scheduler.step",
            "prefill.done_tokens",
            "prefill.total_tokens",
            "decode.done_tokens",
            "decode.max_tokens",
            "num_preemptions",
        ] {
            assert!(int(event, key) >= 0);
        }
        assert_eq!(
            event.attributes.contains_key("schedule.kind"),
            kind == "SCHEDULED",
            "{event:?}"
        );
        assert_eq!(
            event.attributes.contains_key("finish.status"),
            kind == "FINISHED",
            "{event:?}"
        );
        assert!(int(event, "prefill.done_tokens") <= int(event, "prefill.total_tokens"));
        assert!(int(event, "decode.done_tokens") <= int(event, "decode.max_tokens"));
        // The exported timestamp is ts.monotonic mapped through one anchor: differences agree.
        let mono = |e: &otlp::ReceivedEvent| e.attributes["ts.monotonic"].as_double().unwrap();
        let wall_gap = event.time_unix_nano as f64 - first.time_unix_nano as f64;
        let mono_gap = (mono(event) - mono(first)) * 1e9;
        assert!(
            (wall_gap - mono_gap).abs() < 2_000.0,
            "{}: wall gap {wall_gap} ns vs monotonic gap {mono_gap} ns",
            event.name
        );
    }
    // Events are in time order, steps and decode progress never go backwards.
    for pair in core.events.windows(2) {
        assert!(pair[0].time_unix_nano <= pair[1].time_unix_nano);
        assert!(int(&pair[0], "scheduler.step") <= int(&pair[1], "scheduler.step"));
        assert!(int(&pair[0], "decode.done_tokens") <= int(&pair[1], "decode.done_tokens"));
    }
    // llm_core lies within llm_request.
    assert!(core.start_time_unix_nano >= request.start_time_unix_nano);
    assert!(core.end_time_unix_nano <= request.end_time_unix_nano);
}

/// The parts of time to first token are all there, none negative, and add up to their totals
/// within float rounding (`docs/JOURNEY_TRACING.md`).
fn check_ttft_breakdown(request: &ReceivedSpan) {
    let part = |key: &str| {
        let value = request
            .attr(key)
            .and_then(Attr::as_double)
            .unwrap_or_else(|| panic!("{key} missing: {:#?}", request.attributes));
        assert!(value >= 0.0, "{key} = {value}");
        value
    };
    let adds_up = |total: &str, parts: &[&str]| {
        let sum: f64 = parts.iter().map(|key| part(key)).sum();
        assert!(
            (part(total) - sum).abs() < 1e-6,
            "{total} = {} but {parts:?} add up to {sum}",
            part(total)
        );
    };
    adds_up(
        "gen_ai.latency.time_in_queue",
        &[
            "waypoint.latency.validation",
            "waypoint.latency.handoff",
            "waypoint.latency.engine_queue",
        ],
    );
    adds_up(
        "gen_ai.latency.time_to_first_token",
        &[
            "gen_ai.latency.time_in_queue",
            "gen_ai.latency.time_in_model_prefill",
            "waypoint.latency.engine_to_api",
        ],
    );
    adds_up(
        "waypoint.latency.time_to_first_byte",
        &[
            "gen_ai.latency.time_to_first_token",
            "waypoint.latency.first_byte",
        ],
    );
    assert!(part("waypoint.latency.time_to_first_byte") <= part("gen_ai.latency.e2e") + 1e-6);
}

fn finish_status(core: &ReceivedSpan) -> &str {
    core.events.last().unwrap().attributes["finish.status"]
        .as_str()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_export_follows_the_contract() {
    let receiver = Receiver::start(Transport::Grpc).await;
    let server = server_for(&receiver, &[]);

    // A plain request.
    let answer = complete(
        &server,
        json!({"prompt": "hello", "max_tokens": 6, "ignore_eos": true,
               "top_k": 5, "seed": 7, "stop": ["zz", "yy"], "presence_penalty": 0.5}),
        &[],
    )
    .await;
    let id = answer.body["id"].as_str().unwrap().to_string();
    let (request, core) = wait_journey(&receiver, &id).await;
    check_contract(&request, &core);
    // The OpenTelemetry GenAI conventions' names, beside the seed's.
    let string = |key: &str| request.attr(key).and_then(Attr::as_str).map(str::to_string);
    let int = |key: &str| request.attr(key).and_then(Attr::as_int);
    assert_eq!(
        string("gen_ai.operation.name").as_deref(),
        Some("text_completion")
    );
    assert_eq!(string("gen_ai.provider.name").as_deref(), Some("waypoint"));
    assert_eq!(string("gen_ai.response.id").as_deref(), Some(id.as_str()));
    assert_eq!(
        string("gen_ai.response.model"),
        string("gen_ai.request.model")
    );
    assert_eq!(
        string("gen_ai.request.stop_sequences").as_deref(),
        Some(r#"["zz","yy"]"#)
    );
    assert_eq!(string("server.address").as_deref(), Some("127.0.0.1"));
    assert!(int("server.port").is_some_and(|port| port > 0));
    assert_eq!(int("gen_ai.request.top_k"), Some(5));
    assert_eq!(int("gen_ai.request.seed"), Some(7));
    assert_eq!(int("gen_ai.request.choice.count"), Some(1));
    assert_eq!(int("gen_ai.usage.cache_read.input_tokens"), Some(0));
    assert_eq!(
        request.attr("gen_ai.request.presence_penalty"),
        Some(&Attr::Double(0.5))
    );
    assert_eq!(
        request.attr("gen_ai.request.stream"),
        Some(&Attr::Bool(false))
    );
    assert_eq!(request.attr("error.type"), None, "no error");
    assert_eq!(
        request.event_names(),
        [
            "api.ARRIVED",
            "api.HANDOFF_TO_CORE",
            "api.FIRST_RESPONSE_FROM_CORE",
            "api.DEPARTED"
        ]
    );
    assert_eq!(
        core.event_names(),
        [
            "journey.QUEUED",
            "journey.SCHEDULED",
            "journey.FIRST_TOKEN",
            "journey.FINISHED"
        ]
    );
    assert_eq!(
        core.events[1].attributes["schedule.kind"],
        Attr::Str("FIRST".into())
    );
    assert_eq!(finish_status(&core), "length");
    assert_eq!(
        request.attr("gen_ai.usage.output_tokens"),
        Some(&Attr::Int(6))
    );
    assert_eq!(
        request.attr("gen_ai.request.max_tokens"),
        Some(&Attr::Int(6))
    );
    assert_eq!(
        request.attr("http.response.status_code"),
        Some(&Attr::Int(200))
    );
    assert_eq!(
        request.attr("gen_ai.response.finish_reasons"),
        Some(&Attr::Str("length".into()))
    );
    assert_eq!(request.parent_span_id, "", "no traceparent: a root span");
    // The response names its trace and its llm_request span.
    assert_eq!(answer.trace_id.as_deref(), Some(request.trace_id.as_str()));
    assert_eq!(
        answer.traceparent,
        Some(format!("00-{}-{}-01", request.trace_id, request.span_id))
    );

    // Ended by a stop string: characters of a greedy output, asked for again with them. The
    // random tiny model has near-ties that thread timing can flip between runs, so the second
    // output may differ; a few tries with fresh characters make a stop certain enough.
    let prompt = json!({"prompt": "stop here", "max_tokens": 12, "ignore_eos": true});
    let mut stopped = None;
    for _ in 0..5 {
        let full = complete(&server, prompt.clone(), &[]).await;
        let text = full.body["choices"][0]["text"]
            .as_str()
            .unwrap()
            .to_string();
        // Not U+FFFD: bytes that are not UTF-8 on their own only become it at the final flush.
        let mut stops: Vec<String> = Vec::new();
        for c in text.chars().filter(|c| *c != char::REPLACEMENT_CHARACTER) {
            if stops.len() < 4 && !stops.contains(&c.to_string()) {
                stops.push(c.to_string());
            }
        }
        let mut with_stop = prompt.clone();
        with_stop["stop"] = json!(stops);
        let answer = complete(&server, with_stop, &[]).await;
        if answer.body["choices"][0]["finish_reason"] == "stop" {
            stopped = Some(answer);
            break;
        }
    }
    let stopped = stopped.expect("no try ended by a stop string");
    let id = stopped.body["id"].as_str().unwrap().to_string();
    let (request, core) = wait_journey(&receiver, &id).await;
    check_contract(&request, &core);
    assert_eq!(finish_status(&core), "stopped");
    assert_eq!(
        request.attr("gen_ai.response.finish_reasons"),
        Some(&Attr::Str("stop".into()))
    );

    // An incoming traceparent: same trace, and llm_request is the caller's child.
    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let traceparent = format!("00-{caller_trace}-{caller_span}-01");
    let answer = complete(
        &server,
        json!({"prompt": "child", "max_tokens": 3}),
        &[("traceparent", &traceparent)],
    )
    .await;
    let id = answer.body["id"].as_str().unwrap().to_string();
    let (request, core) = wait_journey(&receiver, &id).await;
    check_contract(&request, &core);
    assert_eq!(request.trace_id, caller_trace);
    assert_eq!(request.parent_span_id, caller_span);
    assert_eq!(answer.trace_id.as_deref(), Some(caller_trace));

    // A client that disconnects mid-stream.
    let response = reqwest::Client::new()
        .post(format!("{}/v1/completions", server.base_url))
        .json(&json!({"prompt": "leave", "max_tokens": 2000, "ignore_eos": true, "stream": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let trace_id = response.headers()["x-trace-id"]
        .to_str()
        .unwrap()
        .to_string();
    let mut body = response.bytes_stream();
    body.next().await.unwrap().unwrap();
    drop(body);
    let spans = receiver
        .wait_for("the aborted journey", WAIT, |spans| {
            spans.iter().filter(|s| s.trace_id == trace_id).count() == 2
        })
        .await;
    let of = |name: &str| {
        spans
            .iter()
            .find(|s| s.trace_id == trace_id && s.name == name)
            .unwrap()
            .clone()
    };
    let (request, core) = (of("llm_request"), of("llm_core"));
    check_contract(&request, &core);
    assert_eq!(finish_status(&core), "aborted");
    let aborted = request
        .events
        .iter()
        .find(|e| e.name == "api.ABORTED")
        .expect("api.ABORTED");
    assert_eq!(
        aborted.attributes["abort.reason"],
        Attr::Str("client_disconnected".into())
    );
    assert!(!request.event_names().contains(&"api.DEPARTED"));

    assert!(server.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampling_is_decided_once_and_can_be_forced() {
    let receiver = Receiver::start(Transport::Grpc).await;
    let server = server_for(&receiver, &["--journey-tracing-sample-rate", "0"]);
    let body = json!({"prompt": "sampled out", "max_tokens": 3});

    // Sampled out: recorded for tail retention, named with the decision still open (and,
    // fast, never exported: see the end).
    let plain = complete(&server, body.clone(), &[]).await;
    let plain_trace = plain
        .trace_id
        .clone()
        .expect("a recorded request names its trace");
    assert!(plain.traceparent.unwrap().ends_with("-00"));
    // A caller that did not sample its trace is respected.
    let unsampled_parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
    let unsampled = complete(&server, body.clone(), &[("traceparent", unsampled_parent)]).await;
    assert_eq!(unsampled.trace_id, None);
    // The header forces it.
    let forced = complete(&server, body.clone(), &[("x-waypoint-trace", "1")]).await;
    let id = forced.body["id"].as_str().unwrap().to_string();
    let (request, core) = wait_journey(&receiver, &id).await;
    check_contract(&request, &core);
    assert_eq!(forced.trace_id.as_deref(), Some(request.trace_id.as_str()));

    // Its trace id is the exemplar of the latency histograms (the others have none).
    let metrics = reqwest::Client::new()
        .get(format!("{}/metrics", server.base_url))
        .header("accept", "application/openmetrics-text")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let exemplar = format!("# {{trace_id=\"{}\"}}", request.trace_id);
    let traced_buckets = metrics
        .lines()
        .filter(|line| line.starts_with("waypoint_e2e_request_latency_seconds_bucket"))
        .filter(|line| line.contains(&exemplar))
        .count();
    assert_eq!(traced_buckets, 1, "{metrics}");
    assert_eq!(
        metrics.matches("trace_id=").count(),
        metrics.matches(&exemplar).count()
    );

    // Everything exported by now is the forced request's: the others made no span.
    let status = server.terminate();
    assert!(status.success());
    let spans = receiver.spans();
    assert_eq!(spans.len(), 2, "{spans:#?}");
    assert!(spans.iter().all(|s| s.trace_id == request.trace_id));
    assert_ne!(plain_trace, request.trace_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preempted_request_reports_each_step_of_its_journey() {
    let receiver = Receiver::start(Transport::HttpProtobuf).await;
    // 40 blocks of 4 tokens and 8 tokens a step: the long prompt still prefilling when the
    // pool runs out is the most recent arrival, so it is preempted before its first token.
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
    let first = client
        .post(&url)
        .json(&json!({"prompt": [256, 1, 2, 3], "max_tokens": 140, "ignore_eos": true, "stream": true}))
        .send()
        .await
        .unwrap();
    let mut first_body = first.bytes_stream();
    first_body.next().await.unwrap().unwrap();
    let long_prompt: Vec<u32> = (0..140).map(|i| 10 + i % 200).collect();
    let second = complete(
        &server,
        json!({"prompt": long_prompt, "max_tokens": 8, "ignore_eos": true}),
        &[],
    )
    .await;
    while first_body.next().await.is_some() {}
    let id = second.body["id"].as_str().unwrap().to_string();
    let (request, core) = wait_journey(&receiver, &id).await;
    check_contract(&request, &core);

    let kinds: Vec<(String, Option<String>)> = core
        .events
        .iter()
        .map(|e| {
            (
                e.name.clone(),
                e.attributes
                    .get("schedule.kind")
                    .and_then(Attr::as_str)
                    .map(str::to_string),
            )
        })
        .collect();
    let name = |i: usize| kinds[i].0.as_str();
    assert_eq!(name(0), "journey.QUEUED", "{kinds:?}");
    assert_eq!(
        kinds[1],
        ("journey.SCHEDULED".into(), Some("FIRST".into())),
        "{kinds:?}"
    );
    assert_eq!(name(2), "journey.PREEMPTED", "{kinds:?}");
    assert_eq!(
        kinds[3],
        ("journey.SCHEDULED".into(), Some("RESUME".into())),
        "{kinds:?}"
    );
    let n = kinds.len();
    assert_eq!(name(n - 2), "journey.FIRST_TOKEN", "{kinds:?}");
    assert_eq!(name(n - 1), "journey.FINISHED", "{kinds:?}");
    // Every preemption is followed by a resume; the counts agree; progress is consistent.
    let mut preemptions = 0;
    for (i, event) in core.events.iter().enumerate() {
        if event.name == "journey.PREEMPTED" {
            preemptions += 1;
            assert_eq!(event.attributes["phase"], Attr::Str("WAITING".into()));
            assert_eq!(int(event, "num_preemptions"), preemptions);
            assert_eq!(
                int(event, "decode.done_tokens"),
                0,
                "preempted before its first token"
            );
            assert_eq!(kinds[i + 1].1.as_deref(), Some("RESUME"), "{kinds:?}");
        }
        assert_eq!(int(event, "prefill.total_tokens"), 140);
        assert_eq!(int(event, "decode.max_tokens"), 8);
    }
    let finished = core.events.last().unwrap();
    assert_eq!(int(finished, "num_preemptions"), preemptions);
    assert_eq!(int(finished, "decode.done_tokens"), 8);
    assert_eq!(int(finished, "prefill.done_tokens"), 140);
    assert_eq!(finish_status(&core), "length");
    assert!(server.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_protobuf_export_is_flushed_on_graceful_shutdown() {
    export_is_flushed_on_graceful_shutdown(Transport::HttpProtobuf).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_export_is_flushed_on_graceful_shutdown() {
    export_is_flushed_on_graceful_shutdown(Transport::Grpc).await;
}

/// Spans still queued at SIGTERM reach the collector before the process exits.
async fn export_is_flushed_on_graceful_shutdown(transport: Transport) {
    let receiver = Receiver::start(transport).await;
    // A batch delay far beyond the test: only the shutdown flush can deliver the spans.
    let endpoint = receiver.endpoint();
    let server = ServerProcess::start(
        &[
            "--enable-journey-tracing",
            "--otlp-traces-endpoint",
            &endpoint,
            "--otlp-protocol",
            receiver.protocol(),
        ],
        &[
            ("OTEL_BSP_SCHEDULE_DELAY", "600000"),
            ("OTEL_SERVICE_NAME", "waypoint-under-test"),
        ],
    );
    let answer = complete(&server, json!({"prompt": "flush me", "max_tokens": 4}), &[]).await;
    let id = answer.body["id"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(receiver.spans().is_empty(), "exported before the flush");
    assert!(server.terminate().success());
    let spans = receiver.spans();
    let (request, core) = journey_spans(&spans, &id).expect("flushed at shutdown");
    assert_eq!(request.service_name.as_deref(), Some("waypoint-under-test"));
    assert_eq!(core.service_name.as_deref(), Some("waypoint-under-test"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_is_down_costs_requests_nothing() {
    // A port nobody listens on.
    let unused = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", unused.local_addr().unwrap());
    drop(unused);
    let server = ServerProcess::start(
        &[
            "--enable-journey-tracing",
            "--otlp-traces-endpoint",
            &endpoint,
        ],
        &[("OTEL_BSP_SCHEDULE_DELAY", "50")],
    );
    for i in 0..20 {
        let answer = complete(
            &server,
            json!({"prompt": format!("request {i}"), "max_tokens": 4, "ignore_eos": true}),
            &[],
        )
        .await;
        assert_eq!(answer.body["usage"]["completion_tokens"], 4);
        assert!(answer.trace_id.is_some());
    }
    // Batches fail; the log says so once per interval (30 s), not once per batch.
    let deadline = std::time::Instant::now() + WAIT;
    while !server
        .stderr()
        .iter()
        .any(|l| l.contains("trace export failed"))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "{:#?}",
            server.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for i in 0..5 {
        complete(
            &server,
            json!({"prompt": format!("more {i}"), "max_tokens": 2}),
            &[],
        )
        .await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let health = reqwest::get(format!("{}/health", server.base_url))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let stderr = server.stderr();
    let reports = stderr
        .iter()
        .filter(|line| line.contains("trace export failed"))
        .count();
    assert_eq!(reports, 1, "{stderr:#?}");
    assert!(server.terminate().success());
}

#[test]
fn journey_tracing_without_an_endpoint_says_so_once() {
    let server = ServerProcess::start(&["--enable-journey-tracing"], &[]);
    let notices = server
        .stderr()
        .iter()
        .filter(|line| line.contains("no OTLP endpoint is set"))
        .count();
    assert_eq!(notices, 1, "{:#?}", server.stderr());
    assert!(server.terminate().success());
}
