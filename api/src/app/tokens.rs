//! The token lifecycle's use cases (docs/tokens.md): creating a token from another (never a wider
//! scope, reach or lifetime than the one asking), listing and revoking them. The REST routes
//! (`http::routes::tokens`) and the tokens page (`http::web::tokens`) share these.

use quiver_store::{
    NewToken, Principal, Restriction, Scope, Store, StoreError, TokenRecord, time::now_ms,
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::new_token;
use crate::error::{ApiError, ErrorCode};

/// The longest token name, in characters.
pub const MAX_NAME_CHARS: usize = 100;
/// The longest lifetime a token may be given.
pub const MAX_EXPIRY_DAYS: i64 = 3650;
/// The most tokens a user may hold that are neither revoked nor expired.
pub const MAX_ACTIVE_TOKENS: i64 = 100;
/// The most tokens one listing shows (an admin's listing of everyone's).
pub const LIST_LIMIT: u32 = 1000;
/// How many characters of the secret are kept to tell tokens apart (`qvt_` and 4 hex).
pub const PREFIX_CHARS: usize = 8;

const DAY_MS: i64 = 86_400_000;

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::coded(ErrorCode::InvalidTokenRequest, message)
}

/// A new token. Without `expires_in_days` or `expires_at` it never expires (unless the token
/// asking expires: then it expires with it at the latest).
#[derive(Clone, Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTokenRequest {
    /// 1 to 100 characters, to tell your tokens apart.
    pub name: String,
    /// `read`, `write` or `admin`; at most the scope of the token asking. Default `read`.
    #[schema(value_type = Option<String>, example = "write")]
    pub scope: Option<Scope>,
    /// 1 to 3650.
    pub expires_in_days: Option<i64>,
    /// Unix milliseconds, in the future and within 3650 days (instead of `expires_in_days`).
    pub expires_at: Option<i64>,
    /// Namespaces (`alice`) and adapters (`alice/x`) the token may act on (1 to 50 entries);
    /// omitted: everything its user may. A restricted token can only make tokens restricted
    /// within its own list.
    pub restrict: Option<Vec<String>>,
    /// Whose token: only an unrestricted admin token may name another user (created if new).
    pub user: Option<String>,
}

/// A token as listed: never its secret or hash.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct TokenView {
    pub id: String,
    pub user: String,
    /// `null` for tokens made before names (the local bootstrap's too).
    pub name: Option<String>,
    /// The secret's first characters (`qvt_ab12`), to recognise it; not enough to use it.
    pub prefix: Option<String>,
    #[schema(value_type = String, example = "write")]
    pub scope: Scope,
    /// `null`: unrestricted.
    pub restrict: Option<Vec<String>>,
    /// Unix milliseconds.
    pub created_at: i64,
    /// The user whose token made it (`null`: the local bootstrap).
    pub created_by: Option<String>,
    /// Unix milliseconds, recorded at most once a minute.
    pub last_used_at: Option<i64>,
    pub expires_at: Option<i64>,
    pub expired: bool,
    pub revoked_at: Option<i64>,
    /// The secret: only in the answer to its creation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

impl TokenView {
    pub fn new(t: TokenRecord, secret: Option<String>) -> Self {
        let now = now_ms();
        Self {
            expired: t.expires_at.is_some_and(|e| e <= now),
            id: t.id,
            user: t.user,
            name: t.name,
            prefix: t.prefix,
            scope: t.scope,
            restrict: t.restrict.map(|r| r.entries()),
            created_at: t.created_at,
            created_by: t.created_by,
            last_used_at: t.last_used_at,
            expires_at: t.expires_at,
            revoked_at: t.revoked_at,
            token: secret,
        }
    }
}

/// Whether `p` may manage other users' tokens: an admin token without a restriction.
pub fn manages_all(p: &Principal) -> bool {
    p.scope == Scope::Admin && p.restrict.is_none()
}

