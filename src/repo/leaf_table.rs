//! Leaf tables (`*.leaves`): the 64 KiB leaf chaining values of the blocks a backup hashed
//! (`plan::leaves`), so the next incremental re-reads only the leaves that changed.
//!
//! ```text
//! count × 2048 bytes   the 64 chaining values of block index[i], in file order
//! count × 8 bytes      index[i]: block numbers, ascending, u64 little-endian
//! 8 bytes              count, u64 little-endian
//! 8 bytes              magic "VRBLEAF1"
//! ```
//! A full backup records every allocated full block that is not all zeros, an incremental
//! the blocks it re-hashed. A table is an optimisation, never a source of truth: a record is
//! used only when its leaves merge to the block hash of the verified block table it is
//! needed for, so a damaged or missing table costs a whole-block read, never a wrong hash.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::error::RepoError;
use super::stored_file::open_stored_file;
use crate::plan::{root_of, zero_block_root, zero_leaves, BlockLeaves, LEAVES_PER_BLOCK};

const MAGIC: &[u8; 8] = b"VRBLEAF1";
const RECORD: u64 = (LEAVES_PER_BLOCK * 32) as u64;
/// Index entries and records beyond this are not believed (1 PiB of 4 MiB blocks).
const MAX_COUNT: u64 = 1 << 28;

/// Writes a leaf table; blocks must come in ascending order.
pub struct LeafTableWriter {
    out: BufWriter<File>,
    path: PathBuf,
    index: Vec<u64>,
}

impl LeafTableWriter {
    /// Creates `path` (mode 0600, must not exist).
    pub fn create(path: &Path) -> Result<Self, RepoError> {
        let file = super::create_new_file(path)?;
        Ok(LeafTableWriter {
            out: BufWriter::with_capacity(256 * 1024, file),
            path: path.to_path_buf(),
            index: Vec::new(),
        })
    }

    fn io(&self, action: &'static str) -> impl FnOnce(std::io::Error) -> RepoError {
        let path = self.path.clone();
        move |source| RepoError::Io {
            action,
            path,
            source,
        }
    }

    /// Records the leaves of `block`; blocks of zeros are left out (they are known).
    pub fn add(&mut self, block: u64, leaves: &BlockLeaves) -> Result<(), RepoError> {
        debug_assert!(self.index.last().is_none_or(|&last| last < block));
        if leaves == zero_leaves() {
            return Ok(());
        }
        for cv in leaves {
            self.out.write_all(cv).map_err(self.io("write"))?;
        }
        self.index.push(block);
        Ok(())
    }

    /// Writes the index and flushes the file to stable storage.
    pub fn finish(mut self) -> Result<(), RepoError> {
        let mut tail = Vec::with_capacity(self.index.len() * 8 + 16);
        for block in &self.index {
            tail.extend_from_slice(&block.to_le_bytes());
        }
        tail.extend_from_slice(&(self.index.len() as u64).to_le_bytes());
        tail.extend_from_slice(MAGIC);
        self.out.write_all(&tail).map_err(self.io("write"))?;
        let file = self.out.into_inner().map_err(|e| RepoError::Io {
            action: "write",
            path: self.path.clone(),
            source: e.into_error(),
        })?;
        file.sync_all().map_err(|source| RepoError::Io {
            action: "fsync",
            path: self.path,
            source,
        })
    }
}

/// A leaf table open for lookups.
pub struct LeafTable {
    file: File,
    index: Vec<u64>,
}

