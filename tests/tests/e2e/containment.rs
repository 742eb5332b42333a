//! A job's engine runs in a child process (`quiver job-exec`): an engine that dies, runs out of
//! memory or runs too long fails its job, never the server.

use std::time::Duration;

use quiver_api::config::HttpOptions;
use quiver_api::jobs::exec::ExecLimits;
use quiver_tests::{Backend, TestApp, quiver_bin, sized_adapter, spawn_app_exec, synthetic_adapter};
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

/// An engine process that cannot get memory dies on every attempt: the job is retried within its
/// attempts and then failed as `worker_crashed`; the server and its workers live on.
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_engine_that_dies_fails_its_job_not_the_server(#[case] backend: Backend) {
    let exec = ExecLimits {
        program: quiver_bin(),
        timeout: WAIT,
        // Below what the process has mapped already: every later allocation fails.
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
    assert!(error.starts_with("worker_crashed: "), "{job}");
    assert_eq!(job["attempts"], job["max_attempts"], "retried, then failed: {job}");
    assert_serving(&app).await;
    assert_eq!(
        app.get_json("/api/v1/adapters/alice/out", "alice").await.0,
        404,
        "nothing published"
    );
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
