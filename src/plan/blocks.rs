//! Block planning and the content checksum.
//!
//! Images are read in fixed blocks of `HASH_BLOCK_SIZE` (4 MiB, Ceph's default object size):
//! every block that holds any allocated byte is read whole, every other block is never read.
//! The same blocks define the content checksum, so it does not depend on the object size of
//! the image or on which parts happened to be allocated:
//!
//! ```text
//! block_hash[i] = BLAKE3(bytes [i*B, min((i+1)*B, size)) of the image, holes read as zeros)
//! checksum      = BLAKE3(block_hash[0] || block_hash[1] || ... || block_hash[n-1])
//! ```
//! with `B = 4194304` and `n = ceil(size / B)`; an empty image has `checksum = BLAKE3("")`.
//! It is written as `blake3-4m:` followed by 64 lower-case hex digits. A stranger can
//! recompute it from a raw image file with a few lines of any language (see
//! `tests/python/test_checksum.py`), and a block of zeros costs one cached hash, so the time
//! to checksum grows with allocated data, not with image size.

/// Size of a read and checksum block.
pub const HASH_BLOCK_SIZE: u64 = 4 * 1024 * 1024;

/// A byte range of an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    /// Offset in bytes.
    pub offset: u64,
    /// Length in bytes.
    pub length: u64,
}

/// Indices of the blocks of size `block` that intersect any of `ranges`, ascending and
/// without repeats, limited to an image of `image_size` bytes.
pub fn blocks_to_read(ranges: &[ByteRange], image_size: u64, block: u64) -> Vec<u64> {
    assert!(block > 0, "block size must be positive");
    let block_count = image_size.div_ceil(block);
    let mut spans: Vec<(u64, u64)> = ranges
        .iter()
        .filter(|r| r.length > 0 && r.offset < image_size)
        .map(|r| {
            let end = r.offset.saturating_add(r.length).min(image_size);
            (r.offset / block, (end - 1) / block)
        })
        .collect();
    spans.sort_unstable();
    let mut blocks = Vec::new();
    let mut next = 0u64; // first block index not yet emitted
    for (first, last) in spans {
        let start = first.max(next);
        if start > last {
            continue;
        }
        blocks.extend(start..=last.min(block_count.saturating_sub(1)));
        next = last + 1;
    }
    blocks
}

/// The checksum formed from a table of block hashes.
pub fn checksum_of_table(table: &[[u8; 32]]) -> String {
    let mut root = blake3::Hasher::new();
    for hash in table {
        root.update(hash);
    }
    format!("blake3-4m:{}", root.finalize().to_hex())
}

/// The same checksum over a byte stream fed in pieces of any size (for stored files).
#[derive(Default)]
pub struct StreamHasher {
    current: blake3::Hasher,
    in_current: u64,
    table: Vec<[u8; 32]>,
    total: u64,
}

impl StreamHasher {
    /// An empty stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds bytes.
    pub fn update(&mut self, mut data: &[u8]) {
        self.total += data.len() as u64;
        while !data.is_empty() {
            let room = (HASH_BLOCK_SIZE - self.in_current) as usize;
            let take = room.min(data.len());
            self.current.update(&data[..take]);
            self.in_current += take as u64;
            data = &data[take..];
            if self.in_current == HASH_BLOCK_SIZE {
                self.table.push(*self.current.finalize().as_bytes());
                self.current = blake3::Hasher::new();
                self.in_current = 0;
            }
        }
    }

    /// Bytes fed so far.
    pub fn len(&self) -> u64 {
        self.total
    }

    /// Whether nothing was fed.
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// The checksum and the table of 4 MiB chunk hashes.
    pub fn finish(mut self) -> (String, Vec<[u8; 32]>) {
        if self.in_current > 0 {
            self.table.push(*self.current.finalize().as_bytes());
        }
        (checksum_of_table(&self.table), self.table)
    }
}

/// Accumulates block hashes in any order and forms the content checksum.
pub struct ContentHasher {
    image_size: u64,
    block: u64,
    hashes: Vec<Option<[u8; 32]>>,
}

impl ContentHasher {
    /// A hasher for an image of `image_size` bytes.
    pub fn new(image_size: u64) -> Self {
        let block = HASH_BLOCK_SIZE;
        ContentHasher {
            image_size,
            block,
            hashes: vec![None; image_size.div_ceil(block) as usize],
        }
    }

    /// Length of block `index`.
    pub fn block_len(&self, index: u64) -> u64 {
        let start = index * self.block;
        (self.image_size - start).min(self.block)
    }

    /// Records the content of block `index` (must be `block_len(index)` bytes).
    pub fn add_block(&mut self, index: u64, data: &[u8]) {
        debug_assert_eq!(data.len() as u64, self.block_len(index));
        self.hashes[index as usize] = Some(*blake3::hash(data).as_bytes());
    }

    /// Records a block hash computed elsewhere.
    pub fn add_block_hash(&mut self, index: u64, hash: [u8; 32]) {
        self.hashes[index as usize] = Some(hash);
    }

    /// Starts from the block hashes of an earlier state of the image (`parent_size` bytes):
    /// blocks that exist in both and keep their length are taken over; the caller must then
    /// `add_block` every block that changed, and every block whose length changed.
    pub fn from_parent(image_size: u64, parent_hashes: &[[u8; 32]], parent_size: u64) -> Self {
        let mut hasher = Self::new(image_size);
        let carried = hasher.hashes.len().min(parent_hashes.len());
        for (index, hash) in parent_hashes.iter().enumerate().take(carried) {
            let index = index as u64;
            let parent_len = (parent_size.saturating_sub(index * hasher.block)).min(hasher.block);
            if parent_len == hasher.block_len(index) {
                hasher.hashes[index as usize] = Some(*hash);
            }
        }
        hasher
    }

