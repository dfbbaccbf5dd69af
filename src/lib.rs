//! virt-rbd-backup: consistent, sparse, parallel backups of libvirt/QEMU domains whose disks
//! live in Ceph RBD.
//!
//! Layers (dependencies point inward): `engine` orchestrates and uses `ceph` (librados/librbd),
//! `libvirt` (discovery, secrets, freeze), `repo` (the on-disk repository) and `plan` (pure
//! decisions). `python` is the PyO3 face and the only module that knows Python exists.

pub mod block_repo;
pub mod buffer;
pub mod ceph;
pub mod engine;
pub mod error;
pub mod fuse;
pub mod libvirt;
pub mod nbd;
pub mod objstore;
pub mod plan;
pub mod repo;
pub mod secret;

#[cfg(feature = "python")]
mod python;

pub use engine::{
    list_backups, list_domains, run_backup, BackupOptions, BackupReport, CancelToken,
};
pub use error::{Error, Result};

/// Helpers shared by the unit tests.
#[cfg(test)]
pub(crate) mod test_support {
    /// `len` deterministic bytes that differ everywhere and do not compress (xorshift).
    pub(crate) fn noise(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }
}
