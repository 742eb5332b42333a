//! Validation of an adapter's tensors against its config, and the summary stored by the
//! registry.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Read;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::FormatError;
use crate::keys::{TensorRole, leaf_name, split_key};
use crate::peft_config::{AdapterConfig, pattern_matches};
use crate::safetensors::{Dtype, SafetensorsHeader, TensorInfo, read_header};

/// Name of the config file in a PEFT adapter directory.
pub const CONFIG_NAME: &str = "adapter_config.json";
/// Name of the weights file in a PEFT adapter directory.
pub const SAFETENSORS_WEIGHTS_NAME: &str = "adapter_model.safetensors";
/// Name of the legacy pickled weights file, which is refused.
pub const LEGACY_WEIGHTS_NAME: &str = "adapter_model.bin";
/// Largest `adapter_config.json` accepted anywhere (uploads, [`inspect_path`]); real ones are a
/// few KiB.
pub const MAX_CONFIG_LEN: u64 = 1024 * 1024;
/// Extensions of pickle files (lower case), which can run code when loaded: refused everywhere.
pub const PICKLE_EXTENSIONS: &[&str] = &["bin", "pt", "pth", "pkl", "pickle", "ckpt"];

/// Whether a file name has a pickle extension (case-insensitive).
pub fn is_pickle_name(name: &str) -> bool {
    name.rsplit_once('.').is_some_and(|(_, ext)| {
        PICKLE_EXTENSIONS
            .iter()
            .any(|p| ext.eq_ignore_ascii_case(p))
    })
}

/// What the registry records about a validated LoRA adapter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraSummary {
    /// Always `"LORA"`.
    pub peft_type: String,
    /// Default rank from the config.
    pub r: u64,
    /// Default alpha from the config.
    pub lora_alpha: f64,
    /// rsLoRA scaling (`α/√r`).
    pub use_rslora: bool,
    /// DoRA: set by the config or by the presence of `lora_magnitude_vector` tensors.
    pub use_dora: bool,
    /// Sorted, unique leaf names of the modules that have LoRA pairs (e.g. `"q_proj"`).
    pub target_modules: Vec<String>,
    /// Per-module rank overrides from the config.
    pub rank_pattern: BTreeMap<String, u64>,
    /// Per-module alpha overrides from the config.
    pub alpha_pattern: BTreeMap<String, f64>,
    /// Total number of elements of all tensors in the file.
    pub n_params: u64,
    /// Dtype name of the LoRA tensors, or `"mixed"`.
    pub dtype: String,
    /// Size of the safetensors file in bytes.
    pub size: u64,
    /// Number of modules with a LoRA pair.
    pub n_modules: u64,
    /// `base_model_name_or_path` from the config.
    pub base_model: Option<String>,
    /// Per target (leaf name): the distinct `[d_out, d_in]` of its modules (embeddings: `[dim,
    /// num_embeddings]`), so that adapters can be checked for compatibility without their
    /// weights. Absent in summaries stored before it existed.
    #[serde(default)]
    pub module_shapes: BTreeMap<String, Vec<[u64; 2]>>,
    /// `modules_to_save` from the config: modules stored whole besides the LoRA pairs. Absent in
    /// summaries stored before it existed.
    #[serde(default)]
    pub modules_to_save: Vec<String>,
    /// The largest rank of any module (`r` or a `rank_pattern` value that matched). 0 in
    /// summaries stored before it existed.
    #[serde(default)]
    pub max_rank: u64,
}

/// The LoRA tensors of one module.
#[derive(Default)]
struct ModuleTensors<'a> {
    a: Option<&'a TensorInfo>,
    b: Option<&'a TensorInfo>,
    emb_a: Option<&'a TensorInfo>,
    emb_b: Option<&'a TensorInfo>,
    magnitude: Option<&'a TensorInfo>,
    b_bias: Option<&'a TensorInfo>,
}

