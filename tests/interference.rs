//! Interference attribution (`llm_core`'s `interference.*`, `docs/JOURNEY_TRACING.md`) on
//! scripted scenarios whose answers are known, read from the recorded journeys the real
//! engine (the tiny model) hands back with each finished request.

use std::sync::Arc;

use waypoint::engine::journey::{CoreEvent, JourneyMode, RecordedJourney, TailRetention};
use waypoint::engine::retention::KeepRules;
use waypoint::engine::{EngineHandle, EngineRequest, RequestStream, StreamEvent};
use waypoint::sampling::SamplingParams;

#[path = "common/tiny.rs"]
mod tiny;
use tiny::TinyEngine;

/// A recorded (tail-retention) request of `prompt` that generates exactly `max_tokens`.
fn submit(handle: &EngineHandle, id: &str, prompt: Vec<u32>, max_tokens: usize) -> RequestStream {
    let params = SamplingParams {
        max_tokens,
        ignore_eos: true,
        ..SamplingParams::greedy()
    };
    let request = EngineRequest {
        journey: JourneyMode::Recorded(Arc::new(TailRetention::new(KeepRules::NONE))),
        ..EngineRequest::new(id.to_string(), prompt, params)
    };
    handle.submit(request).unwrap()
}

/// Waits for the request's first output.
async fn first_delta(stream: &mut RequestStream) {
    match stream.next().await {
        Some(StreamEvent::Delta { .. }) => {}
        Some(StreamEvent::Finished(info)) => panic!("finished early: {info:?}"),
        None => panic!("the stream ended"),
    }
}

/// Reads the request to its end; returns its recorded journey.
async fn journey(mut stream: RequestStream) -> RecordedJourney {
    while let Some(event) = stream.next().await {
        if let StreamEvent::Finished(info) = event {
            assert_eq!(info.error, None);
            return *info
                .journey
                .expect("a recorded request hands back its journey");
        }
    }
    panic!("the stream ended without finishing");
}

fn events<'a>(journey: &'a RecordedJourney, kind: &str) -> Vec<&'a CoreEvent> {
    journey.events().iter().filter(|e| e.kind == kind).collect()
}

fn prompt(seed: u32, len: usize) -> Vec<u32> {
    (0..len as u32)
        .map(|i| 10 + (seed * 37 + i) % 200)
        .collect()
}

