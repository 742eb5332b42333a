//! [`VersionStore`] over sqlx `Any`: versions, their files and refs, and blob references.

use async_trait::async_trait;
use sqlx::Row;

use super::audit;
use super::*;

#[async_trait]
impl VersionStore for SqlMetadata {
    async fn create_version_audited(
        &self,
        adapter: &AdapterRecord,
        new: &NewVersion,
        check: &dyn CommitCheck,
        audit: Option<&AuditContext>,
    ) -> Result<VersionRecord, StoreError> {
        let mut tx = self.begin_write().await?;
        // Before any row is written: on Postgres only the shared blob lock is held while the
        // publisher asks the blob store, so other publishers do not wait on it.
        self.lock_blob_references(&mut tx, false).await?;
        check.check().await?;
        let version = self.insert_version(&mut tx, adapter, new).await?;
        if let Some(ctx) = audit {
            let entry = Audit {
                context: ctx.clone(),
                action: AuditAction::VersionPublish,
                target: format!("{}/{}", adapter.owner, adapter.name),
                owner: Some(adapter.owner.clone()),
                before: None,
                after: Some(serde_json::json!({
                    "version": version.number,
                    "revision": version.revision,
                    "files": version.files.len(),
                })),
            };
            audit::append_audit(&mut tx, &entry).await?;
        }
        tx.commit().await?;
        Ok(version)
    }

