//! Engine output to OpenAI objects, for one request: whole answers and stream chunks for
//! both endpoints, with logprobs in each endpoint's shape.

use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::engine::{EngineHandle, FinishReason, FinishedInfo, TokenLogprob};

use super::openai::{
    ChatChoice, ChatChunkChoice, ChatCompletionChunk, ChatCompletionResponse, ChatDelta,
    ChatLogprobs, ChatMessageOut, ChatTokenLogprob, ChatTopLogprob, CompletionChoice,
    CompletionLogprobs, CompletionResponse, PromptTokensDetails, Usage,
};

/// What clients get for a logprob of -inf (or NaN): JSON has no infinity, serde_json would
/// write `null`, and clients parse these as floats. vLLM uses the same stand-in.
const LOGPROB_FLOOR: f32 = -9999.0;

/// Which API a request came through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Api {
    /// `/v1/completions`.
    Completions,
    /// `/v1/chat/completions`.
    Chat,
}

impl Api {
    /// `gen_ai.operation.name` in OpenTelemetry's GenAI conventions.
    pub fn operation_name(self) -> &'static str {
        match self {
            Api::Completions => "text_completion",
            Api::Chat => "chat",
        }
    }

    /// The prefix of this API's response ids.
    pub fn id_prefix(self) -> &'static str {
        match self {
            Api::Completions => "cmpl",
            Api::Chat => "chatcmpl",
        }
    }
}

/// Builds the responses of one request; the same id, `created` and model name appear in
/// every chunk.
#[derive(Debug)]
pub struct ResponseBuilder {
    api: Api,
    id: String,
    created: u64,
    model: String,
    engine: EngineHandle,
    logprobs: bool,
    /// Characters of completion text before the next token, for `text_offset`.
    text_offset: usize,
}

impl ResponseBuilder {
    /// A builder for request `id`; `logprobs` says whether responses carry them.
    pub fn new(api: Api, id: String, created: u64, engine: EngineHandle, logprobs: bool) -> Self {
        Self {
            api,
            id,
            created,
            model: engine.model().name.clone(),
            engine,
            logprobs,
            text_offset: 0,
        }
    }

    /// The whole answer of a non-streaming request.
    pub fn full(
        &mut self,
        text: String,
        logprobs: &[TokenLogprob],
        info: &FinishedInfo,
    ) -> Response {
        let finish_reason = Some(info.reason.as_str());
        let usage = usage(info);
        match self.api {
            Api::Completions => axum::Json(CompletionResponse {
                id: self.id.clone(),
                object: "text_completion",
                created: self.created,
                model: self.model.clone(),
                choices: vec![CompletionChoice {
                    index: 0,
                    text,
                    logprobs: self.completion_logprobs(logprobs),
                    finish_reason,
                }],
                usage: Some(usage),
            })
            .into_response(),
            Api::Chat => axum::Json(ChatCompletionResponse {
                id: self.id.clone(),
                object: "chat.completion",
                created: self.created,
                model: self.model.clone(),
                choices: vec![ChatChoice {
                    index: 0,
                    message: ChatMessageOut {
                        role: "assistant",
                        content: text,
                    },
                    logprobs: self.chat_logprobs(logprobs),
                    finish_reason,
                }],
                usage,
            })
            .into_response(),
        }
    }

    /// The chunk that opens a chat stream, announcing the assistant's role (as OpenAI
    /// does, before any token); `None` for completions.
    pub fn first_chunk(&self) -> Option<String> {
        match self.api {
            Api::Completions => None,
            Api::Chat => Some(self.chat_chunk(
                ChatDelta {
                    role: Some("assistant"),
                    content: Some(String::new()),
                },
                None,
                None,
            )),
        }
    }

    /// The chunk for new output, or `None` when there is nothing to tell (text held back
    /// and no logprobs wanted).
    pub fn delta_chunk(&mut self, text: String, logprobs: &[TokenLogprob]) -> Option<String> {
        if text.is_empty() && (!self.logprobs || logprobs.is_empty()) {
            return None;
        }
        Some(match self.api {
            Api::Completions => {
                let logprobs = self.completion_logprobs(logprobs);
                self.completion_chunk(text, logprobs, None)
            }
            Api::Chat => {
                let logprobs = self.chat_logprobs(logprobs);
                self.chat_chunk(
                    ChatDelta {
                        role: None,
                        content: Some(text),
                    },
                    logprobs,
                    None,
                )
            }
        })
    }

    /// The chunk that carries `finish_reason`.
    pub fn finish_chunk(&self, reason: FinishReason) -> String {
        match self.api {
            Api::Completions => self.completion_chunk(String::new(), None, Some(reason.as_str())),
            Api::Chat => self.chat_chunk(ChatDelta::default(), None, Some(reason.as_str())),
        }
    }

