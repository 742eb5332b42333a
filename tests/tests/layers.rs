//! The workspace's import structure (issue 21): no import cycle of more than two files in any
//! crate, every two-file cycle allow-listed with its reason, and api's modules in layers that
//! only import their own layer or lower ones. `structure_figures` prints each crate's figures
//! (`cargo test -p quiver-tests --test layers -- --nocapture`).
//!
//! The graph (std only: a small Rust lexer reads each crate's `src/`):
//! - a node per `.rs` file: `hub/write.rs` → `hub::write`, `hub/mod.rs` → `hub`, `lib.rs` and
//!   `main.rs` → the crate root;
//! - an edge per module a file names: a `crate::`/`super::`/`self::`/`$crate::` path (in `use`
//!   trees, nested groups and `pub use` included, and in code), a path through one of its own
//!   child modules (`child::f()`), or a path through a module it imported by name
//!   (`use crate::hub; hub::write::f()`), each resolved to the longest prefix that is a file;
//! - comments, string/char literals and items under `#[cfg(test)]` (the `mod tests` block,
//!   test-only fns and imports) are skipped;
//! - an edge to the file itself, to the crate root or to one of the file's ancestor modules
//!   (`web::adapter` → `web`: a child using its `mod.rs`'s items) is dropped, so a directory
//!   module is one unit with its own children; its parent → child edges (a router naming its
//!   handlers, `pub use child::X`) count, and so does every edge between unrelated modules.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::Path;

/// The crates checked (directories at the workspace root, each with a `src/`).
const CRATES: &[&str] = &["api", "store", "merge", "retrieve"];

/// Two-file import cycles that are allowed: (crate, module, module, one-line reason). The modules
/// are written as in the figures (`hub::write`; `(crate root)` cannot take part in a cycle).
/// An unlisted two-file cycle fails, and so does an entry that is no longer a cycle.
const ALLOWED_TWO_CYCLES: &[(&str, &str, &str, &str)] = &[];

/// api's layers, highest first. A module may import modules of its own layer or lower ones; an
/// import of a higher layer fails, and so does an import between two different front doors
/// (each front-door prefix is its own group). Same-layer cycles are rule 1's business.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Layer {
    // Declared lowest first, so that `Ord` ranks them.
    /// Shared vocabulary: errors, metrics, facets, conditional requests.
    Base,
    /// Long-lived state and domain services: jobs, routing, the app state, publish, upload.
    Service,
    /// Use cases behind every front door (`app`).
    UseCase,
    /// HTTP plumbing shared by the front doors: error rendering, extractors, body limits, the
    /// route table, openapi.
    HttpEdge,
    /// The JSON API, the web pages, the Hub API and LoRAX's pbase API: four groups that never
    /// import each other.
    FrontDoor,
    /// The crate root, the command line, startup and the background tasks.
    Entry,
}

/// api's module → layer table: a module takes the layer of its longest matching prefix (a prefix
/// matches itself and its submodules; `""` matches the crate root only). A module that matches
/// no prefix fails the test: add it here.
const API_LAYERS: &[(&str, Layer)] = &[
    // Entry.
    ("", Layer::Entry),
    ("cli", Layer::Entry),
    ("startup", Layer::Entry),
    ("background", Layer::Entry),
    // Front doors (four groups).
    ("http::routes", Layer::FrontDoor),
    ("http::web", Layer::FrontDoor),
    ("http::hub", Layer::FrontDoor),
    ("http::lorax", Layer::FrontDoor),
    // Shared HTTP edges: everything else under `http`.
    ("http", Layer::HttpEdge),
    // Use cases.
    ("app", Layer::UseCase),
    // Services.
    ("jobs", Layer::Service),
    ("events", Layer::Service),
    ("routing", Layer::Service),
    ("state", Layer::Service),
    ("config", Layer::Service),
    ("publish", Layer::Service),
    ("upload", Layer::Service),
    ("list_cache", Layer::Service),
    ("list_fragments", Layer::Service),
    ("card", Layer::Service),
    ("auth", Layer::Service),
    ("auth_proxy", Layer::Service),
    // Base.
    ("error", Layer::Base),
    ("metrics", Layer::Base),
    ("facets", Layer::Base),
    ("conditional", Layer::Base),
    ("device", Layer::Base),
];

impl Layer {
    fn name(self) -> &'static str {
        match self {
            Layer::Base => "base",
            Layer::Service => "service",
            Layer::UseCase => "use case",
            Layer::HttpEdge => "http edge",
            Layer::FrontDoor => "front door",
            Layer::Entry => "entry",
        }
    }
}

/// The layer of an api module (`hub::write`; `""` for the crate root) and the prefix that gave it.
fn layer_of(module: &str) -> Option<(&'static str, Layer)> {
    API_LAYERS
        .iter()
        .filter(|(prefix, _)| {
            if prefix.is_empty() {
                module.is_empty()
            } else {
                module == *prefix
                    || module
                        .strip_prefix(prefix)
                        .is_some_and(|rest| rest.starts_with("::"))
            }
        })
        .max_by_key(|(prefix, _)| prefix.len())
        .copied()
}

