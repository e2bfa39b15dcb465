//! The handlers, the API-key check and the fallbacks.
//!
//! Both generation endpoints run the same steps: validate on the blocking pool, submit,
//! then either stream (see `sse.rs`) or collect the events into one answer. Every failure
//! becomes an [`ApiError`] response inside the handler, so that it is logged in the
//! request's span.

use std::sync::atomic::Ordering;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use tracing::field::Empty;
use tracing::Span;

use crate::engine::journey::JourneyMode;
use crate::engine::{EngineHandle, FinishReason, RequestStream, StreamEvent, SubmitError};
use crate::metrics::{protobuf_preferred, Format, TelemetryCounts, PROTOBUF_CONTENT_TYPE};

use super::error::ApiError;
use super::extract::{discard_body, ApiJson};
use super::openai::{ChatCompletionRequest, CompletionRequest, ModelCard, ModelList};
use axum::http::HeaderMap;

use super::journey::{ApiJourney, JourneyContext};
use super::output::{Api, ResponseBuilder};
use super::validation::{validate_chat, validate_completion, ValidatedRequest};
use super::{sse, unix_now, AppState, ServerConfig};

/// `POST /v1/completions`.
#[tracing::instrument(
    name = "completions",
    skip_all,
    fields(
        request_id = Empty,
        stream = Empty,
        prompt_tokens = Empty,
        max_tokens = Empty,
        completion_tokens = Empty,
        finish_reason = Empty,
        error_type = Empty,
    )
)]
pub async fn completions(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<ApiJson<CompletionRequest>, ApiError>,
) -> Response {
    let result = match body {
        Ok(ApiJson(body)) => {
            generate(
                state.clone(),
                &headers,
                Api::Completions,
                move |engine, config, id, at| validate_completion(engine, config, body, id, at),
            )
            .await
        }
        Err(err) => Err(count_rejection(&state, err)),
    };
    result.unwrap_or_else(IntoResponse::into_response)
}

/// `POST /v1/chat/completions`.
#[tracing::instrument(
    name = "chat_completions",
    skip_all,
    fields(
        request_id = Empty,
        stream = Empty,
        prompt_tokens = Empty,
        max_tokens = Empty,
        completion_tokens = Empty,
        finish_reason = Empty,
        error_type = Empty,
    )
)]
pub async fn chat_completions(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<ApiJson<ChatCompletionRequest>, ApiError>,
) -> Response {
    let result = match body {
        Ok(ApiJson(body)) => {
            generate(
                state.clone(),
                &headers,
                Api::Chat,
                move |engine, config, id, at| validate_chat(engine, config, body, id, at),
            )
            .await
        }
        Err(err) => Err(count_rejection(&state, err)),
    };
    result.unwrap_or_else(IntoResponse::into_response)
}

/// The steps both generation endpoints share; `validate` turns the body into an engine
/// request with the given id and arrival time. A traced request's response, error or not,
/// names its trace in `x-trace-id` and `traceparent`.
async fn generate<F>(
    state: AppState,
    headers: &HeaderMap,
    api: Api,
    validate: F,
) -> Result<Response, ApiError>
where
    F: FnOnce(&EngineHandle, &ServerConfig, String, Instant) -> Result<ValidatedRequest, ApiError>
        + Send
        + 'static,
{
    let arrival = Instant::now();
    let id = format!("{}-{:032x}", api.id_prefix(), rand::random::<u128>());
    Span::current().record("request_id", id.as_str());
    // Decided once, here, under the settings in force now: live, recorded for tail
    // retention, or nothing at all.
    let journey = state.runtime.journeys().and_then(|settings| {
        let context = JourneyContext {
            config: &state.config,
            settings,
            metrics: state.engine.metrics(),
        };
        ApiJourney::start(
            &context,
            headers,
            api,
            &id,
            &state.engine.model().name,
            arrival,
        )
    });
    let trace = journey.as_ref().and_then(ApiJourney::trace_headers);
    let trace_id = trace
        .as_ref()
        .filter(|_| journey.as_ref().is_some_and(ApiJourney::exemplar_allowed))
        .map(|trace| trace.trace_id.clone());
    let metrics_state = state.clone();
    let traced = Traced {
        journey,
        exemplar: trace_id,
        trace_id: trace.as_ref().map(|trace| trace.trace_id.clone()),
    };
    let mut response = match submit(state, api, validate, id, arrival, traced).await {
        Ok(response) => response,
        Err(error) => count_rejection(&metrics_state, error).into_response(),
    };
    if let Some(trace) = trace {
        trace.insert_into(response.headers_mut());
    }
    Ok(response)
}

