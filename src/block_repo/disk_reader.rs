//! Reading a disk back from the block layout: restore to a sparse file, and verify.
//!
//! A backup's disk is its block list: no chain to replay. Each block is fetched, opened (tag or
//! checksum), checked against its id (`ObjectCodec::decode_block`) and against the plain hash
//! in the block table, then written at its offset; holes are never written, so the file stays
//! sparse. `workers` blocks are fetched at once (the store's latency, not its bandwidth, is
//! what a single stream waits on).

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use super::{BlockManifest, BlockRepoError, BlockRepository, StoredDisk};
use crate::objstore::object_format::BlockId;

/// What a restore of one disk did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiskRestoreStats {
    /// Blocks fetched and written.
    pub blocks: u64,
    /// Bytes written (holes excluded).
    pub bytes_written: u64,
}

fn block_content(
    repo: &BlockRepository,
    disk: &StoredDisk,
    index: usize,
    id: &BlockId,
) -> Result<Vec<u8>, BlockRepoError> {
    let len = disk.blocks.block_len(index) as usize;
    let content = repo.get_block(id, len)?;
    if *blake3::hash(&content).as_bytes() != disk.table[index] {
        return Err(BlockRepoError::Damaged {
            store: repo.describe(),
            object: id.object_key(),
            reason: format!(
                "its content is not what the block table of disk {} records for block {index}",
                disk.record.target
            ),
        });
    }
    Ok(content)
}

