//! Issue 20: no request can make the engine run without end, cancel too late, or publish a
//! non-finite tensor. Every work parameter is bounded at validation (the error names the field and
//! the limit), the cancel flag stops the long loops mid-module, and a result holding a NaN or an
//! infinite value is refused before anything is written.

mod common;

use std::time::Duration;

use candle_core::Device;
use common::{Module, adapter, mat, random};
use quiver_merge::adapter::{LoraModule, ModuleKind};
use quiver_merge::compress::compress_joint;
use quiver_merge::compress::joint::{JointParams, MemberFactors, fit_module_with};
use quiver_merge::compress::spec::{MAX_CLUSTERS, MAX_JOINT_ITERS};
use quiver_merge::context::Present;
use quiver_merge::lego::{LegoParams, lego};
use quiver_merge::spec::{
    MAX_INPUTS, MAX_LAMBDA_SIM, MAX_LEGO_ITERS, MAX_LR, MAX_RANK, MAX_WEIGHT, MAX_ZIP_STEPS,
};
use quiver_merge::ziplora::{ZipParams, ziplora_with};
use quiver_merge::{
    CancelToken, CompressSpec, Control, LoraAdapter, MergeError, MergeSpec, Method, OutDtype,
    merge, merge_with, write_adapter,
};
use serde_json::{Value, json};

const Q: &str = "model.layers.0.self_attn.q_proj";

/// The `InvalidParam` message of a spec JSON checked against `n` inputs.
fn merge_refusal(spec: Value, n: usize) -> String {
    let checked = MergeSpec::from_json(spec.clone()).and_then(|s| s.validate(n));
    match checked {
        Err(MergeError::InvalidParam(m)) => m,
        other => panic!("{spec} with {n} inputs: expected InvalidParam, got {other:?}"),
    }
}

fn compress_refusal(spec: Value, n: usize) -> String {
    let checked = CompressSpec::from_json(spec.clone()).and_then(|s| s.validate(n));
    match checked {
        Err(MergeError::InvalidParam(m)) => m,
        other => panic!("{spec} with {n} inputs: expected InvalidParam, got {other:?}"),
    }
}

fn assert_names(message: &str, field: &str, limit: &str) {
    assert!(
        message.contains(field) && message.contains(limit),
        "{message:?} should name `{field}` and the limit {limit}"
    );
}

#[test]
fn every_merge_parameter_over_its_limit_is_refused_naming_the_field_and_the_limit() {
    let over = |x: usize| json!(x + 1);
    let cases: Vec<(Value, usize, &str, String)> = vec![
        // The wedge: four billion Adam steps.
        (
            json!({"method": "ziplora", "steps": 4_000_000_000u64}),
            2,
            "steps",
            MAX_ZIP_STEPS.to_string(),
        ),
        (
            json!({"method": "ziplora", "steps": over(MAX_ZIP_STEPS)}),
            2,
            "steps",
            MAX_ZIP_STEPS.to_string(),
        ),
        (
            json!({"method": "ziplora", "lr": MAX_LR * 2.0}),
            2,
            "lr",
            MAX_LR.to_string(),
        ),
        (
            json!({"method": "ziplora", "lambda_sim": MAX_LAMBDA_SIM * 2.0}),
            2,
            "lambda_sim",
            format!("{MAX_LAMBDA_SIM:e}"),
        ),
        (
            json!({"method": "lora_lego", "iters": over(MAX_LEGO_ITERS)}),
            2,
            "iters",
            MAX_LEGO_ITERS.to_string(),
        ),
        (
            json!({"method": "lora_lego", "k": over(MAX_RANK)}),
            2,
            "k",
            MAX_RANK.to_string(),
        ),
        (
            json!({"method": "svd", "rank": over(MAX_RANK)}),
            2,
            "rank",
            MAX_RANK.to_string(),
        ),
        (
            json!({"method": "ties", "lambda": MAX_WEIGHT * 10.0}),
            2,
            "lambda",
            format!("{MAX_WEIGHT:e}"),
        ),
        // The numbers: weights of 1e300 published inf/NaN.
        (
            json!({"method": "linear", "weights": [1e300, 1.0]}),
            2,
            "weights[0]",
            format!("{MAX_WEIGHT:e}"),
        ),
        (
            json!({"method": "linear", "weights": [1.0, -MAX_WEIGHT * 1.5]}),
            2,
            "weights[1]",
            format!("{MAX_WEIGHT:e}"),
        ),
        (
            json!({"method": "linear"}),
            MAX_INPUTS + 1,
            "inputs",
            MAX_INPUTS.to_string(),
        ),
        (
            json!({"method": "dare_linear", "density": 1.5}),
            2,
            "density",
            "(0, 1]".into(),
        ),
    ];
    for (spec, n, field, limit) in cases {
        assert_names(&merge_refusal(spec, n), field, &limit);
    }
    // The limits themselves are accepted.
    for ok in [
        json!({"method": "ziplora", "steps": MAX_ZIP_STEPS, "lr": MAX_LR, "lambda_sim": MAX_LAMBDA_SIM}),
        json!({"method": "lora_lego", "iters": MAX_LEGO_ITERS, "k": MAX_RANK}),
        json!({"method": "ties", "weights": [MAX_WEIGHT, -MAX_WEIGHT], "lambda": -MAX_WEIGHT}),
    ] {
        MergeSpec::from_json(ok.clone())
            .and_then(|s| s.validate(2))
            .unwrap_or_else(|e| panic!("{ok}: {e}"));
    }
}

