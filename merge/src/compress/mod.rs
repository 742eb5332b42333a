//! Compression: one adapter to a lower rank (`individual`), or a collection of adapters of one
//! base model into shared per-module bases (`joint`, Compress then Serve).
//!
//! A joint collection is a directory:
//! * `collection.json` — format, parameters, members (name, input hashes, error), and per module:
//!   kind, shape, number of clusters and each member's cluster (absent members have none);
//! * `bases.safetensors` — `<module>.U.<k>` (d_out×c) and `<module>.V.<k>` (d_in×c), f32;
//! * `members.safetensors` — `<module>.sigma.<member>` (c×c, or c for `--diag`), f32;
//! * `compress_report.json` — bytes before/after, errors, iterations, seconds.
//!
//! [`extract`] turns any member back into a plain PEFT adapter of rank c (`B = UΣᵢ`, `A = Vᵀ`).

pub mod joint;
pub mod spec;

pub use spec::CompressSpec;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use ndarray::Array2;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::adapter::{LoraAdapter, ModuleKind};
use crate::control::Control;
use crate::engine::{ModuleReport, check_inputs};
use crate::error::MergeError;
use crate::linalg::{Cut, factored_cut};
use crate::mat::Mat;
use crate::methods::MergedModule;
use crate::safetensors::{Dtype, write as write_safetensors};
use crate::sparsify::derive_seed;
use crate::write::{ConfigTemplate, OutputFiles, input_records, peft_files, pretty};
use joint::{JointParams, MemberFactors, fit_module_with, sigma_matrix};

pub const MANIFEST_NAME: &str = "collection.json";
pub const BASES_NAME: &str = "bases.safetensors";
pub const MEMBERS_NAME: &str = "members.safetensors";
pub const COMPRESS_REPORT_NAME: &str = "compress_report.json";
const FORMAT: &str = "quiver-collection/1";

/// Bytes of an adapter's factors stored as f32: Σ r·(d_out + d_in)·4.
fn factor_bytes(a: &LoraAdapter) -> u64 {
    a.modules
        .values()
        .map(|e| (e.rank * (e.d_out + e.d_in) * 4) as u64)
        .sum()
}

/// Individual compression: every module of `input` truncated by `cut` through the factored route
/// (exact best approximation). Writes a PEFT adapter and `compress_report.json` into `out`.
pub fn compress_individual(
    input: &LoraAdapter,
    cut: Cut,
    out: &Path,
) -> Result<serde_json::Value, MergeError> {
    compress_individual_with(input, cut, out, &Control::none())
}

/// [`compress_individual`] with progress and cancellation between modules.
pub fn compress_individual_with(
    input: &LoraAdapter,
    cut: Cut,
    out: &Path,
    ctl: &Control<'_>,
) -> Result<serde_json::Value, MergeError> {
    let (files, report) = individual_files(input, cut, ctl)?;
    files.write(out)?;
    Ok(report)
}

