//! The API layer's one error type and its single mapping to HTTP.
//!
//! Every failure a client can see is an [`ApiError`]; [`IntoResponse`] turns it into a status
//! and OpenAI's error body,
//!
//! ```json
//! {"error": {"message": "...", "type": "invalid_request_error", "param": "temperature", "code": null}}
//! ```
//!
//! `type` is [`ApiError::error_type`], a stable snake_case label that also serves as a
//! metric and log label; `code` is the machine-readable code OpenAI uses for the same case
//! (`model_not_found`, `invalid_api_key`), or null. Server-side failures are logged here, once,
//! and reach the client only as a generic message.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::engine::SubmitError;
use crate::sampling::InvalidParam;

/// Everything that can go wrong between an HTTP request and the engine.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is malformed or asks for something out of range (400).
    #[error("{message}")]
    InvalidRequest {
        /// The request field at fault, as the API names it.
        param: Option<String>,
        /// What is wrong, for the client.
        message: String,
    },
    /// A sampling parameter outside its range (400).
    #[error("{0}")]
    InvalidParam(#[from] InvalidParam),
    /// The request names a model this server does not serve (404).
    #[error("the model `{0}` does not exist")]
    ModelNotFound(String),
    /// No route has this path (404).
    #[error("no route for {0}")]
    RouteNotFound(String),
    /// The route exists, the thing it names does not (404), e.g. a request id the engine
    /// does not hold.
    #[error("{0}")]
    NotFound(String),
    /// A feature this server was not started with (503 would say "retry"; this will not
    /// change until a restart, so it is a 400-class answer: 409).
    #[error("{0}")]
    NotEnabled(String),
    /// The route exists but not for this method (405).
    #[error("method {method} is not allowed for {path}")]
    MethodNotAllowed {
        /// The method used.
        method: String,
        /// The path requested.
        path: String,
    },
    /// The body is larger than the server accepts (413).
    #[error("the request body exceeds the limit of {limit} bytes")]
    PayloadTooLarge {
        /// `ServerConfig::max_request_bytes`.
        limit: usize,
    },
    /// The body did not arrive in time (408): slower than the minimum rate, or stalled.
    #[error("the request body did not arrive within {seconds:.0} s")]
    BodyTimeout {
        /// The deadline the body had, in seconds.
        seconds: f64,
    },
    /// An API key is configured and the request did not carry it (401).
    #[error("missing or invalid API key; send it as `Authorization: Bearer <key>`")]
    Unauthorized,
    /// The engine refused the request: full (429) or shutting down (503).
    #[error(transparent)]
    Submit(#[from] SubmitError),
    /// The server is up but the model is still loading (503). Like shutting down, a state
    /// the client should hear about in words, not a fault.
    #[error("the model is still loading; retry when GET /health answers 200")]
    Loading,
    /// A bug or an engine failure (500). The detail is logged, never sent.
    #[error("internal error: {0}")]
    Internal(String),
}

/// The JSON body of every error response.
#[derive(Debug, Serialize)]
pub struct ErrorResponse {
    /// The error itself; OpenAI nests it under `error`.
    pub error: ErrorDetail,
}

/// OpenAI's error object.
#[derive(Debug, Serialize)]
pub struct ErrorDetail {
    /// Human-readable explanation.
    pub message: String,
    /// [`ApiError::error_type`].
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The offending request field, if one is to blame.
    pub param: Option<String>,
    /// OpenAI's machine-readable code for the case, if it has one.
    pub code: Option<&'static str>,
}

impl ApiError {
    /// A 400 blaming `param`.
    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> Self {
        Self::InvalidRequest {
            param: Some(param.into()),
            message: message.into(),
        }
    }

    /// A 400 that no single field is to blame for (unreadable JSON, wrong content type).
    pub fn invalid_body(message: impl Into<String>) -> Self {
        Self::InvalidRequest {
            param: None,
            message: message.into(),
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::InvalidRequest { .. } | Self::InvalidParam(_) => StatusCode::BAD_REQUEST,
            Self::ModelNotFound(_) | Self::RouteNotFound(_) | Self::NotFound(_) => {
                StatusCode::NOT_FOUND
            }
            Self::NotEnabled(_) => StatusCode::CONFLICT,
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Submit(SubmitError::QueueFull(_)) => StatusCode::TOO_MANY_REQUESTS,
            Self::Submit(SubmitError::ShuttingDown | SubmitError::EngineDead) | Self::Loading => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The `reason` label of `waypoint_request_rejected_total` for a request refused with
    /// this error before the engine saw it, or `None` for errors that are not refusals of a
    /// generation request (server faults, auth, unknown routes).
    pub fn rejection_reason(&self) -> Option<&'static str> {
        match self {
            Self::Submit(SubmitError::QueueFull(_)) => Some("queue_full"),
            Self::PayloadTooLarge { .. } => Some("too_large"),
            // The client did not send its body in time: refused before any work.
            Self::BodyTimeout { .. } => Some("body_timeout"),
            Self::InvalidRequest { .. } | Self::InvalidParam(_) | Self::ModelNotFound(_) => {
                Some("invalid")
            }
            Self::Submit(SubmitError::ShuttingDown | SubmitError::EngineDead) | Self::Loading => {
                Some("unavailable")
            }
            Self::Unauthorized
            | Self::RouteNotFound(_)
            | Self::NotFound(_)
            | Self::NotEnabled(_)
            | Self::MethodNotAllowed { .. }
            | Self::Internal(_) => None,
        }
    }

    /// A stable snake_case label for the kind of error: the `type` of the JSON body, and the
    /// label for logs and metrics. Changing one breaks dashboards and clients.
    pub fn error_type(&self) -> &'static str {
        match self {
            Self::InvalidRequest { .. } | Self::InvalidParam(_) => "invalid_request_error",
            Self::ModelNotFound(_) => "model_not_found",
            Self::RouteNotFound(_) | Self::NotFound(_) => "not_found_error",
            Self::NotEnabled(_) => "not_enabled",
            Self::MethodNotAllowed { .. } => "method_not_allowed",
            Self::PayloadTooLarge { .. } => "request_too_large",
            Self::BodyTimeout { .. } => "request_timeout",
            Self::Unauthorized => "authentication_error",
            Self::Submit(SubmitError::QueueFull(_)) => "server_overloaded",
            Self::Submit(SubmitError::ShuttingDown | SubmitError::EngineDead) | Self::Loading => {
                "service_unavailable"
            }
            Self::Internal(_) => "internal_error",
        }
    }

    /// OpenAI's `code` for the cases where it has one that clients check.
    fn code(&self) -> Option<&'static str> {
        match self {
            Self::ModelNotFound(_) => Some("model_not_found"),
            Self::Unauthorized => Some("invalid_api_key"),
            _ => None,
        }
    }

    fn param(&self) -> Option<String> {
        match self {
            Self::InvalidRequest { param, .. } => param.clone(),
            Self::InvalidParam(invalid) => Some(invalid.param.to_string()),
            Self::ModelNotFound(_) => Some("model".to_string()),
            _ => None,
        }
    }

    /// Logs the error (server errors with their detail at `error`, client errors at
    /// `debug`) and returns the body the client gets. The one place errors are logged, so
    /// call it exactly once per error, from within the request's span.
    pub fn report(&self) -> ErrorResponse {
        let status = self.status();
        let expected = matches!(self, Self::Submit(_) | Self::Loading);
        let message = if status.is_server_error() && !expected {
            // The detail may name files, engine state or a panic message: for the log only.
            tracing::error!(error_type = self.error_type(), error = %self, "request failed");
            "the server failed to process the request".to_string()
        } else {
            tracing::debug!(
                error_type = self.error_type(),
                status = status.as_u16(),
                error = %self,
                "request rejected"
            );
            self.to_string()
        };
        tracing::Span::current().record("error_type", self.error_type());
        ErrorResponse {
            error: ErrorDetail {
                message,
                kind: self.error_type(),
                param: self.param(),
                code: self.code(),
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = self.report();
        let mut response = (self.status(), axum::Json(body)).into_response();
        let headers = response.headers_mut();
        match self {
            Self::Unauthorized => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            // The queue drains in about one request's time; a second is a polite first retry.
            Self::Submit(SubmitError::QueueFull(_)) => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            // Loading takes seconds to minutes; probes and clients need not hammer it. A
            // server that is shutting down will not take the request; a retry finds another
            // replica or the restarted one.
            Self::Loading | Self::Submit(SubmitError::ShuttingDown) => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            }
            _ => {}
        }
        response
    }
}
