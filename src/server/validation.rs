//! API requests to [`ValidatedRequest`]s: the only way into the engine.
//!
//! Everything a request could get wrong is found here and reported as a 400 naming the
//! field: unsupported options, ranges (through [`SamplingParams::validate`]), the model
//! name, the prompt (empty, batched, token ids outside the vocabulary, a chat template that
//! rejects the conversation) and the context budget. What reaches the engine is an
//! [`EngineRequest`] whose prompt fits the context with room for `max_tokens`.
//!
//! Tokenizing and rendering chat templates cost milliseconds for long prompts, so the
//! handlers run this on tokio's blocking pool, off the threads that stream responses.

use std::time::Instant;

use crate::engine::journey::JourneyMode;
use crate::engine::{EngineHandle, EngineRequest};
use crate::sampling::{SamplingParams, MAX_LOGPROBS};
use crate::tokenizer::{ChatMessage, TokenizerError};

use super::error::ApiError;
use super::openai::{ChatCompletionRequest, CompletionRequest, Prompt, Stop, StreamOptions};
use super::ServerConfig;

/// Most alternatives `/v1/completions` may ask for with `logprobs` (OpenAI's limit).
pub const MAX_COMPLETION_LOGPROBS: i64 = 5;

/// A request ready for the engine, with what the response needs to know about it.
#[derive(Debug)]
pub struct ValidatedRequest {
    /// What the engine runs.
    pub request: EngineRequest,
    /// `None` for a single JSON answer; otherwise a stream, with or without a usage chunk.
    pub stream: Option<StreamMode>,
    /// Whether the response carries logprobs.
    pub logprobs: bool,
}

/// How a streamed response ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamMode {
    /// `stream_options.include_usage`: a chunk with empty `choices` and `usage` before
    /// `[DONE]`.
    pub include_usage: bool,
}

/// The fields both endpoints share, under the names they have in the API.
struct CommonFields {
    max_tokens: Option<i64>,
    max_completion_tokens: Option<i64>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    n: Option<i64>,
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
    stop: Option<Stop>,
    presence_penalty: Option<f32>,
    frequency_penalty: Option<f32>,
    logit_bias: Option<serde_json::Map<String, serde_json::Value>>,
    seed: Option<i64>,
    top_k: Option<i64>,
    min_p: Option<f32>,
    repetition_penalty: Option<f32>,
    min_tokens: Option<i64>,
    ignore_eos: Option<bool>,
    priority: Option<i64>,
    stop_token_ids: Option<Vec<u32>>,
}

/// Moves the shared fields out of either API request type (both name them alike); written
/// once, so a new shared field cannot be forgotten on one endpoint.
macro_rules! common_fields {
    ($body:expr) => {
        CommonFields {
            max_tokens: $body.max_tokens,
            max_completion_tokens: $body.max_completion_tokens,
            temperature: $body.temperature,
            top_p: $body.top_p,
            n: $body.n,
            stream: $body.stream,
            stream_options: $body.stream_options,
            stop: $body.stop,
            presence_penalty: $body.presence_penalty,
            frequency_penalty: $body.frequency_penalty,
            logit_bias: $body.logit_bias,
            seed: $body.seed,
            top_k: $body.top_k,
            min_p: $body.min_p,
            repetition_penalty: $body.repetition_penalty,
            min_tokens: $body.min_tokens,
            ignore_eos: $body.ignore_eos,
            priority: $body.priority,
            stop_token_ids: $body.stop_token_ids,
        }
    };
}

