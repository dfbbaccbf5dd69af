//! Backing up one domain: prepare, freeze, snapshot all disks at once, thaw, export, commit,
//! remove the snapshots. See the order of operations in the `engine` module doc.

use std::collections::HashSet;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use std::sync::Arc;

use crate::ceph::{CephError, PoolContext, RadosCluster, RbdGroup, RbdImage};
use crate::error::Error;
use crate::libvirt::{FreezeGuard, HypervisorConnection, RbdDiskSpec};
use crate::plan::naming::snapshot_domain as snapshot_domain_of;
use crate::plan::DiskPlan;
use crate::plan::{
    backup_id_from_unix, domain_snapshot_name, is_owned_snapshot, is_stale_for_domain,
};
use crate::repo::leaf_table::{BaseLeaves, LeafTable};
use crate::repo::manifest::GroupSnapshotRecord;
use crate::repo::{
    BackupKind, BackupManifest, DiskContent, DiskOrigin, DiskRecord, DiskSink, DiskWriter,
    DomainLock, DomainRecord, Repository, SnapshotRecord, StagedBackup,
};

use super::ceph_session::{cluster_address, ConnectionCache};
use super::cluster_lock::{foreign_watcher, renew_until, ImageLocks, LockOwner};
use super::disk_plan::{prepare_disk, readable_backups, PreparedDisk, PreviousBackup};
use super::events::{BackupEvent, EventSink};
use super::export::{
    export_full, export_full_diff, export_incremental, export_stream, BandwidthLimit,
    ExportProgress, ExportStats, IncrementalBase, ReadPipeline,
};
use super::freeze_ledger::{self, FreezeRecordFile};
use super::group_snapshot::{domain_group, GroupSnapshotGuard};
use super::monitor_quiet::MonitorQuiet;
use super::options::{parse_compression, BackupOptions, ConsistencyPolicy, FreezePolicy};
use super::report::{Consistency, DiskReport, DomainReport, DomainStatus, FreezeReport};
use super::restic::{host_name, ResticSeal, ResticTarget, SEAL_FORMAT, SEAL_VERSION};
use super::snapshot_guard::SnapshotGuard;
use super::stale_snapshots::{StaleSnapshot, StaleSnapshots, StaleTarget};
use super::thaw_guard::{test_pause, ThawWatchdog};
use super::CancelToken;

/// What every domain of a run shares.
pub(super) struct RunContext<'a> {
    /// Turns between freezes and snapshot removals across domains.
    pub quiet: &'a MonitorQuiet,
    /// The run's read rate limit.
    pub limit: Option<&'a BandwidthLimit>,
    pub options: &'a BackupOptions,
    pub libvirt: &'a HypervisorConnection,
    /// The repository; `None` when the target is restic.
    pub repo: Option<RunTarget<'a>>,
    pub ceph: &'a ConnectionCache,
    pub events: &'a dyn EventSink,
    pub cancel: &'a CancelToken,
    /// Old snapshots, removed at the end of the run.
    pub stale: &'a StaleSnapshots,
}

/// The repository a run writes into.
#[derive(Clone, Copy)]
pub(super) enum RunTarget<'a> {
    /// The folder layout.
    Folder(&'a Repository),
    /// The block layout, with the run's repository lock.
    Blocks(
        &'a crate::block_repo::BlockRepository,
        &'a crate::block_repo::lock::RepoLock,
    ),
}

/// A domain with RBD disks to back up.
pub(super) struct DomainJob {
    /// Position of the domain's report in the run's report.
    pub report_index: usize,
    pub name: String,
    pub uuid: String,
    pub xml: String,
    pub disks: Vec<RbdDiskSpec>,
}

/// Current time as Unix seconds.
pub(super) fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The wall clock a backup id is taken from, Unix milliseconds.
///
/// Test hook: `VIRT_RBD_BACKUP_TEST_CLOCK_OFFSET=SECONDS` (signed, e.g. `-3600`) shifts it, so a
/// lab test can show what a clock stepped back does to ids without touching the machine's
/// clock (which other programs share). Read from the environment of the backup process only;
/// it shifts nothing else (snapshot times, `started_at`) and does nothing unless set.
pub(super) fn id_clock_ms() -> i64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let offset_s = std::env::var("VIRT_RBD_BACKUP_TEST_CLOCK_OFFSET")
        .ok()
        .and_then(|v| v.trim().parse::<i64>().ok())
        .unwrap_or(0);
    if offset_s != 0 {
        log::warn!("test hook: backup ids taken {offset_s} s off the wall clock");
    }
    (now.as_millis() as i64).saturating_add(offset_s.saturating_mul(1000))
}

/// The wall-clock time of an `Instant` in the recent past, as Unix seconds.
fn instant_to_unix(at: Instant) -> f64 {
    unix_now() - at.elapsed().as_secs_f64()
}

/// An empty report for a domain.
pub(super) fn new_report(name: &str, uuid: &str, status: DomainStatus) -> DomainReport {
    DomainReport {
        name: name.to_string(),
        uuid: uuid.to_string(),
        status,
        error: None,
        skip_reason: None,
        warnings: Vec::new(),
        backup_id: None,
        kind: None,
        path: None,
        consistency: None,
        freeze: FreezeReport::default(),
        disks: Vec::new(),
        seconds: 0.0,
    }
}

