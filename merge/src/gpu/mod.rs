//! The engine's GPU paths (feature `cuda`; without it, `stand_in.rs` takes this module's place):
//! cuBLAS products and Quiver's own kernels (`kernels.cu`, compiled to PTX at build time) on the
//! stream of candle's CUDA device.
//!
//! What runs here, chosen by `--device cuda` ([`Gpu`] is a [`Backend`]):
//! * [`dense`]: the dense family (TIES, DARE, magnitude pruning and their PEFT `_svd` variants):
//!   ΔWᵢ = sᵢBᵢAᵢ by cuBLAS, exact top-k thresholds by a three-pass radix select, DARE masks from
//!   the same ChaCha8 stream as the CPU, sign election and the disjoint mean in one fused pass,
//!   then a randomized SVD whose products stay on the device;
//! * [`factored`]: the factored route's Gram matrices and final products in f64 (cuBLAS dgemm).
//!
//! The host keeps the small decompositions (eigendecompositions and SVDs of matrices of the size
//! of the sketch or of the stacked rank), in f64 with LAPACK, shared with the CPU path.
//!
//! One module at a time holds the device ([`Gpu::lock`]): device memory is bounded by the largest
//! module's working set (n + 2 dense tensors of it), while other threads read and convert the
//! next modules' inputs.

// cuBLAS calls and kernel launches are `unsafe` in cudarc: every one of them is in this module
// tree, after the shape checks that make it sound (see each SAFETY comment).
#![allow(unsafe_code)]

pub mod dense;
pub mod factored;
pub mod profile;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use candle_core::Device;
use cudarc::cublas::{CudaBlas, Gemm, GemmConfig, sys::cublasOperation_t};
use cudarc::driver::{
    CudaFunction, CudaSlice, CudaStream, DevicePtr, DevicePtrMut, DeviceRepr, LaunchConfig,
    PushKernelArg, ValidAsZeroBits,
};
use cudarc::nvrtc::Ptx;

use crate::context::{Backend, ModuleContext, Present, Truncation};
use crate::error::MergeError;
use crate::linalg::{FactorProducts, Truncated};
use crate::mat::Mat;

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/kernels.ptx"));

/// Threads per block of the element-wise kernels.
const THREADS: u32 = 256;

/// The kernels of `kernels.cu`.
pub(crate) struct Kernels {
    pub radix_hist: CudaFunction,
    pub radix_select: CudaFunction,
    pub dare_mask: CudaFunction,
    pub combine: CudaFunction,
    pub sum_squares: CudaFunction,
    pub widen: CudaFunction,
    pub narrow: CudaFunction,
}

/// One GPU: candle's stream and cuBLAS handle, the loaded kernels, the module lock.
pub struct Gpu {
    pub(crate) stream: Arc<CudaStream>,
    pub(crate) blas: Arc<CudaBlas>,
    pub(crate) k: Kernels,
    lock: Mutex<()>,
    /// Streaming multiprocessors, to size grid-stride launches.
    sms: u32,
    pub name: String,
    /// The device's CUDA ordinal.
    pub ordinal: usize,
}

pub(crate) fn gpu_err(
    context: &str,
) -> impl FnOnce(cudarc::driver::DriverError) -> MergeError + '_ {
    move |e| MergeError::Device(format!("{context}: {e}"))
}

fn blas_err(e: cudarc::cublas::result::CublasError) -> MergeError {
    MergeError::Device(format!("cuBLAS: {e:?}"))
}

