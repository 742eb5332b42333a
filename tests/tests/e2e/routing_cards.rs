//! Cards as profiles: a version with a model card (README.md) and no samples.jsonl is profiled
//! from the card's text and routed, marked `profile: "card"`; a template-only card gets no
//! profile and is not looked at again; samples win over a card; cards of merged versions (which
//! Quiver writes) are not used.

use std::time::{Duration, Instant};

use quiver_api::routing::reconcile::reconcile_once;
use quiver_retrieve::Recipe;
use quiver_tests::{
    Backend, Files, TestApp, assert_error, sha256_hex, spawn_routing_app, synthetic_adapter,
};
use rstest::rstest;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(120);
const MODULES: [&str; 2] = ["q_proj", "v_proj"];

const TOPICS: [(&str, [&str; 4]); 3] = [
    (
        "cooking",
        [
            "How long should I roast a whole chicken at 200 degrees?",
            "Give me a recipe for vegetarian lasagna with spinach.",
            "What can I substitute for eggs when baking a chocolate cake?",
            "Which spices go well in a lentil curry?",
        ],
    ),
    (
        "legal",
        [
            "Can my landlord keep my security deposit for normal wear and tear?",
            "What is the statute of limitations for breach of contract?",
            "Is a verbal agreement legally binding?",
            "How do I contest a will in probate court?",
        ],
    ),
    (
        "music",
        [
            "What chords are in the key of G major?",
            "How do I tune a guitar to drop D?",
            "What is the difference between a major and a minor scale?",
            "Who composed the Four Seasons violin concertos?",
        ],
    ),
];

/// A card as people write them: front matter, a description, intended uses, and sections that
/// say nothing about the task (code, hyperparameters, versions).
const SQL_CARD: &str = "---\nlicense: apache-2.0\nbase_model: quiver-test/tiny-llama\nlibrary_name: peft\n---\n\n\
# SQL writer\n\n\
A LoRA adapter that turns questions in plain English into SQL queries.\n\n\
## Model description\n\n\
Given a database schema and a question such as which customers ordered more than three times \
last month, it writes the SELECT statement that answers it, with joins, GROUP BY and HAVING \
clauses where needed. It targets PostgreSQL and SQLite databases.\n\n\
## Intended uses\n\n\
- Writing SQL queries from natural-language questions about the tables of a database.\n\
- Explaining what an existing SQL query does, clause by clause.\n\n\
## How to get started\n\n\
```python\nfrom peft import PeftModel\nmodel = PeftModel.from_pretrained(base, \"alice/sql\")\n```\n\n\
## Training hyperparameters\n\n\
- learning_rate: 0.0002\n- num_epochs: 3\n\n\
### Framework versions\n\n- PEFT 0.13.2\n";

/// What PEFT's `push_to_hub` writes when nobody edits the card.
const TEMPLATE_CARD: &str = "---\nbase_model: quiver-test/tiny-llama\nlibrary_name: peft\n---\n\n\
# Model Card for Model ID\n\n<!-- Provide a quick summary of what the model is/does. -->\n\n\n\n\
## Model Details\n\n### Model Description\n\n<!-- Provide a longer summary of what this model is. -->\n\n\n\n\
- **Developed by:** [More Information Needed]\n- **Model type:** [More Information Needed]\n\
- **License:** [More Information Needed]\n\n\
## Uses\n\n### Direct Use\n\n[More Information Needed]\n\n\
## How to Get Started with the Model\n\nUse the code below to get started with the model.\n\n\
[More Information Needed]\n\n## Training Details\n\n### Training Data\n\n[More Information Needed]\n\n\
### Framework versions\n\n- PEFT 0.13.2\n";

const SQL_PROMPT: &str =
    "Write a query that returns the ten products with the highest total sales in 2023.";

fn samples_jsonl(samples: &[&str]) -> Vec<u8> {
    samples
        .iter()
        .map(|s| json!({ "input": s }).to_string() + "\n")
        .collect::<String>()
        .into_bytes()
}

