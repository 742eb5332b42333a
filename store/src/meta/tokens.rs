//! Users and tokens: [`TokenStore`], the [`Restriction`] a token may carry, and the token
//! lifecycle (names, expiry, revocation; docs/tokens.md).

use async_trait::async_trait;

use super::AuditContext;
use super::orgs::{Membership, OrgRole};
use crate::{RepoId, Scope, StoreError};

/// The most entries a token's restriction list may hold.
pub const MAX_RESTRICTIONS: usize = 50;

/// What a restricted token may act on: whole namespaces (`alice`; later also an organisation's
/// namespace) and single adapters (`alice/x`). Public adapters stay readable to it as to anyone;
/// private reads and every write are limited to these.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Restriction {
    pub namespaces: Vec<String>,
    pub adapters: Vec<RepoId>,
}

impl Restriction {
    /// From entries `owner` or `owner/name`: each a valid name, at most [`MAX_RESTRICTIONS`],
    /// at least one (an empty list would be a token that can act on nothing). Duplicates are
    /// dropped; the order is kept.
    pub fn parse(entries: &[String]) -> Result<Self, StoreError> {
        if entries.is_empty() {
            return Err(StoreError::Invalid(
                "restrict must name at least one namespace or adapter (omit it for an unrestricted token)".into(),
            ));
        }
        if entries.len() > MAX_RESTRICTIONS {
            return Err(StoreError::Invalid(format!(
                "restrict holds {} entries; at most {MAX_RESTRICTIONS} are allowed",
                entries.len()
            )));
        }
        let mut r = Restriction::default();
        for e in entries {
            let shown: String = e.chars().take(200).collect();
            match e.split_once('/') {
                Some(_) => {
                    let repo: RepoId = e.parse().map_err(|err| {
                        StoreError::Invalid(format!("restrict entry {shown:?}: {err}"))
                    })?;
                    if !r.adapters.contains(&repo) {
                        r.adapters.push(repo);
                    }
                }
                None => {
                    let ns =
                        crate::names::validate_owner("restrict namespace", e).map_err(|err| {
                            StoreError::Invalid(format!("restrict entry {shown:?}: {err}"))
                        })?;
                    if !r.namespaces.contains(&ns) {
                        r.namespaces.push(ns);
                    }
                }
            }
        }
        Ok(r)
    }

    /// Whether the token may act on the adapter `owner/name`.
    pub fn allows(&self, owner: &str, name: &str) -> bool {
        self.namespaces.iter().any(|n| n == owner)
            || self
                .adapters
                .iter()
                .any(|a| a.owner == owner && a.name == name)
    }

    /// Whether every adapter this restriction allows is allowed by `outer` too.
    pub fn within(&self, outer: &Restriction) -> bool {
        self.namespaces.iter().all(|n| outer.namespaces.contains(n))
            && self
                .adapters
                .iter()
                .all(|a| outer.allows(&a.owner, &a.name))
    }

    /// The entries, namespaces first, as given to [`Restriction::parse`].
    pub fn entries(&self) -> Vec<String> {
        self.namespaces
            .iter()
            .cloned()
            .chain(self.adapters.iter().map(ToString::to_string))
            .collect()
    }
}

/// The owner of a valid token.
#[derive(Clone, Debug)]
pub struct Principal {
    pub user: String,
    pub scope: Scope,
    pub token_id: String,
    /// `None`: unrestricted.
    pub restrict: Option<Restriction>,
    /// The organisations the user belongs to, read with the token on every request (so a
    /// removal holds from the next request on).
    pub orgs: Vec<Membership>,
}

impl Principal {
    /// The role the user holds in the organisation `org`, if a member.
    pub fn role_in(&self, org: &str) -> Option<OrgRole> {
        self.orgs.iter().find(|m| m.org == org).map(|m| m.role)
    }
}

/// A stored token, without its secret or hash.
#[derive(Clone, Debug)]
pub struct TokenRecord {
    pub id: String,
    pub user: String,
    /// `None` for tokens made before names existed.
    pub name: Option<String>,
    /// The secret's first characters (`qvt_ab12`), not enough to use it.
    pub prefix: Option<String>,
    pub scope: Scope,
    pub restrict: Option<Restriction>,
    pub created_at: i64,
    pub created_by: Option<String>,
    pub last_used_at: Option<i64>,
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
}

/// A token to store.
#[derive(Clone, Debug)]
pub struct NewToken {
    pub user: String,
    pub name: Option<String>,
    pub prefix: Option<String>,
    pub scope: Scope,
    pub restrict: Option<Restriction>,
    pub expires_at: Option<i64>,
    pub created_by: Option<String>,
    pub secret_sha256: String,
    /// Refused (`StoreError::Conflict`) when the user already holds this many active tokens.
    pub max_active: i64,
}

