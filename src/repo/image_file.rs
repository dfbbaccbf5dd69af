//! Writing a sparse raw image file: only non-zero data is written, the rest stays a hole.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use super::error::RepoError;
use crate::buffer::{AlignedBuf, ALIGN};

/// Granularity of hole detection: a filesystem block.
const ZERO_CHECK: usize = 4096;

/// Writeback is started for every this many bytes of the file behind the write position
/// (buffered files only).
const WRITEBACK_WINDOW: u64 = 32 << 20;

/// Threads writing a direct file: two writes in flight gave 1.4 GB/s on the lab's virtio disk
/// against 0.95 for one, four no more than two.
const DIRECT_WRITERS: usize = 2;

/// A raw image file being written. Created with its final size as one hole; only the non-zero
/// 4 KiB runs of each block are written.
///
/// On local disk filesystems (ext4, xfs, btrfs, f2fs) the file is switched to O_DIRECT and
/// blocks are written by two threads straight from the buffers they were read into: no copy
/// into the page cache (most of a full backup's system CPU before: an export of 1 GiB took 1.0
/// to 1.26 s with buffered writes and 0.47 to 0.53 s with writes left out), and zero detection
/// off the reading thread. Elsewhere (NFS, CIFS, FUSE, ZFS, tmpfs) writes are buffered, and the
/// writer starts writeback of each 32 MiB window as the export moves past it, so the final
/// fsync has little left and dirty page cache stays bounded.
pub struct SparseImageWriter {
    path: PathBuf,
    mode: WriteMode,
}

enum WriteMode {
    Direct(DirectWriter),
    Buffered(BufferedWriter),
}

impl SparseImageWriter {
    /// Creates `path` (mode 0600, must not exist) with `size` bytes, all a hole.
    pub fn create(path: &Path, size: u64) -> Result<Self, RepoError> {
        Self::create_with(path, size, true)
    }

    /// `create`, trying O_DIRECT only if `direct`.
    fn create_with(path: &Path, size: u64, direct: bool) -> Result<Self, RepoError> {
        let io = |action: &'static str| {
            let path = path.to_path_buf();
            move |source| RepoError::Io {
                action,
                path,
                source,
            }
        };
        let file = super::create_new_file(path)?;
        file.set_len(size).map_err(io("set size of"))?;
        let mode = if direct && local_disk_filesystem(&file) && set_direct(&file) {
            WriteMode::Direct(DirectWriter::start(file, path, size))
        } else {
            WriteMode::Buffered(BufferedWriter::new(file))
        };
        Ok(SparseImageWriter {
            path: path.to_path_buf(),
            mode,
        })
    }

    /// Whether writes bypass the page cache.
    pub fn is_direct(&self) -> bool {
        matches!(self.mode, WriteMode::Direct(_))
    }

    /// Stores `data` at `offset` (a multiple of 4 KiB): its non-zero 4 KiB runs are written,
    /// zero runs stay holes. Hands back a buffer the writer is done with, if any, for reuse.
    pub fn write_block(
        &mut self,
        offset: u64,
        data: AlignedBuf,
    ) -> Result<Option<AlignedBuf>, RepoError> {
        match &mut self.mode {
            WriteMode::Direct(direct) => direct.write(offset, data),
            WriteMode::Buffered(buffered) => {
                buffered.write_at(&self.path, offset, &data)?;
                Ok(Some(data))
            }
        }
    }

    /// Bytes of data written so far.
    pub fn bytes_written(&self) -> u64 {
        match &self.mode {
            WriteMode::Direct(direct) => direct.shared.bytes_written.load(Ordering::Relaxed),
            WriteMode::Buffered(buffered) => buffered.bytes_written,
        }
    }

    /// Waits for every write and flushes the file to stable storage. Returns the bytes of
    /// data written.
    pub fn finish(self) -> Result<u64, RepoError> {
        let written = self.bytes_written();
        let fsync = |file: &File| {
            file.sync_all().map_err(|source| RepoError::Io {
                action: "fsync",
                path: self.path.clone(),
                source,
            })
        };
        match self.mode {
            WriteMode::Direct(mut direct) => {
                direct.stop()?;
                let written = direct.shared.bytes_written.load(Ordering::Relaxed);
                if let Some(buffered) = direct
                    .shared
                    .buffered_fallback
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .as_ref()
                {
                    fsync(buffered)?;
                }
                fsync(&direct.shared.file)?;
                Ok(written)
            }
            WriteMode::Buffered(buffered) => {
                fsync(&buffered.file)?;
                Ok(written)
            }
        }
    }
}

