//! Closed-form cases of algorithms.md §1.5 and §2, the SVD identities, and the engine's rules
//! (union of modules, identity for rsLoRA / rank_pattern adapters, determinism, bad inputs).

mod common;

use candle_core::Device;
use common::{Module, adapter, mat, random};
use quiver_merge::engine::merged_delta;
use quiver_merge::mat::Mat;
use quiver_merge::{
    Compat, LoraAdapter, MajoritySign, MergeError, MergeSpec, Method, TrimScope, merge,
    write_adapter,
};
use serde_json::json;

const Q: &str = "model.layers.0.self_attn.q_proj";
const K: &str = "model.layers.0.self_attn.k_proj";
const V: &str = "model.layers.0.self_attn.v_proj";

fn run(inputs: &[LoraAdapter], spec: &MergeSpec) -> quiver_merge::Merged {
    merge(inputs, spec, &common::device(), &|_, _| {}).expect("merge")
}

fn spec(method: Method, weights: &[f64]) -> MergeSpec {
    let mut s = MergeSpec::new(method);
    s.weights = Some(weights.to_vec());
    s
}

/// A rank-1 adapter whose delta on `Q` is the row vector `tau` (B = [[1]], scale 1).
fn row(dir: &std::path::Path, name: &str, tau: &[f32]) -> LoraAdapter {
    adapter(
        dir,
        name,
        &[Module {
            path: Q,
            a: mat(1, tau.len(), tau),
            b: mat(1, 1, &[1.0]),
        }],
        1.0,
        false,
        json!({}),
    )
}

fn delta_of(m: &quiver_merge::Merged, path: &str) -> Vec<f32> {
    merged_delta(&m.modules[path]).data
}

fn close(got: &[f32], want: &[f32]) -> bool {
    got.len() == want.len() && got.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-5)
}

#[test]
fn ties_hand_case_total_and_frequency() {
    let dir = tempfile::tempdir().expect("tmp");
    let inputs = [
        row(dir.path(), "t1", &[1.0, -2.0, 0.5, 0.0]),
        row(dir.path(), "t2", &[3.0, 1.0, -0.5, 0.0]),
    ];
    let mut s = spec(Method::Ties, &[1.0, 1.0]);
    s.density = Some(1.0);
    assert!(close(
        &delta_of(&run(&inputs, &s), Q),
        &[2.0, -2.0, 0.5, 0.0]
    ));
    s.majority_sign = MajoritySign::Frequency;
    assert!(close(
        &delta_of(&run(&inputs, &s), Q),
        &[2.0, 1.0, 0.5, 0.0]
    ));
    // Weight normalisation: the paper's weighted mean vs PEFT's count mean.
    let mut s = spec(Method::Ties, &[0.5, 0.5]);
    s.density = Some(1.0);
    assert!(
        close(&delta_of(&run(&inputs, &s), Q), &[2.0, -2.0, 0.5, 0.0]),
        "weighted disjoint mean"
    );
    s.compat = Compat::Peft;
    s.method = Method::TiesSvd;
    assert!(
        close(&delta_of(&run(&inputs, &s), Q), &[1.0, -1.0, 0.25, 0.0]),
        "PEFT count mean"
    );
    // λ scales the result.
    let mut s = spec(Method::Ties, &[1.0, 1.0]);
    s.density = Some(1.0);
    s.lambda = Some(0.5);
    assert!(close(
        &delta_of(&run(&inputs, &s), Q),
        &[1.0, -1.0, 0.25, 0.0]
    ));
}

#[test]
fn magnitude_prune_keeps_the_largest_entries() {
    let dir = tempfile::tempdir().expect("tmp");
    let inputs = [row(dir.path(), "t1", &[1.0, -2.0, 0.5, 0.0])];
    let mut s = spec(Method::MagnitudePrune, &[1.0]);
    s.density = Some(0.5);
    assert!(close(
        &delta_of(&run(&inputs, &s), Q),
        &[1.0, -2.0, 0.0, 0.0]
    ));
    s.density = Some(1.0);
    assert!(close(
        &delta_of(&run(&inputs, &s), Q),
        &[1.0, -2.0, 0.5, 0.0]
    ));
    for bad in [0.0, -0.1, 1.5, f64::NAN] {
        s.density = Some(bad);
        assert!(
            matches!(
                merge(&inputs, &s, &Device::Cpu, &|_, _| {}),
                Err(MergeError::InvalidParam(_))
            ),
            "{bad}"
        );
    }
}

