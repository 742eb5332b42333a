//! One job, from claim to publish: stage the pinned inputs, run the engine (a child process,
//! `exec`), store the output files and publish them with the job's success, while a
//! heartbeat renews the lease and records progress every second.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use quiver_merge::{CancelToken, MergeError};
use quiver_store::{Beat, JobEnd, JobRecord, Lease, NewVersion, VersionRef};
use serde_json::{Value, json};

use super::Shared;
use super::outcome::{Failure, Progress};
use super::spec::{Engine, JobPayload, Pinned};
use crate::publish::{Held, Target, publish_version};

const HEARTBEAT: Duration = Duration::from_secs(1);

/// Why the worker asked the engine to stop.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stop {
    Cancel,
    LeaseLost,
    Shutdown,
}

/// A published result, with the seconds spent staging, in the engine, storing and publishing.
struct Published {
    adapter: String,
    number: i64,
    phases: [f64; 4],
}

pub(super) async fn run_job(shared: &Arc<Shared>, worker: &str, job: JobRecord, lease: Lease) {
    let started = Instant::now();
    let kind = job.kind;
    tracing::info!(job = %job.id, kind = kind.as_str(), attempt = lease.attempt, worker, "job running");
    shared.metrics.job_started(kind);
    let cancel = CancelToken::new();
    let progress = Arc::new(Progress {
        done: AtomicUsize::new(0),
        total: AtomicUsize::new(0),
    });
    let work = execute(shared, &job, &lease, cancel.clone(), progress.clone());
    tokio::pin!(work);
    let mut tick = tokio::time::interval(HEARTBEAT);
    tick.tick().await;
    let mut shutdown = shared.shutdown.clone();
    let mut stop: Option<Stop> = None;
    let lease_ms = shared.options.lease_ms;
    let outcome = loop {
        tokio::select! {
            r = &mut work => break r,
            _ = tick.tick() => {
                let (d, t) = (progress.done.load(Ordering::Relaxed) as i64, progress.total.load(Ordering::Relaxed) as i64);
                match shared.store.meta.heartbeat(&lease, d, t, lease_ms).await {
                    Ok(Beat::Held { cancel: false }) => {}
                    Ok(Beat::Held { cancel: true }) => { stop.get_or_insert(Stop::Cancel); cancel.cancel(); }
                    Ok(Beat::Lost) => { stop = Some(Stop::LeaseLost); cancel.cancel(); }
                    Err(e) => tracing::warn!(job = %job.id, error = %e, "heartbeat failed"),
                }
            }
            changed = shutdown.changed(), if stop.is_none() => {
                if changed.is_err() || *shutdown.borrow() {
                    stop = Some(Stop::Shutdown);
                    cancel.cancel();
                }
            }
        }
    };
    let seconds = started.elapsed().as_secs_f64();
    let end = match outcome {
        Ok(Published {
            adapter,
            number,
            phases,
        }) => {
            tracing::info!(
                job = %job.id,
                kind = kind.as_str(),
                state = "succeeded",
                result = %format!("{adapter}@{number}"),
                seconds,
                stage_s = phases[0],
                engine_s = phases[1],
                store_s = phases[2],
                publish_s = phases[3],
                "job succeeded"
            );
            shared.metrics.job_finished(kind, "succeeded", seconds);
            job_finished(shared, &job.id).await;
            return;
        }
        // Stopped on request (or failed while stopping): the request decides.
        Err(_) if stop.is_some() => match stop {
            Some(Stop::Cancel) => JobEnd::Cancelled,
            Some(Stop::Shutdown) => JobEnd::Released,
            _ => {
                tracing::warn!(job = %job.id, "lease lost; another worker owns the job now");
                shared.metrics.job_finished(kind, "lease_lost", seconds);
                return;
            }
        },
        // Stopped without a request from here: the publish found a cancel request.
        Err(Failure::Stopped) => match shared.store.meta.get_job(&job.id).await {
            Ok(Some(j)) if j.cancel_requested => JobEnd::Cancelled,
            _ => {
                tracing::warn!(job = %job.id, "lease lost at publish; another worker owns the job now");
                shared.metrics.job_finished(kind, "lease_lost", seconds);
                return;
            }
        },
        Err(Failure::Permanent(msg)) => JobEnd::Failed(msg),
        Err(Failure::Transient(msg)) => JobEnd::Retry {
            error: msg,
            backoff_ms: 1000 * (1i64 << lease.attempt.clamp(1, 6)),
        },
    };
    let ended = shared.store.meta.end_job(&lease, &end).await;
    let state = match &ended {
        Ok(Some(s)) => s.as_str(),
        Ok(None) => "lease_lost",
        Err(_) => "unrecorded",
    };
    let error = match &end {
        JobEnd::Failed(e) | JobEnd::Retry { error: e, .. } => Some(e.as_str()),
        _ => None,
    };
    match (&ended, error) {
        (Ok(Some(_)), Some(e)) => {
            tracing::warn!(job = %job.id, kind = kind.as_str(), state, error = %e, seconds, "job ended")
        }
        (Ok(Some(_)), None) => {
            tracing::info!(job = %job.id, kind = kind.as_str(), state, seconds, "job ended")
        }
        (Ok(None), _) => {
            tracing::warn!(job = %job.id, "lease lost before the job's end was recorded")
        }
        (Err(e), _) => {
            tracing::error!(job = %job.id, error = %e, "could not record the job's end; its lease will expire")
        }
    }
    // The attempt's outcome: a requeue after a transient failure is a `retry`; a release on
    // shutdown is this worker's doing, not the job's.
    let outcome = match (&end, state) {
        (JobEnd::Released, _) => "released",
        (JobEnd::Retry { .. }, "queued") => "retry",
        (_, s) => s,
    };
    shared.metrics.job_finished(kind, outcome, seconds);
    if matches!(ended, Ok(Some(s)) if s.is_terminal()) {
        job_finished(shared, &job.id).await;
    }
}

