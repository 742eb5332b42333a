//! `/{owner}/{name}` and `/{owner}/{name}/versions/{ref}`: the model card, LoRA summary,
//! compatibility, files, versions, lineage graph and spectra of a version; and the merge form's
//! `POST /{owner}/{name}/merge`.

use actix_web::http::StatusCode;
use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use askama::Template;
use futures::TryStreamExt;
use quiver_merge::LoraSummary;
use quiver_merge::compat::Compatibility;
use quiver_store::{
    AdapterRecord, FacetFilter, JobKind, ListAdapters, Principal, VersionRecord, VersionRef,
};
use serde_json::{Value, json};

use super::spectra::{self, Missing, RankSummary};
use super::svg::{DagNode, dag_svg};
use super::{Chrome, PageCaller, PageError, cached_html, enc, html, render, size, when};
use crate::app::adapters::cached_page;
use crate::app::exports::Layout;
use crate::app::jobs::queue_job_audited;
use crate::app::lineage::visible_lineage;
use crate::app::lookup::find_adapter;
use crate::card::{self, MAX_CARD_BYTES};
use crate::error::{ApiError, ErrorCode};
use crate::state::AppState;

/// Versions listed on a page.
const VERSIONS_SHOWN: u32 = 100;
/// Adapters offered as merge partners.
const MERGE_CANDIDATES: u32 = 50;
/// The merge methods the form offers (the API takes more parameters than the form shows).
const METHODS: [&str; 7] = [
    "linear",
    "ties",
    "dare_linear",
    "dare_ties",
    "svd",
    "magnitude_prune",
    "cat",
];

pub struct FileRow {
    pub path: String,
    pub size: String,
    pub sha256: String,
    pub href: String,
}

pub struct VersionRow {
    pub number: i64,
    pub short: String,
    pub created: String,
    pub created_by: String,
    pub refs: Vec<String>,
    pub href: String,
    pub current: bool,
}

pub struct Badge {
    pub name: &'static str,
    pub ok: bool,
    pub reason: String,
    /// Where the page says how to serve it that way (an anchor of the "Serve it" section).
    pub href: Option<&'static str>,
    /// The flags or call it needs there (`--enable-lora --max-lora-rank 16`).
    pub flags: String,
}

/// One way to serve the shown version ("Serve it"), filled in with the adapter's id, the ref the
/// page pins and this server's address.
pub struct ServeSnippet {
    /// The element id (`serve-vllm`, …), the badges' link targets.
    pub anchor: &'static str,
    pub title: &'static str,
    pub note: String,
    pub code: String,
}

pub struct SpectraView {
    pub values_svg: String,
    pub energy_svg: String,
    pub summary: RankSummary,
}

