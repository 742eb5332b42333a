//! Adapters: create, list and search, get, update, delete.

use actix_web::http::header::{self, ContentType};
use actix_web::{HttpRequest, HttpResponse, delete, patch, post, route, web};
use quiver_store::{AdapterPatch, NewAdapter, RepoId};
use serde::Deserialize;
use utoipa::ToSchema;

use crate::app::adapters::{
    ListAdaptersQuery, MAX_BASE_MODEL_LEN, cache_key, cached_page, check_description, check_tags,
    delete, list_json, list_query, view,
};
use crate::app::lookup::{find_adapter, find_writable_adapter, repo_from_path};
use crate::app::resources::{AdapterPage, AdapterView};
use crate::auth::Caller;
use crate::conditional::etag_matches;
use crate::error::{ApiError, ErrorBody, ErrorCode};
use crate::http::request_info::RequestInfo;
use crate::state::AppState;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateAdapterRequest {
    pub owner: String,
    pub name: String,
    /// The base model the adapter was trained on, e.g. `meta-llama/Llama-3.1-8B`.
    pub base_model: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub private: bool,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchAdapterRequest {
    pub description: Option<String>,
    pub tags: Option<Vec<String>>,
    pub private: Option<bool>,
}

/// Create an adapter (no versions yet).
#[utoipa::path(
    tag = "adapters",
    request_body = CreateAdapterRequest,
    responses(
        (status = 201, body = AdapterView),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)
    ),
    security(("bearer" = []))
)]
#[post("/adapters")]
pub async fn create_adapter(
    state: web::Data<AppState>,
    caller: Caller,
    info: RequestInfo,
    body: web::Json<CreateAdapterRequest>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let repo = RepoId::parse(&body.owner, &body.name)
        .map_err(|e| ApiError::coded(ErrorCode::InvalidName, e.to_string()))?;
    caller.require_write(&repo.owner, &repo.name)?;
    let base_model = body.base_model.trim().to_string();
    if base_model.is_empty()
        || base_model.len() > MAX_BASE_MODEL_LEN
        || base_model.chars().any(char::is_control)
    {
        return Err(ApiError::coded(
            ErrorCode::InvalidBaseModel,
            format!("base_model must be 1 to {MAX_BASE_MODEL_LEN} printable characters"),
        ));
    }
    check_tags(&body.tags)?;
    check_description(&body.description)?;
    let entry = crate::app::audit::adapter_audit(
        &info.audit(caller.0.as_ref()),
        quiver_store::AuditAction::AdapterCreate,
        &repo.owner,
        &repo.name,
        None,
        Some(crate::app::audit::adapter_state(
            &body.description,
            body.private,
            &base_model,
            &body.tags,
        )),
    );
    let created = state
        .store
        .meta
        .create_adapter_audited(
            &NewAdapter {
                repo,
                base_model,
                description: body.description,
                tags: body.tags,
                private: body.private,
            },
            Some(&entry),
        )
        .await?;
    Ok(HttpResponse::Created().json(view(&state.store, &caller.viewer(), created).await?))
}

/// List and search adapters the caller can see.
///
/// Pages are cached per caller and query, and served while nothing they show has changed (see
/// `list_cache`); every answer carries an `ETag`, and `If-None-Match` gets a 304.
#[utoipa::path(
    tag = "adapters",
    params(ListAdaptersQuery),
    responses(
        (status = 200, body = AdapterPage),
        (status = 304, description = "If-None-Match matched the ETag"),
        (status = 400, body = ErrorBody)
    )
)]
#[route("/adapters", method = "GET", method = "HEAD")]
pub async fn list_adapters(
    req: HttpRequest,
    state: web::Data<AppState>,
    caller: Caller,
    query: web::Query<ListAdaptersQuery>,
) -> Result<HttpResponse, ApiError> {
    let list = list_query(query.into_inner())?;
    let viewer = caller.viewer();
    let key = cache_key(&viewer, &list);
    let page = cached_page(&state, &key, async || {
        list_json(&state, &viewer, &list).await
    })
    .await?;
    if etag_matches(&req, &page.etag) {
        return Ok(HttpResponse::NotModified()
            .insert_header((header::ETAG, page.etag))
            .finish());
    }
    Ok(HttpResponse::Ok()
        .content_type(ContentType::json())
        .insert_header((header::ETAG, page.etag))
        .body(page.body))
}

