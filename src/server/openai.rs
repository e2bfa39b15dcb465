//! The OpenAI wire format: request bodies as clients send them and the objects we answer
//! with, for `/v1/completions`, `/v1/chat/completions` and `/v1/models`.
//!
//! Request fields are as lenient as OpenAI's SDKs need (every optional field may be `null`;
//! unknown fields are ignored) and typed loosely where a range check gives a better message
//! than serde would (`n`, `max_tokens` are `i64` so that `-1` is "must be at least 1", not
//! "expected u64"). Ranges are checked in `validation.rs`, not here.

use std::fmt;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

/// `POST /v1/completions`.
#[derive(Default, Deserialize)]
#[serde(default)]
pub struct CompletionRequest {
    /// Must be the served model's name when given.
    pub model: Option<String>,
    /// The text or token ids to continue; required.
    pub prompt: Option<Prompt>,
    /// Most tokens to generate.
    pub max_tokens: Option<i64>,
    /// The newer name of `max_tokens`; wins when both are given.
    pub max_completion_tokens: Option<i64>,
    /// Sampling temperature in [0, ∞).
    pub temperature: Option<f32>,
    /// Nucleus sampling mass in (0, 1].
    pub top_p: Option<f32>,
    /// Choices per prompt; only 1 is supported.
    pub n: Option<i64>,
    /// Stream server-sent events.
    pub stream: Option<bool>,
    /// Streaming options; only allowed with `stream`.
    pub stream_options: Option<StreamOptions>,
    /// Return the logprobs of this many most likely tokens (0 to 5) besides the sampled one.
    pub logprobs: Option<i64>,
    /// Return the prompt before the completion; unsupported.
    pub echo: Option<bool>,
    /// Strings that end generation.
    pub stop: Option<Stop>,
    /// In [-2, 2].
    pub presence_penalty: Option<f32>,
    /// In [-2, 2].
    pub frequency_penalty: Option<f32>,
    /// Server-side candidates; only 1 is supported.
    pub best_of: Option<i64>,
    /// Per-token logit offsets; unsupported (rejected when non-empty).
    pub logit_bias: Option<serde_json::Map<String, serde_json::Value>>,
    /// End-user id; accepted and ignored.
    pub user: Option<String>,
    /// Seed for reproducible sampling.
    pub seed: Option<i64>,
    /// Text after the completion (insertion); unsupported.
    pub suffix: Option<String>,
    /// vLLM: keep only the k most likely tokens; -1 or 0 for off.
    pub top_k: Option<i64>,
    /// vLLM: drop tokens below `min_p` times the most likely one's probability.
    pub min_p: Option<f32>,
    /// vLLM: Hugging Face's repetition penalty, in (0, ∞).
    pub repetition_penalty: Option<f32>,
    /// vLLM: generate at least this many tokens before EOS may end the output.
    pub min_tokens: Option<i64>,
    /// vLLM: keep generating past EOS.
    pub ignore_eos: Option<bool>,
    /// vLLM: lower runs first under priority scheduling.
    pub priority: Option<i64>,
    /// vLLM: token ids that end generation.
    pub stop_token_ids: Option<Vec<u32>>,
}

