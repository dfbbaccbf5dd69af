//! The seams of block I/O: what export and verify read ([`SnapshotSource`]) and what a restore
//! writes into ([`ExtentSink`]), each with a Ceph implementation and an in-memory one.
//!
//! The export, restore and verify logic (which blocks to read, how a diff is replayed, how a
//! result is checked) is written against these traits, so it is unit-tested in milliseconds
//! with [`MemorySnapshot`] and [`MemorySink`]; the lab tests prove the real implementations,
//! `RbdImage` as a source and [`RbdSink`] (and the restore's file target) as sinks.
//!
//! A source keeps several reads in flight (`start_read` returns an [`InFlightRead`] that is
//! waited for later), because that is how an export keeps the cluster busy; the in-memory
//! source completes each read at once.

use crate::buffer::AlignedBuf;
use crate::ceph::{Extent, ImageWriter, PendingRead, RbdImage};
use crate::error::Error;
use crate::plan::{ContentHasher, HASH_BLOCK_SIZE};
use crate::repo::image_file::is_zero;
use crate::repo::RepoError;

/// An image at one snapshot, as export and verify read it: which extents hold data (or
/// changed since an older snapshot), and positioned reads with several in flight.
pub trait SnapshotSource {
    /// A read started and not yet waited for.
    type Read<'a>: InFlightRead
    where
        Self: 'a;

    /// `pool/image@snapshot`, for messages.
    fn spec(&self) -> &str;

    /// The extents in `[offset, offset + length)` that differ from `from_snapshot` (or hold
    /// data, when `None`): `exists` is `false` for a range that reads as zeros now (discarded).
    /// `whole_object` may report whole 4 MiB objects around the changes (RBD's fast-diff).
    fn diff_extents_in(
        &self,
        from_snapshot: Option<&str>,
        offset: u64,
        length: u64,
        whole_object: bool,
    ) -> Result<Vec<Extent>, Error>;

    /// `diff_extents_in` over `[0, length)`.
    fn diff_extents(
        &self,
        from_snapshot: Option<&str>,
        length: u64,
        whole_object: bool,
    ) -> Result<Vec<Extent>, Error> {
        self.diff_extents_in(from_snapshot, 0, length, whole_object)
    }

    /// Starts reading `buf.len()` bytes at `offset`; `wait` hands the filled buffer back.
    fn start_read(&self, offset: u64, buf: AlignedBuf) -> Result<Self::Read<'_>, Error>;
}

/// A read in flight.
pub trait InFlightRead {
    /// Waits for the read and returns its buffer, filled.
    fn wait(self) -> Result<AlignedBuf, Error>;
}

impl SnapshotSource for RbdImage<'_> {
    type Read<'a>
        = PendingRead<'a>
    where
        Self: 'a;

    fn spec(&self) -> &str {
        RbdImage::spec(self)
    }

    fn diff_extents_in(
        &self,
        from_snapshot: Option<&str>,
        offset: u64,
        length: u64,
        whole_object: bool,
    ) -> Result<Vec<Extent>, Error> {
        Ok(RbdImage::diff_extents_in(
            self,
            from_snapshot,
            offset,
            length,
            whole_object,
        )?)
    }

    fn start_read(&self, offset: u64, buf: AlignedBuf) -> Result<PendingRead<'_>, Error> {
        Ok(RbdImage::start_read(self, offset, buf)?)
    }
}

impl InFlightRead for PendingRead<'_> {
    fn wait(self) -> Result<AlignedBuf, Error> {
        Ok(PendingRead::wait(self)?)
    }
}

/// Where a restore writes an image: a sparse file or block device (the restore's file
/// target), an RBD image ([`RbdSink`]) or memory ([`MemorySink`]).
///
/// Any error is final: the caller discards the target, it never reports the restore done.
pub trait ExtentSink {
    /// Makes the image `size` bytes long; bytes past the old end read as zeros.
    fn resize(&mut self, size: u64) -> Result<(), Error>;

    /// Writes `data` at `offset`.
    fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<(), Error>;

    /// Writes `data` at `offset`, handing the buffer over (no copy where the sink keeps
    /// buffers in flight).
    fn write_owned(&mut self, offset: u64, data: Vec<u8>) -> Result<(), Error> {
        self.write_at(offset, &data)
    }

    /// An empty buffer for the next `write_owned`: a recycled one where the sink has it, so
    /// that writing block after block does not allocate.
    fn spare_buffer(&mut self) -> Vec<u8> {
        Vec::new()
    }

    /// Makes `[offset, offset + length)` read as zeros (discarded or written).
    fn zero(&mut self, offset: u64, length: u64) -> Result<(), Error>;

