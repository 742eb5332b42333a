//! The GPU paths against the CPU ones (feature `cuda`; run on a GPU machine: see
//! docs/gpu.md). Tolerances: exact methods ≤ 1e-5 relative Frobenius; pruning methods the same
//! kept set (bit for bit where both devices compute the same deltas, all but a few entries at
//! the threshold otherwise); truncation errors within 1 % of the CPU's.
#![cfg(feature = "cuda")]

mod common;

use candle_core::Device;
use quiver_merge::adapter::{LoraModule, ModuleKind};
use quiver_merge::context::{ModuleContext, Present};
use quiver_merge::mat::Mat;
use quiver_merge::methods::dense_combination;
use quiver_merge::{Compat, MajoritySign, MergeSpec, Method, merge};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use common::{Module, adapter};

fn gpu() -> Device {
    Device::new_cuda(0).expect("these tests need a CUDA GPU")
}

/// Factors with small integer entries: every product and partial sum of ΔW = B·A is exact in
/// f32, so cuBLAS and the host GEMM produce the same deltas bit for bit.
fn integer_module(d_out: usize, d_in: usize, r: usize, seed: u64) -> LoraModule {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut m = |rows: usize, cols: usize| {
        Mat::new(
            rows,
            cols,
            (0..rows * cols)
                .map(|_| rng.random_range(-4..=4) as f32)
                .collect(),
        )
    };
    LoraModule {
        kind: ModuleKind::Linear,
        a: m(r, d_in),
        b: m(d_out, r),
        scale: 1.0,
    }
}

fn gaussian_module(d_out: usize, d_in: usize, r: usize, seed: u64) -> LoraModule {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut m = |rows: usize, cols: usize| {
        Mat::new(
            rows,
            cols,
            (0..rows * cols)
                .map(|_| quiver_merge::linalg::gaussian(&mut rng) * 0.01)
                .collect(),
        )
    };
    LoraModule {
        kind: ModuleKind::Linear,
        a: m(r, d_in),
        b: m(d_out, r),
        scale: 2.0,
    }
}

fn spec(method: &str, compat: Compat, density: f64) -> MergeSpec {
    let mut s = MergeSpec::new(Method::parse(method, compat).expect("method"));
    s.compat = compat;
    s.density = Some(density);
    s.weights = Some(vec![1.0, 0.5, -0.75]);
    s.seed = 11;
    s
}

fn combined(spec: &MergeSpec, inputs: &[Present], device: &Device) -> Mat {
    let compute = quiver_merge::engine::backend(device);
    let ctx = ModuleContext {
        path: "model.layers.0.self_attn.q_proj",
        spec,
        device,
        compute: &*compute,
        global_thresholds: None,
        default_rank: 4,
        ctl: &quiver_merge::Control::none(),
    };
    dense_combination(&ctx, inputs).expect("combination")
}

/// Every dense method and parameter case this file checks.
fn cases() -> Vec<MergeSpec> {
    let mut out = Vec::new();
    for density in [0.3, 0.7] {
        for m in ["ties", "dare_linear", "dare_ties", "magnitude_prune"] {
            out.push(spec(m, Compat::Paper, density));
        }
        for m in [
            "ties_svd",
            "dare_ties_svd",
            "dare_linear_svd",
            "magnitude_prune_svd",
        ] {
            out.push(spec(m, Compat::Peft, density));
        }
    }
    let mut f = spec("ties", Compat::Paper, 0.4);
    f.majority_sign = MajoritySign::Frequency;
    f.lambda = Some(0.8);
    out.push(f);
    out
}

#[test]
fn dense_combinations_equal_the_cpu_bit_for_bit_on_exact_inputs() {
    // Integer deltas have many exact ties of magnitude: paper TIES keeps them all, PEFT keeps
    // exactly k in index order (the GPU's host fallback); both must match the CPU exactly.
    let inputs: Vec<Present> = (0..3)
        .map(|i| Present {
            index: i,
            module: integer_module(96, 80, 4, i as u64),
        })
        .collect();
    for s in cases() {
        let cpu = combined(&s, &inputs, &Device::Cpu);
        let gpu = combined(&s, &inputs, &gpu());
        let differing = cpu
            .data
            .iter()
            .zip(&gpu.data)
            .filter(|(a, b)| a.to_bits() != b.to_bits() && !(**a == 0.0 && **b == 0.0))
            .count();
        assert_eq!(
            differing,
            0,
            "{} {:?} density {:?}: {differing} entries differ",
            s.method.name(),
            s.compat,
            s.density
        );
        assert!(cpu.frob2() > 0.0);
    }
}

