//! Taking backups out of a domain's folder, under its lock: quarantine (a backup whose
//! manifest cannot be read is renamed `.quarantine-<id>`, never removed) and removal.
//!
//! A backup is removed by renaming its folder to `.partial-<id>`, fsyncing the domain folder,
//! then deleting it: a crash part-way leaves a `.partial-` folder (never read as a backup and
//! removed by the next run), never a half-deleted folder that looks like a backup. Which
//! backups go, and in what order, is the caller's (`engine::prune`); the order is kept.

use std::fs;
use std::path::{Path, PathBuf};

use super::error::RepoError;
use super::layout::{PARTIAL_PREFIX, QUARANTINE_PREFIX};
use super::manifest::sync_dir;
use super::{io_err, DomainLock};

/// What became of a quarantine.
#[derive(Debug)]
pub enum Quarantine {
    /// Renamed to this path (not yet durable: `DomainLock::sync_folder`).
    Done(PathBuf),
    /// The quarantine name is taken; the folder is left in place.
    NameTaken(PathBuf),
    /// The rename to this path failed; the folder is left in place.
    Failed(PathBuf, std::io::Error),
}

/// What became of one backup `remove_backups` was asked to remove.
#[derive(Debug)]
pub enum Removal {
    /// Renamed and deleted.
    Removed,
    /// The rename to `.partial-<id>` (this path) failed: still a backup, left as it is.
    NotRenamed(PathBuf, std::io::Error),
    /// Renamed (no longer a backup), but the deletion of this path failed; the next backup or
    /// prune of the domain removes it.
    NotDeleted(PathBuf, std::io::Error),
}

impl DomainLock {
    /// The name backup `id` gets when quarantined.
    pub fn quarantine_path(&self, id: &str) -> PathBuf {
        self.domain_dir.join(format!("{QUARANTINE_PREFIX}{id}"))
    }

    /// Renames backup folder `folder` (of backup `id`) to `.quarantine-<id>`, unless that name
    /// exists. The domain folder is not fsynced: call `sync_folder` after the last one.
    pub fn quarantine(&self, id: &str, folder: &Path) -> Quarantine {
        let to = self.quarantine_path(id);
        if fs::symlink_metadata(&to).is_ok() {
            return Quarantine::NameTaken(to);
        }
        match fs::rename(folder, &to) {
            Ok(()) => Quarantine::Done(to),
            Err(e) => Quarantine::Failed(to, e),
        }
    }

    /// fsyncs the domain folder, so that renames in it survive a crash.
    pub fn sync_folder(&self) -> Result<(), RepoError> {
        sync_dir(&self.domain_dir)
    }

    /// The `.partial-*` folders of the domain, by name (what `remove_partial_backups` would
    /// remove).
    pub fn partial_backups(&self) -> Result<Vec<PathBuf>, RepoError> {
        let dir = &self.domain_dir;
        let mut found = Vec::new();
        for entry in fs::read_dir(dir).map_err(io_err("read folder", dir))? {
            let entry = entry.map_err(io_err("read folder", dir))?;
            if entry
                .file_name()
                .to_string_lossy()
                .starts_with(PARTIAL_PREFIX)
            {
                found.push(entry.path());
            }
        }
        found.sort();
        Ok(found)
    }

    /// Removes backups `(id, folder)`, in the order given: renames them all to
    /// `.partial-<id>`, fsyncs the domain folder (from here on none is a backup, whatever
    /// happens to the deletion), deletes them, fsyncs again. One outcome per backup, in order;
    /// `Err` only when an fsync fails.
    pub fn remove_backups(&self, backups: &[(String, PathBuf)]) -> Result<Vec<Removal>, RepoError> {
        let mut outcomes = Vec::with_capacity(backups.len());
        let mut renamed = Vec::new();
        for (index, (id, folder)) in backups.iter().enumerate() {
            let to = self.domain_dir.join(format!("{PARTIAL_PREFIX}{id}"));
            match fs::rename(folder, &to) {
                Ok(()) => {
                    renamed.push((index, to));
                    outcomes.push(Removal::Removed);
                }
                Err(e) => outcomes.push(Removal::NotRenamed(to, e)),
            }
        }
        if !renamed.is_empty() {
            self.sync_folder()?;
        }
        for (index, to) in renamed {
            if let Err(e) = fs::remove_dir_all(&to) {
                outcomes[index] = Removal::NotDeleted(to, e);
            }
        }
        self.sync_folder()?;
        Ok(outcomes)
    }
}

#[cfg(test)]
mod tests {
    use crate::repo::Repository;
    use std::fs;

    use super::*;

    const UUID: &str = "3b1f9b7e-8c43-4b71-9a5d-0c2d7f1e6a10";

    #[test]
    fn quarantine_renames_once_and_never_over_an_existing_name() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::open_or_create(dir.path()).unwrap();
        let lock = repo.lock_domain(UUID, "web").unwrap();
        let folder = repo.domain_dir(UUID).join("20261126T100000.000Z");
        fs::create_dir(&folder).unwrap();
        fs::write(folder.join("manifest.json"), b"{").unwrap();
        let Quarantine::Done(to) = lock.quarantine("20261126T100000.000Z", &folder) else {
            panic!("not quarantined");
        };
        assert_eq!(to, lock.quarantine_path("20261126T100000.000Z"));
        assert_eq!(fs::read(to.join("manifest.json")).unwrap(), b"{");
        lock.sync_folder().unwrap();
        fs::create_dir(&folder).unwrap();
        assert!(matches!(
            lock.quarantine("20261126T100000.000Z", &folder),
            Quarantine::NameTaken(_)
        ));
        assert!(folder.is_dir());
    }

    #[test]
    fn removal_leaves_nothing_and_reports_each_backup_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::open_or_create(dir.path()).unwrap();
        let lock = repo.lock_domain(UUID, "web").unwrap();
        let mut doomed = Vec::new();
        for id in ["20261126T110000.000Z", "20261126T100000.000Z"] {
            let folder = repo.domain_dir(UUID).join(id);
            fs::create_dir(&folder).unwrap();
            fs::write(folder.join("vda.raw"), b"data").unwrap();
            doomed.push((id.to_string(), folder));
        }
        // One that is not there: its rename fails, the others go on.
        doomed.insert(
            1,
            (
                "20261126T090000.000Z".into(),
                repo.domain_dir(UUID).join("20261126T090000.000Z"),
            ),
        );
        let outcomes = lock.remove_backups(&doomed).unwrap();
        assert!(matches!(outcomes[0], Removal::Removed));
        assert!(matches!(outcomes[1], Removal::NotRenamed(..)));
        assert!(matches!(outcomes[2], Removal::Removed));
        let left: Vec<_> = fs::read_dir(repo.domain_dir(UUID))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(left, [".lock"]);
        assert!(lock.partial_backups().unwrap().is_empty());
    }
}