/// Runs `each(index, id)` for every stored block of `disk` on `workers` threads; stops at the
/// first error, or when `cancelled` is set.
fn for_each_block(
    disk: &StoredDisk,
    workers: usize,
    cancelled: &AtomicBool,
    each: impl Fn(usize, &BlockId) -> Result<(), BlockRepoError> + Sync,
) -> Result<(), BlockRepoError> {
    let stored: Vec<(usize, BlockId)> = (0..disk.blocks.len())
        .filter_map(|i| disk.blocks.get(i).map(|id| (i, id)))
        .collect();
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let first_error = Mutex::new(None);
    std::thread::scope(|scope| {
        for _ in 0..workers.max(1) {
            scope.spawn(|| loop {
                if failed.load(Ordering::Relaxed) {
                    return;
                }
                if cancelled.load(Ordering::Relaxed) {
                    failed.store(true, Ordering::Relaxed);
                    first_error
                        .lock()
                        .expect("not poisoned")
                        .get_or_insert(BlockRepoError::Cancelled);
                    return;
                }
                let at = next.fetch_add(1, Ordering::Relaxed);
                let Some((index, id)) = stored.get(at) else {
                    return;
                };
                if let Err(e) = each(*index, id) {
                    failed.store(true, Ordering::Relaxed);
                    first_error.lock().expect("not poisoned").get_or_insert(e);
                    return;
                }
            });
        }
    });
    match first_error.into_inner().expect("not poisoned") {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Restores `target` of the backup into a new sparse file at `path` (refused if it exists).
/// A failed restore removes the file: a partial file never looks like a restored disk.
pub fn restore_to_file(
    repo: &BlockRepository,
    manifest: &BlockManifest,
    target: &str,
    path: &Path,
    workers: usize,
    cancelled: &AtomicBool,
) -> Result<DiskRestoreStats, BlockRepoError> {
    let disk = repo.disk(manifest, target)?;
    let file_error = |source| BlockRepoError::File {
        path: path.display().to_string(),
        source,
    };
    let file: File = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(file_error)?;
    let result = (|| {
        file.set_len(disk.record.size).map_err(file_error)?;
        let stats = Mutex::new(DiskRestoreStats::default());
        for_each_block(&disk, workers, cancelled, |index, id| {
            let content = block_content(repo, &disk, index, id)?;
            let offset = index as u64 * u64::from(disk.blocks.block_size());
            file.write_all_at(&content, offset).map_err(file_error)?;
            let mut stats = stats.lock().expect("not poisoned");
            stats.blocks += 1;
            stats.bytes_written += content.len() as u64;
            Ok(())
        })?;
        file.sync_all().map_err(file_error)?;
        Ok(stats.into_inner().expect("not poisoned"))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(path);
    }
    result
}

/// What a verify found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyFindings {
    /// Backups checked.
    pub backups: u64,
    /// Distinct blocks referenced by the backups.
    pub blocks_referenced: u64,
    /// Blocks whose content was read and checked (the sample).
    pub blocks_read: u64,
    /// Each problem, naming the object and the backup.
    pub problems: Vec<String>,
}

/// Which blocks a verify reads: all of them, none, or a random sample of a fraction of them
/// (a new sample each run, as restic's `--read-data-subset`, so runs together cover more).
#[derive(Debug, Clone, Copy)]
pub struct ReadSample {
    fraction: f64,
    seed: [u8; 32],
}

impl ReadSample {
    /// Reads `fraction` (0 to 1) of the blocks, chosen anew by `seed`.
    pub fn new(fraction: f64, seed: [u8; 32]) -> Self {
        ReadSample {
            fraction: fraction.clamp(0.0, 1.0),
            seed,
        }
    }

    /// Reads every block.
    pub fn all() -> Self {
        Self::new(1.0, [0; 32])
    }

    /// Reads no block.
    pub fn none() -> Self {
        Self::new(0.0, [0; 32])
    }

    fn reads_any(&self) -> bool {
        self.fraction > 0.0
    }

    /// Whether block `id` is in the sample.
    pub fn takes(&self, id: &BlockId) -> bool {
        if self.fraction >= 1.0 {
            return true;
        }
        let digest = blake3::keyed_hash(&self.seed, &id.0);
        let position = u64::from_le_bytes(digest.as_bytes()[..8].try_into().expect("8 bytes"));
        (position as f64) < self.fraction * (u64::MAX as f64)
    }
}

/// Checks every backup of the repository: manifests, block lists and tables open and agree,
/// every block they name exists, and the blocks `sample` takes open, hash to their id and to
/// their table entry. Problems are collected, not fatal: the report names all of them.
pub fn verify(
    repo: &BlockRepository,
    sample: ReadSample,
    workers: usize,
    cancelled: &AtomicBool,
) -> Result<VerifyFindings, BlockRepoError> {
    let present: BTreeSet<String> = repo
        .store()
        .list("blocks")?
        .into_iter()
        .filter(|o| o.size > 0)
        .map(|o| o.key)
        .collect();
    let mut findings = VerifyFindings::default();
    let mut checked: BTreeSet<BlockId> = BTreeSet::new();
    let mut referenced: BTreeSet<BlockId> = BTreeSet::new();
    for domain in repo.domains()? {
        let manifests = match repo.backups(&domain) {
            Ok(m) => m,
            Err(e) => {
                findings.problems.push(e.to_string());
                continue;
            }
        };
        for manifest in manifests {
            findings.backups += 1;
            for record in &manifest.disks {
                let disk = match repo.disk(&manifest, &record.target) {
                    Ok(disk) => disk,
                    Err(e) => {
                        findings.problems.push(e.to_string());
                        continue;
                    }
                };
                for index in 0..disk.blocks.len() {
                    let Some(id) = disk.blocks.get(index) else {
                        continue;
                    };
                    if !present.contains(&id.object_key()) {
                        findings.problems.push(
                            BlockRepoError::MissingBlock {
                                store: repo.describe(),
                                object: id.object_key(),
                                backup: manifest.backup_id.clone(),
                                disk: record.target.clone(),
                            }
                            .to_string(),
                        );
                    }
                }
                if sample.reads_any() {
                    let problems = Mutex::new(Vec::new());
                    let fresh = Mutex::new(Vec::new());
                    let _ = for_each_block(&disk, workers, cancelled, |index, id| {
                        if checked.contains(id)
                            || !present.contains(&id.object_key())
                            || !sample.takes(id)
                        {
                            return Ok(());
                        }
                        match block_content(repo, &disk, index, id) {
                            Ok(_) => fresh.lock().expect("not poisoned").push(*id),
                            Err(e) => problems.lock().expect("not poisoned").push(format!(
                                "{e} (backup {}, disk {}, block {index})",
                                manifest.backup_id, record.target
                            )),
                        }
                        Ok(())
                    });
                    let fresh = fresh.into_inner().expect("not poisoned");
                    findings.blocks_read += fresh.len() as u64;
                    checked.extend(fresh);
                    findings
                        .problems
                        .extend(problems.into_inner().expect("not poisoned"));
                    if cancelled.load(Ordering::Relaxed) {
                        return Err(BlockRepoError::Cancelled);
                    }
                }
                referenced.extend(disk.blocks.referenced());
            }
        }
    }
    findings.blocks_referenced = referenced.len() as u64;
    Ok(findings)
}
