//! Ceph's "rbd diff v1" stream: the format `rbd export-diff` writes and `rbd import-diff` reads.
//!
//! Incremental backups are stored in this format so that an operator can restore them with
//! stock Ceph tools (`rbd import-diff FILE pool/image`) when virt-rbd-backup is not at hand.
//! This module is pure: [`RbdDiffWriter`] writes to any `Write`, [`RbdDiffReader`] reads from
//! any `Read`; neither talks to Ceph.
//!
//! # The format, version 1
//!
//! Sources: Ceph's `doc/dev/rbd-diff.rst`, the writer `src/tools/rbd/action/Export.cc`
//! (`do_export_diff_fd`), the reader `src/tools/rbd/action/Import.cc` (`do_import_diff_fd`), and
//! streams written by `rbd export-diff` of Ceph 16.2 (pinned by `tests/repo_rbd_diff_lab.rs`).
//!
//! Integers are unsigned little-endian (`le32`, `le64`). A string is Ceph's encoding of
//! `std::string`: an `le32` byte count, then that many bytes, no terminator. A stream is:
//!
//! 1. The banner, 12 bytes: `rbd diff v1\n` (`72 62 64 20 64 69 66 66 20 76 31 0a`).
//! 2. Metadata records. Each starts with a one-byte tag:
//!    - `f` (0x66), from-snapshot: a string, the snapshot the diff starts from. Absent when the
//!      diff starts from nothing (every allocated extent of the image).
//!    - `t` (0x74), to-snapshot: a string, the snapshot the diff leads to. Absent when the diff
//!      was taken of the image head rather than of a snapshot.
//!    - `s` (0x73), image size: `le64`, the image's size at the end of the diff.
//! 3. Data records, each starting with a one-byte tag:
//!    - `w` (0x77), data: `le64` image offset, `le64` length, then `length` bytes to write there.
//!    - `z` (0x7a), zero: `le64` image offset, `le64` length; that range reads as zeros (it was
//!      discarded, or zeros were written).
//! 4. `e` (0x65), end: one byte, the last of the stream.
//!
//! Example, a diff from snapshot `a` to `bc` of a 4 KiB image changing 3 bytes at 0x10 and
//! zeroing 0x100 bytes at 0x200 (the 12-byte banner first):
//!
//! ```text
//! 66 01000000 61                              f "a"
//! 74 02000000 6263                            t "bc"
//! 73 0010000000000000                         s 4096
//! 77 1000000000000000 0300000000000000 78797a w 0x10 3 "xyz"
//! 7a 0002000000000000 0001000000000000        z 0x200 0x100
//! 65                                          e
//! ```
//!
//! ## What `rbd export-diff` writes
//!
//! - The banner, then `f` (only with `--from-snap`), then `t` (only when exporting `img@snap`),
//!   then `s` (always), in that order.
//! - One data record per extent that librbd's diff-iterate reports, in increasing offset order,
//!   never overlapping. Adjacent changes inside one RADOS object come as one extent; extents
//!   never cross an object boundary, so a `w` is at most one object (4 MiB by default) long.
//!   Extents next to each other in different objects are not merged.
//! - An extent whose data reads all zero is written as `z` (discards, zeros written over data).
//! - Extents follow objects, not bytes, so a record may cover bytes that did not change: when
//!   an object grows, the range from its old end up to the new write is included; a diff from
//!   nothing reports each existing object from its start to its end as one `w`, holes and all
//!   (a 1 MiB write at 7 MiB gives `w 4 MiB+4 MiB`). Objects that never existed are absent.
//! - `e`, and nothing after it.
//!
//! ## What `rbd import-diff` does with it
//!
//! Tags may come in any order. `f` must name a snapshot that exists on the target image, `t`
//! one that does not; names longer than 4096 bytes are refused. `s` resizes the target. `w`
//! records are read whole into memory (so a writer must keep them small) and written, their
//! zero runs as write-zeroes; `z` records become write-zeroes. Records are applied concurrently,
//! so overlapping records have no defined result. At `e` it stops (ignoring anything after it)
//! and then creates the `t` snapshot. Unknown tags are skipped with a message; a stream that
//! ends before `e` is an error.
//!
//! ## What this module adds
//!
//! Both sides hold a stream to the shape `rbd export-diff` writes, which `import-diff` accepts:
//! each metadata record at most once, all before the first data record, `s` present; snapshot
//! names of 1 to [`SNAP_NAME_MAX`] bytes of UTF-8; data records in increasing offset order, not
//! overlapping, inside the image size. The reader also refuses unknown tags and bytes after
//! `e`, because in a backup file they mean damage. The writer splits data into `w` records of
//! at most [`MAX_WRITE_RECORD`] bytes and writes no records of length 0. The reader hands out a
//! `w` record as consecutive [`DiffRecord::Data`] pieces of at most [`MAX_DATA_PIECE`] bytes,
//! so a length in the stream never decides how much memory is allocated.
//!
//! Version 2 (`rbd diff v2\n`, only inside `rbd export --export-format 2`) puts an `le64`
//! length after every tag but `e`; it is not supported here.

use std::io::{self, Read, Write};

use thiserror::Error;

use super::error::RepoError;

/// The banner every v1 stream starts with.
pub const MAGIC: &[u8; 12] = b"rbd diff v1\n";
/// The longest snapshot name, in bytes, that `rbd import-diff` accepts.
pub const SNAP_NAME_MAX: usize = 4096;
/// The largest piece of a `w` record the reader returns at once.
pub const MAX_DATA_PIECE: usize = 4 << 20;
/// The largest `w` record the writer writes: `rbd import-diff` holds a whole record in memory.
pub const MAX_WRITE_RECORD: usize = 4 << 20;

const TAG_FROM_SNAP: u8 = b'f';
const TAG_TO_SNAP: u8 = b't';
const TAG_IMAGE_SIZE: u8 = b's';
const TAG_DATA: u8 = b'w';
const TAG_ZERO: u8 = b'z';
const TAG_END: u8 = b'e';

