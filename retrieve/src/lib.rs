//! Routing of prompts to adapters, LoraRetriever-style: a sentence embedder run in-process
//! ([`Embedder`], batched by [`Batcher`]), adapter profiles built from their routing samples
//! ([`Recipe`]), and an in-memory vector index with an int8 scan and an exact re-rank
//! ([`Index`]). Storage and HTTP live elsewhere (`quiver-store`, `quiver-api`).

mod batcher;
mod bert;
mod card;
mod embedder;
mod index;
mod kernels;
mod lexical;
mod mix;
mod profile;
mod samples;
mod scan;

pub use batcher::Batcher;
pub use card::{MAX_CARD_TEXTS, card_texts};
pub use embedder::{Embedder, Pooling, normalized};
pub use index::{Hit, Index, IndexItem};
pub use lexical::{DEFAULT_LEXICAL_WEIGHT, MAX_TERMS, TermCounts, terms};
pub use mix::{Weighting, mixture_weights};
pub use profile::{Recipe, centroid, checked_vector, decode_vectors, encode_vectors};
pub use samples::{MAX_INPUT_BYTES, MAX_SAMPLES, MAX_SAMPLES_BYTES, SAMPLES_FILE, parse_samples};

#[derive(Debug, thiserror::Error)]
pub enum RetrieveError {
    /// The model directory is missing a file or holds something unusable.
    #[error("embedder model: {0}")]
    Model(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("embedding failed: {0}")]
    Embedding(String),
    #[error("the embedding thread has stopped")]
    Stopped,
    /// A `samples.jsonl` that breaks the rules (the message names the line).
    #[error("{0}")]
    Samples(String),
    /// A vector of the wrong length or with non-finite values.
    #[error("{0}")]
    Vector(String),
}
