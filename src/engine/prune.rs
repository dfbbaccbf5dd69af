//! Prune: carries out the retention marks of `plan::retention` on the repository, one domain
//! at a time, under the domain's lock so it never races a backup of that domain.
//!
//! What is removed, per domain:
//! - backups marked `Remove` (not selected by any keep option, or with a broken chain);
//! - `.partial-*` folders (interrupted runs).
//!
//! What is set aside, never removed: a folder named like a backup id whose manifest is
//! missing, damaged (not JSON, fails validation), too large, or not a regular file (a link, a
//! FIFO) is *quarantined*: renamed to `.quarantine-<id>` and reported. One unreadable manifest
//! must never cost a chain: the quarantined backup is kept, with every ancestor it can be
//! told to need (the `parent` of a manifest that is still JSON, else the start snapshot named
//! in the header of its rbd diff files) and every backup whose chain goes through it, and none
//! of them counts for the keep rules (`plan::retention`, "Unreadable backups"). A later prune
//! finds the `.quarantine-` folder and keeps the same chain again, and reports it again, until
//! an operator repairs the manifest and renames the folder back, or removes it. (A backup run
//! ignores such folders: its next incremental builds on the newest readable backup.)
//!
//! What is never touched: anything whose name is not a backup id or a `.partial-` name (an
//! operator's notes, `lost+found`), domain folders whose name is not a libvirt UUID, a
//! manifest written by a newer version of the tool (`RepoError::NewerManifest`), a folder whose
//! manifest cannot be read for another reason than damage (permissions, I/O errors), a folder
//! whose manifest names another backup id. These are kept with their chains like quarantined
//! ones, in place, and reported as errors, for an operator to look at. Ceph snapshots are never
//! touched either: the newest backup's snapshots are the base of the next incremental and are
//! managed by backups.
//!
//! "Newest" is by the manifests' sequence, not by id or clock (see `repo::manifest`).
//!
//! Renames, removals and their fsyncs are `repo::backup_removal`'s (a removed backup is first
//! renamed `.partial-<id>`, so a crash never leaves a half-deleted folder that looks like a
//! backup). Removal goes newest first, so an interruption cannot leave an incremental without
//! its parent.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::Error;
use crate::plan::retention::{compute_prune, parse_backup_id, BackupEntry, KeepOptions, PruneMark};
use crate::plan::snapshot_backup_id;
use crate::repo::backup_removal::{Quarantine, Removal};
use crate::repo::disk_writer::DiskFileNames;
use crate::repo::layout::{is_canonical_uuid, MANIFEST_FILE, PARTIAL_PREFIX};
use crate::repo::manifest::ManifestHints;
use crate::repo::rbd_diff::RbdDiffReader;
use crate::repo::stored_file::open_stored_file;
use crate::repo::{BackupManifest, DiskFormat, DomainLock, RepoError, Repository};

/// Version of the JSON prune report.
pub const PRUNE_REPORT_VERSION: u32 = 1;

/// What a prune run did (or, with `dry_run`, would do).
#[derive(Debug, Clone, Serialize)]
pub struct PruneReport {
    /// Report format version.
    pub version: u32,
    /// Nothing was removed; `removed` lists what would have been.
    pub dry_run: bool,
    /// One entry per domain folder considered.
    pub domains: Vec<DomainPruneReport>,
    /// A block repository's sweep of unreferenced blocks (null for the folder layout).
    pub blocks: Option<SweepSummary>,
}

/// What the sweep of a block repository did (or would do).
#[derive(Debug, Clone, Serialize)]
pub struct SweepSummary {
    /// Blocks the remaining backups name.
    pub kept: u64,
    /// Unreferenced blocks removed.
    pub removed: u64,
    /// Their stored bytes.
    pub bytes_removed: u64,
}

impl PruneReport {
    /// Whether any domain failed, was skipped or has errors (for the exit status).
    pub fn has_problems(&self) -> bool {
        self.domains
            .iter()
            .any(|d| d.status != PruneStatus::Done || !d.errors.is_empty())
    }
}

/// How a domain's prune ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PruneStatus {
    /// Marks computed and carried out (errors on single backups are in `errors`).
    Done,
    /// Not pruned because another run holds the domain's lock; see `message`.
    Skipped,
    /// Could not be pruned (folder unreadable, lock failed); see `message`.
    Failed,
}

