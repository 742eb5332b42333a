//! Listing pages are cached per caller and query; every change anyone commits must show at once.

use quiver_api::config::HttpOptions;
use quiver_store::{NewAdapter, RepoId};
use quiver_tests::{Backend, TestApp, app_or_skip, spawn_app_with, synthetic_adapter};
use reqwest::Method;
use rstest::rstest;
use serde_json::{Value, json};

const PAGE: &str = "/api/v1/adapters?limit=50";

fn ids(body: &Value) -> Vec<String> {
    body["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| i["id"].as_str().expect("id").to_string())
        .collect()
}

async fn item(app: &TestApp, id: &str) -> Value {
    let (status, body) = app.get_json(PAGE, "").await;
    assert_eq!(status, 200, "{body}");
    body["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|i| i["id"] == id)
        .cloned()
        .unwrap_or(Value::Null)
}

/// Which caches a server keeps: pages and the adapters between pages (the default), only the
/// adapters, or nothing.
#[derive(Clone, Copy, Debug)]
enum Caches {
    Both,
    AdaptersOnly,
    None,
}

async fn app_with(backend: Backend, caches: Caches) -> Option<TestApp> {
    let (pages, adapters) = match caches {
        Caches::Both => (1 << 20, 1 << 20),
        Caches::AdaptersOnly => (0, 1 << 20),
        Caches::None => (0, 0),
    };
    spawn_app_with(
        backend,
        HttpOptions {
            list_cache_bytes: pages,
            list_fragment_bytes: adapters,
            ..HttpOptions::default()
        },
    )
    .await
}

#[rstest]
#[case::sqlite(Backend::Sqlite, Caches::Both)]
#[case::sqlite_adapters_only(Backend::Sqlite, Caches::AdaptersOnly)]
#[case::sqlite_uncached(Backend::Sqlite, Caches::None)]
#[case::postgres(Backend::Postgres, Caches::Both)]
#[case::postgres_adapters_only(Backend::Postgres, Caches::AdaptersOnly)]
#[tokio::test]
async fn every_write_shows_in_the_next_listing(#[case] backend: Backend, #[case] caches: Caches) {
    let Some(app) = app_with(backend, caches).await else {
        return;
    };
    app.create_adapter("alice", "a", false, "alice").await;
    assert_eq!(ids(&app.get_json(PAGE, "").await.1), ["alice/a"]);
    // Served twice (the second from the cache), then after each kind of write.
    assert_eq!(ids(&app.get_json(PAGE, "").await.1), ["alice/a"]);

    app.create_adapter("alice", "b", false, "alice").await;
    assert_eq!(ids(&app.get_json(PAGE, "").await.1), ["alice/b", "alice/a"]);

    app.send(
        app.request(Method::PATCH, "/api/v1/adapters/alice/a", "alice")
            .json(&json!({"description": "now about zebras", "tags": ["zoo"]})),
    )
    .await;
    let a = item(&app, "alice/a").await;
    assert_eq!(a["description"], "now about zebras");
    assert_eq!(a["tags"], json!(["zoo"]));
    let (_, found) = app.get_json("/api/v1/adapters?q=zebra", "").await;
    assert_eq!(ids(&found), ["alice/a"]);

    let (status, v) = app
        .upload("alice/a", "alice", &synthetic_adapter(4, &["q_proj"], 1))
        .await;
    assert_eq!(status, 201, "{v}");
    let a = item(&app, "alice/a").await;
    assert_eq!(a["latest"]["number"], 1);
    assert_eq!(a["refs"], json!({"main": 1}));

    app.send(
        app.request(Method::PUT, "/api/v1/adapters/alice/a/refs/prod", "alice")
            .json(&json!({"version": 1})),
    )
    .await;
    assert_eq!(
        item(&app, "alice/a").await["refs"],
        json!({"main": 1, "prod": 1})
    );
    app.send(app.request(
        Method::DELETE,
        "/api/v1/adapters/alice/a/refs/prod",
        "alice",
    ))
    .await;
    assert_eq!(item(&app, "alice/a").await["refs"], json!({"main": 1}));

    app.send(
        app.request(Method::PATCH, "/api/v1/adapters/alice/a", "alice")
            .json(&json!({"private": true})),
    )
    .await;
    assert_eq!(ids(&app.get_json(PAGE, "").await.1), ["alice/b"]);
    assert_eq!(
        ids(&app.get_json(PAGE, "alice").await.1),
        ["alice/a", "alice/b"]
    );
    assert_eq!(ids(&app.get_json(PAGE, "bob").await.1), ["alice/b"]);
    assert_eq!(
        ids(&app.get_json(PAGE, "admin").await.1),
        ["alice/a", "alice/b"]
    );

    app.send(app.request(Method::DELETE, "/api/v1/adapters/alice/b", "alice"))
        .await;
    assert!(ids(&app.get_json(PAGE, "").await.1).is_empty());
    assert_eq!(ids(&app.get_json(PAGE, "alice").await.1), ["alice/a"]);
}

#[rstest]
#[case::sqlite(Backend::Sqlite, Caches::Both)]
#[case::sqlite_adapters_only(Backend::Sqlite, Caches::AdaptersOnly)]
#[case::postgres(Backend::Postgres, Caches::Both)]
#[case::postgres_adapters_only(Backend::Postgres, Caches::AdaptersOnly)]
#[tokio::test]
async fn writes_by_another_process_show_at_once(#[case] backend: Backend, #[case] caches: Caches) {
    let Some(app) = app_with(backend, caches).await else {
        return;
    };
    app.create_adapter("alice", "a", false, "alice").await;
    assert_eq!(ids(&app.get_json(PAGE, "").await.1), ["alice/a"]);
    // Another server (or `quiver` command) on the same database.
    let other = app.open_store_again().await;
    let created = other
        .meta
        .create_adapter(&NewAdapter {
            repo: RepoId::parse("bob", "elsewhere").expect("name"),
            base_model: "quiver-test/tiny-llama".into(),
            description: String::new(),
            tags: vec![],
            private: false,
        })
        .await
        .expect("create");
    assert_eq!(
        ids(&app.get_json(PAGE, "").await.1),
        ["bob/elsewhere", "alice/a"]
    );
    other.meta.delete_adapter(created.id).await.expect("delete");
    assert_eq!(ids(&app.get_json(PAGE, "").await.1), ["alice/a"]);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn listings_carry_an_etag_and_answer_304(#[case] backend: Backend) {
    let app = app_or_skip!(backend);
    app.create_adapter("alice", "a", false, "alice").await;
    let first = app
        .request(Method::GET, PAGE, "")
        .send()
        .await
        .expect("get");
    assert_eq!(first.status(), 200);
    let etag = first.headers()["etag"].to_str().expect("etag").to_string();
    assert!(etag.starts_with('"') && etag.ends_with('"'), "{etag}");
    let again = app
        .request(Method::GET, PAGE, "")
        .header("If-None-Match", &etag)
        .send()
        .await
        .expect("get");
    assert_eq!(again.status(), 304);
    assert!(again.bytes().await.expect("body").is_empty());
    let head = app
        .request(Method::HEAD, PAGE, "")
        .send()
        .await
        .expect("head");
    assert_eq!(head.status(), 200);
    assert_eq!(head.headers()["etag"].to_str().expect("etag"), etag);
    assert!(head.bytes().await.expect("body").is_empty());
    // Another query, another caller or a change: another body, so the old tag does not match.
    app.create_adapter("alice", "b", false, "alice").await;
    let changed = app
        .request(Method::GET, PAGE, "")
        .header("If-None-Match", &etag)
        .send()
        .await
        .expect("get");
    assert_eq!(changed.status(), 200);
    assert_ne!(changed.headers()["etag"].to_str().expect("etag"), etag);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn search_is_a_case_insensitive_substring_match(#[case] backend: Backend) {
    let app = app_or_skip!(backend);
    for (name, description, base) in [
        (
            "math-solver",
            "Solves GSM8K word problems",
            "meta-llama/Llama-3.1-8B",
        ),
        (
            "poet",
            "Writes sonnets about Zürich",
            "mistralai/Mistral-7B-v0.3",
        ),
        (
            "quote-maker",
            "Says \"hello\" 100% of the time",
            "meta-llama/Llama-3.1-8B",
        ),
    ] {
        let (status, body) = app
            .post_json(
                "/api/v1/adapters",
                "alice",
                &json!({"owner": "alice", "name": name, "description": description, "base_model": base}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
    }
    for (q, expected) in [
        ("gsm8k", vec!["alice/math-solver"]),
        ("GSM", vec!["alice/math-solver"]),
        ("alice/ma", vec!["alice/math-solver"]),
        ("mistral", vec!["alice/poet"]),
        ("LLAMA-3.1", vec!["alice/quote-maker", "alice/math-solver"]),
        ("sonnets about", vec!["alice/poet"]),
        ("\"hello\"", vec!["alice/quote-maker"]),
        ("100%", vec!["alice/quote-maker"]),
        ("ts", vec!["alice/poet"]), // under 3 characters: scanned, same semantics
        ("er", vec!["alice/quote-maker", "alice/math-solver"]),
        ("nothing-like-this", vec![]),
        ("100%_", vec![]),
        ("\"", vec!["alice/quote-maker"]),
        ("a\"b", vec![]),
        ("OR", vec!["alice/math-solver"]),
        ("NOT", vec![]),
        ("NEAR(", vec![]),
    ] {
        let path = format!("/api/v1/adapters?sort=created&q={}", urlencode(q));
        let (status, body) = app.get_json(&path, "").await;
        assert_eq!(status, 200, "{q}: {body}");
        assert_eq!(ids(&body), expected, "q={q:?}");
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Every listing page (one query for the page, tags, newest ready version, files, aliases and
/// protected names) shows each adapter exactly as its own resource does (built by separate
/// queries), for every sort, page size and caller, with the cache on; and the pages' cursors
/// walk every visible adapter once. With the adapters kept between pages, their JSON is kept too
/// and spliced into the page.
#[rstest]
#[case::sqlite(Backend::Sqlite, Caches::Both)]
#[case::sqlite_adapters_only(Backend::Sqlite, Caches::AdaptersOnly)]
#[case::sqlite_uncached(Backend::Sqlite, Caches::None)]
#[case::postgres(Backend::Postgres, Caches::Both)]
#[case::postgres_adapters_only(Backend::Postgres, Caches::AdaptersOnly)]
#[tokio::test]
async fn listed_items_are_the_adapters_own_views(#[case] backend: Backend, #[case] caches: Caches) {
    let Some(app) = app_with(backend, caches).await else {
        return;
    };
    // Tags out of alphabetical order, versions with several files, aliases, a protected name,
    // private adapters of two users, an adapter without versions.
    let body = json!({"owner": "alice", "name": "multi", "base_model": "quiver-test/tiny-llama",
        "description": "several versions", "tags": ["zeta", "alpha", "mid"]});
    assert_eq!(
        app.post_json("/api/v1/adapters", "alice", &body).await.0,
        201
    );
    for seed in 1..=2 {
        let mut files = synthetic_adapter(4, &["q_proj", "v_proj"], seed);
        files.push(("README.md".into(), b"# multi\n".to_vec()));
        files.push(("extra/notes.txt".into(), b"notes".to_vec()));
        assert_eq!(app.upload("alice/multi", "alice", &files).await.0, 201);
    }
    for (alias, version) in [("prod", 1), ("canary", 2)] {
        let (status, body) = app
            .send(
                app.request(
                    Method::PUT,
                    &format!("/api/v1/adapters/alice/multi/refs/{alias}"),
                    "alice",
                )
                .json(&json!({ "version": version })),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, body) = app
        .send(app.request(
            Method::PUT,
            "/api/v1/adapters/alice/multi/refs/prod/protection",
            "alice",
        ))
        .await;
    assert_eq!(status, 200, "{body}");
    app.adapter_with("alice/one", &synthetic_adapter(8, &["q_proj"], 3))
        .await;
    app.create_adapter("alice", "empty", false, "alice").await;
    app.create_adapter("alice", "hidden", true, "alice").await;
    assert_eq!(
        app.upload(
            "alice/hidden",
            "alice",
            &synthetic_adapter(4, &["k_proj"], 4)
        )
        .await
        .0,
        201
    );
    app.create_adapter("bob", "own", true, "bob").await;
    app.adapter_with("bob/pub", &synthetic_adapter(4, &["q_proj"], 5))
        .await;

    for who in ["", "alice", "alice_read", "bob", "admin"] {
        let mut expected: Option<Vec<String>> = None;
        for sort in ["updated", "created", "downloads", "name"] {
            for limit in [1, 2, 50] {
                let mut seen = Vec::new();
                let mut cursor: Option<String> = None;
                loop {
                    let mut path = format!("/api/v1/adapters?sort={sort}&limit={limit}");
                    if let Some(c) = &cursor {
                        path.push_str(&format!("&cursor={c}"));
                    }
                    let (status, page) = app.get_json(&path, who).await;
                    assert_eq!(status, 200, "{who} {path}: {page}");
                    for item in page["items"].as_array().expect("items") {
                        let id = item["id"].as_str().expect("id");
                        let (status, own) =
                            app.get_json(&format!("/api/v1/adapters/{id}"), who).await;
                        assert_eq!(status, 200, "{who} sees {id} listed");
                        assert_eq!(item, &own, "{who} {path}: {id}");
                        seen.push(id.to_string());
                    }
                    cursor = page["next_cursor"].as_str().map(str::to_owned);
                    if cursor.is_none() {
                        break;
                    }
                }
                let mut sorted = seen.clone();
                sorted.sort();
                sorted.dedup();
                assert_eq!(sorted.len(), seen.len(), "{who} {sort} {limit}: once each");
                match &expected {
                    None => expected = Some(sorted),
                    Some(e) => assert_eq!(&sorted, e, "{who} {sort} {limit}: the same set"),
                }
                if sort == "name" {
                    let mut by_name = seen.clone();
                    by_name.sort();
                    assert_eq!(seen, by_name, "{who}: sorted by name");
                }
            }
        }
        let visible = expected.expect("listed");
        for id in ["alice/multi", "alice/one", "alice/empty", "bob/pub"] {
            assert!(visible.iter().any(|v| v == id), "{who} lacks {id}");
        }
        let sees = |id: &str| match who {
            "admin" => true,
            "alice" | "alice_read" => id.starts_with("alice/"),
            "bob" => id.starts_with("bob/"),
            _ => false,
        };
        for id in ["alice/hidden", "bob/own"] {
            assert_eq!(visible.iter().any(|v| v == id), sees(id), "{who} and {id}");
        }
    }
    // What the single view holds, so the comparison above compared something.
    let (_, multi) = app.get_json("/api/v1/adapters/alice/multi", "").await;
    assert_eq!(multi["tags"], json!(["zeta", "alpha", "mid"]));
    assert_eq!(multi["latest"]["number"], 2);
    assert_eq!(multi["refs"], json!({"canary": 2, "main": 2, "prod": 1}));
    assert_eq!(multi["protected_aliases"], json!(["prod"]));
    let paths: Vec<&str> = multi["latest"]["files"]
        .as_array()
        .expect("files")
        .iter()
        .map(|f| f["path"].as_str().expect("path"))
        .collect();
    assert_eq!(paths.len(), 4, "{paths:?}");
    assert!(paths.is_sorted(), "{paths:?}");
}