/// One data record of a diff, as the reader returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiffRecord {
    /// Bytes to write at `offset`: a whole `w` record or a piece of one.
    Data {
        /// Image offset of the first byte.
        offset: u64,
        /// The bytes.
        data: Vec<u8>,
    },
    /// `length` bytes at `offset` read as zeros.
    Zero {
        /// Image offset.
        offset: u64,
        /// Length in bytes.
        length: u64,
    },
}

impl DiffRecord {
    /// Image offset of the record.
    pub fn offset(&self) -> u64 {
        match self {
            DiffRecord::Data { offset, .. } | DiffRecord::Zero { offset, .. } => *offset,
        }
    }

    /// Length of the image range the record covers.
    pub fn length(&self) -> u64 {
        match self {
            DiffRecord::Data { data, .. } => data.len() as u64,
            DiffRecord::Zero { length, .. } => *length,
        }
    }
}

/// Why a stream, or a record given to the writer, is not valid rbd diff v1.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RbdDiffProblem {
    /// The stream does not start with [`MAGIC`].
    #[error("the stream does not start with the banner \"rbd diff v1\\n\" (it starts with \"{}\")", found.escape_ascii())]
    BadMagic {
        /// The first bytes of the stream (up to 12).
        found: Vec<u8>,
    },
    /// End of stream before the `e` record.
    #[error("the stream ends inside {inside}, before the 'e' end record: it was cut short")]
    Truncated {
        /// What was being read.
        inside: &'static str,
    },
    /// A tag byte that is not one of `f t s w z e`.
    #[error("unknown record tag {tag:#04x}")]
    UnknownTag {
        /// The byte.
        tag: u8,
    },
    /// A metadata record seen twice.
    #[error("a second '{}' record", char::from(*tag))]
    DuplicateMetadata {
        /// Its tag.
        tag: u8,
    },
    /// A metadata record after the first data record.
    #[error("a '{}' metadata record after the data records began", char::from(*tag))]
    MetadataAfterData {
        /// Its tag.
        tag: u8,
    },
    /// A data record or the end, before any `s` record.
    #[error("the data records begin before the image size ('s') record")]
    MissingImageSize,
    /// A snapshot name longer than [`SNAP_NAME_MAX`].
    #[error(
        "a snapshot name of {length} bytes; `rbd import-diff` accepts at most {SNAP_NAME_MAX}"
    )]
    SnapNameTooLong {
        /// Its length in bytes.
        length: u64,
    },
    /// A snapshot name of length 0.
    #[error("an empty snapshot name")]
    SnapNameEmpty,
    /// A snapshot name that is not UTF-8.
    #[error("a snapshot name that is not valid UTF-8")]
    SnapNameNotUtf8,
    /// `offset + length` does not fit in 64 bits.
    #[error("an extent of {length} bytes at {offset} ends past 2^64")]
    ExtentOverflow {
        /// Image offset.
        offset: u64,
        /// Length.
        length: u64,
    },
    /// An extent that ends past the image size.
    #[error("an extent of {length} bytes at {offset} ends past the image size {image_size}")]
    ExtentPastEnd {
        /// Image offset.
        offset: u64,
        /// Length.
        length: u64,
        /// The size from the `s` record.
        image_size: u64,
    },
    /// An extent that starts before the previous one ended.
    #[error("an extent at {offset} starts before the previous one ended at {previous_end} (out of order or overlapping)")]
    ExtentOverlap {
        /// Image offset.
        offset: u64,
        /// End of the previous extent.
        previous_end: u64,
    },
    /// Bytes after the `e` record.
    #[error("bytes follow the 'e' end record")]
    TrailingData,
    /// The reader or writer was used again after it returned an error.
    #[error("used again after an earlier error")]
    UsedAfterError,
}

fn bad(offset: u64, problem: RbdDiffProblem) -> RepoError {
    RepoError::BadRbdDiff { offset, problem }
}

fn refused(offset: u64, problem: RbdDiffProblem) -> RepoError {
    RepoError::RbdDiffRefused { offset, problem }
}

fn check_snap_name(name: &str) -> Result<(), RbdDiffProblem> {
    if name.is_empty() {
        Err(RbdDiffProblem::SnapNameEmpty)
    } else if name.len() > SNAP_NAME_MAX {
        Err(RbdDiffProblem::SnapNameTooLong {
            length: name.len() as u64,
        })
    } else {
        Ok(())
    }
}

/// Where data records may go: inside the image, in order, not overlapping.
#[derive(Debug, Clone, Copy)]
struct ExtentOrder {
    image_size: u64,
    previous_end: u64,
}

impl ExtentOrder {
    /// Checks the extent and, if it is acceptable, records its end.
    fn accept(&mut self, offset: u64, length: u64) -> Result<(), RbdDiffProblem> {
        let end = offset
            .checked_add(length)
            .ok_or(RbdDiffProblem::ExtentOverflow { offset, length })?;
        if end > self.image_size {
            return Err(RbdDiffProblem::ExtentPastEnd {
                offset,
                length,
                image_size: self.image_size,
            });
        }
        if offset < self.previous_end {
            return Err(RbdDiffProblem::ExtentOverlap {
                offset,
                previous_end: self.previous_end,
            });
        }
        self.previous_end = end;
        Ok(())
    }
}

/// Writes an rbd diff v1 stream. Give it a buffered writer: it writes each record header
/// (17 bytes) with its own `write_all`.
///
/// ```
/// use virt_rbd_backup::repo::rbd_diff::RbdDiffWriter;
/// let mut w = RbdDiffWriter::new(Vec::new(), Some("s1"), "s2", 1 << 20)?;
/// w.write_data(4096, b"new bytes")?;
/// w.write_zero(65536, 8192)?;
/// let stream: Vec<u8> = w.finish()?;
/// # Ok::<(), virt_rbd_backup::repo::RepoError>(())
/// ```
pub struct RbdDiffWriter<W: Write> {
    inner: W,
    order: ExtentOrder,
    bytes_written: u64,
    failed: bool,
}

