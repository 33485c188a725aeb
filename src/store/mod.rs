//! Where state lives: the memory-mapped segment files ([`arena`], laid out by [`layout`]), the
//! catalog of tiers and scopes ([`catalog_file`]), and the data directory that holds them
//! ([`datadir`]); and the shared Redis store for several nodes ([`redis`]).

pub mod arena;
pub mod catalog_file;
pub mod datadir;
pub mod layout;
pub mod redis;

use std::path::PathBuf;

/// A fault in the data directory. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
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

impl StoreError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        StoreError::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn corrupt(path: impl Into<PathBuf>, detail: impl Into<String>) -> Self {
        StoreError::Corrupt {
            path: path.into(),
            detail: detail.into(),
        }
    }
}
