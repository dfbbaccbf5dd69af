//! Writing one disk of a backup: the repository's side of an export.
//!
//! The engine asks the staged backup for a [`DiskWriter`], telling it where the content comes
//! from ([`DiskOrigin`]: image, snapshot, full or incremental) and whether to compress; it
//! exports into the writer's [`DiskSink`] and hands back what the export computed
//! ([`DiskContent`]: content checksum, block table, bytes read). The writer picks the stored
//! format (`DiskFormat::for_backup`), names, creates (0600, never over an existing file) and
//! fsyncs every file of the disk, and returns the disk's manifest record. Nothing outside this
//! module names a disk's files or formats.
//!
//! Files of a disk, `<t>` being its target through `layout::safe_component`:
//!
//! | file               | format                          | what                                   |
//! |--------------------|---------------------------------|----------------------------------------|
//! | `<t>.raw`          | `SparseRaw`                     | the image, holes where it reads zeros  |
//! | `<t>.rbdiff`       | `RbdDiffV1`                     | `rbd export-diff` v1 stream            |
//! | `<t>.rbdiff.zst`   | `RbdDiffV1Zstd`                 | the same stream in zstd frames         |
//! | `<data>.b3`        | diff formats                    | 4 MiB chunk table of the stored bytes  |
//! | `<t>.blocks`       | all                             | 4 MiB block table of the content       |
//! | `<t>.leaves`       | all                             | 64 KiB leaf table (`leaf_table`)       |
//!
//! If the writer is dropped without `finish` (a failed export), its files stay in the staged
//! folder, which is removed with it: nothing of a failed disk becomes part of a backup.

use std::path::Path;

use super::block_table::write_block_table;
use super::error::RepoError;
use super::hashing_writer::StoredDiffWriter;
use super::image_file::SparseImageWriter;
use super::layout::safe_component;
use super::leaf_table::LeafTableWriter;
use super::manifest::{BackupKind, DiskFormat, DiskRecord, GroupSnapshotRecord, SnapshotRecord};

/// Where a disk's content comes from: what the manifest records of a disk besides its files.
#[derive(Debug, Clone, PartialEq)]
pub struct DiskOrigin {
    /// Guest device.
    pub target: String,
    /// Pool.
    pub pool: String,
    /// RADOS namespace.
    pub namespace: Option<String>,
    /// Image name.
    pub image: String,
    /// Image id.
    pub image_id: String,
    /// Image size at the snapshot, bytes.
    pub size: u64,
    /// Object size, bytes.
    pub object_size: u64,
    /// The snapshot the content is of.
    pub snapshot: SnapshotRecord,
    /// Full, or incremental on what.
    pub lineage: Lineage,
    /// The group snapshot the content was read from (group-consistent backups only).
    pub group_snapshot: Option<GroupSnapshotRecord>,
}

/// Full, or what an incremental builds on.
#[derive(Debug, Clone, PartialEq)]
pub enum Lineage {
    /// Every allocated block.
    Full,
    /// What changed since `base_snapshot`, recorded by backup `parent_backup`.
    Incremental {
        /// The backup the chain continues.
        parent_backup: String,
        /// The snapshot the diff starts at.
        base_snapshot: SnapshotRecord,
        /// Parent's position + 1.
        chain_position: u32,
    },
}

impl Lineage {
    /// Full or incremental.
    pub fn kind(&self) -> BackupKind {
        match self {
            Lineage::Full => BackupKind::Full,
            Lineage::Incremental { .. } => BackupKind::Incremental,
        }
    }
}

/// What an export computed of the content, for the record.
#[derive(Debug, Clone)]
pub struct DiskContent {
    /// Content checksum (`blake3-4m:<hex>`).
    pub checksum: String,
    /// Its block table.
    pub block_table: Vec<[u8; 32]>,
    /// Bytes read from the cluster.
    pub bytes_read: u64,
}

/// Where an export writes the content.
pub enum DiskSink<'w> {
    /// A sparse raw image of the disk's size: write every block that holds data.
    SparseRaw(&'w mut SparseImageWriter),
    /// An rbd diff stream, from the base snapshot for an incremental, from nothing for a full.
    Diff(&'w mut StoredDiffWriter),
}

/// The names of a disk's files (see the module doc).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskFileNames {
    /// The content.
    pub data: String,
    /// Chunk table of the stored bytes (diff formats).
    pub chunks: Option<String>,
    /// Block table of the content.
    pub blocks: String,
    /// Leaf table.
    pub leaves: String,
}

