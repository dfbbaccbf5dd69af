//! A snapshot this run created, removed unless the backup decides to keep it.

use crate::ceph::{CephError, RbdImage};

/// Owns a freshly created snapshot. Dropping it removes the snapshot (logging failures), so
/// every error path cleans up; `keep` disarms it once the backup is complete.
pub struct SnapshotGuard<'i> {
    image: &'i RbdImage<'i>,
    name: String,
    armed: bool,
    create_ms: f64,
}

impl<'i> SnapshotGuard<'i> {
    /// Creates snapshot `name` of `image`.
    pub fn create(image: &'i RbdImage<'i>, name: &str) -> Result<Self, CephError> {
        let started = std::time::Instant::now();
        image.create_snapshot(name)?;
        let create_ms = started.elapsed().as_secs_f64() * 1000.0;
        Ok(SnapshotGuard {
            image,
            name: name.to_string(),
            armed: true,
            create_ms,
        })
    }

    /// How long the create took, in milliseconds (most of a freeze window is this).
    pub fn create_ms(&self) -> f64 {
        self.create_ms
    }

    /// Keeps the snapshot (it becomes the base of the next incremental backup).
    pub fn keep(mut self) -> String {
        self.armed = false;
        std::mem::take(&mut self.name)
    }
}

impl Drop for SnapshotGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            match self.image.remove_snapshot(&self.name) {
                Ok(()) => {}
                // Someone else removed it (the backup fails for that reason): nothing is left.
                Err(e) if e.errno() == Some(-libc::ENOENT) => log::info!(
                    "snapshot {}@{} was already removed by someone else",
                    self.image.spec(),
                    self.name
                ),
                Err(e) => log::error!(
                    "could not remove snapshot {}@{}: {e}; remove it with `rbd snap rm`",
                    self.image.spec(),
                    self.name
                ),
            }
        }
    }
}
