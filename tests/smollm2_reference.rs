//! SmolLM2-135M-Instruct (Q4_1 GGUF) against a peer implementation's outputs
//! (`../shared/reference`, Hugging Face transformers in f32 from the same file).

mod common;

use std::sync::OnceLock;

use burn::backend::Flex;
use burn::tensor::FloatDType;
use waypoint::generate::generate;
use waypoint::model::{
    dense_half_cpu_device, DenseCpu, DenseHalfCpu, ForwardBatch, KvCacheConfig, Llama,
    LogitsWanted, ModelBackend, PagedKvCache, SequenceSlice, WeightPolicy,
};
use waypoint::sampling::SamplingParams;
use waypoint::tokenizer::{ChatMessage, Tokenizer};

use common::{ids, reference_file, smollm2_path};

/// How close a run must come to the reference (transformers in f32).
#[derive(Clone, Copy, Debug)]
struct Tolerance {
    /// How far a logit of the reference's top-5 may be from it.
    logit: f32,
    /// Below this top-1/top-2 margin of the reference, the top-1 may differ, and greedy
    /// decoding may take the other branch from there on.
    margin: f32,
}

/// Two correct f32 implementations differ by summation order only.
const F32: Tolerance = Tolerance {
    logit: 0.02,
    margin: 0.05,
};

/// f16 keeps 11 significant bits (a relative rounding of 2^-11); over 30 layers and a logit of
/// magnitude ~20 that adds up to about 0.1. Measured on the dense backend: worst 0.14, median
/// 0.02 over 85 positions. Where the reference's margin is below that, the top-1 may flip, and
/// greedy text may follow the other branch from there.
const F16: Tolerance = Tolerance {
    logit: 0.25,
    margin: 0.25,
};

/// bf16 keeps 8 significant bits, 8x coarser than f16, so 8x its tolerance. Measured: worst
/// 0.90, median 0.15 over 85 positions (greedy text matched the reference in full on all three
/// prompts, but with margins of 0.2 to 2 that is luck, and the test does not count on it).
const BF16: Tolerance = Tolerance {
    logit: 2.0,
    margin: 2.0,
};

/// The prompts (indices into the reference's cases) the dense CPU backends run. They are burn's
/// unfused ops, several times slower than flex, so CI runs the two shortest completions plus
/// one long prompt rather than all six: together they cover a plain-text and a chat-template
/// prompt, a 24-token prefill, and decoding past a 16-token block boundary.
const DENSE_CASES: [usize; 3] = [0, 3, 4];

struct Loaded<B: ModelBackend> {
    model: Llama<B>,
    /// Shared, as `generate` takes it (its output processor keeps a reference).
    tokenizer: std::sync::Arc<Tokenizer>,
}

fn load<B: ModelBackend>(device: &B::Device, dtype: FloatDType) -> Option<Loaded<B>> {
    load_keeping::<B>(device, dtype, WeightPolicy::default())
}

/// [`load`], with the projections `weights` says kept as the file's quantized blocks.
fn load_keeping<B: ModelBackend>(
    device: &B::Device,
    dtype: FloatDType,
    weights: WeightPolicy,
) -> Option<Loaded<B>> {
    let path = smollm2_path()?;
    let mut files = waypoint::loader::open(path.to_str()?).expect("SmolLM2 opens");
    files.weight_policy = weights;
    let (model, tokenizer, _) = files.load::<B>(device, dtype).expect("SmolLM2 loads");
    assert_eq!(
        model.dtype(),
        dtype,
        "the backend computes in what was asked"
    );
    Some(Loaded {
        model,
        tokenizer: std::sync::Arc::new(tokenizer),
    })
}

fn smollm2() -> Option<&'static Loaded<Flex>> {
    static MODEL: OnceLock<Option<Loaded<Flex>>> = OnceLock::new();
    MODEL
        .get_or_init(|| load(&Default::default(), FloatDType::F32))
        .as_ref()
}

/// SmolLM2 on flex with `--weights auto`: the file's blocks for one-row steps, their f32
/// expansion for the rest. (The default, [`smollm2`], reads every projection from the blocks.)
fn auto_weights_smollm2() -> Option<&'static Loaded<Flex>> {
    static MODEL: OnceLock<Option<Loaded<Flex>>> = OnceLock::new();
    MODEL
        .get_or_init(|| load_keeping(&Default::default(), FloatDType::F32, WeightPolicy::Auto))
        .as_ref()
}

