//! Mixture weights over the retrieved adapters.

use serde::{Deserialize, Serialize};

/// How the retrieved adapters are weighted in a mixture or fusion.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "weights")]
pub enum Weighting {
    /// `1/k` each, as LoraRetriever.
    #[default]
    Uniform,
    /// `softmax(score / temperature)`.
    Softmax { temperature: f64 },
}

/// Weights that sum to 1, one per score (empty in, empty out).
pub fn mixture_weights(scores: &[f32], weighting: Weighting) -> Vec<f64> {
    if scores.is_empty() {
        return Vec::new();
    }
    match weighting {
        Weighting::Uniform => vec![1.0 / scores.len() as f64; scores.len()],
        Weighting::Softmax { temperature } => {
            let best = scores.iter().copied().fold(f32::MIN, f32::max) as f64;
            let exp: Vec<f64> = scores
                .iter()
                .map(|&s| ((s as f64 - best) / temperature).exp())
                .collect();
            let total: f64 = exp.iter().sum();
            exp.into_iter().map(|e| e / total).collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_sum_to_one_and_order_follows_scores() {
        let uniform = mixture_weights(&[0.9, 0.5, 0.1], Weighting::Uniform);
        assert_eq!(uniform, vec![1.0 / 3.0; 3]);
        let soft = mixture_weights(&[0.9, 0.5, 0.1], Weighting::Softmax { temperature: 0.1 });
        assert!((soft.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        assert!(soft[0] > soft[1] && soft[1] > soft[2]);
        // softmax(x/T): the ratio of two weights is exp((s₁ − s₂)/T).
        assert!((soft[0] / soft[1] - (4.0f64).exp()).abs() < 1e-6 * (4.0f64).exp());
        assert_eq!(
            mixture_weights(&[0.3], Weighting::Softmax { temperature: 0.01 }),
            vec![1.0]
        );
        assert!(mixture_weights(&[], Weighting::Uniform).is_empty());
    }

    #[test]
    fn huge_score_gaps_do_not_overflow() {
        let soft = mixture_weights(&[1.0, -1.0], Weighting::Softmax { temperature: 1e-4 });
        assert_eq!(soft, vec![1.0, 0.0]);
    }
}
