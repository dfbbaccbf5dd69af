//! Full or incremental for each disk: the repository side (the previous backup, its verified
//! block table) and the cluster side (image id, snapshots, object map state) fed to
//! `plan::plan_disk`. Shared by the backup and by `plan` (dry run), so both decide alike.

use std::path::{Path, PathBuf};

use crate::ceph::RbdImage;
use crate::error::Error;
use crate::libvirt::RbdDiskSpec;
use crate::plan::{plan_disk, BaseCandidate, DiskPlan, ImageState, HASH_BLOCK_SIZE};
use crate::repo::block_table::read_block_table;
use crate::repo::{BackupManifest, DiskRecord, Repository};

use super::options::BackupOptions;

/// The latest complete backup of a domain: its folder and manifest.
pub(super) type PreviousBackup = (PathBuf, BackupManifest);

/// A disk's plan with what the plan needs: the parent's verified block table.
pub(super) struct PreparedDisk {
    pub plan: DiskPlan,
    pub parent: Option<(DiskRecord, Vec<[u8; 32]>)>,
}

/// The complete backups of the domain whose manifests read, oldest first (the last is the
/// previous backup), and messages about unreadable manifests (they are not backups, and are
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

pub(super) fn prepare_disk(
    options: &BackupOptions,
    image: &RbdImage<'_>,
    disk: &RbdDiskSpec,
    previous: Option<&PreviousBackup>,
) -> Result<PreparedDisk, Error> {
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
        let problem = match load_parent(folder, d) {
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