impl Gpu {
    /// The GPU behind a candle device (`None` for the CPU), set up once per device.
    pub fn of(device: &Device) -> Result<Option<Arc<Gpu>>, MergeError> {
        let Device::Cuda(dev) = device else {
            return Ok(None);
        };
        static GPUS: OnceLock<Mutex<HashMap<usize, Arc<Gpu>>>> = OnceLock::new();
        let stream = dev.cuda_stream();
        let ordinal = stream.context().ordinal();
        let mut gpus = GPUS
            .get_or_init(Default::default)
            .lock()
            .map_err(|_| MergeError::Device("GPU table poisoned".into()))?;
        if let Some(g) = gpus.get(&ordinal) {
            return Ok(Some(g.clone()));
        }
        let ctx = stream.context().clone();
        let module = ctx
            .load_module(Ptx::from_src(PTX))
            .map_err(gpu_err("loading Quiver's kernels"))?;
        let f = |name: &str| {
            module
                .load_function(name)
                .map_err(gpu_err("loading a kernel"))
        };
        let k = Kernels {
            radix_hist: f("radix_hist")?,
            radix_select: f("radix_select")?,
            dare_mask: f("dare_mask")?,
            combine: f("combine")?,
            sum_squares: f("sum_squares")?,
            widen: f("widen")?,
            narrow: f("narrow")?,
        };
        let sms = ctx
            .attribute(
                cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
            )
            .map_err(gpu_err("device attributes"))? as u32;
        let gpu = Arc::new(Gpu {
            blas: dev.cublas_handle(),
            stream,
            k,
            lock: Mutex::new(()),
            sms: sms.max(1),
            name: ctx.name().unwrap_or_else(|_| "CUDA device".into()),
            ordinal,
        });
        gpus.insert(ordinal, gpu.clone());
        Ok(Some(gpu))
    }

    /// Holds the device for one module's work.
    pub fn lock(&self) -> MutexGuard<'_, ()> {
        self.lock.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A grid-stride launch over `len` items, `rows` inputs along `y`.
    pub(crate) fn grid(&self, len: usize, rows: usize) -> LaunchConfig {
        let blocks = len
            .div_ceil(THREADS as usize)
            .clamp(1, (self.sms * 8) as usize) as u32;
        LaunchConfig {
            grid_dim: (blocks, rows.max(1) as u32, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        }
    }

    pub fn upload<T: DeviceRepr>(&self, host: &[T]) -> Result<CudaSlice<T>, MergeError> {
        self.stream
            .clone_htod(host)
            .map_err(gpu_err("copy to the GPU"))
    }

    pub fn download<T: DeviceRepr, S: DevicePtr<T>>(&self, dev: &S) -> Result<Vec<T>, MergeError> {
        self.stream
            .clone_dtoh(dev)
            .map_err(gpu_err("copy from the GPU"))
    }

    pub fn zeros<T: DeviceRepr + ValidAsZeroBits>(
        &self,
        len: usize,
    ) -> Result<CudaSlice<T>, MergeError> {
        self.stream
            .alloc_zeros(len.max(1))
            .map_err(gpu_err("GPU allocation"))
    }

    /// A buffer whose every entry the caller writes before reading any (cuBLAS with beta = 0, or a
    /// kernel that stores each entry): skips the memset of [`Gpu::zeros`], a full pass over
    /// memory for the largest buffers of a module.
    pub(crate) fn for_overwrite(&self, len: usize) -> Result<CudaSlice<f32>, MergeError> {
        // SAFETY: f32 has no invalid bit patterns, and the callers write every entry first.
        unsafe { self.stream.alloc::<f32>(len.max(1)) }.map_err(gpu_err("GPU allocation"))
    }

    /// Row-major `c (m×n) = alpha · op(a) · op(b) + beta · c` with `op(a)` m×k, `op(b)` k×n;
    /// `a_cols`/`b_cols` are the stored row lengths of `a` and `b`. Computed as the column-major
    /// product `cᵀ = op(b)ᵀ · op(a)ᵀ`, which reads the row-major buffers as they are.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn gemm<T>(
        &self,
        (m, n, k): (usize, usize, usize),
        alpha: T,
        (a, a_t, a_cols): (&impl DevicePtr<T>, bool, usize),
        (b, b_t, b_cols): (&impl DevicePtr<T>, bool, usize),
        beta: T,
        c: &mut impl DevicePtrMut<T>,
    ) -> Result<(), MergeError>
    where
        CudaBlas: Gemm<T>,
    {
        // Stored shapes implied by op and the product's dims; the buffers must hold them.
        let (a_rows, a_stored_cols) = if a_t { (k, m) } else { (m, k) };
        let (b_rows, b_stored_cols) = if b_t { (n, k) } else { (k, n) };
        let fits = a_stored_cols == a_cols
            && b_stored_cols == b_cols
            && a.len() >= a_rows * a_cols
            && b.len() >= b_rows * b_cols
            && c.len() >= m * n;
        let int = |x: usize| i32::try_from(x).ok();
        let (Some(mi), Some(ni), Some(ki), Some(lda), Some(ldb)) = (
            int(m),
            int(n),
            int(k),
            int(b_cols.max(1)),
            int(a_cols.max(1)),
        ) else {
            return Err(MergeError::Device(format!(
                "product {m}×{k}×{n} too large for cuBLAS"
            )));
        };
        if !fits {
            return Err(MergeError::numeric(
                "GPU product",
                format!("shapes do not fit: {m}×{k} · {k}×{n}"),
            ));
        }
        if m == 0 || n == 0 {
            return Ok(());
        }
        let op = |t: bool| {
            if t {
                cublasOperation_t::CUBLAS_OP_T
            } else {
                cublasOperation_t::CUBLAS_OP_N
            }
        };
        let cfg = GemmConfig {
            transa: op(b_t),
            transb: op(a_t),
            m: ni,
            n: mi,
            k: ki,
            alpha,
            lda,
            ldb,
            beta,
            ldc: ni,
        };
        // SAFETY: the buffers hold at least the stored shapes checked above, and the leading
        // dimensions are the stored row lengths, so cuBLAS reads and writes inside them.
        unsafe { self.blas.gemm(cfg, b, a, c) }.map_err(blas_err)
    }

