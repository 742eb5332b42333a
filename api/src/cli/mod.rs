//! The command line: `serve`, `worker`, `migrate`, `token create`, `inspect`, `merge`, `compress`,
//! `route`, `embed`, `webhook`, `org`, `adapter transfer`.

pub mod compress;
pub mod merge;
pub mod org;
pub mod remote;
pub mod route;
pub mod token;
pub mod webhook;

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use quiver_store::{Scope, Store};

use std::sync::Arc;

use tokio::sync::Notify;

use crate::background::Background;
use crate::config::{
    DEFAULT_LIST_CACHE_BYTES, DEFAULT_LIST_FRAGMENT_BYTES, DEFAULT_MAX_UPLOAD_BYTES, HttpOptions,
    JobArgs, RoutingArgs, ServerSettings, StorageArgs,
};
use crate::jobs::WorkerOptions;
use crate::metrics::Metrics;
use crate::routing::{Routing, RoutingOptions};
use crate::startup::{Application, StartupError};

#[derive(Parser, Debug)]
#[command(
    name = "quiver",
    version,
    about = "Registry and merging service for LoRA adapters"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

// `Serve` carries every server flag; the command is parsed once per process, so its size does
// not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the HTTP API.
    Serve {
        /// Address to listen on.
        #[arg(long, env = "QUIVER_BIND", default_value = "127.0.0.1:8080")]
        bind: String,
        /// Largest accepted upload, in bytes.
        #[arg(long, env = "QUIVER_MAX_UPLOAD_BYTES", default_value_t = DEFAULT_MAX_UPLOAD_BYTES)]
        max_upload_bytes: u64,
        /// Bytes of adapter-listing pages to cache (0 turns the cache off).
        #[arg(long, env = "QUIVER_LIST_CACHE_BYTES", default_value_t = DEFAULT_LIST_CACHE_BYTES)]
        list_cache_bytes: u64,
        /// Bytes of adapters kept between listing pages, so a page the page cache lacks costs
        /// one query for its ids (0 turns this off).
        #[arg(long, env = "QUIVER_LIST_FRAGMENT_BYTES", default_value_t = DEFAULT_LIST_FRAGMENT_BYTES)]
        list_fragment_bytes: u64,
        /// HTTP worker threads [default: one per CPU].
        #[arg(long, env = "QUIVER_WORKERS", value_parser = clap::value_parser!(u16).range(1..))]
        workers: Option<u16>,
        /// Hosts whose https:// images model cards may show, comma-separated (e.g.
        /// images.example.com,cdn.example:8443) [default: none; cards show no images].
        #[arg(long, env = "QUIVER_CARD_IMAGE_HOSTS", value_delimiter = ',')]
        card_image_hosts: Vec<String>,
        /// Merge and compression workers in this process (0: none; run `quiver worker` instead).
        #[arg(long, env = "QUIVER_JOB_WORKERS", default_value_t = 1)]
        job_workers: usize,
        #[command(flatten)]
        clients: crate::config::ClientLimits,
        /// After SIGTERM or SIGINT, seconds that requests in flight (long downloads) may take to
        /// finish before their connections are closed; new connections are refused at once.
        #[arg(long, env = "QUIVER_SHUTDOWN_GRACE", default_value_t = crate::config::DEFAULT_SHUTDOWN_GRACE_S)]
        shutdown_grace: u64,
        #[command(flatten)]
        jobs: JobArgs,
        #[command(flatten)]
        webhooks: crate::config::WebhookArgs,
        #[command(flatten)]
        auth_proxy: crate::config::AuthProxyArgs,
        #[command(flatten)]
        audit: crate::config::AuditArgs,
        #[command(flatten)]
        routing: RoutingArgs,
        #[command(flatten)]
        storage: StorageArgs,
    },
    /// Run merge and compression jobs only (any number of these may run against one database
    /// and store). SIGTERM hands the jobs in hand back to the queue.
    Worker {
        /// Workers in this process.
        #[arg(long, env = "QUIVER_JOB_WORKERS", default_value_t = 1,
              value_parser = clap::value_parser!(u16).range(1..))]
        job_workers: u16,
        #[command(flatten)]
        jobs: JobArgs,
        #[command(flatten)]
        webhooks: crate::config::WebhookArgs,
        #[command(flatten)]
        audit: crate::config::AuditArgs,
        #[command(flatten)]
        routing: RoutingArgs,
        #[command(flatten)]
        storage: StorageArgs,
    },
    /// Apply pending database migrations and exit.
    Migrate {
        #[command(flatten)]
        storage: StorageArgs,
    },
    /// Manage API tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Print an adapter's summary as JSON (a PEFT directory or a .safetensors file).
    Inspect { path: PathBuf },
    /// Merge local PEFT adapter directories into a new one (the engine the service uses).
    Merge(crate::cli::merge::MergeArgs),
    /// Compress one adapter (individual) or a collection into shared bases (joint); extract members.
    Compress(crate::cli::compress::CompressArgs),
    /// Ask a server which adapters fit prompts (`POST /api/v1/route`).
    Route(crate::cli::route::RouteArgs),
    /// Manage webhook subscriptions on a server (create, list, deliveries, redeliver, delete).
    Webhook(crate::cli::webhook::WebhookArgs),
    /// Manage organisations on a server (create, show, list, member set, member remove).
    Org(crate::cli::org::OrgArgs),
    /// Act on an adapter on a server (transfer it to another namespace).
    Adapter(crate::cli::org::AdapterArgs),
    /// Deactivate or reactivate a user on a server (an admin token).
    User(crate::cli::org::UserArgs),
    /// Print embeddings of local text (JSON lines) with the routing embedder.
    Embed(crate::cli::route::EmbedArgs),
    /// Internal: run one job's engine over its scratch directory (started by a job worker).
    #[command(hide = true)]
    JobExec { dir: PathBuf },
}

