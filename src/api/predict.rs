//! /v1/tasks/{task}/predict

use axum::extract::State;
use axum::response::Response;
use axum::routing::post;
use axum::Router;

use super::{ok, ApiJson, ApiPath, AppState};
use crate::error::{Error, ErrorBody};
use crate::service::predict::{PredictResponse, TextsRequest};

pub fn router() -> Router<AppState> {
    Router::new().route("/tasks/{task}/predict", post(predict))
}

/// The task's strong model on new texts: label, class scores and P(IK). Without a trained
/// version every prediction is null and `message` says why.
#[utoipa::path(post, path = "/v1/tasks/{task}/predict", tag = "model", params(("task" = String, Path)),
    request_body = TextsRequest,
    responses((status = 200, body = PredictResponse), (status = 404, body = ErrorBody), (status = 413, body = ErrorBody),
              (status = 422, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub async fn predict(
    State(state): State<AppState>,
    ApiPath(task): ApiPath<String>,
    ApiJson(req): ApiJson<TextsRequest>,
) -> Result<Response, Error> {
    Ok(ok(state.service.predict(&task, req).await?))
}
