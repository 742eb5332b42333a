//! The Hub's write path for repos (clients with `HF_HUB_DISABLE_XET=1`): create and delete
//! repos, YAML validation, preupload and tags. LFS uploads are `lfs`, NDJSON commits `commit`.

use actix_web::{HttpRequest, HttpResponse, web};
use quiver_store::{NewAdapter, RepoId, VersionRef};
use serde::Deserialize;
use serde_json::json;

use super::{git_oid, invalid, is_lfs, origin};
use crate::app::lookup::find_writable_adapter;
use crate::auth::Caller;
use crate::error::{ApiError, ErrorCode};
use crate::http::extract::Authenticated;
use crate::state::AppState;
use crate::upload::check_path;

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
    caller.require_write(&repo.owner, &repo.name)?;
    let private = body.private.unwrap_or(false) || body.visibility.as_deref() == Some("private");
    let url = format!("{}/{repo}", origin(&req));
    if state.store.meta.get_adapter(&repo).await?.is_some() {
        return Ok(HttpResponse::Conflict().json(json!({
            "error": format!("You already created this model repo: {repo}"),
            "url": url,
        })));
    }
    let entry = crate::app::audit::adapter_audit(
        &crate::http::request_info::RequestInfo::of(&req).audit(Some(&caller.0)),
        quiver_store::AuditAction::AdapterCreate,
        &repo.owner,
        &repo.name,
        None,
        Some(crate::app::audit::adapter_state("", private, "", &[])),
    );
    state
        .store
        .meta
        .create_adapter_audited(
            &NewAdapter {
                repo,
                base_model: String::new(),
                description: String::new(),
                tags: Vec::new(),
                private,
            },
            Some(&entry),
        )
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
    info: crate::http::request_info::RequestInfo,
    body: web::Json<DeleteRepo>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let user = caller
        .0
        .as_ref()
        .map(|p| p.user.clone())
        .unwrap_or_default();
    let path = repo_path(body.organization, body.name, user);
    let (adapter, who) = find_writable_adapter(&state.store, &caller, &path).await?;
    crate::app::adapters::delete(&state, &adapter, who, &info.audit(Some(who))).await?;
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

#[derive(Deserialize)]
pub struct TagBody {
    tag: String,
}

/// `POST /api/models/{repo}/tag/{rev}`: an alias for that version.
pub async fn tag(
    state: web::Data<AppState>,
    caller: Caller,
    info: crate::http::request_info::RequestInfo,
    path: web::Path<(String, String, String)>,
    body: web::Json<TagBody>,
) -> Result<HttpResponse, ApiError> {
    let (owner, name, rev) = path.into_inner();
    let (adapter, who) = find_writable_adapter(&state.store, &caller, &(owner, name)).await?;
    let ctx = info.audit(Some(who));
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
    // A protected alias needs an admin of the namespace: 403 `alias_protected`, which the Hub
    // client raises as an HTTP error with the message.
    crate::app::refs::set_alias(&state.store, &adapter, &alias, version.number, who, &ctx).await?;
    Ok(HttpResponse::Ok().json(json!({"name": alias, "targetCommit": version.revision})))
}
