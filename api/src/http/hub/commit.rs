//! The Hub's NDJSON commit (`POST /api/models/{repo}/commit/{rev}`).
//!
//! A commit makes one new version: the parent's files (the newest version), minus deleted paths,
//! plus the commit's files — inline ones stored as blobs here, LFS ones uploaded before through
//! the batch API (`lfs`) — then the same validation and the same atomic publish as a native
//! upload. A version that is not a PEFT LoRA (or holds a pickle) is refused and nothing becomes
//! visible; blobs stored for it are left to the sweep.

use std::collections::{BTreeMap, BTreeSet};

use actix_web::{HttpRequest, HttpResponse, web};
use base64::Engine;
use futures::TryStreamExt;
use quiver_store::{
    AdapterPatch, AdapterRecord, FileRecord, NewVersion, StagedBlob, StoreError, VersionRecord,
    VersionRef,
};
use serde::Deserialize;
use serde_json::{Value, json};

use super::commit_body::{Lines, MAX_INLINE_TOTAL, content_length};
use super::lfs::owns;
use super::{invalid, origin};
use crate::app::lookup::find_writable_adapter;
use crate::auth::Caller;
use crate::error::{ApiError, ErrorCode};
use crate::publish::{Held, Target, publish_version_audited};
use crate::state::AppState;
use crate::upload::{
    CONFIG_FILE, MAX_CONFIG_BYTES, MAX_FILES, WEIGHTS_FILE, check_path, validate_adapter,
};

#[derive(Deserialize)]
#[serde(tag = "key", content = "value", rename_all = "camelCase")]
enum Line {
    Header {
        #[serde(rename = "parentCommit")]
        parent_commit: Option<String>,
    },
    File {
        path: String,
        content: String,
        encoding: Option<String>,
    },
    LfsFile {
        path: String,
        oid: String,
        size: Option<i64>,
    },
    DeletedFile {
        path: String,
    },
    DeletedFolder {
        path: String,
    },
}

#[derive(Deserialize)]
pub struct CommitQuery {
    create_pr: Option<String>,
}

/// `POST /api/models/{repo}/commit/{rev}` (NDJSON): one new version, or nothing.
pub async fn commit(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<(String, String, String)>,
    query: web::Query<CommitQuery>,
    payload: web::Payload,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let (owner, name, rev) = path.into_inner();
    let (adapter, principal) =
        find_writable_adapter(&state.store, &caller, &(owner.clone(), name.clone())).await?;
    let parent = parent_version(&state, &adapter, &query, &rev).await?;
    // The body is read line by line, each line and the inline files bounded (`commit_body`):
    // a commit never sits whole in memory. One announced larger than the upload limit is
    // refused before any of it is read.
    let limit = state.max_upload_bytes;
    if content_length(&req).is_some_and(|n| n > limit) {
        return Err(ApiError::too_large(limit));
    }
    let mut tree = CommitTree::of(parent.as_ref());
    let mut lines = Lines::new(payload, limit);
    read_lines(&state, &adapter, parent.as_ref(), &mut lines, &mut tree).await?;
    tree.check_paths_and_count()?;
    let (config, lora) = check_version(&state, &tree).await?;
    let added_lfs = added_objects(&tree.files, parent.as_ref());
    let ctx = crate::http::request_info::RequestInfo::of(&req).audit(Some(principal));
    let version = store_and_publish(
        &state,
        &adapter,
        principal.user.clone(),
        tree,
        lora,
        &added_lfs,
        &ctx,
    )
    .await?;
    state.routing.version_published(&version.files);
    adopt_base_model(&state, &adapter, config.as_deref()).await?;
    let url = format!(
        "{}/{owner}/{name}/commit/{}",
        origin(&req),
        version.revision
    );
    Ok(HttpResponse::Ok().json(json!({
        "commitUrl": url,
        "commitOid": version.revision,
        "pullRequestUrl": null,
    })))
}

/// The version the commit builds on: the newest, which `rev` must name (or be `main`); pull
/// requests are refused first.
async fn parent_version(
    state: &AppState,
    adapter: &AdapterRecord,
    query: &CommitQuery,
    rev: &str,
) -> Result<Option<VersionRecord>, ApiError> {
    if query
        .create_pr
        .as_deref()
        .is_some_and(|v| v == "1" || v == "true")
    {
        return Err(invalid("pull requests are not supported: commit to main"));
    }
    let parent = state
        .store
        .meta
        .get_version(adapter.id, &VersionRef::Main)
        .await?;
    if rev != "main" && parent.as_ref().is_none_or(|p| p.revision != rev) {
        return Err(invalid(format!(
            "commits go to main (the newest version); {rev:?} is not it"
        )));
    }
    Ok(parent)
}

