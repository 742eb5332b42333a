//! The git-LFS batch API with basic transfer, for uploads: a batch request gets an upload link
//! signed for each object the adapter does not already own, and `PUT` on that link stores the
//! object's bytes with a proof that they were uploaded for this adapter (`app::proofs`), which
//! lets its commits name the object ([`owns`]).

use std::sync::OnceLock;

use actix_web::{HttpRequest, HttpResponse, web};
use futures::StreamExt;
use quiver_store::{RepoId, VersionRef};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::Sha256;

use super::{invalid, origin};
use crate::app::lookup::find_writable_adapter;
use crate::app::proofs::proof_key;
use crate::auth::Caller;
use crate::error::{ApiError, ErrorCode};
use crate::state::AppState;

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
pub(super) async fn owns(
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
