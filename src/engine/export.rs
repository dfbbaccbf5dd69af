//! Exporting one snapshot: only the blocks that matter, several reads in flight, hashed and
//! written as they arrive.
//!
//! The snapshot is read through `block_io::SnapshotSource` (an `RbdImage` in a backup run,
//! `block_io::MemorySnapshot` in the unit tests).
//!
//! A full export reads every 4 MiB block that holds allocated data and writes it into a sparse
//! raw file. An incremental writes the changed extents as an rbd diff (`rbd export-diff`
//! format) and re-hashes only the blocks they touch: it reads the 64 KiB leaves around the
//! changed extents and merges their new chaining values with the base's (`plan::leaves`), or the
//! whole block when the base's leaves are not known. The block hashes of unchanged blocks are
//! carried over from the parent's table, so the new content checksum costs only what changed.
//! Memory is bounded by `queue_depth` + 2 buffers per image (reads in flight and blocks being
//! written), whatever the image size: buffers are recycled.

use std::collections::VecDeque;
use std::io::Write;
use std::time::{Duration, Instant};

use crate::block_repo::upload::{upload_blocks, UploadedBlock};
use crate::block_repo::BlockRepository;
use crate::buffer::AlignedBuf;
use crate::ceph::Extent;
use crate::error::Error;
use crate::plan::{
    block_leaves, blocks_to_read, leaf_cv, leaf_runs, root_of, BlockLeaves, ByteRange,
    ContentHasher, TokenBucket, HASH_BLOCK_SIZE, LEAF_SIZE,
};
use crate::repo::leaf_table::{BaseLeaves, LeafTableWriter};
use crate::repo::rbd_diff::RbdDiffWriter;
use crate::repo::SparseImageWriter;

use super::block_io::{InFlightRead, SnapshotSource};
use super::CancelToken;

/// What an export did.
#[derive(Debug, Clone)]
pub struct ExportStats {
    /// Bytes read from the cluster.
    pub bytes_read: u64,
    /// Content checksum of the image at the snapshot (`plan::blocks`).
    pub checksum: String,
    /// Its block hash table.
    pub block_table: Vec<[u8; 32]>,
    /// Wall time.
    pub elapsed: Duration,
}

/// How reads are run: in flight at once, rate limit, cancellation, progress.
pub struct ReadPipeline<'a> {
    /// Reads in flight per image.
    pub queue_depth: usize,
    /// Shared rate limit of the run (`--bwlimit`).
    pub limit: Option<&'a BandwidthLimit>,
    /// Cancellation.
    pub cancel: &'a CancelToken,
    /// Progress reports.
    pub progress: &'a dyn ExportProgress,
}

/// The run's read rate limit, shared by every image being read.
pub struct BandwidthLimit {
    bucket: std::sync::Mutex<TokenBucket>,
    origin: Instant,
}

impl BandwidthLimit {
    /// At most `bytes_per_second` on average; bursts of two blocks.
    pub fn new(bytes_per_second: u64) -> Self {
        BandwidthLimit {
            bucket: std::sync::Mutex::new(TokenBucket::new(bytes_per_second, 2 * HASH_BLOCK_SIZE)),
            origin: Instant::now(),
        }
    }

    /// Waits until `bytes` may be read.
    pub fn acquire(&self, bytes: u64) {
        let wait = {
            let mut bucket = self.bucket.lock().unwrap_or_else(|p| p.into_inner());
            bucket.reserve(self.origin.elapsed().as_secs_f64(), bytes)
        };
        if wait > 0.0 {
            std::thread::sleep(Duration::from_secs_f64(wait));
        }
    }
}

impl ExportStats {
    /// The stats of an export that read `bytes_read` and hashed into `hasher`.
    fn new(hasher: ContentHasher, bytes_read: u64, started: Instant) -> Self {
        let (checksum, block_table) = hasher.finish_with_hashes();
        ExportStats {
            bytes_read,
            checksum,
            block_table,
            elapsed: started.elapsed(),
        }
    }
}

/// Reports bytes done out of the total to read.
pub trait ExportProgress {
    /// Called at most a few times a second, and once at the end.
    fn progress(&self, done: u64, total: u64);
}

