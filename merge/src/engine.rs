//! Running a merge: checks before any work, then module by module (bounded memory), in parallel
//! across modules on rayon's pool, with a progress callback.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use candle_core::Device;
use rayon::prelude::*;
use serde::Serialize;

use crate::adapter::{LoraAdapter, ModuleKind};
use crate::context::{Backend, ModuleContext, Present, Truncation};
use crate::control::Control;
use crate::error::MergeError;
use crate::gpu::Gpu;
use crate::host::{Host, delta_into};
use crate::linalg::{FactorProducts, Truncated};
use crate::mat::Mat;
use crate::methods::{MergedModule, Route, merge_module, route};
use crate::sparsify::{KthLargest, Threshold};
use crate::spec::{Compat, MergeSpec, TrimScope};

/// Per-module line of the merge report.
#[derive(Clone, Debug, Serialize)]
pub struct ModuleReport {
    pub module: String,
    pub kind: ModuleKind,
    /// Names of the inputs that have this module.
    pub inputs: Vec<String>,
    pub rank: usize,
    /// Fraction of ‖ΔW‖² kept by the truncation (1 when nothing was truncated).
    pub retained_energy: f64,
    /// ‖ΔW − B·A‖_F / ‖ΔW‖_F of the truncation (0 when nothing was truncated).
    pub relative_error: f64,
    /// `exact`, `factored`, `randomized` or `none`.
    pub route: &'static str,
    pub seconds: f64,
    /// Method-specific figures (LEGO: units, clusters, iterations).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<serde_json::Value>,
}

/// A merged adapter, ready to write.
pub struct Merged {
    pub modules: BTreeMap<String, MergedModule>,
    pub reports: Vec<ModuleReport>,
    pub seconds: f64,
    /// Where the merge ran: `cpu`, or `cuda:N (GPU name)`.
    pub device: String,
}

/// A device as reports name it: `cpu`, or `cuda:N (GPU name)`.
pub fn device_name(device: &Device) -> String {
    match device {
        Device::Cpu => "cpu".into(),
        Device::Cuda(_) => match Gpu::of(device) {
            Ok(Some(g)) => format!("cuda:{} ({})", g.ordinal, g.name),
            _ => "cuda".into(),
        },
        other => format!("{:?}", other.location()),
    }
}

/// The backend of a merge on `device`: the one place where a `Device` becomes host or GPU work,
/// once per merge. A GPU that cannot be set up (its kernels do not load, or this build has no
/// GPU support) is no error here: the steps that need it fail with the reason, the others run.
pub fn backend(device: &Device) -> Arc<dyn Backend> {
    match Gpu::of(device) {
        Ok(Some(gpu)) => gpu,
        Ok(None) => Arc::new(Host),
        Err(MergeError::Device(reason)) => Arc::new(Unavailable(reason)),
        Err(other) => Arc::new(Unavailable(other.to_string())),
    }
}

/// The backend of a GPU that could not be set up: every step fails with why.
struct Unavailable(String);

impl Unavailable {
    fn fail<T>(&self) -> Result<T, MergeError> {
        Err(MergeError::Device(self.0.clone()))
    }
}

impl Backend for Unavailable {
    fn dense_combined(
        &self,
        _: &ModuleContext<'_>,
        _: &[Present],
        _: &[(f64, usize)],
        _: &str,
    ) -> Result<Mat, MergeError> {
        self.fail()
    }

    fn dense_truncated(
        &self,
        _: &ModuleContext<'_>,
        _: &[Present],
        _: &[(f64, usize)],
        _: &str,
        _: Truncation,
    ) -> Result<Truncated, MergeError> {
        self.fail()
    }

    fn factor_products<'s>(
        &'s self,
        _: &Mat,
        _: &Mat,
    ) -> Result<Box<dyn FactorProducts + 's>, MergeError> {
        self.fail()
    }
}

/// Checks that the inputs can be merged: same base model (when named), same shape and kind for
/// every shared module, the same `fan_in_fan_out`.
pub fn check_inputs(inputs: &[LoraAdapter]) -> Result<(), MergeError> {
    let named: BTreeSet<&str> = inputs
        .iter()
        .filter_map(|a| a.config.base_model_name_or_path.as_deref())
        .collect();
    if named.len() > 1 {
        return Err(MergeError::Incompatible(format!(
            "the inputs name different base models: {}",
            named.into_iter().collect::<Vec<_>>().join(", ")
        )));
    }
    if inputs
        .iter()
        .any(|a| a.config.fan_in_fan_out != inputs[0].config.fan_in_fan_out)
    {
        return Err(MergeError::Incompatible(
            "the inputs disagree on fan_in_fan_out".into(),
        ));
    }
    let mut shapes: BTreeMap<&str, (ModuleKind, usize, usize, &str)> = BTreeMap::new();
    for a in inputs {
        for (path, e) in &a.modules {
            // The host's products go through BLAS, whose sizes are 32-bit.
            let limit = i32::MAX as usize;
            if e.d_out > limit || e.d_in > limit || e.rank > limit {
                return Err(MergeError::Incompatible(format!(
                    "module {path} of {} is {}×{} with rank {}: a side beyond {limit} cannot be merged",
                    a.name, e.d_out, e.d_in, e.rank
                )));
            }
            let seen = shapes
                .entry(path)
                .or_insert((e.kind, e.d_out, e.d_in, &a.name));
            if (seen.0, seen.1, seen.2) != (e.kind, e.d_out, e.d_in) {
                return Err(MergeError::Incompatible(format!(
                    "module {path} is {:?} {}×{} in {} but {:?} {}×{} in {}",
                    seen.0, seen.1, seen.2, seen.3, e.kind, e.d_out, e.d_in, a.name
                )));
            }
        }
    }
    Ok(())
}

