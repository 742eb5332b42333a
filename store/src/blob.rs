//! Content-addressed blobs in any `object_store` backend.
//!
//! An upload streams into a temporary object (`uploads/<uuid>`) while its sha256 is computed;
//! [`BlobStore::commit`] then copies it to `sha256/ab/cdef…`. Memory stays bounded: bodies smaller
//! than one part go out in a single `put`, larger ones through `WriteMultipart`, which waits for
//! capacity before buffering more (back-pressure on the client).

use std::ops::Range;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    GetOptions, GetRange, GetResultPayload, ObjectStore, ObjectStoreExt, WriteMultipart,
};
use sha2::{Digest, Sha256};

use crate::StoreError;
use crate::staging::{self, Staging};

/// Size of one multipart part (S3 needs ≥ 5 MiB except for the last).
const PART_SIZE: usize = 8 * 1024 * 1024;
/// Remote objects smaller than this are written without asking whether they exist.
const SMALL_PUT: u64 = 1024 * 1024;
/// Parts in flight per upload; with `PART_SIZE` this bounds an upload's memory to ~40 MiB.
const PARTS_IN_FLIGHT: usize = 4;

#[derive(Clone)]
pub struct BlobStore {
    inner: Arc<dyn ObjectStore>,
    prefix: Path,
    /// The bucket of an `s3://` store (for the `s3://` URLs of exports).
    bucket: Option<String>,
    /// The directory of a `file://` store: uploads are staged there with plain file writes.
    local_root: Option<Arc<std::path::PathBuf>>,
    description: String,
    /// Whose staged uploads these are (see [`crate::staging`]).
    staging: Arc<Staging>,
}

/// A local file stored by [`BlobStore::put_file`].
#[derive(Clone, Debug)]
pub struct StoredFile {
    pub sha256: String,
    pub size: u64,
    /// Whether this call wrote the blob (a fresh one the sweep's grace period protects), rather
    /// than finding identical content already stored (which may be old: check it again after
    /// committing rows that refer to it, with [`BlobStore::ensure_file`]).
    pub written: bool,
}

/// A finished upload, not yet visible under its content address. Dropped without
/// [`BlobStore::discard`] (a request whose client went away, say), it removes its staged copy in
/// the background: nothing staged outlives its owner in a live process.
#[derive(Debug)]
pub struct StagedBlob {
    pub sha256: String,
    pub size: u64,
    tmp: Path,
    store: Arc<dyn ObjectStore>,
    discarded: std::sync::atomic::AtomicBool,
}

impl Drop for StagedBlob {
    fn drop(&mut self) {
        if self.discarded.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        let (store, tmp) = (self.store.clone(), std::mem::take(&mut self.tmp));
        spawn_cleanup(async move {
            if let Err(e) = store.delete(&tmp).await
                && !matches!(e, object_store::Error::NotFound { .. })
            {
                tracing::warn!(key = %tmp, error = %e, "could not remove a dropped staged upload");
            }
        });
    }
}

/// Runs a cleanup on the current async runtime, if there is one (without one, the staged-upload
/// sweep removes what was left when its owner is gone).
fn spawn_cleanup(cleanup: impl std::future::Future<Output = ()> + Send + 'static) {
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(cleanup);
    }
}

impl BlobStore {
    /// `file:///abs/dir` (created if missing) or `s3://bucket/prefix`.
    pub fn from_url(url: &str) -> Result<Self, StoreError> {
        let parsed = url::Url::parse(url)
            .map_err(|e| StoreError::Invalid(format!("store URL {url:?} does not parse: {e}")))?;
        let mut local_root = None;
        let mut bucket_name = None;
        let (inner, prefix): (Arc<dyn ObjectStore>, Path) = match parsed.scheme() {
            "file" => {
                let dir = parsed.to_file_path().map_err(|()| {
                    StoreError::Invalid(format!("store URL {url:?} is not an absolute file path"))
                })?;
                std::fs::create_dir_all(&dir).map_err(|e| {
                    StoreError::Invalid(format!(
                        "cannot create blob directory {}: {e}",
                        dir.display()
                    ))
                })?;
                let fs = LocalFileSystem::new_with_prefix(&dir)?.with_automatic_cleanup(true);
                local_root = Some(Arc::new(std::fs::canonicalize(&dir).map_err(|e| {
                    StoreError::Invalid(format!("blob directory {}: {e}", dir.display()))
                })?));
                (Arc::new(fs), Path::default())
            }
            "s3" => {
                let bucket = parsed.host_str().ok_or_else(|| {
                    StoreError::Invalid(format!("store URL {url:?} names no bucket"))
                })?;
                let mut builder = AmazonS3Builder::from_env()
                    .with_bucket_name(bucket)
                    .with_retry(s3_retry())
                    .with_client_options(s3_client_options());
                if let Ok(endpoint) = std::env::var("AWS_ENDPOINT_URL") {
                    builder = builder
                        .with_endpoint(&endpoint)
                        .with_allow_http(endpoint.starts_with("http://"))
                        .with_virtual_hosted_style_request(false);
                }
                let prefix = Path::from(parsed.path().trim_matches('/'));
                bucket_name = Some(bucket.to_string());
                (Arc::new(builder.build()?), prefix)
            }
            other => {
                return Err(StoreError::Invalid(format!(
                    "store URL scheme {other:?} is not supported: use file:// or s3://"
                )));
            }
        };
        Ok(Self {
            inner,
            prefix,
            bucket: bucket_name,
            local_root,
            description: redact(url),
            staging: Arc::new(Staging::new()),
        })
    }

