//! [`ProfileStore`] over sqlx `Any` (vectors are `BLOB` on SQLite, `BYTEA` on Postgres).

use async_trait::async_trait;
use sqlx::Row;
use sqlx::any::AnyRow;

use super::super::profiles::*;
use super::super::query::Sql;
use super::super::{JobKind, JobState, Lease, ParentVersion, VersionState};
use super::jobs::{Tx, succeed_fenced};
use super::{SqlMetadata, json_column};
use crate::StoreError;
use crate::time::now_ms;

const PROFILE_COLUMNS: &str =
    "version_id, embedder, dim, count, source, samples_sha256, updated_at";

fn info_from_row(row: &AnyRow) -> Result<ProfileInfo, StoreError> {
    Ok(ProfileInfo {
        version_id: row.try_get("version_id")?,
        embedder: row.try_get("embedder")?,
        dim: row.try_get("dim")?,
        count: row.try_get("count")?,
        source: row.try_get::<String, _>("source")?.parse()?,
        samples_sha256: row.try_get("samples_sha256")?,
        updated_at: row.try_get("updated_at")?,
    })
}

async fn upsert(tx: &mut Tx, version_id: i64, p: &NewProfile) -> Result<(), StoreError> {
    let written = sqlx::query(
        "INSERT INTO profiles (version_id, embedder, dim, count, source, samples_sha256, vectors, terms, updated_at) \
         SELECT id, $2, $3, $4, $5, $6, $7, $8, $9 FROM versions WHERE id = $1 \
         ON CONFLICT (version_id) DO UPDATE SET embedder = excluded.embedder, dim = excluded.dim, \
         count = excluded.count, source = excluded.source, samples_sha256 = excluded.samples_sha256, \
         vectors = excluded.vectors, terms = excluded.terms, updated_at = excluded.updated_at",
    )
    .bind(version_id)
    .bind(p.embedder.as_str())
    .bind(p.dim)
    .bind(p.count)
    .bind(p.source.as_str())
    .bind(p.samples_sha256.as_deref())
    .bind(p.vectors.as_slice())
    .bind(p.terms.as_deref())
    .bind(now_ms())
    .execute(&mut **tx)
    .await?
    .rows_affected();
    if written == 0 {
        return Err(StoreError::NotFound(format!(
            "version {version_id} was deleted"
        )));
    }
    Ok(())
}

