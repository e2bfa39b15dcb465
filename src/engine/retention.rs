//! Tail retention: which recorded journeys are exported, decided when the request ends.
//!
//! Below a journey sample rate of 1, a request the head draw did not pick still has its
//! journey recorded in memory ([`super::journey`]); when it ends, [`KeepRules::judge`] looks
//! at how it went and keeps it if it failed, was aborted, was preempted or was slow. The
//! rules are plain data, given to each request at arrival, so a request keeps the rules it
//! arrived under when an operator changes them.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use super::types::FinishReason;

/// Why a journey was exported (`waypoint.retention.reason`, and the `reason` label of
/// `waypoint_journeys_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RetentionReason {
    /// Picked by the head draw at the sample rate.
    Head,
    /// Forced by `x-waypoint-trace: 1`.
    Forced,
    /// Its caller's `traceparent` was sampled.
    Parent,
    /// It failed (an engine error, or a 5xx answer).
    Error,
    /// It was aborted (the client left, or the shutdown timeout passed).
    Aborted,
    /// It was preempted at least once.
    Preempted,
    /// Queued longer than the `queue` rule.
    SlowQueue,
    /// First token later than the `ttft` rule.
    SlowTtft,
    /// A gap between two tokens longer than the `itl_max` rule.
    SlowItl,
    /// Ended later than the `e2e` rule.
    SlowE2e,
}

impl RetentionReason {
    /// Every reason, in the order the labels are listed.
    pub const ALL: [Self; 10] = [
        Self::Head,
        Self::Forced,
        Self::Parent,
        Self::Error,
        Self::Aborted,
        Self::Preempted,
        Self::SlowQueue,
        Self::SlowTtft,
        Self::SlowItl,
        Self::SlowE2e,
    ];

    /// The attribute and label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Head => "head",
            Self::Forced => "forced",
            Self::Parent => "parent",
            Self::Error => "error",
            Self::Aborted => "aborted",
            Self::Preempted => "preempted",
            Self::SlowQueue => "slow_queue",
            Self::SlowTtft => "slow_ttft",
            Self::SlowItl => "slow_itl",
            Self::SlowE2e => "slow_e2e",
        }
    }
}

/// How a request went, measured by the engine from the request's arrival at the API.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Outcome {
    /// How it ended.
    pub reason: FinishReason,
    /// Times it was preempted.
    pub num_preemptions: u32,
    /// Seconds from arrival to its first scheduling, if it got there.
    pub queue: Option<f64>,
    /// Seconds from arrival to its first token, if it got one.
    pub ttft: Option<f64>,
    /// The longest gap between two of its tokens, in seconds.
    pub itl_max: Option<f64>,
    /// Seconds from arrival to its end.
    pub e2e: f64,
}

/// Latency thresholds over which a journey is kept: `--journey-tracing-keep`, e.g.
/// `ttft>2s,queue>1s,itl_max>1s,e2e>60s` (units `ms`, `s`, `m`; `none` for no rule).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeepRules {
    /// Time in the queue before the first scheduling.
    pub queue: Option<Duration>,
    /// Time to the first token.
    pub ttft: Option<Duration>,
    /// The longest inter-token gap.
    pub itl_max: Option<Duration>,
    /// Time to the end.
    pub e2e: Option<Duration>,
}

/// The default `--journey-tracing-keep`: the slow tail a user would notice.
pub const DEFAULT_KEEP_RULES: &str = "queue>1s,ttft>2s,itl_max>1s,e2e>60s";

impl Default for KeepRules {
    fn default() -> Self {
        DEFAULT_KEEP_RULES.parse().expect("the default rules parse")
    }
}

impl KeepRules {
    /// No latency rule: only failures, aborts and preemptions are kept.
    pub const NONE: Self = Self {
        queue: None,
        ttft: None,
        itl_max: None,
        e2e: None,
    };

    /// Why a request that went like `outcome` is kept, if it is: failures first, then
    /// aborts, preemptions and the latency rules in the order of the request's life.
    pub fn judge(&self, outcome: &Outcome) -> Option<RetentionReason> {
        let over = |value: Option<f64>, limit: Option<Duration>| {
            value
                .zip(limit)
                .is_some_and(|(value, limit)| value > limit.as_secs_f64())
        };
        if outcome.reason == FinishReason::Error {
            Some(RetentionReason::Error)
        } else if outcome.reason == FinishReason::Abort {
            Some(RetentionReason::Aborted)
        } else if outcome.num_preemptions > 0 {
            Some(RetentionReason::Preempted)
        } else if over(outcome.queue, self.queue) {
            Some(RetentionReason::SlowQueue)
        } else if over(outcome.ttft, self.ttft) {
            Some(RetentionReason::SlowTtft)
        } else if over(outcome.itl_max, self.itl_max) {
            Some(RetentionReason::SlowItl)
        } else if over(Some(outcome.e2e), self.e2e) {
            Some(RetentionReason::SlowE2e)
        } else {
            None
        }
    }

