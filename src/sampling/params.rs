//! Sampling parameters with OpenAI/vLLM semantics, and their validation.

/// Most tokens a request generates when it does not say: the one default of `max_tokens`,
/// for `waypoint generate` and the API alike (both also stop where the context ends).
/// vLLM's "whatever is left of the context" lets a request that forgot the field hold a
/// slot for the whole context (128k tokens on recent models), and OpenAI's 16 cuts answers
/// mid-sentence.
pub const DEFAULT_MAX_TOKENS: usize = 4096;

/// Most top logprobs a request may ask for (OpenAI's `top_logprobs` limit, vLLM's default).
pub const MAX_LOGPROBS: usize = 20;
/// Most stop strings a request may give.
pub const MAX_STOP_STRINGS: usize = 16;
/// Longest stop string, in bytes. Text that may be the start of a stop string is held back
/// until it is known not to be, so this is also the most a stream can hold back (512 bytes
/// is about a hundred tokens of English).
pub const MAX_STOP_STRING_BYTES: usize = 512;
/// Most bytes of all stop strings together: the size of the matcher each request builds.
pub const MAX_STOP_BYTES: usize = 2048;
/// Most stop token ids; each generated token is checked against them.
pub const MAX_STOP_TOKEN_IDS: usize = 1024;
/// Temperatures below this are treated as greedy (vLLM's `_SAMPLING_EPS`), because dividing by
/// them overflows the logits and the distribution is argmax in all but name anyway.
pub const MIN_TEMPERATURE: f32 = 1e-5;

