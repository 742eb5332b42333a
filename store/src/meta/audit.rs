//! The audit log (docs/audit.md): entries appended by the write methods inside the transaction of
//! the change they record, and read back by instance admins.

use async_trait::async_trait;
use serde_json::Value;

use super::Page;
use crate::StoreError;

string_enum!(
    /// What was done (a closed set).
    AuditAction {
        AdapterCreate = "adapter.create",
        AdapterUpdate = "adapter.update",
        AdapterDelete = "adapter.delete",
        VersionPublish = "version.publish",
        AliasSet = "alias.set",
        AliasDelete = "alias.delete",
        JobSubmit = "job.submit",
        JobCancel = "job.cancel",
        TokenCreate = "token.create",
        TokenRevoke = "token.revoke",
        InviteCreate = "invite.create",
        InviteRedeem = "invite.redeem",
        Signin = "signin",
        AdapterTransfer = "adapter.transfer",
        AliasProtect = "alias.protect",
        OrgCreate = "org.create",
        MemberSet = "member.set",
        MemberRemove = "member.remove",
        WebhookCreate = "webhook.create",
        WebhookUpdate = "webhook.update",
        WebhookDelete = "webhook.delete",
        UserDeactivate = "user.deactivate",
        UserReactivate = "user.reactivate",
    }
);

/// Who did it and from where: built by the service from the caller and the request, then
/// completed by the write method (action, target, before/after) before it is appended.
#[derive(Clone, Debug, Default)]
pub struct AuditContext {
    pub actor: Option<String>,
    /// The token's public id, never its secret.
    pub token_id: Option<String>,
    pub request_id: Option<String>,
    pub client_addr: Option<String>,
}

/// One entry to append.
#[derive(Clone, Debug)]
pub struct Audit {
    pub context: AuditContext,
    pub action: AuditAction,
    /// `owner/name`, `owner/name@alias`, a job id or a token id.
    pub target: String,
    /// The owner namespace the target lives in (for scoping), if any.
    pub owner: Option<String>,
    pub before: Option<Value>,
    pub after: Option<Value>,
}

/// A stored entry.
#[derive(Clone, Debug, serde::Serialize)]
pub struct AuditRecord {
    pub id: i64,
    pub at: i64,
    pub actor: Option<String>,
    pub token_id: Option<String>,
    pub action: String,
    pub target: String,
    pub owner: Option<String>,
    pub before: Option<Value>,
    pub after: Option<Value>,
    pub request_id: Option<String>,
    pub client_addr: Option<String>,
}

/// Filters of a listing; entries come newest first (by id).
#[derive(Clone, Debug, Default)]
pub struct AuditFilter {
    pub actor: Option<String>,
    /// Exact target, or a prefix when it ends in `/` (`alice/` matches `alice/x` and `alice/x@prod`).
    pub target: Option<String>,
    pub action: Option<AuditAction>,
    /// Only entries of this owner namespace (the `owner` column: the adapter's owner, a token's
    /// or an invite's user, a job's submitter).
    pub owner: Option<String>,
    pub since: Option<i64>,
    pub until: Option<i64>,
}

/// Entries one retention statement deletes at most ([`AuditStore::prune_audit_batch`]): each
/// batch is its own short statement, so a large prune never holds a long lock.
pub const AUDIT_PRUNE_BATCH: u32 = 5_000;

#[async_trait]
pub trait AuditStore: Send + Sync {
    /// Appends one entry on its own (for changes that have no transaction of their own).
    async fn append_audit(&self, entry: &Audit) -> Result<(), StoreError>;
    async fn list_audit(
        &self,
        filter: &AuditFilter,
        limit: u32,
        cursor: Option<&str>,
    ) -> Result<Page<AuditRecord>, StoreError>;
    /// Deletes, in one statement, those of the `limit` oldest entries (by id) that are older
    /// than `before_ms`; the number deleted. Fewer than `limit` deleted: nothing older is left
    /// (as far as `at` grows with `id`; an entry appended out of clock order may wait for a
    /// later prune).
    async fn prune_audit_batch(&self, before_ms: i64, limit: u32) -> Result<u64, StoreError>;
    /// Deletes entries older than `before_ms` (retention) in batches of [`AUDIT_PRUNE_BATCH`],
    /// each its own statement; the number deleted.
    async fn prune_audit(&self, before_ms: i64) -> Result<u64, StoreError> {
        let mut total = 0;
        loop {
            let n = self.prune_audit_batch(before_ms, AUDIT_PRUNE_BATCH).await?;
            total += n;
            if n < u64::from(AUDIT_PRUNE_BATCH) {
                return Ok(total);
            }
        }
    }
}
