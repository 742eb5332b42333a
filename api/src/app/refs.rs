//! The rule for user aliases (`prod`, `canary`): which names may point at a version.

use crate::error::{ApiError, ErrorCode};

/// Aliases follow the name rules; `main` and `v{N}` are reserved, and so is anything that reads
/// as a number or a revision.
pub fn check_alias(alias: &str) -> Result<String, ApiError> {
    let alias = quiver_store::validate_name("alias", alias)
        .map_err(|e| ApiError::coded(ErrorCode::InvalidAlias, e.to_string()))?;
    let reserved = alias == "main"
        || !matches!(
            quiver_store::VersionRef::parse(&alias),
            quiver_store::VersionRef::Alias(_)
        );
    if reserved {
        return Err(ApiError::coded(
            ErrorCode::InvalidAlias,
            format!(
                "{alias:?} is reserved: main, numbers, v<N> and 40-hex revisions name versions already"
            ),
        ));
    }
    Ok(alias)
}
