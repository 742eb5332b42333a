//! The audit log (docs/audit.md): each audited change writes exactly one entry with actor, token
//! id, target and before/after, in the transaction of the change (an aborted change writes
//! none); filters and paging; only instance admins read it.

use quiver_tests::{Backend, TestApp, app_or_skip, assert_error, synthetic_adapter};
use reqwest::Method;
use rstest::rstest;
use serde_json::{Value, json};

async fn entries(app: &TestApp, query: &str) -> Vec<Value> {
    let (status, page) = app
        .get_json(&format!("/api/v1/audit{query}"), "admin")
        .await;
    assert_eq!(status, 200, "{page}");
    page["items"].as_array().expect("items").clone()
}

async fn put_ref(app: &TestApp, repo: &str, alias: &str, version: i64) -> (u16, Value) {
    app.send(
        app.request(
            Method::PUT,
            &format!("/api/v1/adapters/{repo}/refs/{alias}"),
            "alice",
        )
        .header("X-Request-Id", format!("req-{alias}-{version}"))
        .json(&json!({ "version": version })),
    )
    .await
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn alias_changes_are_audited_once_and_aborted_ones_not(#[case] backend: Backend) {
    let app = app_or_skip!(backend);
    assert_eq!(
        app.create_adapter("alice", "one", true, "alice").await.0,
        201
    );
    for seed in 1..=2 {
        let (status, body) = app
            .upload(
                "alice/one",
                "alice",
                &synthetic_adapter(4, &["q_proj"], seed),
            )
            .await;
        assert_eq!(status, 201, "{body}");
    }
    let (_, tokens) = app.get_json("/api/v1/tokens", "alice").await;
    let alice_ids: Vec<String> = tokens["items"]
        .as_array()
        .expect("tokens")
        .iter()
        .map(|t| t["id"].as_str().expect("id").to_string())
        .collect();

    // Set, move, then an aborted move (missing version) and an aborted delete (no alias).
    assert_eq!(put_ref(&app, "alice/one", "prod", 1).await.0, 200);
    assert_eq!(put_ref(&app, "alice/one", "prod", 2).await.0, 200);
    let (status, body) = put_ref(&app, "alice/one", "prod", 99).await;
    assert_eq!(status, 404, "{body}");
    let (status, _) = app
        .send(app.request(
            Method::DELETE,
            "/api/v1/adapters/alice/one/refs/canary",
            "alice",
        ))
        .await;
    assert_eq!(status, 404);
    let (status, _) = app
        .send(app.request(
            Method::DELETE,
            "/api/v1/adapters/alice/one/refs/prod",
            "alice",
        ))
        .await;
    assert_eq!(status, 204);

    let got = entries(&app, "?target=alice/one@prod").await;
    assert_eq!(
        got.len(),
        3,
        "one entry per change, none for aborted ones: {got:?}"
    );
    // Newest first.
    assert_eq!(got[0]["action"], "alias.delete");
    assert_eq!(got[0]["before"], json!({"version": 2}));
    assert_eq!(got[0]["after"], Value::Null);
    assert_eq!(got[1]["action"], "alias.set");
    assert_eq!(got[1]["before"], json!({"version": 1}));
    assert_eq!(got[1]["after"], json!({"version": 2}));
    assert_eq!(got[1]["request_id"], "req-prod-2");
    assert_eq!(got[2]["before"], Value::Null);
    assert_eq!(got[2]["after"], json!({"version": 1}));
    for e in &got {
        assert_eq!(e["actor"], "alice");
        assert_eq!(e["owner"], "alice");
        assert_eq!(e["client_addr"], "127.0.0.1");
        let token = e["token_id"].as_str().expect("token id");
        assert!(alice_ids.iter().any(|id| id == token), "{token}");
        assert!(
            !e.to_string().contains(app.token("alice")),
            "never the secret"
        );
    }
    assert!(
        entries(&app, "?target=alice/one@canary").await.is_empty(),
        "an aborted delete writes none"
    );

    // Each upload wrote one version.publish entry; a refused upload writes none.
    let (status, body) = app
        .upload(
            "alice/one",
            "alice",
            &[("adapter_config.json".to_string(), b"not json".to_vec())],
        )
        .await;
    assert!((400..500).contains(&status), "{status} {body}");
    let got = entries(&app, "?action=version.publish&target=alice/one").await;
    let numbers: Vec<i64> = got
        .iter()
        .map(|e| e["after"]["version"].as_i64().expect("version"))
        .collect();
    assert_eq!(numbers, [2, 1], "{got:?}");
    assert!(
        got.iter()
            .all(|e| e["actor"] == "alice" && e["token_id"].is_string())
    );

    // The Hub's tag route is audited too.
    let (status, body) = app
        .post_json(
            "/api/models/alice/one/tag/1",
            "alice",
            &json!({"tag": "canary"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let got = entries(&app, "?action=alias.set&target=alice/one@canary").await;
    assert_eq!(got.len(), 1);
    assert!(got[0]["request_id"].as_str().is_some_and(|r| !r.is_empty()));
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn filters_paging_and_who_may_read(#[case] backend: Backend) {
    let app = app_or_skip!(backend);
    for (owner, who) in [("alice", "alice"), ("bob", "bob")] {
        assert_eq!(app.create_adapter(owner, "x", false, who).await.0, 201);
        let (status, _) = app
            .upload(
                &format!("{owner}/x"),
                who,
                &synthetic_adapter(4, &["q_proj"], 1),
            )
            .await;
        assert_eq!(status, 201);
    }
    for i in 0..5 {
        assert_eq!(put_ref(&app, "alice/x", &format!("a{i}"), 1).await.0, 200);
    }
    let (status, _) = app
        .send(
            app.request(Method::PUT, "/api/v1/adapters/bob/x/refs/prod", "bob")
                .json(&json!({"version": 1})),
        )
        .await;
    assert_eq!(status, 200);

    // Filters.
    assert_eq!(entries(&app, "?actor=bob&action=alias.set").await.len(), 1);
    assert_eq!(
        entries(&app, "?actor=alice&action=alias.set").await.len(),
        5
    );
    // alice/x (adapter.create, version.publish) and its five aliases.
    assert_eq!(entries(&app, "?target=alice/").await.len(), 7);
    assert_eq!(entries(&app, "?target=bob/x@prod").await.len(), 1);
    assert_eq!(
        entries(&app, "?target=alice/x").await.len(),
        2,
        "exact unless it ends in /"
    );
    assert!(entries(&app, "?action=alias.delete").await.is_empty());
    let all = entries(&app, "?action=alias.set").await;
    let newest = all[0]["at"].as_i64().expect("at");
    assert!(
        entries(&app, &format!("?since={}", newest + 1))
            .await
            .is_empty()
    );
    assert!(
        !entries(&app, &format!("?until={}", newest + 1))
            .await
            .is_empty()
    );

    // Paging: by id, newest first, no entry twice.
    let mut seen = Vec::new();
    let mut cursor = String::new();
    loop {
        let (status, page) = app
            .get_json(
                &format!("/api/v1/audit?action=alias.set&limit=2{cursor}"),
                "admin",
            )
            .await;
        assert_eq!(status, 200, "{page}");
        for e in page["items"].as_array().expect("items") {
            seen.push(e["id"].as_i64().expect("id"));
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = format!("&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(seen.len(), 6);
    assert!(seen.windows(2).all(|w| w[0] > w[1]), "{seen:?}");

    // Bounds and names.
    let (status, body) = app.get_json("/api/v1/audit?limit=201", "admin").await;
    assert_error(status, &body, (400, "invalid_query"), "limit");
    let (status, body) = app.get_json("/api/v1/audit?action=nope", "admin").await;
    assert_error(status, &body, (400, "invalid_query"), "action");
    let (status, body) = app.get_json("/api/v1/audit?cursor=zz", "admin").await;
    assert_eq!(status, 400, "{body}");

    // Only instance admins.
    for who in ["alice", "bob", "alice_read"] {
        let (status, body) = app.get_json("/api/v1/audit", who).await;
        assert_error(status, &body, (403, "forbidden"), who);
    }
    let (status, _) = app.get_json("/api/v1/audit", "").await;
    assert_eq!(status, 401);
    // No route deletes entries.
    let (status, _) = app
        .send(app.request(Method::DELETE, "/api/v1/audit", "admin"))
        .await;
    assert!(status == 404 || status == 405, "{status}");
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn adapter_and_token_changes_are_audited(#[case] backend: Backend) {
    let app = app_or_skip!(backend);
    // Adapter create (REST and Hub), a refused duplicate, update, delete (REST and Hub).
    assert_eq!(
        app.create_adapter("alice", "ad", false, "alice").await.0,
        201
    );
    assert_eq!(
        app.create_adapter("alice", "ad", true, "alice").await.0,
        409
    );
    let (status, body) = app
        .send(
            app.request(Method::PATCH, "/api/v1/adapters/alice/ad", "alice")
                .json(&json!({"private": true, "description": "new"})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = app
        .send(app.request(Method::DELETE, "/api/v1/adapters/alice/ad", "alice"))
        .await;
    assert_eq!(status, 204);
    let (status, body) = app
        .post_json("/api/repos/create", "alice", &json!({"name": "hubbed"}))
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = app
        .send(
            app.request(Method::DELETE, "/api/repos/delete", "alice")
                .json(&json!({"name": "hubbed"})),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    let got = entries(&app, "?target=alice/ad").await;
    let actions: Vec<&str> = got
        .iter()
        .map(|e| e["action"].as_str().expect("a"))
        .collect();
    assert_eq!(
        actions,
        ["adapter.delete", "adapter.update", "adapter.create"],
        "the refused duplicate wrote none"
    );
    assert_eq!(got[2]["before"], Value::Null);
    assert_eq!(got[2]["after"]["private"], false);
    assert_eq!(got[1]["before"]["private"], false);
    assert_eq!(got[1]["after"]["private"], true);
    assert_eq!(got[1]["after"]["description"], "new");
    assert_eq!(got[0]["before"]["private"], true);
    assert_eq!(got[0]["after"], Value::Null);
    assert!(
        got.iter()
            .all(|e| e["actor"] == "alice" && e["token_id"].is_string())
    );
    let hub: Vec<String> = entries(&app, "?target=alice/hubbed")
        .await
        .iter()
        .map(|e| e["action"].as_str().expect("a").to_string())
        .collect();
    assert_eq!(hub, ["adapter.delete", "adapter.create"]);

    // Tokens: create, revoke, a second revoke (no change: no entry), a refused create.
    let (status, made) = app
        .post_json(
            "/api/v1/tokens",
            "alice",
            &json!({"name": "ci", "scope": "read"}),
        )
        .await;
    assert_eq!(status, 201, "{made}");
    let id = made["id"].as_str().expect("id").to_string();
    let secret = made["token"].as_str().expect("secret").to_string();
    for expected in [200, 200] {
        let (status, _) = app
            .send(app.request(Method::DELETE, &format!("/api/v1/tokens/{id}"), "alice"))
            .await;
        assert_eq!(status, expected);
    }
    let (status, _) = app
        .post_json(
            "/api/v1/tokens",
            "alice_read",
            &json!({"name": "wider", "scope": "admin"}),
        )
        .await;
    assert_eq!(status, 403);
    let got = entries(&app, &format!("?target={id}")).await;
    let actions: Vec<&str> = got
        .iter()
        .map(|e| e["action"].as_str().expect("a"))
        .collect();
    assert_eq!(actions, ["token.revoke", "token.create"]);
    assert_eq!(got[1]["after"]["name"], "ci");
    assert_eq!(got[1]["after"]["scope"], "read");
    assert!(
        got[0]["after"]["revoked_at"].as_i64().is_some(),
        "revoked_at is set"
    );
    assert_eq!(entries(&app, "?action=token.create").await.len(), 1);
    // Invites: an admin's writes one entry; a refused one (not an admin) none.
    let (status, inv) = app
        .post_json(
            "/api/v1/invites",
            "admin",
            &json!({"user": "carol", "scope": "read"}),
        )
        .await;
    assert_eq!(status, 201, "{inv}");
    let (status, _) = app
        .post_json("/api/v1/invites", "alice", &json!({"user": "dave"}))
        .await;
    assert_eq!(status, 403);
    let got = entries(&app, "?action=invite.create").await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["target"], "carol");
    assert_eq!(got[0]["actor"], "root");
    assert_eq!(got[0]["after"]["invite"], inv["id"]);
    let link = inv["link"].as_str().expect("link");
    let all = entries(&app, "?limit=200").await;
    assert!(
        !serde_json::to_string(&all)
            .expect("json")
            .contains(&link[link.len() - 20..])
    );
    assert!(
        !serde_json::to_string(&all)
            .expect("json")
            .contains(&secret[4..])
    );
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn job_submit_and_cancel_are_audited(#[case] backend: Backend) {
    // No workers: jobs stay queued.
    let Some(app) = quiver_tests::spawn_app_with_workers(backend, 0).await else {
        return;
    };
    for (i, name) in ["a", "b"].into_iter().enumerate() {
        app.adapter_with(
            &format!("alice/{name}"),
            &synthetic_adapter(4, &["q_proj"], i as u32 + 1),
        )
        .await;
    }
    let body = json!({"method": "linear",
        "inputs": [{"adapter": "alice/a"}, {"adapter": "alice/b"}],
        "output": {"adapter": "alice/m", "create": true}, "idempotency_key": "k1"});
    let (status, job) = app.post_json("/api/v1/merges", "alice", &body).await;
    assert_eq!(status, 202, "{job}");
    // The idempotent repeat creates nothing and writes nothing.
    assert_eq!(app.post_json("/api/v1/merges", "alice", &body).await.0, 200);
    let id = job["id"].as_str().expect("id");
    for _ in 0..2 {
        let (status, c) = app
            .post_json(&format!("/api/v1/jobs/{id}/cancel"), "alice", &json!({}))
            .await;
        assert_eq!(status, 200, "{c}");
    }
    let got = entries(&app, &format!("?target={id}")).await;
    let actions: Vec<&str> = got
        .iter()
        .map(|e| e["action"].as_str().expect("a"))
        .collect();
    assert_eq!(actions, ["job.cancel", "job.submit"], "{got:?}");
    assert_eq!(got[1]["after"]["kind"], "merge");
    assert_eq!(got[0]["before"]["state"], "queued");
    assert_eq!(got[0]["after"]["state"], "cancelled");
    assert!(
        got.iter()
            .all(|e| e["actor"] == "alice" && e["owner"] == "alice")
    );
}