/// The files of the version a commit makes, as its lines leave them.
struct CommitTree {
    /// The parent's files and the commit's LFS files, by path.
    files: BTreeMap<String, FileRecord>,
    /// The commit's inline files, by path: not stored until the version is validated.
    inline: BTreeMap<String, Vec<u8>>,
    /// The bytes of every inline file seen so far (replaced or deleted ones too).
    inline_bytes: usize,
}

impl CommitTree {
    fn of(parent: Option<&VersionRecord>) -> Self {
        let files = parent
            .map(|p| {
                p.files
                    .iter()
                    .map(|f| (f.path.clone(), f.clone()))
                    .collect()
            })
            .unwrap_or_default();
        Self {
            files,
            inline: BTreeMap::new(),
            inline_bytes: 0,
        }
    }

    /// An inline file (base64, the default encoding), within [`MAX_INLINE_TOTAL`] for the commit.
    fn add_inline(
        &mut self,
        path: String,
        content: &str,
        encoding: Option<&str>,
    ) -> Result<(), ApiError> {
        check_path(&path)?;
        let bytes = match encoding {
            Some("base64") | None => base64::engine::general_purpose::STANDARD
                .decode(content.as_bytes())
                .map_err(|e| invalid(format!("{path}: content is not base64: {e}")))?,
            Some(other) => {
                return Err(invalid(format!("{path}: unknown encoding {other:?}")));
            }
        };
        self.inline_bytes += bytes.len();
        if self.inline_bytes > MAX_INLINE_TOTAL {
            return Err(ApiError::coded(
                ErrorCode::PayloadTooLarge,
                format!(
                    "the inline files of a commit hold at most {MAX_INLINE_TOTAL} bytes; \
                     send large files through LFS"
                ),
            ));
        }
        self.files.remove(&path);
        self.inline.insert(path, bytes);
        Ok(())
    }

    fn add_lfs(&mut self, file: FileRecord) {
        self.inline.remove(&file.path);
        self.files.insert(file.path.clone(), file);
    }

    fn delete(&mut self, path: &str) {
        self.files.remove(path);
        self.inline.remove(path);
    }

    fn delete_folder(&mut self, path: &str) {
        let prefix = format!("{}/", path.trim_end_matches('/'));
        self.files.retain(|p, _| !p.starts_with(&prefix));
        self.inline.retain(|p, _| !p.starts_with(&prefix));
    }

    /// Files carried over from the parent pass the path rule too (a version published before
    /// the rule could hold one it refuses now: the commit must delete it); then the file count.
    fn check_paths_and_count(&self) -> Result<(), ApiError> {
        for path in self.files.keys() {
            check_path(path)?;
        }
        if self.files.len() + self.inline.len() > MAX_FILES {
            return Err(ApiError::coded(
                ErrorCode::TooManyFiles,
                format!("a version holds at most {MAX_FILES} files"),
            ));
        }
        Ok(())
    }
}

/// Reads the commit's lines into `tree`, each checked as it comes: a refused line ends the
/// commit before the rest of the body is read.
async fn read_lines(
    state: &AppState,
    adapter: &AdapterRecord,
    parent: Option<&VersionRecord>,
    lines: &mut Lines,
    tree: &mut CommitTree,
) -> Result<(), ApiError> {
    while let Some((n, line)) = lines.next().await? {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let line: Line =
            serde_json::from_slice(&line).map_err(|e| invalid(format!("commit line {n}: {e}")))?;
        match line {
            Line::Header { parent_commit } => {
                if let Some(pc) = parent_commit
                    && parent.is_none_or(|p| p.revision != pc)
                {
                    return Err(ApiError::coded(
                        ErrorCode::Conflict,
                        format!(
                            "parentCommit {pc} is not the newest version of {}: fetch and retry",
                            adapter.repo_id()
                        ),
                    ));
                }
            }
            Line::File {
                path,
                content,
                encoding,
            } => tree.add_inline(path, &content, encoding.as_deref())?,
            Line::LfsFile { path, oid, size } => {
                tree.add_lfs(lfs_file(state, adapter, parent, path, oid, size).await?);
            }
            Line::DeletedFile { path } => tree.delete(&path),
            Line::DeletedFolder { path } => tree.delete_folder(&path),
        }
    }
    Ok(())
}

