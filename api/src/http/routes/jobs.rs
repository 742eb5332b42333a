//! Merge and compression jobs: submit (`POST /merges`, `POST /compressions`), list, get, cancel.

use actix_web::{HttpResponse, get, post, web};
use quiver_store::{JobFilter, JobKind, JobState};
use serde::Deserialize;
use serde_json::Value;
use utoipa::IntoParams;

use crate::app::job_request::{CompressionRequest, MergeRequest};
use crate::app::jobs::{job_view, job_views, own_job, queue_job_audited};
use crate::app::lookup::page_limit;
use crate::app::resources::{JobPage, JobView};
use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody};
use crate::http::extract::Authenticated;
use crate::http::request_info::RequestInfo;
use crate::state::AppState;

async fn submit(
    state: &AppState,
    caller: &Caller,
    info: &RequestInfo,
    kind: JobKind,
    body: Value,
) -> Result<HttpResponse, ApiError> {
    let ctx = info.audit(caller.0.as_ref());
    let (job, created) = queue_job_audited(state, caller, kind, body, Some(&ctx)).await?;
    let view = job_view(&state.store, job).await?;
    if created {
        Ok(HttpResponse::Accepted().json(view))
    } else {
        Ok(HttpResponse::Ok().json(view))
    }
}

/// Queue a merge of stored adapters into a new version: `method` and its parameters (as
/// `quiver merge` takes them), `inputs` by reference (objects, or `"owner/name@ref"` strings),
/// `output`, `idempotency_key`.
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
    info: RequestInfo,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    submit(&state, &caller, &info, JobKind::Merge, body.into_inner()).await
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
    info: RequestInfo,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    submit(&state, &caller, &info, JobKind::Compress, body.into_inner()).await
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
    caller: Authenticated,
    query: web::Query<ListJobsQuery>,
) -> Result<HttpResponse, ApiError> {
    let viewer = caller.viewer();
    let user = caller.0.user.clone();
    let q = query.into_inner();
    let page = state
        .store
        .meta
        .list_jobs(&JobFilter {
            created_by: (!viewer.sees_all()).then_some(user),
            state: q.state,
            kind: q.kind,
            limit: page_limit(q.limit)?,
            cursor: q.cursor,
        })
        .await?;
    Ok(HttpResponse::Ok().json(JobPage {
        items: job_views(&state.store, page.items).await?,
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
    Ok(HttpResponse::Ok().json(job_view(&state.store, job).await?))
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
    info: RequestInfo,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = path.into_inner();
    let job = own_job(&caller.viewer(), state.store.meta.get_job(&id).await?, &id)?;
    if caller.0.scope == quiver_store::Scope::Read {
        return Err(ApiError::forbidden(
            "this token has the read scope; cancelling needs a write token",
        ));
    }
    let was_queued = job.state == JobState::Queued;
    let ctx = info.audit(Some(&caller.0));
    let job = state
        .store
        .meta
        .cancel_job_audited(&job.id, Some(&ctx))
        .await?
        .unwrap_or(job);
    if was_queued && job.state == JobState::Cancelled {
        // A running job's cancel ends in its worker, which records the event.
        crate::events::job_finished(&state.store, &job).await;
    }
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

    use crate::app::job_request::{CompressionRequest, MergeRequest};

    fn schema<T: PartialSchema>() -> Value {
        serde_json::to_value(T::schema()).expect("schema")
    }

    /// The limits the API documents are the engine's (the schema attributes take literals only).
    #[test]
    fn documented_limits_are_the_engine_s() {
        let max = |p: &Value, f: &str| p[f]["maximum"].as_f64().unwrap_or(f64::NAN);
        let merge = schema::<MergeRequest>()["properties"].clone();
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
        // A compression's schema: its modes' (one object each), and the job's fields.
        let compress = schema::<CompressionRequest>();
        let parts = compress["allOf"].as_array().expect("allOf");
        let mode = |m: &str| {
            parts[0]["oneOf"]
                .as_array()
                .expect("oneOf")
                .iter()
                .find(|v| v["properties"]["mode"]["enum"][0] == m)
                .unwrap_or_else(|| panic!("mode {m}: {compress}"))["properties"]
                .clone()
        };
        assert_eq!(max(&mode("joint"), "iters"), MAX_JOINT_ITERS as f64);
        assert_eq!(max(&mode("joint"), "clusters"), MAX_CLUSTERS as f64);
        assert_eq!(max(&mode("joint"), "rank"), MAX_RANK as f64);
        assert_eq!(max(&mode("individual"), "rank"), MAX_RANK as f64);
        assert_eq!(
            parts[1]["properties"]["inputs"]["maxItems"].as_u64(),
            Some(crate::jobs::spec::MAX_INPUTS as u64)
        );
    }
}
