//! Prometheus metrics (prometheus-client, text format 0.0.4): requests and their latency per
//! route, bytes in and out, and jobs: attempts and durations of this process's workers, and jobs
//! by kind and state and the queue depth across every process (read from the database at scrape).

use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::web;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use quiver_store::{JobKind, JobState};

/// Upper bounds of the request-latency buckets, seconds.
const REQUEST_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];
/// Upper bounds of the job-duration buckets, seconds.
const JOB_BUCKETS: [f64; 10] = [0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0];

/// Every label value comes from a closed set, whatever clients send: a label per unknown
/// method name or raw path would grow `/metrics` (and this process's memory) without bound.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    /// One of [`METHODS`], else `other`.
    method: &'static str,
    /// The route pattern the request matched (`/api/v1/adapters/{owner}/{name}`), never the raw
    /// path; `unmatched` when no route did.
    route: String,
    /// `1xx` … `5xx`.
    status: &'static str,
}

/// The methods counted by name.
const METHODS: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"];

/// A request's method label: a known method's name, or `other`.
fn method_label(method: &str) -> &'static str {
    METHODS
        .iter()
        .find(|m| **m == method)
        .copied()
        .unwrap_or("other")
}

/// A status's class label.
fn status_label(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    kind: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    kind: &'static str,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeliveryLabels {
    /// One of [`DELIVERY_OUTCOMES`].
    outcome: &'static str,
}

/// How a webhook delivery attempt ended: a 2xx; a non-2xx answer; no answer (connection refused,
/// timeout, TLS); refused before any connection (the target's address is not allowed); not sent
/// (the subscriber may no longer see the adapter, or the subscription is gone).
pub const DELIVERY_OUTCOMES: [&str; 5] = [
    "delivered",
    "http_error",
    "no_response",
    "refused",
    "skipped",
];

#[derive(Clone)]
struct Buckets(&'static [f64]);

impl MetricConstructor<Histogram> for Buckets {
    fn new_metric(&self) -> Histogram {
        Histogram::new(self.0.iter().copied())
    }
}

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RequestLabels, Histogram, Buckets>,
    bytes_in: Counter,
    bytes_out: Counter,
    job_attempts: Family<KindLabels, Counter>,
    job_durations: Family<OutcomeLabels, Histogram, Buckets>,
    jobs: Family<StateLabels, Gauge>,
    queue_depth: Gauge,
    deliveries: Family<DeliveryLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::new_with_constructor(Buckets(&REQUEST_BUCKETS));
        let (bytes_in, bytes_out) = (Counter::default(), Counter::default());
        let job_attempts = Family::<KindLabels, Counter>::default();
        let job_durations = Family::new_with_constructor(Buckets(&JOB_BUCKETS));
        let jobs = Family::<StateLabels, Gauge>::default();
        let queue_depth = Gauge::default();
        let deliveries = Family::<DeliveryLabels, Counter>::default();
        registry.register(
            "quiver_webhook_deliveries",
            "Webhook delivery attempts of this process by outcome",
            deliveries.clone(),
        );
        registry.register(
            "quiver_http_requests",
            "HTTP requests handled",
            requests.clone(),
        );
        registry.register(
            "quiver_http_request_duration_seconds",
            "Time to the response head",
            latency.clone(),
        );
        registry.register(
            "quiver_bytes_received",
            "File bytes received in uploads",
            bytes_in.clone(),
        );
        registry.register(
            "quiver_bytes_sent",
            "File bytes sent in downloads",
            bytes_out.clone(),
        );
        registry.register(
            "quiver_job_attempts",
            "Job attempts started by this process's workers",
            job_attempts.clone(),
        );
        registry.register(
            "quiver_job_duration_seconds",
            "Job attempts of this process's workers by outcome, from claim to end",
            job_durations.clone(),
        );
        registry.register(
            "quiver_jobs",
            "Jobs by kind and state, all processes",
            jobs.clone(),
        );
        registry.register(
            "quiver_job_queue_depth",
            "Jobs waiting for a worker, all processes",
            queue_depth.clone(),
        );
        Self {
            registry,
            requests,
            latency,
            bytes_in,
            bytes_out,
            job_attempts,
            job_durations,
            jobs,
            queue_depth,
            deliveries,
        }
    }
}

