//! Profiles: how an adapter's sample embeddings become the rows it is searched by, and how the
//! scores of those rows become the adapter's score.
//!
//! The store keeps every normalised sample embedding, so a recipe is chosen when the index is
//! built and can change without recomputing anything.

use serde::{Deserialize, Serialize};

use crate::{RetrieveError, normalized};

/// A profile recipe. `Centroid` is LoraRetriever's; docs/routing.md compares them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Recipe {
    /// One row: the normalised mean of the normalised sample embeddings; score = its cosine.
    Centroid,
    /// Every sample is a row; score = the best sample's cosine (nearest neighbour).
    Max,
    /// Every sample is a row; score = the mean of the `k` best samples' cosines.
    TopMean { k: usize },
    /// The centroid and every sample; score = `(centroid cosine + best sample cosine) / 2`.
    CentroidMax,
    /// LoraRetriever's centroid after removing what every profile shares: the mean `μ` of all
    /// indexed sample embeddings is subtracted from each centroid and from the query before the
    /// cosine (one row; `μ` is computed when the index is built).
    Centered,
}

impl Recipe {
    pub const DEFAULT: Recipe = Recipe::Centroid;

    pub fn name(self) -> String {
        match self {
            Recipe::Centroid => "centroid".into(),
            Recipe::Max => "max".into(),
            Recipe::TopMean { k } => format!("top{k}_mean"),
            Recipe::CentroidMax => "centroid_max".into(),
            Recipe::Centered => "centered".into(),
        }
    }

    pub fn parse(name: &str) -> Result<Self, String> {
        match name {
            "centroid" => Ok(Recipe::Centroid),
            "max" => Ok(Recipe::Max),
            "centroid_max" => Ok(Recipe::CentroidMax),
            "centered" => Ok(Recipe::Centered),
            other => other
                .strip_prefix("top")
                .and_then(|rest| rest.strip_suffix("_mean"))
                .and_then(|k| k.parse::<usize>().ok())
                .filter(|&k| k >= 1)
                .map(|k| Recipe::TopMean { k })
                .ok_or_else(|| {
                    format!(
                        "unknown profile recipe {other:?}; one of: centered, centroid, max, topK_mean (e.g. top3_mean), centroid_max"
                    )
                }),
        }
    }

    /// Whether the recipe works in coordinates centred on the mean of every indexed sample.
    pub fn centred(self) -> bool {
        self == Recipe::Centered
    }

    /// The rows an adapter with these sample embeddings is searched by (unit vectors), with
    /// `center` (the mean of every indexed sample) for [`Recipe::Centered`].
    pub fn rows_centred(self, samples: &[Vec<f32>], center: &[f32]) -> Vec<Vec<f32>> {
        match self {
            Recipe::Centered => vec![normalized(
                mean(samples, center.len())
                    .iter()
                    .zip(center)
                    .map(|(m, c)| m - c)
                    .collect(),
            )],
            other => other.rows(samples),
        }
    }

    /// The rows an adapter with these sample embeddings is searched by (unit vectors).
    pub fn rows(self, samples: &[Vec<f32>]) -> Vec<Vec<f32>> {
        match self {
            Recipe::Centroid | Recipe::Centered => vec![centroid(samples)],
            Recipe::Max | Recipe::TopMean { .. } => samples.to_vec(),
            Recipe::CentroidMax => {
                let mut rows = Vec::with_capacity(samples.len() + 1);
                rows.push(centroid(samples));
                rows.extend_from_slice(samples);
                rows
            }
        }
    }

    /// The adapter's score from its rows' cosines (in `rows` order; `scores` is scratch).
    pub fn score(self, scores: &mut [f32]) -> f32 {
        match self {
            Recipe::Centroid | Recipe::Centered => scores[0],
            Recipe::Max => scores.iter().copied().fold(f32::MIN, f32::max),
            Recipe::TopMean { k } => {
                let k = k.min(scores.len());
                scores.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
                scores[..k].iter().sum::<f32>() / k as f32
            }
            Recipe::CentroidMax => {
                let best = scores[1..].iter().copied().fold(scores[0], f32::max);
                (scores[0] + best) / 2.0
            }
        }
    }
}

/// LoraRetriever's profile: the mean of the sample embeddings, normalised. Order-invariant.
pub fn centroid(samples: &[Vec<f32>]) -> Vec<f32> {
    normalized(mean(samples, samples.first().map_or(0, Vec::len)))
}

/// The mean of vectors of dimension `dim`, accumulated in f64 (zeros for none).
pub fn mean<'a>(vectors: impl IntoIterator<Item = &'a Vec<f32>>, dim: usize) -> Vec<f32> {
    let mut sum = vec![0f64; dim];
    let mut n = 0usize;
    for v in vectors {
        for (m, x) in sum.iter_mut().zip(v) {
            *m += *x as f64;
        }
        n += 1;
    }
    sum.iter().map(|m| (m / n.max(1) as f64) as f32).collect()
}