pub struct MergeForm {
    pub csrf: String,
    pub candidates: Vec<String>,
    pub methods: [&'static str; 7],
    pub owner: String,
}

#[derive(Template)]
#[template(path = "adapter.html")]
struct AdapterPage {
    chrome: Chrome,
    adapter: AdapterRecord,
    id: String,
    version: Option<VersionRecord>,
    summary: Option<LoraSummary>,
    badges: Vec<Badge>,
    vllm_max_lora_rank: Option<u64>,
    card_html: Option<String>,
    card_note: Option<String>,
    files: Vec<FileRow>,
    versions: Vec<VersionRow>,
    lineage_svg: Option<String>,
    lineage_method: Option<String>,
    spectra: Option<SpectraView>,
    spectra_note: Option<String>,
    snippet: String,
    serve: Vec<ServeSnippet>,
    /// What the snippets follow, in words (`prod`, `v3`, `revision 1a2b…`).
    serve_pin: String,
    merge: Option<MergeForm>,
    /// For a caller who administers the adapter's namespace.
    transfer: Option<super::orgs::TransferForm>,
    created: String,
    updated: String,
}

impl AdapterPage {
    fn rank_pattern(&self) -> String {
        self.summary
            .as_ref()
            .map_or(String::new(), |s| pattern(&s.rank_pattern))
    }
    fn alpha_pattern(&self) -> String {
        self.summary
            .as_ref()
            .map_or(String::new(), |s| pattern(&s.alpha_pattern))
    }
    fn weights_size(&self) -> String {
        self.summary
            .as_ref()
            .map_or(String::new(), |s| size(s.size as i64))
    }
    fn max_rank(&self) -> u64 {
        self.summary
            .as_ref()
            .map_or(0, quiver_merge::compat::max_rank)
    }
}

/// `key: value, …` of a rank or alpha pattern.
fn pattern<V: std::fmt::Display>(map: &std::collections::BTreeMap<String, V>) -> String {
    map.iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

pub async fn adapter_page(
    req: HttpRequest,
    state: web::Data<AppState>,
    caller: PageCaller,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, PageError> {
    page(&req, &state, &caller, path.into_inner(), None).await
}

pub async fn version_page(
    req: HttpRequest,
    state: web::Data<AppState>,
    caller: PageCaller,
    path: web::Path<(String, String, String)>,
) -> Result<HttpResponse, PageError> {
    let (owner, name, reference) = path.into_inner();
    page(&req, &state, &caller, (owner, name), Some(reference)).await
}

/// An adapter or version page, from the listing cache, validated by the listing generation
/// (every change to adapters, versions, files, refs and tags bumps it; download counts are as
/// fresh as the JSON listing's).
///
/// Anonymous readers all get the same page, with an ETag. A signed-in user's page depends on who
/// they are (the header, which private adapters, lineage parents and merge partners they may see,
/// whether they administer the namespace), so it is cached under everything of their principal
/// that decides those ([`signed_in_key`]); only their CSRF token differs between their requests:
/// the page is built with [`csrf_placeholder`] in its forms, and the token is spliced in for each
/// request.
async fn page(
    req: &HttpRequest,
    state: &AppState,
    caller: &PageCaller,
    path: (String, String),
    reference: Option<String>,
) -> Result<HttpResponse, PageError> {
    // The serving snippets name this server's address as the client reached it.
    let origin = origin(req);
    let (key, csrf) = match caller.caller.0.as_ref() {
        None => (
            json!(["adapter-page", path.0, path.1, reference, origin]),
            caller.csrf.as_str(),
        ),
        Some(p) => (
            json!([
                "adapter-page",
                path.0,
                path.1,
                reference,
                origin,
                signed_in_key(p, caller.sso)
            ]),
            csrf_placeholder(),
        ),
    };
    let cached = cached_page(state, &key.to_string(), async || {
        build(state, caller, &path, reference.as_deref(), &origin, csrf)
            .await
            .map(String::into_bytes)
            .map_err(|e| e.0)
    })
    .await?;
    if caller.user().is_none() {
        return Ok(caller.finish(with_card_csp(state, cached_html(req, cached))));
    }
    let body = std::str::from_utf8(&cached.body)
        .map_err(|e| PageError(ApiError::internal("adapter page", e)))?
        .replace(csrf_placeholder(), &caller.csrf);
    Ok(caller.finish(with_card_csp(state, html(StatusCode::OK, body))))
}

/// What a signed-in user's adapter page depends on besides the path: the user (the header, the
/// merge form's default owner), the token's scope and restriction (the audit link, the transfer
/// form, which private adapters it reads), the organisations with their roles (private adapters
/// and merge partners they see, namespaces they administer), and a proxy sign-in (the header's
/// sign-out link). A change to any of these is another cache entry, never a stale page.
fn signed_in_key(p: &Principal, sso: bool) -> Value {
    let mut orgs: Vec<(&str, &str)> = p
        .orgs
        .iter()
        .map(|m| (m.org.as_str(), m.role.as_str()))
        .collect();
    orgs.sort_unstable();
    json!({
        "user": p.user,
        "scope": p.scope.as_str(),
        "restrict": p.restrict.as_ref().map(|r| r.entries()),
        "orgs": orgs,
        "sso": sso,
    })
}

/// Stands in for the viewer's CSRF token in the cached body of a signed-in user's page: 48 hex
/// digits like a real token (so the page's markup is the same), random for each process, so no
/// stored text (a description, a card) can hold it and have a viewer's token spliced into it.
fn csrf_placeholder() -> &'static str {
    static PLACEHOLDER: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PLACEHOLDER.get_or_init(|| {
        let mut bytes = [0u8; 24];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut bytes);
        hex::encode(bytes)
    })
}

/// `scheme://host[:port]` of the request (the `Host` header, or the `Forwarded` /
/// `X-Forwarded-*` ones a proxy sets), for the serving snippets. A host with characters no
/// address has is replaced by `http://localhost:8080` (snippets are pasted into shells).
fn origin(req: &HttpRequest) -> String {
    let info = req.connection_info();
    let origin = format!("{}://{}", info.scheme(), info.host());
    let plain = origin.len() <= 300
        && origin
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b":/.-_[]".contains(&b));
    if plain {
        origin
    } else {
        "http://localhost:8080".into()
    }
}

