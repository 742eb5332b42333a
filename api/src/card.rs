//! Model cards: a version's README.md as HTML, from Markdown (pulldown-cmark) and then sanitised
//! (ammonia): no scripts, event handlers, styles, frames or forms; links only to http(s), mailto
//! and this site, opened with `rel="noopener noreferrer nofollow"`. Images are removed (a reader's
//! browser would fetch them from wherever the card points) unless the operator names hosts with
//! `--card-image-hosts`: then `https://` images from exactly those hosts stay, and the adapter
//! page's Content-Security-Policy allows those hosts and no others.

use std::collections::HashSet;
use std::sync::Arc;

use pulldown_cmark::{Options, Parser, html};

/// Cards longer than this are not rendered (a link to the file is shown instead).
pub const MAX_CARD_BYTES: usize = 512 * 1024;

/// Drops the YAML front matter (`---` … `---`) that Hugging Face cards start with.
fn strip_front_matter(md: &str) -> &str {
    let Some(rest) = md
        .strip_prefix("---\n")
        .or_else(|| md.strip_prefix("---\r\n"))
    else {
        return md;
    };
    match rest.find("\n---") {
        Some(end) => {
            let after = &rest[end + 4..];
            after.split_once('\n').map_or("", |(_, body)| body)
        }
        None => md,
    }
}

/// Which remote images cards may show: none by default.
#[derive(Clone, Debug, Default)]
pub struct ImagePolicy {
    hosts: Arc<Vec<String>>,
}

impl ImagePolicy {
    /// Hosts as `name` or `name:port` (lower-cased; no scheme, path or wildcard).
    pub fn new(hosts: &[String]) -> Result<Self, String> {
        let mut clean = Vec::new();
        for host in hosts.iter().map(|h| h.trim()).filter(|h| !h.is_empty()) {
            let (name, port) = host.split_once(':').unwrap_or((host, ""));
            let name_ok = !name.is_empty()
                && name.len() <= 253
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
                && !name.starts_with(['.', '-'])
                && !name.ends_with(['.', '-']);
            let port_ok = port.is_empty() || port.parse::<u16>().is_ok_and(|p| p > 0);
            if !name_ok || !port_ok {
                return Err(format!(
                    "card image host {host:?} is not a host name (give e.g. \"images.example.com\", \
                     without https:// or a path)"
                ));
            }
            clean.push(host.to_ascii_lowercase());
        }
        Ok(Self {
            hosts: Arc::new(clean),
        })
    }

    pub fn allows_any(&self) -> bool {
        !self.hosts.is_empty()
    }

    /// Whether an `<img src>` may stay: `https://` on one of the hosts, nothing else.
    fn allows(&self, src: &str) -> bool {
        let Ok(url) = url::Url::parse(src) else {
            return false;
        };
        let Some(host) = url.host_str() else {
            return false;
        };
        let host = match url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_owned(),
        };
        url.scheme() == "https" && self.hosts.contains(&host)
    }

    /// The adapter page's CSP when images are allowed: the pages' policy (`base`) with the hosts
    /// added to `img-src`.
    pub fn csp(&self, base: &str) -> String {
        let sources: Vec<String> = self.hosts.iter().map(|h| format!("https://{h}")).collect();
        base.replace(
            "img-src 'self' data:;",
            &format!("img-src 'self' data: {};", sources.join(" ")),
        )
    }
}

pub fn render(markdown: &str, images: &ImagePolicy) -> String {
    let mut options = Options::empty();
    options.insert(Options::ENABLE_TABLES);
    options.insert(Options::ENABLE_STRIKETHROUGH);
    options.insert(Options::ENABLE_TASKLISTS);
    let mut raw = String::new();
    html::push_html(
        &mut raw,
        Parser::new_ext(strip_front_matter(markdown), options),
    );
    let mut builder = ammonia::Builder::default();
    builder
        .url_schemes(HashSet::from(["http", "https", "mailto"]))
        .link_rel(Some("noopener noreferrer nofollow"));
    if images.allows_any() {
        let policy = images.clone();
        builder.attribute_filter(move |element, attribute, value| {
            if (element, attribute) == ("img", "src") && !policy.allows(value) {
                None
            } else {
                Some(value.into())
            }
        });
    } else {
        let mut tags: HashSet<&str> = builder.clone_tags();
        tags.remove("img");
        builder.tags(tags);
    }
    builder.clean(&raw).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render_default(md: &str) -> String {
        render(md, &ImagePolicy::default())
    }

    #[test]
    fn renders_markdown() {
        let html = render_default(
            "---\nlicense: mit\n---\n# Title\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n`code`",
        );
        assert!(html.contains("<h1>Title</h1>"), "{html}");
        assert!(html.contains("<table>") && html.contains("<code>code</code>"));
        assert!(!html.contains("license"), "front matter is not shown");
    }

    #[test]
    fn removes_everything_that_could_run_or_fetch() {
        let md = "<script>alert(1)</script>\n\n<img src=x onerror=alert(2)>\n\n\
                  [click](javascript:alert(3)) <a href=\"https://ok.example\" onclick=\"alert(4)\">ok</a>\n\n\
                  <iframe src=\"https://evil.example\"></iframe><style>body{}</style>\n\n\
                  ![remote](https://tracker.example/p.png)";
        let html = render_default(md);
        for bad in [
            "<script",
            "onerror",
            "javascript:",
            "onclick",
            "<iframe",
            "<style",
            "<img",
            "tracker.example",
        ] {
            assert!(!html.contains(bad), "{bad} in {html}");
        }
        assert!(html.contains(r#"href="https://ok.example""#), "{html}");
        assert!(html.contains("noopener"), "{html}");
    }

    #[test]
    fn images_only_from_configured_hosts_over_https() {
        let policy = ImagePolicy::new(&["Images.Example.com".into(), "cdn.example:8443".into()])
            .expect("hosts");
        let html = render(
            "![a](https://images.example.com/a.png) ![b](http://images.example.com/b.png) \
             ![c](https://tracker.example/c.png) ![d](https://cdn.example:8443/d.png) \
             ![e](https://images.example.com.evil.example/e.png) ![f](/relative.png) \
             <img src=\"https://images.example.com/g.png\" onerror=\"alert(1)\">",
            &policy,
        );
        assert!(
            html.contains(r#"src="https://images.example.com/a.png""#),
            "{html}"
        );
        assert!(
            html.contains(r#"src="https://cdn.example:8443/d.png""#),
            "{html}"
        );
        assert!(
            html.contains(r#"src="https://images.example.com/g.png""#),
            "{html}"
        );
        for bad in [
            "http://",
            "tracker.example",
            "evil.example",
            "relative.png",
            "onerror",
        ] {
            assert!(!html.contains(bad), "{bad} in {html}");
        }
        let base = "default-src 'none'; img-src 'self' data:; style-src 'self'";
        assert_eq!(
            policy.csp(base),
            "default-src 'none'; img-src 'self' data: https://images.example.com \
             https://cdn.example:8443; style-src 'self'"
        );
    }

    #[test]
    fn image_hosts_must_be_host_names() {
        for bad in [
            "https://x.example",
            "x.example/path",
            "*.example",
            "x.example:0",
            ".x",
            "a b",
        ] {
            let error = ImagePolicy::new(&[bad.into()]).expect_err(bad);
            assert!(error.contains("is not a host name"), "{error}");
        }
        assert!(!ImagePolicy::new(&[" ".into()]).expect("blank").allows_any());
    }
}
