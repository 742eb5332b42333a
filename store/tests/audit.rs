//! The audit log's contract (docs/audit.md), on each backend: an entry is appended in the
//! transaction of the change it records, so a change that fails at its commit writes none.

use quiver_store::store_or_skip;
use quiver_store::testing::Backend;
use quiver_store::{
    AuditAction, AuditContext, AuditFilter, CommitCheck, NewAdapter, NewVersion, NoCheck, RepoId,
    StoreError,
};
use rstest::rstest;

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
    let a = store
        .meta
        .create_adapter(&NewAdapter {
            repo: RepoId::parse("alice", "bench").expect("name"),
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
            .set_alias_audited(a.id, "prod", number, None)
            .await
            .expect("plain");
        plain.push(t.elapsed());
        let t = std::time::Instant::now();
        store
            .meta
            .set_alias_audited(a.id, "prod", 3 - number, Some(&entry))
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
