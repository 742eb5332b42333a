//! Rank-r products `scale · b · a` (`b` rows × r, `a` r × d_in, row-major) in register tiles,
//! for the passes that recompute an input's ΔW from its factors wherever they need it.
//!
//! A rank-r product is r multiply-adds an entry. An sgemm with so small an inner size spends
//! more on packing its operands and on reading back and rewriting its output than on the
//! arithmetic; here a tile of [`TILE_ROWS`] × [`TILE_COLS`] entries accumulates in registers and
//! goes straight to its consumer (a store, a threshold scan, a combination), so a pass need not
//! write ΔW to memory at all.
//!
//! Every entry is `scale · (…(b₀a₀ + b₁a₁) + …)`, one fused multiply-add per k in order from
//! k = 0: the same bits whatever the tiling, the block, the thread count or the CPU. On an x86-64
//! without FMA, `mul_add` is a library call: correct, slow.

use std::ops::Range;

/// Rows of a tile.
pub const TILE_ROWS: usize = 4;
/// Columns of a tile: two AVX-512 registers, four AVX2 ones, a row. At most 32: a sink may keep
/// a bit per entry of a piece in a `u32`.
pub const TILE_COLS: usize = 32;
const _: () = assert!(TILE_COLS <= 32);

/// One entry before its scale: `Σₖ b[k]·a[k, c]` with fused multiply-adds in order from k = 0.
#[inline(always)]
pub fn dot(b: &[f32], a: &[f32], d_in: usize, c: usize) -> f32 {
    b.iter()
        .enumerate()
        .fold(0.0f32, |acc, (k, &bk)| bk.mul_add(a[k * d_in + c], acc))
}

/// Rows `r0..r0 + R`, columns `c0..c0 + TILE_COLS` of `b · a` (unscaled).
#[inline(always)]
fn tile<const R: usize>(
    b: &[f32],
    r: usize,
    a: &[f32],
    d_in: usize,
    r0: usize,
    c0: usize,
) -> [[f32; TILE_COLS]; R] {
    let mut acc = [[0.0f32; TILE_COLS]; R];
    for k in 0..r {
        let at = k * d_in + c0;
        let ak: &[f32; TILE_COLS] = a[at..at + TILE_COLS]
            .try_into()
            .unwrap_or(&[0.0; TILE_COLS]);
        for (i, row) in acc.iter_mut().enumerate() {
            let bik = b[(r0 + i) * r + k];
            for (x, &y) in row.iter_mut().zip(ak) {
                *x = bik.mul_add(y, *x);
            }
        }
    }
    acc
}

/// Rows `r0..r0 + R` of `scale · b · a` over the columns `cols`, handed to `sink` a row's piece
/// at a time: (row, first column, at most [`TILE_COLS`] values).
#[inline(always)]
fn group<const R: usize>(
    scale: f32,
    (b, r): (&[f32], usize),
    (a, d_in): (&[f32], usize),
    r0: usize,
    cols: &Range<usize>,
    sink: &mut impl FnMut(usize, usize, &[f32]),
) {
    let mut c0 = cols.start;
    while c0 + TILE_COLS <= cols.end {
        let acc = tile::<R>(b, r, a, d_in, r0, c0);
        // Scaled into a tile of its own: the accumulators never leave the registers (handing
        // the sink a view of them kept them in memory, one scalar multiply-add at a time).
        let mut t = [[0.0f32; TILE_COLS]; R];
        for (t, acc) in t.iter_mut().zip(&acc) {
            for (t, &x) in t.iter_mut().zip(acc) {
                *t = scale * x;
            }
        }
        for (i, row) in t.iter().enumerate() {
            sink(r0 + i, c0, row);
        }
        c0 += TILE_COLS;
    }
    if c0 < cols.end {
        // The ragged edge, entry by entry.
        let w = cols.end - c0;
        let mut piece = [0.0f32; TILE_COLS];
        for i in r0..r0 + R {
            for (t, p) in piece[..w].iter_mut().enumerate() {
                *p = scale * dot(&b[i * r..(i + 1) * r], a, d_in, c0 + t);
            }
            sink(i, c0, &piece[..w]);
        }
    }
}

