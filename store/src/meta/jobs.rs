//! Jobs (merge, compress, embed): the queue's records and the [`JobStore`] capability.
//!
//! Guarantees, on both dialects:
//! * a claim is one statement (Postgres `FOR UPDATE SKIP LOCKED`; SQLite a write transaction), so
//!   no job is handed to two workers;
//! * every claim gets a fresh lease token; heartbeats, failures and publishing are fenced by it, so
//!   a worker that lost its lease (expired, reaped, requeued) can change nothing;
//! * a job's result version and its success commit in one transaction.

use async_trait::async_trait;
use serde_json::Value;

use super::{AdapterRecord, CommitCheck, NewVersion, NoCheck, Page, VersionRecord};
use crate::{RepoId, StoreError};

string_enum!(
    /// What a job computes (`webhook`: one delivery of an event to one subscription, claimed
    /// only by the webhook workers and never listed with users' jobs).
    JobKind { Merge = "merge", Compress = "compress", Embed = "embed", Webhook = "webhook" }
);
string_enum!(
    /// Where a job is in its life.
    JobState {
        Queued = "queued",
        Running = "running",
        Succeeded = "succeeded",
        Failed = "failed",
        Cancelled = "cancelled",
    }
);

impl JobState {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed | JobState::Cancelled
        )
    }
}

/// Default number of claims a job may use before it fails with its last error.
pub const DEFAULT_MAX_ATTEMPTS: i64 = 3;

#[derive(Clone, Debug)]
pub struct JobRecord {
    pub id: String,
    pub kind: JobKind,
    /// The spec as queued: the method and its parameters, inputs pinned to their revisions, the
    /// output.
    pub spec: Value,
    pub spec_sha256: String,
    pub state: JobState,
    pub cancel_requested: bool,
    pub progress_done: i64,
    pub progress_total: i64,
    pub attempts: i64,
    pub max_attempts: i64,
    pub lease_owner: Option<String>,
    pub lease_expires_at: Option<i64>,
    pub error: Option<String>,
    /// `(owner/name, version number)` of the published version.
    pub result: Option<(String, i64)>,
    pub report: Option<Value>,
    pub created_by: String,
    pub idempotency_key: Option<String>,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
}

#[derive(Clone, Debug)]
pub struct NewJob {
    pub kind: JobKind,
    pub spec: Value,
    /// Hash of the request as the client sent it: the same key with another request is a conflict.
    pub spec_sha256: String,
    pub created_by: String,
    pub idempotency_key: Option<String>,
    pub max_attempts: i64,
    /// The version the job works on, when it is about one version (an `embed` job: the version
    /// it profiles). Pending profiles are found through it (`ProfileStore::pending_profiles`).
    pub subject_version_id: Option<i64>,
}

/// What a worker holds while it runs a job. Every write it makes is fenced by `token`.
#[derive(Clone, Debug)]
pub struct Lease {
    pub job_id: String,
    pub token: String,
    /// 1 for the first claim, 2 for the first retry, …
    pub attempt: i64,
}

/// The answer to a heartbeat.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Beat {
    /// The lease was extended; `cancel` says whether a cancel was requested.
    Held { cancel: bool },
    /// The job is no longer this worker's (lease expired and taken, or the job ended).
    Lost,
}

/// How a running job ended, short of publishing.
#[derive(Clone, Debug)]
pub enum JobEnd {
    /// Done without publishing anything (a webhook delivery).
    Succeeded,
    /// Failed for good (bad inputs found while running), or out of attempts.
    Failed(String),
    /// A transient failure: queued again after `backoff_ms` unless the attempts are used up.
    Retry { error: String, backoff_ms: i64 },
    /// Stopped at a cancel request.
    Cancelled,
    /// Handed back (worker shutting down); the claim does not count as an attempt.
    Released,
}

