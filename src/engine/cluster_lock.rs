//! Cluster-side exclusion: one backup of an image at a time, across every host that shares the
//! Ceph cluster.
//!
//! The repository's `flock` serializes runs of one host on one repository folder; it says
//! nothing about another hypervisor (a domain defined on two hosts, a migrated domain's new
//! host), about a second repository, nor, on NFS, reliably about another host's run on the same
//! folder. So before its snapshots a domain's run takes a RADOS lock (`cls_lock`, exclusive,
//! name `virt-rbd-backup`) on the header object of each of its images (`rbd_header.<id>`), holds
//! it through export and commit, and releases it at the end.
//!
//! Why per image and on the header: an image is what two runs must not share (two domains can
//! share an image, and a migrated or doubly defined domain has the same images, so a per-image
//! lock covers all three cases; a per-domain lock would miss a shared image and needs a pool to
//! live in). The header exists as long as the image, so no lock object is left behind when the
//! image is removed; the lock name differs from librbd's own `rbd_lock`, which librbd's
//! exclusive-lock feature and `rbd lock` use, so neither sees nor breaks ours. `profile rbd`
//! caps allow it (class calls on objects of the pool).
//!
//! The lock has a lease (`LEASE`), renewed by a thread every `RENEW_EVERY`: a host that dies
//! mid-backup blocks others for at most the lease. A lock whose holder is a dead process of this
//! host (same machine id, the pid gone or reused) is broken at once, so a run killed here does
//! not hold up the next run here. Who holds a lock is written into its cookie (the only text
//! `rados_list_lockers` returns): host name, machine id, pid, the process's start time, the
//! domain.
//!
//! A busy lock: held by another domain of this same run (an image shared by two domains) is
//! waited for; held by anything else, the domain is skipped with a line naming the holder.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::ceph::{CephError, LockAttempt, PoolContext, RbdImage};
use crate::error::Error;

use super::restic::host_name;
use super::CancelToken;

/// Name of the lock on each image's header object.
pub(super) const LOCK_NAME: &str = "virt-rbd-backup";
/// How long a lock outlives its last renewal (a dead host's lock frees itself after this).
pub(super) const LEASE: Duration = Duration::from_secs(60);
/// How often the holder renews it; several renewals can fail before the lease runs out.
pub(super) const RENEW_EVERY: Duration = Duration::from_secs(15);
/// How often a lock held by another domain of this run is tried again.
const RETRY_EVERY: Duration = Duration::from_millis(250);

/// Who holds (or wants) a lock; travels in the lock's cookie.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct LockOwner {
    /// Host name, for people.
    pub host: String,
    /// `/etc/machine-id`: tells this host from another with the same name; empty if unknown
    /// (then no lock of it is ever broken as dead).
    pub machine: String,
    pub pid: u32,
    /// The process's start time (clock ticks since boot, `/proc/PID/stat` field 22): a reused
    /// pid has another.
    pub start: u64,
    /// The domain being backed up.
    pub domain: String,
}

const COOKIE_PREFIX: &str = "virt-rbd-backup";

impl LockOwner {
    /// This process, backing up `domain`.
    pub fn current(domain: &str) -> Self {
        let pid = std::process::id();
        LockOwner {
            host: host_name(),
            machine: machine_id(),
            pid,
            start: process_start(pid).unwrap_or(0),
            domain: domain.to_string(),
        }
    }

    /// The cookie: space-separated `key=value` fields (values never contain spaces or `=`).
    pub fn cookie(&self) -> String {
        format!(
            "{COOKIE_PREFIX} host={} machine={} pid={} start={} domain={}",
            token(&self.host),
            token(&self.machine),
            self.pid,
            self.start,
            token(&self.domain)
        )
    }

    /// Reads a cookie written by `cookie`; `None` for anyone else's.
    pub fn parse(cookie: &str) -> Option<Self> {
        let mut fields = cookie.split(' ');
        if fields.next() != Some(COOKIE_PREFIX) {
            return None;
        }
        let mut owner = LockOwner {
            host: String::new(),
            machine: String::new(),
            pid: 0,
            start: 0,
            domain: String::new(),
        };
        for field in fields {
            let (key, value) = field.split_once('=')?;
            match key {
                "host" => owner.host = value.to_string(),
                "machine" => owner.machine = value.to_string(),
                "pid" => owner.pid = value.parse().ok()?,
                "start" => owner.start = value.parse().ok()?,
                "domain" => owner.domain = value.to_string(),
                // Fields of later versions.
                _ => {}
            }
        }
        (owner.pid != 0).then_some(owner)
    }

