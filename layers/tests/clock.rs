//! The process-wide clock and its mapping to wall time.

use std::time::{Duration, Instant, SystemTime};

use waypoint_layers::{monotonic_seconds, monotonic_seconds_at, wall_time_of};

#[test]
fn the_clock_never_goes_backwards() {
    let mut last = monotonic_seconds();
    for _ in 0..1000 {
        let now = monotonic_seconds();
        assert!(now >= last);
        last = now;
    }
}

#[test]
fn the_mapped_current_time_is_the_wall_time() {
    let mapped = wall_time_of(monotonic_seconds());
    let wall = SystemTime::now();
    let skew = match wall.duration_since(mapped) {
        Ok(behind) => behind,
        Err(ahead) => ahead.duration(),
    };
    assert!(skew < Duration::from_secs(1), "{skew:?}");
}

#[test]
fn instants_map_onto_the_same_clock() {
    let instant = Instant::now();
    let t = monotonic_seconds_at(instant);
    let later = monotonic_seconds_at(instant + Duration::from_millis(1500));
    assert!((later - t - 1.5).abs() < 1e-9);
    assert!(t <= monotonic_seconds());
    // Before the clock started.
    let early = monotonic_seconds_at(instant - Duration::from_secs(2));
    assert!((t - early - 2.0).abs() < 1e-9);
}

#[test]
fn readings_map_through_one_anchor() {
    let anchor = wall_time_of(0.0);
    assert_eq!(wall_time_of(2.5), anchor + Duration::from_millis(2500));
    assert_eq!(wall_time_of(-2.5), anchor - Duration::from_millis(2500));
    assert_eq!(wall_time_of(f64::NAN), anchor);
    assert_eq!(wall_time_of(f64::INFINITY), anchor);
}
