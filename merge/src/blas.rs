//! OpenBLAS' single-precision GEMM for the host's large products (rank-r deltas, the randomized
//! SVD's passes), called one block per rayon task: OpenBLAS is linked through ndarray-linalg's
//! `openblas-system` and kept single-threaded ([`crate::linalg`]), so the parallelism is ours.
#![allow(unsafe_code)]

use std::ffi::c_int;

use rayon::prelude::*;

use crate::mat::Mat;

unsafe extern "C" {
    fn cblas_sgemm(
        order: c_int,
        trans_a: c_int,
        trans_b: c_int,
        m: c_int,
        n: c_int,
        k: c_int,
        alpha: f32,
        a: *const f32,
        lda: c_int,
        b: *const f32,
        ldb: c_int,
        beta: f32,
        c: *mut f32,
        ldc: c_int,
    );
}

unsafe extern "C" {
    /// OpenBLAS' own setter (the library is linked through ndarray-linalg's `openblas-system`).
    fn openblas_set_num_threads(n: c_int);
}

/// Keeps OpenBLAS on the calling thread; idempotent and cheap. OpenBLAS reads
/// `OPENBLAS_NUM_THREADS` when it is loaded, before `main`, so only this call can make sure it
/// runs single-threaded: every BLAS or LAPACK call here is one block or one small decomposition
/// inside a module, the parallelism is rayon's, and a second pool of spinning OpenBLAS threads on
/// the same cores made merges several times slower (measured: 7 modules 4.8 s → 1.4 s on 2
/// cores).
pub fn single_threaded() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    // SAFETY: a plain setter with no preconditions; `Once` keeps it from racing itself.
    ONCE.call_once(|| unsafe { openblas_set_num_threads(1) });
}

const ROW_MAJOR: c_int = 101;
const NO_TRANS: c_int = 111;
const TRANS: c_int = 112;

/// A row-major operand: `data` holds `rows × cols` with consecutive rows `ld` apart; `t` reads
/// it transposed.
#[derive(Clone, Copy)]
pub struct Operand<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub t: bool,
}

impl<'a> Operand<'a> {
    pub fn new(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            t: false,
        }
    }

    pub fn t(self) -> Self {
        Self { t: !self.t, ..self }
    }

    /// Rows and columns of the operand as used (after the transpose).
    fn shape(&self) -> (usize, usize) {
        if self.t {
            (self.cols, self.rows)
        } else {
            (self.rows, self.cols)
        }
    }
}

/// A side as BLAS takes it. The engine refuses modules with a side beyond `i32::MAX` before any
/// product (`engine::check_inputs`), so this cannot fail on a merge's input.
fn int(x: usize) -> c_int {
    c_int::try_from(x).expect("matrix side beyond the BLAS interface's 32-bit range")
}

/// `c = alpha · a · b + beta · c`, with `c` a row-major `rows(a) × cols(b)` slice.
///
/// Panics when the shapes disagree or a slice is shorter than its shape: callers size these
/// from validated module shapes, and the check keeps the foreign call in bounds.
pub fn sgemm(alpha: f32, a: Operand<'_>, b: Operand<'_>, beta: f32, c: &mut [f32]) {
    let (m, k) = a.shape();
    let (k2, n) = b.shape();
    assert_eq!(k, k2, "sgemm: inner sizes differ");
    assert!(a.data.len() >= a.rows * a.cols, "sgemm: a is short");
    assert!(b.data.len() >= b.rows * b.cols, "sgemm: b is short");
    assert!(c.len() >= m * n, "sgemm: c is short");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        c[..m * n].iter_mut().for_each(|x| *x *= beta);
        return;
    }
    single_threaded();
    let flag = |t| if t { TRANS } else { NO_TRANS };
    // SAFETY: every pointer covers the extent the shapes and leading dimensions (the stored row
    // lengths) describe, checked above; `c` is exclusively borrowed.
    unsafe {
        cblas_sgemm(
            ROW_MAJOR,
            flag(a.t),
            flag(b.t),
            int(m),
            int(n),
            int(k),
            alpha,
            a.data.as_ptr(),
            int(a.cols.max(1)),
            b.data.as_ptr(),
            int(b.cols.max(1)),
            beta,
            c.as_mut_ptr(),
            int(n),
        );
    }
}

/// Rows of a dense operand per parallel task in [`times`].
const ROWS_PER_TASK: usize = 256;

