//! `POST /route` while profiles are being made: the adapters that match but have no profile yet
//! are listed in `pending` (queued, running, failed), to whoever may see them and as the
//! filters say; `wait: true` waits for them and then ranks them; bad `wait_ms` is refused.
//!
//! The server runs with the embedder but without job workers, so the embed jobs its reconciler
//! queues stay queued until the test claims them or starts a `quiver worker`.

use std::time::{Duration, Instant};

use quiver_api::config::HttpOptions;
use quiver_api::routing::RoutingOptions;
use quiver_retrieve::Recipe;
use quiver_store::{JobEnd, JobKind, JobState};
use quiver_tests::{
    Backend, Process, TestApp, app_or_skip, assert_error, spawn_app_routing, synthetic_adapter,
    test_embedder,
};
use rstest::rstest;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(120);
const MODULES: [&str; 2] = ["q_proj", "v_proj"];

const CODE: [&str; 4] = [
    "Write a Python function that reverses a linked list.",
    "How do I sort a dictionary by value in Python?",
    "Implement binary search in C++ on a sorted vector.",
    "Why does my Rust code fail with 'borrowed value does not live long enough'?",
];
const LEGAL: [&str; 3] = [
    "Can my landlord keep my security deposit for normal wear and tear?",
    "Is a verbal agreement legally binding?",
    "How do I contest a will in probate court?",
];
const MUSIC: [&str; 3] = [
    "What chords are in the key of G major?",
    "How do I tune a guitar to drop D?",
    "How can I improve my piano sight-reading?",
];
const CODE_PROMPT: &str = "How can I read a CSV file into a list of dicts in Python?";

/// A server with the test embedder and no job workers, or `None` (skip) without an embedder.
async fn app_without_workers(backend: Backend) -> Option<TestApp> {
    let embedder = test_embedder()?;
    spawn_app_routing(
        backend,
        HttpOptions::default(),
        0,
        RoutingOptions {
            embedder: Some(embedder),
            recipe: Recipe::DEFAULT,
            reconcile_every: Duration::from_millis(300),
            ..RoutingOptions::default()
        },
    )
    .await
}

async fn upload_with_samples(
    app: &TestApp,
    repo: &str,
    private: bool,
    seed: u32,
    samples: &[&str],
) {
    let (owner, name) = repo.split_once('/').expect("owner/name");
    let (status, body) = app.create_adapter(owner, name, private, owner).await;
    assert_eq!(status, 201, "{body}");
    let mut files = synthetic_adapter(4, &MODULES, seed);
    let lines: String = samples
        .iter()
        .map(|s| json!({ "input": s }).to_string() + "\n")
        .collect();
    files.push(("samples.jsonl".into(), lines.into_bytes()));
    let (status, body) = app.upload(repo, owner, &files).await;
    assert_eq!(status, 201, "{body}");
}

async fn route(app: &TestApp, who: &str, body: Value) -> Value {
    let (status, response) = app.post_json("/api/v1/route", who, &body).await;
    assert_eq!(status, 200, "{body} → {response}");
    response
}

fn pending_names(response: &Value) -> Vec<String> {
    response["pending"]
        .as_array()
        .expect("pending is always present")
        .iter()
        .map(|p| p["adapter"].as_str().expect("adapter").to_string())
        .collect()
}

fn pending_of<'a>(response: &'a Value, adapter: &str) -> &'a Value {
    response["pending"]
        .as_array()
        .expect("pending")
        .iter()
        .find(|p| p["adapter"] == adapter)
        .unwrap_or_else(|| panic!("{adapter} is not pending: {response}"))
}

