//! SmolLM2-135M-Instruct (Q4_1 GGUF) against a peer implementation's outputs
//! (`../shared/reference`, Hugging Face transformers in f32 from the same file).

mod common;

use std::sync::OnceLock;

use burn::backend::Flex;
use waypoint::generate::generate;
use waypoint::model::{
    DenseCpu, ForwardBatch, KvCacheConfig, Llama, LogitsWanted, ModelBackend, PagedKvCache,
    SequenceSlice,
};
use waypoint::sampling::SamplingParams;
use waypoint::tokenizer::{ChatMessage, Tokenizer};

use common::{ids, reference_file, smollm2_path};

/// Below this top-1/top-2 margin two correct f32 implementations may pick differently.
const MARGIN: f32 = 0.05;
/// How far our logits may be from the reference's top-5.
const LOGIT_TOLERANCE: f32 = 0.02;

/// The prompts (indices into the reference's cases) the dense CPU backend runs. It is burn's
/// unfused ops on one core, several times slower than flex, so CI runs the two shortest
/// completions plus one long prompt rather than all six: together they cover a plain-text and
/// a chat-template prompt, a 24-token prefill, and decoding past a 16-token block boundary.
const DENSE_CASES: [usize; 3] = [0, 3, 4];

struct Loaded<B: ModelBackend> {
    model: Llama<B>,
    /// Shared, as `generate` takes it (its output processor keeps a reference).
    tokenizer: std::sync::Arc<Tokenizer>,
}

fn load<B: ModelBackend>() -> Option<Loaded<B>> {
    let path = smollm2_path()?;
    let files = waypoint::loader::open(path.to_str()?).expect("SmolLM2 opens");
    let (model, tokenizer, _) = files.load::<B>(&Default::default()).expect("SmolLM2 loads");
    Some(Loaded {
        model,
        tokenizer: std::sync::Arc::new(tokenizer),
    })
}

fn smollm2() -> Option<&'static Loaded<Flex>> {
    static MODEL: OnceLock<Option<Loaded<Flex>>> = OnceLock::new();
    MODEL.get_or_init(load).as_ref()
}

/// SmolLM2 on the dense path that `cuda` runs.
fn dense_smollm2() -> Option<&'static Loaded<DenseCpu>> {
    static MODEL: OnceLock<Option<Loaded<DenseCpu>>> = OnceLock::new();
    MODEL.get_or_init(load).as_ref()
}

/// SmolLM2 on the GPU named by `WAYPOINT_TEST_DEVICE` (`cuda` or `cuda:N`, default `cuda`).
#[cfg(feature = "cuda")]
fn cuda_smollm2() -> Option<&'static Loaded<burn::backend::Cuda>> {
    static MODEL: OnceLock<Option<Loaded<burn::backend::Cuda>>> = OnceLock::new();
    MODEL
        .get_or_init(|| {
            let name = std::env::var("WAYPOINT_TEST_DEVICE").unwrap_or_else(|_| "cuda".into());
            let index = match name.parse::<waypoint::cli::Device>() {
                Ok(waypoint::cli::Device::Cuda(index)) => index,
                _ => panic!("WAYPOINT_TEST_DEVICE must be cuda or cuda:N, not {name:?}"),
            };
            let device = burn::backend::cuda::CudaDevice::new(index);
            let path = smollm2_path()?;
            let files = waypoint::loader::open(path.to_str()?).expect("SmolLM2 opens");
            let (model, tokenizer, _) = files.load(&device).expect("SmolLM2 loads");
            Some(Loaded {
                model,
                tokenizer: std::sync::Arc::new(tokenizer),
            })
        })
        .as_ref()
}

fn dense_cases() -> Option<Vec<serde_json::Value>> {
    let cases = greedy_cases()?;
    Some(DENSE_CASES.iter().map(|&i| cases[i].clone()).collect())
}

fn cache<B: ModelBackend>(model: &Llama<B>, tokens: usize) -> PagedKvCache<B> {
    PagedKvCache::new(
        KvCacheConfig::with_blocks(16, tokens.div_ceil(16) + 1),
        model.config(),
        model.device(),
    )
}

fn greedy_cases() -> Option<Vec<serde_json::Value>> {
    let reference = reference_file("smollm2-135m-instruct-q4_1.hf-greedy.json")?;
    Some(reference["cases"].as_array().expect("cases").clone())
}

#[test]
fn teacher_forced_logits_match_the_reference() {
    let (Some(loaded), Some(cases)) = (smollm2(), greedy_cases()) else {
        return;
    };
    check_teacher_forced_logits(loaded, &cases);
}

#[test]
fn dense_reference_teacher_forced_logits() {
    let (Some(loaded), Some(cases)) = (dense_smollm2(), dense_cases()) else {
        return;
    };
    check_teacher_forced_logits(loaded, &cases);
}

/// Run on a GPU by `scripts/gpu-check.sh`; ignored elsewhere, since it needs one.
#[cfg(feature = "cuda")]
#[test]
#[ignore = "needs an NVIDIA GPU: scripts/gpu-check.sh runs it"]
fn cuda_reference_teacher_forced_logits() {
    let (Some(loaded), Some(cases)) = (cuda_smollm2(), greedy_cases()) else {
        return;
    };
    check_teacher_forced_logits(loaded, &cases);
}

