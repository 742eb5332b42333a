//! Merge and compression jobs: submit (`POST /merges`, `POST /compressions`), list, get, cancel.

use actix_web::{HttpResponse, get, post, web};
use quiver_store::{JobFilter, JobKind, JobState};
use serde::Deserialize;
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use crate::app::jobs::{own_job, queue_job};
use crate::app::lookup::page_limit;
use crate::app::resources::{JobPage, JobView};
use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody};
use crate::http::extract::Authenticated;
use crate::jobs::spec;
use crate::state::AppState;

/// The body of `POST /merges`, for the API docs (the handler reads the JSON itself: the method's
/// parameters are the engine's `MergeSpec`, and unknown fields are refused).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct MergeRequest {
    /// cat, linear (task_arithmetic), svd, ties, dare_linear, dare_ties, magnitude_prune,
    /// lora_lego, ziplora; with `compat: peft` also ties_svd, dare_linear_svd, dare_ties_svd,
    /// magnitude_prune_svd.
    method: String,
    /// `paper` (default) or `peft` (PEFT add_weighted_adapter's arithmetic).
    compat: Option<String>,
    /// One per input (default 1 each); or give `inputs[].weight`. Finite, |w| ≤ 1e6.
    weights: Option<Vec<f64>>,
    /// Fraction of entries kept (ties default 0.2; dare_* and magnitude_prune need it), in (0, 1].
    #[schema(exclusive_minimum = 0, maximum = 1)]
    density: Option<f64>,
    /// Output rank of truncating methods (default: the largest input rank); at most 65536.
    #[schema(minimum = 1, maximum = 65536)]
    rank: Option<u32>,
    /// Seed of DARE masks, randomized SVD sketches, LEGO and ZipLoRA (default 0).
    seed: Option<u64>,
    /// Final scale of ties and dare_ties; finite, |λ| ≤ 1e6.
    #[schema(minimum = -1000000, maximum = 1000000)]
    lambda: Option<f64>,
    /// `total` (default) or `frequency`.
    majority_sign: Option<String>,
    /// `module` (default) or `global`.
    trim_scope: Option<String>,
    /// `auto` (default), `exact` or `randomized`.
    svd: Option<String>,
    /// `f32`, `f16` or `bf16` (default: the first input's).
    dtype: Option<String>,
    /// lora_lego: clusters (= output rank); at most 65536.
    #[schema(minimum = 1, maximum = 65536)]
    k: Option<u32>,
    /// lora_lego: k-means iterations at most (default 20; at most 10000).
    #[schema(minimum = 0, maximum = 10000)]
    iters: Option<u32>,
    /// lora_lego: rescale centroids to their members' norm (default true).
    param_reweight: Option<bool>,
    /// lora_lego: scale the output by √(r/k) (default true).
    output_reweight: Option<bool>,
    /// ziplora: weight of the column-overlap penalty (default 0.01), in [0, 1e6].
    #[schema(minimum = 0, maximum = 1000000)]
    lambda_sim: Option<f64>,
    /// ziplora: Adam steps (default 200; at most 100000).
    #[schema(minimum = 1, maximum = 100000)]
    steps: Option<u32>,
    /// ziplora: Adam learning rate (default 0.01), in (0, 10].
    #[schema(exclusive_minimum = 0, maximum = 10)]
    lr: Option<f64>,
    /// At most 64 inputs per job.
    #[schema(max_items = 64)]
    inputs: Vec<crate::app::job_request::InputRequest>,
    output: spec::OutputRequest,
    /// The same key and body again return the same job; another body with it is a 409.
    idempotency_key: Option<String>,
}

/// The body of `POST /compressions`, for the API docs (the parameters are the engine's
/// `CompressSpec`).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct CompressionRequest {
    /// `individual` (one input, `rank` or `energy`), `joint` (a collection: `rank`, `diag`,
    /// `clusters`, `iters`, `seed`) or `extract` (`member` of the one input, a collection).
    mode: String,
    /// individual: the output rank; joint: the shared rank c. At most 65536.
    #[schema(minimum = 1, maximum = 65536)]
    rank: Option<u32>,
    /// individual: the smallest rank keeping this fraction of each module's energy, in (0, 1].
    #[schema(exclusive_minimum = 0, maximum = 1)]
    energy: Option<f64>,
    /// joint: diagonal per-member cores.
    diag: Option<bool>,
    /// joint: clusters, each with its own bases (default 1; at most 1024).
    #[schema(minimum = 1, maximum = 1024)]
    clusters: Option<u32>,
    /// joint: alternating iterations at most (default 50; at most 10000).
    #[schema(minimum = 1, maximum = 10000)]
    iters: Option<u32>,
    seed: Option<u64>,
    /// extract: the member's name or index.
    member: Option<String>,
    /// At most 64 inputs per job.
    #[schema(max_items = 64)]
    inputs: Vec<crate::app::job_request::InputRequest>,
    output: spec::OutputRequest,
    idempotency_key: Option<String>,
}

async fn submit(
    state: &AppState,
    caller: &Caller,
    kind: JobKind,
    body: Value,
) -> Result<HttpResponse, ApiError> {
    let (job, created) = queue_job(state, caller, kind, body).await?;
    if created {
        Ok(HttpResponse::Accepted().json(JobView::from(job)))
    } else {
        Ok(HttpResponse::Ok().json(JobView::from(job)))
    }
}

