//! `/audit`: the audit log as a page (docs/audit.md), for the same callers as
//! `GET /api/v1/audit` (`app::audit`): an instance admin sees every entry, the administrator of a
//! namespace that namespace's with `?owner=NS`; anyone else signed in gets the API's 403 as an
//! error page, anonymous visitors the sign-in page. The same filters and cursor pages as the API;
//! `since` and `until` also take a UTC date (`2026-12-01`) or date and time (`2026-12-01T09:30`).

use actix_web::http::StatusCode;
use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use askama::Template;
use quiver_store::{AuditAction, AuditRecord, Principal};
use serde::Deserialize;

use super::{Chrome, PageCaller, PageError, enc, html, render, when};
use crate::app::audit::{self, AuditQuery};
use crate::error::{ApiError, ErrorCode};
use crate::state::AppState;

/// The longest before/after JSON shown in a cell, in characters.
const STATE_CHARS: usize = 300;

pub struct EntryRow {
    pub id: i64,
    pub at: String,
    pub actor: String,
    pub token_id: String,
    pub action: String,
    pub target: String,
    pub owner: String,
    pub before: String,
    pub after: String,
    pub request_id: String,
    pub client_addr: String,
}

/// The filter form as the visitor filled it in (echoed back, escaped by askama).
#[derive(Default)]
pub struct Filters {
    pub actor: String,
    pub target: String,
    pub action: String,
    pub owner: String,
    pub since: String,
    pub until: String,
}

#[derive(Template)]
#[template(path = "audit.html")]
struct AuditPage {
    chrome: Chrome,
    form: Filters,
    actions: Vec<&'static str>,
    /// What the caller is shown: every entry, or one namespace's.
    scope: String,
    rows: Vec<EntryRow>,
    next: Option<String>,
}

