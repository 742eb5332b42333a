//! The route indexes of a process, one per embedder id, each rebuilt when the registry or the
//! profiles change (the registry and profile generations, read on every request, are cheap; a
//! rebuild re-reads the metadata of every routable adapter and fetches only the vectors that
//! changed).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use quiver_retrieve::{Index, IndexItem, Recipe, decode_vectors};
use quiver_store::{MetadataStore, StoreError};

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
}

pub struct Built {
    /// (registry generation, profile generation) the index was built at.
    generation: (i64, i64),
    pub index: Index<Entry>,
}

type Vectors = Arc<Vec<Vec<f32>>>;

pub struct RouteIndexes {
    recipe: Recipe,
    built: Mutex<HashMap<String, Arc<Built>>>,
    /// Decoded profiles by (embedder, version id), with the `updated_at` they were read at. The
    /// lock also makes rebuilds single-flight.
    vectors: tokio::sync::Mutex<HashMap<(String, i64), (i64, Vectors)>>,
}

impl RouteIndexes {
    pub fn new(recipe: Recipe) -> Self {
        Self {
            recipe,
            built: Mutex::new(HashMap::new()),
            vectors: tokio::sync::Mutex::new(HashMap::new()),
        }
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
        let generation = (
            meta.listing_generation().await?,
            meta.profile_generation().await?,
        );
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
        for (version_id, bytes) in meta.profile_vectors(&stale).await? {
            let Some(&(updated_at, dim)) = dims.get(&version_id) else {
                continue;
            };
            match decode_vectors(&bytes, dim) {
                Ok(rows) => {
                    cache.insert(
                        (embedder.to_string(), version_id),
                        (updated_at, Arc::new(rows)),
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
                let (_, rows) = cache.get(&(embedder.to_string(), p.version_id))?;
                Some(IndexItem {
                    samples: rows.as_ref().clone(),
                    meta: Entry {
                        adapter: format!("{}/{}", p.owner, p.name),
                        owner: p.owner,
                        base_model: p.base_model,
                        private: p.private,
                        tags: p.tags,
                        version: p.number,
                        revision: p.revision,
                    },
                })
            })
            .collect();
        let recipe = self.recipe;
        let index = tokio::task::spawn_blocking(move || {
            Index::build_with(dim, recipe, items, &|e: &Entry| !e.private)
        })
        .await
        .map_err(|e| StoreError::Invalid(format!("building the route index: {e}")))?;
        tracing::debug!(
            embedder,
            adapters = index.len(),
            rows = index.row_count(),
            "route index rebuilt"
        );
        let built = Arc::new(Built { generation, index });
        self.built
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(embedder.to_string(), built.clone());
        drop(cache);
        Ok(built)
    }
}
