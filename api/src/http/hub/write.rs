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
use quiver_store::{
    AdapterPatch, FileRecord, NewAdapter, NewVersion, RepoId, StagedBlob, StoreError, VersionRef,
};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::Sha256;

use super::commit_body::{Lines, MAX_INLINE_TOTAL, content_length};
use super::{git_oid, is_lfs};
use crate::app::lookup::find_writable_adapter;
use crate::app::proofs::proof_key;
use crate::auth::Caller;
use crate::error::{ApiError, ErrorCode};
use crate::http::extract::Authenticated;
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
    caller: Authenticated,
    body: web::Json<CreateRepo>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    if body.kind.as_deref().is_some_and(|k| k != "model") {
        return Err(invalid("this server holds model repos (adapters) only"));
    }
    let user = caller.0.user.clone();
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
    crate::app::adapters::delete(&state, &adapter).await?;
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
        check_path(&f.path)?;
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

type HmacSha256 = hmac::Hmac<Sha256>;

fn mac(key: &[u8], message: &[u8]) -> HmacSha256 {
    use hmac::Mac;
    // HMAC takes keys of any length (longer ones are hashed), so this cannot fail.
    let mut mac = <HmacSha256 as Mac>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC accepts keys of every length"));
    mac.update(message);
    mac
}

/// HMAC-SHA256 (RFC 2104) of `message`, hex.
fn sign(key: &[u8], message: &[u8]) -> String {
    use hmac::Mac;
    hex::encode(mac(key, message).finalize().into_bytes())
}

/// Whether `sig` (hex) is the HMAC-SHA256 of `message`, compared in constant time.
fn verify(key: &[u8], message: &[u8], sig: &str) -> bool {
    use hmac::Mac;
    hex::decode(sig).is_ok_and(|sig| mac(key, message).verify_slice(&sig).is_ok())
}

/// What an upload link signs: the adapter, the object's sha256 and size, and the expiry. The
/// fields cannot run into each other: none of the signed values holds a newline.
fn link_message(repo: &str, oid: &str, size: i64, expires: i64) -> String {
    format!("{repo}\n{oid}\n{size}\n{expires}")
}

/// Whether an upload link for `repo`'s object `oid` is one this server signed and still valid
/// at `now` (Unix seconds).
fn link_valid(key: &[u8], repo: &str, oid: &str, link: &UploadLink, now: i64) -> bool {
    let message = link_message(repo, oid, link.size, link.expires);
    link.expires >= now && verify(key, message.as_bytes(), &link.sig)
}