    /// Finishes the writes (flush) and hashes every block of the first `size` bytes as read
    /// back from the storage, for the check against the backup's block table.
    fn read_back_hashes(&mut self, size: u64) -> Result<Vec<[u8; 32]>, Error>;

    /// Finishes the writes (flush) and hashes only `blocks` (indexes of `HASH_BLOCK_SIZE`
    /// blocks of an image of `size` bytes) as read back from the storage, in the order given:
    /// the blocks whose content the restore could not follow as it wrote
    /// (`plan::WrittenContent`). An empty list only finishes the writes.
    fn read_back_blocks(&mut self, size: u64, blocks: &[u64]) -> Result<Vec<[u8; 32]>, Error>;

    /// Copies `length` bytes at `from_offset` of `from` to `offset` without passing them
    /// through this process (a file: `copy_file_range`, page cache to page cache). `Ok(false)`
    /// when this sink cannot (nothing of this range copied): the caller reads and writes
    /// instead if nothing was copied yet, and fails otherwise. What was copied was never seen
    /// by the caller, so its check reads those blocks back.
    fn copy_from(
        &mut self,
        _from: &std::fs::File,
        _from_offset: u64,
        _offset: u64,
        _length: u64,
    ) -> Result<bool, Error> {
        Ok(false)
    }
}

/// The hashes of `blocks` of an image of `size` bytes, each block read and hashed by
/// `read_hash` (offset, length).
fn hash_blocks(
    size: u64,
    blocks: &[u64],
    mut read_hash: impl FnMut(u64, usize) -> Result<[u8; 32], Error>,
) -> Result<Vec<[u8; 32]>, Error> {
    let hasher = ContentHasher::new(size);
    blocks
        .iter()
        .map(|&index| read_hash(index * HASH_BLOCK_SIZE, hasher.block_len(index) as usize))
        .collect()
}

/// Writes and discards a restore keeps in flight on an RBD image: `rbd import` keeps several
/// in flight too; 4 brought a full restore from about 0.5x to 0.8x of `rbd import` on the lab.
const RBD_WRITES_IN_FLIGHT: usize = 4;

/// An RBD image being restored: writes and discards go through an `ImageWriter`
/// (`RBD_WRITES_IN_FLIGHT` asynchronous ones), finished before a resize, a read-back and the
/// rename that places the image.
pub struct RbdSink<'a> {
    image: &'a RbdImage<'a>,
    writer: ImageWriter<'a>,
}

impl<'a> RbdSink<'a> {
    /// A sink over `image`, opened for writing.
    pub fn new(image: &'a RbdImage<'a>) -> Self {
        RbdSink {
            image,
            writer: ImageWriter::new(image, RBD_WRITES_IN_FLIGHT),
        }
    }

    /// Waits for every write in flight and flushes the image.
    pub fn finish(&mut self) -> Result<(), Error> {
        self.writer.finish()?;
        Ok(self.image.flush()?)
    }
}

impl ExtentSink for RbdSink<'_> {
    fn resize(&mut self, size: u64) -> Result<(), Error> {
        if self.image.info()?.size != size {
            self.writer.finish()?;
            self.image.resize(size)?;
        }
        Ok(())
    }

    fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<(), Error> {
        let mut buf = self.writer.spare_buffer();
        buf.extend_from_slice(data);
        Ok(self.writer.write(offset, buf)?)
    }

    fn write_owned(&mut self, offset: u64, data: Vec<u8>) -> Result<(), Error> {
        Ok(self.writer.write(offset, data)?)
    }

    fn spare_buffer(&mut self) -> Vec<u8> {
        self.writer.spare_buffer()
    }

    fn zero(&mut self, offset: u64, length: u64) -> Result<(), Error> {
        Ok(self.writer.discard(offset, length)?)
    }

    fn read_back_hashes(&mut self, size: u64) -> Result<Vec<[u8; 32]>, Error> {
        self.finish()?;
        super::export::image_block_table(self.image, size, false)
    }

    fn read_back_blocks(&mut self, size: u64, blocks: &[u64]) -> Result<Vec<[u8; 32]>, Error> {
        if blocks.len() as u64 == size.div_ceil(HASH_BLOCK_SIZE) {
            // Every block: the table reads with several reads in flight.
            return self.read_back_hashes(size);
        }
        self.finish()?;
        let image = self.image;
        hash_blocks(size, blocks, |offset, len| {
            let data = image.start_read(offset, AlignedBuf::zeroed(len))?.wait()?;
            Ok(*blake3::hash(&data).as_bytes())
        })
    }
}

/// The block hash table of `data` (an image's bytes), computed directly: the independent
/// truth the tests compare the export's and the restore's tables with.
pub fn block_table_of(data: &[u8]) -> Vec<[u8; 32]> {
    let mut hasher = ContentHasher::new(data.len() as u64);
    for (index, block) in data.chunks(HASH_BLOCK_SIZE as usize).enumerate() {
        hasher.add_block(index as u64, block);
    }
    hasher.finish_with_hashes().1
}

