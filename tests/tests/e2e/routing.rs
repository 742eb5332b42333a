//! Routing through the API: samples → profiles (embed jobs) → `POST /route` with every strategy,
//! fusions made once and reused (and their arithmetic), privacy, filters, the 503 without an
//! embedder, request vectors and uploaded profiles, validation, and recomputation after an
//! embedder change.
//!
//! Tests that embed text need the model (`QUIVER_EMBEDDER_DIR`, set by the test command); the
//! others run everywhere.

use std::path::Path;
use std::time::Duration;

use ndarray::Array2;
use quiver_merge::LoraAdapter;
use quiver_retrieve::Recipe;
use quiver_tests::{
    Backend, Files, TestApp, app_or_skip, assert_error, spawn_routing_app, synthetic_adapter,
};
use rstest::rstest;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(120);
const MODULES: [&str; 2] = ["q_proj", "v_proj"];

/// Routing samples of four unrelated tasks, and a held-out prompt of each.
const TOPICS: [(&str, [&str; 6], &str); 4] = [
    (
        "cooking",
        [
            "How long should I roast a whole chicken at 200 degrees?",
            "Give me a recipe for vegetarian lasagna with spinach.",
            "What can I substitute for eggs when baking a chocolate cake?",
            "How do I make a sourdough starter from scratch?",
            "Which spices go well in a lentil curry?",
            "How do I keep pasta from sticking together after boiling?",
        ],
        "What temperature should the oven be for baking bread rolls?",
    ),
    (
        "code",
        [
            "Write a Python function that reverses a linked list.",
            "Why does my Rust code fail with 'borrowed value does not live long enough'?",
            "How do I sort a dictionary by value in Python?",
            "Explain the difference between a process and a thread.",
            "Fix this JavaScript: `const x = await fetch(url).json()` throws a TypeError.",
            "Implement binary search in C++ on a sorted vector.",
        ],
        "How can I read a CSV file into a list of dicts in Python?",
    ),
    (
        "legal",
        [
            "Can my landlord keep my security deposit for normal wear and tear?",
            "What is the statute of limitations for breach of contract?",
            "Do I need a lawyer to file for divorce?",
            "Is a verbal agreement legally binding?",
            "What rights does a tenant have if the apartment has mold?",
            "How do I contest a will in probate court?",
        ],
        "My employer has not paid my final wages; what legal options do I have?",
    ),
    (
        "music",
        [
            "What chords are in the key of G major?",
            "How do I tune a guitar to drop D?",
            "Recommend albums similar to Radiohead's OK Computer.",
            "What is the difference between a major and a minor scale?",
            "How can I improve my piano sight-reading?",
            "Who composed the Four Seasons violin concertos?",
        ],
        "Which scales should a beginner jazz guitarist practice first?",
    ),
];

fn samples_jsonl(samples: &[&str]) -> Vec<u8> {
    samples
        .iter()
        .map(|s| json!({ "input": s }).to_string() + "\n")
        .collect::<String>()
        .into_bytes()
}

fn with_samples(seed: u32, samples: &[&str]) -> Files {
    let mut files = synthetic_adapter(4, &MODULES, seed);
    files.push(("samples.jsonl".into(), samples_jsonl(samples)));
    files
}