/// One adapter with its refs and latest version.
#[utoipa::path(
    tag = "adapters",
    responses((status = 200, body = AdapterView), (status = 404, body = ErrorBody))
)]
#[route("/adapters/{owner}/{name}", method = "GET", method = "HEAD")]
pub async fn get_adapter(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let adapter = find_adapter(&state.store, &caller, &path).await?;
    Ok(HttpResponse::Ok().json(view(&state.store, &caller.viewer(), adapter).await?))
}

/// Change description, tags or visibility.
#[utoipa::path(
    tag = "adapters",
    request_body = PatchAdapterRequest,
    responses((status = 200, body = AdapterView), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = []))
)]
#[patch("/adapters/{owner}/{name}")]
pub async fn patch_adapter(
    state: web::Data<AppState>,
    caller: Caller,
    info: RequestInfo,
    path: web::Path<(String, String)>,
    body: web::Json<PatchAdapterRequest>,
) -> Result<HttpResponse, ApiError> {
    let (adapter, who) = find_writable_adapter(&state.store, &caller, &path).await?;
    let ctx = info.audit(Some(who));
    let body = body.into_inner();
    if let Some(tags) = &body.tags {
        check_tags(tags)?;
    }
    if let Some(d) = &body.description {
        check_description(d)?;
    }
    let patch = AdapterPatch {
        description: body.description,
        tags: body.tags,
        private: body.private,
        base_model: None,
    };
    let after = crate::app::audit::adapter_state(
        patch.description.as_deref().unwrap_or(&adapter.description),
        patch.private.unwrap_or(adapter.private),
        &adapter.base_model,
        patch.tags.as_deref().unwrap_or(&adapter.tags),
    );
    let entry = crate::app::audit::adapter_audit(
        &ctx,
        quiver_store::AuditAction::AdapterUpdate,
        &adapter.owner,
        &adapter.name,
        Some(crate::app::audit::adapter_record_state(&adapter)),
        Some(after),
    );
    state
        .store
        .meta
        .update_adapter_audited(adapter.id, &patch, Some(&entry))
        .await?;
    let repo = repo_from_path(&path)?;
    let updated = state.store.meta.get_adapter(&repo).await?.ok_or_else(|| {
        ApiError::not_found(ErrorCode::AdapterNotFound, format!("adapter {repo}"))
    })?;
    crate::events::adapter_updated(&state.store, &adapter, &updated).await;
    Ok(HttpResponse::Ok().json(view(&state.store, &caller.viewer(), updated).await?))
}

/// Delete an adapter with all its versions and refs.
#[utoipa::path(
    tag = "adapters",
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = []))
)]
#[delete("/adapters/{owner}/{name}")]
pub async fn delete_adapter(
    state: web::Data<AppState>,
    caller: Caller,
    info: RequestInfo,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (adapter, who) = find_writable_adapter(&state.store, &caller, &path).await?;
    delete(&state, &adapter, who, &info.audit(Some(who))).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Move an adapter to another namespace (a user or an organisation), keeping its versions,
/// revisions (so Hub clients pinned to one keep resolving it), aliases and lineage. The caller
/// must administer both namespaces. Links to the old name stop working.
#[utoipa::path(
    tag = "adapters",
    request_body = crate::app::orgs::TransferRequest,
    responses(
        (status = 200, body = AdapterView), (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)
    ),
    security(("bearer" = []))
)]
#[post("/adapters/{owner}/{name}/transfer")]
pub async fn transfer_adapter(
    state: web::Data<AppState>,
    caller: Caller,
    info: RequestInfo,
    path: web::Path<(String, String)>,
    body: web::Json<crate::app::orgs::TransferRequest>,
) -> Result<HttpResponse, ApiError> {
    let (adapter, who) = find_writable_adapter(&state.store, &caller, &path).await?;
    let ctx = info.audit(Some(who));
    let to = crate::app::orgs::transfer(&state, who, &adapter, &body.to, &ctx).await?;
    let moved =
        state.store.meta.get_adapter(&to).await?.ok_or_else(|| {
            ApiError::not_found(ErrorCode::AdapterNotFound, format!("adapter {to}"))
        })?;
    Ok(HttpResponse::Ok().json(view(&state.store, &caller.viewer(), moved).await?))
}
