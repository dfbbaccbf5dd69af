//! The backup repository on disk: layout, marker, per-domain locks, staged backups that become
//! visible only when complete, and listing.
//!
//! A backup is written into `<domain>/.partial-<id>/`, one `disk_writer::DiskWriter` per disk
//! (it names, creates and fsyncs the disk's files and returns the disk's manifest record), then
//! the manifest is written and fsynced, the folder renamed to `<domain>/<id>/` and the domain
//! folder fsynced (`StagedBackup::commit`). Anything under a `.partial-` name is never a
//! backup: a crash leaves at most such a folder, which the next run of the same domain
//! removes. Backups leave a domain's folder only through `backup_removal` (quarantine, or a
//! rename to `.partial-` before deletion). Files are created 0600, folders 0700.
//!
//! Files: `layout` (where things live), `manifest` (the record of a backup, `DiskFormat`),
//! `disk_writer` (a disk's files, written), `image_file`, `hashing_writer`, `rbd_diff`,
//! `block_table`, `leaf_table` (the file formats), `chain` and `stored_file` (reading back,
//! never through links or FIFOs), `backup_removal`.

pub mod backup_removal;
pub mod block_table;
pub mod chain;
pub mod chain_image;
pub mod disk_writer;
pub mod error;
pub mod extent_source;
pub mod file_hashes;
pub mod hashing_writer;
pub mod image_file;
pub mod layout;
pub mod leaf_table;
pub mod manifest;
pub mod rbd_diff;
pub mod stored_file;

use std::fs::{self, File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

pub use disk_writer::{DiskContent, DiskOrigin, DiskSink, DiskWriter, Lineage};
pub use error::RepoError;
pub use image_file::SparseImageWriter;
pub use manifest::{
    read_manifest, write_manifest, BackupKind, BackupManifest, Consistency, DiskFormat, DiskRecord,
    DomainRecord, FreezeReport, SnapshotRecord,
};

use layout::{
    domain_folder, LOCK_FILE, MANIFEST_FILE, MARKER_FILE, PARTIAL_PREFIX, QUARANTINE_PREFIX,
};

/// A backup folder with its manifest, or why the manifest cannot be read.
pub type ListedBackup = (PathBuf, Result<BackupManifest, RepoError>);

/// The marker file's content.
#[derive(serde::Serialize, serde::Deserialize)]
struct RepoMarker {
    format: String,
    version: u32,
    /// Random id naming this repository's snapshots in Ceph, so two repositories backing up the
    /// same image never remove each other's incremental bases.
    #[serde(default)]
    id: Option<String>,
}

fn new_repo_id() -> String {
    let mut bytes = [0u8; 6];
    let random =
        File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes));
    if random.is_err() {
        // Unlikely; time and pid still make clashes improbable.
        let seed = format!("{:?}{}", std::time::SystemTime::now(), std::process::id());
        bytes.copy_from_slice(&blake3::hash(seed.as_bytes()).as_bytes()[..6]);
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Creates a new private file (mode 0600); an existing file is an error, never overwritten.
pub(crate) fn create_new_file(path: &Path) -> Result<File, RepoError> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err("create", path))
}

pub(crate) fn io_err(
    action: &'static str,
    path: &Path,
) -> impl FnOnce(std::io::Error) -> RepoError {
    let path = path.to_path_buf();
    move |source| RepoError::Io {
        action,
        path,
        source,
    }
}

fn create_private_dir(path: &Path) -> Result<(), RepoError> {
    match fs::DirBuilder::new().mode(0o700).create(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && path.is_dir() => Ok(()),
        Err(e) => Err(RepoError::Io {
            action: "create folder",
            path: path.to_path_buf(),
            source: e,
        }),
    }
}

/// A backup repository folder.
#[derive(Debug, Clone)]
pub struct Repository {
    root: PathBuf,
    id: String,
}

