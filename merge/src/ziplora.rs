//! ZipLoRA (Shah et al., 2023), data-free: one merger vector per input and module, one
//! coefficient per input column, learned with Adam on the chosen device.
//!
//! Merged delta: `ΔW_m = Σᵢ ΔWᵢ·diag(mᵢ)`. Loss (algorithms.md §5, data-free variant, probes
//! `Xᵢ = Aᵢᵀ`, the input directions adapter i reacts to):
//!
//! `L = Σᵢ ‖(ΔW_m − ΔWᵢ)·Xᵢ‖² / ‖ΔWᵢ·Xᵢ‖² + λ·Σ_{i<j} mean_k |mᵢ[k]·mⱼ[k]|`
//!
//! The penalty is a mean over columns (the reference code's choice), so λ does not scale with
//! the layer width. Nothing dense is formed: `ΔWⱼ·diag(mⱼ)·Xᵢ = sⱼBⱼ·((Aⱼ⊙mⱼ)·Xᵢ)` is d_out×rᵢ.
//! Mergers start at 1; the run is deterministic (the seed is recorded, no randomness is drawn).
//!
//! Every step's gradient, Adam moments and merger update are detached from candle's op graph:
//! otherwise each moment keeps the previous step's graph alive, memory grows with the step count
//! and dropping the chain at the end recurses once per step (a stack overflow, issue 20). The
//! cancel flag is checked before every step.

use candle_core::{DType, Device, Tensor, Var};
use serde::Serialize;

use crate::context::Present;
use crate::control::Control;
use crate::error::MergeError;
use crate::mat::Mat;

#[derive(Clone, Copy, Debug)]
pub struct ZipParams {
    pub lambda: f64,
    pub steps: usize,
    pub lr: f64,
}

/// Per-module figures for the report.
#[derive(Clone, Debug, Serialize)]
pub struct ZipStats {
    pub steps: usize,
    pub loss_initial: f64,
    pub loss_final: f64,
    /// Final ‖(ΔW_m − ΔWᵢ)Xᵢ‖²/‖ΔWᵢXᵢ‖² per input.
    pub reconstruction: Vec<f64>,
    pub penalty_initial: f64,
    pub penalty_final: f64,
    /// Σ_k |⟨colₖ(ΔWᵢ mᵢ), colₖ(ΔWⱼ mⱼ)⟩| / (‖ΔWᵢ mᵢ‖·‖ΔWⱼ mⱼ‖), mean over pairs; before = mᵢ = 1.
    pub column_overlap_before: f64,
    pub column_overlap_after: f64,
    /// Loss after every step (for convergence checks).
    #[serde(skip)]
    pub history: Vec<f64>,
}

fn tensor(m: &Mat, device: &Device) -> Result<Tensor, MergeError> {
    Ok(Tensor::from_slice(&m.data, (m.rows, m.cols), device)?)
}

/// Learns the mergers of `inputs` (weights folded) and returns them with the run's figures.
pub fn ziplora(
    device: &Device,
    inputs: &[(f64, &Present)],
    p: ZipParams,
) -> Result<(Vec<Vec<f32>>, ZipStats), MergeError> {
    ziplora_with(device, inputs, p, &Control::none())
}

