//! Slow clients cannot hold a connection: every request body is read under a deadline.
//!
//! actix times out the request head (`client_request_timeout`) and idle keep-alive connections,
//! but not the body: a client that sends its headers and `Content-Length: 900000`, then one byte
//! every few seconds, held its connection (and a file descriptor) for as long as it liked, on
//! every route that reads a body. [`guard`] wraps each request's payload in [`TimedBody`], which
//! fails the read when
//!
//! * the client sent nothing for `body_idle_timeout`, or
//! * the time spent waiting for the client exceeds `body_timeout` plus one second for every
//!   `body_min_rate` bytes received so far: a total deadline for small bodies (JSON, forms), a
//!   minimum average rate for large streams (uploads, LFS, NDJSON commits).
//!
//! Only time spent waiting for the client counts: while the handler is busy (writing to the blob
//! store, back-pressure), the clock stops. The request then answers 408 `request_timeout` in the
//! JSON envelope (an HTML page on the web pages' paths) and the connection is closed.
//!
//! With `--max-connections-per-ip`, [`PerIp`] counts each client address's open connections
//! (from actix's `on_connect`); a request on a connection over the cap gets 429
//! `too_many_connections` at once and its connection is closed, so one address cannot take every
//! connection slot.

use std::cell::{Cell, RefCell};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_web::body::MessageBody;
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::error::PayloadError;
use actix_web::http::StatusCode;
use actix_web::http::header::{CONNECTION, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{HttpMessage, web};
use bytes::Bytes;
use futures::Stream;
use tokio::time::{Instant, Sleep};

use crate::config::ClientLimits;
use crate::error::{ErrorCode, envelope};

/// The deadlines of one body, from [`ClientLimits`].
#[derive(Clone, Copy, Debug)]
pub struct BodyDeadlines {
    pub initial: Duration,
    pub idle: Duration,
    /// Bytes per second; each one extends the budget (never 0).
    pub min_rate: u64,
}

impl From<&ClientLimits> for BodyDeadlines {
    fn from(l: &ClientLimits) -> Self {
        Self {
            initial: Duration::from_millis(l.body_timeout_ms),
            idle: Duration::from_millis(l.body_idle_timeout_ms),
            min_rate: l.body_min_rate.max(1),
        }
    }
}

impl BodyDeadlines {
    /// How long the client may have been waited for once `received` bytes have arrived.
    fn budget(&self, received: u64) -> Duration {
        self.initial.saturating_add(Duration::from_secs_f64(
            received as f64 / self.min_rate as f64,
        ))
    }
}

/// What the middleware and the body share: the connection's own payload lives here, so that the
/// middleware can keep it until the response is sent (see [`guard`]).
struct Shared {
    body: RefCell<Payload>,
    timed_out: Cell<bool>,
    finished: Cell<bool>,
}

/// A request body that fails with a timeout when the client is too slow (see the module doc).
pub struct TimedBody {
    deadlines: BodyDeadlines,
    shared: Rc<Shared>,
    received: u64,
    /// Time spent waiting for the client, up to the current wait.
    waited: Duration,
    /// Since when the current wait lasts (the last poll that found no data).
    waiting_since: Option<Instant>,
    timer: Pin<Box<Sleep>>,
}

impl TimedBody {
    fn new(deadlines: BodyDeadlines, shared: Rc<Shared>) -> Self {
        Self {
            deadlines,
            shared,
            received: 0,
            waited: Duration::ZERO,
            waiting_since: None,
            timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
        }
    }

    fn timed_out(&mut self) -> Poll<Option<Result<Bytes, PayloadError>>> {
        self.shared.timed_out.set(true);
        self.shared.finished.set(true);
        Poll::Ready(Some(Err(PayloadError::Io(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "the client sent the request body too slowly",
        )))))
    }
}

