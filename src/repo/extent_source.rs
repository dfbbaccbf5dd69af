//! A disk image as it was at one backup, readable at any offset: the seam between the
//! repository and whatever serves a backup without restoring it (the NBD server, the FUSE
//! file behind `mount`).
//!
//! [`ExtentSource`] is deliberately small: the image size, a read, and which ranges hold data.
//! Implementations: [`ChainImage`](super::chain_image::ChainImage), a verified view of a
//! repository chain (full + incrementals), `block_repo::BlockImage`, the same over a block
//! repository, and [`MemoryImage`], bytes in memory, which lets the servers be tested byte for
//! byte without a repository.
//!
//! A read hands out [`Piece`]s: ranges of shared, already verified blocks (and runs of zeros),
//! so a server sends a block's bytes to its client straight from the block cache
//! ([`BlockCache`]) without copying them into a buffer of its own first; `read_at` copies them
//! for a caller that wants one buffer.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};

use super::error::RepoError;
use super::image_file::nonzero_runs;

/// A run of an image that either holds data or is a hole (reads as zeros, never stored).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// Image offset.
    pub offset: u64,
    /// Length in bytes.
    pub length: u64,
    /// `true`: data is stored for it (which may still be zeros); `false`: a hole.
    pub allocated: bool,
}

/// Part of what a read returns, in order.
#[derive(Debug, Clone)]
pub enum Piece {
    /// `data[start..end]`: part of a block (or of a whole image held in memory).
    Shared {
        data: Arc<Vec<u8>>,
        start: usize,
        end: usize,
    },
    /// This many zero bytes (a hole, or a block stored as nothing).
    Zeros(usize),
}

impl Piece {
    /// Length in bytes.
    pub fn len(&self) -> usize {
        match self {
            Piece::Shared { start, end, .. } => end - start,
            Piece::Zeros(n) => *n,
        }
    }

    /// Whether the piece has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes of a `Shared` piece; `None` for zeros.
    pub fn bytes(&self) -> Option<&[u8]> {
        match self {
            Piece::Shared { data, start, end } => Some(&data[*start..*end]),
            Piece::Zeros(_) => None,
        }
    }
}

/// A read-only image that can be read at any offset.
///
/// `read_pieces` (and `read_at`) either return the whole range's bytes or fail: an
/// implementation that checks its data (as `ChainImage` does) returns an error instead of
/// bytes it cannot vouch for, before handing out any of the range, so a server never has to
/// take back part of a reply. All methods take `&self` and may be called from several threads
/// at once.
pub trait ExtentSource: Send + Sync {
    /// Image size in bytes.
    fn size(&self) -> u64;

    /// The bytes of `[offset, offset + length)`, in order, as pieces whose lengths add up to
    /// `length`. A range past the end is an error ([`RepoError::ReadPastEnd`]).
    fn read_pieces(&self, offset: u64, length: u64) -> Result<Vec<Piece>, RepoError>;

    /// Fills `buf` with the bytes at `offset` (`read_pieces`, copied).
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), RepoError> {
        let mut done = 0;
        for piece in self.read_pieces(offset, buf.len() as u64)? {
            let out = &mut buf[done..done + piece.len()];
            match piece.bytes() {
                Some(bytes) => out.copy_from_slice(bytes),
                None => out.fill(0),
            }
            done += out.len();
        }
        Ok(())
    }

    /// The data and holes of `[offset, offset + length)` (clipped to the image), in order,
    /// adjacent, alternating, covering the whole clipped range.
    fn allocation(&self, offset: u64, length: u64) -> Vec<Extent>;
}

/// Checks that `[offset, offset + length)` lies inside an image of `size` bytes.
pub fn check_range(offset: u64, length: u64, size: u64) -> Result<(), RepoError> {
    match offset.checked_add(length) {
        Some(end) if end <= size => Ok(()),
        _ => Err(RepoError::ReadPastEnd {
            offset,
            length,
            size,
        }),
    }
}

/// The pieces of `[offset, offset + length)` of an image of `size` bytes cut in blocks of
/// `block_size` bytes (the last one shorter), where `block(index)` is block `index`'s whole,
/// verified content or `None` where it reads as zeros. Checks the range first.
pub fn block_pieces(
    offset: u64,
    length: u64,
    size: u64,
    block_size: u64,
    mut block: impl FnMut(u64) -> Result<Option<Arc<Vec<u8>>>, RepoError>,
) -> Result<Vec<Piece>, RepoError> {
    check_range(offset, length, size)?;
    let end = offset + length;
    let mut pieces = Vec::new();
    let mut at = offset;
    while at < end {
        let index = at / block_size;
        let in_block = (at - index * block_size) as usize;
        let take = (((index + 1) * block_size).min(end) - at) as usize;
        match block(index)? {
            Some(data) => pieces.push(Piece::Shared {
                data,
                start: in_block,
                end: in_block + take,
            }),
            None => match pieces.last_mut() {
                Some(Piece::Zeros(n)) => *n += take,
                _ => pieces.push(Piece::Zeros(take)),
            },
        }
        at += take as u64;
    }
    Ok(pieces)
}

