//! Organisation pages and commands (docs/web.md, docs/orgs.md): `/settings/orgs` (list, create),
//! `/settings/orgs/{org}` (members; add, change, remove, leave; CSRF on every form; a non-member
//! gets the missing organisation's page), the adapter page's transfer form, and
//! `quiver org …` / `quiver adapter transfer` against a server.

use quiver_tests::{Backend, TestApp, app_or_skip, synthetic_adapter};
use reqwest::Method;
use rstest::rstest;
use serde_json::{Value, json};

const CSRF: &str = "0123456789abcdef0123456789abcdef0123456789abcdef";

/// Status, `Location` and body of a page as `who` (a token key; empty: anonymous).
async fn page(app: &TestApp, path: &str, who: &str) -> (u16, String, String) {
    let mut rb = app.request(Method::GET, path, "");
    if !who.is_empty() {
        rb = rb.header("Cookie", format!("quiver_session={}", app.token(who)));
    }
    let res = rb.send().await.expect("page");
    let status = res.status().as_u16();
    let location = location(&res);
    (status, location, res.text().await.expect("body"))
}

fn location(res: &reqwest::Response) -> String {
    res.headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

/// A form posted as `who` with the CSRF cookie; `csrf` is what the form carries.
async fn post(
    app: &TestApp,
    path: &str,
    who: &str,
    csrf: &str,
    fields: &[(&str, &str)],
) -> (u16, String, String) {
    let mut form: Vec<(&str, &str)> = vec![("csrf", csrf)];
    form.extend_from_slice(fields);
    let res = app
        .request(Method::POST, path, "")
        .header(
            "Cookie",
            format!("quiver_session={}; quiver_csrf={CSRF}", app.token(who)),
        )
        .form(&form)
        .send()
        .await
        .expect("post");
    let status = res.status().as_u16();
    let location = location(&res);
    (status, location, res.text().await.expect("body"))
}

/// `user → role` of an organisation, through the API as an instance admin.
async fn members(app: &TestApp, org: &str) -> Vec<(String, String)> {
    let (status, v) = app.get_json(&format!("/api/v1/orgs/{org}"), "admin").await;
    assert_eq!(status, 200, "{v}");
    v["members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|m| {
            (
                m["user"].as_str().expect("user").to_string(),
                m["role"].as_str().expect("role").to_string(),
            )
        })
        .collect()
}

