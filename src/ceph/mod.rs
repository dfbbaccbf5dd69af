//! librados/librbd: connecting to a cluster, opening images, snapshots, allocated extents,
//! pipelined reads and writes.
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
pub use image::{
    Extent, ImageInfo, ImageWatcher, ImageWriter, PendingRead, RbdImage, SnapshotInfo,
};
pub use lock::{LockAttempt, Locker};

/// The versions of the librbd and librados this process runs with (`major.minor.extra` of
/// `rbd_version` and `rados_version`: the libraries' API versions, e.g. librbd 1.16.0 and
/// librados 3.0.0 in Ceph 16), for `virt-rbd-backup --version` and the build-info metric.
pub fn library_versions() -> (String, String) {
    let (mut a, mut b, mut c) = (0, 0, 0);
    // SAFETY: rbd_version only writes three ints through the pointers, which point to locals.
    unsafe { ffi::rbd_version(&mut a, &mut b, &mut c) };
    let rbd = format!("{a}.{b}.{c}");
    // SAFETY: as above, for rados_version.
    unsafe { ffi::rados_version(&mut a, &mut b, &mut c) };
    (rbd, format!("{a}.{b}.{c}"))
}
