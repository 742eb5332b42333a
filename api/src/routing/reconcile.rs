//! Keeps profiles up to date: queues an `embed` job for every ready version whose samples (or,
//! without samples, model card) have no profile of this process's embedder (new, or made by
//! another embedder: profiles are recomputed, never mixed). A card with nothing to embed gets a
//! profile of no rows from its job (`jobs::embed`), so it is not found stale again.

use std::sync::Arc;
use std::time::Duration;

use quiver_store::meta::DEFAULT_MAX_ATTEMPTS;
use quiver_store::{JobKind, JobRecord, NewJob, ProfileSource, Store, StoreError};
use sha2::{Digest, Sha256};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::Routing;
use crate::jobs::embed::{EmbedSource, EmbedSpec};

/// How often a process with an embedder looks for stale profiles (it also looks at start and
/// right after publishing a version with samples or a card).
pub const EVERY: Duration = Duration::from_secs(15);
/// Jobs queued per look at most.
const BATCH: u32 = 500;

/// Starts the reconciler when this process has an embedder.
pub fn start(store: Store, routing: Arc<Routing>, job_wake: Arc<Notify>) -> Option<JoinHandle<()>> {
    routing.options.embedder_id()?;
    Some(tokio::spawn(async move {
        let Some(embedder) = routing.options.embedder_id().map(str::to_owned) else {
            return;
        };
        loop {
            match reconcile_once(&store, &embedder).await {
                Ok(0) => {}
                Ok(queued) => {
                    tracing::info!(queued, embedder = %embedder, "embed jobs queued for stale profiles");
                    job_wake.notify_waiters();
                }
                Err(e) => tracing::warn!(error = %e, "could not look for stale profiles"),
            }
            tokio::select! {
                _ = tokio::time::sleep(routing.options.reconcile_every) => {}
                _ = routing.reconcile.notified() => {}
            }
        }
    }))
}

/// Queues the embed jobs of one look; returns how many were new.
pub async fn reconcile_once(store: &Store, embedder: &str) -> Result<usize, StoreError> {
    let mut queued = 0;
    for stale in store.meta.stale_profiles(embedder, BATCH).await? {
        let spec = EmbedSpec {
            version_id: stale.version_id,
            version: stale.version,
            samples_sha256: stale.file_sha256,
            embedder: embedder.to_string(),
            source: match stale.source {
                ProfileSource::Card => EmbedSource::Card,
                _ => EmbedSource::Samples,
            },
        };
        // One job per (version, samples, embedder, stale profile): looking again finds the
        // same job; a profile that goes stale again later gets a new one.
        let key = format!(
            "embed:{}:{}:{}:{}",
            spec.version_id,
            &spec.samples_sha256[..16.min(spec.samples_sha256.len())],
            stale.profile_updated_at.unwrap_or(0),
            embedder
        );
        let (_, created) = enqueue_embed(store, &spec, &stale.created_by, Some(key)).await?;
        queued += usize::from(created);
    }
    Ok(queued)
}

/// Queues an `embed` job (owned by `created_by`, who sees it in their job list).
pub async fn enqueue_embed(
    store: &Store,
    spec: &EmbedSpec,
    created_by: &str,
    idempotency_key: Option<String>,
) -> Result<(JobRecord, bool), StoreError> {
    let version_id = spec.version_id;
    let spec = serde_json::to_value(spec).map_err(|e| StoreError::Invalid(e.to_string()))?;
    let spec_sha256 = hex::encode(Sha256::digest(spec.to_string().as_bytes()));
    store
        .meta
        .enqueue_job(&NewJob {
            kind: JobKind::Embed,
            spec,
            spec_sha256,
            created_by: created_by.to_string(),
            idempotency_key,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            subject_version_id: Some(version_id),
        })
        .await
}
