//! A merge or compression request → a validated [`JobPayload`] with its inputs pinned to
//! revisions.
//!
//! Everything a request can get wrong is found here, before anything is queued: the engine's
//! parameters (`MergeSpec` / `CompressSpec`, read once from the body into [`JobRequest`]),
//! inputs and output the caller may not see or write, inputs of different base models, DoRA
//! inputs, too few inputs.

use std::borrow::Cow;
use std::collections::BTreeMap;

use quiver_merge::{CompressSpec, MergeError, MergeSpec};
use quiver_store::{AdapterRecord, JobKind, RepoId, Store, VersionRecord, VersionRef};
use serde::Deserialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use utoipa::openapi::schema::{AllOfBuilder, ObjectBuilder, OneOfBuilder, Schema, Type};
use utoipa::openapi::{Ref, RefOr};
use utoipa::{PartialSchema, ToSchema};

use crate::auth::Caller;
use crate::error::{ApiError, ErrorCode};
use crate::jobs::spec::{
    Engine, JobPayload, JobSpec, MAX_INPUTS, OutputRequest, Params, Pinned, PinnedInput,
    input_dirs, invalid,
};

const MAX_KEY_LEN: usize = 200;

/// The body of `POST /merges`.
pub type MergeRequest = JobRequest<MergeSpec>;
/// The body of `POST /compressions`.
pub type CompressionRequest = JobRequest<CompressSpec>;

/// A job request as [`check`] reads it: the engine's parameters (`P`: `MergeSpec` or
/// `CompressSpec`, the rest of the body) and the job's own fields. Its API schema is the
/// engine's spec's (from quiver-merge) with the job's fields added.
pub struct JobRequest<P> {
    pub params: Params<P>,
    pub job: JobFields,
}

/// The fields of a job request that are not the engine's.
#[derive(ToSchema)]
pub struct JobFields {
    /// At most 64 inputs per job.
    #[schema(max_items = 64)]
    pub inputs: Vec<InputRequest>,
    pub output: OutputRequest,
    /// The same key and body again return the same job; another body with it is a 409.
    pub idempotency_key: Option<String>,
}

/// One input as the client names it: an object ([`InputObject`]), or the string `owner/name`
/// or `owner/name@ref`.
#[derive(Clone, Debug)]
pub struct InputRequest {
    pub adapter: RepoId,
    pub reference: String,
    pub weight: Option<f64>,
}

/// One input as an object.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InputObject {
    /// `owner/name`, visible to the caller (404 otherwise). An adapter that is private is named
    /// `private-input-{i}` (its position) in every file the job writes — card, reports,
    /// safetensors metadata — and its files' sha256 are withheld there, whether the output is
    /// public or private; the version's `lineage` names it to those who may see it.
    #[schema(value_type = String)]
    adapter: RepoId,
    /// `main` (default), `v3`, `3`, an alias or a 40-hex revision.
    #[serde(rename = "ref", default = "main_ref")]
    reference: String,
    /// Merge weight of this input (default 1); instead of the spec's `weights`.
    #[serde(default)]
    weight: Option<f64>,
}

fn main_ref() -> String {
    "main".into()
}

impl InputRequest {
    /// Reads entry `i` of `inputs`; the error names it.
    fn read(i: usize, entry: Value) -> Result<Self, ApiError> {
        let bad = |e: &dyn std::fmt::Display| invalid(format!("`inputs[{i}]`: {e}"));
        match entry {
            Value::String(s) => {
                let (repo, reference) = match s.split_once('@') {
                    Some((_, "")) => {
                        return Err(bad(&format!("{s:?} has nothing after `@` (give a ref)")));
                    }
                    Some((repo, reference)) => (repo, reference.to_string()),
                    None => (s.as_str(), main_ref()),
                };
                let adapter = repo.parse().map_err(|e| bad(&e))?;
                Ok(Self {
                    adapter,
                    reference,
                    weight: None,
                })
            }
            entry @ Value::Object(_) => {
                let o: InputObject = serde_json::from_value(entry).map_err(|e| bad(&e))?;
                Ok(Self {
                    adapter: o.adapter,
                    reference: o.reference,
                    weight: o.weight,
                })
            }
            other => Err(bad(&format!(
                "expected an object or an `owner/name@ref` string, got {other}"
            ))),
        }
    }
}