/// `a · b` for a tall dense `a` (m×n) and a thin `b` (n×l), in parallel over blocks of `a`'s rows.
pub fn times(a: &Mat, b: &Mat) -> Mat {
    assert_eq!(a.cols, b.rows, "times: inner sizes differ");
    let (n, l) = (a.cols, b.cols);
    let mut out = vec![0.0f32; a.rows * l];
    if l > 0 && n > 0 {
        out.par_chunks_mut(ROWS_PER_TASK * l)
            .zip(a.data.par_chunks(ROWS_PER_TASK * n))
            .for_each(|(c, rows)| {
                let r = rows.len() / n;
                sgemm(
                    1.0,
                    Operand::new(rows, r, n),
                    Operand::new(&b.data, n, l),
                    0.0,
                    c,
                );
            });
    }
    Mat::new(a.rows, l, out)
}

/// Rows of `a` per partial sum in [`t_times`]: fixed, so the result does not depend on how many
/// threads there are or how rayon splits the work.
const ROWS_PER_PARTIAL: usize = 1024;

/// `aᵀ · b` for a tall dense `a` (m×n) and a thin `b` (m×l): one partial product per fixed block
/// of rows, in parallel, then added in block order in f64. The same bits on any number of
/// threads (a randomized SVD's subspace can turn on the last bits where the spectrum is flat).
pub fn t_times(a: &Mat, b: &Mat) -> Mat {
    assert_eq!(a.rows, b.rows, "t_times: row counts differ");
    let (n, l) = (a.cols, b.cols);
    if n == 0 || l == 0 || a.rows == 0 {
        return Mat::zeros(n, l);
    }
    let partials: Vec<Vec<f32>> = a
        .data
        .par_chunks(ROWS_PER_PARTIAL * n)
        .zip(b.data.par_chunks(ROWS_PER_PARTIAL * l))
        .map(|(rows_a, rows_b)| {
            let r = rows_a.len() / n;
            let mut c = vec![0.0f32; n * l];
            sgemm(
                1.0,
                Operand::new(rows_a, r, n).t(),
                Operand::new(rows_b, r, l),
                0.0,
                &mut c,
            );
            c
        })
        .collect();
    let mut sum = vec![0.0f64; n * l];
    for p in &partials {
        sum.iter_mut().zip(p).for_each(|(s, &x)| *s += f64::from(x));
    }
    Mat::new(n, l, sum.into_iter().map(|x| x as f32).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
            }
        }
        c
    }

    #[test]
    fn products_and_transposes_match_the_definition() {
        let (m, k, n) = (5, 3, 4);
        let a: Vec<f32> = (0..m * k).map(|i| i as f32 * 0.5 - 3.0).collect();
        let b: Vec<f32> = (0..k * n).map(|i| 1.0 - i as f32 * 0.25).collect();
        let want = naive(&a, &b, m, k, n);
        let mut c = vec![1.0; m * n];
        sgemm(
            1.0,
            Operand::new(&a, m, k),
            Operand::new(&b, k, n),
            0.0,
            &mut c,
        );
        assert_eq!(c, want);
        // aᵀ stored as k×m, read transposed; beta accumulates.
        let at: Vec<f32> = (0..k * m).map(|i| a[(i % m) * k + i / m]).collect();
        let mut c2 = want.clone();
        sgemm(
            2.0,
            Operand::new(&at, k, m).t(),
            Operand::new(&b, k, n),
            1.0,
            &mut c2,
        );
        assert_eq!(c2, want.iter().map(|x| 3.0 * x).collect::<Vec<_>>());
    }

    #[test]
    fn parallel_products_match_one_product() {
        // More rows than one task takes, and a ragged last block.
        let (m, n, l) = (ROWS_PER_PARTIAL * 2 + 37, 9, 4);
        let a = Mat::new(
            m,
            n,
            (0..m * n).map(|i| ((i * 7919) % 13) as f32 - 6.0).collect(),
        );
        let b = Mat::new(n, l, (0..n * l).map(|i| (i % 5) as f32 - 2.0).collect());
        assert_eq!(times(&a, &b), a.matmul_naive(&b));
        let q = Mat::new(m, l, (0..m * l).map(|i| (i % 3) as f32 - 1.0).collect());
        assert_eq!(t_times(&a, &q), a.t().matmul_naive(&q));
    }
}
