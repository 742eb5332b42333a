//! The engine of a merge or compression job runs in a child process: the same binary,
//! re-executed as the hidden `quiver job-exec <job dir>`, over the job's staged scratch
//! directory. Whatever the engine does — abort, run out of memory, fault on the GPU, loop — it
//! cannot take the HTTP server or the other workers with it: the worker sees a process end.
//!
//! The protocol is files plus one line per event on the child's stdout:
//! - the worker writes `<dir>/request.json` ([`ExecRequest`]: the engine's work, typed, the
//!   staged input directories, the device) and starts the child with its limits;
//! - the child sets its own limits (address space, CPU seconds) before any work, runs the engine,
//!   writes the outputs to `<dir>/out/` and its report to `<dir>/report.json` ([`ExecReport`]),
//!   and prints
//!   `progress <done> <total>` lines and, on an engine error, one `error <json>` line
//!   ([`ExecError`]), then exits 0 (success) or 3 (engine error);
//! - anything else — a signal, another exit code, a missing report — is a crash:
//!   `worker_crashed`, retried within the job's attempts and then failed, so a job that always
//!   kills its process (a poison job) ends failed instead of crash-looping the fleet.
//!
//! The worker enforces the wall-clock limit (`--job-timeout`) and cancellation by killing the
//! child: nothing it wrote is used, and the scratch directory goes with the job. A child whose
//! worker dies sees its stdin (a pipe the worker never writes) close and exits.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::time::Duration;

use quiver_merge::{CancelToken, Control, LoraAdapter, MergeError};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt;

use super::outcome::{Failure, Progress};
use super::spec::Engine;

/// Exit status of a child whose engine returned an error (reported on its `error` line).
pub const EXIT_ENGINE_ERROR: i32 = 3;
const REQUEST_NAME: &str = "request.json";
const REPORT_NAME: &str = "report.json";

/// Limits of one job's engine process.
#[derive(Clone, Debug)]
pub struct ExecLimits {
    /// The binary to re-execute (`serve`/`worker`: this one).
    pub program: PathBuf,
    /// Wall-clock limit of the engine run; the job fails with `job_timeout` after it.
    pub timeout: Duration,
    /// Address-space limit of the child in bytes (0: none). Not applied on `cuda`: the driver
    /// reserves far more virtual memory than it uses.
    pub memory_bytes: u64,
}

/// What the worker hands its child.
#[derive(Serialize, Deserialize)]
struct ExecRequest {
    engine: Engine,
    inputs: Vec<PathBuf>,
    cuda: bool,
    memory_bytes: u64,
    cpu_seconds: u64,
}

/// What the child reports when the engine succeeded.
#[derive(Serialize, Deserialize)]
pub(super) struct ExecReport {
    /// The engine's name of what it ran ([`Engine::method`]).
    pub method: String,
    /// The engine's report (a merge's `merge_report.json`, a compression's report), kept with
    /// the job.
    pub report: Value,
}

/// An engine error, as the child reports it.
#[derive(Serialize, Deserialize)]
struct ExecError {
    permanent: bool,
    cancelled: bool,
    message: String,
}

impl From<ExecError> for Failure {
    fn from(e: ExecError) -> Self {
        match (e.cancelled, e.permanent) {
            (true, _) => Failure::Stopped,
            (false, true) => Failure::Permanent(e.message),
            (false, false) => Failure::Transient(e.message),
        }
    }
}

