//! /v1/tasks/{task}/examples

use axum::extract::State;
use axum::response::Response;
use axum::routing::{get, post, put};
use axum::Router;
use serde::Deserialize;
use utoipa::IntoParams;

use super::{ok, ApiJson, ApiPath, ApiQuery, AppState};
use crate::error::{Error, ErrorBody};
use crate::service::examples::{ExamplePage, ExampleView};
use crate::service::ingest::{GoldRequest, IngestRequest, IngestResponse, WeakLabelsRequest};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/tasks/{task}/examples", post(ingest).get(list_examples))
        .route("/tasks/{task}/examples/{id}", get(get_example))
        .route(
            "/tasks/{task}/examples/{id}/weak_labels",
            post(add_weak_labels),
        )
        .route("/tasks/{task}/examples/{id}/gold", put(set_gold))
}

/// Ingest a batch of examples with weak (and optionally gold) labels. Idempotent per id; the
/// whole batch is validated first and written in one transaction. Each result carries the
/// example's decision.
#[utoipa::path(post, path = "/v1/tasks/{task}/examples", tag = "examples", params(("task" = String, Path)),
    request_body = IngestRequest,
    responses((status = 200, body = IngestResponse), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody), (status = 413, body = ErrorBody), (status = 422, body = ErrorBody),
              (status = 429, body = ErrorBody)))]
pub async fn ingest(
    State(state): State<AppState>,
    ApiPath(task): ApiPath<String>,
    ApiJson(req): ApiJson<IngestRequest>,
) -> Result<Response, Error> {
    Ok(ok(state.service.ingest(&task, req).await?))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// `next_cursor` of the previous page.
    pub after: Option<String>,
    /// 1–1000, default 100.
    pub limit: Option<i64>,
}

/// List examples in insertion order, a page at a time.
#[utoipa::path(get, path = "/v1/tasks/{task}/examples", tag = "examples", params(("task" = String, Path), PageQuery),
    responses((status = 200, body = ExamplePage), (status = 404, body = ErrorBody)))]
pub async fn list_examples(
    State(state): State<AppState>,
    ApiPath(task): ApiPath<String>,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<Response, Error> {
    Ok(ok(state
        .service
        .list_examples(&task, q.after.as_deref(), q.limit)
        .await?))
}

/// One example: its labels, refined label, nearest neighbours, prediction and decision history.
#[utoipa::path(get, path = "/v1/tasks/{task}/examples/{id}", tag = "examples",
    params(("task" = String, Path), ("id" = String, Path)),
    responses((status = 200, body = ExampleView), (status = 404, body = ErrorBody)))]
pub async fn get_example(
    State(state): State<AppState>,
    ApiPath((task, id)): ApiPath<(String, String)>,
) -> Result<Response, Error> {
    Ok(ok(state.service.example_view(&task, &id).await?))
}

/// Add weak labels to an example (a source that labels again replaces its label).
#[utoipa::path(post, path = "/v1/tasks/{task}/examples/{id}/weak_labels", tag = "examples",
    params(("task" = String, Path), ("id" = String, Path)), request_body = WeakLabelsRequest,
    responses((status = 200, body = ExampleView), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn add_weak_labels(
    State(state): State<AppState>,
    ApiPath((task, id)): ApiPath<(String, String)>,
    ApiJson(req): ApiJson<WeakLabelsRequest>,
) -> Result<Response, Error> {
    state.service.add_weak_labels(&task, &id, req).await?;
    Ok(ok(state.service.example_view(&task, &id).await?))
}

/// Set an example's gold (human) label, optionally saying how the example was picked
/// (`picked`: `random` or `review`; gold picked for review does not judge the checks).
#[utoipa::path(put, path = "/v1/tasks/{task}/examples/{id}/gold", tag = "examples",
    params(("task" = String, Path), ("id" = String, Path)), request_body = GoldRequest,
    responses((status = 200, body = ExampleView), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn set_gold(
    State(state): State<AppState>,
    ApiPath((task, id)): ApiPath<(String, String)>,
    ApiJson(req): ApiJson<GoldRequest>,
) -> Result<Response, Error> {
    state.service.set_gold(&task, &id, req).await?;
    Ok(ok(state.service.example_view(&task, &id).await?))
}
