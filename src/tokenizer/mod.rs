//! Text to token ids and back, for prompts, chat messages and streamed output.
//!
//! [`Tokenizer`] wraps a Hugging Face `tokenizers::Tokenizer` and adds what a server needs on
//! top of it: when to prepend BOS, which ids end generation, the model's [`ChatTemplate`], and
//! errors instead of panics for ids the vocabulary does not have. It can be built three ways:
//!
//! - [`Tokenizer::from_gguf_spec`]: from the `tokenizer.*` metadata of a GGUF file, which
//!   carries a byte-level BPE vocabulary but no `tokenizer.json` (see `gguf_bpe.rs`);
//! - [`Tokenizer::from_hf_dir`]: from a Hugging Face model directory;
//! - [`Tokenizer::tiny`]: a byte-level tokenizer for the built-in random-weight test model.
//!
//! Streaming output goes through [`IncrementalDetokenizer`], which turns one id at a time into
//! text without ever emitting half of a UTF-8 character.

mod chat_template;
mod detokenizer;
mod gguf_bpe;
mod tiny;

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use tokenizers::decoders::DecoderWrapper;

pub use chat_template::{ChatMessage, ChatTemplate};
pub use detokenizer::IncrementalDetokenizer;
pub use gguf_bpe::{GgufPreTokenizer, GgufTokenType, GgufTokenizerSpec};
pub use tiny::{
    TINY_BOS_ID, TINY_EOS_ID, TINY_IM_END_ID, TINY_IM_START_ID, TINY_NUM_BYTE_TOKENS,
    TINY_VOCAB_SIZE,
};

/// Everything that can go wrong while loading a tokenizer, encoding, decoding or rendering a
/// chat template.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// The GGUF `tokenizer.ggml.model` names a tokenizer family we cannot build.
    #[error("unsupported GGUF tokenizer model: {0}")]
    UnsupportedModel(String),
    /// The GGUF `tokenizer.ggml.pre` names a pre-tokenizer we do not know.
    #[error(
        "unsupported GGUF pre-tokenizer `{name}` (tokenizer.ggml.pre); supported: {supported}"
    )]
    UnsupportedPreTokenizer {
        /// The name found in the file.
        name: String,
        /// The names we accept, comma-separated.
        supported: String,
    },
    /// The GGUF tokenizer metadata contradicts itself (bad merge, id out of range, ...).
    #[error("invalid GGUF tokenizer metadata: {0}")]
    InvalidGgufSpec(String),
    /// A tokenizer file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A tokenizer file was read but its content is not what we expect.
    #[error("invalid {}: {message}", path.display())]
    InvalidFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// The `tokenizers` library refused to assemble the pieces we gave it.
    #[error("cannot build the tokenizer: {0}")]
    Build(String),
    /// Encoding text failed inside the `tokenizers` library.
    #[error("cannot encode text: {0}")]
    Encode(String),
    /// Decoding failed inside the `tokenizers` library.
    #[error("cannot decode token ids: {0}")]
    Decode(String),
    /// A token id is not in the vocabulary.
    #[error("token id {id} is outside the vocabulary ({vocab_size} tokens)")]
    TokenOutOfRange {
        /// The offending id.
        id: u32,
        /// The vocabulary size.
        vocab_size: usize,
    },
    /// The chat template does not compile.
    #[error("the chat template does not compile: {0}")]
    TemplateSyntax(#[source] minijinja::Error),
    /// The chat template called `raise_exception`, which templates use to reject conversations
    /// they cannot format (for example a role order they do not allow): the caller's fault.
    #[error("the chat template rejected the conversation: {0}")]
    TemplateException(String),
    /// The chat template failed while rendering for another reason.
    #[error("the chat template failed to render: {0}")]
    TemplateRender(#[source] minijinja::Error),
}

/// Texts of tokens that end a turn or a document, recognised by name because few files say
/// which ids end generation besides EOS (the same list llama.cpp uses).
const END_OF_GENERATION_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|eom_id|>",
    "<|end_of_text|>",
    "<EOT>",
    "<end_of_utterance>",
];

