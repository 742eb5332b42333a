// Quiver's merge kernels (compiled to PTX by merge/build.rs with `--fmad=false`, so every float
// operation rounds exactly as the CPU path's does: the GPU and CPU merges then differ only where
// their inputs do — the dense deltas come from cuBLAS on one side and the host GEMM on the other).
//
// Layout: the n task tensors of one module lie back to back in one buffer, tensor j at
// `x + j * len`; per-input parameters are arrays indexed by j (`blockIdx.y` where a launch covers
// all inputs at once).

#include <stdint.h>

typedef unsigned long long u64;
typedef unsigned int u32;

__device__ __forceinline__ u32 abs_bits(float x) { return __float_as_uint(x) & 0x7fffffffu; }

// ---------------------------------------------------------------------------------------------
// Exact k-th largest |x| by radix select over the float bits: three passes of 11, 10 and 10 bits.
// Pass p histograms the entries whose higher bits equal the prefix chosen so far; `radix_select`
// then picks the bucket holding the k-th largest, on the device, so the passes run back to back
// with no host round trip. After the last pass: value bits = prefix, ties = need, equal = count of
// entries with exactly that magnitude (the same figures as the CPU's `KthLargest`).

#define RADIX_BINS 2048

__device__ __forceinline__ void radix_pass_bits(int pass, int *shift, int *width) {
    *shift = pass == 0 ? 20 : (pass == 1 ? 10 : 0);
    *width = pass == 0 ? 11 : 10;
}

extern "C" __global__ void radix_hist(const float *x, u64 len, int pass, const u32 *prefix,
                                      u64 *counts) {
    __shared__ u32 local[RADIX_BINS];
    int j = blockIdx.y;
    const float *xj = x + (u64)j * len;
    int shift, width;
    radix_pass_bits(pass, &shift, &width);
    int top = shift + width;  // bits at and above `top` are already decided
    u32 want = top >= 31 ? 0 : (prefix[j] >> top);
    u32 mask = (1u << width) - 1;
    for (int b = threadIdx.x; b < RADIX_BINS; b += blockDim.x) local[b] = 0;
    __syncthreads();
    u64 stride = (u64)gridDim.x * blockDim.x;
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < len; i += stride) {
        u32 key = abs_bits(xj[i]);
        if (top >= 31 || (key >> top) == want) atomicAdd(&local[(key >> shift) & mask], 1u);
    }
    __syncthreads();
    for (int b = threadIdx.x; b < RADIX_BINS; b += blockDim.x)
        if (local[b]) atomicAdd(&counts[(u64)j * RADIX_BINS + b], (u64)local[b]);
}

// One block of 256 threads per input (blockIdx.x = j): picks the bucket of the need-th largest,
// narrows prefix/need, records how many entries share the bucket, and clears the histogram for
// the next pass. Each thread sums 8 (or 4) adjacent bins; one thread finds the chunk from the top,
// its owner the bin inside it.
#define SELECT_THREADS 256

extern "C" __global__ void radix_select(u64 *counts, int pass, u32 *prefix, u64 *need,
                                        u64 *equal) {
    __shared__ u64 part[SELECT_THREADS];
    __shared__ int chunk;
    __shared__ u64 chunk_above;
    int j = blockIdx.x, t = threadIdx.x;
    int shift, width;
    radix_pass_bits(pass, &shift, &width);
    int per = (1 << width) / SELECT_THREADS;  // 8 or 4
    u64 *c = counts + (u64)j * RADIX_BINS;
    u64 mine[8];
    u64 sum = 0;
    for (int i = 0; i < per; i++) {
        mine[i] = c[t * per + i];
        sum += mine[i];
    }
    part[t] = sum;
    __syncthreads();
    if (t == 0) {
        u64 above = 0;
        chunk = -1;
        for (int q = SELECT_THREADS - 1; q >= 0; q--) {
            if (above + part[q] >= need[j]) {
                chunk = q;
                chunk_above = above;
                break;
            }
            above += part[q];
        }
    }
    __syncthreads();
    if (t == chunk) {
        u64 above = chunk_above;
        for (int i = per - 1; i >= 0; i--) {
            if (above + mine[i] >= need[j]) {
                prefix[j] |= ((u32)(t * per + i)) << shift;
                need[j] -= above;
                equal[j] = mine[i];
                break;
            }
            above += mine[i];
        }
    }
    for (int b = t; b < RADIX_BINS; b += SELECT_THREADS) c[b] = 0;
}

// ---------------------------------------------------------------------------------------------
// DARE masks: ChaCha8 (the block function of rand_chacha's ChaCha8Rng: 64-bit block counter in
// words 12-13, stream 0) evaluated per block of 16 entries, so entry e draws word e % 16 of block
// e / 16 — exactly the e-th `next_u32()` of `ChaCha8Rng::from_seed(key)` on the CPU.

__device__ __forceinline__ u32 rotl(u32 v, int c) { return (v << c) | (v >> (32 - c)); }

#define QR(a, b, c, d)                                                                           \
    a += b; d ^= a; d = rotl(d, 16);                                                           \
    c += d; b ^= c; b = rotl(b, 12);                                                           \
    a += b; d ^= a; d = rotl(d, 8);                                                            \
    c += d; b ^= c; b = rotl(b, 7);

