//! /v1/tasks/{task}/sources, /report and /graph: what the task's labels rest on.

use axum::extract::State;
use axum::response::Response;
use axum::routing::get;
use axum::Router;

use super::{ok, ApiPath, AppState};
use crate::error::{Error, ErrorBody};
use crate::service::graphs::GraphCheck;
use crate::service::report::TaskReport;
use crate::service::sources::SourcesView;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/tasks/{task}/sources", get(sources))
        .route("/tasks/{task}/report", get(report))
        .route("/tasks/{task}/graph", get(graph))
}

/// Per weak source: coverage, overlaps, conflicts, polarity, accuracy on gold, and the
/// accuracy the active version's source model learned (Snorkel's `lf_summary`, live).
#[utoipa::path(get, path = "/v1/tasks/{task}/sources", tag = "quality", params(("task" = String, Path)),
    responses((status = 200, body = SourcesView), (status = 404, body = ErrorBody)))]
pub async fn sources(
    State(state): State<AppState>,
    ApiPath(task): ApiPath<String>,
) -> Result<Response, Error> {
    Ok(ok(state.service.sources(&task).await?))
}

/// Which label-changing stages are on for the task and why (gold figures), the class prior,
/// the calibration of both sides' confidence, the target-precision threshold and coverage.
#[utoipa::path(get, path = "/v1/tasks/{task}/report", tag = "quality", params(("task" = String, Path)),
    responses((status = 200, body = TaskReport), (status = 404, body = ErrorBody)))]
pub async fn report(
    State(state): State<AppState>,
    ApiPath(task): ApiPath<String>,
) -> Result<Response, Error> {
    Ok(ok(state.service.report(&task).await?))
}

/// Checks the task's similarity graph against the database: every stored embedding must be
/// a node. Missing examples are added (and their neighbours re-decided) before answering.
#[utoipa::path(get, path = "/v1/tasks/{task}/graph", tag = "quality", params(("task" = String, Path)),
    responses((status = 200, body = GraphCheck), (status = 404, body = ErrorBody)))]
pub async fn graph(
    State(state): State<AppState>,
    ApiPath(task): ApiPath<String>,
) -> Result<Response, Error> {
    Ok(ok(state.service.check_graph(&task).await?))
}
