//! The host's [`Backend`]: the dense family's entry-wise combination ([`combine`], also PEFT's
//! factor merges) with ndarray and plain loops, truncations with LAPACK (`crate::linalg`), the
//! randomized sketch with candle on the context's device.

use crate::adapter::LoraModule;
use crate::context::{Backend, ModuleContext, Present, Truncation};
use crate::error::MergeError;
use crate::linalg::{self, FactorProducts, HostProducts, Truncated};
use crate::mat::Mat;
use crate::sparsify::{self, Pruner, Threshold, sign, threshold_of};
use crate::spec::{Compat, MajoritySign, Pruning};

/// The host (CPU) implementation of [`Backend`].
pub struct Host;

impl Backend for Host {
    fn dense_combined(
        &self,
        ctx: &ModuleContext<'_>,
        inputs: &[Present],
        sources: &[(f64, usize)],
        tag: &str,
    ) -> Result<Mat, MergeError> {
        combine(ctx, tag, sources, |j, buf| {
            Ok(delta_into(&inputs[j].module, buf))
        })
    }

    fn dense_truncated(
        &self,
        ctx: &ModuleContext<'_>,
        inputs: &[Present],
        sources: &[(f64, usize)],
        tag: &str,
        truncation: Truncation,
    ) -> Result<Truncated, MergeError> {
        let delta = self.dense_combined(ctx, inputs, sources, tag)?;
        let t = match truncation {
            Truncation::Exact(k) => linalg::exact_truncate(&delta, k)?,
            Truncation::Randomized(k, seed) => {
                linalg::randomized_truncate(ctx.device, &delta, k, seed)?
            }
        };
        give_buffer(delta.data);
        Ok(t)
    }

    fn factor_products<'s>(
        &'s self,
        b: &Mat,
        a: &Mat,
    ) -> Result<Box<dyn FactorProducts + 's>, MergeError> {
        Ok(Box::new(HostProducts::new(b, a)))
    }
}

/// Writes the dense delta `s·B·A` of one input into `buf` (reused: a fresh 100 MB allocation per
/// product made page faults the largest cost of TIES on CPU). Returns its shape.
pub fn delta_into(m: &LoraModule, buf: &mut Vec<f32>) -> (usize, usize) {
    use ndarray::{ArrayView2, ArrayViewMut2, linalg::general_mat_mul};
    let (d_out, r, d_in) = (m.b.rows, m.b.cols, m.a.cols);
    buf.resize(d_out * d_in, 0.0);
    let b = ArrayView2::from_shape((d_out, r), &m.b.data);
    let a = ArrayView2::from_shape((r, d_in), &m.a.data);
    let out = ArrayViewMut2::from_shape((d_out, d_in), buf.as_mut_slice());
    if let (Ok(b), Ok(a), Ok(mut out)) = (b, a, out) {
        general_mat_mul(m.scale, &b, &a, 0.0, &mut out);
    }
    (d_out, d_in)
}

