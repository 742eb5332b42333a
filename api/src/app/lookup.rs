//! Shared lookups of the routes: the adapter or version a path names, if the caller may see it,
//! and the page size of a listing.

use quiver_store::{AdapterRecord, RepoId, Store, VersionRecord, VersionRef};

use crate::auth::Caller;
use crate::error::{ApiError, ErrorCode};
use crate::state::AppState;

/// `(owner, name)` from the path; a malformed name cannot exist, so it is a 404.
pub fn repo_from_path(path: &(String, String)) -> Result<RepoId, ApiError> {
    RepoId::parse(&path.0, &path.1).map_err(|_| {
        ApiError::not_found(
            ErrorCode::AdapterNotFound,
            format!("adapter {}/{}", path.0, path.1),
        )
    })
}

/// The adapter named in the path, if the caller may see it.
pub async fn find_adapter(
    store: &Store,
    caller: &Caller,
    path: &(String, String),
) -> Result<AdapterRecord, ApiError> {
    let repo = repo_from_path(path)?;
    let found = store.meta.get_adapter(&repo).await?;
    caller.visible(found, &repo.to_string())
}

/// The adapter named in the path, if the caller may see it (else 404) and write to it (else
/// 401/403), with the caller's principal.
pub async fn find_writable_adapter<'c>(
    store: &Store,
    caller: &'c Caller,
    path: &(String, String),
) -> Result<(AdapterRecord, &'c quiver_store::Principal), ApiError> {
    let adapter = find_adapter(store, caller, path).await?;
    let principal = caller.require_write(&adapter.owner, &adapter.name)?;
    Ok((adapter, principal))
}

pub fn page_limit(limit: Option<u32>) -> Result<u32, ApiError> {
    match limit {
        None => Ok(50),
        Some(n @ 1..=500) => Ok(n),
        Some(n) => Err(ApiError::coded(
            ErrorCode::InvalidQuery,
            format!("limit must be between 1 and 500, got {n}"),
        )),
    }
}

/// Resolves `{ref}` of a path to a version of a visible adapter.
pub async fn find_version(
    state: &AppState,
    caller: &Caller,
    owner: &str,
    name: &str,
    reference: &str,
) -> Result<(quiver_store::AdapterRecord, VersionRecord), ApiError> {
    let (adapter, version) = find_maybe_version(state, caller, owner, name, reference).await?;
    let version = version.ok_or_else(|| {
        ApiError::not_found(
            ErrorCode::VersionNotFound,
            format!("version {reference} of {}", adapter.repo_id()),
        )
    })?;
    Ok((adapter, version))
}

/// As [`find_version`], but a visible adapter without that version is `Ok` with `None`, for
/// callers whose answer to it differs (the Hub's `resolve`).
pub async fn find_maybe_version(
    state: &AppState,
    caller: &Caller,
    owner: &str,
    name: &str,
    reference: &str,
) -> Result<(quiver_store::AdapterRecord, Option<VersionRecord>), ApiError> {
    let adapter =
        find_adapter(&state.store, caller, &(owner.to_string(), name.to_string())).await?;
    let version = state
        .store
        .meta
        .get_version(adapter.id, &VersionRef::parse(reference))
        .await?;
    Ok((adapter, version))
}
