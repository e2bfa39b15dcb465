//! What the engine needs from a model: run one batch, get one row of logits per sequence.
//! A trait so the engine loop can be tested with a fake model.

use crate::model::{ForwardBatch, KvCacheConfig, Llama, Logits, ModelBackend, PagedKvCache};

/// Runs forward passes for the engine thread.
pub trait ModelRunner: Send + 'static {
    /// Computes the batch, returning the last row of logits of each sequence.
    fn execute(&mut self, batch: &ForwardBatch) -> Result<Logits, String>;

    /// Whether later batches can still succeed; asked after a failed or panicking step.
    fn can_continue(&self) -> bool {
        true
    }
}

/// A [`Llama`] with its paged cache.
pub struct BurnRunner<B: ModelBackend> {
    model: Llama<B>,
    cache: PagedKvCache<B>,
}

impl<B: ModelBackend> std::fmt::Debug for BurnRunner<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BurnRunner")
            .field("pool", &self.cache.config())
            .finish_non_exhaustive()
    }
}

impl<B: ModelBackend> BurnRunner<B> {
    /// Allocates the cache pool for `model`.
    pub fn new(model: Llama<B>, pool: KvCacheConfig) -> Self {
        let cache = PagedKvCache::new(pool, model.config(), model.device());
        Self { model, cache }
    }
}

// The runner moves into the engine thread once and is used only there; the bounds say
// the backend's tensors may cross that one thread boundary.
impl<B: ModelBackend> ModelRunner for BurnRunner<B>
where
    Llama<B>: Send,
    PagedKvCache<B>: Send,
{
    fn execute(&mut self, batch: &ForwardBatch) -> Result<Logits, String> {
        self.model
            .forward(batch, &mut self.cache)
            .map_err(|e| e.to_string())
    }

    fn can_continue(&self) -> bool {
        // A panic mid-pass drops the pools the pass had taken out of the cache.
        self.cache.is_intact()
    }
}
