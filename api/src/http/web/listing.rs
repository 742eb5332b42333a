//! `/`: search, facets, sort and cursor pages over the adapters the caller can see.

use actix_web::{HttpRequest, HttpResponse, web};
use askama::Template;
use serde::Deserialize;

use super::{Chrome, PageCaller, PageError, cached_html, enc, render, size};
use crate::app::adapters::{ListAdaptersQuery, cache_key, cached_page, list_query, list_views};
use crate::app::resources::AdapterView;
use crate::error::{ApiError, ErrorCode};
use crate::state::AppState;

/// Adapters per page.
const PAGE_SIZE: u32 = 30;
/// Values shown per facet.
const FACET_VALUES: u32 = 20;

/// The listing's query as a browser's GET form sends it: every field, empty when unset.
#[derive(Deserialize, Default, Clone)]
#[serde(default)]
pub struct ListingForm {
    q: String,
    base_model: String,
    tag: String,
    owner: String,
    kind: String,
    rank_min: String,
    rank_max: String,
    target: String,
    vllm: String,
    sort: String,
    cursor: String,
}

/// A form field naming an enum value (`kind`, `sort`), read as the API reads it.
fn parse_enum<T: serde::de::DeserializeOwned>(
    bad: &dyn Fn(&str, &str, &str) -> ApiError,
    field: &str,
    v: &str,
    want: &str,
) -> Result<Option<T>, ApiError> {
    some(v)
        .map(|v| {
            serde_json::from_value(serde_json::Value::String(v.clone()))
                .map_err(|_| bad(field, &v, want))
        })
        .transpose()
}

fn some(s: &str) -> Option<String> {
    let t = s.trim();
    (!t.is_empty()).then(|| t.to_string())
}

impl ListingForm {
    /// The API's query (same validation, same errors).
    fn query(&self) -> Result<ListAdaptersQuery, ApiError> {
        let bad = |field: &str, value: &str, want: &str| {
            ApiError::coded(
                ErrorCode::InvalidQuery,
                format!("{field} must be {want}, got {value:?}"),
            )
        };
        let rank = |field: &str, v: &str| {
            some(v)
                .map(|v| {
                    v.parse::<i64>()
                        .map_err(|_| bad(field, &v, "a whole number"))
                })
                .transpose()
        };
        Ok(ListAdaptersQuery {
            q: some(&self.q),
            base_model: some(&self.base_model),
            tag: some(&self.tag),
            owner: some(&self.owner),
            derived_from: None,
            kind: parse_enum(&bad, "kind", &self.kind, "trained, merged or compressed")?,
            rank_min: rank("rank_min", &self.rank_min)?,
            rank_max: rank("rank_max", &self.rank_max)?,
            target: some(&self.target),
            vllm: match self.vllm.as_str() {
                "" => None,
                "yes" | "true" | "on" => Some(true),
                "no" | "false" => Some(false),
                other => return Err(bad("vllm", other, "yes or no")),
            },
            sort: parse_enum(
                &bad,
                "sort",
                &self.sort,
                "updated, downloads, name or created",
            )?,
            limit: Some(PAGE_SIZE),
            cursor: some(&self.cursor),
        })
    }

    /// This query's URL with one field changed (and the cursor dropped unless it is the field).
    fn with(&self, field: &str, value: &str) -> String {
        let mut f = self.clone();
        f.cursor.clear();
        match field {
            "base_model" => f.base_model = value.into(),
            "tag" => f.tag = value.into(),
            "owner" => f.owner = value.into(),
            "kind" => f.kind = value.into(),
            "target" => f.target = value.into(),
            "vllm" => f.vllm = value.into(),
            "cursor" => f.cursor = value.into(),
            _ => {}
        }
        let pairs = [
            ("q", &f.q),
            ("base_model", &f.base_model),
            ("tag", &f.tag),
            ("owner", &f.owner),
            ("kind", &f.kind),
            ("rank_min", &f.rank_min),
            ("rank_max", &f.rank_max),
            ("target", &f.target),
            ("vllm", &f.vllm),
            ("sort", &f.sort),
            ("cursor", &f.cursor),
        ];
        let qs: Vec<String> = pairs
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| format!("{k}={}", enc(v)))
            .collect();
        if qs.is_empty() {
            "/".into()
        } else {
            format!("/?{}", qs.join("&"))
        }
    }
}

/// One value of a facet, with its count and the link that selects (or clears) it.
pub struct FacetLink {
    pub value: String,
    pub count: i64,
    pub href: String,
    pub selected: bool,
}

pub struct Facet {
    pub title: &'static str,
    pub links: Vec<FacetLink>,
}

/// An adapter's card.
pub struct Card {
    pub id: String,
    pub href: String,
    pub base_model: String,
    pub description: String,
    pub private: bool,
    pub rank: Option<u64>,
    pub size: Option<String>,
    pub updated: String,
    pub downloads: i64,
    pub kind: &'static str,
    /// `Some(ok)` when the newest version has a summary.
    pub vllm: Option<bool>,
    pub vllm_reason: String,
    pub tags: Vec<String>,
}

