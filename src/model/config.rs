//! Hyper-parameters of a Llama-family decoder, independent of the checkpoint format.

/// How rotary position embeddings pair up the dimensions of a head.
///
/// GGUF llama checkpoints store Q/K rows permuted for adjacent pairs (`Interleaved`);
/// Hugging Face checkpoints and GGUF qwen2 use rotate-half (`Half`). We apply whichever the
/// checkpoint was written for instead of permuting weights at load time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeStyle {
    /// Dimensions `(2i, 2i+1)` rotate together.
    Interleaved,
    /// Dimensions `(i, i + head_dim/2)` rotate together.
    Half,
}

/// The shape of a Llama-family model.
#[derive(Clone, Debug, PartialEq)]
pub struct LlamaConfig {
    /// Architecture name as the checkpoint gives it (`llama`, `qwen2`, `tiny`).
    pub architecture: String,
    /// Rows of the embedding table and of the output head.
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the SwiGLU hidden layer.
    pub intermediate_size: usize,
    /// Number of decoder blocks.
    pub num_layers: usize,
    /// Query heads.
    pub num_heads: usize,
    /// Key/value heads (grouped-query attention when fewer than `num_heads`).
    pub num_kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// Epsilon of every RMSNorm.
    pub rms_norm_eps: f64,
    /// RoPE frequency base.
    pub rope_theta: f64,
    /// RoPE pairing convention of the checkpoint.
    pub rope_style: RopeStyle,
    /// Longest sequence (prompt + output) the model was trained for.
    pub max_position_embeddings: usize,
    /// Whether q/k/v projections carry a bias (Qwen2).
    pub attention_bias: bool,
    /// Whether the output head reuses the embedding table.
    pub tie_word_embeddings: bool,
}

/// Most vocabulary entries a checkpoint may declare (largest released: about 256k).
pub const MAX_VOCAB_SIZE: usize = 1 << 22;
/// Widest residual stream (the SwiGLU layer may be eight times wider).
pub const MAX_WIDTH: usize = 1 << 16;
/// Most decoder blocks.
pub const MAX_LAYERS: usize = 1 << 10;
/// Most attention heads.
pub const MAX_HEADS: usize = 1 << 10;
/// Widest attention head.
pub const MAX_HEAD_DIM: usize = 1 << 10;
/// Most positions a checkpoint may claim. Only what is served is ever allocated (see
/// `cli::served_context`); this only keeps the claim within `u32`, as GGUF stores it.
pub const MAX_POSITIONS: usize = u32::MAX as usize;

impl LlamaConfig {
    /// Width of the key (and value) projection: `num_kv_heads * head_dim`.
    pub fn kv_dim(&self) -> usize {
        self.num_kv_heads * self.head_dim
    }

    /// Number of weights, counting a tied head once.
    pub fn num_parameters(&self) -> usize {
        let attention = self.hidden_size * self.num_heads * self.head_dim * 2
            + self.hidden_size * self.kv_dim() * 2;
        let mlp = self.hidden_size * self.intermediate_size * 3;
        let per_layer = attention + mlp + 2 * self.hidden_size;
        let head = if self.tie_word_embeddings {
            0
        } else {
            self.vocab_size * self.hidden_size
        };
        self.vocab_size * self.hidden_size + self.num_layers * per_layer + self.hidden_size + head
    }

    /// Bytes one token occupies in the KV cache across all layers, stored as `dtype`.
    pub fn kv_bytes_per_token(&self, dtype: burn::tensor::FloatDType) -> usize {
        2 * self.num_layers * self.kv_dim() * burn::tensor::DType::from(dtype).size()
    }

    /// Checks relations between fields that a corrupt checkpoint could break.
    pub fn validate(&self) -> Result<(), InvalidConfig> {
        let positive = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_layers", self.num_layers),
            ("num_heads", self.num_heads),
            ("num_kv_heads", self.num_kv_heads),
            ("head_dim", self.head_dim),
            ("max_position_embeddings", self.max_position_embeddings),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, value)| *value == 0) {
            return Err(InvalidConfig::Zero(name));
        }
        // Far above any released model, far below what would overflow the sizes computed
        // from them: a corrupt header is refused here instead of aborting an allocation.
        let bounded = [
            ("vocab_size", self.vocab_size, MAX_VOCAB_SIZE),
            ("hidden_size", self.hidden_size, MAX_WIDTH),
            ("intermediate_size", self.intermediate_size, MAX_WIDTH * 8),
            ("num_layers", self.num_layers, MAX_LAYERS),
            ("num_heads", self.num_heads, MAX_HEADS),
            ("num_kv_heads", self.num_kv_heads, MAX_HEADS),
            ("head_dim", self.head_dim, MAX_HEAD_DIM),
            (
                "max_position_embeddings",
                self.max_position_embeddings,
                MAX_POSITIONS,
            ),
        ];
        for (name, value, max) in bounded {
            if value > max {
                return Err(InvalidConfig::TooLarge { name, value, max });
            }
        }
        if !self.num_heads.is_multiple_of(self.num_kv_heads) {
            return Err(InvalidConfig::HeadsNotGrouped {
                num_heads: self.num_heads,
                num_kv_heads: self.num_kv_heads,
            });
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(InvalidConfig::OddHeadDim(self.head_dim));
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 0.0) {
            return Err(InvalidConfig::NotPositive {
                name: "rope_theta",
                value: self.rope_theta,
            });
        }
        if !(self.rms_norm_eps.is_finite() && self.rms_norm_eps > 0.0) {
            return Err(InvalidConfig::NotPositive {
                name: "rms_norm_eps",
                value: self.rms_norm_eps,
            });
        }
        Ok(())
    }
}

/// A [`LlamaConfig`] that no model could have.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum InvalidConfig {
    /// A size of zero.
    #[error("{0} must be positive")]
    Zero(&'static str),
    /// Query heads must share key/value heads evenly.
    #[error("num_heads ({num_heads}) is not a multiple of num_kv_heads ({num_kv_heads})")]
    HeadsNotGrouped {
        /// Query heads.
        num_heads: usize,
        /// Key/value heads.
        num_kv_heads: usize,
    },
    /// RoPE rotates pairs of dimensions.
    #[error("head_dim ({0}) must be even for RoPE")]
    OddHeadDim(usize),
    /// Beyond any released model, and near sizes that would overflow: a corrupt header.
    #[error("{name} ({value}) is larger than the limit of {max}")]
    TooLarge {
        /// The field.
        name: &'static str,
        /// Its value.
        value: usize,
        /// The limit.
        max: usize,
    },
    /// A float that must be finite and positive.
    #[error("{name} ({value}) must be positive")]
    NotPositive {
        /// The field.
        name: &'static str,
        /// Its value.
        value: f64,
    },
}
