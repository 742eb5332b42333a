//! Profiles from model cards: the prose of a card (README.md) that says what the adapter does,
//! cut into sentences that are embedded like routing samples. For adapters that carry a card
//! but no `samples.jsonl`.
//!
//! Kept: paragraphs and list items outside the sections that say nothing about the task
//! (training details, hyperparameters, framework versions, citation, licence, environmental
//! impact, getting-started code, evaluation results, contacts…). Dropped: YAML front matter,
//! code blocks, HTML comments and tags, tables, headings, image markup, link targets (the link
//! text stays) and the placeholders that PEFT's and the Hub's card templates leave ("More
//! Information Needed"). A card that is only a template yields nothing, so it gets no profile.

use crate::MAX_INPUT_BYTES;

/// At most this many texts per card: a profile is a handful of sentences, like samples.
pub const MAX_CARD_TEXTS: usize = 32;
/// Fewer words than this is a label ("Model type: LoRA"), not a description.
const MIN_WORDS: usize = 4;

/// Section headings (lower-cased, containing any of these) whose text is not about the task.
const SKIPPED_SECTIONS: &[&str] = &[
    "training",
    "hyperparameter",
    "framework",
    "citation",
    "bibtex",
    "licen",
    "environmental",
    "carbon",
    "get started",
    "getting started",
    "usage example",
    "evaluation",
    "results",
    "metrics",
    "compute",
    "hardware",
    "software",
    "technical specifications",
    "contact",
    "author",
    "glossary",
    "more information",
    "acknowledg",
    "install",
];

/// The texts a model card's profile is made of (see the module doc); empty when the card says
/// nothing usable.
pub fn card_texts(markdown: &str) -> Vec<String> {
    let mut paragraphs: Vec<String> = Vec::new();
    let mut current = String::new();
    let mut skip_below: Option<usize> = None;
    let mut fence: Option<&str> = None;
    let mut in_comment = false;
    let flush = |current: &mut String, paragraphs: &mut Vec<String>| {
        if !current.trim().is_empty() {
            paragraphs.push(std::mem::take(current));
        }
        current.clear();
    };
    for line in body(markdown).lines() {
        let trimmed = line.trim();
        if let Some(marker) = fence {
            if trimmed.starts_with(marker) {
                fence = None;
            }
            continue;
        }
        if in_comment {
            if trimmed.contains("-->") {
                in_comment = false;
            }
            continue;
        }
        if let Some(marker) = ["```", "~~~"].into_iter().find(|m| trimmed.starts_with(m)) {
            flush(&mut current, &mut paragraphs);
            fence = Some(marker);
            continue;
        }
        if trimmed.starts_with("<!--") {
            in_comment = !trimmed.contains("-->");
            continue;
        }
        if let Some(level) = heading_level(trimmed) {
            flush(&mut current, &mut paragraphs);
            let title = trimmed[level..].trim().to_lowercase();
            match skip_below {
                Some(depth) if level > depth => {}
                // A level-1 heading is the card's title (often the adapter's name), not a section.
                _ => {
                    skip_below = (level > 1 && SKIPPED_SECTIONS.iter().any(|s| title.contains(s)))
                        .then_some(level);
                }
            }
            continue;
        }
        if skip_below.is_some() {
            continue;
        }
        if trimmed.is_empty() || trimmed.starts_with('|') || is_rule(trimmed) {
            flush(&mut current, &mut paragraphs);
            continue;
        }
        let item = list_item(trimmed);
        if item.is_some() {
            flush(&mut current, &mut paragraphs);
        }
        let text = plain(item.unwrap_or(trimmed));
        if text.to_lowercase().contains("more information needed") {
            continue;
        }
        if !current.is_empty() {
            current.push(' ');
        }
        current.push_str(&text);
        if item.is_some() {
            flush(&mut current, &mut paragraphs);
        }
    }
    flush(&mut current, &mut paragraphs);

    let mut out: Vec<String> = Vec::new();
    for paragraph in &paragraphs {
        for sentence in sentences(paragraph) {
            let sentence = cut(sentence.trim(), MAX_INPUT_BYTES);
            if sentence.split_whitespace().count() >= MIN_WORDS
                && !out.iter().any(|s| s == sentence)
            {
                out.push(sentence.to_string());
                if out.len() == MAX_CARD_TEXTS {
                    return out;
                }
            }
        }
    }
    out
}

/// The card without its YAML front matter.
fn body(markdown: &str) -> &str {
    let text = markdown.trim_start_matches('\u{feff}');
    let Some(rest) = text.strip_prefix("---") else {
        return text;
    };
    if !rest.starts_with(['\n', '\r']) {
        return text;
    }
    let mut offset = 0;
    for line in rest.split_inclusive('\n') {
        if offset > 0 && line.trim_end() == "---" {
            return &rest[offset + line.len()..];
        }
        offset += line.len();
    }
    "" // unterminated front matter: nothing but metadata
}

