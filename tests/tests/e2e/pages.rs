//! The web pages over real HTTP: status codes, escaping, the security headers, privacy on every
//! page and facet, sign-in with CSRF, the merge form, lineage and spectra, and the listing facets
//! (also on the JSON API).

use std::time::Duration;

use quiver_api::card::ImagePolicy;
use quiver_api::config::HttpOptions;
use quiver_tests::{Backend, TestApp, app_or_skip, spawn_app_with, synthetic_adapter};
use reqwest::Method;
use reqwest::header::{CONTENT_SECURITY_POLICY, CONTENT_TYPE, LOCATION, SET_COOKIE};
use rstest::rstest;
use serde_json::json;

const XSS: &str = "<script>alert('desc')</script><img src=x onerror=alert(1)>";
const CARD: &str = "# Hello card\n\nSome **bold** text.\n\n<script>alert('card')</script>\n\n\
    <img src=x onerror=alert(2)>\n\n[bad](javascript:alert(3))\n";

/// GET a page with optional cookies; returns status, headers and body.
async fn page(
    app: &TestApp,
    path: &str,
    cookies: &str,
) -> (u16, reqwest::header::HeaderMap, String) {
    let mut rb = app.request(Method::GET, path, "");
    if !cookies.is_empty() {
        rb = rb.header("Cookie", cookies);
    }
    let res = rb.send().await.expect("page");
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    (status, headers, res.text().await.expect("body"))
}

/// The `name=value` pairs of a response's Set-Cookie headers.
fn set_cookies(headers: &reqwest::header::HeaderMap) -> Vec<String> {
    headers
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or_default().to_string())
        .collect()
}

fn hidden_csrf(html: &str) -> String {
    let at = html.find("name=\"csrf\" value=\"").expect("csrf field") + 19;
    html[at..at + 48].to_string()
}