/// `POST /v1/chat/completions`.
#[derive(Default, Deserialize)]
#[serde(default)]
pub struct ChatCompletionRequest {
    /// Must be the served model's name when given.
    pub model: Option<String>,
    /// The conversation; required and non-empty.
    pub messages: Option<Vec<ChatMessageIn>>,
    /// Most tokens to generate (deprecated by OpenAI in favour of `max_completion_tokens`).
    pub max_tokens: Option<i64>,
    /// Most tokens to generate; wins over `max_tokens`.
    pub max_completion_tokens: Option<i64>,
    /// Sampling temperature in [0, ∞).
    pub temperature: Option<f32>,
    /// Nucleus sampling mass in (0, 1].
    pub top_p: Option<f32>,
    /// Choices per request; only 1 is supported.
    pub n: Option<i64>,
    /// Stream server-sent events.
    pub stream: Option<bool>,
    /// Streaming options; only allowed with `stream`.
    pub stream_options: Option<StreamOptions>,
    /// Return the sampled tokens' logprobs.
    pub logprobs: Option<bool>,
    /// With `logprobs`, also return this many most likely alternatives (0 to 20).
    pub top_logprobs: Option<i64>,
    /// Strings that end generation.
    pub stop: Option<Stop>,
    /// In [-2, 2].
    pub presence_penalty: Option<f32>,
    /// In [-2, 2].
    pub frequency_penalty: Option<f32>,
    /// Per-token logit offsets; unsupported (rejected when non-empty).
    pub logit_bias: Option<serde_json::Map<String, serde_json::Value>>,
    /// End-user id; accepted and ignored.
    pub user: Option<String>,
    /// Seed for reproducible sampling.
    pub seed: Option<i64>,
    /// Tool definitions; unsupported (rejected when non-empty), because ignoring them would
    /// answer a different question than the one asked.
    pub tools: Option<Vec<serde_json::Value>>,
    /// Output format; only `{"type": "text"}` is supported, for the same reason.
    pub response_format: Option<serde_json::Value>,
    /// vLLM: keep only the k most likely tokens; -1 or 0 for off.
    pub top_k: Option<i64>,
    /// vLLM: drop tokens below `min_p` times the most likely one's probability.
    pub min_p: Option<f32>,
    /// vLLM: Hugging Face's repetition penalty, in (0, ∞).
    pub repetition_penalty: Option<f32>,
    /// vLLM: generate at least this many tokens before EOS may end the output.
    pub min_tokens: Option<i64>,
    /// vLLM: keep generating past EOS.
    pub ignore_eos: Option<bool>,
    /// vLLM: lower runs first under priority scheduling.
    pub priority: Option<i64>,
    /// vLLM: token ids that end generation.
    pub stop_token_ids: Option<Vec<u32>>,
}

// The request types hold users' text (prompts, messages, stop strings, suffixes, tools): their
// `Debug` prints what a log may show (the model, the knobs, sizes), never the text.

/// The size of a prompt, as `Debug` may show it.
fn prompt_shape(prompt: &Option<Prompt>) -> String {
    match prompt {
        None => "none".to_string(),
        Some(Prompt::Text(text)) => format!("text of {} bytes", text.len()),
        Some(Prompt::TextBatch(texts)) => format!("{} texts", texts.len()),
        Some(Prompt::Tokens(ids)) => format!("{} token ids", ids.len()),
        Some(Prompt::TokensBatch(batch)) => format!("{} token id lists", batch.len()),
    }
}

impl fmt::Debug for CompletionRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CompletionRequest")
            .field("model", &self.model)
            .field("prompt", &prompt_shape(&self.prompt))
            .field("max_tokens", &self.max_tokens)
            .field("max_completion_tokens", &self.max_completion_tokens)
            .field("temperature", &self.temperature)
            .field("stream", &self.stream)
            .field("num_stop_strings", &self.stop.as_ref().map(|s| s.0.len()))
            .field("logprobs", &self.logprobs)
            .field("priority", &self.priority)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for ChatCompletionRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChatCompletionRequest")
            .field("model", &self.model)
            .field("messages", &self.messages)
            .field("max_tokens", &self.max_tokens)
            .field("max_completion_tokens", &self.max_completion_tokens)
            .field("temperature", &self.temperature)
            .field("stream", &self.stream)
            .field("num_stop_strings", &self.stop.as_ref().map(|s| s.0.len()))
            .field("logprobs", &self.logprobs)
            .field("num_tools", &self.tools.as_ref().map(Vec::len))
            .field("priority", &self.priority)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for ChatMessageIn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChatMessageIn")
            .field("role", &self.role)
            .field(
                "content_bytes",
                &self.content.as_ref().map(|content| content.0.len()),
            )
            .finish()
    }
}

/// `stream_options`.
#[derive(Clone, Copy, Debug, Default, Deserialize)]
#[serde(default)]
pub struct StreamOptions {
    /// Send a last chunk, with empty `choices`, that carries `usage`.
    pub include_usage: Option<bool>,
}