#[derive(Clone, Debug, Default)]
pub struct JobFilter {
    /// Only jobs created by this user (`None`: everyone's, for admins).
    pub created_by: Option<String>,
    pub state: Option<JobState>,
    pub kind: Option<JobKind>,
    pub limit: u32,
    pub cursor: Option<String>,
}

/// Where a job publishes: an existing adapter, or one created with the version.
#[derive(Clone, Debug)]
pub struct OutputTarget {
    pub repo: RepoId,
    /// Fields of the adapter to create if it does not exist; `None`: it must exist.
    pub create: Option<NewAdapterFields>,
}

#[derive(Clone, Debug)]
pub struct NewAdapterFields {
    pub base_model: String,
    pub description: String,
    pub tags: Vec<String>,
    pub private: bool,
}

/// The versions a lineage graph holds, with the edges child → parent between them.
#[derive(Clone, Debug, Default)]
pub struct LineageGraph {
    pub nodes: Vec<LineageNode>,
    /// `(child version id, parent version id)`.
    pub edges: Vec<(i64, i64)>,
}

#[derive(Clone, Debug)]
pub struct LineageNode {
    pub version_id: i64,
    pub adapter: AdapterRecord,
    pub number: i64,
    pub revision: String,
    pub method: Option<String>,
}

/// Job counts for metrics: `(kind, state, count)`.
pub type JobCounts = Vec<(JobKind, JobState, i64)>;

/// The job queue and what jobs publish.
#[async_trait]
pub trait JobStore: Send + Sync {
    /// Queues a job. With an idempotency key already used by this user: the existing job when
    /// `spec_sha256` matches (`created = false`), `Conflict` otherwise.
    async fn enqueue_job(&self, job: &NewJob) -> Result<(JobRecord, bool), StoreError> {
        self.enqueue_job_audited(job, None).await
    }
    /// [`JobStore::enqueue_job`], appending a `job.submit` entry by `audit` in the same
    /// transaction when a job was created (not for an idempotent repeat).
    async fn enqueue_job_audited(
        &self,
        job: &NewJob,
        audit: Option<&super::AuditContext>,
    ) -> Result<(JobRecord, bool), StoreError>;
    async fn get_job(&self, id: &str) -> Result<Option<JobRecord>, StoreError>;
    /// Newest first. `webhook` jobs are left out unless `filter.kind` asks for them.
    async fn list_jobs(&self, filter: &JobFilter) -> Result<Page<JobRecord>, StoreError>;
    /// A queued job is cancelled at once; a running one gets `cancel_requested` (its worker stops
    /// at the next module); an ended one is left as it is. Returns the job after the change.
    async fn cancel_job(&self, id: &str) -> Result<Option<JobRecord>, StoreError> {
        self.cancel_job_audited(id, None).await
    }
    /// [`JobStore::cancel_job`], appending a `job.cancel` entry by `audit` in the same
    /// transaction when the job changed (an ended job: none).
    async fn cancel_job_audited(
        &self,
        id: &str,
        audit: Option<&super::AuditContext>,
    ) -> Result<Option<JobRecord>, StoreError>;

