//! A snapshot this run created, removed unless the backup decides to keep it.

use crate::ceph::{CephError, RbdImage};

/// Owns a freshly created snapshot. Dropping it removes the snapshot (logging failures), so
/// every error path cleans up; `keep` disarms it once the backup is complete.
pub struct SnapshotGuard<'i> {
    image: &'i RbdImage<'i>,
    name: String,
    armed: bool,
}

impl<'i> SnapshotGuard<'i> {
    /// Creates snapshot `name` of `image`.
    pub fn create(image: &'i RbdImage<'i>, name: &str) -> Result<Self, CephError> {
        image.create_snapshot(name)?;
        Ok(SnapshotGuard {
            image,
            name: name.to_string(),
            armed: true,
        })
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
            if let Err(e) = self.image.remove_snapshot(&self.name) {
                log::error!(
                    "could not remove snapshot {}@{}: {e}; remove it with `rbd snap rm`",
                    self.image.spec(),
                    self.name
                );
            }
        }
    }
}
