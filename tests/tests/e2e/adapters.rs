use quiver_tests::{Backend, app_or_skip, synthetic_adapter};
use rstest::rstest;
use serde_json::json;

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn adapter_lifecycle_create_get_patch_delete(#[case] backend: Backend) {
    let app = app_or_skip!(backend);
    let (status, body) = app
        .create_adapter("alice", "Math-Lora", false, "alice")
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["id"], "alice/math-lora");
    assert_eq!(body["latest"], serde_json::Value::Null);
    assert_eq!(body["refs"], json!({}));

    let (status, body) = app
        .create_adapter("alice", "math-lora", false, "alice")
        .await;
    assert_eq!(status, 409, "case-insensitive duplicate: {body}");
    assert_eq!(body["error"]["code"], "conflict");

    let (status, body) = app
        .send(
            app.request(
                reqwest::Method::PATCH,
                "/api/v1/adapters/alice/math-lora",
                "alice",
            )
            .json(&json!({"description": "new", "tags": ["math", "gsm8k"]})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["description"], "new");
    assert_eq!(body["tags"], json!(["math", "gsm8k"]));

    let (status, _) = app.get_json("/api/v1/adapters/ALICE/Math-Lora", "").await;
    assert_eq!(status, 200);

    let (status, _) = app
        .send(app.request(
            reqwest::Method::DELETE,
            "/api/v1/adapters/alice/math-lora",
            "bob",
        ))
        .await;
    assert_eq!(status, 403);
    let (status, _) = app
        .send(app.request(
            reqwest::Method::DELETE,
            "/api/v1/adapters/alice/math-lora",
            "alice",
        ))
        .await;
    assert_eq!(status, 204);
    let (status, body) = app
        .get_json("/api/v1/adapters/alice/math-lora", "alice")
        .await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "adapter_not_found");
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn writes_need_the_right_token(#[case] backend: Backend) {
    let app = app_or_skip!(backend);
    assert_eq!(app.create_adapter("alice", "a", false, "").await.0, 401);
    assert_eq!(
        app.create_adapter("alice", "a", false, "alice_read")
            .await
            .0,
        403
    );
    assert_eq!(app.create_adapter("alice", "a", false, "bob").await.0, 403);
    let (status, body) = app.create_adapter("alice", "a", false, "nobody").await;
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], "invalid_token");
    assert_eq!(
        app.create_adapter("alice", "a", false, "admin").await.0,
        201
    );
    let (status, body) = app.create_adapter("alice", "-bad", false, "alice").await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "invalid_name");
    let (status, _) = app
        .upload("alice/a", "bob", &synthetic_adapter(4, &["q_proj"], 1))
        .await;
    assert_eq!(status, 403);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn listing_pages_searches_and_filters(#[case] backend: Backend) {
    let app = app_or_skip!(backend);
    for i in 0..7 {
        let name = format!("adapter-{i}");
        assert_eq!(
            app.create_adapter("alice", &name, false, "alice").await.0,
            201
        );
    }
    app.send(
        app.request(
            reqwest::Method::PATCH,
            "/api/v1/adapters/alice/adapter-3",
            "alice",
        )
        .json(&json!({"description": "Solves GSM8K word problems", "tags": ["math"]})),
    )
    .await;

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..10 {
        let path = match &cursor {
            Some(c) => format!("/api/v1/adapters?limit=3&sort=name&cursor={c}"),
            None => "/api/v1/adapters?limit=3&sort=name".to_string(),
        };
        let (status, body) = app.get_json(&path, "").await;
        assert_eq!(status, 200, "{body}");
        for item in body["items"].as_array().expect("items") {
            seen.push(item["name"].as_str().expect("name").to_string());
        }
        cursor = body["next_cursor"].as_str().map(str::to_string);
        if cursor.is_none() {
            break;
        }
    }
    let expected: Vec<String> = (0..7).map(|i| format!("adapter-{i}")).collect();
    assert_eq!(seen, expected);

    for sort in ["updated", "created", "downloads"] {
        let (_, body) = app
            .get_json(&format!("/api/v1/adapters?limit=4&sort={sort}"), "")
            .await;
        let c = body["next_cursor"].as_str().expect("cursor").to_string();
        let (_, rest) = app
            .get_json(
                &format!("/api/v1/adapters?limit=4&sort={sort}&cursor={c}"),
                "",
            )
            .await;
        assert_eq!(body["items"].as_array().map(Vec::len), Some(4));
        assert_eq!(rest["items"].as_array().map(Vec::len), Some(3), "{sort}");
    }

    let (_, body) = app.get_json("/api/v1/adapters?q=gsm8k", "").await;
    assert_eq!(body["items"].as_array().map(Vec::len), Some(1));
    assert_eq!(body["items"][0]["id"], "alice/adapter-3");
    let (_, body) = app.get_json("/api/v1/adapters?tag=math", "").await;
    assert_eq!(body["items"][0]["id"], "alice/adapter-3");
    let (_, body) = app.get_json("/api/v1/adapters?q=100%25_", "").await;
    assert_eq!(
        body["items"].as_array().map(Vec::len),
        Some(0),
        "LIKE wildcards are escaped"
    );

    let (status, body) = app.get_json("/api/v1/adapters?limit=501", "").await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "invalid_query");
    let (status, body) = app.get_json("/api/v1/adapters?cursor=zz", "").await;
    assert_eq!(status, 400, "{body}");
    let (status, _) = app.get_json("/api/v1/adapters?sort=sideways", "").await;
    assert_eq!(status, 400);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn versions_refs_and_aliases(#[case] backend: Backend) {
    let app = app_or_skip!(backend);
    app.create_adapter("alice", "a", false, "alice").await;
    let (s1, v1) = app
        .upload(
            "alice/a",
            "alice",
            &synthetic_adapter(4, &["q_proj", "v_proj"], 1),
        )
        .await;
    assert_eq!(s1, 201, "{v1}");
    let (s2, v2) = app
        .upload("alice/a", "alice", &synthetic_adapter(8, &["q_proj"], 2))
        .await;
    assert_eq!(s2, 201, "{v2}");
    assert_eq!(
        (v1["number"].as_i64(), v2["number"].as_i64()),
        (Some(1), Some(2))
    );
    let rev1 = v1["revision"].as_str().expect("rev").to_string();
    assert_eq!(rev1.len(), 40);
    assert_ne!(v1["revision"], v2["revision"]);
    assert_eq!(v1["lora"]["r"], 4);
    assert_eq!(v1["lora"]["target_modules"], json!(["q_proj", "v_proj"]));
    assert_eq!(v2["lora"]["r"], 8);

    for (r, n) in [("1", 1), ("v2", 2), ("main", 2), (rev1.as_str(), 1)] {
        let (status, body) = app
            .get_json(&format!("/api/v1/adapters/alice/a/versions/{r}"), "")
            .await;
        assert_eq!(status, 200, "{r}: {body}");
        assert_eq!(body["number"], n, "{r}");
        // One call resolves a ref to everything a client needs to load it.
        assert_eq!(body["adapter"], "alice/a", "{r}");
        assert_eq!(body["base_model"], "quiver-test/tiny-llama", "{r}");
    }
    assert_eq!(v1["adapter"], "alice/a");
    assert_eq!(v1["base_model"], "quiver-test/tiny-llama");
    let (status, body) = app
        .send(
            app.request(
                reqwest::Method::PUT,
                "/api/v1/adapters/alice/a/refs/prod",
                "alice",
            )
            .json(&json!({"version": 1})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (_, body) = app
        .get_json("/api/v1/adapters/alice/a/versions/prod", "")
        .await;
    assert_eq!(body["number"], 1);
    let (_, adapter) = app.get_json("/api/v1/adapters/alice/a", "").await;
    assert_eq!(adapter["refs"], json!({"main": 2, "prod": 1}));
    assert_eq!(adapter["latest"]["number"], 2);
    assert_eq!(adapter["latest"]["adapter"], "alice/a");

    // Moving the alias, reserved names, missing versions.
    app.send(
        app.request(
            reqwest::Method::PUT,
            "/api/v1/adapters/alice/a/refs/prod",
            "alice",
        )
        .json(&json!({"version": 2})),
    )
    .await;
    let (_, body) = app
        .get_json("/api/v1/adapters/alice/a/versions/prod", "")
        .await;
    assert_eq!(body["number"], 2);
    for bad in ["main", "v3", "12"] {
        let (status, body) = app
            .send(
                app.request(
                    reqwest::Method::PUT,
                    &format!("/api/v1/adapters/alice/a/refs/{bad}"),
                    "alice",
                )
                .json(&json!({"version": 1})),
            )
            .await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
    let (status, _) = app
        .send(
            app.request(
                reqwest::Method::PUT,
                "/api/v1/adapters/alice/a/refs/canary",
                "alice",
            )
            .json(&json!({"version": 9})),
        )
        .await;
    assert_eq!(status, 404);
    let (status, _) = app
        .send(app.request(
            reqwest::Method::DELETE,
            "/api/v1/adapters/alice/a/refs/prod",
            "alice",
        ))
        .await;
    assert_eq!(status, 204);
    let (status, _) = app
        .get_json("/api/v1/adapters/alice/a/versions/prod", "")
        .await;
    assert_eq!(status, 404);

    let (status, body) = app
        .get_json("/api/v1/adapters/alice/a/versions?limit=1", "")
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["items"][0]["number"], 2);
    assert_eq!(body["items"][0]["adapter"], "alice/a");
    assert_eq!(body["items"][0]["base_model"], "quiver-test/tiny-llama");
    let c = body["next_cursor"].as_str().expect("cursor");
    let (_, body) = app
        .get_json(
            &format!("/api/v1/adapters/alice/a/versions?limit=1&cursor={c}"),
            "",
        )
        .await;
    assert_eq!(body["items"][0]["number"], 1);
    assert_eq!(body["next_cursor"], serde_json::Value::Null);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn concurrent_uploads_get_distinct_numbers(#[case] backend: Backend) {
    let app = app_or_skip!(backend);
    app.create_adapter("alice", "busy", false, "alice").await;
    let uploads = (0..8u32).map(|i| {
        let files = synthetic_adapter(4, &["q_proj"], 100 + i);
        let app = &app;
        async move { app.upload("alice/busy", "alice", &files).await }
    });
    let results = futures::future::join_all(uploads).await;
    let mut numbers: Vec<i64> = results
        .iter()
        .map(|(s, b)| {
            assert_eq!(*s, 201, "{b}");
            b["number"].as_i64().expect("number")
        })
        .collect();
    numbers.sort();
    assert_eq!(numbers, (1..=8).collect::<Vec<_>>());
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn concurrent_writes_all_succeed(#[case] backend: Backend) {
    // Writers queue for the database's write lock instead of failing with "database is locked".
    let app = app_or_skip!(backend);
    let creates = (0..32).map(|i| {
        let app = &app;
        async move {
            app.create_adapter("alice", &format!("c{i}"), false, "alice")
                .await
        }
    });
    for (status, body) in futures::future::join_all(creates).await {
        assert_eq!(status, 201, "{body}");
    }
    let patches = (0..32).map(|i| {
        let app = &app;
        async move {
            app.send(
                app.request(
                    reqwest::Method::PATCH,
                    &format!("/api/v1/adapters/alice/c{i}"),
                    "alice",
                )
                .json(&json!({"description": format!("patched {i}"), "tags": ["a", "b"]})),
            )
            .await
        }
    });
    for (status, body) in futures::future::join_all(patches).await {
        assert_eq!(status, 200, "{body}");
    }
    let (_, page) = app
        .get_json("/api/v1/adapters?limit=100&q=patched", "")
        .await;
    assert_eq!(page["items"].as_array().map(Vec::len), Some(32));
}
