//! LoRAX's `pbase` adapter source over the registry: with `PREDIBASE_GATEWAY_ENDPOINT` pointed
//! at Quiver, LoRAX resolves `adapter_source="pbase"` ids here and then reads the returned
//! `s3://` prefix with its `s3` source (docs/serving.md, which cites LoRAX's lines).
//!
//! LoRAX splits an adapter id on `/` into exactly one or two parts (`repo` or `repo/version`),
//! so a repo cannot hold a slash: Quiver's `owner/name` is written `owner--name` (split at the
//! first `--`) or `owner%2Fname`. The version is any Quiver ref (number, `vN`, alias, `main`,
//! revision). Tokens follow the API's rules (`Caller`: an invalid token is 401; an empty one,
//! which LoRAX sends without a token, is anonymous: [`PbaseCaller`]); an adapter the
//! caller may not see is 404 like a missing one.
//!
//! - `GET /v2/repos/{repo}/version/{version}` → `{"status": "completed", "adapterPath":
//!   "s3://bucket/<prefix>/exports/<revision>", …}`.
//! - `GET /v1/models/version/name/{repo}[?version=V]` (what LoRAX asks for an id without a
//!   version, and after any failure of the v2 lookup) → `{"uuid": bucket, "bestRunID":
//!   "<prefix>/exports/v1/<revision>", …}`, which LoRAX turns into the key prefix
//!   `{uuid}/{bestRunID}/artifacts/model/model_weights/` (bucket = its first part when
//!   `PREDIBASE_MODEL_BUCKET` is unset).

use std::future::Future;
use std::pin::Pin;

use actix_web::dev::Payload;
use actix_web::http::header::AUTHORIZATION;
use actix_web::{FromRequest, HttpRequest, HttpResponse, web};
use quiver_store::VersionRecord;
use serde::Deserialize;
use serde_json::json;

use crate::app::exports::{self, Layout};
use crate::app::lookup::{find_adapter, find_version};
use crate::auth::Caller;
use crate::error::{ApiError, ErrorCode};
use crate::http::extract::{self, ForeignTokens};
use crate::state::AppState;

/// The routes, for the route table's 405 answers (`RouteTable::with_routes`).
pub const ROUTES: &[(&str, &[&str])] = &[
    ("/v2/repos/{repo}/version/{version}", &["GET"]),
    ("/v1/models/version/name/{repo}", &["GET"]),
];

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route(ROUTES[0].0, web::get().to(version_v2))
        .route(ROUTES[1].0, web::get().to(version_legacy));
}

/// The caller of a pbase lookup: the API's rules (`Caller`), except that an empty bearer token
/// (`Authorization: Bearer `, which LoRAX sends when a request carried no `api_token`: it formats
/// `f"Bearer {api_token}"` with `""`) is anonymous, so that public adapters load without one.
pub struct PbaseCaller(pub Caller);

impl FromRequest for PbaseCaller {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, Self::Error>>>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let empty_bearer = req
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("bearer"));
        if empty_bearer {
            return Box::pin(async { Ok(PbaseCaller(Caller(None))) });
        }
        let caller = extract::caller(req, ForeignTokens::Refused);
        Box::pin(async move { Ok(PbaseCaller(caller.await?)) })
    }
}

/// Longest ref accepted (an alias, a revision); anything longer names no version.
const MAX_REF_LEN: usize = 128;

/// `owner--name` or `owner/name` (`owner%2Fname` decoded) → `(owner, name)`. Anything else
/// names no adapter (404).
pub fn split_repo(repo: &str) -> Result<(String, String), ApiError> {
    let decoded = repo.replace("%2F", "/").replace("%2f", "/");
    let split = decoded.split_once('/').or_else(|| decoded.split_once("--"));
    match split {
        Some((owner, name)) if !owner.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok((owner.to_string(), name.to_string()))
        }
        _ => Err(ApiError::not_found(
            ErrorCode::AdapterNotFound,
            format!("adapter {repo:?} (write owner/name as owner--name or owner%2Fname)"),
        )),
    }
}

