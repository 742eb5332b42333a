//! Issue 23's whole story on one server, both backends: an admin creates an organisation and
//! invites a colleague, who signs in through the company's proxy, makes a token, pushes a private
//! adapter to the organisation and may not move its protected `prod` alias (the organisation's
//! admin may); an auditor sees every step in the audit log; the colleague departs and their
//! token, proxy sign-in and membership stop at once.

use std::sync::Arc;

use quiver_api::auth_proxy::ProxyAuth;
use quiver_api::config::HttpOptions;
use quiver_tests::{Backend, TestApp, spawn_app_with, synthetic_adapter};
use reqwest::Method;
use reqwest::header::SET_COOKIE;
use rstest::rstest;
use serde_json::{Value, json};

const USER: &str = "X-Forwarded-User";
const GROUPS: &str = "X-Forwarded-Groups";

async fn app(backend: Backend) -> Option<TestApp> {
    let auth = ProxyAuth::from_flags(
        Some(USER),
        &["127.0.0.1/32".to_string()],
        None,
        Some(GROUPS),
        Some("ml-team=acme:write"),
    )
    .expect("valid flags")
    .expect("proxy sign-in on");
    spawn_app_with(
        backend,
        HttpOptions {
            auth_proxy: Some(Arc::new(auth)),
            ..HttpOptions::default()
        },
    )
    .await
}

/// A page as erin through the proxy: status, Set-Cookie pairs, body.
async fn as_erin(app: &TestApp, path: &str) -> (u16, String, String) {
    let res = app
        .request(Method::GET, path, "")
        .header(USER, "erin")
        .header(GROUPS, "ml-team,everyone")
        .send()
        .await
        .expect("page");
    let status = res.status().as_u16();
    let cookies: Vec<String> = res
        .headers()
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or_default().to_string())
        .collect();
    (status, cookies.join("; "), res.text().await.expect("body"))
}