#[test]
fn every_compression_parameter_over_its_limit_is_refused_naming_the_field_and_the_limit() {
    let cases: Vec<(Value, usize, &str, String)> = vec![
        (
            json!({"mode": "joint", "rank": 4, "iters": MAX_JOINT_ITERS + 1}),
            2,
            "iters",
            MAX_JOINT_ITERS.to_string(),
        ),
        (
            json!({"mode": "joint", "rank": 4, "clusters": MAX_CLUSTERS + 1}),
            2,
            "clusters",
            MAX_CLUSTERS.to_string(),
        ),
        (
            json!({"mode": "joint", "rank": MAX_RANK + 1}),
            2,
            "rank",
            MAX_RANK.to_string(),
        ),
        (
            json!({"mode": "individual", "rank": MAX_RANK + 1}),
            1,
            "rank",
            MAX_RANK.to_string(),
        ),
        (
            json!({"mode": "joint", "rank": 4}),
            MAX_INPUTS + 1,
            "inputs",
            MAX_INPUTS.to_string(),
        ),
    ];
    for (spec, n, field, limit) in cases {
        assert_names(&compress_refusal(spec, n), field, &limit);
    }
    CompressSpec::from_json(json!({"mode": "joint", "rank": MAX_RANK, "clusters": MAX_CLUSTERS, "iters": MAX_JOINT_ITERS}))
        .and_then(|s| s.validate(2))
        .expect("the limits themselves are accepted");
}

fn present(index: usize, seed: u64, d: usize) -> Present {
    Present {
        index,
        module: LoraModule {
            kind: ModuleKind::Linear,
            a: random(4, d, seed),
            b: random(d, 4, seed + 1),
            scale: 2.0,
        },
    }
}

/// A cancelled token stops ZipLoRA inside its step loop: `ziplora_with` has no per-module check
/// of its own, only the one per step.
#[test]
fn a_cancelled_token_stops_ziplora_between_steps() {
    let (x, y) = (present(0, 1, 16), present(1, 9, 16));
    let token = CancelToken::new();
    token.cancel();
    let ctl = Control::new(&|_, _| {}, &token);
    let r = ziplora_with(
        &Device::Cpu,
        &[(1.0, &x), (1.0, &y)],
        ZipParams {
            lambda: 0.01,
            steps: 10,
            lr: 0.01,
        },
        &ctl,
    );
    assert!(matches!(r, Err(MergeError::Cancelled)), "{r:?}");
}

