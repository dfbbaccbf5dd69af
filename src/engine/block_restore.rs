//! Restore of one disk from a block repository (`block_repo`): no chain to replay, the
//! backup's block list names every block.
//!
//! The target handling is restore's own (`restore::restore_into`: a new file or RBD image under
//! a temporary name, put under the target's name only when complete; `--force` as there). What
//! differs is the filling: `workers` threads fetch blocks (each opened, checked against its id
//! and against the plain hash in the block table), the restoring thread writes them at their
//! offsets as they arrive (holes are never written: a new file or image reads zeros there),
//! then the result is compared with the block table, as every restore does
//! (`restore::check_restored`). Each block is written once, whole, so what was written tells
//! every block's hash and by default nothing is read back; with `read_back` every block is.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Instant;

use crate::block_repo::{BlockManifest, BlockRepoError, BlockRepository, StoredDisk};
use crate::error::Error;
use crate::objstore::object_format::BlockId;

use super::block_io::ExtentSink;
use super::restore::{
    check_restored, chosen_disk, restore_into, FollowedSink, PlacedImage, RestoreOptions,
    RestoreReport,
};
use super::CancelToken;

/// Blocks fetched at once: an object store's latency, not its bandwidth, is what one stream
/// waits on. Each holds one block (and its sealed copy) in memory.
const FETCH_WORKERS: usize = 4;

/// A backup of the block repository chosen by domain (name or UUID) and id (`None` or
/// `latest`: the newest).
pub(super) fn find_backup(
    repo: &BlockRepository,
    domain: &str,
    backup: Option<&str>,
) -> Result<BlockManifest, Error> {
    let mut found = None;
    for uuid in repo.domains()? {
        // One unreadable backup must not keep the others from being restored.
        let (manifests, unreadable) = repo.readable_backups(&uuid)?;
        let named =
            uuid.eq_ignore_ascii_case(domain) || manifests.iter().any(|m| m.domain.name == domain);
        if named {
            if found.is_some() {
                return Err(BlockRepoError::AmbiguousDomain {
                    store: repo.describe(),
                    name: domain.to_string(),
                }
                .into());
            }
            if let Some((_, error)) = unreadable
                .into_iter()
                .find(|(id, _)| Some(id.as_str()) == backup)
            {
                return Err(error.into());
            }
            found = Some(manifests);
        }
    }
    let manifests = found.ok_or_else(|| {
        Error::from(BlockRepoError::NoBackupsOfDomain {
            store: repo.describe(),
            domain: domain.to_string(),
        })
    })?;
    let chosen = match backup {
        None | Some("latest") => manifests.into_iter().last(),
        Some(id) => manifests.into_iter().find(|m| m.backup_id == id),
    };
    chosen.ok_or_else(|| {
        Error::from(BlockRepoError::NoSuchBackup {
            store: repo.describe(),
            domain: domain.to_string(),
            backup: backup.unwrap_or("latest").to_string(),
        })
    })
}