#[test]
fn cat_is_exact_for_different_ranks_and_alphas() {
    let dir = tempfile::tempdir().expect("tmp");
    let x = adapter(
        dir.path(),
        "x",
        &[Module {
            path: Q,
            a: random(4, 24, 1),
            b: random(20, 4, 2),
        }],
        8.0,
        false,
        json!({}),
    );
    let y = adapter(
        dir.path(),
        "y",
        &[Module {
            path: Q,
            a: random(8, 24, 3),
            b: random(20, 8, 4),
        }],
        32.0,
        true,
        json!({}),
    );
    let (w1, w2) = (0.7f32, -1.3f32);
    let want = {
        let dx = random(20, 4, 2)
            .scale(2.0 * w1)
            .matmul_naive(&random(4, 24, 1));
        let dy = random(20, 8, 4)
            .scale(32.0 / 8f32.sqrt() * w2)
            .matmul_naive(&random(8, 24, 3));
        Mat::new(
            20,
            24,
            dx.data.iter().zip(&dy.data).map(|(a, b)| a + b).collect(),
        )
    };
    for method in [Method::Cat, Method::Linear] {
        let m = run(
            &[x.clone(), y.clone()],
            &spec(method, &[f64::from(w1), f64::from(w2)]),
        );
        assert_eq!(m.modules[Q].a.rows, 12, "{method:?}");
        let err = merged_delta(&m.modules[Q]).rel_err(&want);
        assert!(err < 1e-5, "{method:?}: {err}");
    }
}

#[test]
fn peft_linear_has_cross_terms_paper_linear_does_not() {
    let dir = tempfile::tempdir().expect("tmp");
    let a1 = adapter(
        dir.path(),
        "a1",
        &[Module {
            path: Q,
            a: mat(1, 2, &[1.0, 0.0]),
            b: mat(2, 1, &[1.0, 0.0]),
        }],
        1.0,
        false,
        json!({}),
    );
    let a2 = adapter(
        dir.path(),
        "a2",
        &[Module {
            path: Q,
            a: mat(1, 2, &[0.0, 1.0]),
            b: mat(2, 1, &[0.0, 1.0]),
        }],
        1.0,
        false,
        json!({}),
    );
    let exact = run(
        &[a1.clone(), a2.clone()],
        &spec(Method::Linear, &[1.0, 1.0]),
    );
    assert!(close(&delta_of(&exact, Q), &[1.0, 0.0, 0.0, 1.0]));
    let mut s = spec(Method::Linear, &[1.0, 1.0]);
    s.compat = Compat::Peft;
    assert!(close(
        &delta_of(&run(&[a1, a2], &s), Q),
        &[1.0, 1.0, 1.0, 1.0]
    ));
}

#[test]
fn negative_weights_negate_and_cancel() {
    let dir = tempfile::tempdir().expect("tmp");
    let x = adapter(
        dir.path(),
        "x",
        &[Module {
            path: Q,
            a: random(4, 12, 5),
            b: random(10, 4, 6),
        }],
        8.0,
        false,
        json!({}),
    );
    let dx = random(10, 4, 6).scale(2.0).matmul_naive(&random(4, 12, 5));
    let neg = run(std::slice::from_ref(&x), &spec(Method::Linear, &[-1.0]));
    assert!(merged_delta(&neg.modules[Q]).rel_err(&dx.clone().scale(-1.0)) < 1e-6);
    let zero = run(&[x.clone(), x.clone()], &spec(Method::Linear, &[1.0, -1.0]));
    assert!(merged_delta(&zero.modules[Q]).frob2().sqrt() < 1e-5 * dx.frob2().sqrt());
}

