//! Work the application runs beside its requests, owned by it and stopped with it: job workers,
//! the profile reconciler, and the periodic sweeps of abandoned staged uploads and unreferenced
//! blobs, and the retention of the webhook history and the audit log.

use std::sync::Arc;
use std::time::Duration;

use quiver_store::Store;
use quiver_store::meta::audit::AUDIT_PRUNE_BATCH;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::jobs::{WorkerOptions, Workers};
use crate::metrics::Metrics;
use crate::routing::{Routing, reconcile};

/// A staged upload of no live owner untouched this long is abandoned. Uploads of a process that
/// claimed an owner id (`serve`, `worker`) are removed as soon as it is known dead instead
/// (`quiver_store::staging`): at the next start on the same host.
pub const STAGED_UPLOAD_MAX_AGE: Duration = Duration::from_secs(24 * 3600);
/// How often staged uploads of dead owners are looked for (and once at start).
const STAGED_SWEEP_EVERY: Duration = Duration::from_secs(60);
/// An unreferenced blob younger than this is left alone: an upload or a job may be about to
/// commit a reference to it.
pub const BLOB_GRACE: Duration = Duration::from_secs(3600);
/// Batches of webhook history one sweep deletes at most (see [`prune_webhook_history`]).
const PRUNE_BATCHES: usize = 10;
/// Batches of audit entries one sweep deletes at most (see [`prune_audit_log`]).
const AUDIT_PRUNE_BATCHES: usize = 100;
/// How often the sweeps run (and once at start).
const SWEEP_EVERY: Duration = Duration::from_secs(3600);

pub struct Background {
    store: Store,
    workers: Workers,
    deliverers: crate::events::deliver::Deliverers,
    sweeps: Option<JoinHandle<()>>,
    reconciler: Option<JoinHandle<()>>,
}

impl Background {
    /// Starts the workers, the webhook workers, the profile reconciler (with an embedder) and,
    /// when `sweep` is set, the sweeps.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        store: &Store,
        workers: WorkerOptions,
        webhooks: crate::events::WebhookOptions,
        audit_retention_days: u32,
        routing: Arc<Routing>,
        wake: Arc<Notify>,
        metrics: Arc<Metrics>,
        sweep: bool,
    ) -> std::io::Result<Self> {
        let reconciler = reconcile::start(store.clone(), routing.clone(), wake.clone());
        let retention_days = webhooks.retention_days;
        let deliverers =
            crate::events::deliver::Deliverers::start(store.clone(), webhooks, metrics.clone());
        let workers = Workers::start(store.clone(), workers, routing, wake, metrics)?;
        let sweeps = sweep.then(|| {
            tokio::spawn(sweep_forever(
                store.clone(),
                retention_days,
                audit_retention_days,
            ))
        });
        Ok(Self {
            store: store.clone(),
            workers,
            deliverers,
            sweeps,
            reconciler,
        })
    }

    /// Stops the sweeps and the workers (jobs in hand are handed back to the queue), then
    /// removes what this process still has staged (call after the HTTP server stopped).
    pub async fn shutdown(self) {
        for task in [self.sweeps, self.reconciler].into_iter().flatten() {
            task.abort();
        }
        self.workers.shutdown().await;
        self.deliverers.shutdown().await;
        self.store.blobs.release_staging().await;
    }
}

async fn sweep_forever(store: Store, webhook_retention_days: u32, audit_retention_days: u32) {
    let mut every = tokio::time::interval(STAGED_SWEEP_EVERY);
    let mut last_full: Option<std::time::Instant> = None;
    loop {
        every.tick().await;
        if last_full.is_none_or(|t| t.elapsed() >= SWEEP_EVERY) {
            last_full = Some(std::time::Instant::now());
            sweep_once(&store, BLOB_GRACE).await;
            let now = quiver_store::time::now_ms();
            prune_webhook_history(&store, webhook_retention_days, now).await;
            prune_audit_log(&store, audit_retention_days, now).await;
        } else {
            sweep_staged(&store).await;
        }
    }
}

async fn sweep_staged(store: &Store) {
    match store.blobs.sweep_staged(STAGED_UPLOAD_MAX_AGE).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(removed = n, "removed abandoned staged uploads"),
        Err(e) => tracing::warn!(error = %e, "could not sweep staged uploads"),
    }
}

/// One pass of the sweeps (and of filling the listing facets of versions published before they
/// existed); failures are logged.
pub async fn sweep_once(store: &Store, blob_grace: Duration) {
    sweep_staged(store).await;
    match crate::facets::backfill(store).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(versions = n, "filled the listing facets of older versions"),
        Err(e) => tracing::warn!(error = %e, "could not fill the listing facets"),
    }
    match store.sweep_unreferenced_blobs(blob_grace).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(removed = n, "removed unreferenced blobs"),
        Err(e) => tracing::warn!(error = %e, "could not sweep unreferenced blobs"),
    }
}

/// Deletes events, delivery attempts and finished deliveries older than `retention_days`
/// (0: none) as of `now_ms`, in batches of at most [`crate::events::PRUNE_BATCH`] rows of each
/// (each batch its own short transaction), at most [`PRUNE_BATCHES`] batches per sweep: a
/// backlog is worked off over the following sweeps. Returns the rows deleted; failures are
/// logged.
pub async fn prune_webhook_history(store: &Store, retention_days: u32, now_ms: i64) -> u64 {
    if retention_days == 0 {
        return 0;
    }
    let before = now_ms.saturating_sub(i64::from(retention_days) * 86_400_000);
    let mut total = 0;
    for _ in 0..PRUNE_BATCHES {
        match store
            .meta
            .prune_webhook_history(before, crate::events::PRUNE_BATCH)
            .await
        {
            Ok(pruned) => {
                total += pruned.total();
                let full = u64::from(crate::events::PRUNE_BATCH);
                if pruned.events < full && pruned.deliveries < full && pruned.jobs < full {
                    break;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not prune the webhook history");
                break;
            }
        }
    }
    if total > 0 {
        tracing::info!(rows = total, retention_days, "pruned the webhook history");
    }
    total
}

/// Deletes audit log entries older than `retention_days` (0: none, keep forever) as of
/// `now_ms`, in batches of [`AUDIT_PRUNE_BATCH`] entries, each its own short statement, at most
/// [`AUDIT_PRUNE_BATCHES`] batches (500,000 entries) per sweep: a backlog is worked off over the
/// following sweeps. Returns the entries deleted; failures are logged.
pub async fn prune_audit_log(store: &Store, retention_days: u32, now_ms: i64) -> u64 {
    if retention_days == 0 {
        return 0;
    }
    let before = now_ms.saturating_sub(i64::from(retention_days) * 86_400_000);
    let mut total = 0;
    for _ in 0..AUDIT_PRUNE_BATCHES {
        match store
            .meta
            .prune_audit_batch(before, AUDIT_PRUNE_BATCH)
            .await
        {
            Ok(n) => {
                total += n;
                if n < u64::from(AUDIT_PRUNE_BATCH) {
                    break;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not prune the audit log");
                break;
            }
        }
    }
    if total > 0 {
        tracing::info!(entries = total, retention_days, "pruned the audit log");
    }
    total
}