async fn actions(app: &TestApp, query: &str) -> Vec<String> {
    let (status, body) = app
        .get_json(&format!("/api/v1/audit?limit=200&{query}"), "admin")
        .await;
    assert_eq!(status, 200, "{body}");
    body["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|e| e["action"].as_str().expect("action").to_string())
        .collect()
}

async fn put(app: &TestApp, path: &str, who: &str, body: Value) -> (u16, Value) {
    app.send(app.request(Method::PUT, path, who).json(&body))
        .await
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn a_team_from_invite_to_departure(#[case] backend: Backend) {
    let Some(mut app) = app(backend).await else {
        return;
    };
    // 1. The admin (root) creates acme and invites erin.
    let (status, org) = app
        .post_json("/api/v1/orgs", "admin", &json!({"name": "acme"}))
        .await;
    assert_eq!(status, 201, "{org}");
    let (status, invite) = app
        .post_json(
            "/api/v1/invites",
            "admin",
            &json!({"user": "erin", "scope": "write"}),
        )
        .await;
    assert_eq!(status, 201, "{invite}");

    // 2. erin signs in through the proxy; her group makes her a write member of acme.
    let (status, csrf_cookie, html) = as_erin(&app, "/settings/tokens").await;
    assert_eq!(status, 200);
    assert!(html.contains("<strong>erin</strong>"), "signed in as erin");
    let (status, me) = app.get_json("/api/v1/orgs/acme", "admin").await;
    assert_eq!(status, 200);
    let erin = me["members"]
        .as_array()
        .expect("members")
        .iter()
        .find(|m| m["user"] == "erin")
        .expect("erin is a member")
        .clone();
    assert_eq!(erin["role"], "write");

    // 3. She makes a token on the tokens page.
    let at = html.find("name=\"csrf\" value=\"").expect("csrf field") + 19;
    let csrf = html[at..at + 48].to_string();
    let res = app
        .request(Method::POST, "/settings/tokens", "")
        .header(USER, "erin")
        .header(GROUPS, "ml-team")
        .header("Cookie", &csrf_cookie)
        .form(&[("name", "laptop"), ("scope", "write"), ("csrf", &csrf)])
        .send()
        .await
        .expect("post");
    assert_eq!(res.status(), 201);
    let html = res.text().await.expect("body");
    let at = html.find("<pre><code>qvt_").expect("the secret, once") + "<pre><code>".len();
    app.tokens.insert("erin", html[at..at + 68].to_string());

    // 4. She pushes a private adapter to acme.
    assert_eq!(app.create_adapter("acme", "sql", true, "erin").await.0, 201);
    for seed in [1, 2] {
        let (status, v) = app
            .upload("acme/sql", "erin", &synthetic_adapter(4, &["q_proj"], seed))
            .await;
        assert_eq!(status, 201, "{v}");
    }
    let (status, _) = app.get_json("/api/v1/adapters/acme/sql", "bob").await;
    assert_eq!(status, 404, "private to acme");

    // 5. The org's admin sets and protects prod; erin, a write member, may not move it.
    let prod = "/api/v1/adapters/acme/sql/refs/prod";
    assert_eq!(put(&app, prod, "admin", json!({"version": 1})).await.0, 200);
    let (status, body) = put(&app, &format!("{prod}/protection"), "admin", json!({})).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = put(&app, prod, "erin", json!({"version": 2})).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "alias_protected");
    assert!(
        body["error"]["message"]
            .as_str()
            .expect("message")
            .contains("only admins of the namespace acme"),
        "{body}"
    );
    let (status, _) = put(&app, &format!("{prod}/protection"), "erin", json!({})).await;
    assert_eq!(status, 403, "nor unprotect it");
    let (_, v) = app
        .get_json("/api/v1/adapters/acme/sql/versions/prod", "erin")
        .await;
    assert_eq!(v["number"], 1, "prod did not move");
    // Nor delete the adapter, which would take the protected alias with it.
    let (status, body) = app
        .send(app.request(Method::DELETE, "/api/v1/adapters/acme/sql", "erin"))
        .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "alias_protected");
    assert_eq!(put(&app, prod, "admin", json!({"version": 2})).await.0, 200);

    // 6. The auditor sees all of it, the refused moves not at all.
    let acme = actions(&app, "owner=acme").await;
    for expected in [
        "org.create",
        "member.set",
        "adapter.create",
        "version.publish",
        "alias.set",
        "alias.protect",
    ] {
        assert!(
            acme.contains(&expected.to_string()),
            "{expected} in {acme:?}"
        );
    }
    assert_eq!(
        acme.iter().filter(|a| *a == "alias.set").count(),
        2,
        "{acme:?}"
    );
    let erins = actions(&app, "actor=erin").await;
    for expected in ["signin", "token.create", "member.set", "adapter.create"] {
        assert!(
            erins.contains(&expected.to_string()),
            "{expected} in {erins:?}"
        );
    }
    assert!(actions(&app, "action=invite.create").await.len() == 1);

    // 7. erin departs: her token, her proxy sign-in and her membership stop at once.
    let (status, gone) = app
        .post_json("/api/v1/users/erin/deactivate", "admin", &json!({}))
        .await;
    assert_eq!(status, 200, "{gone}");
    assert_eq!(gone["tokens_revoked"], 1);
    assert_eq!(gone["orgs_left"], json!(["acme"]));
    let (status, body) = app.get_json("/api/v1/adapters/acme/sql", "erin").await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["code"], "token_revoked");
    let (status, _, html) = as_erin(&app, "/acme/sql").await;
    assert_eq!(status, 404, "the proxy's header no longer signs her in");
    assert!(!html.contains("<strong>erin</strong>"));
    let (_, org) = app.get_json("/api/v1/orgs/acme", "admin").await;
    assert!(
        !org["members"].to_string().contains("erin"),
        "the group map does not bring her back: {org}"
    );
    assert_eq!(actions(&app, "action=user.deactivate").await.len(), 1);
}