/// Records `job.finished` for a job this worker ended (read back: its state, result, error).
async fn job_finished(shared: &Shared, id: &str) {
    match shared.store.meta.get_job(id).await {
        Ok(Some(job)) => crate::events::job_finished(&shared.store, &job).await,
        Ok(None) => {}
        Err(e) => tracing::warn!(job = %id, error = %e, "could not read the job for its event"),
    }
}

/// Decodes the job's payload, then stages, runs and publishes; returns the published version and
/// where the time went.
async fn execute(
    shared: &Arc<Shared>,
    job: &JobRecord,
    lease: &Lease,
    cancel: CancelToken,
    progress: Arc<Progress>,
) -> Result<Published, Failure> {
    let payload = JobPayload::decode(job.kind, &job.spec)
        .map_err(|e| Failure::Permanent(format!("the job's spec does not parse: {e}")))?;
    let (engine, io) = match payload {
        JobPayload::Merge(j) => (Engine::Merge(j.params), j.io),
        JobPayload::Compress(j) => (Engine::Compress(j.params), j.io),
        JobPayload::Embed(spec) => {
            let embedder = shared.embedder.as_ref().ok_or_else(|| {
                Failure::Transient("this worker has no embedder (--embedder-dir)".into())
            })?;
            let (adapter, number, [read, embed]) =
                super::embed::execute(shared, embedder, spec, lease).await?;
            return Ok(Published {
                adapter,
                number,
                phases: [read, embed, 0.0, 0.0],
            });
        }
    };
    run_engine_job(shared, job, lease, &engine, &io, cancel, progress).await
}

/// A merge or compression: stage the inputs, run the engine, store and publish the output.
async fn run_engine_job(
    shared: &Arc<Shared>,
    job: &JobRecord,
    lease: &Lease,
    engine: &Engine,
    io: &Pinned,
    cancel: CancelToken,
    progress: Arc<Progress>,
) -> Result<Published, Failure> {
    let mut phases = [0.0; 4];
    let mut clock = Instant::now();
    let mut lap = |i: usize| {
        phases[i] = clock.elapsed().as_secs_f64();
        clock = Instant::now();
    };
    let target = io.output_target();
    let dir = shared
        .scratch
        .job_dir(&job.id)
        .map_err(|e| Failure::Transient(format!("scratch directory: {e}")))?;
    let (inputs, versions) = stage_inputs(shared, io, dir.path(), &cancel).await?;
    lap(0);
    let out = dir.path().join("out");

    // The engine, in a child process (`exec`). Compression always runs on the host.
    let device_used = match engine {
        Engine::Merge(_) => quiver_merge::engine::device_name(&shared.device),
        Engine::Compress(_) => "cpu".to_string(),
    };
    let ran = super::exec::run_engine(
        &shared.options.exec,
        dir.path(),
        engine,
        &inputs,
        shared.options.cuda,
        &cancel,
        &progress,
    )
    .await?;
    if cancel.is_cancelled() {
        return Err(Failure::Stopped);
    }
    // Private inputs' file hashes out of the written files and the report (`redact`).
    let report = super::redact::written_files(&io.inputs, &versions, &out, ran.report).await?;
    lap(1);

    // Store the output: content-addressed, so a retry uploads nothing the store already holds.
    let paths = list_files(&out).map_err(|e| Failure::Transient(format!("output: {e}")))?;
    let stored =
        futures::future::try_join_all(paths.iter().map(|path| shared.store.blobs.put_file(path)))
            .await?;
    let mut files = Vec::new();
    // Blobs found already stored may be old enough for a sweep: checked again after the commit.
    // The ones written just now are younger than the sweep's grace period.
    let mut held = Vec::new();
    for (path, stored) in paths.into_iter().zip(stored) {
        let rel = path
            .strip_prefix(&out)
            .map_err(|e| Failure::Permanent(e.to_string()))?
            .to_string_lossy()
            .into_owned();
        files.push(quiver_store::FileRecord {
            path: rel,
            size: stored.size as i64,
            sha256: stored.sha256.clone(),
        });
        if !stored.written {
            held.push((path, stored.sha256));
        }
    }
    let summary = output_summary(&out, &files)?;
    let lineage = json!({
        "parents": io.parents(),
        "method": ran.method,
        "params": engine.json(),
        "seed": engine.seed(),
        "engine_version": env!("CARGO_PKG_VERSION"),
        "device": device_used,
        "job": job.id,
    });
    lap(2);
    let new = NewVersion {
        created_by: job.created_by.clone(),
        files,
        facets: crate::facets::of(Some(&summary), Some(&lineage)),
        lora: Some(summary),
        lineage: Some(lineage),
        parents: io.parents(),
    };
    let (adapter, version) = publish_version(
        &shared.store,
        Target::Job {
            lease,
            output: &target,
            report: &report,
        },
        &new,
        Held::Files(&held),
    )
    .await?;
    lap(3);
    shared.routing.version_published(&version.files);
    Ok(Published {
        adapter: adapter.repo_id(),
        number: version.number,
        phases,
    })
}

