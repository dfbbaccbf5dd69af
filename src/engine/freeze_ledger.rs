//! A record on the host of every guest freeze a run holds, so that a guest left frozen by a
//! run that died together with its thaw watchdog is thawed afterwards.
//!
//! The watchdog (`thaw_guard`) survives the death of our process, but not the death of our
//! cgroup: systemd stops a unit by killing every process in it (`KillMode=mixed` after the
//! main process, `control-group` at once; also after `TimeoutStopSec=` and on an OOM kill of
//! the unit), the watchdog included, and libvirt never thaws on its own. So right before each
//! freeze the run writes a record, `RUNTIME_DIR/frozen/<domain uuid>.<pid>.json`, and removes
//! it once the guest is known not to be frozen by it any more (thawed, the freeze refused or
//! the domain stopped). A record whose process is gone is an orphan:
//! [`thaw_orphans`] thaws its domain and removes it. The shipped unit runs it as
//! `ExecStopPost=virt-rbd-backup thaw-orphans` (after systemd killed the cgroup), and every
//! backup run runs it before its first freeze.
//!
//! **Who owns a record.** Its process id and the process's start time (field 22 of
//! `/proc/PID/stat`, in clock ticks since boot) together with the boot id: a pid reused by
//! another process, or a record from before a reboot, is not mistaken for a live run.
//!
//! **Never someone else's freeze.** A domain is thawed only when none of its records belongs
//! to a live process: while another run of ours holds a freeze of the same guest its records
//! wait (they are not removed, so the guest is thawed once that run is gone too). A record is
//! written before the freeze call and removed as soon as the freeze is refused, so a guest
//! frozen by an administrator or another tool is thawed only if our run died in the
//! milliseconds between writing its record and the agent's refusal.
//!
//! **Where.** `/run/virt-rbd-backup` (`RuntimeDirectory=` of the unit, preserved across stops
//! so `ExecStopPost=` still finds it; emptied at boot, when no guest of this host can still be
//! frozen), or `$VIRT_RBD_BACKUP_RUNTIME_DIR`. Records carry no secret: a libvirt URI, a
//! domain's UUID and name, a pid.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::libvirt::{thaw_domain, HypervisorConnection, LibvirtError};

/// The runtime folder when `VIRT_RBD_BACKUP_RUNTIME_DIR` is not set.
pub const DEFAULT_RUNTIME_DIR: &str = "/run/virt-rbd-backup";

/// Version of the record format.
const RECORD_VERSION: u32 = 1;

/// What a run writes before it freezes a guest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FreezeRecord {
    /// Format version ([`RECORD_VERSION`]).
    pub version: u32,
    /// libvirt URI the guest was frozen through.
    pub uri: String,
    /// The domain's UUID.
    pub domain_uuid: String,
    /// The domain's name, for messages.
    pub domain_name: String,
    /// The freezing process.
    pub pid: u32,
    /// Its start time in clock ticks since boot (`/proc/PID/stat` field 22).
    pub process_start: u64,
    /// `/proc/sys/kernel/random/boot_id` when the record was written.
    pub boot_id: String,
    /// Unix time of the record.
    pub recorded_at: f64,
}

/// A process as seen on this host now: used to tell whether a record's owner still runs.
pub trait ProcessTable {
    /// The start time (clock ticks since boot) of the live process `pid`, if there is one.
    fn start_time(&self, pid: u32) -> Option<u64>;
    /// This boot's id.
    fn boot_id(&self) -> Option<String>;
}

/// `/proc` of this host.
pub struct ProcFs;

impl ProcessTable for ProcFs {
    fn start_time(&self, pid: u32) -> Option<u64> {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        parse_start_time(&stat)
    }
    fn boot_id(&self) -> Option<String> {
        fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .ok()
            .map(|s| s.trim().to_string())
    }
}

/// Field 22 (`starttime`) of a `/proc/PID/stat` line. The second field is the command name in
/// parentheses and may itself contain spaces and parentheses, so fields are counted after
/// the last `)`.
pub fn parse_start_time(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    // After the name: field 3 (state) is the first, so starttime (22) is the 20th.
    after_name.split_whitespace().nth(19)?.parse().ok()
}

impl FreezeRecord {
    /// Whether the process that wrote the record still runs.
    pub fn owner_alive(&self, procs: &dyn ProcessTable) -> bool {
        if procs.boot_id().is_some_and(|boot| boot != self.boot_id) {
            return false;
        }
        procs.start_time(self.pid) == Some(self.process_start)
    }
}

