//! The route indexes of a process, one per embedder id, each rebuilt when the registry or the
//! profiles change (the registry and profile generations, read on every request, are cheap; a
//! rebuild re-reads the metadata of every routable adapter and fetches only the vectors that
//! changed); and, beside each, the list of adapters still waiting for a profile ([`Pending`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use quiver_retrieve::{Index, IndexItem, Recipe, TermCounts, decode_vectors};
use quiver_store::{JobState, MetadataStore, ProfileSource, RoutingGenerations, StoreError};

use crate::jobs::embed::{EmbedSource, EmbedSpec};

/// Pending versions read per look at most (the pending list of a route is taken from these, in
/// owner/name order: with more, some are left out of every route's list).
pub const MAX_PENDING_SCAN: u32 = 10_000;

/// What a route result names, and what filters and visibility look at.
#[derive(Clone, Debug)]
pub struct Entry {
    pub adapter: String,
    pub owner: String,
    pub base_model: String,
    pub private: bool,
    pub tags: Vec<String>,
    pub version: i64,
    pub revision: String,
    /// What the profile is made from (for a pending version: what it will be made from).
    pub source: ProfileSource,
}

pub struct Built {
    /// (registry generation, profile generation) the index was built at.
    generation: (i64, i64),
    pub index: Index<Entry>,
    /// `owner/name` → the version the index holds for it.
    versions: HashMap<String, i64>,
}

impl Built {
    /// The version of `adapter` this index routes to, if any.
    pub fn version_of(&self, adapter: &str) -> Option<i64> {
        self.versions.get(adapter).copied()
    }
}

/// One version waiting for a profile of an index's embedder: its newest embed job is queued,
/// running or failed, and neither it nor a newer version of its adapter has a profile.
#[derive(Clone, Debug)]
pub struct PendingEntry {
    /// The adapter and version, with what filters and visibility look at.
    pub entry: Entry,
    pub state: JobState,
    pub job: String,
    pub error: Option<String>,
}

/// The pending versions of one embedder, at most one per adapter, in owner/name order.
///
/// Kept beside the index and keyed by all three [`RoutingGenerations`]: what can make a version
/// pending or not pending is an upload or a change to the registry (registry generation), a
/// profile written (profile generation), or an embed job queued or changing state (embed-job
/// generation, bumped by a trigger on `jobs` for embed jobs only). A route reads the three in
/// one query, which it needs for the index anyway (it read two before, in two queries), and runs
/// the pending query only when one of them moved since the last look: a plain route on a quiet
/// registry makes no pending query at all, and when nothing is pending it filters an empty list.
pub struct Pending {
    generations: RoutingGenerations,
    pub entries: Vec<PendingEntry>,
}

/// A decoded profile: its rows, and the terms of its texts for BM25 (none: dense only).
struct Profile {
    rows: Vec<Vec<f32>>,
    terms: Option<TermCounts>,
}

type Vectors = Arc<Profile>;

pub struct RouteIndexes {
    recipe: Recipe,
    /// BM25's weight beside the dense score (`--route-lexical-weight`).
    lexical_weight: f32,
    built: Mutex<HashMap<String, Arc<Built>>>,
    /// Decoded profiles by (embedder, version id), with the `updated_at` they were read at. The
    /// lock also makes rebuilds single-flight.
    vectors: tokio::sync::Mutex<HashMap<(String, i64), (i64, Vectors)>>,
    pending: Mutex<HashMap<String, Arc<Pending>>>,
    /// Makes pending looks single-flight.
    pending_look: tokio::sync::Mutex<()>,
}

impl RouteIndexes {
    pub fn new(recipe: Recipe, lexical_weight: f32) -> Self {
        Self {
            recipe,
            lexical_weight,
            built: Mutex::new(HashMap::new()),
            vectors: tokio::sync::Mutex::new(HashMap::new()),
            pending: Mutex::new(HashMap::new()),
            pending_look: tokio::sync::Mutex::new(()),
        }
    }

    fn current_pending(
        &self,
        embedder: &str,
        generations: RoutingGenerations,
    ) -> Option<Arc<Pending>> {
        let pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        pending
            .get(embedder)
            .filter(|p| p.generations == generations)
            .cloned()
    }

    /// The versions waiting for a profile of `embedder` as of `generations` (read by the
    /// caller before calling, so that the list is at least as new as its key). Jobs queued for
    /// another embedder (their spec names it) are left out.
    pub async fn pending(
        &self,
        meta: &dyn MetadataStore,
        embedder: &str,
        generations: RoutingGenerations,
    ) -> Result<Arc<Pending>, StoreError> {
        if let Some(pending) = self.current_pending(embedder, generations) {
            return Ok(pending);
        }
        let _look = self.pending_look.lock().await;
        if let Some(pending) = self.current_pending(embedder, generations) {
            return Ok(pending);
        }
        let entries: Vec<PendingEntry> = meta
            .pending_profiles(embedder, MAX_PENDING_SCAN)
            .await?
            .into_iter()
            .filter_map(|p| {
                let spec = serde_json::from_value::<EmbedSpec>(p.spec.clone()).ok()?;
                (spec.embedder == embedder).then_some((p, spec.source))
            })
            .map(|(p, source)| PendingEntry {
                entry: Entry {
                    adapter: format!("{}/{}", p.owner, p.name),
                    owner: p.owner,
                    base_model: p.base_model,
                    private: p.private,
                    tags: p.tags,
                    version: p.number,
                    revision: p.revision,
                    source: match source {
                        EmbedSource::Samples => ProfileSource::Samples,
                        EmbedSource::Card => ProfileSource::Card,
                    },
                },
                state: p.job_state,
                job: p.job_id,
                error: p.error,
            })
            .collect();
        let pending = Arc::new(Pending {
            generations,
            entries,
        });
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(embedder.to_string(), pending.clone());
        Ok(pending)
    }

