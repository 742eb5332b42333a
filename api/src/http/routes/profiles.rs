//! A version's routing profile: read it, have it recomputed from its samples (or model card), or
//! upload one.

use actix_web::{HttpResponse, get, post, web};
use quiver_retrieve::{checked_vector, encode_vectors};
use quiver_store::{CARD_FILE, NewProfile, ProfileInfo, ProfileSource, SAMPLES_FILE};
use serde::Deserialize;
use serde_json::Value;
use utoipa::ToSchema;

use crate::app::lookup::find_version;
use crate::app::resources::{JobView, ProfileView};
use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody, ErrorCode};
use crate::jobs::embed::{EmbedSource, EmbedSpec};
use crate::routing::reconcile::enqueue_embed;
use crate::state::AppState;

/// The body of `POST …/profile`: empty to recompute from `samples.jsonl` (or, without it, the
/// model card `README.md`), or a vector.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProfileRequest {
    /// A profile vector to store instead of computing one (normalised here).
    pub vector: Option<Vec<f32>>,
    /// The embedder `vector` belongs to (default: this server's). Only profiles of one embedder
    /// are ever searched together.
    pub embedder: Option<String>,
}

/// A version's routing profile (without its vectors).
#[utoipa::path(
    tag = "routing",
    params(("owner" = String, Path), ("name" = String, Path), ("ref" = String, Path)),
    responses((status = 200, body = ProfileView), (status = 404, body = ErrorBody)),
    security((), ("bearer" = []))
)]
#[get("/adapters/{owner}/{name}/versions/{ref}/profile")]
pub async fn get_profile(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<(String, String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (owner, name, reference) = path.into_inner();
    let (adapter, version) = find_version(&state, &caller, &owner, &name, &reference).await?;
    let info = state
        .store
        .meta
        .profile_info(version.id)
        .await?
        .ok_or_else(|| {
            ApiError::not_found(
                ErrorCode::ProfileNotFound,
                format!(
                    "a profile of {} version {}",
                    adapter.repo_id(),
                    version.number
                ),
            )
        })?;
    Ok(HttpResponse::Ok().json(view(&state, info)))
}

/// Recompute a version's profile from its `samples.jsonl`, or without one from its model card
/// (`README.md`) (empty body: queues an `embed` job, 202), or store an uploaded profile vector
/// (`{"vector": [...], "embedder"?}`: 200).
#[utoipa::path(
    tag = "routing",
    params(("owner" = String, Path), ("name" = String, Path), ("ref" = String, Path)),
    request_body(content = Option<ProfileRequest>, content_type = "application/json"),
    responses(
        (status = 200, body = ProfileView, description = "the uploaded vector was stored"),
        (status = 202, body = JobView, description = "an embed job was queued"),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 422, body = ErrorBody),
        (status = 503, body = ErrorBody, description = "no embedder to compute (or check) a profile with")
    ),
    security(("bearer" = []))
)]
#[post("/adapters/{owner}/{name}/versions/{ref}/profile")]
pub async fn post_profile(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<(String, String, String)>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let (owner, name, reference) = path.into_inner();
    let (adapter, version) = find_version(&state, &caller, &owner, &name, &reference).await?;
    let principal = caller.require_write(&adapter.owner, &adapter.name)?;
    let request: ProfileRequest = if body.iter().all(u8::is_ascii_whitespace) {
        ProfileRequest::default()
    } else {
        let value: Value = serde_json::from_slice(&body).map_err(|e| {
            ApiError::coded(
                ErrorCode::InvalidJson,
                format!("the JSON body is not valid: {e}"),
            )
        })?;
        serde_json::from_value(value)
            .map_err(|e| ApiError::coded(ErrorCode::InvalidVector, e.to_string()))?
    };
    let own = state.routing.options.embedder.as_ref();
    match request.vector {
        Some(vector) => {
            let (embedder, dim) = match (request.embedder, own) {
                (Some(id), Some(b)) if id == b.embedder().id() => (id, b.embedder().dim()),
                (None, Some(b)) => (b.embedder().id().to_string(), b.embedder().dim()),
                (Some(id), _) => {
                    let dim = vector.len();
                    (id, dim)
                }
                (None, None) => {
                    return Err(ApiError::coded(
                        ErrorCode::InvalidVector,
                        "this server has no embedder: name the one the vector belongs to in `embedder`",
                    ));
                }
            };
            if embedder.is_empty() || embedder.len() > 200 {
                return Err(ApiError::coded(
                    ErrorCode::InvalidVector,
                    "`embedder` must be 1 to 200 characters",
                ));
            }
            let vector = checked_vector(&vector, dim)
                .map_err(|e| ApiError::coded(ErrorCode::InvalidVector, format!("vector: {e}")))?;
            let profile = NewProfile {
                embedder,
                dim: dim as i64,
                count: 1,
                source: ProfileSource::Uploaded,
                samples_sha256: None,
                vectors: encode_vectors(&[vector]),
                terms: None,
            };
            state.store.meta.put_profile(version.id, &profile).await?;
            let info = state
                .store
                .meta
                .profile_info(version.id)
                .await?
                .ok_or_else(|| ApiError::internal("profile", "stored profile not found"))?;
            Ok(HttpResponse::Ok().json(view(&state, info)))
        }
        None => {
            let batcher = own.ok_or_else(|| {
                ApiError::coded(
                    ErrorCode::EmbedderUnavailable,
                    "this server has no embedder to compute profiles with: start it with --embedder-dir (QUIVER_EMBEDDER_DIR), or upload a `vector`",
                )
            })?;
            // Samples win over the card; the card of a version made by a job is Quiver's own
            // (the recipe, not the task) and is not used.
            let (file, source) = version
                .files
                .iter()
                .find(|f| f.path == SAMPLES_FILE)
                .map(|f| (f, EmbedSource::Samples))
                .or_else(|| {
                    version
                        .files
                        .iter()
                        .find(|f| f.path == CARD_FILE && version.lineage.is_none())
                        .map(|f| (f, EmbedSource::Card))
                })
                .ok_or_else(|| {
                    ApiError::coded(
                        ErrorCode::NoSamples,
                        format!(
                            "{} version {} has no {SAMPLES_FILE} (or model card, {CARD_FILE}) to compute a profile from",
                            adapter.repo_id(),
                            version.number
                        ),
                    )
                })?;
            let spec = EmbedSpec {
                version_id: version.id,
                version: quiver_store::ParentVersion {
                    adapter: adapter.repo_id(),
                    version: version.number,
                    revision: version.revision.clone(),
                },
                samples_sha256: file.sha256.clone(),
                embedder: batcher.embedder().id().to_string(),
                source,
            };
            let (job, _) = enqueue_embed(&state.store, &spec, &principal.user, None).await?;
            state.job_wake.notify_waiters();
            Ok(HttpResponse::Accepted().json(crate::app::jobs::job_view(&state.store, job).await?))
        }
    }
}

fn view(state: &AppState, info: ProfileInfo) -> ProfileView {
    let current = state
        .routing
        .options
        .embedder_id()
        .map(|id| id == info.embedder);
    ProfileView::new(info, current)
}
