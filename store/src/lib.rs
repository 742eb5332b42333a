//! Quiver's system of record.
//!
//! * [`meta`]: users, tokens, adapters, versions, files and refs behind the [`MetadataStore`]
//!   trait, implemented once over sqlx's `Any` driver for SQLite and Postgres (the SQL is shared;
//!   only the migrations differ per dialect).
//! * [`blob`]: content-addressed blobs (`sha256/ab/cdef…`) in any `object_store` backend,
//!   written while streaming with the hash computed on the fly.
//!
//! Nothing here knows about HTTP.

pub mod blob;
pub mod error;
pub mod held;
pub mod meta;
pub mod names;
pub mod paths;
pub mod revision;
pub mod settings;
pub mod staging;
#[cfg(feature = "test-util")]
pub mod testing;
pub mod time;

use std::sync::Arc;

pub use blob::{BlobStore, BlobUpload, StagedBlob, StoredFile};
pub use error::StoreError;
pub use held::HeldBlobs;
pub use meta::{
    AdapterPatch, AdapterRecord, AdapterSort, Beat, CARD_FILE, CommitCheck, FileRecord, JobEnd,
    JobFilter, JobKind, JobRecord, JobState, JobStore, Lease, LineageGraph, ListAdapters,
    ListedAdapter, MetadataStore, NewAdapter, NewAdapterFields, NewJob, NewProfile, NewVersion,
    NoCheck, OutputTarget, Page, PageIds, ParentVersion, PendingProfile, Principal, ProfileInfo,
    ProfileSource, ProfileStore, RoutableProfile, RoutingGenerations, SAMPLES_FILE, StaleProfile,
    StoredVectors, VersionRecord, VersionRef, Viewer,
};
pub use meta::{AliasChange, AliasTarget, FacetCounts, FacetFilter, VersionFacets, VersionKind};
pub use meta::{Audit, AuditAction, AuditContext, AuditFilter, AuditRecord, AuditStore};
pub use meta::{
    Deactivated, MAX_MEMBERS, MAX_ORGS_PER_USER, MemberRecord, Membership, NamespaceKind,
    OrgRecord, OrgRole, OrgStore,
};
pub use meta::{
    DeliveryRecord, DeliveryStatus, EventRecord, NewDelivery, NewEvent, NewWebhook, QueuedDelivery,
    WebhookRecord, WebhookStore,
};
pub use meta::{
    InviteRecord, MAX_RESTRICTIONS, NewToken, Restriction, TokenCheck, TokenRecord, TokenStore,
};
pub use names::{RepoId, Scope, validate_name};
pub use settings::StoreSettings;

/// The metadata database and the blob store, opened together.
#[derive(Clone)]
pub struct Store {
    pub meta: Arc<dyn MetadataStore>,
    pub blobs: BlobStore,
}

impl Store {
    /// Removes committed blobs that no file row refers to and that were last modified more than
    /// `grace` ago: left by failed or cancelled jobs, deleted adapters, and uploads whose rows
    /// never committed. Each deletion holds the lock version commits take, and the blob's age is
    /// re-checked then, so an upload or job committing the same content is never harmed (see
    /// [`BlobStore::commit`]). Returns how many blobs were removed.
    pub async fn sweep_unreferenced_blobs(
        &self,
        grace: std::time::Duration,
    ) -> Result<usize, StoreError> {
        let cutoff = chrono::Utc::now()
            - chrono::Duration::from_std(grace)
                .map_err(|e| StoreError::Invalid(format!("sweep grace period: {e}")))?;
        let mut removed = 0;
        for (sha256, modified) in self.blobs.list_with_times().await? {
            if modified >= cutoff || self.meta.blob_in_use(&sha256).await? {
                continue;
            }
            let blobs = self.blobs.clone();
            let sha = sha256.clone();
            let delete = move || {
                let (blobs, sha) = (blobs.clone(), sha.clone());
                Box::pin(async move { blobs.delete_if_older(&sha, cutoff).await })
                    as futures::future::BoxFuture<'static, Result<bool, StoreError>>
            };
            if self
                .meta
                .delete_blob_if_unreferenced(&sha256, &delete)
                .await?
            {
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Connects to both backends and applies pending migrations.
    pub async fn open(settings: &StoreSettings) -> Result<Self, StoreError> {
        let meta = meta::connect(&settings.database_url).await?;
        let blobs = BlobStore::from_url(&settings.store_url)?;
        Ok(Self { meta, blobs })
    }
}
