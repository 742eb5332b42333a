//! `/settings/orgs`: the signed-in user's organisations (docs/web.md): the list with their role in
//! each and a form to create one; `/settings/orgs/{org}`: its members (members and instance
//! admins; everyone else gets the page a missing organisation gets), with forms for its admins to
//! add a member, change a role or remove one, and a "leave" button for any member; and the
//! adapter page's transfer form, `POST /{owner}/{name}/transfer`. Every rule is
//! `crate::app::orgs`'s, acting as the session's token; the audit entries carry the request
//! (`RequestInfo`), as the API's do.

use actix_web::http::StatusCode;
use actix_web::http::header;
use actix_web::{HttpResponse, web};
use askama::Template;
use quiver_store::{OrgRole, Principal, Scope};

use super::{Chrome, PageCaller, PageError, enc, html, render};
use crate::app::orgs::{self, CreateOrgRequest};
use crate::error::{ApiError, ErrorCode};
use crate::http::request_info::RequestInfo;
use crate::state::AppState;

const PAGE: &str = "/settings/orgs";
/// The roles a member may hold, in the order the forms offer them.
const ROLES: [&str; 3] = ["read", "write", "admin"];

pub struct OrgRow {
    pub name: String,
    pub role: &'static str,
    pub href: String,
}

#[derive(Template)]
#[template(path = "orgs.html")]
struct OrgsPage {
    chrome: Chrome,
    csrf: String,
    orgs: Vec<OrgRow>,
    /// Whether the session may create one (an unrestricted write or admin token).
    can_create: bool,
    /// Whether the form offers another first admin (an unrestricted instance admin token).
    name_admin: bool,
}

pub struct MemberRow {
    pub user: String,
    pub role: &'static str,
    pub added: String,
    pub added_by: String,
    /// The signed-in user.
    pub me: bool,
    /// `/settings/orgs/{org}/members/{user}`, the base of the row's forms.
    pub action: String,
}

#[derive(Template)]
#[template(path = "org.html")]
struct OrgPage {
    chrome: Chrome,
    csrf: String,
    name: String,
    created: String,
    created_by: String,
    /// The caller's role, if a member.
    role: Option<&'static str>,
    members: Vec<MemberRow>,
    /// Whether the caller administers it (the member forms).
    admin: bool,
    /// Whether the caller may leave it (a member with a write session).
    can_leave: bool,
    roles: [&'static str; 3],
    /// `/?owner={org}`: its adapters in the listing.
    adapters_href: String,
    /// `/settings/orgs/{org}/members`.
    members_action: String,
    /// `/settings/orgs/{org}/members/{me}/remove`.
    leave_action: String,
}

fn signin_redirect(next: &str) -> HttpResponse {
    HttpResponse::SeeOther()
        .insert_header((header::LOCATION, format!("/signin?next={}", enc(next))))
        .finish()
}

fn see_other(to: &str) -> HttpResponse {
    HttpResponse::SeeOther()
        .insert_header((header::LOCATION, to.to_string()))
        .finish()
}

fn principal(caller: &PageCaller) -> Result<&Principal, PageError> {
    caller
        .caller
        .0
        .as_ref()
        .ok_or_else(|| PageError(ApiError::unauthorized()))
}

fn field(form: &[(String, String)], name: &str) -> String {
    form.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_default()
}

/// A path segment of this site's URLs (names are `[a-z0-9._-]`, but the path may hold anything).
fn seg(s: &str) -> String {
    enc(s)
}

fn org_href(org: &str) -> String {
    format!("{PAGE}/{}", seg(org))
}

fn role_name(r: OrgRole) -> &'static str {
    match r {
        OrgRole::Read => "read",
        OrgRole::Write => "write",
        OrgRole::Admin => "admin",
    }
}

