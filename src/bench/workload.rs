//! The synthetic workload: random token-id prompts and Poisson arrival times, both seeded so
//! that two runs with the same arguments send the same traffic.

use std::ops::Range;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Mixed into the seed of the arrival-time generator so that it draws a stream independent of
/// the prompt generator's, yet both follow from the one `--seed`.
const ARRIVAL_SEED_SALT: u64 = 0x9E37_79B9_7F4A_7C15;

/// `count` prompts of `len` token ids each, drawn uniformly from `ids`.
///
/// Sending token ids rather than text makes every prompt exactly `len` tokens long whatever
/// the server's tokenizer, and spares the client a tokenizer.
///
/// # Panics
/// If `ids` is empty.
pub fn random_prompts(count: usize, len: usize, ids: Range<u32>, seed: u64) -> Vec<Vec<u32>> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..count)
        .map(|_| (0..len).map(|_| rng.random_range(ids.clone())).collect())
        .collect()
}

/// When each of `count` requests is sent, relative to the start of the run.
///
/// With `rate` requests per second (`Some`) the requests form a Poisson process: the first goes
/// out at once (so the run does not begin idle) and the gaps between requests are exponential
/// with mean `1 / rate`. With `None` (an infinite rate) all go out at once.
pub fn arrival_offsets(count: usize, rate: Option<f64>, seed: u64) -> Vec<Duration> {
    let Some(rate) = rate else {
        return vec![Duration::ZERO; count];
    };
    let mut rng = StdRng::seed_from_u64(seed ^ ARRIVAL_SEED_SALT);
    let mut at = 0.0f64;
    (0..count)
        .map(|i| {
            if i > 0 {
                // Inverse-CDF sampling; `1 - u` lies in (0, 1], so the logarithm is finite.
                let u: f64 = rng.random();
                at += -(1.0 - u).ln() / rate;
            }
            // Saturates instead of panicking when a tiny rate overflows a `Duration`.
            Duration::try_from_secs_f64(at).unwrap_or(Duration::MAX)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompts_are_seeded_sized_and_in_range() {
        let a = random_prompts(3, 17, 1000..10_000, 42);
        assert_eq!(a.len(), 3);
        assert!(a.iter().all(|p| p.len() == 17));
        assert!(a.iter().flatten().all(|id| (1000..10_000).contains(id)));
        assert_eq!(a, random_prompts(3, 17, 1000..10_000, 42));
        assert_ne!(a, random_prompts(3, 17, 1000..10_000, 43));
        // Prompts differ from one another, so no server-side prefix cache makes them free.
        assert_ne!(a[0], a[1]);
        assert_eq!(random_prompts(2, 4, 5..6, 0), vec![vec![5; 4]; 2]);
    }

    #[test]
    fn infinite_rate_sends_everything_at_once() {
        assert_eq!(arrival_offsets(4, None, 0), vec![Duration::ZERO; 4]);
    }

    #[test]
    fn a_vanishing_rate_saturates_instead_of_panicking() {
        let offsets = arrival_offsets(3, Some(1e-300), 0);
        assert_eq!(offsets[0], Duration::ZERO);
        assert_eq!(offsets[2], Duration::MAX);
    }

    #[test]
    fn poisson_arrivals_are_seeded_ordered_and_have_the_right_mean_gap() {
        let offsets = arrival_offsets(20_000, Some(50.0), 7);
        assert_eq!(offsets[0], Duration::ZERO);
        assert!(offsets.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(offsets, arrival_offsets(20_000, Some(50.0), 7));
        // Mean gap 1/50 s = 20 ms; with 20k samples the standard error is 0.14 ms, and the seed
        // is fixed, so a 1 ms band cannot flake.
        let mean_gap = offsets.last().unwrap().as_secs_f64() / (offsets.len() - 1) as f64;
        assert!((mean_gap - 0.02).abs() < 0.001, "mean gap {mean_gap}");
    }
}
