//! [`JobStore`] over sqlx `Any`. The dialects differ in one clause (`FOR UPDATE SKIP LOCKED`) and
//! in the wake-up of idle workers (`pg_notify` on Postgres; SQLite workers poll).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use async_trait::async_trait;
use serde_json::Value;
use sqlx::any::AnyRow;
use sqlx::{AssertSqlSafe, Row};

use crate::{Audit, AuditAction, AuditContext};

use super::super::jobs::*;
use super::super::query::Sql;
use super::super::{AdapterRecord, CommitCheck, NewVersion, Page, VersionRecord};
use super::{
    ADAPTER_COLUMNS, Dialect, SqlMetadata, adapter_from_row, decode_cursor, encode_cursor,
    get_bool, insert_tags, json_column,
};
use crate::StoreError;
use crate::time::now_ms;

/// What fair share divides workers by: the column naming a job's submitter. One place to change
/// (with the indexes of migration 0008) to share by namespace instead.
pub const SHARE_KEY: &str = "created_by";

/// Where a queued job stands in the fair order: the submitter's `ahead` older queued jobs, plus,
/// from every other submitter with `n` queued jobs, the `min(n, ahead)` it gets in as many rounds
/// of round-robin, and one more when that submitter comes before this one in the order now (its
/// `(running, last start, oldest)` is smaller). Exact for one worker and jobs that take equal
/// time; it leaves out backoff, the per-submitter cap, and kinds a worker does not take.
fn queue_position(
    ahead: i64,
    share: &str,
    own: (i64, i64, i64),
    subs: &[(String, i64, (i64, i64, i64))],
) -> i64 {
    ahead
        + subs
            .iter()
            .filter(|(s, ..)| s != share)
            .map(|(s, n, rank)| {
                let first = (*rank, s.as_str()) < (own, share);
                (*n).min(ahead + i64::from(first))
            })
            .sum::<i64>()
}

/// The channel `pg_notify` wakes idle workers on (Postgres).
pub const JOBS_CHANNEL: &str = "quiver_jobs";

const JOB_COLUMNS: &str = "id, kind, spec, spec_sha256, state, cancel_requested, progress_done, \
     progress_total, attempts, max_attempts, lease_owner, lease_expires_at, error, result_adapter, \
     result_number, report, created_by, idempotency_key, created_at, started_at, finished_at";

pub(super) type Tx = sqlx::Transaction<'static, sqlx::Any>;

/// Who a job's output is audited as: its submitter (no token, request or address: the worker
/// acts on the job's behalf; the entry's `after` names the job).
fn job_context(submitter: &str) -> AuditContext {
    AuditContext {
        actor: Some(submitter.to_string()),
        ..AuditContext::default()
    }
}

/// Marks the leased job succeeded in `tx`: the fence every job result passes first. Only the
/// lease holder of a running, uncancelled job gets past it (`LeaseLost` otherwise).
pub(super) async fn succeed_fenced(
    tx: &mut Tx,
    lease: &Lease,
    report: &Value,
) -> Result<(), StoreError> {
    let fenced = sqlx::query(
        "UPDATE jobs SET state = $1, finished_at = $2, report = $3, progress_done = progress_total, \
         error = NULL, lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL \
         WHERE id = $4 AND lease_token = $5 AND state = $6 AND cancel_requested = FALSE",
    )
    .bind(JobState::Succeeded.as_str())
    .bind(now_ms())
    .bind(report.to_string())
    .bind(lease.job_id.as_str())
    .bind(lease.token.as_str())
    .bind(JobState::Running.as_str())
    .execute(&mut **tx)
    .await?
    .rows_affected();
    if fenced == 0 {
        return Err(StoreError::LeaseLost);
    }
    Ok(())
}

fn kind_names(kinds: &[JobKind]) -> Vec<&'static str> {
    kinds.iter().map(|k| k.as_str()).collect()
}

