//! A byte-level tokenizer for the built-in random-weight test model.
//!
//! One token per byte, in byte order, spelled with GPT-2's byte-to-character alphabet (so it
//! goes through the same `ByteLevel` machinery as real BPE vocabularies), followed by four
//! special tokens. There are no merges: every UTF-8 text round-trips, and a multi-byte
//! character always spans several tokens, which is what streaming tests need.

use tokenizers::decoders::byte_level::ByteLevel;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::AddedToken;

use super::{ChatTemplate, Policy, Tokenizer};

/// The byte tokens: id `b` is byte `b`.
pub const TINY_NUM_BYTE_TOKENS: usize = 256;
/// `<|bos|>`, prepended when encoding with special tokens.
pub const TINY_BOS_ID: u32 = 256;
/// `<|eos|>`.
pub const TINY_EOS_ID: u32 = 257;
/// `<|im_start|>`, opening a chat turn.
pub const TINY_IM_START_ID: u32 = 258;
/// `<|im_end|>`, closing a chat turn; also ends generation.
pub const TINY_IM_END_ID: u32 = 259;
/// The whole vocabulary: bytes and special tokens.
pub const TINY_VOCAB_SIZE: usize = 260;

const SPECIAL_TOKENS: [(&str, u32); 4] = [
    ("<|bos|>", TINY_BOS_ID),
    ("<|eos|>", TINY_EOS_ID),
    ("<|im_start|>", TINY_IM_START_ID),
    ("<|im_end|>", TINY_IM_END_ID),
];

/// ChatML, as SmolLM2 writes it but without a default system prompt, which would only
/// lengthen every test prompt.
const CHAT_TEMPLATE: &str = "{% for message in messages %}\
{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}\
{% endfor %}\
{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// GPT-2's byte alphabet: printable Latin-1 bytes stand for themselves, the other 68 bytes
/// (controls, space, DEL, NBSP, soft hyphen) are moved to U+0100 onwards, in byte order, so
/// that no token contains whitespace or control characters.
pub(super) fn char_of_byte(byte: u8) -> char {
    if is_printable(byte) {
        char::from(byte)
    } else {
        let shifted = (0..byte).filter(|&b| !is_printable(b)).count() as u32;
        // 256 + at most 67 is always a valid scalar value.
        char::from_u32(256 + shifted).unwrap_or(char::REPLACEMENT_CHARACTER)
    }
}

/// The inverse of [`char_of_byte`]; `None` for characters outside the alphabet.
pub(super) fn byte_of_char(c: char) -> Option<u8> {
    let code = u32::from(c);
    if let Ok(byte) = u8::try_from(code) {
        return is_printable(byte).then_some(byte);
    }
    let shifted = code.checked_sub(256)? as usize;
    (0..=u8::MAX).filter(|&b| !is_printable(b)).nth(shifted)
}

fn is_printable(byte: u8) -> bool {
    matches!(byte, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF)
}

impl Tokenizer {
    /// The tokenizer of the built-in test model: [`TINY_VOCAB_SIZE`] tokens (one per byte,
    /// then `<|bos|>`, `<|eos|>`, `<|im_start|>`, `<|im_end|>`), BOS prepended, generation
    /// ending at `<|eos|>` or `<|im_end|>`, and a ChatML chat template.
    pub fn tiny() -> Self {
        let vocab: Vocab = (0..=u8::MAX)
            .map(|byte| (char_of_byte(byte).to_string(), u32::from(byte)))
            .chain(
                SPECIAL_TOKENS
                    .iter()
                    .map(|&(text, id)| (text.to_string(), id)),
            )
            .collect();
        // A vocabulary without merges has nothing the builder could reject.
        let model = BPE::new(vocab, Vec::new());
        let mut inner = tokenizers::Tokenizer::new(model);
        inner.with_pre_tokenizer(Some(ByteLevel::new(false, true, false)));
        inner.with_decoder(Some(ByteLevel::new(false, true, false)));
        let special: Vec<AddedToken> = SPECIAL_TOKENS
            .iter()
            .map(|&(text, _)| AddedToken::from(text, true))
            .collect();
        inner.add_special_tokens(&special);
        let chat_template = ChatTemplate::new(
            CHAT_TEMPLATE,
            Some("<|bos|>".to_string()),
            Some("<|eos|>".to_string()),
        )
        // A constant template; `chat_template_renders_chatml` below keeps it compiling.
        .expect("the tiny chat template compiles");
        let policy = Policy {
            vocab_size: TINY_VOCAB_SIZE,
            bos_token_id: Some(TINY_BOS_ID),
            add_bos: true,
            eos_token_ids: vec![TINY_EOS_ID, TINY_IM_END_ID],
            chat_template: Some(chat_template),
        };
        Self::assemble(inner, policy)
    }
}

