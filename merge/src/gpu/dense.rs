//! The dense family on the GPU: the same arithmetic as `methods::combine` and
//! `linalg::randomized_truncate`, with every pass over a dense tensor on the device.
//!
//! Passes over one module (n inputs of len = d_out·d_in entries each):
//! 1. ΔWᵢ = sᵢ·Bᵢ·Aᵢ for every input by cuBLAS, into one buffer of n·len;
//! 2. magnitude pruning: exact k-th largest |x| of every input at once by a radix select (three
//!    histogram passes of 11/10/10 bits, bucket choice on the device); DARE: masks in place from
//!    the CPU's ChaCha8 stream;
//! 3. one fused pass: pruning, then the weighted sum or sign election and disjoint mean;
//! 4. truncation: a randomized SVD whose large products are cuBLAS calls on the result, with the
//!    orthonormalisations as two rounds of Cholesky-QR in f64 (Gram on the device, its l×l
//!    eigendecomposition on the host), or a dense SVD on the host for small matrices.

use cudarc::driver::{CudaSlice, PushKernelArg};
use ndarray::Array2;

use super::{Gpu, gpu_err};
use crate::error::MergeError;
use crate::linalg::{self, POWER_ITERS, Truncated};
use crate::mat::Mat;
use crate::methods::{ModuleContext, Present};
use crate::sparsify::{self, Pruner, Threshold};
use crate::spec::{Compat, MajoritySign, Pruning};

/// How the dense result is truncated.
pub enum Truncation {
    /// A full SVD on the host (small matrices).
    Exact(usize),
    /// A randomized SVD to this rank with this sketch seed.
    Randomized(usize, u64),
}

/// Combines the inputs' dense deltas per `ctx.spec` (`sources[j] = (weight, input index)`, one
/// per entry of `inputs`) and truncates the result.
pub fn merge_dense(
    gpu: &Gpu,
    ctx: &ModuleContext<'_>,
    inputs: &[Present],
    sources: &[(f64, usize)],
    tag: &str,
    truncation: Truncation,
) -> Result<Truncated, MergeError> {
    let _held = gpu.lock();
    let (delta, d_out, d_in) = combine(gpu, ctx, inputs, sources, tag)?;
    match truncation {
        Truncation::Exact(k) => {
            let host = Mat::new(d_out, d_in, gpu.download(&delta)?);
            linalg::exact_truncate(&host, k)
        }
        Truncation::Randomized(k, seed) => {
            // Six products each read the m×n result once.
            let pass = gpu.pass("rsvd", 6.0 * 4.0 * (d_out * d_in) as f64)?;
            let t = randomized(gpu, &delta, d_out, d_in, k, seed);
            gpu.end(pass)?;
            t
        }
    }
}

/// The combined dense delta, untruncated, back on the host.
pub fn combined(
    gpu: &Gpu,
    ctx: &ModuleContext<'_>,
    inputs: &[Present],
    sources: &[(f64, usize)],
    tag: &str,
) -> Result<Mat, MergeError> {
    let _held = gpu.lock();
    let (delta, d_out, d_in) = combine(gpu, ctx, inputs, sources, tag)?;
    Ok(Mat::new(d_out, d_in, gpu.download(&delta)?))
}