/// The adapter pages' CSP allows the card image hosts, when there are any.
fn with_card_csp(state: &AppState, mut res: HttpResponse) -> HttpResponse {
    if state.card_images.allows_any()
        && let Ok(csp) = header::HeaderValue::from_str(&state.card_images.csp(super::CSP))
    {
        res.headers_mut()
            .insert(header::CONTENT_SECURITY_POLICY, csp);
    }
    res
}

/// A file's download URL on the API (path segments percent-encoded, `/` kept).
fn file_href(adapter: &AdapterRecord, number: i64, path: &str) -> String {
    let segments: Vec<String> = path.split('/').map(enc).collect();
    format!(
        "/api/v1/adapters/{}/{}/versions/{number}/files/{}",
        adapter.owner,
        adapter.name,
        segments.join("/")
    )
}

/// Quotes `s` as one word for the POSIX shell: single quotes, each `'` written `'\''`. Nothing
/// inside single quotes is expanded, so a file named `x$(touch y).txt` stays a name.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// One line of the "Use this adapter" snippet: `curl` of one file into `{id}/{path}`. The URL's
/// path is percent-encoded and every name is single-quoted; only `$QUIVER_TOKEN` and `$BASE`
/// (the snippet's own variables) are expanded by the shell.
fn curl_line(id: &str, path: &str) -> String {
    let url_path: Vec<String> = path.split('/').map(enc).collect();
    format!(
        "curl -fL -H \"Authorization: Bearer $QUIVER_TOKEN\" --create-dirs -o {} \"$BASE/\"{}",
        sh_quote(&format!("{id}/{path}")),
        sh_quote(&url_path.join("/"))
    )
}

/// The page's HTML; its forms carry `csrf`.
async fn build(
    state: &AppState,
    caller: &PageCaller,
    path: &(String, String),
    reference: Option<&str>,
    origin: &str,
    csrf: &str,
) -> Result<String, PageError> {
    let adapter = find_adapter(&state.store, &caller.caller, path).await?;
    let id = adapter.repo_id();
    let version = shown_version(state, &adapter, reference).await?;
    let versions = version_rows(state, &adapter, version.as_ref()).await?;
    let summary = version
        .as_ref()
        .and_then(|v| crate::facets::summary(v.lora.as_ref()));
    let compat = summary.as_ref().map(Compatibility::of);
    let sections = match &version {
        Some(v) => VersionSections::load(state, caller, &adapter, v).await?,
        None => VersionSections::default(),
    };
    let merge = match &version {
        Some(_) => merge_form(state, caller, &adapter, csrf).await?,
        None => None,
    };
    let serve = match (&version, &summary) {
        (Some(v), Some(s)) => {
            // A bare number is written `vN`, the spelling every client's ref grammar takes.
            let pin = match reference {
                Some(r) if !r.is_empty() && r.bytes().all(|b| b.is_ascii_digit()) => {
                    format!("v{r}")
                }
                Some(r) => r.to_string(),
                None => v.revision.clone(),
            };
            let place = ServePlace {
                origin,
                pin: &pin,
                rank: compat
                    .as_ref()
                    .and_then(|c| c.vllm_max_lora_rank)
                    .unwrap_or_else(|| quiver_merge::compat::max_rank(s)),
                targets: s.target_modules.join(" "),
                s3_export: state
                    .store
                    .blobs
                    .s3_url(&crate::app::exports::export_dir(Layout::Flat, &v.revision)),
            };
            serve_snippets(&adapter, v, &place)
        }
        _ => Vec::new(),
    };
    let badges = compat
        .as_ref()
        .map(|c| badges(c, merge.is_some()))
        .unwrap_or_default();
    let serve_pin = match (reference, &version) {
        (Some(r), _) => format!("ref {r}"),
        (None, Some(v)) => format!("revision {}", v.revision),
        (None, None) => String::new(),
    };
    let transfer =
        super::orgs::transfer_form(caller, &adapter.owner).map(|t| super::orgs::TransferForm {
            csrf: csrf.to_string(),
            ..t
        });
    let page = AdapterPage {
        chrome: Chrome::new(id.clone(), caller),
        created: when(adapter.created_at),
        updated: when(adapter.updated_at),
        lineage_method: version
            .as_ref()
            .and_then(|v| v.lineage.as_ref())
            .and_then(|l| l.get("method"))
            .and_then(Value::as_str)
            .map(str::to_owned),
        vllm_max_lora_rank: compat.as_ref().and_then(|c| c.vllm_max_lora_rank),
        badges,
        adapter,
        id,
        version,
        summary,
        card_html: sections.card_html,
        card_note: sections.card_note,
        files: sections.files,
        versions,
        lineage_svg: sections.lineage_svg,
        spectra: sections.spectra,
        spectra_note: sections.spectra_note,
        snippet: sections.snippet,
        serve_pin,
        serve,
        merge,
        transfer,
    };
    render(&page)
}