/// Vectors as stored: little-endian f32, row after row.
pub fn encode_vectors(vectors: &[Vec<f32>]) -> Vec<u8> {
    vectors
        .iter()
        .flat_map(|v| v.iter().flat_map(|x| x.to_le_bytes()))
        .collect()
}

/// The inverse of [`encode_vectors`], checking the length against `dim`.
pub fn decode_vectors(bytes: &[u8], dim: usize) -> Result<Vec<Vec<f32>>, RetrieveError> {
    if dim == 0 || !bytes.len().is_multiple_of(4 * dim) {
        return Err(RetrieveError::Vector(format!(
            "{} bytes do not hold vectors of dimension {dim}",
            bytes.len()
        )));
    }
    Ok(bytes
        .chunks_exact(4 * dim)
        .map(|row| {
            row.chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect()
        })
        .collect())
}

/// Checks a caller's vector: the right length, finite, not zero. Returns it normalised.
pub fn checked_vector(vector: &[f32], dim: usize) -> Result<Vec<f32>, RetrieveError> {
    if vector.len() != dim {
        return Err(RetrieveError::Vector(format!(
            "vector has {} values; the embedder's dimension is {dim}",
            vector.len()
        )));
    }
    if vector.iter().any(|x| !x.is_finite()) {
        return Err(RetrieveError::Vector(
            "vector has a non-finite value".into(),
        ));
    }
    if vector.iter().all(|&x| x == 0.0) {
        return Err(RetrieveError::Vector("vector is all zeros".into()));
    }
    Ok(normalized(vector.to_vec()))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn unit(v: &[f32]) -> Vec<f32> {
        normalized(v.to_vec())
    }

    #[test]
    fn centroid_is_the_normalised_mean() {
        let samples = vec![unit(&[1.0, 0.0]), unit(&[0.0, 1.0])];
        let c = centroid(&samples);
        let h = std::f32::consts::FRAC_1_SQRT_2;
        assert!((c[0] - h).abs() < 1e-7 && (c[1] - h).abs() < 1e-7);
    }

    proptest! {
        #[test]
        fn centroid_is_order_invariant(
            rows in prop::collection::vec(prop::collection::vec(-1.0f32..1.0, 8), 1..12),
            seed in any::<u64>(),
        ) {
            let samples: Vec<Vec<f32>> = rows.iter().map(|r| unit(r)).collect();
            let mut shuffled = samples.clone();
            // A deterministic permutation from the seed.
            let n = shuffled.len();
            for i in (1..n).rev() {
                shuffled.swap(i, (seed as usize).wrapping_mul(i + 7) % (i + 1));
            }
            let a = centroid(&samples);
            let b = centroid(&shuffled);
            for (x, y) in a.iter().zip(&b) {
                prop_assert!((x - y).abs() < 1e-6);
            }
        }
    }

    #[test]
    fn recipes_score_as_documented() {
        let mut scores = vec![0.2, 0.9, 0.5, 0.7];
        assert_eq!(Recipe::Centroid.score(&mut scores.clone()), 0.2);
        assert_eq!(Recipe::Max.score(&mut scores.clone()), 0.9);
        assert!((Recipe::TopMean { k: 2 }.score(&mut scores.clone()) - 0.8).abs() < 1e-6);
        assert!((Recipe::TopMean { k: 9 }.score(&mut scores.clone()) - 0.575).abs() < 1e-6);
        assert!((Recipe::CentroidMax.score(&mut scores) - 0.55).abs() < 1e-6);
        for recipe in [
            Recipe::Centroid,
            Recipe::Max,
            Recipe::TopMean { k: 3 },
            Recipe::CentroidMax,
        ] {
            assert_eq!(Recipe::parse(&recipe.name()), Ok(recipe));
        }
        assert!(Recipe::parse("top0_mean").is_err());
    }

    #[test]
    fn vectors_round_trip_and_lengths_are_checked() {
        let v = vec![vec![1.0, -2.5, 3.25], vec![0.0, f32::MIN_POSITIVE, 7.0]];
        assert_eq!(decode_vectors(&encode_vectors(&v), 3).expect("ok"), v);
        assert!(decode_vectors(&[0; 10], 3).is_err());
        assert!(checked_vector(&[1.0, 2.0], 3).is_err());
        assert!(checked_vector(&[1.0, f32::NAN, 0.0], 3).is_err());
        assert!(checked_vector(&[0.0; 3], 3).is_err());
        assert!((checked_vector(&[3.0, 4.0, 0.0], 3).expect("ok")[0] - 0.6).abs() < 1e-7);
    }
}
