//! A BERT encoder (the architecture of all-MiniLM-L6-v2 and other sentence-transformers
//! checkpoints) on the CPU, written for embedding rather than taken from a general tensor
//! library: sequences are packed end to end with no padding (attention runs per sequence), the
//! four matrix products of a layer go through `gemm` with the bias as the starting value, the
//! residual add is fused into LayerNorm, and every intermediate lives in a [`Workspace`] that is
//! reused from one call to the next, so a long batch does not fault in fresh pages per step.
//!
//! Weights are read from `model.safetensors` (f32, f16 or bf16; kept as f32) and laid out once
//! at load: each linear layer's weight is transposed to `in × out` and Q, K and V are stacked
//! into one `hidden × 3·hidden` product.

use rayon::prelude::*;
use safetensors::{Dtype, SafeTensors};
use serde::Deserialize;

use crate::RetrieveError;
use crate::kernels::{self, Layout, Mat};

/// The part of a Hugging Face `config.json` a BERT encoder needs.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    #[serde(default = "default_type_vocab")]
    type_vocab_size: usize,
    #[serde(default = "default_eps")]
    layer_norm_eps: f64,
    #[serde(default = "default_act")]
    hidden_act: String,
    #[serde(default = "default_position")]
    position_embedding_type: String,
}

fn default_type_vocab() -> usize {
    2
}
fn default_eps() -> f64 {
    1e-12
}
fn default_act() -> String {
    "gelu".into()
}
fn default_position() -> String {
    "absolute".into()
}

struct Linear {
    /// `in × out`, row-major (the transpose of PyTorch's `out × in`).
    weight: Vec<f32>,
    bias: Vec<f32>,
    inputs: usize,
    outputs: usize,
}

impl Linear {
    /// `out[rows × outputs] = x[rows × inputs] · W + b`.
    fn apply(&self, out: &mut [f32], x: &[f32], rows: usize) {
        kernels::linear(
            out,
            Mat::new(x, rows, self.inputs),
            Mat::new(&self.weight, self.inputs, self.outputs),
            &self.bias,
        );
    }
}

struct Norm {
    gamma: Vec<f32>,
    beta: Vec<f32>,
}

struct Layer {
    qkv: Linear,
    attention_out: Linear,
    attention_norm: Norm,
    up: Linear,
    down: Linear,
    output_norm: Norm,
}

pub(crate) struct Bert {
    hidden: usize,
    heads: usize,
    intermediate: usize,
    max_positions: usize,
    eps: f32,
    word: Vec<f32>,
    position: Vec<f32>,
    /// Token type 0's embedding: sentence embedding never uses another segment.
    token_type: Vec<f32>,
    embedding_norm: Norm,
    layers: Vec<Layer>,
}

/// Buffers for one packed batch, grown as needed and kept between calls.
#[derive(Default)]
pub(crate) struct Workspace {
    x: Vec<f32>,
    qkv: Vec<f32>,
    context: Vec<f32>,
    projected: Vec<f32>,
    inner: Vec<f32>,
}

fn grow(buffer: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if buffer.len() < len {
        buffer.resize(len, 0.0);
    }
    &mut buffer[..len]
}

