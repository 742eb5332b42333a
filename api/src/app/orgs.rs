//! Organisations (docs/orgs.md): create one, read it and its members, add, change and remove
//! members, and move an adapter between namespaces. Who may see and write an organisation's
//! adapters is `quiver_store::Viewer` and `crate::auth::require_write`; who administers a
//! namespace is `crate::auth::administers`.

use quiver_store::{
    AuditContext, MemberRecord, NamespaceKind, OrgRecord, OrgRole, Principal, RepoId, Scope, Store,
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::administers;
use crate::error::{ApiError, ErrorCode};

/// The most members one listing returns (an organisation has at most `MAX_MEMBERS`).
pub const MEMBERS_PAGE: u32 = 1_000;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateOrgRequest {
    /// The namespace: a valid owner name, not taken by a user or an organisation.
    pub name: String,
    /// Its first admin (an unrestricted instance admin token only; default: the caller).
    pub admin: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetMemberRequest {
    /// `read`, `write` or `admin`.
    #[schema(value_type = String)]
    pub role: OrgRole,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TransferRequest {
    /// The namespace to move the adapter to (a user or an organisation).
    pub to: String,
}

#[derive(Serialize, ToSchema)]
pub struct MemberView {
    pub user: String,
    #[schema(value_type = String)]
    pub role: OrgRole,
    pub added_at: String,
    pub added_by: Option<String>,
}

impl From<MemberRecord> for MemberView {
    fn from(m: MemberRecord) -> Self {
        Self {
            user: m.user,
            role: m.role,
            added_at: quiver_store::time::rfc3339(m.added_at),
            added_by: m.added_by,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct OrgView {
    pub name: String,
    pub created_at: String,
    pub created_by: Option<String>,
    /// The caller's role, if a member.
    #[schema(value_type = Option<String>)]
    pub role: Option<OrgRole>,
    /// Members, by name (members and instance admins only; at most 1,000).
    pub members: Vec<MemberView>,
}

/// One organisation the caller belongs to.
#[derive(Serialize, ToSchema)]
pub struct MembershipView {
    pub org: String,
    #[schema(value_type = String)]
    pub role: OrgRole,
}

/// Members and unrestricted instance admins read an organisation; a restricted token only one
/// its list names.
fn sees_members(p: &Principal, org: &str) -> bool {
    match &p.restrict {
        None => p.scope == Scope::Admin || p.role_in(org).is_some(),
        Some(r) => r.namespaces.iter().any(|n| n == org) && p.role_in(org).is_some(),
    }
}

/// The organisation, if the caller is a member or an instance admin; everyone else gets the
/// answer a missing organisation gets.
pub async fn get(store: &Store, p: &Principal, org: &str) -> Result<OrgView, ApiError> {
    let record = store.meta.get_org(org).await?;
    match record {
        Some(o) if sees_members(p, org) => view(store, p, o).await,
        _ => Err(ApiError::not_found(
            ErrorCode::OrgNotFound,
            format!("organisation {org}"),
        )),
    }
}

async fn view(store: &Store, p: &Principal, o: OrgRecord) -> Result<OrgView, ApiError> {
    let members = store.meta.list_members(&o.name, MEMBERS_PAGE).await?;
    Ok(OrgView {
        role: p.role_in(&o.name),
        members: members.into_iter().map(MemberView::from).collect(),
        created_at: quiver_store::time::rfc3339(o.created_at),
        created_by: o.created_by,
        name: o.name,
    })
}

/// Creates an organisation. Any unrestricted write token may (its user becomes the first
/// admin); an unrestricted instance admin token may name another first admin.
pub async fn create(
    store: &Store,
    p: &Principal,
    req: CreateOrgRequest,
    ctx: &AuditContext,
) -> Result<OrgView, ApiError> {
    if p.scope == Scope::Read {
        return Err(ApiError::forbidden(
            "this token has the read scope; creating an organisation needs a write token",
        ));
    }
    if p.restrict.is_some() {
        return Err(ApiError::forbidden(
            "this token is restricted to some namespaces; creating an organisation needs an unrestricted token",
        ));
    }
    let admin = match req.admin.as_deref().map(str::trim) {
        None => p.user.clone(),
        Some(a) if a == p.user => p.user.clone(),
        Some(a) if p.scope == Scope::Admin => a.to_string(),
        Some(_) => {
            return Err(ApiError::forbidden(
                "only an instance admin token may name another user as the first admin",
            ));
        }
    };
    let name = req.name.trim();
    let record = store
        .meta
        .create_org_audited(name, &admin, Some(ctx))
        .await?;
    let mut p = p.clone();
    if admin == p.user {
        p.orgs.push(quiver_store::Membership {
            org: record.name.clone(),
            role: OrgRole::Admin,
        });
    }
    view(store, &p, record).await
}

/// The organisation `org`, checked to exist and to be administered by `p` (an org admin's
/// write token or an instance admin); anyone else who is not a member gets the missing answer.
async fn administered(store: &Store, p: &Principal, org: &str) -> Result<(), ApiError> {
    let exists = store.meta.get_org(org).await?.is_some();
    if !exists || !sees_members(p, org) && !administers(p, org) {
        return Err(ApiError::not_found(
            ErrorCode::OrgNotFound,
            format!("organisation {org}"),
        ));
    }
    if !administers(p, org) {
        return Err(ApiError::forbidden(format!(
            "only admins of the organisation {org} (with a write token) may change its members"
        )));
    }
    Ok(())
}

/// Adds a member or changes their role; `true` if anything changed.
pub async fn set_member(
    store: &Store,
    p: &Principal,
    org: &str,
    user: &str,
    role: OrgRole,
    ctx: &AuditContext,
) -> Result<bool, ApiError> {
    administered(store, p, org).await?;
    match store.meta.namespace_kind(user).await? {
        Some(NamespaceKind::User) => {}
        Some(NamespaceKind::Org) => {
            return Err(ApiError::coded(
                ErrorCode::InvalidRequest,
                format!("{user} is an organisation; members are users"),
            ));
        }
        None => {
            return Err(ApiError::coded(
                ErrorCode::NotFound,
                format!("user {user} was not found (invite them first: POST /api/v1/invites)"),
            ));
        }
    }
    Ok(store
        .meta
        .set_member_audited(org, user, role, Some(ctx))
        .await?)
}

/// Removes a member: an admin of the organisation, or the member themselves (leaving).
pub async fn remove_member(
    store: &Store,
    p: &Principal,
    org: &str,
    user: &str,
    ctx: &AuditContext,
) -> Result<bool, ApiError> {
    let leaving = user == p.user && p.scope != Scope::Read && p.role_in(org).is_some();
    if !leaving {
        administered(store, p, org).await?;
    }
    Ok(store
        .meta
        .remove_member_audited(org, user, Some(ctx))
        .await?)
}

/// The caller's organisations.
pub fn memberships(p: &Principal) -> Vec<MembershipView> {
    p.orgs
        .iter()
        .map(|m| MembershipView {
            org: m.org.clone(),
            role: m.role,
        })
        .collect()
}

/// Moves `from` to the namespace `to`, keeping its versions, revisions, aliases and lineage:
/// the caller must administer both namespaces. Upload proofs of the old name are dropped.
pub async fn transfer(
    state: &crate::state::AppState,
    p: &Principal,
    from: &quiver_store::AdapterRecord,
    to: &str,
    ctx: &AuditContext,
) -> Result<RepoId, ApiError> {
    let to = quiver_store::names::validate_owner("to", to.trim())?;
    for ns in [from.owner.as_str(), to.as_str()] {
        if !administers(p, ns) {
            return Err(ApiError::forbidden(format!(
                "moving {}/{} to {to} needs an admin of both namespaces; {} does not administer {ns}",
                from.owner, from.name, p.user
            )));
        }
    }
    if to == from.owner {
        return Err(ApiError::coded(
            ErrorCode::InvalidRequest,
            format!("{}/{} is already in {to}", from.owner, from.name),
        ));
    }
    let repo = RepoId {
        owner: from.owner.clone(),
        name: from.name.clone(),
    };
    state
        .store
        .meta
        .transfer_adapter_audited(&repo, &to, Some(ctx))
        .await?;
    crate::app::proofs::delete_proofs(state, from.id).await;
    Ok(RepoId {
        owner: to,
        name: from.name.clone(),
    })
}
