//! What a backup run is asked to do.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// How guest filesystems are frozen around the snapshots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum FreezePolicy {
    /// Freeze running guests; if the agent does not answer, warn and take crash-consistent snapshots.
    #[default]
    Auto,
    /// Freeze running guests; if that fails, the domain fails.
    Required,
    /// Never freeze.
    Off,
}

impl std::str::FromStr for FreezePolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "required" => Ok(Self::Required),
            "off" => Ok(Self::Off),
            other => Err(format!(
                "unknown freeze policy {other:?}: expected auto, required or off"
            )),
        }
    }
}

/// How a domain's disks get one instant when no guest freeze gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ConsistencyPolicy {
    /// An RBD group snapshot when all of a running domain's images are in one group and no
    /// freeze happened; otherwise per-disk snapshots.
    #[default]
    Auto,
    /// As `Auto`, and images in no group are put into a group per domain
    /// (`virt-rbd-backup-<uuid>`); images split over groups fail the domain.
    Group,
    /// Never group snapshots.
    PerDisk,
}

/// Options of a backup run. Deserialized from the Python layer's keyword arguments.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackupOptions {
    /// libvirt URI.
    pub connect: String,
    /// Domains by name or UUID; empty means all.
    pub domains: Vec<String>,
    /// Domains backed up at once.
    pub workers: usize,
    /// Reads in flight per image.
    pub queue_depth: usize,
    /// Freeze policy.
    pub freeze: FreezePolicy,
    /// Only these guest mountpoints are frozen (empty: all).
    pub freeze_mountpoints: Vec<String>,
    /// Consistency across disks without a freeze.
    pub consistency: ConsistencyPolicy,
    /// Backup repository directory.
    pub repo: PathBuf,
    /// `auto` (incremental when a sound base exists) or `full`.
    pub mode: crate::plan::BackupMode,
    /// Start a new chain (a full backup) every N backups of a disk.
    pub full_every: Option<u32>,
    /// Seconds to wait for the guest agent to answer a freeze or thaw.
    pub agent_timeout: u32,
    /// Longest a guest may stay frozen: past it the watchdog thaws it and the domain fails.
    pub freeze_timeout: u32,
    /// Seconds a Ceph monitor or OSD operation may take before the domain fails.
    pub ceph_timeout: u32,
    /// Compress stored files: `zstd` or `zstd:LEVEL` (1-19).
    pub compress: Option<String>,
    /// Total read rate of the run in bytes per second (all disks together), if limited.
    pub bwlimit: Option<u64>,
    /// Send the disks to restic instead of the repository folder.
    pub restic: Option<super::restic::ResticTarget>,
    /// How to open the repository beyond its location: layout, key file, S3 settings
    /// (`repo_access::RepoAccess`).
    pub access: super::repo_access::RepoAccess,
}

impl BackupOptions {
    /// How to open the repository these options name.
    pub fn repo_access(&self) -> Result<super::repo_access::RepoAccess, String> {
        Ok(super::repo_access::RepoAccess {
            zstd_level: self
                .compress
                .as_deref()
                .map(parse_compression)
                .transpose()?,
            ..self.access.clone()
        })
    }

    /// The Ceph timeouts these options ask for.
    pub fn ceph_timeouts(&self) -> crate::ceph::CephTimeouts {
        let t = std::time::Duration::from_secs(u64::from(self.ceph_timeout.max(1)));
        crate::ceph::CephTimeouts { monitor: t, osd: t }
    }
}

impl Default for BackupOptions {
    fn default() -> Self {
        BackupOptions {
            connect: "qemu:///system".into(),
            domains: Vec::new(),
            workers: 4,
            queue_depth: 8,
            freeze: FreezePolicy::Auto,
            freeze_mountpoints: Vec::new(),
            consistency: ConsistencyPolicy::Auto,
            repo: PathBuf::from("/var/lib/virt-rbd-backup"),
            mode: crate::plan::BackupMode::Auto,
            full_every: None,
            agent_timeout: 30,
            freeze_timeout: 60,
            restic: None,
            bwlimit: None,
            compress: None,
            ceph_timeout: 60,
            access: super::repo_access::RepoAccess::default(),
        }
    }
}

/// The zstd level of a `--compress` value (`zstd` is level 3, zstd's own default).
pub fn parse_compression(text: &str) -> Result<i32, String> {
    match text.split_once(':') {
        None if text == "zstd" => Ok(3),
        Some(("zstd", level)) => match level.parse::<i32>() {
            Ok(l) if (1..=19).contains(&l) => Ok(l),
            _ => Err(format!(
                "bad zstd level {level:?} in --compress {text:?}: use 1 to 19"
            )),
        },
        _ => Err(format!(
            "unknown compression {text:?}: use zstd or zstd:LEVEL"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compression_values_parse() {
        assert_eq!(parse_compression("zstd"), Ok(3));
        assert_eq!(parse_compression("zstd:19"), Ok(19));
        assert!(parse_compression("zstd:0").is_err());
        assert!(parse_compression("zstd:x").is_err());
        assert!(parse_compression("gzip").is_err());
    }
}
