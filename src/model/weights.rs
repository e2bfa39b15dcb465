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

use super::cpu::quant::QuantMatrix;

/// A tensor in host memory, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    /// Dimensions, outermost first.
    pub shape: Vec<usize>,
    /// `shape.iter().product()` values.
    pub data: Vec<f32>,
}

/// A projection's weight as it is kept: the f32 expansion, the checkpoint's quantized blocks,
/// or both (see [`WeightPolicy`]).
#[derive(Clone, Debug)]
pub enum ProjectionWeight {
    /// Row-major f32 `[out_features, in_features]`.
    F32(HostTensor),
    /// The checkpoint's blocks.
    Blocks {
        /// Rows of `in_features / 32` blocks.
        matrix: QuantMatrix,
        /// Whether their f32 expansion is kept beside them, for steps of many rows.
        keep_f32: bool,
    },
}

impl ProjectionWeight {
    /// `[out_features, in_features]`.
    pub fn shape(&self) -> [usize; 2] {
        match self {
            ProjectionWeight::F32(t) => [t.shape[0], t.shape[1]],
            ProjectionWeight::Blocks { matrix, .. } => [matrix.rows(), matrix.cols()],
        }
    }

    /// What it takes in memory once packed, with `element_bytes` per float element.
    pub fn stored_bytes(&self, element_bytes: usize) -> usize {
        let [rows, cols] = self.shape();
        match self {
            ProjectionWeight::F32(_) => rows * cols * element_bytes,
            ProjectionWeight::Blocks { matrix, keep_f32 } => {
                matrix.num_bytes() + usize::from(*keep_f32) * rows * cols * element_bytes
            }
        }
    }

    /// The f32 expansion (the same values the checkpoint's f32 reader gives).
    pub fn into_f32(self) -> HostTensor {
        match self {
            ProjectionWeight::F32(t) => t,
            ProjectionWeight::Blocks { matrix, .. } => expand(&matrix),
        }
    }

    /// The parts stacked by rows (q and k, gate and up): still blocks when every part is blocks
    /// of one format kept alike, f32 otherwise.
    pub fn concat_rows(parts: Vec<ProjectionWeight>) -> ProjectionWeight {
        let keep_f32 = match &parts[0] {
            ProjectionWeight::Blocks { keep_f32, .. } => *keep_f32,
            ProjectionWeight::F32(_) => true,
        };
        let blocks: Option<Vec<QuantMatrix>> = parts
            .iter()
            .map(|p| match p {
                ProjectionWeight::Blocks {
                    matrix,
                    keep_f32: k,
                } if *k == keep_f32 => Some(matrix.clone()),
                _ => None,
            })
            .collect();
        if let Some(matrix) = blocks.and_then(QuantMatrix::concat_rows) {
            return ProjectionWeight::Blocks { matrix, keep_f32 };
        }
        let parts: Vec<HostTensor> = parts.into_iter().map(Self::into_f32).collect();
        let cols = parts[0].shape[1];
        let rows = parts.iter().map(|p| p.shape[0]).sum();
        ProjectionWeight::F32(HostTensor {
            shape: vec![rows, cols],
            data: parts.into_iter().flat_map(|p| p.data).collect(),
        })
    }
}

/// The f32 expansion of `matrix`, row-major.
fn expand(matrix: &QuantMatrix) -> HostTensor {
    HostTensor {
        shape: vec![matrix.rows(), matrix.cols()],
        data: matrix.dequantize(),
    }
}

/// How projections stored in quantized blocks (or F16/BF16) are kept (`--weights`). Measured
/// in `docs/BENCHMARKS.md`: the blocks beat f32 on one-row steps (one-stream decode, where
/// reading the weights is the cost) and come within about a tenth of it on many rows
/// (batches, prefill), where they are expanded panel by panel. The default, `Native`, holds
/// about the file's size; `Auto` adds the f32 copy for the fastest batches.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WeightPolicy {
    /// Every projection in f32.
    F32,
    /// The blocks only: the least memory (about the file's size) and the fastest one-row
    /// steps; batches about a tenth slower than f32.
    #[default]
    Native,
    /// The blocks for one-row steps and their f32 expansion for the rest: the fastest at
    /// every batch size, for the f32 copy's memory on top of the blocks'.
    Auto,
}

impl WeightPolicy {
    /// How a projection the checkpoint stores as blocks is kept.
    fn keep(self, matrix: QuantMatrix) -> ProjectionWeight {
        match self {
            WeightPolicy::F32 => ProjectionWeight::F32(expand(&matrix)),
            WeightPolicy::Native => ProjectionWeight::Blocks {
                matrix,
                keep_f32: false,
            },
            WeightPolicy::Auto => ProjectionWeight::Blocks {
                matrix,
                keep_f32: true,
            },
        }
    }
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

    /// The tensor called `name` as quantized blocks, when the checkpoint stores it in a type
    /// [`QuantMatrix`] reads; `Ok(None)` otherwise (and by default).
    fn blocks(&mut self, _name: &str) -> Result<Option<QuantMatrix>, WeightError> {
        Ok(None)
    }

    /// The projection called `name`, kept as `policy` says where the checkpoint has blocks, else
    /// f32; checked against `expected`.
    fn projection(
        &mut self,
        name: &str,
        expected: [usize; 2],
        policy: WeightPolicy,
    ) -> Result<ProjectionWeight, WeightError> {
        let Some(blocks) = self.blocks(name)? else {
            return self.require(name, &expected).map(ProjectionWeight::F32);
        };
        if [blocks.rows(), blocks.cols()] != expected {
            return Err(WeightError::Shape {
                name: name.to_string(),
                expected: expected.to_vec(),
                found: vec![blocks.rows(), blocks.cols()],
            });
        }
        Ok(policy.keep(blocks))
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
