//! Parallel uploads of a disk's blocks with bounded memory.
//!
//! The reader (the engine's read pipeline) hands each block it read to [`Submitter::submit`];
//! `workers` threads hash it (plain BLAKE3 for the content checksum, and the keyed id in an
//! encrypted repository), skip it when it is all zeros (a hole), and store it unless the
//! repository has it already. The work queue holds at most `workers` blocks, so the reader
//! waits when the store is slower than Ceph: memory stays at the reader's buffers plus two
//! blocks per worker (the block and its sealed copy), whatever the disk's size. Buffers come
//! back to the reader for reuse.

use std::ops::Deref;
use std::sync::atomic::{AtomicBool, Ordering};

use crossbeam_channel::{bounded, unbounded, Receiver, Sender};

use super::{BlockPut, BlockRepoError, BlockRepository};
use crate::objstore::object_format::BlockId;

/// What became of one block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UploadedBlock {
    /// Block index in the disk.
    pub index: u64,
    /// Its id, or `None` when it is all zeros (a hole, not stored).
    pub id: Option<BlockId>,
    /// Plain BLAKE3 of its content (the block table's entry).
    pub hash: [u8; 32],
    /// Whether it was uploaded (and its stored size) or already there; `None` for a hole.
    pub put: Option<BlockPut>,
}

/// Hands blocks to the upload workers.
pub struct Submitter<B> {
    work: Sender<(u64, B)>,
    spare: Receiver<B>,
    failed: std::sync::Arc<AtomicBool>,
}

impl<B> Submitter<B> {
    /// Queues block `index` (waits while the queue is full) and returns a buffer that a worker
    /// is done with, if there is one. Fails as soon as a worker failed, so the reader stops.
    pub fn submit(&mut self, index: u64, data: B) -> Result<Option<B>, BlockRepoError> {
        if self.failed.load(Ordering::Relaxed) || self.work.send((index, data)).is_err() {
            return Err(BlockRepoError::Cancelled);
        }
        Ok(self.spare.try_recv().ok())
    }
}

fn is_zero(data: &[u8]) -> bool {
    crate::repo::image_file::is_zero(data)
}

fn upload_one(
    repo: &BlockRepository,
    index: u64,
    data: &[u8],
) -> Result<UploadedBlock, BlockRepoError> {
    let hash = *blake3::hash(data).as_bytes();
    if is_zero(data) {
        return Ok(UploadedBlock {
            index,
            id: None,
            hash,
            put: None,
        });
    }
    let id = if repo.plain_ids() {
        BlockId(hash)
    } else {
        repo.block_id(data)
    };
    let put = repo.put_block(&id, data)?;
    Ok(UploadedBlock {
        index,
        id: Some(id),
        hash,
        put: Some(put),
    })
}

/// Runs `produce` (which submits blocks) against `workers` upload threads; returns what became
/// of every block submitted, in no particular order. The first error wins: a worker's (a store
/// failure) over the reader's stop that it causes.
pub fn upload_blocks<B, E, P>(
    repo: &BlockRepository,
    workers: usize,
    produce: P,
) -> Result<Vec<UploadedBlock>, E>
where
    B: Deref<Target = [u8]> + Send,
    E: From<BlockRepoError> + Send,
    P: FnOnce(&mut Submitter<B>) -> Result<(), E>,
{
    let workers = workers.max(1);
    let (work_tx, work_rx) = bounded::<(u64, B)>(workers);
    let (spare_tx, spare_rx) = unbounded::<B>();
    let failed = std::sync::Arc::new(AtomicBool::new(false));
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                let (work_rx, spare_tx, failed) =
                    (work_rx.clone(), spare_tx.clone(), failed.clone());
                scope.spawn(move || -> Result<Vec<UploadedBlock>, BlockRepoError> {
                    let mut done = Vec::new();
                    let mut first_error = None;
                    // Keeps draining after a failure, so the reader never waits on a full queue.
                    for (index, data) in work_rx.iter() {
                        if first_error.is_none() {
                            match upload_one(repo, index, &data) {
                                Ok(block) => done.push(block),
                                Err(e) => {
                                    failed.store(true, Ordering::Relaxed);
                                    first_error = Some(e);
                                }
                            }
                        }
                        let _ = spare_tx.send(data);
                    }
                    match first_error {
                        Some(e) => Err(e),
                        None => Ok(done),
                    }
                })
            })
            .collect();
        drop(work_rx);
        drop(spare_tx);
        let mut submitter = Submitter {
            work: work_tx,
            spare: spare_rx,
            failed: failed.clone(),
        };
        let produced = produce(&mut submitter);
        drop(submitter);
        let mut blocks = Vec::new();
        let mut worker_error = None;
        for handle in handles {
            match handle.join() {
                Ok(Ok(done)) => blocks.extend(done),
                Ok(Err(e)) => worker_error = worker_error.or(Some(e)),
                Err(_) => {
                    worker_error = worker_error.or(Some(BlockRepoError::Damaged {
                        store: repo.describe(),
                        object: "-".into(),
                        reason: "internal error (panic) in an upload worker".into(),
                    }))
                }
            }
        }
        if let Some(e) = worker_error {
            return Err(E::from(e));
        }
        produced?;
        Ok(blocks)
    })
}

/// A disk's blocks once its uploads are done.
#[derive(Debug, Clone)]
pub struct DiskBlocks {
    /// The block list to store.
    pub blocks: crate::objstore::block_list::BlockList,
    /// The plain hash of every block (zeros' hash for holes).
    pub table: Vec<[u8; 32]>,
    /// The content checksum (`blake3-4m:<hex>`).
    pub checksum: String,
    /// Blocks holding data.
    pub data_blocks: u64,
    /// Blocks uploaded by this backup.
    pub new_blocks: u64,
    /// Their stored bytes.
    pub bytes_stored: u64,
}

/// Puts a disk's block list together: the parent's blocks (an incremental of a disk of the
/// same size) with the blocks read now on top, or the blocks read alone (a full backup).
pub fn assemble_disk(
    size: u64,
    parent: Option<&super::StoredDisk>,
    uploaded: &[UploadedBlock],
) -> Result<DiskBlocks, String> {
    use crate::objstore::block_list::BlockList;
    use crate::plan::ContentHasher;
    let (mut blocks, mut hasher) = match parent {
        Some(parent) if parent.record.size == size => (
            parent.blocks.clone(),
            ContentHasher::from_parent(size, &parent.table, parent.record.size),
        ),
        Some(_) => return Err("an incremental needs a parent of the same size".into()),
        None => (
            BlockList::new(size, super::BLOCK_SIZE)?,
            ContentHasher::new(size),
        ),
    };
    let (mut new_blocks, mut bytes_stored) = (0, 0);
    for block in uploaded {
        blocks.set(block.index as usize, block.id)?;
        hasher.add_block_hash(block.index, block.hash);
        if let Some(super::BlockPut::Stored(bytes)) = block.put {
            new_blocks += 1;
            bytes_stored += bytes;
        }
    }
    let data_blocks = (0..blocks.len())
        .filter(|&i| blocks.get(i).is_some())
        .count() as u64;
    let (checksum, table) = hasher.finish_with_hashes();
    Ok(DiskBlocks {
        blocks,
        table,
        checksum,
        data_blocks,
        new_blocks,
        bytes_stored,
    })
}
