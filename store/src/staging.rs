//! Who owns a staged upload, so that a process starting after a crash removes at once what a
//! dead process left staged, and never what a live one (another server, a worker, on this host
//! or another) is still writing.
//!
//! A serving or working process *claims* an owner id ([`crate::BlobStore::claim_staging`]): it
//! writes the marker `owners/<id>` (its host's boot id and pid namespace, its pid and the pid's
//! start time) and rewrites it every [`HEARTBEAT`]; its uploads then stage under
//! `uploads/<id>/<uuid>`. A sweeping process judges another owner dead when
//!
//! * its marker names this host and pid namespace (same boot id, same `/proc/self/ns/pid`) and
//!   that pid is gone, a zombie, or another process (its start time differs): decided at once,
//!   which is what a restart after `kill -9` meets; or
//! * its marker was not rewritten for [`LEASE`], measured against the store's own clock (the
//!   sweeper rewrites its own marker first and reads back its time), so clock skew between
//!   hosts does not matter.
//!
//! A dead owner's staged objects are deleted, then its marker. Staged objects of no owner (a
//! process that did not claim, such as the CLI or a test harness, or a marker already removed)
//! keep the age rule the caller gives. A clean shutdown removes its own staged objects and
//! marker ([`crate::BlobStore::release_staging`]).
//!
//! Not covered: on S3, a multipart upload interrupted by `kill -9` is not an object (listing does
//! not show it); the bucket's `AbortIncompleteMultipartUpload` lifecycle rule removes its parts.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;

/// How often a claiming process rewrites its marker.
pub const HEARTBEAT: Duration = Duration::from_secs(20);
/// A marker not rewritten for this long belongs to a dead (or cut-off) process. Far above
/// [`HEARTBEAT`]: a live process that misses a few heartbeats (a slow store) keeps its uploads.
pub const LEASE: Duration = Duration::from_secs(300);

/// What a marker records about its process.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub host: String,
    /// `/proc/sys/kernel/random/boot_id`: pids compare only within one boot.
    pub boot_id: Option<String>,
    /// `/proc/self/ns/pid` (e.g. `pid:[4026531836]`): containers on one host share the boot id
    /// but not the pid namespace.
    pub pid_ns: Option<String>,
    pub pid: u32,
    /// The pid's start time (clock ticks since boot), so a reused pid is not taken for it.
    pub start_ticks: Option<u64>,
}

impl Identity {
    /// This process.
    pub fn current() -> Self {
        let pid = std::process::id();
        let read = |p: &str| {
            std::fs::read_to_string(p)
                .ok()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
        };
        Self {
            host: read("/etc/hostname").unwrap_or_else(|| "unknown".into()),
            boot_id: read("/proc/sys/kernel/random/boot_id"),
            pid_ns: std::fs::read_link("/proc/self/ns/pid")
                .ok()
                .map(|p| p.display().to_string()),
            pid,
            start_ticks: start_ticks(pid),
        }
    }

    /// Whether the process this identity names is alive, when `here` (this process) can tell:
    /// same boot and pid namespace. `None` when it runs elsewhere.
    pub fn alive_seen_from(&self, here: &Identity) -> Option<bool> {
        let comparable = self.boot_id.is_some()
            && self.pid_ns.is_some()
            && self.start_ticks.is_some()
            && self.boot_id == here.boot_id
            && self.pid_ns == here.pid_ns;
        comparable
            .then(|| start_ticks(self.pid).is_some() && start_ticks(self.pid) == self.start_ticks)
    }
}

/// Field 22 of `/proc/<pid>/stat` (start time), or `None` when the pid does not run (zombies
/// included: a killed child not yet reaped is dead).
fn start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count after it.
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    if matches!(fields.first(), Some(&"Z") | Some(&"X") | None) {
        return None;
    }
    fields.get(19)?.parse().ok()
}

/// A blob store's owner id and whether it is claimed (shared by the store's clones).
pub(crate) struct Staging {
    pub id: String,
    pub identity: Identity,
    pub claimed: AtomicBool,
    pub heartbeat: Mutex<Option<JoinHandle<()>>>,
}

impl Staging {
    pub fn new() -> Self {
        Self {
            id: uuid::Uuid::new_v4().simple().to_string(),
            identity: Identity::current(),
            claimed: AtomicBool::new(false),
            heartbeat: Mutex::new(None),
        }
    }

    pub fn is_claimed(&self) -> bool {
        self.claimed.load(Ordering::Acquire)
    }

    pub fn marker_body(&self) -> bytes::Bytes {
        serde_json::to_vec(&self.identity)
            .unwrap_or_default()
            .into()
    }

    pub fn stop_heartbeat(&self) {
        if let Some(task) = self.heartbeat.lock().ok().and_then(|mut h| h.take()) {
            task.abort();
        }
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        self.stop_heartbeat();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_a_dead_one_is_not() {
        let here = Identity::current();
        if here.boot_id.is_none() || here.start_ticks.is_none() {
            return; // not Linux: only the lease applies
        }
        assert_eq!(here.alive_seen_from(&here), Some(true));
        // A pid reused by another process: its start time differs.
        let reused = Identity {
            start_ticks: here.start_ticks.map(|t| t + 1),
            ..here.clone()
        };
        assert_eq!(reused.alive_seen_from(&here), Some(false));
        // A child that exited and was reaped.
        let mut child = std::process::Command::new("true").spawn().expect("spawn");
        let pid = child.id();
        let started = start_ticks(pid);
        child.wait().expect("wait");
        let gone = Identity {
            pid,
            start_ticks: started.or(here.start_ticks),
            ..here.clone()
        };
        assert_eq!(gone.alive_seen_from(&here), Some(false));
        // Another host or container: cannot tell.
        let elsewhere = Identity {
            pid_ns: Some("pid:[1]".into()),
            ..here.clone()
        };
        assert_eq!(elsewhere.alive_seen_from(&here), None);
    }
}
