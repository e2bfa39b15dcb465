//! Streaming responses: engine events to server-sent events.
//!
//! A stream is `data: {chunk}` events (for chat, the first announces the assistant's role),
//! one carrying `finish_reason`, optionally one carrying `usage`, then `data: [DONE]`. If the
//! engine fails midway the stream cannot change its 200 status any more, so it sends an
//! `{"error": {...}}` event instead of the finish chunk, then `[DONE]`, as OpenAI does.
//!
//! The body stream owns the engine's [`RequestStream`]: when the client disconnects, hyper
//! drops the body, the `RequestStream` goes with it, and its `Drop` aborts the request.

use std::collections::VecDeque;
use std::convert::Infallible;

use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use tracing::Span;

use crate::engine::{FinishReason, FinishedInfo, RequestStream, StreamEvent, SubmitError};

use super::error::ApiError;
use super::journey::ApiJourney;
use super::output::{to_json, ResponseBuilder};
use super::validation::StreamMode;

/// The SSE response for a submitted request. `span` is the request's span, which outlives
/// the handler through this stream and receives the finish fields.
pub fn response(
    events: RequestStream,
    builder: ResponseBuilder,
    mode: StreamMode,
    span: Span,
    journey: Option<ApiJourney>,
) -> Response {
    let mut state = SseState {
        events,
        builder,
        mode,
        pending: VecDeque::new(),
        done: false,
        span,
        journey,
        sent_output: false,
    };
    state.pending.extend(state.builder.first_chunk());
    let stream = futures::stream::unfold(state, |mut state| async move {
        let data = state.next_data().await?;
        Some((Ok::<_, Infallible>(Event::default().data(data)), state))
    });
    Sse::new(stream).into_response()
}

struct SseState {
    events: RequestStream,
    builder: ResponseBuilder,
    mode: StreamMode,
    /// Event payloads ready to send; one engine event can make several.
    pending: VecDeque<String>,
    /// Whether the engine's part is over (only `pending` is left).
    done: bool,
    span: Span,
    /// Dropped with the stream, so a client hanging up ends the journey as aborted.
    journey: Option<ApiJourney>,
    /// Whether output from the engine is queued in `pending` (the journey's first byte is
    /// the first chunk handed over after that).
    sent_output: bool,
}

impl SseState {
    /// The next event's `data`, or `None` after `[DONE]`.
    async fn next_data(&mut self) -> Option<String> {
        loop {
            if let Some(data) = self.pending.pop_front() {
                if self.sent_output {
                    if let Some(journey) = &mut self.journey {
                        journey.first_byte();
                    }
                }
                return Some(data);
            }
            if self.done {
                return None;
            }
            match self.events.next().await {
                Some(StreamEvent::Delta { text, logprobs, .. }) => {
                    self.sent_output = true;
                    if let Some(journey) = &mut self.journey {
                        journey.response();
                    }
                    self.pending
                        .extend(self.builder.delta_chunk(text, &logprobs));
                }
                Some(StreamEvent::Finished(info)) => self.finish(&info),
                None => {
                    self.done = true;
                    self.fail(ApiError::Internal(
                        "the engine dropped the request without finishing it".to_string(),
                    ));
                }
            }
        }
    }

    fn finish(&mut self, info: &FinishedInfo) {
        self.done = true;
        record_finish(&self.span, info);
        if let Some(journey) = self.journey.take() {
            // The status line went out as 200 before the stream began.
            journey.finished(info, 200);
        }
        if info.reason == FinishReason::Error {
            let detail = info.error.as_deref().unwrap_or("no detail");
            self.fail(ApiError::Internal(format!("the engine failed: {detail}")));
            return;
        }
        // Only the server aborts a stream whose client is still there: the shutdown timeout
        // passed. The client hears why instead of a normal-looking finish.
        if info.reason == FinishReason::Abort {
            self.fail(SubmitError::ShuttingDown.into());
            return;
        }
        self.pending
            .push_back(self.builder.finish_chunk(info.reason));
        if self.mode.include_usage {
            self.pending.push_back(self.builder.usage_chunk(info));
        }
        self.pending.push_back("[DONE]".to_string());
    }

    /// Ends the stream with an error event; the error is logged in the request's span.
    fn fail(&mut self, error: ApiError) {
        let body = self.span.in_scope(|| error.report());
        self.pending.push_back(to_json(&body));
        self.pending.push_back("[DONE]".to_string());
    }
}

/// Records how a request ended on its span.
pub fn record_finish(span: &Span, info: &FinishedInfo) {
    span.record("finish_reason", info.reason.as_str())
        .record("completion_tokens", info.completion_tokens);
}
