//! Events and webhooks: what happened to an adapter, recorded once and delivered to the
//! subscriptions that may see it (docs/webhooks.md).
//!
//! Every front door and the job workers call one function, [`emit`], right after their change
//! has committed. It stores the event (one global sequence: the event's `id`) and, in the same
//! transaction, one `webhook` job per subscription whose filter takes the event and whose
//! creator may see the adapter. The window between the change's commit and the event's is not
//! transactional: a process that dies between the two loses the event (documented).
//!
//! Deliveries run on their own pool of workers ([`deliver::start`]), which claim only `webhook`
//! jobs, so a long merge never delays them. Each attempt is signed ([`sign`]), sent only to an
//! address that passed the SSRF rules ([`target`]) and logged; failures are retried with
//! exponential backoff ([`retry_delay_ms`]).

pub mod deliver;
pub mod sign;
pub mod target;

use std::time::Duration;

use quiver_store::{AdapterRecord, NewEvent, QueuedDelivery, Store, WebhookRecord};
use serde_json::Value;

/// The event types (a closed set: a subscription's filter names only these).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    VersionPublished,
    AliasMoved,
    AdapterUpdated,
    AdapterDeleted,
    JobFinished,
}

impl EventKind {
    pub const ALL: [EventKind; 5] = [
        EventKind::VersionPublished,
        EventKind::AliasMoved,
        EventKind::AdapterUpdated,
        EventKind::AdapterDeleted,
        EventKind::JobFinished,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::VersionPublished => "version.published",
            EventKind::AliasMoved => "alias.moved",
            EventKind::AdapterUpdated => "adapter.updated",
            EventKind::AdapterDeleted => "adapter.deleted",
            EventKind::JobFinished => "job.finished",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// The type of the test event `POST /webhooks/{id}/ping` sends: not a filterable type, every
/// subscription takes it.
pub const PING: &str = "ping";

/// Attempts of one delivery before it fails for good.
pub const MAX_ATTEMPTS: i64 = 15;
/// The first retry's delay; each later one doubles, up to [`RETRY_CAP_FACTOR`] times it.
pub const DEFAULT_RETRY_BASE_MS: u64 = 30_000;
/// The longest delay as a multiple of the base: 30 s × 120 = 1 h.
pub const RETRY_CAP_FACTOR: u64 = 120;
/// Default time to connect and to get a whole answer.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_TIMEOUT_MS: u64 = 10_000;
/// Default `--webhook-retention-days`.
pub const DEFAULT_RETENTION_DAYS: u32 = 30;
/// The longest `--webhook-retention-days` (about 100 years).
pub const MAX_RETENTION_DAYS: u32 = 36_500;
/// Rows of each kind (events, attempts, finished deliveries) one prune deletes at most.
pub const PRUNE_BATCH: u32 = 10_000;
/// Default webhook workers per process.
pub const DEFAULT_WEBHOOK_WORKERS: usize = 4;

/// The delay before the retry that follows attempt `attempt` (1-based): base × 2^(attempt-1),
/// at most base × [`RETRY_CAP_FACTOR`]. With the 30 s default: 30 s, 1, 2, 4, 8, 16, 32 min,
/// then 1 h; 15 attempts span about 8 h.
pub fn retry_delay_ms(base_ms: u64, attempt: i64) -> i64 {
    let shift = attempt.clamp(1, 20) as u32 - 1;
    let delay = base_ms
        .saturating_mul(1u64 << shift)
        .min(base_ms.saturating_mul(RETRY_CAP_FACTOR));
    i64::try_from(delay).unwrap_or(i64::MAX)
}

/// How this process delivers webhooks (`serve` and `worker`).
#[derive(Clone, Debug)]
pub struct WebhookOptions {
    /// Delivery workers in this process (0: none).
    pub workers: usize,
    /// Deliver to (and accept subscriptions for) loopback, private and link-local addresses.
    pub allow_private: bool,
    /// The first retry's delay (tests shorten it).
    pub retry_base_ms: u64,
    /// The whole attempt's time limit (connecting: at most 5 s of it).
    pub timeout_ms: u64,
    /// Events, delivery attempts and finished deliveries older than this many days are pruned
    /// by the sweep (0: kept forever).
    pub retention_days: u32,
}

impl Default for WebhookOptions {
    fn default() -> Self {
        Self {
            workers: DEFAULT_WEBHOOK_WORKERS,
            allow_private: false,
            retry_base_ms: DEFAULT_RETRY_BASE_MS,
            timeout_ms: DEFAULT_TIMEOUT_MS,
            retention_days: DEFAULT_RETENTION_DAYS,
        }
    }
}

/// Wakes this process's idle webhook workers when an event is recorded here (other processes'
/// workers learn of it from Postgres notifications or by polling).
pub(crate) static WAKE: tokio::sync::Notify = tokio::sync::Notify::const_new();

/// What an event is about, as far as visibility goes.
#[derive(Clone, Debug)]
pub struct Subject {
    pub owner: String,
    pub name: String,
    pub private: bool,
}

impl Subject {
    pub fn of(adapter: &AdapterRecord) -> Self {
        Self {
            owner: adapter.owner.clone(),
            name: adapter.name.clone(),
            private: adapter.private,
        }
    }

    pub fn repo(&self) -> String {
        format!("{}/{}", self.owner, self.name)
    }
}

/// Whether the subscription's creator may see an adapter of `owner` with this visibility: public
/// ones, their own, and their organisations' (read now, so a member removed from an
/// organisation stops receiving its private events). An admin's subscription sees no more than
/// its user (the token that made it may be revoked).
pub async fn may_see(
    meta: &dyn quiver_store::MetadataStore,
    hook: &WebhookRecord,
    owner: &str,
    private: bool,
) -> Result<bool, quiver_store::StoreError> {
    if !private || hook.created_by == owner {
        return Ok(true);
    }
    Ok(meta
        .memberships(&hook.created_by)
        .await?
        .iter()
        .any(|m| m.org == owner))
}

/// Whether the subscription's filter takes this event type.
pub fn wants(hook: &WebhookRecord, kind: EventKind) -> bool {
    hook.events.is_empty() || hook.events.iter().any(|e| e == kind.as_str())
}

/// Records an event and queues its deliveries. Called after the change committed; a failure
/// is logged, never the caller's error (the change itself succeeded).
pub async fn emit(store: &Store, kind: EventKind, subject: &Subject, data: Value) {
    if let Err(e) = try_emit(store, kind, subject, data).await {
        tracing::warn!(event = kind.as_str(), adapter = %subject.repo(), error = %e, "could not record an event");
    }
}

async fn try_emit(
    store: &Store,
    kind: EventKind,
    subject: &Subject,
    data: Value,
) -> Result<(), quiver_store::StoreError> {
    let repo = subject.repo();
    let hooks = store.meta.subscriptions_for(&subject.owner, &repo).await?;
    let mut deliveries = Vec::new();
    for h in &hooks {
        if wants(h, kind) && may_see(&*store.meta, h, &subject.owner, subject.private).await? {
            deliveries.push(QueuedDelivery {
                webhook_id: h.id.clone(),
                created_by: h.created_by.clone(),
            });
        }
    }
    let event = store
        .meta
        .record_event(
            &NewEvent {
                kind: kind.as_str().to_string(),
                adapter: repo,
                owner: subject.owner.clone(),
                payload: data,
            },
            &deliveries,
            MAX_ATTEMPTS,
        )
        .await?;
    tracing::debug!(event = event.id, kind = kind.as_str(), adapter = %event.adapter, deliveries = deliveries.len(), "event recorded");
    if !deliveries.is_empty() {
        WAKE.notify_waiters();
    }
    Ok(())
}

/// Records a `ping` event for one subscription and queues its delivery to it alone (no filter
/// or visibility applies: it carries nothing about an adapter). Returns the delivery's job and
/// the event's id. `adapter` is the subscription's adapter, or empty (`null` in the body) for an
/// owner's subscription.
pub async fn ping(
    store: &Store,
    hook: &WebhookRecord,
) -> Result<(quiver_store::JobRecord, i64), quiver_store::StoreError> {
    let event = store
        .meta
        .record_event(
            &NewEvent {
                kind: PING.to_string(),
                adapter: hook.adapter.clone().unwrap_or_default(),
                owner: hook.owner.clone(),
                payload: serde_json::json!({ "webhook_id": hook.id }),
            },
            &[],
            MAX_ATTEMPTS,
        )
        .await?;
    let job = deliver::redeliver(store, hook, event.id).await?;
    Ok((job, event.id))
}

/// The JSON body sent for an event.
pub fn body(event: &quiver_store::EventRecord) -> Value {
    let adapter = match event.adapter.as_str() {
        "" => Value::Null,
        a => Value::from(a),
    };
    serde_json::json!({
        "id": event.id,
        "type": event.kind,
        "created_at": event.created_at,
        "adapter": adapter,
        "owner": event.owner,
        "data": event.payload,
    })
}

/// `version.published`.
pub async fn version_published(
    store: &Store,
    adapter: &AdapterRecord,
    version: &quiver_store::VersionRecord,
) {
    let data = serde_json::json!({
        "version": version.number,
        "revision": version.revision,
        "created_by": version.created_by,
    });
    emit(
        store,
        EventKind::VersionPublished,
        &Subject::of(adapter),
        data,
    )
    .await;
}

/// `alias.moved`: `from`/`to` are `(version, revision)`; `to` is `None` when the alias was
/// removed, `from` when it was created.
pub async fn alias_moved(
    store: &Store,
    adapter: &AdapterRecord,
    alias: &str,
    from: Option<quiver_store::AliasTarget>,
    to: Option<quiver_store::AliasTarget>,
) {
    let side = |v: Option<quiver_store::AliasTarget>| {
        v.map(|t| serde_json::json!({"version": t.number, "revision": t.revision}))
    };
    let data = serde_json::json!({ "alias": alias, "from": side(from), "to": side(to) });
    emit(store, EventKind::AliasMoved, &Subject::of(adapter), data).await;
}

/// `adapter.updated`, when a PATCH changed something: each changed field with `from` and `to`.
/// Delivered to whoever may see the adapter as it is now: a public adapter made private is
/// not announced to those who no longer see it (delivery checks visibility again anyway).
pub async fn adapter_updated(store: &Store, before: &AdapterRecord, after: &AdapterRecord) {
    let mut changed = serde_json::Map::new();
    if before.private != after.private {
        changed.insert(
            "private".into(),
            serde_json::json!({"from": before.private, "to": after.private}),
        );
    }
    if before.description != after.description {
        changed.insert(
            "description".into(),
            serde_json::json!({"from": before.description, "to": after.description}),
        );
    }
    if before.tags != after.tags {
        changed.insert(
            "tags".into(),
            serde_json::json!({"from": before.tags, "to": after.tags}),
        );
    }
    if changed.is_empty() {
        return;
    }
    emit(
        store,
        EventKind::AdapterUpdated,
        &Subject::of(after),
        serde_json::json!({ "changed": changed }),
    )
    .await;
}

/// `adapter.deleted`, to the subscribers who could see it before (`adapter` as it was).
pub async fn adapter_deleted(store: &Store, adapter: &AdapterRecord) {
    emit(
        store,
        EventKind::AdapterDeleted,
        &Subject::of(adapter),
        serde_json::json!({}),
    )
    .await;
}

/// `job.finished` for a merge, compression or embed job that reached `succeeded`, `failed` or
/// `cancelled` — however it got there: its worker's end, a cancel, or the lease reaper (a worker
/// killed for good). About the job's output adapter (an embed job: the adapter it profiled). An
/// output that does not exist (yet) counts as private to its owner.
pub async fn job_finished(store: &Store, job: &quiver_store::JobRecord) {
    use quiver_store::JobKind;
    let pointer = match job.kind {
        JobKind::Merge | JobKind::Compress => "/output/adapter",
        JobKind::Embed => "/version/adapter",
        _ => return,
    };
    if !job.state.is_terminal() {
        return;
    }
    let Some(output) = job
        .spec
        .pointer(pointer)
        .and_then(Value::as_str)
        .and_then(|s| s.parse::<quiver_store::RepoId>().ok())
    else {
        tracing::warn!(job = %job.id, "job.finished: the job's spec names no output adapter");
        return;
    };
    let subject = match store.meta.get_adapter(&output).await {
        Ok(Some(a)) => Subject::of(&a),
        _ => Subject {
            owner: output.owner.clone(),
            name: output.name.clone(),
            private: true,
        },
    };
    let data = serde_json::json!({
        "job": job.id,
        "kind": job.kind.as_str(),
        "state": job.state.as_str(),
        "result": job.result.as_ref().map(|(a, n)| serde_json::json!({"adapter": a, "version": n})),
        "error": job.error,
    });
    emit(store, EventKind::JobFinished, &subject, data).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_retry_schedule_doubles_to_an_hour_and_spans_about_eight_hours() {
        let base = DEFAULT_RETRY_BASE_MS;
        let delays: Vec<i64> = (1..MAX_ATTEMPTS).map(|a| retry_delay_ms(base, a)).collect();
        assert_eq!(
            &delays[..8],
            &[
                30_000, 60_000, 120_000, 240_000, 480_000, 960_000, 1_920_000, 3_600_000
            ]
        );
        assert!(delays[8..].iter().all(|d| *d == 3_600_000));
        let total: i64 = delays.iter().sum();
        assert_eq!(total, 29_010_000); // 8 h 3 min 30 s
    }

    #[test]
    fn event_names_round_trip() {
        for k in EventKind::ALL {
            assert_eq!(EventKind::parse(k.as_str()), Some(k));
        }
        assert_eq!(EventKind::parse("version.deleted"), None);
    }
}
