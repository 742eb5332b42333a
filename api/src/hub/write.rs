//! The Hub's write path (clients with `HF_HUB_DISABLE_XET=1`): create and delete repos, YAML
//! validation, preupload, the git-LFS batch API with basic transfer, NDJSON commits and tags.
//!
//! A commit makes one new version: the parent's files (the newest version), minus deleted paths,
//! plus the commit's files — inline ones stored as blobs here, LFS ones uploaded before through
//! the batch API — then the same validation and the same atomic publish as a native upload. A
//! version that is not a PEFT LoRA (or holds a pickle) is refused and nothing becomes visible;
//! blobs stored for it are left to the sweep.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use actix_web::{HttpRequest, HttpResponse, web};
use base64::Engine;
use futures::{StreamExt, TryStreamExt};
use quiver_store::{AdapterPatch, FileRecord, NewAdapter, NewVersion, RepoId, VersionRef};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::{git_oid, is_lfs};
use crate::auth::Caller;
use crate::error::{ApiError, ErrorCode};
use super::commit_body::{Lines, MAX_INLINE_TOTAL, content_length};
use crate::lookup::find_writable_adapter;
use crate::publish::{Held, Target, publish_version};
use crate::state::AppState;
use crate::upload::{
    CONFIG_FILE, MAX_CONFIG_BYTES, MAX_FILES, WEIGHTS_FILE, check_path, validate_adapter,
};

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::coded(ErrorCode::InvalidRequest, message)
}

/// `http(s)://host` of the request, for the URLs the client parses or follows.
fn origin(req: &HttpRequest) -> String {
    let info = req.connection_info();
    format!("{}://{}", info.scheme(), info.host())
}

/// `(owner, name)` of a repo body: `organization` + `name`, `name` as `owner/name`, or the
/// caller's own `name`.
fn repo_path(organization: Option<String>, name: String, user: String) -> (String, String) {
    match (organization, name.split_once('/')) {
        (Some(org), _) => (org, name),
        (None, Some((o, n))) => (o.to_string(), n.to_string()),
        (None, None) => (user, name),
    }
}

#[derive(Deserialize)]
pub struct CreateRepo {
    name: String,
    organization: Option<String>,
    private: Option<bool>,
    visibility: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
}

/// `POST /api/repos/create`: a new adapter (its base model is set by the first commit's config).
pub async fn create_repo(
    state: web::Data<AppState>,
    caller: Caller,
    body: web::Json<CreateRepo>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    if body.kind.as_deref().is_some_and(|k| k != "model") {
        return Err(invalid("this server holds model repos (adapters) only"));
    }
    let user = caller
        .0
        .as_ref()
        .ok_or_else(ApiError::unauthorized)?
        .user
        .clone();
    let (owner, name) = repo_path(body.organization, body.name, user);
    let repo = RepoId::parse(&owner, &name)
        .map_err(|e| ApiError::coded(ErrorCode::InvalidName, e.to_string()))?;
    caller.require_write(&repo.owner)?;
    let private = body.private.unwrap_or(false) || body.visibility.as_deref() == Some("private");
    let url = format!("{}/{repo}", origin(&req));
    if state.store.meta.get_adapter(&repo).await?.is_some() {
        return Ok(HttpResponse::Conflict().json(json!({
            "error": format!("You already created this model repo: {repo}"),
            "url": url,
        })));
    }
    state
        .store
        .meta
        .create_adapter(&NewAdapter {
            repo,
            base_model: String::new(),
            description: String::new(),
            tags: Vec::new(),
            private,
        })
        .await?;
    Ok(HttpResponse::Ok().json(json!({"url": url})))
}

#[derive(Deserialize)]
pub struct DeleteRepo {
    name: String,
    organization: Option<String>,
}

/// `DELETE /api/repos/delete`.
pub async fn delete_repo(
    state: web::Data<AppState>,
    caller: Caller,
    body: web::Json<DeleteRepo>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let user = caller
        .0
        .as_ref()
        .map(|p| p.user.clone())
        .unwrap_or_default();
    let path = repo_path(body.organization, body.name, user);
    let (adapter, _) = find_writable_adapter(&state.store, &caller, &path).await?;
    state.store.meta.delete_adapter(adapter.id).await?;
    Ok(HttpResponse::Ok().json(json!({})))
}