/// Signs in through the form; returns the cookies to send afterwards.
async fn sign_in(app: &TestApp, who: &str) -> String {
    let (status, headers, html) = page(app, "/signin", "").await;
    assert_eq!(status, 200);
    let csrf_cookie = set_cookies(&headers).join("; ");
    assert!(csrf_cookie.starts_with("quiver_csrf="), "{csrf_cookie}");
    let csrf = hidden_csrf(&html);
    let res = app
        .request(Method::POST, "/signin", "")
        .header("Cookie", &csrf_cookie)
        .form(&[
            ("token", app.token(who)),
            ("csrf", &csrf),
            ("next", "/jobs"),
        ])
        .send()
        .await
        .expect("sign in");
    assert_eq!(res.status(), 303);
    assert_eq!(res.headers()[LOCATION], "/jobs");
    let raw: Vec<String> = res
        .headers()
        .get_all(SET_COOKIE)
        .iter()
        .map(|v| v.to_str().expect("present").to_string())
        .collect();
    assert!(
        raw.iter().any(|c| c.starts_with("quiver_session=")
            && c.contains("HttpOnly")
            && c.contains("SameSite=Strict")),
        "{raw:?}"
    );
    format!("{csrf_cookie}; {}", set_cookies(res.headers()).join("; "))
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn pages_render_escape_and_carry_the_security_headers(#[case] backend: Backend) {
    let app = app_or_skip!(backend);
    let body = json!({"owner": "alice", "name": "xss", "base_model": "quiver-test/tiny-llama",
        "description": XSS, "tags": ["<b>tag</b>"]});
    assert_eq!(
        app.post_json("/api/v1/adapters", "alice", &body).await.0,
        201
    );
    let mut files = synthetic_adapter(4, &["q_proj", "v_proj"], 1);
    files.push(("README.md".into(), CARD.as_bytes().to_vec()));
    assert_eq!(app.upload("alice/xss", "alice", &files).await.0, 201);

    for path in [
        "/",
        "/alice/xss",
        "/alice/xss/versions/1",
        "/alice/xss/versions/main",
    ] {
        let (status, headers, html) = page(&app, path, "").await;
        assert_eq!(status, 200, "{path}");
        assert!(
            headers[CONTENT_TYPE]
                .to_str()
                .expect("present")
                .starts_with("text/html")
        );
        let csp = headers[CONTENT_SECURITY_POLICY].to_str().expect("present");
        assert!(
            csp.contains("default-src 'none'") && !csp.contains("unsafe-inline"),
            "{csp}"
        );
        for bad in ["<script", "<img", "javascript:", "<b>tag"] {
            assert!(!html.contains(bad), "{path} contains {bad}");
        }
        assert!(html.contains("alice/xss"), "{path}");
    }
    let (_, _, html) = page(&app, "/alice/xss", "").await;
    let at = html.find("id=\"description\"").expect("description shown");
    assert!(
        html[at..].starts_with("id=\"description\">&#60;script&#62;alert("),
        "escaped: {}",
        &html[at..at + 120]
    );
    assert!(
        html.contains("<h1>Hello card</h1>") && html.contains("<strong>bold</strong>"),
        "the card is rendered"
    );
    for part in [
        "LoRA summary",
        "vLLM ✓",
        "--max-lora-rank 8",
        "Spectra",
        "<svg",
        "Effective rank",
    ] {
        assert!(html.contains(part), "adapter page lacks {part}");
    }
    let (_, version) = app
        .get_json("/api/v1/adapters/alice/xss/versions/1", "")
        .await;
    for f in version["files"].as_array().expect("present") {
        assert!(
            html.contains(f["sha256"].as_str().expect("present")),
            "files table lists {f}"
        );
    }
    assert_eq!(version["compatibility"]["vllm"]["ok"], true, "{version}");
    assert_eq!(version["compatibility"]["vllm_max_lora_rank"], 8);
    assert_eq!(version["compatibility"]["merge"]["ok"], true);
    // The download link of the files table works.
    let link = "/api/v1/adapters/alice/xss/versions/1/files/README.md";
    assert!(html.contains(link));
    assert_eq!(
        app.download("alice/xss", "1", "README.md", "").await,
        CARD.as_bytes()
    );

    // Errors: HTML on page paths, the JSON envelope on the API.
    for path in [
        "/alice/nope",
        "/alice/xss/versions/9",
        "/nobody/x/y/z",
        "/jobs/../x",
        "/static/nope.css",
    ] {
        let (status, headers, html) = page(&app, path, "").await;
        assert_eq!(status, 404, "{path}");
        assert!(
            headers[CONTENT_TYPE]
                .to_str()
                .expect("present")
                .starts_with("text/html"),
            "{path}"
        );
        assert!(html.contains("404"), "{path}");
    }
    let (status, body) = app.get_json("/api/v1/nope", "").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("route_not_found"))
    );
    let res = app
        .request(Method::DELETE, "/", "")
        .send()
        .await
        .expect("delete");
    assert_eq!(res.status(), 405);
    assert!(
        res.headers()["allow"]
            .to_str()
            .expect("present")
            .contains("GET")
    );
    assert!(res.text().await.expect("present").contains("405"));
    let (status, _, html) = page(&app, "/?rank_min=lots", "").await;
    assert_eq!(status, 400);
    assert!(html.contains("rank_min"));
    let (status, _, css) = page(&app, "/static/style.css", "").await;
    assert_eq!(status, 200);
    assert!(css.contains(".card"));
    // Reserved owners cannot be created.
    let body = json!({"owner": "jobs", "name": "x", "base_model": "b"});
    let (status, e) = app.post_json("/api/v1/adapters", "admin", &body).await;
    assert_eq!(status, 400, "{e}");
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn anonymous_adapter_pages_are_cached_until_anything_changes(#[case] backend: Backend) {
    let app = app_or_skip!(backend);
    let body = json!({"owner": "alice", "name": "cached", "base_model": "quiver-test/tiny-llama",
        "description": "first words"});
    assert_eq!(
        app.post_json("/api/v1/adapters", "alice", &body).await.0,
        201
    );
    assert_eq!(
        app.upload(
            "alice/cached",
            "alice",
            &synthetic_adapter(4, &["q_proj"], 1)
        )
        .await
        .0,
        201
    );
    let (status, headers, html) = page(&app, "/alice/cached", "").await;
    assert_eq!(status, 200);
    assert!(html.contains("first words"));
    let etag = headers[reqwest::header::ETAG]
        .to_str()
        .expect("etag")
        .to_string();
    let not_modified = app
        .request(Method::GET, "/alice/cached", "")
        .header("If-None-Match", &etag)
        .send()
        .await
        .expect("conditional");
    assert_eq!(not_modified.status(), 304);

    // A change shows at once: the description, a new version, then privacy.
    let patch = app
        .request(Method::PATCH, "/api/v1/adapters/alice/cached", "alice")
        .json(&json!({"description": "second words"}))
        .send()
        .await
        .expect("patch");
    assert_eq!(patch.status(), 200);
    let (_, headers, html) = page(&app, "/alice/cached", "").await;
    assert!(html.contains("second words") && !html.contains("first words"));
    assert_ne!(headers[reqwest::header::ETAG].to_str().expect("etag"), etag);
    assert_eq!(
        app.upload(
            "alice/cached",
            "alice",
            &synthetic_adapter(4, &["q_proj"], 2)
        )
        .await
        .0,
        201
    );
    let (_, _, html) = page(&app, "/alice/cached/versions/main", "").await;
    assert!(
        html.contains("/alice/cached/versions/2"),
        "the new version is listed"
    );
    let patch = app
        .request(Method::PATCH, "/api/v1/adapters/alice/cached", "alice")
        .json(&json!({"private": true}))
        .send()
        .await
        .expect("patch");
    assert_eq!(patch.status(), 200);
    for path in ["/alice/cached", "/alice/cached/versions/main"] {
        assert_eq!(
            page(&app, path, "").await.0,
            404,
            "{path} after going private"
        );
    }
    // The owner, signed in, sees it (rendered for them, with the merge form).
    let cookies = sign_in(&app, "alice").await;
    let (status, _, html) = page(&app, "/alice/cached", &cookies).await;
    assert_eq!(status, 200);
    assert!(html.contains("name=\"csrf\""));
}

