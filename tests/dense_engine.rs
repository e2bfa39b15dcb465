//! The engine, through its scheduler, produces the same tokens on the dense path that `cuda`
//! runs (burn ops, `slice_assign` cache writes; here on the CPU as `DenseCpu`) as on flex,
//! across a prefix-cache hit and preemptions.

use burn::backend::Flex;
use waypoint::engine::{EngineRequest, FinishedInfo, StreamEvent};
use waypoint::model::{DenseCpu, Llama, ModelBackend, PagedKvCache};
use waypoint::sampling::SamplingParams;

#[path = "common/tiny.rs"]
#[allow(dead_code)] // the flex-only `start` and the HTTP helper serve other test binaries
mod tiny;
use tiny::TinyEngine;

/// A shared prefix of three blocks, so later prompts that start with it can hit the cache.
const SHARED_PREFIX: [u32; 12] = [256, 11, 22, 33, 44, 55, 66, 77, 88, 99, 111, 122];

/// What one request produced.
#[derive(Debug)]
struct Outcome {
    token_ids: Vec<u32>,
    finished: FinishedInfo,
}

fn request(id: &str, prompt_ids: Vec<u32>, max_tokens: usize) -> EngineRequest {
    let params = SamplingParams {
        max_tokens,
        ignore_eos: true,
        ..SamplingParams::greedy()
    };
    EngineRequest::new(id.to_string(), prompt_ids, params)
}

async fn collect(mut stream: waypoint::engine::RequestStream) -> Outcome {
    let mut token_ids = Vec::new();
    while let Some(event) = stream.next().await {
        match event {
            StreamEvent::Delta { token_ids: new, .. } => token_ids.extend(new),
            StreamEvent::Finished(finished) => {
                return Outcome {
                    token_ids,
                    finished,
                }
            }
        }
    }
    panic!("the stream ended without a Finished event");
}

/// One request that fills the prefix cache, then three that start with its prompt and grow
/// to more slots together than the pool holds, so the scheduler must preempt.
async fn run_workload<B: ModelBackend>() -> Vec<Outcome>
where
    Llama<B>: Send,
    PagedKvCache<B>: Send,
{
    let engine = TinyEngine {
        num_blocks: 24,
        max_num_seqs: 64,
        max_waiting_requests: 100,
        max_model_len: Some(2048),
    }
    .start_on::<B>();
    let warm = engine
        .handle
        .submit(request("warm", SHARED_PREFIX.to_vec(), 4))
        .unwrap();
    let mut outcomes = vec![collect(warm).await];
    let streams: Vec<_> = (0..3u32)
        .map(|i| {
            let prompt = [&SHARED_PREFIX[..], &[10 + i, 20 + i]].concat();
            let id = format!("grow-{i}");
            engine.handle.submit(request(&id, prompt, 75)).unwrap()
        })
        .collect();
    for stream in streams {
        outcomes.push(collect(stream).await);
    }
    engine.shutdown();
    outcomes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dense_engine_with_preemption_and_prefix_hit_matches_flex() {
    let flex = run_workload::<Flex>().await;
    let dense = run_workload::<DenseCpu>().await;

    for run in [&flex, &dense] {
        // Three growing requests of up to 89 tokens in 96 slots: preemption is certain.
        let preemptions: u32 = run.iter().map(|o| o.finished.num_preemptions).sum();
        assert!(
            preemptions > 0,
            "the pool was meant to be too small: {run:?}"
        );
        assert!(
            run[1..]
                .iter()
                .any(|o| o.finished.cached_prompt_tokens >= SHARED_PREFIX.len() - 4),
            "no request found the shared prefix in the cache: {run:?}"
        );
        assert_eq!(run[0].token_ids.len(), 4);
        assert!(run[1..].iter().all(|o| o.token_ids.len() == 75));
    }
    for (f, d) in flex.iter().zip(&dense) {
        assert_eq!(f.token_ids, d.token_ids, "dense and flex disagree");
    }
}
