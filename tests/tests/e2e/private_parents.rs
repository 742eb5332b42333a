//! A public merge or compression of a private adapter never names it, nor its files' sha256,
//! to anyone who may not see it: not in the version resource (`lineage.parents`), the listing's
//! and the adapter's `latest`, the page, nor in the written files (card, reports, safetensors
//! metadata). Its owner still sees the parent in the API. And a job's output that is another
//! user's private adapter answers like one that does not exist.

use std::time::Duration;

use quiver_tests::{Backend, TestApp, app_or_skip, assert_error, sha256_hex, synthetic_adapter};
use rstest::rstest;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(180);
const MODULES: [&str; 2] = ["q_proj", "v_proj"];
/// The private input's name: a word that appears nowhere else.
const PRIVATE: &str = "alice/zebracorn";

async fn job(app: &TestApp, route: &str, body: &Value) -> Value {
    let (status, queued) = app.post_json(route, "alice", body).await;
    assert_eq!(status, 202, "{queued}");
    let job = app
        .wait_job(queued["id"].as_str().expect("id"), "alice", WAIT)
        .await;
    assert_eq!(job["state"], "succeeded", "{job}");
    job
}

/// Everything about `repo` an anonymous reader, bob, or the owner gets as text, by route.
async fn surfaces(app: &TestApp, repo: &str, who: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for path in [
        format!("/api/v1/adapters/{repo}"),
        format!("/api/v1/adapters/{repo}/versions"),
        format!("/api/v1/adapters/{repo}/versions/1"),
        format!("/api/v1/adapters/{repo}/versions/main/lineage"),
        "/api/v1/adapters".to_string(),
        format!("/api/models/{repo}"),
        format!("/{repo}"),
        "/".to_string(),
    ] {
        let res = app
            .request(reqwest::Method::GET, &path, who)
            .send()
            .await
            .expect("get");
        assert_eq!(res.status(), 200, "{path} as {who:?}");
        out.push((path, res.text().await.expect("text")));
    }
    let (_, v) = app
        .get_json(&format!("/api/v1/adapters/{repo}/versions/1"), who)
        .await;
    for f in v["files"].as_array().expect("files") {
        let path = f["path"].as_str().expect("path");
        let bytes = app.download(repo, "1", path, who).await;
        out.push((
            path.to_string(),
            String::from_utf8_lossy(&bytes).into_owned(),
        ));
    }
    out
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn public_outputs_never_name_private_parents(#[case] backend: Backend) {
    let app = app_or_skip!(backend);
    let (owner, name) = PRIVATE.split_once('/').expect("repo");
    assert_eq!(app.create_adapter(owner, name, true, "alice").await.0, 201);
    let secret_files = synthetic_adapter(4, &MODULES, 1);
    assert_eq!(app.upload(PRIVATE, "alice", &secret_files).await.0, 201);
    let open_files = synthetic_adapter(4, &MODULES, 2);
    app.adapter_with("alice/open", &open_files).await;
    let (_, secret_v) = app
        .get_json(&format!("/api/v1/adapters/{PRIVATE}/versions/1"), "alice")
        .await;
    let secret_revision = secret_v["revision"].as_str().expect("rev").to_string();
    // Everything that identifies the private input: its name, revision and files' sha256.
    // (Files with the same bytes as the public input's, such as an identical config, are that
    // input's too, and may be named.)
    let open_hashes: Vec<String> = open_files.iter().map(|(_, b)| sha256_hex(b)).collect();
    let mut secrets: Vec<String> = vec![name.to_string(), secret_revision.clone()];
    secrets.extend(
        secret_files
            .iter()
            .map(|(_, b)| sha256_hex(b))
            .filter(|h| !open_hashes.contains(h)),
    );
    assert!(
        secrets.len() >= 3,
        "the private input's weights differ from the public one's"
    );
    let open_weights = open_files
        .iter()
        .find(|(p, _)| p.ends_with(".safetensors"))
        .map(|(_, b)| sha256_hex(b))
        .expect("weights");

    // A public merge (its private input first) and a public compression of the private one.
    job(
        &app,
        "/api/v1/merges",
        &json!({"method": "linear", "inputs": [{"adapter": PRIVATE}, {"adapter": "alice/open"}],
                "output": {"adapter": "alice/blend", "create": true}}),
    )
    .await;
    let compressed = job(
        &app,
        "/api/v1/compressions",
        &json!({"mode": "individual", "rank": 2, "inputs": [{"adapter": PRIVATE}],
                "output": {"adapter": "alice/small", "create": true}}),
    )
    .await;
    // The job (its creator's only) keeps the spec; its report leaves out the hashes too.
    assert!(
        secrets[2..]
            .iter()
            .all(|h| !compressed["report"].to_string().contains(h.as_str())),
        "{}",
        compressed["report"]
    );

    for repo in ["alice/blend", "alice/small"] {
        for who in ["", "bob"] {
            for (path, text) in surfaces(&app, repo, who).await {
                for s in &secrets {
                    assert!(
                        !text.contains(s.as_str()),
                        "{repo}: {path} as {who:?} names the private input ({s}):\n{text}"
                    );
                }
            }
            let (_, v) = app
                .get_json(&format!("/api/v1/adapters/{repo}/versions/1"), who)
                .await;
            assert_eq!(v["lineage"]["parents"][0], json!({"hidden": true}), "{v}");
        }
    }
    // The merge: the private input is `private-input-0` in the card and report; the public one
    // keeps its name and hashes, and the lineage its position.
    let card =
        String::from_utf8(app.download("alice/blend", "1", "README.md", "").await).expect("card");
    assert!(
        card.contains("private-input-0") && card.contains(&open_weights),
        "{card}"
    );
    let report: Value = serde_json::from_slice(
        &app.download("alice/blend", "1", "merge_report.json", "")
            .await,
    )
    .expect("report");
    assert_eq!(report["inputs"][0]["name"], "private-input-0", "{report}");
    assert_eq!(report["inputs"][1]["name"], "open", "{report}");
    assert_eq!(report["inputs"][1]["weights_sha256"], open_weights.as_str());
    let (_, v) = app
        .get_json("/api/v1/adapters/alice/blend/versions/1", "bob")
        .await;
    assert_eq!(v["lineage"]["parents"][1]["adapter"], "alice/open", "{v}");
    let (_, listing) = app.get_json("/api/v1/adapters?q=blend", "").await;
    assert_eq!(
        listing["items"][0]["latest"]["lineage"]["parents"][0],
        json!({"hidden": true}),
        "{listing}"
    );

    // Its owner and admins see the parent in the API (the files are the same for everyone).
    for who in ["alice", "admin"] {
        let (_, v) = app
            .get_json("/api/v1/adapters/alice/blend/versions/1", who)
            .await;
        assert_eq!(v["lineage"]["parents"][0]["adapter"], PRIVATE, "{who}: {v}");
        assert_eq!(
            v["lineage"]["parents"][0]["revision"],
            secret_revision.as_str()
        );
        let (_, a) = app.get_json("/api/v1/adapters/alice/blend", who).await;
        assert_eq!(
            a["latest"]["lineage"]["parents"][0]["adapter"], PRIVATE,
            "{a}"
        );
        // The listing too, though the adapter is kept between pages since the anonymous one.
        let (_, listing) = app.get_json("/api/v1/adapters?q=blend", who).await;
        assert_eq!(
            listing["items"][0]["latest"]["lineage"]["parents"][0]["adapter"], PRIVATE,
            "{who}: {listing}"
        );
    }
    // Made public, the parent shows to everyone; private again, it is hidden again.
    let patch = |private: bool| {
        app.request(
            reqwest::Method::PATCH,
            &format!("/api/v1/adapters/{PRIVATE}"),
            "alice",
        )
        .json(&json!({"private": private}))
    };
    assert_eq!(app.send(patch(false)).await.0, 200);
    let (_, v) = app
        .get_json("/api/v1/adapters/alice/blend/versions/1", "")
        .await;
    assert_eq!(v["lineage"]["parents"][0]["adapter"], PRIVATE, "{v}");
    assert_eq!(app.send(patch(true)).await.0, 200);
    let (_, listing) = app.get_json("/api/v1/adapters?q=blend", "").await;
    assert_eq!(
        listing["items"][0]["latest"]["lineage"]["parents"][0],
        json!({"hidden": true}),
        "{listing}"
    );
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn another_users_private_output_answers_like_a_missing_one(#[case] backend: Backend) {
    let app = app_or_skip!(backend);
    app.adapter_with("alice/open", &synthetic_adapter(4, &MODULES, 2))
        .await;
    assert_eq!(
        app.create_adapter("alice", "hidden", true, "alice").await.0,
        201
    );
    assert_eq!(
        app.create_adapter("alice", "shown", false, "alice").await.0,
        201
    );
    let inputs = json!([{"adapter": "alice/open"}]);
    let mut answers = Vec::new();
    for output in ["alice/hidden", "alice/never-made", "alice/shown"] {
        for create in [false, true] {
            let body = json!({"method": "linear", "inputs": inputs,
                              "output": {"adapter": output, "create": create}});
            let (status, e) = app.post_json("/api/v1/merges", "bob", &body).await;
            assert_error(
                status,
                &e,
                (403, "forbidden"),
                &format!("{output} create={create}"),
            );
            answers.push(e);
        }
    }
    // Not only the status: the bodies are the same word for word.
    assert!(answers.windows(2).all(|w| w[0] == w[1]), "{answers:?}");
}