impl Stream for TimedBody {
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.shared.finished.get() {
            return Poll::Ready(None);
        }
        let polled = Pin::new(&mut *this.shared.body.borrow_mut()).poll_next(cx);
        match polled {
            Poll::Ready(item) => {
                if let Some(since) = this.waiting_since.take() {
                    this.waited += since.elapsed();
                }
                match &item {
                    Some(Ok(chunk)) => this.received += chunk.len() as u64,
                    Some(Err(_)) | None => this.shared.finished.set(true),
                }
                Poll::Ready(item)
            }
            Poll::Pending => {
                let now = Instant::now();
                let since = *this.waiting_since.get_or_insert(now);
                let left = this
                    .deadlines
                    .budget(this.received)
                    .saturating_sub(this.waited);
                let deadline = since + left.min(this.deadlines.idle);
                if now >= deadline {
                    return this.timed_out();
                }
                this.timer.as_mut().reset(deadline);
                match this.timer.as_mut().poll(cx) {
                    Poll::Ready(()) => this.timed_out(),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

/// Open connections per client address (`--max-connections-per-ip`).
pub struct PerIp {
    cap: usize,
    open: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>,
}

/// One connection's place in [`PerIp`] (in the connection's data; released when it closes).
pub struct IpSlot {
    table: std::sync::Arc<PerIp>,
    ip: std::net::IpAddr,
    /// Whether this connection is beyond its address's cap.
    over: bool,
}

impl PerIp {
    pub fn new(cap: usize) -> std::sync::Arc<Self> {
        std::sync::Arc::new(Self {
            cap,
            open: Default::default(),
        })
    }

    /// Counts a new connection (`io`: actix's TCP stream) in its connection data.
    pub fn on_connect(
        self: &std::sync::Arc<Self>,
        io: &dyn std::any::Any,
        data: &mut actix_web::dev::Extensions,
    ) {
        let Some(ip) = io
            .downcast_ref::<actix_web::rt::net::TcpStream>()
            .and_then(|s| s.peer_addr().ok())
            .map(|a| a.ip())
        else {
            return;
        };
        let Ok(mut open) = self.open.lock() else {
            return;
        };
        let n = open.entry(ip).or_insert(0);
        *n += 1;
        data.insert(IpSlot {
            table: self.clone(),
            ip,
            over: *n > self.cap,
        });
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        if let Ok(mut open) = self.table.open.lock()
            && let Some(n) = open.get_mut(&self.ip)
        {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// The middleware: wraps the body of every request that has one, and answers 408 when its read
/// timed out. A body left unread when the response goes out closes the connection (actix would
/// otherwise drain a dropped chunked body without any deadline).
pub async fn guard(
    mut req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody + 'static>, actix_web::Error> {
    let deadlines = req
        .app_data::<web::Data<BodyDeadlines>>()
        .map(|d| *d.get_ref())
        .unwrap_or_else(|| BodyDeadlines::from(&ClientLimits::default()));
    if req.conn_data::<IpSlot>().is_some_and(|s| s.over) {
        let mut res = envelope(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::TooManyConnections.as_str(),
            "this address has too many connections open (--max-connections-per-ip): reuse or close one",
        );
        res.headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
        return Ok(req.into_response(res).map_into_right_body());
    }
    let payload = req.take_payload();
    if matches!(payload, Payload::None) {
        req.set_payload(payload);
        return next
            .call(req)
            .await
            .map(ServiceResponse::map_into_left_body);
    }
    let shared = Rc::new(Shared {
        body: RefCell::new(payload),
        timed_out: Cell::new(false),
        finished: Cell::new(false),
    });
    req.set_payload(Payload::Stream {
        payload: Box::pin(TimedBody::new(deadlines, shared.clone())),
    });
    let res = next.call(req).await;
    if !shared.timed_out.get() {
        return res.map(|mut res| {
            if !shared.finished.get() {
                // Unread: the dispatcher sees the body still wanted and closes the connection
                // after this response, rather than draining it.
                res.response_mut().extensions_mut().insert(KeepBody(shared));
            }
            res.map_into_left_body()
        });
    }
    let req = match res {
        Ok(res) => res.into_parts().0,
        Err(e) => {
            // The handler's error: its request is gone with it, so answer without it.
            tracing::debug!(error = %e, "request body timed out");
            return Err(timeout_error());
        }
    };
    let message = "the request body did not arrive in time: send it at a steady pace (limits: \
                   --body-timeout-ms, --body-idle-timeout-ms, --body-min-rate)";
    let mut res = crate::http::errors::answer(
        &req,
        StatusCode::REQUEST_TIMEOUT,
        ErrorCode::RequestTimeout.as_str(),
        message,
    );
    res.headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
    res.extensions_mut().insert(KeepBody(shared));
    Ok(ServiceResponse::new(req, res).map_into_right_body())
}

/// Holds an unread body until the response is sent.
struct KeepBody(#[allow(dead_code)] Rc<Shared>);

fn timeout_error() -> actix_web::Error {
    crate::error::ApiError::coded(
        ErrorCode::RequestTimeout,
        "the request body did not arrive in time",
    )
    .into()
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;
    use futures::channel::mpsc;

    use super::*;

    fn body(
        initial_ms: u64,
    ) -> (
        mpsc::UnboundedSender<Result<Bytes, PayloadError>>,
        TimedBody,
    ) {
        let (tx, rx) = mpsc::unbounded();
        let shared = Rc::new(Shared {
            body: RefCell::new(Payload::Stream {
                payload: Box::pin(rx),
            }),
            timed_out: Cell::new(false),
            finished: Cell::new(false),
        });
        let deadlines = BodyDeadlines {
            initial: Duration::from_millis(initial_ms),
            idle: Duration::from_secs(60),
            min_rate: 1,
        };
        (tx, TimedBody::new(deadlines, shared))
    }

    /// Time the server spends elsewhere (not polling the body) is not the client's.
    #[tokio::test]
    async fn only_time_waiting_for_the_client_counts() {
        let (tx, mut body) = body(500);
        let _ = tx.unbounded_send(Ok(Bytes::from_static(b"a")));
        assert!(matches!(body.next().await, Some(Ok(_))));
        // The handler is busy for longer than the whole budget…
        std::thread::sleep(Duration::from_millis(700));
        // …and the client's next byte is not there yet: still pending, not timed out.
        let pending = futures::poll!(body.next());
        assert!(pending.is_pending(), "timed out for the server's own time");
        let _ = tx.unbounded_send(Ok(Bytes::from_static(b"b")));
        assert!(matches!(body.next().await, Some(Ok(_))));
        assert!(!body.shared.timed_out.get());
    }

    /// A client that sends nothing times out once the budget is spent, and the body then ends.
    #[tokio::test]
    async fn a_silent_client_times_out() {
        let (_tx, mut body) = body(50);
        match body.next().await {
            Some(Err(PayloadError::Io(e))) => {
                assert_eq!(e.kind(), std::io::ErrorKind::TimedOut)
            }
            other => panic!("expected a timeout, got {other:?}"),
        }
        assert!(body.shared.timed_out.get());
        assert!(body.next().await.is_none());
    }

    #[test]
    fn each_byte_extends_the_budget_by_the_minimum_rate() {
        let d = BodyDeadlines {
            initial: Duration::from_secs(30),
            idle: Duration::from_secs(30),
            min_rate: 1000,
        };
        assert_eq!(d.budget(0), Duration::from_secs(30));
        assert_eq!(d.budget(5000), Duration::from_secs(35));
    }
}