impl LeafTable {
    /// Opens `path` and reads its index. A file that is not a leaf table is an error, and so
    /// is one with more records than the image has blocks (`image_blocks`): the size is
    /// checked on the open descriptor before the index is read into memory, and links, FIFOs
    /// and devices are refused (`stored_file`).
    pub fn open(path: &Path, image_blocks: u64) -> Result<Self, RepoError> {
        let corrupt = |message: String| RepoError::Corrupt {
            path: path.to_path_buf(),
            offset: None,
            message,
        };
        let io = |source| RepoError::Io {
            action: "read",
            path: path.to_path_buf(),
            source,
        };
        let limit = image_blocks
            .min(MAX_COUNT)
            .saturating_mul(RECORD + 8)
            .saturating_add(16);
        let (file, len) = open_stored_file(path, Some(limit))?;
        if len < 16 {
            return Err(corrupt(format!(
                "{len} bytes is too short for a leaf table"
            )));
        }
        let mut footer = [0u8; 16];
        file.read_exact_at(&mut footer, len - 16).map_err(io)?;
        if &footer[8..] != MAGIC {
            return Err(corrupt("no leaf table magic at the end".into()));
        }
        let count = u64::from_le_bytes(footer[..8].try_into().expect("8 bytes"));
        if count > MAX_COUNT || count > image_blocks || count * (RECORD + 8) + 16 != len {
            return Err(corrupt(format!(
                "{count} records do not fit a file of {len} bytes"
            )));
        }
        let mut raw = vec![0u8; (count * 8) as usize];
        file.read_exact_at(&mut raw, count * RECORD).map_err(io)?;
        let index: Vec<u64> = raw
            .chunks_exact(8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
            .collect();
        if index.windows(2).any(|w| w[0] >= w[1]) {
            return Err(corrupt("block numbers are not ascending".into()));
        }
        Ok(LeafTable { file, index })
    }

    /// The blocks recorded, ascending.
    pub fn blocks(&self) -> &[u64] {
        &self.index
    }

    /// The leaves recorded for `block`, if any.
    pub fn get(&self, block: u64) -> std::io::Result<Option<Box<BlockLeaves>>> {
        let Ok(position) = self.index.binary_search(&block) else {
            return Ok(None);
        };
        let mut raw = [0u8; RECORD as usize];
        self.file
            .read_exact_at(&mut raw, position as u64 * RECORD)?;
        let mut leaves = Box::new([[0u8; 32]; LEAVES_PER_BLOCK]);
        for (cv, bytes) in leaves.iter_mut().zip(raw.chunks_exact(32)) {
            cv.copy_from_slice(bytes);
        }
        Ok(Some(leaves))
    }
}

/// Checks every record of the leaf table at `path` against `block_table`, the verified block
/// hashes of the same backup.
pub fn verify_leaf_table(path: &Path, block_table: &[[u8; 32]]) -> Result<(), RepoError> {
    let table = LeafTable::open(path, block_table.len() as u64)?;
    let corrupt = |block: u64, message: String| RepoError::Corrupt {
        path: path.to_path_buf(),
        offset: Some(block * crate::plan::HASH_BLOCK_SIZE),
        message,
    };
    for &block in table.blocks() {
        let leaves = table
            .get(block)
            .map_err(|source| RepoError::Io {
                action: "read",
                path: path.to_path_buf(),
                source,
            })?
            .expect("a block of the index has a record");
        match block_table.get(block as usize) {
            Some(hash) if *hash == root_of(&leaves) => {}
            Some(_) => {
                return Err(corrupt(
                    block,
                    "the leaves of this block do not merge to its hash; restores are not \
                     affected (the leaf table only spares reads), the next incremental reads \
                     such blocks whole"
                        .into(),
                ))
            }
            None => {
                return Err(corrupt(
                    block,
                    format!(
                        "records a block beyond the image's {} blocks",
                        block_table.len()
                    ),
                ))
            }
        }
    }
    Ok(())
}

/// Where the leaves of the base of an incremental come from: the leaf tables of its chain,
/// newest first, each record checked against the base's verified block hash.
#[derive(Default)]
pub struct BaseLeaves {
    tables: Vec<LeafTable>,
}

impl BaseLeaves {
    /// No tables: every block whose base is not all zeros is read whole.
    pub fn none() -> Self {
        Self::default()
    }

    /// The tables of a chain, newest first.
    pub fn new(tables: Vec<LeafTable>) -> Self {
        BaseLeaves { tables }
    }

    /// The leaves of `block` whose root is `base_hash`, the block's hash at the base, if a
    /// table holds them (or the block was all zeros).
    pub fn find(&self, block: u64, base_hash: &[u8; 32]) -> Option<Box<BlockLeaves>> {
        if *base_hash == zero_block_root() {
            return Some(Box::new(*zero_leaves()));
        }
        for table in &self.tables {
            match table.get(block) {
                Ok(Some(leaves)) if root_of(&leaves) == *base_hash => return Some(leaves),
                // A record of an older content of the block: an older table may still be right.
                Ok(_) => continue,
                // An unreadable table costs a whole-block read, never a wrong hash.
                Err(_) => return None,
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::block_leaves;

    fn leaves_of(seed: u8) -> Box<BlockLeaves> {
        let block: Vec<u8> = (0..crate::plan::HASH_BLOCK_SIZE)
            .map(|i| (i as u8) ^ seed)
            .collect();
        block_leaves(&block).unwrap()
    }

    #[test]
    fn recorded_leaves_are_read_back_and_zero_blocks_are_left_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vda.leaves");
        let (a, b) = (leaves_of(1), leaves_of(2));
        let mut w = LeafTableWriter::create(&path).unwrap();
        w.add(3, &a).unwrap();
        w.add(4, zero_leaves()).unwrap();
        w.add(9, &b).unwrap();
        w.finish().unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            2 * (RECORD + 8) + 16
        );
        let t = LeafTable::open(&path, 16).unwrap();
        assert_eq!(t.blocks(), &[3, 9]);
        assert_eq!(t.get(3).unwrap().unwrap(), a);
        assert_eq!(t.get(9).unwrap().unwrap(), b);
        assert!(t.get(4).unwrap().is_none());
        assert!(t.get(0).unwrap().is_none());
    }

    #[test]
    fn damaged_tables_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vda.leaves");
        let mut w = LeafTableWriter::create(&path).unwrap();
        w.add(1, &leaves_of(1)).unwrap();
        w.finish().unwrap();
        let good = std::fs::read(&path).unwrap();
        for (name, bytes) in [
            ("cut", good[..good.len() - 1].to_vec()),
            ("no magic", {
                let mut b = good.clone();
                *b.last_mut().unwrap() ^= 1;
                b
            }),
            ("short", b"VRBLEAF1".to_vec()),
        ] {
            std::fs::write(&path, &bytes).unwrap();
            assert!(LeafTable::open(&path, 16).is_err(), "{name}");
        }
    }

