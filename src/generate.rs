//! One request run to completion on its own: the loop behind `waypoint generate`.
//!
//! The prompt is prefilled in chunks of at most [`PREFILL_CHUNK`] tokens, then tokens are
//! decoded one at a time. The sequence owns the whole cache pool, blocks in order.

use std::time::{Duration, Instant};

use crate::model::{ForwardBatch, ForwardError, Llama, ModelBackend, PagedKvCache, SequenceSlice};
use crate::sampling::{Sampler, SamplingParams, StopStringMatcher};
use crate::tokenizer::{IncrementalDetokenizer, Tokenizer, TokenizerError};

/// Longest prompt chunk computed in one forward pass.
pub const PREFILL_CHUNK: usize = 512;

/// Why generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// An end-of-sequence token, a stop token id or a stop string.
    Stop,
    /// `max_tokens`, the model's context or the cache ran out.
    Length,
}

impl FinishReason {
    /// The OpenAI API's name.
    pub fn as_str(&self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

/// What a finished generation produced.
#[derive(Clone, Debug)]
pub struct Generation {
    /// Generated token ids (a stop token is included, a stop string's tokens too).
    pub token_ids: Vec<u32>,
    /// Generated text (never containing a matched stop string).
    pub text: String,
    /// Prompt length in tokens.
    pub prompt_tokens: usize,
    /// Why it ended.
    pub finish_reason: FinishReason,
    /// Time spent computing the prompt (until the first token is sampled).
    pub prefill_time: Duration,
    /// Time spent decoding the remaining tokens.
    pub decode_time: Duration,
}

/// Why generation failed.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    /// The prompt tokenized to nothing.
    #[error("the prompt is empty")]
    EmptyPrompt,
    /// The prompt does not leave room for a single new token.
    #[error("the prompt has {prompt} tokens but the limit (model context or KV cache) is {limit}")]
    PromptTooLong {
        /// Prompt tokens.
        prompt: usize,
        /// Room in context and cache.
        limit: usize,
    },
    /// The model rejected the batch.
    #[error(transparent)]
    Forward(#[from] ForwardError),
    /// Detokenization failed.
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
}

/// Generates from `prompt_ids` until a stop condition, calling `on_text` with each piece of
/// text as soon as it is safe to show.
pub fn generate<B: ModelBackend>(
    model: &Llama<B>,
    tokenizer: &Tokenizer,
    cache: &mut PagedKvCache<B>,
    prompt_ids: &[u32],
    params: &SamplingParams,
    mut on_text: impl FnMut(&str),
) -> Result<Generation, GenerateError> {
    if prompt_ids.is_empty() {
        return Err(GenerateError::EmptyPrompt);
    }
    let pool = cache.config();
    let limit = model.config().max_position_embeddings.min(pool.num_slots());
    if prompt_ids.len() >= limit {
        return Err(GenerateError::PromptTooLong {
            prompt: prompt_ids.len(),
            limit,
        });
    }
    let block_table: Vec<u32> = (0..pool.num_blocks as u32).collect();
    let mut sampler = Sampler::new(params);
    let mut detokenizer = IncrementalDetokenizer::new(prompt_ids, true);
    let mut stops = StopStringMatcher::new(&params.stop);
    let eos: Vec<u32> = if params.ignore_eos {
        Vec::new()
    } else {
        tokenizer.eos_token_ids().to_vec()
    };

    let started = Instant::now();
    let mut first_token_at = None;
    let mut output: Vec<u32> = Vec::new();
    let mut text = String::new();
    let mut cached = 0;
    let mut pending: Vec<u32> = prompt_ids.to_vec();
    let mut stopped_by_string = false;
    let finish_reason = loop {
        // Compute everything not yet cached (the prompt in chunks, then the last sample).
        let mut logits = None;
        while !pending.is_empty() {
            let take = pending.len().min(PREFILL_CHUNK);
            let chunk: Vec<u32> = pending.drain(..take).collect();
            let batch = ForwardBatch {
                sequences: vec![SequenceSlice {
                    num_cached_tokens: cached,
                    num_new_tokens: chunk.len(),
                    block_table: block_table.clone(),
                }],
                token_ids: chunk,
                ..Default::default()
            };
            cached += take;
            logits = Some(model.forward(&batch, cache)?);
        }
        let mut row = logits.expect("at least one token was computed").data;
        let sampled = sampler.sample(&mut row, prompt_ids, &output, &eos);
        first_token_at.get_or_insert_with(Instant::now);
        output.push(sampled.token_id);

        let is_min_reached = output.len() >= params.min_tokens;
        let is_stop_token = is_min_reached
            && (eos.contains(&sampled.token_id)
                || params.stop_token_ids.contains(&sampled.token_id));
        if is_stop_token {
            break FinishReason::Stop;
        }
        let delta = detokenizer.push(tokenizer, sampled.token_id)?;
        let outcome = stops.push(&delta);
        on_text(&outcome.emit);
        text.push_str(&outcome.emit);
        if outcome.stopped.is_some() {
            stopped_by_string = true;
            break FinishReason::Stop;
        }
        if output.len() >= params.max_tokens || prompt_ids.len() + output.len() >= limit {
            break FinishReason::Length;
        }
        pending.push(sampled.token_id);
    };
    if !stopped_by_string {
        // Release what the detokenizer and the stop matcher were holding back.
        let outcome = stops.push(&detokenizer.flush());
        let mut tail = outcome.emit;
        if outcome.stopped.is_none() {
            tail.push_str(&stops.finish());
        }
        on_text(&tail);
        text.push_str(&tail);
    }
    let first_token_at = first_token_at.unwrap_or(started);
    Ok(Generation {
        token_ids: output,
        text,
        prompt_tokens: prompt_ids.len(),
        finish_reason,
        prefill_time: first_token_at - started,
        decode_time: first_token_at.elapsed(),
    })
}
