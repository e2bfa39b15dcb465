//! Byte-level BPE built from the tokenizer metadata a GGUF file carries.
//!
//! GGUF stores no `tokenizer.json`, only the pieces (`tokenizer.ggml.*`): the vocabulary, the
//! merges, a type per token and the *name* of the pre-tokenizer (`tokenizer.ggml.pre`). The
//! pre-tokenizer itself lives in the code of whoever reads the file; the regexes here are the
//! ones llama.cpp applies for each name (`src/llama-vocab.cpp`), which in turn reproduce the
//! `tokenizer.json` of the original Hugging Face model. Each regex is applied to the pieces the
//! previous one produced, keeping unmatched stretches as pieces of their own; that is exactly a
//! sequence of `Split` pre-tokenizers with `Isolated` behaviour followed by a byte-level mapping.

use tokenizers::decoders::byte_level::ByteLevel;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, SplitDelimiterBehavior};

use super::TokenizerError;

/// What a GGUF file says about its tokenizer; the GGUF reader fills this in from the
/// `tokenizer.*` metadata keys.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GgufTokenizerSpec {
    /// `tokenizer.ggml.model`: `"gpt2"` is byte-level BPE, the only family supported so far.
    pub model: String,
    /// `tokenizer.ggml.pre`: the name of the pre-tokenizer (see [`GgufPreTokenizer`]).
    pub pre: Option<String>,
    /// `tokenizer.ggml.tokens`: the vocabulary, indexed by token id.
    pub tokens: Vec<String>,
    /// `tokenizer.ggml.token_type`: one [`GgufTokenType`] code per token.
    pub token_types: Option<Vec<i32>>,
    /// `tokenizer.ggml.merges`: BPE merges by priority, each `"left right"`.
    pub merges: Vec<String>,
    /// `tokenizer.ggml.bos_token_id`.
    pub bos_token_id: Option<u32>,
    /// `tokenizer.ggml.eos_token_id`.
    pub eos_token_id: Option<u32>,
    /// `tokenizer.ggml.eot_token_id` (end of turn, e.g. `<|eot_id|>`).
    pub eot_token_id: Option<u32>,
    /// `tokenizer.ggml.add_bos_token`; when absent the pre-tokenizer's default applies.
    pub add_bos_token: Option<bool>,
    /// `tokenizer.chat_template`: the Jinja chat template.
    pub chat_template: Option<String>,
}

/// The token kinds of `tokenizer.ggml.token_type` (llama.cpp's `llama_token_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgufTokenType {
    /// A piece of ordinary text.
    Normal,
    /// The unknown token.
    Unknown,
    /// A control token such as `<|im_start|>`: matched whole in text, skipped when decoding
    /// with `skip_special_tokens`.
    Control,
    /// A token added by the model's authors (`<think>`, `<tool_call>`): matched whole in text,
    /// always shown when decoding.
    UserDefined,
    /// A placeholder that is never produced.
    Unused,
    /// A raw byte (`<0x0A>`); only sentencepiece vocabularies have these.
    Byte,
}

impl GgufTokenType {
    /// Maps a `tokenizer.ggml.token_type` code; `None` for codes the format does not define.
    pub fn from_code(code: i32) -> Option<Self> {
        Some(match code {
            1 => Self::Normal,
            2 => Self::Unknown,
            3 => Self::Control,
            4 => Self::UserDefined,
            5 => Self::Unused,
            6 => Self::Byte,
            _ => return None,
        })
    }
}

/// The pre-tokenizers (`tokenizer.ggml.pre`) this module knows how to rebuild.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgufPreTokenizer {
    /// llama.cpp's fallback for BPE files without a name.
    Default,
    /// GPT-2's regex.
    Gpt2,
    /// Llama 3 (`llama-bpe`): digits in groups of up to three, whole-word vocabulary hits
    /// bypass the merges.
    Llama3,
    /// Qwen 2: like Llama 3 but with single digits.
    Qwen2,
    /// SmolLM (and StarCoder): single digits, then GPT-2's regex.
    Smollm,
}

