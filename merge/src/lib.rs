//! Quiver's numerical core: adapter formats, and merging (see `engine` and docs/merging.md).
//!
//! - [`safetensors`]: header parsing with the full validation of algorithms.md §10.3, and a
//!   writer ([`write_safetensors`]).
//! - [`peft_config`]: PEFT `adapter_config.json` ([`AdapterConfig`]) with PEFT's
//!   `rank_pattern`/`alpha_pattern` resolution.
//! - [`keys`]: the PEFT tensor-name grammar.
//! - [`summary`]: validation of the tensors against the config ([`summarize`],
//!   [`inspect_path`]) producing a [`LoraSummary`].
//!
//! Every failure is a [`FormatError`] whose message names the tensor, module or field involved.

pub mod adapter;
pub mod blas;
pub mod compat;
pub mod compress;
pub mod context;
pub mod control;
pub mod engine;
pub mod error;
pub mod fused;
// Without `cuda`, a stand-in with the same API and no GPU, so the callers carry no `cfg`.
#[cfg_attr(not(feature = "cuda"), path = "gpu/stand_in.rs")]
pub mod gpu;
pub mod host;
pub mod keys;
pub mod lego;
pub mod linalg;
pub mod mat;
pub mod methods;
pub mod park;
pub mod peft_config;
pub mod rank;
pub mod safetensors;
#[macro_use]
mod simd;
pub mod sparsify;
pub mod spec;
pub mod summary;
pub mod write;
pub mod ziplora;

pub use adapter::LoraAdapter;
pub use compress::CompressSpec;
pub use control::{CancelToken, Control};
pub use engine::{Merged, ModuleReport, merge, merge_parked, merge_with};
pub use error::{FormatError, MergeError};
pub use keys::{TensorRole, split_key};
pub use peft_config::{AdapterConfig, TargetModules};
pub use safetensors::write as write_safetensors;
pub use safetensors::{
    Dtype, MAX_HEADER_LEN, SafetensorsHeader, TensorInfo, header_len, parse_header, read_header,
};
pub use spec::{Compat, MajoritySign, MergeSpec, Method, OutDtype, SvdMode, TrimScope};
pub use summary::{LoraSummary, infer_config, inspect_path, summarize};
pub use write::write_adapter;