/// Polls a version's profile until it exists with `embedder` (or any, when `None`).
async fn wait_profile(app: &TestApp, repo: &str, who: &str, embedder: Option<&str>) -> Value {
    let start = std::time::Instant::now();
    loop {
        let (status, body) = app
            .get_json(
                &format!("/api/v1/adapters/{repo}/versions/main/profile"),
                who,
            )
            .await;
        if status == 200 && embedder.is_none_or(|e| body["embedder"] == e) {
            return body;
        }
        assert!(
            start.elapsed() < WAIT,
            "no profile for {repo} after {WAIT:?}: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// alice/cooking, alice/code, alice/music (public) and bob/legal (private), with samples.
async fn seed_topics(app: &TestApp) {
    for (i, (topic, samples, _)) in TOPICS.iter().enumerate() {
        let owner = if *topic == "legal" { "bob" } else { "alice" };
        let repo = format!("{owner}/{topic}");
        let (status, body) = app
            .create_adapter(owner, topic, *topic == "legal", owner)
            .await;
        assert_eq!(status, 201, "{body}");
        let (status, body) = app
            .upload(&repo, owner, &with_samples(i as u32 + 1, samples))
            .await;
        assert_eq!(status, 201, "{body}");
    }
    for (topic, _, _) in TOPICS {
        let owner = if topic == "legal" { "bob" } else { "alice" };
        wait_profile(app, &format!("{owner}/{topic}"), owner, None).await;
    }
}

async fn route(app: &TestApp, who: &str, body: Value) -> Value {
    let (status, response) = app.post_json("/api/v1/route", who, &body).await;
    assert_eq!(status, 200, "{body} → {response}");
    response
}

fn names(result: &Value) -> Vec<String> {
    result["adapters"]
        .as_array()
        .expect("adapters")
        .iter()
        .map(|a| a["adapter"].as_str().expect("adapter").to_string())
        .collect()
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn prompts_route_to_the_adapters_whose_samples_fit(#[case] backend: Backend) {
    let Some(app) = spawn_routing_app(backend, Recipe::DEFAULT).await else {
        return;
    };
    seed_topics(&app).await;
    let profile = wait_profile(&app, "alice/code", "alice", None).await;
    assert_eq!(profile["source"], "samples");
    assert_eq!(profile["count"], 6);
    assert_eq!(profile["dim"], 384);
    assert_eq!(profile["current"], true);

    // Held-out prompts and the adapters' own samples, as bob (who sees every adapter).
    let mut inputs = Vec::new();
    let mut expected = Vec::new();
    for (topic, samples, held_out) in TOPICS {
        let owner = if topic == "legal" { "bob" } else { "alice" };
        inputs.push(held_out.to_string());
        expected.push(format!("{owner}/{topic}"));
        inputs.push(samples[2].to_string());
        expected.push(format!("{owner}/{topic}"));
    }
    let response = route(&app, "bob", json!({"inputs": inputs, "top_k": 4})).await;
    assert_eq!(response["strategy"], "retrieve");
    assert_eq!(response["recipe"], Recipe::DEFAULT.name());
    let results = response["results"].as_array().expect("results");
    assert_eq!(results.len(), inputs.len());
    for ((result, want), input) in results.iter().zip(&expected).zip(&inputs) {
        let got = names(result);
        assert_eq!(&got[0], want, "{input:?} → {result}");
        assert_eq!(got.len(), 4);
        let scores: Vec<f64> = result["adapters"]
            .as_array()
            .expect("adapters")
            .iter()
            .map(|a| a["score"].as_f64().expect("score"))
            .collect();
        assert!(scores.windows(2).all(|w| w[0] >= w[1]), "{scores:?}");
        assert!(result["adapters"][0]["weight"].is_null());
        assert!(result.get("fusion").is_none());
    }
    // The version and revision are the adapter's.
    let (_, version) = app
        .get_json("/api/v1/adapters/alice/code/versions/main", "alice")
        .await;
    let code = &results[2]["adapters"][0];
    assert_eq!(code["version"], version["number"]);
    assert_eq!(code["revision"], version["revision"]);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn private_adapters_are_routed_only_to_who_may_see_them(#[case] backend: Backend) {
    let Some(app) = spawn_routing_app(backend, Recipe::DEFAULT).await else {
        return;
    };
    seed_topics(&app).await;
    let legal = TOPICS[2].2;
    for strategy in ["retrieve", "mixture", "fusion"] {
        for who in ["", "alice", "alice_read", "bob", "admin"] {
            let body = json!({"inputs": [legal], "top_k": 4, "strategy": strategy,
                              "base_model": "quiver-test/tiny-llama"});
            let (status, response) = app.post_json("/api/v1/route", who, &body).await;
            if strategy == "fusion" && (who.is_empty() || who == "alice_read") {
                // A fusion is an adapter of the caller's: it needs a write token.
                assert!(status == 401 || status == 403, "{who}: {status} {response}");
                continue;
            }
            assert_eq!(status, 200, "{strategy} as {who:?}: {response}");
            let got = names(&response["results"][0]);
            let sees_private = who == "bob" || who == "admin";
            assert_eq!(
                got.contains(&"bob/legal".to_string()),
                sees_private,
                "{strategy} as {who:?}: {got:?}"
            );
            assert_eq!(got.len(), if sees_private { 4 } else { 3 });
            if sees_private {
                assert_eq!(got[0], "bob/legal");
            }
            // bob's fusion of his private adapter does not name it in the description of the
            // adapter it makes (which he may make public later), as the job's files do not.
            if strategy == "fusion" && who == "bob" {
                let job = response["results"][0]["fusion"]["job"]
                    .as_str()
                    .expect("a new fusion is queued");
                let (_, job) = app.get_json(&format!("/api/v1/jobs/{job}"), "bob").await;
                let description = job["spec"]["output"]["description"].as_str().expect("desc");
                assert!(
                    !description.contains("legal") && description.contains("private-input-"),
                    "{description}"
                );
            }
        }
    }
    // A private profile does not shift the scores others see (the centred recipe's mean and
    // BM25's corpus statistics are taken over public adapters only).
    let scores = |r: &Value| -> Vec<(String, f64)> {
        r["results"][0]["adapters"]
            .as_array()
            .expect("adapters")
            .iter()
            .map(|a| {
                (
                    a["adapter"].as_str().expect("a").to_string(),
                    a["score"].as_f64().expect("s"),
                )
            })
            .collect()
    };
    let before = scores(&route(&app, "alice", json!({"inputs": [TOPICS[0].2], "top_k": 3})).await);
    let (status, body) = app.create_adapter("bob", "secret", true, "bob").await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = app
        .upload(
            "bob/secret",
            "bob",
            &with_samples(7, &["Bake the bread at 220 degrees.", "Knead the dough."]),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    wait_profile(&app, "bob/secret", "bob", None).await;
    let after = scores(&route(&app, "alice", json!({"inputs": [TOPICS[0].2], "top_k": 3})).await);
    assert_eq!(before, after);
    // In an organisation, a private adapter routes to its members (any role, any token of
    // theirs) and stops at once for a member removed; a transfer keeps its profile.
    let (status, body) = app
        .post_json("/api/v1/orgs", "bob", &json!({"name": "lawfirm"}))
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = app
        .send(
            app.request(
                reqwest::Method::PUT,
                "/api/v1/orgs/lawfirm/members/alice",
                "bob",
            )
            .json(&json!({"role": "read"})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let move_legal = |from: &'static str, to: &'static str| {
        let app = &app;
        async move {
            let path = format!("/api/v1/adapters/{from}/legal/transfer");
            app.post_json(&path, "bob", &json!({ "to": to })).await
        }
    };
    let (status, body) = move_legal("bob", "lawfirm").await;
    assert_eq!(status, 200, "{body}");
    let routed = |who: &'static str| {
        let app = &app;
        async move {
            let response = route(app, who, json!({"inputs": [legal], "top_k": 4})).await;
            names(&response["results"][0])
        }
    };
    for who in ["alice", "alice_read", "bob"] {
        assert_eq!(routed(who).await[0], "lawfirm/legal", "{who}");
    }
    assert!(!routed("").await.contains(&"lawfirm/legal".to_string()));
    let (status, _) = app
        .send(app.request(
            reqwest::Method::DELETE,
            "/api/v1/orgs/lawfirm/members/alice",
            "bob",
        ))
        .await;
    assert_eq!(status, 204);
    assert!(!routed("alice").await.contains(&"lawfirm/legal".to_string()));
    let (status, body) = move_legal("lawfirm", "bob").await;
    assert_eq!(status, 200, "{body}");
    // Made public, it shows to everyone at once (the index follows the registry generation).
    let (status, body) = app
        .send(
            app.request(reqwest::Method::PATCH, "/api/v1/adapters/bob/legal", "bob")
                .json(&json!({"private": false})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let response = route(&app, "", json!({"inputs": [legal]})).await;
    assert_eq!(names(&response["results"][0])[0], "bob/legal");
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn mixture_weights_and_filters(#[case] backend: Backend) {
    let Some(app) = spawn_routing_app(backend, Recipe::DEFAULT).await else {
        return;
    };
    seed_topics(&app).await;
    let prompt = TOPICS[1].2;
    let uniform = route(
        &app,
        "alice",
        json!({"inputs": [prompt], "strategy": "mixture"}),
    )
    .await;
    let adapters = uniform["results"][0]["adapters"]
        .as_array()
        .expect("adapters")
        .clone();
    assert_eq!(adapters.len(), 3);
    for a in &adapters {
        assert!(
            (a["weight"].as_f64().expect("weight") - 1.0 / 3.0).abs() < 1e-6,
            "{a}"
        );
    }
    let soft = route(
        &app,
        "alice",
        json!({"inputs": [prompt], "strategy": "mixture", "weights": "softmax", "temperature": 0.05}),
    )
    .await;
    let adapters = soft["results"][0]["adapters"]
        .as_array()
        .expect("adapters")
        .clone();
    let weights: Vec<f64> = adapters
        .iter()
        .map(|a| a["weight"].as_f64().expect("w"))
        .collect();
    assert!(
        (weights.iter().sum::<f64>() - 1.0).abs() < 1e-5,
        "{weights:?}"
    );
    assert!(weights.windows(2).all(|w| w[0] >= w[1]), "{weights:?}");
    let (s0, s1) = (
        adapters[0]["score"].as_f64().expect("s"),
        adapters[1]["score"].as_f64().expect("s"),
    );
    assert!(
        ((weights[0] / weights[1]).ln() - (s0 - s1) / 0.05).abs() < 1e-3,
        "softmax(score / T): {weights:?} for scores {s0}, {s1}"
    );
    let one = route(
        &app,
        "alice",
        json!({"inputs": [prompt], "strategy": "mixture", "top_k": 1}),
    )
    .await;
    assert_eq!(one["results"][0]["adapters"][0]["weight"], 1.0);

    // Filters: base model, owner, tags.
    let none = route(
        &app,
        "bob",
        json!({"inputs": [prompt], "base_model": "other/base"}),
    )
    .await;
    assert!(names(&none["results"][0]).is_empty());
    let bobs = route(
        &app,
        "bob",
        json!({"inputs": [prompt], "filter": {"owner": "bob"}}),
    )
    .await;
    assert_eq!(names(&bobs["results"][0]), vec!["bob/legal"]);
    let (status, body) = app
        .send(
            app.request(
                reqwest::Method::PATCH,
                "/api/v1/adapters/alice/music",
                "alice",
            )
            .json(&json!({"tags": ["test", "audio"]})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let tagged = route(
        &app,
        "alice",
        json!({"inputs": [prompt], "filter": {"tags": ["audio"]}}),
    )
    .await;
    assert_eq!(names(&tagged["results"][0]), vec!["alice/music"]);
}

/// `ΔW = s·B·A` of every module of a downloaded adapter.
async fn deltas(app: &TestApp, repo: &str, reference: &str, dir: &Path) -> Vec<Array2<f64>> {
    let out = dir.join(repo.replace('/', "_") + "_" + reference);
    std::fs::create_dir_all(&out).expect("dir");
    for path in ["adapter_config.json", "adapter_model.safetensors"] {
        let bytes = app.download(repo, reference, path, "alice").await;
        std::fs::write(out.join(path), bytes).expect("write");
    }
    let adapter = LoraAdapter::open(&out).expect("open");
    adapter
        .modules
        .keys()
        .map(|m| {
            let module = adapter.load_module(m).expect("load").expect("module");
            module.b.to_f64().dot(&module.a.to_f64()) * f64::from(module.scale)
        })
        .collect()
}

fn max_abs_diff(a: &Array2<f64>, b: &Array2<f64>) -> f64 {
    (a - b).iter().fold(0.0, |m, x| m.max(x.abs()))
}

async fn fusion_of(app: &TestApp, body: Value) -> Value {
    let response = route(app, "alice", body).await;
    let fusion = response["results"][0]["fusion"].clone();
    if fusion["state"] != "ready" {
        let job = fusion["job"].as_str().expect("fusion job");
        let done = app.wait_job(job, "alice", WAIT).await;
        assert_eq!(done["state"], "succeeded", "{done}");
    }
    response
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn fusions_are_made_once_and_merge_exactly(#[case] backend: Backend) {
    let Some(app) = spawn_routing_app(backend, Recipe::DEFAULT).await else {
        return;
    };
    seed_topics(&app).await;
    let prompt = TOPICS[1].2;
    let base = "quiver-test/tiny-llama";
    let exact_body =
        json!({"inputs": [prompt], "strategy": "fusion", "top_k": 2, "base_model": base});
    let first = fusion_of(&app, exact_body.clone()).await;
    let fusion = &first["results"][0]["fusion"];
    let fused = fusion["adapter"].as_str().expect("fused").to_string();
    assert!(fused.starts_with("alice/fusion-"), "{fusion}");

    // Asked again: the same adapter, ready, and no new job.
    let (_, jobs_before) = app.get_json("/api/v1/jobs", "alice").await;
    let again = route(&app, "alice", exact_body.clone()).await;
    let fusion = &again["results"][0]["fusion"];
    assert_eq!(fusion["adapter"], fused.as_str());
    assert_eq!(fusion["state"], "ready", "{fusion}");
    assert_eq!(fusion["version"], 1);
    let (_, jobs_after) = app.get_json("/api/v1/jobs", "alice").await;
    assert_eq!(jobs_before["items"], jobs_after["items"]);
    // The fused adapter is alice's and private.
    let (status, _) = app
        .get_json(&format!("/api/v1/adapters/{fused}"), "bob")
        .await;
    assert_eq!(status, 404);

    // Exact fusion = the mixture's update: Σ wᵢ ΔWᵢ.
    let dir = tempfile::tempdir().expect("tmp");
    let retrieved = names(&first["results"][0]);
    let w: Vec<f64> = first["results"][0]["adapters"]
        .as_array()
        .expect("adapters")
        .iter()
        .map(|a| a["weight"].as_f64().expect("weight"))
        .collect();
    assert_eq!(w, vec![0.5, 0.5]);
    let d1 = deltas(&app, &retrieved[0], "main", dir.path()).await;
    let d2 = deltas(&app, &retrieved[1], "main", dir.path()).await;
    let exact = deltas(&app, &fused, "main", dir.path()).await;
    for ((e, a), b) in exact.iter().zip(&d1).zip(&d2) {
        let want = a * 0.5 + b * 0.5;
        let scale = want.iter().fold(0.0f64, |m, x| m.max(x.abs()));
        assert!(
            max_abs_diff(e, &want) <= 1e-5 * scale,
            "exact fusion ≠ mixture"
        );
    }

    // LoraRetriever's fusion (factor averaging): fusion − mixture = the cross terms,
    // s/4·(B₁A₂ + B₂A₁) − s/4·(B₁A₁ + B₂A₂), exactly (algorithms.md §7, test 4).
    let mut fa_body = exact_body.clone();
    fa_body["fusion"] = json!("factor_average");
    let fa = fusion_of(&app, fa_body).await;
    let fa_name = fa["results"][0]["fusion"]["adapter"]
        .as_str()
        .expect("fa")
        .to_string();
    assert_ne!(fa_name, fused);
    let averaged = deltas(&app, &fa_name, "main", dir.path()).await;
    let factors = |repo: &str| {
        let out = dir.path().join(repo.replace('/', "_") + "_main");
        let adapter = LoraAdapter::open(&out).expect("open");
        adapter
            .modules
            .keys()
            .map(|m| adapter.load_module(m).expect("load").expect("module"))
            .collect::<Vec<_>>()
    };
    let (m1, m2) = (factors(&retrieved[0]), factors(&retrieved[1]));
    for (((fa, ex), p), q) in averaged.iter().zip(&exact).zip(&m1).zip(&m2) {
        assert_eq!(p.scale, q.scale, "the synthetic adapters share a scale");
        let s = f64::from(p.scale);
        let (b1, a1, b2, a2) = (p.b.to_f64(), p.a.to_f64(), q.b.to_f64(), q.a.to_f64());
        let cross = (b1.dot(&a2) + b2.dot(&a1) - b1.dot(&a1) - b2.dot(&a2)) * (s / 4.0);
        let scale = cross.iter().fold(0.0f64, |m, x| m.max(x.abs()));
        // Both outputs are stored in f32: their rounding (~1e-7 of ‖ΔW‖) bounds the check.
        let size = ex.iter().fold(0.0f64, |m, x| m.max(x.abs()));
        let diff = max_abs_diff(&(fa - ex), &cross);
        assert!(
            diff <= 1e-6 * size && diff <= 0.05 * scale,
            "fusion − mixture ≠ cross terms: off by {diff}; cross terms up to {scale}, ΔW up to {size}"
        );
    }

    // k = 1: the fusion (and the mixture) is the one adapter.
    let one = fusion_of(
        &app,
        json!({"inputs": [prompt], "strategy": "fusion", "top_k": 1, "base_model": base}),
    )
    .await;
    let single = one["results"][0]["fusion"]["adapter"]
        .as_str()
        .expect("fused")
        .to_string();
    let top = names(&one["results"][0])[0].clone();
    let alone = deltas(&app, &single, "main", dir.path()).await;
    let original = deltas(&app, &top, "main", dir.path()).await;
    for (x, y) in alone.iter().zip(&original) {
        let scale = y.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        assert!(max_abs_diff(x, y) <= 1e-6 * scale);
    }
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn profiles_of_another_embedder_are_recomputed_never_mixed(#[case] backend: Backend) {
    let Some(app) = spawn_routing_app(backend, Recipe::DEFAULT).await else {
        return;
    };
    seed_topics(&app).await;
    let current = wait_profile(&app, "alice/code", "alice", None).await["embedder"]
        .as_str()
        .expect("embedder")
        .to_string();
    // As if computed by an older model: a vector of another embedder replaces the profile.
    let (status, body) = app
        .post_json(
            "/api/v1/adapters/alice/code/versions/main/profile",
            "alice",
            &json!({"vector": [1.0, 0.0, 0.0], "embedder": "older-model@000000000000"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["embedder"], "older-model@000000000000");
    assert_eq!(body["current"], false);
    // The reconciler sees the stale profile and recomputes it from the samples.
    let recomputed = wait_profile(&app, "alice/code", "alice", Some(&current)).await;
    assert_eq!(recomputed["source"], "samples");
    assert_eq!(recomputed["count"], 6);
    let response = route(&app, "alice", json!({"inputs": [TOPICS[1].2]})).await;
    assert_eq!(names(&response["results"][0])[0], "alice/code");

    // A recompute on request: an embed job, 202.
    let (status, job) = app
        .post_json(
            "/api/v1/adapters/alice/code/versions/main/profile",
            "alice",
            &json!({}),
        )
        .await;
    assert_eq!(status, 202, "{job}");
    assert_eq!(job["kind"], "embed");
    let done = app
        .wait_job(job["id"].as_str().expect("id"), "alice", WAIT)
        .await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["report"]["samples"], 6);
    // Not bob's to recompute; no samples, no profile.
    let (status, _) = app
        .post_json(
            "/api/v1/adapters/alice/code/versions/main/profile",
            "bob",
            &json!({}),
        )
        .await;
    assert_eq!(status, 403);
    app.adapter_with("alice/plain", &synthetic_adapter(4, &MODULES, 9))
        .await;
    let (status, body) = app
        .post_json(
            "/api/v1/adapters/alice/plain/versions/main/profile",
            "alice",
            &json!({}),
        )
        .await;
    assert_error(status, &body, (422, "no_samples"), "routing");
    let (status, body) = app
        .get_json(
            "/api/v1/adapters/alice/plain/versions/main/profile",
            "alice",
        )
        .await;
    assert_error(status, &body, (404, "profile_not_found"), "routing");
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn without_an_embedder_routes_need_vectors(#[case] backend: Backend) {
    let app = app_or_skip!(backend);
    let (status, body) = app
        .post_json("/api/v1/route", "alice", &json!({"inputs": ["hello"]}))
        .await;
    assert_error(status, &body, (503, "embedder_unavailable"), "routing");
    assert!(
        body["error"]["message"]
            .as_str()
            .expect("message")
            .contains("--embedder-dir")
    );

    // Uploaded profiles and request vectors of a caller's own embedder work without one.
    for (i, (name, vector)) in [
        ("x", [1.0, 0.0, 0.0]),
        ("y", [0.0, 1.0, 0.0]),
        ("z", [0.0, 0.0, 1.0]),
    ]
    .into_iter()
    .enumerate()
    {
        app.adapter_with(
            &format!("alice/{name}"),
            &synthetic_adapter(4, &MODULES, i as u32),
        )
        .await;
        let (status, body) = app
            .post_json(
                &format!("/api/v1/adapters/alice/{name}/versions/main/profile"),
                "alice",
                &json!({"vector": vector.map(|x| x * 3.0), "embedder": "toy-3d"}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["source"], "uploaded");
        assert!(body["current"].is_null());
    }
    // algorithms.md §7 test 2: with orthogonal profiles, each query's own adapter ranks first.
    let response = route(
        &app,
        "",
        json!({"vectors": [[0.0, 2.0, 0.1], [0.9, 0.0, 0.1], [0.0, 0.1, 5.0]], "embedder": "toy-3d", "top_k": 3}),
    )
    .await;
    let firsts: Vec<String> = response["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| names(r)[0].clone())
        .collect();
    assert_eq!(firsts, vec!["alice/y", "alice/x", "alice/z"]);
    assert_eq!(response["embedder"], "toy-3d");
    // Another embedder's profiles are not searched.
    let other = route(
        &app,
        "",
        json!({"vectors": [[1.0, 0.0, 0.0]], "embedder": "other"}),
    )
    .await;
    assert!(names(&other["results"][0]).is_empty());
    // A vector of the wrong dimension for the index.
    let (status, body) = app
        .post_json(
            "/api/v1/route",
            "",
            &json!({"vectors": [[1.0, 0.0]], "embedder": "toy-3d"}),
        )
        .await;
    assert_error(status, &body, (422, "invalid_vector"), "routing");
    // An uploaded vector needs its embedder named when the server has none.
    let (status, body) = app
        .post_json(
            "/api/v1/adapters/alice/x/versions/main/profile",
            "alice",
            &json!({"vector": [1.0, 0.0, 0.0]}),
        )
        .await;
    assert_error(status, &body, (422, "invalid_vector"), "routing");
    // Recomputing needs an embedder.
    let (status, body) = app
        .post_json(
            "/api/v1/adapters/alice/x/versions/main/profile",
            "alice",
            &json!({}),
        )
        .await;
    assert_error(status, &body, (503, "embedder_unavailable"), "routing");
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[tokio::test]
async fn bad_route_requests_are_422(#[case] backend: Backend) {
    let app = app_or_skip!(backend);
    let many: Vec<String> = (0..1025).map(|i| format!("prompt {i}")).collect();
    for (body, needle) in [
        (json!({"inputs": []}), "empty"),
        (json!({"inputs": many}), "at most 1024"),
        (
            json!({"inputs": ["a"], "strategy": "best"}),
            "unknown variant",
        ),
        (json!({"inputs": ["a"], "top_k": 0}), "top_k"),
        (json!({"inputs": ["a"], "top_k": 51}), "top_k"),
        (json!({"inputs": ["a"], "vectors": [[1.0]]}), "not both"),
        (json!({}), "give `inputs`"),
        (json!({"inputs": ["  "]}), "inputs[0] is empty"),
        (json!({"inputs": ["a"], "strategy": "fusion"}), "base_model"),
        (
            json!({"inputs": ["a"], "weights": "softmax", "temperature": 0}),
            "temperature",
        ),
        (json!({"inputs": ["a"], "colour": "blue"}), "unknown field"),
    ] {
        let (status, response) = app.post_json("/api/v1/route", "alice", &body).await;
        assert_error(status, &response, (422, "invalid_route"), &body.to_string());
        let message = response["error"]["message"].as_str().expect("message");
        assert!(
            message.contains(needle),
            "{body}: {message:?} lacks {needle:?}"
        );
    }
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn bad_samples_are_refused_on_upload(#[case] backend: Backend) {
    let app = app_or_skip!(backend);
    let (status, body) = app.create_adapter("alice", "s", false, "alice").await;
    assert_eq!(status, 201, "{body}");
    for (samples, needle) in [
        (&b"{\"input\": \"fine\"}\nnot json\n"[..], "line 2"),
        (b"{\"prompt\": \"x\"}\n", "\"input\""),
        (b"\n", "no samples"),
    ] {
        let mut files = synthetic_adapter(4, &MODULES, 1);
        files.push(("samples.jsonl".into(), samples.to_vec()));
        let (status, response) = app.upload("alice/s", "alice", &files).await;
        assert_error(status, &response, (422, "invalid_samples"), "routing");
        let message = response["error"]["message"].as_str().expect("message");
        assert!(message.contains(needle), "{message:?} lacks {needle:?}");
    }
    app.assert_no_leftovers(0, 0).await;
    let mut files = synthetic_adapter(4, &MODULES, 1);
    files.push((
        "samples.jsonl".into(),
        samples_jsonl(&["a prompt", "another"]),
    ));
    let (status, body) = app.upload("alice/s", "alice", &files).await;
    assert_eq!(status, 201, "{body}");
}