impl PartialSchema for InputRequest {
    fn schema() -> RefOr<Schema> {
        OneOfBuilder::new()
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .description(Some(
                        "`owner/name` or `owner/name@ref` (`ref` as in the object form; default \
                         `main`)",
                    ))
                    .examples(["alice/math@v2"]),
            )
            .item(Ref::from_schema_name(InputObject::name()))
            .into()
    }
}

impl ToSchema for InputRequest {
    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        schemas.push((InputObject::name().into(), InputObject::schema()));
        InputObject::schemas(schemas);
    }
}

fn take<T: serde::de::DeserializeOwned>(
    body: &mut Map<String, Value>,
    field: &str,
) -> Result<Option<T>, ApiError> {
    body.remove(field)
        .filter(|v| !v.is_null())
        .map(|v| serde_json::from_value(v).map_err(|e| invalid(format!("`{field}`: {e}"))))
        .transpose()
}

impl JobFields {
    /// Takes the job's fields out of a request body; the rest is the engine's.
    fn read(body: &mut Map<String, Value>) -> Result<Self, ApiError> {
        let idempotency_key: Option<String> = take(body, "idempotency_key")?;
        if let Some(k) = &idempotency_key
            && (k.is_empty() || k.len() > MAX_KEY_LEN || k.chars().any(char::is_control))
        {
            return Err(invalid(format!(
                "`idempotency_key` must be 1 to {MAX_KEY_LEN} printable characters"
            )));
        }
        let inputs: Vec<Value> =
            take(body, "inputs")?.ok_or_else(|| invalid("`inputs` is required"))?;
        let inputs = inputs
            .into_iter()
            .enumerate()
            .map(|(i, entry)| InputRequest::read(i, entry))
            .collect::<Result<Vec<_>, _>>()?;
        let output: OutputRequest =
            take(body, "output")?.ok_or_else(|| invalid("`output` is required"))?;
        if inputs.len() > MAX_INPUTS {
            return Err(invalid(format!("at most {MAX_INPUTS} inputs per job")));
        }
        Ok(Self {
            inputs,
            output,
            idempotency_key,
        })
    }
}

fn engine_error(e: MergeError) -> ApiError {
    invalid(e.to_string())
}

impl JobRequest<MergeSpec> {
    /// Reads a merge request; `inputs[].weight` are folded into the spec's `weights`.
    fn read(mut body: Map<String, Value>) -> Result<Self, ApiError> {
        let job = JobFields::read(&mut body)?;
        if job.inputs.iter().any(|i| i.weight.is_some()) {
            if body.contains_key("weights") {
                return Err(invalid(
                    "give weights either as `weights` or as `inputs[].weight`, not both",
                ));
            }
            let w: Vec<Value> = job
                .inputs
                .iter()
                .map(|i| Value::from(i.weight.unwrap_or(1.0)))
                .collect();
            body.insert("weights".into(), Value::Array(w));
        }
        let params = Params::<MergeSpec>::read(Value::Object(body)).map_err(engine_error)?;
        params
            .spec()
            .validate(job.inputs.len())
            .map_err(engine_error)?;
        Ok(Self { params, job })
    }
}

impl JobRequest<CompressSpec> {
    /// Reads a compression request (its parameters stored with their defaults filled in).
    fn read(mut body: Map<String, Value>) -> Result<Self, ApiError> {
        let job = JobFields::read(&mut body)?;
        let spec = CompressSpec::from_json(Value::Object(body)).map_err(engine_error)?;
        spec.validate(job.inputs.len()).map_err(engine_error)?;
        if job.inputs.iter().any(|i| i.weight.is_some()) {
            return Err(invalid("`inputs[].weight` applies to merges"));
        }
        let params = Params::of(spec).map_err(|e| ApiError::internal("spec", e))?;
        Ok(Self { params, job })
    }
}

/// The name and description of an engine spec's request body in the API schema.
pub trait RequestSchema: ToSchema {
    const NAME: &'static str;
    const DESCRIPTION: &'static str;
}

impl RequestSchema for MergeSpec {
    const NAME: &'static str = "MergeRequest";
    const DESCRIPTION: &'static str = "A merge: `method` and its parameters (as `quiver merge` \
        takes them; unknown fields are refused), `inputs`, `output`, `idempotency_key`.";
}

impl RequestSchema for CompressSpec {
    const NAME: &'static str = "CompressionRequest";
    const DESCRIPTION: &'static str = "A compression: `mode` (`individual`, `joint`, \
        `extract`) and its parameters (unknown fields are refused), `inputs`, `output`, \
        `idempotency_key`.";
}

