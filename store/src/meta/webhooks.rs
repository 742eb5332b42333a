//! Events and webhook subscriptions: the records and the [`WebhookStore`] capability.
//!
//! An event is stored with the delivery jobs it needs (kind `webhook`, one per subscription) in
//! one transaction, so a recorded event is never without its deliveries. Every delivery attempt
//! appends a row to the delivery log.

use async_trait::async_trait;
use serde_json::Value;

use super::{AuditContext, Page};
use crate::StoreError;

/// A stored event. `id` is one global, increasing sequence.
#[derive(Clone, Debug)]
pub struct EventRecord {
    pub id: i64,
    pub kind: String,
    /// `owner/name`.
    pub adapter: String,
    pub owner: String,
    pub payload: Value,
    pub created_at: i64,
}

#[derive(Clone, Debug)]
pub struct NewEvent {
    pub kind: String,
    pub adapter: String,
    pub owner: String,
    /// The event's `data` (the body's other fields come from the row).
    pub payload: Value,
}

#[derive(Clone, Debug)]
pub struct WebhookRecord {
    pub id: String,
    pub created_by: String,
    pub owner: String,
    /// `owner/name`; `None`: every adapter of `owner`.
    pub adapter: Option<String>,
    pub url: String,
    pub secret: String,
    /// Event types; empty: all.
    pub events: Vec<String>,
    pub active: bool,
    pub created_at: i64,
}

#[derive(Clone, Debug)]
pub struct NewWebhook {
    pub created_by: String,
    pub owner: String,
    pub adapter: Option<String>,
    pub url: String,
    pub secret: String,
    pub events: Vec<String>,
}

string_enum!(
    /// How one delivery attempt ended.
    DeliveryStatus { Delivered = "delivered", Failed = "failed", Skipped = "skipped" }
);

/// One delivery attempt, as logged.
#[derive(Clone, Debug)]
pub struct DeliveryRecord {
    pub id: i64,
    /// The delivery (the job) this attempt belongs to: the `Quiver-Delivery` header.
    pub delivery_id: String,
    pub webhook_id: String,
    pub event_id: i64,
    pub attempt: i64,
    pub status: DeliveryStatus,
    pub response_code: Option<i64>,
    pub latency_ms: i64,
    pub response_excerpt: Option<String>,
    pub error: Option<String>,
    pub at: i64,
}

#[derive(Clone, Debug)]
pub struct NewDelivery {
    pub delivery_id: String,
    pub webhook_id: String,
    pub event_id: i64,
    pub attempt: i64,
    pub status: DeliveryStatus,
    pub response_code: Option<i64>,
    pub latency_ms: i64,
    pub response_excerpt: Option<String>,
    pub error: Option<String>,
}

/// A delivery job to queue with an event: its spec and who it is for.
#[derive(Clone, Debug)]
pub struct QueuedDelivery {
    pub webhook_id: String,
    pub created_by: String,
}

