//! Errors of the Ceph layer: which call, on what, the errno, and what the operator can do.

use std::ffi::CString;

use thiserror::Error;

/// What went wrong talking to Ceph.
#[derive(Debug, Error)]
pub enum CephError {
    /// Connecting to the cluster failed.
    #[error("cannot connect to Ceph monitors {monitors} as client.{user}: {message} (errno {errno}){hint}")]
    Connect {
        monitors: String,
        user: String,
        errno: i32,
        message: String,
        hint: &'static str,
    },
    /// Opening a pool failed.
    #[error("cannot open pool {pool:?}: {message} (errno {errno}){hint}")]
    OpenPool {
        pool: String,
        errno: i32,
        message: String,
        hint: &'static str,
    },
    /// Opening an image failed.
    #[error("cannot open image {image}: {message} (errno {errno}){hint}")]
    OpenImage {
        image: String,
        errno: i32,
        message: String,
        hint: &'static str,
    },
    /// Another librados/librbd call failed.
    #[error("{call} failed for {target}: {message} (errno {errno}){hint}")]
    Call {
        call: &'static str,
        target: String,
        errno: i32,
        message: String,
        hint: &'static str,
    },
    /// An asynchronous write or discard failed (`call` names which).
    #[error("{call} of {length} bytes at offset {offset} of {image} failed: {message} (errno {errno}){hint}")]
    Write {
        call: &'static str,
        image: String,
        offset: u64,
        length: u64,
        errno: i32,
        message: String,
        hint: &'static str,
    },
    /// A read returned fewer bytes than asked for.
    #[error("short read from {image} at offset {offset}: asked {wanted} bytes, got {got}")]
    ShortRead {
        image: String,
        offset: u64,
        wanted: usize,
        got: usize,
    },
    /// A name or setting contains a NUL byte and cannot be passed to the C library.
    #[error("{what} {value:?} contains a NUL byte")]
    NulByte { what: &'static str, value: String },
}

impl CephError {
    /// The negative errno of the failed call, if there is one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            CephError::Connect { errno, .. }
            | CephError::OpenPool { errno, .. }
            | CephError::OpenImage { errno, .. }
            | CephError::Call { errno, .. }
            | CephError::Write { errno, .. } => Some(*errno),
            _ => None,
        }
    }
}

/// The text of an errno (`rc` is negative, as librados returns it).
pub(crate) fn errno_message(rc: i32) -> String {
    std::io::Error::from_raw_os_error(rc.abs()).to_string()
}

/// A hint for the operator for common errnos.
pub(crate) fn errno_hint(rc: i32) -> &'static str {
    match -rc {
        libc::EACCES | libc::EPERM => {
            "; check the Ceph user's key and capabilities (`ceph auth get client.USER`)"
        }
        libc::ENOENT => "; it does not exist (deleted or renamed?)",
        libc::ETIMEDOUT => {
            "; the cluster did not answer in time: are the monitors and OSDs up and reachable?"
        }
        libc::ENOSPC => "; the cluster is full",
        libc::EBUSY => "; it is in use",
        _ => "",
    }
}

/// `value` as a C string for librados/librbd; `what` names it in the error if it holds a NUL.
pub(super) fn cstring(what: &'static str, value: &str) -> Result<CString, CephError> {
    CString::new(value).map_err(|_| CephError::NulByte {
        what,
        value: value.to_string(),
    })
}