impl<'a> ModuleTensors<'a> {
    fn slot(&mut self, role: TensorRole) -> Option<&mut Option<&'a TensorInfo>> {
        match role {
            TensorRole::A => Some(&mut self.a),
            TensorRole::B => Some(&mut self.b),
            TensorRole::EmbA => Some(&mut self.emb_a),
            TensorRole::EmbB => Some(&mut self.emb_b),
            TensorRole::Magnitude => Some(&mut self.magnitude),
            TensorRole::BBias => Some(&mut self.b_bias),
            TensorRole::Other => None,
        }
    }

    fn all(&self) -> impl Iterator<Item = &'a TensorInfo> {
        [
            self.a,
            self.b,
            self.emb_a,
            self.emb_b,
            self.magnitude,
            self.b_bias,
        ]
        .into_iter()
        .flatten()
    }
}

fn bad(msg: impl Into<String>) -> FormatError {
    FormatError::InvalidAdapter(msg.into())
}

fn shape_str(shape: &[u64]) -> String {
    let dims: Vec<String> = shape.iter().map(u64::to_string).collect();
    format!("[{}]", dims.join(", "))
}

/// Groups the LoRA tensors of a header by module path (rejecting two tensors with one role).
fn group_modules(
    header: &SafetensorsHeader,
) -> Result<BTreeMap<&str, ModuleTensors<'_>>, FormatError> {
    let mut modules: BTreeMap<&str, ModuleTensors<'_>> = BTreeMap::new();
    for t in &header.tensors {
        let (path, role) = split_key(&t.name);
        let entry = modules.entry(path);
        if let Some(slot) = entry.or_default().slot(role) {
            if let Some(prev) = slot {
                return Err(bad(format!(
                    "tensors {:?} and {:?} are both the {} of module {path:?}; keep only one.",
                    prev.name,
                    t.name,
                    role.suffix()
                )));
            }
            *slot = Some(t);
        }
    }
    modules.retain(|_, m| m.all().next().is_some());
    Ok(modules)
}

