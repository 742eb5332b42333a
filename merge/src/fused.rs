//! The dense family on the host, fused by blocks of rows: each input's `ΔWᵢ = sᵢ·Bᵢ·Aᵢ` is
//! recomputed from its factors one block at a time (a rank-r product, cheap next to a pass over
//! memory) wherever a pass needs it, never stored whole. Memory holds the result and, per
//! thread, a few cache-sized blocks, whatever the number of inputs; the passes run in parallel
//! over blocks, so one module at a time uses every core.
//!
//! Passes over one module: the inputs' magnitude thresholds (exact, two histogram passes, as
//! [`crate::sparsify::KthLargest`]; none for DARE or plain sums), then one pass that prunes,
//! elects signs and takes the disjoint mean (or the weighted sum) block by block, with the
//! randomized SVD's first product `Δ·Ω` and ‖Δ‖² taken from each finished block while it is in
//! cache. The arithmetic per entry is [`crate::host::combine`]'s, in the same order, so both give
//! the same bits (tested below).

use rayon::prelude::*;

use crate::blas::{Operand, sgemm};
use crate::context::{ModuleContext, Present};
use crate::error::MergeError;
use crate::mat::Mat;
use crate::sparsify::{self, KthLargest, Pruner, Threshold, sign};
use crate::spec::{Compat, MajoritySign, Pruning};

/// Entries of one block across all inputs (4 MiB of f32): large enough for efficient products,
/// small enough to stay in cache while a block is combined.
const BLOCK_ENTRIES: usize = 1 << 20;

/// A module's combined delta, with what the randomized SVD takes from it on the way.
pub struct Combined {
    pub delta: Mat,
    /// `Δ · Ω` when a sketch `Ω` was given.
    pub sketched: Option<Mat>,
    /// ‖Δ‖²_F.
    pub frob2: f64,
}

/// One input's factors: `ΔW = scale · b · a`, `b` d_out×r, `a` r×d_in.
struct Factors<'a> {
    b: &'a Mat,
    a: &'a Mat,
    scale: f32,
}

impl Factors<'_> {
    /// Rows `r0..r0 + out.len() / d_in` of ΔW into `out`.
    fn delta_rows(&self, r0: usize, out: &mut [f32]) {
        let (r, d_in) = (self.b.cols, self.a.cols);
        let rows = out.len() / d_in.max(1);
        let b = &self.b.data[r0 * r..(r0 + rows) * r];
        sgemm(
            self.scale,
            Operand::new(b, rows, r),
            Operand::new(&self.a.data, r, d_in),
            0.0,
            out,
        );
    }
}

/// Rows `r0..` of one module's dense delta `s·B·A` into `out` (as many rows as it holds).
pub fn delta_rows_of(m: &crate::adapter::LoraModule, r0: usize, out: &mut [f32]) {
    Factors {
        b: &m.b,
        a: &m.a,
        scale: m.scale,
    }
    .delta_rows(r0, out);
}

/// Combines `inputs` per `ctx.spec` (`sources[j] = (weight, input index)` for `inputs[j]`, `tag`
/// salts the pruning seeds); with `omega` (d_in × l), also returns `Δ·Ω`.
pub fn combine(
    ctx: &ModuleContext<'_>,
    inputs: &[Present],
    sources: &[(f64, usize)],
    tag: &str,
    omega: Option<&Mat>,
) -> Result<Combined, MergeError> {
    combine_in_blocks(ctx, inputs, sources, tag, omega, BLOCK_ENTRIES)
}

