//! Input an attacker chooses: file paths that plant files on a downloader (every way in), LFS
//! sizes and upload links a client makes up, file names in the page's shell snippet, sign-in
//! redirects, client numbers that overflow, method names that would grow `/metrics`, HEAD on
//! pages and the Hub's payload errors.

use base64::Engine;
use quiver_store::{FileRecord, NewVersion, RepoId, StoreError, VersionFacets, VersionRef};
use quiver_tests::{Backend, Files, TestApp, app_or_skip, sha256_hex, synthetic_adapter};
use reqwest::Method;
use reqwest::header::{CONTENT_TYPE, LOCATION, SET_COOKIE};
use rstest::rstest;
use serde_json::{Value, json};

/// Paths every way in must refuse, with a label for messages.
const DANGEROUS: &[&str] = &[
    ".git/config",
    ".GIT/config",
    "sub/.Git/hooks/post-checkout",
    ".git",
    ".git./config",
    "GIT~1/config",
    ".gitmodules",
    ".lfsconfig",
    ".cache/huggingface/download/adapter_model.safetensors.metadata",
    "/etc/passwd",
    "../escape.txt",
    "a/./b",
    "a//b",
    "a\\b",
    "a\tb",
    "name. ",
    " lead",
    "con.txt",
];

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// One NDJSON Hub commit to `repo`'s main, as `who`.
async fn hub_commit(app: &TestApp, repo: &str, who: &str, lines: &[Value]) -> (u16, Value) {
    let mut body = json!({"key": "header", "value": {"summary": "test"}}).to_string();
    for l in lines {
        body.push('\n');
        body.push_str(&l.to_string());
    }
    app.send(
        app.request(
            Method::POST,
            &format!("/api/models/{repo}/commit/main"),
            who,
        )
        .header(CONTENT_TYPE, "application/x-ndjson")
        .body(body),
    )
    .await
}

fn inline(path: &str, bytes: &[u8]) -> Value {
    json!({"key": "file", "value": {"path": path, "content": b64(bytes), "encoding": "base64"}})
}

fn lfs(path: &str, oid: &str, size: Option<i64>) -> Value {
    match size {
        Some(s) => {
            json!({"key": "lfsFile", "value": {"path": path, "algo": "sha256", "oid": oid, "size": s}})
        }
        None => json!({"key": "lfsFile", "value": {"path": path, "algo": "sha256", "oid": oid}}),
    }
}

