//! Protected aliases (migration 0011, docs/protected-aliases.md), on each backend: a protected
//! name is refused to a caller who does not administer the namespace in the move's own
//! transaction, whether it creates, moves or deletes the alias; protection survives the alias's
//! deletion and goes with the adapter; protection changes are audited in their transaction.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use quiver_store::store_or_skip;
use quiver_store::testing::Backend;
use quiver_store::{
    AdapterRecord, AuditAction, AuditContext, AuditFilter, NewAdapter, NewVersion, RepoId, Store,
    StoreError, VersionRef,
};
use rstest::rstest;

async fn adapter_with_versions(store: &Store, name: &str, versions: usize) -> AdapterRecord {
    let a = store
        .meta
        .create_adapter(&NewAdapter {
            repo: RepoId::parse("acme", name).expect("name"),
            base_model: "base".into(),
            description: String::new(),
            tags: Vec::new(),
            private: false,
        })
        .await
        .expect("create");
    for _ in 0..versions {
        store
            .meta
            .create_version(
                &a,
                &NewVersion {
                    created_by: "acme".into(),
                    files: Vec::new(),
                    lora: None,
                    lineage: None,
                    parents: Vec::new(),
                    facets: Default::default(),
                },
            )
            .await
            .expect("version");
    }
    a
}

async fn target(store: &Store, a: &AdapterRecord, alias: &str) -> Option<i64> {
    store
        .meta
        .get_version(a.id, &VersionRef::Alias(alias.into()))
        .await
        .expect("get")
        .map(|v| v.number)
}