fn heading_level(line: &str) -> Option<usize> {
    let level = line.bytes().take_while(|&b| b == b'#').count();
    ((1..=6).contains(&level) && line[level..].starts_with([' ', '\t'])).then_some(level)
}

fn is_rule(line: &str) -> bool {
    line.len() >= 3
        && line
            .chars()
            .all(|c| matches!(c, '-' | '*' | '_' | '=' | ' '))
}

/// The text of a list item (`- x`, `* x`, `+ x`, `1. x`), or `None`.
fn list_item(line: &str) -> Option<&str> {
    if let Some(rest) = line
        .strip_prefix("- ")
        .or_else(|| line.strip_prefix("* "))
        .or_else(|| line.strip_prefix("+ "))
    {
        return Some(rest.trim());
    }
    let digits = line.bytes().take_while(u8::is_ascii_digit).count();
    (digits > 0)
        .then(|| line[digits..].strip_prefix(". "))
        .flatten()
        .map(str::trim)
}

/// Markdown inline markup removed: images dropped, links reduced to their text, HTML tags,
/// emphasis and code markers removed. Linear in the line's length (a card is a caller's text:
/// a line of 500,000 `[` must not cost 500,000 scans).
fn plain(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let (mut bracket, mut paren, mut angle) = (Next::new(b']'), Next::new(b')'), Next::new(b'>'));
    let mut pos = 0;
    // `[text](target)` whose `[` is at `at`: (the `]`, the byte just past the `)`).
    let link = |at: usize, bracket: &mut Next, paren: &mut Next| {
        let close = bracket.at_or_after(line, at + 1)?;
        if line.as_bytes().get(close + 1) != Some(&b'(') {
            return None;
        }
        Some((close, paren.at_or_after(line, close + 2)? + 1))
    };
    while let Some(c) = line[pos..].chars().next() {
        let rest = &line[pos..];
        if rest.starts_with("![")
            && let Some((_, end)) = link(pos + 1, &mut bracket, &mut paren)
        {
            pos = end;
            continue;
        }
        if c == '['
            && let Some((close, end)) = link(pos, &mut bracket, &mut paren)
        {
            out.push_str(&line[pos + 1..close]);
            pos = end;
            continue;
        }
        if c == '<'
            && let Some(close) = angle.at_or_after(line, pos + 1)
            && line[pos + 1..close].starts_with(|c: char| c.is_ascii_alphabetic() || c == '/')
        {
            pos = close + 1;
            continue;
        }
        if c == '_' && rest[1..].starts_with('_') {
            pos += 1; // `__bold__`: drop both underscores
        } else if !matches!(c, '*' | '`' | '#') {
            out.push(c);
        }
        pos += c.len_utf8();
    }
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The next position of one ASCII byte in a line, remembered between calls whose starting
/// points only grow, so that all the calls of one line scan it once.
struct Next {
    byte: u8,
    /// (searched from, what was found).
    last: Option<(usize, Option<usize>)>,
}

impl Next {
    fn new(byte: u8) -> Self {
        Self { byte, last: None }
    }

    fn at_or_after(&mut self, line: &str, from: usize) -> Option<usize> {
        match self.last {
            Some((_, Some(found))) if found >= from => return Some(found),
            Some((searched, None)) if searched <= from => return None,
            _ => {}
        }
        let found = line
            .as_bytes()
            .get(from..)
            .and_then(|tail| tail.iter().position(|&b| b == self.byte))
            .map(|i| from + i);
        self.last = Some((from, found));
        found
    }
}

/// Sentences: split after `.`, `!` or `?` followed by a space and an upper-case letter or digit.
fn sentences(paragraph: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let bytes = paragraph.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        if matches!(b, b'.' | b'!' | b'?')
            && bytes.get(i + 1) == Some(&b' ')
            && paragraph[i + 2..]
                .chars()
                .next()
                .is_some_and(|c| c.is_uppercase() || c.is_ascii_digit())
        {
            out.push(&paragraph[start..=i]);
            start = i + 2;
        }
    }
    out.push(&paragraph[start..]);
    out
}

