//! The HTTP API (axum): `/healthz` and Prometheus `/metrics`; the services add their routes
//! under `/v1/` as they land.

use crate::daemon::Node;
use crate::metrics::ResultLabel;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use std::sync::Arc;

/// The routes of the API.
pub fn router(node: Arc<Node>) -> Router {
    let mut router = Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .with_state(node.clone());
    router = router.route("/v1/directory", get(directory).with_state(node.clone()));
    router = router.merge(crate::credits_api::router(node.clone()));
    if let Some(vault) = &node.vault {
        router = router.nest("/v1/vault", vault.clone().router());
    }
    router
}

/// 200 when the daemon can reach its database and its WireGuard and relay I/O run, 503
/// otherwise.
async fn healthz(State(node): State<Arc<Node>>) -> impl IntoResponse {
    let failed = if node.vpn.as_ref().is_some_and(|v| !v.healthy()) {
        Some("wireguard I/O failed\n")
    } else if node.relay.as_ref().is_some_and(|r| !r.relay.healthy()) {
        Some("relay I/O failed\n")
    } else {
        None
    };
    if let Some(why) = failed {
        node.metrics
            .health_checks
            .get_or_create(&ResultLabel { result: "error" })
            .inc();
        return (StatusCode::SERVICE_UNAVAILABLE, why.to_owned());
    }
    match sqlx::query("SELECT 1").execute(node.store.pool()).await {
        Ok(_) => {
            node.metrics
                .health_checks
                .get_or_create(&ResultLabel { result: "ok" })
                .inc();
            (StatusCode::OK, "ok\n".to_owned())
        }
        Err(e) => {
            node.metrics
                .health_checks
                .get_or_create(&ResultLabel { result: "error" })
                .inc();
            tracing::warn!(error = %e, "health check: database unreachable");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "database unreachable\n".to_owned(),
            )
        }
    }
}

async fn metrics(State(node): State<Arc<Node>>) -> impl IntoResponse {
    node.metrics
        .uptime_seconds
        .set(node.started.elapsed().as_secs() as i64);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        node.metrics.encode(),
    )
}

/// Every member of the mesh whose signed record verifies, as this node sees it.
async fn directory(State(node): State<Arc<Node>>) -> axum::response::Response {
    match &node.mesh {
        Some(mesh) => axum::Json(mesh.directory().await).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            axum::Json(serde_json::json!({
                "error": "this node is not in a mesh ([mesh] enabled = false)"
            })),
        )
            .into_response(),
    }
}
