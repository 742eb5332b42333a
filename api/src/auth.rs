//! Bearer tokens. Secrets are `qvt_` + 64 hex characters; only their sha256 is stored.

use std::future::Future;
use std::pin::Pin;

use actix_web::dev::Payload;
use actix_web::http::Method;
use actix_web::http::header::AUTHORIZATION;
use actix_web::{FromRequest, HttpRequest, web};
use quiver_store::{AdapterRecord, Principal, Scope, Viewer};
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::error::{ApiError, ErrorCode};
use crate::state::AppState;

const TOKEN_PREFIX: &str = "qvt_";

/// A new secret and its hash.
pub fn new_token() -> (String, String) {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let secret = format!("{TOKEN_PREFIX}{}", hex::encode(bytes));
    let hash = hash_token(&secret);
    (secret, hash)
}

pub fn hash_token(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// The caller of a request: anonymous, or the owner of a valid token.
pub struct Caller(pub Option<Principal>);

impl Caller {
    pub fn viewer(&self) -> Viewer {
        match &self.0 {
            Some(p) => Viewer {
                user: Some(p.user.clone()),
                admin: p.scope == Scope::Admin,
            },
            None => Viewer::default(),
        }
    }

    /// The adapter, if this caller may see it; private adapters are 404 to everyone else.
    pub fn visible(
        &self,
        adapter: Option<AdapterRecord>,
        what: &str,
    ) -> Result<AdapterRecord, ApiError> {
        match adapter {
            Some(a) if self.viewer().can_see(&a) => Ok(a),
            _ => Err(ApiError::not_found(
                ErrorCode::AdapterNotFound,
                format!("adapter {what}"),
            )),
        }
    }

    /// Checks the caller may write under `owner`: a write token of that user, or an admin token.
    pub fn require_write(&self, owner: &str) -> Result<&Principal, ApiError> {
        let p = self.0.as_ref().ok_or_else(ApiError::unauthorized)?;
        match p.scope {
            Scope::Admin => Ok(p),
            Scope::Write if p.user == owner => Ok(p),
            Scope::Write => Err(ApiError::forbidden(format!(
                "user {} may not write to {owner}'s adapters",
                p.user
            ))),
            Scope::Read => Err(ApiError::forbidden(
                "this token has the read scope; writing needs a write token",
            )),
        }
    }
}

/// The session cookie the web pages' sign-in sets: the token itself, HttpOnly and SameSite=Strict.
pub const SESSION_COOKIE: &str = "quiver_session";

/// The principal of a token secret this server issued, if it is valid.
pub async fn principal(state: &AppState, secret: &str) -> Result<Option<Principal>, ApiError> {
    if !secret.starts_with(TOKEN_PREFIX) {
        return Ok(None);
    }
    Ok(state.store.meta.authenticate(&hash_token(secret)).await?)
}

impl FromRequest for Caller {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, Self::Error>>>>;

    /// From the `Authorization` header; without one, reads (GET and HEAD only, so a cross-site
    /// form cannot act with it) also take the web session's cookie, so that the pages' download
    /// links work for private adapters. An invalid cookie is ignored (anonymous).
    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let header = req
            .headers()
            .get(AUTHORIZATION)
            .map(|v| v.to_str().map(str::to_owned));
        let cookie = matches!(*req.method(), Method::GET | Method::HEAD)
            .then(|| req.cookie(SESSION_COOKIE).map(|c| c.value().to_owned()))
            .flatten();
        let state = req.app_data::<web::Data<AppState>>().cloned();
        let foreign_reads_anonymous = matches!(*req.method(), Method::GET | Method::HEAD)
            && crate::hub::is_hub_path(req.path())
            && req.path() != "/api/whoami-v2";
        Box::pin(async move {
            let state =
                state.ok_or_else(|| ApiError::internal("auth", "application state missing"))?;
            let Some(header) = header else {
                return match cookie {
                    Some(secret) => Ok(Caller(principal(&state, &secret).await?)),
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
            // The Hub's clients send whatever token they hold (a Hub token kept in HF_TOKEN, say)
            // with every call: on the Hub-compatible routes, reads with a token this server did
            // not issue are anonymous, so public adapters stay readable and private ones hidden.
            if !secret.starts_with(TOKEN_PREFIX) && foreign_reads_anonymous {
                return Ok(Caller(None));
            }
            match principal(&state, secret).await? {
                Some(p) => Ok(Caller(Some(p))),
                None => Err(bad()),
            }
        })
    }
}
