//! [`TokenStore`] over sqlx `Any`.

use async_trait::async_trait;
use sqlx::Row;
use sqlx::any::AnyRow;

use super::*;
use crate::Scope;
use crate::meta::tokens::{InviteRecord, NewToken, Restriction, TokenCheck, TokenRecord};

/// `SELECT <every column but the hash> FROM tokens` and the rest of the query.
macro_rules! select_tokens {
    ($rest:literal) => {
        concat!(
            "SELECT id, user_name, name, prefix, scope, restrict_to, created_at, created_by, \
             last_used_at, expires_at, revoked_at FROM tokens ",
            $rest
        )
    };
}

fn restrict_to_json(r: &Option<Restriction>) -> Option<String> {
    r.as_ref()
        .map(|r| serde_json::Value::from(r.entries()).to_string())
}

fn restrict_from_json(raw: Option<String>) -> Result<Option<Restriction>, StoreError> {
    let Some(raw) = raw else { return Ok(None) };
    let entries: Vec<String> = serde_json::from_str(&raw)
        .map_err(|e| StoreError::Invalid(format!("stored token restriction: {e}")))?;
    Ok(Some(Restriction::parse(&entries)?))
}

fn token_row(row: &AnyRow) -> Result<TokenRecord, StoreError> {
    let scope: String = row.try_get("scope")?;
    Ok(TokenRecord {
        id: row.try_get("id")?,
        user: row.try_get("user_name")?,
        name: row.try_get("name")?,
        prefix: row.try_get("prefix")?,
        scope: scope.parse()?,
        restrict: restrict_from_json(row.try_get("restrict_to")?)?,
        created_at: row.try_get("created_at")?,
        created_by: row.try_get("created_by")?,
        last_used_at: row.try_get("last_used_at")?,
        expires_at: row.try_get("expires_at")?,
        revoked_at: row.try_get("revoked_at")?,
    })
}