impl<W: Write> RbdDiffWriter<W> {
    /// Writes the banner and the `f` (if `from_snap`), `t` and `s` records. `from_snap: None`
    /// makes a diff from nothing (restored onto an empty image); `to_snap` names the snapshot
    /// `rbd import-diff` creates once the data is applied. (A backup always leads to a
    /// snapshot, so the writer always writes `t`; the reader also accepts streams without.)
    pub fn new(
        inner: W,
        from_snap: Option<&str>,
        to_snap: &str,
        image_size: u64,
    ) -> Result<Self, RepoError> {
        let mut header = MAGIC.to_vec();
        for (tag, name) in [(TAG_FROM_SNAP, from_snap), (TAG_TO_SNAP, Some(to_snap))] {
            if let Some(name) = name {
                check_snap_name(name).map_err(|p| refused(header.len() as u64, p))?;
                header.push(tag);
                header.extend_from_slice(&(name.len() as u32).to_le_bytes());
                header.extend_from_slice(name.as_bytes());
            }
        }
        header.push(TAG_IMAGE_SIZE);
        header.extend_from_slice(&image_size.to_le_bytes());
        let mut writer = RbdDiffWriter {
            inner,
            order: ExtentOrder {
                image_size,
                previous_end: 0,
            },
            bytes_written: 0,
            failed: false,
        };
        writer.put(&header)?;
        Ok(writer)
    }

    /// Writes `data` at image offset `offset` as one or more `w` records. Empty data writes
    /// nothing. Refused if the range is not inside the image or starts before the end of the
    /// previous record.
    pub fn write_data(&mut self, offset: u64, data: &[u8]) -> Result<(), RepoError> {
        self.accept(offset, data.len() as u64)?;
        let mut at = offset;
        for piece in data.chunks(MAX_WRITE_RECORD) {
            self.put_extent_header(TAG_DATA, at, piece.len() as u64)?;
            self.put(piece)?;
            at += piece.len() as u64;
        }
        Ok(())
    }

    /// Writes a `z` record: `length` bytes at `offset` read as zeros. A length of 0 writes
    /// nothing. Refused like [`write_data`](Self::write_data).
    pub fn write_zero(&mut self, offset: u64, length: u64) -> Result<(), RepoError> {
        self.accept(offset, length)?;
        if length > 0 {
            self.put_extent_header(TAG_ZERO, offset, length)?;
        }
        Ok(())
    }

    /// Bytes of stream written so far, banner included.
    pub fn bytes_written(&self) -> u64 {
        self.bytes_written
    }

    /// Writes the `e` record, flushes, and returns the inner writer (not fsynced: that is the
    /// owner of the file's job).
    pub fn finish(mut self) -> Result<W, RepoError> {
        self.check_usable()?;
        self.put(&[TAG_END])?;
        let at = self.bytes_written;
        self.inner.flush().map_err(|source| RepoError::RbdDiffIo {
            action: "flush",
            offset: at,
            source,
        })?;
        Ok(self.inner)
    }

    fn check_usable(&self) -> Result<(), RepoError> {
        if self.failed {
            Err(refused(self.bytes_written, RbdDiffProblem::UsedAfterError))
        } else {
            Ok(())
        }
    }

    fn accept(&mut self, offset: u64, length: u64) -> Result<(), RepoError> {
        self.check_usable()?;
        self.order
            .accept(offset, length)
            .map_err(|p| refused(self.bytes_written, p))
    }

    fn put_extent_header(&mut self, tag: u8, offset: u64, length: u64) -> Result<(), RepoError> {
        let mut header = [0u8; 17];
        header[0] = tag;
        header[1..9].copy_from_slice(&offset.to_le_bytes());
        header[9..17].copy_from_slice(&length.to_le_bytes());
        self.put(&header)
    }

    /// Writes bytes; after a failure the stream holds a partial record, so the writer refuses
    /// any further use.
    fn put(&mut self, bytes: &[u8]) -> Result<(), RepoError> {
        if let Err(source) = self.inner.write_all(bytes) {
            self.failed = true;
            return Err(RepoError::RbdDiffIo {
                action: "write",
                offset: self.bytes_written,
                source,
            });
        }
        self.bytes_written += bytes.len() as u64;
        Ok(())
    }
}

/// Where the reader is between calls.
#[derive(Debug, Clone, Copy)]
enum ReadState {
    /// Before a record; `peeked` holds a tag (and its stream offset) that `new` already read
    /// while looking for the end of the metadata.
    BetweenRecords { peeked: Option<(u8, u64)> },
    /// Inside a `w` record, with `remaining` bytes of it still to hand out.
    InData { offset: u64, remaining: u64 },
    /// After `e`.
    Ended,
    /// After an error: the stream position no longer means anything.
    Failed,
}

/// Reads an rbd diff v1 stream: the metadata at once, then the data records one at a time.
///
/// Every error names the byte offset in the stream where the problem is (the start of the
/// offending record, or where the stream ended). After an error the reader only returns
/// [`RbdDiffProblem::UsedAfterError`]; as an iterator it then ends.
pub struct RbdDiffReader<R: Read> {
    inner: R,
    position: u64,
    from_snap: Option<String>,
    to_snap: Option<String>,
    image_size: u64,
    order: ExtentOrder,
    state: ReadState,
}

