//! Streaming detokenization: text for each new token as it is generated.
//!
//! Decoding one token at a time does not work: a byte-level token may hold a fragment of a
//! UTF-8 character, and sentencepiece-style decoders drop the leading space of whatever comes
//! first. So, like vLLM and TGI, we decode a short window twice: the *prefix* (tokens already
//! emitted, for context) and the prefix plus the *pending* tokens; the difference is the new
//! text. It is held back while it ends in U+FFFD, the mark of an unfinished character.
//!
//! ```text
//!   tokens:  ... | prefix (emitted, context) | pending (not yet emitted) |
//!                ^ dropped                   ^ read_offset
//! ```
//!
//! Once text is emitted the pending tokens become the next prefix and older tokens are
//! dropped, so each push decodes a handful of tokens however long the output grows.

use super::{Tokenizer, TokenizerError};

/// How many prompt tokens give the first generated token its context (vLLM uses 5 too).
const PROMPT_CONTEXT_TOKENS: usize = 5;

/// How many tokens may wait for their character to complete. A UTF-8 character needs at most
/// four bytes, so a longer run ending in U+FFFD is invalid output, not an unfinished
/// character; it is emitted as is rather than growing the window forever.
const MAX_PENDING_TOKENS: usize = 8;

/// Turns a stream of token ids into a stream of text; see the module docs.
#[derive(Debug, Clone)]
pub struct IncrementalDetokenizer {
    /// The prefix window followed by the pending tokens.
    tokens: Vec<u32>,
    /// Where the pending tokens start in `tokens`.
    read_offset: usize,
    /// The decoded prefix window; `None` until the first push, which has the tokenizer.
    prefix_text: Option<String>,
    /// What the pending tokens decode to so far (ending in U+FFFD when a character is
    /// unfinished), kept for [`IncrementalDetokenizer::flush`].
    held_text: String,
    skip_special_tokens: bool,
}

impl IncrementalDetokenizer {
    /// A detokenizer for output that follows `prompt_ids` (may be empty): its last few tokens
    /// decide, for example, whether the first output word keeps its leading space.
    pub fn new(prompt_ids: &[u32], skip_special_tokens: bool) -> Self {
        let context = &prompt_ids[prompt_ids.len().saturating_sub(PROMPT_CONTEXT_TOKENS)..];
        Self {
            tokens: context.to_vec(),
            read_offset: context.len(),
            prefix_text: None,
            held_text: String::new(),
            skip_special_tokens,
        }
    }

    /// Adds the next generated token and returns the text it completes, often `""` (an
    /// unfinished character, or a special token being skipped). An id outside the vocabulary
    /// is an error and leaves the state as it was.
    pub fn push(&mut self, tokenizer: &Tokenizer, id: u32) -> Result<String, TokenizerError> {
        tokenizer.check_id(id)?;
        // Skipped tokens decode to nothing; keeping them out keeps the window short.
        if self.skip_special_tokens && tokenizer.is_special(id) {
            return Ok(String::new());
        }
        let prefix_text = match self.prefix_text.take() {
            Some(text) => text,
            None => self.decode(tokenizer, &self.tokens[..self.read_offset])?,
        };
        self.tokens.push(id);
        let full_text = match self.decode(tokenizer, &self.tokens) {
            Ok(text) => text,
            Err(err) => {
                self.tokens.pop();
                self.prefix_text = Some(prefix_text);
                return Err(err);
            }
        };
        let pending = self.tokens.len() - self.read_offset;
        let unfinished = full_text.ends_with(char::REPLACEMENT_CHARACTER);
        let new_text = new_suffix(&prefix_text, &full_text).to_string();
        if (unfinished || new_text.is_empty()) && pending < MAX_PENDING_TOKENS {
            self.prefix_text = Some(prefix_text);
            self.held_text = new_text;
            return Ok(String::new());
        }
        self.advance();
        Ok(new_text)
    }

    /// Returns whatever is still held back, at the end of generation; an unfinished
    /// character comes out as U+FFFD.
    pub fn flush(&mut self) -> String {
        // The last push already decoded the held-back tokens, lossily.
        let held_text = std::mem::take(&mut self.held_text);
        if self.read_offset < self.tokens.len() {
            self.advance();
        }
        held_text
    }

    /// The pending tokens become the prefix; older tokens are no longer needed.
    fn advance(&mut self) {
        self.tokens.drain(..self.read_offset);
        self.read_offset = self.tokens.len();
        self.prefix_text = None;
        self.held_text.clear();
    }

    fn decode(&self, tokenizer: &Tokenizer, ids: &[u32]) -> Result<String, TokenizerError> {
        tokenizer.decode(ids, self.skip_special_tokens)
    }
}

/// The part of `full` that `prefix` does not already cover. Normally `prefix` is a prefix of
/// `full`; when it is not (a U+FFFD in the context later completed into a character), the
/// text after the common part is new.
fn new_suffix<'a>(prefix: &str, full: &'a str) -> &'a str {
    if let Some(rest) = full.strip_prefix(prefix) {
        return rest;
    }
    let common = prefix
        .char_indices()
        .zip(full.chars())
        .find(|((_, a), b)| a != b)
        .map_or(prefix.len().min(full.len()), |((at, _), _)| at);
    &full[common..]
}

