//! Page-aligned byte buffers, shared by the Ceph reads that fill them and the direct (O_DIRECT)
//! writes that store them: the kernel then moves the data from our memory to the disk without
//! copying it through the page cache, which is where most of a full backup's system CPU went.
//!
//! No `unsafe`: a buffer is a `Vec<u8>` a page larger than needed, and the aligned window inside
//! it. The window never moves, because the vector is never grown while a buffer is in use.

use std::ops::{Deref, DerefMut};

/// Alignment of the data: a page, which satisfies O_DIRECT on every Linux filesystem.
pub const ALIGN: usize = 4096;

/// A byte buffer whose data starts on an `ALIGN` boundary.
#[derive(Default)]
pub struct AlignedBuf {
    storage: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    /// `len` zero bytes.
    pub fn zeroed(len: usize) -> Self {
        let mut buf = AlignedBuf::default();
        buf.resize(len);
        buf
    }

    /// Makes the buffer `len` bytes long; new bytes are zero, kept bytes keep their value only
    /// when no reallocation was needed (callers overwrite the whole buffer).
    pub fn resize(&mut self, len: usize) {
        if self.start + len > self.storage.len() {
            self.storage = vec![0u8; len + ALIGN];
            let address = self.storage.as_ptr() as usize;
            self.start = (ALIGN - address % ALIGN) % ALIGN;
        } else if len > self.len {
            self.storage[self.start + self.len..self.start + len].fill(0);
        }
        self.len = len;
    }
}

impl Deref for AlignedBuf {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.storage[self.start..self.start + self.len]
    }
}

impl DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.storage[self.start..self.start + self.len]
    }
}

impl std::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AlignedBuf({} bytes)", self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_is_aligned_and_sized_whatever_the_resizes() {
        let mut buf = AlignedBuf::zeroed(10);
        for len in [10usize, 4 << 20, 1, 4096, 3 << 20, 0, 5 << 20] {
            buf.resize(len);
            assert_eq!(buf.len(), len);
            assert_eq!(buf.as_ptr() as usize % ALIGN, 0, "len {len}");
        }
    }

    #[test]
    fn growing_in_place_gives_zeros() {
        let mut buf = AlignedBuf::zeroed(8192);
        buf.fill(7);
        buf.resize(100);
        buf.resize(8192);
        assert!(buf[..100].iter().all(|&b| b == 7));
        assert!(buf[100..].iter().all(|&b| b == 0));
    }
}
