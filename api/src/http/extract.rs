//! Who is asking, as extractors: [`Caller`] (anonymous or a valid token; an invalid token is 401),
//! [`Authenticated`] (a valid token is required). The Hub's reads use [`caller`] with
//! [`ForeignTokens::AnonymousReads`] (`crate::http::hub::HubReader`).

use std::future::Future;
use std::pin::Pin;

use actix_web::dev::Payload;
use actix_web::http::Method;
use actix_web::http::header::AUTHORIZATION;
use actix_web::{FromRequest, HttpRequest, web};
use quiver_store::{Principal, TokenCheck};

use crate::auth::{self, Caller, SESSION_COOKIE, TOKEN_PREFIX};
use crate::error::{ApiError, ErrorCode};
use crate::state::AppState;

/// What a token this server did not issue means.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum ForeignTokens {
    /// 401 `invalid_token`.
    Refused,
    /// Anonymous on reads (GET and HEAD), refused otherwise: the Hub's clients send whatever
    /// token they hold (a Hub token kept in `HF_TOKEN`, say) with every call, so public
    /// adapters stay readable and private ones hidden.
    AnonymousReads,
}

impl FromRequest for Caller {
    type Error = ApiError;
    type Future = CallerFuture;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        caller(req, ForeignTokens::Refused)
    }
}

/// A caller that holds a valid token: 401 `unauthorized` without one.
pub struct Authenticated(pub Principal);

impl Authenticated {
    pub fn viewer(&self) -> quiver_store::Viewer {
        auth::viewer_of(Some(&self.0))
    }

    /// As `Caller::require_write`.
    pub fn require_write(&self, owner: &str, name: &str) -> Result<(), ApiError> {
        auth::require_write(&self.0, owner, Some(name))
    }
}

impl FromRequest for Authenticated {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, Self::Error>>>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let caller = caller(req, ForeignTokens::Refused);
        Box::pin(async move {
            caller
                .await?
                .0
                .map(Authenticated)
                .ok_or_else(ApiError::unauthorized)
        })
    }
}

pub type CallerFuture = Pin<Box<dyn Future<Output = Result<Caller, ApiError>>>>;

/// The caller of `req`: from the `Authorization` header; without one, reads (GET and HEAD only,
/// so a cross-site form cannot act with it) also take the web session's cookie, so that the
/// pages' download links work for private adapters. An invalid cookie is ignored (anonymous).
pub fn caller(req: &HttpRequest, foreign: ForeignTokens) -> CallerFuture {
    let header = req
        .headers()
        .get(AUTHORIZATION)
        .map(|v| v.to_str().map(str::to_owned));
    let cookie = matches!(*req.method(), Method::GET | Method::HEAD)
        .then(|| req.cookie(SESSION_COOKIE).map(|c| c.value().to_owned()))
        .flatten();
    let state = req.app_data::<web::Data<AppState>>().cloned();
    let foreign_reads_anonymous = foreign == ForeignTokens::AnonymousReads
        && matches!(*req.method(), Method::GET | Method::HEAD);
    Box::pin(async move {
        let state = state.ok_or_else(|| ApiError::internal("auth", "application state missing"))?;
        let Some(header) = header else {
            return match cookie {
                Some(secret) => Ok(Caller(auth::principal(&state, &secret).await?)),
                None => Ok(Caller(None)),
            };
        };
        let bad = || {
            ApiError::coded(
                ErrorCode::InvalidToken,
                "the Authorization header must be `Bearer <token>` with a token this server issued",
            )
        };
        let header = header.map_err(|_| bad())?;
        let secret = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .map(str::trim)
            .ok_or_else(bad)?;
        if !secret.starts_with(TOKEN_PREFIX) && foreign_reads_anonymous {
            return Ok(Caller(None));
        }
        // An expired or revoked token says so (its holder knew the secret, so this tells
        // nobody anything new); an unknown one is `invalid_token`.
        match auth::check(&state, secret).await? {
            TokenCheck::Valid(p) => Ok(Caller(Some(p))),
            TokenCheck::Expired => Err(ApiError::coded(
                ErrorCode::TokenExpired,
                "this token has expired; make a new one",
            )),
            TokenCheck::Revoked => Err(ApiError::coded(
                ErrorCode::TokenRevoked,
                "this token was revoked; make a new one",
            )),
            TokenCheck::Unknown => Err(bad()),
        }
    })
}