/// SmolLM2 on the dense path that `cuda` runs.
fn dense_smollm2() -> Option<&'static Loaded<DenseCpu>> {
    static MODEL: OnceLock<Option<Loaded<DenseCpu>>> = OnceLock::new();
    MODEL
        .get_or_init(|| load(&Default::default(), FloatDType::F32))
        .as_ref()
}

/// SmolLM2 on the dense path in half precision (`DenseHalfCpu`: burn's ops on flex).
fn dense_half_smollm2(dtype: FloatDType) -> Option<&'static Loaded<DenseHalfCpu>> {
    static F16: OnceLock<Option<Loaded<DenseHalfCpu>>> = OnceLock::new();
    static BF16: OnceLock<Option<Loaded<DenseHalfCpu>>> = OnceLock::new();
    let model = match dtype {
        FloatDType::F16 => &F16,
        FloatDType::BF16 => &BF16,
        other => panic!("{other:?} is not a half-precision type"),
    };
    model
        .get_or_init(|| load(&dense_half_cpu_device(), dtype))
        .as_ref()
}

/// SmolLM2 on burn-cubecl over Vulkan (Mesa's lavapipe on a machine without a GPU): the
/// CubeCL kernels cuda runs, compiled for another target. f32 and f16 (lavapipe has no bf16
/// matmul).
#[cfg(feature = "vulkan")]
fn vulkan_smollm2(dtype: FloatDType) -> Option<&'static Loaded<burn::backend::Vulkan>> {
    static F32: OnceLock<Option<Loaded<burn::backend::Vulkan>>> = OnceLock::new();
    static F16: OnceLock<Option<Loaded<burn::backend::Vulkan>>> = OnceLock::new();
    let model = match dtype {
        FloatDType::F32 => &F32,
        FloatDType::F16 => &F16,
        other => panic!("no vulkan reference test runs in {other:?}"),
    };
    model
        .get_or_init(|| load(&Default::default(), dtype))
        .as_ref()
}

#[cfg(feature = "vulkan")]
#[test]
fn dense_vulkan_reference_teacher_forced_logits() {
    let (Some(loaded), Some(cases)) = (vulkan_smollm2(FloatDType::F32), dense_cases()) else {
        return;
    };
    check_teacher_forced_logits(loaded, &cases, F32);
}

#[cfg(feature = "vulkan")]
#[test]
fn dense_vulkan_reference_greedy_generation() {
    let (Some(loaded), Some(cases)) = (vulkan_smollm2(FloatDType::F32), dense_cases()) else {
        return;
    };
    check_greedy_generation(loaded, &cases, F32);
}

#[cfg(feature = "vulkan")]
#[test]
fn dense_vulkan_f16_reference_teacher_forced_logits() {
    let (Some(loaded), Some(cases)) = (vulkan_smollm2(FloatDType::F16), dense_cases()) else {
        return;
    };
    check_teacher_forced_logits(loaded, &cases, F16);
}

#[cfg(feature = "vulkan")]
#[test]
fn dense_vulkan_f16_reference_greedy_generation() {
    let (Some(loaded), Some(cases)) = (vulkan_smollm2(FloatDType::F16), dense_cases()) else {
        return;
    };
    check_greedy_generation(loaded, &cases, F16);
}

/// The GPU named by `WAYPOINT_TEST_DEVICE` (`cuda` or `cuda:N`, default `cuda`).
#[cfg(feature = "cuda")]
fn cuda_device() -> burn::backend::cuda::CudaDevice {
    let name = std::env::var("WAYPOINT_TEST_DEVICE").unwrap_or_else(|_| "cuda".into());
    match name.parse::<waypoint::cli::Device>() {
        Ok(waypoint::cli::Device::Cuda(index)) => burn::backend::cuda::CudaDevice::new(index),
        _ => panic!("WAYPOINT_TEST_DEVICE must be cuda or cuda:N, not {name:?}"),
    }
}

/// SmolLM2 on the GPU in `dtype`.
#[cfg(feature = "cuda")]
fn cuda_smollm2_in(dtype: FloatDType) -> Option<&'static Loaded<burn::backend::Cuda>> {
    static F32: OnceLock<Option<Loaded<burn::backend::Cuda>>> = OnceLock::new();
    static BF16: OnceLock<Option<Loaded<burn::backend::Cuda>>> = OnceLock::new();
    let model = match dtype {
        FloatDType::F32 => &F32,
        FloatDType::BF16 => &BF16,
        other => panic!("no cuda reference test runs in {other:?}"),
    };
    model.get_or_init(|| load(&cuda_device(), dtype)).as_ref()
}

