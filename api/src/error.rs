//! The one error envelope: `{"error": {"code": "snake_case", "message": "…"}}` with the right status,
//! for handler errors, extractor errors, unknown routes and anything actix answers by itself.

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::ServiceResponse;
use actix_web::http::StatusCode;
use actix_web::http::header::{ALLOW, CONTENT_TYPE, HeaderName, HeaderValue};
use actix_web::middleware::ErrorHandlerResponse;
use actix_web::{HttpRequest, HttpResponse, ResponseError};
use quiver_merge::FormatError;
use quiver_store::StoreError;

use crate::route_table::RouteTable;
use serde::Serialize;

macro_rules! error_codes {
    ($($(#[$m:meta])* $variant:ident = $code:literal => $status:ident,)+) => {
        /// Every error code the API answers with, and its status. Codes are stable: never renamed.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum ErrorCode { $($(#[$m])* $variant,)+ }

        impl ErrorCode {
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant,)+];

            pub fn as_str(self) -> &'static str {
                match self { $(ErrorCode::$variant => $code,)+ }
            }

            pub fn status(self) -> StatusCode {
                match self { $(ErrorCode::$variant => StatusCode::$status,)+ }
            }
        }
    };
}

error_codes! {
    /// A request actix refused before a handler ran, for a reason not listed here.
    BadRequest = "bad_request" => BAD_REQUEST,
    InvalidRequest = "invalid_request" => BAD_REQUEST,
    InvalidJson = "invalid_json" => BAD_REQUEST,
    InvalidQuery = "invalid_query" => BAD_REQUEST,
    InvalidPath = "invalid_path" => BAD_REQUEST,
    InvalidName = "invalid_name" => BAD_REQUEST,
    InvalidBaseModel = "invalid_base_model" => BAD_REQUEST,
    InvalidDescription = "invalid_description" => BAD_REQUEST,
    InvalidTags = "invalid_tags" => BAD_REQUEST,
    InvalidAlias = "invalid_alias" => BAD_REQUEST,
    InvalidMultipart = "invalid_multipart" => BAD_REQUEST,
    /// A file path the one path rule refuses (`quiver_store::paths`): `.git`, `..`, absolute …
    InvalidFilePath = "invalid_file_path" => UNPROCESSABLE_ENTITY,
    DuplicateFile = "duplicate_file" => BAD_REQUEST,
    TooManyFiles = "too_many_files" => BAD_REQUEST,
    /// An upload without `adapter_config.json` or `adapter_model.safetensors`.
    MissingFile = "missing_file" => UNPROCESSABLE_ENTITY,
    PickleNotAllowed = "pickle_not_allowed" => UNPROCESSABLE_ENTITY,
    /// A config too large to be one (the other upload format errors are the merge crate's codes).
    InvalidAdapterConfig = "invalid_adapter_config" => UNPROCESSABLE_ENTITY,
    Unauthorized = "unauthorized" => UNAUTHORIZED,
    InvalidToken = "invalid_token" => UNAUTHORIZED,
    Forbidden = "forbidden" => FORBIDDEN,
    /// Something other than the resources below (kept for older clients).
    NotFound = "not_found" => NOT_FOUND,
    AdapterNotFound = "adapter_not_found" => NOT_FOUND,
    VersionNotFound = "version_not_found" => NOT_FOUND,
    FileNotFound = "file_not_found" => NOT_FOUND,
    AliasNotFound = "alias_not_found" => NOT_FOUND,
    JobNotFound = "job_not_found" => NOT_FOUND,
    RouteNotFound = "route_not_found" => NOT_FOUND,
    MethodNotAllowed = "method_not_allowed" => METHOD_NOT_ALLOWED,
    Conflict = "conflict" => CONFLICT,
    /// An idempotency key reused with another request.
    IdempotencyConflict = "idempotency_conflict" => CONFLICT,
    /// The request body arrived too slowly (`--body-timeout-ms`, `--body-min-rate`, …).
    RequestTimeout = "request_timeout" => REQUEST_TIMEOUT,
    /// A client address over `--max-connections-per-ip`.
    TooManyConnections = "too_many_connections" => TOO_MANY_REQUESTS,
    PayloadTooLarge = "payload_too_large" => PAYLOAD_TOO_LARGE,
    UnsupportedMediaType = "unsupported_media_type" => UNSUPPORTED_MEDIA_TYPE,
    RangeNotSatisfiable = "range_not_satisfiable" => RANGE_NOT_SATISFIABLE,
    /// A merge or compression spec that cannot run: unknown method, bad parameters, too few inputs.
    InvalidSpec = "invalid_spec" => UNPROCESSABLE_ENTITY,
    /// Inputs that cannot be merged together (base models, DoRA, collections).
    IncompatibleInputs = "incompatible_inputs" => UNPROCESSABLE_ENTITY,
    /// A `samples.jsonl` that is not one `{"input": "..."}` per line, or too large.
    InvalidSamples = "invalid_samples" => UNPROCESSABLE_ENTITY,
    /// A route request that cannot run: no inputs, too many, bad `top_k`, unknown strategy.
    InvalidRoute = "invalid_route" => UNPROCESSABLE_ENTITY,
    /// A profile vector of the wrong dimension or with non-finite values.
    InvalidVector = "invalid_vector" => UNPROCESSABLE_ENTITY,
    /// The version has no `samples.jsonl` to compute a profile from.
    NoSamples = "no_samples" => UNPROCESSABLE_ENTITY,
    ProfileNotFound = "profile_not_found" => NOT_FOUND,
    Internal = "internal" => INTERNAL_SERVER_ERROR,
    /// Stored data is inconsistent (a blob a row refers to is missing).
    Corrupt = "corrupt" => INTERNAL_SERVER_ERROR,
    StorageUnavailable = "storage_unavailable" => SERVICE_UNAVAILABLE,
    /// Routing needs an embedder (`--embedder-dir`) unless the request brings its vectors.
    EmbedderUnavailable = "embedder_unavailable" => SERVICE_UNAVAILABLE,
    /// A protocol feature this server does not offer (the Hub's Xet storage).
    NotImplemented = "not_implemented" => NOT_IMPLEMENTED,
}

