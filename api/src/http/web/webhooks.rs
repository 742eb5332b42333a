//! `/webhooks`: the signed-in user's webhook subscriptions with their recent delivery attempts,
//! a form to subscribe (prefilled from `?adapter=owner/name` or `?owner=…`, which the adapter
//! page can link to), redelivery and deletion. The same checks as the API
//! (`app::webhooks`); the secret is shown once, on the page that answers the creation.

use actix_web::http::StatusCode;
use actix_web::http::header;
use actix_web::{HttpResponse, web};
use askama::Template;
use quiver_store::{Principal, Scope, WebhookRecord};
use serde::Deserialize;

use super::{Chrome, PageCaller, PageError, enc, html, render, when};
use crate::app::webhooks::{CreateWebhookRequest, create, own, redeliver as redeliver_event};
use crate::error::ApiError;
use crate::events::EventKind;
use crate::http::request_info::RequestInfo;
use crate::state::AppState;

/// Attempts shown per subscription.
const ATTEMPTS_SHOWN: u32 = 10;

pub struct AttemptRow {
    pub at: String,
    pub delivery_id: String,
    pub event_id: i64,
    pub attempt: i64,
    pub status: &'static str,
    pub code: String,
    pub latency_ms: i64,
    pub detail: String,
}

pub struct HookRow {
    pub id: String,
    pub scope: String,
    pub url: String,
    pub events: String,
    pub active: bool,
    pub created: String,
    pub attempts: Vec<AttemptRow>,
}

pub struct EventBox {
    pub name: &'static str,
    pub checked: bool,
}

#[derive(Template)]
#[template(path = "webhooks.html")]
struct WebhooksPage {
    chrome: Chrome,
    csrf: String,
    hooks: Vec<HookRow>,
    /// Prefilled scope.
    adapter: String,
    owner: String,
    events: Vec<EventBox>,
    /// After a creation: the new subscription's id and secret (shown once).
    created: Option<(String, String)>,
}

#[derive(Deserialize)]
pub struct PageQuery {
    adapter: Option<String>,
    owner: Option<String>,
}

fn signin_redirect() -> HttpResponse {
    HttpResponse::SeeOther()
        .insert_header((
            header::LOCATION,
            format!("/signin?next={}", enc("/webhooks")),
        ))
        .finish()
}

fn see_webhooks() -> HttpResponse {
    HttpResponse::SeeOther()
        .insert_header((header::LOCATION, "/webhooks"))
        .finish()
}

async fn rows(state: &AppState, user: &str) -> Result<Vec<HookRow>, PageError> {
    let mut out = Vec::new();
    for h in state.store.meta.list_webhooks(user).await? {
        let log = state
            .store
            .meta
            .list_deliveries(&h.id, ATTEMPTS_SHOWN, None)
            .await?;
        out.push(hook_row(h, log.items));
    }
    Ok(out)
}

fn hook_row(h: WebhookRecord, attempts: Vec<quiver_store::DeliveryRecord>) -> HookRow {
    HookRow {
        scope: match &h.adapter {
            Some(a) => a.clone(),
            None => format!("{} (every adapter)", h.owner),
        },
        events: if h.events.is_empty() {
            "all events".into()
        } else {
            h.events.join(", ")
        },
        attempts: attempts
            .into_iter()
            .map(|d| AttemptRow {
                at: when(d.at),
                status: d.status.as_str(),
                code: d.response_code.map(|c| c.to_string()).unwrap_or_default(),
                detail: d
                    .error
                    .or(d.response_excerpt)
                    .unwrap_or_default()
                    .chars()
                    .take(200)
                    .collect(),
                delivery_id: d.delivery_id,
                event_id: d.event_id,
                attempt: d.attempt,
                latency_ms: d.latency_ms,
            })
            .collect(),
        id: h.id,
        url: h.url,
        active: h.active,
        created: when(h.created_at),
    }
}

fn writer(caller: &PageCaller) -> Result<&Principal, PageError> {
    let p = caller
        .caller
        .0
        .as_ref()
        .ok_or_else(|| PageError(ApiError::unauthorized()))?;
    if p.scope == Scope::Read {
        return Err(PageError(ApiError::forbidden(
            "this token has the read scope; managing webhooks needs a write token",
        )));
    }
    Ok(p)
}

