//! Backing up one domain into a block repository (`block_repo`; issue 18).
//!
//! The same order of operations as the folder repository's (`engine` module doc): cluster
//! locks on the images, history, freeze + snapshots + thaw (`snapshot_domain`), export, commit,
//! old snapshots removed at the end of the run. What differs is the export and the commit:
//! - each disk's blocks go to the repository (`export::export_blocks`): every allocated block
//!   for a full, the blocks `rbd_diff_iterate2` says changed since the previous backup's
//!   snapshot for an incremental, the others' ids taken from the previous backup's list;
//! - a block already stored is not uploaded (deduplication across time, disks and domains);
//! - the block lists and tables are written before the manifest, which is written last, and
//!   only while both the cluster locks and the repository lock (`block_repo::lock`, which
//!   keeps a prune from sweeping blocks this backup reuses) are still held.
//!
//! Every backup is complete on its own: there is no chain, so `full_every` does not apply.

use std::collections::HashSet;

use crate::block_repo::lock::RepoLock;
use crate::block_repo::upload::assemble_disk;
use crate::block_repo::{
    BlockDiskRecord, BlockManifest, BlockRepository, StoredDisk, MANIFEST_FORMAT, REPO_VERSION,
};
use crate::ceph::RbdImage;
use crate::error::Error;
use crate::plan::{backup_id_from_unix, domain_snapshot_name, is_stale_for_domain, BackupMode};
use crate::repo::manifest::{
    BackupKind, Consistency, DomainRecord, GroupSnapshotRecord, SnapshotRecord,
};

use super::domain_backup::{
    find_group, group_member_still_there, id_clock_ms, owned_leftovers, snapshot_domain,
    snapshot_gone, snapshot_still_there, stale_group_snapshots, unix_now, warn, with_open_images,
    DiskProgress, DomainJob, RunContext,
};
use super::export::{allocated_blocks, changed_blocks, export_blocks};
use super::options::ConsistencyPolicy;
use super::report::{DiskReport, DomainReport};
use super::thaw_guard::test_pause;

/// Upload threads per disk: enough to hide an object store's latency; each holds at most two
/// blocks (the block and its sealed copy), so memory stays within the RSS bound.
const UPLOAD_WORKERS: usize = 4;

/// A free backup id from the clock: the clock's millisecond, moved on past any id the domain
/// has (a clock stepped back, two runs in one millisecond).
fn free_backup_id(taken: &[&str]) -> String {
    let taken: HashSet<&str> = taken.iter().copied().collect();
    let mut ms = id_clock_ms();
    loop {
        let id = backup_id_from_unix(ms.div_euclid(1000), ms.rem_euclid(1000) as u32);
        if !taken.contains(id.as_str()) {
            return id;
        }
        ms += 1;
    }
}

/// The previous backup's record of disk `target` to build an incremental on, or why not
/// (`None`: no reason worth a warning, a first backup or `--mode full`). `has_snapshot` says
/// whether the image still has a snapshot of that name.
pub(super) fn block_base<'m>(
    mode: BackupMode,
    parent: Option<&'m BlockManifest>,
    target: &str,
    image_id: &str,
    size: u64,
    has_snapshot: impl Fn(&str) -> bool,
) -> Result<&'m BlockDiskRecord, Option<String>> {
    // `full_every` does not apply: every backup of this layout is complete on its own.
    let parent = match (mode, parent) {
        (BackupMode::Full, _) | (_, None) => return Err(None),
        (_, Some(parent)) => parent,
    };
    let Some(record) = parent.disks.iter().find(|d| d.target == target) else {
        return Err(Some(format!(
            "the previous backup {} has no disk {target}",
            parent.backup_id
        )));
    };
    if record.image_id != image_id {
        return Err(Some(format!(
            "the image is not the one of the previous backup {} (id {} then, {image_id} now)",
            parent.backup_id, record.image_id
        )));
    }
    if record.size != size {
        return Err(Some(format!(
            "the disk was resized since the previous backup {} ({} bytes then, {size} now)",
            parent.backup_id, record.size
        )));
    }
    if !has_snapshot(&record.snapshot.name) {
        return Err(Some(format!(
            "the snapshot {} of the previous backup is gone",
            record.snapshot.name
        )));
    }
    Ok(record)
}