#[test]
fn svd_truncation_error_is_the_spectral_tail() {
    let dir = tempfile::tempdir().expect("tmp");
    let x = adapter(
        dir.path(),
        "x",
        &[Module {
            path: Q,
            a: random(8, 30, 7),
            b: random(20, 8, 8),
        }],
        8.0,
        false,
        json!({}),
    );
    let y = adapter(
        dir.path(),
        "y",
        &[Module {
            path: Q,
            a: random(8, 30, 9),
            b: random(20, 8, 10),
        }],
        8.0,
        false,
        json!({}),
    );
    let exact =
        merged_delta(&run(&[x.clone(), y.clone()], &spec(Method::Cat, &[1.0, 0.5])).modules[Q]);
    let mut s = spec(Method::Svd, &[1.0, 0.5]);
    s.rank = Some(5);
    let m = run(&[x.clone(), y.clone()], &s);
    let report = &m.reports[0];
    let got = merged_delta(&m.modules[Q]);
    assert_eq!(m.modules[Q].a.rows, 5);
    assert!(
        (got.rel_err(&exact) - report.relative_error).abs() < 1e-5,
        "reported error is the real error"
    );
    // The same truncation from a dense exact SVD.
    let mut dense = spec(Method::MagnitudePrune, &[1.0, 0.5]);
    dense.density = Some(1.0);
    dense.rank = Some(5);
    dense.svd = quiver_merge::SvdMode::Exact;
    let d = merged_delta(&run(&[x.clone(), y.clone()], &dense).modules[Q]);
    assert!(got.rel_err(&d) < 1e-4);
    // A delta of rank ≤ k is reproduced.
    s.rank = Some(16);
    assert!(merged_delta(&run(&[x, y], &s).modules[Q]).rel_err(&exact) < 1e-5);
}

#[test]
fn single_adapter_identity_for_real_rslora_and_rank_pattern_adapters() {
    let dir = tempfile::tempdir().expect("tmp");
    for name in [
        "rslora_r16",
        "rank_pattern",
        "plain_r8",
        "embedding",
        "bf16_r8",
    ] {
        let src = common::fixtures().join("peft").join(name);
        let input = LoraAdapter::open(&src).expect("fixture");
        let want = common::dense_deltas(&src);
        for method in [Method::Linear, Method::Cat, Method::Svd] {
            let merged = run(std::slice::from_ref(&input), &spec(method, &[1.0]));
            let out = dir.path().join(format!("{name}-{}", method.name()));
            let mut s = spec(method, &[1.0]);
            s.dtype = Some(quiver_merge::OutDtype::F32);
            write_adapter(&out, std::slice::from_ref(&input), &s, &merged).expect("write");
            // Read back through the same loader: the written scale is 1 and the delta is ΔW.
            let got = common::dense_deltas(&out);
            assert_eq!(
                got.keys().collect::<Vec<_>>(),
                want.keys().collect::<Vec<_>>(),
                "{name}"
            );
            let tol = if name == "bf16_r8" { 1e-3 } else { 1e-5 };
            for (p, w) in &want {
                assert!(
                    got[p].rel_err(w) < tol,
                    "{name} {method:?} {p}: {}",
                    got[p].rel_err(w)
                );
            }
            let config: serde_json::Value = serde_json::from_slice(
                &std::fs::read(out.join("adapter_config.json")).expect("config"),
            )
            .expect("json");
            assert_eq!(config["use_rslora"], false);
            assert_eq!(config["lora_alpha"], config["r"]);
            assert_eq!(config["rank_pattern"], config["alpha_pattern"]);
        }
    }
}

