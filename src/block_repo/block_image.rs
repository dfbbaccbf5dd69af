//! A disk of a block-layout backup as a random-access image (`repo::ExtentSource`), for the
//! NBD server and the FUSE file behind `mount`: the block list says where each 4 MiB block is,
//! holes read as zeros, and every block fetched is checked against its id and its block-table
//! entry before a byte of it is handed out (a mismatch is an I/O error, never other bytes).
//!
//! Clients read in small pieces (4 KiB to a few MiB), so the last `CACHED_BLOCKS` blocks
//! fetched are kept decoded: a sequential read costs one fetch per block.

use std::sync::Arc;

use super::{BlockRepository, StoredDisk};
use crate::objstore::object_format::BlockId;
use crate::repo::extent_source::{
    block_pieces, push_extent, BlockCache, Extent, ExtentSource, Piece,
};
use crate::repo::RepoError;

/// Decoded blocks kept (32 MiB): enough for a few sequential readers.
const CACHED_BLOCKS: usize = 8;

/// A backup's disk, read from the repository block by block.
pub struct BlockImage {
    repo: Arc<BlockRepository>,
    disk: StoredDisk,
    cache: BlockCache,
}

impl BlockImage {
    /// The image of `disk` (read from `repo` with `BlockRepository::disk`).
    pub fn new(repo: Arc<BlockRepository>, disk: StoredDisk) -> Self {
        BlockImage {
            repo,
            disk,
            cache: BlockCache::new(CACHED_BLOCKS),
        }
    }

    fn block_size(&self) -> u64 {
        u64::from(self.disk.blocks.block_size())
    }

    /// Block `index`'s content, checked; `None` for a hole.
    fn block(&self, index: usize) -> Result<Option<Arc<Vec<u8>>>, RepoError> {
        let Some(id) = self.disk.blocks.get(index) else {
            return Ok(None);
        };
        self.cache
            .get_or_load(index as u64, || self.fetch(index, &id))
            .map(Some)
    }

    /// Fetches block `index` (stored as `id`) and checks it against the block table.
    fn fetch(&self, index: usize, id: &BlockId) -> Result<Vec<u8>, RepoError> {
        let offset = index as u64 * self.block_size();
        let object = format!("{}: {}", self.repo.describe(), id.object_key());
        let content = self
            .repo
            .get_block(id, self.disk.blocks.block_len(index) as usize)
            .map_err(|e| RepoError::Corrupt {
                path: object.clone().into(),
                offset: Some(offset),
                message: format!("block {index} of disk {}: {e}", self.disk.record.target),
            })?;
        if *blake3::hash(&content).as_bytes() != self.disk.table[index] {
            return Err(RepoError::Corrupt {
                path: object.into(),
                offset: Some(offset),
                message: format!(
                    "block {index} of disk {} is not what its block table records",
                    self.disk.record.target
                ),
            });
        }
        Ok(content)
    }
}

impl ExtentSource for BlockImage {
    fn size(&self) -> u64 {
        self.disk.record.size
    }

    fn read_pieces(&self, offset: u64, length: u64) -> Result<Vec<Piece>, RepoError> {
        block_pieces(offset, length, self.size(), self.block_size(), |index| {
            self.block(index as usize)
        })
    }

    fn allocation(&self, offset: u64, length: u64) -> Vec<Extent> {
        let end = offset.saturating_add(length).min(self.size());
        let block_size = self.block_size();
        let mut out = Vec::new();
        let mut at = offset;
        while at < end {
            let index = (at / block_size) as usize;
            let block_end = ((index as u64 + 1) * block_size).min(end);
            push_extent(
                &mut out,
                at,
                block_end - at,
                self.disk.blocks.get(index).is_some(),
            );
            at = block_end;
        }
        out
    }
}
