//! The webhook workers: a small pool per process that claims only `webhook` jobs (one per event
//! and subscription), so deliveries never wait behind a merge. One attempt: check the
//! subscription still exists and may still see the adapter, vet the target again, POST the
//! signed body to the vetted address (no redirects, no proxy), log the attempt, and end the job:
//! a 2xx succeeds; anything else is retried after [`super::retry_delay_ms`] until
//! [`super::MAX_ATTEMPTS`]; a 410 Gone deactivates the subscription.

use std::sync::Arc;
use std::time::{Duration, Instant};

use quiver_store::{
    DeliveryStatus, JobEnd, JobKind, JobRecord, Lease, NewDelivery, NewJob, RepoId, Store,
    StoreError, WebhookRecord,
};
use serde::Deserialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{WAKE, WebhookOptions, may_see, retry_delay_ms, sign, target};
use crate::metrics::Metrics;

/// Idle workers look for deliveries this often (an event recorded in this process wakes them
/// at once).
const POLL: Duration = Duration::from_millis(250);
/// Longest response body kept in the delivery log.
pub const EXCERPT_BYTES: usize = 1024;
/// HTTP clients a worker keeps (one per vetted host and address, so connections are reused).
const CLIENTS_KEPT: usize = 32;
/// The `reason` of the audit entry of a subscription deactivated by a 410 answer.
const GONE_REASON: &str = "the receiver answered 410 Gone";

/// A worker's HTTP clients, each pinned to one vetted address of one host.
#[derive(Default)]
struct Clients(std::collections::HashMap<(String, std::net::SocketAddr), reqwest::Client>);

impl Clients {
    fn get(
        &mut self,
        vetted: &target::Vetted,
        timeout: Duration,
    ) -> reqwest::Result<reqwest::Client> {
        let key = (vetted.host.clone(), vetted.addr);
        if let Some(c) = self.0.get(&key) {
            return Ok(c.clone());
        }
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .connect_timeout(super::CONNECT_TIMEOUT.min(timeout))
            .timeout(timeout)
            .resolve(&vetted.host, vetted.addr)
            .user_agent(concat!("Quiver-Webhooks/", env!("CARGO_PKG_VERSION")))
            .build()?;
        if self.0.len() >= CLIENTS_KEPT {
            self.0.clear();
        }
        self.0.insert(key, client.clone());
        Ok(client)
    }
}

#[derive(Deserialize)]
struct Spec {
    webhook_id: String,
    event_id: i64,
}

struct Shared {
    store: Store,
    options: WebhookOptions,
    metrics: Arc<Metrics>,
    lease_ms: i64,
}

/// The webhook workers of one process.
pub struct Deliverers {
    handles: Vec<JoinHandle<()>>,
    stop: watch::Sender<bool>,
}

impl Deliverers {
    pub fn start(store: Store, options: WebhookOptions, metrics: Arc<Metrics>) -> Self {
        let (stop, shutdown) = watch::channel(false);
        let lease_ms = (options.timeout_ms as i64).saturating_add(60_000);
        let count = options.workers;
        let shared = Arc::new(Shared {
            store,
            options,
            metrics,
            lease_ms,
        });
        let handles = (0..count)
            .map(|i| {
                let id = format!("webhook/{}/{i}", std::process::id());
                tokio::spawn(worker_loop(shared.clone(), id, shutdown.clone()))
            })
            .collect();
        if count > 0 {
            tracing::info!(workers = count, "webhook workers started");
        }
        Self { handles, stop }
    }

    /// Stops claiming and waits for the attempts in flight (each at most the delivery timeout).
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for h in self.handles {
            let _ = h.await;
        }
    }
}

