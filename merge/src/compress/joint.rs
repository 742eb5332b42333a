//! Joint compression (Compress then Serve, Brüel-Gabrielsson et al.): per module, shared
//! orthonormal `U` (d_out×c) and `V` (d_in×c) and a per-member `Σᵢ` (c×c, or diagonal), fitted by
//! alternating updates that never form a dense `ΔWᵢ` (every product goes through the factors).
//!
//! * Full `Σᵢ`: the optimum for fixed bases is `Σᵢ = UᵀΔᵢV`, leaving "maximise Σᵢ‖UᵀΔᵢV‖²". Each
//!   half-step is one block power step on `Σᵢ ΔᵢVVᵀΔᵢᵀ` (then on `ΣᵢΔᵢᵀUUᵀΔᵢ`) from the current
//!   basis; for a positive semi-definite matrix that never lowers the trace objective.
//! * Diagonal `Σᵢ = diag(σᵢ)`: `σᵢ = diag(UᵀΔᵢV)` exactly, `U` and `V` by orthogonal Procrustes
//!   (polar factor of `ΣᵢΔᵢVdiag(σᵢ)`); each step is exact, so the objective never increases.
//! * Clusters: farthest-point seeding (the member worst explained by the bases so far starts the
//!   next cluster), then fit per cluster / reassign by reconstruction error until stable.
//!
//! Everything here is f64 on the host (products of d×r and r×c blocks, QR and thin SVDs of d×c).

use ndarray::{Array1, Array2, Axis};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::control::Control;
use crate::error::MergeError;
use crate::linalg::{gaussian, qr, svd};

/// One member's factors on one module: `Δ = b · a` with the scale folded into `b`.
pub struct MemberFactors {
    pub member: usize,
    pub b: Array2<f64>,
    pub a: Array2<f64>,
}

impl MemberFactors {
    /// ‖b·a‖²_F = tr((bᵀb)(aaᵀ)).
    pub fn energy(&self) -> f64 {
        let bb = self.b.t().dot(&self.b);
        let aa = self.a.dot(&self.a.t());
        (&bb * &aa).sum()
    }
}

#[derive(Clone, Copy, Debug)]
pub struct JointParams {
    pub rank: usize,
    pub diag: bool,
    pub clusters: usize,
    pub iters: usize,
    pub seed: u64,
}

/// A fitted basis and its members' cores.
pub struct ClusterFit {
    pub u: Array2<f64>,
    pub v: Array2<f64>,
    /// Objective Σᵢ‖Δᵢ − UΣᵢVᵀ‖² after each iteration.
    pub history: Vec<f64>,
}

/// The result on one module.
pub struct ModuleFit {
    pub clusters: Vec<ClusterFit>,
    /// Per member factor entry (same order as the input): cluster index.
    pub assignment: Vec<usize>,
    /// Per member: `Σᵢ` (c×c, or 1×c when diagonal).
    pub sigmas: Vec<Array2<f64>>,
    /// Per member: (‖Δᵢ‖², ‖Δᵢ − UΣᵢVᵀ‖²).
    pub errors: Vec<(f64, f64)>,
    pub iterations: usize,
}

fn orth(m: &Array2<f64>) -> Result<Array2<f64>, MergeError> {
    Ok(qr(m)?.0)
}

/// Polar factor `P Qᵀ` of `m = P S Qᵀ` (the nearest matrix with orthonormal columns).
fn polar(m: &Array2<f64>) -> Result<Array2<f64>, MergeError> {
    let (p, _, qt) = svd(m)?;
    Ok(p.dot(&qt))
}

fn gaussian_matrix(rows: usize, cols: usize, rng: &mut ChaCha8Rng) -> Array2<f64> {
    Array2::from_shape_fn((rows, cols), |_| f64::from(gaussian(rng)))
}

/// `Uᵀ Δᵢ V` for each member, as (Uᵀbᵢ)(aᵢV).
fn cores(members: &[&MemberFactors], u: &Array2<f64>, v: &Array2<f64>) -> Vec<Array2<f64>> {
    members
        .iter()
        .map(|m| m.b.t().dot(u).t().dot(&m.a.dot(v)))
        .collect()
}

