//! Orchestration of a backup run.
//!
//! (Module doc with the order of operations is written with the engine.)

pub mod events;
pub mod options;
pub mod report;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

pub use events::{BackupEvent, EventSink, NoEvents};
pub use options::{BackupOptions, FreezePolicy};
pub use report::{BackupReport, Consistency, DiskReport, DomainReport, DomainStatus, FreezeReport};

use crate::error::Error;

/// Asks a running operation to stop; clean-up (thaw, snapshot removal) still happens.
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    /// A token that is not cancelled.
    pub fn new() -> Self {
        Self::default()
    }
    /// Requests cancellation.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    /// Whether cancellation was requested.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Runs a backup. Per-domain failures are in the report; `Err` means the run could not start
/// (bad options, libvirt unreachable, repository unusable).
pub fn run_backup(options: &BackupOptions, events: &dyn EventSink, cancel: &CancelToken) -> Result<BackupReport, Error> {
    let _ = (options, events, cancel);
    todo!("engine")
}

/// A domain as discovery sees it, for `list_domains`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DomainListing {
    /// Domain name.
    pub name: String,
    /// Domain UUID.
    pub uuid: String,
    /// Running or not.
    pub active: bool,
    /// RBD disks that would be backed up.
    pub rbd_disks: Vec<crate::libvirt::RbdDiskSpec>,
    /// Disks that would be skipped: (target, reason).
    pub skipped_disks: Vec<(Option<String>, crate::libvirt::SkipReason)>,
    /// Why the domain cannot be backed up, if it cannot (for example malformed XML).
    pub error: Option<String>,
}

/// Lists the domains and what a backup would do with their disks.
pub fn list_domains(connect: &str, selection: &[String]) -> Result<Vec<DomainListing>, Error> {
    let _ = (connect, selection);
    todo!("engine")
}
