//! Choosing the next token from one row of logits.
//!
//! Processing order, as in vLLM: NaN logits become -inf; repetition, frequency and presence
//! penalties; `min_tokens` masking of end tokens; then either the argmax (greedy) or
//! temperature, top-k, top-p and min-p filters and one seeded draw.
//!
//! Logprobs follow vLLM v1's default `raw_logprobs` mode: the log-softmax of the logits as the
//! model produced them (NaN read as -inf), before penalties, masking, temperature and filters.
//! They describe the model, not the sampler, which is also what OpenAI returns; the sampled
//! token's logprob and the top alternatives come from that same distribution.
//!
//! Degenerate rows never panic: an empty row, or one with nothing above -inf (all -inf or NaN,
//! or everything masked), gives token 0 with logprob -inf; `+inf` logits share all probability
//! equally (greedy takes the lowest such id); a NaN next to finite logits is just impossible.
//! Parameters that were not validated do not panic either, though their effect is only
//! defined for the ranges [`SamplingParams::validate`] accepts.

use std::cmp::Ordering;
use std::collections::{HashMap, HashSet};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::SamplingParams;

/// Top-p buckets candidates by their logit's distance below the maximum, this many buckets per
/// unit, so that only the bucket where the nucleus ends needs sorting, not the vocabulary.
const NUCLEUS_BUCKETS_PER_LOGIT: f32 = 16.0;
/// Buckets in all: 40 logits below the maximum a token weighs under 5e-18 of it, too little for
/// finer buckets to matter, so everything further down shares the last one.
const NUCLEUS_BUCKETS: usize = 640;
/// ln(f32::MIN_POSITIVE): below this a weight relative to the most likely token would be
/// subnormal, a mass that cannot change a draw, so it is taken as 0 and its `exp` skipped.
const MIN_LOG_WEIGHT: f32 = -87.33;
/// Top-n lists up to this long are kept by insertion while scanning the row; longer ones
/// (only possible with unvalidated params) fall back to a selection over the whole row.
const INSERTION_TOP_N: usize = 64;

/// The chosen token and, when asked, its log-probability and the most likely alternatives.
#[derive(Clone, Debug, PartialEq)]
pub struct SampledToken {
    /// The token.
    pub token_id: u32,
    /// Its log-probability under the raw model distribution (see the module docs); -inf when
    /// that distribution is undefined (no finite logit). 0 when logprobs were not requested,
    /// because computing it costs a pass over the vocabulary.
    pub logprob: f32,
    /// The `logprobs` most likely tokens of the same distribution with their
    /// log-probabilities, most likely first, ties by lowest id. Empty when not requested.
    pub top_logprobs: Vec<(u32, f32)>,
}

/// One request's sampler: its parameters, its random generator and its penalty bookkeeping.
///
/// Keep one per sequence for its whole generation, so that draws follow the seed and the
/// penalty counts are updated incrementally instead of recounted for every token.
///
/// With a seed, the same logits and calls give the same tokens on the same Waypoint version
/// and backend; across versions the generator (rand's `StdRng`) or the arithmetic may change,
/// and across backends the logits themselves differ in their last bits.
#[derive(Debug)]
pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
    history: History,
    /// Reused so a step allocates nothing of vocabulary size after the first.
    raw: Vec<f32>,
    candidates: Vec<(u32, f32)>,
    nucleus: Nucleus,
}