/// The batch API's answer for one object of `repo`.
async fn batch(app: &TestApp, repo: &str, who: &str, oid: &str, size: i64) -> Value {
    let (status, body) = app
        .send(
            app.request(
                Method::POST,
                &format!("/{repo}.git/info/lfs/objects/batch"),
                who,
            )
            .header(CONTENT_TYPE, "application/vnd.git-lfs+json")
            .body(
                json!({"operation": "upload", "transfer": ["basic"],
                    "objects": [{"oid": oid, "size": size}]})
                .to_string(),
            ),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body["objects"][0].clone()
}

/// Asks for an upload link for `bytes` and returns it (absolute URL).
async fn upload_link(app: &TestApp, repo: &str, who: &str, bytes: &[u8]) -> String {
    let object = batch(app, repo, who, &sha256_hex(bytes), bytes.len() as i64).await;
    object["actions"]["upload"]["href"]
        .as_str()
        .unwrap_or_else(|| panic!("no upload action: {object}"))
        .to_string()
}

/// PUTs `bytes` to an upload link (no token: the link is the authorisation).
async fn put(app: &TestApp, href: &str, bytes: &[u8]) -> (u16, Value) {
    app.send(app.client.put(href).body(bytes.to_vec())).await
}

/// Uploads `bytes` through the LFS API for `repo` (nothing to do when the adapter holds them).
async fn lfs_upload(app: &TestApp, repo: &str, who: &str, bytes: &[u8]) {
    let object = batch(app, repo, who, &sha256_hex(bytes), bytes.len() as i64).await;
    let Some(href) = object["actions"]["upload"]["href"].as_str() else {
        assert!(object.get("error").is_none(), "{object}");
        return;
    };
    let (status, body) = put(app, href, bytes).await;
    assert_eq!(status, 200, "{body}");
}

async fn version_count(app: &TestApp) -> i64 {
    app.store.meta.row_counts().await.expect("counts").1
}

fn file<'a>(files: &'a Files, name: &str) -> &'a [u8] {
    &files
        .iter()
        .find(|(p, _)| p == name)
        .expect("file present")
        .1
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn dangerous_paths_are_refused_by_every_way_in(#[case] backend: Backend) {
    let app = app_or_skip!(backend);
    let good = synthetic_adapter(4, &["q_proj"], 3);
    app.adapter_with("alice/a", &good).await;
    let config = file(&good, "adapter_config.json").to_vec();
    let weights = file(&good, "adapter_model.safetensors").to_vec();
    lfs_upload(&app, "alice/a", "alice", &weights).await;
    let oid = sha256_hex(&weights);
    let before = version_count(&app).await;
    for path in DANGEROUS {
        let named = |how: &str, status: u16, body: &Value| {
            assert_eq!(status, 422, "{how} {path:?}: {body}");
            assert_eq!(body["error"]["code"], "invalid_file_path", "{how} {path:?}");
            let message = body["error"]["message"].as_str().unwrap_or_default();
            assert!(
                message.contains(&format!("{path:?}")),
                "{how}: the message names the path: {message}"
            );
        };
        // REST upload.
        let files = [good.clone(), vec![(path.to_string(), b"[core]\n".to_vec())]].concat();
        let (status, body) = app.upload("alice/a", "alice", &files).await;
        named("upload", status, &body);
        // Hub commit, inline file.
        let (status, body) = hub_commit(
            &app,
            "alice/a",
            "alice",
            &[inline(path, b"[core]\n\tfsmonitor = touch pwned\n")],
        )
        .await;
        named("commit", status, &body);
        // Hub commit, LFS file (an object this adapter holds).
        let (status, body) = hub_commit(
            &app,
            "alice/a",
            "alice",
            &[
                inline("adapter_config.json", &config),
                lfs(path, &oid, None),
            ],
        )
        .await;
        named("lfs commit", status, &body);
        // Preupload (the client's first question).
        let (status, body) = app
            .post_json(
                "/api/models/alice/a/preupload/main",
                "alice",
                &json!({"files": [{"path": path, "size": 10, "sample": ""}]}),
            )
            .await;
        named("preupload", status, &body);
    }
    // The store refuses them too, whatever calls it (a job's output, a future way in).
    let adapter = app
        .store
        .meta
        .get_adapter(&RepoId::parse("alice", "a").expect("repo"))
        .await
        .expect("get")
        .expect("adapter");
    let v1 = app
        .store
        .meta
        .get_version(adapter.id, &VersionRef::Number(1))
        .await
        .expect("get")
        .expect("v1");
    for path in DANGEROUS {
        let mut files = v1.files.clone();
        files.push(FileRecord {
            path: path.to_string(),
            size: v1.files[0].size,
            sha256: v1.files[0].sha256.clone(),
        });
        let new = NewVersion {
            created_by: "alice".into(),
            files,
            lora: v1.lora.clone(),
            lineage: None,
            parents: Vec::new(),
            facets: VersionFacets::default(),
        };
        let refused = app.store.meta.create_version(&adapter, &new).await;
        assert!(
            matches!(refused, Err(StoreError::Invalid(_))),
            "store took {path:?}: {refused:?}"
        );
    }
    assert_eq!(version_count(&app).await, before, "nothing was published");
    // Ordinary dotfiles the Hub itself uses still go in.
    let (status, body) = hub_commit(
        &app,
        "alice/a",
        "alice",
        &[inline(".gitattributes", b"*.safetensors filter=lfs\n")],
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn lfs_sizes_are_the_stored_blobs(#[case] backend: Backend) {
    let app = app_or_skip!(backend);
    let good = synthetic_adapter(4, &["q_proj", "v_proj"], 5);
    app.adapter_with("alice/s", &good).await;
    let config = file(&good, "adapter_config.json").to_vec();
    let weights = file(&good, "adapter_model.safetensors").to_vec();
    // A truncated weights file, committed with the full file's size.
    let truncated = weights[..weights.len() / 2].to_vec();
    lfs_upload(&app, "alice/s", "alice", &truncated).await;
    lfs_upload(&app, "alice/s", "alice", &weights).await;
    let real = weights.len() as i64;
    let before = version_count(&app).await;
    let w = "adapter_model.safetensors";
    for (what, oid, size) in [
        (
            "truncated, full size claimed",
            sha256_hex(&truncated),
            Some(real),
        ),
        ("inflated", sha256_hex(&weights), Some(real + 1000)),
        ("smaller", sha256_hex(&weights), Some(real - 1)),
        ("negative", sha256_hex(&weights), Some(-1)),
        ("zero", sha256_hex(&weights), Some(0)),
        ("absurd", sha256_hex(&weights), Some(1_000_000_000_000_000)),
        ("max", sha256_hex(&weights), Some(i64::MAX)),
    ] {
        let (status, body) = hub_commit(
            &app,
            "alice/s",
            "alice",
            &[inline("adapter_config.json", &config), lfs(w, &oid, size)],
        )
        .await;
        assert!(
            (400..500).contains(&status) && body["error"]["code"].is_string(),
            "{what}: {status} {body}"
        );
    }
    // Not a number a JSON integer holds.
    let (status, body) = hub_commit(
        &app,
        "alice/s",
        "alice",
        &[json!({"key": "lfsFile", "value": {"path": w, "oid": sha256_hex(&weights), "size": 1e30}})],
    )
    .await;
    assert_eq!(status, 400, "{body}");
    // The truncated file without a claim is the stored size: validation sees it is short.
    let (status, body) = hub_commit(
        &app,
        "alice/s",
        "alice",
        &[lfs(w, &sha256_hex(&truncated), None)],
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(version_count(&app).await, before, "nothing was published");
    // The right size, and no size: the version records the blob's size.
    for size in [Some(real), None] {
        let (status, body) = hub_commit(
            &app,
            "alice/s",
            "alice",
            &[lfs(w, &sha256_hex(&weights), size)],
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let (status, version) = app
            .get_json("/api/v1/adapters/alice/s/versions/main", "alice")
            .await;
        assert_eq!(status, 200);
        let recorded = version["files"]
            .as_array()
            .and_then(|f| f.iter().find(|f| f["path"] == w))
            .map(|f| f["size"].clone());
        assert_eq!(recorded, Some(json!(real)), "{version}");
    }
    assert_eq!(app.download("alice/s", "main", w, "alice").await, weights);
}

/// The link with one query parameter replaced.
fn with_param(href: &str, key: &str, value: &str) -> String {
    let mut url = url::Url::parse(href).expect("href");
    let pairs: Vec<(String, String)> = url
        .query_pairs()
        .map(|(k, v)| {
            let v = if k == key {
                value.to_string()
            } else {
                v.into_owned()
            };
            (k.into_owned(), v)
        })
        .collect();
    url.query_pairs_mut().clear().extend_pairs(pairs);
    url.to_string()
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn upload_links_refuse_forgeries_and_wrong_bytes(#[case] backend: Backend) {
    let app = app_or_skip!(backend);
    app.adapter_with("alice/l", &synthetic_adapter(4, &["q_proj"], 1))
        .await;
    app.adapter_with("bob/other", &synthetic_adapter(4, &["q_proj"], 2))
        .await;
    let bytes = b"object bytes for the link test".to_vec();
    let mut other = bytes.clone();
    other[0] = b'O';
    let oid = sha256_hex(&bytes);
    let href = upload_link(&app, "alice/l", "alice", &bytes).await;
    let sig = url::Url::parse(&href)
        .expect("href")
        .query_pairs()
        .find(|(k, _)| k == "sig")
        .map(|(_, v)| v.into_owned())
        .expect("sig");
    let expires: i64 = url::Url::parse(&href)
        .expect("href")
        .query_pairs()
        .find(|(k, _)| k == "expires")
        .and_then(|(_, v)| v.parse().ok())
        .expect("expires");
    let mut flipped = sig.clone().into_bytes();
    flipped[0] = if flipped[0] == b'a' { b'b' } else { b'a' };
    let flipped = String::from_utf8(flipped).expect("hex");
    let forged: Vec<(&str, String, Vec<u8>)> = vec![
        (
            "one hex digit changed",
            with_param(&href, "sig", &flipped),
            bytes.clone(),
        ),
        (
            "truncated signature",
            with_param(&href, "sig", &sig[..32]),
            bytes.clone(),
        ),
        ("no signature", with_param(&href, "sig", ""), bytes.clone()),
        (
            "not hex",
            with_param(&href, "sig", &"zz".repeat(32)),
            bytes.clone(),
        ),
        ("expired", with_param(&href, "expires", "1"), bytes.clone()),
        (
            "expiry moved later",
            with_param(&href, "expires", &(expires + 3600).to_string()),
            bytes.clone(),
        ),
        (
            "another repo",
            href.replace("/alice/l/", "/bob/other/"),
            bytes.clone(),
        ),
        (
            "another object",
            href.replace(&oid, &sha256_hex(&other)),
            other.clone(),
        ),
        (
            "another size",
            with_param(&href, "size", &(bytes.len() - 1).to_string()),
            bytes[1..].to_vec(),
        ),
    ];
    for (what, url, body) in forged {
        let (status, answer) = put(&app, &url, &body).await;
        assert_eq!(status, 403, "{what}: {answer}");
        assert_eq!(answer["error"]["code"], "forbidden", "{what}");
    }
    // A valid link with bytes that are not the promised ones: nothing is stored.
    for (what, body) in [
        ("other bytes of the same size", other.clone()),
        ("shorter", bytes[..20].to_vec()),
        ("longer", [bytes.clone(), b"x".to_vec()].concat()),
    ] {
        let (status, answer) = put(&app, &href, &body).await;
        assert_eq!(status, 400, "{what}: {answer}");
        assert!(
            !app.store.blobs.exists(&oid).await.expect("exists"),
            "{what}"
        );
        assert_eq!(
            app.store.blobs.count_staged().await.expect("staged"),
            0,
            "{what}: the refused part is not left staged"
        );
    }
    // Nothing uploaded: a commit cannot refer to the object.
    let (status, body) = hub_commit(
        &app,
        "alice/l",
        "alice",
        &[lfs("extra.safetensors", &oid, None)],
    )
    .await;
    assert_eq!(status, 422, "{body}");
    // The genuine upload works.
    let (status, body) = put(&app, &href, &bytes).await;
    assert_eq!(status, 200, "{body}");
    assert!(app.store.blobs.exists(&oid).await.expect("exists"));
}

/// Unescapes the few entities askama writes.
fn unescape(html: &str) -> String {
    html.replace("&quot;", "\"")
        .replace("&#34;", "\"")
        .replace("&#x27;", "'")
        .replace("&#39;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn the_curl_snippet_quotes_file_names(#[case] backend: Backend) {
    let app = app_or_skip!(backend);
    let name = "sub dir/x$(touch pwned)'q'`touch pwned2`.txt";
    let mut files = synthetic_adapter(4, &["q_proj"], 9);
    files.push((name.to_string(), b"hello".to_vec()));
    app.adapter_with("alice/snip", &files).await;
    let res = app
        .request(Method::GET, "/alice/snip", "")
        .send()
        .await
        .expect("page");
    assert_eq!(res.status(), 200);
    let html = res.text().await.expect("html");
    let start = html.find("<pre class=\"snippet\"><code>").expect("snippet") + 27;
    let end = start + html[start..].find("</code>").expect("end");
    let snippet = unescape(&html[start..end]);
    let line = "curl -fL -H \"Authorization: Bearer $QUIVER_TOKEN\" --create-dirs \
        -o 'alice/snip/sub dir/x$(touch pwned)'\\''q'\\''`touch pwned2`.txt' \
        \"$BASE/\"'sub%20dir/x%24%28touch%20pwned%29%27q%27%60touch%20pwned2%60.txt'";
    assert!(snippet.contains(line), "{snippet}");
    // Run it in a shell whose `curl` only records its arguments.
    let dir = tempfile::tempdir().expect("tempdir");
    let script = format!(
        "curl() {{ for a in \"$@\"; do printf '%s\\n' \"$a\"; done >> args; }}\n\
         QUIVER_URL=http://quiver.test QUIVER_TOKEN=t\n{snippet}\n"
    );
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(&script)
        .current_dir(dir.path())
        .output()
        .expect("sh");
    assert!(out.status.success(), "{out:?}");
    assert!(
        !dir.path().join("pwned").exists(),
        "the snippet ran a command"
    );
    assert!(
        !dir.path().join("pwned2").exists(),
        "the snippet ran a command"
    );
    let args = std::fs::read_to_string(dir.path().join("args")).expect("args");
    let args: Vec<&str> = args.lines().collect();
    assert!(
        args.contains(&format!("alice/snip/{name}").as_str()),
        "{args:?}"
    );
    assert!(
        args.iter().any(|a| a
            .starts_with("http://quiver.test/api/v1/adapters/alice/snip/versions/")
            && a.ends_with(
                "/files/sub%20dir/x%24%28touch%20pwned%29%27q%27%60touch%20pwned2%60.txt"
            )),
        "{args:?}"
    );
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

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn sign_in_redirects_only_to_this_site(#[case] backend: Backend) {
    let app = app_or_skip!(backend);
    let res = app
        .request(Method::GET, "/signin", "")
        .send()
        .await
        .expect("form");
    let cookies = set_cookies(res.headers()).join("; ");
    let html = res.text().await.expect("html");
    let at = html.find("name=\"csrf\" value=\"").expect("csrf field") + 19;
    let csrf = html[at..at + 48].to_string();
    for (next, want) in [
        ("/jobs", "/jobs"),
        (
            "/alice/x/versions/v2?tab=files",
            "/alice/x/versions/v2?tab=files",
        ),
        ("/\t/evil.example", "/"),
        ("/\t\t/evil.example/x", "/"),
        ("/\n/evil.example", "/"),
        ("/\r\n/evil.example", "/"),
        ("/\r\nSet-Cookie: x=y", "/"),
        ("//evil.example", "/"),
        ("/\\evil.example", "/"),
        ("\\\\evil.example", "/"),
        ("https://evil.example/", "/"),
        ("javascript:alert(1)", "/"),
        ("/.//evil.example", "/"),
        ("/\u{0}/evil.example", "/"),
        ("", "/"),
    ] {
        let res = app
            .request(Method::POST, "/signin", "")
            .header("Cookie", &cookies)
            .form(&[
                ("token", app.token("alice")),
                ("csrf", &csrf),
                ("next", next),
            ])
            .send()
            .await
            .expect("sign in");
        assert_eq!(res.status(), 303, "{next:?}");
        assert_eq!(res.headers()[LOCATION], want, "{next:?}");
        // The form shown with a bad token carries the same cleaned value.
        let (status, _) = app
            .send(app.request(
                Method::GET,
                &format!(
                    "/signin?next={}",
                    url::form_urlencoded::byte_serialize(next.as_bytes()).collect::<String>()
                ),
                "",
            ))
            .await;
        assert_eq!(status, 200, "{next:?}");
    }
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn client_numbers_cannot_overflow(#[case] backend: Backend) {
    let app = app_or_skip!(backend);
    app.adapter_with("alice/t", &synthetic_adapter(4, &["q_proj"], 4))
        .await;
    let (status, all) = app.get_json("/api/models/alice/t/tree/main", "").await;
    assert_eq!(status, 200, "{all}");
    let n = all.as_array().map_or(0, Vec::len);
    for cursor in [
        u64::MAX.to_string(),
        (usize::MAX - 10).to_string(),
        (n + 1).to_string(),
        "-1".into(),
        "1e3".into(),
        "99999999999999999999999".into(),
    ] {
        let (status, body) = app
            .get_json(
                &format!("/api/models/alice/t/tree/main?cursor={cursor}"),
                "",
            )
            .await;
        assert_eq!(status, 400, "cursor {cursor}: {body}");
        assert_eq!(body["error"]["code"], "invalid_query", "cursor {cursor}");
    }
    let (status, body) = app
        .get_json(&format!("/api/models/alice/t/tree/main?cursor={n}"), "")
        .await;
    assert_eq!((status, body), (200, json!([])));
    // Other client numbers: limits, ranges, version numbers.
    for path in [
        "/api/v1/adapters?limit=4294967296",
        "/api/v1/adapters?limit=0",
        "/api/v1/adapters/alice/t/versions?limit=-1",
        "/api/v1/jobs?limit=99999999999",
        "/api/models?limit=-5",
        "/api/models?limit=99999999999999999999",
    ] {
        let (status, body) = app.get_json(path, "alice").await;
        assert_eq!(status, 400, "{path}: {body}");
    }
    for reference in [
        "v9223372036854775807",
        "v99999999999999999999",
        "18446744073709551616",
    ] {
        let (status, body) = app
            .get_json(
                &format!("/api/v1/adapters/alice/t/versions/{reference}"),
                "",
            )
            .await;
        assert_eq!(status, 404, "{reference}: {body}");
    }
    for range in [
        "bytes=18446744073709551615-",
        "bytes=0-18446744073709551615",
        "bytes=-18446744073709551615",
        "bytes=18446744073709551616-",
    ] {
        let res = app
            .request(
                Method::GET,
                "/api/v1/adapters/alice/t/versions/1/files/adapter_config.json",
                "",
            )
            .header("Range", range)
            .send()
            .await
            .expect("range");
        assert!(
            [200, 206, 416].contains(&res.status().as_u16()),
            "{range}: {}",
            res.status()
        );
    }
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn metric_labels_stay_a_closed_set(#[case] backend: Backend) {
    let app = app_or_skip!(backend);
    // Warm up the label sets ordinary traffic makes.
    for path in ["/healthz", "/nope/a/b/c", "/api/v1/nope"] {
        let _ = app.request(Method::GET, path, "").send().await;
        let _ = app.request(Method::POST, path, "").send().await;
    }
    let count = |text: &str| {
        text.lines()
            .filter(|l| l.starts_with("quiver_http_requests_total{"))
            .count()
    };
    let before = count(&app.metrics_text().await);
    for i in 0..300 {
        let method = Method::from_bytes(format!("M{i}X").as_bytes()).expect("method");
        let path = format!("/random-{i}/p{i}/q/{i}");
        let _ = app.request(method.clone(), &path, "").send().await;
        let _ = app.request(method, "/healthz", "").send().await;
    }
    let text = app.metrics_text().await;
    assert!(!text.contains("M1X") && !text.contains("random-"), "{text}");
    assert!(text.contains("method=\"other\""), "{text}");
    // At most: other × {unmatched, /healthz} × a few status classes, plus /metrics itself.
    assert!(
        count(&text) <= before + 6,
        "{} → {}:\n{text}",
        before,
        count(&text)
    );
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn pages_answer_head_and_hub_payload_errors_are_json(#[case] backend: Backend) {
    let app = app_or_skip!(backend);
    app.adapter_with("alice/h", &synthetic_adapter(4, &["q_proj"], 6))
        .await;
    for path in [
        "/",
        "/?q=x",
        "/signin",
        "/signout",
        "/jobs",
        "/static/style.css",
        "/alice/h",
        "/alice/h/versions/1",
        "/alice/missing",
        "/alice/h/versions/9",
        "/healthz",
        "/metrics",
        "/docs",
        "/docs/",
        "/api/openapi.json",
    ] {
        let get = app
            .request(Method::GET, path, "")
            .send()
            .await
            .expect("get");
        let head = app
            .request(Method::HEAD, path, "")
            .send()
            .await
            .expect("head");
        assert_ne!(head.status(), 405, "HEAD {path}");
        assert_eq!(head.status(), get.status(), "HEAD {path}");
        assert_eq!(
            head.headers().get(CONTENT_TYPE),
            get.headers().get(CONTENT_TYPE),
            "HEAD {path}"
        );
        assert!(head.bytes().await.expect("body").is_empty(), "HEAD {path}");
    }
    // A batch body over the limit: 413 in the JSON envelope, not an HTML page.
    let big = json!({"operation": "upload", "objects": [{"oid": "a".repeat(64), "size": 1}],
        "pad": "x".repeat(4 * 1024 * 1024)});
    let res = app
        .request(Method::POST, "/alice/h.git/info/lfs/objects/batch", "alice")
        .header(CONTENT_TYPE, "application/vnd.git-lfs+json")
        .body(big.to_string())
        .send()
        .await
        .expect("batch");
    assert_eq!(res.status(), 413);
    let body: Value = res.json().await.expect("a JSON body");
    assert_eq!(body["error"]["code"], "payload_too_large", "{body}");
    // Other errors of the Hub's routes under the root are JSON too (they were HTML pages).
    for (method, path) in [
        (Method::POST, "/alice/h/resolve/main/adapter_config.json"),
        (Method::GET, "/alice/h.git/info/lfs/objects/batch"),
        (Method::GET, "/alice/h/resolve/main/missing.txt"),
    ] {
        let res = app.request(method, path, "").send().await.expect("hub");
        let status = res.status().as_u16();
        assert!((400..500).contains(&status), "{path}: {status}");
        let body: Value = res.json().await.expect("a JSON body");
        assert!(body["error"]["code"].is_string(), "{path}: {body}");
    }
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn hub_listings_never_offer_a_refused_path_to_snapshots(#[case] backend: Backend) {
    let app = app_or_skip!(backend);
    let mut files = synthetic_adapter(4, &["q_proj"], 8);
    files.push(("README.md".into(), b"# card\n".to_vec()));
    app.adapter_with("alice/old", &files).await;
    // A version published before the path rule: its file row renamed behind the store's back.
    let pool = sqlx::AnyPool::connect(&app.settings().database_url)
        .await
        .expect("connect");
    sqlx::query("UPDATE files SET path = '.git/config' WHERE path = 'README.md'")
        .execute(&pool)
        .await
        .expect("rename");
    pool.close().await;
    let (status, info) = app.get_json("/api/models/alice/old?blobs=true", "").await;
    assert_eq!(status, 200, "{info}");
    let siblings: Vec<&str> = info["siblings"]
        .as_array()
        .expect("siblings")
        .iter()
        .filter_map(|s| s["rfilename"].as_str())
        .collect();
    assert_eq!(
        siblings,
        ["adapter_config.json", "adapter_model.safetensors"],
        "{info}"
    );
    let (status, tree) = app
        .get_json("/api/models/alice/old/tree/main?recursive=true", "")
        .await;
    assert_eq!(status, 200, "{tree}");
    let paths: Vec<&str> = tree
        .as_array()
        .expect("tree")
        .iter()
        .filter_map(|e| e["path"].as_str())
        .collect();
    assert!(!paths.iter().any(|p| p.contains(".git")), "{paths:?}");
    // The next commit must delete it: carried over, it is refused.
    let (status, body) = hub_commit(&app, "alice/old", "alice", &[inline("notes.txt", b"x")]).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "invalid_file_path");
    let (status, body) = hub_commit(
        &app,
        "alice/old",
        "alice",
        &[json!({"key": "deletedFile", "value": {"path": ".git/config"}})],
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

/// HMAC-SHA256 (RFC 2104) written out here, independently of the server's `hmac` crate.
fn hmac_sha256_hex(key: &[u8], message: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let pad = |b: u8| k.iter().map(|x| x ^ b).collect::<Vec<u8>>();
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(message)
        .finalize();
    let outer = Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize();
    hex::encode(outer)
}

/// A server process with a known `QUIVER_SIGNING_KEY`: a link signed correctly but expired is
/// refused, and the same link with a future expiry is taken (so the refusal is the expiry's).
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_correctly_signed_link_is_refused_once_expired(#[case] backend: Backend) {
    let app = app_or_skip!(backend);
    app.adapter_with("alice/exp", &synthetic_adapter(4, &["q_proj"], 12))
        .await;
    let key = "e2e signing key";
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let _server = quiver_tests::Process::start(
        &app,
        &[
            "serve",
            "--bind",
            &format!("127.0.0.1:{port}"),
            "--job-workers",
            "0",
        ],
        &[("QUIVER_SIGNING_KEY", key.to_string())],
    );
    let base = format!("http://127.0.0.1:{port}");
    let started = std::time::Instant::now();
    while !app
        .client
        .get(format!("{base}/healthz"))
        .send()
        .await
        .is_ok_and(|r| r.status() == 200)
    {
        assert!(started.elapsed().as_secs() < 60, "the server did not start");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let bytes = b"bytes behind an expired link".to_vec();
    let oid = sha256_hex(&bytes);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    let link = |expires: i64| {
        let message = format!("alice/exp\n{oid}\n{}\n{expires}", bytes.len());
        let sig = hmac_sha256_hex(key.as_bytes(), message.as_bytes());
        format!(
            "{base}/api/lfs-upload/alice/exp/{oid}?size={}&expires={expires}&sig={sig}",
            bytes.len()
        )
    };
    let (status, body) = put(&app, &link(now - 5), &bytes).await;
    assert_eq!(status, 403, "expired: {body}");
    assert!(!app.store.blobs.exists(&oid).await.expect("exists"));
    let (status, body) = put(&app, &link(now + 600), &bytes).await;
    assert_eq!(status, 200, "the same link, not expired: {body}");
    assert!(app.store.blobs.exists(&oid).await.expect("exists"));
}
