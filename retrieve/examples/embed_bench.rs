//! The embedder alone, without HTTP: one short prompt (p50 of 200) and the first 256 queries of
//! an eval set (prompts/s, best of 3). `embed_bench <model dir> <eval.json>`; uses mimalloc like
//! the server. Pooled as the server pools by default (`layers`), or as `POOLING` says (`last`:
//! sentence-transformers' own).

use std::path::Path;
use std::time::Instant;

use quiver_retrieve::{Embedder, Pooling};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 3 {
        return Err("usage: embed_bench <model dir> <eval.json>".into());
    }
    let pooling = Pooling::parse(&std::env::var("POOLING").unwrap_or_else(|_| "layers".into()))?;
    let embedder = Embedder::load_with(Path::new(&args[1]), pooling)?;
    let eval: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&args[2]).map_err(|e| format!("{}: {e}", args[2]))?)?;
    let queries: Vec<String> = eval["tasks"]
        .as_array()
        .ok_or("eval.json has no \"tasks\" list")?
        .iter()
        .flat_map(|t| t["queries"].as_array().into_iter().flatten())
        .filter_map(|q| q.as_str().map(str::to_owned))
        .take(256)
        .collect();
    let prompt = ["Translate this sentence into French: the weather is nice today."];
    for _ in 0..20 {
        embedder.embed(&prompt)?;
    }
    let mut single = Vec::with_capacity(200);
    for _ in 0..200 {
        let t = Instant::now();
        embedder.embed(&prompt)?;
        single.push(t.elapsed().as_secs_f64() * 1e3);
    }
    single.sort_by(f64::total_cmp);
    let mut best = 0f64;
    for _ in 0..3 {
        let t = Instant::now();
        embedder.embed(&queries)?;
        best = best.max(queries.len() as f64 / t.elapsed().as_secs_f64());
    }
    println!(
        "{}",
        serde_json::json!({"single_p50_ms": single[100], "batch256_prompts_per_s": best})
    );
    Ok(())
}