fn check_module(
    config: &AdapterConfig,
    path: &str,
    m: &ModuleTensors<'_>,
) -> Result<(), FormatError> {
    let linear = m.a.is_some() || m.b.is_some();
    let embedding = m.emb_a.is_some() || m.emb_b.is_some();
    if linear && embedding {
        return Err(bad(format!(
            "module {path:?} has both lora_A/lora_B and lora_embedding_A/lora_embedding_B \
             tensors; a module is either a linear/conv layer or an embedding."
        )));
    }
    let (a, b, a_name, b_name) = match (m.a, m.b, m.emb_a, m.emb_b) {
        (Some(a), Some(b), _, _) => (a, b, "lora_A", "lora_B"),
        (_, _, Some(a), Some(b)) => (a, b, "lora_embedding_A", "lora_embedding_B"),
        (Some(t), None, _, _)
        | (None, Some(t), _, _)
        | (_, _, Some(t), None)
        | (_, _, None, Some(t)) => {
            let (have, missing) = match split_key(&t.name).1 {
                TensorRole::A => ("lora_A", "lora_B.weight"),
                TensorRole::B => ("lora_B", "lora_A.weight"),
                TensorRole::EmbA => ("lora_embedding_A", "lora_embedding_B"),
                _ => ("lora_embedding_B", "lora_embedding_A"),
            };
            return Err(bad(format!(
                "module {path:?} has {have} (tensor {:?}) but no {missing}; both halves of a \
                 LoRA pair must be present (expected a tensor named \"{path}.{missing}\").",
                t.name
            )));
        }
        (None, None, None, None) => {
            let t = m.magnitude.or(m.b_bias).map_or("", |t| t.name.as_str());
            return Err(bad(format!(
                "tensor {t:?} belongs to module {path:?}, which has no lora_A/lora_B pair."
            )));
        }
    };

    for t in m.all() {
        if !matches!(t.dtype, Dtype::F16 | Dtype::BF16 | Dtype::F32 | Dtype::F64) {
            return Err(bad(format!(
                "tensor {:?} has dtype {}; LoRA weights must be F16, BF16, F32 or F64.",
                t.name, t.dtype
            )));
        }
    }

    let conv_ok = |t: &TensorInfo| (2..=5).contains(&t.shape.len());
    if embedding {
        if a.shape.len() != 2 {
            return Err(bad(format!(
                "tensor {:?} ({a_name} of module {path:?}) has shape {}; expected [r, \
                 num_embeddings].",
                a.name,
                shape_str(&a.shape)
            )));
        }
        if b.shape.len() != 2 {
            return Err(bad(format!(
                "tensor {:?} ({b_name} of module {path:?}) has shape {}; expected \
                 [embedding_dim, r].",
                b.name,
                shape_str(&b.shape)
            )));
        }
    } else {
        if !conv_ok(a) {
            return Err(bad(format!(
                "tensor {:?} ({a_name} of module {path:?}) has shape {}; expected [r, d_in] (or \
                 [r, in_channels, kernel…] for a convolution).",
                a.name,
                shape_str(&a.shape)
            )));
        }
        let trailing_ones = b.shape.get(2..).is_some_and(|d| d.iter().all(|&x| x == 1));
        if b.shape.len() != a.shape.len() || !trailing_ones {
            return Err(bad(format!(
                "tensor {:?} ({b_name} of module {path:?}) has shape {}; expected {} to match \
                 {a_name} of shape {}.",
                b.name,
                shape_str(&b.shape),
                if a.shape.len() == 2 {
                    "[d_out, r]".to_string()
                } else {
                    format!("[out_channels, r{}]", ", 1".repeat(a.shape.len() - 2))
                },
                shape_str(&a.shape)
            )));
        }
    }
    // Both shapes have at least two dimensions here.
    let (rank_a, rank_b, d_out) = match (a.shape.first(), b.shape.get(1), b.shape.first()) {
        (Some(&ra), Some(&rb), Some(&d)) => (ra, rb, d),
        _ => return Err(bad(format!("module {path:?} has malformed LoRA shapes."))),
    };
    if rank_a != rank_b {
        return Err(bad(format!(
            "module {path:?} has {a_name} of rank {rank_a} (shape {}) but {b_name} of rank \
             {rank_b} (shape {}); the two halves must have the same rank.",
            shape_str(&a.shape),
            shape_str(&b.shape)
        )));
    }
    if rank_a == 0 {
        return Err(bad(format!(
            "module {path:?} has rank 0 (tensor {:?}); a LoRA rank must be at least 1.",
            a.name
        )));
    }
    let config_rank = config.rank_for(path);
    if rank_a != config_rank {
        let source = match config
            .rank_pattern
            .iter()
            .find(|(k, _)| pattern_matches(k, path))
        {
            Some((k, _)) => format!("rank_pattern key {k:?}"),
            None => "`r`".to_string(),
        };
        return Err(FormatError::AdapterMismatch(format!(
            "module {path:?} has rank {rank_a} in its tensors ({:?} has shape {}) but the config \
             gives rank {config_rank} (from {source}); fix `r`/`rank_pattern` in \
             adapter_config.json.",
            a.name,
            shape_str(&a.shape)
        )));
    }

    if let Some(mag) = m.magnitude
        && mag.n_elements() != d_out
    {
        return Err(bad(format!(
            "tensor {:?} (DoRA magnitude of module {path:?}) has shape {} but the module's \
             output dimension is {d_out}.",
            mag.name,
            shape_str(&mag.shape)
        )));
    }
    if let Some(bias) = m.b_bias
        && bias.shape != [d_out]
    {
        return Err(bad(format!(
            "tensor {:?} (lora_B bias of module {path:?}) has shape {}; expected [{d_out}].",
            bias.name,
            shape_str(&bias.shape)
        )));
    }
    Ok(())
}

