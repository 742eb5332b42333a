//! [`WebhookStore`] over sqlx `Any`.

use async_trait::async_trait;
use serde_json::Value;
use sqlx::any::AnyRow;
use sqlx::{AssertSqlSafe, Row};

use super::super::Page;
use super::super::audit::{Audit, AuditAction, AuditContext};
use super::super::jobs::{JobEnd, JobKind, JobState, Lease};
use super::super::webhooks::*;
use super::audit::append_audit;
use super::jobs::Tx;
use super::{Dialect, SqlMetadata, get_bool, json_column};
use crate::StoreError;
use crate::time::now_ms;

const WEBHOOK_COLUMNS: &str =
    "id, created_by, owner, adapter, url, secret, events, active, created_at";
const EVENT_COLUMNS: &str = "id, kind, adapter, owner, payload, created_at";
const DELIVERY_COLUMNS: &str = "id, delivery_id, webhook_id, event_id, attempt, status, \
     response_code, latency_ms, response_excerpt, error, at";

fn webhook_from_row(row: &AnyRow) -> Result<WebhookRecord, StoreError> {
    let events = json_column(row, "events")?.unwrap_or(Value::Null);
    Ok(WebhookRecord {
        id: row.try_get("id")?,
        created_by: row.try_get("created_by")?,
        owner: row.try_get("owner")?,
        adapter: row.try_get("adapter")?,
        url: row.try_get("url")?,
        secret: row.try_get("secret")?,
        events: serde_json::from_value(events)
            .map_err(|e| StoreError::Corrupt(format!("webhooks.events: {e}")))?,
        active: get_bool(row, "active")?,
        created_at: row.try_get("created_at")?,
    })
}

fn event_from_row(row: &AnyRow) -> Result<EventRecord, StoreError> {
    Ok(EventRecord {
        id: row.try_get("id")?,
        kind: row.try_get("kind")?,
        adapter: row.try_get("adapter")?,
        owner: row.try_get("owner")?,
        payload: json_column(row, "payload")?.unwrap_or(Value::Null),
        created_at: row.try_get("created_at")?,
    })
}

fn delivery_from_row(row: &AnyRow) -> Result<DeliveryRecord, StoreError> {
    let status: String = row.try_get("status")?;
    Ok(DeliveryRecord {
        id: row.try_get("id")?,
        delivery_id: row.try_get("delivery_id")?,
        webhook_id: row.try_get("webhook_id")?,
        event_id: row.try_get("event_id")?,
        attempt: row.try_get("attempt")?,
        status: status.parse()?,
        response_code: row.try_get("response_code")?,
        latency_ms: row.try_get("latency_ms")?,
        response_excerpt: row.try_get("response_excerpt")?,
        error: row.try_get("error")?,
        at: row.try_get("at")?,
    })
}