/// The 4 MiB blocks of `image` (`size` bytes) that hold allocated data; the others are
/// never read.
pub fn allocated_blocks<S: SnapshotSource + ?Sized>(
    image: &S,
    size: u64,
    use_object_map: bool,
) -> Result<Vec<u64>, Error> {
    let extents = image.diff_extents(None, size, use_object_map)?;
    let ranges: Vec<ByteRange> = extents
        .iter()
        .filter(|e| e.exists)
        .map(byte_range)
        .collect();
    Ok(blocks_to_read(&ranges, size, HASH_BLOCK_SIZE))
}

/// The block hash table of `image` as it is now, reading one allocated block at a time
/// (for checks of a result, where speed matters less than simplicity).
pub fn image_block_table<S: SnapshotSource + ?Sized>(
    image: &S,
    size: u64,
    use_object_map: bool,
) -> Result<Vec<[u8; 32]>, Error> {
    let mut hasher = ContentHasher::new(size);
    for index in allocated_blocks(image, size, use_object_map)? {
        let buf = AlignedBuf::zeroed(hasher.block_len(index) as usize);
        let data = image.start_read(index * HASH_BLOCK_SIZE, buf)?.wait()?;
        hasher.add_block(index, &data);
    }
    Ok(hasher.finish_with_hashes().1)
}

/// A byte range of one block to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Piece {
    block: u64,
    offset: u64,
    length: u64,
}

/// Every byte of each of `blocks` of an image of `size` bytes, one piece a block.
fn whole_blocks(blocks: &[u64], size: u64) -> Vec<Piece> {
    blocks
        .iter()
        .map(|&block| whole_block(block, size))
        .collect()
}

fn whole_block(block: u64, size: u64) -> Piece {
    let offset = block * HASH_BLOCK_SIZE;
    Piece {
        block,
        offset,
        length: (size - offset).min(HASH_BLOCK_SIZE),
    }
}

/// Reads `pieces` (ascending) of `image` with `queue_depth` reads in flight and hands each to
/// `consume(piece, data)` in order. Returns the bytes read.
fn read_pieces<S: SnapshotSource + ?Sized>(
    image: &S,
    pieces: &[Piece],
    pipeline: &ReadPipeline<'_>,
    mut consume: impl FnMut(Piece, &[u8]) -> Result<(), Error>,
) -> Result<u64, Error> {
    read_pieces_into(image, pieces, pipeline, |piece, data| {
        consume(piece, &data)?;
        Ok(Some(data))
    })
}

