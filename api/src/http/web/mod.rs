//! The web pages: server-rendered HTML (askama templates in `api/templates/`, CSS in
//! `api/static/`, both compiled into the binary), built from the same store queries, lookups and
//! listing cache as the JSON API. No JavaScript: every page works with it off (running jobs
//! refresh themselves with a meta refresh).
//!
//! Who is asking: the session cookie set by the sign-in form holds the caller's token
//! (HttpOnly, SameSite=Strict, Secure over TLS); pages show exactly what the API shows that
//! token. Every form carries a CSRF token equal to a random SameSite=Strict cookie
//! (double submit), checked before anything is done.

mod adapter;
mod audit;
mod jobs;
mod listing;
mod orgs;
pub mod proxy_auth;
mod session;
mod spectra;
pub mod svg;
mod tokens;
mod webhooks;

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, ResponseError, guard, web};
use askama::Template;
use quiver_store::time::rfc3339;

use crate::error::ApiError;
use crate::http::errors::HtmlErrors;

pub use session::PageCaller;

/// The pages' Content-Security-Policy: nothing but this origin's stylesheet and images, no
/// scripts at all, forms only to this origin, never framed.
pub const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self' data:; \
     form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Page routes with their methods, for 405 answers (`RouteTable::with_pages`).
pub const PAGE_ROUTES: &[(&str, &[&str])] = &[
    ("/", &["GET", "HEAD"]),
    ("/signin", &["GET", "HEAD", "POST"]),
    ("/signin/invite", &["POST"]),
    ("/signout", &["GET", "HEAD", "POST"]),
    ("/jobs", &["GET", "HEAD"]),
    ("/jobs/{id}", &["GET", "HEAD"]),
    ("/audit", &["GET", "HEAD"]),
    ("/webhooks", &["GET", "HEAD", "POST"]),
    ("/webhooks/{id}/redeliver", &["POST"]),
    ("/webhooks/{id}/delete", &["POST"]),
    ("/settings/tokens", &["GET", "HEAD", "POST"]),
    ("/settings/tokens/{id}/revoke", &["POST"]),
    ("/settings/orgs", &["GET", "HEAD", "POST"]),
    ("/settings/orgs/{org}", &["GET", "HEAD"]),
    ("/settings/orgs/{org}/members", &["POST"]),
    ("/settings/orgs/{org}/members/{user}/remove", &["POST"]),
    ("/static/{file}", &["GET", "HEAD"]),
    ("/{owner}/{name}", &["GET", "HEAD"]),
    ("/{owner}/{name}/merge", &["POST"]),
    ("/{owner}/{name}/transfer", &["POST"]),
    ("/{owner}/{name}/versions/{ref}", &["GET", "HEAD"]),
];

/// How the pages answer errors; registered as app data for the shared error edges
/// (`crate::http::errors`).
pub const HTML_ERRORS: HtmlErrors = HtmlErrors {
    is_page: is_page_path,
    page: error_page,
    not_found,
};

/// Whether a path is a page's (HTML errors) rather than the API's or the docs' (JSON errors).
pub fn is_page_path(path: &str) -> bool {
    !(path == "/api"
        || path.starts_with("/api/")
        || path.starts_with("/docs")
        || path == "/healthz"
        || path == "/metrics"
        || is_hub_root_path(path)
        || is_lorax_path(path))
}

/// LoRAX's `pbase` routes (`crate::http::lorax`), which share the root with the pages:
/// `/v2/repos/{repo}/version/{version}` and `/v1/models/version/name/{repo}`.
fn is_lorax_path(path: &str) -> bool {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    matches!(parts.as_slice(), ["v2", "repos", _, "version", _])
        || matches!(parts.as_slice(), ["v1", "models", "version", "name", _])
}