/// A tokenizer with the model-specific policy a server needs: BOS, stop ids, chat template.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    vocab_size: usize,
    bos_token_id: Option<u32>,
    add_bos: bool,
    eos_token_ids: Vec<u32>,
    special_ids: HashSet<u32>,
    byte_level: bool,
    chat_template: Option<ChatTemplate>,
    /// The most input bytes one token can stand for: see [`Tokenizer::max_text_bytes`].
    max_token_bytes: usize,
}

impl fmt::Debug for Tokenizer {
    // The inner tokenizer would print the whole vocabulary.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size)
            .field("bos_token_id", &self.bos_token_id)
            .field("add_bos", &self.add_bos)
            .field("eos_token_ids", &self.eos_token_ids)
            .field("chat_template", &self.chat_template.is_some())
            .finish_non_exhaustive()
    }
}

/// What the constructors know besides the `tokenizers::Tokenizer` itself.
struct Policy {
    vocab_size: usize,
    bos_token_id: Option<u32>,
    add_bos: bool,
    eos_token_ids: Vec<u32>,
    chat_template: Option<ChatTemplate>,
}

impl Tokenizer {
    fn assemble(inner: tokenizers::Tokenizer, policy: Policy) -> Self {
        let added = inner.get_added_tokens_decoder();
        let special_ids = added
            .iter()
            .filter(|(_, token)| token.special)
            .map(|(id, _)| *id)
            .collect();
        let byte_level = matches!(inner.get_decoder(), Some(DecoderWrapper::ByteLevel(_)));
        let mut eos_token_ids = policy.eos_token_ids;
        // Only added tokens count: ordinary text that happens to read "<|endoftext|>" is not a
        // stop marker.
        eos_token_ids.extend(
            END_OF_GENERATION_TEXTS
                .iter()
                .filter_map(|text| inner.token_to_id(text))
                .filter(|id| added.contains_key(id)),
        );
        let mut seen = HashSet::new();
        eos_token_ids.retain(|id| seen.insert(*id));
        // A vocabulary entry is at least as long as the input it covers: byte-level BPE
        // writes each byte as a character of one or two bytes, SentencePiece a space as
        // three-byte `▁`, and byte-fallback tokens (`<0x0A>`) take six for one. A normalizer
        // could shrink the input first (NFC composes up to about four code points into one),
        // so with one the bound is four times looser.
        let longest = inner
            .get_vocab(true)
            .keys()
            .map(String::len)
            .max()
            .unwrap_or(1)
            .max(1);
        let max_token_bytes = if inner.get_normalizer().is_some() {
            longest.saturating_mul(4)
        } else {
            longest
        };
        Self {
            inner,
            vocab_size: policy.vocab_size,
            bos_token_id: policy.bos_token_id,
            add_bos: policy.add_bos && policy.bos_token_id.is_some(),
            eos_token_ids,
            special_ids,
            byte_level,
            chat_template: policy.chat_template,
            max_token_bytes,
        }
    }

    /// The longest text, in bytes, that can encode to at most `max_tokens` tokens: a longer
    /// one cannot fit, so it can be refused before it is tokenized (which costs time and
    /// memory in proportion to its length).
    pub fn max_text_bytes(&self, max_tokens: usize) -> usize {
        max_tokens.saturating_mul(self.max_token_bytes)
    }

    /// Builds the tokenizer a GGUF file describes; see [`GgufTokenizerSpec`] for the keys.
    ///
    /// Control tokens encode as single ids wherever they appear in text. BOS is prepended
    /// when `tokenizer.ggml.add_bos_token` says so, or by the pre-tokenizer's default when the
    /// key is missing. Generation stops at EOS, EOT and the end-of-turn tokens recognised by
    /// name (`<|im_end|>`, `<|eot_id|>`, ...).
    pub fn from_gguf_spec(spec: &GgufTokenizerSpec) -> Result<Self, TokenizerError> {
        let built = gguf_bpe::build(spec)?;
        let token_text = |id: Option<u32>| id.map(|id| spec.tokens[id as usize].clone());
        let chat_template = spec
            .chat_template
            .as_deref()
            .map(|source| {
                ChatTemplate::new(
                    source,
                    token_text(spec.bos_token_id),
                    token_text(spec.eos_token_id),
                )
            })
            .transpose()?;
        let policy = Policy {
            vocab_size: spec.tokens.len(),
            bos_token_id: spec.bos_token_id,
            add_bos: spec
                .add_bos_token
                .unwrap_or_else(|| built.pre.default_add_bos()),
            eos_token_ids: [spec.eos_token_id, spec.eot_token_id]
                .into_iter()
                .flatten()
                .collect(),
            chat_template,
        };
        Ok(Self::assemble(built.inner, policy))
    }