/// The version the page shows: the one `reference` names (404 if none does), else the newest,
/// if the adapter has any.
async fn shown_version(
    state: &AppState,
    adapter: &AdapterRecord,
    reference: Option<&str>,
) -> Result<Option<VersionRecord>, PageError> {
    let version = state
        .store
        .meta
        .get_version(
            adapter.id,
            &reference.map_or(VersionRef::Main, VersionRef::parse),
        )
        .await?;
    if version.is_none()
        && let Some(r) = reference
    {
        return Err(PageError(ApiError::not_found(
            ErrorCode::VersionNotFound,
            format!("version {r} of {}", adapter.repo_id()),
        )));
    }
    Ok(version)
}

/// The versions table, newest first: each version's aliases (a protected one marked
/// `(protected)`), `main` on the newest, and the one shown marked current.
async fn version_rows(
    state: &AppState,
    adapter: &AdapterRecord,
    shown: Option<&VersionRecord>,
) -> Result<Vec<VersionRow>, PageError> {
    let id = adapter.repo_id();
    let (aliases, protected) = state
        .store
        .meta
        .aliases_and_protection(&[adapter.id])
        .await?;
    let versions_page = state
        .store
        .meta
        .list_versions(adapter.id, VERSIONS_SHOWN, None)
        .await?;
    let newest = versions_page.items.first().map(|v| v.number);
    let rows = versions_page
        .items
        .iter()
        .map(|v| {
            let mut refs: Vec<String> = aliases
                .iter()
                .filter(|(_, _, n)| *n == v.number)
                .map(|(_, a, _)| {
                    if protected.iter().any(|(_, p)| p == a) {
                        format!("{a} (protected)")
                    } else {
                        a.clone()
                    }
                })
                .collect();
            if Some(v.number) == newest {
                refs.insert(0, "main".into());
            }
            VersionRow {
                number: v.number,
                short: v.revision.chars().take(10).collect(),
                created: when(v.created_at),
                created_by: v.created_by.clone(),
                refs,
                href: format!("/{id}/versions/{}", v.number),
                current: shown.is_some_and(|c| c.number == v.number),
            }
        })
        .collect();
    Ok(rows)
}

/// The compatibility badges, in the page's order, each linked to the snippet that serves it that
/// way and naming what that needs.
fn badges(compat: &Compatibility, merge_form: bool) -> Vec<Badge> {
    let vllm_flags = match compat.vllm_max_lora_rank {
        Some(r) => format!("--enable-lora --max-lora-rank {r}"),
        None => "--enable-lora".into(),
    };
    [
        ("vLLM", &compat.vllm, Some("#serve-vllm"), vllm_flags),
        (
            "LoRAX",
            &compat.lorax,
            Some("#serve-lorax"),
            "adapter_source: pbase, s3 or hub".into(),
        ),
        (
            "PEFT",
            &compat.peft,
            Some("#serve-peft"),
            "PeftModel.from_pretrained(base, id, revision=…)".into(),
        ),
        (
            "Merge",
            &compat.merge,
            merge_form.then_some("#merge-h"),
            "POST /api/v1/merges".into(),
        ),
    ]
    .into_iter()
    .map(|(name, verdict, href, flags)| Badge {
        name,
        ok: verdict.ok,
        reason: verdict.reason.clone(),
        href,
        flags,
    })
    .collect()
}