/// The prune of one domain.
#[derive(Debug, Clone, Serialize)]
pub struct DomainPruneReport {
    /// Domain UUID (the folder name).
    pub uuid: String,
    /// Domain name in the newest readable manifest.
    pub name: Option<String>,
    /// How it ended.
    pub status: PruneStatus,
    /// Why the domain was skipped or failed.
    pub message: Option<String>,
    /// Backups kept, oldest first.
    pub kept: Vec<KeptBackup>,
    /// Folders removed (or that would be, in a dry run), oldest first.
    pub removed: Vec<RemovedBackup>,
    /// Problems with single folders; each says what was done about it.
    pub errors: Vec<String>,
}

/// A kept backup.
#[derive(Debug, Clone, Serialize)]
pub struct KeptBackup {
    /// Backup id.
    pub backup_id: String,
    /// Every reason, for example `keep-daily`, `needed by 20261126T095243.007Z`.
    pub reasons: Vec<String>,
}

/// A removed folder.
#[derive(Debug, Clone, Serialize)]
pub struct RemovedBackup {
    /// Backup id (for a `.partial-` folder, the id it was being written as).
    pub backup_id: String,
    /// The folder.
    pub path: String,
    /// Why, for example `not selected by any keep option`, `broken chain (parent X missing)`.
    pub reason: String,
}

/// Applies `keep` to the backups of one domain (`domain`: name or UUID) or of all domains in
/// the repository at `repo`. With `dry_run` nothing is removed. `Err` means nothing was
/// done: no keep option, no repository, or a named domain without backups; problems of one
/// domain or one backup are in the report and the others go on.
pub fn prune(
    repo: &Path,
    domain: Option<&str>,
    keep: &KeepOptions,
    dry_run: bool,
) -> Result<PruneReport, Error> {
    keep.validate().map_err(|e| Error::Usage(e.to_string()))?;
    let repository = Repository::open(repo)?;
    let mut selected = Vec::new();
    for uuid in repository.domain_uuids()? {
        if !is_canonical_uuid(&uuid) {
            // Not made by this tool (every domain folder is a libvirt UUID): never touched.
            log::debug!("prune: {uuid} in {} is not a domain folder", repo.display());
            continue;
        }
        // Read without the lock, only to learn names; decisions are taken on a re-read
        // under the lock.
        let names = domain_names(&repository, &uuid);
        if domain.is_none_or(|d| d == uuid || names.iter().any(|n| n == d)) {
            selected.push((uuid, names.into_iter().next()));
        }
    }
    if let (Some(d), true) = (domain, selected.is_empty()) {
        return Err(Error::NoBackupsOfDomain {
            domain: d.to_string(),
            repo: repo.to_path_buf(),
        });
    }
    let domains = selected
        .into_iter()
        .map(|(uuid, name)| prune_domain(&repository, &uuid, name, keep, dry_run))
        .collect();
    Ok(PruneReport {
        version: PRUNE_REPORT_VERSION,
        dry_run,
        domains,
        blocks: None,
    })
}

/// Names of a domain in its readable manifests, newest first.
fn domain_names(repo: &Repository, uuid: &str) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for (_, manifest) in repo.backups_of(uuid).unwrap_or_default().into_iter().rev() {
        if let Ok(m) = manifest {
            if !names.contains(&m.domain.name) {
                names.push(m.domain.name);
            }
        }
    }
    names
}

/// What a folder named like a backup id turned out to be.
enum Found {
    /// A backup retention decides on: its sequence and parent.
    Backup {
        sequence: Option<u64>,
        parent: Option<String>,
        domain_name: String,
    },
    /// Its manifest is damaged or missing: quarantined (renamed, reported, kept with its chain).
    Damaged(RepoError),
    /// Cannot be judged here (newer version, I/O error, another id): left in place, kept with
    /// its chain, reported.
    Unusable(String),
}