/// The folder of freeze records under a runtime folder.
pub fn ledger_dir(runtime_dir: &Path) -> PathBuf {
    runtime_dir.join("frozen")
}

/// The runtime folder: `$VIRT_RBD_BACKUP_RUNTIME_DIR`, else [`DEFAULT_RUNTIME_DIR`].
pub fn runtime_dir() -> PathBuf {
    std::env::var_os("VIRT_RBD_BACKUP_RUNTIME_DIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_RUNTIME_DIR))
}

/// A written record of a freeze this process is about to make or holds. Dropping it keeps the
/// file: when it is not known that the guest is thawed, the record is what lets
/// [`thaw_orphans`] thaw it after this process is gone. [`FreezeRecordFile::release`] removes it.
#[derive(Debug)]
pub struct FreezeRecordFile {
    path: PathBuf,
}

impl FreezeRecordFile {
    /// Writes the record of a freeze of `domain_uuid` by this process (atomically: a temporary
    /// name, then a rename, so a reader never sees half a record).
    pub fn write(
        runtime_dir: &Path,
        uri: &str,
        domain_uuid: &str,
        domain_name: &str,
    ) -> std::io::Result<Self> {
        let pid = std::process::id();
        let procs = ProcFs;
        let record = FreezeRecord {
            version: RECORD_VERSION,
            uri: uri.to_string(),
            domain_uuid: domain_uuid.to_string(),
            domain_name: domain_name.to_string(),
            pid,
            process_start: procs.start_time(pid).ok_or_else(|| {
                std::io::Error::other("cannot read this process's start time from /proc")
            })?,
            boot_id: procs.boot_id().unwrap_or_default(),
            recorded_at: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0),
        };
        let dir = ledger_dir(runtime_dir);
        fs::create_dir_all(&dir)?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))?;
        let path = dir.join(format!("{domain_uuid}.{pid}.json"));
        let tmp = dir.join(format!(".{domain_uuid}.{pid}.tmp"));
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        let json = serde_json::to_vec(&record).map_err(std::io::Error::other)?;
        file.write_all(&json)?;
        file.sync_all()?;
        fs::rename(&tmp, &path)?;
        Ok(FreezeRecordFile { path })
    }

    /// The guest is not frozen by this process (any more): removes the record.
    pub fn release(self) {
        if let Err(e) = fs::remove_file(&self.path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                log::warn!(
                    "cannot remove the freeze record {}: {e}; `virt-rbd-backup thaw-orphans` \
                     will thaw the guest once this process is gone (harmless: it is thawed)",
                    self.path.display()
                );
            }
        }
    }
}

/// What [`thaw_orphans`] did with one domain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OrphanThaw {
    /// Domain name as recorded.
    pub domain: String,
    /// Domain UUID.
    pub uuid: String,
    /// The dead processes whose freeze records were handled.
    pub pids: Vec<u32>,
    /// What happened.
    #[serde(flatten)]
    pub outcome: OrphanOutcome,
}

impl OrphanThaw {
    /// One line for a log or a report.
    pub fn describe(&self) -> String {
        let who = format!(
            "a run that died (pid {}) left a freeze record for domain {} ({})",
            self.pids
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            self.domain,
            self.uuid
        );
        match &self.outcome {
            OrphanOutcome::Thawed { filesystems: 0 } => {
                format!("{who}; the guest was not frozen any more (thaw found 0 filesystems)")
            }
            OrphanOutcome::Thawed { filesystems } => {
                format!("{who}; it was still frozen and was thawed ({filesystems} filesystems)")
            }
            OrphanOutcome::NotRunning => format!("{who}; it does not run here any more"),
            OrphanOutcome::Waiting => format!(
                "{who}; another run holds a freeze of it now, so it is thawed once that run is \
                 gone"
            ),
            OrphanOutcome::Failed { error } => format!(
                "{who}; thawing it failed ({error}); the record stays and the next run or \
                 `virt-rbd-backup thaw-orphans` tries again"
            ),
        }
    }
}

/// The outcome for one orphaned domain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum OrphanOutcome {
    /// The guest was thawed; `filesystems` is what the agent thawed (0: it was not frozen).
    Thawed {
        /// Filesystems thawed.
        filesystems: u32,
    },
    /// The domain is not running here (or no longer defined): nothing to thaw.
    NotRunning,
    /// Another live run of ours holds a freeze of the guest: the records wait for it.
    Waiting,
    /// The thaw failed; the records stay for the next try.
    Failed {
        /// What failed and what to do.
        error: String,
    },
}