/// One entry of a [`BlockCache`]: the block once loaded; while it is `None`, the reader that
/// holds its lock is loading it.
type Slot = Arc<Mutex<Option<Arc<Vec<u8>>>>>;

/// The last few blocks an image handed out, verified, shared by every reader of the image.
///
/// A block is loaded (read, assembled, checked) once however many readers ask for it at once:
/// the first takes the block's slot and loads it, the others wait on that slot and share the
/// result. Clients with several connections (`nbdcopy` opens four) read neighbouring ranges
/// at the same moment, so without this each of them would load the same 4 MiB block. A load
/// that fails leaves the slot empty: the next reader tries again (and fails the same way on
/// damage).
#[derive(Debug)]
pub struct BlockCache {
    capacity: usize,
    slots: Mutex<VecDeque<(u64, Slot)>>,
}

impl BlockCache {
    /// A cache of at most `capacity` blocks (at least 1).
    pub fn new(capacity: usize) -> Self {
        BlockCache {
            capacity: capacity.max(1),
            slots: Mutex::new(VecDeque::with_capacity(capacity.max(1))),
        }
    }

    /// Block `index`, from the cache or from `load` (run by one reader at a time per block).
    pub fn get_or_load(
        &self,
        index: u64,
        load: impl FnOnce() -> Result<Vec<u8>, RepoError>,
    ) -> Result<Arc<Vec<u8>>, RepoError> {
        let slot = {
            // A panic elsewhere while the list was held leaves it usable: entries are whole.
            let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
            match slots.iter().find(|(i, _)| *i == index) {
                Some((_, slot)) => slot.clone(),
                None => {
                    if slots.len() == self.capacity {
                        slots.pop_front();
                    }
                    let slot = Slot::default();
                    slots.push_back((index, slot.clone()));
                    slot
                }
            }
        };
        let mut held = slot.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(block) = held.as_ref() {
            return Ok(block.clone());
        }
        let block = Arc::new(load()?);
        *held = Some(block.clone());
        Ok(block)
    }
}

/// Adds `[offset, offset + length)` with `allocated` to `out`, merging it into the last extent
/// when that one has the same state and ends where this starts.
pub fn push_extent(out: &mut Vec<Extent>, offset: u64, length: u64, allocated: bool) {
    if length == 0 {
        return;
    }
    if let Some(last) = out.last_mut() {
        if last.allocated == allocated && last.offset + last.length == offset {
            last.length += length;
            return;
        }
    }
    out.push(Extent {
        offset,
        length,
        allocated,
    });
}

/// An image held in memory, with an allocation map and optionally a damaged range that fails
/// every read touching it. For tests of what serves images, and small fixtures.
#[derive(Debug, Clone)]
pub struct MemoryImage {
    data: Arc<Vec<u8>>,
    /// Allocated ranges, sorted, not overlapping.
    allocated: Vec<(u64, u64)>,
    damaged: Option<(u64, u64)>,
}

impl MemoryImage {
    /// An image whose allocated ranges are its non-zero 4 KiB pieces.
    pub fn from_bytes(data: Vec<u8>) -> Self {
        let allocated = nonzero_runs(&data, 4096)
            .into_iter()
            .map(|(s, e)| (s as u64, e as u64))
            .collect();
        MemoryImage {
            data: Arc::new(data),
            allocated,
            damaged: None,
        }
    }

    /// Makes reads that touch `[offset, offset + length)` fail as a checksum mismatch would.
    pub fn with_damage(mut self, offset: u64, length: u64) -> Self {
        self.damaged = Some((offset, offset.saturating_add(length)));
        self
    }
}

impl ExtentSource for MemoryImage {
    fn size(&self) -> u64 {
        self.data.len() as u64
    }

    fn read_pieces(&self, offset: u64, length: u64) -> Result<Vec<Piece>, RepoError> {
        check_range(offset, length, self.size())?;
        let end = offset + length;
        if let Some((bad_start, bad_end)) = self.damaged {
            if offset < bad_end && bad_start < end {
                return Err(RepoError::Corrupt {
                    path: "(memory image)".into(),
                    offset: Some(bad_start.max(offset)),
                    message: "damaged range".into(),
                });
            }
        }
        Ok(vec![Piece::Shared {
            data: self.data.clone(),
            start: offset as usize,
            end: end as usize,
        }])
    }

