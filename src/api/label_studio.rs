//! /ls/{task}/…: the task as a Label Studio ML backend (point a project's Model setting at
//! `http://HOST/ls/TASK`). Label Studio's own paths and bodies, the server's keys (Bearer, or
//! HTTP Basic with the key as password, as Label Studio sends a backend's credentials).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Value};

use super::{ok, ApiJson, ApiPath, AppState};
use crate::error::{Error, ErrorBody};
use crate::service::jobs::CreateJob;
use crate::service::label_studio::{
    LsPredictRequest, LsPredictResponse, LsSetupRequest, LsSetupResponse, LsValidateRequest,
    LsWebhookResponse,
};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/ls/{task}", get(health))
        .route("/ls/{task}/", get(health))
        .route("/ls/{task}/health", get(health))
        .route("/ls/{task}/setup", post(setup))
        .route("/ls/{task}/validate", post(validate))
        .route("/ls/{task}/predict", post(predict))
        .route("/ls/{task}/webhook", post(webhook))
        .route("/ls/{task}/train", post(train))
        .route("/ls/{task}/versions", get(versions))
}

/// Health as Label Studio checks it: `{"status": "UP"}` when the task exists.
#[utoipa::path(get, path = "/ls/{task}/health", tag = "label_studio", params(("task" = String, Path)),
    responses((status = 200, body = Object), (status = 404, body = ErrorBody)))]
pub async fn health(
    State(state): State<AppState>,
    ApiPath(task): ApiPath<String>,
) -> Result<Response, Error> {
    let task = state.service.task(&task).await?;
    Ok(ok(
        json!({"status": "UP", "model_class": "sw2s", "task": task.name, "v2": true}),
    ))
}

/// Connects a project: remembers which `Choices` control carries the task's labels (422 when
/// none matches) and answers the active model version.
#[utoipa::path(post, path = "/ls/{task}/setup", tag = "label_studio", params(("task" = String, Path)),
    request_body = LsSetupRequest,
    responses((status = 200, body = LsSetupResponse), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn setup(
    State(state): State<AppState>,
    ApiPath(task): ApiPath<String>,
    ApiJson(req): ApiJson<LsSetupRequest>,
) -> Result<Response, Error> {
    Ok(ok(state.service.ls_setup(&task, req).await?))
}

/// Checks a label config before Label Studio connects a project (422 naming what it found).
#[utoipa::path(post, path = "/ls/{task}/validate", tag = "label_studio", params(("task" = String, Path)),
    request_body = LsValidateRequest,
    responses((status = 200, body = Object), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn validate(
    State(state): State<AppState>,
    ApiPath(task): ApiPath<String>,
    ApiJson(req): ApiJson<LsValidateRequest>,
) -> Result<Response, Error> {
    Ok(ok(state.service.ls_validate(&task, req).await?))
}

/// One prediction per Label Studio task, in order; the tasks are ingested as examples
/// (`ls-<task id>`, idempotent). `score` is the probability that the label is right.
#[utoipa::path(post, path = "/ls/{task}/predict", tag = "label_studio", params(("task" = String, Path)),
    request_body = LsPredictRequest,
    responses((status = 200, body = LsPredictResponse), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn predict(
    State(state): State<AppState>,
    ApiPath(task): ApiPath<String>,
    ApiJson(req): ApiJson<LsPredictRequest>,
) -> Result<Response, Error> {
    Ok(ok(state.service.ls_predict(&task, req).await?))
}

/// Label Studio events: annotations created or updated set gold labels, deleted ones withdraw
/// them, `START_TRAINING` queues a job; any other action is answered and ignored.
#[utoipa::path(post, path = "/ls/{task}/webhook", tag = "label_studio", params(("task" = String, Path)),
    request_body = Object,
    responses((status = 200, body = LsWebhookResponse), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn webhook(
    State(state): State<AppState>,
    ApiPath(task): ApiPath<String>,
    ApiJson(body): ApiJson<Value>,
) -> Result<Response, Error> {
    Ok(ok(state.service.ls_webhook(&task, body).await?))
}

/// The ML backend SDK's `/train`: queues a job (the annotations are already gold labels).
#[utoipa::path(post, path = "/ls/{task}/train", tag = "label_studio", params(("task" = String, Path)),
    responses((status = 201, body = Object), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn train(
    State(state): State<AppState>,
    ApiPath(task): ApiPath<String>,
) -> Result<Response, Error> {
    let job = state
        .service
        .create_job(&task, CreateJob { mode: None })
        .await?;
    Ok((StatusCode::CREATED, axum::Json(json!({"job": job.id}))).into_response())
}

/// The task's model versions (`v1`, `v2`, …) and the active one.
#[utoipa::path(get, path = "/ls/{task}/versions", tag = "label_studio", params(("task" = String, Path)),
    responses((status = 200, body = Object), (status = 404, body = ErrorBody)))]
pub async fn versions(
    State(state): State<AppState>,
    ApiPath(task): ApiPath<String>,
) -> Result<Response, Error> {
    Ok(ok(state.service.ls_versions(&task).await?))
}
