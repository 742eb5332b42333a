//! Metadata: one trait, one implementation over sqlx's `Any` driver for both dialects.

/// A string-valued enum stored in a TEXT column: `as_str` for SQL binds, `FromStr` for rows.
macro_rules! string_enum {
    ($(#[$m:meta])* $name:ident { $($variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl std::str::FromStr for $name {
            type Err = StoreError;
            fn from_str(s: &str) -> Result<Self, StoreError> {
                match s {
                    $($text => Ok($name::$variant),)+
                    other => Err(StoreError::Invalid(format!(
                        concat!("unknown ", stringify!($name), " {:?}; one of: {}"),
                        other,
                        [$($text),+].join(", ")
                    ))),
                }
            }
        }
    };
}

pub mod jobs;
mod query;
mod sql;

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::Value;

use crate::{RepoId, Scope, StoreError};

pub use jobs::{
    Beat, DEFAULT_MAX_ATTEMPTS, JobCounts, JobEnd, JobFilter, JobKind, JobRecord, JobState,
    JobStore, JobWakeups, Lease, LineageGraph, LineageNode, NewAdapterFields, NewJob, OutputTarget,
};
pub use sql::SqlMetadata;

/// Connects to `sqlite://…` or `postgres://…` and applies the dialect's migrations.
pub async fn connect(database_url: &str) -> Result<Arc<dyn MetadataStore>, StoreError> {
    Ok(Arc::new(SqlMetadata::connect(database_url).await?))
}

/// Who is asking, as far as visibility goes.
#[derive(Clone, Debug, Default)]
pub struct Viewer {
    pub user: Option<String>,
    pub admin: bool,
}

impl Viewer {
    pub fn can_see(&self, adapter: &AdapterRecord) -> bool {
        !adapter.private || self.admin || self.user.as_deref() == Some(adapter.owner.as_str())
    }
}

/// The owner of a valid token.
#[derive(Clone, Debug)]
pub struct Principal {
    pub user: String,
    pub scope: Scope,
    pub token_id: String,
}

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
    pub tags: Option<Vec<String>>,
    pub private: Option<bool>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileRecord {
    pub path: String,
    pub size: i64,
    pub sha256: String,
}

#[derive(Clone, Debug)]
pub struct VersionRecord {
    pub id: i64,
    pub adapter_id: i64,
    pub number: i64,
    pub revision: String,
    pub state: String,
    pub created_at: i64,
    pub created_by: String,
    pub lora: Option<Value>,
    pub lineage: Option<Value>,
    pub files: Vec<FileRecord>,
}

/// A version about to be committed: its blobs are already stored.
#[derive(Clone, Debug)]
pub struct NewVersion {
    pub created_by: String,
    pub files: Vec<FileRecord>,
    pub lora: Option<Value>,
    pub lineage: Option<Value>,
    /// The versions it was made from (merges and compressions), in input order.
    pub parents: Vec<ParentVersion>,
}

/// An input of a merged or compressed version, pinned when its job was queued.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ParentVersion {
    /// `owner/name`.
    pub adapter: String,
    pub version: i64,
    pub revision: String,
}

string_enum!(
    /// A version's state. Versions are published whole, so every stored version is `ready` today;
    /// `pending` and `failed` are reserved by the schema.
    VersionState { Pending = "pending", Ready = "ready", Failed = "failed" }
);

/// How a caller names a version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VersionRef {
    /// `3` or `v3`.
    Number(i64),
    /// 40 lowercase hex.
    Revision(String),
    /// `main`: the newest ready version.
    Main,
    /// A user alias.
    Alias(String),
}

impl VersionRef {
    pub fn parse(raw: &str) -> Self {
        let digits = raw.strip_prefix('v').unwrap_or(raw);
        if !digits.is_empty()
            && digits.len() <= 18
            && digits.bytes().all(|b| b.is_ascii_digit())
            && let Ok(n) = digits.parse()
        {
            return VersionRef::Number(n);
        }
        if raw.len() == 40
            && raw
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return VersionRef::Revision(raw.to_string());
        }
        if raw == "main" {
            return VersionRef::Main;
        }
        VersionRef::Alias(raw.to_string())
    }
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
    pub sort: AdapterSort,
    pub limit: u32,
    pub cursor: Option<String>,
}

