//! Per-revision export prefixes: a version's `adapter_config.json` and
//! `adapter_model.safetensors` copied under a key prefix named by its revision, for servers that
//! read a directory of the object store (LoRAX's `s3` source, reached directly or through its
//! `pbase` source: docs/serving.md). A revision names immutable bytes, so an export never
//! changes once written; a server that caches by path (LoRAX does) always reads one version.
//!
//! Layouts (keys under the store's prefix):
//! - `exports/<revision>/{adapter_config.json,adapter_model.safetensors}`: what LoRAX's `pbase`
//!   v2 lookup (`adapterPath`) and its `s3` source read;
//! - `exports/v1/<revision>/artifacts/model/model_weights/…`: the same files where LoRAX's legacy
//!   `pbase` lookup looks (`{uuid}/{bestRunID}/artifacts/model/model_weights/`).
//!
//! Written on first request, never at publish: most versions are never served by LoRAX.

use quiver_store::{Store, VersionRecord};

use crate::error::{ApiError, ErrorCode};

/// The files an export holds, in the order they are written (the config last: a prefix whose
/// config is there has its weights too).
pub const EXPORT_FILES: [&str; 2] = ["adapter_model.safetensors", "adapter_config.json"];

/// Which layout an export is written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// `exports/<revision>`.
    Flat,
    /// `exports/v1/<revision>/artifacts/model/model_weights`.
    PbaseLegacy,
}

/// The export's directory, relative to the store's prefix (no trailing `/`).
pub fn export_dir(layout: Layout, revision: &str) -> String {
    match layout {
        Layout::Flat => format!("exports/{revision}"),
        Layout::PbaseLegacy => format!("exports/v1/{revision}/artifacts/model/model_weights"),
    }
}

/// Where an export of an `s3://` store lives: `(bucket, key prefix without trailing /)`.
pub struct ExportLocation {
    pub bucket: String,
    pub key: String,
}

impl ExportLocation {
    /// `s3://bucket/key`.
    pub fn url(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.key)
    }
}

/// Writes the export of `version` in `layout` unless it is already there, and returns where it
/// is. Only `s3://` stores export (LoRAX reads S3 only: a non-`s3://` path is read as a key of
/// its own bucket); a `file://` store answers 501 `not_implemented`, naming the way that works.
pub async fn ensure(
    store: &Store,
    version: &VersionRecord,
    layout: Layout,
) -> Result<ExportLocation, ApiError> {
    let dir = export_dir(layout, &version.revision);
    let Some((bucket, key)) = store.blobs.s3_location(&dir) else {
        return Err(ApiError::coded(
            ErrorCode::NotImplemented,
            "exports for LoRAX need an s3:// store (--store-url); this server stores blobs in a \
             local directory. Use LoRAX's hub source with HF_ENDPOINT instead (docs/serving.md)",
        ));
    };
    let mut files = Vec::with_capacity(EXPORT_FILES.len());
    for name in EXPORT_FILES {
        let f = version
            .files
            .iter()
            .find(|f| f.path == name)
            .ok_or_else(|| {
                ApiError::coded(
                    ErrorCode::Corrupt,
                    format!("version {} has no {name}", version.revision),
                )
            })?;
        let size = u64::try_from(f.size).map_err(|_| {
            ApiError::coded(
                ErrorCode::Corrupt,
                format!("{name} of {} has a negative size", version.revision),
            )
        })?;
        files.push((name, f.sha256.as_str(), size));
    }
    store.blobs.ensure_export(&dir, &files).await?;
    Ok(ExportLocation { bucket, key })
}
