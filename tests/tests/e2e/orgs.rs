//! Organisations (docs/orgs.md) on every surface: members see the organisation's private
//! adapters by any role and write them with `write` or `admin`; a non-member gets the answer a
//! missing adapter gets (REST, Hub, pages, merge inputs); removal holds from the next request
//! (cached listing included); transfer keeps versions, revisions, aliases and lineage.

use std::time::Duration;

use quiver_api::auth::new_token;
use quiver_store::Scope;
use quiver_tests::{Backend, TestApp, app_or_skip, assert_error, synthetic_adapter};
use reqwest::Method;
use rstest::rstest;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(180);

/// Adds a user with a token of `scope` under the key `key`.
async fn user(app: &mut TestApp, key: &'static str, name: &str, scope: Scope) {
    let (secret, hash) = new_token();
    app.store
        .meta
        .create_token(name, scope, &hash)
        .await
        .expect("token");
    app.tokens.insert(key, secret);
}

async fn put_member(app: &TestApp, org: &str, user: &str, role: &str, who: &str) -> (u16, Value) {
    app.send(
        app.request(
            Method::PUT,
            &format!("/api/v1/orgs/{org}/members/{user}"),
            who,
        )
        .json(&json!({ "role": role })),
    )
    .await
}

async fn page(app: &TestApp, path: &str, who: &str) -> u16 {
    let mut rb = app.client.get(app.url(path));
    if !who.is_empty() {
        rb = rb.header("Cookie", format!("quiver_session={}", app.token(who)));
    }
    rb.send().await.expect("page").status().as_u16()
}

