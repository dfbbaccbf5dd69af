//! Verifying backups: every stored file against its checksum, every block table against the
//! manifest, every chain for completeness. A problem is a finding in the report (naming file
//! and offset); an error is only "could not continue".

use std::path::PathBuf;

use serde::Serialize;

use super::block_io::SnapshotSource;
use super::ceph_access::CephAccess;
use crate::error::Error;
use crate::repo::chain::{verify_stored_file, ChainLink, RawBlockReader};
use crate::repo::leaf_table::verify_leaf_table;
use crate::repo::{DiskFormat, Repository};

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
    /// Disks compared with their snapshot still in the cluster (`--source`): (backup id, disk).
    #[serde(default)]
    pub source_checked: Vec<(String, String)>,
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
    verify_with_source(repo, domain, backup, None)
}

/// `verify`, and with `source` also compares the latest backup of each domain with its
/// snapshot still in the cluster (the incremental base), block by block.
pub fn verify_with_source(
    repo: &std::path::Path,
    domain: Option<&str>,
    backup: Option<&str>,
    source: Option<&CephAccess>,
) -> Result<VerifyReport, Error> {
    let repo = Repository::open(repo)?;
    let uuids = match domain {
        Some(d) => vec![repo.resolve_domain(d).map_err(Error::NotInRepository)?],
        None => repo.domain_uuids()?,
    };
    let mut report = VerifyReport {
        checked: Vec::new(),
        problems: Vec::new(),
        source_checked: Vec::new(),
    };
    for uuid in uuids {
        let selected: Vec<(PathBuf, String)> = match backup {
            Some(id) => match repo.find_backup(&uuid, Some(id)) {
                // Without a domain, only the domains that have this backup are checked.
                Ok((folder, manifest)) => vec![(folder, manifest.backup_id)],
                Err(_) if domain.is_none() => Vec::new(),
                Err(e) => return Err(Error::NotInRepository(e)),
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
        if backup.is_none() {
            for (id, path) in repo.quarantined_of(&uuid)? {
                report.problems.push(VerifyProblem {
                    backup_id: id.clone(),
                    disk: String::new(),
                    message: super::listing::quarantine_message(&id, &path),
                });
            }
        }
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
        if let Some(source) = source {
            if let Ok((folder, manifest)) = repo.find_backup(&uuid, backup) {
                compare_with_source(&repo, &uuid, &folder, &manifest, source, &mut report)?;
            }
        }
    }
    if let (Some(id), true) = (backup, report.checked.is_empty()) {
        return Err(Error::NoSuchBackup { id: id.to_string() });
    }
    Ok(report)
}

fn verify_link(link: &ChainLink) -> Result<(), String> {
    verify_link_data(link)?;
    if let Some(name) = &link.disk.leaves_file {
        let table = link.block_table().map_err(|e| e.to_string())?;
        verify_leaf_table(&link.folder.join(name), &table).map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn verify_link_data(link: &ChainLink) -> Result<(), String> {
    match link.disk.format {
        DiskFormat::SparseRaw => RawBlockReader::open(link)
            .and_then(RawBlockReader::check_all)
            .map_err(|e| e.to_string()),
        // The stored bytes are checked against their chunk table, compressed or not: damage
        // is found without decompressing.
        DiskFormat::RbdDiffV1 | DiskFormat::RbdDiffV1Zstd => {
            link.block_table().map_err(|e| e.to_string())?;
            verify_stored_file(link).map_err(|e| e.to_string())
        }
    }
}

/// Compares each disk of `manifest` with its snapshot in the cluster.
fn compare_with_source(
    repo: &Repository,
    uuid: &str,
    folder: &std::path::Path,
    manifest: &crate::repo::BackupManifest,
    source: &CephAccess,
    report: &mut VerifyReport,
) -> Result<(), Error> {
    use crate::ceph::RbdImage;

    for disk in &manifest.disks {
        let problem = |message: String| VerifyProblem {
            backup_id: manifest.backup_id.clone(),
            disk: disk.target.clone(),
            message,
        };
        let cluster =
            source.connect_for_disk(&manifest.domain.xml, &manifest.domain.name, &disk.target)?;
        let pool = cluster.open_pool(&disk.pool, disk.namespace.as_deref())?;
        // A group-consistent backup was read from the group snapshot's member, not the marker.
        let (opened, source_name) = match &disk.group_snapshot {
            Some(g) => (
                RbdImage::open_at_snapshot_id(&pool, &disk.image, g.id),
                format!(
                    "{} (member of group snapshot {}/{}@{})",
                    disk.image_spec(),
                    g.pool,
                    g.group,
                    g.name
                ),
            ),
            None => (
                RbdImage::open_at_snapshot(&pool, &disk.image, &disk.snapshot.name),
                format!("{}@{}", disk.image_spec(), disk.snapshot.name),
            ),
        };
        let image = match opened {
            Ok(image) => image,
            Err(e) if e.errno() == Some(-libc::ENOENT) => {
                report.problems.push(problem(format!(
                    "cannot compare with the source: snapshot {source_name} is gone ({e})"
                )));
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let chain = repo.disk_chain(uuid, folder, manifest, &disk.target)?;
        let expected = match chain.last().map(|l| l.block_table()) {
            Some(Ok(table)) => table,
            Some(Err(e)) => {
                report.problems.push(problem(e.to_string()));
                continue;
            }
            None => continue,
        };
        let info = image.info()?;
        match difference_from_source(&expected, &image, info.size, info.fast_diff_usable())? {
            Some(offset) => report.problems.push(problem(format!(
                "differs from its source snapshot {source_name} at offset {offset}"
            ))),
            None => report
                .source_checked
                .push((manifest.backup_id.clone(), disk.target.clone())),
        }
    }
    Ok(())
}

/// Where the content of `source` (`size` bytes; its allocated blocks read, `use_object_map`
/// as in the export) first differs from the block table `expected`: `None` when it equals it.
fn difference_from_source<S: SnapshotSource + ?Sized>(
    expected: &[[u8; 32]],
    source: &S,
    size: u64,
    use_object_map: bool,
) -> Result<Option<u64>, Error> {
    let actual = super::export::image_block_table(source, size, use_object_map)?;
    Ok(super::restore::first_difference(expected, &actual))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::block_io::{block_table_of, MemorySnapshot};
    use crate::plan::HASH_BLOCK_SIZE;

    #[test]
    fn a_source_equal_to_the_backup_passes_and_one_that_differs_names_the_block() {
        const B: usize = HASH_BLOCK_SIZE as usize;
        let mut data = vec![0u8; 3 * B - 100];
        data[5..50].fill(1);
        data[2 * B + 7] = 9;
        let expected = block_table_of(&data);
        let same = MemorySnapshot::new("rbd/m@s", data.clone());
        for use_object_map in [false, true] {
            let found = difference_from_source(&expected, &same, data.len() as u64, use_object_map);
            assert_eq!(found.unwrap(), None);
        }
        data[2 * B + 7] = 8;
        let changed = MemorySnapshot::new("rbd/m@s", data.clone());
        let found = difference_from_source(&expected, &changed, data.len() as u64, false);
        assert_eq!(found.unwrap(), Some(2 * HASH_BLOCK_SIZE));
        // A source that grew differs at the first block the backup does not have.
        data.resize(3 * B + 1, 0);
        let grown = MemorySnapshot::new("rbd/m@s", data.clone());
        let found = difference_from_source(&expected, &grown, data.len() as u64, false);
        assert_eq!(found.unwrap(), Some(2 * HASH_BLOCK_SIZE));
    }

    #[test]
    fn a_source_that_cannot_be_read_is_an_error_not_a_pass() {
        let data = vec![1u8; 8192];
        let expected = block_table_of(&data);
        let failing = MemorySnapshot::new("rbd/m@s", data).failing_at(100);
        assert!(difference_from_source(&expected, &failing, 8192, false).is_err());
    }
}
