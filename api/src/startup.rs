//! Builds the HTTP server so that `main` and the tests start it the same way (port 0 in tests).

use std::net::TcpListener;
use std::sync::Arc;

use actix_web::dev::Server;
use actix_web::middleware::{ErrorHandlers, from_fn};
use actix_web::{App, HttpResponse, HttpServer, web};
use quiver_store::Store;
use utoipa::OpenApi;
use utoipa_actix_web::AppExt;
use utoipa_swagger_ui::SwaggerUi;

use tokio::sync::Notify;

use crate::background::Background;
use crate::config::{HttpOptions, ServerSettings};
use crate::http::openapi::ApiDoc;
use crate::http::route_table::RouteTable;
use crate::http::routes;
use crate::jobs::WorkerOptions;
use crate::list_cache::ListCache;
use crate::metrics::Metrics;
use crate::routing::{Routing, RoutingOptions};
use crate::state::AppState;

/// Largest body read whole into memory outside the JSON extractor (`web::Bytes`).
pub const MAX_BUFFERED_BODY: usize = 256 * 1024;

/// Raises this process's open-file soft limit to its hard limit (each connection, blob file and
/// database connection holds a descriptor; the usual soft limit of 1024 ran out under ~1000
/// slow clients), and says what the limit is and whether the connection cap fits in it.
pub fn raise_fd_limit(http: &HttpOptions) -> Option<u64> {
    let limit = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => limit,
        Err(e) => {
            tracing::warn!(error = %e, "could not raise the open-file limit");
            return None;
        }
    };
    let workers = http
        .workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from));
    let connections = http.clients.max_connections.saturating_mul(workers as u64);
    tracing::info!(
        limit,
        connections,
        "open-file limit raised to the hard limit"
    );
    if connections.saturating_add(256) > limit {
        tracing::warn!(
            limit,
            connections,
            "--max-connections × --workers (+256 for files and storage) exceeds the open-file \
             limit: raise the hard limit (ulimit -Hn, LimitNOFILE=) or lower --max-connections"
        );
    }
    Some(limit)
}

pub struct Application {
    port: u16,
    server: Server,
    background: Background,
    pub store: Store,
}

