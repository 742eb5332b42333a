//! What one module's merge is given: the inputs present on it ([`Present`]), the merge's
//! parameters ([`ModuleContext`]), and the [`Backend`] that runs its large products and dense
//! passes — the engine's one device seam, chosen once per merge by [`crate::engine::backend`]:
//! [`crate::host::Host`], or a [`crate::gpu::Gpu`].

use candle_core::Device;

use crate::adapter::LoraModule;
use crate::control::Control;
use crate::error::MergeError;
use crate::linalg::{FactorProducts, Truncated};
use crate::mat::Mat;
use crate::sparsify::Threshold;
use crate::spec::MergeSpec;

/// One input present on the module: its index among the inputs and its factors.
pub struct Present {
    pub index: usize,
    pub module: LoraModule,
}

/// Everything the per-module math needs besides the inputs.
pub struct ModuleContext<'a> {
    pub path: &'a str,
    pub spec: &'a MergeSpec,
    /// Candle's device, for the work done with candle tensors (ZipLoRA's optimisation, the
    /// host's randomized sketch).
    pub device: &'a Device,
    /// Quiver's own implementations of the heavy steps, for the same device.
    pub compute: &'a dyn Backend,
    /// Per-input magnitude thresholds computed over the whole model (`--trim-scope global`).
    pub global_thresholds: Option<&'a [Threshold]>,
    /// Output rank when the method truncates and `--rank` is not given.
    pub default_rank: usize,
    /// Cancellation, checked inside the methods' long loops (ZipLoRA steps, LEGO iterations).
    pub ctl: &'a Control<'a>,
}

impl ModuleContext<'_> {
    /// The weight of input `p` in the merge.
    pub(crate) fn weight(&self, p: &Present) -> f64 {
        self.spec.weight(p.index)
    }
}

/// How a dense result is truncated.
#[derive(Clone, Copy, Debug)]
pub enum Truncation {
    /// A full SVD on the host (small matrices).
    Exact(usize),
    /// A randomized SVD to this rank with this sketch seed.
    Randomized(usize, u64),
}

/// Where a merge's heavy work runs: the dense family (TIES, DARE, magnitude pruning and their
/// PEFT `_svd` variants) and the factored route's large products. Implemented for the host
/// ([`crate::host::Host`]) and the GPU ([`crate::gpu::Gpu`]).
pub trait Backend: Send + Sync {
    /// The dense family's combined ΔW of one module before truncation, on the host:
    /// `sources[j] = (weight, input index)` for `inputs[j]`, `tag` salts the pruning seeds.
    fn dense_combined(
        &self,
        ctx: &ModuleContext<'_>,
        inputs: &[Present],
        sources: &[(f64, usize)],
        tag: &str,
    ) -> Result<Mat, MergeError>;

    /// [`Backend::dense_combined`], then truncated as `truncation` says.
    fn dense_truncated(
        &self,
        ctx: &ModuleContext<'_>,
        inputs: &[Present],
        sources: &[(f64, usize)],
        tag: &str,
        truncation: Truncation,
    ) -> Result<Truncated, MergeError>;

    /// The large products of the factored route for `b·a` (see
    /// [`crate::linalg::factored_cut_with`]).
    fn factor_products<'s>(
        &'s self,
        b: &Mat,
        a: &Mat,
    ) -> Result<Box<dyn FactorProducts + 's>, MergeError>;

    /// Whether one module's dense work already uses every core (the host's fused passes): the
    /// engine then runs the dense family one module at a time, so memory holds one module's
    /// working set, not one per core.
    fn parallel_within_module(&self) -> bool {
        false
    }
}