/// A subscription, read inside `tx`.
async fn webhook_in(tx: &mut Tx, id: &str) -> Result<Option<WebhookRecord>, StoreError> {
    sqlx::query(AssertSqlSafe(format!(
        "SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(&mut **tx)
    .await?
    .as_ref()
    .map(webhook_from_row)
    .transpose()
}

/// A subscription's entry: target its id, scoped to its creator's namespace (whose resource it
/// is). `hook` is the subscription after the change (before it, for a delete); an update's
/// `before` is the `active` flag it changed.
fn hook_entry(
    ctx: &AuditContext,
    action: AuditAction,
    hook: &WebhookRecord,
    reason: Option<&str>,
) -> Audit {
    let state = webhook_audit_state(hook);
    let (before, after) = match action {
        AuditAction::WebhookCreate => (None, Some(state)),
        AuditAction::WebhookDelete => (Some(state), None),
        _ => {
            let mut after = state;
            if let Some(r) = reason {
                after["reason"] = r.into();
            }
            (
                Some(serde_json::json!({ "active": !hook.active })),
                Some(after),
            )
        }
    };
    Audit {
        context: ctx.clone(),
        action,
        target: hook.id.clone(),
        owner: Some(hook.created_by.clone()),
        before,
        after,
    }
}

/// Logs an attempt, unless its subscription was deleted meanwhile.
async fn insert_delivery(tx: &mut Tx, d: &NewDelivery) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO webhook_deliveries (delivery_id, webhook_id, event_id, attempt, status, \
         response_code, latency_ms, response_excerpt, error, at) \
         SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10 WHERE EXISTS (SELECT 1 FROM webhooks WHERE id = $2)",
    )
    .bind(d.delivery_id.as_str())
    .bind(d.webhook_id.as_str())
    .bind(d.event_id)
    .bind(d.attempt)
    .bind(d.status.as_str())
    .bind(d.response_code)
    .bind(d.latency_ms)
    .bind(d.response_excerpt.as_deref())
    .bind(d.error.as_deref())
    .bind(now_ms())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

#[async_trait]
impl WebhookStore for SqlMetadata {
    async fn create_webhook_audited(
        &self,
        new: &NewWebhook,
        max_per_user: i64,
        audit: Option<&AuditContext>,
    ) -> Result<Option<WebhookRecord>, StoreError> {
        let mut tx = self.begin_write().await?;
        let count: i64 = sqlx::query("SELECT COUNT(*) AS n FROM webhooks WHERE created_by = $1")
            .bind(new.created_by.as_str())
            .fetch_one(&mut *tx)
            .await?
            .try_get("n")?;
        if count >= max_per_user {
            return Ok(None);
        }
        let row = sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO webhooks (id, created_by, owner, adapter, url, secret, events, active, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING {WEBHOOK_COLUMNS}"
        )))
        .bind(uuid::Uuid::new_v4().to_string())
        .bind(new.created_by.as_str())
        .bind(new.owner.as_str())
        .bind(new.adapter.as_deref())
        .bind(new.url.as_str())
        .bind(new.secret.as_str())
        .bind(serde_json::to_string(&new.events).unwrap_or_else(|_| "[]".into()))
        .bind(true)
        .bind(now_ms())
        .fetch_one(&mut *tx)
        .await?;
        let record = webhook_from_row(&row)?;
        if let Some(ctx) = audit {
            let entry = hook_entry(ctx, AuditAction::WebhookCreate, &record, None);
            append_audit(&mut tx, &entry).await?;
        }
        tx.commit().await?;
        Ok(Some(record))
    }

    async fn get_webhook(&self, id: &str) -> Result<Option<WebhookRecord>, StoreError> {
        sqlx::query(AssertSqlSafe(format!(
            "SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        .as_ref()
        .map(webhook_from_row)
        .transpose()
    }

    async fn list_webhooks(&self, created_by: &str) -> Result<Vec<WebhookRecord>, StoreError> {
        sqlx::query(AssertSqlSafe(format!(
            "SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE created_by = $1 ORDER BY created_at, id"
        )))
        .bind(created_by)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(webhook_from_row)
        .collect()
    }

    async fn delete_webhook_audited(
        &self,
        id: &str,
        audit: Option<&AuditContext>,
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin_write().await?;
        let before = match audit {
            Some(_) => webhook_in(&mut tx, id).await?,
            None => None,
        };
        sqlx::query("DELETE FROM webhook_deliveries WHERE webhook_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let n = sqlx::query("DELETE FROM webhooks WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if let (Some(ctx), Some(hook), true) = (audit, &before, n > 0) {
            let entry = hook_entry(ctx, AuditAction::WebhookDelete, hook, None);
            append_audit(&mut tx, &entry).await?;
        }
        tx.commit().await?;
        Ok(n > 0)
    }

    async fn set_webhook_active_audited(
        &self,
        id: &str,
        active: bool,
        reason: Option<&str>,
        audit: Option<&AuditContext>,
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin_write().await?;
        let changed = sqlx::query("UPDATE webhooks SET active = $1 WHERE id = $2 AND active = $3")
            .bind(active)
            .bind(id)
            .bind(!active)
            .execute(&mut *tx)
            .await?
            .rows_affected()
            > 0;
        if let (Some(ctx), true) = (audit, changed)
            && let Some(hook) = webhook_in(&mut tx, id).await?
        {
            let entry = hook_entry(ctx, AuditAction::WebhookUpdate, &hook, reason);
            append_audit(&mut tx, &entry).await?;
        }
        tx.commit().await?;
        Ok(changed)
    }

    async fn subscriptions_for(
        &self,
        owner: &str,
        adapter: &str,
    ) -> Result<Vec<WebhookRecord>, StoreError> {
        sqlx::query(AssertSqlSafe(format!(
            "SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE owner = $1 AND active = $2 \
             AND (adapter IS NULL OR adapter = $3) ORDER BY created_at, id"
        )))
        .bind(owner)
        .bind(true)
        .bind(adapter)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(webhook_from_row)
        .collect()
    }

    async fn record_event(
        &self,
        event: &NewEvent,
        deliveries: &[QueuedDelivery],
        max_attempts: i64,
    ) -> Result<EventRecord, StoreError> {
        let now = now_ms();
        let mut tx = self.begin_write().await?;
        let row = sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO events (kind, adapter, owner, payload, created_at) \
             VALUES ($1, $2, $3, $4, $5) RETURNING {EVENT_COLUMNS}"
        )))
        .bind(event.kind.as_str())
        .bind(event.adapter.as_str())
        .bind(event.owner.as_str())
        .bind(event.payload.to_string())
        .bind(now)
        .fetch_one(&mut *tx)
        .await?;
        let record = event_from_row(&row)?;
        for d in deliveries {
            let spec = delivery_spec(&d.webhook_id, record.id).to_string();
            sqlx::query(
                "INSERT INTO jobs (id, kind, spec, spec_sha256, state, max_attempts, run_after, \
                 created_by, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $7)",
            )
            .bind(uuid::Uuid::new_v4().to_string())
            .bind(JobKind::Webhook.as_str())
            .bind(spec)
            .bind("")
            .bind(JobState::Queued.as_str())
            .bind(max_attempts)
            .bind(now)
            .bind(d.created_by.as_str())
            .execute(&mut *tx)
            .await?;
        }
        if !deliveries.is_empty() {
            self.notify_workers(&mut tx).await?;
        }
        tx.commit().await?;
        Ok(record)
    }

    async fn get_event(&self, id: i64) -> Result<Option<EventRecord>, StoreError> {
        sqlx::query(AssertSqlSafe(format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        .as_ref()
        .map(event_from_row)
        .transpose()
    }

    async fn record_delivery(&self, d: &NewDelivery) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        insert_delivery(&mut tx, d).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn finish_delivery(
        &self,
        lease: &Lease,
        end: &JobEnd,
        d: &NewDelivery,
    ) -> Result<Option<JobState>, StoreError> {
        let mut tx = self.begin_write().await?;
        if self.dialect == Dialect::Postgres {
            // Not waiting for the WAL flush: a crash may lose this commit, and then the attempt
            // is made again, which at-least-once delivery allows (its log row is lost too).
            sqlx::query("SET LOCAL synchronous_commit TO OFF")
                .execute(&mut *tx)
                .await?;
        }
        insert_delivery(&mut tx, d).await?;
        let state = self.end_job_in(&mut tx, lease, end).await?;
        tx.commit().await?;
        Ok(state)
    }

    async fn list_deliveries(
        &self,
        webhook_id: &str,
        limit: u32,
        before: Option<i64>,
    ) -> Result<Page<DeliveryRecord>, StoreError> {
        let limit = i64::from(limit.max(1));
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE webhook_id = $1 AND id < $2 \
             ORDER BY id DESC LIMIT $3"
        )))
        .bind(webhook_id)
        .bind(before.unwrap_or(i64::MAX))
        .bind(limit + 1)
        .fetch_all(&self.pool)
        .await?;
        let mut items = rows
            .iter()
            .map(delivery_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        let next_cursor = if items.len() as i64 > limit {
            items.truncate(limit as usize);
            items.last().map(|d| d.id.to_string())
        } else {
            None
        };
        Ok(Page { items, next_cursor })
    }

    async fn prune_webhook_history(
        &self,
        before_ms: i64,
        limit: u32,
    ) -> Result<PrunedWebhookHistory, StoreError> {
        let limit = i64::from(limit.max(1));
        let webhook = JobKind::Webhook.as_str();
        let mut tx = self.begin_write().await?;
        let deliveries = sqlx::query(
            "DELETE FROM webhook_deliveries WHERE id IN \
             (SELECT id FROM webhook_deliveries WHERE at < $1 ORDER BY id LIMIT $2)",
        )
        .bind(before_ms)
        .bind(limit)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let jobs = sqlx::query(
            "DELETE FROM jobs WHERE id IN (SELECT id FROM jobs WHERE kind = $1 \
             AND state IN ($2, $3, $4) AND finished_at < $5 ORDER BY finished_at LIMIT $6)",
        )
        .bind(webhook)
        .bind(JobState::Succeeded.as_str())
        .bind(JobState::Failed.as_str())
        .bind(JobState::Cancelled.as_str())
        .bind(before_ms)
        .bind(limit)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        // The oldest event a queued or running delivery still needs: it and every later one stay.
        let pending = sqlx::query("SELECT spec FROM jobs WHERE kind = $1 AND state IN ($2, $3)")
            .bind(webhook)
            .bind(JobState::Queued.as_str())
            .bind(JobState::Running.as_str())
            .fetch_all(&mut *tx)
            .await?;
        let mut keep_from = i64::MAX;
        for row in &pending {
            let event = json_column(row, "spec")?
                .and_then(|spec| spec.get("event_id").and_then(Value::as_i64));
            match event {
                Some(id) => keep_from = keep_from.min(id),
                // A delivery whose event cannot be read: keep every event.
                None => keep_from = i64::MIN,
            }
        }
        let events = sqlx::query(
            "DELETE FROM events WHERE id IN \
             (SELECT id FROM events WHERE created_at < $1 AND id < $2 ORDER BY id LIMIT $3)",
        )
        .bind(before_ms)
        .bind(keep_from)
        .bind(limit)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(PrunedWebhookHistory {
            events,
            deliveries,
            jobs,
        })
    }
}