/// Why the service could not start; the message says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("cannot open the storage ({0}); check --database-url and --store-url")]
    Store(#[from] quiver_store::StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("cannot start the job workers: {0}")]
    Workers(std::io::Error),
    #[error("cannot load the embedder ({0}); check --embedder-dir")]
    Embedder(#[from] quiver_retrieve::RetrieveError),
}

impl Application {
    /// Opens the store (running migrations) and binds the listener.
    pub async fn build(settings: ServerSettings) -> Result<Self, StartupError> {
        raise_fd_limit(&settings.http);
        let store = Store::open(&settings.store).await?;
        // Own this process's staged uploads, so the next start can tell they were abandoned.
        store.blobs.claim_staging_soon().await;
        let listener = TcpListener::bind(&settings.bind).map_err(|source| StartupError::Bind {
            addr: settings.bind.clone(),
            source,
        })?;
        Self::with_store(
            store,
            listener,
            settings.http,
            settings.workers,
            settings.routing,
        )
    }

    /// The application on an open store: the HTTP server on `listener`, the job workers and the
    /// sweeps (call from within a Tokio runtime).
    pub fn with_store(
        store: Store,
        listener: TcpListener,
        options: HttpOptions,
        workers: WorkerOptions,
        routing: RoutingOptions,
    ) -> Result<Self, StartupError> {
        let bind_error = |source| StartupError::Bind {
            addr: format!("{listener:?}"),
            source,
        };
        let port = listener.local_addr().map_err(bind_error)?.port();
        let metrics = Arc::new(Metrics::default());
        let job_wake = Arc::new(Notify::new());
        let routing = Arc::new(Routing::new(routing));
        let background = Background::start(
            &store,
            workers,
            options.webhooks.clone(),
            options.audit_retention_days,
            routing.clone(),
            job_wake.clone(),
            metrics.clone(),
            true,
        )
        .map_err(StartupError::Workers)?;
        let clients = options.clients;
        let deadlines = web::Data::new(crate::http::body_guard::BodyDeadlines::from(&clients));
        let request_metrics = web::Data::from(metrics.clone());
        let state = web::Data::new(AppState {
            store: store.clone(),
            max_upload_bytes: options.max_upload_bytes,
            metrics,
            list_cache: ListCache::new(
                usize::try_from(options.list_cache_bytes).unwrap_or(usize::MAX),
            ),
            list_fragments: crate::list_fragments::FragmentCache::new(
                usize::try_from(options.list_fragment_bytes).unwrap_or(usize::MAX),
            ),
            job_wake,
            routing,
            card_images: options.card_images.clone(),
            webhooks: options.webhooks.clone(),
            auth_proxy: options.auth_proxy.clone(),
        });
        let server = HttpServer::new(move || {
            let (app, api) = App::new()
                .into_utoipa_app()
                .openapi(ApiDoc::openapi())
                .app_data(state.clone())
                .app_data(request_metrics.clone())
                .app_data(deadlines.clone())
                // Bodies read whole (`web::Bytes`: the LFS batch request, profile vectors) are
                // small; everything large is streamed.
                .app_data(web::PayloadConfig::new(MAX_BUFFERED_BODY))
                .app_data(
                    web::JsonConfig::default()
                        .limit(1024 * 1024)
                        .error_handler(crate::http::errors::json_error),
                )
                .app_data(
                    web::QueryConfig::default().error_handler(crate::http::errors::query_error),
                )
                .app_data(web::PathConfig::default().error_handler(crate::http::errors::path_error))
                .service(routes::health::healthz)
                .service(routes::health::metrics)
                .service(utoipa_actix_web::scope("/api/v1").configure(routes::configure_v1))
                .split_for_parts();
            let routes = web::Data::new(
                RouteTable::from_openapi(&api)
                    .with_routes(crate::http::docs::ROUTES.iter().copied())
                    .with_routes(crate::http::hub::ROUTES.iter().map(|r| (r.path, r.methods)))
                    .with_routes(crate::http::lorax::ROUTES.iter().copied())
                    .with_pages(
                        crate::http::web::PAGE_ROUTES,
                        crate::http::web::is_page_path,
                    ),
            );
            // SwaggerUi also serves the document itself at /api/openapi.json.
            app.app_data(routes)
                .app_data(crate::http::web::HTML_ERRORS)
                .route(
                    "/docs",
                    web::get().to(|| async {
                        HttpResponse::PermanentRedirect()
                            .insert_header(("Location", "/docs/"))
                            .finish()
                    }),
                )
                .service(SwaggerUi::new("/docs/{_:.*}").url("/api/openapi.json", api))
                .configure(crate::http::lorax::configure)
                .configure(crate::http::hub::configure)
                .configure(crate::http::web::configure)
                .default_service(web::to(crate::http::errors::not_found))
                .wrap(from_fn(crate::http::docs::head_as_get))
                .wrap(from_fn(crate::http::body_guard::guard))
                .wrap(
                    ErrorHandlers::new().default_handler(crate::http::errors::wrap_foreign_errors),
                )
                .wrap(from_fn(crate::metrics::track))
        });
        let ms = std::time::Duration::from_millis;
        let server = server
            .client_request_timeout(ms(clients.header_timeout_ms))
            .keep_alive(match clients.keep_alive_ms {
                0 => actix_web::http::KeepAlive::Disabled,
                n => actix_web::http::KeepAlive::Timeout(ms(n)),
            })
            .client_disconnect_timeout(ms(clients.disconnect_timeout_ms))
            .max_connections(usize::try_from(clients.max_connections).unwrap_or(usize::MAX))
            // After SIGTERM, requests in flight (a long download) get this long to finish.
            .shutdown_timeout(options.shutdown_grace.as_secs());
        let server = match options.workers {
            Some(n) => server.workers(n),
            None => server,
        };
        let server = match usize::try_from(clients.max_connections_per_ip) {
            Ok(cap) if cap > 0 => {
                let per_ip = crate::http::body_guard::PerIp::new(cap);
                server.on_connect(move |io, data| per_ip.on_connect(io, data))
            }
            _ => server,
        };
        let addr = format!("{listener:?}");
        let server = server
            .listen(listener)
            .map_err(|source| StartupError::Bind { addr, source })?
            .run();
        Ok(Self {
            port,
            server,
            background,
            store,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves until the server stops (SIGTERM, SIGINT), then stops the background work: the job
    /// workers hand their jobs back to the queue.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let served = self.server.await;
        self.background.shutdown().await;
        served
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_open_file_soft_limit_is_raised_to_the_hard_limit() {
        let limit = super::raise_fd_limit(&crate::config::HttpOptions::default());
        let (soft, hard) = rlimit::Resource::NOFILE.get().expect("getrlimit");
        assert_eq!(soft, hard);
        assert_eq!(limit, Some(soft));
    }
}