/// A one-time invitation for a user to make their first token (docs/tokens.md).
#[derive(Clone, Debug)]
pub struct InviteRecord {
    pub id: String,
    pub user: String,
    pub scope: Scope,
    pub created_by: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub used_at: Option<i64>,
}

/// What a presented secret is.
#[derive(Clone, Debug)]
pub enum TokenCheck {
    Valid(Principal),
    Expired,
    Revoked,
    Unknown,
}

/// Users and their API tokens.
#[async_trait]
pub trait TokenStore: Send + Sync {
    async fn count_users(&self) -> Result<i64, StoreError>;
    /// Creates the user if needed and an unnamed, unrestricted, unexpiring token for it (the
    /// local bootstrap); `secret_sha256` is the hashed secret.
    async fn create_token(
        &self,
        user: &str,
        scope: Scope,
        secret_sha256: &str,
    ) -> Result<String, StoreError> {
        let t = self
            .insert_token(&NewToken {
                user: user.to_string(),
                name: None,
                prefix: None,
                scope,
                restrict: None,
                expires_at: None,
                created_by: None,
                secret_sha256: secret_sha256.to_string(),
                max_active: i64::MAX,
            })
            .await?;
        Ok(t.id)
    }
    /// Creates the user if needed and the token; refused when the user already holds
    /// `max_active` tokens that are neither revoked nor expired.
    async fn insert_token(&self, token: &NewToken) -> Result<TokenRecord, StoreError> {
        self.insert_token_audited(token, None).await
    }
    /// [`TokenStore::insert_token`], appending a `token.create` entry by `audit` in the same
    /// transaction (target: the new token's id; after: its user, name, scope, expiry).
    async fn insert_token_audited(
        &self,
        token: &NewToken,
        audit: Option<&AuditContext>,
    ) -> Result<TokenRecord, StoreError>;
    /// What the hashed secret is; a valid token's use is recorded at most once a minute.
    async fn check_token(&self, secret_sha256: &str) -> Result<TokenCheck, StoreError>;
    /// The token's owner, if the hashed secret is a valid token. Records the use.
    async fn authenticate(&self, secret_sha256: &str) -> Result<Option<Principal>, StoreError> {
        Ok(match self.check_token(secret_sha256).await? {
            TokenCheck::Valid(p) => Some(p),
            _ => None,
        })
    }
    async fn get_token(&self, id: &str) -> Result<Option<TokenRecord>, StoreError>;
    /// Tokens not revoked, of `user` or of everyone, oldest first, at most `limit`.
    async fn list_tokens(
        &self,
        user: Option<&str>,
        limit: u32,
    ) -> Result<Vec<TokenRecord>, StoreError>;
    /// Marks the token revoked (if it was not); `false` if there is no such token.
    async fn revoke_token(&self, id: &str) -> Result<bool, StoreError> {
        self.revoke_token_audited(id, None).await
    }
    /// [`TokenStore::revoke_token`], appending a `token.revoke` entry by `audit` in the same
    /// transaction when the token was live until now.
    async fn revoke_token_audited(
        &self,
        id: &str,
        audit: Option<&AuditContext>,
    ) -> Result<bool, StoreError>;
    /// Creates the user if needed and a one-time invite for them (`secret_sha256` hashed).
    async fn insert_invite(
        &self,
        user: &str,
        scope: Scope,
        created_by: &str,
        expires_at: i64,
        secret_sha256: &str,
    ) -> Result<InviteRecord, StoreError> {
        self.insert_invite_audited(user, scope, created_by, expires_at, secret_sha256, None)
            .await
    }
    /// [`TokenStore::insert_invite`], appending an `invite.create` entry by `audit` in the same
    /// transaction (target: the invited user; after: invite id, scope, expiry).
    async fn insert_invite_audited(
        &self,
        user: &str,
        scope: Scope,
        created_by: &str,
        expires_at: i64,
        secret_sha256: &str,
        audit: Option<&AuditContext>,
    ) -> Result<InviteRecord, StoreError>;
    /// Uses the invite (unused and unexpired) and makes `token` for its user and scope in one
    /// transaction; `None` if the invite is unknown, used or expired. `token.user` and
    /// `token.scope` are replaced by the invite's.
    async fn redeem_invite(
        &self,
        invite_sha256: &str,
        token: &NewToken,
    ) -> Result<Option<TokenRecord>, StoreError> {
        self.redeem_invite_audited(invite_sha256, token, None).await
    }
    /// [`TokenStore::redeem_invite`], appending in the same transaction, when the invite was
    /// used, an `invite.redeem` entry (target: the invited user; after: invite id, new token id,
    /// scope) and the new token's `token.create` entry. `audit` gives the request; its actor,
    /// when empty, is the invited user (the redeemer holds no token yet).
    async fn redeem_invite_audited(
        &self,
        invite_sha256: &str,
        token: &NewToken,
        audit: Option<&AuditContext>,
    ) -> Result<Option<TokenRecord>, StoreError>;
}