/// An image at a snapshot, in memory, optionally with the older snapshot diffs are taken
/// against, and a range whose reads fail. For tests of export and verify.
#[derive(Debug, Clone)]
pub struct MemorySnapshot {
    spec: String,
    data: Vec<u8>,
    base: Option<(String, Vec<u8>)>,
    failing: Option<u64>,
}

/// The granule a memory snapshot tracks allocation and changes in (RBD's: 4 KiB or finer).
const GRANULE: u64 = 4096;
/// The object size whole-object diffs report (RBD's default).
const OBJECT: u64 = 4 << 20;

impl MemorySnapshot {
    /// `data` as the image; its allocated extents are its non-zero 4 KiB pieces.
    pub fn new(spec: &str, data: Vec<u8>) -> Self {
        MemorySnapshot {
            spec: spec.into(),
            data,
            base: None,
            failing: None,
        }
    }

    /// Diffs from snapshot `name` are taken against `data`.
    pub fn with_base(mut self, name: &str, data: Vec<u8>) -> Self {
        self.base = Some((name.into(), data));
        self
    }

    /// Reads that include byte `offset` fail (as an OSD error would).
    pub fn failing_at(mut self, offset: u64) -> Self {
        self.failing = Some(offset);
        self
    }

    /// Whether granule `[at, end)` differs from `from` (`None`: holds data).
    fn changed(&self, from: Option<&[u8]>, at: u64, end: u64) -> bool {
        let now = &self.data[at as usize..end as usize];
        match from {
            None => !is_zero(now),
            Some(base) => {
                let old = base.get(at as usize..(end as usize).min(base.len()));
                match old {
                    Some(old) if old.len() == now.len() => old != now,
                    // Past the base's end, the base reads as zeros.
                    Some(old) => old != &now[..old.len()] || !is_zero(&now[old.len()..]),
                    None => !is_zero(now),
                }
            }
        }
    }
}

impl SnapshotSource for MemorySnapshot {
    type Read<'a> = AlignedBuf;

    fn spec(&self) -> &str {
        &self.spec
    }

    fn diff_extents_in(
        &self,
        from_snapshot: Option<&str>,
        offset: u64,
        length: u64,
        whole_object: bool,
    ) -> Result<Vec<Extent>, Error> {
        let from = match (from_snapshot, &self.base) {
            (None, _) => None,
            (Some(name), Some((base_name, base))) if name == base_name => Some(&base[..]),
            (Some(name), _) => {
                return Err(Error::Inconsistent(format!(
                    "{}: no snapshot {name} to diff from",
                    self.spec
                )))
            }
        };
        let size = self.data.len() as u64;
        let end = offset.saturating_add(length).min(size);
        let mut extents: Vec<Extent> = Vec::new();
        let mut at = offset;
        while at < end {
            let next = ((at / GRANULE + 1) * GRANULE).min(end);
            if self.changed(from, at, next) {
                let exists = !is_zero(&self.data[at as usize..next as usize]);
                match extents.last_mut() {
                    Some(last) if last.exists == exists && last.offset + last.length == at => {
                        last.length += next - at
                    }
                    _ => extents.push(Extent {
                        offset: at,
                        length: next - at,
                        exists,
                    }),
                }
            }
            at = next;
        }
        if whole_object {
            // Whole objects around the changes, as fast-diff reports them: an object that
            // still holds data exists, one that holds none was removed.
            let mut objects: Vec<Extent> = Vec::new();
            for e in extents {
                let first = e.offset / OBJECT;
                let last = (e.offset + e.length - 1) / OBJECT;
                for object in first..=last {
                    let start = object * OBJECT;
                    if objects.last().is_some_and(|o| o.offset == start) {
                        continue;
                    }
                    let length = OBJECT.min(size - start);
                    objects.push(Extent {
                        offset: start,
                        length,
                        exists: !is_zero(&self.data[start as usize..(start + length) as usize]),
                    });
                }
            }
            return Ok(objects);
        }
        Ok(extents)
    }

    fn start_read(&self, offset: u64, mut buf: AlignedBuf) -> Result<AlignedBuf, Error> {
        let end = offset + buf.len() as u64;
        if end > self.data.len() as u64 {
            return Err(RepoError::ReadPastEnd {
                offset,
                length: buf.len() as u64,
                size: self.data.len() as u64,
            }
            .into());
        }
        if self.failing.is_some_and(|bad| offset <= bad && bad < end) {
            return Err(Error::Inconsistent(format!(
                "{}: read of {} bytes at {offset} failed",
                self.spec,
                buf.len()
            )));
        }
        buf.copy_from_slice(&self.data[offset as usize..end as usize]);
        Ok(buf)
    }
}