#[derive(Deserialize)]
pub struct AuditPageQuery {
    actor: Option<String>,
    target: Option<String>,
    action: Option<String>,
    owner: Option<String>,
    since: Option<String>,
    until: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

fn bad(message: impl Into<String>) -> PageError {
    PageError(ApiError::coded(ErrorCode::InvalidQuery, message))
}

/// A form field: trimmed, empty as absent.
fn given(v: &Option<String>) -> Option<String> {
    v.as_deref()
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
}

/// Days from 1970-01-01 to a proleptic Gregorian date (H. Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Milliseconds since the epoch, from ms or a UTC `YYYY-MM-DD[THH:MM[:SS]]` (a space for the
/// `T` too); `None` for anything else.
pub fn parse_time(raw: &str) -> Option<i64> {
    if let Ok(ms) = raw.parse::<i64>() {
        return Some(ms);
    }
    let (date, time) = match raw.split_once(['T', ' ']) {
        Some((d, t)) => (d, Some(t)),
        None => (raw, None),
    };
    let mut d = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    if date.len() != 10 || !(1..=12).contains(&m) || !(1..=31).contains(&day) {
        return None;
    }
    let mut secs = 0;
    if let Some(t) = time {
        let parts: Vec<&str> = t.split(':').collect();
        if !(2..=3).contains(&parts.len()) || parts.iter().any(|p| p.len() != 2) {
            return None;
        }
        let n: Vec<i64> = parts
            .iter()
            .map(|p| p.parse::<i64>().ok())
            .collect::<Option<_>>()?;
        let (h, min, s) = (n[0], n[1], n.get(2).copied().unwrap_or(0));
        if h > 23 || min > 59 || s > 59 {
            return None;
        }
        secs = h * 3600 + min * 60 + s;
    }
    Some((days_from_civil(y, m, day) * 86_400 + secs) * 1000)
}

fn time_field(name: &str, v: &Option<String>) -> Result<Option<i64>, PageError> {
    match given(v) {
        None => Ok(None),
        Some(raw) => parse_time(&raw).map(Some).ok_or_else(|| {
            bad(format!(
                "{name} must be ms since the epoch or a UTC date (2026-12-01, 2026-12-01T09:30), got {:?}",
                raw.chars().take(40).collect::<String>()
            ))
        }),
    }
}

fn state_text(v: &Option<serde_json::Value>) -> String {
    match v {
        None => "–".into(),
        Some(v) => {
            let s = v.to_string();
            if s.chars().count() > STATE_CHARS {
                format!("{}…", s.chars().take(STATE_CHARS).collect::<String>())
            } else {
                s
            }
        }
    }
}

fn row(e: AuditRecord) -> EntryRow {
    let or_dash = |v: Option<String>| v.unwrap_or_else(|| "–".into());
    EntryRow {
        id: e.id,
        at: when(e.at),
        actor: or_dash(e.actor),
        token_id: or_dash(e.token_id),
        before: state_text(&e.before),
        after: state_text(&e.after),
        action: e.action,
        target: e.target,
        owner: or_dash(e.owner),
        request_id: or_dash(e.request_id),
        client_addr: or_dash(e.client_addr),
    }
}

/// The scope line: what `p` is shown.
fn scope(p: &Principal, owner: Option<&str>) -> String {
    match owner {
        Some(o) if !crate::app::tokens::manages_all(p) => {
            format!("Entries of the namespace {o}, which you administer.")
        }
        Some(o) => format!("Entries of the namespace {o} (you see every namespace's)."),
        None => "Every entry (you hold an unrestricted admin token).".into(),
    }
}

pub async fn show(
    req: HttpRequest,
    state: web::Data<AppState>,
    caller: PageCaller,
    query: web::Query<AuditPageQuery>,
) -> Result<HttpResponse, PageError> {
    let Some(p) = caller.caller.0.clone() else {
        let next = match req.query_string() {
            "" => "/audit".to_string(),
            q => format!("/audit?{q}"),
        };
        return Ok(HttpResponse::SeeOther()
            .insert_header((header::LOCATION, format!("/signin?next={}", enc(&next))))
            .finish());
    };
    let q = query.into_inner();
    let limit = match given(&q.limit) {
        None => None,
        Some(l) => Some(l.parse::<u32>().map_err(|_| {
            bad(format!(
                "limit must be 1 to {}, got {:?}",
                audit::MAX_AUDIT_LIMIT,
                l.chars().take(20).collect::<String>()
            ))
        })?),
    };
    let form = Filters {
        actor: given(&q.actor).unwrap_or_default(),
        target: given(&q.target).unwrap_or_default(),
        action: given(&q.action).unwrap_or_default(),
        owner: given(&q.owner).unwrap_or_default(),
        since: given(&q.since).unwrap_or_default(),
        until: given(&q.until).unwrap_or_default(),
    };
    let ask = AuditQuery {
        actor: given(&q.actor),
        target: given(&q.target),
        action: given(&q.action),
        owner: given(&q.owner),
        since: time_field("since", &q.since)?,
        until: time_field("until", &q.until)?,
        limit,
        cursor: given(&q.cursor),
    };
    let owner = ask.owner.clone();
    // The same checks and refusal as the API (403 naming the rule).
    let page = audit::list(&state.store, &p, ask).await?;
    let next = page.next_cursor.map(|c| {
        let mut link = String::from("/audit?");
        for (k, v) in [
            ("actor", &form.actor),
            ("target", &form.target),
            ("action", &form.action),
            ("owner", &form.owner),
            ("since", &form.since),
            ("until", &form.until),
        ] {
            if !v.is_empty() {
                link.push_str(&format!("{k}={}&", enc(v)));
            }
        }
        if let Some(l) = limit {
            link.push_str(&format!("limit={l}&"));
        }
        link.push_str(&format!("cursor={}", enc(&c)));
        link
    });
    let page = AuditPage {
        chrome: Chrome::new("Audit log", &caller),
        scope: scope(&p, owner.as_deref()),
        actions: AuditAction::ALL.iter().map(|a| a.as_str()).collect(),
        form,
        rows: page.items.into_iter().map(row).collect(),
        next,
    };
    Ok(caller.finish(html(StatusCode::OK, render(&page)?)))
}

#[cfg(test)]
mod tests {
    use super::parse_time;

    #[test]
    fn times_are_ms_or_utc_dates() {
        assert_eq!(parse_time("0"), Some(0));
        assert_eq!(parse_time("1764547200000"), Some(1_764_547_200_000));
        assert_eq!(parse_time("1970-01-01"), Some(0));
        assert_eq!(parse_time("2025-12-01"), Some(1_764_547_200_000));
        assert_eq!(parse_time("2025-12-01T09:30"), Some(1_764_581_400_000));
        assert_eq!(parse_time("2025-12-01 09:30:15"), Some(1_764_581_415_000));
        assert_eq!(parse_time("2024-02-29"), Some(1_709_164_800_000));
        for bad in [
            "",
            "2025-13-01",
            "2025-12-32",
            "2025-1-01",
            "2025-12-01T9:30",
            "2025-12-01T24:00",
            "yesterday",
            "2025-12-01T09",
            "2025-12-01T09:30:15:00",
        ] {
            assert_eq!(parse_time(bad), None, "{bad}");
        }
    }
}
