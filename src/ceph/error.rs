//! Errors of the Ceph layer.
use thiserror::Error;

/// What went wrong talking to Ceph.
#[derive(Debug, Error)]
pub enum CephError {
    /// A librados/librbd call failed.
    #[error("{call} failed for {target}: {message} (errno {errno})")]
    Call { call: &'static str, target: String, errno: i32, message: String },
}
