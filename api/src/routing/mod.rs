//! Routing (LoraRetriever-style): the process's embedder, the route indexes and the upkeep of
//! profiles. The HTTP side is `routes::route` and `routes::profiles`; embed jobs run in
//! `jobs::embed`.
//!
//! Profiles are computed by `embed` jobs. A process with an embedder looks for versions whose
//! samples (or, without samples, model card) have no profile of its embedder (new versions, or
//! profiles of another embedder) at start, every [`reconcile::EVERY`] (15 s), and right after it
//! publishes a version with samples or a card, and queues a job for each; only workers with an
//! embedder claim them.

pub mod index;
pub mod reconcile;

use std::path::Path;
use std::sync::Arc;

use quiver_retrieve::{Batcher, Embedder, Pooling, Recipe};
use tokio::sync::Notify;

/// How this process routes.
#[derive(Clone, Debug)]
pub struct RoutingOptions {
    /// The embedder (`--embedder-dir`); `None`: routing needs request vectors, and no profile is
    /// computed here.
    pub embedder: Option<Batcher>,
    /// How profiles are scored (`--profile-recipe`).
    pub recipe: Recipe,
    /// BM25's weight beside the dense score (`--route-lexical-weight`; 0: dense only).
    pub lexical_weight: f32,
    /// How often the reconciler looks for stale profiles ([`reconcile::EVERY`]).
    pub reconcile_every: std::time::Duration,
}

impl Default for RoutingOptions {
    fn default() -> Self {
        Self {
            embedder: None,
            recipe: Recipe::DEFAULT,
            lexical_weight: quiver_retrieve::DEFAULT_LEXICAL_WEIGHT,
            reconcile_every: reconcile::EVERY,
        }
    }
}

impl RoutingOptions {
    /// Loads the embedder from a sentence-transformers directory and starts its thread.
    pub fn load(
        dir: Option<&Path>,
        pooling: Pooling,
        recipe: Recipe,
        lexical_weight: f32,
    ) -> Result<Self, quiver_retrieve::RetrieveError> {
        let embedder = match dir {
            Some(dir) => {
                let started = std::time::Instant::now();
                let embedder = Embedder::load_with(dir, pooling)?;
                tracing::info!(
                    embedder = embedder.id(),
                    dim = embedder.dim(),
                    seconds = started.elapsed().as_secs_f64(),
                    "embedder loaded from {}",
                    dir.display()
                );
                Some(Batcher::start(Arc::new(embedder))?)
            }
            None => {
                tracing::info!(
                    "no embedder configured (--embedder-dir / QUIVER_EMBEDDER_DIR): routing needs request vectors, and profiles are not computed by this process"
                );
                None
            }
        };
        Ok(Self {
            embedder,
            recipe,
            lexical_weight,
            ..Self::default()
        })
    }

    pub fn embedder_id(&self) -> Option<&str> {
        self.embedder.as_ref().map(|b| b.embedder().id())
    }
}

/// The routing state a process shares between its handlers and its background work.
pub struct Routing {
    pub options: RoutingOptions,
    pub indexes: index::RouteIndexes,
    /// Asks the reconciler to look for stale profiles now.
    pub reconcile: Arc<Notify>,
}

impl Routing {
    pub fn new(options: RoutingOptions) -> Self {
        let indexes = index::RouteIndexes::new(options.recipe, options.lexical_weight);
        Self {
            options,
            indexes,
            reconcile: Arc::new(Notify::new()),
        }
    }

    /// Called after a version is published: if it carries samples or a model card, profile it
    /// soon.
    pub fn version_published(&self, files: &[quiver_store::FileRecord]) {
        if self.options.embedder.is_some()
            && files.iter().any(|f| {
                f.path == quiver_retrieve::SAMPLES_FILE || f.path == quiver_store::CARD_FILE
            })
        {
            self.reconcile.notify_one();
        }
    }
}
