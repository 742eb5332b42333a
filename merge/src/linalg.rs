//! Truncations to a rank. Large products on the host (ndarray/OpenBLAS, or candle's CPU matmul for
//! the randomized sketch) or through [`FactorProducts`] (the GPU's is `crate::gpu::factored`); the
//! small decompositions (QR, eigen, SVD) always on the host with LAPACK in f64.
//!
//! Three ways to a rank-k factorisation, each reporting its exact retained energy:
//! * [`factored_truncate`]: for a delta given as `B·A` with inner size R (any sum of LoRAs):
//!   QR of `B` and `Aᵀ`, SVD of the R×R core. Exact, `O((d_out + d_in)·R²)`, no dense matrix.
//! * [`exact_truncate`]: dense SVD (LAPACK gesdd) — for small matrices or when asked.
//! * [`randomized_truncate`]: Halko–Martinsson–Tropp range finder with oversampling and power
//!   iterations for large dense deltas (TIES/DARE/magnitude results).

use ndarray::{Array2, Axis, s};
use ndarray_linalg::{JobSvd, QR, SVDDC};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::blas;
use crate::error::MergeError;
use crate::mat::Mat;

/// Extra sketch columns of the randomized SVD.
pub const OVERSAMPLE: usize = 8;
/// Power iterations of the randomized SVD (each one sharpens a flat spectrum).
pub const POWER_ITERS: usize = 2;
/// Below this smaller dimension a dense exact SVD is cheap enough to always use.
pub const EXACT_BELOW: usize = 512;

/// A rank-k factorisation `b · a` of some delta, with how much of it was kept.
#[derive(Clone, Debug)]
pub struct Truncated {
    /// `d_out × k`.
    pub b: Mat,
    /// `k × d_in`.
    pub a: Mat,
    /// ‖Δ‖²_F of the delta before truncation.
    pub energy_total: f64,
    /// ‖b·a‖²_F.
    pub energy_kept: f64,
    /// `factored`, `exact` or `randomized`.
    pub route: &'static str,
}

impl Truncated {
    pub fn rank(&self) -> usize {
        self.a.rows
    }

    /// Fraction of ‖Δ‖² kept (1 for a zero delta).
    pub fn retained_energy(&self) -> f64 {
        if self.energy_total > 0.0 {
            (self.energy_kept / self.energy_total).min(1.0)
        } else {
            1.0
        }
    }

    /// ‖Δ − b·a‖_F / ‖Δ‖_F. Exact: `b·a` is an orthogonal projection of Δ.
    pub fn relative_error(&self) -> f64 {
        if self.energy_total > 0.0 {
            ((self.energy_total - self.energy_kept).max(0.0) / self.energy_total).sqrt()
        } else {
            0.0
        }
    }
}

fn lapack(context: &str) -> impl FnOnce(ndarray_linalg::error::LinalgError) -> MergeError + '_ {
    move |e| MergeError::numeric(context, e)
}

/// Thin QR of a tall matrix: `m = q · r`, `q` with orthonormal columns.
pub fn qr(m: &Array2<f64>) -> Result<(Array2<f64>, Array2<f64>), MergeError> {
    blas::single_threaded();
    m.qr().map_err(lapack("QR"))
}

/// A thin SVD: `(u, s, vt)`.
pub type Svd = (Array2<f64>, Vec<f64>, Array2<f64>);

/// SVD `m = u · diag(s) · vt`, thin.
pub fn svd(m: &Array2<f64>) -> Result<Svd, MergeError> {
    blas::single_threaded();
    let (u, s, vt) = m.svddc(JobSvd::Some).map_err(lapack("SVD"))?;
    match (u, vt) {
        (Some(u), Some(vt)) => Ok((u, s.to_vec(), vt)),
        _ => Err(MergeError::numeric(
            "SVD",
            "LAPACK returned no singular vectors",
        )),
    }
}

