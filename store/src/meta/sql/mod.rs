//! [`MetadataStore`] over sqlx `Any`: the same SQL serves SQLite and Postgres; only the migrations
//! and the connection set-up differ by dialect.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, AssertSqlSafe, Executor, Row};

mod adapters;
mod audit;
mod jobs;
mod orgs;
mod profiles;
mod tokens;
mod versions;
mod webhooks;

use super::VersionState;
use super::query::Sql;
use super::*;
use crate::revision::{ManifestFile, revision};
use crate::time::now_ms;

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres");

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Dialect {
    Sqlite,
    Postgres,
}

pub struct SqlMetadata {
    pool: AnyPool,
    dialect: Dialect,
    url: String,
}

/// Advisory-lock key of the blob sweep (Postgres): "qvrblobs" in ASCII.
const BLOB_LOCK_KEY: i64 = 0x7176_7262_6c6f_6273;

pub(super) const ADAPTER_COLUMNS: &str =
    "id, owner, name, base_model, description, private, downloads, created_at, updated_at";
const VERSION_COLUMNS: &str =
    "id, adapter_id, number, revision, state, created_at, created_by, lora, lineage";

impl SqlMetadata {
    pub async fn connect(database_url: &str) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let (dialect, url) = if let Some(rest) = database_url.strip_prefix("sqlite:") {
            (Dialect::Sqlite, sqlite_url(rest)?)
        } else if database_url.starts_with("postgres:") || database_url.starts_with("postgresql:") {
            (Dialect::Postgres, database_url.to_string())
        } else {
            return Err(StoreError::Invalid(format!(
                "database URL must start with sqlite:// or postgres://, got {:?}",
                database_url.split(':').next().unwrap_or_default()
            )));
        };
        let pool = AnyPoolOptions::new()
            .max_connections(match dialect {
                Dialect::Sqlite => 8,
                Dialect::Postgres => 16,
            })
            .acquire_timeout(Duration::from_secs(10))
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    if dialect == Dialect::Sqlite {
                        // busy_timeout makes writers queue; it goes first, because the pool
                        // opens connections while others write, and even reading the journal
                        // mode can meet a lock. WAL lets readers run beside the one writer.
                        for pragma in [
                            "PRAGMA busy_timeout = 10000",
                            "PRAGMA journal_mode = WAL",
                            "PRAGMA synchronous = NORMAL",
                            "PRAGMA foreign_keys = ON",
                        ] {
                            conn.execute(pragma).await?;
                        }
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await?;
        match dialect {
            Dialect::Sqlite => SQLITE_MIGRATIONS.run(&pool).await?,
            Dialect::Postgres => POSTGRES_MIGRATIONS.run(&pool).await?,
        }
        Ok(Self { pool, dialect, url })
    }

    /// The tags of these adapters, in order; any number of ids (queried 500 at a time, so the
    /// IN lists stay bounded).
    async fn tags_for(&self, ids: &[i64]) -> Result<HashMap<i64, Vec<String>>, StoreError> {
        let mut out: HashMap<i64, Vec<String>> = HashMap::new();
        for slice in ids.chunks(500) {
            let mut sql = Sql::new("SELECT adapter_id, tag FROM adapter_tags WHERE adapter_id IN ");
            sql.bind_list(slice).push(" ORDER BY adapter_id, position");
            for row in sql.query().fetch_all(&self.pool).await? {
                out.entry(row.try_get("adapter_id")?)
                    .or_default()
                    .push(row.try_get("tag")?);
            }
        }
        Ok(out)
    }

