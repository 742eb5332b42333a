//! Receiving a version: multipart parts streamed into staged blobs, then validated as a PEFT
//! adapter. Nothing becomes visible here; on any error every staged blob is removed.

use actix_multipart::{Multipart, MultipartError};
use futures::TryStreamExt;
use quiver_merge::{AdapterConfig, header_len, parse_header, summarize};
use quiver_store::paths::check_file_path;
use quiver_store::{BlobStore, StagedBlob};
use serde_json::Value;

use crate::error::{ApiError, ErrorCode};
use crate::metrics::Metrics;

pub use quiver_merge::summary::{
    CONFIG_NAME as CONFIG_FILE, SAFETENSORS_WEIGHTS_NAME as WEIGHTS_FILE,
};
use quiver_merge::summary::{MAX_CONFIG_LEN, is_pickle_name};
use quiver_retrieve::{MAX_SAMPLES_BYTES, SAMPLES_FILE};

pub const MAX_CONFIG_BYTES: usize = MAX_CONFIG_LEN as usize;
pub const MAX_FILES: usize = 1000;

/// One received file, staged in the blob store.
pub struct ReceivedFile {
    pub path: String,
    pub staged: StagedBlob,
}

/// What a multipart upload delivered.
#[derive(Default)]
pub struct Received {
    pub files: Vec<ReceivedFile>,
    config: Option<Vec<u8>>,
    /// The first 8 + N bytes of the weights file (its header), and the file's size.
    weights_header: Option<(Vec<u8>, u64)>,
    /// `samples.jsonl` (routing samples), whole: it is small and checked line by line.
    samples: Option<Vec<u8>>,
}

impl Received {
    /// Removes every staged blob.
    pub async fn discard(self, blobs: &BlobStore) {
        for f in &self.files {
            blobs.discard(&f.staged).await;
        }
    }

    /// Checks the upload is a well-formed PEFT LoRA adapter and returns its summary.
    pub fn validate(&self) -> Result<Value, ApiError> {
        validate_adapter(
            self.config.as_deref(),
            self.weights_header
                .as_ref()
                .map(|(h, size)| (h.as_slice(), *size)),
            self.samples.as_deref(),
        )
    }
}

/// Checks a version's files form a well-formed PEFT LoRA adapter, from the config's bytes, the
/// weights file's first bytes (its header) and size, and `samples.jsonl` if there is one; returns
/// the LoRA summary stored with the version. The one check of uploads and Hub commits.
pub fn validate_adapter(
    config: Option<&[u8]>,
    weights: Option<(&[u8], u64)>,
    samples: Option<&[u8]>,
) -> Result<Value, ApiError> {
    let missing = |name: &str| {
        ApiError::coded(
            ErrorCode::MissingFile,
            format!("a version must contain {name} (in an upload: a part with that filename)"),
        )
    };
    let config_bytes = config.ok_or_else(|| missing(CONFIG_FILE))?;
    let (prefix, size) = weights.ok_or_else(|| missing(WEIGHTS_FILE))?;
    let config = AdapterConfig::from_json(config_bytes)?;
    if let Some(samples) = samples {
        quiver_retrieve::parse_samples(samples)
            .map_err(|e| ApiError::coded(ErrorCode::InvalidSamples, e.to_string()))?;
    }
    let header = parse_header(prefix, size)?;
    let summary = summarize(&config, &header, size)?;
    serde_json::to_value(summary).map_err(|e| ApiError::internal("summary", e))
}

/// Checks a file path of a version, for every way in (REST upload, Hub commit, LFS): the store's
/// one path rule (`quiver_store::paths`, which says why each name is refused), then no pickle
/// files. A 422 `invalid_file_path` naming the path.
pub fn check_path(path: &str) -> Result<(), ApiError> {
    check_file_path(path).map_err(|why| {
        ApiError::coded(
            ErrorCode::InvalidFilePath,
            format!("file path {path:?} is not allowed: {why}"),
        )
    })?;
    if is_pickle_name(path) {
        return Err(ApiError::coded(
            ErrorCode::PickleNotAllowed,
            format!(
                "{path} is a pickle file, which can run code when loaded; upload safetensors instead"
            ),
        ));
    }
    Ok(())
}

