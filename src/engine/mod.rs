//! Orchestration of a backup run.
//!
//! # Order of operations (per domain)
//! 1. Take the domain's repository lock (`flock`; dies with the process).
//! 2. Before any freeze: read the Ceph keys from libvirt, connect (connections are cached by
//!    monitors, user and key), open every pool and image, check them. Nothing that can be done
//!    outside the freeze is done inside it. Take the cluster lock of every image
//!    (`cluster_lock`: a RADOS lock with a lease on the image header, renewed until the end):
//!    held by another run (another host, another repository), the domain is skipped with a line
//!    naming the holder. A domain shut off here whose image another client has open for writing
//!    runs elsewhere: skipped too. Only now, under the cluster locks, `.partial-*` folders are
//!    removed (on NFS the folder lock may not exclude another host's run).
//! 3. If the domain runs and the freeze policy allows: wait for the monitor to be quiet
//!    (`monitor_quiet`: no other domain's snapshot removal running or in the last propose
//!    interval), start the out-of-process thaw watchdog and write the freeze record
//!    (`freeze_ledger`: what lets `thaw-orphans` thaw the guest when systemd kills the whole
//!    cgroup, watchdog included), then freeze the guest filesystems (`FreezeGuard`, which thaws
//!    on drop). A freeze that does not take disarms both: it may be someone else's. The freeze
//!    timeout counts from the watchdog's start. Policy `auto` falls back to crash-consistent
//!    snapshots when the agent does not answer; `required` fails the domain.
//! 4. Create every disk's snapshot concurrently (one thread per disk: concurrent creates share
//!    one monitor proposal), then thaw at once. Each snapshot is a `SnapshotGuard` that removes
//!    it on drop, so every later error path cleans up. A running domain that was not frozen
//!    (freeze off, or no agent) and whose disks share an RBD group (`--consistency`) gets
//!    per-disk marker snapshots first and then one group snapshot (`group_snapshot`): its
//!    members are what is read, the markers are the next incremental's bases (librbd diffs
//!    only from snapshots it can name; group members have internal names).
//! 5. After the thaw: export each snapshot (allocated blocks only, `queue_depth` reads in
//!    flight) into a disk writer of the staged backup `.partial-<id>/` (`repo::disk_writer`:
//!    it names, creates and fsyncs the disk's files and builds its manifest record; the engine
//!    only chooses full or incremental and runs the reads), then check the snapshot still
//!    exists with the id it was created with: one removed meanwhile by someone else fails the
//!    domain (reads at a removed snapshot may return other data). A guest that stops after the
//!    snapshots does not matter.
//! 6. Check the cluster locks were never lost (a lease that ran out fails the domain), write
//!    the manifest, fsync, rename the folder into place: only now is it a backup.
//! 7. Keep the new snapshots as the base of the next incremental. Every other snapshot of this
//!    repository on the disks (the previous base, leftovers of killed runs) is collected and
//!    removed at the end of the run, all domains' at once (`stale_snapshots`: concurrent
//!    removals share one monitor proposal, and no domain's snapshot create waits behind another
//!    domain's removal). A failure there is a warning in the domain's report: the backup is
//!    complete. So at any time a repository's only snapshots are the recorded bases of its
//!    complete backups, plus those of a run in progress or killed (the next run removes them).
//!    Snapshots carry the repository's id and the domain's UUID: other repositories' snapshots,
//!    and other domains' on an image they share, are never touched.
//!    (restic targets keep no base: their snapshots are removed when the domain is done,
//!    waiting until no other domain of the run is freezing, `monitor_quiet`; restic snapshots
//!    of killed runs go at the end of the run. A disk's restic snapshot is a backup only once
//!    its seal is written, after restic committed it and the snapshot check passed: `restic`.)
//!
//! Before any domain, the run thaws guests that earlier runs of this host left frozen
//! (`freeze_ledger::thaw_orphans`) and says so in those domains' reports. Which domains and
//! disks a run sees is `discovery::discover_domains`, the same walk `plan` and `list` use.
//!
//! In the code (`domain_backup`), steps 1 to 7 for a repository are `back_up_to_repo`:
//! `with_open_images` (2), `remove_dead_partials`, `read_history` and `plan_disks` (full or
//! incremental, `disk_plan`), `find_group` and `snapshot_domain` (3, 4), `export_disks` and
//! `back_up_disk` (5), `domain_manifest` and `StagedBackup::commit` (6), `stale_after_commit`
//! (7). restic targets take `back_up_to_restic` through the same steps 2 to 4.
//!
//! Export reads a snapshot through `block_io::SnapshotSource` (an `RbdImage` at the snapshot
//! in a run); restore writes through `block_io::ExtentSink` and verify's `--source` check reads
//! through the same source trait, so their logic is unit-tested with the in-memory
//! implementations. Restore, `restore --define` and `verify --source` reach a cluster through
//! `ceph_access::CephAccess`.
//!
//! Domains run on `workers` threads of their own (blocking I/O must not starve a shared pool);
//! a failure in one domain is recorded in its report and the others go on.

