//! list, verify and prune on a block repository (`block_repo`), with the reports the folder
//! repository's commands give, so the CLI, the Python API and the metrics read both alike.

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;

use crate::block_repo::disk_reader;
use crate::block_repo::sweep;
use crate::block_repo::{BlockManifest, BlockRepoError, BlockRepository};
use crate::error::Error;
use crate::plan::retention::{compute_prune, parse_backup_id, BackupEntry, KeepOptions, PruneMark};

use super::listing::{BackupDiskListing, BackupListing};
use super::prune::{
    DomainPruneReport, KeptBackup, PruneReport, PruneStatus, RemovedBackup, SweepSummary,
    PRUNE_REPORT_VERSION,
};
use super::verify::{VerifyProblem, VerifyReport};

/// Threads fetching blocks at once for verify.
const READ_WORKERS: usize = 4;

fn kind_name(manifest: &BlockManifest) -> String {
    serde_json::to_value(manifest.kind)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// Whether `wanted` (a name or UUID) names the domain of `manifests`.
fn names_domain(wanted: &str, uuid: &str, manifests: &[BlockManifest]) -> bool {
    wanted.eq_ignore_ascii_case(uuid) || manifests.iter().any(|m| m.domain.name == wanted)
}

/// The domains of the repository with their manifests (oldest first), those `domain` names.
fn selected_domains(
    repo: &BlockRepository,
    domain: Option<&str>,
) -> Result<Vec<(String, Vec<BlockManifest>)>, Error> {
    let mut selected = Vec::new();
    for uuid in repo.domains()? {
        let manifests = repo.backups(&uuid)?;
        if domain.is_none_or(|d| names_domain(d, &uuid, &manifests)) {
            selected.push((uuid, manifests));
        }
    }
    if let (Some(d), true) = (domain, selected.is_empty()) {
        return Err(BlockRepoError::NoBackupsOfDomain {
            store: repo.describe(),
            domain: d.to_string(),
        }
        .into());
    }
    Ok(selected)
}

/// The backups of a block repository, as `list` shows them.
pub fn list(repo: &BlockRepository, domain: Option<&str>) -> Result<Vec<BackupListing>, Error> {
    let mut listings = Vec::new();
    for uuid in repo.domains()? {
        let (manifests, unreadable) = repo.readable_backups(&uuid)?;
        if domain.is_some_and(|d| !names_domain(d, &uuid, &manifests)) {
            continue;
        }
        // Listed with their error, so they are not forgotten.
        for (id, error) in unreadable {
            listings.push(BackupListing {
                domain: String::new(),
                uuid: uuid.clone(),
                backup_id: id.clone(),
                kind: String::new(),
                path: format!("{}: backups/{uuid}/{id}.manifest", repo.describe()),
                completed_at: 0.0,
                consistency: None,
                disks: Vec::new(),
                error: Some(error.to_string()),
                parent: None,
                sequence: None,
            });
        }
        for m in manifests {
            listings.push(BackupListing {
                domain: m.domain.name.clone(),
                uuid: m.domain.uuid.clone(),
                backup_id: m.backup_id.clone(),
                kind: kind_name(&m),
                path: format!(
                    "{}: backups/{}/{}.manifest",
                    repo.describe(),
                    m.domain.uuid,
                    m.backup_id
                ),
                completed_at: m.completed_at,
                consistency: Some(m.consistency),
                disks: m
                    .disks
                    .iter()
                    .map(|d| BackupDiskListing {
                        target: d.target.clone(),
                        image: super::listing::image_spec(
                            &d.pool,
                            d.namespace.as_deref(),
                            &d.image,
                        ),
                        size: d.size,
                        bytes_written: d.bytes_stored,
                        file: format!(
                            "backups/{}/{}/{}.blocklist",
                            m.domain.uuid, m.backup_id, d.target
                        ),
                        checksum: d.checksum.clone(),
                        kind: d.kind,
                        // Every backup of the block layout is complete on its own.
                        chain_position: 0,
                    })
                    .collect(),
                error: None,
                parent: m.parent.clone(),
                sequence: Some(m.sequence),
            });
        }
    }
    Ok(listings)
}

/// Verifies a block repository: every manifest, block list and table, every block they name
/// present, and the content of `read_data` (0 to 1) of the blocks, a random sample each run,
/// against their id and table entry. Only
/// the whole repository is checked (blocks are shared, so one domain's check reads the same
/// objects); `domain` and `backup` must still name something that exists.
pub fn verify(
    repo: &BlockRepository,
    domain: Option<&str>,
    backup: Option<&str>,
    read_data: f64,
) -> Result<VerifyReport, Error> {
    let selected = selected_domains(repo, domain)?;
    if let Some(id) = backup {
        if !selected
            .iter()
            .any(|(_, ms)| ms.iter().any(|m| m.backup_id == id))
        {
            return Err(BlockRepoError::NoSuchBackup {
                store: repo.describe(),
                domain: domain.unwrap_or("any").to_string(),
                backup: id.to_string(),
            }
            .into());
        }
    }
    let mut seed = [0u8; 32];
    getrandom::getrandom(&mut seed)
        .map_err(|e| Error::Usage(format!("no randomness for the sample: {e}")))?;
    let sample = disk_reader::ReadSample::new(read_data, seed);
    let findings = disk_reader::verify(repo, sample, READ_WORKERS, &AtomicBool::new(false))?;
    let checked = selected
        .iter()
        .flat_map(|(_, ms)| ms.iter())
        .filter(|m| backup.is_none_or(|id| m.backup_id == id))
        .map(|m| (m.domain.name.clone(), m.backup_id.clone()))
        .collect();
    Ok(VerifyReport {
        checked,
        problems: findings
            .problems
            .into_iter()
            .map(|message| VerifyProblem {
                backup_id: String::new(),
                disk: String::new(),
                message,
            })
            .collect(),
        source_checked: Vec::new(),
    })
}

/// Applies `keep` to each selected domain's backups (each is complete on its own: no chains
/// to keep), removes the rest, then sweeps the blocks no backup names any more, all under one
/// prune lock. A running backup makes the prune remove nothing (reported, not an error: the
/// next prune tries again).
pub fn prune(
    repo: &BlockRepository,
    host: &str,
    domain: Option<&str>,
    keep: &KeepOptions,
    dry_run: bool,
) -> Result<PruneReport, Error> {
    keep.validate().map_err(|e| Error::Usage(e.to_string()))?;
    let selected = selected_domains(repo, domain)?;
    let mut reports = Vec::new();
    let mut doomed: Vec<BlockManifest> = Vec::new();
    for (uuid, manifests) in selected {
        let entries: Vec<BackupEntry> = manifests
            .iter()
            .map(|m| BackupEntry {
                id: m.backup_id.clone(),
                time: parse_backup_id(&m.backup_id).unwrap_or(m.started_at as i64),
                sequence: Some(m.sequence),
                parent: None,
                held: false,
            })
            .collect();
        let by_id: HashMap<&str, &BlockManifest> = manifests
            .iter()
            .map(|m| (m.backup_id.as_str(), m))
            .collect();
        let mut report = DomainPruneReport {
            uuid: uuid.clone(),
            name: manifests.last().map(|m| m.domain.name.clone()),
            status: PruneStatus::Done,
            message: None,
            kept: Vec::new(),
            removed: Vec::new(),
            errors: Vec::new(),
        };
        let decisions = compute_prune(&entries, keep).map_err(|e| Error::Usage(e.to_string()))?;
        for decision in decisions {
            match decision.mark {
                PruneMark::Keep(reasons) => report.kept.push(KeptBackup {
                    backup_id: decision.id,
                    reasons: reasons.iter().map(ToString::to_string).collect(),
                }),
                PruneMark::Remove(reason) => {
                    report.removed.push(RemovedBackup {
                        backup_id: decision.id.clone(),
                        path: format!(
                            "{}: backups/{uuid}/{}.manifest",
                            repo.describe(),
                            decision.id
                        ),
                        reason: reason.to_string(),
                    });
                    if let Some(m) = by_id.get(decision.id.as_str()) {
                        doomed.push((*m).clone());
                    }
                }
            }
        }
        reports.push(report);
    }
    let swept = sweep::prune(repo, host, &doomed, dry_run, super::repo_access::LOCK_LEASE)?;
    if !swept.held_off_by.is_empty() {
        let message = format!(
            "not pruned: a backup is running ({}); nothing was removed, the next prune tries again",
            swept.held_off_by.join(", ")
        );
        for report in &mut reports {
            report.status = PruneStatus::Skipped;
            report.message = Some(message.clone());
            report.removed.clear();
        }
    }
    Ok(PruneReport {
        version: PRUNE_REPORT_VERSION,
        dry_run,
        domains: reports,
        blocks: Some(SweepSummary {
            kept: swept.blocks_kept,
            removed: swept.blocks_removed,
            bytes_removed: swept.bytes_removed,
        }),
    })
}
