//! Events the engine emits while it works, for the original tool's output lines and progress.

use serde::Serialize;

/// Something an operator may want to see as it happens.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum BackupEvent {
    /// A disk is skipped (`Ignoring non-network disk for domain: NAME`).
    DiskSkipped {
        domain: String,
        uuid: String,
        target: Option<String>,
        reason: crate::libvirt::SkipReason,
    },
    /// A domain's backup starts (`Processing N images for domain UUID`).
    DomainStarted {
        domain: String,
        uuid: String,
        images: usize,
    },
    /// A warning about a domain.
    DomainWarning {
        domain: String,
        uuid: String,
        message: String,
    },
    /// Bytes exported so far for one disk.
    DiskProgress {
        domain: String,
        uuid: String,
        target: String,
        done: u64,
        total: u64,
    },
    /// A domain finished (`Backup successful: ...` / `Backup failed: ...`).
    DomainFinished { report: super::report::DomainReport },
}

/// Receives events; called from worker threads.
pub trait EventSink: Send + Sync {
    /// Handles one event. Must not block for long.
    fn emit(&self, event: &BackupEvent);
}

/// Drops every event.
pub struct NoEvents;

impl EventSink for NoEvents {
    fn emit(&self, _event: &BackupEvent) {}
}