#[test]
fn module_sets_are_united_and_absent_means_zero() {
    let dir = tempfile::tempdir().expect("tmp");
    let (aq, bq, av, bv, ak, bk) = (
        random(2, 8, 1),
        random(8, 2, 2),
        random(2, 8, 3),
        random(8, 2, 4),
        random(2, 8, 5),
        random(8, 2, 6),
    );
    let a1 = adapter(
        dir.path(),
        "a1",
        &[
            Module {
                path: Q,
                a: aq.clone(),
                b: bq.clone(),
            },
            Module {
                path: V,
                a: av.clone(),
                b: bv.clone(),
            },
        ],
        2.0,
        false,
        json!({}),
    );
    let a2 = adapter(
        dir.path(),
        "a2",
        &[
            Module {
                path: K,
                a: ak.clone(),
                b: bk.clone(),
            },
            Module {
                path: V,
                a: av.clone(),
                b: bv.clone(),
            },
        ],
        2.0,
        false,
        json!({}),
    );
    for method in [Method::Linear, Method::Ties] {
        let mut s = spec(method, &[0.5, 2.0]);
        s.density = (method == Method::Ties).then_some(1.0);
        let m = run(&[a1.clone(), a2.clone()], &s);
        assert_eq!(
            m.modules.keys().cloned().collect::<Vec<_>>(),
            vec![K.to_string(), Q.to_string(), V.to_string()]
        );
        // Linear: q = w₁·ΔW₁. TIES' disjoint mean is weighted, so a lone input keeps its own ΔW.
        let (w1, w2) = if method == Method::Linear {
            (0.5, 2.0)
        } else {
            (1.0, 1.0)
        };
        assert!(
            merged_delta(&m.modules[Q]).rel_err(&bq.clone().scale(w1).matmul_naive(&aq)) < 1e-5,
            "{method:?} q"
        );
        assert!(
            merged_delta(&m.modules[K]).rel_err(&bk.clone().scale(w2).matmul_naive(&ak)) < 1e-5,
            "{method:?} k"
        );
        assert_eq!(
            m.reports
                .iter()
                .find(|r| r.module == Q)
                .map(|r| r.inputs.clone()),
            Some(vec!["a1".to_string()])
        );
    }
}

#[test]
fn global_trim_uses_one_threshold_across_modules() {
    let dir = tempfile::tempdir().expect("tmp");
    // q holds large values, v small ones: a global 50 % trim keeps all of q and none of v.
    let x = adapter(
        dir.path(),
        "x",
        &[
            Module {
                path: Q,
                a: mat(1, 2, &[10.0, 20.0]),
                b: mat(1, 1, &[1.0]),
            },
            Module {
                path: V,
                a: mat(1, 2, &[1.0, 2.0]),
                b: mat(1, 1, &[1.0]),
            },
        ],
        1.0,
        false,
        json!({}),
    );
    let mut s = spec(Method::Ties, &[1.0]);
    s.density = Some(0.5);
    let per_module = run(std::slice::from_ref(&x), &s);
    assert!(close(&delta_of(&per_module, V), &[0.0, 2.0]));
    s.trim_scope = TrimScope::Global;
    let global = run(std::slice::from_ref(&x), &s);
    assert!(close(&delta_of(&global, Q), &[10.0, 20.0]));
    assert!(close(&delta_of(&global, V), &[0.0, 0.0]));
}

#[test]
fn same_inputs_and_seed_give_byte_identical_files() {
    let dir = tempfile::tempdir().expect("tmp");
    let x = LoraAdapter::open(&common::fixtures().join("peft/plain_r8")).expect("x");
    let y = LoraAdapter::open(&common::fixtures().join("peft/rank_pattern")).expect("y");
    for method in [Method::DareTies, Method::Ties, Method::Svd] {
        let mut s = spec(method, &[1.0, 0.6]);
        s.seed = 7;
        if method != Method::Svd {
            s.density = Some(0.3);
        }
        let mut outputs = Vec::new();
        for (i, seed) in [7u64, 7, 8].iter().enumerate() {
            s.seed = *seed;
            let out = dir.path().join(format!("{}-{i}", method.name()));
            write_adapter(
                &out,
                &[x.clone(), y.clone()],
                &s,
                &run(&[x.clone(), y.clone()], &s),
            )
            .expect("write");
            outputs.push(out);
        }
        for f in [
            "adapter_model.safetensors",
            "adapter_config.json",
            "README.md",
        ] {
            let read = |i: usize| std::fs::read(outputs[i].join(f)).expect("read");
            assert_eq!(
                read(0),
                read(1),
                "{method:?} {f} differs between identical runs"
            );
            if method == Method::DareTies && f == "adapter_model.safetensors" {
                assert_ne!(read(0), read(2), "another seed gives other DARE masks");
            }
        }
    }
}

