//! LoRA-LEGO: algorithms.md §4 tests.

mod common;

use common::{Module, adapter, random};
use quiver_merge::engine::merged_delta;
use quiver_merge::mat::Mat;
use quiver_merge::{LoraAdapter, MergeSpec, Method, merge};
use serde_json::json;

const Q: &str = "model.layers.0.self_attn.q_proj";

fn lego_spec(k: Option<usize>, reweight: bool) -> MergeSpec {
    let mut s = MergeSpec::new(Method::LoraLego);
    s.k = k;
    s.param_reweight = reweight;
    s.output_reweight = reweight;
    s.seed = 11;
    s
}

fn run(inputs: &[LoraAdapter], spec: &MergeSpec) -> quiver_merge::Merged {
    merge(inputs, spec, &common::device(), &|_, _| {}).expect("merge")
}

/// Rows of A and matching columns of B in another order: the same adapter.
fn permuted(a: &Mat, b: &Mat, order: &[usize]) -> (Mat, Mat) {
    let mut pa = Mat::zeros(a.rows, a.cols);
    let mut pb = Mat::zeros(b.rows, b.cols);
    for (new, &old) in order.iter().enumerate() {
        pa.data[new * a.cols..(new + 1) * a.cols]
            .copy_from_slice(&a.data[old * a.cols..(old + 1) * a.cols]);
        for o in 0..b.rows {
            pb.data[o * b.cols + new] = b.at(o, old);
        }
    }
    (pa, pb)
}

#[test]
fn k_equal_to_total_rank_without_reweighting_is_cat() {
    let dir = tempfile::tempdir().expect("tmp");
    let x = adapter(
        dir.path(),
        "x",
        &[Module {
            path: Q,
            a: random(4, 24, 1),
            b: random(16, 4, 2),
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
            a: random(6, 24, 3),
            b: random(16, 6, 4),
        }],
        6.0,
        true,
        json!({}),
    );
    let cat = merged_delta(&run(&[x.clone(), y.clone()], &MergeSpec::new(Method::Cat)).modules[Q]);
    let m = run(&[x, y], &lego_spec(Some(10), false));
    assert_eq!(m.modules[Q].a.rows, 10);
    let err = merged_delta(&m.modules[Q]).rel_err(&cat);
    assert!(err < 1e-5, "{err}");
}

#[test]
fn result_does_not_depend_on_input_or_rank_order() {
    let dir = tempfile::tempdir().expect("tmp");
    let (a1, b1, a2, b2) = (
        random(5, 20, 5),
        random(12, 5, 6),
        random(7, 20, 7),
        random(12, 7, 8),
    );
    let x = adapter(
        dir.path(),
        "x",
        &[Module {
            path: Q,
            a: a1.clone(),
            b: b1.clone(),
        }],
        5.0,
        false,
        json!({}),
    );
    let y = adapter(
        dir.path(),
        "y",
        &[Module {
            path: Q,
            a: a2.clone(),
            b: b2.clone(),
        }],
        14.0,
        false,
        json!({}),
    );
    let (pa, pb) = permuted(&a2, &b2, &[3, 0, 6, 1, 5, 2, 4]);
    let y_perm = adapter(
        dir.path(),
        "y-perm",
        &[Module {
            path: Q,
            a: pa,
            b: pb,
        }],
        14.0,
        false,
        json!({}),
    );
    for k in [3, 5, 7] {
        let s = lego_spec(Some(k), true);
        let base = run(&[x.clone(), y.clone()], &s);
        let swapped = run(&[y.clone(), x.clone()], &s);
        let reranked = run(&[x.clone(), y_perm.clone()], &s);
        for other in [&swapped, &reranked] {
            assert_eq!(other.modules[Q].a, base.modules[Q].a, "k={k}: A differs");
            assert_eq!(other.modules[Q].b, base.modules[Q].b, "k={k}: B differs");
        }
        assert!(base.modules[Q].a.rows <= k);
        let again = run(&[x.clone(), y.clone()], &s);
        assert_eq!(again.modules[Q].a, base.modules[Q].a, "deterministic");
    }
}

#[test]
fn merging_an_adapter_with_itself_at_k_equal_r_gives_its_delta() {
    let dir = tempfile::tempdir().expect("tmp");
    let x = adapter(
        dir.path(),
        "x",
        &[Module {
            path: Q,
            a: random(4, 24, 9),
            b: random(16, 4, 10),
        }],
        8.0,
        false,
        json!({}),
    );
    let delta = random(16, 4, 10).scale(2.0).matmul_naive(&random(4, 24, 9));
    let m = run(&[x.clone(), x], &lego_spec(None, true));
    assert_eq!(m.modules[Q].a.rows, 4, "k defaults to the input rank");
    let err = merged_delta(&m.modules[Q]).rel_err(&delta);
    assert!(err < 1e-5, "{err}");
    // And pruning one adapter's rank keeps most of it.
    let dir2 = tempfile::tempdir().expect("tmp");
    let one = adapter(
        dir2.path(),
        "one",
        &[Module {
            path: Q,
            a: random(8, 24, 9),
            b: random(16, 8, 10),
        }],
        8.0,
        false,
        json!({}),
    );
    let pruned = run(&[one], &lego_spec(Some(4), true));
    assert_eq!(pruned.modules[Q].a.rows, 4);
}

#[test]
fn parameter_reweighting_restores_the_members_mean_norm() {
    let dir = tempfile::tempdir().expect("tmp");
    // Two units at 90° in (a, b) space, forced into one cluster.
    let a = Mat::new(2, 2, vec![1.0, 0.0, 0.0, 1.0]);
    let b = Mat::new(2, 2, vec![1.0, 0.0, 0.0, 1.0]);
    let x = adapter(
        dir.path(),
        "x",
        &[Module { path: Q, a, b }],
        2.0,
        false,
        json!({}),
    );
    let norm = |m: &quiver_merge::Merged| {
        let q = &m.modules[Q];
        (q.a.frob2() + q.b.frob2()).sqrt()
    };
    let mut s = lego_spec(Some(1), false);
    let raw = run(std::slice::from_ref(&x), &s);
    assert!(
        (norm(&raw) - 2f64.sqrt() / 2.0 * 2f64.sqrt()).abs() < 1e-6,
        "raw centroid norm {}",
        norm(&raw)
    );
    s.param_reweight = true;
    let restored = run(std::slice::from_ref(&x), &s);
    assert!(
        (norm(&restored) - 2f64.sqrt()).abs() < 1e-6,
        "members' norm is √2, got {}",
        norm(&restored)
    );
    let report = &restored.reports[0];
    assert_eq!(
        report.details.as_ref().and_then(|d| d["clusters"].as_u64()),
        Some(1)
    );
}
