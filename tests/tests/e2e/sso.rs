//! Sign-in through an authenticating proxy (docs/sso.md): the user header is honoured on the web
//! pages only from `--auth-proxy-trusted` addresses (the test client is 127.0.0.1), creates the
//! user on first visit, wins over a leftover session cookie, is ignored on `/api`, refuses bad
//! names, keeps the mapped organisations in step with the groups header (one audit entry per
//! change, none for a repeated visit), and `serve` refuses a header without a trusted list.

use std::sync::Arc;

use quiver_api::auth_proxy::ProxyAuth;
use quiver_api::config::HttpOptions;
use quiver_store::NamespaceKind;
use quiver_tests::{Backend, TestApp, spawn_app_with};
use reqwest::Method;
use reqwest::header::SET_COOKIE;
use rstest::rstest;
use serde_json::{Value, json};

const USER: &str = "X-Forwarded-User";
const EMAIL: &str = "X-Forwarded-Email";
const GROUPS: &str = "X-Forwarded-Groups";

/// A server whose proxy sign-in trusts `trusted`, with the groups header and `map` if given.
async fn proxied_app(backend: Backend, trusted: &str, map: Option<&str>) -> Option<TestApp> {
    let auth = ProxyAuth::from_flags(
        Some(USER),
        &trusted.split(',').map(str::to_owned).collect::<Vec<_>>(),
        Some(EMAIL),
        Some(GROUPS),
        map,
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

/// GET a page with these extra headers; returns status, Set-Cookie pairs and body.
async fn page(app: &TestApp, path: &str, headers: &[(&str, &str)]) -> (u16, Vec<String>, String) {
    let mut rb = app.request(Method::GET, path, "");
    for (k, v) in headers {
        rb = rb.header(*k, *v);
    }
    let res = rb.send().await.expect("page");
    let status = res.status().as_u16();
    let cookies = res
        .headers()
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or_default().to_string())
        .collect();
    (status, cookies, res.text().await.expect("body"))
}

fn signed_in_as(html: &str) -> Option<String> {
    let at = html.find("Signed in as <strong>")? + "Signed in as <strong>".len();
    let end = html[at..].find("</strong>")?;
    Some(html[at..at + end].to_string())
}

async fn audit(app: &TestApp, query: &str) -> Vec<Value> {
    let (status, body) = app
        .get_json(&format!("/api/v1/audit?{query}"), "admin")
        .await;
    assert_eq!(status, 200, "{body}");
    body["items"].as_array().expect("items").clone()
}

/// erin's `member.set` and `member.remove` entries.
async fn member_entries(app: &TestApp) -> (Vec<Value>, Vec<Value>) {
    (
        audit(app, "action=member.set&actor=erin").await,
        audit(app, "action=member.remove&actor=erin").await,
    )
}

async fn kind(app: &TestApp, name: &str) -> Option<NamespaceKind> {
    app.store.meta.namespace_kind(name).await.expect("kind")
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn the_header_is_honoured_from_a_trusted_address_on_pages_only(#[case] backend: Backend) {
    let Some(app) = proxied_app(backend, "127.0.0.1/32,::1", None).await else {
        return;
    };
    // First visit creates the user and writes one `signin` entry (token id "proxy").
    assert_eq!(kind(&app, "carol").await, None);
    let carol = [(USER, "Carol"), (EMAIL, "carol@example.com")];
    let (status, _, html) = page(&app, "/", &carol).await;
    assert_eq!(status, 200);
    assert_eq!(
        signed_in_as(&html).as_deref(),
        Some("carol"),
        "canonical name"
    );
    assert_eq!(kind(&app, "carol").await, Some(NamespaceKind::User));
    assert_eq!(page(&app, "/jobs", &carol).await.0, 200);
    let signins = audit(&app, "action=signin&actor=carol").await;
    assert_eq!(
        signins.len(),
        1,
        "once per process and interval: {signins:?}"
    );
    assert_eq!(signins[0]["token_id"], "proxy");
    assert_eq!(signins[0]["target"], "carol");
    assert_eq!(signins[0]["after"]["email"], "carol@example.com");
    assert_eq!(signins[0]["after"]["created"], true);
    assert_eq!(signins[0]["client_addr"], "127.0.0.1");

    // Their private adapter is theirs on the pages, a 404 to anonymous visitors.
    let (status, body) = app.create_adapter("carol", "diary", true, "admin").await;
    assert_eq!(status, 201, "{body}");
    let (status, _, html) = page(&app, "/carol/diary", &carol).await;
    assert_eq!(status, 200);
    assert!(html.contains("carol/diary"));
    assert_eq!(page(&app, "/carol/diary", &[]).await.0, 404);

    // The proxy's identity wins over a leftover session cookie of another user.
    let bobs_cookie = format!("quiver_session={}", app.token("bob"));
    let (_, _, html) = page(&app, "/", &[(USER, "carol"), ("Cookie", &bobs_cookie)]).await;
    assert_eq!(signed_in_as(&html).as_deref(), Some("carol"));
    let (_, _, html) = page(&app, "/", &[("Cookie", &bobs_cookie)]).await;
    assert_eq!(
        signed_in_as(&html).as_deref(),
        Some("bob"),
        "no header: the cookie"
    );

    // The sign-in and sign-out pages say the proxy holds the session.
    let (_, _, html) = page(&app, "/signin", &carol).await;
    assert!(
        html.contains("signed in as <strong>carol</strong> through"),
        "{html}"
    );
    assert!(!html.contains("name=\"token\""));
    let (_, _, html) = page(&app, "/signout", &carol).await;
    assert!(html.contains("Sign out at the proxy"), "{html}");
    assert!(!html.contains("action=\"/signout\""));

    // A form works (CSRF is the double-submit cookie): the tokens page makes carol an API token,
    // audited as carol with the token id "proxy".
    let (status, cookies, html) = page(&app, "/settings/tokens", &carol).await;
    assert_eq!(status, 200);
    let csrf_cookie = cookies.join("; ");
    assert!(csrf_cookie.starts_with("quiver_csrf="), "{csrf_cookie}");
    let at = html.find("name=\"csrf\" value=\"").expect("csrf field") + 19;
    let csrf = html[at..at + 48].to_string();
    let res = app
        .request(Method::POST, "/settings/tokens", "")
        .header(USER, "carol")
        .header("Cookie", &csrf_cookie)
        .form(&[("name", "laptop"), ("scope", "write"), ("csrf", &csrf)])
        .send()
        .await
        .expect("post");
    assert_eq!(res.status(), 201);
    let html = res.text().await.expect("body");
    let at = html
        .find("<pre><code>qvt_")
        .expect("the new secret is shown once")
        + "<pre><code>".len();
    let secret = &html[at..at + 68];
    let made = audit(&app, "action=token.create&actor=carol").await;
    assert_eq!(made.len(), 1);
    assert_eq!(made[0]["token_id"], "proxy");
    // Without the CSRF token the form is refused.
    let res = app
        .request(Method::POST, "/settings/tokens", "")
        .header(USER, "carol")
        .form(&[("name", "x"), ("csrf", "")])
        .send()
        .await
        .expect("post");
    assert_eq!(res.status(), 403);

    // `/api` never reads the header: anonymous there, even from a trusted address; the token
    // made on the page works.
    let res = app
        .request(Method::GET, "/api/v1/adapters/carol/diary", "")
        .header(USER, "carol")
        .send()
        .await
        .expect("api");
    assert_eq!(res.status(), 404);
    let res = app
        .request(Method::GET, "/api/v1/tokens", "")
        .header(USER, "carol")
        .send()
        .await
        .expect("api");
    assert_eq!(res.status(), 401);
    let res = app
        .client
        .get(app.url("/api/v1/adapters/carol/diary"))
        .bearer_auth(secret)
        .send()
        .await
        .expect("api");
    assert_eq!(res.status(), 200);

    // An admin can now add the user to an organisation.
    let (status, body) = app
        .post_json(
            "/api/v1/orgs",
            "admin",
            &json!({"name": "acme", "admin": "alice"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = app
        .send(
            app.request(Method::PUT, "/api/v1/orgs/acme/members/carol", "admin")
                .json(&json!({"role": "read"})),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    // Bad names are anonymous (and create nothing): reserved, an organisation's, malformed,
    // oversized, non-ASCII, sent twice.
    let long = "a".repeat(300);
    for bad in ["api", "acme", "not valid!", "", long.as_str(), "-x"] {
        let (status, _, html) = page(&app, "/", &[(USER, bad)]).await;
        assert_eq!(status, 200, "{bad:?}");
        assert_eq!(signed_in_as(&html), None, "{bad:?}");
    }
    assert_eq!(kind(&app, "acme").await, Some(NamespaceKind::Org));
    assert_eq!(kind(&app, "api").await, None);
    let res = app
        .request(Method::GET, "/", "")
        .header(USER, "carol")
        .header(USER, "bob")
        .send()
        .await
        .expect("page");
    let html = res.text().await.expect("body");
    assert_eq!(signed_in_as(&html), None, "two user headers");
    let res = app
        .request(Method::GET, "/", "")
        .header(
            USER,
            reqwest::header::HeaderValue::from_bytes(b"caf\xc3\xa9").expect("bytes"),
        )
        .send()
        .await
        .expect("page");
    assert_eq!(signed_in_as(&res.text().await.expect("body")), None);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn the_header_is_ignored_from_an_untrusted_address(#[case] backend: Backend) {
    // The client is 127.0.0.1, outside these networks.
    let Some(app) = proxied_app(backend, "10.0.0.0/8,fd00::/8", None).await else {
        return;
    };
    let dave = [(USER, "dave")];
    let (status, _, html) = page(&app, "/", &dave).await;
    assert_eq!(status, 200);
    assert_eq!(signed_in_as(&html), None);
    assert_eq!(kind(&app, "dave").await, None, "nobody was created");
    assert!(audit(&app, "action=signin").await.is_empty());
    // A private adapter stays hidden; the header cannot name an existing user either.
    assert_eq!(
        app.create_adapter("alice", "hidden", true, "alice").await.0,
        201
    );
    assert_eq!(page(&app, "/alice/hidden", &[(USER, "alice")]).await.0, 404);
    // A session cookie still works as usual.
    let cookie = format!("quiver_session={}", app.token("alice"));
    let (status, _, html) =
        page(&app, "/alice/hidden", &[(USER, "bob"), ("Cookie", &cookie)]).await;
    assert_eq!(status, 200);
    assert_eq!(signed_in_as(&html).as_deref(), Some("alice"));
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn the_group_map_keeps_mapped_organisations_in_step(#[case] backend: Backend) {
    let Some(app) = proxied_app(
        backend,
        "127.0.0.1",
        Some("ml-team=acme:write,ml-leads=acme:admin,ghosts=ghost:read"),
    )
    .await
    else {
        return;
    };
    let (status, body) = app
        .post_json(
            "/api/v1/orgs",
            "admin",
            &json!({"name": "acme", "admin": "alice"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = app.create_adapter("acme", "secret", true, "alice").await;
    assert_eq!(status, 201, "{body}");
    // An organisation the map names but the group map does not reach stays as it is.
    let (status, body) = app
        .post_json(
            "/api/v1/orgs",
            "admin",
            &json!({"name": "other", "admin": "alice"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");

    // First visit: the user is created and made a `write` member of acme (ghost does not exist:
    // a warning, nothing else).
    let visit = [
        (USER, "erin"),
        (GROUPS, "ml-team, ghosts"),
        (GROUPS, "unmapped"),
    ];
    let (status, _, html) = page(&app, "/acme/secret", &visit).await;
    assert_eq!(status, 200, "{html}");
    let (status, body) = app.get_json("/api/v1/orgs/acme", "admin").await;
    assert_eq!(status, 200, "{body}");
    let role = |body: &Value, user: &str| {
        body["members"]
            .as_array()
            .expect("members")
            .iter()
            .find(|m| m["user"] == user)
            .map(|m| m["role"].as_str().unwrap_or_default().to_string())
    };
    assert_eq!(role(&body, "erin").as_deref(), Some("write"), "{body}");
    let all = audit(&app, "actor=erin").await;
    let (set, removed) = member_entries(&app).await;
    assert_eq!(set.len(), 1, "{all:?}");
    assert_eq!(set[0]["token_id"], "proxy");
    assert!(removed.is_empty());

    // The same visit again writes nothing.
    let before = audit(&app, "actor=erin").await.len();
    for _ in 0..3 {
        assert_eq!(page(&app, "/acme/secret", &visit).await.0, 200);
    }
    assert_eq!(audit(&app, "actor=erin").await.len(), before, "no writes");

    // A higher group raises the role (one entry).
    let lead = [(USER, "erin"), (GROUPS, "ml-team,ml-leads")];
    assert_eq!(page(&app, "/acme/secret", &lead).await.0, 200);
    let (_, body) = app.get_json("/api/v1/orgs/acme", "admin").await;
    assert_eq!(role(&body, "erin").as_deref(), Some("admin"));
    assert_eq!(member_entries(&app).await.0.len(), 2);

    // Hand-managed organisations are untouched: the admin adds erin to `other`.
    let (status, body) = app
        .send(
            app.request(Method::PUT, "/api/v1/orgs/other/members/erin", "admin")
                .json(&json!({"role": "read"})),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    // The groups are gone: the membership of acme goes (one entry), `other` stays, and the
    // private adapter of acme is hidden again.
    let (status, _, _) = page(&app, "/acme/secret", &[(USER, "erin")]).await;
    assert_eq!(status, 404);
    let (_, body) = app.get_json("/api/v1/orgs/acme", "admin").await;
    assert_eq!(role(&body, "erin"), None, "{body}");
    let (_, body) = app.get_json("/api/v1/orgs/other", "admin").await;
    assert_eq!(role(&body, "erin").as_deref(), Some("read"), "{body}");
    let (set, removed) = member_entries(&app).await;
    assert_eq!((set.len(), removed.len()), (2, 1));
    assert_eq!(removed[0]["token_id"], "proxy");
    let before = audit(&app, "actor=erin").await.len();
    assert_eq!(page(&app, "/", &[(USER, "erin")]).await.0, 200);
    assert_eq!(audit(&app, "actor=erin").await.len(), before, "no writes");

    // The last admin is not removed by a missing group: logged, skipped, the page still works.
    let (status, body) = app
        .send(app.request(Method::DELETE, "/api/v1/orgs/acme/members/alice", "admin"))
        .await;
    assert_eq!(status, 409, "alice is acme's last admin: {body}");
    assert_eq!(page(&app, "/", &lead).await.0, 200);
    let (status, _) = app
        .send(app.request(Method::DELETE, "/api/v1/orgs/acme/members/alice", "admin"))
        .await;
    assert_eq!(status, 204, "erin is an admin now, so alice may go");
    assert_eq!(page(&app, "/", &[(USER, "erin")]).await.0, 200);
    let (_, body) = app.get_json("/api/v1/orgs/acme", "admin").await;
    assert_eq!(
        role(&body, "erin").as_deref(),
        Some("admin"),
        "the last admin stays: {body}"
    );

    // An unusable groups header (too many groups) changes nothing.
    let many = (0..600)
        .map(|i| format!("g{i}"))
        .collect::<Vec<_>>()
        .join(",");
    let before = audit(&app, "actor=erin").await.len();
    assert_eq!(
        page(&app, "/", &[(USER, "erin"), (GROUPS, &many)]).await.0,
        200
    );
    assert_eq!(audit(&app, "actor=erin").await.len(), before);
}

/// `quiver serve` refuses a user header without a trusted list, and malformed settings, before
/// it opens anything.
#[test]
fn serve_refuses_a_header_without_a_trusted_list() {
    let dir = tempfile::tempdir().expect("dir");
    let run = |extra: &[&str]| {
        let out = std::process::Command::new(quiver_tests::quiver_bin())
            .args(["serve", "--bind", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path())
            .args(extra)
            .env_remove("QUIVER_AUTH_PROXY_TRUSTED")
            .env_remove("QUIVER_AUTH_PROXY_HEADER")
            .output()
            .expect("quiver");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = run(&["--auth-proxy-header", USER]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("--auth-proxy-header X-Forwarded-User needs --auth-proxy-trusted"),
        "{err}"
    );
    for (flags, says) in [
        (
            vec![
                "--auth-proxy-header",
                USER,
                "--auth-proxy-trusted",
                "10.0.0.1/8",
            ],
            "bits set past",
        ),
        (
            vec![
                "--auth-proxy-header",
                USER,
                "--auth-proxy-trusted",
                "0.0.0.0/0",
            ],
            "trusts every address",
        ),
        (
            vec!["--auth-proxy-trusted", "127.0.0.1"],
            "need --auth-proxy-header",
        ),
        (
            vec![
                "--auth-proxy-header",
                USER,
                "--auth-proxy-trusted",
                "127.0.0.1",
                "--auth-proxy-groups-header",
                GROUPS,
                "--auth-proxy-group-map",
                "ml-team=acme:owner",
            ],
            "not one of read, write, admin",
        ),
    ] {
        let (code, err) = run(&flags);
        assert_eq!(code, Some(1), "{flags:?}: {err}");
        assert!(err.contains(says), "{flags:?}: {err}");
    }
    assert!(
        std::fs::read_dir(dir.path()).expect("dir").next().is_none(),
        "nothing was created"
    );
}