impl Bert {
    pub fn load(config: &BertConfig, safetensors: &[u8]) -> Result<Self, RetrieveError> {
        if config.hidden_act != "gelu" {
            return Err(model_error(format!(
                "hidden_act {:?} is not supported (only \"gelu\")",
                config.hidden_act
            )));
        }
        if config.position_embedding_type != "absolute" {
            return Err(model_error(format!(
                "position_embedding_type {:?} is not supported (only \"absolute\")",
                config.position_embedding_type
            )));
        }
        let (h, inner) = (config.hidden_size, config.intermediate_size);
        if config.num_attention_heads == 0 || h % config.num_attention_heads != 0 {
            return Err(model_error(format!(
                "hidden_size {h} is not a multiple of num_attention_heads {}",
                config.num_attention_heads
            )));
        }
        let tensors = SafeTensors::deserialize(safetensors)
            .map_err(|e| model_error(format!("model.safetensors: {e}")))?;
        let weights = Weights::new(&tensors);
        let norm = |prefix: &str| -> Result<Norm, RetrieveError> {
            Ok(Norm {
                gamma: weights.get_either(
                    &format!("{prefix}.weight"),
                    &format!("{prefix}.gamma"),
                    &[h],
                )?,
                beta: weights.get_either(
                    &format!("{prefix}.bias"),
                    &format!("{prefix}.beta"),
                    &[h],
                )?,
            })
        };
        let linear =
            |names: &[&str], inputs: usize, outputs: usize| -> Result<Linear, RetrieveError> {
                let mut weight = vec![0f32; inputs * outputs];
                let mut bias = Vec::with_capacity(outputs);
                let mut column = 0;
                for name in names {
                    let part = outputs / names.len();
                    let w = weights.get(&format!("{name}.weight"), &[part, inputs])?;
                    for (o, row) in w.chunks(inputs).enumerate() {
                        for (i, v) in row.iter().enumerate() {
                            weight[i * outputs + column + o] = *v;
                        }
                    }
                    bias.extend(weights.get(&format!("{name}.bias"), &[part])?);
                    column += part;
                }
                Ok(Linear {
                    weight,
                    bias,
                    inputs,
                    outputs,
                })
            };
        let token_types = weights.get(
            "embeddings.token_type_embeddings.weight",
            &[config.type_vocab_size, h],
        )?;
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for l in 0..config.num_hidden_layers {
            let p = format!("encoder.layer.{l}");
            layers.push(Layer {
                qkv: linear(
                    &[
                        &format!("{p}.attention.self.query"),
                        &format!("{p}.attention.self.key"),
                        &format!("{p}.attention.self.value"),
                    ],
                    h,
                    3 * h,
                )?,
                attention_out: linear(&[&format!("{p}.attention.output.dense")], h, h)?,
                attention_norm: norm(&format!("{p}.attention.output.LayerNorm"))?,
                up: linear(&[&format!("{p}.intermediate.dense")], h, inner)?,
                down: linear(&[&format!("{p}.output.dense")], inner, h)?,
                output_norm: norm(&format!("{p}.output.LayerNorm"))?,
            });
        }
        Ok(Self {
            hidden: h,
            heads: config.num_attention_heads,
            intermediate: inner,
            max_positions: config.max_position_embeddings,
            eps: config.layer_norm_eps as f32,
            word: weights.get("embeddings.word_embeddings.weight", &[config.vocab_size, h])?,
            position: weights.get(
                "embeddings.position_embeddings.weight",
                &[config.max_position_embeddings, h],
            )?,
            token_type: token_types[..h].to_vec(),
            embedding_norm: norm("embeddings.LayerNorm")?,
            layers,
        })
    }

    pub fn hidden_size(&self) -> usize {
        self.hidden
    }

    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Mean-pooled (not yet normalised) hidden states of each sequence, packed together in one
    /// pass: one list per entry of `taps` (the number of encoder blocks run before pooling,
    /// 1 to [`Self::num_layers`]; the last is sentence-transformers' output), each with one
    /// vector per sequence. Every sequence must be non-empty and at most
    /// `max_position_embeddings` long.
    pub fn pooled(
        &self,
        sequences: &[&[u32]],
        taps: &[usize],
        work: &mut Workspace,
    ) -> Result<Vec<Vec<Vec<f32>>>, RetrieveError> {
        if let Some(bad) = taps.iter().find(|&&t| t == 0 || t > self.layers.len()) {
            return Err(RetrieveError::Embedding(format!(
                "cannot pool after block {bad} of {}",
                self.layers.len()
            )));
        }
        let h = self.hidden;
        let vocab = self.word.len() / h;
        for ids in sequences {
            if ids.is_empty() || ids.len() > self.max_positions {
                return Err(RetrieveError::Embedding(format!(
                    "a sequence of {} tokens (1 to {} allowed)",
                    ids.len(),
                    self.max_positions
                )));
            }
            if let Some(bad) = ids.iter().find(|&&id| id as usize >= vocab) {
                return Err(RetrieveError::Embedding(format!(
                    "token id {bad} is outside the vocabulary of {vocab}"
                )));
            }
        }
        let tokens: usize = sequences.iter().map(|ids| ids.len()).sum();
        let x = grow(&mut work.x, tokens * h);
        let mut rows = x.chunks_mut(h);
        for ids in sequences {
            for (position, (&id, row)) in ids.iter().zip(rows.by_ref()).enumerate() {
                let word = &self.word[id as usize * h..][..h];
                let pos = &self.position[position * h..][..h];
                for (((out, w), p), t) in row.iter_mut().zip(word).zip(pos).zip(&self.token_type) {
                    *out = w + p + t;
                }
            }
        }
        let norm = &self.embedding_norm;
        kernels::add_layer_norm(x, &[], &norm.gamma, &norm.beta, self.eps);
        let mut pooled = vec![Vec::new(); taps.len()];
        for (done, layer) in self.layers.iter().enumerate() {
            self.layer(layer, sequences, tokens, work);
            for (tap, out) in taps.iter().zip(pooled.iter_mut()) {
                if *tap == done + 1 {
                    *out = mean_per_sequence(&work.x[..tokens * h], h, sequences);
                }
            }
        }
        Ok(pooled)
    }

