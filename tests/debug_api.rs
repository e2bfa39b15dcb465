//! The debug API (`docs/DEBUG_API.md`) against the real engine (the tiny model): access,
//! what `/debug/requests` and `/debug/engine` show (the states agree with the journeys the
//! engine records), and tracing settings changed under load (nothing lost, every request's
//! decision stable).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use serde_json::{json, Value};
use waypoint::server::ServerConfig;

#[path = "common/journeys.rs"]
mod journeys;
use journeys::journeys_counted;
#[path = "common/tiny.rs"]
mod tiny;
use tiny::{TinyEngine, BLOCK_SIZE};

fn engine(max_num_seqs: usize) -> waypoint::engine::RunningEngine {
    TinyEngine {
        num_blocks: 2048,
        max_num_seqs,
        max_waiting_requests: 10_000,
        max_model_len: Some(2048),
    }
    .start()
}

/// Debug API on, journeys recorded for tail retention (rate 0).
fn config() -> ServerConfig {
    ServerConfig {
        enable_debug_api: true,
        journey_sample_rate: Some(0.0),
        ..ServerConfig::default()
    }
}

async fn get(client: &reqwest::Client, url: &str, key: Option<&str>) -> (u16, Value) {
    let mut request = client.get(url);
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_debug_api_is_off_unless_enabled_and_then_behind_the_admin_key() {
    let engine = engine(8);
    let client = reqwest::Client::new();
    let off = tiny::serve(&engine.handle, ServerConfig::default()).await;
    for path in [
        "/debug",
        "/debug/requests",
        "/debug/engine",
        "/debug/tracing",
    ] {
        assert_eq!(
            get(&client, &format!("{off}{path}"), None).await.0,
            404,
            "{path}"
        );
    }
    let keyed = tiny::serve(
        &engine.handle,
        ServerConfig {
            api_key: Some("api".into()),
            admin_api_key: Some("admin".into()),
            ..config()
        },
    )
    .await;
    // Every route and method refuses a caller without the admin key, and changes nothing.
    for (method, path) in [
        ("GET", "/debug"),
        ("GET", "/debug/requests"),
        ("GET", "/debug/requests/cmpl-0"),
        ("GET", "/debug/engine"),
        ("GET", "/debug/tracing"),
        ("PUT", "/debug/tracing"),
        ("GET", "/debug/log-filter"),
        ("PUT", "/debug/log-filter"),
    ] {
        for key in [None, Some("api"), Some("admin-but-wrong")] {
            let mut request = client.request(method.parse().unwrap(), format!("{keyed}{path}"));
            if let Some(key) = key {
                request = request.bearer_auth(key);
            }
            let body = if method == "PUT" && path.ends_with("tracing") {
                r#"{"journey_tracing_sample_rate": 1.0}"#
            } else {
                "debug"
            };
            let status = request.body(body).send().await.unwrap().status();
            assert_eq!(status, 401, "{method} {path} with {key:?}");
        }
    }
    let settings = client
        .get(format!("{keyed}/debug/tracing"))
        .bearer_auth("admin")
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(settings["journey_tracing_sample_rate"], 0.0);
    let url = format!("{keyed}/debug/engine");
    assert_eq!(get(&client, &url, None).await.0, 401);
    // The API key is not the admin key.
    assert_eq!(get(&client, &url, Some("api")).await.0, 401);
    assert_eq!(get(&client, &url, Some("admin")).await.0, 200);
    // The page alone takes the key in its URL (a browser cannot send a header on load).
    let page = client
        .get(format!("{keyed}/debug?key=admin"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("waypoint · live"));
    let not_page = client
        .get(format!("{keyed}/debug/engine?key=admin"))
        .send()
        .await
        .unwrap();
    assert_eq!(not_page.status(), 401);
    // Without an admin key, the API key guards it.
    let api_only = tiny::serve(
        &engine.handle,
        ServerConfig {
            api_key: Some("api".into()),
            ..config()
        },
    )
    .await;
    let url = format!("{api_only}/debug/requests");
    assert_eq!(get(&client, &url, None).await.0, 401);
    assert_eq!(get(&client, &url, Some("api")).await.0, 200);
}

/// Whether a request's state agrees with its recorded journey.
fn check_against_journey(view: &Value) {
    let events = view["journey"]
        .as_array()
        .expect("recorded journeys are shown");
    let kinds: Vec<&str> = events.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds.first(), Some(&"QUEUED"), "{view}");
    let last = *kinds.last().unwrap();
    match view["state"].as_str().unwrap() {
        "waiting" => assert!(matches!(last, "QUEUED" | "PREEMPTED"), "{view}"),
        "running" => assert!(matches!(last, "SCHEDULED" | "FIRST_TOKEN"), "{view}"),
        other => panic!("state {other}: {view}"),
    }
    let decoding = view["phase"] == "DECODE" && view["output_tokens"].as_u64().unwrap() > 0;
    assert_eq!(
        decoding,
        kinds.contains(&"FIRST_TOKEN") && view["state"] == "running",
        "{view}"
    );
    assert_eq!(
        view["preemptions"].as_u64().unwrap() as usize,
        kinds.iter().filter(|k| **k == "PREEMPTED").count()
    );
    assert!(
        view["computed_tokens"].as_u64()
            <= Some(
                view["prompt_tokens"].as_u64().unwrap() + view["output_tokens"].as_u64().unwrap()
            )
    );
    let blocks = view["blocks"].as_u64().unwrap() as usize;
    let computed = view["computed_tokens"].as_u64().unwrap() as usize;
    if view["state"] == "running" {
        assert!(blocks * BLOCK_SIZE >= computed, "{view}");
    } else {
        assert_eq!(blocks, 0, "a waiting request holds no block: {view}");
    }
    assert!(
        view["trace_id"].as_str().is_some_and(|t| t.len() == 32),
        "{view}"
    );
    assert!(view["queue_s"].as_f64().unwrap() <= view["age_s"].as_f64().unwrap());
    let text = view.to_string();
    assert!(
        !text.contains("lighthouse"),
        "prompt text in the debug API: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_and_engine_show_the_engine_as_its_journeys_say() {
    let engine = engine(4);
    let base = tiny::serve(&engine.handle, config()).await;
    let client = reqwest::Client::new();
    // 16 long requests, four at a time: most wait while we look.
    let burst: Vec<_> = (0..16)
        .map(|i| {
            let client = client.clone();
            let url = format!("{base}/v1/completions");
            tokio::spawn(async move {
                let body = json!({"prompt": format!("the lighthouse {i}"), "max_tokens": 1500,
                                  "ignore_eos": true, "stream": true});
                let response = client.post(url).json(&body).send().await.unwrap();
                let status = response.status();
                if status != 200 {
                    panic!("{status}: {}", response.text().await.unwrap());
                }
                let mut stream = response.bytes_stream();
                while stream.next().await.transpose().unwrap().is_some() {}
            })
        })
        .collect();
    let mut states = HashSet::new();
    let mut found_by_id = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !burst.iter().all(|task| task.is_finished()) && Instant::now() < deadline {
        let (status, body) = get(&client, &format!("{base}/debug/requests"), None).await;
        assert_eq!(status, 200);
        for view in body["requests"].as_array().unwrap() {
            check_against_journey(view);
            states.insert(view["state"].as_str().unwrap().to_string());
        }
        // One by its id: the same request, or gone (404) if it finished in between.
        if let Some(view) = body["requests"].as_array().unwrap().first() {
            let id = view["id"].as_str().unwrap();
            let (status, one) = get(&client, &format!("{base}/debug/requests/{id}"), None).await;
            match status {
                200 => {
                    assert_eq!(one["request"]["id"], id);
                    check_against_journey(&one["request"]);
                    found_by_id += 1;
                }
                404 => assert_eq!(one["error"]["type"], "not_found_error"),
                other => panic!("GET /debug/requests/{id}: {other} {one}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    for task in burst {
        task.await.unwrap();
    }
    assert!(
        states.contains("waiting") && states.contains("running"),
        "{states:?}"
    );
    assert!(found_by_id > 0);

    let (status, view) = get(&client, &format!("{base}/debug/engine"), None).await;
    assert_eq!(status, 200);
    assert_eq!(view["scheduler"]["max_num_seqs"], 4);
    assert_eq!(view["scheduler"]["block_size"], BLOCK_SIZE);
    assert_eq!(view["scheduler"]["num_blocks"], 2048);
    assert_eq!(view["running"], 0);
    assert_eq!(view["waiting"], 0);
    // Kept although step tracing is off: the ring's last 512 steps, in order.
    let steps = view["recent_steps"].as_array().unwrap();
    assert_eq!(
        steps.len(),
        waypoint::engine::inspect::STEP_RING,
        "16 x 1500 tokens"
    );
    for pair in steps.windows(2) {
        assert_eq!(
            pair[1]["step"].as_u64(),
            pair[0]["step"].as_u64().map(|s| s + 1)
        );
        assert!(pair[1]["at"].as_f64() >= pair[0]["at"].as_f64());
    }
    assert!(steps.iter().all(|s| s["batch_size"].as_u64() <= Some(4)));
    assert_eq!(view["steps"], steps.last().unwrap()["step"]);
    let (status, empty) = get(&client, &format!("{base}/debug/requests"), None).await;
    assert_eq!(status, 200);
    assert_eq!(empty["requests"], json!([]));
}

async fn metrics(client: &reqwest::Client, base: &str) -> String {
    client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracing_settings_change_under_load_and_each_request_keeps_its_decision() {
    let engine = engine(16);
    let base = tiny::serve(&engine.handle, config()).await;
    let client = reqwest::Client::new();
    let tracing_url = format!("{base}/debug/tracing");
    let (_, before) = get(&client, &tracing_url, None).await;
    assert_eq!(before["journey_tracing_sample_rate"], 0.0);
    // Step tracing was not started: its rates cannot be set.
    let refused = client
        .put(&tracing_url)
        .body(r#"{"step_tracing_sample_rate": 0.5}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 409);
    // A bad value is refused with a 400 that names it, and changes nothing.
    for (body, param) in [
        (
            r#"{"journey_tracing_sample_rate": 1.5}"#,
            "journey_tracing_sample_rate",
        ),
        (
            r#"{"journey_tracing_keep": "ttft>2"}"#,
            "journey_tracing_keep",
        ),
    ] {
        let response = client.put(&tracing_url).body(body).send().await.unwrap();
        assert_eq!(response.status(), 400);
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["error"]["param"], param, "{error}");
    }
    let unknown = client
        .put(&tracing_url)
        .body(r#"{"rate": 1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 400);
    assert!(unknown
        .text()
        .await
        .unwrap()
        .contains("unknown field `rate`"));
    assert_eq!(get(&client, &tracing_url, None).await.1, before);

    // 300 requests while the rate flips between 0 and 1 every few milliseconds.
    let load = {
        let client = client.clone();
        let url = format!("{base}/v1/completions");
        tokio::spawn(async move {
            futures::stream::iter(0..300)
                .map(|i| {
                    let (client, url) = (client.clone(), url.clone());
                    async move {
                        let response = client
                            .post(url)
                            .json(&json!({"prompt": format!("p{i}"), "max_tokens": 8}))
                            .send()
                            .await
                            .unwrap();
                        assert_eq!(response.status(), 200);
                        // A recorded journey names its trace with the decision open (-00);
                        // a live one here has no exporter to name a trace with.
                        response
                            .headers()
                            .get("traceparent")
                            .map(|v| v.to_str().unwrap().to_string())
                    }
                })
                .buffer_unordered(16)
                .collect::<Vec<Option<String>>>()
                .await
        })
    };
    let mut flips = 0;
    while !load.is_finished() {
        let rate = if flips % 2 == 0 { 1.0 } else { 0.0 };
        let response = client
            .put(&tracing_url)
            .json(&json!({"journey_tracing_sample_rate": rate}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let previous: Value = response.json().await.unwrap();
        assert_eq!(previous["journey_tracing_sample_rate"], 1.0 - rate);
        flips += 1;
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    let announced = load.await.unwrap();
    assert!(flips >= 4, "only {flips} changes under load");
    let recorded = announced.iter().filter(|t| t.is_some()).count() as u64;
    assert!(announced.iter().flatten().all(|t| t.ends_with("-00")));
    // Every request was decided exactly once, as it was announced.
    let text = metrics(&client, &base).await;
    assert_eq!(
        journeys_counted(&text, "kept", "head"),
        300 - recorded,
        "{text}"
    );
    let recorded_decisions: u64 = ["within_rules"]
        .iter()
        .map(|reason| journeys_counted(&text, "dropped", reason))
        .sum::<u64>()
        + [
            "error",
            "aborted",
            "preempted",
            "slow_queue",
            "slow_ttft",
            "slow_itl",
            "slow_e2e",
        ]
        .iter()
        .map(|reason| journeys_counted(&text, "kept", reason))
        .sum::<u64>();
    assert_eq!(recorded_decisions, recorded, "{text}");
    // (The in-memory gauges are process-wide, and another test here records journeys at the
    // same time: tests/tail_retention.rs checks they drain, in a process of their own.)
    // No exporter installed here, and the console filter is not this test's to change.
    let filter = client
        .put(format!("{base}/debug/log-filter"))
        .body("debug")
        .send()
        .await
        .unwrap();
    assert_eq!(filter.status(), 409);
}
