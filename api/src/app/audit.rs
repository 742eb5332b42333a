//! Reading the audit log (docs/audit.md): instance admins (an unrestricted admin token) see every
//! entry; the administrator of a namespace (`crate::auth::administers`: its user, an admin of
//! the organisation) sees that namespace's entries with `owner=NS`; everyone else is refused.
//! Entries are written by the store's write methods, in the transaction of the change they
//! record; nothing here deletes them.

use quiver_store::{
    AdapterRecord, Audit, AuditAction, AuditContext, AuditFilter, AuditRecord, Page, Principal,
    Store,
};

use crate::error::{ApiError, ErrorCode};

/// The most entries one page holds.
pub const MAX_AUDIT_LIMIT: u32 = 200;
/// Entries per page when the client names no limit.
pub const DEFAULT_AUDIT_LIMIT: u32 = 50;
/// The longest actor or target filter accepted.
const MAX_FILTER_LEN: usize = 300;

/// What a client asks for, unchecked.
#[derive(Clone, Debug, Default)]
pub struct AuditQuery {
    pub actor: Option<String>,
    pub target: Option<String>,
    pub action: Option<String>,
    /// Only this owner namespace's entries; the one way a namespace administrator reads.
    pub owner: Option<String>,
    pub since: Option<i64>,
    pub until: Option<i64>,
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

/// Who may read, in words (the 403's message).
pub const READ_RULE: &str = "the audit log is read with an unrestricted admin token (every entry), \
     or with ?owner=NS by an administrator of namespace NS (its user's write token, or an admin \
     of the organisation NS)";

/// Whether `p` may read entries of `q` (see [`READ_RULE`]); the 403 otherwise.
pub fn may_read(p: &Principal, owner: Option<&str>) -> Result<(), ApiError> {
    if crate::app::tokens::manages_all(p) || owner.is_some_and(|o| crate::auth::administers(p, o)) {
        return Ok(());
    }
    Err(ApiError::coded(ErrorCode::Forbidden, READ_RULE))
}

/// One page of entries, newest first, for `p`.
pub async fn list(
    store: &Store,
    p: &Principal,
    q: AuditQuery,
) -> Result<Page<AuditRecord>, ApiError> {
    let owner = match q.owner.as_deref() {
        None => None,
        Some(o) => Some(
            quiver_store::names::validate_name("owner", o)
                .map_err(|e| ApiError::coded(ErrorCode::InvalidQuery, e.to_string()))?,
        ),
    };
    may_read(p, owner.as_deref())?;
    let limit = q.limit.unwrap_or(DEFAULT_AUDIT_LIMIT);
    if limit == 0 || limit > MAX_AUDIT_LIMIT {
        return Err(ApiError::coded(
            ErrorCode::InvalidQuery,
            format!("limit must be 1 to {MAX_AUDIT_LIMIT}, got {limit}"),
        ));
    }
    for (what, v) in [("actor", &q.actor), ("target", &q.target)] {
        if v.as_ref()
            .is_some_and(|v| v.is_empty() || v.len() > MAX_FILTER_LEN)
        {
            return Err(ApiError::coded(
                ErrorCode::InvalidQuery,
                format!("{what} must be 1 to {MAX_FILTER_LEN} characters"),
            ));
        }
    }
    let action = match q.action.as_deref() {
        None => None,
        Some(a) => Some(
            a.parse::<AuditAction>()
                .map_err(|e| ApiError::coded(ErrorCode::InvalidQuery, e.to_string()))?,
        ),
    };
    if let (Some(s), Some(u)) = (q.since, q.until)
        && s > u
    {
        return Err(ApiError::coded(
            ErrorCode::InvalidQuery,
            "since must not be after until",
        ));
    }
    if q.cursor.as_ref().is_some_and(|c| c.len() > 100) {
        return Err(ApiError::coded(ErrorCode::InvalidQuery, "cursor too long"));
    }
    let filter = AuditFilter {
        actor: q.actor,
        target: q.target,
        action,
        owner,
        since: q.since,
        until: q.until,
    };
    store
        .meta
        .list_audit(&filter, limit, q.cursor.as_deref())
        .await
        .map_err(|e| match e {
            quiver_store::StoreError::Invalid(m) => ApiError::coded(ErrorCode::InvalidQuery, m),
            other => other.into(),
        })
}

/// What an adapter entry's before/after shows: the fields a change can touch.
pub fn adapter_state(
    description: &str,
    private: bool,
    base_model: &str,
    tags: &[String],
) -> serde_json::Value {
    serde_json::json!({
        "description": description,
        "private": private,
        "base_model": base_model,
        "tags": tags,
    })
}

/// An adapter entry (target `owner/name`, scoped to `owner`).
pub fn adapter_audit(
    ctx: &AuditContext,
    action: AuditAction,
    owner: &str,
    name: &str,
    before: Option<serde_json::Value>,
    after: Option<serde_json::Value>,
) -> Audit {
    Audit {
        context: ctx.clone(),
        action,
        target: format!("{owner}/{name}"),
        owner: Some(owner.to_string()),
        before,
        after,
    }
}

/// The adapter entry of a record as it stands.
pub fn adapter_record_state(a: &AdapterRecord) -> serde_json::Value {
    adapter_state(&a.description, a.private, &a.base_model, &a.tags)
}
