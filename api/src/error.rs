//! The one error envelope: `{"error": {"code": "snake_case", "message": "…"}}` with the right status,
//! and the one table of codes. The HTTP edges that turn extractor errors, unknown routes and
//! actix's own answers into it (or into an HTML page) are `crate::http::errors`.

use actix_web::body::BoxBody;
use actix_web::http::StatusCode;
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::{HttpResponse, ResponseError};
use quiver_merge::FormatError;
use quiver_store::StoreError;
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
    /// The upload format's errors (`quiver_merge::FormatError`, the same codes as its `code()`).
    InvalidAdapterConfig = "invalid_adapter_config" => UNPROCESSABLE_ENTITY,
    InvalidSafetensors = "invalid_safetensors" => UNPROCESSABLE_ENTITY,
    UnsupportedPeftType = "unsupported_peft_type" => UNPROCESSABLE_ENTITY,
    InvalidAdapter = "invalid_adapter" => UNPROCESSABLE_ENTITY,
    AdapterMismatch = "adapter_mismatch" => UNPROCESSABLE_ENTITY,
    UnsupportedFormat = "unsupported_format" => UNPROCESSABLE_ENTITY,
    IoError = "io_error" => UNPROCESSABLE_ENTITY,
    Unauthorized = "unauthorized" => UNAUTHORIZED,
    InvalidToken = "invalid_token" => UNAUTHORIZED,
    /// A token past its expiry (docs/tokens.md).
    TokenExpired = "token_expired" => UNAUTHORIZED,
    /// A revoked token.
    TokenRevoked = "token_revoked" => UNAUTHORIZED,
    /// A token request that cannot be granted or stored: a bad name, scope, expiry or
    /// restriction, a scope or reach wider than the requesting token's, too many tokens.
    InvalidTokenRequest = "invalid_token_request" => BAD_REQUEST,
    TokenNotFound = "token_not_found" => NOT_FOUND,
    Forbidden = "forbidden" => FORBIDDEN,
    /// A protected alias created, moved or deleted by a caller who does not administer the
    /// adapter's namespace (docs/protected-aliases.md); the message names the rule.
    AliasProtected = "alias_protected" => FORBIDDEN,
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
    /// A webhook URL that is malformed, too long, not http(s), or whose host resolves to an
    /// address deliveries may not reach (loopback, private, link-local … without
    /// `--webhook-allow-private`); the message says which.
    InvalidWebhookUrl = "invalid_webhook_url" => BAD_REQUEST,
    /// A subscription's other fields: an unknown event type, no or two scopes, a bad secret.
    InvalidWebhook = "invalid_webhook" => BAD_REQUEST,
    /// A user over the subscriptions limit (50).
    TooManyWebhooks = "too_many_webhooks" => BAD_REQUEST,
    WebhookNotFound = "webhook_not_found" => NOT_FOUND,
    /// No such organisation, or the caller is not a member (the same answer).
    OrgNotFound = "org_not_found" => NOT_FOUND,
    DeliveryNotFound = "delivery_not_found" => NOT_FOUND,
    Internal = "internal" => INTERNAL_SERVER_ERROR,
    /// Stored data is inconsistent (a blob a row refers to is missing).
    Corrupt = "corrupt" => INTERNAL_SERVER_ERROR,
    StorageUnavailable = "storage_unavailable" => SERVICE_UNAVAILABLE,
    /// The server's disk is full: nothing was stored.
    InsufficientStorage = "insufficient_storage" => INSUFFICIENT_STORAGE,
    /// Routing needs an embedder (`--embedder-dir`) unless the request brings its vectors.
    EmbedderUnavailable = "embedder_unavailable" => SERVICE_UNAVAILABLE,
    /// A protocol feature this server does not offer (the Hub's Xet storage).
    NotImplemented = "not_implemented" => NOT_IMPLEMENTED,
}

/// The Hugging Face Hub's `X-Error-Code` for our code, where the Hub client has a typed
/// exception for it (`RepositoryNotFoundError`, `RevisionNotFoundError`, `EntryNotFoundError`).
pub fn hub_code(code: ErrorCode) -> Option<&'static str> {
    match code {
        ErrorCode::AdapterNotFound => Some("RepoNotFound"),
        ErrorCode::VersionNotFound | ErrorCode::AliasNotFound => Some("RevisionNotFound"),
        ErrorCode::FileNotFound => Some("EntryNotFound"),
        _ => None,
    }
}

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: ErrorCode,
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
    /// An error of the code table, with its status.
    pub fn coded(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            status: code.status(),
            code,
            message: message.into(),
        }
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
        write!(f, "{}: {}", self.code.as_str(), self.message)
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
        let mut res = envelope(self.status, self.code.as_str(), &self.message);
        if self.code == ErrorCode::StorageUnavailable {
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
            StoreError::AliasProtected(alias) => Self::coded(
                ErrorCode::AliasProtected,
                format!(
                    "alias {alias} is protected: only admins of the namespace may move or delete it"
                ),
            ),
            StoreError::BlobMissing(key) => {
                tracing::error!(blob = %key, "a blob that rows refer to is missing");
                Self::coded(
                    ErrorCode::Corrupt,
                    "stored data is inconsistent (a file's content is missing); the cause is in the server's log",
                )
            }
            StoreError::NoSpace(m) => {
                tracing::error!(error = %m, "out of disk space");
                Self::coded(
                    ErrorCode::InsufficientStorage,
                    "the server's disk is full: nothing was stored; try again later or tell its operator",
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
        let code = match &e {
            FormatError::InvalidSafetensors(_) => ErrorCode::InvalidSafetensors,
            FormatError::InvalidAdapterConfig(_) => ErrorCode::InvalidAdapterConfig,
            FormatError::UnsupportedPeftType { .. } => ErrorCode::UnsupportedPeftType,
            FormatError::InvalidAdapter(_) => ErrorCode::InvalidAdapter,
            FormatError::AdapterMismatch(_) => ErrorCode::AdapterMismatch,
            FormatError::UnsupportedFormat(_) => ErrorCode::UnsupportedFormat,
            FormatError::Io { .. } => ErrorCode::IoError,
        };
        Self::coded(code, e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::{ApiError, ErrorCode};
    use quiver_merge::FormatError;

    /// A full disk is 507 `insufficient_storage`, not 500 `internal`.
    #[test]
    fn a_full_disk_is_insufficient_storage() {
        let e = ApiError::from(quiver_store::StoreError::NoSpace("staging".into()));
        assert_eq!(e.code, ErrorCode::InsufficientStorage);
        assert_eq!(e.status.as_u16(), 507);
    }

    /// The upload format's errors keep the merge crate's codes, through the one table.
    #[test]
    fn format_errors_keep_their_codes() {
        let all = [
            FormatError::InvalidSafetensors("x".into()),
            FormatError::InvalidAdapterConfig("x".into()),
            FormatError::UnsupportedPeftType {
                peft_type: "x".into(),
            },
            FormatError::InvalidAdapter("x".into()),
            FormatError::AdapterMismatch("x".into()),
            FormatError::UnsupportedFormat("x".into()),
            FormatError::Io {
                path: "x".into(),
                source: std::io::Error::other("x"),
            },
        ];
        for e in all {
            let code = e.code();
            let api = ApiError::from(e);
            assert_eq!(api.code.as_str(), code);
            assert_eq!(api.status.as_u16(), 422);
        }
    }

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
