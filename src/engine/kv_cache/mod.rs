//! Bookkeeping for the paged KV cache: which blocks each request owns and which full blocks
//! can be shared through the prefix cache.
//!
//! The model's KV pool is split into blocks of `block_size` token slots. A request's block
//! table lists its blocks in order; token `i` lives in slot `i % block_size` of block
//! `table[i / block_size]`. Tables only grow while a request runs, and are dropped whole
//! when it finishes or is preempted.
//!
//! - [`KvCacheManager`] is the scheduler's only way in: prefix-cache lookup, slot
//!   allocation, caching of computed blocks, freeing.
//! - [`BlockPool`] owns the blocks: reference counts, the cached full blocks and the free
//!   list in eviction order.
//!
//! # The prefix cache
//!
//! A full block whose keys and values have been computed is *cached*: it stays findable by
//! its content after its request frees it, until the pool hands it out again. Its key is
//! the block's token ids together with the identity of the cached block before it
//! ([`PrefixId`]), so one key stands for the whole prefix up to the block's end. Keys are
//! compared exactly (token ids and parent identity); the 64-bit hash only finds the
//! candidate, so a hash collision can cost a cache hit but never serve another prefix's
//! keys and values.

mod block_pool;
mod manager;

pub use block_pool::{BlockPool, PrefixId};
pub use manager::{ComputedBlocks, KvCacheManager, PrefixCacheStats};

/// Index of one block in the model's KV pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockId(pub u32);

impl BlockId {
    /// The block's index as a `usize`, for indexing per-block arrays.
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// Why a KV-cache layout cannot be set up.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KvCacheConfigError {
    /// Blocks must hold at least one token.
    #[error("the KV-cache block size must be at least 1")]
    ZeroBlockSize,
    /// A pool without blocks cannot run anything.
    #[error("the KV cache needs at least one block")]
    ZeroBlocks,
    /// Block ids are `u32` (and one value marks the end of the free list).
    #[error("the KV cache has {0} blocks, more than the {max} a block id can name", max = u32::MAX - 1)]
    TooManyBlocks(usize),
}