/// `POST /api/validate-yaml`: cards are not checked (the client needs a JSON answer).
pub async fn validate_yaml() -> HttpResponse {
    HttpResponse::Ok().json(json!({"errors": [], "warnings": []}))
}

#[derive(Deserialize)]
pub struct Preupload {
    files: Vec<PreuploadFile>,
}

#[derive(Deserialize)]
struct PreuploadFile {
    path: String,
    size: i64,
}

/// `POST /api/models/{repo}/preupload/{rev}`: LFS for weights and large files, and the id of the
/// file already at that path, so the client skips unchanged files.
pub async fn preupload(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<(String, String, String)>,
    body: web::Json<Preupload>,
) -> Result<HttpResponse, ApiError> {
    let (owner, name, _rev) = path.into_inner();
    let (adapter, _) = find_writable_adapter(&state.store, &caller, &(owner, name)).await?;
    let current = state
        .store
        .meta
        .get_version(adapter.id, &VersionRef::Main)
        .await?;
    let mut out = Vec::new();
    for f in &body.files {
        let existing = match current
            .as_ref()
            .and_then(|v| v.files.iter().find(|e| e.path == f.path))
        {
            Some(e) => Some(git_oid(&state, e).await?),
            None => None,
        };
        let mode = if f.size > 0 && is_lfs(&f.path, f.size) {
            "lfs"
        } else {
            "regular"
        };
        out.push(
            json!({"path": f.path, "uploadMode": mode, "shouldIgnore": false, "oid": existing}),
        );
    }
    Ok(HttpResponse::Ok().json(json!({"files": out})))
}

// --- LFS ------------------------------------------------------------------------------------

/// Upload links are valid this long.
const LINK_SECONDS: i64 = 3600;

/// The key that signs upload links: `QUIVER_SIGNING_KEY` (the same in every process behind one
/// address), else random per process.
fn signing_key() -> &'static [u8] {
    static KEY: OnceLock<Vec<u8>> = OnceLock::new();
    KEY.get_or_init(|| match std::env::var("QUIVER_SIGNING_KEY") {
        Ok(k) if !k.is_empty() => k.into_bytes(),
        _ => {
            use rand::RngCore;
            let mut k = vec![0u8; 32];
            rand::rng().fill_bytes(&mut k);
            k
        }
    })
}

/// HMAC-SHA256 (RFC 2104).
fn hmac(key: &[u8], message: &[u8]) -> String {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let pad = |b: u8| k.iter().map(|x| x ^ b).collect::<Vec<u8>>();
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(message)
        .finalize();
    hex::encode(
        Sha256::new()
            .chain_update(pad(0x5c))
            .chain_update(inner)
            .finalize(),
    )
}

fn upload_signature(repo: &str, oid: &str, size: i64, expires: i64) -> String {
    hmac(
        signing_key(),
        format!("{repo}\n{oid}\n{size}\n{expires}").as_bytes(),
    )
}

#[derive(Deserialize)]
pub struct Batch {
    operation: String,
    #[serde(default)]
    objects: Vec<LfsObject>,
}

#[derive(Deserialize)]
struct LfsObject {
    oid: String,
    size: i64,
}

fn lfs_json(body: Value) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/vnd.git-lfs+json")
        .body(body.to_string())
}

