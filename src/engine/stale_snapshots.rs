//! Old snapshots of complete backups (the previous bases, leftovers of killed runs), removed
//! together once every domain of the run is done.
//!
//! A removal makes the monitor commit, and a commit waits for the monitor's next proposal, up
//! to `paxos_propose_interval` (1 s by default) after the last one. Removed one domain at a
//! time, each domain's removal landed just before the next domain's snapshot create, which then
//! waited for the following proposal: about a second per domain in a run of short incrementals.
//! Issued all at once at the end, the removals share one proposal and no create waits for them.
//! A run killed before the end leaves them to the next run, which removes every snapshot of
//! the repository that is not the base it records.

use std::sync::{Arc, Mutex};

use crate::ceph::{RadosCluster, RbdGroup, RbdImage};

/// What a stale snapshot belongs to.
pub(super) enum StaleTarget {
    /// An image snapshot of this image.
    Image(String),
    /// A snapshot of this RBD group.
    Group(String),
}

/// One snapshot to remove.
pub(super) struct StaleSnapshot {
    /// The connection the domain used.
    pub cluster: Arc<RadosCluster>,
    pub pool: String,
    pub namespace: Option<String>,
    pub target: StaleTarget,
    pub snapshot: String,
    /// Index of the domain's report, for a warning if the removal fails.
    pub domain: usize,
}

impl StaleSnapshot {
    /// Removes it; the error says which snapshot could not be removed and how to do it by hand.
    fn remove(&self) -> Result<(), String> {
        let removed = self
            .cluster
            .open_pool(&self.pool, self.namespace.as_deref())
            .and_then(|pool| match &self.target {
                StaleTarget::Image(name) => RbdImage::open(&pool, name)
                    .and_then(|image| image.remove_snapshot(&self.snapshot)),
                StaleTarget::Group(name) => RbdGroup::new(&pool, name)
                    .and_then(|group| group.remove_snapshot(&self.snapshot)),
            });
        match removed {
            Ok(()) => Ok(()),
            // Gone already (another run of the same repository removed it): nothing to do.
            Err(e) if e.errno() == Some(-libc::ENOENT) => Ok(()),
            Err(e) => {
                let spec = match &self.namespace {
                    Some(ns) => format!("{}/{ns}", self.pool),
                    None => self.pool.clone(),
                };
                Err(match &self.target {
                    StaleTarget::Image(name) => format!(
                        "the old snapshot {spec}/{name}@{} could not be removed: {e}; the next run removes it, or remove it with `rbd snap rm`",
                        self.snapshot
                    ),
                    StaleTarget::Group(name) => format!(
                        "the old group snapshot {spec}/{name}@{} could not be removed: {e}; the next run removes it, or remove it with `rbd group snap rm`",
                        self.snapshot
                    ),
                })
            }
        }
    }
}

/// The run's stale snapshots, collected by the domains as they complete.
#[derive(Default)]
pub(super) struct StaleSnapshots {
    pending: Mutex<Vec<StaleSnapshot>>,
}

/// At most this many removals run at once (each holds an open image).
const REMOVALS_AT_ONCE: usize = 64;

impl StaleSnapshots {
    /// Adds snapshots to remove at the end of the run.
    pub fn add(&self, snapshots: impl IntoIterator<Item = StaleSnapshot>) {
        self.lock().extend(snapshots);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<StaleSnapshot>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Removes them all, many at once; returns (domain index, message) for each failure.
    pub fn remove_all(&self) -> Vec<(usize, String)> {
        let pending = std::mem::take(&mut *self.lock());
        let mut failures = Vec::new();
        for wave in pending.chunks(REMOVALS_AT_ONCE) {
            std::thread::scope(|scope| {
                let handles: Vec<_> = wave
                    .iter()
                    .map(|s| (s.domain, scope.spawn(move || s.remove())))
                    .collect();
                for (domain, handle) in handles {
                    match handle.join() {
                        Ok(Ok(())) => {}
                        Ok(Err(message)) => failures.push((domain, message)),
                        Err(_) => failures.push((domain, "a snapshot removal panicked".into())),
                    }
                }
            });
        }
        failures
    }
}
