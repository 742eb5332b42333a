//! Fair share of workers through the API: alice queues 200 merges, bob one; with one worker
//! (claims made here through the store, the way a worker makes them) bob's job is the next claim
//! after alice's current one; the per-user cap from `--jobs-per-user`; `queue_position` in the
//! job resource and on the /jobs page goes down as jobs run.

use clap::Parser;
use quiver_api::cli::{Cli, Command};
use quiver_store::{JobEnd, JobKind, JobRecord, Lease};
use quiver_tests::{Backend, TestApp, spawn_app_with_workers, synthetic_adapter};
use reqwest::Method;
use reqwest::header::{LOCATION, SET_COOKIE};
use rstest::rstest;
use serde_json::{Value, json};

const MODULES: [&str; 2] = ["q_proj", "v_proj"];
const KINDS: &[JobKind] = &[JobKind::Merge, JobKind::Compress];

async fn seed(app: &TestApp) {
    for (i, name) in ["a", "b"].into_iter().enumerate() {
        app.adapter_with(
            &format!("alice/{name}"),
            &synthetic_adapter(4, &MODULES, i as u32 + 1),
        )
        .await;
    }
}

/// Queues a cat merge of alice/a and alice/b as `who`; returns the job's id.
async fn submit(app: &TestApp, who: &str, out: &str) -> String {
    let body = json!({"method": "cat",
        "inputs": [{"adapter": "alice/a"}, {"adapter": "alice/b"}],
        "output": {"adapter": format!("{who}/{out}"), "create": true}});
    let (status, job) = app.post_json("/api/v1/merges", who, &body).await;
    assert_eq!(status, 202, "{job}");
    assert_eq!(job["state"], "queued");
    assert!(job["queue_position"].is_i64(), "{job}");
    job["id"].as_str().expect("id").to_string()
}

async fn claim(app: &TestApp, cap: u32) -> Option<(JobRecord, Lease)> {
    app.store
        .meta
        .claim_job_capped("test-worker", 30_000, KINDS, i64::from(cap))
        .await
        .expect("claim")
}

async fn end(app: &TestApp, lease: &Lease) {
    app.store
        .meta
        .end_job(lease, &JobEnd::Succeeded)
        .await
        .expect("end")
        .expect("held");
}

async fn job(app: &TestApp, id: &str, who: &str) -> Value {
    let (status, job) = app.get_json(&format!("/api/v1/jobs/{id}"), who).await;
    assert_eq!(status, 200, "{job}");
    job
}