/// The engine spec's schema with the job's fields added: one object where the spec's is one
/// (a merge's), else both (a compression's: one object per mode).
impl<P: RequestSchema> PartialSchema for JobRequest<P> {
    fn schema() -> RefOr<Schema> {
        match (P::schema(), JobFields::schema()) {
            (RefOr::T(Schema::Object(mut params)), RefOr::T(Schema::Object(job))) => {
                params.properties.extend(job.properties);
                params.required.extend(job.required);
                params.description = Some(P::DESCRIPTION.into());
                RefOr::T(Schema::Object(params))
            }
            (params, job) => AllOfBuilder::new()
                .item(params)
                .item(job)
                .description(Some(P::DESCRIPTION))
                .into(),
        }
    }
}

impl<P: RequestSchema> ToSchema for JobRequest<P> {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed(P::NAME)
    }

    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        P::schemas(schemas);
        JobFields::schemas(schemas);
    }
}

/// A checked request, ready to queue.
pub struct Checked {
    pub payload: JobPayload,
    pub spec_sha256: String,
    pub idempotency_key: Option<String>,
}

/// Checks a request body of `POST /merges` or `POST /compressions` and pins its inputs.
pub async fn check(
    store: &Store,
    caller: &Caller,
    kind: JobKind,
    body: Value,
) -> Result<Checked, ApiError> {
    let Value::Object(body) = body else {
        return Err(invalid("the body must be a JSON object"));
    };
    // The body as sent is kept for this only: the same key with another body is a conflict.
    let spec_sha256 = {
        let mut without_key = body.clone();
        without_key.remove("idempotency_key");
        hex::encode(Sha256::digest(Value::Object(without_key).to_string()))
    };
    let (engine, job) = match kind {
        JobKind::Merge => {
            let r = MergeRequest::read(body)?;
            (Engine::Merge(r.params), r.job)
        }
        JobKind::Compress => {
            let r = CompressionRequest::read(body)?;
            (Engine::Compress(r.params), r.job)
        }
        JobKind::Embed | JobKind::Webhook => {
            return Err(invalid(
                "embed and webhook jobs are queued by the service, not by a request",
            ));
        }
    };
    let resolved = resolve_inputs(store, caller, &job.inputs).await?;
    let base_model = check_inputs(&resolved, &engine)?;
    check_output(store, caller, &job.output, &base_model).await?;

    let dirs = input_dirs(&resolved);
    let inputs = resolved
        .into_iter()
        .zip(dirs)
        .map(|((a, v, reference), dir)| PinnedInput {
            private: a.private,
            adapter: RepoId {
                owner: a.owner,
                name: a.name,
            },
            reference,
            version: v.number,
            revision: v.revision,
            dir,
        })
        .collect();
    let io = Pinned {
        inputs,
        output: job.output,
        base_model,
    };
    let payload = match engine {
        Engine::Merge(params) => JobPayload::Merge(JobSpec { params, io }),
        Engine::Compress(params) => JobPayload::Compress(JobSpec { params, io }),
    };
    Ok(Checked {
        payload,
        spec_sha256,
        idempotency_key: job.idempotency_key,
    })
}

/// The inputs, visible to the caller, with the versions their refs name now.
async fn resolve_inputs(
    store: &Store,
    caller: &Caller,
    inputs: &[InputRequest],
) -> Result<Vec<(AdapterRecord, VersionRecord, String)>, ApiError> {
    let mut resolved = Vec::new();
    for input in inputs {
        let repo = &input.adapter;
        let adapter = caller.visible(store.meta.get_adapter(repo).await?, &repo.to_string())?;
        let version = store
            .meta
            .get_version(adapter.id, &VersionRef::parse(&input.reference))
            .await?
            .ok_or_else(|| {
                ApiError::coded(
                    ErrorCode::VersionNotFound,
                    format!("version {} of {repo} was not found", input.reference),
                )
            })?;
        resolved.push((adapter, version, input.reference.clone()));
    }
    Ok(resolved)
}

