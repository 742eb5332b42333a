//! Reading PEFT adapter directories for merging.
//!
//! [`LoraAdapter::open`] validates a directory once (config, header against config, finite values,
//! no DoRA, sha256 of each file) and keeps only the header; [`LoraAdapter::load_module`] then reads
//! one module's factors at a time, so a merge holds one module of each input in memory.
//!
//! Orientation: every module is returned as `ΔW = scale · B · A` in the `(d_out, d_in)` layout of
//! the delta. For embeddings PEFT stores `A: [r, num_embeddings]`, `B: [dim, r]` and the delta is
//! `scale · (B A)ᵀ`; we return `B' = Aᵀ`, `A' = Bᵀ` so the same formula holds, and
//! [`crate::write`] transposes back.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::MergeError;
use crate::keys::{TensorRole, split_key};
use crate::mat::Mat;
use crate::peft_config::AdapterConfig;
use crate::safetensors::{Dtype, SafetensorsHeader, TensorInfo, header_len, parse_header};
use crate::summary::{CONFIG_NAME, SAFETENSORS_WEIGHTS_NAME, summarize};

/// Linear (and Conv1D with `fan_in_fan_out`, whose factors PEFT keeps in Linear layout) or embedding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModuleKind {
    Linear,
    Embedding,
}

/// Where one module's factors live in the file.
#[derive(Clone, Debug)]
pub struct ModuleEntry {
    pub kind: ModuleKind,
    pub a: TensorInfo,
    pub b: TensorInfo,
    pub rank: usize,
    /// Rows and columns of the delta.
    pub d_out: usize,
    pub d_in: usize,
    pub scale: f64,
}

/// One module's factors in delta orientation; `ΔW = scale · b · a`.
#[derive(Clone, Debug)]
pub struct LoraModule {
    pub kind: ModuleKind,
    /// `r × d_in`.
    pub a: Mat,
    /// `d_out × r`.
    pub b: Mat,
    pub scale: f32,
}

impl LoraModule {
    pub fn rank(&self) -> usize {
        self.a.rows
    }
}

/// A validated PEFT adapter directory.
#[derive(Clone, Debug)]
pub struct LoraAdapter {
    /// The directory's name (how reports and `--extract` name it).
    pub name: String,
    pub dir: PathBuf,
    pub config: AdapterConfig,
    pub header: SafetensorsHeader,
    /// Module path (without `base_model.model.`) → entry.
    pub modules: BTreeMap<String, ModuleEntry>,
    /// Dtype of the LoRA tensors (the first one's, if they differ).
    pub dtype: Dtype,
    /// sha256 of `adapter_config.json` and `adapter_model.safetensors`.
    pub config_sha256: String,
    pub weights_sha256: String,
    weights: PathBuf,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> MergeError + '_ {
    move |source| MergeError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Why a safetensors header could not be read.
enum HeaderError {
    Io(std::io::Error),
    Format(crate::error::FormatError),
}

/// The header of a safetensors file of `file_len` bytes, reading only its first `8 + N` bytes
/// (`N` is bounded by [`crate::safetensors::MAX_HEADER_LEN`]).
fn read_header(file: &File, file_len: u64) -> Result<SafetensorsHeader, HeaderError> {
    let mut first8 = [0u8; 8];
    let got = (file_len.min(8)) as usize;
    file.read_exact_at(&mut first8[..got], 0)
        .map_err(HeaderError::Io)?;
    let n = header_len(&first8[..got]).map_err(HeaderError::Format)?;
    let prefix_len = (8 + n).min(file_len) as usize;
    let mut prefix = vec![0u8; prefix_len];
    file.read_exact_at(&mut prefix, 0)
        .map_err(HeaderError::Io)?;
    parse_header(&prefix, file_len).map_err(HeaderError::Format)
}

/// The sha256 of a file's first `len` bytes, read in 1 MiB chunks.
fn sha256_of(file: &File, len: u64) -> std::io::Result<String> {
    const CHUNK: u64 = 1 << 20;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK as usize];
    let mut offset = 0u64;
    while offset < len {
        let n = CHUNK.min(len - offset) as usize;
        file.read_exact_at(&mut buf[..n], offset)?;
        hasher.update(&buf[..n]);
        offset += n as u64;
    }
    Ok(hex::encode(hasher.finalize()))
}