impl<R: Read> RbdDiffReader<R> {
    /// Reads the banner and the metadata records, up to the first data record or `e`.
    pub fn new(inner: R) -> Result<Self, RepoError> {
        let mut reader = RbdDiffReader {
            inner,
            position: 0,
            from_snap: None,
            to_snap: None,
            image_size: 0,
            order: ExtentOrder {
                image_size: 0,
                previous_end: 0,
            },
            state: ReadState::Failed,
        };
        reader.read_banner()?;
        let mut image_size = None;
        loop {
            let at = reader.position;
            let tag = reader.read_u8("a record tag")?;
            match tag {
                TAG_FROM_SNAP | TAG_TO_SNAP => {
                    let taken = if tag == TAG_FROM_SNAP {
                        reader.from_snap.is_some()
                    } else {
                        reader.to_snap.is_some()
                    };
                    if taken {
                        return Err(bad(at, RbdDiffProblem::DuplicateMetadata { tag }));
                    }
                    let name = reader.read_snap_name(at)?;
                    if tag == TAG_FROM_SNAP {
                        reader.from_snap = Some(name);
                    } else {
                        reader.to_snap = Some(name);
                    }
                }
                TAG_IMAGE_SIZE => {
                    if image_size.is_some() {
                        return Err(bad(at, RbdDiffProblem::DuplicateMetadata { tag }));
                    }
                    image_size = Some(reader.read_u64("the image size ('s') record")?);
                }
                TAG_DATA | TAG_ZERO | TAG_END => {
                    let size =
                        image_size.ok_or_else(|| bad(at, RbdDiffProblem::MissingImageSize))?;
                    reader.image_size = size;
                    reader.order.image_size = size;
                    reader.state = ReadState::BetweenRecords {
                        peeked: Some((tag, at)),
                    };
                    return Ok(reader);
                }
                _ => return Err(bad(at, RbdDiffProblem::UnknownTag { tag })),
            }
        }
    }

    /// The snapshot the diff starts from (`None`: it starts from nothing).
    pub fn from_snap(&self) -> Option<&str> {
        self.from_snap.as_deref()
    }

    /// The snapshot the diff leads to (`None`: taken of the image head).
    pub fn to_snap(&self) -> Option<&str> {
        self.to_snap.as_deref()
    }

    /// The image size at the end of the diff.
    pub fn image_size(&self) -> u64 {
        self.image_size
    }

    /// Bytes of stream consumed so far.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// Gives back the inner reader.
    pub fn into_inner(self) -> R {
        self.inner
    }

    /// The next data record or piece of one (at most [`MAX_DATA_PIECE`] bytes), or `None`
    /// after the `e` record (having checked that nothing follows it).
    pub fn next_record(&mut self) -> Result<Option<DiffRecord>, RepoError> {
        let result = self.step();
        if result.is_err() {
            self.state = ReadState::Failed;
        }
        result
    }

    fn step(&mut self) -> Result<Option<DiffRecord>, RepoError> {
        match self.state {
            ReadState::Ended => Ok(None),
            ReadState::Failed => Err(bad(self.position, RbdDiffProblem::UsedAfterError)),
            ReadState::InData { offset, remaining } => self.read_piece(offset, remaining).map(Some),
            ReadState::BetweenRecords { peeked } => {
                let (tag, at) = match peeked {
                    Some(p) => p,
                    None => {
                        let at = self.position;
                        (self.read_u8("a record tag")?, at)
                    }
                };
                self.state = ReadState::BetweenRecords { peeked: None };
                match tag {
                    TAG_DATA => {
                        let (offset, length) = self.read_extent(at, "a 'w' record header")?;
                        if length == 0 {
                            return Ok(Some(DiffRecord::Data {
                                offset,
                                data: Vec::new(),
                            }));
                        }
                        self.read_piece(offset, length).map(Some)
                    }
                    TAG_ZERO => {
                        let (offset, length) = self.read_extent(at, "a 'z' record")?;
                        Ok(Some(DiffRecord::Zero { offset, length }))
                    }
                    TAG_END => {
                        let mut probe = [0u8; 1];
                        let at = self.position;
                        if self.read_up_to(&mut probe)? > 0 {
                            return Err(bad(at, RbdDiffProblem::TrailingData));
                        }
                        self.state = ReadState::Ended;
                        Ok(None)
                    }
                    TAG_FROM_SNAP | TAG_TO_SNAP | TAG_IMAGE_SIZE => {
                        Err(bad(at, RbdDiffProblem::MetadataAfterData { tag }))
                    }
                    _ => Err(bad(at, RbdDiffProblem::UnknownTag { tag })),
                }
            }
        }
    }

    fn read_banner(&mut self) -> Result<(), RepoError> {
        let mut banner = [0u8; MAGIC.len()];
        let n = self.read_up_to(&mut banner)?;
        if banner[..n] != MAGIC[..n] {
            return Err(bad(
                0,
                RbdDiffProblem::BadMagic {
                    found: banner[..n].to_vec(),
                },
            ));
        }
        if n < MAGIC.len() {
            return Err(bad(
                self.position,
                RbdDiffProblem::Truncated {
                    inside: "the banner",
                },
            ));
        }
        Ok(())
    }

    /// Reads the length and bytes of the name in the record whose tag is at `at`.
    fn read_snap_name(&mut self, at: u64) -> Result<String, RepoError> {
        let mut len = [0u8; 4];
        self.read_exact(&mut len, "a snapshot name's length")?;
        let len = u32::from_le_bytes(len);
        if len as usize > SNAP_NAME_MAX {
            return Err(bad(
                at,
                RbdDiffProblem::SnapNameTooLong {
                    length: u64::from(len),
                },
            ));
        }
        if len == 0 {
            return Err(bad(at, RbdDiffProblem::SnapNameEmpty));
        }
        let mut name = vec![0u8; len as usize];
        self.read_exact(&mut name, "a snapshot name")?;
        String::from_utf8(name).map_err(|_| bad(at, RbdDiffProblem::SnapNameNotUtf8))
    }

    /// Reads the offset and length of the data record whose tag is at `at`, and checks them.
    fn read_extent(&mut self, at: u64, inside: &'static str) -> Result<(u64, u64), RepoError> {
        let offset = self.read_u64(inside)?;
        let length = self.read_u64(inside)?;
        self.order.accept(offset, length).map_err(|p| bad(at, p))?;
        Ok((offset, length))
    }

