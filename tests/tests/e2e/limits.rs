//! Anonymous clients cannot exhaust the server (issue 20 §2): slow bodies time out with 408 on
//! every kind of route, stalled connections do not keep /healthz from answering, oversized Hub
//! commits and safetensors headers are refused before they are buffered, and /healthz answers
//! 503 naming the store while the store accepts connections and never answers.

use std::time::{Duration, Instant};

use quiver_api::config::{ClientLimits, HttpOptions};
use quiver_tests::{Backend, TestApp, spawn_app_with, synthetic_adapter};
use rstest::rstest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Body deadlines of one second, so the tests see them fire quickly.
fn short_limits() -> ClientLimits {
    ClientLimits {
        body_timeout_ms: 1000,
        body_idle_timeout_ms: 1000,
        ..ClientLimits::default()
    }
}

/// What the server did with a trickled body: its status (None: it closed without answering),
/// the response, and when.
struct Outcome {
    status: Option<u16>,
    response: String,
    after: Duration,
}

/// Sends `head` (request line and headers, with a large Content-Length), then one byte of
/// `byte` every 250 ms until the server answers or closes, or `give_up` passes.
async fn trickle(addr: &str, head: &str, byte: u8, give_up: Duration) -> Outcome {
    let start = Instant::now();
    let mut conn = TcpStream::connect(addr).await.expect("connect");
    conn.write_all(head.as_bytes()).await.expect("send head");
    let mut response = Vec::new();
    let mut buf = [0u8; 4096];
    let mut writing = true;
    loop {
        if start.elapsed() > give_up {
            break;
        }
        tokio::select! {
            read = conn.read(&mut buf) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => response.extend_from_slice(&buf[..n]),
            },
            _ = tokio::time::sleep(Duration::from_millis(250)), if writing => {
                // A write the server refuses (it closed) ends the trickle; keep reading.
                writing = conn.write_all(&[byte]).await.is_ok();
            }
        }
    }
    let response = String::from_utf8_lossy(&response).into_owned();
    let status = response
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|s| s.parse().ok());
    Outcome {
        status,
        response,
        after: start.elapsed(),
    }
}

fn addr(app: &TestApp) -> String {
    app.base.trim_start_matches("http://").to_string()
}

/// A request head announcing a body of `length` bytes.
fn head(method: &str, path: &str, content_type: &str, token: Option<&str>, length: u64) -> String {
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: {content_type}\r\n\
         {auth}Content-Length: {length}\r\n\r\n"
    )
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn slow_bodies_get_408_on_every_kind_of_route(#[case] backend: Backend) {
    let options = HttpOptions {
        clients: short_limits(),
        ..HttpOptions::default()
    };
    let Some(app) = spawn_app_with(backend, options).await else {
        return;
    };
    let (status, body) = app.create_adapter("alice", "slow", false, "alice").await;
    assert_eq!(status, 201, "{body}");
    let token = app.token("alice").to_string();
    let cases = [
        // A JSON route, anonymous.
        (
            head("POST", "/api/v1/route", "application/json", None, 900_000),
            b' ',
        ),
        // The native upload (multipart).
        (
            head(
                "POST",
                "/api/v1/adapters/alice/slow/versions",
                "multipart/form-data; boundary=xyz",
                Some(&token),
                900_000,
            ),
            b'-',
        ),
        // The Hub's NDJSON commit.
        (
            head(
                "POST",
                "/api/models/alice/slow/commit/main",
                "application/x-ndjson",
                Some(&token),
                900_000,
            ),
            b' ',
        ),
        // The Hub's LFS batch route (a body read whole).
        (
            head(
                "POST",
                "/alice/slow.git/info/lfs/objects/batch",
                "application/vnd.git-lfs+json",
                Some(&token),
                100_000,
            ),
            b' ',
        ),
    ];
    for (head, byte) in cases {
        let route = head.lines().next().unwrap_or_default().to_string();
        let out = trickle(&addr(&app), &head, byte, Duration::from_secs(15)).await;
        assert_eq!(out.status, Some(408), "{route}: {}", out.response);
        assert!(
            out.after < Duration::from_secs(8),
            "{route}: answered only after {:?}",
            out.after
        );
        let json = out.response.split("\r\n\r\n").nth(1).unwrap_or_default();
        let json: serde_json::Value = serde_json::from_str(json)
            .unwrap_or_else(|e| panic!("{route}: not JSON ({e}): {}", out.response));
        assert_eq!(json["error"]["code"], "request_timeout", "{route}: {json}");
        assert!(
            out.response
                .to_ascii_lowercase()
                .contains("connection: close"),
            "{route}: {}",
            out.response
        );
    }
    // A web form: the same 408, as a page.
    let form = head(
        "POST",
        "/signin",
        "application/x-www-form-urlencoded",
        None,
        1_000,
    );
    let out = trickle(&addr(&app), &form, b'a', Duration::from_secs(15)).await;
    assert_eq!(out.status, Some(408), "{}", out.response);

    // The server still serves, and a client at a normal pace is unaffected.
    let (status, body) = app
        .upload("alice/slow", "alice", &synthetic_adapter(4, &["q_proj"], 1))
        .await;
    assert_eq!(status, 201, "{body}");
}

