//! A merge or compression request → a validated job spec with its inputs pinned to revisions.
//!
//! Everything a request can get wrong is found here, before anything is queued: the engine's
//! parameters (`MergeSpec` / `CompressSpec`, read from the same JSON), inputs and output the
//! caller may not see or write, inputs of different base models, DoRA inputs, too few inputs.

use std::collections::BTreeMap;

use quiver_merge::{CompressSpec, MergeSpec};
use quiver_store::{AdapterRecord, JobKind, Store, VersionRecord, VersionRef};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use crate::auth::Caller;
use crate::error::{ApiError, ErrorCode};
use crate::jobs::spec::{
    JobSpec, MAX_INPUTS, OutputRequest, PinnedInput, input_dirs, invalid, parse_repo,
};

const MAX_KEY_LEN: usize = 200;

/// One input as the client names it.
#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InputRequest {
    /// `owner/name`, visible to the caller (404 otherwise). An adapter that is private is named
    /// `private-input-{i}` (its position) in every file the job writes — card, reports,
    /// safetensors metadata — and its files' sha256 are withheld there, whether the output is
    /// public or private; the version's `lineage` names it to those who may see it.
    pub adapter: String,
    /// `main` (default), `v3`, `3`, an alias or a 40-hex revision.
    #[serde(rename = "ref", default = "main_ref")]
    pub reference: String,
    /// Merge weight of this input (default 1); instead of the spec's `weights`.
    #[serde(default)]
    pub weight: Option<f64>,
}

fn main_ref() -> String {
    "main".into()
}

/// A checked request, ready to queue.
pub struct Checked {
    pub spec: JobSpec,
    pub spec_sha256: String,
    pub idempotency_key: Option<String>,
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

/// Checks a request body of `POST /merges` or `POST /compressions` and pins its inputs.
pub async fn check(
    store: &Store,
    caller: &Caller,
    kind: JobKind,
    body: Value,
) -> Result<Checked, ApiError> {
    let Value::Object(mut body) = body else {
        return Err(invalid("the body must be a JSON object"));
    };
    let spec_sha256 = {
        let mut without_key = body.clone();
        without_key.remove("idempotency_key");
        hex::encode(Sha256::digest(Value::Object(without_key).to_string()))
    };
    let idempotency_key: Option<String> = take(&mut body, "idempotency_key")?;
    if let Some(k) = &idempotency_key
        && (k.is_empty() || k.len() > MAX_KEY_LEN || k.chars().any(char::is_control))
    {
        return Err(invalid(format!(
            "`idempotency_key` must be 1 to {MAX_KEY_LEN} printable characters"
        )));
    }
    let inputs: Vec<InputRequest> =
        take(&mut body, "inputs")?.ok_or_else(|| invalid("`inputs` is required"))?;
    let output: OutputRequest =
        take(&mut body, "output")?.ok_or_else(|| invalid("`output` is required"))?;
    if inputs.len() > MAX_INPUTS {
        return Err(invalid(format!("at most {MAX_INPUTS} inputs per job")));
    }
    // The rest of the body is the engine's own spec.
    let mut params = body;
    let params = match kind {
        JobKind::Compress => {
            let spec = CompressSpec::from_json(Value::Object(params))
                .map_err(|e| invalid(e.to_string()))?;
            spec.validate(inputs.len())
                .map_err(|e| invalid(e.to_string()))?;
            if inputs.iter().any(|i| i.weight.is_some()) {
                return Err(invalid("`inputs[].weight` applies to merges"));
            }
            serde_json::to_value(&spec).map_err(|e| ApiError::internal("spec", e))?
        }
        _ => {
            if inputs.iter().any(|i| i.weight.is_some()) {
                if params.contains_key("weights") {
                    return Err(invalid(
                        "give weights either as `weights` or as `inputs[].weight`, not both",
                    ));
                }
                let w: Vec<Value> = inputs
                    .iter()
                    .map(|i| Value::from(i.weight.unwrap_or(1.0)))
                    .collect();
                params.insert("weights".into(), Value::Array(w));
            }
            let params = Value::Object(params);
            let spec = MergeSpec::from_json(params.clone()).map_err(|e| invalid(e.to_string()))?;
            spec.validate(inputs.len())
                .map_err(|e| invalid(e.to_string()))?;
            params
        }
    };

    // Inputs: visible to the caller, pinned to a revision.
    let mut resolved: Vec<(AdapterRecord, VersionRecord, String)> = Vec::new();
    for (i, input) in inputs.iter().enumerate() {
        let repo = parse_repo(&input.adapter, &format!("inputs[{i}].adapter"))?;
        let adapter = caller.visible(store.meta.get_adapter(&repo).await?, &repo.to_string())?;
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
    check_shapes(&resolved)?;
    let is_collection = |v: &VersionRecord| v.files.iter().any(|f| f.path == "collection.json");
    for (a, v, _) in &resolved {
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
        let extract = matches!(kind, JobKind::Compress)
            && params.get("mode").and_then(Value::as_str) == Some("extract");
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
    let base_model = resolved
        .first()
        .map(|(a, _, _)| a.base_model.clone())
        .unwrap_or_default();

    // Output: writable by the caller (an existing adapter, or one to create). Whether the caller
    // may write under the owner is asked first, before anything about the name: another user's
    // private adapter, their public one and a name that does not exist all answer 403 alike, so
    // the answer does not tell which names exist.
    let repo = parse_repo(&output.adapter, "output.adapter")?;
    caller.require_write(&repo.owner)?;
    match store.meta.get_adapter(&repo).await? {
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

    let dirs = input_dirs(&resolved);
    let inputs = resolved
        .into_iter()
        .zip(dirs)
        .map(|((a, v, reference), dir)| PinnedInput {
            private: a.private,
            adapter: a.repo_id(),
            reference,
            version: v.number,
            revision: v.revision,
            dir,
        })
        .collect();
    Ok(Checked {
        spec: JobSpec {
            params,
            inputs,
            output,
            base_model,
        },
        spec_sha256,
        idempotency_key,
    })
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
