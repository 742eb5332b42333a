//! The dense family on the GPU: the same arithmetic as `host::combine` and
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
use crate::context::{ModuleContext, Present, Truncation};
use crate::error::MergeError;
use crate::linalg::{self, POWER_ITERS, Truncated};
use crate::mat::Mat;
use crate::sparsify::{self, Pruner, Threshold};
use crate::spec::{Compat, MajoritySign, Pruning};

/// Combines the inputs' dense deltas per `ctx.spec` (`sources[j] = (weight, input index)`, one
/// per entry of `inputs`) and truncates the result.
///
/// The device is held only for the passes over dense tensors: the inputs are packed and the
/// sketch drawn before, and the small SVD and the final thin products run on the host after,
/// while another module has the device.
pub fn merge_dense(
    gpu: &Gpu,
    ctx: &ModuleContext<'_>,
    inputs: &[Present],
    sources: &[(f64, usize)],
    tag: &str,
    truncation: Truncation,
) -> Result<Truncated, MergeError> {
    let staged = Staged::new(ctx, inputs)?;
    let (m, n) = (staged.d_out, staged.d_in);
    match truncation {
        Truncation::Exact(k) => {
            let host = {
                let _held = gpu.lock();
                let delta = combine(gpu, ctx, &staged, sources, tag)?;
                Mat::new(m, n, gpu.download(&delta)?)
            };
            linalg::exact_truncate(&host, k)
        }
        Truncation::Randomized(k, seed) => {
            let omega = linalg::sketch(m, n, k, seed);
            let range = {
                let _held = gpu.lock();
                let delta = combine(gpu, ctx, &staged, sources, tag)?;
                // Six products each read the m×n result once.
                let pass = gpu.pass("rsvd", 6.0 * 4.0 * (m * n) as f64)?;
                let range = range_finder(gpu, &delta, m, n, &omega)?;
                gpu.end(pass)?;
                range
            };
            linalg::finish_randomized(&range.q, &range.small, range.energy_total, k)
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
    let staged = Staged::new(ctx, inputs)?;
    let _held = gpu.lock();
    let delta = combine(gpu, ctx, &staged, sources, tag)?;
    Ok(Mat::new(staged.d_out, staged.d_in, gpu.download(&delta)?))
}

/// One module's factors packed on the host into one buffer (input j: Bⱼ then Aⱼ), so they go to
/// the device in one copy.
struct Staged {
    data: Vec<f32>,
    /// Per input: offset of Bⱼ in `data`, rank rⱼ, scale sⱼ (Aⱼ follows Bⱼ).
    parts: Vec<(usize, usize, f32)>,
    d_out: usize,
    d_in: usize,
}

impl Staged {
    fn new(ctx: &ModuleContext<'_>, inputs: &[Present]) -> Result<Self, MergeError> {
        let first = &inputs
            .first()
            .ok_or_else(|| MergeError::numeric(ctx.path, "no inputs"))?
            .module;
        let (d_out, d_in) = (first.b.rows, first.a.cols);
        let total = inputs
            .iter()
            .map(|p| p.module.b.data.len() + p.module.a.data.len())
            .sum();
        let mut data = Vec::with_capacity(total);
        let mut parts = Vec::with_capacity(inputs.len());
        for p in inputs {
            let m = &p.module;
            if (m.b.rows, m.a.cols) != (d_out, d_in) || m.b.cols != m.a.rows {
                return Err(MergeError::numeric(ctx.path, "inputs of different shapes"));
            }
            parts.push((data.len(), m.b.cols, m.scale));
            data.extend_from_slice(&m.b.data);
            data.extend_from_slice(&m.a.data);
        }
        Ok(Self {
            data,
            parts,
            d_out,
            d_in,
        })
    }
}

/// Steps 1–3: the combined delta on the device (the caller holds the lock).
fn combine(
    gpu: &Gpu,
    ctx: &ModuleContext<'_>,
    staged: &Staged,
    sources: &[(f64, usize)],
    tag: &str,
) -> Result<CudaSlice<f32>, MergeError> {
    let (d_out, d_in) = (staged.d_out, staged.d_in);
    let len = d_out * d_in;
    let n = staged.parts.len();
    let f = 4.0 * len as f64;
    // 1. Dense deltas.
    // Every tensor's slice is written whole by its product (beta = 0).
    let mut x = gpu.for_overwrite(n * len)?;
    let pass = gpu.pass("deltas", n as f64 * f)?;
    let factors = gpu.upload(&staged.data)?;
    for (j, &(at, r, scale)) in staged.parts.iter().enumerate() {
        let b = factors.slice(at..at + d_out * r);
        let a = factors.slice(at + d_out * r..at + (d_out + d_in) * r);
        let mut out = x.slice_mut(j * len..(j + 1) * len);
        gpu.gemm(
            (d_out, d_in, r),
            scale,
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
    Ok(delta)
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
    /// Threads of `radix_select`'s block (it assumes 256: 8 bins per thread).
    const SELECT_THREADS: u32 = 256;
    let mut counts = gpu.zeros::<u64>(n * BINS)?;
    let mut prefix = gpu.zeros::<u32>(n)?;
    let mut need = gpu.upload(&vec![k; n])?;
    let mut equal = gpu.zeros::<u64>(n)?;
    let len64 = len as u64;
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
            .arg(&mut prefix)
            .arg(&mut need)
            .arg(&mut equal);
        let cfg = cudarc::driver::LaunchConfig {
            grid_dim: (n as u32, 1, 1),
            block_dim: (SELECT_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: one block per input j < n over arrays of n (and n·BINS) entries.
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

/// What the host needs to finish a randomized SVD ([`linalg::finish_randomized`]).
struct Range {
    /// Orthonormal basis of Δ's range, m×l.
    q: Array2<f64>,
    /// Qᵀ·Δ, l×n.
    small: Array2<f64>,
    /// ‖Δ‖²_F.
    energy_total: f64,
}

/// The device part of [`linalg::randomized_truncate`] on an m×n device matrix: the same sketch Ω
/// (drawn by the caller), power iterations and products, by cuBLAS.
fn range_finder(
    gpu: &Gpu,
    delta: &CudaSlice<f32>,
    m: usize,
    n: usize,
    omega: &Mat,
) -> Result<Range, MergeError> {
    let l = omega.cols;
    let omega = gpu.upload(&omega.data)?;
    // Y = Δ·Ω, then Q = orth(Y).
    let mut y = gpu.for_overwrite(m * l)?;
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
        let mut z = gpu.for_overwrite(n * lq)?;
        gpu.gemm(
            (n, lq, m),
            1.0,
            (delta, true, n),
            (&q, false, lq),
            0.0,
            &mut z,
        )?;
        let (z, lz) = orthonormalize(gpu, &z, n, lq)?;
        let mut y = gpu.for_overwrite(m * lz)?;
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
    // Small = Qᵀ·Δ (lq×n), computed as (Δᵀ·Q)ᵀ.
    let mut x = gpu.for_overwrite(n * lq)?;
    gpu.gemm(
        (n, lq, m),
        1.0,
        (delta, true, n),
        (&q, false, lq),
        0.0,
        &mut x,
    )?;
    let x = gpu.download(&x)?;
    let q = gpu.download(&q)?;
    Ok(Range {
        q: Array2::from_shape_fn((m, lq), |(i, j)| f64::from(q[i * lq + j])),
        small: Array2::from_shape_fn((lq, n), |(i, j)| f64::from(x[j * lq + i])),
        energy_total: gpu.sum_squares(delta)?,
    })
}