/// How one request's tokens are chosen and when it stops.
///
/// Build it with [`Default`] or [`SamplingParams::greedy`] and struct update syntax, then
/// [`validate`](SamplingParams::validate) it against the model's vocabulary before use.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    /// Divides the logits before the draw, in [0, ∞); 0 (or anything below
    /// [`MIN_TEMPERATURE`]) means greedy. By default 1.
    pub temperature: f32,
    /// Keep only the `k` most likely tokens. `None` and `Some(0)` mean off (the API's -1 is
    /// mapped to `None` by the caller); `Some(1)` is greedy. By default off.
    pub top_k: Option<usize>,
    /// Keep the smallest set of most likely tokens whose probability reaches `top_p`, in
    /// (0, 1]. By default 1 (off).
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` times the most likely one, in [0, 1]. By default
    /// 0 (off).
    pub min_p: f32,
    /// Divides positive and multiplies negative logits of every token already in the prompt
    /// or the output (Hugging Face and vLLM semantics), in (0, ∞). By default 1 (off).
    pub repetition_penalty: f32,
    /// Subtracts `frequency_penalty * count` from each token's logit, counting the output
    /// only (OpenAI semantics), in [-2, 2]. By default 0.
    pub frequency_penalty: f32,
    /// Subtracts `presence_penalty` once from every token that appears in the output (OpenAI
    /// semantics), in [-2, 2]. By default 0.
    pub presence_penalty: f32,
    /// Seed of this request's random draws: the same seed, logits and parameters give the
    /// same tokens, on the same Waypoint version and backend (the generator and the float
    /// arithmetic are not promised to stay bit-identical across either). By default random.
    pub seed: Option<u64>,
    /// Most tokens to generate, at least 1. By default [`DEFAULT_MAX_TOKENS`].
    pub max_tokens: usize,
    /// End-of-sequence and stop token ids are masked until the output holds this many
    /// tokens, at most `max_tokens`. By default 0.
    pub min_tokens: usize,
    /// Extra token ids that end generation (and are masked while `min_tokens` is unmet).
    pub stop_token_ids: Vec<u32>,
    /// Strings that end generation; they are never part of the output. At most
    /// [`MAX_STOP_STRINGS`], none empty.
    pub stop: Vec<String>,
    /// Keep going past the model's end-of-sequence tokens, which then are ordinary tokens
    /// (not masked by `min_tokens` either). By default false.
    pub ignore_eos: bool,
    /// Return each sampled token's logprob and this many most likely alternatives, at most
    /// [`MAX_LOGPROBS`]; `Some(0)` gives only the sampled token's logprob. By default none.
    pub logprobs: Option<usize>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_k: None,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            seed: None,
            max_tokens: DEFAULT_MAX_TOKENS,
            min_tokens: 0,
            stop_token_ids: Vec::new(),
            stop: Vec::new(),
            ignore_eos: false,
            logprobs: None,
        }
    }
}

/// A parameter outside its range.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{param}: {message}")]
pub struct InvalidParam {
    /// The OpenAI API's name for the parameter, which is also the field's name
    /// (`temperature`, `top_p`, `logprobs`, ...), so an HTTP layer can point at it.
    pub param: &'static str,
    /// What is wrong, with the value that was given.
    pub message: String,
}

fn invalid(param: &'static str, message: impl Into<String>) -> InvalidParam {
    InvalidParam {
        param,
        message: message.into(),
    }
}

/// Which end of a range includes its bound.
#[derive(Clone, Copy)]
enum Bound {
    Inclusive(f32),
    Exclusive(f32),
    Unbounded,
}

fn check_range(
    param: &'static str,
    value: f32,
    low: Bound,
    high: Bound,
) -> Result<(), InvalidParam> {
    let above = match low {
        Bound::Inclusive(b) => value >= b,
        Bound::Exclusive(b) => value > b,
        Bound::Unbounded => true,
    };
    let below = match high {
        Bound::Inclusive(b) => value <= b,
        Bound::Exclusive(b) => value < b,
        Bound::Unbounded => true,
    };
    // NaN fails both comparisons, but infinity passes an unbounded side, hence is_finite.
    if value.is_finite() && above && below {
        return Ok(());
    }
    let low = match low {
        Bound::Inclusive(b) => format!("[{b}"),
        Bound::Exclusive(b) => format!("({b}"),
        Bound::Unbounded => "(-inf".to_string(),
    };
    let high = match high {
        Bound::Inclusive(b) => format!("{b}]"),
        Bound::Exclusive(b) => format!("{b})"),
        Bound::Unbounded => "inf)".to_string(),
    };
    Err(invalid(
        param,
        format!("must be a finite number in {low}, {high}, got {value}"),
    ))
}

impl SamplingParams {
    /// Greedy decoding (temperature 0) with the other defaults.
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            ..Self::default()
        }
    }

    /// Whether the sampler takes the argmax instead of drawing: temperature below
    /// [`MIN_TEMPERATURE`] (NaN included) or `top_k == Some(1)`.
    pub fn is_greedy(&self) -> bool {
        self.temperature.is_nan() || self.temperature < MIN_TEMPERATURE || self.top_k == Some(1)
    }

    /// Checks every parameter's range; `vocab_size` bounds the stop token ids.
    ///
    /// NaN and infinities are rejected everywhere.
    ///
    /// # Errors
    ///
    /// The first parameter found outside its range, named as the API names it.
    pub fn validate(&self, vocab_size: usize) -> Result<(), InvalidParam> {
        use Bound::{Exclusive, Inclusive, Unbounded};
        check_range("temperature", self.temperature, Inclusive(0.0), Unbounded)?;
        check_range("top_p", self.top_p, Exclusive(0.0), Inclusive(1.0))?;
        check_range("min_p", self.min_p, Inclusive(0.0), Inclusive(1.0))?;
        check_range(
            "repetition_penalty",
            self.repetition_penalty,
            Exclusive(0.0),
            Unbounded,
        )?;
        check_range(
            "frequency_penalty",
            self.frequency_penalty,
            Inclusive(-2.0),
            Inclusive(2.0),
        )?;
        check_range(
            "presence_penalty",
            self.presence_penalty,
            Inclusive(-2.0),
            Inclusive(2.0),
        )?;
        if self.max_tokens == 0 {
            return Err(invalid("max_tokens", "must be at least 1, got 0"));
        }
        if self.min_tokens > self.max_tokens {
            return Err(invalid(
                "min_tokens",
                format!(
                    "must not exceed max_tokens ({}), got {}",
                    self.max_tokens, self.min_tokens
                ),
            ));
        }
        if self.stop.len() > MAX_STOP_STRINGS {
            return Err(invalid(
                "stop",
                format!(
                    "at most {MAX_STOP_STRINGS} stop strings, got {}",
                    self.stop.len()
                ),
            ));
        }
        if self.stop.iter().any(String::is_empty) {
            return Err(invalid("stop", "stop strings must not be empty"));
        }
        if let Some(long) = self
            .stop
            .iter()
            .find(|stop| stop.len() > MAX_STOP_STRING_BYTES)
        {
            return Err(invalid(
                "stop",
                format!(
                    "a stop string may be at most {MAX_STOP_STRING_BYTES} bytes long, got one \
                     of {}",
                    long.len()
                ),
            ));
        }
        let total: usize = self.stop.iter().map(String::len).sum();
        if total > MAX_STOP_BYTES {
            return Err(invalid(
                "stop",
                format!(
                    "stop strings may hold at most {MAX_STOP_BYTES} bytes together, got {total}"
                ),
            ));
        }
        if self.stop_token_ids.len() > MAX_STOP_TOKEN_IDS {
            return Err(invalid(
                "stop_token_ids",
                format!(
                    "at most {MAX_STOP_TOKEN_IDS} stop token ids, got {}",
                    self.stop_token_ids.len()
                ),
            ));
        }
        if let Some(&id) = self
            .stop_token_ids
            .iter()
            .find(|&&id| id as usize >= vocab_size)
        {
            return Err(invalid(
                "stop_token_ids",
                format!("token id {id} is outside the vocabulary of {vocab_size} tokens"),
            ));
        }
        if let Some(n) = self.logprobs.filter(|&n| n > MAX_LOGPROBS) {
            return Err(invalid(
                "logprobs",
                format!("must be at most {MAX_LOGPROBS}, got {n}"),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(f: impl FnOnce(&mut SamplingParams)) -> SamplingParams {
        let mut params = SamplingParams::default();
        f(&mut params);
        params
    }

    #[test]
    fn defaults_and_greedy_are_valid() {
        assert_eq!(SamplingParams::default().validate(10), Ok(()));
        assert_eq!(SamplingParams::greedy().validate(10), Ok(()));
        assert!(SamplingParams::greedy().is_greedy());
        assert!(!SamplingParams::default().is_greedy());
        assert_eq!(SamplingParams::default().max_tokens, DEFAULT_MAX_TOKENS);
    }

    #[test]
    fn the_edges_of_each_range_are_accepted() {
        let good = [
            with(|p| p.temperature = 0.0),
            with(|p| p.temperature = 1e-6),
            with(|p| p.temperature = 7.5),
            with(|p| p.top_p = 1.0),
            with(|p| p.top_p = 1e-3),
            with(|p| p.min_p = 0.0),
            with(|p| p.min_p = 1.0),
            with(|p| p.repetition_penalty = 0.01),
            with(|p| p.repetition_penalty = 5.0),
            with(|p| p.frequency_penalty = -2.0),
            with(|p| p.frequency_penalty = 2.0),
            with(|p| p.presence_penalty = -2.0),
            with(|p| p.presence_penalty = 2.0),
            with(|p| p.top_k = Some(0)),
            with(|p| p.top_k = Some(1_000_000)),
            with(|p| {
                p.max_tokens = 1;
                p.min_tokens = 1;
            }),
            with(|p| p.stop = vec!["x".into(); MAX_STOP_STRINGS]),
            with(|p| p.stop = vec!["x".repeat(MAX_STOP_STRING_BYTES); 4]),
            with(|p| p.stop_token_ids = vec![0, 9]),
            with(|p| p.logprobs = Some(0)),
            with(|p| p.logprobs = Some(MAX_LOGPROBS)),
        ];
        for params in good {
            assert_eq!(params.validate(10), Ok(()), "{params:?}");
        }
    }

    #[test]
    fn each_bad_value_names_its_parameter() {
        let cases = [
            ("temperature", with(|p| p.temperature = -0.1)),
            ("temperature", with(|p| p.temperature = f32::NAN)),
            ("temperature", with(|p| p.temperature = f32::INFINITY)),
            ("top_p", with(|p| p.top_p = 0.0)),
            ("top_p", with(|p| p.top_p = 1.01)),
            ("top_p", with(|p| p.top_p = f32::NAN)),
            ("min_p", with(|p| p.min_p = -0.1)),
            ("min_p", with(|p| p.min_p = 1.5)),
            ("min_p", with(|p| p.min_p = f32::NAN)),
            ("repetition_penalty", with(|p| p.repetition_penalty = 0.0)),
            ("repetition_penalty", with(|p| p.repetition_penalty = -1.0)),
            (
                "repetition_penalty",
                with(|p| p.repetition_penalty = f32::INFINITY),
            ),
            ("frequency_penalty", with(|p| p.frequency_penalty = 2.5)),
            ("frequency_penalty", with(|p| p.frequency_penalty = -2.5)),
            (
                "frequency_penalty",
                with(|p| p.frequency_penalty = f32::NAN),
            ),
            ("presence_penalty", with(|p| p.presence_penalty = -3.0)),
            (
                "presence_penalty",
                with(|p| p.presence_penalty = f32::INFINITY),
            ),
            ("max_tokens", with(|p| p.max_tokens = 0)),
            ("min_tokens", with(|p| p.min_tokens = p.max_tokens + 1)),
            ("stop", with(|p| p.stop = vec!["a".into(), String::new()])),
            (
                "stop",
                with(|p| p.stop = vec!["x".repeat(MAX_STOP_STRING_BYTES + 1)]),
            ),
            (
                "stop",
                with(|p| p.stop = vec!["x".repeat(MAX_STOP_STRING_BYTES); 5]),
            ),
            (
                "stop_token_ids",
                with(|p| p.stop_token_ids = vec![1; MAX_STOP_TOKEN_IDS + 1]),
            ),
            (
                "stop",
                with(|p| p.stop = vec!["x".into(); MAX_STOP_STRINGS + 1]),
            ),
            ("stop_token_ids", with(|p| p.stop_token_ids = vec![3, 10])),
            ("logprobs", with(|p| p.logprobs = Some(MAX_LOGPROBS + 1))),
        ];
        for (param, params) in cases {
            let err = params.validate(10).unwrap_err();
            assert_eq!(err.param, param, "{params:?}");
            assert!(err.to_string().starts_with(param), "{err}");
        }
    }

    #[test]
    fn tiny_temperatures_and_top_k_one_are_greedy() {
        assert!(with(|p| p.temperature = MIN_TEMPERATURE / 2.0).is_greedy());
        assert!(with(|p| p.temperature = f32::NAN).is_greedy());
        assert!(with(|p| p.top_k = Some(1)).is_greedy());
        assert!(!with(|p| p.top_k = Some(0)).is_greedy());
        assert!(!with(|p| p.temperature = MIN_TEMPERATURE).is_greedy());
    }
}
