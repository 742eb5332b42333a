use thiserror::Error;

/// Every failure of the store, mapped once from the driver errors.
#[derive(Debug, Error)]
pub enum StoreError {
    #[error("{0}")]
    NotFound(String),
    /// A uniqueness rule held; the message is ours, never the database's text.
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Invalid(String),
    #[error("database error: {0}")]
    Database(#[source] sqlx::Error),
    #[error("migration failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    #[error("blob store error: {0}")]
    Blob(#[source] object_store::Error),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// A blob is missing from the object store: rows refer to content that is not there.
    #[error("blob {0} is missing")]
    BlobMissing(String),
    /// A worker's write was fenced off: its lease on the job expired or was taken over, or a
    /// cancel was requested.
    #[error("the job's lease is no longer held by this worker")]
    LeaseLost,
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::RowNotFound => StoreError::NotFound("no such row".into()),
            sqlx::Error::Database(db) if db.is_unique_violation() => {
                tracing::debug!(error = %db.message(), "unique violation");
                StoreError::Conflict("it already exists".into())
            }
            _ => StoreError::Database(e),
        }
    }
}

impl From<object_store::Error> for StoreError {
    fn from(e: object_store::Error) -> Self {
        match e {
            object_store::Error::NotFound { path, .. } => StoreError::BlobMissing(path),
            other => StoreError::Blob(other),
        }
    }
}

impl StoreError {
    /// True when the failure is the backend being unreachable rather than a bad request.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            StoreError::Database(sqlx::Error::PoolTimedOut | sqlx::Error::Io(_))
                | StoreError::Blob(_)
        )
    }
}
