//! Faults on real `quiver serve` processes of the built binary: `kill -9` during concurrent
//! uploads (and the next start's cleanup), the S3 server killed and restarted mid-upload, the
//! database's connections terminated mid-request, and SIGTERM draining a download.
//!
//! No server runs in the test process here: the only processes that sweep are the ones under
//! test, so what the next start removes is its doing.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use quiver_store::testing::Scratch;
use quiver_store::{Store, StoreSettings};
use quiver_tests::{Backend, Files, Process, quiver_bin, sha256_hex, sized_adapter};
use reqwest::multipart::{Form, Part};
use rstest::rstest;
use serde_json::{Value, json};

/// Storage shared by the `quiver` processes of one test.
struct Site {
    settings: StoreSettings,
    dir: PathBuf,
    /// Environment of every process (the S3 endpoint of a test's own S3 server).
    env: Vec<(&'static str, String)>,
    client: reqwest::Client,
    token: String,
    _scratch: Option<Scratch>,
    _tmp: Option<tempfile::TempDir>,
}

/// A `quiver serve` process and its address; killed when dropped.
struct Server {
    process: Process,
    base: String,
    log: PathBuf,
}

impl Site {
    /// Fresh storage on `backend`, or `None` (skip) when it is not configured here.
    async fn scratch(backend: Backend) -> Option<Self> {
        let scratch = Scratch::new(backend).await?;
        let mut site = Self {
            settings: scratch.settings.clone(),
            dir: scratch.dir().to_path_buf(),
            env: Vec::new(),
            client: client(),
            token: String::new(),
            _scratch: Some(scratch),
            _tmp: None,
        };
        site.token = site.create_token("alice");
        Some(site)
    }

