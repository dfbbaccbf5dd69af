//! A file writer that checksums what it stores (for rbd diff files).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use super::error::RepoError;
use super::image_file::Writeback;
use crate::plan::StreamHasher;

/// Writes a new file (mode 0600) and computes the `blake3-4m` checksum of its bytes.
pub struct HashingFileWriter {
    out: BufWriter<File>,
    hasher: StreamHasher,
    path: PathBuf,
    writeback: Writeback,
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
        let file = super::create_new_file(path)?;
        Ok(HashingFileWriter {
            out: BufWriter::with_capacity(1 << 20, file),
            hasher: StreamHasher::new(),
            path: path.to_path_buf(),
            writeback: Writeback::default(),
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
        let in_file = self.hasher.len() - self.out.buffer().len() as u64;
        self.writeback.advance(self.out.get_ref(), in_file);
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
    Plain(Box<HashingFileWriter>),
    /// zstd frames.
    Zstd(Box<AdaptiveZstd>),
}

/// Input is routed in pieces of this size: compressed, or stored as raw zstd frames.
const ROUTE_CHUNK: usize = 4 << 20;
/// Bytes of each piece compressed on trial (three samples of 16 KiB).
const SAMPLE: usize = 16 << 10;
/// A piece whose samples do not shrink below this share is stored raw.
const WORTH_COMPRESSING: f64 = 0.9;
/// Largest zstd block (the format's limit with a 128 KiB window).
const RAW_BLOCK: usize = 128 << 10;

/// zstd that does not spend CPU on data that does not compress (encrypted or already
/// compressed disk content; the benchmark's random images): each 4 MiB of input is tried on
/// three 16 KiB samples at level 1, and a piece that does not shrink by 10% is written as a
/// zstd frame of raw blocks instead of going through the encoder. The file stays a plain
/// sequence of zstd frames: `zstd -d` and every decoder read it.
pub struct AdaptiveZstd {
    /// The file, while no compressed frame is open.
    file: Option<HashingFileWriter>,
    /// The open compressed frame.
    encoder: Option<zstd::Encoder<'static, HashingFileWriter>>,
    /// Input not routed yet (less than `ROUTE_CHUNK` between writes).
    pending: Vec<u8>,
    level: i32,
    threads: u32,
}

impl AdaptiveZstd {
    fn new(file: HashingFileWriter, level: i32) -> Self {
        AdaptiveZstd {
            file: Some(file),
            encoder: None,
            pending: Vec::with_capacity(ROUTE_CHUNK),
            level,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()) as u32,
        }
    }

    /// Whether `piece` is worth compressing, judged on samples from its start, middle and end.
    fn worth_compressing(piece: &[u8]) -> bool {
        if piece.len() <= 3 * SAMPLE {
            return zstd::bulk::compress(piece, 1)
                .is_ok_and(|c| (c.len() as f64) < piece.len() as f64 * WORTH_COMPRESSING);
        }
        let starts = [0, piece.len() / 2 - SAMPLE / 2, piece.len() - SAMPLE];
        let compressed: usize = starts
            .iter()
            .map(|&s| zstd::bulk::compress(&piece[s..s + SAMPLE], 1).map_or(SAMPLE, |c| c.len()))
            .sum();
        (compressed as f64) < (3 * SAMPLE) as f64 * WORTH_COMPRESSING
    }

    fn route(&mut self, piece: &[u8]) -> std::io::Result<()> {
        if Self::worth_compressing(piece) {
            if self.encoder.is_none() {
                let file = self
                    .file
                    .take()
                    .expect("the file is here when no frame is open");
                let mut encoder = zstd::Encoder::new(file, self.level)?;
                encoder.multithread(self.threads)?;
                self.encoder = Some(encoder);
            }
            self.encoder
                .as_mut()
                .expect("opened above")
                .write_all(piece)
        } else {
            self.close_frame()?;
            write_raw_frame(self.file.as_mut().expect("no frame is open"), piece)
        }
    }

    fn close_frame(&mut self) -> std::io::Result<()> {
        if let Some(encoder) = self.encoder.take() {
            self.file = Some(encoder.finish()?);
        }
        Ok(())
    }

    fn finish(mut self) -> std::io::Result<HashingFileWriter> {
        let rest = std::mem::take(&mut self.pending);
        if !rest.is_empty() {
            self.route(&rest)?;
        }
        self.close_frame()?;
        let mut file = self.file.take().expect("no frame is open");
        if file.hasher.is_empty() {
            // A zstd file holds at least one frame.
            write_raw_frame(&mut file, &[])?;
        }
        Ok(file)
    }
}

impl Write for AdaptiveZstd {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let take = buf.len().min(ROUTE_CHUNK - self.pending.len());
        self.pending.extend_from_slice(&buf[..take]);
        if self.pending.len() == ROUTE_CHUNK {
            // Taken out for `route` to borrow `self`, then put back: one buffer for the run.
            let piece = std::mem::take(&mut self.pending);
            let routed = self.route(&piece);
            self.pending = piece;
            self.pending.clear();
            routed?;
        }
        Ok(take)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match (&mut self.encoder, &mut self.file) {
            (Some(encoder), _) => encoder.flush(),
            (None, Some(file)) => file.flush(),
            (None, None) => Ok(()),
        }
    }
}

