//! Stop strings over streamed text.
//!
//! Text that could be the start of a stop string is held back until it is known not to be,
//! so a stop string is never partly emitted. When several stop strings match, the one that
//! ends first wins (on a tie, the one that starts first, i.e. the longest), which is exactly
//! what a character-by-character scan would find: the result does not depend on how the
//! text was split into deltas. (vLLM instead takes the first stop string in list order,
//! which can depend on the split.)

/// What [`StopStringMatcher::push`] decided.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StopOutcome {
    /// Text that is now safe to emit.
    pub emit: String,
    /// The stop string that matched, if one did: generation ends, `emit` is the text before
    /// it, and the stop string itself and anything after it are dropped.
    pub stopped: Option<String>,
}

/// Matches stop strings across text deltas.
///
/// Only the held-back tail (shorter than the longest stop string) and the new delta are
/// searched on each push, so the cost per delta does not grow with the generated text.
#[derive(Clone, Debug, Default)]
pub struct StopStringMatcher {
    stops: Vec<String>,
    /// Length in bytes of the longest stop string.
    max_len: usize,
    /// Text received but not yet emitted: always a proper prefix of some stop string (between
    /// pushes), so every match that is still possible starts inside it or in the next delta.
    held: String,
    done: bool,
}

impl StopStringMatcher {
    /// A matcher for `stops`; empty strings are ignored, since they would match everywhere.
    pub fn new(stops: &[String]) -> Self {
        let stops: Vec<String> = stops.iter().filter(|s| !s.is_empty()).cloned().collect();
        Self {
            max_len: stops.iter().map(String::len).max().unwrap_or(0),
            stops,
            held: String::new(),
            done: false,
        }
    }

    /// Feeds a text delta and returns the text that is now safe to emit, holding back any
    /// suffix that could be the start of a stop string.
    ///
    /// On a match, `emit` is everything before the stop string and the matcher is done: later
    /// pushes return nothing.
    pub fn push(&mut self, delta: &str) -> StopOutcome {
        if self.done {
            return StopOutcome::default();
        }
        if self.stops.is_empty() {
            return StopOutcome {
                emit: delta.to_string(),
                stopped: None,
            };
        }
        self.held.push_str(delta);
        // A stop string's first occurrence is also its earliest end, so one `find` per stop
        // string is enough to find the match that ends first.
        let first = self
            .stops
            .iter()
            .filter_map(|stop| {
                self.held
                    .find(stop.as_str())
                    .map(|start| (start + stop.len(), start, stop))
            })
            .min_by_key(|&(end, start, _)| (end, start));
        if let Some((_, start, stop)) = first {
            let outcome = StopOutcome {
                emit: self.held[..start].to_string(),
                stopped: Some(stop.clone()),
            };
            self.held.clear();
            self.done = true;
            return outcome;
        }
        let split = self.held.len() - self.partial_match_len();
        let emit = self.held[..split].to_string();
        self.held.drain(..split);
        StopOutcome {
            emit,
            stopped: None,
        }
    }

    /// Releases the held-back text at the end of generation (length limit, end-of-sequence),
    /// when it can no longer become a stop string. The matcher is done afterwards.
    pub fn finish(&mut self) -> String {
        self.done = true;
        std::mem::take(&mut self.held)
    }

