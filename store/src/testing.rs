//! Scratch storage for tests, on either backend.
//!
//! * `Backend::Sqlite`: a SQLite file and a local blob directory in a temp dir.
//! * `Backend::Postgres`: a fresh database on `QUIVER_TEST_POSTGRES_URL` (dropped with the guard)
//!   and a fresh prefix in the S3 bucket `QUIVER_TEST_S3_BUCKET` at `AWS_ENDPOINT_URL`.
//!   Without those variables this returns `None` (the test is skipped), unless
//!   `QUIVER_REQUIRE_POSTGRES=1`, which makes a missing configuration a failure.

use sqlx::{AssertSqlSafe, Connection, PgConnection};

use crate::StoreSettings;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Keeps scratch storage alive; dropping it removes the temp dir and the Postgres database.
pub struct Scratch {
    pub settings: StoreSettings,
    _dir: tempfile::TempDir,
    pg: Option<(String, String)>,
}

impl Scratch {
    /// A temporary directory that lives as long as the storage (for scratch files).
    pub fn dir(&self) -> &std::path::Path {
        self._dir.path()
    }

    /// Fresh storage, or `None` when the backend is not configured here.
    pub async fn new(backend: Backend) -> Option<Self> {
        let dir = tempfile::tempdir().expect("temp dir");
        match backend {
            Backend::Sqlite => Some(Self {
                settings: StoreSettings {
                    database_url: format!("sqlite://{}/quiver.db", dir.path().display()),
                    store_url: format!("file://{}/blobs", dir.path().display()),
                },
                _dir: dir,
                pg: None,
            }),
            Backend::Postgres => {
                let (Ok(admin), Ok(bucket)) = (
                    std::env::var("QUIVER_TEST_POSTGRES_URL"),
                    std::env::var("QUIVER_TEST_S3_BUCKET"),
                ) else {
                    assert!(
                        std::env::var("QUIVER_REQUIRE_POSTGRES").as_deref() != Ok("1"),
                        "QUIVER_REQUIRE_POSTGRES=1 but QUIVER_TEST_POSTGRES_URL / QUIVER_TEST_S3_BUCKET are not set"
                    );
                    eprintln!("skipped: Postgres + S3 not configured (run scripts/test.sh)");
                    return None;
                };
                let id = uuid::Uuid::new_v4().simple().to_string();
                let name = format!("quiver_t_{id}");
                let mut conn = PgConnection::connect(&admin)
                    .await
                    .expect("connect to QUIVER_TEST_POSTGRES_URL");
                sqlx::raw_sql(AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .execute(&mut conn)
                    .await
                    .expect("create database");
                let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
                Some(Self {
                    settings: StoreSettings {
                        database_url: format!("{base}/{name}"),
                        store_url: format!("s3://{bucket}/t-{id}"),
                    },
                    _dir: dir,
                    pg: Some((admin, name)),
                })
            }
        }
    }
}

/// A store on fresh scratch storage, or `None` when the backend is not configured here.
pub async fn open_store(backend: Backend) -> Option<(crate::Store, Scratch)> {
    let scratch = Scratch::new(backend).await?;
    let store = crate::Store::open(&scratch.settings)
        .await
        .expect("open store");
    Some((store, scratch))
}

/// `let (store, _scratch) = store_or_skip!(backend);` — returns from the test when the backend
/// is not configured here.
#[macro_export]
macro_rules! store_or_skip {
    ($backend:expr) => {
        match $crate::testing::open_store($backend).await {
            Some(s) => s,
            None => return,
        }
    };
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let Some((admin, name)) = self.pg.take() else {
            return;
        };
        // Drop runs inside the test's runtime: use a thread with its own.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                if let Ok(mut conn) = PgConnection::connect(&admin).await {
                    let _ = sqlx::raw_sql(AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                    )))
                    .execute(&mut conn)
                    .await;
                }
            });
        })
        .join();
    }
}
