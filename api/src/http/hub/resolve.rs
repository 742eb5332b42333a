//! `HEAD`/`GET /{owner}/{name}/resolve/{rev}/{path}`: the Hub's download route, served by the
//! native download path (streaming, `Range`, `If-None-Match`) with the Hub's headers.

use actix_web::http::StatusCode;
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, ResponseError, web};

use super::{etag, is_lfs};
use crate::app::files::{find_file, serve_file};
use crate::app::lookup::find_maybe_version;
use crate::error::ApiError;
use crate::error::ErrorCode;
use crate::http::hub::HubReader;
use crate::state::AppState;

pub async fn resolve(
    state: web::Data<AppState>,
    HubReader(caller): HubReader,
    path: web::Path<(String, String, String, String)>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let (owner, name, rev, file_path) = path.into_inner();
    let (adapter, version) = find_maybe_version(&state, &caller, &owner, &name, &rev).await?;
    let Some(version) = version else {
        // A repo made by `create_repo` has no version yet; on the Hub its `main` exists (an
        // empty first commit), so clients probing a file there (transformers' push_to_hub reads
        // README.md first) expect "no such file", not "no such revision".
        let code = if rev == "main" {
            ErrorCode::FileNotFound
        } else {
            ErrorCode::VersionNotFound
        };
        return Err(ApiError::not_found(
            code,
            format!("{file_path} at {rev} of {}", adapter.repo_id()),
        ));
    };
    let file = match find_file(&adapter, &version, &file_path) {
        Ok(f) => f,
        Err(e) => {
            // With the commit, the client records the file as absent at that commit and stops
            // probing for it (PEFT and transformers look for optional files this way).
            let mut res = e.error_response();
            if let Ok(v) = HeaderValue::from_str(&version.revision) {
                res.headers_mut()
                    .insert(HeaderName::from_static("x-repo-commit"), v);
            }
            return Ok(res);
        }
    };
    let tag = format!("\"{}\"", etag(&state, file).await?);
    let mut res = HttpResponse::build(StatusCode::OK);
    res.insert_header(("X-Repo-Commit", version.revision.as_str()));
    if is_lfs(&file.path, file.size) {
        res.insert_header(("X-Linked-Etag", tag.as_str()))
            .insert_header(("X-Linked-Size", file.size.to_string()));
    }
    serve_file(&state, &req, &adapter, file, &tag, res).await
}
