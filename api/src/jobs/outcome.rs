//! What running a job reports back to its loop: why it stopped short of publishing
//! ([`Failure`]) and how far the engine got ([`Progress`]). Shared by the job's steps (`run`,
//! `exec`, `embed`, `redact`) so they depend on it rather than on each other.

use std::sync::atomic::AtomicUsize;

use quiver_merge::MergeError;
use quiver_store::StoreError;

/// Why a job stopped short of publishing.
pub(crate) enum Failure {
    /// Retrying cannot help (bad inputs found while running).
    Permanent(String),
    /// The database or the object store failed; retried with backoff.
    Transient(String),
    /// The engine stopped at the cancel token (cancel request, lost lease or shutdown).
    Stopped,
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::LeaseLost => Failure::Stopped,
            StoreError::BlobMissing(key) => Failure::Permanent(format!(
                "the stored content of an input is missing (blob {key}); the registry's data is inconsistent"
            )),
            e if e.is_unavailable() => Failure::Transient(e.to_string()),
            StoreError::NotFound(m) => Failure::Permanent(m),
            e => Failure::Transient(e.to_string()),
        }
    }
}

impl From<MergeError> for Failure {
    fn from(e: MergeError) -> Self {
        match e {
            MergeError::Cancelled => Failure::Stopped,
            e if e.is_permanent() => Failure::Permanent(e.to_string()),
            e => Failure::Transient(e.to_string()),
        }
    }
}

/// Modules done out of the total, as the engine reports them.
pub(super) struct Progress {
    pub(super) done: AtomicUsize,
    pub(super) total: AtomicUsize,
}
