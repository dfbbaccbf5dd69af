//! Errors of the repository layer; each names the path involved.

use std::path::PathBuf;

use thiserror::Error;

/// What went wrong reading or writing the repository.
#[derive(Debug, Error)]
pub enum RepoError {
    /// An I/O error on a path.
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// The folder is not a repository and not empty.
    #[error("{path} is not empty and holds no virt-rbd-backup repository (no {marker}); choose an empty or new folder with --repo")]
    NotARepository { path: PathBuf, marker: &'static str },
    /// A manifest or marker that cannot be used.
    #[error("unusable manifest {path}: {message}")]
    BadManifest { path: PathBuf, message: String },
    /// Another run holds the domain's lock.
    #[error("another virt-rbd-backup run is backing up domain {domain} into this repository (lock {path} is held); wait for it to finish")]
    Locked { domain: String, path: PathBuf },
}