/// Writes `data` as one zstd frame of raw (stored) blocks (RFC 8878, section 3.1.1): no
/// content size, no checksum, a 128 KiB window.
fn write_raw_frame(out: &mut impl Write, data: &[u8]) -> std::io::Result<()> {
    const MAGIC: [u8; 4] = 0xFD2F_B528u32.to_le_bytes();
    // Frame header descriptor 0 (no content size, not single segment, no checksum, no
    // dictionary), then the window descriptor: exponent 7, mantissa 0, that is 2^(10+7).
    out.write_all(&MAGIC)?;
    out.write_all(&[0x00, 7 << 3])?;
    let mut blocks = data.chunks(RAW_BLOCK).peekable();
    if blocks.peek().is_none() {
        // An empty last raw block: a frame needs at least one block.
        return out.write_all(&[1, 0, 0]);
    }
    while let Some(block) = blocks.next() {
        let last = u32::from(blocks.peek().is_none());
        // Block header, 3 bytes little-endian: last flag, type 0 (raw), size.
        let header = last | ((block.len() as u32) << 3);
        out.write_all(&header.to_le_bytes()[..3])?;
        out.write_all(block)?;
    }
    Ok(())
}

impl StoredDiffWriter {
    /// Creates `path`; compressed with zstd at `level` if given.
    pub fn create(path: &Path, level: Option<i32>) -> Result<Self, RepoError> {
        let file = HashingFileWriter::create(path)?;
        Ok(match level {
            None => StoredDiffWriter::Plain(Box::new(file)),
            Some(level) => StoredDiffWriter::Zstd(Box::new(AdaptiveZstd::new(file, level))),
        })
    }

    /// Ends the stream, fsyncs and returns what was stored.
    pub fn finish(self) -> Result<StoredFile, RepoError> {
        match self {
            StoredDiffWriter::Plain(file) => (*file).finish(),
            StoredDiffWriter::Zstd(zstd) => {
                let file = (*zstd).finish().map_err(|source| RepoError::Io {
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

#[cfg(test)]
mod tests {
    use super::*;

    use crate::test_support::noise as random;

    fn stored(parts: &[&[u8]]) -> (Vec<u8>, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vda.rbdiff.zst");
        let mut w = StoredDiffWriter::create(&path, Some(3)).unwrap();
        let mut input = Vec::new();
        for part in parts {
            // Odd write sizes, as the rbd diff writer's records make them.
            for piece in part.chunks(1_000_003) {
                w.write_all(piece).unwrap();
            }
            input.extend_from_slice(part);
        }
        let file = w.finish().unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(file.size, bytes.len() as u64);
        (input, bytes)
    }

    #[test]
    fn incompressible_pieces_are_stored_raw_and_everything_decodes() {
        let text: Vec<u8> = b"virt-rbd-backup "
            .iter()
            .copied()
            .cycle()
            .take(9 << 20)
            .collect();
        let noise = random(10 << 20, 7);
        let (input, bytes) = stored(&[&noise, &text, &noise[..5 << 20], &text[..100]]);
        assert_eq!(zstd::decode_all(&bytes[..]).unwrap(), input);
        // The noise opens the file as a frame of raw blocks (window 128 KiB, first block a full
        // raw one), not as an encoder's frame (its window is larger).
        let first_block = u32::from_le_bytes([bytes[6], bytes[7], bytes[8], 0]);
        assert_eq!(&bytes[4..6], &[0x00, 7 << 3]);
        assert_eq!(first_block, (RAW_BLOCK as u32) << 3);
        // Raw frames cost their headers, 3 bytes per 128 KiB block; the text compresses.
        assert!(
            bytes.len() < (15 << 20) + (15 << 20) / RAW_BLOCK * 3 + 4096,
            "{}",
            bytes.len()
        );
        // The stock tool reads it too.
        let out = std::process::Command::new("zstd")
            .args(["-d", "-c"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                let mut stdin = child.stdin.take().unwrap();
                let data = bytes.clone();
                let feeder = std::thread::spawn(move || stdin.write_all(&data));
                let out = child.wait_with_output()?;
                feeder.join().unwrap()?;
                Ok(out)
            })
            .expect("the zstd command (lab/install-deps.sh installs it)");
        assert!(out.status.success());
        assert_eq!(out.stdout, input);
    }

    #[test]
    fn compressible_input_is_compressed_and_empty_input_is_a_valid_file() {
        let text: Vec<u8> = b"0123456789abcdef"
            .iter()
            .copied()
            .cycle()
            .take(6 << 20)
            .collect();
        let (input, bytes) = stored(&[&text]);
        assert!(bytes.len() < input.len() / 100);
        assert_eq!(zstd::decode_all(&bytes[..]).unwrap(), input);
        let (input, bytes) = stored(&[]);
        assert!(input.is_empty());
        assert!(zstd::decode_all(&bytes[..]).unwrap().is_empty());
    }

    #[test]
    fn a_raw_frame_of_nothing_or_of_one_block_decodes() {
        for len in [0usize, 1, RAW_BLOCK, RAW_BLOCK + 1] {
            let data = random(len, 3);
            let mut frame = Vec::new();
            write_raw_frame(&mut frame, &data).unwrap();
            assert_eq!(zstd::decode_all(&frame[..]).unwrap(), data, "{len}");
        }
    }
}
