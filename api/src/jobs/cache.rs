//! Input blobs a worker process fetched from a remote store (S3), kept for the next jobs that
//! name them: content-addressed, so never stale. Bounded by a byte budget, least recently used
//! out first. Jobs get hard links to the cached files, so evicting one never disturbs a job.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use quiver_store::{BlobStore, StoreError};

pub struct InputCache {
    dir: PathBuf,
    budget: u64,
    entries: Mutex<Entries>,
}

#[derive(Default)]
struct Entries {
    /// sha256 → (size, last use).
    by_hash: HashMap<String, (u64, u64)>,
    used: u64,
    clock: u64,
}

fn io(path: &Path, e: std::io::Error) -> StoreError {
    StoreError::Invalid(format!("input cache {}: {e}", path.display()))
}

impl InputCache {
    /// A cache in `dir` (created) holding at most `budget` bytes; 0 turns it off.
    pub fn new(dir: PathBuf, budget: u64) -> std::io::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        Ok(Self {
            dir,
            budget,
            entries: Mutex::default(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Places blob `sha256` (of `size` bytes) at `dest`, from the cache when it holds it.
    pub async fn place(
        &self,
        blobs: &BlobStore,
        sha256: &str,
        size: u64,
        dest: &Path,
    ) -> Result<(), StoreError> {
        if size > self.budget {
            return blobs.fetch_to(sha256, dest).await;
        }
        let cached = self.dir.join(sha256);
        let hit = {
            let mut e = self.lock();
            e.clock += 1;
            let now = e.clock;
            e.by_hash
                .get_mut(sha256)
                .map(|entry| entry.1 = now)
                .is_some()
        };
        // A hit can still miss the file if it was evicted meanwhile: fetch it then.
        if hit && std::fs::hard_link(&cached, dest).is_ok() {
            return Ok(());
        }
        let partial = self.dir.join(format!(
            "{sha256}.partial-{}",
            uuid::Uuid::new_v4().simple()
        ));
        if let Err(e) = blobs.fetch_to(sha256, &partial).await {
            let _ = std::fs::remove_file(&partial);
            return Err(e);
        }
        std::fs::rename(&partial, &cached).map_err(|e| io(&cached, e))?;
        std::fs::hard_link(&cached, dest).map_err(|e| io(dest, e))?;
        let evict = {
            let mut e = self.lock();
            e.clock += 1;
            let now = e.clock;
            if e.by_hash.insert(sha256.to_string(), (size, now)).is_none() {
                e.used += size;
            }
            let mut evict = Vec::new();
            while e.used > self.budget {
                let Some(oldest) = e
                    .by_hash
                    .iter()
                    .filter(|(h, _)| h.as_str() != sha256)
                    .min_by_key(|(_, (_, used))| *used)
                    .map(|(h, _)| h.clone())
                else {
                    break;
                };
                if let Some((size, _)) = e.by_hash.remove(&oldest) {
                    e.used -= size;
                }
                evict.push(oldest);
            }
            evict
        };
        for h in evict {
            let _ = std::fs::remove_file(self.dir.join(h));
        }
        Ok(())
    }

    /// Bytes held (for tests).
    pub fn used(&self) -> u64 {
        self.lock().used
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    async fn blob(blobs: &BlobStore, body: &'static [u8]) -> String {
        let mut up = blobs.begin();
        up.write(Bytes::from_static(body)).await.expect("write");
        let staged = up.finish().await.expect("finish");
        blobs.commit(&staged).await.expect("commit");
        blobs.discard(&staged).await;
        staged.sha256.clone()
    }

    #[tokio::test]
    async fn keeps_recent_inputs_within_its_budget() {
        let tmp = tempfile::tempdir().expect("tmp");
        let blobs =
            BlobStore::from_url(&format!("file://{}/blobs", tmp.path().display())).expect("store");
        let cache = InputCache::new(tmp.path().join("cache"), 20).expect("cache");
        let a = blob(&blobs, b"aaaaaaaaaa").await;
        let b = blob(&blobs, b"bbbbbbbbbb").await;
        let c = blob(&blobs, b"cccccccccc").await;
        let out = |n: &str| tmp.path().join(n);
        cache.place(&blobs, &a, 10, &out("a1")).await.expect("a");
        cache.place(&blobs, &b, 10, &out("b1")).await.expect("b");
        cache
            .place(&blobs, &a, 10, &out("a2"))
            .await
            .expect("a again"); // a is now newer than b
        cache.place(&blobs, &c, 10, &out("c1")).await.expect("c");
        assert_eq!(cache.used(), 20);
        assert!(cache.dir.join(&a).exists() && cache.dir.join(&c).exists());
        assert!(!cache.dir.join(&b).exists(), "the least recently used went");
        // What jobs were given stays whole; a blob evicted or too large is fetched again.
        assert_eq!(std::fs::read(out("b1")).expect("b1"), b"bbbbbbbbbb");
        cache
            .place(&blobs, &b, 10, &out("b2"))
            .await
            .expect("b again");
        assert_eq!(std::fs::read(out("b2")).expect("b2"), b"bbbbbbbbbb");
        let big = blob(&blobs, b"larger than the whole budget").await;
        cache
            .place(&blobs, &big, 28, &out("big"))
            .await
            .expect("big");
        assert!(!cache.dir.join(&big).exists());
        assert_eq!(cache.used(), 20);
        assert!(matches!(
            cache.place(&blobs, &"0".repeat(64), 1, &out("none")).await,
            Err(StoreError::BlobMissing(_))
        ));
    }
}
