//! Errors of the repository layer.
use std::path::PathBuf;
use thiserror::Error;

/// What went wrong reading or writing the repository.
#[derive(Debug, Error)]
pub enum RepoError {
    /// An I/O error on a path.
    #[error("{action} {path}: {source}")]
    Io { action: &'static str, path: PathBuf, source: std::io::Error },
}
