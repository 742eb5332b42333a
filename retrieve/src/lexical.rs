//! The lexical half of routing: BM25 over each adapter's samples (one document per adapter, the
//! concatenation of its samples' terms), added to the dense score when the index re-ranks its
//! candidates. Dense embeddings of a small encoder blur rare words (jargon, names, domain
//! terms) that a prompt shares with an adapter's samples; BM25 keeps them. docs/routing.md has
//! the measurements that set [`DEFAULT_LEXICAL_WEIGHT`].
//!
//! Terms: lower-cased alphanumeric runs, minus a short list of English function words, with a
//! light suffix strip (`-ing`, `-ed`, `-es`, `-s`). The same function makes the terms of the
//! samples (stored with the profile) and of the prompt.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

/// How much BM25 counts beside the dense score: `dense + w · (σ_dense / σ_bm25) · bm25`, with
/// both standard deviations taken over the candidates being re-ranked (so `w` is in units of
/// the dense score's spread, whatever the scale of BM25).
pub const DEFAULT_LEXICAL_WEIGHT: f32 = 0.1;
/// BM25's term-frequency saturation and length normalisation (the usual values).
const K1: f32 = 1.2;
const B: f32 = 0.75;
/// Distinct terms kept per adapter document (the most frequent): bounds memory per profile.
pub const MAX_TERMS: usize = 4096;

const STOP_WORDS: &[&str] = &[
    "a", "an", "the", "of", "or", "and", "to", "in", "on", "for", "with", "by", "as", "at", "from",
    "is", "are", "be", "was", "were", "that", "this", "which", "it", "its", "their", "his", "her",
    "who", "whom", "into", "than", "i", "you", "he", "she", "we", "they", "me", "my", "your",
    "not", "but", "if", "so", "do", "does", "did", "have", "has", "had", "will", "would", "can",
    "could",
];

/// The terms of a text, in order (repeats kept).
pub fn terms(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .filter(|w| !STOP_WORDS.contains(&w.as_str()))
        .map(stem)
        .collect()
}

fn stem(word: String) -> String {
    for suffix in ["ing", "ed", "es", "s"] {
        if word.len() > suffix.len() + 2 && word.ends_with(suffix) {
            let cut = word.len() - suffix.len();
            if word.is_char_boundary(cut) {
                return word[..cut].to_string();
            }
        }
    }
    word
}

/// One adapter's document: how often each term occurs in its texts, and how many terms they
/// hold. Stored with the profile (JSON) and read back when the index is built.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TermCounts {
    /// Term → count, at most [`MAX_TERMS`] terms (the most frequent, ties by term).
    pub counts: BTreeMap<String, u32>,
    /// Terms in the texts (the document's length, before the cap).
    pub length: u32,
}

impl TermCounts {
    pub fn of<S: AsRef<str>>(texts: &[S]) -> Self {
        let mut counts: HashMap<String, u32> = HashMap::new();
        let mut length = 0u32;
        for text in texts {
            for term in terms(text.as_ref()) {
                *counts.entry(term).or_default() += 1;
                length = length.saturating_add(1);
            }
        }
        let mut sorted: Vec<(String, u32)> = counts.into_iter().collect();
        sorted.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        sorted.truncate(MAX_TERMS);
        Self {
            counts: sorted.into_iter().collect(),
            length,
        }
    }
}

/// BM25 over the documents of an index's entries (entries without terms score 0).
///
/// The corpus statistics (document frequencies, document count, average length) come from the
/// entries marked as counting only (the service counts public adapters): a private adapter's
/// words then never move the scores of anyone who cannot see it, as with the centred recipe's
/// mean. Every entry is still scored with those statistics.
pub(crate) struct Lexicon {
    /// Term → (documents counted that hold it, postings (entry, count) by entry).
    postings: HashMap<String, (u32, Vec<(u32, u32)>)>,
    lengths: Vec<u32>,
    average_length: f32,
    documents: usize,
}

impl Lexicon {
    /// `docs`: per entry, its terms and whether it counts in the statistics. `None` when no
    /// entry has terms.
    pub(crate) fn build<'a>(
        docs: impl Iterator<Item = (Option<&'a TermCounts>, bool)>,
    ) -> Option<Self> {
        let mut postings: HashMap<String, (u32, Vec<(u32, u32)>)> = HashMap::new();
        let mut lengths = Vec::new();
        let (mut documents, mut counted_length, mut any) = (0usize, 0u64, false);
        for (entry, (doc, counts)) in docs.enumerate() {
            let Some(doc) = doc else {
                lengths.push(0);
                continue;
            };
            any = true;
            lengths.push(doc.length);
            if counts {
                documents += 1;
                counted_length += doc.length as u64;
            }
            for (term, &count) in &doc.counts {
                let (df, list) = postings.entry(term.clone()).or_default();
                *df += u32::from(counts);
                list.push((entry as u32, count));
            }
        }
        if !any {
            return None;
        }
        Some(Self {
            postings,
            average_length: (counted_length as f32 / documents.max(1) as f32).max(1.0),
            lengths,
            documents,
        })
    }