/// What the serving snippets are filled in with, besides the adapter and version.
struct ServePlace<'a> {
    /// This server's address as the client reached it.
    origin: &'a str,
    /// The ref the snippets follow: the page's (`prod`, `3`, a revision), else the revision shown.
    pin: &'a str,
    /// The `--max-lora-rank` it needs.
    rank: u64,
    /// Its target modules, space-separated.
    targets: String,
    /// `s3://…/exports/<revision>` on an `s3://` store.
    s3_export: Option<String>,
}

/// "Serve it": vLLM (the quiver-vllm plugin; `HF_ENDPOINT` + `--lora-modules`), LoRAX (`pbase`,
/// `s3`, `hub`), SGLang and PEFT, as docs/serving.md explains them. Every value comes from the
/// store's checked names (owner, name, aliases: `[a-z0-9._-]`), a revision (hex), a number or
/// the sanitised origin; askama escapes the HTML.
fn serve_snippets(
    adapter: &AdapterRecord,
    v: &VersionRecord,
    at: &ServePlace,
) -> Vec<ServeSnippet> {
    let id = adapter.repo_id();
    let dash = format!("{}--{}", adapter.owner, adapter.name);
    let (origin, pin, rank, base) = (at.origin, at.pin, at.rank, &adapter.base_model);
    let rev = &v.revision;
    let local_base = format!(
        "# {base}: a local directory of the base model (HF_ENDPOINT sends every Hub read to \
         Quiver, which holds adapters only)"
    );
    let vllm = format!(
        "# quiver-vllm resolves {id}@<ref> on first use (pip install ./integrations/vllm)\n\
         export VLLM_PLUGINS=quiver VLLM_ALLOW_RUNTIME_LORA_UPDATING=1\n\
         export QUIVER_URL={origin} QUIVER_TOKEN=qvt_...   # a read token; private adapters need it\n\
         vllm serve {base} --enable-lora --max-lora-rank {rank}\n\
         curl http://localhost:8000/v1/completions -H 'Content-Type: application/json' \\\n  \
         -d '{{\"model\": \"{id}@{pin}\", \"prompt\": \"Hello\"}}'\n\
         \n\
         # or through the Hub API: --lora-modules fetches the adapter's main (its newest version) at start\n\
         {local_base}\n\
         HF_ENDPOINT={origin} HF_TOKEN=$QUIVER_TOKEN vllm serve /models/{base} \\\n  \
         --enable-lora --max-lora-rank {rank} --lora-modules {id}={id}"
    );
    let export = at
        .s3_export
        .clone()
        .unwrap_or_else(|| format!("s3://<bucket>/<prefix>/exports/{rev}"));
    let lorax_note = if at.s3_export.is_some() {
        format!(
            "pbase: LoRAX asks Quiver (as its Predibase gateway) for {dash}/{pin} and reads the \
             immutable export of the revision from S3. s3: the export directly. hub: the Hub API, \
             at main."
        )
    } else {
        "This server stores blobs in a local directory: LoRAX's pbase and s3 sources read S3 \
         only, so they need a server with an s3:// store (--store-url). The hub source works."
            .into()
    };
    let generate = |adapter_id: &str, source: &str| {
        format!(
            "curl http://localhost:8080/generate -H 'Content-Type: application/json' \\\n  \
             -H \"Authorization: Bearer $QUIVER_TOKEN\" \\\n  \
             -d '{{\"inputs\": \"Hello\", \"parameters\": {{\"adapter_id\": \"{adapter_id}\", \
             \"adapter_source\": \"{source}\"}}}}'"
        )
    };
    let lorax = format!(
        "# pbase: Quiver answers LoRAX's Predibase lookups (repo owner--name, version = any ref)\n\
         PREDIBASE_GATEWAY_ENDPOINT={origin} PREDIBASE_API_TOKEN=$QUIVER_TOKEN \\\n  \
         S3_ENDPOINT_URL=$AWS_ENDPOINT_URL lorax-launcher --model-id {base}\n\
         {pbase}\n\
         \n\
         # s3: the version's export (written by the first pbase lookup of it)\n\
         curl -H \"Authorization: Bearer $QUIVER_TOKEN\" {origin}/v2/repos/{dash}/version/{rev}\n\
         {s3}\n\
         \n\
         # hub: through the Hub API, at the adapter's main\n\
         {local_base}\n\
         HF_ENDPOINT={origin} HUGGING_FACE_HUB_TOKEN=$QUIVER_TOKEN lorax-launcher --model-id /models/{base}\n\
         {hub}",
        pbase = generate(&format!("{dash}/{pin}"), "pbase"),
        s3 = generate(&export, "s3"),
        hub = generate(&id, "hub"),
    );
    let sglang = format!(
        "{local_base}\n\
         HF_ENDPOINT={origin} HF_TOKEN=$QUIVER_TOKEN python -m sglang.launch_server \\\n  \
         --model-path /models/{base} --enable-lora --max-lora-rank {rank} \\\n  \
         --lora-target-modules {targets} --lora-paths {id}={id}\n\
         # or at run time:\n\
         curl http://localhost:30000/load_lora_adapter -H 'Content-Type: application/json' \\\n  \
         -d '{{\"lora_name\": \"{id}\", \"lora_path\": \"{id}\"}}'",
        targets = at.targets,
    );
    let peft = format!(
        "{local_base}\n\
         HF_ENDPOINT={origin} HF_TOKEN=$QUIVER_TOKEN python - <<'PY'\n\
         from transformers import AutoModelForCausalLM\n\
         from peft import PeftModel\n\
         base = AutoModelForCausalLM.from_pretrained(\"/models/{base}\")\n\
         model = PeftModel.from_pretrained(base, \"{id}\", revision=\"{pin}\")\n\
         PY"
    );
    vec![
        ServeSnippet {
            anchor: "serve-vllm",
            title: "vLLM",
            note: format!(
                "With the quiver-vllm plugin, a request for {id}@{pin} loads that version without a \
                 restart; --max-lora-rank {rank} is the smallest that fits."
            ),
            code: vllm,
        },
        ServeSnippet {
            anchor: "serve-lorax",
            title: "LoRAX",
            note: lorax_note,
            code: lorax,
        },
        ServeSnippet {
            anchor: "serve-sglang",
            title: "SGLang",
            note: "Through the Hub API (HF_ENDPOINT), at the adapter's main.".into(),
            code: sglang,
        },
        ServeSnippet {
            anchor: "serve-peft",
            title: "PEFT",
            note: format!("Through the Hub API, at {pin}."),
            code: peft,
        },
    ]
}

