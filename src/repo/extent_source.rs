//! A disk image as it was at one backup, readable at any offset: the seam between the
//! repository and whatever serves a backup without restoring it (the NBD server, the FUSE
//! file behind `mount`).
//!
//! [`ExtentSource`] is deliberately small: the image size, a positioned read, and which ranges
//! hold data. Implementations: [`ChainImage`](super::chain_image::ChainImage), a verified view
//! of a repository chain (full + incrementals), and [`MemoryImage`], bytes in memory, which
//! lets the servers be tested byte for byte without a repository.

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

/// A read-only image that can be read at any offset.
///
/// `read_at` either fills the whole buffer with the image's bytes or fails: an implementation
/// that checks its data (as `ChainImage` does) returns an error instead of bytes it cannot
/// vouch for. All methods take `&self` and may be called from several threads at once.
pub trait ExtentSource: Send + Sync {
    /// Image size in bytes.
    fn size(&self) -> u64;

    /// Fills `buf` with the bytes at `offset`. A range past the end is an error
    /// ([`RepoError::ReadPastEnd`]).
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), RepoError>;

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
    data: Vec<u8>,
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
            data,
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

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), RepoError> {
        check_range(offset, buf.len() as u64, self.size())?;
        let end = offset + buf.len() as u64;
        if let Some((bad_start, bad_end)) = self.damaged {
            if offset < bad_end && bad_start < end {
                return Err(RepoError::Corrupt {
                    path: "(memory image)".into(),
                    offset: Some(bad_start.max(offset)),
                    message: "damaged range".into(),
                });
            }
        }
        buf.copy_from_slice(&self.data[offset as usize..end as usize]);
        Ok(())
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
