//! [`AdapterStore`] over sqlx `Any`: adapters, their tags, listing and search.

use async_trait::async_trait;
use sqlx::AssertSqlSafe;

use super::*;
use crate::RepoId;

#[async_trait]
impl AdapterStore for SqlMetadata {
    async fn create_adapter_audited(
        &self,
        new: &NewAdapter,
        audit: Option<&Audit>,
    ) -> Result<AdapterRecord, StoreError> {
        let now = now_ms();
        let mut tx = self.begin_write().await?;
        let row = sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO adapters (owner, name, base_model, description, private, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $6) RETURNING {ADAPTER_COLUMNS}"
        )))
        .bind(new.repo.owner.as_str())
        .bind(new.repo.name.as_str())
        .bind(new.base_model.as_str())
        .bind(new.description.as_str())
        .bind(new.private)
        .bind(now)
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| match StoreError::from(e) {
            StoreError::Conflict(_) => StoreError::Conflict(format!("adapter {} already exists", new.repo)),
            other => other,
        })?;
        let mut adapter = adapter_from_row(&row)?;
        insert_tags(&mut tx, adapter.id, &new.tags).await?;
        super::audit::append_audit_opt(&mut tx, audit).await?;
        tx.commit().await?;
        adapter.tags = new.tags.clone();
        Ok(adapter)
    }

    async fn get_adapter(&self, repo: &RepoId) -> Result<Option<AdapterRecord>, StoreError> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {ADAPTER_COLUMNS} FROM adapters WHERE owner = $1 AND name = $2"
        )))
        .bind(repo.owner.as_str())
        .bind(repo.name.as_str())
        .fetch_optional(&self.pool)
        .await?;
        match row {
            Some(row) => Ok(self.adapters_with_tags(vec![row]).await?.pop()),
            None => Ok(None),
        }
    }

    async fn list_adapters(
        &self,
        q: &ListAdapters,
        viewer: &Viewer,
    ) -> Result<Page<AdapterRecord>, StoreError> {
        let page = self.listing(q, viewer, false).await?;
        Ok(Page {
            items: page.items.into_iter().map(|l| l.adapter).collect(),
            next_cursor: page.next_cursor,
        })
    }

    async fn list_adapters_full(
        &self,
        q: &ListAdapters,
        viewer: &Viewer,
    ) -> Result<Page<ListedAdapter>, StoreError> {
        self.listing(q, viewer, true).await
    }

    async fn list_page_ids(
        &self,
        q: &ListAdapters,
        viewer: &Viewer,
    ) -> Result<PageIds, StoreError> {
        self.page_ids(q, viewer).await
    }

    async fn listed_adapters(&self, ids: &[i64]) -> Result<Vec<ListedAdapter>, StoreError> {
        self.listed(ids).await
    }

    async fn update_adapter_audited(
        &self,
        adapter_id: i64,
        patch: &AdapterPatch,
        audit: Option<&Audit>,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        let mut sql = Sql::new("UPDATE adapters SET updated_at = ");
        sql.bind(now_ms());
        if let Some(d) = &patch.description {
            sql.push(", description = ").bind(d.as_str());
        }
        if let Some(p) = patch.private {
            sql.push(", private = ").bind(p);
        }
        if let Some(b) = &patch.base_model {
            sql.push(", base_model = ").bind(b.as_str());
        }
        sql.push(" WHERE id = ").bind(adapter_id);
        let done = sql.query().execute(&mut *tx).await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound("adapter not found".into()));
        }
        if let Some(tags) = &patch.tags {
            sqlx::query("DELETE FROM adapter_tags WHERE adapter_id = $1")
                .bind(adapter_id)
                .execute(&mut *tx)
                .await?;
            insert_tags(&mut tx, adapter_id, tags).await?;
        }
        super::audit::append_audit_opt(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn delete_adapter_audited(
        &self,
        adapter_id: i64,
        audit: Option<&Audit>,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        let done = sqlx::query("DELETE FROM adapters WHERE id = $1")
            .bind(adapter_id)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() > 0 {
            super::audit::append_audit_opt(&mut tx, audit).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn facet_counts(&self, viewer: &Viewer, limit: u32) -> Result<FacetCounts, StoreError> {
        let limit = i64::from(limit.max(1));
        // `latest`: `from` joins `versions v`, counted only at each adapter's newest ready version.
        let count = |select: &str, from: &str, group: &str, latest: bool| {
            let mut sql = Sql::new(&format!(
                "SELECT {select} AS value, COUNT(*) AS n FROM {from} WHERE 1 = 1"
            ));
            if latest {
                push_latest_ready(&mut sql);
            }
            push_visible(&mut sql, viewer, "a.");
            sql.push(&format!(
                " GROUP BY {group} ORDER BY n DESC, value ASC LIMIT "
            ))
            .bind(limit);
            sql
        };
        let latest = "adapters a JOIN versions v ON v.adapter_id = a.id";
        let queries = [
            count("a.base_model", "adapters a", "a.base_model", false),
            count("a.owner", "adapters a", "a.owner", false),
            count(
                "t.tag",
                "adapters a JOIN adapter_tags t ON t.adapter_id = a.id",
                "t.tag",
                false,
            ),
            count("v.kind", latest, "v.kind", true),
        ];
        let mut lists = Vec::with_capacity(queries.len());
        for sql in queries {
            let rows = sql.query().fetch_all(&self.pool).await?;
            lists.push(
                rows.iter()
                    .map(|r| {
                        Ok((
                            r.try_get::<Option<String>, _>("value")?.unwrap_or_default(),
                            r.try_get("n")?,
                        ))
                    })
                    .collect::<Result<Vec<(String, i64)>, StoreError>>()?,
            );
        }
        // Targets are a list per version: count them in Rust over the visible newest versions.
        let mut sql = Sql::new(&format!(
            "SELECT v.targets AS targets FROM {latest} WHERE 1 = 1"
        ));
        push_latest_ready(&mut sql);
        push_visible(&mut sql, viewer, "a.");
        let mut targets: HashMap<String, i64> = HashMap::new();
        for row in sql.query().fetch_all(&self.pool).await? {
            let list: Option<String> = row.try_get("targets")?;
            for t in list
                .unwrap_or_default()
                .split(',')
                .filter(|t| !t.is_empty())
            {
                *targets.entry(t.to_string()).or_default() += 1;
            }
        }
        let mut targets: Vec<(String, i64)> = targets.into_iter().collect();
        targets.sort_by(|x, y| y.1.cmp(&x.1).then_with(|| x.0.cmp(&y.0)));
        targets.truncate(limit as usize);
        let mut lists = lists.into_iter();
        let mut next = || lists.next().unwrap_or_default();
        Ok(FacetCounts {
            base_models: next(),
            owners: next(),
            tags: next(),
            kinds: next(),
            targets,
        })
    }

    async fn record_download(&self, adapter_id: i64) -> Result<(), StoreError> {
        sqlx::query("UPDATE adapters SET downloads = downloads + 1 WHERE id = $1")
            .bind(adapter_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

impl SqlMetadata {
    /// A listing page: one query (see [`AdapterStore::list_adapters_full`]).
    async fn listing(
        &self,
        q: &ListAdapters,
        viewer: &Viewer,
        full: bool,
    ) -> Result<Page<ListedAdapter>, StoreError> {
        // The page itself; then, per adapter, its tags and (`full`) its newest ready version with
        // its files, its aliases and protected names, as JSON lists built by the database: one
        // round trip for the whole page.
        let mut sql = Sql::new(&format!(
            "WITH page AS (SELECT {ADAPTER_COLUMNS} FROM adapters WHERE 1 = 1"
        ));
        let limit = self.push_page(&mut sql, q, viewer)?;
        sql.push(")");
        self.push_items(&mut sql, full, &page_order(q.sort, "page."));
        let mut items = self.fetch_items(sql).await?;
        let next_cursor = if items.len() as i64 > limit {
            items.truncate(limit as usize);
            items.last().map(|last| {
                let a = &last.adapter;
                next_cursor(
                    q.sort,
                    (
                        a.id,
                        &a.owner,
                        &a.name,
                        a.created_at,
                        a.updated_at,
                        a.downloads,
                    ),
                )
            })
        } else {
            None
        };
        Ok(Page { items, next_cursor })
    }

    /// Appends the page's conditions (after `WHERE 1 = 1`), its order and its limit, one row more
    /// than the page's `limit` (returned) to tell whether another page follows.
    fn push_page(
        &self,
        sql: &mut Sql,
        q: &ListAdapters,
        viewer: &Viewer,
    ) -> Result<i64, StoreError> {
        push_visible(sql, viewer, "");
        if let Some(term) = q.q.as_deref().filter(|t| !t.is_empty()) {
            self.push_search(sql, term);
        }
        if let Some(base) = &q.base_model {
            sql.push(" AND base_model = ").bind(base.as_str());
        }
        if let Some(owner) = &q.owner {
            sql.push(" AND owner = ").bind(owner.to_ascii_lowercase());
        }
        if let Some(tag) = &q.tag {
            sql.push(" AND id IN (SELECT adapter_id FROM adapter_tags WHERE tag = ")
                .bind(tag.as_str())
                .push(")");
        }
        if let Some(parent) = &q.derived_from {
            sql.push(
                " AND id IN (SELECT v.adapter_id FROM version_parents p \
                 JOIN versions v ON v.id = p.version_id \
                 JOIN versions pv ON pv.id = p.parent_version_id \
                 JOIN adapters pa ON pa.id = pv.adapter_id WHERE pa.owner = ",
            )
            .bind(parent.owner.as_str())
            .push(" AND pa.name = ")
            .bind(parent.name.as_str());
            // A private parent names nothing for those who may not see it.
            push_visible(sql, viewer, "pa.");
            sql.push(")");
        }
        if !q.facets.is_empty() {
            push_facets(sql, &q.facets);
        }
        if let Some(raw) = &q.cursor {
            let c: AdapterCursor = decode_cursor(raw)?;
            if c.s != q.sort.as_str() {
                return Err(StoreError::Invalid(
                    "cursor belongs to a listing with another sort order".into(),
                ));
            }
            if q.sort == AdapterSort::Name {
                let (owner, name) =
                    serde_json::from_value::<(String, String)>(c.k).map_err(|_| {
                        StoreError::Invalid("cursor is not one this server issued".into())
                    })?;
                sql.push(" AND (owner > ")
                    .bind(owner.as_str())
                    .push(" OR (owner = ")
                    .bind(owner)
                    .push(" AND name > ")
                    .bind(name)
                    .push("))");
            } else {
                let k = c.k.as_i64().ok_or_else(|| {
                    StoreError::Invalid("cursor is not one this server issued".into())
                })?;
                let key_col = sort_column(q.sort);
                sql.push(&format!(" AND ({key_col} < "))
                    .bind(k)
                    .push(&format!(" OR ({key_col} = "))
                    .bind(k)
                    .push(" AND id < ")
                    .bind(c.id)
                    .push("))");
            }
        }
        sql.push(&format!(" ORDER BY {}", page_order(q.sort, "")));
        let limit = i64::from(q.limit.max(1));
        // A number in the text, not a bound parameter: SQLite reads a bound LIMIT while planning
        // and so re-prepares the statement at every execution (15 % of a listing's time).
        sql.push(&format!(" LIMIT {}", limit + 1));
        Ok(limit)
    }

    /// Appends `SELECT <the JSON list of the adapters of the CTE page, in order> AS items`. The
    /// whole page is one JSON text in one row: a row of many columns costs sqlx-sqlite a copy of
    /// every value, made on its worker thread and freed on ours.
    fn push_items(&self, sql: &mut Sql, full: bool, order: &str) {
        let nested = |select: &str| self.json_value(&format!("({select})"));
        let mut fields = vec![
            ("id", "page.id".to_string()),
            ("owner", "page.owner".into()),
            ("name", "page.name".into()),
            ("base_model", "page.base_model".into()),
            ("description", "page.description".into()),
            // A boolean on Postgres, an integer on SQLite: 0 or 1 on both.
            ("private", "CASE WHEN page.private THEN 1 ELSE 0 END".into()),
            ("downloads", "page.downloads".into()),
            ("created_at", "page.created_at".into()),
            ("updated_at", "page.updated_at".into()),
            (
                "tags",
                nested(&format!(
                    "SELECT {} FROM adapter_tags t WHERE t.adapter_id = page.id",
                    self.json_agg("t.tag", "t.position")
                )),
            ),
        ];
        if full {
            let file = self.json_tuple("f.path, f.size, f.sha256");
            let alias = self.json_tuple("r.name, rv.number");
            fields.extend([
                ("v_id", "v.id".to_string()),
                ("v_number", "v.number".into()),
                ("v_revision", "v.revision".into()),
                ("v_state", "v.state".into()),
                ("v_created_at", "v.created_at".into()),
                ("v_created_by", "v.created_by".into()),
                ("v_lora", self.json_value("v.lora")),
                ("v_lineage", self.json_value("v.lineage")),
                (
                    "v_files",
                    nested(&format!(
                        "SELECT {} FROM files f WHERE f.version_id = v.id",
                        self.json_agg(&file, "f.path")
                    )),
                ),
                (
                    "aliases",
                    nested(&format!(
                        "SELECT {} FROM refs r JOIN versions rv ON rv.id = r.version_id \
                         WHERE r.adapter_id = page.id",
                        self.json_agg(&alias, "r.name")
                    )),
                ),
                (
                    "protected",
                    nested(&format!(
                        "SELECT {} FROM protected_aliases p WHERE p.adapter_id = page.id",
                        self.json_agg("p.name", "p.name")
                    )),
                ),
            ]);
        }
        let object = self.json_object(&fields);
        sql.push(&format!(
            " SELECT {} AS items FROM page",
            self.json_text(&self.json_agg(&object, order))
        ));
        if full {
            sql.push(" LEFT JOIN versions v ON v.adapter_id = page.id AND v.state = ")
                .bind(VersionState::Ready.as_str())
                .push(
                    " AND v.number = (SELECT MAX(w.number) FROM versions w \
                     WHERE w.adapter_id = page.id AND w.state = ",
                )
                .bind(VersionState::Ready.as_str())
                .push(")");
        }
    }

    /// Runs a query built by [`Self::push_items`].
    async fn fetch_items(&self, sql: Sql) -> Result<Vec<ListedAdapter>, StoreError> {
        let row = sql.query().fetch_one(&self.pool).await?;
        let rows: Vec<ListedRow> = json_items(&row, "listing page")?;
        Ok(rows.into_iter().map(ListedRow::into_listed).collect())
    }

    /// The ids of a listing page, with the listing generation read by the same statement.
    pub(super) async fn page_ids(
        &self,
        q: &ListAdapters,
        viewer: &Viewer,
    ) -> Result<PageIds, StoreError> {
        let mut sql = Sql::new(
            "WITH page AS (SELECT id, owner, name, created_at, updated_at, downloads \
             FROM adapters WHERE 1 = 1",
        );
        let limit = self.push_page(&mut sql, q, viewer)?;
        let key = self.json_tuple(
            "page.id, page.owner, page.name, page.created_at, page.updated_at, page.downloads",
        );
        // An uncorrelated scalar subquery: read once, in the statement's snapshot.
        sql.push(&format!(
            ") SELECT (SELECT n FROM registry_generation WHERE id = 1) AS generation, \
             {} AS items FROM page",
            self.json_text(&self.json_agg(&key, &page_order(q.sort, "page.")))
        ));
        let row = sql.query().fetch_one(&self.pool).await?;
        let generation: i64 = row.try_get("generation")?;
        type Key = (i64, String, String, i64, i64, i64);
        let mut keys: Vec<Key> = json_items(&row, "listing page ids")?;
        let next_cursor = if keys.len() as i64 > limit {
            keys.truncate(limit as usize);
            keys.last().map(|(id, owner, name, c, u, d)| {
                next_cursor(q.sort, (*id, owner, name, *c, *u, *d))
            })
        } else {
            None
        };
        Ok(PageIds {
            generation,
            ids: keys.into_iter().map(|k| k.0).collect(),
            next_cursor,
        })
    }

    /// What a listing shows of these adapters (any order; ids that no longer exist are left out),
    /// 500 ids a query.
    pub(super) async fn listed(&self, ids: &[i64]) -> Result<Vec<ListedAdapter>, StoreError> {
        let mut out = Vec::with_capacity(ids.len());
        for slice in ids.chunks(500) {
            let mut sql = Sql::new(&format!(
                "WITH page AS (SELECT {ADAPTER_COLUMNS} FROM adapters WHERE id IN "
            ));
            sql.bind_list(slice).push(")");
            self.push_items(&mut sql, true, "page.id");
            out.extend(self.fetch_items(sql).await?);
        }
        Ok(out)
    }
}

/// The `items` column of a page's row: a JSON list, null when the page is empty (Postgres
/// aggregates no rows to NULL).
fn json_items<T: serde::de::DeserializeOwned>(
    row: &AnyRow,
    what: &str,
) -> Result<Vec<T>, StoreError> {
    match row.try_get::<Option<String>, _>("items")? {
        None => Ok(Vec::new()),
        Some(text) => {
            serde_json::from_str(&text).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
        }
    }
}

/// The column a numeric sort orders by.
fn sort_column(sort: AdapterSort) -> &'static str {
    match sort {
        AdapterSort::Updated => "updated_at",
        AdapterSort::Created => "created_at",
        AdapterSort::Downloads => "downloads",
        AdapterSort::Name => "owner",
    }
}

/// A listing's `ORDER BY`, its columns qualified by `table` (`page.` or nothing).
fn page_order(sort: AdapterSort, table: &str) -> String {
    match sort {
        AdapterSort::Name => format!("{table}owner ASC, {table}name ASC"),
        _ => format!("{table}{} DESC, {table}id DESC", sort_column(sort)),
    }
}

/// The cursor after a page's last adapter, given as (id, owner, name, created, updated,
/// downloads).
fn next_cursor(sort: AdapterSort, last: (i64, &str, &str, i64, i64, i64)) -> String {
    let (id, owner, name, created_at, updated_at, downloads) = last;
    let k = match sort {
        AdapterSort::Updated => Value::from(updated_at),
        AdapterSort::Created => Value::from(created_at),
        AdapterSort::Downloads => Value::from(downloads),
        AdapterSort::Name => serde_json::json!([owner, name]),
    };
    encode_cursor(&AdapterCursor {
        s: sort.as_str().into(),
        k,
        id,
    })
}

/// One adapter of a listing page as the query's JSON holds it; lists the database aggregated
/// from no rows are null on Postgres.
#[derive(serde::Deserialize)]
struct ListedRow {
    id: i64,
    owner: String,
    name: String,
    base_model: String,
    description: String,
    private: i64,
    downloads: i64,
    created_at: i64,
    updated_at: i64,
    tags: Option<Vec<String>>,
    v_id: Option<i64>,
    v_number: Option<i64>,
    v_revision: Option<String>,
    v_state: Option<String>,
    v_created_at: Option<i64>,
    v_created_by: Option<String>,
    v_lora: Option<Value>,
    v_lineage: Option<Value>,
    v_files: Option<Vec<(String, i64, String)>>,
    aliases: Option<Vec<(String, i64)>>,
    protected: Option<Vec<String>>,
}

impl ListedRow {
    fn into_listed(self) -> ListedAdapter {
        let latest = self.v_id.map(|id| VersionRecord {
            id,
            adapter_id: self.id,
            number: self.v_number.unwrap_or_default(),
            revision: self.v_revision.unwrap_or_default(),
            state: self.v_state.unwrap_or_default(),
            created_at: self.v_created_at.unwrap_or_default(),
            created_by: self.v_created_by.unwrap_or_default(),
            lora: self.v_lora,
            lineage: self.v_lineage,
            files: self
                .v_files
                .unwrap_or_default()
                .into_iter()
                .map(|(path, size, sha256)| FileRecord { path, size, sha256 })
                .collect(),
        });
        ListedAdapter {
            adapter: AdapterRecord {
                id: self.id,
                owner: self.owner,
                name: self.name,
                base_model: self.base_model,
                description: self.description,
                tags: self.tags.unwrap_or_default(),
                private: self.private != 0,
                downloads: self.downloads,
                created_at: self.created_at,
                updated_at: self.updated_at,
            },
            latest,
            aliases: self.aliases.unwrap_or_default(),
            protected: self.protected.unwrap_or_default(),
        }
    }
}

/// Keeps `v` when it is its adapter's newest ready version.
fn push_latest_ready(sql: &mut Sql) {
    let ready = VersionState::Ready.as_str();
    sql.push(" AND v.state = ")
        .bind(ready)
        .push(" AND v.number = (SELECT MAX(w.number) FROM versions w WHERE w.adapter_id = v.adapter_id AND w.state = ")
        .bind(ready)
        .push(")");
}

/// Keeps the rows of adapters `viewer` may see; `prefix` qualifies the adapters table (`a.`).
fn push_visible(sql: &mut Sql, viewer: &Viewer, prefix: &str) {
    if viewer.admin && viewer.restrict.is_none() {
        return;
    }
    let user = match (&viewer.user, viewer.admin) {
        (_, true) => None,
        (Some(user), false) => Some(user),
        (None, false) => {
            sql.push(&format!(" AND {prefix}private = FALSE"));
            return;
        }
    };
    sql.push(&format!(" AND ({prefix}private = FALSE OR (1 = 1"));
    if let Some(user) = user {
        // The user's own namespace and its organisations' (at most MAX_ORGS_PER_USER binds).
        sql.push(&format!(" AND {prefix}owner IN ("))
            .bind(user.as_str());
        for org in &viewer.orgs {
            sql.push(", ").bind(org.as_str());
        }
        sql.push(")");
    }
    if let Some(r) = &viewer.restrict {
        // A restricted token's private reads: only inside its namespaces and adapters.
        sql.push(" AND (1 = 0");
        for ns in &r.namespaces {
            sql.push(&format!(" OR {prefix}owner = ")).bind(ns.as_str());
        }
        for a in &r.adapters {
            sql.push(&format!(" OR ({prefix}owner = "))
                .bind(a.owner.as_str())
                .push(&format!(" AND {prefix}name = "))
                .bind(a.name.as_str())
                .push(")");
        }
        sql.push(")");
    }
    sql.push("))");
}

/// Keeps adapters whose newest ready version matches every facet of `f`. A correlated EXISTS:
/// the page walks adapters in its sort order and stops at the page's end, where `id IN (…)` made
/// SQLite find every matching version's adapter and sort them all first (7× slower for a filter
/// most versions match; a filter that few adapters match walks further).
fn push_facets(sql: &mut Sql, f: &FacetFilter) {
    sql.push(" AND EXISTS (SELECT 1 FROM versions v WHERE v.adapter_id = adapters.id");
    push_latest_ready(sql);
    if let Some(kind) = f.kind {
        sql.push(" AND v.kind = ").bind(kind.as_str());
    }
    if let Some(min) = f.rank_min {
        sql.push(" AND v.max_rank >= ").bind(min);
    }
    if let Some(max) = f.rank_max {
        sql.push(" AND v.max_rank <= ").bind(max);
    }
    if let Some(target) = &f.target {
        let escaped: String = target
            .chars()
            .flat_map(|c| match c {
                '%' | '_' | '\\' => vec!['\\', c],
                c => vec![c],
            })
            .collect();
        sql.push(" AND v.targets LIKE ")
            .bind(format!("%,{escaped},%"))
            .push(" ESCAPE '\\'");
    }
    if let Some(ok) = f.vllm {
        sql.push(" AND v.vllm_ok = ").bind(i64::from(ok));
    }
    sql.push(")");
}
