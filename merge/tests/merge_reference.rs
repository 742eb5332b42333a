//! The CPU merge engine against an independent float64 reference
//! (tests/fixtures/merge_reference, made by scripts/make_merge_reference_fixtures.py with numpy
//! only): paper `ties` (density 0.3, 0.7 with weights and λ, 0.5 with `frequency`), paper
//! `dare_linear`, `dare_ties` and `magnitude_prune`, and `--compat peft` `dare_linear` /
//! `dare_ties` (PEFT's factor route) and `dare_linear_svd` / `dare_ties_svd` (dense). DARE's
//! masks in the reference are drawn by the script's own ChaCha8 from the recorded seed; the first
//! tests below pin that Python ChaCha8 (and the seed derivation) to the Rust generator the engine
//! uses, so a disagreement between the two shows up there first.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use quiver_merge::host::delta_into;
use quiver_merge::mat::Mat;
use quiver_merge::sparsify::{Pruner, derive_seed, threshold_of};
use quiver_merge::spec::Pruning;
use quiver_merge::{Compat, Dtype, LoraAdapter, MergeSpec, merge, read_header};
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::Value;

/// Relative Frobenius error allowed between the engine's merged `B·A` and the float64 reference.
/// The engine reads f32 factors and works in f32: each input's ΔW = s·B·A is accumulated in f32
/// (inner size r ≤ 8: ≲ r·2⁻²⁴ ≈ 5e-7 relative per entry), pruning/averaging are f32 sums of ≤ 4
/// terms, and the dense routes' exact SVD (f64) is written back as f32 factors (≈ 2⁻²⁴·√rank
/// relative). That is a few 1e-7 in all; 1e-5 leaves a wide margin, while any change of
/// semantics (a different kept set, elected sign, weight or mask) moves whole entries and gives
/// errors of 1e-3 and more. The script also checks that no decision (threshold, elected sign,
/// sign of a kept entry) lies within f32 error of its boundary, so f32 vs f64 cannot flip one.
const TOLERANCE: f64 = 1e-5;

fn root() -> PathBuf {
    common::fixtures().join("merge_reference")
}

fn cases() -> Value {
    serde_json::from_slice(&std::fs::read(root().join("cases.json")).expect("cases.json"))
        .expect("json")
}

/// One tensor of a safetensors file as stored (the fixtures hold F64, U8 and U32 tensors, which
/// `common::load_tensors` would turn into f32).
struct Raw {
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl Raw {
    fn f64s(&self) -> Vec<f64> {
        assert_eq!(self.dtype, Dtype::F64);
        self.bytes
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
            .collect()
    }

    fn u32s(&self) -> Vec<u32> {
        assert_eq!(self.dtype, Dtype::U32);
        self.bytes
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    }

    fn flags(&self) -> Vec<bool> {
        assert_eq!(self.dtype, Dtype::U8);
        self.bytes.iter().map(|&b| b != 0).collect()
    }
}

fn raw_tensors(path: &Path) -> BTreeMap<String, Raw> {
    let (header, _) = read_header(path).expect("header");
    let bytes = std::fs::read(path).expect("read");
    header
        .tensors
        .iter()
        .map(|t| {
            let (s, e) = header.absolute_range(t);
            (
                t.name.clone(),
                Raw {
                    dtype: t.dtype,
                    shape: t.shape.iter().map(|&x| x as usize).collect(),
                    bytes: bytes[s as usize..e as usize].to_vec(),
                },
            )
        })
        .collect()
}

fn name(case: &Value) -> &str {
    case["case"].as_str().expect("case name")
}

fn inputs_of(case: &Value) -> Vec<LoraAdapter> {
    case["inputs"]
        .as_array()
        .expect("inputs")
        .iter()
        .map(|n| {
            LoraAdapter::open(&root().join("inputs").join(n.as_str().expect("input name")))
                .expect("input adapter")
        })
        .collect()
}

fn spec_of(case: &Value) -> MergeSpec {
    MergeSpec::from_json(case["spec"].clone())
        .unwrap_or_else(|e| panic!("{}: spec: {e}", name(case)))
}

/// `b · a` accumulated in f64 (so the comparison measures the engine, not this product).
fn product_f64(b: &Mat, a: &Mat) -> Vec<f64> {
    assert_eq!(b.cols, a.rows, "inner sizes");
    let mut out = vec![0.0f64; b.rows * a.cols];
    for i in 0..b.rows {
        for k in 0..b.cols {
            let x = f64::from(b.at(i, k));
            for j in 0..a.cols {
                out[i * a.cols + j] += x * f64::from(a.at(k, j));
            }
        }
    }
    out
}

fn rel_err_f64(got: &[f64], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len(), "sizes");
    let num: f64 = got.iter().zip(want).map(|(g, w)| (g - w).powi(2)).sum();
    let den: f64 = want.iter().map(|w| w * w).sum();
    (num / den).sqrt()
}

