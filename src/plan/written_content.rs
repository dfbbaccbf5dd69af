//! What a restore target holds, worked out from what was written to it.
//!
//! A restore writes the full backup block by block in ascending order (each block already
//! checked against the backup's block table when it was read), then replays incrementals over
//! it. `WrittenContent` follows those writes and discards on a target that reads as zeros
//! where nothing was written (a new RBD image, a new sparse file, a zeroed device): it hashes
//! the bytes of every block as they are handed to the target, in the same 4 MiB blocks as the
//! content checksum (`blocks` module), so that at the end each block's hash is known without
//! reading the target back. A block written again after it was hashed (an incremental over
//! the full), written out of order within it (or again after another block was written),
//! partly discarded after data, or whose length changed with a resize cannot be followed this way: it is marked for reading back. `finish` returns, per
//! block, the hash of what the target holds, or `None` where it must be read.

use super::blocks::{ContentHasher, HASH_BLOCK_SIZE};

/// The state of one block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BlockState {
    /// Nothing written: the target reads zeros there.
    Untouched,
    /// Written in order and hashed.
    Hashed([u8; 32]),
    /// Only a read of the target tells what it holds.
    ReadBack,
}

/// The block being written: its index, the hash so far and how many of its bytes it covers.
#[derive(Clone)]
struct Current {
    index: u64,
    hasher: blake3::Hasher,
    pos: u64,
}

/// Follows writes to a target (module doc).
#[derive(Clone)]
pub struct WrittenContent {
    size: u64,
    states: Vec<BlockState>,
    current: Option<Current>,
}

static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];

impl WrittenContent {
    /// A target of `size` bytes that reads as zeros.
    pub fn new(size: u64) -> Self {
        WrittenContent {
            size,
            states: vec![BlockState::Untouched; size.div_ceil(HASH_BLOCK_SIZE) as usize],
            current: None,
        }
    }

    fn block_len(&self, index: u64) -> u64 {
        (self.size - index * HASH_BLOCK_SIZE).min(HASH_BLOCK_SIZE)
    }

    /// The target's size changed to `size` (grown with zeros, or cut).
    pub fn resize(&mut self, size: u64) {
        if size == self.size {
            return;
        }
        self.close_current();
        let old_count = self.states.len();
        let old_last_len = if old_count > 0 {
            Some(self.block_len(old_count as u64 - 1))
        } else {
            None
        };
        self.size = size;
        let count = size.div_ceil(HASH_BLOCK_SIZE) as usize;
        self.states.resize(count, BlockState::Untouched);
        // The block that was the last one, or is now: its length changed, and so did its
        // content unless it held zeros.
        if let Some(old_len) = old_last_len {
            let index = old_count - 1;
            if index < count && self.block_len(index as u64) != old_len {
                self.mark(index as u64);
            }
        }
        if count > 0 && count < old_count {
            self.mark(count as u64 - 1);
        }
    }