/// Makes a token as `p` asks; the answer's view holds the secret, shown only this once.
pub async fn create(
    store: &Store,
    p: &Principal,
    req: CreateTokenRequest,
    ctx: &quiver_store::AuditContext,
) -> Result<TokenView, ApiError> {
    let name = req.name.trim();
    if name.is_empty()
        || name.chars().count() > MAX_NAME_CHARS
        || name.chars().any(char::is_control)
    {
        return Err(invalid(format!(
            "name must be 1 to {MAX_NAME_CHARS} characters without control characters"
        )));
    }
    let scope = req.scope.unwrap_or(Scope::Read);
    if scope > p.scope {
        return Err(ApiError::forbidden(format!(
            "this token has the {} scope; it cannot make a {} token",
            p.scope.as_str(),
            scope.as_str()
        )));
    }
    let user = match req.user.as_deref().map(str::trim) {
        None => p.user.clone(),
        Some(u) if u == p.user => p.user.clone(),
        Some(u) => {
            if !manages_all(p) {
                return Err(ApiError::forbidden(
                    "only an unrestricted admin token may make tokens for another user",
                ));
            }
            quiver_store::names::validate_owner("user", u)
                .map_err(|e| invalid(format!("user: {e}")))?
        }
    };
    let restrict = match &req.restrict {
        None => None,
        Some(entries) => Some(Restriction::parse(entries).map_err(|e| invalid(e.to_string()))?),
    };
    if let Some(own) = &p.restrict {
        match &restrict {
            None => {
                return Err(ApiError::forbidden(format!(
                    "this token is restricted to {}; it can only make tokens restricted within that list",
                    own.entries().join(", ")
                )));
            }
            Some(r) if !r.within(own) => {
                return Err(ApiError::forbidden(format!(
                    "this token is restricted to {}; the new token's list must stay within it",
                    own.entries().join(", ")
                )));
            }
            Some(_) => {}
        }
    }
    let now = now_ms();
    let mut expires_at = match (req.expires_in_days, req.expires_at) {
        (Some(_), Some(_)) => {
            return Err(invalid("give expires_in_days or expires_at, not both"));
        }
        (Some(days), None) => {
            if !(1..=MAX_EXPIRY_DAYS).contains(&days) {
                return Err(invalid(format!(
                    "expires_in_days must be between 1 and {MAX_EXPIRY_DAYS}, got {days}"
                )));
            }
            Some(now + days * DAY_MS)
        }
        (None, Some(at)) => {
            if at <= now || at > now + MAX_EXPIRY_DAYS * DAY_MS {
                return Err(invalid(format!(
                    "expires_at must be in the future and within {MAX_EXPIRY_DAYS} days (Unix milliseconds), got {at}"
                )));
            }
            Some(at)
        }
        (None, None) => None,
    };
    // A token cannot outlive the token that made it (for its own user).
    if user == p.user
        && let Some(limit) = store
            .meta
            .get_token(&p.token_id)
            .await?
            .and_then(|t| t.expires_at)
    {
        expires_at = Some(expires_at.map_or(limit, |e| e.min(limit)));
    }
    let (secret, hash) = new_token();
    let record = store
        .meta
        .insert_token_audited(
            &NewToken {
                user,
                name: Some(name.to_string()),
                prefix: Some(secret.chars().take(PREFIX_CHARS).collect()),
                scope,
                restrict,
                expires_at,
                created_by: Some(p.user.clone()),
                secret_sha256: hash,
                max_active: MAX_ACTIVE_TOKENS,
            },
            Some(ctx),
        )
        .await
        .map_err(|e| match e {
            StoreError::Conflict(m) => invalid(m),
            StoreError::Invalid(m) => invalid(m),
            other => other.into(),
        })?;
    tracing::info!(token = %record.id, user = %record.user, by = %p.user, scope = scope.as_str(), "token created");
    Ok(TokenView::new(record, Some(secret)))
}

/// Whose tokens a listing shows.
pub enum Whose<'a> {
    Own,
    User(&'a str),
    All,
}

/// The tokens `p` asked for (not revoked): its user's own, or for an unrestricted admin token
/// another user's or everyone's.
pub async fn list(
    store: &Store,
    p: &Principal,
    whose: Whose<'_>,
) -> Result<Vec<TokenView>, ApiError> {
    let user = match whose {
        Whose::Own => Some(p.user.as_str()),
        Whose::User(u) if u == p.user => Some(u),
        Whose::User(_) | Whose::All if !manages_all(p) => {
            return Err(ApiError::forbidden(
                "only an unrestricted admin token may list other users' tokens",
            ));
        }
        Whose::User(u) => Some(u),
        Whose::All => None,
    };
    Ok(store
        .meta
        .list_tokens(user, LIST_LIMIT)
        .await?
        .into_iter()
        .map(|t| TokenView::new(t, None))
        .collect())
}

/// Revokes a token of `p`'s user (any scope may revoke its user's tokens, itself included), or
/// anyone's for an unrestricted admin token. Another user's token is `token_not_found`, as an
/// unknown id is. Takes effect on the next request: nothing caches a token's check.
pub async fn revoke(
    store: &Store,
    p: &Principal,
    id: &str,
    ctx: &quiver_store::AuditContext,
) -> Result<TokenView, ApiError> {
    let not_found = || {
        ApiError::not_found(
            ErrorCode::TokenNotFound,
            format!("token {}", id.chars().take(100).collect::<String>()),
        )
    };
    let token = store.meta.get_token(id).await?.ok_or_else(not_found)?;
    if token.user != p.user && !manages_all(p) {
        return Err(not_found());
    }
    store
        .meta
        .revoke_token_audited(&token.id, Some(ctx))
        .await?;
    tracing::info!(token = %token.id, user = %token.user, by = %p.user, "token revoked");
    let token = store
        .meta
        .get_token(&token.id)
        .await?
        .ok_or_else(not_found)?;
    Ok(TokenView::new(token, None))
}

