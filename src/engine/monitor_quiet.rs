//! Keeps the monitor quiet before a freeze.
//!
//! Creating a snapshot waits for the monitor's next proposal unless the monitor committed
//! nothing during the last `paxos_propose_interval` (1 s by default): a freeze that starts just
//! after a snapshot removal (which commits) stands still up to a second longer. When several
//! domains run at once, one domain's clean-up would so lengthen another's freeze. So removals
//! and freezes take turns: a removal waits while any freeze is running or waiting, and a freeze
//! waits until no removal runs and the last one ended more than the propose interval ago.
//! Freezes of different domains may overlap: their snapshot creates share proposals.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Ceph's default `paxos_propose_interval`.
pub const PROPOSE_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Default)]
struct State {
    freezing: usize,
    waiting_freezes: usize,
    removing: usize,
    last_removal_end: Option<Instant>,
}

/// Shared by the domains of one run.
pub struct MonitorQuiet {
    state: Mutex<State>,
    changed: Condvar,
    interval: Duration,
}

impl MonitorQuiet {
    /// Coordination with the given propose interval.
    pub fn new(interval: Duration) -> Self {
        MonitorQuiet {
            state: Mutex::default(),
            changed: Condvar::new(),
            interval,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until a freeze may start; hold the permit until the thaw.
    pub fn freeze_permit(&self) -> FreezePermit<'_> {
        let mut state = self.lock();
        state.waiting_freezes += 1;
        loop {
            if state.removing > 0 {
                state = self.changed.wait(state).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            let quiet_for = state.last_removal_end.map(|t| t.elapsed());
            match quiet_for {
                Some(elapsed) if elapsed < self.interval => {
                    let (s, _) = self
                        .changed
                        .wait_timeout(state, self.interval - elapsed)
                        .unwrap_or_else(|p| p.into_inner());
                    state = s;
                }
                _ => break,
            }
        }
        state.waiting_freezes -= 1;
        state.freezing += 1;
        FreezePermit { quiet: self }
    }

    /// Waits until snapshots may be removed (no freeze running or waiting).
    pub fn removal_permit(&self) -> RemovalPermit<'_> {
        let mut state = self.lock();
        while state.freezing > 0 || state.waiting_freezes > 0 {
            state = self.changed.wait(state).unwrap_or_else(|p| p.into_inner());
        }
        state.removing += 1;
        RemovalPermit { quiet: self }
    }
}

/// A running freeze.
pub struct FreezePermit<'q> {
    quiet: &'q MonitorQuiet,
}

impl Drop for FreezePermit<'_> {
    fn drop(&mut self) {
        self.quiet.lock().freezing -= 1;
        self.quiet.changed.notify_all();
    }
}

/// Running removals.
pub struct RemovalPermit<'q> {
    quiet: &'q MonitorQuiet,
}

impl Drop for RemovalPermit<'_> {
    fn drop(&mut self) {
        let mut state = self.quiet.lock();
        state.removing -= 1;
        state.last_removal_end = Some(Instant::now());
        drop(state);
        self.quiet.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[test]
    fn a_freeze_waits_out_the_propose_interval_after_a_removal() {
        let quiet = MonitorQuiet::new(Duration::from_millis(200));
        drop(quiet.removal_permit());
        let started = Instant::now();
        drop(quiet.freeze_permit());
        assert!(
            started.elapsed() >= Duration::from_millis(190),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn a_removal_waits_for_running_freezes() {
        let quiet = MonitorQuiet::new(Duration::from_millis(10));
        let removed = AtomicBool::new(false);
        std::thread::scope(|s| {
            let permit = quiet.freeze_permit();
            s.spawn(|| {
                let _r = quiet.removal_permit();
                removed.store(true, Ordering::SeqCst);
            });
            std::thread::sleep(Duration::from_millis(100));
            assert!(
                !removed.load(Ordering::SeqCst),
                "a removal ran during a freeze"
            );
            drop(permit);
        });
        assert!(removed.load(Ordering::SeqCst));
    }

    #[test]
    fn freezes_of_several_domains_overlap() {
        let quiet = MonitorQuiet::new(Duration::from_millis(500));
        let a = quiet.freeze_permit();
        let started = Instant::now();
        let b = quiet.freeze_permit();
        assert!(started.elapsed() < Duration::from_millis(50));
        drop((a, b));
    }
}