/// `POST /{owner}/{name}.git/info/lfs/objects/batch` (basic transfer, uploads): an upload link
/// signed for that object, or no action when the store already holds it.
pub async fn lfs_batch(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<(String, String)>,
    body: web::Bytes,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    // The client sends `application/vnd.git-lfs+json`, which the JSON extractor refuses.
    let body: Batch = serde_json::from_slice(&body).map_err(|e| {
        ApiError::coded(
            ErrorCode::InvalidJson,
            format!("the LFS batch request is not valid: {e}"),
        )
    })?;
    let (owner, repo_git) = path.into_inner();
    let name = repo_git
        .strip_suffix(".git")
        .ok_or_else(|| ApiError::not_found(ErrorCode::RouteNotFound, req.path()))?
        .to_string();
    let (adapter, _) = find_writable_adapter(&state.store, &caller, &(owner, name)).await?;
    let repo = adapter.repo_id();
    let current = state
        .store
        .meta
        .get_version(adapter.id, &VersionRef::Main)
        .await?;
    let mut objects = Vec::new();
    for o in &body.objects {
        let valid =
            o.oid.len() == 64 && o.oid.bytes().all(|b| b.is_ascii_hexdigit()) && o.size >= 0;
        if body.operation != "upload" {
            objects.push(json!({"oid": o.oid, "size": o.size,
                "error": {"code": 501, "message": "only uploads go through LFS here; download with /resolve/"}}));
        } else if !valid {
            objects.push(json!({"oid": o.oid, "size": o.size,
                "error": {"code": 422, "message": "oid must be a sha256 (64 hex) and size ≥ 0"}}));
        } else if o.size as u64 > state.max_upload_bytes {
            objects.push(json!({"oid": o.oid, "size": o.size,
                "error": {"code": 422, "message": format!("larger than this server's upload limit of {} bytes", state.max_upload_bytes)}}));
        } else if owns(
            &state,
            adapter.id,
            current.as_ref(),
            &o.oid.to_ascii_lowercase(),
        )
        .await?
        {
            objects.push(json!({"oid": o.oid, "size": o.size}));
        } else {
            let expires = quiver_store::time::now_ms() / 1000 + LINK_SECONDS;
            let oid = o.oid.to_ascii_lowercase();
            let sig = upload_signature(&repo, &oid, o.size, expires);
            let href = format!(
                "{}/api/lfs-upload/{repo}/{oid}?size={}&expires={expires}&sig={sig}",
                origin(&req),
                o.size
            );
            objects.push(json!({"oid": o.oid, "size": o.size, "authenticated": true,
                "actions": {"upload": {"href": href, "header": {}, "expires_in": LINK_SECONDS}}}));
        }
    }
    Ok(lfs_json(
        json!({"transfer": "basic", "objects": objects, "hash_algo": "sha256"}),
    ))
}

/// The marker that this adapter's writers uploaded the bytes of `oid` (see [`owns`]).
fn proof_key(adapter_id: i64, oid: &str) -> String {
    format!("lfs-proof/{adapter_id}/{oid}")
}

/// Whether a commit to this adapter may refer to LFS object `oid` without uploading it: the
/// newest version holds it, or its bytes were uploaded for this adapter. Content is stored once
/// whoever uploads it, but knowing a sha256 must not be enough to put someone else's private
/// file into one's own adapter and read it: anything else is uploaded (and checked) again.
async fn owns(
    state: &AppState,
    adapter_id: i64,
    current: Option<&quiver_store::VersionRecord>,
    oid: &str,
) -> Result<bool, ApiError> {
    if current.is_some_and(|v| v.files.iter().any(|f| f.sha256 == oid)) {
        return Ok(true);
    }
    Ok(state.store.blobs.exists(oid).await?
        && state
            .store
            .blobs
            .get_derived(&proof_key(adapter_id, oid))
            .await?
            .is_some())
}

#[derive(Deserialize)]
pub struct UploadLink {
    size: i64,
    expires: i64,
    sig: String,
}

/// `PUT /api/lfs-upload/{owner}/{name}/{oid}?size&expires&sig`: the raw bytes of one LFS object,
/// authorised by the link's signature (the client sends no token here); stored only if its
/// sha256 and size are the promised ones.
pub async fn lfs_upload(
    state: web::Data<AppState>,
    path: web::Path<(String, String, String)>,
    link: web::Query<UploadLink>,
    mut body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let (owner, name, oid) = path.into_inner();
    let repo = format!("{owner}/{name}");
    let now = quiver_store::time::now_ms() / 1000;
    let expected = upload_signature(&repo, &oid, link.size, link.expires);
    if link.expires < now || expected != link.sig {
        return Err(ApiError::forbidden(
            "this upload link is invalid or has expired; ask the batch API for a new one",
        ));
    }
    let blobs = &state.store.blobs;
    let mut upload = blobs.begin();
    let mut total: i64 = 0;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| invalid(format!("the upload broke off: {e}")))?;
        total += chunk.len() as i64;
        if total > link.size {
            return Err(invalid(format!(
                "more than the {} bytes announced",
                link.size
            )));
        }
        state.metrics.add_in(chunk.len() as u64);
        upload.write(chunk).await?;
    }
    let staged = upload.finish().await?;
    if staged.sha256 != oid || staged.size as i64 != link.size {
        blobs.discard(&staged).await;
        return Err(invalid(format!(
            "the bytes have sha256 {} and size {}, not the announced {oid} and {}",
            staged.sha256, staged.size, link.size
        )));
    }
    let stored = blobs.commit(&staged).await;
    blobs.discard(&staged).await;
    stored?;
    let repo = RepoId::parse(&owner, &name).map_err(|_| {
        ApiError::not_found(
            ErrorCode::AdapterNotFound,
            format!("adapter {owner}/{name}"),
        )
    })?;
    let adapter = state.store.meta.get_adapter(&repo).await?.ok_or_else(|| {
        ApiError::not_found(ErrorCode::AdapterNotFound, format!("adapter {repo}"))
    })?;
    blobs
        .put_derived(&proof_key(adapter.id, &oid), bytes::Bytes::new())
        .await?;
    Ok(HttpResponse::Ok().finish())
}