/// `read_pieces`, where `consume` takes each buffer and hands back one to reuse, if it has one
/// (a writer keeps the buffers it is writing and hands them back later).
fn read_pieces_into<S: SnapshotSource + ?Sized>(
    image: &S,
    pieces: &[Piece],
    pipeline: &ReadPipeline<'_>,
    mut consume: impl FnMut(Piece, AlignedBuf) -> Result<Option<AlignedBuf>, Error>,
) -> Result<u64, Error> {
    let total: u64 = pieces.iter().map(|p| p.length).sum();
    let queue_depth = pipeline.queue_depth.max(1);
    let (cancel, progress) = (pipeline.cancel, pipeline.progress);
    let mut free_buffers: Vec<AlignedBuf> = Vec::with_capacity(queue_depth);
    // Buffers a consumer keeps (being written) count against memory too: at most two more
    // than the reads in flight, unless nothing is in flight (then one more is allocated).
    let max_buffers = queue_depth + 2;
    let mut buffers = 0usize;
    let mut in_flight: VecDeque<(Piece, S::Read<'_>)> = VecDeque::with_capacity(queue_depth);
    let mut next = pieces.iter().copied().peekable();
    let mut done = 0u64;
    let mut last_report = Instant::now();
    loop {
        // Keep the queue full, as far as buffers allow.
        while in_flight.len() < queue_depth && next.peek().is_some() {
            let mut buf = match free_buffers.pop() {
                Some(buf) => buf,
                None if buffers < max_buffers || in_flight.is_empty() => {
                    buffers += 1;
                    AlignedBuf::default()
                }
                None => break,
            };
            let piece = next.next().expect("peeked");
            if cancel.is_cancelled() {
                return Err(Error::Cancelled);
            }
            if let Some(limit) = pipeline.limit {
                limit.acquire(piece.length);
            }
            buf.resize(piece.length as usize);
            in_flight.push_back((piece, image.start_read(piece.offset, buf)?));
        }
        // Complete the oldest read; the others keep the cluster busy meanwhile.
        let Some((piece, read)) = in_flight.pop_front() else {
            break;
        };
        let data = read.wait()?;
        let length = data.len() as u64;
        if let Some(spare) = consume(piece, data)? {
            free_buffers.push(spare);
        }
        if done == 0 {
            super::thaw_guard::test_pause("exported");
            super::thaw_guard::test_pause("exporting");
        }
        done += length;
        if last_report.elapsed() >= Duration::from_millis(250) {
            progress.progress(done, total);
            last_report = Instant::now();
        }
    }
    progress.progress(done, total);
    Ok(done)
}

/// Hashes a whole block into `hasher` and, for a full block, records its leaves in `leaves_out`.
fn hash_whole_block(
    hasher: &mut ContentHasher,
    leaves_out: &mut Option<&mut LeafTableWriter>,
    block: u64,
    data: &[u8],
) -> Result<(), Error> {
    match block_leaves(data) {
        Some(leaves) => {
            hasher.add_block_hash(block, root_of(&leaves));
            if let Some(out) = leaves_out {
                out.add(block, &leaves)?;
            }
        }
        None => hasher.add_block(block, data),
    }
    Ok(())
}

/// Full export of `image` (open at the snapshot, `size` bytes) into a sparse raw file.
pub fn export_full<S: SnapshotSource + ?Sized>(
    image: &S,
    size: u64,
    use_object_map: bool,
    writer: &mut SparseImageWriter,
    mut leaves_out: Option<&mut LeafTableWriter>,
    pipeline: &ReadPipeline<'_>,
) -> Result<ExportStats, Error> {
    let started = Instant::now();
    let blocks = allocated_blocks(image, size, use_object_map)?;
    let mut hasher = ContentHasher::new(size);
    let pieces = whole_blocks(&blocks, size);
    let bytes_read = read_pieces_into(image, &pieces, pipeline, |piece, data| {
        hash_whole_block(&mut hasher, &mut leaves_out, piece.block, &data)?;
        Ok(writer.write_block(piece.offset, data)?)
    })?;
    Ok(ExportStats::new(hasher, bytes_read, started))
}

/// The bytes an extent covers.
fn byte_range(extent: &Extent) -> ByteRange {
    ByteRange {
        offset: extent.offset,
        length: extent.length,
    }
}

/// `extents` without empty ones, cut at `size`, in order of offset.
fn clip_extents(mut extents: Vec<Extent>, size: u64) -> Vec<Extent> {
    extents.retain(|e| e.length > 0 && e.offset < size);
    for e in &mut extents {
        e.length = e.length.min(size - e.offset);
    }
    extents.sort_by_key(|e| e.offset);
    extents
}

/// The runs of adjacent changed (`exists`) extents of a sorted list, merged.
fn changed_runs(extents: &[Extent]) -> Vec<ByteRange> {
    let mut runs: Vec<ByteRange> = Vec::new();
    for e in extents.iter().filter(|e| e.exists) {
        match runs.last_mut() {
            Some(last) if last.offset + last.length == e.offset => last.length += e.length,
            _ => runs.push(ByteRange {
                offset: e.offset,
                length: e.length,
            }),
        }
    }
    runs
}

/// The base of an incremental export.
pub struct IncrementalBase<'a> {
    /// Snapshot name the diff starts from.
    pub snapshot: &'a str,
    /// Image size at the base.
    pub size: u64,
    /// Block hash table of the content at the base (verified against its manifest).
    pub block_table: &'a [[u8; 32]],
    /// Leaves of the base's blocks (the chain's leaf tables).
    pub leaves: &'a BaseLeaves,
}

/// How a block an incremental touches gets its new hash.
enum Rehash {
    /// From the base's leaves, the touched ones recomputed from what is read.
    Leaves(Box<BlockLeaves>),
    /// From the whole block, read.
    Whole,
}