/// Top-5 logits within [`LOGIT_TOLERANCE`] at every position of prompt + reference
/// completion, and the same top-1 wherever the reference's margin is clear.
fn check_teacher_forced_logits<B: ModelBackend>(loaded: &Loaded<B>, cases: &[serde_json::Value]) {
    for case in cases {
        let prompt = ids(&case["prompt_ids"]);
        let greedy = ids(&case["greedy_ids"]);
        let tokens = [prompt.clone(), greedy].concat();
        let mut cache = cache(&loaded.model, tokens.len());
        let batch = ForwardBatch {
            token_ids: tokens.clone(),
            sequences: vec![SequenceSlice {
                num_cached_tokens: 0,
                num_new_tokens: tokens.len(),
                block_table: (0..cache.config().num_blocks as u32).collect(),
            }],
            logits: LogitsWanted::EveryPosition,
        };
        let logits = loaded.model.forward(&batch, &mut cache).expect("forward");
        let mut checked = 0;
        for step in case["steps"].as_array().unwrap() {
            let pos = step["pos"].as_u64().unwrap() as usize;
            let top_ids = ids(&step["top5_ids"]);
            let top_logits: Vec<f32> = step["top5_logits"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
                .collect();
            let row = logits.row(pos);
            for (&id, &want) in top_ids.iter().zip(&top_logits) {
                let got = row[id as usize];
                assert!(
                    (got - want).abs() <= LOGIT_TOLERANCE,
                    "{:?} pos {pos} token {id}: logit {got}, reference {want}",
                    case["prompt"]
                );
            }
            if top_logits[0] - top_logits[1] >= MARGIN {
                let argmax = row
                    .iter()
                    .enumerate()
                    .max_by(|a, b| a.1.total_cmp(b.1))
                    .map(|(i, _)| i as u32)
                    .unwrap();
                assert_eq!(
                    argmax, top_ids[0],
                    "{:?} pos {pos}: top-1 differs",
                    case["prompt"]
                );
            }
            checked += 1;
        }
        assert!(checked > 0);
    }
}

#[test]
fn greedy_generation_reproduces_the_reference() {
    let (Some(loaded), Some(cases)) = (smollm2(), greedy_cases()) else {
        return;
    };
    check_greedy_generation(loaded, &cases);
}

#[test]
fn dense_reference_greedy_generation() {
    let (Some(loaded), Some(cases)) = (dense_smollm2(), dense_cases()) else {
        return;
    };
    check_greedy_generation(loaded, &cases);
}

/// Run on a GPU by `scripts/gpu-check.sh`; ignored elsewhere, since it needs one.
#[cfg(feature = "cuda")]
#[test]
#[ignore = "needs an NVIDIA GPU: scripts/gpu-check.sh runs it"]
fn cuda_reference_greedy_generation() {
    let (Some(loaded), Some(cases)) = (cuda_smollm2(), greedy_cases()) else {
        return;
    };
    check_greedy_generation(loaded, &cases);
}

/// Greedy decoding reproduces the reference's tokens up to its first near-tie.
fn check_greedy_generation<B: ModelBackend>(loaded: &Loaded<B>, cases: &[serde_json::Value]) {
    for case in cases {
        let prompt = ids(&case["prompt_ids"]);
        let want = ids(&case["greedy_ids"]);
        let steps = case["steps"].as_array().unwrap();
        // Positions before the first near-tie must agree exactly.
        let agree = steps
            .iter()
            .position(|s| {
                let l = s["top5_logits"].as_array().unwrap();
                (l[0].as_f64().unwrap() - l[1].as_f64().unwrap()) < MARGIN as f64
            })
            .unwrap_or(want.len());
        let params = SamplingParams {
            max_tokens: want.len(),
            ..SamplingParams::greedy()
        };
        let mut cache = cache(&loaded.model, prompt.len() + want.len());
        let generation = generate(
            &loaded.model,
            &loaded.tokenizer,
            &mut cache,
            &prompt,
            &params,
            |_| {},
        )
        .expect("generate");
        let n = agree.min(want.len());
        assert_eq!(
            &generation.token_ids[..n.min(generation.token_ids.len())],
            &want[..n.min(generation.token_ids.len())],
            "{:?}",
            case["prompt"]
        );
        assert!(
            generation.token_ids.len() >= n,
            "{:?}: stopped after {} tokens",
            case["prompt"],
            generation.token_ids.len()
        );
        if agree >= want.len() {
            // No near-tie at all: the text (cut at EOS, as a server returns it) must match too.
            assert_eq!(
                generation.text,
                case["expected_text_until_eos"].as_str().unwrap(),
                "{:?}",
                case["prompt"]
            );
        }
    }
}

#[test]
fn tokenizer_matches_the_reference() {
    let (Some(loaded), Some(reference)) = (smollm2(), reference_file("smollm2-tokenizer.hf.json"))
    else {
        return;
    };
    for case in reference["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        assert_eq!(
            loaded.tokenizer.encode(text, false).unwrap(),
            ids(&case["ids"]),
            "{text:?}"
        );
    }
    let example = &reference["meta"]["chat_template_example"];
    let messages: Vec<ChatMessage> = serde_json::from_value(example["messages"].clone()).unwrap();
    let rendered = loaded
        .tokenizer
        .chat_template()
        .expect("SmolLM2 has a chat template")
        .render(
            &messages,
            example["add_generation_prompt"].as_bool().unwrap(),
        )
        .unwrap();
    assert_eq!(rendered, example["rendered"].as_str().unwrap());
}
