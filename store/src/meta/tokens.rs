//! Users and tokens: [`TokenStore`].

use async_trait::async_trait;

use crate::{Scope, StoreError};

/// The owner of a valid token.
#[derive(Clone, Debug)]
pub struct Principal {
    pub user: String,
    pub scope: Scope,
    pub token_id: String,
}

/// Users and their API tokens.
#[async_trait]
pub trait TokenStore: Send + Sync {
    async fn count_users(&self) -> Result<i64, StoreError>;
    /// Creates the user if needed and a token for it; `secret_sha256` is the hashed secret.
    async fn create_token(
        &self,
        user: &str,
        scope: Scope,
        secret_sha256: &str,
    ) -> Result<String, StoreError>;
    /// The token's owner, if the hashed secret is known. Records the use.
    async fn authenticate(&self, secret_sha256: &str) -> Result<Option<Principal>, StoreError>;
}
