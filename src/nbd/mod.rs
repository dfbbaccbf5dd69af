//! A read-only NBD server for any [`ExtentSource`](crate::repo::extent_source::ExtentSource):
//! what `virt-rbd-backup serve` puts a backup's disk behind, so `qemu-img`, `nbdinfo`,
//! `nbdfuse`, `qemu-nbd --connect` or a guest can read it without a restore.
//!
//! `protocol` is pure (bytes in, bytes out: the handshake's options, requests, replies, each
//! tested byte for byte against the layouts of the protocol document); `server` owns the
//! sockets and threads. No maintained Rust crate implements the server side of the
//! protocol with structured replies and block status, hence this module.

pub mod protocol;
pub mod server;

use thiserror::Error;

pub use server::{ListenAddress, NbdServer};

/// What can go wrong serving NBD.
#[derive(Debug, Error)]
pub enum NbdError {
    /// The address to listen on cannot be used.
    #[error("cannot listen on {address}: {source}")]
    Listen {
        /// The address as given.
        address: String,
        /// Why.
        source: std::io::Error,
    },
    /// A `--listen` value that is neither `unix:PATH` nor `HOST:PORT`.
    #[error("bad listen address {0:?}: use unix:PATH or HOST:PORT")]
    BadAddress(String),
    /// A client broke the protocol (its connection is closed; others go on).
    #[error("NBD protocol error: {0}")]
    Protocol(String),
    /// A socket error on one connection.
    #[error("NBD connection: {0}")]
    Io(#[from] std::io::Error),
}
