//! Organisations' contract (docs/orgs.md), on each backend: one namespace for users and
//! organisations, roles and the last admin, memberships read with the token, visibility in the
//! listing, transfer keeping revisions and lineage, and one audit entry per change.

use quiver_store::store_or_skip;
use quiver_store::testing::Backend;
use quiver_store::{
    AuditAction, AuditContext, AuditFilter, ListAdapters, NamespaceKind, NewAdapter, NewVersion,
    OrgRole, RepoId, Scope, StoreError, TokenCheck, Viewer,
};
use rstest::rstest;

fn ctx(actor: &str) -> AuditContext {
    AuditContext {
        actor: Some(actor.into()),
        token_id: Some("tok".into()),
        request_id: Some("req".into()),
        client_addr: Some("127.0.0.1".into()),
    }
}

async fn audit_count(store: &quiver_store::Store, action: AuditAction) -> usize {
    let filter = AuditFilter {
        action: Some(action),
        ..Default::default()
    };
    store
        .meta
        .list_audit(&filter, 200, None)
        .await
        .expect("audit")
        .items
        .len()
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn one_namespace_roles_and_the_last_admin(#[case] backend: Backend) {
    let (store, _s) = store_or_skip!(backend);
    let m = &store.meta;
    m.create_token("alice", Scope::Write, "a".repeat(64).as_str())
        .await
        .expect("alice");
    m.create_token("bob", Scope::Write, "b".repeat(64).as_str())
        .await
        .expect("bob");

    // A user's name is taken; a new name becomes an organisation with its first admin.
    let taken = m
        .create_org_audited("bob", "alice", Some(&ctx("alice")))
        .await;
    assert!(matches!(taken, Err(StoreError::Conflict(_))), "{taken:?}");
    let reserved = m.create_org_audited("settings", "alice", None).await;
    assert!(
        matches!(reserved, Err(StoreError::Invalid(_))),
        "{reserved:?}"
    );
    let missing_admin = m.create_org_audited("acme", "nobody", None).await;
    assert!(matches!(missing_admin, Err(StoreError::NotFound(_))));
    m.create_org_audited("acme", "alice", Some(&ctx("alice")))
        .await
        .expect("create");
    assert_eq!(audit_count(&store, AuditAction::OrgCreate).await, 1);
    assert_eq!(
        m.namespace_kind("acme").await.expect("kind"),
        Some(NamespaceKind::Org)
    );
    assert_eq!(
        m.namespace_kind("bob").await.expect("kind"),
        Some(NamespaceKind::User)
    );
    // Tokens, invites and user creation refuse an organisation's name.
    let token = m
        .create_token("acme", Scope::Write, "c".repeat(64).as_str())
        .await;
    assert!(matches!(token, Err(StoreError::Invalid(_))), "{token:?}");
    assert!(m.ensure_user("acme").await.is_err());
    assert!(m.ensure_user("carol").await.expect("carol"));
    assert!(!m.ensure_user("carol").await.expect("carol again"));

    // Members: added, changed, unchanged (no entry), removed.
    assert!(
        m.set_member_audited("acme", "bob", OrgRole::Read, Some(&ctx("alice")))
            .await
            .expect("add")
    );
    assert!(
        !m.set_member_audited("acme", "bob", OrgRole::Read, Some(&ctx("alice")))
            .await
            .expect("same")
    );
    assert!(
        m.set_member_audited("acme", "bob", OrgRole::Write, Some(&ctx("alice")))
            .await
            .expect("change")
    );
    assert_eq!(audit_count(&store, AuditAction::MemberSet).await, 2);
    let not_user = m
        .set_member_audited("acme", "acme", OrgRole::Read, None)
        .await;
    assert!(matches!(not_user, Err(StoreError::NotFound(_))));
    let not_org = m
        .set_member_audited("bob", "alice", OrgRole::Read, None)
        .await;
    assert!(matches!(not_org, Err(StoreError::NotFound(_))));

    // The last admin can be neither demoted nor removed; once bob is admin too, alice can go.
    let demote = m
        .set_member_audited("acme", "alice", OrgRole::Write, Some(&ctx("alice")))
        .await;
    assert!(matches!(demote, Err(StoreError::Conflict(_))), "{demote:?}");
    let remove = m
        .remove_member_audited("acme", "alice", Some(&ctx("alice")))
        .await;
    assert!(matches!(remove, Err(StoreError::Conflict(_))), "{remove:?}");
    assert_eq!(audit_count(&store, AuditAction::MemberSet).await, 2);
    assert_eq!(audit_count(&store, AuditAction::MemberRemove).await, 0);
    m.set_member_audited("acme", "bob", OrgRole::Admin, None)
        .await
        .expect("promote");
    assert!(
        m.remove_member_audited("acme", "alice", Some(&ctx("alice")))
            .await
            .expect("leave")
    );
    assert!(
        !m.remove_member_audited("acme", "alice", Some(&ctx("alice")))
            .await
            .expect("again")
    );
    assert_eq!(audit_count(&store, AuditAction::MemberRemove).await, 1);
    let members = m.list_members("acme", 100).await.expect("members");
    assert_eq!(members.len(), 1);
    assert_eq!(members[0].user, "bob");
    assert_eq!(members[0].role, OrgRole::Admin);

    // The token check carries the memberships, read fresh each time.
    let TokenCheck::Valid(p) = m.check_token(&"b".repeat(64)).await.expect("check") else {
        panic!("bob's token is valid");
    };
    assert_eq!(p.role_in("acme"), Some(OrgRole::Admin));
    let TokenCheck::Valid(p) = m.check_token(&"a".repeat(64)).await.expect("check") else {
        panic!("alice's token is valid");
    };
    assert!(p.orgs.is_empty(), "{:?}", p.orgs);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn members_see_private_adapters_and_transfer_keeps_history(#[case] backend: Backend) {
    let (store, _s) = store_or_skip!(backend);
    let m = &store.meta;
    m.create_token("alice", Scope::Write, "a".repeat(64).as_str())
        .await
        .expect("alice");
    m.ensure_user("bob").await.expect("bob");
    m.create_org_audited("acme", "alice", None)
        .await
        .expect("org");
    let private = |owner: &str, name: &str| NewAdapter {
        repo: RepoId::parse(owner, name).expect("name"),
        base_model: "base".into(),
        description: String::new(),
        tags: Vec::new(),
        private: true,
    };
    let secret = m
        .create_adapter(&private("acme", "secret"))
        .await
        .expect("adapter");
    // An organisation whose name already owns adapters cannot be created.
    m.create_adapter(&private("ghost", "x"))
        .await
        .expect("ghost");
    let ghost = m.create_org_audited("ghost", "alice", None).await;
    assert!(matches!(ghost, Err(StoreError::Conflict(_))), "{ghost:?}");

    let all = ListAdapters {
        limit: 100,
        owner: Some("acme".into()),
        ..Default::default()
    };
    let member = Viewer {
        user: Some("alice".into()),
        orgs: vec!["acme".into()],
        ..Default::default()
    };
    let outsider = Viewer {
        user: Some("bob".into()),
        ..Default::default()
    };
    let seen = m.list_adapters(&all, &member).await.expect("list");
    assert_eq!(seen.items.len(), 1);
    assert!(member.can_see(&secret));
    let unseen = m.list_adapters(&all, &outsider).await.expect("list");
    assert!(unseen.items.is_empty());
    assert!(!outsider.can_see(&secret));

    // Transfer: same id, same revision, and the move appears once in the audit log.
    let v = m
        .create_version(
            &secret,
            &NewVersion {
                created_by: "alice".into(),
                files: Vec::new(),
                lora: None,
                lineage: None,
                parents: Vec::new(),
                facets: Default::default(),
            },
        )
        .await
        .expect("version");
    let from = RepoId::parse("acme", "secret").expect("name");
    let taken = m
        .create_adapter(&private("alice", "secret"))
        .await
        .expect("taken");
    let clash = m
        .transfer_adapter_audited(&from, "alice", Some(&ctx("alice")))
        .await;
    assert!(matches!(clash, Err(StoreError::Conflict(_))), "{clash:?}");
    m.delete_adapter(taken.id).await.expect("delete");
    let nowhere = m.transfer_adapter_audited(&from, "nobody", None).await;
    assert!(
        matches!(nowhere, Err(StoreError::NotFound(_))),
        "{nowhere:?}"
    );
    m.transfer_adapter_audited(&from, "alice", Some(&ctx("alice")))
        .await
        .expect("transfer");
    assert!(m.get_adapter(&from).await.expect("get").is_none());
    let moved = m
        .get_adapter(&RepoId::parse("alice", "secret").expect("name"))
        .await
        .expect("get")
        .expect("moved");
    assert_eq!(moved.id, secret.id);
    let versions = m.list_versions(moved.id, 10, None).await.expect("versions");
    assert_eq!(versions.items[0].revision, v.revision);
    assert_eq!(audit_count(&store, AuditAction::AdapterTransfer).await, 1);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn deactivation_revokes_leaves_and_blocks_new_tokens(#[case] backend: Backend) {
    let (store, _s) = store_or_skip!(backend);
    let m = &store.meta;
    m.create_token("alice", Scope::Write, "a".repeat(64).as_str())
        .await
        .expect("alice");
    m.create_token("bob", Scope::Write, "b".repeat(64).as_str())
        .await
        .expect("bob");
    m.create_token("bob", Scope::Read, "d".repeat(64).as_str())
        .await
        .expect("bob again");
    m.create_org_audited("acme", "alice", None)
        .await
        .expect("org");
    m.set_member_audited("acme", "bob", OrgRole::Admin, None)
        .await
        .expect("bob admin");
    m.create_org_audited("solo", "bob", None)
        .await
        .expect("bob's own org");

    // The last admin of an organisation cannot go: nothing changes, nothing is audited.
    let refused = m.deactivate_user_audited("bob", Some(&ctx("root"))).await;
    assert!(
        matches!(refused, Err(StoreError::Conflict(_))),
        "{refused:?}"
    );
    assert!(matches!(
        m.check_token(&"b".repeat(64)).await.expect("check"),
        TokenCheck::Valid(_)
    ));
    assert_eq!(audit_count(&store, AuditAction::UserDeactivate).await, 0);
    m.set_member_audited("solo", "alice", OrgRole::Admin, None)
        .await
        .expect("hand over");

    let done = m
        .deactivate_user_audited("bob", Some(&ctx("root")))
        .await
        .expect("deactivate")
        .expect("changed");
    assert_eq!(done.tokens_revoked, 2);
    assert_eq!(done.orgs_left, vec!["acme".to_string(), "solo".to_string()]);
    for secret in ["b", "d"] {
        assert!(matches!(
            m.check_token(&secret.repeat(64)).await.expect("check"),
            TokenCheck::Revoked
        ));
    }
    assert!(m.memberships("bob").await.expect("orgs").is_empty());
    assert_eq!(m.active_memberships("bob").await.expect("active"), None);
    assert_eq!(
        m.active_memberships("alice")
            .await
            .expect("active")
            .map(|o| o.len()),
        Some(2)
    );
    // No new token, invite or sign-in while deactivated; a second deactivation changes nothing.
    let token = m
        .create_token("bob", Scope::Read, "e".repeat(64).as_str())
        .await;
    assert!(matches!(token, Err(StoreError::Invalid(_))), "{token:?}");
    assert!(m.ensure_user("bob").await.is_err());
    assert_eq!(
        m.deactivate_user_audited("bob", None).await.expect("again"),
        None
    );
    assert_eq!(audit_count(&store, AuditAction::UserDeactivate).await, 1);
    let missing = m.deactivate_user_audited("nobody", None).await;
    assert!(matches!(missing, Err(StoreError::NotFound(_))));

    assert!(
        m.reactivate_user_audited("bob", Some(&ctx("root")))
            .await
            .expect("reactivate")
    );
    assert!(!m.reactivate_user_audited("bob", None).await.expect("again"));
    assert!(matches!(
        m.check_token(&"b".repeat(64)).await.expect("check"),
        TokenCheck::Revoked
    ));
    m.create_token("bob", Scope::Read, "e".repeat(64).as_str())
        .await
        .expect("a new token after reactivation");
    assert_eq!(audit_count(&store, AuditAction::UserReactivate).await, 1);
}