impl Sampler {
    /// A sampler for `params`, seeded from `params.seed` or, without one, from the OS.
    pub fn new(params: &SamplingParams) -> Self {
        let rng = match params.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_os_rng(),
        };
        Self {
            params: params.clone(),
            rng,
            history: History::default(),
            raw: Vec::new(),
            candidates: Vec::new(),
            nucleus: Nucleus::default(),
        }
    }

    /// The parameters this sampler draws with: the request's one copy of them.
    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Picks the next token from `logits`, the model's raw logits (one per vocabulary entry).
    ///
    /// `prompt_ids` and `output_ids` are the sequence so far; `eos_token_ids` are the model's
    /// end-of-generation ids, masked together with the stop token ids while `output_ids` is
    /// shorter than `min_tokens` (unless `ignore_eos`, which makes them ordinary tokens).
    /// Ids outside the vocabulary are ignored.
    ///
    /// On return `logits` holds the processed logits: NaN replaced by -inf, penalties and
    /// masking applied; temperature and filters are not written back. Draws at most one random
    /// number per call, none when greedy, so a request's draws depend only on its own steps.
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
                logprob: if self.params.logprobs.is_some() {
                    f32::NEG_INFINITY
                } else {
                    0.0
                },
                top_logprobs: Vec::new(),
            };
        }
        // A branch-free scan first: NaN logits are rare, and the fix-up pass is not.
        if logits.iter().fold(false, |any, l| any | l.is_nan()) {
            for logit in logits.iter_mut().filter(|l| l.is_nan()) {
                *logit = f32::NEG_INFINITY;
            }
        }
        if self.params.logprobs.is_some() {
            self.raw.clear();
            self.raw.extend_from_slice(logits);
        }
        self.apply_penalties(logits, prompt_ids, output_ids);
        if output_ids.len() < self.params.min_tokens {
            let eos: &[u32] = if self.params.ignore_eos {
                &[]
            } else {
                eos_token_ids
            };
            for &id in eos.iter().chain(&self.params.stop_token_ids) {
                if let Some(logit) = logits.get_mut(id as usize) {
                    *logit = f32::NEG_INFINITY;
                }
            }
        }

        let token_id = if self.params.is_greedy() {
            argmax(logits)
        } else {
            self.draw(logits)
        };

        let (logprob, top_logprobs) = match self.params.logprobs {
            Some(n) => {
                let normalizer = Normalizer::of(&self.raw);
                let logprob = normalizer.logprob(self.raw[token_id as usize]);
                let top = top_n(&self.raw, n)
                    .into_iter()
                    .map(|(id, logit)| (id, normalizer.logprob(logit)))
                    .collect();
                (logprob, top)
            }
            None => (0.0, Vec::new()),
        };
        SampledToken {
            token_id,
            logprob,
            top_logprobs,
        }
    }

    fn apply_penalties(&mut self, logits: &mut [f32], prompt_ids: &[u32], output_ids: &[u32]) {
        let p = &self.params;
        let repetition = p.repetition_penalty != 1.0;
        let additive = p.frequency_penalty != 0.0 || p.presence_penalty != 0.0;
        if !repetition && !additive {
            return;
        }
        let history = &mut self.history;
        history.sync_output(output_ids);
        if repetition {
            history.sync_prompt(prompt_ids);
            let in_output_only = history
                .counts
                .keys()
                .filter(|id| !history.prompt_set.contains(id));
            for &id in history.prompt_set.iter().chain(in_output_only) {
                if let Some(logit) = logits.get_mut(id as usize) {
                    // Dividing a negative logit would raise its probability, hence the two cases.
                    *logit = if *logit > 0.0 {
                        *logit / p.repetition_penalty
                    } else {
                        *logit * p.repetition_penalty
                    };
                }
            }
        }
        if additive {
            for (&id, &count) in &history.counts {
                if let Some(logit) = logits.get_mut(id as usize) {
                    *logit -= p.frequency_penalty * count as f32 + p.presence_penalty;
                }
            }
        }
    }

    /// Temperature, top-k, top-p, min-p, then one draw.
    ///
    /// Candidates carry their scaled logit minus the maximum until the draw, so that top-k,
    /// top-p's order and min-p all compare logits, and exponentials are only taken where a
    /// probability mass is needed; those dominate the cost of a step.
    fn draw(&mut self, logits: &[f32]) -> u32 {
        let p = &self.params;
        // is_greedy() sent temperatures below MIN_TEMPERATURE (and NaN) to argmax, so this is
        // finite; +inf temperature gives 0, a uniform draw over the finite logits.
        let inv_temperature = 1.0 / p.temperature;
        let candidates = &mut self.candidates;
        candidates.clear();
        candidates.extend(
            logits
                .iter()
                .enumerate()
                .filter(|(_, &l)| l > f32::NEG_INFINITY)
                // Clamping before and after scaling turns +inf (and overflow) into the largest
                // finite value, so +inf logits tie for the maximum instead of producing NaN.
                .map(|(i, &l)| (i as u32, (l.min(f32::MAX) * inv_temperature).min(f32::MAX))),
        );
        if candidates.is_empty() {
            return argmax(logits);
        }
        if let Some(k) = p.top_k.filter(|&k| k > 0 && k < candidates.len()) {
            candidates.select_nth_unstable_by(k - 1, by_value_desc);
            candidates.truncate(k);
        }
        let max = candidates
            .iter()
            .map(|c| c.1)
            .fold(f32::NEG_INFINITY, f32::max);
        // Finite minus finite: at worst -inf (a zero weight), never NaN.
        for c in candidates.iter_mut() {
            c.1 -= max;
        }
        if p.top_p < 1.0 {
            self.nucleus.keep(candidates, p.top_p);
        }
        if p.min_p > 0.0 {
            // p_i >= min_p * p_max  <=>  logit_i - max >= ln(min_p): no exponentials needed, and
            // the most likely token (at 0 >= ln(min_p) for min_p <= 1) always stays.
            let floor = p.min_p.min(1.0).ln();
            candidates.retain(|c| c.1 >= floor);
        }

        let mut total = 0.0;
        for c in candidates.iter_mut() {
            c.1 = weight(c.1);
            total += f64::from(c.1);
        }
        let target = self.rng.random::<f64>() * total;
        let mut cumulative = 0.0;
        for &(id, weight) in candidates.iter() {
            cumulative += f64::from(weight);
            // Only a positive weight can raise `cumulative` past `target`, so an underflowed
            // (zero-weight) token is never returned here.
            if target < cumulative {
                return id;
            }
        }
        // `target` rounded up to `total`: the last token with weight takes the sliver.
        candidates
            .iter()
            .rev()
            .find(|c| c.1 > 0.0)
            .map_or_else(|| argmax(logits), |c| c.0)
    }
}

