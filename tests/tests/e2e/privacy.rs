//! Private adapters are 404 to everyone but their owner and admins, on every read route.

use quiver_tests::{Backend, app_or_skip, synthetic_adapter};
use reqwest::Method;
use rstest::rstest;
use serde_json::json;

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn private_adapters_are_invisible_to_others_everywhere(#[case] backend: Backend) {
    let app = app_or_skip!(backend);
    assert_eq!(
        app.create_adapter("alice", "secret", true, "alice").await.0,
        201
    );
    assert_eq!(
        app.create_adapter("alice", "open", false, "alice").await.0,
        201
    );
    let (status, _) = app
        .upload(
            "alice/secret",
            "alice",
            &synthetic_adapter(4, &["q_proj"], 1),
        )
        .await;
    assert_eq!(status, 201);
    app.send(
        app.request(
            Method::PUT,
            "/api/v1/adapters/alice/secret/refs/prod",
            "alice",
        )
        .json(&json!({"version": 1})),
    )
    .await;

    let reads = [
        "/api/v1/adapters/alice/secret",
        "/api/v1/adapters/alice/secret/versions",
        "/api/v1/adapters/alice/secret/versions/1",
        "/api/v1/adapters/alice/secret/versions/main",
        "/api/v1/adapters/alice/secret/versions/prod",
        "/api/v1/adapters/alice/secret/versions/1/files/adapter_config.json",
        "/api/v1/adapters/alice/secret/versions/main/files/adapter_model.safetensors",
    ];
    for who in ["", "bob"] {
        for path in reads {
            for method in [Method::GET, Method::HEAD] {
                let res = app
                    .request(method.clone(), path, who)
                    .send()
                    .await
                    .expect("req");
                assert_eq!(res.status(), 404, "{method} {path} as {who:?}");
            }
        }
        for q in [
            "",
            "?q=secret",
            "?owner=alice",
            "?tag=test",
            "?sort=name",
            "?base_model=quiver-test/tiny-llama",
        ] {
            let (_, body) = app.get_json(&format!("/api/v1/adapters{q}"), who).await;
            let ids: Vec<&str> = body["items"]
                .as_array()
                .expect("items")
                .iter()
                .filter_map(|i| i["id"].as_str())
                .collect();
            let expected: Vec<&str> = if q == "?q=secret" {
                vec![]
            } else {
                vec!["alice/open"]
            };
            assert_eq!(ids, expected, "listing {q} as {who:?}");
        }
        // Writes to it are 404 too (not 403), so its existence does not leak.
        let writes = [
            app.request(Method::PATCH, "/api/v1/adapters/alice/secret", who)
                .json(&json!({"description": "x"})),
            app.request(Method::DELETE, "/api/v1/adapters/alice/secret", who),
            app.request(Method::PUT, "/api/v1/adapters/alice/secret/refs/x", who)
                .json(&json!({"version": 1})),
            app.request(
                Method::DELETE,
                "/api/v1/adapters/alice/secret/refs/prod",
                who,
            ),
        ];
        for rb in writes {
            let (status, _) = app.send(rb).await;
            assert_eq!(status, 404, "write as {who:?}");
        }
        let (status, _) = app
            .upload("alice/secret", who, &synthetic_adapter(4, &["q_proj"], 2))
            .await;
        assert_eq!(status, 404);
    }
    for who in ["alice", "alice_read", "admin"] {
        for path in reads {
            let res = app
                .request(Method::GET, path, who)
                .send()
                .await
                .expect("req");
            assert_eq!(res.status(), 200, "{path} as {who}");
        }
        let (_, body) = app.get_json("/api/v1/adapters?q=secret", who).await;
        assert_eq!(body["items"].as_array().map(Vec::len), Some(1), "{who}");
    }
    // Making it public shows it; private again hides it.
    app.send(
        app.request(Method::PATCH, "/api/v1/adapters/alice/secret", "alice")
            .json(&json!({"private": false})),
    )
    .await;
    assert_eq!(
        app.get_json("/api/v1/adapters/alice/secret", "bob").await.0,
        200
    );
    app.send(
        app.request(Method::PATCH, "/api/v1/adapters/alice/secret", "alice")
            .json(&json!({"private": true})),
    )
    .await;
    assert_eq!(
        app.get_json("/api/v1/adapters/alice/secret", "bob").await.0,
        404
    );
}