#[cfg(test)]
mod tests {
    use super::super::tests::metaspace_tokenizer;
    use super::super::{TINY_IM_END_ID, TINY_IM_START_ID};
    use super::*;

    fn stream(tok: &Tokenizer, prompt: &[u32], ids: &[u32], skip: bool) -> Vec<String> {
        let mut detok = IncrementalDetokenizer::new(prompt, skip);
        let mut out: Vec<String> = ids.iter().map(|&id| detok.push(tok, id).unwrap()).collect();
        out.push(detok.flush());
        out
    }

    #[test]
    fn emoji_split_across_byte_tokens_comes_out_whole() {
        let tok = Tokenizer::tiny();
        let ids = tok.encode("a🚀b", false).unwrap();
        assert_eq!(ids.len(), 6);
        let chunks = stream(&tok, &[], &ids, false);
        assert_eq!(chunks, ["a", "", "", "", "🚀", "b", ""]);
        for chunk in &chunks {
            assert!(!chunk.contains(char::REPLACEMENT_CHARACTER));
        }
    }

    #[test]
    fn concatenation_equals_full_decode() {
        let tok = Tokenizer::tiny();
        let text = "  leading spaces, naïve café, 中文字符, 🚀🔥👨‍👩‍👧 and\ttabs\n";
        let ids = tok.encode(text, false).unwrap();
        for prompt in [&[][..], &tok.encode("prompt ✓", true).unwrap()] {
            assert_eq!(stream(&tok, prompt, &ids, false).concat(), text);
        }
    }

    #[test]
    fn window_stays_short() {
        let tok = Tokenizer::tiny();
        let ids = tok.encode(&"long output ✓ ".repeat(200), false).unwrap();
        let mut detok = IncrementalDetokenizer::new(&[], false);
        for &id in &ids {
            detok.push(&tok, id).unwrap();
            assert!(detok.tokens.len() <= 2 * MAX_PENDING_TOKENS);
        }
    }

    #[test]
    fn special_tokens_skipped_or_kept() {
        let tok = Tokenizer::tiny();
        let ids = tok.encode("<|im_start|>hi<|im_end|>", false).unwrap();
        assert_eq!(stream(&tok, &[], &ids, true).concat(), "hi");
        assert_eq!(
            stream(&tok, &[], &ids, false),
            ["<|im_start|>", "h", "i", "<|im_end|>", ""]
        );
        assert!(tok.is_special(TINY_IM_START_ID) && tok.is_special(TINY_IM_END_ID));
    }

    #[test]
    fn flush_releases_an_unfinished_character() {
        let tok = Tokenizer::tiny();
        let rocket = tok.encode("🚀", false).unwrap();
        let mut detok = IncrementalDetokenizer::new(&[], false);
        assert_eq!(detok.push(&tok, u32::from(b'x')).unwrap(), "x");
        for &id in &rocket[..2] {
            assert_eq!(detok.push(&tok, id).unwrap(), "");
        }
        assert_eq!(detok.flush(), "\u{FFFD}");
        assert_eq!(detok.flush(), "");
    }

    #[test]
    fn invalid_bytes_do_not_stall_the_stream() {
        let tok = Tokenizer::tiny();
        // Lone continuation bytes never complete a character.
        let mut detok = IncrementalDetokenizer::new(&[], false);
        let out: String = (0..MAX_PENDING_TOKENS)
            .map(|_| detok.push(&tok, 0x80).unwrap())
            .collect();
        assert!(out.contains(char::REPLACEMENT_CHARACTER));
        assert_eq!(detok.push(&tok, u32::from(b'z')).unwrap(), "z");
    }

    #[test]
    fn out_of_range_id_is_an_error_and_changes_nothing() {
        let tok = Tokenizer::tiny();
        let mut detok = IncrementalDetokenizer::new(&[], false);
        assert_eq!(detok.push(&tok, 0xE2).unwrap(), "");
        assert!(matches!(
            detok.push(&tok, 10_000),
            Err(TokenizerError::TokenOutOfRange { id: 10_000, .. })
        ));
        assert_eq!(detok.push(&tok, 0x82).unwrap(), "");
        assert_eq!(detok.push(&tok, 0xAC).unwrap(), "€");
    }

    #[test]
    fn leading_space_comes_from_the_prompt_context() {
        let tok = metaspace_tokenizer();
        assert_eq!(tok.encode("hi world", false).unwrap(), [11, 16]);
        // The post-processor adds <s>, so BOS is on even without `add_bos_token`.
        assert_eq!(tok.encode("hi", true).unwrap(), [1, 11]);
        assert_eq!(tok.decode(&[16], false).unwrap(), "world");

        let mut detok = IncrementalDetokenizer::new(&[1, 11], true);
        assert_eq!(detok.push(&tok, 16).unwrap(), " world");
        assert_eq!(detok.push(&tok, 16).unwrap(), " world");

        // Without context the output starts like a full decode of the output would.
        let chunks = stream(&tok, &[], &[16, 11], false);
        assert_eq!(chunks.concat(), tok.decode(&[16, 11], false).unwrap());
        assert_eq!(chunks.concat(), "world hi");
    }
}
