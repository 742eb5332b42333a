//! Events and webhooks end to end: a real receiver on 127.0.0.1 (a small HTTP server in the
//! test) that records what it gets and answers as told (200, 500, too late, or not at all).
//! Targets outside the loopback range are only ever refused by validation: no test sends
//! traffic anywhere but 127.0.0.1.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quiver_api::config::HttpOptions;
use quiver_api::events::WebhookOptions;
use quiver_tests::{Backend, TestApp, app_or_skip, spawn_app_with, synthetic_adapter};
use rstest::rstest;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

const WAIT: Duration = Duration::from_secs(60);

/// How the receiver answers one request.
#[derive(Clone, Copy, Debug)]
enum Reply {
    Status(u16),
    /// Waits this long before answering 200 (past the sender's timeout).
    Sleep(Duration),
}

#[derive(Clone, Debug)]
struct Got {
    path: String,
    headers: HashMap<String, String>,
    body: Vec<u8>,
    at: Instant,
}

impl Got {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).map(String::as_str).unwrap_or("")
    }
}

#[derive(Default)]
struct RecvState {
    script: VecDeque<Reply>,
    got: Vec<Got>,
}

/// A webhook receiver on 127.0.0.1.
struct Receiver {
    addr: SocketAddr,
    state: Arc<Mutex<RecvState>>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Receiver {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let r = Self {
            addr,
            state: Arc::default(),
            task: Mutex::new(None),
        };
        r.serve(listener);
        r
    }

    fn serve(&self, listener: TcpListener) {
        let state = self.state.clone();
        let task = tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                tokio::spawn(handle(conn, state.clone()));
            }
        });
        *self.task.lock().expect("lock") = Some(task);
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Stops listening: connections are refused until `up`.
    async fn down(&self) {
        let task = self.task.lock().expect("lock").take();
        if let Some(t) = task {
            t.abort();
            let _ = t.await; // the listener is dropped once the task is
        }
    }

    async fn up(&self) {
        let mut tries = 0;
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(e) if tries < 50 => {
                    tries += 1;
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("rebind {}: {e}", self.addr),
            }
        };
        self.serve(listener);
    }

    fn script(&self, replies: &[Reply]) {
        self.state
            .lock()
            .expect("lock")
            .script
            .extend(replies.iter().copied());
    }

    fn got(&self) -> Vec<Got> {
        self.state.lock().expect("lock").got.clone()
    }

    /// Waits until `pred` holds of what was received.
    async fn wait_for(&self, what: &str, pred: impl Fn(&[Got]) -> bool) -> Vec<Got> {
        let start = Instant::now();
        loop {
            let got = self.got();
            if pred(&got) {
                return got;
            }
            assert!(
                start.elapsed() < WAIT,
                "{what}: still waiting after {WAIT:?}; got {:#?}",
                got.iter().map(Got::json).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(t) = self.task.lock().expect("lock").take() {
            t.abort();
        }
    }
}

async fn handle(mut conn: tokio::net::TcpStream, state: Arc<Mutex<RecvState>>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        match conn.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let path = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .unwrap_or_default()
        .to_string();
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let len: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < len {
        match conn.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => body.extend_from_slice(&chunk[..n]),
        }
    }
    let reply = {
        let mut s = state.lock().expect("lock");
        s.got.push(Got {
            path,
            headers,
            body,
            at: Instant::now(),
        });
        s.script.pop_front().unwrap_or(Reply::Status(200))
    };
    let code = match reply {
        Reply::Status(c) => c,
        Reply::Sleep(d) => {
            tokio::time::sleep(d).await;
            200
        }
    };
    let text = format!("receiver says {code}");
    // A redirect names a place; a sender that followed it would show up as a request there.
    let location = if (300..400).contains(&code) {
        "location: /redirected\r\n"
    } else {
        ""
    };
    let response = format!(
        "HTTP/1.1 {code} X\r\ncontent-length: {}\r\n{location}connection: close\r\n\r\n{text}",
        text.len()
    );
    let _ = conn.write_all(response.as_bytes()).await;
    let _ = conn.shutdown().await;
}

/// HMAC-SHA256, as a receiver computes it (RFC 2104 over sha2).
fn hmac_sha256(key: &[u8], msg: &[u8]) -> String {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let ipad: Vec<u8> = k.iter().map(|b| b ^ 0x36).collect();
    let opad: Vec<u8> = k.iter().map(|b| b ^ 0x5c).collect();
    let inner = Sha256::new()
        .chain_update(&ipad)
        .chain_update(msg)
        .finalize();
    hex::encode(
        Sha256::new()
            .chain_update(&opad)
            .chain_update(inner)
            .finalize(),
    )
}

