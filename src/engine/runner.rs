//! What the engine needs from a model: run one batch, get one row of logits per sequence.
//! A trait so the engine loop can be tested with a fake model.

use crate::model::{
    ForwardBatch, ForwardError, KvCacheConfig, Llama, Logits, ModelBackend, PagedKvCache,
};

/// Why a batch could not be computed, naming the sequences at fault when it can.
#[derive(Debug, thiserror::Error)]
pub enum ExecuteError {
    /// These sequences (positions in the batch) cannot be computed; the others could be, in
    /// a batch without them. The engine fails these requests alone and retries the rest.
    #[error("batch sequence(s) {sequences:?} cannot be computed: {source}")]
    Sequences {
        /// Positions in the batch, ascending.
        sequences: Vec<usize>,
        /// What is wrong with them.
        #[source]
        source: ForwardError,
    },
    /// The model failed on the batch as a whole: every sequence in it fails.
    #[error(transparent)]
    Batch(ForwardError),
    /// The model panicked (caught around the call): every sequence in it fails.
    #[error("the model panicked: {0}")]
    Panicked(String),
}

impl ExecuteError {
    /// The batch positions that fail, or `None` for all of them.
    pub fn failed_sequences(&self) -> Option<&[usize]> {
        match self {
            ExecuteError::Sequences { sequences, .. } => Some(sequences),
            ExecuteError::Batch(_) | ExecuteError::Panicked(_) => None,
        }
    }
}

impl From<ForwardError> for ExecuteError {
    /// A batch error about one sequence blames that sequence; anything else, the batch.
    fn from(error: ForwardError) -> Self {
        match &error {
            ForwardError::Batch(batch) => match batch.sequence_index() {
                Some(index) => ExecuteError::Sequences {
                    sequences: vec![index],
                    source: error,
                },
                None => ExecuteError::Batch(error),
            },
            _ => ExecuteError::Batch(error),
        }
    }
}

/// Runs forward passes for the engine thread.
pub trait ModelRunner: Send + 'static {
    /// Computes the batch, returning the last row of logits of each sequence.
    fn execute(&mut self, batch: &ForwardBatch) -> Result<Logits, ExecuteError>;

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
    /// Allocates the cache pool for `model`, in the model's float type.
    pub fn new(model: Llama<B>, pool: KvCacheConfig) -> Self {
        let pool = pool.stored_as(model.dtype());
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
    fn execute(&mut self, batch: &ForwardBatch) -> Result<Logits, ExecuteError> {
        Ok(self.model.forward(batch, &mut self.cache)?)
    }

    fn can_continue(&self) -> bool {
        // A panic mid-pass drops the pools the pass had taken out of the cache.
        self.cache.is_intact()
    }
}
