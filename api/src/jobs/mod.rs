//! Job workers: claim a queued job, stage its inputs, run the engine in a child process
//! (`exec`), store the output and publish it (see `run`). They run inside `quiver serve` (`--job-workers`)
//! and in `quiver worker` processes, any number against one database and store.
//!
//! Claims share workers fairly between submitters (the store's `claim_job_capped`: the fewest
//! running jobs first, then round-robin; `--jobs-per-user` caps one submitter's running jobs).
//!
//! Idle workers wake on an in-process signal when this process queues a job, on Postgres
//! `NOTIFY` when another does, and otherwise poll (a cheap indexed read): every 50 ms where no
//! notification can come (SQLite), every 500 ms as a fallback on Postgres.

pub mod cache;
pub mod embed;
pub mod exec;
pub mod outcome;
pub mod redact;
mod run;
pub mod scratch;
pub mod spec;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use candle_core::Device;
use quiver_retrieve::Batcher;
use quiver_store::{JobKind, Store};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use crate::device::DeviceKind;
use crate::metrics::Metrics;
use scratch::Scratch;

/// How long a claim lasts without a heartbeat. Heartbeats come every second.
pub const DEFAULT_LEASE_MS: i64 = 30_000;
/// Idle workers look for jobs this often when nothing can wake them across processes (SQLite).
const POLL: Duration = Duration::from_millis(50);
/// … and this often when Postgres notifications wake them (a fallback only).
const POLL_LISTENING: Duration = Duration::from_millis(500);

#[derive(Clone, Debug)]
pub struct WorkerOptions {
    /// Workers in this process (0: none).
    pub count: usize,
    pub scratch_dir: PathBuf,
    /// Largest total size of one job's input files.
    pub scratch_max_bytes: u64,
    /// Bytes of input blobs fetched from a remote store kept for later jobs (0: none).
    pub input_cache_bytes: u64,
    pub lease_ms: i64,
    /// Running jobs one submitter may have before others' jobs are claimed instead (0: no cap).
    pub jobs_per_user: u32,
    /// `cuda` runs merges on the GPU (needs the `cuda` feature).
    pub cuda: bool,
    /// How each job's engine process is started and limited.
    pub exec: exec::ExecLimits,
}

/// What every worker of a process shares.
pub(crate) struct Shared {
    store: Store,
    options: WorkerOptions,
    scratch: Scratch,
    /// Inputs fetched from a remote store, kept for later jobs (`None` for `file://` stores,
    /// whose blobs are hard-linked directly, or with a zero budget).
    cache: Option<cache::InputCache>,
    device: Device,
    /// Embed jobs need it; without one this process claims merges and compressions only.
    embedder: Option<Batcher>,
    /// Told when a job publishes a version (its samples may need a profile).
    routing: Arc<crate::routing::Routing>,
    wake: Arc<Notify>,
    metrics: Arc<Metrics>,
    shutdown: watch::Receiver<bool>,
    /// Whether a Postgres listener forwards other processes' notifications right now.
    listening: std::sync::atomic::AtomicBool,
}

/// The workers of one process: started with the application, stopped by [`Workers::shutdown`].
pub struct Workers {
    handles: Vec<JoinHandle<()>>,
    stop: watch::Sender<bool>,
}