/// The pieces an incremental reads, and how each touched block is re-hashed: only the leaves
/// around `changed` where the base's leaves of a block are known, else the whole block.
/// Blocks in `blocks` that `changed` does not touch keep their hash and are not read.
fn plan_rehash(
    blocks: &[u64],
    changed: &[ByteRange],
    size: u64,
    base: &IncrementalBase<'_>,
) -> (Vec<Piece>, Vec<(u64, Rehash)>) {
    let mut changed_in: std::collections::BTreeMap<u64, Vec<ByteRange>> = Default::default();
    for range in changed.iter().filter(|r| r.length > 0) {
        let first = range.offset / HASH_BLOCK_SIZE;
        let last = (range.offset + range.length - 1) / HASH_BLOCK_SIZE;
        for block in first..=last {
            changed_in.entry(block).or_default().push(*range);
        }
    }
    let base_len = |b: u64| {
        base.size
            .saturating_sub(b * HASH_BLOCK_SIZE)
            .min(HASH_BLOCK_SIZE)
    };
    let mut pieces = Vec::new();
    let mut plans = Vec::new();
    for &block in blocks {
        let whole = whole_block(block, size);
        let known = (whole.length == HASH_BLOCK_SIZE && base_len(block) == HASH_BLOCK_SIZE)
            .then(|| base.block_table.get(block as usize))
            .flatten()
            .and_then(|hash| base.leaves.find(block, hash));
        match known {
            Some(leaves) => {
                let runs = leaf_runs(block, changed_in.get(&block).map_or(&[], |v| v));
                if runs.is_empty() {
                    continue;
                }
                pieces.extend(runs.iter().map(|r| Piece {
                    block,
                    offset: r.offset,
                    length: r.length,
                }));
                plans.push((block, Rehash::Leaves(leaves)));
            }
            None => {
                pieces.push(whole);
                plans.push((block, Rehash::Whole));
            }
        }
    }
    (pieces, plans)
}

/// Forms the hash of a block re-hashed from its leaves, and records the leaves.
fn finish_leaves_block(
    open: Option<(u64, Box<BlockLeaves>)>,
    hasher: &mut ContentHasher,
    leaves_out: &mut Option<&mut LeafTableWriter>,
) -> Result<(), Error> {
    if let Some((block, leaves)) = open {
        hasher.add_block_hash(block, root_of(&leaves));
        if let Some(out) = leaves_out {
            out.add(block, &leaves)?;
        }
    }
    Ok(())
}

