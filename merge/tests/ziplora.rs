//! ZipLoRA (data-free): algorithms.md §5 tests.

mod common;

use candle_core::Device;
use common::{Module, adapter, random};
use quiver_merge::adapter::{LoraModule, ModuleKind};
use quiver_merge::context::Present;
use quiver_merge::engine::merged_delta;
use quiver_merge::mat::Mat;
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
    let (m, stats) = ziplora(
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
    // The reported overlaps, recomputed from the dense deltas (overlapping supports: not 0).
    let dx = x.module.b.clone().scale(2.0).matmul_naive(&x.module.a);
    let dy = y.module.b.clone().scale(0.5).matmul_naive(&y.module.a);
    let before = column_overlap(&dx, &dy);
    assert!(before > 0.05, "random factors overlap: {before}");
    assert!(
        (stats.column_overlap_before - before).abs() < 1e-5,
        "reported {} vs {before}",
        stats.column_overlap_before
    );
    let after = column_overlap(&columns_scaled(&dx, &m[0]), &columns_scaled(&dy, &m[1]));
    assert!(
        (stats.column_overlap_after - after).abs() < 1e-5,
        "reported {} vs {after}",
        stats.column_overlap_after
    );
}

/// ZipLoRA's column overlap of X and Y: Σₖ |⟨colₖX, colₖY⟩| / (‖X‖_F·‖Y‖_F), from dense matrices.
fn column_overlap(x: &Mat, y: &Mat) -> f64 {
    assert_eq!((x.rows, x.cols), (y.rows, y.cols));
    let cross: f64 = (0..x.cols)
        .map(|k| {
            (0..x.rows)
                .map(|r| f64::from(x.at(r, k)) * f64::from(y.at(r, k)))
                .sum::<f64>()
                .abs()
        })
        .sum();
    cross / (x.frob2() * y.frob2()).sqrt()
}

/// `m · diag(factors)`: column k times `factors[k]`.
fn columns_scaled(m: &Mat, factors: &[f32]) -> Mat {
    assert_eq!(m.cols, factors.len());
    let mut out = m.clone();
    for (i, x) in out.data.iter_mut().enumerate() {
        *x *= factors[i % m.cols];
    }
    out
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
    let figure = |key: &str| {
        details[key]
            .as_f64()
            .unwrap_or_else(|| panic!("{key} missing from {details}"))
    };
    // Disjoint supports: column k of ΔW_c is 0 for k ≥ 8 and of ΔW_s for k < 8, so every column
    // inner product vanishes and the overlap is exactly 0, before and after (whatever the
    // mergers). Recomputed from the exported halves X = B[:, ..4]·A[..4, :], Y = B[:, 4..]·A[4.., :].
    let (before, after) = (
        figure("column_overlap_before"),
        figure("column_overlap_after"),
    );
    assert!(before.abs() < 1e-12, "overlap before {before}");
    assert!(
        after.abs() < 1e-12 && after <= before,
        "overlap after {after}"
    );
    let (b, a) = (&m.modules[Q].b, &m.modules[Q].a);
    let half = |cols: std::ops::Range<usize>| {
        let bh = Mat::new(
            b.rows,
            cols.len(),
            (0..b.rows)
                .flat_map(|r| cols.clone().map(move |c| (r, c)))
                .map(|(r, c)| b.at(r, c))
                .collect(),
        );
        let ah = Mat::new(
            cols.len(),
            a.cols,
            a.data[cols.start * a.cols..cols.end * a.cols].to_vec(),
        );
        bh.matmul_naive(&ah)
    };
    let exported = column_overlap(&half(0..4), &half(4..8));
    assert!(
        (exported - after).abs() < 1e-6,
        "{exported} vs reported {after}"
    );
    assert!(figure("loss_final") <= figure("loss_initial"), "{details}");
    // Truncated export goes through the factored route.
    spec.rank = Some(3);
    let t = merge(&[c, s], &spec, &Device::Cpu, &|_, _| {}).expect("merge");
    assert_eq!(t.modules[Q].a.rows, 3);
    assert_eq!(t.reports[0].route, "factored");
}

/// Two tiny rank-4 adapters of the issue's crash (2 layers, q and v, d = 64).
fn tiny_pair(dir: &std::path::Path) -> (quiver_merge::LoraAdapter, quiver_merge::LoraAdapter) {
    let paths = [
        "model.layers.0.self_attn.q_proj",
        "model.layers.0.self_attn.v_proj",
        "model.layers.1.self_attn.q_proj",
        "model.layers.1.self_attn.v_proj",
    ];
    let make = |name: &str, seed: u64| {
        let modules: Vec<Module<'_>> = paths
            .iter()
            .enumerate()
            .map(|(i, p)| Module {
                path: p,
                a: random(4, 64, seed + 10 * i as u64),
                b: random(64, 4, seed + 10 * i as u64 + 1),
            })
            .collect();
        adapter(dir, name, &modules, 8.0, false, json!({}))
    };
    (make("A", 1), make("B", 500))
}

/// Regression (issue 20): the Adam moments kept candle's op graph from step to step, so after
/// the run dropping a chain of `steps` nodes recursed and overflowed the stack, aborting the
/// process (the service with it). Run on a thread with a small stack so the old code fails fast
/// (an abort of the test binary); now each step is detached and the depth does not grow.
#[test]
fn many_steps_do_not_grow_the_graph_or_overflow_the_stack() {
    let dir = tempfile::tempdir().expect("tmp");
    let (a, b) = tiny_pair(dir.path());
    let run = std::thread::Builder::new()
        .stack_size(256 * 1024)
        .spawn(move || {
            let (x, y) = (
                a.load_module(Q).expect("load").expect("q"),
                b.load_module(Q).expect("load").expect("q"),
            );
            let (x, y) = (
                Present {
                    index: 0,
                    module: x,
                },
                Present {
                    index: 1,
                    module: y,
                },
            );
            ziplora(
                &Device::Cpu,
                &[(1.0, &x), (0.7, &y)],
                ZipParams {
                    lambda: 0.01,
                    steps: 2_000,
                    lr: 0.01,
                },
            )
            .map(|(m, stats)| (m.len(), stats.history.len()))
        })
        .expect("spawn");
    let (mergers, history) = run.join().expect("no panic").expect("ziplora");
    assert_eq!((mergers, history), (2, 2_000));
}

/// The issue's command (`--steps 20000 --seed 1 --weights 1,0.7`, scaled down to 2,000 steps)
/// through the engine, on rayon workers with small stacks (the issue's abort came from a rayon
/// worker with the default 2 MiB after 20,000 steps).
#[test]
fn the_issue_s_ziplora_merge_completes_on_small_stacks() {
    let dir = tempfile::tempdir().expect("tmp");
    let (a, b) = tiny_pair(dir.path());
    let mut spec = MergeSpec::new(Method::ZipLora);
    spec.steps = Some(2_000);
    spec.seed = 1;
    spec.weights = Some(vec![1.0, 0.7]);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .stack_size(256 * 1024)
        .build()
        .expect("pool");
    let m = pool
        .install(|| merge(&[a, b], &spec, &Device::Cpu, &|_, _| {}))
        .expect("merge");
    assert_eq!(m.modules.len(), 4);
    assert!(
        m.modules
            .values()
            .all(|x| x.a.data.iter().chain(&x.b.data).all(|v| v.is_finite()))
    );
}