impl DiskFileNames {
    /// The files of disk `target` stored as `format`.
    pub fn of(target: &str, format: DiskFormat) -> Self {
        let stem = safe_component(target);
        let data = match format {
            DiskFormat::SparseRaw => format!("{stem}.raw"),
            DiskFormat::RbdDiffV1 => format!("{stem}.rbdiff"),
            DiskFormat::RbdDiffV1Zstd => format!("{stem}.rbdiff.zst"),
        };
        let chunks = match format {
            DiskFormat::SparseRaw => None,
            DiskFormat::RbdDiffV1 | DiskFormat::RbdDiffV1Zstd => Some(format!("{data}.b3")),
        };
        DiskFileNames {
            data,
            chunks,
            blocks: format!("{stem}.blocks"),
            leaves: format!("{stem}.leaves"),
        }
    }
}

impl DiskFileNames {
    /// The format of a disk's data file, told by its name (`None`: not a data file, such as a
    /// table); for a backup whose manifest cannot be read.
    pub fn stored_format(file_name: &str) -> Option<DiskFormat> {
        if file_name.ends_with(".raw") {
            Some(DiskFormat::SparseRaw)
        } else if file_name.ends_with(".rbdiff") {
            Some(DiskFormat::RbdDiffV1)
        } else if file_name.ends_with(".rbdiff.zst") {
            Some(DiskFormat::RbdDiffV1Zstd)
        } else {
            None
        }
    }
}

enum DataFile {
    SparseRaw(SparseImageWriter),
    Diff(StoredDiffWriter),
}

/// One disk being written into a staged backup (`StagedBackup::disk_writer`).
pub struct DiskWriter<'s> {
    folder: &'s Path,
    origin: DiskOrigin,
    format: DiskFormat,
    names: DiskFileNames,
    data: DataFile,
    leaves: LeafTableWriter,
}

impl<'s> DiskWriter<'s> {
    /// Creates the disk's data and leaf files in `folder`; compressed with zstd at `compress`.
    pub(super) fn create(
        folder: &'s Path,
        origin: DiskOrigin,
        compress: Option<i32>,
    ) -> Result<Self, RepoError> {
        let format = DiskFormat::for_backup(origin.lineage.kind(), compress.is_some());
        let names = DiskFileNames::of(&origin.target, format);
        let leaves = LeafTableWriter::create(&folder.join(&names.leaves))?;
        let path = folder.join(&names.data);
        let data = match format {
            DiskFormat::SparseRaw => {
                DataFile::SparseRaw(SparseImageWriter::create(&path, origin.size)?)
            }
            DiskFormat::RbdDiffV1 => DataFile::Diff(StoredDiffWriter::create(&path, None)?),
            DiskFormat::RbdDiffV1Zstd => DataFile::Diff(StoredDiffWriter::create(&path, compress)?),
        };
        Ok(DiskWriter {
            folder,
            origin,
            format,
            names,
            data,
            leaves,
        })
    }

    /// Where the content comes from, as given.
    pub fn origin(&self) -> &DiskOrigin {
        &self.origin
    }

    /// The stored format.
    pub fn format(&self) -> DiskFormat {
        self.format
    }

    /// The sink for the content, and the leaf table for the leaves of every block hashed.
    pub fn sink(&mut self) -> (DiskSink<'_>, &mut LeafTableWriter) {
        let sink = match &mut self.data {
            DataFile::SparseRaw(w) => DiskSink::SparseRaw(w),
            DataFile::Diff(w) => DiskSink::Diff(w),
        };
        (sink, &mut self.leaves)
    }