/// Backs up one domain and reports the outcome; never panics the run.
pub(super) fn backup_domain(ctx: &RunContext<'_>, job: &DomainJob) -> DomainReport {
    let started = Instant::now();
    ctx.events.emit(&BackupEvent::DomainStarted {
        domain: job.name.clone(),
        uuid: job.uuid.clone(),
        images: job.disks.len(),
    });
    let mut report = new_report(&job.name, &job.uuid, DomainStatus::Failed);
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        back_up(ctx, job, &mut report)
    }));
    match outcome {
        Ok(Ok(())) => report.status = DomainStatus::Succeeded,
        Ok(Err(Error::Skipped(line))) => {
            log::info!("{line}");
            report.status = DomainStatus::Skipped;
            report.skip_reason = Some(line);
        }
        Ok(Err(e)) => {
            report.status = DomainStatus::Failed;
            report.error = Some(e.to_string());
        }
        Err(_) => {
            report.status = DomainStatus::Failed;
            report.error = Some("internal error (panic) while backing up this domain; see the log above and report a bug".into());
        }
    }
    report.seconds = started.elapsed().as_secs_f64();
    ctx.events.emit(&BackupEvent::DomainFinished {
        report: report.clone(),
    });
    report
}

impl<'a> RunContext<'a> {
    /// Read settings for one disk's export.
    pub(super) fn pipeline(&'a self, progress: &'a dyn ExportProgress) -> ReadPipeline<'a> {
        ReadPipeline {
            queue_depth: self.options.queue_depth,
            limit: self.limit,
            cancel: self.cancel,
            progress,
        }
    }
}

pub(super) fn warn(ctx: &RunContext<'_>, report: &mut DomainReport, message: String) {
    // The event carries the warning to the operator; the log keeps it for debugging only.
    log::info!("domain {}: {message}", report.name);
    ctx.events.emit(&BackupEvent::DomainWarning {
        domain: report.name.clone(),
        uuid: report.uuid.clone(),
        message: message.clone(),
    });
    report.warnings.push(message);
}

pub(super) struct DiskProgress<'a> {
    pub ctx: &'a RunContext<'a>,
    pub job: &'a DomainJob,
    pub target: &'a str,
}

impl ExportProgress for DiskProgress<'_> {
    fn progress(&self, done: u64, total: u64) {
        self.ctx.events.emit(&BackupEvent::DiskProgress {
            domain: self.job.name.clone(),
            uuid: self.job.uuid.clone(),
            target: self.target.to_string(),
            done,
            total,
        });
    }
}

fn back_up(ctx: &RunContext<'_>, job: &DomainJob, report: &mut DomainReport) -> Result<(), Error> {
    match (ctx.repo, &ctx.options.restic) {
        (_, Some(restic)) => back_up_to_restic(ctx, job, report, restic),
        (Some(RunTarget::Folder(repo)), None) => back_up_to_repo(ctx, repo, job, report),
        (Some(RunTarget::Blocks(repo, lock)), None) => {
            super::block_backup::back_up_to_blocks(ctx, repo, lock, job, report)
        }
        (None, None) => Err(Error::NoBackupTarget),
    }
}

/// Streams each disk's snapshot into `restic backup --stdin`, disks of the domain at once;
/// the snapshots are removed afterwards (restic deduplicates; there is no incremental base).
fn back_up_to_restic(
    ctx: &RunContext<'_>,
    job: &DomainJob,
    report: &mut DomainReport,
    restic: &ResticTarget,
) -> Result<(), Error> {
    with_open_images(ctx, job, |clusters, pools, images, cluster_locks| {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let backup_id = backup_id_from_unix(now.as_secs() as i64, now.subsec_millis());
        // Carries the domain, as a repository's snapshots do: an image may be a disk of several
        // domains, and one domain's sweep must not take another's snapshot (`plan::naming`).
        let snap_name = domain_snapshot_name(RESTIC_OWNER, &job.uuid, &backup_id);
        let active = ctx.libvirt.is_active(&job.uuid)?;
        // Dropped at the end of this closure: the snapshots go once restic has everything.
        // Restic keeps no base, so the per-disk path serves it; see the README on consistency.
        let snapshots = snapshot_domain(ctx, job, images, &snap_name, active, None, report)?;
        let create_ms = snapshots.create_ms();
        let host = host_name();
        let results: Vec<Result<DiskReport, Error>> = std::thread::scope(|scope| {
            let handles: Vec<_> = job
                .disks
                .iter()
                .zip(pools)
                .zip(images)
                .zip(&create_ms)
                .map(|(((disk, pool), image), &snapshot_create_ms)| {
                    let snap_name = &snap_name;
                    let host = &host;
                    scope.spawn(move || -> Result<DiskReport, Error> {
                        let snap_image = RbdImage::open_at_snapshot(pool, &disk.image, snap_name)
                            .map_err(|e| snapshot_gone(e, image, snap_name))?;
                        let info = snap_image.info()?;
                        let snap_id = image
                            .snapshot_id(snap_name)
                            .map_err(|e| snapshot_gone(e, image, snap_name))?;
                        let timestamp = image.snapshot_timestamp(snap_id).ok();
                        let tags = vec![
                            "virt-rbd-backup".to_string(),
                            format!("domain={}", job.uuid),
                            format!("disk={}", disk.target),
                            // restic splits tags at commas.
                            format!("name={}", job.name.replace(',', "_")),
                            format!("size={}", info.size),
                        ];
                        let mut upload =
                            restic.start_backup(&format!("{}.img", disk.image), &tags, host)?;
                        let progress = DiskProgress {
                            ctx,
                            job,
                            target: &disk.target,
                        };
                        let stats = export_stream(
                            &snap_image,
                            info.size,
                            info.fast_diff_usable(),
                            upload.input()?,
                            &ctx.pipeline(&progress),
                        )?;
                        // Before restic records its snapshot: dropping the upload aborts it.
                        snapshot_still_there(image, snap_name, snap_id)?;
                        cluster_locks.check_held()?;
                        let summary = upload.finish()?;
                        let restic_snapshot = summary.snapshot_id;
                        // Committed; only a seal makes it a backup (`restic` module doc).
                        if let Some(bytes) = summary.bytes_processed.filter(|&b| b != info.size) {
                            return Err(Error::ResticSizeMismatch {
                                snapshot: restic_snapshot,
                                image: image.spec().to_string(),
                                stored: bytes,
                                size: info.size,
                            });
                        }
                        test_pause("sealing");
                        restic.seal(
                            &ResticSeal {
                                format: SEAL_FORMAT.into(),
                                version: SEAL_VERSION,
                                snapshot: restic_snapshot.clone(),
                                file: format!("{}.img", disk.image),
                                size: info.size,
                                checksum: stats.checksum.clone(),
                                domain_uuid: job.uuid.clone(),
                                domain: job.name.clone(),
                                disk: disk.target.clone(),
                                image: image.spec().to_string(),
                                ceph_snapshot: snap_name.clone(),
                                ceph_snapshot_id: snap_id,
                            },
                            host,
                        )?;
                        Ok(DiskReport {
                            target: disk.target.clone(),
                            image: image.spec().to_string(),
                            size: info.size,
                            kind: BackupKind::Full,
                            bytes_read: stats.bytes_read,
                            bytes_written: info.size,
                            snapshot: snap_name.clone(),
                            snapshot_timestamp: timestamp,
                            file: Some(format!("restic:{restic_snapshot}")),
                            checksum: Some(stats.checksum),
                            seconds: stats.elapsed.as_secs_f64(),
                            snapshot_create_ms: Some(snapshot_create_ms),
                        })
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(Error::Restic(
                            "internal error (panic) while streaming to restic".into(),
                        ))
                    })
                })
                .collect()
        });
        // The snapshots go now (restic keeps no base); removals make the monitor commit, so
        // they wait until no other domain of the run is freezing.
        let permit = ctx.quiet.removal_permit();
        drop(snapshots);
        drop(permit);
        // Restic snapshots left on these disks by killed runs go at the end of the run, with
        // every domain's stale snapshots; whatever became of this run's uploads.
        // Restic keeps no base: every other restic snapshot of this domain is a leftover, and so
        // is one without a domain in its name (an older version's).
        let is_stale = |name: &str| {
            name != snap_name
                && is_owned_snapshot(name, RESTIC_OWNER)
                && snapshot_domain_of(name, RESTIC_OWNER)
                    .is_none_or(|uuid| uuid.eq_ignore_ascii_case(&job.uuid))
        };
        match owned_leftovers(clusters, job, images, &is_stale) {
            Ok(stale) => ctx.stale.add(stale),
            Err(e) => warn(
                ctx,
                report,
                format!("could not list the disks' snapshots to remove those of killed runs: {e}; the next run tries again"),
            ),
        }
        for result in results {
            report.disks.push(result?);
        }
        report.backup_id = Some(backup_id);
        report.kind = Some(BackupKind::Full);
        Ok(())
    })
}

