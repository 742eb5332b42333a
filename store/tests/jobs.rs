//! The job queue's contract on each backend: exclusive claims, fencing by lease, expiry and
//! requeue with attempts counted, cancellation, one-transaction publishing, lineage.

use std::collections::BTreeSet;
use std::time::Duration;

use bytes::Bytes;
use quiver_store::meta::DEFAULT_MAX_ATTEMPTS;
use quiver_store::store_or_skip;
use quiver_store::testing::Backend;
use quiver_store::{
    Beat, FileRecord, JobEnd, JobFilter, JobKind, JobRecord, JobState, Lease, NewAdapterFields,
    NewJob, NewVersion, OutputTarget, ParentVersion, RepoId, Store, StoreError, VersionRef,
};
use rstest::rstest;
use serde_json::json;

fn job(key: Option<&str>, spec: &str) -> NewJob {
    NewJob {
        kind: JobKind::Merge,
        spec: json!({"spec": spec}),
        spec_sha256: spec.to_string(),
        created_by: "alice".into(),
        idempotency_key: key.map(str::to_string),
        max_attempts: DEFAULT_MAX_ATTEMPTS,
        subject_version_id: None,
    }
}

async fn enqueue(store: &Store, job: &NewJob) -> (JobRecord, bool) {
    store.meta.enqueue_job(job).await.expect("enqueue")
}

async fn claim(store: &Store, worker: &str, lease_ms: i64) -> Option<(JobRecord, Lease)> {
    store
        .meta
        .claim_job(worker, lease_ms, JobKind::ALL)
        .await
        .expect("claim")
}

fn output(name: &str) -> OutputTarget {
    OutputTarget {
        repo: RepoId::parse("alice", name).expect("name"),
        create: Some(NewAdapterFields {
            base_model: "base".into(),
            description: String::new(),
            tags: vec![],
            private: false,
        }),
    }
}

