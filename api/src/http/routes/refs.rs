//! User aliases (`prod`, `canary`) that point at a version and are moved explicitly, and their
//! protection (docs/protected-aliases.md).

use actix_web::{HttpResponse, delete, get, put, web};
use serde::Deserialize;
use utoipa::ToSchema;

use crate::app::lookup::{find_adapter, find_writable_adapter};
use crate::app::refs::{RefList, RefView, check_alias};
use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody, ErrorCode};
use crate::http::request_info::RequestInfo;
use crate::state::AppState;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetRefRequest {
    pub version: i64,
}

/// The aliases of an adapter and its protected alias names, by name.
#[utoipa::path(
    tag = "refs",
    responses((status = 200, body = RefList), (status = 404, body = ErrorBody))
)]
#[get("/adapters/{owner}/{name}/refs")]
pub async fn list_refs(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let adapter = find_adapter(&state.store, &caller, &path).await?;
    let list = crate::app::refs::list_refs(&state.store, &adapter).await?;
    Ok(HttpResponse::Ok().json(list))
}

/// Point an alias at a version (creating or moving it). A protected alias needs an admin of the
/// namespace (403 `alias_protected` otherwise).
#[utoipa::path(
    tag = "refs",
    request_body = SetRefRequest,
    responses(
        (status = 200, description = "alias set", body = RefView),
        (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)
    ),
    security(("bearer" = []))
)]
#[put("/adapters/{owner}/{name}/refs/{alias}")]
pub async fn set_ref(
    state: web::Data<AppState>,
    caller: Caller,
    info: RequestInfo,
    path: web::Path<(String, String, String)>,
    body: web::Json<SetRefRequest>,
) -> Result<HttpResponse, ApiError> {
    let (owner, name, alias) = path.into_inner();
    let (adapter, who) = find_writable_adapter(&state.store, &caller, &(owner, name)).await?;
    let alias = check_alias(&alias)?;
    let ctx = info.audit(Some(who));
    crate::app::refs::set_alias(&state.store, &adapter, &alias, body.version, who, &ctx).await?;
    let protected = crate::app::refs::is_protected(&state.store, &adapter, &alias).await?;
    Ok(HttpResponse::Ok().json(RefView {
        name: alias,
        version: Some(body.version),
        protected,
    }))
}

/// Remove an alias. A protected alias needs an admin of the namespace (403 `alias_protected`
/// otherwise); its name stays protected.
#[utoipa::path(
    tag = "refs",
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = []))
)]
#[delete("/adapters/{owner}/{name}/refs/{alias}")]
pub async fn delete_ref(
    state: web::Data<AppState>,
    caller: Caller,
    info: RequestInfo,
    path: web::Path<(String, String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (owner, name, alias) = path.into_inner();
    let (adapter, who) = find_writable_adapter(&state.store, &caller, &(owner, name)).await?;
    let ctx = info.audit(Some(who));
    let alias = alias.to_ascii_lowercase();
    if crate::app::refs::delete_alias(&state.store, &adapter, &alias, who, &ctx).await? {
        Ok(HttpResponse::NoContent().finish())
    } else {
        Err(ApiError::not_found(
            ErrorCode::AliasNotFound,
            format!("alias {alias}"),
        ))
    }
}

/// Protect an alias name: from now on only admins of the namespace (an instance admin, the
/// namespace's own user, an organisation's admins) may create, move or delete it. Only they may
/// protect it. The alias need not exist yet. Idempotent; a change is audited (`alias.protect`).
#[utoipa::path(
    tag = "refs",
    responses(
        (status = 200, body = RefView),
        (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)
    ),
    security(("bearer" = []))
)]
#[put("/adapters/{owner}/{name}/refs/{alias}/protection")]
pub async fn protect_ref(
    state: web::Data<AppState>,
    caller: Caller,
    info: RequestInfo,
    path: web::Path<(String, String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (owner, name, alias) = path.into_inner();
    let (adapter, who) = find_writable_adapter(&state.store, &caller, &(owner, name)).await?;
    let alias = check_alias(&alias)?;
    let ctx = info.audit(Some(who));
    crate::app::refs::set_protection(&state.store, &adapter, &alias, true, who, &ctx).await?;
    let version = state
        .store
        .meta
        .aliases(&[adapter.id])
        .await?
        .into_iter()
        .find(|(_, n, _)| *n == alias)
        .map(|(_, _, v)| v);
    Ok(HttpResponse::Ok().json(RefView {
        name: alias,
        version,
        protected: true,
    }))
}

/// Unprotect an alias name (admins of the namespace only). Idempotent: 204 whether or not it
/// was protected; a change is audited (`alias.protect`).
#[utoipa::path(
    tag = "refs",
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = []))
)]
#[delete("/adapters/{owner}/{name}/refs/{alias}/protection")]
pub async fn unprotect_ref(
    state: web::Data<AppState>,
    caller: Caller,
    info: RequestInfo,
    path: web::Path<(String, String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (owner, name, alias) = path.into_inner();
    let (adapter, who) = find_writable_adapter(&state.store, &caller, &(owner, name)).await?;
    let ctx = info.audit(Some(who));
    let alias = alias.to_ascii_lowercase();
    crate::app::refs::set_protection(&state.store, &adapter, &alias, false, who, &ctx).await?;
    Ok(HttpResponse::NoContent().finish())
}