/// Incremental export of `image` (open at the new snapshot `to_snapshot`, `size` bytes) against
/// `base`, written as an rbd diff; the leaves of every block re-hashed go to `leaves_out`.
#[allow(clippy::too_many_arguments)]
pub fn export_incremental<S: SnapshotSource + ?Sized, W: Write>(
    image: &S,
    to_snapshot: &str,
    size: u64,
    base: &IncrementalBase<'_>,
    use_object_map: bool,
    out: W,
    mut leaves_out: Option<&mut LeafTableWriter>,
    pipeline: &ReadPipeline<'_>,
) -> Result<(ExportStats, W), Error> {
    let started = Instant::now();
    let extents = clip_extents(
        image.diff_extents(Some(base.snapshot), size, use_object_map)?,
        size,
    );
    let mut ranges: Vec<ByteRange> = extents.iter().map(byte_range).collect();
    // A block whose length changed with a resize must be re-hashed even if no byte changed.
    let mut edges = Vec::new();
    if size != base.size {
        for edge in [base.size.min(size), size] {
            if edge > 0 {
                edges.push(ByteRange {
                    offset: edge - 1,
                    length: 1,
                });
            }
        }
    }
    ranges.extend(&edges);
    // What is written: with the object map the diff above names whole objects, so each run of
    // changed objects is asked again for its exact extents (one OSD op per object): a 64 KiB
    // write then costs 64 KiB in the repository, not the 4 MiB object around it.
    let written = if use_object_map {
        let mut exact = Vec::new();
        for range in changed_runs(&extents) {
            exact.extend(image.diff_extents_in(
                Some(base.snapshot),
                range.offset,
                range.length,
                false,
            )?);
        }
        exact.extend(extents.iter().filter(|e| !e.exists).copied());
        clip_extents(exact, size)
    } else {
        extents
    };
    // What is read: the leaves around the exact extents (data or zeroed), to re-hash.
    let mut changed: Vec<ByteRange> = written.iter().map(byte_range).collect();
    changed.extend(&edges);
    let blocks = blocks_to_read(&ranges, size, HASH_BLOCK_SIZE);
    let (pieces, plans) = plan_rehash(&blocks, &changed, size, base);
    let data_to_write: u64 = written.iter().filter(|e| e.exists).map(|e| e.length).sum();

    let mut hasher = ContentHasher::from_parent(size, base.block_table, base.size);
    let mut diff = RbdDiffWriter::new(out, Some(base.snapshot), to_snapshot, size)?;
    let mut plans = plans.into_iter().peekable();
    // The block being re-hashed from its leaves, finished when the pieces move past it.
    let mut open: Option<(u64, Box<BlockLeaves>)> = None;
    let mut data_written = 0u64;
    let mut cursor = 0usize; // first extent that may still overlap the current piece
    let bytes_read = read_pieces(image, &pieces, pipeline, |piece, data| {
        if open.as_ref().is_none_or(|(block, _)| *block != piece.block) {
            finish_leaves_block(open.take(), &mut hasher, &mut leaves_out)?;
            match plans.next() {
                Some((block, Rehash::Leaves(leaves))) if block == piece.block => {
                    open = Some((block, leaves));
                }
                Some((block, Rehash::Whole)) if block == piece.block => {
                    hash_whole_block(&mut hasher, &mut leaves_out, block, data)?;
                }
                _ => unreachable!("pieces come in the order of their blocks' plans"),
            }
        }
        if let Some((_, leaves)) = open.as_mut() {
            let first_leaf = ((piece.offset % HASH_BLOCK_SIZE) / LEAF_SIZE) as usize;
            for (i, leaf) in data.chunks_exact(LEAF_SIZE as usize).enumerate() {
                leaves[first_leaf + i] = leaf_cv(first_leaf + i, leaf);
            }
        }
        let piece_end = piece.offset + piece.length;
        while cursor < written.len()
            && written[cursor].offset + written[cursor].length <= piece.offset
        {
            cursor += 1;
        }
        let mut i = cursor;
        while i < written.len() && written[i].offset < piece_end {
            let e = written[i];
            let start = e.offset.max(piece.offset);
            let end = (e.offset + e.length).min(piece_end);
            if start < end {
                if e.exists {
                    diff.write_data(
                        start,
                        &data[(start - piece.offset) as usize..(end - piece.offset) as usize],
                    )?;
                    data_written += end - start;
                } else {
                    diff.write_zero(start, end - start)?;
                }
            }
            i += 1;
        }
        Ok(())
    })?;
    finish_leaves_block(open.take(), &mut hasher, &mut leaves_out)?;
    // Every changed byte lies in a piece read; a gap would be a diff that restores wrong data.
    if data_written != data_to_write {
        return Err(Error::Inconsistent(format!(
            "incremental export of {}: {data_written} of {data_to_write} changed bytes were \
             written; refusing to store an incomplete diff (a bug in virt-rbd-backup, please report it)",
            image.spec()
        )));
    }
    let out = diff.finish()?;
    Ok((ExportStats::new(hasher, bytes_read, started), out))
}

/// Streams the whole image (allocated blocks read, holes sent as zeros) to `out`, in order, for
/// targets that take a byte stream (restic). Unallocated blocks are never read from Ceph.
pub fn export_stream<S: SnapshotSource + ?Sized, W: Write>(
    image: &S,
    size: u64,
    use_object_map: bool,
    out: &mut W,
    pipeline: &ReadPipeline<'_>,
) -> Result<ExportStats, Error> {
    let started = Instant::now();
    let blocks = allocated_blocks(image, size, use_object_map)?;
    let mut hasher = ContentHasher::new(size);
    let zeros = vec![0u8; HASH_BLOCK_SIZE as usize];
    let broken_pipe = |e: std::io::Error| Error::Restic(format!("writing to restic failed: {e}"));
    let mut next_offset = 0u64;
    let pieces = whole_blocks(&blocks, size);
    let bytes_read = read_pieces(image, &pieces, pipeline, |piece, data| {
        let (block, offset) = (piece.block, piece.offset);
        while next_offset < offset {
            let n = (offset - next_offset).min(HASH_BLOCK_SIZE) as usize;
            out.write_all(&zeros[..n]).map_err(broken_pipe)?;
            next_offset += n as u64;
        }
        hasher.add_block(block, data);
        out.write_all(data).map_err(broken_pipe)?;
        next_offset += data.len() as u64;
        Ok(())
    })?;
    while next_offset < size {
        let n = (size - next_offset).min(HASH_BLOCK_SIZE) as usize;
        out.write_all(&zeros[..n]).map_err(broken_pipe)?;
        next_offset += n as u64;
    }
    Ok(ExportStats::new(hasher, bytes_read, started))
}

