//! What one forward pass is asked to compute: a batch of sequences at different stages.

/// One sequence's share of a forward pass.
///
/// The sequence has `num_cached_tokens` tokens whose keys and values are already in the
/// paged cache; this pass appends `num_new_tokens` more (a prompt chunk during prefill, one
/// token during decode) at positions `num_cached_tokens..num_cached_tokens + num_new_tokens`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SequenceSlice {
    /// Tokens of this sequence already in the cache (also the position of its first new token).
    pub num_cached_tokens: usize,
    /// Tokens this pass computes; the packed `token_ids` hold them contiguously, in batch order.
    pub num_new_tokens: usize,
    /// Cache blocks of the sequence, in order; must cover `num_cached_tokens + num_new_tokens`.
    pub block_table: Vec<u32>,
}

impl SequenceSlice {
    /// Tokens of context the sequence attends to after this pass.
    pub fn context_len(&self) -> usize {
        self.num_cached_tokens + self.num_new_tokens
    }
}

/// Which logits a forward pass returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum LogitsWanted {
    /// One row per sequence: its last new position (what sampling needs).
    #[default]
    LastPerSequence,
    /// One row per packed token (scoring and tests).
    EveryPosition,
}

/// The input of [`crate::model::Llama::forward`].
#[derive(Clone, Debug, Default)]
pub struct ForwardBatch {
    /// New tokens of every sequence, packed in sequence order.
    pub token_ids: Vec<u32>,
    /// One entry per sequence, in the same order as `token_ids`.
    pub sequences: Vec<SequenceSlice>,
    /// Which positions' logits to return.
    pub logits: LogitsWanted,
}

/// Why a batch cannot be run.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BatchError {
    /// The packed ids do not add up to the sequences' new tokens.
    #[error("batch packs {packed} token ids but its sequences claim {claimed}")]
    TokenCountMismatch {
        /// Length of `token_ids`.
        packed: usize,
        /// Sum of `num_new_tokens`.
        claimed: usize,
    },
    /// A sequence with nothing to compute.
    #[error("sequence {index} has no new tokens")]
    EmptySequence {
        /// Position of the sequence in the batch.
        index: usize,
    },
    /// A block table too short for the sequence's context.
    #[error("sequence {index} needs {needed} cache blocks for {context} tokens but has {have}")]
    BlockTableTooShort {
        /// Position of the sequence in the batch.
        index: usize,
        /// Context length after this pass.
        context: usize,
        /// Blocks needed.
        needed: usize,
        /// Blocks given.
        have: usize,
    },
    /// A block id outside the cache pool.
    #[error("sequence {index} refers to cache block {block} but the pool has {num_blocks}")]
    BlockOutOfRange {
        /// Position of the sequence in the batch.
        index: usize,
        /// The offending block id.
        block: u32,
        /// Blocks in the pool.
        num_blocks: usize,
    },
    /// A token id outside the vocabulary.
    #[error("sequence {index} has token id {token}, outside the vocabulary of {vocab_size}")]
    TokenOutOfRange {
        /// Position of the sequence in the batch.
        index: usize,
        /// The offending token id.
        token: u32,
        /// Vocabulary size.
        vocab_size: usize,
    },
    /// A position beyond what the model (or its RoPE table) supports.
    #[error("sequence {index} reaches position {position}, beyond the model's limit of {limit}")]
    ContextTooLong {
        /// Position of the sequence in the batch.
        index: usize,
        /// Last position.
        position: usize,
        /// Longest supported context.
        limit: usize,
    },
}

impl BatchError {
    /// The batch position of the sequence at fault, when one sequence is (not for a batch
    /// whose packing is inconsistent as a whole).
    pub fn sequence_index(&self) -> Option<usize> {
        match self {
            BatchError::TokenCountMismatch { .. } => None,
            BatchError::EmptySequence { index }
            | BatchError::BlockTableTooShort { index, .. }
            | BatchError::BlockOutOfRange { index, .. }
            | BatchError::TokenOutOfRange { index, .. }
            | BatchError::ContextTooLong { index, .. } => Some(*index),
        }
    }
}

impl ForwardBatch {
    /// Checks the batch against the model's vocabulary, context and cache pool.
    pub fn validate(
        &self,
        vocab_size: usize,
        max_context: usize,
        block_size: usize,
        num_blocks: usize,
    ) -> Result<(), BatchError> {
        let claimed: usize = self.sequences.iter().map(|s| s.num_new_tokens).sum();
        if claimed != self.token_ids.len() {
            return Err(BatchError::TokenCountMismatch {
                packed: self.token_ids.len(),
                claimed,
            });
        }
        if let Some(offset) = self
            .token_ids
            .iter()
            .position(|&t| t as usize >= vocab_size)
        {
            // Which sequence packs it, so that the engine can fail that request alone.
            let mut end = 0;
            let index = self
                .sequences
                .iter()
                .position(|s| {
                    end += s.num_new_tokens;
                    offset < end
                })
                .unwrap_or(0);
            return Err(BatchError::TokenOutOfRange {
                index,
                token: self.token_ids[offset],
                vocab_size,
            });
        }
        for (index, seq) in self.sequences.iter().enumerate() {
            if seq.num_new_tokens == 0 {
                return Err(BatchError::EmptySequence { index });
            }
            let context = seq.context_len();
            if context > max_context {
                return Err(BatchError::ContextTooLong {
                    index,
                    position: context - 1,
                    limit: max_context,
                });
            }
            let needed = context.div_ceil(block_size);
            if seq.block_table.len() < needed {
                return Err(BatchError::BlockTableTooShort {
                    index,
                    context,
                    needed,
                    have: seq.block_table.len(),
                });
            }
            if let Some(&block) = seq.block_table[..needed]
                .iter()
                .find(|&&b| b as usize >= num_blocks)
            {
                return Err(BatchError::BlockOutOfRange {
                    index,
                    block,
                    num_blocks,
                });
            }
        }
        Ok(())
    }
}