/// Creates the user if needed and the token, in `tx` (see `TokenStore::insert_token`).
async fn insert_token_in(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    t: &NewToken,
) -> Result<TokenRecord, StoreError> {
    let user = crate::names::validate_owner("user name", &t.user)?;
    let id = uuid::Uuid::new_v4().to_string();
    let now = now_ms();
    super::orgs::ensure_user_in(tx, &user).await?;
    if t.max_active < i64::MAX {
        // Locks the user's row (Postgres), so two creations cannot both pass the count.
        sqlx::query("UPDATE users SET created_at = created_at WHERE name = $1")
            .bind(user.as_str())
            .execute(&mut **tx)
            .await?;
        let active: i64 = sqlx::query(
            "SELECT COUNT(*) AS n FROM tokens WHERE user_name = $1 AND revoked_at IS NULL \
                 AND (expires_at IS NULL OR expires_at > $2)",
        )
        .bind(user.as_str())
        .bind(now)
        .fetch_one(&mut **tx)
        .await?
        .try_get("n")?;
        if active >= t.max_active {
            return Err(StoreError::Conflict(format!(
                "user {user} already holds {active} active tokens, the most allowed; revoke one first"
            )));
        }
    }
    sqlx::query(
        "INSERT INTO tokens (id, user_name, secret_sha256, scope, created_at, name, prefix, \
             expires_at, restrict_to, created_by) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(id.as_str())
    .bind(user.as_str())
    .bind(t.secret_sha256.as_str())
    .bind(t.scope.as_str())
    .bind(now)
    .bind(t.name.clone())
    .bind(t.prefix.clone())
    .bind(t.expires_at)
    .bind(restrict_to_json(&t.restrict))
    .bind(t.created_by.clone())
    .execute(&mut **tx)
    .await?;
    Ok(TokenRecord {
        id,
        user,
        name: t.name.clone(),
        prefix: t.prefix.clone(),
        scope: t.scope,
        restrict: t.restrict.clone(),
        created_at: now,
        created_by: t.created_by.clone(),
        last_used_at: None,
        expires_at: t.expires_at,
        revoked_at: None,
    })
}

/// The `token.create` entry of a new token (target: its id; never the secret or its hash).
fn token_created(ctx: &AuditContext, record: &TokenRecord) -> Audit {
    Audit {
        context: ctx.clone(),
        action: AuditAction::TokenCreate,
        target: record.id.clone(),
        owner: Some(record.user.clone()),
        before: None,
        after: Some(serde_json::json!({
            "user": record.user,
            "name": record.name,
            "scope": record.scope.as_str(),
            "expires_at": record.expires_at,
        })),
    }
}

#[async_trait]
impl TokenStore for SqlMetadata {
    async fn count_users(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query("SELECT COUNT(*) AS n FROM users")
            .fetch_one(&self.pool)
            .await?
            .try_get("n")?)
    }

    async fn insert_token_audited(
        &self,
        t: &NewToken,
        audit: Option<&AuditContext>,
    ) -> Result<TokenRecord, StoreError> {
        let mut tx = self.begin_write().await?;
        let record = insert_token_in(&mut tx, t).await?;
        if let Some(ctx) = audit {
            super::audit::append_audit(&mut tx, &token_created(ctx, &record)).await?;
        }
        tx.commit().await?;
        Ok(record)
    }

    async fn check_token(&self, secret_sha256: &str) -> Result<TokenCheck, StoreError> {
        // One round trip: the token and its user's organisations (one row per membership).
        let rows = sqlx::query(
            "SELECT t.id, t.user_name, t.name, t.prefix, t.scope, t.restrict_to, t.created_at, \
             t.created_by, t.last_used_at, t.expires_at, t.revoked_at, m.org, m.role \
             FROM tokens t LEFT JOIN org_members m ON m.user_name = t.user_name \
             WHERE t.secret_sha256 = $1",
        )
        .bind(secret_sha256)
        .fetch_all(&self.pool)
        .await?;
        let Some(row) = rows.first() else {
            return Ok(TokenCheck::Unknown);
        };
        let t = token_row(row)?;
        let mut orgs = Vec::new();
        for r in &rows {
            if r.try_get::<Option<String>, _>("org")?.is_some() {
                orgs.push(super::orgs::membership_row(r)?);
            }
        }
        let now = now_ms();
        if t.revoked_at.is_some() {
            return Ok(TokenCheck::Revoked);
        }
        if t.expires_at.is_some_and(|e| e <= now) {
            return Ok(TokenCheck::Expired);
        }
        // Record use at most once a minute so reads do not turn into writes.
        if t.last_used_at.is_none_or(|u| now - u > 60_000) {
            sqlx::query("UPDATE tokens SET last_used_at = $1 WHERE id = $2")
                .bind(now)
                .bind(t.id.as_str())
                .execute(&self.pool)
                .await?;
        }
        Ok(TokenCheck::Valid(Principal {
            user: t.user,
            scope: t.scope,
            token_id: t.id,
            restrict: t.restrict,
            orgs,
        }))
    }

    async fn get_token(&self, id: &str) -> Result<Option<TokenRecord>, StoreError> {
        sqlx::query(select_tokens!("WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(token_row)
            .transpose()
    }

    async fn list_tokens(
        &self,
        user: Option<&str>,
        limit: u32,
    ) -> Result<Vec<TokenRecord>, StoreError> {
        let rows =
            match user {
                Some(user) => sqlx::query(select_tokens!(
                    "WHERE user_name = $1 AND revoked_at IS NULL ORDER BY created_at, id LIMIT $2"
                ))
                .bind(user)
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?,
                None => {
                    sqlx::query(select_tokens!(
                        "WHERE revoked_at IS NULL ORDER BY user_name, created_at, id LIMIT $1"
                    ))
                    .bind(i64::from(limit))
                    .fetch_all(&self.pool)
                    .await?
                }
            };
        rows.iter().map(token_row).collect()
    }

    async fn revoke_token_audited(
        &self,
        id: &str,
        audit: Option<&AuditContext>,
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin_write().await?;
        let found = sqlx::query("SELECT revoked_at, user_name FROM tokens WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(row) = found else {
            return Ok(false);
        };
        let revoked: Option<i64> = row.try_get("revoked_at")?;
        if revoked.is_none() {
            let at = now_ms();
            sqlx::query("UPDATE tokens SET revoked_at = $1 WHERE id = $2")
                .bind(at)
                .bind(id)
                .execute(&mut *tx)
                .await?;
            if let Some(ctx) = audit {
                let entry = Audit {
                    context: ctx.clone(),
                    action: AuditAction::TokenRevoke,
                    target: id.to_string(),
                    owner: Some(row.try_get("user_name")?),
                    before: Some(serde_json::json!({ "revoked_at": null })),
                    after: Some(serde_json::json!({ "revoked_at": at })),
                };
                super::audit::append_audit(&mut tx, &entry).await?;
            }
        }
        tx.commit().await?;
        Ok(true)
    }

    async fn insert_invite_audited(
        &self,
        user: &str,
        scope: Scope,
        created_by: &str,
        expires_at: i64,
        secret_sha256: &str,
        audit: Option<&AuditContext>,
    ) -> Result<InviteRecord, StoreError> {
        let user = crate::names::validate_owner("user name", user)?;
        let id = uuid::Uuid::new_v4().to_string();
        let now = now_ms();
        let mut tx = self.begin_write().await?;
        super::orgs::ensure_user_in(&mut tx, &user).await?;
        sqlx::query(
            "INSERT INTO invites (id, secret_sha256, user_name, scope, created_by, created_at, \
             expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(id.as_str())
        .bind(secret_sha256)
        .bind(user.as_str())
        .bind(scope.as_str())
        .bind(created_by)
        .bind(now)
        .bind(expires_at)
        .execute(&mut *tx)
        .await?;
        if let Some(ctx) = audit {
            let entry = Audit {
                context: ctx.clone(),
                action: AuditAction::InviteCreate,
                target: user.clone(),
                owner: Some(user.clone()),
                before: None,
                after: Some(serde_json::json!({
                    "invite": id,
                    "scope": scope.as_str(),
                    "expires_at": expires_at,
                })),
            };
            super::audit::append_audit(&mut tx, &entry).await?;
        }
        tx.commit().await?;
        Ok(InviteRecord {
            id,
            user,
            scope,
            created_by: created_by.to_string(),
            created_at: now,
            expires_at,
            used_at: None,
        })
    }

    async fn redeem_invite_audited(
        &self,
        invite_sha256: &str,
        token: &NewToken,
        audit: Option<&AuditContext>,
    ) -> Result<Option<TokenRecord>, StoreError> {
        let now = now_ms();
        let mut tx = self.begin_write().await?;
        let Some(row) = sqlx::query(
            "SELECT id, user_name, scope, created_by FROM invites WHERE secret_sha256 = $1 \
             AND used_at IS NULL AND expires_at > $2",
        )
        .bind(invite_sha256)
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?
        else {
            return Ok(None);
        };
        let id: String = row.try_get("id")?;
        // Only one redemption wins, whatever the isolation level.
        let used = sqlx::query("UPDATE invites SET used_at = $1 WHERE id = $2 AND used_at IS NULL")
            .bind(now)
            .bind(id.as_str())
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if used != 1 {
            return Ok(None);
        }
        let scope: String = row.try_get("scope")?;
        let mut t = token.clone();
        t.user = row.try_get("user_name")?;
        t.scope = scope.parse()?;
        t.created_by = Some(row.try_get("created_by")?);
        let record = insert_token_in(&mut tx, &t).await?;
        if let Some(ctx) = audit {
            let mut context = ctx.clone();
            if context.actor.is_none() {
                context.actor = Some(record.user.clone());
            }
            let redeemed = Audit {
                context: context.clone(),
                action: AuditAction::InviteRedeem,
                target: record.user.clone(),
                owner: Some(record.user.clone()),
                before: Some(serde_json::json!({ "invite": id, "used_at": null })),
                after: Some(serde_json::json!({
                    "invite": id,
                    "used_at": now,
                    "token": record.id,
                    "scope": record.scope.as_str(),
                })),
            };
            super::audit::append_audit(&mut tx, &redeemed).await?;
            super::audit::append_audit(&mut tx, &token_created(&context, &record)).await?;
        }
        tx.commit().await?;
        Ok(Some(record))
    }
}
