//! A Hugging Face model directory: `config.json`, `model.safetensors` or a sharded
//! `model.safetensors.index.json`, `tokenizer.json`, `tokenizer_config.json`.
//!
//! Hugging Face checkpoints use rotate-half RoPE, which [`RopeStyle::Half`] applies directly,
//! so Q/K rows are used as stored.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use serde::Deserialize;

use super::LoadError;
use crate::model::cpu::quant::{BlockFormat, QuantMatrix};
use crate::model::{HostTensor, LlamaConfig, RopeStyle, WeightError, WeightSource};

/// Architectures (`config.json` `architectures[0]`) that are Llama-shaped.
const SUPPORTED: [&str; 3] = ["LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM"];

#[derive(Debug, Deserialize)]
struct HfConfig {
    #[serde(default)]
    architectures: Vec<String>,
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    #[serde(default = "default_eps")]
    rms_norm_eps: f64,
    #[serde(default = "default_theta")]
    rope_theta: f64,
    rope_scaling: Option<serde_json::Value>,
    #[serde(default = "default_context")]
    max_position_embeddings: usize,
    #[serde(default)]
    tie_word_embeddings: bool,
    attention_bias: Option<bool>,
}

fn default_eps() -> f64 {
    1e-6
}
fn default_theta() -> f64 {
    10_000.0
}
fn default_context() -> usize {
    2048
}

