//! PEFT tensor-name grammar (algorithms.md §10.1, "safetensors key naming").
//!
//! On disk a PEFT LoRA tensor is named `[base_model.model.]<module path>.<suffix>`, where the
//! suffix identifies the tensor's role. The `base_model.model.` prefix is optional (the
//! Diffusers/Transformers integrations omit it) and is stripped from the module path.

/// Optional wrapper prefix that PEFT puts in front of module paths.
pub const PEFT_PREFIX: &str = "base_model.model.";

/// What a tensor is within a LoRA adapter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TensorRole {
    /// `…lora_A.weight`: `[r, d_in]` (conv: `[r, in, k…]`).
    A,
    /// `…lora_B.weight`: `[d_out, r]` (conv: `[out, r, 1…]`).
    B,
    /// `…lora_embedding_A`: `[r, num_embeddings]`.
    EmbA,
    /// `…lora_embedding_B`: `[embedding_dim, r]`.
    EmbB,
    /// `…lora_magnitude_vector` (DoRA), also accepted with a `.weight` suffix.
    Magnitude,
    /// `…lora_B.bias` (`lora_bias = true`).
    BBias,
    /// Anything else (`modules_to_save`, biases, foreign formats).
    Other,
}

impl TensorRole {
    /// The PEFT suffix of the role (without the leading dot); empty for [`TensorRole::Other`].
    pub fn suffix(self) -> &'static str {
        match self {
            TensorRole::A => "lora_A.weight",
            TensorRole::B => "lora_B.weight",
            TensorRole::EmbA => "lora_embedding_A",
            TensorRole::EmbB => "lora_embedding_B",
            TensorRole::Magnitude => "lora_magnitude_vector",
            TensorRole::BBias => "lora_B.bias",
            TensorRole::Other => "",
        }
    }
}

const SUFFIXES: [(&str, TensorRole); 7] = [
    (".lora_A.weight", TensorRole::A),
    (".lora_B.weight", TensorRole::B),
    (".lora_B.bias", TensorRole::BBias),
    (".lora_embedding_A", TensorRole::EmbA),
    (".lora_embedding_B", TensorRole::EmbB),
    (".lora_magnitude_vector", TensorRole::Magnitude),
    (".lora_magnitude_vector.weight", TensorRole::Magnitude),
];

/// Splits a tensor name into `(module path, role)`.
///
/// The module path has the `base_model.model.` prefix removed. For [`TensorRole::Other`] the
/// "module path" is the whole name minus that prefix. A LoRA suffix with an empty module path
/// (e.g. a bare `lora_A.weight`) is `Other`.
pub fn split_key(name: &str) -> (&str, TensorRole) {
    let stripped = name.strip_prefix(PEFT_PREFIX).unwrap_or(name);
    for (suffix, role) in SUFFIXES {
        if let Some(path) = stripped.strip_suffix(suffix)
            && !path.is_empty()
        {
            return (path, role);
        }
    }
    (stripped, TensorRole::Other)
}

/// The last component of a module path (`model.layers.0.self_attn.q_proj` → `q_proj`).
pub fn leaf_name(module_path: &str) -> &str {
    module_path.rsplit('.').next().unwrap_or(module_path)
}