    /// Reads the next piece of a `w` record. The buffer grows as bytes arrive (at most twice
    /// what the stream delivered, and never past the piece), so a length in the stream that
    /// the stream does not back with data costs no memory.
    fn read_piece(&mut self, offset: u64, remaining: u64) -> Result<DiffRecord, RepoError> {
        const FIRST_GROWTH: usize = 64 << 10;
        let want = remaining.min(MAX_DATA_PIECE as u64) as usize;
        let mut data = Vec::new();
        while data.len() < want {
            let filled = data.len();
            let target = want.min((filled * 2).max(FIRST_GROWTH));
            data.reserve_exact(target - filled);
            data.resize(target, 0);
            let n = self.read_up_to(&mut data[filled..])?;
            if n < target - filled {
                return Err(bad(
                    self.position,
                    RbdDiffProblem::Truncated {
                        inside: "the data of a 'w' record",
                    },
                ));
            }
        }
        let want = want as u64;
        self.state = if remaining > want {
            ReadState::InData {
                offset: offset + want,
                remaining: remaining - want,
            }
        } else {
            ReadState::BetweenRecords { peeked: None }
        };
        Ok(DiffRecord::Data { offset, data })
    }

    fn read_u8(&mut self, inside: &'static str) -> Result<u8, RepoError> {
        let mut b = [0u8; 1];
        self.read_exact(&mut b, inside)?;
        Ok(b[0])
    }

    fn read_u64(&mut self, inside: &'static str) -> Result<u64, RepoError> {
        let mut b = [0u8; 8];
        self.read_exact(&mut b, inside)?;
        Ok(u64::from_le_bytes(b))
    }

    fn read_exact(&mut self, buf: &mut [u8], inside: &'static str) -> Result<(), RepoError> {
        if self.read_up_to(buf)? < buf.len() {
            return Err(bad(self.position, RbdDiffProblem::Truncated { inside }));
        }
        Ok(())
    }

    /// Fills `buf` unless the stream ends first; returns how many bytes were read.
    fn read_up_to(&mut self, buf: &mut [u8]) -> Result<usize, RepoError> {
        let mut filled = 0;
        while filled < buf.len() {
            match self.inner.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => {
                    filled += n;
                    self.position += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(RepoError::RbdDiffIo {
                        action: "read",
                        offset: self.position,
                        source,
                    })
                }
            }
        }
        Ok(filled)
    }
}

impl<R: Read> Iterator for RbdDiffReader<R> {
    type Item = Result<DiffRecord, RepoError>;

