//! Leaves of a block hash: BLAKE3 chaining values of the 64 KiB pieces of a 4 MiB block.
//!
//! A block hash (`plan::blocks`) is plain BLAKE3 of the block's 4 MiB. BLAKE3 is a binary hash
//! tree, and a 4 MiB input is a perfect tree whose 64 subtrees of 64 KiB each have a chaining
//! value (CV). Keeping those 64 CVs (2 KiB per block) lets an incremental re-hash a block from
//! the 64 KiB leaves its changed extents touch: it reads those leaves, recomputes their CVs and
//! merges all 64 into the root, which is the same standard BLAKE3 hash as before. A 4 KiB write
//! then costs a 64 KiB read instead of the whole 4 MiB object.
//!
//! Only blocks of exactly `HASH_BLOCK_SIZE` bytes have leaves here; a short last block is read
//! whole. The tree rule that makes the merge valid is section 2.1 of the BLAKE3 paper; the
//! tests below check every function against `blake3::hash`.

use std::sync::OnceLock;

use blake3::hazmat::{merge_subtrees_non_root, merge_subtrees_root, HasherExt, Mode};

use super::blocks::{ByteRange, HASH_BLOCK_SIZE};

/// Size of a leaf: a subtree of 64 BLAKE3 chunks.
pub const LEAF_SIZE: u64 = 64 * 1024;
/// Leaves in a full block.
pub const LEAVES_PER_BLOCK: usize = (HASH_BLOCK_SIZE / LEAF_SIZE) as usize;

/// The 64 leaf chaining values of one full block, in order.
pub type BlockLeaves = [[u8; 32]; LEAVES_PER_BLOCK];

/// Chaining value of leaf `index` of a block, from its `LEAF_SIZE` bytes.
pub fn leaf_cv(index: usize, data: &[u8]) -> [u8; 32] {
    debug_assert_eq!(data.len() as u64, LEAF_SIZE);
    blake3::Hasher::new()
        .set_input_offset(index as u64 * LEAF_SIZE)
        .update(data)
        .finalize_non_root()
}

/// The leaves of a block, if it is a full block.
pub fn block_leaves(block: &[u8]) -> Option<Box<BlockLeaves>> {
    if block.len() as u64 != HASH_BLOCK_SIZE {
        return None;
    }
    let mut leaves = Box::new([[0u8; 32]; LEAVES_PER_BLOCK]);
    for (index, (cv, leaf)) in leaves
        .iter_mut()
        .zip(block.chunks_exact(LEAF_SIZE as usize))
        .enumerate()
    {
        *cv = leaf_cv(index, leaf);
    }
    Some(leaves)
}

/// The block hash (standard BLAKE3 of the 4 MiB) that the leaves are the subtrees of.
pub fn root_of(leaves: &BlockLeaves) -> [u8; 32] {
    let mut level: Vec<[u8; 32]> = leaves.to_vec();
    while level.len() > 2 {
        level = level
            .chunks_exact(2)
            .map(|pair| merge_subtrees_non_root(&pair[0], &pair[1], Mode::Hash))
            .collect();
    }
    *merge_subtrees_root(&level[0], &level[1], Mode::Hash).as_bytes()
}

/// The leaves of a block of zeros (each leaf's CV depends on its position, so they differ).
pub fn zero_leaves() -> &'static BlockLeaves {
    static ZERO: OnceLock<Box<BlockLeaves>> = OnceLock::new();
    ZERO.get_or_init(|| {
        block_leaves(&vec![0u8; HASH_BLOCK_SIZE as usize]).expect("a full block has leaves")
    })
}

/// The hash of a full block of zeros.
pub fn zero_block_root() -> [u8; 32] {
    static ROOT: OnceLock<[u8; 32]> = OnceLock::new();
    *ROOT.get_or_init(|| root_of(zero_leaves()))
}

