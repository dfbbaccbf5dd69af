//! virt-rbd-backup: consistent, sparse, parallel backups of libvirt/QEMU domains whose disks
//! live in Ceph RBD.
//!
//! Layers (dependencies point inward): `engine` orchestrates and uses `ceph` (librados/librbd),
//! `libvirt` (discovery, secrets, freeze), `repo` (the on-disk repository) and `plan` (pure
//! decisions). `python` is the PyO3 face and the only module that knows Python exists.

pub mod buffer;
pub mod ceph;
pub mod engine;
pub mod error;
pub mod libvirt;
pub mod plan;
pub mod repo;
pub mod secret;

#[cfg(feature = "python")]
mod python;

pub use engine::{
    list_backups, list_domains, run_backup, BackupOptions, BackupReport, CancelToken,
};
pub use error::{Error, Result};