    /// For messages: "virt-rbd-backup on host H (pid P)".
    pub fn describe(&self) -> String {
        format!("virt-rbd-backup on host {} (pid {})", self.host, self.pid)
    }

    fn same_host(&self, other: &LockOwner) -> bool {
        !self.machine.is_empty() && self.machine == other.machine
    }
}

/// `value` with spaces and `=` replaced, so a cookie splits back into its fields.
fn token(value: &str) -> String {
    let cleaned: String = value
        .chars()
        .map(|c| {
            if c == ' ' || c == '=' || c.is_control() {
                '_'
            } else {
                c
            }
        })
        .collect();
    if cleaned.is_empty() {
        "-".into()
    } else {
        cleaned
    }
}

/// What to do about a lock another (client, cookie) holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum BusyVerdict {
    /// Another domain of this process holds it (an image shared by two domains): wait.
    Wait,
    /// A process of this host that no longer exists holds it: break it.
    BreakDead,
    /// Someone alive elsewhere (or unknown) holds it: skip the domain.
    Skip,
}

/// Decides about a busy lock held with `holder`'s cookie, for us (`me`); `alive(pid, start)`
/// says whether that process of this host still runs.
pub(super) fn judge_busy(
    holder: Option<&LockOwner>,
    me: &LockOwner,
    alive: impl Fn(u32, u64) -> bool,
) -> BusyVerdict {
    let Some(holder) = holder else {
        return BusyVerdict::Skip;
    };
    if !holder.same_host(me) {
        return BusyVerdict::Skip;
    }
    if holder.pid == me.pid && holder.start == me.start {
        return BusyVerdict::Wait;
    }
    if alive(holder.pid, holder.start) {
        BusyVerdict::Skip
    } else {
        BusyVerdict::BreakDead
    }
}

fn machine_id() -> String {
    ["/etc/machine-id", "/var/lib/dbus/machine-id"]
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Field 22 (`starttime`) of `/proc/PID/stat`, if the process exists.
fn process_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_start_time(&stat)
}

/// `starttime` from the text of `/proc/PID/stat`; the command name (field 2) may hold spaces
/// and parentheses, so fields are counted after its last `)`.
fn parse_start_time(stat: &str) -> Option<u64> {
    let after = &stat[stat.rfind(')')? + 1..];
    // After the name: field 3 (state) is the first, so field 22 is the 20th.
    after.split_whitespace().nth(19)?.parse().ok()
}

/// Whether process `pid` still runs and is the one that started at `start`.
fn process_alive(pid: u32, start: u64) -> bool {
    match process_start(pid) {
        Some(now) => start == 0 || now == start,
        None => false,
    }
}

/// One image's lock while we hold it.
struct HeldLock<'p> {
    pool: &'p PoolContext<'p>,
    oid: String,
    spec: String,
    /// Last successful take or renewal.
    renewed: Instant,
}

/// Why a domain cannot take its locks now.
pub(super) struct Busy {
    /// The line for the operator.
    pub message: String,
}

/// The locks of one domain's images, held until dropped (then released).
pub(super) struct ImageLocks<'p> {
    held: Mutex<Vec<HeldLock<'p>>>,
    cookie: String,
    description: String,
    /// Global ids of dead processes of this host whose locks were broken: their watches on the
    /// images may linger (until the OSD times them out) and are not "another client".
    pub broken_clients: Vec<i64>,
    /// Set when a renewal found the lock taken by someone else.
    lost: Mutex<Option<String>>,
}