    /// Loads `tokenizer.json` from a Hugging Face model directory, with the policy from
    /// `tokenizer_config.json` (`add_bos_token`, `bos_token`, `eos_token`, `chat_template`),
    /// `chat_template.jinja` and `generation_config.json` (`eos_token_id`) when present.
    pub fn from_hf_dir(dir: &Path) -> Result<Self, TokenizerError> {
        let read = |name: &str| -> Result<Option<Vec<u8>>, TokenizerError> {
            let path = dir.join(name);
            match std::fs::read(&path) {
                Ok(bytes) => Ok(Some(bytes)),
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(source) => Err(TokenizerError::Io { path, source }),
            }
        };
        let tokenizer_path = dir.join("tokenizer.json");
        let tokenizer_json = read("tokenizer.json")?.ok_or_else(|| TokenizerError::Io {
            path: tokenizer_path.clone(),
            source: std::io::ErrorKind::NotFound.into(),
        })?;
        let inner = tokenizers::Tokenizer::from_bytes(&tokenizer_json).map_err(|err| {
            TokenizerError::InvalidFile {
                path: tokenizer_path,
                message: err.to_string(),
            }
        })?;
        let config = match read("tokenizer_config.json")? {
            Some(bytes) => {
                parse_json::<HfTokenizerConfig>(&dir.join("tokenizer_config.json"), &bytes)?
            }
            None => HfTokenizerConfig::default(),
        };
        let generation = match read("generation_config.json")? {
            Some(bytes) => {
                parse_json::<HfGenerationConfig>(&dir.join("generation_config.json"), &bytes)?
            }
            None => HfGenerationConfig::default(),
        };
        let jinja_path = dir.join("chat_template.jinja");
        let jinja = read("chat_template.jinja")?
            .map(|bytes| {
                String::from_utf8(bytes).map_err(|err| TokenizerError::InvalidFile {
                    path: jinja_path,
                    message: err.to_string(),
                })
            })
            .transpose()?;
        Self::from_hf_parts(inner, config, generation, jinja)
    }

    /// The tokenizer as Hugging Face `tokenizer.json` text (to export a model directory).
    pub fn to_hf_json(&self) -> Result<String, TokenizerError> {
        self.inner
            .to_string(false)
            .map_err(|err| TokenizerError::InvalidFile {
                path: "tokenizer.json".into(),
                message: err.to_string(),
            })
    }

    /// Builds from in-memory `tokenizer.json` and (optionally) `tokenizer_config.json`
    /// contents; [`Tokenizer::from_hf_dir`] without the file system.
    pub fn from_hf_json(
        tokenizer_json: &[u8],
        tokenizer_config_json: Option<&[u8]>,
    ) -> Result<Self, TokenizerError> {
        let inner = tokenizers::Tokenizer::from_bytes(tokenizer_json).map_err(|err| {
            TokenizerError::InvalidFile {
                path: "tokenizer.json".into(),
                message: err.to_string(),
            }
        })?;
        let config = tokenizer_config_json
            .map(|bytes| parse_json(Path::new("tokenizer_config.json"), bytes))
            .transpose()?
            .unwrap_or_default();
        Self::from_hf_parts(inner, config, HfGenerationConfig::default(), None)
    }

