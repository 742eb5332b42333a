//! What to compress and how: the payload of a compression job and of `quiver compress`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::joint::JointParams;
use super::{extract_files, individual_files, joint_files};
use crate::adapter::LoraAdapter;
use crate::control::Control;
use crate::error::MergeError;
use crate::linalg::Cut;
use crate::spec::{MAX_INPUTS, MAX_RANK, at_most};
use crate::write::OutputFiles;

/// Default alternating iterations of joint compression.
pub const DEFAULT_JOINT_ITERS: usize = 50;
/// Most alternating iterations of joint compression (`iters`).
pub const MAX_JOINT_ITERS: usize = 10_000;
/// Most clusters of joint compression (`clusters`; each has its own bases).
pub const MAX_CLUSTERS: usize = 1024;

/// A compression request. JSON: `{"mode": "individual", "rank": 8}`, `{"mode": "joint", "rank":
/// 16, "diag": true}`, `{"mode": "extract", "member": "math"}`; unknown fields are refused.
// With the `openapi` feature, also the API's schema of a compression's parameters: the limits
// there are MAX_RANK, MAX_CLUSTERS and MAX_JOINT_ITERS as literals (the service's tests compare).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "mode", rename_all = "snake_case", deny_unknown_fields)]
pub enum CompressSpec {
    /// One adapter to a lower rank, or to the smallest rank keeping a fraction of the energy.
    Individual {
        /// The output rank; at most 65536.
        #[serde(default)]
        #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 65536))]
        rank: Option<usize>,
        /// The smallest rank keeping this fraction of each module's energy, in (0, 1].
        #[serde(default)]
        #[cfg_attr(feature = "openapi", schema(exclusive_minimum = 0, maximum = 1))]
        energy: Option<f64>,
    },
    /// Shared per-module bases for a collection (Compress then Serve).
    Joint {
        /// The shared rank c; at most 65536.
        #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 65536))]
        rank: usize,
        /// Diagonal per-member cores.
        #[serde(default)]
        diag: bool,
        /// Clusters, each with its own bases (default 1; at most 1024).
        #[serde(default = "one")]
        #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 1024))]
        clusters: usize,
        /// Alternating iterations at most (default 50; at most 10000).
        #[serde(default = "joint_iters")]
        #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 10000))]
        iters: usize,
        #[serde(default)]
        seed: u64,
    },
    /// One member of a joint collection back as a plain PEFT adapter (its name or index).
    Extract {
        /// The member's name or index.
        member: String,
    },
}

fn one() -> usize {
    1
}

fn joint_iters() -> usize {
    DEFAULT_JOINT_ITERS
}

impl CompressSpec {
    /// Reads a spec from JSON; the error names the field at fault.
    pub fn from_json(value: serde_json::Value) -> Result<Self, MergeError> {
        serde_json::from_value(value).map_err(|e| MergeError::InvalidParam(e.to_string()))
    }

    /// `individual`, `joint` or `extract`.
    pub fn mode(&self) -> &'static str {
        match self {
            CompressSpec::Individual { .. } => "individual",
            CompressSpec::Joint { .. } => "joint",
            CompressSpec::Extract { .. } => "extract",
        }
    }

    /// Checks the parameters and the number of inputs (for `extract`: the one collection).
    pub fn validate(&self, n_inputs: usize) -> Result<(), MergeError> {
        let bad = |m: &str| Err(MergeError::InvalidParam(m.to_string()));
        if n_inputs > MAX_INPUTS {
            return Err(MergeError::InvalidParam(format!(
                "at most {MAX_INPUTS} inputs per compression, got {n_inputs}"
            )));
        }
        match self {
            CompressSpec::Individual { rank, energy } => {
                match (rank, energy) {
                    (Some(k), None) if *k >= 1 => {}
                    (None, Some(e)) if *e > 0.0 && *e <= 1.0 => {}
                    _ => {
                        return bad(
                            "individual compression needs exactly one of `rank` (≥ 1) or `energy` in (0, 1]",
                        );
                    }
                }
                if let Some(k) = rank {
                    at_most("rank", *k, MAX_RANK)?;
                }
                if n_inputs != 1 {
                    return bad("individual compression takes exactly one input");
                }
            }
            CompressSpec::Joint {
                rank,
                clusters,
                iters,
                ..
            } => {
                if *rank == 0 {
                    return bad("joint compression needs `rank` ≥ 1 (the shared rank c)");
                }
                if *clusters == 0 {
                    return bad("`clusters` must be at least 1");
                }
                if *iters == 0 {
                    return bad("`iters` must be at least 1");
                }
                at_most("rank", *rank, MAX_RANK)?;
                at_most("clusters", *clusters, MAX_CLUSTERS)?;
                at_most("iters", *iters, MAX_JOINT_ITERS)?;
                if n_inputs == 0 {
                    return bad("give the adapters to compress");
                }
            }
            CompressSpec::Extract { member } => {
                if member.is_empty() {
                    return bad("`member` names the member to extract (its name or index)");
                }
                if n_inputs != 1 {
                    return bad("extract takes exactly one input: the collection");
                }
            }
        }
        Ok(())
    }

    /// Runs the compression on adapter directories (for `extract`, the collection directory)
    /// and returns the output's files in memory with the report (`None` for `extract`, which has
    /// none). Nothing is written.
    pub fn compute(
        &self,
        inputs: &[PathBuf],
        ctl: &Control<'_>,
    ) -> Result<(OutputFiles, Option<serde_json::Value>), MergeError> {
        self.validate(inputs.len())?;
        let open = || {
            inputs
                .iter()
                .map(|p| LoraAdapter::open(p))
                .collect::<Result<Vec<_>, _>>()
        };
        match self {
            CompressSpec::Individual { rank, energy } => {
                let cut = match (rank, energy) {
                    (Some(k), _) => Cut::Rank(*k),
                    (_, Some(e)) => Cut::Energy(*e),
                    _ => unreachable_cut()?,
                };
                let (files, report) = individual_files(&open()?[0], cut, ctl)?;
                Ok((files, Some(report)))
            }
            CompressSpec::Joint {
                rank,
                diag,
                clusters,
                iters,
                seed,
            } => {
                let params = JointParams {
                    rank: *rank,
                    diag: *diag,
                    clusters: *clusters,
                    iters: *iters,
                    seed: *seed,
                };
                let (files, report) = joint_files(&open()?, params, ctl)?;
                Ok((files, Some(report)))
            }
            CompressSpec::Extract { member } => {
                ctl.check()?;
                let files = extract_files(&inputs[0], member)?;
                ctl.report(1, 1);
                Ok((files, None))
            }
        }
    }

    /// [`CompressSpec::compute`], then the files written into `out`.
    pub fn run(
        &self,
        inputs: &[PathBuf],
        out: &Path,
        ctl: &Control<'_>,
    ) -> Result<Option<serde_json::Value>, MergeError> {
        let (files, report) = self.compute(inputs, ctl)?;
        files.write(out)?;
        Ok(report)
    }
}

/// `validate` guarantees a cut; this keeps the match total without a panic.
fn unreachable_cut() -> Result<Cut, MergeError> {
    Err(MergeError::InvalidParam(
        "individual compression needs `rank` or `energy`".into(),
    ))
}