/// The prefix of invite secrets.
pub const INVITE_PREFIX: &str = "qvi_";
/// An invite's default and longest life.
pub const INVITE_DEFAULT_DAYS: i64 = 7;
pub const INVITE_MAX_DAYS: i64 = 30;

/// An invitation for a user (created if new) to make their first token on the sign-in page.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateInviteRequest {
    pub user: String,
    /// The scope of the token the invite makes; default `write`.
    #[schema(value_type = Option<String>, example = "write")]
    pub scope: Option<Scope>,
    /// 1 to 30, default 7.
    pub expires_in_days: Option<i64>,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct InviteView {
    pub id: String,
    pub user: String,
    #[schema(value_type = String, example = "write")]
    pub scope: Scope,
    pub created_by: String,
    pub created_at: i64,
    pub expires_at: i64,
    /// The one-time link's path on this server (`/signin?invite=qvi_…`): shown only here.
    pub link: String,
}

/// Makes an invite (an unrestricted admin token only).
pub async fn invite(
    store: &Store,
    p: &Principal,
    req: CreateInviteRequest,
    ctx: &quiver_store::AuditContext,
) -> Result<InviteView, ApiError> {
    if !manages_all(p) {
        return Err(ApiError::forbidden(
            "only an unrestricted admin token may invite users",
        ));
    }
    let user = quiver_store::names::validate_owner("user", req.user.trim())
        .map_err(|e| invalid(format!("user: {e}")))?;
    let days = req.expires_in_days.unwrap_or(INVITE_DEFAULT_DAYS);
    if !(1..=INVITE_MAX_DAYS).contains(&days) {
        return Err(invalid(format!(
            "expires_in_days must be between 1 and {INVITE_MAX_DAYS}, got {days}"
        )));
    }
    let scope = req.scope.unwrap_or(Scope::Write);
    let (token_secret, _) = new_token();
    let secret = format!(
        "{INVITE_PREFIX}{}",
        &token_secret[crate::auth::TOKEN_PREFIX.len()..]
    );
    let hash = crate::auth::hash_token(&secret);
    let inv = store
        .meta
        .insert_invite_audited(
            &user,
            scope,
            &p.user,
            now_ms() + days * DAY_MS,
            &hash,
            Some(ctx),
        )
        .await?;
    tracing::info!(invite = %inv.id, user = %inv.user, by = %p.user, "invite created");
    Ok(InviteView {
        id: inv.id,
        user: inv.user,
        scope: inv.scope,
        created_by: inv.created_by,
        created_at: inv.created_at,
        expires_at: inv.expires_at,
        link: format!("/signin?invite={secret}"),
    })
}

/// Uses an invite: its user's first token, named `name`; `None` for an unknown, used or
/// expired invite. The view holds the secret. `audit` is the request's (no actor: the invited
/// user is recorded as the actor of the `invite.redeem` and `token.create` entries).
pub async fn redeem(
    store: &Store,
    invite_secret: &str,
    name: &str,
    audit: &quiver_store::AuditContext,
) -> Result<Option<TokenView>, ApiError> {
    let name = name.trim();
    if name.is_empty()
        || name.chars().count() > MAX_NAME_CHARS
        || name.chars().any(char::is_control)
    {
        return Err(invalid(format!(
            "name must be 1 to {MAX_NAME_CHARS} characters without control characters"
        )));
    }
    if !invite_secret.starts_with(INVITE_PREFIX) {
        return Ok(None);
    }
    let (secret, hash) = new_token();
    let made = store
        .meta
        .redeem_invite_audited(
            &crate::auth::hash_token(invite_secret),
            &NewToken {
                user: String::new(),
                name: Some(name.to_string()),
                prefix: Some(secret.chars().take(PREFIX_CHARS).collect()),
                scope: Scope::Read,
                restrict: None,
                expires_at: None,
                created_by: None,
                secret_sha256: hash,
                max_active: MAX_ACTIVE_TOKENS,
            },
            Some(audit),
        )
        .await
        .map_err(|e| match e {
            StoreError::Conflict(m) => invalid(m),
            other => other.into(),
        })?;
    Ok(made.map(|t| {
        tracing::info!(token = %t.id, user = %t.user, "invite used");
        TokenView::new(t, Some(secret))
    }))
}
