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
use crate::rank;
use crate::sparsify::{self, KthLargest, Pruner, Threshold, sign};
use crate::spec::{Compat, MajoritySign, Pruning};

/// Entries of one block across all inputs (16 MiB of f32): enough rows per product that packing
/// the factor is a small part of it, small enough to stay in the last-level cache.
const BLOCK_ENTRIES: usize = 1 << 22;

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
        if d_in == 0 {
            return;
        }
        let rows = out.len() / d_in;
        let b = &self.b.data[r0 * r..(r0 + rows) * r];
        crate::rank::rank_product(
            self.scale,
            b,
            r,
            &self.a.data,
            d_in,
            &mut out[..rows * d_in],
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
    let block_len = rows_per_block * d_in;

    let spec = ctx.spec;
    let peft = spec.compat == Compat::Peft;
    let density = spec.effective_density();
    let kind = spec.method.pruning();
    let thresholds: Vec<Threshold> = match (kind, ctx.global_thresholds) {
        (Pruning::Magnitude, Some(global)) => sources.iter().map(|s| global[s.1]).collect(),
        (Pruning::Magnitude, None) => {
            let k = (density * (d_out * d_in) as f64).floor() as u64;
            thresholds(ctx, &factors, k, block_len)?
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

    // Every entry is written below: a buffer from the previous module needs no zeroing (fresh
    // pages of 100+ MB per module cost a tenth of the time in page faults).
    let mut delta = take_buffer();
    delta.resize(d_out * d_in, 0.0);
    // Exactly-k pruning with surplus ties keeps the first ones in index order.
    let ordered = pruners.iter().any(Pruner::ordered);
    // One block: every input's pruned delta, then their combination.
    let block = |bi: usize, out: &mut [f32], x: &mut [f32], ties: &mut [u64]| {
        let r0 = bi * rows_per_block;
        let len = out.len();
        if ordered {
            // Whole rows in order: each input's block at once.
            for (j, (f, x)) in factors.iter().zip(x.chunks_exact_mut(len)).enumerate() {
                f.delta_rows(r0, x);
                pruners[j].apply_at(x, (r0 * d_in) as u64, &mut ties[j]);
            }
            rule.apply(x, out, &mut [0.0; 2 * CHUNK]);
        } else {
            combine_panels(&factors, &pruners, &rule, r0, d_in, out, x);
        }
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
    let work = |bi: usize, out: &mut [f32], ties: &mut [u64]| {
        ctx.ctl.check()?;
        let floats = if ordered {
            n * out.len()
        } else {
            n * (out.len() / d_in.max(1)) * PANEL_COLS.min(d_in)
        };
        with_scratch(floats, 0, |x, _| block(bi, out, x, ties))
    };
    let ties = || thresholds.iter().map(|t| t.ties).collect::<Vec<u64>>();
    let parts: Vec<(f64, Option<Vec<f32>>)> = if ordered {
        // One block after the other, the count of ties kept carried over.
        let mut ties = ties();
        delta
            .chunks_mut(block_len)
            .enumerate()
            .map(|(bi, out)| work(bi, out, &mut ties))
            .collect::<Result<_, _>>()?
    } else {
        delta
            .par_chunks_mut(block_len)
            .enumerate()
            .map_init(ties, |ties, (bi, out)| work(bi, out, ties))
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

thread_local! {
    /// Per-thread block buffers, kept between blocks and modules: a fresh 16 MB buffer per rayon
    /// split was zeroed page by page by the kernel, a fifth of the time.
    static SCRATCH: std::cell::RefCell<(Vec<f32>, Vec<u32>)> =
        const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

/// Runs `f` with this thread's block buffers of `floats` and `words` entries (contents
/// unspecified: callers write before they read).
fn with_scratch<R>(floats: usize, words: usize, f: impl FnOnce(&mut [f32], &mut [u32]) -> R) -> R {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut s) => {
            let (a, b) = &mut *s;
            if a.len() < floats {
                a.resize(floats, 0.0);
            }
            if b.len() < words {
                b.resize(words, 0);
            }
            f(&mut a[..floats], &mut b[..words])
        }
        // Re-entered on this thread (not done today): fresh buffers.
        Err(_) => f(&mut vec![0.0; floats], &mut vec![0; words]),
    })
}

/// The buffers of finished modules' results, kept for the next ones (the host's dense family
/// runs one module per lane, a few lanes at most).
static SPARE: std::sync::Mutex<Vec<Vec<f32>>> = std::sync::Mutex::new(Vec::new());

fn take_buffer() -> Vec<f32> {
    SPARE
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .pop()
        .unwrap_or_default()
}

/// Hands a finished module's result buffer back for the next module.
pub fn give_buffer(v: Vec<f32>) {
    SPARE.lock().unwrap_or_else(|p| p.into_inner()).push(v);
}

/// Frees the kept buffers (the end of a merge: a long-lived process must not hold 100+ MB).
pub fn release_buffer() {
    SPARE.lock().unwrap_or_else(|p| p.into_inner()).clear();
}

/// Each input's exact magnitude threshold keeping `k` entries (the k-th largest |x|, as
/// [`KthLargest`] reports it), in one pass over the inputs' deltas where a sample brackets it.
///
/// A sample of evenly spaced rows gives an interval of |x| that holds the k-th largest with a
/// wide margin; one pass then counts the entries above the interval and keeps those inside it
/// (a few percent), and the k-th largest is selected among those. When the interval misses (the
/// count above it reaches k, or with the candidates stays below it) or would keep too many, that
/// input falls back to [`exact_thresholds`]' two histogram passes. Either way the result is exact.
fn thresholds(
    ctx: &ModuleContext<'_>,
    factors: &[Factors<'_>],
    k: u64,
    block: usize,
) -> Result<Vec<Threshold>, MergeError> {
    thresholds_sampling(ctx, factors, k, block, SAMPLES)
}

/// [`thresholds`] with `samples` entries per input in the bracketing sample.
fn thresholds_sampling(
    ctx: &ModuleContext<'_>,
    factors: &[Factors<'_>],
    k: u64,
    block: usize,
    samples: usize,
) -> Result<Vec<Threshold>, MergeError> {
    let (d_out, d_in) = (factors[0].b.rows, factors[0].a.cols);
    let len = (d_out * d_in) as u64;
    if k == 0 || k >= len {
        // Nothing kept, or everything: no pass needed.
        return Ok(vec![sparsify::threshold_of(&[], k); factors.len()]);
    }
    let intervals: Vec<Option<(u32, u32)>> = factors
        .par_iter()
        .map(|f| sampled_interval(f, k, len, samples))
        .collect();
    let rows_per_block = block / d_in.max(1);
    let blocks = d_out.div_ceil(rows_per_block.max(1));
    // Candidates kept per input at most: beyond this the pass gives up on that input.
    let cap = (len / 16).max(1 << 16) as usize;
    type Tally = (Vec<u64>, Vec<Vec<u32>>);
    let empty = || -> Tally { (vec![0; factors.len()], vec![Vec::new(); factors.len()]) };
    let (above, cands) = (0..blocks)
        .into_par_iter()
        .try_fold(empty, |(mut above, mut cands): Tally, bi| {
            ctx.ctl.check()?;
            let r0 = bi * rows_per_block;
            let rows = rows_per_block.min(d_out - r0);
            with_scratch(0, rows * d_in, |_, tmp| {
                for (j, f) in factors.iter().enumerate() {
                    let Some((lo, hi)) = intervals[j] else {
                        continue;
                    };
                    if cands[j].len() > cap {
                        continue;
                    }
                    let r = f.b.cols;
                    let b = &f.b.data[r0 * r..(r0 + rows) * r];
                    let (n_above, end) =
                        scan_delta(f.scale, (b, r), (&f.a.data, d_in), rows, (lo, hi), tmp);
                    cands[j].extend_from_slice(&tmp[..end]);
                    above[j] += n_above;
                }
            });
            Ok::<_, MergeError>((above, cands))
        })
        .try_reduce(empty, |(mut a, mut c), (a2, c2)| {
            for j in 0..a.len() {
                a[j] += a2[j];
                c[j].extend(c2[j].iter());
            }
            Ok((a, c))
        })?;
    let mut out: Vec<Option<Threshold>> = cands
        .into_par_iter()
        .enumerate()
        .map(|(j, cands)| {
            if intervals[j].is_none() || cands.len() > cap {
                return None;
            }
            select_in(cands, k.checked_sub(above[j])?)
        })
        .collect();
    let missing: Vec<usize> = (0..factors.len()).filter(|&j| out[j].is_none()).collect();
    if !missing.is_empty() {
        let subset: Vec<&Factors<'_>> = missing.iter().map(|&j| &factors[j]).collect();
        let exact = exact_thresholds(ctx, &subset, k, block)?;
        for (&j, t) in missing.iter().zip(exact) {
            out[j] = Some(t);
        }
    }
    Ok(out
        .into_iter()
        .map(|t| {
            t.unwrap_or(Threshold {
                value: 0.0,
                ties: u64::MAX,
                equal: 0,
                none: false,
            })
        })
        .collect())
}

crate::simd::multiversion! {
    /// Over rows `0..rows` of ΔW = `scale · b · a` (`b`, `a` with their row lengths r and d_in),
    /// computed tile by tile and never stored: counts the entries whose |x| bits exceed `hi` and
    /// copies those within `lo..=hi` to the front of `out` (as many as the rows hold); returns
    /// (count, copied).
    fn scan_delta(
        scale: f32,
        b: (&[f32], usize),
        a: (&[f32], usize),
        rows: usize,
        bounds: (u32, u32),
        out: &mut [u32],
    ) -> (u64, usize) {
        let (lo, hi) = bounds;
        let width = hi.wrapping_sub(lo);
        let (mut above, mut end) = (0u64, 0usize);
        rank::for_each_piece(scale, b, a, rows, 0..a.1, |_, _, run| {
            // A mask of the candidates (a run is at most 32 entries), then only those walked.
            let (mut n, mut inside) = (0u32, 0u32);
            for (t, &x) in run.iter().enumerate() {
                let bits = x.to_bits() & 0x7fff_ffff;
                n += u32::from(bits > hi);
                inside |= u32::from(bits.wrapping_sub(lo) <= width) << t;
            }
            above += u64::from(n);
            while inside != 0 {
                let t = inside.trailing_zeros() as usize;
                out[end] = run[t].to_bits() & 0x7fff_ffff;
                end += 1;
                inside &= inside - 1;
            }
        });
        (above, end)
    }
}

/// Entries sampled per input to bracket its threshold.
const SAMPLES: usize = 1 << 18;

/// An interval of |x| bits that very likely holds the k-th largest of one input's ΔW, from
/// [`SAMPLES`] entries spread over every row (rows differ in scale, so a sample of whole rows
/// misjudges the quantile); `None` when the module is small enough for the exact passes.
fn sampled_interval(f: &Factors<'_>, k: u64, len: u64, samples: usize) -> Option<(u32, u32)> {
    let (d_out, d_in, r) = (f.b.rows, f.a.cols, f.b.cols);
    if len < 16 * samples as u64 {
        return None;
    }
    let per_row = samples.div_ceil(d_out).max(1);
    let stride = (d_in / per_row).max(1);
    let mut sample = Vec::with_capacity(per_row * d_out);
    for row in 0..d_out {
        let b = &f.b.data[row * r..(row + 1) * r];
        // A different column offset per row, so the columns sampled vary too.
        let offset = (row * 7919) % stride;
        for t in 0..per_row {
            let col = (offset + t * stride) % d_in;
            let x: f32 = b
                .iter()
                .enumerate()
                .map(|(i, &bi)| bi * f.a.data[i * d_in + col])
                .sum();
            sample.push(sparsify::abs_bits(f.scale * x));
        }
    }
    let m = sample.len() as f64;
    let p = k as f64 / len as f64;
    // Eight standard deviations of the sample's rank of the threshold, and a few more ranks for
    // values computed here in another order than the pass's (they may differ in the last bit).
    let margin = 8.0 * (m * p * (1.0 - p)).sqrt() + 64.0;
    // Descending ranks: the smaller rank is the larger value. Two selections, no sort.
    let mut at = |rank: f64| {
        let i = (rank.clamp(0.0, m - 1.0)) as usize;
        *sample.select_nth_unstable_by(i, |a, b| b.cmp(a)).1
    };
    let hi = if p * m - margin <= 0.0 {
        u32::MAX
    } else {
        at(p * m - margin)
    };
    let lo = if p * m + margin >= m - 1.0 {
        0
    } else {
        at(p * m + margin)
    };
    Some((lo, hi))
}

/// The threshold keeping the `need`-th largest of `cands` (|x| bits, all at least the interval's
/// low end, the `above` entries over it already counted): `None` when `need` is not within them.
fn select_in(mut cands: Vec<u32>, need: u64) -> Option<Threshold> {
    if need == 0 || need > cands.len() as u64 {
        return None;
    }
    let idx = need as usize - 1;
    let (_, &mut v, _) = cands.select_nth_unstable_by(idx, |a, b| b.cmp(a));
    let greater = cands.iter().filter(|&&b| b > v).count() as u64;
    let equal = cands.iter().filter(|&&b| b == v).count() as u64;
    Some(Threshold {
        value: f32::from_bits(v),
        ties: need - greater,
        equal,
        none: false,
    })
}

/// Each input's exact magnitude threshold keeping `k` entries: the two histogram passes of
/// [`KthLargest`] over the inputs' deltas, recomputed block by block.
fn exact_thresholds(
    ctx: &ModuleContext<'_>,
    factors: &[&Factors<'_>],
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
            .try_fold(fresh, |mut local: Vec<KthLargest>, bi| {
                ctx.ctl.check()?;
                let r0 = bi * rows_per_block;
                let rows = rows_per_block.min(d_out - r0);
                with_scratch(rows * d_in, 0, |buf, _| {
                    for ((f, t), &go) in factors.iter().zip(local.iter_mut()).zip(todo) {
                        if go {
                            f.delta_rows(r0, buf);
                            t.add(buf);
                        }
                    }
                });
                Ok::<_, MergeError>(local)
            })
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

/// Entries of the chunks [`Rule::apply`] works through.
const CHUNK: usize = 1024;

/// Columns of a panel of [`combine_panels`]: a panel of every input's factor `a` (r × 256) stays
/// in L2 while the block's rows are computed against it.
const PANEL_COLS: usize = 256;

/// Rows `r0..` of the combination into `out` (whole rows of `d_in`), panel by panel of
/// columns: each input's ΔW over the block's rows and the panel's columns from its factors
/// into `x` (row by row, the inputs' pieces back to back), pruned, then combined row by row.
/// For pruning that keeps no order (not exactly-k with surplus ties); `x` holds
/// `rows · n · min(PANEL_COLS, d_in)` entries, no more than the block.
fn combine_panels(
    factors: &[Factors<'_>],
    pruners: &[Pruner],
    rule: &Rule,
    r0: usize,
    d_in: usize,
    out: &mut [f32],
    x: &mut [f32],
) {
    let n = factors.len();
    let rows = out.len() / d_in.max(1);
    let mut sums = [0.0f32; 2 * CHUNK];
    // Pruning without order counts no ties.
    let mut no_ties = u64::MAX;
    let mut c0 = 0;
    while c0 < d_in {
        let w = PANEL_COLS.min(d_in - c0);
        let x = &mut x[..rows * n * w];
        for (j, f) in factors.iter().enumerate() {
            let r = f.b.cols;
            let b = &f.b.data[r0 * r..(r0 + rows) * r];
            let a = (&f.a.data[..], d_in);
            rank::rank_panel(f.scale, (b, r), a, rows, c0..c0 + w, &mut x[j * w..], n * w);
        }
        for (i, row) in x.chunks_exact_mut(n * w).enumerate() {
            let first = ((r0 + i) * d_in + c0) as u64;
            for (j, p) in pruners.iter().enumerate() {
                p.apply_at(&mut row[j * w..(j + 1) * w], first, &mut no_ties);
            }
            let o = i * d_in + c0;
            rule.apply(row, &mut out[o..o + w], &mut sums);
        }
        c0 += w;
    }
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
    /// using `sums` for the disjoint mean. Works through the block in chunks small enough that
    /// the sums stay in L1 while every input's chunk streams past.
    fn apply(&self, x: &[f32], out: &mut [f32], sums: &mut [f32; 2 * CHUNK]) {
        let len = out.len();
        let (num, den) = sums.split_at_mut(CHUNK);
        for c0 in (0..len).step_by(CHUNK) {
            let c1 = (c0 + CHUNK).min(len);
            let w = c1 - c0;
            combine_chunk(
                self,
                x,
                len,
                c0,
                &mut out[c0..c1],
                &mut num[..w],
                &mut den[..w],
            );
        }
    }
}

crate::simd::multiversion! {
    /// [`Rule::apply`] on entries `c0..c0 + out.len()` of a block of `len` entries per input;
    /// `x` holds the inputs' pruned blocks back to back.
    fn combine_chunk(
        rule: &Rule,
        x: &[f32],
        len: usize,
        c0: usize,
        out: &mut [f32],
        num: &mut [f32],
        den: &mut [f32],
    ) {
        let width = out.len();
        let input = |j: usize| &x[j * len + c0..j * len + c0 + width];
        out.iter_mut().for_each(|o| *o = 0.0);
        if !rule.consensus {
            for (j, &w) in rule.weights.iter().enumerate() {
                out.iter_mut()
                    .zip(input(j))
                    .for_each(|(a, &x)| *a += w * x);
            }
            return;
        }
        // Votes (paper: on wᵢ·τ̂ᵢ, PEFT: on τ̂ᵢ), then the elected sign; ties go to +.
        for (j, &w) in rule.weights.iter().enumerate() {
            let vw = if rule.peft { 1.0 } else { w };
            if rule.frequency {
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
        num.iter_mut().for_each(|v| *v = 0.0);
        den.iter_mut().for_each(|v| *v = 0.0);
        for (j, &w) in rule.weights.iter().enumerate() {
            let (vw, dw) = if rule.peft { (1.0, 1.0) } else { (w, w.abs()) };
            for (((n, d), &e), &x) in num
                .iter_mut()
                .zip(den.iter_mut())
                .zip(&*out)
                .zip(input(j))
            {
                let agree = f32::from(u8::from(sign(vw * x) == e));
                *n += agree * w * x;
                *d += agree * dw;
            }
        }
        let min_den = if rule.peft { 1.0 } else { 0.0 };
        for ((o, &n), &d) in out.iter_mut().zip(&*num).zip(&*den) {
            *o = if d == 0.0 {
                0.0
            } else {
                rule.lambda * n / d.max(min_den)
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

    /// The host's context for one module of `spec`.
    fn context<'a>(spec: &'a MergeSpec, ctl: &'a Control<'a>) -> ModuleContext<'a> {
        ModuleContext {
            path: PATH,
            spec,
            device: &Device::Cpu,
            compute: &Host,
            global_thresholds: None,
            default_rank: 4,
            ctl,
        }
    }

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
        // Narrower than a tile; and two panels wide, the second with whole tiles and an edge.
        for ((d_out, d_in, r), levels) in [(37, 23, 4), (13, 300, 5)]
            .into_iter()
            .flat_map(|shape| [(shape, 3), (shape, 1000)])
        {
            let inputs: Vec<Present> = (0..3)
                .map(|i| Present {
                    index: i,
                    module: module(7 + i as u64 + u64::from(levels), d_out, d_in, r, levels),
                })
                .collect();
            for spec in cases() {
                let ctl = Control::none();
                let ctx = context(&spec, &ctl);
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

    /// The sketch taken block by block is the product of the finished Δ with Ω (to rounding).
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
        let ctx = context(&spec, &ctl);
        let sources: Vec<(f64, usize)> = inputs.iter().map(|p| (1.0, p.index)).collect();
        let omega = crate::linalg::sketch(29, 17, 4, 5);
        let c = combine_in_blocks(&ctx, &inputs, &sources, "delta", Some(&omega), 2 * 3 * 17)
            .expect("fused");
        let y = c.sketched.expect("sketch");
        // Products of other shapes may round differently (OpenBLAS picks kernels by size).
        assert!(y.rel_err(&crate::blas::times(&c.delta, &omega)) < 1e-6);
    }

    /// The one-pass thresholds equal the exact k-th largest of each input's whole ΔW, on modules
    /// large enough to be sampled: dense spectra (the sample brackets the threshold) and few
    /// distinct values (ties at the threshold, or a bracket that misses and falls back).
    #[test]
    fn sampled_thresholds_are_exact() {
        let (d_out, d_in, r) = (300, 60, 4);
        for levels in [3, 1000] {
            let modules: Vec<LoraModule> = (0..3)
                .map(|i| module(90 + i + u64::from(levels), d_out, d_in, r, levels))
                .collect();
            let factors: Vec<Factors<'_>> = modules
                .iter()
                .map(|m| Factors {
                    b: &m.b,
                    a: &m.a,
                    scale: m.scale,
                })
                .collect();
            let spec = spec("ties", Compat::Paper, 0.5);
            let ctl = Control::none();
            let ctx = context(&spec, &ctl);
            let len = (d_out * d_in) as u64;
            for k in [0, 1, len / 100, len / 5, len / 2, len - 1, len] {
                let got =
                    thresholds_sampling(&ctx, &factors, k, 7 * d_in, 1024).expect("thresholds");
                for (j, m) in modules.iter().enumerate() {
                    let mut buf = Vec::new();
                    delta_into(m, &mut buf);
                    assert_eq!(
                        got[j],
                        sparsify::threshold_of(&buf, k),
                        "levels {levels} k {k} input {j}"
                    );
                }
                if levels == 1000 && k > 0 && k < len {
                    let (lo, hi) = sampled_interval(&factors[0], k, len, 1024).expect("sampled");
                    let mut buf = Vec::new();
                    delta_into(&modules[0], &mut buf);
                    let t = sparsify::abs_bits(sparsify::threshold_of(&buf, k).value);
                    assert!(
                        lo <= t && t <= hi,
                        "the sample brackets the threshold (k {k})"
                    );
                }
            }
        }
    }

    /// A randomized truncation of a fused result gives the same bits on 1 and on 3 threads
    /// (fixed blocks and fixed partial sums; rayon's splits must not reach the numbers).
    #[test]
    fn results_do_not_depend_on_the_thread_count() {
        use crate::context::{Backend, Truncation};
        let inputs: Vec<Present> = (0..3)
            .map(|i| Present {
                index: i,
                module: module(70 + i as u64, 2100, 30, 4, 1000),
            })
            .collect();
        let spec = spec("ties", Compat::Paper, 0.3);
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .expect("pool");
            pool.install(|| {
                let ctl = Control::none();
                let ctx = context(&spec, &ctl);
                let sources: Vec<(f64, usize)> = inputs
                    .iter()
                    .map(|p| (spec.weight(p.index), p.index))
                    .collect();
                let t = Host
                    .dense_truncated(
                        &ctx,
                        &inputs,
                        &sources,
                        "delta",
                        Truncation::Randomized(4, 9),
                    )
                    .expect("truncated");
                (t.b, t.a, t.energy_total.to_bits(), t.energy_kept.to_bits())
            })
        };
        assert_eq!(run(1), run(3));
    }
}
