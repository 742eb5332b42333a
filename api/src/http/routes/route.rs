//! `POST /route`: which adapters fit these prompts (LoraRetriever-style retrieval), with mixture
//! weights, and fusions (merged adapters of the retrieved sets) made once by merge jobs.

use std::collections::BTreeMap;
use std::sync::Arc;

use actix_web::{HttpResponse, post, web};
use quiver_retrieve::{MAX_INPUT_BYTES, Weighting, checked_vector, mixture_weights};
use quiver_store::{AuditContext, JobKind, JobState, ProfileSource, RepoId, VersionRef, Viewer};
use serde::Deserializer;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use crate::app::jobs::queue_job_audited;
use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody, ErrorCode};
use crate::http::request_info::RequestInfo;
use crate::routing::index::{Built, Entry, Pending};
use crate::state::AppState;

/// Most inputs (or vectors) one request may route.
pub const MAX_ROUTE_INPUTS: usize = 1024;
/// Largest `top_k`.
pub const MAX_TOP_K: usize = 50;
/// Softmax temperature when `weights` is `softmax` and none is given. Cosines of one embedder
/// differ by a few hundredths between close adapters, so 0.05 separates them without making
/// the mixture one-hot.
pub const DEFAULT_TEMPERATURE: f64 = 0.05;
/// Pending adapters listed in a response at most (`pending_truncated` counts the rest).
pub const MAX_PENDING_LISTED: usize = 100;
/// `wait_ms` when `wait` is given without one.
pub const DEFAULT_WAIT_MS: u64 = 10_000;
/// Largest `wait_ms`.
pub const MAX_WAIT_MS: u64 = 30_000;
/// How often a waiting route looks again (one query for the generations; the pending list is
/// read again only when they moved).
const WAIT_POLL: std::time::Duration = std::time::Duration::from_millis(100);

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// The ranked adapters.
    #[default]
    Retrieve,
    /// … with normalised weights.
    Mixture,
    /// … and a merged adapter of them (made once per set and weights, then reused).
    Fusion,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum WeightsKind {
    /// `1/k` each (LoraRetriever).
    #[default]
    Uniform,
    /// `softmax(score / temperature)`.
    Softmax,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FusionMethod {
    /// Σ wᵢ·sᵢ·BᵢAᵢ exactly (the merged adapter has rank Σ rᵢ): the mixture's update.
    #[default]
    Exact,
    /// LoraRetriever's fusion: (Σ wᵢBᵢ)(Σ wᵢsᵢAᵢ), factors averaged, cross terms included
    /// (PEFT `linear` with weights wᵢ²; inputs must share a rank).
    FactorAverage,
}

#[derive(Clone, Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteFilter {
    /// Only adapters with every one of these tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Only this owner's adapters.
    pub owner: Option<String>,
}

#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteRequest {
    /// Prompts to route (1 to 1024). Or give `vectors`.
    pub inputs: Option<Vec<String>>,
    /// Query embeddings instead of `inputs` (any scale; normalised here), of the dimension of
    /// `embedder`'s profiles.
    pub vectors: Option<Vec<Vec<f32>>>,
    /// Whose profiles `vectors` are compared with (default: this server's embedder).
    pub embedder: Option<String>,
    /// Adapters per input, 1 to 50 (default 3, the paper's).
    #[serde(default = "default_top_k")]
    pub top_k: usize,
    /// Only adapters of this base model (required by `fusion`).
    pub base_model: Option<String>,
    #[serde(default)]
    pub filter: RouteFilter,
    #[serde(default)]
    pub strategy: Strategy,
    /// Mixture and fusion weights (default `uniform`).
    #[serde(default)]
    pub weights: WeightsKind,
    /// Softmax temperature (default 0.05), > 0.
    pub temperature: Option<f64>,
    /// How a fusion merges (default `exact`).
    #[serde(default)]
    pub fusion: FusionMethod,
    /// Wait until no adapter that matches the filters is pending (an embed job queued or
    /// running; failed ones do not count), or until `wait_ms` passed, then route.
    #[serde(default)]
    pub wait: bool,
    /// How long `wait` waits at most, 1 to 30000 ms (default 10000). Only with `wait: true`.
    #[serde(default, deserialize_with = "wait_ms")]
    #[schema(value_type = Option<u64>, minimum = 1, maximum = 30000)]
    pub wait_ms: Option<WaitMs>,
}

