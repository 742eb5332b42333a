//! Entry-wise work of TIES, DARE and magnitude pruning: exact top-k thresholds without sorting,
//! seeded random masks, sign election and the disjoint mean.

use sha2::{Digest, Sha256};

use crate::spec::Pruning;

/// `|x|` as bits: for finite floats the order of these integers is the order of `|x|`.
pub fn abs_bits(x: f32) -> u32 {
    x.to_bits() & 0x7fff_ffff
}

/// The k-th largest `|x|` of a stream of values, found exactly with two passes of 2¹⁵- and
/// 2¹⁶-bucket histograms over the float bits (O(n), no sort, no copy).
///
/// Pass 1: [`KthLargest::add`] every value, then [`KthLargest::narrow`]. Pass 2: [`KthLargest::add`]
/// every value again, then [`KthLargest::finish`]. Streaming makes a threshold over a whole model
/// (TIES' global trim) possible without holding it in memory.
#[derive(Clone, Debug)]
pub struct KthLargest {
    k: u64,
    high: Option<u32>,
    need: u64,
    counts: Vec<u64>,
}

/// A magnitude threshold: keep entries with `|x| > value`, and `|x| == value` up to `ties` of them
/// (`u64::MAX` = all ties).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Threshold {
    pub value: f32,
    pub ties: u64,
    /// How many entries have `|x| == value` (when `ties` is smaller, exactly-k pruning must
    /// count them in order).
    pub equal: u64,
    /// Keep nothing (k = 0).
    pub none: bool,
}

impl KthLargest {
    pub fn new(k: u64) -> Self {
        Self {
            k,
            high: None,
            need: 0,
            counts: vec![0; 1 << 15],
        }
    }

    pub fn add(&mut self, values: &[f32]) {
        match self.high {
            None => values
                .iter()
                .for_each(|&x| self.counts[(abs_bits(x) >> 16) as usize] += 1),
            Some(h) => values.iter().for_each(|&x| {
                let b = abs_bits(x);
                if b >> 16 == h {
                    self.counts[(b & 0xffff) as usize] += 1;
                }
            }),
        }
    }

    /// Zeroes the counts, keeping the pass (for per-thread partial histograms).
    pub fn merge_reset(&mut self) {
        self.counts.iter_mut().for_each(|c| *c = 0);
    }

    pub fn merge(&mut self, other: &KthLargest) {
        self.counts
            .iter_mut()
            .zip(&other.counts)
            .for_each(|(a, b)| *a += b);
    }

    /// After pass 1: picks the high bucket holding the k-th largest. Returns false when no second
    /// pass is needed (k = 0, or k beyond the count: keep everything).
    pub fn narrow(&mut self) -> bool {
        let total: u64 = self.counts.iter().sum();
        if self.k == 0 || self.k >= total {
            return false;
        }
        let mut above = 0;
        for h in (0..self.counts.len()).rev() {
            if above + self.counts[h] >= self.k {
                self.high = Some(h as u32);
                self.need = self.k - above;
                self.counts = vec![0; 1 << 16];
                return true;
            }
            above += self.counts[h];
        }
        false
    }

    /// The threshold (after pass 2, or directly when `narrow` returned false).
    pub fn finish(&self) -> Threshold {
        let Some(h) = self.high else {
            return if self.k == 0 {
                Threshold {
                    value: f32::INFINITY,
                    ties: 0,
                    equal: 0,
                    none: true,
                }
            } else {
                Threshold {
                    value: 0.0,
                    ties: u64::MAX,
                    equal: 0,
                    none: false,
                }
            };
        };
        let mut above = 0;
        for lo in (0..self.counts.len()).rev() {
            if above + self.counts[lo] >= self.need {
                return Threshold {
                    value: f32::from_bits((h << 16) | lo as u32),
                    ties: self.need - above,
                    equal: self.counts[lo],
                    none: false,
                };
            }
            above += self.counts[lo];
        }
        Threshold {
            value: 0.0,
            ties: u64::MAX,
            equal: 0,
            none: false,
        }
    }
}

/// The exact k-th largest magnitude of one slice.
pub fn threshold_of(values: &[f32], k: u64) -> Threshold {
    let mut t = KthLargest::new(k);
    t.add(values);
    if t.narrow() {
        t.add(values);
    }
    t.finish()
}

/// A seed for one (module, input, tensor) derived from the user's seed, so results do not depend
/// on the order in which modules run.
pub fn derive_seed(seed: u64, module: &str, input: usize, tag: &str) -> u64 {
    let digest = Sha256::digest(format!("{seed}\u{0}{module}\u{0}{input}\u{0}{tag}").as_bytes());
    u64::from_le_bytes([
        digest[0], digest[1], digest[2], digest[3], digest[4], digest[5], digest[6], digest[7],
    ])
}

