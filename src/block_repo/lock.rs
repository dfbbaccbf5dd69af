//! Repository locks of the block layout: what keeps a sweep from deleting a block that a
//! running backup found present and is about to reference (`docs/design-block-layout.md`,
//! "Prune and the race").
//!
//! A lock is an object `locks/<kind>-<host>-<pid>-<random>` holding a [`RepoLockRecord`],
//! rewritten every lease/4 by a thread while its holder runs. Another host takes a lock for
//! dead (stale) when its `renewed_at` is more than two leases old by its own clock, and then
//! removes it: hosts' clocks must agree within a lease (NTP). A holder that could not renew for
//! a whole lease (a hung host, a store that did not answer) marks its lock lost and stops
//! renewing, since another host may have removed it meanwhile; a backup whose lock is lost
//! commits nothing ([`RepoLock::check_held`]).
//!
//! The rule: a backup writes its lock before its first `head` of a block, then waits while a
//! live prune lock exists; a prune writes its lock, then gives up while a live backup lock
//! exists. Whichever writes second sees the other's lock, so they never both proceed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::{BlockRepoError, BlockRepository};
use crate::objstore::object_format::{ObjectCodec, ObjectKind};
use crate::objstore::ObjectStore;

/// Who holds a lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LockKind {
    /// A backup (may reference blocks it found present).
    Backup,
    /// A prune (deletes unreferenced blocks).
    Prune,
}

/// The content of a lock object.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RepoLockRecord {
    pub kind: LockKind,
    pub host: String,
    pub pid: u32,
    /// Unix seconds.
    pub started_at: f64,
    /// Unix seconds of the last renewal.
    pub renewed_at: f64,
    /// Seconds between renewals times four.
    pub lease_s: u64,
}

impl RepoLockRecord {
    /// Whether the holder stopped renewing two leases ago, by the clock `now`.
    pub fn is_stale(&self, now: f64) -> bool {
        now - self.renewed_at > 2.0 * self.lease_s as f64
    }