#[async_trait]
impl ProfileStore for SqlMetadata {
    async fn put_profile(&self, version_id: i64, profile: &NewProfile) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        upsert(&mut tx, version_id, profile).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn finish_embed_job(
        &self,
        lease: &Lease,
        version_id: i64,
        profile: &NewProfile,
        report: &serde_json::Value,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        succeed_fenced(&mut tx, lease, report).await?;
        upsert(&mut tx, version_id, profile).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn profile_info(&self, version_id: i64) -> Result<Option<ProfileInfo>, StoreError> {
        let mut sql = Sql::new("SELECT ");
        sql.push(PROFILE_COLUMNS)
            .push(" FROM profiles WHERE count > 0 AND version_id = ")
            .bind(version_id);
        sql.query()
            .fetch_optional(&self.pool)
            .await?
            .map(|row| info_from_row(&row))
            .transpose()
    }

    async fn profile_vectors(&self, version_ids: &[i64]) -> Result<Vec<StoredVectors>, StoreError> {
        let mut out = Vec::with_capacity(version_ids.len());
        // Bounded IN lists: a reload of a large index fetches in slices.
        for ids in version_ids.chunks(500) {
            let mut sql =
                Sql::new("SELECT version_id, vectors, terms FROM profiles WHERE version_id IN ");
            sql.bind_list(ids);
            for row in sql.query().fetch_all(&self.pool).await? {
                out.push(StoredVectors {
                    version_id: row.try_get("version_id")?,
                    vectors: row.try_get("vectors")?,
                    terms: row.try_get("terms")?,
                });
            }
        }
        Ok(out)
    }

    async fn routable_profiles(&self, embedder: &str) -> Result<Vec<RoutableProfile>, StoreError> {
        let rows = sqlx::query(
            "SELECT a.id AS adapter_id, a.owner, a.name, a.base_model, a.private, v.id AS version_id, \
             v.number, v.revision, p.dim, p.source, p.updated_at \
             FROM profiles p JOIN versions v ON v.id = p.version_id JOIN adapters a ON a.id = v.adapter_id \
             WHERE p.embedder = $1 AND v.state = $2 AND p.count > 0 AND v.number = ( \
               SELECT MAX(v2.number) FROM versions v2 JOIN profiles p2 ON p2.version_id = v2.id \
               WHERE v2.adapter_id = v.adapter_id AND p2.embedder = $1 AND v2.state = $2 \
               AND p2.count > 0) \
             ORDER BY a.id",
        )
        .bind(embedder)
        .bind(VersionState::Ready.as_str())
        .fetch_all(&self.pool)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            out.push(RoutableProfile {
                adapter_id: row.try_get("adapter_id")?,
                owner: row.try_get("owner")?,
                name: row.try_get("name")?,
                base_model: row.try_get("base_model")?,
                private: super::get_bool(row, "private")?,
                tags: Vec::new(),
                version_id: row.try_get("version_id")?,
                number: row.try_get("number")?,
                revision: row.try_get("revision")?,
                dim: row.try_get("dim")?,
                source: row.try_get::<String, _>("source")?.parse()?,
                updated_at: row.try_get("updated_at")?,
            });
        }
        let ids: Vec<i64> = out.iter().map(|p| p.adapter_id).collect();
        let mut tags = self.tags_for(&ids).await?;
        for profile in &mut out {
            profile.tags = tags.remove(&profile.adapter_id).unwrap_or_default();
        }
        Ok(out)
    }

