//! Webhook subscriptions as every front door sees them: the checks on a new subscription (scope
//! the caller may see, URL that passes the SSRF rules, known event types, bounds), the caller's
//! own subscriptions, and the views (the secret only at creation).

use quiver_store::{ListAdapters, NewWebhook, Principal, RepoId, Store, WebhookRecord};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::{ApiError, ErrorCode};
use crate::events::{EventKind, sign, target};

/// Most subscriptions one user may hold.
pub const MAX_WEBHOOKS_PER_USER: i64 = 50;
/// Longest secret a caller may choose, and the shortest.
const MAX_SECRET_LEN: usize = 256;
const MIN_SECRET_LEN: usize = 16;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWebhookRequest {
    /// Where deliveries are POSTed: `http` or `https`, at most 2048 bytes; its host must resolve
    /// to public addresses only (unless the server runs with `--webhook-allow-private`).
    pub url: String,
    /// `owner/name`: events of this adapter. Exactly one of `adapter` and `owner`.
    pub adapter: Option<String>,
    /// Events of every adapter of this owner.
    pub owner: Option<String>,
    /// Event types to receive (default: all): `version.published`, `alias.moved`,
    /// `adapter.updated`, `adapter.deleted`, `job.finished`.
    pub events: Option<Vec<String>>,
    /// The signing secret, 16 to 256 printable characters (default: generated). Returned only in
    /// this request's answer.
    pub secret: Option<String>,
}