#[tokio::test]
async fn stalled_connections_do_not_keep_healthz_from_answering() {
    // One HTTP worker with room for 8 connections, and 40 clients trickling their bodies: the
    // cap keeps descriptors bounded, the body deadline frees the slots.
    let options = HttpOptions {
        workers: Some(1),
        clients: ClientLimits {
            max_connections: 8,
            ..short_limits()
        },
        ..HttpOptions::default()
    };
    let Some(app) = spawn_app_with(Backend::Sqlite, options).await else {
        return;
    };
    let target = addr(&app);
    let mut stalled = Vec::new();
    for _ in 0..40 {
        let target = target.clone();
        stalled.push(tokio::spawn(async move {
            let head = head("POST", "/api/v1/route", "application/json", None, 900_000);
            trickle(&target, &head, b' ', Duration::from_secs(30)).await
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let start = Instant::now();
    let res = app
        .client
        .get(app.url("/healthz"))
        .timeout(Duration::from_secs(25))
        .send()
        .await
        .expect("/healthz answers while 40 connections stall");
    assert_eq!(res.status(), 200);
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "/healthz took {:?}",
        start.elapsed()
    );
    for task in stalled {
        let out = task.await.expect("stalled client");
        assert!(
            out.status == Some(408) || out.status.is_none(),
            "a stalled client got {:?}: {}",
            out.status,
            out.response
        );
        assert!(
            out.after < Duration::from_secs(29),
            "a stalled connection was held for {:?}",
            out.after
        );
    }
}

/// Reads an HTTP response (until the server closes or `give_up`), returning status and body.
async fn read_response(
    conn: &mut (impl AsyncReadExt + Unpin),
    give_up: Duration,
) -> (Option<u16>, String) {
    let mut response = Vec::new();
    let mut buf = [0u8; 8192];
    let _ = tokio::time::timeout(give_up, async {
        loop {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    response.extend_from_slice(&buf[..n]);
                    if String::from_utf8_lossy(&response).contains("\r\n\r\n{")
                        && response.ends_with(b"}")
                    {
                        break;
                    }
                }
            }
        }
    })
    .await;
    let response = String::from_utf8_lossy(&response).into_owned();
    let status = response
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|s| s.parse().ok());
    (status, response)
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn oversized_hub_commits_are_refused_before_they_are_read(#[case] backend: Backend) {
    let Some(app) = spawn_app_with(backend, HttpOptions::default()).await else {
        return;
    };
    let (status, body) = app.create_adapter("alice", "big", false, "alice").await;
    assert_eq!(status, 201, "{body}");
    let token = app.token("alice").to_string();
    let commit = |length: u64| {
        format!(
            "POST /api/models/alice/big/commit/main HTTP/1.1\r\nHost: localhost\r\n\
             Content-Type: application/x-ndjson\r\nAuthorization: Bearer {token}\r\n\
             Content-Length: {length}\r\n\r\n"
        )
    };

    // A 512 MiB commit whose one inline file is longer than any inline file may be: refused
    // once its line passes the cap (~13.4 MiB), while the client has sent only ~16 MiB.
    let conn = TcpStream::connect(addr(&app)).await.expect("connect");
    let (mut read_half, mut write_half) = conn.into_split();
    let head = commit(512 * 1024 * 1024);
    // The body goes out while the response is read: the answer comes before the body ends.
    let writer = tokio::spawn(async move {
        write_half.write_all(head.as_bytes()).await?;
        write_half
            .write_all(b"{\"key\":\"header\",\"value\":{\"summary\":\"big\"}}\n")
            .await?;
        write_half
            .write_all(b"{\"key\":\"file\",\"value\":{\"path\":\"big.txt\",\"encoding\":\"base64\",\"content\":\"")
            .await?;
        let chunk = vec![b'A'; 1024 * 1024];
        for _ in 0..16 {
            write_half.write_all(&chunk).await?;
        }
        std::io::Result::Ok(write_half)
    });
    let (status, response) = read_response(&mut read_half, Duration::from_secs(20)).await;
    writer.abort();
    assert_eq!(status, Some(413), "{response}");
    assert!(
        response.contains("\"payload_too_large\"") && response.contains("LFS"),
        "{response}"
    );

    // Announced larger than the upload limit (4 GiB): refused before any of it is read.
    let mut conn = TcpStream::connect(addr(&app)).await.expect("connect");
    conn.write_all(commit(5 * 1024 * 1024 * 1024).as_bytes())
        .await
        .expect("head");
    let (status, response) = read_response(&mut conn, Duration::from_secs(20)).await;
    assert_eq!(status, Some(413), "{response}");
    assert!(response.contains("\"payload_too_large\""), "{response}");

    let (status, body) = app.get_json("/healthz", "").await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = app
        .get_json("/api/v1/adapters/alice/big/versions", "alice")
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["items"].as_array().map(Vec::len), Some(0), "{body}");
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn safetensors_headers_over_16_mib_are_refused_naming_the_limit(#[case] backend: Backend) {
    let Some(app) = spawn_app_with(backend, HttpOptions::default()).await else {
        return;
    };
    let (status, body) = app.create_adapter("alice", "hdr", false, "alice").await;
    assert_eq!(status, 201, "{body}");
    let mut files = synthetic_adapter(4, &["q_proj"], 1);
    // The weights declare a 17 MiB header: refused from their first 8 bytes, whatever follows.
    let mut weights = (17u64 * 1024 * 1024).to_le_bytes().to_vec();
    weights.extend_from_slice(b"{}");
    for f in &mut files {
        if f.0 == "adapter_model.safetensors" {
            f.1 = weights.clone();
        }
    }
    let (status, body) = app.upload("alice/hdr", "alice", &files).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "invalid_safetensors", "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("16777216") && message.contains("16 MiB"),
        "{message}"
    );
}