/// At most `max` bytes, cut at a character boundary.
fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What PEFT's `push_to_hub` writes when nobody edits the card.
    const PEFT_TEMPLATE: &str = "---\nbase_model: meta-llama/Llama-3.2-1B\nlibrary_name: peft\n---\n\n# Model Card for Model ID\n\n<!-- Provide a quick summary of what the model is/does. -->\n\n\n\n## Model Details\n\n### Model Description\n\n<!-- Provide a longer summary of what this model is. -->\n\n\n\n- **Developed by:** [More Information Needed]\n- **Funded by [optional]:** [More Information Needed]\n- **Model type:** [More Information Needed]\n- **Language(s) (NLP):** [More Information Needed]\n- **License:** [More Information Needed]\n\n### Model Sources [optional]\n\n<!-- Provide the basic links for the model. -->\n\n- **Repository:** [More Information Needed]\n\n## Uses\n\n<!-- Address questions around how the model is intended to be used, including the foreseeable users of the model and those affected by the model. -->\n\n### Direct Use\n\n<!-- This section is for the model to be used without fine-tuning, or when plugged into a larger ecosystem/app. -->\n\n[More Information Needed]\n\n## How to Get Started with the Model\n\nUse the code below to get started with the model.\n\n[More Information Needed]\n\n## Training Details\n\n### Training Data\n\n[More Information Needed]\n\n### Framework versions\n\n- PEFT 0.17.1\n";

    #[test]
    fn a_template_card_yields_nothing() {
        assert!(card_texts(PEFT_TEMPLATE).is_empty());
        assert!(card_texts("").is_empty());
        assert!(card_texts("---\nlicense: mit\n---\n").is_empty());
        assert!(card_texts("---\nunterminated: front matter\nwith many words in it\n").is_empty());
    }

    #[test]
    fn a_written_card_yields_its_description_sentences() {
        let card = PEFT_TEMPLATE.replace(
            "<!-- Provide a longer summary of what this model is. -->\n",
            "This adapter writes **SQL queries** for a [PostgreSQL](https://www.postgresql.org) \
             schema. It answers questions about orders and customers!\n\n![plot](plot.png)\n",
        ) + "\n## Training Hyperparameters\n\nThe learning rate was 2e-4 for three epochs.\n\n\
               ## Intended uses\n\n- Turning business questions into SQL\n- Explaining an existing query \
               step by step\n\n```python\nmodel = PeftModel.from_pretrained(base, 'x')\n```\n\n\
               | metric | value |\n|---|---|\n| accuracy of the model | 0.9 |\n";
        assert_eq!(
            card_texts(&card),
            vec![
                "This adapter writes SQL queries for a PostgreSQL schema.",
                "It answers questions about orders and customers!",
                "Turning business questions into SQL",
                "Explaining an existing query step by step",
            ]
        );
    }

    /// The title names the adapter: "contact-center-summarizer" is not a contact section.
    #[test]
    fn the_title_never_hides_the_card() {
        let card =
            "# contact-center-training-summarizer\n\nIt summarises support calls for agents.\n";
        assert_eq!(
            card_texts(card),
            vec!["It summarises support calls for agents."]
        );
    }

    #[test]
    fn nested_headings_of_a_skipped_section_stay_skipped() {
        let card = "# a\n\n## Training procedure\n\n### Details of the data used\n\nIt was trained on many many tokens.\n\n## Summary\n\nIt classifies customer reviews by sentiment.\n";
        assert_eq!(
            card_texts(card),
            vec!["It classifies customer reviews by sentiment."]
        );
    }

    #[test]
    fn texts_are_bounded_deduplicated_and_cut_at_char_boundaries() {
        let long = format!("{} end.", "é word ".repeat(MAX_INPUT_BYTES));
        let texts = card_texts(&long);
        assert_eq!(texts.len(), 1);
        assert!(texts[0].len() <= MAX_INPUT_BYTES);
        let many: String = (0..100)
            .map(|i| format!("Sentence number {i} is here. Sentence number 1 is here. "))
            .collect();
        let texts = card_texts(&many);
        assert_eq!(texts.len(), MAX_CARD_TEXTS);
        assert_eq!(
            texts
                .iter()
                .filter(|t| *t == "Sentence number 1 is here.")
                .count(),
            1
        );
    }

    /// A hostile card: a long line of unclosed brackets and angles is read in linear time (this
    /// took minutes when every `[` searched the rest of the line).
    #[test]
    fn unclosed_markup_costs_one_scan() {
        let line = "[<".repeat(300_000);
        assert_eq!(plain(&line), line);
        let links = "[a](b) ".repeat(10_000);
        assert_eq!(plain(&links), "a ".repeat(10_000).trim_end());
    }

    #[test]
    fn inline_markup_is_removed() {
        assert_eq!(
            plain("A <b>bold</b> `code` __word__ and [link text](http://x) ![img](y.png) here"),
            "A bold code word and link text here"
        );
        assert_eq!(plain("snake_case stays"), "snake_case stays");
    }
}