/// A subscription. `secret` is present only in the answer to its creation.
#[derive(Serialize, ToSchema)]
pub struct WebhookView {
    pub id: String,
    pub url: String,
    pub adapter: Option<String>,
    pub owner: String,
    pub events: Vec<String>,
    pub active: bool,
    pub created_by: String,
    /// Unix milliseconds.
    pub created_at: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

impl WebhookView {
    pub fn new(h: WebhookRecord, with_secret: bool) -> Self {
        Self {
            secret: with_secret.then_some(h.secret),
            id: h.id,
            url: h.url,
            adapter: h.adapter,
            owner: h.owner,
            events: if h.events.is_empty() {
                EventKind::ALL
                    .iter()
                    .map(|k| k.as_str().to_string())
                    .collect()
            } else {
                h.events
            },
            active: h.active,
            created_by: h.created_by,
            created_at: h.created_at,
        }
    }
}

fn invalid(msg: impl Into<String>) -> ApiError {
    ApiError::coded(ErrorCode::InvalidWebhook, msg)
}

/// Checks and stores a new subscription for `principal`, with its `webhook.create` audit entry
/// by `audit` in the same transaction (never the secret).
pub async fn create(
    store: &Store,
    principal: &Principal,
    allow_private: bool,
    req: CreateWebhookRequest,
    audit: &quiver_store::AuditContext,
) -> Result<WebhookRecord, ApiError> {
    let events = match req.events {
        None => Vec::new(),
        Some(list) => {
            if list.is_empty() || list.len() > EventKind::ALL.len() {
                return Err(invalid(format!(
                    "events must list 1 to {} event types (leave it out for all)",
                    EventKind::ALL.len()
                )));
            }
            let mut out: Vec<String> = Vec::new();
            for e in list {
                let Some(kind) = EventKind::parse(&e) else {
                    let shown: String = e.chars().take(64).collect();
                    return Err(invalid(format!(
                        "unknown event type {shown:?}; one of: {}",
                        EventKind::ALL.map(|k| k.as_str()).join(", ")
                    )));
                };
                if !out.iter().any(|o| o == kind.as_str()) {
                    out.push(kind.as_str().to_string());
                }
            }
            out
        }
    };
    let secret = match req.secret {
        None => sign::new_secret(),
        Some(s) => {
            if s.len() < MIN_SECRET_LEN
                || s.len() > MAX_SECRET_LEN
                || s.chars().any(|c| c.is_control() || c == ' ')
            {
                return Err(invalid(format!(
                    "secret must be {MIN_SECRET_LEN} to {MAX_SECRET_LEN} printable characters without spaces"
                )));
            }
            s
        }
    };
    // What the subscriber's user sees, without the instance admin's reach (the subscription
    // outlives the token that made it).
    let viewer = quiver_store::Viewer {
        admin: false,
        ..crate::auth::viewer_of(Some(principal))
    };
    let (owner, adapter) = match (req.adapter, req.owner) {
        (Some(a), None) => {
            let repo: RepoId = a.parse().map_err(|_| {
                invalid(format!(
                    "adapter must be `owner/name`, got {:?}",
                    a.chars().take(300).collect::<String>()
                ))
            })?;
            // A subscriber sees what its user sees (see `events::subscriber`).
            match store.meta.get_adapter(&repo).await? {
                Some(found) if viewer.can_see(&found) => {}
                _ => {
                    return Err(ApiError::not_found(
                        ErrorCode::AdapterNotFound,
                        format!("adapter {repo}"),
                    ));
                }
            }
            (repo.owner.clone(), Some(repo.to_string()))
        }
        (None, Some(o)) => {
            let owner = quiver_store::names::validate_owner("owner", &o)
                .map_err(|e| invalid(e.to_string()))?;
            if owner != principal.user {
                let any = store
                    .meta
                    .list_adapters(
                        &ListAdapters {
                            owner: Some(owner.clone()),
                            limit: 1,
                            ..ListAdapters::default()
                        },
                        &viewer,
                    )
                    .await?;
                if any.items.is_empty() {
                    // Nothing of theirs is visible: as if the owner did not exist.
                    return Err(ApiError::not_found(
                        ErrorCode::NotFound,
                        format!("owner {owner}"),
                    ));
                }
            }
            (owner, None)
        }
        _ => {
            return Err(invalid(
                "name exactly one of `adapter` (owner/name) and `owner`",
            ));
        }
    };
    target::vet(&req.url, allow_private)
        .await
        .map_err(|why| ApiError::coded(ErrorCode::InvalidWebhookUrl, why))?;
    let created = store
        .meta
        .create_webhook_audited(
            &NewWebhook {
                created_by: principal.user.clone(),
                owner,
                adapter,
                url: req.url,
                secret,
                events,
            },
            MAX_WEBHOOKS_PER_USER,
            Some(audit),
        )
        .await?;
    created.ok_or_else(|| {
        ApiError::coded(
            ErrorCode::TooManyWebhooks,
            format!("a user may hold at most {MAX_WEBHOOKS_PER_USER} webhooks; delete one first"),
        )
    })
}

/// The caller's own subscription (admins: anyone's); others' are 404.
pub async fn own(
    store: &Store,
    principal: &Principal,
    id: &str,
) -> Result<WebhookRecord, ApiError> {
    let found = if id.len() <= 64 {
        store.meta.get_webhook(id).await?
    } else {
        None
    };
    match found {
        Some(h)
            if h.created_by == principal.user || principal.scope == quiver_store::Scope::Admin =>
        {
            Ok(h)
        }
        _ => Err(ApiError::coded(
            ErrorCode::WebhookNotFound,
            format!(
                "webhook {} was not found",
                id.chars().take(64).collect::<String>()
            ),
        )),
    }
}

/// Queues a delivery's event again for its subscription (a new delivery); returns the new
/// delivery's id and the event's. A delivery of another subscription, or none, is 404.
pub async fn redeliver(
    store: &Store,
    hook: &WebhookRecord,
    delivery_id: &str,
) -> Result<(String, i64), ApiError> {
    let job = if delivery_id.len() <= 64 {
        store.meta.get_job(delivery_id).await?
    } else {
        None
    };
    let event_id = job
        .filter(|j| {
            j.kind == quiver_store::JobKind::Webhook
                && j.spec.get("webhook_id").and_then(|v| v.as_str()) == Some(hook.id.as_str())
        })
        .and_then(|j| j.spec.get("event_id").and_then(serde_json::Value::as_i64))
        .ok_or_else(|| {
            ApiError::coded(
                ErrorCode::DeliveryNotFound,
                format!(
                    "delivery {} of webhook {} was not found",
                    delivery_id.chars().take(64).collect::<String>(),
                    hook.id
                ),
            )
        })?;
    let job = crate::events::deliver::redeliver(store, hook, event_id).await?;
    Ok((job.id, event_id))
}

/// Queues a `ping` event to the subscription (a new delivery); returns the delivery's id and
/// the event's.
pub async fn ping(store: &Store, hook: &WebhookRecord) -> Result<(String, i64), ApiError> {
    let (job, event_id) = crate::events::ping(store, hook).await?;
    Ok((job.id, event_id))
}
