//! Jobs as every front door sees them: queuing a checked request, and a caller's own jobs.

use quiver_store::meta::DEFAULT_MAX_ATTEMPTS;
use quiver_store::{JobKind, JobRecord, JobState, NewJob, Store, Viewer};
use serde_json::Value;

use crate::app::job_request;
use crate::app::resources::JobView;
use crate::auth::Caller;
use crate::error::{ApiError, ErrorCode};
use crate::state::AppState;

/// Checks a job request as `POST /merges` or `/compressions` would and queues it; returns the
/// job and whether it is new (an idempotency key may name an existing one). Also used by route
/// fusions.
pub async fn queue_job(
    state: &AppState,
    caller: &Caller,
    kind: JobKind,
    body: Value,
) -> Result<(JobRecord, bool), ApiError> {
    queue_job_audited(state, caller, kind, body, None).await
}

/// [`queue_job`], appending a `job.submit` audit entry by `audit` with the new job.
pub async fn queue_job_audited(
    state: &AppState,
    caller: &Caller,
    kind: JobKind,
    body: Value,
    audit: Option<&quiver_store::AuditContext>,
) -> Result<(JobRecord, bool), ApiError> {
    let principal = caller.0.as_ref().ok_or_else(ApiError::unauthorized)?;
    let checked = job_request::check(&state.store, caller, kind, body).await?;
    let new = NewJob {
        kind: checked.payload.kind(),
        spec: checked
            .payload
            .to_json()
            .map_err(|e| ApiError::internal("job spec", e))?,
        spec_sha256: checked.spec_sha256,
        created_by: principal.user.clone(),
        idempotency_key: checked.idempotency_key,
        max_attempts: DEFAULT_MAX_ATTEMPTS,
        subject_version_id: None,
    };
    let (job, created) = state
        .store
        .meta
        .enqueue_job_audited(&new, audit)
        .await
        .map_err(|e| match e {
            quiver_store::StoreError::Conflict(m) => {
                ApiError::coded(ErrorCode::IdempotencyConflict, m)
            }
            e => e.into(),
        })?;
    if created {
        tracing::info!(job = %job.id, kind = kind.as_str(), state = "queued", by = %job.created_by, "job queued");
        state.job_wake.notify_waiters();
    }
    Ok((job, created))
}

/// A job of the caller's (any job for an unrestricted admin); others' are 404.
pub fn own_job(viewer: &Viewer, job: Option<JobRecord>, id: &str) -> Result<JobRecord, ApiError> {
    match job {
        // Webhook deliveries are the service's own jobs, not the user's.
        Some(j)
            if j.kind != JobKind::Webhook
                && (viewer.sees_all() || viewer.user.as_deref() == Some(j.created_by.as_str())) =>
        {
            Ok(j)
        }
        _ => Err(ApiError::coded(
            ErrorCode::JobNotFound,
            format!("job {id} was not found"),
        )),
    }
}

/// Jobs as the API shows them, queued ones with their place in the fair order (one read of the
/// queue for all of them).
pub async fn job_views(store: &Store, jobs: Vec<JobRecord>) -> Result<Vec<JobView>, ApiError> {
    let queued: Vec<String> = jobs
        .iter()
        .filter(|j| j.state == JobState::Queued)
        .map(|j| j.id.clone())
        .collect();
    let positions = store.meta.queue_positions(&queued).await?;
    Ok(jobs
        .into_iter()
        .map(|j| {
            let position = positions.get(&j.id).copied();
            JobView {
                queue_position: position,
                ..JobView::from(j)
            }
        })
        .collect())
}

/// [`job_views`] of one job.
pub async fn job_view(store: &Store, job: JobRecord) -> Result<JobView, ApiError> {
    let mut views = job_views(store, vec![job]).await?;
    views
        .pop()
        .ok_or_else(|| ApiError::internal("job view", "no view"))
}
