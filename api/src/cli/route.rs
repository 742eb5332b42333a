//! `quiver route` (ask a server which adapters fit prompts) and `quiver embed` (embed local text
//! with the same embedder the server runs, for checks).

use std::io::Write;
use std::path::PathBuf;

use clap::Args;
use quiver_retrieve::Embedder;
use serde_json::{Value, json};

#[derive(Args, Debug)]
pub struct RouteArgs {
    /// Prompts to route.
    #[arg(required = true)]
    pub prompts: Vec<String>,
    /// The server (plain HTTP).
    #[arg(long, env = "QUIVER_URL", default_value = "http://127.0.0.1:8080")]
    pub server: String,
    /// A token (private adapters and fusions need one).
    #[arg(long, env = "QUIVER_TOKEN")]
    pub token: Option<String>,
    #[arg(long, default_value_t = 3)]
    pub top_k: usize,
    /// retrieve, mixture or fusion.
    #[arg(long, default_value = "retrieve", value_parser = ["retrieve", "mixture", "fusion"])]
    pub strategy: String,
    #[arg(long)]
    pub base_model: Option<String>,
    /// uniform or softmax (mixture and fusion).
    #[arg(long, value_parser = ["uniform", "softmax"])]
    pub weights: Option<String>,
    #[arg(long)]
    pub temperature: Option<f64>,
    /// Print the server's JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct EmbedArgs {
    /// Texts to embed (or `--file`).
    pub texts: Vec<String>,
    /// A file with one text per line.
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// The sentence-transformers model directory.
    #[arg(long, env = "QUIVER_EMBEDDER_DIR")]
    pub embedder_dir: PathBuf,
    /// Also print the token ids.
    #[arg(long)]
    pub ids: bool,
}

type CmdResult = Result<(), Box<dyn std::error::Error>>;

pub async fn route(args: RouteArgs) -> CmdResult {
    let mut body = json!({
        "inputs": args.prompts,
        "top_k": args.top_k,
        "strategy": args.strategy,
    });
    for (key, value) in [
        ("base_model", args.base_model.map(Value::from)),
        ("weights", args.weights.map(Value::from)),
        ("temperature", args.temperature.map(Value::from)),
    ] {
        if let Some(v) = value {
            body[key] = v;
        }
    }
    let url = format!("{}/api/v1/route", args.server.trim_end_matches('/'));
    let mut request = reqwest::Client::new().post(&url).json(&body);
    if let Some(token) = &args.token {
        request = request.bearer_auth(token);
    }
    let response = request
        .send()
        .await
        .map_err(|e| format!("cannot reach {url}: {e}"))?;
    let status = response.status();
    let answer: Value = response.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        let message = answer["error"]["message"].as_str().unwrap_or("no message");
        return Err(format!("{status}: {message}").into());
    }
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&answer)?)?;
        return Ok(());
    }
    let prompts = body["inputs"].as_array().cloned().unwrap_or_default();
    let results = answer["results"].as_array().cloned().unwrap_or_default();
    for (prompt, result) in prompts.iter().zip(&results) {
        writeln!(out, "{}", prompt.as_str().unwrap_or_default())?;
        for a in result["adapters"].as_array().into_iter().flatten() {
            let weight = a["weight"]
                .as_f64()
                .map(|w| format!("  weight {w:.4}"))
                .unwrap_or_default();
            writeln!(
                out,
                "  {:.4}  {}@v{}{weight}",
                a["score"].as_f64().unwrap_or_default(),
                a["adapter"].as_str().unwrap_or_default(),
                a["version"]
            )?;
        }
        if let Some(f) = result.get("fusion") {
            writeln!(
                out,
                "  fusion: {} ({}{})",
                f["adapter"].as_str().unwrap_or_default(),
                f["state"].as_str().unwrap_or_default(),
                f["job"]
                    .as_str()
                    .map(|j| format!(", job {j}"))
                    .unwrap_or_default()
            )?;
        }
    }
    Ok(())
}

pub fn embed(args: EmbedArgs) -> CmdResult {
    let mut texts = args.texts;
    if let Some(file) = &args.file {
        let content =
            std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
        texts.extend(content.lines().map(str::to_owned));
    }
    if texts.is_empty() {
        return Err("nothing to embed: give texts or --file".into());
    }
    let embedder = Embedder::load(&args.embedder_dir)?;
    let vectors = embedder.embed(&texts)?;
    let mut out = std::io::stdout().lock();
    for (text, vector) in texts.iter().zip(vectors) {
        let mut line = json!({"text": text, "embedder": embedder.id(), "embedding": vector});
        if args.ids {
            line["input_ids"] = json!(embedder.token_ids(text)?);
        }
        writeln!(out, "{line}")?;
    }
    Ok(())
}
