//! Response shapes of the API (fields may be added, never renamed). Built from store records;
//! never the records themselves.

use std::collections::BTreeMap;

use quiver_store::time::rfc3339;
use quiver_store::{AdapterRecord, FileRecord, VersionRecord};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

#[derive(Serialize, ToSchema)]
pub struct AdapterView {
    /// `owner/name`.
    pub id: String,
    pub owner: String,
    pub name: String,
    pub base_model: String,
    pub description: String,
    pub tags: Vec<String>,
    pub private: bool,
    pub downloads: i64,
    pub created_at: String,
    pub updated_at: String,
    /// `main` (the newest ready version) and user aliases → version number.
    pub refs: BTreeMap<String, i64>,
    /// Protected alias names (docs/protected-aliases.md), by name: only admins of the namespace
    /// may create, move or delete them. A name may be protected with no alias of it now.
    pub protected_aliases: Vec<String>,
    /// The newest ready version, if any.
    pub latest: Option<VersionView>,
}

#[derive(Serialize, ToSchema)]
pub struct VersionView {
    /// The adapter's `owner/name`.
    pub adapter: String,
    /// The adapter's base model (what `adapter_config.json`'s `base_model_name_or_path` should
    /// name), so one call resolves a ref to revision, files, base model and compatibility.
    pub base_model: String,
    pub number: i64,
    /// 40 lowercase hex: sha1 of the version's canonical manifest.
    pub revision: String,
    /// `pending`, `ready` or `failed`.
    pub state: String,
    pub created_at: String,
    pub created_by: String,
    pub files: Vec<FileView>,
    /// LoRA summary: peft_type, r, lora_alpha, use_rslora, use_dora, target_modules, rank_pattern,
    /// alpha_pattern, n_params, dtype, size.
    #[schema(value_type = Object)]
    pub lora: Option<Value>,
    /// Parents (`[{adapter, version, revision}]`, in input order), method, params and seed of
    /// a merged or compressed version. A parent the caller may not see (another user's private
    /// adapter, or one deleted since) is `{"hidden": true}` in its place.
    #[schema(value_type = Object)]
    pub lineage: Option<Value>,
    /// Whether vLLM, LoRAX, PEFT and Quiver's merges take it, each `{"ok", "reason"}`, and the
    /// smallest vLLM `--max-lora-rank` that loads it (`vllm_max_lora_rank`).
    #[schema(value_type = Object)]
    pub compatibility: Option<quiver_merge::compat::Compatibility>,
}

#[derive(Serialize, ToSchema)]
pub struct FileView {
    pub path: String,
    pub size: i64,
    pub sha256: String,
}

