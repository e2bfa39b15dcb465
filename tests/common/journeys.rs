//! Reading `waypoint_journeys_total` out of a `/metrics` page.

/// The count of journeys decided `decision` for `reason`.
pub fn journeys_counted(metrics: &str, decision: &str, reason: &str) -> u64 {
    let needle = format!("decision=\"{decision}\",reason=\"{reason}\"}} ");
    metrics
        .lines()
        .find(|l| l.starts_with("waypoint_journeys_total") && l.contains(&needle))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {decision}/{reason} in {metrics}"))
}