fn upload_signature(repo: &str, oid: &str, size: i64, expires: i64) -> String {
    sign(
        signing_key(),
        link_message(repo, oid, size, expires).as_bytes(),
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
    if !link_valid(signing_key(), &repo, &oid, &link, now) {
        return Err(ApiError::forbidden(
            "this upload link is invalid or has expired; ask the batch API for a new one",
        ));
    }
    let blobs = &state.store.blobs;
    let mut upload = blobs.begin();
    let mut total: i64 = 0;
    // On any error the part staged so far is removed (not left to the sweep).
    let streamed: Result<(), ApiError> = async {
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| invalid(format!("the upload broke off: {e}")))?;
            total = total.saturating_add(chunk.len() as i64);
            if total > link.size {
                return Err(invalid(format!(
                    "more than the {} bytes announced",
                    link.size
                )));
            }
            state.metrics.add_in(chunk.len() as u64);
            upload.write(chunk).await?;
        }
        Ok(())
    }
    .await;
    if let Err(e) = streamed {
        upload.abort().await;
        return Err(e);
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
        let line: Line =
            serde_json::from_slice(&line).map_err(|e| invalid(format!("commit line {n}: {e}")))?;
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
                if !owns(&state, adapter.id, parent.as_ref(), &oid).await? {
                    return Err(ApiError::coded(
                        ErrorCode::MissingFile,
                        format!(
                            "{path}: LFS object {oid} was not uploaded for this adapter (use the LFS batch API first)"
                        ),
                    ));
                }
                // The size recorded is always the stored blob's: a client's claim only has to
                // agree with it (an inflated one would publish a version whose downloads end
                // early, and would pass the weights' validation with a truncated file).
                let stored = i64::try_from(state.store.blobs.size(&oid).await?)
                    .map_err(|_| invalid(format!("{path}: the stored object is too large")))?;
                if size.is_some_and(|s| s != stored) {
                    return Err(invalid(format!(
                        "{path}: LFS object {oid} has {stored} bytes, not the {} the commit claims",
                        size.unwrap_or_default()
                    )));
                }
                let size = stored;
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
    // Files carried over from the parent pass the path rule too (a version published before
    // the rule could hold one it refuses now: the commit must delete it).
    for path in files.keys() {
        check_path(path)?;
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
    // The LFS objects this commit adds: stored earlier, referenced by no row yet, so a sweep
    // may remove one before the commit; the publish checks them inside it (the parent's files
    // are referenced by its rows and cannot go).
    let lfs: Vec<String> = files
        .values()
        .filter(|f| {
            parent
                .as_ref()
                .is_none_or(|p| !p.files.iter().any(|pf| pf.sha256 == f.sha256))
        })
        .map(|f| f.sha256.clone())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    // Store the inline files, keeping their staged copies until the version is published (the
    // publish stores a blob again from its copy if a sweep took it), then publish atomically.
    let mut staged = Vec::new();
    let stored = store_inline(&state, inline, &mut files, &mut staged).await;
    if let Err(e) = stored {
        for s in &staged {
            state.store.blobs.discard(s).await;
        }
        return Err(e);
    }
    let new = NewVersion {
        created_by: principal.user.clone(),
        files: files.into_values().collect(),
        facets: crate::facets::of(Some(&lora), None),
        lora: Some(lora),
        lineage: None,
        parents: Vec::new(),
    };
    let held: Vec<&StagedBlob> = staged.iter().collect();
    let published = publish_version(
        &state.store,
        Target::Adapter(&adapter),
        &new,
        Held::Commit {
            staged: &held,
            stored: &lfs,
        },
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
    let alias = crate::app::refs::check_alias(&body.tag)?;
    state
        .store
        .meta
        .set_alias(adapter.id, &alias, version.number)
        .await?;
    Ok(HttpResponse::Ok().json(json!({"name": alias, "targetCommit": version.revision})))
}

#[cfg(test)]
mod tests {
    use super::{UploadLink, link_message, link_valid, sign, verify};

    #[test]
    fn links_are_bound_to_repo_object_size_and_time() {
        let key = b"test key";
        let oid = "ab".repeat(32);
        let sig = sign(key, link_message("alice/a", &oid, 10, 1000).as_bytes());
        let valid = |key: &[u8], repo: &str, oid: &str, size: i64, expires: i64, now: i64| {
            let link = UploadLink {
                size,
                expires,
                sig: sig.clone(),
            };
            link_valid(key, repo, oid, &link, now)
        };
        assert!(valid(key, "alice/a", &oid, 10, 1000, 999));
        assert!(valid(key, "alice/a", &oid, 10, 1000, 1000));
        // Expired, other repo, other object, other size, later expiry, other key.
        let other = "cd".repeat(32);
        assert!(!valid(key, "alice/a", &oid, 10, 1000, 1001));
        assert!(!valid(key, "alice/b", &oid, 10, 1000, 999));
        assert!(!valid(key, "alice/a", &other, 10, 1000, 999));
        assert!(!valid(key, "alice/a", &oid, 11, 1000, 999));
        assert!(!valid(key, "alice/a", &oid, 10, 5000, 999));
        assert!(!valid(b"other", "alice/a", &oid, 10, 1000, 999));
    }

    /// RFC 4231 test vectors for HMAC-SHA256 (case 5 truncates the output, which links do not).
    #[test]
    fn hmac_sha256_matches_rfc_4231() {
        let big_key = vec![0xaa; 131];
        let key4: Vec<u8> = (1..=25).collect();
        let cases: [(&[u8], &[u8], &str); 6] = [
            (
                &[0x0b; 20],
                b"Hi There",
                "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7",
            ),
            (
                b"Jefe",
                b"what do ya want for nothing?",
                "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
            ),
            (
                &[0xaa; 20],
                &[0xdd; 50],
                "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe",
            ),
            (
                &key4,
                &[0xcd; 50],
                "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b",
            ),
            (
                &big_key,
                b"Test Using Larger Than Block-Size Key - Hash Key First",
                "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
            ),
            (
                &big_key,
                b"This is a test using a larger than block-size key and a larger than block-size data. The key needs to be hashed before being used by the HMAC algorithm.",
                "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2",
            ),
        ];
        for (n, (key, data, want)) in cases.iter().enumerate() {
            assert_eq!(sign(key, data), *want, "case {n}");
            assert!(verify(key, data, want), "case {n}");
            let upper = want.to_uppercase();
            assert!(verify(key, data, &upper), "case {n}: upper-case hex");
        }
    }

    #[test]
    fn verify_refuses_anything_else() {
        let good = sign(b"k", b"m");
        assert!(verify(b"k", b"m", &good));
        let mut flipped = good.clone().into_bytes();
        flipped[10] = if flipped[10] == b'0' { b'1' } else { b'0' };
        for bad in [
            String::from_utf8(flipped).unwrap_or_default(),
            good[..62].to_string(),
            format!("{good}00"),
            String::new(),
            "zz".repeat(32),
            sign(b"other key", b"m"),
            sign(b"k", b"m2"),
        ] {
            assert!(!verify(b"k", b"m", &bad), "{bad:?} verified");
        }
    }
}