impl Metrics {
    fn observe(&self, method: &str, route: String, status: u16, seconds: f64) {
        let labels = RequestLabels {
            method: method_label(method),
            route,
            status: status_label(status),
        };
        self.requests.get_or_create(&labels).inc();
        self.latency.get_or_create(&labels).observe(seconds);
    }

    /// A webhook delivery attempt ended; an outcome outside [`DELIVERY_OUTCOMES`] counts as
    /// `no_response`.
    pub fn delivery(&self, outcome: &str) {
        let outcome = DELIVERY_OUTCOMES
            .iter()
            .find(|o| **o == outcome)
            .copied()
            .unwrap_or("no_response");
        self.deliveries
            .get_or_create(&DeliveryLabels { outcome })
            .inc();
    }

    pub fn add_in(&self, n: u64) {
        self.bytes_in.inc_by(n);
    }

    pub fn add_out(&self, n: u64) {
        self.bytes_out.inc_by(n);
    }

    /// A worker of this process claimed a job.
    pub fn job_started(&self, kind: JobKind) {
        self.job_attempts
            .get_or_create(&KindLabels {
                kind: kind.as_str(),
            })
            .inc();
    }

    /// A worker of this process ended an attempt (`succeeded`, `failed`, `retry`, `cancelled`,
    /// `released`, `lease_lost`, `unrecorded`).
    pub fn job_finished(&self, kind: JobKind, outcome: &'static str, seconds: f64) {
        self.job_durations
            .get_or_create(&OutcomeLabels {
                kind: kind.as_str(),
                outcome,
            })
            .observe(seconds);
    }

    /// The text exposition format; `counts` (jobs by kind and state, from the database) sets
    /// the job gauges.
    pub fn render(&self, counts: Option<&[(JobKind, JobState, i64)]>) -> String {
        if let Some(counts) = counts {
            self.jobs.clear();
            for kind in JobKind::ALL {
                for state in JobState::ALL {
                    let n = counts
                        .iter()
                        .find(|(k, s, _)| k == kind && s == state)
                        .map_or(0, |c| c.2);
                    self.jobs
                        .get_or_create(&StateLabels {
                            kind: kind.as_str(),
                            state: state.as_str(),
                        })
                        .set(n);
                }
            }
            self.queue_depth.set(
                counts
                    .iter()
                    .filter(|c| c.1 == JobState::Queued)
                    .map(|c| c.2)
                    .sum(),
            );
        }
        let mut out = String::new();
        if let Err(e) =
            prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
        {
            tracing::error!(error = %e, "encoding metrics");
        }
        out
    }
}

/// Middleware: times every request, labelled by its route pattern, into the `Metrics` registered
/// as app data (`web::Data<Metrics>`).
pub async fn track(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let start = Instant::now();
    let method = req.method().clone();
    // Patterns are the routes registered at start (a closed set); anything else is one value.
    let route = req.match_pattern().unwrap_or_else(|| "unmatched".into());
    let metrics = req.app_data::<web::Data<Metrics>>().cloned();
    let res = next.call(req).await?;
    if let Some(m) = metrics {
        m.observe(
            method.as_str(),
            route,
            res.status().as_u16(),
            start.elapsed().as_secs_f64(),
        );
    }
    Ok(res)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_come_from_closed_sets() {
        assert_eq!(method_label("GET"), "GET");
        assert_eq!(method_label("FOO"), "other");
        assert_eq!(method_label("get"), "other");
        assert_eq!(status_label(201), "2xx");
        assert_eq!(status_label(404), "4xx");
        assert_eq!(status_label(503), "5xx");
        let m = Metrics::default();
        for i in 0..200 {
            m.observe(&format!("M{i}"), "unmatched".into(), 400 + i % 100, 0.0);
        }
        let text = m.render(None);
        assert!(text.contains("method=\"other\""), "{text}");
        assert!(!text.contains("M1"), "{text}");
        assert_eq!(
            text.matches("quiver_http_requests_total{").count(),
            1,
            "{text}"
        );
    }
}