fn pair(user: &str, role: &str) -> (String, String) {
    (user.to_string(), role.to_string())
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn members_are_managed_from_the_org_page(#[case] backend: Backend) {
    let app = app_or_skip!(backend);

    // Anonymous: to sign in, for the list and for any organisation, existing or not.
    let (status, to, _) = page(&app, "/settings/orgs", "").await;
    assert_eq!(
        (status, to.as_str()),
        (303, "/signin?next=%2Fsettings%2Forgs")
    );
    let (status, to, _) = page(&app, "/settings/orgs/team-q7", "").await;
    assert_eq!(
        (status, to.as_str()),
        (303, "/signin?next=%2Fsettings%2Forgs%2Fteam-q7")
    );

    // Create from the page: the CSRF token is required, then it redirects to the new page.
    let (status, _, html) = post(&app, "/settings/orgs", "alice", "", &[("name", "team-q7")]).await;
    assert_eq!(status, 403, "{html}");
    assert_eq!(app.get_json("/api/v1/orgs/team-q7", "admin").await.0, 404);
    let (status, to, html) = post(
        &app,
        "/settings/orgs",
        "alice",
        CSRF,
        &[("name", "team-q7")],
    )
    .await;
    assert_eq!(
        (status, to.as_str()),
        (303, "/settings/orgs/team-q7"),
        "{html}"
    );
    assert_eq!(members(&app, "team-q7").await, vec![pair("alice", "admin")]);
    // A taken name: the error page, with the API's code.
    let (status, _, html) = post(&app, "/settings/orgs", "alice", CSRF, &[("name", "bob")]).await;
    assert_eq!(status, 409, "{html}");
    // A read session cannot create one (and is not offered the form).
    let (status, _, html) = page(&app, "/settings/orgs", "alice_read").await;
    assert_eq!(status, 200);
    assert!(!html.contains("Create organisation"), "{html}");
    let (status, _, _) = post(
        &app,
        "/settings/orgs",
        "alice_read",
        CSRF,
        &[("name", "team-q8")],
    )
    .await;
    assert_eq!(status, 403);

    // The list shows it with the role; the nav links the page.
    let (status, _, html) = page(&app, "/settings/orgs", "alice").await;
    assert_eq!(status, 200);
    assert!(
        html.contains(r#"<a href="/settings/orgs/team-q7">team-q7</a>"#),
        "{html}"
    );
    assert!(html.contains("<td>admin</td>"), "{html}");
    assert!(html.contains(r#"<a href="/settings/orgs">Organisations</a>"#));
    let (status, _, html) = page(&app, "/settings/orgs/team-q7", "alice").await;
    assert_eq!(status, 200);
    assert!(
        html.contains("Add a member") && html.contains("alice <em>(you)</em>"),
        "{html}"
    );

    // A non-member gets exactly the page a missing organisation gets (the name swapped).
    let (status, _, got) = page(&app, "/settings/orgs/team-q7", "bob").await;
    let (want_status, _, want) = page(&app, "/settings/orgs/gone-q7", "bob").await;
    assert_eq!((status, want_status), (404, 404));
    assert_eq!(got.replace("team-q7", "gone-q7"), want);
    assert!(got.contains("org_not_found"), "{got}");
    // Nor may a non-member change it through a form (the missing answer again).
    let (status, _, _) = post(
        &app,
        "/settings/orgs/team-q7/members",
        "bob",
        CSRF,
        &[("user", "bob"), ("role", "admin")],
    )
    .await;
    assert_eq!(status, 404);

    // An admin adds a member (CSRF checked first), changes the role, removes them.
    let (status, _, _) = post(
        &app,
        "/settings/orgs/team-q7/members",
        "alice",
        "ff",
        &[("user", "bob"), ("role", "write")],
    )
    .await;
    assert_eq!(status, 403);
    assert_eq!(members(&app, "team-q7").await.len(), 1);
    let (status, to, html) = post(
        &app,
        "/settings/orgs/team-q7/members",
        "alice",
        CSRF,
        &[("user", "bob"), ("role", "write")],
    )
    .await;
    assert_eq!(
        (status, to.as_str()),
        (303, "/settings/orgs/team-q7"),
        "{html}"
    );
    assert_eq!(
        members(&app, "team-q7").await,
        vec![pair("alice", "admin"), pair("bob", "write")]
    );
    // The member sees the page (no admin forms, a leave button).
    let (status, _, html) = page(&app, "/settings/orgs/team-q7", "bob").await;
    assert_eq!(status, 200, "{html}");
    assert!(
        !html.contains("Add a member") && html.contains("Leave team-q7"),
        "{html}"
    );
    // and cannot add anyone (403: a member, not an admin).
    let (status, _, _) = post(
        &app,
        "/settings/orgs/team-q7/members",
        "bob",
        CSRF,
        &[("user", "root"), ("role", "read")],
    )
    .await;
    assert_eq!(status, 403);
    let (status, _, _) = post(
        &app,
        "/settings/orgs/team-q7/members",
        "alice",
        CSRF,
        &[("user", "bob"), ("role", "read")],
    )
    .await;
    assert_eq!(status, 303);
    assert_eq!(
        members(&app, "team-q7").await,
        vec![pair("alice", "admin"), pair("bob", "read")]
    );
    let (_, _, html) = page(&app, "/settings/orgs/team-q7", "alice").await;
    assert!(
        html.contains(r#"<form method="post" action="/settings/orgs/team-q7/members/bob/remove">"#),
        "{html}"
    );
    // Bad input: an unknown role (400), a user who does not exist (404), the last admin (409).
    let (status, _, _) = post(
        &app,
        "/settings/orgs/team-q7/members",
        "alice",
        CSRF,
        &[("user", "bob"), ("role", "owner")],
    )
    .await;
    assert_eq!(status, 400);
    let (status, _, _) = post(
        &app,
        "/settings/orgs/team-q7/members",
        "alice",
        CSRF,
        &[("user", "nobody"), ("role", "read")],
    )
    .await;
    assert_eq!(status, 404);
    let (status, _, _) = post(
        &app,
        "/settings/orgs/team-q7/members",
        "alice",
        CSRF,
        &[("user", "alice"), ("role", "write")],
    )
    .await;
    assert_eq!(status, 409);
    let (status, to, _) = post(
        &app,
        "/settings/orgs/team-q7/members/bob/remove",
        "alice",
        CSRF,
        &[],
    )
    .await;
    assert_eq!((status, to.as_str()), (303, "/settings/orgs/team-q7"));
    assert_eq!(members(&app, "team-q7").await, vec![pair("alice", "admin")]);
    let (status, _, _) = page(&app, "/settings/orgs/team-q7", "bob").await;
    assert_eq!(status, 404, "a removed member is a non-member at once");
    let (status, _, _) = post(
        &app,
        "/settings/orgs/team-q7/members/bob/remove",
        "alice",
        CSRF,
        &[],
    )
    .await;
    assert_eq!(status, 404, "no such member");

    // A member leaves with the button (back to their list).
    let (status, _, _) = post(
        &app,
        "/settings/orgs/team-q7/members",
        "alice",
        CSRF,
        &[("user", "bob"), ("role", "read")],
    )
    .await;
    assert_eq!(status, 303);
    let (status, to, _) = post(
        &app,
        "/settings/orgs/team-q7/members/bob/remove",
        "bob",
        "",
        &[],
    )
    .await;
    assert_eq!((status, to.as_str()), (403, ""), "CSRF first");
    let (status, to, _) = post(
        &app,
        "/settings/orgs/team-q7/members/bob/remove",
        "bob",
        CSRF,
        &[],
    )
    .await;
    assert_eq!((status, to.as_str()), (303, "/settings/orgs"));
    assert_eq!(members(&app, "team-q7").await, vec![pair("alice", "admin")]);

    // An instance admin sees any organisation's page.
    let (status, _, html) = page(&app, "/settings/orgs/team-q7", "admin").await;
    assert_eq!(status, 200, "{html}");
    // The routes answer 405 with Allow for other methods.
    let res = app
        .request(Method::DELETE, "/settings/orgs/team-q7", "")
        .send()
        .await
        .expect("ok");
    assert_eq!(res.status().as_u16(), 405);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn adapters_move_from_the_adapter_page(#[case] backend: Backend) {
    let app = app_or_skip!(backend);
    let (status, v) = app
        .post_json("/api/v1/orgs", "alice", &json!({"name": "lab"}))
        .await;
    assert_eq!(status, 201, "{v}");
    app.adapter_with("alice/moving", &synthetic_adapter(4, &["q_proj"], 1))
        .await;
    let (status, v2) = app
        .upload(
            "alice/moving",
            "alice",
            &synthetic_adapter(4, &["q_proj"], 2),
        )
        .await;
    assert_eq!(status, 201, "{v2}");
    let (_, before) = app
        .get_json("/api/v1/adapters/alice/moving/versions", "alice")
        .await;
    let revisions = |v: &Value| -> Vec<(i64, String)> {
        v["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|x| {
                (
                    x["number"].as_i64().expect("number"),
                    x["revision"].as_str().expect("revision").to_string(),
                )
            })
            .collect()
    };
    let before = revisions(&before);
    assert_eq!(before.len(), 2);
    // The anonymous page is cached before the move.
    let (status, _, _) = page(&app, "/alice/moving", "").await;
    assert_eq!(status, 200);

    // Only those who administer the namespace get the form: alice does (offered lab), bob and
    // an anonymous reader do not.
    let (_, _, html) = page(&app, "/alice/moving", "alice").await;
    assert!(
        html.contains(r#"action="/alice/moving/transfer""#),
        "{html}"
    );
    assert!(html.contains(r#"<option value="lab">"#), "{html}");
    for who in ["bob", "alice_read", ""] {
        let (_, _, html) = page(&app, "/alice/moving", who).await;
        assert!(!html.contains("/alice/moving/transfer"), "{who}: {html}");
    }
    // Bob cannot move it (403), a stale form is refused (403), a namespace alice does not
    // administer is refused (403), and nothing moved.
    let (status, _, _) = post(
        &app,
        "/alice/moving/transfer",
        "bob",
        CSRF,
        &[("to", "bob")],
    )
    .await;
    assert_eq!(status, 403);
    let (status, _, _) = post(
        &app,
        "/alice/moving/transfer",
        "alice",
        "",
        &[("to", "lab")],
    )
    .await;
    assert_eq!(status, 403);
    let (status, _, _) = post(
        &app,
        "/alice/moving/transfer",
        "alice",
        CSRF,
        &[("to", "bob")],
    )
    .await;
    assert_eq!(status, 403);
    let (status, _, _) = post(
        &app,
        "/alice/nothing/transfer",
        "alice",
        CSRF,
        &[("to", "lab")],
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(
        app.get_json("/api/v1/adapters/alice/moving", "").await.0,
        200
    );

    let (status, to, html) = post(
        &app,
        "/alice/moving/transfer",
        "alice",
        CSRF,
        &[("to", "lab")],
    )
    .await;
    assert_eq!((status, to.as_str()), (303, "/lab/moving"), "{html}");
    // The old address is gone for everyone (the cached anonymous page too) …
    for who in ["", "alice", "bob"] {
        let (status, _, _) = page(&app, "/alice/moving", who).await;
        assert_eq!(status, 404, "{who}");
    }
    assert_eq!(
        app.get_json("/api/v1/adapters/alice/moving", "alice")
            .await
            .0,
        404
    );
    // … and the new one shows the same versions.
    let (status, _, html) = page(&app, "/lab/moving", "alice").await;
    assert_eq!(status, 200);
    for (_, revision) in &before {
        assert!(html.contains(&revision[..10]), "{revision}: {html}");
    }
    let (status, after) = app
        .get_json("/api/v1/adapters/lab/moving/versions", "alice")
        .await;
    assert_eq!(status, 200, "{after}");
    assert_eq!(revisions(&after), before);
    let (status, _, _) = page(&app, "/lab/moving/versions/1", "").await;
    assert_eq!(status, 200);
    // As an organisation admin, alice is offered her own namespace back.
    let (_, _, html) = page(&app, "/lab/moving", "alice").await;
    assert!(html.contains(r#"<option value="alice">"#), "{html}");
}

/// `quiver org …` and `quiver adapter transfer` through the built binary.
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[tokio::test(flavor = "multi_thread")]
async fn cli_round_trip(#[case] backend: Backend) {
    let app = app_or_skip!(backend);
    app.adapter_with("alice/cli-moving", &synthetic_adapter(4, &["q_proj"], 3))
        .await;
    let run = |who: &str, args: &[&str]| {
        let out = std::process::Command::new(quiver_tests::quiver_bin())
            .args(args)
            .args(["--server", &app.base, "--token", app.token(who)])
            .env_remove("QUIVER_TOKEN")
            .env_remove("QUIVER_URL")
            .output()
            .expect("quiver");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let json = |(ok, out, err): (bool, String, String)| -> Value {
        assert!(ok, "{out} {err}");
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
    };
    let run = |who: &str, args: &[&str]| tokio::task::block_in_place(|| run(who, args));

    let v = json(run("alice", &["org", "create", "cli-lab"]));
    assert_eq!(v["name"], "cli-lab");
    assert_eq!(v["role"], "admin");
    let v = json(run("alice", &["org", "list"]));
    assert_eq!(v["items"], json!([{"org": "cli-lab", "role": "admin"}]));
    json(run(
        "alice",
        &["org", "member", "set", "cli-lab", "bob", "--role", "write"],
    ));
    let v = json(run("bob", &["org", "show", "cli-lab"]));
    assert_eq!(v["role"], "write");
    let users: Vec<(&str, &str)> = v["members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|m| {
            (
                m["user"].as_str().unwrap_or(""),
                m["role"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(users, vec![("alice", "admin"), ("bob", "write")]);
    // Errors print the server's message and exit non-zero.
    let (ok, _, err) = run(
        "bob",
        &["org", "member", "set", "cli-lab", "root", "--role", "read"],
    );
    assert!(!ok && err.contains("(403, forbidden)"), "{err}");
    let (ok, _, err) = run(
        "alice",
        &["org", "member", "set", "cli-lab", "bob", "--role", "owner"],
    );
    assert!(!ok && err.contains("owner"), "clap refuses the role: {err}");
    json(run("alice", &["org", "member", "remove", "cli-lab", "bob"]));
    let (ok, _, err) = run("bob", &["org", "show", "cli-lab"]);
    assert!(!ok && err.contains("org_not_found"), "{err}");
    assert!(err.lines().any(|l| l.starts_with("error: ")), "{err}");

    // The adapter moves into the organisation, and back.
    let v = json(run(
        "alice",
        &["adapter", "transfer", "alice/cli-moving", "--to", "cli-lab"],
    ));
    assert_eq!(v["id"], "cli-lab/cli-moving");
    assert_eq!(
        app.get_json("/api/v1/adapters/alice/cli-moving", "alice")
            .await
            .0,
        404
    );
    let (ok, _, err) = run(
        "bob",
        &["adapter", "transfer", "cli-lab/cli-moving", "--to", "bob"],
    );
    assert!(!ok, "{err}");
    let (ok, _, err) = run(
        "alice",
        &["adapter", "transfer", "cli-moving", "--to", "alice"],
    );
    assert!(!ok && err.contains("OWNER/NAME"), "{err}");
    let v = json(run(
        "alice",
        &["adapter", "transfer", "cli-lab/cli-moving", "--to", "alice"],
    ));
    assert_eq!(v["id"], "alice/cli-moving");
}