/// Splits the top `k` singular triplets as `B = U·√S`, `A = √S·Vᵀ` (balanced, so neither factor
/// carries the whole dynamic range when written in half precision).
pub(crate) fn split(u: &Array2<f64>, s: &[f64], vt: &Array2<f64>, k: usize) -> (Mat, Mat) {
    let root: Vec<f64> = s[..k].iter().map(|x| x.sqrt()).collect();
    let mut b = u.slice(s![.., ..k]).to_owned();
    for (j, mut col) in b.axis_iter_mut(Axis(1)).enumerate() {
        col *= root[j];
    }
    let mut a = vt.slice(s![..k, ..]).to_owned();
    for (j, mut row) in a.axis_iter_mut(Axis(0)).enumerate() {
        row *= root[j];
    }
    (Mat::from_f64(&b), Mat::from_f64(&a))
}

/// Where to cut a spectrum.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Cut {
    /// Keep this many singular values.
    Rank(usize),
    /// Keep the fewest singular values whose energy Σσ² is at least this fraction of the total.
    Energy(f64),
}

impl Cut {
    fn rank(self, s: &[f64]) -> usize {
        match self {
            Cut::Rank(k) => k.min(s.len()),
            Cut::Energy(e) => {
                let total: f64 = s.iter().map(|x| x * x).sum();
                let mut kept = 0.0;
                for (i, x) in s.iter().enumerate() {
                    kept += x * x;
                    if kept >= e * total {
                        return i + 1;
                    }
                }
                s.len()
            }
        }
        .max(1)
    }
}

/// Singular values of `b · a` (descending), without forming it: bases of `b` and `aᵀ` from their
/// Gram matrices, then the SVD of the r×r core. Exact up to directions below f32 precision (see
/// [`basis_from_gram`]).
pub fn factored_singular_values(b: &Mat, a: &Mat) -> Result<Vec<f64>, MergeError> {
    let (gb, ga) = HostProducts::new(b, a).grams()?;
    let (_, rb) = basis_from_gram(&gb)?;
    let (_, ra) = basis_from_gram(&ga)?;
    let (_, s, _) = svd(&rb.dot(&ra.t()))?;
    Ok(s)
}

/// Best rank-`k` factorisation of `b · a` without forming it (exact), on the host.
pub fn factored_truncate(b: &Mat, a: &Mat, k: usize) -> Result<Truncated, MergeError> {
    factored_cut(b, a, Cut::Rank(k))
}

/// The large products of the factored route, for `b` (d_out×R) and `a` (R×d_in): everything else
/// is R×R work on the host. Implemented for the host ([`HostProducts`]) and the GPU; a
/// [`crate::context::Backend`] hands out its own.
pub trait FactorProducts {
    /// `(bᵀ·b, a·aᵀ)`, both R×R, in f64.
    fn grams(&mut self) -> Result<(Array2<f64>, Array2<f64>), MergeError>;
    /// `(b · left, right · a)` for `left` R×k and `right` k×R, rounded to f32.
    fn products(
        &mut self,
        left: &Array2<f64>,
        right: &Array2<f64>,
    ) -> Result<(Mat, Mat), MergeError>;
}

/// [`FactorProducts`] with ndarray in f64.
pub struct HostProducts {
    b: Array2<f64>,
    a: Array2<f64>,
}

impl HostProducts {
    pub fn new(b: &Mat, a: &Mat) -> Self {
        Self {
            b: b.to_f64(),
            a: a.to_f64(),
        }
    }
}

impl FactorProducts for HostProducts {
    fn grams(&mut self) -> Result<(Array2<f64>, Array2<f64>), MergeError> {
        blas::single_threaded();
        Ok((self.b.t().dot(&self.b), self.a.dot(&self.a.t())))
    }