/// Routes as `who` until `pending` names exactly `want` (the reconciler queues the jobs soon
/// after the uploads).
async fn until_pending(app: &TestApp, who: &str, want: &[&str]) -> Value {
    let start = Instant::now();
    loop {
        let response = route(app, who, json!({"inputs": [CODE_PROMPT]})).await;
        if pending_names(&response) == want {
            return response;
        }
        assert!(
            start.elapsed() < WAIT,
            "pending for {who:?} is not {want:?} after {WAIT:?}: {response}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Routes with `wait: true` (30 s at most each time) until a wait ends before its bound.
async fn route_waiting(app: &TestApp, who: &str, body: Value) -> Value {
    let mut body = body;
    body["wait"] = json!(true);
    body["wait_ms"] = json!(30000);
    let start = Instant::now();
    loop {
        let response = route(app, who, body.clone()).await;
        if response["timed_out"] == false {
            return response;
        }
        assert!(
            start.elapsed() < WAIT,
            "still pending after {WAIT:?}: {response}"
        );
    }
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn adapters_without_profiles_are_pending_and_waited_for(#[case] backend: Backend) {
    let Some(app) = app_without_workers(backend).await else {
        return;
    };
    upload_with_samples(&app, "alice/code", false, 1, &CODE).await;
    upload_with_samples(&app, "alice/music", false, 2, &MUSIC).await;
    upload_with_samples(&app, "bob/legal", true, 3, &LEGAL).await;

    // Queued: nothing is ranked yet, and the route says why.
    let all = until_pending(&app, "bob", &["alice/code", "alice/music", "bob/legal"]).await;
    assert!(
        all["results"][0]["adapters"]
            .as_array()
            .expect("adapters")
            .is_empty()
    );
    assert_eq!(all["pending_truncated"], 0);
    assert!(
        all.get("timed_out").is_none() && all.get("waited_ms").is_none(),
        "{all}"
    );
    let code = pending_of(&all, "alice/code");
    assert_eq!(code["version"], 1);
    assert_eq!(code["state"], "queued");
    assert!(code.get("error").is_none(), "{code}");
    let (status, job) = app
        .get_json(
            &format!("/api/v1/jobs/{}", code["job"].as_str().expect("job id")),
            "alice",
        )
        .await;
    assert_eq!(status, 200, "{job}");
    assert_eq!(
        (&job["kind"], &job["state"]),
        (&json!("embed"), &json!("queued"))
    );

    // bob's private adapter is pending only for who may see it.
    for who in ["alice", "alice_read", ""] {
        let response = route(&app, who, json!({"inputs": [CODE_PROMPT]})).await;
        assert_eq!(
            pending_names(&response),
            ["alice/code", "alice/music"],
            "{who:?}: {response}"
        );
    }
    let admin = route(&app, "admin", json!({"inputs": [CODE_PROMPT]})).await;
    assert_eq!(pending_names(&admin).len(), 3, "{admin}");
    // The filters apply to the pending list as to the ranking.
    for (who, body, want) in [
        ("alice", json!({"filter": {"owner": "bob"}}), vec![]),
        (
            "bob",
            json!({"filter": {"owner": "bob"}}),
            vec!["bob/legal"],
        ),
        ("bob", json!({"base_model": "someone/else"}), vec![]),
        ("bob", json!({"filter": {"tags": ["nope"]}}), vec![]),
    ] {
        let mut body = body;
        body["inputs"] = json!([CODE_PROMPT]);
        let response = route(&app, who, body.clone()).await;
        assert_eq!(pending_names(&response), want, "{who} {body}: {response}");
    }

    // Nobody works on the jobs: a wait ends at its bound and says so.
    let waited = route(
        &app,
        "alice",
        json!({"inputs": [CODE_PROMPT], "wait": true, "wait_ms": 200}),
    )
    .await;
    assert_eq!(waited["timed_out"], true, "{waited}");
    assert!(waited["waited_ms"].as_u64().is_some(), "{waited}");
    assert_eq!(pending_names(&waited), ["alice/code", "alice/music"]);

    // Running, then failed: take every embed job as a worker would, fail alice/music's and
    // hand the others back.
    let mut leases = Vec::new();
    while let Some((job, lease)) = app
        .store
        .meta
        .claim_job("test-worker", 600_000, &[JobKind::Embed])
        .await
        .expect("claim")
    {
        leases.push((job, lease));
    }
    assert_eq!(leases.len(), 3, "{leases:?}");
    let running = route(&app, "alice", json!({"inputs": [CODE_PROMPT]})).await;
    assert_eq!(
        pending_of(&running, "alice/code")["state"],
        "running",
        "{running}"
    );
    for (job, lease) in &leases {
        let end = if job.spec["version"]["adapter"] == "alice/music" {
            JobEnd::Failed("the embedder ran out of memory (test)".into())
        } else {
            JobEnd::Released
        };
        app.store.meta.end_job(lease, &end).await.expect("end");
    }
    let failed = route(&app, "alice", json!({"inputs": [CODE_PROMPT]})).await;
    let music = pending_of(&failed, "alice/music");
    assert_eq!(music["state"], "failed", "{failed}");
    assert_eq!(music["error"], "the embedder ran out of memory (test)");
    assert_eq!(pending_of(&failed, "alice/code")["state"], "queued");
    // A failed embed is listed but not waited for; a queued one is.
    let waited = route(
        &app,
        "alice",
        json!({"inputs": [CODE_PROMPT], "wait": true, "wait_ms": 100}),
    )
    .await;
    assert_eq!(waited["timed_out"], true, "{waited}");

    // A worker with the embedder comes: a waiting route returns once the profiles exist, with
    // alice/code ranked first and only the failed one still pending.
    let _worker = Process::start(&app, &["worker", "--job-workers", "1"], &[]);
    let done = route_waiting(&app, "alice", json!({"inputs": [CODE_PROMPT], "top_k": 1})).await;
    assert_eq!(
        done["results"][0]["adapters"][0]["adapter"], "alice/code",
        "{done}"
    );
    assert_eq!(pending_names(&done), ["alice/music"], "{done}");
    assert_eq!(pending_of(&done, "alice/music")["state"], "failed");
    // bob's is ranked for bob, and the failed one stays listed until it is recomputed.
    let bob = route_waiting(&app, "bob", json!({"inputs": [LEGAL[1]], "top_k": 1})).await;
    assert_eq!(
        bob["results"][0]["adapters"][0]["adapter"], "bob/legal",
        "{bob}"
    );
    assert_eq!(pending_names(&bob), ["alice/music"]);
    let jobs = app
        .store
        .meta
        .get_job(music["job"].as_str().expect("job"))
        .await
        .expect("get")
        .expect("job");
    assert_eq!(jobs.state, JobState::Failed);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn bad_waits_are_422(#[case] backend: Backend) {
    let app = app_or_skip!(backend);
    let vectors = json!([[1.0, 0.0, 0.0]]);
    for (body, needle) in [
        (json!({"wait": true, "wait_ms": 0}), "wait_ms must be"),
        (json!({"wait": true, "wait_ms": 30001}), "wait_ms must be"),
        (json!({"wait": true, "wait_ms": -5}), "wait_ms must be"),
        (json!({"wait": true, "wait_ms": 1.5}), "wait_ms must be"),
        (json!({"wait": true, "wait_ms": "100"}), "wait_ms must be"),
        (
            json!({"wait_ms": 100}),
            "wait_ms applies only with `wait: true`",
        ),
    ] {
        let mut body = body;
        body["vectors"] = vectors.clone();
        body["embedder"] = json!("toy-3d");
        let (status, response) = app.post_json("/api/v1/route", "alice", &body).await;
        assert_error(status, &response, (422, "invalid_route"), &body.to_string());
        let message = response["error"]["message"].as_str().expect("message");
        assert!(
            message.contains(needle),
            "{body}: {message:?} lacks {needle:?}"
        );
    }
    // In range: nothing is pending for this embedder, so nothing is waited for.
    let (status, response) = app
        .post_json(
            "/api/v1/route",
            "alice",
            &json!({"vectors": vectors, "embedder": "toy-3d", "wait": true, "wait_ms": 30000}),
        )
        .await;
    assert_eq!(status, 200, "{response}");
    assert_eq!(response["timed_out"], false);
    assert_eq!(response["pending"], json!([]));
    assert_eq!(response["pending_truncated"], 0);

    // The OpenAPI document shows the new fields.
    let (status, spec) = app.get_json("/api/openapi.json", "").await;
    assert_eq!(status, 200);
    let schemas = &spec["components"]["schemas"];
    for (schema, field) in [
        ("RouteRequest", "wait"),
        ("RouteRequest", "wait_ms"),
        ("RouteResponse", "pending"),
        ("RouteResponse", "pending_truncated"),
        ("RouteResponse", "timed_out"),
        ("PendingAdapter", "state"),
    ] {
        assert!(
            schemas[schema]["properties"].get(field).is_some(),
            "{schema}.{field} missing: {}",
            schemas[schema]
        );
    }
    assert_eq!(
        schemas["RouteRequest"]["properties"]["wait_ms"]["maximum"], 30000,
        "{}",
        schemas["RouteRequest"]
    );
}