/// One message of a chat request.
#[derive(Deserialize)]
pub struct ChatMessageIn {
    /// `system`, `user`, `assistant`, ...: the chat template decides what it accepts.
    pub role: String,
    /// The text; `null` (an assistant turn that only called tools) counts as empty.
    #[serde(default)]
    pub content: Option<MessageContent>,
}

/// A message's content: a string, or an array of parts of which only text parts are
/// supported. The parts' texts are joined without separator, as OpenAI does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageContent(pub String);

impl<'de> Deserialize<'de> for MessageContent {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Part {
            #[serde(rename = "type")]
            kind: String,
            #[serde(default)]
            text: Option<String>,
        }

        struct ContentVisitor;

        impl<'de> Visitor<'de> for ContentVisitor {
            type Value = MessageContent;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or an array of content parts")
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<MessageContent, E> {
                Ok(MessageContent(text.to_string()))
            }

            fn visit_string<E: de::Error>(self, text: String) -> Result<MessageContent, E> {
                Ok(MessageContent(text))
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<MessageContent, A::Error> {
                let mut joined = String::new();
                while let Some(part) = seq.next_element::<Part>()? {
                    match (part.kind.as_str(), part.text) {
                        ("text", Some(text)) => joined.push_str(&text),
                        ("text", None) => return Err(de::Error::missing_field("text")),
                        (other, _) => {
                            return Err(de::Error::custom(format!(
                                "content parts of type `{other}` are not supported; only `text`"
                            )))
                        }
                    }
                }
                Ok(MessageContent(joined))
            }
        }

        deserializer.deserialize_any(ContentVisitor)
    }
}

/// A completion prompt in any of the shapes OpenAI accepts; validation takes only a single
/// prompt (a batch of one is unwrapped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prompt {
    /// Text.
    Text(String),
    /// Token ids.
    Tokens(Vec<u32>),
    /// Several texts.
    TextBatch(Vec<String>),
    /// Several token id lists.
    TokensBatch(Vec<Vec<u32>>),
}

impl<'de> Deserialize<'de> for Prompt {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // Through a Value, because which shape an array has is only known from its elements.
        let value = serde_json::Value::deserialize(deserializer)?;
        prompt_from_value(value).map_err(de::Error::custom)
    }
}

const PROMPT_SHAPES: &str =
    "must be a string, an array of token ids, an array of strings or an array of token id arrays";

fn prompt_from_value(value: serde_json::Value) -> Result<Prompt, String> {
    use serde_json::Value;
    match value {
        Value::String(text) => Ok(Prompt::Text(text)),
        Value::Array(items) => match items.first() {
            None => Ok(Prompt::Tokens(Vec::new())),
            Some(Value::Number(_)) => token_ids(&items).map(Prompt::Tokens),
            Some(Value::String(_)) => items
                .into_iter()
                .map(|item| match item {
                    Value::String(text) => Ok(text),
                    _ => Err(format!("a prompt {PROMPT_SHAPES}")),
                })
                .collect::<Result<_, _>>()
                .map(Prompt::TextBatch),
            Some(Value::Array(_)) => items
                .iter()
                .map(|item| match item {
                    Value::Array(ids) => token_ids(ids),
                    _ => Err(format!("a prompt {PROMPT_SHAPES}")),
                })
                .collect::<Result<_, _>>()
                .map(Prompt::TokensBatch),
            Some(_) => Err(format!("a prompt {PROMPT_SHAPES}")),
        },
        _ => Err(format!("a prompt {PROMPT_SHAPES}")),
    }
}

fn token_ids(items: &[serde_json::Value]) -> Result<Vec<u32>, String> {
    items
        .iter()
        .map(|item| {
            item.as_u64()
                .and_then(|id| u32::try_from(id).ok())
                .ok_or_else(|| format!("token ids must be integers in [0, 2^32), got {item}"))
        })
        .collect()
}

/// `stop`: one string or several.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stop(pub Vec<String>);

impl<'de> Deserialize<'de> for Stop {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct StopVisitor;