/// Downloads each pinned input's files into `dir/inputs/<name>/`; returns the directories and
/// the pinned versions.
async fn stage_inputs(
    shared: &Shared,
    io: &Pinned,
    dir: &Path,
    cancel: &CancelToken,
) -> Result<(Vec<PathBuf>, Vec<quiver_store::VersionRecord>), Failure> {
    let store = &shared.store;
    let mut versions = Vec::new();
    let mut total = 0u64;
    for input in &io.inputs {
        let gone = || {
            Failure::Permanent(format!(
                "input {} version {} (revision {}) no longer exists",
                input.adapter, input.version, input.revision
            ))
        };
        let adapter = store
            .meta
            .get_adapter(&input.adapter)
            .await?
            .ok_or_else(gone)?;
        let version = store
            .meta
            .get_version(adapter.id, &VersionRef::Revision(input.revision.clone()))
            .await?
            .ok_or_else(gone)?;
        total += version.files.iter().map(|f| f.size as u64).sum::<u64>();
        versions.push(version);
    }
    if total > shared.options.scratch_max_bytes {
        return Err(Failure::Permanent(format!(
            "the inputs hold {total} bytes, more than this worker's scratch limit of {} bytes (--scratch-max-bytes)",
            shared.options.scratch_max_bytes
        )));
    }
    let mut dirs = Vec::new();
    let mut fetches = Vec::new();
    for (input, version) in io.inputs.iter().zip(&versions) {
        let input_dir = dir.join("inputs").join(&input.dir);
        for f in &version.files {
            let path = input_dir.join(&f.path);
            if let Some(parent) = path.parent() {
                tokio::fs::create_dir_all(parent)
                    .await
                    .map_err(|e| Failure::Transient(format!("scratch: {e}")))?;
            }
            let cache = shared.cache.as_ref();
            fetches.push(async move {
                match cache {
                    Some(c) => c.place(&store.blobs, &f.sha256, f.size as u64, &path).await,
                    None => store.blobs.fetch_to(&f.sha256, &path).await,
                }
            });
        }
        dirs.push(input_dir);
    }
    if cancel.is_cancelled() {
        return Err(Failure::Stopped);
    }
    // A few at a time: one input is two files, a collection four.
    futures::stream::iter(fetches)
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<Vec<()>, _>>()?;
    Ok((dirs, versions))
}

fn list_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

fn read_json(path: &Path) -> Result<Value, MergeError> {
    let bytes = std::fs::read(path).map_err(|source| MergeError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_slice(&bytes).map_err(|e| MergeError::numeric("reading the report", e))
}

/// The summary stored with the version: the LoRA summary of a PEFT output, or a collection's.
fn output_summary(out: &Path, files: &[quiver_store::FileRecord]) -> Result<Value, Failure> {
    let manifest = out.join(quiver_merge::compress::MANIFEST_NAME);
    if manifest.exists() {
        let m: Value = read_json(&manifest)?;
        return Ok(json!({
            "kind": "collection",
            "format": m.get("format"),
            "rank": m.get("rank"),
            "diag": m.get("diag"),
            "clusters": m.get("clusters"),
            "members": m.get("members").and_then(Value::as_array).map(|a| a.iter().filter_map(|x| x.get("name").cloned()).collect::<Vec<_>>()),
            "size": files.iter().map(|f| f.size).sum::<i64>(),
        }));
    }
    let summary = quiver_merge::inspect_path(out)
        .map_err(|e| Failure::Permanent(format!("the output is not a valid adapter: {e}")))?;
    serde_json::to_value(summary).map_err(|e| Failure::Permanent(e.to_string()))
}
