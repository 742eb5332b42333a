//! Users: deactivate a departed colleague, reactivate them (docs/tokens.md). The rules are
//! `crate::app::users`.

use actix_web::{HttpResponse, post, web};
use serde_json::json;

use crate::app::users::{self, DeactivatedView};
use crate::error::{ApiError, ErrorBody};
use crate::http::extract::Authenticated;
use crate::http::request_info::RequestInfo;
use crate::state::AppState;

/// Deactivate a user (unrestricted admin tokens): every token revoked, unused invites withdrawn,
/// every organisation left, in one transaction; no new token, invite or proxy sign-in for them
/// until reactivated. Their adapters stay. 409 when they are the last admin of an organisation.
#[utoipa::path(
    tag = "tokens",
    responses(
        (status = 200, body = DeactivatedView), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)
    ),
    security(("bearer" = []))
)]
#[post("/users/{user}/deactivate")]
pub async fn deactivate_user(
    state: web::Data<AppState>,
    caller: Authenticated,
    info: RequestInfo,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let ctx = info.audit(Some(&caller.0));
    let view = users::deactivate(&state.store, &caller.0, &path, &ctx).await?;
    Ok(HttpResponse::Ok().json(view))
}

/// Reactivate a deactivated user (unrestricted admin tokens); their old tokens stay revoked.
#[utoipa::path(
    tag = "tokens",
    responses(
        (status = 200), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)
    ),
    security(("bearer" = []))
)]
#[post("/users/{user}/reactivate")]
pub async fn reactivate_user(
    state: web::Data<AppState>,
    caller: Authenticated,
    info: RequestInfo,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let ctx = info.audit(Some(&caller.0));
    let changed = users::reactivate(&state.store, &caller.0, &path, &ctx).await?;
    Ok(HttpResponse::Ok().json(json!({ "user": path.as_str(), "changed": changed })))
}
