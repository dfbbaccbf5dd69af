//! A disk as it was at one backup, assembled on the fly from its chain (the full backup's
//! sparse raw file and the incrementals' rbd diffs) and verified block by block as it is read.
//!
//! # The index
//!
//! [`ChainImage::open`] reads the chain once, in order, and builds for every 4 MiB block of the
//! final image the list of *segments* that hold its latest data: a byte range of the block and
//! the file (and offset in it) the bytes come from. The raw file contributes its data extents
//! (`SEEK_DATA`/`SEEK_HOLE`: holes are never read); each diff's `s` record resizes the map (a
//! shrink drops what lies past the new end, so a later growth reads zeros there, as with
//! `rbd import-diff`), a `w` record overlays a segment pointing at its bytes in the diff file,
//! a `z` record removes what it covers (a hole). Bytes no segment covers are zeros. A read is
//! then O(1) per block: one `pread` per segment.
//!
//! Diff files compressed with zstd cannot be read at an offset, so while indexing, their `w`
//! data is copied into one unnamed temporary file (`O_TMPFILE` in the temporary folder,
//! `TMPDIR`, removed by the kernel when the image is dropped) and the segments point there:
//! serving a compressed chain costs that much temporary disk space, never memory.
//!
//! # Verification
//!
//! Every block is hashed after it is assembled and compared with the target backup's block
//! table (`.blocks`, itself checked against the manifest's checksum at open): a read returns
//! bytes only from blocks that match, and a block that does not is an error naming the files
//! and offsets its bytes came from. So damage anywhere (raw file, diff data, a diff header
//! that misplaces data, the temporary copy) costs the reads of the blocks it touches, never
//! wrong data. The stored diff files are also checked against their own checksums at open;
//! a mismatch is only a warning then (`warnings`), since the blocks the damage does not
//! touch still verify and can be served.
//!
//! A few verified blocks are cached (`CACHED_BLOCKS`, `BlockCache`), so sequential reads
//! smaller than a block (the kernel reads 128 KiB at a time through a loop device), also from
//! several connections at once, assemble and hash each block once.

use std::fs::File;

use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::chain::{open_diff_link, verify_stored_file, ChainLink};
use super::error::RepoError;
use super::extent_source::{block_pieces, push_extent, BlockCache, Extent, ExtentSource, Piece};
use super::manifest::DiskFormat;
use super::rbd_diff::DiffRecord;
use super::stored_file::open_stored_file;
use crate::plan::{ContentHasher, HASH_BLOCK_SIZE};

/// Verified blocks kept in memory (4 MiB each).
const CACHED_BLOCKS: usize = 8;

/// A byte range of one block and where its bytes are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Segment {
    /// Offset inside the block.
    start: u32,
    /// Length in bytes (> 0).
    len: u32,
    /// Index into `ChainImage::files`.
    file: u32,
    /// Offset in that file of the segment's first byte.
    offset: u64,
}

impl Segment {
    fn end(&self) -> u32 {
        self.start + self.len
    }
}

/// Replaces whatever `segments` (sorted, not overlapping) hold in `[start, end)` with `new`
/// (`Some((file, offset))`: bytes stored there; `None`: a hole). Pure; unit-tested.
fn overlay(segments: &mut Vec<Segment>, start: u32, end: u32, new: Option<(u32, u64)>) {
    if start >= end {
        return;
    }
    let mut out = Vec::with_capacity(segments.len() + 2);
    for s in segments.iter() {
        if s.end() <= start || s.start >= end {
            out.push(*s);
            continue;
        }
        if s.start < start {
            out.push(Segment {
                len: start - s.start,
                ..*s
            });
        }
        if s.end() > end {
            out.push(Segment {
                start: end,
                len: s.end() - end,
                file: s.file,
                offset: s.offset + u64::from(end - s.start),
            });
        }
    }
    if let Some((file, offset)) = new {
        out.push(Segment {
            start,
            len: end - start,
            file,
            offset,
        });
    }
    out.sort_unstable_by_key(|s| s.start);
    *segments = out;
}