/// Steps 1–3: the combined delta on the device and its shape (the caller holds the lock).
fn combine(
    gpu: &Gpu,
    ctx: &ModuleContext<'_>,
    inputs: &[Present],
    sources: &[(f64, usize)],
    tag: &str,
) -> Result<(CudaSlice<f32>, usize, usize), MergeError> {
    let first = &inputs
        .first()
        .ok_or_else(|| MergeError::numeric(ctx.path, "no inputs"))?
        .module;
    let (d_out, d_in) = (first.b.rows, first.a.cols);
    let len = d_out * d_in;
    let n = inputs.len();
    let f = 4.0 * len as f64;
    // 1. Dense deltas.
    // Every tensor's slice is written whole by its product (beta = 0).
    let mut x = gpu.for_overwrite(n * len)?;
    let pass = gpu.pass("deltas", n as f64 * f)?;
    for (j, p) in inputs.iter().enumerate() {
        let m = &p.module;
        if (m.b.rows, m.a.cols) != (d_out, d_in) {
            return Err(MergeError::numeric(ctx.path, "inputs of different shapes"));
        }
        let b = gpu.upload(&m.b.data)?;
        let a = gpu.upload(&m.a.data)?;
        let r = m.b.cols;
        let mut out = x.slice_mut(j * len..(j + 1) * len);
        gpu.gemm(
            (d_out, d_in, r),
            m.scale,
            (&b, false, r),
            (&a, false, d_in),
            0.0,
            &mut out,
        )?;
    }
    gpu.end(pass)?;
    // 2. Pruning.
    let spec = ctx.spec;
    let peft = spec.compat == Compat::Peft;
    let density = spec.effective_density();
    let seed = |j: usize| sparsify::derive_seed(spec.seed, ctx.path, sources[j].1, tag);
    let mut keep_at = vec![f32::NAN; n];
    let mut zero = vec![0i32; n];
    match spec.method.pruning() {
        Pruning::None => {}
        Pruning::Random => {
            let pass = gpu.pass("dare masks", 2.0 * n as f64 * f)?;
            let seeds: Vec<u64> = (0..n).map(seed).collect();
            dare_masks(gpu, &mut x, len, density, &seeds)?;
            gpu.end(pass)?;
        }
        Pruning::Magnitude => {
            let pass = gpu.pass("top-k select", 3.0 * n as f64 * f)?;
            let thresholds = match ctx.global_thresholds {
                Some(global) => sources.iter().map(|&(_, i)| global[i]).collect(),
                None => thresholds(gpu, &x, n, len, (density * len as f64).floor() as u64)?,
            };
            gpu.end(pass)?;
            for (j, t) in thresholds.iter().enumerate() {
                if t.none {
                    zero[j] = 1;
                } else if !peft || t.ties >= t.equal {
                    keep_at[j] = t.value;
                } else {
                    // Exactly k with surplus ties at the threshold: the ties are kept in index
                    // order, a sequential rule; rare (equal magnitudes), done on the host.
                    let mut view = x.slice_mut(j * len..(j + 1) * len);
                    let mut host = gpu.stream.clone_dtoh(&view).map_err(gpu_err("copy"))?;
                    Pruner::new(Pruning::Magnitude, *t, true, density, seed(j)).apply(&mut host);
                    gpu.stream
                        .memcpy_htod(&host, &mut view)
                        .map_err(gpu_err("copy"))?;
                }
            }
        }
    }
    // 3. The fused combination.
    let w: Vec<f32> = sources.iter().map(|&(w, _)| w as f32).collect();
    let vw: Vec<f32> = w.iter().map(|&w| if peft { 1.0 } else { w }).collect();
    let dw: Vec<f32> = w
        .iter()
        .map(|&w| if peft { 1.0 } else { w.abs() })
        .collect();
    let (keep_at, zero, w, vw, dw) = (
        gpu.upload(&keep_at)?,
        gpu.upload(&zero)?,
        gpu.upload(&w)?,
        gpu.upload(&vw)?,
        gpu.upload(&dw)?,
    );
    let consensus = i32::from(spec.method.consensus());
    let frequency = i32::from(spec.majority_sign == MajoritySign::Frequency);
    let lambda = spec.lambda.unwrap_or(1.0) as f32;
    let min_den: f32 = if peft { 1.0 } else { 0.0 };
    // The kernel stores every entry.
    let mut delta = gpu.for_overwrite(len)?;
    let (len64, n32) = (len as u64, n as i32);
    let reads = if consensus == 1 { 2.0 } else { 1.0 };
    let pass = gpu.pass("combine", (reads * n as f64 + 1.0) * f)?;
    let mut b = gpu.stream.launch_builder(&gpu.k.combine);
    b.arg(&x)
        .arg(&len64)
        .arg(&n32)
        .arg(&keep_at)
        .arg(&zero)
        .arg(&w)
        .arg(&vw)
        .arg(&dw);
    b.arg(&consensus)
        .arg(&frequency)
        .arg(&lambda)
        .arg(&min_den)
        .arg(&mut delta);
    // SAFETY: `x` holds n·len floats, the per-input arrays n entries, `delta` len.
    unsafe { b.launch(gpu.grid(len, 1)) }.map_err(gpu_err("combine"))?;
    gpu.end(pass)?;
    Ok((delta, d_out, d_in))
}