/// Merges `inputs` per `spec`. `progress(done, total)` is called after each module.
pub fn merge(
    inputs: &[LoraAdapter],
    spec: &MergeSpec,
    device: &Device,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<Merged, MergeError> {
    merge_with(inputs, spec, device, &Control::progress(progress))
}

/// [`merge`] with a [`Control`]: progress after each module, and the cancel flag checked before
/// each module starts and inside the methods' long loops. A result with a NaN or infinite value
/// is refused ([`MergeError::NonFiniteResult`], naming the module): a merge never returns one.
pub fn merge_with(
    inputs: &[LoraAdapter],
    spec: &MergeSpec,
    device: &Device,
    ctl: &Control<'_>,
) -> Result<Merged, MergeError> {
    merge_into(inputs, spec, device, ctl, None)
}

/// The directory [`merge_parked`] parks a merge into `out` in: `out`'s parent (same disk as the
/// output), created when missing.
pub fn parking_dir(out: &std::path::Path) -> Result<std::path::PathBuf, MergeError> {
    let dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).map_err(|source| MergeError::Io {
        path: dir.clone(),
        source,
    })?;
    Ok(dir)
}

/// [`merge_with`], each finished module's factors parked in a temporary file in `dir` (see
/// [`crate::park`]) until [`crate::write_adapter`] writes them: memory then holds the modules
/// being merged, not the whole result. For callers that only write the result (the CLI, the
/// workers); the parked modules' `b`/`a` must be read through [`MergedModule::b`]/`a()`.
pub fn merge_parked(
    inputs: &[LoraAdapter],
    spec: &MergeSpec,
    device: &Device,
    ctl: &Control<'_>,
    dir: &std::path::Path,
) -> Result<Merged, MergeError> {
    let parking = crate::park::Parking::in_dir(dir)?;
    merge_into(inputs, spec, device, ctl, Some(&parking))
}

