//! Routing quality on the committed eval sets (bench/route/eval/*.json, made by
//! bench/route/make_eval.py): every task's samples become an adapter's profile, and each held-out
//! query should route to its own task. Every pooling × recipe, and card profiles (each task's
//! model card through `card_texts`, the service's own path) for the default pooling and recipe;
//! the centroid recipes also with BM25 over the samples' terms (`+bm25`, `Index::search_hybrid`).
//! Prints one JSON document: per split, per configuration, top-1 / top-3 overall and per task.
//! bench/route/report.py sets it beside sentence-transformers' run of the same recipes.
//!
//! `route_eval <model dir> <split.json>...`

use std::path::Path;
use std::time::Instant;

use quiver_retrieve::{Embedder, Index, IndexItem, Pooling, Recipe, TermCounts, card_texts};
use serde_json::{Value, json};

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// A query: its task, text and embedding.
type Query = (usize, String, Vec<f32>);

/// Top-1 / top-3 per task of `queries` against one profile per task (`terms`: with BM25).
fn score(
    dim: usize,
    recipe: Recipe,
    profiles: &[Vec<Vec<f32>>],
    terms: Option<&[TermCounts]>,
    queries: &[Query],
) -> Value {
    let index = Index::build(
        dim,
        recipe,
        profiles.iter().enumerate().map(|(t, s)| IndexItem {
            meta: t,
            samples: s.clone(),
            terms: terms.map(|terms| terms[t].clone()),
        }),
    );
    let mut per_task = vec![[0usize; 3]; profiles.len()];
    for (task, text, q) in queries {
        let hits = index.search_hybrid(q, Some(text), 3, &|_| true);
        let counts = &mut per_task[*task];
        counts[0] += usize::from(hits.first().is_some_and(|h| h.entry == *task));
        counts[1] += usize::from(hits.iter().any(|h| h.entry == *task));
        counts[2] += 1;
    }
    let n = queries.len() as f64;
    json!({
        "top1": per_task.iter().map(|c| c[0]).sum::<usize>() as f64 / n,
        "top3": per_task.iter().map(|c| c[1]).sum::<usize>() as f64 / n,
        "per_task": per_task.iter().map(|c| json!([c[0] as f64 / c[2] as f64, c[1] as f64 / c[2] as f64])).collect::<Vec<_>>(),
    })
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        return Err("usage: route_eval <model dir> <split.json>...".into());
    }
    let recipes = [
        Recipe::Centroid,
        Recipe::Centered,
        Recipe::Max,
        Recipe::TopMean { k: 3 },
        Recipe::CentroidMax,
    ];
    let mut splits = serde_json::Map::new();
    let mut embedders = serde_json::Map::new();
    for pooling in [Pooling::Last, Pooling::ROUTING] {
        let embedder = Embedder::load_with(Path::new(&args[1]), pooling)?;
        embedders.insert(pooling.name(), json!(embedder.id()));
        for path in &args[2..] {
            let eval: Value =
                serde_json::from_slice(&std::fs::read(path).map_err(|e| format!("{path}: {e}"))?)?;
            let tasks = eval["tasks"]
                .as_array()
                .ok_or_else(|| format!("{path} has no \"tasks\" list"))?;
            let started = Instant::now();
            let mut texts = 0;
            let (mut samples, mut cards, mut queries) = (Vec::new(), Vec::new(), Vec::new());
            let (mut sample_terms, mut card_terms) = (Vec::new(), Vec::new());
            for (t, task) in tasks.iter().enumerate() {
                let s = strings(&task["samples"]);
                let q = strings(&task["queries"]);
                let c = card_texts(task["card"].as_str().unwrap_or_default());
                texts += s.len() + q.len() + c.len();
                samples.push(embedder.embed(&s)?);
                sample_terms.push(TermCounts::of(&s));
                cards.push(embedder.embed(&c)?);
                card_terms.push(TermCounts::of(&c));
                let vectors = embedder.embed(&q)?;
                queries.extend(q.into_iter().zip(vectors).map(|(text, v)| (t, text, v)));
            }
            let embed_s = started.elapsed().as_secs_f64();
            let name = eval["split"].as_str().unwrap_or(path).to_string();
            let split = splits.entry(name).or_insert_with(|| {
                json!({
                    "tasks": tasks.iter().map(|t| t["name"].clone()).collect::<Vec<_>>(),
                    "queries": queries.len(),
                    "results": {},
                })
            });
            let results = split["results"].as_object_mut().expect("results");
            let dim = embedder.dim();
            for recipe in recipes {
                let name = format!("{}/{}", pooling.name(), recipe.name());
                let dense = score(dim, recipe, &samples, None, &queries);
                results.insert(name.clone(), dense);
                if matches!(recipe, Recipe::Centroid | Recipe::Centered) {
                    let hybrid = score(dim, recipe, &samples, Some(&sample_terms), &queries);
                    results.insert(format!("{name}+bm25"), hybrid);
                }
            }
            if cards.iter().all(|c| !c.is_empty()) {
                let name = format!("{}/{}", pooling.name(), Recipe::DEFAULT.name());
                let dense = score(dim, Recipe::DEFAULT, &cards, None, &queries);
                results.insert(format!("{name}/card"), dense);
                let hybrid = score(dim, Recipe::DEFAULT, &cards, Some(&card_terms), &queries);
                results.insert(format!("{name}+bm25/card"), hybrid);
            }
            split["texts_per_s"] = json!(texts as f64 / embed_s);
        }
    }
    println!(
        "{}",
        json!({"embedders": embedders, "default": format!("{}/{}+bm25", Pooling::ROUTING.name(), Recipe::DEFAULT.name()), "splits": splits})
    );
    Ok(())
}
