//! The debug API (`--enable-debug-api`, `docs/DEBUG_API.md`): what the engine holds now, a
//! live page, and the settings an operator changes while serving. None of it ever returns
//! prompt or output text.
//!
//! - `GET /debug/requests`, `GET /debug/requests/{id}`: every request the engine holds, or
//!   one by the id the API returned to its client.
//! - `GET /debug/engine`: the scheduler's configuration, queue depths, KV usage, the prefix
//!   cache's hit rate and the last step summaries.
//! - `GET /debug`: the page (`debug.html`, compiled in).
//! - `GET`/`PUT /debug/tracing`: journey and step tracing's rates and tail-retention rules.
//! - `GET`/`PUT /debug/log-filter`: the console's `RUST_LOG` filter.

use std::sync::{Arc, OnceLock, PoisonError, RwLock};

use axum::extract::{Path, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::ApiError;
use super::journey::JourneySettings;
use super::routes::bearer_matches;
use super::{AppState, ServerConfig};
use crate::engine::retention::KeepRules;
use crate::engine::{StepTracingConfig, SubmitError};
use crate::telemetry::LogFilter;

/// The page, one self-contained file.
const PAGE: &str = include_str!("debug.html");

/// The settings `PUT /debug/tracing` and `PUT /debug/log-filter` change while serving.
#[derive(Debug)]
pub struct RuntimeSettings {
    /// Journey tracing's settings (`None`: journey tracing is off, and stays off).
    journeys: RwLock<Option<JourneySettings>>,
    /// Step tracing's rates, as the engine was last told (`None`: off, and stays off).
    steps: tokio::sync::Mutex<Option<StepTracingConfig>>,
    log_filter: OnceLock<Arc<LogFilter>>,
}

impl RuntimeSettings {
    /// The settings `config` starts with.
    pub fn new(config: &ServerConfig) -> Self {
        Self {
            journeys: RwLock::new(JourneySettings::of(config)),
            steps: tokio::sync::Mutex::new(config.step_tracing),
            log_filter: OnceLock::new(),
        }
    }

    /// Journey tracing's settings now, for a request arriving now.
    pub fn journeys(&self) -> Option<JourneySettings> {
        *self.journeys.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Gives `PUT /debug/log-filter` the console's filter (once).
    pub fn set_log_filter(&self, log_filter: Arc<LogFilter>) {
        let _ = self.log_filter.set(log_filter);
    }
}

/// The routes, behind the admin key (or the API key); none unless the debug API is on.
pub fn router(state: &AppState) -> Router<AppState> {
    if !state.config.enable_debug_api {
        return Router::new();
    }
    Router::new()
        .route("/debug", get(page))
        .route("/debug/requests", get(requests))
        .route("/debug/requests/{id}", get(one_request))
        .route("/debug/engine", get(engine))
        .route("/debug/tracing", get(get_tracing).put(put_tracing))
        .route("/debug/log-filter", get(get_log_filter).put(put_log_filter))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_admin_key,
        ))
}

/// `/debug/*` takes `--admin-api-key` when it is set, else the API key, else nothing.
async fn require_admin_key(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let key = state
        .config
        .admin_api_key
        .as_ref()
        .or(state.config.api_key.as_ref());
    if let Some(key) = key {
        if !bearer_matches(request.headers(), key) && !page_key_matches(&request, key) {
            return ApiError::Unauthorized.into_response();
        }
    }
    next.run(request).await
}

/// The page cannot set a header on its first load: `GET /debug?key=…` is accepted for the
/// page itself, which then sends the key as a bearer token on every call.
fn page_key_matches(request: &Request, key: &str) -> bool {
    request.uri().path() == "/debug"
        && request
            .uri()
            .query()
            .and_then(|query| query.split('&').find_map(|pair| pair.strip_prefix("key=")))
            .is_some_and(|given| super::routes::constant_time_eq(given.as_bytes(), key.as_bytes()))
}

async fn page(State(state): State<AppState>) -> Response {
    let jaeger = state.config.jaeger_url.as_deref().unwrap_or("");
    let page = PAGE.replace(
        "__JAEGER_URL__",
        &serde_json::to_string(jaeger).unwrap_or_else(|_| "\"\"".into()),
    );
    ([(header::CACHE_CONTROL, "no-store")], Html(page)).into_response()
}

async fn engine_view(
    state: &AppState,
    only: Option<String>,
) -> Result<crate::engine::inspect::EngineView, ApiError> {
    state
        .engine
        .inspect(only)
        .await
        .ok_or(ApiError::Submit(SubmitError::EngineDead))
}

async fn requests(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let view = engine_view(&state, None).await?;
    Ok(Json(json!({
        "now": view.now,
        "num_held": view.num_held,
        "requests": view.requests,
    })))
}

async fn one_request(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let view = engine_view(&state, Some(id.clone())).await?;
    let request = view
        .requests
        .into_iter()
        .find(|request| request.id == id)
        .ok_or_else(|| ApiError::NotFound(format!("no request {id:?} is in the engine")))?;
    Ok(Json(json!({ "now": view.now, "request": request })))
}

/// The engine without its requests (`/debug/requests` lists them; `num_held` counts them).
async fn engine(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let mut view = engine_view(&state, None).await?;
    view.requests = Vec::new();
    let mut value = serde_json::to_value(&view)
        .map_err(|error| ApiError::Internal(format!("the engine view: {error}")))?;
    if let Some(fields) = value.as_object_mut() {
        fields.remove("requests");
    }
    Ok(Json(value))
}

