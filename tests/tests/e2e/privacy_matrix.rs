//! A private adapter answers every read route like a missing one, for everyone but its owner:
//! the routes come from the route tables themselves (the OpenAPI document the server serves,
//! `web::PAGE_ROUTES`, `hub::ROUTES`, `lorax::ROUTES`), so a new GET/HEAD route without a case
//! here fails.

use std::collections::BTreeMap;

use quiver_tests::{Backend, TestApp, app_or_skip, synthetic_adapter};
use reqwest::Method;
use rstest::rstest;
use serde_json::{Value, json};

/// The private adapter's name: distinctive, so that finding it in a body is a leak.
const PRIVATE: &str = "hidden-xq7";
/// A name no adapter has: the answers to compare with.
const MISSING: &str = "absent-xq7";
/// Alice's organisation, and a name no organisation has.
const ORG: &str = "crew-xq7";
const NO_ORG: &str = "gone-xq7";

/// How a route's path is filled, per route template (every GET/HEAD route must be listed).
#[derive(Clone, Copy, Debug)]
enum Case {
    /// Names one adapter (`{owner}/{name}`, and a version, ref or file of it): the private one
    /// must answer exactly as the missing one (status, body with the name swapped).
    Adapter,
    /// Names a job: the job of the private adapter must answer as an unknown job.
    Job,
    /// Names a webhook subscription: alice's (to the private adapter) must answer others as an
    /// unknown one.
    Webhook,
    /// Names an organisation: alice's (whose member list names her) must answer everyone who is
    /// not a member as a missing one does (status, code, body with the name swapped).
    Org,
    /// Names no adapter (listings, static files, the session pages): the body must not name
    /// the private adapter.
    Other,
}

const CASES: &[(&str, Case)] = &[
    // REST API (OpenAPI)
    ("/api/v1/adapters", Case::Other),
    ("/api/v1/adapters/{owner}/{name}", Case::Adapter),
    ("/api/v1/adapters/{owner}/{name}/versions", Case::Adapter),
    ("/api/v1/adapters/{owner}/{name}/refs", Case::Adapter),
    (
        "/api/v1/adapters/{owner}/{name}/versions/{ref}",
        Case::Adapter,
    ),
    (
        "/api/v1/adapters/{owner}/{name}/versions/{ref}/files/{path}",
        Case::Adapter,
    ),
    (
        "/api/v1/adapters/{owner}/{name}/versions/{ref}/lineage",
        Case::Adapter,
    ),
    (
        "/api/v1/adapters/{owner}/{name}/versions/{ref}/profile",
        Case::Adapter,
    ),
    ("/api/v1/jobs", Case::Other),
    ("/api/v1/jobs/{id}", Case::Job),
    ("/api/v1/tokens", Case::Other),
    ("/api/v1/audit", Case::Other),
    ("/api/v1/webhooks", Case::Other),
    ("/api/v1/webhooks/{id}", Case::Webhook),
    ("/api/v1/webhooks/{id}/deliveries", Case::Webhook),
    ("/webhooks", Case::Other),
    ("/settings/tokens", Case::Other),
    ("/api/v1/orgs", Case::Other),
    ("/api/v1/orgs/{org}", Case::Org),
    ("/settings/orgs", Case::Other),
    ("/settings/orgs/{org}", Case::Org),
    ("/healthz", Case::Other),
    ("/metrics", Case::Other),
    // Pages
    ("/", Case::Other),
    ("/signin", Case::Other),
    ("/signout", Case::Other),
    ("/jobs", Case::Other),
    ("/jobs/{id}", Case::Job),
    ("/audit", Case::Other),
    ("/static/{file}", Case::Other),
    ("/{owner}/{name}", Case::Adapter),
    ("/{owner}/{name}/versions/{ref}", Case::Adapter),
    // Hub API
    ("/api/models", Case::Other),
    ("/api/whoami-v2", Case::Other),
    ("/api/models/{owner}/{name}", Case::Adapter),
    ("/api/models/{owner}/{name}/revision/{rev}", Case::Adapter),
    ("/api/models/{owner}/{name}/tree/{rev}", Case::Adapter),
    (
        "/api/models/{owner}/{name}/tree/{rev}/{path:.*}",
        Case::Adapter,
    ),
    ("/api/models/{owner}/{name}/refs", Case::Adapter),
    ("/api/models/{owner}/{name}/commits/{rev}", Case::Adapter),
    (
        "/api/models/{owner}/{name}/xet-read-token/{rev}",
        Case::Adapter,
    ),
    (
        "/api/models/{owner}/{name}/xet-write-token/{rev}",
        Case::Adapter,
    ),
    ("/{owner}/{name}/resolve/{rev}/{path:.*}", Case::Adapter),
    // LoRAX's pbase lookups (`{repo}` = `owner--name`)
    ("/v2/repos/{repo}/version/{version}", Case::Adapter),
    ("/v1/models/version/name/{repo}", Case::Adapter),
];