/// exp(`log_weight`) for a logit minus the maximum; 0 where that would be subnormal.
fn weight(log_weight: f32) -> f32 {
    if log_weight < MIN_LOG_WEIGHT {
        0.0
    } else {
        log_weight.exp()
    }
}

/// Larger value first, then lower id, so that selections and draws are deterministic.
fn by_value_desc(a: &(u32, f32), b: &(u32, f32)) -> Ordering {
    b.1.total_cmp(&a.1).then(a.0.cmp(&b.0))
}

/// Top-p's reusable buffers.
#[derive(Debug, Default)]
struct Nucleus {
    /// Probability mass (unnormalised) per bucket.
    mass: Vec<f64>,
    /// The candidates of the bucket where the nucleus ends.
    edge: Vec<(u32, f32)>,
}

impl Nucleus {
    /// Keeps the smallest set of most likely `candidates` (values: logit minus the maximum,
    /// all <= 0) whose probability reaches `top_p`; at least one.
    ///
    /// "Most likely first" is the order of [`by_value_desc`]. Buckets of that order are summed
    /// in one pass; the buckets before the one where the mass reaches `top_p` are kept whole,
    /// and only that one is sorted, instead of sorting the whole vocabulary.
    fn keep(&mut self, candidates: &mut Vec<(u32, f32)>, top_p: f32) {
        // Monotone in the value, so buckets never reorder tokens; `as` saturates, so -inf
        // (and anything past the last bucket) lands in the last one.
        let bucket =
            |value: f32| ((-value * NUCLEUS_BUCKETS_PER_LOGIT) as usize).min(NUCLEUS_BUCKETS - 1);
        self.mass.clear();
        self.mass.resize(NUCLEUS_BUCKETS, 0.0);
        for c in candidates.iter() {
            self.mass[bucket(c.1)] += f64::from(weight(c.1));
        }
        let target = f64::from(top_p) * self.mass.iter().sum::<f64>();
        let mut cumulative = 0.0;
        let Some(edge) = self.mass.iter().position(|&m| {
            cumulative += m;
            cumulative >= target
        }) else {
            // Summing in another order left the total a rounding error short of `target`.
            return;
        };
        cumulative -= self.mass[edge];

        self.edge.clear();
        self.edge
            .extend(candidates.iter().filter(|c| bucket(c.1) == edge).copied());
        self.edge.sort_unstable_by(by_value_desc);
        candidates.retain(|c| bucket(c.1) < edge);
        for &c in &self.edge {
            candidates.push(c);
            cumulative += f64::from(weight(c.1));
            if cumulative >= target {
                break;
            }
        }
    }
}

/// Index of the largest value, the lowest among ties; 0 when nothing beats -inf.
/// The index of the largest value, the first one on ties; 0 when none exceeds -inf.
fn argmax(values: &[f32]) -> u32 {
    // Per-lane maxima over chunks vectorize (a vocab-sized row per sequence per step is
    // most of the engine's own time at greedy decoding); a second, short pass finds the
    // first position of the maximum.
    const LANES: usize = 16;
    let mut lane_max = [f32::NEG_INFINITY; LANES];
    let chunks = values.chunks_exact(LANES);
    let tail = chunks.remainder();
    for chunk in chunks {
        for (m, &v) in lane_max.iter_mut().zip(chunk) {
            // NaN compares false, so it never wins.
            *m = if v > *m { v } else { *m };
        }
    }
    let best_value = lane_max
        .iter()
        .chain(tail)
        .fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m });
    if best_value == f32::NEG_INFINITY {
        return 0;
    }
    values.iter().position(|&v| v == best_value).unwrap_or(0) as u32
}

/// The log of the softmax denominator of one row, with the degenerate rows defined.
enum Normalizer {
    /// log Σ exp(logit), for rows whose largest logit is finite.
    Finite(f32),
    /// Rows with `+inf` logits: those share the probability, so each has -ln(count).
    Infinite(f32),
    /// No logit above -inf: no distribution, every logprob is -inf.
    Empty,
}

impl Normalizer {
    fn of(logits: &[f32]) -> Self {
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        if max == f32::INFINITY {
            let count = logits.iter().filter(|&&l| l == f32::INFINITY).count();
            return Self::Infinite(-(count as f32).ln());
        }
        if max == f32::NEG_INFINITY {
            return Self::Empty;
        }
        // Summed in f64 so 50k small terms do not lose digits to each other.
        let total: f64 = logits.iter().map(|&l| f64::from(weight(l - max))).sum();
        Self::Finite(max + total.ln() as f32)
    }

    fn logprob(&self, logit: f32) -> f32 {
        match *self {
            Self::Finite(log_total) if logit > f32::NEG_INFINITY => logit - log_total,
            Self::Infinite(share) if logit == f32::INFINITY => share,
            _ => f32::NEG_INFINITY,
        }
    }
}

