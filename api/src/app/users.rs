//! Users' lifecycle beyond their tokens (docs/tokens.md): an instance admin deactivates a
//! departed colleague — every token revoked, unused invites withdrawn, memberships ended, in one
//! transaction, effective on the next request everywhere — and may reactivate them later.

use quiver_store::{AuditContext, Deactivated, Principal, Store};
use serde::Serialize;
use utoipa::ToSchema;

use crate::app::tokens::manages_all;
use crate::error::{ApiError, ErrorCode};

/// What a deactivation did.
#[derive(Serialize, ToSchema)]
pub struct DeactivatedView {
    pub user: String,
    /// `false`: the user already was deactivated (nothing changed).
    pub changed: bool,
    pub tokens_revoked: u64,
    pub invites_withdrawn: u64,
    /// The organisations the user left.
    pub orgs_left: Vec<String>,
}

fn require_instance_admin(p: &Principal) -> Result<(), ApiError> {
    if manages_all(p) {
        Ok(())
    } else {
        Err(ApiError::forbidden(
            "deactivating or reactivating a user needs an unrestricted admin token",
        ))
    }
}

pub async fn deactivate(
    store: &Store,
    p: &Principal,
    user: &str,
    ctx: &AuditContext,
) -> Result<DeactivatedView, ApiError> {
    require_instance_admin(p)?;
    if user == p.user {
        return Err(ApiError::coded(
            ErrorCode::InvalidRequest,
            "an admin cannot deactivate themselves; ask another admin",
        ));
    }
    let done = store.meta.deactivate_user_audited(user, Some(ctx)).await?;
    let changed = done.is_some();
    let d = done.unwrap_or(Deactivated {
        tokens_revoked: 0,
        invites_withdrawn: 0,
        orgs_left: Vec::new(),
    });
    Ok(DeactivatedView {
        user: user.to_string(),
        changed,
        tokens_revoked: d.tokens_revoked,
        invites_withdrawn: d.invites_withdrawn,
        orgs_left: d.orgs_left,
    })
}

/// Reactivates a user; `true` if they were deactivated.
pub async fn reactivate(
    store: &Store,
    p: &Principal,
    user: &str,
    ctx: &AuditContext,
) -> Result<bool, ApiError> {
    require_instance_admin(p)?;
    Ok(store.meta.reactivate_user_audited(user, Some(ctx)).await?)
}
