//! /ui/: the dashboard a labeling lead opens every morning, served by the same binary. Pages
//! are rendered from templates compiled into the binary (minijinja); charts are drawn in the
//! browser by the vendored Chart.js from the same JSON the API answers
//! (`/v1/tasks/{task}/dashboard`), and every button calls the public API. Nothing is fetched
//! from outside the server. Same keys as the API: browsers send them as HTTP Basic.

use std::sync::OnceLock;

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;
use minijinja::{context, Environment};

use super::{ApiPath, ApiQuery, AppState};
use crate::error::Error;

const TEMPLATES: &[(&str, &str)] = &[
    ("base.html", include_str!("templates/base.html")),
    ("tasks.html", include_str!("templates/tasks.html")),
    ("task.html", include_str!("templates/task.html")),
    ("review.html", include_str!("templates/review.html")),
];

/// (name, content type, body) of every asset.
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "chart.umd.min.js",
        "text/javascript; charset=utf-8",
        include_str!("assets/chart.umd.min.js"),
    ),
    (
        "dashboard.js",
        "text/javascript; charset=utf-8",
        include_str!("assets/dashboard.js"),
    ),
    (
        "review.js",
        "text/javascript; charset=utf-8",
        include_str!("assets/review.js"),
    ),
    (
        "ui.css",
        "text/css; charset=utf-8",
        include_str!("assets/ui.css"),
    ),
];

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/ui", get(|| async { Redirect::permanent("/ui/") }))
        .route("/ui/", get(tasks_page))
        .route("/ui/tasks/{task}", get(task_page))
        .route("/ui/tasks/{task}/review", get(review_page))
}

/// Assets need no key: they are the same for everyone and carry no data.
pub fn assets_router() -> Router<AppState> {
    Router::new().route("/ui/assets/{file}", get(asset))
}

fn templates() -> &'static Environment<'static> {
    static ENV: OnceLock<Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Environment::new();
        for (name, source) in TEMPLATES {
            // The templates are part of the binary; a broken one fails the unit test below.
            if let Err(e) = env.add_template(name, source) {
                tracing::error!(template = name, error = %e, "template does not parse");
            }
        }
        env
    })
}

fn render(name: &str, ctx: minijinja::Value) -> Result<Response, Error> {
    let page = templates()
        .get_template(name)
        .and_then(|t| t.render(ctx))
        .map_err(|e| Error::Internal(anyhow::anyhow!("rendering {name}: {e}")))?;
    let mut response = Html(page).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// Every task with its example count, decision mix, active version and last job.
async fn tasks_page(State(state): State<AppState>) -> Result<Response, Error> {
    let tasks = state.service.list_tasks().await?.tasks;
    let mut rows = Vec::with_capacity(tasks.len());
    for t in tasks {
        let last_job = state.service.recent_jobs(&t.name, 1).await?.pop();
        rows.push(context! { task => t, last_job => last_job });
    }
    render(
        "tasks.html",
        context! { rows => rows, version => env!("CARGO_PKG_VERSION") },
    )
}

/// One task: shares, calibration, decisions over time, sources, jobs, versions.
async fn task_page(
    State(state): State<AppState>,
    ApiPath(task): ApiPath<String>,
) -> Result<Response, Error> {
    let task = state.service.get_task(&task).await?;
    render("task.html", context! { task => task })
}

#[derive(Debug, serde::Deserialize)]
struct ReviewPageQuery {
    order: Option<String>,
}

/// The review queue, one example at a time, labelled with a click or a key press; hardest
/// first, or a fair sample with `?order=sample` (the API parses the order).
async fn review_page(
    State(state): State<AppState>,
    ApiPath(task): ApiPath<String>,
    ApiQuery(q): ApiQuery<ReviewPageQuery>,
) -> Result<Response, Error> {
    let sample = crate::service::review::ReviewOrder::parse(q.order.as_deref())?
        == crate::service::review::ReviewOrder::Sample;
    let task = state.service.get_task(&task).await?;
    render("review.html", context! { task => task, sample => sample })
}

async fn asset(ApiPath(file): ApiPath<String>) -> Response {
    match ASSETS.iter().find(|(name, _, _)| *name == file) {
        Some((_, content_type, body)) => (
            [
                (header::CONTENT_TYPE, *content_type),
                (header::CACHE_CONTROL, "public, max-age=300"),
            ],
            *body,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "no such asset").into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_template_parses_and_every_asset_is_there() {
        let mut env = Environment::new();
        for (name, source) in TEMPLATES {
            env.add_template(name, source)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        for (name, _, body) in ASSETS {
            assert!(!body.is_empty(), "{name}");
        }
    }
}
