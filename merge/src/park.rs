//! Finished modules parked on disk until the output is written, so a merge's memory holds the
//! modules being merged, not every result: the merged factors of a 7B-shaped rank-16 adapter are
//! 160 MB, as large as an input. [`crate::engine::merge_parked`] parks each module's factors in
//! one unlinked temporary file as it completes; [`crate::write`] reads them back one tensor at a
//! time (from the page cache, as a rule), through `MergedModule::b` and `MergedModule::a`.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Arc, Mutex};

use crate::error::MergeError;

/// The temporary file modules are parked in; removed from its directory at once, so it
/// disappears with the last handle whatever happens to the process.
pub struct Parking {
    file: File,
    /// The next free offset.
    end: Mutex<u64>,
    /// Where the file was made, for errors.
    dir: std::path::PathBuf,
}

/// Where a parked module's factors are: `b`'s f32 bytes at `offset`, then `a`'s.
#[derive(Clone)]
pub struct Parked {
    parking: Arc<Parking>,
    offset: u64,
}

impl std::fmt::Debug for Parked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Parked({} in {})",
            self.offset,
            self.parking.dir.display()
        )
    }
}

impl Parking {
    /// A parking file in `dir` (the output's parent, so it is on the same disk).
    pub fn in_dir(dir: &Path) -> Result<Arc<Self>, MergeError> {
        let name = format!(
            ".quiver-parked-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        );
        let path = dir.join(name);
        let io = |source| MergeError::Io {
            path: path.clone(),
            source,
        };
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io)?;
        std::fs::remove_file(&path).map_err(io)?;
        Ok(Arc::new(Self {
            file,
            end: Mutex::new(0),
            dir: dir.to_path_buf(),
        }))
    }

    fn io(&self) -> impl FnOnce(std::io::Error) -> MergeError + '_ {
        move |source| MergeError::Io {
            path: self.dir.clone(),
            source,
        }
    }

    /// Writes `b` then `a` (f32) into the file; returns where they are.
    pub fn park(self: &Arc<Self>, b: &[f32], a: &[f32]) -> Result<Parked, MergeError> {
        let bytes = 4 * (b.len() + a.len()) as u64;
        let offset = {
            let mut end = self.end.lock().unwrap_or_else(|p| p.into_inner());
            let at = *end;
            *end += bytes;
            at
        };
        let mut buf = Vec::with_capacity(bytes as usize);
        for x in b.iter().chain(a) {
            buf.extend_from_slice(&x.to_le_bytes());
        }
        self.file.write_all_at(&buf, offset).map_err(self.io())?;
        Ok(Parked {
            parking: self.clone(),
            offset,
        })
    }
}

impl Parked {
    /// `len` f32 values at `skip` values past this module's start.
    pub fn read(&self, skip: usize, len: usize) -> Result<Vec<f32>, MergeError> {
        let mut bytes = vec![0u8; 4 * len];
        self.parking
            .file
            .read_exact_at(&mut bytes, self.offset + 4 * skip as u64)
            .map_err(self.parking.io())?;
        Ok(bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }
}