    /// The `include_usage` chunk: no choices, only usage.
    pub fn usage_chunk(&self, info: &FinishedInfo) -> String {
        let usage = Some(usage(info));
        match self.api {
            Api::Completions => to_json(&CompletionResponse {
                id: self.id.clone(),
                object: "text_completion",
                created: self.created,
                model: self.model.clone(),
                choices: Vec::new(),
                usage,
            }),
            Api::Chat => to_json(&ChatCompletionChunk {
                id: self.id.clone(),
                object: "chat.completion.chunk",
                created: self.created,
                model: self.model.clone(),
                choices: Vec::new(),
                usage,
            }),
        }
    }

    fn completion_chunk(
        &self,
        text: String,
        logprobs: Option<CompletionLogprobs>,
        finish_reason: Option<&'static str>,
    ) -> String {
        to_json(&CompletionResponse {
            id: self.id.clone(),
            object: "text_completion",
            created: self.created,
            model: self.model.clone(),
            choices: vec![CompletionChoice {
                index: 0,
                text,
                logprobs,
                finish_reason,
            }],
            usage: None,
        })
    }

    fn chat_chunk(
        &self,
        delta: ChatDelta,
        logprobs: Option<ChatLogprobs>,
        finish_reason: Option<&'static str>,
    ) -> String {
        to_json(&ChatCompletionChunk {
            id: self.id.clone(),
            object: "chat.completion.chunk",
            created: self.created,
            model: self.model.clone(),
            choices: vec![ChatChunkChoice {
                index: 0,
                delta,
                logprobs,
                finish_reason,
            }],
            usage: None,
        })
    }

    /// The legacy shape; `text_offset` continues across the chunks of a stream.
    fn completion_logprobs(&mut self, logprobs: &[TokenLogprob]) -> Option<CompletionLogprobs> {
        if !self.logprobs {
            return None;
        }
        let mut out = CompletionLogprobs::default();
        for token in logprobs {
            let (text, _) = self.token_text(token.token_id);
            out.text_offset.push(self.text_offset);
            // Characters, not bytes: OpenAI's offsets come from Python string lengths.
            self.text_offset += text.chars().count();
            out.tokens.push(text);
            out.token_logprobs.push(finite(token.logprob));
            out.top_logprobs.push(
                token
                    .top
                    .iter()
                    .map(|&(id, logprob)| (self.token_text(id).0, finite(logprob).into()))
                    .collect(),
            );
        }
        Some(out)
    }

    fn chat_logprobs(&self, logprobs: &[TokenLogprob]) -> Option<ChatLogprobs> {
        if !self.logprobs {
            return None;
        }
        let content = logprobs
            .iter()
            .map(|token| {
                let (text, bytes) = self.token_text(token.token_id);
                ChatTokenLogprob {
                    token: text,
                    logprob: finite(token.logprob),
                    bytes,
                    top_logprobs: token
                        .top
                        .iter()
                        .map(|&(id, logprob)| {
                            let (token, bytes) = self.token_text(id);
                            ChatTopLogprob {
                                token,
                                logprob: finite(logprob),
                                bytes,
                            }
                        })
                        .collect(),
                }
            })
            .collect();
        Some(ChatLogprobs { content })
    }

    /// A token's text (lossy where it holds part of a character) and its exact bytes.
    fn token_text(&self, id: u32) -> (String, Vec<u8>) {
        let bytes = self.engine.tokenizer().token_bytes(id).unwrap_or_default();
        (String::from_utf8_lossy(&bytes).into_owned(), bytes)
    }
}

/// The usage object of a finished request.
pub fn usage(info: &FinishedInfo) -> Usage {
    Usage {
        prompt_tokens: info.prompt_tokens,
        completion_tokens: info.completion_tokens,
        total_tokens: info.prompt_tokens + info.completion_tokens,
        prompt_tokens_details: PromptTokensDetails {
            cached_tokens: info.cached_prompt_tokens,
        },
    }
}

fn finite(logprob: f32) -> f32 {
    if logprob.is_finite() {
        logprob
    } else {
        LOGPROB_FLOOR
    }
}

/// Our response types hold only strings, numbers and plain containers, which always
/// serialize; the fallback keeps that assumption from ever becoming a panic.
pub fn to_json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|err| {
        tracing::error!(error = %err, "cannot serialize a response chunk");
        r#"{"error":{"message":"the server failed to serialize a response","type":"internal_error","param":null,"code":null}}"#
            .to_string()
    })
}