    async fn stale_profiles(
        &self,
        embedder: &str,
        limit: u32,
    ) -> Result<Vec<StaleProfile>, StoreError> {
        // The file a profile is made from: samples.jsonl, else README.md unless a job made the
        // version (its card, written by Quiver, tells the recipe, not the task). A card-only
        // version whose profile was uploaded (of any embedder) is not stale: the vector outranks
        // the card.
        let rows = sqlx::query(
            "SELECT v.id AS version_id, a.owner, a.name, v.number, v.revision, v.created_by, \
             f.path, f.sha256, p.updated_at AS profile_updated_at \
             FROM versions v JOIN adapters a ON a.id = v.adapter_id \
             JOIN files f ON f.version_id = v.id AND (f.path = $1 OR (f.path = $5 \
               AND v.lineage IS NULL AND NOT EXISTS ( \
               SELECT 1 FROM files s WHERE s.version_id = v.id AND s.path = $1))) \
             LEFT JOIN profiles p ON p.version_id = v.id \
             WHERE v.state = $2 AND (p.version_id IS NULL \
               OR (p.embedder <> $3 AND (f.path = $1 OR p.source <> $6))) \
             ORDER BY v.id LIMIT $4",
        )
        .bind(SAMPLES_FILE)
        .bind(VersionState::Ready.as_str())
        .bind(embedder)
        .bind(i64::from(limit))
        .bind(CARD_FILE)
        .bind(ProfileSource::Uploaded.as_str())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let path: String = row.try_get("path")?;
                Ok(StaleProfile {
                    version_id: row.try_get("version_id")?,
                    version: ParentVersion {
                        adapter: format!(
                            "{}/{}",
                            row.try_get::<String, _>("owner")?,
                            row.try_get::<String, _>("name")?
                        ),
                        version: row.try_get("number")?,
                        revision: row.try_get("revision")?,
                    },
                    source: if path == SAMPLES_FILE {
                        ProfileSource::Samples
                    } else {
                        ProfileSource::Card
                    },
                    file_sha256: row.try_get("sha256")?,
                    created_by: row.try_get("created_by")?,
                    profile_updated_at: row.try_get("profile_updated_at")?,
                })
            })
            .collect()
    }

    async fn profile_generation(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query("SELECT n FROM profile_generation WHERE id = 1")
            .fetch_one(&self.pool)
            .await?
            .try_get("n")?)
    }

    async fn routing_generations(&self) -> Result<RoutingGenerations, StoreError> {
        let row = sqlx::query(
            "SELECT (SELECT n FROM registry_generation WHERE id = 1) AS registry, \
             (SELECT n FROM profile_generation WHERE id = 1) AS profiles, \
             (SELECT n FROM embed_job_generation WHERE id = 1) AS embed_jobs",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(RoutingGenerations {
            registry: row.try_get("registry")?,
            profiles: row.try_get("profiles")?,
            embed_jobs: row.try_get("embed_jobs")?,
        })
    }

    async fn pending_profiles(
        &self,
        embedder: &str,
        limit: u32,
    ) -> Result<Vec<PendingProfile>, StoreError> {
        // A version's newest embed job, when it is queued, running or failed, and neither the
        // version nor a newer one of its adapter has a profile of the embedder (which a route
        // would use instead). The partial indexes of migration 0014 serve the scan of open and
        // failed embed jobs and the look for a newer job.
        let rows = sqlx::query(
            "SELECT a.id AS adapter_id, a.owner, a.name, a.base_model, a.private, \
             v.id AS version_id, v.number, v.revision, j.id AS job_id, j.state AS job_state, \
             j.error, j.spec \
             FROM jobs j JOIN versions v ON v.id = j.subject_version_id \
             JOIN adapters a ON a.id = v.adapter_id \
             WHERE j.subject_version_id IS NOT NULL AND j.state IN ($1, $2, $3) AND j.kind = $4 \
             AND v.state = $5 \
             AND NOT EXISTS (SELECT 1 FROM jobs n WHERE n.subject_version_id = j.subject_version_id \
               AND (n.created_at > j.created_at OR (n.created_at = j.created_at AND n.id > j.id))) \
             AND NOT EXISTS (SELECT 1 FROM versions w JOIN profiles p ON p.version_id = w.id \
               WHERE w.adapter_id = v.adapter_id AND w.number >= v.number AND w.state = $5 \
               AND p.embedder = $6 AND p.count > 0) \
             ORDER BY a.owner, a.name, v.number DESC LIMIT $7",
        )
        .bind(JobState::Queued.as_str())
        .bind(JobState::Running.as_str())
        .bind(JobState::Failed.as_str())
        .bind(JobKind::Embed.as_str())
        .bind(VersionState::Ready.as_str())
        .bind(embedder)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        let mut out: Vec<PendingProfile> = Vec::with_capacity(rows.len());
        for row in &rows {
            let adapter_id: i64 = row.try_get("adapter_id")?;
            // Rows come newest version first within an adapter: keep that one.
            if out.last().is_some_and(|p| p.adapter_id == adapter_id) {
                continue;
            }
            out.push(PendingProfile {
                adapter_id,
                owner: row.try_get("owner")?,
                name: row.try_get("name")?,
                base_model: row.try_get("base_model")?,
                private: super::get_bool(row, "private")?,
                tags: Vec::new(),
                version_id: row.try_get("version_id")?,
                number: row.try_get("number")?,
                revision: row.try_get("revision")?,
                job_id: row.try_get("job_id")?,
                job_state: row.try_get::<String, _>("job_state")?.parse()?,
                error: row.try_get("error")?,
                spec: json_column(row, "spec")?.unwrap_or_default(),
            });
        }
        let ids: Vec<i64> = out.iter().map(|p| p.adapter_id).collect();
        let mut tags = self.tags_for(&ids).await?;
        for pending in &mut out {
            pending.tags = tags.remove(&pending.adapter_id).unwrap_or_default();
        }
        Ok(out)
    }
}
