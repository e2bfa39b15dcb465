//! End to end: step tracing exported over OTLP to a receiver inside the test. Batch
//! summaries on every step at rate 1.0, snapshots by subsample rate, rotating linked spans
//! that reach the collector while the server runs, and `step.id` joining journey events.

#[path = "common/otlp.rs"]
mod otlp;
#[path = "common/process.rs"]
mod process;

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use otlp::{Attr, ReceivedEvent, ReceivedSpan, Receiver, Transport, SPAN_KIND_INTERNAL};
use process::ServerProcess;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);

const SUMMARY_FIELDS: [&str; 16] = [
    "step.id",
    "step.ts_start_ns",
    "step.ts_end_ns",
    "step.duration_us",
    "queue.running_depth",
    "queue.waiting_depth",
    "batch.num_prefill_reqs",
    "batch.num_decode_reqs",
    "batch.scheduled_tokens",
    "batch.prefill_tokens",
    "batch.decode_tokens",
    "batch.num_finished",
    "batch.num_preempted",
    "kv.usage_gpu_ratio",
    "kv.blocks_total_gpu",
    "kv.blocks_free_gpu",
];

const SNAPSHOT_FIELDS: [&str; 10] = [
    "step.id",
    "request.id",
    "request.phase",
    "request.num_prompt_tokens",
    "request.num_computed_tokens",
    "request.num_output_tokens",
    "request.num_preemptions",
    "request.scheduled_tokens_this_step",
    "kv.blocks_allocated_gpu",
    "kv.blocks_cached_gpu",
];

fn server(receiver: &Receiver, rich: &str, extra_env: &[(&str, &str)]) -> ServerProcess {
    receiver.serve(
        &[
            "--enable-journey-tracing",
            "--step-tracing-enabled",
            "--step-tracing-sample-rate",
            "1.0",
            "--step-tracing-rich-subsample-rate",
            rich,
            "--step-tracing-span-window",
            "0.5",
        ],
        extra_env,
    )
}

fn prompt_number(i: usize) -> String {
    [
        "zero", "one", "two", "three", "four", "five", "six", "seven", "eight",
    ][i % 9]
        .to_string()
}

/// Sends `n` concurrent requests and waits for all of them.
async fn load(server: &ServerProcess, n: usize, max_tokens: usize) -> Vec<String> {
    let client = reqwest::Client::new();
    let url = format!("{}/v1/completions", server.base_url);
    let requests = (0..n).map(|i| {
        let client = client.clone();
        let url = url.clone();
        async move {
            let body = json!({
                // Distinct from the first token: no prefix-cache hits among them.
                "prompt": format!("{} is the number of this step tracing request", prompt_number(i)),
                "max_tokens": max_tokens,
                "ignore_eos": true,
            });
            let response = client.post(&url).json(&body).send().await.unwrap();
            assert_eq!(response.status(), 200);
            let body: serde_json::Value = response.json().await.unwrap();
            body["id"].as_str().unwrap().to_string()
        }
    });
    futures::future::join_all(requests).await
}

fn step_spans(spans: &[ReceivedSpan]) -> Vec<&ReceivedSpan> {
    let mut steps: Vec<&ReceivedSpan> = spans
        .iter()
        .filter(|s| s.name == "scheduler_steps")
        .collect();
    steps.sort_by_key(|s| s.attr("rotation.sequence").and_then(Attr::as_int));
    steps
}

fn events<'a>(spans: &[&'a ReceivedSpan], name: &str) -> Vec<&'a ReceivedEvent> {
    spans
        .iter()
        .flat_map(|s| s.events.iter())
        .filter(|e| e.name == name)
        .collect()
}

