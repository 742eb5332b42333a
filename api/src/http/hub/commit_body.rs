//! Reading a Hub NDJSON commit without holding it whole: one line at a time, each bounded.
//!
//! A commit line holds one operation; an inline file is base64 inside its line. The Hub client
//! sends files over 10 MiB and every weights file through LFS (see `preupload`), so an inline
//! file is at most [`MAX_INLINE_FILE`] bytes and a line at most [`MAX_LINE`]; the inline files
//! of one commit together at most [`MAX_INLINE_TOTAL`]. Memory per commit is bounded by those
//! (about 100 MiB at worst, whatever the body's size). A longer line, more than
//! [`MAX_OPERATIONS`] lines or more inline bytes are refused with 413 as soon as they are seen,
//! before the rest of the body is read.

use actix_web::web;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;

use crate::error::{ApiError, ErrorCode};

/// Largest inline (base64) file of a commit: what the Hub client sends inline (larger files go
/// through LFS).
pub const MAX_INLINE_FILE: usize = super::LFS_ABOVE as usize;
/// Largest commit line: an inline file's base64 plus its JSON (path, keys).
pub const MAX_LINE: usize = MAX_INLINE_FILE / 3 * 4 + 64 * 1024;
/// Most lines (operations) in one commit.
pub const MAX_OPERATIONS: usize = 10_000;

/// The lines of an NDJSON body, read as they arrive.
pub struct Lines {
    payload: web::Payload,
    buf: BytesMut,
    /// Bytes of `buf` already searched for a newline.
    scanned: usize,
    eof: bool,
    read: u64,
    limit: u64,
    count: usize,
}

impl Lines {
    /// `limit`: the most bytes of the whole body (the upload limit).
    pub fn new(payload: web::Payload, limit: u64) -> Self {
        Self {
            payload,
            buf: BytesMut::new(),
            scanned: 0,
            eof: false,
            read: 0,
            limit,
            count: 0,
        }
    }

    /// The next line (without its newline) and its number, from 1.
    pub async fn next(&mut self) -> Result<Option<(usize, Bytes)>, ApiError> {
        loop {
            if let Some(i) = self.buf[self.scanned..].iter().position(|&b| b == b'\n') {
                let mut line = self.buf.split_to(self.scanned + i + 1);
                line.truncate(line.len() - 1);
                self.scanned = 0;
                return self.counted(line.freeze()).map(Some);
            }
            self.scanned = self.buf.len();
            if self.buf.len() > MAX_LINE {
                return Err(ApiError::coded(
                    ErrorCode::PayloadTooLarge,
                    format!(
                        "commit line {} is longer than {MAX_LINE} bytes: files over {MAX_INLINE_FILE} \
                         bytes go through LFS (preupload says so), not inline",
                        self.count + 1
                    ),
                ));
            }
            if self.eof {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                let line = std::mem::take(&mut self.buf).freeze();
                self.scanned = 0;
                return self.counted(line).map(Some);
            }
            match self.payload.next().await {
                Some(Ok(chunk)) => {
                    self.read += chunk.len() as u64;
                    if self.read > self.limit {
                        return Err(ApiError::too_large(self.limit));
                    }
                    self.buf.extend_from_slice(&chunk);
                }
                Some(Err(e)) => {
                    return Err(ApiError::coded(
                        ErrorCode::InvalidRequest,
                        format!("the commit body broke off: {e}"),
                    ));
                }
                None => self.eof = true,
            }
        }
    }

    fn counted(&mut self, line: Bytes) -> Result<(usize, Bytes), ApiError> {
        self.count += 1;
        if self.count > MAX_OPERATIONS {
            return Err(ApiError::coded(
                ErrorCode::PayloadTooLarge,
                format!("a commit holds at most {MAX_OPERATIONS} lines (operations)"),
            ));
        }
        Ok((self.count, line))
    }
}

/// Most bytes of inline files in one commit (held until the commit is validated): README,
/// configs, tokenizers; weights and large files go through LFS.
pub const MAX_INLINE_TOTAL: usize = 64 * 1024 * 1024;

/// The request's `Content-Length`, if it sent one.
pub fn content_length(req: &actix_web::HttpRequest) -> Option<u64> {
    req.headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}