/// Thaws a domain: `(uri, uuid)` to the filesystems thawed, or `None` when it does not run.
pub type ThawFn<'a> = dyn FnMut(&str, &str) -> Result<Option<u32>, LibvirtError> + 'a;

/// What the ledger folder holds, grouped per domain: the records and their files.
type RecordsByDomain = BTreeMap<String, Vec<(PathBuf, FreezeRecord)>>;

/// Reads every record (unreadable files are logged and skipped: they are left for a person).
fn read_records(dir: &Path) -> std::io::Result<RecordsByDomain> {
    let mut by_domain = RecordsByDomain::new();
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(by_domain),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let path = entry?.path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let record = fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|bytes| {
                serde_json::from_slice::<FreezeRecord>(&bytes).map_err(|e| e.to_string())
            });
        match record {
            Ok(record) => by_domain
                .entry(record.domain_uuid.clone())
                .or_default()
                .push((path, record)),
            Err(e) => log::warn!(
                "cannot read the freeze record {}: {e}; remove it by hand once the guest it \
                 names is thawed",
                path.display()
            ),
        }
    }
    Ok(by_domain)
}

/// Thaws every guest whose freeze records all belong to processes that are gone, and removes
/// those records. See the module doc for when a guest is left alone.
pub fn thaw_orphans(runtime_dir: &Path) -> std::io::Result<Vec<OrphanThaw>> {
    thaw_orphans_with(runtime_dir, &ProcFs, &mut |uri, uuid| {
        let conn = HypervisorConnection::open(uri)?;
        match conn.is_active(uuid) {
            Ok(false) | Err(LibvirtError::NoSuchDomain(_)) => Ok(None),
            Ok(true) => thaw_domain(&conn, uuid).map(Some),
            Err(e) => Err(e),
        }
    })
}