    /// Length in bytes of the longest suffix of `held` that is a proper prefix of a stop
    /// string; 0 when none is.
    fn partial_match_len(&self) -> usize {
        let held = self.held.as_bytes();
        // A suffix as long as a stop string would have been a match, not a partial one.
        let window = self.max_len.saturating_sub(1).min(held.len());
        // Longest first; comparing bytes never slices inside a character, and a byte match
        // with the start of a (valid UTF-8) stop string can only begin on a char boundary.
        (held.len() - window..held.len())
            .find(|&start| {
                let suffix = &held[start..];
                self.stops
                    .iter()
                    .any(|stop| stop.len() > suffix.len() && stop.as_bytes().starts_with(suffix))
            })
            .map_or(0, |start| held.len() - start)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `deltas` and returns every emitted piece (the last from `finish` unless a stop
    /// string matched) and the stop string that matched.
    fn run(stops: &[&str], deltas: &[&str]) -> (Vec<String>, Option<String>) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut matcher = StopStringMatcher::new(&stops);
        let mut out = Vec::new();
        for delta in deltas {
            let outcome = matcher.push(delta);
            out.push(outcome.emit);
            if outcome.stopped.is_some() {
                return (out, outcome.stopped);
            }
        }
        out.push(matcher.finish());
        (out, None)
    }

    /// Every split of `text` into up to three deltas at char boundaries.
    fn splits(text: &str) -> Vec<Vec<&str>> {
        let cuts: Vec<usize> = (0..=text.len())
            .filter(|&i| text.is_char_boundary(i))
            .collect();
        let mut all = Vec::new();
        for (n, &a) in cuts.iter().enumerate() {
            for &b in &cuts[n..] {
                all.push(vec![&text[..a], &text[a..b], &text[b..]]);
            }
        }
        all
    }

    #[test]
    fn a_stop_string_split_across_deltas_is_never_emitted() {
        let (out, stopped) = run(&["STOP"], &["hello S", "TO", "P world"]);
        assert_eq!(out, vec!["hello ", "", ""]);
        assert_eq!(stopped.as_deref(), Some("STOP"));
        let (out, stopped) = run(&["STOP"], &["S", "T", "O", "P"]);
        assert_eq!(out.concat(), "");
        assert_eq!(stopped.as_deref(), Some("STOP"));
    }

    #[test]
    fn text_after_the_stop_string_is_dropped() {
        let (out, stopped) = run(&["\n\n"], &["one\n\ntwo"]);
        assert_eq!(out, vec!["one"]);
        assert_eq!(stopped.as_deref(), Some("\n\n"));
    }

    #[test]
    fn held_text_is_released_when_it_stops_matching_or_at_the_end() {
        let (out, stopped) = run(&["STOP"], &["a ST", "x", " b S"]);
        assert_eq!(out, vec!["a ", "STx", " b ", "S"]);
        assert_eq!(stopped, None);
        // A repeated first character: of "SS" only the last "S" could still become STOP.
        let (out, _) = run(&["STOP"], &["SS", "T", "!"]);
        assert_eq!(out, vec!["S", "", "ST!", ""]);
    }

    #[test]
    fn the_match_that_ends_first_wins() {
        let (out, stopped) = run(&["bc", "abcd"], &["xab", "cd"]);
        assert_eq!(
            (out.concat(), stopped.as_deref()),
            ("xa".into(), Some("bc"))
        );
        let (out, stopped) = run(&["world", "lo"], &["hello world"]);
        assert_eq!(
            (out.concat(), stopped.as_deref()),
            ("hel".into(), Some("lo"))
        );
    }

    #[test]
    fn overlapping_prefixes_stop_at_the_shorter_one() {
        // "ab" completes before "abc" could, however the text is split.
        for stops in [["ab", "abc"], ["abc", "ab"]] {
            let (out, stopped) = run(&stops, &["xa", "bc"]);
            assert_eq!((out.concat(), stopped.as_deref()), ("x".into(), Some("ab")));
            let (out, stopped) = run(&stops, &["xabc"]);
            assert_eq!((out.concat(), stopped.as_deref()), ("x".into(), Some("ab")));
        }
        // Ending at the same place, the one that starts first (the longer) wins.
        let (out, stopped) = run(&["bc", "abc"], &["xabc"]);
        assert_eq!(
            (out.concat(), stopped.as_deref()),
            ("x".into(), Some("abc"))
        );
    }

    #[test]
    fn the_result_does_not_depend_on_how_the_text_is_split() {
        let cases: [(&[&str], &str, &str, Option<&str>); 5] = [
            (&["abcd", "bc"], "xxabcdyy", "xxa", Some("bc")),
            (&["STOP", "TOP!"], "a STOP! b", "a ", Some("STOP")),
            (&["aab"], "aaaab", "aa", Some("aab")),
            (&["é!", "日本"], "café 日本語", "café ", Some("日本")),
            (&["zz", "ééé"], "ééaéé", "ééaéé", None),
        ];
        for (stops, text, before, expected) in cases {
            for deltas in splits(text) {
                let (out, stopped) = run(stops, &deltas);
                // Emitted text only ever grows, so matching the text before the stop string
                // exactly means no piece of the stop string was emitted at any point.
                assert_eq!(out.concat(), before, "{deltas:?}");
                assert_eq!(stopped.as_deref(), expected, "{deltas:?}");
            }
        }
    }

    #[test]
    fn unicode_is_held_back_on_char_boundaries() {
        let (out, stopped) = run(&["日本"], &["こんにちは日", "本語"]);
        assert_eq!(out, vec!["こんにちは", ""]);
        assert_eq!(stopped.as_deref(), Some("日本"));
        let (out, stopped) = run(&["😀x"], &["a😀", "y"]);
        assert_eq!(out, vec!["a", "😀y", ""]);
        assert_eq!(stopped, None);
        // "é" and "è" share their first UTF-8 byte; a byte-level partial match must not hold
        // (or split) "é" as if it began "è!".
        let (out, _) = run(&["è!"], &["café", " ok"]);
        assert_eq!(out, vec!["café", " ok", ""]);
    }

    #[test]
    fn no_stop_strings_pass_everything_through() {
        assert_eq!(run(&[], &["a", "b"]).0, vec!["a", "b", ""]);
        assert_eq!(run(&[""], &["a", "b"]).0, vec!["a", "b", ""]);
        assert_eq!(run(&["zzz"], &["a", "", "b"]).0, vec!["a", "", "b", ""]);
    }

    #[test]
    fn the_matcher_is_done_after_a_match_or_finish() {
        let mut matcher = StopStringMatcher::new(&["end".to_string()]);
        assert_eq!(matcher.push("the en").emit, "the ");
        assert_eq!(matcher.push("d and more").stopped.as_deref(), Some("end"));
        assert_eq!(matcher.push("end"), StopOutcome::default());
        assert_eq!(matcher.finish(), "");

        let mut matcher = StopStringMatcher::new(&["end".to_string()]);
        assert_eq!(matcher.push("the en").emit, "the ");
        assert_eq!(matcher.finish(), "en");
        assert_eq!(matcher.push("d"), StopOutcome::default());
    }

    #[test]
    fn only_a_short_tail_is_held() {
        let mut matcher = StopStringMatcher::new(&["<|end|>".to_string()]);
        let mut emitted = String::new();
        for _ in 0..1_000 {
            emitted.push_str(&matcher.push("<|en").emit);
            assert!(matcher.held.len() < "<|end|>".len());
        }
        emitted.push_str(&matcher.finish());
        assert_eq!(emitted, "<|en".repeat(1_000));
    }
}