/// Rows `0..rows` (of `b`) × columns `cols` of `scale · b · a`, handed to `sink` a row's piece at
/// a time: (row, first column, at most [`TILE_COLS`] values). Whole groups of [`TILE_ROWS`] rows
/// first, then one row at a time; within a group, tile by tile.
#[inline(always)]
pub fn for_each_piece(
    scale: f32,
    b: (&[f32], usize),
    a: (&[f32], usize),
    rows: usize,
    cols: Range<usize>,
    mut sink: impl FnMut(usize, usize, &[f32]),
) {
    let mut r0 = 0;
    while r0 + TILE_ROWS <= rows {
        group::<TILE_ROWS>(scale, b, a, r0, &cols, &mut sink);
        r0 += TILE_ROWS;
    }
    for row in r0..rows {
        group::<1>(scale, b, a, row, &cols, &mut sink);
    }
}

/// `out` (rows × d_in, as many rows as it holds) = `scale · b · a`.
pub fn rank_product(scale: f32, b: &[f32], r: usize, a: &[f32], d_in: usize, out: &mut [f32]) {
    let rows = out.len() / d_in.max(1);
    rank_panel(scale, (b, r), (a, d_in), rows, 0..d_in, out, d_in);
}

crate::simd::multiversion! {
    /// Rows `0..rows` × columns `cols` of `scale · b · a` into `out`, row i at
    /// `out[i · stride..]` (`cols.len()` entries).
    pub fn rank_panel(
        scale: f32,
        b: (&[f32], usize),
        a: (&[f32], usize),
        rows: usize,
        cols: Range<usize>,
        out: &mut [f32],
        stride: usize,
    ) {
        let c0 = cols.start;
        for_each_piece(scale, b, a, rows, cols, |i, c, v| {
            let at = i * stride + (c - c0);
            out[at..at + v.len()].copy_from_slice(v);
        });
    }
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::*;

    /// Every entry has the bits of its own in-order sum, whatever the shape (whole tiles, ragged
    /// edges, single rows, nothing), and agrees with a float64 product.
    #[test]
    fn products_are_exact_per_entry_sums() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for (rows, d_in, r) in [
            (0, 5, 3),
            (3, 0, 2),
            (1, 1, 1),
            (4, 32, 16),
            (9, 70, 16),
            (13, 96, 5),
            (8, 33, 17),
        ] {
            let b: Vec<f32> = (0..rows * r).map(|_| rng.random_range(-1.0..1.0)).collect();
            let a: Vec<f32> = (0..r * d_in).map(|_| rng.random_range(-1.0..1.0)).collect();
            let mut out = vec![f32::NAN; rows * d_in];
            rank_product(0.75, &b, r, &a, d_in, &mut out);
            for i in 0..rows {
                for c in 0..d_in {
                    let got = out[i * d_in + c];
                    let want = 0.75 * dot(&b[i * r..(i + 1) * r], &a, d_in, c);
                    assert_eq!(
                        got.to_bits(),
                        want.to_bits(),
                        "({rows}, {d_in}, {r}) at ({i}, {c})"
                    );
                    let exact: f64 = (0..r)
                        .map(|k| f64::from(b[i * r + k]) * f64::from(a[k * d_in + c]))
                        .sum::<f64>()
                        * 0.75;
                    assert!((f64::from(got) - exact).abs() <= 1e-5 * (1.0 + exact.abs()));
                }
            }
        }
    }

    /// A panel of columns gives the entries of the whole product, each once.
    #[test]
    fn panels_cover_their_columns_once() {
        let mut rng = ChaCha8Rng::seed_from_u64(8);
        let (rows, d_in, r) = (6, 100, 4);
        let b: Vec<f32> = (0..rows * r).map(|_| rng.random_range(-1.0..1.0)).collect();
        let a: Vec<f32> = (0..r * d_in).map(|_| rng.random_range(-1.0..1.0)).collect();
        let mut whole = vec![0.0; rows * d_in];
        rank_product(1.5, &b, r, &a, d_in, &mut whole);
        let mut seen = vec![0u8; rows * d_in];
        for_each_piece(1.5, (&b, r), (&a, d_in), rows, 40..100, |i, c0, v| {
            for (t, &x) in v.iter().enumerate() {
                assert_eq!(x.to_bits(), whole[i * d_in + c0 + t].to_bits());
                seen[i * d_in + c0 + t] += 1;
            }
        });
        for i in 0..rows {
            for c in 0..d_in {
                assert_eq!(seen[i * d_in + c], u8::from(c >= 40), "({i}, {c})");
            }
        }
    }
}