/// Checks `Quiver-Signature` against the raw body with the secret, and its timestamp is fresh.
fn assert_signed(got: &Got, secret: &str) {
    let sig = got.header("quiver-signature");
    let (t, v1) = sig
        .split_once(',')
        .and_then(|(t, v)| Some((t.strip_prefix("t=")?, v.strip_prefix("v1=")?)))
        .unwrap_or_else(|| panic!("malformed Quiver-Signature {sig:?}"));
    let mut msg = format!("{t}.").into_bytes();
    msg.extend_from_slice(&got.body);
    assert_eq!(
        v1,
        hmac_sha256(secret.as_bytes(), &msg),
        "signature of {sig:?}"
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    let t: i64 = t.parse().expect("t");
    assert!((now - t).abs() <= 300, "stale timestamp {t} (now {now})");
    assert_eq!(got.header("content-type"), "application/json");
    assert_eq!(got.header("quiver-event"), got.json()["type"]);
    assert!(!got.header("quiver-delivery").is_empty());
    assert!(!got.header("quiver-webhook-id").is_empty());
}

/// A server that delivers to loopback receivers, with short retries and timeouts.
async fn webhook_app(backend: Backend, retry_base_ms: u64, timeout_ms: u64) -> Option<TestApp> {
    spawn_app_with(
        backend,
        HttpOptions {
            webhooks: WebhookOptions {
                workers: 2,
                allow_private: true,
                retry_base_ms,
                timeout_ms,
                ..WebhookOptions::default()
            },
            ..HttpOptions::default()
        },
    )
    .await
}

macro_rules! webhook_app_or_skip {
    ($backend:expr, $base:expr, $timeout:expr) => {
        match webhook_app($backend, $base, $timeout).await {
            Some(app) => app,
            None => return,
        }
    };
}

async fn subscribe(app: &TestApp, who: &str, body: Value) -> Value {
    let (status, hook) = app.post_json("/api/v1/webhooks", who, &body).await;
    assert_eq!(status, 201, "{body} → {hook}");
    hook
}

fn types(got: &[Got]) -> Vec<String> {
    got.iter()
        .map(|g| g.json()["type"].as_str().unwrap_or_default().to_string())
        .collect()
}

async fn upload_version(app: &TestApp, repo: &str, who: &str, seed: u32) -> Value {
    let (status, v) = app
        .upload(
            repo,
            who,
            &synthetic_adapter(4, &["q_proj", "v_proj"], seed),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    v
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn every_event_type_arrives_signed_in_sequence_and_filtered(#[case] backend: Backend) {
    let app = webhook_app_or_skip!(backend, 200, 5_000);
    let rx = Receiver::start().await;
    let (status, _) = app.create_adapter("alice", "a", false, "alice").await;
    assert_eq!(status, 201);
    let secret = "a-secret-of-at-least-16";
    let hook = subscribe(
        &app,
        "alice",
        json!({"url": rx.url("/adapter"), "adapter": "alice/a", "secret": secret}),
    )
    .await;
    assert_eq!(hook["secret"], secret, "{hook}");
    assert_eq!(hook["events"].as_array().map(Vec::len), Some(5), "{hook}");
    // Every adapter of alice, but only two event types.
    let owner_hook = subscribe(
        &app,
        "alice",
        json!({"url": rx.url("/owner"), "owner": "alice", "events": ["job.finished", "adapter.deleted"]}),
    )
    .await;
    let owner_secret = owner_hook["secret"]
        .as_str()
        .expect("generated secret")
        .to_string();
    assert!(owner_secret.len() >= 32, "{owner_hook}");
    let (status, listed) = app.get_json("/api/v1/webhooks", "alice").await;
    assert_eq!(status, 200);
    assert_eq!(
        listed["items"].as_array().map(Vec::len),
        Some(2),
        "{listed}"
    );
    assert!(
        listed["items"][0].get("secret").is_none(),
        "secret shown again: {listed}"
    );

    let v1 = upload_version(&app, "alice/a", "alice", 1).await;
    let v2 = upload_version(&app, "alice/a", "alice", 2).await;
    let put_prod = |v: i64| {
        app.send(
            app.request(
                reqwest::Method::PUT,
                "/api/v1/adapters/alice/a/refs/prod",
                "alice",
            )
            .json(&json!({"version": v})),
        )
    };
    assert_eq!(put_prod(1).await.0, 200);
    assert_eq!(put_prod(2).await.0, 200);
    assert_eq!(put_prod(2).await.0, 200, "not moved: no event");
    let (status, _) = app
        .send(app.request(
            reqwest::Method::DELETE,
            "/api/v1/adapters/alice/a/refs/prod",
            "alice",
        ))
        .await;
    assert_eq!(status, 204);
    let (status, body) = app
        .send(
            app.request(reqwest::Method::PATCH, "/api/v1/adapters/alice/a", "alice")
                .json(&json!({"description": "changed", "private": true})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    // A merge whose output is another adapter of alice: its job.finished reaches the owner hook.
    let (status, _) = app.create_adapter("alice", "b", false, "alice").await;
    assert_eq!(status, 201);
    upload_version(&app, "alice/b", "alice", 3).await;
    let (status, job) = app
        .post_json(
            "/api/v1/merges",
            "alice",
            &json!({"method": "cat", "inputs": ["alice/b", "alice/b"],
                    "output": {"adapter": "alice/merged", "create": true}}),
        )
        .await;
    assert_eq!(status, 202, "{job}");
    let job = app
        .wait_job(job["id"].as_str().expect("id"), "alice", WAIT)
        .await;
    assert_eq!(job["state"], "succeeded", "{job}");
    let (status, _) = app
        .send(app.request(reqwest::Method::DELETE, "/api/v1/adapters/alice/a", "alice"))
        .await;
    assert_eq!(status, 204);

    let expected = [
        "version.published",
        "version.published",
        "alias.moved",
        "alias.moved",
        "alias.moved",
        "adapter.updated",
        "adapter.deleted",
    ];
    let got = rx
        .wait_for("adapter hook events and the owner hook's two", |g| {
            g.iter().filter(|x| x.path == "/adapter").count() >= expected.len()
                && g.iter().filter(|x| x.path == "/owner").count() >= 2
        })
        .await;
    let mut adapter: Vec<Got> = got
        .iter()
        .filter(|g| g.path == "/adapter")
        .cloned()
        .collect();
    // Delivered in any order (at-least-once, several workers); the ids say the order.
    adapter.sort_by_key(|g| g.json()["id"].as_i64());
    assert_eq!(types(&adapter), expected);
    for g in &adapter {
        assert_signed(g, secret);
        assert_eq!(g.header("quiver-webhook-id"), hook["id"]);
        let b = g.json();
        assert_eq!(b["adapter"], "alice/a");
        assert_eq!(b["owner"], "alice");
        assert!(b["created_at"].as_i64().is_some(), "{b}");
    }
    let ids: Vec<i64> = adapter
        .iter()
        .map(|g| g.json()["id"].as_i64().expect("id"))
        .collect();
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "ids increase per adapter: {ids:?}"
    );
    let data: Vec<Value> = adapter.iter().map(|g| g.json()["data"].clone()).collect();
    assert_eq!(data[0]["version"], 1);
    assert_eq!(data[0]["revision"], v1["revision"]);
    assert_eq!(data[1]["revision"], v2["revision"]);
    assert_eq!(
        data[2],
        json!({"alias": "prod", "from": null, "to": {"version": 1, "revision": v1["revision"]}})
    );
    assert_eq!(data[3]["from"]["version"], 1);
    assert_eq!(data[3]["to"]["version"], 2);
    assert_eq!(data[4]["to"], Value::Null);
    assert_eq!(
        data[5]["changed"]["private"],
        json!({"from": false, "to": true})
    );
    assert_eq!(data[5]["changed"]["description"]["to"], "changed");
    assert!(data[5]["changed"].get("tags").is_none(), "{}", data[5]);

    let owner: Vec<Got> = got.iter().filter(|g| g.path == "/owner").cloned().collect();
    let mut owner_types = types(&owner);
    owner_types.sort();
    assert_eq!(
        owner_types,
        ["adapter.deleted", "job.finished"],
        "the filter holds"
    );
    for g in &owner {
        assert_signed(g, &owner_secret);
    }
    let finished = owner
        .iter()
        .find(|g| g.json()["type"] == "job.finished")
        .expect("job.finished");
    let f = finished.json();
    assert_eq!(f["adapter"], "alice/merged");
    assert_eq!(f["data"]["job"], job["id"]);
    assert_eq!(f["data"]["state"], "succeeded");
    assert_eq!(
        f["data"]["result"],
        json!({"adapter": "alice/merged", "version": 1})
    );

    // Deliveries are not the user's jobs.
    let (status, jobs) = app.get_json("/api/v1/jobs", "alice").await;
    assert_eq!(status, 200);
    let kinds: Vec<&str> = jobs["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|j| j["kind"].as_str())
        .collect();
    assert_eq!(kinds, ["merge"], "{jobs}");
    let delivery = adapter[0].header("quiver-delivery").to_string();
    let (status, _) = app
        .get_json(&format!("/api/v1/jobs/{delivery}"), "alice")
        .await;
    assert_eq!(status, 404, "a delivery is not a job to its user");

    // The delivery log: every attempt, newest first, with code and latency.
    let hook_id = hook["id"].as_str().expect("id");
    wait_log(&app, "alice", hook_id, expected.len()).await;
    let (status, log) = app
        .get_json(
            &format!("/api/v1/webhooks/{hook_id}/deliveries?limit=3"),
            "alice",
        )
        .await;
    assert_eq!(status, 200, "{log}");
    let items = log["items"].as_array().expect("items");
    assert_eq!(items.len(), 3, "{log}");
    assert!(items[0]["id"].as_i64() > items[1]["id"].as_i64(), "{log}");
    for d in items {
        assert_eq!(d["status"], "delivered", "{d}");
        assert_eq!(d["response_code"], 200, "{d}");
        assert!(d["latency_ms"].as_i64().is_some_and(|l| l >= 0), "{d}");
        assert_eq!(d["response_excerpt"], "receiver says 200", "{d}");
    }
    let cursor = log["next_cursor"].as_str().expect("more pages");
    let (status, page2) = app
        .get_json(
            &format!("/api/v1/webhooks/{hook_id}/deliveries?limit=50&cursor={cursor}"),
            "alice",
        )
        .await;
    assert_eq!(status, 200, "{page2}");
    assert_eq!(
        page2["items"].as_array().map(Vec::len),
        Some(expected.len() - 3),
        "{page2}"
    );
    // Another user sees none of it.
    let (status, _) = app
        .get_json(&format!("/api/v1/webhooks/{hook_id}/deliveries"), "bob")
        .await;
    assert_eq!(status, 404);

    // Redelivery: the same event again, as a new delivery.
    let (status, re) = app
        .post_json(
            &format!("/api/v1/webhooks/{hook_id}/deliveries/{delivery}/redeliver"),
            "alice",
            &json!({}),
        )
        .await;
    assert_eq!(status, 202, "{re}");
    assert_eq!(re["event_id"], ids[0]);
    let got = rx
        .wait_for("the redelivery", |g| {
            g.iter()
                .any(|x| x.header("quiver-delivery") == re["delivery_id"])
        })
        .await;
    let again = got
        .iter()
        .find(|x| x.header("quiver-delivery") == re["delivery_id"])
        .expect("redelivered");
    assert_eq!(again.json()["id"], ids[0]);
    assert_eq!(again.json()["data"], adapter[0].json()["data"]);
    assert_signed(again, secret);
    let (status, _) = app
        .post_json(
            &format!("/api/v1/webhooks/{hook_id}/deliveries/not-a-delivery/redeliver"),
            "alice",
            &json!({}),
        )
        .await;
    assert_eq!(status, 404);

    // Deleting the subscription stops it.
    let (status, _) = app
        .send(app.request(
            reqwest::Method::DELETE,
            &format!("/api/v1/webhooks/{hook_id}"),
            "alice",
        ))
        .await;
    assert_eq!(status, 204);
    let (status, _) = app
        .get_json(&format!("/api/v1/webhooks/{hook_id}"), "alice")
        .await;
    assert_eq!(status, 404);
    let text = app.metrics_text().await;
    assert!(
        text.contains("quiver_webhook_deliveries_total{outcome=\"delivered\"}"),
        "{text}"
    );
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn a_private_adapter_s_events_never_reach_a_subscriber_who_cannot_see_it(
    #[case] backend: Backend,
) {
    let app = webhook_app_or_skip!(backend, 200, 5_000);
    let alice_rx = Receiver::start().await;
    let bob_rx = Receiver::start().await;
    assert_eq!(
        app.create_adapter("alice", "pub", false, "alice").await.0,
        201
    );
    assert_eq!(
        app.create_adapter("alice", "secret", true, "alice").await.0,
        201
    );
    // Bob may follow alice (he sees one of her adapters), not her private adapter.
    let (status, body) = app
        .post_json(
            "/api/v1/webhooks",
            "bob",
            &json!({"url": bob_rx.url("/"), "adapter": "alice/secret"}),
        )
        .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "adapter_not_found");
    let bob_hook = subscribe(
        &app,
        "bob",
        json!({"url": bob_rx.url("/"), "owner": "alice"}),
    )
    .await;
    subscribe(
        &app,
        "alice",
        json!({"url": alice_rx.url("/"), "owner": "alice"}),
    )
    .await;
    bob_rx.down().await;

    upload_version(&app, "alice/secret", "alice", 1).await;
    upload_version(&app, "alice/pub", "alice", 2).await;
    // Made private, then a new version: bob may see neither.
    let patch = |private: bool| {
        app.send(
            app.request(
                reqwest::Method::PATCH,
                "/api/v1/adapters/alice/pub",
                "alice",
            )
            .json(&json!({"private": private})),
        )
    };
    assert_eq!(patch(true).await.0, 200);
    upload_version(&app, "alice/pub", "alice", 3).await;
    let (status, _) = app
        .send(app.request(
            reqwest::Method::DELETE,
            "/api/v1/adapters/alice/secret",
            "alice",
        ))
        .await;
    assert_eq!(status, 204);
    // Alice gets all five.
    let got = alice_rx
        .wait_for("alice's five events", |g| g.len() >= 5)
        .await;
    let mut all: Vec<(String, String)> = got
        .iter()
        .map(|g| {
            let b = g.json();
            (
                b["adapter"].as_str().unwrap_or("").to_string(),
                b["type"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    all.sort();
    assert_eq!(
        all,
        [
            ("alice/pub", "adapter.updated"),
            ("alice/pub", "version.published"),
            ("alice/pub", "version.published"),
            ("alice/secret", "adapter.deleted"),
            ("alice/secret", "version.published"),
        ]
        .map(|(a, t)| (a.to_string(), t.to_string()))
    );
    // Checked when the events were recorded: one delivery was queued for bob (alice/pub's first
    // version, while it was public), none for the others.
    let bob_jobs = app
        .store
        .meta
        .list_jobs(&quiver_store::JobFilter {
            created_by: Some("bob".into()),
            kind: Some(quiver_store::JobKind::Webhook),
            limit: 100,
            ..Default::default()
        })
        .await
        .expect("jobs");
    assert_eq!(bob_jobs.items.len(), 1, "{:?}", bob_jobs.items);
    // … and checked again when it is sent: alice/pub is private now, so it is skipped.
    rx_up_and_wait_skipped(&app, &bob_rx, bob_hook["id"].as_str().expect("id")).await;
    assert!(
        bob_rx.got().is_empty(),
        "bob got {:?}",
        bob_rx.got().iter().map(Got::json).collect::<Vec<_>>()
    );
    // Public again: bob is told.
    assert_eq!(patch(false).await.0, 200);
    let got = bob_rx
        .wait_for("bob's adapter.updated", |g| !g.is_empty())
        .await;
    let b = got[0].json();
    assert_eq!(b["type"], "adapter.updated");
    assert_eq!(
        b["data"]["changed"]["private"],
        json!({"from": true, "to": false})
    );
}

/// The delivery log once it holds at least `n` attempts.
async fn wait_log(app: &TestApp, who: &str, hook_id: &str, n: usize) -> Value {
    let start = Instant::now();
    loop {
        let (status, log) = app
            .get_json(
                &format!("/api/v1/webhooks/{hook_id}/deliveries?limit=100"),
                who,
            )
            .await;
        assert_eq!(status, 200, "{log}");
        if log["items"].as_array().is_some_and(|i| i.len() >= n) {
            return log;
        }
        assert!(
            start.elapsed() < WAIT,
            "fewer than {n} attempts logged: {log}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn rx_up_and_wait_skipped(app: &TestApp, rx: &Receiver, hook_id: &str) {
    rx.up().await;
    let start = Instant::now();
    loop {
        let (status, log) = app
            .get_json(&format!("/api/v1/webhooks/{hook_id}/deliveries"), "bob")
            .await;
        assert_eq!(status, 200, "{log}");
        if let Some(skip) = log["items"]
            .as_array()
            .and_then(|i| i.iter().find(|d| d["status"] == "skipped"))
        {
            assert!(
                skip["error"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("not visible"),
                "{skip}"
            );
            return;
        }
        assert!(start.elapsed() < WAIT, "no skipped delivery: {log}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn failures_and_timeouts_are_retried_with_growing_gaps_and_logged(#[case] backend: Backend) {
    let base = 200u64;
    let app = webhook_app_or_skip!(backend, base, 1_000);
    let rx = Receiver::start().await;
    rx.script(&[
        Reply::Status(500),
        Reply::Status(503),
        Reply::Sleep(Duration::from_millis(2_500)),
        Reply::Status(302),
    ]);
    assert_eq!(
        app.create_adapter("alice", "a", false, "alice").await.0,
        201
    );
    let hook = subscribe(
        &app,
        "alice",
        json!({"url": rx.url("/h"), "adapter": "alice/a"}),
    )
    .await;
    upload_version(&app, "alice/a", "alice", 1).await;
    let got = rx.wait_for("five attempts", |g| g.len() >= 5).await;
    // One event, one delivery, five attempts.
    let ids: Vec<&str> = got.iter().map(|g| g.header("quiver-delivery")).collect();
    assert!(ids.iter().all(|d| *d == ids[0]), "{ids:?}");
    assert!(got.iter().all(|g| g.json()["id"] == got[0].json()["id"]));
    // Each gap is at least the backoff: base, 2·base, 4·base (+ the 1 s timeout), 8·base.
    for (i, w) in got.windows(2).enumerate() {
        let gap = w[1].at.duration_since(w[0].at);
        let min = Duration::from_millis(base << i);
        assert!(gap >= min, "gap {i} was {gap:?}, less than {min:?}");
    }
    let hook_id = hook["id"].as_str().expect("id");
    let log = wait_log(&app, "alice", hook_id, 5).await;
    let mut items: Vec<Value> = log["items"].as_array().expect("items").clone();
    items.reverse();
    let codes: Vec<Value> = items.iter().map(|d| d["response_code"].clone()).collect();
    assert_eq!(
        codes,
        [json!(500), json!(503), Value::Null, json!(302), json!(200)],
        "{log}"
    );
    let attempts: Vec<i64> = items.iter().filter_map(|d| d["attempt"].as_i64()).collect();
    assert_eq!(attempts, [1, 2, 3, 4, 5]);
    let statuses: Vec<&str> = items.iter().filter_map(|d| d["status"].as_str()).collect();
    assert_eq!(
        statuses,
        ["failed", "failed", "failed", "failed", "delivered"]
    );
    let timeout_error = items[2]["error"].as_str().unwrap_or_default();
    assert!(timeout_error.contains("timed out"), "{}", items[2]);
    assert!(
        items[2]["latency_ms"].as_i64().is_some_and(|l| l >= 1_000),
        "{}",
        items[2]
    );
    assert_eq!(items[0]["response_excerpt"], "receiver says 500");
    let all: Vec<String> = rx.got().iter().map(|g| g.path.clone()).collect();
    assert_eq!(all, ["/h"; 5], "a 302 is not followed");
    let text = app.metrics_text().await;
    for outcome in ["delivered", "http_error", "no_response"] {
        assert!(
            text.contains(&format!(
                "quiver_webhook_deliveries_total{{outcome=\"{outcome}\"}}"
            )),
            "{outcome}: {text}"
        );
    }
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn a_receiver_down_for_a_while_gets_every_event_once_it_is_up(#[case] backend: Backend) {
    let app = webhook_app_or_skip!(backend, 100, 2_000);
    let rx = Receiver::start().await;
    assert_eq!(
        app.create_adapter("alice", "a", false, "alice").await.0,
        201
    );
    subscribe(
        &app,
        "alice",
        json!({"url": rx.url("/h"), "owner": "alice"}),
    )
    .await;
    rx.down().await;
    for seed in 1..=4 {
        upload_version(&app, "alice/a", "alice", seed).await;
    }
    for v in [1, 3, 2] {
        let (status, _) = app
            .send(
                app.request(
                    reqwest::Method::PUT,
                    "/api/v1/adapters/alice/a/refs/prod",
                    "alice",
                )
                .json(&json!({"version": v})),
            )
            .await;
        assert_eq!(status, 200);
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(rx.got().is_empty());
    rx.up().await;
    let got = rx
        .wait_for("all seven events", |g| {
            let mut ids: Vec<i64> = g.iter().filter_map(|x| x.json()["id"].as_i64()).collect();
            ids.sort();
            ids.dedup();
            ids.len() >= 7
        })
        .await;
    let mut bodies: Vec<Value> = got.iter().map(Got::json).collect();
    bodies.sort_by_key(|b| b["id"].as_i64());
    bodies.dedup_by_key(|b| b["id"].as_i64());
    let published: Vec<i64> = bodies
        .iter()
        .filter(|b| b["type"] == "version.published")
        .filter_map(|b| b["data"]["version"].as_i64())
        .collect();
    assert_eq!(
        published,
        [1, 2, 3, 4],
        "in id order, the versions in the order published"
    );
    let moved: Vec<i64> = bodies
        .iter()
        .filter(|b| b["type"] == "alias.moved")
        .filter_map(|b| b["data"]["to"]["version"].as_i64())
        .collect();
    assert_eq!(moved, [1, 3, 2], "in id order, the moves in the order made");
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn bad_subscriptions_are_refused_before_any_connection(#[case] backend: Backend) {
    // The default server: private targets refused.
    let app = app_or_skip!(backend);
    assert_eq!(
        app.create_adapter("alice", "a", false, "alice").await.0,
        201
    );
    let refused = [
        "http://10.0.0.1/",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/",
        "http://localhost/",
        "http://127.0.0.1:9/",
        "http://192.168.1.1/",
        "http://100.64.0.1/",
        "http://[fe80::1]/",
        "http://[fd00::1]/",
        "http://[::ffff:10.0.0.1]/",
        "http://0.0.0.0/",
        "ftp://127.0.0.1/",
        "file:///etc/passwd",
        "not a url",
        "http://user:pw@127.0.0.1/",
    ];
    for url in refused {
        let (status, body) = app
            .post_json(
                "/api/v1/webhooks",
                "alice",
                &json!({"url": url, "adapter": "alice/a"}),
            )
            .await;
        assert_eq!(status, 400, "{url}: {body}");
        assert_eq!(
            body["error"]["code"], "invalid_webhook_url",
            "{url}: {body}"
        );
    }
    let (_, body) = app
        .post_json(
            "/api/v1/webhooks",
            "alice",
            &json!({"url": "http://169.254.169.254/", "adapter": "alice/a"}),
        )
        .await;
    let msg = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("link-local") && msg.contains("--webhook-allow-private"),
        "{msg}"
    );
    let long = format!("http://127.0.0.1/{}", "a".repeat(2048));
    let (status, body) = app
        .post_json(
            "/api/v1/webhooks",
            "alice",
            &json!({"url": long, "adapter": "alice/a"}),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (400, json!("invalid_webhook_url"))
    );
    let (status, _) = app.get_json("/api/v1/webhooks", "alice").await;
    assert_eq!(status, 200);

    // The other fields, on a server that allows loopback targets (nothing is sent: no events).
    let app = webhook_app_or_skip!(backend, 200, 1_000);
    assert_eq!(
        app.create_adapter("alice", "a", false, "alice").await.0,
        201
    );
    let url = "http://127.0.0.1:9/";
    let cases = [
        (
            json!({"url": url, "adapter": "alice/a", "events": ["version.published", "version.deleted"]}),
            "invalid_webhook",
            "version.deleted",
        ),
        (
            json!({"url": url, "adapter": "alice/a", "events": []}),
            "invalid_webhook",
            "events",
        ),
        (
            json!({"url": url, "adapter": "alice/a", "owner": "alice"}),
            "invalid_webhook",
            "exactly one",
        ),
        (json!({"url": url}), "invalid_webhook", "exactly one"),
        (
            json!({"url": url, "adapter": "alice/a", "secret": "short"}),
            "invalid_webhook",
            "secret",
        ),
        (
            json!({"url": url, "adapter": "not-a-repo"}),
            "invalid_webhook",
            "owner/name",
        ),
        (
            json!({"url": url, "adapter": "alice/a", "extra": 1}),
            "invalid_json",
            "extra",
        ),
    ];
    for (body, code, says) in cases {
        let (status, e) = app.post_json("/api/v1/webhooks", "alice", &body).await;
        assert_eq!(status, 400, "{body}: {e}");
        assert_eq!(e["error"]["code"], code, "{body}: {e}");
        assert!(
            e["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .contains(says),
            "{body}: {e}"
        );
    }
    let (status, e) = app
        .post_json(
            "/api/v1/webhooks",
            "alice",
            &json!({"url": url, "adapter": "alice/nope"}),
        )
        .await;
    assert_eq!(
        (status, e["error"]["code"].clone()),
        (404, json!("adapter_not_found"))
    );
    let (status, _) = app
        .post_json(
            "/api/v1/webhooks",
            "",
            &json!({"url": url, "adapter": "alice/a"}),
        )
        .await;
    assert_eq!(status, 401);
    let (status, _) = app
        .post_json(
            "/api/v1/webhooks",
            "alice_read",
            &json!({"url": url, "adapter": "alice/a"}),
        )
        .await;
    assert_eq!(status, 403);
    for i in 0..50 {
        subscribe(&app, "alice", json!({"url": format!("{url}{i}"), "adapter": "alice/a", "events": ["adapter.deleted"]})).await;
    }
    let (status, e) = app
        .post_json(
            "/api/v1/webhooks",
            "alice",
            &json!({"url": url, "adapter": "alice/a"}),
        )
        .await;
    assert_eq!(
        (status, e["error"]["code"].clone()),
        (400, json!("too_many_webhooks")),
        "{e}"
    );
}

/// Figures, not a pass/fail test (`cargo test -p quiver-tests --test e2e webhook_figures --
/// --ignored --nocapture`): event → delivered latency (one subscription, events one at a time)
/// and delivery throughput (100 subscriptions × 10 events queued at once), against a receiver
/// on 127.0.0.1 answering 200 at once, with the default 4 webhook workers.
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn webhook_figures(#[case] backend: Backend) {
    let app = match spawn_app_with(
        backend,
        HttpOptions {
            webhooks: WebhookOptions {
                allow_private: true,
                ..WebhookOptions::default()
            },
            ..HttpOptions::default()
        },
    )
    .await
    {
        Some(app) => app,
        None => return,
    };
    let rx = Receiver::start().await;
    assert_eq!(
        app.create_adapter("alice", "a", false, "alice").await.0,
        201
    );
    upload_version(&app, "alice/a", "alice", 1).await;
    upload_version(&app, "alice/a", "alice", 2).await;
    subscribe(
        &app,
        "alice",
        json!({"url": rx.url("/lat"), "adapter": "alice/a", "events": ["alias.moved"]}),
    )
    .await;
    let put = |v: i64| {
        app.send(
            app.request(
                reqwest::Method::PUT,
                "/api/v1/adapters/alice/a/refs/prod",
                "alice",
            )
            .json(&json!({"version": v})),
        )
    };
    // Latency: 100 moves, each waited for.
    let n = 100;
    let mut lat_ms = Vec::new();
    for i in 0..n {
        let before = rx.got().len();
        let sent = Instant::now();
        assert_eq!(put(1 + (i % 2)).await.0, 200);
        let got = rx.wait_for("one more", |g| g.len() > before).await;
        lat_ms.push(got[before].at.duration_since(sent).as_secs_f64() * 1000.0);
    }
    lat_ms.sort_by(f64::total_cmp);
    let p = |q: f64| lat_ms[((lat_ms.len() as f64 - 1.0) * q).round() as usize];
    println!(
        "{backend:?}: alias move (PUT sent) → delivered: p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({n} moves)",
        p(0.5),
        p(0.9),
        p(0.99),
        p(1.0)
    );
    // Throughput: 100 subscriptions (alice 50, bob 50) × 10 events.
    for (who, count) in [("alice", 49), ("bob", 50)] {
        for i in 0..count {
            subscribe(&app, who, json!({"url": rx.url(&format!("/t{i}")), "adapter": "alice/a", "events": ["alias.moved"]})).await;
        }
    }
    let before = rx.got().len();
    let start = Instant::now();
    for i in 0..10 {
        assert_eq!(put(1 + (i % 2)).await.0, 200);
    }
    let queued = start.elapsed();
    let total = 10 * 100;
    let got = rx
        .wait_for("1000 deliveries", |g| g.len() >= before + total)
        .await;
    let first = got[before].at;
    let last = got[got.len() - 1].at;
    let secs = last.duration_since(first).as_secs_f64();
    println!(
        "{backend:?}: {total} deliveries in {:.2} s from the first to the last = {:.0} deliveries/s (10 events emitted in {:.2} s)",
        secs,
        (total - 1) as f64 / secs,
        queued.as_secs_f64()
    );
}

/// `quiver webhook create|list|deliveries|redeliver|delete` against the server, and the Hub's
/// `create_tag` moving an alias.
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn the_cli_manages_webhooks_and_hub_tags_move_aliases(#[case] backend: Backend) {
    use clap::Parser;
    use quiver_api::cli::{Cli, Command};
    let app = webhook_app_or_skip!(backend, 200, 5_000);
    let rx = Receiver::start().await;
    assert_eq!(
        app.create_adapter("alice", "a", false, "alice").await.0,
        201
    );
    let v1 = upload_version(&app, "alice/a", "alice", 1).await;
    let cli = |args: &[&str]| {
        let mut all = vec![
            "quiver",
            "webhook",
            "--server",
            &app.base,
            "--token",
            app.token("alice"),
        ];
        all.extend_from_slice(args);
        match Cli::try_parse_from(all.iter().copied())
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
            .command
        {
            Command::Webhook(a) => a,
            other => panic!("{other:?}"),
        }
    };
    let url = rx.url("/cli");
    quiver_api::cli::webhook::run(cli(&[
        "create",
        "--url",
        &url,
        "--adapter",
        "alice/a",
        "--events",
        "alias.moved",
        "--secret",
        "a-secret-of-at-least-16",
    ]))
    .await
    .expect("create");
    let (_, listed) = app.get_json("/api/v1/webhooks", "alice").await;
    let id = listed["items"][0]["id"]
        .as_str()
        .expect("created")
        .to_string();
    assert_eq!(listed["items"][0]["events"], json!(["alias.moved"]));
    quiver_api::cli::webhook::run(cli(&["list"]))
        .await
        .expect("list");
    // A bad request is the CLI's error, with the server's message.
    let err = quiver_api::cli::webhook::run(cli(&[
        "create",
        "--url",
        "http://127.0.0.1:9/",
        "--owner",
        "alice",
        "--events",
        "nope",
    ]))
    .await
    .expect_err("bad event");
    assert!(err.to_string().contains("invalid_webhook"), "{err}");

    // The Hub's create_tag is an alias move.
    let (status, body) = app
        .post_json(
            "/api/models/alice/a/tag/v1",
            "alice",
            &json!({"tag": "prod"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let got = rx
        .wait_for("the tag's alias.moved", |g| !g.is_empty())
        .await;
    assert_signed(&got[0], "a-secret-of-at-least-16");
    let b = got[0].json();
    assert_eq!(b["type"], "alias.moved");
    assert_eq!(
        b["data"]["to"],
        json!({"version": 1, "revision": v1["revision"]})
    );
    let delivery = got[0].header("quiver-delivery").to_string();
    wait_log(&app, "alice", &id, 1).await;
    quiver_api::cli::webhook::run(cli(&["deliveries", &id, "--limit", "5"]))
        .await
        .expect("deliveries");
    quiver_api::cli::webhook::run(cli(&["redeliver", &id, &delivery]))
        .await
        .expect("redeliver");
    rx.wait_for("the redelivery", |g| g.len() >= 2).await;
    quiver_api::cli::webhook::run(cli(&["delete", &id]))
        .await
        .expect("delete");
    let (_, listed) = app.get_json("/api/v1/webhooks", "alice").await;
    assert_eq!(listed["items"], json!([]));
}

/// The `/webhooks` page: subscribe with the form (the secret shown once), see the delivery log,
/// redeliver and delete with buttons; every form needs the CSRF token.
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn the_webhooks_page_subscribes_shows_the_log_and_redelivers(#[case] backend: Backend) {
    let app = webhook_app_or_skip!(backend, 200, 5_000);
    let rx = Receiver::start().await;
    assert_eq!(
        app.create_adapter("alice", "a", false, "alice").await.0,
        201
    );
    let csrf = "ab".repeat(24);
    let cookies = format!("quiver_session={}; quiver_csrf={csrf}", app.token("alice"));
    let get = |path: &str, cookies: &str| {
        let rb = app.client.get(app.url(path));
        let rb = if cookies.is_empty() {
            rb
        } else {
            rb.header("Cookie", cookies)
        };
        async move {
            let res = rb.send().await.expect("page");
            (res.status().as_u16(), res.text().await.expect("html"))
        }
    };
    let post = |path: &str, form: Vec<(&str, String)>| {
        app.client
            .post(app.url(path))
            .header("Cookie", cookies.clone())
            .form(&form)
            .send()
    };
    let (status, _) = get("/webhooks", "").await;
    assert_eq!(status, 303, "anonymous: to the sign-in page");
    let (status, html) = get("/webhooks?adapter=alice/a", &cookies).await;
    assert_eq!(status, 200);
    assert!(html.contains(r#"value="alice/a""#), "prefilled");

    let url = rx.url("/page");
    let form = |csrf: &str| {
        vec![
            ("csrf", csrf.to_string()),
            ("url", url.clone()),
            ("adapter", "alice/a".to_string()),
            ("events", "version.published".to_string()),
        ]
    };
    let res = post("/webhooks", form("0".repeat(48).as_str()))
        .await
        .expect("post");
    assert_eq!(res.status(), 403, "a stale CSRF token");
    let res = post("/webhooks", form(&csrf)).await.expect("post");
    assert_eq!(res.status(), 201);
    let html = res.text().await.expect("html");
    assert!(html.contains("whsec_"), "the generated secret, once");
    let (_, listed) = app.get_json("/api/v1/webhooks", "alice").await;
    let id = listed["items"][0]["id"]
        .as_str()
        .expect("created")
        .to_string();
    assert_eq!(listed["items"][0]["events"], json!(["version.published"]));
    let (_, html) = get("/webhooks", &cookies).await;
    assert!(!html.contains("whsec_"), "not shown again");
    assert!(html.contains(&url));

    upload_version(&app, "alice/a", "alice", 1).await;
    let got = rx.wait_for("the version", |g| !g.is_empty()).await;
    wait_log(&app, "alice", &id, 1).await;
    let (_, html) = get("/webhooks", &cookies).await;
    assert!(
        html.contains("delivered") && html.contains("Redeliver"),
        "{html}"
    );
    let delivery = got[0].header("quiver-delivery").to_string();
    let res = post(
        &format!("/webhooks/{id}/redeliver"),
        vec![("csrf", csrf.clone()), ("delivery_id", delivery)],
    )
    .await
    .expect("redeliver");
    assert_eq!(res.status(), 303);
    rx.wait_for("the redelivery", |g| g.len() >= 2).await;
    let res = post(
        &format!("/webhooks/{id}/delete"),
        vec![("csrf", csrf.clone())],
    )
    .await
    .expect("delete");
    assert_eq!(res.status(), 303);
    let (_, listed) = app.get_json("/api/v1/webhooks", "alice").await;
    assert_eq!(listed["items"], json!([]));
    // Bob cannot touch alice's (it is gone anyway: 404 either way).
    let bob = format!("quiver_session={}; quiver_csrf={csrf}", app.token("bob"));
    let res = app
        .client
        .post(app.url(&format!("/webhooks/{id}/delete")))
        .header("Cookie", bob)
        .form(&[("csrf", csrf.clone())])
        .send()
        .await
        .expect("post");
    assert_eq!(res.status(), 404);
}

/// A receiver that answers 410 Gone is not sent to again: the subscription is deactivated.
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn a_410_gone_deactivates_the_subscription(#[case] backend: Backend) {
    let app = webhook_app_or_skip!(backend, 100, 5_000);
    let rx = Receiver::start().await;
    rx.script(&[Reply::Status(410)]);
    assert_eq!(
        app.create_adapter("alice", "a", false, "alice").await.0,
        201
    );
    let hook = subscribe(
        &app,
        "alice",
        json!({"url": rx.url("/gone"), "adapter": "alice/a"}),
    )
    .await;
    let id = hook["id"].as_str().expect("id");
    upload_version(&app, "alice/a", "alice", 1).await;
    rx.wait_for("the first delivery", |g| !g.is_empty()).await;
    let log = wait_log(&app, "alice", id, 1).await;
    assert_eq!(log["items"][0]["response_code"], 410, "{log}");
    let start = Instant::now();
    loop {
        let (_, h) = app
            .get_json(&format!("/api/v1/webhooks/{id}"), "alice")
            .await;
        if h["active"] == false {
            break;
        }
        assert!(start.elapsed() < WAIT, "still active: {h}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Nothing more is queued for it, and the 410 was not retried.
    upload_version(&app, "alice/a", "alice", 2).await;
    let jobs = app
        .store
        .meta
        .list_jobs(&quiver_store::JobFilter {
            kind: Some(quiver_store::JobKind::Webhook),
            limit: 10,
            ..Default::default()
        })
        .await
        .expect("jobs");
    assert_eq!(jobs.items.len(), 1, "{:?}", jobs.items);
    assert_eq!(jobs.items[0].state, quiver_store::JobState::Failed);
    assert_eq!(rx.got().len(), 1);
    // The deactivation is in the audit log as the service's own change (no actor).
    let (status, log) = app
        .get_json(&format!("/api/v1/audit?target={id}"), "admin")
        .await;
    assert_eq!(status, 200, "{log}");
    let actions: Vec<&str> = log["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|e| e["action"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(actions, ["webhook.update", "webhook.create"], "{log}");
    let update = &log["items"][0];
    assert!(update["actor"].is_null(), "{update}");
    assert_eq!(update["before"]["active"], true);
    assert_eq!(update["after"]["active"], false);
    assert!(
        update["after"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("410"))
    );
}

/// A job whose worker died with its last attempt: the lease reaper fails it, and `job.finished`
/// goes out as for a job its worker ended. The job is an embed job (this server has no embedder,
/// so only the test claims it, as a worker that then vanishes); its adapter is the profiled one.
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn a_job_failed_by_the_lease_reaper_is_announced(#[case] backend: Backend) {
    use quiver_store::{JobKind, JobState, NewJob};
    let app = webhook_app_or_skip!(backend, 200, 5_000);
    let rx = Receiver::start().await;
    let (status, _) = app.create_adapter("alice", "a", false, "alice").await;
    assert_eq!(status, 201);
    let version = upload_version(&app, "alice/a", "alice", 1).await;
    let secret = "a-secret-of-at-least-16";
    subscribe(
        &app,
        "alice",
        json!({"url": rx.url("/jobs"), "adapter": "alice/a", "events": ["job.finished"], "secret": secret}),
    )
    .await;
    let spec = json!({
        "version_id": 1,
        "version": {"adapter": "alice/a", "version": version["version"], "revision": version["revision"]},
        "samples_sha256": "0".repeat(64),
        "embedder": "none",
    });
    let (queued, _) = app
        .store
        .meta
        .enqueue_job(&NewJob {
            kind: JobKind::Embed,
            spec,
            spec_sha256: "1".repeat(64),
            created_by: "alice".into(),
            idempotency_key: None,
            max_attempts: 1,
            subject_version_id: None,
        })
        .await
        .expect("enqueue");
    // A worker claims it with a 1 ms lease and is never heard of again.
    let (claimed, _lease) = app
        .store
        .meta
        .claim_job("vanished-worker", 1, &[JobKind::Embed])
        .await
        .expect("claim")
        .expect("the embed job");
    assert_eq!(claimed.id, queued.id);
    let got = rx
        .wait_for("job.finished of the reaped job", |g| !g.is_empty())
        .await;
    assert_eq!(types(&got), ["job.finished"]);
    assert_signed(&got[0], secret);
    let body = got[0].json();
    assert_eq!(body["adapter"], "alice/a", "{body}");
    assert_eq!(body["data"]["job"], queued.id.as_str(), "{body}");
    assert_eq!(body["data"]["kind"], "embed", "{body}");
    assert_eq!(body["data"]["state"], "failed", "{body}");
    assert!(
        body["data"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("no attempts left")),
        "{body}"
    );
    let job = app
        .store
        .meta
        .get_job(&queued.id)
        .await
        .expect("get")
        .expect("job");
    assert_eq!(job.state, JobState::Failed, "{job:?}");
}

/// `POST …/ping` sends a signed `ping` to that one subscription, whatever its filter; someone
/// else's subscription is 404.
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn a_ping_reaches_only_its_subscription_signed(#[case] backend: Backend) {
    let app = webhook_app_or_skip!(backend, 200, 5_000);
    let rx = Receiver::start().await;
    let (status, _) = app.create_adapter("alice", "a", false, "alice").await;
    assert_eq!(status, 201);
    let secret = "a-secret-of-at-least-16";
    let hook = subscribe(
        &app,
        "alice",
        json!({"url": rx.url("/adapter"), "adapter": "alice/a", "events": ["adapter.deleted"], "secret": secret}),
    )
    .await;
    let owner_hook = subscribe(
        &app,
        "alice",
        json!({"url": rx.url("/owner"), "owner": "alice", "secret": secret}),
    )
    .await;
    let id = hook["id"].as_str().expect("id");
    let (status, body) = app
        .post_json(&format!("/api/v1/webhooks/{id}/ping"), "bob", &json!({}))
        .await;
    assert_eq!(status, 404, "{body}");
    let (status, ping) = app
        .post_json(&format!("/api/v1/webhooks/{id}/ping"), "alice", &json!({}))
        .await;
    assert_eq!(status, 202, "{ping}");
    rx.wait_for("the ping", |g| !g.is_empty()).await;
    // Time for a stray delivery to the other subscription to show (none must).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got = rx.got();
    assert_eq!(types(&got), ["ping"], "only the pinged subscription");
    assert_eq!(got[0].path, "/adapter");
    assert_signed(&got[0], secret);
    assert_eq!(got[0].header("quiver-delivery"), ping["delivery_id"]);
    assert_eq!(got[0].header("quiver-webhook-id"), id);
    let b = got[0].json();
    assert_eq!(b["id"], ping["event_id"], "{b}");
    assert_eq!(b["adapter"], "alice/a", "{b}");
    assert_eq!(b["data"], json!({"webhook_id": id}), "{b}");
    // An owner's subscription: no adapter.
    let oid = owner_hook["id"].as_str().expect("id");
    let (status, ping) = app
        .post_json(&format!("/api/v1/webhooks/{oid}/ping"), "alice", &json!({}))
        .await;
    assert_eq!(status, 202, "{ping}");
    let got = rx.wait_for("the owner's ping", |g| g.len() >= 2).await;
    assert_eq!(got[1].path, "/owner");
    assert_signed(&got[1], secret);
    let b = got[1].json();
    assert_eq!(
        (b["type"].clone(), b["adapter"].clone()),
        (json!("ping"), Value::Null),
        "{b}"
    );
    assert_eq!(b["owner"], "alice", "{b}");
    // Logged like any delivery.
    let log = wait_log(&app, "alice", id, 1).await;
    assert_eq!(log["items"][0]["status"], "delivered", "{log}");
}

/// The sweep's retention step (`background::prune_webhook_history`, the clock given): nothing
/// with retention 0 or within the window; past it, the event, its delivered job and its attempt
/// are gone.
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn the_sweep_prunes_webhook_history_past_its_retention(#[case] backend: Backend) {
    use quiver_api::background::prune_webhook_history;
    let app = webhook_app_or_skip!(backend, 200, 5_000);
    let rx = Receiver::start().await;
    let (status, _) = app.create_adapter("alice", "a", false, "alice").await;
    assert_eq!(status, 201);
    let hook = subscribe(
        &app,
        "alice",
        json!({"url": rx.url("/a"), "adapter": "alice/a"}),
    )
    .await;
    let id = hook["id"].as_str().expect("id");
    let (status, ping) = app
        .post_json(&format!("/api/v1/webhooks/{id}/ping"), "alice", &json!({}))
        .await;
    assert_eq!(status, 202, "{ping}");
    wait_log(&app, "alice", id, 1).await;
    let event_id = ping["event_id"].as_i64().expect("event id");
    let delivery = ping["delivery_id"].as_str().expect("delivery id");
    // The delivery job's end commits with its log row; wait for it to be finished.
    let start = Instant::now();
    while !app
        .store
        .meta
        .get_job(delivery)
        .await
        .expect("get")
        .is_some_and(|j| j.state.is_terminal())
    {
        assert!(start.elapsed() < WAIT, "the delivery job never ended");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let now = quiver_store::time::now_ms();
    let day = 86_400_000;
    assert_eq!(
        prune_webhook_history(&app.store, 0, now + 400 * day).await,
        0
    );
    assert_eq!(
        prune_webhook_history(&app.store, 30, now + 29 * day).await,
        0
    );
    assert_eq!(
        prune_webhook_history(&app.store, 30, now + 31 * day).await,
        3
    );
    assert!(
        app.store
            .meta
            .get_event(event_id)
            .await
            .expect("get")
            .is_none()
    );
    assert!(
        app.store
            .meta
            .get_job(delivery)
            .await
            .expect("get")
            .is_none()
    );
    let (status, log) = app
        .get_json(&format!("/api/v1/webhooks/{id}/deliveries"), "alice")
        .await;
    assert_eq!(status, 200, "{log}");
    assert_eq!(log["items"], json!([]), "{log}");
}