/// Queue a merge of stored adapters into a new version: `method` and its parameters (as
/// `quiver merge` takes them), `inputs` by reference, `output`, `idempotency_key`.
#[utoipa::path(
    tag = "jobs",
    request_body = MergeRequest,
    responses(
        (status = 202, body = JobView, description = "queued"),
        (status = 200, body = JobView, description = "the job this idempotency key already made"),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)
    ),
    security(("bearer" = []))
)]
#[post("/merges")]
pub async fn create_merge(
    state: web::Data<AppState>,
    caller: Caller,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    submit(&state, &caller, JobKind::Merge, body.into_inner()).await
}

/// Queue a compression: `mode` (`individual`, `joint`, `extract`) and its parameters, `inputs`,
/// `output`, `idempotency_key`.
#[utoipa::path(
    tag = "jobs",
    request_body = CompressionRequest,
    responses(
        (status = 202, body = JobView), (status = 200, body = JobView),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)
    ),
    security(("bearer" = []))
)]
#[post("/compressions")]
pub async fn create_compression(
    state: web::Data<AppState>,
    caller: Caller,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    submit(&state, &caller, JobKind::Compress, body.into_inner()).await
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListJobsQuery {
    /// `queued`, `running`, `succeeded`, `failed` or `cancelled`.
    #[param(value_type = Option<String>)]
    pub state: Option<JobState>,
    /// `merge` or `compress`.
    #[param(value_type = Option<String>)]
    pub kind: Option<JobKind>,
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

/// The caller's jobs, newest first (an admin sees everyone's).
#[utoipa::path(
    tag = "jobs",
    params(ListJobsQuery),
    responses((status = 200, body = JobPage), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)),
    security(("bearer" = []))
)]
#[get("/jobs")]
pub async fn list_jobs(
    state: web::Data<AppState>,
    caller: Caller,
    query: web::Query<ListJobsQuery>,
) -> Result<HttpResponse, ApiError> {
    let viewer = caller.viewer();
    let user = viewer.user.clone().ok_or_else(ApiError::unauthorized)?;
    let q = query.into_inner();
    let page = state
        .store
        .meta
        .list_jobs(&JobFilter {
            created_by: (!viewer.admin).then_some(user),
            state: q.state,
            kind: q.kind,
            limit: page_limit(q.limit)?,
            cursor: q.cursor,
        })
        .await?;
    Ok(HttpResponse::Ok().json(JobPage {
        items: page.items.into_iter().map(JobView::from).collect(),
        next_cursor: page.next_cursor,
    }))
}

/// State, progress, error, result and report of a job.
#[utoipa::path(
    tag = "jobs",
    responses((status = 200, body = JobView), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = []))
)]
#[get("/jobs/{id}")]
pub async fn get_job(
    state: web::Data<AppState>,
    caller: Authenticated,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = path.into_inner();
    let job = own_job(&caller.viewer(), state.store.meta.get_job(&id).await?, &id)?;
    Ok(HttpResponse::Ok().json(JobView::from(job)))
}

/// Cancel a job: a queued one never starts; a running one stops at its next module and
/// publishes nothing. An ended job is returned unchanged.
#[utoipa::path(
    tag = "jobs",
    responses((status = 200, body = JobView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = []))
)]
#[post("/jobs/{id}/cancel")]
pub async fn cancel_job(
    state: web::Data<AppState>,
    caller: Authenticated,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = path.into_inner();
    let job = own_job(&caller.viewer(), state.store.meta.get_job(&id).await?, &id)?;
    if caller.0.scope == quiver_store::Scope::Read {
        return Err(ApiError::forbidden(
            "this token has the read scope; cancelling needs a write token",
        ));
    }
    let job = state.store.meta.cancel_job(&job.id).await?.unwrap_or(job);
    tracing::info!(job = %job.id, state = job.state.as_str(), cancel_requested = job.cancel_requested, "job cancel asked");
    Ok(HttpResponse::Ok().json(JobView::from(job)))
}

#[cfg(test)]
mod tests {
    use quiver_merge::compress::spec::{MAX_CLUSTERS, MAX_JOINT_ITERS};
    use quiver_merge::spec::{
        MAX_LAMBDA_SIM, MAX_LEGO_ITERS, MAX_LR, MAX_RANK, MAX_WEIGHT, MAX_ZIP_STEPS,
    };
    use serde_json::Value;
    use utoipa::PartialSchema;

    use super::{CompressionRequest, MergeRequest};

    fn properties<T: PartialSchema>() -> Value {
        serde_json::to_value(T::schema()).expect("schema")["properties"].clone()
    }

    /// The limits the API documents are the engine's (the schema attributes take literals only).
    #[test]
    fn documented_limits_are_the_engine_s() {
        let merge = properties::<MergeRequest>();
        let max = |p: &Value, f: &str| p[f]["maximum"].as_f64().unwrap_or(f64::NAN);
        assert_eq!(max(&merge, "steps"), MAX_ZIP_STEPS as f64);
        assert_eq!(max(&merge, "iters"), MAX_LEGO_ITERS as f64);
        assert_eq!(max(&merge, "rank"), MAX_RANK as f64);
        assert_eq!(max(&merge, "k"), MAX_RANK as f64);
        assert_eq!(max(&merge, "lr"), MAX_LR);
        assert_eq!(max(&merge, "lambda_sim"), MAX_LAMBDA_SIM);
        assert_eq!(max(&merge, "lambda"), MAX_WEIGHT);
        assert_eq!(
            merge["inputs"]["maxItems"].as_u64(),
            Some(crate::jobs::spec::MAX_INPUTS as u64)
        );
        let compress = properties::<CompressionRequest>();
        assert_eq!(max(&compress, "iters"), MAX_JOINT_ITERS as f64);
        assert_eq!(max(&compress, "clusters"), MAX_CLUSTERS as f64);
        assert_eq!(max(&compress, "rank"), MAX_RANK as f64);
    }
}
