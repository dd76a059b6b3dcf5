//! The API's routes: one table, each route a thin handler that runs a `plugboard-service`
//! call on a blocking thread and shapes the answer. The OpenAPI document in
//! `docs/openapi.json` describes exactly these routes (a test checks both ways).

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use plugboard_service::Service;

use super::error::{ApiError, ClassTag};
use super::handlers;

/// The router over `service`.
pub fn router(service: Arc<Service>) -> Router {
    Router::new()
        .route("/healthz", get(handlers::healthz))
        .route("/metrics", get(handlers::metrics))
        .route("/v1/host/devices", get(handlers::host_devices))
        .route("/v1/host/devices/{address}", get(handlers::host_device))
        .route("/v1/host/iommu-groups", get(handlers::iommu_groups))
        .route("/v1/host/nodes/{kind}/{number}", get(handlers::host_node))
        .route("/v1/vfio/{address}", get(handlers::vfio_info))
        .route("/v1/hostdevs", get(handlers::hostdevs))
        .route("/v1/hostdevs/prepare", post(handlers::hostdev_prepare))
        .route("/v1/hostdevs/release", post(handlers::hostdev_release))
        .route("/v1/hostdevs/recover", post(handlers::hostdev_recover))
        .route(
            "/v1/hostdevs/{address}/detach",
            post(handlers::hostdev_detach),
        )
        .route(
            "/v1/hostdevs/{address}/reattach",
            post(handlers::hostdev_reattach),
        )
        .route(
            "/v1/hostdevs/{address}/reset",
            post(handlers::hostdev_reset),
        )
        .route("/v1/vms", get(handlers::vms).post(handlers::register_vm))
        .route(
            "/v1/vms/{name}",
            get(handlers::vm).delete(handlers::unregister_vm),
        )
        .route("/v1/vms/{name}/reconnect", post(handlers::reconnect_vm))
        .route(
            "/v1/vms/{name}/devices",
            get(handlers::devices).post(handlers::attach),
        )
        .route(
            "/v1/vms/{name}/devices/{id}",
            axum::routing::delete(handlers::detach),
        )
        .route_layer(middleware::from_fn_with_state(service.clone(), track))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(service)
}

/// Counts and times every routed request under `METHOD /route/{param}`.
async fn track(State(service): State<Arc<Service>>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| req.uri().path().to_owned(), |m| m.as_str().to_owned());
    let operation = format!("{} {route}", req.method());
    let started = Instant::now();
    let response = next.run(req).await;
    let class = response.extensions().get::<ClassTag>().map(|c| c.0);
    service.metrics().record(
        &operation,
        response.status().as_u16(),
        class,
        started.elapsed(),
    );
    response
}

async fn not_found(req: Request) -> ApiError {
    ApiError::not_found(format!("no route {} {}", req.method(), req.uri().path()))
}

async fn method_not_allowed(req: Request) -> Response {
    let body = serde_json::json!({
        "error": "method-not-allowed",
        "message": format!("{} is not allowed on {}", req.method(), req.uri().path()),
    });
    (StatusCode::METHOD_NOT_ALLOWED, axum::Json(body)).into_response()
}
