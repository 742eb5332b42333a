//! A plain row-major f32 matrix: the currency between file I/O, the host and GPU products, and
//! LAPACK.

use ndarray::Array2;

#[derive(Clone, Debug, PartialEq)]
pub struct Mat {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f32>,
}

impl Mat {
    /// `data.len()` must be `rows * cols` (callers build it from validated shapes).
    pub fn new(rows: usize, cols: usize, data: Vec<f32>) -> Self {
        debug_assert_eq!(data.len(), rows * cols);
        Self { rows, cols, data }
    }

    pub fn zeros(rows: usize, cols: usize) -> Self {
        Self::new(rows, cols, vec![0.0; rows * cols])
    }

    pub fn at(&self, r: usize, c: usize) -> f32 {
        self.data[r * self.cols + c]
    }

    /// Transpose (copies).
    pub fn t(&self) -> Self {
        let mut out = vec![0.0; self.data.len()];
        for r in 0..self.rows {
            for c in 0..self.cols {
                out[c * self.rows + r] = self.data[r * self.cols + c];
            }
        }
        Self::new(self.cols, self.rows, out)
    }

    pub fn scale(mut self, s: f32) -> Self {
        self.data.iter_mut().for_each(|x| *x *= s);
        self
    }

    pub fn frob2(&self) -> f64 {
        self.data.iter().map(|&x| f64::from(x) * f64::from(x)).sum()
    }

    /// Rows stacked: `[self; other]`.
    pub fn vstack(parts: &[&Mat]) -> Self {
        let cols = parts.first().map_or(0, |m| m.cols);
        let mut data = Vec::with_capacity(parts.iter().map(|m| m.data.len()).sum());
        for m in parts {
            data.extend_from_slice(&m.data);
        }
        Self::new(data.len() / cols.max(1), cols, data)
    }

    /// Columns side by side: `[self, other]`.
    pub fn hstack(parts: &[&Mat]) -> Self {
        let rows = parts.first().map_or(0, |m| m.rows);
        let cols: usize = parts.iter().map(|m| m.cols).sum();
        let mut data = Vec::with_capacity(rows * cols);
        for r in 0..rows {
            for m in parts {
                data.extend_from_slice(&m.data[r * m.cols..(r + 1) * m.cols]);
            }
        }
        Self::new(rows, cols, data)
    }

    pub fn to_f64(&self) -> Array2<f64> {
        Array2::from_shape_fn((self.rows, self.cols), |(r, c)| f64::from(self.at(r, c)))
    }

    pub fn from_f64(a: &Array2<f64>) -> Self {
        let (rows, cols) = a.dim();
        Self::new(rows, cols, a.iter().map(|&x| x as f32).collect())
    }

    /// Plain triple loop, for tests and tiny matrices (the engine uses a BLAS-class GEMM: ndarray on
    /// the host, cuBLAS on the GPU).
    pub fn matmul_naive(&self, other: &Mat) -> Mat {
        let mut out = Mat::zeros(self.rows, other.cols);
        for i in 0..self.rows {
            for k in 0..self.cols {
                let a = self.at(i, k);
                for j in 0..other.cols {
                    out.data[i * other.cols + j] += a * other.at(k, j);
                }
            }
        }
        out
    }

    /// ‖self − reference‖_F / ‖reference‖_F (‖self‖_F when the reference is zero).
    ///
    /// # Panics
    ///
    /// When the shapes differ: zipping the two buffers would compare only their common prefix
    /// (or transposed layouts entry by entry) and could report a small error for matrices that do
    /// not match at all. Only tests and benchmarks call this, so a loud failure is the right one.
    pub fn rel_err(&self, reference: &Mat) -> f64 {
        assert_eq!(
            (self.rows, self.cols),
            (reference.rows, reference.cols),
            "rel_err of a {}×{} matrix against a {}×{} reference",
            self.rows,
            self.cols,
            reference.rows,
            reference.cols
        );
        let num: f64 = self
            .data
            .iter()
            .zip(&reference.data)
            .map(|(&a, &b)| (f64::from(a) - f64::from(b)).powi(2))
            .sum();
        let den = reference.frob2();
        if den == 0.0 {
            num.sqrt()
        } else {
            (num / den).sqrt()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rel_err_is_relative_frobenius() {
        let reference = Mat::new(1, 2, vec![3.0, 4.0]);
        let got = Mat::new(1, 2, vec![3.0, 4.5]);
        assert!((got.rel_err(&reference) - 0.1).abs() < 1e-12);
        assert_eq!(reference.rel_err(&reference), 0.0);
    }

    #[test]
    #[should_panic(expected = "rel_err of a 2×3 matrix against a 3×2 reference")]
    fn rel_err_refuses_different_shapes() {
        // Same number of entries: zipping the buffers alone would not notice.
        let a = Mat::new(2, 3, vec![1.0; 6]);
        let b = Mat::new(3, 2, vec![1.0; 6]);
        a.rel_err(&b);
    }
}
