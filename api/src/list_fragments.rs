//! Adapters as a listing shows them, kept between listing pages.
//!
//! The page cache ([`crate::list_cache`]) answers the same page asked again; a page it does not
//! hold — another filter, search term, cursor or viewer — would cost the database the whole
//! page: every adapter's tags, newest version, files and aliases, as JSON. With this cache such a
//! page is one query for its ids (with the listing generation, read by the same statement), then
//! one more only for the adapters not kept here.
//!
//! An entry is served only at the generation at which it was read: any change committed by any
//! process sharing the database makes every entry stale, as for the page cache; the first lookup
//! that sees the newer generation drops them. Download counts, which do not move the generation,
//! are at most [`MAX_AGE`] old.
//!
//! Each entry also holds its adapter's JSON as the listing shows it, made by the first page that
//! needs it (the use case decides when that JSON is the same for every viewer).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use quiver_store::ListedAdapter;
use serde_json::Value;

use crate::list_cache::MAX_AGE;

/// One adapter as kept.
pub struct Kept {
    pub item: ListedAdapter,
    /// Its view's JSON, when one was made for every viewer.
    pub json: OnceLock<Vec<u8>>,
}

impl Kept {
    pub fn new(item: ListedAdapter) -> Arc<Self> {
        Arc::new(Self {
            item,
            json: OnceLock::new(),
        })
    }
}

struct Fragment {
    stored: Instant,
    weight: usize,
    item: Arc<Kept>,
}

#[derive(Default)]
struct Inner {
    /// The generation every entry was read at.
    generation: i64,
    entries: HashMap<i64, Fragment>,
    bytes: usize,
}

impl Inner {
    /// Moves to `generation` when it is newer, dropping every entry; false when it is older.
    fn at(&mut self, generation: i64) -> bool {
        if generation > self.generation {
            self.generation = generation;
            self.entries.clear();
            self.bytes = 0;
        }
        generation == self.generation
    }
}

/// Bounded by the approximate size of the adapters it holds; `capacity_bytes = 0` disables it.
pub struct FragmentCache {
    capacity_bytes: usize,
    inner: Mutex<Inner>,
}

impl FragmentCache {
    pub fn new(capacity_bytes: usize) -> Self {
        Self {
            capacity_bytes,
            inner: Mutex::default(),
        }
    }

    pub fn enabled(&self) -> bool {
        self.capacity_bytes > 0
    }

    /// The kept adapters of `ids` valid at `generation`, in the same order; `None` where none is.
    pub fn get(&self, generation: i64, ids: &[i64]) -> Vec<Option<Arc<Kept>>> {
        let mut inner = self.lock();
        if !self.enabled() || !inner.at(generation) {
            return vec![None; ids.len()];
        }
        ids.iter()
            .map(|id| {
                inner
                    .entries
                    .get(id)
                    .filter(|f| f.stored.elapsed() < MAX_AGE)
                    .map(|f| f.item.clone())
            })
            .collect()
    }