    fn products(
        &mut self,
        left: &Array2<f64>,
        right: &Array2<f64>,
    ) -> Result<(Mat, Mat), MergeError> {
        blas::single_threaded();
        Ok((
            Mat::from_f64(&self.b.dot(left)),
            Mat::from_f64(&right.dot(&self.a)),
        ))
    }
}

/// From the Gram matrix `G = mᵀm` (R×R) of a tall `m`: `scaled` (R×k) with `Q = m·scaled`
/// orthonormal, and `r` (k×R) with `m = Q·r` — one d×R×R product instead of a Householder QR of
/// a tall panel (which OpenBLAS runs mostly in level-2 kernels: 5× slower here), and one that the
/// GPU can do. Directions whose Gram eigenvalue is below 1e-13 of the largest (singular values
/// below ~3e-7 of the largest, beneath f32 input precision) are dropped, so a rank-deficient stack
/// stays well conditioned.
pub fn basis_from_gram(gram: &Array2<f64>) -> Result<(Array2<f64>, Array2<f64>), MergeError> {
    use ndarray_linalg::{Eigh, UPLO};
    blas::single_threaded();
    let (vals, vecs) = gram
        .eigh(UPLO::Upper)
        .map_err(lapack("Gram eigendecomposition"))?;
    let top = vals.iter().copied().fold(0.0f64, f64::max);
    let keep: Vec<usize> = (0..vals.len())
        .rev()
        .filter(|&i| vals[i] > top * 1e-13 && vals[i] > 0.0)
        .collect();
    let n = gram.ncols();
    let k = keep.len().max(1);
    let mut r = Array2::<f64>::zeros((k, n));
    let mut scaled = Array2::<f64>::zeros((n, k));
    for (row, &i) in keep.iter().enumerate() {
        let root = vals[i].sqrt();
        for c in 0..n {
            r[[row, c]] = root * vecs[[c, i]];
            scaled[[c, row]] = vecs[[c, i]] / root;
        }
    }
    Ok((scaled, r))
}

/// [`factored_truncate`] with the rank chosen by `cut`, on the host.
pub fn factored_cut(b: &Mat, a: &Mat, cut: Cut) -> Result<Truncated, MergeError> {
    factored_cut_with(&mut HostProducts::new(b, a), cut)
}

/// The factored route: with `b = Q_b·R_b` and `aᵀ = Q_a·R_a`, `b·a = Q_b·(R_b·R_aᵀ)·Q_aᵀ`, so the
/// SVD of the R×R core gives the exact truncation; the results are `b·left` and `right·a` with
/// `left = S_b·U_k·√Σ`, `right = √Σ·V_kᵀ·S_aᵀ` (`S` the basis maps of [`basis_from_gram`]).
pub fn factored_cut_with(p: &mut dyn FactorProducts, cut: Cut) -> Result<Truncated, MergeError> {
    let (gb, ga) = p.grams()?;
    let (sb, rb) = basis_from_gram(&gb)?;
    let (sa, ra) = basis_from_gram(&ga)?;
    let (u, s, vt) = svd(&rb.dot(&ra.t()))?;
    let k = cut.rank(&s);
    let energy_total: f64 = s.iter().map(|x| x * x).sum();
    let energy_kept: f64 = s[..k].iter().map(|x| x * x).sum();
    let mut left = sb.dot(&u.slice(s![.., ..k]));
    let mut right = vt.slice(s![..k, ..]).dot(&sa.t());
    for (j, sigma) in s[..k].iter().enumerate() {
        let root = sigma.sqrt();
        left.column_mut(j).mapv_inplace(|x| x * root);
        right.row_mut(j).mapv_inplace(|x| x * root);
    }
    let (b, a) = p.products(&left, &right)?;
    Ok(Truncated {
        b,
        a,
        energy_total,
        energy_kept,
        route: "factored",
    })
}