/// The `n` largest values with their ids, largest first, ties by lowest id.
fn top_n(values: &[f32], n: usize) -> Vec<(u32, f32)> {
    let n = n.min(values.len());
    if n == 0 {
        return Vec::new();
    }
    if n > INSERTION_TOP_N {
        let mut all: Vec<(u32, f32)> = values
            .iter()
            .enumerate()
            .map(|(i, &v)| (i as u32, v))
            .collect();
        all.select_nth_unstable_by(n - 1, by_value_desc);
        all.truncate(n);
        all.sort_unstable_by(by_value_desc);
        return all;
    }
    let mut best: Vec<(u32, f32)> = Vec::with_capacity(n + 1);
    for (i, &v) in values.iter().enumerate() {
        // Ids arrive in increasing order, so an equal value already kept wins the tie.
        if best.len() == n && best[n - 1].1.total_cmp(&v) != Ordering::Less {
            continue;
        }
        let at = best.partition_point(|b| b.1.total_cmp(&v) != Ordering::Less);
        best.insert(at, (i as u32, v));
        best.truncate(n);
    }
    best
}

/// Token counts for the penalties, updated incrementally as the output grows.
///
/// Copies of the prompt and output they were built from are kept so a caller that passes a
/// different sequence (a retry, a rewritten output) gets a recount instead of wrong counts;
/// comparing them is a memcmp, far cheaper than re-hashing every token each step.
#[derive(Debug, Default)]
struct History {
    prompt: Vec<u32>,
    /// Distinct ids of `prompt`.
    prompt_set: HashSet<u32>,
    output: Vec<u32>,
    /// How often each id occurs in `output`.
    counts: HashMap<u32, u32>,
}

impl History {
    fn sync_prompt(&mut self, prompt_ids: &[u32]) {
        if self.prompt != prompt_ids {
            self.prompt = prompt_ids.to_vec();
            self.prompt_set = prompt_ids.iter().copied().collect();
        }
    }