#[test]
fn bad_inputs_are_refused_before_any_work() {
    let dir = tempfile::tempdir().expect("tmp");
    let x = adapter(
        dir.path(),
        "x",
        &[Module {
            path: Q,
            a: random(2, 8, 1),
            b: random(8, 2, 2),
        }],
        2.0,
        false,
        json!({}),
    );
    let other_base = adapter(
        dir.path(),
        "o",
        &[Module {
            path: Q,
            a: random(2, 8, 1),
            b: random(8, 2, 2),
        }],
        2.0,
        false,
        json!({"base_model_name_or_path": "other/base"}),
    );
    let other_shape = adapter(
        dir.path(),
        "s",
        &[Module {
            path: Q,
            a: random(2, 6, 1),
            b: random(8, 2, 2),
        }],
        2.0,
        false,
        json!({}),
    );
    let nan = adapter(
        dir.path(),
        "n",
        &[Module {
            path: Q,
            a: mat(1, 2, &[1.0, 0.0]),
            b: mat(1, 1, &[1.0]),
        }],
        1.0,
        false,
        json!({}),
    );
    // Poison one value of n's weights on disk, then reopen.
    let path = dir.path().join("n/adapter_model.safetensors");
    let mut bytes = std::fs::read(&path).expect("read");
    let at = bytes.len() - 4;
    bytes[at..].copy_from_slice(&f32::NAN.to_le_bytes());
    std::fs::write(&path, bytes).expect("write");
    assert!(matches!(
        LoraAdapter::open(&dir.path().join("n")),
        Err(MergeError::NonFinite { .. })
    ));
    let _ = nan;
    let linear = spec(Method::Linear, &[1.0, 1.0]);
    assert!(matches!(
        merge(&[x.clone(), other_base], &linear, &Device::Cpu, &|_, _| {}),
        Err(MergeError::Incompatible(_))
    ));
    assert!(matches!(
        merge(&[x.clone(), other_shape], &linear, &Device::Cpu, &|_, _| {}),
        Err(MergeError::Incompatible(_))
    ));
    assert!(matches!(
        LoraAdapter::open(&common::fixtures().join("peft/dora")),
        Err(MergeError::Unsupported(_))
    ));
    assert!(matches!(
        Method::parse("slerp", Compat::Paper),
        Err(MergeError::InvalidParam(_))
    ));
    assert!(
        Method::parse("ties_svd", Compat::Paper).is_err(),
        "PEFT-only names need --compat peft"
    );
    let mut s = spec(Method::Linear, &[1.0]);
    assert!(merge(std::slice::from_ref(&x), &s, &Device::Cpu, &|_, _| {}).is_ok());
    s.weights = Some(vec![1.0, 2.0]);
    assert!(matches!(
        merge(std::slice::from_ref(&x), &s, &Device::Cpu, &|_, _| {}),
        Err(MergeError::InvalidParam(_))
    ));
    let mut s = spec(Method::Svd, &[1.0]);
    s.rank = Some(0);
    assert!(matches!(
        merge(std::slice::from_ref(&x), &s, &Device::Cpu, &|_, _| {}),
        Err(MergeError::InvalidParam(_))
    ));
    let mut s = spec(Method::DareLinear, &[1.0]);
    assert!(
        matches!(
            merge(std::slice::from_ref(&x), &s, &Device::Cpu, &|_, _| {}),
            Err(MergeError::InvalidParam(_))
        ),
        "dare needs a density"
    );
    s.density = Some(0.5);
    assert!(merge(std::slice::from_ref(&x), &s, &Device::Cpu, &|_, _| {}).is_ok());
    // PEFT factor methods need equal ranks.
    let r4 = adapter(
        dir.path(),
        "r4",
        &[Module {
            path: Q,
            a: random(4, 8, 1),
            b: random(8, 4, 2),
        }],
        4.0,
        false,
        json!({}),
    );
    let mut s = spec(Method::Linear, &[1.0, 1.0]);
    s.compat = Compat::Peft;
    assert!(matches!(
        merge(&[x, r4], &s, &Device::Cpu, &|_, _| {}),
        Err(MergeError::Incompatible(_))
    ));
}

