//! Journey events reach `tracing` in lifecycle order, with consistent progress numbers, for a
//! request pushed through preemption by a tiny KV pool; sampled-out requests emit none.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use burn::backend::Flex;
use serde_json::json;
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::Layer;
use waypoint::engine::{BurnRunner, EngineConfig, ModelInfo, SchedulerConfig};
use waypoint::model::KvCacheConfig;
use waypoint::server::{AppState, ServerConfig};

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
        if !event.metadata().target().starts_with("waypoint::journey") {
            return;
        }
        let mut fields = Fields::new();
        event.record(&mut FieldsVisitor(&mut fields));
        let id = fields.get("request_id").cloned().unwrap_or_default();
        self.0.lock().unwrap().entry(id).or_default().push(fields);
    }
}

fn num(fields: &Fields, name: &str) -> u64 {
    fields[name]
        .parse()
        .unwrap_or_else(|_| panic!("{name} is not an integer: {fields:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preempted_request_reports_its_whole_journey_in_order() {
    let capture = Capture::default();
    // The engine runs on its own thread, so the subscriber must be global.
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(capture.clone()))
        .unwrap();

    let files = waypoint::loader::open("tiny").unwrap();
    let (model, tokenizer, name) = files.load::<Flex>(&Default::default()).unwrap();
    let mut scheduler = SchedulerConfig::new(12, 2048);
    scheduler.block_size = 4;
    let info = ModelInfo {
        name,
        max_context: 2048,
        vocab_size: model.config().vocab_size,
    };
    let engine = waypoint::engine::start(
        BurnRunner::new(model, KvCacheConfig::with_blocks(4, 12)),
        Arc::new(tokenizer),
        info,
        EngineConfig {
            scheduler,
            max_waiting_requests: 100,
        },
    )
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1/completions", listener.local_addr().unwrap());
    let config = ServerConfig {
        journey_sample_rate: Some(1.0),
        ..Default::default()
    };
    let state = AppState::new(engine.handle.clone(), config);
    tokio::spawn(waypoint::server::serve(
        listener,
        state,
        std::future::pending(),
    ));

    // Three requests growing to ~20 tokens each in a pool of 48 token slots.
    let client = reqwest::Client::new();
    let body =
        |i: usize| json!({"prompt": format!("journey {i}"), "max_tokens": 12, "ignore_eos": true});
    let responses =
        futures::future::join_all((0..3).map(|i| client.post(&url).json(&body(i)).send())).await;
    for response in responses {
        assert_eq!(response.unwrap().status(), 200);
    }
    assert!(
        engine.handle.stats().await.unwrap().total_preemptions > 0,
        "the pool was meant to be too small"
    );

    let journeys = capture.0.lock().unwrap().clone();
    assert_eq!(journeys.len(), 3, "{journeys:?}");
    let mut saw_resume = false;
    for events in journeys.values() {
        let kinds: Vec<&str> = events.iter().map(|e| e["event.type"].as_str()).collect();
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
        // Progress never goes backwards in decode, and the numbers are the request's.
        let mut decoded = 0;
        let mut step = 0;
        for event in events {
            assert!(num(event, "decode.done_tokens") >= decoded, "{events:?}");
            decoded = num(event, "decode.done_tokens");
            assert!(num(event, "scheduler.step") >= step, "{events:?}");
            step = num(event, "scheduler.step");
            assert_eq!(num(event, "decode.max_tokens"), 12);
            assert!(num(event, "prefill.done_tokens") <= num(event, "prefill.total_tokens"));
            assert!(event["ts.monotonic"].parse::<f64>().unwrap() >= 0.0);
        }
        assert_eq!(decoded, 12);
    }
    assert!(saw_resume);

    // Sampled out: tracing off for a request means no journey events at all.
    capture.0.lock().unwrap().clear();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1/completions", listener.local_addr().unwrap());
    let config = ServerConfig {
        journey_sample_rate: Some(0.0),
        ..Default::default()
    };
    tokio::spawn(waypoint::server::serve(
        listener,
        AppState::new(engine.handle.clone(), config),
        std::future::pending(),
    ));
    let response = client.post(&url).json(&body(9)).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(capture.0.lock().unwrap().is_empty());
    // ... unless the header forces it.
    let response = client
        .post(&url)
        .header("x-waypoint-trace", "1")
        .json(&body(10))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(capture.0.lock().unwrap().len(), 1);
}
