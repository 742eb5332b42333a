//! [`OrgStore`] over sqlx `Any`.

use async_trait::async_trait;
use sqlx::Row;

use crate::RepoId;

use super::*;
use crate::meta::orgs::{
    Deactivated, MAX_MEMBERS, MAX_ORGS_PER_USER, MemberRecord, Membership, NamespaceKind,
    OrgRecord, OrgRole, OrgStore,
};

type Tx = sqlx::Transaction<'static, sqlx::Any>;

async fn kind_in(tx: &mut Tx, name: &str) -> Result<Option<NamespaceKind>, StoreError> {
    let kind: Option<String> = sqlx::query("SELECT kind FROM users WHERE name = $1")
        .bind(name)
        .fetch_optional(&mut **tx)
        .await?
        .map(|r| r.try_get("kind"))
        .transpose()?;
    Ok(kind.map(|k| match k.as_str() {
        "org" => NamespaceKind::Org,
        _ => NamespaceKind::User,
    }))
}

/// Whether the user `user` is deactivated (`None`: no such user).
async fn disabled_in(tx: &mut Tx, user: &str) -> Result<Option<bool>, StoreError> {
    let row = sqlx::query("SELECT disabled_at FROM users WHERE name = $1 AND kind = 'user'")
        .bind(user)
        .fetch_optional(&mut **tx)
        .await?;
    row.map(|r| Ok(r.try_get::<Option<i64>, _>("disabled_at")?.is_some()))
        .transpose()
}

/// The role `user` holds in `org`, read inside `tx`.
async fn role_in(tx: &mut Tx, org: &str, user: &str) -> Result<Option<OrgRole>, StoreError> {
    let role: Option<String> =
        sqlx::query("SELECT role FROM org_members WHERE org = $1 AND user_name = $2")
            .bind(org)
            .bind(user)
            .fetch_optional(&mut **tx)
            .await?
            .map(|r| r.try_get("role"))
            .transpose()?;
    role.map(|r| r.parse()).transpose()
}

/// Locks the organisation's row (Postgres; SQLite's write transaction already excludes other
/// writers) and checks it is one; membership changes of one organisation then run one at a time,
/// so two demotions cannot both see the other admin.
async fn lock_org(tx: &mut Tx, org: &str) -> Result<(), StoreError> {
    let n =
        sqlx::query("UPDATE users SET created_at = created_at WHERE name = $1 AND kind = 'org'")
            .bind(org)
            .execute(&mut **tx)
            .await?
            .rows_affected();
    if n == 0 {
        return Err(StoreError::NotFound(format!("organisation {org}")));
    }
    Ok(())
}

async fn count(tx: &mut Tx, sql: &'static str, key: &str) -> Result<i64, StoreError> {
    Ok(sqlx::query(sql)
        .bind(key)
        .fetch_one(&mut **tx)
        .await?
        .try_get("n")?)
}

async fn admins_left(tx: &mut Tx, org: &str, without: &str) -> Result<i64, StoreError> {
    Ok(sqlx::query(
        "SELECT COUNT(*) AS n FROM org_members WHERE org = $1 AND role = $2 AND user_name <> $3",
    )
    .bind(org)
    .bind(OrgRole::Admin.as_str())
    .bind(without)
    .fetch_one(&mut **tx)
    .await?
    .try_get("n")?)
}

fn entry(
    ctx: &AuditContext,
    action: AuditAction,
    target: String,
    owner: &str,
    before: Option<Value>,
    after: Option<Value>,
) -> Audit {
    Audit {
        context: ctx.clone(),
        action,
        target,
        owner: Some(owner.to_string()),
        before,
        after,
    }
}