fn ctx(actor: &str) -> AuditContext {
    AuditContext {
        actor: Some(actor.into()),
        token_id: Some(format!("tok-{actor}")),
        request_id: None,
        client_addr: None,
    }
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn a_protected_name_is_refused_to_non_admins_and_survives_deletion(#[case] backend: Backend) {
    let (store, _s) = store_or_skip!(backend);
    let a = adapter_with_versions(&store, "x", 3).await;
    let other = adapter_with_versions(&store, "y", 1).await;
    store
        .meta
        .set_alias_audited(a.id, "prod", 1, false, None)
        .await
        .expect("unprotected: anyone who writes");

    // Protect: a change the first time, none the second.
    assert!(
        store
            .meta
            .set_alias_protection(&a, "prod", true, Some(&ctx("acme")))
            .await
            .expect("protect")
    );
    assert!(
        !store
            .meta
            .set_alias_protection(&a, "prod", true, Some(&ctx("acme")))
            .await
            .expect("protect again")
    );
    // A name with no alias yet can be protected too.
    assert!(
        store
            .meta
            .set_alias_protection(&a, "canary", true, None)
            .await
            .expect("protect a name")
    );
    assert_eq!(
        store
            .meta
            .protected_aliases(&[a.id, other.id])
            .await
            .expect("list"),
        vec![(a.id, "canary".to_string()), (a.id, "prod".to_string())]
    );

    // A non-admin may neither move, create nor delete them; nothing changes.
    for (alias, number) in [("prod", 2), ("canary", 2)] {
        let refused = store
            .meta
            .set_alias_audited(a.id, alias, number, false, None)
            .await;
        assert!(
            matches!(&refused, Err(StoreError::AliasProtected(n)) if n == alias),
            "{refused:?}"
        );
    }
    assert!(matches!(
        store
            .meta
            .delete_alias_audited(a.id, "prod", false, None)
            .await,
        Err(StoreError::AliasProtected(_))
    ));
    assert!(matches!(
        store.meta.set_alias(a.id, "prod", 3).await,
        Err(StoreError::AliasProtected(_))
    ));
    assert_eq!(target(&store, &a, "prod").await, Some(1));
    assert_eq!(target(&store, &a, "canary").await, None);
    // Other names and other adapters' `prod` are not protected.
    store
        .meta
        .set_alias_audited(a.id, "dev", 2, false, None)
        .await
        .expect("another name");
    store
        .meta
        .set_alias_audited(other.id, "prod", 1, false, None)
        .await
        .expect("another adapter's prod");

    // An admin moves and deletes; the protection stays with the name.
    store
        .meta
        .set_alias_audited(a.id, "prod", 3, true, None)
        .await
        .expect("admin moves");
    assert_eq!(target(&store, &a, "prod").await, Some(3));
    assert!(
        store
            .meta
            .delete_alias_audited(a.id, "prod", true, None)
            .await
            .expect("admin deletes")
            .is_some()
    );
    assert_eq!(target(&store, &a, "prod").await, None);
    assert!(matches!(
        store
            .meta
            .set_alias_audited(a.id, "prod", 1, false, None)
            .await,
        Err(StoreError::AliasProtected(_))
    ));

    // Unprotected, anyone who writes may set it again.
    assert!(
        store
            .meta
            .set_alias_protection(&a, "prod", false, Some(&ctx("acme")))
            .await
            .expect("unprotect")
    );
    assert!(
        !store
            .meta
            .set_alias_protection(&a, "prod", false, Some(&ctx("acme")))
            .await
            .expect("unprotect again")
    );
    store
        .meta
        .set_alias_audited(a.id, "prod", 2, false, None)
        .await
        .expect("unprotected again");
    assert_eq!(target(&store, &a, "prod").await, Some(2));

    // Protection goes with the adapter.
    store.meta.delete_adapter(a.id).await.expect("delete");
    assert!(
        store
            .meta
            .protected_aliases(&[a.id])
            .await
            .expect("list")
            .is_empty()
    );
    assert!(matches!(
        store
            .meta
            .set_alias_protection(&a, "prod", true, None)
            .await,
        Err(StoreError::NotFound(_))
    ));
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn protection_changes_are_audited_and_refused_moves_are_not(#[case] backend: Backend) {
    let (store, _s) = store_or_skip!(backend);
    let a = adapter_with_versions(&store, "x", 2).await;
    store
        .meta
        .set_alias_protection(&a, "prod", true, Some(&ctx("acme")))
        .await
        .expect("protect");
    store
        .meta
        .set_alias_protection(&a, "prod", true, Some(&ctx("acme")))
        .await
        .expect("no change");
    let entry = quiver_store::Audit {
        context: ctx("writer"),
        action: AuditAction::AliasSet,
        target: "acme/x@prod".into(),
        owner: Some("acme".into()),
        before: None,
        after: Some(serde_json::json!({"version": 2})),
    };
    assert!(matches!(
        store
            .meta
            .set_alias_audited(a.id, "prod", 2, false, Some(&entry))
            .await,
        Err(StoreError::AliasProtected(_))
    ));
    store
        .meta
        .set_alias_protection(&a, "prod", false, Some(&ctx("root")))
        .await
        .expect("unprotect");
    let filter = AuditFilter {
        target: Some("acme/x@prod".into()),
        ..Default::default()
    };
    let page = store
        .meta
        .list_audit(&filter, 10, None)
        .await
        .expect("list");
    let got: Vec<_> = page
        .items
        .iter()
        .map(|e| {
            (
                e.action.as_str(),
                e.actor.as_deref(),
                e.before.clone(),
                e.after.clone(),
            )
        })
        .collect();
    let state = |p: bool| Some(serde_json::json!({ "protected": p }));
    assert_eq!(
        got,
        vec![
            ("alias.protect", Some("root"), state(true), state(false)),
            ("alias.protect", Some("acme"), state(false), state(true)),
        ],
        "one entry per change, none for the idempotent repeat or the refused move"
    );
    assert!(
        page.items
            .iter()
            .all(|e| e.owner.as_deref() == Some("acme") && e.token_id.is_some())
    );
}

/// Once a protect has returned, no move by a non-admin lands, even one racing it: the check
/// and the move are one transaction, ordered against the protect by the adapter's lock.
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn a_protect_racing_moves_is_never_bypassed(#[case] backend: Backend) {
    let (store, _s) = store_or_skip!(backend);
    let a = adapter_with_versions(&store, "x", 2).await;
    store.meta.set_alias(a.id, "prod", 1).await.expect("set");
    let stop = Arc::new(AtomicBool::new(false));
    let refused = Arc::new(AtomicUsize::new(0));
    let movers: Vec<_> = (0..4)
        .map(|i| {
            let (store, stop, refused) = (store.clone(), stop.clone(), refused.clone());
            tokio::spawn(async move {
                let mut n = 0i64;
                while !stop.load(Ordering::SeqCst) {
                    n += 1;
                    match store
                        .meta
                        .set_alias_audited(a.id, "prod", 1 + (n + i) % 2, false, None)
                        .await
                    {
                        Ok(_) => {}
                        Err(StoreError::AliasProtected(_)) => {
                            refused.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(e) if e.is_unavailable() => {}
                        Err(e) => panic!("mover: {e}"),
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let a_record = store
        .meta
        .get_adapter(&RepoId::parse("acme", "x").expect("id"))
        .await
        .expect("get")
        .expect("adapter");
    store
        .meta
        .set_alias_protection(&a_record, "prod", true, None)
        .await
        .expect("protect");
    let fixed = target(&store, &a, "prod").await;
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(
            target(&store, &a, "prod").await,
            fixed,
            "a move landed after the protect returned"
        );
    }
    stop.store(true, Ordering::SeqCst);
    for m in movers {
        m.await.expect("mover");
    }
    assert_eq!(target(&store, &a, "prod").await, fixed);
    assert!(
        refused.load(Ordering::SeqCst) > 0,
        "the movers were refused"
    );
}