/// [`thaw_orphans`] with the process table and the thaw given: `thaw(uri, uuid)` returns the
/// filesystems thawed, or `None` when the domain does not run.
pub fn thaw_orphans_with(
    runtime_dir: &Path,
    procs: &dyn ProcessTable,
    thaw: &mut ThawFn<'_>,
) -> std::io::Result<Vec<OrphanThaw>> {
    let mut outcomes = Vec::new();
    for (uuid, records) in read_records(&ledger_dir(runtime_dir))? {
        let (live, dead): (Vec<_>, Vec<_>) = records
            .into_iter()
            .partition(|(_, record)| record.owner_alive(procs));
        let Some((_, first)) = dead.first() else {
            continue;
        };
        let mut orphan = OrphanThaw {
            domain: first.domain_name.clone(),
            uuid: uuid.clone(),
            pids: dead.iter().map(|(_, r)| r.pid).collect(),
            outcome: OrphanOutcome::Waiting,
        };
        if live.is_empty() {
            orphan.outcome = match thaw(&first.uri, &uuid) {
                Ok(Some(filesystems)) => OrphanOutcome::Thawed { filesystems },
                Ok(None) => OrphanOutcome::NotRunning,
                Err(e) => OrphanOutcome::Failed {
                    error: e.to_string(),
                },
            };
            if !matches!(orphan.outcome, OrphanOutcome::Failed { .. }) {
                for (path, _) in &dead {
                    if let Err(e) = fs::remove_file(path) {
                        log::warn!("cannot remove the freeze record {}: {e}", path.display());
                    }
                }
            }
        }
        outcomes.push(orphan);
    }
    Ok(outcomes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct FakeProcs {
        boot: String,
        running: HashMap<u32, u64>,
    }

    impl ProcessTable for FakeProcs {
        fn start_time(&self, pid: u32) -> Option<u64> {
            self.running.get(&pid).copied()
        }
        fn boot_id(&self) -> Option<String> {
            Some(self.boot.clone())
        }
    }

    fn record(uuid: &str, pid: u32, start: u64, boot: &str) -> FreezeRecord {
        FreezeRecord {
            version: RECORD_VERSION,
            uri: "qemu:///system".into(),
            domain_uuid: uuid.into(),
            domain_name: format!("dom-{pid}"),
            pid,
            process_start: start,
            boot_id: boot.into(),
            recorded_at: 1.0,
        }
    }

    fn put(dir: &Path, r: &FreezeRecord) -> PathBuf {
        let ledger = ledger_dir(dir);
        fs::create_dir_all(&ledger).unwrap();
        let path = ledger.join(format!("{}.{}.json", r.domain_uuid, r.pid));
        fs::write(&path, serde_json::to_vec(r).unwrap()).unwrap();
        path
    }

    #[test]
    fn start_time_is_field_22_even_with_parentheses_in_the_name() {
        let stat = "4242 (a) b (c)) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 200 18446744073709551615";
        assert_eq!(parse_start_time(stat), Some(987654));
        assert_eq!(parse_start_time("garbage"), None);
        let own = ProcFs.start_time(std::process::id());
        assert!(own.is_some(), "this process has a start time");
    }

    #[test]
    fn a_reused_pid_or_another_boot_is_not_the_owner() {
        let procs = FakeProcs {
            boot: "b1".into(),
            running: HashMap::from([(10, 500)]),
        };
        assert!(record("u", 10, 500, "b1").owner_alive(&procs));
        assert!(
            !record("u", 10, 499, "b1").owner_alive(&procs),
            "pid reused"
        );
        assert!(!record("u", 11, 500, "b1").owner_alive(&procs), "gone");
        assert!(!record("u", 10, 500, "b0").owner_alive(&procs), "rebooted");
    }

    #[test]
    fn only_domains_without_a_live_freezer_are_thawed() {
        let dir = tempfile::tempdir().unwrap();
        let procs = FakeProcs {
            boot: "b".into(),
            running: HashMap::from([(20, 7)]),
        };
        let dead_alone = put(dir.path(), &record("u-dead", 10, 1, "b"));
        let dead_shared = put(dir.path(), &record("u-shared", 11, 1, "b"));
        let live_shared = put(dir.path(), &record("u-shared", 20, 7, "b"));
        let live_alone = put(dir.path(), &record("u-live", 20, 7, "b"));
        let mut thawed = Vec::new();
        let outcomes = thaw_orphans_with(dir.path(), &procs, &mut |_, uuid| {
            thawed.push(uuid.to_string());
            Ok(Some(2))
        })
        .unwrap();
        assert_eq!(thawed, ["u-dead"]);
        assert_eq!(outcomes.len(), 2, "{outcomes:?}");
        assert_eq!(
            outcomes[0].outcome,
            OrphanOutcome::Thawed { filesystems: 2 }
        );
        assert_eq!(outcomes[1].uuid, "u-shared");
        assert_eq!(outcomes[1].outcome, OrphanOutcome::Waiting);
        assert!(!dead_alone.exists(), "a handled record is removed");
        assert!(dead_shared.exists(), "a waiting record stays");
        assert!(live_shared.exists() && live_alone.exists());
    }

    #[test]
    fn a_failed_thaw_keeps_the_records_and_a_stopped_domain_drops_them() {
        let dir = tempfile::tempdir().unwrap();
        let procs = FakeProcs {
            boot: "b".into(),
            running: HashMap::new(),
        };
        let failing = put(dir.path(), &record("u-fail", 10, 1, "b"));
        let stopped = put(dir.path(), &record("u-stopped", 11, 1, "b"));
        let outcomes = thaw_orphans_with(dir.path(), &procs, &mut |_, uuid| {
            if uuid == "u-fail" {
                Err(LibvirtError::Thaw {
                    domain: "dom-10".into(),
                    message: "agent gone".into(),
                })
            } else {
                Ok(None)
            }
        })
        .unwrap();
        assert!(matches!(outcomes[0].outcome, OrphanOutcome::Failed { .. }));
        assert_eq!(outcomes[1].outcome, OrphanOutcome::NotRunning);
        assert!(failing.exists());
        assert!(!stopped.exists());
    }

    #[test]
    fn records_round_trip_through_the_file_this_process_writes() {
        let dir = tempfile::tempdir().unwrap();
        let file = FreezeRecordFile::write(dir.path(), "test:///default", "u-1", "web").unwrap();
        let records = read_records(&ledger_dir(dir.path())).unwrap();
        let (_, written) = &records["u-1"][0];
        assert_eq!(written.pid, std::process::id());
        assert!(written.owner_alive(&ProcFs), "this process owns it");
        // Our own live record is never an orphan.
        let outcomes = thaw_orphans_with(dir.path(), &ProcFs, &mut |_, _| {
            panic!("must not thaw a live run's guest")
        })
        .unwrap();
        assert!(outcomes.is_empty());
        file.release();
        assert!(read_records(&ledger_dir(dir.path())).unwrap().is_empty());
    }
}
