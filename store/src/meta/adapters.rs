//! Adapters: records and [`AdapterStore`].

use async_trait::async_trait;

use super::{Audit, Page, VersionRecord, Viewer};
use crate::{RepoId, StoreError};

#[derive(Clone, Debug)]
pub struct AdapterRecord {
    pub id: i64,
    pub owner: String,
    pub name: String,
    pub base_model: String,
    pub description: String,
    pub tags: Vec<String>,
    pub private: bool,
    pub downloads: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

impl AdapterRecord {
    pub fn repo_id(&self) -> String {
        format!("{}/{}", self.owner, self.name)
    }
}

/// An adapter as the listing shows it: the record with its tags, its newest ready version with
/// its files, its aliases (name, version number; by name) and its protected alias names (sorted).
#[derive(Clone, Debug)]
pub struct ListedAdapter {
    pub adapter: AdapterRecord,
    pub latest: Option<VersionRecord>,
    pub aliases: Vec<(String, i64)>,
    pub protected: Vec<String>,
}

#[derive(Clone, Debug)]
pub struct NewAdapter {
    pub repo: RepoId,
    pub base_model: String,
    pub description: String,
    pub tags: Vec<String>,
    pub private: bool,
}

#[derive(Clone, Debug, Default)]
pub struct AdapterPatch {
    pub description: Option<String>,
    /// Set once a Hub client's first commit names it (repos created through the Hub API have none).
    pub base_model: Option<String>,
    pub tags: Option<Vec<String>>,
    pub private: Option<bool>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AdapterSort {
    #[default]
    Updated,
    Created,
    Downloads,
    Name,
}

impl AdapterSort {
    pub fn as_str(self) -> &'static str {
        match self {
            AdapterSort::Updated => "updated",
            AdapterSort::Created => "created",
            AdapterSort::Downloads => "downloads",
            AdapterSort::Name => "name",
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct ListAdapters {
    pub q: Option<String>,
    pub base_model: Option<String>,
    pub tag: Option<String>,
    pub owner: Option<String>,
    /// Adapters with a version made (merged, compressed) from a version of this one.
    pub derived_from: Option<RepoId>,
    /// Facets of the newest ready version.
    pub facets: FacetFilter,
    pub sort: AdapterSort,
    pub limit: u32,
    pub cursor: Option<String>,
}

/// Filters on the facets of an adapter's newest ready version (all optional; they combine).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FacetFilter {
    pub kind: Option<crate::meta::VersionKind>,
    pub rank_min: Option<i64>,
    pub rank_max: Option<i64>,
    /// A target module leaf name (`q_proj`) the version must have.
    pub target: Option<String>,
    pub vllm: Option<bool>,
}

impl FacetFilter {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// How many visible adapters carry each value of a facet (the most common values first).
#[derive(Clone, Debug, Default)]
pub struct FacetCounts {
    pub base_models: Vec<(String, i64)>,
    pub owners: Vec<(String, i64)>,
    pub tags: Vec<(String, i64)>,
    /// Kind of the newest ready version.
    pub kinds: Vec<(String, i64)>,
    pub targets: Vec<(String, i64)>,
}

/// A listing page without its contents: the adapters' ids in the page's order, the cursor of the
/// next page, and the listing generation read by the same statement, at which what
/// [`AdapterStore::listed_adapters`] returns for these ids may be cached.
#[derive(Clone, Debug)]
pub struct PageIds {
    pub generation: i64,
    pub ids: Vec<i64>,
    pub next_cursor: Option<String>,
}

/// Adapters: create, find, list and search, update, delete.
#[async_trait]
pub trait AdapterStore: Send + Sync {
    async fn create_adapter(&self, new: &NewAdapter) -> Result<AdapterRecord, StoreError> {
        self.create_adapter_audited(new, None).await
    }
    /// [`AdapterStore::create_adapter`], appending `audit` in the same transaction.
    async fn create_adapter_audited(
        &self,
        new: &NewAdapter,
        audit: Option<&Audit>,
    ) -> Result<AdapterRecord, StoreError>;
    async fn get_adapter(&self, repo: &RepoId) -> Result<Option<AdapterRecord>, StoreError>;
    async fn list_adapters(
        &self,
        query: &ListAdapters,
        viewer: &Viewer,
    ) -> Result<Page<AdapterRecord>, StoreError>;
    /// [`AdapterStore::list_adapters`] with what a listing shows of each adapter
    /// ([`ListedAdapter`]), read by the same single query.
    async fn list_adapters_full(
        &self,
        query: &ListAdapters,
        viewer: &Viewer,
    ) -> Result<Page<ListedAdapter>, StoreError>;
    /// The page [`AdapterStore::list_adapters_full`] would show, as ids only (one query).
    async fn list_page_ids(
        &self,
        query: &ListAdapters,
        viewer: &Viewer,
    ) -> Result<PageIds, StoreError>;
    /// What a listing shows of these adapters, in no particular order; ids that no longer
    /// exist are left out. Nothing here checks visibility: `ids` come from
    /// [`AdapterStore::list_page_ids`].
    async fn listed_adapters(&self, ids: &[i64]) -> Result<Vec<ListedAdapter>, StoreError>;
    async fn update_adapter(
        &self,
        adapter_id: i64,
        patch: &AdapterPatch,
    ) -> Result<(), StoreError> {
        self.update_adapter_audited(adapter_id, patch, None).await
    }
    /// [`AdapterStore::update_adapter`], appending `audit` in the same transaction.
    async fn update_adapter_audited(
        &self,
        adapter_id: i64,
        patch: &AdapterPatch,
        audit: Option<&Audit>,
    ) -> Result<(), StoreError>;
    /// Deletes the adapter with its versions, files and refs. Its blobs stay: another version may
    /// share them, or an upload may be about to; a sweep removes unreferenced blobs.
    async fn delete_adapter(&self, adapter_id: i64) -> Result<(), StoreError> {
        self.delete_adapter_audited(adapter_id, None).await
    }
    /// [`AdapterStore::delete_adapter`], appending `audit` in the same transaction when the
    /// adapter existed.
    async fn delete_adapter_audited(
        &self,
        adapter_id: i64,
        audit: Option<&Audit>,
    ) -> Result<(), StoreError>;
    async fn record_download(&self, adapter_id: i64) -> Result<(), StoreError>;
    /// Value counts of the listing's facets over the adapters `viewer` can see, at most `limit`
    /// values each.
    async fn facet_counts(&self, viewer: &Viewer, limit: u32) -> Result<FacetCounts, StoreError>;
}