impl Workers {
    /// Starts `options.count` workers (none when 0).
    pub fn start(
        store: Store,
        options: WorkerOptions,
        routing: Arc<crate::routing::Routing>,
        wake: Arc<Notify>,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Self> {
        let (stop, shutdown) = watch::channel(false);
        let mut handles = Vec::new();
        if options.count > 0 {
            let device = match options.cuda {
                true => DeviceKind::Cuda,
                false => DeviceKind::Cpu,
            }
            .open()
            .map_err(std::io::Error::other)?;
            let scratch = Scratch::open(&options.scratch_dir)?;
            let cache = match (store.blobs.is_local(), options.input_cache_bytes) {
                (true, _) | (_, 0) => None,
                (false, budget) => Some(cache::InputCache::new(
                    scratch.path().join("cache"),
                    budget,
                )?),
            };
            let shared = Arc::new(Shared {
                scratch,
                cache,
                store,
                options: options.clone(),
                device,
                embedder: routing.options.embedder.clone(),
                routing,
                wake: wake.clone(),
                metrics,
                shutdown,
                listening: std::sync::atomic::AtomicBool::new(false),
            });
            handles.push(tokio::spawn(forward_notifications(shared.clone())));
            for i in 0..options.count {
                let worker_id = format!("{}/{}/{i}", hostname(), std::process::id());
                handles.push(tokio::spawn(worker_loop(shared.clone(), worker_id)));
            }
            tracing::info!(workers = options.count, device = %quiver_merge::engine::device_name(&shared.device), scratch = %options.scratch_dir.display(), "job workers started");
        }
        Ok(Self { handles, stop })
    }

    /// Stops claiming, hands back (requeues) the jobs in hand, and waits for the workers.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for h in self.handles {
            let _ = h.await;
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// Turns Postgres notifications from other processes into in-process wake-ups.
async fn forward_notifications(shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown.clone();
    let mut listener = None;
    loop {
        if *shutdown.borrow() {
            return;
        }
        if listener.is_none() {
            shared.listening.store(false, Ordering::Relaxed);
            match shared.store.meta.job_wakeups().await {
                Ok(Some(l)) => {
                    listener = Some(l);
                    shared.listening.store(true, Ordering::Relaxed);
                }
                Ok(None) => return, // SQLite: polling only
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for job notifications; polling");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(5)) => continue,
                        _ = shutdown.changed() => return,
                    }
                }
            }
        }
        let Some(l) = listener.as_mut() else { continue };
        tokio::select! {
            got = l.recv() => match got {
                Ok(()) => shared.wake.notify_waiters(),
                Err(e) => {
                    tracing::warn!(error = %e, "job notifications interrupted");
                    listener = None;
                }
            },
            _ = shutdown.changed() => return,
        }
    }
}

async fn worker_loop(shared: Arc<Shared>, worker_id: String) {
    let mut shutdown = shared.shutdown.clone();
    let reap_every = Duration::from_millis((shared.options.lease_ms / 3).max(200) as u64);
    let mut last_reap = tokio::time::Instant::now() - reap_every;
    let mut failures = 0u32;
    loop {
        if *shutdown.borrow() {
            return;
        }
        // Registered before looking, so a wake-up sent meanwhile is not lost.
        let woken = shared.wake.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        if last_reap.elapsed() >= reap_every {
            last_reap = tokio::time::Instant::now();
            match shared.store.meta.reap_expired_leases().await {
                Ok((0, ended)) if ended.is_empty() => {}
                Ok((requeued, ended)) => {
                    tracing::warn!(
                        requeued,
                        ended = ended.len(),
                        "jobs whose worker stopped renewing its lease"
                    );
                    for job in &ended {
                        crate::events::job_finished(&shared.store, job).await;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "could not reap expired leases"),
            }
        }
        // Webhook deliveries have their own workers (`events::deliver`).
        let kinds: &[JobKind] = if shared.embedder.is_some() {
            &[JobKind::Merge, JobKind::Compress, JobKind::Embed]
        } else {
            &[JobKind::Merge, JobKind::Compress]
        };
        let claimed = match shared.store.meta.has_runnable_job(kinds).await {
            Ok(false) => Ok(None),
            Ok(true) => {
                shared
                    .store
                    .meta
                    .claim_job_capped(
                        &worker_id,
                        shared.options.lease_ms,
                        kinds,
                        i64::from(shared.options.jobs_per_user),
                    )
                    .await
            }
            Err(e) => Err(e),
        };
        match claimed {
            Ok(Some((job, lease))) => {
                failures = 0;
                run::run_job(&shared, &worker_id, job, lease).await;
                continue;
            }
            Ok(None) => failures = 0,
            Err(e) => {
                failures += 1;
                tracing::warn!(error = %e, worker = %worker_id, "cannot claim jobs");
            }
        }
        // Back off while the database is away (up to 5 s), else poll.
        let wait = if failures > 0 {
            Duration::from_millis(100 * 2u64.pow(failures.min(6))).min(Duration::from_secs(5))
        } else if shared.listening.load(Ordering::Relaxed) {
            POLL_LISTENING
        } else {
            POLL
        };
        tokio::select! {
            _ = &mut woken => {}
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => {}
        }
    }
}