#[async_trait]
impl OrgStore for SqlMetadata {
    async fn namespace_kind(&self, name: &str) -> Result<Option<NamespaceKind>, StoreError> {
        let kind: Option<String> = sqlx::query("SELECT kind FROM users WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?
            .map(|r| r.try_get("kind"))
            .transpose()?;
        Ok(kind.map(|k| match k.as_str() {
            "org" => NamespaceKind::Org,
            _ => NamespaceKind::User,
        }))
    }

    async fn ensure_user(&self, user: &str) -> Result<bool, StoreError> {
        let user = crate::names::validate_owner("user name", user)?;
        let mut tx = self.begin_write().await?;
        let created = ensure_user_in(&mut tx, &user).await?;
        tx.commit().await?;
        Ok(created)
    }

    async fn create_org_audited(
        &self,
        name: &str,
        first_admin: &str,
        audit: Option<&AuditContext>,
    ) -> Result<OrgRecord, StoreError> {
        let name = crate::names::validate_owner("organisation name", name)?;
        let mut tx = self.begin_write().await?;
        if kind_in(&mut tx, &name).await?.is_some() {
            return Err(StoreError::Conflict(format!(
                "the namespace {name} is taken by a user or an organisation"
            )));
        }
        if kind_in(&mut tx, first_admin).await? != Some(NamespaceKind::User) {
            return Err(StoreError::NotFound(format!("user {first_admin}")));
        }
        let owned = count(
            &mut tx,
            "SELECT COUNT(*) AS n FROM adapters WHERE owner = $1",
            &name,
        )
        .await?;
        if owned > 0 {
            return Err(StoreError::Conflict(format!(
                "the namespace {name} already holds {owned} adapters without a user or organisation"
            )));
        }
        if count(
            &mut tx,
            "SELECT COUNT(*) AS n FROM org_members WHERE user_name = $1",
            first_admin,
        )
        .await?
            >= MAX_ORGS_PER_USER
        {
            return Err(StoreError::Conflict(format!(
                "user {first_admin} already belongs to {MAX_ORGS_PER_USER} organisations, the most allowed"
            )));
        }
        let now = now_ms();
        let by = audit.and_then(|a| a.actor.clone());
        sqlx::query(
            "INSERT INTO users (name, created_at, kind, created_by) VALUES ($1, $2, 'org', $3)",
        )
        .bind(name.as_str())
        .bind(now)
        .bind(by.clone())
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO org_members (org, user_name, role, added_at, added_by) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(name.as_str())
        .bind(first_admin)
        .bind(OrgRole::Admin.as_str())
        .bind(now)
        .bind(by.clone())
        .execute(&mut *tx)
        .await?;
        if let Some(ctx) = audit {
            let after = serde_json::json!({ "admin": first_admin });
            super::audit::append_audit(
                &mut tx,
                &entry(
                    ctx,
                    AuditAction::OrgCreate,
                    name.clone(),
                    &name,
                    None,
                    Some(after),
                ),
            )
            .await?;
        }
        tx.commit().await?;
        Ok(OrgRecord {
            name,
            created_at: now,
            created_by: by,
        })
    }

    async fn get_org(&self, name: &str) -> Result<Option<OrgRecord>, StoreError> {
        sqlx::query(
            "SELECT name, created_at, created_by FROM users WHERE name = $1 AND kind = 'org'",
        )
        .bind(name)
        .fetch_optional(&self.pool)
        .await?
        .map(|r| {
            Ok(OrgRecord {
                name: r.try_get("name")?,
                created_at: r.try_get("created_at")?,
                created_by: r.try_get("created_by")?,
            })
        })
        .transpose()
    }

    async fn list_members(&self, org: &str, limit: u32) -> Result<Vec<MemberRecord>, StoreError> {
        sqlx::query(
            "SELECT user_name, role, added_at, added_by FROM org_members WHERE org = $1 \
             ORDER BY user_name LIMIT $2",
        )
        .bind(org)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| {
            let role: String = r.try_get("role")?;
            Ok(MemberRecord {
                user: r.try_get("user_name")?,
                role: role.parse()?,
                added_at: r.try_get("added_at")?,
                added_by: r.try_get("added_by")?,
            })
        })
        .collect()
    }

    async fn memberships(&self, user: &str) -> Result<Vec<Membership>, StoreError> {
        sqlx::query("SELECT org, role FROM org_members WHERE user_name = $1 ORDER BY org")
            .bind(user)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(membership_row)
            .collect()
    }