mod block_backup;
pub mod block_commands;
pub mod block_io;
mod block_restore;
pub mod ceph_access;
mod ceph_session;
mod cluster_lock;
pub mod compat_session;
mod discovery;
mod disk_plan;
mod domain_backup;
pub mod events;
mod export;
pub mod freeze_ledger;
mod group_snapshot;
pub mod listing;
pub mod live_restore;
mod monitor_quiet;
pub mod options;
pub mod plan_report;
pub mod prune;
pub mod repo_access;
pub mod report;
pub mod restic;
pub mod restore;
pub mod serve;
mod snapshot_guard;
mod stale_snapshots;
mod thaw_guard;
pub mod verify;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

pub use ceph_access::CephAccess;
pub use events::{BackupEvent, EventSink, NoEvents};
pub use listing::{list_backups, list_domains, BackupListing, DomainListing};
pub use options::{BackupOptions, ConsistencyPolicy, FreezePolicy};
pub use plan_report::{plan_backup, BackupPlan, PlannedDisk, PlannedDomain};
pub use prune::{prune, DomainPruneReport, KeptBackup, PruneReport, PruneStatus, RemovedBackup};
pub use report::{BackupReport, Consistency, DiskReport, DomainReport, DomainStatus, FreezeReport};
pub use restore::{
    restore, restore_define, DefineOptions, DefineReport, RestoreOptions, RestoreReport,
    RestoreTarget,
};
pub use verify::{verify, verify_with_source, VerifyProblem, VerifyReport};

use crate::block_repo::lock::RepoLock;
use crate::error::Error;
use crate::libvirt::HypervisorConnection;

use ceph_session::ConnectionCache;
use domain_backup::{backup_domain, new_report, unix_now, DomainJob, RunContext, RunTarget};
use repo_access::AnyRepository;

/// Version of the JSON report.
pub const REPORT_VERSION: u32 = 1;

/// Asks a running operation to stop; clean-up (thaw, snapshot removal) still happens.
#[derive(Debug, Clone, Default)]
pub struct CancelToken {
    flag: Arc<AtomicBool>,
    /// The flags of the tokens this one was made from (`child`): cancelling any of them
    /// cancels this one too.
    parents: Vec<Arc<AtomicBool>>,
}

impl CancelToken {
    /// A token that is not cancelled.
    pub fn new() -> Self {
        Self::default()
    }
    /// Requests cancellation.
    pub fn cancel(&self) {
        self.flag.store(true, Ordering::SeqCst);
    }
    /// Whether cancellation was requested, of this token or of one it was made from.
    pub fn is_cancelled(&self) -> bool {
        self.flag.load(Ordering::SeqCst) || self.parents.iter().any(|p| p.load(Ordering::SeqCst))
    }
    /// A token cancelled with this one, which can also be cancelled on its own (without
    /// cancelling this one): parallel parts of one operation stop together when one fails.
    pub fn child(&self) -> CancelToken {
        let mut parents = self.parents.clone();
        parents.push(self.flag.clone());
        CancelToken {
            flag: Arc::default(),
            parents,
        }
    }
}

/// `Error::OptionOutOfRange` unless `min <= value <= max`.
fn in_range(
    option: &'static str,
    value: u64,
    (min, max): (u64, u64),
    unit: &'static str,
) -> Result<(), Error> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(Error::OptionOutOfRange {
            option,
            value,
            min,
            max,
            unit,
        })
    }
}

