//! Service endpoints: liveness, readiness, model information, metrics, OpenAPI, embeddings.

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{ok, ApiJson, AppState};
use crate::error::Error;
use crate::model::ModelInfo;
use crate::service::predict::{EmbedResponse, TextsRequest};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/info", get(info))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
}

pub fn v1_router() -> Router<AppState> {
    Router::new().route("/embed", post(embed))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Status {
    pub status: String,
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/health", tag = "service", security(()),
    responses((status = 200, body = Status)))]
pub async fn health() -> Response {
    ok(Status {
        status: "ok".into(),
    })
}

/// Readiness: the model has answered its warm-up, its queue has room for a batch, and the
/// database answers.
#[utoipa::path(get, path = "/ready", tag = "service", security(()),
    responses((status = 200, body = Status), (status = 503, body = crate::error::ErrorBody)))]
pub async fn ready(State(state): State<AppState>) -> Result<Response, Error> {
    if !state.service.is_ready() {
        return Err(Error::Unavailable("the model is still loading".into()));
    }
    if !state.service.model.worker.has_room() {
        return Err(Error::Unavailable(format!(
            "the model queue is full ({} texts waiting or running)",
            state.service.model.worker.queued_texts()
        )));
    }
    state
        .service
        .store
        .ping()
        .await
        .map_err(|e| Error::Unavailable(format!("the database does not answer: {e}")))?;
    Ok(ok(Status {
        status: "ready".into(),
    }))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Info {
    pub version: String,
    pub model: ModelInfo,
    /// Where the strong model runs: `cpu` or `cuda:N`.
    pub device: String,
    pub database: String,
    pub max_batch_examples: usize,
    pub max_text_chars: usize,
    pub max_batch_size: usize,
    pub max_batch_tokens: usize,
    pub max_queue_texts: usize,
    /// `truncate`, `refuse` or `chunk`: what happens to texts over `model.max_length` tokens.
    pub on_overlong: crate::model::Overlong,
}

/// The model and the limits this server runs with.
#[utoipa::path(get, path = "/info", tag = "service", security(()), responses((status = 200, body = Info)))]
pub async fn info(State(state): State<AppState>) -> Response {
    let s = &state.service;
    let batch = s.model.worker.config();
    ok(Info {
        version: env!("CARGO_PKG_VERSION").into(),
        model: s.model.info.clone(),
        device: crate::model::device::name(&s.model.device),
        database: s.store.backend().name().into(),
        max_batch_examples: s.limits.max_batch_examples,
        max_text_chars: s.limits.max_text_chars,
        max_batch_size: batch.max_batch_size,
        max_batch_tokens: batch.max_batch_tokens,
        max_queue_texts: batch.max_queue_texts,
        on_overlong: s.model.overlong,
    })
}

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", tag = "service", security(()),
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
pub async fn metrics(State(state): State<AppState>) -> Response {
    metrics::gauge!("sw2s_model_queue_texts").set(state.service.model.worker.queued_texts() as f64);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        super::openapi_json(),
    )
        .into_response()
}

/// Embeddings of the base encoder (mean-pooled, L2-normalised).
#[utoipa::path(post, path = "/v1/embed", tag = "model", request_body = TextsRequest,
    responses((status = 200, body = EmbedResponse), (status = 422, body = crate::error::ErrorBody),
              (status = 413, body = crate::error::ErrorBody), (status = 429, body = crate::error::ErrorBody)))]
pub async fn embed(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<TextsRequest>,
) -> Result<Response, Error> {
    Ok(ok(state.service.embed_texts(req).await?))
}