        impl<'de> Visitor<'de> for StopVisitor {
            type Value = Stop;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or an array of strings")
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<Stop, E> {
                Ok(Stop(vec![text.to_string()]))
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Stop, A::Error> {
                let mut stops = Vec::new();
                while let Some(stop) = seq.next_element::<String>()? {
                    stops.push(stop);
                }
                Ok(Stop(stops))
            }
        }

        deserializer.deserialize_any(StopVisitor)
    }
}

/// Token counts; sent with every non-streaming response and, when asked, at the end of a
/// stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Usage {
    /// Tokens in the prompt (after the chat template, BOS included).
    pub prompt_tokens: usize,
    /// Tokens generated.
    pub completion_tokens: usize,
    /// The sum.
    pub total_tokens: usize,
    /// How much of the prompt the prefix cache served.
    pub prompt_tokens_details: PromptTokensDetails,
}

/// OpenAI's breakdown of the prompt tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct PromptTokensDetails {
    /// Prompt tokens whose KV cache was reused.
    pub cached_tokens: usize,
}

/// A `text_completion` object: the whole answer, or one streamed chunk of it.
#[derive(Debug, Serialize)]
pub struct CompletionResponse {
    /// `cmpl-...`.
    pub id: String,
    /// Always `text_completion`.
    pub object: &'static str,
    /// Unix seconds when the request arrived.
    pub created: u64,
    /// The served model's name.
    pub model: String,
    /// One choice (or none, in the usage chunk of a stream).
    pub choices: Vec<CompletionChoice>,
    /// Always present in a whole answer; only in the last chunk of a stream.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

/// One completion choice.
#[derive(Debug, Serialize)]
pub struct CompletionChoice {
    /// Always 0 (`n` is 1).
    pub index: u32,
    /// The generated text, or the new text of a chunk.
    pub text: String,
    /// When requested.
    pub logprobs: Option<CompletionLogprobs>,
    /// `stop`, `length` or `abort`; null until the last chunk.
    pub finish_reason: Option<&'static str>,
}

/// The legacy completions logprobs object: parallel arrays, one entry per token.
#[derive(Debug, Default, Serialize)]
pub struct CompletionLogprobs {
    /// Each token's text.
    pub tokens: Vec<String>,
    /// Each token's logprob.
    pub token_logprobs: Vec<f32>,
    /// Each token's most likely alternatives, text to logprob.
    pub top_logprobs: Vec<serde_json::Map<String, serde_json::Value>>,
    /// Each token's offset in characters from the start of the completion text.
    pub text_offset: Vec<usize>,
}

/// A `chat.completion` object (the whole answer).
#[derive(Debug, Serialize)]
pub struct ChatCompletionResponse {
    /// `chatcmpl-...`.
    pub id: String,
    /// Always `chat.completion`.
    pub object: &'static str,
    /// Unix seconds when the request arrived.
    pub created: u64,
    /// The served model's name.
    pub model: String,
    /// One choice.
    pub choices: Vec<ChatChoice>,
    /// Token counts.
    pub usage: Usage,
}

/// One chat choice.
#[derive(Debug, Serialize)]
pub struct ChatChoice {
    /// Always 0 (`n` is 1).
    pub index: u32,
    /// The assistant's message.
    pub message: ChatMessageOut,
    /// When requested.
    pub logprobs: Option<ChatLogprobs>,
    /// `stop`, `length` or `abort`.
    pub finish_reason: Option<&'static str>,
}

/// The assistant's message.
#[derive(Debug, Serialize)]
pub struct ChatMessageOut {
    /// Always `assistant`.
    pub role: &'static str,
    /// The generated text.
    pub content: String,
}

/// A `chat.completion.chunk` object (one event of a stream).
#[derive(Debug, Serialize)]
pub struct ChatCompletionChunk {
    /// `chatcmpl-...`, the same in every chunk.
    pub id: String,
    /// Always `chat.completion.chunk`.
    pub object: &'static str,
    /// Unix seconds when the request arrived.
    pub created: u64,
    /// The served model's name.
    pub model: String,
    /// One choice, or none in the usage chunk.
    pub choices: Vec<ChatChunkChoice>,
    /// Only in the usage chunk.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

/// One choice of a chat chunk.
#[derive(Debug, Serialize)]
pub struct ChatChunkChoice {
    /// Always 0.
    pub index: u32,
    /// What is new.
    pub delta: ChatDelta,
    /// For the new tokens, when requested.
    pub logprobs: Option<ChatLogprobs>,
    /// Null until the last chunk.
    pub finish_reason: Option<&'static str>,
}

/// The new part of the assistant's message.
#[derive(Debug, Default, Serialize)]
pub struct ChatDelta {
    /// `assistant`, in the first chunk only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    /// New text; absent in the last chunk.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
}

/// Chat logprobs: one entry per generated token.
#[derive(Debug, Default, Serialize)]
pub struct ChatLogprobs {
    /// The tokens of the content, in order.
    pub content: Vec<ChatTokenLogprob>,
}

/// One generated token's logprob and its most likely alternatives.
#[derive(Debug, Serialize)]
pub struct ChatTokenLogprob {
    /// The token's text (lossy when the token is part of a UTF-8 character).
    pub token: String,
    /// Its log-probability.
    pub logprob: f32,
    /// Its exact bytes.
    pub bytes: Vec<u8>,
    /// The most likely tokens at this position, most likely first.
    pub top_logprobs: Vec<ChatTopLogprob>,
}

/// An alternative token at one position.
#[derive(Debug, Serialize)]
pub struct ChatTopLogprob {
    /// The token's text.
    pub token: String,
    /// Its log-probability.
    pub logprob: f32,
    /// Its exact bytes.
    pub bytes: Vec<u8>,
}

/// `GET /v1/models`.
#[derive(Debug, Serialize)]
pub struct ModelList {
    /// Always `list`.
    pub object: &'static str,
    /// The served model.
    pub data: Vec<ModelCard>,
}

/// One served model.
#[derive(Debug, Serialize)]
pub struct ModelCard {
    /// The name requests must use.
    pub id: String,
    /// Always `model`.
    pub object: &'static str,
    /// Unix seconds when the server started.
    pub created: u64,
    /// Always `waypoint`.
    pub owned_by: &'static str,
    /// Longest prompt plus output, in tokens (vLLM's field).
    pub max_model_len: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prompt(json: &str) -> Result<Prompt, serde_json::Error> {
        serde_json::from_str(json)
    }

