use std::sync::Arc;

use quiver_store::Store;

use crate::list_cache::ListCache;
use crate::metrics::Metrics;

/// Everything a handler needs; cloned into each worker as `web::Data`.
pub struct AppState {
    pub store: Store,
    pub max_upload_bytes: u64,
    pub metrics: Arc<Metrics>,
    pub list_cache: ListCache,
    /// Adapters kept between listing pages.
    pub list_fragments: crate::list_fragments::FragmentCache,
    /// Wakes this process's idle job workers when a handler queues a job.
    pub job_wake: Arc<tokio::sync::Notify>,
    pub routing: Arc<crate::routing::Routing>,
    /// Which remote images model cards may show (`--card-image-hosts`).
    pub card_images: crate::card::ImagePolicy,
    /// Webhook settings (`--webhook-allow-private` is checked when subscriptions are made).
    pub webhooks: crate::events::WebhookOptions,
    /// Sign-in through an authenticating proxy on the web pages (`--auth-proxy-*`); `None`: off.
    pub auth_proxy: Option<Arc<crate::auth_proxy::ProxyAuth>>,
}