/// The sections only a version has (an adapter without versions shows none of them).
#[derive(Default)]
struct VersionSections {
    files: Vec<FileRow>,
    card_html: Option<String>,
    card_note: Option<String>,
    lineage_svg: Option<String>,
    spectra: Option<SpectraView>,
    spectra_note: Option<String>,
    snippet: String,
}

impl VersionSections {
    /// Reads the card, then the lineage, then the spectra: the first error is the page's.
    async fn load(
        state: &AppState,
        caller: &PageCaller,
        adapter: &AdapterRecord,
        version: &VersionRecord,
    ) -> Result<Self, PageError> {
        let files = file_rows(adapter, version);
        let (card_html, card_note) = card_section(state, version).await?;
        let lineage_svg = lineage_svg(state, caller, adapter, version).await?;
        let (spectra, spectra_note) = spectra_section(state, version).await?;
        Ok(Self {
            files,
            card_html,
            card_note,
            lineage_svg,
            spectra,
            spectra_note,
            snippet: download_snippet(&adapter.repo_id(), version),
        })
    }
}

fn file_rows(adapter: &AdapterRecord, version: &VersionRecord) -> Vec<FileRow> {
    version
        .files
        .iter()
        .map(|f| FileRow {
            path: f.path.clone(),
            size: size(f.size),
            sha256: f.sha256.clone(),
            href: file_href(adapter, version.number, &f.path),
        })
        .collect()
}

