//! A job's engine runs in a child process (`quiver job-exec`): an engine that dies, runs out of
//! memory or runs too long fails its job, never the server.

use std::time::Duration;

use quiver_api::config::HttpOptions;
use quiver_api::jobs::exec::ExecLimits;
use quiver_tests::{
    Backend, TestApp, quiver_bin, sized_adapter, spawn_app_exec, synthetic_adapter,
};
use rstest::rstest;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(180);

async fn app_with(backend: Backend, exec: ExecLimits) -> Option<TestApp> {
    spawn_app_exec(backend, HttpOptions::default(), 1, exec).await
}

async fn queue(app: &TestApp, body: Value) -> String {
    let (status, job) = app.post_json("/api/v1/merges", "alice", &body).await;
    assert_eq!(status, 202, "{body} → {job}");
    job["id"].as_str().expect("id").to_string()
}

async fn assert_serving(app: &TestApp) {
    let (status, body) = app.get_json("/healthz", "").await;
    assert_eq!(status, 200, "the server still answers: {body}");
    let (status, _) = app.get_json("/api/v1/adapters", "").await;
    assert_eq!(status, 200);
}

/// An engine process that dies (here: SIGKILL, as the kernel's OOM killer sends) fails the
/// attempt as `worker_crashed` with the signal; a job whose engine dies on every attempt ends
/// `failed` after its attempts instead of crash-looping; the server and its workers live on.
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_engine_that_dies_fails_its_job_not_the_server(#[case] backend: Backend) {
    let exec = ExecLimits {
        program: quiver_bin(),
        timeout: WAIT,
        memory_bytes: 0,
    };
    let Some(app) = app_with(backend, exec).await else {
        return;
    };
    for (i, name) in ["big1", "big2"].into_iter().enumerate() {
        app.adapter_with(
            &format!("alice/{name}"),
            &sized_adapter(8, 256, 48, i as u32),
        )
        .await;
    }
    let id = queue(
        &app,
        json!({"method": "ziplora", "steps": 20000,
               "inputs": [{"adapter": "alice/big1"}, {"adapter": "alice/big2"}],
               "output": {"adapter": "alice/out", "create": true}}),
    )
    .await;
    // Kill every engine process of this app's jobs until the job has ended.
    let scratch = app.temp_dir().join("scratch");
    let started = std::time::Instant::now();
    let mut killed = 0;
    let job = loop {
        for pid in quiver_tests::engines_under(&scratch) {
            let status = std::process::Command::new("kill")
                .args(["-9", &pid.to_string()])
                .status()
                .expect("kill");
            killed += usize::from(status.success());
        }
        let (_, job) = app.get_json(&format!("/api/v1/jobs/{id}"), "alice").await;
        if job["state"] == "failed" || job["state"] == "succeeded" {
            break job;
        }
        assert!(started.elapsed() < WAIT, "{job}");
        assert_serving(&app).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(job["state"], "failed", "{job}");
    let error = job["error"].as_str().unwrap_or_default();
    assert!(
        error.starts_with("worker_crashed: ") && error.contains("signal 9"),
        "{job}"
    );
    assert_eq!(
        job["attempts"], job["max_attempts"],
        "retried, then failed: {job}"
    );
    assert!(killed >= 3, "one engine process per attempt: {killed}");
    assert_serving(&app).await;
    assert_eq!(
        app.get_json("/api/v1/adapters/alice/out", "alice").await.0,
        404,
        "nothing published"
    );
}

/// The address-space limit reaches the engine process: one below what the binary maps already
/// leaves it unable to start its threads, and the job fails without harming the server (the
/// engine either dies — `worker_crashed` — or is stopped at the time limit).
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_memory_limit_applies_to_the_engine(#[case] backend: Backend) {
    let exec = ExecLimits {
        program: quiver_bin(),
        timeout: Duration::from_secs(20),
        memory_bytes: 1 << 20,
    };
    let Some(app) = app_with(backend, exec).await else {
        return;
    };
    for (i, name) in ["a", "b"].into_iter().enumerate() {
        app.adapter_with(
            &format!("alice/{name}"),
            &synthetic_adapter(4, &["q_proj", "v_proj"], i as u32 + 1),
        )
        .await;
    }
    let id = queue(
        &app,
        json!({"method": "linear", "inputs": [{"adapter": "alice/a"}, {"adapter": "alice/b"}],
               "output": {"adapter": "alice/out", "create": true}}),
    )
    .await;
    let job = app.wait_job(&id, "alice", WAIT).await;
    assert_eq!(job["state"], "failed", "{job}");
    let error = job["error"].as_str().unwrap_or_default();
    assert!(
        error.starts_with("worker_crashed: ") || error.starts_with("job_timeout: "),
        "{job}"
    );
    assert_serving(&app).await;
}

/// A job over `--job-timeout` is stopped and failed with `job_timeout`, once (not retried).
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_over_its_time_limit_fails_with_job_timeout(#[case] backend: Backend) {
    let exec = ExecLimits {
        program: quiver_bin(),
        timeout: Duration::from_secs(2),
        memory_bytes: 0,
    };
    let Some(app) = app_with(backend, exec).await else {
        return;
    };
    for (i, name) in ["big1", "big2"].into_iter().enumerate() {
        app.adapter_with(
            &format!("alice/{name}"),
            &sized_adapter(8, 256, 48, i as u32),
        )
        .await;
    }
    let started = std::time::Instant::now();
    let id = queue(
        &app,
        json!({"method": "ziplora", "steps": 20000,
               "inputs": [{"adapter": "alice/big1"}, {"adapter": "alice/big2"}],
               "output": {"adapter": "alice/zip", "create": true}}),
    )
    .await;
    let job = app.wait_job(&id, "alice", WAIT).await;
    assert_eq!(job["state"], "failed", "{job}");
    assert!(
        job["error"]
            .as_str()
            .unwrap_or_default()
            .starts_with("job_timeout: "),
        "{job}"
    );
    assert_eq!(job["attempts"], 1, "a timeout is not retried: {job}");
    assert!(started.elapsed() < WAIT);
    assert_serving(&app).await;
}
