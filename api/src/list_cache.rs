//! A cache of serialized adapter-listing pages.
//!
//! A listing page costs several queries and the JSON of up to 500 adapters; the same few pages
//! (the front page, popular searches) are asked for over and over. Each entry is stored with the
//! store's listing generation read *before* the page was built, and is served only while that
//! generation is unchanged. The generation is bumped inside every writing transaction (database
//! triggers, migration 0002), so a change made by any process sharing the database, this one or
//! another, invalidates every entry: a cached page is never older than the last committed change.
//! The one exception is download counts, which would otherwise invalidate everything on every
//! download; entries expire after [`MAX_AGE`] so those are at most that old.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sha2::{Digest, Sha256};

/// How long an entry may be served while its generation still holds (bounds download-count age).
pub const MAX_AGE: Duration = Duration::from_secs(5);

/// A page as sent: the body and its strong `ETag` (quoted).
#[derive(Clone)]
pub struct CachedPage {
    pub body: Bytes,
    pub etag: String,
}

impl CachedPage {
    pub fn new(body: Vec<u8>) -> Self {
        let digest = Sha256::digest(&body);
        Self {
            etag: format!("\"{}\"", hex::encode(&digest[..16])),
            body: Bytes::from(body),
        }
    }
}

struct Entry {
    generation: i64,
    stored: Instant,
    page: CachedPage,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<String, Entry>,
    bytes: usize,
}

/// Bounded by the total size of the bodies it holds; `capacity_bytes = 0` disables it.
pub struct ListCache {
    capacity_bytes: usize,
    inner: Mutex<Inner>,
}

impl ListCache {
    pub fn new(capacity_bytes: usize) -> Self {
        Self {
            capacity_bytes,
            inner: Mutex::default(),
        }
    }

    pub fn enabled(&self) -> bool {
        self.capacity_bytes > 0
    }

    /// The page stored under `key` if it was built at `generation` less than [`MAX_AGE`] ago.
    pub fn get(&self, key: &str, generation: i64) -> Option<CachedPage> {
        if !self.enabled() {
            return None;
        }
        let inner = self.lock();
        inner
            .entries
            .get(key)
            .filter(|e| e.generation == generation && e.stored.elapsed() < MAX_AGE)
            .map(|e| e.page.clone())
    }

    /// Stores a page built from data at least as new as `generation`.
    pub fn put(&self, key: String, generation: i64, page: CachedPage) {
        let size = page.body.len() + key.len();
        if size > self.capacity_bytes / 4 {
            return; // one page may not push out most of the cache
        }
        let mut inner = self.lock();
        if let Some(old) = inner.entries.remove(&key) {
            inner.bytes -= old.page.body.len() + key.len();
        }
        if inner.bytes + size > self.capacity_bytes {
            inner.evict(generation, self.capacity_bytes - size);
        }
        inner.bytes += size;
        inner.entries.insert(
            key,
            Entry {
                generation,
                stored: Instant::now(),
                page,
            },
        );
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the map inconsistent with `bytes` in a way
        // that matters more than losing the cache, so a poisoned lock is simply taken over.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Inner {
    /// Drops entries of other generations, then the oldest, until at most `target` bytes remain.
    fn evict(&mut self, generation: i64, target: usize) {
        let mut freed = 0;
        self.entries.retain(|key, e| {
            let keep = e.generation == generation;
            if !keep {
                freed += e.page.body.len() + key.len();
            }
            keep
        });
        self.bytes -= freed;
        if self.bytes <= target {
            return;
        }
        let mut by_age: Vec<(Instant, String)> = self
            .entries
            .iter()
            .map(|(k, e)| (e.stored, k.clone()))
            .collect();
        by_age.sort_unstable();
        for (_, key) in by_age {
            if self.bytes <= target {
                break;
            }
            if let Some(e) = self.entries.remove(&key) {
                self.bytes -= e.page.body.len() + key.len();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(n: usize) -> CachedPage {
        CachedPage::new(vec![b'x'; n])
    }

    #[test]
    fn serves_only_the_generation_it_was_built_at() {
        let cache = ListCache::new(1 << 20);
        cache.put("k".into(), 7, page(10));
        assert!(cache.get("k", 7).is_some());
        assert!(cache.get("k", 8).is_none());
        assert!(cache.get("other", 7).is_none());
    }

    #[test]
    fn disabled_cache_stores_nothing() {
        let cache = ListCache::new(0);
        cache.put("k".into(), 1, page(10));
        assert!(cache.get("k", 1).is_none());
    }

    #[test]
    fn stays_within_its_byte_budget() {
        let cache = ListCache::new(1000);
        for i in 0..50 {
            cache.put(format!("k{i}"), 1, page(100));
            assert!(cache.lock().bytes <= 1000);
        }
        // The newest entries survive.
        assert!(cache.get("k49", 1).is_some());
        assert!(cache.get("k0", 1).is_none());
        // Replacing an entry does not count it twice.
        cache.put("k49".into(), 1, page(100));
        let inner = cache.lock();
        let counted: usize = inner
            .entries
            .iter()
            .map(|(k, e)| k.len() + e.page.body.len())
            .sum();
        assert_eq!(inner.bytes, counted);
    }

    #[test]
    fn stale_generations_go_first() {
        let cache = ListCache::new(1000);
        cache.put("old".into(), 1, page(200));
        cache.put("new1".into(), 2, page(200));
        cache.put("new2".into(), 2, page(200));
        cache.put("new3".into(), 2, page(200));
        cache.put("new4".into(), 2, page(200)); // over budget: "old" is dropped, not "new1"
        assert!(cache.get("new1", 2).is_some());
        assert!(cache.lock().entries.get("old").is_none());
    }

    #[test]
    fn oversized_pages_are_not_cached() {
        let cache = ListCache::new(1000);
        cache.put("big".into(), 1, page(600));
        assert!(cache.get("big", 1).is_none());
    }

    #[test]
    fn etag_follows_content() {
        assert_eq!(page(5).etag, page(5).etag);
        assert_ne!(page(5).etag, page(6).etag);
    }
}
