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
//!
//! One request builds a missing page while others asking for it at the same generation wait for
//! that page instead of all running the same queries at once; when an entry has only expired,
//! they are served the expired entry while one request rebuilds it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::sync::watch;

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

/// A page being built: its generation, and a channel that closes when the builder is done.
struct Building {
    generation: i64,
    serial: u64,
    done: watch::Receiver<()>,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<String, Entry>,
    bytes: usize,
    building: HashMap<String, Building>,
    serial: u64,
}

/// What to do about one request for a page.
pub enum Lookup<'a> {
    Hit(CachedPage),
    /// Build the page and pass it to [`Fill::put`].
    Build(Fill<'a>),
    /// Another request is building this page: wait for it, then look again.
    Wait(watch::Receiver<()>),
}

/// The right to build one page. Dropping it (the build failed) lets the waiters try themselves.
pub struct Fill<'a> {
    cache: &'a ListCache,
    key: String,
    generation: i64,
    /// Registered in `building` (others wait for it) when set.
    serial: Option<u64>,
    _done: Option<watch::Sender<()>>,
}

impl Fill<'_> {
    /// Stores the page (when the cache is on) and releases the waiters.
    pub fn put(mut self, page: CachedPage) {
        if self.cache.enabled() {
            let key = std::mem::take(&mut self.key);
            let mut inner = self.cache.lock();
            if let Some(serial) = self.serial.take() {
                inner.finish_building(&key, serial);
            }
            self.cache.insert(&mut inner, key, self.generation, page);
        }
    }
}

impl Drop for Fill<'_> {
    fn drop(&mut self) {
        if let Some(serial) = self.serial {
            self.cache.lock().finish_building(&self.key, serial);
        }
    }
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

    /// Decides how to answer a request for the page `key` at `generation` (read from the store
    /// before this call).
    pub fn lookup(&self, key: &str, generation: i64) -> Lookup<'_> {
        let unregistered = || {
            Lookup::Build(Fill {
                cache: self,
                key: key.to_string(),
                generation,
                serial: None,
                _done: None,
            })
        };
        if !self.enabled() {
            return unregistered();
        }
        let mut inner = self.lock();
        let entry = inner
            .entries
            .get(key)
            .filter(|e| e.generation == generation);
        if let Some(e) = entry
            && e.stored.elapsed() < MAX_AGE
        {
            return Lookup::Hit(e.page.clone());
        }
        let expired = entry.map(|e| e.page.clone());
        if let Some(b) = inner.building.get(key) {
            if let Some(page) = expired {
                return Lookup::Hit(page); // being rebuilt only because it aged
            }
            if b.generation == generation {
                return Lookup::Wait(b.done.clone());
            }
            return unregistered(); // the one being built is of another generation
        }
        inner.serial += 1;
        let serial = inner.serial;
        let (tx, rx) = watch::channel(());
        inner.building.insert(
            key.to_string(),
            Building {
                generation,
                serial,
                done: rx,
            },
        );
        Lookup::Build(Fill {
            cache: self,
            key: key.to_string(),
            generation,
            serial: Some(serial),
            _done: Some(tx),
        })
    }

    /// The page stored under `key` if it was built at `generation` less than [`MAX_AGE`] ago.
    #[cfg(test)]
    fn get(&self, key: &str, generation: i64) -> Option<CachedPage> {
        match self.lookup(key, generation) {
            Lookup::Hit(page) => Some(page),
            _ => None,
        }
    }

    /// Stores a page built from data at least as new as `generation`.
    #[cfg(test)]
    fn put(&self, key: String, generation: i64, page: CachedPage) {
        if self.enabled() {
            let mut inner = self.lock();
            self.insert(&mut inner, key, generation, page);
        }
    }

    fn insert(&self, inner: &mut Inner, key: String, generation: i64, page: CachedPage) {
        let size = page.body.len() + key.len();
        if size > self.capacity_bytes / 4 {
            return; // one page may not push out most of the cache
        }
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
    fn finish_building(&mut self, key: &str, serial: u64) {
        if self.building.get(key).is_some_and(|b| b.serial == serial) {
            self.building.remove(key);
        }
    }

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
        assert!(!cache.lock().entries.contains_key("old"));
    }

    #[test]
    fn oversized_pages_are_not_cached() {
        let cache = ListCache::new(1000);
        cache.put("big".into(), 1, page(600));
        assert!(cache.get("big", 1).is_none());
    }

    #[tokio::test]
    async fn one_request_builds_while_the_others_wait() {
        let cache = ListCache::new(1 << 20);
        let Lookup::Build(fill) = cache.lookup("k", 3) else {
            panic!("first request builds")
        };
        let Lookup::Wait(mut done) = cache.lookup("k", 3) else {
            panic!("second request waits")
        };
        assert!(
            matches!(cache.lookup("k", 4), Lookup::Build(_)),
            "a newer generation does not wait for an older page"
        );
        fill.put(page(10));
        let _ = done.changed().await;
        assert!(matches!(cache.lookup("k", 3), Lookup::Hit(_)));
    }

    #[tokio::test]
    async fn a_failed_build_releases_the_waiters() {
        let cache = ListCache::new(1 << 20);
        let Lookup::Build(fill) = cache.lookup("k", 1) else {
            panic!("builds")
        };
        let Lookup::Wait(mut done) = cache.lookup("k", 1) else {
            panic!("waits")
        };
        drop(fill);
        let _ = done.changed().await;
        assert!(matches!(cache.lookup("k", 1), Lookup::Build(_)));
    }

    #[test]
    fn an_aged_page_is_served_while_one_request_rebuilds_it() {
        let cache = ListCache::new(1 << 20);
        cache.put("k".into(), 1, page(10));
        cache.lock().entries.get_mut("k").expect("entry").stored -= MAX_AGE * 2;
        let Lookup::Build(_rebuild) = cache.lookup("k", 1) else {
            panic!("the first request after expiry rebuilds")
        };
        assert!(matches!(cache.lookup("k", 1), Lookup::Hit(_)));
        assert!(
            !matches!(cache.lookup("k", 2), Lookup::Hit(_)),
            "never across a generation"
        );
    }

    #[test]
    fn etag_follows_content() {
        // A strong ETag of the first 128 bits of the body's sha256: "xxxxx" has a known one.
        assert_eq!(page(5).etag, "\"eaf16bc07968e013f3f94ab134247243\"");
        assert_eq!(
            CachedPage::new(b"xxxxx".to_vec()).etag,
            page(5).etag,
            "the same bytes built apart"
        );
        assert_ne!(page(5).etag, page(6).etag);
    }
}
