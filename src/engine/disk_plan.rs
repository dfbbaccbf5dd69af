//! Full or incremental for each disk: the repository side (the previous backup, its verified
//! block table) and the cluster side (image id, snapshots, object map state) fed to
//! `plan::plan_disk`. Shared by the backup and by `plan` (dry run), so both decide alike.

use std::path::{Path, PathBuf};

use crate::ceph::RbdImage;
use crate::error::Error;
use crate::libvirt::RbdDiskSpec;
use crate::plan::{plan_disk, BaseCandidate, DiskPlan, ImageState, HASH_BLOCK_SIZE};
use crate::repo::block_table::read_block_table;
use crate::repo::{BackupKind, BackupManifest, DiskRecord, Lineage, Repository, SnapshotRecord};

use super::options::BackupOptions;

/// A complete backup of a domain: its folder and manifest.
pub(super) type PreviousBackup = (PathBuf, BackupManifest);

/// A disk's plan with what the plan needs: the parent's verified block table.
pub(super) struct PreparedDisk {
    pub plan: DiskPlan,
    pub parent: Option<(DiskRecord, Vec<[u8; 32]>)>,
}

/// What an incremental of a disk builds on: the plan's base and the parent's record and
/// verified block table.
pub(super) struct IncrementalParent<'a> {
    /// The base snapshot's name: the start of the diff.
    pub base_snapshot: &'a str,
    /// The parent's record of the disk.
    pub record: &'a DiskRecord,
    /// The parent's block table, verified against its manifest.
    pub table: &'a [[u8; 32]],
}

impl PreparedDisk {
    /// The incremental's parent; `None` for a full backup.
    pub fn incremental(&self) -> Option<IncrementalParent<'_>> {
        match (&self.plan, &self.parent) {
            (DiskPlan::Incremental { base_snapshot, .. }, Some((record, table))) => {
                Some(IncrementalParent {
                    base_snapshot,
                    record,
                    table,
                })
            }
            _ => None,
        }
    }

    /// Full, or what the incremental continues, as the repository records it.
    pub fn lineage(&self) -> Lineage {
        match (&self.plan, &self.parent) {
            (
                DiskPlan::Incremental {
                    parent_backup,
                    base_snapshot,
                    base_snapshot_id,
                    chain_position,
                },
                Some(_),
            ) => Lineage::Incremental {
                parent_backup: parent_backup.clone(),
                base_snapshot: SnapshotRecord {
                    name: base_snapshot.clone(),
                    id: *base_snapshot_id,
                    timestamp: None,
                },
                chain_position: *chain_position,
            },
            _ => Lineage::Full,
        }
    }
}

/// The complete backups of the domain whose manifests read, oldest first by sequence (the last
/// is the previous backup, whatever the clock did), and messages about unreadable manifests (they are not backups, and are
/// skipped).
pub(super) fn readable_backups(
    repo: &Repository,
    uuid: &str,
) -> Result<(Vec<PreviousBackup>, Vec<String>), Error> {
    let mut readable = Vec::new();
    let mut unreadable = Vec::new();
    for (path, manifest) in repo.backups_of(uuid)? {
        match manifest {
            Ok(m) => readable.push((path, m)),
            Err(e) => unreadable.push(format!("ignoring {}: {e}", path.display())),
        }
    }
    Ok((readable, unreadable))
}

/// Checks that the previous backup of a disk can serve as a base and loads its block table.
fn load_parent(folder: &Path, record: &DiskRecord) -> Result<Vec<[u8; 32]>, String> {
    let data = folder.join(&record.file);
    let meta = std::fs::metadata(&data).map_err(|e| format!("{}: {e}", data.display()))?;
    if record.file_size > 0 && meta.len() != record.file_size {
        return Err(format!(
            "{} holds {} bytes, the manifest says {}",
            data.display(),
            meta.len(),
            record.file_size
        ));
    }
    let Some(blocks_file) = &record.blocks_file else {
        return Err("it records no block table".into());
    };
    read_block_table(
        &folder.join(blocks_file),
        &record.checksum,
        record.size.div_ceil(HASH_BLOCK_SIZE),
    )
    .map_err(|e| e.to_string())
}

