//! Protected aliases (docs/protected-aliases.md): only admins of the namespace protect,
//! unprotect, create, move or delete a protected alias, on every surface that moves one (REST
//! `PUT`/`DELETE …/refs/{alias}`, the Hub's `create_tag`); a refusal is 403 `alias_protected`
//! naming the rule, leaves the alias where it was and writes no audit entry; protection
//! survives the alias's deletion; the listing, the adapter and its page show it.

use quiver_tests::{Backend, TestApp, app_or_skip, assert_error, synthetic_adapter};
use reqwest::Method;
use rstest::rstest;
use serde_json::{Value, json};

const RULE: &str =
    "alias prod of alice/x is protected: only admins of the namespace alice may move or delete it";

async fn put_ref(app: &TestApp, alias: &str, version: i64, who: &str) -> (u16, Value) {
    app.send(
        app.request(
            Method::PUT,
            &format!("/api/v1/adapters/alice/x/refs/{alias}"),
            who,
        )
        .json(&json!({ "version": version })),
    )
    .await
}

async fn delete_ref(app: &TestApp, alias: &str, who: &str) -> (u16, Value) {
    app.send(app.request(
        Method::DELETE,
        &format!("/api/v1/adapters/alice/x/refs/{alias}"),
        who,
    ))
    .await
}

async fn protection(app: &TestApp, method: Method, alias: &str, who: &str) -> (u16, Value) {
    app.send(app.request(
        method,
        &format!("/api/v1/adapters/alice/x/refs/{alias}/protection"),
        who,
    ))
    .await
}

async fn hub_tag(app: &TestApp, version: i64, tag: &str, who: &str) -> (u16, Value) {
    app.post_json(
        &format!("/api/models/alice/x/tag/{version}"),
        who,
        &json!({ "tag": tag }),
    )
    .await
}

