//! `/api/models…` and `/api/whoami-v2`: model info, trees, refs, commits and the listing, in the
//! Hub's JSON shapes.

use std::collections::{BTreeMap, BTreeSet};

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use quiver_store::{
    AdapterRecord, AdapterSort, FacetFilter, ListAdapters, VersionRecord, VersionRef,
};
use serde_json::{Value, json};

use super::{git_oid, lfs_json, model_json};
use crate::app::lookup::{find_adapter, find_version};
use crate::auth::Caller;
use crate::error::{ApiError, ErrorCode};
use crate::http::extract::Authenticated;
use crate::http::hub::HubReader;
use crate::state::AppState;

type Repo = web::Path<(String, String)>;
type RepoRev = web::Path<(String, String, String)>;
/// Query strings with repeated keys (`filter=a&filter=b`), in order.
type Pairs = web::Query<Vec<(String, String)>>;

fn first<'a>(q: &'a [(String, String)], key: &str) -> Option<&'a str> {
    q.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

fn flag(q: &[(String, String)], key: &str) -> bool {
    matches!(first(q, key), Some("true" | "True" | "1"))
}

fn bad_query(message: String) -> ApiError {
    ApiError::coded(ErrorCode::InvalidQuery, message)
}

/// `GET /api/models/{owner}/{name}`: the newest version (no `sha` while the repo has none).
pub async fn info(
    state: web::Data<AppState>,
    HubReader(caller): HubReader,
    path: Repo,
    q: Pairs,
) -> Result<HttpResponse, ApiError> {
    let adapter = find_adapter(&state.store, &caller, &path).await?;
    let version = state
        .store
        .meta
        .get_version(adapter.id, &VersionRef::Main)
        .await?;
    let body = model_json(&state, &adapter, version.as_ref(), Some(flag(&q, "blobs"))).await?;
    Ok(HttpResponse::Ok().json(body))
}

/// `GET /api/models/{owner}/{name}/revision/{rev}`.
pub async fn info_at(
    state: web::Data<AppState>,
    HubReader(caller): HubReader,
    path: RepoRev,
    q: Pairs,
) -> Result<HttpResponse, ApiError> {
    let (owner, name, rev) = path.into_inner();
    let (adapter, version) = find_version(&state, &caller, &owner, &name, &rev).await?;
    let body = model_json(&state, &adapter, Some(&version), Some(flag(&q, "blobs"))).await?;
    Ok(HttpResponse::Ok().json(body))
}

pub async fn tree(
    state: web::Data<AppState>,
    HubReader(caller): HubReader,
    path: RepoRev,
    q: Pairs,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let (owner, name, rev) = path.into_inner();
    tree_of(&state, &caller, (owner, name, rev, String::new()), &q, &req).await
}

pub async fn tree_under(
    state: web::Data<AppState>,
    HubReader(caller): HubReader,
    path: web::Path<(String, String, String, String)>,
    q: Pairs,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    tree_of(&state, &caller, path.into_inner(), &q, &req).await
}

/// Entries per tree page (the client follows `Link: rel="next"`).
const TREE_PAGE: usize = 1000;

/// `GET /api/models/{repo}/tree/{rev}[/{path}]`: files with their git oid and LFS part, and the
/// folders, one level or (`recursive=true`) all; never a `xetHash`.
async fn tree_of(
    state: &AppState,
    caller: &Caller,
    (owner, name, rev, dir): (String, String, String, String),
    q: &[(String, String)],
    req: &HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let (adapter, version) = find_version(state, caller, &owner, &name, &rev).await?;
    let dir = dir.trim_matches('/').to_string();
    let prefix = if dir.is_empty() {
        String::new()
    } else {
        format!("{dir}/")
    };
    let recursive = flag(q, "recursive");
    let expand = flag(q, "expand");
    let under: Vec<_> = version
        .files
        .iter()
        .filter(|f| f.path.starts_with(&prefix) && super::listed(&f.path))
        .collect();
    if under.is_empty() && !dir.is_empty() {
        return Err(ApiError::not_found(
            ErrorCode::FileNotFound,
            format!(
                "folder {dir} in version {} of {}",
                version.number,
                adapter.repo_id()
            ),
        ));
    }
    let mut entries: BTreeMap<String, Value> = BTreeMap::new();
    let mut folders: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for f in &under {
        let rest = &f.path[prefix.len()..];
        let oid = git_oid(state, f).await?;
        // Every folder between `dir` and the file holds it.
        let mut at = prefix.clone();
        for part in rest.split('/').take(rest.split('/').count() - 1) {
            at.push_str(part);
            folders
                .entry(at.clone())
                .or_default()
                .push(format!("{} {oid}", f.path));
            at.push('/');
        }
        if recursive || !rest.contains('/') {
            let mut e = json!({"type": "file", "oid": oid, "size": f.size, "path": f.path});
            if let Some(lfs) = lfs_json(f, "oid") {
                e["lfs"] = lfs;
            }
            if expand {
                e["lastCommit"] = last_commit(&version);
            }
            entries.insert(f.path.clone(), e);
        }
    }
    for (path, children) in folders {
        let depth_ok = recursive || !path[prefix.len()..].contains('/');
        if depth_ok {
            // A folder's id changes exactly when something under it does.
            let oid = super::git_blob_sha1(children.join("\n").as_bytes());
            entries.insert(
                path.clone(),
                json!({"type": "directory", "oid": oid, "path": path}),
            );
        }
    }
    let all: Vec<Value> = entries.into_values().collect();
    let start: usize = match first(q, "cursor") {
        None => 0,
        Some(c) => c
            .parse()
            .map_err(|_| bad_query(format!("cursor must be a number, got {c:?}")))?,
    };
    // The cursor is the client's: past the end is nonsense (cursors this server issues never
    // are), and the next one is computed without overflow.
    if start > all.len() {
        return Err(bad_query(format!(
            "cursor {start} is past the end of this tree ({} entries)",
            all.len()
        )));
    }
    let page: Vec<Value> = all.iter().skip(start).take(TREE_PAGE).cloned().collect();
    let mut res = HttpResponse::Ok();
    let next = start.saturating_add(TREE_PAGE);
    if next < all.len() {
        res.insert_header((header::LINK, next_link(req, &next.to_string())));
    }
    Ok(res.json(page))
}