    /// Whether blobs are files in a local directory (`file://`), rather than remote objects.
    pub fn is_local(&self) -> bool {
        self.local_root.is_some()
    }

    /// The file behind `key` in a local store (the same mapping `LocalFileSystem` uses).
    fn local_path(&self, key: &Path) -> Option<std::path::PathBuf> {
        let root = self.local_root.as_ref()?;
        Some(
            key.parts()
                .fold(root.to_path_buf(), |p, part| p.join(part.as_ref())),
        )
    }

    pub fn describe(&self) -> &str {
        &self.description
    }

    fn key(&self, rel: &str) -> Path {
        let mut p = self.prefix.clone();
        for part in rel.split('/') {
            p = p.clone().join(part);
        }
        p
    }

    /// Where the blob with this hash lives.
    pub fn content_key(&self, sha256: &str) -> Path {
        self.key(&format!(
            "sha256/{}/{}",
            &sha256[..2.min(sha256.len())],
            sha256
        ))
    }

    /// Stores something derived from blobs under `derived/<name>`: caches (a version's spectra),
    /// which the sweeps leave and whose loss only costs recomputing, and the Hub's LFS upload
    /// proofs (`derived/lfs-proof/<adapter id>/<sha256>`), which are authorisation records,
    /// deleted with their adapter ([`BlobStore::delete_derived_prefix`]).
    pub async fn put_derived(&self, name: &str, bytes: Bytes) -> Result<(), StoreError> {
        self.inner
            .put(&self.key(&format!("derived/{name}")), bytes.into())
            .await?;
        Ok(())
    }