/// Individual compression in memory: the output's files and the report.
pub fn individual_files(
    input: &LoraAdapter,
    cut: Cut,
    ctl: &Control<'_>,
) -> Result<(OutputFiles, serde_json::Value), MergeError> {
    let start = Instant::now();
    let total = input.modules.len();
    let done = AtomicUsize::new(0);
    let results: Vec<(String, MergedModule, ModuleReport)> = input
        .modules
        .keys()
        .collect::<Vec<_>>()
        .par_iter()
        .map(|path| {
            ctl.check()?;
            let t0 = Instant::now();
            let m = input
                .load_module(path)?
                .ok_or_else(|| MergeError::numeric(path, "module vanished"))?;
            let t = factored_cut(&m.b.clone().scale(m.scale), &m.a, cut)?;
            MergeError::check_finite(path, "lora_B", &t.b.data)?;
            MergeError::check_finite(path, "lora_A", &t.a.data)?;
            let report = ModuleReport {
                module: path.to_string(),
                kind: m.kind,
                inputs: vec![input.name.clone()],
                rank: t.rank(),
                retained_energy: t.retained_energy(),
                relative_error: t.relative_error(),
                route: t.route,
                seconds: t0.elapsed().as_secs_f64(),
                details: None,
            };
            let merged = MergedModule {
                kind: m.kind,
                b: t.b.clone(),
                a: t.a.clone(),
                truncation: Some(t),
                details: None,
                parked: None,
            };
            ctl.report(done.fetch_add(1, Ordering::Relaxed) + 1, total);
            Ok((path.to_string(), merged, report))
        })
        .collect::<Result<_, MergeError>>()?;
    let (mut modules, mut reports) = (BTreeMap::new(), Vec::new());
    let (mut total, mut lost) = (0.0, 0.0);
    for (p, m, r) in results {
        if let Some(t) = &m.truncation {
            total += t.energy_total;
            lost += (t.energy_total - t.energy_kept).max(0.0);
        }
        modules.insert(p, m);
        reports.push(r);
    }
    let dtype = crate::write::out_dtype(None, std::slice::from_ref(input));
    let recipe = match cut {
        Cut::Rank(k) => json!({"mode": "individual", "rank": k}),
        Cut::Energy(e) => json!({"mode": "individual", "energy": e}),
    };
    let metadata: BTreeMap<String, String> = [
        ("format".to_string(), "pt".to_string()),
        (
            "quiver.method".to_string(),
            "compress:individual".to_string(),
        ),
        ("quiver.params".to_string(), recipe.to_string()),
        (
            "quiver.inputs".to_string(),
            input_records(std::slice::from_ref(input)).to_string(),
        ),
    ]
    .into_iter()
    .collect();
    let (mut files, _) = peft_files(
        &modules,
        &ConfigTemplate::of(std::slice::from_ref(input)),
        dtype,
        &metadata,
    )?;
    let after: u64 = modules
        .values()
        .map(|m| ((m.b.rows + m.a.cols) * m.a.rows * 4) as u64)
        .sum();
    let report = json!({
        "recipe": recipe,
        "input": input_records(std::slice::from_ref(input)),
        "bytes_before": factor_bytes(input),
        "bytes_after": after,
        "relative_error": if total > 0.0 { (lost / total).sqrt() } else { 0.0 },
        "energy_total": total,
        "seconds": start.elapsed().as_secs_f64(),
        "modules": reports,
    });
    files.push(COMPRESS_REPORT_NAME, pretty(&report)?);
    Ok((files, report))
}

/// What `collection.json` holds.
#[derive(Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub rank: usize,
    pub diag: bool,
    pub clusters: usize,
    pub iters: usize,
    pub seed: u64,
    pub template: ConfigTemplate,
    pub members: Vec<MemberInfo>,
    pub modules: BTreeMap<String, ModuleInfo>,
}

#[derive(Serialize, Deserialize)]
pub struct MemberInfo {
    pub index: usize,
    pub name: String,
    pub config_sha256: String,
    pub weights_sha256: String,
    /// ‖Δ − UΣVᵀ‖/‖Δ‖ over all the member's modules.
    pub relative_error: f64,
}

#[derive(Serialize, Deserialize)]
pub struct ModuleInfo {
    pub kind: ModuleKind,
    pub d_out: usize,
    pub d_in: usize,
    pub clusters: usize,
    /// Per member: its cluster, or null when the member has no such module.
    pub assignment: Vec<Option<usize>>,
}

fn to_f64(m: &Mat) -> Array2<f64> {
    m.to_f64()
}

/// `a` as f32 bytes; `Err(NonFiniteResult)` naming `module` and `tensor` where a value is NaN,
/// infinite, or beyond f32's range.
fn f32_bytes(a: &Array2<f64>, module: &str, tensor: &str) -> Result<Vec<u8>, MergeError> {
    let v: Vec<f32> = a.iter().map(|&x| x as f32).collect();
    MergeError::check_finite(module, tensor, &v)?;
    Ok(v.iter().flat_map(|x| x.to_le_bytes()).collect())
}

