//! The Hugging Face Hub's HTTP API over the registry, so that `huggingface_hub`, PEFT, vLLM and
//! LoRAX read from Quiver with `HF_ENDPOINT` pointed at it (docs/hub.md).
//!
//! Mapping: a repo `owner/name` is an adapter; a commit is a version (its 40-hex revision);
//! `main` is the newest version, `v{N}` and aliases are tags; files are the version's files.
//! Weight files (`*.safetensors`, `*.bin`, anything over 10 MiB) are LFS files whose id is their
//! sha256; the others are regular files whose id is their git blob sha1, as on the Hub.
//!
//! Errors are the API's one envelope, with the Hub's `X-Error-Code` added (see
//! `ErrorCode::hub_code`) so the client raises its typed exceptions.

pub mod commit;
pub mod commit_body;
pub mod lfs;
pub mod models;
pub mod resolve;
pub mod write;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Mutex, OnceLock};

use actix_web::dev::Payload;
use actix_web::{FromRequest, HttpRequest, web};
use futures::TryStreamExt;
use quiver_store::{AdapterRecord, FileRecord, VersionRecord};
use serde_json::{Value, json};
use sha1::{Digest, Sha1};

use crate::auth::Caller;
use crate::error::{ApiError, ErrorCode};
use crate::http::extract::{self, ForeignTokens};
use crate::state::AppState;

/// A 400 `invalid_request` of the write path.
fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::coded(ErrorCode::InvalidRequest, message)
}

/// `http(s)://host` of the request, for the URLs the client parses or follows.
fn origin(req: &HttpRequest) -> String {
    let info = req.connection_info();
    format!("{}://{}", info.scheme(), info.host())
}

/// One Hub route: its path template (actix syntax), the methods it answers and its handler.
pub struct HubRoute {
    pub path: &'static str,
    pub methods: &'static [&'static str],
    route: fn() -> actix_web::Route,
}

/// Every Hub route, in registration order: [`configure`] registers exactly these, and the
/// privacy test enumerates them (a route added here without a case there fails it).
pub const ROUTES: &[HubRoute] = &[
    hub("/api/models", &["GET"], || web::get().to(models::list)),
    hub("/api/whoami-v2", &["GET"], || web::get().to(models::whoami)),
    hub("/api/models/{owner}/{name}", &["GET"], || {
        web::get().to(models::info)
    }),
    hub(
        "/api/models/{owner}/{name}/revision/{rev}",
        &["GET"],
        || web::get().to(models::info_at),
    ),
    hub("/api/models/{owner}/{name}/tree/{rev}", &["GET"], || {
        web::get().to(models::tree)
    }),
    hub(
        "/api/models/{owner}/{name}/tree/{rev}/{path:.*}",
        &["GET"],
        || web::get().to(models::tree_under),
    ),
    hub("/api/models/{owner}/{name}/refs", &["GET"], || {
        web::get().to(models::refs)
    }),
    hub("/api/models/{owner}/{name}/commits/{rev}", &["GET"], || {
        web::get().to(models::commits)
    }),
    hub(
        "/api/models/{owner}/{name}/xet-read-token/{rev}",
        &["GET"],
        || web::get().to(models::no_xet),
    ),
    hub(
        "/api/models/{owner}/{name}/xet-write-token/{rev}",
        &["GET"],
        || web::get().to(models::no_xet),
    ),
    hub("/api/repos/create", &["POST"], || {
        web::post().to(write::create_repo)
    }),
    hub("/api/repos/delete", &["DELETE"], || {
        web::delete().to(write::delete_repo)
    }),
    hub("/api/validate-yaml", &["POST"], || {
        web::post().to(write::validate_yaml)
    }),
    hub(
        "/api/models/{owner}/{name}/preupload/{rev}",
        &["POST"],
        || web::post().to(write::preupload),
    ),
    hub("/api/models/{owner}/{name}/commit/{rev}", &["POST"], || {
        web::post().to(commit::commit)
    }),
    hub("/api/models/{owner}/{name}/tag/{rev}", &["POST"], || {
        web::post().to(write::tag)
    }),
    hub(
        "/{owner}/{repo_git}/info/lfs/objects/batch",
        &["POST"],
        || web::post().to(lfs::lfs_batch),
    ),
    hub("/api/lfs-upload/{owner}/{name}/{oid}", &["PUT"], || {
        web::put().to(lfs::lfs_upload)
    }),
    hub(
        "/{owner}/{name}/resolve/{rev}/{path:.*}",
        &["GET", "HEAD"],
        || {
            web::route()
                .guard(actix_web::guard::Any(actix_web::guard::Get()).or(actix_web::guard::Head()))
                .to(resolve::resolve)
        },
    ),
];

const fn hub(
    path: &'static str,
    methods: &'static [&'static str],
    route: fn() -> actix_web::Route,
) -> HubRoute {
    HubRoute {
        path,
        methods,
        route,
    }
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    for r in ROUTES {
        cfg.route(r.path, (r.route)());
    }
}

/// The caller of a Hub read (GET, HEAD): a token this server did not issue reads as anonymous,
/// because the Hub's clients send whatever token they hold (`HF_TOKEN`) with every call.
/// Writes and `whoami-v2` take the strict `Caller`.
pub struct HubReader(pub Caller);

impl FromRequest for HubReader {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, Self::Error>>>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let caller = extract::caller(req, ForeignTokens::AnonymousReads);
        Box::pin(async move { Ok(HubReader(caller.await?)) })
    }
}

