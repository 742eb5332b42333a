//! A job's written files never name a private input, nor carry its files' sha256.
//!
//! The engine names each input by the directory it is staged under, and a private adapter's
//! directory is `private-input-{i}` (`spec::input_dirs`), so the card (README.md), the reports,
//! a collection's manifest and the safetensors metadata name it so. The engine also records the
//! sha256 of every input's files, computed from their bytes (a hash of private bytes confirms a
//! guess of them); those are replaced here, after the engine ran and before the output is stored,
//! by [`WITHHELD`], a string of the same length — so a safetensors header keeps its length and
//! every tensor offset, and is rewritten in place. The report kept with the job is redacted the
//! same way.
//!
//! This is done for every job with a private input, whatever the output's visibility: the files
//! of a version are immutable, and an output made public later must not name its private
//! parents either. The version's `lineage` (parents with their revisions) keeps the names; the
//! API shows a parent only to callers who may see it (`crate::app::redact`).

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use quiver_store::VersionRecord;
use serde_json::Value;

use super::outcome::Failure;
use super::spec::PinnedInput;

/// What replaces a private input's sha256 in the written files (64 characters, like the hash).
pub const WITHHELD: &str = "withheld:private-input------------------------------------------";
const _: () = assert!(WITHHELD.len() == 64);

/// Replaces the sha256 of every file of the job's private inputs (`versions`: the pinned
/// versions of `inputs`, in order, as staged) in the files under `out` and in `report`, which it
/// returns.
pub(crate) async fn written_files(
    inputs: &[PinnedInput],
    versions: &[VersionRecord],
    out: &Path,
    report: Value,
) -> Result<Value, Failure> {
    let mut hashes: Vec<String> = inputs
        .iter()
        .zip(versions)
        .filter(|(input, _)| input.private)
        .flat_map(|(_, version)| version.files.iter().map(|f| f.sha256.clone()))
        .collect();
    hashes.sort();
    hashes.dedup();
    hashes.retain(|h| h.len() == WITHHELD.len());
    if hashes.is_empty() {
        return Ok(report);
    }
    let dir = out.to_path_buf();
    let files_hashes = hashes.clone();
    tokio::task::spawn_blocking(move || redact_dir(&dir, &files_hashes))
        .await
        .map_err(|e| Failure::Permanent(format!("redacting the output: {e}")))?
        .map_err(|e| Failure::Transient(format!("redacting the output: {e}")))?;
    Ok(redact_value(report, &hashes))
}

/// Every file under `dir`: a safetensors header in place, any other file whole.
pub fn redact_dir(dir: &Path, hashes: &[String]) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            redact_dir(&path, hashes)?;
        } else if path.extension().is_some_and(|e| e == "safetensors") {
            redact_safetensors_header(&path, hashes)?;
        } else {
            let mut bytes = std::fs::read(&path)?;
            if replace_all(&mut bytes, hashes) {
                std::fs::write(&path, bytes)?;
            }
        }
    }
    Ok(())
}

/// The header (`__metadata__` holds the inputs' records) is rewritten in place: same length.
fn redact_safetensors_header(path: &Path, hashes: &[String]) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)?;
    let size = file.metadata()?.len();
    let mut len = [0u8; 8];
    file.read_exact(&mut len)?;
    let n = u64::from_le_bytes(len);
    if n > size.saturating_sub(8) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{}: header length {n} beyond the file", path.display()),
        ));
    }
    let mut header = vec![0u8; n as usize];
    file.read_exact(&mut header)?;
    if replace_all(&mut header, hashes) {
        file.seek(SeekFrom::Start(8))?;
        file.write_all(&header)?;
        file.sync_all()?;
    }
    Ok(())
}

/// Replaces every occurrence of each hash by [`WITHHELD`] (same length); whether any was found.
fn replace_all(bytes: &mut [u8], hashes: &[String]) -> bool {
    let mut changed = false;
    for h in hashes {
        let h = h.as_bytes();
        let mut i = 0;
        while i + h.len() <= bytes.len() {
            if &bytes[i..i + h.len()] == h {
                bytes[i..i + h.len()].copy_from_slice(WITHHELD.as_bytes());
                changed = true;
                i += h.len();
            } else {
                i += 1;
            }
        }
    }
    changed
}

fn redact_value(v: Value, hashes: &[String]) -> Value {
    match v {
        Value::String(s) => Value::String(
            hashes
                .iter()
                .fold(s, |s, h| s.replace(h.as_str(), WITHHELD)),
        ),
        Value::Array(a) => Value::Array(a.into_iter().map(|x| redact_value(x, hashes)).collect()),
        Value::Object(o) => Value::Object(
            o.into_iter()
                .map(|(k, x)| (k, redact_value(x, hashes)))
                .collect(),
        ),
        v => v,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_replaced_in_place_and_headers_keep_their_length() {
        let h = "ab".repeat(32);
        let other = "cd".repeat(32);
        let dir = tempfile::tempdir().expect("tmp");
        let meta = serde_json::json!({"__metadata__": {"quiver.inputs": format!("[{{\"weights_sha256\":\"{h}\"}},{{\"weights_sha256\":\"{other}\"}}]")}, "x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}});
        let header = meta.to_string().into_bytes();
        let mut st = (header.len() as u64).to_le_bytes().to_vec();
        st.extend_from_slice(&header);
        st.extend_from_slice(&1.5f32.to_le_bytes());
        std::fs::write(dir.path().join("adapter_model.safetensors"), &st).expect("write");
        std::fs::write(
            dir.path().join("README.md"),
            format!("| 0 | private-input-0 | 1 | `{h}` |\n"),
        )
        .expect("write");
        redact_dir(dir.path(), std::slice::from_ref(&h)).expect("redact");
        let got = std::fs::read(dir.path().join("adapter_model.safetensors")).expect("read");
        assert_eq!(got.len(), st.len());
        assert_eq!(got[..8], st[..8]);
        assert_eq!(got[got.len() - 4..], st[st.len() - 4..]);
        let text = String::from_utf8_lossy(&got);
        assert!(!text.contains(&h) && text.contains(&other) && text.contains(WITHHELD));
        let parsed = quiver_merge::safetensors::parse_header(&got, got.len() as u64);
        assert!(parsed.is_ok(), "{parsed:?}");
        let card = std::fs::read_to_string(dir.path().join("README.md")).expect("card");
        assert!(!card.contains(&h) && card.contains(WITHHELD), "{card}");
        let report = redact_value(
            serde_json::json!({"inputs": [{"weights_sha256": h}]}),
            std::slice::from_ref(&h),
        );
        assert_eq!(report["inputs"][0]["weights_sha256"], WITHHELD);
    }
}