/// The per-block map of an image under construction.
#[derive(Debug, Default)]
struct BlockMap {
    size: u64,
    blocks: Vec<Vec<Segment>>,
}

impl BlockMap {
    /// Resizes the image: blocks past the end go, the last block keeps only what lies inside.
    fn resize(&mut self, size: u64) {
        let count = size.div_ceil(HASH_BLOCK_SIZE) as usize;
        // Shrink first to the smaller size, so bytes past the old end are never revived.
        let keep = size.min(self.size);
        let keep_blocks = keep.div_ceil(HASH_BLOCK_SIZE) as usize;
        self.blocks.truncate(keep_blocks);
        if let Some(last) = self.blocks.last_mut() {
            let inside = keep - (keep_blocks as u64 - 1) * HASH_BLOCK_SIZE;
            overlay(last, inside as u32, HASH_BLOCK_SIZE as u32, None);
        }
        self.blocks.resize_with(count, Vec::new);
        self.size = size;
    }

    /// Sets `[offset, offset + length)` to bytes stored in `file` from `file_offset` on, or to a
    /// hole (`file: None`). The range must lie inside the image.
    fn set(&mut self, offset: u64, length: u64, file: Option<(u32, u64)>) {
        let end = offset + length;
        let mut at = offset;
        while at < end {
            let index = at / HASH_BLOCK_SIZE;
            let block_start = index * HASH_BLOCK_SIZE;
            let piece_end = end.min(block_start + HASH_BLOCK_SIZE);
            let new = file.map(|(f, o)| (f, o + (at - offset)));
            overlay(
                &mut self.blocks[index as usize],
                (at - block_start) as u32,
                (piece_end - block_start) as u32,
                new,
            );
            at = piece_end;
        }
    }
}

/// A file the segments point into.
#[derive(Debug)]
struct SourceFile {
    file: File,
    /// The repository file, for messages.
    path: PathBuf,
    /// The bytes are a decompressed copy of `path`'s data, in a temporary file.
    copy: bool,
}

/// A backup's disk, readable at any offset, every block checked against the backup's block
/// table as it is read. See the module doc.
#[derive(Debug)]
pub struct ChainImage {
    size: u64,
    files: Vec<SourceFile>,
    blocks: Vec<Vec<Segment>>,
    table: Vec<[u8; 32]>,
    /// The target backup's block table file, for messages.
    table_path: PathBuf,
    zero_full: [u8; 32],
    zero_last: [u8; 32],
    cache: BlockCache,
    warnings: Vec<String>,
}

/// Opens an unnamed temporary file in `dir` (gone when closed); where `O_TMPFILE` is not
/// supported, a named one removed at once.
fn unnamed_temporary_file(dir: &Path) -> std::io::Result<File> {
    let tmpfile = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_TMPFILE | libc::O_CLOEXEC)
        .open(dir);
    match tmpfile {
        Ok(file) => Ok(file),
        Err(_) => {
            let path = dir.join(format!(
                ".virt-rbd-backup-serve-{}-{:?}",
                std::process::id(),
                std::time::SystemTime::now()
            ));
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)?;
            std::fs::remove_file(&path)?;
            Ok(file)
        }
    }
}

/// The data extents of `file` (`SEEK_DATA`/`SEEK_HOLE`), as (offset, length).
fn data_extents(file: &File, size: u64) -> std::io::Result<Vec<(u64, u64)>> {
    let fd = file.as_raw_fd();
    let mut out = Vec::new();
    let mut at = 0u64;
    while at < size {
        // SAFETY: lseek on a descriptor we own; no memory is involved.
        let data = unsafe { libc::lseek(fd, at as libc::off_t, libc::SEEK_DATA) };
        if data < 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::ENXIO) {
                break; // No data at or after `at`.
            }
            return Err(err);
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
        if hole < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let (data, hole) = (data as u64, (hole as u64).min(size));
        if data >= size {
            break;
        }
        if hole > data {
            out.push((data, hole - data));
        }
        at = hole.max(data + 1);
    }
    Ok(out)
}

