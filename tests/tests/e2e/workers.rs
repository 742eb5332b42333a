//! Workers as separate processes of the built binary: killed mid-job, stopped with SIGTERM,
//! several at once, the database cut off, and a scale-out of servers and workers.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use quiver_store::{JobState, VersionRef};
use quiver_tests::{
    Backend, Process, TestApp, sized_adapter, spawn_app_with_workers, synthetic_adapter,
};
use rstest::rstest;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(240);
/// Short leases, so a killed worker's job is requeued within seconds.
const LEASE_MS: &str = "2000";

fn worker(app: &TestApp) -> Process {
    Process::start(
        app,
        &["worker", "--job-workers", "1"],
        &[("QUIVER_JOB_LEASE_MS", LEASE_MS.into())],
    )
}

async fn big_inputs(app: &TestApp) {
    for (i, name) in ["big1", "big2"].into_iter().enumerate() {
        app.adapter_with(
            &format!("alice/{name}"),
            &sized_adapter(8, 256, 48, i as u32),
        )
        .await;
    }
}

/// Queues a ziplora merge of alice/big1 and alice/big2 into alice/zip (seconds in a debug build).
async fn queue_long_merge(app: &TestApp, steps: u32) -> String {
    let (status, job) = app
        .post_json(
            "/api/v1/merges",
            "alice",
            &json!({"method": "ziplora", "steps": steps,
                "inputs": [{"adapter": "alice/big1"}, {"adapter": "alice/big2"}],
                "output": {"adapter": "alice/zip", "create": true}}),
        )
        .await;
    assert_eq!(status, 202, "{job}");
    job["id"].as_str().expect("id").to_string()
}

/// SIGTERM to the process running job `id`: it exits cleanly and the job is queued again, the
/// attempt not counted.
async fn stopped_and_requeued(app: &TestApp, process: &mut Process, id: &str) {
    let status = process
        .terminate(Duration::from_secs(60))
        .expect("exits on SIGTERM");
    assert!(status.success(), "{status:?}");
    let j = app.store.meta.get_job(id).await.expect("get").expect("job");
    assert_eq!((j.state, j.attempts), (JobState::Queued, 0), "{j:?}");
}

