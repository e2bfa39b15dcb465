//! Stop strings over streamed text: text that could be the start of a stop string is held
//! back until it is known not to be, so a stop string is never partly emitted.

/// What [`StopStringMatcher::push`] decided.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StopOutcome {
    /// Text that is now safe to emit.
    pub emit: String,
    /// The stop string that matched, if one did (generation ends; `emit` is what precedes it).
    pub stopped: Option<String>,
}

/// Matches stop strings across text deltas.
#[derive(Clone, Debug, Default)]
pub struct StopStringMatcher {
    stops: Vec<String>,
    /// Text received but not yet emitted.
    held: String,
    done: bool,
}

impl StopStringMatcher {
    /// A matcher for `stops` (empty strings are ignored).
    pub fn new(stops: &[String]) -> Self {
        Self {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            held: String::new(),
            done: false,
        }
    }

    /// Feeds a delta and returns what may be emitted now.
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
        // The earliest match wins; on a tie the longest stop string.
        let earliest = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()).map(|at| (at, s)))
            .min_by(|a, b| a.0.cmp(&b.0).then(b.1.len().cmp(&a.1.len())));
        if let Some((at, stop)) = earliest {
            let stop = stop.clone();
            let emit = self.held[..at].to_string();
            self.held.clear();
            self.done = true;
            return StopOutcome {
                emit,
                stopped: Some(stop),
            };
        }
        let keep = self.longest_partial_suffix();
        let split = self.held.len() - keep;
        let emit = self.held[..split].to_string();
        self.held.drain(..split);
        StopOutcome {
            emit,
            stopped: None,
        }
    }

    /// Releases the held-back text at the end of generation.
    pub fn finish(&mut self) -> String {
        self.done = true;
        std::mem::take(&mut self.held)
    }

    /// Length in bytes of the longest suffix of `held` that is a proper prefix of a stop
    /// string; always a char boundary because it is compared as text.
    fn longest_partial_suffix(&self) -> usize {
        let held = self.held.as_str();
        self.stops
            .iter()
            .map(|stop| {
                let max = (stop.len() - 1).min(held.len());
                (1..=max)
                    .rev()
                    .find(|&n| {
                        held.is_char_boundary(held.len() - n)
                            && stop.starts_with(&held[held.len() - n..])
                    })
                    .unwrap_or(0)
            })
            .max()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], deltas: &[&str]) -> (Vec<String>, Option<String>) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut m = StopStringMatcher::new(&stops);
        let mut out = Vec::new();
        for d in deltas {
            let o = m.push(d);
            out.push(o.emit);
            if o.stopped.is_some() {
                return (out, o.stopped);
            }
        }
        out.push(m.finish());
        (out, None)
    }

    #[test]
    fn a_stop_string_split_across_deltas_is_never_emitted() {
        let (out, stopped) = run(&["STOP"], &["hello S", "TO", "P world"]);
        assert_eq!(out.concat(), "hello ");
        assert_eq!(out[0], "hello ");
        assert_eq!(stopped.as_deref(), Some("STOP"));
    }

    #[test]
    fn held_text_is_released_when_it_stops_matching_or_at_the_end() {
        let (out, stopped) = run(&["STOP"], &["a ST", "x", " b S"]);
        assert_eq!(out, vec!["a ", "STx", " b ", "S"]);
        assert_eq!(stopped, None);
    }

    #[test]
    fn overlapping_candidates_pick_the_earliest_match() {
        assert_eq!(run(&["abc", "ab"], &["xa", "bc"]).0.concat(), "x");
        assert_eq!(
            run(&["bc", "abcd"], &["xab", "cd"]).1.as_deref(),
            Some("abcd")
        );
    }

    #[test]
    fn unicode_is_held_back_on_char_boundaries() {
        let (out, stopped) = run(&["日本"], &["こんにちは日", "本語"]);
        assert_eq!(out, vec!["こんにちは", ""]);
        assert_eq!(stopped.as_deref(), Some("日本"));
        let (out, _) = run(&["é!"], &["café", " ok"]);
        assert_eq!(out.concat(), "café ok");
    }

    #[test]
    fn no_stop_strings_pass_everything_through() {
        assert_eq!(run(&[], &["a", "b"]).0, vec!["a", "b", ""]);
    }
}