impl ChainImage {
    /// Indexes `chain` (a full backup and the incrementals on it, in order, as
    /// `Repository::disk_chain` returns it) and loads the last backup's verified block table.
    /// Temporary copies of compressed diffs go to `std::env::temp_dir()`.
    pub fn open(chain: &[ChainLink]) -> Result<Self, RepoError> {
        let (first, target) = match (chain.first(), chain.last()) {
            (Some(f), Some(t)) => (f, t),
            _ => {
                return Err(RepoError::NotFound {
                    what: "an empty chain has no image".into(),
                })
            }
        };
        let table = target.block_table()?;
        let table_path = target
            .folder
            .join(target.disk.blocks_file.as_deref().unwrap_or_default());
        let mut map = BlockMap::default();
        let mut files = Vec::new();
        let mut warnings = Vec::new();
        let mut spill: Option<(u32, u64)> = None; // (file index, bytes written)

        // The full backup: a raw file's data extents are read where they are; a compressed
        // full is a diff from nothing, replayed like the incrementals.
        let diffs = match first.disk.format {
            DiskFormat::SparseRaw => {
                let path = first.data_path();
                let (file, len) = open_stored_file(&path, None)?;
                if len != first.disk.size {
                    return Err(RepoError::Corrupt {
                        path,
                        offset: None,
                        message: format!("holds {len} bytes, the image had {}", first.disk.size),
                    });
                }
                map.resize(len);
                let extents = data_extents(&file, len).map_err(|source| RepoError::Io {
                    action: "map the data of",
                    path: path.clone(),
                    source,
                })?;
                for (offset, length) in extents {
                    map.set(offset, length, Some((0, offset)));
                }
                files.push(SourceFile {
                    file,
                    path,
                    copy: false,
                });
                &chain[1..]
            }
            DiskFormat::RbdDiffV1 | DiskFormat::RbdDiffV1Zstd => chain,
        };

        for link in diffs {
            let path = link.data_path();
            if let Err(e) = verify_stored_file(link) {
                match e {
                    RepoError::Corrupt { .. } => warnings.push(format!(
                        "{e}; only the blocks this damage reaches fail their reads"
                    )),
                    other => return Err(other),
                }
            }
            let compressed = link.disk.format == DiskFormat::RbdDiffV1Zstd;
            let mut reader = open_diff_link(link)?;
            // A second handle for the random reads of an uncompressed diff's data later.
            let (reread, _) = open_stored_file(&path, None)?;
            map.resize(reader.image_size());
            let plain_index = if compressed {
                None
            } else {
                files.push(SourceFile {
                    file: reread,
                    path: path.clone(),
                    copy: false,
                });
                Some(files.len() as u32 - 1)
            };
            while let Some(record) = reader.next_record()? {
                match record {
                    DiffRecord::Data { offset, data } => {
                        let length = data.len() as u64;
                        let stored_at = match plain_index {
                            // The piece's bytes end where the reader now is in the stream.
                            Some(index) => (index, reader.position() - length),
                            None => {
                                let (index, written) = match spill {
                                    Some(s) => s,
                                    None => {
                                        let dir = std::env::temp_dir();
                                        let file =
                                            unnamed_temporary_file(&dir).map_err(|source| {
                                                RepoError::Io {
                                                    action: "create a temporary file in",
                                                    path: dir.clone(),
                                                    source,
                                                }
                                            })?;
                                        files.push(SourceFile {
                                            file,
                                            path: path.clone(),
                                            copy: true,
                                        });
                                        (files.len() as u32 - 1, 0)
                                    }
                                };
                                let spill_file = &mut files[index as usize];
                                spill_file.path = path.clone();
                                spill_file
                                    .file
                                    .write_all_at(&data, written)
                                    .map_err(|source| RepoError::Io {
                                        action: "write the decompressed copy of",
                                        path: path.clone(),
                                        source,
                                    })?;
                                spill = Some((index, written + length));
                                (index, written)
                            }
                        };
                        map.set(offset, length, Some(stored_at));
                    }
                    DiffRecord::Zero { offset, length } => map.set(offset, length, None),
                }
            }
        }
        if map.size != target.disk.size || map.blocks.len() != table.len() {
            return Err(RepoError::Corrupt {
                path: target.data_path(),
                offset: None,
                message: format!(
                    "the chain gives an image of {} bytes, the backup records {}",
                    map.size, target.disk.size
                ),
            });
        }
        let mut zero = ContentHasher::new(map.size);
        let count = table.len() as u64;
        let zero_full = blake3::hash(&vec![0u8; HASH_BLOCK_SIZE as usize]).into();
        let zero_last = if count > 0 {
            zero.zero_block_hash(count - 1)
        } else {
            zero_full
        };
        Ok(ChainImage {
            size: map.size,
            files,
            blocks: map.blocks,
            table,
            table_path,
            zero_full,
            zero_last,
            cache: BlockCache::new(CACHED_BLOCKS),
            warnings,
        })
    }

