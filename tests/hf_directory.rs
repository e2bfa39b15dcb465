//! A Hugging Face model directory loads into the same model as the checkpoint it was
//! exported from: the tiny model written out as safetensors (rotate-half Q/K layout,
//! Hugging Face names, tokenizer files) gives the tiny model's logits.

use std::collections::HashMap;
use std::path::Path;

use burn::backend::Flex;
use burn::tensor::FloatDType;
use safetensors::tensor::{Dtype, TensorView};
use waypoint::loader::tiny::TinyWeights;
use waypoint::model::{
    ForwardBatch, KvCacheConfig, LogitsWanted, PagedKvCache, SequenceSlice, WeightSource,
};

/// GGUF-ordered (interleaved) Q/K rows to Hugging Face's rotate-half order, per head:
/// HF row `i` is GGUF row `2i`, HF row `i + head_dim/2` is GGUF row `2i + 1`.
fn to_rotate_half(data: &[f32], rows: usize, cols: usize, head_dim: usize) -> Vec<f32> {
    let mut out = vec![0.0; data.len()];
    let half = head_dim / 2;
    for r in 0..rows {
        let (head, d) = (r / head_dim, r % head_dim);
        let hf_row = head * head_dim + if d % 2 == 0 { d / 2 } else { half + d / 2 };
        out[hf_row * cols..(hf_row + 1) * cols].copy_from_slice(&data[r * cols..(r + 1) * cols]);
    }
    out
}

