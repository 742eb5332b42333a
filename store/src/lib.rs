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
pub mod meta;
pub mod names;
pub mod revision;
pub mod settings;
#[cfg(feature = "test-util")]
pub mod testing;
pub mod time;

use std::sync::Arc;

pub use blob::{BlobStore, BlobUpload, StagedBlob};
pub use error::StoreError;
pub use meta::{
    AdapterPatch, AdapterRecord, AdapterSort, FileRecord, ListAdapters, MetadataStore, NewAdapter,
    NewVersion, Page, Principal, VersionRecord, VersionRef, Viewer,
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
    /// Connects to both backends and applies pending migrations.
    pub async fn open(settings: &StoreSettings) -> Result<Self, StoreError> {
        let meta = meta::connect(&settings.database_url).await?;
        let blobs = BlobStore::from_url(&settings.store_url)?;
        Ok(Self { meta, blobs })
    }
}
