//! User aliases (`prod`, `canary`) that point at a version and are moved explicitly.

use actix_web::{HttpResponse, delete, put, web};
use serde::Deserialize;
use utoipa::ToSchema;

use crate::app::lookup::find_writable_adapter;
use crate::app::refs::check_alias;
use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody, ErrorCode};
use crate::http::request_info::RequestInfo;
use crate::state::AppState;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetRefRequest {
    pub version: i64,
}

/// Point an alias at a version (creating or moving it).
#[utoipa::path(
    tag = "refs",
    request_body = SetRefRequest,
    responses((status = 200, description = "alias set"), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)),
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
    crate::app::refs::set_alias(&state.store, &adapter, &alias, body.version, &ctx).await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "name": alias, "version": body.version })))
}

/// Remove an alias.
#[utoipa::path(
    tag = "refs",
    responses((status = 204), (status = 404, body = ErrorBody)),
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
    if crate::app::refs::delete_alias(&state.store, &adapter, &alias, &ctx).await? {
        Ok(HttpResponse::NoContent().finish())
    } else {
        Err(ApiError::not_found(
            ErrorCode::AliasNotFound,
            format!("alias {alias}"),
        ))
    }
}