#[test]
fn chacha8_stream_and_key_expansion_match_the_python_reference() {
    let doc = cases();
    let ch = &doc["chacha8"];
    let words = raw_tensors(&root().join(ch["file"].as_str().expect("file")));
    let n = ch["words"].as_u64().expect("words") as usize;
    assert!(n >= 2048, "only {n} words recorded");
    let seeds = ch["seeds"].as_array().expect("seeds");
    assert!(seeds.len() >= 2, "{seeds:?}");
    for s in seeds {
        let text = s.as_str().expect("seed");
        let seed: u64 = text.parse().expect("u64 seed");
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        // Key expansion: rand_core's seed_from_u64 (PCG32) → 8 little-endian key words.
        let key: Vec<u64> = rng
            .get_seed()
            .chunks_exact(4)
            .map(|c| u64::from(u32::from_le_bytes([c[0], c[1], c[2], c[3]])))
            .collect();
        let want_key: Vec<u64> = ch["key_words"][text]
            .as_array()
            .expect("key words")
            .iter()
            .map(|w| w.as_u64().expect("word"))
            .collect();
        assert_eq!(key, want_key, "seed {seed}: key expansion");
        // The stream: word i is word i mod 16 of the block with counter ⌊i/16⌋, stream 0.
        let want = words[&format!("words.{seed}")].u32s();
        assert_eq!(want.len(), n);
        for (i, w) in want.iter().enumerate() {
            assert_eq!(
                rng.next_u32(),
                *w,
                "seed {seed}: word {i} (block {}, word {})",
                i / 16,
                i % 16
            );
        }
    }
}

#[test]
fn derived_seeds_match_the_python_reference() {
    let doc = cases();
    let table = doc["derived_seeds"].as_array().expect("derived seeds");
    assert!(table.len() >= 20, "only {} derived seeds", table.len());
    let mut tags = std::collections::BTreeSet::new();
    for d in table {
        let tag = d["tag"].as_str().expect("tag");
        tags.insert(tag.to_string());
        assert_eq!(
            derive_seed(
                d["seed"].as_u64().expect("seed"),
                d["module"].as_str().expect("module"),
                d["input"].as_u64().expect("input") as usize,
                tag
            ),
            d["value"].as_u64().expect("value"),
            "{d}"
        );
    }
    assert_eq!(tags.into_iter().collect::<Vec<_>>(), ["A", "B", "delta"]);
}

#[test]
fn engine_matches_the_float64_reference() {
    let doc = cases();
    let mut compared = 0;
    let mut worst = (0.0f64, String::new());
    for case in doc["cases"].as_array().expect("cases") {
        let case_name = name(case);
        let inputs = inputs_of(case);
        let spec = spec_of(case);
        let merged = merge(&inputs, &spec, &common::device(), &|_, _| {})
            .unwrap_or_else(|e| panic!("{case_name}: {e}"));
        let expected: BTreeMap<String, Raw> =
            raw_tensors(&root().join(case["file"].as_str().expect("file")))
                .into_iter()
                .filter_map(|(k, v)| k.strip_suffix(".delta").map(|p| (p.to_string(), v)))
                .collect();
        assert_eq!(
            merged.modules.keys().collect::<Vec<_>>(),
            expected.keys().collect::<Vec<_>>(),
            "{case_name}: module set"
        );
        for (path, want) in &expected {
            let m = &merged.modules[path];
            assert_eq!(
                (m.b.rows, m.a.cols),
                (want.shape[0], want.shape[1]),
                "{case_name} {path}: shape"
            );
            let got = product_f64(&m.b, &m.a);
            let err = rel_err_f64(&got, &want.f64s());
            assert!(
                err <= TOLERANCE,
                "{case_name} {path}: relative Frobenius error {err:.3e} > {TOLERANCE:.0e}"
            );
            if err > worst.0 {
                worst = (err, format!("{case_name} {path}"));
            }
            compared += 1;
        }
        // Nothing was truncated (rank ≥ min(d_out, d_in), or PEFT's exact factor route).
        for r in &merged.reports {
            assert!(
                r.relative_error <= 1e-6,
                "{case_name} {}: truncation error {} (route {})",
                r.module,
                r.relative_error,
                r.route
            );
        }
    }
    assert!(compared >= 30, "only {compared} module deltas compared");
    eprintln!("worst relative error {:.3e} ({})", worst.0, worst.1);
}

