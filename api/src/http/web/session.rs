//! Sign-in with a token, the session cookie, and the CSRF token of every form.

use std::future::Future;
use std::pin::Pin;

use actix_web::cookie::{Cookie, SameSite};
use actix_web::dev::Payload;
use actix_web::http::StatusCode;
use actix_web::http::header;
use actix_web::{FromRequest, HttpRequest, HttpResponse, web};
use askama::Template;
use quiver_store::Viewer;
use rand::RngCore;
use serde::Deserialize;

use super::{Chrome, PageError, html, render};
use crate::app::tokens::{self, INVITE_PREFIX};
use crate::auth::{Caller, SESSION_COOKIE, principal};
use crate::error::{ApiError, ErrorCode};
use crate::http::request_info::RequestInfo;
use crate::state::AppState;

const CSRF_COOKIE: &str = "quiver_csrf";

/// The caller of a page: the session cookie's token (an invalid or expired one is anonymous),
/// and the request's CSRF token.
pub struct PageCaller {
    pub caller: Caller,
    /// The browser's CSRF token: from its cookie, or new (then set by [`PageCaller::finish`]).
    pub csrf: String,
    new_csrf: bool,
    secure: bool,
    /// Signed in by the authenticating proxy's header (docs/sso.md), not by a session cookie.
    pub sso: bool,
}

impl PageCaller {
    pub fn user(&self) -> Option<&str> {
        self.caller.0.as_ref().map(|p| p.user.as_str())
    }

    pub fn viewer(&self) -> Viewer {
        self.caller.viewer()
    }

    /// Sets the CSRF cookie on a response that shows a form, if the browser has none yet.
    pub fn finish(&self, mut res: HttpResponse) -> HttpResponse {
        if self.new_csrf {
            let _ = res.add_cookie(&cookie(CSRF_COOKIE, self.csrf.clone(), self.secure));
        }
        res
    }

    /// Checks a form's CSRF token against the cookie (a form from another site cannot know it,
    /// and a SameSite=Strict cookie is not sent with its requests anyway).
    pub fn check_csrf(&self, sent: &str) -> Result<(), PageError> {
        if self.new_csrf || sent.is_empty() || sent != self.csrf {
            return Err(PageError(ApiError::coded(
                ErrorCode::Forbidden,
                "the form's security token is missing or stale; reload the page and try again",
            )));
        }
        Ok(())
    }
}

fn cookie(name: &'static str, value: String, secure: bool) -> Cookie<'static> {
    Cookie::build(name, value)
        .path("/")
        .http_only(true)
        .same_site(SameSite::Strict)
        .secure(secure)
        .finish()
}

fn random_hex() -> String {
    let mut bytes = [0u8; 24];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

impl FromRequest for PageCaller {
    type Error = PageError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, Self::Error>>>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let session = req.cookie(SESSION_COOKIE).map(|c| c.value().to_owned());
        let csrf = req
            .cookie(CSRF_COOKIE)
            .map(|c| c.value().to_owned())
            .filter(|v| v.len() == 48 && v.bytes().all(|b| b.is_ascii_hexdigit()));
        let secure = req.connection_info().scheme() == "https";
        let state = req.app_data::<web::Data<AppState>>().cloned();
        // A trusted proxy's user header decides over any session cookie (docs/sso.md).
        let proxied = super::proxy_auth::claim(req);
        Box::pin(async move {
            let state = state.ok_or_else(|| {
                PageError(ApiError::internal("pages", "application state missing"))
            })?;
            let sso = proxied.is_some();
            let principal = match (proxied, session) {
                (Some(claim), _) => claim.principal(&state).await?,
                (None, Some(secret)) => principal(&state, &secret).await?,
                (None, None) => None,
            };
            Ok(PageCaller {
                sso: sso && principal.is_some(),
                caller: Caller(principal),
                new_csrf: csrf.is_none(),
                csrf: csrf.unwrap_or_else(random_hex),
                secure,
            })
        })
    }
}

#[derive(Template)]
#[template(path = "signin.html")]
struct SigninPage<'a> {
    chrome: Chrome,
    csrf: &'a str,
    next: &'a str,
    error: Option<&'a str>,
    /// An invite link's secret: the page offers to make a first token with it.
    invite: Option<&'a str>,
    /// After an invite was used: (user, the new token's secret), shown once.
    made: Option<(String, String)>,
}

#[derive(Template)]
#[template(path = "signout.html")]
struct SignoutPage<'a> {
    chrome: Chrome,
    csrf: &'a str,
}

#[derive(Deserialize)]
pub struct NextQuery {
    next: Option<String>,
    invite: Option<String>,
}

/// Only a path of this site, else `/`: an absolute path (`/…`, not `//host`), without
/// backslashes or control characters (browsers drop tabs and newlines, so `/\t/evil.example`
/// is `//evil.example` to them), that a URL parser reads back as exactly itself on this origin.
fn local_path(next: Option<&str>) -> &str {
    const ORIGIN: &str = "http://quiver.invalid/";
    let same_site = |n: &str| {
        n.starts_with('/')
            && !n.starts_with("//")
            && !n.contains('\\')
            && !n.chars().any(char::is_control)
            && url::Url::parse(ORIGIN)
                .and_then(|base| base.join(n))
                .is_ok_and(|u| {
                    u.as_str().starts_with(ORIGIN) && &u[url::Position::BeforePath..] == n
                })
    };
    next.filter(|n| same_site(n)).unwrap_or("/")
}

