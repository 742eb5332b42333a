//! Webhook subscriptions: create, list, get, delete; the delivery log and redelivery
//! (docs/webhooks.md).

use actix_web::{HttpResponse, delete, get, post, web};
use quiver_store::{DeliveryRecord, Principal, Scope};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::app::lookup::page_limit;
use crate::app::webhooks::{
    CreateWebhookRequest, WebhookView, create, own, ping as ping_event,
    redeliver as redeliver_event,
};
use crate::error::{ApiError, ErrorBody, ErrorCode};
use crate::http::extract::Authenticated;
use crate::http::request_info::RequestInfo;
use crate::state::AppState;

fn require_write_scope(p: &Principal) -> Result<(), ApiError> {
    if p.scope == Scope::Read {
        return Err(ApiError::forbidden(
            "this token has the read scope; managing webhooks needs a write token",
        ));
    }
    Ok(())
}

#[derive(Serialize, ToSchema)]
pub struct WebhookList {
    pub items: Vec<WebhookView>,
}

/// One delivery attempt.
#[derive(Serialize, ToSchema)]
pub struct DeliveryView {
    /// The attempt's id (newest first; the `cursor` of the next page is the last one's).
    pub id: i64,
    /// The delivery this attempt belongs to (the `Quiver-Delivery` header); redeliver by it.
    pub delivery_id: String,
    pub event_id: i64,
    /// 1 for the first attempt of the delivery.
    pub attempt: i64,
    /// `delivered`, `failed` or `skipped` (not sent: the subscriber may no longer see the
    /// adapter, or the event is gone).
    pub status: String,
    pub response_code: Option<i64>,
    pub latency_ms: i64,
    /// The response body's first 1 KiB.
    pub response_excerpt: Option<String>,
    pub error: Option<String>,
    /// Unix milliseconds.
    pub at: i64,
}

impl From<DeliveryRecord> for DeliveryView {
    fn from(d: DeliveryRecord) -> Self {
        Self {
            id: d.id,
            delivery_id: d.delivery_id,
            event_id: d.event_id,
            attempt: d.attempt,
            status: d.status.as_str().to_string(),
            response_code: d.response_code,
            latency_ms: d.latency_ms,
            response_excerpt: d.response_excerpt,
            error: d.error,
            at: d.at,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct DeliveryPage {
    pub items: Vec<DeliveryView>,
    pub next_cursor: Option<String>,
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct DeliveriesQuery {
    /// 1 to 500, default 50.
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct Redelivery {
    /// The new delivery's id.
    pub delivery_id: String,
    pub event_id: i64,
}

/// Subscribe to an adapter's or an owner's events. The answer holds the signing secret, shown
/// only here.
#[utoipa::path(
    tag = "webhooks",
    request_body = CreateWebhookRequest,
    responses(
        (status = 201, body = WebhookView),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)
    ),
    security(("bearer" = []))
)]
#[post("/webhooks")]
pub async fn create_webhook(
    state: web::Data<AppState>,
    caller: Authenticated,
    info: RequestInfo,
    body: web::Json<CreateWebhookRequest>,
) -> Result<HttpResponse, ApiError> {
    require_write_scope(&caller.0)?;
    let hook = create(
        &state.store,
        &caller.0,
        state.webhooks.allow_private,
        body.into_inner(),
        &info.audit(Some(&caller.0)),
    )
    .await?;
    tracing::info!(webhook = %hook.id, by = %hook.created_by, "webhook created");
    Ok(HttpResponse::Created().json(WebhookView::new(hook, true)))
}

/// The caller's subscriptions, oldest first (at most 50).
#[utoipa::path(
    tag = "webhooks",
    responses((status = 200, body = WebhookList), (status = 401, body = ErrorBody)),
    security(("bearer" = []))
)]
#[get("/webhooks")]
pub async fn list_webhooks(
    state: web::Data<AppState>,
    caller: Authenticated,
) -> Result<HttpResponse, ApiError> {
    let items = state
        .store
        .meta
        .list_webhooks(&caller.0.user)
        .await?
        .into_iter()
        .map(|h| WebhookView::new(h, false))
        .collect();
    Ok(HttpResponse::Ok().json(WebhookList { items }))
}