    fn layer(&self, layer: &Layer, sequences: &[&[u32]], tokens: usize, work: &mut Workspace) {
        let h = self.hidden;
        let Workspace {
            x,
            qkv,
            context,
            projected,
            inner,
        } = work;
        let x = &mut x[..tokens * h];
        let qkv = grow(qkv, tokens * 3 * h);
        layer.qkv.apply(qkv, x, tokens);
        let context = grow(context, tokens * h);
        self.attention(qkv, context, sequences);
        let projected = grow(projected, tokens * h);
        layer.attention_out.apply(projected, context, tokens);
        let norm = &layer.attention_norm;
        kernels::add_layer_norm(x, projected, &norm.gamma, &norm.beta, self.eps);
        let inner = grow(inner, tokens * self.intermediate);
        layer.up.apply(inner, x, tokens);
        kernels::gelu_in_place(inner);
        layer.down.apply(projected, inner, tokens);
        let norm = &layer.output_norm;
        kernels::add_layer_norm(x, projected, &norm.gamma, &norm.beta, self.eps);
    }

    /// Multi-head self-attention of each sequence over its own tokens (so packing needs no
    /// mask), one task per sequence: `context = softmax(Q·Kᵀ/√d)·V` per head.
    fn attention(&self, qkv: &[f32], context: &mut [f32], sequences: &[&[u32]]) {
        let h = self.hidden;
        let d = h / self.heads;
        let scale = 1.0 / (d as f32).sqrt();
        let mut tasks = Vec::with_capacity(sequences.len());
        let mut rest = context;
        let mut start = 0;
        for ids in sequences {
            let (mine, tail) = rest.split_at_mut(ids.len() * h);
            tasks.push((start, ids.len(), mine));
            rest = tail;
            start += ids.len();
        }
        tasks.into_par_iter().for_each(|(start, len, out)| {
            SCORES.with_borrow_mut(|scores| {
                let scores = grow(scores, len * len);
                let rows = &qkv[start * 3 * h..(start + len) * 3 * h];
                for head in 0..self.heads {
                    let view = |offset: usize| Mat {
                        data: &rows[offset + head * d..],
                        rows: len,
                        cols: d,
                        stride: 3 * h,
                    };
                    let (q, k, v) = (view(0), view(h), view(2 * h));
                    kernels::gemm_into(scores, len, q, k, Layout::Transposed, false);
                    for row in scores.chunks_mut(len) {
                        kernels::scaled_softmax_in_place(row, scale);
                    }
                    let p = Mat::new(scores, len, len);
                    kernels::gemm_into(&mut out[head * d..], h, p, v, Layout::AsIs, false);
                }
            });
        });
    }
}

thread_local! {
    /// One sequence's attention scores (at most 256 × 256 floats), per rayon thread.
    static SCORES: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The mean of each sequence's rows of the packed `x` (`h` values per token).
fn mean_per_sequence(x: &[f32], h: usize, sequences: &[&[u32]]) -> Vec<Vec<f32>> {
    let mut pooled = Vec::with_capacity(sequences.len());
    let mut start = 0;
    for ids in sequences {
        let mut sum = vec![0f32; h];
        for row in x[start * h..(start + ids.len()) * h].chunks(h) {
            sum.iter_mut().zip(row).for_each(|(s, v)| *s += v);
        }
        let inv = 1.0 / ids.len() as f32;
        sum.iter_mut().for_each(|s| *s *= inv);
        pooled.push(sum);
        start += ids.len();
    }
    pooled
}

fn model_error(message: String) -> RetrieveError {
    RetrieveError::Model(message)
}

/// Tensor lookup by name, with or without the `bert.` prefix some checkpoints carry, converted
/// to f32 and checked against the shape the config implies.
struct Weights<'a> {
    tensors: &'a SafeTensors<'a>,
    prefix: &'static str,
}

impl<'a> Weights<'a> {
    fn new(tensors: &'a SafeTensors<'a>) -> Self {
        let bare = tensors.tensor("embeddings.word_embeddings.weight").is_ok();
        Self {
            tensors,
            prefix: if bare { "" } else { "bert." },
        }
    }

    fn get(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>, RetrieveError> {
        let full = format!("{}{name}", self.prefix);
        let view = self
            .tensors
            .tensor(&full)
            .map_err(|_| model_error(format!("model.safetensors has no tensor {full}")))?;
        if view.shape() != shape {
            return Err(model_error(format!(
                "{full} has shape {:?}, the config implies {shape:?}",
                view.shape()
            )));
        }
        let bytes = view.data();
        let values = match view.dtype() {
            Dtype::F32 => bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Dtype::F16 => bytes
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::BF16 => bytes
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            other => {
                return Err(model_error(format!(
                    "{full} is {other:?} (f32, f16 or bf16 expected)"
                )));
            }
        };
        Ok(values)
    }

    /// `first`, or the older name `second` (`gamma`/`beta` for LayerNorm).
    fn get_either(
        &self,
        first: &str,
        second: &str,
        shape: &[usize],
    ) -> Result<Vec<f32>, RetrieveError> {
        self.get(first, shape).or_else(|error| {
            if self
                .tensors
                .tensor(&format!("{}{second}", self.prefix))
                .is_ok()
            {
                self.get(second, shape)
            } else {
                Err(error)
            }
        })
    }
}
