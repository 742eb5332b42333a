//! User aliases (`prod`, `canary`): which names may point at a version, and moving them (with
//! their `alias.moved` event).

use quiver_store::{AdapterRecord, Audit, AuditAction, AuditContext, Store, VersionRef};

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

/// The `(version, revision)` an alias points at now, if any.
async fn alias_target(
    store: &Store,
    adapter: &AdapterRecord,
    alias: &str,
) -> Result<Option<(i64, String)>, ApiError> {
    Ok(store
        .meta
        .get_version(adapter.id, &VersionRef::Alias(alias.to_string()))
        .await?
        .map(|v| (v.number, v.revision)))
}

/// Points a checked alias at version `number` (REST and the Hub's tags) and records
/// `alias.moved` when it moved.
pub async fn set_alias(
    store: &Store,
    adapter: &AdapterRecord,
    alias: &str,
    number: i64,
    ctx: &AuditContext,
) -> Result<(), ApiError> {
    let from = alias_target(store, adapter, alias).await?;
    let entry = alias_audit(
        ctx,
        AuditAction::AliasSet,
        adapter,
        alias,
        from.as_ref().map(|f| f.0),
        Some(number),
    );
    store
        .meta
        .set_alias_audited(adapter.id, alias, number, Some(&entry))
        .await?;
    let to = alias_target(store, adapter, alias).await?;
    if from != to {
        crate::events::alias_moved(store, adapter, alias, from, to).await;
    }
    Ok(())
}

/// Removes an alias (`false`: there was none) and records `alias.moved` with `to: null`.
pub async fn delete_alias(
    store: &Store,
    adapter: &AdapterRecord,
    alias: &str,
    ctx: &AuditContext,
) -> Result<bool, ApiError> {
    let from = alias_target(store, adapter, alias).await?;
    let entry = alias_audit(
        ctx,
        AuditAction::AliasDelete,
        adapter,
        alias,
        from.as_ref().map(|f| f.0),
        None,
    );
    let deleted = store
        .meta
        .delete_alias_audited(adapter.id, alias, Some(&entry))
        .await?;
    if deleted {
        crate::events::alias_moved(store, adapter, alias, from, None).await;
    }
    Ok(deleted)
}

/// The audit entry of an alias change: target `owner/name@alias`, before/after `{"version": N}`
/// (`null` where there was or is none). `before` is read just ahead of the change's transaction.
fn alias_audit(
    ctx: &AuditContext,
    action: AuditAction,
    adapter: &AdapterRecord,
    alias: &str,
    before: Option<i64>,
    after: Option<i64>,
) -> Audit {
    let version = |n: Option<i64>| n.map(|n| serde_json::json!({ "version": n }));
    Audit {
        context: ctx.clone(),
        action,
        target: format!("{}/{}@{alias}", adapter.owner, adapter.name),
        owner: Some(adapter.owner.clone()),
        before: version(before),
        after: version(after),
    }
}
