//! The audit log's contract (docs/audit.md), on each backend: an entry is appended in the
//! transaction of the change it records, so a change that fails at its commit writes none.

use quiver_store::meta::DEFAULT_MAX_ATTEMPTS;
use quiver_store::meta::audit::AUDIT_PRUNE_BATCH;
use quiver_store::store_or_skip;
use quiver_store::testing::Backend;
use quiver_store::{
    AuditAction, AuditContext, AuditFilter, AuditRecord, CommitCheck, FileRecord, JobKind,
    NewAdapter, NewAdapterFields, NewJob, NewToken, NewVersion, NewWebhook, NoCheck, OutputTarget,
    RepoId, Scope, Store, StoreError,
};
use rstest::rstest;
use sqlx::Connection;

/// A commit check that refuses: the version's transaction rolls back.
struct Refuse;

#[async_trait::async_trait]
impl CommitCheck for Refuse {
    async fn check(&self) -> Result<(), StoreError> {
        Err(StoreError::BlobMissing("00ff".into()))
    }
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn entries_commit_and_roll_back_with_their_change(#[case] backend: Backend) {
    let (store, _s) = store_or_skip!(backend);
    let ctx = AuditContext {
        actor: Some("alice".into()),
        token_id: Some("tok-1".into()),
        request_id: Some("req-1".into()),
        client_addr: Some("127.0.0.1".into()),
    };
    let a = store
        .meta
        .create_adapter(&NewAdapter {
            repo: RepoId::parse("alice", "one").expect("name"),
            base_model: "base".into(),
            description: String::new(),
            tags: Vec::new(),
            private: false,
        })
        .await
        .expect("create");
    let new = NewVersion {
        created_by: "alice".into(),
        files: Vec::new(),
        lora: None,
        lineage: None,
        parents: Vec::new(),
        facets: Default::default(),
    };
    let refused = store
        .meta
        .create_version_audited(&a, &new, &Refuse, Some(&ctx))
        .await;
    assert!(matches!(refused, Err(StoreError::BlobMissing(_))));
    let all = AuditFilter::default();
    let page = store.meta.list_audit(&all, 10, None).await.expect("list");
    assert!(page.items.is_empty(), "a refused commit writes no entry");

    let v = store
        .meta
        .create_version_audited(&a, &new, &NoCheck, Some(&ctx))
        .await
        .expect("publish");
    let page = store.meta.list_audit(&all, 10, None).await.expect("list");
    assert_eq!(page.items.len(), 1);
    let e = &page.items[0];
    assert_eq!(e.action, AuditAction::VersionPublish.as_str());
    assert_eq!(e.target, "alice/one");
    assert_eq!(e.owner.as_deref(), Some("alice"));
    assert_eq!(e.actor.as_deref(), Some("alice"));
    assert_eq!(e.token_id.as_deref(), Some("tok-1"));
    assert_eq!(e.request_id.as_deref(), Some("req-1"));
    assert_eq!(e.client_addr.as_deref(), Some("127.0.0.1"));
    assert_eq!(
        e.after.as_ref().and_then(|a| a["version"].as_i64()),
        Some(v.number)
    );

    // Retention deletes only what is older than the cut.
    assert_eq!(store.meta.prune_audit(e.at).await.expect("prune"), 0);
    assert_eq!(store.meta.prune_audit(e.at + 1).await.expect("prune"), 1);
}

/// Alias-move latency with and without its audit entry, interleaved in one run (debug or release
/// build as invoked); prints p50s, asserts nothing about time. Run:
/// `cargo test -p quiver-store --test audit -- --ignored --nocapture alias_latency`.
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
#[ignore]
async fn alias_latency_with_and_without_audit(#[case] backend: Backend) {
    let (store, _s) = store_or_skip!(backend);
    let a = adapter_with_two_versions(&store, "bench").await;
    let ctx = AuditContext {
        actor: Some("alice".into()),
        token_id: Some("tok-1".into()),
        request_id: Some("0123456789abcdef0123456789abcdef".into()),
        client_addr: Some("127.0.0.1".into()),
    };
    let (mut plain, mut audited) = (Vec::new(), Vec::new());
    for i in 0..400_i64 {
        let number = 1 + i % 2;
        let entry = quiver_store::Audit {
            context: ctx.clone(),
            action: AuditAction::AliasSet,
            target: "alice/bench@prod".into(),
            owner: Some("alice".into()),
            before: Some(serde_json::json!({ "version": 3 - number })),
            after: Some(serde_json::json!({ "version": number })),
        };
        let t = std::time::Instant::now();
        store
            .meta
            .set_alias_audited(a.id, "prod", number, true, None)
            .await
            .expect("plain");
        plain.push(t.elapsed());
        let t = std::time::Instant::now();
        store
            .meta
            .set_alias_audited(a.id, "prod", 3 - number, true, Some(&entry))
            .await
            .expect("audited");
        audited.push(t.elapsed());
    }
    plain.sort();
    audited.sort();
    let (p, q) = (plain[plain.len() / 2], audited[audited.len() / 2]);
    println!(
        "{backend:?}: alias set p50 without audit {p:?}, with audit {q:?} ({:+.1} %)",
        (q.as_secs_f64() / p.as_secs_f64() - 1.0) * 100.0
    );
}

async fn all_entries(store: &Store, filter: &AuditFilter) -> Vec<AuditRecord> {
    store
        .meta
        .list_audit(filter, 200, None)
        .await
        .expect("list")
        .items
}

fn request() -> AuditContext {
    AuditContext {
        actor: None,
        token_id: None,
        request_id: Some("req-9".into()),
        client_addr: Some("10.0.0.9".into()),
    }
}

/// Retention deletes in bounded batches (each its own statement), oldest first, and never an
/// entry within the window.
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn retention_prunes_in_bounded_batches(#[case] backend: Backend) {
    let (store, scratch) = store_or_skip!(backend);
    // 2.4 batches of old entries (at = 1 … n ms), written straight into the table.
    let old = i64::from(AUDIT_PRUNE_BATCH) * 12 / 5 + 1;
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(&scratch.settings.database_url)
        .await
        .expect("connect");
    sqlx::query(
        "WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < $1) \
         INSERT INTO audit_log (at, action, target, owner) \
         SELECT n, 'alias.set', 'bulk/x@prod', 'bulk' FROM g",
    )
    .bind(old)
    .execute(&mut conn)
    .await
    .expect("bulk insert");
    drop(conn);
    for i in 0..3 {
        let entry = quiver_store::Audit {
            context: request(),
            action: AuditAction::AliasSet,
            target: format!("alice/x@a{i}"),
            owner: Some("alice".into()),
            before: None,
            after: None,
        };
        store.meta.append_audit(&entry).await.expect("append");
    }
    let cut = old + 1;
    // One batch deletes exactly its bound.
    assert_eq!(
        store
            .meta
            .prune_audit_batch(cut, AUDIT_PRUNE_BATCH)
            .await
            .expect("batch"),
        u64::from(AUDIT_PRUNE_BATCH)
    );
    let rest = old - i64::from(AUDIT_PRUNE_BATCH);
    assert_eq!(
        store.meta.prune_audit(cut).await.expect("prune") as i64,
        rest,
        "the rest of the old ones, over as many batches as it takes"
    );
    let left = all_entries(&store, &AuditFilter::default()).await;
    assert_eq!(left.len(), 3, "the three recent entries stay");
    assert!(left.iter().all(|e| e.owner.as_deref() == Some("alice")));
    assert_eq!(store.meta.prune_audit(cut).await.expect("again"), 0);
    assert_eq!(
        store.meta.prune_audit_batch(cut, 2).await.expect("window"),
        0,
        "a window of recent entries deletes nothing"
    );
}

/// Invite redemption, webhook changes and a job's output each write their entries in the
/// change's transaction; a no-op writes none. The `owner` filter scopes by namespace.
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn invites_webhooks_and_job_outputs_are_audited(#[case] backend: Backend) {
    let (store, _s) = store_or_skip!(backend);
    let by_action = |a: AuditAction| AuditFilter {
        action: Some(a),
        ..AuditFilter::default()
    };

    // Invite redemption: the redeemer is the actor; a second use is refused and writes nothing.
    let invite = store
        .meta
        .insert_invite("carol", Scope::Write, "root", i64::MAX / 2, "inv-hash")
        .await
        .expect("invite");
    let token = NewToken {
        user: String::new(),
        name: Some("first".into()),
        prefix: None,
        scope: Scope::Read,
        restrict: None,
        expires_at: None,
        created_by: None,
        secret_sha256: "tok-hash".into(),
        max_active: 100,
    };
    let made = store
        .meta
        .redeem_invite_audited("inv-hash", &token, Some(&request()))
        .await
        .expect("redeem")
        .expect("valid invite");
    let again = NewToken {
        secret_sha256: "tok-hash-2".into(),
        ..token.clone()
    };
    assert!(
        store
            .meta
            .redeem_invite_audited("inv-hash", &again, Some(&request()))
            .await
            .expect("redeem again")
            .is_none()
    );
    let redeemed = all_entries(&store, &by_action(AuditAction::InviteRedeem)).await;
    assert_eq!(redeemed.len(), 1, "{redeemed:?}");
    let e = &redeemed[0];
    assert_eq!(
        (e.actor.as_deref(), e.target.as_str(), e.owner.as_deref()),
        (Some("carol"), "carol", Some("carol"))
    );
    assert_eq!(e.request_id.as_deref(), Some("req-9"));
    assert_eq!(
        e.after.as_ref().map(|a| a["invite"].clone()),
        Some(invite.id.clone().into())
    );
    assert_eq!(
        e.after.as_ref().map(|a| a["token"].clone()),
        Some(made.id.clone().into())
    );
    assert_eq!(
        e.after.as_ref().map(|a| a["scope"].clone()),
        Some("write".into())
    );
    let created = all_entries(&store, &by_action(AuditAction::TokenCreate)).await;
    assert_eq!(created.len(), 1);
    assert_eq!(created[0].target, made.id);

    // Webhooks: create (one over the limit writes none), deactivate once, delete once.
    let hook = NewWebhook {
        created_by: "dave".into(),
        owner: "alice".into(),
        adapter: None,
        url: "https://user:pw@hooks.example.com:8443/T00/B00/s3cr3t?k=v".into(),
        secret: "whsec-must-not-appear".into(),
        events: vec![],
    };
    let ctx = AuditContext {
        actor: Some("dave".into()),
        token_id: Some("tok-d".into()),
        ..request()
    };
    let made_hook = store
        .meta
        .create_webhook_audited(&hook, 1, Some(&ctx))
        .await
        .expect("create")
        .expect("under the limit");
    assert!(
        store
            .meta
            .create_webhook_audited(&hook, 1, Some(&ctx))
            .await
            .expect("create")
            .is_none()
    );
    for expect in [true, false] {
        assert_eq!(
            store
                .meta
                .set_webhook_active_audited(&made_hook.id, false, Some("gone"), Some(&ctx))
                .await
                .expect("deactivate"),
            expect
        );
    }
    for expect in [true, false] {
        assert_eq!(
            store
                .meta
                .delete_webhook_audited(&made_hook.id, Some(&ctx))
                .await
                .expect("delete"),
            expect
        );
    }
    let hooks = all_entries(
        &store,
        &AuditFilter {
            target: Some(made_hook.id.clone()),
            ..AuditFilter::default()
        },
    )
    .await;
    let actions: Vec<&str> = hooks.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(
        actions,
        ["webhook.delete", "webhook.update", "webhook.create"]
    );
    assert!(hooks.iter().all(|e| e.owner.as_deref() == Some("dave")));
    let json = serde_json::to_string(&hooks).expect("json");
    for secret in ["whsec-must-not-appear", "s3cr3t", "pw@", "k=v"] {
        assert!(!json.contains(secret), "{secret} in {json}");
    }
    assert_eq!(
        hooks[2].after.as_ref().map(|a| a["url"].clone()),
        Some("https://hooks.example.com:8443".into())
    );
    assert_eq!(
        hooks[1].before.as_ref().map(|a| a["active"].clone()),
        Some(true.into())
    );
    assert_eq!(
        hooks[1]
            .after
            .as_ref()
            .map(|a| (a["active"].clone(), a["reason"].clone())),
        Some((false.into(), "gone".into()))
    );

    // A job's output: adapter.create and version.publish by the submitter, in the publish.
    let (job, _) = store
        .meta
        .enqueue_job(&NewJob {
            kind: JobKind::Merge,
            spec: serde_json::json!({}),
            spec_sha256: "s".into(),
            created_by: "erin".into(),
            idempotency_key: None,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            subject_version_id: None,
        })
        .await
        .expect("enqueue");
    let (_, lease) = store
        .meta
        .claim_job("w", 60_000, JobKind::ALL)
        .await
        .expect("claim")
        .expect("a job");
    let output = OutputTarget {
        repo: RepoId::parse("erin", "merged").expect("name"),
        create: Some(NewAdapterFields {
            base_model: "base".into(),
            description: "m".into(),
            tags: vec![],
            private: true,
        }),
    };
    let new = NewVersion {
        created_by: "erin".into(),
        files: vec![FileRecord {
            path: "adapter_model.safetensors".into(),
            size: 3,
            sha256: "ab".repeat(32),
        }],
        lora: None,
        lineage: None,
        parents: vec![],
        facets: Default::default(),
    };
    store
        .meta
        .publish_job_result(&lease, &output, &new, &serde_json::json!({}))
        .await
        .expect("publish");
    // A second publish under the spent lease changes nothing and writes nothing.
    assert!(matches!(
        store
            .meta
            .publish_job_result(&lease, &output, &new, &serde_json::json!({}))
            .await,
        Err(StoreError::LeaseLost)
    ));
    let erin = all_entries(
        &store,
        &AuditFilter {
            owner: Some("erin".into()),
            ..AuditFilter::default()
        },
    )
    .await;
    let actions: Vec<&str> = erin.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, ["version.publish", "adapter.create"], "{erin:?}");
    for e in &erin {
        assert_eq!(e.actor.as_deref(), Some("erin"));
        assert_eq!(e.target, "erin/merged");
        assert_eq!(
            e.after.as_ref().map(|a| a["job"].clone()),
            Some(job.id.clone().into())
        );
    }
    assert_eq!(
        erin[0].after.as_ref().map(|a| a["version"].clone()),
        Some(1.into())
    );
    // The owner filter leaves out everyone else's entries.
    assert!(
        all_entries(
            &store,
            &AuditFilter {
                owner: Some("nobody".into()),
                ..AuditFilter::default()
            }
        )
        .await
        .is_empty()
    );
}

