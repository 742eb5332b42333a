//! Every way of publishing checks, inside its commit, that the blobs its version refers to are
//! stored: a blob the sweep removed between the publisher's own checks and the commit is stored
//! again from the publisher's copy (REST upload), or, where it holds none (a Hub commit's LFS
//! object), the commit fails with an error the client sees and nothing becomes visible.
//! (`quiver_store::held::hook` deletes the blob at the moment a sweep could.)

use futures::FutureExt;
use quiver_store::held::hook;
use quiver_tests::{Backend, TestApp, app_or_skip, assert_error, sha256_hex, synthetic_adapter};
use rstest::rstest;
use serde_json::{Value, json};

/// Deletes the blob of `sha256` at the next publish's blob check, as a sweep would.
fn sweep_before_check(app: &TestApp, sha256: &str) {
    let (blobs, sha) = (app.store.blobs.clone(), sha256.to_string());
    hook::before_next_check(&app.store.blobs, move || {
        let (blobs, sha) = (blobs.clone(), sha.clone());
        async move { blobs.delete(&sha).await.expect("delete blob") }.boxed()
    });
}

/// Uploads `bytes` through the Hub's LFS batch API and signed link, for `repo`.
async fn lfs_upload(app: &TestApp, repo: &str, bytes: &[u8]) -> String {
    let oid = sha256_hex(bytes);
    let batch = json!({"operation": "upload", "transfers": ["basic"],
                       "objects": [{"oid": oid, "size": bytes.len()}]});
    let (status, body) = app
        .send(
            app.request(
                reqwest::Method::POST,
                &format!("/{repo}.git/info/lfs/objects/batch"),
                "alice",
            )
            .header("content-type", "application/vnd.git-lfs+json")
            .body(batch.to_string()),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let href = body["objects"][0]["actions"]["upload"]["href"]
        .as_str()
        .unwrap_or_else(|| panic!("no upload link: {body}"));
    let res = app
        .client
        .put(href)
        .body(bytes.to_vec())
        .send()
        .await
        .expect("lfs put");
    assert!(res.status().is_success(), "{}", res.status());
    oid
}

async fn commit(app: &TestApp, repo: &str, lines: &[Value]) -> (u16, Value) {
    let body: String = lines.iter().map(|l| format!("{l}\n")).collect();
    app.send(
        app.request(
            reqwest::Method::POST,
            &format!("/api/models/{repo}/commit/main"),
            "alice",
        )
        .header("content-type", "application/x-ndjson")
        .body(body),
    )
    .await
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn a_hub_commit_whose_lfs_object_is_swept_fails_and_publishes_nothing(
    #[case] backend: Backend,
) {
    let app = app_or_skip!(backend);
    assert_eq!(
        app.create_adapter("alice", "hubbed", false, "alice")
            .await
            .0,
        201
    );
    let files = synthetic_adapter(4, &["q_proj", "v_proj"], 1);
    let file = |suffix: &str| {
        files
            .iter()
            .find(|(p, _)| p.ends_with(suffix))
            .map(|(_, b)| b.clone())
            .expect("file")
    };
    let (config, weights) = (file(".json"), file(".safetensors"));
    let config_oid = lfs_upload(&app, "alice/hubbed", &config).await;
    let oid = lfs_upload(&app, "alice/hubbed", &weights).await;
    let lines = vec![
        json!({"key": "header", "value": {"summary": "first"}}),
        json!({"key": "lfsFile", "value": {"path": "adapter_config.json", "algo": "sha256",
               "oid": config_oid, "size": config.len()}}),
        json!({"key": "lfsFile", "value": {"path": "adapter_model.safetensors", "algo": "sha256",
               "oid": oid, "size": weights.len()}}),
    ];
    let (_, versions_before, _) = app.store.meta.row_counts().await.expect("counts");
    // The object passes the commit's ownership check, then a sweep removes it before the commit.
    sweep_before_check(&app, &oid);
    let (status, body) = commit(&app, "alice/hubbed", &lines).await;
    assert_error(
        status,
        &body,
        (422, "missing_file"),
        "commit of a swept LFS object",
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains(&oid)),
        "{body}"
    );
    // Nothing is visible: no version row, no main, no latest.
    let (_, versions_after, _) = app.store.meta.row_counts().await.expect("counts");
    assert_eq!(versions_after, versions_before);
    let (status, _) = app
        .get_json("/api/v1/adapters/alice/hubbed/versions/main", "alice")
        .await;
    assert_eq!(status, 404);
    let (_, a) = app.get_json("/api/v1/adapters/alice/hubbed", "alice").await;
    assert_eq!(a["latest"], Value::Null, "{a}");
    // Uploaded again, the same commit publishes, and the version's bytes are whole.
    lfs_upload(&app, "alice/hubbed", &weights).await;
    let (status, body) = commit(&app, "alice/hubbed", &lines).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        app.download("alice/hubbed", "main", "adapter_model.safetensors", "alice")
            .await
            == weights
    );
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn an_upload_whose_blob_is_swept_before_its_commit_stores_it_again(#[case] backend: Backend) {
    let app = app_or_skip!(backend);
    let files = synthetic_adapter(4, &["q_proj"], 3);
    let weights = files
        .iter()
        .find(|(p, _)| p.ends_with(".safetensors"))
        .map(|(_, b)| b.clone())
        .expect("weights");
    assert_eq!(
        app.create_adapter("alice", "kept", false, "alice").await.0,
        201
    );
    sweep_before_check(&app, &sha256_hex(&weights));
    let (status, body) = app.upload("alice/kept", "alice", &files).await;
    assert_eq!(status, 201, "{body}");
    // The check found it gone and stored it again from the staged copy: every byte is there.
    assert!(
        app.download("alice/kept", "1", "adapter_model.safetensors", "")
            .await
            == weights
    );
    assert_eq!(app.store.blobs.count_staged().await.expect("staged"), 0);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn lfs_upload_proofs_are_deleted_with_their_adapter(#[case] backend: Backend) {
    let app = app_or_skip!(backend);
    let bytes = b"an LFS object uploaded for two adapters".to_vec();
    let mut proofs = Vec::new();
    for name in ["gone", "stays"] {
        assert_eq!(
            app.create_adapter("alice", name, false, "alice").await.0,
            201
        );
        let oid = lfs_upload(&app, &format!("alice/{name}"), &bytes).await;
        let repo = quiver_store::RepoId::parse("alice", name).expect("repo");
        let id = app
            .store
            .meta
            .get_adapter(&repo)
            .await
            .expect("get")
            .expect("adapter")
            .id;
        proofs.push(format!("lfs-proof/{id}/{oid}"));
    }
    let proof = |key: String| {
        let blobs = app.store.blobs.clone();
        async move { blobs.get_derived(&key).await.expect("get proof").is_some() }
    };
    assert!(proof(proofs[0].clone()).await && proof(proofs[1].clone()).await);
    // The Hub's delete_repo: that adapter's proofs go, the other's stay.
    let (status, body) = app
        .send(
            app.request(reqwest::Method::DELETE, "/api/repos/delete", "alice")
                .json(&json!({"name": "gone", "type": "model"})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(
        !proof(proofs[0].clone()).await,
        "proof outlived its adapter"
    );
    assert!(proof(proofs[1].clone()).await);
    // The REST delete too.
    let (status, _) = app
        .send(app.request(
            reqwest::Method::DELETE,
            "/api/v1/adapters/alice/stays",
            "alice",
        ))
        .await;
    assert_eq!(status, 204);
    assert!(
        !proof(proofs[1].clone()).await,
        "proof outlived its adapter"
    );
}