fn validate(options: &BackupOptions) -> Result<(), Error> {
    in_range("workers", options.workers as u64, (1, 64), "")?;
    in_range("queue depth", options.queue_depth as u64, (1, 256), "")?;
    let seconds = " seconds";
    in_range(
        "agent timeout",
        u64::from(options.agent_timeout),
        (1, 3600),
        seconds,
    )?;
    in_range(
        "freeze timeout",
        u64::from(options.freeze_timeout),
        (1, 3600),
        seconds,
    )?;
    if options.agent_timeout >= options.freeze_timeout {
        return Err(Error::Usage(format!(
            "the agent timeout ({} s) must be shorter than the freeze timeout ({} s): the freeze \
             timeout counts from before the freeze call, so the thaw watchdog would fire while \
             the freeze may still be waiting for the agent; raise --freeze-timeout or lower \
             --agent-timeout",
            options.agent_timeout, options.freeze_timeout
        )));
    }
    if let Some(c) = &options.compress {
        options::parse_compression(c).map_err(Error::Usage)?;
    }
    if options.bwlimit == Some(0) {
        return Err(Error::Usage("--bwlimit must be positive".into()));
    }
    in_range(
        "the Ceph timeout",
        u64::from(options.ceph_timeout),
        (1, 86400),
        seconds,
    )?;
    if options.full_every == Some(0) {
        return Err(Error::Usage("--full-every must be at least 1".into()));
    }
    if options.repo.as_os_str().is_empty() {
        return Err(Error::Usage(
            "the repository path is empty; give one with --repo".into(),
        ));
    }
    Ok(())
}

/// Thaws guests left frozen by runs of this host that died together with their thaw watchdog
/// (`freeze_ledger`): what `virt-rbd-backup thaw-orphans` runs after systemd stopped the unit.
pub fn thaw_orphans() -> Result<Vec<freeze_ledger::OrphanThaw>, Error> {
    let dir = freeze_ledger::runtime_dir();
    freeze_ledger::thaw_orphans(&dir).map_err(|source| Error::FreezeLedger {
        dir: freeze_ledger::ledger_dir(&dir),
        source,
    })
}

/// Runs [`freeze_ledger::thaw_orphans`] and logs what it did; returns a warning per domain
/// for its report. A ledger that cannot be read costs a warning, not the run.
fn thaw_orphans_before_run() -> std::collections::HashMap<String, String> {
    let outcomes = match thaw_orphans() {
        Ok(outcomes) => outcomes,
        Err(e) => {
            log::warn!("{e}");
            return Default::default();
        }
    };
    let mut warnings = std::collections::HashMap::new();
    for orphan in outcomes {
        let message = orphan.describe();
        log::warn!("{message}");
        warnings.insert(orphan.uuid, message);
    }
    warnings
}