/// `wait_ms` as sent: a number or not, checked by [`RouteRequest::check`] so that the error
/// names the field (serde's would not).
#[derive(Clone, Copy, Debug)]
pub enum WaitMs {
    Valid(u64),
    Invalid,
}

fn wait_ms<'de, D: Deserializer<'de>>(d: D) -> Result<Option<WaitMs>, D::Error> {
    let value = Value::deserialize(d)?;
    Ok(match value {
        Value::Null => None,
        v => Some(
            v.as_u64()
                .filter(|ms| (1..=MAX_WAIT_MS).contains(ms))
                .map_or(WaitMs::Invalid, WaitMs::Valid),
        ),
    })
}

fn default_top_k() -> usize {
    3
}

#[derive(Serialize, ToSchema)]
pub struct RoutedAdapter {
    /// `owner/name`.
    pub adapter: String,
    /// The adapter's newest version with a profile of this embedder.
    pub version: i64,
    pub revision: String,
    /// Cosine-based similarity (per the profile recipe), in [-1, 1].
    pub score: f32,
    /// What the adapter's profile was made from.
    pub profile: ProfileKind,
    /// Mixture weight (`mixture` and `fusion`); the weights of one input sum to 1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight: Option<f64>,
}

/// Where a ranked adapter's profile came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ProfileKind {
    /// Its `samples.jsonl`.
    Samples,
    /// Its model card's text (it has no samples): weaker evidence of its task than samples.
    Card,
    /// A vector its owner uploaded.
    Uploaded,
}

