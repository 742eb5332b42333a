//! `/jobs` and `/jobs/{id}`: the signed-in caller's jobs (an admin's: everyone's), with live
//! progress (the page of an unfinished job reloads itself every two seconds; no script needed).

use actix_web::http::StatusCode;
use actix_web::http::header;
use actix_web::{HttpResponse, web};
use askama::Template;
use quiver_store::{JobFilter, JobRecord};
use serde::Deserialize;

use super::{Chrome, PageCaller, PageError, enc, html, render, when};
use crate::app::jobs::own_job;
use crate::state::AppState;

pub struct JobRow {
    pub id: String,
    pub href: String,
    pub kind: &'static str,
    pub state: &'static str,
    pub method: String,
    pub output: String,
    pub done: i64,
    pub total: i64,
    pub created: String,
    pub error: Option<String>,
    pub result: Option<(String, String)>,
    /// Queued jobs to be claimed before this one (fair share); `None` unless queued.
    pub queue_position: Option<i64>,
}

impl JobRow {
    fn new(j: &JobRecord) -> Self {
        let s = &j.spec;
        let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
        Self {
            href: format!("/jobs/{}", j.id),
            id: j.id.clone(),
            kind: j.kind.as_str(),
            state: j.state.as_str(),
            method: text(
                s.pointer("/params/method")
                    .or_else(|| s.pointer("/params/mode"))
                    .unwrap_or(&serde_json::Value::Null),
            ),
            output: text(
                s.pointer("/output/adapter")
                    .unwrap_or(&serde_json::Value::Null),
            ),
            done: j.progress_done,
            total: j.progress_total,
            created: when(j.created_at),
            error: j.error.clone(),
            result: j
                .result
                .as_ref()
                .map(|(a, n)| (format!("{a} v{n}"), format!("/{a}/versions/{n}"))),
            queue_position: None,
        }
    }

    pub fn finished(&self) -> bool {
        !matches!(self.state, "queued" | "running")
    }
}

/// Rows of `jobs`, queued ones with their place in the fair order.
async fn rows_with_positions(
    state: &AppState,
    jobs: &[JobRecord],
) -> Result<Vec<JobRow>, PageError> {
    let queued: Vec<String> = jobs
        .iter()
        .filter(|j| j.state == quiver_store::JobState::Queued)
        .map(|j| j.id.clone())
        .collect();
    let positions = state.store.meta.queue_positions(&queued).await?;
    Ok(jobs
        .iter()
        .map(|j| JobRow {
            queue_position: positions.get(&j.id).copied(),
            ..JobRow::new(j)
        })
        .collect())
}

#[derive(Template)]
#[template(path = "jobs.html")]
struct JobsPage {
    chrome: Chrome,
    rows: Vec<JobRow>,
    next: Option<String>,
    any_running: bool,
}

#[derive(Template)]
#[template(path = "job.html")]
struct JobPage {
    chrome: Chrome,
    job: JobRow,
    inputs: Vec<(String, String)>,
    spec_json: String,
    report_json: Option<String>,
    attempts: i64,
    max_attempts: i64,
}

#[derive(Deserialize)]
pub struct JobsQuery {
    cursor: Option<String>,
}

fn signin_redirect(next: &str) -> HttpResponse {
    HttpResponse::SeeOther()
        .insert_header((header::LOCATION, format!("/signin?next={}", enc(next))))
        .finish()
}

pub async fn list(
    state: web::Data<AppState>,
    caller: PageCaller,
    query: web::Query<JobsQuery>,
) -> Result<HttpResponse, PageError> {
    let viewer = caller.viewer();
    let Some(user) = viewer.user.clone() else {
        return Ok(signin_redirect("/jobs"));
    };
    let page = state
        .store
        .meta
        .list_jobs(&JobFilter {
            created_by: (!viewer.sees_all()).then_some(user),
            state: None,
            kind: None,
            limit: 50,
            cursor: query.into_inner().cursor.filter(|c| !c.is_empty()),
        })
        .await?;
    let rows = rows_with_positions(&state, &page.items).await?;
    let page = JobsPage {
        chrome: Chrome::new("Jobs", &caller),
        any_running: rows.iter().any(|r| !r.finished()),
        rows,
        next: page
            .next_cursor
            .map(|c| format!("/jobs?cursor={}", enc(&c))),
    };
    Ok(caller.finish(html(StatusCode::OK, render(&page)?)))
}

pub async fn show(
    state: web::Data<AppState>,
    caller: PageCaller,
    path: web::Path<String>,
) -> Result<HttpResponse, PageError> {
    let id = path.into_inner();
    if caller.user().is_none() {
        return Ok(signin_redirect(&format!("/jobs/{}", enc(&id))));
    }
    // Not a job id: the same 404 as a job of someone else's.
    let found = match uuid::Uuid::parse_str(&id) {
        Ok(_) => state.store.meta.get_job(&id).await?,
        Err(_) => None,
    };
    let job = own_job(&caller.caller.viewer(), found, &id)?;
    let inputs = job
        .spec
        .get("inputs")
        .and_then(|i| i.as_array())
        .map(|list| {
            list.iter()
                .map(|i| {
                    let adapter = i
                        .get("adapter")
                        .and_then(|a| a.as_str())
                        .unwrap_or_default();
                    let version = i.get("version").and_then(serde_json::Value::as_i64);
                    match version {
                        Some(n) => (
                            format!("{adapter} v{n}"),
                            format!("/{adapter}/versions/{n}"),
                        ),
                        None => (adapter.to_string(), format!("/{adapter}")),
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    let pretty = |v: &serde_json::Value| serde_json::to_string_pretty(v).unwrap_or_default();
    let page = JobPage {
        chrome: Chrome::new(format!("Job {}", &job.id), &caller),
        inputs,
        spec_json: pretty(&job.spec),
        report_json: job.report.as_ref().map(pretty),
        attempts: job.attempts,
        max_attempts: job.max_attempts,
        job: rows_with_positions(&state, std::slice::from_ref(&job))
            .await?
            .pop()
            .unwrap_or_else(|| JobRow::new(&job)),
    };
    Ok(caller.finish(html(StatusCode::OK, render(&page)?)))
}