fn parse_role(raw: &str) -> Result<OrgRole, PageError> {
    match raw {
        "read" => Ok(OrgRole::Read),
        "write" => Ok(OrgRole::Write),
        "admin" => Ok(OrgRole::Admin),
        other => Err(PageError(ApiError::coded(
            ErrorCode::InvalidRequest,
            format!(
                "role must be read, write or admin, got {:?}",
                other.chars().take(50).collect::<String>()
            ),
        ))),
    }
}

/// `GET /settings/orgs`.
pub async fn list(caller: PageCaller) -> Result<HttpResponse, PageError> {
    let Some(p) = caller.caller.0.as_ref() else {
        return Ok(signin_redirect(PAGE));
    };
    let unrestricted = p.restrict.is_none();
    let page = OrgsPage {
        chrome: Chrome::new("Organisations", &caller),
        csrf: caller.csrf.clone(),
        orgs: orgs::memberships(p)
            .into_iter()
            .map(|m| OrgRow {
                href: org_href(&m.org),
                role: role_name(m.role),
                name: m.org,
            })
            .collect(),
        can_create: unrestricted && p.scope != Scope::Read,
        name_admin: unrestricted && p.scope == Scope::Admin,
    };
    Ok(caller.finish(html(StatusCode::OK, render(&page)?)))
}

/// `POST /settings/orgs`: create one (the session's user its first admin, or, for an instance
/// admin, the user named); redirects to its page.
pub async fn create(
    state: web::Data<AppState>,
    caller: PageCaller,
    info: RequestInfo,
    form: web::Form<Vec<(String, String)>>,
) -> Result<HttpResponse, PageError> {
    caller.check_csrf(&field(&form, "csrf"))?;
    let p = principal(&caller)?;
    let admin = field(&form, "admin");
    let req = CreateOrgRequest {
        name: field(&form, "name"),
        admin: (!admin.is_empty()).then_some(admin),
    };
    let made = orgs::create(&state.store, p, req, &info.audit(Some(p))).await?;
    Ok(see_other(&org_href(&made.name)))
}

/// `GET /settings/orgs/{org}`: members and instance admins; anyone else signed in gets the
/// page a missing organisation gets, and anonymous callers the sign-in page for any name.
pub async fn show(
    state: web::Data<AppState>,
    caller: PageCaller,
    path: web::Path<String>,
) -> Result<HttpResponse, PageError> {
    let org = path.into_inner();
    let Some(p) = caller.caller.0.as_ref() else {
        return Ok(signin_redirect(&org_href(&org)));
    };
    let view = orgs::get(&state.store, p, &org).await?;
    let admin = crate::auth::administers(p, &view.name);
    let base = org_href(&view.name);
    let page = OrgPage {
        chrome: Chrome::new(format!("Organisation {}", view.name), &caller),
        csrf: caller.csrf.clone(),
        created: when_rfc3339(&view.created_at),
        created_by: view.created_by.clone().unwrap_or_else(|| "—".into()),
        role: view.role.map(role_name),
        members: view
            .members
            .into_iter()
            .map(|m| MemberRow {
                me: m.user == p.user,
                action: format!("{base}/members/{}", seg(&m.user)),
                role: role_name(m.role),
                added: when_rfc3339(&m.added_at),
                added_by: m.added_by.unwrap_or_else(|| "—".into()),
                user: m.user,
            })
            .collect(),
        admin,
        can_leave: view.role.is_some() && p.scope != Scope::Read,
        roles: ROLES,
        adapters_href: format!("/?owner={}", enc(&view.name)),
        members_action: format!("{base}/members"),
        leave_action: format!("{base}/members/{}/remove", seg(&p.user)),
        name: view.name,
    };
    Ok(caller.finish(html(StatusCode::OK, render(&page)?)))
}

/// `2026-01-02T03:04:05.678Z` as the date and minute, like [`super::when`].
fn when_rfc3339(t: &str) -> String {
    match (t.get(..10), t.get(11..16)) {
        (Some(d), Some(m)) if t.as_bytes().get(10) == Some(&b'T') => format!("{d} {m}"),
        _ => t.to_string(),
    }
}