thread_local! {
    /// Large buffers kept between modules on this thread: fresh allocations of this size come
    /// from the kernel as new zeroed pages, and page faults were a fifth of TIES' time.
    static POOL: std::cell::RefCell<Vec<Vec<f32>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A zeroed buffer of `len` entries, reusing a pooled allocation when one is there.
fn take_buffer(len: usize) -> Vec<f32> {
    let mut v = POOL.with(|p| p.borrow_mut().pop()).unwrap_or_default();
    v.clear();
    v.resize(len, 0.0);
    v
}

/// Returns a buffer to this thread's pool (a few are kept).
fn give_buffer(v: Vec<f32>) {
    POOL.with(|p| {
        let mut pool = p.borrow_mut();
        if pool.len() < 4 {
            pool.push(v);
        }
    });
}

/// Combines task tensors entry-wise: pruning, then (for TIES-style methods) sign election and the
/// disjoint mean, else a weighted sum. `sources[j] = (weight, input index)`; `load(j, buf)` writes
/// tensor j into `buf` (one reused buffer) and returns its shape. Consensus methods make two
/// passes (votes, then the agreeing sum), recomputing each tensor instead of keeping n of them:
/// memory is four tensors whatever the number of inputs, and each pass is one fused loop.
///
/// Semantics follow `ctx.spec.compat`: paper — signs elected on weighted values, disjoint mean
/// weighted by |w|, TIES threshold keeps ties, λ applied; PEFT — signs elected on unweighted
/// values, mean by count, exactly k entries kept.
pub(crate) fn combine(
    ctx: &ModuleContext<'_>,
    tag: &str,
    sources: &[(f64, usize)],
    load: impl Fn(usize, &mut Vec<f32>) -> Result<(usize, usize), MergeError>,
) -> Result<Mat, MergeError> {
    let spec = ctx.spec;
    let peft = spec.compat == Compat::Peft;
    let density = spec.effective_density();
    let kind = spec.method.pruning();
    let mut buf = take_buffer(0);
    let mut thresholds: Vec<Threshold> = Vec::with_capacity(sources.len());
    let seed = |j: usize| sparsify::derive_seed(spec.seed, ctx.path, sources[j].1, tag);
    // Pass 1: load, find the threshold, prune, then sum (plain methods) or vote (consensus).
    let frequency = spec.majority_sign == MajoritySign::Frequency;
    let consensus = spec.method.consensus();
    let mut acc: Vec<f32> = Vec::new();
    let mut shape = (0, 0);
    for (j, &(w, input)) in sources.iter().enumerate() {
        ctx.ctl.check()?;
        shape = load(j, &mut buf)?;
        if acc.is_empty() {
            acc = take_buffer(buf.len());
        }
        let th = match (kind, ctx.global_thresholds) {
            (Pruning::Magnitude, Some(global)) => global[input],
            (Pruning::Magnitude, None) => {
                threshold_of(&buf, (density * buf.len() as f64).floor() as u64)
            }
            _ => Threshold {
                value: 0.0,
                ties: u64::MAX,
                equal: 0,
                none: false,
            },
        };
        thresholds.push(th);
        Pruner::new(kind, th, peft, density, seed(j)).apply(&mut buf);
        let w = w as f32;
        // Votes: paper on wᵢ·τ̂ᵢ, PEFT on the unweighted τ̂ᵢ.
        let vw = if peft { 1.0 } else { w };
        match (consensus, frequency) {
            (false, _) => acc.iter_mut().zip(&buf).for_each(|(a, &x)| *a += w * x),
            (true, false) => acc.iter_mut().zip(&buf).for_each(|(a, &x)| *a += vw * x),
            (true, true) => acc
                .iter_mut()
                .zip(&buf)
                .for_each(|(a, &x)| *a += sign(vw * x)),
        }
    }
    if !consensus {
        give_buffer(buf);
        return Ok(Mat::new(shape.0, shape.1, acc));
    }
    // The elected sign per entry; ties go to +.
    acc.iter_mut()
        .for_each(|v| *v = if *v >= 0.0 { 1.0 } else { -1.0 });
    let elected = acc;
    // Pass 2: the agreeing entries' weighted sum and their weight (|w|, or 1 for PEFT's count).
    // Zeros never agree (their sign is 0).
    let mut num = take_buffer(elected.len());
    let mut den = take_buffer(elected.len());
    for (j, &(w, _)) in sources.iter().enumerate() {
        ctx.ctl.check()?;
        load(j, &mut buf)?;
        Pruner::new(kind, thresholds[j], peft, density, seed(j)).apply(&mut buf);
        let w = w as f32;
        let (vw, dw) = if peft { (1.0, 1.0) } else { (w, w.abs()) };
        for (((n, d), &e), &x) in num.iter_mut().zip(den.iter_mut()).zip(&elected).zip(&buf) {
            let agree = f32::from(u8::from(sign(vw * x) == e));
            *n += agree * w * x;
            *d += agree * dw;
        }
    }
    give_buffer(buf);
    let lambda = spec.lambda.unwrap_or(1.0) as f32;
    let min_den = if peft { 1.0 } else { 0.0 };
    for (n, &d) in num.iter_mut().zip(&den) {
        *n = if d == 0.0 {
            0.0
        } else {
            lambda * *n / d.max(min_den)
        };
    }
    give_buffer(den);
    give_buffer(elected);
    Ok(Mat::new(shape.0, shape.1, num))
}
