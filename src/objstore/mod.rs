//! Object stores: where a repository's files live when they do not live in a local folder.
//!
//! Issue 18 puts the repository on S3-compatible storage (Ceph's RADOS Gateway on a second
//! cluster, MinIO, a cloud bucket). This module is the one place that talks to such a store. It
//! offers a small, synchronous [`ObjectStore`] trait (whole objects: put, get, head, list,
//! delete) with two implementations:
//! - [`FolderStore`]: a local or NFS folder, every put written to a temporary file, fsynced and
//!   renamed, so an object is either absent or whole, as on S3;
//! - [`S3Store`]: S3 through the `object_store` crate (Apache Arrow's, used by DataFusion,
//!   Polars and delta-rs: maintained, S3-compatible endpoints, SigV4, retries with backoff,
//!   TLS with extra root certificates). Its async API runs on a runtime owned by the store, so
//!   the engine's worker threads call it like any blocking I/O.
//!
//! The contract both honour (and `conformance` checks for both): a put that returned is
//! durable and visible to get, head and list; a put replaces the whole object atomically;
//! delete of a missing object succeeds; keys are `/`-separated relative paths without empty,
//! `.` or `..` segments.
//!
//! Secrets: S3 keys come from a credentials file or the standard `AWS_*` environment, never
//! from a command line or a repository location, and are held as [`SecretString`]s.
//!
//! [`SecretString`]: crate::secret::SecretString

pub mod block_list;
mod credentials;
mod folder;
mod location;
pub mod object_format;
mod s3;

#[doc(hidden)]
pub mod conformance;

pub use credentials::{parse_credentials, S3Credentials};
pub use folder::FolderStore;
pub use location::{parse_location, RepoLocation};
pub use s3::{S3Options, S3Store};

use std::path::PathBuf;

/// What a listing says of one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// The object's key, relative to the store's root (or prefix).
    pub key: String,
    /// Its size in bytes.
    pub size: u64,
}

/// A store of whole objects under `/`-separated keys (module doc: the contract).
pub trait ObjectStore: Send + Sync {
    /// Where the store is, for messages (`s3://bucket/prefix at https://host`, a folder path).
    fn describe(&self) -> String;
    /// Stores `data` under `key`, replacing any object there; durable when it returns.
    fn put(&self, key: &str, data: Vec<u8>) -> Result<(), StoreError>;
    /// The whole object; [`StoreError::NotFound`] when there is none.
    fn get(&self, key: &str) -> Result<Vec<u8>, StoreError>;
    /// The object's size, or `None` when there is none.
    fn head(&self, key: &str) -> Result<Option<u64>, StoreError>;
    /// Every object whose key starts with `prefix` (a whole-segment prefix, `""` for all),
    /// sorted by key.
    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError>;
    /// Removes the object; removing a missing object is not an error.
    fn delete(&self, key: &str) -> Result<(), StoreError>;
}

/// Errors of object stores, each naming the store and, where there is one, the object.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The repository location cannot be used as written.
    #[error("repository location '{location}': {reason}")]
    BadLocation { location: String, reason: String },
    /// A key the store refuses (empty, absolute, with `.` or `..` segments).
    #[error("object key '{key}': {reason}")]
    BadKey { key: String, reason: String },
    /// The S3 credentials file cannot be used.
    #[error("S3 credentials file {}: {reason}", path.display())]
    Credentials { path: PathBuf, reason: String },
    /// No credentials were given at all.
    #[error("no S3 credentials: give a credentials file (s3_credentials in config.toml, or AWS_SHARED_CREDENTIALS_FILE) or set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the environment")]
    NoCredentials,
    /// The CA file for the endpoint's TLS certificate cannot be used.
    #[error("S3 CA file {}: {reason}", path.display())]
    CaFile { path: PathBuf, reason: String },
    /// The client could not be set up from the options.
    #[error("S3 store {store}: {reason}")]
    Setup { store: String, reason: String },
    /// No object under that key.
    #[error("{store}: object {key} does not exist")]
    NotFound { store: String, key: String },
    /// The store refused the credentials or the operation.
    #[error("{store}: {operation} {key} was refused ({reason}); check the access key, the secret key and the bucket's permissions")]
    Denied {
        store: String,
        operation: &'static str,
        key: String,
        reason: String,
    },
    /// Any other failure of an operation (network, server, file system), after retries.
    #[error("{store}: {operation} {key} failed: {reason}")]
    Io {
        store: String,
        operation: &'static str,
        key: String,
        reason: String,
    },
}

/// Checks a key against the contract (module doc), so that both stores refuse the same keys.
pub fn check_key(key: &str) -> Result<(), StoreError> {
    let bad = |reason: &str| {
        Err(StoreError::BadKey {
            key: key.to_string(),
            reason: reason.to_string(),
        })
    };
    if key.is_empty() {
        return bad("empty");
    }
    if key.starts_with('/') || key.ends_with('/') {
        return bad("starts or ends with '/'");
    }
    if key
        .split('/')
        .any(|s| s.is_empty() || s == "." || s == "..")
    {
        return bad("has an empty, '.' or '..' segment");
    }
    if key.chars().any(|c| c.is_control()) {
        return bad("has a control character");
    }
    Ok(())
}

/// Opens the store a repository location names (`s3://...` or a folder).
pub fn open(location: &RepoLocation, s3: &S3Options) -> Result<Box<dyn ObjectStore>, StoreError> {
    Ok(match location {
        RepoLocation::Folder(path) => Box::new(FolderStore::new(path.clone())),
        RepoLocation::S3 { bucket, prefix } => Box::new(S3Store::open(bucket, prefix, s3)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_the_contract() {
        for good in ["a", "blocks/ab/abcdef", "x.y/z-1_2"] {
            assert!(check_key(good).is_ok(), "{good}");
        }
        for bad in ["", "/a", "a/", "a//b", "a/./b", "../a", "a/..", "a\nb"] {
            assert!(
                matches!(check_key(bad), Err(StoreError::BadKey { .. })),
                "{bad:?}"
            );
        }
    }
}
