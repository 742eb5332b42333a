//! The error edges every front door shares: extractor errors, unknown routes (404, or 405 with
//! `Allow`) and anything actix answers by itself become the envelope (`crate::error`), or an
//! HTML page on the pages' paths. The pages register how they render errors ([`HtmlErrors`], as
//! app data) so that nothing here depends on them.

use actix_web::body::MessageBody;
use actix_web::dev::ServiceResponse;
use actix_web::http::StatusCode;
use actix_web::http::header::{ALLOW, CONTENT_TYPE, HeaderValue};
use actix_web::middleware::ErrorHandlerResponse;
use actix_web::{HttpRequest, HttpResponse, ResponseError};

use crate::error::{ApiError, ErrorCode, envelope};
use crate::http::route_table::RouteTable;

/// How the web pages answer errors, registered by them as app data (`App::app_data`).
#[derive(Clone, Copy)]
pub struct HtmlErrors {
    /// Whether a path is a page's (HTML errors) rather than an API's or the docs' (JSON).
    pub is_page: fn(&str) -> bool,
    /// An HTML error page: status, code, message.
    pub page: fn(StatusCode, &str, &str) -> HttpResponse,
    /// The answer to a page path no route took; `allowed` holds the methods some route takes.
    pub not_found: fn(&HttpRequest, Option<Vec<&'static str>>) -> HttpResponse,
}

impl HtmlErrors {
    /// The pages' rendering, when they are registered and `req` is on one of their paths.
    pub fn of(req: &HttpRequest) -> Option<&HtmlErrors> {
        req.app_data::<HtmlErrors>()
            .filter(|pages| (pages.is_page)(req.path()))
    }
}

/// An error answer for `req`: an HTML page on the pages' paths, the envelope elsewhere.
pub fn answer(req: &HttpRequest, status: StatusCode, code: &str, message: &str) -> HttpResponse {
    match HtmlErrors::of(req) {
        Some(pages) => (pages.page)(status, code, message),
        None => envelope(status, code, message),
    }
}

/// Unknown routes: 405 with `Allow` when the path exists for other methods, else 404; an HTML
/// page for the web pages' paths, the envelope elsewhere.
pub async fn not_found(req: HttpRequest) -> HttpResponse {
    let allowed = req
        .app_data::<actix_web::web::Data<RouteTable>>()
        .and_then(|t| t.allowed(req.path()));
    if let Some(pages) = HtmlErrors::of(&req) {
        return (pages.not_found)(&req, allowed);
    }
    match allowed {
        Some(methods) => {
            let allow = methods.join(", ");
            let mut res = ApiError::coded(
                ErrorCode::MethodNotAllowed,
                format!(
                    "{} is not allowed on {}; allowed: {allow}",
                    req.method(),
                    req.path()
                ),
            )
            .error_response();
            if let Ok(v) = HeaderValue::from_str(&allow) {
                res.headers_mut().insert(ALLOW, v);
            }
            res
        }
        None => ApiError::coded(
            ErrorCode::RouteNotFound,
            format!(
                "no route {} {}; the API is described at /api/openapi.json",
                req.method(),
                req.path()
            ),
        )
        .error_response(),
    }
}

/// JSON body errors: a wrong content type is 415, anything else 400.
pub fn json_error(err: actix_web::error::JsonPayloadError, _req: &HttpRequest) -> actix_web::Error {
    use actix_web::error::JsonPayloadError as J;
    match &err {
        J::ContentType => ApiError::coded(
            ErrorCode::UnsupportedMediaType,
            "send the body as JSON with `Content-Type: application/json`",
        ),
        J::OverflowKnownLength { .. } | J::Overflow { .. } => ApiError::coded(
            ErrorCode::PayloadTooLarge,
            format!("the JSON body is too large: {err}"),
        ),
        _ => ApiError::coded(
            ErrorCode::InvalidJson,
            format!("the JSON body is not valid: {err}"),
        ),
    }
    .into()
}

pub fn query_error(
    err: actix_web::error::QueryPayloadError,
    _req: &HttpRequest,
) -> actix_web::Error {
    ApiError::coded(
        ErrorCode::InvalidQuery,
        format!("the query string is not valid: {err}"),
    )
    .into()
}

pub fn path_error(err: actix_web::error::PathError, _req: &HttpRequest) -> actix_web::Error {
    ApiError::coded(
        ErrorCode::InvalidPath,
        format!("the URL path is not valid: {err}"),
    )
    .into()
}

/// Turns any error response that is not already ours (actix's own 404/405/400s, panics caught
/// as 500) into the envelope, or into an HTML error page on the web pages' paths.
pub fn wrap_foreign_errors<B: MessageBody + 'static>(
    res: ServiceResponse<B>,
) -> actix_web::Result<ErrorHandlerResponse<B>> {
    let ours = res.response().headers().get(CONTENT_TYPE).is_some_and(|v| {
        v == HeaderValue::from_static("application/json") || v.as_bytes().starts_with(b"text/html")
    });
    if ours {
        return Ok(ErrorHandlerResponse::Response(res.map_into_left_body()));
    }
    let status = res.status();
    let (code, message) = match status {
        StatusCode::METHOD_NOT_ALLOWED => (
            ErrorCode::MethodNotAllowed,
            "this route does not accept that method",
        ),
        StatusCode::NOT_FOUND => (
            ErrorCode::RouteNotFound,
            "no such route; see /api/openapi.json",
        ),
        StatusCode::PAYLOAD_TOO_LARGE => {
            (ErrorCode::PayloadTooLarge, "the request body is too large")
        }
        s if s.is_server_error() => (
            ErrorCode::Internal,
            "the server failed to handle this request",
        ),
        _ => (ErrorCode::BadRequest, "the request could not be understood"),
    };
    let (req, _) = res.into_parts();
    let body = answer(&req, status, code.as_str(), message);
    let res = ServiceResponse::new(req, body).map_into_right_body();
    Ok(ErrorHandlerResponse::Response(res))
}
