//! One module's merge: the math of every method, given the inputs present on that module.
//!
//! Conventions: every input is `ΔWᵢ = sᵢ·Bᵢ·Aᵢ` in delta orientation (see [`crate::adapter`]),
//! `wᵢ` its weight. Results are factor pairs `(B, A)` with scale 1.

use candle_core::Device;

use crate::adapter::{LoraModule, ModuleKind};
use crate::control::Control;
use crate::error::MergeError;
use crate::lego::{LegoParams, lego};
use crate::linalg::{self, EXACT_BELOW, Truncated};
use crate::mat::Mat;
use crate::sparsify::{self, Pruner, Threshold, sign, threshold_of};
use crate::spec::{Compat, MAX_EXACT_SVD_SIDE, MajoritySign, MergeSpec, Method, Pruning, SvdMode};
use crate::ziplora::{ZipParams, ziplora_with};

/// One input present on the module: its index among the inputs and its factors.
pub struct Present {
    pub index: usize,
    pub module: LoraModule,
}

/// The merged module and how it was obtained.
pub struct MergedModule {
    pub kind: ModuleKind,
    pub b: Mat,
    pub a: Mat,
    /// `None` when nothing was truncated (exact methods, PEFT factor methods).
    pub truncation: Option<Truncated>,
    /// Method-specific figures for the report (LEGO clustering, ...).
    pub details: Option<serde_json::Value>,
}

impl MergedModule {
    /// A result that was not truncated.
    pub fn exact(kind: ModuleKind, b: Mat, a: Mat) -> Self {
        Self {
            kind,
            b,
            a,
            truncation: None,
            details: None,
        }
    }
}

/// Everything the per-module math needs besides the inputs.
pub struct ModuleContext<'a> {
    pub path: &'a str,
    pub spec: &'a MergeSpec,
    pub device: &'a Device,
    /// Per-input magnitude thresholds computed over the whole model (`--trim-scope global`).
    pub global_thresholds: Option<&'a [Threshold]>,
    /// Output rank when the method truncates and `--rank` is not given.
    pub default_rank: usize,
    /// Cancellation, checked inside the methods' long loops (ZipLoRA steps, LEGO iterations).
    pub ctl: &'a Control<'a>,
}