impl Card {
    fn new(a: AdapterView) -> Self {
        let summary = a
            .latest
            .as_ref()
            .and_then(|v| crate::facets::summary(v.lora.as_ref()));
        let compat = a.latest.as_ref().and_then(|v| v.compatibility.clone());
        let kind = a.latest.as_ref().map_or("trained", |v| {
            crate::facets::kind(v.lineage.as_ref()).as_str()
        });
        Self {
            href: format!("/{}/{}", a.owner, a.name),
            id: a.id,
            base_model: a.base_model,
            description: a.description.chars().take(200).collect(),
            private: a.private,
            rank: summary.as_ref().map(quiver_merge::compat::max_rank),
            size: summary.as_ref().map(|s| size(s.size as i64)),
            updated: when_rfc(&a.updated_at),
            downloads: a.downloads,
            kind,
            vllm: compat.as_ref().map(|c| c.vllm.ok),
            vllm_reason: compat.map(|c| c.vllm.reason).unwrap_or_default(),
            tags: a.tags,
        }
    }
}

fn when_rfc(t: &str) -> String {
    t.get(..16)
        .map(|s| s.replace('T', " "))
        .unwrap_or_else(|| t.to_string())
}

#[derive(Template)]
#[template(path = "listing.html")]
struct ListingPage<'a> {
    chrome: Chrome,
    form: &'a ListingForm,
    cards: Vec<Card>,
    facets: Vec<Facet>,
    next: Option<String>,
    first_page: Option<String>,
    sorts: [(&'static str, &'static str); 4],
}

pub async fn index(
    req: HttpRequest,
    state: web::Data<AppState>,
    caller: PageCaller,
    form: web::Query<ListingForm>,
) -> Result<HttpResponse, PageError> {
    let form = form.into_inner();
    let list = list_query(form.query()?)?;
    let viewer = caller.viewer();
    // Pages differ by who is signed in (the header shows the name) besides what they can see.
    let key = format!(
        "html|{}|{}",
        caller.user().unwrap_or(""),
        cache_key(&viewer, &list)
    );
    let page = cached_page(&state, &key, async || {
        let (items, next_cursor) = list_views(&state, &viewer, &list).await?;
        let counts = state.store.meta.facet_counts(&viewer, FACET_VALUES).await?;
        let cards = items.into_iter().map(Card::new).collect();
        let facet = |title, field: &'static str, values: Vec<(String, i64)>, current: &str| Facet {
            title,
            links: values
                .into_iter()
                .map(|(value, count)| {
                    let selected = value == current;
                    FacetLink {
                        href: form.with(field, if selected { "" } else { &value }),
                        selected,
                        value,
                        count,
                    }
                })
                .collect(),
        };
        let facets = vec![
            facet(
                "Base model",
                "base_model",
                counts.base_models,
                &form.base_model,
            ),
            facet("Kind", "kind", counts.kinds, &form.kind),
            facet("Target modules", "target", counts.targets, &form.target),
            facet("Tags", "tag", counts.tags, &form.tag),
            facet("Owner", "owner", counts.owners, &form.owner),
        ];
        let page = ListingPage {
            chrome: Chrome::new("Adapters", &caller),
            form: &form,
            cards,
            facets,
            next: next_cursor.map(|c| form.with("cursor", &c)),
            first_page: (!form.cursor.is_empty()).then(|| form.with("cursor", "")),
            sorts: [
                ("updated", "Recently updated"),
                ("downloads", "Most downloads"),
                ("created", "Recently created"),
                ("name", "Name"),
            ],
        };
        render(&page).map(String::into_bytes).map_err(|e| e.0)
    })
    .await?;
    Ok(cached_html(&req, page))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn facet_links_keep_the_query_and_drop_the_cursor() {
        let f = ListingForm {
            q: "math & more".into(),
            tag: "x".into(),
            cursor: "abc".into(),
            ..ListingForm::default()
        };
        assert_eq!(f.with("tag", ""), "/?q=math%20%26%20more");
        assert_eq!(
            f.with("owner", "bob"),
            "/?q=math%20%26%20more&tag=x&owner=bob"
        );
        assert_eq!(ListingForm::default().with("tag", ""), "/");
    }

    #[test]
    fn form_fields_become_the_api_query() {
        let f = ListingForm {
            kind: "merged".into(),
            rank_min: "8".into(),
            vllm: "yes".into(),
            sort: "downloads".into(),
            ..ListingForm::default()
        };
        let q = f.query().expect("present");
        assert_eq!(q.kind, Some(quiver_store::VersionKind::Merged));
        assert_eq!(q.rank_min, Some(8));
        assert_eq!(q.vllm, Some(true));
        assert!(q.base_model.is_none(), "empty fields are unset");
        let bad = ListingForm {
            rank_max: "lots".into(),
            ..ListingForm::default()
        };
        let e = bad.query().err().expect("refused");
        assert!(e.message.contains("rank_max"), "{e}");
        let bad = ListingForm {
            kind: "<b>".into(),
            ..ListingForm::default()
        };
        let e = bad.query().err().expect("refused");
        assert_eq!(e.status, actix_web::http::StatusCode::BAD_REQUEST);
    }
}