/// Backs up one domain into the repository: the steps of the engine's order of operations
/// (module doc of `engine`), each a function below.
fn back_up_to_repo(
    ctx: &RunContext<'_>,
    repo: &Repository,
    job: &DomainJob,
    report: &mut DomainReport,
) -> Result<(), Error> {
    let started_at = unix_now();
    let lock = repo.lock_domain(&job.uuid, &job.name)?;
    with_open_images(ctx, job, |clusters, pools, images, cluster_locks| {
        remove_dead_partials(ctx, &lock, report)?;
        let backups = read_history(ctx, repo, job, report)?;
        let prepared = plan_disks(ctx, job, images, &backups, report)?;
        if ctx.cancel.is_cancelled() {
            return Err(Error::Cancelled);
        }
        // Under the domain's lock: the order of backups is the sequence, whatever the clock
        // did since the last one; the id is the clock's, made unique (see `repo::manifest`).
        let sequence = lock.next_sequence()?;
        let backup_id = lock.free_backup_id(id_clock_ms());
        let snap_name = domain_snapshot_name(repo.id(), &job.uuid, &backup_id);
        let staged = lock.stage_backup(&backup_id)?;
        let group = find_group(ctx, job, pools, images, report)?;
        let active = ctx.libvirt.is_active(&job.uuid)?;
        // With `per-disk` the group is only known so that its old snapshots are removed.
        let snapshot_group = group
            .as_ref()
            .filter(|_| ctx.options.consistency != ConsistencyPolicy::PerDisk);
        let snapshots =
            snapshot_domain(ctx, job, images, &snap_name, active, snapshot_group, report)?;
        let records = export_disks(
            ctx, job, pools, images, &prepared, &snapshots, &snap_name, &staged, &backups, report,
        )?;
        let previous = backups.last().map(|(_, m)| m.backup_id.as_str());
        let manifest = domain_manifest(
            job, &backup_id, previous, sequence, started_at, report, records,
        );
        test_pause("committing");
        // Not committed if another host may have taken the images meanwhile.
        cluster_locks.check_held()?;
        let path = staged.commit(&manifest)?;
        report.backup_id = Some(backup_id);
        report.kind = Some(manifest.kind);
        report.path = Some(path.display().to_string());
        // The new snapshots stay as the base of the next incremental. This runs after the
        // thaw: a removal makes the monitor commit and would lengthen a freeze.
        snapshots.keep();
        let stale = stale_after_commit(
            repo,
            job,
            clusters,
            pools,
            images,
            group.as_ref(),
            &snap_name,
            &backups,
        )?;
        ctx.stale.add(stale);
        Ok(())
    })
}

/// Removes the `.partial-*` folders of dead runs, with a warning each. Only now, holding the
/// cluster lock of every image of the domain: on a folder shared by several hosts (NFS) the
/// folder lock may not exclude another host, but no run elsewhere can be writing a backup of
/// these images while we hold their locks, so a `.partial-*` here is a dead run's.
fn remove_dead_partials(
    ctx: &RunContext<'_>,
    lock: &DomainLock,
    report: &mut DomainReport,
) -> Result<(), Error> {
    for leftover in lock.remove_partial_backups()? {
        warn(
            ctx,
            report,
            format!("removed {} left by an interrupted run", leftover.display()),
        );
    }
    Ok(())
}