fn last_commit(version: &VersionRecord) -> Value {
    json!({
        "id": version.revision,
        "title": format!("version {}", version.number),
        "date": quiver_store::time::rfc3339(version.created_at),
    })
}

/// `Link: <same URL with cursor=…>; rel="next"` (absolute: the client follows it as is).
fn next_link(req: &HttpRequest, cursor: &str) -> String {
    let info = req.connection_info();
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in url::form_urlencoded::parse(req.query_string().as_bytes()) {
        if k != "cursor" {
            query.append_pair(&k, &v);
        }
    }
    let query = query.append_pair("cursor", cursor).finish();
    format!(
        "<{}://{}{}?{query}>; rel=\"next\"",
        info.scheme(),
        info.host(),
        req.path()
    )
}

/// All versions of an adapter, newest first.
async fn all_versions(
    state: &AppState,
    adapter: &AdapterRecord,
) -> Result<Vec<VersionRecord>, ApiError> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = state
            .store
            .meta
            .list_versions(adapter.id, 500, cursor.as_deref())
            .await?;
        out.extend(page.items);
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => return Ok(out),
        }
    }
}

/// `GET /api/models/{repo}/refs`: `main` as the one branch; aliases and `v{N}` as tags.
pub async fn refs(
    state: web::Data<AppState>,
    HubReader(caller): HubReader,
    path: Repo,
    q: Pairs,
) -> Result<HttpResponse, ApiError> {
    let adapter = find_adapter(&state.store, &caller, &path).await?;
    let versions = all_versions(&state, &adapter).await?;
    let by_number: BTreeMap<i64, &str> = versions
        .iter()
        .map(|v| (v.number, v.revision.as_str()))
        .collect();
    let branches: Vec<Value> = versions
        .iter()
        .filter(|v| v.state == "ready")
        .take(1)
        .map(|v| json!({"name": "main", "ref": "refs/heads/main", "targetCommit": v.revision}))
        .collect();
    let tag = |name: String, rev: &str| json!({"name": name, "ref": format!("refs/tags/{name}"), "targetCommit": rev});
    let mut tags: Vec<Value> = state
        .store
        .meta
        .aliases(&[adapter.id])
        .await?
        .into_iter()
        .filter_map(|(_, alias, n)| by_number.get(&n).map(|rev| tag(alias, rev)))
        .collect();
    tags.extend(
        versions
            .iter()
            .map(|v| tag(format!("v{}", v.number), &v.revision)),
    );
    let mut body = json!({"branches": branches, "converts": [], "tags": tags});
    if flag(&q, "include_prs") {
        body["pullRequests"] = json!([]);
    }
    Ok(HttpResponse::Ok().json(body))
}

/// `GET /api/models/{repo}/commits/{rev}`: the versions up to `rev`, newest first.
pub async fn commits(
    state: web::Data<AppState>,
    HubReader(caller): HubReader,
    path: RepoRev,
) -> Result<HttpResponse, ApiError> {
    let (owner, name, rev) = path.into_inner();
    let (adapter, at) = find_version(&state, &caller, &owner, &name, &rev).await?;
    let list: Vec<Value> = all_versions(&state, &adapter)
        .await?
        .into_iter()
        .filter(|v| v.number <= at.number)
        .map(|v| {
            json!({
                "id": v.revision,
                "title": format!("version {}", v.number),
                "message": "",
                "authors": [{"user": v.created_by}],
                "date": quiver_store::time::rfc3339(v.created_at),
            })
        })
        .collect();
    Ok(HttpResponse::Ok().json(list))
}

