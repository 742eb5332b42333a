//! LoRAX's `pbase` source against Quiver (api/src/http/lorax, docs/serving.md): the lookups and
//! the per-revision export prefixes, each field checked against what LoRAX reads. Citations are to
//! predibase/lorax at a7394ba386ece427d5a6125b419aa38b46d966dc:
//! - `server/lorax_server/utils/sources/__init__.py` (`map_pbase_model_id_to_s3`, lines 41-96);
//! - `server/lorax_server/utils/sources/s3.py` (`_get_bucket_and_model_id`, lines 26-55; the
//!   prefix listing and downloads, lines 87-143 and 183-203).
//!
//! On Postgres + S3 the exports are read back through the S3 API and compared with the version's
//! files; on SQLite + files the lookups answer 501 (LoRAX reads S3 only), with the same privacy.

use std::collections::BTreeMap;

use futures::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use quiver_tests::{Backend, TestApp, app_or_skip, sha256_hex, synthetic_adapter};
use reqwest::Method;
use rstest::rstest;
use serde_json::{Value, json};

/// LoRAX's known statuses and the final ones (__init__.py:29-38): a status outside
/// `FINAL_STATUSES` other than `training` makes LoRAX refuse the adapter (lines 82-87).
const FINAL_STATUSES: [&str; 4] = ["completed", "errored", "canceled", "stopped"];

/// GET `path` with `Authorization: Bearer <token>` (LoRAX always sends one: __init__.py:45).
async fn lookup(app: &TestApp, path: &str, who: &str) -> (u16, Value) {
    app.get_json(path, who).await
}

/// `s3://bucket/key` → (bucket, key), as LoRAX splits it (s3.py:27-34).
fn split_s3(url: &str) -> (String, String) {
    let rest = url
        .strip_prefix("s3://")
        .expect("adapterPath is an s3:// URL");
    let (bucket, key) = rest.split_once('/').expect("s3://bucket/key");
    (bucket.to_string(), key.to_string())
}

/// A client of the S3 server the store uses (the test environment's), for `bucket`.
fn s3_client(bucket: &str) -> impl ObjectStore {
    let endpoint = std::env::var("AWS_ENDPOINT_URL").expect("AWS_ENDPOINT_URL");
    AmazonS3Builder::from_env()
        .with_bucket_name(bucket)
        .with_endpoint(&endpoint)
        .with_allow_http(endpoint.starts_with("http://"))
        .with_virtual_hosted_style_request(false)
        .build()
        .expect("s3 client")
}

/// The objects LoRAX would download for `key`: every key starting with it, no `/` added
/// (`bucket.objects.filter(Prefix=model_id)`, s3.py:89 and 184), named as LoRAX names the local
/// files (`key.removeprefix(model_id).lstrip("/")`, s3.py:90 and 191), with their sha256.
async fn read_prefix(bucket: &str, key: &str) -> BTreeMap<String, String> {
    let s3 = s3_client(bucket);
    // object_store lists whole path segments; LoRAX's prefix is a string prefix. List the parent
    // and keep the keys that start with the prefix as a string.
    let parent = key.rsplit_once('/').map_or("", |(p, _)| p);
    let items: Vec<_> = s3
        .list(Some(&Path::from(parent)))
        .try_collect()
        .await
        .expect("list");
    let mut out = BTreeMap::new();
    for item in items {
        let full = item.location.to_string();
        let Some(rest) = full.strip_prefix(key) else {
            continue;
        };
        let name = rest.trim_start_matches('/').to_string();
        let bytes = s3
            .get(&item.location)
            .await
            .expect("get")
            .bytes()
            .await
            .expect("bytes");
        out.insert(name, sha256_hex(&bytes));
    }
    out
}

/// The `{adapter_config.json, adapter_model.safetensors}` sha256 of a version resource.
fn export_files(version: &Value) -> BTreeMap<String, String> {
    version["files"]
        .as_array()
        .expect("files")
        .iter()
        .filter(|f| f["path"] == "adapter_config.json" || f["path"] == "adapter_model.safetensors")
        .map(|f| {
            (
                f["path"].as_str().expect("path").to_string(),
                f["sha256"].as_str().expect("sha").to_string(),
            )
        })
        .collect()
}

