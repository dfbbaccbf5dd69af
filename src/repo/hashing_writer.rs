//! A file writer that checksums what it stores (for rbd diff files).

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::error::RepoError;
use crate::plan::StreamHasher;

/// Writes a new file (mode 0600) and computes the `blake3-4m` checksum of its bytes.
pub struct HashingFileWriter {
    out: BufWriter<File>,
    hasher: StreamHasher,
    path: PathBuf,
}

/// What a finished file holds.
pub struct StoredFile {
    /// Bytes written.
    pub size: u64,
    /// `blake3-4m` of the bytes.
    pub checksum: String,
    /// Its 4 MiB chunk table.
    pub chunks: Vec<[u8; 32]>,
}

impl HashingFileWriter {
    /// Creates `path`, which must not exist.
    pub fn create(path: &Path) -> Result<Self, RepoError> {
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|source| RepoError::Io {
                action: "create",
                path: path.to_path_buf(),
                source,
            })?;
        Ok(HashingFileWriter {
            out: BufWriter::with_capacity(1 << 20, file),
            hasher: StreamHasher::new(),
            path: path.to_path_buf(),
        })
    }

    /// Flushes and fsyncs the file.
    pub fn finish(self) -> Result<StoredFile, RepoError> {
        let path = self.path;
        let file = self.out.into_inner().map_err(|e| RepoError::Io {
            action: "write",
            path: path.clone(),
            source: e.into_error(),
        })?;
        file.sync_all().map_err(|source| RepoError::Io {
            action: "fsync",
            path: path.clone(),
            source,
        })?;
        let size = self.hasher.len();
        let (checksum, chunks) = self.hasher.finish();
        Ok(StoredFile {
            size,
            checksum,
            chunks,
        })
    }
}

impl Write for HashingFileWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.out.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// A stored diff file, plain or zstd-compressed (multithreaded); the checksum is always over
/// the stored bytes, so verify never needs to decompress to find damage.
pub enum StoredDiffWriter {
    /// Uncompressed.
    Plain(HashingFileWriter),
    /// zstd frames.
    Zstd(zstd::Encoder<'static, HashingFileWriter>),
}

impl StoredDiffWriter {
    /// Creates `path`; compressed with zstd at `level` if given.
    pub fn create(path: &Path, level: Option<i32>) -> Result<Self, RepoError> {
        let file = HashingFileWriter::create(path)?;
        let Some(level) = level else {
            return Ok(StoredDiffWriter::Plain(file));
        };
        let io = |source| RepoError::Io {
            action: "start compressing",
            path: path.to_path_buf(),
            source,
        };
        let mut encoder = zstd::Encoder::new(file, level).map_err(io)?;
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
        encoder.multithread(threads).map_err(io)?;
        Ok(StoredDiffWriter::Zstd(encoder))
    }

    /// Ends the stream, fsyncs and returns what was stored.
    pub fn finish(self) -> Result<StoredFile, RepoError> {
        match self {
            StoredDiffWriter::Plain(file) => file.finish(),
            StoredDiffWriter::Zstd(encoder) => {
                let file = encoder.finish().map_err(|source| RepoError::Io {
                    action: "finish compressing",
                    path: PathBuf::from("(diff file)"),
                    source,
                })?;
                file.finish()
            }
        }
    }
}

impl Write for StoredDiffWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            StoredDiffWriter::Plain(f) => f.write(buf),
            StoredDiffWriter::Zstd(e) => e.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            StoredDiffWriter::Plain(f) => f.flush(),
            StoredDiffWriter::Zstd(e) => e.flush(),
        }
    }
}