    async fn versions_without_facets(
        &self,
        limit: u32,
    ) -> Result<Vec<(i64, Option<Value>, Option<Value>)>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, lora, lineage FROM versions WHERE kind IS NULL ORDER BY id LIMIT $1",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        let json = |raw: Option<String>| raw.and_then(|t| serde_json::from_str(&t).ok());
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("id")?,
                    json(r.try_get("lora")?),
                    json(r.try_get("lineage")?),
                ))
            })
            .collect()
    }

    async fn set_version_facets(
        &self,
        version_id: i64,
        facets: &VersionFacets,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE versions SET kind = $1, max_rank = $2, targets = $3, vllm_ok = $4 WHERE id = $5",
        )
        .bind(facets.kind.as_str())
        .bind(facets.max_rank)
        .bind(facets.targets_column())
        .bind(facets.vllm_ok.map(i64::from))
        .bind(version_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn get_version(
        &self,
        adapter_id: i64,
        version: &VersionRef,
    ) -> Result<Option<VersionRecord>, StoreError> {
        let mut sql = Sql::new(&format!(
            "SELECT {VERSION_COLUMNS} FROM versions WHERE adapter_id = "
        ));
        sql.bind(adapter_id);
        match version {
            VersionRef::Number(n) => {
                sql.push(" AND number = ").bind(*n);
            }
            VersionRef::Revision(r) => {
                sql.push(" AND revision = ").bind(r.as_str());
            }
            VersionRef::Main => {
                sql.push(" AND state = ")
                    .bind(VersionState::Ready.as_str())
                    .push(" ORDER BY number DESC LIMIT 1");
            }
            VersionRef::Alias(a) => {
                sql.push(" AND id = (SELECT version_id FROM refs WHERE adapter_id = ")
                    .bind(adapter_id)
                    .push(" AND name = ")
                    .bind(a.as_str())
                    .push(")");
            }
        }
        let row = sql.query().fetch_optional(&self.pool).await?;
        match row {
            Some(row) => Ok(self.versions_with_files(vec![row]).await?.pop()),
            None => Ok(None),
        }
    }

    async fn list_versions(
        &self,
        adapter_id: i64,
        limit: u32,
        cursor: Option<&str>,
    ) -> Result<Page<VersionRecord>, StoreError> {
        let mut sql = Sql::new(&format!(
            "SELECT {VERSION_COLUMNS} FROM versions WHERE adapter_id = "
        ));
        sql.bind(adapter_id);
        if let Some(raw) = cursor {
            let before: i64 = decode_cursor(raw)?;
            sql.push(" AND number < ").bind(before);
        }
        let limit = i64::from(limit.max(1));
        sql.push(" ORDER BY number DESC LIMIT ").bind(limit + 1);
        let rows = sql.query().fetch_all(&self.pool).await?;
        let mut items = self.versions_with_files(rows).await?;
        let next_cursor = if items.len() as i64 > limit {
            items.truncate(limit as usize);
            items.last().map(|v| encode_cursor(&v.number))
        } else {
            None
        };
        Ok(Page { items, next_cursor })
    }

    async fn latest_versions(&self, adapter_ids: &[i64]) -> Result<Vec<VersionRecord>, StoreError> {
        if adapter_ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut sql = Sql::new(&format!(
            "SELECT {VERSION_COLUMNS} FROM versions v WHERE state = $1 AND number = \
             (SELECT MAX(number) FROM versions w WHERE w.adapter_id = v.adapter_id AND w.state = $1) \
             AND adapter_id IN "
        ));
        sql.arg(VersionState::Ready.as_str()); // $1, written out above
        sql.bind_list(adapter_ids);
        let rows = sql.query().fetch_all(&self.pool).await?;
        self.versions_with_files(rows).await
    }

    async fn blob_in_use(&self, sha256: &str) -> Result<bool, StoreError> {
        Ok(
            sqlx::query("SELECT 1 AS one FROM files WHERE sha256 = $1 LIMIT 1")
                .bind(sha256)
                .fetch_optional(&self.pool)
                .await?
                .is_some(),
        )
    }

    async fn delete_blob_if_unreferenced(
        &self,
        sha256: &str,
        delete: &(dyn Fn() -> futures::future::BoxFuture<'static, Result<bool, StoreError>> + Sync),
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin_write().await?;
        self.lock_blob_references(&mut tx, true).await?;
        let used = sqlx::query("SELECT 1 AS one FROM files WHERE sha256 = $1 LIMIT 1")
            .bind(sha256)
            .fetch_optional(&mut *tx)
            .await?
            .is_some();
        if used {
            return Ok(false);
        }
        let deleted = delete().await?;
        tx.commit().await?;
        Ok(deleted)
    }

    async fn aliases(&self, adapter_ids: &[i64]) -> Result<Vec<(i64, String, i64)>, StoreError> {
        if adapter_ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut sql = Sql::new(
            "SELECT r.adapter_id, r.name, v.number FROM refs r JOIN versions v ON v.id = r.version_id \
             WHERE r.adapter_id IN ",
        );
        sql.bind_list(adapter_ids).push(" ORDER BY r.name");
        sql.query()
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| {
                Ok((
                    r.try_get("adapter_id")?,
                    r.try_get("name")?,
                    r.try_get("number")?,
                ))
            })
            .collect()
    }

    async fn aliases_and_protection(
        &self,
        adapter_ids: &[i64],
    ) -> Result<(Vec<(i64, String, i64)>, Vec<(i64, String)>), StoreError> {
        if adapter_ids.is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        // Alias rows carry their version number; protected names carry NULL.
        let mut sql = Sql::new(
            "SELECT r.adapter_id, r.name, v.number FROM refs r JOIN versions v ON v.id = r.version_id \
             WHERE r.adapter_id IN ",
        );
        sql.bind_list(adapter_ids).push(
            " UNION ALL SELECT p.adapter_id, p.name, NULL AS number FROM protected_aliases p \
             WHERE p.adapter_id IN ",
        );
        sql.bind_list(adapter_ids).push(" ORDER BY 1, 2");
        let (mut aliases, mut protected) = (Vec::new(), Vec::new());
        for r in sql.query().fetch_all(&self.pool).await? {
            let (id, name): (i64, String) = (r.try_get("adapter_id")?, r.try_get("name")?);
            match r.try_get::<Option<i64>, _>("number")? {
                Some(number) => aliases.push((id, name, number)),
                None => protected.push((id, name)),
            }
        }
        Ok((aliases, protected))
    }

    async fn protected_aliases(
        &self,
        adapter_ids: &[i64],
    ) -> Result<Vec<(i64, String)>, StoreError> {
        if adapter_ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut sql =
            Sql::new("SELECT adapter_id, name FROM protected_aliases WHERE adapter_id IN ");
        sql.bind_list(adapter_ids)
            .push(" ORDER BY adapter_id, name");
        sql.query()
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| Ok((r.try_get("adapter_id")?, r.try_get("name")?)))
            .collect()
    }

    async fn set_alias_audited(
        &self,
        adapter_id: i64,
        alias: &str,
        number: i64,
        allow_protected: bool,
        audit: Option<&Audit>,
    ) -> Result<AliasChange, StoreError> {
        let mut tx = self.begin_write().await?;
        if !allow_protected {
            self.refuse_protected(&mut tx, adapter_id, alias).await?;
        }
        let from = alias_target_in(&mut tx, adapter_id, alias).await?;
        let Some(version) = sqlx::query(
            "SELECT id, revision FROM versions WHERE adapter_id = $1 AND number = $2 AND state = $3",
        )
        .bind(adapter_id)
        .bind(number)
        .bind(VersionState::Ready.as_str())
        .fetch_optional(&mut *tx)
        .await?
        else {
            return Err(StoreError::NotFound(format!(
                "version {number} does not exist"
            )));
        };
        let version_id: i64 = version.try_get("id")?;
        sqlx::query(
            "INSERT INTO refs (adapter_id, name, version_id, updated_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (adapter_id, name) DO UPDATE SET version_id = excluded.version_id, updated_at = excluded.updated_at",
        )
        .bind(adapter_id)
        .bind(alias)
        .bind(version_id)
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
        let to = AliasTarget {
            number,
            revision: version.try_get("revision")?,
        };
        append_alias_audit(&mut tx, audit, from.as_ref()).await?;
        tx.commit().await?;
        Ok(AliasChange { from, to })
    }

    async fn delete_alias_audited(
        &self,
        adapter_id: i64,
        alias: &str,
        allow_protected: bool,
        audit: Option<&Audit>,
    ) -> Result<Option<AliasTarget>, StoreError> {
        let mut tx = self.begin_write().await?;
        if !allow_protected {
            self.refuse_protected(&mut tx, adapter_id, alias).await?;
        }
        let Some(from) = alias_target_in(&mut tx, adapter_id, alias).await? else {
            return Ok(None);
        };
        sqlx::query("DELETE FROM refs WHERE adapter_id = $1 AND name = $2")
            .bind(adapter_id)
            .bind(alias)
            .execute(&mut *tx)
            .await?;
        append_alias_audit(&mut tx, audit, Some(&from)).await?;
        tx.commit().await?;
        Ok(Some(from))
    }

    async fn set_alias_protection(
        &self,
        adapter: &AdapterRecord,
        alias: &str,
        protected: bool,
        audit: Option<&AuditContext>,
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin_write().await?;
        self.lock_alias_names(&mut tx, adapter.id).await?;
        let done = if protected {
            sqlx::query(
                "INSERT INTO protected_aliases (adapter_id, name, created_at, created_by) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (adapter_id, name) DO NOTHING",
            )
            .bind(adapter.id)
            .bind(alias)
            .bind(now_ms())
            .bind(audit.and_then(|a| a.actor.as_deref()))
            .execute(&mut *tx)
            .await?
        } else {
            sqlx::query("DELETE FROM protected_aliases WHERE adapter_id = $1 AND name = $2")
                .bind(adapter.id)
                .bind(alias)
                .execute(&mut *tx)
                .await?
        };
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        if let Some(ctx) = audit {
            let state = |p: bool| Some(serde_json::json!({ "protected": p }));
            let entry = Audit {
                context: ctx.clone(),
                action: AuditAction::AliasProtect,
                target: format!("{}/{}@{alias}", adapter.owner, adapter.name),
                owner: Some(adapter.owner.clone()),
                before: state(!protected),
                after: state(protected),
            };
            audit::append_audit(&mut tx, &entry).await?;
        }
        tx.commit().await?;
        Ok(true)
    }
}

