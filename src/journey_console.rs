//! One readable console line per journey event (`RUST_LOG=waypoint::journey=debug`):
//!
//! ```text
//! 2026-11-28T03:29:35.701Z journey SCHEDULED request=cmpl-1f.. step=3 phase=PREFILL prefill=0/12 decode=0/8 preemptions=0 kind=FIRST
//! ```
//!
//! The general console layer skips these events, so each is printed once, without the span
//! context the general format would put in front of it.

use std::fmt::Write as _;
use std::io::Write as _;

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::Layer;

/// Targets whose events this layer prints (and the general console skips).
pub const JOURNEY_TARGETS: [&str; 2] = ["waypoint::journey", "waypoint::api"];

/// Whether `target` is one of [`JOURNEY_TARGETS`].
pub fn is_journey_target(target: &str) -> bool {
    JOURNEY_TARGETS.contains(&target)
}

/// Prints journey events to stderr, one line each.
#[derive(Debug, Default)]
pub struct JourneyConsoleLayer;

/// The fields of one journey event, as text.
#[derive(Debug, Default)]
struct JourneyLine {
    fields: Vec<(&'static str, String)>,
}

impl Visit for JourneyLine {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.fields.push((field.name(), format!("{value:?}")));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.fields.push((field.name(), value.to_string()));
    }
}

impl JourneyLine {
    fn get(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// `journey SCHEDULED request=... step=3 phase=PREFILL prefill=0/12 decode=0/8 ...`.
    fn render(&self, target: &str) -> String {
        let scope = target.rsplit("::").next().unwrap_or(target);
        let mut line = format!("{scope} {}", self.get("event.type").unwrap_or("?"));
        let mut push = |label: &str, value: Option<String>| {
            if let Some(value) = value {
                let _ = write!(line, " {label}={value}");
            }
        };
        let pair = |a: &str, b: &str| Some(format!("{}/{}", self.get(a)?, self.get(b)?));
        push("request", self.get("request_id").map(str::to_string));
        push("step", self.get("scheduler.step").map(str::to_string));
        push("phase", self.get("phase").map(str::to_string));
        push(
            "prefill",
            pair("prefill.done_tokens", "prefill.total_tokens"),
        );
        push("decode", pair("decode.done_tokens", "decode.max_tokens"));
        push(
            "preemptions",
            self.get("num_preemptions").map(str::to_string),
        );
        push("kind", self.get("schedule.kind").map(str::to_string));
        push("status", self.get("finish.status").map(str::to_string));
        push("reason", self.get("abort.reason").map(str::to_string));
        line
    }
}

impl<S: Subscriber> Layer<S> for JourneyConsoleLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let target = event.metadata().target();
        if !is_journey_target(target) {
            return;
        }
        let mut fields = JourneyLine::default();
        event.record(&mut fields);
        let now = humantime_now();
        let _ = writeln!(std::io::stderr().lock(), "{now} {}", fields.render(target));
    }
}

/// UTC now as `YYYY-MM-DDTHH:MM:SS.mmmZ`, without a date crate.
fn humantime_now() -> String {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = since.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (hour, minute, second) = (rem / 3600, rem % 3600 / 60, rem % 60);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}.{:03}Z",
        since.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_journey_event_renders_as_one_readable_line() {
        let line = JourneyLine {
            fields: vec![
                ("request_id", "cmpl-1".into()),
                ("event.type", "SCHEDULED".into()),
                ("ts.monotonic", "1.5".into()),
                ("scheduler.step", "3".into()),
                ("phase", "PREFILL".into()),
                ("prefill.done_tokens", "0".into()),
                ("prefill.total_tokens", "12".into()),
                ("decode.done_tokens", "0".into()),
                ("decode.max_tokens", "8".into()),
                ("num_preemptions", "1".into()),
                ("schedule.kind", "RESUME".into()),
            ],
        };
        assert_eq!(
            line.render("waypoint::journey"),
            "journey SCHEDULED request=cmpl-1 step=3 phase=PREFILL prefill=0/12 decode=0/8 \
             preemptions=1 kind=RESUME"
        );
        let api = JourneyLine {
            fields: vec![
                ("request_id", "cmpl-2".into()),
                ("event.type", "ABORTED".into()),
                ("abort.reason", "client_disconnected".into()),
            ],
        };
        assert_eq!(
            api.render("waypoint::api"),
            "api ABORTED request=cmpl-2 reason=client_disconnected"
        );
    }

    #[test]
    fn timestamps_are_utc_iso8601() {
        let now = humantime_now();
        assert_eq!(now.len(), "2026-11-28T03:29:35.701Z".len(), "{now}");
        assert!(now.starts_with("20") && now.ends_with('Z') && now.as_bytes()[10] == b'T');
    }
}
