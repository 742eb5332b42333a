//! Version revisions: the sha1 of a canonical manifest, so a revision names one immutable set of
//! bytes in one place of one repository's history (like a git commit id).

use sha1::{Digest, Sha1};

/// One file of a manifest.
pub struct ManifestFile<'a> {
    pub path: &'a str,
    pub sha256: &'a str,
    pub size: i64,
}

/// `sha1("quiver-manifest-v1\nrepo R\nversion N\nparent P\nfile PATH SHA256 SIZE\n…")`, files
/// sorted by path, `P` = the previous version's revision or `-`.
pub fn revision(
    repo: &str,
    number: i64,
    parent: Option<&str>,
    files: &[ManifestFile<'_>],
) -> String {
    let mut sorted: Vec<&ManifestFile<'_>> = files.iter().collect();
    sorted.sort_by(|a, b| a.path.cmp(b.path));
    let mut h = Sha1::new();
    h.update(format!(
        "quiver-manifest-v1\nrepo {repo}\nversion {number}\nparent {}\n",
        parent.unwrap_or("-")
    ));
    for f in sorted {
        h.update(format!("file {} {} {}\n", f.path, f.sha256, f.size));
    }
    hex::encode(h.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revision_is_40_hex_and_order_independent() {
        let a = ManifestFile {
            path: "a",
            sha256: "00",
            size: 1,
        };
        let b = ManifestFile {
            path: "b",
            sha256: "11",
            size: 2,
        };
        let r1 = revision("o/n", 1, None, &[a, b]);
        let a = ManifestFile {
            path: "a",
            sha256: "00",
            size: 1,
        };
        let b = ManifestFile {
            path: "b",
            sha256: "11",
            size: 2,
        };
        let r2 = revision("o/n", 1, None, &[b, a]);
        assert_eq!(r1, r2);
        assert_eq!(r1.len(), 40);
        assert!(
            r1.bytes()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        assert_ne!(r1, revision("o/n", 2, Some(&r1), &[]));
    }
}