impl From<ProfileSource> for ProfileKind {
    fn from(source: ProfileSource) -> Self {
        match source {
            ProfileSource::Samples => ProfileKind::Samples,
            ProfileSource::Card => ProfileKind::Card,
            ProfileSource::Uploaded => ProfileKind::Uploaded,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PendingState {
    /// The embed job waits for a worker with an embedder.
    Queued,
    /// A worker is embedding.
    Running,
    /// The embed job failed (`error` says why); it is not retried until the profile is
    /// recomputed (`POST …/profile`).
    Failed,
}

/// An adapter that matches the request but is not ranked, because the profile of its newest
/// version is still being made (or could not be).
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct PendingAdapter {
    /// `owner/name`.
    pub adapter: String,
    /// The version waiting for its profile (an older version with a profile may be ranked).
    pub version: i64,
    pub state: PendingState,
    /// The embed job (`GET /api/v1/jobs/{id}` for its owner).
    pub job: String,
    /// The job's error: why it failed, or the last attempt's error of a job queued again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Clone, Serialize, ToSchema)]
pub struct FusionView {
    /// `owner/name` of the merged adapter (the caller's, private).
    pub adapter: String,
    /// `ready` when the merged version exists; otherwise the state of the job making it.
    pub state: String,
    pub version: Option<i64>,
    pub revision: Option<String>,
    /// The merge job (poll `GET /api/v1/jobs/{id}`), while it is not ready.
    pub job: Option<String>,
    pub error: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct RouteResult {
    pub adapters: Vec<RoutedAdapter>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fusion: Option<FusionView>,
}

#[derive(Serialize, ToSchema)]
pub struct RouteResponse {
    /// The embedder whose profiles were searched.
    pub embedder: String,
    /// How profiles were scored.
    pub recipe: String,
    pub strategy: Strategy,
    /// One per input, in order.
    pub results: Vec<RouteResult>,
    /// Adapters that match the filters (and that the caller may see) but are not ranked because
    /// their newest version has no profile of this embedder yet: its embed job is queued or
    /// running, or failed. In owner/name order, at most 100; always present.
    pub pending: Vec<PendingAdapter>,
    /// How many more pending adapters matched than `pending` lists.
    pub pending_truncated: usize,
    /// With `wait`: how long the route waited, in ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waited_ms: Option<u64>,
    /// With `wait`: whether `wait_ms` passed with adapters still queued or running (then listed
    /// in `pending`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timed_out: Option<bool>,
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::coded(ErrorCode::InvalidRoute, message)
}

impl RouteRequest {
    fn check(&self) -> Result<usize, ApiError> {
        let count = match (&self.inputs, &self.vectors) {
            (Some(inputs), None) => {
                if let Some((i, _)) = inputs.iter().enumerate().find(|(_, s)| s.trim().is_empty()) {
                    return Err(invalid(format!("inputs[{i}] is empty")));
                }
                if let Some((i, s)) = inputs
                    .iter()
                    .enumerate()
                    .find(|(_, s)| s.len() > MAX_INPUT_BYTES)
                {
                    return Err(invalid(format!(
                        "inputs[{i}] is {} bytes; at most {MAX_INPUT_BYTES}",
                        s.len()
                    )));
                }
                inputs.len()
            }
            (None, Some(vectors)) => vectors.len(),
            (Some(_), Some(_)) => {
                return Err(invalid("give either `inputs` or `vectors`, not both"));
            }
            (None, None) => return Err(invalid("give `inputs` (prompts) or `vectors`")),
        };
        if count == 0 {
            return Err(invalid("nothing to route: the list is empty"));
        }
        if count > MAX_ROUTE_INPUTS {
            return Err(invalid(format!(
                "{count} inputs; at most {MAX_ROUTE_INPUTS} per request"
            )));
        }
        if !(1..=MAX_TOP_K).contains(&self.top_k) {
            return Err(invalid(format!(
                "top_k must be between 1 and {MAX_TOP_K}, got {}",
                self.top_k
            )));
        }
        if let Some(t) = self.temperature
            && !(t.is_finite() && t > 0.0)
        {
            return Err(invalid(format!("temperature must be > 0, got {t}")));
        }
        match (self.wait, self.wait_ms) {
            (_, Some(WaitMs::Invalid)) => {
                return Err(invalid(format!(
                    "wait_ms must be an integer between 1 and {MAX_WAIT_MS}"
                )));
            }
            (false, Some(WaitMs::Valid(_))) => {
                return Err(invalid("wait_ms applies only with `wait: true`"));
            }
            _ => {}
        }
        if self.strategy == Strategy::Fusion && self.base_model.is_none() {
            return Err(invalid(
                "`fusion` merges adapters of one base model: give `base_model`",
            ));
        }
        Ok(count)
    }

    /// How long to wait for pending adapters, if at all.
    fn wait_for(&self) -> Option<std::time::Duration> {
        self.wait.then(|| {
            let ms = match self.wait_ms {
                Some(WaitMs::Valid(ms)) => ms,
                _ => DEFAULT_WAIT_MS,
            };
            std::time::Duration::from_millis(ms)
        })
    }

    fn weighting(&self) -> Weighting {
        match self.weights {
            WeightsKind::Uniform => Weighting::Uniform,
            WeightsKind::Softmax => Weighting::Softmax {
                temperature: self.temperature.unwrap_or(DEFAULT_TEMPERATURE),
            },
        }
    }
}

/// Route prompts to the adapters whose profiles fit them best. `retrieve` ranks adapters by the
/// similarity of each prompt's embedding to their profiles (built from each version's
/// `samples.jsonl`, or from its model card without one: `profile` says which); `mixture` adds
/// weights; `fusion` also returns a merged adapter of each retrieved set, made once by a merge
/// job and reused. Private adapters appear only to callers who may see them. `pending` lists the
/// matching adapters whose profile is still being made (or failed); `wait: true` waits (up to
/// `wait_ms`) until none is queued or running.
#[utoipa::path(
    tag = "routing",
    request_body = RouteRequest,
    responses(
        (status = 200, body = RouteResponse),
        (status = 401, body = ErrorBody, description = "fusion needs a token"),
        (status = 403, body = ErrorBody),
        (status = 422, body = ErrorBody),
        (status = 503, body = ErrorBody, description = "no embedder configured and no `vectors` given")
    ),
    security((), ("bearer" = []))
)]
#[post("/route")]
pub async fn route(
    state: web::Data<AppState>,
    caller: Caller,
    info: RequestInfo,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    let request: RouteRequest =
        serde_json::from_value(body.into_inner()).map_err(|e| invalid(e.to_string()))?;
    request.check()?;
    let routing = &state.routing;
    let own = routing.options.embedder.as_ref();
    let embedder_id = match (&request.embedder, own) {
        (Some(id), _) => id.clone(),
        (None, Some(batcher)) => batcher.embedder().id().to_string(),
        (None, None) => {
            return Err(ApiError::coded(
                ErrorCode::EmbedderUnavailable,
                "this server has no embedder: start it with --embedder-dir (QUIVER_EMBEDDER_DIR), or send `vectors` with `embedder`",
            ));
        }
    };
    let admission = Admission {
        viewer: caller.viewer(),
        base_model: request.base_model.clone(),
        filter: request.filter.clone(),
    };
    let started = std::time::Instant::now();
    let deadline = request.wait_for().map(|d| started + d);
    let meta = state.store.meta.as_ref();
    let (built, pending) = loop {
        // One read of the generations keys both the index and the pending list.
        let generations = meta.routing_generations().await?;
        let pending = routing
            .indexes
            .pending(meta, &embedder_id, generations)
            .await?;
        let built = routing
            .indexes
            .get_at(meta, &embedder_id, generations)
            .await?;
        let pending = pending_for(&pending, &built, &admission);
        let waiting = pending.iter().any(|p| p.state != PendingState::Failed);
        match deadline {
            Some(deadline) if waiting => {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                if left.is_zero() {
                    break (built, pending);
                }
                // Nothing is held while waiting: no connection, no thread.
                tokio::time::sleep(left.min(WAIT_POLL)).await;
            }
            _ => break (built, pending),
        }
    };
    let timed_out = deadline.map(|_| pending.iter().any(|p| p.state != PendingState::Failed));
    let waited_ms = deadline.map(|_| started.elapsed().as_millis() as u64);
    let pending_truncated = pending.len().saturating_sub(MAX_PENDING_LISTED);
    let mut pending = pending;
    pending.truncate(MAX_PENDING_LISTED);
    let queries: Vec<Vec<f32>> = match (&request.inputs, &request.vectors) {
        (Some(inputs), _) => {
            let batcher = own.ok_or_else(|| {
                ApiError::coded(
                    ErrorCode::EmbedderUnavailable,
                    "this server has no embedder to embed `inputs`: start it with --embedder-dir (QUIVER_EMBEDDER_DIR), or send `vectors`",
                )
            })?;
            if batcher.embedder().id() != embedder_id {
                return Err(invalid(format!(
                    "`inputs` are embedded with {}; `embedder` ({embedder_id}) applies to `vectors` only",
                    batcher.embedder().id()
                )));
            }
            batcher
                .embed(inputs.clone())
                .await
                .map_err(|e| ApiError::internal("embedding route inputs", e))?
        }
        (None, Some(vectors)) => {
            let dim = match own {
                Some(b) if b.embedder().id() == embedder_id => Some(b.embedder().dim()),
                // No profiles of this embedder: nothing to compare the length with.
                _ if built.index.is_empty() => None,
                _ => Some(built.index.dim()),
            };
            vectors
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    checked_vector(v, dim.unwrap_or(v.len())).map_err(|e| {
                        ApiError::coded(ErrorCode::InvalidVector, format!("vectors[{i}]: {e}"))
                    })
                })
                .collect::<Result<_, _>>()?
        }
        (None, None) => Vec::new(),
    };
    // Inputs' texts for the lexical re-rank; routes with vectors have none (dense only).
    let texts = request.inputs.clone().unwrap_or_default();
    let hits = search(built.clone(), queries, texts, request.top_k, admission).await?;
    let weighting = request.weighting();
    let mut results = Vec::with_capacity(hits.len());
    let mut fusions: BTreeMap<String, FusionView> = BTreeMap::new();
    for ranked in hits {
        let scores: Vec<f32> = ranked.iter().map(|(_, s)| *s).collect();
        let weights = match request.strategy {
            Strategy::Retrieve => None,
            Strategy::Mixture | Strategy::Fusion => Some(mixture_weights(&scores, weighting)),
        };
        let adapters: Vec<RoutedAdapter> = ranked
            .iter()
            .enumerate()
            .map(|(i, (entry, score))| RoutedAdapter {
                adapter: entry.adapter.clone(),
                version: entry.version,
                revision: entry.revision.clone(),
                score: *score,
                profile: entry.source.into(),
                weight: weights.as_ref().map(|w| round_weight(w[i])),
            })
            .collect();
        let fusion = match request.strategy {
            Strategy::Fusion if !adapters.is_empty() => {
                let audit = info.audit(caller.0.as_ref());
                Some(fusion(&state, &caller, &audit, &request, &adapters, &mut fusions).await?)
            }
            _ => None,
        };
        results.push(RouteResult { adapters, fusion });
    }
    Ok(HttpResponse::Ok().json(RouteResponse {
        embedder: embedder_id,
        recipe: built.index.recipe().name(),
        strategy: request.strategy,
        results,
        pending,
        pending_truncated,
        waited_ms,
        timed_out,
    }))
}

/// Which index entries a request may see and asked for: visibility for the caller, then the
/// request's filters. The one test for ranked and for pending adapters.
#[derive(Clone)]
struct Admission {
    viewer: Viewer,
    base_model: Option<String>,
    filter: RouteFilter,
}

impl Admission {
    fn admits(&self, e: &Entry) -> bool {
        // `Viewer::can_see` over an index entry (a restricted token's list included).
        (!e.private
            || (self.viewer.reads_namespace(&e.owner)
                && self
                    .viewer
                    .allows(&e.owner, e.adapter.split_once('/').map_or("", |(_, n)| n))))
            && self.base_model.as_ref().is_none_or(|b| *b == e.base_model)
            && self.filter.owner.as_ref().is_none_or(|o| *o == e.owner)
            && self.filter.tags.iter().all(|t| e.tags.contains(t))
    }
}

/// The pending adapters this request may see and asked for, unless the index already routes to
/// that version or a newer one (the index may be newer than the pending list it was read with).
fn pending_for(pending: &Pending, built: &Built, admission: &Admission) -> Vec<PendingAdapter> {
    pending
        .entries
        .iter()
        .filter(|p| admission.admits(&p.entry))
        .filter(|p| {
            built
                .version_of(&p.entry.adapter)
                .is_none_or(|v| v < p.entry.version)
        })
        .map(|p| PendingAdapter {
            adapter: p.entry.adapter.clone(),
            version: p.entry.version,
            state: match p.state {
                JobState::Queued => PendingState::Queued,
                JobState::Running => PendingState::Running,
                _ => PendingState::Failed,
            },
            job: p.job.clone(),
            error: p.error.clone(),
        })
        .collect()
}

/// Searches every query off the async runtime (rayon inside for large indexes); `texts[i]`,
/// when given, is query `i`'s text, for the index's BM25 re-rank.
async fn search(
    built: Arc<Built>,
    queries: Vec<Vec<f32>>,
    texts: Vec<String>,
    top_k: usize,
    admission: Admission,
) -> Result<Vec<Vec<(Entry, f32)>>, ApiError> {
    tokio::task::spawn_blocking(move || {
        let keep = |e: &Entry| admission.admits(e);
        queries
            .iter()
            .enumerate()
            .map(|(i, q)| {
                built
                    .index
                    .search_hybrid(q, texts.get(i).map(String::as_str), top_k, &keep)
                    .into_iter()
                    .map(|hit| (built.index.meta(hit.entry).clone(), hit.score))
                    .collect()
            })
            .collect()
    })
    .await
    .map_err(|e| ApiError::internal("route search", e))
}

/// Weights are rounded to 6 decimals: what the response shows is exactly what a fusion merges
/// and what names it.
fn round_weight(w: f64) -> f64 {
    (w * 1e6).round() / 1e6
}

/// The merged adapter of one retrieved set: found if it was made before, else queued.
async fn fusion(
    state: &AppState,
    caller: &Caller,
    audit: &AuditContext,
    request: &RouteRequest,
    adapters: &[RoutedAdapter],
    done: &mut BTreeMap<String, FusionView>,
) -> Result<FusionView, ApiError> {
    let principal = caller.0.as_ref().ok_or_else(ApiError::unauthorized)?;
    caller.require_write_namespace(&principal.user)?;
    let mut parts: Vec<(&str, &str, f64)> = adapters
        .iter()
        .map(|a| {
            (
                a.adapter.as_str(),
                a.revision.as_str(),
                a.weight.unwrap_or(1.0),
            )
        })
        .collect();
    parts.sort_by(|a, b| a.0.cmp(b.0));
    let method = match request.fusion {
        FusionMethod::Exact => "exact",
        FusionMethod::FactorAverage => "factor_average",
    };
    let mut hasher = Sha256::new();
    hasher.update(method.as_bytes());
    for (adapter, revision, weight) in &parts {
        hasher.update(format!("\n{adapter}@{revision}:{weight:.6}").as_bytes());
    }
    let name = format!("fusion-{}", &hex::encode(hasher.finalize())[..16]);
    if let Some(view) = done.get(&name) {
        return Ok(view.clone());
    }
    let repo =
        RepoId::parse(&principal.user, &name).map_err(|e| ApiError::internal("fusion name", e))?;
    let output = repo.to_string();
    let mut view = FusionView {
        adapter: output.clone(),
        state: "queued".into(),
        version: None,
        revision: None,
        job: None,
        error: None,
    };
    let made = match state.store.meta.get_adapter(&repo).await? {
        Some(adapter) => {
            state
                .store
                .meta
                .get_version(adapter.id, &VersionRef::Main)
                .await?
        }
        None => None,
    };
    if let Some(version) = made {
        view.state = "ready".into();
        view.version = Some(version.number);
        view.revision = Some(version.revision);
    } else {
        let (method_name, compat, square) = match request.fusion {
            FusionMethod::Exact => ("linear", "paper", false),
            FusionMethod::FactorAverage => ("linear", "peft", true),
        };
        let inputs: Vec<Value> = parts
            .iter()
            .map(|(adapter, revision, w)| {
                json!({"adapter": adapter, "ref": revision, "weight": if square { w * w } else { *w }})
            })
            .collect();
        // The description names the inputs, but not a private one (as the job's files do not:
        // `jobs::spec::input_dirs`): the fusion may be made public later.
        let mut named = Vec::new();
        for (i, (a, _, w)) in parts.iter().enumerate() {
            let private = match a.parse::<RepoId>().ok() {
                Some(r) => state
                    .store
                    .meta
                    .get_adapter(&r)
                    .await?
                    .is_none_or(|x| x.private),
                None => true,
            };
            let name = if private {
                format!("{}{i}", crate::jobs::spec::PRIVATE_INPUT)
            } else {
                a.to_string()
            };
            named.push(format!("{name} ×{w:.6}"));
        }
        let description = format!("Route fusion ({method}) of {}", named.join(", "));
        let body = json!({
            "method": method_name,
            "compat": compat,
            "inputs": inputs,
            "output": {"adapter": output, "create": true, "private": true,
                       "description": description, "tags": ["fusion"]},
            "idempotency_key": name,
        });
        // Audited as `POST /api/v1/merges` is (`job.submit`; a fusion queued before: none).
        let (job, _) = queue_job_audited(state, caller, JobKind::Merge, body, Some(audit)).await?;
        view.state = job.state.as_str().into();
        view.job = Some(job.id.clone());
        view.error = job.error.clone();
        if let (JobState::Succeeded, Some((_, number))) = (job.state, job.result.as_ref()) {
            view.state = "ready".into();
            view.version = Some(*number);
        }
    }
    done.insert(name, view.clone());
    Ok(view)
}