/// One subscription of the caller's.
#[utoipa::path(
    tag = "webhooks",
    responses((status = 200, body = WebhookView), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = []))
)]
#[get("/webhooks/{id}")]
pub async fn get_webhook(
    state: web::Data<AppState>,
    caller: Authenticated,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let hook = own(&state.store, &caller.0, &path).await?;
    Ok(HttpResponse::Ok().json(WebhookView::new(hook, false)))
}

/// Delete a subscription with its delivery log; deliveries still queued are dropped.
#[utoipa::path(
    tag = "webhooks",
    responses((status = 204), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = []))
)]
#[delete("/webhooks/{id}")]
pub async fn delete_webhook(
    state: web::Data<AppState>,
    caller: Authenticated,
    info: RequestInfo,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let hook = own(&state.store, &caller.0, &path).await?;
    require_write_scope(&caller.0)?;
    let audit = info.audit(Some(&caller.0));
    state
        .store
        .meta
        .delete_webhook_audited(&hook.id, Some(&audit))
        .await?;
    Ok(HttpResponse::NoContent().finish())
}

/// The delivery log: every attempt, newest first.
#[utoipa::path(
    tag = "webhooks",
    params(DeliveriesQuery),
    responses((status = 200, body = DeliveryPage), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = []))
)]
#[get("/webhooks/{id}/deliveries")]
pub async fn list_deliveries(
    state: web::Data<AppState>,
    caller: Authenticated,
    path: web::Path<String>,
    query: web::Query<DeliveriesQuery>,
) -> Result<HttpResponse, ApiError> {
    let hook = own(&state.store, &caller.0, &path).await?;
    let q = query.into_inner();
    let before = match q.cursor.as_deref() {
        None => None,
        Some(c) => Some(c.parse::<i64>().map_err(|_| {
            ApiError::coded(
                ErrorCode::InvalidQuery,
                "cursor is not one this server issued",
            )
        })?),
    };
    let page = state
        .store
        .meta
        .list_deliveries(&hook.id, page_limit(q.limit)?, before)
        .await?;
    Ok(HttpResponse::Ok().json(DeliveryPage {
        items: page.items.into_iter().map(DeliveryView::from).collect(),
        next_cursor: page.next_cursor,
    }))
}

/// Send a delivery's event again, as a new delivery (new id, attempts from 1, the same event
/// id), checked and signed like the first.
#[utoipa::path(
    tag = "webhooks",
    responses((status = 202, body = Redelivery), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = []))
)]
#[post("/webhooks/{id}/deliveries/{delivery_id}/redeliver")]
pub async fn redeliver(
    state: web::Data<AppState>,
    caller: Authenticated,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (id, delivery_id) = path.into_inner();
    let hook = own(&state.store, &caller.0, &id).await?;
    require_write_scope(&caller.0)?;
    let (delivery_id, event_id) = redeliver_event(&state.store, &hook, &delivery_id).await?;
    Ok(HttpResponse::Accepted().json(Redelivery {
        delivery_id,
        event_id,
    }))
}

/// Send a `ping` event to this subscription alone (whatever its `events` filter), signed and
/// logged like any delivery: a test of the receiver. Answers the new delivery's id.
#[utoipa::path(
    tag = "webhooks",
    responses((status = 202, body = Redelivery), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = []))
)]
#[post("/webhooks/{id}/ping")]
pub async fn ping(
    state: web::Data<AppState>,
    caller: Authenticated,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let hook = own(&state.store, &caller.0, &path).await?;
    require_write_scope(&caller.0)?;
    let (delivery_id, event_id) = ping_event(&state.store, &hook).await?;
    Ok(HttpResponse::Accepted().json(Redelivery {
        delivery_id,
        event_id,
    }))
}
