//! LoRA-LEGO (Zhao et al., ICLR 2025): merge adapters rank unit by rank unit.
//!
//! Every input's rank units `(bⱼ, aⱼ)` (scale and weight folded, split √ between the halves) are
//! pooled, clustered with k-means on `[aⱼ/‖aⱼ‖; bⱼ/‖bⱼ‖]`, and each cluster becomes one rank unit:
//! the mean of its members' raw vectors, rescaled to their mean norm (parameter reweighting), the
//! whole output scaled by √(r/k) (output reweighting, r = mean input rank). Empty clusters are
//! dropped. k-means++ is seeded over a canonical ordering of the units (by their bytes), so the
//! result does not depend on the order of the inputs or of their ranks.

use std::cmp::Ordering;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::context::Present;
use crate::control::Control;
use crate::error::MergeError;
use crate::mat::Mat;

/// Knobs of one LEGO merge.
#[derive(Clone, Copy, Debug)]
pub struct LegoParams {
    /// Clusters (output rank before dropping empty ones).
    pub k: usize,
    /// Lloyd iterations at most.
    pub iters: usize,
    pub param_reweight: bool,
    pub output_reweight: bool,
    pub seed: u64,
}

/// What clustering did, for the report.
#[derive(Clone, Debug, serde::Serialize)]
pub struct LegoStats {
    pub units: usize,
    pub clusters: usize,
    pub iterations: usize,
}

struct Unit {
    /// `[a; b]` with the scale folded.
    raw: Vec<f32>,
    /// `[a/‖a‖; b/‖b‖]`.
    feature: Vec<f32>,
}

/// The units labelled `c`.
fn members_of<'a>(units: &'a [Unit], labels: &[usize], c: usize) -> Vec<&'a Unit> {
    units
        .iter()
        .zip(labels)
        .filter(|(_, l)| **l == c)
        .map(|(u, _)| u)
        .collect()
}

fn norm(v: &[f32]) -> f32 {
    v.iter().map(|x| x * x).sum::<f32>().sqrt()
}

fn dist2(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
}

/// Byte-wise order of two vectors: a total order that ignores where a unit came from.
fn canonical(a: &[f32], b: &[f32]) -> Ordering {
    a.iter()
        .map(|x| x.to_bits())
        .cmp(b.iter().map(|x| x.to_bits()))
}

/// Merges the units of `inputs` (weights `w`) into at most `p.k` units: `(B, A, stats)`. `ctl` is
/// checked at every seeding pick and Lloyd iteration.
pub fn lego(
    inputs: &[(f64, &Present)],
    p: LegoParams,
    ctl: &Control<'_>,
) -> Result<(Mat, Mat, LegoStats), MergeError> {
    let (d_out, d_in) = (inputs[0].1.module.b.rows, inputs[0].1.module.a.cols);
    let mut units = Vec::new();
    for (w, present) in inputs {
        let m = &present.module;
        let c = w * f64::from(m.scale);
        let g = c.abs().sqrt() as f32;
        let sa = if c < 0.0 { -g } else { g };
        for j in 0..m.rank() {
            let mut raw: Vec<f32> = m.a.data[j * d_in..(j + 1) * d_in]
                .iter()
                .map(|x| x * sa)
                .collect();
            raw.extend((0..d_out).map(|o| m.b.at(o, j) * g));
            let (na, nb) = (norm(&raw[..d_in]), norm(&raw[d_in..]));
            let feature = raw[..d_in]
                .iter()
                .map(|x| if na > 0.0 { x / na } else { 0.0 })
                .chain(
                    raw[d_in..]
                        .iter()
                        .map(|x| if nb > 0.0 { x / nb } else { 0.0 }),
                )
                .collect();
            units.push(Unit { raw, feature });
        }
    }
    units.sort_by(|x, y| canonical(&x.raw, &y.raw));
    let k = p.k.clamp(1, units.len().max(1));
    let mut rng = ChaCha8Rng::seed_from_u64(p.seed);
    // k-means++ over the canonical order.
    let mut centers: Vec<Vec<f32>> = vec![units[rng.random_range(0..units.len())].feature.clone()];
    let mut nearest: Vec<f32> = units
        .iter()
        .map(|u| dist2(&u.feature, &centers[0]))
        .collect();
    while centers.len() < k {
        ctl.check()?;
        let total: f64 = nearest.iter().map(|&d| f64::from(d)).sum();
        let pick = if total > 0.0 {
            let mut target = rng.random::<f64>() * total;
            let mut idx = nearest.len() - 1;
            for (i, &d) in nearest.iter().enumerate() {
                if d > 0.0 && target < f64::from(d) {
                    idx = i;
                    break;
                }
                target -= f64::from(d);
            }
            idx
        } else {
            // Every remaining unit coincides with a center: more clusters would stay empty.
            break;
        };
        centers.push(units[pick].feature.clone());
        for (n, u) in nearest.iter_mut().zip(&units) {
            *n = n.min(dist2(&u.feature, &centers[centers.len() - 1]));
        }
    }
    // Lloyd iterations; ties go to the lowest center index.
    let assign = |centers: &[Vec<f32>]| -> Vec<usize> {
        units
            .iter()
            .map(|u| {
                let mut best = (0, f32::INFINITY);
                for (c, center) in centers.iter().enumerate() {
                    let d = dist2(&u.feature, center);
                    if d < best.1 {
                        best = (c, d);
                    }
                }
                best.0
            })
            .collect()
    };
    let mut labels = assign(&centers);
    let mut iterations = 0;
    for _ in 0..p.iters {
        ctl.check()?;
        iterations += 1;
        for (c, center) in centers.iter_mut().enumerate() {
            let members = members_of(&units, &labels, c);
            if members.is_empty() {
                continue;
            }
            for (i, x) in center.iter_mut().enumerate() {
                *x = members.iter().map(|u| u.feature[i]).sum::<f32>() / members.len() as f32;
            }
        }
        let next = assign(&centers);
        if next == labels {
            break;
        }
        labels = next;
    }
    // Cluster → one rank unit from the raw vectors.
    let mut out_units: Vec<Vec<f32>> = Vec::new();
    for c in 0..centers.len() {
        let members = members_of(&units, &labels, c);
        if members.is_empty() {
            continue;
        }
        let n = members.len() as f32;
        let mut mu: Vec<f32> = (0..d_in + d_out)
            .map(|i| members.iter().map(|u| u.raw[i]).sum::<f32>() / n)
            .collect();
        if p.param_reweight {
            let target = members.iter().map(|u| norm(&u.raw)).sum::<f32>() / n;
            let current = norm(&mu);
            if current > 0.0 {
                mu.iter_mut().for_each(|x| *x *= target / current);
            }
        }
        out_units.push(mu);
    }
    let kept = out_units.len();
    let mean_rank =
        inputs.iter().map(|(_, p)| p.module.rank()).sum::<usize>() as f32 / inputs.len() as f32;
    let out_scale = if p.output_reweight {
        (mean_rank / kept as f32).sqrt()
    } else {
        1.0
    };
    let mut a = Mat::zeros(kept, d_in);
    let mut b = Mat::zeros(d_out, kept);
    for (j, u) in out_units.iter().enumerate() {
        a.data[j * d_in..(j + 1) * d_in].copy_from_slice(&u[..d_in]);
        for o in 0..d_out {
            b.data[o * kept + j] = u[d_in + o] * out_scale;
        }
    }
    Ok((
        b,
        a,
        LegoStats {
            units: units.len(),
            clusters: kept,
            iterations,
        },
    ))
}
