//! The one error type of the service and its mapping to HTTP responses.
//!
//! Every error leaves the server as `{"error": {"code", "message", "details"?}}`. Internal
//! errors are logged and answered with a generic message: they never leak SQL or paths.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// 400: the request could not be parsed.
    #[error("{message}")]
    BadRequest { code: &'static str, message: String },
    /// 401: no valid key (missing, malformed or unknown); answered with `WWW-Authenticate`.
    #[error("this request needs `Authorization: Bearer <key>` with a valid API key")]
    Unauthorized,
    /// 403: a valid key without the scope or the task the request needs.
    #[error("{0}")]
    Forbidden(String),
    /// 404: an unknown task, example, job or model version.
    #[error("{0}")]
    NotFound(String),
    /// 405: the path exists, the method does not.
    #[error("method not allowed on this path")]
    MethodNotAllowed,
    /// 409: the request conflicts with the current state.
    #[error("{message}")]
    Conflict {
        code: &'static str,
        message: String,
        details: Option<Value>,
    },
    /// 413: a body or batch over the configured limits.
    #[error("{0}")]
    TooLarge(String),
    /// 415: the body is not JSON.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// 422: well-formed but invalid.
    #[error("{message}")]
    Invalid { code: &'static str, message: String },
    /// 429: the model queue is full.
    #[error("the model queue is full; retry after {retry_after_secs} s")]
    Overloaded { retry_after_secs: u64 },
    /// 503: not ready (model loading, database down).
    #[error("{0}")]
    Unavailable(String),
    /// A job stopped on request (never an HTTP answer: jobs record it as `cancelled`).
    #[error("cancelled on request")]
    Cancelled,
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("internal error: {0:#}")]
    Internal(#[from] anyhow::Error),
}

impl From<crate::model::WorkerError> for Error {
    fn from(e: crate::model::WorkerError) -> Self {
        use crate::model::WorkerError;
        match e {
            WorkerError::Overloaded { retry_after_secs } => Error::Overloaded { retry_after_secs },
            WorkerError::Stopped => Error::Unavailable("the model worker has stopped".into()),
            WorkerError::Failed(e) => Error::Internal(e),
        }
    }
}

impl Error {
    pub fn invalid(code: &'static str, message: impl Into<String>) -> Self {
        Error::Invalid {
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Error::BadRequest {
            code,
            message: message.into(),
        }
    }

    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Error::Conflict {
            code,
            message: message.into(),
            details: None,
        }
    }

    pub fn not_found(what: impl Into<String>) -> Self {
        Error::NotFound(what.into())
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Error::BadRequest { .. } => StatusCode::BAD_REQUEST,
            Error::Unauthorized => StatusCode::UNAUTHORIZED,
            Error::Forbidden(_) => StatusCode::FORBIDDEN,
            Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Error::Conflict { .. } | Error::Cancelled => StatusCode::CONFLICT,
            Error::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Error::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Error::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Error::Overloaded { .. } => StatusCode::TOO_MANY_REQUESTS,
            Error::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Error::Database(e) if crate::store::is_write_conflict(e) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Error::Database(_) | Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            Error::BadRequest { code, .. }
            | Error::Conflict { code, .. }
            | Error::Invalid { code, .. } => code,
            Error::Unauthorized => "unauthorized",
            Error::Forbidden(_) => "forbidden",
            Error::NotFound(_) => "not_found",
            Error::MethodNotAllowed => "method_not_allowed",
            Error::TooLarge(_) => "too_large",
            Error::UnsupportedMediaType(_) => "unsupported_media_type",
            Error::Overloaded { .. } => "overloaded",
            Error::Cancelled => "cancelled",
            Error::Unavailable(_) => "not_ready",
            Error::Database(e) if crate::store::is_write_conflict(e) => "write_conflict",
            Error::Database(_) | Error::Internal(_) => "internal",
        }
    }
}

/// The error body every non-2xx response carries.
#[derive(Debug, Serialize, serde::Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, serde::Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable, machine-readable code, e.g. `label_not_in_task`.
    pub code: String,
    /// Human-readable explanation.
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub details: Option<Value>,
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = self.status();
        let message = match &self {
            Error::Database(e) if crate::store::is_write_conflict(e) => {
                tracing::warn!(error = %e, "write conflict outlasted its retries");
                "the write met concurrent writes and was rolled back after several retries; \
                 re-send it: example, weak-label and gold writes are idempotent"
                    .to_string()
            }
            Error::Database(e) => {
                tracing::error!(error = %e, "database error");
                "internal error (see the server log)".to_string()
            }
            Error::Internal(e) => {
                tracing::error!(error = format!("{e:#}"), "internal error");
                "internal error (see the server log)".to_string()
            }
            other => other.to_string(),
        };
        let details = match &self {
            Error::Conflict { details, .. } => details.clone(),
            _ => None,
        };
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code().to_string(),
                message,
                details,
            },
        };
        let mut response = (status, axum::Json(body)).into_response();
        let retry_after = match &self {
            Error::Overloaded { retry_after_secs } => Some(*retry_after_secs),
            Error::Database(e) if crate::store::is_write_conflict(e) => Some(1),
            _ => None,
        };
        if matches!(self, Error::Unauthorized) {
            // Bearer for API clients; Basic so that a browser opening /ui asks for the key.
            let headers = response.headers_mut();
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"sw2s\""),
            );
            headers.append(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"sw2s\", charset=\"UTF-8\""),
            );
        }
        if let Some(secs) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        response
    }
}
