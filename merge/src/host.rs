//! The host's [`Backend`]: the dense family fused by blocks of rows ([`crate::fused`]), its
//! truncations with OpenBLAS products and LAPACK (`crate::linalg`), and [`combine`], the
//! entry-wise combination of whole tensors (PEFT's factor merges, and the reference the fused
//! path is tested against).

use crate::adapter::LoraModule;
use crate::context::{Backend, ModuleContext, Present, Truncation};
use crate::error::MergeError;
use crate::fused;
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
        Ok(fused::combine(ctx, inputs, sources, tag, None)?.delta)
    }

    fn dense_truncated(
        &self,
        ctx: &ModuleContext<'_>,
        inputs: &[Present],
        sources: &[(f64, usize)],
        tag: &str,
        truncation: Truncation,
    ) -> Result<Truncated, MergeError> {
        match truncation {
            Truncation::Exact(k) => {
                let c = fused::combine(ctx, inputs, sources, tag, None)?;
                let t = linalg::exact_truncate(&c.delta, k);
                fused::give_buffer(c.delta.data);
                t
            }
            Truncation::Randomized(k, seed) => {
                let first = &inputs
                    .first()
                    .ok_or_else(|| MergeError::numeric(ctx.path, "no inputs"))?
                    .module;
                let omega = linalg::sketch(first.b.rows, first.a.cols, k, seed);
                let c = fused::combine(ctx, inputs, sources, tag, Some(&omega))?;
                let y = c
                    .sketched
                    .ok_or_else(|| MergeError::numeric(ctx.path, "sketch missing"))?;
                let t = linalg::randomized_from_sketch(&c.delta, &y, c.frob2, k);
                fused::give_buffer(c.delta.data);
                t
            }
        }
    }

    fn factor_products<'s>(
        &'s self,
        b: &Mat,
        a: &Mat,
    ) -> Result<Box<dyn FactorProducts + 's>, MergeError> {
        Ok(Box::new(HostProducts::new(b, a)))
    }

    fn parallel_within_module(&self) -> bool {
        true
    }
}

/// Writes the dense delta `s·B·A` of one input into `buf` (reused), with the same product as
/// [`fused`] uses, so both see the same values. Returns its shape.
pub fn delta_into(m: &LoraModule, buf: &mut Vec<f32>) -> (usize, usize) {
    let (d_out, d_in) = (m.b.rows, m.a.cols);
    buf.resize(d_out * d_in, 0.0);
    fused::delta_rows_of(m, 0, buf);
    (d_out, d_in)
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
    let mut buf = Vec::new();
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
            acc = vec![0.0; buf.len()];
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
        return Ok(Mat::new(shape.0, shape.1, acc));
    }
    // The elected sign per entry; ties go to +.
    acc.iter_mut()
        .for_each(|v| *v = if *v >= 0.0 { 1.0 } else { -1.0 });
    let elected = acc;
    // Pass 2: the agreeing entries' weighted sum and their weight (|w|, or 1 for PEFT's count).
    // Zeros never agree (their sign is 0).
    let mut num = vec![0.0; elected.len()];
    let mut den = vec![0.0; elected.len()];
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
    let lambda = spec.lambda.unwrap_or(1.0) as f32;
    let min_den = if peft { 1.0 } else { 0.0 };
    for (n, &d) in num.iter_mut().zip(&den) {
        *n = if d == 0.0 {
            0.0
        } else {
            lambda * *n / d.max(min_den)
        };
    }
    Ok(Mat::new(shape.0, shape.1, num))
}