/// The exact k-th largest |x| of each of the n tensors (0 < k < len), as the CPU's
/// [`sparsify::threshold_of`] reports it.
fn thresholds(
    gpu: &Gpu,
    x: &CudaSlice<f32>,
    n: usize,
    len: usize,
    k: u64,
) -> Result<Vec<Threshold>, MergeError> {
    if k == 0 || k >= len as u64 {
        // Nothing kept, or everything: what the CPU's `threshold_of` reports for these.
        return Ok(vec![sparsify::threshold_of(&[], k.min(1) * u64::MAX); n]);
    }
    const BINS: usize = 2048;
    let mut counts = gpu.zeros::<u64>(n * BINS)?;
    let mut prefix = gpu.zeros::<u32>(n)?;
    let mut need = gpu.upload(&vec![k; n])?;
    let mut equal = gpu.zeros::<u64>(n)?;
    let len64 = len as u64;
    let n32 = n as i32;
    for pass in 0..3i32 {
        let mut b = gpu.stream.launch_builder(&gpu.k.radix_hist);
        b.arg(x)
            .arg(&len64)
            .arg(&pass)
            .arg(&prefix)
            .arg(&mut counts);
        // SAFETY: reads n·len floats of `x` (blockIdx.y < n), n prefixes, adds into n·BINS counts.
        unsafe { b.launch(gpu.grid(len, n)) }.map_err(gpu_err("radix histogram"))?;
        let mut b = gpu.stream.launch_builder(&gpu.k.radix_select);
        b.arg(&mut counts)
            .arg(&pass)
            .arg(&n32)
            .arg(&mut prefix)
            .arg(&mut need)
            .arg(&mut equal);
        let cfg = cudarc::driver::LaunchConfig::for_num_elems(n as u32);
        // SAFETY: one thread per input j < n over arrays of n (and n·BINS) entries.
        unsafe { b.launch(cfg) }.map_err(gpu_err("radix select"))?;
    }
    let (prefix, need, equal) = (
        gpu.download(&prefix)?,
        gpu.download(&need)?,
        gpu.download(&equal)?,
    );
    Ok((0..n)
        .map(|j| Threshold {
            value: f32::from_bits(prefix[j]),
            ties: need[j],
            equal: equal[j],
            none: false,
        })
        .collect())
}

/// Applies DARE's masks in place: tensor j keeps entry e when word e of the ChaCha8 stream of
/// `seeds[j]` is below density·2³², as [`Pruner::apply`] draws them.
fn dare_masks(
    gpu: &Gpu,
    x: &mut CudaSlice<f32>,
    len: usize,
    density: f64,
    seeds: &[u64],
) -> Result<(), MergeError> {
    let n = seeds.len();
    let keys: Vec<u32> = seeds
        .iter()
        .flat_map(|&s| sparsify::chacha8_key(s))
        .collect();
    let cut = (density * 4_294_967_296.0).min(4_294_967_295.0) as u32;
    let inv = (1.0 / density) as f32;
    let keep_all = i32::from(density >= 1.0);
    let (keys, cut, inv, keep_all) = (
        gpu.upload(&keys)?,
        gpu.upload(&vec![cut; n])?,
        gpu.upload(&vec![inv; n])?,
        gpu.upload(&vec![keep_all; n])?,
    );
    let len64 = len as u64;
    let mut b = gpu.stream.launch_builder(&gpu.k.dare_mask);
    b.arg(&mut *x)
        .arg(&len64)
        .arg(&keys)
        .arg(&cut)
        .arg(&inv)
        .arg(&keep_all);
    // SAFETY: blockIdx.y < n; tensor j's len entries lie inside `x` (n·len), keys n·8 words.
    unsafe { b.launch(gpu.grid(len.div_ceil(16), n)) }.map_err(gpu_err("DARE masks"))?;
    Ok(())
}

