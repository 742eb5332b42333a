use quiver_tests::{Backend, app_or_skip, synthetic_adapter};
use reqwest::Method;
use rstest::rstest;

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn health_metrics_openapi_and_docs(#[case] backend: Backend) {
    let app = app_or_skip!(backend);
    let (status, body) = app.get_json("/healthz", "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        serde_json::json!({"status": "ok", "database": "ok", "store": "ok", "degraded": []})
    );

    app.create_adapter("alice", "a", false, "alice").await;
    app.upload("alice/a", "alice", &synthetic_adapter(4, &["q_proj"], 1))
        .await;
    let metrics = app.metrics_text().await;
    assert!(metrics.contains("quiver_http_requests_total{method=\"POST\",route=\"/api/v1/adapters/{owner}/{name}/versions\",status=\"2xx\"} 1"), "{metrics}");
    assert!(metrics.contains("quiver_http_request_duration_seconds_bucket"));
    let received: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("quiver_bytes_received_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("quiver_bytes_received_total missing: {metrics}"));
    assert!(received > 0.0, "an upload was received: {metrics}");

    let (status, spec) = app.get_json("/api/openapi.json", "").await;
    assert_eq!(status, 200);
    assert!(
        spec["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1")),
        "{}",
        spec["openapi"]
    );
    for path in [
        "/api/v1/adapters",
        "/api/v1/adapters/{owner}/{name}/versions",
        "/api/v1/adapters/{owner}/{name}/versions/{ref}/files/{path}",
        "/api/v1/adapters/{owner}/{name}/versions/{ref}/lineage",
        "/api/v1/merges",
        "/api/v1/compressions",
        "/api/v1/jobs",
        "/api/v1/jobs/{id}",
        "/api/v1/jobs/{id}/cancel",
        "/healthz",
    ] {
        assert!(
            spec["paths"].get(path).is_some(),
            "{path} missing from OpenAPI"
        );
    }
    for schema in [
        "MergeRequest",
        "CompressionRequest",
        "JobView",
        "LineageView",
    ] {
        assert!(
            spec["components"]["schemas"].get(schema).is_some(),
            "{schema} missing from OpenAPI"
        );
    }
    assert!(
        spec["components"]["schemas"]["MergeRequest"]["properties"]
            .get("idempotency_key")
            .is_some()
    );

    let res = app
        .request(Method::GET, "/docs/", "")
        .send()
        .await
        .expect("docs");
    assert_eq!(res.status(), 200);
    let html = res.text().await.expect("html");
    assert!(html.contains("swagger-ui"), "docs page");
    assert!(
        !html.contains("https://"),
        "docs must load nothing from the internet"
    );
    let res = app
        .request(Method::GET, "/docs/swagger-ui-bundle.js", "")
        .send()
        .await
        .expect("js");
    assert_eq!(res.status(), 200, "vendored assets are served");
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn every_error_is_the_json_envelope(#[case] backend: Backend) {
    let app = app_or_skip!(backend);
    // Outside /api/ unknown paths are the web pages' (HTML errors: tests/e2e/pages.rs).
    let cases = [
        (
            app.request(Method::GET, "/api/nope", ""),
            404,
            "route_not_found",
        ),
        (
            app.request(Method::PUT, "/api/v1/adapters", "alice"),
            405,
            "method_not_allowed",
        ),
        (
            app.request(Method::POST, "/api/v1/adapters/alice/x/versions/1", "alice"),
            405,
            "method_not_allowed",
        ),
        (
            app.request(Method::GET, "/api/v1/adapters/alice", ""),
            404,
            "route_not_found",
        ),
        // The Hub's routes and the docs know their methods too.
        (
            app.request(Method::POST, "/api/models/alice/x", "alice"),
            405,
            "method_not_allowed",
        ),
        (
            app.request(Method::DELETE, "/alice/x/resolve/main/a.json", "alice"),
            405,
            "method_not_allowed",
        ),
        (
            app.request(Method::PUT, "/docs/", "alice"),
            405,
            "method_not_allowed",
        ),
        (
            app.request(Method::POST, "/api/v1/adapters", "alice")
                .header("content-type", "application/json")
                .body("{oops"),
            400,
            "invalid_json",
        ),
        (
            app.request(Method::POST, "/api/v1/adapters", "alice")
                .header("content-type", "text/plain")
                .body("{}"),
            415,
            "unsupported_media_type",
        ),
        (
            app.request(Method::POST, "/api/v1/adapters", "alice")
                .json(&serde_json::json!({"owner": "alice"})),
            400,
            "invalid_json",
        ),
        (
            app.request(Method::GET, "/api/v1/adapters?limit=abc", ""),
            400,
            "invalid_query",
        ),
        (
            app.request(Method::GET, "/api/v1/adapters/alice/none", ""),
            404,
            "adapter_not_found",
        ),
        (
            app.request(Method::GET, "/api/v1/adapters", "")
                .header("authorization", "Basic abc"),
            401,
            "invalid_token",
        ),
    ];
    for (rb, status, code) in cases {
        let res = rb.send().await.expect("send");
        let got = res.status().as_u16();
        let ct = res
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let body: serde_json::Value = res.json().await.unwrap_or_default();
        quiver_tests::assert_error(got, &body, (status, code), &ct);
    }
    let res = app
        .request(Method::DELETE, "/api/v1/adapters", "alice")
        .send()
        .await
        .expect("send");
    assert_eq!(res.status(), 405);
    assert_eq!(res.headers()["allow"], "GET, HEAD, POST");
}