fn job_from_row(row: &AnyRow) -> Result<JobRecord, StoreError> {
    let kind: String = row.try_get("kind")?;
    let state: String = row.try_get("state")?;
    let result_adapter: Option<String> = row.try_get("result_adapter")?;
    let result_number: Option<i64> = row.try_get("result_number")?;
    Ok(JobRecord {
        id: row.try_get("id")?,
        kind: kind.parse()?,
        spec: json_column(row, "spec")?.unwrap_or(Value::Null),
        spec_sha256: row.try_get("spec_sha256")?,
        state: state.parse()?,
        cancel_requested: get_bool(row, "cancel_requested")?,
        progress_done: row.try_get("progress_done")?,
        progress_total: row.try_get("progress_total")?,
        attempts: row.try_get("attempts")?,
        max_attempts: row.try_get("max_attempts")?,
        lease_owner: row.try_get("lease_owner")?,
        lease_expires_at: row.try_get("lease_expires_at")?,
        error: row.try_get("error")?,
        result: result_adapter.zip(result_number),
        report: json_column(row, "report")?,
        created_by: row.try_get("created_by")?,
        idempotency_key: row.try_get("idempotency_key")?,
        created_at: row.try_get("created_at")?,
        started_at: row.try_get("started_at")?,
        finished_at: row.try_get("finished_at")?,
    })
}

/// Cursor of a job listing: the last item's creation time and id.
#[derive(serde::Serialize, serde::Deserialize)]
struct JobCursor {
    t: i64,
    id: String,
}