impl LoraAdapter {
    /// [`LoraAdapter::open`] of every directory, in parallel (hashing and checking 1 GB of inputs
    /// on one core took longer than a GPU merge of them); results in the given order, the first
    /// failure in that order reported.
    pub fn open_all<P: AsRef<Path> + Sync>(dirs: &[P]) -> Result<Vec<Self>, MergeError> {
        use rayon::prelude::*;
        let opened: Vec<Result<Self, MergeError>> =
            dirs.par_iter().map(|d| Self::open(d.as_ref())).collect();
        opened.into_iter().collect()
    }

    /// Validates the directory: config, header against config, finite values, no DoRA.
    pub fn open(dir: &Path) -> Result<Self, MergeError> {
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| dir.display().to_string());
        let config_path = dir.join(CONFIG_NAME);
        let weights = dir.join(SAFETENSORS_WEIGHTS_NAME);
        let config_bytes = std::fs::read(&config_path).map_err(io(&config_path))?;
        let config =
            AdapterConfig::from_json(&config_bytes).map_err(|e| MergeError::input(&name, e))?;
        // The weights are never held whole: the header is read on its own, the file is hashed
        // in chunks, and each LoRA tensor is read alone to check that its values are finite, so
        // opening an adapter costs the largest tensor in memory, not the file.
        let file = File::open(&weights).map_err(io(&weights))?;
        let file_len = file.metadata().map_err(io(&weights))?.len();
        let header = read_header(&file, file_len).map_err(|e| match e {
            HeaderError::Io(source) => MergeError::Io {
                path: weights.clone(),
                source,
            },
            HeaderError::Format(e) => MergeError::input(&name, e),
        })?;
        let weights_sha256 = sha256_of(&file, file_len).map_err(io(&weights))?;
        let summary =
            summarize(&config, &header, file_len).map_err(|e| MergeError::input(&name, e))?;
        if summary.use_dora {
            return Err(MergeError::Unsupported(format!(
                "{name} is a DoRA adapter (use_dora or lora_magnitude_vector); merging DoRA is not supported yet"
            )));
        }
        let mut halves: BTreeMap<&str, (Option<&TensorInfo>, Option<&TensorInfo>, ModuleKind)> =
            BTreeMap::new();
        let mut dtype = None;
        let mut tensor: Vec<u8> = Vec::new();
        for t in &header.tensors {
            let (path, role) = split_key(&t.name);
            let (kind, is_a) = match role {
                TensorRole::A => (ModuleKind::Linear, true),
                TensorRole::B => (ModuleKind::Linear, false),
                TensorRole::EmbA => (ModuleKind::Embedding, true),
                TensorRole::EmbB => (ModuleKind::Embedding, false),
                TensorRole::BBias => {
                    return Err(MergeError::Unsupported(format!(
                        "{name}: {} is a LoRA bias (lora_bias); merging it is not supported yet",
                        t.name
                    )));
                }
                TensorRole::Magnitude | TensorRole::Other => continue,
            };
            if t.shape.len() != 2 {
                return Err(MergeError::Unsupported(format!(
                    "{name}: {} has shape {:?}; only Linear and Embedding LoRA modules can be merged (not Conv)",
                    t.name, t.shape
                )));
            }
            dtype.get_or_insert(t.dtype);
            let (start, end) = header.absolute_range(t);
            tensor.resize((end - start) as usize, 0);
            file.read_exact_at(&mut tensor, start)
                .map_err(io(&weights))?;
            check_finite(&tensor, t.dtype).map_err(|i| MergeError::NonFinite {
                adapter: name.clone(),
                tensor: t.name.clone(),
                index: i,
            })?;
            let slot = halves.entry(path).or_insert((None, None, kind));
            if is_a {
                slot.0 = Some(t);
            } else {
                slot.1 = Some(t);
            }
        }
        let mut modules = BTreeMap::new();
        for (path, (a, b, kind)) in halves {
            // `summarize` has already checked that both halves exist and their ranks agree.
            let (Some(a), Some(b)) = (a, b) else { continue };
            let (rank, d_out, d_in) = match kind {
                ModuleKind::Linear => (a.shape[0], b.shape[0], a.shape[1]),
                ModuleKind::Embedding => (a.shape[0], a.shape[1], b.shape[0]),
            };
            modules.insert(
                path.to_string(),
                ModuleEntry {
                    kind,
                    a: a.clone(),
                    b: b.clone(),
                    rank: rank as usize,
                    d_out: d_out as usize,
                    d_in: d_in as usize,
                    scale: config.scale_for(path),
                },
            );
        }
        Ok(Self {
            name,
            dir: dir.to_path_buf(),
            config,
            dtype: dtype.unwrap_or(Dtype::F32),
            config_sha256: hex::encode(Sha256::digest(&config_bytes)),
            weights_sha256,
            header,
            modules,
            weights,
        })
    }

    /// Per module (path, in file order of the module map): the singular values of its
    /// `ΔW = scale · B · A`, descending, computed from the factors.
    pub fn spectra(&self) -> Result<Vec<(String, Vec<f64>)>, MergeError> {
        use rayon::prelude::*;
        self.modules
            .keys()
            .collect::<Vec<_>>()
            .par_iter()
            .map(|path| {
                let m = self.load_module(path)?.ok_or_else(|| {
                    MergeError::numeric("spectra", format!("module {path} is not in the file"))
                })?;
                let s = crate::linalg::factored_singular_values(&m.b, &m.a)?;
                let scale = f64::from(m.scale).abs();
                Ok(((*path).clone(), s.into_iter().map(|x| x * scale).collect()))
            })
            .collect()
    }

    /// Reads one module's factors (as f32, in delta orientation).
    pub fn load_module(&self, path: &str) -> Result<Option<LoraModule>, MergeError> {
        let Some(e) = self.modules.get(path) else {
            return Ok(None);
        };
        let file = File::open(&self.weights).map_err(io(&self.weights))?;
        let read = |t: &TensorInfo| -> Result<Vec<f32>, MergeError> {
            let (start, end) = self.header.absolute_range(t);
            let mut buf = vec![0u8; (end - start) as usize];
            file.read_exact_at(&mut buf, start)
                .map_err(io(&self.weights))?;
            Ok(decode(&buf, t.dtype))
        };
        let (a_raw, b_raw) = (read(&e.a)?, read(&e.b)?);
        let (a, b) = match e.kind {
            ModuleKind::Linear => (
                Mat::new(e.rank, e.d_in, a_raw),
                Mat::new(e.d_out, e.rank, b_raw),
            ),
            // lora_embedding_A [r, d_out] → B' = Aᵀ; lora_embedding_B [d_in, r] → A' = Bᵀ.
            ModuleKind::Embedding => (
                Mat::new(e.d_in, e.rank, b_raw).t(),
                Mat::new(e.rank, e.d_out, a_raw).t(),
            ),
        };
        Ok(Some(LoraModule {
            kind: e.kind,
            a,
            b,
            scale: e.scale as f32,
        }))
    }
}

/// Little-endian tensor bytes → f32.
pub fn decode(bytes: &[u8], dtype: Dtype) -> Vec<f32> {
    match dtype {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::F64 => bytes
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32)
            .collect(),
        // `summarize` only lets float dtypes through for LoRA tensors.
        _ => Vec::new(),
    }
}

/// Index of the first NaN or infinite value, if any.
fn check_finite(bytes: &[u8], dtype: Dtype) -> Result<(), usize> {
    let bad = match dtype {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .position(|c| !f32::from_le_bytes([c[0], c[1], c[2], c[3]]).is_finite()),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .position(|c| !half::f16::from_le_bytes([c[0], c[1]]).is_finite()),
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .position(|c| !half::bf16::from_le_bytes([c[0], c[1]]).is_finite()),
        Dtype::F64 => bytes.chunks_exact(8).position(|c| {
            !f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]).is_finite()
        }),
        _ => None,
    };
    bad.map_or(Ok(()), Err)
}
