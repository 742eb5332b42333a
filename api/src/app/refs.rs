//! User aliases (`prod`, `canary`): which names may point at a version, moving them (with
//! their `alias.moved` event), and protecting them (docs/protected-aliases.md): a protected name
//! is created, moved or deleted only by an admin of the adapter's namespace
//! (`crate::auth::administers`), checked by the store in the move's own transaction.

use quiver_store::{AdapterRecord, Audit, AuditAction, AuditContext, Principal, Store, StoreError};
use serde::Serialize;
use utoipa::ToSchema;

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

/// The refusal of a protected alias's move by `who`: 403 `alias_protected` naming the rule.
pub fn protected_error(adapter: &AdapterRecord, alias: &str) -> ApiError {
    ApiError::coded(
        ErrorCode::AliasProtected,
        format!(
            "alias {alias} of {} is protected: only admins of the namespace {} may move or delete it",
            adapter.repo_id(),
            adapter.owner
        ),
    )
}

/// A store error of an alias change: a protected name becomes [`protected_error`].
fn change_error(adapter: &AdapterRecord, alias: &str, e: StoreError) -> ApiError {
    match e {
        StoreError::AliasProtected(_) => protected_error(adapter, alias),
        e => e.into(),
    }
}

/// Points a checked alias at version `number` (REST and the Hub's tags) as `who`, and records
/// `alias.moved` when it moved. A protected name needs `who` to administer the namespace.
pub async fn set_alias(
    store: &Store,
    adapter: &AdapterRecord,
    alias: &str,
    number: i64,
    who: &Principal,
    ctx: &AuditContext,
) -> Result<(), ApiError> {
    // `before` is filled by the store from its own transaction.
    let entry = alias_audit(ctx, AuditAction::AliasSet, adapter, alias, Some(number));
    let change = store
        .meta
        .set_alias_audited(
            adapter.id,
            alias,
            number,
            crate::auth::administers(who, &adapter.owner),
            Some(&entry),
        )
        .await
        .map_err(|e| change_error(adapter, alias, e))?;
    if change.from.as_ref() != Some(&change.to) {
        crate::events::alias_moved(store, adapter, alias, change.from, Some(change.to)).await;
    }
    Ok(())
}

/// Removes an alias as `who` (`false`: there was none) and records `alias.moved` with
/// `to: null`. A protected name needs `who` to administer the namespace (refused even when no
/// alias of that name exists); its protection stays.
pub async fn delete_alias(
    store: &Store,
    adapter: &AdapterRecord,
    alias: &str,
    who: &Principal,
    ctx: &AuditContext,
) -> Result<bool, ApiError> {
    let entry = alias_audit(ctx, AuditAction::AliasDelete, adapter, alias, None);
    let deleted = store
        .meta
        .delete_alias_audited(
            adapter.id,
            alias,
            crate::auth::administers(who, &adapter.owner),
            Some(&entry),
        )
        .await
        .map_err(|e| change_error(adapter, alias, e))?;
    let existed = deleted.is_some();
    if let Some(from) = deleted {
        crate::events::alias_moved(store, adapter, alias, Some(from), None).await;
    }
    Ok(existed)
}

/// The audit entry of an alias change: target `owner/name@alias`, after `{"version": N}` (`null`
/// for a deletion); the store sets `before` from the change's own transaction.
fn alias_audit(
    ctx: &AuditContext,
    action: AuditAction,
    adapter: &AdapterRecord,
    alias: &str,
    after: Option<i64>,
) -> Audit {
    Audit {
        context: ctx.clone(),
        action,
        target: format!("{}/{}@{alias}", adapter.owner, adapter.name),
        owner: Some(adapter.owner.clone()),
        before: None,
        after: after.map(|n| serde_json::json!({ "version": n })),
    }
}

/// Protects or unprotects the alias name `alias` of `adapter` as `who`, who must administer its
/// namespace (403 `forbidden` naming the rule otherwise). Returns whether it changed; a change
/// appends `alias.protect` in its transaction. The alias need not exist: a protected name can
/// be reserved before it is first set.
pub async fn set_protection(
    store: &Store,
    adapter: &AdapterRecord,
    alias: &str,
    protected: bool,
    who: &Principal,
    ctx: &AuditContext,
) -> Result<bool, ApiError> {
    if !crate::auth::administers(who, &adapter.owner) {
        return Err(ApiError::forbidden(format!(
            "only admins of the namespace {} may protect or unprotect its aliases",
            adapter.owner
        )));
    }
    Ok(store
        .meta
        .set_alias_protection(adapter, alias, protected, Some(ctx))
        .await?)
}

/// One alias name of an adapter: an alias, a protected name, or both.
#[derive(Serialize, ToSchema)]
pub struct RefView {
    pub name: String,
    /// The version it points at; null for a protected name with no alias now.
    pub version: Option<i64>,
    /// Only admins of the namespace may create, move or delete it.
    pub protected: bool,
}

#[derive(Serialize, ToSchema)]
pub struct RefList {
    /// By name.
    pub items: Vec<RefView>,
}

/// The aliases of `adapter` and its protected names, by name.
pub async fn list_refs(store: &Store, adapter: &AdapterRecord) -> Result<RefList, ApiError> {
    let mut by_name: std::collections::BTreeMap<String, RefView> = store
        .meta
        .aliases(&[adapter.id])
        .await?
        .into_iter()
        .map(|(_, name, number)| {
            let view = RefView {
                name: name.clone(),
                version: Some(number),
                protected: false,
            };
            (name, view)
        })
        .collect();
    for (_, name) in store.meta.protected_aliases(&[adapter.id]).await? {
        by_name
            .entry(name.clone())
            .or_insert(RefView {
                name,
                version: None,
                protected: false,
            })
            .protected = true;
    }
    Ok(RefList {
        items: by_name.into_values().collect(),
    })
}

/// Whether `alias` is a protected name of `adapter`.
pub async fn is_protected(
    store: &Store,
    adapter: &AdapterRecord,
    alias: &str,
) -> Result<bool, ApiError> {
    Ok(store
        .meta
        .protected_aliases(&[adapter.id])
        .await?
        .iter()
        .any(|(_, name)| name == alias))
}