    /// Number of blocks.
    pub fn block_count(&self) -> u64 {
        self.hashes.len() as u64
    }

    /// The checksum; blocks never added count as zeros.
    pub fn finish(self) -> String {
        self.finish_with_hashes().0
    }

    /// The checksum and every block's hash (the `.blocks` table of a backup).
    pub fn finish_with_hashes(mut self) -> (String, Vec<[u8; 32]>) {
        let count = self.hashes.len() as u64;
        let mut table = Vec::with_capacity(count as usize);
        for index in 0..count {
            let hash = match self.hashes[index as usize] {
                Some(h) => h,
                None => self.zero_hash(index),
            };
            table.push(hash);
        }
        (checksum_of_table(&table), table)
    }

    /// The hash of block `index` if it is all zeros.
    pub fn zero_block_hash(&mut self, index: u64) -> [u8; 32] {
        self.zero_hash(index)
    }

    fn zero_hash(&mut self, index: u64) -> [u8; 32] {
        let len = self.block_len(index);
        if len == self.block {
            super::leaves::zero_block_root()
        } else {
            *blake3::hash(&vec![0u8; len as usize]).as_bytes()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: u64 = HASH_BLOCK_SIZE;

    fn r(offset: u64, length: u64) -> ByteRange {
        ByteRange { offset, length }
    }

    #[test]
    fn unallocated_image_reads_nothing() {
        assert!(blocks_to_read(&[], 10 * B, B).is_empty());
    }

    #[test]
    fn a_small_extent_reads_its_whole_block_only() {
        assert_eq!(blocks_to_read(&[r(B + 10, 4096)], 10 * B, B), vec![1]);
    }

    #[test]
    fn extent_crossing_a_boundary_reads_both_blocks() {
        assert_eq!(blocks_to_read(&[r(2 * B - 1, 2)], 10 * B, B), vec![1, 2]);
    }

    #[test]
    fn overlapping_and_unsorted_extents_give_each_block_once() {
        let ranges = [r(5 * B, B), r(0, 10), r(4 * B + 1, 2 * B), r(5, 5)];
        assert_eq!(blocks_to_read(&ranges, 10 * B, B), vec![0, 4, 5, 6]);
    }

    #[test]
    fn extents_past_the_end_are_clipped() {
        // An image that shrank: extents beyond the end must not produce blocks beyond it.
        assert_eq!(blocks_to_read(&[r(3 * B, 10 * B)], 3 * B + 100, B), vec![3]);
        assert!(blocks_to_read(&[r(20 * B, B)], 3 * B, B).is_empty());
    }

    #[test]
    fn zero_length_extents_are_ignored() {
        assert!(blocks_to_read(&[r(B, 0)], 10 * B, B).is_empty());
    }

    #[test]
    fn checksum_of_absent_blocks_equals_checksum_of_zero_blocks() {
        let size = 2 * B + 123;
        let mut explicit = ContentHasher::new(size);
        explicit.add_block(0, &vec![0u8; B as usize]);
        explicit.add_block(1, &vec![0u8; B as usize]);
        explicit.add_block(2, &[0u8; 123]);
        assert_eq!(explicit.finish(), ContentHasher::new(size).finish());
    }

    #[test]
    fn checksum_matches_the_documented_formula() {
        // Independent computation straight from the module documentation.
        let size = B + 5;
        let mut data = vec![0u8; size as usize];
        data[7] = 1;
        data[B as usize + 4] = 9;
        let mut concat = Vec::new();
        concat.extend_from_slice(blake3::hash(&data[..B as usize]).as_bytes());
        concat.extend_from_slice(blake3::hash(&data[B as usize..]).as_bytes());
        let expected = format!("blake3-4m:{}", blake3::hash(&concat).to_hex());
        let mut h = ContentHasher::new(size);
        h.add_block(1, &data[B as usize..]);
        h.add_block(0, &data[..B as usize]);
        assert_eq!(h.finish(), expected);
    }

    #[test]
    fn stream_hasher_equals_block_hasher_whatever_the_piece_sizes() {
        let size = 2 * B + 77;
        let data: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        let mut blocks = ContentHasher::new(size);
        for i in 0..3 {
            let start = (i * B) as usize;
            let end = ((i + 1) * B).min(size) as usize;
            blocks.add_block(i, &data[start..end]);
        }
        let mut stream = StreamHasher::new();
        for piece in data.chunks(1_000_003) {
            stream.update(piece);
        }
        assert_eq!(stream.len(), size);
        let (sum, table) = stream.finish();
        assert_eq!(table.len(), 3);
        assert_eq!(sum, blocks.finish());
    }

    #[test]
    fn parent_hashes_are_carried_only_where_the_block_length_is_unchanged() {
        // Parent: 2.5 blocks; child grew to 3 blocks. Block 2 changed length: not carried.
        let parent_size = 2 * B + B / 2;
        let parent = [[1u8; 32], [2u8; 32], [3u8; 32]];
        let child = ContentHasher::from_parent(3 * B, &parent, parent_size);
        assert_eq!(child.hashes[0], Some([1u8; 32]));
        assert_eq!(child.hashes[1], Some([2u8; 32]));
        assert_eq!(child.hashes[2], None);
        // Shrunk to 1.5 blocks: block 1 changed length, block 2 is gone.
        let child = ContentHasher::from_parent(B + B / 2, &parent, parent_size);
        assert_eq!(child.hashes, vec![Some([1u8; 32]), None]);
    }

    #[test]
    fn empty_image_checksum_is_hash_of_nothing() {
        assert_eq!(
            ContentHasher::new(0).finish(),
            format!("blake3-4m:{}", blake3::hash(b"").to_hex())
        );
    }
}