/// One page of a listing; `next_cursor` is opaque.
#[derive(Clone, Debug)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

/// Everything the service asks of the metadata database. One method per use case; the job queue
/// and lineage are the [`JobStore`] capability.
#[async_trait]
pub trait MetadataStore: JobStore + Send + Sync {
    /// `"sqlite"` or `"postgres"`.
    fn dialect(&self) -> &'static str;
    async fn ping(&self) -> Result<(), StoreError>;

    /// A number that changes whenever anything an adapter listing shows changes (download counts
    /// excepted), whichever process made the change. Listing caches are validated against it.
    async fn listing_generation(&self) -> Result<i64, StoreError>;
    async fn count_users(&self) -> Result<i64, StoreError>;
    /// Creates the user if needed and a token for it; `secret_sha256` is the hashed secret.
    async fn create_token(
        &self,
        user: &str,
        scope: Scope,
        secret_sha256: &str,
    ) -> Result<String, StoreError>;
    /// The token's owner, if the hashed secret is known. Records the use.
    async fn authenticate(&self, secret_sha256: &str) -> Result<Option<Principal>, StoreError>;

    async fn create_adapter(&self, new: &NewAdapter) -> Result<AdapterRecord, StoreError>;
    async fn get_adapter(&self, repo: &RepoId) -> Result<Option<AdapterRecord>, StoreError>;
    async fn list_adapters(
        &self,
        query: &ListAdapters,
        viewer: &Viewer,
    ) -> Result<Page<AdapterRecord>, StoreError>;
    async fn update_adapter(&self, adapter_id: i64, patch: &AdapterPatch)
    -> Result<(), StoreError>;
    /// Deletes the adapter with its versions, files and refs. Its blobs stay: another version may
    /// share them, or an upload may be about to; a sweep removes unreferenced blobs.
    async fn delete_adapter(&self, adapter_id: i64) -> Result<(), StoreError>;
    async fn record_download(&self, adapter_id: i64) -> Result<(), StoreError>;

    /// Allocates the next number, computes the revision and commits every row at once.
    async fn create_version(
        &self,
        adapter: &AdapterRecord,
        new: &NewVersion,
    ) -> Result<VersionRecord, StoreError>;
    async fn get_version(
        &self,
        adapter_id: i64,
        version: &VersionRef,
    ) -> Result<Option<VersionRecord>, StoreError>;
    async fn list_versions(
        &self,
        adapter_id: i64,
        limit: u32,
        cursor: Option<&str>,
    ) -> Result<Page<VersionRecord>, StoreError>;
    /// The newest ready version of each adapter, by adapter id.
    async fn latest_versions(&self, adapter_ids: &[i64]) -> Result<Vec<VersionRecord>, StoreError>;
    /// Whether any file row refers to this blob.
    async fn blob_in_use(&self, sha256: &str) -> Result<bool, StoreError>;
    /// Runs `delete` (which deletes the blob, or decides not to) if no file row refers to the
    /// blob, holding the lock that version commits take, so that no version commits a reference
    /// to it meanwhile. Returns what `delete` returned, or false when the blob is in use.
    async fn delete_blob_if_unreferenced(
        &self,
        sha256: &str,
        delete: &(dyn Fn() -> futures::future::BoxFuture<'static, Result<bool, StoreError>> + Sync),
    ) -> Result<bool, StoreError>;
    /// Counts of (adapters, versions, files) rows, for tests that check nothing was left behind.
    async fn row_counts(&self) -> Result<(i64, i64, i64), StoreError>;

    /// Aliases of each adapter: (adapter id, alias, version number).
    async fn aliases(&self, adapter_ids: &[i64]) -> Result<Vec<(i64, String, i64)>, StoreError>;
    async fn set_alias(&self, adapter_id: i64, alias: &str, number: i64) -> Result<(), StoreError>;
    /// Returns whether the alias existed.
    async fn delete_alias(&self, adapter_id: i64, alias: &str) -> Result<bool, StoreError>;
}
