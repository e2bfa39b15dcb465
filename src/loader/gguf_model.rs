//! A GGUF file as a model: hyper-parameters from `llama.*` / `qwen2.*` metadata, tokenizer
//! from `tokenizer.ggml.*`, weights dequantized to f32 on demand.

use std::path::{Path, PathBuf};

use super::gguf::{GgmlType, GgufError, GgufFile, MetaValue};
use super::LoadError;
use crate::model::cpu::quant::{BlockFormat, QuantMatrix};
use crate::model::{HostTensor, LlamaConfig, RopeStyle, WeightError, WeightSource};
use crate::tokenizer::GgufTokenizerSpec;

/// Architectures whose GGUF tensors we can run, with the RoPE pairing their converter wrote.
const SUPPORTED: [(&str, RopeStyle); 2] = [
    ("llama", RopeStyle::Interleaved),
    ("qwen2", RopeStyle::Half),
];

/// Reads the model's shape from the metadata.
pub fn config(file: &GgufFile, path: &Path) -> Result<LlamaConfig, LoadError> {
    let arch = file.get_str("general.architecture")?.to_string();
    let Some(&(_, rope_style)) = SUPPORTED.iter().find(|(name, _)| *name == arch) else {
        return Err(LoadError::UnsupportedArchitecture {
            path: path.to_path_buf(),
            architecture: arch,
        });
    };
    let key = |name: &str| format!("{arch}.{name}");
    let u32_or = |name: &str, default: Option<u32>| -> Result<u32, LoadError> {
        match (file.get(&key(name)), default) {
            (None, Some(default)) => Ok(default),
            _ => Ok(file.get_u32(&key(name))?),
        }
    };
    let hidden = u32_or("embedding_length", None)? as usize;
    let heads = u32_or("attention.head_count", None)? as usize;
    let kv_heads = u32_or("attention.head_count_kv", Some(heads as u32))? as usize;
    let head_dim = match file.get(&key("attention.key_length")) {
        Some(_) => file.get_u32(&key("attention.key_length"))? as usize,
        None => hidden / heads.max(1),
    };
    if file.get(&key("rope.dimension_count")).is_some() {
        let rope_dims = file.get_u32(&key("rope.dimension_count"))? as usize;
        if rope_dims != head_dim {
            return Err(LoadError::Config {
                path: path.to_path_buf(),
                reason: format!(
                    "partial rotary embeddings ({rope_dims} of {head_dim} dims) are not supported"
                ),
            });
        }
    }
    if let Some(MetaValue::String(kind)) = file.get(&key("rope.scaling.type")) {
        if kind != "none" {
            return Err(LoadError::Config {
                path: path.to_path_buf(),
                reason: format!("RoPE scaling `{kind}` is not supported"),
            });
        }
    }
    let embedding = file
        .tensor_info("token_embd.weight")
        .ok_or_else(|| LoadError::Weight {
            path: path.to_path_buf(),
            source: WeightError::Missing {
                name: "token_embd.weight".into(),
            },
        })?;
    let vocab_size = embedding.dims.get(1).copied().unwrap_or(0) as usize;
    let config = LlamaConfig {
        architecture: arch.clone(),
        vocab_size,
        hidden_size: hidden,
        intermediate_size: u32_or("feed_forward_length", None)? as usize,
        num_layers: u32_or("block_count", None)? as usize,
        num_heads: heads,
        num_kv_heads: kv_heads,
        head_dim,
        rms_norm_eps: match file.get(&key("attention.layer_norm_rms_epsilon")) {
            Some(_) => file.get_f32(&key("attention.layer_norm_rms_epsilon"))? as f64,
            None => 1e-5,
        },
        rope_theta: match file.get(&key("rope.freq_base")) {
            Some(_) => file.get_f32(&key("rope.freq_base"))? as f64,
            None => 10_000.0,
        },
        rope_style,
        max_position_embeddings: u32_or("context_length", None)? as usize,
        attention_bias: file.tensor_info("blk.0.attn_q.bias").is_some(),
        tie_word_embeddings: file.tensor_info("output.weight").is_none(),
    };
    config.validate().map_err(|reason| LoadError::Config {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    })?;
    Ok(config)
}

