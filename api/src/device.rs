//! The `--device` flag.

use clap::ValueEnum;

/// Where the engine runs: the one `--device` of `serve`, `worker` and `merge`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DeviceKind {
    Cpu,
    Cuda,
}

impl DeviceKind {
    /// The engine's device; `cuda` without the feature or a GPU says what is missing.
    pub fn open(self) -> Result<candle_core::Device, String> {
        match self {
            DeviceKind::Cpu => Ok(candle_core::Device::Cpu),
            DeviceKind::Cuda => candle_core::Device::new_cuda(0).map_err(|e| {
                format!(
                    "--device cuda is not available ({e}); this binary needs the `cuda` feature \
                     and an NVIDIA GPU"
                )
            }),
        }
    }
}