/// SmolLM2 on the GPU, in f32.
#[cfg(feature = "cuda")]
fn cuda_smollm2() -> Option<&'static Loaded<burn::backend::Cuda>> {
    cuda_smollm2_in(FloatDType::F32)
}

fn dense_cases() -> Option<Vec<serde_json::Value>> {
    let cases = greedy_cases()?;
    Some(DENSE_CASES.iter().map(|&i| cases[i].clone()).collect())
}

fn cache<B: ModelBackend>(model: &Llama<B>, tokens: usize) -> PagedKvCache<B> {
    PagedKvCache::new(
        KvCacheConfig::with_blocks(16, tokens.div_ceil(16) + 1).stored_as(model.dtype()),
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
    check_teacher_forced_logits(loaded, &cases, F32);
}

/// `--weights auto` serves prefill from the f32 expansion, held to the same tolerance.
#[test]
fn auto_weights_teacher_forced_logits_match_the_reference() {
    let (Some(loaded), Some(cases)) = (auto_weights_smollm2(), greedy_cases()) else {
        return;
    };
    check_teacher_forced_logits(loaded, &cases, F32);
}

/// One token per step: decode steps are one row per projection, which the blocks' integer
/// kernel serves (activations split into `i8` planes), not the expansion to f32. The
/// quantized kernels compute what the f32 expansion gives up to f32-sized rounding, so they
/// are held to the f32 tolerance, on every prompt.
#[test]
fn decode_step_logits_match_the_reference() {
    let (Some(loaded), Some(cases)) = (smollm2(), greedy_cases()) else {
        return;
    };
    check_teacher_forced_logits_in(loaded, &cases, F32, Steps::OneTokenEach);
}

#[test]
fn auto_weights_greedy_generation_reproduces_the_reference() {
    let (Some(loaded), Some(cases)) = (auto_weights_smollm2(), greedy_cases()) else {
        return;
    };
    check_greedy_generation(loaded, &cases, F32);
}

#[test]
fn dense_reference_teacher_forced_logits() {
    let (Some(loaded), Some(cases)) = (dense_smollm2(), dense_cases()) else {
        return;
    };
    check_teacher_forced_logits(loaded, &cases, F32);
}

#[test]
fn dense_f16_reference_teacher_forced_logits() {
    let (Some(loaded), Some(cases)) = (dense_half_smollm2(FloatDType::F16), dense_cases()) else {
        return;
    };
    check_teacher_forced_logits(loaded, &cases, F16);
}

#[test]
fn dense_bf16_reference_teacher_forced_logits() {
    let (Some(loaded), Some(cases)) = (dense_half_smollm2(FloatDType::BF16), dense_cases()) else {
        return;
    };
    check_teacher_forced_logits(loaded, &cases, BF16);
}

/// Run on a GPU by `scripts/gpu-check.sh`; ignored elsewhere, since it needs one.
#[cfg(feature = "cuda")]
#[test]
#[ignore = "needs an NVIDIA GPU: scripts/gpu-check.sh runs it"]
fn cuda_reference_teacher_forced_logits() {
    let (Some(loaded), Some(cases)) = (cuda_smollm2(), greedy_cases()) else {
        return;
    };
    check_teacher_forced_logits(loaded, &cases, F32);
}

/// Top-5 logits within `tolerance` at every position of prompt + reference completion, and
/// the same top-1 wherever the reference's margin is clear.
/// How a teacher-forced sequence goes through the model.
#[derive(Clone, Copy)]
enum Steps {
    /// One forward over every token (a prefill: many rows per projection).
    Prefill,
    /// One token per forward (decode steps: one row per projection).
    OneTokenEach,
}

/// The logits after each of `tokens`, fed as `steps` says.
fn logits_by_position<B: ModelBackend>(
    model: &Llama<B>,
    tokens: &[u32],
    steps: Steps,
) -> Vec<Vec<f32>> {
    let mut cache = cache(model, tokens.len());
    let block_table: Vec<u32> = (0..cache.config().num_blocks as u32).collect();
    let mut forward = |start: usize, count: usize, logits| {
        let batch = ForwardBatch {
            token_ids: tokens[start..start + count].to_vec(),
            sequences: vec![SequenceSlice {
                num_cached_tokens: start,
                num_new_tokens: count,
                block_table: block_table.clone(),
            }],
            logits,
        };
        let logits = model.forward(&batch, &mut cache).expect("forward");
        (0..logits.data.len() / logits.vocab_size)
            .map(|r| logits.row(r).to_vec())
            .collect::<Vec<_>>()
    };
    match steps {
        Steps::Prefill => forward(0, tokens.len(), LogitsWanted::EveryPosition),
        Steps::OneTokenEach => (0..tokens.len())
            .flat_map(|i| forward(i, 1, LogitsWanted::LastPerSequence))
            .collect(),
    }
}

fn check_teacher_forced_logits<B: ModelBackend>(
    loaded: &Loaded<B>,
    cases: &[serde_json::Value],
    tolerance: Tolerance,
) {
    check_teacher_forced_logits_in(loaded, cases, tolerance, Steps::Prefill)
}

fn check_teacher_forced_logits_in<B: ModelBackend>(
    loaded: &Loaded<B>,
    cases: &[serde_json::Value],
    tolerance: Tolerance,
    steps: Steps,
) {
    for case in cases {
        let prompt = ids(&case["prompt_ids"]);
        let greedy = ids(&case["greedy_ids"]);
        let tokens = [prompt.clone(), greedy].concat();
        let rows = logits_by_position(&loaded.model, &tokens, steps);
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
            let row = &rows[pos];
            for (&id, &want) in top_ids.iter().zip(&top_logits) {
                let got = row[id as usize];
                assert!(
                    (got - want).abs() <= tolerance.logit,
                    "{:?} pos {pos} token {id}: logit {got}, reference {want}",
                    case["prompt"]
                );
            }
            if top_logits[0] - top_logits[1] >= tolerance.margin {
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
    check_greedy_generation(loaded, &cases, F32);
}

#[test]
fn dense_reference_greedy_generation() {
    let (Some(loaded), Some(cases)) = (dense_smollm2(), dense_cases()) else {
        return;
    };
    check_greedy_generation(loaded, &cases, F32);
}

#[test]
fn dense_f16_reference_greedy_generation() {
    let (Some(loaded), Some(cases)) = (dense_half_smollm2(FloatDType::F16), dense_cases()) else {
        return;
    };
    check_greedy_generation(loaded, &cases, F16);
}

#[test]
fn dense_bf16_reference_greedy_generation() {
    let (Some(loaded), Some(cases)) = (dense_half_smollm2(FloatDType::BF16), dense_cases()) else {
        return;
    };
    check_greedy_generation(loaded, &cases, BF16);
}

/// Run on a GPU by `scripts/gpu-check.sh`; ignored elsewhere, since it needs one.
#[cfg(feature = "cuda")]
#[test]
#[ignore = "needs an NVIDIA GPU: scripts/gpu-check.sh runs it"]
fn cuda_reference_greedy_generation() {
    let (Some(loaded), Some(cases)) = (cuda_smollm2(), greedy_cases()) else {
        return;
    };
    check_greedy_generation(loaded, &cases, F32);
}

/// bf16, `--dtype auto` on cuda; run by `scripts/gpu-check.sh`.
#[cfg(feature = "cuda")]
#[test]
#[ignore = "needs an NVIDIA GPU: scripts/gpu-check.sh runs it"]
fn cuda_bf16_reference_greedy_generation() {
    let (Some(loaded), Some(cases)) = (cuda_smollm2_in(FloatDType::BF16), greedy_cases()) else {
        return;
    };
    check_greedy_generation(loaded, &cases, BF16);
}

/// bf16, `--dtype auto` on cuda; run by `scripts/gpu-check.sh`.
#[cfg(feature = "cuda")]
#[test]
#[ignore = "needs an NVIDIA GPU: scripts/gpu-check.sh runs it"]
fn cuda_bf16_reference_teacher_forced_logits() {
    let (Some(loaded), Some(cases)) = (cuda_smollm2_in(FloatDType::BF16), greedy_cases()) else {
        return;
    };
    check_teacher_forced_logits(loaded, &cases, BF16);
}

/// Greedy decoding reproduces the reference's tokens up to its first near-tie.
fn check_greedy_generation<B: ModelBackend>(
    loaded: &Loaded<B>,
    cases: &[serde_json::Value],
    tolerance: Tolerance,
) {
    for case in cases {
        let prompt = ids(&case["prompt_ids"]);
        let want = ids(&case["greedy_ids"]);
        let steps = case["steps"].as_array().unwrap();
        // Positions before the first near-tie must agree exactly.
        let agree = steps
            .iter()
            .position(|s| {
                let l = s["top5_logits"].as_array().unwrap();
                (l[0].as_f64().unwrap() - l[1].as_f64().unwrap()) < tolerance.margin as f64
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