    async fn adapters_with_tags(
        &self,
        rows: Vec<AnyRow>,
    ) -> Result<Vec<AdapterRecord>, StoreError> {
        let mut adapters = rows
            .iter()
            .map(adapter_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        let ids: Vec<i64> = adapters.iter().map(|a| a.id).collect();
        let mut tags = self.tags_for(&ids).await?;
        for a in &mut adapters {
            a.tags = tags.remove(&a.id).unwrap_or_default();
        }
        Ok(adapters)
    }

    async fn versions_with_files(
        &self,
        rows: Vec<AnyRow>,
    ) -> Result<Vec<VersionRecord>, StoreError> {
        let mut versions = rows
            .iter()
            .map(version_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        if versions.is_empty() {
            return Ok(versions);
        }
        let ids: Vec<i64> = versions.iter().map(|v| v.id).collect();
        let mut sql =
            Sql::new("SELECT version_id, path, size, sha256 FROM files WHERE version_id IN ");
        sql.bind_list(&ids).push(" ORDER BY version_id, path");
        let mut files: HashMap<i64, Vec<FileRecord>> = HashMap::new();
        for row in sql.query().fetch_all(&self.pool).await? {
            files
                .entry(row.try_get("version_id")?)
                .or_default()
                .push(FileRecord {
                    path: row.try_get("path")?,
                    size: row.try_get("size")?,
                    sha256: row.try_get("sha256")?,
                });
        }
        for v in &mut versions {
            v.files = files.remove(&v.id).unwrap_or_default();
        }
        Ok(versions)
    }
}

impl SqlMetadata {
    /// Allocates the next number, computes the revision and inserts the version, its files and
    /// its parents in `tx`: the one path by which versions are published (uploads and jobs).
    pub(super) async fn insert_version(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
        adapter: &AdapterRecord,
        new: &NewVersion,
    ) -> Result<VersionRecord, StoreError> {
        // The last line of the path rule and of sizes: whatever the way in, no version holds a
        // file path a client would misuse, or a size that is not the blob's (callers check first).
        for f in &new.files {
            crate::paths::check_file_path(&f.path).map_err(|why| {
                StoreError::Invalid(format!("file path {:?} is not allowed: {why}", f.path))
            })?;
            if f.size < 0 {
                return Err(StoreError::Invalid(format!(
                    "{}: size {} is negative",
                    f.path, f.size
                )));
            }
        }
        let now = now_ms();
        self.lock_blob_references(tx, false).await?;
        // The write comes first: it takes the adapter's row lock (Postgres) or the write lock
        // (SQLite), so concurrent uploads to one adapter queue here and get distinct numbers.
        let number: i64 = sqlx::query(
            "UPDATE adapters SET next_version = next_version + 1, updated_at = $1 WHERE id = $2 \
             RETURNING next_version - 1 AS number",
        )
        .bind(now)
        .bind(adapter.id)
        .fetch_optional(&mut **tx)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("adapter {} was deleted", adapter.repo_id())))?
        .try_get("number")?;
        let parent: Option<String> = sqlx::query(
            "SELECT revision FROM versions WHERE adapter_id = $1 ORDER BY number DESC LIMIT 1",
        )
        .bind(adapter.id)
        .fetch_optional(&mut **tx)
        .await?
        .map(|r| r.try_get("revision"))
        .transpose()?;
        let manifest: Vec<ManifestFile<'_>> = new
            .files
            .iter()
            .map(|f| ManifestFile {
                path: &f.path,
                sha256: &f.sha256,
                size: f.size,
            })
            .collect();
        let rev = revision(&adapter.repo_id(), number, parent.as_deref(), &manifest);
        let lora = new.lora.as_ref().map(Value::to_string);
        let lineage = new.lineage.as_ref().map(Value::to_string);
        let row = sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO versions (adapter_id, number, revision, state, created_at, created_by, lora, lineage, \
             kind, max_rank, targets, vllm_ok) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) RETURNING {VERSION_COLUMNS}"
        )))
        .bind(adapter.id)
        .bind(number)
        .bind(rev.as_str())
        .bind(VersionState::Ready.as_str())
        .bind(now)
        .bind(new.created_by.as_str())
        .bind(lora)
        .bind(lineage)
        .bind(new.facets.kind.as_str())
        .bind(new.facets.max_rank)
        .bind(new.facets.targets_column())
        .bind(new.facets.vllm_ok.map(i64::from))
        .fetch_one(&mut **tx)
        .await?;
        let mut version = version_from_row(&row)?;
        for chunk in new.files.chunks(200) {
            let mut sql = Sql::new("INSERT INTO files (version_id, path, size, sha256) VALUES ");
            for (i, f) in chunk.iter().enumerate() {
                sql.push(if i == 0 { "(" } else { ", (" });
                sql.bind(version.id)
                    .push(", ")
                    .bind(f.path.as_str())
                    .push(", ");
                sql.bind(f.size)
                    .push(", ")
                    .bind(f.sha256.as_str())
                    .push(")");
            }
            sql.query().execute(&mut **tx).await?;
        }
        for (i, p) in new.parents.iter().enumerate() {
            // The parent's row id, if it still exists (lineage survives its deletion by name).
            sqlx::query(
                "INSERT INTO version_parents (version_id, position, parent_version_id, parent_adapter, parent_number, parent_revision) \
                 VALUES ($1, $2, (SELECT id FROM versions WHERE revision = $3), $4, $5, $3)",
            )
            .bind(version.id)
            .bind(i as i64)
            .bind(p.revision.as_str())
            .bind(p.adapter.as_str())
            .bind(p.version)
            .execute(&mut **tx)
            .await?;
        }
        let mut files = new.files.clone();
        files.sort_by(|a, b| a.path.cmp(&b.path));
        version.files = files;
        Ok(version)
    }

    /// Orders version commits against the blob sweep: commits take the lock shared, the sweep
    /// exclusively while it checks a blob's references and deletes it. On SQLite every write
    /// transaction already holds the database's one write lock.
    async fn lock_blob_references(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
        exclusive: bool,
    ) -> Result<(), StoreError> {
        if self.dialect == Dialect::Postgres {
            let f = if exclusive {
                "pg_advisory_xact_lock"
            } else {
                "pg_advisory_xact_lock_shared"
            };
            sqlx::query(AssertSqlSafe(format!(
                "SELECT 1 AS locked FROM (SELECT {f}({BLOB_LOCK_KEY})) AS l"
            )))
            .fetch_one(&mut **tx)
            .await?;
        }
        Ok(())
    }

    /// Starts a write transaction. On SQLite it takes the write lock at once (`BEGIN IMMEDIATE`),
    /// queueing through busy_timeout: a deferred transaction that has read gets SQLITE_BUSY,
    /// without waiting, when it tries to write after another writer committed.
    pub(super) async fn begin_write(
        &self,
    ) -> Result<sqlx::Transaction<'static, sqlx::Any>, StoreError> {
        Ok(match self.dialect {
            Dialect::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Dialect::Postgres => self.pool.begin().await?,
        })
    }

    /// Appends a case-insensitive substring match on `owner/name`, description and base model.
    /// SQLite answers it from the FTS5 trigram table (migration 0002), which cannot match terms
    /// under 3 characters: those, like every Postgres search, use `LIKE` (served on Postgres by
    /// the pg_trgm indexes on exactly these expressions).
    /// The JSON list of `value` over a query's rows, in `order` (null over no rows on Postgres).
    fn json_agg(&self, value: &str, order: &str) -> String {
        match self.dialect {
            Dialect::Sqlite => format!("json_group_array({value} ORDER BY {order})"),
            Dialect::Postgres => format!("json_agg({value} ORDER BY {order})"),
        }
    }

    /// A JSON object of `(key, expression)` pairs.
    fn json_object(&self, fields: &[(&str, String)]) -> String {
        let pairs: Vec<String> = fields.iter().map(|(k, v)| format!("'{k}', {v}")).collect();
        match self.dialect {
            Dialect::Sqlite => format!("json_object({})", pairs.join(", ")),
            Dialect::Postgres => format!("json_build_object({})", pairs.join(", ")),
        }
    }

    /// A JSON list of the comma-separated expressions `values` (one row's tuple).
    fn json_tuple(&self, values: &str) -> String {
        match self.dialect {
            Dialect::Sqlite => format!("json_array({values})"),
            Dialect::Postgres => format!("json_build_array({values})"),
        }
    }

    /// `expr` (JSON text, or a subquery's JSON) as a JSON value inside an object, not a string.
    fn json_value(&self, expr: &str) -> String {
        match self.dialect {
            Dialect::Sqlite => format!("json({expr})"),
            Dialect::Postgres => format!("CAST({expr} AS JSON)"),
        }
    }

    /// A JSON expression as text (what sqlx's `Any` driver reads).
    fn json_text(&self, expr: &str) -> String {
        match self.dialect {
            Dialect::Sqlite => expr.to_string(),
            Dialect::Postgres => format!("CAST({expr} AS TEXT)"),
        }
    }

    fn push_search(&self, sql: &mut Sql, term: &str) {
        if self.dialect == Dialect::Sqlite && term.chars().count() >= 3 {
            sql.push(" AND id IN (SELECT rowid FROM adapter_search WHERE adapter_search MATCH ")
                .bind(fts_phrase(term))
                .push(")");
            return;
        }
        let pattern = like_pattern(term);
        sql.push(" AND (lower(owner || '/' || name) LIKE ")
            .bind(pattern.as_str())
            .push(" ESCAPE '\\' OR lower(description) LIKE ")
            .bind(pattern.as_str())
            .push(" ESCAPE '\\' OR lower(base_model) LIKE ")
            .bind(pattern)
            .push(" ESCAPE '\\')");
    }
}