__device__ void chacha8_block(const u32 *key, u64 counter, u32 out[16]) {
    u32 in[16] = {0x61707865u, 0x3320646eu, 0x79622d32u, 0x6b206574u,
                  key[0], key[1], key[2], key[3], key[4], key[5], key[6], key[7],
                  (u32)counter, (u32)(counter >> 32), 0u, 0u};
    u32 s[16];
#pragma unroll
    for (int i = 0; i < 16; i++) s[i] = in[i];
#pragma unroll
    for (int r = 0; r < 4; r++) {
        QR(s[0], s[4], s[8], s[12]) QR(s[1], s[5], s[9], s[13])
        QR(s[2], s[6], s[10], s[14]) QR(s[3], s[7], s[11], s[15])
        QR(s[0], s[5], s[10], s[15]) QR(s[1], s[6], s[11], s[12])
        QR(s[2], s[7], s[8], s[13]) QR(s[3], s[4], s[9], s[14])
    }
#pragma unroll
    for (int i = 0; i < 16; i++) out[i] = s[i] + in[i];
}

// keys: n × 8 words; cut[j]: keep when the word < cut; inv[j] = 1/density; keep_all[j] for
// density ≥ 1 (no draw, values unchanged but still multiplied by inv as on the CPU).
extern "C" __global__ void dare_mask(float *x, u64 len, const u32 *keys, const u32 *cut,
                                     const float *inv, const int *keep_all) {
    int j = blockIdx.y;
    float *xj = x + (u64)j * len;
    u64 blocks = (len + 15) / 16;
    u64 stride = (u64)gridDim.x * blockDim.x;
    for (u64 g = (u64)blockIdx.x * blockDim.x + threadIdx.x; g < blocks; g += stride) {
        u32 w[16];
        chacha8_block(keys + 8 * j, g, w);
#pragma unroll
        for (int t = 0; t < 16; t++) {
            u64 e = g * 16 + t;
            if (e < len) {
                int kept = keep_all[j] || w[t] < cut[j];
                xj[e] *= (kept ? 1.0f : 0.0f) * inv[j];
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The entry-wise combination, one pass over the n tensors (two reads for consensus methods):
// magnitude pruning by the thresholds found above (`keep_at[j]` = keep |x| ≥ it; NAN: nothing to
// prune, the tensor was pruned before), then a weighted sum, or TIES' sign election and disjoint
// mean. Same operation order as `methods::combine`.

__device__ __forceinline__ float sgn(float x) { return (float)(x > 0.0f) - (float)(x < 0.0f); }

__device__ __forceinline__ float pruned(float x, float keep_at, int zero) {
    if (zero) return 0.0f;
    if (isnan(keep_at)) return x;
    return x * (float)(fabsf(x) >= keep_at);
}

extern "C" __global__ void combine(const float *x, u64 len, int n, const float *keep_at,
                                   const int *zero, const float *w, const float *vw,
                                   const float *dw, int consensus, int frequency, float lambda,
                                   float min_den, float *out) {
    u64 stride = (u64)gridDim.x * blockDim.x;
    for (u64 e = (u64)blockIdx.x * blockDim.x + threadIdx.x; e < len; e += stride) {
        float acc = 0.0f;
        if (!consensus) {
            for (int j = 0; j < n; j++) acc += w[j] * pruned(x[(u64)j * len + e], keep_at[j], zero[j]);
            out[e] = acc;
            continue;
        }
        for (int j = 0; j < n; j++) {
            float v = vw[j] * pruned(x[(u64)j * len + e], keep_at[j], zero[j]);
            acc += frequency ? sgn(v) : v;
        }
        float elected = acc >= 0.0f ? 1.0f : -1.0f;
        float num = 0.0f, den = 0.0f;
        for (int j = 0; j < n; j++) {
            float v = pruned(x[(u64)j * len + e], keep_at[j], zero[j]);
            float agree = (float)(sgn(vw[j] * v) == elected);
            num += agree * w[j] * v;
            den += agree * dw[j];
        }
        out[e] = den == 0.0f ? 0.0f : lambda * num / fmaxf(den, min_den);
    }
}

// ---------------------------------------------------------------------------------------------
// Small helpers.

// Σ x² in f64 (one atomic per block).
extern "C" __global__ void sum_squares(const float *x, u64 len, double *out) {
    __shared__ double part[32];
    double s = 0.0;
    u64 stride = (u64)gridDim.x * blockDim.x;
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < len; i += stride) {
        double v = (double)x[i];
        s += v * v;
    }
    for (int o = 16; o > 0; o >>= 1) s += __shfl_down_sync(0xffffffffu, s, o);
    if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = s;
    __syncthreads();
    if (threadIdx.x < 32) {
        s = threadIdx.x < (blockDim.x + 31) / 32 ? part[threadIdx.x] : 0.0;
        for (int o = 16; o > 0; o >>= 1) s += __shfl_down_sync(0xffffffffu, s, o);
        if (threadIdx.x == 0) atomicAdd(out, s);
    }
}

extern "C" __global__ void widen(const float *x, u64 len, double *out) {
    u64 stride = (u64)gridDim.x * blockDim.x;
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < len; i += stride)
        out[i] = (double)x[i];
}

extern "C" __global__ void narrow(const double *x, u64 len, float *out) {
    u64 stride = (u64)gridDim.x * blockDim.x;
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < len; i += stride)
        out[i] = (float)x[i];
}
