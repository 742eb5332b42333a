//! The in-memory vector index: every profile row as f32 (exact scores) and as int8 codes (the
//! scan). Small indexes are scanned exactly. Large ones are scanned in int8 on every core, the
//! best `max(10·k, 100)` adapters by the approximate score are re-scored exactly in f32, and the
//! best `k` of those are returned; `search_exact` is the reference the recall is measured against.
//! `search_hybrid` re-ranks the dense candidates with BM25 over the adapters' samples
//! ([`crate::lexical`]) when the query's text is known.

use rayon::prelude::*;

use crate::lexical::{DEFAULT_LEXICAL_WEIGHT, Lexicon, TermCounts, fuse, terms};
use crate::profile::mean;
use crate::scan::{dot_f32, dots_i8, quantize};
use crate::{Recipe, normalized};

/// Below this many row values (rows × dim) a search is an exact f32 scan.
const EXACT_BELOW: usize = 4 << 20;
/// Adapters scanned per parallel task.
const CHUNK: usize = 2048;

/// What is indexed for one adapter: its metadata, its sample embeddings (unit vectors) and the
/// terms of its samples, if known (BM25; none for uploaded vectors).
pub struct IndexItem<M> {
    pub meta: M,
    pub samples: Vec<Vec<f32>>,
    pub terms: Option<TermCounts>,
}

/// One result: the adapter's position in the index and its score (cosine-based, per recipe).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Hit {
    pub entry: usize,
    pub score: f32,
}

pub struct Index<M> {
    dim: usize,
    recipe: Recipe,
    metas: Vec<M>,
    /// Rows of entry `i`: `offsets[i]..offsets[i + 1]`.
    offsets: Vec<usize>,
    rows: Vec<f32>,
    codes: Vec<i8>,
    scales: Vec<f32>,
    /// The mean of every indexed sample, for centred recipes (queries are centred with it).
    center: Option<Vec<f32>>,
    /// BM25 over the entries' terms; `None` when no entry has terms.
    lexicon: Option<Lexicon>,
    lexical_weight: f32,
}

impl<M: Sync> Index<M> {
    /// Builds the index; items whose samples do not have dimension `dim` are skipped.
    pub fn build(
        dim: usize,
        recipe: Recipe,
        items: impl IntoIterator<Item = IndexItem<M>>,
    ) -> Self {
        Self::build_with(dim, recipe, items, &|_| true)
    }

    /// As [`Index::build`], with the mean of centred recipes and BM25's corpus statistics taken
    /// over the items `centre_from` accepts only (the service passes public adapters, so that no
    /// private profile shifts the scores others see).
    pub fn build_with(
        dim: usize,
        recipe: Recipe,
        items: impl IntoIterator<Item = IndexItem<M>>,
        centre_from: &dyn Fn(&M) -> bool,
    ) -> Self {
        let items: Vec<IndexItem<M>> = items
            .into_iter()
            .filter(|item| !item.samples.is_empty() && item.samples.iter().all(|s| s.len() == dim))
            .collect();
        let center = recipe.centred().then(|| {
            let shared = items
                .iter()
                .filter(|i| centre_from(&i.meta))
                .flat_map(|i| &i.samples);
            mean(shared, dim)
        });
        let mut index = Index {
            dim,
            recipe,
            metas: Vec::new(),
            offsets: vec![0],
            rows: Vec::new(),
            codes: Vec::new(),
            scales: Vec::new(),
            center: None,
            lexicon: Lexicon::build(
                items
                    .iter()
                    .map(|i| (i.terms.as_ref(), centre_from(&i.meta))),
            ),
            lexical_weight: DEFAULT_LEXICAL_WEIGHT,
        };
        for item in items {
            let rows = match &center {
                Some(c) => recipe.rows_centred(&item.samples, c),
                None => recipe.rows(&item.samples),
            };
            for row in rows {
                index.scales.push(quantize(&row, &mut index.codes));
                index.rows.extend_from_slice(&row);
            }
            index.metas.push(item.meta);
            index.offsets.push(index.scales.len());
        }
        index.center = center;
        index
    }

    /// Sets how much BM25 counts in [`Index::search_hybrid`] (0: not at all).
    pub fn with_lexical_weight(mut self, weight: f32) -> Self {
        self.lexical_weight = weight.max(0.0);
        self
    }

