//! /v1/tasks/{task}/jobs

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

use super::{ok, ApiJsonOrEmpty, ApiPath, AppState};
use crate::error::{Error, ErrorBody};
use crate::service::jobs::{CreateJob, JobList, JobView};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/tasks/{task}/jobs", post(create_job).get(list_jobs))
        .route("/tasks/{task}/jobs/{job}", get(get_job))
        .route("/tasks/{task}/jobs/{job}/cancel", post(cancel_job))
        .route("/tasks/{task}/jobs/{job}/retry", post(retry_job))
}

/// Start a selective fine-tuning job: `head` (frozen encoder) or `full` (encoder and head).
/// 202 with the queued job; 409 with the active one if the task already has a job.
#[utoipa::path(post, path = "/v1/tasks/{task}/jobs", tag = "jobs", params(("task" = String, Path)),
    request_body(content = Option<CreateJob>, description = "an empty body uses the task's job_mode"),
    responses((status = 202, body = JobView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn create_job(
    State(state): State<AppState>,
    ApiPath(task): ApiPath<String>,
    ApiJsonOrEmpty(req): ApiJsonOrEmpty<CreateJob>,
) -> Result<Response, Error> {
    let job = state.service.create_job(&task, req).await?;
    Ok((StatusCode::ACCEPTED, axum::Json(job)).into_response())
}

#[utoipa::path(get, path = "/v1/tasks/{task}/jobs", tag = "jobs", params(("task" = String, Path)),
    responses((status = 200, body = JobList), (status = 404, body = ErrorBody)))]
pub async fn list_jobs(
    State(state): State<AppState>,
    ApiPath(task): ApiPath<String>,
) -> Result<Response, Error> {
    Ok(ok(state.service.list_jobs(&task).await?))
}

/// A job's state, progress (stage, epoch, step, loss) and final metrics.
#[utoipa::path(get, path = "/v1/tasks/{task}/jobs/{job}", tag = "jobs", params(("task" = String, Path), ("job" = i64, Path)),
    responses((status = 200, body = JobView), (status = 404, body = ErrorBody)))]
pub async fn get_job(
    State(state): State<AppState>,
    ApiPath((task, job)): ApiPath<(String, i64)>,
) -> Result<Response, Error> {
    Ok(ok(state.service.get_job(&task, job).await?))
}

/// Cancel a queued job now, or a running one at its next step; serving stays as it was.
#[utoipa::path(post, path = "/v1/tasks/{task}/jobs/{job}/cancel", tag = "jobs", params(("task" = String, Path), ("job" = i64, Path)),
    responses((status = 202, body = JobView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn cancel_job(
    State(state): State<AppState>,
    ApiPath((task, job)): ApiPath<(String, i64)>,
) -> Result<Response, Error> {
    let job = state.service.cancel_job(&task, job).await?;
    Ok((StatusCode::ACCEPTED, axum::Json(job)).into_response())
}

/// Re-run a failed or cancelled job (for example one interrupted by a restart).
#[utoipa::path(post, path = "/v1/tasks/{task}/jobs/{job}/retry", tag = "jobs", params(("task" = String, Path), ("job" = i64, Path)),
    responses((status = 202, body = JobView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn retry_job(
    State(state): State<AppState>,
    ApiPath((task, job)): ApiPath<(String, i64)>,
) -> Result<Response, Error> {
    let job = state.service.retry_job(&task, job).await?;
    Ok((StatusCode::ACCEPTED, axum::Json(job)).into_response())
}