    /// The `quiver` binary with this site's storage flags and environment.
    fn quiver(&self, args: &[&str]) -> std::process::Command {
        let mut cmd = std::process::Command::new(quiver_bin());
        cmd.args(args)
            .arg("--database-url")
            .arg(&self.settings.database_url)
            .arg("--store-url")
            .arg(&self.settings.store_url)
            .arg("--data-dir")
            .arg(&self.dir)
            .env("QUIVER_LOG", "info")
            .stdin(std::process::Stdio::null());
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    fn create_token(&self, user: &str) -> String {
        let out = self
            .quiver(&["token", "create", "--user", user])
            .output()
            .expect("run quiver token create");
        assert!(
            out.status.success(),
            "token create: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .expect("token line")
            .trim()
            .to_string()
    }

    /// Starts `quiver serve` on a free port (no job workers) and waits until it answers.
    async fn serve(&self, extra: &[&str]) -> Server {
        static STARTED: AtomicUsize = AtomicUsize::new(0);
        let port = free_port();
        let log = self.dir.join(format!(
            "serve-{}.log",
            STARTED.fetch_add(1, Ordering::Relaxed)
        ));
        let bind = format!("127.0.0.1:{port}");
        let mut cmd = self.quiver(&["serve", "--bind", &bind, "--job-workers", "0"]);
        cmd.args(extra)
            .stderr(std::fs::File::create(&log).expect("log file"));
        let server = Server {
            process: Process(cmd.spawn().expect("start quiver serve")),
            base: format!("http://{bind}"),
            log,
        };
        let start = Instant::now();
        loop {
            let up = self
                .client
                .get(format!("{}/api/v1/adapters", server.base))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200);
            if up {
                return server;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "quiver serve did not start: {}",
                server.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn create_adapter(&self, server: &Server, name: &str) {
        let r = self
            .client
            .post(format!("{}/api/v1/adapters", server.base))
            .bearer_auth(&self.token)
            .json(&json!({"owner": "alice", "name": name, "base_model": "quiver-test/tiny-llama"}))
            .send()
            .await
            .expect("create adapter");
        assert_eq!(r.status(), 201, "create alice/{name}");
    }

    /// Version numbers of alice/`name`.
    async fn versions(&self, server: &Server, name: &str) -> Vec<i64> {
        let r = self
            .client
            .get(format!(
                "{}/api/v1/adapters/alice/{name}/versions?limit=500",
                server.base
            ))
            .bearer_auth(&self.token)
            .send()
            .await
            .expect("versions");
        assert_eq!(r.status(), 200);
        let page: Value = r.json().await.expect("json");
        let mut numbers: Vec<i64> = page["items"]
            .as_array()
            .expect("items")
            .iter()
            .filter_map(|v| v["number"].as_i64())
            .collect();
        numbers.sort_unstable();
        numbers
    }

    async fn download(&self, server: &Server, name: &str, number: i64, path: &str) -> Vec<u8> {
        let r = self
            .client
            .get(format!(
                "{}/api/v1/adapters/alice/{name}/versions/{number}/files/{path}",
                server.base
            ))
            .bearer_auth(&self.token)
            .send()
            .await
            .expect("download");
        assert_eq!(r.status(), 200, "alice/{name} v{number} {path}");
        r.bytes().await.expect("body").to_vec()
    }
}

impl Server {
    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// An upload's answer: status, `Retry-After`, JSON body.
type Answer = (u16, Option<String>, Value);

async fn answer(res: reqwest::Response) -> Answer {
    let status = res.status().as_u16();
    let retry_after = res
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = res.bytes().await.unwrap_or_default();
    (
        status,
        retry_after,
        serde_json::from_slice(&body).unwrap_or(Value::Null),
    )
}

/// Uploads `files` as a version of alice/`name`.
async fn upload(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    name: &str,
    files: Files,
) -> Result<Answer, reqwest::Error> {
    let mut form = Form::new();
    for (path, bytes) in files {
        form = form.part("file", Part::bytes(bytes).file_name(path));
    }
    let res = client
        .post(format!("{base}/api/v1/adapters/alice/{name}/versions"))
        .bearer_auth(token)
        .multipart(form)
        .send()
        .await?;
    Ok(answer(res).await)
}

/// An upload whose weights stop half-way until `release` is sent (or fail if it is dropped):
/// the server holds it staged meanwhile.
fn stalled_upload(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    name: &str,
    files: &Files,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<Answer, String>>,
) {
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    let config = files[0].1.clone();
    let weights = files[1].1.clone();
    assert_eq!(files[1].0, "adapter_model.safetensors");
    let len = weights.len() as u64;
    let (head, tail) = weights.split_at(weights.len() / 2);
    let (head, tail) = (head.to_vec(), tail.to_vec());
    use futures::StreamExt;
    let body = futures::stream::iter([Ok::<_, std::io::Error>(head)]).chain(futures::stream::once(
        async move {
            released
                .await
                .map(|()| tail)
                .map_err(|_| std::io::Error::other("upload abandoned"))
        },
    ));
    let form = Form::new()
        .part("file", Part::bytes(config).file_name("adapter_config.json"))
        .part(
            "file",
            Part::stream_with_length(reqwest::Body::wrap_stream(body), len)
                .file_name("adapter_model.safetensors"),
        );
    let rb = client
        .post(format!("{base}/api/v1/adapters/alice/{name}/versions"))
        .bearer_auth(token)
        .multipart(form);
    let task = tokio::spawn(async move {
        match rb.send().await {
            Ok(res) => Ok(answer(res).await),
            Err(e) => Err(e.to_string()),
        }
    });
    (release, task)
}

/// Waits until `check` holds (up to `limit`), panicking with `what`.
async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < limit, "{what} (after {limit:?})");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn staged(store: &Store) -> usize {
    store.blobs.count_staged().await.expect("count staged")
}

/// `kill -9` of `quiver serve` during 50 concurrent uploads: every acknowledged version is listed
/// and byte-identical, every listed version is whole, and what the killed process left staged is
/// removed by the next start (not after the 24 h age rule); a live server's upload in progress
/// survives another server's start; a clean stop leaves nothing staged.
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_during_uploads_loses_no_acknowledged_version_and_the_next_start_cleans_up(
    #[case] backend: Backend,
) {
    let Some(site) = Site::scratch(backend).await else {
        return;
    };
    // The test's own handle: it never claims and never sweeps.
    let store = Store::open(&site.settings).await.expect("open store");
    let mut first = site.serve(&[]).await;
    const ADAPTERS: usize = 10;
    for i in 0..ADAPTERS {
        site.create_adapter(&first, &format!("k{i}")).await;
    }

    // 45 whole uploads and 5 that stop half-way (so the kill surely finds uploads in progress).
    let acked = Arc::new(AtomicUsize::new(0));
    let mut sent: BTreeMap<String, BTreeMap<String, Files>> = BTreeMap::new();
    let mut whole = Vec::new();
    for u in 0..45u32 {
        let name = format!("k{}", u as usize % ADAPTERS);
        let files = sized_adapter(8, 256, 24, u);
        sent.entry(name.clone())
            .or_default()
            .insert(sha256_hex(&files[1].1), files.clone());
        let (client, base, token, acked) = (
            site.client.clone(),
            first.base.clone(),
            site.token.clone(),
            acked.clone(),
        );
        whole.push(tokio::spawn(async move {
            let got = upload(&client, &base, &token, &name, files.clone()).await;
            if matches!(got, Ok((201, _, _))) {
                acked.fetch_add(1, Ordering::SeqCst);
            }
            (name, sha256_hex(&files[1].1), got)
        }));
    }
    let mut stalled = Vec::new();
    for s in 0..5u32 {
        let name = format!("k{s}");
        let files = sized_adapter(8, 256, 24, 1000 + s);
        sent.entry(name.clone())
            .or_default()
            .insert(sha256_hex(&files[1].1), files.clone());
        stalled.push(stalled_upload(
            &site.client,
            &first.base,
            &site.token,
            &name,
            &files,
        ));
    }
    eventually(
        Duration::from_secs(120),
        "uploads did not get under way",
        || async { acked.load(Ordering::SeqCst) >= 15 && staged(&store).await >= 5 },
    )
    .await;
    first.process.kill();

    let mut acknowledged: Vec<(String, i64, String)> = Vec::new();
    for task in whole {
        let (name, sha, got) = task.await.expect("upload task");
        if let Ok((status, _, body)) = got
            && (200..300).contains(&status)
        {
            let number = body["number"].as_i64().expect("version number");
            acknowledged.push((name, number, sha));
        }
    }
    for (release, task) in stalled {
        drop(release);
        let got = task.await.expect("stalled task");
        assert!(
            !matches!(got, Ok((200..=299, _, _))),
            "a stalled upload cannot succeed: {got:?}"
        );
    }
    assert!(acknowledged.len() >= 15, "{}", acknowledged.len());
    let left = staged(&store).await;
    assert!(
        left >= 5,
        "the killed server left {left} staged objects; the test needs some to check the cleanup"
    );

    // The next start removes them at once.
    let second = site.serve(&[]).await;
    eventually(
        Duration::from_secs(20),
        "the next start did not remove the killed server's staged uploads",
        || async { staged(&store).await == 0 },
    )
    .await;

    // Every acknowledged version is listed and byte-identical; every listed version is whole
    // and is one of the uploads sent.
    let mut listed = BTreeSet::new();
    for (name, uploads) in &sent {
        for number in site.versions(&second, name).await {
            let weights = site
                .download(&second, name, number, "adapter_model.safetensors")
                .await;
            let sha = sha256_hex(&weights);
            let files = uploads
                .get(&sha)
                .unwrap_or_else(|| panic!("alice/{name} v{number} is none of the uploads"));
            let config = site
                .download(&second, name, number, "adapter_config.json")
                .await;
            assert_eq!(config, files[0].1, "alice/{name} v{number} config");
            assert!(
                listed.insert((name.clone(), sha.clone())),
                "alice/{name}: one upload listed twice"
            );
            listed.insert((format!("{name}#{number}"), sha));
        }
    }
    for (name, number, sha) in &acknowledged {
        assert!(
            listed.contains(&(format!("{name}#{number}"), sha.clone())),
            "acknowledged alice/{name} v{number} is not listed with its content"
        );
    }

    // Another server starting (and sweeping) leaves a live server's upload in progress alone.
    let files = sized_adapter(8, 256, 24, 5000);
    let (release, task) = stalled_upload(&site.client, &second.base, &site.token, "k0", &files);
    // Staged: the config (and on `file://` the weights being written; on S3 they are still in
    // memory, below one part).
    let expected = if backend == Backend::Sqlite { 2 } else { 1 };
    eventually(
        Duration::from_secs(30),
        "the live upload was not staged",
        || async { staged(&store).await >= expected },
    )
    .await;
    let held = staged(&store).await;
    let mut third = site.serve(&[]).await;
    tokio::time::sleep(Duration::from_secs(3)).await; // its start-up sweep has run
    assert_eq!(
        staged(&store).await,
        held,
        "another server's start removed a live upload: {}",
        third.log_text()
    );
    release.send(()).expect("release");
    let (status, _, body) = task.await.expect("task").expect("live upload");
    assert_eq!(status, 201, "{body}");
    let number = body["number"].as_i64().expect("number");
    assert_eq!(
        site.download(&third, "k0", number, "adapter_model.safetensors")
            .await,
        files[1].1
    );

    // A clean stop leaves nothing staged.
    let mut second = second;
    for server in [&mut second, &mut third] {
        let status = server
            .process
            .terminate(Duration::from_secs(60))
            .expect("exits on SIGTERM");
        assert!(status.success(), "{status:?}: {}", server.log_text());
    }
    assert_eq!(staged(&store).await, 0);
}

/// An S3-API server of the test's own (moto), so that it can be killed and restarted.
struct OwnS3 {
    port: u16,
    child: Option<std::process::Child>,
}

impl OwnS3 {
    const BUCKET: &'static str = "quiver-faults";

    /// `None` (skip) when moto is not installed, unless the test command requires it.
    async fn start() -> Option<Self> {
        let bin =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv-test/bin/moto_server");
        if !bin.exists() {
            assert!(
                std::env::var("QUIVER_REQUIRE_POSTGRES").as_deref() != Ok("1"),
                "QUIVER_REQUIRE_POSTGRES=1 but {} is missing (scripts/test.sh installs it)",
                bin.display()
            );
            eprintln!("skipped: no moto_server in .venv-test (run scripts/test.sh)");
            return None;
        }
        let mut s3 = Self {
            port: free_port(),
            child: None,
        };
        s3.restart().await;
        Some(s3)
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Starts the server (in memory: empty) and creates the bucket.
    async fn restart(&mut self) {
        let bin =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv-test/bin/moto_server");
        self.child = Some(
            std::process::Command::new(bin)
                .args(["-H", "127.0.0.1", "-p", &self.port.to_string()])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("start moto_server"),
        );
        let http = client();
        let url = format!("{}/{}", self.endpoint(), Self::BUCKET);
        eventually(Duration::from_secs(30), "moto_server did not start", || {
            let (http, url) = (http.clone(), url.clone());
            async move {
                http.put(&url)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success())
            }
        })
        .await;
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Objects under `prefix`.
    async fn count(&self, prefix: &str) -> usize {
        let url = format!(
            "{}/{}?list-type=2&prefix={prefix}",
            self.endpoint(),
            Self::BUCKET
        );
        let text = client()
            .get(url)
            .send()
            .await
            .expect("list")
            .text()
            .await
            .expect("list body");
        text.matches("<Key>").count()
    }
}

impl Drop for OwnS3 {
    fn drop(&mut self) {
        self.kill();
    }
}

fn assert_unavailable(got: &Answer, context: &str) {
    let (status, retry_after, body) = got;
    assert_eq!(
        (*status, body["error"]["code"].as_str()),
        (503, Some("storage_unavailable")),
        "{context}: {body}"
    );
    assert!(
        retry_after
            .as_deref()
            .is_some_and(|s| s.parse::<u64>().is_ok()),
        "{context}: no Retry-After"
    );
}

/// The S3 server killed mid-upload: the upload answers 503 `storage_unavailable` with
/// `Retry-After` (within seconds, not object_store's minutes of retries), no version of it
/// appears, downloads answer the same while it is down, and uploads work again once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_s3_server_killed_mid_upload_answers_503_and_service_comes_back() {
    let Some(mut s3) = OwnS3::start().await else {
        return;
    };
    let tmp = tempfile::tempdir().expect("tmp");
    let mut site = Site {
        settings: StoreSettings {
            database_url: format!("sqlite://{}/quiver.db", tmp.path().display()),
            store_url: format!("s3://{}/t", OwnS3::BUCKET),
        },
        dir: tmp.path().to_path_buf(),
        env: vec![
            ("AWS_ENDPOINT_URL", s3.endpoint()),
            ("AWS_ACCESS_KEY_ID", "quiver-test".into()),
            ("AWS_SECRET_ACCESS_KEY", "quiver-test".into()),
            ("AWS_REGION", "us-east-1".into()),
        ],
        client: client(),
        token: String::new(),
        _scratch: None,
        _tmp: Some(tmp),
    };
    site.token = site.create_token("alice");
    let server = site.serve(&[]).await;
    site.create_adapter(&server, "s3").await;
    let v1 = sized_adapter(8, 256, 8, 1);
    let got = upload(&site.client, &server.base, &site.token, "s3", v1.clone())
        .await
        .expect("upload");
    assert_eq!(got.0, 201, "{got:?}");

    // Mid-upload: the config is staged on S3, half the weights received; then S3 dies.
    let (release, task) = stalled_upload(
        &site.client,
        &server.base,
        &site.token,
        "s3",
        &sized_adapter(8, 256, 8, 2),
    );
    eventually(Duration::from_secs(30), "nothing staged", || async {
        s3.count("t/uploads/").await >= 1
    })
    .await;
    s3.kill();
    let start = Instant::now();
    release.send(()).expect("release");
    let got = task.await.expect("task").expect("answered");
    assert_unavailable(&got, "upload while S3 is down");
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "the upload waited {:?} for S3",
        start.elapsed()
    );
    let res = site
        .client
        .get(format!(
            "{}/api/v1/adapters/alice/s3/versions/1/files/adapter_model.safetensors",
            server.base
        ))
        .bearer_auth(&site.token)
        .send()
        .await
        .expect("download");
    assert_unavailable(&answer(res).await, "download while S3 is down");
    // Metadata does not need S3; the failed upload left no version.
    assert_eq!(site.versions(&server, "s3").await, [1]);

    // S3 back (moto keeps nothing in memory across restarts: a fresh, empty bucket).
    s3.restart().await;
    let v2 = sized_adapter(8, 256, 8, 3);
    let mut got = None;
    for _ in 0..20 {
        let a = upload(&site.client, &server.base, &site.token, "s3", v2.clone())
            .await
            .expect("upload");
        if a.0 == 201 {
            got = Some(a);
            break;
        }
        assert_unavailable(&a, "upload right after S3 came back");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (_, _, body) = got.expect("uploads work again after S3 restarted");
    assert_eq!(body["number"], 2, "{body}");
    assert_eq!(site.versions(&server, "s3").await, [1, 2]);
    assert_eq!(
        site.download(&server, "s3", 2, "adapter_model.safetensors")
            .await,
        v2[1].1
    );
}

/// The database's connections terminated (`pg_terminate_backend`) while a request waits on a
/// query: 503 `storage_unavailable` with `Retry-After`, not 500 `internal`, no partial version;
/// then the service recovers.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn terminated_database_connections_answer_503_and_recover() {
    let Some(site) = Site::scratch(Backend::Postgres).await else {
        return;
    };
    let server = site.serve(&[]).await;
    site.create_adapter(&server, "pg").await;
    let v1 = sized_adapter(8, 256, 8, 1);
    let got = upload(&site.client, &server.base, &site.token, "pg", v1)
        .await
        .expect("upload");
    assert_eq!(got.0, 201, "{got:?}");

    use sqlx::Connection;
    let db = site.settings.database_url.clone();
    let db_name = db.rsplit('/').next().expect("db name").to_string();
    let mut locker = sqlx::PgConnection::connect(&db).await.expect("connect");
    let mut killer = sqlx::PgConnection::connect(&db).await.expect("connect");
    for round in 0..2 {
        // Hold the adapters table so that the server's query waits on it, then cut the
        // server's connections: the waiting query's connection dies under it.
        sqlx::raw_sql("BEGIN; LOCK TABLE adapters IN ACCESS EXCLUSIVE MODE")
            .execute(&mut locker)
            .await
            .expect("lock");
        let base = server.base.clone();
        let (client, token) = (site.client.clone(), site.token.clone());
        let request = tokio::spawn(async move {
            if round == 0 {
                let res = client
                    .get(format!("{base}/api/v1/adapters/alice/pg"))
                    .bearer_auth(&token)
                    .send()
                    .await
                    .expect("get");
                answer(res).await
            } else {
                upload(&client, &base, &token, "pg", sized_adapter(8, 256, 8, 2))
                    .await
                    .expect("upload")
            }
        });
        let locker_pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(&mut locker)
            .await
            .expect("pid");
        let start = Instant::now();
        loop {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND wait_event_type = 'Lock'",
            )
            .bind(&db_name)
            .fetch_one(&mut killer)
            .await
            .expect("activity");
            if waiting > 0 {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "the request never waited on the lock"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        sqlx::query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = $1 AND pid <> pg_backend_pid() AND pid <> $2",
        )
        .bind(&db_name)
        .bind(locker_pid)
        .execute(&mut killer)
        .await
        .expect("terminate");
        let got = request.await.expect("request");
        assert_unavailable(&got, &format!("round {round}"));
        sqlx::raw_sql("ROLLBACK")
            .execute(&mut locker)
            .await
            .expect("unlock");
    }
    // Recovery: the pool replaces the dead connections.
    let mut ok = false;
    for _ in 0..40 {
        let res = site
            .client
            .get(format!("{}/api/v1/adapters/alice/pg", server.base))
            .bearer_auth(&site.token)
            .send()
            .await
            .expect("get");
        if res.status() == 200 {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(ok, "the service did not recover: {}", server.log_text());
    assert_eq!(
        site.versions(&server, "pg").await,
        [1],
        "no partial version"
    );
    let got = upload(
        &site.client,
        &server.base,
        &site.token,
        "pg",
        sized_adapter(8, 256, 8, 3),
    )
    .await
    .expect("upload");
    assert_eq!(got.0, 201, "{got:?}");
}

/// Reads a download at about `rate` bytes per second; returns what arrived (until the end or
/// an error).
async fn read_slowly(res: reqwest::Response, rate: f64) -> Vec<u8> {
    use futures::StreamExt;
    let start = Instant::now();
    let mut got = Vec::new();
    let mut stream = res.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let Ok(chunk) = chunk else { break };
        got.extend_from_slice(&chunk);
        let due = Duration::from_secs_f64(got.len() as f64 / rate);
        if let Some(wait) = due.checked_sub(start.elapsed()) {
            tokio::time::sleep(wait).await;
        }
    }
    got
}

/// SIGTERM drains: a download in flight finishes within `--shutdown-grace` while new connections
/// are refused, and one that would outlast the grace is cut when it ends.
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_lets_downloads_finish_within_the_shutdown_grace(#[case] backend: Backend) {
    let Some(site) = Site::scratch(backend).await else {
        return;
    };
    // ~17 MB of weights.
    let files = sized_adapter(16, 1024, 64, 7);
    let size = files[1].1.len();
    {
        let server = site.serve(&[]).await;
        site.create_adapter(&server, "big").await;
        let got = upload(
            &site.client,
            &server.base,
            &site.token,
            "big",
            files.clone(),
        )
        .await
        .expect("upload");
        assert_eq!(got.0, 201, "{got:?}");
    }
    for (grace, seconds, whole) in [(20u64, 5.0, true), (2, 12.0, false)] {
        let mut server = site.serve(&["--shutdown-grace", &grace.to_string()]).await;
        let res = site
            .client
            .get(format!(
                "{}/api/v1/adapters/alice/big/versions/1/files/adapter_model.safetensors",
                server.base
            ))
            .bearer_auth(&site.token)
            .send()
            .await
            .expect("download");
        assert_eq!(res.status(), 200);
        let reading = tokio::spawn(read_slowly(res, size as f64 / seconds));
        tokio::time::sleep(Duration::from_secs(1)).await;
        let pid = server.process.pid();
        let stopped = Instant::now();
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("kill");
        assert!(sent.success());
        // New connections are refused once it is stopping (the listener is closed).
        tokio::time::sleep(Duration::from_millis(500)).await;
        let fresh = reqwest::Client::builder()
            .timeout(Duration::from_secs(3))
            .build()
            .expect("client")
            .get(format!("{}/api/v1/adapters", server.base))
            .send()
            .await;
        assert!(
            fresh.as_ref().is_err_and(reqwest::Error::is_connect),
            "a new connection was not refused after SIGTERM: {:?}",
            fresh.map(|r| r.status())
        );
        let got = reading.await.expect("reader");
        let mut status = None;
        for _ in 0..600 {
            status = server.process.0.try_wait().expect("wait");
            if status.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let status = status.expect("exits after SIGTERM");
        assert!(status.success(), "{status:?}: {}", server.log_text());
        if whole {
            assert_eq!(got.len(), size, "the download within the grace was cut");
            assert_eq!(sha256_hex(&got), sha256_hex(&files[1].1));
        } else {
            assert!(
                got.len() < size,
                "a download longer than the grace was not cut"
            );
            let took = stopped.elapsed();
            assert!(
                took < Duration::from_secs(grace + 15),
                "the server took {took:?} to stop with a {grace} s grace"
            );
        }
    }
}