/// The Hugging Face Hub's `X-Error-Code` for our code, where the Hub client has a typed
/// exception for it (`RepositoryNotFoundError`, `RevisionNotFoundError`, `EntryNotFoundError`).
pub fn hub_code(code: &str) -> Option<&'static str> {
    match code {
        "adapter_not_found" => Some("RepoNotFound"),
        "version_not_found" | "alias_not_found" => Some("RevisionNotFound"),
        "file_not_found" => Some("EntryNotFound"),
        _ => None,
    }
}

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable snake_case code; never renamed.
    pub code: String,
    /// What went wrong and what to fix.
    pub message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
    /// An error of the code table, with its status.
    pub fn coded(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::new(code.status(), code.as_str(), message)
    }
    /// `code` is one of the `*NotFound` codes: which kind of thing was not found.
    pub fn not_found(code: ErrorCode, what: impl std::fmt::Display) -> Self {
        Self::coded(code, format!("{what} was not found"))
    }
    pub fn unauthorized() -> Self {
        Self::coded(
            ErrorCode::Unauthorized,
            "this action needs a token: send `Authorization: Bearer <token>` (create one with `quiver token create`)",
        )
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::coded(ErrorCode::Forbidden, message)
    }
    pub fn too_large(limit: u64) -> Self {
        Self::coded(
            ErrorCode::PayloadTooLarge,
            format!(
                "the upload exceeds this server's limit of {limit} bytes (QUIVER_MAX_UPLOAD_BYTES)"
            ),
        )
    }
    pub fn internal(context: &str, err: impl std::fmt::Display) -> Self {
        tracing::error!(error = %err, "{context}");
        Self::coded(
            ErrorCode::Internal,
            "the server failed to handle this request; the cause is in its log",
        )
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for ApiError {}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }
    /// The envelope; not-found errors also carry the Hub's `X-Error-Code` and `X-Error-Message`,
    /// so `huggingface_hub` raises its typed exceptions on the Hub-compatible routes.
    fn error_response(&self) -> HttpResponse<BoxBody> {
        let mut res = envelope(self.status, self.code, &self.message);
        if self.code == ErrorCode::StorageUnavailable.as_str() {
            res.headers_mut().insert(
                actix_web::http::header::RETRY_AFTER,
                HeaderValue::from_static(STORAGE_RETRY_AFTER_SECS),
            );
        }
        if let Some(hub) = hub_code(self.code) {
            let h = res.headers_mut();
            h.insert(
                HeaderName::from_static("x-error-code"),
                HeaderValue::from_static(hub),
            );
            if let Ok(v) = HeaderValue::from_str(&self.message) {
                h.insert(HeaderName::from_static("x-error-message"), v);
            }
        }
        res
    }
}

