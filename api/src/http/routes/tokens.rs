//! API tokens: create, list, revoke (docs/tokens.md). The rules are `crate::app::tokens`.

use actix_web::{HttpResponse, delete, get, post, web};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::app::tokens::{
    self, CreateInviteRequest, CreateTokenRequest, InviteView, TokenView, Whose,
};
use crate::error::{ApiError, ErrorBody, ErrorCode};
use crate::http::extract::Authenticated;
use crate::http::request_info::RequestInfo;
use crate::state::AppState;

#[derive(Serialize, ToSchema)]
pub struct TokenList {
    pub items: Vec<TokenView>,
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct TokensQuery {
    /// Another user's tokens (an unrestricted admin token only).
    pub user: Option<String>,
    /// `true`: everyone's tokens (an unrestricted admin token only; at most 1,000).
    pub all: Option<bool>,
}

/// Make a token. The answer holds the secret (`token`), shown only here. A token cannot make one
/// with a wider scope, a wider restriction or a later expiry than its own.
#[utoipa::path(
    tag = "tokens",
    request_body = CreateTokenRequest,
    responses(
        (status = 201, body = TokenView),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody)
    ),
    security(("bearer" = []))
)]
#[post("/tokens")]
pub async fn create_token(
    state: web::Data<AppState>,
    caller: Authenticated,
    info: RequestInfo,
    body: web::Json<CreateTokenRequest>,
) -> Result<HttpResponse, ApiError> {
    let ctx = info.audit(Some(&caller.0));
    let view = tokens::create(&state.store, &caller.0, body.into_inner(), &ctx).await?;
    Ok(HttpResponse::Created().json(view))
}

/// The caller's tokens that are not revoked (expired ones included, marked), oldest first;
/// never a secret or its hash.
#[utoipa::path(
    tag = "tokens",
    params(TokensQuery),
    responses(
        (status = 200, body = TokenList), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)
    ),
    security(("bearer" = []))
)]
#[get("/tokens")]
pub async fn list_tokens(
    state: web::Data<AppState>,
    caller: Authenticated,
    query: web::Query<TokensQuery>,
) -> Result<HttpResponse, ApiError> {
    let q = query.into_inner();
    let whose = match (q.user.as_deref(), q.all.unwrap_or(false)) {
        (Some(_), true) => {
            return Err(ApiError::coded(
                ErrorCode::InvalidQuery,
                "give user or all, not both",
            ));
        }
        (Some(u), false) => Whose::User(u),
        (None, true) => Whose::All,
        (None, false) => Whose::Own,
    };
    let items = tokens::list(&state.store, &caller.0, whose).await?;
    Ok(HttpResponse::Ok().json(TokenList { items }))
}

/// Revoke a token: refused from the next request on (`token_revoked`), signed-in pages
/// included. Another user's token is 404 unless the caller is an unrestricted admin.
#[utoipa::path(
    tag = "tokens",
    responses(
        (status = 200, body = TokenView), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody)
    ),
    security(("bearer" = []))
)]
#[delete("/tokens/{id}")]
pub async fn revoke_token(
    state: web::Data<AppState>,
    caller: Authenticated,
    info: RequestInfo,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let ctx = info.audit(Some(&caller.0));
    let view = tokens::revoke(&state.store, &caller.0, &path, &ctx).await?;
    Ok(HttpResponse::Ok().json(view))
}

/// Invite a user (created if new): the answer's `link` (shown only here) lets them make their
/// first token on the sign-in page, once, before it expires. An unrestricted admin token only.
#[utoipa::path(
    tag = "tokens",
    request_body = CreateInviteRequest,
    responses(
        (status = 201, body = InviteView),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody)
    ),
    security(("bearer" = []))
)]
#[post("/invites")]
pub async fn create_invite(
    state: web::Data<AppState>,
    caller: Authenticated,
    info: RequestInfo,
    body: web::Json<CreateInviteRequest>,
) -> Result<HttpResponse, ApiError> {
    let ctx = info.audit(Some(&caller.0));
    let view = tokens::invite(&state.store, &caller.0, body.into_inner(), &ctx).await?;
    Ok(HttpResponse::Created().json(view))
}
