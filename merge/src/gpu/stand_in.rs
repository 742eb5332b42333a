//! The `gpu` module of a build without the `cuda` feature: the API of the real one (`mod.rs`) that
//! code outside it uses, with no GPU behind it, so that code carries no `cfg`.
//!
//! [`Gpu::of`] gives `Ok(None)` for a device that is not CUDA, as the real one does, and an error
//! for a CUDA device. No [`Gpu`] value can exist (it holds an uninhabited field), so the methods
//! below provably never run.

use std::convert::Infallible;
use std::sync::Arc;

use candle_core::Device;

use crate::context::{Backend, ModuleContext, Present, Truncation};
use crate::error::MergeError;
use crate::linalg::{FactorProducts, Truncated};
use crate::mat::Mat;

/// A GPU; there is none in this build.
pub struct Gpu {
    pub name: String,
    /// The device's CUDA ordinal.
    pub ordinal: usize,
    never: Infallible,
}

impl Gpu {
    /// `None` for the CPU (any device that is not CUDA); an error for a CUDA device.
    pub fn of(device: &Device) -> Result<Option<Arc<Gpu>>, MergeError> {
        match device {
            Device::Cuda(_) => Err(MergeError::Device(
                "this build has no GPU support: build with the `cuda` feature (docs/gpu.md)".into(),
            )),
            _ => Ok(None),
        }
    }
}

impl Backend for Gpu {
    fn dense_combined(
        &self,
        _: &ModuleContext<'_>,
        _: &[Present],
        _: &[(f64, usize)],
        _: &str,
    ) -> Result<Mat, MergeError> {
        match self.never {}
    }

    fn dense_truncated(
        &self,
        _: &ModuleContext<'_>,
        _: &[Present],
        _: &[(f64, usize)],
        _: &str,
        _: Truncation,
    ) -> Result<Truncated, MergeError> {
        match self.never {}
    }

    fn factor_products<'s>(
        &'s self,
        _: &Mat,
        _: &Mat,
    ) -> Result<Box<dyn FactorProducts + 's>, MergeError> {
        match self.never {}
    }
}

/// The GPU passes' timings (`QUIVER_GPU_PROFILE=1` with the `cuda` feature).
pub mod profile {
    use super::Gpu;
    use crate::error::MergeError;

    /// The profile so far; never called here (there is no [`Gpu`]).
    pub fn summary(gpu: &Gpu) -> Result<Option<String>, MergeError> {
        match gpu.never {}
    }
}