/// Inputs the engine can take together: one base model, the same shapes, no DoRA, a
/// collection exactly where the mode is `extract`. Returns the base model.
fn check_inputs(
    resolved: &[(AdapterRecord, VersionRecord, String)],
    engine: &Engine,
) -> Result<String, ApiError> {
    let base_models: std::collections::BTreeSet<&str> = resolved
        .iter()
        .map(|(a, _, _)| a.base_model.as_str())
        .collect();
    if base_models.len() > 1 {
        return Err(ApiError::coded(
            ErrorCode::IncompatibleInputs,
            format!(
                "the inputs have different base models: {}",
                base_models.into_iter().collect::<Vec<_>>().join(", ")
            ),
        ));
    }
    check_shapes(resolved)?;
    let extract = match engine {
        Engine::Compress(p) => matches!(p.spec(), CompressSpec::Extract { .. }),
        Engine::Merge(_) => false,
    };
    let is_collection = |v: &VersionRecord| v.files.iter().any(|f| f.path == "collection.json");
    for (a, v, _) in resolved {
        let lora = v.lora.as_ref();
        if lora
            .and_then(|l| l.get("use_dora"))
            .and_then(Value::as_bool)
            .unwrap_or(false)
        {
            return Err(ApiError::coded(
                ErrorCode::IncompatibleInputs,
                format!(
                    "{} version {} is a DoRA adapter; merging DoRA is not supported yet",
                    a.repo_id(),
                    v.number
                ),
            ));
        }
        if extract != is_collection(v) {
            return Err(ApiError::coded(
                ErrorCode::IncompatibleInputs,
                if extract {
                    format!(
                        "{} version {} is not a joint-compression collection (no collection.json)",
                        a.repo_id(),
                        v.number
                    )
                } else {
                    format!(
                        "{} version {} is a joint-compression collection; extract a member first (mode `extract`)",
                        a.repo_id(),
                        v.number
                    )
                },
            ));
        }
    }
    Ok(resolved
        .first()
        .map(|(a, _, _)| a.base_model.clone())
        .unwrap_or_default())
}

/// The output: writable by the caller (an existing adapter of the inputs' base model, or one to
/// create). Whether the caller may write under the owner is asked first, before anything about
/// the name: another user's private adapter, their public one and a name that does not exist
/// all answer 403 alike, so the answer does not tell which names exist.
async fn check_output(
    store: &Store,
    caller: &Caller,
    output: &OutputRequest,
    base_model: &str,
) -> Result<(), ApiError> {
    let repo = &output.adapter;
    caller.require_write(&repo.owner, &repo.name)?;
    match store.meta.get_adapter(repo).await? {
        Some(existing) => {
            if existing.base_model != base_model {
                return Err(ApiError::coded(
                    ErrorCode::IncompatibleInputs,
                    format!(
                        "output {repo} is for base model {}, the inputs for {base_model}",
                        existing.base_model
                    ),
                ));
            }
        }
        None if output.create => {
            crate::app::adapters::check_new_fields(
                output.description.as_deref().unwrap_or_default(),
                output.tags.as_deref().unwrap_or_default(),
            )?;
        }
        None => {
            return Err(ApiError::coded(
                ErrorCode::AdapterNotFound,
                format!("adapter {repo} was not found; set `output.create: true` to create it"),
            ));
        }
    }
    Ok(())
}

/// Inputs whose stored summaries give a target module different shapes cannot be merged: refused
/// here rather than by the engine after staging. (Summaries stored before `module_shapes` existed
/// have none; the engine still checks those when the job runs.)
fn check_shapes(inputs: &[(AdapterRecord, VersionRecord, String)]) -> Result<(), ApiError> {
    type Shapes = BTreeMap<String, Vec<[u64; 2]>>;
    let shapes: Vec<(String, Shapes)> = inputs
        .iter()
        .filter_map(|(a, v, _)| {
            let s = v.lora.as_ref()?.get("module_shapes")?;
            Some((
                format!("{} version {}", a.repo_id(), v.number),
                serde_json::from_value::<Shapes>(s.clone()).ok()?,
            ))
        })
        .collect();
    for (i, (name_a, a)) in shapes.iter().enumerate() {
        for (name_b, b) in &shapes[i + 1..] {
            for (target, sa) in a {
                if let Some(sb) = b.get(target)
                    && sa != sb
                {
                    return Err(ApiError::coded(
                        ErrorCode::IncompatibleInputs,
                        format!(
                            "target {target} has shape(s) {sa:?} in {name_a} but {sb:?} in {name_b} ([d_out, d_in]); \
                             the inputs are not adapters of one base model"
                        ),
                    ));
                }
            }
        }
    }
    Ok(())
}
