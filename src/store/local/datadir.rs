//! The data directory: creating it private, locking it against a second process, allocating
//! and syncing its files.
//!
//! ```text
//! DATA_DIR/              0700 (0750 with group read); flock(2)ed while a quotad has it open
//!   catalog.json         tiers, scope names, scope sets, data directory id (CRC-checked)
//!   keys-00000.qd        key records, 512-byte double-buffered slots
//!   counters-00000.qd    per-key counters, 128-byte double-buffered slots
//!   acks-00000.qd        per key: the acknowledged record sequence (see `acks`)
//! ```

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

/// Permissions of the data directory and its files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Modes {
    /// The directory's mode.
    pub dir: u32,
    /// Every file's mode.
    pub file: u32,
}

impl Modes {
    /// Owner only: directory 0700, files 0600 (the default).
    pub const PRIVATE: Modes = Modes {
        dir: 0o700,
        file: 0o600,
    };
    /// Owner and group may read (a backup group): directory 0750, files 0640.
    pub const GROUP_READ: Modes = Modes {
        dir: 0o750,
        file: 0o640,
    };
}

/// An exclusive lock on a data directory, released on drop (or by the kernel if the process dies).
///
/// The lock is `flock(2)` on the directory itself: no file inside it can be deleted to defeat it.
#[derive(Debug)]
pub struct DirLock {
    _dir: File,
    modes: Modes,
}

impl DirLock {
    /// Creates `dir` if needed with `modes.dir`, sets that mode (and `modes.file` on quotad's
    /// files already there), and takes the lock, failing at once if another process holds it.
    pub fn acquire(dir: &Path, modes: Modes) -> Result<Self, DataDirError> {
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(modes.dir)
                .create(dir)
                .map_err(|e| DataDirError::io(dir, e))?;
        }
        let lock = Self::lock(dir, modes)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(modes.dir))
            .map_err(|e| DataDirError::io(dir, e))?;
        for entry in std::fs::read_dir(dir).map_err(|e| DataDirError::io(dir, e))? {
            let path = entry.map_err(|e| DataDirError::io(dir, e))?.path();
            let ours = path.extension().is_some_and(|x| x == "qd")
                || path.file_name().is_some_and(|n| n == "catalog.json");
            if ours && path.is_file() {
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(modes.file))
                    .map_err(|e| DataDirError::io(&path, e))?;
            }
        }
        Ok(lock)
    }

    /// Takes the lock of an existing `dir` without changing anything (for `inspect`).
    pub fn acquire_existing(dir: &Path) -> Result<Self, DataDirError> {
        Self::lock(dir, Modes::PRIVATE)
    }

    fn lock(dir: &Path, modes: Modes) -> Result<Self, DataDirError> {
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY)
            .open(dir)
            .map_err(|e| DataDirError::io(dir, e))?;
        // SAFETY: flock on a descriptor we own.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                return Err(DataDirError::Locked { path: dir.into() });
            }
            return Err(DataDirError::io(dir, err));
        }
        Ok(DirLock { _dir: file, modes })
    }

    /// The mode of files created in the directory.
    pub fn file_mode(&self) -> u32 {
        self.modes.file
    }
}

/// `fsync`s a directory so a rename or a new file in it is durable.
pub fn sync_dir(dir: &Path) -> Result<(), DataDirError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| DataDirError::io(dir, e))
}

/// Allocates the blocks of `file`'s first `len` bytes (`posix_fallocate`), so that writes
/// through a mapping never meet a full disk (which would be SIGBUS, not an error).
pub fn allocate(file: &File, path: &Path, len: u64) -> Result<(), DataDirError> {
    let len = libc::off_t::try_from(len)
        .map_err(|_| DataDirError::corrupt(path, "file too large to allocate"))?;
    // SAFETY: a descriptor we own; posix_fallocate returns the error instead of setting errno.
    let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len) };
    if rc != 0 {
        return Err(DataDirError::io(
            path,
            std::io::Error::from_raw_os_error(rc),
        ));
    }
    Ok(())
}

/// Creates `path` (which must not exist) with `mode`.
pub fn create_file(path: &Path, mode: u32) -> Result<File, DataDirError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(|e| DataDirError::io(path, e))
}

/// Writes `bytes` to `path` atomically and durably: temp file, fsync, rename, fsync directory.
/// On failure (a full disk) the temp file is removed and `path` is unchanged.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), DataDirError> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let written = (|| {
        let mut f = create_file(&tmp, mode)?;
        f.write_all(bytes).map_err(|e| DataDirError::io(&tmp, e))?;
        f.sync_all().map_err(|e| DataDirError::io(&tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| DataDirError::io(path, e))
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
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
        /// The directory.
        path: PathBuf,
    },
    /// The filesystem is full: the space could not be allocated.
    #[error("{path}: no space left on the device")]
    NoSpace {
        /// The file that needed the space.
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
        if matches!(source.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT)) {
            return DataDirError::NoSpace { path: path.into() };
        }
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
