//! The outcome of a run, per domain and disk; serialized as the `--json` report.

use serde::{Deserialize, Serialize};

// Recorded in the manifest too: defined with it (`repo` must not depend on `engine`), and
// re-exported here so the report's names stay where the public API has them.
pub use crate::repo::manifest::{Consistency, FreezeReport};

/// Whether a domain's backup succeeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DomainStatus {
    /// Every RBD disk was backed up and the backup is complete in the repository.
    Succeeded,
    /// Something failed; nothing of this run for this domain counts as a backup.
    Failed,
    /// The domain has no RBD disk, or another client holds its images (see `skip_reason`).
    Skipped,
}

/// One disk's backup.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DiskReport {
    /// Guest device (vda).
    pub target: String,
    /// `pool/image` or `pool/namespace/image`.
    pub image: String,
    /// Image size in bytes.
    pub size: u64,
    /// Full or incremental.
    pub kind: crate::repo::BackupKind,
    /// Bytes read from the cluster.
    pub bytes_read: u64,
    /// Bytes of non-zero data written to the repository.
    pub bytes_written: u64,
    /// The snapshot that was exported.
    pub snapshot: String,
    /// Wall-clock time (Unix seconds) Ceph recorded for the snapshot.
    pub snapshot_timestamp: Option<f64>,
    /// The file in the repository.
    pub file: Option<String>,
    /// Checksum of the content (see the manifest format).
    pub checksum: Option<String>,
    /// Seconds spent exporting.
    pub seconds: f64,
    /// How long creating the snapshot took (ms); the freeze window is mostly this.
    pub snapshot_create_ms: Option<f64>,
}

/// One domain's outcome.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DomainReport {
    /// Domain name.
    pub name: String,
    /// Domain UUID.
    pub uuid: String,
    /// Outcome.
    pub status: DomainStatus,
    /// The first error, for a failed domain.
    pub error: Option<String>,
    /// Why a domain with RBD disks was skipped (another host backs it up or runs it).
    #[serde(default)]
    pub skip_reason: Option<String>,
    /// Warnings (for example a freeze that fell back to crash-consistent).
    pub warnings: Vec<String>,
    /// Backup id, for a succeeded domain.
    pub backup_id: Option<String>,
    /// Full (every disk full) or incremental, for a succeeded domain.
    pub kind: Option<crate::repo::BackupKind>,
    /// The backup's folder, for a succeeded domain.
    pub path: Option<String>,
    /// Consistency of the snapshots, if taken.
    pub consistency: Option<Consistency>,
    /// The freeze.
    pub freeze: FreezeReport,
    /// Disks backed up.
    pub disks: Vec<DiskReport>,
    /// Seconds for the domain.
    pub seconds: f64,
}

/// A whole run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BackupReport {
    /// Report format version.
    pub version: u32,
    /// Start, Unix seconds.
    pub started_at: f64,
    /// End, Unix seconds.
    pub finished_at: f64,
    /// Per domain, in discovery order.
    pub domains: Vec<DomainReport>,
}

impl BackupReport {
    /// Whether any domain failed (exit status 1).
    pub fn any_failed(&self) -> bool {
        self.domains
            .iter()
            .any(|d| d.status == DomainStatus::Failed)
    }
}