/// Every GET/HEAD route of the route tables: (template, methods).
async fn read_routes(app: &TestApp) -> Vec<(String, Vec<Method>)> {
    let (status, doc) = app.get_json("/api/openapi.json", "").await;
    assert_eq!(status, 200);
    let mut routes: BTreeMap<String, Vec<Method>> = BTreeMap::new();
    let mut add = |template: &str, method: &str| {
        let m = match method.to_ascii_uppercase().as_str() {
            "GET" => Method::GET,
            "HEAD" => Method::HEAD,
            _ => return,
        };
        let ms = routes.entry(template.to_string()).or_default();
        if !ms.contains(&m) {
            ms.push(m);
        }
    };
    for (template, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("path item").keys() {
            add(template, method);
        }
    }
    for (template, methods) in quiver_api::http::web::PAGE_ROUTES {
        for m in *methods {
            add(template, m);
        }
    }
    for r in quiver_api::http::hub::ROUTES {
        for m in r.methods {
            add(r.path, m);
        }
    }
    for (template, methods) in quiver_api::http::lorax::ROUTES {
        for m in *methods {
            add(template, m);
        }
    }
    routes.into_iter().collect()
}

/// Fills `{param}` / `{param:regex}` segments from `values`.
fn fill(template: &str, values: &BTreeMap<&str, String>) -> String {
    template
        .split('/')
        .map(
            |seg| match seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                Some(param) => {
                    let name = param.split(':').next().unwrap_or(param);
                    values
                        .get(name)
                        .unwrap_or_else(|| panic!("no value for {{{name}}} in {template}"))
                        .clone()
                }
                None => seg.to_string(),
            },
        )
        .collect::<Vec<_>>()
        .join("/")
}

struct Reply {
    status: u16,
    /// The body, with the names swapped back (so that private and missing compare equal).
    body: String,
    error_code: Option<String>,
    hub_error: Option<String>,
}