impl<'p> ImageLocks<'p> {
    /// Takes the lock of every image (`pools[i]`, `images[i]`), in order. `Ok(Err(Busy))` when
    /// one is held by someone alive; waits while another domain of this process holds one.
    pub fn acquire(
        pools: &'p [PoolContext<'p>],
        images: &[RbdImage<'_>],
        me: &LockOwner,
        cancel: &CancelToken,
    ) -> Result<Result<Self, Busy>, Error> {
        let cookie = me.cookie();
        let description = format!("backup of domain {} by {}", me.domain, me.describe());
        let mut broken_clients = Vec::new();
        let mut targets = Vec::with_capacity(images.len());
        for (pool, image) in pools.iter().zip(images) {
            let id = image.info()?.id;
            targets.push((pool, format!("rbd_header.{id}"), image.spec().to_string()));
        }
        'attempt: loop {
            let mut held: Vec<HeldLock<'p>> = Vec::new();
            for (pool, oid, spec) in &targets {
                match pool.lock_exclusive(oid, LOCK_NAME, &cookie, &description, LEASE)? {
                    LockAttempt::Acquired => {
                        held.push(HeldLock {
                            pool,
                            oid: oid.clone(),
                            spec: spec.clone(),
                            renewed: Instant::now(),
                        });
                        continue;
                    }
                    LockAttempt::Busy => {}
                }
                // Someone holds it: who?
                let lockers = pool.lockers(oid, LOCK_NAME)?;
                let Some(locker) = lockers.first() else {
                    // Released (or expired) meanwhile: try everything again.
                    release(&held, &cookie);
                    continue 'attempt;
                };
                let holder = LockOwner::parse(&locker.cookie);
                match judge_busy(holder.as_ref(), me, process_alive) {
                    BusyVerdict::Wait => {
                        // Released while waiting, so two domains of this run that share images
                        // in another order cannot wait for each other.
                        release(&held, &cookie);
                        if cancel.is_cancelled() {
                            return Err(Error::Cancelled);
                        }
                        std::thread::sleep(RETRY_EVERY);
                        continue 'attempt;
                    }
                    BusyVerdict::BreakDead => {
                        log::warn!(
                            "breaking the backup lock on {spec} of a process of this host that is gone ({}, {})",
                            locker.client,
                            holder.as_ref().map(LockOwner::describe).unwrap_or_default()
                        );
                        pool.break_lock(oid, LOCK_NAME, &locker.client, &locker.cookie)?;
                        if let Some(id) = locker
                            .client
                            .strip_prefix("client.")
                            .and_then(|n| n.parse().ok())
                        {
                            broken_clients.push(id);
                        }
                        release(&held, &cookie);
                        continue 'attempt;
                    }
                    BusyVerdict::Skip => {
                        release(&held, &cookie);
                        let who = match &holder {
                            Some(h) => format!("{} (domain {})", h.describe(), h.domain),
                            None => format!("a lock {LOCK_NAME:?} with cookie {:?}", locker.cookie),
                        };
                        return Ok(Err(Busy {
                            message: format!(
                                "image {spec} is being backed up by {who}, Ceph client {} at {}; skipped, the next run backs it up (a dead holder's lock {LOCK_NAME:?} on {oid} expires within {} s)",
                                locker.client,
                                locker.address,
                                LEASE.as_secs(),
                            ),
                        }));
                    }
                }
            }
            return Ok(Ok(ImageLocks {
                held: Mutex::new(held),
                cookie,
                description,
                broken_clients,
                lost: Mutex::new(None),
            }));
        }
    }

    /// Renews every lock's lease; records a lock found taken by someone else.
    pub fn renew(&self) {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        for lock in held.iter_mut() {
            match lock.pool.lock_exclusive(
                &lock.oid,
                LOCK_NAME,
                &self.cookie,
                &self.description,
                LEASE,
            ) {
                Ok(LockAttempt::Acquired) => lock.renewed = Instant::now(),
                Ok(LockAttempt::Busy) => {
                    let mut lost = self.lost.lock().unwrap_or_else(|p| p.into_inner());
                    lost.get_or_insert_with(|| {
                        "its lease expired and another client took it".to_string()
                    });
                    log::warn!("lost the backup lock on {}", lock.spec);
                }
                // A transient failure: the lease still runs; `check_held` notices if it ends.
                Err(e) => log::warn!("cannot renew the backup lock on {}: {e}", lock.spec),
            }
        }
    }

    /// Fails if a lock was lost or its lease ran out: then another host may have backed up or
    /// cleaned up this image meanwhile, and this backup must not be committed.
    pub fn check_held(&self) -> Result<(), Error> {
        let held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let lost = self.lost.lock().unwrap_or_else(|p| p.into_inner());
        for lock in held.iter() {
            let reason = match (&*lost, lock.renewed.elapsed() >= LEASE) {
                (Some(reason), _) => reason.clone(),
                (None, true) => format!(
                    "it was not renewed for {} s (the cluster did not answer)",
                    lock.renewed.elapsed().as_secs()
                ),
                (None, false) => continue,
            };
            return Err(Error::ClusterLockLost {
                image: lock.spec.clone(),
                reason,
            });
        }
        Ok(())
    }
}