/// Every recorded kept set (magnitude trims and DARE masks, per input, module and tensor) is the
/// one the engine's pruner produces on the engine's own f32 tensor with the engine's seed.
#[test]
fn pruned_sets_match_the_reference_exactly() {
    let doc = cases();
    let mut checked = 0;
    let mut tags = std::collections::BTreeSet::new();
    for case in doc["cases"].as_array().expect("cases") {
        let case_name = name(case);
        let inputs = inputs_of(case);
        let spec = spec_of(case);
        let kind = spec.method.pruning();
        assert_ne!(kind, Pruning::None, "{case_name}: every case prunes");
        let density = spec.effective_density();
        for (key, want) in raw_tensors(&root().join(case["file"].as_str().expect("file"))) {
            let Some((path, rest)) = key.split_once(".keep.") else {
                continue;
            };
            let (tag, index) = rest.split_once('.').expect("<tag>.<input>");
            let index: usize = index.parse().expect("input index");
            let module = inputs[index]
                .load_module(path)
                .expect("load")
                .expect("module present");
            let mut buf = Vec::new();
            match tag {
                "delta" => {
                    delta_into(&module, &mut buf);
                }
                "A" => buf.extend_from_slice(&module.a.data),
                "B" => buf.extend_from_slice(&module.b.data),
                other => panic!("{case_name}: unknown tag {other}"),
            }
            assert_eq!(
                buf.len(),
                want.shape.iter().product::<usize>(),
                "{case_name} {key}"
            );
            let k = (density * buf.len() as f64).floor() as u64;
            let seed = derive_seed(spec.seed, path, index, tag);
            Pruner::new(
                kind,
                threshold_of(&buf, k),
                spec.compat == Compat::Peft,
                density,
                seed,
            )
            .apply(&mut buf);
            let got: Vec<bool> = buf.iter().map(|x| *x != 0.0).collect();
            let want = want.flags();
            let wrong: Vec<usize> = (0..got.len()).filter(|&i| got[i] != want[i]).collect();
            assert!(
                wrong.is_empty(),
                "{case_name} {key}: {} of {} entries differ from the reference (first at {}); kept {} vs {}",
                wrong.len(),
                got.len(),
                wrong[0],
                got.iter().filter(|x| **x).count(),
                want.iter().filter(|x| **x).count()
            );
            if kind == Pruning::Magnitude && spec.compat == Compat::Peft {
                assert_eq!(got.iter().filter(|x| **x).count() as u64, k, "exactly k");
            }
            tags.insert(tag.to_string());
            checked += 1;
        }
    }
    assert_eq!(tags.into_iter().collect::<Vec<_>>(), ["A", "B", "delta"]);
    assert!(checked >= 60, "only {checked} kept sets compared");
}

/// Magnitude pruning (TIES and `magnitude_prune`): the merged delta is non-zero exactly where
/// the reference is — the kept set survives the engine's whole route (combine, SVD, f32 factors),
/// with the dropped entries orders of magnitude below the smallest kept one.
#[test]
fn magnitude_pruned_supports_are_exact() {
    let doc = cases();
    let mut checked = 0;
    for case in doc["cases"].as_array().expect("cases") {
        let spec = spec_of(case);
        if spec.method.pruning() != Pruning::Magnitude {
            continue;
        }
        let case_name = name(case);
        let merged = merge(&inputs_of(case), &spec, &common::device(), &|_, _| {})
            .unwrap_or_else(|e| panic!("{case_name}: {e}"));
        for (key, want) in raw_tensors(&root().join(case["file"].as_str().expect("file"))) {
            let Some(path) = key.strip_suffix(".delta") else {
                continue;
            };
            let want = want.f64s();
            let m = &merged.modules[path];
            let got = product_f64(&m.b, &m.a);
            let support = want.iter().filter(|w| **w != 0.0).count();
            assert!(
                support > 0 && support < want.len(),
                "{case_name} {path}: support {support}"
            );
            let kept_min = (0..got.len())
                .filter(|&i| want[i] != 0.0)
                .map(|i| got[i].abs())
                .fold(f64::INFINITY, f64::min);
            let dropped_max = (0..got.len())
                .filter(|&i| want[i] == 0.0)
                .map(|i| got[i].abs())
                .fold(0.0, f64::max);
            assert!(
                kept_min > 100.0 * dropped_max,
                "{case_name} {path}: smallest kept |x| {kept_min:.3e} vs largest dropped {dropped_max:.3e}"
            );
            checked += 1;
        }
    }
    assert!(checked >= 12, "only {checked} modules checked");
}