    #[test]
    fn prompts_in_every_shape() {
        assert_eq!(prompt(r#""hi""#).unwrap(), Prompt::Text("hi".into()));
        assert_eq!(prompt("[1, 2]").unwrap(), Prompt::Tokens(vec![1, 2]));
        assert_eq!(prompt("[]").unwrap(), Prompt::Tokens(vec![]));
        assert_eq!(
            prompt(r#"["a", "b"]"#).unwrap(),
            Prompt::TextBatch(vec!["a".into(), "b".into()])
        );
        assert_eq!(
            prompt("[[1], [2, 3]]").unwrap(),
            Prompt::TokensBatch(vec![vec![1], vec![2, 3]])
        );
        for bad in [
            "3",
            "[-1]",
            "[1.5]",
            "[4294967296]",
            r#"[1, "a"]"#,
            r#"["a", 1]"#,
            "{}",
        ] {
            assert!(prompt(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn content_is_a_string_or_text_parts() {
        let content = |json: &str| serde_json::from_str::<MessageContent>(json);
        assert_eq!(content(r#""x""#).unwrap().0, "x");
        assert_eq!(
            content(r#"[{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]"#)
                .unwrap()
                .0,
            "ab"
        );
        let image = content(r#"[{"type": "image_url", "image_url": {"url": "x"}}]"#);
        assert!(image.unwrap_err().to_string().contains("image_url"));
        assert!(content("3").is_err());
    }

    #[test]
    fn stop_is_a_string_or_strings() {
        let stop = |json: &str| serde_json::from_str::<Stop>(json);
        assert_eq!(stop(r#""x""#).unwrap().0, ["x"]);
        assert_eq!(stop(r#"["x", "y"]"#).unwrap().0, ["x", "y"]);
        assert!(stop("[1]").is_err());
        assert!(stop("1").is_err());
    }
}
