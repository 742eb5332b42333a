//! The numerical pieces of the encoder: a bounds-checked wrapper over the `gemm` crate's f32
//! matrix product, split across rayon threads, and the element-wise passes (LayerNorm with the
//! residual add fused in, GELU, softmax) written as plain loops that LLVM vectorises. `exp` and
//! `erf` are branch-free polynomial versions for that reason: the standard library's call libm
//! one element at a time, which cost more than the matrix products for long batches.

use rayon::prelude::*;

/// A row-major matrix view: `rows × cols` elements, row `i` starting at `i * stride`.
#[derive(Clone, Copy)]
pub(crate) struct Mat<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub stride: usize,
}

impl<'a> Mat<'a> {
    pub fn new(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            stride: cols,
        }
    }

    fn fits(&self) -> bool {
        self.cols <= self.stride
            && (self.rows == 0
                || self.cols == 0
                || (self.rows - 1) * self.stride + self.cols <= self.data.len())
    }
}

/// How the right-hand side of a product is laid out.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Layout {
    /// `b` is `k × n` as given.
    AsIs,
    /// `b` is given as its transpose (`n × k`, row-major): the product is `a · bᵀ`.
    Transposed,
}

/// `dst[m × n] (+)= a[m × k] · b` on this thread. With `accumulate` the product is added to what
/// `dst` holds (used to start from a broadcast bias). Panics if a view does not fit its slice.
pub(crate) fn gemm_into(
    dst: &mut [f32],
    dst_stride: usize,
    a: Mat<'_>,
    b: Mat<'_>,
    layout: Layout,
    accumulate: bool,
) {
    let (k, n) = match layout {
        Layout::AsIs => (b.rows, b.cols),
        Layout::Transposed => (b.cols, b.rows),
    };
    let m = a.rows;
    assert!(a.fits() && b.fits(), "matrix view out of bounds");
    assert_eq!(a.cols, k, "inner dimensions differ");
    assert!(
        n <= dst_stride && (m == 0 || n == 0 || (m - 1) * dst_stride + n <= dst.len()),
        "destination out of bounds"
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for row in dst.chunks_mut(dst_stride).take(m) {
                row[..n].fill(0.0);
            }
        }
        return;
    }
    let (b_rs, b_cs) = match layout {
        Layout::AsIs => (b.stride as isize, 1),
        Layout::Transposed => (1, b.stride as isize),
    };
    // SAFETY: the asserts above keep every element gemm reads or writes inside the three slices;
    // `dst` is borrowed mutably, so it overlaps neither input, and its rows do not overlap each
    // other (n ≤ dst_stride).
    #[allow(unsafe_code)]
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_stride as isize,
            accumulate,
            a.data.as_ptr(),
            1,
            a.stride as isize,
            b.data.as_ptr(),
            b_cs,
            b_rs,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// Row blocks at least this tall are split across threads by rows; shorter products are split
/// by output columns, so that each thread reads only its part of the weights (a short prompt
/// is bound by reading the weights, not by arithmetic).
const ROW_SPLIT_MIN_ROWS: usize = 64;
/// Rows per task when splitting by rows (fewer when that would leave a thread idle).
const ROWS_PER_TASK: usize = 128;

/// `dst[m × n] = a[m × k] · w[k × n] + bias`, on the rayon pool.
pub(crate) fn linear(dst: &mut [f32], a: Mat<'_>, w: Mat<'_>, bias: &[f32]) {
    let (m, n) = (a.rows, w.cols);
    assert_eq!(bias.len(), n, "bias length");
    assert!(dst.len() >= m * n, "destination too small");
    let dst = &mut dst[..m * n];
    let threads = rayon::current_num_threads().max(1);
    if m >= ROW_SPLIT_MIN_ROWS || threads == 1 {
        let per_task = ROWS_PER_TASK.min(m.div_ceil(threads)).max(1);
        dst.par_chunks_mut(per_task * n)
            .enumerate()
            .for_each(|(block, out)| {
                let rows = out.len() / n;
                for row in out.chunks_mut(n) {
                    row.copy_from_slice(bias);
                }
                let start = block * per_task * a.stride;
                let a_block = Mat {
                    data: &a.data[start..],
                    rows,
                    ..a
                };
                gemm_into(out, n, a_block, w, Layout::AsIs, true);
            });
        return;
    }
    // Column split: each task computes a `m × width` block into its own buffer, then the blocks
    // are copied into place (m is small here, so the copy is nothing beside the product).
    let width = n.div_ceil(threads).next_multiple_of(16).min(n);
    let blocks: Vec<(usize, Vec<f32>)> = (0..n)
        .step_by(width)
        .collect::<Vec<_>>()
        .into_par_iter()
        .map(|col| {
            let cols = width.min(n - col);
            let mut out = Vec::with_capacity(m * cols);
            for _ in 0..m {
                out.extend_from_slice(&bias[col..col + cols]);
            }
            let w_block = Mat {
                data: &w.data[col..],
                cols,
                ..w
            };
            gemm_into(&mut out, cols, a, w_block, Layout::AsIs, true);
            (col, out)
        })
        .collect();
    for (col, out) in blocks {
        let cols = out.len() / m;
        for (row, part) in dst.chunks_mut(n).zip(out.chunks(cols)) {
            row[col..col + cols].copy_from_slice(part);
        }
    }
}