    /// "backup on HOST (pid N)".
    pub fn describe(&self) -> String {
        let kind = match self.kind {
            LockKind::Backup => "backup",
            LockKind::Prune => "prune",
        };
        format!("{kind} on {} (pid {})", self.host, self.pid)
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// A held lock (`host` names this host in it); released (its object deleted) when dropped.
pub struct RepoLock {
    key: String,
    store: Arc<dyn ObjectStore>,
    describe: String,
    lost: Arc<AtomicBool>,
    stop: Option<crossbeam_channel::Sender<()>>,
    renewer: Option<std::thread::JoinHandle<()>>,
}

/// Locks are sealed like every object but with a codec of their own: they hold no secret and
/// must be readable before a repository's key is at hand (the key is read from the store too).
fn encode_record(key: &str, record: &RepoLockRecord) -> Vec<u8> {
    let text = serde_json::to_vec(record).expect("lock record serializes");
    ObjectCodec::new(None, None)
        .encode(ObjectKind::Config, key, &text)
        .expect("plain encoding does not fail")
}

fn decode_record(key: &str, stored: &[u8]) -> Option<RepoLockRecord> {
    let text = ObjectCodec::new(None, None)
        .decode(ObjectKind::Config, key, stored, 64 * 1024)
        .ok()?;
    serde_json::from_slice(&text).ok()
}

/// The other live locks of `kind`, removing the stale ones on the way. A lock object that
/// does not open counts as live (the safe side) and is named by its key.
fn live_locks(
    store: &dyn ObjectStore,
    own: &str,
    kind: LockKind,
) -> Result<Vec<String>, BlockRepoError> {
    let mut live = Vec::new();
    for object in store.list("locks")? {
        if object.key == own {
            continue;
        }
        let stored = match store.get(&object.key) {
            Ok(stored) => stored,
            // Released between the listing and the read.
            Err(crate::objstore::StoreError::NotFound { .. }) => continue,
            Err(e) => return Err(e.into()),
        };
        match decode_record(&object.key, &stored) {
            Some(record) if record.is_stale(unix_now()) => {
                log::warn!(
                    "removing the stale repository lock {} ({}; not renewed since {:.0})",
                    object.key,
                    record.describe(),
                    record.renewed_at
                );
                store.delete(&object.key)?;
            }
            Some(record) if record.kind == kind => live.push(record.describe()),
            Some(_) => {}
            None => live.push(format!("unreadable lock {}", object.key)),
        }
    }
    Ok(live)
}

impl RepoLock {
    fn write(
        repo: &BlockRepository,
        host: &str,
        kind: LockKind,
        lease: Duration,
    ) -> Result<RepoLock, BlockRepoError> {
        let host = crate::repo::layout::safe_component(host);
        let pid = std::process::id();
        let mut random = [0u8; 4];
        getrandom::getrandom(&mut random).map_err(|e| {
            BlockRepoError::Format(crate::objstore::object_format::FormatError::Random(
                e.to_string(),
            ))
        })?;
        let kind_name = match kind {
            LockKind::Backup => "backup",
            LockKind::Prune => "prune",
        };
        let key = format!("locks/{kind_name}-{host}-{pid}-{}", super::hex(&random));
        let lease_s = lease.as_secs().max(1);
        let started_at = unix_now();
        let mut record = RepoLockRecord {
            kind,
            host,
            pid,
            started_at,
            renewed_at: started_at,
            lease_s,
        };
        let store = repo.shared_store();
        store.put(&key, encode_record(&key, &record))?;
        let lost = Arc::new(AtomicBool::new(false));
        let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(1);
        let renewer = {
            let (store, key, lost) = (store.clone(), key.clone(), lost.clone());
            let period = Duration::from_secs(lease_s) / 4;
            std::thread::spawn(move || {
                let mut renewed = Instant::now();
                while let Err(crossbeam_channel::RecvTimeoutError::Timeout) =
                    stop_rx.recv_timeout(period)
                {
                    if renewed.elapsed() > Duration::from_secs(lease_s) {
                        // Someone may have taken us for dead: never resurrect the lock.
                        lost.store(true, Ordering::Relaxed);
                        return;
                    }
                    match store.head(&key) {
                        Ok(Some(_)) => {}
                        Ok(None) => {
                            lost.store(true, Ordering::Relaxed);
                            return;
                        }
                        Err(_) => continue,
                    }
                    record.renewed_at = unix_now();
                    if store.put(&key, encode_record(&key, &record)).is_ok() {
                        renewed = Instant::now();
                    }
                }
            })
        };
        Ok(RepoLock {
            key,
            store,
            describe: repo.describe(),
            lost,
            stop: Some(stop_tx),
            renewer: Some(renewer),
        })
    }

    /// A backup's lock: written, then held once no live prune lock is left; waits at most
    /// `wait` for a running prune.
    pub fn for_backup(
        repo: &BlockRepository,
        host: &str,
        lease: Duration,
        wait: Duration,
    ) -> Result<RepoLock, BlockRepoError> {
        let lock = Self::write(repo, host, LockKind::Backup, lease)?;
        let started = Instant::now();
        loop {
            let prunes = live_locks(lock.store.as_ref(), &lock.key, LockKind::Prune)?;
            if prunes.is_empty() {
                return Ok(lock);
            }
            if started.elapsed() >= wait {
                return Err(BlockRepoError::PruneRunning {
                    store: repo.describe(),
                    holder: prunes.join(", "),
                    waited_s: wait.as_secs(),
                });
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// A prune's lock, or the running backups that keep the prune from sweeping (its lock is
    /// then removed again).
    pub fn for_prune(
        repo: &BlockRepository,
        host: &str,
        lease: Duration,
    ) -> Result<Result<RepoLock, Vec<String>>, BlockRepoError> {
        let lock = Self::write(repo, host, LockKind::Prune, lease)?;
        let backups = live_locks(lock.store.as_ref(), &lock.key, LockKind::Backup)?;
        if backups.is_empty() {
            Ok(Ok(lock))
        } else {
            Ok(Err(backups))
        }
    }

    /// Fails unless the lock is still ours: call right before committing.
    pub fn check_held(&self) -> Result<(), BlockRepoError> {
        let present = self.store.head(&self.key)?.is_some();
        if self.lost.load(Ordering::Relaxed) || !present {
            return Err(BlockRepoError::LockLost {
                store: self.describe.clone(),
                lock: self.key.clone(),
            });
        }
        Ok(())
    }

    /// The lock's object key.
    pub fn key(&self) -> &str {
        &self.key
    }
}

impl Drop for RepoLock {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(renewer) = self.renewer.take() {
            let _ = renewer.join();
        }
        if let Err(e) = self.store.delete(&self.key) {
            log::warn!(
                "could not remove the repository lock {} ({e}); other hosts take it for stale after two leases",
                self.key
            );
        }
    }
}