/// What `PUT /debug/tracing` may change: each key is its flag in snake_case. Unknown keys
/// are refused.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TracingChange {
    journey_tracing_sample_rate: Option<f64>,
    journey_tracing_keep: Option<String>,
    journey_tracing_keep_unsampled_parents: Option<bool>,
    step_tracing_sample_rate: Option<f64>,
    step_tracing_rich_subsample_rate: Option<f64>,
}

/// The settings as `GET /debug/tracing` shows them (`null` where that tracing is off).
fn tracing_json(journeys: Option<JourneySettings>, steps: Option<StepTracingConfig>) -> Value {
    json!({
        "journey_tracing_sample_rate": journeys.map(|j| j.sample_rate),
        "journey_tracing_keep": journeys.map(|j| j.keep.to_string()),
        "journey_tracing_keep_unsampled_parents": journeys.map(|j| j.keep_unsampled_parents),
        "step_tracing_sample_rate": steps.map(|s| s.sample_rate),
        "step_tracing_rich_subsample_rate": steps.map(|s| s.rich_subsample_rate),
    })
}

async fn get_tracing(State(state): State<AppState>) -> Json<Value> {
    let steps = *state.runtime.steps.lock().await;
    Json(tracing_json(state.runtime.journeys(), steps))
}

/// A 400 naming the setting at fault (`param`), if one is.
fn bad(param: Option<&str>, message: String) -> ApiError {
    ApiError::InvalidRequest {
        message,
        param: param.map(str::to_string),
    }
}

fn rate(name: &str, value: Option<f64>) -> Result<Option<f64>, ApiError> {
    match value {
        Some(rate) if !(0.0..=1.0).contains(&rate) => Err(bad(
            Some(name),
            format!("{name} must be in [0, 1], got {rate}"),
        )),
        other => Ok(other),
    }
}

/// Applies the change in full or not at all: every value is checked first. Journey
/// settings change under one lock (from the next request), step rates in one engine command
/// (from the next step). Answers with the previous settings.
async fn put_tracing(State(state): State<AppState>, body: String) -> Result<Json<Value>, ApiError> {
    let change: TracingChange = serde_json::from_str(&body)
        .map_err(|error| bad(None, format!("PUT /debug/tracing: {error}")))?;
    let journey_rate = rate(
        "journey_tracing_sample_rate",
        change.journey_tracing_sample_rate,
    )?;
    let step_rate = rate("step_tracing_sample_rate", change.step_tracing_sample_rate)?;
    let rich_rate = rate(
        "step_tracing_rich_subsample_rate",
        change.step_tracing_rich_subsample_rate,
    )?;
    let keep = change
        .journey_tracing_keep
        .as_deref()
        .map(str::parse::<KeepRules>)
        .transpose()
        .map_err(|error| {
            bad(
                Some("journey_tracing_keep"),
                format!("journey_tracing_keep: {error}"),
            )
        })?;
    let journey_change = journey_rate.is_some()
        || keep.is_some()
        || change.journey_tracing_keep_unsampled_parents.is_some();
    let step_change = step_rate.is_some() || rich_rate.is_some();

    // One change at a time: the step rates are read, sent and stored under this lock.
    let mut steps = state.runtime.steps.lock().await;
    let previous = tracing_json(state.runtime.journeys(), *steps);
    if journey_change && state.runtime.journeys().is_none() {
        return Err(ApiError::NotEnabled(
            "journey tracing is off (start with --enable-journey-tracing)".into(),
        ));
    }
    let new_steps = match *steps {
        Some(current) if step_change => Some(StepTracingConfig {
            sample_rate: step_rate.unwrap_or(current.sample_rate),
            rich_subsample_rate: rich_rate.unwrap_or(current.rich_subsample_rate),
        }),
        None if step_change => {
            return Err(ApiError::NotEnabled(
                "step tracing is off (start with --step-tracing-enabled)".into(),
            ))
        }
        _ => None,
    };
    if let Some(config) = new_steps {
        state
            .engine
            .set_step_tracing(config)
            .await
            .map_err(|()| ApiError::Submit(SubmitError::EngineDead))?;
        *steps = Some(config);
    }
    if journey_change {
        let mut journeys = state
            .runtime
            .journeys
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(settings) = journeys.as_mut() {
            settings.sample_rate = journey_rate.unwrap_or(settings.sample_rate);
            settings.keep = keep.unwrap_or(settings.keep);
            settings.keep_unsampled_parents = change
                .journey_tracing_keep_unsampled_parents
                .unwrap_or(settings.keep_unsampled_parents);
        }
    }
    tracing::info!(
        previous = %previous,
        now = %tracing_json(state.runtime.journeys(), *steps),
        "tracing settings changed"
    );
    Ok(Json(previous))
}

fn log_filter(state: &AppState) -> Result<&Arc<LogFilter>, ApiError> {
    state.runtime.log_filter.get().ok_or_else(|| {
        ApiError::NotEnabled("this server's console filter cannot be changed".to_string())
    })
}

async fn get_log_filter(State(state): State<AppState>) -> Result<String, ApiError> {
    Ok(log_filter(&state)?.current())
}

/// The body is a filter in `RUST_LOG` syntax, as plain text; answers with the previous one.
async fn put_log_filter(State(state): State<AppState>, body: String) -> Result<String, ApiError> {
    let filter = log_filter(&state)?;
    let previous = filter
        .set(&body)
        .map_err(|error| bad(None, format!("not a RUST_LOG filter: {error}")))?;
    tracing::info!(%previous, now = %filter.current(), "log filter changed");
    Ok(previous)
}