    fn from_hf_parts(
        mut inner: tokenizers::Tokenizer,
        config: HfTokenizerConfig,
        generation: HfGenerationConfig,
        jinja: Option<String>,
    ) -> Result<Self, TokenizerError> {
        // A server must see the whole prompt: some tokenizer.json files ship truncation or
        // padding settings meant for training.
        inner
            .with_truncation(None)
            .map_err(|err| TokenizerError::Build(err.to_string()))?;
        inner.with_padding(None);

        let bos_text = config.bos_token.map(HfSpecialToken::into_content);
        let eos_text = config.eos_token.map(HfSpecialToken::into_content);
        let bos_token_id = bos_text.as_deref().and_then(|text| inner.token_to_id(text));
        let add_bos = match (config.add_bos_token, bos_token_id) {
            (Some(add_bos), _) => add_bos,
            // No explicit flag: Llama 3 and others put BOS in through the post-processor.
            (None, Some(bos)) => post_processor_adds(&inner, bos),
            (None, None) => false,
        };
        let mut eos_token_ids: Vec<u32> = eos_text
            .as_deref()
            .and_then(|text| inner.token_to_id(text))
            .into_iter()
            .collect();
        eos_token_ids.extend(
            generation
                .eos_token_id
                .map(OneOrMany::into_vec)
                .unwrap_or_default(),
        );
        let template_source = jinja.or_else(|| config.chat_template.and_then(HfChatTemplate::pick));
        let chat_template = template_source
            .map(|source| ChatTemplate::new(&source, bos_text.clone(), eos_text.clone()))
            .transpose()?;
        let vocab_size = inner
            .get_vocab(true)
            .values()
            .max()
            .map_or(0, |&max| max as usize + 1);
        let policy = Policy {
            vocab_size,
            bos_token_id,
            add_bos,
            eos_token_ids,
            chat_template,
        };
        Ok(Self::assemble(inner, policy))
    }

    /// Token ids for `text`. Special tokens written in the text (`<|im_start|>`) become their
    /// ids; `add_special_tokens` prepends BOS when the model asks for it.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>, TokenizerError> {
        // BOS is ours to add, so that the answer does not depend on post-processors.
        let encoding = self
            .inner
            .encode_fast(text, false)
            .map_err(|err| TokenizerError::Encode(err.to_string()))?;
        let ids = encoding.get_ids();
        let mut out = Vec::with_capacity(ids.len() + 1);
        if add_special_tokens && self.add_bos {
            out.extend(self.bos_token_id);
        }
        out.extend_from_slice(ids);
        Ok(out)
    }

    /// The text of `ids`; `skip_special_tokens` leaves out control tokens such as
    /// `<|im_end|>`. Bytes that do not form UTF-8 become U+FFFD.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String, TokenizerError> {
        for &id in ids {
            self.check_id(id)?;
        }
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|err| TokenizerError::Decode(err.to_string()))
    }

    /// Errors unless `id` is in the vocabulary; `tokenizers` itself would silently drop it.
    pub fn check_id(&self, id: u32) -> Result<(), TokenizerError> {
        if (id as usize) < self.vocab_size {
            Ok(())
        } else {
            Err(TokenizerError::TokenOutOfRange {
                id,
                vocab_size: self.vocab_size,
            })
        }
    }

    /// The number of token ids, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// The BOS id, if the model has one.
    pub fn bos_token_id(&self) -> Option<u32> {
        self.bos_token_id
    }

    /// Whether `encode(.., true)` prepends BOS.
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    /// Every id that ends generation: EOS, EOT and end-of-turn markers such as `<|im_end|>`.
    pub fn eos_token_ids(&self) -> &[u32] {
        &self.eos_token_ids
    }

    /// Whether `id` is a special (control) token, the kind `skip_special_tokens` leaves out.
    pub fn is_special(&self, id: u32) -> bool {
        self.special_ids.contains(&id)
    }

    /// The model's chat template, if it has one.
    pub fn chat_template(&self) -> Option<&ChatTemplate> {
        self.chat_template.as_ref()
    }

    /// The vocabulary entry of `id` as stored (`"Ġworld"` for byte-level BPE), as logprobs
    /// report it.
    pub fn token_to_string(&self, id: u32) -> Option<String> {
        if (id as usize) < self.vocab_size {
            self.inner.id_to_token(id)
        } else {
            None
        }
    }

    /// The raw bytes `id` stands for (`b" world"` for `"Ġworld"`), which may be part of a
    /// UTF-8 character; for the `bytes` field of logprobs. Exact for byte-level vocabularies;
    /// for others it is the token decoded on its own, which can lose a leading space.
    pub fn token_bytes(&self, id: u32) -> Option<Vec<u8>> {
        let piece = self.token_to_string(id)?;
        if self.byte_level && !self.special_ids.contains(&id) {
            if let Some(bytes) = piece.chars().map(tiny::byte_of_char).collect() {
                return Some(bytes);
            }
        }
        self.inner.decode(&[id], false).ok().map(String::into_bytes)
    }
}

