//! Sign-in through the company's authenticating proxy (oauth2-proxy, Pomerium, an ingress with
//! OIDC; docs/sso.md). With `--auth-proxy-header X-Forwarded-User` and `--auth-proxy-trusted`
//! (the proxy's addresses), a page request whose *connection* comes from a trusted address and
//! carries the header is made by the user it names: created on first visit, with the `write`
//! scope, no restriction, and the token id [`PROXY_TOKEN_ID`] (what audit entries show). The
//! header is read only by the pages' caller ([`super::PageCaller`]); `/api`, the Hub and LoRAX
//! routes never look at it, so API clients keep using tokens.
//!
//! When a trusted request carries the header, the proxy's answer decides (a session cookie of
//! another user left in the browser does not override it; a name that is not a valid user is
//! anonymous). Without the header the session cookie applies as usual.
//!
//! `--auth-proxy-group-map ml-team=acme:write,ml-leads=acme:admin` keeps the organisations it
//! names in step with the groups header on every proxied page request: the user's role there is
//! the highest role of the mapped groups they carry, or no membership; a change is written (and
//! audited) only when it differs from the memberships just read, so a repeated visit writes
//! nothing. Organisations the map does not name are left alone.

use actix_web::HttpRequest;
use quiver_store::names::validate_owner;
use quiver_store::{
    Audit, AuditAction, AuditContext, Membership, OrgRole, Principal, Scope, StoreError,
};
use serde_json::json;

use crate::auth_proxy::{
    MAX_EMAIL_HEADER, MAX_GROUP_LEN, MAX_GROUPS, MAX_GROUPS_HEADER, MAX_USER_HEADER,
    PROXY_TOKEN_ID, ProxyAuth,
};
use crate::error::ApiError;
use crate::http::request_info::RequestInfo;
use crate::state::AppState;

/// The groups a request carries.
#[derive(Clone, Debug)]
pub enum Groups {
    /// The groups (none when the header is absent: oauth2-proxy sends no header for a user
    /// without groups).
    Listed(Vec<String>),
    /// Over a bound or malformed: memberships are left as they are for this request.
    Unusable(&'static str),
}

/// What a trusted request says about its user.
#[derive(Debug)]
pub struct ProxyClaim {
    /// The canonical user name, or why the header's value is not one.
    pub user: Result<String, String>,
    pub email: Option<String>,
    pub groups: Groups,
    pub info: RequestInfo,
}

impl ProxyClaim {
    fn audit(&self, user: &str) -> AuditContext {
        AuditContext {
            actor: Some(user.to_string()),
            token_id: Some(PROXY_TOKEN_ID.to_string()),
            request_id: Some(self.info.request_id.clone()),
            client_addr: self.info.client_addr.clone(),
        }
    }

    /// The page caller this claim makes: the named user (created on first visit, memberships
    /// of the mapped organisations brought in step with the groups), or anonymous when the name
    /// is not a valid user or the user is deactivated. Storage failures are errors (503), as for a session cookie.
    pub async fn principal(self, state: &AppState) -> Result<Option<Principal>, ApiError> {
        let Some(auth) = state.auth_proxy.as_deref() else {
            return Ok(None);
        };
        let user = match &self.user {
            Ok(user) => user.clone(),
            Err(why) => {
                auth.warn_once(format!("bad user {why}"), || {
                    tracing::warn!(
                        header = %auth.header(),
                        reason = %why,
                        "the proxy's user header does not name a valid user; the request is \
                         anonymous (logged once per reason)"
                    );
                });
                return Ok(None);
            }
        };
        let meta = &state.store.meta;
        if auth.signin_due(&user) {
            let created = match meta.ensure_user(&user).await {
                Ok(created) => created,
                Err(e) => {
                    auth.forget_signin(&user);
                    return match e {
                        StoreError::Conflict(_) | StoreError::Invalid(_) => {
                            auth.warn_once(format!("refused user {user}"), || {
                                tracing::warn!(
                                    user,
                                    error = %e,
                                    "the proxy names a user that cannot sign in here (an \
                                     organisation's name, or deactivated); the request is \
                                     anonymous"
                                );
                            });
                            Ok(None)
                        }
                        e => Err(e.into()),
                    };
                }
            };
            let entry = Audit {
                context: self.audit(&user),
                action: AuditAction::Signin,
                target: user.clone(),
                owner: Some(user.clone()),
                before: None,
                after: Some(json!({
                    "via": "proxy",
                    "created": created,
                    "email": self.email,
                })),
            };
            if let Err(e) = meta.append_audit(&entry).await {
                auth.forget_signin(&user);
                return Err(e.into());
            }
            tracing::info!(
                user,
                email = self.email.as_deref().unwrap_or(""),
                created,
                "signed in through the authenticating proxy"
            );
        }
        // Read on every request: a deactivated user (a departed colleague) is anonymous from the
        // next request on, whatever the proxy still says, and the group map does not bring
        // their memberships back.
        let Some(mut orgs) = meta.active_memberships(&user).await? else {
            auth.forget_signin(&user);
            auth.warn_once(format!("inactive user {user}"), || {
                tracing::warn!(
                    user,
                    "the proxy names a deactivated user; the request is anonymous"
                );
            });
            return Ok(None);
        };
        if auth.has_group_map() && self.sync_groups(auth, state, &user, &orgs).await? {
            orgs = meta.memberships(&user).await?;
        }
        Ok(Some(Principal {
            user,
            scope: Scope::Write,
            token_id: PROXY_TOKEN_ID.to_string(),
            restrict: None,
            orgs,
        }))
    }