/// Runs a backup. Per-domain failures are in the report; `Err` means the run could not start
/// (bad options, libvirt unreachable, repository unusable, a named domain that does not exist).
pub fn run_backup(
    options: &BackupOptions,
    events: &dyn EventSink,
    cancel: &CancelToken,
) -> Result<BackupReport, Error> {
    validate(options)?;
    let started_at = unix_now();
    let libvirt = HypervisorConnection::open(&options.connect)?;
    let domains = discovery::discover_domains(&libvirt, &options.domains)?;
    // Before any freeze of ours: guests left frozen by a run that died with its watchdog.
    let orphan_warnings = thaw_orphans_before_run();
    // The repository is created only once the run can start: a typo in a domain name must
    // not leave an empty repository behind.
    let repo = match &options.restic {
        Some(restic) => {
            restic.validate()?;
            None
        }
        None => {
            let access = options.repo_access().map_err(Error::Usage)?;
            let location = options.repo.to_string_lossy();
            Some(repo_access::open_repository(&location, &access, true)?)
        }
    };
    // A block repository is locked for the whole run (`block_repo::lock`): a prune must not
    // sweep a block that one of the run's backups found present and reuses.
    let block_lock = match &repo {
        Some(AnyRepository::Blocks(blocks)) => Some(RepoLock::for_backup(
            blocks,
            &restic::host_name(),
            repo_access::LOCK_LEASE,
            repo_access::PRUNE_WAIT,
        )?),
        _ => None,
    };
    let target = match (&repo, &block_lock) {
        (Some(AnyRepository::Folder(folder)), _) => Some(RunTarget::Folder(folder)),
        (Some(AnyRepository::Blocks(blocks)), Some(lock)) => Some(RunTarget::Blocks(blocks, lock)),
        _ => None,
    };

    let mut reports: Vec<Option<DomainReport>> = Vec::with_capacity(domains.len());
    let mut jobs: Vec<(usize, DomainJob)> = Vec::new();
    for (index, found) in domains.into_iter().enumerate() {
        let disks = match found.disks {
            Ok(disks) => disks,
            Err(e) => {
                let mut report = new_report(&found.name, &found.uuid, DomainStatus::Failed);
                report.error = Some(e.to_string());
                events.emit(&BackupEvent::DomainFinished {
                    report: report.clone(),
                });
                reports.push(Some(report));
                continue;
            }
        };
        for skipped in disks.skipped {
            events.emit(&BackupEvent::DiskSkipped {
                domain: found.name.clone(),
                uuid: found.uuid.clone(),
                target: skipped.target,
                reason: skipped.reason,
            });
        }
        if disks.rbd.is_empty() {
            reports.push(Some(new_report(
                &found.name,
                &found.uuid,
                DomainStatus::Skipped,
            )));
        } else {
            reports.push(None);
            jobs.push((
                index,
                DomainJob {
                    report_index: index,
                    name: found.name,
                    uuid: found.uuid,
                    xml: disks.xml,
                    disks: disks.rbd,
                },
            ));
        }
    }

    let ceph = ConnectionCache::new(options.ceph_timeouts());
    let limit = options.bwlimit.map(export::BandwidthLimit::new);
    let quiet = monitor_quiet::MonitorQuiet::new(monitor_quiet::PROPOSE_INTERVAL);
    let stale = stale_snapshots::StaleSnapshots::default();
    let ctx = RunContext {
        quiet: &quiet,
        limit: limit.as_ref(),
        options,
        libvirt: &libvirt,
        repo: target,
        ceph: &ceph,
        events,
        cancel,
        stale: &stale,
    };
    let workers = options.workers.min(jobs.len()).max(1);
    let (sender, receiver) = crossbeam_channel::unbounded();
    for job in jobs {
        // The receiver lives until the end of this function, so sending cannot fail.
        let _ = sender.send(job);
    }
    drop(sender);
    let finished: Mutex<Vec<(usize, DomainReport)>> = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                while let Ok((index, job)) = receiver.recv() {
                    let report = if cancel.is_cancelled() {
                        let mut r = new_report(&job.name, &job.uuid, DomainStatus::Failed);
                        r.error = Some(Error::Cancelled.to_string());
                        r
                    } else {
                        backup_domain(&ctx, &job)
                    };
                    finished
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push((index, report));
                }
            });
        }
    });
    for (index, report) in finished.into_inner().unwrap_or_else(|p| p.into_inner()) {
        reports[index] = Some(report);
    }
    // After every domain: no freeze can be waiting behind these monitor commits any more.
    for (index, message) in stale.remove_all() {
        log::warn!("{message}");
        if let Some(Some(report)) = reports.get_mut(index) {
            report
                .warnings
                .push(format!("backup is complete, but {message}"));
        }
    }
    for report in reports.iter_mut().flatten() {
        if let Some(warning) = orphan_warnings.get(&report.uuid) {
            report.warnings.insert(0, warning.clone());
        }
    }
    Ok(BackupReport {
        version: REPORT_VERSION,
        started_at,
        finished_at: unix_now(),
        domains: reports.into_iter().flatten().collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_token_stops_with_its_parent_and_alone_without_stopping_it() {
        let run = CancelToken::new();
        let disks = run.child();
        let one_disk = disks.child();
        disks.cancel();
        assert!(disks.is_cancelled() && one_disk.is_cancelled());
        assert!(!run.is_cancelled(), "a child's cancel stays below it");

        let run = CancelToken::new();
        let (disks, clone) = (run.child(), run.clone());
        let one_disk = disks.child();
        clone.cancel(); // Ctrl-C: the handler holds a clone of the run's token
        assert!(run.is_cancelled() && disks.is_cancelled() && one_disk.is_cancelled());
    }

    #[test]
    fn out_of_range_options_are_typed_and_say_what_they_always_said() {
        let mut options = BackupOptions {
            workers: 0,
            ..BackupOptions::default()
        };
        let err = validate(&options).unwrap_err();
        assert!(matches!(
            err,
            Error::OptionOutOfRange {
                option: "workers",
                value: 0,
                ..
            }
        ));
        assert_eq!(
            err.to_string(),
            "invalid option: workers must be between 1 and 64, not 0"
        );
        options.workers = 4;
        options.freeze_timeout = 4000;
        assert_eq!(
            validate(&options).unwrap_err().to_string(),
            "invalid option: freeze timeout must be between 1 and 3600 seconds, not 4000"
        );
        options.freeze_timeout = 60;
        options.ceph_timeout = 0;
        assert_eq!(
            validate(&options).unwrap_err().to_string(),
            "invalid option: the Ceph timeout must be between 1 and 86400 seconds, not 0"
        );
    }
}
