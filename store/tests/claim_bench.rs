//! Claim time with a long queue (not a test of behaviour; run by hand, see docs/benchmarks.md):
//! `cargo test -p quiver-store --test claim_bench -- --ignored --nocapture`.
//! 10,000 queued jobs from 10 submitters (one with 9,000) or from 1,000, then 200 claims, each ended at once
//! (one worker); prints the median and p95 claim time per backend, and of one job's queue
//! position. No assertion on timings.

use std::time::Instant;

use quiver_store::meta::DEFAULT_MAX_ATTEMPTS;
use quiver_store::store_or_skip;
use quiver_store::testing::Backend;
use quiver_store::{JobEnd, JobFilter, JobKind, NewJob};
use rstest::rstest;
use serde_json::json;

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
#[ignore = "a benchmark: run by hand with --ignored --nocapture"]
async fn claim_time_with_10000_queued_jobs(
    #[case] backend: Backend,
    #[values(10, 1000)] submitters: usize,
) {
    let (store, _s) = store_or_skip!(backend);
    for i in 0..10_000 {
        // 10: one heavy submitter with 9,000 jobs and 9 with 111 each; 1000: 10 jobs each.
        let user = match submitters {
            10 if i % 10 != 0 => "heavy".to_string(),
            10 => format!("user{}", (i / 10) % 9),
            n => format!("user{}", i % n),
        };
        store
            .meta
            .enqueue_job(&NewJob {
                kind: JobKind::Merge,
                spec: json!({"n": i}),
                spec_sha256: format!("{i}"),
                created_by: user,
                idempotency_key: None,
                max_attempts: DEFAULT_MAX_ATTEMPTS,
                subject_version_id: None,
            })
            .await
            .expect("enqueue");
    }
    let mut times = Vec::new();
    for _ in 0..200 {
        let t = Instant::now();
        let (_, lease) = store
            .meta
            .claim_job("bench", 30_000, &[JobKind::Merge])
            .await
            .expect("claim")
            .expect("a job");
        times.push(t.elapsed().as_secs_f64() * 1e3);
        store
            .meta
            .end_job(&lease, &JobEnd::Succeeded)
            .await
            .expect("end");
    }
    times.sort_by(f64::total_cmp);
    println!(
        "claim_bench {backend:?}, {submitters} submitters: 10000 queued, 200 claims: median {:.3} ms, p95 {:.3} ms",
        times[100], times[190]
    );
    // The queue position of the newest job (what GET /jobs/{id} adds), 50 times.
    let newest = store
        .meta
        .list_jobs(&JobFilter {
            limit: 1,
            ..Default::default()
        })
        .await
        .expect("list")
        .items
        .remove(0)
        .id;
    let mut times = Vec::new();
    for _ in 0..50 {
        let t = Instant::now();
        let pos = store
            .meta
            .queue_positions(std::slice::from_ref(&newest))
            .await
            .expect("positions");
        times.push(t.elapsed().as_secs_f64() * 1e3);
        assert!(pos.contains_key(&newest));
    }
    times.sort_by(f64::total_cmp);
    println!(
        "claim_bench {backend:?}, {submitters} submitters: queue_position with 9800 queued: median {:.3} ms, p95 {:.3} ms",
        times[25], times[47]
    );
}