/// What a `storage_unavailable` answer asks clients to wait before trying again (`Retry-After`):
/// a restarting database or object store is usually back within seconds.
pub const STORAGE_RETRY_AFTER_SECS: &str = "5";

pub fn envelope(status: StatusCode, code: &str, message: &str) -> HttpResponse {
    HttpResponse::build(status).json(ErrorBody {
        error: ErrorDetail {
            code: code.to_string(),
            message: message.to_string(),
        },
    })
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(m) => Self::coded(ErrorCode::NotFound, m),
            StoreError::Conflict(m) => Self::coded(ErrorCode::Conflict, m),
            StoreError::Invalid(m) => Self::coded(ErrorCode::InvalidRequest, m),
            StoreError::BlobMissing(key) => {
                tracing::error!(blob = %key, "a blob that rows refer to is missing");
                Self::coded(
                    ErrorCode::Corrupt,
                    "stored data is inconsistent (a file's content is missing); the cause is in the server's log",
                )
            }
            e if e.is_unavailable() => {
                tracing::error!(error = %e, "storage unavailable");
                Self::coded(
                    ErrorCode::StorageUnavailable,
                    "the database or blob store did not answer; try again shortly",
                )
            }
            e => Self::internal("storage error", e),
        }
    }
}

impl From<FormatError> for ApiError {
    fn from(e: FormatError) -> Self {
        // The upload format's own codes (`invalid_safetensors`, …), all 422.
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, e.code(), e.to_string())
    }
}

/// Unknown routes: 405 with `Allow` when the path exists for other methods, else 404; an HTML
/// page for the web pages' paths, the envelope elsewhere.
pub async fn not_found(req: HttpRequest) -> HttpResponse {
    let allowed = req
        .app_data::<actix_web::web::Data<RouteTable>>()
        .and_then(|t| t.allowed(req.path()));
    if crate::web::is_page_path(req.path()) {
        return crate::web::not_found(&req, allowed);
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
    let body = if crate::web::is_page_path(req.path()) {
        crate::web::error_page(status, code.as_str(), message)
    } else {
        envelope(status, code.as_str(), message)
    };
    let res = ServiceResponse::new(req, body).map_into_right_body();
    Ok(ErrorHandlerResponse::Response(res))
}

#[cfg(test)]
mod tests {
    use super::ErrorCode;

    #[test]
    fn codes_are_distinct_snake_case_and_errors() {
        let mut seen = std::collections::BTreeSet::new();
        for c in ErrorCode::ALL {
            assert!(seen.insert(c.as_str()), "{} twice", c.as_str());
            assert!(
                c.as_str()
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b == b'_')
            );
            assert!(c.status().is_client_error() || c.status().is_server_error());
        }
    }
}
