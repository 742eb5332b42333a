//! A merge or compression request → a validated job spec with its inputs pinned to revisions.
//!
//! Everything a request can get wrong is found here, before anything is queued: the engine's
//! parameters (`MergeSpec` / `CompressSpec`, read from the same JSON), inputs and output the
//! caller may not see or write, inputs of different base models, DoRA inputs, too few inputs.

use std::collections::BTreeMap;

use quiver_merge::{CompressSpec, MergeSpec};
use quiver_store::{
    AdapterRecord, JobKind, NewAdapterFields, OutputTarget, ParentVersion, RepoId, Store,
    VersionRecord, VersionRef,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use crate::auth::Caller;
use crate::error::{ApiError, ErrorCode};

/// Most inputs one job may name.
pub const MAX_INPUTS: usize = 64;
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

/// Where the result goes.
#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OutputRequest {
    /// `owner/name`. The caller must be allowed to write under its owner: 403 otherwise, the
    /// same answer whether the adapter is someone's private one, public, or does not exist.
    pub adapter: String,
    /// Create the adapter (when the job publishes) if it does not exist.
    #[serde(default)]
    pub create: bool,
    /// For a created adapter: private (default false), description, tags.
    #[serde(default)]
    pub private: Option<bool>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub tags: Option<Vec<String>>,
}

/// An input pinned when the job was queued.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct PinnedInput {
    pub adapter: String,
    #[serde(rename = "ref")]
    pub reference: String,
    pub version: i64,
    pub revision: String,
    /// Directory name the worker stages it under (names the input in reports).
    pub dir: String,
    /// The input's adapter was private when the job was queued: the output's files name it
    /// only by `dir` (`private-input-{i}`) and leave out its files' sha256 (see
    /// `jobs::redact`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub private: bool,
}

/// What a job row holds: the engine's parameters, the pinned inputs, the output.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct JobSpec {
    /// `MergeSpec` JSON (merges, weights folded in) or `CompressSpec` JSON (compressions).
    pub params: Value,
    pub inputs: Vec<PinnedInput>,
    pub output: OutputRequest,
    /// The base model of the inputs (a created output adapter gets it).
    pub base_model: String,
}

/// The engine's view of a job's parameters.
pub enum Engine {
    Merge(MergeSpec),
    Compress(CompressSpec),
}

impl JobSpec {
    pub fn engine(&self, kind: JobKind) -> Result<Engine, quiver_merge::MergeError> {
        match kind {
            JobKind::Compress => Ok(Engine::Compress(CompressSpec::from_json(
                self.params.clone(),
            )?)),
            _ => Ok(Engine::Merge(MergeSpec::from_json(self.params.clone())?)),
        }
    }

    pub fn output_target(&self) -> Result<OutputTarget, ApiError> {
        let repo = parse_repo(&self.output.adapter, "output.adapter")?;
        Ok(OutputTarget {
            repo,
            create: self.output.create.then(|| NewAdapterFields {
                base_model: self.base_model.clone(),
                description: self.output.description.clone().unwrap_or_default(),
                tags: self.output.tags.clone().unwrap_or_default(),
                private: self.output.private.unwrap_or(false),
            }),
        })
    }

    pub fn parents(&self) -> Vec<ParentVersion> {
        self.inputs
            .iter()
            .map(|i| ParentVersion {
                adapter: i.adapter.clone(),
                version: i.version,
                revision: i.revision.clone(),
            })
            .collect()
    }
}

/// A checked request, ready to queue.
pub struct Checked {
    pub spec: JobSpec,
    pub spec_sha256: String,
    pub idempotency_key: Option<String>,
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::coded(ErrorCode::InvalidSpec, message)
}