    /// Like [`RbdDiffReader::next_record`], but ends after the first error.
    fn next(&mut self) -> Option<Self::Item> {
        if matches!(self.state, ReadState::Failed) {
            return None;
        }
        self.next_record().transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the module doc, byte by byte.
    fn doc_example() -> Vec<u8> {
        let mut s = b"rbd diff v1\n".to_vec();
        s.extend_from_slice(b"f\x01\x00\x00\x00a");
        s.extend_from_slice(b"t\x02\x00\x00\x00bc");
        s.extend_from_slice(b"s\x00\x10\x00\x00\x00\x00\x00\x00");
        s.extend_from_slice(
            b"w\x10\x00\x00\x00\x00\x00\x00\x00\x03\x00\x00\x00\x00\x00\x00\x00xyz",
        );
        s.extend_from_slice(b"z\x00\x02\x00\x00\x00\x00\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00");
        s.push(b'e');
        s
    }

    fn read_all(stream: &[u8]) -> Result<(RbdDiffReader<&[u8]>, Vec<DiffRecord>), RepoError> {
        let mut reader = RbdDiffReader::new(stream)?;
        let mut records = Vec::new();
        while let Some(r) = reader.next_record()? {
            records.push(r);
        }
        Ok((reader, records))
    }

    /// The offset and problem of a reading error; panics on anything else.
    fn read_error(stream: &[u8]) -> (u64, RbdDiffProblem) {
        match read_all(stream) {
            Err(RepoError::BadRbdDiff { offset, problem }) => (offset, problem),
            Err(other) => panic!("expected BadRbdDiff, got {other}"),
            Ok((_, records)) => panic!("expected an error, read {records:?}"),
        }
    }

    fn refusal(result: Result<(), RepoError>) -> (u64, RbdDiffProblem) {
        match result {
            Err(RepoError::RbdDiffRefused { offset, problem }) => (offset, problem),
            other => panic!("expected RbdDiffRefused, got {other:?}"),
        }
    }

    fn header(size: u64) -> Vec<u8> {
        let mut s = MAGIC.to_vec();
        s.push(b's');
        s.extend_from_slice(&size.to_le_bytes());
        s
    }

    /// What the writer starts a stream with for `to_snap` "t" and no from-snapshot (27 bytes).
    fn writer_header(size: u64) -> Vec<u8> {
        let mut s = MAGIC.to_vec();
        s.extend_from_slice(b"t\x01\x00\x00\x00t");
        s.push(b's');
        s.extend_from_slice(&size.to_le_bytes());
        s
    }

    fn extent(tag: u8, offset: u64, length: u64) -> Vec<u8> {
        let mut s = vec![tag];
        s.extend_from_slice(&offset.to_le_bytes());
        s.extend_from_slice(&length.to_le_bytes());
        s
    }

    #[test]
    fn the_writer_produces_the_documented_bytes() {
        let mut w = RbdDiffWriter::new(Vec::new(), Some("a"), "bc", 4096).unwrap();
        w.write_data(0x10, b"xyz").unwrap();
        w.write_zero(0x200, 0x100).unwrap();
        let expected = doc_example();
        assert_eq!(w.bytes_written(), expected.len() as u64 - 1);
        assert_eq!(w.finish().unwrap(), expected);
    }

    #[test]
    fn the_reader_parses_the_documented_bytes() {
        let stream = doc_example();
        let (reader, records) = read_all(&stream).unwrap();
        assert_eq!(reader.from_snap(), Some("a"));
        assert_eq!(reader.to_snap(), Some("bc"));
        assert_eq!(reader.image_size(), 4096);
        assert_eq!(reader.position(), doc_example().len() as u64);
        assert_eq!(
            records,
            vec![
                DiffRecord::Data {
                    offset: 0x10,
                    data: b"xyz".to_vec()
                },
                DiffRecord::Zero {
                    offset: 0x200,
                    length: 0x100
                },
            ]
        );
    }

    #[test]
    fn writer_to_reader_round_trip_keeps_records_and_metadata() {
        let records = vec![
            DiffRecord::Data {
                offset: 0,
                data: vec![1; 4096],
            },
            DiffRecord::Data {
                offset: 4096,
                data: vec![2; 10],
            },
            DiffRecord::Zero {
                offset: 8192,
                length: 1 << 20,
            },
            DiffRecord::Data {
                offset: (1 << 30) - 3,
                data: vec![3, 4, 5],
            },
        ];
        for from in [Some("s1"), None] {
            let mut w = RbdDiffWriter::new(Vec::new(), from, "s2", 1 << 30).unwrap();
            for r in &records {
                match r {
                    DiffRecord::Data { offset, data } => w.write_data(*offset, data).unwrap(),
                    DiffRecord::Zero { offset, length } => w.write_zero(*offset, *length).unwrap(),
                }
            }
            let stream = w.finish().unwrap();
            let (reader, back) = read_all(&stream).unwrap();
            assert_eq!((reader.from_snap(), reader.to_snap()), (from, Some("s2")));
            assert_eq!(reader.image_size(), 1 << 30);
            assert_eq!(back, records);
        }
    }

    #[test]
    fn an_empty_diff_is_metadata_and_end_only() {
        let w = RbdDiffWriter::new(Vec::new(), None, "only", 0).unwrap();
        let stream = w.finish().unwrap();
        let mut expected = MAGIC.to_vec();
        expected.extend_from_slice(b"t\x04\x00\x00\x00only");
        expected.extend_from_slice(b"s\x00\x00\x00\x00\x00\x00\x00\x00");
        expected.push(b'e');
        assert_eq!(stream, expected);
        let (reader, records) = read_all(&stream).unwrap();
        assert!(records.is_empty());
        assert_eq!(reader.from_snap(), None);
        assert_eq!(reader.to_snap(), Some("only"));
    }

    #[test]
    fn a_data_record_longer_than_a_piece_is_read_as_consecutive_pieces() {
        let len = 2 * MAX_DATA_PIECE + 5;
        let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let mut stream = header(1 << 40);
        stream.extend(extent(b'w', 1000, len as u64));
        stream.extend_from_slice(&data);
        stream.extend(extent(b'z', 1000 + len as u64, 7));
        stream.push(b'e');
        let (_, records) = read_all(&stream).unwrap();
        let offsets: Vec<u64> = records.iter().map(DiffRecord::offset).collect();
        let piece = MAX_DATA_PIECE as u64;
        assert_eq!(
            offsets,
            vec![1000, 1000 + piece, 1000 + 2 * piece, 1000 + len as u64]
        );
        let mut joined = Vec::new();
        for r in &records[..3] {
            match r {
                DiffRecord::Data { data, .. } => joined.extend_from_slice(data),
                DiffRecord::Zero { .. } => panic!("expected data"),
            }
        }
        assert_eq!(joined, data);
    }

    #[test]
    fn the_writer_splits_large_data_into_records_import_diff_can_hold() {
        let len = MAX_WRITE_RECORD + 3;
        let mut w = RbdDiffWriter::new(Vec::new(), None, "t", 1 << 30).unwrap();
        w.write_data(512, &vec![9u8; len]).unwrap();
        let stream = w.finish().unwrap();
        let mut expected = writer_header(1 << 30);
        expected.extend(extent(b'w', 512, MAX_WRITE_RECORD as u64));
        expected.extend(vec![9u8; MAX_WRITE_RECORD]);
        expected.extend(extent(b'w', 512 + MAX_WRITE_RECORD as u64, 3));
        expected.extend([9, 9, 9]);
        expected.push(b'e');
        assert!(stream == expected, "split records differ");
    }

    #[test]
    fn zero_length_writes_produce_no_record() {
        let mut w = RbdDiffWriter::new(Vec::new(), None, "t", 100).unwrap();
        w.write_data(10, &[]).unwrap();
        w.write_zero(20, 0).unwrap();
        w.write_data(100, &[]).unwrap();
        let mut expected = writer_header(100);
        expected.push(b'e');
        assert_eq!(w.finish().unwrap(), expected);
    }

    #[test]
    fn zero_length_records_from_other_writers_are_read() {
        let mut stream = header(100);
        stream.extend(extent(b'w', 10, 0));
        stream.extend(extent(b'z', 10, 0));
        stream.push(b'e');
        let (_, records) = read_all(&stream).unwrap();
        assert_eq!(
            records,
            vec![
                DiffRecord::Data {
                    offset: 10,
                    data: vec![]
                },
                DiffRecord::Zero {
                    offset: 10,
                    length: 0
                }
            ]
        );
    }

    #[test]
    fn metadata_may_come_in_any_order_before_data() {
        let mut stream = MAGIC.to_vec();
        stream.extend_from_slice(b"s\x08\x00\x00\x00\x00\x00\x00\x00");
        stream.extend_from_slice(b"t\x01\x00\x00\x00B");
        stream.extend_from_slice(b"f\x01\x00\x00\x00A");
        stream.push(b'e');
        let (reader, _) = read_all(&stream).unwrap();
        assert_eq!(
            (reader.from_snap(), reader.to_snap(), reader.image_size()),
            (Some("A"), Some("B"), 8)
        );
    }

    #[test]
    fn a_snapshot_name_of_exactly_the_limit_is_accepted() {
        let name = "n".repeat(SNAP_NAME_MAX);
        let stream = RbdDiffWriter::new(Vec::new(), Some(&name), "t", 1)
            .unwrap()
            .finish()
            .unwrap();
        let (reader, _) = read_all(&stream).unwrap();
        assert_eq!(reader.from_snap(), Some(name.as_str()));
    }

    #[test]
    fn a_wrong_banner_is_refused_at_byte_0() {
        assert_eq!(
            read_error(b"rbd diff v2\ns"),
            (
                0,
                RbdDiffProblem::BadMagic {
                    found: b"rbd diff v2\n".to_vec()
                }
            )
        );
        assert_eq!(
            read_error(b"QFI\xfb"),
            (
                0,
                RbdDiffProblem::BadMagic {
                    found: b"QFI\xfb".to_vec()
                }
            )
        );
        let (_, problem) = read_error(b"\x00\x01");
        assert!(problem.to_string().contains(r"\x00\x01"), "{problem}");
    }

    #[test]
    fn every_cut_of_a_valid_stream_is_reported_as_truncated_where_it_ends() {
        let full = doc_example();
        for cut in 0..full.len() {
            let (offset, problem) = read_error(&full[..cut]);
            assert_eq!(offset, cut as u64, "cut at {cut}: {problem}");
            assert!(
                matches!(problem, RbdDiffProblem::Truncated { .. }),
                "cut at {cut}: {problem}"
            );
        }
    }

    #[test]
    fn truncation_names_what_was_being_read() {
        let mut stream = header(100);
        stream.extend(extent(b'w', 0, 10));
        stream.extend_from_slice(b"abc");
        assert_eq!(
            read_error(&stream),
            (
                stream.len() as u64,
                RbdDiffProblem::Truncated {
                    inside: "the data of a 'w' record"
                }
            )
        );
        let no_end = header(100);
        assert_eq!(
            read_error(&no_end),
            (
                no_end.len() as u64,
                RbdDiffProblem::Truncated {
                    inside: "a record tag"
                }
            )
        );
    }

    #[test]
    fn unknown_tags_are_refused_in_metadata_and_among_data() {
        let mut stream = MAGIC.to_vec();
        stream.push(b'p');
        assert_eq!(
            read_error(&stream),
            (12, RbdDiffProblem::UnknownTag { tag: b'p' })
        );
        let mut stream = header(100);
        stream.extend(extent(b'z', 0, 1));
        stream.push(b'W');
        assert_eq!(
            read_error(&stream),
            (38, RbdDiffProblem::UnknownTag { tag: b'W' })
        );
    }

    #[test]
    fn extents_that_overflow_or_pass_the_image_end_are_refused_at_their_tag() {
        let mut stream = header(100);
        stream.extend(extent(b'z', u64::MAX, 2));
        assert_eq!(
            read_error(&stream),
            (
                21,
                RbdDiffProblem::ExtentOverflow {
                    offset: u64::MAX,
                    length: 2
                }
            )
        );
        let mut stream = header(100);
        stream.extend(extent(b'z', 0, 10));
        stream.extend(extent(b'w', 95, 6));
        stream.extend_from_slice(b"abcdef");
        stream.push(b'e');
        assert_eq!(
            read_error(&stream),
            (
                38,
                RbdDiffProblem::ExtentPastEnd {
                    offset: 95,
                    length: 6,
                    image_size: 100
                }
            )
        );
    }

    #[test]
    fn an_attacker_length_never_allocates_more_than_a_piece() {
        // A 'w' record claiming 1 TiB, followed by an endless stream: each call returns at
        // most one piece, so memory stays bounded whatever the length says.
        let mut head = header(u64::MAX);
        head.extend(extent(b'w', 0, 1 << 40));
        let endless = head.as_slice().chain(io::repeat(7));
        let mut reader = RbdDiffReader::new(endless).unwrap();
        for i in 0..3u64 {
            match reader.next_record().unwrap() {
                Some(DiffRecord::Data { offset, data }) => {
                    assert_eq!(offset, i * MAX_DATA_PIECE as u64);
                    assert_eq!(data.len(), MAX_DATA_PIECE);
                    assert!(data.capacity() <= MAX_DATA_PIECE);
                }
                other => panic!("expected data, got {other:?}"),
            }
        }
        // The same claim on a short stream is a truncation, not an allocation of 1 TiB.
        let mut stream = head;
        stream.extend_from_slice(b"tiny");
        let (offset, problem) = read_error(&stream);
        assert_eq!(offset, stream.len() as u64);
        assert!(matches!(problem, RbdDiffProblem::Truncated { .. }));
    }

    #[test]
    fn out_of_order_or_overlapping_extents_are_refused() {
        let mut stream = header(100);
        stream.extend(extent(b'z', 50, 10));
        stream.extend(extent(b'z', 55, 1));
        assert_eq!(
            read_error(&stream),
            (
                38,
                RbdDiffProblem::ExtentOverlap {
                    offset: 55,
                    previous_end: 60
                }
            )
        );
        let mut stream = header(100);
        stream.extend(extent(b'z', 50, 10));
        stream.extend(extent(b'z', 60, 1));
        stream.push(b'e');
        read_all(&stream).expect("adjacent extents are fine");
    }

    #[test]
    fn bytes_after_the_end_record_are_refused() {
        let mut stream = doc_example();
        let end = stream.len() as u64;
        stream.push(0);
        assert_eq!(read_error(&stream), (end, RbdDiffProblem::TrailingData));
    }

    #[test]
    fn bad_snapshot_names_are_refused_at_their_tag() {
        let mut stream = MAGIC.to_vec();
        stream.extend_from_slice(b"f\x02\x00\x00\x00\xff\xfe");
        assert_eq!(read_error(&stream), (12, RbdDiffProblem::SnapNameNotUtf8));

        let mut stream = header(1);
        stream.push(b't');
        stream.extend_from_slice(&(SNAP_NAME_MAX as u32 + 1).to_le_bytes());
        stream.extend(vec![b'x'; SNAP_NAME_MAX + 1]);
        assert_eq!(
            read_error(&stream),
            (
                21,
                RbdDiffProblem::SnapNameTooLong {
                    length: SNAP_NAME_MAX as u64 + 1
                }
            )
        );
        // An absurd length is refused before anything is allocated for it.
        let mut stream = MAGIC.to_vec();
        stream.extend_from_slice(b"t\xff\xff\xff\xff");
        assert_eq!(
            read_error(&stream),
            (
                12,
                RbdDiffProblem::SnapNameTooLong {
                    length: u64::from(u32::MAX)
                }
            )
        );

        let mut stream = MAGIC.to_vec();
        stream.extend_from_slice(b"f\x00\x00\x00\x00");
        assert_eq!(read_error(&stream), (12, RbdDiffProblem::SnapNameEmpty));
    }

    #[test]
    fn metadata_must_be_single_first_and_hold_the_size() {
        let mut stream = header(10);
        stream.extend_from_slice(b"s\x01\x00\x00\x00\x00\x00\x00\x00");
        assert_eq!(
            read_error(&stream),
            (21, RbdDiffProblem::DuplicateMetadata { tag: b's' })
        );

        let mut stream = MAGIC.to_vec();
        stream.extend_from_slice(b"f\x01\x00\x00\x00af\x01\x00\x00\x00b");
        assert_eq!(
            read_error(&stream),
            (18, RbdDiffProblem::DuplicateMetadata { tag: b'f' })
        );

        let mut stream = header(10);
        stream.extend(extent(b'z', 0, 1));
        stream.extend_from_slice(b"t\x01\x00\x00\x00x");
        assert_eq!(
            read_error(&stream),
            (38, RbdDiffProblem::MetadataAfterData { tag: b't' })
        );

        let mut stream = MAGIC.to_vec();
        stream.extend_from_slice(b"t\x01\x00\x00\x00x");
        stream.push(b'e');
        assert_eq!(read_error(&stream), (18, RbdDiffProblem::MissingImageSize));
    }

    #[test]
    fn a_failed_reader_refuses_further_use_and_its_iterator_ends() {
        let mut stream = header(10);
        stream.extend(extent(b'z', 0, 11));
        stream.push(b'e');
        let mut reader = RbdDiffReader::new(stream.as_slice()).unwrap();
        assert!(reader.next_record().is_err());
        match reader.next_record() {
            Err(RepoError::BadRbdDiff {
                problem: RbdDiffProblem::UsedAfterError,
                ..
            }) => {}
            other => panic!("expected UsedAfterError, got {other:?}"),
        }
        let mut reader = RbdDiffReader::new(stream.as_slice()).unwrap();
        assert!(matches!(reader.next(), Some(Err(_))));
        assert!(reader.next().is_none());
    }

    #[test]
    fn the_writer_refuses_records_that_would_make_a_bad_stream() {
        let mut w = RbdDiffWriter::new(Vec::new(), None, "t", 100).unwrap();
        w.write_zero(10, 10).unwrap();
        assert_eq!(
            refusal(w.write_data(15, b"x")),
            (
                44,
                RbdDiffProblem::ExtentOverlap {
                    offset: 15,
                    previous_end: 20
                }
            )
        );
        assert_eq!(
            refusal(w.write_data(99, b"xy")),
            (
                44,
                RbdDiffProblem::ExtentPastEnd {
                    offset: 99,
                    length: 2,
                    image_size: 100
                }
            )
        );
        assert_eq!(
            refusal(w.write_zero(50, u64::MAX)),
            (
                44,
                RbdDiffProblem::ExtentOverflow {
                    offset: 50,
                    length: u64::MAX
                }
            )
        );
        // Refusals write nothing: the stream is still good.
        w.write_data(20, b"ok").unwrap();
        let (_, records) = read_all(&w.finish().unwrap()).unwrap();
        assert_eq!(records.len(), 2);
    }

    #[test]
    fn the_writer_refuses_snapshot_names_import_diff_would_refuse() {
        let long = "x".repeat(SNAP_NAME_MAX + 1);
        for (from, to, offset, problem) in [
            (Some(""), "t", 12, RbdDiffProblem::SnapNameEmpty),
            (None, "", 12, RbdDiffProblem::SnapNameEmpty),
            (
                Some("a"),
                long.as_str(),
                18,
                RbdDiffProblem::SnapNameTooLong {
                    length: SNAP_NAME_MAX as u64 + 1,
                },
            ),
        ] {
            match RbdDiffWriter::new(Vec::new(), from, to, 1) {
                Err(RepoError::RbdDiffRefused {
                    offset: o,
                    problem: p,
                }) => assert_eq!((o, p), (offset, problem)),
                other => panic!("expected a refusal, got {:?}", other.err()),
            }
        }
    }

    /// A sink that fails after `budget` bytes, like a full disk.
    struct FailingSink {
        budget: usize,
    }

    impl Write for FailingSink {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.budget == 0 {
                return Err(io::Error::other("disk full"));
            }
            let n = buf.len().min(self.budget);
            self.budget -= n;
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_write_failure_is_reported_with_its_offset_and_poisons_the_writer() {
        let mut w = RbdDiffWriter::new(FailingSink { budget: 36 }, None, "t", 100).unwrap();
        match w.write_data(0, b"0123456789") {
            Err(RepoError::RbdDiffIo { offset, .. }) => assert_eq!(offset, 27),
            other => panic!("expected an I/O error, got {other:?}"),
        }
        assert_eq!(
            refusal(w.write_zero(50, 1)).1,
            RbdDiffProblem::UsedAfterError
        );
        assert!(w.finish().is_err());
    }

    /// Deterministic stand-in for fuzzing on stable: every single-byte change of valid streams
    /// to a few telling values, and every cut, must give records or an error, never a panic,
    /// and never a piece larger than the limit.
    #[test]
    fn mutated_streams_never_panic() {
        let mut w = RbdDiffWriter::new(Vec::new(), Some("s1"), "s2", 1 << 16).unwrap();
        w.write_data(0, b"hello").unwrap();
        w.write_zero(4096, 4096).unwrap();
        w.write_data(60000, &[0xab; 300]).unwrap();
        let streams = [doc_example(), w.finish().unwrap()];
        for stream in &streams {
            for i in 0..stream.len() {
                for v in [0x00, 0x01, 0x7f, 0x80, 0xff, b'e', b'w', b'z', b's', b'f'] {
                    let mut m = stream.clone();
                    m[i] = v;
                    exhaust(&m);
                }
                exhaust(&stream[..i]);
                let mut without = stream.clone();
                without.remove(i);
                exhaust(&without);
            }
        }
    }

    fn exhaust(stream: &[u8]) {
        let Ok(reader) = RbdDiffReader::new(stream) else {
            return;
        };
        for r in reader {
            match r {
                Ok(DiffRecord::Data { data, .. }) => assert!(data.len() <= MAX_DATA_PIECE),
                Ok(DiffRecord::Zero { .. }) => {}
                Err(e) => {
                    let _ = e.to_string();
                }
            }
        }
    }
}
