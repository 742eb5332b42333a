//! Routing profiles: records and the [`ProfileStore`] capability. The vectors are opaque bytes
//! here (little-endian f32 rows); `quiver-retrieve` gives them meaning.

use async_trait::async_trait;

use super::{JobState, Lease, ParentVersion};
use crate::StoreError;

/// The file a version's routing samples are stored under (the same name as
/// `quiver_retrieve::SAMPLES_FILE`, which checks its content; the store does not depend on it).
pub const SAMPLES_FILE: &str = "samples.jsonl";
/// The file a version's model card is stored under (the Hub's name): a version with one and no
/// [`SAMPLES_FILE`] gets a profile from the card's text.
pub const CARD_FILE: &str = "README.md";

string_enum!(
    /// Where a profile's vectors came from: the version's samples, an uploaded vector, or the
    /// text of its model card (when it has no samples).
    ProfileSource { Samples = "samples", Uploaded = "uploaded", Card = "card" }
);

/// A profile to store.
#[derive(Clone, Debug)]
pub struct NewProfile {
    pub embedder: String,
    pub dim: i64,
    pub count: i64,
    pub source: ProfileSource,
    pub samples_sha256: Option<String>,
    pub vectors: Vec<u8>,
    /// The terms of the texts the vectors were embedded from, as `quiver-retrieve`'s
    /// `TermCounts` JSON (BM25 beside the dense score); `None` for uploaded vectors.
    pub terms: Option<String>,
}

/// A profile's rows and terms, as a route index loads them.
#[derive(Clone, Debug)]
pub struct StoredVectors {
    pub version_id: i64,
    /// Little-endian f32 rows.
    pub vectors: Vec<u8>,
    /// [`NewProfile::terms`].
    pub terms: Option<String>,
}

/// A stored profile, without its vectors. A `card` profile of no rows (`count` 0) records that
/// a version's card had nothing to embed: it is never routed, and [`ProfileStore::profile_info`]
/// does not return it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProfileInfo {
    pub version_id: i64,
    pub embedder: String,
    pub dim: i64,
    pub count: i64,
    pub source: ProfileSource,
    pub samples_sha256: Option<String>,
    pub updated_at: i64,
}

/// What a route index holds for one adapter: its newest version with a profile of the index's
/// embedder, and what filters and visibility need. Vectors are fetched separately (and only when
/// they changed).
#[derive(Clone, Debug)]
pub struct RoutableProfile {
    pub adapter_id: i64,
    pub owner: String,
    pub name: String,
    pub base_model: String,
    pub private: bool,
    pub tags: Vec<String>,
    pub version_id: i64,
    pub number: i64,
    pub revision: String,
    pub dim: i64,
    pub source: ProfileSource,
    pub updated_at: i64,
}

/// A ready version whose samples (or, without samples, model card) have no profile of the given
/// embedder (missing, or made by another embedder).
#[derive(Clone, Debug)]
pub struct StaleProfile {
    pub version_id: i64,
    pub version: ParentVersion,
    /// `Samples` ([`SAMPLES_FILE`]) or `Card` ([`CARD_FILE`]): what the profile is made from.
    pub source: ProfileSource,
    /// The sha256 of that file.
    pub file_sha256: String,
    pub created_by: String,
    /// When the stale profile was written (`None`: there is none), so that each stale state
    /// gets its own job.
    pub profile_updated_at: Option<i64>,
}

/// The counters a route's caches are keyed by, read together (one query): the registry
/// generation (anything a listing shows), the profile generation (any profile written or
/// deleted) and the embed-job generation (an embed job queued, or its state changed).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RoutingGenerations {
    pub registry: i64,
    pub profiles: i64,
    pub embed_jobs: i64,
}

/// A ready version that has no profile of an embedder (and no newer version of its adapter
/// has one) because its newest embed job is queued, running or failed.
#[derive(Clone, Debug)]
pub struct PendingProfile {
    pub adapter_id: i64,
    pub owner: String,
    pub name: String,
    pub base_model: String,
    pub private: bool,
    pub tags: Vec<String>,
    pub version_id: i64,
    pub number: i64,
    pub revision: String,
    pub job_id: String,
    /// `Queued`, `Running` or `Failed`.
    pub job_state: JobState,
    /// The job's error (a failure's, or the last attempt's of a job queued again).
    pub error: Option<String>,
    /// The job's spec, as queued (it names the embedder it was queued for).
    pub spec: serde_json::Value,
}

#[async_trait]
pub trait ProfileStore: Send + Sync {
    /// Stores (replaces) a version's profile.
    async fn put_profile(&self, version_id: i64, profile: &NewProfile) -> Result<(), StoreError>;
    /// Stores a profile computed by an `embed` job and marks the job succeeded, in one
    /// transaction fenced by the lease (`StoreError::LeaseLost` and nothing written otherwise).
    async fn finish_embed_job(
        &self,
        lease: &Lease,
        version_id: i64,
        profile: &NewProfile,
        report: &serde_json::Value,
    ) -> Result<(), StoreError>;
    /// A version's profile; `None` also for a card's profile of no rows.
    async fn profile_info(&self, version_id: i64) -> Result<Option<ProfileInfo>, StoreError>;
    /// The rows and terms of these versions' profiles.
    async fn profile_vectors(&self, version_ids: &[i64]) -> Result<Vec<StoredVectors>, StoreError>;
    /// One entry per adapter that has a profile of `embedder` with rows (its newest such
    /// version).
    async fn routable_profiles(&self, embedder: &str) -> Result<Vec<RoutableProfile>, StoreError>;
    /// Ready versions with samples, or with a card and no samples (and not made by a job: those
    /// cards are Quiver's own, about the recipe), whose profile of `embedder` is missing or
    /// stale, oldest first, at most `limit`. A card-only version whose profile was uploaded (of
    /// any embedder) is left alone: an uploaded vector outranks a card.
    async fn stale_profiles(
        &self,
        embedder: &str,
        limit: u32,
    ) -> Result<Vec<StaleProfile>, StoreError>;
    /// Changes whenever a profile is written or deleted, by any process.
    async fn profile_generation(&self) -> Result<i64, StoreError>;
    /// The registry, profile and embed-job generations, in one query.
    async fn routing_generations(&self) -> Result<RoutingGenerations, StoreError>;
    /// Versions waiting for a profile of `embedder` ([`PendingProfile`]): at most one per adapter
    /// (its newest such version), ordered by owner and name, at most `limit`. One query (and one
    /// for the tags of what it found).
    async fn pending_profiles(
        &self,
        embedder: &str,
        limit: u32,
    ) -> Result<Vec<PendingProfile>, StoreError>;
}