fn multipart_error(e: MultipartError) -> ApiError {
    match e {
        MultipartError::ContentTypeMissing
        | MultipartError::ContentTypeParse
        | MultipartError::ContentTypeIncompatible
        | MultipartError::BoundaryMissing => ApiError::coded(
            ErrorCode::UnsupportedMediaType,
            "upload files as multipart/form-data, one part per file, the part's filename being the file path",
        ),
        other => ApiError::coded(
            ErrorCode::InvalidMultipart,
            format!("the multipart body is malformed: {other}"),
        ),
    }
}

/// Streams every part into the blob store. Files already staged are left in `received` for the
/// caller to discard on error; a part in progress is aborted here.
pub async fn receive(
    mut multipart: Multipart,
    blobs: &BlobStore,
    limit: u64,
    metrics: &Metrics,
    received: &mut Received,
) -> Result<(), ApiError> {
    let mut total: u64 = 0;
    while let Some(mut field) = multipart.try_next().await.map_err(multipart_error)? {
        let path = field
            .content_disposition()
            .and_then(|cd| cd.get_filename())
            .map(str::to_owned)
            .ok_or_else(|| {
                ApiError::coded(ErrorCode::InvalidMultipart,
                    format!(
                        "part {:?} has no filename; every part must be a file whose filename is its path",
                        field.name().unwrap_or_default()
                    ),
                )
            })?;
        check_path(&path)?;
        if received.files.iter().any(|f| f.path == path) {
            return Err(ApiError::coded(
                ErrorCode::DuplicateFile,
                format!("{path} appears twice in the upload"),
            ));
        }
        if received.files.len() >= MAX_FILES {
            return Err(ApiError::coded(
                ErrorCode::TooManyFiles,
                format!("a version holds at most {MAX_FILES} files"),
            ));
        }
        let is_config = path == CONFIG_FILE;
        let is_weights = path == WEIGHTS_FILE;
        let is_samples = path == SAMPLES_FILE;
        let mut keep: Vec<u8> = Vec::new();
        let mut want: usize = 8;
        let mut upload = blobs.begin();
        let streamed: Result<(), ApiError> = async {
            while let Some(chunk) = field.try_next().await.map_err(multipart_error)? {
                total += chunk.len() as u64;
                if total > limit {
                    return Err(ApiError::too_large(limit));
                }
                metrics.add_in(chunk.len() as u64);
                if is_config {
                    keep.extend_from_slice(&chunk);
                    if keep.len() > MAX_CONFIG_BYTES {
                        return Err(ApiError::coded(
                            ErrorCode::InvalidAdapterConfig,
                            format!("{CONFIG_FILE} is larger than {MAX_CONFIG_BYTES} bytes"),
                        ));
                    }
                } else if is_samples {
                    keep.extend_from_slice(&chunk);
                    if keep.len() as u64 > MAX_SAMPLES_BYTES {
                        return Err(ApiError::coded(
                            ErrorCode::InvalidSamples,
                            format!("{SAMPLES_FILE} is larger than {MAX_SAMPLES_BYTES} bytes"),
                        ));
                    }
                } else if is_weights && keep.len() < want {
                    let take = (want - keep.len()).min(chunk.len());
                    keep.extend_from_slice(&chunk[..take]);
                    if want == 8 && keep.len() >= 8 {
                        // The header length is known: keep exactly the header, nothing more.
                        let n = header_len(&keep)?;
                        want = 8 + n as usize;
                        let more = (want - keep.len()).min(chunk.len() - take);
                        keep.extend_from_slice(&chunk[take..take + more]);
                    }
                }
                upload.write(chunk).await?;
            }
            Ok(())
        }
        .await;
        if let Err(e) = streamed {
            upload.abort().await;
            return Err(e);
        }
        let size = upload.size();
        let staged = upload.finish().await?;
        if is_config {
            received.config = Some(keep);
        } else if is_weights {
            received.weights_header = Some((keep, size));
        } else if is_samples {
            received.samples = Some(keep);
        }
        received.files.push(ReceivedFile { path, staged });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_checked() {
        for ok in [
            "adapter_config.json",
            "README.md",
            "sub/dir/file.txt",
            "a..b",
        ] {
            assert!(check_path(ok).is_ok(), "{ok} refused");
        }
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../b",
            "a//b",
            "./a",
            "a\\b",
            "c:x",
            "a\nb",
            "a\u{7f}",
            ".git/config",
            ".GIT/config",
            "sub/.Git",
            "x.bin",
            "m.PT",
            "a.pkl",
            "w.pth",
        ] {
            assert!(check_path(bad).is_err(), "{bad:?} accepted");
        }
    }
}