/// Why the chain that `backups`' last backup ends for disk `target` cannot be restored, if it
/// cannot: an ancestor that is not among the readable backups (quarantined by prune, of a newer
/// version, removed by hand). An incremental on top of such a backup could not be restored
/// either, so the disk is backed up in full instead.
fn chain_problem(backups: &[PreviousBackup], target: &str) -> Option<String> {
    let mut link = backups.last()?;
    // A chain is at most as long as the list: this also ends a loop in tampered manifests.
    for _ in 0..=backups.len() {
        let disk = link.1.disks.iter().find(|d| d.target == target)?;
        if disk.kind != BackupKind::Incremental {
            return None;
        }
        let parent = disk.parent_backup.as_deref().unwrap_or_default();
        match backups.iter().find(|(_, m)| m.backup_id == parent) {
            Some(found) => link = found,
            None => {
                return Some(format!(
                    "its chain needs backup {parent}, which is missing or unreadable (see `virt-rbd-backup list`)"
                ))
            }
        }
    }
    Some("its chain of parents loops".into())
}

/// Plans one disk against the readable backups of its domain, oldest first (`history_order`):
/// the last is the base candidate.
pub(super) fn prepare_disk(
    options: &BackupOptions,
    image: &RbdImage<'_>,
    disk: &RbdDiskSpec,
    backups: &[PreviousBackup],
) -> Result<PreparedDisk, Error> {
    let previous = backups.last();
    let info = image.info()?;
    let state = ImageState {
        image_id: info.id.clone(),
        snapshots: image
            .snapshots()?
            .into_iter()
            .map(|s| (s.name, s.id))
            .collect(),
        object_map_invalid: info.object_map_invalid(),
    };
    let record = previous.and_then(|(folder, m)| {
        m.disks
            .iter()
            .find(|d| {
                d.target == disk.target
                    && d.pool == disk.pool
                    && d.namespace == disk.namespace
                    && d.image == disk.image
            })
            .map(|d| (folder, m, d))
    });
    let mut parent = None;
    let candidate = record.map(|(folder, m, d)| {
        let problem =
            match chain_problem(backups, &d.target).map_or_else(|| load_parent(folder, d), Err) {
                Ok(table) => {
                    parent = Some((d.clone(), table));
                    None
                }
                Err(e) => Some(e),
            };
        BaseCandidate {
            backup_id: m.backup_id.clone(),
            image_id: d.image_id.clone(),
            snapshot_name: d.snapshot.name.clone(),
            snapshot_id: d.snapshot.id,
            chain_position: d.chain_position,
            repository_problem: problem,
        }
    });
    let plan = plan_disk(options.mode, options.full_every, candidate.as_ref(), &state);
    if !matches!(plan, DiskPlan::Incremental { .. }) {
        parent = None;
    }
    Ok(PreparedDisk { plan, parent })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::manifest::tests::sample;

    fn backup(id: &str, parent: Option<&str>) -> PreviousBackup {
        let mut m = sample();
        m.backup_id = id.into();
        m.parent = parent.map(str::to_string);
        if let Some(parent) = parent {
            m.disks[0].kind = BackupKind::Incremental;
            m.disks[0].parent_backup = Some(parent.into());
        }
        (PathBuf::from(id), m)
    }

    #[test]
    fn a_base_whose_chain_goes_through_an_unreadable_backup_is_refused() {
        let full = backup("a", None);
        let i1 = backup("b", Some("a"));
        let i2 = backup("c", Some("b"));
        assert_eq!(
            chain_problem(&[full.clone(), i1.clone(), i2.clone()], "vda"),
            None
        );
        // "b" quarantined: not among the readable backups.
        let problem = chain_problem(&[full.clone(), i2.clone()], "vda").unwrap();
        assert!(problem.contains("needs backup b"), "{problem}");
        assert_eq!(chain_problem(&[full], "vda"), None);
        assert_eq!(chain_problem(&[], "vda"), None);
        let looped = [backup("x", Some("y")), backup("y", Some("x"))];
        assert!(chain_problem(&looped, "vda").unwrap().contains("loops"));
    }
}
