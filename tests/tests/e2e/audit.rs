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

/// A page request with `who`'s token as the session cookie (and a fixed CSRF pair for forms).
fn page_as(app: &TestApp, method: Method, path: &str, who: &str) -> reqwest::RequestBuilder {
    let mut cookies = format!("quiver_csrf={CSRF}");
    if !who.is_empty() {
        cookies.push_str(&format!("; quiver_session={}", app.token(who)));
    }
    app.client
        .request(method, app.url(path))
        .header("Cookie", cookies)
}

const CSRF: &str = "cdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcd";

/// Token ids of `user`'s tokens, as an admin lists them.
async fn token_ids(app: &TestApp, user: &str) -> Vec<String> {
    let (_, tokens) = app
        .get_json(&format!("/api/v1/tokens?user={user}"), "admin")
        .await;
    tokens["items"]
        .as_array()
        .expect("tokens")
        .iter()
        .map(|t| t["id"].as_str().expect("id").to_string())
        .collect()
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn page_sign_in_invites_merge_form_and_fusions_are_audited(#[case] backend: Backend) {
    // No workers: the jobs stay queued.
    let Some(app) = quiver_tests::spawn_app_with_workers(backend, 0).await else {
        return;
    };
    // Sign-in with a token: one entry; a refused one none.
    let res = page_as(&app, Method::POST, "/signin", "")
        .header("X-Request-Id", "req-signin")
        .form(&[("token", app.token("alice")), ("csrf", CSRF), ("next", "/")])
        .send()
        .await
        .expect("sign in");
    assert_eq!(res.status(), 303);
    let res = page_as(&app, Method::POST, "/signin", "")
        .form(&[("token", "qvt_not_a_token"), ("csrf", CSRF)])
        .send()
        .await
        .expect("sign in");
    assert_eq!(res.status(), 401);
    let got = entries(&app, "?action=signin").await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(
        (&got[0]["actor"], &got[0]["target"], &got[0]["owner"]),
        (&json!("alice"), &json!("alice"), &json!("alice"))
    );
    assert_eq!(got[0]["after"], json!({"via": "token"}));
    assert_eq!(got[0]["request_id"], "req-signin");
    let token = got[0]["token_id"].as_str().expect("token id");
    assert!(token_ids(&app, "alice").await.iter().any(|t| t == token));
    assert!(!got[0].to_string().contains(app.token("alice")));

    // Invite redemption on the page: invite.redeem and the token's token.create, by the
    // invited user; a second use writes nothing.
    let (status, inv) = app
        .post_json(
            "/api/v1/invites",
            "admin",
            &json!({"user": "carol", "scope": "write"}),
        )
        .await;
    assert_eq!(status, 201, "{inv}");
    let link = inv["link"].as_str().expect("link");
    let secret = link.strip_prefix("/signin?invite=").expect("secret");
    for expected in [201, 401] {
        let res = page_as(&app, Method::POST, "/signin/invite", "")
            .form(&[("csrf", CSRF), ("invite", secret), ("name", "first")])
            .send()
            .await
            .expect("redeem");
        assert_eq!(res.status().as_u16(), expected);
    }
    let carol = token_ids(&app, "carol").await;
    assert_eq!(carol.len(), 1);
    let got = entries(&app, "?action=invite.redeem").await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["actor"], "carol");
    assert_eq!(got[0]["target"], "carol");
    assert_eq!(got[0]["after"]["invite"], inv["id"]);
    assert_eq!(got[0]["after"]["token"], carol[0].as_str());
    assert_eq!(got[0]["client_addr"], "127.0.0.1");
    let got = entries(&app, &format!("?target={}", carol[0])).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["action"], "token.create");
    assert!(!serde_json::to_string(&got).expect("json").contains(secret));

    // The merge form: job.submit as the REST route writes it.
    for (i, name) in ["a", "b"].into_iter().enumerate() {
        app.adapter_with(
            &format!("alice/{name}"),
            &synthetic_adapter(4, &["q_proj"], i as u32 + 1),
        )
        .await;
    }
    let res = page_as(&app, Method::POST, "/alice/a/merge", "alice")
        .header("X-Request-Id", "req-form")
        .form(&[
            ("csrf", CSRF),
            ("ref", "1"),
            ("inputs", "alice/b"),
            ("method", "linear"),
            ("output", "merged"),
        ])
        .send()
        .await
        .expect("merge form");
    assert_eq!(res.status(), 303);
    let job = res.headers()["location"]
        .to_str()
        .expect("location")
        .trim_start_matches("/jobs/")
        .to_string();
    let got = entries(&app, &format!("?target={job}")).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["action"], "job.submit");
    assert_eq!(got[0]["actor"], "alice");
    assert_eq!(got[0]["request_id"], "req-form");

    // A route fusion queues its merge with a job.submit entry; asked again, none.
    for (name, vector) in [("x", [1.0, 0.0, 0.0]), ("y", [0.0, 1.0, 0.0])] {
        app.adapter_with(
            &format!("alice/{name}"),
            &synthetic_adapter(4, &["q_proj"], 7),
        )
        .await;
        let (status, body) = app
            .post_json(
                &format!("/api/v1/adapters/alice/{name}/versions/main/profile"),
                "alice",
                &json!({"vector": vector, "embedder": "toy-3d"}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
    let ask = json!({"vectors": [[1.0, 1.0, 0.0]], "embedder": "toy-3d", "top_k": 2,
        "strategy": "fusion", "base_model": "quiver-test/tiny-llama"});
    let mut jobs = Vec::new();
    for _ in 0..2 {
        let (status, routed) = app.post_json("/api/v1/route", "alice", &ask).await;
        assert_eq!(status, 200, "{routed}");
        jobs.push(
            routed["results"][0]["fusion"]["job"]
                .as_str()
                .expect("a fusion job")
                .to_string(),
        );
    }
    assert_eq!(jobs[0], jobs[1], "the second ask finds the first job");
    let got = entries(&app, &format!("?target={}", jobs[0])).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["action"], "job.submit");
    assert_eq!(got[0]["actor"], "alice");
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn a_jobs_output_and_the_local_bootstrap_are_audited(#[case] backend: Backend) {
    let app = app_or_skip!(backend);
    for (i, name) in ["a", "b"].into_iter().enumerate() {
        app.adapter_with(
            &format!("alice/{name}"),
            &synthetic_adapter(4, &["q_proj"], i as u32 + 1),
        )
        .await;
    }
    let (status, job) = app
        .post_json(
            "/api/v1/merges",
            "alice",
            &json!({"method": "linear",
                "inputs": [{"adapter": "alice/a"}, {"adapter": "alice/b"}],
                "output": {"adapter": "alice/out", "create": true}}),
        )
        .await;
    assert_eq!(status, 202, "{job}");
    let id = job["id"].as_str().expect("id");
    let done = app
        .wait_job(id, "alice", std::time::Duration::from_secs(60))
        .await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let got = entries(&app, "?target=alice/out").await;
    let actions: Vec<&str> = got
        .iter()
        .map(|e| e["action"].as_str().expect("a"))
        .collect();
    assert_eq!(actions, ["version.publish", "adapter.create"], "{got:?}");
    for e in &got {
        assert_eq!(e["actor"], "alice", "the submitter");
        assert_eq!(e["after"]["job"], id);
        assert!(e["token_id"].is_null() && e["request_id"].is_null());
    }
    assert_eq!(got[0]["after"]["version"], 1);

    // `quiver token create --user U` on the database host: token.create by "(local)".
    let s = app.settings();
    let out = std::process::Command::new(quiver_tests::quiver_bin())
        .args([
            "token",
            "create",
            "--user",
            "frank",
            "--scope",
            "read",
            "--database-url",
            &s.database_url,
            "--store-url",
            &s.store_url,
            "--data-dir",
            &app.temp_dir().display().to_string(),
        ])
        .env_remove("QUIVER_TOKEN_USER")
        .output()
        .expect("quiver token create");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let secret = String::from_utf8(out.stdout).expect("utf-8");
    let frank = token_ids(&app, "frank").await;
    assert_eq!(frank.len(), 1);
    let got = entries(&app, &format!("?target={}", frank[0])).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["action"], "token.create");
    assert_eq!(got[0]["actor"], quiver_api::cli::token::LOCAL_ACTOR);
    assert_eq!(got[0]["owner"], "frank");
    assert_eq!(got[0]["after"]["scope"], "read");
    assert!(got[0]["token_id"].is_null() && got[0]["client_addr"].is_null());
    assert!(!got[0].to_string().contains(secret.trim()));
    assert_eq!(
        entries(&app, "?actor=(local)").await.len(),
        1,
        "the actor filter finds it"
    );
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn webhook_changes_are_audited_without_secrets(#[case] backend: Backend) {
    let Some(app) = quiver_tests::spawn_app_with(
        backend,
        quiver_api::config::HttpOptions {
            webhooks: quiver_api::events::WebhookOptions {
                allow_private: true,
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .await
    else {
        return;
    };
    assert_eq!(
        app.create_adapter("alice", "w", false, "alice").await.0,
        201
    );
    let url = "http://127.0.0.1:9/hooks/T000/B000/path-secret?key=query-secret";
    // REST: create, delete, a second delete (404: none).
    let (status, hook) = app
        .post_json(
            "/api/v1/webhooks",
            "alice",
            &json!({"url": url, "adapter": "alice/w", "secret": "whsec-0123456789abcdef"}),
        )
        .await;
    assert_eq!(status, 201, "{hook}");
    let id = hook["id"].as_str().expect("id").to_string();
    for expected in [204, 404] {
        let (status, _) = app
            .send(app.request(Method::DELETE, &format!("/api/v1/webhooks/{id}"), "alice"))
            .await;
        assert_eq!(status, expected);
    }
    // The page: create and delete.
    let res = page_as(&app, Method::POST, "/webhooks", "alice")
        .form(&[("csrf", CSRF), ("url", url), ("owner", "alice")])
        .send()
        .await
        .expect("page create");
    assert_eq!(res.status(), 201);
    let (_, hooks) = app.get_json("/api/v1/webhooks", "alice").await;
    let page_id = hooks["items"][0]["id"].as_str().expect("id").to_string();
    let res = page_as(
        &app,
        Method::POST,
        &format!("/webhooks/{page_id}/delete"),
        "alice",
    )
    .form(&[("csrf", CSRF)])
    .send()
    .await
    .expect("page delete");
    assert_eq!(res.status(), 303);

    for (hook_id, scope) in [(&id, "adapter"), (&page_id, "owner")] {
        let got = entries(&app, &format!("?target={hook_id}")).await;
        let actions: Vec<&str> = got
            .iter()
            .map(|e| e["action"].as_str().expect("a"))
            .collect();
        assert_eq!(
            actions,
            ["webhook.delete", "webhook.create"],
            "{scope}: {got:?}"
        );
        assert!(
            got.iter()
                .all(|e| e["actor"] == "alice" && e["owner"] == "alice")
        );
        assert_eq!(got[1]["after"]["url"], "http://127.0.0.1:9");
        assert_eq!(got[0]["before"]["url"], "http://127.0.0.1:9");
    }
    let all = serde_json::to_string(&entries(&app, "?limit=200").await).expect("json");
    for secret in ["whsec-0123456789abcdef", "path-secret", "query-secret"] {
        assert!(!all.contains(secret), "{secret}");
    }
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn namespace_administrators_read_their_namespace(#[case] backend: Backend) {
    let app = app_or_skip!(backend);
    for (owner, who) in [("alice", "alice"), ("bob", "bob")] {
        assert_eq!(app.create_adapter(owner, "n", false, who).await.0, 201);
    }
    // An organisation: alice its admin, bob a writing member.
    let (status, org) = app
        .post_json("/api/v1/orgs", "alice", &json!({"name": "acme"}))
        .await;
    assert_eq!(status, 201, "{org}");
    let (status, body) = app
        .send(
            app.request(Method::PUT, "/api/v1/orgs/acme/members/bob", "alice")
                .json(&json!({"role": "write"})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(app.create_adapter("acme", "m", false, "bob").await.0, 201);

    let read = |who: &'static str, query: &'static str| {
        let app = &app;
        async move { app.get_json(&format!("/api/v1/audit{query}"), who).await }
    };
    // alice reads her own namespace and her organisation's, nothing else.
    for ns in ["alice", "acme"] {
        let (status, page) = app
            .get_json(&format!("/api/v1/audit?owner={ns}"), "alice")
            .await;
        assert_eq!(status, 200, "{page}");
        let items = page["items"].as_array().expect("items");
        assert!(!items.is_empty(), "{ns}");
        assert!(items.iter().all(|e| e["owner"] == ns), "{ns}: {page}");
    }
    let (_, page) = read("alice", "?owner=acme&action=adapter.create").await;
    assert_eq!(page["items"][0]["target"], "acme/m");
    assert_eq!(page["items"][0]["actor"], "bob");
    for (who, query) in [
        ("alice", ""),
        ("alice", "?owner=bob"),
        ("alice", "?target=bob/"),
        ("alice_read", "?owner=alice"),
        ("bob", "?owner=acme"),
        ("bob", "?owner=alice"),
    ] {
        let (status, body) = read(who, query).await;
        assert_error(status, &body, (403, "forbidden"), "owner=NS");
    }
    let (status, body) = read("alice", "?owner=Not%20A%20Name").await;
    assert_error(status, &body, (400, "invalid_query"), "owner");
    // The instance admin: everything, and the owner filter too.
    let (status, page) = read("admin", "?owner=bob").await;
    assert_eq!(status, 200);
    assert!(
        page["items"]
            .as_array()
            .expect("items")
            .iter()
            .all(|e| e["owner"] == "bob")
    );

    // The page: the same callers and filters, the same refusal as an error page.
    let html = |who: &'static str, path: &'static str| {
        let app = &app;
        async move {
            let res = page_as(app, Method::GET, path, who)
                .send()
                .await
                .expect("page");
            let status = res.status().as_u16();
            let location = res
                .headers()
                .get("location")
                .and_then(|l| l.to_str().ok())
                .unwrap_or_default()
                .to_string();
            (status, location, res.text().await.expect("body"))
        }
    };
    let (status, _, body) = html("admin", "/audit").await;
    assert_eq!(status, 200);
    assert!(body.contains("acme/m") && body.contains("bob/n"));
    assert!(
        body.contains("href=\"/audit\""),
        "the admin's header links it"
    );
    let (status, _, body) = html("alice", "/audit?owner=acme").await;
    assert_eq!(status, 200);
    assert!(body.contains("acme/m") && !body.contains("bob/n") && !body.contains("alice/n"));
    assert!(
        !body.contains("href=\"/audit\""),
        "only admins' headers link it"
    );
    let (status, _, body) = html("alice", "/audit").await;
    assert_eq!(status, 403);
    assert!(body.contains("owner=NS"), "the rule is named");
    let (status, _, _) = html("bob", "/audit?owner=acme").await;
    assert_eq!(status, 403);
    let (status, location, _) = html("", "/audit?owner=acme").await;
    assert_eq!(status, 303);
    assert!(location.starts_with("/signin?next=%2Faudit"), "{location}");
    let (status, _, _) = html("admin", "/audit?since=yesterday").await;
    assert_eq!(status, 400);
    // Paging on the page keeps the filters.
    let (status, _, body) = html("admin", "/audit?action=adapter.create&limit=1").await;
    assert_eq!(status, 200);
    let at = body.find("rel=\"next\"").expect("a next link");
    let link = &body[..at];
    let href = link[link.rfind("href=\"").expect("href") + 6..]
        .replace("&#38;", "&")
        .replace("&amp;", "&");
    assert!(
        href.contains("/audit?action=adapter.create&limit=1&cursor="),
        "{href}"
    );
}

/// Retention (`--audit-retention-days`, run by the sweeps with the clock given): 0 keeps all,
/// N days deletes only what is older.
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn retention_prunes_only_entries_past_the_window(#[case] backend: Backend) {
    use quiver_api::background::prune_audit_log;
    let app = app_or_skip!(backend);
    assert_eq!(
        app.create_adapter("alice", "r", false, "alice").await.0,
        201
    );
    let n = entries(&app, "?limit=200").await.len() as u64;
    assert!(n >= 1);
    let now = quiver_store::time::now_ms();
    let day = 86_400_000;
    assert_eq!(prune_audit_log(&app.store, 0, now + 400 * day).await, 0);
    assert_eq!(prune_audit_log(&app.store, 30, now + 29 * day).await, 0);
    assert_eq!(prune_audit_log(&app.store, 30, now + 31 * day).await, n);
    assert!(entries(&app, "").await.is_empty());
}