async fn page(
    state: &AppState,
    caller: &PageCaller,
    user: &str,
    adapter: String,
    owner: String,
    created: Option<(String, String)>,
    status: StatusCode,
) -> Result<HttpResponse, PageError> {
    let page = WebhooksPage {
        chrome: Chrome::new("Webhooks", caller),
        csrf: caller.csrf.clone(),
        hooks: rows(state, user).await?,
        adapter,
        owner,
        events: EventKind::ALL
            .iter()
            .map(|k| EventBox {
                name: k.as_str(),
                checked: true,
            })
            .collect(),
        created,
    };
    Ok(caller.finish(html(status, render(&page)?)))
}

pub async fn show(
    state: web::Data<AppState>,
    caller: PageCaller,
    query: web::Query<PageQuery>,
) -> Result<HttpResponse, PageError> {
    let Some(user) = caller.user().map(str::to_owned) else {
        return Ok(signin_redirect());
    };
    let q = query.into_inner();
    let (adapter, owner) = (
        q.adapter.unwrap_or_default().chars().take(300).collect(),
        q.owner.unwrap_or_default().chars().take(100).collect(),
    );
    page(&state, &caller, &user, adapter, owner, None, StatusCode::OK).await
}

fn field(form: &[(String, String)], name: &str) -> String {
    form.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_default()
}

/// `POST /webhooks`: subscribe; the answer shows the secret once.
pub async fn create_hook(
    state: web::Data<AppState>,
    caller: PageCaller,
    info: RequestInfo,
    form: web::Form<Vec<(String, String)>>,
) -> Result<HttpResponse, PageError> {
    caller.check_csrf(&field(&form, "csrf"))?;
    let principal = writer(&caller)?.clone();
    let opt = |name: &str| Some(field(&form, name)).filter(|v| !v.is_empty());
    let events: Vec<String> = form
        .iter()
        .filter(|(k, _)| k == "events")
        .map(|(_, v)| v.clone())
        .collect();
    let req = CreateWebhookRequest {
        url: field(&form, "url"),
        adapter: opt("adapter"),
        owner: opt("owner"),
        // Every box ticked is the same as none: all events.
        events: (!events.is_empty() && events.len() < EventKind::ALL.len()).then_some(events),
        secret: opt("secret"),
    };
    let audit = info.audit(Some(&principal));
    let hook = create(
        &state.store,
        &principal,
        state.webhooks.allow_private,
        req,
        &audit,
    )
    .await?;
    tracing::info!(webhook = %hook.id, by = %hook.created_by, "webhook created (page)");
    page(
        &state,
        &caller,
        &principal.user,
        String::new(),
        String::new(),
        Some((hook.id, hook.secret)),
        StatusCode::CREATED,
    )
    .await
}

/// `POST /webhooks/{id}/redeliver` (form field `delivery_id`).
pub async fn redeliver(
    state: web::Data<AppState>,
    caller: PageCaller,
    path: web::Path<String>,
    form: web::Form<Vec<(String, String)>>,
) -> Result<HttpResponse, PageError> {
    caller.check_csrf(&field(&form, "csrf"))?;
    let principal = writer(&caller)?;
    let hook = own(&state.store, principal, &path).await?;
    redeliver_event(&state.store, &hook, &field(&form, "delivery_id")).await?;
    Ok(see_webhooks())
}

/// `POST /webhooks/{id}/delete`.
pub async fn delete(
    state: web::Data<AppState>,
    caller: PageCaller,
    info: RequestInfo,
    path: web::Path<String>,
    form: web::Form<Vec<(String, String)>>,
) -> Result<HttpResponse, PageError> {
    caller.check_csrf(&field(&form, "csrf"))?;
    let principal = writer(&caller)?;
    let hook = own(&state.store, principal, &path).await?;
    let audit = info.audit(Some(principal));
    state
        .store
        .meta
        .delete_webhook_audited(&hook.id, Some(&audit))
        .await?;
    Ok(see_webhooks())
}