fn version(parents: Vec<ParentVersion>) -> NewVersion {
    NewVersion {
        created_by: "alice".into(),
        files: vec![FileRecord {
            path: "adapter_model.safetensors".into(),
            size: 3,
            sha256: "ab".repeat(32),
        }],
        lora: None,
        lineage: Some(json!({"method": "ties"})),
        parents,
        facets: Default::default(),
    }
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn idempotency_keys_return_the_same_job_or_conflict(#[case] backend: Backend) {
    let (store, _s) = store_or_skip!(backend);
    let (a, created) = enqueue(&store, &job(Some("k1"), "x")).await;
    assert!(created);
    let (b, created) = enqueue(&store, &job(Some("k1"), "x")).await;
    assert!(!created);
    assert_eq!(a.id, b.id);
    assert!(matches!(
        store.meta.enqueue_job(&job(Some("k1"), "y")).await,
        Err(StoreError::Conflict(_))
    ));
    // No key: always a new job.
    let (c, _) = enqueue(&store, &job(None, "x")).await;
    let (d, _) = enqueue(&store, &job(None, "x")).await;
    assert_ne!(c.id, d.id);
    let page = store
        .meta
        .list_jobs(&JobFilter {
            created_by: Some("alice".into()),
            limit: 2,
            ..JobFilter::default()
        })
        .await
        .expect("list");
    assert_eq!(page.items.len(), 2);
    let rest = store
        .meta
        .list_jobs(&JobFilter {
            created_by: Some("alice".into()),
            limit: 10,
            cursor: page.next_cursor,
            ..JobFilter::default()
        })
        .await
        .expect("list");
    assert_eq!(rest.items.len(), 1);
    assert!(rest.next_cursor.is_none());
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_claims_hand_each_job_out_once(#[case] backend: Backend) {
    let (store, _s) = store_or_skip!(backend);
    const JOBS: usize = 40;
    for i in 0..JOBS {
        enqueue(&store, &job(None, &i.to_string())).await;
    }
    let claimers: Vec<_> = (0..8)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                while let Some((j, lease)) = claim(&store, &format!("w{w}"), 60_000).await {
                    assert_eq!(lease.attempt, 1);
                    got.push(j.id);
                }
                got
            })
        })
        .collect();
    let mut all = Vec::new();
    for c in claimers {
        all.extend(c.await.expect("claimer"));
    }
    let distinct: BTreeSet<_> = all.iter().collect();
    assert_eq!(all.len(), JOBS, "every job claimed");
    assert_eq!(distinct.len(), JOBS, "no job claimed twice");
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn expired_leases_are_requeued_fenced_and_counted(#[case] backend: Backend) {
    let (store, _s) = store_or_skip!(backend);
    let (queued, _) = enqueue(&store, &job(None, "x")).await;
    let (_, first) = claim(&store, "w1", 1).await.expect("a job");
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(
        store
            .meta
            .reap_expired_leases()
            .await
            .map(|(requeued, ended)| (requeued, ended.len()))
            .expect("reap"),
        (1, 0)
    );
    // The first worker is fenced off everywhere.
    assert_eq!(
        store
            .meta
            .heartbeat(&first, 1, 2, 60_000)
            .await
            .expect("beat"),
        Beat::Lost
    );
    assert!(matches!(
        store
            .meta
            .publish_job_result(&first, &output("out"), &version(vec![]), &json!({}))
            .await,
        Err(StoreError::LeaseLost)
    ));
    assert_eq!(
        store
            .meta
            .end_job(&first, &JobEnd::Failed("late".into()))
            .await
            .expect("end"),
        None
    );
    let (j, second) = claim(&store, "w2", 60_000).await.expect("again");
    assert_eq!(j.id, queued.id);
    assert_eq!(second.attempt, 2);
    assert!(
        j.error.as_deref().is_some_and(|e| e.contains("lease")),
        "{:?}",
        j.error
    );
    assert_eq!(
        store
            .meta
            .heartbeat(&second, 3, 4, 60_000)
            .await
            .expect("beat"),
        Beat::Held { cancel: false }
    );
    let now = store.meta.get_job(&j.id).await.expect("get").expect("job");
    assert_eq!((now.progress_done, now.progress_total), (3, 4));

    // A transient failure requeues until the attempts are used up, then fails.
    assert_eq!(
        store
            .meta
            .end_job(
                &second,
                &JobEnd::Retry {
                    error: "s3 away".into(),
                    backoff_ms: 0
                }
            )
            .await
            .expect("retry"),
        Some(JobState::Queued)
    );
    let (_, third) = claim(&store, "w3", 60_000).await.expect("third");
    assert_eq!(third.attempt, 3);
    assert_eq!(
        store
            .meta
            .end_job(
                &third,
                &JobEnd::Retry {
                    error: "s3 away".into(),
                    backoff_ms: 0
                }
            )
            .await
            .expect("retry"),
        Some(JobState::Failed),
        "attempts used up"
    );
    let done = store.meta.get_job(&j.id).await.expect("get").expect("job");
    assert_eq!(done.state, JobState::Failed);
    assert_eq!(done.error.as_deref(), Some("s3 away"));
    assert!(claim(&store, "w4", 60_000).await.is_none());

    // Released (shutdown) jobs go back without using an attempt.
    let (other, _) = enqueue(&store, &job(None, "y")).await;
    let (_, l) = claim(&store, "w5", 60_000).await.expect("job");
    assert_eq!(
        store
            .meta
            .end_job(&l, &JobEnd::Released)
            .await
            .expect("release"),
        Some(JobState::Queued)
    );
    let (_, l) = claim(&store, "w6", 60_000).await.expect("job");
    assert_eq!(l.job_id, other.id);
    assert_eq!(l.attempt, 1);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn cancel_and_publish(#[case] backend: Backend) {
    let (store, _s) = store_or_skip!(backend);
    // Queued: cancelled at once, never claimed.
    let (a, _) = enqueue(&store, &job(None, "a")).await;
    let c = store
        .meta
        .cancel_job(&a.id)
        .await
        .expect("cancel")
        .expect("job");
    assert_eq!(c.state, JobState::Cancelled);
    assert!(claim(&store, "w", 60_000).await.is_none());

    // Running: a request the heartbeat reports, and publishing is refused.
    let (b, _) = enqueue(&store, &job(None, "b")).await;
    let (_, lease) = claim(&store, "w", 60_000).await.expect("job");
    let c = store
        .meta
        .cancel_job(&b.id)
        .await
        .expect("cancel")
        .expect("job");
    assert_eq!((c.state, c.cancel_requested), (JobState::Running, true));
    assert_eq!(
        store
            .meta
            .heartbeat(&lease, 0, 1, 60_000)
            .await
            .expect("beat"),
        Beat::Held { cancel: true }
    );
    assert!(matches!(
        store
            .meta
            .publish_job_result(&lease, &output("never"), &version(vec![]), &json!({}))
            .await,
        Err(StoreError::LeaseLost)
    ));
    assert!(
        store
            .meta
            .get_adapter(&RepoId::parse("alice", "never").expect("id"))
            .await
            .expect("get")
            .is_none()
    );
    assert_eq!(
        store
            .meta
            .end_job(&lease, &JobEnd::Cancelled)
            .await
            .expect("end"),
        Some(JobState::Cancelled)
    );

    // Published: the adapter, the version, its parents and the job's success at once.
    let (parent_job, _) = enqueue(&store, &job(None, "p")).await;
    let (_, lease) = claim(&store, "w", 60_000).await.expect("job");
    assert_eq!(lease.job_id, parent_job.id);
    let (adapter, v) = store
        .meta
        .publish_job_result(&lease, &output("base"), &version(vec![]), &json!({"r": 1}))
        .await
        .expect("publish");
    let (child_job, _) = enqueue(&store, &job(None, "c")).await;
    let (_, lease) = claim(&store, "w", 60_000).await.expect("job");
    let parents = vec![ParentVersion {
        adapter: adapter.repo_id(),
        version: v.number,
        revision: v.revision.clone(),
    }];
    let (child, cv) = store
        .meta
        .publish_job_result(&lease, &output("child"), &version(parents), &json!({}))
        .await
        .expect("publish");
    let done = store
        .meta
        .get_job(&child_job.id)
        .await
        .expect("get")
        .expect("job");
    assert_eq!(done.state, JobState::Succeeded);
    assert_eq!(done.result, Some((child.repo_id(), cv.number)));
    // Publishing twice with one lease is impossible.
    assert!(matches!(
        store
            .meta
            .publish_job_result(&lease, &output("child"), &version(vec![]), &json!({}))
            .await,
        Err(StoreError::LeaseLost)
    ));
    let graph = store.meta.lineage(v.id, 100).await.expect("lineage");
    assert_eq!(graph.nodes.len(), 2);
    assert_eq!(graph.edges, vec![(cv.id, v.id)]);
    let got = store
        .meta
        .get_version(child.id, &VersionRef::Main)
        .await
        .expect("get")
        .expect("version");
    assert_eq!(got.number, 1);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_blob_sweep_spares_referenced_and_recommitted_blobs(#[case] backend: Backend) {
    let (store, _s) = store_or_skip!(backend);
    let put = |body: &'static [u8]| {
        let store = store.clone();
        async move {
            let mut up = store.blobs.begin();
            up.write(Bytes::from_static(body)).await.expect("write");
            let staged = up.finish().await.expect("finish");
            store.blobs.commit(&staged).await.expect("commit");
            staged
        }
    };
    let orphan = put(b"nobody refers to me").await;
    store.blobs.discard(&orphan).await;
    // Too young for an hour's grace; gone with none.
    assert_eq!(
        store
            .sweep_unreferenced_blobs(Duration::from_secs(3600))
            .await
            .expect("sweep"),
        0
    );
    // S3 reports whole seconds.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        store
            .sweep_unreferenced_blobs(Duration::ZERO)
            .await
            .expect("sweep"),
        1
    );
    assert!(!store.blobs.exists(&orphan.sha256).await.expect("exists"));

    // Uploads of one content racing a sweep with no grace at all, published the way the service
    // does (the blob checked inside the commit, under the sweep's lock): every committed
    // version's blob is there as soon as its commit returns, with nothing checked afterwards.
    let adapter = store
        .meta
        .create_adapter(&quiver_store::NewAdapter {
            repo: RepoId::parse("alice", "race").expect("id"),
            base_model: "base".into(),
            description: String::new(),
            tags: vec![],
            private: false,
        })
        .await
        .expect("adapter");
    let sweeper = {
        let store = store.clone();
        tokio::spawn(async move {
            for _ in 0..30 {
                store
                    .sweep_unreferenced_blobs(Duration::ZERO)
                    .await
                    .expect("sweep");
            }
        })
    };
    for _ in 0..15 {
        let staged = put(b"shared content of many versions").await;
        let new = NewVersion {
            created_by: "alice".into(),
            files: vec![FileRecord {
                path: "f".into(),
                size: staged.size as i64,
                sha256: staged.sha256.clone(),
            }],
            lora: None,
            lineage: None,
            parents: vec![],
            facets: Default::default(),
        };
        let held = [&staged];
        let mut check = quiver_store::HeldBlobs::new(&store.blobs);
        check.staged = &held;
        store
            .meta
            .create_version_checked(&adapter, &new, &check)
            .await
            .expect("version");
        store.blobs.discard(&staged).await;
        assert!(store.blobs.exists(&staged.sha256).await.expect("exists"));
    }
    sweeper.await.expect("sweeper");
    let sha = hex::encode(sha2::Digest::finalize(sha2::Digest::chain_update(
        sha2::Sha256::default(),
        b"shared content of many versions",
    )));
    assert!(store.blobs.exists(&sha).await.expect("exists"));
    assert_eq!(
        store
            .sweep_unreferenced_blobs(Duration::ZERO)
            .await
            .expect("sweep"),
        0
    );
}