/// Without the `cuda` feature, `gpu` is a stand-in: a CUDA device (candle's stand-in one) makes the
/// steps that need Quiver's GPU code fail with a clear error instead of running on the host, the
/// host-only steps (concatenation) still run, and the report names the device `cuda`.
#[cfg(not(feature = "cuda"))]
#[test]
fn without_the_cuda_feature_a_cuda_device_fails_the_gpu_steps_clearly() {
    use quiver_merge::gpu::Gpu;
    assert!(matches!(Gpu::of(&Device::Cpu), Ok(None)));
    let cuda = Device::Cuda(candle_core::CudaDevice);
    let dir = tempfile::tempdir().expect("tmp");
    let inputs = [
        row(dir.path(), "t1", &[1.0, -2.0, 0.5, 0.0]),
        row(dir.path(), "t2", &[3.0, 1.0, -0.5, 0.0]),
    ];
    for method in [Method::Ties, Method::Svd] {
        let r = merge(&inputs, &spec(method, &[1.0, 1.0]), &cuda, &|_, _| {});
        assert!(
            matches!(&r, Err(MergeError::Device(m)) if m.contains("`cuda` feature")),
            "{method:?}: {:?}",
            r.err()
        );
    }
    let cat = merge(&inputs, &spec(Method::Cat, &[1.0, 1.0]), &cuda, &|_, _| {}).expect("cat");
    assert_eq!(cat.device, "cuda");
    assert!(close(&delta_of(&cat, Q), &[4.0, -1.0, 0.0, 0.0]));
}

/// A merge whose finished modules wait on disk (`merge_parked`, what the CLI and the workers
/// run) writes the same bytes as one held in memory, for linear, embedding and truncated modules,
/// and leaves no parking file behind.
#[test]
fn parked_merges_write_the_same_files_as_in_memory_ones() {
    let dir = tempfile::tempdir().expect("tmp");
    let inputs: Vec<LoraAdapter> = ["plain_r8", "embedding", "rslora_r16"]
        .iter()
        .map(|n| LoraAdapter::open(&common::fixtures().join("peft").join(n)).expect("fixture"))
        .collect();
    for method in [Method::Cat, Method::Svd, Method::Ties] {
        for input in &inputs {
            let one = std::slice::from_ref(input);
            let s = spec(method, &[1.0]);
            let device = common::device();
            let ctl = quiver_merge::Control::none();
            let a = dir
                .path()
                .join(format!("mem-{}-{}", input.name, method.name()));
            let b = dir
                .path()
                .join("parked")
                .join(format!("{}-{}", input.name, method.name()));
            let held = quiver_merge::merge_with(one, &s, &device, &ctl).expect("merge");
            write_adapter(&a, one, &s, &held).expect("write");
            let parked = quiver_merge::merge_parked(
                one,
                &s,
                &device,
                &ctl,
                &quiver_merge::engine::parking_dir(&b).expect("dir"),
            )
            .expect("parked merge");
            assert!(parked.modules.values().all(|m| m.parked.is_some()));
            write_adapter(&b, one, &s, &parked).expect("write parked");
            for f in ["adapter_model.safetensors", "adapter_config.json"] {
                assert_eq!(
                    std::fs::read(a.join(f)).expect("a"),
                    std::fs::read(b.join(f)).expect("b"),
                    "{} {} {f}",
                    input.name,
                    method.name()
                );
            }
        }
    }
    let left: Vec<_> = std::fs::read_dir(dir.path().join("parked"))
        .expect("dir")
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(".quiver-parked")
        })
        .collect();
    assert!(left.is_empty(), "parking files are unlinked at once");
}