/// The version `alias` names now, from the refs listing (None: no alias of that name).
async fn target(app: &TestApp, alias: &str) -> Option<i64> {
    let (status, list) = app.get_json("/api/v1/adapters/alice/x/refs", "").await;
    assert_eq!(status, 200, "{list}");
    list["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|r| r["name"] == alias)
        .and_then(|r| r["version"].as_i64())
}

/// Makes a token through the API as `who` and files it under `key`; returns its public id.
async fn token(app: &mut TestApp, who: &str, key: &'static str, body: Value) -> String {
    let (status, made) = app.post_json("/api/v1/tokens", who, &body).await;
    assert_eq!(status, 201, "{made}");
    app.tokens
        .insert(key, made["token"].as_str().expect("secret").to_string());
    made["id"].as_str().expect("id").to_string()
}

/// Audit entries of `alice/x@prod`, newest first.
async fn prod_entries(app: &TestApp) -> Vec<Value> {
    let (status, page) = app
        .get_json("/api/v1/audit?target=alice/x@prod", "admin")
        .await;
    assert_eq!(status, 200, "{page}");
    page["items"].as_array().expect("items").clone()
}

fn assert_protected(status: u16, body: &Value, context: &str) {
    assert_error(status, body, (403, "alias_protected"), context);
    assert_eq!(body["error"]["message"], RULE, "{context}");
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn only_namespace_admins_move_a_protected_alias(#[case] backend: Backend) {
    let mut app = app_or_skip!(backend);
    assert_eq!(
        app.create_adapter("alice", "x", false, "alice").await.0,
        201
    );
    for seed in 1..=3 {
        let (status, body) = app
            .upload("alice/x", "alice", &synthetic_adapter(4, &["q_proj"], seed))
            .await;
        assert_eq!(status, 201, "{body}");
    }
    // Writers of alice/x that do not administer the namespace alice: a write token restricted
    // to the adapter, and an admin token restricted the same way. A write token restricted to
    // the namespace administers it.
    let ci = token(
        &mut app,
        "alice",
        "ci",
        json!({"name": "ci", "scope": "write", "restrict": ["alice/x"]}),
    )
    .await;
    token(
        &mut app,
        "admin",
        "ops",
        json!({"name": "ops", "scope": "admin", "restrict": ["alice/x"]}),
    )
    .await;
    token(
        &mut app,
        "alice",
        "ns",
        json!({"name": "ns", "scope": "write", "restrict": ["alice"]}),
    )
    .await;
    assert_eq!(put_ref(&app, "prod", 1, "ci").await.0, 200, "unprotected");

    // Protecting needs an admin of the namespace.
    for who in ["ci", "ops", "alice_read", "bob"] {
        let (status, body) = protection(&app, Method::PUT, "prod", who).await;
        assert_error(status, &body, (403, "forbidden"), who);
    }
    let (status, body) = protection(&app, Method::PUT, "prod", "").await;
    assert_eq!(status, 401, "{body}");
    let (status, body) = protection(&app, Method::PUT, "prod", "alice").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"name": "prod", "version": 1, "protected": true})
    );
    let (status, body) = protection(&app, Method::PUT, "main", "alice").await;
    assert_error(status, &body, (400, "invalid_alias"), "main is no alias");

    // Every non-admin move is refused with the rule, and leaves prod where it was.
    let (status, body) = put_ref(&app, "prod", 2, "ci").await;
    assert_protected(status, &body, "REST PUT by a restricted write token");
    let (status, body) = put_ref(&app, "prod", 2, "ops").await;
    assert_protected(
        status,
        &body,
        "REST PUT by an admin token restricted to the adapter",
    );
    let (status, body) = delete_ref(&app, "prod", "ci").await;
    assert_protected(status, &body, "REST DELETE");
    let (status, body) = hub_tag(&app, 2, "prod", "ci").await;
    assert_protected(status, &body, "Hub create_tag");
    let (status, body) = put_ref(&app, "prod", 2, "alice_read").await;
    assert_error(
        status,
        &body,
        (403, "forbidden"),
        "a read token writes nothing",
    );
    let (status, body) = put_ref(&app, "prod", 2, "bob").await;
    assert_error(status, &body, (403, "forbidden"), "another user");
    assert_eq!(target(&app, "prod").await, Some(1));
    // Other names stay open to every writer.
    assert_eq!(put_ref(&app, "canary", 2, "ci").await.0, 200);
    assert_eq!(hub_tag(&app, 3, "canary", "ci").await.0, 200);

    // The listing, the adapter and its page show it.
    let (_, list) = app.get_json("/api/v1/adapters/alice/x/refs", "").await;
    assert_eq!(
        list,
        json!({"items": [
            {"name": "canary", "version": 3, "protected": false},
            {"name": "prod", "version": 1, "protected": true},
        ]})
    );
    let (_, adapter) = app.get_json("/api/v1/adapters/alice/x", "").await;
    assert_eq!(adapter["protected_aliases"], json!(["prod"]));
    assert_eq!(adapter["refs"]["prod"], 1);
    let page = app
        .request(Method::GET, "/alice/x", "")
        .send()
        .await
        .expect("page")
        .text()
        .await
        .expect("body");
    assert!(page.contains("prod (protected)"), "the page marks it");

    // Admins of the namespace move it: an instance admin, the owner's own write token, a write
    // token restricted to the namespace; the REST PUT answers `protected`.
    let (status, body) = put_ref(&app, "prod", 2, "admin").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"name": "prod", "version": 2, "protected": true})
    );
    assert_eq!(put_ref(&app, "prod", 3, "alice").await.0, 200);
    assert_eq!(hub_tag(&app, 1, "prod", "ns").await.0, 200);
    assert_eq!(target(&app, "prod").await, Some(1));

    // Deleted by an admin, the name stays protected: nobody else may create it again.
    assert_eq!(delete_ref(&app, "prod", "alice").await.0, 204);
    assert_eq!(target(&app, "prod").await, None);
    let (_, list) = app.get_json("/api/v1/adapters/alice/x/refs", "").await;
    assert_eq!(
        list["items"][1],
        json!({"name": "prod", "version": null, "protected": true})
    );
    let (status, body) = put_ref(&app, "prod", 2, "ci").await;
    assert_protected(status, &body, "recreating a deleted protected alias");
    let (status, body) = hub_tag(&app, 2, "prod", "ci").await;
    assert_protected(status, &body, "recreating it through the Hub");
    let (status, body) = delete_ref(&app, "prod", "ci").await;
    assert_protected(status, &body, "deleting a protected name with no alias");
    assert_eq!(put_ref(&app, "prod", 2, "admin").await.0, 200);

    // Unprotecting needs an admin too; then every writer may move it again.
    let (status, body) = protection(&app, Method::DELETE, "prod", "ci").await;
    assert_error(
        status,
        &body,
        (403, "forbidden"),
        "unprotect by a non-admin",
    );
    assert_eq!(
        protection(&app, Method::DELETE, "prod", "alice").await.0,
        204
    );
    assert_eq!(
        protection(&app, Method::DELETE, "prod", "alice").await.0,
        204,
        "idempotent"
    );
    let (status, body) = put_ref(&app, "prod", 3, "ci").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["protected"], false);
    let (_, adapter) = app.get_json("/api/v1/adapters/alice/x", "").await;
    assert_eq!(adapter["protected_aliases"], json!([]));

    // The audit log: each protection change once (the idempotent repeat none), each successful
    // move, and nothing of the refused ones.
    let got = prod_entries(&app).await;
    let summary: Vec<(String, Value, Value)> = got
        .iter()
        .map(|e| {
            (
                e["action"].as_str().expect("action").to_string(),
                e["before"].clone(),
                e["after"].clone(),
            )
        })
        .collect();
    let p = |b: bool| json!({ "protected": b });
    let v = |n: i64| json!({ "version": n });
    assert_eq!(
        summary,
        vec![
            ("alias.set".into(), v(2), v(3)),
            ("alias.protect".into(), p(true), p(false)),
            ("alias.set".into(), Value::Null, v(2)),
            ("alias.delete".into(), v(1), Value::Null),
            ("alias.set".into(), v(3), v(1)),
            ("alias.set".into(), v(2), v(3)),
            ("alias.set".into(), v(1), v(2)),
            ("alias.protect".into(), p(false), p(true)),
            ("alias.set".into(), Value::Null, v(1)),
        ],
        "{got:?}"
    );
    let by_ci: Vec<&Value> = got.iter().filter(|e| e["token_id"] == ci).collect();
    assert_eq!(by_ci.len(), 2, "ci's two successful sets only: {by_ci:?}");
    assert_eq!(got[1]["actor"], "alice");
    assert_eq!(got[1]["owner"], "alice");
}