    /// Whether a job of one of `kinds` is waiting to be claimed (a cheap read before claiming).
    async fn has_runnable_job(&self, kinds: &[JobKind]) -> Result<bool, StoreError>;
    /// Claims a runnable job of one of `kinds` for `worker`, with a lease of `lease_ms` (a worker
    /// without an embedder does not take `embed` jobs), in fair order with no cap: see
    /// [`JobStore::claim_job_capped`].
    async fn claim_job(
        &self,
        worker: &str,
        lease_ms: i64,
        kinds: &[JobKind],
    ) -> Result<Option<(JobRecord, Lease)>, StoreError> {
        self.claim_job_capped(worker, lease_ms, kinds, 0).await
    }
    /// Claims a runnable job in one statement, sharing workers fairly between submitters: the
    /// oldest runnable job of the submitter with the fewest running jobs, ties going to the
    /// submitter whose latest job started longest ago (round-robin), then to the oldest job. A
    /// submitter with `per_submitter_cap` running jobs (when above 0) gets none claimed.
    /// Webhook deliveries (`kinds` naming `webhook`) are claimed oldest first, outside fair
    /// share, and never count as anyone's running jobs.
    async fn claim_job_capped(
        &self,
        worker: &str,
        lease_ms: i64,
        kinds: &[JobKind],
        per_submitter_cap: i64,
    ) -> Result<Option<(JobRecord, Lease)>, StoreError>;
    /// How many queued jobs would be claimed before each of `ids` that is queued (others are
    /// left out), in the fair order: the submitter's older queued jobs, plus from each other
    /// submitter as many as round-robin gives it first. Exact for one worker and jobs of equal
    /// length; backoff, the per-submitter cap and embed-only workers are not modelled.
    async fn queue_positions(
        &self,
        ids: &[String],
    ) -> Result<std::collections::BTreeMap<String, i64>, StoreError>;
    /// Extends the lease and records progress.
    async fn heartbeat(
        &self,
        lease: &Lease,
        done: i64,
        total: i64,
        lease_ms: i64,
    ) -> Result<Beat, StoreError>;
    /// Ends a running job without a result; returns the state it is left in (a retry is
    /// `queued`, or `failed` when the attempts are used up), or `None` when the lease was lost
    /// (nothing changed).
    async fn end_job(&self, lease: &Lease, end: &JobEnd) -> Result<Option<JobState>, StoreError>;
    /// Requeues running jobs whose lease expired (the claim counts as an attempt), or fails them
    /// when their attempts are used up, or cancels them when a cancel was requested. Returns how
    /// many jobs were requeued and the jobs it ended (failed or cancelled, as they are now), so
    /// the caller can announce them (`job.finished`).
    async fn reap_expired_leases(&self) -> Result<(u64, Vec<JobRecord>), StoreError>;
    /// Publishes the result version and marks the job succeeded, in one transaction. Fails with
    /// `StoreError::LeaseLost` (and changes nothing) when the lease is no longer held or a cancel
    /// was requested.
    async fn publish_job_result(
        &self,
        lease: &Lease,
        target: &OutputTarget,
        version: &NewVersion,
        report: &Value,
    ) -> Result<(AdapterRecord, VersionRecord), StoreError> {
        self.publish_job_result_checked(lease, target, version, report, &NoCheck)
            .await
    }
    /// [`JobStore::publish_job_result`] after `check` passed under the blob lock, in the same
    /// transaction (see [`CommitCheck`]).
    async fn publish_job_result_checked(
        &self,
        lease: &Lease,
        target: &OutputTarget,
        version: &NewVersion,
        report: &Value,
        check: &dyn CommitCheck,
    ) -> Result<(AdapterRecord, VersionRecord), StoreError>;
    async fn job_counts(&self) -> Result<JobCounts, StoreError>;
    /// A subscription to "a job became runnable" from every process (Postgres `LISTEN`); `None`
    /// where the database has no notifications (SQLite: workers poll).
    async fn job_wakeups(&self) -> Result<Option<JobWakeups>, StoreError>;

    /// Ancestors and descendants of a version (at most `max_nodes` versions, nearest first).
    async fn lineage(&self, version_id: i64, max_nodes: usize) -> Result<LineageGraph, StoreError>;
}

/// Notifications that a job became runnable (Postgres `LISTEN` on its own connection: sqlx's
/// `Any` driver has no listener).
pub struct JobWakeups(pub(crate) sqlx::postgres::PgListener);

impl JobWakeups {
    /// Waits for the next notification. An error means the connection dropped; the listener
    /// reconnects on the next call.
    pub async fn recv(&mut self) -> Result<(), StoreError> {
        self.0.recv().await?;
        Ok(())
    }
}