/// Whether `file` is on a local disk filesystem whose direct I/O is known to be fast and
/// exact: ext4, xfs, btrfs, f2fs. Network filesystems (NFS, CIFS, CephFS), FUSE and ZFS get
/// buffered writes: their direct I/O ranges from synchronous round trips per write to being
/// ignored, depending on the server and version.
fn local_disk_filesystem(file: &File) -> bool {
    use std::os::fd::AsRawFd;
    const EXT4: i64 = 0xEF53;
    const XFS: i64 = 0x5846_5342;
    const BTRFS: i64 = 0x9123_683E;
    const F2FS: i64 = 0xF2F5_2010;
    // SAFETY: statfs is a plain C struct, for which all zero bytes are a valid value.
    let mut stats: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: fstatfs fills the struct we pass; the descriptor is ours and open.
    if unsafe { libc::fstatfs(file.as_raw_fd(), &mut stats) } != 0 {
        return false;
    }
    matches!(stats.f_type as i64, EXT4 | XFS | BTRFS | F2FS)
}

/// Switches `file` to direct I/O; false if the filesystem refuses.
fn set_direct(file: &File) -> bool {
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    // SAFETY: fcntl on a descriptor we own; no memory is passed.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        flags >= 0 && libc::fcntl(fd, libc::F_SETFL, flags | libc::O_DIRECT) == 0
    }
}

/// Buffered writes on the caller's thread, with early writeback.
struct BufferedWriter {
    file: File,
    bytes_written: u64,
    writeback: Writeback,
}

impl BufferedWriter {
    fn new(file: File) -> Self {
        BufferedWriter {
            file,
            bytes_written: 0,
            writeback: Writeback::default(),
        }
    }

    fn write_at(&mut self, path: &Path, offset: u64, data: &[u8]) -> Result<(), RepoError> {
        for (start, end) in nonzero_runs(data, ZERO_CHECK) {
            self.file
                .write_all_at(&data[start..end], offset + start as u64)
                .map_err(|source| RepoError::Io {
                    action: "write",
                    path: path.to_path_buf(),
                    source,
                })?;
            self.bytes_written += (end - start) as u64;
        }
        self.writeback
            .advance(&self.file, offset + data.len() as u64);
        Ok(())
    }
}

/// Early writeback of a file written front to back through the page cache: each 32 MiB window
/// the writer moved past is handed to the disk, and the one before it waited for. The final
/// fsync then has little left (it was 0.47 s for 1 GiB when everything was left to it), and
/// dirty page cache stays bounded whatever the file size.
#[derive(Default)]
pub(crate) struct Writeback {
    /// Start of the window whose writeback has not been started yet.
    from: u64,
    /// Window whose writeback was started and not yet waited for.
    in_flight: Option<(u64, u64)>,
}

impl Writeback {
    /// The file now holds its bytes up to `written_to`. Only a hint to the kernel: failures
    /// are left for the final fsync to report.
    pub(crate) fn advance(&mut self, file: &File, written_to: u64) {
        use std::os::fd::AsRawFd;
        if written_to < self.from + WRITEBACK_WINDOW {
            return;
        }
        let fd = file.as_raw_fd();
        if let Some((from, len)) = self.in_flight.take() {
            // SAFETY: plain syscall on a file descriptor the caller owns; no memory is passed.
            unsafe {
                libc::sync_file_range(
                    fd,
                    from as libc::off64_t,
                    len as libc::off64_t,
                    libc::SYNC_FILE_RANGE_WAIT_BEFORE
                        | libc::SYNC_FILE_RANGE_WRITE
                        | libc::SYNC_FILE_RANGE_WAIT_AFTER,
                )
            };
        }
        let (from, len) = (self.from, written_to - self.from);
        // SAFETY: as above.
        unsafe {
            libc::sync_file_range(
                fd,
                from as libc::off64_t,
                len as libc::off64_t,
                libc::SYNC_FILE_RANGE_WRITE,
            )
        };
        self.in_flight = Some((from, len));
        self.from = written_to;
    }
}

/// What the direct writer threads share with the owner.
struct DirectShared {
    /// Opened with O_DIRECT.
    file: File,
    path: PathBuf,
    size: u64,
    bytes_written: AtomicU64,
    /// Buffers written, for reuse.
    spare: Mutex<Vec<AlignedBuf>>,
    /// The first write error; later blocks are not written.
    error: Mutex<Option<std::io::Error>>,
    /// A buffered descriptor, opened if the filesystem refuses a direct write after all.
    buffered_fallback: Mutex<Option<File>>,
}

/// O_DIRECT writes on `DIRECT_WRITERS` threads, fed through a short queue (which bounds the
/// memory held by blocks waiting to be written).
struct DirectWriter {
    shared: Arc<DirectShared>,
    jobs: Option<SyncSender<(u64, AlignedBuf)>>,
    threads: Vec<JoinHandle<()>>,
}

