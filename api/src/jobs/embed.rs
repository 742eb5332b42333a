//! `embed` jobs: a version's profile from its `samples.jsonl`, or (a version with no samples)
//! from its model card's text, with this worker's embedder.

use futures::StreamExt;
use quiver_retrieve::{Batcher, TermCounts, card_texts, encode_vectors, parse_samples};
use quiver_store::{Lease, NewProfile, ProfileSource};
use serde_json::json;

use super::Shared;
use super::outcome::Failure;
pub use super::spec::{EmbedSource, EmbedSpec};

/// Bytes of a card read at most (as many as the web page renders): descriptions come first, and
/// a longer README is read no further.
pub const MAX_CARD_READ: usize = crate::card::MAX_CARD_BYTES;

/// Embeds the samples (or the card's texts) and stores the profile with the job's success;
/// returns (adapter, version number, seconds reading, seconds embedding).
///
/// A card with nothing to embed (a template, say) is stored as a profile of no rows: never
/// routed or shown, but it tells the reconciler that this version was looked at, so that it is
/// not queued again at every look (a job that ended without writing anything would leave the
/// version stale for ever, taking one of the reconciler's places each time).
pub(super) async fn execute(
    shared: &Shared,
    embedder: &Batcher,
    spec: EmbedSpec,
    lease: &Lease,
) -> Result<(String, i64, [f64; 2]), Failure> {
    let started = std::time::Instant::now();
    let limit = match spec.source {
        EmbedSource::Samples => usize::MAX, // bounded on upload (quiver_retrieve::MAX_SAMPLES_BYTES)
        EmbedSource::Card => MAX_CARD_READ,
    };
    let mut bytes: Vec<u8> = Vec::new();
    let mut chunks = shared.store.blobs.get(&spec.samples_sha256, None).await?;
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk?;
        let room = limit - bytes.len();
        bytes.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if bytes.len() >= limit {
            break;
        }
    }
    drop(chunks);
    let (texts, source) = match spec.source {
        EmbedSource::Samples => (
            parse_samples(&bytes).map_err(|e| Failure::Permanent(e.to_string()))?,
            ProfileSource::Samples,
        ),
        EmbedSource::Card => (
            card_texts(&String::from_utf8_lossy(&bytes)),
            ProfileSource::Card,
        ),
    };
    let read_s = started.elapsed().as_secs_f64();
    let terms = (!texts.is_empty())
        .then(|| serde_json::to_string(&TermCounts::of(&texts)))
        .transpose()
        .map_err(|e| Failure::Permanent(e.to_string()))?;
    let vectors = if texts.is_empty() {
        Vec::new()
    } else {
        embedder
            .embed(texts)
            .await
            .map_err(|e| Failure::Transient(e.to_string()))?
    };
    let embed_s = started.elapsed().as_secs_f64() - read_s;
    let model = embedder.embedder();
    let profile = NewProfile {
        embedder: model.id().to_string(),
        dim: model.dim() as i64,
        count: vectors.len() as i64,
        source,
        samples_sha256: Some(spec.samples_sha256.clone()),
        vectors: encode_vectors(&vectors),
        terms,
    };
    let report = match spec.source {
        EmbedSource::Samples => {
            json!({"embedder": model.id(), "samples": vectors.len(), "dim": model.dim()})
        }
        EmbedSource::Card if vectors.is_empty() => json!({
            "embedder": model.id(), "source": "card", "texts": 0,
            "note": "the model card has no text about what the adapter does (only a template, code, tables or sections such as training details): no profile",
        }),
        EmbedSource::Card => json!({
            "embedder": model.id(), "source": "card", "texts": vectors.len(), "dim": model.dim(),
        }),
    };
    shared
        .store
        .meta
        .finish_embed_job(lease, spec.version_id, &profile, &report)
        .await?;
    Ok((
        spec.version.adapter,
        spec.version.version,
        [read_s, embed_s],
    ))
}
