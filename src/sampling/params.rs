//! Sampling parameters with OpenAI/vLLM semantics, and their validation.

/// Most top logprobs a request may ask for (OpenAI's limit).
pub const MAX_LOGPROBS: usize = 20;
/// Most stop strings a request may give.
pub const MAX_STOP_STRINGS: usize = 16;

/// How one request's tokens are chosen and when it stops.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    /// Divides the logits; 0 means greedy. By default 1.
    pub temperature: f32,
    /// Keep only the `k` most likely tokens. By default off.
    pub top_k: Option<usize>,
    /// Keep the smallest set of tokens whose probability reaches `top_p`, in (0, 1]. By default 1.
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` times the most likely one, in [0, 1]. By default 0.
    pub min_p: f32,
    /// Divides positive (multiplies negative) logits of every token already in the prompt or
    /// output, as in Hugging Face and vLLM. By default 1 (off).
    pub repetition_penalty: f32,
    /// Subtracts `frequency_penalty * count` from each token's logit, counting output tokens
    /// (OpenAI), in [-2, 2]. By default 0.
    pub frequency_penalty: f32,
    /// Subtracts `presence_penalty` from every token that appeared in the output, in [-2, 2].
    /// By default 0.
    pub presence_penalty: f32,
    /// Seed of this request's random draws: the same seed, logits and parameters give the
    /// same tokens (on the same version and backend). By default random.
    pub seed: Option<u64>,
    /// Most tokens to generate. By default 256.
    pub max_tokens: usize,
    /// End-of-sequence and stop token ids are masked until this many tokens exist. By default 0.
    pub min_tokens: usize,
    /// Extra token ids that end generation.
    pub stop_token_ids: Vec<u32>,
    /// Strings that end generation; they are never part of the output.
    pub stop: Vec<String>,
    /// Keep going past end-of-sequence tokens. By default false.
    pub ignore_eos: bool,
    /// Return this many most likely alternatives with each token's logprob. By default none.
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
            max_tokens: 256,
            min_tokens: 0,
            stop_token_ids: Vec::new(),
            stop: Vec::new(),
            ignore_eos: false,
            logprobs: None,
        }
    }
}

/// A parameter outside its range, named as the OpenAI API names it.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{param}: {message}")]
pub struct InvalidParam {
    /// The API's name for the parameter (`temperature`, `top_p`, ...).
    pub param: &'static str,
    /// What is wrong.
    pub message: String,
}

fn invalid(param: &'static str, message: impl Into<String>) -> InvalidParam {
    InvalidParam {
        param,
        message: message.into(),
    }
}

fn in_range(
    param: &'static str,
    value: f32,
    low: f32,
    high: f32,
    low_inclusive: bool,
) -> Result<(), InvalidParam> {
    let above_low = if low_inclusive {
        value >= low
    } else {
        value > low
    };
    if value.is_finite() && above_low && value <= high {
        Ok(())
    } else {
        let open = if low_inclusive { '[' } else { '(' };
        Err(invalid(
            param,
            format!("must be in {open}{low}, {high}], got {value}"),
        ))
    }
}

impl SamplingParams {
    /// Greedy decoding with the other defaults.
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            ..Self::default()
        }
    }

    /// Whether sampling picks the most likely token (no randomness).
    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0 || self.top_k == Some(1)
    }

    /// Checks every range; `vocab_size` bounds the stop token ids.
    pub fn validate(&self, vocab_size: usize) -> Result<(), InvalidParam> {
        in_range("temperature", self.temperature, 0.0, 100.0, true)?;
        in_range("top_p", self.top_p, 0.0, 1.0, false)?;
        in_range("min_p", self.min_p, 0.0, 1.0, true)?;
        in_range(
            "repetition_penalty",
            self.repetition_penalty,
            0.0,
            100.0,
            false,
        )?;
        in_range("frequency_penalty", self.frequency_penalty, -2.0, 2.0, true)?;
        in_range("presence_penalty", self.presence_penalty, -2.0, 2.0, true)?;
        if self.max_tokens == 0 {
            return Err(invalid("max_tokens", "must be at least 1"));
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
                format!("at most {MAX_STOP_STRINGS} stop strings"),
            ));
        }
        if self.stop.iter().any(String::is_empty) {
            return Err(invalid("stop", "stop strings must not be empty"));
        }
        if let Some(&id) = self
            .stop_token_ids
            .iter()
            .find(|&&id| id as usize >= vocab_size)
        {
            return Err(invalid(
                "stop_token_ids",
                format!("token id {id} is outside the vocabulary of {vocab_size}"),
            ));
        }
        if let Some(n) = self.logprobs.filter(|&n| n > MAX_LOGPROBS) {
            return Err(invalid(
                "top_logprobs",
                format!("must be at most {MAX_LOGPROBS}, got {n}"),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        assert_eq!(SamplingParams::default().validate(10), Ok(()));
        assert_eq!(SamplingParams::greedy().validate(10), Ok(()));
    }

    #[test]
    fn each_bad_value_names_its_parameter() {
        let cases: Vec<(&str, SamplingParams)> = vec![
            (
                "temperature",
                SamplingParams {
                    temperature: -1.0,
                    ..Default::default()
                },
            ),
            (
                "temperature",
                SamplingParams {
                    temperature: f32::NAN,
                    ..Default::default()
                },
            ),
            (
                "top_p",
                SamplingParams {
                    top_p: 0.0,
                    ..Default::default()
                },
            ),
            (
                "top_p",
                SamplingParams {
                    top_p: 1.5,
                    ..Default::default()
                },
            ),
            (
                "min_p",
                SamplingParams {
                    min_p: -0.1,
                    ..Default::default()
                },
            ),
            (
                "repetition_penalty",
                SamplingParams {
                    repetition_penalty: 0.0,
                    ..Default::default()
                },
            ),
            (
                "frequency_penalty",
                SamplingParams {
                    frequency_penalty: 2.5,
                    ..Default::default()
                },
            ),
            (
                "presence_penalty",
                SamplingParams {
                    presence_penalty: f32::INFINITY,
                    ..Default::default()
                },
            ),
            (
                "max_tokens",
                SamplingParams {
                    max_tokens: 0,
                    ..Default::default()
                },
            ),
            (
                "min_tokens",
                SamplingParams {
                    min_tokens: 300,
                    ..Default::default()
                },
            ),
            (
                "stop",
                SamplingParams {
                    stop: vec![String::new()],
                    ..Default::default()
                },
            ),
            (
                "stop",
                SamplingParams {
                    stop: vec!["x".into(); 17],
                    ..Default::default()
                },
            ),
            (
                "stop_token_ids",
                SamplingParams {
                    stop_token_ids: vec![10],
                    ..Default::default()
                },
            ),
            (
                "top_logprobs",
                SamplingParams {
                    logprobs: Some(21),
                    ..Default::default()
                },
            ),
        ];
        for (param, params) in cases {
            assert_eq!(params.validate(10).unwrap_err().param, param, "{params:?}");
        }
    }
}