impl DirectWriter {
    fn start(file: File, path: &Path, size: u64) -> Self {
        let shared = Arc::new(DirectShared {
            file,
            path: path.to_path_buf(),
            size,
            bytes_written: AtomicU64::new(0),
            spare: Mutex::new(Vec::new()),
            error: Mutex::new(None),
            buffered_fallback: Mutex::new(None),
        });
        let (jobs, queue) = sync_channel::<(u64, AlignedBuf)>(DIRECT_WRITERS);
        let queue = Arc::new(Mutex::new(queue));
        let threads = (0..DIRECT_WRITERS)
            .map(|_| {
                let (shared, queue) = (Arc::clone(&shared), Arc::clone(&queue));
                std::thread::spawn(move || write_queued_blocks(&shared, &queue))
            })
            .collect();
        DirectWriter {
            shared,
            jobs: Some(jobs),
            threads,
        }
    }

    fn first_error(&self) -> Option<RepoError> {
        let error = self.shared.error.lock().unwrap_or_else(|p| p.into_inner());
        error.as_ref().map(|e| RepoError::Io {
            action: "write",
            path: self.shared.path.clone(),
            source: std::io::Error::new(e.kind(), e.to_string()),
        })
    }

    fn write(&mut self, offset: u64, data: AlignedBuf) -> Result<Option<AlignedBuf>, RepoError> {
        if let Some(error) = self.first_error() {
            return Err(error);
        }
        let jobs = self.jobs.as_ref().expect("jobs are open until stop");
        if jobs.send((offset, data)).is_err() {
            // Every thread ended, which they only do after an error... or a panic.
            return Err(self.first_error().unwrap_or_else(|| RepoError::Io {
                action: "write",
                path: self.shared.path.clone(),
                source: std::io::Error::other("the writer threads stopped"),
            }));
        }
        Ok(self
            .shared
            .spare
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop())
    }

    /// Closes the queue and waits for the threads; reports the first write error.
    fn stop(&mut self) -> Result<(), RepoError> {
        self.jobs = None;
        let mut panicked = false;
        for thread in self.threads.drain(..) {
            panicked |= thread.join().is_err();
        }
        if let Some(error) = self.first_error() {
            return Err(error);
        }
        if panicked {
            return Err(RepoError::Io {
                action: "write",
                path: self.shared.path.clone(),
                source: std::io::Error::other("a writer thread panicked"),
            });
        }
        Ok(())
    }
}

impl Drop for DirectWriter {
    fn drop(&mut self) {
        // No thread outlives the writer, also when an export fails midway.
        let _ = self.stop();
    }
}

/// A writer thread: takes blocks off the queue until it is closed, writes their non-zero runs.
fn write_queued_blocks(shared: &DirectShared, queue: &Mutex<Receiver<(u64, AlignedBuf)>>) {
    loop {
        let job = queue.lock().unwrap_or_else(|p| p.into_inner()).recv();
        let Ok((offset, data)) = job else { return };
        let failed = shared
            .error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some();
        if !failed {
            if let Err(e) = write_direct_runs(shared, offset, &data) {
                shared
                    .error
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get_or_insert(e);
            }
        }
        shared
            .spare
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(data);
    }
}

/// Writes the non-zero 4 KiB runs of `data` at `offset` through the direct descriptor.
fn write_direct_runs(shared: &DirectShared, offset: u64, data: &[u8]) -> std::io::Result<()> {
    for (start, end) in nonzero_runs(data, ZERO_CHECK) {
        let at = offset + start as u64;
        let run = &data[start..end];
        let result = if run.len() % ALIGN == 0 {
            shared.file.write_all_at(run, at)
        } else {
            // The image's last bytes, shorter than a page: a direct write must be whole pages,
            // and writing past the end would change the file's size.
            write_buffered(shared, run, at)
        };
        match result {
            // A filesystem that accepted O_DIRECT at open but not for this write.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => write_buffered(shared, run, at)?,
            other => other?,
        }
        shared
            .bytes_written
            .fetch_add(run.len() as u64, Ordering::Relaxed);
    }
    debug_assert!(offset + data.len() as u64 <= shared.size);
    Ok(())
}

/// Writes through a second, buffered descriptor of the same file (fsynced at the end).
fn write_buffered(shared: &DirectShared, run: &[u8], at: u64) -> std::io::Result<()> {
    let mut fallback = shared
        .buffered_fallback
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if fallback.is_none() {
        *fallback = Some(OpenOptions::new().write(true).open(&shared.path)?);
    }
    fallback
        .as_ref()
        .expect("opened above")
        .write_all_at(run, at)
}