async fn resolve(
    state: &AppState,
    caller: &Caller,
    repo: &str,
    reference: &str,
) -> Result<(String, VersionRecord), ApiError> {
    let (owner, name) = split_repo(repo)?;
    if reference.is_empty() || reference.len() > MAX_REF_LEN {
        // An adapter the caller may not see is 404 `adapter_not_found`, as for any other ref.
        let adapter = find_adapter(&state.store, caller, &(owner, name)).await?;
        return Err(ApiError::not_found(
            ErrorCode::VersionNotFound,
            format!("version of {}", adapter.repo_id()),
        ));
    }
    let (adapter, version) = find_version(state, caller, &owner, &name, reference).await?;
    Ok((adapter.repo_id(), version))
}

/// What LoRAX's pbase source reads of a version's status: `completed` for a ready version; a
/// status in its set of known non-final ones (`pending`) makes it refuse the adapter as not
/// ready yet, and `errored` (final, no `adapterPath`) as not available.
fn pbase_status(state: &str) -> &'static str {
    match state {
        "ready" => "completed",
        "pending" => "pending",
        _ => "errored",
    }
}

/// `GET /v2/repos/{repo}/version/{version}`: the version's export prefix (written on first
/// request) as `adapterPath`, with `status`.
async fn version_v2(
    state: web::Data<AppState>,
    PbaseCaller(caller): PbaseCaller,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (repo, reference) = path.into_inner();
    let (adapter, version) = resolve(&state, &caller, &repo, &reference).await?;
    let status = pbase_status(&version.state);
    let mut body = json!({
        "status": status,
        "repo": repo,
        "adapter": adapter,
        "version": version.number,
        "revision": version.revision,
    });
    if status == "completed" {
        let location = exports::ensure(&state.store, &version, Layout::Flat).await?;
        body["adapterPath"] = location.url().into();
    }
    Ok(HttpResponse::Ok().json(body))
}

#[derive(Deserialize)]
pub struct LegacyQuery {
    pub version: Option<String>,
}

/// `GET /v1/models/version/name/{repo}[?version=V]` (no version: `main`): the legacy lookup's
/// `uuid` and `bestRunID`, pointing at the version's export in the legacy layout.
async fn version_legacy(
    state: web::Data<AppState>,
    PbaseCaller(caller): PbaseCaller,
    path: web::Path<String>,
    query: web::Query<LegacyQuery>,
) -> Result<HttpResponse, ApiError> {
    let repo = path.into_inner();
    let reference = query.into_inner().version.unwrap_or_else(|| "main".into());
    let (adapter, version) = resolve(&state, &caller, &repo, &reference).await?;
    if version.state != "ready" {
        return Err(ApiError::coded(
            ErrorCode::Conflict,
            format!(
                "version {} of {adapter} is {}, not ready",
                version.number, version.state
            ),
        ));
    }
    let location = exports::ensure(&state.store, &version, Layout::PbaseLegacy).await?;
    // LoRAX reads `{uuid}/{bestRunID}/artifacts/model/model_weights/`: bucket first, then the
    // key prefix without the fixed tail.
    let best_run = location
        .key
        .strip_suffix("/artifacts/model/model_weights")
        .unwrap_or(&location.key)
        .to_string();
    Ok(HttpResponse::Ok().json(json!({
        "uuid": location.bucket,
        "bestRunID": best_run,
        "status": "completed",
        "adapterPath": location.url(),
        "repo": repo,
        "adapter": adapter,
        "version": version.number,
        "revision": version.revision,
    })))
}

#[cfg(test)]
mod tests {
    use super::split_repo;

    #[test]
    fn repos_are_owner_dash_dash_name_or_an_encoded_slash() {
        let ok = |r: &str| split_repo(r).ok();
        let pair = |o: &str, n: &str| Some((o.to_string(), n.to_string()));
        assert_eq!(ok("alice--chat-lora"), pair("alice", "chat-lora"));
        // Split at the first `--`: the name may hold more.
        assert_eq!(ok("alice--chat--v2"), pair("alice", "chat--v2"));
        assert_eq!(ok("alice%2Fchat--v2"), pair("alice", "chat--v2"));
        assert_eq!(ok("alice%2fchat"), pair("alice", "chat"));
        assert_eq!(ok("alice/chat"), pair("alice", "chat"));
        for bad in ["alice", "--chat", "alice--", "alice/", "/chat", "a/b/c", ""] {
            assert_eq!(ok(bad), None, "{bad:?}");
        }
    }
}
