//! Model cards: a version's README.md as HTML, from Markdown (pulldown-cmark) and then sanitised
//! (ammonia): no scripts, event handlers, styles, frames or forms; links only to http(s), mailto
//! and this site, opened with `rel="noopener noreferrer nofollow"`; no images (they would be
//! fetched from wherever the card points, and the pages' CSP allows only this origin's).

use std::collections::HashSet;

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

pub fn render(markdown: &str) -> String {
    let mut options = Options::empty();
    options.insert(Options::ENABLE_TABLES);
    options.insert(Options::ENABLE_STRIKETHROUGH);
    options.insert(Options::ENABLE_TASKLISTS);
    let mut raw = String::new();
    html::push_html(
        &mut raw,
        Parser::new_ext(strip_front_matter(markdown), options),
    );
    let mut tags: HashSet<&str> = ammonia::Builder::default().clone_tags();
    tags.remove("img");
    ammonia::Builder::default()
        .tags(tags)
        .url_schemes(HashSet::from(["http", "https", "mailto"]))
        .link_rel(Some("noopener noreferrer nofollow"))
        .clean(&raw)
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_markdown() {
        let html =
            render("---\nlicense: mit\n---\n# Title\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n`code`");
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
        let html = render(md);
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
}
