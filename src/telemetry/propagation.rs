//! W3C trace context (`traceparent`) in and out of the API.
//!
//! Incoming: a request's `traceparent` makes its `llm_request` span a child of the caller's
//! span, and an unsampled caller keeps the request untraced. Outgoing: a traced response
//! names its trace (`x-trace-id`) and its `llm_request` span (`traceparent`), so a client can
//! find it in Jaeger. Parsing is ours (a few lines of the W3C format), so the API needs no
//! propagator machinery; the OpenTelemetry calls are confined to this module.

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState,
};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// The W3C trace context header.
pub const TRACEPARENT: &str = "traceparent";

/// The response header carrying a traced request's trace id (32 hex digits).
pub const TRACE_ID_HEADER: &str = "x-trace-id";

/// The caller's span, from a request's `traceparent` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteParent(SpanContext);

impl RemoteParent {
    /// The parent named by `headers`, if they carry one valid `traceparent`. An invalid
    /// header is ignored, as the W3C recommendation says: the request starts a new trace.
    pub fn from_headers(headers: &HeaderMap) -> Option<Self> {
        let mut values = headers.get_all(TRACEPARENT).iter();
        let value = values.next()?;
        if values.next().is_some() {
            return None; // Ambiguous: more than one traceparent.
        }
        parse_traceparent(value.to_str().ok()?).map(Self)
    }

    /// Whether the caller recorded its span (the `sampled` flag).
    pub fn is_sampled(&self) -> bool {
        self.0.is_sampled()
    }

    /// The caller's trace.
    pub fn trace_id(&self) -> TraceId {
        self.0.trace_id()
    }

    /// Makes `span` a child of this parent; `force_sampled` marks the parent sampled (a
    /// request forced into tracing under an unsampled caller is still recorded).
    /// Must come before `span` is entered or gets its first event, as `set_parent` requires;
    /// without an OpenTelemetry layer it does nothing.
    pub fn adopt(&self, span: &Span, force_sampled: bool) {
        let parent = if force_sampled && !self.is_sampled() {
            SpanContext::new(
                self.0.trace_id(),
                self.0.span_id(),
                TraceFlags::SAMPLED,
                true,
                self.0.trace_state().clone(),
            )
        } else {
            self.0.clone()
        };
        let context = opentelemetry::Context::new().with_remote_span_context(parent);
        // Errors mean no OpenTelemetry layer (export off): nothing to attach to.
        let _ = span.set_parent(context);
    }
}

/// `00-<32 hex trace id>-<16 hex span id>-<2 hex flags>`. Versions above 00 are read the
/// same way and may append fields; version `ff`, all-zero ids and upper-case hex are invalid.
pub fn parse_traceparent(value: &str) -> Option<SpanContext> {
    let value = value.trim();
    let mut parts = value.split('-');
    let version = parts.next()?;
    let trace_id = parts.next()?;
    let span_id = parts.next()?;
    let flags = parts.next()?;
    let is_hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    if !is_hex(version, 2) || version == "ff" || !is_hex(flags, 2) {
        return None;
    }
    // Version 00 has exactly four fields; later versions may add more.
    if version == "00" && parts.next().is_some() {
        return None;
    }
    if !is_hex(trace_id, 32) || !is_hex(span_id, 16) {
        return None;
    }
    let trace_id = TraceId::from_hex(trace_id).ok()?;
    let span_id = SpanId::from_hex(span_id).ok()?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    let context = SpanContext::new(
        trace_id,
        span_id,
        TraceFlags::new(flags & TraceFlags::SAMPLED.to_u8()),
        true,
        TraceState::default(),
    );
    context.is_valid().then_some(context)
}

/// What a traced response says about its trace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceHeaders {
    /// 32 lowercase hex digits.
    pub trace_id: String,
    /// The `llm_request` span as a W3C `traceparent`.
    pub traceparent: String,
}

impl TraceHeaders {
    /// The trace of `span`, if it has a valid OpenTelemetry span (only when an OpenTelemetry
    /// layer is installed). Starts the OpenTelemetry span if it has not started yet, so any
    /// parent must be adopted first.
    pub fn of(span: &Span) -> Option<Self> {
        let context = span.context();
        let span_context = context.span().span_context().clone();
        if !span_context.is_valid() {
            return None;
        }
        Some(Self {
            trace_id: span_context.trace_id().to_string(),
            traceparent: format!(
                "00-{}-{}-{:02x}",
                span_context.trace_id(),
                span_context.span_id(),
                span_context.trace_flags().to_u8()
            ),
        })
    }

    /// Adds `x-trace-id` and `traceparent` to a response's headers.
    pub fn insert_into(&self, headers: &mut HeaderMap) {
        for (name, value) in [
            (TRACE_ID_HEADER, &self.trace_id),
            (TRACEPARENT, &self.traceparent),
        ] {
            if let Ok(value) = HeaderValue::from_str(value) {
                headers.insert(HeaderName::from_static(name), value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const SPAN: &str = "00f067aa0ba902b7";

    #[test]
    fn reads_the_w3c_example() {
        let context = parse_traceparent(&format!("00-{TRACE}-{SPAN}-01")).unwrap();
        assert_eq!(context.trace_id().to_string(), TRACE);
        assert_eq!(context.span_id().to_string(), SPAN);
        assert!(context.is_sampled());
        assert!(context.is_remote());
        let unsampled = parse_traceparent(&format!("00-{TRACE}-{SPAN}-00")).unwrap();
        assert!(!unsampled.is_sampled());
    }

    #[test]
    fn later_versions_may_add_fields_but_00_may_not() {
        assert!(parse_traceparent(&format!("01-{TRACE}-{SPAN}-01-extra")).is_some());
        assert!(parse_traceparent(&format!("00-{TRACE}-{SPAN}-01-extra")).is_none());
    }

    #[test]
    fn rejects_malformed_values() {
        for bad in [
            String::new(),
            "garbage".to_string(),
            format!("ff-{TRACE}-{SPAN}-01"),
            format!("00-{}-{SPAN}-01", "0".repeat(32)),
            format!("00-{TRACE}-{}-01", "0".repeat(16)),
            format!("00-{}-{SPAN}-01", TRACE.to_uppercase()),
            format!("00-{}-{SPAN}-01", &TRACE[1..]),
            format!("00-{TRACE}-{SPAN}-1"),
            format!("00-{TRACE}-{SPAN}-zz"),
            format!("0-{TRACE}-{SPAN}-01"),
        ] {
            assert!(parse_traceparent(&bad).is_none(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn two_traceparent_headers_are_ignored() {
        let mut headers = HeaderMap::new();
        let value = HeaderValue::from_str(&format!("00-{TRACE}-{SPAN}-01")).unwrap();
        headers.append(TRACEPARENT, value.clone());
        assert!(RemoteParent::from_headers(&headers).is_some());
        headers.append(TRACEPARENT, value);
        assert!(RemoteParent::from_headers(&headers).is_none());
    }

    #[test]
    fn a_span_without_an_opentelemetry_layer_has_no_trace_headers() {
        let span = tracing::info_span!("untraced");
        assert_eq!(TraceHeaders::of(&span), None);
    }
}
