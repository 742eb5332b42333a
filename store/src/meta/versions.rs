//! Versions, their files and refs: records and [`VersionStore`].

use async_trait::async_trait;
use serde_json::Value;

use super::{AdapterRecord, Audit, AuditContext, Page};
use crate::StoreError;

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
    /// What the listing filters on (computed by the caller from `lora` and `lineage`).
    pub facets: VersionFacets,
}

string_enum!(
    /// How a version was made.
    VersionKind { Trained = "trained", Merged = "merged", Compressed = "compressed" }
);

/// A version's listing facets (migration 0005).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VersionFacets {
    pub kind: VersionKind,
    /// The largest rank of any module.
    pub max_rank: Option<i64>,
    /// Leaf names of the target modules.
    pub targets: Vec<String>,
    /// Whether vLLM loads it at some `--max-lora-rank`.
    pub vllm_ok: Option<bool>,
}

impl Default for VersionFacets {
    fn default() -> Self {
        Self {
            kind: VersionKind::Trained,
            max_rank: None,
            targets: Vec::new(),
            vllm_ok: None,
        }
    }
}

impl VersionFacets {
    /// The `targets` column: `,a,b,` so that `LIKE '%,a,%'` matches one name exactly.
    pub fn targets_column(&self) -> String {
        format!(",{},", self.targets.join(","))
    }
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

/// Runs inside a version's commit, once the lock the blob sweep takes exclusively is held
/// shared (see [`VersionStore::delete_blob_if_unreferenced`]): the publisher checks that every
/// blob its rows will refer to is stored, storing it again from its own copy where it has one
/// (`crate::HeldBlobs`). No sweep can delete a blob between this check and the commit, and none
/// can once the rows have committed, so a version never commits referring to a missing blob. An
/// error rolls the whole commit back: nothing becomes visible, the caller sees the error.
#[async_trait]
pub trait CommitCheck: Send + Sync {
    async fn check(&self) -> Result<(), StoreError>;
}

/// No blob to check (versions without files, tests of the metadata alone).
pub struct NoCheck;

#[async_trait]
impl CommitCheck for NoCheck {
    async fn check(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// A version an alias points at: its number and revision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AliasTarget {
    pub number: i64,
    pub revision: String,
}

/// What an alias move changed: the previous target (if any) and the new one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AliasChange {
    pub from: Option<AliasTarget>,
    pub to: AliasTarget,
}

/// Versions with their files, refs (aliases), and which blobs they refer to.
#[async_trait]
pub trait VersionStore: Send + Sync {
    /// [`VersionStore::create_version_checked`] without a blob check (tests of the metadata
    /// alone; the service publishes through `quiver_api::publish`, which always checks).
    async fn create_version(
        &self,
        adapter: &AdapterRecord,
        new: &NewVersion,
    ) -> Result<VersionRecord, StoreError> {
        self.create_version_checked(adapter, new, &NoCheck).await
    }
    /// Allocates the next number, computes the revision and commits every row at once, after
    /// `check` passed under the blob lock (see [`CommitCheck`]).
    async fn create_version_checked(
        &self,
        adapter: &AdapterRecord,
        new: &NewVersion,
        check: &dyn CommitCheck,
    ) -> Result<VersionRecord, StoreError> {
        self.create_version_audited(adapter, new, check, None).await
    }
    /// [`VersionStore::create_version_checked`], appending a `version.publish` entry by `audit`
    /// in the same transaction (target `owner/name`; after: number, revision, file count).
    async fn create_version_audited(
        &self,
        adapter: &AdapterRecord,
        new: &NewVersion,
        check: &dyn CommitCheck,
        audit: Option<&AuditContext>,
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
    /// Up to `limit` versions published before facets existed: (id, lora, lineage).
    async fn versions_without_facets(
        &self,
        limit: u32,
    ) -> Result<Vec<(i64, Option<Value>, Option<Value>)>, StoreError>;
    async fn set_version_facets(
        &self,
        version_id: i64,
        facets: &VersionFacets,
    ) -> Result<(), StoreError>;
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
    /// Aliases of each adapter: (adapter id, alias, version number).
    async fn aliases(&self, adapter_ids: &[i64]) -> Result<Vec<(i64, String, i64)>, StoreError>;
    /// [`VersionStore::aliases`] and [`VersionStore::protected_aliases`] of the same adapters in
    /// one query (what a view of an adapter shows).
    async fn aliases_and_protection(
        &self,
        adapter_ids: &[i64],
    ) -> Result<(Vec<(i64, String, i64)>, Vec<(i64, String)>), StoreError>;
    /// Protected alias names of each adapter: (adapter id, name), whether or not an alias of that
    /// name exists now (migration 0011).
    async fn protected_aliases(
        &self,
        adapter_ids: &[i64],
    ) -> Result<Vec<(i64, String)>, StoreError>;
    /// [`VersionStore::set_alias_audited`] by a caller who does not administer the namespace
    /// (a protected name is refused).
    async fn set_alias(&self, adapter_id: i64, alias: &str, number: i64) -> Result<(), StoreError> {
        self.set_alias_audited(adapter_id, alias, number, false, None)
            .await
            .map(drop)
    }
    /// Returns whether the alias existed. As [`VersionStore::set_alias`], refuses a protected
    /// name.
    async fn delete_alias(&self, adapter_id: i64, alias: &str) -> Result<bool, StoreError> {
        Ok(self
            .delete_alias_audited(adapter_id, alias, false, None)
            .await?
            .is_some())
    }
    /// Points `alias` at version `number`, appending `audit` in the same transaction (nothing is
    /// appended when the version does not exist). Unless `allow_protected` (the caller
    /// administers the adapter's namespace), a protected name is refused with
    /// [`StoreError::AliasProtected`] and nothing changes; the check is made in the same
    /// transaction as the move, ordered against [`VersionStore::set_alias_protection`]. The
    /// alias's previous target is read in that transaction too, and is the entry's `before`
    /// (`{"version": N}` or `null`), so two simultaneous moves record what each replaced.
    async fn set_alias_audited(
        &self,
        adapter_id: i64,
        alias: &str,
        number: i64,
        allow_protected: bool,
        audit: Option<&Audit>,
    ) -> Result<AliasChange, StoreError>;
    /// [`VersionStore::delete_alias`], appending `audit` in the same transaction when the alias
    /// existed; a protected name as in [`VersionStore::set_alias_audited`] (refused whether or not
    /// the alias exists). Deleting an alias keeps its name's protection. Returns what the alias
    /// pointed at (`None`: there was no such alias), read in the transaction, which is also the
    /// entry's `before`.
    async fn delete_alias_audited(
        &self,
        adapter_id: i64,
        alias: &str,
        allow_protected: bool,
        audit: Option<&Audit>,
    ) -> Result<Option<AliasTarget>, StoreError>;
    /// Protects (`true`) or unprotects the alias name `alias` of `adapter`; the caller checked
    /// that the actor administers its namespace. Returns whether it changed; when it did and
    /// `audit` is given, appends `alias.protect` (target `owner/name@alias`, before/after
    /// `{"protected": bool}`) in the same transaction. The alias need not exist.
    async fn set_alias_protection(
        &self,
        adapter: &AdapterRecord,
        alias: &str,
        protected: bool,
        audit: Option<&AuditContext>,
    ) -> Result<bool, StoreError>;
}