impl ModuleContext<'_> {
    fn weight(&self, p: &Present) -> f64 {
        self.spec.weight(p.index)
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

pub fn merge_module(
    ctx: &ModuleContext<'_>,
    inputs: &[Present],
) -> Result<MergedModule, MergeError> {
    let kind = inputs
        .first()
        .map(|p| p.module.kind)
        .ok_or_else(|| MergeError::numeric(ctx.path, "no inputs"))?;
    let spec = ctx.spec;
    match (spec.compat, spec.method) {
        (_, Method::Cat) => {
            let (b, a) = concat(ctx, inputs);
            Ok(MergedModule::exact(kind, b, a))
        }
        (_, Method::LoraLego) => {
            let weighted: Vec<(f64, &Present)> =
                inputs.iter().map(|p| (ctx.weight(p), p)).collect();
            let params = LegoParams {
                k: spec.k.unwrap_or(ctx.default_rank),
                iters: spec.iters,
                param_reweight: spec.param_reweight,
                output_reweight: spec.output_reweight,
                seed: sparsify::derive_seed(spec.seed, ctx.path, 0, "lego"),
            };
            let (b, a, stats) = lego(&weighted, params, ctx.ctl)?;
            Ok(MergedModule {
                kind,
                b,
                a,
                truncation: None,
                details: serde_json::to_value(stats).ok(),
            })
        }
        (_, Method::ZipLora) => {
            let weighted: Vec<(f64, &Present)> =
                inputs.iter().map(|p| (ctx.weight(p), p)).collect();
            let (b, mut a) = concat(ctx, inputs);
            let details = if inputs.len() > 1 {
                let params = ZipParams {
                    lambda: spec.lambda_sim.unwrap_or(0.01),
                    steps: spec.steps.unwrap_or(200),
                    lr: spec.lr.unwrap_or(0.01),
                };
                let (mergers, stats) = ziplora_with(ctx.device, &weighted, params, ctx.ctl)?;
                // Export exactly: A = [A₁·diag(m₁); …; Aₙ·diag(mₙ)].
                let mut row = 0;
                for (p, m) in inputs.iter().zip(&mergers) {
                    for _ in 0..p.module.rank() {
                        for (x, f) in a.data[row * a.cols..(row + 1) * a.cols].iter_mut().zip(m) {
                            *x *= f;
                        }
                        row += 1;
                    }
                }
                serde_json::to_value(stats).ok()
            } else {
                None
            };
            let mut merged = match spec.rank {
                Some(k) => truncated(kind, linalg::factored_truncate_on(ctx.device, &b, &a, k)?),
                None => MergedModule::exact(kind, b, a),
            };
            merged.details = details;
            Ok(merged)
        }
        (Compat::Paper, Method::Linear) if spec.rank.is_none() => {
            let (b, a) = concat(ctx, inputs);
            Ok(MergedModule::exact(kind, b, a))
        }
        (Compat::Paper, Method::Linear | Method::Svd) | (Compat::Peft, Method::Svd) => {
            let (b, a) = concat(ctx, inputs);
            let k = spec.rank.unwrap_or(ctx.default_rank);
            let t = linalg::factored_truncate_on(ctx.device, &b, &a, k)?;
            Ok(truncated(kind, t))
        }
        (
            Compat::Peft,
            Method::Linear
            | Method::Ties
            | Method::DareLinear
            | Method::DareTies
            | Method::MagnitudePrune,
        ) => peft_factor_merge(ctx, inputs, kind),
        _ => {
            // Dense family: combine the task vectors ΔWᵢ entry-wise, then truncate.
            let k = spec.rank.unwrap_or(ctx.default_rank);
            let (d_out, d_in) = (inputs[0].module.b.rows, inputs[0].module.a.cols);
            let exact = match spec.svd {
                SvdMode::Exact => true,
                SvdMode::Randomized => false,
                SvdMode::Auto => d_out.min(d_in) <= EXACT_BELOW,
            };
            if exact && d_out.min(d_in) > MAX_EXACT_SVD_SIDE {
                return Err(MergeError::InvalidParam(format!(
                    "`svd: exact` is limited to modules whose smaller side is at most {MAX_EXACT_SVD_SIDE}; \
                     {} is {d_out}×{d_in}: use `svd: auto` or `randomized`",
                    ctx.path
                )));
            }
            let sketch_seed = sparsify::derive_seed(spec.seed, ctx.path, usize::MAX, "sketch");
            #[cfg(feature = "cuda")]
            if let Some(gpu) = crate::gpu::Gpu::of(ctx.device)? {
                use crate::gpu::dense::{Truncation, merge_dense};
                let truncation = if exact {
                    Truncation::Exact(k)
                } else {
                    Truncation::Randomized(k, sketch_seed)
                };
                let sources: Vec<(f64, usize)> =
                    inputs.iter().map(|p| (ctx.weight(p), p.index)).collect();
                let t = merge_dense(&gpu, ctx, inputs, &sources, "delta", truncation)?;
                return Ok(truncated(kind, t));
            }
            let delta = dense_combination(ctx, inputs)?;
            let t = if exact {
                linalg::exact_truncate(&delta, k)?
            } else {
                linalg::randomized_truncate(ctx.device, &delta, k, sketch_seed)?
            };
            give_buffer(delta.data);
            Ok(truncated(kind, t))
        }
    }
}

/// The dense family's combined ΔW of one module before truncation (TIES, DARE, magnitude
/// pruning and their PEFT `_svd` variants; a weighted sum for the others), on `ctx.device`.
pub fn dense_combination(ctx: &ModuleContext<'_>, inputs: &[Present]) -> Result<Mat, MergeError> {
    let sources: Vec<(f64, usize)> = inputs.iter().map(|p| (ctx.weight(p), p.index)).collect();
    #[cfg(feature = "cuda")]
    if let Some(gpu) = crate::gpu::Gpu::of(ctx.device)? {
        return crate::gpu::dense::combined(&gpu, ctx, inputs, &sources, "delta");
    }
    combine(ctx, "delta", &sources, |j, buf| {
        Ok(delta_into(&inputs[j].module, buf))
    })
}

fn truncated(kind: ModuleKind, t: Truncated) -> MergedModule {
    MergedModule {
        kind,
        b: t.b.clone(),
        a: t.a.clone(),
        truncation: Some(t),
        details: None,
    }
}

/// `B = [w₁s₁B₁ … wₙsₙBₙ]`, `A = [A₁; …; Aₙ]`: exactly Σ wᵢsᵢBᵢAᵢ.
fn concat(ctx: &ModuleContext<'_>, inputs: &[Present]) -> (Mat, Mat) {
    let bs: Vec<Mat> = inputs
        .iter()
        .map(|p| {
            p.module
                .b
                .clone()
                .scale((ctx.weight(p) * f64::from(p.module.scale)) as f32)
        })
        .collect();
    let b = Mat::hstack(&bs.iter().collect::<Vec<_>>());
    let a = Mat::vstack(&inputs.iter().map(|p| &p.module.a).collect::<Vec<_>>());
    (b, a)
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
fn combine(
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

/// PEFT's non-SVD family: the method is applied to the A matrices and to the B matrices
/// separately (cᵢ = wᵢsᵢ; A side weighted by sign(cᵢ)·√|cᵢ|, B side by √|cᵢ|), then ΔW = B·A.
/// Cross terms BᵢAⱼ appear; this reproduces PEFT, it is not the sum of the adapters.
fn peft_factor_merge(
    ctx: &ModuleContext<'_>,
    inputs: &[Present],
    kind: ModuleKind,
) -> Result<MergedModule, MergeError> {
    let r = inputs[0].module.rank();
    if let Some(p) = inputs.iter().find(|p| p.module.rank() != r) {
        return Err(MergeError::Incompatible(format!(
            "{}: PEFT's {} needs equal ranks, got {r} and {} on this module; use cat, svd or the *_svd variants",
            ctx.path,
            ctx.spec.method.name(),
            p.module.rank()
        )));
    }
    let c: Vec<f64> = inputs
        .iter()
        .map(|p| ctx.weight(p) * f64::from(p.module.scale))
        .collect();
    let g: Vec<f64> = c.iter().map(|x| x.abs().sqrt()).collect();
    let signed: Vec<(f64, usize)> = inputs
        .iter()
        .enumerate()
        .map(|(j, p)| (if c[j] < 0.0 { -g[j] } else { g[j] }, p.index))
        .collect();
    let plain: Vec<(f64, usize)> = inputs
        .iter()
        .enumerate()
        .map(|(j, p)| (g[j], p.index))
        .collect();
    // PEFT's `lora_A` is our `a` for Linear and our `b` (transposed) for embeddings.
    let (a_weights, b_weights) = match kind {
        ModuleKind::Linear => (&signed, &plain),
        ModuleKind::Embedding => (&plain, &signed),
    };
    let copy = |m: &Mat, buf: &mut Vec<f32>| {
        buf.clear();
        buf.extend_from_slice(&m.data);
        Ok((m.rows, m.cols))
    };
    let a = combine(ctx, "A", a_weights, |j, buf| copy(&inputs[j].module.a, buf))?;
    let b = combine(ctx, "B", b_weights, |j, buf| copy(&inputs[j].module.b, buf))?;
    Ok(MergedModule::exact(kind, b, a))
}
