//! The paged, batched forward pass computes the same logits as each sequence run alone.

use burn::backend::Flex;
use waypoint::loader::tiny::{tiny_config, TinyWeights};
use waypoint::model::{
    DenseCpu, ForwardBatch, KvCacheConfig, Llama, LlamaConfig, LogitsWanted, ModelBackend,
    PagedKvCache, SequenceSlice,
};

type B = Flex;
const BLOCK: usize = 4;
const VOCAB: usize = 260;

fn tiny_model() -> (Llama<B>, LlamaConfig) {
    tiny_model_on::<B>()
}

fn tiny_model_on<Backend: ModelBackend>() -> (Llama<Backend>, LlamaConfig) {
    let config = tiny_config(VOCAB);
    let model = Llama::<Backend>::load(
        config.clone(),
        &mut TinyWeights::new(config.clone()),
        &Default::default(),
        burn::tensor::FloatDType::F32,
        waypoint::model::WeightPolicy::F32,
        &mut |_, _| {},
    )
    .expect("tiny model loads");
    (model, config)
}

fn tokens(seed: u32, len: usize) -> Vec<u32> {
    (0..len as u32)
        .map(|i| (seed * 31 + i * 17) % VOCAB as u32)
        .collect()
}

/// Logits of every position of `tokens`, computed in one pass on a fresh, contiguous cache.
fn solo<Backend: ModelBackend>(
    model: &Llama<Backend>,
    config: &LlamaConfig,
    tokens: &[u32],
) -> Vec<Vec<f32>> {
    let blocks = tokens.len().div_ceil(BLOCK);
    let mut cache = PagedKvCache::new(
        KvCacheConfig::with_blocks(BLOCK, blocks),
        config,
        &Default::default(),
    );
    let batch = ForwardBatch {
        token_ids: tokens.to_vec(),
        sequences: vec![SequenceSlice {
            num_cached_tokens: 0,
            num_new_tokens: tokens.len(),
            block_table: (0..blocks as u32).collect(),
        }],
        logits: LogitsWanted::EveryPosition,
    };
    let logits = model.forward(&batch, &mut cache).unwrap();
    (0..tokens.len()).map(|i| logits.row(i).to_vec()).collect()
}

fn assert_close(got: &[f32], want: &[f32], what: &str) {
    let worst = got
        .iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(worst <= 1e-4, "{what}: max abs diff {worst}");
}

struct Seq {
    tokens: Vec<u32>,
    blocks: Vec<u32>,
}

#[test]
fn mixed_prefill_and_decode_batch_matches_each_sequence_alone() {
    check_mixed_batch::<Flex>();
}

/// The same on the dense path that `cuda` runs (burn ops, `slice_assign` cache writes).
#[test]
fn dense_mixed_prefill_and_decode_batch_matches_each_sequence_alone() {
    check_mixed_batch::<DenseCpu>();
}

