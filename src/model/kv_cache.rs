//! The paged KV cache: per layer, a pool of fixed-size blocks of key and value rows.
//!
//! A sequence's cache is the list of its block ids (its block table); token `t` of the
//! sequence lives in slot `block_table[t / block_size] * block_size + t % block_size`.
//! Which blocks belong to whom is decided outside the model (by the engine's block manager);
//! this type only stores rows.

use burn::tensor::{FloatDType, Tensor};

use super::backend::ModelBackend;
use super::config::LlamaConfig;

/// Default number of tokens per cache block.
pub const DEFAULT_BLOCK_SIZE: usize = 16;

/// Size of the cache pool, and the float type it stores (the model's: [`super::Llama::dtype`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvCacheConfig {
    /// Tokens per block.
    pub block_size: usize,
    /// Blocks in the pool (shared by all layers: block `b` exists once per layer).
    pub num_blocks: usize,
    /// What keys and values are stored in.
    pub dtype: FloatDType,
}

impl KvCacheConfig {
    /// A pool of `num_blocks` blocks of `block_size` tokens, in f32.
    pub fn with_blocks(block_size: usize, num_blocks: usize) -> Self {
        Self {
            block_size,
            num_blocks,
            dtype: FloatDType::F32,
        }
    }

    /// The largest pool of `dtype` that fits in `bytes` for this model (at least one block).
    pub fn with_bytes(
        block_size: usize,
        bytes: usize,
        model: &LlamaConfig,
        dtype: FloatDType,
    ) -> Self {
        let block_bytes = block_size * model.kv_bytes_per_token(dtype);
        Self::with_blocks(block_size, (bytes / block_bytes).max(1)).stored_as(dtype)
    }

    /// This pool storing `dtype` instead.
    pub fn stored_as(self, dtype: FloatDType) -> Self {
        Self { dtype, ..self }
    }

    /// Bytes one token occupies in this pool across all layers.
    pub fn bytes_per_token(&self, model: &LlamaConfig) -> usize {
        model.kv_bytes_per_token(self.dtype)
    }

    /// Bytes the pool occupies for this model.
    pub fn bytes(&self, model: &LlamaConfig) -> usize {
        self.num_blocks * self.block_size * self.bytes_per_token(model)
    }

    /// Tokens the whole pool can hold.
    pub fn num_slots(&self) -> usize {
        self.num_blocks * self.block_size
    }
}

/// One layer's pools: one keys and one values tensor per KV head, each holding
/// `num_slots * head_dim` floats.
///
/// Values are rows `[num_slots, head_dim]`. Keys are in the backend's layout
/// ([`ModelBackend::write_cache_keys`]): rows by default, transposed within each block on flex.
/// A pool per head (rather than `[num_slots, kv_heads * head_dim]`) keeps a head's context
/// contiguous per block for the CPU kernel and gathers into `[seqs, 1, context, head_dim]`
/// without a transpose on the dense path.
#[derive(Debug)]
pub struct LayerPools<B: ModelBackend> {
    /// Per KV head, shaped `[num_slots, head_dim]`, laid out by the backend.
    pub keys: Vec<Tensor<B, 2>>,
    /// Per KV head, `[num_slots, head_dim]`.
    pub values: Vec<Tensor<B, 2>>,
}

/// Key and value rows of every layer.
#[derive(Debug)]
pub struct PagedKvCache<B: ModelBackend> {
    config: KvCacheConfig,
    layers: Vec<LayerPools<B>>,
    num_layers: usize,
}

impl<B: ModelBackend> PagedKvCache<B> {
    /// Allocates a zeroed pool for `model`.
    pub fn new(config: KvCacheConfig, model: &LlamaConfig, device: &B::Device) -> Self {
        let shape = [config.num_slots(), model.head_dim];
        let pools = || -> Vec<Tensor<B, 2>> {
            (0..model.num_kv_heads)
                .map(|_| Tensor::zeros(shape, (device, config.dtype.into())))
                .collect()
        };
        let layers = (0..model.num_layers)
            .map(|_| LayerPools {
                keys: pools(),
                values: pools(),
            })
            .collect();
        Self {
            config,
            layers,
            num_layers: model.num_layers,
        }
    }

    /// Whether every layer's pools are in place: false after a forward pass panicked while
    /// it held them (they are dropped with it), after which every pass fails.
    pub fn is_intact(&self) -> bool {
        self.layers.len() == self.num_layers
    }

    /// The pool's size.
    pub fn config(&self) -> KvCacheConfig {
        self.config
    }

    /// Hands the layers to a forward pass, which must give them back with
    /// [`Self::restore_layers`]; moving them out keeps each pool uniquely owned, so writes
    /// happen in place.
    pub(super) fn take_layers(&mut self) -> Vec<LayerPools<B>> {
        std::mem::take(&mut self.layers)
    }

    pub(super) fn restore_layers(&mut self, layers: Vec<LayerPools<B>>) {
        self.layers = layers;
    }
}