    #[test]
    fn verify_finds_leaves_that_do_not_belong_to_the_block_table() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vda.leaves");
        let (a, b) = (leaves_of(1), leaves_of(2));
        let mut w = LeafTableWriter::create(&path).unwrap();
        w.add(0, &a).unwrap();
        w.add(2, &b).unwrap();
        w.finish().unwrap();
        let table = [root_of(&a), zero_block_root(), root_of(&b)];
        verify_leaf_table(&path, &table).unwrap();
        let wrong = [root_of(&a), zero_block_root(), root_of(&a)];
        let err = verify_leaf_table(&path, &wrong).unwrap_err().to_string();
        assert!(err.contains("at offset 8388608"), "{err}");
        assert!(verify_leaf_table(&path, &table[..2]).is_err());
    }

    #[test]
    fn base_leaves_are_used_only_when_they_merge_to_the_base_hash() {
        let dir = tempfile::tempdir().unwrap();
        let (old, new) = (leaves_of(1), leaves_of(2));
        // The older table knows block 5 as `old`, the newer one as `new`.
        let older = dir.path().join("older.leaves");
        let newer = dir.path().join("newer.leaves");
        for (path, leaves) in [(&older, &old), (&newer, &new)] {
            let mut w = LeafTableWriter::create(path).unwrap();
            w.add(5, leaves).unwrap();
            w.finish().unwrap();
        }
        let base = BaseLeaves::new(vec![
            LeafTable::open(&newer, 16).unwrap(),
            LeafTable::open(&older, 16).unwrap(),
        ]);
        assert_eq!(base.find(5, &root_of(&new)).unwrap(), new);
        // A base that went back to the older content finds it in the older table.
        assert_eq!(base.find(5, &root_of(&old)).unwrap(), old);
        // A content no table knows is not found; zeros always are.
        assert!(base.find(5, &root_of(&leaves_of(3))).is_none());
        assert!(base.find(6, &root_of(&new)).is_none());
        assert_eq!(*base.find(6, &zero_block_root()).unwrap(), *zero_leaves());
        assert!(BaseLeaves::none().find(5, &root_of(&old)).is_none());
    }

    #[test]
    fn a_table_that_is_a_link_a_fifo_or_larger_than_the_image_fails_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let started = std::time::Instant::now();
        let link = dir.path().join("link.leaves");
        std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
        let fifo = dir.path().join("fifo.leaves");
        crate::repo::stored_file::tests::make_fifo(&fifo);
        for path in [&link, &fifo] {
            let err = LeafTable::open(path, 16).err().expect("must fail");
            assert!(matches!(err, RepoError::NotARegularFile { .. }), "{err}");
        }
        // Two records are fine for a 2-block image, too many for a 1-block one.
        let path = dir.path().join("vda.leaves");
        let mut w = LeafTableWriter::create(&path).unwrap();
        w.add(0, &leaves_of(1)).unwrap();
        w.add(1, &leaves_of(2)).unwrap();
        w.finish().unwrap();
        assert!(LeafTable::open(&path, 2).is_ok());
        let err = LeafTable::open(&path, 1).err().expect("must fail");
        assert!(matches!(err, RepoError::TooLarge { .. }), "{err}");
        // A sparse file claiming 2^28 records is refused by size before the index is read.
        let huge = dir.path().join("huge.leaves");
        let f = std::fs::File::create(&huge).unwrap();
        let len = (1u64 << 28) * (RECORD + 8) + 16;
        f.set_len(len).unwrap();
        let mut footer = (1u64 << 28).to_le_bytes().to_vec();
        footer.extend_from_slice(MAGIC);
        f.write_all_at(&footer, len - 16).unwrap();
        assert!(LeafTable::open(&huge, 256).is_err());
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
    }
}
