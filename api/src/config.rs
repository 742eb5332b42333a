//! Configuration: every flag has an environment variable; defaults need no set-up.

use std::path::PathBuf;

use clap::Args;
use quiver_store::StoreSettings;

/// Default upper bound of one upload: 4 GiB.
pub const DEFAULT_MAX_UPLOAD_BYTES: u64 = 4 * 1024 * 1024 * 1024;

/// Where metadata and blobs live (shared by every subcommand that touches storage).
#[derive(Args, Clone, Debug)]
pub struct StorageArgs {
    /// Directory for the default SQLite database and blob store.
    #[arg(long, env = "QUIVER_DATA_DIR", default_value = "./quiver-data")]
    pub data_dir: PathBuf,
    /// `sqlite://PATH` or `postgres://…` [default: sqlite://<data-dir>/quiver.db]
    #[arg(long, env = "QUIVER_DATABASE_URL")]
    pub database_url: Option<String>,
    /// `file:///ABS/DIR` or `s3://bucket/prefix` (AWS_* variables, AWS_ENDPOINT_URL) [default: file://<data-dir>/blobs]
    #[arg(long, env = "QUIVER_STORE_URL")]
    pub store_url: Option<String>,
}

impl StorageArgs {
    pub fn resolve(&self) -> std::io::Result<StoreSettings> {
        let needs_dir = self.database_url.is_none() || self.store_url.is_none();
        if needs_dir {
            std::fs::create_dir_all(&self.data_dir)?;
        }
        let data_dir = if needs_dir {
            std::fs::canonicalize(&self.data_dir)?
        } else {
            self.data_dir.clone()
        };
        Ok(StoreSettings {
            database_url: self
                .database_url
                .clone()
                .unwrap_or_else(|| format!("sqlite://{}", data_dir.join("quiver.db").display())),
            store_url: self
                .store_url
                .clone()
                .unwrap_or_else(|| format!("file://{}", data_dir.join("blobs").display())),
        })
    }
}

/// Default budget of the adapter-listing cache: 32 MiB of serialized pages.
pub const DEFAULT_LIST_CACHE_BYTES: u64 = 32 * 1024 * 1024;

/// Settings of the HTTP server.
#[derive(Clone, Debug)]
pub struct ServerSettings {
    pub bind: String,
    pub store: StoreSettings,
    pub http: HttpOptions,
}

/// How the HTTP service behaves, apart from where it listens and stores.
#[derive(Clone, Debug)]
pub struct HttpOptions {
    /// Largest accepted upload (the sum of its files), in bytes.
    pub max_upload_bytes: u64,
    /// Bytes of serialized listing pages to keep; 0 turns the cache off.
    pub list_cache_bytes: u64,
    /// HTTP worker threads; `None` is one per CPU.
    pub workers: Option<usize>,
}

impl Default for HttpOptions {
    fn default() -> Self {
        Self {
            max_upload_bytes: DEFAULT_MAX_UPLOAD_BYTES,
            list_cache_bytes: DEFAULT_LIST_CACHE_BYTES,
            workers: None,
        }
    }
}