/// The same through the engine on one module: the module has started when the token is set from
/// another thread, so only a check inside the step loop can stop it (before, the merge ran all
/// MAX_ZIP_STEPS steps and returned Ok).
#[test]
fn cancel_during_a_long_ziplora_module_stops_the_merge() {
    let dir = tempfile::tempdir().expect("tmp");
    let one = |name: &str, seed: u64| {
        adapter(
            dir.path(),
            name,
            &[Module {
                path: Q,
                a: random(4, 64, seed),
                b: random(64, 4, seed + 1),
            }],
            8.0,
            false,
            json!({}),
        )
    };
    let inputs = [one("a", 1), one("b", 7)];
    let mut spec = MergeSpec::new(Method::ZipLora);
    spec.steps = Some(MAX_ZIP_STEPS);
    let token = CancelToken::new();
    let canceller = {
        let token = token.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            token.cancel();
        })
    };
    let ctl = Control::new(&|_, _| {}, &token);
    let r = merge_with(&inputs, &spec, &Device::Cpu, &ctl);
    canceller.join().expect("canceller");
    assert!(matches!(r, Err(MergeError::Cancelled)), "{:?}", r.err());
}

/// Joint compression checks the token at every alternating iteration of every fit.
#[test]
fn a_cancelled_token_stops_joint_compression_between_iterations() {
    let members: Vec<MemberFactors> = (0..3u64)
        .map(|i| MemberFactors {
            member: i as usize,
            b: random(12, 3, 20 + i).to_f64(),
            a: random(3, 10, 40 + i).to_f64(),
        })
        .collect();
    let token = CancelToken::new();
    token.cancel();
    let ctl = Control::new(&|_, _| {}, &token);
    for clusters in [1, 2] {
        let p = JointParams {
            rank: 2,
            diag: false,
            clusters,
            iters: 50,
            seed: 1,
        };
        let r = fit_module_with(&members, &p, 12, 10, &ctl);
        assert!(
            matches!(r, Err(MergeError::Cancelled)),
            "clusters {clusters}"
        );
    }
}

/// LoRA-LEGO checks the token at every seeding pick and Lloyd iteration.
#[test]
fn a_cancelled_token_stops_lora_lego() {
    let (x, y) = (present(0, 1, 16), present(1, 9, 16));
    let token = CancelToken::new();
    token.cancel();
    let ctl = Control::new(&|_, _| {}, &token);
    let p = LegoParams {
        k: 4,
        iters: 20,
        param_reweight: true,
        output_reweight: true,
        seed: 1,
    };
    let r = lego(&[(1.0, &x), (1.0, &y)], p, &ctl);
    assert!(matches!(r, Err(MergeError::Cancelled)));
    let r = lego(&[(1.0, &x), (1.0, &y)], p, &Control::none());
    assert_eq!(r.expect("lego").0.cols, 4, "not cancelled: runs");
}

/// An input whose B holds values near f32's largest (finite, so it passes the input check).
fn huge(dir: &std::path::Path, name: &str) -> LoraAdapter {
    adapter(
        dir,
        name,
        &[Module {
            path: Q,
            a: mat(1, 4, &[1.0, -1.0, 0.5, 0.25]),
            b: mat(2, 1, &[3.0e38, -3.0e38]),
        }],
        1.0,
        false,
        json!({}),
    )
}

