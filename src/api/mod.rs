//! The HTTP layer: routing, extraction, auth, limits, metrics and the OpenAPI document.
//! Handlers only validate the shape of a request, call the service and map its errors.

pub mod auth;
pub mod dashboard;
pub mod decisions;
pub mod examples;
pub mod health;
pub mod jobs;
pub mod label_studio;
pub mod models;
pub mod predict;
pub mod sources;
pub mod tasks;
pub mod ui;

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, MatchedPath, Request, State};
use axum::http::{header, request::Parts, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::{BoxError, Router};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde::de::DeserializeOwned;
use tower::ServiceBuilder;
use tower_http::trace::TraceLayer;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::error::Error;
use crate::service::Service;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub service: Arc<Service>,
    pub keys: auth::Keys,
    pub metrics: PrometheusHandle,
}

/// HTTP settings of the router.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    pub keys: auth::Keys,
    pub max_body_bytes: usize,
    pub request_timeout: Duration,
}

/// The process-wide Prometheus recorder (installed once; several servers in one test
/// process share it).
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(&[
                    0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                ])
                .map(|b| b.build_recorder())
                .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder());
            let handle = recorder.handle();
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

pub fn router(service: Arc<Service>, config: &HttpConfig) -> Router {
    let state = AppState {
        service,
        keys: config.keys.clone(),
        metrics: metrics_handle(),
    };
    let v1 = Router::new()
        .merge(health::v1_router())
        .merge(tasks::router())
        .merge(examples::router())
        .merge(predict::router())
        .merge(decisions::router())
        .merge(jobs::router())
        .merge(models::router())
        .merge(sources::router())
        .merge(dashboard::router())
        .route_layer(middleware::from_fn_with_state(state.clone(), auth));
    let ui = ui::router().route_layer(middleware::from_fn_with_state(state.clone(), auth));
    let ls =
        label_studio::router().route_layer(middleware::from_fn_with_state(state.clone(), auth));
    Router::new()
        .merge(health::router())
        .nest("/v1", v1)
        .merge(ls)
        .merge(ui)
        .merge(ui::assets_router())
        .fallback(|| async { Error::not_found("no such route") })
        .method_not_allowed_fallback(|| async { Error::MethodNotAllowed })
        .layer(
            ServiceBuilder::new()
                .layer(axum::error_handling::HandleErrorLayer::new(
                    |err: BoxError| async move {
                        if err.is::<tower::timeout::error::Elapsed>() {
                            Error::Unavailable("the request took too long and was stopped".into())
                        } else {
                            Error::Internal(anyhow::anyhow!("middleware error: {err}"))
                        }
                    },
                ))
                .timeout(config.request_timeout),
        )
        .layer(middleware::from_fn(track_metrics))
        .layer(DefaultBodyLimit::max(config.max_body_bytes))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// API-key auth for /v1 (see `auth`): the caller's key, its scope and its tasks.
async fn auth(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let path = request.uri().path();
    // /ui pages are read like the API resources they show (`/ui/tasks/t` as `/tasks/t`).
    let path = path
        .strip_prefix("/v1")
        .or_else(|| path.strip_prefix("/ui"))
        .unwrap_or(path);
    let authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    match auth::check(&state.keys, request.method(), path, authorization) {
        Ok(_) => next.run(request).await,
        Err(e) => e.into_response(),
    }
}

async fn track_metrics(request: Request, next: Next) -> Response {
    let path = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".into());
    let method = request.method().to_string();
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    let labels = [("method", method), ("path", path), ("status", status)];
    metrics::counter!("sw2s_http_requests_total", &labels).increment(1);
    metrics::histogram!("sw2s_http_request_seconds", &labels)
        .record(started.elapsed().as_secs_f64());
    response
}

/// `Json` whose rejections are our error body: 400 malformed, 422 wrong shape, 413 too big.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = Error;

    async fn from_request(req: Request, state: &S) -> Result<Self, Error> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(ApiJson(v)),
            Err(JsonRejection::JsonSyntaxError(e)) => {
                Err(Error::bad_request("malformed_json", e.body_text()))
            }
            Err(JsonRejection::JsonDataError(e)) => {
                Err(Error::invalid("invalid_body", e.body_text()))
            }
            Err(JsonRejection::MissingJsonContentType(_)) => Err(Error::UnsupportedMediaType(
                "send the body as JSON with `Content-Type: application/json`".into(),
            )),
            Err(JsonRejection::BytesRejection(e))
                if e.status() == StatusCode::PAYLOAD_TOO_LARGE =>
            {
                Err(Error::TooLarge(
                    "the request body is over the size limit (--max-body-bytes)".into(),
                ))
            }
            Err(e) => Err(Error::bad_request("bad_body", e.body_text())),
        }
    }
}

/// Like [`ApiJson`], but an empty body means `T::default()`.
pub struct ApiJsonOrEmpty<T>(pub T);

impl<T: DeserializeOwned + Default, S: Send + Sync> FromRequest<S> for ApiJsonOrEmpty<T> {
    type Rejection = Error;