fn files(seed: u32, samples: Option<&[&str]>, card: Option<&str>) -> Files {
    let mut files = synthetic_adapter(4, &MODULES, seed);
    if let Some(samples) = samples {
        files.push(("samples.jsonl".into(), samples_jsonl(samples)));
    }
    if let Some(card) = card {
        files.push(("README.md".into(), card.as_bytes().to_vec()));
    }
    files
}

/// Polls a version's profile until it exists.
async fn wait_profile(app: &TestApp, repo: &str) -> Value {
    let start = Instant::now();
    loop {
        let (status, body) = app
            .get_json(
                &format!("/api/v1/adapters/{repo}/versions/main/profile"),
                "alice",
            )
            .await;
        if status == 200 {
            return body;
        }
        assert!(
            start.elapsed() < WAIT,
            "no profile for {repo} after {WAIT:?}: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// alice's embed jobs for `repo`, waited for until each has ended.
async fn ended_embed_jobs(app: &TestApp, repo: &str) -> Vec<Value> {
    let start = Instant::now();
    loop {
        let (status, page) = app.get_json("/api/v1/jobs?kind=embed", "alice").await;
        assert_eq!(status, 200, "{page}");
        let jobs: Vec<Value> = page["items"]
            .as_array()
            .expect("items")
            .iter()
            .filter(|j| j["spec"]["version"]["adapter"] == repo)
            .cloned()
            .collect();
        if !jobs.is_empty()
            && jobs
                .iter()
                .all(|j| matches!(j["state"].as_str(), Some("succeeded" | "failed")))
        {
            return jobs;
        }
        assert!(
            start.elapsed() < WAIT,
            "embed jobs of {repo} not ended after {WAIT:?}: {page}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn cards_without_samples_route_as_card_profiles(#[case] backend: Backend) {
    let Some(app) = spawn_routing_app(backend, Recipe::DEFAULT).await else {
        return;
    };
    for (i, (topic, samples)) in TOPICS.iter().enumerate() {
        app.adapter_with(
            &format!("alice/{topic}"),
            &files(i as u32 + 1, Some(samples), None),
        )
        .await;
    }
    app.adapter_with("alice/sql", &files(7, None, Some(SQL_CARD)))
        .await;
    app.adapter_with("alice/template", &files(8, None, Some(TEMPLATE_CARD)))
        .await;
    // Samples win over the card.
    app.adapter_with("alice/both", &files(9, Some(&TOPICS[1].1), Some(SQL_CARD)))
        .await;

    let profile = wait_profile(&app, "alice/sql").await;
    assert_eq!(profile["source"], "card", "{profile}");
    assert_eq!(profile["current"], true);
    assert_eq!(profile["samples_sha256"], sha256_hex(SQL_CARD.as_bytes()));
    let count = profile["count"].as_i64().expect("count");
    assert!((1..=32).contains(&count), "{profile}");
    let both = wait_profile(&app, "alice/both").await;
    assert_eq!(
        (&both["source"], &both["count"]),
        (&json!("samples"), &json!(4))
    );
    for (topic, _) in TOPICS {
        wait_profile(&app, &format!("alice/{topic}")).await;
    }

    // The template's job ran and found nothing: no profile, and the reconciler leaves it be.
    let jobs = ended_embed_jobs(&app, "alice/template").await;
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    assert_eq!(jobs[0]["state"], "succeeded", "{jobs:?}");
    assert_eq!(jobs[0]["spec"]["source"], "card");
    assert_eq!(jobs[0]["report"]["texts"], 0, "{jobs:?}");
    let (status, body) = app
        .get_json(
            "/api/v1/adapters/alice/template/versions/main/profile",
            "alice",
        )
        .await;
    assert_error(status, &body, (404, "profile_not_found"), "template card");
    let embedder = profile["embedder"].as_str().expect("embedder");
    // The profile keeps the terms of the texts it was embedded from, for the BM25 re-rank: the
    // card's for a card, the samples' for samples.
    let routable = app
        .store
        .meta
        .routable_profiles(embedder)
        .await
        .expect("routable");
    for (repo, want) in [
        ("sql", ["sql", "queri", "postgresql"]),
        ("legal", ["landlord", "contract", "probate"]),
    ] {
        let id = routable
            .iter()
            .find(|p| p.name == repo)
            .unwrap_or_else(|| panic!("{repo} routable"))
            .version_id;
        let stored = app
            .store
            .meta
            .profile_vectors(&[id])
            .await
            .expect("vectors");
        let terms: quiver_retrieve::TermCounts =
            serde_json::from_str(stored[0].terms.as_deref().expect("terms stored")).expect("terms");
        for term in want {
            assert!(
                terms.counts.contains_key(term),
                "{repo}: {term} in {terms:?}"
            );
        }
        assert!(!terms.counts.contains_key("learning_rate") && !terms.counts.contains_key("the"));
    }
    let stale = app
        .store
        .meta
        .stale_profiles(embedder, 500)
        .await
        .expect("stale");
    assert!(stale.is_empty(), "{stale:?}");
    assert_eq!(reconcile_once(&app.store, embedder).await.expect("look"), 0);

    // The SQL prompt goes to the card's adapter, marked as such; the template's is nowhere.
    let (status, response) = app
        .post_json(
            "/api/v1/route",
            "alice",
            &json!({"inputs": [SQL_PROMPT, TOPICS[0].1[1]], "top_k": 10}),
        )
        .await;
    assert_eq!(status, 200, "{response}");
    let sql = &response["results"][0]["adapters"];
    assert_eq!(sql[0]["adapter"], "alice/sql", "{response}");
    assert_eq!(sql[0]["profile"], "card", "{response}");
    let ranked: Vec<(&str, &str)> = sql
        .as_array()
        .expect("adapters")
        .iter()
        .map(|a| {
            (
                a["adapter"].as_str().expect("adapter"),
                a["profile"].as_str().expect("profile"),
            )
        })
        .collect();
    assert_eq!(ranked.len(), 5, "{ranked:?}");
    assert!(!ranked.iter().any(|(a, _)| *a == "alice/template"));
    for (adapter, kind) in &ranked {
        let want = if *adapter == "alice/sql" {
            "card"
        } else {
            "samples"
        };
        assert_eq!(*kind, want, "{adapter}");
    }
    assert_eq!(
        response["results"][1]["adapters"][0]["adapter"],
        "alice/cooking"
    );
    assert_eq!(response["pending"], json!([]), "{response}");

    // A recompute on request uses the card too; a merged version's card (Quiver's own) is not
    // used.
    let (status, job) = app
        .post_json(
            "/api/v1/adapters/alice/sql/versions/main/profile",
            "alice",
            &json!({}),
        )
        .await;
    assert_eq!(status, 202, "{job}");
    assert_eq!(job["spec"]["source"], "card");
    let done = app
        .wait_job(job["id"].as_str().expect("id"), "alice", WAIT)
        .await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["report"]["texts"], count);
    let (status, merge) = app
        .post_json(
            "/api/v1/merges",
            "alice",
            &json!({"method": "linear", "inputs": [{"adapter": "alice/sql"}, {"adapter": "alice/template"}],
                    "output": {"adapter": "alice/merged", "create": true}}),
        )
        .await;
    assert_eq!(status, 202, "{merge}");
    let merged = app
        .wait_job(merge["id"].as_str().expect("id"), "alice", WAIT)
        .await;
    assert_eq!(merged["state"], "succeeded", "{merged}");
    let (status, version) = app
        .get_json("/api/v1/adapters/alice/merged/versions/main", "alice")
        .await;
    assert_eq!(status, 200, "{version}");
    assert!(
        version["files"]
            .as_array()
            .expect("files")
            .iter()
            .any(|f| f["path"] == "README.md"),
        "{version}"
    );
    assert!(
        app.store
            .meta
            .stale_profiles(embedder, 500)
            .await
            .expect("stale")
            .is_empty()
    );
    let (status, body) = app
        .post_json(
            "/api/v1/adapters/alice/merged/versions/main/profile",
            "alice",
            &json!({}),
        )
        .await;
    assert_error(status, &body, (422, "no_samples"), "merged card");
}
