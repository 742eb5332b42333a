//! The store's contract, run on each backend: SQLite + local files and Postgres + S3.

use bytes::Bytes;
use futures::TryStreamExt;
use quiver_store::store_or_skip;
use quiver_store::testing::Backend;
use quiver_store::{
    AdapterPatch, AdapterSort, FileRecord, ListAdapters, NewAdapter, NewVersion, RepoId, Scope,
    StoreError, VersionRef, Viewer,
};
use rstest::rstest;
use sha2::Digest;

fn new_adapter(owner: &str, name: &str, private: bool) -> NewAdapter {
    NewAdapter {
        repo: RepoId::parse(owner, name).expect("name"),
        base_model: "base".into(),
        description: format!("{name} description"),
        tags: vec!["t1".into(), "t2".into()],
        private,
    }
}

fn version(files: &[(&str, &str)]) -> NewVersion {
    NewVersion {
        created_by: "alice".into(),
        files: files
            .iter()
            .map(|(p, h)| FileRecord {
                path: p.to_string(),
                size: 3,
                sha256: h.to_string(),
            })
            .collect(),
        lora: Some(serde_json::json!({"r": 4})),
        lineage: None,
        parents: Vec::new(),
        facets: Default::default(),
    }
}

fn repo(owner: &str, name: &str) -> RepoId {
    RepoId::parse(owner, name).expect("id")
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn adapters_crud_and_uniqueness(#[case] backend: Backend) {
    let (store, _s) = store_or_skip!(backend);
    let a = store
        .meta
        .create_adapter(&new_adapter("Alice", "One", false))
        .await
        .expect("create");
    assert_eq!((a.owner.as_str(), a.name.as_str()), ("alice", "one"));
    assert_eq!(a.tags, vec!["t1", "t2"]);
    let dup = store
        .meta
        .create_adapter(&new_adapter("alice", "ONE", true))
        .await;
    assert!(matches!(dup, Err(StoreError::Conflict(_))), "{dup:?}");
    let got = store
        .meta
        .get_adapter(&repo("alice", "one"))
        .await
        .expect("get")
        .expect("found");
    assert_eq!(got.id, a.id);
    assert!(!got.private);
    let patch = AdapterPatch {
        description: Some("new".into()),
        tags: Some(vec!["x".into()]),
        private: Some(true),
        base_model: Some("org/base-2".into()),
    };
    store
        .meta
        .update_adapter(a.id, &patch)
        .await
        .expect("update");
    let got = store
        .meta
        .get_adapter(&repo("alice", "one"))
        .await
        .expect("get")
        .expect("found");
    assert_eq!(
        (
            got.description.as_str(),
            got.tags.clone(),
            got.private,
            got.base_model.as_str()
        ),
        ("new", vec!["x".to_string()], true, "org/base-2")
    );
    let missing = store
        .meta
        .update_adapter(a.id + 1000, &AdapterPatch::default())
        .await;
    assert!(matches!(missing, Err(StoreError::NotFound(_))));

    store
        .meta
        .create_version(&got, &version(&[("f", "aa")]))
        .await
        .expect("version");
    store
        .meta
        .set_alias(got.id, "prod", 1)
        .await
        .expect("alias");
    store.meta.delete_adapter(got.id).await.expect("delete");
    assert!(
        store
            .meta
            .get_adapter(&repo("alice", "one"))
            .await
            .expect("get")
            .is_none()
    );
    assert_eq!(
        store.meta.row_counts().await.expect("counts"),
        (0, 0, 0),
        "versions and files cascade"
    );
    assert!(
        store
            .meta
            .aliases(&[got.id])
            .await
            .expect("aliases")
            .is_empty()
    );
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn listing_respects_visibility_filters_and_cursors(#[case] backend: Backend) {
    let (store, _s) = store_or_skip!(backend);
    for i in 0..5 {
        store
            .meta
            .create_adapter(&new_adapter("alice", &format!("pub-{i}"), false))
            .await
            .expect("create");
    }
    store
        .meta
        .create_adapter(&new_adapter("alice", "hidden", true))
        .await
        .expect("create");
    store
        .meta
        .create_adapter(&new_adapter("bob", "bobs", false))
        .await
        .expect("create");
    let list = |viewer: Viewer, q: ListAdapters| {
        let store = store.clone();
        async move { store.meta.list_adapters(&q, &viewer).await.expect("list") }
    };
    let all = ListAdapters {
        limit: 100,
        ..Default::default()
    };
    let anon = list(Viewer::default(), all.clone()).await;
    assert_eq!(anon.items.len(), 6);
    assert!(anon.items.iter().all(|a| a.name != "hidden"));
    let bob = list(
        Viewer {
            user: Some("bob".into()),
            admin: false,
            ..Default::default()
        },
        all.clone(),
    )
    .await;
    assert_eq!(bob.items.len(), 6);
    let alice = list(
        Viewer {
            user: Some("alice".into()),
            admin: false,
            ..Default::default()
        },
        all.clone(),
    )
    .await;
    assert_eq!(alice.items.len(), 7);
    let admin = list(
        Viewer {
            user: None,
            admin: true,
            ..Default::default()
        },
        all.clone(),
    )
    .await;
    assert_eq!(admin.items.len(), 7);
    let owner = list(
        Viewer::default(),
        ListAdapters {
            owner: Some("BOB".into()),
            ..all.clone()
        },
    )
    .await;
    assert_eq!(owner.items.len(), 1);
    let q = list(
        Viewer::default(),
        ListAdapters {
            q: Some("PUB-3".into()),
            ..all.clone()
        },
    )
    .await;
    assert_eq!(q.items.len(), 1);

    for sort in [
        AdapterSort::Name,
        AdapterSort::Updated,
        AdapterSort::Created,
        AdapterSort::Downloads,
    ] {
        let mut names = Vec::new();
        let mut cursor = None;
        loop {
            let page = list(
                Viewer::default(),
                ListAdapters {
                    sort,
                    limit: 2,
                    cursor,
                    ..Default::default()
                },
            )
            .await;
            names.extend(page.items.iter().map(|a| a.repo_id()));
            cursor = page.next_cursor;
            if cursor.is_none() {
                break;
            }
        }
        let mut unique = names.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(
            (names.len(), unique.len()),
            (6, 6),
            "{sort:?}: every item exactly once: {names:?}"
        );
    }
    let bad = ListAdapters {
        cursor: Some("00".into()),
        limit: 5,
        ..Default::default()
    };
    assert!(matches!(
        store.meta.list_adapters(&bad, &Viewer::default()).await,
        Err(StoreError::Invalid(_))
    ));
}

/// A page read as ids, then its adapters by id (what the API's kept adapters are filled from),
/// is the page the one-query listing shows, cursors included.
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn listing_by_ids_matches_the_full_listing(#[case] backend: Backend) {
    let (store, _s) = store_or_skip!(backend);
    let mut ids = Vec::new();
    for i in 0..7 {
        let a = store
            .meta
            .create_adapter(&new_adapter("alice", &format!("by-id-{i}"), i == 3))
            .await
            .expect("create");
        if i % 2 == 0 {
            store
                .meta
                .create_version(&a, &version(&[("x", &format!("{i:064}"))]))
                .await
                .expect("version");
        }
        ids.push(a.id);
    }
    let alice = Viewer {
        user: Some("alice".into()),
        ..Default::default()
    };
    let show = |items: &[quiver_store::ListedAdapter]| -> Vec<String> {
        items.iter().map(|l| format!("{l:?}")).collect()
    };
    for viewer in [Viewer::default(), alice] {
        for (sort, q) in [
            (AdapterSort::Name, None),
            (AdapterSort::Updated, None),
            (AdapterSort::Created, Some("BY-ID")),
            (AdapterSort::Downloads, None),
        ] {
            let mut cursor = None;
            loop {
                let query = ListAdapters {
                    sort,
                    q: q.map(String::from),
                    limit: 3,
                    cursor: cursor.clone(),
                    ..Default::default()
                };
                let full = store
                    .meta
                    .list_adapters_full(&query, &viewer)
                    .await
                    .expect("full");
                let page = store
                    .meta
                    .list_page_ids(&query, &viewer)
                    .await
                    .expect("ids");
                let mut listed = store.meta.listed_adapters(&page.ids).await.expect("listed");
                listed.sort_by_key(|l| page.ids.iter().position(|id| *id == l.adapter.id));
                assert_eq!(show(&listed), show(&full.items), "{sort:?} {cursor:?}");
                assert_eq!(page.next_cursor, full.next_cursor);
                assert_eq!(
                    page.generation,
                    store.meta.listing_generation().await.expect("generation")
                );
                cursor = page.next_cursor;
                if cursor.is_none() {
                    break;
                }
            }
        }
    }
    // A write moves the generation read with the ids; a deleted adapter is left out.
    let all = ListAdapters {
        limit: 50,
        ..Default::default()
    };
    let before = store
        .meta
        .list_page_ids(&all, &Viewer::default())
        .await
        .expect("ids");
    store.meta.delete_adapter(ids[0]).await.expect("delete");
    let after = store
        .meta
        .list_page_ids(&all, &Viewer::default())
        .await
        .expect("ids");
    assert!(after.generation > before.generation);
    assert!(!after.ids.contains(&ids[0]) && before.ids.contains(&ids[0]));
    let listed = store
        .meta
        .listed_adapters(&before.ids)
        .await
        .expect("listed");
    assert_eq!(listed.len(), before.ids.len() - 1);
    // An empty page still reads the generation.
    let none = ListAdapters {
        owner: Some("nobody".into()),
        ..all
    };
    let empty = store
        .meta
        .list_page_ids(&none, &Viewer::default())
        .await
        .expect("ids");
    assert!(empty.ids.is_empty() && empty.next_cursor.is_none());
    assert_eq!(empty.generation, after.generation);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn versions_numbers_refs_and_revisions(#[case] backend: Backend) {
    let (store, _s) = store_or_skip!(backend);
    let a = store
        .meta
        .create_adapter(&new_adapter("alice", "v", false))
        .await
        .expect("create");
    let tasks = (0..12).map(|i| {
        let store = store.clone();
        let a = a.clone();
        async move {
            store
                .meta
                .create_version(&a, &version(&[("x", &format!("{i:02}"))]))
                .await
        }
    });
    let mut numbers: Vec<i64> = futures::future::join_all(tasks)
        .await
        .into_iter()
        .map(|v| v.expect("version").number)
        .collect();
    numbers.sort();
    assert_eq!(numbers, (1..=12).collect::<Vec<_>>());

    let v3 = store
        .meta
        .get_version(a.id, &VersionRef::Number(3))
        .await
        .expect("get")
        .expect("v3");
    let by_rev = store
        .meta
        .get_version(a.id, &VersionRef::Revision(v3.revision.clone()))
        .await
        .expect("get");
    assert_eq!(by_rev.map(|v| v.number), Some(3));
    assert_eq!(v3.files.len(), 1);
    let main = store
        .meta
        .get_version(a.id, &VersionRef::Main)
        .await
        .expect("get")
        .expect("main");
    assert_eq!(main.number, 12);
    assert!(matches!(
        store.meta.set_alias(a.id, "prod", 99).await,
        Err(StoreError::NotFound(_))
    ));
    store.meta.set_alias(a.id, "prod", 3).await.expect("alias");
    store
        .meta
        .set_alias(a.id, "prod", 4)
        .await
        .expect("move alias");
    let prod = store
        .meta
        .get_version(a.id, &VersionRef::Alias("prod".into()))
        .await
        .expect("get")
        .expect("prod");
    assert_eq!(prod.number, 4);
    assert_eq!(
        store.meta.aliases(&[a.id]).await.expect("aliases"),
        vec![(a.id, "prod".to_string(), 4)]
    );
    assert!(store.meta.delete_alias(a.id, "prod").await.expect("delete"));
    assert!(
        !store
            .meta
            .delete_alias(a.id, "prod")
            .await
            .expect("delete again")
    );

    let latest = store.meta.latest_versions(&[a.id]).await.expect("latest");
    assert_eq!(
        latest.iter().map(|v| v.number).collect::<Vec<_>>(),
        vec![12]
    );
    let page = store.meta.list_versions(a.id, 5, None).await.expect("page");
    assert_eq!(
        page.items.iter().map(|v| v.number).collect::<Vec<_>>(),
        vec![12, 11, 10, 9, 8]
    );
    let page = store
        .meta
        .list_versions(a.id, 5, page.next_cursor.as_deref())
        .await
        .expect("page 2");
    assert_eq!(page.items.first().map(|v| v.number), Some(7));
    assert!(store.meta.blob_in_use("05").await.expect("in use"));
    assert!(!store.meta.blob_in_use("ff").await.expect("in use"));
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn tokens_authenticate_by_hash_only(#[case] backend: Backend) {
    let (store, _s) = store_or_skip!(backend);
    assert_eq!(store.meta.count_users().await.expect("count"), 0);
    store
        .meta
        .create_token("alice", Scope::Write, "hash-1")
        .await
        .expect("token");
    store
        .meta
        .create_token("alice", Scope::Read, "hash-2")
        .await
        .expect("second token, same user");
    assert_eq!(store.meta.count_users().await.expect("count"), 1);
    let p = store
        .meta
        .authenticate("hash-1")
        .await
        .expect("auth")
        .expect("known");
    assert_eq!((p.user.as_str(), p.scope), ("alice", Scope::Write));
    assert!(
        store
            .meta
            .authenticate("nope")
            .await
            .expect("auth")
            .is_none()
    );
    assert!(
        store
            .meta
            .create_token("bad name", Scope::Read, "h3")
            .await
            .is_err()
    );
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn token_lifecycle_expiry_revocation_limit_and_invites(#[case] backend: Backend) {
    use quiver_store::{NewToken, Restriction, TokenCheck, time::now_ms};
    let (store, _s) = store_or_skip!(backend);
    let new = |hash: &str, expires_at: Option<i64>| NewToken {
        user: "alice".into(),
        name: Some(hash.into()),
        prefix: Some("qvt_abcd".into()),
        scope: Scope::Write,
        restrict: Some(Restriction::parse(&["alice/x".into(), "bob".into()]).expect("ok")),
        expires_at,
        created_by: Some("root".into()),
        secret_sha256: hash.into(),
        max_active: 2,
    };
    let live = store
        .meta
        .insert_token(&new("h-live", None))
        .await
        .expect("live");
    store
        .meta
        .insert_token(&new("h-old", Some(now_ms() - 1)))
        .await
        .expect("expired");
    match store.meta.check_token("h-live").await.expect("check") {
        TokenCheck::Valid(p) => {
            assert_eq!(p.restrict.expect("ok").entries(), vec!["bob", "alice/x"]);
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        store.meta.check_token("h-old").await.expect("ok"),
        TokenCheck::Expired
    ));
    assert!(matches!(
        store.meta.check_token("h-none").await.expect("ok"),
        TokenCheck::Unknown
    ));
    // The expired one does not count: a second active token fits, a third does not.
    store
        .meta
        .insert_token(&new("h-2", None))
        .await
        .expect("second");
    assert!(store.meta.insert_token(&new("h-3", None)).await.is_err());
    assert_eq!(
        store
            .meta
            .list_tokens(Some("alice"), 100)
            .await
            .expect("ok")
            .len(),
        3
    );
    assert!(store.meta.revoke_token(&live.id).await.expect("ok"));
    assert!(!store.meta.revoke_token("no-such").await.expect("ok"));
    assert!(matches!(
        store.meta.check_token("h-live").await.expect("ok"),
        TokenCheck::Revoked
    ));
    assert_eq!(
        store.meta.list_tokens(None, 100).await.expect("ok").len(),
        2
    );
    let got = store
        .meta
        .get_token(&live.id)
        .await
        .expect("ok")
        .expect("kept");
    assert!(got.revoked_at.is_some() && got.prefix.as_deref() == Some("qvt_abcd"));

    // Invites: once, before they expire.
    store
        .meta
        .insert_invite("carol", Scope::Read, "root", now_ms() + 60_000, "i-1")
        .await
        .expect("invite");
    store
        .meta
        .insert_invite("dave", Scope::Read, "root", now_ms() - 1, "i-old")
        .await
        .expect("invite");
    let mut t = new("h-carol", None);
    t.restrict = None;
    let made = store
        .meta
        .redeem_invite("i-1", &t)
        .await
        .expect("ok")
        .expect("used");
    assert_eq!((made.user.as_str(), made.scope), ("carol", Scope::Read));
    assert_eq!(made.created_by.as_deref(), Some("root"));
    t.secret_sha256 = "h-carol-2".into();
    assert!(
        store
            .meta
            .redeem_invite("i-1", &t)
            .await
            .expect("ok")
            .is_none()
    );
    assert!(
        store
            .meta
            .redeem_invite("i-old", &t)
            .await
            .expect("ok")
            .is_none()
    );
}

/// An upload dropped half way (its client went away mid-body) and a finished one dropped
/// without `discard` remove what they staged, without waiting for a sweep.
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_uploads_remove_what_they_staged(#[case] backend: Backend) {
    let (store, _s) = store_or_skip!(backend);
    let chunk = Bytes::from(vec![7u8; 3 * 1024 * 1024]);
    let staged_gone = |what: &'static str| {
        let blobs = store.blobs.clone();
        async move {
            for _ in 0..100 {
                if blobs.count_staged().await.expect("staged") == 0 {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            panic!("{what}: the staged upload is still there after 5 s");
        }
    };

    // Half way: 9 MiB written (a file locally, a multipart upload on S3), then dropped.
    let mut up = store.blobs.begin();
    for _ in 0..3 {
        up.write(chunk.clone()).await.expect("write");
    }
    if store.blobs.is_local() {
        // The digest worker writes behind; wait until the staged file exists.
        for _ in 0..100 {
            if store.blobs.count_staged().await.expect("staged") > 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert_eq!(store.blobs.count_staged().await.expect("staged"), 1);
    }
    drop(up);
    staged_gone("dropped mid-body").await;

    // Finished and dropped without being committed or discarded.
    let mut up = store.blobs.begin();
    up.write(chunk.clone()).await.expect("write");
    let staged = up.finish().await.expect("finish");
    assert_eq!(store.blobs.count_staged().await.expect("staged"), 1);
    drop(staged);
    staged_gone("finished, then dropped").await;

    // Discarded, then dropped: nothing more to do, and nothing committed is touched.
    let mut up = store.blobs.begin();
    up.write(chunk.clone()).await.expect("write");
    let staged = up.finish().await.expect("finish");
    store.blobs.commit(&staged).await.expect("commit");
    store.blobs.discard(&staged).await;
    let sha = staged.sha256.clone();
    drop(staged);
    staged_gone("discarded").await;
    assert_eq!(
        store.blobs.size(&sha).await.expect("size"),
        chunk.len() as u64
    );
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn blobs_stream_dedupe_range_and_discard(#[case] backend: Backend) {
    let (store, _s) = store_or_skip!(backend);
    store.blobs.ping().await.expect("ping");
    // 20 MiB in odd-sized chunks: goes through multipart with several parts.
    let data: Vec<u8> = (0..20 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(31) >> 7) as u8)
        .collect();
    let mut up = store.blobs.begin();
    for chunk in data.chunks(1_000_003) {
        up.write(Bytes::copy_from_slice(chunk))
            .await
            .expect("write");
    }
    let staged = up.finish().await.expect("finish");
    assert_eq!(staged.size, data.len() as u64);
    assert_eq!(staged.sha256, hex::encode(sha2::Sha256::digest(&data)));
    assert!(
        store.blobs.list_hashes().await.expect("list").is_empty(),
        "staged blobs are not visible"
    );
    store.blobs.commit(&staged).await.expect("commit");
    assert_eq!(
        store.blobs.count_staged().await.expect("staged"),
        1,
        "commit keeps the staged copy until the rows are checked"
    );
    store.blobs.discard(&staged).await;
    assert_eq!(store.blobs.count_staged().await.expect("staged"), 0);
    assert_eq!(
        store.blobs.size(&staged.sha256).await.expect("size"),
        data.len() as u64
    );

    // Same content again: one copy.
    let mut up = store.blobs.begin();
    up.write(Bytes::copy_from_slice(&data))
        .await
        .expect("write");
    let again = up.finish().await.expect("finish");
    store.blobs.commit(&again).await.expect("commit");
    store.blobs.discard(&again).await;
    assert_eq!(
        store.blobs.list_hashes().await.expect("list"),
        vec![staged.sha256.clone()]
    );

    let get = |range| {
        let store = store.clone();
        let sha = staged.sha256.clone();
        async move {
            let chunks: Vec<_> = store
                .blobs
                .get(&sha, range)
                .await
                .expect("get")
                .try_collect()
                .await
                .expect("body");
            chunks.concat()
        }
    };
    assert!(get(Some(5..15_000_000)).await == data[5..15_000_000]);
    assert!(get(None).await == data);

    // Small and empty bodies take the single-put path; discard and abort leave nothing.
    for body in [&b""[..], &b"tiny"[..]] {
        let mut up = store.blobs.begin();
        up.write(Bytes::from_static(body)).await.expect("write");
        let s = up.finish().await.expect("finish");
        store.blobs.discard(&s).await;
    }
    let mut up = store.blobs.begin();
    up.write(Bytes::copy_from_slice(&data))
        .await
        .expect("write");
    up.abort().await;
    assert_eq!(store.blobs.count_staged().await.expect("staged"), 0);
    assert_eq!(store.blobs.list_hashes().await.expect("list").len(), 1);
    assert!(matches!(
        store.blobs.get("00ff", None).await,
        Err(StoreError::BlobMissing(_))
    ));
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_staging_and_commits_never_fail(#[case] backend: Backend) {
    // Discarding a staged copy after its commit can leave the staging directory empty, which the
    // local store then removes, while other uploads are creating their staged files in it.
    const ROUNDS: u32 = 20;
    let (store, _s) = store_or_skip!(backend);
    let tasks: Vec<_> = (0..64u32)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                for round in 0..ROUNDS {
                    let mut up = store.blobs.begin();
                    // Odd rounds repeat what every task uploads: duplicates.
                    let body = if round % 2 == 1 {
                        format!("shared round {round}")
                    } else {
                        format!("blob {i} round {round}")
                    };
                    up.write(Bytes::from(body)).await?;
                    let staged = up.finish().await?;
                    store.blobs.commit(&staged).await?;
                    store.blobs.discard(&staged).await;
                }
                Ok::<(), StoreError>(())
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("task").expect("upload");
    }
    let distinct = 64 * ROUNDS.div_ceil(2) + ROUNDS / 2;
    assert_eq!(
        store.blobs.list_hashes().await.expect("list").len() as u32,
        distinct
    );
    assert_eq!(store.blobs.count_staged().await.expect("staged"), 0);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn abandoned_staged_uploads_are_swept(#[case] backend: Backend) {
    let (store, _s) = store_or_skip!(backend);
    let mut up = store.blobs.begin();
    up.write(Bytes::from_static(
        b"left behind by a client that went away",
    ))
    .await
    .expect("write");
    let _staged = up.finish().await.expect("finish");
    assert_eq!(store.blobs.count_staged().await.expect("staged"), 1);
    let hour = std::time::Duration::from_secs(3600);
    assert_eq!(
        store.blobs.sweep_staged(hour).await.expect("sweep"),
        0,
        "too young"
    );
    assert_eq!(store.blobs.count_staged().await.expect("staged"), 1);
    // S3 reports whole seconds: wait long enough that any rounding still lands past the cutoff.
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let second = std::time::Duration::from_secs(1);
    assert_eq!(store.blobs.sweep_staged(second).await.expect("sweep"), 1);
    assert_eq!(store.blobs.count_staged().await.expect("staged"), 0);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn blobs_fetch_to_local_files(#[case] backend: Backend) {
    let (store, _s) = store_or_skip!(backend);
    let data = b"the bytes of an input".to_vec();
    let mut up = store.blobs.begin();
    up.write(Bytes::from(data.clone())).await.expect("write");
    let staged = up.finish().await.expect("finish");
    store.blobs.commit(&staged).await.expect("commit");
    store.blobs.discard(&staged).await;
    let dir = tempfile::tempdir().expect("tmp");
    let dest = dir.path().join("copy");
    store
        .blobs
        .fetch_to(&staged.sha256, &dest)
        .await
        .expect("fetch");
    assert_eq!(std::fs::read(&dest).expect("read"), data);
    // The local copy outlives the blob (a hard link for file:// stores).
    store.blobs.delete(&staged.sha256).await.expect("delete");
    assert_eq!(std::fs::read(&dest).expect("read"), data);
    assert!(matches!(
        store
            .blobs
            .fetch_to(&staged.sha256, &dir.path().join("gone"))
            .await,
        Err(StoreError::BlobMissing(_))
    ));
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn local_files_are_stored_by_content(#[case] backend: Backend) {
    let (store, _s) = store_or_skip!(backend);
    let dir = tempfile::tempdir().expect("tmp");
    // One file under a multipart part (a single PUT on S3), one over (a multipart upload).
    for size in [1000usize, 9 * 1024 * 1024 + 17] {
        let data: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();
        let path = dir.path().join(format!("f{size}"));
        std::fs::write(&path, &data).expect("write");
        let stored = store.blobs.put_file(&path).await.expect("put");
        // Small remote objects are written without asking and never count as `written`: the
        // content may have been stored already, and old (a sweep could take it), so the
        // publisher checks them again inside its commit.
        let small_remote = !store.blobs.is_local() && size < 1024 * 1024;
        assert_eq!(stored.written, !small_remote);
        let (sha, got) = (stored.sha256, stored.size);
        assert_eq!(
            (sha.as_str(), got),
            (
                hex::encode(sha2::Sha256::digest(&data)).as_str(),
                size as u64
            )
        );
        // Again: found rather than written (small remote objects are simply rewritten: one
        // request either way); the stored bytes are the file's.
        let again = store.blobs.put_file(&path).await.expect("again");
        assert_eq!(
            (again.sha256.as_str(), again.written),
            (sha.as_str(), false)
        );
        let body: Vec<Bytes> = store
            .blobs
            .get(&sha, None)
            .await
            .expect("get")
            .try_collect()
            .await
            .expect("body");
        assert!(body.concat() == data);
        // Removed behind its back, it is stored again.
        store.blobs.delete(&sha).await.expect("delete");
        store.blobs.ensure_file(&path, &sha).await.expect("ensure");
        assert_eq!(store.blobs.size(&sha).await.expect("size"), size as u64);
    }
    assert_eq!(store.blobs.count_staged().await.expect("staged"), 0);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn a_blob_gone_before_the_commit_is_stored_again_or_fails_the_commit(
    #[case] backend: Backend,
) {
    use quiver_store::HeldBlobs;
    let (store, _s) = store_or_skip!(backend);
    let a = store
        .meta
        .create_adapter(&new_adapter("alice", "held", false))
        .await
        .expect("create");
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("weights");
    std::fs::write(&path, b"the weights").expect("write");
    let stored = store.blobs.put_file(&path).await.expect("put");
    let new = NewVersion {
        files: vec![FileRecord {
            path: "w.bin".into(),
            size: stored.size as i64,
            sha256: stored.sha256.clone(),
        }],
        ..version(&[])
    };
    // A sweep removed it after it was found stored, before the commit.
    store.blobs.delete(&stored.sha256).await.expect("sweep");
    // Held by reference only (a Hub commit's LFS object): the commit fails, nothing is written.
    let refs = [stored.sha256.clone()];
    let mut check = HeldBlobs::new(&store.blobs);
    check.stored = &refs;
    let failed = store.meta.create_version_checked(&a, &new, &check).await;
    assert!(
        matches!(&failed, Err(StoreError::BlobMissing(sha)) if *sha == stored.sha256),
        "{failed:?}"
    );
    assert_eq!(store.meta.row_counts().await.expect("counts").1, 0);
    assert!(
        store
            .meta
            .get_version(a.id, &VersionRef::Main)
            .await
            .expect("main")
            .is_none()
    );
    // Held as a local copy (a job's output): stored again inside the commit, which succeeds.
    let files = [(path.clone(), stored.sha256.clone())];
    let mut check = HeldBlobs::new(&store.blobs);
    check.files = &files;
    let v = store
        .meta
        .create_version_checked(&a, &new, &check)
        .await
        .expect("published");
    assert_eq!(v.number, 1);
    assert!(store.blobs.exists(&stored.sha256).await.expect("exists"));
}