    fn rules(&self) -> [(&'static str, Option<Duration>); 4] {
        [
            ("queue", self.queue),
            ("ttft", self.ttft),
            ("itl_max", self.itl_max),
            ("e2e", self.e2e),
        ]
    }
}

/// A `--journey-tracing-keep` value that does not parse; the message names the part.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid keep rule {part:?}: {why} (expected e.g. \"{DEFAULT_KEEP_RULES}\", or \"none\")")]
pub struct InvalidKeepRule {
    part: String,
    why: &'static str,
}

/// Longest threshold a rule accepts: a day.
const MAX_THRESHOLD: Duration = Duration::from_secs(86_400);

fn parse_duration(text: &str) -> Option<Duration> {
    let (number, scale) = if let Some(ms) = text.strip_suffix("ms") {
        (ms, 1e-3)
    } else if let Some(s) = text.strip_suffix('s') {
        (s, 1.0)
    } else if let Some(m) = text.strip_suffix('m') {
        (m, 60.0)
    } else {
        return None;
    };
    let value: f64 = number.trim().parse().ok()?;
    Duration::try_from_secs_f64(value * scale)
        .ok()
        .filter(|duration| *duration <= MAX_THRESHOLD)
}

impl FromStr for KeepRules {
    type Err = InvalidKeepRule;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut rules = Self::NONE;
        let text = text.trim();
        if text.is_empty() || text == "none" {
            return Ok(rules);
        }
        for part in text.split(',') {
            let invalid = |why| InvalidKeepRule {
                part: part.to_string(),
                why,
            };
            let (name, limit) = part
                .split_once('>')
                .ok_or_else(|| invalid("a rule is NAME>DURATION"))?;
            let limit = parse_duration(limit.trim())
                .ok_or_else(|| invalid("the duration needs a unit (ms, s, m) and at most 1 day"))?;
            let slot = match name.trim() {
                "queue" => &mut rules.queue,
                "ttft" => &mut rules.ttft,
                "itl_max" => &mut rules.itl_max,
                "e2e" => &mut rules.e2e,
                _ => return Err(invalid("the names are queue, ttft, itl_max and e2e")),
            };
            if slot.replace(limit).is_some() {
                return Err(invalid("each name may appear once"));
            }
        }
        Ok(rules)
    }
}

impl fmt::Display for KeepRules {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (name, limit) in self.rules() {
            if let Some(limit) = limit {
                let separator = if first { "" } else { "," };
                write!(f, "{separator}{name}>{}ms", limit.as_millis())?;
                first = false;
            }
        }
        if first {
            f.write_str("none")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome() -> Outcome {
        Outcome {
            reason: FinishReason::Stop,
            num_preemptions: 0,
            queue: Some(0.01),
            ttft: Some(0.1),
            itl_max: Some(0.05),
            e2e: 1.0,
        }
    }

    #[test]
    fn rules_parse_print_and_refuse_with_the_bad_part_named() {
        let rules: KeepRules = "ttft>2s, e2e>1.5m,queue>250ms".parse().unwrap();
        assert_eq!(rules.ttft, Some(Duration::from_secs(2)));
        assert_eq!(rules.e2e, Some(Duration::from_secs(90)));
        assert_eq!(rules.queue, Some(Duration::from_millis(250)));
        assert_eq!(rules.itl_max, None);
        assert_eq!(rules.to_string(), "queue>250ms,ttft>2000ms,e2e>90000ms");
        assert_eq!(rules.to_string().parse::<KeepRules>().unwrap(), rules);
        assert_eq!("none".parse::<KeepRules>().unwrap(), KeepRules::NONE);
        assert_eq!(KeepRules::NONE.to_string(), "none");
        for bad in [
            "ttft",
            "ttft>2",
            "tft>2s",
            "ttft>2s,ttft>3s",
            "e2e>-1s",
            "e2e>2d",
        ] {
            let error = bad.parse::<KeepRules>().unwrap_err().to_string();
            let first = bad.split(',').next_back().unwrap();
            assert!(error.contains(first), "{bad}: {error}");
        }
        assert_eq!(
            KeepRules::default().to_string(),
            "queue>1000ms,ttft>2000ms,itl_max>1000ms,e2e>60000ms"
        );
    }

    #[test]
    fn every_reason_is_a_label_of_the_journeys_metric() {
        for reason in RetentionReason::ALL {
            assert!(
                crate::metrics::JOURNEY_OUTCOMES.contains(&("kept", reason.as_str())),
                "{reason:?}"
            );
        }
    }

    #[test]
    fn failures_aborts_preemptions_and_each_slow_rule_keep() {
        let rules: KeepRules = "queue>1s,ttft>2s,itl_max>1s,e2e>30s".parse().unwrap();
        assert_eq!(rules.judge(&outcome()), None);
        let keep = |change: fn(&mut Outcome)| {
            let mut outcome = outcome();
            change(&mut outcome);
            rules.judge(&outcome)
        };
        use RetentionReason::*;
        assert_eq!(keep(|o| o.reason = FinishReason::Error), Some(Error));
        assert_eq!(keep(|o| o.reason = FinishReason::Abort), Some(Aborted));
        assert_eq!(keep(|o| o.num_preemptions = 1), Some(Preempted));
        assert_eq!(keep(|o| o.queue = Some(1.5)), Some(SlowQueue));
        assert_eq!(keep(|o| o.ttft = Some(2.5)), Some(SlowTtft));
        assert_eq!(keep(|o| o.itl_max = Some(1.5)), Some(SlowItl));
        assert_eq!(keep(|o| o.e2e = 31.0), Some(SlowE2e));
        // Exactly at the threshold is not over it.
        assert_eq!(keep(|o| o.ttft = Some(2.0)), None);
        assert_eq!(
            KeepRules::NONE.judge(&Outcome {
                e2e: 1e6,
                ..outcome()
            }),
            None
        );
    }
}
