//! The content checksum's block hashes of a file, read and hashed on several threads.
//!
//! Verify, and the check of a restore into a file, hash every 4 MiB block of a raw image
//! (`plan::blocks`). One thread hashes about 1 GiB/s here once the read's copy is counted;
//! `b3sum` uses every core. The blocks are independent, so each thread takes the next block
//! from a shared counter, reads it into its own buffer with `pread` and hashes it; a hole
//! (`SEEK_DATA` finds no data in the block) hashes as zeros without a read. The buffers are
//! the threads' own, so memory stays at one block per thread.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use super::chain::data_in;
use crate::plan::{ContentHasher, HASH_BLOCK_SIZE};

/// Threads that hash at once: the machine's cores, at most 4 (beyond that the page cache's
/// copy, not the hash, is the limit).
fn hashing_threads(blocks: usize) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    cores.clamp(1, 4).min(blocks.max(1))
}

/// How a block's bytes are found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holes {
    /// Ask the file system for holes (`SEEK_DATA`) and hash them as zeros unread: files.
    Skip,
    /// Read every byte: a block device, which has no holes and whose reads must reach it.
    Read,
}

/// The hashes of `blocks` (indexes of 4 MiB blocks of an image of `size` bytes held by
/// `file`), in the order given. The first read that fails is the error, with the block's
/// offset.
pub fn hash_file_blocks(
    file: &File,
    size: u64,
    blocks: &[u64],
    holes: Holes,
) -> Result<Vec<[u8; 32]>, (u64, std::io::Error)> {
    let zero = Mutex::new(ContentHasher::new(size));
    let block_len = |index: u64| (size - index * HASH_BLOCK_SIZE).min(HASH_BLOCK_SIZE);
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let results: Mutex<Vec<Option<[u8; 32]>>> = Mutex::new(vec![None; blocks.len()]);
    let first_error: Mutex<Option<(u64, std::io::Error)>> = Mutex::new(None);
    let work = || {
        let mut buf = Vec::new();
        loop {
            let at = next.fetch_add(1, Ordering::Relaxed);
            if at >= blocks.len() || failed.load(Ordering::Relaxed) {
                return;
            }
            let index = blocks[at];
            let offset = index * HASH_BLOCK_SIZE;
            let len = block_len(index);
            let hashed = (|| {
                if holes == Holes::Skip && !data_in(file, offset, len)? {
                    return Ok(zero.lock().expect("not poisoned").zero_block_hash(index));
                }
                buf.resize(len as usize, 0);
                file.read_exact_at(&mut buf, offset)?;
                Ok(*blake3::hash(&buf).as_bytes())
            })();
            match hashed {
                Ok(hash) => results.lock().expect("not poisoned")[at] = Some(hash),
                Err(e) => {
                    failed.store(true, Ordering::Relaxed);
                    let mut first = first_error.lock().expect("not poisoned");
                    // The lowest offset among the failures, so the error does not depend on timing.
                    if first.as_ref().is_none_or(|(o, _)| offset < *o) {
                        *first = Some((offset, e));
                    }
                    return;
                }
            }
        }
    };
    std::thread::scope(|scope| {
        for _ in 1..hashing_threads(blocks.len()) {
            scope.spawn(work);
        }
        work();
    });
    if let Some(error) = first_error.into_inner().expect("not poisoned") {
        return Err(error);
    }
    Ok(results
        .into_inner()
        .expect("not poisoned")
        .into_iter()
        .map(|h| h.expect("every block hashed when none failed"))
        .collect())
}

/// The hashes of every block of the first `size` bytes of `file`.
pub fn hash_file(
    file: &File,
    size: u64,
    holes: Holes,
) -> Result<Vec<[u8; 32]>, (u64, std::io::Error)> {
    let all: Vec<u64> = (0..size.div_ceil(HASH_BLOCK_SIZE)).collect();
    hash_file_blocks(file, size, &all, holes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const B: u64 = HASH_BLOCK_SIZE;

    /// A sparse file of `size` bytes with `fills` (offset, length, byte) written.
    fn sparse_file(size: u64, fills: &[(u64, usize, u8)]) -> (tempfile::NamedTempFile, Vec<u8>) {
        let mut image = vec![0u8; size as usize];
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.as_file().set_len(size).unwrap();
        for &(offset, len, byte) in fills {
            image[offset as usize..offset as usize + len].fill(byte);
            file.as_file()
                .write_all_at(&vec![byte; len], offset)
                .unwrap();
        }
        file.flush().unwrap();
        (file, image)
    }

    fn expected(image: &[u8]) -> Vec<[u8; 32]> {
        let mut hasher = ContentHasher::new(image.len() as u64);
        for (i, block) in image.chunks(B as usize).enumerate() {
            hasher.add_block(i as u64, block);
        }
        hasher.finish_with_hashes().1
    }

    #[test]
    fn every_block_hashes_as_the_content_checksum_does_holes_and_short_tail_included() {
        let size = 5 * B + 12345;
        let (file, image) = sparse_file(
            size,
            &[
                (10, 100, 1),
                (2 * B + 7, 3 * B as usize, 2),
                (5 * B, 12345, 3),
            ],
        );
        let want = expected(&image);
        for holes in [Holes::Skip, Holes::Read] {
            assert_eq!(
                hash_file(file.as_file(), size, holes).unwrap(),
                want,
                "{holes:?}"
            );
        }
    }

    #[test]
    fn chosen_blocks_come_back_in_the_order_asked() {
        let size = 4 * B;
        let (file, image) = sparse_file(size, &[(0, 10, 9), (3 * B, 10, 8)]);
        let want = expected(&image);
        let got = hash_file_blocks(file.as_file(), size, &[3, 0, 2], Holes::Skip).unwrap();
        assert_eq!(got, vec![want[3], want[0], want[2]]);
        assert!(hash_file_blocks(file.as_file(), size, &[], Holes::Skip)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn a_file_shorter_than_the_image_is_an_error_at_the_first_missing_block() {
        let (file, _) = sparse_file(2 * B, &[(0, 10, 1), (B, 10, 1)]);
        let (offset, error) = hash_file(file.as_file(), 4 * B, Holes::Read).unwrap_err();
        assert_eq!(offset, 2 * B);
        assert_eq!(error.kind(), std::io::ErrorKind::UnexpectedEof);
    }
}
