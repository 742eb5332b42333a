//! Versions: upload (multipart), list, get by number, `v{N}`, alias, `main` or revision.

use actix_multipart::Multipart;
use actix_web::http::header::CONTENT_LENGTH;
use actix_web::{HttpRequest, HttpResponse, post, route, web};
use quiver_store::{FileRecord, NewVersion};
use serde::Deserialize;
use utoipa::IntoParams;

use crate::app::lookup::{find_adapter, find_version, find_writable_adapter, page_limit};
use crate::app::redact::Parents;
use crate::app::resources::{VersionPage, VersionView};
use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody};
use crate::publish::{Held, Target, publish_version_audited};
use crate::state::AppState;
use crate::upload::{Received, receive};

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListVersionsQuery {
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

/// Upload a new version: `multipart/form-data`, one part per file, the part's filename being the
/// file's path. Must hold `adapter_config.json` and `adapter_model.safetensors`.
#[utoipa::path(
    tag = "versions",
    request_body(content_type = "multipart/form-data", description = "one part per file; filename = path"),
    responses(
        (status = 201, body = VersionView),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 413, body = ErrorBody), (status = 415, body = ErrorBody),
        (status = 422, body = ErrorBody)
    ),
    security(("bearer" = []))
)]
#[post("/adapters/{owner}/{name}/versions")]
pub async fn create_version(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<(String, String)>,
    req: HttpRequest,
    multipart: Multipart,
) -> Result<HttpResponse, ApiError> {
    let (adapter, principal) = find_writable_adapter(&state.store, &caller, &path).await?;
    let limit = state.max_upload_bytes;
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ApiError::too_large(limit));
    }
    let blobs = &state.store.blobs;
    let mut received = Received::default();
    let checked = match receive(multipart, blobs, limit, &state.metrics, &mut received).await {
        Ok(()) => received.validate(),
        Err(e) => Err(e),
    };
    let lora = match checked {
        Ok(lora) => lora,
        Err(e) => {
            received.discard(blobs).await;
            return Err(e);
        }
    };
    for f in &received.files {
        if let Err(e) = blobs.commit(&f.staged).await {
            received.discard(blobs).await;
            return Err(e.into());
        }
    }
    let files: Vec<FileRecord> = received
        .files
        .iter()
        .map(|f| FileRecord {
            path: f.path.clone(),
            size: f.staged.size as i64,
            sha256: f.staged.sha256.clone(),
        })
        .collect();
    let new = NewVersion {
        created_by: principal.user.clone(),
        files,
        facets: crate::facets::of(Some(&lora), None),
        lora: Some(lora),
        lineage: None,
        parents: Vec::new(),
    };
    let staged: Vec<_> = received.files.iter().map(|f| &f.staged).collect();
    // If this fails, blobs already committed stay until the sweep: deleting them here could race
    // with a concurrent upload of identical content that is about to refer to them.
    let ctx = crate::http::request_info::RequestInfo::of(&req).audit(Some(principal));
    let published = publish_version_audited(
        &state.store,
        Target::Adapter(&adapter),
        &new,
        Held::Staged(&staged),
        Some(&ctx),
    )
    .await;
    received.discard(blobs).await;
    let (_, version) = published?;
    state.routing.version_published(&version.files);
    Ok(HttpResponse::Created().json(VersionView::new(version, &adapter, &Default::default())))
}

/// Versions of an adapter, newest first.
#[utoipa::path(
    tag = "versions",
    params(ListVersionsQuery),
    responses((status = 200, body = VersionPage), (status = 404, body = ErrorBody))
)]
#[route("/adapters/{owner}/{name}/versions", method = "GET", method = "HEAD")]
pub async fn list_versions(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<(String, String)>,
    query: web::Query<ListVersionsQuery>,
) -> Result<HttpResponse, ApiError> {
    let adapter = find_adapter(&state.store, &caller, &path).await?;
    let q = query.into_inner();
    let page = state
        .store
        .meta
        .list_versions(adapter.id, page_limit(q.limit)?, q.cursor.as_deref())
        .await?;
    let parents = Parents::of(&state.store, &caller.viewer(), &page.items).await?;
    Ok(HttpResponse::Ok().json(VersionPage {
        items: page
            .items
            .into_iter()
            .map(|v| VersionView::new(v, &adapter, &parents))
            .collect(),
        next_cursor: page.next_cursor,
    }))
}

/// One version: `ref` = number, `v{N}`, alias, `main` or 40-hex revision.
#[utoipa::path(
    tag = "versions",
    params(("ref" = String, Path, description = "number, v{N}, alias, main or revision")),
    responses((status = 200, body = VersionView), (status = 404, body = ErrorBody))
)]
#[route(
    "/adapters/{owner}/{name}/versions/{ref}",
    method = "GET",
    method = "HEAD"
)]
pub async fn get_version(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<(String, String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (owner, name, reference) = path.into_inner();
    let (adapter, version) = find_version(&state, &caller, &owner, &name, &reference).await?;
    let parents = Parents::of(&state.store, &caller.viewer(), [&version]).await?;
    Ok(HttpResponse::Ok().json(VersionView::new(version, &adapter, &parents)))
}
