//! Publishing a version: the one path for uploads and for jobs.
//!
//! The blobs are stored first, the rows commit in one transaction (a job's success with them),
//! then every blob is checked to still be there: a blob sweep that decided before the commit may
//! have removed identical content meanwhile (see `BlobStore::commit`), and the publisher still
//! holds the bytes to store it again.

use std::path::PathBuf;

use quiver_store::{
    AdapterRecord, Lease, NewVersion, OutputTarget, StagedBlob, Store, StoreError, VersionRecord,
};
use serde_json::Value;

/// Where the version goes.
pub enum Target<'a> {
    /// An existing adapter (uploads).
    Adapter(&'a AdapterRecord),
    /// A job's output: fenced by its lease, committed with the job's success.
    Job {
        lease: &'a Lease,
        output: &'a OutputTarget,
        report: &'a Value,
    },
}

/// Where the publisher holds the bytes of the version's blobs.
pub enum Held<'a> {
    /// Staged uploads, committed before publishing (discarded afterwards by the caller).
    Staged(&'a [&'a StagedBlob]),
    /// Local files with their sha256 (a job's output in its scratch directory).
    Files(&'a [(PathBuf, String)]),
}

pub async fn publish_version(
    store: &Store,
    target: Target<'_>,
    new: &NewVersion,
    held: Held<'_>,
) -> Result<(AdapterRecord, VersionRecord), StoreError> {
    let published = match target {
        Target::Adapter(adapter) => (
            adapter.clone(),
            store.meta.create_version(adapter, new).await?,
        ),
        Target::Job {
            lease,
            output,
            report,
        } => {
            store
                .meta
                .publish_job_result(lease, output, new, report)
                .await?
        }
    };
    // The version is committed: a failure here is logged, not returned, so a client never
    // retries a publish that succeeded.
    let checked = match held {
        Held::Staged(staged) => {
            futures::future::try_join_all(staged.iter().map(|s| store.blobs.ensure_committed(s)))
                .await
        }
        Held::Files(files) => {
            futures::future::try_join_all(
                files
                    .iter()
                    .map(|(path, sha)| store.blobs.ensure_file(path, sha)),
            )
            .await
        }
    };
    if let Err(e) = checked {
        tracing::error!(error = %e, version = published.1.number, "could not check the blobs of a published version");
    }
    Ok(published)
}
