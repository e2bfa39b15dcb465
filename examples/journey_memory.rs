//! What tail retention holds in memory with 256 requests in flight: each request's recorded
//! journey (the API's half and the engine's), as the `waypoint_journey_bytes_in_memory`
//! gauge counts it, for a typical request mid-decode and for the bound (a journey full of
//! events, preempted past the described limit).
//!
//! ```text
//! cargo run --release --example journey_memory
//! ```

use std::sync::Arc;
use std::time::Instant;

use axum::http::HeaderMap;
use waypoint::engine::journey::{journeys_in_memory, Journey, StepShare};
use waypoint::engine::request::Request;
use waypoint::engine::EngineRequest;
use waypoint::metrics::Metrics;
use waypoint::sampling::SamplingParams;
use waypoint::server::journey::{ApiJourney, JourneyContext, JourneySettings};
use waypoint::server::output::Api;
use waypoint::server::ServerConfig;

const IN_FLIGHT: usize = 256;

/// One request in flight: both halves recorded, `events` engine events so far.
fn in_flight(
    n: usize,
    events: u64,
    preemptions: u64,
    metrics: &Arc<Metrics>,
) -> (ApiJourney, Journey) {
    let config = ServerConfig {
        journey_sample_rate: Some(0.0),
        ..ServerConfig::default()
    };
    let id = format!("cmpl-{n:032x}");
    let params = SamplingParams {
        max_tokens: 256,
        stop: vec!["\n\n".to_string()],
        ..SamplingParams::default()
    };
    let request = EngineRequest::new(id.clone(), (0..512).collect(), params);
    let context = JourneyContext {
        config: &config,
        settings: JourneySettings::of(&config).expect("journey tracing is on"),
        metrics,
    };
    let mut api = ApiJourney::start(
        &context,
        &HeaderMap::new(),
        Api::Chat,
        &id,
        "SmolLM2-135M-Instruct",
        Instant::now(),
    )
    .expect("no unsampled caller");
    api.handoff(&request, true);
    api.response();
    let mut core =
        Journey::start(&api.engine_mode(), &tracing::Span::none(), &id, 256).expect("recorded");
    let scheduled = Request::new(id, (0..512).collect());
    core.queued(&scheduled, 0);
    for step in 0..preemptions {
        core.scheduled(&scheduled, step);
        core.preempted(&scheduled, step, 100);
    }
    for step in 0..events.saturating_sub(1 + 2 * preemptions) {
        core.scheduled(&scheduled, step);
    }
    core.scheduled_in(StepShare {
        batch_sequences: 32,
        batch_tokens: 287,
        batch_prefill_tokens: 256,
        own_tokens: 1,
        own_prefill_tokens: 0,
    });
    (api, core)
}

fn measure(label: &str, events: u64, preemptions: u64) {
    let metrics = Arc::new(Metrics::new("m", 2048));
    let before = journeys_in_memory();
    let held: Vec<_> = (0..IN_FLIGHT)
        .map(|n| in_flight(n, events, preemptions, &metrics))
        .collect();
    let (journeys, bytes) = journeys_in_memory();
    println!(
        "{label}: {} journeys in flight hold {} bytes ({} KiB), {} bytes each",
        journeys - before.0,
        bytes - before.1,
        (bytes - before.1) / 1024,
        (bytes - before.1) / IN_FLIGHT
    );
    drop(held);
    assert_eq!(journeys_in_memory(), before, "everything is released");
}

fn main() {
    // Mid-decode: QUEUED, SCHEDULED, FIRST_TOKEN and a few attributes.
    measure("typical (3 engine events)", 3, 0);
    // The bound: 64 events, more than 8 preemptions.
    measure("worst case (64 events, 20 preemptions)", 200, 20);
}