    /// What the open found that does not stop serving (a stored diff file that fails its own
    /// checksum: the blocks it reaches fail their reads).
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    fn block_len(&self, index: u64) -> u64 {
        (self.size - index * HASH_BLOCK_SIZE).min(HASH_BLOCK_SIZE)
    }

    fn zero_hash(&self, index: u64) -> [u8; 32] {
        if index + 1 == self.table.len() as u64 {
            self.zero_last
        } else {
            self.zero_full
        }
    }

    /// Where block `index`'s bytes come from, for messages.
    fn sources_of(&self, index: u64) -> String {
        let segments = &self.blocks[index as usize];
        if segments.is_empty() {
            return "no stored bytes: a hole".into();
        }
        let mut parts: Vec<String> = segments
            .iter()
            .take(4)
            .map(|s| {
                let f = &self.files[s.file as usize];
                format!(
                    "{} bytes from {}{} at offset {}",
                    s.len,
                    f.path.display(),
                    if f.copy { " (decompressed copy)" } else { "" },
                    s.offset
                )
            })
            .collect();
        if segments.len() > 4 {
            parts.push(format!("{} more pieces", segments.len() - 4));
        }
        parts.join(", ")
    }

    fn mismatch(&self, index: u64) -> RepoError {
        let first = self.blocks[index as usize].first();
        RepoError::Corrupt {
            path: first.map_or(self.table_path.clone(), |s| {
                self.files[s.file as usize].path.clone()
            }),
            offset: first.map(|s| s.offset),
            message: format!(
                "the 4 MiB block at image offset {} does not match its checksum in {} ({}); it is not served",
                index * HASH_BLOCK_SIZE,
                self.table_path.display(),
                self.sources_of(index)
            ),
        }
    }

    /// Block `index`, assembled and verified; `None` where nothing is stored for it (zeros,
    /// which the table must agree with).
    fn verified_block(&self, index: u64) -> Result<Option<Arc<Vec<u8>>>, RepoError> {
        if self.blocks[index as usize].is_empty() {
            if self.table[index as usize] != self.zero_hash(index) {
                return Err(self.mismatch(index));
            }
            return Ok(None);
        }
        self.cache
            .get_or_load(index, || self.assemble(index))
            .map(Some)
    }

    /// Reads block `index` from its segments and checks it against the block table.
    fn assemble(&self, index: u64) -> Result<Vec<u8>, RepoError> {
        let mut buf = vec![0u8; self.block_len(index) as usize];
        for s in &self.blocks[index as usize] {
            let source = &self.files[s.file as usize];
            let piece = &mut buf[s.start as usize..s.end() as usize];
            source
                .file
                .read_exact_at(piece, s.offset)
                .map_err(|e| match e.kind() {
                    // A file shorter than its index says: damage, named like a mismatch.
                    std::io::ErrorKind::UnexpectedEof => self.mismatch(index),
                    _ => RepoError::Io {
                        action: "read",
                        path: source.path.clone(),
                        source: e,
                    },
                })?;
        }
        if blake3::hash(&buf).as_bytes() != &self.table[index as usize] {
            return Err(self.mismatch(index));
        }
        Ok(buf)
    }
}