// ---------------------------------------------------------------------------------------------
// Lexer.

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Ident(String),
    /// `::`
    Sep,
    Punct(char),
    /// A string, char or number literal (its contents are never looked at).
    Lit,
}

#[derive(Clone, Debug)]
struct Token {
    tok: Tok,
    line: usize,
}

fn is_ident_start(c: char) -> bool {
    c == '_' || c.is_alphabetic()
}

fn is_ident_char(c: char) -> bool {
    c == '_' || c.is_alphanumeric()
}

/// Tokens of a Rust source file, without comments (line, doc and nested block comments) and with
/// every literal as one opaque `Lit`.
fn lex(src: &str) -> Vec<Token> {
    let c: Vec<char> = src.chars().collect();
    let at = |i: usize| c.get(i).copied().unwrap_or('\0');
    let mut out = Vec::new();
    let mut line = 1;
    let mut i = 0;
    // Skips a "…" string whose opening quote is at `i`; returns the index after it.
    let skip_string = |mut i: usize, line: &mut usize| -> usize {
        i += 1;
        while i < c.len() {
            match c[i] {
                '\\' => {
                    if at(i + 1) == '\n' {
                        *line += 1;
                    }
                    i += 2;
                }
                '"' => return i + 1,
                ch => {
                    if ch == '\n' {
                        *line += 1;
                    }
                    i += 1;
                }
            }
        }
        i
    };
    // Skips a raw string r#"…"# whose first `#` or quote is at `i`; None if it is not one.
    let skip_raw = |i: usize, line: &mut usize| -> Option<usize> {
        let mut j = i;
        while at(j) == '#' {
            j += 1;
        }
        if at(j) != '"' {
            return None;
        }
        let hashes = j - i;
        j += 1;
        while j < c.len() {
            if c[j] == '"' && (1..=hashes).all(|k| at(j + k) == '#') {
                return Some(j + 1 + hashes);
            }
            if c[j] == '\n' {
                *line += 1;
            }
            j += 1;
        }
        Some(j)
    };
    // Skips a char literal whose quote is at `i`; None if it is a lifetime or label instead.
    let skip_char = |i: usize| -> Option<usize> {
        if at(i + 1) == '\\' {
            let mut j = i + 3;
            while j < c.len() && c[j] != '\'' && c[j] != '\n' {
                j += 1;
            }
            Some(j + 1)
        } else if at(i + 2) == '\'' && at(i + 1) != '\n' {
            Some(i + 3)
        } else {
            None
        }
    };
    while i < c.len() {
        let ch = c[i];
        let tok_line = line;
        let push = |out: &mut Vec<Token>, tok: Tok| {
            out.push(Token {
                tok,
                line: tok_line,
            })
        };
        if ch == '\n' {
            line += 1;
            i += 1;
        } else if ch.is_whitespace() {
            i += 1;
        } else if ch == '/' && at(i + 1) == '/' {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if ch == '/' && at(i + 1) == '*' {
            let mut depth = 0;
            while i < c.len() {
                if c[i] == '/' && at(i + 1) == '*' {
                    depth += 1;
                    i += 2;
                } else if c[i] == '*' && at(i + 1) == '/' {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    if c[i] == '\n' {
                        line += 1;
                    }
                    i += 1;
                }
            }
        } else if ch == '"' {
            i = skip_string(i, &mut line);
            push(&mut out, Tok::Lit);
        } else if ch == '\'' {
            match skip_char(i) {
                Some(j) => {
                    i = j;
                    push(&mut out, Tok::Lit);
                }
                None => {
                    // A lifetime or a loop label: the quote and its name.
                    i += 1;
                    while i < c.len() && is_ident_char(c[i]) {
                        i += 1;
                    }
                    push(&mut out, Tok::Punct('\''));
                }
            }
        } else if is_ident_start(ch) {
            let start = i;
            while i < c.len() && is_ident_char(c[i]) {
                i += 1;
            }
            let word: String = c[start..i].iter().collect();
            let next = at(i);
            match word.as_str() {
                "b" | "c" if next == '"' => {
                    i = skip_string(i, &mut line);
                    push(&mut out, Tok::Lit);
                }
                "b" if next == '\'' => {
                    i = skip_char(i).unwrap_or(i + 1);
                    push(&mut out, Tok::Lit);
                }
                "r" | "br" | "cr" if next == '"' || next == '#' => {
                    if let Some(j) = skip_raw(i, &mut line) {
                        i = j;
                        push(&mut out, Tok::Lit);
                    } else if word == "r" && is_ident_start(at(i + 1)) {
                        // A raw identifier, r#type.
                        let s = i + 1;
                        i = s;
                        while i < c.len() && is_ident_char(c[i]) {
                            i += 1;
                        }
                        push(&mut out, Tok::Ident(c[s..i].iter().collect()));
                    } else {
                        push(&mut out, Tok::Ident(word));
                    }
                }
                _ => push(&mut out, Tok::Ident(word)),
            }
        } else if ch.is_ascii_digit() {
            while i < c.len() && is_ident_char(c[i]) {
                i += 1;
            }
            push(&mut out, Tok::Lit);
        } else if ch == ':' && at(i + 1) == ':' {
            i += 2;
            push(&mut out, Tok::Sep);
        } else {
            i += 1;
            push(&mut out, Tok::Punct(ch));
        }
    }
    out
}

fn is_punct(t: &[Token], i: usize, p: char) -> bool {
    matches!(t.get(i), Some(Token { tok: Tok::Punct(q), .. }) if *q == p)
}

fn ident_at(t: &[Token], i: usize) -> Option<&str> {
    match t.get(i) {
        Some(Token {
            tok: Tok::Ident(s), ..
        }) => Some(s),
        _ => None,
    }
}

/// Index after the bracketed group (`(`, `[` or `{`) that opens at `i`.
fn skip_group(t: &[Token], i: usize) -> usize {
    let mut depth = 0i32;
    let mut j = i;
    while j < t.len() {
        match t[j].tok {
            Tok::Punct('(' | '[' | '{') => depth += 1,
            Tok::Punct(')' | ']' | '}') => {
                depth -= 1;
                if depth == 0 {
                    return j + 1;
                }
            }
            _ => {}
        }
        j += 1;
    }
    j
}

/// Whether the tokens at `i` are exactly `#[cfg(test)]` (`#![cfg(test)]` with `inner`).
fn is_cfg_test(t: &[Token], i: usize, inner: bool) -> bool {
    let mut j = i;
    if !is_punct(t, j, '#') {
        return false;
    }
    j += 1;
    if inner {
        if !is_punct(t, j, '!') {
            return false;
        }
        j += 1;
    }
    is_punct(t, j, '[')
        && ident_at(t, j + 1) == Some("cfg")
        && is_punct(t, j + 2, '(')
        && ident_at(t, j + 3) == Some("test")
        && is_punct(t, j + 4, ')')
        && is_punct(t, j + 5, ']')
}

/// Item keywords: an item that starts with one of them does not end at a top-level comma.
const ITEM_WORDS: &[&str] = &[
    "pub",
    "fn",
    "mod",
    "use",
    "impl",
    "struct",
    "enum",
    "union",
    "const",
    "static",
    "type",
    "trait",
    "unsafe",
    "async",
    "extern",
    "macro_rules",
    "let",
];

/// The tokens without the items under `#[cfg(test)]`, and the names of child modules declared
/// test-only without a body (`#[cfg(test)] mod tests;`, whose file is then no node).
/// A file that starts with `#![cfg(test)]` is dropped whole.
fn drop_test_items(t: &[Token]) -> (Vec<Token>, Vec<String>) {
    if is_cfg_test(t, 0, true) {
        return (Vec::new(), Vec::new());
    }
    let mut out = Vec::new();
    let mut test_mods = Vec::new();
    let mut i = 0;
    while i < t.len() {
        if !is_cfg_test(t, i, false) {
            out.push(t[i].clone());
            i += 1;
            continue;
        }
        i += 7;
        // Further attributes of the same item.
        while is_punct(t, i, '#') && is_punct(t, i + 1, '[') {
            i = skip_group(t, i + 1);
        }
        let first = i;
        let stops_at_comma = !ident_at(t, first).is_some_and(|w| ITEM_WORDS.contains(&w));
        let mut depth = 0i32;
        while i < t.len() {
            match t[i].tok {
                Tok::Punct('(' | '[' | '{') => depth += 1,
                Tok::Punct(')' | ']' | '}') => {
                    if depth == 0 {
                        // The end of the enclosing block: the item ended before it.
                        break;
                    }
                    depth -= 1;
                    if depth == 0 && is_punct(t, i, '}') {
                        i += 1;
                        break;
                    }
                }
                Tok::Punct(';') if depth == 0 => {
                    // `mod name;` (after an optional visibility) declares a test-only file.
                    let mut k = first;
                    if ident_at(t, k) == Some("pub") {
                        k += 1;
                        if is_punct(t, k, '(') {
                            k = skip_group(t, k);
                        }
                    }
                    if ident_at(t, k) == Some("mod")
                        && k + 2 == i
                        && let Some(name) = ident_at(t, k + 1)
                    {
                        test_mods.push(name.to_string());
                    }
                    i += 1;
                    break;
                }
                Tok::Punct(',') if depth == 0 && stops_at_comma => {
                    i += 1;
                    break;
                }
                _ => {}
            }
            i += 1;
        }
    }
    (out, test_mods)
}

// ---------------------------------------------------------------------------------------------
// Paths.

/// A path as written: its segments, the inline `mod` blocks it sits in, where, whether it is in
/// a `use` and the name it brings into scope there.
#[derive(Debug)]
struct RawPath {
    segs: Vec<String>,
    scope: Vec<String>,
    line: usize,
    in_use: bool,
    alias: Option<String>,
}

/// Parses a path or `use` tree at `i` (segments, `{…}` groups, `*`, `as name`), pushing one
/// (segments, name in scope) per leaf; returns the index after it.
fn parse_tree(
    t: &[Token],
    mut i: usize,
    prefix: &[String],
    out: &mut Vec<(Vec<String>, Option<String>, usize)>,
) -> usize {
    let mut segs = prefix.to_vec();
    let line = t.get(i).map_or(0, |x| x.line);
    loop {
        match t.get(i).map(|x| &x.tok) {
            Some(Tok::Ident(s)) => {
                segs.push(s.clone());
                i += 1;
            }
            Some(Tok::Punct('*')) => {
                out.push((segs, None, line));
                return i + 1;
            }
            Some(Tok::Punct('{')) if segs.len() > prefix.len() || prefix.is_empty() => {
                i += 1;
                loop {
                    match t.get(i).map(|x| &x.tok) {
                        None => return i,
                        Some(Tok::Punct('}')) => return i + 1,
                        Some(Tok::Punct(',')) => i += 1,
                        _ => {
                            let j = parse_tree(t, i, &segs, out);
                            i = if j == i { i + 1 } else { j };
                        }
                    }
                }
            }
            _ => break,
        }
        if matches!(t.get(i).map(|x| &x.tok), Some(Tok::Sep)) {
            i += 1;
        } else {
            break;
        }
    }
    if segs.len() == prefix.len() {
        return i;
    }
    let mut alias = segs.iter().rev().find(|s| *s != "self").cloned();
    if ident_at(t, i) == Some("as") {
        alias = ident_at(t, i + 1).filter(|n| *n != "_").map(str::to_string);
        i += 2;
    }
    out.push((segs, alias, line));
    i
}

/// Every path in a file's (filtered) tokens that could name a module of the crate.
fn paths(t: &[Token]) -> Vec<RawPath> {
    let mut out = Vec::new();
    let mut scope: Vec<(String, i32)> = Vec::new();
    let mut depth = 0i32;
    let mut i = 0;
    let mut push = |leaves: Vec<(Vec<String>, Option<String>, usize)>,
                    scope: &[(String, i32)],
                    in_use: bool| {
        for (segs, alias, line) in leaves {
            out.push(RawPath {
                segs,
                scope: scope.iter().map(|(n, _)| n.clone()).collect(),
                line,
                in_use,
                alias,
            });
        }
    };
    while i < t.len() {
        let prev = if i == 0 { None } else { Some(&t[i - 1].tok) };
        match &t[i].tok {
            Tok::Punct('{') => {
                depth += 1;
                i += 1;
            }
            Tok::Punct('}') => {
                if scope.last().is_some_and(|(_, d)| *d == depth) {
                    scope.pop();
                }
                depth -= 1;
                i += 1;
            }
            Tok::Ident(w) if w == "mod" && is_punct(t, i + 2, '{') => {
                if let Some(name) = ident_at(t, i + 1) {
                    scope.push((name.to_string(), depth + 1));
                }
                i += 2;
            }
            Tok::Ident(w) if w == "use" && prev != Some(&Tok::Sep) => {
                let mut j = i + 1;
                if matches!(t.get(j).map(|x| &x.tok), Some(Tok::Sep)) {
                    j += 1; // `use ::std::…`: an extern crate, never this one.
                    let mut skip = Vec::new();
                    i = parse_tree(t, j, &[], &mut skip);
                    continue;
                }
                let mut leaves = Vec::new();
                let end = parse_tree(t, j, &[], &mut leaves);
                push(leaves, &scope, true);
                i = end.max(i + 1);
            }
            Tok::Ident(w)
                if matches!(t.get(i + 1).map(|x| &x.tok), Some(Tok::Sep))
                    && !matches!(prev, Some(Tok::Sep | Tok::Punct('.')))
                    && (prev != Some(&Tok::Punct('$')) || w == "crate")
                    // `pub(in crate::x)` is a visibility, not an import.
                    && !(i >= 2 && ident_at(t, i - 1) == Some("in") && is_punct(t, i - 2, '(')) =>
            {
                let mut leaves = Vec::new();
                let end = parse_tree(t, i, &[], &mut leaves);
                push(leaves, &scope, false);
                i = end.max(i + 1);
            }
            _ => i += 1,
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Graph.

#[derive(Debug)]
struct Module {
    /// `hub::write`; `""` for the crate root.
    path: String,
    /// The file (for the crate root, the first of lib.rs and main.rs).
    file: String,
}

#[derive(Debug, Clone)]
struct Evidence {
    file: String,
    line: usize,
    text: String,
}

#[derive(Debug)]
struct Graph {
    modules: Vec<Module>,
    /// (importer, imported) → where it first happens.
    edges: BTreeMap<(usize, usize), Evidence>,
}

fn display(module: &str) -> &str {
    if module.is_empty() {
        "(crate root)"
    } else {
        module
    }
}

/// Module path of a file relative to `src/` (`hub/mod.rs` → `hub`, `lib.rs` → ``).
fn module_of(rel: &str) -> String {
    let stem = rel.strip_suffix(".rs").unwrap_or(rel);
    let mut parts: Vec<&str> = stem.split('/').collect();
    if parts.len() > 1 && parts.last() == Some(&"mod") {
        parts.pop();
    }
    if parts == ["lib"] || parts == ["main"] {
        return String::new();
    }
    parts.join("::")
}

/// The absolute path (segments from the crate root) of a path written in `file_mod`, inside the
/// inline modules `scope`, or None if it does not start in this crate.
fn absolute(
    segs: &[String],
    file_mod: &[String],
    scope: &[String],
    modules: &BTreeSet<Vec<String>>,
    aliases: &BTreeMap<String, Vec<String>>,
) -> Option<Vec<String>> {
    let first = segs.first()?.as_str();
    let (mut full, rest): (Vec<String>, &[String]) = match first {
        "crate" => (Vec::new(), &segs[1..]),
        "self" | "super" => {
            let mut base: Vec<String> = file_mod.iter().chain(scope).cloned().collect();
            let mut k = 0;
            while k < segs.len() && (segs[k] == "self" || segs[k] == "super") {
                if segs[k] == "super" {
                    base.pop()?;
                }
                k += 1;
            }
            (base, &segs[k..])
        }
        _ => {
            let mut child = file_mod.to_vec();
            child.push(first.to_string());
            if scope.is_empty() && modules.contains(&child) {
                (file_mod.to_vec(), segs)
            } else {
                (aliases.get(first)?.clone(), &segs[1..])
            }
        }
    };
    // `self` inside a group (`use crate::a::{self, b}`) names the group's module.
    full.extend(rest.iter().filter(|s| *s != "self").cloned());
    Some(full)
}

fn longest_module(mut full: Vec<String>, modules: &BTreeSet<Vec<String>>) -> Option<Vec<String>> {
    loop {
        if modules.contains(&full) {
            return Some(full);
        }
        full.pop()?;
    }
}

fn split(module: &str) -> Vec<String> {
    if module.is_empty() {
        Vec::new()
    } else {
        module.split("::").map(str::to_string).collect()
    }
}

/// The graph of one crate from its files (path relative to `src/` with `/`, source text).
fn build(krate: &str, files: &[(String, String)]) -> Graph {
    let mut tokens: BTreeMap<String, Vec<(String, Vec<Token>)>> = BTreeMap::new();
    let mut test_only: BTreeSet<Vec<String>> = BTreeSet::new();
    for (rel, src) in files {
        let module = module_of(rel);
        let (toks, test_mods) = drop_test_items(&lex(src));
        for name in test_mods {
            let mut m = split(&module);
            m.push(name);
            test_only.insert(m);
        }
        tokens
            .entry(module)
            .or_default()
            .push((format!("{krate}/src/{rel}"), toks));
    }
    // Test-only files and everything under them are no nodes.
    tokens.retain(|m, _| {
        let m = split(m);
        !test_only.iter().any(|t| m.starts_with(t))
    });
    let modules: Vec<Module> = tokens
        .iter()
        .map(|(path, files)| Module {
            path: path.clone(),
            file: files[0].0.clone(),
        })
        .collect();
    let index: BTreeMap<Vec<String>, usize> = modules
        .iter()
        .enumerate()
        .map(|(k, m)| (split(&m.path), k))
        .collect();
    let set: BTreeSet<Vec<String>> = index.keys().cloned().collect();
    let mut edges = BTreeMap::new();
    for (from, (module, files)) in tokens.iter().enumerate() {
        let file_mod = split(module);
        for (file, toks) in files {
            let found = paths(toks);
            // Names bound to module files by this file's `use`s, in order.
            let mut aliases: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for p in found.iter().filter(|p| p.in_use) {
                if let (Some(alias), Some(full)) = (
                    &p.alias,
                    absolute(&p.segs, &file_mod, &p.scope, &set, &aliases),
                ) && !full.is_empty()
                    && set.contains(&full)
                {
                    aliases.insert(alias.clone(), full);
                }
            }
            for p in &found {
                let Some(target) = absolute(&p.segs, &file_mod, &p.scope, &set, &aliases)
                    .and_then(|full| longest_module(full, &set))
                else {
                    continue;
                };
                let to = index[&target];
                // A module's imports of its own ancestors (`super::Item` in a child of a
                // `mod.rs` that names its children) keep a directory module one unit.
                if to == from || target.is_empty() || file_mod.starts_with(&target) {
                    continue;
                }
                edges.entry((from, to)).or_insert_with(|| Evidence {
                    file: file.clone(),
                    line: p.line,
                    text: p.segs.join("::"),
                });
            }
        }
    }
    Graph { modules, edges }
}

/// Reads every `.rs` file under `<workspace>/<krate>/src`.
fn read_crate(krate: &str) -> Graph {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(krate)
        .join("src");
    let mut files = Vec::new();
    let mut dirs = vec![src.clone()];
    while let Some(dir) = dirs.pop() {
        let entries =
            std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()));
        for entry in entries {
            let path = entry
                .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
                .path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|x| x == "rs") {
                let rel = path
                    .strip_prefix(&src)
                    .expect("under src")
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect::<Vec<_>>()
                    .join("/");
                let text = std::fs::read_to_string(&path)
                    .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
                files.push((rel, text));
            }
        }
    }
    files.sort();
    assert!(!files.is_empty(), "no .rs files under {}", src.display());
    build(krate, &files)
}

impl Graph {
    fn name(&self, k: usize) -> &str {
        display(&self.modules[k].path)
    }

    fn successors(&self) -> Vec<Vec<usize>> {
        let mut succ = vec![Vec::new(); self.modules.len()];
        for &(a, b) in self.edges.keys() {
            succ[a].push(b);
        }
        succ
    }

    /// Strongly connected components (Tarjan, iterative), each sorted, in the order Tarjan
    /// finds them: a component comes after every component it imports.
    fn components(&self) -> Vec<Vec<usize>> {
        let succ = self.successors();
        let n = self.modules.len();
        let mut index = vec![usize::MAX; n];
        let mut low = vec![0; n];
        let mut on_stack = vec![false; n];
        let mut stack = Vec::new();
        let mut out = Vec::new();
        let mut next = 0;
        for root in 0..n {
            if index[root] != usize::MAX {
                continue;
            }
            let mut call: Vec<(usize, usize)> = vec![(root, 0)];
            index[root] = next;
            low[root] = next;
            next += 1;
            stack.push(root);
            on_stack[root] = true;
            while let Some(&mut (v, ref mut child)) = call.last_mut() {
                if let Some(&w) = succ[v].get(*child) {
                    *child += 1;
                    if index[w] == usize::MAX {
                        index[w] = next;
                        low[w] = next;
                        next += 1;
                        stack.push(w);
                        on_stack[w] = true;
                        call.push((w, 0));
                    } else if on_stack[w] {
                        low[v] = low[v].min(index[w]);
                    }
                    continue;
                }
                call.pop();
                if let Some(&(parent, _)) = call.last() {
                    low[parent] = low[parent].min(low[v]);
                }
                if low[v] == index[v] {
                    let mut comp = Vec::new();
                    while let Some(w) = stack.pop() {
                        on_stack[w] = false;
                        comp.push(w);
                        if w == v {
                            break;
                        }
                    }
                    comp.sort();
                    out.push(comp);
                }
            }
        }
        out
    }

    /// Lines `file:line  from → to  (path)` for the edges among `members`.
    fn edges_among(&self, members: &[usize]) -> String {
        let mut s = String::new();
        for (&(a, b), ev) in &self.edges {
            if members.contains(&a) && members.contains(&b) {
                let _ = writeln!(
                    s,
                    "    {}:{}  {} → {}  ({})",
                    ev.file,
                    ev.line,
                    self.name(a),
                    self.name(b),
                    ev.text
                );
            }
        }
        s
    }
}

/// A crate's structure figures.
#[derive(Debug, PartialEq)]
struct Figures {
    files: usize,
    edges: usize,
    /// Components of more than one file, largest first (module names, sorted).
    cycles: Vec<Vec<String>>,
    /// Levels of the condensed graph: a component's level is 1 + the highest level among the
    /// components it imports (1 if it imports none); this is the highest level, i.e. the longest
    /// import chain counted in components.
    levels: usize,
    /// Edges that do not run down the levels: every edge between two files of one cycle (both
    /// ends share the cycle's level). Edges between components always run to a lower level.
    upward: usize,
}

fn figures(g: &Graph) -> Figures {
    let comps = g.components();
    let succ = g.successors();
    let mut comp_of = vec![0; g.modules.len()];
    for (c, members) in comps.iter().enumerate() {
        for &v in members {
            comp_of[v] = c;
        }
    }
    // Tarjan's order puts a component after everything it imports.
    let mut level = vec![0usize; comps.len()];
    for (c, members) in comps.iter().enumerate() {
        level[c] = 1 + members
            .iter()
            .flat_map(|&v| &succ[v])
            .filter(|&&w| comp_of[w] != c)
            .map(|&w| level[comp_of[w]])
            .max()
            .unwrap_or(0);
    }
    let mut cycles: Vec<Vec<String>> = comps
        .iter()
        .filter(|m| m.len() > 1)
        .map(|m| m.iter().map(|&v| g.name(v).to_string()).collect())
        .collect();
    cycles.sort_by(|a, b| b.len().cmp(&a.len()).then(a.cmp(b)));
    Figures {
        files: g.modules.len(),
        edges: g.edges.len(),
        cycles,
        levels: level.iter().copied().max().unwrap_or(0),
        upward: g
            .edges
            .keys()
            .filter(|(a, b)| comp_of[*a] == comp_of[*b])
            .count(),
    }
}

fn allowed_pair(krate: &str, a: &str, b: &str) -> bool {
    ALLOWED_TWO_CYCLES
        .iter()
        .any(|&(k, x, y, _)| k == krate && ((x == a && y == b) || (x == b && y == a)))
}

// ---------------------------------------------------------------------------------------------
// Rules.

/// Rule 1: in every crate, no cycle of more than two files, and every two-file cycle listed in
/// `ALLOWED_TWO_CYCLES` (and every entry there still a cycle).
#[test]
fn no_import_cycles_beyond_allowed_pairs() {
    let mut failures = String::new();
    for (_, _, _, reason) in ALLOWED_TWO_CYCLES {
        assert!(
            !reason.trim().is_empty(),
            "an ALLOWED_TWO_CYCLES entry has no reason"
        );
    }
    let mut pairs_seen = BTreeSet::new();
    for krate in CRATES {
        let g = read_crate(krate);
        for comp in g.components().into_iter().filter(|c| c.len() > 1) {
            let names: Vec<&str> = comp.iter().map(|&v| g.name(v)).collect();
            if comp.len() == 2 {
                pairs_seen.insert((
                    krate.to_string(),
                    names[0].to_string(),
                    names[1].to_string(),
                ));
                if allowed_pair(krate, names[0], names[1]) {
                    continue;
                }
            }
            let files: Vec<&str> = comp.iter().map(|&v| g.modules[v].file.as_str()).collect();
            let _ = write!(
                failures,
                "\n{krate}: import cycle of {} files{}: {}\n  its imports:\n{}",
                comp.len(),
                if comp.len() == 2 {
                    " (not in ALLOWED_TWO_CYCLES)"
                } else {
                    ""
                },
                files.join(", "),
                g.edges_among(&comp)
            );
        }
    }
    for &(k, a, b, _) in ALLOWED_TWO_CYCLES {
        let seen = pairs_seen
            .iter()
            .any(|(pk, x, y)| pk == k && ((x == a && y == b) || (x == b && y == a)));
        if !seen {
            let _ = write!(
                failures,
                "\n{k}: ALLOWED_TWO_CYCLES lists {a} ↔ {b}, which is no longer a two-file cycle: \
                 remove the entry"
            );
        }
    }
    assert!(failures.is_empty(), "import cycles:{failures}");
}

/// Rule 2's failures for an api graph: unassigned modules, imports of a higher layer, imports
/// between front doors.
fn layer_violations(g: &Graph) -> Vec<String> {
    let mut failures = Vec::new();
    let layers: Vec<Option<(&str, Layer)>> = g.modules.iter().map(|m| layer_of(&m.path)).collect();
    for (m, layer) in g.modules.iter().zip(&layers) {
        if layer.is_none() {
            failures.push(format!(
                "unassigned module {} ({}) — add it to a layer in API_LAYERS",
                display(&m.path),
                m.file
            ));
        }
    }
    for (&(a, b), ev) in &g.edges {
        let (Some((pa, la)), Some((pb, lb))) = (layers[a], layers[b]) else {
            continue;
        };
        let why = if lb > la {
            "imports a higher layer"
        } else if la == Layer::FrontDoor && lb == Layer::FrontDoor && pa != pb {
            "one front door imports another"
        } else {
            continue;
        };
        failures.push(format!(
            "{}:{}  {} [{}] → {} [{}]  ({}): {why}",
            ev.file,
            ev.line,
            g.name(a),
            la.name(),
            g.name(b),
            lb.name(),
            ev.text
        ));
    }
    failures
}

/// Rule 2: every api module is in a layer of `API_LAYERS`, imports no higher layer, and a front
/// door imports no other front door.
#[test]
fn api_layers() {
    let failures = layer_violations(&read_crate("api"));
    assert!(failures.is_empty(), "api layers:\n{}", failures.join("\n"));
}

/// Rule 3: prints each crate's figures (see `Figures`), for quoting before and after a change.
#[test]
fn structure_figures() {
    for krate in CRATES {
        let g = read_crate(krate);
        assert!(
            g.modules.iter().any(|m| m.path.is_empty()),
            "{krate}: no lib.rs or main.rs under src/"
        );
        let f = figures(&g);
        assert!(f.levels >= 1 && f.upward <= f.edges);
        println!(
            "{krate}: {} files, {} import edges, {} levels, {} upward edges (inside cycles)",
            f.files, f.edges, f.levels, f.upward
        );
        for c in &f.cycles {
            println!("  cycle of {} files: {}", c.len(), c.join(", "));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Self-test of the parser and the figures.

fn edge_names(g: &Graph) -> BTreeSet<(String, String)> {
    g.edges
        .keys()
        .map(|&(a, b)| (g.name(a).to_string(), g.name(b).to_string()))
        .collect()
}

#[test]
fn parser_self_test() {
    let files: Vec<(String, String)> = [
        (
            "lib.rs",
            "pub mod a; pub mod b; pub mod c; mod p; mod q; mod tests_only;",
        ),
        // Nested groups; paths in comments, strings and char literals do not count.
        (
            "a.rs",
            r###"
            //! Docs: crate::q::x.
            /// Also crate::q.
            use crate::{b::{x, y as z}, c};
            /* crate::q /* nested */ crate::q */
            fn f<'t>(s: &'t str) -> char {
                let _ = "crate::q::s \" crate::q";
                let _ = r##"crate::q "# crate::q"##;
                let _ = b"crate::q";
                '"'
            }
            "###,
        ),
        // `pub use super::…`; `self` in a group; `$crate`.
        (
            "b.rs",
            "pub use super::c::{self, T};\nmacro_rules! m { () => { $crate::p::g() } }",
        ),
        // Test-only items: the `mod tests` block, a test-only fn and import.
        (
            "c.rs",
            "pub struct T;\n#[cfg(test)]\nmod tests { use crate::q::x; }\n\
             #[cfg(test)]\n#[allow(dead_code)]\nfn h() { crate::q::y(); }\n\
             #[cfg(test)] use crate::q;\n#[cfg(not(test))] use crate::b::Y;",
        ),
        // A child module from its parent, and not as a later segment of another path; a module
        // imported by name.
        (
            "p/mod.rs",
            "mod child; mod other;\npub fn router() { child::f(); std::other::g(); }\n\
             use crate::q;\nfn k() { q::inner::h() }",
        ),
        // An edge to an ancestor module counts; one to the crate root does not.
        (
            "p/child.rs",
            "pub fn f() { super::router(); super::super::q::x(); crate::R::new(); }",
        ),
        // `super` inside an inline module starts from that module.
        (
            "p/other.rs",
            "pub fn g() {}\nmod inline { fn g() { super::super::child::f() } }",
        ),
        ("q/mod.rs", "pub mod inner;\n#[cfg(test)]\nmod tests;"),
        ("q/inner.rs", "pub fn h() { super::super::p::router() }"),
        ("q/tests.rs", "use crate::a::f;"),
        // A file that is test-only as a whole.
        ("tests_only.rs", "#![cfg(test)]\nuse crate::a;"),
    ]
    .into_iter()
    .map(|(p, s)| (p.to_string(), s.to_string()))
    .collect();
    let g = build("demo", &files);
    let modules: Vec<&str> = g.modules.iter().map(|m| m.path.as_str()).collect();
    assert_eq!(
        modules,
        [
            "",
            "a",
            "b",
            "c",
            "p",
            "p::child",
            "p::other",
            "q",
            "q::inner",
            "tests_only"
        ],
        "q/tests.rs is test-only"
    );
    let expected: BTreeSet<(String, String)> = [
        ("a", "b"),
        ("a", "c"),
        ("b", "c"),
        ("b", "p"),
        ("c", "b"),
        ("p", "p::child"),
        ("p", "q"),
        ("p", "q::inner"),
        // (`p::child` → `p`, its parent, is not an edge.)
        ("p::child", "q"),
        ("p::other", "p::child"),
        ("q::inner", "p"),
    ]
    .into_iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(edge_names(&g), expected);
    let ev = &g.edges[&(1, 2)];
    assert_eq!((ev.file.as_str(), ev.line), ("demo/src/a.rs", 4));
    assert_eq!(ev.text, "crate::b::x");

    let f = figures(&g);
    assert_eq!(
        f,
        Figures {
            files: 10,
            edges: 11,
            cycles: vec![
                vec!["b".to_string(), "c".to_string()],
                vec!["p".to_string(), "q::inner".to_string()],
            ],
            // q (1) ← p::child (2) ← the p/q::inner cycle and p::other (3) ← the b/c cycle (4)
            // ← a (5).
            levels: 5,
            // The edges inside the two cycles: 2 + 2.
            upward: 4,
        }
    );
}

#[test]
fn layer_self_test() {
    assert_eq!(layer_of(""), Some(("", Layer::Entry)));
    assert_eq!(layer_of("cli::serve"), Some(("cli", Layer::Entry)));
    assert_eq!(
        layer_of("http::web::adapter"),
        Some(("http::web", Layer::FrontDoor))
    );
    assert_eq!(layer_of("http::extract"), Some(("http", Layer::HttpEdge)));
    assert_eq!(layer_of("http"), Some(("http", Layer::HttpEdge)));
    assert_eq!(layer_of("app::publish"), Some(("app", Layer::UseCase)));
    assert_eq!(layer_of("jobs::run"), Some(("jobs", Layer::Service)));
    assert_eq!(layer_of("httpx"), None);

    let files: Vec<(String, String)> = [
        (
            "lib.rs",
            "pub mod app; pub mod error; pub mod http; pub mod no_such_layer;",
        ),
        ("error.rs", "use crate::http::web::Page;"),
        ("app/mod.rs", "use crate::error::ApiError;"),
        ("http/mod.rs", "pub mod hub; pub mod web;"),
        ("http/hub/mod.rs", "use crate::app; use super::web::Page;"),
        (
            "http/web/mod.rs",
            "pub struct Page; fn f() { super::super::error::g() }",
        ),
        ("no_such_layer.rs", "use crate::error;"),
    ]
    .into_iter()
    .map(|(p, s)| (p.to_string(), s.to_string()))
    .collect();
    assert_eq!(
        layer_violations(&build("api", &files)),
        [
            "unassigned module no_such_layer (api/src/no_such_layer.rs) — add it to a layer in \
             API_LAYERS",
            "api/src/error.rs:1  error [base] → http::web [front door]  (crate::http::web::Page): \
             imports a higher layer",
            "api/src/http/hub/mod.rs:1  http::hub [front door] → http::web [front door]  \
             (super::web::Page): one front door imports another",
        ]
    );
}