fn merge_into(
    inputs: &[LoraAdapter],
    spec: &MergeSpec,
    device: &Device,
    ctl: &Control<'_>,
    parking: Option<&Arc<crate::park::Parking>>,
) -> Result<Merged, MergeError> {
    let start = Instant::now();
    // However the merge ends, the dense family's kept result buffer is freed.
    struct Release;
    impl Drop for Release {
        fn drop(&mut self) {
            crate::fused::release_buffer();
        }
    }
    let _release = Release;
    spec.validate(inputs.len())?;
    check_inputs(inputs)?;
    let paths: Vec<&str> = inputs
        .iter()
        .flat_map(|a| a.modules.keys().map(String::as_str))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    // PEFT sizes truncations by the largest rank of any input (rank_pattern included).
    let peft_rank = inputs
        .iter()
        .flat_map(|a| a.modules.values().map(|e| e.rank))
        .max()
        .unwrap_or(1);
    let global = match spec.trim_scope {
        TrimScope::Global => Some(global_thresholds(inputs, spec, &paths, ctl)?),
        TrimScope::Module => None,
    };
    let compute = backend(device);
    let done = AtomicUsize::new(0);
    let one = |path: &&str| -> Result<(String, MergedModule, ModuleReport), MergeError> {
        ctl.check()?;
        let t0 = Instant::now();
        let mut present = Vec::new();
        for (index, a) in inputs.iter().enumerate() {
            if let Some(module) = a.load_module(path)? {
                present.push(Present { index, module });
            }
        }
        let default_rank = match spec.compat {
            Compat::Peft => peft_rank,
            Compat::Paper => present.iter().map(|p| p.module.rank()).max().unwrap_or(1),
        };
        let ctx = ModuleContext {
            path,
            spec,
            device,
            compute: &*compute,
            global_thresholds: global.as_deref(),
            default_rank,
            ctl,
        };
        let mut merged = merge_module(&ctx, &present)?;
        check_result(path, &merged)?;
        let report = ModuleReport {
            module: path.to_string(),
            kind: merged.kind,
            inputs: present
                .iter()
                .map(|p| inputs[p.index].name.clone())
                .collect(),
            rank: merged.a.rows,
            retained_energy: merged
                .truncation
                .as_ref()
                .map_or(1.0, |t| t.retained_energy()),
            relative_error: merged
                .truncation
                .as_ref()
                .map_or(0.0, |t| t.relative_error()),
            route: merged.truncation.as_ref().map_or("none", |t| t.route),
            seconds: t0.elapsed().as_secs_f64(),
            details: merged.details.clone(),
        };
        if let Some(p) = parking {
            merged.park_in(p)?;
        }
        ctl.report(done.fetch_add(1, Ordering::Relaxed) + 1, paths.len());
        Ok((path.to_string(), merged, report))
    };
    // Modules run in parallel, unless one module's work already uses every core (the host's
    // dense family): then one at a time (a few on many cores), so memory holds one module's
    // dense working set per lane, not one per core.
    let results: Vec<(String, MergedModule, ModuleReport)> =
        if route(spec) == Route::Dense && compute.parallel_within_module() {
            // Largest first, so the reused result buffer only shrinks; reports stay in path order.
            let numel = |p: &str| {
                inputs
                    .iter()
                    .filter_map(|a| a.modules.get(p).map(|e| e.d_out * e.d_in))
                    .max()
                    .unwrap_or(0)
            };
            let mut order = paths.clone();
            order.sort_by_key(|p| std::cmp::Reverse(numel(p)));
            // A few modules at once on many cores, each using all of them: one module's serial
            // steps (reading its inputs, the small decompositions) then overlap another's
            // parallel passes. One module per four threads; one on two cores.
            let lanes = (rayon::current_num_threads() / 4).clamp(1, order.len().max(1));
            let next = AtomicUsize::new(0);
            let mut results: Vec<_> = (0..lanes)
                .into_par_iter()
                .map(|_| {
                    let mut mine = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(p) = order.get(i) else {
                            return Ok(mine);
                        };
                        mine.push(one(p)?);
                    }
                })
                .collect::<Result<Vec<Vec<_>>, MergeError>>()?
                .into_iter()
                .flatten()
                .collect();
            results.sort_by(|a, b| a.0.cmp(&b.0));
            results
        } else {
            paths
                .par_iter()
                .map(one)
                .collect::<Result<_, MergeError>>()?
        };
    let mut modules = BTreeMap::new();
    let mut reports = Vec::new();
    for (path, m, r) in results {
        modules.insert(path, m);
        reports.push(r);
    }
    Ok(Merged {
        modules,
        reports,
        seconds: start.elapsed().as_secs_f64(),
        device: device_name(device),
    })
}

/// TIES' global trim: for each input, the magnitude threshold over all its modules' ΔWᵢ
/// (two streaming passes of exact histogram selection; ΔWᵢ is recomputed, never stored).
fn global_thresholds(
    inputs: &[LoraAdapter],
    spec: &MergeSpec,
    paths: &[&str],
    ctl: &Control<'_>,
) -> Result<Vec<Threshold>, MergeError> {
    let density = spec.effective_density();
    inputs
        .iter()
        .map(|a| {
            let numel: u64 = a.modules.values().map(|e| (e.d_out * e.d_in) as u64).sum();
            let mut kth = KthLargest::new((density * numel as f64).floor() as u64);
            let pass = |kth: &KthLargest| -> Result<KthLargest, MergeError> {
                paths
                    .par_iter()
                    .map(|p| {
                        ctl.check()?;
                        let mut local = kth.clone();
                        local.merge_reset();
                        if let Some(m) = a.load_module(p)? {
                            let mut buf = Vec::new();
                            delta_into(&m, &mut buf);
                            local.add(&buf);
                        }
                        Ok(local)
                    })
                    .try_reduce(
                        || {
                            let mut z = kth.clone();
                            z.merge_reset();
                            z
                        },
                        |mut x, y| {
                            x.merge(&y);
                            Ok(x)
                        },
                    )
            };
            kth = pass(&kth)?;
            if kth.narrow() {
                let second = pass(&kth)?;
                kth.merge(&second);
            }
            Ok(kth.finish())
        })
        .collect()
}

/// `Err(NonFiniteResult)` when a merged module's factors hold a NaN or an infinite value (huge
/// weights or input values overflowing f32): nothing of such a merge may be written.
pub fn check_result(path: &str, m: &MergedModule) -> Result<(), MergeError> {
    MergeError::check_finite(path, "lora_B", &m.b.data)?;
    MergeError::check_finite(path, "lora_A", &m.a.data)
}

/// Dense `ΔW` of a merged module (for tests and checks).
pub fn merged_delta(m: &MergedModule) -> Mat {
    m.b.matmul_naive(&m.a)
}

/// The method's name as recorded in outputs.
pub fn describe(spec: &MergeSpec) -> String {
    match spec.compat {
        Compat::Paper => spec.method.name().to_string(),
        Compat::Peft => format!("peft:{}", spec.method.name()),
    }
}