impl SqlMetadata {
    /// `FOR UPDATE SKIP LOCKED` where the dialect has it. SQLite has one writer at a time, so its
    /// claim (one statement in a write transaction) needs no row locks.
    fn skip_locked(&self) -> &'static str {
        match self.dialect {
            Dialect::Postgres => " FOR UPDATE SKIP LOCKED",
            Dialect::Sqlite => "",
        }
    }

    /// Wakes idle workers of every process (Postgres, delivered on commit).
    pub(super) async fn notify_workers(&self, tx: &mut Tx) -> Result<(), StoreError> {
        if self.dialect == Dialect::Postgres {
            sqlx::query("SELECT pg_notify($1, '') AS sent")
                .bind(JOBS_CHANNEL)
                .fetch_one(&mut **tx)
                .await?;
        }
        Ok(())
    }

    /// [`JobStore::end_job`] in `tx` (a webhook delivery's end commits with its log row).
    pub(super) async fn end_job_in(
        &self,
        tx: &mut Tx,
        lease: &Lease,
        end: &JobEnd,
    ) -> Result<Option<JobState>, StoreError> {
        let now = now_ms();
        let (q, r, f, c) = (
            JobState::Queued.as_str(),
            JobState::Running.as_str(),
            JobState::Failed.as_str(),
            JobState::Cancelled.as_str(),
        );
        let clear = "lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL";
        let mut sql = Sql::new("UPDATE jobs SET ");
        match end {
            JobEnd::Succeeded => {
                sql.push("state = ")
                    .bind(JobState::Succeeded.as_str())
                    .push(", error = NULL, progress_done = progress_total, finished_at = ")
                    .bind(now);
            }
            JobEnd::Failed(error) => {
                sql.push("state = ")
                    .bind(f)
                    .push(", error = ")
                    .bind(error.as_str());
                sql.push(", finished_at = ").bind(now);
            }
            JobEnd::Retry { error, backoff_ms } => {
                sql.push("state = CASE WHEN attempts >= max_attempts THEN ")
                    .bind(f)
                    .push(" ELSE ")
                    .bind(q)
                    .push(" END, finished_at = CASE WHEN attempts >= max_attempts THEN ")
                    .bind(now)
                    .push(" ELSE NULL END, error = ")
                    .bind(error.as_str())
                    .push(", run_after = ")
                    .bind(now + backoff_ms);
            }
            JobEnd::Cancelled => {
                sql.push("state = ")
                    .bind(c)
                    .push(", finished_at = ")
                    .bind(now);
            }
            JobEnd::Released => {
                sql.push("state = ")
                    .bind(q)
                    .push(", attempts = attempts - 1, run_after = ")
                    .bind(now);
            }
        }
        sql.push(&format!(", {clear} WHERE id = "))
            .bind(lease.job_id.as_str())
            .push(" AND lease_token = ")
            .bind(lease.token.as_str())
            .push(" AND state = ")
            .bind(r)
            .push(" RETURNING state");
        let state: Option<JobState> = match sql.query().fetch_optional(&mut **tx).await? {
            Some(row) => Some(row.try_get::<String, _>("state")?.parse()?),
            None => None,
        };
        if state == Some(JobState::Queued) {
            self.notify_workers(tx).await?;
        }
        Ok(state)
    }

    async fn job_in(&self, tx: &mut Tx, id: &str) -> Result<Option<JobRecord>, StoreError> {
        sqlx::query(AssertSqlSafe(format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(&mut **tx)
        .await?
        .as_ref()
        .map(job_from_row)
        .transpose()
    }
}

#[async_trait]
impl JobStore for SqlMetadata {
    async fn enqueue_job_audited(
        &self,
        job: &NewJob,
        audit: Option<&AuditContext>,
    ) -> Result<(JobRecord, bool), StoreError> {
        let now = now_ms();
        let id = uuid::Uuid::new_v4().to_string();
        let mut tx = self.begin_write().await?;
        let inserted = sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO jobs (id, kind, spec, spec_sha256, state, max_attempts, run_after, created_by, \
             idempotency_key, created_at, subject_version_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $7, $10) \
             ON CONFLICT (created_by, idempotency_key) DO NOTHING RETURNING {JOB_COLUMNS}"
        )))
        .bind(id.as_str())
        .bind(job.kind.as_str())
        .bind(job.spec.to_string())
        .bind(job.spec_sha256.as_str())
        .bind(JobState::Queued.as_str())
        .bind(job.max_attempts)
        .bind(now)
        .bind(job.created_by.as_str())
        .bind(job.idempotency_key.as_deref())
        .bind(job.subject_version_id)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(row) = inserted {
            let record = job_from_row(&row)?;
            if let Some(ctx) = audit {
                let entry = Audit {
                    context: ctx.clone(),
                    action: AuditAction::JobSubmit,
                    target: record.id.clone(),
                    owner: Some(record.created_by.clone()),
                    before: None,
                    after: Some(serde_json::json!({
                        "kind": record.kind.as_str(),
                        "state": record.state.as_str(),
                    })),
                };
                super::audit::append_audit(&mut tx, &entry).await?;
            }
            self.notify_workers(&mut tx).await?;
            tx.commit().await?;
            return Ok((record, true));
        }
        // The key was used before by this user: the same request gets the same job.
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE created_by = $1 AND idempotency_key = $2"
        )))
        .bind(job.created_by.as_str())
        .bind(job.idempotency_key.as_deref())
        .fetch_one(&mut *tx)
        .await?;
        let existing = job_from_row(&row)?;
        tx.commit().await?;
        if existing.spec_sha256 != job.spec_sha256 {
            return Err(StoreError::Conflict(format!(
                "idempotency key {:?} was used for another request (job {}); use a new key",
                job.idempotency_key.as_deref().unwrap_or_default(),
                existing.id
            )));
        }
        Ok((existing, false))
    }

    async fn get_job(&self, id: &str) -> Result<Option<JobRecord>, StoreError> {
        sqlx::query(AssertSqlSafe(format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        .as_ref()
        .map(job_from_row)
        .transpose()
    }

    async fn list_jobs(&self, f: &JobFilter) -> Result<Page<JobRecord>, StoreError> {
        let mut sql = Sql::new(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE 1 = 1"));
        if let Some(user) = &f.created_by {
            sql.push(" AND created_by = ").bind(user.as_str());
        }
        if let Some(state) = f.state {
            sql.push(" AND state = ").bind(state.as_str());
        }
        match f.kind {
            Some(kind) => sql.push(" AND kind = ").bind(kind.as_str()),
            // Deliveries are the service's own work, not the user's jobs.
            None => sql.push(" AND kind <> ").bind(JobKind::Webhook.as_str()),
        };
        if let Some(raw) = &f.cursor {
            let c: JobCursor = decode_cursor(raw)?;
            sql.push(" AND (created_at < ")
                .bind(c.t)
                .push(" OR (created_at = ")
                .bind(c.t)
                .push(" AND id < ")
                .bind(c.id)
                .push("))");
        }
        let limit = i64::from(f.limit.max(1));
        sql.push(" ORDER BY created_at DESC, id DESC LIMIT ")
            .bind(limit + 1);
        let mut items = sql
            .query()
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(job_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        let next_cursor = if items.len() as i64 > limit {
            items.truncate(limit as usize);
            items.last().map(|j| {
                encode_cursor(&JobCursor {
                    t: j.created_at,
                    id: j.id.clone(),
                })
            })
        } else {
            None
        };
        Ok(Page { items, next_cursor })
    }

    async fn cancel_job_audited(
        &self,
        id: &str,
        audit: Option<&AuditContext>,
    ) -> Result<Option<JobRecord>, StoreError> {
        let now = now_ms();
        let mut tx = self.begin_write().await?;
        let before = self.job_in(&mut tx, id).await?;
        let cancelled = sqlx::query(
            "UPDATE jobs SET state = $1, finished_at = $2 WHERE id = $3 AND state = $4",
        )
        .bind(JobState::Cancelled.as_str())
        .bind(now)
        .bind(id)
        .bind(JobState::Queued.as_str())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let requested = sqlx::query(
            "UPDATE jobs SET cancel_requested = TRUE WHERE id = $1 AND state = $2 \
             AND NOT cancel_requested",
        )
        .bind(id)
        .bind(JobState::Running.as_str())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let job = self.job_in(&mut tx, id).await?;
        if let (Some(ctx), Some(before), Some(after)) = (audit, &before, &job)
            && cancelled + requested > 0
        {
            let state = |j: &JobRecord| serde_json::json!({ "state": j.state.as_str(), "cancel_requested": j.cancel_requested });
            let entry = Audit {
                context: ctx.clone(),
                action: AuditAction::JobCancel,
                target: id.to_string(),
                owner: Some(after.created_by.clone()),
                before: Some(state(before)),
                after: Some(state(after)),
            };
            super::audit::append_audit(&mut tx, &entry).await?;
        }
        tx.commit().await?;
        Ok(job)
    }

    async fn has_runnable_job(&self, kinds: &[JobKind]) -> Result<bool, StoreError> {
        let mut sql = Sql::new("SELECT 1 AS one FROM jobs WHERE state = ");
        sql.bind(JobState::Queued.as_str())
            .push(" AND run_after <= ")
            .bind(now_ms())
            .push(" AND kind IN ");
        if kinds.is_empty() {
            return Ok(false);
        }
        sql.bind_list(&kind_names(kinds)).push(" LIMIT 1");
        Ok(sql.query().fetch_optional(&self.pool).await?.is_some())
    }

    async fn claim_job_capped(
        &self,
        worker: &str,
        lease_ms: i64,
        kinds: &[JobKind],
        per_submitter_cap: i64,
    ) -> Result<Option<(JobRecord, Lease)>, StoreError> {
        if kinds.is_empty() {
            return Ok(None);
        }
        let now = now_ms();
        let token = uuid::Uuid::new_v4().to_string();
        let names = kind_names(kinds);
        let (q, r, w) = (
            JobState::Queued.as_str(),
            JobState::Running.as_str(),
            JobKind::Webhook.as_str(),
        );
        let mut tx = self.begin_write().await?;
        let mut sql = Sql::new("UPDATE jobs SET state = ");
        sql.bind(r)
            .push(", attempts = attempts + 1, lease_owner = ")
            .bind(worker)
            .push(", lease_token = ")
            .bind(token.as_str())
            .push(", lease_expires_at = ")
            .bind(now + lease_ms)
            .push(", started_at = COALESCE(started_at, ")
            .bind(now)
            .push(") WHERE id = (");
        if kinds.contains(&JobKind::Webhook) {
            // Deliveries stay out of fair share: oldest first.
            sql.push("SELECT id FROM jobs WHERE state = ")
                .bind(q)
                .push(" AND run_after <= ")
                .bind(now)
                .push(" AND kind IN ")
                .bind_list(&names)
                .push(" ORDER BY created_at, id LIMIT 1");
        } else {
            // Fair share (see [`SHARE_KEY`]): the submitter with the fewest running jobs, then
            // the one whose latest job started longest ago (round-robin), then the one whose
            // oldest runnable job is oldest; then that submitter's oldest runnable job. The
            // per-submitter reads are index ranges (`jobs_fair`, `jobs_started_by`), once per
            // submitter with runnable jobs, not once per queued job.
            let k = SHARE_KEY;
            sql.push(&format!(
                "WITH subs AS (SELECT {k} AS share, MIN(created_at) AS oldest FROM jobs WHERE state = "
            ))
            .bind(q)
            .push(" AND run_after <= ")
            .bind(now)
            .push(" AND kind IN ")
            .bind_list(&names)
            .push(&format!(
                " GROUP BY {k}), stats AS (SELECT share, oldest, \
                 (SELECT COUNT(*) FROM jobs r WHERE r.{k} = subs.share AND r.state = "
            ))
            .bind(r)
            .push(" AND r.kind <> ")
            .bind(w)
            .push(&format!(
                ") AS running, (SELECT COALESCE(MAX(s.started_at), 0) FROM jobs s \
                 WHERE s.{k} = subs.share AND s.kind <> "
            ))
            .bind(w)
            .push(") AS last_start FROM subs), pick AS (SELECT share FROM stats WHERE ")
            .bind(per_submitter_cap)
            .push(" <= 0 OR running < ")
            .bind(per_submitter_cap)
            .push(" ORDER BY running, last_start, oldest, share LIMIT 1) ")
            .push("SELECT id FROM jobs WHERE state = ")
            .bind(q)
            .push(" AND run_after <= ")
            .bind(now)
            .push(" AND kind IN ")
            .bind_list(&names)
            .push(&format!(
                " AND {k} = (SELECT share FROM pick) ORDER BY created_at, id LIMIT 1"
            ));
        }
        sql.push(self.skip_locked())
            .push(") RETURNING ")
            .push(JOB_COLUMNS);
        let row = sql.query().fetch_optional(&mut *tx).await?;
        tx.commit().await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let job = job_from_row(&row)?;
        let lease = Lease {
            job_id: job.id.clone(),
            token,
            attempt: job.attempts,
        };
        Ok(Some((job, lease)))
    }

    async fn queue_positions(&self, ids: &[String]) -> Result<BTreeMap<String, i64>, StoreError> {
        let mut out = BTreeMap::new();
        if ids.is_empty() {
            return Ok(out);
        }
        let (q, r, w) = (
            JobState::Queued.as_str(),
            JobState::Running.as_str(),
            JobKind::Webhook.as_str(),
        );
        let k = SHARE_KEY;
        // Each asked-for queued job's submitter and how many of its queued jobs are older (an
        // index range count on `jobs_fair`).
        let mut sql = Sql::new(&format!(
            "SELECT j.id, j.{k} AS share, (SELECT COUNT(*) FROM jobs o WHERE o.state = j.state \
             AND o.{k} = j.{k} AND (o.created_at < j.created_at OR (o.created_at = j.created_at \
             AND o.id < j.id)) AND o.kind <> "
        ));
        sql.bind(w)
            .push(") AS ahead FROM jobs j WHERE j.state = ")
            .bind(q)
            .push(" AND j.kind <> ")
            .bind(w)
            .push(" AND j.id IN ")
            .bind_list(ids);
        let mine: Vec<(String, String, i64)> = sql
            .query()
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|row| {
                Ok((
                    row.try_get("id")?,
                    row.try_get("share")?,
                    row.try_get("ahead")?,
                ))
            })
            .collect::<Result<_, StoreError>>()?;
        if mine.is_empty() {
            return Ok(out);
        }
        // Every submitter with queued jobs: how many, and its place in the fair order now.
        let mut sql = Sql::new(&format!(
            "SELECT share, queued, \
             (SELECT COUNT(*) FROM jobs r WHERE r.{k} = subs.share AND r.state = "
        ));
        sql.bind(r)
            .push(" AND r.kind <> ")
            .bind(w)
            .push(&format!(
                ") AS running, (SELECT COALESCE(MAX(s.started_at), 0) FROM jobs s \
                 WHERE s.{k} = subs.share AND s.kind <> "
            ))
            .bind(w)
            .push(&format!(
                ") AS last_start, oldest FROM (SELECT {k} AS share, COUNT(*) AS queued, \
                 MIN(created_at) AS oldest FROM jobs WHERE state = "
            ))
            .bind(q)
            .push(" AND kind <> ")
            .bind(w)
            .push(&format!(" GROUP BY {k}) subs"));
        let subs: Vec<(String, i64, (i64, i64, i64))> = sql
            .query()
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|row| {
                Ok((
                    row.try_get("share")?,
                    row.try_get("queued")?,
                    (
                        row.try_get("running")?,
                        row.try_get("last_start")?,
                        row.try_get("oldest")?,
                    ),
                ))
            })
            .collect::<Result<_, StoreError>>()?;
        for (id, share, ahead) in mine {
            let own = subs
                .iter()
                .find(|(s, ..)| *s == share)
                .map(|(_, _, rank)| *rank)
                .unwrap_or_default();
            out.insert(id, queue_position(ahead, &share, own, &subs));
        }
        Ok(out)
    }

    async fn heartbeat(
        &self,
        lease: &Lease,
        done: i64,
        total: i64,
        lease_ms: i64,
    ) -> Result<Beat, StoreError> {
        let row = sqlx::query(
            "UPDATE jobs SET lease_expires_at = $1, progress_done = $2, progress_total = $3 \
             WHERE id = $4 AND lease_token = $5 AND state = $6 RETURNING cancel_requested",
        )
        .bind(now_ms() + lease_ms)
        .bind(done)
        .bind(total)
        .bind(lease.job_id.as_str())
        .bind(lease.token.as_str())
        .bind(JobState::Running.as_str())
        .fetch_optional(&self.pool)
        .await?;
        Ok(match row {
            Some(r) => Beat::Held {
                cancel: get_bool(&r, "cancel_requested")?,
            },
            None => Beat::Lost,
        })
    }

    async fn end_job(&self, lease: &Lease, end: &JobEnd) -> Result<Option<JobState>, StoreError> {
        let mut tx = self.begin_write().await?;
        let state = self.end_job_in(&mut tx, lease, end).await?;
        tx.commit().await?;
        Ok(state)
    }

    async fn reap_expired_leases(&self) -> Result<(u64, Vec<JobRecord>), StoreError> {
        let now = now_ms();
        let clear = "lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL";
        let expired = "state = $2 AND lease_expires_at < $1";
        let lost = "the worker stopped renewing its lease (killed or cut off)";
        let mut tx = self.begin_write().await?;
        let mut ended: Vec<String> = sqlx::query(AssertSqlSafe(format!(
            "UPDATE jobs SET state = $3, finished_at = $1, {clear} WHERE {expired} AND cancel_requested = TRUE \
             RETURNING id"
        )))
        .bind(now)
        .bind(JobState::Running.as_str())
        .bind(JobState::Cancelled.as_str())
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|row| row.try_get::<String, _>("id"))
        .collect::<Result<_, _>>()?;
        let failed: Vec<String> = sqlx::query(AssertSqlSafe(format!(
            "UPDATE jobs SET state = $3, finished_at = $1, error = $4, {clear} \
             WHERE {expired} AND attempts >= max_attempts RETURNING id"
        )))
        .bind(now)
        .bind(JobState::Running.as_str())
        .bind(JobState::Failed.as_str())
        .bind(format!("{lost}; no attempts left"))
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|row| row.try_get::<String, _>("id"))
        .collect::<Result<_, _>>()?;
        ended.extend(failed);
        let requeued = sqlx::query(AssertSqlSafe(format!(
            "UPDATE jobs SET state = $3, run_after = $1, error = $4, {clear} WHERE {expired}"
        )))
        .bind(now)
        .bind(JobState::Running.as_str())
        .bind(JobState::Queued.as_str())
        .bind(lost)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if requeued > 0 {
            self.notify_workers(&mut tx).await?;
        }
        let mut jobs = Vec::with_capacity(ended.len());
        for id in &ended {
            if let Some(job) = self.job_in(&mut tx, id).await? {
                jobs.push(job);
            }
        }
        tx.commit().await?;
        Ok((requeued, jobs))
    }

    async fn publish_job_result_checked(
        &self,
        lease: &Lease,
        target: &OutputTarget,
        version: &NewVersion,
        report: &Value,
        check: &dyn CommitCheck,
    ) -> Result<(AdapterRecord, VersionRecord), StoreError> {
        let now = now_ms();
        let mut tx = self.begin_write().await?;
        succeed_fenced(&mut tx, lease, report).await?;
        // After the fence (a lost lease stores nothing again), before the output adapter's row:
        // see `create_version_checked`.
        self.lock_blob_references(&mut tx, false).await?;
        check.check().await?;
        let repo = &target.repo;
        if let Some(new) = &target.create {
            // Two jobs may create one output at once: the second waits for the first's commit and
            // then finds the adapter.
            let created = sqlx::query(
                "INSERT INTO adapters (owner, name, base_model, description, private, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $6) ON CONFLICT (owner, name) DO NOTHING RETURNING id",
            )
            .bind(repo.owner.as_str())
            .bind(repo.name.as_str())
            .bind(new.base_model.as_str())
            .bind(new.description.as_str())
            .bind(new.private)
            .bind(now)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(row) = created {
                insert_tags(&mut tx, row.try_get("id")?, &new.tags).await?;
                let entry = Audit {
                    context: job_context(&version.created_by),
                    action: AuditAction::AdapterCreate,
                    target: repo.to_string(),
                    owner: Some(repo.owner.clone()),
                    before: None,
                    after: Some(serde_json::json!({
                        "description": new.description,
                        "private": new.private,
                        "base_model": new.base_model,
                        "tags": new.tags,
                        "job": lease.job_id,
                    })),
                };
                super::audit::append_audit(&mut tx, &entry).await?;
            }
        }
        let adapter = sqlx::query(AssertSqlSafe(format!(
            "SELECT {ADAPTER_COLUMNS} FROM adapters WHERE owner = $1 AND name = $2"
        )))
        .bind(repo.owner.as_str())
        .bind(repo.name.as_str())
        .fetch_optional(&mut *tx)
        .await?
        .map(|row| adapter_from_row(&row))
        .transpose()?
        .ok_or_else(|| StoreError::NotFound(format!("output adapter {repo} no longer exists")))?;
        let published = self.insert_version(&mut tx, &adapter, version).await?;
        let entry = Audit {
            context: job_context(&version.created_by),
            action: AuditAction::VersionPublish,
            target: adapter.repo_id(),
            owner: Some(adapter.owner.clone()),
            before: None,
            after: Some(serde_json::json!({
                "version": published.number,
                "revision": published.revision,
                "files": published.files.len(),
                "job": lease.job_id,
            })),
        };
        super::audit::append_audit(&mut tx, &entry).await?;
        sqlx::query(
            "UPDATE jobs SET result_version_id = $1, result_adapter = $2, result_number = $3 WHERE id = $4",
        )
        .bind(published.id)
        .bind(adapter.repo_id())
        .bind(published.number)
        .bind(lease.job_id.as_str())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok((adapter, published))
    }

    async fn job_counts(&self) -> Result<JobCounts, StoreError> {
        sqlx::query("SELECT kind, state, COUNT(*) AS n FROM jobs GROUP BY kind, state")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| {
                let kind: String = r.try_get("kind")?;
                let state: String = r.try_get("state")?;
                Ok((kind.parse()?, state.parse()?, r.try_get("n")?))
            })
            .collect()
    }

    async fn job_wakeups(&self) -> Result<Option<JobWakeups>, StoreError> {
        if self.dialect != Dialect::Postgres {
            return Ok(None);
        }
        let mut listener = sqlx::postgres::PgListener::connect(&self.url).await?;
        listener.listen(JOBS_CHANNEL).await?;
        Ok(Some(JobWakeups(listener)))
    }

    async fn lineage(&self, version_id: i64, max_nodes: usize) -> Result<LineageGraph, StoreError> {
        // Breadth-first both ways from the version: parents through `version_id`, children
        // through `parent_version_id` (both indexed).
        let mut seen: BTreeSet<i64> = BTreeSet::from([version_id]);
        let mut edges: BTreeSet<(i64, i64)> = BTreeSet::new();
        for (col, other) in [
            ("version_id", "parent_version_id"),
            ("parent_version_id", "version_id"),
        ] {
            let mut frontier: VecDeque<i64> = VecDeque::from([version_id]);
            while !frontier.is_empty() && seen.len() < max_nodes {
                let batch: Vec<i64> = frontier.drain(..).collect();
                let mut sql = Sql::new(&format!(
                    "SELECT version_id, parent_version_id FROM version_parents \
                     WHERE parent_version_id IS NOT NULL AND {col} IN "
                ));
                sql.bind_list(&batch);
                for row in sql.query().fetch_all(&self.pool).await? {
                    let child: i64 = row.try_get("version_id")?;
                    let parent: i64 = row.try_get("parent_version_id")?;
                    let next: i64 = row.try_get(other)?;
                    if seen.len() >= max_nodes && !seen.contains(&next) {
                        continue;
                    }
                    edges.insert((child, parent));
                    if seen.insert(next) {
                        frontier.push_back(next);
                    }
                }
            }
        }
        let ids: Vec<i64> = seen.into_iter().collect();
        let mut sql = Sql::new(
            "SELECT v.id AS version_id, v.number, v.revision, v.lineage, a.id, a.owner, a.name, \
             a.base_model, a.description, a.private, a.downloads, a.created_at, a.updated_at \
             FROM versions v JOIN adapters a ON a.id = v.adapter_id WHERE v.id IN ",
        );
        sql.bind_list(&ids);
        let mut nodes: BTreeMap<i64, LineageNode> = BTreeMap::new();
        for row in sql.query().fetch_all(&self.pool).await? {
            let id: i64 = row.try_get("version_id")?;
            let method = json_column(&row, "lineage")?
                .and_then(|l| l.get("method").and_then(Value::as_str).map(str::to_owned));
            nodes.insert(
                id,
                LineageNode {
                    version_id: id,
                    adapter: adapter_from_row(&row)?,
                    number: row.try_get("number")?,
                    revision: row.try_get("revision")?,
                    method,
                },
            );
        }
        Ok(LineageGraph {
            nodes: nodes.into_values().collect(),
            edges: edges.into_iter().collect(),
        })
    }
}