impl Repository {
    /// Opens the repository at `root`, creating it if the folder is missing or empty.
    /// A non-empty folder without the marker is refused, so a typo never fills a random folder.
    pub fn open_or_create(root: &Path) -> Result<Self, RepoError> {
        let marker = root.join(MARKER_FILE);
        if marker.is_file() {
            return Self::open(root);
        }
        if root.exists() {
            let mut entries = fs::read_dir(root).map_err(io_err("read folder", root))?;
            if entries.next().is_some() {
                return Err(RepoError::NotARepository {
                    path: root.to_path_buf(),
                    marker: MARKER_FILE,
                });
            }
        } else {
            if let Some(parent) = root.parent().filter(|p| !p.as_os_str().is_empty()) {
                fs::create_dir_all(parent).map_err(io_err("create folder", parent))?;
            }
            create_private_dir(root)?;
        }
        let id = new_repo_id();
        let body = RepoMarker {
            format: "virt-rbd-backup-repo".into(),
            version: 1,
            id: Some(id.clone()),
        };
        let tmp = root.join(".marker.tmp");
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io_err("create", &tmp))?;
        let text = serde_json::to_string(&body).unwrap_or_default();
        std::io::Write::write_all(&mut file, text.as_bytes()).map_err(io_err("write", &tmp))?;
        file.sync_all().map_err(io_err("fsync", &tmp))?;
        fs::rename(&tmp, &marker).map_err(io_err("rename into place", &marker))?;
        manifest::sync_dir(root)?;
        Ok(Repository {
            root: root.to_path_buf(),
            id,
        })
    }

    /// Opens an existing repository (for reading).
    pub fn open(root: &Path) -> Result<Self, RepoError> {
        let marker = root.join(MARKER_FILE);
        if marker.is_file() {
            let bytes = stored_file::read_stored_file(&marker, stored_file::MAX_MARKER_BYTES)?;
            let parsed: RepoMarker =
                serde_json::from_slice(&bytes).map_err(|e| RepoError::BadManifest {
                    path: marker.clone(),
                    message: e.to_string(),
                })?;
            if parsed.format != "virt-rbd-backup-repo" || parsed.version != 1 {
                return Err(RepoError::BadManifest {
                    path: marker,
                    message: format!(
                        "format {:?} version {} is not a repository this tool reads",
                        parsed.format, parsed.version
                    ),
                });
            }
            let id = parsed
                .id
                .filter(|i| !i.is_empty() && i.chars().all(|c| c.is_ascii_hexdigit()))
                .unwrap_or_else(|| {
                    // A marker without an id: derive a stable one from the path.
                    blake3::hash(root.to_string_lossy().as_bytes()).to_hex()[..12].to_string()
                });
            Ok(Repository {
                root: root.to_path_buf(),
                id,
            })
        } else if !root.exists() {
            Err(RepoError::NotFound {
                what: format!(
                    "there is no repository at {} (the folder does not exist); check --repo",
                    root.display()
                ),
            })
        } else {
            Err(RepoError::NotARepository {
                path: root.to_path_buf(),
                marker: MARKER_FILE,
            })
        }
    }

    /// The id that names this repository's snapshots in Ceph.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The repository's folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The folder of a domain.
    pub fn domain_dir(&self, uuid: &str) -> PathBuf {
        self.root.join(domain_folder(uuid))
    }

    /// Takes the domain's lock (non-blocking). Held until the guard drops; dies with the process.
    pub fn lock_domain(&self, uuid: &str, name: &str) -> Result<DomainLock, RepoError> {
        let dir = self.domain_dir(uuid);
        create_private_dir(&dir)?;
        let path = dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            // Not through a link, and a FIFO planted there must not block the open.
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(&path)
            .map_err(io_err("open lock", &path))?;
        let kind = file.metadata().map_err(io_err("stat", &path))?.file_type();
        if !kind.is_file() {
            return Err(RepoError::NotARegularFile {
                path,
                found: "not a regular file",
            });
        }
        // Test hook: a second process plays another host on an NFS folder where flock is not
        // shared between hosts (`local_lock=flock`, or NFSv3 without lockd), so the cluster
        // lock is the only exclusion left. Never set outside tests.
        let rc = if std::env::var_os("VIRT_RBD_BACKUP_TEST_UNSHARED_FOLDER_LOCK").is_some() {
            0
        } else {
            // SAFETY: flock on a file descriptor we own; no memory is involved.
            unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) }
        };
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                return Err(RepoError::Locked {
                    domain: name.to_string(),
                    path,
                });
            }
            return Err(RepoError::Io {
                action: "lock",
                path,
                source: err,
            });
        }
        Ok(DomainLock {
            _file: file,
            domain_dir: dir,
        })
    }

    /// The complete backups of a domain, oldest first in the order of `history_order` (by
    /// sequence, then id). Unreadable manifests are returned as errors in place, so `list` can
    /// show them without hiding the others. A backup folder that is a symbolic link is not
    /// followed: it is listed with a `NotARegularFile` error.
    pub fn backups_of(&self, uuid: &str) -> Result<Vec<ListedBackup>, RepoError> {
        let dir = self.domain_dir(uuid);
        let mut found = Vec::new();
        if !dir.is_dir() {
            return Ok(found);
        }
        for entry in fs::read_dir(&dir).map_err(io_err("read folder", &dir))? {
            let entry = entry.map_err(io_err("read folder", &dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            let path = entry.path();
            let kind = entry.file_type().map_err(io_err("stat", &path))?;
            if kind.is_symlink() {
                found.push((
                    path.clone(),
                    Err(RepoError::NotARegularFile {
                        path,
                        found: "a symbolic link",
                    }),
                ));
            } else if kind.is_dir() {
                found.push((path.clone(), read_manifest(&path.join(MANIFEST_FILE))));
            }
        }
        found.sort_by(|a, b| history_order(a).cmp(&history_order(b)));
        Ok(found)
    }

    /// The folders prune set aside (`.quarantine-<id>`) in a domain: (id, folder), by id.
    pub fn quarantined_of(&self, uuid: &str) -> Result<Vec<(String, PathBuf)>, RepoError> {
        let dir = self.domain_dir(uuid);
        let mut found = Vec::new();
        if !dir.is_dir() {
            return Ok(found);
        }
        for entry in fs::read_dir(&dir).map_err(io_err("read folder", &dir))? {
            let entry = entry.map_err(io_err("read folder", &dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(id) = name.strip_prefix(QUARANTINE_PREFIX) {
                found.push((id.to_string(), entry.path()));
            }
        }
        found.sort();
        Ok(found)
    }

    /// UUID folders of all domains in the repository.
    pub fn domain_uuids(&self) -> Result<Vec<String>, RepoError> {
        let mut uuids = Vec::new();
        for entry in fs::read_dir(&self.root).map_err(io_err("read folder", &self.root))? {
            let entry = entry.map_err(io_err("read folder", &self.root))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if entry.path().is_dir() && !name.starts_with('.') {
                uuids.push(name);
            }
        }
        uuids.sort();
        Ok(uuids)
    }
}

/// Where a listed backup stands in its domain's history: by sequence, then by folder name
/// (the id). Backups without a sequence (manifest version 1, or unreadable) come first, in id
/// order, as every backup did before sequences; see `manifest`'s module doc.
pub fn history_order(backup: &ListedBackup) -> (Option<u64>, &std::ffi::OsStr) {
    (
        backup.1.as_ref().ok().and_then(|m| m.sequence),
        backup.0.file_name().unwrap_or_default(),
    )
}

/// The lock on one domain's folder.
pub struct DomainLock {
    _file: File,
    domain_dir: PathBuf,
}

impl DomainLock {
    /// Removes leftovers of interrupted runs of this domain (`.partial-*` folders); returns
    /// what it removed. Only safe while the lock is held.
    pub fn remove_partial_backups(&self) -> Result<Vec<PathBuf>, RepoError> {
        let mut removed = Vec::new();
        for entry in
            fs::read_dir(&self.domain_dir).map_err(io_err("read folder", &self.domain_dir))?
        {
            let entry = entry.map_err(io_err("read folder", &self.domain_dir))?;
            if entry
                .file_name()
                .to_string_lossy()
                .starts_with(PARTIAL_PREFIX)
            {
                let path = entry.path();
                fs::remove_dir_all(&path).map_err(io_err("remove partial backup", &path))?;
                removed.push(path);
            }
        }
        Ok(removed)
    }

    /// The sequence of the next backup of this domain: one more than the largest sequence any
    /// manifest in the domain's folder records, complete, quarantined or of a newer version
    /// (read leniently, so a backup this build cannot read still counts), 1 if none does. Under
    /// the lock, so two runs never take the same number.
    pub fn next_sequence(&self) -> Result<u64, RepoError> {
        let mut largest = 0;
        for entry in
            fs::read_dir(&self.domain_dir).map_err(io_err("read folder", &self.domain_dir))?
        {
            let entry = entry.map_err(io_err("read folder", &self.domain_dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') && !name.starts_with(QUARANTINE_PREFIX) {
                continue;
            }
            if let Some(hints) = manifest::ManifestHints::read(&entry.path().join(MANIFEST_FILE)) {
                largest = largest.max(hints.sequence.unwrap_or(0));
            }
        }
        Ok(largest + 1)
    }

    /// A backup id for a start at `unix_ms` (milliseconds) that no folder of this domain uses
    /// yet, complete, partial or quarantined: the clock's id, or the next free millisecond
    /// after it. After the clock steps back, a new backup's time may be that of an old one;
    /// ids must stay unique because they name folders and snapshots.
    pub fn free_backup_id(&self, unix_ms: i64) -> String {
        let mut ms = unix_ms;
        loop {
            let id =
                crate::plan::backup_id_from_unix(ms.div_euclid(1000), ms.rem_euclid(1000) as u32);
            let taken = [
                id.clone(),
                format!("{PARTIAL_PREFIX}{id}"),
                format!("{QUARANTINE_PREFIX}{id}"),
            ]
            .iter()
            .any(|name| fs::symlink_metadata(self.domain_dir.join(name)).is_ok());
            if !taken {
                return id;
            }
            ms += 1;
        }
    }

    /// Starts writing backup `backup_id`; holding `&self` proves the lock is held.
    pub fn stage_backup(&self, backup_id: &str) -> Result<StagedBackup<'_>, RepoError> {
        let final_dir = self.domain_dir.join(layout::safe_component(backup_id));
        if final_dir.exists() {
            return Err(RepoError::Io {
                action: "create backup folder",
                path: final_dir,
                source: std::io::Error::from(std::io::ErrorKind::AlreadyExists),
            });
        }
        let staging_dir = self.domain_dir.join(format!(
            "{PARTIAL_PREFIX}{}",
            layout::safe_component(backup_id)
        ));
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&staging_dir)
            .map_err(io_err("create folder", &staging_dir))?;
        Ok(StagedBackup {
            staging_dir,
            final_dir,
            committed: false,
            _lock: self,
        })
    }
}

/// A backup being written. Dropped without `commit`, its folder is removed: a failed backup
/// leaves nothing that looks like a backup.
pub struct StagedBackup<'l> {
    staging_dir: PathBuf,
    final_dir: PathBuf,
    committed: bool,
    _lock: &'l DomainLock,
}

impl StagedBackup<'_> {
    /// Starts writing one disk of the backup (`disk_writer`: it names and creates the disk's
    /// files); `compress` is a zstd level.
    pub fn disk_writer(
        &self,
        origin: DiskOrigin,
        compress: Option<i32>,
    ) -> Result<DiskWriter<'_>, RepoError> {
        DiskWriter::create(&self.staging_dir, origin, compress)
    }

    /// Where a file of the backup is written (tests plant files with it).
    #[cfg(test)]
    fn file_path(&self, file_name: &str) -> PathBuf {
        self.staging_dir.join(file_name)
    }

    /// The folder the backup will have once committed.
    pub fn final_dir(&self) -> &Path {
        &self.final_dir
    }

    /// Writes the manifest and renames the folder into place. The disk files must have been
    /// fsynced (`DiskWriter::finish`).
    pub fn commit(mut self, manifest: &BackupManifest) -> Result<PathBuf, RepoError> {
        write_manifest(&self.staging_dir.join(MANIFEST_FILE), manifest)?;
        fs::rename(&self.staging_dir, &self.final_dir)
            .map_err(io_err("rename into place", &self.final_dir))?;
        self.committed = true;
        if let Some(parent) = self.final_dir.parent() {
            manifest::sync_dir(parent)?;
        }
        Ok(self.final_dir.clone())
    }
}

