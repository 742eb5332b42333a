//! The API's documentation (`/docs`, Swagger UI, and `/api/openapi.json`) answers HEAD as it
//! answers GET: Swagger UI's service registers GET only. [`head_as_get`] runs those HEAD
//! requests as GETs; the connection still knows the request was HEAD (that is decided when it
//! is read), so the answer carries GET's headers and `Content-Length` and no body.

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::Method;
use actix_web::middleware::Next;

/// The documentation's routes with their methods, for 405 answers (`RouteTable::with_routes`).
pub const ROUTES: &[(&str, &[&str])] = &[
    ("/docs", &["GET", "HEAD"]),
    ("/docs/{path:.*}", &["GET", "HEAD"]),
    ("/api/openapi.json", &["GET", "HEAD"]),
];

/// Whether a path is the documentation's.
pub fn is_docs_path(path: &str) -> bool {
    path == "/docs" || path.starts_with("/docs/") || path == "/api/openapi.json"
}

/// Middleware: HEAD on the documentation's paths is served by their GET routes.
pub async fn head_as_get(
    mut req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    if req.method() == Method::HEAD && is_docs_path(req.path()) {
        req.head_mut().method = Method::GET;
    }
    next.call(req).await
}
