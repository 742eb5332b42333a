//! `embed` jobs: a version's profile from its `samples.jsonl`, with this worker's embedder.

use futures::TryStreamExt;
use quiver_retrieve::{Batcher, encode_vectors, parse_samples};
use quiver_store::{Lease, NewProfile, ProfileSource};
use serde_json::json;

use super::Shared;
use super::outcome::Failure;
pub use super::spec::EmbedSpec;

/// Embeds the samples and stores the profile with the job's success; returns
/// (adapter, version number, seconds reading, seconds embedding).
pub(super) async fn execute(
    shared: &Shared,
    embedder: &Batcher,
    spec: EmbedSpec,
    lease: &Lease,
) -> Result<(String, i64, [f64; 2]), Failure> {
    let started = std::time::Instant::now();
    let chunks: Vec<bytes::Bytes> = shared
        .store
        .blobs
        .get(&spec.samples_sha256, None)
        .await?
        .try_collect()
        .await?;
    let bytes = chunks.concat();
    let samples = parse_samples(&bytes).map_err(|e| Failure::Permanent(e.to_string()))?;
    let read_s = started.elapsed().as_secs_f64();
    let vectors = embedder
        .embed(samples)
        .await
        .map_err(|e| Failure::Transient(e.to_string()))?;
    let embed_s = started.elapsed().as_secs_f64() - read_s;
    let model = embedder.embedder();
    let profile = NewProfile {
        embedder: model.id().to_string(),
        dim: model.dim() as i64,
        count: vectors.len() as i64,
        source: ProfileSource::Samples,
        samples_sha256: Some(spec.samples_sha256.clone()),
        vectors: encode_vectors(&vectors),
    };
    let report = json!({"embedder": model.id(), "samples": vectors.len(), "dim": model.dim()});
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