    /// `data` was written at `offset`.
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        let mut done = 0usize;
        while done < data.len() {
            let at = offset + done as u64;
            let index = at / HASH_BLOCK_SIZE;
            if index as usize >= self.states.len() {
                return; // past the end: the target refuses it, nothing to follow
            }
            let in_block = at - index * HASH_BLOCK_SIZE;
            let take = ((self.block_len(index) - in_block) as usize).min(data.len() - done);
            self.write_in_block(index, in_block, &data[done..done + take]);
            done += take;
        }
    }

    fn write_in_block(&mut self, index: u64, start: u64, data: &[u8]) {
        // A block is followed from its first write on, whichever block was written before
        // (a block repository's restore writes whole blocks as they arrive, in any order);
        // the block written before is closed then, and any later write to it is read back.
        let in_order = match &self.current {
            Some(c) if c.index == index => start >= c.pos,
            _ => self.states[index as usize] == BlockState::Untouched,
        };
        if !in_order {
            self.mark(index);
            return;
        }
        if self.current.as_ref().is_some_and(|c| c.index != index) {
            self.close_current();
        }
        let current = self.current.get_or_insert_with(|| Current {
            index,
            hasher: blake3::Hasher::new(),
            pos: 0,
        });
        feed_zeros(&mut current.hasher, start - current.pos);
        current.hasher.update(data);
        current.pos = start + data.len() as u64;
    }

    /// A whole block was written, starting at `offset` and `length` bytes long, whose bytes
    /// the caller already checked against `hash` (a full backup's block, read and checked
    /// against its block table): the block is taken as holding `hash` without hashing it
    /// again. Returns `false`, following nothing, where that cannot be said (not a whole
    /// block, or a block written before); the caller then passes the bytes to `write`.
    pub fn write_checked_block(&mut self, offset: u64, length: u64, hash: [u8; 32]) -> bool {
        let index = offset / HASH_BLOCK_SIZE;
        let whole = offset % HASH_BLOCK_SIZE == 0
            && (index as usize) < self.states.len()
            && length == self.block_len(index);
        if !whole
            || self.states[index as usize] != BlockState::Untouched
            || self.current.as_ref().is_some_and(|c| c.index == index)
        {
            return false;
        }
        // As any write to another block does, this closes the block being written.
        self.close_current();
        self.states[index as usize] = BlockState::Hashed(hash);
        true
    }

    /// `length` bytes at `offset` were discarded (read as zeros now).
    pub fn zero(&mut self, offset: u64, length: u64) {
        let end = offset.saturating_add(length).min(self.size);
        let mut at = offset;
        while at < end {
            let index = at / HASH_BLOCK_SIZE;
            let block_end = (index * HASH_BLOCK_SIZE + self.block_len(index)).min(end);
            let in_block = at - index * HASH_BLOCK_SIZE;
            let zeros_already = match &self.current {
                // Zeros past what the block being written covers: they are zeros already.
                Some(c) if c.index == index => in_block >= c.pos,
                _ => self.states[index as usize] == BlockState::Untouched,
            };
            if !zeros_already {
                self.mark(index);
            }
            at = block_end;
        }
    }

    /// `length` bytes at `offset` were written without passing through the restore (a copy
    /// inside the kernel): the blocks they touch are read back.
    pub fn copied(&mut self, offset: u64, length: u64) {
        let end = offset.saturating_add(length).min(self.size);
        if offset >= end {
            return;
        }
        for index in offset / HASH_BLOCK_SIZE..end.div_ceil(HASH_BLOCK_SIZE) {
            self.mark(index);
        }
    }

    /// Marks a block for reading back.
    fn mark(&mut self, index: u64) {
        if self.current.as_ref().is_some_and(|c| c.index == index) {
            self.current = None;
        }
        self.states[index as usize] = BlockState::ReadBack;
    }

    fn close_current(&mut self) {
        if let Some(mut c) = self.current.take() {
            let len = self.block_len(c.index);
            feed_zeros(&mut c.hasher, len - c.pos);
            self.states[c.index as usize] = BlockState::Hashed(*c.hasher.finalize().as_bytes());
        }
    }

    /// Per block: the hash of what the target holds, or `None` where it must be read back.
    pub fn finish(mut self) -> Vec<Option<[u8; 32]>> {
        self.close_current();
        let mut zeros = ContentHasher::new(self.size);
        self.states
            .iter()
            .enumerate()
            .map(|(index, state)| match state {
                BlockState::Untouched => Some(zeros.zero_block_hash(index as u64)),
                BlockState::Hashed(hash) => Some(*hash),
                BlockState::ReadBack => None,
            })
            .collect()
    }
}