/// The model card (`README.md`, any case) as `(html, note)`: rendered, or a note pointing to the
/// file when it is over [`MAX_CARD_BYTES`]; neither without a README.
async fn card_section(
    state: &AppState,
    version: &VersionRecord,
) -> Result<(Option<String>, Option<String>), PageError> {
    let Some(readme) = version
        .files
        .iter()
        .find(|f| f.path.eq_ignore_ascii_case("README.md"))
    else {
        return Ok((None, None));
    };
    if readme.size as usize > MAX_CARD_BYTES {
        let note = format!(
            "The card is {}; open README.md from the files below.",
            size(readme.size)
        );
        return Ok((None, Some(note)));
    }
    let bytes: Vec<bytes::Bytes> = state
        .store
        .blobs
        .get(&readme.sha256, None)
        .await?
        .try_collect()
        .await?;
    let text = String::from_utf8_lossy(&bytes.concat()).into_owned();
    Ok((Some(card::render(&text, &state.card_images)), None))
}

/// The lineage DAG the caller may see, as SVG; none when it is this version alone.
async fn lineage_svg(
    state: &AppState,
    caller: &PageCaller,
    adapter: &AdapterRecord,
    version: &VersionRecord,
) -> Result<Option<String>, PageError> {
    let lineage = visible_lineage(state, &caller.viewer(), adapter, version).await?;
    if lineage.nodes.len() <= 1 {
        return Ok(None);
    }
    let nodes: Vec<DagNode> = lineage
        .nodes
        .iter()
        .map(|n| DagNode {
            id: n.id.clone(),
            label: n.id.clone(),
            sublabel: n.method.clone().unwrap_or_else(|| "uploaded".into()),
            href: format!("/{}/versions/{}", n.adapter, n.version),
            current: n.id == lineage.root,
        })
        .collect();
    let edges: Vec<(String, String)> = lineage
        .edges
        .iter()
        .map(|e| (e.from.clone(), e.to.clone()))
        .collect();
    Ok(Some(dag_svg(&nodes, &edges)))
}

/// The spectra plots as `(view, note)`: the plots, or a note saying why there are none (no note
/// when the version has no weights).
async fn spectra_section(
    state: &AppState,
    version: &VersionRecord,
) -> Result<(Option<SpectraView>, Option<String>), PageError> {
    Ok(match spectra::spectra(state, version).await? {
        Ok(s) => {
            let view = SpectraView {
                values_svg: s.values_plot(),
                energy_svg: s.energy_plot(),
                summary: s.summary(),
            };
            (Some(view), None)
        }
        Err(Missing::NoWeights) => (None, None),
        Err(Missing::TooLarge) => (
            None,
            Some("The weights are too large to analyse on a page view.".into()),
        ),
        Err(Missing::Unsupported(why)) => {
            (None, Some(format!("No spectra for this version: {why}")))
        }
    })
}

/// The "Use this adapter" snippet: `BASE` for the version's files, then a `curl` line a file.
fn download_snippet(id: &str, version: &VersionRecord) -> String {
    let mut lines = vec![format!(
        "# every file of {id} v{n} (revision {rev})\nBASE=\"$QUIVER_URL/api/v1/adapters/{id}/versions/{rev}/files\"",
        n = version.number,
        rev = version.revision
    )];
    for f in &version.files {
        lines.push(curl_line(id, &f.path));
    }
    lines.join("\n")
}

/// A signed-in user's merge form; its partners are the adapters on this base model that the user
/// may see (at most [`MERGE_CANDIDATES`], this one left out).
async fn merge_form(
    state: &AppState,
    caller: &PageCaller,
    adapter: &AdapterRecord,
    csrf: &str,
) -> Result<Option<MergeForm>, PageError> {
    let Some(user) = caller.user() else {
        return Ok(None);
    };
    let id = adapter.repo_id();
    let list = ListAdapters {
        base_model: Some(adapter.base_model.clone()),
        facets: FacetFilter::default(),
        limit: MERGE_CANDIDATES,
        ..ListAdapters::default()
    };
    let found = state
        .store
        .meta
        .list_adapters(&list, &caller.viewer())
        .await?;
    Ok(Some(MergeForm {
        csrf: csrf.to_string(),
        candidates: found
            .items
            .iter()
            .map(AdapterRecord::repo_id)
            .filter(|r| *r != id)
            .collect(),
        methods: METHODS,
        owner: user.to_string(),
    }))
}