    /// Keeps `items`, read after `generation` was. When they do not fit, what has expired goes
    /// first, then everything (the next pages refill it).
    pub fn put(&self, generation: i64, items: &[Arc<Kept>]) {
        if !self.enabled() {
            return;
        }
        let mut inner = self.lock();
        if !inner.at(generation) {
            return; // read before a change others have already seen
        }
        let now = Instant::now();
        for item in items {
            let weight = weight(&item.item);
            if weight > self.capacity_bytes {
                continue;
            }
            if let Some(old) = inner.entries.remove(&item.item.adapter.id) {
                inner.bytes -= old.weight;
            }
            if inner.bytes + weight > self.capacity_bytes {
                inner
                    .entries
                    .retain(|_, f| now.duration_since(f.stored) < MAX_AGE);
                inner.bytes = inner.entries.values().map(|f| f.weight).sum();
                if inner.bytes + weight > self.capacity_bytes {
                    inner.entries.clear();
                    inner.bytes = 0;
                }
            }
            inner.bytes += weight;
            inner.entries.insert(
                item.item.adapter.id,
                Fragment {
                    stored: now,
                    weight,
                    item: item.clone(),
                },
            );
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // The map is consistent after every statement: a panic elsewhere leaves it usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Roughly the bytes an adapter holds: its text, lists and JSON values, and a fixed overhead
/// per allocation; as much again for its JSON.
fn weight(l: &ListedAdapter) -> usize {
    2 * record_weight(l)
}

fn record_weight(l: &ListedAdapter) -> usize {
    const SLOT: usize = 32;
    let a = &l.adapter;
    let mut n = 256 + a.owner.len() + a.name.len() + a.base_model.len() + a.description.len();
    n += a.tags.iter().map(|t| t.len() + SLOT).sum::<usize>();
    n += l
        .aliases
        .iter()
        .map(|(name, _)| name.len() + SLOT)
        .sum::<usize>();
    n += l.protected.iter().map(|p| p.len() + SLOT).sum::<usize>();
    if let Some(v) = &l.latest {
        n += 128 + v.revision.len() + v.state.len() + v.created_by.len();
        n += v
            .files
            .iter()
            .map(|f| f.path.len() + f.sha256.len() + 3 * SLOT)
            .sum::<usize>();
        n += v.lora.as_ref().map_or(0, value_weight);
        n += v.lineage.as_ref().map_or(0, value_weight);
    }
    n
}

fn value_weight(v: &Value) -> usize {
    const NODE: usize = 48;
    NODE + match v {
        Value::String(s) => s.len(),
        Value::Array(items) => items.iter().map(value_weight).sum(),
        Value::Object(map) => map.iter().map(|(k, v)| k.len() + value_weight(v)).sum(),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quiver_store::AdapterRecord;

    fn item(id: i64, description: &str) -> Arc<Kept> {
        Kept::new(ListedAdapter {
            adapter: AdapterRecord {
                id,
                owner: "o".into(),
                name: format!("a{id}"),
                base_model: "b".into(),
                description: description.into(),
                tags: vec![],
                private: false,
                downloads: 0,
                created_at: 0,
                updated_at: 0,
            },
            latest: None,
            aliases: vec![],
            protected: vec![],
        })
    }

    fn kept(cache: &FragmentCache, generation: i64, ids: &[i64]) -> Vec<Option<i64>> {
        cache
            .get(generation, ids)
            .into_iter()
            .map(|f| f.map(|f| f.item.adapter.id))
            .collect()
    }

    #[test]
    fn serves_only_at_the_generation_read() {
        let cache = FragmentCache::new(1 << 20);
        cache.put(3, &[item(1, ""), item(2, "")]);
        assert_eq!(kept(&cache, 3, &[2, 9, 1]), [Some(2), None, Some(1)]);
        // An older reader neither sees nor stores anything; a newer one drops every entry.
        assert_eq!(kept(&cache, 2, &[1]), [None]);
        cache.put(2, &[item(5, "")]);
        assert_eq!(kept(&cache, 3, &[5]), [None]);
        assert_eq!(kept(&cache, 4, &[1, 2]), [None, None]);
        assert_eq!(kept(&cache, 3, &[1]), [None]);
        cache.put(4, &[item(1, "")]);
        assert_eq!(kept(&cache, 4, &[1]), [Some(1)]);
    }

    #[test]
    fn stays_within_its_budget() {
        let one = weight(&item(1, &"x".repeat(1000)).item);
        let cache = FragmentCache::new(3 * one);
        for id in 0..10 {
            cache.put(1, &[item(id, &"x".repeat(1000))]);
            assert!(cache.lock().bytes <= 3 * one);
        }
        // The newest entry always fits; one larger than the whole budget is not kept.
        assert_eq!(kept(&cache, 1, &[9]), [Some(9)]);
        cache.put(1, &[item(20, &"x".repeat(4 * one))]);
        assert_eq!(kept(&cache, 1, &[20]), [None]);
        // Storing an entry again replaces it without counting it twice.
        let before = cache.lock().bytes;
        cache.put(1, &[item(9, &"x".repeat(1000))]);
        assert_eq!(cache.lock().bytes, before);
    }

    #[test]
    fn off_at_zero_bytes() {
        let cache = FragmentCache::new(0);
        cache.put(1, &[item(1, "")]);
        assert_eq!(kept(&cache, 1, &[1]), [None]);
    }
}