    /// Brings the user's roles in the mapped organisations in step with their groups; whether
    /// anything was written.
    async fn sync_groups(
        &self,
        auth: &ProxyAuth,
        state: &AppState,
        user: &str,
        orgs: &[Membership],
    ) -> Result<bool, ApiError> {
        let groups = match &self.groups {
            Groups::Listed(g) => g,
            Groups::Unusable(why) => {
                auth.warn_once(format!("groups {why}"), || {
                    tracing::warn!(
                        user,
                        reason = %why,
                        "the proxy's groups header is unusable; organisation roles are left as \
                         they are (logged once per reason)"
                    );
                });
                return Ok(false);
            }
        };
        let meta = &state.store.meta;
        let mut changed = false;
        for org in auth.mapped_orgs() {
            let want = auth.mapped_role(org, groups);
            let have = orgs.iter().find(|m| &m.org == org).map(|m| m.role);
            if want == have || auth.org_known_missing(org) {
                continue;
            }
            let ctx = self.audit(user);
            let done = match want {
                Some(role) => meta.set_member_audited(org, user, role, Some(&ctx)).await,
                None => meta.remove_member_audited(org, user, Some(&ctx)).await,
            };
            match done {
                Ok(wrote) => {
                    changed |= wrote;
                    if wrote {
                        tracing::info!(
                            user,
                            org,
                            role = want.map_or("none", OrgRole::as_str),
                            "organisation role set from the proxy's groups"
                        );
                    }
                }
                Err(StoreError::NotFound(_)) => auth.org_missing(org),
                Err(e @ (StoreError::Conflict(_) | StoreError::Invalid(_))) => {
                    auth.warn_once(format!("sync {org} {user} {e}"), || {
                        tracing::warn!(
                            user,
                            org,
                            error = %e,
                            "cannot apply the proxy's groups to this organisation; left as it is"
                        );
                    });
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(changed)
    }
}

/// The proxy's claim about a page request, if proxy sign-in is on and the request is from a
/// trusted address with the header ([`read_claim`]).
pub fn claim(req: &HttpRequest) -> Option<ProxyClaim> {
    let auth = req
        .app_data::<actix_web::web::Data<AppState>>()?
        .auth_proxy
        .as_deref()?;
    read_claim(auth, req)
}

/// What the request says about its user, read from the connection and the headers: `None`
/// when the header is absent or the connection is not from a trusted address.
fn read_claim(auth: &ProxyAuth, req: &HttpRequest) -> Option<ProxyClaim> {
    let mut values = req.headers().get_all(auth.header());
    let first = values.next()?;
    let peer = req.peer_addr().map(|a| a.ip());
    if !peer.is_some_and(|ip| auth.trusts(ip)) {
        let from = peer.map_or_else(|| "an unknown address".to_string(), |ip| ip.to_string());
        auth.warn_once(format!("untrusted {from}"), || {
            tracing::warn!(
                peer = %from,
                header = %auth.header(),
                "a request carried the proxy's user header from an address outside \
                 --auth-proxy-trusted; the header is ignored (logged once per address)"
            );
        });
        return None;
    }
    let user = if values.next().is_some() {
        Err("the header was sent more than once".to_string())
    } else {
        match first.to_str() {
            Ok(v) if v.len() > MAX_USER_HEADER => {
                Err(format!("the value is over {MAX_USER_HEADER} bytes"))
            }
            Ok(v) => validate_owner("user name", v.trim()).map_err(|e| e.to_string()),
            Err(_) => Err("the value is not visible ASCII".to_string()),
        }
    };
    let email = auth.email_header().and_then(|h| {
        let mut all = req.headers().get_all(h);
        let v = all.next()?.to_str().ok()?.trim();
        (all.next().is_none() && !v.is_empty() && v.len() <= MAX_EMAIL_HEADER)
            .then(|| v.to_string())
    });
    let groups = auth.groups_header().map(|h| {
        let mut groups: Vec<String> = Vec::new();
        let mut bytes = 0usize;
        for v in req.headers().get_all(h) {
            bytes = bytes.saturating_add(v.len());
            let Ok(v) = v.to_str() else {
                return Groups::Unusable("a value is not visible ASCII");
            };
            if bytes > MAX_GROUPS_HEADER {
                return Groups::Unusable("the header is over 16 KiB");
            }
            for g in v.split(',').map(str::trim).filter(|g| !g.is_empty()) {
                if g.len() > MAX_GROUP_LEN {
                    return Groups::Unusable("a group name is over 256 bytes");
                }
                if !groups.iter().any(|x| x == g) {
                    groups.push(g.to_string());
                }
                if groups.len() > MAX_GROUPS {
                    return Groups::Unusable("there are over 512 groups");
                }
            }
        }
        Groups::Listed(groups)
    });
    Some(ProxyClaim {
        user,
        email,
        groups: groups.unwrap_or(Groups::Listed(Vec::new())),
        info: RequestInfo::of(req),
    })
}
