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
    /// The disk the store stages or keeps files on is full (or over its quota).
    #[error("no space left: {0}")]
    NoSpace(String),
    /// A worker's write was fenced off: its lease on the job expired or was taken over, or a
    /// cancel was requested.
    #[error("the job's lease is no longer held by this worker")]
    LeaseLost,
    /// An alias name that is protected, moved or deleted by a caller who does not administer
    /// the namespace (the alias name); nothing changed.
    #[error("alias {0} is protected")]
    AliasProtected(String),
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
        match self {
            StoreError::Blob(_) => true,
            StoreError::Database(e) => db_unavailable(e),
            _ => false,
        }
    }
}

/// Whether a database error means the server went away or refused service for now (a restart,
/// `pg_terminate_backend`, a full connection table), rather than a bad query.
fn db_unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::WorkerCrashed => true,
        // A connection that died mid-exchange reads as a protocol error.
        sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| unavailable_code(&code)),
        _ => false,
    }
}

/// PostgreSQL's connection-exception class (08…), operator intervention (57P01 admin shutdown,
/// 57P02 crash shutdown, 57P03 cannot connect now), too many connections (53300); SQLite's
/// SQLITE_BUSY and SQLITE_LOCKED (with their extended codes).
fn unavailable_code(code: &str) -> bool {
    if code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03" | "53300") {
        return true;
    }
    // SQLite's codes are numbers below 10000 (PostgreSQL's are five characters).
    code.len() < 5 && code.parse::<u32>().is_ok_and(|n| matches!(n & 0xff, 5 | 6))
}

#[cfg(test)]
mod tests {
    use super::unavailable_code;

    #[test]
    fn connection_loss_codes_are_unavailable_and_query_errors_are_not() {
        for c in [
            "57P01", "57P02", "57P03", "08006", "08003", "53300", "5", "517", "6",
        ] {
            assert!(unavailable_code(c), "{c}");
        }
        for c in [
            "23505", "42P01", "22P02", "40001", "19", "2067", "1", "23301",
        ] {
            assert!(!unavailable_code(c), "{c}");
        }
    }
}
