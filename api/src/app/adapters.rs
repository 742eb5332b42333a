//! Adapters as every front door sees them: the listing (its query, cache key and cached pages),
//! full views with refs and the latest version, the checks on new fields, deletion.

use std::collections::HashMap;
use std::sync::Arc;

use quiver_store::{
    AdapterRecord, AdapterSort, FacetFilter, ListAdapters, ListedAdapter, Page, RepoId, Store,
    VersionKind, Viewer,
};
use serde::Deserialize;
use utoipa::IntoParams;

use crate::app::lookup::page_limit;
use crate::app::redact::{Parents, has_parents};
use crate::app::resources::{AdapterPage, AdapterView};
use crate::error::{ApiError, ErrorCode};
use crate::list_cache::{CachedPage, Lookup};
use crate::list_fragments::Kept;
use crate::state::AppState;

/// Most tags an adapter may carry, and the longest tag, description and base model name.
const MAX_TAGS: usize = 64;
const MAX_TAG_LEN: usize = 64;
const MAX_DESCRIPTION_LEN: usize = 16 * 1024;
pub const MAX_BASE_MODEL_LEN: usize = 256;

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListAdaptersQuery {
    /// Case-insensitive search in `owner/name`, description and base model.
    pub q: Option<String>,
    pub base_model: Option<String>,
    pub tag: Option<String>,
    pub owner: Option<String>,
    /// `owner/name`: only adapters with a version merged or compressed from one of its versions.
    pub derived_from: Option<String>,
    /// How the newest version was made: `trained`, `merged` or `compressed`.
    #[param(value_type = Option<String>)]
    pub kind: Option<VersionKind>,
    /// Smallest largest-module rank of the newest version.
    pub rank_min: Option<i64>,
    /// Largest largest-module rank of the newest version.
    pub rank_max: Option<i64>,
    /// A target module (leaf name, e.g. `q_proj`) of the newest version.
    pub target: Option<String>,
    /// Whether vLLM loads the newest version (at some `--max-lora-rank`).
    pub vllm: Option<bool>,
    /// `updated` (default), `downloads`, `name` or `created`.
    #[param(value_type = Option<String>)]
    pub sort: Option<AdapterSort>,
    /// 1 to 500, default 50.
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

/// Checks the description and tags of an adapter about to be created (also by a job).
pub fn check_new_fields(description: &str, tags: &[String]) -> Result<(), ApiError> {
    check_description(description)?;
    check_tags(tags)
}

pub fn check_tags(tags: &[String]) -> Result<(), ApiError> {
    if tags.len() > MAX_TAGS {
        return Err(ApiError::coded(
            ErrorCode::InvalidTags,
            format!("at most {MAX_TAGS} tags are allowed"),
        ));
    }
    for t in tags {
        if t.is_empty() || t.len() > MAX_TAG_LEN || t.chars().any(char::is_control) {
            return Err(ApiError::coded(
                ErrorCode::InvalidTags,
                format!("tag {t:?} must be 1 to {MAX_TAG_LEN} printable characters"),
            ));
        }
    }
    Ok(())
}

pub fn check_description(d: &str) -> Result<(), ApiError> {
    if d.len() > MAX_DESCRIPTION_LEN {
        return Err(ApiError::coded(
            ErrorCode::InvalidDescription,
            format!("description is longer than {MAX_DESCRIPTION_LEN} bytes"),
        ));
    }
    Ok(())
}

/// Builds full views (refs, protected alias names, latest version) for a set of adapters with
/// three queries in all, and one per distinct parent adapter named in the latest versions'
/// lineage (hidden from a viewer who may not see it: `crate::app::redact`).
pub async fn views(
    store: &Store,
    viewer: &Viewer,
    adapters: Vec<AdapterRecord>,
) -> Result<Vec<AdapterView>, ApiError> {
    let ids: Vec<i64> = adapters.iter().map(|a| a.id).collect();
    let mut latest: HashMap<i64, _> = store
        .meta
        .latest_versions(&ids)
        .await?
        .into_iter()
        .map(|v| (v.adapter_id, v))
        .collect();
    let (alias_rows, protected_rows) = store.meta.aliases_and_protection(&ids).await?;
    let mut aliases: HashMap<i64, Vec<(String, i64)>> = HashMap::new();
    for (id, alias, number) in alias_rows {
        aliases.entry(id).or_default().push((alias, number));
    }
    let mut protected: HashMap<i64, Vec<String>> = HashMap::new();
    for (id, name) in protected_rows {
        protected.entry(id).or_default().push(name);
    }
    let parents = crate::app::redact::Parents::of(store, viewer, latest.values()).await?;
    Ok(adapters
        .into_iter()
        .map(|a| {
            let id = a.id;
            AdapterView::new(
                a,
                latest.remove(&id),
                aliases.remove(&id).unwrap_or_default(),
                protected.remove(&id).unwrap_or_default(),
                &parents,
            )
        })
        .collect())
}

/// A listing page's views: the store's one listing query ([`quiver_store::ListedAdapter`]), then
/// one lookup per distinct parent adapter named in the latest versions' lineage, as [`views`].
pub async fn list_views(
    state: &AppState,
    viewer: &Viewer,
    q: &ListAdapters,
) -> Result<(Vec<AdapterView>, Option<String>), ApiError> {
    let store = &state.store;
    let found = listed_page(state, viewer, q).await?;
    let parents = crate::app::redact::Parents::of(
        store,
        viewer,
        found.items.iter().filter_map(|l| l.latest.as_ref()),
    )
    .await?;
    let items = found
        .items
        .into_iter()
        .map(|l| AdapterView::new(l.adapter, l.latest, l.aliases, l.protected, &parents))
        .collect();
    Ok((items, found.next_cursor))
}

/// A listing page's adapters: from the store in one query, or, with `list_fragments` on, the
/// page's ids, then what `list_fragments` keeps at the generation read with them and from the
/// store the rest (kept for the next pages). An adapter deleted between the two queries is left
/// out of the page.
async fn listed_page(
    state: &AppState,
    viewer: &Viewer,
    q: &ListAdapters,
) -> Result<Page<ListedAdapter>, ApiError> {
    if !state.list_fragments.enabled() {
        return Ok(state.store.meta.list_adapters_full(q, viewer).await?);
    }
    let (kept, next_cursor) = kept_page(state, viewer, q).await?;
    Ok(Page {
        items: kept.iter().map(|k| k.item.clone()).collect(),
        next_cursor,
    })
}

/// [`listed_page`] with `list_fragments` on: the kept adapters in the page's order.
async fn kept_page(
    state: &AppState,
    viewer: &Viewer,
    q: &ListAdapters,
) -> Result<(Vec<Arc<Kept>>, Option<String>), ApiError> {
    let fragments = &state.list_fragments;
    let page = state.store.meta.list_page_ids(q, viewer).await?;
    let mut kept = fragments.get(page.generation, &page.ids);
    let missing: Vec<i64> = page
        .ids
        .iter()
        .zip(&kept)
        .filter(|(_, k)| k.is_none())
        .map(|(id, _)| *id)
        .collect();
    if !missing.is_empty() {
        let fresh: Vec<Arc<Kept>> = state
            .store
            .meta
            .listed_adapters(&missing)
            .await?
            .into_iter()
            .map(Kept::new)
            .collect();
        fragments.put(page.generation, &fresh);
        let fresh: HashMap<i64, Arc<Kept>> =
            fresh.into_iter().map(|k| (k.item.adapter.id, k)).collect();
        for (id, slot) in page.ids.iter().zip(kept.iter_mut()) {
            if slot.is_none() {
                *slot = fresh.get(id).cloned();
            }
        }
    }
    Ok((kept.into_iter().flatten().collect(), page.next_cursor))
}

/// The JSON listing page ([`AdapterPage`]) for `viewer`. With `list_fragments` on, an adapter
/// whose view is the same for every viewer (its newest version names no parents to redact) is
/// serialized once and kept with it; the page splices those in.
pub async fn list_json(
    state: &AppState,
    viewer: &Viewer,
    q: &ListAdapters,
) -> Result<Vec<u8>, ApiError> {
    let json_err = |e| ApiError::internal("listing JSON", e);
    if !state.list_fragments.enabled() {
        let (items, next_cursor) = list_views(state, viewer, q).await?;
        return serde_json::to_vec(&AdapterPage { items, next_cursor }).map_err(json_err);
    }
    let (kept, next_cursor) = kept_page(state, viewer, q).await?;
    let parents = Parents::of(
        &state.store,
        viewer,
        kept.iter().filter_map(|k| k.item.latest.as_ref()),
    )
    .await?;
    let view = |l: &ListedAdapter, parents: &Parents| {
        let l = l.clone();
        serde_json::to_vec(&AdapterView::new(
            l.adapter,
            l.latest,
            l.aliases,
            l.protected,
            parents,
        ))
    };
    let mut body = Vec::with_capacity(kept.len() * 1024 + 64);
    body.extend_from_slice(br#"{"items":["#);
    for (i, k) in kept.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        let latest = k.item.latest.as_ref();
        if latest.is_some_and(|v| has_parents(v.lineage.as_ref())) {
            body.extend_from_slice(&view(&k.item, &parents).map_err(json_err)?);
        } else if let Some(json) = k.json.get() {
            body.extend_from_slice(json);
        } else {
            let json = view(&k.item, &Parents::default()).map_err(json_err)?;
            body.extend_from_slice(k.json.get_or_init(|| json));
        }
    }
    body.extend_from_slice(br#"],"next_cursor":"#);
    serde_json::to_writer(&mut body, &next_cursor).map_err(json_err)?;
    body.push(b'}');
    Ok(body)
}

pub async fn view(
    store: &Store,
    viewer: &Viewer,
    adapter: AdapterRecord,
) -> Result<AdapterView, ApiError> {
    views(store, viewer, vec![adapter])
        .await?
        .pop()
        .ok_or_else(|| ApiError::internal("adapter view", "empty view list"))
}

/// The store's query for the listing's parameters (also the web listing's).
pub fn list_query(q: ListAdaptersQuery) -> Result<ListAdapters, ApiError> {
    let rank = |name: &str, v: Option<i64>| match v {
        Some(r) if !(0..=1 << 20).contains(&r) => Err(ApiError::coded(
            ErrorCode::InvalidQuery,
            format!("{name} must be between 0 and 1048576, got {r}"),
        )),
        v => Ok(v),
    };
    Ok(ListAdapters {
        q: q.q,
        base_model: q.base_model,
        tag: q.tag,
        owner: q.owner,
        derived_from: match q.derived_from.as_deref() {
            None => None,
            Some(raw) => Some(raw.parse::<RepoId>().map_err(|_| {
                ApiError::coded(
                    ErrorCode::InvalidQuery,
                    format!("derived_from must be `owner/name`, got {raw:?}"),
                )
            })?),
        },
        facets: FacetFilter {
            kind: q.kind,
            rank_min: rank("rank_min", q.rank_min)?,
            rank_max: rank("rank_max", q.rank_max)?,
            target: q.target.filter(|t| !t.is_empty()),
            vllm: q.vllm,
        },
        sort: q.sort.unwrap_or_default(),
        limit: page_limit(q.limit)?,
        cursor: q.cursor,
    })
}

/// A listing page from the cache, or built by `build` (the body) and cached. The cache entry is
/// valid while the registry's listing generation, read before building, is unchanged.
pub async fn cached_page(
    state: &AppState,
    key: &str,
    build: impl AsyncFn() -> Result<Vec<u8>, ApiError>,
) -> Result<CachedPage, ApiError> {
    let cache = &state.list_cache;
    loop {
        // Read before the page is built, so a change committed meanwhile makes the entry stale.
        let generation = if cache.enabled() {
            state.store.meta.listing_generation().await?
        } else {
            0
        };
        match cache.lookup(key, generation) {
            Lookup::Hit(page) => return Ok(page),
            Lookup::Wait(mut done) => {
                let _ = done.changed().await; // built, or the build failed: look again
            }
            Lookup::Build(fill) => {
                let page = CachedPage::new(build().await?);
                fill.put(page.clone());
                return Ok(page);
            }
        }
    }
}

/// What a listing page depends on: who asks (admins all see the same; a user also sees their
/// and their organisations' private adapters) and every query parameter.
pub fn cache_key(viewer: &Viewer, q: &ListAdapters) -> String {
    let mut who = match (&viewer.user, viewer.admin) {
        (_, true) => "admin".to_string(),
        (Some(user), false) => format!("user:{user}"),
        (None, false) => String::new(),
    };
    // Members also see their organisations' private adapters.
    if !viewer.admin && !viewer.orgs.is_empty() {
        who = format!("{who}|orgs:{}", viewer.orgs.join(","));
    }
    // A restricted token sees fewer private adapters than its user: its own entry.
    if let Some(r) = &viewer.restrict {
        who = format!("{who}|restrict:{}", r.entries().join(","));
    }
    serde_json::json!([
        who,
        q.q,
        q.base_model,
        q.tag,
        q.owner,
        q.derived_from.as_ref().map(ToString::to_string),
        q.facets.kind.map(|k| k.as_str()),
        q.facets.rank_min,
        q.facets.rank_max,
        q.facets.target,
        q.facets.vllm,
        q.sort.as_str(),
        q.limit,
        q.cursor
    ])
    .to_string()
}

/// Deletes an adapter (REST and Hub): its rows (versions, files, refs; lineage keeps its name),
/// then its LFS upload proofs, which are authorisation records. Its blobs go with the sweep.
/// Records `adapter.deleted` for those who could see it.
pub async fn delete(
    state: &AppState,
    adapter: &AdapterRecord,
    who: &quiver_store::Principal,
    ctx: &quiver_store::AuditContext,
) -> Result<(), ApiError> {
    // Deleting the adapter deletes its aliases: a protected one makes it an admin's act.
    if !crate::auth::administers(who, &adapter.owner) {
        let protected = state.store.meta.protected_aliases(&[adapter.id]).await?;
        if !protected.is_empty() {
            let names: Vec<&str> = protected.iter().map(|(_, n)| n.as_str()).collect();
            return Err(ApiError::coded(
                crate::error::ErrorCode::AliasProtected,
                format!(
                    "{}/{} has protected aliases ({}): only admins of the namespace {} may delete it",
                    adapter.owner,
                    adapter.name,
                    names.join(", "),
                    adapter.owner
                ),
            ));
        }
    }
    let entry = crate::app::audit::adapter_audit(
        ctx,
        quiver_store::AuditAction::AdapterDelete,
        &adapter.owner,
        &adapter.name,
        Some(crate::app::audit::adapter_record_state(adapter)),
        None,
    );
    state
        .store
        .meta
        .delete_adapter_audited(adapter.id, Some(&entry))
        .await?;
    crate::app::proofs::delete_proofs(state, adapter.id).await;
    crate::events::adapter_deleted(&state.store, adapter).await;
    Ok(())
}