/// `POST /settings/orgs/{org}/members`: add `user` with `role`, or change their role (admins).
pub async fn set_member(
    state: web::Data<AppState>,
    caller: PageCaller,
    info: RequestInfo,
    path: web::Path<String>,
    form: web::Form<Vec<(String, String)>>,
) -> Result<HttpResponse, PageError> {
    caller.check_csrf(&field(&form, "csrf"))?;
    let p = principal(&caller)?;
    let org = path.into_inner();
    let user = field(&form, "user").to_ascii_lowercase();
    if user.is_empty() {
        return Err(PageError(ApiError::coded(
            ErrorCode::InvalidRequest,
            "name the user to add",
        )));
    }
    let role = parse_role(&field(&form, "role"))?;
    orgs::set_member(&state.store, p, &org, &user, role, &info.audit(Some(p))).await?;
    Ok(see_other(&org_href(&org)))
}

/// `POST /settings/orgs/{org}/members/{user}/remove`: an admin removes a member, or a member
/// leaves (then back to the list of their organisations).
pub async fn remove_member(
    state: web::Data<AppState>,
    caller: PageCaller,
    info: RequestInfo,
    path: web::Path<(String, String)>,
    form: web::Form<Vec<(String, String)>>,
) -> Result<HttpResponse, PageError> {
    caller.check_csrf(&field(&form, "csrf"))?;
    let p = principal(&caller)?;
    let (org, user) = path.into_inner();
    if !orgs::remove_member(&state.store, p, &org, &user, &info.audit(Some(p))).await? {
        return Err(PageError(ApiError::not_found(
            ErrorCode::NotFound,
            format!("member {user} of {org}"),
        )));
    }
    if user == p.user {
        return Ok(see_other(PAGE));
    }
    Ok(see_other(&org_href(&org)))
}

/// The adapter page's transfer form, for a caller who administers the adapter's namespace: the
/// namespaces it offers as targets (the caller's own and the organisations they administer,
/// the current owner left out; an instance admin may type any other).
pub struct TransferForm {
    pub csrf: String,
    pub targets: Vec<String>,
}

pub fn transfer_form(caller: &PageCaller, owner: &str) -> Option<TransferForm> {
    let p = caller.caller.0.as_ref()?;
    if !crate::auth::administers(p, owner) {
        return None;
    }
    let targets = std::iter::once(p.user.clone())
        .chain(
            p.orgs
                .iter()
                .filter(|m| m.role == OrgRole::Admin)
                .map(|m| m.org.clone()),
        )
        .filter(|ns| ns != owner && crate::auth::administers(p, ns))
        .collect();
    Some(TransferForm {
        csrf: caller.csrf.clone(),
        targets,
    })
}

/// `POST /{owner}/{name}/transfer`: moves the adapter to the namespace `to` through
/// `app::orgs::transfer` (an admin of both namespaces) and redirects to its new page.
pub async fn transfer(
    state: web::Data<AppState>,
    caller: PageCaller,
    info: RequestInfo,
    path: web::Path<(String, String)>,
    form: web::Form<Vec<(String, String)>>,
) -> Result<HttpResponse, PageError> {
    caller.check_csrf(&field(&form, "csrf"))?;
    let p = principal(&caller)?;
    let adapter = crate::app::lookup::find_adapter(&state.store, &caller.caller, &path).await?;
    let to = field(&form, "to").to_ascii_lowercase();
    let moved = orgs::transfer(&state, p, &adapter, &to, &info.audit(Some(p))).await?;
    Ok(see_other(&format!(
        "/{}/{}",
        seg(&moved.owner),
        seg(&moved.name)
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_roles_read_for_people() {
        assert_eq!(when_rfc3339("2026-01-02T03:04:05.678Z"), "2026-01-02 03:04");
        assert_eq!(when_rfc3339("odd"), "odd");
        for r in ROLES {
            assert_eq!(role_name(parse_role(r).expect("a role")), r);
        }
        assert!(parse_role("owner").is_err());
        assert_eq!(org_href("a b"), "/settings/orgs/a%20b");
    }
}