    async fn active_memberships(&self, user: &str) -> Result<Option<Vec<Membership>>, StoreError> {
        let rows = sqlx::query(
            "SELECT u.disabled_at, m.org, m.role FROM users u \
             LEFT JOIN org_members m ON m.user_name = u.name \
             WHERE u.name = $1 AND u.kind = 'user' ORDER BY m.org",
        )
        .bind(user)
        .fetch_all(&self.pool)
        .await?;
        let Some(first) = rows.first() else {
            return Ok(None);
        };
        if first.try_get::<Option<i64>, _>("disabled_at")?.is_some() {
            return Ok(None);
        }
        let mut orgs = Vec::new();
        for r in &rows {
            if r.try_get::<Option<String>, _>("org")?.is_some() {
                orgs.push(membership_row(r)?);
            }
        }
        Ok(Some(orgs))
    }

    async fn set_member_audited(
        &self,
        org: &str,
        user: &str,
        role: OrgRole,
        audit: Option<&AuditContext>,
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin_write().await?;
        lock_org(&mut tx, org).await?;
        if kind_in(&mut tx, user).await? != Some(NamespaceKind::User) {
            return Err(StoreError::NotFound(format!("user {user}")));
        }
        let before = role_in(&mut tx, org, user).await?;
        if before == Some(role) {
            return Ok(false);
        }
        if before == Some(OrgRole::Admin) && admins_left(&mut tx, org, user).await? == 0 {
            return Err(StoreError::Conflict(format!(
                "{user} is the last admin of {org}; make another member admin first"
            )));
        }
        let now = now_ms();
        if before.is_none() {
            let members = count(
                &mut tx,
                "SELECT COUNT(*) AS n FROM org_members WHERE org = $1",
                org,
            )
            .await?;
            if members >= MAX_MEMBERS {
                return Err(StoreError::Conflict(format!(
                    "{org} already has {members} members, the most allowed"
                )));
            }
            let orgs = count(
                &mut tx,
                "SELECT COUNT(*) AS n FROM org_members WHERE user_name = $1",
                user,
            )
            .await?;
            if orgs >= MAX_ORGS_PER_USER {
                return Err(StoreError::Conflict(format!(
                    "user {user} already belongs to {orgs} organisations, the most allowed"
                )));
            }
        }
        sqlx::query(
            "INSERT INTO org_members (org, user_name, role, added_at, added_by) \
             VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (org, user_name) DO UPDATE SET role = excluded.role",
        )
        .bind(org)
        .bind(user)
        .bind(role.as_str())
        .bind(now)
        .bind(audit.and_then(|a| a.actor.clone()))
        .execute(&mut *tx)
        .await?;
        if let Some(ctx) = audit {
            let e = entry(
                ctx,
                AuditAction::MemberSet,
                format!("{org}:{user}"),
                org,
                before.map(|r| serde_json::json!({ "role": r.as_str() })),
                Some(serde_json::json!({ "role": role.as_str() })),
            );
            super::audit::append_audit(&mut tx, &e).await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    async fn remove_member_audited(
        &self,
        org: &str,
        user: &str,
        audit: Option<&AuditContext>,
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin_write().await?;
        lock_org(&mut tx, org).await?;
        let Some(before) = role_in(&mut tx, org, user).await? else {
            return Ok(false);
        };
        if before == OrgRole::Admin && admins_left(&mut tx, org, user).await? == 0 {
            return Err(StoreError::Conflict(format!(
                "{user} is the last admin of {org}; make another member admin first"
            )));
        }
        sqlx::query("DELETE FROM org_members WHERE org = $1 AND user_name = $2")
            .bind(org)
            .bind(user)
            .execute(&mut *tx)
            .await?;
        if let Some(ctx) = audit {
            let e = entry(
                ctx,
                AuditAction::MemberRemove,
                format!("{org}:{user}"),
                org,
                Some(serde_json::json!({ "role": before.as_str() })),
                None,
            );
            super::audit::append_audit(&mut tx, &e).await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    async fn deactivate_user_audited(
        &self,
        user: &str,
        audit: Option<&AuditContext>,
    ) -> Result<Option<Deactivated>, StoreError> {
        let mut tx = self.begin_write().await?;
        match disabled_in(&mut tx, user).await? {
            None => return Err(StoreError::NotFound(format!("user {user}"))),
            Some(true) => return Ok(None),
            Some(false) => {}
        }
        let now = now_ms();
        // Locks the user's row first (Postgres), so a token made meanwhile cannot slip past.
        sqlx::query("UPDATE users SET disabled_at = $1 WHERE name = $2")
            .bind(now)
            .bind(user)
            .execute(&mut *tx)
            .await?;
        let orgs: Vec<String> =
            sqlx::query("SELECT org FROM org_members WHERE user_name = $1 ORDER BY org")
                .bind(user)
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(|r| r.try_get("org"))
                .collect::<Result<_, _>>()?;
        for org in &orgs {
            lock_org(&mut tx, org).await?;
            if role_in(&mut tx, org, user).await? == Some(OrgRole::Admin)
                && admins_left(&mut tx, org, user).await? == 0
            {
                return Err(StoreError::Conflict(format!(
                    "{user} is the last admin of {org}; make another member admin first"
                )));
            }
        }
        sqlx::query("DELETE FROM org_members WHERE user_name = $1")
            .bind(user)
            .execute(&mut *tx)
            .await?;
        let tokens_revoked = sqlx::query(
            "UPDATE tokens SET revoked_at = $1 WHERE user_name = $2 AND revoked_at IS NULL",
        )
        .bind(now)
        .bind(user)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let invites_withdrawn = sqlx::query(
            "UPDATE invites SET expires_at = $1 WHERE user_name = $2 AND used_at IS NULL \
             AND expires_at > $1",
        )
        .bind(now)
        .bind(user)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let done = Deactivated {
            tokens_revoked,
            invites_withdrawn,
            orgs_left: orgs,
        };
        if let Some(ctx) = audit {
            let after = serde_json::json!({
                "tokens_revoked": done.tokens_revoked,
                "invites_withdrawn": done.invites_withdrawn,
                "orgs_left": done.orgs_left,
            });
            let e = entry(
                ctx,
                AuditAction::UserDeactivate,
                user.to_string(),
                user,
                None,
                Some(after),
            );
            super::audit::append_audit(&mut tx, &e).await?;
        }
        tx.commit().await?;
        Ok(Some(done))
    }

    async fn reactivate_user_audited(
        &self,
        user: &str,
        audit: Option<&AuditContext>,
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin_write().await?;
        match disabled_in(&mut tx, user).await? {
            None => return Err(StoreError::NotFound(format!("user {user}"))),
            Some(false) => return Ok(false),
            Some(true) => {}
        }
        sqlx::query("UPDATE users SET disabled_at = NULL WHERE name = $1")
            .bind(user)
            .execute(&mut *tx)
            .await?;
        if let Some(ctx) = audit {
            let e = entry(
                ctx,
                AuditAction::UserReactivate,
                user.to_string(),
                user,
                None,
                None,
            );
            super::audit::append_audit(&mut tx, &e).await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    async fn transfer_adapter_audited(
        &self,
        from: &RepoId,
        to_owner: &str,
        audit: Option<&AuditContext>,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        if kind_in(&mut tx, to_owner).await?.is_none() {
            return Err(StoreError::NotFound(format!("namespace {to_owner}")));
        }
        let taken = sqlx::query("SELECT id FROM adapters WHERE owner = $1 AND name = $2")
            .bind(to_owner)
            .bind(from.name.as_str())
            .fetch_optional(&mut *tx)
            .await?;
        if taken.is_some() {
            return Err(StoreError::Conflict(format!(
                "{to_owner}/{} already exists",
                from.name
            )));
        }
        let id: i64 = match sqlx::query("SELECT id FROM adapters WHERE owner = $1 AND name = $2")
            .bind(from.owner.as_str())
            .bind(from.name.as_str())
            .fetch_optional(&mut *tx)
            .await?
        {
            Some(row) => row.try_get("id")?,
            None => return Err(StoreError::NotFound(format!("adapter {from}"))),
        };
        let to_repo = format!("{to_owner}/{}", from.name);
        sqlx::query("UPDATE adapters SET owner = $1, updated_at = $2 WHERE id = $3")
            .bind(to_owner)
            .bind(now_ms())
            .bind(id)
            .execute(&mut *tx)
            .await?;
        rename_in_lineage(&mut tx, id, &from.to_string(), &to_repo).await?;
        if let Some(ctx) = audit {
            let e = entry(
                ctx,
                AuditAction::AdapterTransfer,
                format!("{to_owner}/{}", from.name),
                to_owner,
                Some(serde_json::json!({ "adapter": from.to_string() })),
                Some(serde_json::json!({ "adapter": format!("{to_owner}/{}", from.name) })),
            );
            super::audit::append_audit(&mut tx, &e).await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

/// Versions made from the adapter `adapter_id` name it as a parent by `owner/name`: after a
/// transfer they name it by its new name, so their lineage keeps pointing at it (the parent's
/// revisions, and so every child's revision, do not change).
async fn rename_in_lineage(
    tx: &mut Tx,
    adapter_id: i64,
    old: &str,
    new: &str,
) -> Result<(), StoreError> {
    let children = sqlx::query(
        "SELECT id, lineage FROM versions WHERE id IN (SELECT p.version_id FROM version_parents p \
         JOIN versions v ON v.id = p.parent_version_id WHERE v.adapter_id = $1)",
    )
    .bind(adapter_id)
    .fetch_all(&mut **tx)
    .await?;
    for row in children {
        let child: i64 = row.try_get("id")?;
        let Some(raw) = row.try_get::<Option<String>, _>("lineage")? else {
            continue;
        };
        let mut lineage: Value = serde_json::from_str(&raw)
            .map_err(|e| StoreError::Invalid(format!("stored lineage of version {child}: {e}")))?;
        if let Some(parents) = lineage.get_mut("parents").and_then(Value::as_array_mut) {
            for p in parents {
                if p.get("adapter").and_then(Value::as_str) == Some(old) {
                    p["adapter"] = Value::from(new);
                }
            }
        }
        sqlx::query("UPDATE versions SET lineage = $1 WHERE id = $2")
            .bind(lineage.to_string())
            .bind(child)
            .execute(&mut **tx)
            .await?;
    }
    sqlx::query(
        "UPDATE version_parents SET parent_adapter = $1 WHERE parent_version_id IN \
         (SELECT id FROM versions WHERE adapter_id = $2)",
    )
    .bind(new)
    .bind(adapter_id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Creates the user `user` (already validated) in `tx` if there is no such namespace; `true` if
/// it was created. Refused when the name is an organisation: tokens, invites and sign-ins are
/// for users.
pub(super) async fn ensure_user_in(tx: &mut Tx, user: &str) -> Result<bool, StoreError> {
    match kind_in(tx, user).await? {
        Some(NamespaceKind::User) if disabled_in(tx, user).await? == Some(true) => {
            Err(StoreError::Invalid(format!(
                "user {user} is deactivated; an admin may reactivate them"
            )))
        }
        Some(NamespaceKind::User) => Ok(false),
        Some(NamespaceKind::Org) => Err(StoreError::Invalid(format!(
            "{user} is an organisation, not a user; tokens, invites and sign-ins are for users"
        ))),
        None => {
            sqlx::query(
                "INSERT INTO users (name, created_at) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
            )
            .bind(user)
            .bind(now_ms())
            .execute(&mut **tx)
            .await?;
            Ok(true)
        }
    }
}

pub(super) fn membership_row(r: &sqlx::any::AnyRow) -> Result<Membership, StoreError> {
    let role: String = r.try_get("role")?;
    Ok(Membership {
        org: r.try_get("org")?,
        role: role.parse()?,
    })
}