/// Whether a file is listed to Hub clients (`siblings`, the tree), which write what they list
/// under a local directory (`snapshot_download`): only paths the path rule accepts. A version
/// published before the rule may hold one it refuses (`.git/config`); it stays readable by its
/// exact path, but no snapshot writes it.
pub fn listed(path: &str) -> bool {
    quiver_store::paths::check_file_path(path).is_ok()
}

/// Above this size a file is an LFS file whatever its name.
const LFS_ABOVE: i64 = 10 * 1024 * 1024;

/// Whether the Hub would store this file in LFS (weights, or anything large).
pub fn is_lfs(path: &str, size: i64) -> bool {
    const WEIGHTS: [&str; 7] = [
        ".safetensors",
        ".bin",
        ".pt",
        ".pth",
        ".ckpt",
        ".gguf",
        ".npz",
    ];
    size > LFS_ABOVE || WEIGHTS.iter().any(|ext| path.ends_with(ext))
}

/// The git LFS pointer file of a blob (what git stores in place of an LFS file).
fn lfs_pointer(sha256: &str, size: i64) -> String {
    format!("version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n")
}

fn git_blob_sha1(bytes: &[u8]) -> String {
    let mut h = Sha1::new();
    h.update(format!("blob {}\0", bytes.len()).as_bytes());
    h.update(bytes);
    hex::encode(h.finalize())
}

/// The file's git object id: the blob sha1 of its content, or of its LFS pointer. Contents are
/// content-addressed, so the sha1 of a regular file is computed once per blob (then remembered).
pub async fn git_oid(state: &AppState, file: &FileRecord) -> Result<String, ApiError> {
    if is_lfs(&file.path, file.size) {
        return Ok(git_blob_sha1(
            lfs_pointer(&file.sha256, file.size).as_bytes(),
        ));
    }
    static SHA1S: OnceLock<Mutex<HashMap<String, String>>> = OnceLock::new();
    let cache = SHA1S.get_or_init(Default::default);
    if let Some(hit) = cache.lock().ok().and_then(|c| c.get(&file.sha256).cloned()) {
        return Ok(hit);
    }
    let bytes: Vec<bytes::Bytes> = state
        .store
        .blobs
        .get(&file.sha256, None)
        .await?
        .try_collect()
        .await?;
    let oid = git_blob_sha1(&bytes.concat());
    if let Ok(mut c) = cache.lock() {
        if c.len() > 100_000 {
            c.clear();
        }
        c.insert(file.sha256.clone(), oid.clone());
    }
    Ok(oid)
}

/// The `ETag` the Hub gives a file: the sha256 of an LFS file, the git oid of a regular one.
pub async fn etag(state: &AppState, file: &FileRecord) -> Result<String, ApiError> {
    if is_lfs(&file.path, file.size) {
        Ok(file.sha256.clone())
    } else {
        git_oid(state, file).await
    }
}

/// A tree or sibling entry's LFS part.
fn lfs_json(file: &FileRecord, key: &str) -> Option<Value> {
    is_lfs(&file.path, file.size).then(|| {
        json!({
            key: file.sha256,
            "size": file.size,
            "pointerSize": lfs_pointer(&file.sha256, file.size).len(),
        })
    })
}

/// The base model id the adapter declares (none for a Hub-created repo before its first commit).
fn base_model(adapter: &AdapterRecord) -> Option<&str> {
    Some(adapter.base_model.as_str()).filter(|b| !b.is_empty())
}

/// The Hub's tags of an adapter: the user's tags plus `peft`, `lora`, `safetensors` and
/// `base_model:adapter:<base>`.
fn tags(adapter: &AdapterRecord) -> Vec<String> {
    let mut t = vec!["peft".to_string(), "lora".into(), "safetensors".into()];
    if let Some(b) = base_model(adapter) {
        t.push(format!("base_model:adapter:{b}"));
    }
    for user in &adapter.tags {
        if !t.contains(user) {
            t.push(user.clone());
        }
    }
    t
}

/// `ModelInfo` as the Hub's `/api/models` returns it: `siblings` (with `blobs`, sizes and LFS
/// ids) when `files` is given.
pub async fn model_json(
    state: &AppState,
    adapter: &AdapterRecord,
    version: Option<&VersionRecord>,
    files: Option<bool>,
) -> Result<Value, ApiError> {
    let mut card = json!({"library_name": "peft", "tags": ["lora"]});
    if let Some(b) = base_model(adapter) {
        card["base_model"] = json!(b);
    }
    let mut v = json!({
        "id": adapter.repo_id(),
        "modelId": adapter.repo_id(),
        "author": adapter.owner,
        "sha": version.map(|v| v.revision.clone()),
        "private": adapter.private,
        "gated": false,
        "disabled": false,
        "lastModified": quiver_store::time::rfc3339(version.map_or(adapter.updated_at, |v| v.created_at).max(adapter.updated_at)),
        "createdAt": quiver_store::time::rfc3339(adapter.created_at),
        "downloads": adapter.downloads,
        "likes": 0,
        "library_name": "peft",
        "tags": tags(adapter),
        "cardData": card,
    });
    if let Some(blobs) = files {
        let mut siblings = Vec::new();
        for f in version
            .map(|v| v.files.as_slice())
            .unwrap_or_default()
            .iter()
            .filter(|f| listed(&f.path))
        {
            let mut s = json!({"rfilename": f.path});
            if blobs {
                s["size"] = json!(f.size);
                s["blobId"] = json!(git_oid(state, f).await?);
                if let Some(lfs) = lfs_json(f, "sha256") {
                    s["lfs"] = lfs;
                }
            }
            siblings.push(s);
        }
        v["siblings"] = json!(siblings);
    }
    Ok(v)
}