/// The `csrf` values of a page's forms.
fn form_csrfs(html: &str) -> Vec<String> {
    html.match_indices("name=\"csrf\" value=\"")
        .map(|(at, m)| html[at + m.len()..].chars().take(48).collect())
        .collect()
}

/// A signed-in user's adapter page comes from the listing cache too, under everything of the
/// principal that decides what it shows: each user (and each scope of one user) gets what they
/// may see, cached or not, with their own CSRF token spliced into the forms; an organisation
/// membership and a change to another adapter show at once.
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn signed_in_adapter_pages_are_cached_per_viewer(#[case] backend: Backend) {
    let app = app_or_skip!(backend);
    app.adapter_with("alice/open", &synthetic_adapter(4, &["q_proj"], 1))
        .await;
    assert_eq!(
        app.create_adapter("alice", "secret", true, "alice").await.0,
        201
    );
    assert_eq!(
        app.upload(
            "alice/secret",
            "alice",
            &synthetic_adapter(4, &["q_proj"], 2)
        )
        .await
        .0,
        201
    );
    assert_eq!(app.create_adapter("bob", "mine", true, "bob").await.0, 201);
    let (status, org) = app
        .post_json("/api/v1/orgs", "alice", &json!({"name": "team-pc"}))
        .await;
    assert_eq!(status, 201, "{org}");
    assert_eq!(
        app.create_adapter("team-pc", "tool", true, "alice").await.0,
        201
    );

    let mut n = 0u32;
    // GET as `who` (a token key; empty: anonymous) with a fresh CSRF cookie; every form on the
    // page must carry exactly that token.
    let mut view = async |who: &str, path: &str| {
        n += 1;
        let csrf = format!("{n:048x}");
        let cookies = if who.is_empty() {
            format!("quiver_csrf={csrf}")
        } else {
            format!("quiver_session={}; quiver_csrf={csrf}", app.token(who))
        };
        let (status, _, html) = page(&app, path, &cookies).await;
        for sent in form_csrfs(&html) {
            assert_eq!(sent, csrf, "{who} on {path}: a form carries another token");
        }
        (status, html)
    };
    let partner = |html: &str, id: &str| html.contains(&format!("value=\"{id}\""));
    let transfer = |html: &str| html.contains("action=\"/alice/open/transfer\"");
    // Twice each, interleaved: built, then from the cache.
    for round in 0..2 {
        let (status, html) = view("alice", "/alice/open").await;
        assert_eq!(status, 200);
        assert!(
            html.contains("Signed in as <strong>alice</strong>"),
            "{round}"
        );
        assert!(partner(&html, "alice/secret") && partner(&html, "team-pc/tool"));
        assert!(
            !partner(&html, "bob/mine"),
            "{round}: bob's private adapter"
        );
        assert!(transfer(&html), "{round}: alice administers her namespace");
        assert_eq!(form_csrfs(&html).len(), 2, "merge and transfer forms");

        let (status, html) = view("alice_read", "/alice/open").await;
        assert_eq!(status, 200);
        assert!(html.contains("Signed in as <strong>alice</strong>"));
        assert!(
            partner(&html, "alice/secret"),
            "{round}: a read token sees it"
        );
        assert!(
            !transfer(&html),
            "{round}: a read token administers nothing"
        );

        let (status, html) = view("bob", "/alice/open").await;
        assert_eq!(status, 200);
        assert!(
            html.contains("Signed in as <strong>bob</strong>"),
            "{round}"
        );
        assert!(!html.contains("Signed in as <strong>alice"));
        assert!(partner(&html, "bob/mine"), "{round}");
        assert!(!partner(&html, "alice/secret") && !partner(&html, "team-pc/tool"));
        assert!(!transfer(&html), "{round}: bob does not administer alice");

        assert_eq!(view("alice", "/alice/secret").await.0, 200);
        assert_eq!(view("bob", "/alice/secret").await.0, 404, "{round}");
        assert_eq!(view("", "/alice/secret").await.0, 404, "{round}");
        let (status, html) = view("", "/alice/open").await;
        assert_eq!(status, 200);
        assert!(form_csrfs(&html).is_empty() && !html.contains("Signed in as"));
    }

    // Bob joins the organisation: its private adapter is his partner from the next request; he
    // leaves: gone again.
    let member = |method: Method| app.request(method, "/api/v1/orgs/team-pc/members/bob", "alice");
    let (status, body) = app
        .send(member(Method::PUT).json(&json!({"role": "read"})))
        .await;
    assert_eq!(status, 200, "{body}");
    let (_, html) = view("bob", "/alice/open").await;
    assert!(partner(&html, "team-pc/tool"), "a member sees it");
    assert_eq!(view("bob", "/team-pc/tool").await.0, 200);
    assert_eq!(app.send(member(Method::DELETE)).await.0, 204);
    let (_, html) = view("bob", "/alice/open").await;
    assert!(!partner(&html, "team-pc/tool"), "removed: hidden again");
    assert_eq!(view("bob", "/team-pc/tool").await.0, 404);

    // Another adapter going public shows on bob's cached page at once.
    let patch = app
        .request(Method::PATCH, "/api/v1/adapters/alice/secret", "alice")
        .json(&json!({"private": false}))
        .send()
        .await
        .expect("patch");
    assert_eq!(patch.status(), 200);
    let (_, html) = view("bob", "/alice/open").await;
    assert!(partner(&html, "alice/secret"), "public now");
    assert_eq!(view("bob", "/alice/secret").await.0, 200);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn card_images_show_only_from_the_configured_hosts(#[case] backend: Backend) {
    let options = HttpOptions {
        card_images: ImagePolicy::new(&["images.example.com".into()]).expect("hosts"),
        ..HttpOptions::default()
    };
    let Some(app) = spawn_app_with(backend, options).await else {
        return;
    };
    let body =
        json!({"owner": "alice", "name": "pictures", "base_model": "quiver-test/tiny-llama"});
    assert_eq!(
        app.post_json("/api/v1/adapters", "alice", &body).await.0,
        201
    );
    let mut files = synthetic_adapter(4, &["q_proj"], 1);
    let card =
        "![ok](https://images.example.com/plot.png)\n\n![no](https://tracker.example/p.png)\n";
    files.push(("README.md".into(), card.as_bytes().to_vec()));
    assert_eq!(app.upload("alice/pictures", "alice", &files).await.0, 201);
    let (status, headers, html) = page(&app, "/alice/pictures", "").await;
    assert_eq!(status, 200);
    assert!(
        html.contains(r#"src="https://images.example.com/plot.png""#),
        "{html}"
    );
    assert!(!html.contains("tracker.example"));
    let csp = headers[CONTENT_SECURITY_POLICY].to_str().expect("present");
    assert!(
        csp.contains("img-src 'self' data: https://images.example.com;")
            && !csp.contains("tracker"),
        "{csp}"
    );
    // Other pages keep the strict policy.
    let (_, headers, _) = page(&app, "/", "").await;
    let csp = headers[CONTENT_SECURITY_POLICY].to_str().expect("present");
    assert!(!csp.contains("images.example.com"), "{csp}");
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn private_adapters_show_only_to_their_signed_in_owner(#[case] backend: Backend) {
    let app = app_or_skip!(backend);
    assert_eq!(
        app.create_adapter("alice", "open", false, "alice").await.0,
        201
    );
    let body = json!({"owner": "alice", "name": "secret", "base_model": "secret-base/model",
        "tags": ["hidden-tag"], "private": true});
    assert_eq!(
        app.post_json("/api/v1/adapters", "alice", &body).await.0,
        201
    );
    assert_eq!(
        app.upload(
            "alice/secret",
            "alice",
            &synthetic_adapter(4, &["k_proj"], 2)
        )
        .await
        .0,
        201
    );

    for who_cookies in ["", "quiver_session=qvt_forged"] {
        let (_, _, listing) = page(&app, "/", who_cookies).await;
        for leak in ["alice/secret", "hidden-tag", "secret-base", "k_proj"] {
            assert!(!listing.contains(leak), "{leak} leaks to {who_cookies:?}");
        }
        for path in [
            "/alice/secret",
            "/alice/secret/versions/1",
            "/alice/secret/versions/main",
        ] {
            assert_eq!(page(&app, path, who_cookies).await.0, 404, "{path}");
        }
    }
    // A form without the CSRF token does nothing.
    let res = app
        .request(Method::POST, "/signin", "")
        .form(&[("token", app.token("alice")), ("csrf", "")])
        .send()
        .await
        .expect("signin");
    assert_eq!(res.status(), 403);
    assert!(res.headers().get(SET_COOKIE).is_none());

    let bob = sign_in(&app, "bob").await;
    assert_eq!(
        page(&app, "/alice/secret", &bob).await.0,
        404,
        "bob is not the owner"
    );
    let alice = sign_in(&app, "alice").await;
    let (status, _, html) = page(&app, "/alice/secret", &alice).await;
    assert_eq!(status, 200);
    assert!(html.contains("Signed in as <strong>alice</strong>"));
    let (_, _, listing) = page(&app, "/", &alice).await;
    assert!(listing.contains("alice/secret") && listing.contains("hidden-tag"));
    // The page's download links work for the owner in the browser (the cookie, on GET only).
    let res = app
        .request(
            Method::GET,
            "/api/v1/adapters/alice/secret/versions/1/files/adapter_config.json",
            "",
        )
        .header("Cookie", &alice)
        .send()
        .await
        .expect("download");
    assert_eq!(res.status(), 200);

    // Sign out: the session cookie is cleared and the adapter is gone again.
    let (_, _, form) = page(&app, "/signout", &alice).await;
    let res = app
        .request(Method::POST, "/signout", "")
        .header("Cookie", &alice)
        .form(&[("csrf", hidden_csrf(&form))])
        .send()
        .await
        .expect("signout");
    assert_eq!(res.status(), 303);
    let cleared = res.headers()[SET_COOKIE]
        .to_str()
        .expect("present")
        .to_string();
    assert!(
        cleared.starts_with("quiver_session=;") && cleared.contains("Max-Age=0"),
        "{cleared}"
    );
    assert_eq!(page(&app, "/alice/secret", "").await.0, 404);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn the_merge_form_runs_a_job_whose_page_shows_progress_and_lineage(#[case] backend: Backend) {
    let app = app_or_skip!(backend);
    app.adapter_with("alice/a", &synthetic_adapter(4, &["q_proj", "v_proj"], 1))
        .await;
    app.adapter_with("alice/b", &synthetic_adapter(16, &["q_proj", "v_proj"], 2))
        .await;
    let alice = sign_in(&app, "alice").await;
    let (_, _, html) = page(&app, "/alice/a", &alice).await;
    assert!(html.contains("Start merge job") && html.contains("value=\"alice/b\""));
    let res = app
        .request(Method::POST, "/alice/a/merge", "")
        .header("Cookie", &alice)
        .form(&[
            ("csrf", hidden_csrf(&html).as_str()),
            ("ref", "1"),
            ("inputs", "alice/b"),
            ("method", "linear"),
            ("output", "merged"),
        ])
        .send()
        .await
        .expect("merge");
    assert_eq!(res.status(), 303, "{:?}", res.text().await);
    let location = res.headers()[LOCATION]
        .to_str()
        .expect("present")
        .to_string();
    let id = location
        .strip_prefix("/jobs/")
        .expect("job page")
        .to_string();
    let job = app.wait_job(&id, "alice", Duration::from_secs(60)).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    let (status, _, job_page) = page(&app, &location, &alice).await;
    assert_eq!(status, 200);
    assert!(job_page.contains("succeeded") && job_page.contains("/alice/merged/versions/1"));
    assert!(
        !job_page.contains("http-equiv=\"refresh\""),
        "a finished job stops reloading"
    );
    assert_eq!(
        page(&app, &location, "").await.0,
        303,
        "anonymous callers are sent to sign in"
    );
    let bob = sign_in(&app, "bob").await;
    assert_eq!(
        page(&app, &location, &bob).await.0,
        404,
        "another user's job"
    );
    let (_, _, jobs) = page(&app, "/jobs", &alice).await;
    assert!(jobs.contains(&id[..8]));

    // The merged version's lineage graph links both parents.
    let (_, _, merged) = page(&app, "/alice/merged", &alice).await;
    assert!(merged.contains("Lineage"), "no lineage section");
    for href in ["/alice/a/versions/1", "/alice/b/versions/1"] {
        assert!(
            merged.contains(&format!("<a href=\"{href}\">")),
            "lineage lacks {href}"
        );
    }

    // Facets: kind, rank range, targets and vLLM, on the page and the API alike.
    let names = |body: &serde_json::Value| -> Vec<String> {
        let mut v: Vec<String> = body["items"]
            .as_array()
            .expect("present")
            .iter()
            .map(|a| a["id"].as_str().expect("present").to_string())
            .collect();
        v.sort();
        v
    };
    for (query, want) in [
        ("kind=merged", vec!["alice/merged"]),
        ("kind=trained", vec!["alice/a", "alice/b"]),
        ("rank_min=8", vec!["alice/b", "alice/merged"]),
        ("rank_max=4", vec!["alice/a"]),
        (
            "target=v_proj&vllm=true",
            vec!["alice/a", "alice/b", "alice/merged"],
        ),
        ("target=k_proj", vec![]),
        (
            "target=q%5Fproj",
            vec!["alice/a", "alice/b", "alice/merged"],
        ),
    ] {
        let (status, body) = app.get_json(&format!("/api/v1/adapters?{query}"), "").await;
        assert_eq!(status, 200, "{query}: {body}");
        assert_eq!(names(&body), want, "{query}");
        let (status, _, html) =
            page(&app, &format!("/?{}", query.replace("true", "yes")), "").await;
        assert_eq!(status, 200, "{query}");
        for w in &want {
            assert!(
                html.contains(&format!("href=\"/{w}\"")),
                "{query}: page lacks {w}"
            );
        }
    }
    let (_, _, listing) = page(&app, "/", "").await;
    assert!(
        listing.contains("merged</a> <span class=\"count\">1</span>"),
        "kind facet counts"
    );
}

/// The "Serve it" section (docs/serving.md): snippets filled in with the adapter, the ref the page
/// pins and the server's address as the client reached it; the badges link to them.
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn version_pages_say_how_to_serve_the_adapter(#[case] backend: Backend) {
    let app = app_or_skip!(backend);
    app.create_adapter("alice", "serve", false, "alice").await;
    let (status, v1) = app
        .upload(
            "alice/serve",
            "alice",
            &synthetic_adapter(8, &["q_proj", "v_proj"], 5),
        )
        .await;
    assert_eq!(status, 201, "{v1}");
    let rev = v1["revision"].as_str().expect("revision");
    let (status, body) = app
        .send(
            app.request(
                Method::PUT,
                "/api/v1/adapters/alice/serve/refs/prod",
                "alice",
            )
            .json(&json!({"version": 1})),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    let (status, _, html) = page(&app, "/alice/serve/versions/prod", "").await;
    assert_eq!(status, 200);
    // The snippets as a reader copies them (askama escapes quotes, `<` and `>`).
    let serve = html[html.find("id=\"serve-h\"").expect("a Serve it section")..]
        .replace("&#34;", "\"")
        .replace("&#39;", "'")
        .replace("&#60;", "<")
        .replace("&#62;", ">")
        .replace("&amp;", "&");
    for part in [
        // The address the client used (the test server's), in every way in.
        format!("QUIVER_URL={}", app.base),
        format!("HF_ENDPOINT={}", app.base),
        format!("PREDIBASE_GATEWAY_ENDPOINT={}", app.base),
        // vLLM with the plugin, pinned to the page's ref.
        "VLLM_PLUGINS=quiver VLLM_ALLOW_RUNTIME_LORA_UPDATING=1".to_string(),
        r#"-d '{"model": "alice/serve@prod", "prompt": "Hello"}'"#.to_string(),
        "--enable-lora --max-lora-rank 8".to_string(),
        "--lora-modules alice/serve=alice/serve".to_string(),
        // LoRAX: pbase id (owner--name/ref), s3 lookup, hub.
        r#""adapter_id": "alice--serve/prod", "adapter_source": "pbase""#.to_string(),
        format!("{}/v2/repos/alice--serve/version/{rev}", app.base),
        r#""adapter_id": "alice/serve", "adapter_source": "hub""#.to_string(),
        // SGLang and PEFT.
        "--lora-paths alice/serve=alice/serve".to_string(),
        "--lora-target-modules q_proj v_proj".to_string(),
        r#"PeftModel.from_pretrained(base, "alice/serve", revision="prod")"#.to_string(),
    ] {
        assert!(
            serve.contains(&part),
            "the serving snippets lack {part}: {serve}"
        );
    }
    // The way to follow it live: a webhook on this adapter, prefilled.
    assert!(
        html.contains("href=\"/webhooks?adapter=alice/serve\""),
        "a link to a webhook on this adapter"
    );
    // On S3 the LoRAX s3 snippet names the version's export prefix itself.
    if let Some(url) = app.store.blobs.s3_url(&format!("exports/{rev}")) {
        assert!(serve.contains(&url), "the s3 snippet lacks {url}");
    }
    // A page opened at a bare number pins `vN` (every client's ref grammar takes it).
    let (_, _, html) = page(&app, "/alice/serve/versions/1", "").await;
    assert!(html.contains("alice/serve@v1"), "pinned to v1");
    assert!(html.contains("alice--serve/v1"), "pbase id pinned to v1");
    // The adapter's own page pins the shown version's revision.
    let (_, _, html) = page(&app, "/alice/serve", "").await;
    assert!(
        html.contains(&format!("alice/serve@{rev}")),
        "pinned to the revision"
    );
    // Badges link to the snippets and name the flags.
    assert!(
        html.contains("<a href=\"#serve-vllm\">vLLM ✓</a>"),
        "vLLM badge links"
    );
    assert!(
        html.contains("<a href=\"#serve-lorax\">LoRAX ✓</a>"),
        "LoRAX badge links"
    );
    assert!(
        html.contains("<a href=\"#serve-peft\">PEFT ✓</a>"),
        "PEFT badge links"
    );
    for anchor in ["serve-vllm", "serve-lorax", "serve-sglang", "serve-peft"] {
        assert!(html.contains(&format!("id=\"{anchor}\"")), "{anchor}");
    }
    assert!(html.contains("<code class=\"flags\">--enable-lora --max-lora-rank 8</code>"));
    // A Host the client sent is the address (cached pages are kept per address).
    let res = app
        .request(Method::GET, "/alice/serve/versions/prod", "")
        .header("Host", "quiver.example:9000")
        .send()
        .await
        .expect("page");
    let other = res.text().await.expect("body");
    assert!(
        other.contains("QUIVER_URL=http://quiver.example:9000"),
        "the Host names the server"
    );
    assert!(!other.contains(&app.base), "another address's cached page");
    // A Host no address has is not pasted into shells.
    let res = app
        .request(Method::GET, "/alice/serve/versions/prod", "")
        .header("Host", "x$(touch y)")
        .send()
        .await
        .expect("page");
    let odd = res.text().await.expect("body");
    assert!(
        !odd.contains("touch"),
        "a hostile Host reaches the snippets"
    );
}
