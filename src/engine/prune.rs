//! Prune: carries out the retention marks of `plan::retention` on the repository, one domain
//! at a time, under the domain's lock so it never races a backup of that domain.
//!
//! What is removed, per domain:
//! - backups marked `Remove` (not selected by any keep option, or with a broken chain);
//! - `.partial-*` folders (interrupted runs);
//! - folders named like a backup id whose manifest is missing or damaged: without a usable
//!   manifest a folder is not a backup (a backup is committed by renaming it into place after
//!   its manifest is written).
//!
//! What is never touched: anything whose name is not a backup id or a `.partial-` name (an
//! operator's notes, `lost+found`), domain folders whose name is not a libvirt UUID, a
//! manifest written by a newer version of the tool, a folder whose manifest cannot be read
//! for another reason than damage (permissions, I/O errors), a folder whose manifest names
//! another backup id, and backups that depend on any of these (they are reported as errors,
//! for an operator to look at). Ceph snapshots are never touched either: the newest backup's
//! snapshots are the base of the next incremental and are managed by backups.
//!
//! A backup is removed by renaming its folder to `.partial-<id>`, fsyncing the domain folder,
//! then deleting it: a crash part-way leaves a `.partial-` folder (never read as a backup and
//! removed by the next run), never a half-deleted folder that looks like a backup. Removal
//! goes newest first, so an interruption cannot leave an incremental without its parent.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::Error;
use crate::plan::retention::{
    compute_prune, parse_backup_id, BackupEntry, KeepOptions, PruneMark, RemoveReason,
};
use crate::repo::layout::{is_canonical_uuid, MANIFEST_FILE, PARTIAL_PREFIX};
use crate::repo::manifest::{sync_dir, MANIFEST_VERSION};
use crate::repo::{BackupManifest, DomainLock, RepoError, Repository};

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
        return Err(Error::Usage(format!(
            "no backups of domain {d} in {}; give a name or UUID that `list` shows",
            repo.display()
        )));
    }
    let domains = selected
        .into_iter()
        .map(|(uuid, name)| prune_domain(&repository, &uuid, name, keep, dry_run))
        .collect();
    Ok(PruneReport {
        version: PRUNE_REPORT_VERSION,
        dry_run,
        domains,
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
    /// A backup retention decides on: its parent and domain name.
    Backup {
        parent: Option<String>,
        domain_name: String,
    },
    /// Not a backup: removed.
    Damaged(String),
    /// Cannot be judged here: left alone, reported.
    Unusable(String),
}

fn classify(name: &str, path: &Path, manifest: Result<BackupManifest, RepoError>) -> Found {
    match manifest {
        Ok(m) if m.backup_id == name => Found::Backup {
            parent: m.parent,
            domain_name: m.domain.name,
        },
        Ok(m) => Found::Unusable(format!(
            "{}: the manifest names backup {}, not the folder's name; left alone",
            path.display(),
            m.backup_id
        )),
        Err(RepoError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            Found::Damaged(format!("no {MANIFEST_FILE}: not a complete backup"))
        }
        Err(e @ RepoError::BadManifest { .. }) => {
            if written_by_newer_version(&path.join(MANIFEST_FILE)) {
                Found::Unusable(format!("{e}; left alone"))
            } else {
                Found::Damaged(format!("damaged manifest: {e}"))
            }
        }
        Err(e) => Found::Unusable(format!("{e}; left alone")),
    }
}

/// Whether a manifest that does not read is one a newer tool wrote (not damage).
fn written_by_newer_version(manifest: &Path) -> bool {
    fs::read(manifest)
        .ok()
        .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
        .and_then(|v| v.get("version").and_then(serde_json::Value::as_u64))
        .is_some_and(|v| v > u64::from(MANIFEST_VERSION))
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
    let dir = repo.domain_dir(uuid);

    // Interrupted runs first, so their names are free for the renames below.
    let partials = if dry_run {
        partial_folders(&dir)?
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
    let mut damaged: Vec<(String, String)> = Vec::new();
    let mut unusable: HashSet<String> = HashSet::new();
    for (path, manifest) in repo.backups_of(uuid)? {
        let Some(name) = path.file_name().map(|n| n.to_string_lossy().into_owned()) else {
            continue;
        };
        let Some(time) = parse_backup_id(&name) else {
            continue; // not ours: never touched
        };
        match classify(&name, &path, manifest) {
            Found::Backup {
                parent,
                domain_name,
            } => {
                report.name.get_or_insert(domain_name);
                entries.push(BackupEntry {
                    id: name.clone(),
                    time,
                    parent,
                });
            }
            Found::Damaged(reason) => damaged.push((name.clone(), reason)),
            Found::Unusable(message) => {
                report.errors.push(message);
                unusable.insert(name.clone());
            }
        }
        folders.insert(name, path);
    }

    let decisions = compute_prune(&entries, keep).map_err(|e| Error::Usage(e.to_string()))?;
    let mut doomed: Vec<(String, String)> = damaged;
    for decision in decisions {
        match decision.mark {
            PruneMark::Keep(reasons) => report.kept.push(KeptBackup {
                backup_id: decision.id,
                reasons: reasons.iter().map(ToString::to_string).collect(),
            }),
            PruneMark::Remove(RemoveReason::BrokenChain { missing, .. })
                if unusable.contains(&missing) =>
            {
                report.errors.push(format!(
                    "{}: depends on {missing}, which cannot be read; left alone",
                    folders[&decision.id].display()
                ));
            }
            PruneMark::Remove(reason) => doomed.push((decision.id, reason.to_string())),
        }
    }
    // Newest first: an interruption never leaves an incremental without its parent.
    doomed.sort_by(|a, b| b.0.cmp(&a.0));

    let mut removed = Vec::new();
    if dry_run {
        removed = doomed;
    } else {
        // Rename all, make the renames durable, then delete: from the first fsync on, none
        // of these is a backup any more, whatever happens to the deletion.
        let mut renamed = Vec::new();
        for (id, reason) in doomed {
            let to = dir.join(format!("{PARTIAL_PREFIX}{id}"));
            match fs::rename(&folders[&id], &to) {
                Ok(()) => renamed.push((id, reason, to)),
                Err(e) => report.errors.push(format!(
                    "cannot remove {} ({reason}): rename to {}: {e}; left as it is",
                    folders[&id].display(),
                    to.display()
                )),
            }
        }
        if !renamed.is_empty() {
            sync_dir(&dir)?;
        }
        for (id, reason, to) in renamed {
            if let Err(e) = fs::remove_dir_all(&to) {
                report.errors.push(format!(
                    "{} is no longer a backup but could not be deleted ({e}); the next backup or prune of this domain removes it",
                    to.display()
                ));
            }
            removed.push((id, reason));
        }
        sync_dir(&dir)?;
    }
    removed.sort();
    for (id, reason) in removed {
        report.removed.push(RemovedBackup {
            path: folders[&id].display().to_string(),
            backup_id: id,
            reason,
        });
    }
    Ok(())
}

/// `.partial-*` folders of a domain (what `remove_partial_backups` would remove).
fn partial_folders(dir: &Path) -> Result<Vec<PathBuf>, RepoError> {
    let io = |source| RepoError::Io {
        action: "read folder",
        path: dir.to_path_buf(),
        source,
    };
    let mut found = Vec::new();
    for entry in fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
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

#[cfg(test)]
mod tests {
    use super::*;
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

    #[test]
    fn damaged_folders_go_but_newer_manifests_and_their_dependants_stay() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::open_or_create(dir.path()).unwrap();
        let domain_dir = repo.domain_dir(WEB);
        add_backup(&repo, WEB, &day(1), None);
        // Damaged: garbage manifest, and no manifest at all.
        let garbage = add_backup(&repo, WEB, &day(2), None);
        fs::write(garbage.join(MANIFEST_FILE), b"{\"format\": ").unwrap();
        fs::create_dir(domain_dir.join(day(3))).unwrap();
        // Written by a newer tool, and an incremental on top of it.
        let newer = add_backup(&repo, WEB, &day(4), None);
        let mut text = fs::read_to_string(newer.join(MANIFEST_FILE)).unwrap();
        text = text.replace("\"version\": 1,", "\"version\": 99,");
        fs::write(newer.join(MANIFEST_FILE), text).unwrap();
        add_backup(&repo, WEB, &day(5), Some(&day(4)));
        // An orphan whose parent is gone for good.
        add_backup(&repo, WEB, &day(6), Some("20261031T020000.000Z"));
        // Not named like a backup: never touched, even with a damaged manifest.
        fs::create_dir(domain_dir.join("keep-me")).unwrap();
        fs::write(domain_dir.join("keep-me").join(MANIFEST_FILE), b"x").unwrap();

        let report = prune(dir.path(), None, &keep_last(5), false).unwrap();

        assert_eq!(
            on_disk(&repo, WEB),
            [".lock", &day(1), &day(4), &day(5), "keep-me"]
        );
        let web = &report.domains[0];
        assert_eq!(ids(&web.kept, |k| &k.backup_id), [day(1)]);
        let removed: Vec<(&str, &str)> = web
            .removed
            .iter()
            .map(|r| (r.backup_id.as_str(), r.reason.as_str()))
            .collect();
        assert_eq!(removed.len(), 3, "{removed:?}");
        assert!(removed[0].1.starts_with("damaged manifest"), "{removed:?}");
        assert!(removed[1].1.starts_with("no manifest.json"), "{removed:?}");
        assert_eq!(
            removed[2],
            (
                day(6).as_str(),
                "broken chain (parent 20261031T020000.000Z missing)"
            )
        );
        assert_eq!(web.errors.len(), 2, "{:?}", web.errors);
        assert!(web.errors[0].contains("upgrade"), "{:?}", web.errors);
        assert!(
            web.errors[1].contains(&format!("depends on {}", day(4))),
            "{:?}",
            web.errors
        );
        assert!(report.has_problems());
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
        assert!(matches!(err, Error::Usage(_)), "{err}");
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