async fn ask(app: &TestApp, method: &Method, path: &str, auth: Option<&str>) -> Reply {
    let mut rb = app.client.request(method.clone(), app.url(path));
    if let Some(token) = auth {
        // The API reads the bearer token, the pages their session cookie (the token itself).
        rb = rb
            .bearer_auth(token)
            .header("cookie", format!("quiver_session={token}"));
    }
    let res = rb.send().await.expect("request");
    let status = res.status().as_u16();
    let hub_error = res
        .headers()
        .get("x-error-code")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = res.text().await.unwrap_or_default();
    let error_code = serde_json::from_str::<Value>(&body)
        .ok()
        .and_then(|v| v["error"]["code"].as_str().map(str::to_string));
    Reply {
        status,
        body,
        error_code,
        hub_error,
    }
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_read_route_answers_for_a_private_adapter_as_for_a_missing_one(
    #[case] backend: Backend,
) {
    let app = app_or_skip!(backend);
    assert_eq!(
        app.create_adapter("alice", PRIVATE, true, "alice").await.0,
        201
    );
    let (status, v1) = app
        .upload(
            &format!("alice/{PRIVATE}"),
            "alice",
            &synthetic_adapter(4, &["q_proj"], 1),
        )
        .await;
    assert_eq!(status, 201, "{v1}");
    let revision = v1["revision"].as_str().expect("revision").to_string();
    let (status, body) = app
        .send(
            app.request(
                Method::PUT,
                &format!("/api/v1/adapters/alice/{PRIVATE}/refs/prod"),
                "alice",
            )
            .json(&json!({"version": 1})),
        )
        .await;
    assert!(status < 300, "{body}");
    // A job about the private adapter (a merge of it into a private output).
    let second = format!("alice/{PRIVATE}-b");
    assert_eq!(
        app.create_adapter("alice", &format!("{PRIVATE}-b"), true, "alice")
            .await
            .0,
        201
    );
    let (status, body) = app
        .upload(&second, "alice", &synthetic_adapter(4, &["q_proj"], 2))
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, job) = app
        .post_json(
            "/api/v1/merges",
            "alice",
            &json!({"method": "linear",
                "inputs": [{"adapter": format!("alice/{PRIVATE}")}, {"adapter": second}],
                "output": {"adapter": format!("alice/{PRIVATE}-m"), "create": true, "private": true}}),
        )
        .await;
    assert_eq!(
        status, 202,
        "could not queue a job on the private adapter: {job}"
    );
    let job_id = job["id"].as_str().expect("job id").to_string();
    // A webhook subscription to the private adapter, made in the store (its loopback URL would
    // be refused by the API here, and no event it takes happens in this test).
    let hook = app
        .store
        .meta
        .create_webhook(
            &quiver_store::NewWebhook {
                created_by: "alice".into(),
                owner: "alice".into(),
                adapter: Some(format!("alice/{PRIVATE}")),
                url: "http://127.0.0.1:9/".into(),
                secret: "s".repeat(16),
                events: vec!["adapter.deleted".into()],
            },
            50,
        )
        .await
        .expect("webhook")
        .expect("under the limit");
    // An organisation alice administers (so its page names her and its members).
    let (status, body) = app
        .post_json("/api/v1/orgs", "alice", &json!({"name": ORG}))
        .await;
    assert_eq!(status, 201, "{body}");
    let routes = read_routes(&app).await;
    let cases: BTreeMap<&str, Case> = CASES.iter().copied().collect();

    // Every route found has a case; every case names a route that exists.
    let unknown: Vec<&String> = routes
        .iter()
        .map(|(t, _)| t)
        .filter(|t| !cases.contains_key(t.as_str()))
        .collect();
    assert!(
        unknown.is_empty(),
        "GET/HEAD routes without a privacy case (add them to CASES): {unknown:?}"
    );
    for (template, _) in CASES {
        assert!(
            routes.iter().any(|(t, _)| t == template),
            "CASES names {template}, which no route table has"
        );
    }

    // Who asks: anonymous, another user, a token Quiver did not issue (the Hub's kind), a
    // malformed one.
    let callers: [(&str, Option<String>); 4] = [
        ("anonymous", None),
        ("bob", Some(app.token("bob").to_string())),
        (
            "foreign token",
            Some("hf_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789".to_string()),
        ),
        ("invalid token", Some("qvt_not_a_token".to_string())),
    ];
    // The values path parameters take: each adapter route is asked with every ref form.
    let mut variants = Vec::new();
    for reference in ["1", "v1", "main", "prod", revision.as_str()] {
        variants.push(BTreeMap::from([
            ("owner", "alice".to_string()),
            ("ref", reference.to_string()),
            ("rev", reference.to_string()),
            ("version", reference.to_string()),
            ("path", "adapter_config.json".to_string()),
            ("file", "style.css".to_string()),
            ("id", job_id.clone()),
        ]));
    }
    let unknown_job = uuid::Uuid::new_v4().to_string();
    let mut asked = 0;
    for (template, methods) in &routes {
        let case = cases[template.as_str()];
        for method in methods {
            for (who, token) in &callers {
                let token = token.as_deref();
                let context = |path: &str| format!("{method} {path} as {who}");
                match case {
                    Case::Adapter => {
                        for values in &variants {
                            let mut private = values.clone();
                            private.insert("name", PRIVATE.to_string());
                            private.insert("repo", format!("alice--{PRIVATE}"));
                            let mut missing = values.clone();
                            missing.insert("name", MISSING.to_string());
                            missing.insert("repo", format!("alice--{MISSING}"));
                            let p = fill(template, &private);
                            let m = fill(template, &missing);
                            let got = ask(&app, method, &p, token).await;
                            let want = ask(&app, method, &m, token).await;
                            asked += 1;
                            assert_eq!(got.status, want.status, "{}", context(&p));
                            assert_eq!(got.error_code, want.error_code, "{}", context(&p));
                            assert_eq!(got.hub_error, want.hub_error, "{}", context(&p));
                            assert_eq!(
                                got.body.replace(PRIVATE, MISSING),
                                want.body,
                                "{}",
                                context(&p)
                            );
                            assert!(
                                got.status >= 400,
                                "{}: {} {}",
                                context(&p),
                                got.status,
                                got.body
                            );
                        }
                    }
                    Case::Webhook => {
                        let mut values = variants[0].clone();
                        values.insert("id", hook.id.clone());
                        let p = fill(template, &values);
                        values.insert("id", unknown_job.clone());
                        let m = fill(template, &values);
                        let got = ask(&app, method, &p, token).await;
                        let want = ask(&app, method, &m, token).await;
                        asked += 1;
                        assert_eq!(got.status, want.status, "{}", context(&p));
                        assert_eq!(got.error_code, want.error_code, "{}", context(&p));
                        assert!(got.status >= 400, "{}", context(&p));
                        assert!(!got.body.contains(PRIVATE), "{} names it", context(&p));
                    }
                    Case::Org => {
                        let mut values = variants[0].clone();
                        values.insert("org", ORG.to_string());
                        let p = fill(template, &values);
                        values.insert("org", NO_ORG.to_string());
                        let m = fill(template, &values);
                        let got = ask(&app, method, &p, token).await;
                        let want = ask(&app, method, &m, token).await;
                        asked += 1;
                        assert_eq!(got.status, want.status, "{}", context(&p));
                        assert_eq!(got.error_code, want.error_code, "{}", context(&p));
                        assert_eq!(got.body.replace(ORG, NO_ORG), want.body, "{}", context(&p));
                        assert!(got.status >= 300, "{}: {}", context(&p), got.status);
                        assert!(
                            !got.body.contains("alice"),
                            "{} names a member",
                            context(&p)
                        );
                    }
                    Case::Job => {
                        let mut values = variants[0].clone();
                        let p = fill(template, &values);
                        values.insert("id", unknown_job.clone());
                        let m = fill(template, &values);
                        let got = ask(&app, method, &p, token).await;
                        let want = ask(&app, method, &m, token).await;
                        asked += 1;
                        assert_eq!(got.status, want.status, "{}", context(&p));
                        assert_eq!(got.error_code, want.error_code, "{}", context(&p));
                        assert!(!got.body.contains(PRIVATE), "{} names it", context(&p));
                    }
                    Case::Other => {
                        for query in ["", "?q=hidden", "?search=hidden", "?author=alice"] {
                            let p = format!("{}{query}", fill(template, &variants[0]));
                            let got = ask(&app, method, &p, token).await;
                            asked += 1;
                            assert!(!got.body.contains(PRIVATE), "{} names it", context(&p));
                        }
                    }
                }
            }
        }
    }
    // The ping (a POST, so not in the route tables read above) answers everyone but its owner
    // as an unknown subscription does, and queues nothing for them.
    for (who, token) in &callers {
        let p = format!("/api/v1/webhooks/{}/ping", hook.id);
        let m = format!("/api/v1/webhooks/{unknown_job}/ping");
        let got = ask(&app, &Method::POST, &p, token.as_deref()).await;
        let want = ask(&app, &Method::POST, &m, token.as_deref()).await;
        assert_eq!(got.status, want.status, "POST {p} as {who}: {}", got.body);
        assert_eq!(got.error_code, want.error_code, "POST {p} as {who}");
        assert!(got.status >= 400, "POST {p} as {who}: {}", got.body);
        assert!(!got.body.contains(PRIVATE), "POST {p} as {who} names it");
    }
    // The organisation's writes (not in the GET/HEAD tables) answer non-members as a missing
    // organisation does, through the API and the pages' forms (with a valid CSRF token).
    let csrf = "ab".repeat(24);
    for (who, token) in &callers {
        for (method, template, json_body) in [
            (
                Method::PUT,
                "/api/v1/orgs/{org}/members/bob",
                Some(json!({"role": "admin"})),
            ),
            (Method::DELETE, "/api/v1/orgs/{org}/members/alice", None),
            (Method::POST, "/settings/orgs/{org}/members", None),
            (
                Method::POST,
                "/settings/orgs/{org}/members/alice/remove",
                None,
            ),
        ] {
            let mut replies = Vec::new();
            for org in [ORG, NO_ORG] {
                let path = template.replace("{org}", org);
                let mut rb = app.client.request(method.clone(), app.url(&path));
                let mut cookie = format!("quiver_csrf={csrf}");
                if let Some(t) = token {
                    rb = rb.bearer_auth(t);
                    cookie.push_str(&format!("; quiver_session={t}"));
                }
                rb = rb.header("cookie", cookie);
                rb = match &json_body {
                    Some(b) => rb.json(b),
                    None if method == Method::POST => {
                        rb.form(&[("csrf", csrf.as_str()), ("user", "bob"), ("role", "admin")])
                    }
                    None => rb,
                };
                let res = rb.send().await.expect("request");
                let status = res.status().as_u16();
                let body = res.text().await.unwrap_or_default();
                replies.push((status, body.replace(ORG, NO_ORG)));
            }
            let context = format!("{method} {template} as {who}");
            assert_eq!(replies[0], replies[1], "{context}");
            assert!(replies[0].0 >= 400, "{context}: {:?}", replies[0]);
        }
    }
    let members = app
        .get_json(&format!("/api/v1/orgs/{ORG}"), "alice")
        .await
        .1["members"]
        .clone();
    assert_eq!(members.as_array().map(Vec::len), Some(1), "{members}");
    assert!(asked > 300, "{asked}");
    // The audit log names the private adapter (its entries are about it), so no caller here may
    // read it, whichever namespace they ask for: the API's 401/403 and the page's sign-in or
    // 403, never an entry.
    for (who, token) in &callers {
        for path in [
            "/api/v1/audit?owner=alice",
            "/api/v1/audit?target=alice/",
            "/audit?owner=alice",
            "/audit",
        ] {
            let got = ask(&app, &Method::GET, path, token.as_deref()).await;
            assert!(
                got.status == 303 || got.status == 401 || got.status == 403,
                "GET {path} as {who}: {} {}",
                got.status,
                got.body
            );
            assert!(!got.body.contains(PRIVATE), "GET {path} as {who} names it");
        }
    }

    // The owner does see it (the fillers reach real things).
    let alice = app.token("alice").to_string();
    for path in [
        format!("/api/v1/adapters/alice/{PRIVATE}/versions/prod/files/adapter_config.json"),
        format!("/api/models/alice/{PRIVATE}/revision/{revision}"),
        format!("/alice/{PRIVATE}/resolve/main/adapter_config.json"),
        format!("/alice/{PRIVATE}/versions/1"),
        format!("/api/v1/jobs/{job_id}"),
        format!("/api/v1/webhooks/{}", hook.id),
        format!("/api/v1/webhooks/{}/deliveries", hook.id),
        format!("/api/v1/orgs/{ORG}"),
        format!("/settings/orgs/{ORG}"),
    ] {
        let got = ask(&app, &Method::GET, &path, Some(&alice)).await;
        assert_eq!(got.status, 200, "{path} as alice: {}", got.body);
    }
    // LoRAX's lookups export to S3 only (501 on a file:// store, docs/serving.md).
    let pbase_ok = if app.store.blobs.is_local() { 501 } else { 200 };
    for path in [
        format!("/v2/repos/alice--{PRIVATE}/version/prod"),
        format!("/v1/models/version/name/alice--{PRIVATE}"),
    ] {
        let got = ask(&app, &Method::GET, &path, Some(&alice)).await;
        assert_eq!(got.status, pbase_ok, "{path} as alice: {}", got.body);
    }
}
