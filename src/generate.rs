//! One request run to completion on its own: the loop behind `waypoint generate`.
//!
//! It is the engine's step with one request and no thread: the same [`Scheduler`] (so the
//! prompt is prefilled in chunks of at most [`PREFILL_CHUNK`] tokens, then tokens are decoded
//! one at a time) and the same [`OutputProcessor`] (so every stop rule, and the text, is
//! exactly what `waypoint serve` would give for the same prompt and parameters).

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::engine::output_processor::{OutputProcessor, OutputSink};
use crate::engine::request::Request;
use crate::engine::scheduler::{AddRequestError, SchedulerConfigError, UpdateError};
use crate::engine::{max_sequence_len, Scheduler, SchedulerConfig, SchedulingPolicy, StreamEvent};
use crate::model::{ForwardError, Llama, ModelBackend, PagedKvCache};
use crate::sampling::SamplingParams;
use crate::tokenizer::Tokenizer;

pub use crate::engine::FinishReason;

/// Longest prompt chunk computed in one forward pass.
pub const PREFILL_CHUNK: usize = 512;

/// What a finished generation produced.
#[derive(Clone, Debug)]
pub struct Generation {
    /// Generated token ids (a stop token is included, a stop string's tokens too).
    pub token_ids: Vec<u32>,
    /// Generated text (never containing a matched stop string).
    pub text: String,
    /// Prompt length in tokens.
    pub prompt_tokens: usize,
    /// Why it ended: `Stop` or `Length` (failures are errors).
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
    /// The cache pool cannot be scheduled over.
    #[error(transparent)]
    Config(#[from] SchedulerConfigError),
    /// The scheduler refused the request.
    #[error(transparent)]
    Refused(#[from] AddRequestError),
    /// The model rejected the batch.
    #[error(transparent)]
    Forward(#[from] ForwardError),
    /// The step's output did not fit the scheduler (a bug).
    #[error(transparent)]
    Update(#[from] UpdateError),
    /// The output could not be produced (a token without text).
    #[error("generation failed: {0}")]
    Output(String),
}

/// Sends text to the caller as it becomes safe to show, and keeps the tokens.
struct TextSink<'a, F: FnMut(&str)> {
    on_text: F,
    text: &'a mut String,
    token_ids: &'a mut Vec<u32>,
}

impl<F: FnMut(&str)> OutputSink for TextSink<'_, F> {
    fn send(&mut self, event: StreamEvent) {
        match event {
            StreamEvent::Delta {
                text, token_ids, ..
            } => {
                if !text.is_empty() {
                    (self.on_text)(&text);
                    self.text.push_str(&text);
                }
                self.token_ids.extend(token_ids);
            }
            // `finish` returns it too.
            StreamEvent::Finished(_) => {}
        }
    }

    fn is_closed(&self) -> bool {
        false
    }
}

/// Generates from `prompt_ids` until a stop condition, calling `on_text` with each piece of
/// text as soon as it is safe to show.
pub fn generate<B: ModelBackend>(
    model: &Llama<B>,
    tokenizer: &Arc<Tokenizer>,
    cache: &mut PagedKvCache<B>,
    prompt_ids: &[u32],
    params: &SamplingParams,
    on_text: impl FnMut(&str),
) -> Result<Generation, GenerateError> {
    if prompt_ids.is_empty() {
        return Err(GenerateError::EmptyPrompt);
    }
    let pool = cache.config();
    let max_model_len = model.config().max_position_embeddings;
    let limit = max_sequence_len(max_model_len, pool.num_slots());
    // As the API refuses it: at least one token of room.
    if prompt_ids.len() >= limit {
        return Err(GenerateError::PromptTooLong {
            prompt: prompt_ids.len(),
            limit,
        });
    }
    let mut scheduler = Scheduler::new(SchedulerConfig {
        max_num_batched_tokens: PREFILL_CHUNK,
        max_num_seqs: 1,
        enable_chunked_prefill: true,
        policy: SchedulingPolicy::Fcfs,
        block_size: pool.block_size,
        num_blocks: pool.num_blocks,
        enable_prefix_caching: false,
        max_model_len,
    })?;
    let (mut text, mut token_ids) = (String::new(), Vec::new());
    let sink = TextSink {
        on_text,
        text: &mut text,
        token_ids: &mut token_ids,
    };
    let started = Instant::now();
    let mut processor = OutputProcessor::new(
        params,
        prompt_ids,
        tokenizer.clone(),
        scheduler.max_sequence_len(),
        sink,
        started,
    );
    scheduler.add_request(Request::new("generate", prompt_ids.to_vec()))?;
    let mut first_token_at = None;
    let info = loop {
        let mut output = scheduler.schedule();
        if output.is_empty() {
            // The prompt fits the pool (checked above), so one request always schedules.
            return Err(GenerateError::Output("nothing could be scheduled".into()));
        }
        let batch = output.take_forward_batch();
        let mut logits = model.forward(&batch, cache)?;
        let mut sampled = Vec::with_capacity(1);
        for (row, seq) in output.batch().enumerate() {
            let request = scheduler.running_request(seq.location.running_index);
            sampled.push(match request {
                Some(request) if seq.samples => processor.sample(logits.row_mut(row), request),
                _ => 0,
            });
        }
        let update = scheduler.update_from_output(&output, &sampled)?;
        let Some(&index) = update.new_tokens.first() else {
            continue; // a prompt chunk with more to come
        };
        first_token_at.get_or_insert_with(Instant::now);
        let Some(request) = scheduler.running_request(index) else {
            continue;
        };
        if let Some(reason) = processor.on_token(request, output.step) {
            let ended = scheduler.finish_running(&[(index, reason)]);
            if let Some(request) = ended.first() {
                break processor.finish(request, None, output.step);
            }
        }
    };
    if info.reason == FinishReason::Error {
        return Err(GenerateError::Output(
            info.error.unwrap_or_else(|| "no detail".to_string()),
        ));
    }
    let first_token_at = first_token_at.unwrap_or(started);
    Ok(Generation {
        token_ids,
        text,
        prompt_tokens: prompt_ids.len(),
        finish_reason: info.reason,
        prefill_time: first_token_at - started,
        decode_time: first_token_at.elapsed(),
    })
}