/// The part of validation that does not depend on the prompt.
struct Checked {
    params: SamplingParams,
    max_tokens: Option<(&'static str, usize)>,
    stream: Option<StreamMode>,
    priority: i64,
}

/// Validates a `/v1/completions` request. `request_id` and `arrival` go into the
/// [`EngineRequest`].
pub fn validate_completion(
    engine: &EngineHandle,
    config: &ServerConfig,
    body: CompletionRequest,
    request_id: String,
    arrival: Instant,
) -> Result<ValidatedRequest, ApiError> {
    check_model(engine, body.model)?;
    if body.echo == Some(true) {
        return Err(ApiError::invalid("echo", "`echo` is not supported"));
    }
    if let Some(best_of) = body.best_of.filter(|&best_of| best_of != 1) {
        return Err(ApiError::invalid(
            "best_of",
            format!("only `best_of` 1 is supported, got {best_of}"),
        ));
    }
    if body
        .suffix
        .as_deref()
        .is_some_and(|suffix| !suffix.is_empty())
    {
        return Err(ApiError::invalid("suffix", "`suffix` is not supported"));
    }
    let logprobs = match body.logprobs {
        None => None,
        Some(n @ 0..=MAX_COMPLETION_LOGPROBS) => Some(n as usize),
        Some(n) => {
            return Err(ApiError::invalid(
                "logprobs",
                format!("`logprobs` must be in [0, {MAX_COMPLETION_LOGPROBS}], got {n}"),
            ))
        }
    };
    let common = common_fields!(body);
    let mut checked = check_common(common)?;
    checked.params.logprobs = logprobs;

    let prompt_ids = encode_prompt(engine, body.prompt)?;
    finish(
        engine, config, checked, "prompt", prompt_ids, request_id, arrival,
    )
}

/// A completion prompt's token ids: text is encoded with BOS (when the model wants it),
/// token ids are taken as they are; a batch of one is unwrapped.
fn encode_prompt(engine: &EngineHandle, prompt: Option<Prompt>) -> Result<Vec<u32>, ApiError> {
    let text = match prompt {
        None => return Err(ApiError::invalid("prompt", "`prompt` is required")),
        Some(Prompt::Text(text)) => text,
        Some(Prompt::TextBatch(texts)) => match <[String; 1]>::try_from(texts) {
            Ok([text]) => text,
            Err(_) => return Err(batched()),
        },
        Some(Prompt::Tokens(ids)) => return check_prompt_ids(engine, ids),
        Some(Prompt::TokensBatch(batch)) => match <[Vec<u32>; 1]>::try_from(batch) {
            Ok([ids]) => return check_prompt_ids(engine, ids),
            Err(_) => return Err(batched()),
        },
    };
    if text.is_empty() {
        return Err(ApiError::invalid("prompt", "`prompt` must not be empty"));
    }
    check_prompt_bytes(engine, "prompt", text.len())?;
    engine
        .tokenizer()
        .encode(&text, true)
        .map_err(|err| tokenizer_error("prompt", err))
}

fn batched() -> ApiError {
    ApiError::invalid(
        "prompt",
        "batched prompts are not supported; send one prompt per request",
    )
}

/// Token id prompts must be non-empty and inside the model's vocabulary.
fn check_prompt_ids(engine: &EngineHandle, ids: Vec<u32>) -> Result<Vec<u32>, ApiError> {
    if ids.is_empty() {
        return Err(ApiError::invalid("prompt", "`prompt` must not be empty"));
    }
    let vocab_size = engine.model().vocab_size;
    if let Some(id) = ids.iter().find(|&&id| id as usize >= vocab_size) {
        return Err(ApiError::invalid(
            "prompt",
            format!("token id {id} is outside the vocabulary of {vocab_size} tokens"),
        ));
    }
    Ok(ids)
}

/// Validates a `/v1/chat/completions` request: the messages go through the model's chat
/// template (with the assistant's turn opened) and are encoded without adding BOS, since
/// templates write it themselves.
pub fn validate_chat(
    engine: &EngineHandle,
    config: &ServerConfig,
    body: ChatCompletionRequest,
    request_id: String,
    arrival: Instant,
) -> Result<ValidatedRequest, ApiError> {
    check_model(engine, body.model)?;
    if body.tools.as_ref().is_some_and(|tools| !tools.is_empty()) {
        return Err(ApiError::invalid("tools", "tool calling is not supported"));
    }
    if let Some(format) = &body.response_format {
        let kind = format.get("type").and_then(serde_json::Value::as_str);
        if kind != Some("text") {
            return Err(ApiError::invalid(
                "response_format",
                "only `{\"type\": \"text\"}` is supported",
            ));
        }
    }
    let logprobs = match (body.logprobs.unwrap_or(false), body.top_logprobs) {
        (false, None) => None,
        (false, Some(_)) => {
            return Err(ApiError::invalid(
                "top_logprobs",
                "`top_logprobs` requires `logprobs` to be true",
            ))
        }
        (true, None) => Some(0),
        (true, Some(n)) if (0..=MAX_LOGPROBS as i64).contains(&n) => Some(n as usize),
        (true, Some(n)) => {
            return Err(ApiError::invalid(
                "top_logprobs",
                format!("`top_logprobs` must be in [0, {MAX_LOGPROBS}], got {n}"),
            ))
        }
    };
    let common = common_fields!(body);
    let mut checked = check_common(common)?;
    checked.params.logprobs = logprobs;

    let messages: Vec<ChatMessage> = match body.messages {
        None => return Err(ApiError::invalid("messages", "`messages` is required")),
        Some(messages) if messages.is_empty() => {
            return Err(ApiError::invalid(
                "messages",
                "`messages` must hold at least one message",
            ))
        }
        Some(messages) => messages
            .into_iter()
            .map(|message| ChatMessage {
                role: message.role,
                content: message.content.map(|content| content.0).unwrap_or_default(),
            })
            .collect(),
    };
    // Each message renders to at least one token in any real template, and the template
    // only adds text to what the messages hold; both bounds hold before rendering.
    let max_context = engine.model().max_context;
    if messages.len() > max_context {
        return Err(ApiError::invalid(
            "messages",
            format!(
                "{} messages cannot fit in this model's context of {max_context} tokens",
                messages.len()
            ),
        ));
    }
    let message_bytes = messages
        .iter()
        .map(|message| message.role.len() + message.content.len())
        .fold(0usize, usize::saturating_add);
    check_prompt_bytes(engine, "messages", message_bytes)?;
    let tokenizer = engine.tokenizer();
    let template = tokenizer.chat_template().ok_or_else(|| {
        ApiError::invalid(
            "messages",
            "this model has no chat template; use /v1/completions",
        )
    })?;
    let prompt = template
        .render(&messages, true)
        .map_err(|err| tokenizer_error("messages", err))?;
    let prompt_ids = tokenizer
        .encode(&prompt, false)
        .map_err(|err| tokenizer_error("messages", err))?;
    if prompt_ids.is_empty() {
        return Err(ApiError::invalid(
            "messages",
            "the conversation renders to an empty prompt",
        ));
    }
    finish(
        engine, config, checked, "messages", prompt_ids, request_id, arrival,
    )
}

/// Refuses text too long to fit the context whatever it tokenizes to, before it is
/// tokenized: tokenizing megabytes would cost seconds and hundreds of megabytes only to be
/// refused afterwards.
fn check_prompt_bytes(
    engine: &EngineHandle,
    param: &'static str,
    bytes: usize,
) -> Result<(), ApiError> {
    let max_context = engine.model().max_context;
    let limit = engine.tokenizer().max_text_bytes(max_context);
    if bytes > limit {
        let what = match param {
            "messages" => "the messages hold",
            _ => "the prompt holds",
        };
        return Err(ApiError::invalid(
            param,
            format!(
                "{what} {bytes} bytes of text, more than can fit in this model's context of \
                 {max_context} tokens (at most {limit} bytes)"
            ),
        ));
    }
    Ok(())
}

/// A request may leave `model` out; if it names one, it must be the served one.
fn check_model(engine: &EngineHandle, model: Option<String>) -> Result<(), ApiError> {
    match model {
        Some(model) if model != engine.model().name => Err(ApiError::ModelNotFound(model)),
        _ => Ok(()),
    }
}

/// Checks the fields both endpoints share and builds the sampling parameters, except
/// `max_tokens` (which needs the prompt's length) and `logprobs` (whose API differs).
fn check_common(common: CommonFields) -> Result<Checked, ApiError> {
    if let Some(n) = common.n.filter(|&n| n != 1) {
        return Err(ApiError::invalid(
            "n",
            format!("only `n` 1 is supported, got {n}"),
        ));
    }
    if common.logit_bias.is_some_and(|bias| !bias.is_empty()) {
        return Err(ApiError::invalid(
            "logit_bias",
            "`logit_bias` is not supported",
        ));
    }
    let stream = match (common.stream.unwrap_or(false), common.stream_options) {
        (true, options) => Some(StreamMode {
            include_usage: options.and_then(|o| o.include_usage).unwrap_or(false),
        }),
        (false, None) => None,
        // As OpenAI and vLLM do: options that would be silently ignored are a mistake.
        (false, Some(_)) => {
            return Err(ApiError::invalid(
                "stream_options",
                "`stream_options` is only allowed when `stream` is true",
            ))
        }
    };
    // `max_completion_tokens` is OpenAI's newer name; it wins, and errors name it.
    let max_tokens = match (common.max_completion_tokens, common.max_tokens) {
        (Some(n), _) => Some(("max_completion_tokens", n)),
        (None, Some(n)) => Some(("max_tokens", n)),
        (None, None) => None,
    };
    // Only the conversion is checked here: "at least 1" is `SamplingParams::validate`'s rule
    // (the one place it is written), reported under the name the request used.
    let max_tokens = match max_tokens {
        None => None,
        Some((param, n)) => Some((
            param,
            usize::try_from(n).map_err(|_| {
                ApiError::invalid(param, format!("`{param}` must not be negative, got {n}"))
            })?,
        )),
    };
    let top_k = match common.top_k {
        // vLLM's -1 and our 0 both mean "off".
        None | Some(-1) | Some(0) => None,
        Some(k) if k > 0 => Some(usize::try_from(k).unwrap_or(usize::MAX)),
        Some(k) => {
            return Err(ApiError::invalid(
                "top_k",
                format!("`top_k` must be -1 (off), 0 (off) or positive, got {k}"),
            ))
        }
    };
    let min_tokens = match common.min_tokens {
        None => 0,
        Some(n) => usize::try_from(n).map_err(|_| {
            ApiError::invalid(
                "min_tokens",
                format!("`min_tokens` must not be negative, got {n}"),
            )
        })?,
    };
    let defaults = SamplingParams::default();
    let params = SamplingParams {
        temperature: common.temperature.unwrap_or(defaults.temperature),
        top_k,
        top_p: common.top_p.unwrap_or(defaults.top_p),
        min_p: common.min_p.unwrap_or(defaults.min_p),
        repetition_penalty: common
            .repetition_penalty
            .unwrap_or(defaults.repetition_penalty),
        frequency_penalty: common
            .frequency_penalty
            .unwrap_or(defaults.frequency_penalty),
        presence_penalty: common.presence_penalty.unwrap_or(defaults.presence_penalty),
        // Negative seeds are valid in OpenAI's API; reinterpreting the bits keeps distinct
        // seeds distinct.
        seed: common.seed.map(|seed| seed as u64),
        max_tokens: defaults.max_tokens,
        min_tokens,
        stop_token_ids: common.stop_token_ids.unwrap_or_default(),
        stop: common.stop.map(|stop| stop.0).unwrap_or_default(),
        ignore_eos: common.ignore_eos.unwrap_or(false),
        logprobs: None,
    };
    Ok(Checked {
        params,
        max_tokens,
        stream,
        priority: common.priority.unwrap_or(0),
    })
}

/// Fits the prompt and `max_tokens` into the context, validates the sampling parameters
/// and builds the engine request. `prompt_param` is the field blamed for a prompt that is
/// too long.
fn finish(
    engine: &EngineHandle,
    config: &ServerConfig,
    mut checked: Checked,
    prompt_param: &'static str,
    prompt_ids: Vec<u32>,
    request_id: String,
    arrival: Instant,
) -> Result<ValidatedRequest, ApiError> {
    let max_context = engine.model().max_context;
    let prompt_len = prompt_ids.len();
    // At least one token of room, or there is nothing to generate.
    if prompt_len >= max_context {
        let what = match prompt_param {
            "messages" => "the messages, after the chat template, are",
            _ => "the prompt is",
        };
        return Err(ApiError::invalid(
            prompt_param,
            format!(
                "{what} {prompt_len} tokens long, which leaves no room for output in this \
                 model's context of {max_context} tokens"
            ),
        ));
    }
    let remaining = max_context - prompt_len;
    checked.params.max_tokens = match checked.max_tokens {
        Some((param, n)) if n > remaining => {
            return Err(ApiError::invalid(
                param,
                format!(
                    "the prompt ({prompt_len} tokens) plus `{param}` ({n}) exceeds this \
                     model's context of {max_context} tokens; at most {remaining} are left"
                ),
            ))
        }
        Some((_, n)) => n,
        None => remaining.min(config.default_max_tokens),
    };
    checked
        .params
        .validate(engine.model().vocab_size)
        .map_err(|mut invalid| {
            if let (Some((param, _)), "max_tokens") = (checked.max_tokens, invalid.param) {
                invalid.param = param;
            }
            invalid
        })?;
    tracing::Span::current()
        .record("prompt_tokens", prompt_len)
        .record("max_tokens", checked.params.max_tokens);
    let logprobs = checked.params.logprobs.is_some();
    Ok(ValidatedRequest {
        request: EngineRequest {
            request_id,
            prompt_ids,
            params: checked.params,
            priority: checked.priority,
            arrival,
            // Sampling is decided by the handler, which sees the headers.
            journey: JourneyMode::Off,
            // Set with `journey`, by the handler's journey.
            trace_id: None,
            journey_trace_id: None,
        },
        stream: checked.stream,
        logprobs,
    })
}

/// Tokenizer failures on a client's input: the template's own rejection and rendering
/// failures are the conversation's fault (400, as vLLM answers); anything else is ours.
pub(crate) fn tokenizer_error(param: &'static str, err: TokenizerError) -> ApiError {
    match err {
        TokenizerError::TemplateException(message) => ApiError::invalid(
            param,
            format!("the chat template rejected the conversation: {message}"),
        ),
        TokenizerError::TemplateRender(err) => ApiError::invalid(
            param,
            format!("the chat template cannot render the conversation: {err}"),
        ),
        TokenizerError::TokenOutOfRange { .. } => ApiError::invalid(param, err.to_string()),
        other => ApiError::Internal(format!("tokenizing the {param}: {other}")),
    }
}
