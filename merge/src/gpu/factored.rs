//! The factored route's large products on the GPU, in f64 (cuBLAS dgemm): the Gram matrices of the
//! stacked factors and the two final thin products. The R×R work stays on the host
//! ([`crate::linalg::factored_cut_with`]).

use cudarc::driver::CudaSlice;
use ndarray::Array2;

use super::Gpu;
use crate::error::MergeError;
use crate::linalg::FactorProducts;
use crate::mat::Mat;

/// `b` (d_out×R) and `a` (R×d_in) resident on the device in f64.
pub struct GpuProducts<'g> {
    gpu: &'g Gpu,
    b: CudaSlice<f64>,
    a: CudaSlice<f64>,
    d_out: usize,
    r: usize,
    d_in: usize,
}

impl<'g> GpuProducts<'g> {
    pub fn new(gpu: &'g Gpu, b: &Mat, a: &Mat) -> Result<Self, MergeError> {
        if b.cols != a.rows {
            return Err(MergeError::numeric(
                "factored route",
                format!("{}×{} · {}×{}", b.rows, b.cols, a.rows, a.cols),
            ));
        }
        let _held = gpu.lock();
        let b_dev = gpu.widen(&gpu.upload(&b.data)?)?;
        let a_dev = gpu.widen(&gpu.upload(&a.data)?)?;
        Ok(Self {
            gpu,
            b: b_dev,
            a: a_dev,
            d_out: b.rows,
            r: b.cols,
            d_in: a.cols,
        })
    }
}

fn array(rows: usize, cols: usize, v: Vec<f64>) -> Result<Array2<f64>, MergeError> {
    Array2::from_shape_vec((rows, cols), v).map_err(|e| MergeError::numeric("GPU result", e))
}

impl FactorProducts for GpuProducts<'_> {
    fn grams(&mut self) -> Result<(Array2<f64>, Array2<f64>), MergeError> {
        let (g, r) = (self.gpu, self.r);
        let _held = g.lock();
        let mut gb = g.zeros::<f64>(r * r)?;
        g.gemm(
            (r, r, self.d_out),
            1.0,
            (&self.b, true, r),
            (&self.b, false, r),
            0.0,
            &mut gb,
        )?;
        let mut ga = g.zeros::<f64>(r * r)?;
        let d_in = self.d_in;
        g.gemm(
            (r, r, d_in),
            1.0,
            (&self.a, false, d_in),
            (&self.a, true, d_in),
            0.0,
            &mut ga,
        )?;
        Ok((
            array(r, r, g.download(&gb)?)?,
            array(r, r, g.download(&ga)?)?,
        ))
    }

    fn products(
        &mut self,
        left: &Array2<f64>,
        right: &Array2<f64>,
    ) -> Result<(Mat, Mat), MergeError> {
        let (g, r) = (self.gpu, self.r);
        let k = left.ncols();
        let standard = |m: &Array2<f64>| m.as_standard_layout().iter().copied().collect::<Vec<_>>();
        let _held = g.lock();
        let left_dev = g.upload(&standard(left))?;
        let right_dev = g.upload(&standard(right))?;
        let mut b = g.zeros::<f64>(self.d_out * k)?;
        g.gemm(
            (self.d_out, k, r),
            1.0,
            (&self.b, false, r),
            (&left_dev, false, k),
            0.0,
            &mut b,
        )?;
        let mut a = g.zeros::<f64>(k * self.d_in)?;
        let d_in = self.d_in;
        g.gemm(
            (k, d_in, r),
            1.0,
            (&right_dev, false, r),
            (&self.a, false, d_in),
            0.0,
            &mut a,
        )?;
        let f32s = |v: Vec<f64>| v.into_iter().map(|x| x as f32).collect::<Vec<_>>();
        Ok((
            Mat::new(self.d_out, k, f32s(g.download(&b)?)),
            Mat::new(k, self.d_in, f32s(g.download(&a)?)),
        ))
    }
}
