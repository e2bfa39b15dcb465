//! Choosing the next token from one row of logits.
//!
//! Order of processing, as in vLLM: NaN logits become -inf; repetition, frequency and presence
//! penalties; min-tokens masking of end tokens; then either argmax (greedy) or temperature,
//! top-k, top-p and min-p filters and a seeded draw.

use std::collections::{HashMap, HashSet};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::SamplingParams;

/// The chosen token and, when asked, its log-probability and the most likely alternatives.
#[derive(Clone, Debug, PartialEq)]
pub struct SampledToken {
    /// The token.
    pub token_id: u32,
    /// Its log-probability after penalties, before temperature and filters (vLLM's
    /// "processed logits" mode); 0 when logprobs were not requested.
    pub logprob: f32,
    /// The `logprobs` most likely tokens with their log-probabilities, most likely first.
    pub top_logprobs: Vec<(u32, f32)>,
}

/// One request's sampler; owns its random generator so draws are reproducible per seed.
#[derive(Debug)]
pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
}

impl Sampler {
    /// A sampler for `params`, seeded from `params.seed` or from the OS.
    pub fn new(params: &SamplingParams) -> Self {
        let rng = match params.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_os_rng(),
        };
        Self {
            params: params.clone(),
            rng,
        }
    }

    /// Picks the next token. `logits` (one per vocabulary entry) is modified in place.
    ///
    /// Never panics: an empty row gives token 0; a row with no finite logit gives the
    /// lowest id among the largest values.
    pub fn sample(
        &mut self,
        logits: &mut [f32],
        prompt_ids: &[u32],
        output_ids: &[u32],
        eos_token_ids: &[u32],
    ) -> SampledToken {
        if logits.is_empty() {
            return SampledToken {
                token_id: 0,
                logprob: 0.0,
                top_logprobs: Vec::new(),
            };
        }
        for logit in logits.iter_mut().filter(|l| l.is_nan()) {
            *logit = f32::NEG_INFINITY;
        }
        self.apply_penalties(logits, prompt_ids, output_ids);
        if output_ids.len() < self.params.min_tokens {
            let ends = eos_token_ids.iter().chain(&self.params.stop_token_ids);
            for &id in ends {
                if let Some(logit) = logits.get_mut(id as usize) {
                    *logit = f32::NEG_INFINITY;
                }
            }
        }
        let log_softmax = self.params.logprobs.map(|_| log_softmax(logits));

        let token_id = if self.params.is_greedy() {
            argmax(logits)
        } else {
            self.draw(logits)
        };
        let (logprob, top_logprobs) = match (&log_softmax, self.params.logprobs) {
            (Some(lp), Some(n)) => (lp[token_id as usize], top_n(lp, n)),
            _ => (0.0, Vec::new()),
        };
        SampledToken {
            token_id,
            logprob,
            top_logprobs,
        }
    }

    fn apply_penalties(&self, logits: &mut [f32], prompt_ids: &[u32], output_ids: &[u32]) {
        let p = &self.params;
        if p.repetition_penalty != 1.0 {
            let seen: HashSet<u32> = prompt_ids.iter().chain(output_ids).copied().collect();
            for id in seen {
                if let Some(logit) = logits.get_mut(id as usize) {
                    *logit = if *logit > 0.0 {
                        *logit / p.repetition_penalty
                    } else {
                        *logit * p.repetition_penalty
                    };
                }
            }
        }
        if p.frequency_penalty != 0.0 || p.presence_penalty != 0.0 {
            let mut counts: HashMap<u32, u32> = HashMap::new();
            for &id in output_ids {
                *counts.entry(id).or_default() += 1;
            }
            for (id, count) in counts {
                if let Some(logit) = logits.get_mut(id as usize) {
                    *logit -= p.frequency_penalty * count as f32 + p.presence_penalty;
                }
            }
        }
    }

    /// Temperature, top-k, top-p, min-p, then a draw.
    fn draw(&mut self, logits: &[f32]) -> u32 {
        let p = &self.params;
        let inv_temperature = 1.0 / p.temperature;
        let mut candidates: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .filter(|(_, l)| l.is_finite())
            .map(|(i, &l)| (i as u32, l * inv_temperature))
            .collect();
        if candidates.is_empty() {
            return argmax(logits);
        }
        let by_logit_desc =
            |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        if let Some(k) = p.top_k.filter(|&k| k > 0 && k < candidates.len()) {
            candidates.select_nth_unstable_by(k - 1, by_logit_desc);
            candidates.truncate(k);
        }
        let needs_order = p.top_p < 1.0;
        if needs_order {
            candidates.sort_unstable_by(by_logit_desc);
        }
        let max = candidates
            .iter()
            .map(|c| c.1)
            .fold(f32::NEG_INFINITY, f32::max);
        let mut probs: Vec<f32> = candidates.iter().map(|c| (c.1 - max).exp()).collect();
        let total: f32 = probs.iter().sum();
        probs.iter_mut().for_each(|q| *q /= total);

        let mut keep = probs.len();
        if needs_order {
            let mut cumulative = 0.0;
            for (i, q) in probs.iter().enumerate() {
                cumulative += q;
                if cumulative >= p.top_p {
                    keep = i + 1;
                    break;
                }
            }
        }
        let min_prob = p.min_p * probs.iter().copied().fold(0.0, f32::max);
        let kept: Vec<(u32, f32)> = candidates[..keep]
            .iter()
            .zip(&probs[..keep])
            .filter(|(_, &q)| q >= min_prob)
            .map(|(c, &q)| (c.0, q))
            .collect();
        let total: f32 = kept.iter().map(|k| k.1).sum();
        let mut target = self.rng.random::<f32>() * total;
        for &(id, q) in &kept {
            if target < q {
                return id;
            }
            target -= q;
        }
        // Rounding left a sliver at the end: the last kept token takes it.
        kept.last().map_or_else(|| argmax(logits), |k| k.0)
    }
}