    /// The query in the index's coordinates (centred for centred recipes).
    fn prepare<'q>(&self, query: &'q [f32]) -> std::borrow::Cow<'q, [f32]> {
        match &self.center {
            Some(c) => std::borrow::Cow::Owned(normalized(
                query.iter().zip(c).map(|(q, m)| q - m).collect(),
            )),
            None => std::borrow::Cow::Borrowed(query),
        }
    }

    pub fn len(&self) -> usize {
        self.metas.len()
    }

    pub fn is_empty(&self) -> bool {
        self.metas.is_empty()
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    pub fn recipe(&self) -> Recipe {
        self.recipe
    }

    pub fn row_count(&self) -> usize {
        self.scales.len()
    }

    pub fn meta(&self, entry: usize) -> &M {
        &self.metas[entry]
    }

    /// Bytes held by the vectors (f32 rows, int8 codes, scales, offsets) and the BM25 postings,
    /// not the metadata.
    pub fn vector_bytes(&self) -> usize {
        self.rows.len() * 4
            + self.codes.len()
            + self.scales.len() * 4
            + self.offsets.len() * 8
            + self.lexicon.as_ref().map_or(0, Lexicon::bytes)
    }

    /// As [`Index::search`], then, given the query's `text` and an index with terms, the best
    /// `max(10·k, 100)` dense candidates are re-ranked by `dense + w · (σ_dense / σ_bm25) · bm25`
    /// ([`crate::lexical`]); the returned scores are those sums.
    pub fn search_hybrid(
        &self,
        query: &[f32],
        text: Option<&str>,
        k: usize,
        keep: &(dyn Fn(&M) -> bool + Sync),
    ) -> Vec<Hit> {
        let (Some(lexicon), Some(text)) = (&self.lexicon, text) else {
            return self.search(query, k, keep);
        };
        let query_terms = terms(text);
        if self.lexical_weight == 0.0 || query_terms.is_empty() {
            return self.search(query, k, keep);
        }
        let candidates = self.candidates(query, k, keep);
        let entries: Vec<usize> = candidates.iter().map(|h| h.entry).collect();
        let dense: Vec<f32> = candidates.iter().map(|h| h.score).collect();
        let fused = fuse(
            &dense,
            &lexicon.scores(&query_terms, &entries),
            self.lexical_weight,
        );
        let hits = entries
            .into_iter()
            .zip(fused)
            .map(|(entry, score)| Hit { entry, score })
            .collect();
        best(hits, k)
    }

    /// The best `k` adapters for a unit `query` among those `keep` accepts, best first.
    pub fn search(&self, query: &[f32], k: usize, keep: &(dyn Fn(&M) -> bool + Sync)) -> Vec<Hit> {
        best(self.candidates(query, k, keep), k)
    }

    /// The best `max(10·k, 100)` accepted adapters with exact scores, in no set order: from
    /// the exact scan when the index is small, else the int8 scan's best re-scored in f32.
    fn candidates(&self, query: &[f32], k: usize, keep: &(dyn Fn(&M) -> bool + Sync)) -> Vec<Hit> {
        let query = &*self.prepare(query);
        let candidates = (10 * k).max(100);
        if self.rows.len() < EXACT_BELOW {
            return self.exact(query, candidates, keep);
        }
        let mut code = Vec::with_capacity(self.dim);
        let query_scale = quantize(query, &mut code);
        let entries: Vec<usize> = (0..self.len()).collect();
        let approximate: Vec<Hit> = entries
            .par_chunks(CHUNK)
            .flat_map_iter(|chunk| {
                let first_row = self.offsets[chunk[0]];
                let end_row = self.offsets[chunk[chunk.len() - 1] + 1];
                let mut dots = vec![0i32; end_row - first_row];
                dots_i8(
                    &code,
                    &self.codes[first_row * self.dim..end_row * self.dim],
                    &mut dots,
                );
                let mut scores = Vec::new();
                let mut hits = Vec::new();
                for &entry in chunk {
                    if !keep(&self.metas[entry]) {
                        continue;
                    }
                    let rows = self.offsets[entry]..self.offsets[entry + 1];
                    scores.clear();
                    scores.extend(
                        rows.map(|r| dots[r - first_row] as f32 * self.scales[r] * query_scale),
                    );
                    hits.push(Hit {
                        entry,
                        score: self.recipe.score(&mut scores),
                    });
                }
                best(hits, candidates)
            })
            .collect();
        best(approximate, candidates)
            .into_iter()
            .map(|hit| Hit {
                entry: hit.entry,
                score: self.exact_score(query, hit.entry),
            })
            .collect()
    }

    /// The exact answer: every accepted adapter scored in f32.
    pub fn search_exact(
        &self,
        query: &[f32],
        k: usize,
        keep: &(dyn Fn(&M) -> bool + Sync),
    ) -> Vec<Hit> {
        self.exact(&self.prepare(query), k, keep)
    }

    /// The exact scan of a prepared query.
    fn exact(&self, query: &[f32], k: usize, keep: &(dyn Fn(&M) -> bool + Sync)) -> Vec<Hit> {
        let entries: Vec<usize> = (0..self.len()).collect();
        let hits: Vec<Hit> = entries
            .par_chunks(CHUNK)
            .flat_map_iter(|chunk| {
                let hits = chunk
                    .iter()
                    .filter(|&&entry| keep(&self.metas[entry]))
                    .map(|&entry| Hit {
                        entry,
                        score: self.exact_score(query, entry),
                    })
                    .collect();
                best(hits, k)
            })
            .collect();
        best(hits, k)
    }

    fn exact_score(&self, query: &[f32], entry: usize) -> f32 {
        let mut scores: Vec<f32> = (self.offsets[entry]..self.offsets[entry + 1])
            .map(|r| dot_f32(query, &self.rows[r * self.dim..(r + 1) * self.dim]))
            .collect();
        self.recipe.score(&mut scores)
    }
}

