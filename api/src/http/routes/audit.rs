//! The audit log (docs/audit.md): read-only; no route deletes entries.

use actix_web::{HttpResponse, get, web};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::app::audit::{self, AuditQuery};
use crate::error::{ApiError, ErrorBody};
use crate::http::extract::Authenticated;
use crate::state::AppState;

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct AuditParams {
    /// Only entries by this user.
    pub actor: Option<String>,
    /// Only this target (`owner/name`, `owner/name@alias`, a token id); ending in `/`, every
    /// target under that namespace (`alice/`).
    pub target: Option<String>,
    /// Only this action (`alias.set`, …).
    pub action: Option<String>,
    /// Only this owner namespace's entries (`alice`, an organisation). Required, and the only
    /// entries shown, for a caller who is not an instance admin but administers the namespace.
    pub owner: Option<String>,
    /// From this time on (ms since the epoch, inclusive).
    pub since: Option<i64>,
    /// Before this time (ms since the epoch, exclusive).
    pub until: Option<i64>,
    /// 1 to 200 (default 50).
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// One audit entry.
#[derive(Serialize, ToSchema)]
pub struct AuditEntry {
    pub id: i64,
    /// ms since the epoch.
    pub at: i64,
    pub actor: Option<String>,
    /// The token's public id (never its secret).
    pub token_id: Option<String>,
    pub action: String,
    pub target: String,
    pub owner: Option<String>,
    pub before: Option<serde_json::Value>,
    pub after: Option<serde_json::Value>,
    pub request_id: Option<String>,
    pub client_addr: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct AuditPage {
    pub items: Vec<AuditEntry>,
    pub next_cursor: Option<String>,
}

/// The audit log, newest first: every entry for an instance admin (an unrestricted admin token);
/// one namespace's (`owner=NS`) for an administrator of that namespace (its user's write token,
/// an admin of the organisation); 403 for everyone else.
#[utoipa::path(
    tag = "audit",
    params(AuditParams),
    responses(
        (status = 200, body = AuditPage), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)
    ),
    security(("bearer" = []))
)]
#[get("/audit")]
pub async fn list_audit(
    state: web::Data<AppState>,
    caller: Authenticated,
    query: web::Query<AuditParams>,
) -> Result<HttpResponse, ApiError> {
    let q = query.into_inner();
    let page = audit::list(
        &state.store,
        &caller.0,
        AuditQuery {
            actor: q.actor,
            target: q.target,
            action: q.action,
            owner: q.owner,
            since: q.since,
            until: q.until,
            limit: q.limit,
            cursor: q.cursor,
        },
    )
    .await?;
    let items = page
        .items
        .into_iter()
        .map(|e| AuditEntry {
            id: e.id,
            at: e.at,
            actor: e.actor,
            token_id: e.token_id,
            action: e.action,
            target: e.target,
            owner: e.owner,
            before: e.before,
            after: e.after,
            request_id: e.request_id,
            client_addr: e.client_addr,
        })
        .collect();
    Ok(HttpResponse::Ok().json(AuditPage {
        items,
        next_cursor: page.next_cursor,
    }))
}