fn classify(name: &str, path: &Path, manifest: Result<BackupManifest, RepoError>) -> Found {
    match manifest {
        Ok(m) if m.backup_id == name => Found::Backup {
            sequence: m.sequence,
            parent: m.parent,
            domain_name: m.domain.name,
        },
        Ok(m) => Found::Unusable(format!(
            "{}: the manifest names backup {}, not the folder's name; left alone, kept with its chain",
            path.display(),
            m.backup_id
        )),
        Err(RepoError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            Found::Damaged(RepoError::NotFound {
                what: format!("{} has no {MANIFEST_FILE}", path.display()),
            })
        }
        Err(
            e @ (RepoError::BadManifest { .. }
            | RepoError::NotARegularFile { .. }
            | RepoError::TooLarge { .. }),
        ) => Found::Damaged(e),
        Err(e @ RepoError::NewerManifest { .. }) => {
            Found::Unusable(format!("{e}; kept with its chain"))
        }
        Err(e) => Found::Unusable(format!("{e}; left alone, kept with its chain")),
    }
}

/// The parent a backup whose manifest cannot be read can still be told to have: the `parent`
/// of a manifest that is still JSON, else the start snapshot in the header of one of its rbd
/// diff files (snapshot names end with the backup id; see `plan::naming`). `None`: a full, or
/// nothing can be told (then nothing older is kept for it; it could not be restored anyway).
fn parent_hint(folder: &Path, repo_id: &str) -> Option<String> {
    if let Some(parent) = ManifestHints::read(&folder.join(MANIFEST_FILE)).and_then(|h| h.parent) {
        return Some(parent);
    }
    // Named by the disk writer: its names say which files are diff streams, and compressed.
    let mut diffs: Vec<(PathBuf, DiskFormat)> = fs::read_dir(folder)
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let format = DiskFileNames::stored_format(&e.file_name().to_string_lossy())?;
            Some((e.path(), format))
        })
        .collect();
    diffs.sort_by(|a, b| a.0.cmp(&b.0));
    diffs.into_iter().find_map(|(path, format)| {
        let (file, _) = open_stored_file(&path, None).ok()?;
        let stream: Box<dyn std::io::Read> = match format {
            DiskFormat::SparseRaw => return None,
            DiskFormat::RbdDiffV1 => Box::new(std::io::BufReader::new(file)),
            DiskFormat::RbdDiffV1Zstd => Box::new(zstd::Decoder::new(file).ok()?),
        };
        let reader = RbdDiffReader::new(stream).ok()?;
        let id = snapshot_backup_id(reader.from_snap()?, repo_id)?;
        parse_backup_id(id).map(|_| id.to_string())
    })
}

fn prune_domain(
    repo: &Repository,
    uuid: &str,
    name: Option<String>,
    keep: &KeepOptions,
    dry_run: bool,
) -> DomainPruneReport {
    let mut report = DomainPruneReport {
        uuid: uuid.to_string(),
        name,
        status: PruneStatus::Done,
        message: None,
        kept: Vec::new(),
        removed: Vec::new(),
        errors: Vec::new(),
    };
    let lock = match repo.lock_domain(uuid, report.name.as_deref().unwrap_or(uuid)) {
        Ok(lock) => lock,
        Err(e) => {
            report.status = match e {
                RepoError::Locked { .. } => PruneStatus::Skipped,
                _ => PruneStatus::Failed,
            };
            report.message = Some(e.to_string());
            return report;
        }
    };
    if let Err(e) = prune_locked(repo, &lock, uuid, keep, dry_run, &mut report) {
        report.status = PruneStatus::Failed;
        report.message = Some(e.to_string());
    }
    report
}