/// `x ← LayerNorm(x + residual)` row by row (`residual` may be empty: plain LayerNorm).
pub(crate) fn add_layer_norm(
    x: &mut [f32],
    residual: &[f32],
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
) {
    let width = gamma.len();
    assert!(residual.is_empty() || residual.len() == x.len());
    x.par_chunks_mut(width * 32)
        .enumerate()
        .for_each(|(block, rows)| {
            let start = block * width * 32;
            for (i, row) in rows.chunks_mut(width).enumerate() {
                if !residual.is_empty() {
                    let add = &residual[start + i * width..start + (i + 1) * width];
                    row.iter_mut().zip(add).for_each(|(v, r)| *v += r);
                }
                let mean = row.iter().sum::<f32>() / width as f32;
                let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / width as f32;
                let scale = 1.0 / (var + eps).sqrt();
                for ((v, g), b) in row.iter_mut().zip(gamma).zip(beta) {
                    *v = (*v - mean) * scale * g + b;
                }
            }
        });
}

/// GELU with the exact erf, as BERT's `"gelu"`: `x/2 · (1 + erf(x/√2))`.
pub(crate) fn gelu_in_place(x: &mut [f32]) {
    x.par_chunks_mut(1 << 14).for_each(|chunk| {
        for v in chunk {
            *v = 0.5 * *v * (1.0 + erf(*v * std::f32::consts::FRAC_1_SQRT_2));
        }
    });
}

/// `softmax(scale · row)`, in place. The max and the sum run over eight lanes: a plain float
/// fold is sequential (no reassociation), which made this the slowest part of attention.
pub(crate) fn scaled_softmax_in_place(row: &mut [f32], scale: f32) {
    const LANES: usize = 8;
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let mut chunks = row.chunks_exact(LANES);
    for chunk in chunks.by_ref() {
        for (m, v) in lanes.iter_mut().zip(chunk) {
            *m = m.max(*v);
        }
    }
    let max = chunks
        .remainder()
        .iter()
        .chain(&lanes)
        .copied()
        .fold(f32::NEG_INFINITY, f32::max);
    let shift = max * scale;
    let mut sums = [0f32; LANES];
    let mut chunks = row.chunks_exact_mut(LANES);
    for chunk in chunks.by_ref() {
        for (s, v) in sums.iter_mut().zip(chunk) {
            *v = exp(*v * scale - shift);
            *s += *v;
        }
    }
    let mut sum = 0f32;
    for v in chunks.into_remainder() {
        *v = exp(*v * scale - shift);
        sum += *v;
    }
    let inv = 1.0 / (sum + sums.iter().sum::<f32>());
    row.iter_mut().for_each(|v| *v *= inv);
}

/// `eˣ` to about one ulp for x in [-87, 88] (clamped outside: the results there are 0 or ∞ for
/// our purposes). Range reduction by ln 2 and a degree-7 polynomial; no branches, so loops
/// over it vectorise.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    const ROUND: f32 = 12_582_912.0; // 1.5 · 2²³: adding it rounds to an integer
    let x = x.clamp(-87.0, 88.0);
    let n = (x * std::f32::consts::LOG2_E + ROUND) - ROUND;
    // ln 2 split in two so that n·ln2 is exact in the first part.
    let r = x - n * 0.693_145_75 - n * 1.428_606_8e-6;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0
                    + r * (1.0 / 24.0
                        + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    let scale = f32::from_bits(((n as i32 + 127) << 23) as u32);
    p * scale
}

