//! Bearer tokens. Secrets are `qvt_` + 64 hex characters; only their sha256 is stored.

use quiver_store::{AdapterRecord, OrgRole, Principal, Scope, TokenCheck, Viewer};
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::error::{ApiError, ErrorCode};
use crate::state::AppState;

/// The prefix of the secrets this server issues.
pub const TOKEN_PREFIX: &str = "qvt_";

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

/// The caller of a request: anonymous, or the owner of a valid token. Its HTTP extractors are
/// in `crate::http::extract` (and the Hub's, which reads foreign tokens as anonymous).
pub struct Caller(pub Option<Principal>);

/// What a principal (or anonymity) may see.
pub fn viewer_of(principal: Option<&Principal>) -> Viewer {
    match principal {
        Some(p) => Viewer {
            user: Some(p.user.clone()),
            admin: p.scope == Scope::Admin,
            restrict: p.restrict.clone(),
            orgs: p.orgs.iter().map(|m| m.org.clone()).collect(),
        },
        None => Viewer::default(),
    }
}

impl Caller {
    pub fn viewer(&self) -> Viewer {
        viewer_of(self.0.as_ref())
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

    /// Checks the caller may write the adapter `owner/name`: a write token of that user, or an
    /// admin token, either unrestricted or restricted to a list that names it.
    pub fn require_write(&self, owner: &str, name: &str) -> Result<&Principal, ApiError> {
        let p = self.0.as_ref().ok_or_else(ApiError::unauthorized)?;
        require_write(p, owner, Some(name))?;
        Ok(p)
    }

    /// Checks the caller may write something new under `owner` that no adapter name covers (a
    /// fused adapter): a restricted token needs the whole namespace in its list.
    pub fn require_write_namespace(&self, owner: &str) -> Result<&Principal, ApiError> {
        let p = self.0.as_ref().ok_or_else(ApiError::unauthorized)?;
        require_write(p, owner, None)?;
        Ok(p)
    }
}

/// Checks a principal may write under `owner` (the adapter `name`, or with `None` anything in
/// the namespace): a write token of that user or of a `write` or `admin` member of the
/// organisation `owner`, or an admin token; a restricted token only inside its list.
pub fn require_write(p: &Principal, owner: &str, name: Option<&str>) -> Result<(), ApiError> {
    match p.scope {
        Scope::Admin => {}
        Scope::Write if p.user == owner => {}
        Scope::Write if p.role_in(owner).is_some_and(|r| r.at_least(OrgRole::Write)) => {}
        Scope::Write if p.role_in(owner).is_some() => {
            return Err(ApiError::forbidden(format!(
                "user {} has the read role in the organisation {owner}; writing needs write or admin",
                p.user
            )));
        }
        Scope::Write => {
            return Err(ApiError::forbidden(format!(
                "user {} may not write to {owner}'s adapters",
                p.user
            )));
        }
        Scope::Read => {
            return Err(ApiError::forbidden(
                "this token has the read scope; writing needs a write token",
            ));
        }
    }
    if let Some(r) = &p.restrict {
        let allowed = match name {
            Some(name) => r.allows(owner, name),
            None => r.namespaces.iter().any(|n| n == owner),
        };
        if !allowed {
            let what = match name {
                Some(name) => format!("{owner}/{name}"),
                None => format!("the namespace {owner}"),
            };
            return Err(ApiError::forbidden(format!(
                "this token is restricted to {}; it may not write to {what}",
                r.entries().join(", ")
            )));
        }
    }
    Ok(())
}

/// Whether `p` administers the namespace `owner` (moves its protected aliases, manages an
/// organisation's members, transfers its adapters, reads its audit log): an instance admin
/// token, or a write token of the namespace's own user or of an `admin` member of the
/// organisation it names. A read token administers nothing; a restricted token only the
/// namespaces its list names.
pub fn administers(p: &Principal, owner: &str) -> bool {
    let role_ok = match p.scope {
        Scope::Admin => true,
        Scope::Write => p.user == owner || p.role_in(owner) == Some(OrgRole::Admin),
        Scope::Read => false,
    };
    role_ok
        && p.restrict
            .as_ref()
            .is_none_or(|r| r.namespaces.iter().any(|n| n == owner))
}

/// The session cookie the web pages' sign-in sets: the token itself, HttpOnly and SameSite=Strict.
pub const SESSION_COOKIE: &str = "quiver_session";

/// What a token secret is: one this server issued and still honours, an expired or revoked
/// one, or unknown (also any secret without the `qvt_` prefix). Nothing caches the answer, so a
/// revocation or expiry holds from the next request on, on every surface.
pub async fn check(state: &AppState, secret: &str) -> Result<TokenCheck, ApiError> {
    if !secret.starts_with(TOKEN_PREFIX) {
        return Ok(TokenCheck::Unknown);
    }
    Ok(state.store.meta.check_token(&hash_token(secret)).await?)
}

/// The principal of a token secret this server issued, if it is valid.
pub async fn principal(state: &AppState, secret: &str) -> Result<Option<Principal>, ApiError> {
    Ok(match check(state, secret).await? {
        TokenCheck::Valid(p) => Some(p),
        _ => None,
    })
}