/// Validates a parsed header against a config and summarizes the adapter.
///
/// Checks, per module: both halves of every LoRA pair are present; shapes are `A = [r, d_in]`
/// (conv `[r, in, k…]`), `B = [d_out, r]` (conv `[out, r, 1…]`), embedding `A = [r, n]`,
/// `B = [dim, r]`; the two ranks agree and equal `config.rank_for(module)`; LoRA tensors are
/// F16/BF16/F32/F64; DoRA magnitudes and `lora_B.bias` have `d_out` elements. At least one pair
/// must exist. Other tensors (e.g. `modules_to_save`) are allowed and counted in `n_params`.
pub fn summarize(
    config: &AdapterConfig,
    header: &SafetensorsHeader,
    file_size: u64,
) -> Result<LoraSummary, FormatError> {
    let modules = group_modules(header)?;
    if modules.is_empty() {
        return Err(no_lora_tensors(header));
    }

    let mut dtypes = BTreeSet::new();
    let mut leaves = BTreeSet::new();
    let mut module_shapes: BTreeMap<String, BTreeSet<[u64; 2]>> = BTreeMap::new();
    let mut use_dora = config.use_dora;
    for (path, m) in &modules {
        check_module(config, path, m)?;
        dtypes.extend(m.all().map(|t| t.dtype));
        leaves.insert(leaf_name(path).to_string());
        use_dora |= m.magnitude.is_some();
        // check_module saw both halves with at least two dimensions each.
        if let (Some(a), Some(b)) = (m.a.or(m.emb_a), m.b.or(m.emb_b))
            && let (Some(&d_out), Some(&d_in)) = (b.shape.first(), a.shape.get(1))
        {
            module_shapes
                .entry(leaf_name(path).to_string())
                .or_default()
                .insert([d_out, d_in]);
        }
    }
    let dtype = match (dtypes.first(), dtypes.len()) {
        (Some(d), 1) => d.as_str().to_string(),
        _ => "mixed".to_string(),
    };
    let n_params = header
        .tensors
        .iter()
        .fold(0u64, |acc, t| acc.saturating_add(t.n_elements()));

    let mut rank_pattern = BTreeMap::new();
    for (k, v) in &config.rank_pattern {
        rank_pattern.entry(k.clone()).or_insert(*v);
    }
    let mut alpha_pattern = BTreeMap::new();
    for (k, v) in &config.alpha_pattern {
        alpha_pattern.entry(k.clone()).or_insert(*v);
    }

    Ok(LoraSummary {
        peft_type: config.peft_type.clone(),
        r: config.r,
        lora_alpha: config.lora_alpha,
        use_rslora: config.use_rslora,
        use_dora,
        target_modules: leaves.into_iter().collect(),
        rank_pattern,
        alpha_pattern,
        n_params,
        dtype,
        size: file_size,
        n_modules: modules.len() as u64,
        base_model: config.base_model_name_or_path.clone(),
        module_shapes: module_shapes
            .into_iter()
            .map(|(k, v)| (k, v.into_iter().collect()))
            .collect(),
        modules_to_save: config.modules_to_save.clone(),
        // check_module checked every pair's rank against the config.
        max_rank: modules
            .values()
            .filter_map(|m| m.a.or(m.emb_a).and_then(|t| t.shape.first().copied()))
            .max()
            .unwrap_or(config.r),
    })
}

fn no_lora_tensors(header: &SafetensorsHeader) -> FormatError {
    let names = || header.tensors.iter().map(|t| t.name.as_str());
    let hint = if names().any(|n| n.contains("lora_down") || n.contains("lora_up")) {
        " The names look like a kohya-ss LoRA (lora_down/lora_up); convert it to PEFT format."
            .to_string()
    } else if names().any(|n| n.contains("hada_") || n.contains("lokr_")) {
        " The names look like a LyCORIS LoHa/LoKr adapter, which is not LoRA.".to_string()
    } else if let Some(n) = names().next() {
        format!(" The first tensor is named {n:?}.")
    } else {
        " The file has no tensors at all.".to_string()
    };
    bad(format!(
        "no LoRA tensors found: PEFT LoRA tensors are named \"<module>.lora_A.weight\" and \
         \"<module>.lora_B.weight\" (or \"<module>.lora_embedding_A\"/\"_B\").{hint}"
    ))
}