/// Full export written as an rbd diff from nothing (only non-zero 4 KiB runs become data
/// records), for compressed repositories: a raw image file cannot be compressed and stay
/// usable as a disk, a diff stream can (`zstd -d < vda.rbdiff.zst | rbd import-diff - IMG`).
pub fn export_full_diff<S: SnapshotSource + ?Sized, W: Write>(
    image: &S,
    to_snapshot: &str,
    size: u64,
    use_object_map: bool,
    out: W,
    mut leaves_out: Option<&mut LeafTableWriter>,
    pipeline: &ReadPipeline<'_>,
) -> Result<(ExportStats, W), Error> {
    let started = Instant::now();
    let blocks = allocated_blocks(image, size, use_object_map)?;
    let mut hasher = ContentHasher::new(size);
    let mut diff = RbdDiffWriter::new(out, None, to_snapshot, size)?;
    let pieces = whole_blocks(&blocks, size);
    let bytes_read = read_pieces(image, &pieces, pipeline, |piece, data| {
        hash_whole_block(&mut hasher, &mut leaves_out, piece.block, data)?;
        for (start, end) in crate::repo::image_file::nonzero_runs(data, 4096) {
            diff.write_data(piece.offset + start as u64, &data[start..end])?;
        }
        Ok(())
    })?;
    let out = diff.finish()?;
    Ok((ExportStats::new(hasher, bytes_read, started), out))
}

/// The 4 MiB blocks an incremental reads: every block that an extent changed (written or
/// discarded) since `from_snapshot` touches. The others are taken over from the parent.
pub fn changed_blocks<S: SnapshotSource + ?Sized>(
    image: &S,
    from_snapshot: &str,
    size: u64,
    use_object_map: bool,
) -> Result<Vec<u64>, Error> {
    let extents = image.diff_extents(Some(from_snapshot), size, use_object_map)?;
    let ranges: Vec<ByteRange> = extents.iter().map(byte_range).collect();
    Ok(blocks_to_read(&ranges, size, HASH_BLOCK_SIZE))
}