/// [`combine`] with blocks of about `block_entries` entries across the inputs.
fn combine_in_blocks(
    ctx: &ModuleContext<'_>,
    inputs: &[Present],
    sources: &[(f64, usize)],
    tag: &str,
    omega: Option<&Mat>,
    block_entries: usize,
) -> Result<Combined, MergeError> {
    let first = &inputs
        .first()
        .ok_or_else(|| MergeError::numeric(ctx.path, "no inputs"))?
        .module;
    let (d_out, d_in) = (first.b.rows, first.a.cols);
    let factors: Vec<Factors<'_>> = inputs
        .iter()
        .map(|p| Factors {
            b: &p.module.b,
            a: &p.module.a,
            scale: p.module.scale,
        })
        .collect();
    if factors
        .iter()
        .any(|f| (f.b.rows, f.a.cols) != (d_out, d_in) || f.b.cols != f.a.rows)
    {
        return Err(MergeError::numeric(ctx.path, "inputs of different shapes"));
    }
    let n = factors.len();
    let rows_per_block = (block_entries / (n * d_in).max(1)).clamp(1, d_out.max(1));
    let block = rows_per_block * d_in;

    let spec = ctx.spec;
    let peft = spec.compat == Compat::Peft;
    let density = spec.effective_density();
    let kind = spec.method.pruning();
    let thresholds: Vec<Threshold> = match (kind, ctx.global_thresholds) {
        (Pruning::Magnitude, Some(global)) => sources.iter().map(|s| global[s.1]).collect(),
        (Pruning::Magnitude, None) => {
            let k = (density * (d_out * d_in) as f64).floor() as u64;
            thresholds(ctx, &factors, k, block)?
        }
        _ => vec![
            Threshold {
                value: 0.0,
                ties: u64::MAX,
                equal: 0,
                none: false,
            };
            n
        ],
    };
    let pruners: Vec<Pruner> = (0..n)
        .map(|j| {
            let seed = sparsify::derive_seed(spec.seed, ctx.path, sources[j].1, tag);
            Pruner::new(kind, thresholds[j], peft, density, seed)
        })
        .collect();
    let rule = Rule {
        weights: sources.iter().map(|s| s.0 as f32).collect(),
        peft,
        consensus: spec.method.consensus(),
        frequency: spec.majority_sign == MajoritySign::Frequency,
        lambda: spec.lambda.unwrap_or(1.0) as f32,
    };

    let mut delta = vec![0.0f32; d_out * d_in];
    // One block: the inputs' pruned deltas, then two block-sized sums (the disjoint mean's).
    let work = |bi: usize, out: &mut [f32], scratch: &mut Vec<f32>, ties: &mut [u64]| {
        ctx.ctl.check()?;
        let r0 = bi * rows_per_block;
        let len = out.len();
        scratch.resize((n + 2) * len, 0.0);
        let (x, sums) = scratch.split_at_mut(n * len);
        for (j, (f, x)) in factors.iter().zip(x.chunks_exact_mut(len)).enumerate() {
            f.delta_rows(r0, x);
            pruners[j].apply_at(x, (r0 * d_in) as u64, &mut ties[j]);
        }
        rule.apply(x, out, sums);
        let y = omega.map(|o| {
            let rows = len / d_in;
            let mut y = vec![0.0f32; rows * o.cols];
            sgemm(
                1.0,
                Operand::new(out, rows, d_in),
                Operand::new(&o.data, o.rows, o.cols),
                0.0,
                &mut y,
            );
            y
        });
        let frob2: f64 = out.iter().map(|&x| f64::from(x) * f64::from(x)).sum();
        Ok::<_, MergeError>((frob2, y))
    };
    let ties = || thresholds.iter().map(|t| t.ties).collect::<Vec<u64>>();
    let parts: Vec<(f64, Option<Vec<f32>>)> = if pruners.iter().any(Pruner::ordered) {
        // Exactly-k pruning with surplus ties keeps the first ones in order: one block after the
        // other, the count carried over.
        let (mut scratch, mut ties) = (Vec::new(), ties());
        delta
            .chunks_mut(block)
            .enumerate()
            .map(|(bi, out)| work(bi, out, &mut scratch, &mut ties))
            .collect::<Result<_, _>>()?
    } else {
        delta
            .par_chunks_mut(block)
            .enumerate()
            .map_init(
                || (Vec::new(), ties()),
                |(scratch, ties), (bi, out)| work(bi, out, scratch, ties),
            )
            .collect::<Result<_, _>>()?
    };
    let frob2 = parts.iter().map(|p| p.0).sum();
    let sketched = omega.map(|o| {
        let mut y = Vec::with_capacity(d_out * o.cols);
        parts
            .iter()
            .filter_map(|p| p.1.as_deref())
            .for_each(|b| y.extend_from_slice(b));
        Mat::new(d_out, o.cols, y)
    });
    Ok(Combined {
        delta: Mat::new(d_out, d_in, delta),
        sketched,
        frob2,
    })
}