fn config_error(path: &Path, reason: impl Into<String>) -> LoadError {
    LoadError::Config {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn read(path: &Path) -> Result<Vec<u8>, LoadError> {
    std::fs::read(path).map_err(|source| LoadError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads `config.json`.
pub fn config(dir: &Path) -> Result<LlamaConfig, LoadError> {
    let path = dir.join("config.json");
    let hf: HfConfig =
        serde_json::from_slice(&read(&path)?).map_err(|e| config_error(&path, e.to_string()))?;
    let arch = hf.architectures.first().cloned().unwrap_or_default();
    if !SUPPORTED.contains(&arch.as_str()) {
        return Err(LoadError::UnsupportedArchitecture {
            path,
            architecture: arch,
        });
    }
    if hf.rope_scaling.as_ref().is_some_and(|v| !v.is_null()) {
        return Err(config_error(&path, "rope_scaling is not supported"));
    }
    let is_qwen2 = arch == "Qwen2ForCausalLM";
    let config = LlamaConfig {
        architecture: arch,
        vocab_size: hf.vocab_size,
        hidden_size: hf.hidden_size,
        intermediate_size: hf.intermediate_size,
        num_layers: hf.num_hidden_layers,
        num_heads: hf.num_attention_heads,
        num_kv_heads: hf.num_key_value_heads.unwrap_or(hf.num_attention_heads),
        head_dim: hf
            .head_dim
            .unwrap_or(hf.hidden_size / hf.num_attention_heads.max(1)),
        rms_norm_eps: hf.rms_norm_eps,
        rope_theta: hf.rope_theta,
        rope_style: RopeStyle::Half,
        max_position_embeddings: hf.max_position_embeddings,
        attention_bias: hf.attention_bias.unwrap_or(is_qwen2),
        tie_word_embeddings: hf.tie_word_embeddings,
    };
    config
        .validate()
        .map_err(|reason| config_error(&path, reason.to_string()))?;
    Ok(config)
}

/// Maps our (GGUF) tensor names onto Hugging Face's.
fn hf_name(name: &str) -> Option<String> {
    let fixed = match name {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(fixed) = fixed {
        return Some(fixed.to_string());
    }
    let rest = name.strip_prefix("blk.")?;
    let (layer, part) = rest.split_once('.')?;
    let part = match part {
        "attn_norm.weight" => "input_layernorm.weight",
        "ffn_norm.weight" => "post_attention_layernorm.weight",
        "attn_q.weight" => "self_attn.q_proj.weight",
        "attn_k.weight" => "self_attn.k_proj.weight",
        "attn_v.weight" => "self_attn.v_proj.weight",
        "attn_q.bias" => "self_attn.q_proj.bias",
        "attn_k.bias" => "self_attn.k_proj.bias",
        "attn_v.bias" => "self_attn.v_proj.bias",
        "attn_output.weight" => "self_attn.o_proj.weight",
        "ffn_gate.weight" => "mlp.gate_proj.weight",
        "ffn_up.weight" => "mlp.up_proj.weight",
        "ffn_down.weight" => "mlp.down_proj.weight",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{part}"))
}

#[derive(Debug, Deserialize)]
struct ShardIndex {
    weight_map: BTreeMap<String, String>,
}

/// Memory-mapped safetensors shards.
#[derive(Debug)]
pub struct SafetensorsWeights {
    shards: Vec<(PathBuf, Mmap)>,
    /// Hugging Face tensor name to shard index.
    shard_of: HashMap<String, usize>,
}

impl SafetensorsWeights {
    /// Opens `model.safetensors`, or every shard named by `model.safetensors.index.json`.
    pub fn open(dir: &Path) -> Result<Self, LoadError> {
        let index_path = dir.join("model.safetensors.index.json");
        let files: Vec<PathBuf> = if index_path.exists() {
            let index: ShardIndex = serde_json::from_slice(&read(&index_path)?)
                .map_err(|e| config_error(&index_path, e.to_string()))?;
            let mut files: Vec<String> = index.weight_map.into_values().collect();
            files.sort();
            files.dedup();
            files.into_iter().map(|f| dir.join(f)).collect()
        } else {
            vec![dir.join("model.safetensors")]
        };
        let mut shards = Vec::new();
        let mut shard_of = HashMap::new();
        for path in files {
            let file = File::open(&path).map_err(|source| LoadError::Io {
                path: path.clone(),
                source,
            })?;
            // SAFETY: the mapping is read-only; a checkpoint modified while being served is
            // outside what we guard against (as with every mmap-based loader).
            let map = unsafe { Mmap::map(&file) }.map_err(|source| LoadError::Io {
                path: path.clone(),
                source,
            })?;
            let tensors = SafeTensors::deserialize(&map)
                .map_err(|e| config_error(&path, format!("not a valid safetensors file: {e}")))?;
            for name in tensors.names() {
                shard_of.insert(name.to_string(), shards.len());
            }
            shards.push((path, map));
        }
        Ok(Self { shards, shard_of })
    }
}

impl SafetensorsWeights {
    /// Runs `read` on the tensor called `name` (a GGUF name), with an error maker naming it;
    /// `Ok(None)` when the checkpoint does not have it.
    fn with_view<T>(
        &self,
        name: &str,
        read: impl FnOnce(&TensorView<'_>, &dyn Fn(String) -> WeightError) -> Result<T, WeightError>,
    ) -> Result<Option<T>, WeightError> {
        let Some(hf) = hf_name(name) else {
            return Ok(None);
        };
        let Some(&shard) = self.shard_of.get(&hf) else {
            return Ok(None);
        };
        let (path, map) = &self.shards[shard];
        let source_error = |reason: String| WeightError::Source {
            name: format!("{hf} in {}", path.display()),
            source: reason.into(),
        };
        let tensors = SafeTensors::deserialize(map).map_err(|e| source_error(e.to_string()))?;
        let view = tensors
            .tensor(&hf)
            .map_err(|e| source_error(e.to_string()))?;
        read(&view, &source_error).map(Some)
    }
}

impl WeightSource for SafetensorsWeights {
    /// F16 and BF16 projections are kept as they are (rows of whole 32-value runs); other
    /// types are expanded.
    fn blocks(&mut self, name: &str) -> Result<Option<QuantMatrix>, WeightError> {
        let kept = self.with_view(name, |view, source_error| {
            let format = match view.dtype() {
                Dtype::F16 => BlockFormat::F16,
                Dtype::BF16 => BlockFormat::BF16,
                _ => return Ok(None),
            };
            let &[rows, cols] = view.shape() else {
                return Ok(None);
            };
            if !format.keeps_rows_of(cols) {
                return Ok(None);
            }
            QuantMatrix::new(format, view.data().to_vec(), rows, cols)
                .map(Some)
                .map_err(|e| source_error(e.to_string()))
        })?;
        Ok(kept.flatten())
    }

    fn tensor(&mut self, name: &str) -> Result<Option<HostTensor>, WeightError> {
        self.with_view(name, |view, source_error| read_f32(view, source_error))
    }
}

/// A tensor's values in f32.
fn read_f32(
    view: &TensorView<'_>,
    source_error: &dyn Fn(String) -> WeightError,
) -> Result<HostTensor, WeightError> {
    let bytes = view.data();
    let data: Vec<f32> = match view.dtype() {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        other => return Err(source_error(format!("unsupported dtype {other:?}"))),
    };
    Ok(HostTensor {
        shape: view.shape().to_vec(),
        data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_float_projections_are_kept_as_they_are() {
        let dir = tempfile::tempdir().unwrap();
        let halves = |n: usize| -> Vec<u8> {
            (0..n)
                .flat_map(|i| half::f16::from_f32(i as f32 / 8.0 - 2.0).to_le_bytes())
                .collect()
        };
        let (q, k) = (halves(2 * 64), halves(2 * 30));
        let views = [
            ("model.layers.0.self_attn.q_proj.weight", vec![2, 64], &q),
            // A width that is not whole 32-value runs is expanded instead.
            ("model.layers.0.self_attn.k_proj.weight", vec![2, 30], &k),
        ]
        .map(|(name, shape, bytes)| (name, TensorView::new(Dtype::F16, shape, bytes).unwrap()));
        safetensors::serialize_to_file(views, None, &dir.path().join("model.safetensors")).unwrap();
        let mut weights = SafetensorsWeights::open(dir.path()).unwrap();
        let kept = weights.blocks("blk.0.attn_q.weight").unwrap().unwrap();
        assert_eq!(kept.format(), BlockFormat::F16);
        assert_eq!((kept.rows(), kept.cols()), (2, 64));
        let expanded = weights.tensor("blk.0.attn_q.weight").unwrap().unwrap();
        assert_eq!(kept.dequantize(), expanded.data);
        assert!(weights.blocks("blk.0.attn_k.weight").unwrap().is_none());
        assert!(weights.blocks("blk.0.attn_v.weight").unwrap().is_none());
    }

    #[test]
    fn names_map_onto_hugging_face() {
        assert_eq!(
            hf_name("token_embd.weight").unwrap(),
            "model.embed_tokens.weight"
        );
        assert_eq!(
            hf_name("blk.12.ffn_down.weight").unwrap(),
            "model.layers.12.mlp.down_proj.weight"
        );
        assert_eq!(
            hf_name("blk.0.attn_k.bias").unwrap(),
            "model.layers.0.self_attn.k_proj.bias"
        );
        assert!(hf_name("blk.0.unknown").is_none());
    }
}
