/// Where the metadata and the blobs live.
#[derive(Clone, Debug)]
pub struct StoreSettings {
    /// `sqlite://path/to/quiver.db` or `postgres://user@host/db`.
    pub database_url: String,
    /// `file:///abs/path` or `s3://bucket/prefix` (credentials and endpoint from `AWS_*`).
    pub store_url: String,
}