#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Create a token; prints the token alone on the last line. Without `--server`: the local
    /// bootstrap with database access (creates the user if new; `--user` required). With
    /// `--server`: through the API as `--token` (docs/tokens.md).
    Create {
        /// Whose token (local: required; server: another user's needs an admin token).
        #[arg(long, env = "QUIVER_TOKEN_USER")]
        user: Option<String>,
        #[arg(long, env = "QUIVER_TOKEN_SCOPE", default_value = "write", value_parser = ["read", "write", "admin"])]
        scope: String,
        /// The server to ask (no environment default, so the local form stays local).
        #[arg(long)]
        server: Option<String>,
        /// The token to ask with (server form).
        #[arg(long, env = "QUIVER_TOKEN", requires = "server")]
        token: Option<String>,
        /// The new token's name (server form; default `cli`).
        #[arg(long, requires = "server")]
        name: Option<String>,
        /// Days until it expires (server form; 1 to 3650; default: never).
        #[arg(long, requires = "server")]
        expires_in_days: Option<i64>,
        /// Namespaces or adapters it is restricted to, comma-separated (server form).
        #[arg(long, value_delimiter = ',', requires = "server")]
        restrict: Vec<String>,
        #[command(flatten)]
        storage: StorageArgs,
    },
    /// A server's tokens: yours, `--user`'s or `--all` (admin), never a secret.
    List {
        #[arg(long, env = "QUIVER_URL", default_value = "http://127.0.0.1:8080")]
        server: String,
        #[arg(long, env = "QUIVER_TOKEN")]
        token: Option<String>,
        #[arg(long, conflicts_with = "all")]
        user: Option<String>,
        #[arg(long)]
        all: bool,
    },
    /// Invite a user (admin token): prints the one-time sign-in link's path on the last line.
    Invite {
        #[arg(long)]
        user: String,
        #[arg(long, default_value = "write", value_parser = ["read", "write", "admin"])]
        scope: String,
        /// 1 to 30 (default 7).
        #[arg(long)]
        expires_in_days: Option<i64>,
        #[arg(long, env = "QUIVER_URL", default_value = "http://127.0.0.1:8080")]
        server: String,
        #[arg(long, env = "QUIVER_TOKEN")]
        token: Option<String>,
    },
    /// Revoke a token by id (yours, or anyone's with an admin token).
    Revoke {
        id: String,
        #[arg(long, env = "QUIVER_URL", default_value = "http://127.0.0.1:8080")]
        server: String,
        #[arg(long, env = "QUIVER_TOKEN")]
        token: Option<String>,
    },
}

type CliResult = Result<(), Box<dyn std::error::Error>>;