/// `GET /api/whoami-v2`: the token's user (a token is required).
pub async fn whoami(Authenticated(p): Authenticated) -> Result<HttpResponse, ApiError> {
    let role = match p.scope {
        quiver_store::Scope::Read => "read",
        quiver_store::Scope::Write => "write",
        quiver_store::Scope::Admin => "admin",
    };
    Ok(HttpResponse::Ok().json(json!({
        "type": "user",
        "name": p.user,
        "fullname": p.user,
        "orgs": p.orgs.iter().map(|m| json!({
            "type": "org",
            "name": m.org,
            "fullname": m.org,
            "roleInOrg": m.role.as_str(),
        })).collect::<Vec<_>>(),
        "auth": {"type": "access_token", "accessToken": {"displayName": p.token_id, "role": role}},
    })))
}

/// Xet token routes: this server has no Xet storage.
pub async fn no_xet() -> Result<HttpResponse, ApiError> {
    Err(ApiError::coded(
        ErrorCode::NotImplemented,
        "this server does not speak the Xet protocol: set HF_HUB_DISABLE_XET=1 in the client's \
         environment (huggingface_hub 1.20 and later upload through Xet unless told not to)",
    ))
}

/// `GET /api/models`: the listing, in the Hub's parameters (`search`, `author`, `filter` with
/// `peft`, `lora`, `safetensors`, `base_model:adapter:<id>` or a tag, `sort` = `downloads`,
/// `lastModified` or `createdAt`, always descending, `limit`, `full`, `cardData`), paged by
/// `Link: rel="next"`.
pub async fn list(
    state: web::Data<AppState>,
    HubReader(caller): HubReader,
    q: Pairs,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let mut list = ListAdapters {
        q: first(&q, "search").map(str::to_owned),
        owner: first(&q, "author").map(str::to_owned),
        facets: FacetFilter::default(),
        ..ListAdapters::default()
    };
    let mut tags = BTreeSet::new();
    for (k, v) in q.iter() {
        if k != "filter" {
            continue;
        }
        match v.as_str() {
            "peft" | "lora" | "safetensors" => {}
            f => match f
                .strip_prefix("base_model:adapter:")
                .or_else(|| f.strip_prefix("base_model:"))
            {
                Some(base) => list.base_model = Some(base.to_string()),
                None => {
                    tags.insert(f.to_string());
                }
            },
        }
    }
    if tags.len() > 1 {
        return Err(bad_query(format!(
            "at most one tag filter is supported, got {}",
            tags.into_iter().collect::<Vec<_>>().join(", ")
        )));
    }
    list.tag = tags.into_iter().next();
    list.sort = match first(&q, "sort") {
        None | Some("lastModified" | "last_modified") => AdapterSort::Updated,
        Some("downloads") => AdapterSort::Downloads,
        Some("createdAt" | "created_at") => AdapterSort::Created,
        Some(other) => {
            return Err(bad_query(format!(
                "sort must be downloads, lastModified or createdAt, got {other:?}"
            )));
        }
    };
    if let Some(d) = first(&q, "direction").filter(|d| *d != "-1") {
        return Err(bad_query(format!(
            "only descending order (direction=-1) is supported, got direction={d}"
        )));
    }
    list.limit = match first(&q, "limit") {
        None => 100,
        Some(l) => l
            .parse::<u32>()
            .ok()
            .filter(|n| *n >= 1)
            .map(|n| n.min(500))
            .ok_or_else(|| bad_query(format!("limit must be a positive number, got {l:?}")))?,
    };
    list.cursor = first(&q, "cursor").map(str::to_owned);
    let full = flag(&q, "full");
    let found = state
        .store
        .meta
        .list_adapters(&list, &caller.viewer())
        .await?;
    let ids: Vec<i64> = found.items.iter().map(|a| a.id).collect();
    let latest: BTreeMap<i64, VersionRecord> = state
        .store
        .meta
        .latest_versions(&ids)
        .await?
        .into_iter()
        .map(|v| (v.adapter_id, v))
        .collect();
    let mut items = Vec::with_capacity(found.items.len());
    for a in &found.items {
        let files = full.then_some(false);
        items.push(model_json(&state, a, latest.get(&a.id), files).await?);
    }
    let mut res = HttpResponse::Ok();
    if let Some(next) = &found.next_cursor {
        res.insert_header((header::LINK, next_link(&req, next)));
    }
    Ok(res.json(items))
}