fn parse_repo(raw: &str, field: &str) -> Result<RepoId, ApiError> {
    let (owner, name) = raw
        .split_once('/')
        .ok_or_else(|| invalid(format!("`{field}` must be `owner/name`, got {raw:?}")))?;
    RepoId::parse(owner, name).map_err(|e| invalid(format!("`{field}`: {e}")))
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
            crate::routes::adapters::check_new_fields(
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

/// Directory names the inputs are staged under, which name them in reports, cards and
/// collections: the adapter's name; `owner--name` where two inputs share a name; `-v{N}` (then
/// `-{i}`) where one adapter is given more than once. A private adapter's input is
/// `private-input-{i}` (its position), whoever may see it: the output's files never name a
/// private adapter (see `jobs::redact`), and are the same whether the output is public or
/// private, now or later. `quiver merge` on directories of these names writes the same bytes
/// (except that a job also leaves out the private inputs' sha256).
pub fn input_dirs(inputs: &[(AdapterRecord, VersionRecord, String)]) -> Vec<String> {
    let count = |names: &[Option<String>]| {
        let mut c: BTreeMap<String, usize> = BTreeMap::new();
        for n in names.iter().flatten() {
            *c.entry(n.clone()).or_default() += 1;
        }
        c
    };
    // Public inputs first, among themselves (a private input's name must not shape theirs).
    let mut names: Vec<Option<String>> = inputs
        .iter()
        .map(|(a, _, _)| (!a.private).then(|| a.name.clone()))
        .collect();
    let c = count(&names);
    for (n, (a, _, _)) in names.iter_mut().zip(inputs) {
        if let Some(n) = n.as_mut()
            && c[n.as_str()] > 1
        {
            *n = format!("{}--{}", a.owner, a.name);
        }
    }
    let c = count(&names);
    for (n, (_, v, _)) in names.iter_mut().zip(inputs) {
        if let Some(n) = n.as_mut()
            && c[n.as_str()] > 1
        {
            *n = format!("{n}-v{}", v.number);
        }
    }
    let c = count(&names);
    for (i, n) in names.iter_mut().enumerate() {
        if let Some(n) = n.as_mut()
            && c[n.as_str()] > 1
        {
            *n = format!("{n}-{i}");
        }
    }
    names
        .into_iter()
        .zip(inputs)
        .enumerate()
        .map(|(i, (n, (a, _, _)))| match n {
            // A public adapter may be called `private-input-3`: `owner--name` never is.
            Some(n) if n.starts_with(PRIVATE_INPUT) => format!("{}--{n}", a.owner),
            Some(n) => n,
            None => format!("{PRIVATE_INPUT}{i}"),
        })
        .collect()
}

/// How the output's files name a private input: `private-input-{position}`.
pub const PRIVATE_INPUT: &str = "private-input-";

#[cfg(test)]
mod tests {
    use super::*;

    fn input(
        owner: &str,
        name: &str,
        private: bool,
        number: i64,
    ) -> (AdapterRecord, VersionRecord, String) {
        let adapter = AdapterRecord {
            id: 1,
            owner: owner.into(),
            name: name.into(),
            base_model: "base".into(),
            description: String::new(),
            tags: Vec::new(),
            private,
            downloads: 0,
            created_at: 0,
            updated_at: 0,
        };
        let version = VersionRecord {
            id: number,
            adapter_id: 1,
            number,
            revision: "0".repeat(40),
            state: "ready".into(),
            created_at: 0,
            created_by: owner.into(),
            lora: None,
            lineage: None,
            files: Vec::new(),
        };
        (adapter, version, "main".into())
    }

    #[test]
    fn private_inputs_are_named_by_position_only() {
        let dirs = input_dirs(&[
            input("alice", "secret", true, 1),
            input("bob", "secret", false, 1),
            input("alice", "secret", true, 2),
            input("carol", "private-input-0", false, 1),
            input("dave", "math", false, 1),
            input("dave", "math", false, 2),
        ]);
        assert_eq!(
            dirs,
            [
                "private-input-0",
                // Public names are settled among public inputs: the private `secret`s do not
                // make bob's `bob--secret`.
                "secret",
                "private-input-2",
                // A public adapter cannot pass for a private input.
                "carol--private-input-0",
                "dave--math-v1",
                "dave--math-v2",
            ]
        );
    }
}