    fn sync_output(&mut self, output_ids: &[u32]) {
        if !output_ids.starts_with(&self.output) {
            self.output.clear();
            self.counts.clear();
        }
        let new = &output_ids[self.output.len()..];
        for &id in new {
            *self.counts.entry(id).or_default() += 1;
        }
        self.output.extend_from_slice(new);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(f: impl FnOnce(&mut SamplingParams)) -> SamplingParams {
        let mut params = SamplingParams {
            seed: Some(42),
            ..SamplingParams::default()
        };
        f(&mut params);
        params
    }

    fn sample_once(params: &SamplingParams, logits: &[f32]) -> SampledToken {
        Sampler::new(params).sample(&mut logits.to_vec(), &[], &[], &[])
    }

    /// How often each token is drawn in `draws` calls of one sampler.
    fn frequencies(params: &SamplingParams, logits: &[f32], draws: usize) -> Vec<f64> {
        let mut sampler = Sampler::new(params);
        let mut counts = vec![0usize; logits.len()];
        for _ in 0..draws {
            let token = sampler.sample(&mut logits.to_vec(), &[], &[], &[]);
            counts[token.token_id as usize] += 1;
        }
        counts.iter().map(|&c| c as f64 / draws as f64).collect()
    }

    fn softmax(logits: &[f32], temperature: f32) -> Vec<f64> {
        let scaled: Vec<f64> = logits
            .iter()
            .map(|&l| f64::from(l) / f64::from(temperature))
            .collect();
        let max = scaled.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let total: f64 = scaled.iter().map(|s| (s - max).exp()).sum();
        scaled.iter().map(|s| (s - max).exp() / total).collect()
    }

    /// A deterministic pseudo-random row (no rng crate needed for fixtures).
    fn row(len: usize, salt: u32) -> Vec<f32> {
        (0..len as u32)
            .map(|i| {
                let h = (i ^ salt).wrapping_mul(2_654_435_761).rotate_left(13);
                (h % 10_000) as f32 / 1_000.0 - 5.0
            })
            .collect()
    }

    #[test]
    fn greedy_takes_the_argmax_and_the_lowest_id_on_ties() {
        let greedy = SamplingParams::greedy();
        assert_eq!(sample_once(&greedy, &[0.1, 3.0, -1.0, 3.0]).token_id, 1);
        assert_eq!(sample_once(&greedy, &[-5.0, -2.0, -3.0]).token_id, 1);
        assert_eq!(sample_once(&greedy, &[7.0]).token_id, 0);
        // Below MIN_TEMPERATURE is greedy too, instead of overflowing the division.
        let tiny = params(|p| p.temperature = 1e-7);
        assert_eq!(sample_once(&tiny, &[0.1, 3.0, -1.0, 3.0]).token_id, 1);
    }

    #[test]
    fn argmax_finds_the_first_maximum_in_any_lane_and_the_tail() {
        // Lengths around the 16-lane chunking; the maximum placed in every position, with a
        // tie later on and NaNs around.
        for len in [1, 15, 16, 17, 33, 100] {
            for at in 0..len {
                let mut values = vec![-1.0f32; len];
                values[at] = 4.0;
                if at + 5 < len {
                    values[at + 5] = 4.0;
                }
                if at > 0 {
                    values[at - 1] = f32::NAN;
                }
                assert_eq!(argmax(&values), at as u32, "len {len}, max at {at}");
            }
        }
        assert_eq!(argmax(&[f32::NEG_INFINITY; 20]), 0);
        assert_eq!(argmax(&[f32::NAN; 20]), 0);
        let mut with_inf = vec![0.0f32; 40];
        with_inf[37] = f32::INFINITY;
        assert_eq!(argmax(&with_inf), 37);
    }

    #[test]
    fn top_k_one_equals_greedy() {
        let top_k_one = params(|p| {
            p.top_k = Some(1);
            p.temperature = 5.0;
        });
        let mut sampler = Sampler::new(&top_k_one);
        for salt in 0..50 {
            let logits = row(1_000, salt);
            let greedy = sample_once(&SamplingParams::greedy(), &logits).token_id;
            assert_eq!(
                sampler.sample(&mut logits.clone(), &[], &[], &[]).token_id,
                greedy
            );
            assert_eq!(greedy, argmax(&logits));
        }
    }

    #[test]
    fn draws_follow_the_softmax_at_each_temperature() {
        let logits = [0.0f32, 1.0, 2.0, -1.0];
        for temperature in [1.0f32, 0.5, 2.0] {
            let got = frequencies(&params(|p| p.temperature = temperature), &logits, 10_000);
            let expected = softmax(&logits, temperature);
            for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
                // ~4 standard deviations at 10k draws; the seed is fixed, so this is a sanity
                // bound, not a flaky statistical test.
                assert!(
                    (g - e).abs() < 0.02,
                    "t={temperature} token {i}: {g} vs {e}"
                );
            }
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_tokens_and_other_seeds_differ() {
        let logits = row(50_000, 1);
        let run = |seed| {
            let mut sampler = Sampler::new(&params(|p| {
                p.seed = Some(seed);
                p.temperature = 3.0;
                p.top_p = 0.9;
            }));
            (0..40)
                .map(|_| sampler.sample(&mut logits.clone(), &[], &[], &[]).token_id)
                .collect::<Vec<_>>()
        };
        assert_eq!(run(3), run(3));
        assert_ne!(run(3), run(4));
    }

    #[test]
    fn top_k_keeps_only_the_k_most_likely() {
        let logits = [5.0f32, 4.0, 0.0, -1.0, 4.5];
        let got = frequencies(&params(|p| p.top_k = Some(2)), &logits, 5_000);
        assert_eq!((got[1], got[2], got[3]), (0.0, 0.0, 0.0));
        // Renormalised over the two: p(0) = 1 / (1 + e^-0.5) = 0.622.
        assert!((got[0] - 0.622).abs() < 0.03, "{got:?}");
        // Zero and k beyond the vocabulary are no-ops: every token shows up.
        let flat = [0.0f32; 5];
        for k in [Some(0), Some(5), Some(100), None] {
            let got = frequencies(&params(|p| p.top_k = k), &flat, 2_000);
            assert!(got.iter().all(|&f| f > 0.1), "{k:?}: {got:?}");
        }
    }

    #[test]
    fn top_p_keeps_the_smallest_set_that_reaches_p() {
        // Probabilities 0.5, 0.3, 0.15, 0.05 (shuffled ids so order comes from the sort).
        let logits = [0.15f32.ln(), 0.5f32.ln(), 0.05f32.ln(), 0.3f32.ln()];
        let kept = |top_p: f32| {
            let got = frequencies(&params(|p| p.top_p = top_p), &logits, 4_000);
            let mut ids: Vec<usize> = (0..4).filter(|&i| got[i] > 0.0).collect();
            ids.sort_unstable();
            ids
        };
        assert_eq!(kept(0.3), vec![1]);
        assert_eq!(kept(0.79), vec![1, 3]);
        assert_eq!(kept(0.81), vec![0, 1, 3]);
        assert_eq!(kept(1.0), vec![0, 1, 2, 3]);
        // Within the nucleus the draw is renormalised: 0.5 / 0.8.
        let got = frequencies(&params(|p| p.top_p = 0.79), &logits, 10_000);
        assert!((got[1] - 0.625).abs() < 0.02, "{got:?}");
    }

    #[test]
    fn top_p_applies_after_top_k_and_temperature() {
        // Top-2 of 0.5/0.3/0.15/0.05 renormalises to 0.625/0.375: top_p 0.6 keeps only one.
        let logits = [0.5f32.ln(), 0.3f32.ln(), 0.15f32.ln(), 0.05f32.ln()];
        let got = frequencies(
            &params(|p| {
                p.top_k = Some(2);
                p.top_p = 0.6;
            }),
            &logits,
            1_000,
        );
        assert_eq!(got[0], 1.0);
        // Temperature 0.5 squares and renormalises: p(0) = 0.25 / 0.365 = 0.685, so top_p 0.65
        // keeps token 0 alone where without temperature (p(0) = 0.5) it would keep two.
        let got = frequencies(
            &params(|p| {
                p.temperature = 0.5;
                p.top_p = 0.65;
            }),
            &logits,
            1_000,
        );
        assert_eq!(got[0], 1.0);
    }

    #[test]
    fn top_p_ends_at_the_right_token_on_flat_rows() {
        // 1000 nearly equal tokens: the nucleus for 0.5 is hundreds of them, across many
        // buckets, and must end at the right token inside the last one.
        let logits: Vec<f32> = (0..1_000).map(|i| -(i as f32) * 1e-3).collect();
        let probs = softmax(&logits, 1.0);
        let mut cumulative = 0.0;
        let size = probs
            .iter()
            .position(|p| {
                cumulative += p;
                cumulative >= 0.5
            })
            .unwrap()
            + 1;
        let got = frequencies(&params(|p| p.top_p = 0.5), &logits, 20_000);
        let last_drawn = got.iter().rposition(|&f| f > 0.0).unwrap();
        assert!(last_drawn < size, "{last_drawn} >= {size}");
        assert!(last_drawn > size - 20 && size > 300, "{last_drawn} {size}");
    }

    #[test]
    fn the_nucleus_matches_a_full_sort() {
        for (salt, scale) in [(1, 1.0f32), (2, 4.0), (3, 0.25), (4, 40.0)] {
            let values: Vec<(u32, f32)> = row(5_000, salt)
                .iter()
                .enumerate()
                .map(|(i, &l)| (i as u32, l * scale))
                .collect();
            let max = values.iter().map(|v| v.1).fold(f32::NEG_INFINITY, f32::max);
            let shifted: Vec<(u32, f32)> = values.iter().map(|&(i, v)| (i, v - max)).collect();
            let mut sorted = shifted.clone();
            sorted.sort_by(by_value_desc);
            let total: f64 = sorted.iter().map(|v| f64::from(v.1.exp())).sum();
            for top_p in [1e-6f32, 0.1, 0.5, 0.9, 0.99, 0.9999] {
                let mut cumulative = 0.0;
                let size = sorted
                    .iter()
                    .position(|v| {
                        cumulative += f64::from(v.1.exp());
                        cumulative >= f64::from(top_p) * total
                    })
                    .map_or(sorted.len(), |i| i + 1);
                let mut expected: Vec<u32> = sorted[..size].iter().map(|v| v.0).collect();
                expected.sort_unstable();
                let mut kept = shifted.clone();
                Nucleus::default().keep(&mut kept, top_p);
                let mut got: Vec<u32> = kept.iter().map(|v| v.0).collect();
                got.sort_unstable();
                assert_eq!(got, expected, "scale {scale} top_p {top_p}");
            }
        }
    }

    #[test]
    fn min_p_drops_tokens_below_a_fraction_of_the_best() {
        // Relative probabilities 1, 0.5, 0.25, 0.1.
        let logits = [0.0f32, 0.5f32.ln(), 0.25f32.ln(), 0.1f32.ln()];
        let kept = |min_p: f32| {
            let got = frequencies(&params(|p| p.min_p = min_p), &logits, 4_000);
            (0..4).filter(|&i| got[i] > 0.0).collect::<Vec<_>>()
        };
        assert_eq!(kept(0.0), vec![0, 1, 2, 3]);
        assert_eq!(kept(0.2), vec![0, 1, 2]);
        assert_eq!(kept(0.3), vec![0, 1]);
        assert_eq!(kept(0.9), vec![0]);
        assert_eq!(kept(1.0), vec![0]);
    }

    fn penalised(
        params: &SamplingParams,
        logits: &[f32],
        prompt: &[u32],
        output: &[u32],
    ) -> Vec<f32> {
        let mut logits = logits.to_vec();
        Sampler::new(params).sample(&mut logits, prompt, output, &[]);
        logits
    }

    #[test]
    fn repetition_penalty_divides_positive_and_multiplies_negative_seen_logits() {
        let p = params(|p| p.repetition_penalty = 2.0);
        let logits = [4.0f32, -2.0, 1.0, 3.0, 0.0, -1.0];
        // Token 1 is in the prompt only, 2 in the output only, 0 in both, 4 is zero.
        assert_eq!(
            penalised(&p, &logits, &[1, 0, 4, 99], &[0, 2, 2]),
            vec![2.0, -4.0, 0.5, 3.0, 0.0, -1.0]
        );
    }

    #[test]
    fn frequency_penalty_subtracts_per_output_occurrence() {
        let p = params(|p| p.frequency_penalty = 0.5);
        let logits = [4.0f32, -2.0, 1.0, 3.0];
        // The prompt does not count (OpenAI semantics).
        assert_eq!(
            penalised(&p, &logits, &[3, 3], &[0, 0, 0, 2]),
            vec![2.5, -2.0, 0.5, 3.0]
        );
        let negative = params(|p| p.frequency_penalty = -1.0);
        assert_eq!(
            penalised(&negative, &logits, &[], &[1, 1]),
            vec![4.0, 0.0, 1.0, 3.0]
        );
    }

    #[test]
    fn presence_penalty_subtracts_once_per_output_token() {
        let p = params(|p| p.presence_penalty = 0.25);
        let logits = [4.0f32, -2.0, 1.0, 3.0];
        assert_eq!(
            penalised(&p, &logits, &[3], &[0, 0, 0, 2]),
            vec![3.75, -2.0, 0.75, 3.0]
        );
    }

    #[test]
    fn penalties_combine_in_vllm_order() {
        let p = params(|p| {
            p.repetition_penalty = 2.0;
            p.frequency_penalty = 0.5;
            p.presence_penalty = 0.25;
        });
        let logits = [4.0f32, -2.0, 1.0, 3.0];
        // Token 0: 4/2 - 0.5*2 - 0.25; token 1 (prompt only): -2*2; token 2: 1/2 - 0.5 - 0.25.
        assert_eq!(
            penalised(&p, &logits, &[1], &[0, 0, 2]),
            vec![0.75, -4.0, -0.25, 3.0]
        );
    }

    #[test]
    fn incremental_penalty_counts_match_a_fresh_count() {
        let p = params(|p| {
            p.repetition_penalty = 1.5;
            p.frequency_penalty = 0.3;
            p.presence_penalty = 0.2;
        });
        let logits = row(64, 9);
        let mut sampler = Sampler::new(&p);
        let prompt = [5u32, 6, 7, 5];
        let mut output = Vec::new();
        for step in 0..30u32 {
            let mut incremental = logits.clone();
            sampler.sample(&mut incremental, &prompt, &output, &[]);
            assert_eq!(incremental, penalised(&p, &logits, &prompt, &output));
            output.push(step * 7 % 11);
        }
        // A rewritten output and another prompt are recounted, not patched.
        let rewritten = [1u32, 1, 2];
        let mut got = logits.clone();
        sampler.sample(&mut got, &[9], &rewritten, &[]);
        assert_eq!(got, penalised(&p, &logits, &[9], &rewritten));
    }

    #[test]
    fn min_tokens_masks_end_tokens_until_reached() {
        let p = SamplingParams {
            min_tokens: 2,
            stop_token_ids: vec![1],
            ..SamplingParams::greedy()
        };
        let logits = [1.0f32, 9.0, 8.0, 0.0];
        let mut sampler = Sampler::new(&p);
        let mut masked = logits.to_vec();
        // Eos 2 and stop token 1 are masked with one output token; out-of-vocab eos ignored.
        assert_eq!(sampler.sample(&mut masked, &[], &[3], &[2, 99]).token_id, 0);
        assert_eq!(masked, vec![1.0, f32::NEG_INFINITY, f32::NEG_INFINITY, 0.0]);
        assert_eq!(
            sampler
                .sample(&mut logits.to_vec(), &[], &[3, 0], &[2])
                .token_id,
            1
        );
        // ignore_eos makes eos an ordinary token: only stop_token_ids stay masked.
        let ignore = SamplingParams {
            ignore_eos: true,
            ..p
        };
        assert_eq!(
            Sampler::new(&ignore)
                .sample(&mut logits.to_vec(), &[], &[], &[2])
                .token_id,
            2
        );
    }

    #[test]
    fn min_tokens_masking_holds_when_sampling() {
        let p = params(|p| p.min_tokens = 3);
        let logits = [0.0f32, 5.0, 0.0];
        let mut sampler = Sampler::new(&p);
        for _ in 0..500 {
            let t = sampler.sample(&mut logits.to_vec(), &[], &[0, 0], &[1]);
            assert_ne!(t.token_id, 1);
        }
    }

    #[test]
    fn logprobs_are_normalised_ordered_and_raw() {
        let logits = [1.0f32, 3.0, 2.0, 3.0, -1.0];
        let p = SamplingParams {
            logprobs: Some(5),
            repetition_penalty: 3.0,
            ..SamplingParams::greedy()
        };
        // The penalty moves the argmax to token 3, but logprobs describe the raw row.
        let t = Sampler::new(&p).sample(&mut logits.to_vec(), &[1], &[], &[]);
        assert_eq!(t.token_id, 3);
        let ids: Vec<u32> = t.top_logprobs.iter().map(|e| e.0).collect();
        assert_eq!(ids, vec![1, 3, 2, 0, 4]);
        let expected = softmax(&logits, 1.0);
        for &(id, lp) in &t.top_logprobs {
            assert!((f64::from(lp) - expected[id as usize].ln()).abs() < 1e-5);
        }
        let total: f64 = t.top_logprobs.iter().map(|e| f64::from(e.1).exp()).sum();
        assert!((total - 1.0).abs() < 1e-5, "{total}");
        assert!(t.top_logprobs.windows(2).all(|w| w[0].1 >= w[1].1));
        assert_eq!(t.logprob, t.top_logprobs[1].1);
    }

    #[test]
    fn sampled_logprob_matches_its_top_entry_and_n_is_honoured() {
        let logits = row(5_000, 3);
        let mut sampler = Sampler::new(&params(|p| {
            p.logprobs = Some(20);
            p.top_k = Some(3);
        }));
        for _ in 0..50 {
            let t = sampler.sample(&mut logits.clone(), &[], &[], &[]);
            assert_eq!(t.top_logprobs.len(), 20);
            // With top_k 3 the sampled token is always among the 20 most likely.
            let entry = t.top_logprobs.iter().find(|e| e.0 == t.token_id).unwrap();
            assert_eq!(entry.1, t.logprob);
        }
        let only_token = sample_once(&params(|p| p.logprobs = Some(0)), &logits);
        assert!(only_token.top_logprobs.is_empty());
        assert!(only_token.logprob < 0.0);
        let none = sample_once(&params(|p| p.logprobs = None), &logits);
        assert_eq!((none.logprob, none.top_logprobs.len()), (0.0, 0));
        // More than the vocabulary gives the whole vocabulary.
        let all = sample_once(&params(|p| p.logprobs = Some(20)), &[0.0, 1.0]);
        assert_eq!(all.top_logprobs.len(), 2);
    }

    #[test]
    fn top_n_agrees_with_a_full_sort() {
        let values = row(3_000, 5);
        let mut sorted: Vec<(u32, f32)> = values
            .iter()
            .enumerate()
            .map(|(i, &v)| (i as u32, v))
            .collect();
        sorted.sort_by(by_value_desc);
        for n in [1, 7, 20, INSERTION_TOP_N, INSERTION_TOP_N + 1, 500] {
            assert_eq!(top_n(&values, n), sorted[..n].to_vec(), "n={n}");
        }
        assert_eq!(top_n(&[1.0, 1.0, 1.0], 2), vec![(0, 1.0), (1, 1.0)]);
    }

    #[test]
    fn degenerate_rows_do_not_panic() {
        let samplers = [
            SamplingParams::greedy(),
            params(|p| {
                p.top_p = 0.5;
                p.min_p = 0.1;
                p.logprobs = Some(3);
            }),
            params(|p| {
                p.top_k = Some(2);
                p.repetition_penalty = 1.3;
            }),
        ];
        let nan = f32::NAN;
        let neg = f32::NEG_INFINITY;
        for p in samplers {
            assert_eq!(sample_once(&p, &[]).token_id, 0);
            assert_eq!(sample_once(&p, &[nan, nan]).token_id, 0);
            assert_eq!(sample_once(&p, &[neg; 3]).token_id, 0);
            assert_eq!(sample_once(&p, &[nan, 1.0, neg]).token_id, 1);
            assert_eq!(sample_once(&p, &[nan, neg, 0.5, nan]).token_id, 2);
            assert_eq!(sample_once(&p, &[1.0, f32::INFINITY, 2.0]).token_id, 1);
            assert_eq!(
                sample_once(&p, &[f32::MAX, f32::MIN, f32::MAX]).token_id % 2,
                0
            );
            // min_tokens masking every token leaves nothing finite: token 0.
            let masked = SamplingParams {
                min_tokens: 1,
                stop_token_ids: vec![0, 1],
                ..p.clone()
            };
            assert_eq!(sample_once(&masked, &[2.0, 1.0]).token_id, 0);
        }
    }

    #[test]
    fn degenerate_rows_have_defined_logprobs() {
        let p = params(|p| p.logprobs = Some(3));
        let empty = sample_once(&p, &[]);
        assert_eq!(empty.logprob, f32::NEG_INFINITY);
        assert!(empty.top_logprobs.is_empty());
        let all_neg = sample_once(&p, &[f32::NAN, f32::NEG_INFINITY]);
        assert_eq!(all_neg.logprob, f32::NEG_INFINITY);
        assert_eq!(
            all_neg.top_logprobs,
            vec![(0, f32::NEG_INFINITY), (1, f32::NEG_INFINITY)]
        );
        // Two +inf logits split the probability; the sampler draws only between them.
        let inf = f32::INFINITY;
        let mut sampler = Sampler::new(&p);
        for _ in 0..200 {
            let t = sampler.sample(&mut [5.0, inf, 3.0, inf], &[], &[], &[]);
            assert!(t.token_id == 1 || t.token_id == 3);
            assert!((t.logprob - 0.5f32.ln()).abs() < 1e-6);
            assert_eq!(t.top_logprobs[2], (0, f32::NEG_INFINITY));
        }
        // A NaN logit next to finite ones is simply impossible.
        let t = sample_once(&p, &[0.0, f32::NAN]);
        assert_eq!((t.token_id, t.logprob), (0, 0.0));
    }

    #[test]
    fn unvalidated_params_do_not_panic() {
        let logits = row(100, 2);
        let bad = [
            params(|p| p.temperature = f32::NAN),
            params(|p| p.temperature = -1.0),
            params(|p| p.temperature = f32::INFINITY),
            params(|p| p.top_p = 0.0),
            params(|p| p.top_p = -1.0),
            params(|p| p.top_p = f32::NAN),
            params(|p| p.top_p = 7.0),
            params(|p| p.min_p = 3.0),
            params(|p| p.min_p = f32::NAN),
            params(|p| p.repetition_penalty = f32::NAN),
            params(|p| p.frequency_penalty = f32::INFINITY),
            params(|p| p.logprobs = Some(1_000)),
        ];
        for p in bad {
            let t = Sampler::new(&p).sample(&mut logits.clone(), &[1, 2], &[3, 3], &[4]);
            assert!((t.token_id as usize) < logits.len(), "{p:?}");
        }
        // top_p at or below zero still keeps the single most likely token.
        let t = sample_once(&params(|p| p.top_p = 0.0), &[0.0, 2.0, 1.0]);
        assert_eq!(t.token_id, 1);
    }
}