/// Reads `blocks` of `image` (open at the snapshot, `size` bytes) with the read pipeline (at
/// most `workers` reads in flight) and
/// stores each in the block repository from `workers` upload threads (`block_repo::upload`:
/// holes are not stored, blocks already there are not uploaded). Returns what became of each
/// block and the bytes read.
pub fn export_blocks<S: SnapshotSource + ?Sized>(
    image: &S,
    size: u64,
    blocks: &[u64],
    repo: &BlockRepository,
    workers: usize,
    pipeline: &ReadPipeline<'_>,
) -> Result<(Vec<UploadedBlock>, u64), Error> {
    let pieces = whole_blocks(blocks, size);
    // Reads in flight beyond the workers' number only hold blocks the workers cannot take yet
    // (the store, not Ceph, is the slower side): each is 4 MiB more of RSS for no speed. On
    // the lab's RGW, 8 against 4 and 2 gave the same time and 30-50 MiB more peak RSS.
    let pipeline = &ReadPipeline {
        queue_depth: pipeline.queue_depth.min(workers),
        ..*pipeline
    };
    let mut bytes_read = 0;
    let uploaded = upload_blocks(repo, workers, |submitter| -> Result<(), Error> {
        bytes_read = read_pieces_into(image, &pieces, pipeline, |piece, data| {
            Ok(submitter.submit(piece.block, data)?)
        })?;
        Ok(())
    })?;
    Ok((uploaded, bytes_read))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn extent(offset: u64, length: u64, exists: bool) -> Extent {
        Extent {
            offset,
            length,
            exists,
        }
    }

    struct Quiet;
    impl ExportProgress for Quiet {
        fn progress(&self, _done: u64, _total: u64) {}
    }

    #[test]
    fn a_full_export_into_a_sparse_file_reads_only_allocated_blocks_and_keeps_holes() {
        use crate::engine::block_io::{block_table_of, MemorySnapshot};
        const B: usize = HASH_BLOCK_SIZE as usize;
        // Block 0 data, block 1 a hole, block 2 the short last block with data at its end.
        let size = 2 * B + 12345;
        let mut data = vec![0u8; size];
        data[10..5000].fill(1);
        data[size - 3..].fill(2);
        let source = MemorySnapshot::new("rbd/m@s", data.clone());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vda.raw");
        let mut writer = SparseImageWriter::create(&path, size as u64).unwrap();
        let cancel = CancelToken::new();
        let pipeline = ReadPipeline {
            queue_depth: 2,
            limit: None,
            cancel: &cancel,
            progress: &Quiet,
        };
        let stats = export_full(&source, size as u64, false, &mut writer, None, &pipeline).unwrap();
        writer.finish().unwrap();
        assert_eq!(
            stats.bytes_read,
            (B + 12345) as u64,
            "the hole block is never read"
        );
        assert_eq!(stats.block_table, block_table_of(&data));
        assert!(std::fs::read(&path).unwrap() == data);
        // The hole stays a hole in the file.
        let file = std::fs::File::open(&path).unwrap();
        assert!(!crate::repo::chain::data_in(&file, B as u64, B as u64).unwrap());
    }

    #[test]
    fn a_cancelled_export_stops_with_cancelled() {
        use crate::engine::block_io::MemorySnapshot;
        let source = MemorySnapshot::new("rbd/m@s", vec![1u8; 8192]);
        let cancel = CancelToken::new();
        cancel.cancel();
        let pipeline = ReadPipeline {
            queue_depth: 2,
            limit: None,
            cancel: &cancel,
            progress: &Quiet,
        };
        let mut out = Vec::new();
        let result = export_stream(&source, 8192, false, &mut out, &pipeline);
        assert!(matches!(result, Err(Error::Cancelled)));
    }

    #[test]
    fn clipping_drops_empty_extents_cuts_at_the_size_and_sorts() {
        let clipped = clip_extents(
            vec![
                extent(8, 4, true),
                extent(0, 0, true),
                extent(2, 4, false),
                extent(10, 8, true),
                extent(12, 1, true),
            ],
            11,
        );
        assert_eq!(
            clipped,
            vec![extent(2, 4, false), extent(8, 3, true), extent(10, 1, true)]
        );
    }

    #[test]
    fn rehash_reads_leaves_where_the_base_is_known_and_whole_blocks_elsewhere() {
        const B: u64 = HASH_BLOCK_SIZE;
        let zero = crate::plan::zero_block_root();
        // Base: 3.5 blocks; blocks 0 and 1 all zeros (their leaves are known without a table),
        // block 2 holds data no table knows, block 3 is short.
        let table = [zero, zero, [7u8; 32], zero];
        let leaves = BaseLeaves::none();
        let base = IncrementalBase {
            snapshot: "base",
            size: 3 * B + B / 2,
            block_table: &table,
            leaves: &leaves,
        };
        let r = |offset, length| ByteRange { offset, length };
        let changed = [
            r(10, 4096),
            r(B + 3 * LEAF_SIZE, 2),
            r(2 * B + 5, 1),
            r(3 * B, 1),
        ];
        // Block 3 was short and is now full, block 4 is new: the image grew to 5 blocks.
        let (pieces, plans) = plan_rehash(&[0, 1, 2, 3, 4], &changed, 5 * B, &base);
        let got: Vec<(u64, u64, u64)> = pieces
            .iter()
            .map(|p| (p.block, p.offset, p.length))
            .collect();
        assert_eq!(
            got,
            vec![
                (0, 0, LEAF_SIZE),
                (1, B + 3 * LEAF_SIZE, LEAF_SIZE),
                (2, 2 * B, B),
                (3, 3 * B, B),
                (4, 4 * B, B),
            ]
        );
        let kinds: Vec<(u64, bool)> = plans
            .iter()
            .map(|(b, p)| (*b, matches!(p, Rehash::Leaves(_))))
            .collect();
        assert_eq!(
            kinds,
            vec![(0, true), (1, true), (2, false), (3, false), (4, false)]
        );
        // A block the object-level diff names but no exact extent touches is not read.
        let (pieces, plans) = plan_rehash(&[0, 1], &[r(10, 1)], 5 * B, &base);
        assert_eq!(pieces.len(), 1);
        assert_eq!(plans.len(), 1);
    }

    #[test]
    fn changed_runs_merge_adjacent_changed_objects_and_skip_removed_ones() {
        let runs = changed_runs(&[
            extent(0, 4, true),
            extent(4, 4, true),
            extent(8, 4, false),
            extent(12, 4, true),
            extent(20, 4, true),
        ]);
        let pairs: Vec<(u64, u64)> = runs.iter().map(|r| (r.offset, r.length)).collect();
        assert_eq!(pairs, vec![(0, 8), (12, 4), (20, 4)]);
    }
}
