//! /v1/tasks/{task}/dashboard: everything the dashboard's task page draws, in one answer.

use axum::extract::State;
use axum::response::Response;
use axum::routing::get;
use axum::Router;

use super::{ok, ApiPath, AppState};
use crate::error::{Error, ErrorBody};
use crate::service::dashboard::Dashboard;

pub fn router() -> Router<AppState> {
    Router::new().route("/tasks/{task}/dashboard", get(dashboard))
}

/// The task with its decision mix, its report (stages, calibration with reliability bins and
/// precision-coverage curves), label shares by kind, decisions over time by source, weak
/// sources, the newest jobs (with loss curves) and model versions.
#[utoipa::path(get, path = "/v1/tasks/{task}/dashboard", tag = "quality", params(("task" = String, Path)),
    responses((status = 200, body = Dashboard), (status = 404, body = ErrorBody)))]
pub async fn dashboard(
    State(state): State<AppState>,
    ApiPath(task): ApiPath<String>,
) -> Result<Response, Error> {
    Ok(ok(state.service.dashboard(&task).await?))
}
