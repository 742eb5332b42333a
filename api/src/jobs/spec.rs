//! What a job row holds, typed: [`JobPayload`], one variant per [`JobKind`]. A request is read
//! into it once (`app::job_request`), it is stored as its JSON, and the worker decodes it once
//! ([`JobPayload::decode`]) and matches on it.
//!
//! The JSON is the one the service always stored (the job's `spec`, shown by `GET /jobs/{id}`):
//! a merge or compression is `{"params", "inputs", "output", "base_model"}`, an embed job its
//! [`EmbedSpec`]; so jobs queued by an earlier version decode, and the other way round.

use std::collections::BTreeMap;

use quiver_merge::{CompressSpec, MergeError, MergeSpec};
use quiver_store::{
    AdapterRecord, JobKind, NewAdapterFields, OutputTarget, ParentVersion, RepoId, VersionRecord,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;
use utoipa::ToSchema;

use crate::error::{ApiError, ErrorCode};

/// Most inputs one job may name.
pub const MAX_INPUTS: usize = 64;

/// A job, decoded: what its kind computes and from what.
#[derive(Clone, Debug)]
pub enum JobPayload {
    Merge(JobSpec<MergeSpec>),
    Compress(JobSpec<CompressSpec>),
    Embed(EmbedSpec),
}

impl JobPayload {
    pub fn kind(&self) -> JobKind {
        match self {
            JobPayload::Merge(_) => JobKind::Merge,
            JobPayload::Compress(_) => JobKind::Compress,
            JobPayload::Embed(_) => JobKind::Embed,
        }
    }

    /// Reads a job row's `spec` (the row's kind says which variant it is).
    pub fn decode(kind: JobKind, spec: &Value) -> Result<Self, serde_json::Error> {
        Ok(match kind {
            JobKind::Merge => JobPayload::Merge(JobSpec::deserialize(spec)?),
            JobKind::Compress => JobPayload::Compress(JobSpec::deserialize(spec)?),
            JobKind::Embed => JobPayload::Embed(EmbedSpec::deserialize(spec)?),
            JobKind::Webhook => {
                return Err(serde::de::Error::custom(
                    "webhook deliveries are run by the webhook workers (events::deliver)",
                ));
            }
        })
    }

    /// The JSON the job row holds.
    pub fn to_json(&self) -> Result<Value, serde_json::Error> {
        match self {
            JobPayload::Merge(j) => serde_json::to_value(j),
            JobPayload::Compress(j) => serde_json::to_value(j),
            JobPayload::Embed(e) => serde_json::to_value(e),
        }
    }
}

/// What an embed job works on: the version, pinned with the samples (or card) it had when
/// queued.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EmbedSpec {
    pub version_id: i64,
    pub version: ParentVersion,
    /// The sha256 of the file the texts come from: `samples.jsonl`, or `README.md` when `source`
    /// is `card` (the field keeps the name jobs were stored with).
    pub samples_sha256: String,
    /// The embedder of the process that queued it (the worker uses its own, and records it).
    pub embedder: String,
    /// What the profile is made from. Absent (so `samples`) in jobs queued before cards were
    /// profiled, and left out when `samples`, so those specs stay as they were stored.
    #[serde(default, skip_serializing_if = "EmbedSource::is_samples")]
    pub source: EmbedSource,
}

/// The texts of an embed job: the samples' inputs, or the model card's (`quiver_retrieve::card_texts`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EmbedSource {
    #[default]
    Samples,
    Card,
}

impl EmbedSource {
    fn is_samples(&self) -> bool {
        *self == EmbedSource::Samples
    }
}

/// A merge or compression job: the engine's parameters, the pinned inputs, the output.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(bound(serialize = "", deserialize = "P: DeserializeOwned"))]
pub struct JobSpec<P> {
    /// `MergeSpec` (weights folded in) or `CompressSpec`.
    pub params: Params<P>,
    #[serde(flatten)]
    pub io: Pinned,
}

/// The engine's parameters, typed, with the JSON they were read from: the job shows that JSON
/// and the version's lineage records it as `params` (a merge's as the client wrote it, weights
/// folded in; a compression's with its defaults filled in, as the service always stored them).
#[derive(Clone, Debug)]
pub struct Params<P> {
    spec: P,
    json: Value,
}

impl<P> Params<P> {
    pub fn spec(&self) -> &P {
        &self.spec
    }

    pub fn json(&self) -> &Value {
        &self.json
    }
}

impl<P: DeserializeOwned> Params<P> {
    /// Reads the parameters from `json`, which is kept as it is; the error names the field at
    /// fault (as `MergeSpec::from_json` and `CompressSpec::from_json` do).
    pub fn read(json: Value) -> Result<Self, MergeError> {
        let spec = P::deserialize(&json).map_err(|e| MergeError::InvalidParam(e.to_string()))?;
        Ok(Self { spec, json })
    }
}

impl<P: Serialize> Params<P> {
    /// The parameters with their own JSON form.
    pub fn of(spec: P) -> Result<Self, serde_json::Error> {
        Ok(Self {
            json: serde_json::to_value(&spec)?,
            spec,
        })
    }
}

impl<P> Serialize for Params<P> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.json.serialize(s)
    }
}