// --- commits --------------------------------------------------------------------------------

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
    // The body is read line by line, each line and the inline files bounded (`commit_body`):
    // a commit never sits whole in memory. One announced larger than the upload limit is
    // refused before any of it is read.
    let limit = state.max_upload_bytes;
    if content_length(&req).is_some_and(|n| n > limit) {
        return Err(ApiError::too_large(limit));
    }
    let mut lines = Lines::new(payload, limit);
    let mut inline_bytes: usize = 0;
    let mut files: BTreeMap<String, FileRecord> = parent
        .as_ref()
        .map(|p| {
            p.files
                .iter()
                .map(|f| (f.path.clone(), f.clone()))
                .collect()
        })
        .unwrap_or_default();
    let mut inline: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    while let Some((n, line)) = lines.next().await? {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let line: Line = serde_json::from_slice(&line)
            .map_err(|e| invalid(format!("commit line {n}: {e}")))?;
        match line {
            Line::Header { parent_commit } => {
                if let Some(pc) = parent_commit
                    && parent.as_ref().is_none_or(|p| p.revision != pc)
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
            } => {
                check_path(&path)?;
                let bytes = match encoding.as_deref() {
                    Some("base64") | None => base64::engine::general_purpose::STANDARD
                        .decode(content.as_bytes())
                        .map_err(|e| invalid(format!("{path}: content is not base64: {e}")))?,
                    Some(other) => {
                        return Err(invalid(format!("{path}: unknown encoding {other:?}")));
                    }
                };
                inline_bytes += bytes.len();
                if inline_bytes > MAX_INLINE_TOTAL {
                    return Err(ApiError::coded(
                        ErrorCode::PayloadTooLarge,
                        format!(
                            "the inline files of a commit hold at most {MAX_INLINE_TOTAL} bytes; \
                             send large files through LFS"
                        ),
                    ));
                }
                files.remove(&path);
                inline.insert(path, bytes);
            }
            Line::LfsFile { path, oid, size } => {
                check_path(&path)?;
                let oid = oid.to_ascii_lowercase();
                if !owns(&state, adapter.id, parent.as_ref(), &oid).await? {
                    return Err(ApiError::coded(
                        ErrorCode::MissingFile,
                        format!(
                            "{path}: LFS object {oid} was not uploaded for this adapter (use the LFS batch API first)"
                        ),
                    ));
                }
                let size = match size {
                    Some(s) => s,
                    None => state.store.blobs.size(&oid).await? as i64,
                };
                inline.remove(&path);
                files.insert(
                    path.clone(),
                    FileRecord {
                        path,
                        size,
                        sha256: oid,
                    },
                );
            }
            Line::DeletedFile { path } => {
                files.remove(&path);
                inline.remove(&path);
            }
            Line::DeletedFolder { path } => {
                let prefix = format!("{}/", path.trim_end_matches('/'));
                files.retain(|p, _| !p.starts_with(&prefix));
                inline.retain(|p, _| !p.starts_with(&prefix));
            }
        }
    }
    if files.len() + inline.len() > MAX_FILES {
        return Err(ApiError::coded(
            ErrorCode::TooManyFiles,
            format!("a version holds at most {MAX_FILES} files"),
        ));
    }
    // Validate before storing anything: the config and samples are inline or stored (small),
    // the weights' header is read from its blob.
    let small = |path: &str| -> Option<Vec<u8>> { inline.get(path).cloned() };
    let config = match small(CONFIG_FILE) {
        Some(b) => Some(b),
        None => match files.get(CONFIG_FILE) {
            Some(f) if f.size as usize <= MAX_CONFIG_BYTES => {
                Some(read_blob(&state, &f.sha256, None).await?)
            }
            Some(_) => {
                return Err(ApiError::coded(
                    ErrorCode::InvalidAdapterConfig,
                    format!("{CONFIG_FILE} is larger than {MAX_CONFIG_BYTES} bytes"),
                ));
            }
            None => None,
        },
    };
    let samples_name = quiver_retrieve::SAMPLES_FILE;
    let samples = match small(samples_name) {
        Some(b) => Some(b),
        None => match files.get(samples_name) {
            // Read whole to check it: only when it is no larger than a samples file may be.
            Some(f) if f.size as u64 <= quiver_retrieve::MAX_SAMPLES_BYTES => {
                Some(read_blob(&state, &f.sha256, None).await?)
            }
            Some(_) => {
                return Err(ApiError::coded(
                    ErrorCode::InvalidSamples,
                    format!(
                        "{samples_name} is larger than {} bytes",
                        quiver_retrieve::MAX_SAMPLES_BYTES
                    ),
                ));
            }
            None => None,
        },
    };
    let weights = match (inline.get(WEIGHTS_FILE), files.get(WEIGHTS_FILE)) {
        (Some(b), _) => Some((header_prefix(b)?, b.len() as u64)),
        (None, Some(f)) => {
            let first = read_blob(&state, &f.sha256, Some(0..8.min(f.size as u64))).await?;
            let n = quiver_merge::header_len(&first)? as u64;
            let end = (8 + n).min(f.size as u64);
            Some((
                read_blob(&state, &f.sha256, Some(0..end)).await?,
                f.size as u64,
            ))
        }
        (None, None) => None,
    };
    let lora = validate_adapter(
        config.as_deref(),
        weights.as_ref().map(|(h, s)| (h.as_slice(), *s)),
        samples.as_deref(),
    )?;
    // Store the inline files, then publish the version atomically.
    for (path, bytes) in inline {
        let size = bytes.len() as i64;
        let mut upload = state.store.blobs.begin();
        upload.write(bytes::Bytes::from(bytes)).await?;
        let staged = upload.finish().await?;
        let stored = state.store.blobs.commit(&staged).await;
        state.store.blobs.discard(&staged).await;
        stored?;
        files.insert(
            path.clone(),
            FileRecord {
                path,
                size,
                sha256: staged.sha256.clone(),
            },
        );
    }
    let new = NewVersion {
        created_by: principal.user.clone(),
        files: files.into_values().collect(),
        facets: crate::facets::of(Some(&lora), None),
        lora: Some(lora),
        lineage: None,
        parents: Vec::new(),
    };
    let (_, version) = publish_version(
        &state.store,
        Target::Adapter(&adapter),
        &new,
        Held::Staged(&[]),
    )
    .await?;
    state.routing.version_published(&version.files);
    if adapter.base_model.is_empty()
        && let Some(base) = config
            .as_deref()
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

#[derive(Deserialize)]
pub struct TagBody {
    tag: String,
}

/// `POST /api/models/{repo}/tag/{rev}`: an alias for that version.
pub async fn tag(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<(String, String, String)>,
    body: web::Json<TagBody>,
) -> Result<HttpResponse, ApiError> {
    let (owner, name, rev) = path.into_inner();
    let (adapter, _) = find_writable_adapter(&state.store, &caller, &(owner, name)).await?;
    let version = state
        .store
        .meta
        .get_version(adapter.id, &VersionRef::parse(&rev))
        .await?
        .ok_or_else(|| {
            ApiError::not_found(
                ErrorCode::VersionNotFound,
                format!("version {rev} of {}", adapter.repo_id()),
            )
        })?;
    let alias = crate::routes::refs::check_alias(&body.tag)?;
    state
        .store
        .meta
        .set_alias(adapter.id, &alias, version.number)
        .await?;
    Ok(HttpResponse::Ok().json(json!({"name": alias, "targetCommit": version.revision})))
}
