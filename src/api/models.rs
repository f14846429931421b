//! /v1/tasks/{task}/models: model versions, and activating one (rollback).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

use super::{ok, ApiPath, AppState};
use crate::error::{Error, ErrorBody};
use crate::service::model_versions::{Activation, ModelList};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/tasks/{task}/models", get(list_models))
        .route("/tasks/{task}/models/{version}/activate", post(activate))
}

/// Model versions with their manifests (metrics, P(IK) calibration, τ).
#[utoipa::path(get, path = "/v1/tasks/{task}/models", tag = "jobs", params(("task" = String, Path)),
    responses((status = 200, body = ModelList), (status = 404, body = ErrorBody)))]
pub async fn list_models(
    State(state): State<AppState>,
    ApiPath(task): ApiPath<String>,
) -> Result<Response, Error> {
    Ok(ok(state.service.list_models(&task).await?))
}

/// Serve another version (roll back or forward). 200 when done (decisions re-score in the
/// background); 202 with a job when the version's encoder differs and the task is re-embedded.
#[utoipa::path(post, path = "/v1/tasks/{task}/models/{version}/activate", tag = "jobs",
    params(("task" = String, Path), ("version" = i64, Path)),
    responses((status = 200, body = Activation), (status = 202, body = Activation), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody)))]
pub async fn activate(
    State(state): State<AppState>,
    ApiPath((task, version)): ApiPath<(String, i64)>,
) -> Result<Response, Error> {
    let (queued, activation) = state.service.activate(&task, version).await?;
    let status = if queued {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    Ok((status, axum::Json(activation)).into_response())
}