/// Weights within the limit can still carry a huge (finite) input past f32's range: the merge is
/// refused naming the module, and nothing is written.
#[test]
fn a_merge_that_overflows_f32_is_refused_and_nothing_is_written() {
    let dir = tempfile::tempdir().expect("tmp");
    let inputs = [huge(dir.path(), "h"), huge(dir.path(), "g")];
    let mut spec = MergeSpec::new(Method::Linear);
    spec.weights = Some(vec![10.0, 1.0]);
    let r = merge(&inputs, &spec, &Device::Cpu, &|_, _| {});
    match r {
        Err(e @ MergeError::NonFiniteResult { .. }) => {
            assert!(e.is_permanent(), "running again cannot help");
            assert!(e.to_string().contains(Q), "names the module: {e}");
        }
        Err(e) => panic!("expected NonFiniteResult, got {e}"),
        Ok(_) => panic!("a merge with an infinite factor was returned"),
    }
    // TIES on the dense deltas overflows too (3e38 · 1 · 10 in f32).
    let mut ties = MergeSpec::new(Method::Ties);
    ties.weights = Some(vec![10.0, 10.0]);
    assert!(matches!(
        merge(&inputs, &ties, &Device::Cpu, &|_, _| {}),
        Err(MergeError::NonFiniteResult { .. }) | Err(MergeError::Numeric { .. })
    ));
}

/// A result that is finite in f32 but overflows the output dtype (f16 tops out at 65504) is
/// refused by the writer before any file exists.
#[test]
fn a_result_that_overflows_the_output_dtype_is_refused_before_writing() {
    let dir = tempfile::tempdir().expect("tmp");
    let x = adapter(
        dir.path(),
        "x",
        &[Module {
            path: Q,
            a: mat(1, 2, &[1.0, 2.0]),
            b: mat(2, 1, &[1.0e5, 3.0]),
        }],
        1.0,
        false,
        json!({}),
    );
    let mut spec = MergeSpec::new(Method::Linear);
    spec.dtype = Some(OutDtype::F16);
    let merged = merge(std::slice::from_ref(&x), &spec, &Device::Cpu, &|_, _| {}).expect("merge");
    let out = dir.path().join("out");
    let r = write_adapter(&out, std::slice::from_ref(&x), &spec, &merged);
    assert!(
        matches!(&r, Err(MergeError::NonFiniteResult { dtype, .. }) if dtype == "f16"),
        "{r:?}"
    );
    assert!(!out.exists(), "nothing written");
    spec.dtype = Some(OutDtype::F32);
    write_adapter(&out, std::slice::from_ref(&x), &spec, &merged).expect("f32 holds it");
}

/// Joint compression of huge inputs: the per-member cores leave f32's range; refused, naming the
/// module, with no collection written.
#[test]
fn a_joint_compression_that_overflows_f32_is_refused_and_nothing_is_written() {
    let dir = tempfile::tempdir().expect("tmp");
    let inputs = [huge(dir.path(), "h"), huge(dir.path(), "g")];
    let out = dir.path().join("collection");
    let r = compress_joint(
        &inputs,
        JointParams {
            rank: 1,
            diag: false,
            clusters: 1,
            iters: 5,
            seed: 0,
        },
        &out,
    );
    assert!(
        matches!(&r, Err(MergeError::NonFiniteResult { module, .. }) if module == Q),
        "{r:?}"
    );
    assert!(!out.exists(), "nothing written");
}

/// The dense family (TIES, DARE, magnitude pruning) checks the token before each input's pass.
#[test]
fn a_cancelled_token_stops_a_dense_combination_between_inputs() {
    use quiver_merge::context::ModuleContext;
    use quiver_merge::methods::dense_combination;
    let inputs = [present(0, 1, 16), present(1, 9, 16)];
    let mut spec = MergeSpec::new(Method::Ties);
    spec.weights = Some(vec![1.0, 1.0]);
    let token = CancelToken::new();
    let ctl = Control::new(&|_, _| {}, &token);
    let ctx = ModuleContext {
        path: Q,
        spec: &spec,
        device: &Device::Cpu,
        compute: &quiver_merge::host::Host,
        global_thresholds: None,
        default_rank: 4,
        ctl: &ctl,
    };
    dense_combination(&ctx, &inputs).expect("not cancelled: runs");
    token.cancel();
    assert!(matches!(
        dense_combination(&ctx, &inputs),
        Err(MergeError::Cancelled)
    ));
}
