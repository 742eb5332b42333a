//! Serving a version's file, for the REST API and the Hub's `resolve`: streamed, with
//! `ETag: "<sha256>"`, `If-None-Match` → 304, single `Range` → 206, `Content-Length` and HEAD.

use std::sync::Arc;

use actix_web::body::SizedStream;
use actix_web::http::header::{self, HeaderValue};
use actix_web::http::{Method, StatusCode};
use actix_web::{HttpRequest, HttpResponse, HttpResponseBuilder};
use futures::{StreamExt, stream};
use quiver_store::{AdapterRecord, FileRecord, VersionRecord};

use crate::conditional::{RangeRequest, etag_matches, parse_range};
use crate::error::{ApiError, ErrorCode};
use crate::state::AppState;
use crate::upload::WEIGHTS_FILE;

/// The file at `path` of a version, or `file_not_found`.
pub fn find_file<'v>(
    adapter: &AdapterRecord,
    version: &'v VersionRecord,
    path: &str,
) -> Result<&'v FileRecord, ApiError> {
    version
        .files
        .iter()
        .find(|f| f.path == path)
        .ok_or_else(|| {
            ApiError::not_found(
                ErrorCode::FileNotFound,
                format!(
                    "file {path} in version {} of {}",
                    version.number,
                    adapter.repo_id()
                ),
            )
        })
}

/// Streams one stored file (GET) or its headers (HEAD), with `etag` as its entity tag (the
/// native API's is the sha256; the Hub API's follows the Hub's rules), `If-None-Match` → 304 and
/// one `Range` → 206. `res` may carry extra headers already.
pub async fn serve_file(
    state: &AppState,
    req: &HttpRequest,
    adapter: &AdapterRecord,
    file: &FileRecord,
    etag: &str,
    mut res: HttpResponseBuilder,
) -> Result<HttpResponse, ApiError> {
    let file_path = file.path.as_str();
    let size = file.size as u64;
    res.insert_header((header::ETAG, etag))
        .insert_header((header::ACCEPT_RANGES, "bytes"))
        .insert_header((
            header::CACHE_CONTROL,
            if adapter.private {
                "private, max-age=0, must-revalidate"
            } else {
                "public, max-age=0, must-revalidate"
            },
        ));
    if let Ok(v) = HeaderValue::from_str(&format!(
        "attachment; filename=\"{}\"",
        file_path
            .rsplit('/')
            .next()
            .unwrap_or("file")
            .replace('"', "")
    )) {
        res.insert_header((header::CONTENT_DISPOSITION, v));
    }
    if etag_matches(req, etag) {
        return Ok(res.status(StatusCode::NOT_MODIFIED).finish());
    }
    let range = match parse_range(
        req.headers()
            .get(header::RANGE)
            .and_then(|v| v.to_str().ok()),
        size,
    ) {
        RangeRequest::Full => None,
        RangeRequest::Partial(r) => Some(r),
        RangeRequest::Unsatisfiable => {
            return Err(ApiError::coded(
                ErrorCode::RangeNotSatisfiable,
                format!("the Range header does not fit a file of {size} bytes"),
            ));
        }
    };
    let length = range.as_ref().map_or(size, |r| r.end - r.start);
    if let Some(r) = &range {
        res.status(StatusCode::PARTIAL_CONTENT).insert_header((
            header::CONTENT_RANGE,
            format!("bytes {}-{}/{size}", r.start, r.end - 1),
        ));
    }
    if req.method() == Method::HEAD {
        let empty = stream::empty::<Result<bytes::Bytes, actix_web::Error>>();
        return Ok(res.body(SizedStream::new(length, empty)));
    }
    if range.is_none() && file_path == WEIGHTS_FILE {
        state.store.meta.record_download(adapter.id).await?;
    }
    let body = if length == 0 {
        stream::empty().boxed_local()
    } else {
        let metrics = Arc::clone(&state.metrics);
        state
            .store
            .blobs
            .get(&file.sha256, range)
            .await?
            .map(move |chunk| {
                chunk
                    .inspect(|b| metrics.add_out(b.len() as u64))
                    .map_err(|e| actix_web::error::ErrorInternalServerError(e.to_string()))
            })
            .boxed_local()
    };
    Ok(res.body(SizedStream::new(length, body)))
}
