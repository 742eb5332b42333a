//! File downloads: streamed, with `ETag: "<sha256>"`, `If-None-Match` → 304, single `Range` → 206,
//! `Content-Length` and HEAD.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, route, web};

use crate::app::files::{find_file, serve_file};
use crate::app::lookup::find_version;
use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody};
use crate::state::AppState;

/// Download one file of a version (GET and HEAD).
#[utoipa::path(
    tag = "files",
    params(
        ("ref" = String, Path, description = "number, v{N}, alias, main or revision"),
        ("path" = String, Path, description = "the file's path in the version")
    ),
    responses(
        (status = 200, description = "the file's bytes", content_type = "application/octet-stream"),
        (status = 206, description = "the requested byte range"),
        (status = 304, description = "If-None-Match matched the ETag"),
        (status = 404, body = ErrorBody), (status = 416, body = ErrorBody)
    )
)]
#[route(
    "/adapters/{owner}/{name}/versions/{ref}/files/{path:.*}",
    method = "GET",
    method = "HEAD"
)]
pub async fn download_file(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<(String, String, String, String)>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let (owner, name, reference, file_path) = path.into_inner();
    let (adapter, version) = find_version(&state, &caller, &owner, &name, &reference).await?;
    let file = find_file(&adapter, &version, &file_path)?;
    let etag = format!("\"{}\"", file.sha256);
    let mut res = HttpResponse::build(StatusCode::OK);
    res.insert_header(("X-Quiver-Revision", version.revision.as_str()));
    serve_file(&state, &req, &adapter, file, &etag, res).await
}