pub async fn run(cli: Cli) -> CliResult {
    match cli.command {
        Command::Serve {
            bind,
            max_upload_bytes,
            list_cache_bytes,
            list_fragment_bytes,
            workers,
            card_image_hosts,
            job_workers,
            clients,
            shutdown_grace,
            jobs,
            webhooks,
            auth_proxy,
            audit,
            routing,
            storage,
        } => {
            let auth_proxy = auth_proxy.resolve()?;
            let settings = ServerSettings {
                bind,
                store: storage.resolve()?,
                http: HttpOptions {
                    max_upload_bytes,
                    list_cache_bytes,
                    list_fragment_bytes,
                    workers: workers.map(usize::from),
                    card_images: crate::card::ImagePolicy::new(&card_image_hosts)?,
                    clients,
                    shutdown_grace: std::time::Duration::from_secs(shutdown_grace),
                    webhooks: webhooks.options(),
                    audit_retention_days: audit.audit_retention_days,
                    auth_proxy,
                },
                workers: jobs.options(job_workers, &storage),
                routing: routing.options().map_err(StartupError::Embedder)?,
            };
            let app = Application::build(settings.clone()).await?;
            tracing::info!(
                port = app.port(),
                database = app.store.meta.dialect(),
                blobs = app.store.blobs.describe(),
                "quiver listening on {} (API docs at /docs)",
                settings.bind
            );
            if app.store.meta.count_users().await? == 0 {
                eprintln!(
                    "No users yet. Create a token with:\n  quiver token create --user <name> --scope write{}",
                    storage_hint(&storage)
                );
            }
            app.run_until_stopped().await?;
        }
        Command::Worker {
            job_workers,
            jobs,
            webhooks,
            audit,
            routing,
            storage,
        } => {
            let routing = routing.options().map_err(StartupError::Embedder)?;
            run_worker(
                jobs.options(usize::from(job_workers), &storage),
                webhooks.options(),
                audit,
                routing,
                &storage,
            )
            .await?
        }
        Command::Migrate { storage } => {
            let store = Store::open(&storage.resolve()?).await?;
            println!("migrations applied ({})", store.meta.dialect());
        }
        Command::Token {
            command:
                TokenCommand::Create {
                    user,
                    scope,
                    server: Some(server),
                    token,
                    name,
                    expires_in_days,
                    restrict,
                    storage: _,
                },
        } => {
            crate::cli::token::create(crate::cli::token::RemoteCreate {
                server,
                token,
                name: name.unwrap_or_else(|| "cli".to_string()),
                scope,
                user,
                expires_in_days,
                restrict,
            })
            .await?
        }
        Command::Token {
            command:
                TokenCommand::List {
                    server,
                    token,
                    user,
                    all,
                },
        } => crate::cli::token::list(&server, token.as_deref(), user.as_deref(), all).await?,
        Command::Token {
            command: TokenCommand::Revoke { id, server, token },
        } => crate::cli::token::revoke(&server, token.as_deref(), &id).await?,
        Command::Token {
            command:
                TokenCommand::Invite {
                    user,
                    scope,
                    expires_in_days,
                    server,
                    token,
                },
        } => {
            crate::cli::token::invite(&server, token.as_deref(), &user, &scope, expires_in_days)
                .await?
        }
        Command::Token {
            command:
                TokenCommand::Create {
                    user,
                    scope,
                    server: None,
                    storage,
                    ..
                },
        } => {
            let user = user.ok_or(
                "--user is required to create a token locally (or give --server and --token)",
            )?;
            let scope: Scope = scope.parse()?;
            let store = Store::open(&storage.resolve()?).await?;
            let secret = crate::cli::token::create_local(&store, &user, scope).await?;
            eprintln!(
                "token for {user} ({}) — shown once, store it now:",
                scope.as_str()
            );
            println!("{secret}");
        }
        Command::Merge(args) => crate::cli::merge::run(args)?,
        Command::Compress(args) => crate::cli::compress::run(args)?,
        Command::Route(args) => crate::cli::route::route(args).await?,
        Command::Webhook(args) => crate::cli::webhook::run(args).await?,
        Command::Org(args) => crate::cli::org::run(args).await?,
        Command::Adapter(args) => crate::cli::org::run_adapter(args).await?,
        Command::User(args) => crate::cli::org::run_user(args).await?,
        Command::Embed(args) => crate::cli::route::embed(args)?,
        // Like `merge`, on the runtime's main thread (rayon inside): measured, the engine ran
        // ~10 % slower in a process without the runtime (ties, 8 × 160 MB: 151 s vs 133-135 s).
        Command::JobExec { dir } => match crate::jobs::exec::child_main(&dir) {
            0 => {}
            code => std::process::exit(code),
        },
        Command::Inspect { path } => {
            let summary = quiver_merge::inspect_path(&path)?;
            println!("{}", serde_json::to_string_pretty(&summary)?);
        }
    }
    Ok(())
}

/// The storage flags to repeat in a suggested command, when they are not the defaults.
fn storage_hint(s: &StorageArgs) -> String {
    let mut out = String::new();
    if s.database_url.is_none() && s.store_url.is_none() {
        out.push_str(&format!(" --data-dir {}", s.data_dir.display()));
    }
    if s.database_url.is_some() {
        out.push_str(" --database-url <same as the server>");
    }
    if s.store_url.is_some() {
        out.push_str(" --store-url <same as the server>");
    }
    out
}

/// `quiver worker`: job workers (and the sweeps) until SIGTERM or SIGINT, then the jobs in hand
/// go back to the queue.
async fn run_worker(
    options: WorkerOptions,
    webhooks: crate::events::WebhookOptions,
    audit: crate::config::AuditArgs,
    routing: RoutingOptions,
    storage: &StorageArgs,
) -> CliResult {
    let store = Store::open(&storage.resolve()?)
        .await
        .map_err(StartupError::Store)?;
    store.blobs.claim_staging_soon().await;
    tracing::info!(
        database = store.meta.dialect(),
        blobs = store.blobs.describe(),
        workers = options.count,
        "quiver worker started"
    );
    // The sweeps run here too: any number of processes may sweep (each deletion holds the lock
    // version commits take), and a deployment may have no `serve` with workers.
    let background = Background::start(
        &store,
        options,
        webhooks,
        audit.audit_retention_days,
        Arc::new(Routing::new(routing)),
        Arc::new(Notify::new()),
        Arc::new(Metrics::default()),
        true,
    )
    .map_err(StartupError::Workers)?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("stopping: handing jobs in hand back to the queue");
    background.shutdown().await;
    Ok(())
}