fn export_tiny(dir: &Path) {
    let files = waypoint::loader::open("tiny").unwrap();
    let c = files.config.clone();
    let mut weights = TinyWeights::new(c.clone());
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    let mut put = |hf: String, shape: Vec<usize>, data: Vec<f32>| {
        tensors.push((
            hf,
            shape,
            data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ));
    };
    let embd = weights.tensor("token_embd.weight").unwrap().unwrap();
    put("model.embed_tokens.weight".into(), embd.shape, embd.data);
    let norm = weights.tensor("output_norm.weight").unwrap().unwrap();
    put("model.norm.weight".into(), norm.shape, norm.data);
    for i in 0..c.num_layers {
        let parts = [
            ("attn_norm.weight", "input_layernorm.weight"),
            ("ffn_norm.weight", "post_attention_layernorm.weight"),
            ("attn_q.weight", "self_attn.q_proj.weight"),
            ("attn_k.weight", "self_attn.k_proj.weight"),
            ("attn_v.weight", "self_attn.v_proj.weight"),
            ("attn_q.bias", "self_attn.q_proj.bias"),
            ("attn_k.bias", "self_attn.k_proj.bias"),
            ("attn_v.bias", "self_attn.v_proj.bias"),
            ("attn_output.weight", "self_attn.o_proj.weight"),
            ("ffn_gate.weight", "mlp.gate_proj.weight"),
            ("ffn_up.weight", "mlp.up_proj.weight"),
            ("ffn_down.weight", "mlp.down_proj.weight"),
        ];
        for (ours, hf) in parts {
            let t = weights.tensor(&format!("blk.{i}.{ours}")).unwrap().unwrap();
            let rows = t.shape[0];
            let cols = t.shape.get(1).copied().unwrap_or(1);
            let data = if ours.starts_with("attn_q") || ours.starts_with("attn_k") {
                to_rotate_half(&t.data, rows, cols, c.head_dim)
            } else {
                t.data
            };
            put(format!("model.layers.{i}.{hf}"), t.shape, data);
        }
    }
    let views: HashMap<String, TensorView<'_>> = tensors
        .iter()
        .map(|(name, shape, bytes)| {
            (
                name.clone(),
                TensorView::new(Dtype::F32, shape.clone(), bytes).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
    let config = serde_json::json!({
        "architectures": ["Qwen2ForCausalLM"],
        "vocab_size": c.vocab_size,
        "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size,
        "num_hidden_layers": c.num_layers,
        "num_attention_heads": c.num_heads,
        "num_key_value_heads": c.num_kv_heads,
        "rms_norm_eps": c.rms_norm_eps,
        "rope_theta": c.rope_theta,
        "max_position_embeddings": c.max_position_embeddings,
        "tie_word_embeddings": true,
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    std::fs::write(
        dir.join("tokenizer.json"),
        files.tokenizer.to_hf_json().unwrap(),
    )
    .unwrap();
    let tokenizer_config = serde_json::json!({
        "bos_token": "<|bos|>", "eos_token": "<|eos|>", "add_bos_token": true,
        "chat_template": "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}",
    });
    std::fs::write(
        dir.join("tokenizer_config.json"),
        tokenizer_config.to_string(),
    )
    .unwrap();
}

fn logits(spec: &str, tokens: &[u32]) -> Vec<f32> {
    let files = waypoint::loader::open(spec).unwrap_or_else(|e| panic!("{spec}: {e}"));
    let (model, _, _) = files
        .load::<Flex>(&Default::default(), FloatDType::F32)
        .unwrap();
    let mut cache = PagedKvCache::new(
        KvCacheConfig::with_blocks(16, 2),
        model.config(),
        &Default::default(),
    );
    let batch = ForwardBatch {
        token_ids: tokens.to_vec(),
        sequences: vec![SequenceSlice {
            num_cached_tokens: 0,
            num_new_tokens: tokens.len(),
            block_table: vec![0, 1],
        }],
        logits: LogitsWanted::EveryPosition,
    };
    model.forward(&batch, &mut cache).unwrap().data
}

#[test]
fn a_hugging_face_export_of_the_tiny_model_gives_the_same_logits() {
    let dir = tempfile::tempdir().unwrap();
    export_tiny(dir.path());
    let tokens = [3u32, 77, 256, 12, 199, 40, 41, 42, 9, 1];
    let want = logits("tiny", &tokens);
    let got = logits(dir.path().to_str().unwrap(), &tokens);
    let worst = want
        .iter()
        .zip(&got)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(worst < 1e-4, "max abs diff {worst}");

    let files = waypoint::loader::open(dir.path().to_str().unwrap()).unwrap();
    assert_eq!(
        files.tokenizer.encode("héllo", true).unwrap(),
        waypoint::loader::open("tiny")
            .unwrap()
            .tokenizer
            .encode("héllo", true)
            .unwrap()
    );
}

#[test]
fn broken_directories_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let err = waypoint::loader::open(dir.path().to_str().unwrap())
        .unwrap_err()
        .to_string();
    assert!(err.contains("config.json"), "{err}");

    export_tiny(dir.path());
    std::fs::write(dir.path().join("config.json"), r#"{"architectures": ["GPT2LMHeadModel"], "vocab_size": 1, "hidden_size": 1, "intermediate_size": 1, "num_hidden_layers": 1, "num_attention_heads": 1}"#).unwrap();
    let err = waypoint::loader::open(dir.path().to_str().unwrap())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("unsupported architecture `GPT2LMHeadModel`"),
        "{err}"
    );

    export_tiny(dir.path());
    let weights = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() / 2]).unwrap();
    let err = waypoint::loader::open(dir.path().to_str().unwrap())
        .unwrap_err()
        .to_string();
    assert!(err.contains("model.safetensors"), "{err}");
}

#[test]
fn missing_and_corrupt_gguf_files_are_clear_errors() {
    let err = waypoint::loader::open("/nonexistent/model.gguf")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("/nonexistent/model.gguf") && err.contains("no such file"),
        "{err}"
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.gguf");
    std::fs::write(&path, b"GGUX\x03\x00\x00\x00garbage").unwrap();
    let err = waypoint::loader::open(path.to_str().unwrap())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("bad.gguf") && err.to_lowercase().contains("magic"),
        "{err}"
    );
}
