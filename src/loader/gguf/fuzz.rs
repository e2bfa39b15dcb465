//! A fuzz target for the GGUF reader: hostile headers and metadata must give an error,
//! never a panic or an allocation the file cannot back.
//!
//! proptest drives it (no nightly or cargo-fuzz needed), starting from a small valid llama
//! file and corrupting it: random bytes overwritten, 64-bit fields set to extremes (where
//! counts and lengths live), truncation, and the configuration keys set to any `u32`. Each
//! case runs the whole path from bytes to a model configuration and a tokenizer. `cargo test`
//! runs 256 cases of each; `PROPTEST_CASES=200000 cargo test --lib gguf::fuzz` runs a long
//! session (see `docs/BENCHMARKS.md` for what one found). Failures are shrunk and
//! printed; proptest keeps no corpus file unless a case fails.

use std::path::PathBuf;

use proptest::prelude::*;

use super::writer::GgufWriter;
use super::{GgufFile, MetaValue};
use crate::loader::gguf_model;
use crate::tokenizer::Tokenizer;

const F32: u32 = 0;

/// The configuration keys a llama file carries, with small valid values.
const CONFIG_KEYS: [(&str, u32); 7] = [
    ("llama.block_count", 1),
    ("llama.context_length", 64),
    ("llama.embedding_length", 8),
    ("llama.feed_forward_length", 16),
    ("llama.attention.head_count", 2),
    ("llama.attention.head_count_kv", 1),
    ("llama.rope.dimension_count", 4),
];

/// A small, valid llama GGUF whose config and tokenizer load; `config` overrides values.
fn llama_file(config: &[(&str, u32)]) -> Vec<u8> {
    let tokens: Vec<MetaValue> = ["a", "b", "ab", "<s>", "</s>"]
        .iter()
        .map(|t| MetaValue::String(t.to_string()))
        .collect();
    let mut writer = GgufWriter::new(3)
        .kv("general.architecture", MetaValue::String("llama".into()))
        .kv("tokenizer.ggml.model", MetaValue::String("gpt2".into()))
        .kv("tokenizer.ggml.pre", MetaValue::String("gpt2".into()))
        .kv("tokenizer.ggml.tokens", MetaValue::Array(tokens))
        .kv(
            "tokenizer.ggml.merges",
            MetaValue::Array(vec![MetaValue::String("a b".into())]),
        )
        .kv("tokenizer.ggml.bos_token_id", MetaValue::U32(3))
        .kv("tokenizer.ggml.eos_token_id", MetaValue::U32(4));
    for (key, value) in CONFIG_KEYS {
        let value = config
            .iter()
            .find(|(k, _)| *k == key)
            .map_or(value, |&(_, v)| v);
        writer = writer.kv(key, MetaValue::U32(value));
    }
    writer
        .tensor("token_embd.weight", &[8, 5], F32, vec![0; 8 * 5 * 4])
        .build()
}

/// Everything a server does with a GGUF before it reads weights. Errors are fine; panics
/// (which proptest catches and reports) are the findings.
fn read_all_the_way(bytes: Vec<u8>) {
    let path = PathBuf::from("/fuzz/model.gguf");
    let Ok(file) = GgufFile::from_bytes(path.clone(), bytes) else {
        return;
    };
    for tensor in file.tensors() {
        // Every tensor the header lists must lie inside the file.
        if let Ok(data) = file.tensor_data(&tensor.name) {
            assert_eq!(Some(data.len() as u64), tensor.byte_size());
        }
    }
    if let Ok(config) = gguf_model::config(&file, &path) {
        assert!(config.validate().is_ok());
        // Sizes computed from a valid config cannot overflow.
        let _ = config.num_parameters();
        let _ = config.kv_bytes_per_token(burn::tensor::FloatDType::BF16);
    }
    if let Ok(spec) = gguf_model::tokenizer_spec(&file) {
        let _ = Tokenizer::from_gguf_spec(&spec);
    }
}

/// Overwrites 8 bytes at `at` (wrapped into the file) with `value`.
fn splice_u64(bytes: &mut [u8], at: usize, value: u64) {
    if bytes.len() >= 8 {
        let at = at % (bytes.len() - 7);
        bytes[at..at + 8].copy_from_slice(&value.to_le_bytes());
    }
}

fn extreme_u64() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(u64::MAX),
        Just(u64::MAX / 2),
        Just(u32::MAX as u64),
        Just(1u64 << 40),
        Just(0),
        any::<u64>(),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig {
        // No corpus file in the repository: a failure prints its shrunk case.
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn corrupted_bytes_are_an_error_not_a_crash(
        flips in prop::collection::vec((any::<usize>(), any::<u8>()), 0..16),
        splices in prop::collection::vec((any::<usize>(), extreme_u64()), 0..4),
        truncate in prop::option::of(any::<usize>()),
    ) {
        let mut bytes = llama_file(&[]);
        for (at, value) in splices {
            splice_u64(&mut bytes, at, value);
        }
        let len = bytes.len();
        for (at, byte) in flips {
            bytes[at % len] = byte;
        }
        if let Some(keep) = truncate {
            bytes.truncate(keep % (len + 1));
        }
        read_all_the_way(bytes);
    }

    #[test]
    fn any_configuration_value_is_an_error_or_a_config_within_limits(
        values in prop::collection::vec(
            prop_oneof![Just(0u32), Just(1), Just(u32::MAX), Just(1 << 20), any::<u32>()],
            CONFIG_KEYS.len(),
        ),
    ) {
        let config: Vec<(&str, u32)> = CONFIG_KEYS
            .iter()
            .zip(&values)
            .map(|(&(key, _), &value)| (key, value))
            .collect();
        read_all_the_way(llama_file(&config));
    }
}

#[test]
fn the_base_file_loads() {
    let path = PathBuf::from("/fuzz/model.gguf");
    let file = GgufFile::from_bytes(path.clone(), llama_file(&[])).unwrap();
    let config = gguf_model::config(&file, &path).unwrap();
    assert_eq!((config.num_layers, config.vocab_size), (1, 5));
    let spec = gguf_model::tokenizer_spec(&file).unwrap();
    Tokenizer::from_gguf_spec(&spec).unwrap();
}

#[test]
fn a_four_billion_position_context_or_block_count_is_no_abort() {
    let path = PathBuf::from("/fuzz/model.gguf");
    // Positions: accepted as a claim; only what is served is allocated (`served_context`).
    let file = GgufFile::from_bytes(
        path.clone(),
        llama_file(&[("llama.context_length", u32::MAX)]),
    )
    .unwrap();
    let config = gguf_model::config(&file, &path).unwrap();
    let pool = crate::model::KvCacheConfig::with_blocks(16, 64);
    assert_eq!(
        crate::cli::served_context(config.max_position_embeddings, None, &pool),
        1024
    );
    // Layers: refused, naming the field and the limit.
    let file =
        GgufFile::from_bytes(path.clone(), llama_file(&[("llama.block_count", u32::MAX)])).unwrap();
    let err = gguf_model::config(&file, &path).unwrap_err().to_string();
    assert!(err.contains("num_layers") && err.contains("limit"), "{err}");
}