/// An FTS5 query matching `term` as one phrase: with the trigram tokenizer, a substring match.
fn fts_phrase(term: &str) -> String {
    format!("\"{}\"", term.replace('"', "\"\""))
}

/// `sqlite://path` → a URL that creates the file (and its directory) when missing.
fn sqlite_url(rest: &str) -> Result<String, StoreError> {
    let path = rest.trim_start_matches("//");
    let file = path.split('?').next().unwrap_or_default();
    if file.is_empty() || file == ":memory:" {
        return Err(StoreError::Invalid(
            "a SQLite database URL needs a file path, e.g. sqlite://./quiver-data/quiver.db".into(),
        ));
    }
    if let Some(dir) = std::path::Path::new(file).parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir).map_err(|e| {
            StoreError::Invalid(format!(
                "cannot create database directory {}: {e}",
                dir.display()
            ))
        })?;
    }
    let sep = if path.contains('?') { '&' } else { '?' };
    Ok(if path.contains("mode=") {
        format!("sqlite://{path}")
    } else {
        format!("sqlite://{path}{sep}mode=rwc")
    })
}

/// Booleans come back as BOOLEAN from Postgres and as integers from some SQLite expressions.
pub(super) fn get_bool(row: &AnyRow, col: &str) -> Result<bool, sqlx::Error> {
    match row.try_get::<bool, _>(col) {
        Ok(b) => Ok(b),
        Err(_) => Ok(row.try_get::<i64, _>(col)? != 0),
    }
}

