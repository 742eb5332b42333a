//! Prometheus metrics: request counts and latency histograms per route, bytes in and out.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::web;

use crate::state::AppState;

/// Upper bounds of the latency buckets, seconds.
const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

#[derive(Default)]
struct Series {
    count: u64,
    sum_seconds: f64,
    buckets: [u64; BUCKETS.len()],
}

#[derive(Default)]
pub struct Metrics {
    /// (method, route pattern, status) → series.
    requests: Mutex<BTreeMap<(String, String, u16), Series>>,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
}

impl Metrics {
    fn observe(&self, method: &str, route: &str, status: u16, seconds: f64) {
        let Ok(mut map) = self.requests.lock() else {
            return;
        };
        let s = map
            .entry((method.to_string(), route.to_string(), status))
            .or_default();
        s.count += 1;
        s.sum_seconds += seconds;
        for (i, le) in BUCKETS.iter().enumerate() {
            if seconds <= *le {
                s.buckets[i] += 1;
            }
        }
    }

    pub fn add_in(&self, n: u64) {
        self.bytes_in.fetch_add(n, Ordering::Relaxed);
    }

    pub fn add_out(&self, n: u64) {
        self.bytes_out.fetch_add(n, Ordering::Relaxed);
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str("# HELP quiver_http_requests_total HTTP requests handled.\n# TYPE quiver_http_requests_total counter\n");
        let map = match self.requests.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        for ((m, r, st), s) in map.iter() {
            let _ = writeln!(
                out,
                "quiver_http_requests_total{{method=\"{m}\",route=\"{r}\",status=\"{st}\"}} {}",
                s.count
            );
        }
        out.push_str("# HELP quiver_http_request_duration_seconds Time to the response head.\n# TYPE quiver_http_request_duration_seconds histogram\n");
        for ((m, r, st), s) in map.iter() {
            let labels = format!("method=\"{m}\",route=\"{r}\",status=\"{st}\"");
            for (i, le) in BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "quiver_http_request_duration_seconds_bucket{{{labels},le=\"{le}\"}} {}",
                    s.buckets[i]
                );
            }
            let _ = writeln!(
                out,
                "quiver_http_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}",
                s.count
            );
            let _ = writeln!(
                out,
                "quiver_http_request_duration_seconds_sum{{{labels}}} {}",
                s.sum_seconds
            );
            let _ = writeln!(
                out,
                "quiver_http_request_duration_seconds_count{{{labels}}} {}",
                s.count
            );
        }
        let _ = write!(
            out,
            "# HELP quiver_bytes_received_total File bytes received in uploads.\n# TYPE quiver_bytes_received_total counter\nquiver_bytes_received_total {}\n\
             # HELP quiver_bytes_sent_total File bytes sent in downloads.\n# TYPE quiver_bytes_sent_total counter\nquiver_bytes_sent_total {}\n",
            self.bytes_in.load(Ordering::Relaxed),
            self.bytes_out.load(Ordering::Relaxed)
        );
        out
    }
}

/// Middleware: times every request, labelled by its route pattern (never the raw path, so the
/// label set stays bounded).
pub async fn track(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let start = Instant::now();
    let method = req.method().to_string();
    let route = req.match_pattern().unwrap_or_else(|| "unmatched".into());
    let metrics = req
        .app_data::<web::Data<AppState>>()
        .map(|s| s.metrics.clone());
    let res = next.call(req).await?;
    if let Some(m) = metrics {
        m.observe(
            &method,
            &route,
            res.status().as_u16(),
            start.elapsed().as_secs_f64(),
        );
    }
    Ok(res)
}

/// Upper bounds of the job-duration buckets, seconds.
const JOB_BUCKETS: [f64; 10] = [0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0];

/// Job metrics of this process's workers. Queue depth and jobs by state come from the database
/// at scrape time (they span every process).
#[derive(Default)]
pub struct JobMetrics {
    /// kind → claims run (attempts).
    attempts: Mutex<BTreeMap<&'static str, u64>>,
    /// (kind, outcome) → (count, sum of seconds, buckets).
    finished: Mutex<BTreeMap<(&'static str, &'static str), (u64, f64, [u64; JOB_BUCKETS.len()])>>,
}

impl JobMetrics {
    pub fn started(&self, kind: quiver_store::JobKind) {
        if let Ok(mut m) = self.attempts.lock() {
            *m.entry(kind.as_str()).or_default() += 1;
        }
    }

    pub fn finished(&self, kind: quiver_store::JobKind, outcome: &'static str, seconds: f64) {
        if let Ok(mut m) = self.finished.lock() {
            let e = m.entry((kind.as_str(), outcome)).or_default();
            e.0 += 1;
            e.1 += seconds;
            for (i, le) in JOB_BUCKETS.iter().enumerate() {
                if seconds <= *le {
                    e.2[i] += 1;
                }
            }
        }
    }

    /// The text exposition of these metrics and of `counts` (jobs by kind and state).
    pub fn render(
        &self,
        counts: &[(quiver_store::JobKind, quiver_store::JobState, i64)],
    ) -> String {
        let mut out = String::new();
        out.push_str("# HELP quiver_jobs Jobs by kind and state (all processes).\n# TYPE quiver_jobs gauge\n");
        for (k, s, n) in counts {
            let _ = writeln!(
                out,
                "quiver_jobs{{kind=\"{}\",state=\"{}\"}} {n}",
                k.as_str(),
                s.as_str()
            );
        }
        let queued: i64 = counts
            .iter()
            .filter(|(_, s, _)| *s == quiver_store::JobState::Queued)
            .map(|(_, _, n)| n)
            .sum();
        let _ = writeln!(
            out,
            "# HELP quiver_job_queue_depth Jobs waiting for a worker.\n# TYPE quiver_job_queue_depth gauge\nquiver_job_queue_depth {queued}"
        );
        out.push_str("# HELP quiver_job_attempts_total Job attempts started by this process's workers.\n# TYPE quiver_job_attempts_total counter\n");
        if let Ok(m) = self.attempts.lock() {
            for (k, n) in m.iter() {
                let _ = writeln!(out, "quiver_job_attempts_total{{kind=\"{k}\"}} {n}");
            }
        }
        out.push_str("# HELP quiver_job_duration_seconds Job attempts by outcome, from claim to end.\n# TYPE quiver_job_duration_seconds histogram\n");
        if let Ok(m) = self.finished.lock() {
            for ((k, o), (count, sum, buckets)) in m.iter() {
                let labels = format!("kind=\"{k}\",outcome=\"{o}\"");
                for (i, le) in JOB_BUCKETS.iter().enumerate() {
                    let _ = writeln!(
                        out,
                        "quiver_job_duration_seconds_bucket{{{labels},le=\"{le}\"}} {}",
                        buckets[i]
                    );
                }
                let _ = writeln!(
                    out,
                    "quiver_job_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {count}"
                );
                let _ = writeln!(out, "quiver_job_duration_seconds_sum{{{labels}}} {sum}");
                let _ = writeln!(out, "quiver_job_duration_seconds_count{{{labels}}} {count}");
            }
        }
        out
    }
}
