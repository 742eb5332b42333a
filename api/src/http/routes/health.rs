//! Health and metrics.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, route, web};
use serde::Serialize;
use utoipa::ToSchema;

use crate::state::AppState;

#[derive(Serialize, ToSchema)]
pub struct Health {
    /// `ok` when both backends answer, else `degraded`.
    pub status: &'static str,
    /// `ok`, or why the database is degraded (`error: …`, `timeout: …`).
    pub database: String,
    /// `ok`, or why the blob store is degraded.
    pub store: String,
    /// The dependencies that did not answer in time or failed: `database`, `store`.
    pub degraded: Vec<&'static str>,
}

/// How long each backend probe may take. Both run at once, so `/healthz` answers within this
/// (plus scheduling), even while a backend accepts connections and never answers.
pub const PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(1500);

async fn probe<E: std::fmt::Display>(
    check: impl std::future::Future<Output = Result<(), E>>,
) -> String {
    match tokio::time::timeout(PROBE_TIMEOUT, check).await {
        Ok(Ok(())) => "ok".to_string(),
        Ok(Err(e)) => format!("error: {e}"),
        Err(_) => format!("timeout: no answer within {} ms", PROBE_TIMEOUT.as_millis()),
    }
}

/// Liveness and backend reachability: 200, or 503 naming each backend that failed or did not
/// answer within 1.5 s (probed concurrently).
#[utoipa::path(tag = "service", responses((status = 200, body = Health), (status = 503, body = Health)))]
#[route("/healthz", method = "GET", method = "HEAD")]
pub async fn healthz(state: web::Data<AppState>) -> HttpResponse {
    let (database, store) = tokio::join!(
        probe(state.store.meta.ping()),
        probe(state.store.blobs.ping())
    );
    let degraded: Vec<&'static str> = [("database", &database), ("store", &store)]
        .into_iter()
        .filter(|(_, s)| s.as_str() != "ok")
        .map(|(name, _)| name)
        .collect();
    let status = if degraded.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    if !degraded.is_empty() {
        tracing::warn!(%database, %store, "health check degraded");
    }
    HttpResponse::build(status).json(Health {
        status: if degraded.is_empty() {
            "ok"
        } else {
            "degraded"
        },
        database,
        store,
        degraded,
    })
}

/// Prometheus text format.
#[utoipa::path(tag = "service", responses((status = 200, description = "Prometheus text exposition", content_type = "text/plain")))]
#[route("/metrics", method = "GET", method = "HEAD")]
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body({
            let counts = match state.store.meta.job_counts().await {
                Ok(c) => Some(c),
                Err(e) => {
                    tracing::warn!(error = %e, "job counts unavailable for /metrics");
                    None
                }
            };
            state.metrics.render(counts.as_deref())
        })
}