/// Per-member squared norm of what the basis keeps: ‖UᵀΔV‖² (full) or ‖diag(UᵀΔV)‖² (diag).
fn kept(core: &Array2<f64>, diag: bool) -> f64 {
    if diag {
        core.diag().iter().map(|x| x * x).sum()
    } else {
        core.iter().map(|x| x * x).sum()
    }
}

/// Fits one shared basis to `members`; `ctl` is checked before every iteration.
pub fn fit(
    members: &[&MemberFactors],
    p: &JointParams,
    d_out: usize,
    d_in: usize,
    ctl: &Control<'_>,
) -> Result<ClusterFit, MergeError> {
    let c = p.rank.min(d_out).min(d_in);
    let mut rng = ChaCha8Rng::seed_from_u64(p.seed);
    let mut ysum = Array2::<f64>::zeros((d_out, c));
    let mut zsum = Array2::<f64>::zeros((d_in, c));
    for m in members {
        let r = m.a.nrows();
        ysum = ysum + m.b.dot(&gaussian_matrix(r, c, &mut rng));
        zsum = zsum + m.a.t().dot(&gaussian_matrix(r, c, &mut rng));
    }
    let mut u = orth(&ysum)?;
    let mut v = orth(&zsum)?;
    let total: f64 = members.iter().map(|m| m.energy()).sum();
    let objective = |u: &Array2<f64>, v: &Array2<f64>| -> f64 {
        total
            - cores(members, u, v)
                .iter()
                .map(|s| kept(s, p.diag))
                .sum::<f64>()
    };
    let mut history = vec![objective(&u, &v)];
    for _ in 0..p.iters {
        ctl.check()?;
        if p.diag {
            // σ exact, then U by Procrustes; σ exact again, then V by Procrustes.
            let sig = cores(members, &u, &v);
            let mut mu = Array2::<f64>::zeros((d_out, c));
            for (m, s) in members.iter().zip(&sig) {
                let av = m.a.dot(&v) * s.diag().insert_axis(Axis(0));
                mu = mu + m.b.dot(&av);
            }
            u = polar(&mu)?;
            let sig = cores(members, &u, &v);
            let mut mv = Array2::<f64>::zeros((d_in, c));
            for (m, s) in members.iter().zip(&sig) {
                let bu = m.b.t().dot(&u) * s.diag().insert_axis(Axis(0));
                mv = mv + m.a.t().dot(&bu);
            }
            v = polar(&mv)?;
        } else {
            // One block power step on Σ ΔVVᵀΔᵀ from U, then on Σ ΔᵀUUᵀΔ from V.
            let mut y = Array2::<f64>::zeros((d_out, c));
            for m in members {
                let av = m.a.dot(&v);
                let bu = m.b.t().dot(&u);
                y = y + m.b.dot(&av.dot(&av.t().dot(&bu)));
            }
            u = orth(&y)?;
            let mut z = Array2::<f64>::zeros((d_in, c));
            for m in members {
                let av = m.a.dot(&v);
                let bu = m.b.t().dot(&u);
                z = z + m.a.t().dot(&bu.dot(&bu.t().dot(&av)));
            }
            v = orth(&z)?;
        }
        let obj = objective(&u, &v);
        let prev = history.last().copied().unwrap_or(obj);
        history.push(obj);
        // Stop once exact (to rounding) or when an iteration gains less than 1e-7 of what is left.
        if obj <= 1e-15 * total || prev - obj <= 1e-7 * obj {
            break;
        }
    }
    Ok(ClusterFit { u, v, history })
}

/// Relative error of a member under a basis.
fn member_error(m: &MemberFactors, fit: &ClusterFit, diag: bool) -> (f64, f64) {
    let e = m.energy();
    let core = m.b.t().dot(&fit.u).t().dot(&m.a.dot(&fit.v));
    (e, (e - kept(&core, diag)).max(0.0))
}

