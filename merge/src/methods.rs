//! One module's merge: the math of every method, given the inputs present on that module.
//!
//! Conventions: every input is `ΔWᵢ = sᵢ·Bᵢ·Aᵢ` in delta orientation (see [`crate::adapter`]),
//! `wᵢ` its weight. Results are factor pairs `(B, A)` with scale 1.

use std::borrow::Cow;
use std::sync::Arc;

use crate::adapter::ModuleKind;
use crate::context::{ModuleContext, Present, Truncation};
use crate::error::MergeError;
use crate::host::combine;
use crate::lego::{LegoParams, lego};
use crate::linalg::{self, Cut, EXACT_BELOW, Truncated};
use crate::mat::Mat;
use crate::park::{Parked, Parking};
use crate::sparsify;
use crate::spec::{Compat, MAX_EXACT_SVD_SIDE, MergeSpec, Method, SvdMode};
use crate::ziplora::{ZipParams, ziplora_with};

/// The merged module and how it was obtained.
pub struct MergedModule {
    pub kind: ModuleKind,
    pub b: Mat,
    pub a: Mat,
    /// `None` when nothing was truncated (exact methods, PEFT factor methods).
    pub truncation: Option<Truncated>,
    /// Method-specific figures for the report (LEGO clustering, ...).
    pub details: Option<serde_json::Value>,
    /// Set when the factors were moved to disk ([`crate::park`]): `b` and `a` then keep their
    /// shapes with empty `data`, and [`MergedModule::b`]/[`MergedModule::a`] read them back.
    pub parked: Option<Parked>,
}

impl MergedModule {
    /// Moves the factors into `parking`: `b` and `a` keep their shapes with empty `data`, and
    /// [`MergedModule::b`]/[`MergedModule::a`] read them back.
    pub fn park_in(&mut self, parking: &Arc<Parking>) -> Result<(), MergeError> {
        self.parked = Some(parking.park(&self.b.data, &self.a.data)?);
        self.b.data = Vec::new();
        self.a.data = Vec::new();
        Ok(())
    }

    /// `b`, read back from its parking file when parked.
    pub fn b(&self) -> Result<Cow<'_, Mat>, MergeError> {
        match &self.parked {
            None => Ok(Cow::Borrowed(&self.b)),
            Some(p) => {
                let data = p.read(0, self.b.rows * self.b.cols)?;
                Ok(Cow::Owned(Mat::new(self.b.rows, self.b.cols, data)))
            }
        }
    }

    /// `a`, read back from its parking file when parked.
    pub fn a(&self) -> Result<Cow<'_, Mat>, MergeError> {
        match &self.parked {
            None => Ok(Cow::Borrowed(&self.a)),
            Some(p) => {
                let data = p.read(self.b.rows * self.b.cols, self.a.rows * self.a.cols)?;
                Ok(Cow::Owned(Mat::new(self.a.rows, self.a.cols, data)))
            }
        }
    }

    /// A result that was not truncated.
    pub fn exact(kind: ModuleKind, b: Mat, a: Mat) -> Self {
        Self {
            kind,
            b,
            a,
            truncation: None,
            details: None,
            parked: None,
        }
    }
}

/// How a method merges a module.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// The factors side by side: exactly Σ wᵢsᵢBᵢAᵢ (cat; paper linear without a rank).
    Concat,
    Lego,
    ZipLora,
    /// The concatenated factors truncated by the factored route (svd; paper linear with a rank).
    Factored,
    /// PEFT's non-SVD methods on the A and B factors separately.
    PeftFactors,
    /// The dense family: ΔWᵢ combined entry-wise, then truncated.
    Dense,
}

/// The route `spec`'s method takes on every module.
pub fn route(spec: &MergeSpec) -> Route {
    match (spec.compat, spec.method) {
        (_, Method::Cat) => Route::Concat,
        (_, Method::LoraLego) => Route::Lego,
        (_, Method::ZipLora) => Route::ZipLora,
        (Compat::Paper, Method::Linear) if spec.rank.is_none() => Route::Concat,
        (Compat::Paper, Method::Linear | Method::Svd) | (Compat::Peft, Method::Svd) => {
            Route::Factored
        }
        (
            Compat::Peft,
            Method::Linear
            | Method::Ties
            | Method::DareLinear
            | Method::DareTies
            | Method::MagnitudePrune,
        ) => Route::PeftFactors,
        _ => Route::Dense,
    }
}

/// Merges one module's inputs per `ctx.spec`, the heavy steps on `ctx.compute`.
pub fn merge_module(
    ctx: &ModuleContext<'_>,
    inputs: &[Present],
) -> Result<MergedModule, MergeError> {
    let kind = inputs
        .first()
        .map(|p| p.module.kind)
        .ok_or_else(|| MergeError::numeric(ctx.path, "no inputs"))?;
    let spec = ctx.spec;
    match route(spec) {
        Route::Concat => {
            let (b, a) = concat(ctx, inputs);
            Ok(MergedModule::exact(kind, b, a))
        }
        Route::Lego => {
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
                parked: None,
            })
        }
        Route::ZipLora => {
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
                Some(k) => truncated(kind, factored_truncate(ctx, &b, &a, k)?),
                None => MergedModule::exact(kind, b, a),
            };
            merged.details = details;
            Ok(merged)
        }
        Route::Factored => {
            let (b, a) = concat(ctx, inputs);
            let k = spec.rank.unwrap_or(ctx.default_rank);
            let t = factored_truncate(ctx, &b, &a, k)?;
            Ok(truncated(kind, t))
        }
        Route::PeftFactors => peft_factor_merge(ctx, inputs, kind),
        Route::Dense => {
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
            let truncation = if exact {
                Truncation::Exact(k)
            } else {
                Truncation::Randomized(k, sketch_seed)
            };
            let sources = sources(ctx, inputs);
            let t = ctx
                .compute
                .dense_truncated(ctx, inputs, &sources, "delta", truncation)?;
            Ok(truncated(kind, t))
        }
    }
}

/// The dense family's combined ΔW of one module before truncation (TIES, DARE, magnitude
/// pruning and their PEFT `_svd` variants; a weighted sum for the others), on `ctx.compute`.
pub fn dense_combination(ctx: &ModuleContext<'_>, inputs: &[Present]) -> Result<Mat, MergeError> {
    ctx.compute
        .dense_combined(ctx, inputs, &sources(ctx, inputs), "delta")
}

/// `(weight, input index)` of each input, in order.
fn sources(ctx: &ModuleContext<'_>, inputs: &[Present]) -> Vec<(f64, usize)> {
    inputs.iter().map(|p| (ctx.weight(p), p.index)).collect()
}

/// Best rank-`k` factorisation of `b·a` by the factored route, its large products on
/// `ctx.compute`.
fn factored_truncate(
    ctx: &ModuleContext<'_>,
    b: &Mat,
    a: &Mat,
    k: usize,
) -> Result<Truncated, MergeError> {
    let mut products = ctx.compute.factor_products(b, a)?;
    linalg::factored_cut_with(products.as_mut(), Cut::Rank(k))
}

/// The truncation's factors move into the result; what stays in `truncation` is what the report
/// reads (energies, route), so a merge holds each output module once, not twice.
fn truncated(kind: ModuleKind, mut t: Truncated) -> MergedModule {
    let b = std::mem::replace(&mut t.b, Mat::new(0, 0, Vec::new()));
    let a = std::mem::replace(&mut t.a, Mat::new(0, 0, Vec::new()));
    MergedModule {
        kind,
        b,
        a,
        truncation: Some(t),
        details: None,
        parked: None,
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