/// Best rank-`k` factorisation of a dense matrix by a full SVD.
pub fn exact_truncate(delta: &Mat, k: usize) -> Result<Truncated, MergeError> {
    let (u, s, vt) = svd(&delta.to_f64())?;
    let k = k.min(s.len());
    let energy_total = delta.frob2();
    let energy_kept: f64 = s[..k].iter().map(|x| x * x).sum();
    let (b, a) = split(&u, &s, &vt, k);
    Ok(Truncated {
        b,
        a,
        energy_total,
        energy_kept,
        route: "exact",
    })
}

/// Rank-`k` factorisation of a dense matrix by a randomized range finder (`OVERSAMPLE` extra
/// columns, `POWER_ITERS` power iterations with re-orthonormalisation). The reported energy is
/// that of the returned factorisation, which is `U_k U_kᵀ Δ`, so the error figure is exact; it is
/// within a small factor of optimal, not optimal (see docs/benchmarks.md for measured ratios).
pub fn randomized_truncate(delta: &Mat, k: usize, seed: u64) -> Result<Truncated, MergeError> {
    let omega = sketch(delta.rows, delta.cols, k, seed);
    let y = blas::times(delta, &omega);
    randomized_from_sketch(delta, &y, delta.frob2(), k)
}

/// [`randomized_truncate`] from its first product `y = Δ·Ω` (taken while Δ was built, see
/// [`crate::fused`]) and ‖Δ‖²_F: the power iterations and the final projection, each product a
/// parallel pass over Δ in f32, the orthonormalisations in f64.
pub fn randomized_from_sketch(
    delta: &Mat,
    y: &Mat,
    energy_total: f64,
    k: usize,
) -> Result<Truncated, MergeError> {
    let mut q = qr(&y.to_f64())?.0;
    for _ in 0..POWER_ITERS {
        let z = qr(&blas::t_times(delta, &Mat::from_f64(&q)).to_f64())?.0;
        q = qr(&blas::times(delta, &Mat::from_f64(&z)).to_f64())?.0;
    }
    // Small = Qᵀ Δ, computed as (Δᵀ Q)ᵀ.
    let small = blas::t_times(delta, &Mat::from_f64(&q))
        .to_f64()
        .reversed_axes();
    finish_randomized(&q, &small, energy_total, k)
}

/// The last step of a randomized SVD, shared by the CPU and GPU paths: with `q` (m×l) the
/// orthonormal range basis and `small` = Qᵀ·Δ (l×n), the rank-`k` factors `Q·U_k·√Σ` and `√Σ·V_kᵀ`
/// from the SVD of `small`. `energy_total` is ‖Δ‖²_F.
pub fn finish_randomized(
    q: &Array2<f64>,
    small: &Array2<f64>,
    energy_total: f64,
    k: usize,
) -> Result<Truncated, MergeError> {
    let (ub, s, vt) = svd(small)?;
    let k = k.min(s.len());
    let energy_kept: f64 = s[..k].iter().map(|x| x * x).sum();
    let (b, a) = split(&q.dot(&ub), &s, &vt, k);
    Ok(Truncated {
        b,
        a,
        energy_total,
        energy_kept,
        route: "randomized",
    })
}

/// The Gaussian test matrix Ω (n × (k + OVERSAMPLE), capped at the smaller dimension) of a
/// randomized SVD of an m×n matrix: the same numbers on every device for the same seed.
pub fn sketch(m: usize, n: usize, k: usize, seed: u64) -> Mat {
    let l = (k + OVERSAMPLE).min(m.min(n));
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    Mat::new(n, l, (0..n * l).map(|_| gaussian(&mut rng)).collect())
}

