//! One tracer per instrumentation scope, behind the single tracer that
//! `tracing_opentelemetry`'s layer takes.
//!
//! The contract puts `llm_request` in scope `waypoint.api` and `llm_core` in scope
//! `waypoint.scheduler`. `tracing_opentelemetry` builds every span with one tracer, and two
//! of its layers in one subscriber would not work: whichever layer a lookup finds first
//! would start the other's spans. So one layer gets a [`ScopedTracer`], which hands each span
//! builder to the tracer of its scope, chosen by span name.

use opentelemetry::trace::{SpanBuilder, Tracer, TracerProvider as _};
use opentelemetry::{Context, InstrumentationScope};
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider, Span};

/// Scope of the API's spans (`llm_request`).
pub const API_SCOPE: &str = "waypoint.api";
/// Scope of the engine's per-request spans (`llm_core`).
pub const SCHEDULER_SCOPE: &str = "waypoint.scheduler";
/// Scope of the rotating step spans (`scheduler_steps`).
pub const STEP_SCOPE: &str = "waypoint.scheduler.step";

/// Span names built in [`SCHEDULER_SCOPE`]; every other span goes to [`API_SCOPE`].
const SCHEDULER_SPANS: [&str; 1] = [crate::engine::journey::CORE_SPAN_NAME];

/// A tracer that builds each span with the tracer of its instrumentation scope.
#[derive(Debug, Clone)]
pub struct ScopedTracer {
    api: SdkTracer,
    scheduler: SdkTracer,
}

/// The tracer of scope `name`, versioned with this build.
pub fn scope_tracer(provider: &SdkTracerProvider, name: &'static str) -> SdkTracer {
    provider.tracer_with_scope(
        InstrumentationScope::builder(name)
            .with_version(env!("CARGO_PKG_VERSION"))
            .build(),
    )
}

impl ScopedTracer {
    /// The journey tracers of `provider`.
    pub fn new(provider: &SdkTracerProvider) -> Self {
        Self {
            api: scope_tracer(provider, API_SCOPE),
            scheduler: scope_tracer(provider, SCHEDULER_SCOPE),
        }
    }

    fn for_span(&self, name: &str) -> &SdkTracer {
        if SCHEDULER_SPANS.contains(&name) {
            &self.scheduler
        } else {
            &self.api
        }
    }
}

impl Tracer for ScopedTracer {
    type Span = Span;

    fn build_with_context(&self, mut builder: SpanBuilder, parent_cx: &Context) -> Span {
        // A journey replayed after the fact carries its own start and ids.
        super::replay::apply_to_builder(&mut builder);
        let span = self
            .for_span(&builder.name)
            .build_with_context(builder, parent_cx);
        super::replay::clear_pending_ids();
        span
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::Span as _;
    use opentelemetry_sdk::trace::InMemorySpanExporter;

    use super::*;

    #[test]
    fn each_span_goes_to_the_scope_of_its_name() {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let tracer = ScopedTracer::new(&provider);
        tracer.start("llm_request").end();
        tracer.start(crate::engine::journey::CORE_SPAN_NAME).end();
        let spans = exporter.get_finished_spans().unwrap();
        let scope_of = |name: &str| {
            spans
                .iter()
                .find(|span| span.name == name)
                .map(|span| span.instrumentation_scope.name().to_string())
        };
        assert_eq!(scope_of("llm_request").as_deref(), Some(API_SCOPE));
        assert_eq!(scope_of("llm_core").as_deref(), Some(SCHEDULER_SCOPE));
    }
}