/// Joint compression of `inputs` into `out` (a collection directory).
pub fn compress_joint(
    inputs: &[LoraAdapter],
    p: JointParams,
    out: &Path,
) -> Result<serde_json::Value, MergeError> {
    compress_joint_with(inputs, p, out, &Control::none())
}

/// [`compress_joint`] with progress and cancellation between modules.
pub fn compress_joint_with(
    inputs: &[LoraAdapter],
    p: JointParams,
    out: &Path,
    ctl: &Control<'_>,
) -> Result<serde_json::Value, MergeError> {
    let (files, report) = joint_files(inputs, p, ctl)?;
    files.write(out)?;
    Ok(report)
}

/// Joint compression in memory: the collection's files and the report.
pub fn joint_files(
    inputs: &[LoraAdapter],
    p: JointParams,
    ctl: &Control<'_>,
) -> Result<(OutputFiles, serde_json::Value), MergeError> {
    let start = Instant::now();
    if inputs.is_empty() {
        return Err(MergeError::InvalidParam(
            "give at least one adapter to compress".into(),
        ));
    }
    CompressSpec::Joint {
        rank: p.rank,
        diag: p.diag,
        clusters: p.clusters,
        iters: p.iters,
        seed: p.seed,
    }
    .validate(inputs.len())?;
    check_inputs(inputs)?;
    let paths: Vec<String> = inputs
        .iter()
        .flat_map(|a| a.modules.keys().cloned())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let done = AtomicUsize::new(0);
    let fits = paths
        .par_iter()
        .map(|path| {
            ctl.check()?;
            let mut members = Vec::new();
            let mut kind = ModuleKind::Linear;
            for (i, a) in inputs.iter().enumerate() {
                if let Some(m) = a.load_module(path)? {
                    kind = m.kind;
                    members.push(MemberFactors {
                        member: i,
                        b: to_f64(&m.b.clone().scale(m.scale)),
                        a: to_f64(&m.a),
                    });
                }
            }
            let (d_out, d_in) = (members[0].b.nrows(), members[0].a.ncols());
            let params = JointParams {
                seed: derive_seed(p.seed, path, 0, "joint"),
                ..p
            };
            let fit = fit_module_with(&members, &params, d_out, d_in, ctl)?;
            ctl.report(done.fetch_add(1, Ordering::Relaxed) + 1, paths.len());
            Ok((
                path.clone(),
                kind,
                d_out,
                d_in,
                members.iter().map(|m| m.member).collect::<Vec<_>>(),
                fit,
            ))
        })
        .collect::<Result<Vec<_>, MergeError>>()?;
    let n = inputs.len();
    let mut bases: Vec<(String, Vec<u64>, Vec<u8>)> = Vec::new();
    let mut sigmas: Vec<(String, Vec<u64>, Vec<u8>)> = Vec::new();
    let mut modules = BTreeMap::new();
    let mut member_err = vec![(0.0f64, 0.0f64); n];
    let mut module_reports = Vec::new();
    let (mut bytes_after, mut iterations) = (0u64, 0usize);
    for (path, kind, d_out, d_in, present, fit) in &fits {
        let mut assignment = vec![None; n];
        for (k, c) in fit.clusters.iter().enumerate() {
            bases.push((
                format!("{path}.U.{k}"),
                vec![*d_out as u64, c.u.ncols() as u64],
                f32_bytes(&c.u, path, &format!("U.{k}"))?,
            ));
            bases.push((
                format!("{path}.V.{k}"),
                vec![*d_in as u64, c.v.ncols() as u64],
                f32_bytes(&c.v, path, &format!("V.{k}"))?,
            ));
            bytes_after += ((d_out + d_in) * c.u.ncols() * 4) as u64;
        }
        for (j, &member) in present.iter().enumerate() {
            assignment[member] = Some(fit.assignment[j]);
            let s = &fit.sigmas[j];
            let shape = if p.diag {
                vec![s.ncols() as u64]
            } else {
                vec![s.nrows() as u64, s.ncols() as u64]
            };
            sigmas.push((
                format!("{path}.sigma.{member}"),
                shape,
                f32_bytes(s, path, &format!("sigma.{member}"))?,
            ));
            bytes_after += (s.len() * 4) as u64;
            member_err[member].0 += fit.errors[j].0;
            member_err[member].1 += fit.errors[j].1;
        }
        iterations = iterations.max(fit.iterations);
        let (e, l): (f64, f64) = fit
            .errors
            .iter()
            .fold((0.0, 0.0), |acc, x| (acc.0 + x.0, acc.1 + x.1));
        module_reports.push(json!({
            "module": path,
            "clusters": fit.clusters.len(),
            "members": present.len(),
            "relative_error": if e > 0.0 { (l / e).sqrt() } else { 0.0 },
            "iterations": fit.iterations,
            "objective": fit.clusters.iter().map(|c| json!({"first": c.history.first(), "last": c.history.last()})).collect::<Vec<_>>(),
        }));
        modules.insert(
            path.clone(),
            ModuleInfo {
                kind: *kind,
                d_out: *d_out,
                d_in: *d_in,
                clusters: fit.clusters.len(),
                assignment,
            },
        );
    }
    let rel = |e: (f64, f64)| if e.0 > 0.0 { (e.1 / e.0).sqrt() } else { 0.0 };
    let members: Vec<MemberInfo> = inputs
        .iter()
        .enumerate()
        .map(|(i, a)| MemberInfo {
            index: i,
            name: a.name.clone(),
            config_sha256: a.config_sha256.clone(),
            weights_sha256: a.weights_sha256.clone(),
            relative_error: rel(member_err[i]),
        })
        .collect();
    let overall = rel(member_err
        .iter()
        .fold((0.0, 0.0), |acc, x| (acc.0 + x.0, acc.1 + x.1)));
    let manifest = Manifest {
        format: FORMAT.into(),
        rank: p.rank,
        diag: p.diag,
        clusters: p.clusters,
        iters: p.iters,
        seed: p.seed,
        template: ConfigTemplate::of(inputs),
        members,
        modules,
    };
    let bytes_before: u64 = inputs.iter().map(factor_bytes).sum();
    let view = |t: &[(String, Vec<u64>, Vec<u8>)]| -> Vec<u8> {
        let v: Vec<(&str, Dtype, &[u64], &[u8])> = t
            .iter()
            .map(|(n, s, b)| (n.as_str(), Dtype::F32, s.as_slice(), b.as_slice()))
            .collect();
        write_safetensors(
            &v,
            &BTreeMap::from([("format".to_string(), "quiver".to_string())]),
        )
    };
    let mut files = OutputFiles::default();
    files.push(BASES_NAME, view(&bases));
    files.push(MEMBERS_NAME, view(&sigmas));
    let manifest_json =
        serde_json::to_value(&manifest).map_err(|e| MergeError::numeric("manifest", e))?;
    files.push(MANIFEST_NAME, pretty(&manifest_json)?);
    let report = json!({
        "mode": "joint",
        "rank": p.rank,
        "diag": p.diag,
        "clusters": p.clusters,
        "members": n,
        "bytes_before": bytes_before,
        "bytes_after": bytes_after,
        "bytes_ratio": bytes_after as f64 / bytes_before.max(1) as f64,
        "relative_error": overall,
        "member_errors": manifest.members.iter().zip(&member_err).map(|(m, e)| json!({"name": m.name, "relative_error": m.relative_error, "energy_total": e.0})).collect::<Vec<_>>(),
        "iterations": iterations,
        "seconds": start.elapsed().as_secs_f64(),
        "modules": module_reports,
    });
    files.push(COMPRESS_REPORT_NAME, pretty(&report)?);
    Ok((files, report))
}

