//! Journey events reach `tracing` in lifecycle order, with consistent progress numbers, for a
//! request pushed through preemption by a tiny KV pool; sampled-out requests emit none.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use serde_json::json;
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::Layer;
use waypoint::engine::{EngineRequest, StreamEvent};
use waypoint::sampling::SamplingParams;
use waypoint::server::ServerConfig;

#[path = "common/tiny.rs"]
mod tiny;
use tiny::TinyEngine;

type Fields = BTreeMap<String, String>;

/// Records every journey event's fields, per request id.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<HashMap<String, Vec<Fields>>>>);

struct FieldsVisitor<'a>(&'a mut Fields);

impl Visit for FieldsVisitor<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0
            .insert(field.name().to_string(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_string(), value.to_string());
    }
}

impl<S: tracing::Subscriber> Layer<S> for Capture {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        let target = event.metadata().target();
        if target != "waypoint::journey" && target != "waypoint::api" {
            return;
        }
        let mut fields = Fields::new();
        event.record(&mut FieldsVisitor(&mut fields));
        fields.insert("target".into(), target.into());
        let id = fields.get("request_id").cloned().unwrap_or_default();
        self.0.lock().unwrap().entry(id).or_default().push(fields);
    }
}

fn num(fields: &Fields, name: &str) -> u64 {
    fields[name]
        .parse()
        .unwrap_or_else(|_| panic!("{name} is not an integer: {fields:?}"))
}

