//! Publishing a version: the one path for uploads, Hub commits and jobs.
//!
//! The blobs are stored first; then the rows commit in one transaction (a job's success with
//! them), and inside it, under the lock the blob sweep takes exclusively, every blob the version
//! refers to is checked to be there (`quiver_store::HeldBlobs`): a sweep that decided before
//! the commit may have removed it. Where the publisher holds a copy (a staged upload, a job's
//! output file) the blob is stored again; where it holds none (a Hub commit's LFS object,
//! uploaded earlier and found by its sha256) the commit fails and rolls back, so the client
//! gets the error and nothing broken ever becomes visible. Once the rows have committed no sweep
//! can remove the blobs, so nothing needs checking afterwards. After the commit the
//! `version.published` event is recorded (`crate::events`).

use std::path::PathBuf;

use quiver_store::{
    AdapterRecord, AuditContext, HeldBlobs, Lease, NewVersion, OutputTarget, StagedBlob, Store,
    StoreError, VersionRecord,
};
use serde_json::Value;

/// Where the version goes.
pub enum Target<'a> {
    /// An existing adapter (uploads, Hub commits).
    Adapter(&'a AdapterRecord),
    /// A job's output: fenced by its lease, committed with the job's success.
    Job {
        lease: &'a Lease,
        output: &'a OutputTarget,
        report: &'a Value,
    },
}

/// What the publisher holds of the version's blobs (see [`HeldBlobs`]).
pub enum Held<'a> {
    /// Staged uploads, committed before publishing (discarded afterwards by the caller).
    Staged(&'a [&'a StagedBlob]),
    /// Local files with their sha256 (a job's output in its scratch directory).
    Files(&'a [(PathBuf, String)]),
    /// A Hub commit: its inline files, staged and committed, and the LFS objects it names by
    /// sha256, of which it holds no copy (a missing one fails the commit).
    Commit {
        staged: &'a [&'a StagedBlob],
        stored: &'a [String],
    },
}

/// Commits the version; its blobs are checked inside the commit. A blob gone with no copy to
/// store it from is `StoreError::BlobMissing` with its sha256, and nothing was committed.
pub async fn publish_version(
    store: &Store,
    target: Target<'_>,
    new: &NewVersion,
    held: Held<'_>,
) -> Result<(AdapterRecord, VersionRecord), StoreError> {
    publish_version_audited(store, target, new, held, None).await
}

/// [`publish_version`] to an adapter that appends a `version.publish` audit entry by `audit` in
/// the commit's transaction (a job's output is not audited yet).
pub async fn publish_version_audited(
    store: &Store,
    target: Target<'_>,
    new: &NewVersion,
    held: Held<'_>,
    audit: Option<&AuditContext>,
) -> Result<(AdapterRecord, VersionRecord), StoreError> {
    let mut check = HeldBlobs::new(&store.blobs);
    match held {
        Held::Staged(staged) => check.staged = staged,
        Held::Files(files) => check.files = files,
        Held::Commit { staged, stored } => {
            check.staged = staged;
            check.stored = stored;
        }
    }
    let (adapter, version) = match target {
        Target::Adapter(adapter) => (
            adapter.clone(),
            store
                .meta
                .create_version_audited(adapter, new, &check, audit)
                .await?,
        ),
        Target::Job {
            lease,
            output,
            report,
        } => {
            store
                .meta
                .publish_job_result_checked(lease, output, new, report, &check)
                .await?
        }
    };
    crate::events::version_published(store, &adapter, &version).await;
    Ok((adapter, version))
}