    fn allocation(&self, offset: u64, length: u64) -> Vec<Extent> {
        let end = offset.saturating_add(length).min(self.size());
        let mut out = Vec::new();
        let mut at = offset;
        for &(s, e) in &self.allocated {
            if e <= at || at >= end {
                continue;
            }
            let s = s.max(at).min(end);
            let e = e.min(end);
            push_extent(&mut out, at, s - at, false);
            push_extent(&mut out, s, e - s, true);
            at = e;
        }
        if at < end {
            push_extent(&mut out, at, end - at, false);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_memory_image_maps_its_non_zero_pieces_and_clips_the_map() {
        let mut data = vec![0u8; 5 * 4096];
        data[4096 + 7] = 1;
        data[3 * 4096] = 2;
        let image = MemoryImage::from_bytes(data);
        let map = image.allocation(0, u64::MAX);
        let runs: Vec<_> = map
            .iter()
            .map(|e| (e.offset, e.length, e.allocated))
            .collect();
        assert_eq!(
            runs,
            [
                (0, 4096, false),
                (4096, 4096, true),
                (8192, 4096, false),
                (12288, 4096, true),
                (16384, 4096, false)
            ]
        );
        let clipped = image.allocation(6000, 4000);
        assert_eq!(
            clipped,
            [
                Extent {
                    offset: 6000,
                    length: 2192,
                    allocated: true
                },
                Extent {
                    offset: 8192,
                    length: 1808,
                    allocated: false
                }
            ]
        );
    }

    #[test]
    fn readers_asking_for_one_block_at_once_load_it_once() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let cache = BlockCache::new(2);
        let loads = AtomicUsize::new(0);
        let barrier = std::sync::Barrier::new(4);
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    barrier.wait();
                    let block = cache
                        .get_or_load(7, || {
                            loads.fetch_add(1, Ordering::SeqCst);
                            // Long enough for the others to arrive while it loads.
                            std::thread::sleep(std::time::Duration::from_millis(100));
                            Ok(vec![7u8; 16])
                        })
                        .unwrap();
                    assert_eq!(*block, vec![7u8; 16]);
                });
            }
        });
        assert_eq!(loads.load(Ordering::SeqCst), 1);
        // Cached: no load; evicted after two other blocks: loaded again.
        cache.get_or_load(7, || panic!("cached")).unwrap();
        cache.get_or_load(8, || Ok(vec![8])).unwrap();
        cache.get_or_load(9, || Ok(vec![9])).unwrap();
        assert_eq!(*cache.get_or_load(7, || Ok(vec![1])).unwrap(), vec![1]);
    }

    #[test]
    fn a_failed_load_is_tried_again_by_the_next_reader() {
        let cache = BlockCache::new(4);
        let failed = cache.get_or_load(3, || {
            Err(RepoError::Corrupt {
                path: "x".into(),
                offset: None,
                message: "damaged".into(),
            })
        });
        assert!(failed.is_err());
        assert_eq!(*cache.get_or_load(3, || Ok(vec![3])).unwrap(), vec![3]);
    }

    #[test]
    fn block_pieces_cover_the_range_with_shared_blocks_and_merged_zeros() {
        // Blocks of 10 bytes, 35 bytes in all: block 1 and 2 are zeros, 0 and 3 hold data.
        let block = |index: u64| -> Result<Option<Arc<Vec<u8>>>, RepoError> {
            Ok(match index {
                0 => Some(Arc::new((0..10).collect())),
                3 => Some(Arc::new((30..35).collect())),
                _ => None,
            })
        };
        let pieces = block_pieces(5, 29, 35, 10, block).unwrap();
        let lengths: Vec<usize> = pieces.iter().map(Piece::len).collect();
        assert_eq!(lengths, [5, 20, 4]);
        assert_eq!(pieces[0].bytes(), Some(&[5u8, 6, 7, 8, 9][..]));
        assert_eq!(pieces[1].bytes(), None);
        assert_eq!(pieces[2].bytes(), Some(&[30u8, 31, 32, 33][..]));
        assert!(matches!(
            block_pieces(30, 6, 35, 10, block),
            Err(RepoError::ReadPastEnd { .. })
        ));
        assert!(block_pieces(35, 0, 35, 10, block).unwrap().is_empty());
    }

    #[test]
    fn reads_past_the_end_and_reads_of_damage_fail() {
        let image = MemoryImage::from_bytes(vec![7u8; 100]).with_damage(50, 1);
        let mut buf = [0u8; 10];
        image.read_at(0, &mut buf).unwrap();
        assert_eq!(buf, [7u8; 10]);
        assert!(matches!(
            image.read_at(95, &mut buf),
            Err(RepoError::ReadPastEnd { .. })
        ));
        assert!(matches!(
            image.read_at(u64::MAX - 2, &mut buf),
            Err(RepoError::ReadPastEnd { .. })
        ));
        assert!(matches!(
            image.read_at(45, &mut buf),
            Err(RepoError::Corrupt {
                offset: Some(50),
                ..
            })
        ));
    }
}
