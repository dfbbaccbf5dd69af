//! Read-only views: the domains a backup would touch, and the backups in a repository.

use serde::Serialize;

use crate::error::Error;
use crate::libvirt::{HypervisorConnection, RbdDiskSpec};
use crate::repo::Repository;

use super::discovery::discover_domains;
pub use super::discovery::SkippedDisk;
use super::report::Consistency;

/// A domain as discovery sees it.
#[derive(Debug, Clone, Serialize)]
pub struct DomainListing {
    /// Domain name.
    pub name: String,
    /// Domain UUID.
    pub uuid: String,
    /// Running or not.
    pub active: bool,
    /// RBD disks that would be backed up.
    pub rbd_disks: Vec<RbdDiskSpec>,
    /// Disks that would be skipped.
    pub skipped_disks: Vec<SkippedDisk>,
    /// Why the domain cannot be backed up, if it cannot (for example malformed XML).
    pub error: Option<String>,
}

/// Lists the domains and what a backup would do with their disks.
pub fn list_domains(connect: &str, selection: &[String]) -> Result<Vec<DomainListing>, Error> {
    let libvirt = HypervisorConnection::open(connect)?;
    let mut listings = Vec::new();
    for found in discover_domains(&libvirt, selection)? {
        let mut listing = DomainListing {
            name: found.name,
            uuid: found.uuid,
            active: found.active,
            rbd_disks: Vec::new(),
            skipped_disks: Vec::new(),
            error: None,
        };
        match found.disks {
            Ok(disks) => {
                listing.rbd_disks = disks.rbd;
                listing.skipped_disks = disks.skipped;
            }
            Err(e) => listing.error = Some(e.to_string()),
        }
        listings.push(listing);
    }
    Ok(listings)
}

/// One disk of a listed backup.
#[derive(Debug, Clone, Serialize)]
pub struct BackupDiskListing {
    /// Guest device.
    pub target: String,
    /// `pool/image`.
    pub image: String,
    /// Image size.
    pub size: u64,
    /// Data bytes stored.
    pub bytes_written: u64,
    /// The raw image file.
    pub file: String,
    /// Content checksum.
    pub checksum: String,
    /// `full` or `incremental`.
    pub kind: crate::repo::BackupKind,
    /// Place in its chain: 0 for a full, parent's + 1 for an incremental.
    pub chain_position: u32,
}

/// A backup in the repository.
#[derive(Debug, Clone, Serialize)]
pub struct BackupListing {
    /// Domain name at backup time.
    pub domain: String,
    /// Domain UUID.
    pub uuid: String,
    /// Backup id.
    pub backup_id: String,
    /// `full`.
    pub kind: String,
    /// The backup's folder.
    pub path: String,
    /// When it completed, Unix seconds.
    pub completed_at: f64,
    /// Consistency of its snapshots.
    pub consistency: Option<Consistency>,
    /// Disks.
    pub disks: Vec<BackupDiskListing>,
    /// Why the backup cannot be read, if it cannot.
    pub error: Option<String>,
    /// The backup an incremental builds on.
    pub parent: Option<String>,
    /// Its place in the domain's history (manifest version 2 on): the order of backups,
    /// whatever their ids say after a clock step.
    pub sequence: Option<u64>,
}

/// `pool/image` or `pool/namespace/image`, as listings show an image.
pub(super) fn image_spec(pool: &str, namespace: Option<&str>, image: &str) -> String {
    match namespace {
        Some(ns) => format!("{pool}/{ns}/{image}"),
        None => format!("{pool}/{image}"),
    }
}

/// Lists the complete backups in a repository, per domain, oldest first (by sequence), then
/// the folders prune quarantined.
pub fn list_backups(
    repo: &std::path::Path,
    domain: Option<&str>,
) -> Result<Vec<BackupListing>, Error> {
    let repo = Repository::open(repo)?;
    let mut listings = Vec::new();
    for uuid in repo.domain_uuids()? {
        // The domain's name in its manifests, so `list NAME` also shows its quarantined folders.
        let mut named: Option<String> = None;
        for (path, manifest) in repo.backups_of(&uuid)? {
            let path_text = path.display().to_string();
            let listing = match manifest {
                Ok(m) => BackupListing {
                    domain: m.domain.name.clone(),
                    uuid: m.domain.uuid.clone(),
                    backup_id: m.backup_id.clone(),
                    kind: serde_json::to_value(m.kind)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_default(),
                    path: path_text,
                    completed_at: m.completed_at,
                    consistency: Some(m.consistency),
                    disks: m
                        .disks
                        .iter()
                        .map(|d| BackupDiskListing {
                            target: d.target.clone(),
                            image: image_spec(&d.pool, d.namespace.as_deref(), &d.image),
                            size: d.size,
                            bytes_written: d.bytes_written,
                            file: d.file.clone(),
                            checksum: d.checksum.clone(),
                            kind: d.kind,
                            chain_position: d.chain_position,
                        })
                        .collect(),
                    error: None,
                    parent: m.parent.clone(),
                    sequence: m.sequence,
                },
                Err(e) => BackupListing {
                    domain: String::new(),
                    uuid: uuid.clone(),
                    backup_id: path
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                    kind: String::new(),
                    path: path_text,
                    completed_at: 0.0,
                    consistency: None,
                    disks: Vec::new(),
                    error: Some(e.to_string()),
                    parent: None,
                    sequence: None,
                },
            };
            if domain.is_none_or(|d| d == listing.domain || d == listing.uuid) {
                named = named.or(Some(listing.domain.clone()).filter(|n| !n.is_empty()));
                listings.push(listing);
            }
        }
        // Set aside by prune: listed (as unreadable) so they are not forgotten.
        for (id, path) in repo.quarantined_of(&uuid)? {
            if domain.is_none_or(|d| d == uuid || named.as_deref() == Some(d)) {
                listings.push(quarantined_listing(&uuid, &id, &path));
            }
        }
    }
    Ok(listings)
}

/// What `list` (and `verify`) say of a folder prune quarantined.
pub(super) fn quarantine_message(id: &str, path: &std::path::Path) -> String {
    let now = match crate::repo::read_manifest(&path.join(crate::repo::layout::MANIFEST_FILE)) {
        Ok(_) => format!("its manifest reads now: rename it back to {id} to use it"),
        Err(e) => e.to_string(),
    };
    format!(
        "quarantined by prune in {} (its manifest could not be read; kept with its chain, never removed by the tool): {now}",
        path.display()
    )
}

fn quarantined_listing(uuid: &str, id: &str, path: &std::path::Path) -> BackupListing {
    BackupListing {
        domain: String::new(),
        uuid: uuid.to_string(),
        backup_id: id.to_string(),
        kind: String::new(),
        path: path.display().to_string(),
        completed_at: 0.0,
        consistency: None,
        disks: Vec::new(),
        error: Some(quarantine_message(id, path)),
        parent: None,
        sequence: None,
    }
}