/// An LFS line's file: a sha256 this adapter owns (`lfs::owns`), recorded with the stored blob's
/// size.
async fn lfs_file(
    state: &AppState,
    adapter: &AdapterRecord,
    parent: Option<&VersionRecord>,
    path: String,
    oid: String,
    size: Option<i64>,
) -> Result<FileRecord, ApiError> {
    check_path(&path)?;
    let oid = oid.to_ascii_lowercase();
    if oid.len() != 64 || !oid.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(invalid(format!(
            "{path}: LFS oid must be a sha256 (64 hex), got {oid:?}"
        )));
    }
    // A claimed size is checked for sense before anything is asked of the store.
    if let Some(s) = size
        && (s <= 0 || s as u64 > state.max_upload_bytes)
    {
        return Err(invalid(format!(
            "{path}: LFS size {s} is not a file size this server holds (1 to {} bytes)",
            state.max_upload_bytes
        )));
    }
    if !owns(state, adapter.id, parent, &oid).await? {
        return Err(ApiError::coded(
            ErrorCode::MissingFile,
            format!(
                "{path}: LFS object {oid} was not uploaded for this adapter (use the LFS batch API first)"
            ),
        ));
    }
    // The size recorded is always the stored blob's: a client's claim only has to agree with it
    // (an inflated one would publish a version whose downloads end early, and would pass the
    // weights' validation with a truncated file).
    let stored = i64::try_from(state.store.blobs.size(&oid).await?)
        .map_err(|_| invalid(format!("{path}: the stored object is too large")))?;
    if size.is_some_and(|s| s != stored) {
        return Err(invalid(format!(
            "{path}: LFS object {oid} has {stored} bytes, not the {} the commit claims",
            size.unwrap_or_default()
        )));
    }
    Ok(FileRecord {
        path,
        size: stored,
        sha256: oid,
    })
}

/// Validates the version before anything is stored: the config and samples are inline or
/// stored (small), the weights' header is read from its blob. Returns the config's bytes and the
/// version's summary.
async fn check_version(
    state: &AppState,
    tree: &CommitTree,
) -> Result<(Option<Vec<u8>>, Value), ApiError> {
    let config = small_file(state, tree, CONFIG_FILE, MAX_CONFIG_BYTES as u64, || {
        ApiError::coded(
            ErrorCode::InvalidAdapterConfig,
            format!("{CONFIG_FILE} is larger than {MAX_CONFIG_BYTES} bytes"),
        )
    })
    .await?;
    let samples_name = quiver_retrieve::SAMPLES_FILE;
    // Read whole to check it: only when it is no larger than a samples file may be.
    let samples = small_file(
        state,
        tree,
        samples_name,
        quiver_retrieve::MAX_SAMPLES_BYTES,
        || {
            ApiError::coded(
                ErrorCode::InvalidSamples,
                format!(
                    "{samples_name} is larger than {} bytes",
                    quiver_retrieve::MAX_SAMPLES_BYTES
                ),
            )
        },
    )
    .await?;
    let weights = weights_header(state, tree).await?;
    let lora = validate_adapter(
        config.as_deref(),
        weights.as_ref().map(|(h, s)| (h.as_slice(), *s)),
        samples.as_deref(),
    )?;
    Ok((config, lora))
}

/// A small file's bytes: inline, or read from its blob when it is at most `max_bytes` (else
/// `too_large`); `None` when the version has no such file.
async fn small_file(
    state: &AppState,
    tree: &CommitTree,
    path: &str,
    max_bytes: u64,
    too_large: impl FnOnce() -> ApiError,
) -> Result<Option<Vec<u8>>, ApiError> {
    if let Some(bytes) = tree.inline.get(path) {
        return Ok(Some(bytes.clone()));
    }
    match tree.files.get(path) {
        Some(f) if f.size as u64 <= max_bytes => Ok(Some(read_blob(state, &f.sha256, None).await?)),
        Some(_) => Err(too_large()),
        None => Ok(None),
    }
}

/// The weights' safetensors header (its first 8 + N bytes) and the file's size, if the version
/// has weights.
async fn weights_header(
    state: &AppState,
    tree: &CommitTree,
) -> Result<Option<(Vec<u8>, u64)>, ApiError> {
    Ok(
        match (tree.inline.get(WEIGHTS_FILE), tree.files.get(WEIGHTS_FILE)) {
            (Some(b), _) => Some((header_prefix(b)?, b.len() as u64)),
            (None, Some(f)) => {
                let first = read_blob(state, &f.sha256, Some(0..8.min(f.size as u64))).await?;
                let n = quiver_merge::header_len(&first)? as u64;
                let end = (8 + n).min(f.size as u64);
                Some((
                    read_blob(state, &f.sha256, Some(0..end)).await?,
                    f.size as u64,
                ))
            }
            (None, None) => None,
        },
    )
}