/// An alias entry's `before` is what the alias pointed at inside the move's own transaction,
/// whatever the caller guessed.
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn alias_before_is_read_in_the_transaction(#[case] backend: Backend) {
    let (store, _s) = store_or_skip!(backend);
    let a = adapter_with_two_versions(&store, "moves").await;
    let entry = |action, after: Option<i64>| quiver_store::Audit {
        context: AuditContext::default(),
        action,
        target: "alice/moves@prod".into(),
        owner: Some("alice".into()),
        before: Some(serde_json::json!({ "version": 99 })),
        after: after.map(|n| serde_json::json!({ "version": n })),
    };
    let first = store
        .meta
        .set_alias_audited(
            a.id,
            "prod",
            1,
            true,
            Some(&entry(AuditAction::AliasSet, Some(1))),
        )
        .await
        .expect("set");
    assert_eq!(first.from, None);
    assert_eq!(first.to.number, 1);
    let second = store
        .meta
        .set_alias_audited(
            a.id,
            "prod",
            2,
            true,
            Some(&entry(AuditAction::AliasSet, Some(2))),
        )
        .await
        .expect("move");
    assert_eq!(second.from.map(|t| t.number), Some(1));
    let removed = store
        .meta
        .delete_alias_audited(
            a.id,
            "prod",
            true,
            Some(&entry(AuditAction::AliasDelete, None)),
        )
        .await
        .expect("delete");
    assert_eq!(removed.map(|t| t.number), Some(2));
    let page = store
        .meta
        .list_audit(&AuditFilter::default(), 10, None)
        .await
        .expect("list");
    let befores: Vec<_> = page.items.iter().map(|e| e.before.clone()).collect();
    assert_eq!(
        befores,
        [
            Some(serde_json::json!({"version": 2})),
            Some(serde_json::json!({"version": 1})),
            None
        ],
        "newest first"
    );
}

/// `alice/{name}` with two (empty) versions.
async fn adapter_with_two_versions(
    store: &quiver_store::Store,
    name: &str,
) -> quiver_store::AdapterRecord {
    let a = store
        .meta
        .create_adapter(&NewAdapter {
            repo: RepoId::parse("alice", name).expect("name"),
            base_model: "base".into(),
            description: String::new(),
            tags: Vec::new(),
            private: false,
        })
        .await
        .expect("create");
    let new = NewVersion {
        created_by: "alice".into(),
        files: Vec::new(),
        lora: None,
        lineage: None,
        parents: Vec::new(),
        facets: Default::default(),
    };
    for _ in 0..2 {
        store.meta.create_version(&a, &new).await.expect("version");
    }
    a
}