/// Whether the tokenizer.json post-processor puts `bos` in front when asked to add special
/// tokens; `tokenizer_config.json` often leaves `add_bos_token` out and relies on it.
fn post_processor_adds(inner: &tokenizers::Tokenizer, bos: u32) -> bool {
    let with = inner.encode_fast("a", true);
    let without = inner.encode_fast("a", false);
    match (with, without) {
        (Ok(with), Ok(without)) => {
            with.get_ids().first() == Some(&bos) && without.get_ids().first() != Some(&bos)
        }
        _ => false,
    }
}

fn parse_json<T: serde::de::DeserializeOwned>(
    path: &Path,
    bytes: &[u8],
) -> Result<T, TokenizerError> {
    serde_json::from_slice(bytes).map_err(|err| TokenizerError::InvalidFile {
        path: path.to_path_buf(),
        message: err.to_string(),
    })
}

/// The fields of `tokenizer_config.json` we use; the rest is training configuration.
#[derive(Debug, Default, Deserialize)]
struct HfTokenizerConfig {
    add_bos_token: Option<bool>,
    bos_token: Option<HfSpecialToken>,
    eos_token: Option<HfSpecialToken>,
    chat_template: Option<HfChatTemplate>,
}

/// Special tokens appear either as plain strings or as serialized `AddedToken` objects.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum HfSpecialToken {
    Text(String),
    Object { content: String },
}

impl HfSpecialToken {
    fn into_content(self) -> String {
        match self {
            Self::Text(content) | Self::Object { content } => content,
        }
    }
}

/// A single template, or a list of named ones of which `default` is the chat template.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum HfChatTemplate {
    Single(String),
    Named(Vec<HfNamedTemplate>),
}

#[derive(Debug, Deserialize)]
struct HfNamedTemplate {
    name: String,
    template: String,
}

impl HfChatTemplate {
    fn pick(self) -> Option<String> {
        match self {
            Self::Single(template) => Some(template),
            Self::Named(templates) => templates
                .into_iter()
                .find(|named| named.name == "default")
                .map(|named| named.template),
        }
    }
}

