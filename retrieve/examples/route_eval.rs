//! Routing quality of each profile recipe on an eval set (bench/route/make_eval.py makes it):
//! every task's samples become an adapter's profile; each held-out query should route to its own
//! task. Prints one JSON line with top-1 / top-3 accuracy per recipe, and the embedding rate.
//!
//! `route_eval <model dir> <eval.json>`

use std::path::Path;
use std::time::Instant;

use quiver_retrieve::{Embedder, Index, IndexItem, Recipe};
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

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 3 {
        return Err("usage: route_eval <model dir> <eval.json>".into());
    }
    let embedder = Embedder::load(Path::new(&args[1]))?;
    let eval: Value =
        serde_json::from_slice(&std::fs::read(&args[2]).map_err(|e| format!("{}: {e}", args[2]))?)?;
    let tasks = eval["tasks"]
        .as_array()
        .ok_or("eval.json has no \"tasks\" list")?;
    let started = Instant::now();
    let mut texts = 0;
    let mut samples = Vec::new();
    let mut queries = Vec::new();
    for (t, task) in tasks.iter().enumerate() {
        let s = strings(&task["samples"]);
        let q = strings(&task["queries"]);
        texts += s.len() + q.len();
        samples.push(embedder.embed(&s)?);
        queries.extend(embedder.embed(&q)?.into_iter().map(|v| (t, v)));
    }
    let embed_s = started.elapsed().as_secs_f64();
    let mut results = serde_json::Map::new();
    for recipe in [
        Recipe::Centroid,
        Recipe::Max,
        Recipe::TopMean { k: 3 },
        Recipe::TopMean { k: 5 },
        Recipe::CentroidMax,
        Recipe::Centered,
    ] {
        let index = Index::build(
            embedder.dim(),
            recipe,
            samples.iter().enumerate().map(|(t, s)| IndexItem {
                meta: t,
                samples: s.clone(),
            }),
        );
        let (mut top1, mut top3) = (0, 0);
        for (task, q) in &queries {
            let hits = index.search_exact(q, 3, &|_| true);
            top1 += usize::from(hits.first().is_some_and(|h| h.entry == *task));
            top3 += usize::from(hits.iter().any(|h| h.entry == *task));
        }
        let n = queries.len() as f64;
        results.insert(
            recipe.name(),
            json!({"top1": top1 as f64 / n, "top3": top3 as f64 / n}),
        );
    }
    println!(
        "{}",
        json!({
            "embedder": embedder.id(),
            "tasks": tasks.len(),
            "queries": queries.len(),
            "texts_per_s": texts as f64 / embed_s,
            "recipes": results,
        })
    );
    Ok(())
}