/// `POST /{owner}/{name}/merge`: the merge form. Queues the job through the same checks as
/// `POST /api/v1/merges` and redirects to its page.
pub async fn merge(
    state: web::Data<AppState>,
    caller: PageCaller,
    info: crate::http::request_info::RequestInfo,
    path: web::Path<(String, String)>,
    form: web::Form<Vec<(String, String)>>,
) -> Result<HttpResponse, PageError> {
    let field = |name: &str| {
        form.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_default()
    };
    caller.check_csrf(&field("csrf"))?;
    if caller.user().is_none() {
        return Err(PageError(ApiError::unauthorized()));
    }
    let adapter = find_adapter(&state.store, &caller.caller, &path).await?;
    let this = adapter.repo_id();
    let reference = match field("ref") {
        r if r.is_empty() => "main".to_string(),
        r => r,
    };
    let mut inputs = vec![json!({"adapter": this, "ref": reference})];
    for (k, v) in form.iter() {
        if k == "inputs" && !v.is_empty() && *v != this {
            inputs.push(json!({"adapter": v.trim()}));
        }
    }
    let output = field("output");
    let output = if output.contains('/') {
        output
    } else {
        format!("{}/{}", caller.user().unwrap_or_default(), output)
    };
    let mut body = json!({
        "method": field("method"),
        "inputs": inputs,
        "output": {"adapter": output, "create": true},
    });
    for (name, what) in [("density", "a number"), ("rank", "a whole number")] {
        let raw = field(name);
        if raw.is_empty() {
            continue;
        }
        let value: Value = match name {
            "rank" => raw.parse::<u64>().ok().map(Value::from),
            _ => raw.parse::<f64>().ok().map(Value::from),
        }
        .ok_or_else(|| {
            PageError(ApiError::coded(
                ErrorCode::InvalidSpec,
                format!("{name} must be {what}, got {raw:?}"),
            ))
        })?;
        body[name] = value;
    }
    // Audited as `POST /api/v1/merges` is (`job.submit`, in the queuing transaction).
    let audit = info.audit(caller.caller.0.as_ref());
    let (job, _) =
        queue_job_audited(&state, &caller.caller, JobKind::Merge, body, Some(&audit)).await?;
    Ok(HttpResponse::SeeOther()
        .insert_header((header::LOCATION, format!("/jobs/{}", job.id)))
        .finish())
}

#[cfg(test)]
mod tests {
    use super::{curl_line, sh_quote};

    /// The quoted word, read back by a real `sh`, is the name itself, and nothing ran.
    #[test]
    fn shell_quoting_round_trips_through_sh() {
        let dir = tempfile::tempdir().expect("tempdir");
        let marker = dir.path().join("ran");
        for name in [
            "plain.txt",
            "it's.txt",
            "''",
            &format!("x$(touch {}).txt", marker.display()),
            &format!("x`touch {}`.txt", marker.display()),
            "a\"b\\c $HOME ${HOME} !x; rm -rf / & | > <",
        ] {
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!("printf %s {}", sh_quote(name)))
                .output()
                .expect("sh");
            assert_eq!(String::from_utf8_lossy(&out.stdout), name);
        }
        assert!(!marker.exists(), "a quoted name ran a command");
    }

    #[test]
    fn curl_lines_quote_names_and_encode_urls() {
        let line = curl_line("alice/a", "dir/x$(id) 'q'.txt");
        assert_eq!(
            line,
            "curl -fL -H \"Authorization: Bearer $QUIVER_TOKEN\" --create-dirs \
             -o 'alice/a/dir/x$(id) '\\''q'\\''.txt' \"$BASE/\"'dir/x%24%28id%29%20%27q%27.txt'"
        );
    }
}
