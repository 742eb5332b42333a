//! A merge or compression request → a validated job spec with its inputs pinned to revisions.
//!
//! Everything a request can get wrong is found here, before anything is queued: the engine's
//! parameters (`MergeSpec` / `CompressSpec`, read from the same JSON), inputs and output the
//! caller may not see or write, inputs of different base models, DoRA inputs, too few inputs.

use std::collections::BTreeMap;

use quiver_merge::{CompressSpec, MergeSpec};
use quiver_store::{
    AdapterRecord, JobKind, NewAdapterFields, OutputTarget, ParentVersion, RepoId, VersionRecord,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::error::{ApiError, ErrorCode};

/// Most inputs one job may name.
pub const MAX_INPUTS: usize = 64;
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

pub(crate) fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::coded(ErrorCode::InvalidSpec, message)
}

pub(crate) fn parse_repo(raw: &str, field: &str) -> Result<RepoId, ApiError> {
    let (owner, name) = raw
        .split_once('/')
        .ok_or_else(|| invalid(format!("`{field}` must be `owner/name`, got {raw:?}")))?;
    RepoId::parse(owner, name).map_err(|e| invalid(format!("`{field}`: {e}")))
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
