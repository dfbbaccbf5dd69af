//! A disk's block list in the block layout: for each 4 MiB block of the disk, the id of its
//! content or "hole" (all zeros, not stored). With it a backup is complete on its own: restore
//! reads the blocks it names, no chain is replayed.
//!
//! # Format v1 (the content of a `blocklist` object, inside the object envelope)
//! ```text
//! 0..4    magic "VRBL"
//! 4..8    version = 1 (u32 little-endian)
//! 8..16   disk size in bytes (u64 LE)
//! 16..20  block size in bytes (u32 LE; 4 MiB today)
//! 20..24  zero
//! 24..    ceil(size / block size) entries of 32 bytes: the block's id, or 32 zero bytes for
//!         a hole (no BLAKE3 output is all zeros in practice); the last block may be short
//! ```
//! A fixed array, so block i is at a known offset and a lookup is O(1); holes cost 32 zero
//! bytes each, which the envelope's zstd shrinks to almost nothing (a sparse 1 TiB disk's list
//! is 8 MiB raw, a few KiB stored).

use std::collections::BTreeSet;

use super::object_format::BlockId;

const MAGIC: &[u8; 4] = b"VRBL";
const VERSION: u32 = 1;
const HEADER_LEN: usize = 24;
const ENTRY_LEN: usize = 32;
const HOLE: [u8; 32] = [0; 32];

/// The blocks of one disk at one backup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockList {
    size: u64,
    block_size: u32,
    entries: Vec<Option<BlockId>>,
}

impl BlockList {
    /// A list of `size` bytes in blocks of `block_size`, all holes.
    pub fn new(size: u64, block_size: u32) -> Result<Self, String> {
        if block_size == 0 || !block_size.is_power_of_two() {
            return Err(format!("block size {block_size} is not a power of two"));
        }
        let count = usize::try_from(size.div_ceil(u64::from(block_size)))
            .map_err(|_| format!("a disk of {size} bytes has too many blocks"))?;
        Ok(BlockList {
            size,
            block_size,
            entries: vec![None; count],
        })
    }

    /// The disk's size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The block size in bytes.
    pub fn block_size(&self) -> u32 {
        self.block_size
    }

    /// How many blocks the disk has (the last one may be short).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True for a disk of size 0.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Block `index`'s id, `None` for a hole; out of range is `None` too.
    pub fn get(&self, index: usize) -> Option<BlockId> {
        self.entries.get(index).copied().flatten()
    }

    /// Sets block `index` (an id, or `None` for a hole).
    pub fn set(&mut self, index: usize, id: Option<BlockId>) -> Result<(), String> {
        let count = self.entries.len();
        let entry = self
            .entries
            .get_mut(index)
            .ok_or_else(|| format!("block {index} is past the disk's {count} blocks"))?;
        *entry = id;
        Ok(())
    }

    /// The list for the same disk resized to `size` (an image grown or shrunk between
    /// backups): blocks past the end go, new blocks are holes. A shrink that cuts a block
    /// leaves its id: the block's content past the new end is not the disk's any more, and
    /// readers stop at `size`; the next backup of a changed block replaces it.
    pub fn resized(&self, size: u64) -> Result<Self, String> {
        let mut list = BlockList::new(size, self.block_size)?;
        for (index, id) in self.entries.iter().take(list.len()).enumerate() {
            list.entries[index] = *id;
        }
        Ok(list)
    }

    /// Every id the list names, once each: what prune marks.
    pub fn referenced(&self) -> BTreeSet<BlockId> {
        self.entries.iter().flatten().copied().collect()
    }

    /// The bytes of block `index` on the disk (the last one may be short).
    pub fn block_len(&self, index: usize) -> u64 {
        let start = index as u64 * u64::from(self.block_size);
        self.size
            .saturating_sub(start)
            .min(u64::from(self.block_size))
    }