    /// ‖x‖²_F accumulated in f64 on the device.
    pub(crate) fn sum_squares(&self, x: &CudaSlice<f32>) -> Result<f64, MergeError> {
        let mut out = self.zeros::<f64>(1)?;
        let len = x.len() as u64;
        let mut b = self.stream.launch_builder(&self.k.sum_squares);
        b.arg(x).arg(&len).arg(&mut out);
        // SAFETY: the kernel reads `len` floats of `x` and adds into out[0].
        unsafe { b.launch(self.grid(x.len(), 1)) }.map_err(gpu_err("sum of squares"))?;
        Ok(self.download(&out)?.first().copied().unwrap_or(0.0))
    }

    /// f32 → f64 copy on the device.
    pub(crate) fn widen(&self, x: &CudaSlice<f32>) -> Result<CudaSlice<f64>, MergeError> {
        let mut out = self.zeros::<f64>(x.len())?;
        let len = x.len() as u64;
        let mut b = self.stream.launch_builder(&self.k.widen);
        b.arg(x).arg(&len).arg(&mut out);
        // SAFETY: reads and writes `len` entries of buffers that hold at least that many.
        unsafe { b.launch(self.grid(x.len(), 1)) }.map_err(gpu_err("widen"))?;
        Ok(out)
    }

    /// f64 → f32 copy on the device.
    pub(crate) fn narrow(&self, x: &CudaSlice<f64>) -> Result<CudaSlice<f32>, MergeError> {
        let mut out = self.zeros::<f32>(x.len())?;
        let len = x.len() as u64;
        let mut b = self.stream.launch_builder(&self.k.narrow);
        b.arg(x).arg(&len).arg(&mut out);
        // SAFETY: as in `widen`.
        unsafe { b.launch(self.grid(x.len(), 1)) }.map_err(gpu_err("narrow"))?;
        Ok(out)
    }
}

impl Backend for Gpu {
    fn dense_combined(
        &self,
        ctx: &ModuleContext<'_>,
        inputs: &[Present],
        sources: &[(f64, usize)],
        tag: &str,
    ) -> Result<Mat, MergeError> {
        dense::combined(self, ctx, inputs, sources, tag)
    }

    fn dense_truncated(
        &self,
        ctx: &ModuleContext<'_>,
        inputs: &[Present],
        sources: &[(f64, usize)],
        tag: &str,
        truncation: Truncation,
    ) -> Result<Truncated, MergeError> {
        dense::merge_dense(self, ctx, inputs, sources, tag, truncation)
    }

    fn factor_products<'s>(
        &'s self,
        b: &Mat,
        a: &Mat,
    ) -> Result<Box<dyn FactorProducts + 's>, MergeError> {
        Ok(Box::new(factored::GpuProducts::new(self, b, a)?))
    }
}