/// Every accepted `tokenizer.ggml.pre` value with the pre-tokenizer it selects. The aliases
/// are the names llama.cpp maps to the same regexes and options.
const PRE_TOKENIZER_NAMES: &[(&str, GgufPreTokenizer)] = &[
    ("default", GgufPreTokenizer::Default),
    ("gpt2", GgufPreTokenizer::Gpt2),
    ("gpt-2", GgufPreTokenizer::Gpt2),
    ("phi-2", GgufPreTokenizer::Gpt2),
    ("mpt", GgufPreTokenizer::Gpt2),
    ("olmo", GgufPreTokenizer::Gpt2),
    ("llama-bpe", GgufPreTokenizer::Llama3),
    ("llama3", GgufPreTokenizer::Llama3),
    ("llama-v3", GgufPreTokenizer::Llama3),
    ("qwen2", GgufPreTokenizer::Qwen2),
    ("deepseek-r1-qwen", GgufPreTokenizer::Qwen2),
    ("stablelm2", GgufPreTokenizer::Qwen2),
    ("smollm", GgufPreTokenizer::Smollm),
    ("starcoder", GgufPreTokenizer::Smollm),
    ("refact", GgufPreTokenizer::Smollm),
    ("codeshell", GgufPreTokenizer::Smollm),
];

const GPT2_REGEX: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";

// The `(?i:...)` contractions of the original tokenizer.json files, spelled out as llama.cpp
// does so that the same text works with any regex engine.
const LLAMA3_REGEX: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

const QWEN2_REGEX: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

impl GgufPreTokenizer {
    /// Resolves `tokenizer.ggml.pre`. A missing name means [`GgufPreTokenizer::Default`], as
    /// in llama.cpp; an unknown one is an error that lists the names we accept, since guessing
    /// would silently produce different token ids than the model was trained on.
    pub fn from_name(name: Option<&str>) -> Result<Self, TokenizerError> {
        let Some(name) = name else {
            return Ok(Self::Default);
        };
        PRE_TOKENIZER_NAMES
            .iter()
            .find(|(known, _)| *known == name)
            .map(|(_, pre)| *pre)
            .ok_or_else(|| TokenizerError::UnsupportedPreTokenizer {
                name: name.to_string(),
                supported: Self::supported_names().join(", "),
            })
    }

    /// The `tokenizer.ggml.pre` values [`GgufPreTokenizer::from_name`] accepts.
    pub fn supported_names() -> Vec<&'static str> {
        PRE_TOKENIZER_NAMES.iter().map(|(name, _)| *name).collect()
    }

    /// The split regexes, applied in order.
    fn regexes(self) -> &'static [&'static str] {
        match self {
            Self::Default => &[
                r"[\p{P}\$\+<=>\^~\|]+",
                GPT2_REGEX,
                r"\p{N}+",
                "[0-9][0-9][0-9]",
            ],
            Self::Gpt2 => &[GPT2_REGEX],
            Self::Llama3 => &[LLAMA3_REGEX],
            Self::Qwen2 => &[QWEN2_REGEX],
            Self::Smollm => &[r"\p{N}", GPT2_REGEX],
        }
    }

    /// Llama 3's tokenizer takes a whole piece straight from the vocabulary when it is there,
    /// which can differ from what the merges would build.
    fn ignore_merges(self) -> bool {
        self == Self::Llama3
    }

    /// Whether BOS is prepended when the file has no `tokenizer.ggml.add_bos_token`
    /// (llama.cpp's default for each pre-tokenizer).
    pub fn default_add_bos(self) -> bool {
        self == Self::Llama3
    }
}

/// A `tokenizers::Tokenizer` for a GGUF vocabulary, with the facts the wrapper needs.
pub(super) struct GgufBpe {
    pub(super) inner: tokenizers::Tokenizer,
    pub(super) pre: GgufPreTokenizer,
}