/// How journey tracing follows a request.
struct Traced {
    journey: Option<ApiJourney>,
    /// The trace id `/metrics` may show as an exemplar.
    exemplar: Option<String>,
    /// The journey's trace id, for the debug API.
    trace_id: Option<String>,
}

/// Validates, submits, and answers (streaming or not).
async fn submit<F>(
    state: AppState,
    api: Api,
    validate: F,
    id: String,
    arrival: Instant,
    traced: Traced,
) -> Result<Response, ApiError>
where
    F: FnOnce(&EngineHandle, &ServerConfig, String, Instant) -> Result<ValidatedRequest, ApiError>
        + Send
        + 'static,
{
    let Traced {
        mut journey,
        exemplar,
        trace_id,
    } = traced;
    // During the drain a request would be tokenized only to be refused at submission.
    if !state.engine.is_accepting() {
        return Err(rejected(journey, SubmitError::ShuttingDown.into()));
    }
    let created = unix_now();
    let span = Span::current();
    let engine = state.engine.clone();
    let config = state.config.clone();
    let validation_span = span.clone();
    let request_id = id.clone();
    let validated = tokio::task::spawn_blocking(move || {
        validation_span.in_scope(|| validate(&engine, &config, request_id, arrival))
    })
    .await
    .map_err(|err| ApiError::Internal(format!("the validation task failed: {err}")))
    .and_then(|validated| validated);
    let validated = match validated {
        Ok(validated) => validated,
        Err(error) => return Err(rejected(journey, error)),
    };
    span.record("stream", validated.stream.is_some());

    let stream_mode = validated.stream;
    let mut builder =
        ResponseBuilder::new(api, id, created, state.engine.clone(), validated.logprobs);
    let mut request = validated.request;
    request.journey = journey
        .as_ref()
        .map_or(JourneyMode::Off, ApiJourney::engine_mode);
    // Latency metrics show it as their exemplar, linking a slow bucket to this trace.
    request.trace_id = exemplar;
    request.journey_trace_id = trace_id;
    // Submitted inside the journey span, which the engine's `llm_core` span hangs under.
    if let Some(journey) = &mut journey {
        journey.handoff(&request, stream_mode.is_some());
    }
    let submitted = match journey.as_ref().and_then(ApiJourney::live_span) {
        Some(span) => span.in_scope(|| state.engine.submit(request)),
        None => state.engine.submit(request),
    };
    let events = match submitted {
        Ok(events) => events,
        Err(error) => return Err(rejected(journey, error.into())),
    };
    match stream_mode {
        Some(mode) => Ok(sse::response(events, builder, mode, span, journey)),
        None => collect(events, &mut builder, &span, journey).await,
    }
}

/// Counts `error` in `waypoint_request_rejected_total` when it refuses a request before the
/// engine saw it (429, 413, 400, 404 model, 503); other errors pass uncounted.
fn count_rejection(state: &AppState, error: ApiError) -> ApiError {
    if let Some(reason) = error.rejection_reason() {
        state.engine.metrics().record_rejected(reason);
    }
    error
}

/// Ends the journey of a request refused before the engine took it.
fn rejected(journey: Option<ApiJourney>, error: ApiError) -> ApiError {
    if let Some(journey) = journey {
        journey.rejected(error.status().as_u16(), error.error_type());
    }
    error
}

/// Waits for the whole answer. If the client disconnects meanwhile, hyper drops this
/// future, and with it `events`, whose `Drop` aborts the request.
async fn collect(
    mut events: RequestStream,
    builder: &mut ResponseBuilder,
    span: &Span,
    mut journey: Option<ApiJourney>,
) -> Result<Response, ApiError> {
    let mut text = String::new();
    let mut logprobs = Vec::new();
    let info = loop {
        match events.next().await {
            Some(StreamEvent::Delta {
                text: new_text,
                logprobs: new_logprobs,
                ..
            }) => {
                if let Some(journey) = &mut journey {
                    journey.response();
                }
                text.push_str(&new_text);
                logprobs.extend(new_logprobs);
            }
            Some(StreamEvent::Finished(info)) => break info,
            None => {
                return Err(ApiError::Internal(
                    "the engine dropped the request without finishing it".to_string(),
                ))
            }
        }
    };
    sse::record_finish(span, &info);
    if let Some(journey) = journey {
        let status = if info.reason == FinishReason::Error {
            500
        } else {
            200
        };
        journey.finished(&info, status);
    }
    if info.reason == FinishReason::Error {
        let detail = info.error.as_deref().unwrap_or("no detail");
        return Err(ApiError::Internal(format!("the engine failed: {detail}")));
    }
    // A client that left never sees its abort; one still waiting was aborted by the server,
    // which only does that when the shutdown timeout has passed.
    if info.reason == FinishReason::Abort {
        return Err(SubmitError::ShuttingDown.into());
    }
    Ok(builder.full(text, &logprobs, &info))
}