/// The domain's readable backups, oldest first (the last is the previous backup); a warning
/// for each one whose manifest cannot be read (it is not a backup, and is skipped).
fn read_history(
    ctx: &RunContext<'_>,
    repo: &Repository,
    job: &DomainJob,
    report: &mut DomainReport,
) -> Result<Vec<PreviousBackup>, Error> {
    let (backups, unreadable) = readable_backups(repo, &job.uuid)?;
    for message in unreadable {
        warn(ctx, report, message);
    }
    Ok(backups)
}

/// Full or incremental for each disk (`disk_plan`), with a warning for each disk that falls
/// back to a full backup.
fn plan_disks(
    ctx: &RunContext<'_>,
    job: &DomainJob,
    images: &[RbdImage<'_>],
    backups: &[PreviousBackup],
    report: &mut DomainReport,
) -> Result<Vec<PreparedDisk>, Error> {
    let mut prepared = Vec::with_capacity(images.len());
    for (image, disk) in images.iter().zip(&job.disks) {
        let disk_plan = prepare_disk(ctx.options, image, disk, backups)?;
        if let DiskPlan::Full {
            reason: Some(reason),
        } = &disk_plan.plan
        {
            let message = format!(
                "{}: full backup instead of incremental: {reason}",
                disk.target
            );
            warn(ctx, report, message);
        }
        prepared.push(disk_plan);
    }
    Ok(prepared)
}

/// The RBD group of the domain's images, if they share one (`group_snapshot::domain_group`,
/// per `--consistency`), with its warning if any.
pub(super) fn find_group<'p>(
    ctx: &RunContext<'_>,
    job: &DomainJob,
    pools: &'p [PoolContext<'p>],
    images: &[RbdImage<'_>],
    report: &mut DomainReport,
) -> Result<Option<RbdGroup<'p>>, Error> {
    let image_names: Vec<&str> = job.disks.iter().map(|d| d.image.as_str()).collect();
    let (group, warning) = domain_group(
        ctx.options.consistency,
        &job.uuid,
        pools,
        images,
        &image_names,
    )?;
    if let Some(message) = warning {
        warn(ctx, report, message);
    }
    Ok(group)
}

/// Exports every disk of the domain into the staged backup, one after the other; returns
/// their manifest records.
#[allow(clippy::too_many_arguments)]
fn export_disks(
    ctx: &RunContext<'_>,
    job: &DomainJob,
    pools: &[PoolContext<'_>],
    images: &[RbdImage<'_>],
    prepared: &[PreparedDisk],
    snapshots: &DomainSnapshots<'_, '_>,
    snap_name: &str,
    staged: &StagedBackup<'_>,
    backups: &[PreviousBackup],
    report: &mut DomainReport,
) -> Result<Vec<DiskRecord>, Error> {
    let compress = ctx
        .options
        .compress
        .as_deref()
        .map(parse_compression)
        .transpose()
        .map_err(Error::Usage)?;
    let create_ms = snapshots.create_ms();
    let mut records = Vec::with_capacity(job.disks.len());
    for (index, disk) in job.disks.iter().enumerate() {
        // A group snapshot's member is read; the marker of the same name is the next base.
        let group_snapshot = snapshots
            .group_member(index)
            .map(|(group, id)| GroupSnapshotRecord {
                pool: group.pool().describe(),
                group: group.name().to_string(),
                name: snap_name.to_string(),
                id,
            });
        let source = DiskSource {
            disk,
            pool: &pools[index],
            image: &images[index],
            prepared: &prepared[index],
            snap_name,
            group_snapshot,
            snapshot_create_ms: create_ms[index],
        };
        records.push(back_up_disk(
            ctx, job, &source, staged, backups, compress, report,
        )?);
    }
    Ok(records)
}

/// What one disk's export reads from.
struct DiskSource<'a, 'i> {
    disk: &'a RbdDiskSpec,
    pool: &'a PoolContext<'i>,
    /// The image, open at its head.
    image: &'a RbdImage<'i>,
    prepared: &'a PreparedDisk,
    snap_name: &'a str,
    /// The group snapshot member to read instead of `snap_name`, for group consistency.
    group_snapshot: Option<GroupSnapshotRecord>,
    snapshot_create_ms: f64,
}

/// Exports one disk: opens the snapshot that fixed its content, exports it into a disk writer
/// of the staged backup, checks the snapshot is still the one we created, and hands the
/// content to the writer, which returns the disk's manifest record. Reports the disk.
fn back_up_disk(
    ctx: &RunContext<'_>,
    job: &DomainJob,
    source: &DiskSource<'_, '_>,
    staged: &StagedBackup<'_>,
    backups: &[PreviousBackup],
    compress: Option<i32>,
    report: &mut DomainReport,
) -> Result<DiskRecord, Error> {
    let (image, snap_name) = (source.image, source.snap_name);
    let snap_image = match &source.group_snapshot {
        Some(g) => RbdImage::open_at_snapshot_id(source.pool, &source.disk.image, g.id),
        None => RbdImage::open_at_snapshot(source.pool, &source.disk.image, snap_name),
    }
    .map_err(|e| snapshot_gone(e, image, snap_name))?;
    let info = snap_image.info()?;
    let snap_id = image
        .snapshot_id(snap_name)
        .map_err(|e| snapshot_gone(e, image, snap_name))?;
    let timestamp = image.snapshot_timestamp(snap_id).ok();
    let origin = DiskOrigin {
        target: source.disk.target.clone(),
        pool: source.disk.pool.clone(),
        namespace: source.disk.namespace.clone(),
        image: source.disk.image.clone(),
        image_id: info.id.clone(),
        size: info.size,
        object_size: info.object_size,
        snapshot: SnapshotRecord {
            name: snap_name.to_string(),
            id: snap_id,
            timestamp,
        },
        lineage: source.prepared.lineage(),
        group_snapshot: source.group_snapshot.clone(),
    };
    let mut writer = staged.disk_writer(origin, compress)?;
    let progress = DiskProgress {
        ctx,
        job,
        target: &source.disk.target,
    };
    let export = SnapshotExport {
        image: &snap_image,
        snap_name,
        size: info.size,
        use_object_map: info.fast_diff_usable(),
        pipeline: ctx.pipeline(&progress),
    };
    let parent = source.prepared.incremental();
    let leaves = match &parent {
        Some(_) => base_leaves(backups, &source.disk.target),
        None => BaseLeaves::none(),
    };
    let base = parent.map(|parent| IncrementalBase {
        snapshot: parent.base_snapshot,
        size: parent.record.size,
        block_table: parent.table,
        leaves: &leaves,
    });
    let stats = export.run(base.as_ref(), &mut writer)?;
    snapshot_still_there(image, snap_name, snap_id)?;
    if let Some(g) = &source.group_snapshot {
        group_member_still_there(image, g)?;
    }
    let record = writer.finish(DiskContent {
        checksum: stats.checksum.clone(),
        block_table: stats.block_table,
        bytes_read: stats.bytes_read,
    })?;
    report.disks.push(DiskReport {
        target: record.target.clone(),
        image: image.spec().to_string(),
        size: record.size,
        kind: record.kind,
        bytes_read: record.bytes_read,
        bytes_written: record.bytes_written,
        snapshot: snap_name.to_string(),
        snapshot_timestamp: timestamp,
        file: Some(record.file.clone()),
        checksum: Some(stats.checksum),
        seconds: stats.elapsed.as_secs_f64(),
        snapshot_create_ms: Some(source.snapshot_create_ms),
    });
    Ok(record)
}

/// One snapshot's content on its way into a disk writer.
struct SnapshotExport<'a> {
    /// The image open at the snapshot (or group snapshot member) to read.
    image: &'a RbdImage<'a>,
    /// The snapshot's name: the end of a diff stream.
    snap_name: &'a str,
    size: u64,
    use_object_map: bool,
    pipeline: ReadPipeline<'a>,
}

impl SnapshotExport<'_> {
    /// Runs the export the writer's sink takes: a raw image (only ever a full, see
    /// `DiskFormat::for_backup`), or a diff from `base` (an incremental) or from nothing.
    fn run(
        &self,
        base: Option<&IncrementalBase<'_>>,
        writer: &mut DiskWriter<'_>,
    ) -> Result<ExportStats, Error> {
        let (sink, leaves) = writer.sink();
        let (image, size, map) = (self.image, self.size, self.use_object_map);
        match (sink, base) {
            (DiskSink::SparseRaw(raw), _) => {
                export_full(image, size, map, raw, Some(leaves), &self.pipeline)
            }
            (DiskSink::Diff(out), Some(base)) => export_incremental(
                image,
                self.snap_name,
                size,
                base,
                map,
                out,
                Some(leaves),
                &self.pipeline,
            )
            .map(|(stats, _)| stats),
            (DiskSink::Diff(out), None) => export_full_diff(
                image,
                self.snap_name,
                size,
                map,
                out,
                Some(leaves),
                &self.pipeline,
            )
            .map(|(stats, _)| stats),
        }
    }
}