/// acme: alice admin, bob read, carol write; dave is no member. acme/secret is private with
/// one version.
async fn setup(app: &mut TestApp) {
    user(app, "carol", "carol", Scope::Write).await;
    user(app, "dave", "dave", Scope::Write).await;
    let (status, org) = app
        .post_json("/api/v1/orgs", "alice", &json!({"name": "acme"}))
        .await;
    assert_eq!(status, 201, "{org}");
    assert_eq!(org["role"], "admin");
    assert_eq!(org["members"][0]["user"], "alice");
    for (u, role) in [("bob", "read"), ("carol", "write")] {
        let (status, body) = put_member(app, "acme", u, role, "alice").await;
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(
        app.create_adapter("acme", "secret", true, "carol").await.0,
        201
    );
    let (status, body) = app
        .upload(
            "acme/secret",
            "carol",
            &synthetic_adapter(4, &["q_proj"], 1),
        )
        .await;
    assert_eq!(status, 201, "{body}");
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn members_see_and_write_by_role_on_every_surface(#[case] backend: Backend) {
    let mut app = app_or_skip!(backend);
    setup(&mut app).await;

    // The namespace is shared: an organisation cannot take a user's name, nor the reverse.
    let (status, body) = app
        .post_json("/api/v1/orgs", "alice", &json!({"name": "bob"}))
        .await;
    assert_error(status, &body, (409, "conflict"), "a user's name");
    let (status, body) = app
        .post_json(
            "/api/v1/tokens",
            "admin",
            &json!({"name": "t", "user": "acme"}),
        )
        .await;
    assert_eq!(status, 400, "no token for an organisation: {body}");

    // Writing: write and admin members may, a read member and a non-member may not.
    let (status, body) = app.create_adapter("acme", "by-bob", false, "bob").await;
    assert_error(status, &body, (403, "forbidden"), "read member creates");
    assert!(
        body["error"]["message"]
            .as_str()
            .expect("m")
            .contains("read role")
    );
    let (status, body) = app.create_adapter("acme", "by-dave", false, "dave").await;
    assert_error(status, &body, (403, "forbidden"), "non-member creates");
    assert_eq!(
        app.create_adapter("acme", "by-alice", false, "alice")
            .await
            .0,
        201
    );
    let (status, _) = app
        .upload("acme/secret", "bob", &synthetic_adapter(4, &["q_proj"], 2))
        .await;
    assert_eq!(status, 403, "read member uploads");
    // A read token of a write member stays read.
    let (status, _) = app
        .create_adapter("acme", "by-ro", false, "alice_read")
        .await;
    assert_eq!(status, 403);

    // Reading: every member; a non-member and anonymity get the missing adapter's answer.
    for who in ["alice", "bob", "carol", "admin"] {
        let (status, _) = app.get_json("/api/v1/adapters/acme/secret", who).await;
        assert_eq!(status, 200, "{who}");
        assert_eq!(page(&app, "/acme/secret", who).await, 200, "{who}'s page");
        let (status, _) = app.get_json("/api/models/acme/secret", who).await;
        assert_eq!(status, 200, "{who} on the Hub");
        let res = app
            .request(
                Method::GET,
                "/acme/secret/resolve/main/adapter_config.json",
                who,
            )
            .send()
            .await
            .expect("resolve");
        assert_eq!(res.status().as_u16(), 200, "{who} resolves");
    }
    let (_, missing) = app.get_json("/api/v1/adapters/acme/nothing", "dave").await;
    for who in ["dave", ""] {
        let (status, body) = app.get_json("/api/v1/adapters/acme/secret", who).await;
        assert_eq!(status, 404, "{who}");
        assert_eq!(body["error"]["code"], missing["error"]["code"]);
        assert_eq!(
            body["error"]["message"]
                .as_str()
                .map(|m| m.replace("secret", "nothing")),
            missing["error"]["message"].as_str().map(str::to_string),
            "{who}: the same answer as a missing adapter"
        );
        assert_eq!(page(&app, "/acme/secret", who).await, 404, "{who}'s page");
        let (status, _) = app.get_json("/api/models/acme/secret", who).await;
        assert_eq!(status, 404, "{who} on the Hub");
        let res = app
            .request(
                Method::GET,
                "/acme/secret/resolve/main/adapter_config.json",
                who,
            )
            .send()
            .await
            .expect("resolve");
        assert_eq!(res.status().as_u16(), 404, "{who} resolves");
    }

    // Listings: REST and the Hub's list_models(author=acme).
    let count = |v: &Value| v["items"].as_array().map(Vec::len).unwrap_or(0);
    let (_, mine) = app.get_json("/api/v1/adapters?owner=acme", "bob").await;
    assert_eq!(count(&mine), 2, "{mine}");
    let (_, theirs) = app.get_json("/api/v1/adapters?owner=acme", "dave").await;
    assert_eq!(count(&theirs), 1, "only the public one: {theirs}");
    let (_, hub) = app.get_json("/api/models?author=acme", "bob").await;
    assert_eq!(hub.as_array().map(Vec::len), Some(2), "{hub}");
    let (_, hub) = app.get_json("/api/models?author=acme", "dave").await;
    assert_eq!(hub.as_array().map(Vec::len), Some(1), "{hub}");

    // The Hub: whoami-v2 lists the caller's organisations; create_repo in one.
    let (_, me) = app.get_json("/api/whoami-v2", "bob").await;
    assert_eq!(me["orgs"][0]["name"], "acme", "{me}");
    assert_eq!(me["orgs"][0]["roleInOrg"], "read", "{me}");
    let repo = json!({"name": "hubbed", "organization": "acme", "private": true});
    let (status, _) = app.post_json("/api/repos/create", "bob", &repo).await;
    assert_eq!(status, 403, "a read member cannot create a repo");
    let (status, body) = app.post_json("/api/repos/create", "carol", &repo).await;
    assert_eq!(status, 200, "{body}");

    // Merge inputs: a member may merge the private adapter, a non-member may not see it.
    let merge = |output: &str| {
        json!({"method": "linear",
            "inputs": [{"adapter": "acme/secret"}, {"adapter": "acme/secret"}],
            "output": {"adapter": output, "create": true}})
    };
    let (status, body) = app
        .post_json("/api/v1/merges", "dave", &merge("dave/stolen"))
        .await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = app
        .post_json("/api/v1/merges", "bob", &merge("acme/by-bob"))
        .await;
    assert_error(status, &body, (403, "forbidden"), "read member's output");
    let (status, job) = app
        .post_json("/api/v1/merges", "bob", &merge("bob/mine"))
        .await;
    assert_eq!(
        status, 202,
        "a read member merges into their own namespace: {job}"
    );

    // Membership is the organisation's members' and instance admins' to read; admins change it.
    let (status, body) = app.get_json("/api/v1/orgs/acme", "dave").await;
    assert_error(
        status,
        &body,
        (404, "org_not_found"),
        "non-member reads the org",
    );
    let (_, nothing) = app.get_json("/api/v1/orgs/nothing", "dave").await;
    assert_eq!(
        body["error"]["message"]
            .as_str()
            .map(|m| m.replace("acme", "nothing")),
        nothing["error"]["message"].as_str().map(str::to_string)
    );
    let (status, org) = app.get_json("/api/v1/orgs/acme", "bob").await;
    assert_eq!(status, 200);
    // A member's token restricted to other namespaces does not read the organisation.
    let (status, narrow) = app
        .post_json(
            "/api/v1/tokens",
            "bob",
            &json!({"name": "narrow", "scope": "read", "restrict": ["bob"]}),
        )
        .await;
    assert_eq!(status, 201, "{narrow}");
    app.tokens.insert(
        "narrow",
        narrow["token"].as_str().expect("secret").to_string(),
    );
    let (status, body) = app.get_json("/api/v1/orgs/acme", "narrow").await;
    assert_error(
        status,
        &body,
        (404, "org_not_found"),
        "restricted elsewhere",
    );
    assert_eq!(org["members"].as_array().map(Vec::len), Some(3), "{org}");
    let (status, body) = put_member(&app, "acme", "dave", "read", "bob").await;
    assert_error(status, &body, (403, "forbidden"), "a read member adds");
    let (status, body) = put_member(&app, "acme", "dave", "owner", "alice").await;
    assert_eq!(status, 400, "unknown role: {body}");
    let (status, body) = put_member(&app, "acme", "nobody", "read", "alice").await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = put_member(&app, "acme", "alice", "write", "alice").await;
    assert_error(status, &body, (409, "conflict"), "the last admin");

    // Removal holds at once, on the cached listing too.
    let (_, warm) = app.get_json("/api/v1/adapters?owner=acme", "bob").await;
    assert_eq!(count(&warm), 3, "secret, by-alice, hubbed: {warm}");
    let res = app
        .send(app.request(Method::DELETE, "/api/v1/orgs/acme/members/bob", "alice"))
        .await;
    assert_eq!(res.0, 204, "{}", res.1);
    let (status, _) = app.get_json("/api/v1/adapters/acme/secret", "bob").await;
    assert_eq!(status, 404);
    let (_, cold) = app.get_json("/api/v1/adapters?owner=acme", "bob").await;
    assert_eq!(count(&cold), 1, "{cold}");
    assert_eq!(page(&app, "/acme/secret", "bob").await, 404);
    let (_, me) = app.get_json("/api/whoami-v2", "bob").await;
    assert_eq!(me["orgs"], json!([]), "{me}");
    // A member may leave.
    let res = app
        .send(app.request(Method::DELETE, "/api/v1/orgs/acme/members/carol", "carol"))
        .await;
    assert_eq!(res.0, 204, "{}", res.1);

    // Each change is one audit entry.
    let (_, log) = app.get_json("/api/v1/audit?target=acme", "admin").await;
    assert_eq!(
        log["items"].as_array().map(Vec::len),
        Some(1),
        "org.create: {log}"
    );
    for (action, n) in [("org.create", 1), ("member.set", 2), ("member.remove", 2)] {
        let (_, log) = app
            .get_json(&format!("/api/v1/audit?action={action}"), "admin")
            .await;
        assert_eq!(
            log["items"].as_array().map(Vec::len),
            Some(n),
            "{action}: {log}"
        );
    }
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn transfer_keeps_versions_revisions_aliases_and_lineage(#[case] backend: Backend) {
    let mut app = app_or_skip!(backend);
    user(&mut app, "carol", "carol", Scope::Write).await;
    let (status, _) = app
        .post_json("/api/v1/orgs", "alice", &json!({"name": "acme"}))
        .await;
    assert_eq!(status, 201);
    assert_eq!(
        put_member(&app, "acme", "carol", "write", "alice").await.0,
        200
    );
    for (i, name) in ["a", "b"].into_iter().enumerate() {
        app.adapter_with(
            &format!("alice/{name}"),
            &synthetic_adapter(4, &["q_proj"], i as u32 + 1),
        )
        .await;
    }
    let body = json!({"method": "linear",
        "inputs": [{"adapter": "alice/a"}, {"adapter": "alice/b"}],
        "output": {"adapter": "alice/m", "create": true}});
    let (status, job) = app.post_json("/api/v1/merges", "alice", &body).await;
    assert_eq!(status, 202, "{job}");
    let job = app
        .wait_job(job["id"].as_str().expect("id"), "alice", WAIT)
        .await;
    assert_eq!(job["state"], "succeeded", "{job}");
    let (status, body) = app
        .send(
            app.request(Method::PUT, "/api/v1/adapters/alice/m/refs/prod", "alice")
                .json(&json!({"version": 1})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (_, before) = app
        .get_json("/api/v1/adapters/alice/m/versions/prod", "alice")
        .await;
    let revision = before["revision"].as_str().expect("revision").to_string();

    // Only an admin of both namespaces moves an adapter.
    let to_acme = json!({"to": "acme"});
    let (status, body) = app
        .post_json("/api/v1/adapters/alice/a/transfer", "carol", &to_acme)
        .await;
    assert_eq!(status, 403, "carol does not administer alice: {body}");
    let (status, body) = app
        .post_json(
            "/api/v1/adapters/alice/a/transfer",
            "alice",
            &json!({"to": "bob"}),
        )
        .await;
    assert_error(
        status,
        &body,
        (403, "forbidden"),
        "alice does not administer bob",
    );
    let (status, body) = app
        .post_json(
            "/api/v1/adapters/alice/a/transfer",
            "alice",
            &json!({"to": "../x"}),
        )
        .await;
    assert_eq!(status, 400, "{body}");

    // The parent and the merged adapter move; lineage follows both.
    for name in ["a", "m"] {
        let (status, moved) = app
            .post_json(
                &format!("/api/v1/adapters/alice/{name}/transfer"),
                "alice",
                &to_acme,
            )
            .await;
        assert_eq!(status, 200, "{moved}");
        assert_eq!(moved["owner"], "acme");
        let (status, _) = app
            .get_json(&format!("/api/v1/adapters/alice/{name}"), "alice")
            .await;
        assert_eq!(status, 404, "the old name is gone");
    }
    let (status, after) = app
        .get_json("/api/v1/adapters/acme/m/versions/prod", "carol")
        .await;
    assert_eq!(status, 200, "the alias moved with it: {after}");
    assert_eq!(after["revision"], revision.as_str(), "same revision");
    assert_eq!(
        after["lineage"]["parents"][0]["adapter"], "acme/a",
        "{after}"
    );
    assert_eq!(
        after["lineage"]["parents"][1]["adapter"], "alice/b",
        "{after}"
    );
    let (status, graph) = app
        .get_json("/api/v1/adapters/acme/m/versions/prod/lineage", "carol")
        .await;
    assert_eq!(status, 200, "{graph}");
    assert!(graph.to_string().contains("acme/a"), "{graph}");
    // Hub clients pinned to the revision keep resolving it under the new name.
    let (status, info) = app
        .get_json(&format!("/api/models/acme/m/revision/{revision}"), "carol")
        .await;
    assert_eq!(status, 200, "{info}");
    assert_eq!(info["sha"], revision.as_str());
    let res = app
        .request(
            Method::GET,
            &format!("/acme/m/resolve/{revision}/adapter_config.json"),
            "carol",
        )
        .send()
        .await
        .expect("resolve");
    assert_eq!(res.status().as_u16(), 200);

    let (_, log) = app
        .get_json("/api/v1/audit?action=adapter.transfer", "admin")
        .await;
    assert_eq!(log["items"].as_array().map(Vec::len), Some(2), "{log}");
    assert_eq!(log["items"][0]["before"]["adapter"], "alice/m");
}
