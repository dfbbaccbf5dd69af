//! Prune of the block layout: retention removes manifests, then mark and sweep removes the
//! blocks no manifest names any more, under a prune lock (`lock`: never while a backup runs).
//!
//! Order matters: manifests go first (with their block lists), blocks after. A prune killed in
//! between leaves unreferenced blocks for the next one, never a manifest without its blocks.
//! A manifest that does not open stops the sweep (its blocks cannot be marked, so deleting
//! anything could destroy a backup): the report names it.

use std::collections::BTreeSet;
use std::time::Duration;

use super::lock::RepoLock;
use super::{BlockManifest, BlockRepoError, BlockRepository};
use crate::objstore::object_format::BlockId;

/// What a sweep did (or, in a dry run, would do).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Blocks referenced by the backups that remain.
    pub blocks_kept: u64,
    /// Unreferenced blocks removed.
    pub blocks_removed: u64,
    /// Their stored bytes.
    pub bytes_removed: u64,
    /// The running backups that kept the sweep from running (nothing was removed then).
    pub held_off_by: Vec<String>,
}

/// Every block the repository's manifests name.
pub fn referenced_blocks(repo: &BlockRepository) -> Result<BTreeSet<BlockId>, BlockRepoError> {
    let mut marked = BTreeSet::new();
    for domain in repo.domains()? {
        for manifest in repo.backups(&domain)? {
            for record in &manifest.disks {
                marked.extend(repo.disk(&manifest, &record.target)?.blocks.referenced());
            }
        }
    }
    Ok(marked)
}

/// Removes `remove` (their manifests, then their disks' objects), then sweeps. Holds a prune
/// lock for all of it; a running backup makes it remove nothing and say so.
pub fn prune(
    repo: &BlockRepository,
    host: &str,
    remove: &[BlockManifest],
    dry_run: bool,
    lease: Duration,
) -> Result<SweepReport, BlockRepoError> {
    let lock = match RepoLock::for_prune(repo, host, lease)? {
        Ok(lock) => lock,
        Err(backups) => {
            return Ok(SweepReport {
                held_off_by: backups,
                ..SweepReport::default()
            })
        }
    };
    if !dry_run {
        for manifest in remove {
            repo.delete_backup(manifest)?;
        }
    }
    // In a dry run the backups to remove are still there: mark as if they were gone.
    let marked = if dry_run {
        referenced_except(repo, remove)?
    } else {
        referenced_blocks(repo)?
    };
    let mut report = SweepReport {
        blocks_kept: marked.len() as u64,
        ..SweepReport::default()
    };
    for object in repo.store().list("blocks")? {
        let name = object.key.rsplit('/').next().unwrap_or_default();
        let id = parse_id(name);
        if id.is_some_and(|id| marked.contains(&id)) {
            continue;
        }
        if !dry_run {
            lock.check_held()?;
            repo.store().delete(&object.key)?;
        }
        report.blocks_removed += 1;
        report.bytes_removed += object.size;
    }
    drop(lock);
    Ok(report)
}

fn referenced_except(
    repo: &BlockRepository,
    remove: &[BlockManifest],
) -> Result<BTreeSet<BlockId>, BlockRepoError> {
    let removed: BTreeSet<(&str, &str)> = remove
        .iter()
        .map(|m| (m.domain.uuid.as_str(), m.backup_id.as_str()))
        .collect();
    let mut marked = BTreeSet::new();
    for domain in repo.domains()? {
        for manifest in repo.backups(&domain)? {
            if removed.contains(&(manifest.domain.uuid.as_str(), manifest.backup_id.as_str())) {
                continue;
            }
            for record in &manifest.disks {
                marked.extend(repo.disk(&manifest, &record.target)?.blocks.referenced());
            }
        }
    }
    Ok(marked)
}

/// A block id from its object name (64 lowercase hex digits); anything else under `blocks/`
/// is not ours and is swept too (a stray upload, a temporary file).
pub fn parse_id(name: &str) -> Option<BlockId> {
    if name.len() != 64 {
        return None;
    }
    let mut id = [0u8; 32];
    for (i, pair) in name.as_bytes().chunks(2).enumerate() {
        let text = std::str::from_utf8(pair).ok()?;
        if text.bytes().any(|b| b.is_ascii_uppercase()) {
            return None;
        }
        id[i] = u8::from_str_radix(text, 16).ok()?;
    }
    Some(BlockId(id))
}
