//! Health and metrics.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, get, web};
use serde::Serialize;
use utoipa::ToSchema;

use crate::state::AppState;

#[derive(Serialize, ToSchema)]
pub struct Health {
    /// `ok` when both backends answer, else `degraded`.
    pub status: &'static str,
    pub database: String,
    pub store: String,
}

/// Liveness and backend reachability; 503 when a backend does not answer.
#[utoipa::path(tag = "service", responses((status = 200, body = Health), (status = 503, body = Health)))]
#[get("/healthz")]
pub async fn healthz(state: web::Data<AppState>) -> HttpResponse {
    let database = match state.store.meta.ping().await {
        Ok(()) => "ok".to_string(),
        Err(e) => format!("error: {e}"),
    };
    let store = match state.store.blobs.ping().await {
        Ok(()) => "ok".to_string(),
        Err(e) => format!("error: {e}"),
    };
    let healthy = database == "ok" && store == "ok";
    let status = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    HttpResponse::build(status).json(Health {
        status: if healthy { "ok" } else { "degraded" },
        database,
        store,
    })
}

/// Prometheus text format.
#[utoipa::path(tag = "service", responses((status = 200, description = "Prometheus text exposition", content_type = "text/plain")))]
#[get("/metrics")]
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
