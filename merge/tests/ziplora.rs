//! ZipLoRA (data-free): algorithms.md §5 tests.

mod common;

use candle_core::Device;
use common::{Module, adapter, random};
use quiver_merge::adapter::{LoraModule, ModuleKind};
use quiver_merge::engine::merged_delta;
use quiver_merge::mat::Mat;
use quiver_merge::methods::Present;
use quiver_merge::ziplora::{ZipParams, ziplora};
use quiver_merge::{MergeSpec, Method, merge};
use serde_json::json;

const Q: &str = "model.layers.0.self_attn.q_proj";

/// A rank-`r` factor pair whose A only touches input columns `cols`.
fn supported(
    r: usize,
    d_in: usize,
    d_out: usize,
    cols: std::ops::Range<usize>,
    seed: u64,
) -> (Mat, Mat) {
    let mut a = random(r, d_in, seed);
    for row in 0..r {
        for c in 0..d_in {
            if !cols.contains(&c) {
                a.data[row * d_in + c] = 0.0;
            }
        }
    }
    (a, random(d_out, r, seed + 100))
}

#[test]
fn disjoint_supports_drive_each_merger_to_its_own_columns() {
    let (ac, bc) = supported(4, 16, 12, 0..8, 1);
    let (as_, bs) = supported(4, 16, 12, 8..16, 2);
    let content = Present {
        index: 0,
        module: LoraModule {
            kind: ModuleKind::Linear,
            a: ac,
            b: bc,
            scale: 1.0,
        },
    };
    let style = Present {
        index: 1,
        module: LoraModule {
            kind: ModuleKind::Linear,
            a: as_,
            b: bs,
            scale: 1.0,
        },
    };
    let (m, stats) = ziplora(
        &Device::Cpu,
        &[(1.0, &content), (1.0, &style)],
        ZipParams {
            lambda: 0.01,
            steps: 600,
            lr: 0.05,
        },
    )
    .expect("ziplora");
    for (content, style) in m[0][..8].iter().zip(&m[1][..8]) {
        assert!(
            (content - 1.0).abs() < 0.05,
            "content merger on its support: {content}"
        );
        assert!(style.abs() < 0.05, "style merger off its support: {style}");
    }
    for (content, style) in m[0][8..16].iter().zip(&m[1][8..16]) {
        assert!(
            (style - 1.0).abs() < 0.05,
            "style merger on its support: {style}"
        );
        assert!(
            content.abs() < 0.05,
            "content merger off its support: {content}"
        );
    }
    assert!(
        stats.loss_final < 0.01 * stats.loss_initial.max(1e-3),
        "{stats:?}"
    );
    assert!(
        stats.penalty_final < stats.penalty_initial * 0.1,
        "{stats:?}"
    );
    assert!(stats.reconstruction.iter().all(|r| *r < 1e-2), "{stats:?}");
}

#[test]
fn loss_never_increases_with_a_small_learning_rate() {
    let (a1, b1) = (random(4, 20, 3), random(10, 4, 4));
    let (a2, b2) = (random(6, 20, 5), random(10, 6, 6));
    let x = Present {
        index: 0,
        module: LoraModule {
            kind: ModuleKind::Linear,
            a: a1,
            b: b1,
            scale: 2.0,
        },
    };
    let y = Present {
        index: 1,
        module: LoraModule {
            kind: ModuleKind::Linear,
            a: a2,
            b: b2,
            scale: 0.5,
        },
    };
    let (_, stats) = ziplora(
        &Device::Cpu,
        &[(1.0, &x), (1.0, &y)],
        ZipParams {
            lambda: 0.01,
            steps: 100,
            lr: 1e-3,
        },
    )
    .expect("zip");
    for w in stats.history.windows(2) {
        assert!(w[1] <= w[0] + 1e-6, "loss went up: {} → {}", w[0], w[1]);
    }
    assert!(stats.loss_final < stats.loss_initial);
}

#[test]
fn export_is_exact_and_deterministic_through_the_engine() {
    let dir = tempfile::tempdir().expect("tmp");
    let (ac, bc) = supported(4, 16, 12, 0..8, 7);
    let (as_, bs) = supported(4, 16, 12, 8..16, 8);
    let c = adapter(
        dir.path(),
        "content",
        &[Module {
            path: Q,
            a: ac,
            b: bc,
        }],
        4.0,
        false,
        json!({}),
    );
    let s = adapter(
        dir.path(),
        "style",
        &[Module {
            path: Q,
            a: as_,
            b: bs,
        }],
        4.0,
        false,
        json!({}),
    );
    let mut spec = MergeSpec::new(Method::ZipLora);
    spec.steps = Some(400);
    spec.lr = Some(0.05);
    let run = || merge(&[c.clone(), s.clone()], &spec, &Device::Cpu, &|_, _| {}).expect("merge");
    let m = run();
    assert_eq!(
        m.modules[Q].a.rows, 8,
        "exported by concatenation: rank r_c + r_s"
    );
    let cat = merged_delta(
        &merge(
            &[c.clone(), s.clone()],
            &MergeSpec::new(Method::Cat),
            &Device::Cpu,
            &|_, _| {},
        )
        .expect("cat")
        .modules[Q],
    );
    // Disjoint supports: the learned merge keeps both adapters whole.
    let err = merged_delta(&m.modules[Q]).rel_err(&cat);
    assert!(err < 0.02, "{err}");
    let again = run();
    assert_eq!(again.modules[Q].a, m.modules[Q].a);
    assert_eq!(again.modules[Q].b, m.modules[Q].b);
    let details = m.reports[0].details.as_ref().expect("details");
    assert!(details["column_overlap_after"].as_f64().is_some());
    assert!(details["loss_final"].as_f64() <= details["loss_initial"].as_f64());
    // Truncated export goes through the factored route.
    spec.rank = Some(3);
    let t = merge(&[c, s], &spec, &Device::Cpu, &|_, _| {}).expect("merge");
    assert_eq!(t.modules[Q].a.rows, 3);
    assert_eq!(t.reports[0].route, "factored");
}