    async fn from_request(req: Request, state: &S) -> Result<Self, Error> {
        let has_body = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .map(|v| v != "0")
            .unwrap_or(req.headers().contains_key(header::CONTENT_TYPE));
        if !has_body {
            return Ok(ApiJsonOrEmpty(T::default()));
        }
        ApiJson::<T>::from_request(req, state)
            .await
            .map(|ApiJson(v)| ApiJsonOrEmpty(v))
    }
}

/// `Path` with our error body.
pub struct ApiPath<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiPath<T> {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Error> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| ApiPath(p.0))
            .map_err(|e: PathRejection| Error::bad_request("invalid_path", e.body_text()))
    }
}

/// `Query` with our error body.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Error> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| ApiQuery(q.0))
            .map_err(|e: QueryRejection| Error::bad_request("invalid_query", e.body_text()))
    }
}

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// Every error a /v1 operation can answer, documented on each operation that can meet it
/// (clients and schemathesis read the statuses from the spec): auth, malformed input,
/// limits, overload and write conflicts.
struct ErrorResponses;

impl Modify for ErrorResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
        let error = |description: &str| {
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("ErrorBody")))
                        .build(),
                )
                .build()
        };
        for (path, item) in openapi.paths.paths.iter_mut() {
            if !path.starts_with("/v1/") && !path.starts_with("/ls/") {
                continue;
            }
            let has_params = path.contains('{');
            for op in [
                item.get.as_mut(),
                item.post.as_mut(),
                item.put.as_mut(),
                item.patch.as_mut(),
                item.delete.as_mut(),
            ]
            .into_iter()
            .flatten()
            {
                let has_body = op.request_body.is_some();
                let has_query = op.parameters.as_ref().is_some_and(|p| {
                    p.iter()
                        .any(|p| p.parameter_in == utoipa::openapi::path::ParameterIn::Query)
                });
                let mut statuses = vec![
                    ("401", "No valid API key (`WWW-Authenticate: Bearer`)"),
                    ("403", "The key lacks the scope or the task this request needs"),
                    ("429", "The model queue is full (`Retry-After`)"),
                    ("503", "Not ready, timed out, or a write conflict outlasted its retries (`Retry-After`; re-send)"),
                ];
                if has_params || has_body || has_query {
                    statuses.push(("400", "Malformed JSON, query or path"));
                    statuses.push(("422", "Well-formed but invalid"));
                }
                if has_params {
                    statuses.push(("404", "No such task, example, job or version"));
                }
                if has_body {
                    statuses.push(("413", "Body or batch over the limits"));
                    statuses.push(("415", "The body is not `application/json`"));
                }
                for (status, description) in statuses {
                    op.responses
                        .responses
                        .entry(status.to_string())
                        .or_insert_with(|| error(description).into());
                }
            }
        }
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "sw2s",
        description = "Selective weak-to-strong labeling server: weak labels in, trusted labels out.",
        license(name = "Apache-2.0")
    ),
    paths(
        health::health,
        health::ready,
        health::info,
        health::metrics,
        health::embed,
        tasks::create_task,
        tasks::list_tasks,
        tasks::get_task,
        tasks::update_task,
        tasks::delete_task,
        examples::ingest,
        examples::list_examples,
        examples::get_example,
        examples::add_weak_labels,
        examples::set_gold,
        predict::predict,
        decisions::export,
        decisions::review_queue,
        jobs::create_job,
        jobs::list_jobs,
        jobs::get_job,
        jobs::cancel_job,
        jobs::retry_job,
        models::list_models,
        models::activate,
        sources::sources,
        sources::report,
        sources::graph,
        dashboard::dashboard,
        label_studio::health,
        label_studio::setup,
        label_studio::validate,
        label_studio::predict,
        label_studio::webhook,
        label_studio::train,
        label_studio::versions,
    ),
    components(schemas(crate::error::ErrorBody)),
    modifiers(&BearerAuth, &ErrorResponses),
    security(("api_key" = [])),
    tags(
        (name = "service", description = "Health, readiness, model information, metrics"),
        (name = "tasks", description = "Labeling tasks and their settings"),
        (name = "examples", description = "Examples, weak labels and gold labels"),
        (name = "model", description = "Embeddings and predictions"),
        (name = "decisions", description = "Decided labels, their provenance, and what to review"),
        (name = "jobs", description = "Selective fine-tuning jobs and model versions"),
        (name = "label_studio", description = "A task as a Label Studio ML backend (`/ls/{task}`)"),
        (name = "quality", description = "Weak sources, safeguards and calibration: what a task's labels rest on"),
    )
)]
pub struct ApiDoc;

/// The OpenAPI document as the server serves it (and `openapi/openapi.json` holds).
pub fn openapi_json() -> String {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    doc.to_pretty_json().unwrap_or_else(|_| "{}".into())
}

/// 200 with a JSON body.
pub fn ok<T: serde::Serialize>(value: T) -> Response {
    axum::Json(value).into_response()
}