impl Drop for StagedBackup<'_> {
    fn drop(&mut self) {
        if !self.committed {
            if let Err(e) = fs::remove_dir_all(&self.staging_dir) {
                log::error!(
                    "could not remove the partial backup {}: {e}; remove it by hand",
                    self.staging_dir.display()
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UUID: &str = "3b1f9b7e-8c43-4b71-9a5d-0c2d7f1e6a10";

    #[test]
    fn a_non_empty_foreign_folder_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("important.txt"), "x").unwrap();
        let err = Repository::open_or_create(dir.path()).unwrap_err();
        assert!(matches!(err, RepoError::NotARepository { .. }), "{err}");
    }

    #[test]
    fn a_new_repository_is_private_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("repo");
        Repository::open_or_create(&root).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            fs::metadata(&root).unwrap().permissions().mode() & 0o777,
            0o700
        );
        Repository::open_or_create(&root).unwrap();
        Repository::open(&root).unwrap();
    }

    #[test]
    fn a_second_lock_on_the_same_domain_is_refused_until_released() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::open_or_create(dir.path()).unwrap();
        let lock = repo.lock_domain(UUID, "web").unwrap();
        let err = repo
            .lock_domain(UUID, "web")
            .err()
            .expect("second lock must fail");
        assert!(
            err.to_string().contains("another virt-rbd-backup run"),
            "{err}"
        );
        drop(lock);
        repo.lock_domain(UUID, "web").unwrap();
    }

    #[test]
    fn an_uncommitted_backup_leaves_nothing_and_a_committed_one_is_listed() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::open_or_create(dir.path()).unwrap();
        let lock = repo.lock_domain(UUID, "web").unwrap();
        {
            let staged = lock.stage_backup("20261126T000000.000Z").unwrap();
            fs::write(staged.file_path("vda.raw"), b"partial").unwrap();
        }
        assert!(repo.backups_of(UUID).unwrap().is_empty());
        assert_eq!(
            fs::read_dir(repo.domain_dir(UUID)).unwrap().count(),
            1,
            "only the lock file may remain"
        );

        let staged = lock.stage_backup("20261126T000001.000Z").unwrap();
        let mut m = manifest::tests::sample();
        m.backup_id = "20261126T000001.000Z".into();
        fs::write(staged.file_path("vda.raw"), b"data").unwrap();
        let path = staged.commit(&m).unwrap();
        let listed = repo.backups_of(UUID).unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].0, path);
        assert_eq!(listed[0].1.as_ref().unwrap().backup_id, m.backup_id);
    }

    #[test]
    fn leftovers_of_a_killed_run_are_removed_under_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::open_or_create(dir.path()).unwrap();
        let lock = repo.lock_domain(UUID, "web").unwrap();
        let leftover = repo.domain_dir(UUID).join(".partial-20261126T000000.000Z");
        fs::create_dir(&leftover).unwrap();
        assert_eq!(
            lock.remove_partial_backups().unwrap(),
            vec![leftover.clone()]
        );
        assert!(!leftover.exists());
    }

    /// A committed backup with id `id` and sequence `sequence` (None: a version 1 manifest).
    fn commit(lock: &DomainLock, id: &str, sequence: Option<u64>) {
        let staged = lock.stage_backup(id).unwrap();
        let mut m = manifest::tests::sample();
        m.backup_id = id.into();
        if sequence.is_none() {
            m.version = 1;
        }
        m.sequence = sequence;
        staged.commit(&m).unwrap();
    }

    fn listed_ids(repo: &Repository) -> Vec<String> {
        repo.backups_of(UUID)
            .unwrap()
            .iter()
            .map(|(p, _)| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn after_a_clock_step_back_backups_are_ordered_by_sequence_not_id() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::open_or_create(dir.path()).unwrap();
        let lock = repo.lock_domain(UUID, "web").unwrap();
        // Two backups of an older version (no sequence), then the clock stepped back an hour
        // twice: each new id sorts before every earlier one.
        commit(&lock, "20261126T100000.000Z", None);
        commit(&lock, "20261126T110000.000Z", None);
        assert_eq!(lock.next_sequence().unwrap(), 1);
        commit(&lock, "20261126T103000.000Z", Some(1));
        assert_eq!(lock.next_sequence().unwrap(), 2);
        commit(&lock, "20261126T093000.000Z", Some(2));
        assert_eq!(
            listed_ids(&repo),
            [
                "20261126T100000.000Z",
                "20261126T110000.000Z",
                "20261126T103000.000Z",
                "20261126T093000.000Z"
            ]
        );
        let (latest, m) = repo.find_backup(UUID, Some("latest")).unwrap();
        assert_eq!(m.backup_id, "20261126T093000.000Z");
        assert!(latest.ends_with("20261126T093000.000Z"));
    }

    #[test]
    fn the_next_sequence_counts_backups_this_build_cannot_read() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::open_or_create(dir.path()).unwrap();
        let lock = repo.lock_domain(UUID, "web").unwrap();
        commit(&lock, "20261126T100000.000Z", Some(4));
        // A newer version's manifest and a quarantined one still hold their sequence.
        let newer = repo.domain_dir(UUID).join("20261126T090000.000Z");
        fs::create_dir(&newer).unwrap();
        fs::write(
            newer.join(MANIFEST_FILE),
            r#"{"format": "virt-rbd-backup-manifest", "version": 9, "sequence": 9, "disks": 3}"#,
        )
        .unwrap();
        assert_eq!(lock.next_sequence().unwrap(), 10);
        let quarantined = repo
            .domain_dir(UUID)
            .join(".quarantine-20261126T080000.000Z");
        fs::create_dir(&quarantined).unwrap();
        fs::write(quarantined.join(MANIFEST_FILE), r#"{"sequence": 12, "vers"#).unwrap();
        assert_eq!(lock.next_sequence().unwrap(), 10, "truncated: unknown");
        fs::write(quarantined.join(MANIFEST_FILE), r#"{"sequence": 12}"#).unwrap();
        assert_eq!(lock.next_sequence().unwrap(), 13);
        assert_eq!(
            repo.quarantined_of(UUID).unwrap(),
            [("20261126T080000.000Z".to_string(), quarantined)]
        );
    }

    #[test]
    fn a_backup_id_the_clock_repeats_is_made_unique() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::open_or_create(dir.path()).unwrap();
        let lock = repo.lock_domain(UUID, "web").unwrap();
        let ms = 1_795_686_763_007; // 20261126T095243.007Z
        assert_eq!(lock.free_backup_id(ms), "20261126T095243.007Z");
        commit(&lock, "20261126T095243.007Z", Some(1));
        fs::create_dir(
            repo.domain_dir(UUID)
                .join(".quarantine-20261126T095243.008Z"),
        )
        .unwrap();
        fs::create_dir(repo.domain_dir(UUID).join(".partial-20261126T095243.009Z")).unwrap();
        assert_eq!(lock.free_backup_id(ms), "20261126T095243.010Z");
        assert_eq!(lock.free_backup_id(ms - 1), "20261126T095243.006Z");
    }

    #[test]
    fn a_backup_folder_that_is_a_symlink_is_listed_as_unreadable_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::open_or_create(dir.path().join("repo").as_path()).unwrap();
        let lock = repo.lock_domain(UUID, "web").unwrap();
        commit(&lock, "20261126T100000.000Z", Some(1));
        let elsewhere = dir.path().join("elsewhere");
        fs::create_dir(&elsewhere).unwrap();
        let mut m = manifest::tests::sample();
        m.backup_id = "20261126T110000.000Z".into();
        m.sequence = Some(2);
        write_manifest(&elsewhere.join(MANIFEST_FILE), &m).unwrap();
        std::os::unix::fs::symlink(
            &elsewhere,
            repo.domain_dir(UUID).join("20261126T110000.000Z"),
        )
        .unwrap();
        let listed = repo.backups_of(UUID).unwrap();
        assert_eq!(listed.len(), 2);
        let link = listed
            .iter()
            .find(|(p, _)| p.ends_with("20261126T110000.000Z"))
            .unwrap();
        assert!(matches!(link.1, Err(RepoError::NotARegularFile { .. })));
        let (_, latest) = repo.find_backup(UUID, None).unwrap();
        assert_eq!(latest.backup_id, "20261126T100000.000Z");
    }

    #[test]
    fn a_lock_file_that_is_a_fifo_or_a_link_is_refused_without_hanging() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::open_or_create(dir.path()).unwrap();
        fs::create_dir(repo.domain_dir(UUID)).unwrap();
        let lock = repo.domain_dir(UUID).join(LOCK_FILE);
        stored_file::tests::make_fifo(&lock);
        assert!(repo.lock_domain(UUID, "web").is_err());
        fs::remove_file(&lock).unwrap();
        std::os::unix::fs::symlink("/dev/null", &lock).unwrap();
        assert!(repo.lock_domain(UUID, "web").is_err());
    }
}
