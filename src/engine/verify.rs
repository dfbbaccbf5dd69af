//! Verifying backups: every stored file against its checksum, every block table against the
//! manifest, every chain for completeness. A problem is a finding in the report (naming file
//! and offset); an error is only "could not continue".

use std::path::PathBuf;

use serde::Serialize;

use crate::error::Error;
use crate::repo::chain::{verify_stored_file, ChainLink, RawBlockReader};
use crate::repo::{BackupKind, Repository};

/// One problem found.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyProblem {
    /// Backup id.
    pub backup_id: String,
    /// Disk target.
    pub disk: String,
    /// What is wrong (names the file and, where known, the offset).
    pub message: String,
}

/// The outcome of a verify run.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    /// Backups checked: (domain name, backup id).
    pub checked: Vec<(String, String)>,
    /// Problems found; empty means everything checked is intact.
    pub problems: Vec<VerifyProblem>,
}

impl VerifyReport {
    /// Whether everything checked is intact.
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Verifies the backups of `domain` (all domains when `None`), or only `backup` and the chain
/// it depends on.
pub fn verify(
    repo: &std::path::Path,
    domain: Option<&str>,
    backup: Option<&str>,
) -> Result<VerifyReport, Error> {
    let repo = Repository::open(repo)?;
    let uuids = match domain {
        Some(d) => vec![repo
            .resolve_domain(d)
            .map_err(|e| Error::Usage(e.to_string()))?],
        None => repo.domain_uuids()?,
    };
    let mut report = VerifyReport {
        checked: Vec::new(),
        problems: Vec::new(),
    };
    for uuid in uuids {
        let selected: Vec<(PathBuf, String)> = match backup {
            Some(id) => match repo.find_backup(&uuid, Some(id)) {
                // Without a domain, only the domains that have this backup are checked.
                Ok((folder, manifest)) => vec![(folder, manifest.backup_id)],
                Err(_) if domain.is_none() => Vec::new(),
                Err(e) => return Err(Error::Usage(e.to_string())),
            },
            None => repo
                .backups_of(&uuid)?
                .into_iter()
                .filter_map(|(folder, manifest)| match manifest {
                    Ok(m) => Some((folder, m.backup_id)),
                    Err(e) => {
                        report.problems.push(VerifyProblem {
                            backup_id: folder
                                .file_name()
                                .map(|n| n.to_string_lossy().into_owned())
                                .unwrap_or_default(),
                            disk: String::new(),
                            message: e.to_string(),
                        });
                        None
                    }
                })
                .collect(),
        };
        let mut verified: Vec<(String, String)> = Vec::new(); // (backup id, disk) already checked
        for (folder, id) in selected {
            let (_, manifest) = repo.find_backup(&uuid, Some(&id))?;
            report
                .checked
                .push((manifest.domain.name.clone(), id.clone()));
            for disk in &manifest.disks {
                let chain = match repo.disk_chain(&uuid, &folder, &manifest, &disk.target) {
                    Ok(chain) => chain,
                    Err(e) => {
                        report.problems.push(VerifyProblem {
                            backup_id: id.clone(),
                            disk: disk.target.clone(),
                            message: e.to_string(),
                        });
                        continue;
                    }
                };
                for link in chain {
                    let key = (link.backup_id.clone(), link.disk.target.clone());
                    if verified.contains(&key) {
                        continue;
                    }
                    if let Err(message) = verify_link(&link) {
                        report.problems.push(VerifyProblem {
                            backup_id: link.backup_id.clone(),
                            disk: link.disk.target.clone(),
                            message,
                        });
                    }
                    verified.push(key);
                }
            }
        }
    }
    if let (Some(id), true) = (backup, report.checked.is_empty()) {
        return Err(Error::Usage(format!(
            "no backup {id} in the repository; `virt-rbd-backup list` shows the backups"
        )));
    }
    Ok(report)
}

fn verify_link(link: &ChainLink) -> Result<(), String> {
    match link.disk.kind {
        BackupKind::Full => {
            let mut reader = RawBlockReader::open(link).map_err(|e| e.to_string())?;
            let mut buf = Vec::new();
            while reader
                .next_block(&mut buf)
                .map_err(|e| e.to_string())?
                .is_some()
            {}
            Ok(())
        }
        BackupKind::Incremental => {
            link.block_table().map_err(|e| e.to_string())?;
            verify_stored_file(link).map_err(|e| e.to_string())
        }
    }
}
