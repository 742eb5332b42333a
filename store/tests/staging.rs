//! Staged uploads of processes that claimed an owner id (`BlobStore::claim_staging`): a sweep
//! removes a dead owner's at once, whatever their age, and leaves a live owner's (only the age
//! rule applies to them); a clean release removes the owner's own. (The e2e test
//! `faults::kill_9_during_uploads…` does the same with real processes killed with -9.)

use bytes::Bytes;
use quiver_store::staging::Identity;
use quiver_store::store_or_skip;
use quiver_store::testing::Backend;
use quiver_store::{BlobStore, Store};
use rstest::rstest;

/// Stages an upload and leaves it as a killed process would: a `StagedBlob` dropped in a live
/// process removes its staged copy, but a killed process runs no destructors.
async fn stage(blobs: &BlobStore, body: &'static [u8]) {
    let mut up = blobs.begin();
    up.write(Bytes::from_static(body)).await.expect("write");
    std::mem::forget(up.finish().await.expect("finish"));
}

/// This host's identity with the pid of a process that has exited.
fn dead_process() -> Option<Identity> {
    let here = Identity::current();
    here.start_ticks?;
    let mut child = std::process::Command::new("true").spawn().ok()?;
    let pid = child.id();
    child.wait().ok()?;
    Some(Identity { pid, ..here })
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn a_dead_owners_staged_uploads_go_at_once_and_a_live_owners_stay(#[case] backend: Backend) {
    let (live, scratch) = store_or_skip!(backend);
    let Some(dead_identity) = dead_process() else {
        eprintln!("skipped: no /proc here (only the lease decides)");
        return;
    };
    live.blobs.claim_staging().await.expect("claim");
    stage(&live.blobs, b"an upload in progress").await;
    let dead = Store::open(&scratch.settings)
        .await
        .expect("open again")
        .blobs
        .with_staging_identity(dead_identity);
    dead.claim_staging().await.expect("claim");
    stage(&dead, b"left by a killed process").await;
    stage(&dead, b"and another").await;
    assert_eq!(live.blobs.count_staged().await.expect("staged"), 3);

    // A third process starts and sweeps with the 24 h age rule: the dead owner's go, young as
    // they are; the live owner's stay.
    let third = Store::open(&scratch.settings).await.expect("open again");
    third.blobs.claim_staging().await.expect("claim");
    let day = std::time::Duration::from_secs(24 * 3600);
    assert_eq!(third.blobs.sweep_staged(day).await.expect("sweep"), 2);
    assert_eq!(live.blobs.count_staged().await.expect("staged"), 1);
    assert_eq!(third.blobs.sweep_staged(day).await.expect("sweep"), 0);

    // A clean stop removes what the owner still has staged, and only that.
    stage(&third.blobs, b"the third process's upload").await;
    live.blobs.release_staging().await;
    assert_eq!(live.blobs.count_staged().await.expect("staged"), 1);
    third.blobs.release_staging().await;
    assert_eq!(live.blobs.count_staged().await.expect("staged"), 0);
}