impl<'de, P: DeserializeOwned> Deserialize<'de> for Params<P> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Self::read(Value::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// What the engine runs: a merge or a compression (the child process's request, `exec`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "kind", content = "params", rename_all = "snake_case")]
pub enum Engine {
    Merge(Params<MergeSpec>),
    Compress(Params<CompressSpec>),
}

impl Engine {
    /// The method the version's lineage records: the engine's description of a merge
    /// (`engine::describe`: `peft:` prefix for PEFT arithmetic), or `compress:<mode>`.
    pub fn method(&self) -> String {
        match self {
            Engine::Merge(p) => quiver_merge::engine::describe(p.spec()),
            Engine::Compress(p) => format!("compress:{}", p.spec().mode()),
        }
    }

    /// The seed lineage records (0 where the method has none).
    pub fn seed(&self) -> u64 {
        match self {
            Engine::Merge(p) => p.spec().seed,
            Engine::Compress(p) => match p.spec() {
                CompressSpec::Joint { seed, .. } => *seed,
                CompressSpec::Individual { .. } | CompressSpec::Extract { .. } => 0,
            },
        }
    }

    /// The parameters' JSON (see [`Params`]).
    pub fn json(&self) -> &Value {
        match self {
            Engine::Merge(p) => p.json(),
            Engine::Compress(p) => p.json(),
        }
    }
}

/// Where the result goes.
#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OutputRequest {
    /// `owner/name`. The caller must be allowed to write under its owner: 403 otherwise, the
    /// same answer whether the adapter is someone's private one, public, or does not exist.
    #[schema(value_type = String)]
    pub adapter: RepoId,
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
    pub adapter: RepoId,
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

/// The pinned inputs and the output of a merge or compression.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct Pinned {
    pub inputs: Vec<PinnedInput>,
    pub output: OutputRequest,
    /// The base model of the inputs (a created output adapter gets it).
    pub base_model: String,
}

impl Pinned {
    pub fn output_target(&self) -> OutputTarget {
        OutputTarget {
            repo: self.output.adapter.clone(),
            create: self.output.create.then(|| NewAdapterFields {
                base_model: self.base_model.clone(),
                description: self.output.description.clone().unwrap_or_default(),
                tags: self.output.tags.clone().unwrap_or_default(),
                private: self.output.private.unwrap_or(false),
            }),
        }
    }

    pub fn parents(&self) -> Vec<ParentVersion> {
        self.inputs
            .iter()
            .map(|i| ParentVersion {
                adapter: i.adapter.to_string(),
                version: i.version,
                revision: i.revision.clone(),
            })
            .collect()
    }
}

pub(crate) fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::coded(ErrorCode::InvalidSpec, message)
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
    use serde_json::json;

    use super::*;

    /// Rows as the service stored them before the payload was typed decode, and are stored the
    /// same way again (the job's `spec` is shown by the API).
    #[test]
    fn stored_rows_decode_and_encode_unchanged() {
        let rev = "0".repeat(40);
        let io = json!({
            "inputs": [
                {"adapter": "alice/a", "ref": "v1", "version": 1, "revision": rev, "dir": "a"},
                {"adapter": "bob/b", "ref": "main", "version": 3, "revision": rev,
                 "dir": "private-input-1", "private": true},
            ],
            "output": {"adapter": "alice/out", "create": true, "private": null,
                       "description": null, "tags": null},
            "base_model": "base",
        });
        let with = |params: Value| {
            let mut row = io.clone();
            row["params"] = params;
            row
        };
        let merge = with(json!({"method": "task_arithmetic", "weights": [1.0, 0.5]}));
        let compress = with(
            json!({"mode": "joint", "rank": 4, "diag": false, "clusters": 1,
                                   "iters": 50, "seed": 7}),
        );
        let embed = json!({"version_id": 3, "samples_sha256": "ab",  "embedder": "e",
            "version": {"adapter": "alice/a", "version": 1, "revision": rev}});
        let card = json!({"version_id": 3, "samples_sha256": "cd",  "embedder": "e",
            "version": {"adapter": "alice/a", "version": 1, "revision": rev}, "source": "card"});
        for (kind, row) in [
            (JobKind::Merge, &merge),
            (JobKind::Compress, &compress),
            (JobKind::Embed, &embed),
            (JobKind::Embed, &card),
        ] {
            let payload = JobPayload::decode(kind, row).expect("decodes");
            assert_eq!(payload.kind(), kind);
            assert_eq!(&payload.to_json().expect("encodes"), row, "{kind:?}");
        }
        let JobPayload::Merge(job) = JobPayload::decode(JobKind::Merge, &merge).expect("merge")
        else {
            panic!("a merge");
        };
        assert_eq!(job.io.parents()[1].adapter, "bob/b");
        for (row, source) in [(&embed, EmbedSource::Samples), (&card, EmbedSource::Card)] {
            let JobPayload::Embed(spec) = JobPayload::decode(JobKind::Embed, row).expect("embed")
            else {
                panic!("an embed job");
            };
            assert_eq!(spec.source, source);
        }
        assert!(job.io.inputs[1].private);
        let engine = Engine::Merge(job.params);
        // The engine's name of the method, not the alias the client wrote.
        assert_eq!((engine.method().as_str(), engine.seed()), ("linear", 0));
        let JobPayload::Compress(job) =
            JobPayload::decode(JobKind::Compress, &compress).expect("compress")
        else {
            panic!("a compression");
        };
        let engine = Engine::Compress(job.params);
        assert_eq!(
            (engine.method().as_str(), engine.seed()),
            ("compress:joint", 7)
        );
        // Each kind reads its own parameters only.
        assert!(JobPayload::decode(JobKind::Compress, &merge).is_err());
        assert!(JobPayload::decode(JobKind::Merge, &compress).is_err());
    }

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