fn int(event: &ReceivedEvent, key: &str) -> i64 {
    match event.attributes.get(key) {
        Some(Attr::Int(value)) => *value,
        other => panic!("{} {key}: expected an integer, got {other:?}", event.name),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn summaries_snapshots_rotation_and_the_join_with_journeys() {
    let receiver = Receiver::start(Transport::Grpc).await;
    // 40 events a span: the load below fills several, so spans rotate by count too.
    let server = server(&receiver, "1.0", &[("OTEL_SPAN_EVENT_COUNT_LIMIT", "40")]);
    let mut ids = load(&server, 8, 16).await;
    // The first prompt again: its full blocks come from the prefix cache.
    let again = reqwest::Client::new()
        .post(format!("{}/v1/completions", server.base_url))
        .json(&json!({
            "prompt": format!("{} is the number of this step tracing request", prompt_number(0)),
            "max_tokens": 16,
            "ignore_eos": true,
        }))
        .send()
        .await
        .unwrap();
    let again: serde_json::Value = again.json().await.unwrap();
    let cached = again["usage"]["prompt_tokens_details"]["cached_tokens"]
        .as_i64()
        .unwrap();
    let prompt_tokens = again["usage"]["prompt_tokens"].as_i64().unwrap();
    assert!(cached > 0, "{again}");
    let again_id = again["id"].as_str().unwrap().to_string();
    ids.push(again_id.clone());

    // Step spans arrive while the server is still running: rotation, not shutdown, ships them.
    let spans = receiver
        .wait_for("step spans and journeys", WAIT, |spans| {
            let journeys = spans.iter().filter(|s| s.name == "llm_core").count();
            let steps = step_spans(spans);
            let finished: i64 = events(&steps, "step.BATCH_SUMMARY")
                .iter()
                .map(|s| int(s, "batch.num_finished"))
                .sum();
            journeys == ids.len() && steps.len() >= 2 && finished == ids.len() as i64
        })
        .await;
    let steps = step_spans(&spans);
    for span in &steps {
        assert_eq!(span.scope, "waypoint.scheduler.step");
        assert_eq!(span.kind, SPAN_KIND_INTERNAL);
        assert_eq!(span.parent_span_id, "");
        assert_eq!(span.dropped_events, 0, "the SDK dropped step events");
        assert!(span.events.len() <= 40);
    }
    // Linked: each span after the first points at its predecessor.
    for pair in steps.windows(2) {
        let link = pair[1].links.first().expect("a rotated span links back");
        assert_eq!(link.span_id, pair[0].span_id);
        assert_eq!(link.trace_id, pair[0].trace_id);
    }
    let reasons: BTreeSet<&str> = steps
        .iter()
        .filter_map(|s| s.attr("rotation.end_reason").and_then(Attr::as_str))
        .collect();
    assert!(reasons.contains("max_events"), "{reasons:?}");

    // One summary per step, with all 16 attributes and sane relations.
    let summaries = events(&steps, "step.BATCH_SUMMARY");
    assert!(!summaries.is_empty());
    let mut step_ids = BTreeSet::new();
    for summary in &summaries {
        for field in SUMMARY_FIELDS {
            assert!(
                summary.attributes.contains_key(field),
                "{field} missing: {summary:?}"
            );
        }
        assert!(
            step_ids.insert(int(summary, "step.id")),
            "two summaries for one step"
        );
        assert_eq!(
            int(summary, "batch.prefill_tokens") + int(summary, "batch.decode_tokens"),
            int(summary, "batch.scheduled_tokens")
        );
        assert!(int(summary, "batch.scheduled_tokens") > 0);
        assert!(int(summary, "kv.blocks_free_gpu") <= int(summary, "kv.blocks_total_gpu"));
        let ratio = summary.attributes["kv.usage_gpu_ratio"]
            .as_double()
            .unwrap();
        assert!((0.0..=1.0).contains(&ratio), "{ratio}");
        assert!(int(summary, "step.ts_start_ns") <= int(summary, "step.ts_end_ns"));
        assert!(int(summary, "step.duration_us") >= 0);
        assert!(
            int(summary, "batch.num_prefill_reqs") + int(summary, "batch.num_decode_reqs")
                <= int(summary, "queue.running_depth")
        );
    }
    // Generated tokens: each request's 16 come from decode steps, or the step that ended its
    // prefill; the summaries count at least the decode ones.
    let decode_tokens: i64 = summaries
        .iter()
        .map(|s| int(s, "batch.decode_tokens"))
        .sum();
    assert!(decode_tokens >= (9 * 15) as i64, "{decode_tokens}");
    let finished: i64 = summaries.iter().map(|s| int(s, "batch.num_finished")).sum();
    assert_eq!(finished, 9);

    // step.id joins journey events: every step a journey was scheduled or produced its first
    // token in has its summary.
    let journey_steps: BTreeSet<i64> = spans
        .iter()
        .filter(|s| s.name == "llm_core")
        .flat_map(|s| s.events.iter())
        .filter(|e| e.name == "journey.SCHEDULED" || e.name == "journey.FIRST_TOKEN")
        .map(|e| int(e, "scheduler.step"))
        .collect();
    assert!(!journey_steps.is_empty());
    assert!(
        journey_steps.is_subset(&step_ids),
        "journey steps {journey_steps:?} without a summary (summaries: {step_ids:?})"
    );

    // Snapshots at subsample 1.0: one per scheduled request per step.
    let snapshots = events(&steps, "step.REQUEST_SNAPSHOT");
    assert!(!snapshots.is_empty());
    let mut per_step: HashMap<i64, i64> = HashMap::new();
    for snapshot in &snapshots {
        for field in SNAPSHOT_FIELDS {
            assert!(
                snapshot.attributes.contains_key(field),
                "{field} missing: {snapshot:?}"
            );
        }
        let id = snapshot.attributes["request.id"].as_str().unwrap();
        assert!(ids.iter().any(|i| i == id), "{id} is not one of ours");
        assert!(
            int(snapshot, "request.num_computed_tokens")
                <= int(snapshot, "request.num_prompt_tokens")
                    + int(snapshot, "request.num_output_tokens")
        );
        assert!(int(snapshot, "request.scheduled_tokens_this_step") > 0);
        assert!(int(snapshot, "kv.blocks_allocated_gpu") > 0);
        // Only the repeated prompt was served from the prefix cache.
        if id == again_id {
            assert_eq!(
                int(snapshot, "request.effective_prompt_len"),
                prompt_tokens - cached
            );
        } else {
            assert!(!snapshot
                .attributes
                .contains_key("request.effective_prompt_len"));
        }
        *per_step.entry(int(snapshot, "step.id")).or_default() += 1;
    }
    for summary in &summaries {
        let step = int(summary, "step.id");
        let scheduled =
            int(summary, "batch.num_prefill_reqs") + int(summary, "batch.num_decode_reqs");
        assert_eq!(
            per_step.get(&step).copied().unwrap_or(0),
            scheduled,
            "step {step}"
        );
    }
    assert!(server.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_snapshots_at_subsample_zero_and_an_idle_span_still_ships() {
    let receiver = Receiver::start(Transport::HttpProtobuf).await;
    let server = server(&receiver, "0.0", &[]);
    let prompt = json!({"prompt": "a shared prefix that is long enough to fill a block or two of cache", "max_tokens": 4});
    for _ in 0..2 {
        let response = reqwest::Client::new()
            .post(format!("{}/v1/completions", server.base_url))
            .json(&prompt)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    // No more load: the open span ends by the window timer (0.5 s), not by a new event.
    let spans = receiver
        .wait_for("an idle step span", WAIT, |spans| {
            !step_spans(spans).is_empty()
        })
        .await;
    let steps = step_spans(&spans);
    assert!(!events(&steps, "step.BATCH_SUMMARY").is_empty());
    assert!(events(&steps, "step.REQUEST_SNAPSHOT").is_empty());
    assert_eq!(
        steps[0].attr("rotation.end_reason"),
        Some(&Attr::Str("window".into())),
        "ended by the window timer"
    );
    assert!(server.terminate().success());
}
