//! /v1/tasks/{task}/decisions and /review_queue

use axum::body::Body;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::Deserialize;
use utoipa::IntoParams;

use super::{ok, ApiPath, ApiQuery, AppState};
use crate::error::{Error, ErrorBody};
use crate::service::export::ExportLine;
use crate::service::review::ReviewQueue;
use crate::store::decisions::ExportFilter;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/tasks/{task}/decisions", get(export))
        .route("/tasks/{task}/review_queue", get(review_queue))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ExportQuery {
    /// Only decisions from this source: gold, strong, weak_refined, none.
    pub source: Option<String>,
    /// Only decisions made at or after this time (Unix ms).
    pub since: Option<i64>,
    /// Only decisions made before this time (Unix ms).
    pub until: Option<i64>,
    /// Only each example's current decision (the labels to train on).
    pub current: Option<bool>,
}

/// Export decisions with their provenance as JSON lines (`application/x-ndjson`), oldest
/// first, streamed.
#[utoipa::path(get, path = "/v1/tasks/{task}/decisions", tag = "decisions", params(("task" = String, Path), ExportQuery),
    responses((status = 200, body = ExportLine, content_type = "application/x-ndjson",
               description = "one JSON object per line"),
              (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn export(
    State(state): State<AppState>,
    ApiPath(task): ApiPath<String>,
    ApiQuery(q): ApiQuery<ExportQuery>,
) -> Result<Response, Error> {
    let filter = ExportFilter {
        source: q.source,
        since: q.since,
        until: q.until,
        current_only: q.current.unwrap_or(false),
    };
    let stream = state.service.export_decisions(&task, filter).await?;
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(stream),
    )
        .into_response())
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ReviewQuery {
    /// 1–1000, default 20.
    pub limit: Option<i64>,
    /// `priority` (default): where a label helps most. `sample`: a uniform random sample of
    /// the unlabelled examples, in an order fixed per task; gold labelled from it keeps the
    /// gold a fair sample, which the checks and the target-precision threshold assume.
    pub order: Option<String>,
}

/// The examples without gold labels a human should label next: by default where a label
/// helps most (abstentions first, then strong and refined-weak disagreeing, then undecided
/// ones, each by lowest confidence); with `order=sample`, a fair random sample.
#[utoipa::path(get, path = "/v1/tasks/{task}/review_queue", tag = "decisions", params(("task" = String, Path), ReviewQuery),
    responses((status = 200, body = ReviewQueue), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn review_queue(
    State(state): State<AppState>,
    ApiPath(task): ApiPath<String>,
    ApiQuery(q): ApiQuery<ReviewQuery>,
) -> Result<Response, Error> {
    Ok(ok(state
        .service
        .review_queue(&task, q.limit, q.order.as_deref())
        .await?))
}
