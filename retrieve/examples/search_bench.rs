//! Search speed and recall of the route index at scale (bench/route/search.py drives it and runs
//! numpy's exact scan on the same vectors in the same run).
//!
//! `search_bench <profiles.f32> <queries.f32> <dim> [k] [recipe]`: little-endian f32 rows.
//! Profiles are indexed one row per adapter (`centroid`), or in groups of `rows_per_adapter`
//! consecutive rows for multi-row recipes (`max`, `top3_mean`, `centroid_max`: then the file
//! holds sample embeddings). Every adapter also gets synthetic terms (30 words drawn from a
//! 20,000-word vocabulary, skewed to frequent words as text is) and each query a 12-word text
//! from the same draw, so `search_hybrid` (dense candidates + the BM25 re-rank) is timed too.
//! Prints one JSON line.

use std::time::Instant;

use quiver_retrieve::{Index, IndexItem, Recipe, TermCounts, decode_vectors, normalized};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn read(path: &str, dim: usize) -> Res<Vec<Vec<f32>>> {
    let bytes = std::fs::read(path).map_err(|e| format!("{path}: {e}"))?;
    Ok(decode_vectors(&bytes, dim)
        .map_err(|e| format!("{path}: {e}"))?
        .into_iter()
        .map(normalized)
        .collect())
}

fn arg<T: std::str::FromStr>(args: &[String], i: usize, name: &str, default: T) -> Res<T> {
    match args.get(i) {
        None => Ok(default),
        Some(s) => s
            .parse()
            .map_err(|_| format!("{name}: cannot read {s:?}").into()),
    }
}

/// `n` words of a skewed (frequent words likelier) 20,000-word vocabulary, from `seed`.
fn words(seed: u64, n: usize) -> String {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let u = (state >> 33) as f64 / (1u64 << 31) as f64;
            format!("w{}", (u * u * 20_000.0) as u32)
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        return Err(
            "usage: search_bench <profiles.f32> <queries.f32> <dim> [k] [recipe] [rows_per_adapter]"
                .into(),
        );
    }
    let dim: usize = arg(&args, 3, "dim", 0)?;
    let k: usize = arg(&args, 4, "k", 10)?;
    let recipe = match args.get(5) {
        Some(s) => Recipe::parse(s)?,
        None => Recipe::Centroid,
    };
    let group: usize = arg(&args, 6, "rows per adapter", 1)?.max(1);
    let rows = read(&args[1], dim)?;
    let queries = read(&args[2], dim)?;
    let started = Instant::now();
    let items = rows.chunks(group).enumerate().map(|(i, chunk)| IndexItem {
        meta: i,
        samples: chunk.to_vec(),
        terms: Some(TermCounts::of(&[words(i as u64, 30)])),
    });
    let index = Index::build(dim, recipe, items);
    let build_s = started.elapsed().as_secs_f64();
    let keep = |_: &usize| true;
    // Warm-up, then timed runs of both searches.
    for q in queries.iter().take(5) {
        index.search(q, k, &keep);
        index.search_exact(q, k, &keep);
    }
    let mut fast = Vec::new();
    let mut exact = Vec::new();
    let mut hybrid = Vec::new();
    let mut found = 0usize;
    for (i, q) in queries.iter().enumerate() {
        let text = words(1_000_000 + i as u64, 12);
        let t = Instant::now();
        index.search_hybrid(q, Some(&text), k, &keep);
        hybrid.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        let got = index.search(q, k, &keep);
        fast.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        let want = index.search_exact(q, k, &keep);
        exact.push(t.elapsed().as_secs_f64() * 1e3);
        found += got
            .iter()
            .filter(|h| want.iter().any(|w| w.entry == h.entry))
            .count();
    }
    fast.sort_by(f64::total_cmp);
    exact.sort_by(f64::total_cmp);
    hybrid.sort_by(f64::total_cmp);
    println!(
        "{}",
        serde_json::json!({
            "adapters": index.len(),
            "rows": index.row_count(),
            "dim": dim,
            "k": k,
            "recipe": recipe.name(),
            "threads": rayon::current_num_threads(),
            "build_s": build_s,
            "index_vector_bytes": index.vector_bytes(),
            "search_p50_ms": percentile(&fast, 0.5),
            "search_p90_ms": percentile(&fast, 0.9),
            "hybrid_p50_ms": percentile(&hybrid, 0.5),
            "hybrid_p90_ms": percentile(&hybrid, 0.9),
            "exact_p50_ms": percentile(&exact, 0.5),
            "exact_p90_ms": percentile(&exact, 0.9),
            "recall_at_k": found as f64 / (queries.len() * k) as f64,
            "queries": queries.len(),
        })
    );
    Ok(())
}