#[tokio::test]
async fn healthz_names_a_store_that_accepts_and_never_answers() {
    // An "S3 server" that accepts connections and holds them without a byte.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = listener.accept().await {
            held.push(conn);
        }
    });
    let scratch = quiver_store::testing::Scratch::new(Backend::Sqlite)
        .await
        .expect("sqlite scratch");
    let opened = quiver_store::Store::open(&scratch.settings)
        .await
        .expect("open");
    let store = quiver_store::Store {
        meta: opened.meta,
        blobs: quiver_store::blob::s3_store_at(&endpoint, "stalled", "key", "secret")
            .expect("s3 store"),
    };
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let workers = quiver_api::jobs::WorkerOptions {
        count: 0,
        scratch_dir: scratch.dir().join("scratch"),
        scratch_max_bytes: quiver_api::config::DEFAULT_SCRATCH_MAX_BYTES,
        input_cache_bytes: quiver_api::config::DEFAULT_INPUT_CACHE_BYTES,
        lease_ms: quiver_api::jobs::DEFAULT_LEASE_MS,
        jobs_per_user: 0,
        cuda: false,
        exec: quiver_tests::exec_limits(0),
    };
    let app = quiver_api::startup::Application::with_store(
        store,
        listener,
        HttpOptions::default(),
        workers,
        quiver_api::routing::RoutingOptions::default(),
    )
    .expect("app");
    let base = format!("http://127.0.0.1:{}", app.port());
    tokio::spawn(app.run_until_stopped());

    let start = Instant::now();
    let res = reqwest::Client::new()
        .get(format!("{base}/healthz"))
        .timeout(Duration::from_secs(20))
        .send()
        .await
        .expect("/healthz answers");
    let elapsed = start.elapsed();
    assert_eq!(res.status(), 503);
    let body: serde_json::Value = res.json().await.expect("JSON");
    assert_eq!(body["status"], "degraded", "{body}");
    assert_eq!(body["degraded"], serde_json::json!(["store"]), "{body}");
    assert_eq!(body["database"], "ok", "{body}");
    assert!(
        body["store"]
            .as_str()
            .is_some_and(|s| s.starts_with("timeout")),
        "{body}"
    );
    assert!(
        elapsed < Duration::from_secs(3),
        "/healthz took {elapsed:?}"
    );
    holder.abort();
}

#[tokio::test]
async fn one_address_cannot_hold_more_than_its_connections() {
    let options = HttpOptions {
        clients: ClientLimits {
            max_connections_per_ip: 3,
            body_timeout_ms: 3000,
            body_idle_timeout_ms: 3000,
            ..ClientLimits::default()
        },
        ..HttpOptions::default()
    };
    let Some(app) = spawn_app_with(Backend::Sqlite, options).await else {
        return;
    };
    // Three connections held in their bodies (headers sent, no byte of the body).
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut conn = TcpStream::connect(addr(&app)).await.expect("connect");
        let head = head("POST", "/api/v1/route", "application/json", None, 1000);
        conn.write_all(head.as_bytes()).await.expect("head");
        held.push(conn);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // A fourth from the same address is refused at once, whatever it asks.
    let mut conn = TcpStream::connect(addr(&app)).await.expect("connect");
    conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .expect("request");
    let (status, response) = read_response(&mut conn, Duration::from_secs(10)).await;
    assert_eq!(status, Some(429), "{response}");
    assert!(response.contains("\"too_many_connections\""), "{response}");
    // Once the held connections end (their bodies time out), the address may connect again.
    let start = Instant::now();
    loop {
        let res = reqwest::Client::new()
            .get(app.url("/healthz"))
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .expect("healthz");
        if res.status() == 200 {
            break;
        }
        assert_eq!(res.status(), 429);
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "the held connections were never released"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(held);
}
