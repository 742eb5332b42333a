//! [`TokenStore`] over sqlx `Any`.

use async_trait::async_trait;
use sqlx::Row;

use super::*;
use crate::Scope;

#[async_trait]
impl TokenStore for SqlMetadata {
    async fn count_users(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query("SELECT COUNT(*) AS n FROM users")
            .fetch_one(&self.pool)
            .await?
            .try_get("n")?)
    }

    async fn create_token(
        &self,
        user: &str,
        scope: Scope,
        secret_sha256: &str,
    ) -> Result<String, StoreError> {
        let user = crate::names::validate_owner("user name", user)?;
        let id = uuid::Uuid::new_v4().to_string();
        let now = now_ms();
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO users (name, created_at) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
        )
        .bind(user.as_str())
        .bind(now)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO tokens (id, user_name, secret_sha256, scope, created_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(id.as_str())
        .bind(user.as_str())
        .bind(secret_sha256)
        .bind(scope.as_str())
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(id)
    }

    async fn authenticate(&self, secret_sha256: &str) -> Result<Option<Principal>, StoreError> {
        let Some(row) = sqlx::query(
            "SELECT id, user_name, scope, last_used_at FROM tokens WHERE secret_sha256 = $1",
        )
        .bind(secret_sha256)
        .fetch_optional(&self.pool)
        .await?
        else {
            return Ok(None);
        };
        let id: String = row.try_get("id")?;
        let scope: String = row.try_get("scope")?;
        let last_used: Option<i64> = row.try_get("last_used_at")?;
        let now = now_ms();
        // Record use at most once a minute so reads do not turn into writes.
        if last_used.is_none_or(|t| now - t > 60_000) {
            sqlx::query("UPDATE tokens SET last_used_at = $1 WHERE id = $2")
                .bind(now)
                .bind(id.as_str())
                .execute(&self.pool)
                .await?;
        }
        Ok(Some(Principal {
            user: row.try_get("user_name")?,
            scope: scope.parse()?,
            token_id: id,
        }))
    }
}
