//! One process-wide clock that events carry as `ts.monotonic`, and its mapping to wall time.

use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

/// The moment the clock starts, read once on both clocks.
struct Anchor {
    monotonic: Instant,
    wall: SystemTime,
}

static ANCHOR: OnceLock<Anchor> = OnceLock::new();

fn anchor() -> &'static Anchor {
    ANCHOR.get_or_init(|| Anchor {
        monotonic: Instant::now(),
        wall: SystemTime::now(),
    })
}

/// Seconds elapsed on the process-wide monotonic clock: the value to put in an event's
/// [`MONOTONIC_TIMESTAMP_FIELD`](crate::MONOTONIC_TIMESTAMP_FIELD).
///
/// The clock starts (at `0.0`) the first time any function of this module is called, when it
/// reads [`Instant::now`] and [`SystemTime::now`] together. It never goes backwards, whatever
/// the wall clock does afterwards.
///
/// ```
/// let earlier = waypoint_layers::monotonic_seconds();
/// let later = waypoint_layers::monotonic_seconds();
/// assert!(earlier >= 0.0 && later >= earlier);
/// ```
pub fn monotonic_seconds() -> f64 {
    anchor().monotonic.elapsed().as_secs_f64()
}

/// The reading of [`monotonic_seconds`] that corresponds to `instant`, for a moment that was
/// captured as an [`Instant`] (say, when a request arrived) and is reported later.
///
/// Instants from before the clock started give negative seconds.
///
/// ```
/// use std::time::{Duration, Instant};
///
/// let arrived = Instant::now();
/// let t = waypoint_layers::monotonic_seconds_at(arrived);
/// let later = waypoint_layers::monotonic_seconds_at(arrived + Duration::from_millis(250));
/// assert!((later - t - 0.25).abs() < 1e-9);
/// ```
pub fn monotonic_seconds_at(instant: Instant) -> f64 {
    let start = anchor().monotonic;
    match instant.checked_duration_since(start) {
        Some(after) => after.as_secs_f64(),
        None => -start.duration_since(instant).as_secs_f64(),
    }
}

/// The wall-clock time of a reading of [`monotonic_seconds`]: the wall time read when the
/// clock started, plus `monotonic_seconds`.
///
/// Every reading maps through the same anchor, so mapped times keep the order and spacing of
/// the monotonic readings even if the system clock is stepped while the process runs. Negative
/// readings map to times before the anchor. A reading that is not finite, or that
/// [`SystemTime`] cannot represent, maps to the anchor's wall time.
///
/// ```
/// use waypoint_layers::{monotonic_seconds, wall_time_of};
///
/// let t = monotonic_seconds();
/// let gap = wall_time_of(t + 1.5).duration_since(wall_time_of(t)).unwrap();
/// assert!((gap.as_secs_f64() - 1.5).abs() < 1e-6);
/// ```
pub fn wall_time_of(monotonic_seconds: f64) -> SystemTime {
    let anchor = anchor();
    let mapped = match Duration::try_from_secs_f64(monotonic_seconds.abs()) {
        Ok(offset) if monotonic_seconds >= 0.0 => anchor.wall.checked_add(offset),
        Ok(offset) => anchor.wall.checked_sub(offset),
        Err(_) => None,
    };
    mapped.unwrap_or(anchor.wall)
}