#[derive(Serialize, ToSchema)]
pub struct AdapterPage {
    pub items: Vec<AdapterView>,
    /// Pass as `cursor` to get the next page; null on the last page.
    pub next_cursor: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct VersionPage {
    pub items: Vec<VersionView>,
    pub next_cursor: Option<String>,
}

impl From<&FileRecord> for FileView {
    fn from(f: &FileRecord) -> Self {
        Self {
            path: f.path.clone(),
            size: f.size,
            sha256: f.sha256.clone(),
        }
    }
}

impl VersionView {
    /// The version as a caller may see it: parents it may not see hidden (`crate::app::redact`).
    pub fn new(
        v: VersionRecord,
        adapter: &AdapterRecord,
        parents: &crate::app::redact::Parents,
    ) -> Self {
        Self {
            adapter: adapter.repo_id(),
            base_model: adapter.base_model.clone(),
            number: v.number,
            revision: v.revision,
            state: v.state,
            created_at: rfc3339(v.created_at),
            created_by: v.created_by,
            files: v.files.iter().map(FileView::from).collect(),
            compatibility: crate::facets::summary(v.lora.as_ref())
                .map(|s| quiver_merge::compat::Compatibility::of(&s)),
            lora: v.lora,
            lineage: parents.redact(v.lineage),
        }
    }
}

impl AdapterView {
    pub fn new(
        a: AdapterRecord,
        latest: Option<VersionRecord>,
        aliases: Vec<(String, i64)>,
        protected_aliases: Vec<String>,
        parents: &crate::app::redact::Parents,
    ) -> Self {
        let mut refs: BTreeMap<String, i64> = aliases.into_iter().collect();
        if let Some(v) = &latest {
            refs.insert("main".into(), v.number);
        }
        let latest = latest.map(|v| VersionView::new(v, &a, parents));
        Self {
            id: a.repo_id(),
            owner: a.owner,
            name: a.name,
            base_model: a.base_model,
            description: a.description,
            tags: a.tags,
            private: a.private,
            downloads: a.downloads,
            created_at: rfc3339(a.created_at),
            updated_at: rfc3339(a.updated_at),
            refs,
            protected_aliases,
            latest,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct ProgressView {
    /// Modules done.
    pub done: i64,
    pub total: i64,
}

#[derive(Serialize, ToSchema)]
pub struct JobResultView {
    /// `owner/name` of the output adapter.
    pub adapter: String,
    /// The published version's number.
    pub version: i64,
}

#[derive(Serialize, ToSchema)]
pub struct JobView {
    pub id: String,
    /// `merge`, `compress` or `embed` (a version's routing profile).
    pub kind: String,
    /// `queued`, `running`, `succeeded`, `failed` or `cancelled`.
    pub state: String,
    pub progress: ProgressView,
    /// Why it failed (or why the last attempt failed, while it is retried).
    pub error: Option<String>,
    pub result: Option<JobResultView>,
    /// The engine's merge or compression report.
    #[schema(value_type = Object)]
    pub report: Option<Value>,
    /// The spec as queued: parameters, inputs pinned to revisions, output.
    #[schema(value_type = Object)]
    pub spec: Value,
    pub attempts: i64,
    pub max_attempts: i64,
    pub cancel_requested: bool,
    pub created_by: String,
    pub idempotency_key: Option<String>,
    pub created_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    /// For a queued job: how many queued jobs are expected to be claimed before it under fair
    /// share (its submitter's older queued jobs, plus from every other submitter the jobs that
    /// round-robin gives a turn first). Exact for one worker and jobs of equal length; retry
    /// backoff and `--jobs-per-user` are not modelled. Null when the job is not queued.
    pub queue_position: Option<i64>,
}

impl From<quiver_store::JobRecord> for JobView {
    fn from(j: quiver_store::JobRecord) -> Self {
        Self {
            id: j.id,
            kind: j.kind.as_str().into(),
            state: j.state.as_str().into(),
            progress: ProgressView {
                done: j.progress_done,
                total: j.progress_total,
            },
            error: j.error,
            result: j
                .result
                .map(|(adapter, version)| JobResultView { adapter, version }),
            report: j.report,
            spec: j.spec,
            attempts: j.attempts,
            max_attempts: j.max_attempts,
            cancel_requested: j.cancel_requested,
            created_by: j.created_by,
            idempotency_key: j.idempotency_key,
            created_at: rfc3339(j.created_at),
            started_at: j.started_at.map(rfc3339),
            finished_at: j.finished_at.map(rfc3339),
            queue_position: None,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct JobPage {
    pub items: Vec<JobView>,
    pub next_cursor: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct LineageNodeView {
    /// `owner/name@number`.
    pub id: String,
    pub adapter: String,
    pub version: i64,
    pub revision: String,
    /// How it was made (`ties`, `compress:joint`, …); null for uploaded versions.
    pub method: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct LineageEdgeView {
    /// The parent's node id.
    pub from: String,
    /// The child's node id.
    pub to: String,
}

#[derive(Serialize, ToSchema)]
pub struct LineageView {
    /// The node id of the version asked for.
    pub root: String,
    pub nodes: Vec<LineageNodeView>,
    pub edges: Vec<LineageEdgeView>,
}

/// A version's routing profile (its vectors are not shown).
#[derive(Serialize, ToSchema)]
pub struct ProfileView {
    /// The embedder that made the vectors (`<name>@<12 hex of its files' sha256>`).
    pub embedder: String,
    pub dim: i64,
    /// Rows: one per sample (`samples`), one per text taken from the card (`card`), or 1
    /// (`uploaded`).
    pub count: i64,
    /// `samples` (computed from `samples.jsonl`), `card` (from the model card's text, for a
    /// version without samples) or `uploaded`.
    pub source: String,
    /// The sha256 of the file it was computed from: `samples.jsonl`, or `README.md` for `card`.
    pub samples_sha256: Option<String>,
    pub updated_at: String,
    /// Whether it was made by this server's embedder (`null`: the server has none). Profiles of
    /// another embedder are recomputed from their samples, never searched with this one's.
    pub current: Option<bool>,
}

impl ProfileView {
    pub fn new(p: quiver_store::ProfileInfo, current: Option<bool>) -> Self {
        Self {
            embedder: p.embedder,
            dim: p.dim,
            count: p.count,
            source: p.source.as_str().into(),
            samples_sha256: p.samples_sha256,
            updated_at: rfc3339(p.updated_at),
            current,
        }
    }
}
