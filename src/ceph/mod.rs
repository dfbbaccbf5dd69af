//! librados/librbd: connecting to a cluster, opening images, snapshots, allocated extents and
//! pipelined reads.
//!
//! All `unsafe` FFI is in `ffi.rs`; `cluster.rs` and `image.rs` are the safe owners (`Drop`
//! shuts down, destroys, closes and waits). Lifetimes encode the C library's rules: a pool
//! context borrows its cluster, an image its pool, a read in flight its image.
//!
//! The `ceph` crate on crates.io was considered for librados: it cannot create a cluster
//! handle without reading a config file (no way to pass `mon_host` and the key from memory
//! before `rados_connect`), and its `Rados` shuts down twice if `disconnect_from_ceph` is
//! called. Eight librados functions are simpler to own here.

pub mod cluster;
pub mod error;
mod ffi;
pub mod group;
pub mod image;
pub mod lock;

pub use cluster::{CephTimeouts, ClusterAddress, PoolContext, RadosCluster};
pub use error::CephError;
pub use group::{GroupSnapshotInfo, RbdGroup};
pub use image::{Extent, ImageInfo, ImageWatcher, PendingRead, RbdImage, SnapshotInfo};
pub use lock::{LockAttempt, Locker};
