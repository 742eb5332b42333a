//! The single error type of the adapter-format code.

use std::path::PathBuf;

/// Everything that can be wrong with an uploaded adapter.
///
/// Every message is a sentence that names the offending tensor, module or field, so it can be
/// shown to the uploader as is. [`FormatError::code`] gives a stable machine-readable code.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// The safetensors container itself is malformed (header, dtypes, offsets, sizes).
    #[error("invalid safetensors file: {0}")]
    InvalidSafetensors(String),

    /// `adapter_config.json` is not valid JSON, not an object, or a field has a bad type or value.
    #[error("invalid adapter_config.json: {0}")]
    InvalidAdapterConfig(String),

    /// `peft_type` is something other than `"LORA"` (LoHa, LoKr, AdaLoRA, IA3, ...).
    #[error(
        "unsupported PEFT type {peft_type:?}: only LoRA adapters (peft_type \"LORA\") are accepted; \
         convert the adapter to LoRA before uploading it"
    )]
    UnsupportedPeftType {
        /// The `peft_type` found in the config.
        peft_type: String,
    },

    /// The tensors do not form a valid LoRA adapter (missing halves, wrong shapes or dtypes, no
    /// LoRA tensors at all).
    #[error("invalid LoRA adapter: {0}")]
    InvalidAdapter(String),

    /// The tensors disagree with `adapter_config.json` (for example the rank).
    #[error("adapter weights do not match adapter_config.json: {0}")]
    AdapterMismatch(String),

    /// A file format the service refuses to read (for example pickled `adapter_model.bin`).
    #[error("unsupported adapter format: {0}")]
    UnsupportedFormat(String),

    /// Reading a file failed.
    #[error("could not read {}: {source}", path.display())]
    Io {
        /// The file or directory that could not be read.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
}

impl FormatError {
    /// A stable snake_case code for the error kind, suitable for API responses.
    pub fn code(&self) -> &'static str {
        match self {
            FormatError::InvalidSafetensors(_) => "invalid_safetensors",
            FormatError::InvalidAdapterConfig(_) => "invalid_adapter_config",
            FormatError::UnsupportedPeftType { .. } => "unsupported_peft_type",
            FormatError::InvalidAdapter(_) => "invalid_adapter",
            FormatError::AdapterMismatch(_) => "adapter_mismatch",
            FormatError::UnsupportedFormat(_) => "unsupported_format",
            FormatError::Io { .. } => "io_error",
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        FormatError::Io {
            path: path.into(),
            source,
        }
    }
}

/// Everything that can stop a merge or compression. Messages name the input, module or parameter.
#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    /// An input directory is not a valid PEFT LoRA adapter.
    #[error("{adapter}: {source}")]
    Input {
        adapter: String,
        #[source]
        source: FormatError,
    },
    /// The inputs cannot be merged together (base model, module shapes, ranks for factor methods).
    #[error("inputs are incompatible: {0}")]
    Incompatible(String),
    /// A feature of the inputs that merging does not handle yet (DoRA, Conv, LoRA bias).
    #[error("{0}")]
    Unsupported(String),
    /// A method name or parameter out of range.
    #[error("invalid merge parameters: {0}")]
    InvalidParam(String),
    /// A NaN or infinite value in an input tensor.
    #[error(
        "{adapter}: tensor {tensor} holds a NaN or infinite value (element {index}); merging it would spread it"
    )]
    NonFinite {
        adapter: String,
        tensor: String,
        index: usize,
    },
    /// A result tensor (merged or compressed factors, in the output dtype) would hold a NaN or
    /// an infinite value: the weights or the inputs' values overflow f32 or the output dtype.
    /// Nothing is written; running again cannot help.
    #[error(
        "{module}: the result's {tensor} would hold a NaN or infinite value (the weights or the inputs' values overflow {dtype}); nothing was written"
    )]
    NonFiniteResult {
        module: String,
        tensor: String,
        dtype: String,
    },
    #[error("could not read or write {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The caller cancelled the run (see [`crate::control::CancelToken`]).
    #[error("cancelled")]
    Cancelled,
    /// The GPU failed (out of memory, a driver or cuBLAS error); running again may succeed.
    #[error("GPU failure: {0}")]
    Device(String),
    /// A decomposition or tensor operation failed.
    #[error("numerical failure in {context}: {message}")]
    Numeric { context: String, message: String },
}

impl MergeError {
    /// True when the inputs or parameters are at fault, so running again cannot succeed.
    pub fn is_permanent(&self) -> bool {
        !matches!(
            self,
            MergeError::Io { .. } | MergeError::Cancelled | MergeError::Device(_)
        )
    }

    pub fn input(adapter: &str, source: FormatError) -> Self {
        MergeError::Input {
            adapter: adapter.to_string(),
            source,
        }
    }

    /// `Err(NonFiniteResult)` when `values` (the result `tensor` of `module`) holds a NaN or an
    /// infinite value.
    pub fn check_finite(module: &str, tensor: &str, values: &[f32]) -> Result<(), MergeError> {
        if values.iter().all(|x| x.is_finite()) {
            Ok(())
        } else {
            Err(MergeError::NonFiniteResult {
                module: module.to_string(),
                tensor: tensor.to_string(),
                dtype: "f32".into(),
            })
        }
    }

    pub fn numeric(context: &str, message: impl std::fmt::Display) -> Self {
        MergeError::Numeric {
            context: context.to_string(),
            message: message.to_string(),
        }
    }
}

impl From<candle_core::Error> for MergeError {
    fn from(e: candle_core::Error) -> Self {
        MergeError::numeric("tensor operation", e)
    }
}