/// Runs the engine for one job in a child process and waits for it; returns its report.
///
/// `dir` is the job's scratch directory (inputs staged under it); outputs land in `out`.
pub(super) async fn run_engine(
    limits: &ExecLimits,
    dir: &Path,
    engine: &Engine,
    inputs: &[PathBuf],
    cuda: bool,
    cancel: &CancelToken,
    progress: &Progress,
) -> Result<ExecReport, Failure> {
    let scratch = |e: std::io::Error| Failure::Transient(format!("scratch: {e}"));
    // A CPU-time ceiling as a backstop to the wall-clock limit: every core busy for the whole
    // timeout, plus a minute.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    let request = ExecRequest {
        engine: engine.clone(),
        inputs: inputs.to_vec(),
        cuda,
        memory_bytes: if cuda { 0 } else { limits.memory_bytes },
        cpu_seconds: limits
            .timeout
            .as_secs()
            .saturating_mul(cores)
            .saturating_add(60),
    };
    let bytes = serde_json::to_vec(&request).map_err(|e| Failure::Permanent(e.to_string()))?;
    tokio::fs::write(dir.join(REQUEST_NAME), bytes)
        .await
        .map_err(scratch)?;
    let mut child = tokio::process::Command::new(&limits.program)
        .arg("job-exec")
        .arg(dir)
        // Never written: the child sees end-of-file when this process dies, and stops.
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| {
            Failure::Transient(format!(
                "cannot start the engine process {}: {e}",
                limits.program.display()
            ))
        })?;
    let _lifeline = child.stdin.take();
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| Failure::Transient("the engine process has no stdout".into()))?;
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let mut reported: Option<ExecError> = None;
    let deadline = tokio::time::sleep(limits.timeout);
    tokio::pin!(deadline);
    let mut poll = tokio::time::interval(Duration::from_millis(100));
    let mut open = true;
    let status = loop {
        tokio::select! {
            line = lines.next_line(), if open => match line {
                Ok(Some(line)) => read_event(&line, progress, &mut reported),
                // The child closed stdout (it is ending); wait for its status.
                Ok(None) | Err(_) => open = false,
            },
            status = child.wait(), if !open => break status.map_err(scratch)?,
            _ = poll.tick() => if cancel.is_cancelled() {
                let _ = child.kill().await;
                return Err(Failure::Stopped);
            },
            _ = &mut deadline => {
                let _ = child.kill().await;
                return Err(Failure::Permanent(format!(
                    "job_timeout: the engine ran longer than this worker's limit of {} s (--job-timeout) and was stopped",
                    limits.timeout.as_secs()
                )));
            }
        }
    };
    if status.success() {
        let bytes = tokio::fs::read(dir.join(REPORT_NAME)).await.map_err(|e| {
            Failure::Transient(format!(
                "worker_crashed: the engine process left no report ({e})"
            ))
        })?;
        return serde_json::from_slice(&bytes).map_err(|e| {
            Failure::Transient(format!(
                "worker_crashed: the engine's report does not parse: {e}"
            ))
        });
    }
    if let (Some(EXIT_ENGINE_ERROR), Some(e)) = (status.code(), reported) {
        return Err(e.into());
    }
    Err(Failure::Transient(format!(
        "worker_crashed: the engine process {}",
        describe_exit(status)
    )))
}

fn read_event(line: &str, progress: &Progress, reported: &mut Option<ExecError>) {
    if let Some(rest) = line.strip_prefix("progress ") {
        let mut it = rest.split(' ').map(str::parse::<usize>);
        if let (Some(Ok(done)), Some(Ok(total))) = (it.next(), it.next()) {
            progress.total.store(total, Ordering::Relaxed);
            progress.done.store(done, Ordering::Relaxed);
        }
    } else if let Some(rest) = line.strip_prefix("error ") {
        *reported = serde_json::from_str(rest).ok();
    }
}

/// "was killed by signal 6 (SIGABRT)" or "exited with status 101".
fn describe_exit(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (_, Some(sig)) => {
            let name = match sig {
                4 => " (SIGILL)",
                6 => " (SIGABRT)",
                7 => " (SIGBUS)",
                8 => " (SIGFPE)",
                9 => " (SIGKILL: killed, e.g. by the kernel's OOM killer)",
                11 => " (SIGSEGV)",
                24 => " (SIGXCPU: CPU-time limit reached)",
                _ => "",
            };
            format!("was killed by signal {sig}{name}")
        }
        (Some(code), None) => format!("exited with status {code}"),
        (None, None) => "ended without a status".into(),
    }
}