/// The manifest of the domain's backup, from its disks' records and the report so far.
#[allow(clippy::too_many_arguments)]
fn domain_manifest(
    job: &DomainJob,
    backup_id: &str,
    previous: Option<&str>,
    sequence: u64,
    started_at: f64,
    report: &DomainReport,
    disks: Vec<DiskRecord>,
) -> BackupManifest {
    let incremental = disks.iter().any(|d| d.kind == BackupKind::Incremental);
    // An incremental disk builds on the previous backup (`disk_plan`).
    let parent = previous.filter(|_| incremental).map(str::to_string);
    BackupManifest {
        format: crate::repo::manifest::MANIFEST_FORMAT.into(),
        version: crate::repo::manifest::MANIFEST_VERSION,
        backup_id: backup_id.to_string(),
        sequence: Some(sequence),
        kind: if incremental {
            BackupKind::Incremental
        } else {
            BackupKind::Full
        },
        parent,
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
        disks,
    }
}

/// Every other snapshot of this repository on the domain's disks and group, once the backup
/// with `snap_name` is complete: the previous base, leftovers of killed runs. They go at the
/// end of the run, together with every other domain's (`stale_snapshots`). Only this
/// domain's: an image can be a disk of several domains (`plan::naming`).
#[allow(clippy::too_many_arguments)]
fn stale_after_commit(
    repo: &Repository,
    job: &DomainJob,
    clusters: &[Arc<RadosCluster>],
    pools: &[PoolContext<'_>],
    images: &[RbdImage<'_>],
    group: Option<&RbdGroup<'_>>,
    snap_name: &str,
    backups: &[PreviousBackup],
) -> Result<Vec<StaleSnapshot>, Error> {
    let recorded = recorded_snapshots(backups);
    let is_stale =
        |name: &str| is_stale_for_domain(name, repo.id(), &job.uuid, snap_name, &recorded);
    let mut stale = owned_leftovers(clusters, job, images, &is_stale)?;
    stale.extend(stale_group_snapshots(
        job, clusters, pools, group, &is_stale,
    )?);
    Ok(stale)
}

/// The snapshots of the domain's RBD group that `is_stale` picks.
pub(super) fn stale_group_snapshots(
    job: &DomainJob,
    clusters: &[Arc<RadosCluster>],
    pools: &[PoolContext<'_>],
    group: Option<&RbdGroup<'_>>,
    is_stale: &dyn Fn(&str) -> bool,
) -> Result<Vec<StaleSnapshot>, Error> {
    let mut stale = Vec::new();
    if let Some(group) = group {
        let pool_index = pools
            .iter()
            .position(|p| std::ptr::eq(p, group.pool()))
            .unwrap_or(0);
        for snap in group.snapshots()? {
            if is_stale(&snap.name) {
                stale.push(StaleSnapshot {
                    cluster: Arc::clone(&clusters[pool_index]),
                    pool: job.disks[pool_index].pool.clone(),
                    namespace: job.disks[pool_index].namespace.clone(),
                    target: StaleTarget::Group(group.name().to_string()),
                    snapshot: snap.name,
                    domain: job.report_index,
                });
            }
        }
    }
    Ok(stale)
}

/// Owner part of the snapshots of restic targets (`virt-rbd-backup-restic-<uuid>-<id>`).
const RESTIC_OWNER: &str = "restic";

/// The snapshots on the domain's disks that `is_stale` picks: this domain's older ones, and
/// those left by its killed runs.
pub(super) fn owned_leftovers(
    clusters: &[Arc<RadosCluster>],
    job: &DomainJob,
    images: &[RbdImage<'_>],
    is_stale: &dyn Fn(&str) -> bool,
) -> Result<Vec<StaleSnapshot>, Error> {
    let mut stale = Vec::new();
    for ((image, disk), cluster) in images.iter().zip(&job.disks).zip(clusters) {
        for snap in image.snapshots()? {
            if is_stale(&snap.name) {
                stale.push(StaleSnapshot {
                    cluster: Arc::clone(cluster),
                    pool: disk.pool.clone(),
                    namespace: disk.namespace.clone(),
                    target: StaleTarget::Image(disk.image.clone()),
                    snapshot: snap.name,
                    domain: job.report_index,
                });
            }
        }
    }
    Ok(stale)
}

/// The snapshot names (per disk and group) that `backups` (this domain's) record.
fn recorded_snapshots(backups: &[PreviousBackup]) -> HashSet<String> {
    let mut names = HashSet::new();
    for (_, manifest) in backups {
        for disk in &manifest.disks {
            names.insert(disk.snapshot.name.clone());
            if let Some(g) = &disk.group_snapshot {
                names.insert(g.name.clone());
            }
        }
    }
    names
}

/// The leaf tables of the chain that the last of `backups` (oldest first, as read for this
/// run) ends for disk `target`, newest first; walked on the manifests already read. Any
/// problem (a broken chain, a table of an older version or a damaged one) only leaves tables
/// out: the blocks they would have served are then read whole.
fn base_leaves(backups: &[PreviousBackup], target: &str) -> BaseLeaves {
    let mut tables = Vec::new();
    let mut link = backups.last();
    // A chain is at most as long as the list: this also ends a loop in tampered manifests.
    for _ in 0..backups.len() {
        let Some((folder, manifest)) = link else {
            break;
        };
        let Some(disk) = manifest.disks.iter().find(|d| d.target == target) else {
            break;
        };
        if let Some(name) = &disk.leaves_file {
            let blocks = disk.size.div_ceil(crate::plan::HASH_BLOCK_SIZE);
            if let Ok(table) = LeafTable::open(&folder.join(name), blocks) {
                tables.push(table);
            }
        }
        if disk.kind != BackupKind::Incremental {
            break;
        }
        link = disk
            .parent_backup
            .as_ref()
            .and_then(|id| backups.iter().find(|(_, m)| &m.backup_id == id));
    }
    BaseLeaves::new(tables)
}

/// `SnapshotRemoved` when `error` says our snapshot `snap_name` of `image` does not exist
/// (someone removed it after we created it), else `error` as it is.
pub(super) fn snapshot_gone(error: CephError, image: &RbdImage<'_>, snap_name: &str) -> Error {
    if error.errno() == Some(-libc::ENOENT) {
        Error::SnapshotRemoved {
            image: image.spec().to_string(),
            snapshot: snap_name.to_string(),
        }
    } else {
        error.into()
    }
}

/// Checks, once a disk's export read everything, that its snapshot still exists as the one we
/// created (same id). librbd and the OSDs do not fail every read at a snapshot removed
/// meanwhile: reads may return data of its trimmed clones or the head, and the export would
/// look fine. A removal after this check does not matter: every byte was read before it.
pub(super) fn snapshot_still_there(
    image: &RbdImage<'_>,
    snap_name: &str,
    snap_id: u64,
) -> Result<(), Error> {
    match image.snapshot_id(snap_name) {
        Ok(id) if id == snap_id => Ok(()),
        Ok(_) => Err(Error::SnapshotRemoved {
            image: image.spec().to_string(),
            snapshot: snap_name.to_string(),
        }),
        Err(e) => Err(snapshot_gone(e, image, snap_name)),
    }
}

/// As `snapshot_still_there`, for the group snapshot member a group-consistent export read.
pub(super) fn group_member_still_there(
    image: &RbdImage<'_>,
    g: &GroupSnapshotRecord,
) -> Result<(), Error> {
    match image.group_snapshot_id(&g.group, &g.name)? {
        Some(id) if id == g.id => Ok(()),
        _ => Err(Error::SnapshotRemoved {
            image: image.spec().to_string(),
            snapshot: format!(
                "{} (member of group snapshot {}/{}@{})",
                g.name, g.pool, g.group, g.name
            ),
        }),
    }
}

/// Connects, opens every pool and image of the domain, takes the cluster lock of every image
/// (`cluster_lock`) and hands them to `f`, renewing the locks while it runs and releasing them
/// after. Everything that can fail or talk to the monitors happens here, before any freeze.
/// `Error::Skipped` when another client holds an image's lock, or when the domain is shut off
/// here but a client elsewhere has one of its images open for writing (it runs on another host).
pub(super) fn with_open_images<T>(
    ctx: &RunContext<'_>,
    job: &DomainJob,
    f: impl FnOnce(
        &[Arc<RadosCluster>],
        &[PoolContext<'_>],
        &[RbdImage<'_>],
        &ImageLocks<'_>,
    ) -> Result<T, Error>,
) -> Result<T, Error> {
    let mut clusters = Vec::with_capacity(job.disks.len());
    for disk in &job.disks {
        let key = match &disk.auth {
            Some(auth) => Some(ctx.libvirt.ceph_key(
                &job.name,
                &auth.username,
                auth.secret_uuid.as_deref(),
                auth.secret_usage.as_deref(),
            )?),
            None => None,
        };
        clusters.push(ctx.ceph.get(&cluster_address(disk), key.as_ref())?);
    }
    let pools: Vec<PoolContext<'_>> = clusters
        .iter()
        .zip(&job.disks)
        .map(|(c, d)| c.open_pool(&d.pool, d.namespace.as_deref()))
        .collect::<Result<_, _>>()?;
    let images: Vec<RbdImage<'_>> = pools
        .iter()
        .zip(&job.disks)
        .map(|(p, d)| RbdImage::open(p, &d.image))
        .collect::<Result<_, _>>()?;
    let me = LockOwner::current(&job.uuid);
    let locks = match ImageLocks::acquire(&pools, &images, &me, ctx.cancel)? {
        Ok(locks) => locks,
        Err(busy) => {
            return Err(Error::Skipped(format!(
                "Skipping domain {} ({}): {}",
                job.name, job.uuid, busy.message
            )))
        }
    };
    if !ctx.libvirt.is_active(&job.uuid)? {
        // Shut off here is no proof that nothing writes the disks: the domain may run on
        // another host (live migration, or defined on several). A snapshot of it would be
        // recorded as `shut_off` while the disks change.
        if let Some((image, client)) = foreign_watcher(&images, &pools, &locks.broken_clients)? {
            return Err(Error::Skipped(format!(
                "Skipping domain {} ({}): shut off here but its image {image} is open by another client ({client}): running on another host?",
                job.name, job.uuid
            )));
        }
    }
    let (stop, stopped) = crossbeam_channel::bounded::<()>(1);
    std::thread::scope(|scope| {
        scope.spawn(|| renew_until(&locks, &stopped));
        // Dropped also when `f` panics, so the renewal thread ends and the scope can close.
        let _stop = stop;
        f(&clusters, &pools, &images, &locks)
    })
}

/// The snapshots a backup of one domain took: one per disk, and with group consistency the
/// group snapshot whose members were read (the per-disk ones are then markers taken just
/// before it, the bases of the next incremental). Dropped, they remove themselves.
pub(super) struct DomainSnapshots<'i, 'g> {
    per_disk: Vec<SnapshotGuard<'i>>,
    group: Option<(GroupSnapshotGuard<'g>, &'g RbdGroup<'g>, Vec<u64>)>,
}

impl DomainSnapshots<'_, '_> {
    /// Per disk, the create time of the snapshot that fixed its content.
    pub(super) fn create_ms(&self) -> Vec<f64> {
        match &self.group {
            Some((guard, _, _)) => vec![guard.create_ms(); self.per_disk.len()],
            None => self.per_disk.iter().map(|g| g.create_ms()).collect(),
        }
    }

    /// The group and the member snapshot id of disk `index`, when a group snapshot was taken.
    pub(super) fn group_member(&self, index: usize) -> Option<(&RbdGroup<'_>, u64)> {
        self.group
            .as_ref()
            .and_then(|(_, group, ids)| ids.get(index).map(|&id| (*group, id)))
    }

    /// Keeps every snapshot: the backup is complete.
    pub(super) fn keep(self) {
        for guard in self.per_disk {
            guard.keep();
        }
        if let Some((guard, _, _)) = self.group {
            guard.keep();
        }
    }
}

/// Creates snapshot `snap_name` of every image at once (so the creates share a monitor
/// proposal). The results are returned as they are: inside a freeze, the snapshots of a failed
/// attempt must be removed only after the thaw.
fn create_all<'i>(
    images: &'i [RbdImage<'i>],
    snap_name: &str,
) -> Vec<Result<SnapshotGuard<'i>, CephError>> {
    let results: Vec<Result<SnapshotGuard<'i>, CephError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = images
            .iter()
            .map(|image| scope.spawn(move || SnapshotGuard::create(image, snap_name)))
            .collect();
        handles
            .into_iter()
            .zip(images)
            .map(|(h, image)| {
                h.join().unwrap_or_else(|_| {
                    Err(CephError::Call {
                        call: "rbd_snap_create",
                        target: image.spec().to_string(),
                        errno: -libc::EIO,
                        message: "panicked".into(),
                        hint: "",
                    })
                })
            })
            .collect()
    });
    results
}

/// Takes the group path: per-disk markers first, then the group snapshot (its instant is
/// after every marker, so a diff from a marker covers everything that changed since it).
fn snapshot_group<'i, 'g>(
    images: &'i [RbdImage<'i>],
    group: &'g RbdGroup<'g>,
    snap_name: &str,
) -> Result<DomainSnapshots<'i, 'g>, Error> {
    let per_disk = create_all(images, snap_name)
        .into_iter()
        .collect::<Result<Vec<_>, CephError>>()?;
    let guard = GroupSnapshotGuard::create(group, snap_name)?;
    let ids = images
        .iter()
        .map(|image| group.image_snapshot_id(image, snap_name))
        .collect::<Result<Vec<u64>, CephError>>()?;
    Ok(DomainSnapshots {
        per_disk,
        group: Some((guard, group, ids)),
    })
}

/// Freezes (per policy), creates every disk's snapshot concurrently, thaws. Without a freeze,
/// a running domain whose disks share `group` gets a group snapshot instead. On error every
/// snapshot already made is removed (after the thaw).
pub(super) fn snapshot_domain<'i, 'g>(
    ctx: &RunContext<'_>,
    job: &DomainJob,
    images: &'i [RbdImage<'i>],
    snap_name: &str,
    active: bool,
    group: Option<&'g RbdGroup<'g>>,
    report: &mut DomainReport,
) -> Result<DomainSnapshots<'i, 'g>, Error> {
    let policy = ctx.options.freeze;
    let mut freeze_guard = None;
    let mut watchdog = None;
    let mut freeze_record = None;
    // Held until this function returns, after the thaw: no removal of another domain runs
    // meanwhile, and none ran in the propose interval before.
    let mut _freeze_permit = None;
    let freeze_timeout = Duration::from_secs(u64::from(ctx.options.freeze_timeout));
    // The one instant both freeze-timeout clocks count from: taken before the watchdog starts
    // its own `read -t`, so snapshots that end within the timeout of it ended before the
    // watchdog can have thawed.
    let mut freeze_started = None;
    if active && policy != FreezePolicy::Off {
        _freeze_permit = Some(ctx.quiet.freeze_permit());
        report.freeze.attempted = true;
        // Both started before the freeze: a process spawn or a file write inside the window
        // would lengthen it.
        freeze_started = Some(Instant::now());
        match ThawWatchdog::start(ctx.libvirt.uri(), &job.uuid, freeze_timeout) {
            Ok(w) => watchdog = Some(w),
            Err(e) => warn(ctx, report, format!("cannot start the thaw watchdog (bash, virsh): {e}; if this process is killed while the guest is frozen, thaw it with `virsh domfsthaw {}`", job.name)),
        }
        match FreezeRecordFile::write(&freeze_ledger::runtime_dir(), ctx.libvirt.uri(), &job.uuid, &job.name) {
            Ok(r) => freeze_record = Some(r),
            Err(e) => warn(ctx, report, format!("cannot write the freeze record under {} ({e}); if this run's whole cgroup is killed while the guest is frozen (systemd stop), thaw it with `virsh domfsthaw {}`", freeze_ledger::runtime_dir().display(), job.name)),
        }
        // Stands for a slow freeze call (an agent flushing a busy guest) in the lab tests.
        test_pause("freezing");
        match FreezeGuard::freeze_with_timeout(
            ctx.libvirt,
            &job.uuid,
            &job.name,
            &ctx.options.freeze_mountpoints,
            Duration::from_secs(u64::from(ctx.options.agent_timeout)),
        ) {
            Ok(guard) => freeze_guard = Some(guard),
            Err(e) => {
                // Our freeze did not take: the guest is not frozen by us (a freeze that may
                // still land was thawed by the freeze path). Neither the watchdog nor the
                // record may thaw it later: it may be someone else's freeze.
                if let Some(w) = watchdog.take() {
                    w.disarm();
                }
                if let Some(r) = freeze_record.take() {
                    r.release();
                }
                if policy == FreezePolicy::Required {
                    return Err(e.into());
                }
                warn(
                    ctx,
                    report,
                    format!("{e}; taking crash-consistent snapshots instead"),
                );
            }
        }
    }

    if freeze_guard.is_some() {
        test_pause("frozen");
    }
    if let (None, true, Some(group)) = (&freeze_guard, active, group) {
        let snapshots = snapshot_group(images, group, snap_name)?;
        report.consistency = Some(Consistency::CrashConsistentGroup);
        return Ok(snapshots);
    }
    // Inside the freeze: only the snapshot creates, all at once, so they share a monitor round.
    let results = create_all(images, snap_name);

    let consistency = match freeze_guard {
        Some(guard) => {
            let outcome = guard.outcome();
            let thawed_at = match guard.thaw() {
                Ok(at) => at,
                // A thaw fails when the guest is gone: say that, not "thaw it by hand".
                // Otherwise the watchdog, dropped armed, tries the thaw once more, and the
                // record stays for `thaw-orphans` once this process is gone.
                Err(e) => {
                    if let Ok(false) = ctx.libvirt.is_active(&job.uuid) {
                        if let Some(w) = watchdog.take() {
                            w.disarm();
                        }
                        if let Some(r) = freeze_record.take() {
                            r.release();
                        }
                        return Err(Error::DomainStoppedWhileFrozen {
                            domain: job.name.clone(),
                        });
                    }
                    return Err(e.into());
                }
            };
            if let Some(w) = watchdog.take() {
                w.disarm();
            }
            if let Some(r) = freeze_record.take() {
                r.release();
            }
            let window = thawed_at.duration_since(outcome.frozen_at);
            // Measured on the watchdog's clock, not from when the freeze returned: past the
            // timeout the watchdog may have thawed before the snapshots were taken.
            let since_watchdog = freeze_started.map(|start| thawed_at.duration_since(start));
            if since_watchdog.is_some_and(|elapsed| elapsed >= freeze_timeout) {
                return Err(Error::Inconsistent(format!(
                    "the guest stayed frozen {:.1} s, and {:.1} s passed since the thaw watchdog started, past the freeze timeout of {} s (the freeze or the snapshots took too long: is the agent or the cluster slow?); the watchdog may have thawed before the snapshots, so this backup is discarded",
                    window.as_secs_f64(),
                    since_watchdog.unwrap_or_default().as_secs_f64(),
                    freeze_timeout.as_secs()
                )));
            }
            report.freeze.frozen_filesystems = outcome.frozen_filesystems;
            report.freeze.window_ms = Some(window.as_secs_f64() * 1000.0);
            report.freeze.frozen_at = Some(instant_to_unix(outcome.frozen_at));
            report.freeze.thawed_at = Some(instant_to_unix(thawed_at));
            if outcome.frozen_filesystems == 0 {
                warn(ctx, report, "the guest agent froze no filesystem (none mounted, or all excluded); snapshots are crash-consistent".into());
                Consistency::CrashConsistentPerDisk
            } else {
                Consistency::Frozen
            }
        }
        None if !active => Consistency::ShutOff,
        None => Consistency::CrashConsistentPerDisk,
    };
    report.consistency = Some(consistency);
    Ok(DomainSnapshots {
        per_disk: results.into_iter().collect::<Result<Vec<_>, CephError>>()?,
        group: None,
    })
}
