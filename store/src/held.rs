//! What a publisher holds of the blobs its new version refers to, checked inside the version's
//! commit ([`CommitCheck`]): the one check every way of publishing (REST upload, Hub commit, job)
//! runs, with the same guarantee.
//!
//! The blob sweep deletes unreferenced blobs older than its grace period, each under the lock
//! version commits take shared. A publisher found or stored its blobs *before* its commit, so a
//! sweep may have removed one since (content that was stored long ago and referenced by nothing:
//! an LFS object uploaded before the grace period, say, or identical content a sweep was
//! deleting just as the publisher renewed it). Checked under the lock, inside the transaction,
//! the answer is final: a blob there now stays until the rows referring to it are deleted.

use std::path::PathBuf;

use async_trait::async_trait;

use crate::meta::CommitCheck;
use crate::{BlobStore, StagedBlob, StoreError};

/// The blobs of a version about to be committed, by what the publisher holds of each.
pub struct HeldBlobs<'a> {
    pub blobs: &'a BlobStore,
    /// Staged uploads already committed to their content address: stored again from the staged
    /// copy if the blob is gone (the caller discards the staged copies after publishing).
    pub staged: &'a [&'a StagedBlob],
    /// Local files with their sha256 (a job's output in its scratch directory): stored again
    /// from the file if the blob is gone.
    pub files: &'a [(PathBuf, String)],
    /// Blobs the publisher holds no copy of (a Hub commit's LFS objects, referred to by their
    /// sha256): the commit fails with [`StoreError::BlobMissing`] if one is gone.
    pub stored: &'a [String],
}

impl<'a> HeldBlobs<'a> {
    /// Nothing held yet; fill the lists that apply.
    pub fn new(blobs: &'a BlobStore) -> Self {
        Self {
            blobs,
            staged: &[],
            files: &[],
            stored: &[],
        }
    }
}

#[async_trait]
impl CommitCheck for HeldBlobs<'_> {
    async fn check(&self) -> Result<(), StoreError> {
        #[cfg(feature = "test-util")]
        hook::run(self.blobs).await;
        let blobs = self.blobs;
        futures::future::try_join_all(self.staged.iter().map(|s| blobs.ensure_committed(s)))
            .await?;
        futures::future::try_join_all(
            self.files
                .iter()
                .map(|(path, sha)| blobs.ensure_file(path, sha)),
        )
        .await?;
        futures::future::try_join_all(self.stored.iter().map(|sha| async move {
            if blobs.exists(sha).await? {
                Ok(())
            } else {
                Err(StoreError::BlobMissing(sha.clone()))
            }
        }))
        .await?;
        Ok(())
    }
}

/// Tests only: something to run at the start of a publish's blob check on one blob store (by
/// its [`BlobStore::describe`] string), e.g. deleting a blob the way a sweep would between a
/// publisher's checks and its commit. Compiled with the `test-util` feature only.
#[cfg(feature = "test-util")]
pub mod hook {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex, OnceLock};

    use futures::future::BoxFuture;

    use crate::BlobStore;

    type Hook = Arc<dyn Fn() -> BoxFuture<'static, ()> + Send + Sync>;

    fn hooks() -> &'static Mutex<HashMap<String, Hook>> {
        static HOOKS: OnceLock<Mutex<HashMap<String, Hook>>> = OnceLock::new();
        HOOKS.get_or_init(Default::default)
    }

    /// Runs `hook` once, at the next publish's blob check on `blobs` (any clone of it).
    pub fn before_next_check(
        blobs: &BlobStore,
        hook: impl Fn() -> BoxFuture<'static, ()> + Send + Sync + 'static,
    ) {
        if let Ok(mut h) = hooks().lock() {
            h.insert(blobs.describe().to_string(), Arc::new(hook));
        }
    }

    pub(crate) async fn run(blobs: &BlobStore) {
        let hook = hooks()
            .lock()
            .ok()
            .and_then(|mut h| h.remove(blobs.describe()));
        if let Some(hook) = hook {
            hook().await;
        }
    }
}