/// `GET /v1/models`: the one served model.
pub async fn models(State(state): State<AppState>) -> Json<ModelList> {
    let model = state.engine.model();
    Json(ModelList {
        object: "list",
        data: vec![ModelCard {
            id: model.name.clone(),
            object: "model",
            created: state.started_at,
            owned_by: "waypoint",
            max_model_len: model.max_context,
        }],
    })
}

/// Any request before the model is loaded: `/health` says "loading", the rest get a 503
/// error (see [`super::serve_once_loaded`]).
pub fn while_loading(path: &str) -> Response {
    if path == "/health" {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "loading"})),
        )
            .into_response()
    } else {
        ApiError::Loading.into_response()
    }
}

/// `GET /health`: 200 once ready, 503 while loading, shutting down or after the model lost
/// its state (for load balancers and orchestrators, which only look at the status).
pub async fn health(State(state): State<AppState>) -> Response {
    if !state.engine.is_accepting() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "shutting_down"})),
        )
            .into_response()
    } else if !state.engine.is_healthy() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "unhealthy"})),
        )
            .into_response()
    } else if !state.ready.load(Ordering::Acquire) {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "loading"})),
        )
            .into_response()
    } else {
        Json(json!({"status": "ok"})).into_response()
    }
}

/// `GET /metrics`: Prometheus text; OpenMetrics (with exemplars) when the scraper's
/// `Accept` asks for it; Prometheus' protobuf (with native histograms too) when `Accept`
/// ranks it first.
pub async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|value| value.to_str().ok());
    let format = Format::from_accept(accept);
    let (journeys, bytes) = crate::engine::journey::journeys_in_memory();
    let losses = TelemetryCounts {
        spans_export_failed: crate::telemetry::export::spans_lost_to_failed_exports(),
        spans_queue_full: crate::telemetry::export::spans_lost_to_a_full_queue(),
        journeys_in_memory: journeys as u64,
        journey_bytes_in_memory: bytes as u64,
    };
    let metrics = state.engine.metrics();
    if protobuf_preferred(accept) {
        let body = metrics.render_protobuf(&losses);
        return ([(header::CONTENT_TYPE, PROTOBUF_CONTENT_TYPE)], body).into_response();
    }
    let body = metrics.render_with(format, &losses);
    ([(header::CONTENT_TYPE, format.content_type())], body).into_response()
}

/// `GET /version`.
pub async fn version() -> Json<serde_json::Value> {
    Json(json!({"version": env!("CARGO_PKG_VERSION")}))
}

/// Any path without a route. A small body is read and dropped first, so that the
/// connection can carry the client's next request.
pub async fn not_found(State(state): State<AppState>, request: Request) -> ApiError {
    let path = request.uri().path().to_string();
    discard_body(&state.config, request).await;
    ApiError::RouteNotFound(path)
}

/// A known path with the wrong method (its body handled as in [`not_found`]).
pub async fn method_not_allowed(State(state): State<AppState>, request: Request) -> ApiError {
    let method = request.method().to_string();
    let path = request.uri().path().to_string();
    discard_body(&state.config, request).await;
    ApiError::MethodNotAllowed { method, path }
}

/// Lets a request through only with `Authorization: Bearer <api_key>`, when a key is set.
pub async fn require_api_key(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    if let Some(key) = &state.config.api_key {
        if !bearer_matches(request.headers(), key) {
            return ApiError::Unauthorized.into_response();
        }
    }
    next.run(request).await
}

/// Whether `headers` carry `Authorization: Bearer <key>`.
pub fn bearer_matches(headers: &HeaderMap, key: &str) -> bool {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().split_once(' '))
        // The scheme is case-insensitive (RFC 9110).
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .is_some_and(|token| constant_time_eq(token.as_bytes(), key.as_bytes()))
}

/// Compares without an early exit, so response times do not reveal how much of a guessed
/// key was right. (The length still shows; keys should be long and random anyway.)
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
