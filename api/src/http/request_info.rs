//! Who is asking from where, for the audit log (docs/audit.md): a request id (the client's
//! `X-Request-Id` when it is 1 to 64 characters of `A-Z a-z 0-9 . _ -`, else a fresh UUID) and
//! the peer address of the connection (`X-Forwarded-For` is not trusted).

use std::future::{Ready, ready};

use actix_web::dev::Payload;
use actix_web::{FromRequest, HttpRequest};
use quiver_store::{AuditContext, Principal};

use crate::error::ApiError;

/// The longest client request id kept.
pub const MAX_REQUEST_ID: usize = 64;

#[derive(Clone, Debug)]
pub struct RequestInfo {
    pub request_id: String,
    pub client_addr: Option<String>,
}

impl RequestInfo {
    pub fn of(req: &HttpRequest) -> Self {
        let request_id = req
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .filter(|id| well_formed(id))
            .map(str::to_owned)
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        Self {
            request_id,
            client_addr: req.peer_addr().map(|a| a.ip().to_string()),
        }
    }

    /// The audit context of this request made by `principal` (anonymous: no actor).
    pub fn audit(&self, principal: Option<&Principal>) -> AuditContext {
        AuditContext {
            actor: principal.map(|p| p.user.clone()),
            token_id: principal.map(|p| p.token_id.clone()),
            request_id: Some(self.request_id.clone()),
            client_addr: self.client_addr.clone(),
        }
    }
}

fn well_formed(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_REQUEST_ID
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl FromRequest for RequestInfo {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(Ok(Self::of(req)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_bounded_and_plain() {
        assert!(well_formed("abc-123_x.y"));
        assert!(!well_formed(""));
        assert!(!well_formed("a b"));
        assert!(!well_formed(&"a".repeat(MAX_REQUEST_ID + 1)));
    }
}