impl SqlMetadata {
    /// Orders the changes of one adapter's alias names against each other: on Postgres it
    /// takes the adapter's row lock (`FOR NO KEY UPDATE`, the lock a version commit's
    /// `UPDATE adapters` takes too), so a protection change and a non-admin's move of the same
    /// adapter never interleave between the move's check and its commit. On SQLite the write
    /// transaction already holds the database's one write lock. `NotFound` when the adapter is
    /// gone.
    async fn lock_alias_names(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
        adapter_id: i64,
    ) -> Result<(), StoreError> {
        let sql = match self.dialect {
            Dialect::Postgres => "SELECT id FROM adapters WHERE id = $1 FOR NO KEY UPDATE",
            Dialect::Sqlite => "SELECT id FROM adapters WHERE id = $1",
        };
        sqlx::query(sql)
            .bind(adapter_id)
            .fetch_optional(&mut **tx)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("adapter {adapter_id} was deleted")))?;
        Ok(())
    }

    /// In a move's transaction: [`StoreError::AliasProtected`] when `alias` is a protected
    /// name of the adapter (after [`SqlMetadata::lock_alias_names`]).
    async fn refuse_protected(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
        adapter_id: i64,
        alias: &str,
    ) -> Result<(), StoreError> {
        self.lock_alias_names(tx, adapter_id).await?;
        let protected = sqlx::query(
            "SELECT 1 AS one FROM protected_aliases WHERE adapter_id = $1 AND name = $2",
        )
        .bind(adapter_id)
        .bind(alias)
        .fetch_optional(&mut **tx)
        .await?
        .is_some();
        if protected {
            return Err(StoreError::AliasProtected(alias.to_string()));
        }
        Ok(())
    }
}

/// What `alias` of the adapter points at, read in `tx` (after any lock the caller took).
async fn alias_target_in(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    adapter_id: i64,
    alias: &str,
) -> Result<Option<AliasTarget>, StoreError> {
    sqlx::query(
        "SELECT v.number, v.revision FROM refs r JOIN versions v ON v.id = r.version_id \
         WHERE r.adapter_id = $1 AND r.name = $2",
    )
    .bind(adapter_id)
    .bind(alias)
    .fetch_optional(&mut **tx)
    .await?
    .map(|r| {
        Ok(AliasTarget {
            number: r.try_get("number")?,
            revision: r.try_get("revision")?,
        })
    })
    .transpose()
}

/// Appends an alias change's entry with `before` set to what the alias pointed at, as read in
/// the same transaction.
async fn append_alias_audit(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    audit: Option<&Audit>,
    before: Option<&AliasTarget>,
) -> Result<(), StoreError> {
    let Some(entry) = audit else {
        return Ok(());
    };
    let mut entry = entry.clone();
    entry.before = before.map(|t| serde_json::json!({ "version": t.number }));
    audit::append_audit(tx, &entry).await
}
