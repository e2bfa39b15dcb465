//! Where the model's weights come from, independent of the file format.
//!
//! Every checkpoint format maps its names onto the GGUF names below, and hands over each
//! tensor as row-major f32 in PyTorch order (`[out_features, in_features]` for projections).
//!
//! | GGUF name (ours)             | Hugging Face name                                  | shape             |
//! |------------------------------|----------------------------------------------------|-------------------|
//! | `token_embd.weight`          | `model.embed_tokens.weight`                        | `[vocab, hidden]` |
//! | `blk.N.attn_norm.weight`     | `model.layers.N.input_layernorm.weight`            | `[hidden]`        |
//! | `blk.N.attn_q.weight`/`.bias`| `model.layers.N.self_attn.q_proj.weight`/`.bias`   | `[heads*hd, hidden]` |
//! | `blk.N.attn_k.weight`/`.bias`| `model.layers.N.self_attn.k_proj.weight`/`.bias`   | `[kv_heads*hd, hidden]` |
//! | `blk.N.attn_v.weight`/`.bias`| `model.layers.N.self_attn.v_proj.weight`/`.bias`   | `[kv_heads*hd, hidden]` |
//! | `blk.N.attn_output.weight`   | `model.layers.N.self_attn.o_proj.weight`           | `[hidden, heads*hd]` |
//! | `blk.N.ffn_norm.weight`      | `model.layers.N.post_attention_layernorm.weight`   | `[hidden]`        |
//! | `blk.N.ffn_gate.weight`      | `model.layers.N.mlp.gate_proj.weight`              | `[inter, hidden]` |
//! | `blk.N.ffn_up.weight`        | `model.layers.N.mlp.up_proj.weight`                | `[inter, hidden]` |
//! | `blk.N.ffn_down.weight`      | `model.layers.N.mlp.down_proj.weight`              | `[hidden, inter]` |
//! | `output_norm.weight`         | `model.norm.weight`                                | `[hidden]`        |
//! | `output.weight` (optional)   | `lm_head.weight` (optional: tied when absent)      | `[vocab, hidden]` |

/// A tensor in host memory, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    /// Dimensions, outermost first.
    pub shape: Vec<usize>,
    /// `shape.iter().product()` values.
    pub data: Vec<f32>,
}

/// Why a weight could not be had.
#[derive(Debug, thiserror::Error)]
pub enum WeightError {
    /// The checkpoint lacks a tensor the architecture needs.
    #[error("tensor `{name}` is missing")]
    Missing {
        /// GGUF-style name.
        name: String,
    },
    /// The tensor's shape does not match the configuration.
    #[error("tensor `{name}` has shape {found:?}, expected {expected:?}")]
    Shape {
        /// GGUF-style name.
        name: String,
        /// What the config implies.
        expected: Vec<usize>,
        /// What the file holds.
        found: Vec<usize>,
    },
    /// The backend cannot store or compute in the float type asked for.
    #[error("the {backend} backend cannot compute in {dtype:?}; use --dtype f32")]
    Dtype {
        /// What was asked for.
        dtype: burn::tensor::FloatDType,
        /// The backend's name.
        backend: String,
    },
    /// The file format's own error (corrupt data, unsupported type, ...).
    #[error("tensor `{name}`: {source}")]
    Source {
        /// GGUF-style name.
        name: String,
        /// The underlying error.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// A checkpoint that can produce tensors by their GGUF name.
pub trait WeightSource {
    /// The tensor called `name`, or `Ok(None)` when the checkpoint does not have it.
    fn tensor(&mut self, name: &str) -> Result<Option<HostTensor>, WeightError>;

    /// The tensor called `name`, checked against `expected`.
    fn require(&mut self, name: &str, expected: &[usize]) -> Result<HostTensor, WeightError> {
        let tensor = self.tensor(name)?.ok_or_else(|| WeightError::Missing {
            name: name.to_string(),
        })?;
        check_shape(name, &tensor, expected)?;
        Ok(tensor)
    }

    /// Like [`Self::require`] but absence is fine.
    fn optional(
        &mut self,
        name: &str,
        expected: &[usize],
    ) -> Result<Option<HostTensor>, WeightError> {
        match self.tensor(name)? {
            Some(tensor) => {
                check_shape(name, &tensor, expected)?;
                Ok(Some(tensor))
            }
            None => Ok(None),
        }
    }
}

fn check_shape(name: &str, tensor: &HostTensor, expected: &[usize]) -> Result<(), WeightError> {
    if tensor.shape != expected || tensor.data.len() != expected.iter().product::<usize>() {
        return Err(WeightError::Shape {
            name: name.to_string(),
            expected: expected.to_vec(),
            found: tensor.shape.clone(),
        });
    }
    Ok(())
}

impl HostTensor {
    /// The transpose of a 2-D tensor (`[rows, cols]` to `[cols, rows]`).
    pub fn transposed(&self) -> HostTensor {
        let (rows, cols) = (self.shape[0], self.shape[1]);
        let mut data = vec![0.0; self.data.len()];
        // Blocked so both sides stay in cache for large projections.
        const TILE: usize = 32;
        for r0 in (0..rows).step_by(TILE) {
            for c0 in (0..cols).step_by(TILE) {
                for r in r0..(r0 + TILE).min(rows) {
                    for c in c0..(c0 + TILE).min(cols) {
                        data[c * rows + r] = self.data[r * cols + c];
                    }
                }
            }
        }
        HostTensor {
            shape: vec![cols, rows],
            data,
        }
    }
}