/// Builds the config assumed for a bare `.safetensors` file with no `adapter_config.json`.
///
/// `peft_type` is `"LORA"`; `r` is the most common rank among the LoRA pairs (ties: the smallest;
/// 8 if there are none); modules with another rank get an exact-path `rank_pattern` entry. Alpha
/// equals the rank for every module (`lora_alpha = r`, plus matching `alpha_pattern` entries), so
/// every module's scale is 1. `use_dora` is set when magnitude tensors are present; the base
/// model is unknown.
pub fn infer_config(header: &SafetensorsHeader) -> AdapterConfig {
    let mut ranks: Vec<(&str, u64)> = Vec::new();
    let mut use_dora = false;
    if let Ok(modules) = group_modules(header) {
        for (path, m) in &modules {
            use_dora |= m.magnitude.is_some();
            let rank =
                m.a.or(m.emb_a)
                    .and_then(|t| t.shape.first().copied())
                    .or_else(|| m.b.or(m.emb_b).and_then(|t| t.shape.get(1).copied()));
            if let Some(rank) = rank {
                ranks.push((path, rank));
            }
        }
    }
    let mut counts: BTreeMap<u64, usize> = BTreeMap::new();
    for (_, r) in &ranks {
        *counts.entry(*r).or_default() += 1;
    }
    // max_by_key returns the last maximum; iterate in descending rank so ties pick the smallest.
    let r = counts
        .iter()
        .rev()
        .max_by_key(|(_, c)| **c)
        .map_or(8, |(r, _)| *r);

    // Longest paths first, so an exact-path key is never shadowed by a shorter suffix key.
    let mut others: Vec<(&str, u64)> = ranks.into_iter().filter(|(_, k)| *k != r).collect();
    others.sort_by(|x, y| y.0.len().cmp(&x.0.len()).then(x.0.cmp(y.0)));
    let rank_pattern: Vec<(String, u64)> =
        others.iter().map(|(p, k)| (regex::escape(p), *k)).collect();
    let alpha_pattern = rank_pattern
        .iter()
        .map(|(p, k)| (p.clone(), *k as f64))
        .collect();

    AdapterConfig {
        r,
        lora_alpha: r as f64,
        use_dora,
        rank_pattern,
        alpha_pattern,
        ..AdapterConfig::default()
    }
}

/// Validates and summarizes an adapter on disk.
///
/// `path` is either a PEFT adapter directory (`adapter_config.json` + `adapter_model.safetensors`)
/// or a lone `.safetensors` file, whose config is then inferred by [`infer_config`] (rank from the
/// tensors, `lora_alpha = r`, `peft_type = "LORA"`). Only the header of the safetensors file is
/// read, never its tensor data. Pickled weights (`adapter_model.bin`, `.bin`, `.pt`, `.pth`,
/// `.ckpt`) are refused with [`FormatError::UnsupportedFormat`].
pub fn inspect_path(path: &Path) -> Result<LoraSummary, FormatError> {
    let meta = fs::metadata(path).map_err(|e| FormatError::io(path, e))?;
    if meta.is_dir() {
        let weights = path.join(SAFETENSORS_WEIGHTS_NAME);
        if !weights.exists() && path.join(LEGACY_WEIGHTS_NAME).exists() {
            return Err(pickle_refused(&path.join(LEGACY_WEIGHTS_NAME)));
        }
        let config_path = path.join(CONFIG_NAME);
        let config = AdapterConfig::from_json(&read_config(&config_path)?)?;
        let (header, size) = read_header(&weights)?;
        summarize(&config, &header, size)
    } else {
        if path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(is_pickle_name)
        {
            return Err(pickle_refused(path));
        }
        let (header, size) = read_header(path)?;
        summarize(&infer_config(&header), &header, size)
    }
}

fn pickle_refused(path: &Path) -> FormatError {
    FormatError::UnsupportedFormat(format!(
        "{} is a pickled PyTorch file, which is never loaded for safety; save the adapter with \
         safetensors (PEFT: save_pretrained(..., safe_serialization=True)) and upload \
         {SAFETENSORS_WEIGHTS_NAME}.",
        path.display()
    ))
}

fn read_config(path: &Path) -> Result<Vec<u8>, FormatError> {
    let file = fs::File::open(path).map_err(|e| FormatError::io(path, e))?;
    let mut bytes = Vec::new();
    file.take(MAX_CONFIG_LEN + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| FormatError::io(path, e))?;
    if bytes.len() as u64 > MAX_CONFIG_LEN {
        return Err(FormatError::InvalidAdapterConfig(format!(
            "{} is larger than {MAX_CONFIG_LEN} bytes; a PEFT config is a few KiB.",
            path.display()
        )));
    }
    Ok(bytes)
}