/// Waits until the job runs in the worker process `pid` and has made progress.
async fn running_in(app: &TestApp, id: &str, pid: u32) {
    let start = Instant::now();
    loop {
        let job = app.store.meta.get_job(id).await.expect("get").expect("job");
        let owner = job.lease_owner.clone().unwrap_or_default();
        if job.state == JobState::Running
            && owner.contains(&format!("/{pid}/"))
            && job.progress_done > 0
        {
            return;
        }
        assert!(!job.state.is_terminal(), "{job:?}");
        assert!(start.elapsed() < WAIT, "not running in {pid}: {job:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn versions_of(app: &TestApp, repo: &str) -> Vec<i64> {
    let (_, page) = app
        .get_json(
            &format!("/api/v1/adapters/{repo}/versions?limit=500"),
            "alice",
        )
        .await;
    page["items"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v["number"].as_i64()).collect())
        .unwrap_or_default()
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stopped_and_killed_workers_lose_no_job_and_publish_once(#[case] backend: Backend) {
    let Some(app) = spawn_app_with_workers(backend, 0).await else {
        return;
    };
    big_inputs(&app).await;
    let id = queue_long_merge(&app, 300).await;

    // SIGTERM: the job in hand goes back to the queue without using an attempt.
    let mut first = worker(&app);
    running_in(&app, &id, first.pid()).await;
    stopped_and_requeued(&app, &mut first, &id).await;

    // SIGKILL mid-job: its lease expires, another worker takes over.
    let mut second = worker(&app);
    running_in(&app, &id, second.pid()).await;
    second.kill();
    // Its engine process (`quiver job-exec`) stops with it instead of running on as an orphan.
    let scratch = app.temp_dir().join("scratch");
    let start = std::time::Instant::now();
    while !quiver_tests::engines_under(&scratch).is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the killed worker's engine process still runs: {:?}",
            quiver_tests::engines_under(&scratch)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let third = worker(&app);
    let done = app.wait_job(&id, "alice", WAIT).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["attempts"], 2, "the killed attempt counts: {done}");
    assert!(done["error"].is_null(), "{done}");
    assert_eq!(
        versions_of(&app, "alice/zip").await,
        [1],
        "exactly one result version"
    );
    // The killed worker's scratch space was cleaned by the next process to start.
    let dirs: Vec<_> = std::fs::read_dir(&scratch)
        .expect("scratch")
        .filter_map(Result::ok)
        .collect();
    assert_eq!(dirs.len(), 1, "only the live worker's directory: {dirs:?}");
    drop(third);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_jobs_on_two_worker_processes_run_once_each(#[case] backend: Backend) {
    let Some(app) = spawn_app_with_workers(backend, 0).await else {
        return;
    };
    for (i, name) in ["a", "b"].into_iter().enumerate() {
        app.create_adapter("alice", name, false, "alice").await;
        app.upload(
            &format!("alice/{name}"),
            "alice",
            &synthetic_adapter(4, &["q_proj", "v_proj"], i as u32),
        )
        .await;
    }
    let _w1 = worker(&app);
    let _w2 = worker(&app);
    let bodies: Vec<Value> = (0..20)
        .map(|i| json!({"method": "linear", "inputs": [{"adapter": "alice/a", "weight": 1.0 + i as f64}, {"adapter": "alice/b"}],
            "output": {"adapter": "alice/many", "create": true}}))
        .collect();
    let submitted = futures::future::join_all(
        bodies
            .iter()
            .map(|b| app.post_json("/api/v1/merges", "alice", b)),
    )
    .await;
    let mut ids = Vec::new();
    for (s, job) in submitted {
        assert_eq!(s, 202, "{job}");
        ids.push(job["id"].as_str().expect("id").to_string());
    }
    let mut results = BTreeSet::new();
    for id in &ids {
        let job = app.wait_job(id, "alice", WAIT).await;
        assert_eq!(job["state"], "succeeded", "{job}");
        assert_eq!(job["attempts"], 1, "{job}");
        assert!(
            results.insert(job["result"]["version"].as_i64().expect("version")),
            "{job}"
        );
    }
    let mut numbers = versions_of(&app, "alice/many").await;
    numbers.sort();
    assert_eq!(
        numbers,
        (1..=20).collect::<Vec<i64>>(),
        "one version per job"
    );
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_survives_its_database_connections_being_cut() {
    let Some(app) = spawn_app_with_workers(Backend::Postgres, 0).await else {
        return;
    };
    big_inputs(&app).await;
    let id = queue_long_merge(&app, 200).await;
    let w = worker(&app);
    running_in(&app, &id, w.pid()).await;
    // Every connection of the test database but ours is terminated, a few times over a second
    // (what a database restart looks like to the worker).
    let db = app
        .settings()
        .database_url
        .rsplit('/')
        .next()
        .expect("db name")
        .to_string();
    let admin = std::env::var("QUIVER_TEST_POSTGRES_URL").expect("admin url");
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&admin)
        .await
        .expect("admin");
    for _ in 0..4 {
        let cut: Vec<(bool,)> = sqlx::query_as(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
        )
        .bind(&db)
        .fetch_all(&mut conn)
        .await
        .expect("terminate");
        assert!(!cut.is_empty());
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let done = app.wait_job(&id, "alice", WAIT).await;
    assert!(
        matches!(done["state"].as_str(), Some("succeeded" | "failed")),
        "{done}"
    );
    let versions = versions_of(&app, "alice/zip").await;
    match done["state"].as_str() {
        Some("succeeded") => assert_eq!(versions, [1]),
        _ => assert!(versions.is_empty() && done["error"].is_string(), "{done}"),
    }
    drop(w);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_server_stopped_with_sigterm_hands_its_job_back(#[case] backend: Backend) {
    let Some(app) = spawn_app_with_workers(backend, 0).await else {
        return;
    };
    big_inputs(&app).await;
    let port = free_port();
    let mut server = Process::start(
        &app,
        &[
            "serve",
            "--bind",
            &format!("127.0.0.1:{port}"),
            "--job-workers",
            "1",
        ],
        &[],
    );
    let id = queue_long_merge(&app, 300).await;
    running_in(&app, &id, server.pid()).await;
    stopped_and_requeued(&app, &mut server, &id).await;
    assert!(versions_of(&app, "alice/zip").await.is_empty());
}

/// Waits (up to a minute) until the server at `base` answers /healthz.
async fn wait_healthy(client: &reqwest::Client, base: &str) {
    let start = Instant::now();
    loop {
        let status = client
            .get(format!("{base}/healthz"))
            .send()
            .await
            .map(|r| r.status());
        if status.is_ok_and(|s| s == 200) {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{base} did not start"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Creates alice/`name` on the server at `base` and uploads `files` as its version 1.
async fn create_and_upload(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    name: &str,
    files: quiver_tests::Files,
) {
    let r = client
        .post(format!("{base}/api/v1/adapters"))
        .bearer_auth(token)
        .json(&json!({"owner": "alice", "name": name, "base_model": "quiver-test/tiny-llama"}))
        .send()
        .await
        .expect("create");
    assert_eq!(r.status(), 201);
    let mut form = reqwest::multipart::Form::new();
    for (path, bytes) in files {
        form = form.part(
            "file",
            reqwest::multipart::Part::bytes(bytes).file_name(path),
        );
    }
    let r = client
        .post(format!("{base}/api/v1/adapters/alice/{name}/versions"))
        .bearer_auth(token)
        .multipart(form)
        .send()
        .await
        .expect("upload");
    assert_eq!(r.status(), 201);
}

/// A free port on 127.0.0.1 (bound and released; good enough for a test).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_servers_and_two_workers_share_one_postgres_and_s3() {
    let Some(app) = spawn_app_with_workers(Backend::Postgres, 0).await else {
        return;
    };
    let ports = [free_port(), free_port()];
    let servers: Vec<Process> = ports
        .iter()
        .map(|p| {
            Process::start(
                &app,
                &[
                    "serve",
                    "--bind",
                    &format!("127.0.0.1:{p}"),
                    "--job-workers",
                    "0",
                ],
                &[],
            )
        })
        .collect();
    let _workers = [worker(&app), worker(&app)];
    let client = reqwest::Client::new();
    let base = |i: usize| format!("http://127.0.0.1:{}", ports[i]);
    for i in 0..2 {
        wait_healthy(&client, &base(i)).await;
    }
    let token = app.token("alice").to_string();
    // Adapters and uploads through server 0, jobs through server 1, reads through both.
    for (i, name) in ["a", "b"].into_iter().enumerate() {
        let files = synthetic_adapter(4, &["q_proj"], i as u32);
        create_and_upload(&client, &base(0), &token, name, files).await;
    }
    let mut ids = Vec::new();
    for i in 0..10 {
        let r = client.post(format!("{}/api/v1/merges", base(1))).bearer_auth(&token)
            .json(&json!({"method": "svd", "rank": 2, "inputs": [{"adapter": "alice/a", "weight": i}, {"adapter": "alice/b"}],
                "output": {"adapter": format!("alice/out{}", i % 3), "create": true}}))
            .send().await.expect("merge");
        assert_eq!(r.status(), 202);
        ids.push(
            r.json::<Value>().await.expect("job")["id"]
                .as_str()
                .expect("id")
                .to_string(),
        );
    }
    for (i, id) in ids.iter().enumerate() {
        let start = Instant::now();
        loop {
            let job: Value = client
                .get(format!("{}/api/v1/jobs/{id}", base(i % 2)))
                .bearer_auth(&token)
                .send()
                .await
                .expect("job")
                .json()
                .await
                .expect("json");
            if job["state"] == "succeeded" {
                break;
            }
            assert!(
                matches!(job["state"].as_str(), Some("queued" | "running")),
                "{job}"
            );
            assert!(start.elapsed() < WAIT, "{job}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let mut total = 0;
    for n in 0..3 {
        let repo = quiver_store::RepoId::parse("alice", &format!("out{n}")).expect("id");
        let a = app
            .store
            .meta
            .get_adapter(&repo)
            .await
            .expect("get")
            .expect("adapter");
        let latest = app
            .store
            .meta
            .get_version(a.id, &VersionRef::Main)
            .await
            .expect("get")
            .expect("version");
        total += latest.number;
        // Both servers serve the result.
        for i in 0..2 {
            let r = client
                .get(format!(
                    "{}/api/v1/adapters/alice/out{n}/versions/main/files/adapter_model.safetensors",
                    base(i)
                ))
                .send()
                .await
                .expect("download");
            assert_eq!(r.status(), 200);
        }
    }
    assert_eq!(total, 10, "nothing lost, nothing doubled");
    drop(servers);
}

#[test]
fn startup_errors_say_what_to_fix() {
    let dir = tempfile::tempdir().expect("tmp");
    for (args, expected) in [
        (
            vec![
                "serve",
                "--bind",
                "127.0.0.1:0",
                "--database-url",
                "mysql://db/quiver",
            ],
            "database URL must start with sqlite:// or postgres://",
        ),
        (
            vec!["worker", "--store-url", "ftp://somewhere/blobs"],
            "cannot open the storage",
        ),
        // The test binary is a CPU build: a GPU worker must refuse to start, not fail its
        // first job.
        (
            vec!["worker", "--device", "cuda"],
            "--device cuda is not available",
        ),
        (
            vec![
                "serve",
                "--bind",
                "127.0.0.1:0",
                "--job-workers",
                "2",
                "--device",
                "cuda",
            ],
            "--device cuda is not available",
        ),
    ] {
        let out = std::process::Command::new(quiver_tests::quiver_bin())
            .args(&args)
            .arg("--data-dir")
            .arg(dir.path())
            .output()
            .expect("run quiver");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert!(
            !stderr.contains("the server failed to handle this request"),
            "{stderr}"
        );
    }
}

/// A PostgreSQL cluster of its own (Debian's pg_createcluster), so that this test can restart
/// the server without disturbing the others; dropped with the guard.
struct OwnCluster {
    version: String,
    name: String,
    port: u16,
}

impl OwnCluster {
    /// `Err` when clusters cannot be made here (no Debian tooling, or not root); panics when
    /// they should be and creation fails.
    fn create() -> Result<Self, String> {
        let run = |cmd: &str, args: &[&str]| {
            std::process::Command::new(cmd)
                .args(args)
                .output()
                .map_err(|e| format!("{cmd}: {e}"))
        };
        let version = std::fs::read_dir("/etc/postgresql")
            .map_err(|e| format!("no /etc/postgresql: {e}"))?
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .next()
            .ok_or("no PostgreSQL version under /etc/postgresql")?;
        if String::from_utf8_lossy(&run("id", &["-u"])?.stdout).trim() != "0" {
            return Err("pg_createcluster needs root".into());
        }
        // Clusters left by test processes that were killed.
        let listed = run("pg_lsclusters", &["-h"])?;
        for line in String::from_utf8_lossy(&listed.stdout).lines() {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if let [ver, name, ..] = cols.as_slice()
                && let Some(pid) = name.strip_prefix("quiver_restart_")
                && !std::path::Path::new(&format!("/proc/{pid}")).exists()
            {
                let _ = run("pg_dropcluster", &["--stop", ver, name]);
            }
        }
        let name = format!("quiver_restart_{}", std::process::id());
        let port = free_port();
        let out = run(
            "pg_createcluster",
            &[
                &version,
                &name,
                "-p",
                &port.to_string(),
                "--start",
                "--",
                "--auth-local=trust",
                "--auth-host=trust",
            ],
        )?;
        assert!(
            out.status.success(),
            "pg_createcluster failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(Self {
            version,
            name,
            port,
        })
    }

    fn restart(&self) {
        let status = std::process::Command::new("pg_ctlcluster")
            .args([&self.version, &self.name, "restart"])
            .status()
            .expect("pg_ctlcluster");
        assert!(status.success());
    }
}

impl Drop for OwnCluster {
    fn drop(&mut self) {
        let _ = std::process::Command::new("pg_dropcluster")
            .args(["--stop", &self.version, &self.name])
            .output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_survives_a_postgres_restart() {
    let Ok(bucket) = std::env::var("QUIVER_TEST_S3_BUCKET") else {
        assert!(
            std::env::var("QUIVER_REQUIRE_POSTGRES").as_deref() != Ok("1"),
            "QUIVER_REQUIRE_POSTGRES=1 but QUIVER_TEST_S3_BUCKET is not set"
        );
        eprintln!("skipped: needs the test S3 server (scripts/test.sh)");
        return;
    };
    let cluster = match OwnCluster::create() {
        Ok(c) => c,
        Err(why) => {
            // The test command requires every Postgres case: a skip there would hide that this
            // fault is no longer tested.
            assert!(
                std::env::var("QUIVER_REQUIRE_POSTGRES").as_deref() != Ok("1"),
                "QUIVER_REQUIRE_POSTGRES=1 but a PostgreSQL cluster of the test's own cannot be made here: {why}"
            );
            eprintln!("skipped: a PostgreSQL cluster of the test's own cannot be made here: {why}");
            return;
        }
    };
    let dir = tempfile::tempdir().expect("tmp");
    let storage = [
        "--database-url".to_string(),
        format!("postgres://postgres@127.0.0.1:{}/postgres", cluster.port),
        "--store-url".to_string(),
        format!("s3://{bucket}/restart-{}", uuid::Uuid::new_v4().simple()),
        "--data-dir".to_string(),
        dir.path().display().to_string(),
    ];
    let quiver = |args: &[&str]| {
        let mut cmd = std::process::Command::new(quiver_tests::quiver_bin());
        cmd.args(args)
            .args(&storage)
            .env("QUIVER_JOB_LEASE_MS", LEASE_MS);
        cmd
    };
    let out = quiver(&["token", "create", "--user", "alice"])
        .output()
        .expect("token");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let port = free_port();
    let log = std::fs::File::create(dir.path().join("serve.log")).expect("log");
    let _server = Process(
        quiver(&[
            "serve",
            "--bind",
            &format!("127.0.0.1:{port}"),
            "--job-workers",
            "1",
        ])
        .stderr(log)
        .spawn()
        .expect("serve"),
    );
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    wait_healthy(&client, &base).await;
    for (i, name) in ["big1", "big2"].into_iter().enumerate() {
        let files = sized_adapter(8, 256, 48, i as u32);
        create_and_upload(&client, &base, &token, name, files).await;
    }
    let job: Value = client
        .post(format!("{base}/api/v1/merges"))
        .bearer_auth(&token)
        .json(&json!({"method": "ziplora", "steps": 300,
            "inputs": [{"adapter": "alice/big1"}, {"adapter": "alice/big2"}],
            "output": {"adapter": "alice/zip", "create": true}}))
        .send()
        .await
        .expect("merge")
        .json()
        .await
        .expect("job");
    let url = format!("{base}/api/v1/jobs/{}", job["id"].as_str().expect("id"));
    // While the database is down, answers are 503s: keep asking.
    let get = |url: String| {
        let (client, token) = (client.clone(), token.clone());
        async move {
            match client.get(url).bearer_auth(token).send().await {
                Ok(r) if r.status() == 200 => r.json::<Value>().await.ok(),
                _ => None,
            }
        }
    };
    let start = Instant::now();
    loop {
        if let Some(j) = get(url.clone()).await
            && j["state"] == "running"
            && j["progress"]["done"].as_i64() > Some(0)
        {
            break;
        }
        assert!(start.elapsed() < WAIT, "the job did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cluster.restart();
    let start = Instant::now();
    let done = loop {
        if let Some(j) = get(url.clone()).await
            && matches!(
                j["state"].as_str(),
                Some("succeeded" | "failed" | "cancelled")
            )
        {
            break j;
        }
        assert!(
            start.elapsed() < WAIT,
            "the job did not end after the restart; the server's log:\n{}",
            std::fs::read_to_string(dir.path().join("serve.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let versions: Value = client
        .get(format!("{base}/api/v1/adapters/alice/zip/versions"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("versions")
        .json()
        .await
        .unwrap_or(Value::Null);
    let n = versions["items"].as_array().map_or(0, Vec::len);
    match done["state"].as_str() {
        Some("succeeded") => assert_eq!(n, 1, "{done}"),
        _ => assert!(
            n == 0 && done["error"].is_string(),
            "a clean failure: {done}"
        ),
    }
    assert_eq!(
        done["state"], "succeeded",
        "the restart is transient: {done}"
    );
}
