//! Events and webhook subscriptions on each backend: the per-user limit, which subscriptions an
//! event reaches, an event recorded with its delivery jobs in one transaction, deliveries kept
//! apart from users' jobs and from other workers, the delivery log and its pages.

use quiver_store::store_or_skip;
use quiver_store::testing::Backend;
use quiver_store::{
    DeliveryStatus, JobEnd, JobFilter, JobKind, JobState, NewDelivery, NewEvent, NewWebhook,
    QueuedDelivery,
};
use rstest::rstest;
use serde_json::json;

fn hook(by: &str, owner: &str, adapter: Option<&str>) -> NewWebhook {
    NewWebhook {
        created_by: by.into(),
        owner: owner.into(),
        adapter: adapter.map(str::to_string),
        url: "http://127.0.0.1:9/".into(),
        secret: "s".repeat(16),
        events: vec!["alias.moved".into()],
    }
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn events_queue_deliveries_that_only_webhook_workers_see(#[case] backend: Backend) {
    let (store, _scratch) = store_or_skip!(backend);
    let meta = &store.meta;
    let a = meta
        .create_webhook(&hook("alice", "alice", Some("alice/a")), 2)
        .await
        .expect("create");
    let a = a.expect("under the limit");
    assert_eq!(a.events, ["alias.moved"]);
    let o = meta
        .create_webhook(&hook("alice", "alice", None), 2)
        .await
        .expect("create")
        .expect("2nd");
    assert!(
        meta.create_webhook(&hook("alice", "alice", None), 2)
            .await
            .expect("create")
            .is_none(),
        "limit"
    );
    let other = meta
        .create_webhook(&hook("bob", "alice", Some("alice/b")), 2)
        .await
        .expect("create")
        .expect("bob");
    // alice/a reaches the adapter's and the owner's subscriptions, not alice/b's.
    let subs: Vec<String> = meta
        .subscriptions_for("alice", "alice/a")
        .await
        .expect("subs")
        .into_iter()
        .map(|h| h.id)
        .collect();
    assert_eq!(subs.len(), 2);
    assert!(subs.contains(&a.id) && subs.contains(&o.id) && !subs.contains(&other.id));
    meta.set_webhook_active(&o.id, false)
        .await
        .expect("deactivate");
    let subs = meta
        .subscriptions_for("alice", "alice/a")
        .await
        .expect("subs");
    assert_eq!(subs.len(), 1, "inactive ones are left out");

    let e1 = meta
        .record_event(
            &NewEvent {
                kind: "alias.moved".into(),
                adapter: "alice/a".into(),
                owner: "alice".into(),
                payload: json!({"alias": "prod"}),
            },
            &[QueuedDelivery {
                webhook_id: a.id.clone(),
                created_by: "alice".into(),
            }],
            15,
        )
        .await
        .expect("event");
    let e2 = meta
        .record_event(
            &NewEvent {
                kind: "alias.moved".into(),
                adapter: "alice/a".into(),
                owner: "alice".into(),
                payload: json!({}),
            },
            &[],
            15,
        )
        .await
        .expect("event");
    assert!(e2.id > e1.id, "one increasing sequence");
    assert_eq!(
        meta.get_event(e1.id)
            .await
            .expect("get")
            .expect("stored")
            .payload,
        json!({"alias": "prod"})
    );

    // Not a user's job, and not for merge/compress/embed workers.
    let listed = meta
        .list_jobs(&JobFilter {
            created_by: Some("alice".into()),
            limit: 10,
            ..JobFilter::default()
        })
        .await
        .expect("list");
    assert!(listed.items.is_empty(), "{:?}", listed.items);
    let others = meta
        .claim_job(
            "w",
            30_000,
            &[JobKind::Merge, JobKind::Compress, JobKind::Embed],
        )
        .await
        .expect("claim");
    assert!(others.is_none());
    let (job, lease) = meta
        .claim_job("w", 30_000, &[JobKind::Webhook])
        .await
        .expect("claim")
        .expect("a delivery");
    assert_eq!(job.spec, json!({"webhook_id": a.id, "event_id": e1.id}));
    assert_eq!(job.max_attempts, 15);

    // A failed attempt: logged, and the job queued again after its backoff.
    let attempt = |status, code: Option<i64>| NewDelivery {
        delivery_id: job.id.clone(),
        webhook_id: a.id.clone(),
        event_id: e1.id,
        attempt: lease.attempt,
        status,
        response_code: code,
        latency_ms: 7,
        response_excerpt: Some("nope".into()),
        error: code.map(|c| format!("HTTP {c}")),
    };
    let state = meta
        .finish_delivery(
            &lease,
            &JobEnd::Retry {
                error: "HTTP 500".into(),
                backoff_ms: 0,
            },
            &attempt(DeliveryStatus::Failed, Some(500)),
        )
        .await
        .expect("finish");
    assert_eq!(state, Some(JobState::Queued));
    let (_, lease) = meta
        .claim_job("w", 30_000, &[JobKind::Webhook])
        .await
        .expect("claim")
        .expect("again");
    assert_eq!(lease.attempt, 2);
    let state = meta
        .finish_delivery(
            &lease,
            &JobEnd::Succeeded,
            &NewDelivery {
                attempt: 2,
                ..attempt(DeliveryStatus::Delivered, Some(200))
            },
        )
        .await
        .expect("finish");
    assert_eq!(state, Some(JobState::Succeeded));
    let page = meta.list_deliveries(&a.id, 1, None).await.expect("log");
    assert_eq!(page.items.len(), 1);
    assert_eq!(page.items[0].attempt, 2, "newest first");
    assert_eq!(page.items[0].status, DeliveryStatus::Delivered);
    let before: i64 = page
        .next_cursor
        .as_deref()
        .expect("more")
        .parse()
        .expect("cursor");
    let page = meta
        .list_deliveries(&a.id, 10, Some(before))
        .await
        .expect("log");
    assert_eq!(page.items.len(), 1);
    assert_eq!(
        (page.items[0].attempt, page.items[0].response_code),
        (1, Some(500))
    );
    assert!(page.next_cursor.is_none());

    // Deleting a subscription takes its log with it.
    assert!(meta.delete_webhook(&a.id).await.expect("delete"));
    assert!(!meta.delete_webhook(&a.id).await.expect("delete again"));
    assert!(
        meta.list_deliveries(&a.id, 10, None)
            .await
            .expect("log")
            .items
            .is_empty()
    );
    assert_eq!(meta.list_webhooks("alice").await.expect("list").len(), 1);
}

/// The retention sweep's store half: old attempts, finished deliveries and events go, in
/// batches of at most `limit` rows each; an event a queued or running delivery still needs
/// stays. The clock is the caller's (`before_ms`).
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn old_webhook_history_is_pruned_in_batches_but_pending_events_stay(
    #[case] backend: Backend,
) {
    let (store, _scratch) = store_or_skip!(backend);
    let meta = &store.meta;
    let a = meta
        .create_webhook(&hook("alice", "alice", Some("alice/a")), 5)
        .await
        .expect("create")
        .expect("under the limit");
    let event = |queued: bool| {
        let a = a.id.clone();
        async move {
            let deliveries = if queued {
                vec![QueuedDelivery {
                    webhook_id: a,
                    created_by: "alice".into(),
                }]
            } else {
                vec![]
            };
            meta.record_event(
                &NewEvent {
                    kind: "alias.moved".into(),
                    adapter: "alice/a".into(),
                    owner: "alice".into(),
                    payload: json!({}),
                },
                &deliveries,
                15,
            )
            .await
            .expect("event")
        }
    };
    let e1 = event(true).await;
    let e2 = event(false).await;
    let e3 = event(true).await;
    let attempt = |job: &str, event_id: i64, status| NewDelivery {
        delivery_id: job.into(),
        webhook_id: a.id.clone(),
        event_id,
        attempt: 1,
        status,
        response_code: Some(200),
        latency_ms: 1,
        response_excerpt: None,
        error: None,
    };
    // e1's delivery is done; e3's stays queued.
    let (job, lease) = meta
        .claim_job("w", 30_000, &[JobKind::Webhook])
        .await
        .expect("claim")
        .expect("e1's delivery");
    assert_eq!(job.spec["event_id"], e1.id);
    meta.finish_delivery(
        &lease,
        &JobEnd::Succeeded,
        &attempt(&job.id, e1.id, DeliveryStatus::Delivered),
    )
    .await
    .expect("finish");

    let counts =
        |p: quiver_store::meta::webhooks::PrunedWebhookHistory| (p.deliveries, p.jobs, p.events);
    let now = quiver_store::time::now_ms();
    // Nothing is older than a day ago.
    let pruned = meta
        .prune_webhook_history(now - 86_400_000, 10)
        .await
        .expect("prune");
    assert_eq!(counts(pruned), (0, 0, 0));
    // As of a day later, everything is old: one row of each per batch of 1.
    let later = now + 86_400_000;
    let pruned = meta.prune_webhook_history(later, 1).await.expect("prune");
    assert_eq!(counts(pruned), (1, 1, 1));
    assert!(meta.get_event(e1.id).await.expect("get").is_none());
    let pruned = meta.prune_webhook_history(later, 10).await.expect("prune");
    assert_eq!(
        counts(pruned),
        (0, 0, 1),
        "e2 goes; e3 has a queued delivery"
    );
    assert!(meta.get_event(e2.id).await.expect("get").is_none());
    let pruned = meta.prune_webhook_history(later, 10).await.expect("prune");
    assert_eq!(counts(pruned), (0, 0, 0));
    assert!(meta.get_event(e3.id).await.expect("get").is_some());
    // Running, e3 still stays; once its delivery has failed for good, it goes with it.
    let (job, lease) = meta
        .claim_job("w", 30_000, &[JobKind::Webhook])
        .await
        .expect("claim")
        .expect("e3's delivery");
    assert_eq!(job.spec["event_id"], e3.id);
    let pruned = meta.prune_webhook_history(later, 10).await.expect("prune");
    assert_eq!(counts(pruned), (0, 0, 0));
    meta.finish_delivery(
        &lease,
        &JobEnd::Failed("HTTP 500".into()),
        &attempt(&job.id, e3.id, DeliveryStatus::Failed),
    )
    .await
    .expect("finish");
    let pruned = meta.prune_webhook_history(later, 10).await.expect("prune");
    assert_eq!(counts(pruned), (1, 1, 1));
    assert!(meta.get_event(e3.id).await.expect("get").is_none());
    assert!(
        meta.get_job(&job.id).await.expect("get").is_none(),
        "the finished delivery job is gone"
    );
    assert!(
        meta.list_deliveries(&a.id, 10, None)
            .await
            .expect("log")
            .items
            .is_empty()
    );
}