/// Index of the largest value, the lowest index among ties.
fn argmax(values: &[f32]) -> u32 {
    let mut best = 0;
    for (i, v) in values.iter().enumerate() {
        if v > &values[best] {
            best = i;
        }
    }
    best as u32
}

fn log_softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if !max.is_finite() {
        return vec![f32::NEG_INFINITY; logits.len()];
    }
    let log_total = logits.iter().map(|l| (l - max).exp()).sum::<f32>().ln() + max;
    logits.iter().map(|l| l - log_total).collect()
}

fn top_n(logprobs: &[f32], n: usize) -> Vec<(u32, f32)> {
    let mut all: Vec<(u32, f32)> = logprobs
        .iter()
        .enumerate()
        .map(|(i, &l)| (i as u32, l))
        .collect();
    let n = n.min(all.len());
    if n == 0 {
        return Vec::new();
    }
    let order = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    all.select_nth_unstable_by(n - 1, order);
    all.truncate(n);
    all.sort_unstable_by(order);
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(params: SamplingParams, logits: &[f32]) -> SampledToken {
        Sampler::new(&params).sample(&mut logits.to_vec(), &[], &[], &[])
    }

    #[test]
    fn greedy_takes_the_argmax_and_the_lowest_id_on_ties() {
        assert_eq!(
            sample(SamplingParams::greedy(), &[0.1, 3.0, -1.0, 3.0]).token_id,
            1
        );
        let top_k_one = SamplingParams {
            top_k: Some(1),
            seed: Some(1),
            ..Default::default()
        };
        assert_eq!(sample(top_k_one, &[0.1, 3.0, -1.0, 2.0]).token_id, 1);
    }

    #[test]
    fn draws_follow_the_softmax() {
        let logits = [0.0f32, 1.0, 2.0];
        let mut sampler = Sampler::new(&SamplingParams {
            seed: Some(7),
            ..Default::default()
        });
        let mut counts = [0usize; 3];
        for _ in 0..20_000 {
            counts[sampler.sample(&mut logits.to_vec(), &[], &[], &[]).token_id as usize] += 1;
        }
        let total: f32 = logits.iter().map(|l| l.exp()).sum();
        for (i, l) in logits.iter().enumerate() {
            let expected = l.exp() / total;
            let got = counts[i] as f32 / 20_000.0;
            assert!(
                (got - expected).abs() < 0.02,
                "token {i}: {got} vs {expected}"
            );
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_tokens_and_others_differ() {
        let logits: Vec<f32> = (0..50).map(|i| (i % 7) as f32 * 0.3).collect();
        let run = |seed| {
            let mut s = Sampler::new(&SamplingParams {
                seed: Some(seed),
                ..Default::default()
            });
            (0..40)
                .map(|_| s.sample(&mut logits.clone(), &[], &[], &[]).token_id)
                .collect::<Vec<_>>()
        };
        assert_eq!(run(3), run(3));
        assert_ne!(run(3), run(4));
    }

    #[test]
    fn top_k_top_p_and_min_p_restrict_the_candidates() {
        let logits = [5.0f32, 4.0, 0.0, -1.0, 4.5];
        for seed in 0..200 {
            let k = sample(
                SamplingParams {
                    top_k: Some(2),
                    seed: Some(seed),
                    ..Default::default()
                },
                &logits,
            );
            assert!([0, 4].contains(&k.token_id));
            // p(0) ~ 0.51, p(4) ~ 0.31: top_p 0.6 keeps exactly those two.
            let p = sample(
                SamplingParams {
                    top_p: 0.6,
                    seed: Some(seed),
                    ..Default::default()
                },
                &logits,
            );
            assert!([0, 4].contains(&p.token_id));
            // min_p 0.5 keeps tokens at least half as likely as token 0: 0 and 4 (e^-0.5 = 0.61).
            let m = sample(
                SamplingParams {
                    min_p: 0.5,
                    seed: Some(seed),
                    ..Default::default()
                },
                &logits,
            );
            assert!([0, 4].contains(&m.token_id));
        }
    }

    #[test]
    fn penalties_change_exactly_the_right_logits() {
        let params = SamplingParams {
            repetition_penalty: 2.0,
            frequency_penalty: 0.5,
            presence_penalty: 0.25,
            ..SamplingParams::greedy()
        };
        let mut logits = vec![4.0f32, -2.0, 1.0, 3.0];
        Sampler::new(&params).sample(&mut logits, &[1], &[0, 0, 2], &[]);
        // token 0: 4/2 - 0.5*2 - 0.25; token 1 (prompt only): -2*2; token 2: 1/2 - 0.5 - 0.25.
        assert_eq!(logits, vec![0.75, -4.0, -0.25, 3.0]);
    }

    #[test]
    fn min_tokens_masks_end_tokens_until_reached() {
        let params = SamplingParams {
            min_tokens: 2,
            stop_token_ids: vec![1],
            ..SamplingParams::greedy()
        };
        let logits = [1.0f32, 9.0, 8.0, 0.0];
        let mut sampler = Sampler::new(&params);
        assert_eq!(
            sampler
                .sample(&mut logits.to_vec(), &[], &[3], &[2])
                .token_id,
            0
        );
        assert_eq!(
            sampler
                .sample(&mut logits.to_vec(), &[], &[3, 0], &[2])
                .token_id,
            1
        );
    }

    #[test]
    fn logprobs_are_normalised_and_ordered() {
        let params = SamplingParams {
            logprobs: Some(2),
            ..SamplingParams::greedy()
        };
        let t = sample(params, &[1.0, 3.0, 2.0]);
        assert_eq!(t.token_id, 1);
        assert_eq!(
            t.top_logprobs.iter().map(|p| p.0).collect::<Vec<_>>(),
            vec![1, 2]
        );
        let total: f32 = [1.0f32, 3.0, 2.0].iter().map(|l| l.exp()).sum();
        assert!((t.logprob - (3.0f32.exp() / total).ln()).abs() < 1e-6);
        assert!(t.top_logprobs[0].1 > t.top_logprobs[1].1);
    }

    #[test]
    fn degenerate_rows_do_not_panic() {
        for params in [
            SamplingParams::greedy(),
            SamplingParams {
                seed: Some(1),
                top_p: 0.5,
                logprobs: Some(3),
                ..Default::default()
            },
        ] {
            assert_eq!(sample(params.clone(), &[]).token_id, 0);
            assert_eq!(sample(params.clone(), &[f32::NAN, f32::NAN]).token_id, 0);
            assert_eq!(sample(params.clone(), &[f32::NEG_INFINITY; 3]).token_id, 0);
            assert_eq!(
                sample(params, &[f32::NAN, 1.0, f32::NEG_INFINITY]).token_id,
                1
            );
        }
    }
}