/// Orthonormal columns spanning those of `y` (rows×cols, f32): Cholesky-QR twice in f64 (the
/// Gram matrix on the device, its eigendecomposition on the host). Directions below f32
/// precision are dropped, so the result may have fewer columns.
fn orthonormalize(
    gpu: &Gpu,
    y: &CudaSlice<f32>,
    rows: usize,
    cols: usize,
) -> Result<(CudaSlice<f32>, usize), MergeError> {
    let mut q = gpu.widen(y)?;
    let mut cols = cols;
    for _ in 0..2 {
        let mut gram = gpu.zeros::<f64>(cols * cols)?;
        gpu.gemm(
            (cols, cols, rows),
            1.0,
            (&q, true, cols),
            (&q, false, cols),
            0.0,
            &mut gram,
        )?;
        let gram = Array2::from_shape_vec((cols, cols), gpu.download(&gram)?)
            .map_err(|e| MergeError::numeric("GPU Gram matrix", e))?;
        let (scaled, _) = linalg::basis_from_gram(&gram)?;
        let kept = scaled.ncols();
        let scaled = gpu.upload(&scaled.iter().copied().collect::<Vec<_>>())?;
        let mut next = gpu.zeros::<f64>(rows * kept)?;
        gpu.gemm(
            (rows, kept, cols),
            1.0,
            (&q, false, cols),
            (&scaled, false, kept),
            0.0,
            &mut next,
        )?;
        q = next;
        cols = kept;
    }
    Ok((gpu.narrow(&q)?, cols))
}

/// [`linalg::randomized_truncate`] on a device matrix (m×n): the same sketch, power iterations
/// and split, with the products by cuBLAS.
fn randomized(
    gpu: &Gpu,
    delta: &CudaSlice<f32>,
    m: usize,
    n: usize,
    k: usize,
    seed: u64,
) -> Result<Truncated, MergeError> {
    let omega = linalg::sketch(m, n, k, seed);
    let l = omega.cols;
    let omega = gpu.upload(&omega.data)?;
    // Y = Δ·Ω, then Q = orth(Y).
    let mut y = gpu.zeros::<f32>(m * l)?;
    gpu.gemm(
        (m, l, n),
        1.0,
        (delta, false, n),
        (&omega, false, l),
        0.0,
        &mut y,
    )?;
    let (mut q, mut lq) = orthonormalize(gpu, &y, m, l)?;
    for _ in 0..POWER_ITERS {
        let mut z = gpu.zeros::<f32>(n * lq)?;
        gpu.gemm(
            (n, lq, m),
            1.0,
            (delta, true, n),
            (&q, false, lq),
            0.0,
            &mut z,
        )?;
        let (z, lz) = orthonormalize(gpu, &z, n, lq)?;
        let mut y = gpu.zeros::<f32>(m * lz)?;
        gpu.gemm(
            (m, lz, n),
            1.0,
            (delta, false, n),
            (&z, false, lz),
            0.0,
            &mut y,
        )?;
        (q, lq) = orthonormalize(gpu, &y, m, lz)?;
    }
    // Small = Qᵀ·Δ (lq×n), computed as (Δᵀ·Q)ᵀ and decomposed on the host.
    let mut x = gpu.zeros::<f32>(n * lq)?;
    gpu.gemm(
        (n, lq, m),
        1.0,
        (delta, true, n),
        (&q, false, lq),
        0.0,
        &mut x,
    )?;
    let x = gpu.download(&x)?;
    let small = Array2::from_shape_fn((lq, n), |(i, j)| f64::from(x[j * lq + i]));
    let (ub, sv, vt) = linalg::svd(&small)?;
    let k = k.min(sv.len());
    let energy_total = gpu.sum_squares(delta)?;
    let energy_kept: f64 = sv[..k].iter().map(|x| x * x).sum();
    // B = Q·U_k·√Σ on the device; A = √Σ·V_kᵀ on the host.
    let (left, a) = linalg::split(&ub, &sv, &vt, k);
    let left_dev = gpu.upload(&left.data)?;
    let mut b = gpu.zeros::<f32>(m * k)?;
    gpu.gemm(
        (m, k, lq),
        1.0,
        (&q, false, lq),
        (&left_dev, false, k),
        0.0,
        &mut b,
    )?;
    let b = Mat::new(m, k, gpu.download(&b)?);
    Ok(Truncated {
        b,
        a,
        energy_total,
        energy_kept,
        route: "randomized",
    })
}
