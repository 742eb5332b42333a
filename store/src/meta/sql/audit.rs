//! [`AuditStore`] over sqlx `Any`, and [`append_audit`], which every audited write method calls
//! inside its own transaction.

use async_trait::async_trait;
use sqlx::Row;

use super::*;

const AUDIT_COLUMNS: &str = "id, at, actor, token_id, action, target, owner, before_json, \
                             after_json, request_id, client_addr";

/// Appends `entry` inside `tx`: it commits or rolls back with the change it records.
pub(super) async fn append_audit(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    entry: &Audit,
) -> Result<(), StoreError> {
    let json = |v: &Option<Value>| v.as_ref().map(|v| v.to_string());
    sqlx::query(
        "INSERT INTO audit_log (at, actor, token_id, action, target, owner, before_json, \
         after_json, request_id, client_addr) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(now_ms())
    .bind(entry.context.actor.as_deref())
    .bind(entry.context.token_id.as_deref())
    .bind(entry.action.as_str())
    .bind(entry.target.as_str())
    .bind(entry.owner.as_deref())
    .bind(json(&entry.before))
    .bind(json(&entry.after))
    .bind(entry.context.request_id.as_deref())
    .bind(entry.context.client_addr.as_deref())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// [`append_audit`] when there is an entry.
pub(super) async fn append_audit_opt(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    entry: Option<&Audit>,
) -> Result<(), StoreError> {
    match entry {
        Some(e) => append_audit(tx, e).await,
        None => Ok(()),
    }
}

fn audit_from_row(r: &sqlx::any::AnyRow) -> Result<AuditRecord, StoreError> {
    let json = |raw: Option<String>| raw.and_then(|t| serde_json::from_str(&t).ok());
    Ok(AuditRecord {
        id: r.try_get("id")?,
        at: r.try_get("at")?,
        actor: r.try_get("actor")?,
        token_id: r.try_get("token_id")?,
        action: r.try_get("action")?,
        target: r.try_get("target")?,
        owner: r.try_get("owner")?,
        before: json(r.try_get("before_json")?),
        after: json(r.try_get("after_json")?),
        request_id: r.try_get("request_id")?,
        client_addr: r.try_get("client_addr")?,
    })
}

#[async_trait]
impl AuditStore for SqlMetadata {
    async fn append_audit(&self, entry: &Audit) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        append_audit(&mut tx, entry).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn list_audit(
        &self,
        filter: &AuditFilter,
        limit: u32,
        cursor: Option<&str>,
    ) -> Result<Page<AuditRecord>, StoreError> {
        let mut sql = Sql::new(&format!(
            "SELECT {AUDIT_COLUMNS} FROM audit_log WHERE 1 = 1"
        ));
        if let Some(actor) = &filter.actor {
            sql.push(" AND actor = ").bind(actor.as_str());
        }
        if let Some(target) = &filter.target {
            if target.ends_with('/') {
                let n = target.chars().count() as i64;
                sql.push(" AND substr(target, 1, CAST(")
                    .bind(n)
                    .push(" AS INTEGER)) = ")
                    .bind(target.as_str());
            } else {
                sql.push(" AND target = ").bind(target.as_str());
            }
        }
        if let Some(action) = filter.action {
            sql.push(" AND action = ").bind(action.as_str());
        }
        if let Some(owner) = &filter.owner {
            sql.push(" AND owner = ").bind(owner.as_str());
        }
        if let Some(since) = filter.since {
            sql.push(" AND at >= ").bind(since);
        }
        if let Some(until) = filter.until {
            sql.push(" AND at < ").bind(until);
        }
        if let Some(raw) = cursor {
            let before: i64 = decode_cursor(raw)?;
            sql.push(" AND id < ").bind(before);
        }
        let limit = i64::from(limit.max(1));
        sql.push(" ORDER BY id DESC LIMIT ").bind(limit + 1);
        let rows = sql.query().fetch_all(&self.pool).await?;
        let mut items = rows
            .iter()
            .map(audit_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        let next_cursor = if items.len() as i64 > limit {
            items.truncate(limit as usize);
            items.last().map(|e| encode_cursor(&e.id))
        } else {
            None
        };
        Ok(Page { items, next_cursor })
    }

    async fn prune_audit_batch(&self, before_ms: i64, limit: u32) -> Result<u64, StoreError> {
        // The `limit` oldest rows by the primary key (a bounded range read, no index on `at`
        // needed), of which those older than the cut go.
        let done = sqlx::query(
            "DELETE FROM audit_log WHERE id IN (SELECT id FROM \
             (SELECT id, at FROM audit_log ORDER BY id LIMIT $2) oldest WHERE at < $1)",
        )
        .bind(before_ms)
        .bind(i64::from(limit.max(1)))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }
}