    /// BM25 of `query` for each of `entries`.
    pub(crate) fn scores(&self, query: &[String], entries: &[usize]) -> Vec<f32> {
        let mut out = vec![0f32; entries.len()];
        // A set: a 16 KiB prompt holds thousands of terms, and a list would make this quadratic.
        let mut seen: std::collections::HashSet<&str> = std::collections::HashSet::new();
        for term in query {
            if !seen.insert(term.as_str()) {
                continue;
            }
            let Some((df, postings)) = self.postings.get(term) else {
                continue;
            };
            let df = *df as f32;
            let idf = (1.0 + (self.documents as f32 - df + 0.5) / (df + 0.5)).ln();
            for (score, &entry) in out.iter_mut().zip(entries) {
                if let Ok(i) = postings.binary_search_by_key(&(entry as u32), |p| p.0) {
                    let tf = postings[i].1 as f32;
                    let norm = 1.0 - B + B * self.lengths[entry] as f32 / self.average_length;
                    *score += idf * tf * (K1 + 1.0) / (tf + K1 * norm);
                }
            }
        }
        out
    }

    pub(crate) fn bytes(&self) -> usize {
        self.postings
            .iter()
            .map(|(t, (_, p))| t.len() + 28 + p.len() * 8)
            .sum::<usize>()
            + self.lengths.len() * 4
    }
}

/// `dense + weight · (σ_dense / σ_lexical) · lexical`, the standard deviations over these
/// candidates; the dense scores alone when BM25 does not vary among them.
pub(crate) fn fuse(dense: &[f32], lexical: &[f32], weight: f32) -> Vec<f32> {
    let std = |v: &[f32]| {
        let n = v.len() as f32;
        let mean = v.iter().sum::<f32>() / n;
        (v.iter().map(|x| (x - mean) * (x - mean)).sum::<f32>() / n).sqrt()
    };
    let (sd, sl) = (std(dense), std(lexical));
    if dense.len() < 2 || sl <= f32::EPSILON || !sd.is_finite() {
        return dense.to_vec();
    }
    let scale = weight * sd / sl;
    dense
        .iter()
        .zip(lexical)
        .map(|(d, l)| d + scale * l)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terms_are_lowercased_stemmed_and_skip_function_words() {
        assert_eq!(
            terms("The Routing of SQL queries, parsed; it's 42 Cafés!"),
            vec!["rout", "sql", "queri", "pars", "s", "42", "café"]
        );
        assert!(terms("").is_empty() && terms("the a of").is_empty());
    }

    #[test]
    fn counts_are_capped_and_keep_the_length() {
        let text: String = (0..MAX_TERMS + 10).map(|i| format!("w{i} ")).collect();
        let doc = TermCounts::of(&[text.as_str(), "w1 w1"]);
        assert_eq!(doc.counts.len(), MAX_TERMS);
        assert_eq!(doc.counts["w1"], 3);
        assert_eq!(doc.length, MAX_TERMS as u32 + 12);
    }

    /// BM25 by hand for two documents: a term in one of them has idf ln(1 + 1.5/1.5) = ln 2.
    #[test]
    fn bm25_matches_the_formula() {
        let a = TermCounts::of(&["sql join join"]);
        let b = TermCounts::of(&["poem rhyme"]);
        let lex = Lexicon::build([(Some(&a), true), (Some(&b), true), (None, true)].into_iter())
            .expect("lexicon");
        let s = lex.scores(&terms("SQL join"), &[0, 1, 2]);
        let avg = 2.5;
        let norm = 1.0 - B + B * 3.0 / avg;
        let want = 2f32.ln()
            * (1.0 * (K1 + 1.0) / (1.0 + K1 * norm) + 2.0 * (K1 + 1.0) / (2.0 + K1 * norm));
        assert!((s[0] - want).abs() < 1e-5, "{} vs {want}", s[0]);
        assert_eq!(&s[1..], &[0.0, 0.0]);
        assert!(Lexicon::build([(None::<&TermCounts>, true)].into_iter()).is_none());
    }

    /// Entries that do not count (private adapters) change no one else's scores, and are
    /// scored with the counted statistics.
    #[test]
    fn uncounted_documents_do_not_move_the_statistics() {
        let a = TermCounts::of(&["sql join join"]);
        let b = TermCounts::of(&["poem rhyme"]);
        let private = TermCounts::of(&["sql sql sql sql sql sql sql sql"]);
        let query = terms("SQL join");
        let public = Lexicon::build([(Some(&a), true), (Some(&b), true)].into_iter()).expect("l");
        let with = Lexicon::build(
            [(Some(&a), true), (Some(&b), true), (Some(&private), false)].into_iter(),
        )
        .expect("l");
        assert_eq!(public.scores(&query, &[0, 1]), with.scores(&query, &[0, 1]));
        assert!(with.scores(&query, &[2])[0] > 0.0);
    }

    #[test]
    fn fusion_is_scale_free_and_falls_back_to_dense() {
        let dense = [0.5, 0.4, 0.3];
        let a = fuse(&dense, &[0.0, 10.0, 0.0], 0.1);
        let b = fuse(&dense, &[0.0, 1000.0, 0.0], 0.1);
        assert!(a.iter().zip(&b).all(|(x, y)| (x - y).abs() < 1e-6));
        assert_eq!(fuse(&dense, &[2.0, 2.0, 2.0], 0.1), dense.to_vec());
        assert_eq!(fuse(&[0.5], &[1.0], 0.1), vec![0.5]);
    }
}