pub async fn signin_form(
    caller: PageCaller,
    query: web::Query<NextQuery>,
) -> Result<HttpResponse, PageError> {
    // Only an invite's shape is echoed back into the form.
    let invite = query.invite.as_deref().filter(|i| {
        i.len() == 68
            && i.starts_with(INVITE_PREFIX)
            && i[4..].bytes().all(|b| b.is_ascii_hexdigit())
    });
    let page = SigninPage {
        chrome: Chrome::new("Sign in", &caller),
        csrf: &caller.csrf,
        next: local_path(query.next.as_deref()),
        error: None,
        invite,
        made: None,
    };
    Ok(caller.finish(html(StatusCode::OK, render(&page)?)))
}

#[derive(Deserialize)]
pub struct SigninForm {
    token: String,
    csrf: String,
    next: Option<String>,
}

pub async fn signin(
    req: HttpRequest,
    state: web::Data<AppState>,
    caller: PageCaller,
    form: web::Form<SigninForm>,
) -> Result<HttpResponse, PageError> {
    caller.check_csrf(&form.csrf)?;
    let next = local_path(form.next.as_deref());
    let token = form.token.trim();
    match principal(&state, token).await? {
        Some(p) => {
            // Audited before the cookie is handed out: no entry, no session (never the secret:
            // the token's public id only).
            let entry = quiver_store::Audit {
                context: RequestInfo::of(&req).audit(Some(&p)),
                action: quiver_store::AuditAction::Signin,
                target: p.user.clone(),
                owner: Some(p.user.clone()),
                before: None,
                after: Some(serde_json::json!({ "via": "token" })),
            };
            state.store.meta.append_audit(&entry).await?;
            tracing::info!(user = %p.user, "signed in to the web pages");
            let secure = req.connection_info().scheme() == "https";
            let mut res = HttpResponse::SeeOther()
                .insert_header((header::LOCATION, next.to_string()))
                .finish();
            let _ = res.add_cookie(&cookie(SESSION_COOKIE, token.to_string(), secure));
            Ok(res)
        }
        None => {
            let page = SigninPage {
                chrome: Chrome::new("Sign in", &caller),
                csrf: &caller.csrf,
                next,
                error: Some("That token is not valid on this server."),
                invite: None,
                made: None,
            };
            Ok(html(StatusCode::UNAUTHORIZED, render(&page)?))
        }
    }
}

#[derive(Deserialize)]
pub struct InviteForm {
    invite: String,
    name: String,
    csrf: String,
}

/// `POST /signin/invite`: uses an invite link to make the user's first token, signs them in with
/// it and shows its secret once.
pub async fn redeem_invite(
    state: web::Data<AppState>,
    caller: PageCaller,
    info: RequestInfo,
    form: web::Form<InviteForm>,
) -> Result<HttpResponse, PageError> {
    caller.check_csrf(&form.csrf)?;
    let audit = info.audit(None);
    match tokens::redeem(&state.store, form.invite.trim(), &form.name, &audit).await? {
        Some(made) => {
            let secret = made.token.clone().unwrap_or_default();
            let page = SigninPage {
                chrome: Chrome::new("Welcome", &caller),
                csrf: &caller.csrf,
                next: "/",
                error: None,
                invite: None,
                made: Some((made.user.clone(), secret.clone())),
            };
            let mut res = html(StatusCode::CREATED, render(&page)?);
            let _ = res.add_cookie(&cookie(SESSION_COOKIE, secret, caller.secure));
            Ok(res)
        }
        None => {
            let page = SigninPage {
                chrome: Chrome::new("Sign in", &caller),
                csrf: &caller.csrf,
                next: "/",
                error: Some("That invite is not valid: unknown, already used or expired."),
                invite: None,
                made: None,
            };
            Ok(html(StatusCode::UNAUTHORIZED, render(&page)?))
        }
    }
}

pub async fn signout_form(caller: PageCaller) -> Result<HttpResponse, PageError> {
    let page = SignoutPage {
        chrome: Chrome::new("Sign out", &caller),
        csrf: &caller.csrf,
    };
    Ok(caller.finish(html(StatusCode::OK, render(&page)?)))
}

#[derive(Deserialize)]
pub struct CsrfForm {
    csrf: String,
}

pub async fn signout(
    caller: PageCaller,
    form: web::Form<CsrfForm>,
) -> Result<HttpResponse, PageError> {
    caller.check_csrf(&form.csrf)?;
    let mut res = HttpResponse::SeeOther()
        .insert_header((header::LOCATION, "/"))
        .finish();
    let mut gone = cookie(SESSION_COOKIE, String::new(), caller.secure);
    gone.make_removal();
    let _ = res.add_cookie(&gone);
    Ok(res)
}

#[cfg(test)]
mod tests {
    use super::local_path;

    #[test]
    fn redirects_stay_on_this_site() {
        for ok in [
            "/",
            "/alice/x",
            "/alice/x/versions/v2?tab=files#top",
            "/?q=a%20b",
        ] {
            assert_eq!(local_path(Some(ok)), ok);
        }
        for bad in [
            "//evil.example/x",
            "https://evil.example",
            "/\\evil",
            "x",
            "",
            "/\t/evil.example",
            "/\n/evil.example",
            "/\r\n/evil.example",
            "\t//evil.example",
            "/\u{0}x",
            "/.//evil.example",
            "/a/../../evil.example",
            "javascript:alert(1)",
            "/\\/evil.example",
            "/ /evil",
            "/x\u{85}y",
        ] {
            assert_eq!(local_path(Some(bad)), "/", "{bad}");
        }
        assert_eq!(local_path(None), "/");
    }
}