/// The Hub routes that share the root with the pages: `/{owner}/{name}/resolve/…` and
/// `/{owner}/{name}.git/info/lfs/…` (their errors are JSON, as on every API route).
fn is_hub_root_path(path: &str) -> bool {
    let mut parts = path.trim_start_matches('/').splitn(4, '/');
    let (_, name, third) = (parts.next(), parts.next(), parts.next());
    third == Some("resolve") || (name.is_some_and(|n| n.ends_with(".git")) && third == Some("info"))
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    // `/{owner}/…` must not swallow API or docs paths that no API route matched (those keep
    // their JSON 404/405).
    let pages = || guard::fn_guard(|ctx| is_page_path(ctx.head().uri.path()));
    // Every page answers HEAD as it answers GET (actix sends the head without the body).
    let read = || web::route().guard(guard::Any(guard::Get()).or(guard::Head()));
    cfg.route("/", read().to(listing::index))
        .route("/signin", read().to(session::signin_form))
        .route("/signin", web::post().to(session::signin))
        .route("/signin/invite", web::post().to(session::redeem_invite))
        .route("/signout", read().to(session::signout_form))
        .route("/signout", web::post().to(session::signout))
        .route("/jobs", read().to(jobs::list))
        .route("/jobs/{id}", read().to(jobs::show))
        .route("/audit", read().to(audit::show))
        .route("/webhooks", read().to(webhooks::show))
        .route("/webhooks", web::post().to(webhooks::create_hook))
        .route(
            "/webhooks/{id}/redeliver",
            web::post().to(webhooks::redeliver),
        )
        .route("/webhooks/{id}/delete", web::post().to(webhooks::delete))
        .route("/settings/tokens", read().to(tokens::show))
        .route("/settings/tokens", web::post().to(tokens::create))
        .route(
            "/settings/tokens/{id}/revoke",
            web::post().to(tokens::revoke),
        )
        .route("/settings/orgs", read().to(orgs::list))
        .route("/settings/orgs", web::post().to(orgs::create))
        .route("/settings/orgs/{org}", read().to(orgs::show))
        .route(
            "/settings/orgs/{org}/members",
            web::post().to(orgs::set_member),
        )
        .route(
            "/settings/orgs/{org}/members/{user}/remove",
            web::post().to(orgs::remove_member),
        )
        .route("/static/{file}", read().to(static_file))
        .route(
            "/{owner}/{name}",
            read().guard(pages()).to(adapter::adapter_page),
        )
        .route(
            "/{owner}/{name}/merge",
            web::post().guard(pages()).to(adapter::merge),
        )
        .route(
            "/{owner}/{name}/transfer",
            web::post().guard(pages()).to(orgs::transfer),
        )
        .route(
            "/{owner}/{name}/versions/{ref}",
            read().guard(pages()).to(adapter::version_page),
        );
}

/// What every page's header shows.
pub struct Chrome {
    pub title: String,
    /// The signed-in user.
    pub user: Option<String>,
    /// Whether the header links the audit log (an instance admin's session).
    pub audit: bool,
    /// Signed in through the authenticating proxy (docs/sso.md).
    pub sso: bool,
    pub css: &'static str,
}

impl Chrome {
    pub fn new(title: impl Into<String>, caller: &PageCaller) -> Self {
        Self {
            title: title.into(),
            user: caller.user().map(str::to_owned),
            audit: caller
                .caller
                .0
                .as_ref()
                .is_some_and(crate::app::tokens::manages_all),
            sso: caller.sso,
            css: css_href(),
        }
    }
}

const STYLE: &str = include_str!("../../../static/style.css");

/// The stylesheet's URL, versioned by its content so it can be cached for good.
fn css_href() -> &'static str {
    use sha2::{Digest, Sha256};
    static HREF: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HREF.get_or_init(|| {
        let digest = Sha256::digest(STYLE.as_bytes());
        format!("/static/style.css?v={}", hex::encode(&digest[..6]))
    })
}

async fn static_file(path: web::Path<String>) -> Result<HttpResponse, PageError> {
    match path.as_str() {
        "style.css" => Ok(HttpResponse::Ok()
            .content_type("text/css; charset=utf-8")
            .insert_header((header::CACHE_CONTROL, "public, max-age=31536000, immutable"))
            .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
            .body(STYLE)),
        other => Err(PageError::not_found(format!("no static file {other:?}"))),
    }
}

/// A rendered page with the security headers.
pub fn html(status: StatusCode, body: String) -> HttpResponse {
    let mut res = HttpResponse::build(status)
        .content_type("text/html; charset=utf-8")
        .body(body);
    secure_headers(res.headers_mut());
    res
}

/// A page from the listing cache: 304 when the browser's ETag matches, else the body with its
/// ETag. `private, no-cache`: a page may hold what only its viewer sees, and is revalidated.
pub fn cached_html(req: &HttpRequest, page: crate::list_cache::CachedPage) -> HttpResponse {
    if crate::conditional::etag_matches(req, &page.etag) {
        let mut res = HttpResponse::NotModified().finish();
        if let Ok(v) = HeaderValue::from_str(&page.etag) {
            res.headers_mut().insert(header::ETAG, v);
        }
        return res;
    }
    let mut res = HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header((header::ETAG, page.etag))
        .insert_header((header::CACHE_CONTROL, "private, no-cache"))
        .body(page.body);
    secure_headers(res.headers_mut());
    res
}

pub fn secure_headers(h: &mut header::HeaderMap) {
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
}

pub fn render(t: &impl Template) -> Result<String, PageError> {
    t.render()
        .map_err(|e| PageError(ApiError::internal("page template", e)))
}

/// A page route's error: the API's error (same codes and messages), answered as an HTML page.
#[derive(Debug)]
pub struct PageError(pub ApiError);

impl std::fmt::Display for PageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl<E: Into<ApiError>> From<E> for PageError {
    fn from(e: E) -> Self {
        Self(e.into())
    }
}

