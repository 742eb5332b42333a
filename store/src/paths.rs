//! The one rule for file paths inside a version, whichever way they come in (REST upload, Hub
//! commit, LFS, a job's output): checked by the API before anything is stored, and again by
//! the store when a version is inserted, so no path can bypass it.
//!
//! A version's files end up on disk under the client's names: `snapshot_download(local_dir=…)`,
//! `curl --create-dirs -o`, a job's scratch directory, often inside a git checkout and sometimes
//! on Windows or macOS. So a path is refused when any client could write it outside the target
//! directory, or where a tool would give it a meaning beyond its bytes:
//!
//! - relative, `/`-separated, 1 to [`MAX_PATH_LEN`] bytes, at most [`MAX_DEPTH`] components of
//!   1 to [`MAX_COMPONENT_LEN`] bytes; no empty, `.` or `..` component;
//! - no control characters, no backslash, none of `: * ? " < > |` (Windows), no leading or
//!   trailing space and no trailing dot in a component (Windows drops them: `.git.` is `.git`),
//!   no invisible Unicode that macOS (HFS+) ignores in names (`.g\u{200c}it` is `.git` there);
//! - no `.git` component in any case, nor its Windows short name `git~1`: a file planted in a
//!   checkout's `.git/` (e.g. `.git/config` with `core.fsmonitor`) runs commands;
//! - no `.gitmodules` or `.lfsconfig` anywhere (git-lfs reads the latter's `lfs.url` from the
//!   work tree, so it could send a pusher's credentials elsewhere), no `.cache/huggingface/`
//!   (the metadata `huggingface_hub` keeps in a `local_dir`), no Windows device names (`con`,
//!   `nul.txt`, `com1` …).
//!
//! `.gitattributes` and `.gitignore` are allowed: every Hub repo has a `.gitattributes`, clients
//! upload it, and without a matching git config entry neither file runs anything.

/// Longest path, in bytes.
pub const MAX_PATH_LEN: usize = 1024;
/// Longest path component, in bytes (most file systems' limit).
pub const MAX_COMPONENT_LEN: usize = 255;
/// Most components in one path.
pub const MAX_DEPTH: usize = 32;

/// Names refused as a component, compared case-insensitively.
const RESERVED: &[&str] = &[".git", "git~1", ".gitmodules", ".lfsconfig"];

/// Windows device names, refused as a component's stem (`nul`, `nul.txt`, `NUL.tar.gz`).
const DEVICES: &[&str] = &[
    "con", "prn", "aux", "nul", "com1", "com2", "com3", "com4", "com5", "com6", "com7", "com8",
    "com9", "lpt1", "lpt2", "lpt3", "lpt4", "lpt5", "lpt6", "lpt7", "lpt8", "lpt9", "conin$",
    "conout$",
];

/// Characters Windows refuses in names (besides `\`, `/` and control characters).
const WINDOWS_FORBIDDEN: &[char] = &[':', '*', '?', '"', '<', '>', '|'];

/// Code points macOS ignores in file names (git's `is_hfs_dotgit` list) and other invisible
/// format characters that make a name look like another one.
fn invisible(c: char) -> bool {
    matches!(c as u32, 0x200B..=0x200F | 0x202A..=0x202E | 0x2060..=0x206F | 0xFEFF)
}