/// `erf(x)` to within 5e-7 (a few ulps near ±1): the odd rational minimax approximation `x·P(x²)/Q(x²)` on
/// [-4, 4] that Eigen uses for f32 (beyond 4, erf is 1 in f32). No exp and no branches.
#[inline(always)]
pub(crate) fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = -2.726_142_3e-10f32;
    for c in [
        2.770_681_4e-8,
        -2.101_024e-6,
        -5.692_506_4e-5,
        -7.349_906_3e-4,
        -2.954_600_2e-3,
        -1.609_603_3e-2,
    ] {
        p = p * x2 + c;
    }
    let mut q = -1.456_607_2e-5f32;
    for c in [
        -2.133_740_6e-4,
        -1.682_827e-3,
        -7.373_329_2e-3,
        -1.426_474e-2,
    ] {
        q = q * x2 + c;
    }
    x * p / q
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
        let mut out = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                out[i * n + j] = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
            }
        }
        out
    }

    fn pseudo_random(len: usize, seed: u32) -> Vec<f32> {
        let mut state = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                (state % 2001) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn linear_equals_the_naive_product_plus_bias_for_every_split() {
        // m = 3 and 40 take the column split, 64 and 150 the row split (with a ragged last block).
        for (m, k, n) in [(3, 5, 7), (40, 33, 70), (64, 16, 48), (150, 20, 17)] {
            let a = pseudo_random(m * k, 1);
            let w = pseudo_random(k * n, 2);
            let bias = pseudo_random(n, 3);
            let mut dst = vec![f32::NAN; m * n];
            linear(&mut dst, Mat::new(&a, m, k), Mat::new(&w, k, n), &bias);
            let want = naive(&a, &w, m, k, n);
            for i in 0..m {
                for j in 0..n {
                    let expected = want[i * n + j] + bias[j];
                    assert!(
                        (dst[i * n + j] - expected).abs() < 1e-4,
                        "({m},{k},{n}) [{i},{j}]"
                    );
                }
            }
        }
    }

    #[test]
    fn gemm_into_reads_strided_and_transposed_views() {
        // a = columns 1..4 of a 3 × 6 matrix; b given transposed.
        let full = pseudo_random(18, 4);
        let a = Mat {
            data: &full[1..],
            rows: 3,
            cols: 3,
            stride: 6,
        };
        let bt = pseudo_random(4 * 3, 5); // n = 4 rows of k = 3
        let mut dst = vec![0f32; 3 * 4];
        gemm_into(
            &mut dst,
            4,
            a,
            Mat::new(&bt, 4, 3),
            Layout::Transposed,
            false,
        );
        for i in 0..3 {
            for j in 0..4 {
                let want: f32 = (0..3).map(|p| full[i * 6 + 1 + p] * bt[j * 3 + p]).sum();
                assert!((dst[i * 4 + j] - want).abs() < 1e-5);
            }
        }
    }

    #[test]
    #[should_panic(expected = "out of bounds")]
    fn gemm_into_refuses_a_view_past_its_slice() {
        let a = vec![0f32; 5];
        let b = vec![0f32; 4];
        let mut dst = vec![0f32; 4];
        gemm_into(
            &mut dst,
            2,
            Mat::new(&a, 2, 3),
            Mat::new(&b, 2, 2),
            Layout::AsIs,
            false,
        );
    }

    #[test]
    fn exp_is_within_two_ulps_of_std() {
        let mut x = -87.0f32;
        while x < 88.0 {
            let (got, want) = (exp(x), x.exp());
            assert!(
                ((got - want) / want).abs() < 2.5e-7,
                "exp({x}) = {got}, std {want}"
            );
            x += 0.0137;
        }
    }

    #[test]
    fn erf_matches_reference_values() {
        // erf at a few points (from tables, 10 digits) and its symmetry.
        for (x, want) in [
            (0.0f32, 0.0f64),
            (0.1, 0.1124629160),
            (0.5, 0.5204998778),
            (1.0, 0.8427007929),
            (2.0, 0.9953222650),
            (3.5, 0.9999992569),
            (6.0, 1.0),
        ] {
            assert!(
                (erf(x) as f64 - want).abs() < 2e-7,
                "erf({x}) = {} vs {want}",
                erf(x)
            );
            assert!((erf(-x) as f64 + want).abs() < 2e-7, "erf(-{x})");
        }
    }

    #[test]
    fn erf_is_within_5e7_of_libm_everywhere() {
        let mut worst = 0f64;
        for i in -6000..=6000 {
            let x = i as f32 * 1e-3;
            worst = worst.max((erf(x) as f64 - libm::erf(x as f64)).abs());
        }
        assert!(worst < 5e-7, "worst absolute error {worst:e}");
    }

    #[test]
    fn softmax_sums_to_one_and_keeps_ratios() {
        // 11 entries: one full group of eight lanes and a remainder; the max in the remainder.
        let values: Vec<f32> = (0..11).map(|i| i as f32 * 0.3 - 1.0).collect();
        let mut row = values.clone();
        scaled_softmax_in_place(&mut row, 2.0);
        assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        let total: f64 = values.iter().map(|v| (2.0 * *v as f64).exp()).sum();
        for (got, v) in row.iter().zip(&values) {
            let want = (2.0 * *v as f64).exp() / total;
            assert!((*got as f64 - want).abs() < 1e-6 * want, "{got} vs {want}");
        }
    }

    #[test]
    fn layer_norm_with_residual() {
        // x + residual = [2, 2, 2, 4]: mean 2.5, variance 0.75.
        let mut x = vec![1.0f32, 2.0, 3.0, 4.0];
        let residual = vec![1.0f32, 0.0, -1.0, 0.0];
        let (gamma, beta) = ([2.0f32; 4], [0.0f32, 0.0, 0.0, 1.0]);
        add_layer_norm(&mut x, &residual, &gamma, &beta, 1e-12);
        let s = 1.0 / 0.75f32.sqrt();
        let want = [-s, -s, -s, 3.0 * s + 1.0];
        for (got, want) in x.iter().zip(want) {
            assert!((got - want).abs() < 1e-5, "{got} vs {want}");
        }
        // Without a residual: plain LayerNorm of the row.
        let mut y = vec![2.0f32, 2.0, 2.0, 4.0];
        add_layer_norm(&mut y, &[], &gamma, &beta, 1e-12);
        assert!((y[3] - (3.0 * s + 1.0)).abs() < 1e-5);
    }
}