/// The previous backup's disk to build on (with its block list), or why not.
fn parent_disk(
    ctx: &RunContext<'_>,
    repo: &BlockRepository,
    parent: Option<&BlockManifest>,
    target: &str,
    image: &RbdImage<'_>,
    image_id: &str,
    size: u64,
) -> Result<Result<StoredDisk, Option<String>>, Error> {
    let has_snapshot = |name: &str| image.snapshot_id(name).is_ok();
    match block_base(
        ctx.options.mode,
        parent,
        target,
        image_id,
        size,
        has_snapshot,
    ) {
        Ok(_) => Ok(Ok(repo.disk(parent.expect("a base has a parent"), target)?)),
        Err(reason) => Ok(Err(reason)),
    }
}

/// Backs up one domain into the block repository; `lock` is the run's repository lock.
pub(super) fn back_up_to_blocks(
    ctx: &RunContext<'_>,
    repo: &BlockRepository,
    lock: &RepoLock,
    job: &DomainJob,
    report: &mut DomainReport,
) -> Result<(), Error> {
    let started_at = unix_now();
    with_open_images(ctx, job, |clusters, pools, images, cluster_locks| {
        // A manifest that does not open is a warning: the incremental builds on the newest
        // readable backup (every backup is complete on its own, so that is sound), and the
        // new id avoids the unreadable ones' names too.
        let (history, unreadable) = repo.readable_backups(&job.uuid)?;
        for (id, error) in &unreadable {
            warn(
                ctx,
                report,
                format!("backup {id} cannot be read and is left alone: {error}"),
            );
        }
        let parent = history.last();
        let sequence = parent.map_or(1, |m| m.sequence + 1);
        let taken: Vec<&str> = history
            .iter()
            .map(|m| m.backup_id.as_str())
            .chain(unreadable.iter().map(|(id, _)| id.as_str()))
            .collect();
        let backup_id = free_backup_id(&taken);
        let repo_id = repo.config().id.clone();
        let snap_name = domain_snapshot_name(&repo_id, &job.uuid, &backup_id);
        if ctx.cancel.is_cancelled() {
            return Err(Error::Cancelled);
        }
        let group = find_group(ctx, job, pools, images, report)?;
        let active = ctx.libvirt.is_active(&job.uuid)?;
        let snapshot_group = group
            .as_ref()
            .filter(|_| ctx.options.consistency != ConsistencyPolicy::PerDisk);
        let snapshots =
            snapshot_domain(ctx, job, images, &snap_name, active, snapshot_group, report)?;
        let create_ms = snapshots.create_ms();
        let mut records = Vec::with_capacity(job.disks.len());
        for (index, disk) in job.disks.iter().enumerate() {
            let image = &images[index];
            let member = snapshots.group_member(index).map(|(_, id)| id);
            let snap_image = match member {
                Some(id) => RbdImage::open_at_snapshot_id(&pools[index], &disk.image, id),
                None => RbdImage::open_at_snapshot(&pools[index], &disk.image, &snap_name),
            }
            .map_err(|e| snapshot_gone(e, image, &snap_name))?;
            let info = snap_image.info()?;
            let snap_id = image
                .snapshot_id(&snap_name)
                .map_err(|e| snapshot_gone(e, image, &snap_name))?;
            let timestamp = image.snapshot_timestamp(snap_id).ok();
            let base = parent_disk(ctx, repo, parent, &disk.target, image, &info.id, info.size)?;
            let base = match base {
                Ok(base) => Some(base),
                Err(reason) => {
                    if let Some(reason) = reason {
                        let message = format!(
                            "{}: full backup instead of incremental: {reason}",
                            disk.target
                        );
                        warn(ctx, report, message);
                    }
                    None
                }
            };
            let use_map = info.fast_diff_usable();
            let blocks = match &base {
                Some(b) => {
                    changed_blocks(&snap_image, &b.record.snapshot.name, info.size, use_map)?
                }
                None => allocated_blocks(&snap_image, info.size, use_map)?,
            };
            let progress = DiskProgress {
                ctx,
                job,
                target: &disk.target,
            };
            let started = std::time::Instant::now();
            let (uploaded, bytes_read) = export_blocks(
                &snap_image,
                info.size,
                &blocks,
                repo,
                UPLOAD_WORKERS,
                &ctx.pipeline(&progress),
            )?;
            snapshot_still_there(image, &snap_name, snap_id)?;
            if let Some((group, id)) = snapshots.group_member(index) {
                let record = GroupSnapshotRecord {
                    pool: group.pool().describe(),
                    group: group.name().to_string(),
                    name: snap_name.clone(),
                    id,
                };
                group_member_still_there(image, &record)?;
            }
            let assembled = assemble_disk(info.size, base.as_ref(), &uploaded)
                .map_err(|e| Error::Usage(format!("disk {}: {e}", disk.target)))?;
            let kind = if base.is_some() {
                BackupKind::Incremental
            } else {
                BackupKind::Full
            };
            let mut record = BlockDiskRecord {
                target: disk.target.clone(),
                pool: disk.pool.clone(),
                namespace: disk.namespace.clone(),
                image: disk.image.clone(),
                image_id: info.id.clone(),
                size: info.size,
                snapshot: SnapshotRecord {
                    name: snap_name.clone(),
                    id: snap_id,
                    timestamp,
                },
                kind,
                parent_backup: base.as_ref().and(parent).map(|p| p.backup_id.clone()),
                base_snapshot: base.as_ref().map(|b| b.record.snapshot.clone()),
                checksum: assembled.checksum.clone(),
                bytes_read,
                blocks: assembled.data_blocks,
                new_blocks: assembled.new_blocks,
                bytes_stored: assembled.bytes_stored,
                block_list_checksum: String::new(),
                block_table_checksum: String::new(),
            };
            repo.put_disk(
                &job.uuid,
                &backup_id,
                &mut record,
                &assembled.blocks,
                &assembled.table,
            )?;
            report.disks.push(DiskReport {
                target: disk.target.clone(),
                image: image.spec().to_string(),
                size: info.size,
                kind,
                bytes_read,
                bytes_written: assembled.bytes_stored,
                snapshot: snap_name.clone(),
                snapshot_timestamp: timestamp,
                file: Some(format!(
                    "backups/{}/{backup_id}/{}.blocklist",
                    job.uuid, disk.target
                )),
                checksum: Some(assembled.checksum),
                seconds: started.elapsed().as_secs_f64(),
                snapshot_create_ms: Some(create_ms[index]),
            });
            records.push(record);
        }
        let kind = if records.iter().any(|d| d.kind == BackupKind::Incremental) {
            BackupKind::Incremental
        } else {
            BackupKind::Full
        };
        let manifest = BlockManifest {
            format: MANIFEST_FORMAT.into(),
            version: REPO_VERSION,
            backup_id: backup_id.clone(),
            sequence,
            kind,
            parent: parent
                .filter(|_| kind == BackupKind::Incremental)
                .map(|p| p.backup_id.clone()),
            tool_version: env!("CARGO_PKG_VERSION").into(),
            domain: DomainRecord {
                name: job.name.clone(),
                uuid: job.uuid.clone(),
                xml: job.xml.clone(),
            },
            started_at,
            completed_at: unix_now(),
            consistency: report
                .consistency
                .unwrap_or(Consistency::CrashConsistentPerDisk),
            freeze: report.freeze.clone(),
            disks: records,
        };
        test_pause("committing");
        cluster_locks.check_held()?;
        lock.check_held()?;
        repo.put_manifest(&manifest)?;
        report.backup_id = Some(backup_id.clone());
        report.kind = Some(kind);
        report.path = Some(format!(
            "{}: backups/{}/{backup_id}.manifest",
            repo.describe(),
            job.uuid
        ));
        snapshots.keep();
        // Every other snapshot of this repository on the domain's disks is stale now: the
        // block layout needs only the newest as the next incremental's base.
        let recorded: HashSet<String> = history
            .iter()
            .flat_map(|m| m.disks.iter().map(|d| d.snapshot.name.clone()))
            .collect();
        let is_stale =
            |name: &str| is_stale_for_domain(name, &repo_id, &job.uuid, &snap_name, &recorded);
        let mut stale = owned_leftovers(clusters, job, images, &is_stale)?;
        stale.extend(stale_group_snapshots(
            job,
            clusters,
            pools,
            group.as_ref(),
            &is_stale,
        )?);
        ctx.stale.add(stale);
        Ok(())
    })
}