/// A standard normal draw (Box–Muller), so sketches depend only on the seed.
pub fn gaussian(rng: &mut impl Rng) -> f32 {
    let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
    let u2: f64 = rng.random();
    ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random(rows: usize, cols: usize, seed: u64) -> Mat {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        Mat::new(
            rows,
            cols,
            (0..rows * cols).map(|_| gaussian(&mut rng)).collect(),
        )
    }

    #[test]
    fn factored_singular_values_match_closed_form_and_dense_svd() {
        // B·A = diag(3, 2) embedded in 3×4: singular values 3 and 2.
        let b = Mat::new(3, 2, vec![3.0, 0.0, 0.0, 2.0, 0.0, 0.0]);
        let a = Mat::new(2, 4, vec![1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0]);
        let s = factored_singular_values(&b, &a).expect("svd");
        assert!(
            (s[0] - 3.0).abs() < 1e-9 && (s[1] - 2.0).abs() < 1e-9,
            "{s:?}"
        );
        // Random factors: the dense product's SVD agrees.
        let (b, a) = (random(40, 6, 1), random(6, 30, 2));
        let fast = factored_singular_values(&b, &a).expect("svd");
        let (_, dense, _) = svd(&b.matmul_naive(&a).to_f64()).expect("svd");
        for (x, y) in fast.iter().zip(&dense) {
            assert!((x - y).abs() <= 1e-5 * dense[0], "{x} vs {y}");
        }
        assert_eq!(fast.len(), 6);
    }

    #[test]
    fn factored_route_matches_dense_svd() {
        // Δ = B·A with inner size 12 (two "adapters" of rank 4 and 8).
        let (b, a) = (random(40, 12, 1), random(12, 30, 2));
        let delta = b.matmul_naive(&a);
        for k in [3, 12] {
            let f = factored_truncate(&b, &a, k).expect("factored");
            let e = exact_truncate(&delta, k).expect("exact");
            let (fb, eb) = (f.b.matmul_naive(&f.a), e.b.matmul_naive(&e.a));
            assert!(fb.rel_err(&eb) < 1e-4, "k={k}: {}", fb.rel_err(&eb));
            assert!((f.relative_error() - e.relative_error()).abs() < 1e-5);
            assert!(
                (fb.rel_err(&delta) - f.relative_error()).abs() < 1e-4,
                "reported error is the real one"
            );
        }
        let full = factored_truncate(&b, &a, 12).expect("full rank");
        assert!(full.b.matmul_naive(&full.a).rel_err(&delta) < 1e-5);
    }

    #[test]
    fn randomized_finds_a_low_rank_matrix_exactly_and_reports_its_error() {
        let delta = random(300, 6, 3).matmul_naive(&random(6, 200, 4));
        let r = randomized_truncate(&delta, 6, 7).expect("rsvd");
        assert!(r.b.matmul_naive(&r.a).rel_err(&delta) < 1e-4);
        let noisy = Mat::new(
            300,
            200,
            delta
                .data
                .iter()
                .zip(random(300, 200, 5).data)
                .map(|(a, b)| a + 0.3 * b)
                .collect(),
        );
        let r = randomized_truncate(&noisy, 6, 7).expect("rsvd");
        let e = exact_truncate(&noisy, 6).expect("exact");
        let actual = r.b.matmul_naive(&r.a).rel_err(&noisy);
        assert!(
            (actual - r.relative_error()).abs() < 1e-4,
            "{actual} vs {}",
            r.relative_error()
        );
        assert!(
            r.relative_error() <= e.relative_error() * 1.02,
            "{} vs optimal {}",
            r.relative_error(),
            e.relative_error()
        );
    }

    #[test]
    fn exact_error_is_the_tail_of_the_spectrum() {
        // diag(4, 3, 2, 1): rank-2 error is sqrt(4 + 1) / sqrt(30).
        let mut d = Mat::zeros(4, 4);
        for (i, v) in [4.0, 3.0, 2.0, 1.0].iter().enumerate() {
            d.data[i * 4 + i] = *v;
        }
        let t = exact_truncate(&d, 2).expect("svd");
        assert!((t.relative_error() - (5.0f64 / 30.0).sqrt()).abs() < 1e-9);
        assert!((t.retained_energy() - 25.0 / 30.0).abs() < 1e-9);
    }
}