/// Reads what the tokenizer needs from the metadata.
pub fn tokenizer_spec(file: &GgufFile) -> Result<GgufTokenizerSpec, GgufError> {
    let optional_u32 = |key: &str| file.get(key).map(|_| file.get_u32(key)).transpose();
    Ok(GgufTokenizerSpec {
        model: file.get_str("tokenizer.ggml.model")?.to_string(),
        pre: file
            .get("tokenizer.ggml.pre")
            .map(|_| file.get_str("tokenizer.ggml.pre").map(str::to_string))
            .transpose()?,
        tokens: owned(file.get_str_array("tokenizer.ggml.tokens")?),
        token_types: file
            .get("tokenizer.ggml.token_type")
            .map(|_| file.get_i32_array("tokenizer.ggml.token_type"))
            .transpose()?,
        merges: match file.get("tokenizer.ggml.merges") {
            Some(_) => owned(file.get_str_array("tokenizer.ggml.merges")?),
            None => Vec::new(),
        },
        bos_token_id: optional_u32("tokenizer.ggml.bos_token_id")?,
        eos_token_id: optional_u32("tokenizer.ggml.eos_token_id")?,
        eot_token_id: optional_u32("tokenizer.ggml.eot_token_id")?,
        add_bos_token: file
            .get("tokenizer.ggml.add_bos_token")
            .map(|_| file.get_bool("tokenizer.ggml.add_bos_token"))
            .transpose()?,
        chat_template: file
            .get("tokenizer.chat_template")
            .map(|_| file.get_str("tokenizer.chat_template").map(str::to_string))
            .transpose()?,
    })
}

fn owned(strings: Vec<&str>) -> Vec<String> {
    strings.into_iter().map(str::to_string).collect()
}

/// Weights of a GGUF file, dequantized tensor by tensor as the model asks for them.
#[derive(Debug)]
pub struct GgufWeights {
    file: GgufFile,
    path: PathBuf,
}

impl GgufWeights {
    /// Wraps an opened file.
    pub fn new(file: GgufFile, path: PathBuf) -> Self {
        Self { file, path }
    }
}

impl WeightSource for GgufWeights {
    fn tensor(&mut self, name: &str) -> Result<Option<HostTensor>, WeightError> {
        let Some(info) = self.file.tensor_info(name) else {
            return Ok(None);
        };
        // GGUF lists the contiguous dimension first; PyTorch order is the reverse.
        let shape: Vec<usize> = info.dims.iter().rev().map(|&d| d as usize).collect();
        let data = self
            .file
            .dequantize(name)
            .map_err(|e| WeightError::Source {
                name: format!("{name} in {}", self.path.display()),
                source: Box::new(e),
            })?;
        self.file.release_tensor_pages(name);
        Ok(Some(HostTensor { shape, data }))
    }

    fn blocks(&mut self, name: &str) -> Result<Option<QuantMatrix>, WeightError> {
        let Some(info) = self.file.tensor_info(name) else {
            return Ok(None);
        };
        let format = match info.ggml_type {
            GgmlType::Q4_0 => BlockFormat::Q4_0,
            GgmlType::Q4_1 => BlockFormat::Q4_1,
            GgmlType::Q5_0 => BlockFormat::Q5_0,
            GgmlType::Q5_1 => BlockFormat::Q5_1,
            GgmlType::Q8_0 => BlockFormat::Q8_0,
            GgmlType::Q4_K => BlockFormat::Q4_K,
            GgmlType::Q5_K => BlockFormat::Q5_K,
            GgmlType::Q6_K => BlockFormat::Q6_K,
            GgmlType::F16 => BlockFormat::F16,
            GgmlType::BF16 => BlockFormat::BF16,
            _ => return Ok(None),
        };
        let &[cols, rows] = info.dims.as_slice() else {
            return Ok(None);
        };
        if !format.keeps_rows_of(cols as usize) {
            return Ok(None);
        }
        let source = |e: Box<dyn std::error::Error + Send + Sync>| WeightError::Source {
            name: format!("{name} in {}", self.path.display()),
            source: e,
        };
        let bytes = self
            .file
            .tensor_data(name)
            .map_err(|e| source(Box::new(e)))?;
        let matrix = QuantMatrix::new(format, bytes.to_vec(), rows as usize, cols as usize)
            .map_err(|e| source(Box::new(e)))?;
        self.file.release_tensor_pages(name);
        Ok(Some(matrix))
    }
}