/// Each input's exact magnitude threshold keeping `k` entries: the two histogram passes of
/// [`KthLargest`] over the inputs' deltas, recomputed block by block.
fn thresholds(
    ctx: &ModuleContext<'_>,
    factors: &[Factors<'_>],
    k: u64,
    block: usize,
) -> Result<Vec<Threshold>, MergeError> {
    let d_in = factors[0].a.cols;
    let d_out = factors[0].b.rows;
    let rows_per_block = block / d_in.max(1);
    let blocks = d_out.div_ceil(rows_per_block.max(1));
    let pass = |kth: &[KthLargest], todo: &[bool]| -> Result<Vec<KthLargest>, MergeError> {
        let fresh = || -> Vec<KthLargest> {
            kth.iter()
                .map(|t| {
                    let mut z = t.clone();
                    z.merge_reset();
                    z
                })
                .collect()
        };
        (0..blocks)
            .into_par_iter()
            .try_fold(
                || (fresh(), Vec::new()),
                |(mut local, mut buf): (Vec<KthLargest>, Vec<f32>), bi| {
                    ctx.ctl.check()?;
                    let r0 = bi * rows_per_block;
                    let rows = rows_per_block.min(d_out - r0);
                    buf.resize(rows * d_in, 0.0);
                    for ((f, t), &go) in factors.iter().zip(local.iter_mut()).zip(todo) {
                        if go {
                            f.delta_rows(r0, &mut buf);
                            t.add(&buf);
                        }
                    }
                    Ok::<_, MergeError>((local, buf))
                },
            )
            .map(|r| r.map(|(local, _)| local))
            .try_reduce(fresh, |mut x, y| {
                x.iter_mut().zip(&y).for_each(|(a, b)| a.merge(b));
                Ok(x)
            })
    };
    let all = vec![true; factors.len()];
    let mut kth = pass(&vec![KthLargest::new(k); factors.len()], &all)?;
    let narrowed: Vec<bool> = kth.iter_mut().map(KthLargest::narrow).collect();
    if narrowed.iter().any(|&x| x) {
        let second = pass(&kth, &narrowed)?;
        for ((t, s), &go) in kth.iter_mut().zip(&second).zip(&narrowed) {
            if go {
                t.merge(s);
            }
        }
    }
    Ok(kth.iter().map(KthLargest::finish).collect())
}

/// How pruned entries combine: [`crate::host::combine`]'s arithmetic, entry by entry.
struct Rule {
    weights: Vec<f32>,
    peft: bool,
    consensus: bool,
    frequency: bool,
    lambda: f32,
}

impl Rule {
    /// `x` holds the n pruned inputs' blocks back to back; writes the combined block into `out`,
    /// using `sums` (two blocks) for the disjoint mean.
    fn apply(&self, x: &[f32], out: &mut [f32], sums: &mut [f32]) {
        let len = out.len();
        let input = |j: usize| &x[j * len..(j + 1) * len];
        out.iter_mut().for_each(|o| *o = 0.0);
        if !self.consensus {
            for (j, &w) in self.weights.iter().enumerate() {
                out.iter_mut().zip(input(j)).for_each(|(a, &x)| *a += w * x);
            }
            return;
        }
        // Votes (paper: on wᵢ·τ̂ᵢ, PEFT: on τ̂ᵢ), then the elected sign; ties go to +.
        for (j, &w) in self.weights.iter().enumerate() {
            let vw = if self.peft { 1.0 } else { w };
            if self.frequency {
                out.iter_mut()
                    .zip(input(j))
                    .for_each(|(a, &x)| *a += sign(vw * x));
            } else {
                out.iter_mut()
                    .zip(input(j))
                    .for_each(|(a, &x)| *a += vw * x);
            }
        }
        out.iter_mut()
            .for_each(|v| *v = if *v >= 0.0 { 1.0 } else { -1.0 });
        // The agreeing entries' weighted sum and their weight (|w|, or 1 for PEFT's count), in
        // input order; zeros never agree.
        let (num, den) = sums.split_at_mut(len);
        num.iter_mut().for_each(|v| *v = 0.0);
        den.iter_mut().for_each(|v| *v = 0.0);
        for (j, &w) in self.weights.iter().enumerate() {
            let (vw, dw) = if self.peft { (1.0, 1.0) } else { (w, w.abs()) };
            for (((n, d), &e), &x) in num.iter_mut().zip(den.iter_mut()).zip(&*out).zip(input(j)) {
                let agree = f32::from(u8::from(sign(vw * x) == e));
                *n += agree * w * x;
                *d += agree * dw;
            }
        }
        let min_den = if self.peft { 1.0 } else { 0.0 };
        for ((o, &n), &d) in out.iter_mut().zip(&*num).zip(&*den) {
            *o = if d == 0.0 {
                0.0
            } else {
                self.lambda * n / d.max(min_den)
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Device;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::*;
    use crate::adapter::{LoraModule, ModuleKind};
    use crate::control::Control;
    use crate::host::{Host, combine as whole, delta_into};
    use crate::spec::{MergeSpec, Method};

    const PATH: &str = "model.layers.0.mlp.up_proj";

    /// Factors with values drawn from `levels` distinct numbers: few levels make many equal
    /// magnitudes (ties at the threshold).
    fn module(seed: u64, d_out: usize, d_in: usize, r: usize, levels: u32) -> LoraModule {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut m = |rows, cols| {
            let data = (0..rows * cols)
                .map(|_| (rng.random_range(0..levels) as f32 - (levels / 2) as f32) * 0.25)
                .collect();
            Mat::new(rows, cols, data)
        };
        LoraModule {
            kind: ModuleKind::Linear,
            a: m(r, d_in),
            b: m(d_out, r),
            scale: 0.5,
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

    /// Every dense method, both semantics, frequency votes and λ.
    fn cases() -> Vec<MergeSpec> {
        let mut out = Vec::new();
        for density in [0.3, 1.0] {
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
        f.lambda = Some(1.5);
        out.push(f);
        out
    }

    /// The fused blocks give the same bits as the whole-tensor combination, for blocks of one
    /// row, of several rows with a ragged last one, and of the whole module; with few distinct
    /// values (surplus ties at PEFT's exactly-k threshold, pruned in order) and with many.
    #[test]
    fn fused_blocks_match_the_whole_tensor_combination() {
        let (d_out, d_in, r) = (37, 23, 4);
        for levels in [3, 1000] {
            let inputs: Vec<Present> = (0..3)
                .map(|i| Present {
                    index: i,
                    module: module(7 + i as u64 + u64::from(levels), d_out, d_in, r, levels),
                })
                .collect();
            for spec in cases() {
                let ctl = Control::none();
                let ctx = ModuleContext {
                    path: PATH,
                    spec: &spec,
                    device: &Device::Cpu,
                    compute: &Host,
                    global_thresholds: None,
                    default_rank: 4,
                    ctl: &ctl,
                };
                let sources: Vec<(f64, usize)> = inputs
                    .iter()
                    .map(|p| (spec.weight(p.index), p.index))
                    .collect();
                let want = whole(&ctx, "delta", &sources, |j, buf| {
                    Ok(delta_into(&inputs[j].module, buf))
                })
                .expect("whole");
                for block in [1, 3 * d_in * 5, usize::MAX / 4] {
                    let got = combine_in_blocks(&ctx, &inputs, &sources, "delta", None, block)
                        .expect("fused");
                    assert_eq!(
                        got.delta.data, want.data,
                        "{:?} {:?} density {:?} levels {levels} block {block}",
                        spec.compat, spec.method, spec.density
                    );
                    // Summed per block, then across blocks: equal up to f64 rounding.
                    let f = want.frob2();
                    assert!((got.frob2 - f).abs() <= 1e-12 * f.max(1.0), "‖Δ‖²");
                }
            }
        }
    }

    /// The sketch taken block by block is the product of the finished Δ with Ω.
    #[test]
    fn the_sketch_is_the_product_of_the_result() {
        let inputs: Vec<Present> = (0..3)
            .map(|i| Present {
                index: i,
                module: module(40 + i as u64, 29, 17, 3, 1000),
            })
            .collect();
        let spec = spec("ties", Compat::Paper, 0.5);
        let ctl = Control::none();
        let ctx = ModuleContext {
            path: PATH,
            spec: &spec,
            device: &Device::Cpu,
            compute: &Host,
            global_thresholds: None,
            default_rank: 4,
            ctl: &ctl,
        };
        let sources: Vec<(f64, usize)> = inputs.iter().map(|p| (1.0, p.index)).collect();
        let omega = crate::linalg::sketch(29, 17, 4, 5);
        let c = combine_in_blocks(&ctx, &inputs, &sources, "delta", Some(&omega), 2 * 3 * 17)
            .expect("fused");
        let y = c.sketched.expect("sketch");
        assert_eq!(y, crate::blas::times(&c.delta, &omega));
    }
}
