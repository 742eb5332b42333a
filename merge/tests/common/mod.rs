//! Helpers shared by the merge tests: synthetic PEFT adapters on disk and tensor loading.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use quiver_merge::adapter::decode;
use quiver_merge::mat::Mat;
use quiver_merge::{Dtype, LoraAdapter, read_header, write_safetensors};

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

/// One LoRA module of a synthetic adapter: path, A (r×d_in), B (d_out×r).
pub struct Module<'a> {
    pub path: &'a str,
    pub a: Mat,
    pub b: Mat,
}

/// Writes a PEFT adapter directory and opens it.
pub fn adapter(
    dir: &Path,
    name: &str,
    modules: &[Module<'_>],
    alpha: f64,
    rslora: bool,
    extra: serde_json::Value,
) -> LoraAdapter {
    let d = dir.join(name);
    std::fs::create_dir_all(&d).expect("dir");
    let r = modules.iter().map(|m| m.a.rows).max().unwrap_or(1);
    let mut rank_pattern = serde_json::Map::new();
    let mut tensors: Vec<(String, Vec<u64>, Vec<u8>)> = Vec::new();
    for m in modules {
        if m.a.rows != r {
            rank_pattern.insert(m.path.to_string(), m.a.rows.into());
        }
        let bytes = |x: &Mat| {
            x.data
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect::<Vec<u8>>()
        };
        tensors.push((
            format!("base_model.model.{}.lora_A.weight", m.path),
            vec![m.a.rows as u64, m.a.cols as u64],
            bytes(&m.a),
        ));
        tensors.push((
            format!("base_model.model.{}.lora_B.weight", m.path),
            vec![m.b.rows as u64, m.b.cols as u64],
            bytes(&m.b),
        ));
    }
    let views: Vec<(&str, Dtype, &[u64], &[u8])> = tensors
        .iter()
        .map(|(n, s, b)| (n.as_str(), Dtype::F32, s.as_slice(), b.as_slice()))
        .collect();
    std::fs::write(
        d.join("adapter_model.safetensors"),
        write_safetensors(&views, &BTreeMap::new()),
    )
    .expect("write");
    let mut config = serde_json::json!({
        "peft_type": "LORA", "r": r, "lora_alpha": alpha, "use_rslora": rslora,
        "target_modules": modules.iter().map(|m| m.path.rsplit('.').next().unwrap_or(m.path)).collect::<Vec<_>>(),
        "rank_pattern": rank_pattern, "base_model_name_or_path": "test/base"
    });
    if let (Some(c), Some(e)) = (config.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            c.insert(k.clone(), v.clone());
        }
    }
    std::fs::write(
        d.join("adapter_config.json"),
        serde_json::to_vec(&config).expect("json"),
    )
    .expect("write");
    LoraAdapter::open(&d).expect("open synthetic adapter")
}

pub fn mat(rows: usize, cols: usize, data: &[f32]) -> Mat {
    Mat::new(rows, cols, data.to_vec())
}

/// Deterministic pseudo-random matrix.
pub fn random(rows: usize, cols: usize, seed: u64) -> Mat {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let data = (0..rows * cols)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 33) as f32 / (1u64 << 31) as f32) - 0.5
        })
        .collect();
    Mat::new(rows, cols, data)
}

/// Every tensor of a safetensors file as f32 matrices (1-D and 0-D as one row).
pub fn load_tensors(path: &Path) -> BTreeMap<String, Mat> {
    let (header, _) = read_header(path).expect("header");
    let bytes = std::fs::read(path).expect("read");
    header
        .tensors
        .iter()
        .map(|t| {
            let (s, e) = header.absolute_range(t);
            let data = decode(&bytes[s as usize..e as usize], t.dtype);
            let (rows, cols) = match t.shape.as_slice() {
                [r, c] => (*r as usize, *c as usize),
                _ => (1, data.len()),
            };
            (t.name.clone(), Mat::new(rows, cols, data))
        })
        .collect()
}

/// The dense delta `scale·B·A` of every module of an adapter directory (PEFT keys, prefix kept).
pub fn dense_deltas(dir: &Path) -> BTreeMap<String, Mat> {
    let a = LoraAdapter::open(dir).expect("open");
    a.modules
        .keys()
        .map(|p| {
            let m = a.load_module(p).expect("load").expect("module");
            (p.clone(), m.b.clone().scale(m.scale).matmul_naive(&m.a))
        })
        .collect()
}

/// The device the engine tests run on: the CPU, or the GPU when `QUIVER_TEST_DEVICE=cuda` (a
/// `--features cuda` build run on a GPU machine: the same expectations then hold for the GPU
/// paths).
pub fn device() -> candle_core::Device {
    match std::env::var("QUIVER_TEST_DEVICE").as_deref() {
        Ok("cuda") => {
            candle_core::Device::new_cuda(0).expect("QUIVER_TEST_DEVICE=cuda needs a GPU")
        }
        _ => candle_core::Device::Cpu,
    }
}