/// `[start, end)` byte ranges of `data` made of `granule`-sized pieces that are not all zero,
/// adjacent pieces merged.
pub fn nonzero_runs(data: &[u8], granule: usize) -> Vec<(usize, usize)> {
    let mut runs: Vec<(usize, usize)> = Vec::new();
    let mut pos = 0;
    while pos < data.len() {
        let end = (pos + granule).min(data.len());
        if !is_zero(&data[pos..end]) {
            match runs.last_mut() {
                Some(last) if last.1 == pos => last.1 = end,
                _ => runs.push((pos, end)),
            }
        }
        pos = end;
    }
    runs
}

/// Whether every byte is zero, 16 bytes at a time (the compiler vectorises the loop).
pub fn is_zero(data: &[u8]) -> bool {
    let mut chunks = data.chunks_exact(16);
    let words_zero = chunks
        .by_ref()
        .all(|c| u128::from_ne_bytes(c.try_into().expect("chunks_exact yields 16 bytes")) == 0);
    words_zero && chunks.remainder().iter().all(|&b| b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn runs_of_nonzero_granules_are_found_and_merged() {
        let mut d = vec![0u8; 5 * 4096];
        d[10] = 1;
        d[4096 + 5] = 1;
        d[4 * 4096 + 4095] = 7;
        assert_eq!(
            nonzero_runs(&d, 4096),
            vec![(0, 2 * 4096), (4 * 4096, 5 * 4096)]
        );
        assert!(nonzero_runs(&vec![0u8; 8192], 4096).is_empty());
        assert_eq!(nonzero_runs(&[0, 0, 3], 4096), vec![(0, 3)]);
    }

    #[test]
    fn zero_detection_sees_every_byte() {
        for i in 0..37 {
            let mut d = vec![0u8; 37];
            assert!(is_zero(&d));
            d[i] = 1;
            assert!(!is_zero(&d), "byte {i}");
        }
    }

    #[test]
    fn written_file_is_sparse_and_has_the_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vda.raw");
        let size = 64 << 20;
        let mut w = SparseImageWriter::create(&path, size).unwrap();
        let mut block = AlignedBuf::zeroed(1 << 20);
        block[..4096].fill(0xab);
        w.write_block(32 << 20, block).unwrap();
        assert_eq!(w.finish().unwrap(), 4096);
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.len(), size);
        assert!(
            meta.blocks() * 512 <= 64 * 1024,
            "file is not sparse: {} blocks",
            meta.blocks()
        );
        let content = std::fs::read(&path).unwrap();
        assert!(content[(32 << 20)..(32 << 20) + 4096]
            .iter()
            .all(|&b| b == 0xab));
        assert_eq!(content.iter().filter(|&&b| b != 0).count(), 4096);
    }

    #[test]
    fn direct_and_buffered_writes_store_every_block_and_a_short_tail() {
        for direct in [true, false] {
            blocks_and_a_short_tail_are_stored(direct);
        }
    }

    fn blocks_and_a_short_tail_are_stored(direct: bool) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vda.raw");
        // Three blocks of 1 MiB and a tail of 100 bytes, written in any order.
        let size = (3 << 20) + 100;
        let mut w = SparseImageWriter::create_with(&path, size, direct).unwrap();
        // Direct when asked for and the temporary folder is on a local disk filesystem.
        let local = local_disk_filesystem(&File::open(&path).unwrap());
        assert_eq!(w.is_direct(), direct && local);
        let mut expected = vec![0u8; size as usize];
        for (offset, len, fill) in [
            (1u64 << 20, 1usize << 20, 1u8),
            (3 << 20, 100, 3),
            (0, 1 << 20, 0),
            (2 << 20, 1 << 20, 2),
        ] {
            let mut buf = AlignedBuf::zeroed(len);
            buf.fill(fill);
            if fill == 2 {
                buf[..4096].fill(0); // a hole inside a block
            }
            expected[offset as usize..offset as usize + len].copy_from_slice(&buf);
            w.write_block(offset, buf).unwrap();
        }
        let data_bytes = expected.iter().filter(|&&b| b != 0).count() as u64;
        assert_eq!(w.finish().unwrap(), data_bytes);
        assert_eq!(std::fs::read(&path).unwrap(), expected);
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.len(), size);
        assert!(
            meta.blocks() * 512 <= (2 << 20) + 8192 + 8192,
            "not sparse: {}",
            meta.blocks()
        );
    }

    #[test]
    fn existing_files_are_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vda.raw");
        std::fs::write(&path, b"keep").unwrap();
        assert!(SparseImageWriter::create(&path, 10).is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"keep");
    }
}