/// Writes member `member` (its name, or its index) of the collection at `from` as a PEFT adapter.
pub fn extract(from: &Path, member: &str, out: &Path) -> Result<(), MergeError> {
    extract_files(from, member)?.write(out)
}

/// Member `member` of the collection at `from` as a PEFT adapter's files, in memory.
pub fn extract_files(from: &Path, member: &str) -> Result<OutputFiles, MergeError> {
    let read = |name: &str| {
        let path = from.join(name);
        std::fs::read(&path).map_err(|source| MergeError::Io { path, source })
    };
    let manifest: Manifest = serde_json::from_slice(&read(MANIFEST_NAME)?).map_err(|e| {
        MergeError::InvalidParam(format!(
            "{} is not a Quiver collection: {e}",
            from.display()
        ))
    })?;
    if manifest.format != FORMAT {
        return Err(MergeError::InvalidParam(format!(
            "unknown collection format {:?}",
            manifest.format
        )));
    }
    let index = manifest
        .members
        .iter()
        .find(|m| m.name == member)
        .map(|m| m.index)
        .or_else(|| {
            member
                .parse::<usize>()
                .ok()
                .filter(|i| *i < manifest.members.len())
        })
        .ok_or_else(|| {
            let names: Vec<&str> = manifest.members.iter().map(|m| m.name.as_str()).collect();
            MergeError::InvalidParam(format!(
                "no member {member:?}; members are {} (or their index)",
                names.join(", ")
            ))
        })?;
    let tensors = |name: &str| -> Result<BTreeMap<String, Mat>, MergeError> {
        let bytes = read(name)?;
        let header = crate::safetensors::parse_header(&bytes, bytes.len() as u64)
            .map_err(|e| MergeError::input(name, e))?;
        Ok(header
            .tensors
            .iter()
            .map(|t| {
                let (s, e) = header.absolute_range(t);
                let data = crate::adapter::decode(&bytes[s as usize..e as usize], t.dtype);
                let (rows, cols) = match t.shape.as_slice() {
                    [r, c] => (*r as usize, *c as usize),
                    _ => (1, data.len()),
                };
                (t.name.clone(), Mat::new(rows, cols, data))
            })
            .collect())
    };
    let bases = tensors(BASES_NAME)?;
    let sigmas = tensors(MEMBERS_NAME)?;
    let missing = |k: &str| MergeError::InvalidParam(format!("collection is missing tensor {k}"));
    let mut modules = BTreeMap::new();
    for (path, info) in &manifest.modules {
        let Some(Some(k)) = info.assignment.get(index) else {
            continue;
        };
        let u = bases
            .get(&format!("{path}.U.{k}"))
            .ok_or_else(|| missing(&format!("{path}.U.{k}")))?;
        let v = bases
            .get(&format!("{path}.V.{k}"))
            .ok_or_else(|| missing(&format!("{path}.V.{k}")))?;
        let s = sigmas
            .get(&format!("{path}.sigma.{index}"))
            .ok_or_else(|| missing(&format!("{path}.sigma.{index}")))?;
        let sigma = Mat::from_f64(&sigma_matrix(&s.to_f64()));
        let b = u.matmul_naive(&sigma);
        modules.insert(path.clone(), MergedModule::exact(info.kind, b, v.t()));
    }
    let m = &manifest.members[index];
    let metadata: BTreeMap<String, String> = [
        ("format".to_string(), "pt".to_string()),
        ("quiver.method".to_string(), "compress:joint:extract".to_string()),
        ("quiver.params".to_string(), json!({"rank": manifest.rank, "diag": manifest.diag, "member": m.name}).to_string()),
        (
            "quiver.inputs".to_string(),
            json!([{"name": m.name, "config_sha256": m.config_sha256, "weights_sha256": m.weights_sha256}]).to_string(),
        ),
    ]
    .into_iter()
    .collect();
    Ok(peft_files(&modules, &manifest.template, Dtype::F32, &metadata)?.0)
}
