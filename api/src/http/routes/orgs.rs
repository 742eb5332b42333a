//! Organisations: create, read, members (docs/orgs.md). The rules are `crate::app::orgs`.

use actix_web::{HttpResponse, delete, get, post, put, web};
use serde::Serialize;
use utoipa::ToSchema;

use crate::app::orgs::{self, CreateOrgRequest, MembershipView, OrgView, SetMemberRequest};
use crate::error::{ApiError, ErrorBody};
use crate::http::extract::Authenticated;
use crate::http::request_info::RequestInfo;
use crate::state::AppState;

#[derive(Serialize, ToSchema)]
pub struct MembershipList {
    pub items: Vec<MembershipView>,
}

/// Create an organisation; the caller (or, for an instance admin, the user named in `admin`)
/// becomes its first admin. Its name shares one namespace with users.
#[utoipa::path(
    tag = "orgs",
    request_body = CreateOrgRequest,
    responses(
        (status = 201, body = OrgView),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)
    ),
    security(("bearer" = []))
)]
#[post("/orgs")]
pub async fn create_org(
    state: web::Data<AppState>,
    caller: Authenticated,
    info: RequestInfo,
    body: web::Json<CreateOrgRequest>,
) -> Result<HttpResponse, ApiError> {
    let ctx = info.audit(Some(&caller.0));
    let view = orgs::create(&state.store, &caller.0, body.into_inner(), &ctx).await?;
    Ok(HttpResponse::Created().json(view))
}

/// The organisations the caller belongs to, with their role in each.
#[utoipa::path(
    tag = "orgs",
    responses((status = 200, body = MembershipList), (status = 401, body = ErrorBody)),
    security(("bearer" = []))
)]
#[get("/orgs")]
pub async fn list_orgs(caller: Authenticated) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(MembershipList {
        items: orgs::memberships(&caller.0),
    }))
}

/// An organisation and its members (members and instance admins; anyone else gets 404).
#[utoipa::path(
    tag = "orgs",
    responses(
        (status = 200, body = OrgView), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody)
    ),
    security(("bearer" = []))
)]
#[get("/orgs/{org}")]
pub async fn get_org(
    state: web::Data<AppState>,
    caller: Authenticated,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(orgs::get(&state.store, &caller.0, &path).await?))
}

/// Add a member or change their role (`read`, `write`, `admin`); organisation admins only. The
/// last admin cannot be demoted.
#[utoipa::path(
    tag = "orgs",
    request_body = SetMemberRequest,
    responses(
        (status = 200, body = OrgView), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)
    ),
    security(("bearer" = []))
)]
#[put("/orgs/{org}/members/{user}")]
pub async fn set_member(
    state: web::Data<AppState>,
    caller: Authenticated,
    info: RequestInfo,
    path: web::Path<(String, String)>,
    body: web::Json<SetMemberRequest>,
) -> Result<HttpResponse, ApiError> {
    let (org, user) = path.into_inner();
    let ctx = info.audit(Some(&caller.0));
    orgs::set_member(&state.store, &caller.0, &org, &user, body.role, &ctx).await?;
    Ok(HttpResponse::Ok().json(orgs::get(&state.store, &caller.0, &org).await?))
}

/// Remove a member: an organisation admin, or the member themselves (leaving). The last admin
/// cannot be removed. Their tokens lose the organisation's adapters on the next request.
#[utoipa::path(
    tag = "orgs",
    responses(
        (status = 204), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)
    ),
    security(("bearer" = []))
)]
#[delete("/orgs/{org}/members/{user}")]
pub async fn remove_member(
    state: web::Data<AppState>,
    caller: Authenticated,
    info: RequestInfo,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (org, user) = path.into_inner();
    let ctx = info.audit(Some(&caller.0));
    if orgs::remove_member(&state.store, &caller.0, &org, &user, &ctx).await? {
        Ok(HttpResponse::NoContent().finish())
    } else {
        Err(ApiError::not_found(
            crate::error::ErrorCode::NotFound,
            format!("member {user} of {org}"),
        ))
    }
}
