//! Singular-value spectra of a version's modules: computed exactly from the factors the first
//! time a version page asks (`LoraAdapter::spectra`: bases of B and Aᵀ, then the SVD of the r×r
//! core — no d×d product), then kept in the blob store as `derived/spectra/<revision>.json`, so
//! every process serves them from there after one computation.

use bytes::Bytes;
use quiver_merge::LoraAdapter;
use quiver_merge::summary::{CONFIG_NAME, SAFETENSORS_WEIGHTS_NAME};
use quiver_store::VersionRecord;
use serde::{Deserialize, Serialize};

use super::svg::{LinePlot, Series};
use crate::error::ApiError;
use crate::state::AppState;

/// Versions whose weights are larger than this are not analysed on a page view.
const MAX_WEIGHTS_BYTES: i64 = 4 << 30;
/// Modules drawn per plot (evenly spaced over the file's modules when there are more).
const MAX_LINES: usize = 48;

#[derive(Serialize, Deserialize)]
pub struct Spectra {
    /// Module path → singular values of its ΔW, descending.
    pub modules: Vec<(String, Vec<f64>)>,
}

/// Effective ranks across modules: the smallest rank keeping 90 % and 99 % of each module's
/// energy, summarised as min / median / max.
pub struct RankSummary {
    pub modules: usize,
    pub r90: [usize; 3],
    pub r99: [usize; 3],
}

/// Smallest k with Σ_{i<k} σᵢ² ≥ fraction · Σ σᵢ².
pub fn effective_rank(s: &[f64], fraction: f64) -> usize {
    let total: f64 = s.iter().map(|x| x * x).sum();
    if total <= 0.0 {
        return 0;
    }
    let mut kept = 0.0;
    for (i, x) in s.iter().enumerate() {
        kept += x * x;
        if kept >= fraction * total * (1.0 - 1e-12) {
            return i + 1;
        }
    }
    s.len()
}

fn min_median_max(mut v: Vec<usize>) -> [usize; 3] {
    v.sort_unstable();
    match v.len() {
        0 => [0; 3],
        n => [v[0], v[n / 2], v[n - 1]],
    }
}

impl Spectra {
    pub fn summary(&self) -> RankSummary {
        let ranks = |f| {
            min_median_max(
                self.modules
                    .iter()
                    .map(|(_, s)| effective_rank(s, f))
                    .collect(),
            )
        };
        RankSummary {
            modules: self.modules.len(),
            r90: ranks(0.9),
            r99: ranks(0.99),
        }
    }

    fn drawn(&self) -> Vec<&(String, Vec<f64>)> {
        let n = self.modules.len();
        if n <= MAX_LINES {
            return self.modules.iter().collect();
        }
        (0..MAX_LINES)
            .map(|i| &self.modules[i * (n - 1) / (MAX_LINES - 1)])
            .collect()
    }

    /// σᵢ against i (log y), one line per module.
    pub fn values_plot(&self) -> String {
        LinePlot {
            title: "Singular values of ΔW per module".into(),
            x_label: "index i".into(),
            y_label: "σᵢ (log)".into(),
            log_y: true,
            series: self
                .drawn()
                .into_iter()
                .map(|(name, s)| Series {
                    name: name.clone(),
                    points: s
                        .iter()
                        .enumerate()
                        .map(|(i, &x)| ((i + 1) as f64, x))
                        .collect(),
                })
                .collect(),
            width: 560.0,
            height: 300.0,
        }
        .render()
    }

    /// Fraction of ‖ΔW‖² captured by the best rank-k approximation, against k.
    pub fn energy_plot(&self) -> String {
        LinePlot {
            title: "Energy captured at each rank".into(),
            x_label: "rank k".into(),
            y_label: "Σσ² kept / total".into(),
            log_y: false,
            series: self
                .drawn()
                .into_iter()
                .map(|(name, s)| {
                    let total: f64 = s.iter().map(|x| x * x).sum();
                    let mut kept = 0.0;
                    Series {
                        name: name.clone(),
                        points: s
                            .iter()
                            .enumerate()
                            .map(|(i, x)| {
                                kept += x * x;
                                ((i + 1) as f64, if total > 0.0 { kept / total } else { 1.0 })
                            })
                            .collect(),
                    }
                })
                .collect(),
            width: 560.0,
            height: 300.0,
        }
        .render()
    }
}

/// Why a version has no spectra to show.
pub enum Missing {
    NoWeights,
    TooLarge,
    /// The adapter could not be analysed (e.g. DoRA, which the engine does not open).
    Unsupported(String),
}

/// The version's spectra: from the blob store, or computed now and stored there.
pub async fn spectra(
    state: &AppState,
    version: &VersionRecord,
) -> Result<Result<Spectra, Missing>, ApiError> {
    let key = format!("spectra/{}.json", version.revision);
    if let Some(bytes) = state.store.blobs.get_derived(&key).await?
        && let Ok(s) = serde_json::from_slice::<Spectra>(&bytes)
    {
        return Ok(Ok(s));
    }
    let file = |name: &str| version.files.iter().find(|f| f.path == name);
    let (Some(config), Some(weights)) = (file(CONFIG_NAME), file(SAFETENSORS_WEIGHTS_NAME)) else {
        return Ok(Err(Missing::NoWeights));
    };
    if weights.size > MAX_WEIGHTS_BYTES {
        return Ok(Err(Missing::TooLarge));
    }
    let dir = tempfile::tempdir().map_err(|e| ApiError::internal("spectra scratch", e))?;
    state
        .store
        .blobs
        .fetch_to(&config.sha256, &dir.path().join(CONFIG_NAME))
        .await?;
    state
        .store
        .blobs
        .fetch_to(&weights.sha256, &dir.path().join(SAFETENSORS_WEIGHTS_NAME))
        .await?;
    let computed = tokio::task::spawn_blocking(move || {
        let result = LoraAdapter::open(dir.path()).and_then(|a| a.spectra());
        drop(dir);
        result
    })
    .await
    .map_err(|e| ApiError::internal("spectra task", e))?;
    let spectra = match computed {
        Ok(modules) => Spectra { modules },
        Err(e) => return Ok(Err(Missing::Unsupported(e.to_string()))),
    };
    match serde_json::to_vec(&spectra) {
        Ok(json) => {
            if let Err(e) = state.store.blobs.put_derived(&key, Bytes::from(json)).await {
                tracing::warn!(error = %e, "could not store a version's spectra");
            }
        }
        Err(e) => tracing::warn!(error = %e, "could not serialise spectra"),
    }
    Ok(Ok(spectra))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn effective_rank_counts_energy() {
        assert_eq!(effective_rank(&[3.0, 1.0], 0.9), 1, "9 of 10");
        assert_eq!(effective_rank(&[3.0, 1.0], 0.99), 2);
        assert_eq!(effective_rank(&[1.0, 1.0, 1.0, 1.0], 0.5), 2);
        assert_eq!(effective_rank(&[], 0.9), 0);
        let s = Spectra {
            modules: vec![
                ("a".into(), vec![3.0, 1.0]),
                ("b".into(), vec![1.0, 1.0]),
                ("c".into(), vec![1.0, 0.0]),
            ],
        };
        let sum = s.summary();
        assert_eq!(sum.r90, [1, 1, 2], "a: 1, b: 2, c: 1");
        assert_eq!(sum.modules, 3);
    }
}
