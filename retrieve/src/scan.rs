//! The inner loops of a search: int8 and f32 dot products of one query against many rows.
//!
//! The int8 loop is written plainly and compiled twice: as is, and with AVX2 enabled, where LLVM
//! turns it into widening multiply-adds (`vpmaddwd`) 16 lanes at a time. Which one runs is decided
//! once per call from the CPU's features.

/// Symmetric int8 codes of a vector and the scale that turns code dot products back into floats:
/// `x ≈ scale · code`.
pub fn quantize(vector: &[f32], codes: &mut Vec<i8>) -> f32 {
    let max = vector.iter().fold(0f32, |m, x| m.max(x.abs()));
    let scale = if max > 0.0 { max / 127.0 } else { 1.0 };
    codes.extend(
        vector
            .iter()
            .map(|x| (x / scale).round().clamp(-127.0, 127.0) as i8),
    );
    scale
}

/// `out[i] = query · rows[i]` in exact integer arithmetic; `rows` holds `out.len()` rows.
pub fn dots_i8(query: &[i8], rows: &[i8], out: &mut [i32]) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        #[allow(unsafe_code)]
        // SAFETY: the only requirement of `dots_i8_avx2` is a CPU with AVX2, checked just above.
        unsafe {
            dots_i8_avx2(query, rows, out)
        };
        return;
    }
    dots_i8_plain(query, rows, out);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn dots_i8_avx2(query: &[i8], rows: &[i8], out: &mut [i32]) {
    dots_i8_plain(query, rows, out);
}

#[inline(always)]
fn dots_i8_plain(query: &[i8], rows: &[i8], out: &mut [i32]) {
    let dim = query.len();
    for (row, o) in rows.chunks_exact(dim).zip(out.iter_mut()) {
        *o = row
            .iter()
            .zip(query)
            .map(|(&a, &b)| i32::from(i16::from(a) * i16::from(b)))
            .sum();
    }
}

/// `query · row` in f32 with eight independent partial sums (vectorises without fast-math).
pub fn dot_f32(query: &[f32], row: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let mut q = query.chunks_exact(8);
    let mut r = row.chunks_exact(8);
    for (a, b) in (&mut q).zip(&mut r) {
        for i in 0..8 {
            acc[i] += a[i] * b[i];
        }
    }
    let tail: f32 = q
        .remainder()
        .iter()
        .zip(r.remainder())
        .map(|(a, b)| a * b)
        .sum();
    acc.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn int8_dots_are_exact_and_match_the_plain_loop() {
        let dim = 384;
        let query: Vec<i8> = (0..dim)
            .map(|i| ((i * 37 % 255) as i32 - 127) as i8)
            .collect();
        let rows: Vec<i8> = (0..dim * 5)
            .map(|i| ((i * 91 % 255) as i32 - 127) as i8)
            .collect();
        let mut fast = vec![0; 5];
        dots_i8(&query, &rows, &mut fast);
        let mut plain = vec![0; 5];
        dots_i8_plain(&query, &rows, &mut plain);
        let expected: Vec<i32> = rows
            .chunks(dim)
            .map(|r| {
                r.iter()
                    .zip(&query)
                    .map(|(&a, &b)| a as i32 * b as i32)
                    .sum()
            })
            .collect();
        assert_eq!(fast, expected);
        assert_eq!(plain, expected);
        // The extremes: 384 · 127 · 127 fits an i32 many times over.
        let max = vec![127i8; dim];
        let mut out = [0];
        dots_i8(&max, &max, &mut out);
        assert_eq!(out[0], 384 * 127 * 127);
    }

    #[test]
    fn quantization_error_is_within_half_a_step() {
        let v: Vec<f32> = (0..384).map(|i| ((i as f32) * 0.37).sin() * 0.2).collect();
        let mut codes = Vec::new();
        let scale = quantize(&v, &mut codes);
        for (x, c) in v.iter().zip(&codes) {
            assert!((x - scale * *c as f32).abs() <= scale / 2.0 + 1e-7);
        }
        let mut zero = Vec::new();
        assert_eq!(quantize(&[0.0; 4], &mut zero), 1.0);
        assert_eq!(zero, vec![0; 4]);
    }

    #[test]
    fn f32_dot_matches_the_naive_sum() {
        let a: Vec<f32> = (0..387).map(|i| (i as f32 * 0.1).cos()).collect();
        let b: Vec<f32> = (0..387).map(|i| (i as f32 * 0.3).sin()).collect();
        let naive: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
        assert!((dot_f32(&a, &b) as f64 - naive).abs() < 1e-4);
    }
}