async fn worker_loop(shared: Arc<Shared>, worker: String, mut shutdown: watch::Receiver<bool>) {
    let reap_every = Duration::from_secs(10);
    let mut last_reap = Instant::now();
    let mut failures = 0u32;
    let mut clients = Clients::default();
    // Right after a delivery there is likely another: claim without looking first.
    let mut busy = false;
    loop {
        if *shutdown.borrow() {
            return;
        }
        let woken = WAKE.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        if last_reap.elapsed() >= reap_every {
            last_reap = Instant::now();
            match shared.store.meta.reap_expired_leases().await {
                // Jobs of any kind (a merge whose worker died): announce those it ended.
                Ok((_, ended)) => {
                    for job in &ended {
                        super::job_finished(&shared.store, job).await;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "could not reap expired leases"),
            }
        }
        let kinds = [JobKind::Webhook];
        let waiting = match busy {
            true => Ok(true),
            false => shared.store.meta.has_runnable_job(&kinds).await,
        };
        let claimed = match waiting {
            Ok(false) => Ok(None),
            Ok(true) => {
                shared
                    .store
                    .meta
                    .claim_job(&worker, shared.lease_ms, &kinds)
                    .await
            }
            Err(e) => Err(e),
        };
        match claimed {
            Ok(Some((job, lease))) => {
                failures = 0;
                busy = true;
                attempt(&shared, &mut clients, &job, &lease).await;
                continue;
            }
            Ok(None) => {
                failures = 0;
                busy = false;
            }
            Err(e) => {
                failures += 1;
                busy = false;
                tracing::warn!(error = %e, worker = %worker, "cannot claim webhook deliveries");
            }
        }
        let wait = if failures > 0 {
            Duration::from_millis(100 * 2u64.pow(failures.min(6))).min(Duration::from_secs(5))
        } else {
            POLL
        };
        tokio::select! {
            _ = &mut woken => {}
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => {}
        }
    }
}

/// What one attempt came to.
struct Attempt {
    status: DeliveryStatus,
    code: Option<u16>,
    excerpt: Option<String>,
    error: Option<String>,
    /// The metrics outcome.
    outcome: &'static str,
}

impl Attempt {
    fn not_sent(status: DeliveryStatus, outcome: &'static str, error: String) -> Self {
        Self {
            status,
            code: None,
            excerpt: None,
            error: Some(error),
            outcome,
        }
    }
}

/// One attempt of one delivery job, logged and ended.
async fn attempt(shared: &Shared, clients: &mut Clients, job: &JobRecord, lease: &Lease) {
    let spec: Spec = match serde_json::from_value(job.spec.clone()) {
        Ok(s) => s,
        Err(e) => {
            end(
                shared,
                job,
                lease,
                JobEnd::Failed(format!("bad delivery spec: {e}")),
            )
            .await;
            return;
        }
    };
    let hook = match shared.store.meta.get_webhook(&spec.webhook_id).await {
        Ok(Some(h)) if h.active => h,
        Ok(_) => {
            shared.metrics.delivery("skipped");
            let why = "the subscription was deleted or deactivated".to_string();
            end(shared, job, lease, JobEnd::Failed(why)).await;
            return;
        }
        Err(e) => return retry_store_error(shared, job, lease, e).await,
    };
    let started = Instant::now();
    let result = match prepare(shared, &hook, spec.event_id).await {
        Ok(Ok((vetted, event))) => send(shared, clients, &hook, &job.id, vetted, &event).await,
        Ok(Err(skip)) => skip,
        Err(e) => return retry_store_error(shared, job, lease, e).await,
    };
    let latency_ms = i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX);
    shared.metrics.delivery(result.outcome);
    let delivery = NewDelivery {
        delivery_id: job.id.clone(),
        webhook_id: hook.id.clone(),
        event_id: spec.event_id,
        attempt: lease.attempt,
        status: result.status,
        response_code: result.code.map(i64::from),
        latency_ms,
        response_excerpt: result.excerpt.clone(),
        error: result.error.clone(),
    };
    let how = match (result.status, result.code) {
        (DeliveryStatus::Delivered, _) => JobEnd::Succeeded,
        (DeliveryStatus::Skipped, _) => {
            JobEnd::Failed(result.error.unwrap_or_else(|| "skipped".into()))
        }
        (_, Some(410)) => {
            // The receiver says it is gone for good: stop sending to it.
            // Audited as the service's own change (`webhook.update`, no actor).
            let service = quiver_store::AuditContext::default();
            if let Err(e) = shared
                .store
                .meta
                .set_webhook_active_audited(&hook.id, false, Some(GONE_REASON), Some(&service))
                .await
            {
                tracing::warn!(webhook = %hook.id, error = %e, "could not deactivate a webhook");
            }
            tracing::info!(webhook = %hook.id, "receiver answered 410 Gone; subscription deactivated");
            JobEnd::Failed(
                "the receiver answered 410 Gone; the subscription was deactivated".into(),
            )
        }
        _ => JobEnd::Retry {
            error: result
                .error
                .unwrap_or_else(|| format!("HTTP {}", result.code.unwrap_or_default())),
            backoff_ms: retry_delay_ms(shared.options.retry_base_ms, lease.attempt),
        },
    };
    // The attempt's log row and the job's end commit together.
    match shared
        .store
        .meta
        .finish_delivery(lease, &how, &delivery)
        .await
    {
        Ok(Some(_)) => {}
        Ok(None) => {
            tracing::warn!(delivery = %job.id, "lease lost before the delivery's end was recorded")
        }
        Err(e) => {
            tracing::warn!(delivery = %job.id, error = %e, "could not record a delivery attempt; its lease will expire and it is retried")
        }
    }
}