    fn current(&self, embedder: &str, generation: (i64, i64)) -> Option<Arc<Built>> {
        let built = self.built.lock().unwrap_or_else(|e| e.into_inner());
        built
            .get(embedder)
            .filter(|b| b.generation == generation)
            .cloned()
    }

    /// The index of `embedder`'s profiles as of now.
    pub async fn get(
        &self,
        meta: &dyn MetadataStore,
        embedder: &str,
    ) -> Result<Arc<Built>, StoreError> {
        // Read before the data: the index is at least as new as the generation it is filed under.
        let generations = meta.routing_generations().await?;
        self.get_at(meta, embedder, generations).await
    }

    /// The index of `embedder`'s profiles as of `generations` (read by the caller before the
    /// call: the index is at least as new as the generation it is filed under).
    pub async fn get_at(
        &self,
        meta: &dyn MetadataStore,
        embedder: &str,
        generations: RoutingGenerations,
    ) -> Result<Arc<Built>, StoreError> {
        let generation = (generations.registry, generations.profiles);
        if let Some(built) = self.current(embedder, generation) {
            return Ok(built);
        }
        let mut cache = self.vectors.lock().await;
        if let Some(built) = self.current(embedder, generation) {
            return Ok(built);
        }
        let routable = meta.routable_profiles(embedder).await?;
        let stale: Vec<i64> = routable
            .iter()
            .filter(|p| {
                cache
                    .get(&(embedder.to_string(), p.version_id))
                    .map(|(updated, _)| *updated)
                    != Some(p.updated_at)
            })
            .map(|p| p.version_id)
            .collect();
        let dims: HashMap<i64, (i64, usize)> = routable
            .iter()
            .map(|p| (p.version_id, (p.updated_at, p.dim.max(0) as usize)))
            .collect();
        for stored in meta.profile_vectors(&stale).await? {
            let version_id = stored.version_id;
            let Some(&(updated_at, dim)) = dims.get(&version_id) else {
                continue;
            };
            // Terms that do not parse cost the adapter its lexical score, not its place.
            let terms = stored.terms.and_then(|t| {
                serde_json::from_str::<TermCounts>(&t)
                    .inspect_err(
                        |e| tracing::warn!(version_id, error = %e, "unreadable profile terms"),
                    )
                    .ok()
            });
            match decode_vectors(&stored.vectors, dim) {
                Ok(rows) => {
                    cache.insert(
                        (embedder.to_string(), version_id),
                        (updated_at, Arc::new(Profile { rows, terms })),
                    );
                }
                Err(e) => tracing::warn!(version_id, error = %e, "unreadable profile left out"),
            }
        }
        cache.retain(|(e, id), _| e != embedder || dims.contains_key(id));
        // One embedder, one dimension: profiles of another length (uploaded by mistake under
        // this embedder's id) are left out by the index.
        let dim = routable.first().map_or(0, |p| p.dim.max(0) as usize);
        let items: Vec<IndexItem<Entry>> = routable
            .into_iter()
            .filter_map(|p| {
                let (_, profile) = cache.get(&(embedder.to_string(), p.version_id))?;
                Some(IndexItem {
                    samples: profile.rows.clone(),
                    terms: profile.terms.clone(),
                    meta: Entry {
                        adapter: format!("{}/{}", p.owner, p.name),
                        owner: p.owner,
                        base_model: p.base_model,
                        private: p.private,
                        tags: p.tags,
                        version: p.number,
                        revision: p.revision,
                        source: p.source,
                    },
                })
            })
            .collect();
        let versions: HashMap<String, i64> = items
            .iter()
            .map(|item| (item.meta.adapter.clone(), item.meta.version))
            .collect();
        let (recipe, lexical_weight) = (self.recipe, self.lexical_weight);
        let index = tokio::task::spawn_blocking(move || {
            Index::build_with(dim, recipe, items, &|e: &Entry| !e.private)
                .with_lexical_weight(lexical_weight)
        })
        .await
        .map_err(|e| StoreError::Invalid(format!("building the route index: {e}")))?;
        tracing::debug!(
            embedder,
            adapters = index.len(),
            rows = index.row_count(),
            "route index rebuilt"
        );
        let built = Arc::new(Built {
            generation,
            index,
            versions,
        });
        self.built
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(embedder.to_string(), built.clone());
        drop(cache);
        Ok(built)
    }
}
