//! Which methods each documented path accepts, taken from the OpenAPI document the routes were
//! registered with, so that a known path asked with the wrong method gets 405 and `Allow` rather
//! than 404.

use utoipa::openapi::OpenApi;
use utoipa::openapi::path::PathItem;

enum Segment {
    Literal(String),
    /// `{name}`: one non-empty segment.
    Param,
    /// A trailing `{path}`: one or more segments (file paths contain `/`).
    Rest,
    /// A trailing `{name:.*}` (actix's syntax): the rest of the path after its `/`, maybe empty.
    AnyRest,
}

pub struct RouteTable {
    routes: Vec<(Vec<Segment>, Vec<&'static str>)>,
    /// The web pages' routes; they answer only the paths `is_page` accepts.
    pages: Vec<(Vec<Segment>, Vec<&'static str>)>,
    is_page: fn(&str) -> bool,
}

impl RouteTable {
    pub fn from_openapi(doc: &OpenApi) -> Self {
        let routes = doc
            .paths
            .paths
            .iter()
            .map(|(template, item)| (segments(template), methods(item)))
            .collect();
        Self {
            routes,
            pages: Vec::new(),
            is_page: |_| false,
        }
    }

    /// Adds routes the OpenAPI document does not hold (the Hub's): `(path template, methods)`,
    /// templates in actix's syntax (a trailing `{name:.*}` takes the rest of the path).
    pub fn with_routes<'a>(
        mut self,
        routes: impl IntoIterator<Item = (&'a str, &'static [&'static str])>,
    ) -> Self {
        for (template, methods) in routes {
            self.routes.push((segments(template), methods.to_vec()));
        }
        self
    }

    /// Adds the web pages' routes (not in the OpenAPI document), which answer only the paths
    /// `is_page` accepts.
    pub fn with_pages(
        mut self,
        pages: &[(&str, &[&'static str])],
        is_page: fn(&str) -> bool,
    ) -> Self {
        self.is_page = is_page;
        for (template, methods) in pages {
            self.pages.push((segments(template), methods.to_vec()));
        }
        self
    }

    /// The methods some route accepts at `path`, or `None` if no route has this path.
    pub fn allowed(&self, path: &str) -> Option<Vec<&'static str>> {
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let mut allowed: Vec<&'static str> = Vec::new();
        let pages = if (self.is_page)(path) {
            &self.pages[..]
        } else {
            &[]
        };
        for (template, methods) in self.routes.iter().chain(pages) {
            if matches(template, &parts) {
                for m in methods {
                    if !allowed.contains(m) {
                        allowed.push(m);
                    }
                }
            }
        }
        (!allowed.is_empty()).then_some(allowed)
    }
}

fn segments(template: &str) -> Vec<Segment> {
    let parts: Vec<&str> = template.trim_start_matches('/').split('/').collect();
    let last = parts.len() - 1;
    parts
        .iter()
        .enumerate()
        .map(
            |(i, p)| match p.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
                Some("path") if i == last => Segment::Rest,
                Some(p) if i == last && p.ends_with(":.*") => Segment::AnyRest,
                Some(_) => Segment::Param,
                None => Segment::Literal((*p).to_string()),
            },
        )
        .collect()
}

fn methods(item: &PathItem) -> Vec<&'static str> {
    [
        ("GET", item.get.is_some()),
        ("HEAD", item.head.is_some()),
        ("POST", item.post.is_some()),
        ("PUT", item.put.is_some()),
        ("PATCH", item.patch.is_some()),
        ("DELETE", item.delete.is_some()),
    ]
    .into_iter()
    .filter_map(|(m, present)| present.then_some(m))
    .collect()
}

fn matches(template: &[Segment], parts: &[&str]) -> bool {
    let mut i = 0;
    for seg in template {
        match seg {
            Segment::Rest => return parts.len() > i && parts[i..].iter().all(|p| !p.is_empty()),
            Segment::AnyRest => return parts.len() > i,
            Segment::Param if parts.get(i).is_some_and(|p| !p.is_empty()) => {}
            Segment::Literal(l) if parts.get(i) == Some(&l.as_str()) => {}
            _ => return false,
        }
        i += 1;
    }
    i == parts.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use utoipa::openapi::path::{HttpMethod, OperationBuilder, PathItem, PathsBuilder};
    use utoipa::openapi::{InfoBuilder, OpenApiBuilder};

    fn table() -> RouteTable {
        let op = || OperationBuilder::new().build();
        let mut files = PathItem::new(HttpMethod::Get, op());
        files.head = Some(op());
        let mut adapters = PathItem::new(HttpMethod::Get, op());
        adapters.post = Some(op());
        let doc = OpenApiBuilder::new()
            .info(InfoBuilder::new().title("t").version("1").build())
            .paths(
                PathsBuilder::new()
                    .path("/api/v1/adapters", adapters)
                    .path(
                        "/api/v1/adapters/{owner}/{name}",
                        PathItem::new(HttpMethod::Delete, op()),
                    )
                    .path(
                        "/api/v1/adapters/{owner}/{name}/versions/{ref}/files/{path}",
                        files,
                    ),
            )
            .build();
        RouteTable::from_openapi(&doc)
    }

    #[test]
    fn known_paths_report_their_methods() {
        let t = table();
        assert_eq!(t.allowed("/api/v1/adapters"), Some(vec!["GET", "POST"]));
        assert_eq!(t.allowed("/api/v1/adapters/a/b"), Some(vec!["DELETE"]));
        assert_eq!(
            t.allowed("/api/v1/adapters/a/b/versions/main/files/sub/dir/x.json"),
            Some(vec!["GET", "HEAD"])
        );
    }

    /// Routes outside the OpenAPI document, in actix's template syntax (the Hub's, the docs').
    #[test]
    fn added_routes_take_actix_tails() {
        let t = table().with_routes([
            (
                "/{owner}/{name}/resolve/{rev}/{path:.*}",
                &["GET", "HEAD"][..],
            ),
            ("/docs/{path:.*}", &["GET"][..]),
        ]);
        assert_eq!(
            t.allowed("/a/b/resolve/main/x/y.json"),
            Some(vec!["GET", "HEAD"])
        );
        assert_eq!(t.allowed("/docs/"), Some(vec!["GET"]));
        assert_eq!(t.allowed("/docs/index.css"), Some(vec!["GET"]));
        // Without the `/` before the tail, actix's route does not match either.
        assert_eq!(t.allowed("/a/b/resolve/main"), None);
    }

    #[test]
    fn unknown_paths_have_none() {
        let t = table();
        for p in [
            "/nope",
            "/api/v1/adapters/a",
            "/api/v1/adapters/a/b/c",
            "/api/v1/adapters//b",
            "/api/v1/adapters/a/b/versions/main/files",
            "/api/v1/adapters/a/b/versions/main/files/",
        ] {
            assert_eq!(t.allowed(p), None, "{p}");
        }
    }
}
