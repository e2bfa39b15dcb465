//! A built-in tiny model: a few small layers with weights from a fixed seed, so tests and demos
//! run with no download. Its output is deterministic nonsense.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::model::{HostTensor, LlamaConfig, RopeStyle, WeightError, WeightSource};

/// Seed of every tiny weight.
const SEED: u64 = 0x5741_5950_4f49_4e54; // "WAYPOINT"

/// The tiny model's shape; `vocab_size` is the tiny tokenizer's.
pub fn tiny_config(vocab_size: usize) -> LlamaConfig {
    LlamaConfig {
        architecture: "tiny".to_string(),
        vocab_size,
        hidden_size: 64,
        intermediate_size: 128,
        num_layers: 2,
        num_heads: 4,
        num_kv_heads: 2,
        head_dim: 16,
        rms_norm_eps: 1e-5,
        rope_theta: 10_000.0,
        rope_style: RopeStyle::Interleaved,
        max_position_embeddings: 2048,
        attention_bias: true,
        tie_word_embeddings: true,
    }
}

/// Generates each weight from the seed and the tensor's name, so the values do not depend on
/// the order in which the model asks for them.
#[derive(Debug)]
pub struct TinyWeights {
    config: LlamaConfig,
}

impl TinyWeights {
    /// Weights for `config` (normally [`tiny_config`]).
    pub fn new(config: LlamaConfig) -> Self {
        Self { config }
    }
}

fn name_seed(name: &str) -> u64 {
    // FNV-1a: stable across Rust versions, unlike `DefaultHasher`.
    name.bytes().fold(0xcbf2_9ce4_8422_2325u64 ^ SEED, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

impl WeightSource for TinyWeights {
    fn tensor(&mut self, name: &str) -> Result<Option<HostTensor>, WeightError> {
        let c = &self.config;
        let (hidden, inter) = (c.hidden_size, c.intermediate_size);
        let (q_dim, kv_dim) = (c.num_heads * c.head_dim, c.kv_dim());
        let layer_part = name
            .strip_prefix("blk.")
            .and_then(|rest| rest.split_once('.'))
            .map(|(_, part)| part);
        let shape: Vec<usize> = match (name, layer_part) {
            ("token_embd.weight", _) => vec![c.vocab_size, hidden],
            ("output_norm.weight", _) => vec![hidden],
            (_, Some("attn_norm.weight" | "ffn_norm.weight")) => vec![hidden],
            (_, Some("attn_q.weight")) => vec![q_dim, hidden],
            (_, Some("attn_k.weight" | "attn_v.weight")) => vec![kv_dim, hidden],
            (_, Some("attn_q.bias")) => vec![q_dim],
            (_, Some("attn_k.bias" | "attn_v.bias")) => vec![kv_dim],
            (_, Some("attn_output.weight")) => vec![hidden, q_dim],
            (_, Some("ffn_gate.weight" | "ffn_up.weight")) => vec![inter, hidden],
            (_, Some("ffn_down.weight")) => vec![hidden, inter],
            _ => return Ok(None),
        };
        let mut rng = StdRng::seed_from_u64(name_seed(name));
        let is_norm = name.ends_with("norm.weight");
        let fan_in = if shape.len() == 2 { shape[1] } else { 1 };
        // Embeddings of unit scale and projections scaled by fan-in keep activations O(1),
        // so the logits are varied enough for sampling tests to mean something.
        let scale = if name == "token_embd.weight" {
            1.0
        } else if shape.len() == 1 {
            0.1
        } else {
            (3.0 / fan_in as f32).sqrt()
        };
        let len = shape.iter().product();
        let data = (0..len)
            .map(|_| {
                let noise = rng.random_range(-scale..scale);
                if is_norm {
                    1.0 + noise
                } else {
                    noise
                }
            })
            .collect();
        Ok(Some(HostTensor { shape, data }))
    }
}