/// The `k` best hits, best first; ties broken by entry so that results are deterministic.
fn best(mut hits: Vec<Hit>, k: usize) -> Vec<Hit> {
    let order = |a: &Hit, b: &Hit| b.score.total_cmp(&a.score).then(a.entry.cmp(&b.entry));
    if hits.len() > k && k > 0 {
        hits.select_nth_unstable_by(k - 1, order);
        hits.truncate(k);
    }
    if k == 0 {
        hits.clear();
    }
    hits.sort_unstable_by(order);
    hits
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic pseudo-random unit vector.
    fn vector(seed: u64, dim: usize) -> Vec<f32> {
        let mut state = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        normalized(
            (0..dim)
                .map(|_| {
                    state = state
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    ((state >> 33) as f32 / (1u64 << 31) as f32) - 0.5
                })
                .collect(),
        )
    }

    fn item(id: usize, samples: Vec<Vec<f32>>) -> IndexItem<usize> {
        IndexItem {
            meta: id,
            samples,
            terms: None,
        }
    }

    /// BM25 breaks a dense tie towards the adapter whose samples share the prompt's rare words,
    /// and changes nothing without text, without terms or with weight 0.
    #[test]
    fn hybrid_search_lifts_shared_terms() {
        let v = vector(7, 16);
        let item = |meta: usize, words: Option<&str>| IndexItem {
            meta,
            samples: vec![v.clone()],
            terms: words.map(|w| TermCounts::of(&[w])),
        };
        let far = || IndexItem {
            meta: 2,
            samples: vec![vector(8, 16)],
            terms: Some(TermCounts::of(&["kubernetes kubernetes pods"])),
        };
        let build = || {
            Index::build(
                16,
                Recipe::Centroid,
                [
                    item(0, Some("write a poem")),
                    item(1, Some("kubernetes pods restart")),
                    far(),
                ],
            )
        };
        let all = |_: &usize| true;
        let top = |index: &Index<usize>, text: Option<&str>| {
            index.search_hybrid(&v, text, 3, &all)[0].entry
        };
        assert_eq!(top(&build(), None), 0);
        assert_eq!(top(&build(), Some("restart my kubernetes pods")), 1);
        assert_eq!(
            top(&build().with_lexical_weight(0.0), Some("kubernetes pods")),
            0
        );
        let plain = Index::build(16, Recipe::Centroid, [item(0, None), item(1, None)]);
        assert_eq!(top(&plain, Some("kubernetes pods")), 0);
    }

    #[test]
    fn own_sample_ranks_first_among_orthogonal_profiles() {
        // algorithms.md §7 test 2: three adapters with orthogonal embeddings.
        let e = |i: usize| {
            let mut v = vec![0.0; 3];
            v[i] = 1.0;
            v
        };
        for recipe in [
            Recipe::Centroid,
            Recipe::Max,
            Recipe::TopMean { k: 3 },
            Recipe::CentroidMax,
        ] {
            let index = Index::build(3, recipe, (0..3).map(|i| item(i, vec![e(i), e(i)])));
            for i in 0..3 {
                let hits = index.search(&e(i), 3, &|_| true);
                assert_eq!(hits[0].entry, i, "{recipe:?}");
                assert!((hits[0].score - 1.0).abs() < 1e-6);
                assert_eq!(hits.len(), 3);
            }
        }
    }

    #[test]
    fn filters_exclude_before_ranking() {
        let index = Index::build(
            8,
            Recipe::Centroid,
            (0..20).map(|i| item(i, vec![vector(i as u64, 8)])),
        );
        let all = index.search(&vector(3, 8), 20, &|_| true);
        assert_eq!(all[0].entry, 3);
        let odd = index.search(&vector(3, 8), 5, &|m| m % 2 == 1);
        assert_eq!(odd.len(), 5);
        assert!(odd.iter().all(|h| h.entry % 2 == 1));
        assert!(index.search(&vector(3, 8), 5, &|_| false).is_empty());
        assert!(index.search(&vector(3, 8), 0, &|_| true).is_empty());
    }

    #[test]
    fn quantized_search_agrees_with_exact_search() {
        // Big enough to take the int8 path; clustered, so that neighbours are close in score.
        let dim = 64;
        let n = EXACT_BELOW / dim + 5_000;
        let centres: Vec<Vec<f32>> = (0..50).map(|c| vector(1_000_000 + c, dim)).collect();
        let items = (0..n).map(|i| {
            let c = &centres[i % 50];
            let noise = vector(i as u64, dim);
            let v = normalized(c.iter().zip(&noise).map(|(a, b)| a + 0.6 * b).collect());
            item(i, vec![v])
        });
        for recipe in [Recipe::Centroid, Recipe::CentroidMax] {
            let index = Index::build(dim, recipe, items.clone());
            assert!(index.rows.len() >= EXACT_BELOW);
            let mut found = 0;
            let queries = 20;
            for q in 0..queries {
                let query = vector(5_000_000 + q, dim);
                let exact = index.search_exact(&query, 10, &|_| true);
                let fast = index.search(&query, 10, &|_| true);
                found += fast
                    .iter()
                    .filter(|h| exact.iter().any(|e| e.entry == h.entry))
                    .count();
                // The scores returned are exact.
                for hit in &fast {
                    let mut scores: Vec<f32> = recipe
                        .rows(&[index_row(&index, hit.entry)])
                        .iter()
                        .map(|r| dot_f32(&query, r))
                        .collect();
                    if recipe == Recipe::Centroid {
                        assert!((recipe.score(&mut scores) - hit.score).abs() < 1e-5);
                    }
                }
            }
            let recall = found as f64 / (queries * 10) as f64;
            assert!(recall >= 0.99, "{recipe:?}: recall@10 {recall}");
        }
    }

    fn index_row(index: &Index<usize>, entry: usize) -> Vec<f32> {
        let r = index.offsets[entry];
        index.rows[r * index.dim..(r + 1) * index.dim].to_vec()
    }

    #[test]
    fn centred_scores_are_cosines_after_removing_the_mean_sample() {
        let v = |x: [f32; 3]| normalized(x.to_vec());
        let samples = [
            vec![v([3.0, 1.0, 0.0]), v([2.0, 1.0, 0.5])],
            vec![v([1.0, 0.0, 1.0])],
            vec![v([1.0, -1.0, 0.0])],
        ];
        let all: Vec<&Vec<f32>> = samples.iter().flatten().collect();
        let mu: Vec<f32> = (0..3)
            .map(|d| all.iter().map(|s| s[d]).sum::<f32>() / all.len() as f32)
            .collect();
        let index = Index::build(
            3,
            Recipe::Centered,
            samples.iter().enumerate().map(|(i, s)| item(i, s.clone())),
        );
        let query = v([2.0, 0.3, 0.4]);
        let q = normalized(query.iter().zip(&mu).map(|(a, m)| a - m).collect());
        let hits = index.search(&query, 3, &|_| true);
        assert_eq!(
            hits,
            index.search_exact(&query, 3, &|_| true),
            "the query is centred once"
        );
        for hit in hits {
            let s = &samples[hit.entry];
            let mean: Vec<f32> = (0..3)
                .map(|d| s.iter().map(|x| x[d]).sum::<f32>() / s.len() as f32 - mu[d])
                .collect();
            let want = dot_f32(&q, &normalized(mean));
            assert!((hit.score - want).abs() < 1e-6, "{} vs {want}", hit.score);
        }
    }

    #[test]
    fn items_of_the_wrong_dimension_are_skipped() {
        let index = Index::build(
            4,
            Recipe::Centroid,
            vec![item(0, vec![vec![1.0; 3]]), item(1, vec![])],
        );
        assert!(index.is_empty());
    }
}
