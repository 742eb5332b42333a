//! `/settings/tokens`: the signed-in user's API tokens (docs/tokens.md): the list (never a
//! secret), a form to make one (name, scope, expiry, restriction) and revocation. The same rules
//! as the API (`app::tokens`), acting as the session's token: it cannot make a wider one. The
//! secret is shown once, on the page that answers the creation.

use actix_web::http::StatusCode;
use actix_web::http::header;
use actix_web::{HttpResponse, web};
use askama::Template;
use quiver_store::{Principal, Scope};

use super::{Chrome, PageCaller, PageError, enc, html, render, when};
use crate::app::tokens::{self, CreateTokenRequest, TokenView, Whose};
use crate::error::{ApiError, ErrorCode};
use crate::state::AppState;

const PAGE: &str = "/settings/tokens";

pub struct TokenRow {
    pub id: String,
    pub name: String,
    pub prefix: String,
    pub scope: &'static str,
    pub restrict: String,
    pub created: String,
    pub last_used: String,
    pub expires: String,
    pub expired: bool,
    /// The token this session signed in with.
    pub current: bool,
}

#[derive(Template)]
#[template(path = "tokens.html")]
struct TokensPage {
    chrome: Chrome,
    csrf: String,
    tokens: Vec<TokenRow>,
    /// Scopes the session's token may give.
    scopes: Vec<&'static str>,
    /// After a creation: the new token's name and secret (shown once).
    created: Option<(String, String)>,
}

fn signin_redirect() -> HttpResponse {
    HttpResponse::SeeOther()
        .insert_header((header::LOCATION, format!("/signin?next={}", enc(PAGE))))
        .finish()
}

fn row(t: TokenView, current: &str) -> TokenRow {
    TokenRow {
        current: t.id == current,
        name: t.name.unwrap_or_else(|| "(unnamed)".into()),
        prefix: t.prefix.map(|p| format!("{p}…")).unwrap_or_default(),
        scope: t.scope.as_str(),
        restrict: t
            .restrict
            .map(|r| r.join(", "))
            .unwrap_or_else(|| "everything".into()),
        created: when(t.created_at),
        last_used: t.last_used_at.map(when).unwrap_or_else(|| "never".into()),
        expires: t.expires_at.map(when).unwrap_or_else(|| "never".into()),
        expired: t.expired,
        id: t.id,
    }
}

fn principal(caller: &PageCaller) -> Result<&Principal, PageError> {
    caller
        .caller
        .0
        .as_ref()
        .ok_or_else(|| PageError(ApiError::unauthorized()))
}

async fn page(
    state: &AppState,
    caller: &PageCaller,
    p: &Principal,
    created: Option<(String, String)>,
    status: StatusCode,
) -> Result<HttpResponse, PageError> {
    let list = tokens::list(&state.store, p, Whose::Own).await?;
    let page = TokensPage {
        chrome: Chrome::new("API tokens", caller),
        csrf: caller.csrf.clone(),
        tokens: list.into_iter().map(|t| row(t, &p.token_id)).collect(),
        scopes: [Scope::Read, Scope::Write, Scope::Admin]
            .into_iter()
            .filter(|s| *s <= p.scope)
            .map(Scope::as_str)
            .collect(),
        created,
    };
    Ok(caller.finish(html(status, render(&page)?)))
}

pub async fn show(
    state: web::Data<AppState>,
    caller: PageCaller,
) -> Result<HttpResponse, PageError> {
    let Some(p) = caller.caller.0.clone() else {
        return Ok(signin_redirect());
    };
    page(&state, &caller, &p, None, StatusCode::OK).await
}

fn field(form: &[(String, String)], name: &str) -> String {
    form.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_default()
}

fn bad(message: impl Into<String>) -> PageError {
    PageError(ApiError::coded(ErrorCode::InvalidTokenRequest, message))
}

/// `POST /settings/tokens`: make a token; the answer shows the secret once.
pub async fn create(
    state: web::Data<AppState>,
    caller: PageCaller,
    info: crate::http::request_info::RequestInfo,
    form: web::Form<Vec<(String, String)>>,
) -> Result<HttpResponse, PageError> {
    caller.check_csrf(&field(&form, "csrf"))?;
    let p = principal(&caller)?.clone();
    let scope = match field(&form, "scope").as_str() {
        "" | "read" => Scope::Read,
        "write" => Scope::Write,
        "admin" => Scope::Admin,
        other => {
            return Err(bad(format!(
                "scope must be read, write or admin, got {:?}",
                other.chars().take(50).collect::<String>()
            )));
        }
    };
    let expires_in_days = match field(&form, "expires_in_days").as_str() {
        "" => None,
        d => Some(d.parse::<i64>().map_err(|_| {
            bad("expires_in_days must be a whole number of days (1 to 3650), or empty for never")
        })?),
    };
    let restrict: Vec<String> = field(&form, "restrict")
        .split([',', ' ', '\n'])
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    let req = CreateTokenRequest {
        name: field(&form, "name"),
        scope: Some(scope),
        expires_in_days,
        expires_at: None,
        restrict: (!restrict.is_empty()).then_some(restrict),
        user: None,
    };
    let made = tokens::create(&state.store, &p, req, &info.audit(Some(&p))).await?;
    let secret = made.token.clone().unwrap_or_default();
    let name = made.name.clone().unwrap_or_default();
    page(
        &state,
        &caller,
        &p,
        Some((name, secret)),
        StatusCode::CREATED,
    )
    .await
}

/// `POST /settings/tokens/{id}/revoke`. Revoking the session's own token signs it out.
pub async fn revoke(
    state: web::Data<AppState>,
    caller: PageCaller,
    info: crate::http::request_info::RequestInfo,
    path: web::Path<String>,
    form: web::Form<Vec<(String, String)>>,
) -> Result<HttpResponse, PageError> {
    caller.check_csrf(&field(&form, "csrf"))?;
    let p = principal(&caller)?;
    tokens::revoke(&state.store, p, &path, &info.audit(Some(p))).await?;
    Ok(HttpResponse::SeeOther()
        .insert_header((header::LOCATION, PAGE))
        .finish())
}