/// Builds the byte-level BPE tokenizer described by `spec`; ids, merges and special tokens are
/// checked so that a damaged file fails here with a message instead of encoding wrongly later.
pub(super) fn build(spec: &GgufTokenizerSpec) -> Result<GgufBpe, TokenizerError> {
    match spec.model.as_str() {
        "gpt2" => {}
        "llama" => {
            return Err(TokenizerError::UnsupportedModel(
                "`llama` (sentencepiece) vocabularies are not supported yet; only `gpt2` \
                 (byte-level BPE) is"
                    .to_string(),
            ))
        }
        other => {
            return Err(TokenizerError::UnsupportedModel(format!(
                "`{other}` is not supported; only `gpt2` (byte-level BPE) is"
            )))
        }
    }
    let pre = GgufPreTokenizer::from_name(spec.pre.as_deref())?;
    if spec.tokens.is_empty() {
        return Err(invalid("tokenizer.ggml.tokens is empty"));
    }
    let n_tokens = spec.tokens.len();
    if u32::try_from(n_tokens).is_err() {
        return Err(invalid(format!(
            "tokenizer.ggml.tokens has {n_tokens} entries, more than token ids can address"
        )));
    }
    let types = token_types(spec)?;

    // Later duplicates win, as in llama.cpp's `token_to_id`; a duplicated piece is rare and
    // only ever an unreachable placeholder.
    let vocab: Vocab = spec
        .tokens
        .iter()
        .enumerate()
        .map(|(id, token)| (token.clone(), id as u32))
        .collect();
    let merges = spec
        .merges
        .iter()
        .enumerate()
        .map(|(i, merge)| {
            merge
                .split_once(' ')
                .map(|(left, right)| (left.to_string(), right.to_string()))
                .ok_or_else(|| {
                    invalid(format!(
                        "tokenizer.ggml.merges[{i}] = {merge:?} is not two pieces separated by a space"
                    ))
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let model = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .ignore_merges(pre.ignore_merges())
        .build()
        .map_err(|err| invalid(format!("tokenizer.ggml.merges: {err}")))?;

    let mut inner = tokenizers::Tokenizer::new(model);
    inner.with_pre_tokenizer(Some(pre_tokenizer(pre)?));
    inner.with_decoder(Some(ByteLevel::new(false, true, false)));

    // Only control and user-defined tokens are matched whole inside text; splitting them out
    // before the regexes run is what makes "<|im_start|>" one id instead of seven. User-defined
    // ones are not special so that `skip_special_tokens` keeps them, as llama.cpp does.
    let added: Vec<AddedToken> = spec
        .tokens
        .iter()
        .zip(&types)
        .filter_map(|(token, kind)| match kind {
            GgufTokenType::Control | GgufTokenType::Unknown => Some(AddedToken::from(token, true)),
            GgufTokenType::UserDefined => Some(AddedToken::from(token, false).normalized(false)),
            _ => None,
        })
        .collect();
    inner.add_special_tokens(&added);
    Ok(GgufBpe { inner, pre })
}

/// One type per token; files without `tokenizer.ggml.token_type` get their BOS/EOS/EOT ids
/// marked as control so that chat markers still encode as single tokens.
fn token_types(spec: &GgufTokenizerSpec) -> Result<Vec<GgufTokenType>, TokenizerError> {
    let n_tokens = spec.tokens.len();
    for (key, id) in [
        ("bos_token_id", spec.bos_token_id),
        ("eos_token_id", spec.eos_token_id),
        ("eot_token_id", spec.eot_token_id),
    ] {
        if let Some(id) = id.filter(|&id| id as usize >= n_tokens) {
            return Err(invalid(format!(
                "tokenizer.ggml.{key} = {id} is outside the vocabulary of {n_tokens} tokens"
            )));
        }
    }
    let Some(codes) = &spec.token_types else {
        let mut types = vec![GgufTokenType::Normal; n_tokens];
        for id in [spec.bos_token_id, spec.eos_token_id, spec.eot_token_id]
            .into_iter()
            .flatten()
        {
            types[id as usize] = GgufTokenType::Control;
        }
        return Ok(types);
    };
    if codes.len() != n_tokens {
        return Err(invalid(format!(
            "tokenizer.ggml.token_type has {} entries but tokenizer.ggml.tokens has {n_tokens}",
            codes.len()
        )));
    }
    codes
        .iter()
        .enumerate()
        .map(|(id, &code)| {
            GgufTokenType::from_code(code).ok_or_else(|| {
                invalid(format!(
                    "tokenizer.ggml.token_type[{id}] = {code} is not a known token type (1..=6)"
                ))
            })
        })
        .collect()
}

fn pre_tokenizer(pre: GgufPreTokenizer) -> Result<PreTokenizerWrapper, TokenizerError> {
    let mut steps = pre
        .regexes()
        .iter()
        .map(|regex| {
            Split::new(
                SplitPattern::Regex((*regex).to_string()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map(PreTokenizerWrapper::from)
            .map_err(|err| TokenizerError::Build(format!("pre-tokenizer regex {regex:?}: {err}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    // The regexes have already split the text; this step only maps bytes to the GPT-2 alphabet.
    steps.push(ByteLevel::new(false, true, false).into());
    Ok(Sequence::new(steps).into())
}

fn invalid(message: impl Into<String>) -> TokenizerError {
    TokenizerError::InvalidGgufSpec(message.into())
}

#[cfg(test)]
mod tests {
    use super::super::tiny::char_of_byte;
    use super::super::Tokenizer;
    use super::*;

    const NORMAL: i32 = 1;
    const CONTROL: i32 = 3;
    const USER_DEFINED: i32 = 4;

    /// A GPT-2 style vocabulary: the 256 byte pieces, a few merged pieces, then specials.
    fn spec(pre: &str) -> GgufTokenizerSpec {
        let merges = [
            "h e", "l l", "he ll", "hell o", "Ġ hello", "Ġ w", "o r", "Ġw or", "Ġwor l", "Ġworl d",
            "2 0", "20 2", "202 4", "' s",
        ];
        let mut tokens: Vec<String> = (0..=u8::MAX).map(|b| char_of_byte(b).to_string()).collect();
        tokens.extend(merges.iter().map(|merge| merge.replace(' ', "")));
        // Reachable only through `ignore_merges`.
        tokens.push("abc".to_string());
        let mut token_types = vec![NORMAL; tokens.len()];
        for (text, kind) in [
            ("<|endoftext|>", CONTROL),
            ("<|im_start|>", CONTROL),
            ("<|im_end|>", CONTROL),
            ("<think>", USER_DEFINED),
        ] {
            tokens.push(text.to_string());
            token_types.push(kind);
        }
        GgufTokenizerSpec {
            model: "gpt2".to_string(),
            pre: Some(pre.to_string()),
            bos_token_id: Some(id_in(&tokens, "<|im_start|>")),
            eos_token_id: Some(id_in(&tokens, "<|endoftext|>")),
            tokens,
            token_types: Some(token_types),
            merges: merges.iter().map(|merge| merge.to_string()).collect(),
            ..GgufTokenizerSpec::default()
        }
    }

    fn id_in(tokens: &[String], text: &str) -> u32 {
        tokens.iter().position(|token| token == text).unwrap() as u32
    }

    fn pieces(tok: &Tokenizer, text: &str) -> Vec<String> {
        tok.encode(text, false)
            .unwrap()
            .into_iter()
            .map(|id| tok.token_to_string(id).unwrap())
            .collect()
    }

    #[test]
    fn merges_and_byte_level_round_trip() {
        let tok = Tokenizer::from_gguf_spec(&spec("gpt2")).unwrap();
        assert_eq!(pieces(&tok, "hello world"), ["hello", "Ġworld"]);
        assert_eq!(pieces(&tok, "hello hello's"), ["hello", "Ġhello", "'s"]);
        for text in ["hello world", "  x\t\n🚀 naïve", "hello<|im_end|>", ""] {
            let ids = tok.encode(text, false).unwrap();
            assert_eq!(tok.decode(&ids, false).unwrap(), text);
        }
    }

    #[test]
    fn digits_follow_the_pre_tokenizer() {
        let cases = [
            ("gpt2", vec!["2024"]),
            ("default", vec!["202", "4"]),
            ("smollm", vec!["2", "0", "2", "4"]),
            ("qwen2", vec!["2", "0", "2", "4"]),
            ("llama-bpe", vec!["202", "4"]),
        ];
        for (pre, expected) in cases {
            let tok = Tokenizer::from_gguf_spec(&spec(pre)).unwrap();
            assert_eq!(pieces(&tok, "2024"), expected, "pre-tokenizer {pre}");
        }
    }

    #[test]
    fn llama3_takes_whole_words_from_the_vocabulary() {
        let llama3 = Tokenizer::from_gguf_spec(&spec("llama-bpe")).unwrap();
        assert_eq!(pieces(&llama3, "abc"), ["abc"]);
        let gpt2 = Tokenizer::from_gguf_spec(&spec("gpt2")).unwrap();
        assert_eq!(pieces(&gpt2, "abc"), ["a", "b", "c"]);
    }

    #[test]
    fn control_and_user_defined_tokens() {
        let tok = Tokenizer::from_gguf_spec(&spec("smollm")).unwrap();
        let s = spec("smollm");
        let im_start = id_in(&s.tokens, "<|im_start|>");
        let im_end = id_in(&s.tokens, "<|im_end|>");
        let think = id_in(&s.tokens, "<think>");
        let ids = tok
            .encode("<|im_start|>he<think>he<|im_end|>", false)
            .unwrap();
        let he = tok.encode("he", false).unwrap()[0];
        assert_eq!(ids, [im_start, he, think, he, im_end]);
        assert!(tok.is_special(im_start) && !tok.is_special(think));
        // Control tokens are skipped on request, user-defined ones are text.
        assert_eq!(tok.decode(&ids, true).unwrap(), "he<think>he");
        assert_eq!(
            tok.decode(&ids, false).unwrap(),
            "<|im_start|>he<think>he<|im_end|>"
        );
    }

    #[test]
    fn bos_and_stop_ids() {
        let s = spec("smollm");
        let tok = Tokenizer::from_gguf_spec(&s).unwrap();
        let bos = s.bos_token_id.unwrap();
        // Neither the file nor smollm asks for BOS.
        assert!(!tok.add_bos());
        assert_eq!(tok.encode("he", true).unwrap().len(), 1);
        let eos = s.eos_token_id.unwrap();
        let im_end = id_in(&s.tokens, "<|im_end|>");
        assert_eq!(tok.eos_token_ids(), &[eos, im_end]);

        let llama3 = Tokenizer::from_gguf_spec(&spec("llama-bpe")).unwrap();
        assert_eq!(llama3.encode("he", true).unwrap()[0], bos);
        let explicit = Tokenizer::from_gguf_spec(&GgufTokenizerSpec {
            add_bos_token: Some(false),
            eot_token_id: Some(im_end),
            ..spec("llama-bpe")
        })
        .unwrap();
        assert_eq!(explicit.encode("he", true).unwrap().len(), 1);
        assert_eq!(explicit.eos_token_ids(), &[eos, im_end]);
        assert_eq!(explicit.vocab_size(), s.tokens.len());
    }

    #[test]
    fn chat_template_sees_the_special_token_texts() {
        let tok = Tokenizer::from_gguf_spec(&GgufTokenizerSpec {
            chat_template: Some("{{ bos_token }}{{ messages[0].content }}{{ eos_token }}".into()),
            ..spec("gpt2")
        })
        .unwrap();
        let text = tok
            .chat_template()
            .unwrap()
            .render(&[super::super::ChatMessage::new("user", "he")], false)
            .unwrap();
        assert_eq!(text, "<|im_start|>he<|endoftext|>");
    }

    #[test]
    fn missing_token_types_still_make_bos_and_eos_special() {
        let s = GgufTokenizerSpec {
            token_types: None,
            ..spec("gpt2")
        };
        let tok = Tokenizer::from_gguf_spec(&s).unwrap();
        let ids = tok.encode("<|im_start|>he", false).unwrap();
        assert_eq!(ids[0], s.bos_token_id.unwrap());
        assert_eq!(ids.len(), 2);
    }

    #[test]
    fn unsupported_and_invalid_specs_are_clear_errors() {
        let err = |spec: GgufTokenizerSpec| Tokenizer::from_gguf_spec(&spec).unwrap_err();

        let unknown = err(spec("klingon"));
        assert!(matches!(
            unknown,
            TokenizerError::UnsupportedPreTokenizer { .. }
        ));
        let message = unknown.to_string();
        for name in ["klingon", "smollm", "llama-bpe", "qwen2", "gpt2", "default"] {
            assert!(message.contains(name), "{message}");
        }

        let spm = err(GgufTokenizerSpec {
            model: "llama".into(),
            ..spec("default")
        });
        assert!(matches!(spm, TokenizerError::UnsupportedModel(_)));
        assert!(spm.to_string().contains("sentencepiece"), "{spm}");

        let mut bad_merge = spec("gpt2");
        bad_merge.merges.push("x yz".into());
        assert!(err(bad_merge).to_string().contains("yz"));

        let mut no_space = spec("gpt2");
        no_space.merges.push("xy".into());
        assert!(err(no_space).to_string().contains("merges["));

        let mut short_types = spec("gpt2");
        short_types.token_types.as_mut().unwrap().pop();
        assert!(err(short_types).to_string().contains("token_type"));

        let mut bad_type = spec("gpt2");
        bad_type.token_types.as_mut().unwrap()[0] = 9;
        assert!(err(bad_type).to_string().contains("token_type[0] = 9"));

        let out_of_range = err(GgufTokenizerSpec {
            eos_token_id: Some(1_000_000),
            ..spec("gpt2")
        });
        assert!(out_of_range.to_string().contains("eos_token_id"));

        let empty = err(GgufTokenizerSpec {
            model: "gpt2".into(),
            ..GgufTokenizerSpec::default()
        });
        assert!(matches!(empty, TokenizerError::InvalidGgufSpec(_)));

        let template = err(GgufTokenizerSpec {
            chat_template: Some("{% if %}".into()),
            ..spec("gpt2")
        });
        assert!(matches!(template, TokenizerError::TemplateSyntax(_)));
    }
}