/// An organisation's namespace: its `admin` members administer it, its `write` members do not
/// (they publish and move other aliases).
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn organisation_admins_move_protected_aliases_and_writers_do_not(#[case] backend: Backend) {
    let app = app_or_skip!(backend);
    let (status, body) = app
        .post_json("/api/v1/orgs", "alice", &json!({"name": "acme"}))
        .await;
    assert_eq!(status, 201, "{body}");
    let member = |role: &'static str| {
        app.send(
            app.request(Method::PUT, "/api/v1/orgs/acme/members/bob", "alice")
                .json(&json!({ "role": role })),
        )
    };
    assert_eq!(member("write").await.0, 200);
    assert_eq!(app.create_adapter("acme", "m", false, "bob").await.0, 201);
    for seed in 1..=2 {
        let (status, body) = app
            .upload("acme/m", "bob", &synthetic_adapter(4, &["q_proj"], seed))
            .await;
        assert_eq!(status, 201, "{body}");
    }
    let put = |alias: &'static str, version: i64, who: &'static str| {
        app.send(
            app.request(
                Method::PUT,
                &format!("/api/v1/adapters/acme/m/refs/{alias}"),
                who,
            )
            .json(&json!({ "version": version })),
        )
    };
    let protect = |who: &'static str| {
        app.send(app.request(
            Method::PUT,
            "/api/v1/adapters/acme/m/refs/prod/protection",
            who,
        ))
    };
    assert_eq!(put("prod", 1, "bob").await.0, 200);

    // A write member may not protect, nor move what an admin protected.
    let (status, body) = protect("bob").await;
    assert_error(status, &body, (403, "forbidden"), "a write member protects");
    assert_eq!(protect("alice").await.0, 200, "an admin member protects");
    let (status, body) = put("prod", 2, "bob").await;
    assert_error(
        status,
        &body,
        (403, "alias_protected"),
        "a write member moves",
    );
    assert_eq!(
        body["error"]["message"],
        "alias prod of acme/m is protected: only admins of the namespace acme may move or delete it"
    );
    let (status, body) = app
        .post_json("/api/models/acme/m/tag/2", "bob", &json!({"tag": "prod"}))
        .await;
    assert_error(
        status,
        &body,
        (403, "alias_protected"),
        "a write member tags",
    );
    assert_eq!(put("canary", 2, "bob").await.0, 200, "other aliases");
    let (_, list) = app.get_json("/api/v1/adapters/acme/m/refs", "").await;
    assert_eq!(
        list["items"][1],
        json!({"name": "prod", "version": 1, "protected": true})
    );

    // An admin member moves it; so does the write member once made an admin.
    assert_eq!(put("prod", 2, "alice").await.0, 200);
    assert_eq!(member("admin").await.0, 200);
    assert_eq!(put("prod", 1, "bob").await.0, 200);
    let (status, body) = app
        .send(app.request(
            Method::DELETE,
            "/api/v1/adapters/acme/m/refs/prod/protection",
            "bob",
        ))
        .await;
    assert_eq!(status, 204, "{body}");
}
