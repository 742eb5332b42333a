//! Organisations (docs/orgs.md): an owner namespace is a user or an organisation, one table of
//! names so the two never collide. Members hold a role; tokens are made only for users.

use async_trait::async_trait;

use super::AuditContext;
use crate::{RepoId, StoreError};

string_enum!(
    /// A member's role in an organisation: `read` sees its private adapters, `write` also
    /// publishes to them, `admin` also manages members, protected aliases and transfers.
    OrgRole {
        Read = "read",
        Write = "write",
        Admin = "admin",
    }
);

impl OrgRole {
    fn rank(self) -> u8 {
        match self {
            OrgRole::Read => 0,
            OrgRole::Write => 1,
            OrgRole::Admin => 2,
        }
    }

    /// Whether this role grants at least what `other` does.
    pub fn at_least(self, other: OrgRole) -> bool {
        self.rank() >= other.rank()
    }
}

/// What a namespace name is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NamespaceKind {
    User,
    Org,
}

/// One organisation a user belongs to, and the role held there.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Membership {
    pub org: String,
    pub role: OrgRole,
}

/// An organisation.
#[derive(Clone, Debug)]
pub struct OrgRecord {
    pub name: String,
    pub created_at: i64,
    pub created_by: Option<String>,
}

/// A member of an organisation.
#[derive(Clone, Debug)]
pub struct MemberRecord {
    pub user: String,
    pub role: OrgRole,
    pub added_at: i64,
    pub added_by: Option<String>,
}

/// What a deactivation took away.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Deactivated {
    pub tokens_revoked: u64,
    pub invites_withdrawn: u64,
    /// The organisations they left, by name.
    pub orgs_left: Vec<String>,
}

/// The most members one organisation may have (every member's organisations travel with each
/// of their requests, so both sides are bounded).
pub const MAX_MEMBERS: i64 = 10_000;
/// The most organisations one user may belong to.
pub const MAX_ORGS_PER_USER: i64 = 100;

#[async_trait]
pub trait OrgStore: Send + Sync {
    /// Whether `name` is a user, an organisation, or neither.
    async fn namespace_kind(&self, name: &str) -> Result<Option<NamespaceKind>, StoreError>;
    /// Creates the user if there is no such namespace yet; `true` if it was created. Refused
    /// (`Conflict`) when the name is an organisation.
    async fn ensure_user(&self, user: &str) -> Result<bool, StoreError>;
    /// Creates the organisation with `first_admin` (an existing user) as its admin, appending
    /// `org.create` by `audit` in the same transaction. Refused (`Conflict`) when the name is
    /// taken by a user or an organisation, or already owns adapters.
    async fn create_org_audited(
        &self,
        name: &str,
        first_admin: &str,
        audit: Option<&AuditContext>,
    ) -> Result<OrgRecord, StoreError>;
    async fn get_org(&self, name: &str) -> Result<Option<OrgRecord>, StoreError>;
    /// Members, by name, at most `limit`.
    async fn list_members(&self, org: &str, limit: u32) -> Result<Vec<MemberRecord>, StoreError>;
    /// The organisations `user` belongs to, by name.
    async fn memberships(&self, user: &str) -> Result<Vec<Membership>, StoreError>;
    /// The user's organisations if they are an active user; `None` when there is no such user
    /// or they are deactivated (one query, for sign-ins that hold no token to revoke).
    async fn active_memberships(&self, user: &str) -> Result<Option<Vec<Membership>>, StoreError>;
    /// Adds `user` (an existing user) to `org` or changes their role; `member.set` by `audit`
    /// (before/after: the role) in the same transaction. No entry and `false` when the role was
    /// already that. Refused (`Conflict`) when it would leave the organisation without an admin.
    async fn set_member_audited(
        &self,
        org: &str,
        user: &str,
        role: OrgRole,
        audit: Option<&AuditContext>,
    ) -> Result<bool, StoreError>;
    /// Removes `user` from `org`; `member.remove` by `audit` in the same transaction; `false`
    /// (and no entry) if they were not a member. Refused (`Conflict`) for the last admin.
    async fn remove_member_audited(
        &self,
        org: &str,
        user: &str,
        audit: Option<&AuditContext>,
    ) -> Result<bool, StoreError>;
    /// Deactivates the user (a departed colleague): in one transaction, marks them deactivated,
    /// revokes every live token, withdraws unused invites and ends every membership, appending
    /// one `user.deactivate` entry (after: what was revoked and left). `NotFound` for no such
    /// user; `Conflict` when they are the last admin of an organisation (hand it over first);
    /// `None` (and no entry) when they already were deactivated.
    async fn deactivate_user_audited(
        &self,
        user: &str,
        audit: Option<&AuditContext>,
    ) -> Result<Option<Deactivated>, StoreError>;
    /// Lets a deactivated user have tokens again (their old tokens stay revoked); `false` (and no
    /// entry) if they were not deactivated.
    async fn reactivate_user_audited(
        &self,
        user: &str,
        audit: Option<&AuditContext>,
    ) -> Result<bool, StoreError>;
    /// Moves the adapter `from` to the namespace `to_owner` (an existing user or organisation),
    /// keeping its id, versions, revisions, aliases and lineage; `adapter.transfer` by `audit`
    /// in the same transaction. `NotFound` when there is no such adapter, `Conflict` when the
    /// target already has an adapter of that name.
    async fn transfer_adapter_audited(
        &self,
        from: &RepoId,
        to_owner: &str,
        audit: Option<&AuditContext>,
    ) -> Result<(), StoreError>;
}
