//! /v1/tasks

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use super::{ok, ApiJson, ApiPath, AppState};
use crate::error::{Error, ErrorBody};
use crate::service::tasks::{CreateTask, TaskList, TaskView, UpdateTask};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/tasks", get(list_tasks).post(create_task))
        .route(
            "/tasks/{task}",
            get(get_task).patch(update_task).delete(delete_task),
        )
}

/// Create a task: a name, its label set and optional settings.
#[utoipa::path(post, path = "/v1/tasks", tag = "tasks", request_body = CreateTask,
    responses((status = 201, body = TaskView), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn create_task(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<CreateTask>,
) -> Result<Response, Error> {
    let task = state.service.create_task(req).await?;
    Ok((StatusCode::CREATED, axum::Json(task)).into_response())
}

#[utoipa::path(get, path = "/v1/tasks", tag = "tasks", responses((status = 200, body = TaskList)))]
pub async fn list_tasks(State(state): State<AppState>) -> Result<Response, Error> {
    Ok(ok(state.service.list_tasks().await?))
}

#[utoipa::path(get, path = "/v1/tasks/{task}", tag = "tasks", params(("task" = String, Path)),
    responses((status = 200, body = TaskView), (status = 404, body = ErrorBody)))]
pub async fn get_task(
    State(state): State<AppState>,
    ApiPath(task): ApiPath<String>,
) -> Result<Response, Error> {
    Ok(ok(state.service.get_task(&task).await?))
}

/// Change settings (a partial object; a new τ re-scores the task's decisions; a new
/// `long_texts` queues a job re-embedding the long texts, and is refused with 409
/// `job_active` while another job holds the task).
#[utoipa::path(patch, path = "/v1/tasks/{task}", tag = "tasks", params(("task" = String, Path)),
    request_body = UpdateTask,
    responses((status = 200, body = TaskView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn update_task(
    State(state): State<AppState>,
    ApiPath(task): ApiPath<String>,
    ApiJson(req): ApiJson<UpdateTask>,
) -> Result<Response, Error> {
    Ok(ok(state.service.update_task(&task, req).await?))
}

/// Delete a task with its examples, decisions, model versions and jobs.
#[utoipa::path(delete, path = "/v1/tasks/{task}", tag = "tasks", params(("task" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn delete_task(
    State(state): State<AppState>,
    ApiPath(task): ApiPath<String>,
) -> Result<Response, Error> {
    state.service.delete_task(&task).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