pub(super) fn json_column(row: &AnyRow, col: &str) -> Result<Option<Value>, StoreError> {
    let text: Option<String> = row.try_get(col)?;
    text.map(|t| {
        serde_json::from_str(&t).map_err(|e| StoreError::Corrupt(format!("column {col}: {e}")))
    })
    .transpose()
}

pub(super) fn adapter_from_row(row: &AnyRow) -> Result<AdapterRecord, StoreError> {
    Ok(AdapterRecord {
        id: row.try_get("id")?,
        owner: row.try_get("owner")?,
        name: row.try_get("name")?,
        base_model: row.try_get("base_model")?,
        description: row.try_get("description")?,
        tags: Vec::new(),
        private: get_bool(row, "private")?,
        downloads: row.try_get("downloads")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

fn version_from_row(row: &AnyRow) -> Result<VersionRecord, StoreError> {
    Ok(VersionRecord {
        id: row.try_get("id")?,
        adapter_id: row.try_get("adapter_id")?,
        number: row.try_get("number")?,
        revision: row.try_get("revision")?,
        state: row.try_get("state")?,
        created_at: row.try_get("created_at")?,
        created_by: row.try_get("created_by")?,
        lora: json_column(row, "lora")?,
        lineage: json_column(row, "lineage")?,
        files: Vec::new(),
    })
}

/// The opaque cursor of an adapter listing: the sort key and id of the last item shown.
#[derive(serde::Serialize, serde::Deserialize)]
struct AdapterCursor {
    s: String,
    k: Value,
    id: i64,
}

pub(super) fn encode_cursor<T: serde::Serialize>(c: &T) -> String {
    hex::encode(serde_json::to_vec(c).unwrap_or_default())
}

pub(super) fn decode_cursor<T: serde::de::DeserializeOwned>(raw: &str) -> Result<T, StoreError> {
    hex::decode(raw)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| StoreError::Invalid("cursor is not one this server issued".into()))
}

fn like_pattern(term: &str) -> String {
    let escaped = term
        .to_lowercase()
        .replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_");
    format!("%{escaped}%")
}

#[async_trait]
impl MetadataStore for SqlMetadata {
    fn dialect(&self) -> &'static str {
        match self.dialect {
            Dialect::Sqlite => "sqlite",
            Dialect::Postgres => "postgres",
        }
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn listing_generation(&self) -> Result<i64, StoreError> {
        Ok(
            sqlx::query("SELECT n FROM registry_generation WHERE id = 1")
                .fetch_one(&self.pool)
                .await?
                .try_get("n")?,
        )
    }

    async fn row_counts(&self) -> Result<(i64, i64, i64), StoreError> {
        let row = sqlx::query(
            "SELECT (SELECT COUNT(*) FROM adapters) AS a, (SELECT COUNT(*) FROM versions) AS v, \
             (SELECT COUNT(*) FROM files) AS f",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok((row.try_get("a")?, row.try_get("v")?, row.try_get("f")?))
    }
}

pub(super) async fn insert_tags(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    adapter_id: i64,
    tags: &[String],
) -> Result<(), StoreError> {
    for (i, tag) in tags.iter().enumerate() {
        sqlx::query("INSERT INTO adapter_tags (adapter_id, tag, position) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
            .bind(adapter_id)
            .bind(tag.as_str())
            .bind(i as i64)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}
