//! Fair share of workers, on each backend: a claim takes the oldest job of the submitter with
//! the fewest running jobs, ties going round-robin (whose latest job started longest ago), with
//! an optional cap of running jobs per submitter; queue positions follow the same order.

use std::time::Duration;

use quiver_store::meta::DEFAULT_MAX_ATTEMPTS;
use quiver_store::store_or_skip;
use quiver_store::testing::Backend;
use quiver_store::{JobEnd, JobKind, JobRecord, JobState, Lease, NewJob, Store};
use rstest::rstest;
use serde_json::json;

const USERS: &[JobKind] = &[JobKind::Merge, JobKind::Compress, JobKind::Embed];

async fn queue(store: &Store, who: &str, kind: JobKind, n: usize) -> Vec<JobRecord> {
    let mut jobs = Vec::new();
    for i in 0..n {
        let (job, _) = store
            .meta
            .enqueue_job(&NewJob {
                kind,
                spec: json!({"who": who, "i": i}),
                spec_sha256: format!("{who}{i}"),
                created_by: who.into(),
                idempotency_key: None,
                max_attempts: DEFAULT_MAX_ATTEMPTS,
                subject_version_id: None,
            })
            .await
            .expect("enqueue");
        jobs.push(job);
    }
    // The queue's own order (jobs queued in one millisecond go by id).
    jobs.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
    jobs
}

async fn claim(store: &Store, cap: i64) -> Option<(JobRecord, Lease)> {
    // Start times are in ms: keep successive claims apart so round-robin ties are not by chance.
    tokio::time::sleep(Duration::from_millis(3)).await;
    store
        .meta
        .claim_job_capped("w", 30_000, USERS, cap)
        .await
        .expect("claim")
}

async fn finish(store: &Store, lease: &Lease) {
    let end = store
        .meta
        .end_job(lease, &JobEnd::Succeeded)
        .await
        .expect("end");
    assert_eq!(end, Some(JobState::Succeeded));
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn one_worker_a_single_job_runs_after_the_current_one_not_after_200(
    #[case] backend: Backend,
) {
    let (store, _s) = store_or_skip!(backend);
    let alice = queue(&store, "alice", JobKind::Merge, 200).await;
    let (first, lease) = claim(&store, 0).await.expect("a job");
    assert_eq!(first.id, alice[0].id);
    let bob = queue(&store, "bob", JobKind::Merge, 1).await;
    // Bob's job is next in line; alice's next one waits for it.
    let pos = store
        .meta
        .queue_positions(&[
            bob[0].id.clone(),
            alice[1].id.clone(),
            alice[199].id.clone(),
        ])
        .await
        .expect("positions");
    assert_eq!(pos.get(&bob[0].id), Some(&0));
    assert_eq!(pos.get(&alice[1].id), Some(&1));
    assert_eq!(pos.get(&alice[199].id), Some(&199));
    finish(&store, &lease).await;
    let (next, lease) = claim(&store, 0).await.expect("a job");
    assert_eq!(next.id, bob[0].id, "bob's job is the next claim");
    finish(&store, &lease).await;
    let (next, _) = claim(&store, 0).await.expect("a job");
    assert_eq!(next.id, alice[1].id);
    // Not queued any more: no position.
    let pos = store
        .meta
        .queue_positions(&[bob[0].id.clone(), alice[1].id.clone(), alice[2].id.clone()])
        .await
        .expect("positions");
    assert_eq!(pos.len(), 1);
    assert_eq!(pos.get(&alice[2].id), Some(&0));
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn a_long_running_job_does_not_hold_the_free_worker(#[case] backend: Backend) {
    let (store, _s) = store_or_skip!(backend);
    let alice = queue(&store, "alice", JobKind::Merge, 5).await;
    let (long, _long_lease) = claim(&store, 0).await.expect("a job");
    assert_eq!(long.id, alice[0].id);
    let bob = queue(&store, "bob", JobKind::Compress, 1).await;
    // The second worker: bob has no running job, alice has one.
    let (next, lease) = claim(&store, 0).await.expect("a job");
    assert_eq!(next.id, bob[0].id);
    finish(&store, &lease).await;
    let (next, _) = claim(&store, 0).await.expect("a job");
    assert_eq!(next.id, alice[1].id);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn submitters_take_turns(#[case] backend: Backend) {
    let (store, _s) = store_or_skip!(backend);
    let alice = queue(&store, "alice", JobKind::Merge, 3).await;
    let bob = queue(&store, "bob", JobKind::Merge, 3).await;
    let carol = queue(&store, "carol", JobKind::Embed, 3).await;
    let mut order = Vec::new();
    while let Some((job, lease)) = claim(&store, 0).await {
        order.push(job.id.clone());
        finish(&store, &lease).await;
    }
    let expected: Vec<String> = (0..3)
        .flat_map(|i| [&alice[i].id, &bob[i].id, &carol[i].id])
        .cloned()
        .collect();
    assert_eq!(order, expected);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn a_capped_submitter_waits_while_others_run(#[case] backend: Backend) {
    let (store, _s) = store_or_skip!(backend);
    let alice = queue(&store, "alice", JobKind::Merge, 3).await;
    let bob = queue(&store, "bob", JobKind::Merge, 2).await;
    let (a, a_lease) = claim(&store, 1).await.expect("a job");
    assert_eq!(a.id, alice[0].id);
    let (b, _b_lease) = claim(&store, 1).await.expect("a job");
    assert_eq!(b.id, bob[0].id);
    // Both at the cap of one running job: nothing is claimed although jobs are queued.
    assert!(claim(&store, 1).await.is_none());
    assert!(store.meta.has_runnable_job(USERS).await.expect("runnable"));
    // Without a cap the queue goes on.
    let (more, _) = claim(&store, 0).await.expect("a job");
    assert_eq!(more.id, alice[1].id);
    // Alice now has 2 running; with a cap of 2 only bob's job can go.
    finish(&store, &a_lease).await;
    let (next, _) = claim(&store, 2).await.expect("a job");
    assert_eq!(next.id, bob[1].id);
    let (next, _) = claim(&store, 2).await.expect("a job");
    assert_eq!(next.id, alice[2].id);
    assert!(claim(&store, 2).await.is_none());
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn webhook_deliveries_stay_out_of_fair_share(#[case] backend: Backend) {
    let (store, _s) = store_or_skip!(backend);
    let hooks = queue(&store, "alice", JobKind::Webhook, 2).await;
    let alice = queue(&store, "alice", JobKind::Merge, 1).await;
    let bob = queue(&store, "bob", JobKind::Merge, 1).await;
    // Users' workers never take a delivery.
    let (hook, _) = store
        .meta
        .claim_job_capped("d", 30_000, &[JobKind::Webhook], 1)
        .await
        .expect("claim")
        .expect("a delivery");
    assert_eq!(hook.id, hooks[0].id);
    // A running delivery is not one of alice's running jobs, so her older job still goes first.
    let (next, _) = claim(&store, 1).await.expect("a job");
    assert_eq!(next.id, alice[0].id);
    let (next, _) = claim(&store, 1).await.expect("a job");
    assert_eq!(next.id, bob[0].id);
    // Deliveries are claimed oldest first whatever the users' jobs.
    let (hook, _) = store
        .meta
        .claim_job_capped("d", 30_000, &[JobKind::Webhook], 1)
        .await
        .expect("claim")
        .expect("a delivery");
    assert_eq!(hook.id, hooks[1].id);
    let pos = store
        .meta
        .queue_positions(&[hooks[1].id.clone()])
        .await
        .expect("positions");
    assert!(pos.is_empty());
}
