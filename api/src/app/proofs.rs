//! LFS upload proofs: the records that an adapter's writers uploaded the bytes of an object, so
//! the adapter's commits may name that content by its sha256 (the Hub's commit API).

use crate::state::AppState;

pub fn proof_prefix(adapter_id: i64) -> String {
    format!("lfs-proof/{adapter_id}")
}

/// Deletes every LFS upload proof of an adapter (called when it is deleted, after its rows).
/// Adapter ids are never reused, so a proof left behind (a failure here) authorises nothing.
pub async fn delete_proofs(state: &AppState, adapter_id: i64) {
    match state
        .store
        .blobs
        .delete_derived_prefix(&proof_prefix(adapter_id))
        .await
    {
        Ok(n) if n > 0 => tracing::info!(adapter_id, proofs = n, "LFS upload proofs deleted"),
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(adapter_id, error = %e, "could not delete the LFS upload proofs of a deleted adapter")
        }
    }
}

/// The marker that this adapter's writers uploaded the bytes of `oid` (see the Hub's `lfs::owns`). It is an
/// authorisation record, not a cache: it lets the adapter's commits name content by its sha256,
/// and is deleted with the adapter ([`delete_proofs`]).
pub fn proof_key(adapter_id: i64, oid: &str) -> String {
    format!("{}/{oid}", proof_prefix(adapter_id))
}