    /// Format v1 (module doc).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + self.entries.len() * ENTRY_LEN);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&self.size.to_le_bytes());
        out.extend_from_slice(&self.block_size.to_le_bytes());
        out.extend_from_slice(&[0; 4]);
        for entry in &self.entries {
            out.extend_from_slice(entry.as_ref().map_or(&HOLE, |id| &id.0));
        }
        out
    }

    /// Reads format v1; the error says what does not hold.
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        if bytes.len() < HEADER_LEN || &bytes[..4] != MAGIC {
            return Err("not a block list (no VRBL header)".to_string());
        }
        let u32_at = |at: usize| {
            u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
        };
        let version = u32_at(4);
        if version != VERSION {
            return Err(format!(
                "block list version {version} (this program reads version {VERSION}: upgrade it)"
            ));
        }
        let mut size = [0u8; 8];
        size.copy_from_slice(&bytes[8..16]);
        let size = u64::from_le_bytes(size);
        let mut list = BlockList::new(size, u32_at(16))?;
        let body = &bytes[HEADER_LEN..];
        if body.len() != list.entries.len() * ENTRY_LEN {
            return Err(format!(
                "a disk of {size} bytes has {} blocks, the list holds {} bytes of entries",
                list.entries.len(),
                body.len()
            ));
        }
        for (entry, raw) in list.entries.iter_mut().zip(body.chunks_exact(ENTRY_LEN)) {
            if raw != HOLE {
                let mut id = [0u8; 32];
                id.copy_from_slice(raw);
                *entry = Some(BlockId(id));
            }
        }
        Ok(list)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn id(n: u8) -> BlockId {
        BlockId([n; 32])
    }

    #[test]
    fn round_trips_with_holes_and_a_short_tail() {
        let mut list = BlockList::new(10 * MIB + 5, 4 * MIB as u32).unwrap();
        assert_eq!(list.len(), 3);
        list.set(0, Some(id(1))).unwrap();
        list.set(2, Some(id(1))).unwrap();
        assert_eq!(list.block_len(2), 2 * MIB + 5);
        let bytes = list.encode();
        assert_eq!(bytes.len(), 24 + 3 * 32);
        let back = BlockList::decode(&bytes).unwrap();
        assert_eq!(back, list);
        assert_eq!(back.get(1), None);
        assert_eq!(back.referenced().into_iter().collect::<Vec<_>>(), [id(1)]);
        assert!(list.set(3, None).is_err());
    }

    #[test]
    fn resizing_keeps_the_blocks_that_remain() {
        let mut list = BlockList::new(12 * MIB, 4 * MIB as u32).unwrap();
        for i in 0..3 {
            list.set(i, Some(id(i as u8 + 1))).unwrap();
        }
        let grown = list.resized(20 * MIB).unwrap();
        assert_eq!(
            (grown.len(), grown.get(2), grown.get(4)),
            (5, Some(id(3)), None)
        );
        let shrunk = list.resized(5 * MIB).unwrap();
        assert_eq!(
            (shrunk.len(), shrunk.get(1), shrunk.block_len(1)),
            (2, Some(id(2)), MIB)
        );
    }

    #[test]
    fn refuses_what_is_not_a_whole_list() {
        let list = BlockList::new(8 * MIB, 4 * MIB as u32).unwrap();
        let bytes = list.encode();
        assert!(BlockList::decode(&bytes[..bytes.len() - 1])
            .unwrap_err()
            .contains("2 blocks"));
        let mut newer = bytes.clone();
        newer[4] = 2;
        assert!(BlockList::decode(&newer).unwrap_err().contains("upgrade"));
        assert!(BlockList::decode(b"VRBX")
            .unwrap_err()
            .contains("not a block list"));
        let mut odd = bytes;
        odd[16..20].copy_from_slice(&3u32.to_le_bytes());
        assert!(BlockList::decode(&odd).is_err());
    }

    #[test]
    fn a_sparse_terabyte_is_small_once_compressed() {
        let mut list = BlockList::new(1 << 40, 4 * MIB as u32).unwrap();
        for i in (0..list.len()).step_by(1000) {
            list.set(i, Some(id((i % 200) as u8 + 1))).unwrap();
        }
        let raw = list.encode();
        let compressed = zstd::bulk::compress(&raw, 3).unwrap();
        assert_eq!(raw.len(), 24 + 262_144 * 32);
        assert!(compressed.len() < 64 * 1024, "{}", compressed.len());
    }
}