fn relative(err: (f64, f64)) -> f64 {
    if err.0 > 0.0 { err.1 / err.0 } else { 0.0 }
}

/// Fits `p.clusters` bases to the members of one module and assigns each member to one.
pub fn fit_module(
    members: &[MemberFactors],
    p: &JointParams,
    d_out: usize,
    d_in: usize,
) -> Result<ModuleFit, MergeError> {
    fit_module_with(members, p, d_out, d_in, &Control::none())
}

/// [`fit_module`], stopping with [`MergeError::Cancelled`] at the first iteration (of any fit)
/// after `ctl` is cancelled.
pub fn fit_module_with(
    members: &[MemberFactors],
    p: &JointParams,
    d_out: usize,
    d_in: usize,
    ctl: &Control<'_>,
) -> Result<ModuleFit, MergeError> {
    let k = p.clusters.clamp(1, members.len().max(1));
    let all: Vec<&MemberFactors> = members.iter().collect();
    let mut assignment = vec![0usize; members.len()];
    let mut fits: Vec<ClusterFit>;
    if k == 1 {
        fits = vec![fit(&all, p, d_out, d_in, ctl)?];
    } else {
        // Farthest-point seeding on single-member fits.
        let mut seeds = vec![0usize];
        let mut seed_fits = vec![fit(&all[..1], p, d_out, d_in, ctl)?];
        while seeds.len() < k {
            let worst = (0..members.len())
                .filter(|i| !seeds.contains(i))
                .map(|i| {
                    let best = seed_fits
                        .iter()
                        .map(|f| relative(member_error(&members[i], f, p.diag)))
                        .fold(f64::INFINITY, f64::min);
                    (i, best)
                })
                .max_by(|a, b| a.1.total_cmp(&b.1).then(b.0.cmp(&a.0)));
            let Some((i, _)) = worst else { break };
            seeds.push(i);
            seed_fits.push(fit(&all[i..=i], p, d_out, d_in, ctl)?);
        }
        fits = seed_fits;
        for round in 0..20 {
            let next: Vec<usize> = members
                .iter()
                .map(|m| {
                    (0..fits.len())
                        .map(|c| (c, relative(member_error(m, &fits[c], p.diag))))
                        .min_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)))
                        .map_or(0, |(c, _)| c)
                })
                .collect();
            if round > 0 && next == assignment {
                break;
            }
            assignment = next;
            // Refit each non-empty cluster; drop empty ones and renumber.
            let mut refit = Vec::new();
            let mut renumber = vec![usize::MAX; fits.len()];
            for (c, new_index) in renumber.iter_mut().enumerate() {
                let group: Vec<&MemberFactors> = members
                    .iter()
                    .zip(&assignment)
                    .filter(|(_, a)| **a == c)
                    .map(|(m, _)| m)
                    .collect();
                if group.is_empty() {
                    continue;
                }
                *new_index = refit.len();
                refit.push(fit(&group, p, d_out, d_in, ctl)?);
            }
            assignment.iter_mut().for_each(|a| *a = renumber[*a]);
            fits = refit;
        }
    }
    let mut sigmas = Vec::new();
    let mut errors = Vec::new();
    for (m, &c) in members.iter().zip(&assignment) {
        let core = m.b.t().dot(&fits[c].u).t().dot(&m.a.dot(&fits[c].v));
        errors.push(member_error(m, &fits[c], p.diag));
        sigmas.push(if p.diag {
            core.diag().to_owned().insert_axis(Axis(0))
        } else {
            core
        });
    }
    let iterations = fits.iter().map(|f| f.history.len() - 1).max().unwrap_or(0);
    Ok(ModuleFit {
        clusters: fits,
        assignment,
        sigmas,
        errors,
        iterations,
    })
}

/// `Σ` as a full matrix (a diagonal one is stored as one row).
pub fn sigma_matrix(s: &Array2<f64>) -> Array2<f64> {
    if s.nrows() == 1 && s.ncols() > 1 {
        Array2::from_diag(&Array1::from(s.row(0).to_vec()))
    } else {
        s.clone()
    }
}
