//! Exporting one snapshot: allocated blocks only, several reads in flight, hashed and written
//! sparse as they arrive.
//!
//! Memory is bounded by `queue_depth` blocks of 4 MiB, whatever the image size: buffers are
//! recycled, and a block is hashed and written before the next read is queued in its place.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::ceph::{PendingRead, RbdImage};
use crate::error::Error;
use crate::plan::{blocks_to_read, ByteRange, ContentHasher, HASH_BLOCK_SIZE};
use crate::repo::SparseImageWriter;

use super::CancelToken;

/// What an export did.
#[derive(Debug, Clone)]
pub struct ExportStats {
    /// Bytes read from the cluster.
    pub bytes_read: u64,
    /// Bytes of data written (the rest are holes).
    pub bytes_written: u64,
    /// Content checksum (`plan::blocks`).
    pub checksum: String,
    /// Wall time.
    pub elapsed: Duration,
}

/// Reports bytes done out of the total to read.
pub trait ExportProgress {
    /// Called at most a few times a second, and once at the end.
    fn progress(&self, done: u64, total: u64);
}

/// Exports `image` (open at the snapshot, `size` bytes) into `writer`.
pub fn export_snapshot(
    image: &RbdImage<'_>,
    size: u64,
    use_object_map: bool,
    queue_depth: usize,
    writer: &mut SparseImageWriter,
    cancel: &CancelToken,
    progress: &dyn ExportProgress,
) -> Result<ExportStats, Error> {
    let started = Instant::now();
    let extents = image.diff_extents(None, size, use_object_map)?;
    let ranges: Vec<ByteRange> = extents
        .iter()
        .filter(|e| e.exists)
        .map(|e| ByteRange {
            offset: e.offset,
            length: e.length,
        })
        .collect();
    let blocks = blocks_to_read(&ranges, size, HASH_BLOCK_SIZE);
    let mut hasher = ContentHasher::new(size);
    let total: u64 = blocks.iter().map(|&b| hasher.block_len(b)).sum();
    let queue_depth = queue_depth.max(1);

    let mut free_buffers: Vec<Vec<u8>> = Vec::with_capacity(queue_depth);
    let mut in_flight: VecDeque<(u64, PendingRead<'_>)> = VecDeque::with_capacity(queue_depth);
    let mut next = blocks.iter().copied();
    let mut done = 0u64;
    let mut last_report = Instant::now();

    loop {
        // Keep the queue full.
        while in_flight.len() < queue_depth {
            let Some(block) = next.next() else { break };
            if cancel.is_cancelled() {
                return Err(Error::Cancelled);
            }
            let len = hasher.block_len(block) as usize;
            let mut buf = free_buffers.pop().unwrap_or_default();
            buf.resize(len, 0);
            in_flight.push_back((block, image.start_read(block * HASH_BLOCK_SIZE, buf)?));
        }
        // Complete the oldest read; the rest keep the cluster busy meanwhile.
        let Some((block, read)) = in_flight.pop_front() else {
            break;
        };
        let offset = read.offset();
        let data = read.wait()?;
        hasher.add_block(block, &data);
        writer.write_at(offset, &data)?;
        done += data.len() as u64;
        free_buffers.push(data);
        if last_report.elapsed() >= Duration::from_millis(250) {
            progress.progress(done, total);
            last_report = Instant::now();
        }
    }
    progress.progress(done, total);
    Ok(ExportStats {
        bytes_read: done,
        bytes_written: writer.bytes_written(),
        checksum: hasher.finish(),
        elapsed: started.elapsed(),
    })
}