/// Signs `who` in through the form; returns the cookies.
async fn sign_in(app: &TestApp, who: &str) -> String {
    let res = app
        .request(Method::GET, "/signin", "")
        .send()
        .await
        .expect("page");
    let cookie = res
        .headers()
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok()?.split(';').next().map(str::to_string))
        .collect::<Vec<_>>()
        .join("; ");
    let html = res.text().await.expect("body");
    let at = html.find("name=\"csrf\" value=\"").expect("csrf field") + 19;
    let csrf = html[at..at + 48].to_string();
    let res = app
        .request(Method::POST, "/signin", "")
        .header("Cookie", &cookie)
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
    res.headers()
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok()?.split(';').next().map(str::to_string))
        .collect::<Vec<_>>()
        .join("; ")
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_users_200_jobs_do_not_starve_anothers_single_job(#[case] backend: Backend) {
    let Some(app) = spawn_app_with_workers(backend, 0).await else {
        return;
    };
    seed(&app).await;
    let mut alice = Vec::new();
    for i in 0..200 {
        alice.push(submit(&app, "alice", &format!("m{i}")).await);
    }
    // The one worker takes alice's oldest job.
    let (running, lease) = claim(&app, 0).await.expect("a job");
    assert_eq!(running.created_by, "alice");
    assert!(job(&app, &running.id, "alice").await["queue_position"].is_null());
    let bob = submit(&app, "bob", "solo").await;
    assert_eq!(job(&app, &bob, "bob").await["queue_position"], 0);
    let last = alice.last().expect("jobs").clone();
    let mut position = job(&app, &last, "alice").await["queue_position"]
        .as_i64()
        .expect("position");
    assert_eq!(position, 199, "198 of alice's, then bob's");
    // The page shows it too.
    let cookies = sign_in(&app, "bob").await;
    let html = app
        .request(Method::GET, "/jobs", "")
        .header("Cookie", &cookies)
        .send()
        .await
        .expect("page")
        .text()
        .await
        .expect("body");
    assert!(html.contains("· 0 ahead"), "{html}");

    // Alice's current job ends: bob's is the next claim.
    end(&app, &lease).await;
    let (next, lease) = claim(&app, 0).await.expect("a job");
    assert_eq!(
        next.id, bob,
        "bob's job runs right after alice's current one"
    );
    assert!(job(&app, &bob, "bob").await["queue_position"].is_null());
    end(&app, &lease).await;
    // Then alice's, in her order, and her last job's position goes down as they run.
    for _ in 0..5 {
        let (next, lease) = claim(&app, 0).await.expect("a job");
        assert_eq!(next.created_by, "alice");
        end(&app, &lease).await;
        let now = job(&app, &last, "alice").await["queue_position"]
            .as_i64()
            .expect("position");
        assert!(now < position, "{now} after {position}");
        position = now;
    }
    assert_eq!(position, 193);
    // The OpenAPI schema describes it.
    let (status, api) = app.get_json("/api/openapi.json", "alice").await;
    assert_eq!(status, 200);
    let field = &api["components"]["schemas"]["JobView"]["properties"]["queue_position"];
    assert!(field.is_object(), "{field}");
    // Listings carry it too.
    let (_, page) = app
        .get_json("/api/v1/jobs?state=queued&limit=5", "alice")
        .await;
    let items = page["items"].as_array().expect("items");
    assert_eq!(items[0]["id"], last.as_str());
    assert_eq!(items[0]["queue_position"], 193);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn jobs_per_user_caps_one_submitter_while_others_run(#[case] backend: Backend) {
    // The flag reaches the workers' options.
    let cli = Cli::try_parse_from(["quiver", "worker", "--jobs-per-user", "2"]).expect("parse");
    let Command::Worker { jobs, .. } = cli.command else {
        panic!("not the worker command")
    };
    let cap = jobs.jobs_per_user;
    assert_eq!(cap, 2);
    assert!(Cli::try_parse_from(["quiver", "worker", "--jobs-per-user", "-1"]).is_err());

    let Some(app) = spawn_app_with_workers(backend, 0).await else {
        return;
    };
    seed(&app).await;
    let mut alice = Vec::new();
    for i in 0..5 {
        alice.push(submit(&app, "alice", &format!("m{i}")).await);
    }
    let bob = submit(&app, "bob", "solo").await;
    // Three workers free: alice gets two, bob one; a fourth finds only capped work.
    let (a1, a1_lease) = claim(&app, cap).await.expect("a job");
    let (b1, _) = claim(&app, cap).await.expect("a job");
    let (a2, _) = claim(&app, cap).await.expect("a job");
    assert_eq!(
        [
            a1.created_by.as_str(),
            b1.created_by.as_str(),
            a2.created_by.as_str()
        ],
        ["alice", "bob", "alice"]
    );
    assert_eq!(b1.id, bob);
    assert!(claim(&app, cap).await.is_none(), "alice is at her cap");
    // One of hers ends: the next one may start.
    end(&app, &a1_lease).await;
    let (a3, _) = claim(&app, cap).await.expect("a job");
    assert_eq!(a3.created_by, "alice");
    assert!(claim(&app, cap).await.is_none());
    // No cap: the queue goes on.
    assert!(claim(&app, 0).await.is_some());
}