/// Checks a file path of a version against the rule above; `Err` says why it is refused.
pub fn check_file_path(path: &str) -> Result<(), String> {
    if path.is_empty() || path.len() > MAX_PATH_LEN {
        return Err(format!("it must be 1 to {MAX_PATH_LEN} bytes long"));
    }
    if path.chars().any(char::is_control) {
        return Err("it contains control characters".into());
    }
    if path.chars().any(invisible) {
        return Err("it contains invisible Unicode format characters".into());
    }
    if path.starts_with('/') || path.contains('\\') {
        return Err("it must be a relative path with '/' separators".into());
    }
    if let Some(c) = path.chars().find(|c| WINDOWS_FORBIDDEN.contains(c)) {
        return Err(format!(
            "{c:?} is not allowed in file names (Windows refuses it)"
        ));
    }
    let components: Vec<&str> = path.split('/').collect();
    if components.len() > MAX_DEPTH {
        return Err(format!("it has more than {MAX_DEPTH} components"));
    }
    for c in &components {
        if c.is_empty() || *c == "." || *c == ".." {
            return Err("it must not contain empty, '.' or '..' components".into());
        }
        if c.len() > MAX_COMPONENT_LEN {
            return Err(format!(
                "a component is longer than {MAX_COMPONENT_LEN} bytes"
            ));
        }
        if c.starts_with(' ') || c.ends_with(' ') || c.ends_with('.') {
            return Err(
                "a component starts or ends with a space or ends with a dot (Windows drops them)"
                    .into(),
            );
        }
        let lower = c.to_lowercase();
        if RESERVED.contains(&lower.as_str()) {
            return Err(format!(
                "{c:?} is refused as a name: git and git-lfs read it from a checkout"
            ));
        }
        let stem = lower.split('.').next().unwrap_or_default();
        if DEVICES.contains(&stem) {
            return Err(format!("{c:?} is a Windows device name"));
        }
    }
    if components.len() >= 2
        && components[0].eq_ignore_ascii_case(".cache")
        && components[1].eq_ignore_ascii_case("huggingface")
    {
        return Err("'.cache/huggingface/' is where huggingface_hub keeps its own metadata".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_paths_pass() {
        for ok in [
            "adapter_config.json",
            "README.md",
            "sub/dir/file.txt",
            "a..b",
            ".gitattributes",
            ".gitignore",
            "docs/.keep",
            "x$(touch y).txt",
            "it's here.txt",
            "gitx/a",
            ".github/workflows/x.yml",
            "console.txt",
            "cache/huggingface/x",
            "ünïcödé/名前.txt",
        ] {
            assert_eq!(check_file_path(ok), Ok(()), "{ok}");
        }
        let deep = vec!["a"; MAX_DEPTH].join("/");
        assert_eq!(check_file_path(&deep), Ok(()));
        let long = "x".repeat(MAX_COMPONENT_LEN);
        assert_eq!(check_file_path(&long), Ok(()));
    }

    #[test]
    fn dangerous_paths_are_refused() {
        let long_component = "x".repeat(MAX_COMPONENT_LEN + 1);
        let long_path = vec!["abcdefgh"; 120].join("/");
        let deep = vec!["a"; MAX_DEPTH + 1].join("/");
        for bad in [
            "",
            ".git",
            ".git/config",
            ".GIT/config",
            ".Git/hooks/pre-commit",
            "sub/.git/config",
            "sub/.git",
            ".git./config",
            ".git /config",
            " .git/config",
            "GIT~1/config",
            ".g\u{200c}it/config",
            "\u{feff}.git/config",
            "a/\u{202e}txt.exe",
            ".gitmodules",
            "sub/.GitModules",
            ".lfsconfig",
            ".cache/huggingface/download/x.metadata",
            ".Cache/HuggingFace/x",
            "/etc/passwd",
            "../x",
            "a/../b",
            "a/./b",
            "./a",
            "a//b",
            "a/",
            "a\\b",
            "..\\x",
            "c:x",
            "C:/x",
            "a\nb",
            "a\rb",
            "a\tb",
            "a\0b",
            "a\u{7f}",
            "a\u{85}b",
            "a?b",
            "a*b",
            "a<b>",
            "a|b",
            "a\"b",
            "name ",
            " name",
            "name.",
            "dir./x",
            "nul",
            "NUL.txt",
            "sub/com1.json",
            "lpt9",
            "aux.tar.gz",
            long_component.as_str(),
            long_path.as_str(),
            deep.as_str(),
        ] {
            assert!(check_file_path(bad).is_err(), "{bad:?} accepted");
        }
    }
}