impl InFlightRead for AlignedBuf {
    fn wait(self) -> Result<AlignedBuf, Error> {
        Ok(self)
    }
}

/// An image restored into memory, which can be told to fail a write at some offset.
#[derive(Debug, Clone, Default)]
pub struct MemorySink {
    /// The image's bytes.
    pub data: Vec<u8>,
    /// Writes that include this byte fail.
    pub fail_write_at: Option<u64>,
    /// Bytes written with `write_at` (zeroing not counted).
    pub written: u64,
    /// Blocks hashed by `read_back_blocks` (what the check of a restore did not follow).
    pub blocks_read_back: u64,
}

impl ExtentSink for MemorySink {
    fn resize(&mut self, size: u64) -> Result<(), Error> {
        self.data.resize(size as usize, 0);
        Ok(())
    }

    fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<(), Error> {
        let end = offset + data.len() as u64;
        if self
            .fail_write_at
            .is_some_and(|bad| offset <= bad && bad < end)
        {
            return Err(Error::Inconsistent(format!(
                "(memory sink) write of {} bytes at {offset} failed",
                data.len()
            )));
        }
        if end > self.data.len() as u64 {
            return Err(Error::Inconsistent(format!(
                "(memory sink) write at {offset} past the end ({} bytes)",
                self.data.len()
            )));
        }
        self.data[offset as usize..end as usize].copy_from_slice(data);
        self.written += data.len() as u64;
        Ok(())
    }

    fn zero(&mut self, offset: u64, length: u64) -> Result<(), Error> {
        let end = (offset + length).min(self.data.len() as u64);
        if offset < end {
            self.data[offset as usize..end as usize].fill(0);
        }
        Ok(())
    }

    fn read_back_hashes(&mut self, size: u64) -> Result<Vec<[u8; 32]>, Error> {
        Ok(block_table_of(
            &self.data[..size.min(self.data.len() as u64) as usize],
        ))
    }

    fn read_back_blocks(&mut self, size: u64, blocks: &[u64]) -> Result<Vec<[u8; 32]>, Error> {
        self.blocks_read_back += blocks.len() as u64;
        let data = &self.data;
        hash_blocks(size, blocks, |offset, len| {
            data.get(offset as usize..offset as usize + len)
                .map(|block| *blake3::hash(block).as_bytes())
                .ok_or_else(|| {
                    Error::Inconsistent(format!(
                        "(memory sink) read back of {len} bytes at {offset} past the end ({} bytes)",
                        data.len()
                    ))
                })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_memory_snapshot_reports_data_then_changes_against_its_base() {
        let mut base = vec![0u8; 5 * GRANULE as usize];
        base[0] = 1;
        base[2 * GRANULE as usize] = 2;
        let allocated = MemorySnapshot::new("m", base.clone());
        let got = allocated.diff_extents(None, 5 * GRANULE, false).unwrap();
        let runs: Vec<_> = got.iter().map(|e| (e.offset, e.length, e.exists)).collect();
        assert_eq!(runs, [(0, GRANULE, true), (2 * GRANULE, GRANULE, true)]);

        // Granule 0 zeroed (discarded), granule 1 written, granule 2 unchanged, and the
        // image grew by one granule of data.
        let mut now = base.clone();
        now[0] = 0;
        now[GRANULE as usize + 5] = 3;
        now.extend(vec![4u8; GRANULE as usize]);
        let snap = MemorySnapshot::new("m", now).with_base("s1", base);
        let got = snap.diff_extents(Some("s1"), 6 * GRANULE, false).unwrap();
        let runs: Vec<_> = got.iter().map(|e| (e.offset, e.length, e.exists)).collect();
        assert_eq!(
            runs,
            [
                (0, GRANULE, false),
                (GRANULE, GRANULE, true),
                (5 * GRANULE, GRANULE, true)
            ]
        );
        let objects = snap.diff_extents(Some("s1"), 6 * GRANULE, true).unwrap();
        assert_eq!(objects.len(), 1, "one object, cut at the image's end");
        assert_eq!((objects[0].length, objects[0].exists), (6 * GRANULE, true));
        assert!(snap.diff_extents(Some("other"), 1, false).is_err());
    }

    #[test]
    fn memory_reads_fail_where_told_and_past_the_end() {
        let snap = MemorySnapshot::new("m", vec![7u8; 100]).failing_at(50);
        assert_eq!(
            &snap
                .start_read(0, AlignedBuf::zeroed(10))
                .unwrap()
                .wait()
                .unwrap()[..],
            &[7u8; 10]
        );
        assert!(snap.start_read(45, AlignedBuf::zeroed(10)).is_err());
        assert!(snap.start_read(95, AlignedBuf::zeroed(10)).is_err());
    }
}