/// The byte ranges to read in block `block` so that every leaf touched by `changed` is read
/// whole: runs of adjacent touched leaves, ascending, each one read. `changed` may extend
/// beyond the block; it is cut to it.
pub fn leaf_runs(block: u64, changed: &[ByteRange]) -> Vec<ByteRange> {
    let block_start = block * HASH_BLOCK_SIZE;
    let block_end = block_start + HASH_BLOCK_SIZE;
    let mut touched = [false; LEAVES_PER_BLOCK];
    for range in changed {
        let start = range.offset.max(block_start);
        let end = range.offset.saturating_add(range.length).min(block_end);
        if start >= end {
            continue;
        }
        let first = ((start - block_start) / LEAF_SIZE) as usize;
        let last = ((end - 1 - block_start) / LEAF_SIZE) as usize;
        touched[first..=last].fill(true);
    }
    let mut runs: Vec<ByteRange> = Vec::new();
    for (index, _) in touched.iter().enumerate().filter(|(_, &t)| t) {
        let offset = block_start + index as u64 * LEAF_SIZE;
        match runs.last_mut() {
            Some(last) if last.offset + last.length == offset => last.length += LEAF_SIZE,
            _ => runs.push(ByteRange {
                offset,
                length: LEAF_SIZE,
            }),
        }
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: usize = HASH_BLOCK_SIZE as usize;
    const L: usize = LEAF_SIZE as usize;

    use crate::test_support::noise as pattern;

    #[test]
    fn root_of_the_leaves_is_the_standard_blake3_of_the_block() {
        for seed in 0..3 {
            let block = pattern(B, seed);
            let leaves = block_leaves(&block).unwrap();
            assert_eq!(&root_of(&leaves), blake3::hash(&block).as_bytes());
        }
    }

    #[test]
    fn a_changed_leaf_recomputed_alone_gives_the_new_block_hash() {
        let mut block = pattern(B, 7);
        let mut leaves = block_leaves(&block).unwrap();
        // Change bytes in leaves 0, 17 and 63; recompute only those.
        for (leaf, at) in [(0usize, 5usize), (17, 4096), (63, L - 1)] {
            block[leaf * L + at] ^= 0xff;
            leaves[leaf] = leaf_cv(leaf, &block[leaf * L..(leaf + 1) * L]);
        }
        assert_eq!(&root_of(&leaves), blake3::hash(&block).as_bytes());
    }

    #[test]
    fn zero_leaves_hash_to_the_zero_block() {
        assert_eq!(&zero_block_root(), blake3::hash(&vec![0u8; B]).as_bytes());
        // Leaves depend on their position: equal bytes, different chaining values.
        assert_ne!(zero_leaves()[0], zero_leaves()[1]);
    }

    #[test]
    fn short_blocks_have_no_leaves() {
        assert!(block_leaves(&pattern(B - 1, 1)).is_none());
        assert!(block_leaves(&[]).is_none());
    }

    #[test]
    fn leaf_runs_cover_every_touched_leaf_and_merge_neighbours() {
        let block = 3u64;
        let base = block * HASH_BLOCK_SIZE;
        let r = |offset: u64, length: u64| ByteRange { offset, length };
        let runs = leaf_runs(
            block,
            &[
                r(base + 10, 4096),                 // leaf 0
                r(base + LEAF_SIZE - 1, 2),         // leaves 0 and 1
                r(base + 5 * LEAF_SIZE, LEAF_SIZE), // exactly leaf 5
                r(base - 100, 200),                 // starts in the block before: leaf 0
                r(base + HASH_BLOCK_SIZE - 1, 10),  // last leaf, runs past the block
                r(base + 2 * HASH_BLOCK_SIZE, 10),  // another block: ignored
                r(base + 9 * LEAF_SIZE, 0),         // empty: ignored
            ],
        );
        let pairs: Vec<(u64, u64)> = runs.iter().map(|r| (r.offset - base, r.length)).collect();
        assert_eq!(
            pairs,
            vec![
                (0, 2 * LEAF_SIZE),
                (5 * LEAF_SIZE, LEAF_SIZE),
                (63 * LEAF_SIZE, LEAF_SIZE)
            ]
        );
        assert!(leaf_runs(block, &[]).is_empty());
    }
}