#[test]
fn dense_combinations_agree_on_gaussian_inputs() {
    // Deltas from cuBLAS and the host GEMM differ in the last bits, so an entry within rounding
    // of a threshold may fall on the other side: allow a handful of such flips, nothing else.
    let inputs: Vec<Present> = (0..3)
        .map(|i| Present {
            index: i,
            module: gaussian_module(700, 600, 16, 100 + i as u64),
        })
        .collect();
    for s in cases() {
        let cpu = combined(&s, &inputs, &Device::Cpu);
        let gpu = combined(&s, &inputs, &gpu());
        let flips = cpu
            .data
            .iter()
            .zip(&gpu.data)
            .filter(|(a, b)| (**a == 0.0) != (**b == 0.0))
            .count();
        assert!(
            flips <= 20,
            "{}: {flips} entries kept on one device only",
            s.method.name()
        );
        let close: f64 = cpu
            .data
            .iter()
            .zip(&gpu.data)
            .filter(|(a, b)| (**a == 0.0) == (**b == 0.0))
            .map(|(a, b)| (f64::from(*a) - f64::from(*b)).powi(2))
            .sum::<f64>()
            .sqrt()
            / cpu.frob2().sqrt();
        assert!(close < 1e-5, "{}: {close}", s.method.name());
    }
}

/// Three adapters with a large module (randomized route) and a small one (exact route).
fn adapters(dir: &std::path::Path) -> Vec<quiver_merge::LoraAdapter> {
    (0..3u64)
        .map(|i| {
            let big = gaussian_module(1100, 900, 16, 200 + i);
            let small = gaussian_module(64, 48, 16, 300 + i);
            adapter(
                dir,
                &format!("in{i}"),
                &[
                    Module {
                        path: "model.layers.0.mlp.up_proj",
                        a: big.a,
                        b: big.b,
                    },
                    Module {
                        path: "model.layers.0.self_attn.q_proj",
                        a: small.a,
                        b: small.b,
                    },
                ],
                32.0,
                false,
                serde_json::json!({}),
            )
        })
        .collect()
}

fn product(m: &quiver_merge::methods::MergedModule) -> Mat {
    m.b.matmul_naive(&m.a)
}

#[test]
fn merges_match_the_cpu_end_to_end() {
    let dir = tempfile::tempdir().expect("tmp");
    let inputs = adapters(dir.path());
    let methods: &[(&str, Compat)] = &[
        ("svd", Compat::Paper),
        ("linear", Compat::Paper),
        ("cat", Compat::Paper),
        ("ties", Compat::Paper),
        ("dare_ties", Compat::Paper),
        ("magnitude_prune", Compat::Paper),
        ("ties_svd", Compat::Peft),
        ("dare_linear_svd", Compat::Peft),
        ("svd", Compat::Peft),
        ("ties", Compat::Peft),
        ("lora_lego", Compat::Paper),
        ("ziplora", Compat::Paper),
    ];
    for &(name, compat) in methods {
        let mut s = spec(name, compat, 0.3);
        // Only the parameters each method takes (the spec's validation refuses the others).
        if s.method.pruning() == quiver_merge::spec::Pruning::None {
            s.density = None;
        }
        if !matches!(name, "cat" | "lora_lego") {
            s.rank = Some(8);
        }
        if name == "ziplora" {
            s.steps = Some(20);
        }
        s.validate(inputs.len()).expect("a valid spec");
        let cpu = merge(&inputs, &s, &Device::Cpu, &|_, _| {}).expect("cpu merge");
        let gpu_run = merge(&inputs, &s, &gpu(), &|_, _| {}).expect("gpu merge");
        assert!(gpu_run.device.starts_with("cuda"), "{}", gpu_run.device);
        for (path, c) in &cpu.modules {
            let g = &gpu_run.modules[path];
            let (pc, pg) = (product(c), product(g));
            let rc = cpu
                .reports
                .iter()
                .find(|r| &r.module == path)
                .expect("report");
            let rg = gpu_run
                .reports
                .iter()
                .find(|r| &r.module == path)
                .expect("report");
            assert_eq!(rc.route, rg.route, "{name} {path}");
            let pruning = s.method.pruning() != quiver_merge::spec::Pruning::None;
            let tol = if pruning { 1e-2 } else { 1e-5 };
            let err = pg.rel_err(&pc);
            assert!(err < tol, "{name} {compat:?} {path}: B·A differs by {err}");
            assert!(
                (rg.relative_error - rc.relative_error).abs() <= 0.01 * rc.relative_error + 1e-6,
                "{name} {path}: truncation error {} on the GPU, {} on the CPU",
                rg.relative_error,
                rc.relative_error
            );
        }
        // Same seed, same device: the same output.
        let again = merge(&inputs, &s, &gpu(), &|_, _| {}).expect("gpu merge");
        for (path, g) in &gpu_run.modules {
            assert_eq!(
                g.a, again.modules[path].a,
                "{name} {path}: not deterministic"
            );
            assert_eq!(
                g.b, again.modules[path].b,
                "{name} {path}: not deterministic"
            );
        }
    }
}