/// The event and the vetted target, or why the attempt is not sent (`Ok(Err)`).
async fn prepare(
    shared: &Shared,
    hook: &WebhookRecord,
    event_id: i64,
) -> Result<Result<(target::Vetted, quiver_store::EventRecord), Attempt>, StoreError> {
    let Some(event) = shared.store.meta.get_event(event_id).await? else {
        return Ok(Err(Attempt::not_sent(
            DeliveryStatus::Skipped,
            "skipped",
            format!("event {event_id} no longer exists"),
        )));
    };
    // Checked again now: the adapter may have become private since the event. A deleted
    // adapter's events were checked when they were recorded (its deletion event goes to those
    // who could see it then).
    if event.kind != super::EventKind::AdapterDeleted.as_str()
        && event.kind != super::PING
        && let Ok(repo) = event.adapter.parse::<RepoId>()
        && let Some(adapter) = shared.store.meta.get_adapter(&repo).await?
        && !may_see(&*shared.store.meta, hook, &adapter.owner, adapter.private).await?
    {
        return Ok(Err(Attempt::not_sent(
            DeliveryStatus::Skipped,
            "skipped",
            format!(
                "{} is not visible to {} any more",
                event.adapter, hook.created_by
            ),
        )));
    }
    match target::vet(&hook.url, shared.options.allow_private).await {
        Ok(v) => Ok(Ok((v, event))),
        Err(why) => Ok(Err(Attempt::not_sent(
            DeliveryStatus::Failed,
            "refused",
            format!("target refused: {why}"),
        ))),
    }
}

/// POSTs the signed body to the vetted address.
async fn send(
    shared: &Shared,
    clients: &mut Clients,
    hook: &WebhookRecord,
    delivery_id: &str,
    vetted: target::Vetted,
    event: &quiver_store::EventRecord,
) -> Attempt {
    let body = match serde_json::to_vec(&super::body(event)) {
        Ok(b) => b,
        Err(e) => {
            return Attempt::not_sent(DeliveryStatus::Failed, "no_response", e.to_string());
        }
    };
    let timeout = Duration::from_millis(shared.options.timeout_ms.max(1));
    let client = match clients.get(&vetted, timeout) {
        Ok(c) => c,
        Err(e) => {
            return Attempt::not_sent(DeliveryStatus::Failed, "no_response", chain(&e));
        }
    };
    let t = quiver_store::time::now_ms() / 1000;
    let response = client
        .post(vetted.url.clone())
        .header("Content-Type", "application/json")
        .header("Quiver-Event", event.kind.as_str())
        .header("Quiver-Delivery", delivery_id)
        .header("Quiver-Webhook-Id", hook.id.as_str())
        .header("Quiver-Signature", sign::signature(&hook.secret, t, &body))
        .body(body)
        .send()
        .await;
    match response {
        Ok(mut r) => {
            let code = r.status().as_u16();
            let mut kept: Vec<u8> = Vec::new();
            while kept.len() < EXCERPT_BYTES {
                match r.chunk().await {
                    Ok(Some(c)) => kept.extend_from_slice(&c),
                    _ => break,
                }
            }
            kept.truncate(EXCERPT_BYTES);
            let excerpt = String::from_utf8_lossy(&kept).into_owned();
            let ok = (200..300).contains(&code);
            Attempt {
                status: if ok {
                    DeliveryStatus::Delivered
                } else {
                    DeliveryStatus::Failed
                },
                code: Some(code),
                excerpt: (!excerpt.is_empty()).then_some(excerpt),
                error: (!ok).then(|| format!("HTTP {code}")),
                outcome: if ok { "delivered" } else { "http_error" },
            }
        }
        Err(e) => {
            let what = if e.is_timeout() {
                format!("timed out after {} ms: {}", timeout.as_millis(), chain(&e))
            } else {
                chain(&e)
            };
            Attempt::not_sent(DeliveryStatus::Failed, "no_response", what)
        }
    }
}

/// An error with its sources.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

async fn retry_store_error(shared: &Shared, job: &JobRecord, lease: &Lease, e: StoreError) {
    let how = JobEnd::Retry {
        error: e.to_string(),
        backoff_ms: retry_delay_ms(shared.options.retry_base_ms, lease.attempt),
    };
    end(shared, job, lease, how).await;
}

async fn end(shared: &Shared, job: &JobRecord, lease: &Lease, how: JobEnd) {
    match shared.store.meta.end_job(lease, &how).await {
        Ok(Some(state)) => {
            tracing::debug!(delivery = %job.id, attempt = lease.attempt, state = state.as_str(), "webhook delivery attempt ended")
        }
        Ok(None) => {
            tracing::warn!(delivery = %job.id, "lease lost before the delivery's end was recorded")
        }
        Err(e) => {
            tracing::warn!(delivery = %job.id, error = %e, "could not record a delivery's end")
        }
    }
}

/// Queues the event again for the subscription: a new delivery (new id, attempts from 1).
pub async fn redeliver(
    store: &Store,
    hook: &WebhookRecord,
    event_id: i64,
) -> Result<JobRecord, StoreError> {
    let (job, _) = store
        .meta
        .enqueue_job(&NewJob {
            kind: JobKind::Webhook,
            spec: quiver_store::meta::delivery_spec(&hook.id, event_id),
            spec_sha256: String::new(),
            created_by: hook.created_by.clone(),
            idempotency_key: None,
            max_attempts: super::MAX_ATTEMPTS,
            subject_version_id: None,
        })
        .await?;
    WAKE.notify_waiters();
    Ok(job)
}