fn release(held: &[HeldLock<'_>], cookie: &str) {
    for lock in held {
        match lock.pool.unlock(&lock.oid, LOCK_NAME, cookie) {
            Ok(_) => {}
            Err(e) => log::warn!(
                "cannot release the backup lock on {} ({e}); it expires within {} s",
                lock.spec,
                LEASE.as_secs()
            ),
        }
    }
}

impl Drop for ImageLocks<'_> {
    fn drop(&mut self) {
        let held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        release(&held, &self.cookie);
    }
}

/// Renews `locks` every `RENEW_EVERY` until `stop` receives (or is dropped).
pub(super) fn renew_until(locks: &ImageLocks<'_>, stop: &crossbeam_channel::Receiver<()>) {
    loop {
        match stop.recv_timeout(RENEW_EVERY) {
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => locks.renew(),
            _ => return,
        }
    }
}

/// The first client other than us (`own_id`, and `ignored`: dead processes of this host) that
/// watches one of `images`: (image spec, its address). A watcher has the image open for writing:
/// a QEMU, `rbd map`, or any other writer.
pub(super) fn foreign_watcher(
    images: &[RbdImage<'_>],
    pools: &[PoolContext<'_>],
    ignored: &[i64],
) -> Result<Option<(String, String)>, CephError> {
    for (image, pool) in images.iter().zip(pools) {
        let own_id = pool.cluster().instance_id() as i64;
        for watcher in image.watchers()? {
            if watcher.id != own_id && !ignored.contains(&watcher.id) {
                return Ok(Some((
                    image.spec().to_string(),
                    format!("client.{} at {}", watcher.id, watcher.address),
                )));
            }
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(machine: &str, pid: u32, start: u64) -> LockOwner {
        LockOwner {
            host: "hv1".into(),
            machine: machine.into(),
            pid,
            start,
            domain: "6f1c0a2e-1b3d-4c5e-8f70-9a1b2c3d4e5f".into(),
        }
    }

    #[test]
    fn a_cookie_reads_back_as_its_owner() {
        let mut me = owner("0123abcd", 4242, 987_654);
        me.host = "hv 1=a".into();
        let parsed = LockOwner::parse(&me.cookie()).expect("parses");
        assert_eq!(parsed.host, "hv_1_a");
        assert_eq!(parsed.machine, "0123abcd");
        assert_eq!((parsed.pid, parsed.start), (4242, 987_654));
        assert_eq!(parsed.domain, me.domain);
        assert_eq!(LockOwner::parse("auto 140234"), None);
        assert_eq!(LockOwner::parse("virt-rbd-backup pid=x"), None);
        // Fields added by a later version are ignored.
        assert!(LockOwner::parse("virt-rbd-backup pid=7 lease=60").is_some());
    }

    #[test]
    fn a_lock_of_another_host_or_of_a_live_process_here_skips() {
        let me = owner("m1", 100, 5);
        let never = |_: u32, _: u64| panic!("must not ask about a process of another host");
        assert_eq!(
            judge_busy(Some(&owner("m2", 200, 9)), &me, never),
            BusyVerdict::Skip
        );
        assert_eq!(judge_busy(None, &me, never), BusyVerdict::Skip);
        assert_eq!(
            judge_busy(Some(&owner("m1", 200, 9)), &me, |_, _| true),
            BusyVerdict::Skip
        );
    }

    #[test]
    fn a_lock_of_a_dead_process_here_is_broken_and_our_own_is_waited_for() {
        let me = owner("m1", 100, 5);
        assert_eq!(
            judge_busy(Some(&owner("m1", 200, 9)), &me, |_, _| false),
            BusyVerdict::BreakDead
        );
        assert_eq!(
            judge_busy(Some(&owner("m1", 100, 5)), &me, |_, _| true),
            BusyVerdict::Wait
        );
        // Our pid, but another start time: a dead process whose pid we reuse.
        assert_eq!(
            judge_busy(Some(&owner("m1", 100, 4)), &me, |_, _| false),
            BusyVerdict::BreakDead
        );
    }

    #[test]
    fn without_a_machine_id_no_lock_is_taken_for_ours() {
        let me = owner("", 100, 5);
        assert_eq!(
            judge_busy(Some(&owner("", 200, 9)), &me, |_, _| false),
            BusyVerdict::Skip
        );
    }

    #[test]
    fn the_start_time_is_read_after_the_command_name() {
        let stat =
            "4242 (a (b) c) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 50";
        assert_eq!(parse_start_time(stat), Some(987_654));
        assert_eq!(parse_start_time("garbage"), None);
        let own = process_start(std::process::id());
        assert!(own.is_some_and(|s| s > 0));
        assert!(process_alive(std::process::id(), own.unwrap_or(0)));
    }
}