fn prune_locked(
    repo: &Repository,
    lock: &DomainLock,
    uuid: &str,
    keep: &KeepOptions,
    dry_run: bool,
    report: &mut DomainPruneReport,
) -> Result<(), Error> {
    // Interrupted runs first, so their names are free for the renames below.
    let partials = if dry_run {
        lock.partial_backups()?
    } else {
        lock.remove_partial_backups()?
    };
    for path in partials {
        let file_name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        report.removed.push(RemovedBackup {
            backup_id: file_name
                .strip_prefix(PARTIAL_PREFIX)
                .unwrap_or(&file_name)
                .to_string(),
            path: path.display().to_string(),
            reason: "interrupted backup (.partial- folder)".into(),
        });
    }

    let mut entries = Vec::new();
    let mut folders: HashMap<String, PathBuf> = HashMap::new();
    let held_entry = |name: &str, time: i64, folder: &Path| BackupEntry {
        id: name.to_string(),
        time,
        sequence: ManifestHints::read(&folder.join(MANIFEST_FILE)).and_then(|h| h.sequence),
        parent: parent_hint(folder, repo.id()),
        held: true,
    };
    let mut to_quarantine = Vec::new();
    for (path, manifest) in repo.backups_of(uuid)? {
        let Some(name) = path.file_name().map(|n| n.to_string_lossy().into_owned()) else {
            continue;
        };
        let Some(time) = parse_backup_id(&name) else {
            continue; // not ours: never touched
        };
        match classify(&name, &path, manifest) {
            Found::Backup {
                sequence,
                parent,
                domain_name,
            } => {
                report.name.get_or_insert(domain_name);
                entries.push(BackupEntry {
                    id: name.clone(),
                    time,
                    sequence,
                    parent,
                    held: false,
                });
            }
            Found::Damaged(error) => {
                entries.push(held_entry(&name, time, &path));
                to_quarantine.push((name.clone(), error));
            }
            Found::Unusable(message) => {
                report.errors.push(message);
                entries.push(held_entry(&name, time, &path));
            }
        }
        folders.insert(name, path);
    }
    for (id, path) in repo.quarantined_of(uuid)? {
        let Some(time) = parse_backup_id(&id) else {
            continue;
        };
        if folders.contains_key(&id) {
            report.errors.push(format!(
                "{} and {} both hold backup {id}; the quarantined one is left alone",
                path.display(),
                folders[&id].display()
            ));
            continue;
        }
        report.errors.push(format!(
            "{} is quarantined (its manifest could not be read); kept with the backups of its \
             chain until its manifest is repaired and it is renamed back to {id}, or it is removed by hand",
            path.display()
        ));
        entries.push(held_entry(&id, time, &path));
        folders.insert(id, path);
    }

    // Quarantine: rename, so the name no longer looks like a readable backup to anyone, and
    // report. The entry stays held whether or not the rename worked.
    let mut renamed_any = false;
    for (id, error) in to_quarantine {
        if dry_run {
            report.errors.push(format!(
                "{error}; would be quarantined as {} and kept with the backups of its chain",
                lock.quarantine_path(&id).display()
            ));
            continue;
        }
        match lock.quarantine(&id, &folders[&id]) {
            Quarantine::Done(to) => {
                renamed_any = true;
                report.errors.push(format!(
                    "{error}; quarantined as {} (never removed by prune) and kept with the backups \
                     of its chain; repair its manifest and rename it back to {id}, or remove it",
                    to.display()
                ));
                folders.insert(id, to);
            }
            Quarantine::NameTaken(to) => report.errors.push(format!(
                "{error}; cannot be quarantined ({} exists), left in place and kept with the backups of its chain",
                to.display()
            )),
            Quarantine::Failed(to, e) => report.errors.push(format!(
                "{error}; cannot be quarantined (rename to {}: {e}), left in place and kept with the backups of its chain",
                to.display()
            )),
        }
    }
    if renamed_any {
        lock.sync_folder()?;
    }

    entries.sort_by(|a, b| (a.sequence, &a.id).cmp(&(b.sequence, &b.id)));
    let order: HashMap<String, (Option<u64>, String)> = entries
        .iter()
        .map(|e| (e.id.clone(), (e.sequence, e.id.clone())))
        .collect();
    let decisions = compute_prune(&entries, keep).map_err(|e| Error::Usage(e.to_string()))?;
    let mut doomed: Vec<(String, String)> = Vec::new();
    for decision in decisions {
        match decision.mark {
            PruneMark::Keep(reasons) => report.kept.push(KeptBackup {
                backup_id: decision.id,
                reasons: reasons.iter().map(ToString::to_string).collect(),
            }),
            PruneMark::Remove(reason) => doomed.push((decision.id, reason.to_string())),
        }
    }
    // Newest first: an interruption never leaves an incremental without its parent.
    doomed.sort_by(|a, b| order[&b.0].cmp(&order[&a.0]));

    let mut removed = Vec::new();
    if dry_run {
        removed = doomed;
    } else {
        // From the first fsync on, none of these is a backup any more (`repo::backup_removal`).
        let targets: Vec<(String, PathBuf)> = doomed
            .iter()
            .map(|(id, _)| (id.clone(), folders[id].clone()))
            .collect();
        let outcomes = lock.remove_backups(&targets)?;
        for ((id, reason), outcome) in doomed.into_iter().zip(outcomes) {
            match outcome {
                Removal::Removed => removed.push((id, reason)),
                Removal::NotRenamed(to, e) => report.errors.push(format!(
                    "cannot remove {} ({reason}): rename to {}: {e}; left as it is",
                    folders[&id].display(),
                    to.display()
                )),
                Removal::NotDeleted(to, e) => {
                    report.errors.push(format!(
                        "{} is no longer a backup but could not be deleted ({e}); the next backup or prune of this domain removes it",
                        to.display()
                    ));
                    removed.push((id, reason));
                }
            }
        }
    }
    // Oldest first, as the report lists them.
    removed.sort_by(|a, b| order[&a.0].cmp(&order[&b.0]));
    for (id, reason) in removed {
        report.removed.push(RemovedBackup {
            path: folders[&id].display().to_string(),
            backup_id: id,
            reason,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::snapshot_name;
    use crate::repo::layout::QUARANTINE_PREFIX;
    use crate::repo::manifest::tests::sample;
    use crate::repo::write_manifest;

    const WEB: &str = "3b1f9b7e-8c43-4b71-9a5d-0c2d7f1e6a10";
    const DB: &str = "7d2c1a90-1b2e-4f3a-8c4d-5e6f7a8b9c0d";

    fn keep_last(n: u32) -> KeepOptions {
        KeepOptions {
            last: Some(n),
            ..KeepOptions::default()
        }
    }

    /// A backup of `uuid` named `web`/`db`, written through the repository's manifest writer.
    fn add_backup(repo: &Repository, uuid: &str, id: &str, parent: Option<&str>) -> PathBuf {
        let folder = repo.domain_dir(uuid).join(id);
        fs::create_dir_all(&folder).unwrap();
        fs::write(folder.join("vda.raw"), b"data").unwrap();
        let mut m = sample();
        m.backup_id = id.into();
        m.parent = parent.map(str::to_string);
        m.domain.uuid = uuid.into();
        m.domain.name = if uuid == WEB { "web" } else { "db" }.into();
        write_manifest(&folder.join(MANIFEST_FILE), &m).unwrap();
        folder
    }

    fn day(d: u32) -> String {
        format!("202611{d:02}T020000.000Z")
    }

    /// Names in a domain folder, sorted (the independent truth: what is on disk).
    fn on_disk(repo: &Repository, uuid: &str) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(repo.domain_dir(uuid))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    fn ids<T>(items: &[T], id: impl Fn(&T) -> &str) -> Vec<String> {
        items.iter().map(|i| id(i).to_string()).collect()
    }

    #[test]
    fn removes_what_retention_marks_and_leftovers_but_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::open_or_create(dir.path()).unwrap();
        for d in 1..=5 {
            add_backup(&repo, WEB, &day(d), None);
        }
        let domain_dir = repo.domain_dir(WEB);
        fs::create_dir(domain_dir.join(".partial-20261106T020000.000Z")).unwrap();
        fs::create_dir(domain_dir.join("notes")).unwrap();
        fs::write(domain_dir.join("notes/keep.txt"), b"mine").unwrap();
        fs::write(domain_dir.join("README"), b"mine").unwrap();

        let report = prune(dir.path(), None, &keep_last(2), false).unwrap();

        assert_eq!(
            on_disk(&repo, WEB),
            [".lock", &day(4), &day(5), "README", "notes"]
        );
        assert_eq!(
            fs::read(domain_dir.join("notes/keep.txt")).unwrap(),
            b"mine"
        );
        assert!(!report.dry_run && !report.has_problems(), "{report:?}");
        let web = &report.domains[0];
        assert_eq!((web.uuid.as_str(), web.name.as_deref()), (WEB, Some("web")));
        assert_eq!(web.status, PruneStatus::Done);
        assert_eq!(ids(&web.kept, |k| &k.backup_id), [day(4), day(5)]);
        assert_eq!(web.kept[0].reasons, ["keep-last"]);
        assert_eq!(
            ids(&web.removed, |r| &r.backup_id),
            ["20261106T020000.000Z", &day(1), &day(2), &day(3)]
        );
        assert_eq!(web.removed[1].reason, "not selected by any keep option");
        assert_eq!(
            web.removed[1].path,
            domain_dir.join(day(1)).display().to_string()
        );
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["domains"][0]["kept"][1]["backup_id"], day(5));
        assert_eq!(json["domains"][0]["status"], "done");
    }

    #[test]
    fn a_dry_run_reports_what_a_real_run_removes_and_touches_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::open_or_create(dir.path()).unwrap();
        for d in 1..=4 {
            add_backup(&repo, WEB, &day(d), None);
        }
        fs::create_dir(repo.domain_dir(WEB).join(".partial-20261105T020000.000Z")).unwrap();
        // The lock file is the only thing a dry run may create (every backup creates it too).
        drop(repo.lock_domain(WEB, "web").unwrap());
        let before = on_disk(&repo, WEB);

        let dry = prune(dir.path(), Some("web"), &keep_last(1), true).unwrap();
        assert!(dry.dry_run);
        assert_eq!(on_disk(&repo, WEB), before);

        let real = prune(dir.path(), Some("web"), &keep_last(1), false).unwrap();
        let removed = |r: &PruneReport| ids(&r.domains[0].removed, |x| &x.backup_id);
        assert_eq!(removed(&dry), removed(&real));
        assert_eq!(removed(&real).len(), 4);
        assert_eq!(on_disk(&repo, WEB), [".lock", &day(4)]);
    }

    #[test]
    fn an_incremental_chain_is_kept_whole() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::open_or_create(dir.path()).unwrap();
        add_backup(&repo, WEB, &day(1), None);
        add_backup(&repo, WEB, &day(2), None);
        add_backup(&repo, WEB, &day(3), Some(&day(2)));
        add_backup(&repo, WEB, &day(4), Some(&day(3)));

        let report = prune(dir.path(), Some(WEB), &keep_last(1), false).unwrap();

        assert_eq!(on_disk(&repo, WEB), [".lock", &day(2), &day(3), &day(4)]);
        let web = &report.domains[0];
        assert_eq!(web.kept[0].reasons, [format!("needed by {}", day(4))]);
        assert_eq!(ids(&web.removed, |r| &r.backup_id), [day(1)]);
    }

    /// Gives backup `folder` an rbd diff file whose header starts at `parent`'s snapshot, as an
    /// incremental of `parent` has.
    fn add_diff_file(repo: &Repository, folder: &Path, parent: &str) {
        let id = folder.file_name().unwrap().to_string_lossy().into_owned();
        let writer = crate::repo::rbd_diff::RbdDiffWriter::new(
            Vec::new(),
            Some(&snapshot_name(repo.id(), parent)),
            &snapshot_name(repo.id(), &id),
            1 << 30,
        )
        .unwrap();
        fs::write(folder.join("vda.rbdiff"), writer.finish().unwrap()).unwrap();
    }

    fn set_sequence(folder: &Path, sequence: u64) {
        let mut m = crate::repo::read_manifest(&folder.join(MANIFEST_FILE)).unwrap();
        m.sequence = Some(sequence);
        write_manifest(&folder.join(MANIFEST_FILE), &m).unwrap();
    }

    #[test]
    fn damaged_manifests_are_quarantined_and_kept_with_their_chains_as_are_newer_ones() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::open_or_create(dir.path()).unwrap();
        let domain_dir = repo.domain_dir(WEB);
        add_backup(&repo, WEB, &day(1), None);
        // A chain with a truncated manifest in its middle: F2 <- I3 (damaged) <- I4.
        add_backup(&repo, WEB, &day(2), None);
        let damaged = add_backup(&repo, WEB, &day(3), Some(&day(2)));
        add_diff_file(&repo, &damaged, &day(2));
        let text = fs::read(damaged.join(MANIFEST_FILE)).unwrap();
        fs::write(damaged.join(MANIFEST_FILE), &text[..text.len() / 2]).unwrap();
        add_backup(&repo, WEB, &day(4), Some(&day(3)));
        // A folder named like a backup without a manifest, and one whose manifest is a FIFO.
        fs::create_dir(domain_dir.join(day(5))).unwrap();
        let fifo = add_backup(&repo, WEB, &day(11), None);
        fs::remove_file(fifo.join(MANIFEST_FILE)).unwrap();
        crate::repo::stored_file::tests::make_fifo(&fifo.join(MANIFEST_FILE));
        // Written by a newer tool on top of F2, and an incremental on top of it.
        let newer = add_backup(&repo, WEB, &day(6), Some(&day(2)));
        let mut value: serde_json::Value =
            serde_json::from_slice(&fs::read(newer.join(MANIFEST_FILE)).unwrap()).unwrap();
        value["version"] = 99.into();
        value["disks"] = "elsewhere".into();
        fs::write(newer.join(MANIFEST_FILE), value.to_string()).unwrap();
        add_backup(&repo, WEB, &day(7), Some(&day(6)));
        // An orphan whose parent is gone for good, and the newest backup, a full.
        add_backup(&repo, WEB, &day(8), Some("20261031T020000.000Z"));
        add_backup(&repo, WEB, &day(9), None);
        for (d, sequence) in [(1, 1), (2, 2), (4, 4), (7, 7), (8, 8), (9, 9)] {
            set_sequence(&domain_dir.join(day(d)), sequence);
        }
        // Not named like a backup: never touched, even with a damaged manifest.
        fs::create_dir(domain_dir.join("keep-me")).unwrap();
        fs::write(domain_dir.join("keep-me").join(MANIFEST_FILE), b"x").unwrap();

        let dry = prune(dir.path(), None, &keep_last(1), true).unwrap();
        let report = prune(dir.path(), None, &keep_last(1), false).unwrap();

        let q = |d: u32| format!("{QUARANTINE_PREFIX}{}", day(d));
        let mut expected = vec![
            ".lock".to_string(),
            q(11),
            q(3),
            q(5),
            day(2),
            day(4),
            day(6),
            day(7),
            day(9),
            "keep-me".into(),
        ];
        expected.sort();
        assert_eq!(on_disk(&repo, WEB), expected);
        assert_eq!(
            fs::read(domain_dir.join(q(3)).join(MANIFEST_FILE)).unwrap(),
            &text[..text.len() / 2],
            "quarantined as it was"
        );
        let web = &report.domains[0];
        let reasons = |id: &str| {
            web.kept
                .iter()
                .find(|k| k.backup_id == id)
                .unwrap_or_else(|| panic!("{id} not kept: {web:?}"))
                .reasons
                .clone()
        };
        assert_eq!(reasons(&day(9)), ["keep-last"]);
        assert_eq!(reasons(&day(3)), ["its manifest cannot be read"]);
        assert_eq!(
            reasons(&day(4)),
            [format!(
                "depends on {}, whose manifest cannot be read",
                day(3)
            )]
        );
        assert_eq!(
            reasons(&day(7)),
            [format!(
                "depends on {}, whose manifest cannot be read",
                day(6)
            )]
        );
        // F2 is needed by both unreadable backups; the newest of them names it.
        assert_eq!(reasons(&day(2)).len(), 1);
        assert!(
            reasons(&day(2))[0].starts_with("needed by 202611"),
            "{web:?}"
        );
        let removed: Vec<(&str, &str)> = web
            .removed
            .iter()
            .map(|r| (r.backup_id.as_str(), r.reason.as_str()))
            .collect();
        assert_eq!(
            removed,
            [
                (day(1).as_str(), "not selected by any keep option"),
                (
                    day(8).as_str(),
                    "broken chain (parent 20261031T020000.000Z missing)"
                )
            ]
        );
        let errors = web.errors.join("\n");
        assert_eq!(web.errors.len(), 4, "{errors}");
        assert!(errors.contains("upgrade virt-rbd-backup"), "{errors}");
        assert_eq!(errors.matches("quarantined as").count(), 3, "{errors}");
        assert!(errors.contains("is a FIFO"), "{errors}");
        assert!(report.has_problems());
        // The dry run said the same and touched nothing.
        assert_eq!(
            ids(&dry.domains[0].removed, |r| &r.backup_id),
            ids(&web.removed, |r| &r.backup_id)
        );
        assert_eq!(
            dry.domains[0]
                .errors
                .join("\n")
                .matches("would be quarantined")
                .count(),
            3
        );

        // The next prune finds the quarantined folders, keeps the same chain, reports them again.
        let again = prune(dir.path(), None, &keep_last(1), false).unwrap();
        assert_eq!(on_disk(&repo, WEB), expected);
        let web = &again.domains[0];
        assert!(web.removed.is_empty(), "{web:?}");
        assert_eq!(
            web.errors
                .iter()
                .filter(|e| e.contains("is quarantined"))
                .count(),
            3
        );

        // Repaired and renamed back, the chain restores: it was never broken.
        fs::remove_dir_all(domain_dir.join(q(5))).unwrap();
        fs::remove_dir_all(domain_dir.join(q(11))).unwrap();
        fs::rename(domain_dir.join(q(3)), domain_dir.join(day(3))).unwrap();
        let mut m = sample();
        m.backup_id = day(3);
        m.parent = Some(day(2));
        m.sequence = Some(3);
        write_manifest(&domain_dir.join(day(3)).join(MANIFEST_FILE), &m).unwrap();
        let (folder, m4) = repo.find_backup(WEB, Some(&day(4))).unwrap();
        assert_eq!(m4.parent.as_deref(), Some(day(3).as_str()));
        let mut m4 = m4;
        m4.disks[0].kind = crate::repo::BackupKind::Incremental;
        m4.disks[0].parent_backup = Some(day(3));
        m4.disks[0].base_snapshot = m4.disks[0].snapshot.clone().into();
        let chain_of = |m: &crate::repo::BackupManifest| {
            repo.disk_chain(WEB, &folder, m, "vda")
                .map(|c| c.iter().map(|l| l.backup_id.clone()).collect::<Vec<_>>())
        };
        assert_eq!(chain_of(&m4).unwrap(), [day(3), day(4)]);
    }

    #[test]
    fn a_domain_being_backed_up_is_skipped_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::open_or_create(dir.path()).unwrap();
        add_backup(&repo, WEB, &day(1), None);
        add_backup(&repo, WEB, &day(2), None);
        add_backup(&repo, DB, &day(1), None);
        add_backup(&repo, DB, &day(2), None);
        let running = repo.lock_domain(WEB, "web").unwrap();
        fs::create_dir(repo.domain_dir(WEB).join(".partial-20261103T020000.000Z")).unwrap();

        let report = prune(dir.path(), None, &keep_last(1), false).unwrap();

        assert_eq!(
            on_disk(&repo, WEB),
            [".lock", ".partial-20261103T020000.000Z", &day(1), &day(2)]
        );
        assert_eq!(on_disk(&repo, DB), [".lock", &day(2)]);
        let web = report.domains.iter().find(|d| d.uuid == WEB).unwrap();
        assert_eq!(web.status, PruneStatus::Skipped);
        assert!(
            web.message
                .as_deref()
                .unwrap()
                .contains("another virt-rbd-backup run"),
            "{web:?}"
        );
        assert!(web.kept.is_empty() && web.removed.is_empty());
        assert!(report.has_problems());
        drop(running);
    }

    #[test]
    fn domains_are_chosen_by_name_or_uuid_and_an_unknown_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::open_or_create(dir.path()).unwrap();
        for uuid in [WEB, DB] {
            add_backup(&repo, uuid, &day(1), None);
            add_backup(&repo, uuid, &day(2), None);
        }
        fs::create_dir(dir.path().join("lost+found")).unwrap();

        let report = prune(dir.path(), Some("db"), &keep_last(1), false).unwrap();
        assert_eq!(ids(&report.domains, |d| &d.uuid), [DB]);
        assert_eq!(on_disk(&repo, WEB).len(), 2, "web untouched");

        let report = prune(dir.path(), Some(WEB), &keep_last(1), true).unwrap();
        assert_eq!(ids(&report.domains, |d| &d.uuid), [WEB]);

        let report = prune(dir.path(), None, &keep_last(1), true).unwrap();
        assert_eq!(ids(&report.domains, |d| &d.uuid), [WEB, DB]);

        let err = prune(dir.path(), Some("nope"), &keep_last(1), false).unwrap_err();
        assert!(
            matches!(err, Error::NoBackupsOfDomain { ref domain, .. } if domain == "nope"),
            "{err}"
        );
        assert!(dir.path().join("lost+found").is_dir());
    }

    #[test]
    fn no_keep_option_is_refused_before_anything_is_touched() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::open_or_create(dir.path()).unwrap();
        add_backup(&repo, WEB, &day(1), None);
        fs::create_dir(repo.domain_dir(WEB).join(".partial-20261102T020000.000Z")).unwrap();
        let before = on_disk(&repo, WEB);
        let err = prune(dir.path(), None, &KeepOptions::default(), false).unwrap_err();
        assert!(
            err.to_string()
                .contains("no keep option given; nothing would be kept"),
            "{err}"
        );
        assert_eq!(on_disk(&repo, WEB), before);
    }

    #[test]
    fn a_folder_that_is_not_a_repository_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let err = prune(dir.path(), None, &keep_last(1), false).unwrap_err();
        assert!(
            matches!(err, Error::Repo(RepoError::NotARepository { .. })),
            "{err}"
        );
    }
}
