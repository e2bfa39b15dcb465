//! Inside `Vec<L>` or `Option<L>`, which do not pass `on_register_dispatch` on, the layer
//! still finds its dispatch when it is the global default (its own test binary: the global
//! default can be set once per process).

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use tracing::Level;
use tracing_subscriber::prelude::*;
use waypoint_layers::SpanEventLayer;

type Boxed = Box<dyn tracing_subscriber::Layer<tracing_subscriber::Registry> + Send + Sync>;

#[test]
fn the_layer_works_inside_a_vec_and_an_option_under_the_global_default() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let events = SpanEventLayer::new().with_target("waypoint::api", "api");
    let otel = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("test"))
        .with_filter(events.otel_filter());
    let layers: Vec<Boxed> = vec![otel.boxed(), Some(events).boxed()];
    tracing_subscriber::registry().with(layers).init();

    let request = tracing::info_span!("request");
    tracing::event!(
        target: "waypoint::api",
        parent: &request,
        Level::DEBUG,
        "event.type" = "ARRIVED"
    );
    drop(request);
    provider.force_flush().unwrap();
    let spans = exporter.get_finished_spans().unwrap();
    assert_eq!(spans.len(), 1);
    let names: Vec<&str> = spans[0].events.iter().map(|e| e.name.as_ref()).collect();
    assert_eq!(names, ["api.ARRIVED"]);
}
