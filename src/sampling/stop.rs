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
/// The stop strings are compiled into an Aho-Corasick automaton whose state carries over
/// from one delta to the next, so each byte of output costs one amortized transition,
/// whatever the number and length of the stop strings. The automaton's state is the longest
/// suffix of the text that is still a prefix of some stop string: exactly the text that must
/// be held back, so only that is kept.
///
/// (The `aho-corasick` crate's automata do not expose a state's depth, which is the
/// held-back length here; hence this small one, built per request from at most a few
/// kilobytes of stop strings.)
#[derive(Clone, Debug, Default)]
pub struct StopStringMatcher {
    stops: Vec<String>,
    automaton: Automaton,
    /// The automaton's current node.
    state: u32,
    /// Text received but not yet emitted: the longest suffix of the text that is a proper
    /// prefix of some stop string, so `held.len()` is the depth of `state`.
    held: String,
    done: bool,
}

impl StopStringMatcher {
    /// A matcher for `stops`; empty strings are ignored, since they would match everywhere.
    pub fn new(stops: &[String]) -> Self {
        let stops: Vec<String> = stops.iter().filter(|s| !s.is_empty()).cloned().collect();
        Self {
            automaton: Automaton::new(&stops),
            stops,
            state: ROOT,
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
        for (i, &byte) in delta.as_bytes().iter().enumerate() {
            self.state = self.automaton.next(self.state, byte);
            // The first byte at which a stop string ends is the earliest end; of the stop
            // strings ending there, the node records the longest (the one starting first).
            if let Some(stop) = self.automaton.output(self.state) {
                let stop = &self.stops[stop as usize];
                // The match lies within `held` + `delta[..=i]`, since `held` is as long as
                // the automaton's state before this byte. Both ends are char boundaries: a
                // stop string is valid UTF-8, so it starts and ends with whole characters.
                let start = self.held.len() + i + 1 - stop.len();
                let mut emit = std::mem::take(&mut self.held);
                emit.push_str(&delta[..=i]);
                emit.truncate(start);
                self.done = true;
                return StopOutcome {
                    emit,
                    stopped: Some(stop.clone()),
                };
            }
        }
        self.held.push_str(delta);
        // The state's depth is never more than the text fed since the last emit, which is
        // exactly `held`; a stop string starts with a non-continuation byte, so the split
        // falls on a char boundary.
        let keep = self.automaton.depth(self.state);
        let split = self.held.len() - keep;
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
}

/// The root node: the empty prefix.
const ROOT: u32 = 0;

/// An Aho-Corasick automaton over bytes: a trie of the stop strings with failure links.
#[derive(Clone, Debug, Default)]
struct Automaton {
    nodes: Vec<Node>,
}

#[derive(Clone, Debug, Default)]
struct Node {
    /// Children by byte, sorted by byte.
    edges: Vec<(u8, u32)>,
    /// The node of the longest proper suffix of this node's string that is in the trie.
    fail: u32,
    /// Length of this node's string.
    depth: u32,
    /// The longest stop string that is a suffix of this node's string, if any.
    output: Option<u32>,
}

impl Automaton {
    fn new(patterns: &[String]) -> Self {
        let mut nodes = vec![Node::default()];
        for (index, pattern) in patterns.iter().enumerate() {
            let mut node = ROOT;
            for &byte in pattern.as_bytes() {
                node = match Self::child(&nodes[node as usize], byte) {
                    Some(child) => child,
                    None => {
                        let child = nodes.len() as u32;
                        let depth = nodes[node as usize].depth + 1;
                        nodes.push(Node {
                            depth,
                            ..Node::default()
                        });
                        let edges = &mut nodes[node as usize].edges;
                        let at = edges.partition_point(|&(b, _)| b < byte);
                        edges.insert(at, (byte, child));
                        child
                    }
                };
            }
            // Equal stop strings share a node; the first one names the match.
            nodes[node as usize].output.get_or_insert(index as u32);
        }
        // Breadth first, so that a node's failure target (shallower) is complete before it.
        let mut queue = std::collections::VecDeque::from([ROOT]);
        while let Some(parent) = queue.pop_front() {
            for edge in 0..nodes[parent as usize].edges.len() {
                let (byte, child) = nodes[parent as usize].edges[edge];
                let fail = if parent == ROOT {
                    ROOT
                } else {
                    let mut candidate = nodes[parent as usize].fail;
                    loop {
                        if let Some(next) = Self::child(&nodes[candidate as usize], byte) {
                            break next;
                        }
                        if candidate == ROOT {
                            break ROOT;
                        }
                        candidate = nodes[candidate as usize].fail;
                    }
                };
                nodes[child as usize].fail = fail;
                // A node's own stop string is longer than any inherited from its suffix.
                if nodes[child as usize].output.is_none() {
                    nodes[child as usize].output = nodes[fail as usize].output;
                }
                queue.push_back(child);
            }
        }
        Self { nodes }
    }

    fn child(node: &Node, byte: u8) -> Option<u32> {
        node.edges
            .binary_search_by_key(&byte, |&(b, _)| b)
            .ok()
            .map(|at| node.edges[at].1)
    }

    /// The state after `byte`. Each failure step shortens the state, and each byte lengthens
    /// it by at most one, so the steps average out to at most one per byte.
    fn next(&self, mut state: u32, byte: u8) -> u32 {
        loop {
            if let Some(next) = Self::child(&self.nodes[state as usize], byte) {
                return next;
            }
            if state == ROOT {
                return ROOT;
            }
            state = self.nodes[state as usize].fail;
        }
    }

    fn output(&self, state: u32) -> Option<u32> {
        self.nodes[state as usize].output
    }

    fn depth(&self, state: u32) -> usize {
        self.nodes[state as usize].depth as usize
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

    /// What a character-by-character scan finds: the text before the stop string that ends
    /// first (on a tie, the longest), or all of it.
    fn reference(stops: &[String], text: &str) -> (String, Option<String>) {
        let best = stops
            .iter()
            .filter(|stop| !stop.is_empty())
            .filter_map(|stop| {
                text.find(stop.as_str())
                    .map(|at| (at + stop.len(), at, stop))
            })
            .min_by_key(|&(end, start, _)| (end, start));
        match best {
            Some((_, start, stop)) => (text[..start].to_string(), Some(stop.clone())),
            None => (text.to_string(), None),
        }
    }

    proptest::proptest! {
        #[test]
        fn the_automaton_agrees_with_a_plain_scan(
            stops in proptest::collection::vec("[abé]{1,4}", 1..5),
            deltas in proptest::collection::vec("[abcé]{0,5}", 0..12),
        ) {
            let text: String = deltas.concat();
            let mut matcher = StopStringMatcher::new(&stops);
            let mut emitted = String::new();
            let mut stopped = None;
            for delta in &deltas {
                let outcome = matcher.push(delta);
                emitted.push_str(&outcome.emit);
                // What is held back is always shorter than the longest stop string.
                proptest::prop_assert!(matcher.held.len() < 4 * 2);
                if outcome.stopped.is_some() {
                    stopped = outcome.stopped;
                    break;
                }
            }
            if stopped.is_none() {
                emitted.push_str(&matcher.finish());
            }
            proptest::prop_assert_eq!((emitted, stopped), reference(&stops, &text));
        }
    }

    #[test]
    fn long_stop_strings_cost_one_step_per_byte() {
        // 16 stop strings of 512 bytes that share long prefixes with the output: a scan of
        // each held-back tail against each string would cost ~4M byte comparisons per
        // token; the automaton's state stays put.
        let stops: Vec<String> = (0..16)
            .map(|i| format!("{}{}", "a".repeat(511), char::from(b'A' + i)))
            .collect();
        let mut matcher = StopStringMatcher::new(&stops);
        let mut emitted = 0;
        for _ in 0..10_000 {
            let outcome = matcher.push("a");
            assert_eq!(outcome.stopped, None);
            emitted += outcome.emit.len();
            assert!(matcher.held.len() <= 511);
        }
        assert_eq!(emitted + matcher.finish().len(), 10_000);
        assert_eq!(
            matcher.automaton.nodes.len(),
            1 + 511 + 16,
            "shared prefixes share nodes"
        );
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