/// `quiver job-exec <dir>`: the child's side. Returns the process's exit status (0: success,
/// [`EXIT_ENGINE_ERROR`]: the engine's error is on stdout, 2: the request could not be read).
pub fn child_main(dir: &Path) -> i32 {
    let request: ExecRequest = match std::fs::read(dir.join(REQUEST_NAME))
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!(
                "job-exec: cannot read {}: {e}",
                dir.join(REQUEST_NAME).display()
            );
            return 2;
        }
    };
    if let Err(e) = apply_limits(&request) {
        eprintln!("job-exec: cannot set limits: {e}");
        return 2;
    }
    // The worker holds our stdin open and never writes to it: end-of-file means it died (killed
    // with SIGKILL, say). An orphaned engine would only burn CPU on a job another worker takes
    // over, so stop.
    std::thread::spawn(|| {
        let mut buf = [0u8; 64];
        loop {
            match std::io::Read::read(&mut std::io::stdin(), &mut buf) {
                Ok(0) | Err(_) => std::process::exit(4),
                Ok(_) => {}
            }
        }
    });
    match child_run(dir, &request) {
        Ok(()) => 0,
        Err(e) => {
            let error = ExecError {
                permanent: e.is_permanent(),
                cancelled: matches!(e, MergeError::Cancelled),
                message: e.to_string(),
            };
            println!(
                "error {}",
                serde_json::to_string(&error).unwrap_or_else(|_| "{}".into())
            );
            EXIT_ENGINE_ERROR
        }
    }
}

fn apply_limits(r: &ExecRequest) -> std::io::Result<()> {
    use rlimit::Resource;
    if r.memory_bytes > 0 {
        Resource::AS.set(r.memory_bytes, r.memory_bytes)?;
    }
    if r.cpu_seconds > 0 {
        // Soft limit: SIGXCPU; hard limit a little later: SIGKILL.
        Resource::CPU.set(r.cpu_seconds, r.cpu_seconds.saturating_add(5))?;
    }
    Ok(())
}

fn child_run(dir: &Path, r: &ExecRequest) -> Result<(), MergeError> {
    let out = dir.join("out");
    let on_progress = |done: usize, total: usize| println!("progress {done} {total}");
    let cancel = CancelToken::new();
    let ctl = Control::new(&on_progress, &cancel);
    let report = match &r.engine {
        Engine::Compress(params) => {
            let spec = params.spec();
            let (files, report) = spec.compute(&r.inputs, &ctl)?;
            files.write(&out)?;
            report.unwrap_or_else(|| json!({"mode": spec.mode()}))
        }
        Engine::Merge(params) => merge(&r.inputs, &out, params.spec(), r.cuda, &ctl)?,
    };
    let report = ExecReport {
        method: r.engine.method(),
        report,
    };
    let bytes = serde_json::to_vec(&report).map_err(|e| MergeError::numeric("the report", e))?;
    let path = dir.join(REPORT_NAME);
    std::fs::write(&path, bytes).map_err(|source| MergeError::Io { path, source })
}

/// Merges the adapters in `inputs` into `out`; returns the report written there.
fn merge(
    inputs: &[PathBuf],
    out: &Path,
    spec: &quiver_merge::MergeSpec,
    cuda: bool,
    ctl: &Control<'_>,
) -> Result<Value, MergeError> {
    let device = if cuda {
        candle_core::Device::new_cuda(0).map_err(|e| MergeError::Device(e.to_string()))?
    } else {
        candle_core::Device::Cpu
    };
    let adapters = LoraAdapter::open_all(inputs)?;
    // Finished modules wait on disk in the job's scratch, not in memory, until written.
    let merged = quiver_merge::merge_parked(
        &adapters,
        spec,
        &device,
        ctl,
        &quiver_merge::engine::parking_dir(out)?,
    )?;
    quiver_merge::write_adapter(out, &adapters, spec, &merged)?;
    let path = out.join(quiver_merge::write::REPORT_NAME);
    let bytes = std::fs::read(&path).map_err(|source| MergeError::Io { path, source })?;
    serde_json::from_slice(&bytes).map_err(|e| MergeError::numeric("reading the report", e))
}
