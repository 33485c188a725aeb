//! The data directory: creating it, locking it against a second process, and syncing it.
//!
//! ```text
//! DATA_DIR/
//!   lock                 flock(2)ed while a quotad has the directory open
//!   catalog.json         tiers, scope names, scope sets, data directory id (CRC-checked)
//!   keys-00000.qd        key records, 512-byte double-buffered slots
//!   counters-00000.qd    per-key counters, 128-byte double-buffered slots
//! ```

use std::fs::{File, OpenOptions};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

/// An exclusive lock on a data directory, released on drop (or by the kernel if the process dies).
#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

impl DirLock {
    /// Creates `dir` if needed and takes its lock, failing at once if another process holds it.
    pub fn acquire(dir: &Path) -> Result<Self, DataDirError> {
        std::fs::create_dir_all(dir).map_err(|e| DataDirError::io(dir, e))?;
        let path = dir.join("lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| DataDirError::io(&path, e))?;
        // SAFETY: flock on a descriptor we own.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                return Err(DataDirError::Locked { path });
            }
            return Err(DataDirError::io(&path, err));
        }
        Ok(DirLock { _file: file })
    }
}

/// `fsync`s a directory so a rename or a new file in it is durable.
pub fn sync_dir(dir: &Path) -> Result<(), DataDirError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| DataDirError::io(dir, e))
}

/// Writes `bytes` to `path` atomically and durably: temp file, fsync, rename, fsync directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), DataDirError> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    {
        let mut f = File::create(&tmp).map_err(|e| DataDirError::io(&tmp, e))?;
        f.write_all(bytes).map_err(|e| DataDirError::io(&tmp, e))?;
        f.sync_all().map_err(|e| DataDirError::io(&tmp, e))?;
    }
    std::fs::rename(&tmp, path).map_err(|e| DataDirError::io(path, e))?;
    if let Some(parent) = path.parent() {
        sync_dir(parent)?;
    }
    Ok(())
}

/// A fault in the data directory. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    /// An I/O error.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A file whose content fails its checks.
    #[error("{path}: corrupt: {detail}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// A file shorter or longer than its header says.
    #[error("{path}: truncated or wrong size: expected {expected} bytes, found {found}")]
    Size {
        /// The file.
        path: PathBuf,
        /// Expected length.
        expected: u64,
        /// Actual length.
        found: u64,
    },
    /// A file written by another format version.
    #[error("{path}: unsupported format version {found} (this quotad reads version {expected})")]
    Version {
        /// The file.
        path: PathBuf,
        /// Version in the file.
        found: u32,
        /// Version understood.
        expected: u32,
    },
    /// Another process holds the data directory.
    #[error("{path}: the data directory is in use by another quotad process")]
    Locked {
        /// The lock file.
        path: PathBuf,
    },
    /// The data directory is full (no more segments).
    #[error("{path}: no room for more keys")]
    Full {
        /// The directory.
        path: PathBuf,
    },
}

impl DataDirError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        DataDirError::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn corrupt(path: impl Into<PathBuf>, detail: impl Into<String>) -> Self {
        DataDirError::Corrupt {
            path: path.into(),
            detail: detail.into(),
        }
    }
}