/// `generation_config.json`: the authoritative list of stop ids for many instruct models.
#[derive(Debug, Default, Deserialize)]
struct HfGenerationConfig {
    eos_token_id: Option<OneOrMany>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(u32),
    Many(Vec<u32>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<u32> {
        match self {
            Self::One(id) => vec![id],
            Self::Many(ids) => ids,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sentencepiece-style (Metaspace) tokenizer.json: "▁" marks spaces, decoding strips the
    /// first one, and BOS comes from the post-processor.
    pub(super) const METASPACE_TOKENIZER_JSON: &str = r#"{
            "version": "1.0",
            "added_tokens": [
                {"id": 0, "content": "<unk>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
                {"id": 1, "content": "<s>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}
            ],
            "normalizer": {"type": "Sequence", "normalizers": [
                {"type": "Prepend", "prepend": "▁"},
                {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}
            ]},
            "pre_tokenizer": null,
            "post_processor": {"type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 0}}],
                "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}},
            "decoder": {"type": "Sequence", "decoders": [
                {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
                {"type": "ByteFallback"},
                {"type": "Fuse"},
                {"type": "Strip", "content": " ", "start": 1, "stop": 0}
            ]},
            "model": {"type": "BPE", "dropout": null, "unk_token": "<unk>", "continuing_subword_prefix": null,
                "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
                "vocab": {"<unk>": 0, "<s>": 1, "▁": 2, "h": 3, "i": 4, "w": 5, "o": 6, "r": 7, "l": 8, "d": 9,
                          "▁h": 10, "▁hi": 11, "▁w": 12, "▁wo": 13, "▁wor": 14, "▁worl": 15, "▁world": 16},
                "merges": ["▁ h", "▁h i", "▁ w", "▁w o", "▁wo r", "▁wor l", "▁worl d"]}
        }"#;

    /// [`METASPACE_TOKENIZER_JSON`] with `<s>` as BOS.
    pub(super) fn metaspace_tokenizer() -> Tokenizer {
        Tokenizer::from_hf_json(
            METASPACE_TOKENIZER_JSON.as_bytes(),
            Some(br#"{"bos_token": "<s>"}"#),
        )
        .unwrap()
    }

    /// A fresh directory under the system temp dir, removed when dropped.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> Self {
            let path = std::env::temp_dir()
                .join(format!("waypoint-tokenizer-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&path);
            std::fs::create_dir_all(&path).unwrap();
            Self(path)
        }

        fn write(&self, name: &str, content: &str) {
            std::fs::write(self.0.join(name), content).unwrap();
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn hf_dir_reads_the_configs() {
        let dir = TempDir::new("configs");
        dir.write("tokenizer.json", METASPACE_TOKENIZER_JSON);
        dir.write(
            "tokenizer_config.json",
            r#"{
                "add_bos_token": false,
                "bos_token": {"__type": "AddedToken", "content": "<s>", "lstrip": false},
                "eos_token": "<unk>",
                "model_max_length": 1000000000000000019884624838656,
                "chat_template": [
                    {"name": "tool_use", "template": "tools"},
                    {"name": "default", "template": "{{ bos_token }}{{ messages[0].content }}"}
                ]
            }"#,
        );
        dir.write("generation_config.json", r#"{"eos_token_id": [0, 16]}"#);
        let tok = Tokenizer::from_hf_dir(&dir.0).unwrap();
        assert_eq!(tok.bos_token_id(), Some(1));
        // The explicit flag beats the post-processor.
        assert!(!tok.add_bos());
        assert_eq!(tok.encode("hi", true).unwrap(), [11]);
        assert_eq!(tok.eos_token_ids(), &[0, 16]);
        assert_eq!(tok.vocab_size(), 17);
        let rendered = tok
            .chat_template()
            .unwrap()
            .render(&[ChatMessage::new("user", "x")], false)
            .unwrap();
        assert_eq!(rendered, "<s>x");

        // chat_template.jinja, the newer place for the template, wins.
        dir.write("chat_template.jinja", "[{{ messages[0].content }}]");
        let tok = Tokenizer::from_hf_dir(&dir.0).unwrap();
        let rendered = tok
            .chat_template()
            .unwrap()
            .render(&[ChatMessage::new("user", "x")], false)
            .unwrap();
        assert_eq!(rendered, "[x]");
    }

    #[test]
    fn hf_dir_errors_name_the_file() {
        let dir = TempDir::new("errors");
        let missing = Tokenizer::from_hf_dir(&dir.0).unwrap_err();
        assert!(matches!(missing, TokenizerError::Io { .. }));
        assert!(missing.to_string().contains("tokenizer.json"), "{missing}");

        dir.write("tokenizer.json", "{ not json");
        let broken = Tokenizer::from_hf_dir(&dir.0).unwrap_err();
        assert!(matches!(broken, TokenizerError::InvalidFile { .. }));
        assert!(broken.to_string().contains("tokenizer.json"), "{broken}");

        dir.write("tokenizer.json", METASPACE_TOKENIZER_JSON);
        dir.write("tokenizer_config.json", r#"{"add_bos_token": "yes"}"#);
        let config = Tokenizer::from_hf_dir(&dir.0).unwrap_err();
        assert!(
            config.to_string().contains("tokenizer_config.json"),
            "{config}"
        );
    }

    #[test]
    fn byte_level_token_bytes() {
        let tok = Tokenizer::tiny();
        // 0xE2 alone is not text; logprobs still need its byte.
        assert_eq!(tok.token_bytes(0xE2), Some(vec![0xE2]));
        assert_eq!(
            tok.token_bytes(TINY_IM_END_ID),
            Some(b"<|im_end|>".to_vec())
        );
        assert_eq!(tok.token_bytes(TINY_VOCAB_SIZE as u32), None);
        let metaspace = metaspace_tokenizer();
        assert_eq!(metaspace.token_bytes(16), Some(b"world".to_vec()));
    }
}