/// Writes every stored block of `disk` into `sink` (fetched by `FETCH_WORKERS` threads), then
/// checks the result against the block table (`check_restored`; with `read_back` every block
/// is read back from the target). Returns the bytes written.
pub(super) fn write_blocks(
    repo: &BlockRepository,
    disk: &StoredDisk,
    sink: &mut dyn ExtentSink,
    read_back: bool,
    cancel: &CancelToken,
) -> Result<u64, Error> {
    let mut followed = FollowedSink::new(sink);
    let sink = &mut followed;
    sink.resize(disk.record.size)?;
    let stored: Vec<(usize, BlockId)> = (0..disk.blocks.len())
        .filter_map(|i| disk.blocks.get(i).map(|id| (i, id)))
        .collect();
    let block_size = u64::from(disk.blocks.block_size());
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    // Bounded: fetched blocks wait for the writer, at most two per worker.
    let (tx, rx) =
        crossbeam_channel::bounded::<Result<(usize, Vec<u8>), BlockRepoError>>(FETCH_WORKERS * 2);
    let mut written = 0u64;
    let outcome = std::thread::scope(|scope| -> Result<(), Error> {
        for _ in 0..FETCH_WORKERS {
            let tx = tx.clone();
            let (stored, next, stop) = (&stored, &next, &stop);
            scope.spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let Some((index, id)) = stored.get(next.fetch_add(1, Ordering::Relaxed)) else {
                        return;
                    };
                    let fetched = repo
                        .get_block(id, disk.blocks.block_len(*index) as usize)
                        .and_then(|content| {
                            if *blake3::hash(&content).as_bytes() == disk.table[*index] {
                                Ok((*index, content))
                            } else {
                                Err(BlockRepoError::Damaged {
                                    store: repo.describe(),
                                    object: id.object_key(),
                                    reason: format!(
                                        "its content is not what the block table of disk {} records for block {index}",
                                        disk.record.target
                                    ),
                                })
                            }
                        });
                    if tx.send(fetched).is_err() {
                        return;
                    }
                }
            });
        }
        drop(tx);
        let result = (|| {
            for fetched in rx.iter() {
                if cancel.is_cancelled() {
                    return Err(Error::Cancelled);
                }
                let (index, mut content) = fetched?;
                written += sink.write_checked_block(
                    index as u64 * block_size,
                    &mut content,
                    disk.table[index],
                )?;
            }
            Ok(())
        })();
        // Stops the fetchers and drains what they still send, so none waits on a full queue.
        stop.store(true, Ordering::Relaxed);
        for _ in rx.iter() {}
        result
    });
    outcome?;
    let (sink, written_content) = followed.into_parts();
    let path = std::path::PathBuf::from(format!("{}: {}", repo.describe(), disk.record.target));
    check_restored(
        sink,
        written_content,
        read_back,
        disk.record.size,
        &disk.table,
        &path,
    )?;
    Ok(written)
}

/// Restores one disk from the block repository at `options.repo`; an RBD target is placed but
/// the image it replaced, if any, is still aside (`PlacedImage`).
pub(super) fn restore_disk(
    options: &RestoreOptions,
    repo: &BlockRepository,
    cancel: &CancelToken,
) -> Result<(RestoreReport, Option<PlacedImage>), Error> {
    let started = Instant::now();
    let manifest = find_backup(repo, &options.domain, options.backup.as_deref())?;
    let target = chosen_disk(
        options.disk.as_deref(),
        manifest.disks.iter().map(|d| d.target.clone()).collect(),
        &manifest.backup_id,
        &manifest.domain.name,
    )?;
    if !manifest.disks.iter().any(|d| d.target == target) {
        return Err(BlockRepoError::NoSuchDisk {
            store: repo.describe(),
            domain: manifest.domain.name.clone(),
            backup: manifest.backup_id.clone(),
            target,
            disks: manifest.disks.iter().map(|d| d.target.clone()).collect(),
        }
        .into());
    }
    let disk = repo.disk(&manifest, &target)?;
    let (target_text, bytes_written, placed) = restore_into(
        options,
        disk.record.size,
        || {
            options
                .ceph
                .connect_for_disk(&manifest.domain.xml, &manifest.domain.name, &target)
        },
        |sink| write_blocks(repo, &disk, sink, options.read_back, cancel),
    )?;
    let report = RestoreReport {
        domain: manifest.domain.name.clone(),
        backup_id: manifest.backup_id.clone(),
        disk: target,
        // Complete on its own: the backup is its whole chain.
        chain: vec![manifest.backup_id.clone()],
        target: target_text,
        size: disk.record.size,
        bytes_written,
        checksum: disk.record.checksum.clone(),
        seconds: started.elapsed().as_secs_f64(),
        warnings: Vec::new(),
        skipped: Vec::new(),
    };
    Ok((report, placed))
}