    /// A derived object stored by [`BlobStore::put_derived`], if there is one.
    pub async fn get_derived(&self, name: &str) -> Result<Option<Bytes>, StoreError> {
        match self.inner.get(&self.key(&format!("derived/{name}"))).await {
            Ok(got) => Ok(Some(got.bytes().await?)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Deletes every derived object under `derived/<prefix>/` (whole path segments: prefix `a/1`
    /// does not touch `a/12`). Returns how many were deleted.
    pub async fn delete_derived_prefix(&self, prefix: &str) -> Result<usize, StoreError> {
        let items: Vec<_> = self
            .inner
            .list(Some(&self.key(&format!("derived/{prefix}"))))
            .try_collect()
            .await?;
        let mut deleted = 0;
        for item in items {
            match self.inner.delete(&item.location).await {
                Ok(()) => deleted += 1,
                Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(deleted)
    }

    /// Checks that the backend answers (a listing of at most one object).
    pub async fn ping(&self) -> Result<(), StoreError> {
        let mut list = self.inner.list(Some(&self.prefix));
        if let Some(item) = list.next().await {
            item?;
        }
        Ok(())
    }

    /// Starts a streaming upload, staged under `uploads/<owner>/<uuid>` once this store has
    /// claimed an owner id ([`BlobStore::claim_staging`]), else under `uploads/<uuid>`.
    pub fn begin(&self) -> BlobUpload {
        let tmp = if self.staging.is_claimed() {
            format!("uploads/{}/{}", self.staging.id, uuid::Uuid::new_v4())
        } else {
            format!("uploads/{}", uuid::Uuid::new_v4())
        };
        BlobUpload::start(self.clone(), self.key(&tmp))
    }

    /// This store's staged uploads as another process's (tests: a dead or remote owner).
    #[cfg(feature = "test-util")]
    pub fn with_staging_identity(mut self, identity: staging::Identity) -> Self {
        let mut owner = Staging::new();
        owner.identity = identity;
        self.staging = Arc::new(owner);
        self
    }

    fn owner_marker(&self, id: &str) -> Path {
        self.key(&format!("owners/{id}"))
    }

    /// Claims an owner id for this process's staged uploads: writes its marker and keeps it
    /// fresh, so that a process starting after this one dies removes what it left staged at
    /// once (same host) or after [`staging::LEASE`] (another host), and never while it lives.
    /// `serve` and `worker` call this at start. Idempotent.
    pub async fn claim_staging(&self) -> Result<(), StoreError> {
        if self.staging.is_claimed() {
            return Ok(());
        }
        let marker = self.owner_marker(&self.staging.id);
        let body = self.staging.marker_body();
        self.inner.put(&marker, body.clone().into()).await?;
        self.staging
            .claimed
            .store(true, std::sync::atomic::Ordering::Release);
        let inner = Arc::clone(&self.inner);
        let task = tokio::spawn(async move {
            let mut every = tokio::time::interval(staging::HEARTBEAT);
            every.tick().await;
            loop {
                every.tick().await;
                if let Err(e) = inner.put(&marker, body.clone().into()).await {
                    tracing::warn!(error = %e, "could not renew the staged-uploads lease");
                }
            }
        });
        if let Ok(mut h) = self.staging.heartbeat.lock() {
            *h = Some(task);
        }
        Ok(())
    }

    /// [`BlobStore::claim_staging`], tried again every [`staging::HEARTBEAT`] in the background
    /// while the store does not answer, so that a process can start during a store outage (its
    /// uploads meanwhile stage under `uploads/<uuid>`, removed by the 24 h age rule).
    pub async fn claim_staging_soon(&self) {
        let Err(e) = self.claim_staging().await else {
            return;
        };
        tracing::warn!(error = %e, "could not claim an owner id for staged uploads; trying again");
        let store = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(staging::HEARTBEAT).await;
                if store.claim_staging().await.is_ok() {
                    tracing::info!("claimed an owner id for staged uploads");
                    return;
                }
            }
        });
    }

    /// Ends the claim at a clean shutdown (after the requests and jobs stopped): removes this
    /// process's staged uploads, then its marker.
    pub async fn release_staging(&self) {
        if !self.staging.is_claimed() {
            return;
        }
        self.staging.stop_heartbeat();
        let mine = self.key(&format!("uploads/{}", self.staging.id));
        let removed = self.delete_under(&mine).await;
        if let Err(e) = removed {
            tracing::warn!(error = %e, "could not remove this process's staged uploads");
        }
        if let Err(e) = self
            .inner
            .delete(&self.owner_marker(&self.staging.id))
            .await
            && !matches!(e, object_store::Error::NotFound { .. })
        {
            tracing::warn!(error = %e, "could not remove the staged-uploads marker");
        }
        self.staging
            .claimed
            .store(false, std::sync::atomic::Ordering::Release);
    }

    /// Deletes every object under `prefix`; returns how many.
    async fn delete_under(&self, prefix: &Path) -> Result<usize, StoreError> {
        let items: Vec<_> = self.inner.list(Some(prefix)).try_collect().await?;
        let mut removed = 0;
        for meta in items {
            match self.inner.delete(&meta.location).await {
                Ok(()) => removed += 1,
                Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(removed)
    }

    /// Makes a staged upload visible under its content address by copying it there (a hard link
    /// for `file://`, a server-side copy on S3), replacing an identical blob if one exists, which
    /// renews its modification time so the blob sweep leaves it alone. The staged copy stays until
    /// [`BlobStore::discard`]: after the rows that refer to the blob commit, callers check with
    /// [`BlobStore::ensure_committed`] that a sweep did not remove it meanwhile.
    pub async fn commit(&self, staged: &StagedBlob) -> Result<(), StoreError> {
        let dest = self.content_key(&staged.sha256);
        match self.inner.copy(&staged.tmp, &dest).await {
            Ok(()) => Ok(()),
            // The staged copy is gone: this process was taken for dead (its lease went stale
            // while the store did not answer). The client can try again.
            Err(e @ object_store::Error::NotFound { .. }) => Err(StoreError::Blob(e)),
            Err(e) => Err(e.into()),
        }
    }

    /// Commits the staged copy again if its blob is missing (see [`BlobStore::commit`]).
    pub async fn ensure_committed(&self, staged: &StagedBlob) -> Result<(), StoreError> {
        match self.inner.head(&self.content_key(&staged.sha256)).await {
            Ok(_) => Ok(()),
            Err(object_store::Error::NotFound { .. }) => {
                tracing::warn!(sha256 = %staged.sha256, "blob swept while its version committed; stored again");
                self.commit(staged).await
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Whether a blob with this content is stored.
    pub async fn exists(&self, sha256: &str) -> Result<bool, StoreError> {
        match self.inner.head(&self.content_key(sha256)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Stores a local file as a blob unless identical content is already stored. Nothing is
    /// uploaded for content the store holds (a retried job's output).
    pub async fn put_file(&self, path: &std::path::Path) -> Result<StoredFile, StoreError> {
        let (sha256, size) = hash_file(path).await?;
        // A small remote object costs one request to write and one to ask about: write it
        // (identical bytes replace identical bytes, and its time is renewed). Large ones, and
        // local files (a hard link), are looked for first.
        let written = if !self.is_local() && size < SMALL_PUT {
            self.write_file_to(path, &self.content_key(&sha256)).await?;
            // Not `written` for the check after all: identical content may have been stored
            // already, and a sweep that saw it old may delete it just after this write.
            false
        } else {
            let missing = !self.exists(&sha256).await?;
            if missing {
                self.write_file_to(path, &self.content_key(&sha256)).await?;
            }
            missing
        };
        Ok(StoredFile {
            sha256,
            size,
            written,
        })
    }

    /// Stores the local file again if its blob is missing (a sweep ran between
    /// [`BlobStore::put_file`] and the commit of the rows referring to it).
    pub async fn ensure_file(
        &self,
        path: &std::path::Path,
        sha256: &str,
    ) -> Result<(), StoreError> {
        if !self.exists(sha256).await? {
            self.write_file_to(path, &self.content_key(sha256)).await?;
        }
        Ok(())
    }

    /// Writes a local file whose hash is known straight to its content address: the object
    /// appears whole or not at all (a hard link, or a temporary file renamed, on `file://`; a
    /// single PUT or a completed multipart upload on S3), so no staging copy is needed.
    async fn write_file_to(&self, path: &std::path::Path, key: &Path) -> Result<(), StoreError> {
        use tokio::io::AsyncReadExt;
        if let Some(dest) = self.local_path(key) {
            let (src, dest) = (path.to_path_buf(), dest);
            let linked = tokio::task::spawn_blocking(move || {
                if let Some(dir) = dest.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                std::fs::hard_link(&src, &dest)
            })
            .await
            .map_err(|e| StoreError::Corrupt(format!("link task failed: {e}")))?;
            match linked {
                // Already there: identical content, stored by someone else meanwhile.
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(()),
                Err(_) => {} // another file system: upload below
            }
        }
        let size = tokio::fs::metadata(path)
            .await
            .map_err(|e| io_error(path, e))?
            .len();
        if size < PART_SIZE as u64 {
            let bytes = tokio::fs::read(path).await.map_err(|e| io_error(path, e))?;
            self.inner.put(key, bytes.into()).await?;
            return Ok(());
        }
        let mut file = tokio::fs::File::open(path)
            .await
            .map_err(|e| io_error(path, e))?;
        let mut mp =
            WriteMultipart::new_with_chunk_size(self.inner.put_multipart(key).await?, PART_SIZE);
        loop {
            let mut buf = BytesMut::with_capacity(FILE_CHUNK as usize);
            let n = match file.read_buf(&mut buf).await {
                Ok(n) => n,
                Err(e) => {
                    let _ = mp.abort().await;
                    return Err(io_error(path, e));
                }
            };
            if n == 0 {
                break;
            }
            if let Err(e) = mp.wait_for_capacity(PARTS_IN_FLIGHT).await {
                let _ = mp.abort().await;
                return Err(e.into());
            }
            mp.write(&buf);
        }
        mp.finish().await?;
        Ok(())
    }

    /// Writes a committed blob to the local file `dest`: a hard link when the store is a local
    /// directory on the same file system (no bytes copied; the link keeps the content even if
    /// the blob is swept meanwhile), else a streamed copy.
    pub async fn fetch_to(&self, sha256: &str, dest: &std::path::Path) -> Result<(), StoreError> {
        use tokio::io::AsyncWriteExt;
        if let Some(src) = self.local_path(&self.content_key(sha256)) {
            let (src, dest_buf) = (src.clone(), dest.to_path_buf());
            let linked = tokio::task::spawn_blocking(move || std::fs::hard_link(&src, &dest_buf))
                .await
                .map_err(|e| StoreError::Corrupt(format!("link task failed: {e}")))?;
            match linked {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(StoreError::BlobMissing(sha256.to_string()));
                }
                Err(_) => {} // another file system, or links not allowed: copy
            }
        }
        let mut stream = self.get(sha256, None).await?;
        let mut file = tokio::fs::File::create(dest)
            .await
            .map_err(|e| io_error(dest, e))?;
        while let Some(chunk) = stream.next().await {
            file.write_all(&chunk?)
                .await
                .map_err(|e| io_error(dest, e))?;
        }
        file.flush().await.map_err(|e| io_error(dest, e))
    }

    /// Committed blobs with their last modification time (for the sweep).
    pub async fn list_with_times(
        &self,
    ) -> Result<Vec<(String, chrono::DateTime<chrono::Utc>)>, StoreError> {
        let items: Vec<_> = self
            .inner
            .list(Some(&self.key("sha256")))
            .try_collect()
            .await?;
        Ok(items
            .into_iter()
            .filter_map(|m| Some((m.location.filename()?.to_string(), m.last_modified)))
            .collect())
    }

    /// Deletes a committed blob if it was last modified before `cutoff` (re-checked now: a
    /// commit of identical content renews it). Returns whether it was deleted.
    pub async fn delete_if_older(
        &self,
        sha256: &str,
        cutoff: chrono::DateTime<chrono::Utc>,
    ) -> Result<bool, StoreError> {
        let key = self.content_key(sha256);
        match self.inner.head(&key).await {
            Ok(meta) if meta.last_modified < cutoff => {}
            Ok(_) | Err(object_store::Error::NotFound { .. }) => return Ok(false),
            Err(e) => return Err(e.into()),
        }
        match self.inner.delete(&key).await {
            Ok(()) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Removes a staged upload that will not be committed. Best effort.
    pub async fn discard(&self, staged: &StagedBlob) {
        staged
            .discarded
            .store(true, std::sync::atomic::Ordering::Relaxed);
        if let Err(e) = self.inner.delete(&staged.tmp).await {
            tracing::warn!(key = %staged.tmp, error = %e, "could not remove staged upload");
        }
    }

    /// Removes a committed blob. Callers make sure no file row refers to it any more.
    pub async fn delete(&self, sha256: &str) -> Result<(), StoreError> {
        match self.inner.delete(&self.content_key(sha256)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Size of a stored blob.
    pub async fn size(&self, sha256: &str) -> Result<u64, StoreError> {
        Ok(self.inner.head(&self.content_key(sha256)).await?.size)
    }

    /// Streams a blob, or the byte range of it.
    pub async fn get(
        &self,
        sha256: &str,
        range: Option<Range<u64>>,
    ) -> Result<BoxStream<'static, Result<Bytes, StoreError>>, StoreError> {
        let options = GetOptions {
            range: range.map(GetRange::Bounded),
            ..GetOptions::default()
        };
        let result = self
            .inner
            .get_opts(&self.content_key(sha256), options)
            .await?;
        match result.payload {
            GetResultPayload::File(file, _) => Ok(file_stream(file, result.range)),
            GetResultPayload::Stream(stream) => Ok(stream.map_err(StoreError::from).boxed()),
        }
    }

    /// Lists the content hashes of every committed blob.
    pub async fn list_hashes(&self) -> Result<Vec<String>, StoreError> {
        Ok(self
            .list_with_times()
            .await?
            .into_iter()
            .map(|(h, _)| h)
            .collect())
    }

    /// Removes what staged uploads were abandoned: everything staged by an owner that is dead
    /// (see [`crate::staging`]: at once for a process of this host, after
    /// [`staging::LEASE`] for another host's), and any other staged object last written
    /// more than `older_than` ago (what a client that went away mid-upload, or a process that
    /// never claimed an owner id, left behind). Returns how many.
    pub async fn sweep_staged(&self, older_than: std::time::Duration) -> Result<usize, StoreError> {
        // "Now" on the store's clock: this process's own marker, rewritten just now.
        let now = if self.staging.is_claimed() {
            let marker = self.owner_marker(&self.staging.id);
            self.inner
                .put(&marker, self.staging.marker_body().into())
                .await?;
            self.inner.head(&marker).await?.last_modified
        } else {
            chrono::Utc::now()
        };
        let chrono_age = |d: std::time::Duration| {
            chrono::Duration::from_std(d)
                .map_err(|e| StoreError::Invalid(format!("sweep age: {e}")))
        };
        let cutoff = now - chrono_age(older_than)?;
        let lease_cutoff = now - chrono_age(staging::LEASE)?;

        // Owners with a marker: dead or alive.
        let owners_key = self.key("owners");
        let markers: Vec<_> = self.inner.list(Some(&owners_key)).try_collect().await?;
        let mut dead = std::collections::BTreeSet::new();
        for meta in markers {
            let Some(id) = meta.location.filename().map(str::to_string) else {
                continue;
            };
            if id == self.staging.id {
                continue;
            }
            let record = match self.inner.get(&meta.location).await {
                Ok(got) => got.bytes().await.ok(),
                Err(object_store::Error::NotFound { .. }) => continue,
                Err(e) => return Err(e.into()),
            };
            let identity: Option<staging::Identity> =
                record.and_then(|b| serde_json::from_slice(&b).ok());
            let alive_here = identity
                .as_ref()
                .and_then(|i| i.alive_seen_from(&self.staging.identity));
            let is_dead = alive_here == Some(false) || meta.last_modified < lease_cutoff;
            if is_dead {
                dead.insert(id);
            }
        }

        let uploads_key = self.key("uploads");
        let staged: Vec<_> = self.inner.list(Some(&uploads_key)).try_collect().await?;
        let mut removed = 0;
        for meta in staged {
            let rel: Vec<String> = meta
                .location
                .prefix_match(&uploads_key)
                .map(|parts| parts.map(|p| p.as_ref().to_string()).collect())
                .unwrap_or_default();
            let remove = match rel.as_slice() {
                // `uploads/<owner>/<uuid>` of a dead owner: at once.
                [owner, _] if dead.contains(owner) => true,
                // Anything else by age: a live owner's upload whose client went away, an owner
                // without a marker, `uploads/<uuid>` of no owner.
                _ => meta.last_modified < cutoff,
            };
            if !remove {
                continue;
            }
            match self.inner.delete(&meta.location).await {
                Ok(()) => removed += 1,
                Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        for id in dead {
            match self.inner.delete(&self.owner_marker(&id)).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(removed)
    }

    /// Counts objects that are neither committed blobs nor anything else we know (for tests).
    pub async fn count_staged(&self) -> Result<usize, StoreError> {
        let items: Vec<_> = self
            .inner
            .list(Some(&self.key("uploads")))
            .try_collect()
            .await?;
        Ok(items.len())
    }
}

/// Bytes handed to the digest worker at once: one channel message and one wake-up per batch, not
/// per network read (actix delivers a request body in reads of at most 8 KiB).
const BATCH_BYTES: usize = 1024 * 1024;
/// Batches queued for the digest worker; bounds what an upload holds on top of its parts.
const BATCHES_IN_FLIGHT: usize = 8;

/// One streaming upload. Feed it with [`BlobUpload::write`]; [`BlobUpload::finish`] or
/// [`BlobUpload::abort`] it.
///
/// The sha256 runs on a blocking thread (the digest worker) beside the request's event loop, so
/// hashing overlaps with receiving. For local stores that thread also writes the staged file (and
/// syncs it before the upload counts as finished); for other stores the parts go out through
/// object_store from here.
pub struct BlobUpload {
    store: BlobStore,
    tmp: Path,
    size: u64,
    batch: Vec<Bytes>,
    batch_len: usize,
    tx: Option<tokio::sync::mpsc::Sender<Vec<Bytes>>>,
    /// The digest worker, until joined.
    worker: Option<tokio::task::JoinHandle<Result<String, StoreError>>>,
    /// Not used for local stores.
    remote: RemoteSink,
    /// `finish` or `abort` ran: nothing is left for `Drop` to clean up.
    settled: bool,
}

impl Drop for BlobUpload {
    /// An upload dropped half way (its request's client went away mid-body) removes what it
    /// staged, once its digest worker has let go of the file.
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        self.tx = None;
        let worker = self.worker.take();
        let multipart = self.remote.multipart.take();
        let store = self.store.clone();
        let tmp = std::mem::take(&mut self.tmp);
        spawn_cleanup(async move {
            if let Some(worker) = worker {
                let _ = worker.await;
            }
            if let Some(mp) = multipart {
                if let Err(e) = mp.abort().await {
                    tracing::warn!(error = %e, "could not abort a dropped multipart upload");
                }
            } else if store.is_local()
                && let Err(e) = store.inner.delete(&tmp).await
                && !matches!(e, object_store::Error::NotFound { .. })
            {
                tracing::warn!(key = %tmp, error = %e, "could not remove a dropped upload");
            }
        });
    }
}

/// Object-store side of an upload: small bodies go out in one `put`, larger ones as parts.
#[derive(Default)]
struct RemoteSink {
    buffer: BytesMut,
    multipart: Option<WriteMultipart>,
}

impl BlobUpload {
    fn start(store: BlobStore, tmp: Path) -> Self {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<Bytes>>(BATCHES_IN_FLIGHT);
        let file_path = store.local_path(&tmp);
        let worker = tokio::task::spawn_blocking(move || digest_worker(&mut rx, file_path));
        Self {
            store,
            tmp,
            size: 0,
            batch: Vec::new(),
            batch_len: 0,
            tx: Some(tx),
            worker: Some(worker),
            remote: RemoteSink::default(),
            settled: false,
        }
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends bytes; waits while the digest worker or the object store is behind.
    pub async fn write(&mut self, chunk: Bytes) -> Result<(), StoreError> {
        self.size += chunk.len() as u64;
        if !self.store.is_local() {
            self.remote.write(&self.store, &self.tmp, &chunk).await?;
        }
        self.batch_len += chunk.len();
        self.batch.push(chunk);
        if self.batch_len >= BATCH_BYTES {
            self.flush().await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), StoreError> {
        let batch = std::mem::take(&mut self.batch);
        self.batch_len = 0;
        let Some(tx) = self.tx.as_ref() else {
            return Err(StoreError::Corrupt(
                "upload written to after it failed or was closed".into(),
            ));
        };
        if tx.send(batch).await.is_err() {
            // The worker stopped early: its result says why.
            self.tx = None;
            return Err(match self.join_worker().await {
                Err(e) => e,
                Ok(_) => StoreError::Corrupt("digest worker ended early".into()),
            });
        }
        Ok(())
    }

    /// The digest worker's result (once; later calls are an error).
    async fn join_worker(&mut self) -> Result<String, StoreError> {
        match self.worker.take() {
            Some(worker) => worker
                .await
                .map_err(|e| StoreError::Corrupt(format!("digest worker failed: {e}")))?,
            None => Err(StoreError::Corrupt("digest worker already joined".into())),
        }
    }

    /// Completes the upload; the blob is staged, not yet visible.
    pub async fn finish(mut self) -> Result<StagedBlob, StoreError> {
        let sha256 = match self.digest().await {
            Ok(sha) => sha,
            Err(e) => {
                self.remove_staged().await;
                self.settled = true;
                return Err(e);
            }
        };
        if !self.store.is_local() {
            self.remote.finish(&self.store, &self.tmp).await?;
        }
        self.settled = true;
        Ok(StagedBlob {
            sha256,
            size: self.size,
            tmp: std::mem::take(&mut self.tmp),
            store: self.store.inner.clone(),
            discarded: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Sends what is left, closes the channel and waits for the hash.
    async fn digest(&mut self) -> Result<String, StoreError> {
        if !self.batch.is_empty() {
            self.flush().await?;
        }
        self.tx = None;
        self.join_worker().await
    }

    /// Abandons the upload and whatever was staged.
    pub async fn abort(mut self) {
        self.batch.clear();
        self.tx = None;
        let _ = self.join_worker().await;
        self.remove_staged().await;
        self.settled = true;
    }

    async fn remove_staged(&mut self) {
        if let Some(mp) = self.remote.multipart.take() {
            if let Err(e) = mp.abort().await {
                tracing::warn!(error = %e, "could not abort multipart upload");
            }
        } else if self.store.is_local()
            && let Err(e) = self.store.inner.delete(&self.tmp).await
            && !matches!(e, object_store::Error::NotFound { .. })
        {
            tracing::warn!(key = %self.tmp, error = %e, "could not remove staged upload");
        }
    }
}

/// Bytes written to a staged file between two background flushes.
const FLUSH_EVERY: u64 = 32 * 1024 * 1024;

/// A failure to write a staged upload: out of space is the disk's state, not corrupt data.
fn staging_error(what: &str, e: std::io::Error) -> StoreError {
    match e.kind() {
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded => {
            StoreError::NoSpace(format!("staging upload ({what}): {e}"))
        }
        _ => StoreError::Corrupt(format!("staging upload ({what}): {e}")),
    }
}

/// Hashes every batch and, for local stores, writes it to `file_path`. The file is synced before
/// the hash is returned; a helper thread flushes what was written every [`FLUSH_EVERY`] bytes
/// meanwhile, so the disk writes while the body is still arriving instead of all at the end.
fn digest_worker(
    rx: &mut tokio::sync::mpsc::Receiver<Vec<Bytes>>,
    file_path: Option<std::path::PathBuf>,
) -> Result<String, StoreError> {
    use std::io::Write;
    let io_err = |what: &str, e: std::io::Error| staging_error(what, e);
    let mut hasher = Sha256::new();
    let Some(path) = file_path else {
        while let Some(batch) = rx.blocking_recv() {
            batch.iter().for_each(|chunk| hasher.update(chunk));
        }
        return Ok(hex::encode(hasher.finalize()));
    };
    let mut file = create_staged_file(&path).map_err(|e| io_err("create", e))?;
    let flush_handle = file.try_clone().map_err(|e| io_err("open", e))?;
    std::thread::scope(|scope| {
        // One pending request at most: a flush syncs everything written before it started.
        let (flush_tx, flush_rx) = std::sync::mpsc::sync_channel::<()>(1);
        let flusher = scope.spawn(move || -> std::io::Result<()> {
            while flush_rx.recv().is_ok() {
                flush_handle.sync_data()?;
            }
            Ok(())
        });
        let mut unflushed: u64 = 0;
        let written: Result<(), StoreError> = (|| {
            while let Some(batch) = rx.blocking_recv() {
                for chunk in &batch {
                    hasher.update(chunk);
                    file.write_all(chunk).map_err(|e| io_err("write", e))?;
                    unflushed += chunk.len() as u64;
                }
                if unflushed >= FLUSH_EVERY {
                    let _ = flush_tx.try_send(());
                    unflushed = 0;
                }
            }
            Ok(())
        })();
        drop(flush_tx);
        let flushed = flusher
            .join()
            .map_err(|_| StoreError::Corrupt("staging upload: flush thread panicked".into()))?;
        written?;
        flushed.map_err(|e| io_err("sync", e))?;
        file.sync_data().map_err(|e| io_err("sync", e))
    })?;
    Ok(hex::encode(hasher.finalize()))
}

/// Creates a file, and its directory when missing. The store removes a directory with its last
/// file (automatic cleanup), which can happen between the two steps: then they are tried again.
fn create_staged_file(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    use std::io::ErrorKind::{AlreadyExists, NotFound};
    let mut attempts = 0;
    loop {
        // The object store removes the staging directory when a delete leaves it empty, in this
        // process or another: it can vanish between create_dir_all's attempt and its check
        // (then it fails with AlreadyExists) or before the file is created (NotFound). Retry.
        let created = match path.parent() {
            Some(dir) => std::fs::create_dir_all(dir).and_then(|()| std::fs::File::create(path)),
            None => std::fs::File::create(path),
        };
        match created {
            Err(e) if matches!(e.kind(), NotFound | AlreadyExists) && attempts < 10 => {
                attempts += 1
            }
            other => return other,
        }
    }
}

impl RemoteSink {
    async fn write(
        &mut self,
        store: &BlobStore,
        tmp: &Path,
        chunk: &[u8],
    ) -> Result<(), StoreError> {
        if let Some(mp) = self.multipart.as_mut() {
            mp.wait_for_capacity(PARTS_IN_FLIGHT).await?;
            mp.write(chunk);
            return Ok(());
        }
        self.buffer.extend_from_slice(chunk);
        if self.buffer.len() >= PART_SIZE {
            let upload = store.inner.put_multipart(tmp).await?;
            let mut mp = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
            mp.write(&std::mem::take(&mut self.buffer));
            self.multipart = Some(mp);
        }
        Ok(())
    }

    async fn finish(&mut self, store: &BlobStore, tmp: &Path) -> Result<(), StoreError> {
        match self.multipart.take() {
            Some(mp) => {
                mp.finish().await?;
            }
            None => {
                let body = std::mem::take(&mut self.buffer).freeze();
                store.inner.put(tmp, body.into()).await?;
            }
        }
        Ok(())
    }
}

/// Bytes read per blocking call when streaming a local file. object_store's own file stream reads
/// 8 KiB at a time, one blocking task each: downloads ran at a sixth of nginx's speed.
const FILE_CHUNK: u64 = 1024 * 1024;

/// Streams `range` of a local file in `FILE_CHUNK` reads on the blocking pool. Each chunk is read
/// into fresh, uninitialised capacity (`read_to_end` on a `File` does not zero it first; zeroing
/// cost about a sixth of a download's CPU).
fn file_stream(
    file: std::fs::File,
    range: Range<u64>,
) -> BoxStream<'static, Result<Bytes, StoreError>> {
    use std::io::{Read, Seek, SeekFrom};
    let file = Arc::new(file);
    futures::stream::try_unfold(range.start, move |pos| {
        let file = Arc::clone(&file);
        let end = range.end;
        async move {
            if pos >= end {
                return Ok(None);
            }
            let len = FILE_CHUNK.min(end - pos) as usize;
            let chunk = tokio::task::spawn_blocking(move || {
                let mut f = &*file;
                f.seek(SeekFrom::Start(pos))?;
                let mut buf = Vec::with_capacity(len);
                f.take(len as u64).read_to_end(&mut buf)?;
                if buf.len() < len {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "blob file is shorter than its recorded size",
                    ));
                }
                Ok(Bytes::from(buf))
            })
            .await
            .map_err(|e| StoreError::Corrupt(format!("blob read task failed: {e}")))?
            .map_err(|e| StoreError::Corrupt(format!("blob read failed: {e}")))?;
            Ok(Some((chunk, pos + len as u64)))
        }
    })
    .boxed()
}

/// Exports: plain copies of a version's files under a fixed key prefix, for servers that read a
/// directory of an object store rather than an API (LoRAX's `s3` source, docs/serving.md). They
/// live under `exports/`, which the sweeps never list (only `sha256/` and `uploads/`): an export
/// stays while its version lives and is left behind when it is deleted.
impl BlobStore {
    /// The `s3://bucket/<prefix>/<rel>` URL of a key of an `s3://` store; `None` for `file://`.
    pub fn s3_url(&self, rel: &str) -> Option<String> {
        let bucket = self.bucket.as_ref()?;
        Some(format!("s3://{bucket}/{}", self.key(rel)))
    }

    /// The bucket of an `s3://` store and the full key of `rel` in it; `None` for `file://`.
    pub fn s3_location(&self, rel: &str) -> Option<(String, String)> {
        Some((self.bucket.clone()?, self.key(rel).to_string()))
    }

    /// Makes `<dir>/<name>` a copy of blob `sha256` (`size` bytes) for each `(name, sha256,
    /// size)`, in order, copying only what is missing or of another size. Each object appears
    /// whole (a server-side copy on S3, a hard link renamed into place for `file://`), so
    /// concurrent calls for one export only copy identical bytes over each other. An export is
    /// complete once this returns; callers hand its location out only then.
    pub async fn ensure_export(
        &self,
        dir: &str,
        files: &[(&str, &str, u64)],
    ) -> Result<(), StoreError> {
        for (name, sha256, size) in files {
            let dest = self.key(&format!("{dir}/{name}"));
            match self.inner.head(&dest).await {
                Ok(meta) if meta.size == *size => continue,
                Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
            self.inner.copy(&self.content_key(sha256), &dest).await?;
        }
        Ok(())
    }

    /// The objects under `<dir>/` with their sizes (tests, checks).
    pub async fn list_export(&self, dir: &str) -> Result<Vec<(String, u64)>, StoreError> {
        let base = self.key(dir);
        let items: Vec<_> = self.inner.list(Some(&base)).try_collect().await?;
        Ok(items
            .into_iter()
            .filter_map(|m| {
                let rel: Vec<String> = m
                    .location
                    .prefix_match(&base)?
                    .map(|p| p.as_ref().to_string())
                    .collect();
                Some((rel.join("/"), m.size))
            })
            .collect())
    }
}

/// How long S3 requests may take: 5 s to connect, and 30 s without a byte (for the response
/// head after the request was sent, then between two reads of its body): a server that accepts
/// and never answers fails the request instead of holding it. No limit on a whole request: a
/// download streams at its client's pace (object_store's default cap of 30 s cut large ones).
fn s3_client_options() -> object_store::ClientOptions {
    object_store::ClientOptions::new()
        .with_connect_timeout(std::time::Duration::from_secs(5))
        .with_read_timeout(std::time::Duration::from_secs(30))
        .with_timeout_disabled()
        .with_allow_http(std::env::var("AWS_ALLOW_HTTP").is_ok_and(|v| v == "true"))
}

/// A store on the S3-compatible server at `endpoint` (`http://host:port`), with these
/// credentials: for tests that need a server of their own (one that never answers, say).
pub fn s3_store_at(
    endpoint: &str,
    bucket: &str,
    key_id: &str,
    secret: &str,
) -> Result<BlobStore, StoreError> {
    let inner = AmazonS3Builder::new()
        .with_bucket_name(bucket)
        .with_region("us-east-1")
        .with_access_key_id(key_id)
        .with_secret_access_key(secret)
        .with_retry(s3_retry())
        .with_client_options(s3_client_options())
        .with_endpoint(endpoint)
        .with_allow_http(endpoint.starts_with("http://"))
        .with_virtual_hosted_style_request(false)
        .build()?;
    Ok(BlobStore {
        inner: Arc::new(inner),
        prefix: Path::from("t"),
        bucket: Some(bucket.to_string()),
        local_root: None,
        description: format!("s3://{bucket}/t at {endpoint}"),
        staging: Arc::new(Staging::new()),
    })
}

/// How requests to S3 are retried: a few times within seconds (a dropped connection, a 503
/// from the server), then the request fails and the client gets 503 `storage_unavailable`
/// with `Retry-After`, instead of waiting minutes (object_store's default budget is 3 minutes)
/// while the store is down.
fn s3_retry() -> object_store::RetryConfig {
    object_store::RetryConfig {
        backoff: object_store::BackoffConfig {
            init_backoff: std::time::Duration::from_millis(100),
            max_backoff: std::time::Duration::from_secs(2),
            base: 2.0,
        },
        max_retries: 6,
        retry_timeout: std::time::Duration::from_secs(15),
    }
}

/// Drops credentials from a URL for logs.
fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            let _ = u.set_password(None);
            u.to_string()
        }
        Err(_) => "<invalid url>".into(),
    }
}

fn io_error(path: &std::path::Path, e: std::io::Error) -> StoreError {
    match e.kind() {
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded => {
            StoreError::NoSpace(format!("{}: {e}", path.display()))
        }
        _ => StoreError::Invalid(format!("cannot read {}: {e}", path.display())),
    }
}

/// sha256 and size of a local file, read in 1 MiB chunks off the async runtime.
async fn hash_file(path: &std::path::Path) -> Result<(String, u64), StoreError> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let mut file = std::fs::File::open(&path).map_err(|e| io_error(&path, e))?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; FILE_CHUNK as usize];
        let mut size = 0u64;
        loop {
            let n = file.read(&mut buf).map_err(|e| io_error(&path, e))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            size += n as u64;
        }
        Ok((hex::encode(hasher.finalize()), size))
    })
    .await
    .map_err(|e| StoreError::Corrupt(format!("hashing task failed: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A full disk while staging is the disk's state (the API answers 507), not corrupt data.
    #[test]
    fn a_full_disk_is_no_space_not_corruption() {
        for kind in [
            std::io::ErrorKind::StorageFull,
            std::io::ErrorKind::QuotaExceeded,
        ] {
            let e = staging_error("write", std::io::Error::from(kind));
            assert!(matches!(e, StoreError::NoSpace(_)), "{e:?}");
            let e = io_error(std::path::Path::new("x"), std::io::Error::from(kind));
            assert!(matches!(e, StoreError::NoSpace(_)), "{e:?}");
        }
        let e = staging_error("write", std::io::Error::other("bad sector"));
        assert!(matches!(e, StoreError::Corrupt(_)), "{e:?}");
    }
}
