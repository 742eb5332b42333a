//! Writing a merged adapter as a standard PEFT directory.
//!
//! `adapter_config.json` has `r` = the largest module rank, `lora_alpha = r`, `use_rslora = false`
//! and `rank_pattern`/`alpha_pattern` (equal, full module paths) where a module's rank differs, so
//! every module's scale is exactly 1 — PEFT's inherited rsLoRA/DoRA flags are never copied.
//! The safetensors `__metadata__` records the recipe; `merge_report.json` and a README.md card sit
//! beside it. Files are written to temporary names and renamed, so a failed write leaves no
//! half-written adapter under the final names.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde_json::{Value, json};

use crate::adapter::{LoraAdapter, ModuleKind};
use crate::engine::{Merged, describe};
use crate::error::MergeError;
use crate::keys::{PEFT_PREFIX, leaf_name};
use crate::mat::Mat;
use crate::methods::MergedModule;
use crate::safetensors::{
    Dtype, write_to as write_safetensors_to, write_with as write_safetensors_with,
};
use crate::spec::{MergeSpec, OutDtype};
use crate::summary::{CONFIG_NAME, SAFETENSORS_WEIGHTS_NAME};

pub const REPORT_NAME: &str = "merge_report.json";
pub const CARD_NAME: &str = "README.md";

/// Writes `m` in `dtype`'s little-endian bytes into `out` (exactly `m.data.len()` elements);
/// `Err(NonFiniteResult)` naming `module` and `tensor` when a value is NaN or infinite, or
/// overflows the dtype (f16 above 65504): an output never holds one.
fn encode_into(
    m: &Mat,
    dtype: Dtype,
    out: &mut [u8],
    module: &str,
    tensor: &str,
) -> Result<(), MergeError> {
    let overflow = || MergeError::NonFiniteResult {
        module: module.to_string(),
        tensor: tensor.to_string(),
        dtype: dtype.as_str().to_ascii_lowercase(),
    };
    match dtype {
        Dtype::F16 => {
            for (x, o) in m.data.iter().zip(out.chunks_exact_mut(2)) {
                let v = half::f16::from_f32(*x);
                if !v.is_finite() {
                    return Err(overflow());
                }
                o.copy_from_slice(&v.to_le_bytes());
            }
        }
        Dtype::BF16 => {
            for (x, o) in m.data.iter().zip(out.chunks_exact_mut(2)) {
                let v = half::bf16::from_f32(*x);
                if !v.is_finite() {
                    return Err(overflow());
                }
                o.copy_from_slice(&v.to_le_bytes());
            }
        }
        _ => {
            for (x, o) in m.data.iter().zip(out.chunks_exact_mut(4)) {
                if !x.is_finite() {
                    return Err(overflow());
                }
                o.copy_from_slice(&x.to_le_bytes());
            }
        }
    }
    Ok(())
}

pub fn out_dtype(requested: Option<OutDtype>, inputs: &[LoraAdapter]) -> Dtype {
    match requested {
        Some(OutDtype::F32) => Dtype::F32,
        Some(OutDtype::F16) => Dtype::F16,
        Some(OutDtype::Bf16) => Dtype::BF16,
        None => match inputs.first().map(|a| a.dtype) {
            Some(d @ (Dtype::F16 | Dtype::BF16)) => d,
            _ => Dtype::F32,
        },
    }
}

/// The inputs as recorded in outputs: name and file hashes.
pub fn input_records(inputs: &[LoraAdapter]) -> Value {
    Value::Array(
        inputs
            .iter()
            .map(|a| json!({"name": a.name, "config_sha256": a.config_sha256, "weights_sha256": a.weights_sha256}))
            .collect(),
    )
}

pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), MergeError> {
    let io = |source| MergeError::Io {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension("partial");
    std::fs::write(&tmp, bytes).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// The config fields an output inherits from an input.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct ConfigTemplate {
    pub task_type: Option<String>,
    pub base_model_name_or_path: Option<String>,
    pub revision: Option<String>,
    pub fan_in_fan_out: bool,
}

impl ConfigTemplate {
    pub fn of(inputs: &[LoraAdapter]) -> Self {
        inputs.first().map_or_else(Self::default, |a| Self {
            task_type: a.config.task_type.clone(),
            base_model_name_or_path: a.config.base_model_name_or_path.clone(),
            revision: a.config.revision.clone(),
            fan_in_fan_out: a.config.fan_in_fan_out,
        })
    }
}

/// The files of an output, computed in memory: `(file name, bytes)`, written by
/// [`OutputFiles::write`] (each to a temporary name, then renamed).
#[derive(Clone, Debug, Default)]
pub struct OutputFiles(pub Vec<(String, Vec<u8>)>);

impl OutputFiles {
    pub fn push(&mut self, name: &str, bytes: Vec<u8>) {
        self.0.push((name.to_string(), bytes));
    }

    /// Writes every file into `out` (created if needed).
    pub fn write(&self, out: &Path) -> Result<(), MergeError> {
        std::fs::create_dir_all(out).map_err(|source| MergeError::Io {
            path: out.to_path_buf(),
            source,
        })?;
        for (name, bytes) in &self.0 {
            write_atomically(&out.join(name), bytes)?;
        }
        Ok(())
    }
}

/// Writes `adapter_config.json` and `adapter_model.safetensors` for factor pairs with scale 1.
/// Returns the largest rank (the config's `r`). The weights are encoded and written one tensor
/// at a time (to a temporary name, then renamed): no copy of the file is held in memory.
pub fn write_peft(
    out: &Path,
    modules: &BTreeMap<String, MergedModule>,
    template: &ConfigTemplate,
    dtype: Dtype,
    metadata: &BTreeMap<String, String>,
) -> Result<usize, MergeError> {
    let created = !out.exists();
    std::fs::create_dir_all(out).map_err(|source| MergeError::Io {
        path: out.to_path_buf(),
        source,
    })?;
    let layout = PeftLayout::of(modules, template);
    let path = out.join(SAFETENSORS_WEIGHTS_NAME);
    let tmp = path.with_extension("partial");
    let streamed = stream_weights(&tmp, &layout, modules, dtype, metadata);
    if let Err(e) = streamed {
        // A value the dtype cannot hold, or a failed write: leave nothing behind.
        let _ = std::fs::remove_file(&tmp);
        if created {
            let _ = std::fs::remove_dir(out);
        }
        return Err(e);
    }
    std::fs::rename(&tmp, &path).map_err(|source| MergeError::Io {
        path: path.clone(),
        source,
    })?;
    write_atomically(&out.join(CONFIG_NAME), &pretty(&layout.config)?)?;
    Ok(layout.max_rank)
}

/// The weights file streamed into `tmp`, one tensor encoded at a time.
fn stream_weights(
    tmp: &Path,
    layout: &PeftLayout<'_>,
    modules: &BTreeMap<String, MergedModule>,
    dtype: Dtype,
    metadata: &BTreeMap<String, String>,
) -> Result<(), MergeError> {
    let io = |source| MergeError::Io {
        path: tmp.to_path_buf(),
        source,
    };
    let file = std::fs::File::create(tmp).map_err(io)?;
    let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
    write_safetensors_to(
        &mut w,
        &layout.sizes(dtype),
        metadata,
        |i, buf| layout.encode(modules, dtype, i, buf),
        io,
    )?;
    w.into_inner().map_err(|e| io(e.into_error()))?;
    Ok(())
}

/// Which factor of a merged module a tensor holds (`…T`: transposed, for embeddings).
enum Factor {
    A,
    B,
    AT,
    BT,
}

/// The tensors and config of a PEFT output of factor pairs with scale 1, before any bytes are
/// encoded: each tensor's key, shape, module and factor.
struct PeftLayout<'m> {
    tensors: Vec<(String, Vec<u64>, &'m str, Factor)>,
    config: Value,
    max_rank: usize,
}

impl<'m> PeftLayout<'m> {
    fn of(modules: &'m BTreeMap<String, MergedModule>, template: &ConfigTemplate) -> Self {
        let max_rank = modules.values().map(|m| m.a.rows).max().unwrap_or(1);
        let mut rank_pattern = BTreeMap::new();
        let mut targets = BTreeSet::new();
        let mut tensors = Vec::new();
        for (path, m) in modules {
            let rank = m.a.rows;
            targets.insert(leaf_name(path).to_string());
            if rank != max_rank {
                rank_pattern.insert(path.clone(), rank);
            }
            let key = |suffix: &str| format!("{PEFT_PREFIX}{path}.{suffix}");
            let path = path.as_str();
            match m.kind {
                ModuleKind::Linear => {
                    let a = vec![rank as u64, m.a.cols as u64];
                    let b = vec![m.b.rows as u64, rank as u64];
                    tensors.push((key("lora_A.weight"), a, path, Factor::A));
                    tensors.push((key("lora_B.weight"), b, path, Factor::B));
                }
                ModuleKind::Embedding => {
                    // PEFT: lora_embedding_A [r, num_embeddings] = Bᵀ, lora_embedding_B [dim, r] = Aᵀ.
                    let a = vec![rank as u64, m.b.rows as u64];
                    let b = vec![m.a.cols as u64, rank as u64];
                    tensors.push((key("lora_embedding_A"), a, path, Factor::BT));
                    tensors.push((key("lora_embedding_B"), b, path, Factor::AT));
                }
            }
        }
        let config = json!({
            "peft_type": "LORA",
            "task_type": template.task_type,
            "base_model_name_or_path": template.base_model_name_or_path,
            "revision": template.revision,
            "r": max_rank,
            "lora_alpha": max_rank,
            "rank_pattern": rank_pattern,
            "alpha_pattern": rank_pattern,
            "use_rslora": false,
            "use_dora": false,
            "fan_in_fan_out": template.fan_in_fan_out,
            "target_modules": targets,
            "lora_dropout": 0.0,
            "bias": "none",
            "modules_to_save": null,
            "inference_mode": true,
        });
        Self {
            tensors,
            config,
            max_rank,
        }
    }

    /// Each tensor's name, dtype, shape and byte length, for the safetensors writer.
    fn sizes(&self, dtype: Dtype) -> Vec<(&str, Dtype, &[u64], usize)> {
        self.tensors
            .iter()
            .map(|(n, shape, _, _)| {
                let elements: u64 = shape.iter().product();
                (
                    n.as_str(),
                    dtype,
                    shape.as_slice(),
                    (elements * dtype.size_bytes()) as usize,
                )
            })
            .collect()
    }

    /// Encodes tensor `i` into `out`.
    fn encode(
        &self,
        modules: &BTreeMap<String, MergedModule>,
        dtype: Dtype,
        i: usize,
        out: &mut [u8],
    ) -> Result<(), MergeError> {
        let (_, _, path, factor) = &self.tensors[i];
        let m = &modules[*path];
        let (name, mat) = match factor {
            Factor::A => ("lora_A", m.a()?),
            Factor::B => ("lora_B", m.b()?),
            Factor::BT => ("lora_embedding_A", std::borrow::Cow::Owned(m.b()?.t())),
            Factor::AT => ("lora_embedding_B", std::borrow::Cow::Owned(m.a()?.t())),
        };
        encode_into(&mat, dtype, out, path, name)
    }
}

/// `adapter_model.safetensors` and `adapter_config.json` of factor pairs with scale 1, in
/// memory. Returns them with the largest rank (the config's `r`).
pub fn peft_files(
    modules: &BTreeMap<String, MergedModule>,
    template: &ConfigTemplate,
    dtype: Dtype,
    metadata: &BTreeMap<String, String>,
) -> Result<(OutputFiles, usize), MergeError> {
    let layout = PeftLayout::of(modules, template);
    let weights = write_safetensors_with(&layout.sizes(dtype), metadata, |i, out| {
        layout.encode(modules, dtype, i, out)
    })?;
    let mut files = OutputFiles::default();
    files.push(SAFETENSORS_WEIGHTS_NAME, weights);
    files.push(CONFIG_NAME, pretty(&layout.config)?);
    Ok((files, layout.max_rank))
}

pub fn pretty(v: &Value) -> Result<Vec<u8>, MergeError> {
    serde_json::to_vec_pretty(v).map_err(|e| MergeError::numeric("serialising JSON", e))
}

/// Writes the adapter, the report and the card into `out` (created if needed).
pub fn write_adapter(
    out: &Path,
    inputs: &[LoraAdapter],
    spec: &MergeSpec,
    merged: &Merged,
) -> Result<(), MergeError> {
    let dtype = out_dtype(spec.dtype, inputs);
    let params =
        serde_json::to_value(spec).map_err(|e| MergeError::numeric("serialising the recipe", e))?;
    let metadata: BTreeMap<String, String> = [
        ("format".to_string(), "pt".to_string()),
        ("quiver.method".to_string(), describe(spec)),
        ("quiver.params".to_string(), params.to_string()),
        ("quiver.seed".to_string(), spec.seed.to_string()),
        (
            "quiver.inputs".to_string(),
            input_records(inputs).to_string(),
        ),
    ]
    .into_iter()
    .collect();
    let max_rank = write_peft(
        out,
        &merged.modules,
        &ConfigTemplate::of(inputs),
        dtype,
        &metadata,
    )?;
    let report = json!({
        "method": describe(spec),
        "params": params,
        "seed": spec.seed,
        "inputs": input_records(inputs),
        "output": {"rank": max_rank, "dtype": dtype.as_str(), "modules": merged.modules.len()},
        "seconds": merged.seconds,
        "device": merged.device,
        "peak_rss_bytes": peak_rss_bytes(),
        "modules": merged.reports,
    });
    write_atomically(&out.join(REPORT_NAME), &pretty(&report)?)?;
    write_atomically(
        &out.join(CARD_NAME),
        card(inputs, spec, max_rank, dtype).as_bytes(),
    )
}

/// The process's peak resident memory so far (Linux's `VmHWM`), for the report: in the CLI and
/// in a worker's merge child the process is the merge, so this is the merge's peak, the weights
/// written. `None` where `/proc` does not say.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line
        .trim_start_matches("VmHWM:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

fn card(inputs: &[LoraAdapter], spec: &MergeSpec, rank: usize, dtype: Dtype) -> String {
    let mut s = format!(
        "# Merged LoRA adapter\n\nMade by Quiver `{}` from {} input(s); rank {rank}, {}.\n\n## Recipe\n\n",
        describe(spec),
        inputs.len(),
        dtype.as_str()
    );
    s.push_str(&format!("- method: `{}`\n", spec.method.name()));
    s.push_str(&format!("- compat: `{:?}`\n", spec.compat));
    if let Some(d) = spec.density {
        s.push_str(&format!("- density: {d}\n"));
    }
    if let Some(k) = spec.rank {
        s.push_str(&format!("- rank: {k}\n"));
    }
    if let Some(l) = spec.lambda {
        s.push_str(&format!("- lambda: {l}\n"));
    }
    s.push_str(&format!("- seed: {}\n\n## Inputs\n\n| # | name | weight | adapter_model.safetensors sha256 |\n|---|---|---|---|\n", spec.seed));
    for (i, a) in inputs.iter().enumerate() {
        s.push_str(&format!(
            "| {i} | {} | {} | `{}` |\n",
            a.name,
            spec.weight(i),
            a.weights_sha256
        ));
    }
    s.push_str(
        "\nPer-module ranks, retained energy and truncation errors are in `merge_report.json`.\n",
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn module(kind: ModuleKind, rows: usize, rank: usize, cols: usize, at: f32) -> MergedModule {
        let m = |r: usize, c: usize, s: f32| {
            Mat::new(r, c, (0..r * c).map(|i| s + i as f32 * 0.25).collect())
        };
        MergedModule::exact(kind, m(rows, rank, at), m(rank, cols, -at))
    }

    /// The streamed weights file is byte for byte the in-memory one, for both module kinds and
    /// mixed ranks; a value the dtype cannot hold leaves no file and no directory behind.
    #[test]
    fn streamed_weights_equal_the_in_memory_file() {
        let modules: BTreeMap<String, MergedModule> = [
            (
                "model.layers.0.mlp.up_proj".to_string(),
                module(ModuleKind::Linear, 7, 3, 5, 1.0),
            ),
            (
                "model.layers.0.self_attn.q_proj".to_string(),
                module(ModuleKind::Linear, 5, 2, 5, 2.0),
            ),
            (
                "model.embed_tokens".to_string(),
                module(ModuleKind::Embedding, 11, 3, 4, 3.0),
            ),
        ]
        .into_iter()
        .collect();
        let metadata: BTreeMap<String, String> = [("format".to_string(), "pt".to_string())]
            .into_iter()
            .collect();
        let template = ConfigTemplate::default();
        let dir = tempfile::tempdir().expect("tmp");
        for dtype in [Dtype::F32, Dtype::F16, Dtype::BF16] {
            let out = dir.path().join(dtype.as_str());
            let rank = write_peft(&out, &modules, &template, dtype, &metadata).expect("write");
            let (files, mem_rank) = peft_files(&modules, &template, dtype, &metadata).expect("mem");
            assert_eq!(rank, mem_rank);
            for (name, bytes) in &files.0 {
                let written = std::fs::read(out.join(name)).expect("read");
                assert_eq!(&written, bytes, "{name} in {}", dtype.as_str());
            }
            assert!(!out.join("adapter_model.partial").exists());
        }
        let mut huge = modules;
        huge.insert(
            "model.layers.1.mlp.up_proj".into(),
            MergedModule::exact(
                ModuleKind::Linear,
                Mat::new(1, 1, vec![1.0e6]),
                Mat::new(1, 1, vec![1.0]),
            ),
        );
        let out = dir.path().join("overflow");
        let r = write_peft(&out, &huge, &template, Dtype::F16, &metadata);
        assert!(
            matches!(r, Err(MergeError::NonFiniteResult { .. })),
            "{:?}",
            r.err()
        );
        assert!(!out.exists(), "nothing left behind");
    }
}