impl ExtentSource for ChainImage {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_pieces(&self, offset: u64, length: u64) -> Result<Vec<Piece>, RepoError> {
        block_pieces(offset, length, self.size, HASH_BLOCK_SIZE, |index| {
            self.verified_block(index)
        })
    }

    fn allocation(&self, offset: u64, length: u64) -> Vec<Extent> {
        let end = offset.saturating_add(length).min(self.size);
        let mut out = Vec::new();
        let mut at = offset;
        while at < end {
            let index = at / HASH_BLOCK_SIZE;
            let block_start = index * HASH_BLOCK_SIZE;
            let block_end = (block_start + HASH_BLOCK_SIZE).min(end);
            for s in &self.blocks[index as usize] {
                let s_start = block_start + u64::from(s.start);
                let s_end = (block_start + u64::from(s.end())).min(block_end);
                if s_end <= at {
                    continue;
                }
                let s_start = s_start.max(at);
                if s_start >= block_end {
                    break;
                }
                push_extent(&mut out, at, s_start - at, false);
                push_extent(&mut out, s_start, s_end - s_start, true);
                at = s_end;
            }
            push_extent(&mut out, at, block_end - at, false);
            at = block_end;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{checksum_of_table, StreamHasher};
    use crate::repo::block_table::write_block_table;
    use crate::repo::hashing_writer::StoredDiffWriter;
    use crate::repo::manifest::tests::sample;
    use crate::repo::manifest::{BackupKind, SnapshotRecord};
    use crate::repo::rbd_diff::RbdDiffWriter;
    use crate::test_support::noise;

    const MIB: u64 = 1 << 20;

    /// One change between two backups, applied both to the model and to the diff file.
    enum Change {
        Write(u64, Vec<u8>),
        Zero(u64, u64),
    }

    /// Builds chains in a temporary folder and keeps the model (the independent truth: the
    /// image's bytes as the changes make them) beside them.
    struct ChainBuilder {
        dir: tempfile::TempDir,
        links: Vec<ChainLink>,
        model: Vec<u8>,
    }

    fn table_of(image: &[u8]) -> Vec<[u8; 32]> {
        image
            .chunks(HASH_BLOCK_SIZE as usize)
            .map(|c| *blake3::hash(c).as_bytes())
            .collect()
    }

    impl ChainBuilder {
        /// A full backup of `image` (zero 4 KiB pieces stay holes in the raw file).
        fn full(image: Vec<u8>) -> Self {
            let dir = tempfile::tempdir().unwrap();
            let folder = dir.path().join("b0");
            std::fs::create_dir(&folder).unwrap();
            let raw = folder.join("vda.raw");
            let file = File::create(&raw).unwrap();
            file.set_len(image.len() as u64).unwrap();
            for (s, e) in crate::repo::image_file::nonzero_runs(&image, 4096) {
                file.write_all_at(&image[s..e], s as u64).unwrap();
            }
            let mut b = ChainBuilder {
                dir,
                links: Vec::new(),
                model: image,
            };
            b.commit(folder, DiskFormat::SparseRaw, "vda.raw", BackupKind::Full);
            b
        }

        /// A full backup of `image` as a compressed repository stores it: a zstd rbd diff from
        /// nothing (its nonzero 4 KiB pieces as data records).
        fn full_compressed(image: Vec<u8>) -> Self {
            let dir = tempfile::tempdir().unwrap();
            let folder = dir.path().join("b0");
            std::fs::create_dir(&folder).unwrap();
            let stored = StoredDiffWriter::create(&folder.join("vda.rbdiff"), Some(3)).unwrap();
            let mut w = RbdDiffWriter::new(stored, None, "snap0", image.len() as u64).unwrap();
            for (s, e) in crate::repo::image_file::nonzero_runs(&image, 4096) {
                w.write_data(s as u64, &image[s..e]).unwrap();
            }
            w.finish().unwrap().finish().unwrap();
            let mut b = ChainBuilder {
                dir,
                links: Vec::new(),
                model: image,
            };
            b.commit(
                folder,
                DiskFormat::RbdDiffV1Zstd,
                "vda.rbdiff",
                BackupKind::Full,
            );
            b
        }

        fn commit(&mut self, folder: PathBuf, format: DiskFormat, file: &str, kind: BackupKind) {
            let table = table_of(&self.model);
            write_block_table(&folder.join("vda.blocks"), &table).unwrap();
            let mut disk = sample().disks.remove(0);
            let n = self.links.len();
            disk.target = "vda".into();
            disk.file = file.into();
            disk.format = format;
            disk.size = self.model.len() as u64;
            disk.checksum = checksum_of_table(&table);
            disk.blocks_file = Some("vda.blocks".into());
            disk.kind = kind;
            disk.snapshot = SnapshotRecord {
                name: format!("snap{n}"),
                id: n as u64,
                timestamp: None,
            };
            disk.base_snapshot = self.links.last().map(|l| l.disk.snapshot.clone());
            let bytes = std::fs::read(folder.join(file)).unwrap();
            disk.file_size = bytes.len() as u64;
            if format == DiskFormat::SparseRaw {
                disk.file_checksum = None;
                disk.file_chunks = None;
            } else {
                let mut h = StreamHasher::new();
                h.update(&bytes);
                let (sum, chunks) = h.finish();
                write_block_table(&folder.join("vda.chunks"), &chunks).unwrap();
                disk.file_checksum = Some(sum);
                disk.file_chunks = Some("vda.chunks".into());
            }
            self.links.push(ChainLink {
                folder,
                backup_id: format!("b{n}"),
                disk,
            });
        }

        /// An incremental: resize to `size`, then `changes`; zstd-compressed if `zstd`.
        fn incremental(&mut self, size: u64, changes: Vec<Change>, zstd: bool) -> &mut Self {
            let n = self.links.len();
            let folder = self.dir.path().join(format!("b{n}"));
            std::fs::create_dir(&folder).unwrap();
            let path = folder.join("vda.rbdiff");
            let from = self.links.last().unwrap().disk.snapshot.name.clone();
            let stored =
                StoredDiffWriter::create(&path, if zstd { Some(3) } else { None }).unwrap();
            let mut w = RbdDiffWriter::new(stored, Some(&from), &format!("snap{n}"), size).unwrap();
            let old = self.model.len();
            self.model.truncate(old.min(size as usize));
            self.model.resize(size as usize, 0);
            for change in changes {
                match change {
                    Change::Write(offset, data) => {
                        w.write_data(offset, &data).unwrap();
                        let o = offset as usize;
                        self.model[o..o + data.len()].copy_from_slice(&data);
                    }
                    Change::Zero(offset, length) => {
                        w.write_zero(offset, length).unwrap();
                        let o = offset as usize;
                        self.model[o..o + length as usize].fill(0);
                    }
                }
            }
            w.finish().unwrap().finish().unwrap();
            let format = if zstd {
                DiskFormat::RbdDiffV1Zstd
            } else {
                DiskFormat::RbdDiffV1
            };
            self.commit(folder, format, "vda.rbdiff", BackupKind::Incremental);
            self
        }

        fn open(&self) -> ChainImage {
            ChainImage::open(&self.links).unwrap()
        }
    }

    /// Reads the whole image through odd-sized reads that cross block boundaries, and a few
    /// reads at the edges, and compares them with the model.
    fn assert_reads_match(image: &ChainImage, model: &[u8]) {
        assert_eq!(image.size(), model.len() as u64);
        let mut at = 0usize;
        let mut step = 1_300_007usize;
        while at < model.len() {
            let len = step.min(model.len() - at);
            let mut buf = vec![0xAAu8; len];
            image.read_at(at as u64, &mut buf).unwrap();
            assert!(buf == model[at..at + len], "bytes differ at {at}+{len}");
            at += len;
            step = step * 7 % 5_000_011 + 1;
        }
        for (offset, len) in [(0, 1), (model.len() - 1, 1), (4 * MIB as usize - 3, 6)] {
            if offset + len <= model.len() {
                let mut buf = vec![0u8; len];
                image.read_at(offset as u64, &mut buf).unwrap();
                assert_eq!(buf, model[offset..offset + len]);
            }
        }
        let mut buf = [0u8; 2];
        assert!(image.read_at(model.len() as u64 - 1, &mut buf).is_err());
    }

    #[test]
    fn overlay_trims_splits_and_replaces() {
        let mut segs = vec![Segment {
            start: 0,
            len: 100,
            file: 0,
            offset: 1000,
        }];
        overlay(&mut segs, 10, 20, Some((1, 5)));
        overlay(&mut segs, 50, 60, None);
        let got: Vec<_> = segs
            .iter()
            .map(|s| (s.start, s.len, s.file, s.offset))
            .collect();
        assert_eq!(
            got,
            [
                (0, 10, 0, 1000),
                (10, 10, 1, 5),
                (20, 30, 0, 1020),
                (60, 40, 0, 1060)
            ]
        );
        overlay(&mut segs, 0, 100, None);
        assert!(segs.is_empty());
    }

    #[test]
    fn a_full_backup_reads_back_with_its_holes() {
        let mut image = vec![0u8; (10 * MIB + 12345) as usize]; // a short last block
        image[..MIB as usize].copy_from_slice(&noise(MIB as usize, 1));
        image[(6 * MIB) as usize..(6 * MIB + 5000) as usize].copy_from_slice(&noise(5000, 2));
        let end = image.len();
        image[end - 100..].copy_from_slice(&noise(100, 3));
        let chain = ChainBuilder::full(image);
        let served = chain.open();
        assert_reads_match(&served, &chain.model);
        let map = served.allocation(0, u64::MAX);
        assert_eq!(map.first().map(|e| e.allocated), Some(true));
        assert!(
            map.iter()
                .any(|e| !e.allocated && e.offset <= 2 * MIB && e.offset + e.length >= 6 * MIB),
            "the hole between 1 MiB and 6 MiB is reported: {map:?}"
        );
        assert_eq!(map.iter().map(|e| e.length).sum::<u64>(), served.size());
    }

    #[test]
    fn a_chain_whose_full_backup_is_compressed_reads_as_its_last_backup() {
        // `--compress zstd` stores full backups as a zstd rbd diff from nothing, not raw.
        let mut image = vec![0u8; (9 * MIB + 777) as usize];
        image[..(3 * MIB) as usize].copy_from_slice(&noise((3 * MIB) as usize, 11));
        let mut chain = ChainBuilder::full_compressed(image);
        chain.incremental(
            9 * MIB + 777,
            vec![
                Change::Zero(0, MIB),
                Change::Write(5 * MIB, noise(70_000, 12)),
            ],
            true,
        );
        let served = chain.open();
        assert_reads_match(&served, &chain.model);
        assert!(
            served
                .allocation(0, MIB)
                .iter()
                .all(|e| !e.allocated || e.length == 0),
            "the zeroed first MiB is a hole"
        );
    }

    #[test]
    fn an_incremental_chain_reads_as_its_last_backup() {
        let mut image = vec![0u8; (12 * MIB) as usize];
        image[..(9 * MIB) as usize].copy_from_slice(&noise((9 * MIB) as usize, 4));
        let mut chain = ChainBuilder::full(image);
        chain
            // Scattered writes, a write across a block boundary, a zeroed run (a hole again).
            .incremental(
                12 * MIB,
                vec![
                    Change::Write(4096, noise(4096, 5)),
                    Change::Write(4 * MIB - 1000, noise(3000, 6)),
                    Change::Zero(5 * MIB, 2 * MIB),
                    Change::Write(11 * MIB, noise(70000, 7)),
                ],
                false,
            )
            // Compressed, and data written as zeros (allocated, reads zeros).
            .incremental(
                12 * MIB,
                vec![
                    Change::Write(8192, vec![0u8; 8192]),
                    Change::Write(6 * MIB, noise(MIB as usize, 8)),
                ],
                true,
            );
        let served = chain.open();
        assert!(served.warnings().is_empty(), "{:?}", served.warnings());
        assert_reads_match(&served, &chain.model);
        let map = served.allocation(5 * MIB, MIB);
        assert_eq!(
            map,
            [Extent {
                offset: 5 * MIB,
                length: MIB,
                allocated: false
            }]
        );
    }

    #[test]
    fn a_shrink_then_a_growth_reads_zeros_where_the_old_data_was() {
        let image = noise((9 * MIB) as usize, 9);
        let mut chain = ChainBuilder::full(image);
        chain
            .incremental(
                5 * MIB + 100,
                vec![Change::Write(MIB, noise(10, 10))],
                false,
            )
            .incremental(
                14 * MIB + 7,
                vec![Change::Write(13 * MIB, noise(4096, 11))],
                true,
            );
        let served = chain.open();
        assert_reads_match(&served, &chain.model);
        let mut buf = vec![1u8; MIB as usize];
        served.read_at(7 * MIB, &mut buf).unwrap();
        assert!(buf.iter().all(|&b| b == 0), "revived bytes past the shrink");
    }

    #[test]
    fn a_flipped_byte_fails_the_reads_of_its_block_and_no_other() {
        let image = noise((12 * MIB) as usize, 12);
        let mut chain = ChainBuilder::full(image);
        chain.incremental(
            12 * MIB,
            vec![Change::Write(9 * MIB, noise(4096, 13))],
            false,
        );
        // In the raw file (block 0) and in the diff's data (block 2).
        let raw = chain.links[0].data_path();
        let mut bytes = std::fs::read(&raw).unwrap();
        bytes[123] ^= 1;
        std::fs::write(&raw, &bytes).unwrap();
        let diff = chain.links[1].data_path();
        let mut bytes = std::fs::read(&diff).unwrap();
        let n = bytes.len();
        bytes[n - 10] ^= 0x40;
        std::fs::write(&diff, &bytes).unwrap();

        let served = chain.open();
        assert_eq!(
            served.warnings().len(),
            1,
            "the diff fails its own checksum"
        );
        let mut buf = vec![0u8; 4096];
        let err = served.read_at(0, &mut buf).unwrap_err();
        match &err {
            RepoError::Corrupt { path, offset, .. } => {
                assert_eq!(path, &raw);
                assert_eq!(*offset, Some(0));
            }
            other => panic!("{other}"),
        }
        assert!(err.to_string().contains("image offset 0"), "{err}");
        let err = served.read_at(9 * MIB, &mut buf).unwrap_err();
        assert!(err.to_string().contains("vda.rbdiff"), "{err}");
        // The other blocks still read, and match.
        let mut buf = vec![0u8; 2 * MIB as usize];
        served.read_at(5 * MIB, &mut buf).unwrap();
        assert!(buf == chain.model[(5 * MIB) as usize..(7 * MIB) as usize]);
        // A read that starts in a good block and ends in a bad one fails whole.
        let mut buf = vec![0u8; 4 * MIB as usize];
        assert!(served.read_at(7 * MIB, &mut buf).is_err());
    }

    #[test]
    fn a_hole_punched_into_the_raw_file_is_an_error_not_zeros() {
        let image = noise((4 * MIB) as usize, 14);
        let chain = ChainBuilder::full(image);
        let raw = chain.links[0].data_path();
        let file = std::fs::OpenOptions::new().write(true).open(&raw).unwrap();
        // SAFETY: fallocate on a descriptor we own.
        let rc = unsafe {
            libc::fallocate(
                file.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                0,
                4 * MIB as libc::off_t,
            )
        };
        assert_eq!(rc, 0);
        let served = chain.open();
        let mut buf = vec![0u8; 512];
        assert!(matches!(
            served.read_at(0, &mut buf),
            Err(RepoError::Corrupt { .. })
        ));
    }

    #[test]
    fn a_chain_whose_diff_names_other_snapshots_is_refused() {
        let mut chain = ChainBuilder::full(noise(MIB as usize, 15));
        chain.incremental(MIB, vec![], false);
        chain.links[1].disk.base_snapshot = Some(SnapshotRecord {
            name: "other".into(),
            id: 9,
            timestamp: None,
        });
        let err = ChainImage::open(&chain.links).unwrap_err();
        assert!(err.to_string().contains("the chain needs"), "{err}");
    }
}