    /// Ends the data file (fsync), writes its chunk table (diff formats) and the block table,
    /// ends the leaf table, and returns the disk's manifest record.
    pub fn finish(self, content: DiskContent) -> Result<DiskRecord, RepoError> {
        let (bytes_written, file_size, file_checksum) = match self.data {
            DataFile::SparseRaw(writer) => (writer.finish()?, self.origin.size, None),
            DataFile::Diff(writer) => {
                let stored = writer.finish()?;
                if let Some(chunks) = &self.names.chunks {
                    write_block_table(&self.folder.join(chunks), &stored.chunks)?;
                }
                (stored.size, stored.size, Some(stored.checksum))
            }
        };
        write_block_table(&self.folder.join(&self.names.blocks), &content.block_table)?;
        self.leaves.finish()?;
        let origin = self.origin;
        let kind = origin.lineage.kind();
        let (parent_backup, base_snapshot, chain_position) = match origin.lineage {
            Lineage::Full => (None, None, 0),
            Lineage::Incremental {
                parent_backup,
                base_snapshot,
                chain_position,
            } => (Some(parent_backup), Some(base_snapshot), chain_position),
        };
        Ok(DiskRecord {
            target: origin.target,
            pool: origin.pool,
            namespace: origin.namespace,
            image: origin.image,
            image_id: origin.image_id,
            size: origin.size,
            object_size: origin.object_size,
            snapshot: origin.snapshot,
            file: self.names.data,
            format: self.format,
            bytes_read: content.bytes_read,
            bytes_written,
            checksum: content.checksum,
            kind,
            chain_position,
            parent_backup,
            base_snapshot,
            file_size,
            file_checksum,
            blocks_file: Some(self.names.blocks),
            file_chunks: self.names.chunks,
            leaves_file: Some(self.names.leaves),
            group_snapshot: origin.group_snapshot,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buffer::AlignedBuf;
    use crate::plan::{checksum_of_table, StreamHasher};
    use crate::repo::block_table::read_block_table;
    use crate::repo::rbd_diff::{RbdDiffReader, RbdDiffWriter};
    use std::io::Read;

    fn origin(lineage: Lineage) -> DiskOrigin {
        DiskOrigin {
            target: "vda".into(),
            pool: "rbd".into(),
            namespace: None,
            image: "web-a".into(),
            image_id: "10f2".into(),
            size: 8 << 20,
            object_size: 4 << 20,
            snapshot: SnapshotRecord {
                name: "snap-2".into(),
                id: 9,
                timestamp: Some(2.0),
            },
            lineage,
            group_snapshot: None,
        }
    }

    fn incremental() -> Lineage {
        Lineage::Incremental {
            parent_backup: "20261126T095243.007Z".into(),
            base_snapshot: SnapshotRecord {
                name: "snap-1".into(),
                id: 4,
                timestamp: None,
            },
            chain_position: 3,
        }
    }

    /// A content description of `blocks` made-up block hashes.
    fn content(blocks: u8) -> DiskContent {
        let table: Vec<[u8; 32]> = (0..blocks).map(|b| [b; 32]).collect();
        DiskContent {
            checksum: checksum_of_table(&table),
            block_table: table,
            bytes_read: 4096,
        }
    }

    #[test]
    fn file_names_follow_the_format_and_stay_in_the_folder() {
        assert_eq!(
            DiskFileNames::of("vda", DiskFormat::SparseRaw),
            DiskFileNames {
                data: "vda.raw".into(),
                chunks: None,
                blocks: "vda.blocks".into(),
                leaves: "vda.leaves".into(),
            }
        );
        let diff = DiskFileNames::of("vdb", DiskFormat::RbdDiffV1);
        assert_eq!(
            (diff.data.as_str(), diff.chunks.as_deref()),
            ("vdb.rbdiff", Some("vdb.rbdiff.b3"))
        );
        let zstd = DiskFileNames::of("vdb", DiskFormat::RbdDiffV1Zstd);
        assert_eq!(
            (zstd.data.as_str(), zstd.chunks.as_deref()),
            ("vdb.rbdiff.zst", Some("vdb.rbdiff.zst.b3"))
        );
        for format in [
            DiskFormat::SparseRaw,
            DiskFormat::RbdDiffV1,
            DiskFormat::RbdDiffV1Zstd,
        ] {
            let names = DiskFileNames::of("vda", format);
            assert_eq!(DiskFileNames::stored_format(&names.data), Some(format));
            for table in [Some(names.blocks), names.chunks, Some(names.leaves)] {
                assert_eq!(
                    DiskFileNames::stored_format(&table.unwrap_or_default()),
                    None
                );
            }
        }
        let hostile = DiskFileNames::of("../x", DiskFormat::SparseRaw);
        assert_eq!(hostile.data, "%2E.%2Fx.raw");
    }

    #[test]
    fn a_full_disk_is_a_sparse_raw_file_with_its_tables_and_record() {
        let dir = tempfile::tempdir().unwrap();
        let mut writer = DiskWriter::create(dir.path(), origin(Lineage::Full), None).unwrap();
        assert_eq!(writer.format(), DiskFormat::SparseRaw);
        let mut block = AlignedBuf::zeroed(4 << 20);
        block[..5].copy_from_slice(b"hello");
        match writer.sink() {
            (DiskSink::SparseRaw(raw), _) => {
                raw.write_block(4 << 20, block).unwrap();
            }
            (DiskSink::Diff(_), _) => panic!("a full uncompressed disk must be raw"),
        }
        let record = writer.finish(content(2)).unwrap();
        assert_eq!(record.file, "vda.raw");
        assert_eq!(record.format, DiskFormat::SparseRaw);
        assert_eq!((record.kind, record.chain_position), (BackupKind::Full, 0));
        assert_eq!((record.file_size, record.bytes_written), (8 << 20, 4096));
        assert_eq!((record.file_checksum, record.file_chunks), (None, None));
        assert_eq!(record.parent_backup, None);
        let raw = std::fs::read(dir.path().join("vda.raw")).unwrap();
        assert_eq!(raw.len(), 8 << 20);
        assert_eq!(&raw[4 << 20..(4 << 20) + 5], b"hello");
        // The block table written is the one handed in, checked against the record.
        let table = read_block_table(
            &dir.path().join(record.blocks_file.as_deref().unwrap()),
            &record.checksum,
            2,
        )
        .unwrap();
        assert_eq!(table, content(2).block_table);
        assert!(dir.path().join("vda.leaves").is_file());
    }

    #[test]
    fn an_incremental_disk_is_a_diff_with_its_chunk_table_and_lineage() {
        for compress in [None, Some(3)] {
            let dir = tempfile::tempdir().unwrap();
            let mut writer =
                DiskWriter::create(dir.path(), origin(incremental()), compress).unwrap();
            match writer.sink() {
                (DiskSink::Diff(out), _) => {
                    let mut diff =
                        RbdDiffWriter::new(out, Some("snap-1"), "snap-2", 8 << 20).unwrap();
                    diff.write_data(0, b"changed").unwrap();
                    diff.finish().unwrap();
                }
                (DiskSink::SparseRaw(_), _) => panic!("an incremental is never raw"),
            }
            let record = writer.finish(content(2)).unwrap();
            let expected = DiskFormat::for_backup(BackupKind::Incremental, compress.is_some());
            assert_eq!(record.format, expected);
            assert_eq!(record.file, DiskFileNames::of("vda", expected).data);
            assert_eq!(record.kind, BackupKind::Incremental);
            assert_eq!(record.chain_position, 3);
            assert_eq!(
                record.parent_backup.as_deref(),
                Some("20261126T095243.007Z")
            );
            assert_eq!(record.base_snapshot.as_ref().unwrap().name, "snap-1");
            // The stored checksum is of the bytes on disk, independent of the writer.
            let stored = std::fs::read(dir.path().join(&record.file)).unwrap();
            assert_eq!(record.file_size, stored.len() as u64);
            let mut hasher = StreamHasher::new();
            hasher.update(&stored);
            let (checksum, chunks) = hasher.finish();
            assert_eq!(record.file_checksum.as_deref(), Some(checksum.as_str()));
            let chunk_table = read_block_table(
                &dir.path().join(record.file_chunks.as_deref().unwrap()),
                &checksum,
                chunks.len() as u64,
            )
            .unwrap();
            assert_eq!(chunk_table, chunks);
            // And the stream reads back as the diff that was written.
            let stream: Box<dyn Read> = match compress {
                Some(_) => Box::new(zstd::Decoder::new(&stored[..]).unwrap()),
                None => Box::new(&stored[..]),
            };
            let reader = RbdDiffReader::new(stream).unwrap();
            assert_eq!(
                (reader.from_snap(), reader.to_snap()),
                (Some("snap-1"), Some("snap-2"))
            );
        }
    }

    #[test]
    fn a_compressed_full_disk_is_a_zstd_diff_from_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let writer = DiskWriter::create(dir.path(), origin(Lineage::Full), Some(1)).unwrap();
        assert_eq!(writer.format(), DiskFormat::RbdDiffV1Zstd);
    }

    #[test]
    fn an_existing_file_is_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("vda.raw"), b"someone's").unwrap();
        assert!(DiskWriter::create(dir.path(), origin(Lineage::Full), None).is_err());
        assert_eq!(
            std::fs::read(dir.path().join("vda.raw")).unwrap(),
            b"someone's"
        );
    }
}
