//! The workers' scratch space: one directory per process under `--scratch-dir`, holding one
//! directory per running job, removed when the job ends.
//!
//! Several processes may share a scratch root. Each holds an exclusive lock on `lock` in its own
//! directory for as long as it runs, so at start a process removes exactly the directories of
//! processes that are gone (killed mid-job), never a live one's.

use std::fs::File;
use std::path::{Path, PathBuf};

pub struct Scratch {
    dir: PathBuf,
    /// Held for the life of the process; the OS releases it when the process dies.
    _lock: File,
}

impl Scratch {
    /// Creates this process's directory under `root` and removes those of dead processes.
    pub fn open(root: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(root)?;
        for entry in std::fs::read_dir(root)? {
            let path = entry?.path();
            if !path.is_dir() {
                continue;
            }
            let abandoned = match File::open(path.join("lock")) {
                Ok(f) => f.try_lock().is_ok(),
                Err(_) => true,
            };
            if abandoned {
                tracing::info!(dir = %path.display(), "removing scratch space of a stopped worker");
                let _ = std::fs::remove_dir_all(&path);
            }
        }
        let dir = root.join(format!(
            "{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir)?;
        let lock = File::create(dir.join("lock"))?;
        lock.lock()?;
        Ok(Self { dir, _lock: lock })
    }

    /// This process's directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// A fresh, empty directory for one job; removed when the guard drops.
    pub fn job_dir(&self, job_id: &str) -> std::io::Result<JobDir> {
        let path = self.dir.join(job_id);
        if path.exists() {
            std::fs::remove_dir_all(&path)?;
        }
        std::fs::create_dir_all(&path)?;
        Ok(JobDir(path))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One job's scratch directory.
pub struct JobDir(PathBuf);

impl JobDir {
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for JobDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            tracing::warn!(dir = %self.0.display(), error = %e, "could not remove a job's scratch directory");
        }
    }
}