fn engine(num_blocks: usize, max_num_seqs: usize) -> waypoint::engine::RunningEngine {
    TinyEngine {
        num_blocks,
        max_num_seqs,
        max_waiting_requests: 100,
        max_model_len: Some(2048),
    }
    .start()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_prefill_arriving_while_a_request_decodes_is_charged_to_it() {
    let engine = engine(512, 8);
    // A decodes 300 tokens; B's 200-token prompt (one chunk: the budget is 256) arrives
    // once A has its first token, and generates 5.
    let mut a = submit(&engine.handle, "a", prompt(1, 4), 300);
    first_delta(&mut a).await;
    let b = submit(&engine.handle, "b", prompt(2, 200), 5);
    let b = journey(b).await;
    let a = journey(a).await;
    let (a_summary, b_summary) = (&a.summary().interference, &b.summary().interference);

    // A prompt that fits the budget is one step; each further token one more.
    assert_eq!(a_summary.steps_scheduled, 300);
    assert_eq!(b_summary.steps_scheduled, 5);
    // Both were admitted in the first step after they arrived (room for both).
    assert_eq!(a_summary.steps_waited, 0);
    assert_eq!(b_summary.steps_waited, 0);
    // A decoded beside B's whole prefill; B's steps held no one else's prompt.
    assert_eq!(a_summary.prefill_tokens_of_others, 200);
    assert_eq!(b_summary.prefill_tokens_of_others, 0);
    // A (still decoding: 300 tokens) was in every one of B's steps, one token each.
    assert_eq!(b_summary.mean_shared_requests(), 1.0);
    assert_eq!(b_summary.mean_shared_tokens(), 1.0);
    // A shared 5 of its 300 steps with B: 5 requests, and 200 + 4 tokens, over 300 steps.
    assert_eq!(a_summary.shared_requests, 5);
    assert_eq!(a_summary.shared_tokens, 204);
    assert!(a_summary.preemptions.is_empty() && b_summary.preemptions.is_empty());
    assert_eq!(a.summary().prefix_cache_hit_tokens, 0);
    for journey in [&a, &b] {
        let summary = journey.summary();
        assert!(summary.queue.is_some() && summary.prefill.is_some() && summary.decode.is_some());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steps_waited_in_the_queue_are_the_steps_between_arrival_and_admission() {
    // One sequence at a time: B waits for all of A.
    let engine = engine(512, 1);
    let mut a = submit(&engine.handle, "a", prompt(3, 8), 40);
    first_delta(&mut a).await;
    let b = submit(&engine.handle, "b", prompt(4, 8), 3);
    let (a, b) = (journey(a).await, journey(b).await);
    let interference = &b.summary().interference;
    let queued = events(&b, "QUEUED")[0].step;
    let scheduled = events(&b, "SCHEDULED")[0].step;
    // QUEUED carries the latest step when it arrived; it is admitted in `scheduled`.
    assert_eq!(interference.steps_waited, scheduled - queued - 1);
    assert!(interference.steps_waited >= 1, "B arrived while A decoded");
    // A held its blocks the whole time: a 8 + 40 token sequence in 4-token blocks of 512.
    assert!(interference.kv_usage_waiting_max > 0.0);
    assert!(interference.kv_usage_waiting_max <= 13.0 / 512.0 + 1e-6);
    assert!(interference.kv_usage_waiting_mean() <= interference.kv_usage_waiting_max);
    // Alone in every step, so it shared nothing.
    assert_eq!(interference.steps_scheduled, 3);
    assert_eq!(interference.mean_shared_requests(), 0.0);
    // B arrived after A was admitted: A never waited.
    assert_eq!(a.summary().interference.steps_waited, 0);
    assert!(b.summary().queue.unwrap() > a.summary().queue.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_preemption_is_described_with_its_step_resume_and_recomputed_tokens() {
    // Three requests growing to 85 tokens each in 96 token slots, submitted together:
    // preemption is certain.
    let engine = engine(24, 64);
    let streams: Vec<_> = (0..3)
        .map(|i| submit(&engine.handle, &format!("p{i}"), prompt(10 + i, 5), 80))
        .collect();
    let mut described = 0;
    for stream in streams {
        let journey = journey(stream).await;
        let preempted = events(&journey, "PREEMPTED");
        let resumed: Vec<_> = events(&journey, "SCHEDULED")
            .into_iter()
            .filter(|e| e.detail == Some("RESUME"))
            .collect();
        let preemptions = &journey.summary().interference.preemptions;
        assert_eq!(preemptions.len(), preempted.len().min(8));
        for (i, preemption) in preemptions.iter().enumerate() {
            described += 1;
            assert_eq!(preemption.step, preempted[i].step);
            assert_eq!(preemption.at, preempted[i].ts);
            // It had computed something, and lost all of it.
            assert!(preemption.tokens_lost > 0);
            let resume = resumed[i];
            let after = preemption.resumed_after.expect("every request finished");
            assert!((after - (resume.ts - preempted[i].ts)).abs() < 1e-9);
            // Recomputed: what was lost, less what the prefix cache still held on resume,
            // which is whole blocks of 4 tokens.
            let recomputed = preemption.tokens_recomputed.unwrap();
            assert!(recomputed <= preemption.tokens_lost);
            assert_eq!(
                (preemption.tokens_lost - recomputed) % 4,
                0,
                "{preemption:?}"
            );
        }
        // Preempted requests waited in the queue again after each preemption.
        if !preempted.is_empty() {
            assert!(journey.summary().interference.steps_waited >= preempted.len() as u64);
        }
    }
    assert!(described > 0, "the pool was meant to be too small");
}