#[cfg(test)]
mod tests {
    use super::super::{ChatMessage, TokenizerError};
    use super::*;

    #[test]
    fn byte_alphabet_is_a_bijection() {
        let chars: std::collections::HashSet<char> = (0..=u8::MAX).map(char_of_byte).collect();
        assert_eq!(chars.len(), 256);
        for byte in 0..=u8::MAX {
            assert_eq!(byte_of_char(char_of_byte(byte)), Some(byte));
        }
        assert_eq!(char_of_byte(b' '), 'Ġ');
        assert_eq!(char_of_byte(b'\n'), 'Ċ');
        assert_eq!(byte_of_char('€'), None);
    }

    #[test]
    fn vocabulary_layout() {
        let tok = Tokenizer::tiny();
        assert_eq!(tok.vocab_size(), TINY_VOCAB_SIZE);
        assert_eq!(tok.bos_token_id(), Some(TINY_BOS_ID));
        assert_eq!(tok.eos_token_ids(), &[TINY_EOS_ID, TINY_IM_END_ID]);
        assert_eq!(tok.encode("A", false).unwrap(), vec![u32::from(b'A')]);
        assert_eq!(tok.token_to_string(u32::from(b' ')).as_deref(), Some("Ġ"));
        assert_eq!(
            tok.token_to_string(TINY_IM_END_ID).as_deref(),
            Some("<|im_end|>")
        );
        assert_eq!(tok.token_to_string(TINY_VOCAB_SIZE as u32), None);
        assert_eq!(tok.token_bytes(u32::from(b' ')), Some(vec![b' ']));
        assert_eq!(tok.token_bytes(0xF0), Some(vec![0xF0]));
        assert!(tok.is_special(TINY_IM_START_ID));
        assert!(!tok.is_special(u32::from(b'<')));
    }

    #[test]
    fn any_text_round_trips() {
        let tok = Tokenizer::tiny();
        for text in [
            "",
            "hello world",
            "  leading and trailing  ",
            "tabs\tand\r\nnewlines\n",
            "naïve café, 中文字符, emoji 🚀🔥 and a ZWJ family 👨‍👩‍👧",
            "\u{0}\u{1f}\u{7f}\u{a0}\u{ad}",
        ] {
            let ids = tok.encode(text, false).unwrap();
            assert_eq!(ids.len(), text.len(), "one token per byte for {text:?}");
            assert!(ids
                .iter()
                .zip(text.bytes())
                .all(|(&id, b)| id == u32::from(b)));
            assert_eq!(tok.decode(&ids, false).unwrap(), text);
        }
    }

    #[test]
    fn special_tokens_and_bos() {
        let tok = Tokenizer::tiny();
        let ids = tok.encode("<|im_start|>hi<|im_end|>", true).unwrap();
        assert_eq!(
            ids,
            vec![
                TINY_BOS_ID,
                TINY_IM_START_ID,
                u32::from(b'h'),
                u32::from(b'i'),
                TINY_IM_END_ID
            ]
        );
        assert_eq!(tok.decode(&ids, true).unwrap(), "hi");
        assert_eq!(
            tok.decode(&ids, false).unwrap(),
            "<|bos|><|im_start|>hi<|im_end|>"
        );
    }

    #[test]
    fn decode_rejects_unknown_ids() {
        let tok = Tokenizer::tiny();
        let err = tok.decode(&[u32::from(b'a'), 260], false).unwrap_err();
        assert!(matches!(
            err,
            TokenizerError::TokenOutOfRange {
                id: 260,
                vocab_size: 260
            }
        ));
        assert!(err.to_string().contains("260"));
    }

    #[test]
    fn chat_template_renders_chatml() {
        let tok = Tokenizer::tiny();
        let messages = [
            ChatMessage::new("system", "Be brief."),
            ChatMessage::new("user", "Hi"),
        ];
        let text = tok
            .chat_template()
            .unwrap()
            .render(&messages, true)
            .unwrap();
        assert_eq!(
            text,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
        let ids = tok.encode(&text, true).unwrap();
        assert_eq!(ids[..2], [TINY_BOS_ID, TINY_IM_START_ID]);
        assert_eq!(ids.iter().filter(|&&id| id == TINY_IM_END_ID).count(), 2);
    }
}