async fn set_alias(app: &TestApp, repo: &str, alias: &str, version: i64) {
    let (status, body) = app
        .send(
            app.request(
                Method::PUT,
                &format!("/api/v1/adapters/{repo}/refs/{alias}"),
                "alice",
            )
            .json(&json!({ "version": version })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn pbase_lookups_point_at_immutable_exports(#[case] backend: Backend) {
    let app = app_or_skip!(backend);
    app.create_adapter("alice", "chat", false, "alice").await;
    let files1 = synthetic_adapter(4, &["q_proj", "v_proj"], 1);
    let (s1, v1) = app.upload("alice/chat", "alice", &files1).await;
    assert_eq!(s1, 201, "{v1}");
    let (s2, v2) = app
        .upload("alice/chat", "alice", &synthetic_adapter(8, &["q_proj"], 2))
        .await;
    assert_eq!(s2, 201, "{v2}");
    let rev1 = v1["revision"].as_str().expect("rev").to_string();
    let rev2 = v2["revision"].as_str().expect("rev").to_string();
    set_alias(&app, "alice/chat", "prod", 1).await;

    // Postgres runs on S3, SQLite on local files (quiver_store::testing).
    assert_eq!(
        app.store.blobs.is_local(),
        matches!(backend, Backend::Sqlite)
    );
    if app.store.blobs.is_local() {
        // LoRAX turns any adapterPath into an S3 read (its s3 source: a path without s3:// is a
        // key of PREDIBASE_MODEL_BUCKET or of the bucket named by its first part, s3.py:36-55),
        // so a file:// store refuses clearly instead of answering a path LoRAX cannot read.
        for path in [
            "/v2/repos/alice--chat/version/1".to_string(),
            "/v1/models/version/name/alice--chat".to_string(),
        ] {
            let (status, body) = lookup(&app, &path, "alice").await;
            assert_eq!(status, 501, "{path}: {body}");
            assert_eq!(body["error"]["code"], "not_implemented", "{body}");
            assert!(
                body["error"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("s3://")),
                "{body}"
            );
        }
        let (status, body) = lookup(&app, "/v2/repos/alice--chat/version/9", "alice").await;
        assert_eq!(status, 404, "{body}");
        return;
    }
    let bucket = std::env::var("QUIVER_TEST_S3_BUCKET").expect("bucket");

    // v2 lookup (__init__.py:25, 55-56: `/v2/repos/{name}/version/{version}` from the id
    // `name/version`; the id is split on "/", so the repo is `owner--name`).
    let (status, body) = lookup(&app, "/v2/repos/alice--chat/version/1", "alice").await;
    assert_eq!(status, 200, "{body}");
    // `status` (__init__.py:78): `completed` is known and final, so LoRAX goes on (79-87).
    assert_eq!(body["status"], "completed");
    assert!(FINAL_STATUSES.contains(&body["status"].as_str().expect("status")));
    // `adapterPath` (__init__.py:89-93): returned as the id LoRAX's s3 source reads
    // (adapters/utils.py:14-17: source becomes s3), an s3:// URL (s3.py:27-34).
    let path1 = body["adapterPath"]
        .as_str()
        .expect("adapterPath")
        .to_string();
    let (b, key1) = split_s3(&path1);
    assert_eq!(b, bucket);
    assert!(key1.ends_with(&format!("/exports/{rev1}")), "{key1}");
    // S3ModelSource refuses ids shorter than 5 characters (s3.py:208-209).
    assert!(key1.len() >= 5);
    assert_eq!(body["revision"], rev1.as_str());
    assert_eq!(body["adapter"], "alice/chat");

    // The prefix holds exactly the version's two files, byte for byte (sha256 through the S3
    // API), under the names LoRAX's s3 source expects: `adapter_config.json` (load_config) and
    // `*.safetensors` weights (s3.py:87-96).
    let want1 = export_files(&v1);
    assert_eq!(want1.len(), 2);
    assert_eq!(read_prefix(&bucket, &key1).await, want1);
    for (path, bytes) in &files1 {
        if let Some(sha) = want1.get(path) {
            assert_eq!(&sha256_hex(bytes), sha, "{path} exported as uploaded");
        }
    }

    // Every ref of version 1 gives the same immutable prefix; both repo spellings work.
    for r in ["v1", "prod", rev1.as_str()] {
        for repo in ["alice--chat", "alice%2Fchat"] {
            let (status, body) =
                lookup(&app, &format!("/v2/repos/{repo}/version/{r}"), "alice").await;
            assert_eq!(status, 200, "{repo}/{r}: {body}");
            assert_eq!(body["adapterPath"], path1.as_str(), "{repo}/{r}");
        }
    }
    // `main` is version 2: another prefix.
    let (_, body) = lookup(&app, "/v2/repos/alice--chat/version/main", "alice").await;
    let path2 = body["adapterPath"]
        .as_str()
        .expect("adapterPath")
        .to_string();
    assert_ne!(path2, path1);
    let (_, key2) = split_s3(&path2);
    assert!(key2.ends_with(&format!("/exports/{rev2}")));
    assert_eq!(read_prefix(&bucket, &key2).await, export_files(&v2));

    // Moving the alias gives the new version's prefix; the old prefix is unchanged (LoRAX caches
    // by path with no revision, s3.py:81-84 and 107-112, so a path must never change content).
    set_alias(&app, "alice/chat", "prod", 2).await;
    let (_, body) = lookup(&app, "/v2/repos/alice--chat/version/prod", "alice").await;
    assert_eq!(body["adapterPath"], path2.as_str());
    assert_eq!(read_prefix(&bucket, &key1).await, want1);

    // The blob sweeps never touch exports (they list `sha256/` and `uploads/` only): after a
    // sweep with no grace period and one of staged uploads, both exports are whole.
    app.store
        .sweep_unreferenced_blobs(std::time::Duration::ZERO)
        .await
        .expect("sweep");
    app.store
        .blobs
        .sweep_staged(std::time::Duration::ZERO)
        .await
        .expect("sweep staged");
    assert_eq!(read_prefix(&bucket, &key1).await, want1);
    assert_eq!(read_prefix(&bucket, &key2).await, export_files(&v2));

    // Unknown versions and malformed repos are 404.
    for path in [
        "/v2/repos/alice--chat/version/9",
        "/v2/repos/alice--chat/version/nope",
        "/v2/repos/alice--nope/version/1",
        "/v2/repos/alice/version/1",
    ] {
        let (status, body) = lookup(&app, path, "alice").await;
        assert_eq!(status, 404, "{path}: {body}");
    }

    // Concurrent first lookups of a new revision: one complete export, the same answer.
    app.create_adapter("alice", "burst", false, "alice").await;
    let (s, v) = app
        .upload(
            "alice/burst",
            "alice",
            &synthetic_adapter(4, &["k_proj"], 7),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let answers = futures::future::join_all(
        (0..8).map(|_| lookup(&app, "/v2/repos/alice--burst/version/1", "alice")),
    )
    .await;
    let first = answers[0].1["adapterPath"].clone();
    for (status, body) in &answers {
        assert_eq!(*status, 200, "{body}");
        assert_eq!(body["adapterPath"], first);
    }
    let (_, key) = split_s3(first.as_str().expect("path"));
    assert_eq!(read_prefix(&bucket, &key).await, export_files(&v));

    // Legacy lookup (__init__.py:23-24, 51-53, 57, 61-65): `uuid` and `bestRunID` make the key
    // `{uuid}/{bestRunID}/artifacts/model/model_weights/`; without PREDIBASE_MODEL_BUCKET its
    // first part is the bucket (s3.py:38-48).
    for (query, version) in [("", &v2), ("?version=1", &v1), ("?version=prod", &v2)] {
        let (status, body) = lookup(
            &app,
            &format!("/v1/models/version/name/alice--chat{query}"),
            "alice",
        )
        .await;
        assert_eq!(status, 200, "{query}: {body}");
        let id = format!(
            "{}/{}/artifacts/model/model_weights/",
            body["uuid"].as_str().expect("uuid"),
            body["bestRunID"].as_str().expect("bestRunID")
        );
        let (b, key) = id.split_once('/').expect("bucket/key");
        assert_eq!(b, bucket);
        assert!(key.contains(version["revision"].as_str().expect("rev")));
        assert_eq!(
            read_prefix(&bucket, key).await,
            export_files(version),
            "{query}"
        );
    }
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn pbase_lookups_keep_private_adapters_private(#[case] backend: Backend) {
    let app = app_or_skip!(backend);
    app.create_adapter("alice", "secret", true, "alice").await;
    let (s, v) = app
        .upload(
            "alice/secret",
            "alice",
            &synthetic_adapter(4, &["q_proj"], 3),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let ok = if app.store.blobs.is_local() { 501 } else { 200 };
    for path in [
        "/v2/repos/alice--secret/version/1",
        "/v2/repos/alice%2Fsecret/version/main",
        "/v1/models/version/name/alice--secret",
    ] {
        // The owner (write and read tokens) sees it.
        for who in ["alice", "alice_read"] {
            let (status, body) = lookup(&app, path, who).await;
            assert_eq!(status, ok, "{who} {path}: {body}");
        }
        // Anonymous, an empty bearer (what LoRAX sends without a token) and bob: exactly as
        // missing.
        let (missing_status, missing) =
            lookup(&app, &path.replace("secret", "missing"), "alice").await;
        assert_eq!(missing_status, 404);
        for who in ["", "bob"] {
            let (status, body) = lookup(&app, path, who).await;
            assert_eq!(status, 404, "{who:?} {path}: {body}");
            assert_eq!(body["error"]["code"], missing["error"]["code"], "{body}");
        }
        let (status, body) = app
            .send(
                app.client
                    .get(app.url(path))
                    .header("Authorization", "Bearer "),
            )
            .await;
        assert_eq!(status, 404, "empty bearer {path}: {body}");
        // A token this server did not issue is refused, as on the rest of the API.
        let (status, _) = app
            .send(app.client.get(app.url(path)).bearer_auth("qvt_not_a_token"))
            .await;
        assert_eq!(status, 401, "{path}");
    }
    // A public adapter answers an empty bearer like anonymous.
    app.create_adapter("alice", "open", false, "alice").await;
    app.upload("alice/open", "alice", &synthetic_adapter(4, &["q_proj"], 4))
        .await;
    let (status, body) = app
        .send(
            app.client
                .get(app.url("/v2/repos/alice--open/version/1"))
                .header("Authorization", "Bearer "),
        )
        .await;
    assert_eq!(status, ok, "{body}");
}