#[async_trait]
pub trait WebhookStore: Send + Sync {
    /// Inserts the subscription unless `created_by` already has `max_per_user` (then `None`).
    async fn create_webhook(
        &self,
        new: &NewWebhook,
        max_per_user: i64,
    ) -> Result<Option<WebhookRecord>, StoreError> {
        self.create_webhook_audited(new, max_per_user, None).await
    }
    /// [`WebhookStore::create_webhook`], appending a `webhook.create` entry by `audit` in the
    /// same transaction when it was created (see [`webhook_audit_state`]; never the secret).
    async fn create_webhook_audited(
        &self,
        new: &NewWebhook,
        max_per_user: i64,
        audit: Option<&AuditContext>,
    ) -> Result<Option<WebhookRecord>, StoreError>;
    async fn get_webhook(&self, id: &str) -> Result<Option<WebhookRecord>, StoreError>;
    /// A user's subscriptions, oldest first.
    async fn list_webhooks(&self, created_by: &str) -> Result<Vec<WebhookRecord>, StoreError>;
    /// Deletes it with its delivery log; `false` when there was none.
    async fn delete_webhook(&self, id: &str) -> Result<bool, StoreError> {
        self.delete_webhook_audited(id, None).await
    }
    /// [`WebhookStore::delete_webhook`], appending a `webhook.delete` entry by `audit` in the
    /// same transaction when there was one to delete.
    async fn delete_webhook_audited(
        &self,
        id: &str,
        audit: Option<&AuditContext>,
    ) -> Result<bool, StoreError>;
    async fn set_webhook_active(&self, id: &str, active: bool) -> Result<(), StoreError> {
        self.set_webhook_active_audited(id, active, None, None)
            .await
            .map(|_| ())
    }
    /// [`WebhookStore::set_webhook_active`], appending a `webhook.update` entry by `audit` (a
    /// context without actor for the service's own change) in the same transaction when the
    /// flag changed, with `reason` in its `after`; whether it changed.
    async fn set_webhook_active_audited(
        &self,
        id: &str,
        active: bool,
        reason: Option<&str>,
        audit: Option<&AuditContext>,
    ) -> Result<bool, StoreError>;
    /// Active subscriptions to this adapter or to its whole owner.
    async fn subscriptions_for(
        &self,
        owner: &str,
        adapter: &str,
    ) -> Result<Vec<WebhookRecord>, StoreError>;
    /// Stores the event and, in the same transaction, one queued `webhook` job per delivery
    /// (`max_attempts` each); returns the event with its id.
    async fn record_event(
        &self,
        event: &NewEvent,
        deliveries: &[QueuedDelivery],
        max_attempts: i64,
    ) -> Result<EventRecord, StoreError>;
    async fn get_event(&self, id: i64) -> Result<Option<EventRecord>, StoreError>;
    async fn record_delivery(&self, d: &NewDelivery) -> Result<(), StoreError>;
    /// Logs an attempt and ends its job (as `JobStore::end_job`) in one transaction; `None`
    /// when the lease was lost (the attempt is logged all the same).
    async fn finish_delivery(
        &self,
        lease: &super::Lease,
        end: &super::JobEnd,
        d: &NewDelivery,
    ) -> Result<Option<super::JobState>, StoreError>;
    /// A subscription's delivery attempts, newest first; `before`: an attempt id from the
    /// previous page.
    async fn list_deliveries(
        &self,
        webhook_id: &str,
        limit: u32,
        before: Option<i64>,
    ) -> Result<Page<DeliveryRecord>, StoreError>;
    /// Deletes, at most `limit` rows of each, delivery attempts logged before `before_ms`,
    /// finished `webhook` jobs that finished before it, and events recorded before it that no
    /// queued or running delivery still needs (an event at or after the oldest one a pending
    /// delivery names is kept). The clock is the caller's.
    async fn prune_webhook_history(
        &self,
        before_ms: i64,
        limit: u32,
    ) -> Result<PrunedWebhookHistory, StoreError>;
}

/// What a webhook audit entry shows of a subscription: its scope, events, state and the URL's
/// origin only (`https://host:port`: webhook URLs often carry a credential in their path or
/// query), never the signing secret.
pub fn webhook_audit_state(h: &WebhookRecord) -> Value {
    serde_json::json!({
        "owner": h.owner,
        "adapter": h.adapter,
        "url": url_origin(&h.url),
        "events": h.events,
        "active": h.active,
    })
}

/// `scheme://host[:port]` of a URL (nothing after the authority, no user info).
fn url_origin(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    format!("{scheme}://{host}")
}

/// What [`WebhookStore::prune_webhook_history`] deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PrunedWebhookHistory {
    pub events: u64,
    pub deliveries: u64,
    pub jobs: u64,
}

impl PrunedWebhookHistory {
    pub fn total(&self) -> u64 {
        self.events + self.deliveries + self.jobs
    }
}

/// The spec of a `webhook` job.
pub fn delivery_spec(webhook_id: &str, event_id: i64) -> Value {
    serde_json::json!({ "webhook_id": webhook_id, "event_id": event_id })
}