/// The LFS objects this commit adds: stored earlier, referenced by no row yet, so a sweep may
/// remove one before the commit; the publish checks them inside it (the parent's files are
/// referenced by its rows and cannot go).
fn added_objects(
    files: &BTreeMap<String, FileRecord>,
    parent: Option<&VersionRecord>,
) -> Vec<String> {
    files
        .values()
        .filter(|f| parent.is_none_or(|p| !p.files.iter().any(|pf| pf.sha256 == f.sha256)))
        .map(|f| f.sha256.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// Stores the inline files, keeping their staged copies until the version is published (the
/// publish stores a blob again from its copy if a sweep took it), then publishes atomically.
async fn store_and_publish(
    state: &AppState,
    adapter: &AdapterRecord,
    created_by: String,
    tree: CommitTree,
    lora: Value,
    added_lfs: &[String],
    ctx: &quiver_store::AuditContext,
) -> Result<VersionRecord, ApiError> {
    let CommitTree {
        mut files, inline, ..
    } = tree;
    let mut staged = Vec::new();
    let stored = store_inline(state, inline, &mut files, &mut staged).await;
    if let Err(e) = stored {
        for s in &staged {
            state.store.blobs.discard(s).await;
        }
        return Err(e);
    }
    let new = NewVersion {
        created_by,
        files: files.into_values().collect(),
        facets: crate::facets::of(Some(&lora), None),
        lora: Some(lora),
        lineage: None,
        parents: Vec::new(),
    };
    let held: Vec<&StagedBlob> = staged.iter().collect();
    let published = publish_version_audited(
        &state.store,
        Target::Adapter(adapter),
        &new,
        Held::Commit {
            staged: &held,
            stored: added_lfs,
        },
        Some(ctx),
    )
    .await;
    for s in &staged {
        state.store.blobs.discard(s).await;
    }
    let (_, version) = published.map_err(|e| match e {
        // Nothing was committed: the client uploads the object again and retries.
        StoreError::BlobMissing(oid) => ApiError::coded(
            ErrorCode::MissingFile,
            format!(
                "LFS object {oid} is no longer stored (it was referenced by no version for longer \
                 than the blob sweep's grace period and was removed before this commit): upload \
                 it again (LFS batch) and retry the commit; nothing was committed"
            ),
        ),
        e => e.into(),
    })?;
    Ok(version)
}

/// Stages and commits a commit's inline files to their content addresses and records them in
/// `files`; the staged copies are left in `staged` for the publish's blob check (the caller
/// discards them).
async fn store_inline(
    state: &AppState,
    inline: BTreeMap<String, Vec<u8>>,
    files: &mut BTreeMap<String, FileRecord>,
    staged: &mut Vec<StagedBlob>,
) -> Result<(), ApiError> {
    for (path, bytes) in inline {
        let size = bytes.len() as i64;
        let mut upload = state.store.blobs.begin();
        upload.write(bytes::Bytes::from(bytes)).await?;
        let blob = upload.finish().await?;
        let committed = state.store.blobs.commit(&blob).await;
        let sha256 = blob.sha256.clone();
        staged.push(blob);
        committed?;
        files.insert(path.clone(), FileRecord { path, size, sha256 });
    }
    Ok(())
}

/// A repo created through the Hub has no base model until a commit's config names one.
async fn adopt_base_model(
    state: &AppState,
    adapter: &AdapterRecord,
    config: Option<&[u8]>,
) -> Result<(), ApiError> {
    if adapter.base_model.is_empty()
        && let Some(base) = config
            .and_then(|c| quiver_merge::AdapterConfig::from_json(c).ok())
            .and_then(|c| c.base_model_name_or_path)
            .filter(|b| !b.is_empty())
    {
        let patch = AdapterPatch {
            base_model: Some(base),
            ..AdapterPatch::default()
        };
        state.store.meta.update_adapter(adapter.id, &patch).await?;
    }
    Ok(())
}

/// The safetensors header of inline weights (its first 8 + N bytes).
fn header_prefix(bytes: &[u8]) -> Result<Vec<u8>, ApiError> {
    let n = quiver_merge::header_len(bytes.get(..8).unwrap_or(bytes))? as usize;
    Ok(bytes[..(8 + n).min(bytes.len())].to_vec())
}

async fn read_blob(
    state: &AppState,
    sha256: &str,
    range: Option<std::ops::Range<u64>>,
) -> Result<Vec<u8>, ApiError> {
    let parts: Vec<bytes::Bytes> = state
        .store
        .blobs
        .get(sha256, range)
        .await?
        .try_collect()
        .await?;
    Ok(parts.concat())
}