impl PageError {
    pub fn not_found(message: impl Into<String>) -> Self {
        Self(ApiError::coded(
            crate::error::ErrorCode::RouteNotFound,
            message,
        ))
    }
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage<'a> {
    chrome: Chrome,
    status: u16,
    reason: &'a str,
    code: &'a str,
    message: &'a str,
}

/// An HTML error page (no user, so it can be rendered anywhere, even without the state).
pub fn error_page(status: StatusCode, code: &str, message: &str) -> HttpResponse {
    let page = ErrorPage {
        chrome: Chrome {
            title: format!(
                "{} {}",
                status.as_u16(),
                status.canonical_reason().unwrap_or("")
            ),
            user: None,
            audit: false,
            sso: false,
            css: css_href(),
        },
        status: status.as_u16(),
        reason: status.canonical_reason().unwrap_or("Error"),
        code,
        message,
    };
    match page.render() {
        Ok(body) => html(status, body),
        Err(_) => html(status, format!("<h1>{}</h1>", status.as_u16())),
    }
}

impl ResponseError for PageError {
    fn status_code(&self) -> StatusCode {
        self.0.status_code()
    }
    fn error_response(&self) -> HttpResponse {
        let status = self.0.status_code();
        // The not-found codes of every resource read the same to a visitor.
        let mut res = error_page(status, self.0.code.as_str(), &self.0.message);
        if self.0.code == crate::error::ErrorCode::StorageUnavailable {
            res.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from_static(crate::error::STORAGE_RETRY_AFTER_SECS),
            );
        }
        res
    }
}

/// Unknown page paths: 405 with `Allow` for a page route's path, else 404.
pub fn not_found(req: &HttpRequest, allowed: Option<Vec<&'static str>>) -> HttpResponse {
    match allowed {
        Some(methods) => {
            let allow = methods.join(", ");
            let mut res = error_page(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                &format!("{} is not allowed here; allowed: {allow}", req.method()),
            );
            if let Ok(v) = HeaderValue::from_str(&allow) {
                res.headers_mut().insert(header::ALLOW, v);
            }
            res
        }
        None => error_page(
            StatusCode::NOT_FOUND,
            "route_not_found",
            &format!("There is no page at {}.", req.path()),
        ),
    }
}

/// Unix milliseconds as the date and minute, UTC.
pub fn when(ms: i64) -> String {
    let t = rfc3339(ms);
    t.get(..16).map(|s| s.replace('T', " ")).unwrap_or(t)
}

/// Bytes for people: `12.3 MB`.
pub fn size(bytes: i64) -> String {
    let b = bytes.max(0) as f64;
    match b {
        b if b >= 1e9 => format!("{:.1} GB", b / 1e9),
        b if b >= 1e6 => format!("{:.1} MB", b / 1e6),
        b if b >= 1e3 => format!("{:.1} kB", b / 1e3),
        b => format!("{b:.0} B"),
    }
}

/// A query string's value, percent-encoded.
pub fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(b as char)
            }
            b => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A page that cannot reach the database or object store asks to be retried, as the API does.
    #[test]
    fn storage_errors_on_pages_carry_retry_after() {
        let res = PageError(ApiError::coded(
            crate::error::ErrorCode::StorageUnavailable,
            "down",
        ))
        .error_response();
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            res.headers().get(header::RETRY_AFTER).map(|v| v.as_bytes()),
            Some(crate::error::STORAGE_RETRY_AFTER_SECS.as_bytes())
        );
        let res =
            PageError(ApiError::coded(crate::error::ErrorCode::Internal, "x")).error_response();
        assert!(res.headers().get(header::RETRY_AFTER).is_none());
    }

    #[test]
    fn page_paths_exclude_the_api_and_docs() {
        for p in ["/", "/alice/x", "/jobs", "/static/style.css", "/apis"] {
            assert!(is_page_path(p), "{p}");
        }
        for p in [
            "/api",
            "/api/v1/adapters",
            "/docs/",
            "/healthz",
            "/metrics",
            "/alice/x/resolve/main/adapter_config.json",
            "/alice/x.git/info/lfs/objects/batch",
        ] {
            assert!(!is_page_path(p), "{p}");
        }
    }

    #[test]
    fn helpers_format_for_people() {
        assert_eq!(size(999), "999 B");
        assert_eq!(size(12_345_678), "12.3 MB");
        assert_eq!(enc("a b/c&d"), "a%20b%2Fc%26d");
        assert_eq!(when(0), "1970-01-01 00:00");
    }

    #[test]
    fn error_pages_escape_the_message() {
        let res = error_page(StatusCode::NOT_FOUND, "x", "<script>alert(1)</script>");
        assert_eq!(res.status(), StatusCode::NOT_FOUND);
        assert!(res.headers().get(header::CONTENT_SECURITY_POLICY).is_some());
    }
}