fn check_mixed_batch<Backend: ModelBackend>() {
    let (model, config) = tiny_model_on::<Backend>();
    let seqs = [
        Seq {
            tokens: tokens(1, 37),
            blocks: vec![17, 3, 29, 8, 40, 1, 22, 35, 12, 5],
        },
        Seq {
            tokens: tokens(2, 9),
            blocks: vec![9, 30, 2],
        },
        Seq {
            tokens: tokens(3, 23),
            blocks: vec![44, 6, 19, 27, 0, 13],
        },
        Seq {
            tokens: tokens(4, 14),
            blocks: vec![38, 11, 25, 4],
        },
    ];
    let want: Vec<_> = seqs
        .iter()
        .map(|s| solo(&model, &config, &s.tokens))
        .collect();

    let mut cache = PagedKvCache::new(
        KvCacheConfig::with_blocks(BLOCK, 48),
        &config,
        &Default::default(),
    );
    // Each step: (sequence, tokens already cached, tokens this step). Steps mix prefill
    // chunks that end mid-block with single-token decodes at different positions.
    let steps: [&[(usize, usize, usize)]; 4] = [
        &[(0, 0, 10), (1, 0, 8), (3, 0, 13)],
        &[(1, 8, 1), (0, 10, 20), (3, 13, 1), (2, 0, 5)],
        &[(2, 5, 17), (0, 30, 6), (1, 9, 0)],
        &[(0, 36, 1), (2, 22, 1)],
    ];
    for (step, plan) in steps.iter().enumerate() {
        let mut batch = ForwardBatch {
            logits: LogitsWanted::EveryPosition,
            ..Default::default()
        };
        let mut expected = Vec::new();
        for &(i, cached, new) in plan.iter().filter(|p| p.2 > 0) {
            batch
                .token_ids
                .extend_from_slice(&seqs[i].tokens[cached..cached + new]);
            batch.sequences.push(SequenceSlice {
                num_cached_tokens: cached,
                num_new_tokens: new,
                block_table: seqs[i].blocks.clone(),
            });
            expected.extend((cached..cached + new).map(|p| (i, p)));
        }
        let logits = model.forward(&batch, &mut cache).unwrap();
        assert_eq!(logits.num_rows(), expected.len());
        for (row, &(i, p)) in expected.iter().enumerate() {
            assert_close(
                logits.row(row),
                &want[i][p],
                &format!("step {step} seq {i} pos {p}"),
            );
        }

        // The default output is the last row of each sequence.
        batch.logits = LogitsWanted::LastPerSequence;
    }
}

#[test]
fn last_per_sequence_returns_each_sequences_final_row() {
    let (model, config) = tiny_model();
    let a = tokens(5, 11);
    let b = tokens(6, 3);
    let mut cache = PagedKvCache::new(
        KvCacheConfig::with_blocks(BLOCK, 8),
        &config,
        &Default::default(),
    );
    let batch = ForwardBatch {
        token_ids: [a.clone(), b.clone()].concat(),
        sequences: vec![
            SequenceSlice {
                num_cached_tokens: 0,
                num_new_tokens: 11,
                block_table: vec![7, 1, 5],
            },
            SequenceSlice {
                num_cached_tokens: 0,
                num_new_tokens: 3,
                block_table: vec![2],
            },
        ],
        logits: LogitsWanted::LastPerSequence,
    };
    let logits = model.forward(&batch, &mut cache).unwrap();
    assert_eq!(logits.num_rows(), 2);
    assert_close(logits.row(0), &solo(&model, &config, &a)[10], "seq a");
    assert_close(logits.row(1), &solo(&model, &config, &b)[2], "seq b");
}

#[test]
fn bad_batches_are_errors_not_panics() {
    let (model, config) = tiny_model();
    let mut cache = PagedKvCache::new(
        KvCacheConfig::with_blocks(BLOCK, 4),
        &config,
        &Default::default(),
    );
    let seq = |cached, new, table: Vec<u32>| SequenceSlice {
        num_cached_tokens: cached,
        num_new_tokens: new,
        block_table: table,
    };
    let cases = [
        (
            "count mismatch",
            ForwardBatch {
                token_ids: vec![1, 2],
                sequences: vec![seq(0, 3, vec![0])],
                ..Default::default()
            },
        ),
        (
            "token out of vocab",
            ForwardBatch {
                token_ids: vec![VOCAB as u32],
                sequences: vec![seq(0, 1, vec![0])],
                ..Default::default()
            },
        ),
        (
            "short block table",
            ForwardBatch {
                token_ids: vec![1; 5],
                sequences: vec![seq(0, 5, vec![0])],
                ..Default::default()
            },
        ),
        (
            "block outside pool",
            ForwardBatch {
                token_ids: vec![1],
                sequences: vec![seq(0, 1, vec![4])],
                ..Default::default()
            },
        ),
        (
            "empty sequence",
            ForwardBatch {
                token_ids: vec![],
                sequences: vec![seq(0, 0, vec![0])],
                ..Default::default()
            },
        ),
    ];
    for (what, batch) in cases {
        assert!(
            model.forward(&batch, &mut cache).is_err(),
            "{what} must be rejected"
        );
    }
}