/// The ChaCha8 key of `ChaCha8Rng::seed_from_u64(seed)` (DARE's mask stream) as 8 little-endian
/// words: what the GPU's mask kernel is given to draw the same stream.
pub fn chacha8_key(seed: u64) -> [u32; 8] {
    use rand::SeedableRng;
    let key = rand_chacha::ChaCha8Rng::seed_from_u64(seed).get_seed();
    std::array::from_fn(|i| {
        u32::from_le_bytes([key[4 * i], key[4 * i + 1], key[4 * i + 2], key[4 * i + 3]])
    })
}

/// The ChaCha8 block `counter` (stream 0) of `key`: words 16·counter … 16·counter + 15 of the
/// `next_u32()` stream. The GPU kernel (`dare_mask` in gpu/kernels.cu) computes exactly this per
/// block of 16 entries; the test below pins it to rand_chacha's generator.
pub fn chacha8_block(key: &[u32; 8], counter: u64) -> [u32; 16] {
    let mut input = [0u32; 16];
    input[..4].copy_from_slice(&[0x6170_7865, 0x3320_646e, 0x7962_2d32, 0x6b20_6574]);
    input[4..12].copy_from_slice(key);
    input[12] = counter as u32;
    input[13] = (counter >> 32) as u32;
    let mut x = input;
    let qr = |x: &mut [u32; 16], a: usize, b: usize, c: usize, d: usize| {
        x[a] = x[a].wrapping_add(x[b]);
        x[d] = (x[d] ^ x[a]).rotate_left(16);
        x[c] = x[c].wrapping_add(x[d]);
        x[b] = (x[b] ^ x[c]).rotate_left(12);
        x[a] = x[a].wrapping_add(x[b]);
        x[d] = (x[d] ^ x[a]).rotate_left(8);
        x[c] = x[c].wrapping_add(x[d]);
        x[b] = (x[b] ^ x[c]).rotate_left(7);
    };
    for _ in 0..4 {
        qr(&mut x, 0, 4, 8, 12);
        qr(&mut x, 1, 5, 9, 13);
        qr(&mut x, 2, 6, 10, 14);
        qr(&mut x, 3, 7, 11, 15);
        qr(&mut x, 0, 5, 10, 15);
        qr(&mut x, 1, 6, 11, 12);
        qr(&mut x, 2, 7, 8, 13);
        qr(&mut x, 3, 4, 9, 14);
    }
    std::array::from_fn(|i| x[i].wrapping_add(input[i]))
}

/// How one task tensor is sparsified, applied entry by entry in a fused loop.
pub struct Pruner {
    kind: Pruning,
    threshold: Threshold,
    exact_k: bool,
    density: f64,
    seed: u64,
}

impl Pruner {
    pub fn new(
        kind: Pruning,
        threshold: Threshold,
        exact_k: bool,
        density: f64,
        seed: u64,
    ) -> Self {
        Self {
            kind,
            threshold,
            exact_k,
            density,
            seed,
        }
    }

    /// Prunes `values` in place. Written as branch-free loops over the whole buffer (the kept
    /// entries are scattered at random, so a branch per entry mispredicts half the time); only
    /// exactly-k pruning with surplus ties at the threshold takes a sequential path.
    pub fn apply(&self, values: &mut [f32]) {
        let mut ties_left = self.threshold.ties;
        self.apply_at(values, 0, &mut ties_left);
    }

    /// Whether [`Pruner::apply_at`] depends on the entries before a block (exactly-k pruning
    /// with more entries at the threshold than it keeps): such blocks must be pruned in order.
    pub fn ordered(&self) -> bool {
        let t = self.threshold;
        self.kind == Pruning::Magnitude && !t.none && self.exact_k && t.ties < t.equal
    }

    /// [`Pruner::apply`] on a block of the tensor that starts at entry `offset`: DARE draws the
    /// same stream words as for the whole tensor, and exactly-k pruning keeps the first
    /// `ties_left` entries at the threshold, counting down across the blocks given in order.
    pub fn apply_at(&self, values: &mut [f32], offset: u64, ties_left: &mut u64) {
        match self.kind {
            Pruning::None => {}
            Pruning::Magnitude => {
                let t = self.threshold;
                if t.none {
                    values.iter_mut().for_each(|x| *x = 0.0);
                } else if !self.ordered() {
                    let v = t.value;
                    values
                        .iter_mut()
                        .for_each(|x| *x *= f32::from(u8::from(x.abs() >= v)));
                } else {
                    for x in values.iter_mut() {
                        let a = x.abs();
                        if a < t.value || (a == t.value && *ties_left == 0) {
                            *x = 0.0;
                        } else if a == t.value {
                            *ties_left -= 1;
                        }
                    }
                }
            }
            Pruning::Random => {
                use rand::{RngCore, SeedableRng};
                // Keep when a uniform u32 falls below density·2³²; kept entries scaled by 1/density.
                let cut = (self.density * 4_294_967_296.0).min(4_294_967_295.0) as u32;
                let inv = (1.0 / self.density) as f32;
                if self.density >= 1.0 {
                    values.iter_mut().for_each(|x| *x *= inv);
                    return;
                }
                let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(self.seed);
                // One stream word per entry.
                rng.set_word_pos(u128::from(offset));
                for x in values.iter_mut() {
                    let kept = rng.next_u32() < cut;
                    *x *= f32::from(u8::from(kept)) * inv;
                }
            }
        }
    }
}