/// [`ziplora`], stopping with [`MergeError::Cancelled`] at the first step after `ctl` is cancelled.
pub fn ziplora_with(
    device: &Device,
    inputs: &[(f64, &Present)],
    p: ZipParams,
    ctl: &Control<'_>,
) -> Result<(Vec<Vec<f32>>, ZipStats), MergeError> {
    let d_in = inputs[0].1.module.a.cols;
    // sᵢwᵢBᵢ, Aᵢ, Xᵢ = Aᵢᵀ.
    let mut bs = Vec::new();
    let mut a_s = Vec::new();
    for (w, present) in inputs {
        let m = &present.module;
        bs.push(tensor(
            &m.b.clone().scale((w * f64::from(m.scale)) as f32),
            device,
        )?);
        a_s.push(tensor(&m.a, device)?);
    }
    let xs: Vec<Tensor> = a_s.iter().map(|a| a.t()).collect::<Result<_, _>>()?;
    // Targets Tᵢ = ΔWᵢXᵢ and their energies.
    let mut targets = Vec::new();
    let mut energies = Vec::new();
    for i in 0..inputs.len() {
        let t = bs[i].matmul(&a_s[i].matmul(&xs[i])?)?;
        let e = t
            .sqr()?
            .sum_all()?
            .to_scalar::<f32>()?
            .max(f32::MIN_POSITIVE);
        targets.push(t);
        energies.push(f64::from(e));
    }
    let mergers: Vec<Var> = (0..inputs.len())
        .map(|_| Var::ones(d_in, DType::F32, device))
        .collect::<Result<_, _>>()?;
    let loss_terms = |ms: &[Tensor]| -> Result<(Vec<Tensor>, Tensor), MergeError> {
        let scaled: Vec<Tensor> = a_s
            .iter()
            .zip(ms)
            .map(|(a, m)| a.broadcast_mul(&m.unsqueeze(0)?))
            .collect::<Result<_, _>>()?;
        let mut recon = Vec::new();
        for i in 0..inputs.len() {
            let mut merged = bs[0].matmul(&scaled[0].matmul(&xs[i])?)?;
            for j in 1..inputs.len() {
                merged = (merged + bs[j].matmul(&scaled[j].matmul(&xs[i])?)?)?;
            }
            recon.push(((merged - &targets[i])?.sqr()?.sum_all()? / energies[i])?);
        }
        let mut penalty = Tensor::zeros((), DType::F32, device)?;
        for i in 0..ms.len() {
            for j in i + 1..ms.len() {
                penalty = (penalty + (&ms[i] * &ms[j])?.abs()?.mean_all()?)?;
            }
        }
        Ok((recon, (penalty * p.lambda)?))
    };
    let total = |recon: &[Tensor], penalty: &Tensor| -> Result<Tensor, MergeError> {
        let mut l = penalty.clone();
        for r in recon {
            l = (l + r)?;
        }
        Ok(l)
    };
    let scalar = |t: &Tensor| -> Result<f64, MergeError> { Ok(f64::from(t.to_scalar::<f32>()?)) };
    let current: Vec<Tensor> = mergers.iter().map(|m| m.as_tensor().clone()).collect();
    let (recon0, pen0) = loss_terms(&current)?;
    let loss_initial = scalar(&total(&recon0, &pen0)?)?;
    let penalty_initial = scalar(&pen0)?;
    // Adam (β₁ 0.9, β₂ 0.999, ε 1e-8).
    let (b1, b2, eps) = (0.9f64, 0.999f64, 1e-8f64);
    let mut first: Vec<Tensor> = mergers
        .iter()
        .map(|m| m.zeros_like())
        .collect::<Result<_, _>>()?;
    let mut second: Vec<Tensor> = mergers
        .iter()
        .map(|m| m.zeros_like())
        .collect::<Result<_, _>>()?;
    let mut history = Vec::with_capacity(p.steps.min(crate::spec::MAX_ZIP_STEPS));
    for step in 1..=p.steps {
        ctl.check()?;
        let current: Vec<Tensor> = mergers.iter().map(|m| m.as_tensor().clone()).collect();
        let (recon, pen) = loss_terms(&current)?;
        let loss = total(&recon, &pen)?;
        let grads = loss.backward()?;
        let t = i32::try_from(step).unwrap_or(i32::MAX);
        let (c1, c2) = (1.0 - b1.powi(t), 1.0 - b2.powi(t));
        for (i, m) in mergers.iter().enumerate() {
            let Some(g) = grads.get(m.as_tensor()) else {
                continue;
            };
            // Detached: the moments carry values from step to step, never the graph.
            let g = g.detach();
            first[i] = ((&first[i] * b1)? + (&g * (1.0 - b1))?)?.detach();
            second[i] = ((&second[i] * b2)? + (g.sqr()? * (1.0 - b2))?)?.detach();
            let m_hat = (&first[i] / c1)?;
            let v_hat = (&second[i] / c2)?;
            let update = (m_hat / (v_hat.sqrt()? + eps)?)?;
            m.set(&(m.as_tensor().detach() - (update * p.lr)?)?.detach())?;
        }
        history.push(scalar(&loss)?);
    }
    let finals: Vec<Tensor> = mergers.iter().map(|m| m.as_tensor().clone()).collect();
    let (recon, pen) = loss_terms(&finals)?;
    let loss_final = scalar(&total(&recon, &pen)?)?;
    let mergers: Vec<Vec<f32>> = finals
        .iter()
        .map(|t| t.to_vec1::<f32>())
        .collect::<Result<_, _>>()?;
    let stats = ZipStats {
        steps: p.steps,
        loss_initial,
        loss_final,
        reconstruction: recon.iter().map(scalar).collect::<Result<_, _>>()?,
        penalty_initial,
        penalty_final: scalar(&pen)?,
        column_overlap_before: column_overlap(inputs, None),
        column_overlap_after: column_overlap(inputs, Some(&mergers)),
        history,
    };
    Ok((mergers, stats))
}

/// Mean over input pairs of the normalised column alignment of `ΔWᵢ diag(mᵢ)` and `ΔWⱼ diag(mⱼ)`,
/// computed from the factors (`⟨colₖΔWᵢ, colₖΔWⱼ⟩ = Aᵢ[:,k]ᵀ (sᵢBᵢ)ᵀ(sⱼBⱼ) Aⱼ[:,k]`).
fn column_overlap(inputs: &[(f64, &Present)], mergers: Option<&[Vec<f32>]>) -> f64 {
    let d_in = inputs[0].1.module.a.cols;
    let scaled_b = |i: usize| {
        let (w, p) = inputs[i];
        p.module
            .b
            .clone()
            .scale((w * f64::from(p.module.scale)) as f32)
    };
    // col_dots[i][j][k] = ⟨colₖΔWᵢ, colₖΔWⱼ⟩.
    let col_dots = |i: usize, j: usize| -> Vec<f64> {
        let gram = scaled_b(i).t().matmul_naive(&scaled_b(j));
        let ga = gram.matmul_naive(&inputs[j].1.module.a);
        let ai = &inputs[i].1.module.a;
        (0..d_in)
            .map(|k| {
                (0..ai.rows)
                    .map(|r| f64::from(ai.at(r, k)) * f64::from(ga.at(r, k)))
                    .sum()
            })
            .collect()
    };
    let m = |i: usize, k: usize| mergers.map_or(1.0, |ms| f64::from(ms[i][k]));
    let mut total = 0.0;
    let mut pairs = 0;
    for i in 0..inputs.len() {
        for j in i + 1..inputs.len() {
            let (dij, dii, djj) = (col_dots(i, j), col_dots(i, i), col_dots(j, j));
            let cross: f64 = (0..d_in).map(|k| (dij[k] * m(i, k) * m(j, k)).abs()).sum();
            let ni: f64 = (0..d_in).map(|k| dii[k] * m(i, k) * m(i, k)).sum();
            let nj: f64 = (0..d_in).map(|k| djj[k] * m(j, k) * m(j, k)).sum();
            total += if ni > 0.0 && nj > 0.0 {
                cross / (ni * nj).sqrt()
            } else {
                0.0
            };
            pairs += 1;
        }
    }
    if pairs == 0 {
        0.0
    } else {
        total / pairs as f64
    }
}
