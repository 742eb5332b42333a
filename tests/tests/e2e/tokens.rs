//! The token lifecycle (docs/tokens.md): create and list (never a secret), no widening, expiry,
//! revocation effective at once (signed-in pages and cached listings too), restrictions on every
//! surface, an admin over everyone's tokens, and the bounds.

use quiver_store::{NewToken, Restriction, Scope, time::now_ms};
use quiver_tests::{Backend, TestApp, app_or_skip, assert_error, synthetic_adapter};
use reqwest::Method;
use rstest::rstest;
use serde_json::{Value, json};

/// Makes a token through the API as `who`; returns (status, body).
async fn make(app: &TestApp, who: &str, body: Value) -> (u16, Value) {
    app.post_json("/api/v1/tokens", who, &body).await
}

/// A page with the session cookie of `secret` (empty: anonymous).
async fn page(app: &TestApp, path: &str, secret: &str) -> (u16, String) {
    let mut rb = app.request(Method::GET, path, "");
    if !secret.is_empty() {
        rb = rb.header("Cookie", format!("quiver_session={secret}"));
    }
    let res = rb.send().await.expect("page");
    (res.status().as_u16(), res.text().await.expect("body"))
}

async fn setup(app: &TestApp) {
    for (owner, name, private, who) in [
        ("alice", "secret", true, "alice"),
        ("alice", "open", false, "alice"),
        ("alice", "other", true, "alice"),
        ("bob", "bobs", true, "bob"),
    ] {
        assert_eq!(
            app.create_adapter(owner, name, private, who).await.0,
            201,
            "{owner}/{name}"
        );
    }
    let (status, _) = app
        .upload(
            "alice/secret",
            "alice",
            &synthetic_adapter(4, &["q_proj"], 1),
        )
        .await;
    assert_eq!(status, 201);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn create_list_and_no_widening(#[case] backend: Backend) {
    let mut app = app_or_skip!(backend);
    let (status, made) = make(
        &app,
        "alice",
        json!({"name": "laptop", "scope": "write", "expires_in_days": 30}),
    )
    .await;
    assert_eq!(status, 201, "{made}");
    let secret = made["token"].as_str().expect("secret once").to_string();
    assert!(secret.starts_with("qvt_") && secret.len() == 68);
    assert_eq!(made["prefix"], json!(secret[..8].to_string()));
    assert_eq!(made["scope"], "write");
    assert_eq!(made["user"], "alice");
    assert_eq!(made["created_by"], "alice");
    assert!(made["expires_at"].as_i64().expect("ok") > now_ms());
    app.tokens.insert("laptop", secret.clone());
    let (status, me) = app.get_json("/api/whoami-v2", "laptop").await;
    assert_eq!(status, 200, "{me}");

    let (status, list) = app.get_json("/api/v1/tokens", "alice").await;
    assert_eq!(status, 200);
    let text = list.to_string();
    assert!(!text.contains(&secret[8..]), "the secret is never listed");
    let hash = quiver_api::auth::hash_token(&secret);
    assert!(!text.contains(&hash), "nor its hash");
    let mine: Vec<&Value> = list["items"].as_array().expect("ok").iter().collect();
    assert!(mine.iter().all(|t| t["user"] == "alice"));
    let laptop = mine.iter().find(|t| t["name"] == "laptop").expect("listed");
    assert!(laptop.get("token").is_none());
    assert_eq!(laptop["prefix"], made["prefix"]);
    assert!(laptop["last_used_at"].as_i64().is_some(), "use recorded");

    // Scope, reach and lifetime never widen.
    let (status, body) = make(&app, "alice_read", json!({"name": "w", "scope": "write"})).await;
    assert_error(status, &body, (403, "forbidden"), "read → write");
    let (status, body) = make(&app, "alice", json!({"name": "a", "scope": "admin"})).await;
    assert_error(status, &body, (403, "forbidden"), "write → admin");
    let (status, body) = make(&app, "alice", json!({"name": "b", "user": "bob"})).await;
    assert_error(status, &body, (403, "forbidden"), "another user's");
    let (status, r) = make(
        &app,
        "alice",
        json!({"name": "r", "scope": "write", "restrict": ["alice/open"]}),
    )
    .await;
    assert_eq!(status, 201, "{r}");
    app.tokens
        .insert("r", r["token"].as_str().expect("ok").to_string());
    let (status, body) = make(&app, "r", json!({"name": "r2", "scope": "write"})).await;
    assert_error(
        status,
        &body,
        (403, "forbidden"),
        "restricted → unrestricted",
    );
    let (status, body) = make(&app, "r", json!({"name": "r3", "restrict": ["alice"]})).await;
    assert_error(status, &body, (403, "forbidden"), "restricted → wider list");
    let (status, body) = make(&app, "r", json!({"name": "r4", "restrict": ["alice/open"]})).await;
    assert_eq!(status, 201, "{body}");
    let (status, child) = make(
        &app,
        "laptop",
        json!({"name": "child", "expires_in_days": 3000}),
    )
    .await;
    assert_eq!(status, 201, "{child}");
    assert!(
        child["expires_at"].as_i64() <= made["expires_at"].as_i64(),
        "a token cannot outlive the one that made it"
    );

    // The bounds: 400 JSON naming the problem.
    for (body, what) in [
        (json!({"name": ""}), "name"),
        (json!({"name": "x".repeat(101)}), "name"),
        (
            json!({"name": "x", "expires_in_days": 0}),
            "expires_in_days",
        ),
        (
            json!({"name": "x", "expires_in_days": 3651}),
            "expires_in_days",
        ),
        (json!({"name": "x", "expires_at": 1}), "expires_at"),
        (
            json!({"name": "x", "expires_in_days": 1, "expires_at": now_ms() + 1000}),
            "not both",
        ),
        (json!({"name": "x", "restrict": []}), "at least one"),
        (
            json!({"name": "x", "restrict": vec!["alice"; 51]}),
            "at most 50",
        ),
        (
            json!({"name": "x", "restrict": ["Not A Name!"]}),
            "restrict entry",
        ),
        (
            json!({"name": "x", "restrict": ["alice/../x"]}),
            "restrict entry",
        ),
    ] {
        let (status, err) = make(&app, "alice", body.clone()).await;
        assert_error(
            status,
            &err,
            (400, "invalid_token_request"),
            &body.to_string(),
        );
        assert!(
            err["error"]["message"].as_str().expect("ok").contains(what),
            "{err}"
        );
    }
    let (status, err) = make(&app, "alice", json!({"name": "x", "scope": "owner"})).await;
    assert_eq!(status, 400, "{err}");
    assert!(err["error"]["code"].is_string());
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn at_most_100_active_tokens(#[case] backend: Backend) {
    let app = app_or_skip!(backend);
    // alice holds 2 from the test setup.
    let mut made = 0;
    loop {
        let (status, body) = make(&app, "alice", json!({"name": format!("t{made}")})).await;
        if status != 201 {
            assert_error(status, &body, (400, "invalid_token_request"), "the 101st");
            assert!(
                body["error"]["message"]
                    .as_str()
                    .expect("ok")
                    .contains("100")
            );
            break;
        }
        made += 1;
        assert!(made <= 100, "no limit");
    }
    assert_eq!(made, 98);
    // Revoking one frees a place.
    let (_, list) = app.get_json("/api/v1/tokens", "alice").await;
    let id = list["items"][5]["id"].as_str().expect("ok").to_string();
    let (status, _) = app
        .send(app.request(Method::DELETE, &format!("/api/v1/tokens/{id}"), "alice"))
        .await;
    assert_eq!(status, 200);
    assert_eq!(make(&app, "alice", json!({"name": "again"})).await.0, 201);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn expired_and_revoked_tokens_are_refused_at_once(#[case] backend: Backend) {
    let mut app = app_or_skip!(backend);
    setup(&app).await;
    // An expired token (made in the store: the API refuses a past expiry).
    let (secret, hash) = quiver_api::auth::new_token();
    app.store
        .meta
        .insert_token(&NewToken {
            user: "alice".into(),
            name: Some("old".into()),
            prefix: Some(secret[..8].to_string()),
            scope: Scope::Write,
            restrict: None,
            expires_at: Some(now_ms() - 1),
            created_by: Some("alice".into()),
            secret_sha256: hash,
            max_active: 100,
        })
        .await
        .expect("insert");
    app.tokens.insert("old", secret.clone());
    let (status, body) = app.get_json("/api/v1/adapters", "old").await;
    assert_error(status, &body, (401, "token_expired"), "expired");
    let (status, html) = page(&app, "/alice/secret", &secret).await;
    assert_eq!(status, 404, "an expired session is anonymous: {html}");

    // A fresh token, signed in, on the cached listing and a private page.
    let (status, made) = make(&app, "alice", json!({"name": "browser", "scope": "write"})).await;
    assert_eq!(status, 201);
    let secret = made["token"].as_str().expect("ok").to_string();
    app.tokens.insert("browser", secret.clone());
    for _ in 0..2 {
        // Twice: the second answer comes from the listing cache.
        let (status, list) = app
            .get_json("/api/v1/adapters?owner=alice", "browser")
            .await;
        assert_eq!(status, 200);
        assert!(list.to_string().contains("secret"));
        let (status, html) = page(&app, "/?owner=alice", &secret).await;
        assert_eq!(status, 200);
        assert!(html.contains("alice/secret"));
    }
    assert_eq!(page(&app, "/alice/secret", &secret).await.0, 200);
    assert!(
        !app.download("alice/secret", "1", "adapter_config.json", "browser")
            .await
            .is_empty()
    );

    let id = made["id"].as_str().expect("ok");
    let (status, revoked) = app
        .send(app.request(Method::DELETE, &format!("/api/v1/tokens/{id}"), "browser"))
        .await;
    assert_eq!(status, 200, "a token may revoke itself: {revoked}");
    assert!(revoked["revoked_at"].as_i64().is_some());

    let (status, body) = app
        .get_json("/api/v1/adapters?owner=alice", "browser")
        .await;
    assert_error(
        status,
        &body,
        (401, "token_revoked"),
        "revoked, cached listing",
    );
    let (status, body) = app
        .get_json(
            "/api/v1/adapters/alice/secret/versions/1/files/adapter_config.json",
            "browser",
        )
        .await;
    assert_error(status, &body, (401, "token_revoked"), "revoked, download");
    let (status, body) = app.get_json("/api/models/alice/secret", "browser").await;
    assert_eq!(status, 401, "revoked, Hub: {body}");
    let (status, html) = page(&app, "/?owner=alice", &secret).await;
    assert_eq!(status, 200);
    assert!(
        !html.contains("alice/secret"),
        "the signed-in listing forgot it"
    );
    assert_eq!(
        page(&app, "/alice/secret", &secret).await.0,
        404,
        "signed-in page"
    );
    // Gone from the listing of tokens; revoking again is idempotent for its owner.
    let (_, list) = app.get_json("/api/v1/tokens", "alice").await;
    assert!(!list.to_string().contains(id));
    let (status, _) = app
        .send(app.request(Method::DELETE, &format!("/api/v1/tokens/{id}"), "alice"))
        .await;
    assert_eq!(status, 200);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn restricted_tokens_stay_inside_their_list(#[case] backend: Backend) {
    let mut app = app_or_skip!(backend);
    setup(&app).await;
    let (status, made) = make(
        &app,
        "alice",
        json!({"name": "ci", "scope": "write", "restrict": ["alice/secret"]}),
    )
    .await;
    assert_eq!(status, 201, "{made}");
    assert_eq!(made["restrict"], json!(["alice/secret"]));
    let secret = made["token"].as_str().expect("ok").to_string();
    app.tokens.insert("ci", secret.clone());
    let (status, admin) = make(
        &app,
        "admin",
        json!({"name": "ops", "scope": "admin", "restrict": ["bob"]}),
    )
    .await;
    assert_eq!(status, 201, "{admin}");
    app.tokens
        .insert("ops", admin["token"].as_str().expect("ok").to_string());

    // Inside: private reads and writes work (REST, Hub, page).
    assert_eq!(
        app.get_json("/api/v1/adapters/alice/secret", "ci").await.0,
        200
    );
    assert_eq!(app.get_json("/api/models/alice/secret", "ci").await.0, 200);
    assert_eq!(page(&app, "/alice/secret", &secret).await.0, 200);
    let (status, body) = app
        .upload("alice/secret", "ci", &synthetic_adapter(4, &["q_proj"], 2))
        .await;
    assert_eq!(status, 201, "{body}");

    // Outside: a private adapter of its own user answers as a missing one …
    for path in ["/api/v1/adapters/alice/other", "/api/models/alice/other"] {
        let (status, body) = app.get_json(path, "ci").await;
        assert_eq!(status, 404, "{path}: {body}");
        assert_eq!(
            app.get_json(path, "alice").await.0,
            200,
            "{path} unrestricted"
        );
    }
    assert_eq!(page(&app, "/alice/other", &secret).await.0, 404);
    // … and is missing from listings (public ones stay listed, as for anyone).
    let (_, list) = app.get_json("/api/v1/adapters?owner=alice", "ci").await;
    let names: Vec<&str> = list["items"]
        .as_array()
        .expect("ok")
        .iter()
        .map(|a| a["name"].as_str().expect("ok"))
        .collect();
    assert!(
        names.contains(&"secret") && names.contains(&"open"),
        "{names:?}"
    );
    assert!(!names.contains(&"other"), "{names:?}");
    let (_, html) = page(&app, "/?owner=alice", &secret).await;
    assert!(html.contains("alice/secret") && !html.contains("alice/other"));
    let (_, hub) = app.get_json("/api/models?author=alice", "ci").await;
    assert!(!hub.to_string().contains("alice/other"), "{hub}");
    // Writes outside: public → 403 naming the restriction, private → 404, new → 403.
    let (status, body) = app
        .upload("alice/open", "ci", &synthetic_adapter(4, &["q_proj"], 3))
        .await;
    assert_error(status, &body, (403, "forbidden"), "public outside");
    assert!(
        body["error"]["message"]
            .as_str()
            .expect("ok")
            .contains("restricted")
    );
    let (status, body) = app
        .upload("alice/other", "ci", &synthetic_adapter(4, &["q_proj"], 3))
        .await;
    assert_error(status, &body, (404, "adapter_not_found"), "private outside");
    let (status, body) = app.create_adapter("alice", "new", false, "ci").await;
    assert_error(status, &body, (403, "forbidden"), "create outside");
    let (status, body) = app
        .post_json("/api/repos/create", "ci", &json!({"name": "hubnew"}))
        .await;
    assert_eq!(status, 403, "Hub create outside: {body}");

    // A restricted admin token: bob's private adapter yes, alice's no, no token admin.
    assert_eq!(
        app.get_json("/api/v1/adapters/bob/bobs", "ops").await.0,
        200
    );
    assert_eq!(
        app.get_json("/api/v1/adapters/alice/other", "ops").await.0,
        404
    );
    assert_eq!(app.get_json("/api/v1/tokens?all=true", "ops").await.0, 403);
    let (_, list) = app.get_json("/api/v1/adapters?limit=100", "ops").await;
    let names: Vec<String> = list["items"]
        .as_array()
        .expect("ok")
        .iter()
        .map(|a| {
            format!(
                "{}/{}",
                a["owner"].as_str().expect("ok"),
                a["name"].as_str().expect("ok")
            )
        })
        .collect();
    assert!(names.contains(&"bob/bobs".to_string()), "{names:?}");
    assert!(names.contains(&"alice/open".to_string()), "{names:?}");
    assert!(!names.contains(&"alice/secret".to_string()), "{names:?}");
    assert!(!names.contains(&"alice/other".to_string()), "{names:?}");
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn admins_list_and_revoke_everyones(#[case] backend: Backend) {
    let mut app = app_or_skip!(backend);
    let (status, made) = make(
        &app,
        "bob",
        json!({"name": "bobs laptop", "scope": "write"}),
    )
    .await;
    assert_eq!(status, 201);
    let id = made["id"].as_str().expect("ok").to_string();
    app.tokens
        .insert("bobs", made["token"].as_str().expect("ok").to_string());

    // Others cannot see or revoke it: an unknown id.
    let (status, body) = app.get_json("/api/v1/tokens?user=bob", "alice").await;
    assert_error(status, &body, (403, "forbidden"), "alice lists bob's");
    let (status, body) = app
        .send(app.request(Method::DELETE, &format!("/api/v1/tokens/{id}"), "alice"))
        .await;
    assert_error(
        status,
        &body,
        (404, "token_not_found"),
        "alice revokes bob's",
    );
    let (status, body) = app
        .send(app.request(Method::DELETE, "/api/v1/tokens/no-such-id", "alice"))
        .await;
    assert_error(status, &body, (404, "token_not_found"), "unknown id");

    let (status, list) = app.get_json("/api/v1/tokens?user=bob", "admin").await;
    assert_eq!(status, 200);
    assert!(
        list["items"]
            .as_array()
            .expect("ok")
            .iter()
            .any(|t| t["id"] == json!(id))
    );
    let (status, all) = app.get_json("/api/v1/tokens?all=true", "admin").await;
    assert_eq!(status, 200);
    let users: std::collections::BTreeSet<&str> = all["items"]
        .as_array()
        .expect("ok")
        .iter()
        .map(|t| t["user"].as_str().expect("ok"))
        .collect();
    assert!(users.contains("alice") && users.contains("bob") && users.contains("root"));
    let (status, body) = app
        .get_json("/api/v1/tokens?user=bob&all=true", "admin")
        .await;
    assert_error(status, &body, (400, "invalid_query"), "both");

    // An admin makes a token for a new user, and revokes bob's.
    let (status, carol) = make(
        &app,
        "admin",
        json!({"name": "carol", "user": "carol", "scope": "write"}),
    )
    .await;
    assert_eq!(status, 201, "{carol}");
    assert_eq!(carol["user"], "carol");
    assert_eq!(carol["created_by"], "root");
    let (status, _) = app
        .send(app.request(Method::DELETE, &format!("/api/v1/tokens/{id}"), "admin"))
        .await;
    assert_eq!(status, 200);
    let (status, body) = app.get_json("/api/v1/adapters", "bobs").await;
    assert_error(status, &body, (401, "token_revoked"), "revoked by an admin");
}

#[test]
fn restrictions_parse_and_nest() {
    let r = Restriction::parse(&["alice".into(), "bob/x".into(), "alice".into()]).expect("ok");
    assert_eq!(r.entries(), vec!["alice", "bob/x"]);
    assert!(r.allows("alice", "any") && r.allows("bob", "x") && !r.allows("bob", "y"));
    let inner = Restriction::parse(&["alice/y".into(), "bob/x".into()]).expect("ok");
    assert!(inner.within(&r) && !r.within(&inner));
}

/// `quiver token create|list|revoke --server`: the secret alone on the last line of stdout.
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[tokio::test(flavor = "multi_thread")]
async fn cli_against_a_server(#[case] backend: Backend) {
    let app = app_or_skip!(backend);
    let run = |args: Vec<String>| {
        let out = std::process::Command::new(quiver_tests::quiver_bin())
            .args(&args)
            .env_remove("QUIVER_TOKEN")
            .env_remove("QUIVER_URL")
            .output()
            .expect("quiver");
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8")
    };
    let base = |cmd: &str| -> Vec<String> {
        vec![
            "token".into(),
            cmd.into(),
            "--server".into(),
            app.base.clone(),
            "--token".into(),
            app.token("alice").into(),
        ]
    };
    let mut args = base("create");
    args.extend(
        [
            "--name",
            "from-cli",
            "--scope",
            "read",
            "--expires-in-days",
            "7",
            "--restrict",
            "alice,bob/x",
        ]
        .map(String::from),
    );
    let out = tokio::task::block_in_place(|| run(args));
    let secret = out.lines().last().expect("a line").to_string();
    assert!(secret.starts_with("qvt_") && secret.len() == 68, "{out}");
    let listed = tokio::task::block_in_place(|| run(base("list")));
    let v: Value = serde_json::from_str(&listed).expect("JSON");
    let t = v["items"]
        .as_array()
        .expect("ok")
        .iter()
        .find(|t| t["name"] == "from-cli")
        .expect("listed")
        .clone();
    assert_eq!(t["restrict"], json!(["alice", "bob/x"]));
    assert!(!listed.contains(&secret[8..]));
    let mut args = base("invite");
    args.extend(["--user", "erin"].map(String::from));
    args[5] = app.token("admin").into();
    let out = tokio::task::block_in_place(|| run(args));
    assert!(
        out.lines()
            .last()
            .expect("ok")
            .starts_with("/signin?invite=qvi_"),
        "{out}"
    );
    let mut args = base("revoke");
    args.push(t["id"].as_str().expect("ok").to_string());
    tokio::task::block_in_place(|| run(args));
    let res = app
        .client
        .get(app.url("/api/v1/adapters"))
        .bearer_auth(&secret)
        .send()
        .await
        .expect("ok");
    assert_eq!(res.status().as_u16(), 401);
}

/// The tokens page: list, create (CSRF), revoke; a read session cannot make a write token.
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn tokens_page(#[case] backend: Backend) {
    let app = app_or_skip!(backend);
    let csrf = "ab".repeat(24);
    let cookies = |secret: &str| format!("quiver_session={secret}; quiver_csrf={csrf}");
    let post = |path: &str, secret: &str, form: Vec<(&str, String)>| {
        app.request(Method::POST, path, "")
            .header("Cookie", cookies(secret))
            .form(&form)
    };
    let alice = app.token("alice").to_string();
    let (status, html) = page(&app, "/settings/tokens", "").await;
    assert_eq!(status, 303, "anonymous: to sign in {html}");
    let res = app
        .request(Method::GET, "/settings/tokens", "")
        .header("Cookie", cookies(&alice))
        .send()
        .await
        .expect("ok");
    assert_eq!(res.status().as_u16(), 200);
    let html = res.text().await.expect("ok");
    assert!(html.contains("(this session)"), "{html}");
    assert!(!html.contains(&alice[8..]), "no secret on the page");

    // Without the CSRF token: refused.
    let res = post(
        "/settings/tokens",
        &alice,
        vec![("name", "x".into()), ("csrf", String::new())],
    )
    .send()
    .await
    .expect("ok");
    assert_eq!(res.status().as_u16(), 403);
    let res = post(
        "/settings/tokens",
        &alice,
        vec![
            ("csrf", csrf.clone()),
            ("name", "from the page".into()),
            ("scope", "write".into()),
            ("expires_in_days", "30".into()),
            ("restrict", "alice/open, alice/secret".into()),
        ],
    )
    .send()
    .await
    .expect("ok");
    assert_eq!(res.status().as_u16(), 201);
    let html = res.text().await.expect("ok");
    let start = html.find("qvt_").expect("secret shown once");
    let secret = html[start..start + 68].to_string();
    let (_, list) = app.get_json("/api/v1/tokens", "alice").await;
    let made = list["items"]
        .as_array()
        .expect("ok")
        .iter()
        .find(|t| t["name"] == "from the page")
        .expect("made")
        .clone();
    assert_eq!(made["restrict"], json!(["alice/open", "alice/secret"]));
    assert_eq!(made["scope"], "write");
    let (status, html) = page(&app, "/settings/tokens", &alice).await;
    assert_eq!(status, 200);
    assert!(html.contains("from the page") && !html.contains(&secret[8..]));

    // A bad expiry: the error page, 400.
    let res = post(
        "/settings/tokens",
        &alice,
        vec![
            ("csrf", csrf.clone()),
            ("name", "x".into()),
            ("expires_in_days", "99999".into()),
        ],
    )
    .send()
    .await
    .expect("ok");
    assert_eq!(res.status().as_u16(), 400);
    // A read session cannot make a write token.
    let res = post(
        "/settings/tokens",
        app.token("alice_read"),
        vec![
            ("csrf", csrf.clone()),
            ("name", "x".into()),
            ("scope", "write".into()),
        ],
    )
    .send()
    .await
    .expect("ok");
    assert_eq!(res.status().as_u16(), 403);

    // Revoke from the page: the token stops at once; bob cannot revoke alice's (404).
    let id = made["id"].as_str().expect("ok");
    let res = post(
        &format!("/settings/tokens/{id}/revoke"),
        app.token("bob"),
        vec![("csrf", csrf.clone())],
    )
    .send()
    .await
    .expect("ok");
    assert_eq!(res.status().as_u16(), 404);
    let res = post(
        &format!("/settings/tokens/{id}/revoke"),
        &alice,
        vec![("csrf", csrf.clone())],
    )
    .send()
    .await
    .expect("ok");
    assert_eq!(res.status().as_u16(), 303);
    let res = app
        .client
        .get(app.url("/api/v1/adapters"))
        .bearer_auth(&secret)
        .send()
        .await
        .expect("ok");
    assert_eq!(res.status().as_u16(), 401);
}

/// An admin invites a user; the one-time link makes their first token on the sign-in page.
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn invites_make_a_first_token_once(#[case] backend: Backend) {
    let app = app_or_skip!(backend);
    let invite = json!({"user": "carol", "scope": "write"});
    let (status, body) = app.post_json("/api/v1/invites", "alice", &invite).await;
    assert_error(status, &body, (403, "forbidden"), "not an admin");
    let (status, body) = app
        .post_json(
            "/api/v1/invites",
            "admin",
            &json!({"user": "carol", "expires_in_days": 31}),
        )
        .await;
    assert_error(status, &body, (400, "invalid_token_request"), "too long");
    let (status, made) = app.post_json("/api/v1/invites", "admin", &invite).await;
    assert_eq!(status, 201, "{made}");
    let link = made["link"].as_str().expect("ok").to_string();
    let secret = link
        .strip_prefix("/signin?invite=")
        .expect("link")
        .to_string();

    let (status, html) = page(&app, &link, "").await;
    assert_eq!(status, 200);
    assert!(html.contains("/signin/invite") && html.contains(&secret));
    let csrf = "cd".repeat(24);
    let redeem = || {
        app.request(Method::POST, "/signin/invite", "")
            .header("Cookie", format!("quiver_csrf={csrf}"))
            .form(&[
                ("csrf", csrf.as_str()),
                ("invite", secret.as_str()),
                ("name", "first"),
            ])
    };
    let res = redeem().send().await.expect("ok");
    assert_eq!(res.status().as_u16(), 201);
    let session = res
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|c| c.strip_prefix("quiver_session="))
        .map(|c| c.split(';').next().expect("ok").to_string())
        .expect("signed in");
    let html = res.text().await.expect("ok");
    assert!(html.contains(&session), "the secret shown once");
    let res = app
        .client
        .post(app.url("/api/v1/adapters"))
        .bearer_auth(&session)
        .json(&json!({"owner": "carol", "name": "x", "base_model": "quiver-test/tiny-llama"}))
        .send()
        .await
        .expect("ok");
    assert_eq!(res.status().as_u16(), 201, "carol writes with it");
    // Once only.
    let res = redeem().send().await.expect("ok");
    assert_eq!(res.status().as_u16(), 401);
    let (_, list) = app.get_json("/api/v1/tokens?user=carol", "admin").await;
    assert_eq!(list["items"].as_array().expect("ok").len(), 1);
    assert_eq!(list["items"][0]["created_by"], "root");

    // An expired invite (made in the store: the API refuses a past expiry).
    let old = format!("qvi_{}", "e".repeat(64));
    app.store
        .meta
        .insert_invite(
            "dave",
            Scope::Read,
            "root",
            now_ms() - 1,
            &quiver_api::auth::hash_token(&old),
        )
        .await
        .expect("invite");
    let res = app
        .request(Method::POST, "/signin/invite", "")
        .header("Cookie", format!("quiver_csrf={csrf}"))
        .form(&[
            ("csrf", csrf.as_str()),
            ("invite", old.as_str()),
            ("name", "x"),
        ])
        .send()
        .await
        .expect("ok");
    assert_eq!(res.status().as_u16(), 401, "expired invite");
}