/// −1, 0 or 1.
#[inline]
pub fn sign(x: f32) -> f32 {
    f32::from(u8::from(x > 0.0)) - f32::from(u8::from(x < 0.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn prune(values: &mut [f32], kind: Pruning, k: u64, exact_k: bool, density: f64, seed: u64) {
        Pruner::new(kind, threshold_of(values, k), exact_k, density, seed).apply(values);
    }

    fn dare(values: &mut [f32], density: f64, seed: u64) {
        prune(values, Pruning::Random, 0, false, density, seed);
    }

    #[test]
    fn chacha8_blocks_reproduce_the_mask_stream() {
        use rand::RngCore;
        for seed in [0u64, 42, derive_seed(7, "m", 1, "delta")] {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let key = chacha8_key(seed);
            for block in 0..70u64 {
                let words = chacha8_block(&key, block);
                for (t, w) in words.iter().enumerate() {
                    assert_eq!(rng.next_u32(), *w, "seed {seed} block {block} word {t}");
                }
            }
        }
    }

    #[test]
    fn kth_largest_is_exact_and_handles_edges() {
        let v = [1.0f32, -2.0, 0.5, 0.0, 3.0, -3.0];
        assert_eq!(threshold_of(&v, 1).value, 3.0);
        assert_eq!(
            threshold_of(&v, 2),
            Threshold {
                value: 3.0,
                ties: 2,
                equal: 2,
                none: false
            }
        );
        assert_eq!(threshold_of(&v, 3).value, 2.0);
        assert!(threshold_of(&v, 0).none);
        assert_eq!(
            threshold_of(&v, 6),
            Threshold {
                value: 0.0,
                ties: u64::MAX,
                equal: 0,
                none: false
            }
        );
        // Against a sort on a larger random vector.
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let big: Vec<f32> = (0..100_000).map(|_| rng.random::<f32>() - 0.5).collect();
        let mut sorted: Vec<f32> = big.iter().map(|x| x.abs()).collect();
        sorted.sort_by(|a, b| b.total_cmp(a));
        for k in [1u64, 17, 20_000, 99_999] {
            assert_eq!(threshold_of(&big, k).value, sorted[k as usize - 1], "k={k}");
        }
    }

    #[test]
    fn magnitude_pruning_matches_the_reference_cases() {
        // algorithms.md §1.5.3.
        let mut v = [1.0f32, -2.0, 0.5, 0.0];
        prune(&mut v, Pruning::Magnitude, 2, true, 0.5, 0);
        assert_eq!(v, [1.0, -2.0, 0.0, 0.0]);
        let mut ties = [1.0f32, 1.0, -1.0, 0.5];
        prune(&mut ties, Pruning::Magnitude, 2, true, 0.5, 0);
        assert_eq!(ties, [1.0, 1.0, 0.0, 0.0], "exactly k, ties in index order");
        let mut ties = [1.0f32, 1.0, -1.0, 0.5];
        prune(&mut ties, Pruning::Magnitude, 2, false, 0.5, 0);
        assert_eq!(ties, [1.0, 1.0, -1.0, 0.0], "reference keeps every tie");
    }

    #[test]
    fn dare_keeps_the_density_unbiased_and_seeded() {
        let n = 1_000_000;
        let mut v = vec![1.0f32; n];
        dare(&mut v, 0.1, 42);
        let kept = v.iter().filter(|&&x| x != 0.0).count() as f64 / n as f64;
        assert!((kept - 0.1).abs() < 0.002, "{kept}");
        assert!(v.iter().all(|&x| x == 0.0 || (x - 10.0).abs() < 1e-5));
        let mut again = vec![1.0f32; n];
        dare(&mut again, 0.1, 42);
        assert_eq!(v, again);
        let mut other = vec![1.0f32; n];
        dare(&mut other, 0.1, 43);
        assert_ne!(v, other);
        let mut identity = vec![0.5f32, -2.0, 3.0];
        dare(&mut identity, 1.0, 9);
        assert_eq!(identity, [0.5, -2.0, 3.0], "density 1 is the identity");
        // Unbiased: the mean over many seeds of a small tensor is close to it.
        let base = [0.3f32, -1.2, 2.0];
        let mut mean = [0.0f64; 3];
        for s in 0..2000 {
            let mut t = base;
            dare(&mut t, 0.3, s);
            mean.iter_mut()
                .zip(t)
                .for_each(|(m, x)| *m += f64::from(x) / 2000.0);
        }
        for (m, b) in mean.iter().zip(base) {
            assert!(
                (m - f64::from(b)).abs() < 0.05 * f64::from(b.abs()) + 0.02,
                "{m} vs {b}"
            );
        }
    }
}