fn feed_zeros(hasher: &mut blake3::Hasher, mut count: u64) {
    while count > 0 {
        let take = count.min(ZEROS.len() as u64) as usize;
        hasher.update(&ZEROS[..take]);
        count -= take as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: u64 = HASH_BLOCK_SIZE;

    /// The truth: an in-memory target that takes the same operations.
    struct Memory(Vec<u8>);

    impl Memory {
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.0[offset as usize..offset as usize + data.len()].copy_from_slice(data);
        }
        fn zero(&mut self, offset: u64, length: u64) {
            self.0[offset as usize..(offset + length) as usize].fill(0);
        }
        fn hashes(&self) -> Vec<[u8; 32]> {
            self.0
                .chunks(B as usize)
                .map(|c| *blake3::hash(c).as_bytes())
                .collect()
        }
    }

    fn pattern(len: usize, salt: u8) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8 ^ salt | 1).collect()
    }

    /// Every known hash equals the truth's; returns the blocks to read back.
    fn check(written: WrittenContent, truth: &Memory) -> Vec<usize> {
        let known = written.finish();
        let actual = truth.hashes();
        assert_eq!(known.len(), actual.len());
        let mut read_back = Vec::new();
        for (index, (k, a)) in known.iter().zip(&actual).enumerate() {
            match k {
                Some(hash) => assert_eq!(hash, a, "block {index}"),
                None => read_back.push(index),
            }
        }
        read_back
    }

    #[test]
    fn a_full_written_in_order_with_gaps_needs_no_read_back() {
        let size = 3 * B + 1000; // a short last block
        let mut truth = Memory(vec![0; size as usize]);
        let mut written = WrittenContent::new(size);
        // Block 0: two runs with a gap; block 1 a hole; block 2 whole; the short tail partly.
        for (offset, len, salt) in [
            (100, 5000, 1),
            (B / 2, 4096, 2),
            (2 * B, B, 3),
            (3 * B + 10, 500, 4),
        ] {
            let data = pattern(len as usize, salt);
            written.write(offset, &data);
            truth.write(offset, &data);
        }
        assert_eq!(check(written, &truth), Vec::<usize>::new());
    }

    #[test]
    fn a_write_spanning_blocks_is_split_between_them() {
        let size = 2 * B;
        let mut truth = Memory(vec![0; size as usize]);
        let mut written = WrittenContent::new(size);
        let data = pattern(8192, 7);
        written.write(B - 4096, &data);
        truth.write(B - 4096, &data);
        assert_eq!(check(written, &truth), Vec::<usize>::new());
    }

    #[test]
    fn blocks_written_again_or_out_of_order_within_them_are_read_back_and_the_others_still_known() {
        let size = 4 * B;
        let mut truth = Memory(vec![0; size as usize]);
        let mut written = WrittenContent::new(size);
        for (offset, len, salt) in [
            (0, B, 1),
            (B, B, 2),
            (3 * B, 100, 3),
            (B + 10, 20, 4),     // an incremental over block 1
            (2 * B + 50, 60, 5), // block 2 after block 3: its first write, followed
            (3 * B + 50, 10, 6), // block 3 again, after block 2 was written
            (2 * B + 20, 10, 7), // block 2 again, before what it covers
        ] {
            let data = pattern(len as usize, salt);
            written.write(offset, &data);
            truth.write(offset, &data);
        }
        assert_eq!(check(written, &truth), vec![1, 2, 3]);
    }

    #[test]
    fn whole_blocks_written_once_in_any_order_need_no_read_back() {
        // A block repository's restore: fetched blocks arrive in any order, holes unwritten.
        let size = 5 * B + 300;
        let mut truth = Memory(vec![0; size as usize]);
        let mut written = WrittenContent::new(size);
        for (index, salt) in [(3u64, 1u8), (0, 2), (5, 3), (1, 4)] {
            let len = (size - index * B).min(B);
            let data = pattern(len as usize, salt);
            written.write(index * B, &data);
            truth.write(index * B, &data);
        }
        assert_eq!(check(written, &truth), Vec::<usize>::new());
    }

    #[test]
    fn discards_over_zeros_change_nothing_and_over_data_need_a_read_back() {
        let size = 3 * B;
        let mut truth = Memory(vec![0; size as usize]);
        let mut written = WrittenContent::new(size);
        let data = pattern(1000, 9);
        written.write(0, &data);
        truth.write(0, &data);
        written.zero(2000, 100); // past what block 0 covers so far: zeros already
        written.zero(2 * B, B); // a hole
        written.write(B, &data);
        truth.write(B, &data);
        written.zero(B + 10, 10); // over data written
        truth.zero(B + 10, 10);
        assert_eq!(check(written, &truth), vec![1]);
    }

    #[test]
    fn a_resize_reads_back_the_blocks_whose_length_changed() {
        let mut truth = Memory(vec![0; (2 * B) as usize]);
        let mut written = WrittenContent::new(2 * B);
        let data = pattern(B as usize, 3);
        written.write(0, &data);
        truth.write(0, &data);
        written.write(B, &data);
        truth.write(B, &data);
        // Cut in the middle of block 1, then grow by a block and a half.
        written.resize(B + B / 2);
        truth.0.truncate((B + B / 2) as usize);
        written.resize(3 * B);
        truth.0.resize((3 * B) as usize, 0);
        assert_eq!(check(written, &truth), vec![1]);
    }

    #[test]
    fn checked_whole_blocks_are_taken_as_they_are_and_anything_else_is_refused() {
        let size = 3 * B + 100;
        let mut truth = Memory(vec![0; size as usize]);
        let mut written = WrittenContent::new(size);
        let block = pattern(B as usize, 1);
        let tail = pattern(100, 2);
        assert!(written.write_checked_block(0, B, *blake3::hash(&block).as_bytes()));
        truth.write(0, &block);
        // The short last block, whole.
        assert!(written.write_checked_block(3 * B, 100, *blake3::hash(&tail).as_bytes()));
        truth.write(3 * B, &tail);
        // Not whole, or not aligned: refused, and nothing followed.
        assert!(!written.write_checked_block(B, B - 1, [0; 32]));
        assert!(!written.write_checked_block(B + 1, B, [0; 32]));
        assert!(!written.write_checked_block(4 * B, B, [0; 32]));
        // Block 1 being written by `write`: refused, and the write goes on being followed.
        let head = pattern(10, 3);
        written.write(B, &head);
        truth.write(B, &head);
        assert!(!written.write_checked_block(B, B, [0; 32]));
        // A block written before: refused; its next write makes it a read back.
        assert!(!written.write_checked_block(0, B, [0; 32]));
        let again = pattern(10, 4);
        written.write(10, &again);
        truth.write(10, &again);
        assert_eq!(check(written, &truth), vec![0]);
    }

    #[test]
    fn an_untouched_target_is_all_zero_blocks() {
        let size = B + 17;
        let truth = Memory(vec![0; size as usize]);
        assert_eq!(
            check(WrittenContent::new(size), &truth),
            Vec::<usize>::new()
        );
    }
}