fn kinds<'a>(events: &'a [Fields], target: &str) -> Vec<&'a str> {
    events
        .iter()
        .filter(|e| e["target"] == target)
        .map(|e| e["event.type"].as_str())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journeys_are_reported_in_order_through_preemption_sampling_and_abort() {
    let capture = Capture::default();
    // The engine runs on its own thread, so the subscriber must be global.
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(capture.clone()))
        .unwrap();

    let engine = TinyEngine {
        num_blocks: 24,
        max_num_seqs: 64,
        max_waiting_requests: 100,
        max_model_len: Some(2048),
    }
    .start();

    // Three requests growing to 85 tokens each in a pool of 96 token slots, submitted
    // together so the engine takes them in the same step: preemption is certain.
    let mut streams = Vec::new();
    for i in 0..3u32 {
        let params = SamplingParams {
            max_tokens: 80,
            ignore_eos: true,
            ..SamplingParams::greedy()
        };
        let request = EngineRequest {
            journey: waypoint::engine::journey::JourneyMode::Live(
                waypoint::engine::retention::RetentionReason::Head,
            ),
            ..EngineRequest::new(
                format!("journey-{i}"),
                vec![256, 10 + i, 20, 30, 40],
                params,
            )
        };
        streams.push(engine.handle.submit(request).unwrap());
    }
    for mut stream in streams {
        while let Some(event) = stream.next().await {
            if let StreamEvent::Finished(info) = event {
                assert_eq!(info.completion_tokens, 80);
            }
        }
    }
    assert!(
        engine.handle.stats().await.unwrap().total_preemptions > 0,
        "the pool was meant to be too small"
    );

    let journeys = capture.0.lock().unwrap().clone();
    assert_eq!(journeys.len(), 3, "{journeys:?}");
    let mut saw_resume = false;
    for events in journeys.values() {
        let kinds = kinds(events, "waypoint::journey");
        assert_eq!(kinds.len(), events.len());
        assert_eq!(kinds.first(), Some(&"QUEUED"), "{kinds:?}");
        assert_eq!(kinds.last(), Some(&"FINISHED"), "{kinds:?}");
        assert_eq!(events.last().unwrap()["finish.status"], "length");
        assert_eq!(events[1]["event.type"], "SCHEDULED");
        assert_eq!(events[1]["schedule.kind"], "FIRST");
        assert_eq!(
            kinds.iter().filter(|k| **k == "FIRST_TOKEN").count(),
            1,
            "{kinds:?}"
        );
        // Every PREEMPTED is followed by a SCHEDULED RESUME, and the counts agree.
        let preemptions = kinds.iter().filter(|k| **k == "PREEMPTED").count() as u64;
        for (i, event) in events.iter().enumerate() {
            if event["event.type"] == "PREEMPTED" {
                let resumed = events[i + 1..]
                    .iter()
                    .find(|e| e["event.type"] == "SCHEDULED")
                    .unwrap();
                assert_eq!(resumed["schedule.kind"], "RESUME");
                assert_eq!(event["phase"], "WAITING");
                saw_resume = true;
            }
        }
        assert_eq!(num(events.last().unwrap(), "num_preemptions"), preemptions);
        // Progress never goes backwards in decode or steps, and the numbers are the request's.
        let (mut decoded, mut step) = (0, 0);
        for event in events {
            assert!(num(event, "decode.done_tokens") >= decoded, "{events:?}");
            decoded = num(event, "decode.done_tokens");
            assert!(num(event, "scheduler.step") >= step, "{events:?}");
            step = num(event, "scheduler.step");
            assert_eq!(num(event, "decode.max_tokens"), 80);
            assert_eq!(num(event, "prefill.total_tokens"), 5);
            assert!(num(event, "prefill.done_tokens") <= 5);
            assert!(event["ts.monotonic"].parse::<f64>().unwrap() >= 0.0);
        }
        assert_eq!(decoded, 80);
    }
    assert!(saw_resume);

    // Over HTTP. Sampled out (rate 0): no journey events at all.
    capture.0.lock().unwrap().clear();
    let config = ServerConfig {
        journey_sample_rate: Some(0.0),
        ..Default::default()
    };
    let url = format!(
        "{}/v1/completions",
        tiny::serve(&engine.handle, config).await
    );
    let client = reqwest::Client::new();
    let body = json!({"prompt": "journey", "max_tokens": 12, "ignore_eos": true});
    let response = client.post(&url).json(&body).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(capture.0.lock().unwrap().is_empty());

    // ... unless the header forces it; then the API's events come too, in order.
    let response = client
        .post(&url)
        .header("x-waypoint-trace", "1")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let journeys = capture.0.lock().unwrap().clone();
    assert_eq!(journeys.len(), 1);
    let all = journeys.values().next().unwrap();
    assert_eq!(
        kinds(all, "waypoint::api"),
        [
            "ARRIVED",
            "HANDOFF_TO_CORE",
            "FIRST_RESPONSE_FROM_CORE",
            "DEPARTED"
        ]
    );
    assert_eq!(
        kinds(all, "waypoint::journey"),
        ["QUEUED", "SCHEDULED", "FIRST_TOKEN", "FINISHED"]
    );

    // A client that leaves mid-stream: ABORTED at the API, FINISHED aborted in the engine.
    capture.0.lock().unwrap().clear();
    let response = client
        .post(&url)
        .header("x-waypoint-trace", "1")
        .json(&json!({"prompt": "leave", "max_tokens": 2000, "ignore_eos": true, "stream": true}))
        .send()
        .await
        .unwrap();
    let mut body = response.bytes_stream();
    futures::StreamExt::next(&mut body).await.unwrap().unwrap();
    drop(body);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let done = capture
            .0
            .lock()
            .unwrap()
            .values()
            .flatten()
            .any(|e| e["event.type"] == "FINISHED");
        if done {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the aborted request never finished"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let journeys = capture.0.lock().unwrap().clone();
    let events = journeys.values().next().unwrap();
    let aborted = events
        .iter()
        .find(|e| e["event.type"] == "ABORTED")
        .expect("api ABORTED");
    assert_eq!(aborted["abort.reason"], "client_disconnected");
    let finished = events
        .iter()
        .find(|e| e["event.type"] == "FINISHED")
        .unwrap();
    assert_eq!(finished["finish.status"], "aborted");
}
