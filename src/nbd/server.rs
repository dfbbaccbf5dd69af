//! Sockets and threads of the NBD server: one listener (a Unix socket or TCP), one thread per
//! connection, requests of a connection answered in order.
//!
//! Bounds: a handshake that stalls for `handshake_timeout` is dropped (a client that connects
//! and says nothing holds no thread for long); at most `max_connections` connections at once
//! (more are closed at once); a request reads at most `MAX_REQUEST` (32 MiB) into one buffer
//! per connection, so memory is at most that times the connection limit, plus the image's
//! block cache. Transmission has no idle timeout: an attached client (a loop device, a guest)
//! may be quiet for hours.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use super::protocol::{self as p, Negotiation, Step};
use super::NbdError;
use crate::repo::extent_source::{ExtentSource, Piece};

/// Where the server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddress {
    /// A Unix socket (created 0600; a stale socket file at the path is replaced).
    Unix(PathBuf),
    /// `HOST:PORT` over TCP (no TLS, no authentication: a trusted network only).
    Tcp(String),
}

impl FromStr for ListenAddress {
    type Err = NbdError;
    /// `unix:PATH` or `HOST:PORT`.
    fn from_str(s: &str) -> Result<Self, NbdError> {
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(NbdError::BadAddress(s.into()));
            }
            return Ok(ListenAddress::Unix(PathBuf::from(path)));
        }
        match s.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
                Ok(ListenAddress::Tcp(s.to_string()))
            }
            _ => Err(NbdError::BadAddress(s.into())),
        }
    }
}

/// Limits of a server.
#[derive(Debug, Clone)]
pub struct ServerLimits {
    /// A client must finish the handshake within this.
    pub handshake_timeout: Duration,
    /// Connections served at once.
    pub max_connections: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            handshake_timeout: Duration::from_secs(10),
            max_connections: 8,
        }
    }
}

enum Listener {
    Unix(UnixListener),
    Tcp(TcpListener),
}

/// One connection's socket.
enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Stream {
    fn try_clone(&self) -> std::io::Result<Stream> {
        Ok(match self {
            Stream::Unix(s) => Stream::Unix(s.try_clone()?),
            Stream::Tcp(s) => Stream::Tcp(s.try_clone()?),
        })
    }

    fn shutdown(&self) {
        let _ = match self {
            Stream::Unix(s) => s.shutdown(Shutdown::Both),
            Stream::Tcp(s) => s.shutdown(Shutdown::Both),
        };
    }

    fn set_timeouts(&self, timeout: Option<Duration>) -> std::io::Result<()> {
        match self {
            Stream::Unix(s) => {
                s.set_read_timeout(timeout)?;
                s.set_write_timeout(timeout)
            }
            Stream::Tcp(s) => {
                s.set_read_timeout(timeout)?;
                s.set_write_timeout(timeout)
            }
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Unix(s) => s.read(buf),
            Stream::Tcp(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Unix(s) => s.write(buf),
            Stream::Tcp(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Stream::Unix(s) => s.flush(),
            Stream::Tcp(s) => s.flush(),
        }
    }
}

struct Shared {
    source: Arc<dyn ExtentSource>,
    export: String,
    limits: ServerLimits,
    stop: AtomicBool,
    /// Open connections, to shut them down on close.
    open: Mutex<HashMap<u64, Stream>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    next_id: AtomicU64,
    /// Reads answered with an I/O error (damaged or unreadable backup data).
    failed_reads: AtomicU64,
}

/// A running server. Dropping it (or `close`) stops listening, closes every connection, waits
/// for their threads and removes the Unix socket.
pub struct NbdServer {
    uri: String,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
    socket_path: Option<PathBuf>,
}

/// Binds a Unix socket at `path`, replacing a stale socket file (nobody accepts on it) and
/// refusing anything else at the path.
fn bind_unix(path: &std::path::Path) -> std::io::Result<UnixListener> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(std::io::Error::new(
                ErrorKind::AlreadyExists,
                "something other than a socket is at that path",
            ));
        }
        if UnixStream::connect(path).is_ok() {
            return Err(std::io::Error::new(
                ErrorKind::AddrInUse,
                "another server listens on that socket",
            ));
        }
        std::fs::remove_file(path)?;
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

impl NbdServer {
    /// Starts serving `source` as export `export` (clients may also ask for the default, "").
    pub fn start(
        source: Arc<dyn ExtentSource>,
        export: &str,
        listen: &ListenAddress,
        limits: ServerLimits,
    ) -> Result<Self, NbdError> {
        let listen_error = |source| NbdError::Listen {
            address: match listen {
                ListenAddress::Unix(p) => format!("unix:{}", p.display()),
                ListenAddress::Tcp(a) => a.clone(),
            },
            source,
        };
        let (listener, uri, socket_path) = match listen {
            ListenAddress::Unix(path) => {
                let l = bind_unix(path).map_err(listen_error)?;
                (
                    Listener::Unix(l),
                    format!("nbd+unix:///{export}?socket={}", path.display()),
                    Some(path.clone()),
                )
            }
            ListenAddress::Tcp(address) => {
                let l = TcpListener::bind(address).map_err(listen_error)?;
                let local = l.local_addr().map_err(listen_error)?;
                (Listener::Tcp(l), format!("nbd://{local}/{export}"), None)
            }
        };
        match &listener {
            Listener::Unix(l) => l.set_nonblocking(true),
            Listener::Tcp(l) => l.set_nonblocking(true),
        }
        .map_err(listen_error)?;
        let shared = Arc::new(Shared {
            source,
            export: export.to_string(),
            limits,
            stop: AtomicBool::new(false),
            open: Mutex::new(HashMap::new()),
            threads: Mutex::new(Vec::new()),
            next_id: AtomicU64::new(0),
            failed_reads: AtomicU64::new(0),
        });
        let for_thread = shared.clone();
        let accept = std::thread::Builder::new()
            .name("nbd-accept".into())
            .spawn(move || accept_loop(&for_thread, listener))
            .map_err(listen_error)?;
        Ok(NbdServer {
            uri,
            shared,
            accept: Some(accept),
            socket_path,
        })
    }

    /// The NBD URI clients connect to (`nbd+unix:///EXPORT?socket=PATH` or
    /// `nbd://HOST:PORT/EXPORT`).
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// Connections open now.
    pub fn connections(&self) -> usize {
        self.shared.open.lock().map_or(0, |o| o.len())
    }

    /// Reads answered with an I/O error so far (each also a line in the log): what tells a
    /// client's failure caused by the backup's data from any other.
    pub fn failed_reads(&self) -> u64 {
        self.shared.failed_reads.load(Ordering::Relaxed)
    }

    /// Stops the server (see the type's doc).
    pub fn close(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
        if let Ok(open) = self.shared.open.lock() {
            for stream in open.values() {
                stream.shutdown();
            }
        }
        let threads = self
            .shared
            .threads
            .lock()
            .map(|mut t| std::mem::take(&mut *t))
            .unwrap_or_default();
        for t in threads {
            let _ = t.join();
        }
        if let Some(path) = self.socket_path.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

impl Drop for NbdServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Waits up to 200 ms for the listener to become readable, so `stop` is seen soon.
fn wait_readable(fd: i32) {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: poll on one pollfd we own, for a bounded time.
    unsafe { libc::poll(&mut pfd, 1, 200) };
}

fn accept_loop(shared: &Arc<Shared>, listener: Listener) {
    while !shared.stop.load(Ordering::SeqCst) {
        let accepted = match &listener {
            Listener::Unix(l) => l.accept().map(|(s, _)| {
                let _ = s.set_nonblocking(false);
                Stream::Unix(s)
            }),
            Listener::Tcp(l) => l.accept().map(|(s, _)| {
                let _ = s.set_nonblocking(false);
                let _ = s.set_nodelay(true);
                Stream::Tcp(s)
            }),
        };
        let stream = match accepted {
            Ok(s) => s,
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => {
                let fd = match &listener {
                    Listener::Unix(l) => l.as_raw_fd(),
                    Listener::Tcp(l) => l.as_raw_fd(),
                };
                wait_readable(fd);
                continue;
            }
            Err(e) => {
                log::warn!("NBD server {}: accept failed: {e}", shared.export);
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let open_now = shared.open.lock().map_or(0, |o| o.len());
        if open_now >= shared.limits.max_connections {
            log::warn!(
                "NBD server {}: {open_now} connections open, the limit; closing a new one",
                shared.export
            );
            continue;
        }
        let id = shared.next_id.fetch_add(1, Ordering::SeqCst);
        match (stream.try_clone(), shared.open.lock()) {
            (Ok(clone), Ok(mut open)) => {
                open.insert(id, clone);
            }
            _ => continue,
        }
        let for_thread = shared.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("nbd-conn-{id}"))
            .spawn(move || {
                match serve_connection(&for_thread, stream) {
                    Ok(()) => log::debug!("NBD connection {id} closed"),
                    Err(e) if for_thread.stop.load(Ordering::SeqCst) => {
                        log::debug!("NBD connection {id} closed by the server's stop: {e}")
                    }
                    Err(e) => log::warn!("NBD server {}: connection {id}: {e}", for_thread.export),
                }
                if let Ok(mut open) = for_thread.open.lock() {
                    open.remove(&id);
                }
            });
        match (spawned, shared.threads.lock()) {
            (Ok(handle), Ok(mut threads)) => {
                threads.retain(|t| !t.is_finished());
                threads.push(handle);
            }
            (Err(e), _) => {
                log::warn!("NBD server: cannot start a connection thread: {e}");
                if let Ok(mut open) = shared.open.lock() {
                    if let Some(s) = open.remove(&id) {
                        s.shutdown();
                    }
                }
            }
            _ => {}
        }
    }
}

/// Reads exactly `buf.len()` bytes; `Ok(false)` on a clean end of stream before the first byte.
fn read_or_eof(stream: &mut Stream, buf: &mut [u8]) -> Result<bool, NbdError> {
    let mut filled = 0;
    while filled < buf.len() {
        match stream.read(&mut buf[filled..]) {
            Ok(0) if filled == 0 => return Ok(false),
            Ok(0) => return Err(NbdError::Protocol("the client closed mid-message".into())),
            Ok(n) => filled += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(true)
}

fn serve_connection(shared: &Shared, mut stream: Stream) -> Result<(), NbdError> {
    let size = shared.source.size();
    stream.set_timeouts(Some(shared.limits.handshake_timeout))?;
    stream.write_all(&p::greeting())?;
    let mut flags = [0u8; 4];
    if !read_or_eof(&mut stream, &mut flags)? {
        return Ok(());
    }
    let mut negotiation = Negotiation::new(&shared.export, size, u32::from_be_bytes(flags))?;
    loop {
        let mut header = [0u8; 16];
        if !read_or_eof(&mut stream, &mut header)? {
            return Ok(());
        }
        let (option, length) = p::parse_option_header(&header)?;
        if length > p::MAX_OPTION {
            return Err(NbdError::Protocol(format!(
                "option {option} with {length} bytes of data (at most {} accepted)",
                p::MAX_OPTION
            )));
        }
        let mut data = vec![0u8; length as usize];
        if !read_or_eof(&mut stream, &mut data)? && length > 0 {
            return Ok(());
        }
        match negotiation.option(option, &data) {
            Step::Reply(bytes) => stream.write_all(&bytes)?,
            Step::Transmit(bytes) => {
                stream.write_all(&bytes)?;
                break;
            }
            Step::Close(bytes) => {
                stream.write_all(&bytes)?;
                return Ok(());
            }
        }
    }
    stream.set_timeouts(None)?;
    transmission(shared, &mut stream, &negotiation)
}

/// Sends a read's piece: a verified block's bytes as they are cached, or zeros.
fn write_piece(stream: &mut Stream, piece: &Piece) -> std::io::Result<()> {
    static ZEROS: [u8; 64 << 10] = [0; 64 << 10];
    match piece.bytes() {
        Some(bytes) => stream.write_all(bytes),
        None => {
            let mut left = piece.len();
            while left > 0 {
                let take = left.min(ZEROS.len());
                stream.write_all(&ZEROS[..take])?;
                left -= take;
            }
            Ok(())
        }
    }
}

fn transmission(
    shared: &Shared,
    stream: &mut Stream,
    negotiation: &Negotiation,
) -> Result<(), NbdError> {
    let size = shared.source.size();
    let structured = negotiation.structured;
    loop {
        let mut header = [0u8; 28];
        if !read_or_eof(stream, &mut header)? {
            return Ok(());
        }
        let request = p::parse_request(&header)?;
        let error = |stream: &mut Stream, errno: u32, message: &str| -> std::io::Result<()> {
            if structured {
                stream.write_all(&p::error_chunk(request.cookie, errno, message))
            } else {
                stream.write_all(&p::simple_reply(request.cookie, errno))
            }
        };
        match request.kind {
            p::CMD_READ => {
                if let Some(errno) = p::check_range(&request, size, structured) {
                    error(stream, errno, "read out of range or too long")?;
                    continue;
                }
                // Every block of the range is verified before the reply starts: an error can
                // then still be sent instead of the data.
                match shared
                    .source
                    .read_pieces(request.offset, u64::from(request.length))
                {
                    Ok(pieces) => {
                        if structured {
                            stream.write_all(&p::read_data_chunk(
                                request.cookie,
                                request.offset,
                                request.length,
                            ))?;
                        } else {
                            stream.write_all(&p::simple_reply(request.cookie, 0))?;
                        }
                        for piece in &pieces {
                            write_piece(stream, piece)?;
                        }
                    }
                    Err(e) => {
                        shared.failed_reads.fetch_add(1, Ordering::Relaxed);
                        log::error!(
                            "NBD server {}: read of {} bytes at offset {} failed: {e}",
                            shared.export,
                            request.length,
                            request.offset
                        );
                        error(
                            stream,
                            p::EIO,
                            "the backup's data there does not match its checksum or cannot be read (the server's log names the file and offset)",
                        )?;
                    }
                }
            }
            p::CMD_BLOCK_STATUS => {
                if !structured || !negotiation.allocation_context {
                    error(stream, p::EINVAL, "negotiate base:allocation first")?;
                    continue;
                }
                if let Some(errno) = p::check_range(&request, size, structured) {
                    error(stream, errno, "block status out of range")?;
                    continue;
                }
                let extents = shared
                    .source
                    .allocation(request.offset, u64::from(request.length));
                stream.write_all(&p::block_status_chunk(
                    request.cookie,
                    &extents,
                    request.flags & p::CMD_FLAG_REQ_ONE != 0,
                ))?;
            }
            p::CMD_DISC => return Ok(()),
            p::CMD_FLUSH => {
                if structured {
                    stream.write_all(&p::chunk_header(request.cookie, p::REPLY_FLAG_DONE, 0, 0))?;
                } else {
                    stream.write_all(&p::simple_reply(request.cookie, 0))?;
                }
            }
            p::CMD_WRITE => {
                // Its payload follows the header: read it away to stay in step.
                if request.length > p::MAX_REQUEST {
                    return Err(NbdError::Protocol(format!(
                        "a write of {} bytes to a read-only export",
                        request.length
                    )));
                }
                let mut left = request.length as usize;
                let mut sink = [0u8; 64 << 10];
                while left > 0 {
                    let take = left.min(sink.len());
                    if !read_or_eof(stream, &mut sink[..take])? {
                        return Ok(());
                    }
                    left -= take;
                }
                error(stream, p::EPERM, "the export is read-only")?;
            }
            p::CMD_TRIM | p::CMD_WRITE_ZEROES => {
                error(stream, p::EPERM, "the export is read-only")?;
            }
            _ => error(stream, p::EINVAL, "command not supported")?,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::extent_source::MemoryImage;
    use crate::test_support::noise;

    /// A minimal client for the tests: fixed newstyle, `GO`, optionally structured replies
    /// and `base:allocation`.
    struct Client {
        s: UnixStream,
    }

    impl Client {
        fn connect(path: &std::path::Path, structured: bool) -> Client {
            let mut s = UnixStream::connect(path).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut greeting = [0u8; 18];
            s.read_exact(&mut greeting).unwrap();
            assert_eq!(greeting, p::greeting());
            s.write_all(&3u32.to_be_bytes()).unwrap();
            let mut c = Client { s };
            if structured {
                c.option(p::OPT_STRUCTURED_REPLY, &[]);
                let mut data = 0u32.to_be_bytes().to_vec();
                data.extend_from_slice(&1u32.to_be_bytes());
                data.extend_from_slice(&15u32.to_be_bytes());
                data.extend_from_slice(b"base:allocation");
                c.option(p::OPT_SET_META_CONTEXT, &data);
            }
            c.option(p::OPT_GO, &[0, 0, 0, 0, 0, 0]);
            c
        }

        /// Sends an option and reads replies up to its ACK (or error); returns the last type.
        fn option(&mut self, option: u32, data: &[u8]) -> u32 {
            let mut h = p::IHAVEOPT.to_be_bytes().to_vec();
            h.extend_from_slice(&option.to_be_bytes());
            h.extend_from_slice(&(data.len() as u32).to_be_bytes());
            h.extend_from_slice(data);
            self.s.write_all(&h).unwrap();
            loop {
                let mut r = [0u8; 20];
                self.s.read_exact(&mut r).unwrap();
                let kind = u32::from_be_bytes(r[12..16].try_into().unwrap());
                let len = u32::from_be_bytes(r[16..20].try_into().unwrap());
                let mut payload = vec![0u8; len as usize];
                self.s.read_exact(&mut payload).unwrap();
                if kind == p::REP_ACK || kind >= 1 << 31 {
                    return kind;
                }
            }
        }

        fn request(&mut self, kind: u16, flags: u16, offset: u64, length: u32) {
            let mut r = p::REQUEST_MAGIC.to_be_bytes().to_vec();
            r.extend_from_slice(&flags.to_be_bytes());
            r.extend_from_slice(&kind.to_be_bytes());
            r.extend_from_slice(&42u64.to_be_bytes());
            r.extend_from_slice(&offset.to_be_bytes());
            r.extend_from_slice(&length.to_be_bytes());
            self.s.write_all(&r).unwrap();
        }

        /// A structured reply's one chunk: (flags, type, payload).
        fn chunk(&mut self) -> (u16, u16, Vec<u8>) {
            let mut h = [0u8; 20];
            self.s.read_exact(&mut h).unwrap();
            assert_eq!(&h[..4], &p::STRUCTURED_REPLY_MAGIC.to_be_bytes());
            assert_eq!(u64::from_be_bytes(h[8..16].try_into().unwrap()), 42);
            let len = u32::from_be_bytes(h[16..20].try_into().unwrap());
            let mut payload = vec![0u8; len as usize];
            self.s.read_exact(&mut payload).unwrap();
            (
                u16::from_be_bytes([h[4], h[5]]),
                u16::from_be_bytes([h[6], h[7]]),
                payload,
            )
        }
    }

    fn server(image: MemoryImage) -> (tempfile::TempDir, NbdServer, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let server = NbdServer::start(
            Arc::new(image),
            "vda",
            &ListenAddress::Unix(path.clone()),
            ServerLimits {
                handshake_timeout: Duration::from_millis(300),
                max_connections: 4,
            },
        )
        .unwrap();
        (dir, server, path)
    }

    #[test]
    fn listen_addresses_parse() {
        assert_eq!(
            "unix:/run/x.sock".parse::<ListenAddress>().unwrap(),
            ListenAddress::Unix("/run/x.sock".into())
        );
        assert_eq!(
            "127.0.0.1:10809".parse::<ListenAddress>().unwrap(),
            ListenAddress::Tcp("127.0.0.1:10809".into())
        );
        for bad in ["unix:", "localhost", ":80", "host:port"] {
            assert!(bad.parse::<ListenAddress>().is_err(), "{bad}");
        }
    }

    #[test]
    fn reads_block_status_and_errors_over_a_unix_socket() {
        let mut data = vec![0u8; 1 << 20];
        data[8192..16384].copy_from_slice(&noise(8192, 1));
        let (_dir, server, path) =
            server(MemoryImage::from_bytes(data.clone()).with_damage(600_000, 1));
        assert!(server.uri().starts_with("nbd+unix:///vda?socket="));

        let mut c = Client::connect(&path, true);
        c.request(p::CMD_READ, 0, 8000, 10000);
        let (flags, kind, payload) = c.chunk();
        assert_eq!(
            (flags, kind),
            (p::REPLY_FLAG_DONE, p::REPLY_TYPE_OFFSET_DATA)
        );
        assert_eq!(&payload[..8], &8000u64.to_be_bytes());
        assert_eq!(&payload[8..], &data[8000..18000]);

        c.request(p::CMD_BLOCK_STATUS, 0, 0, 20480);
        let (_, kind, payload) = c.chunk();
        assert_eq!(kind, p::REPLY_TYPE_BLOCK_STATUS);
        let words: Vec<u32> = payload
            .chunks(4)
            .map(|w| u32::from_be_bytes(w.try_into().unwrap()))
            .collect();
        assert_eq!(words, [1, 8192, 3, 8192, 0, 4096, 3]);

        // The damaged range: an error chunk with EIO, never data; the connection goes on.
        c.request(p::CMD_READ, 0, 599_000, 4096);
        let (flags, kind, payload) = c.chunk();
        assert_eq!((flags, kind), (p::REPLY_FLAG_DONE, p::REPLY_TYPE_ERROR));
        assert_eq!(&payload[..4], &p::EIO.to_be_bytes());
        c.request(p::CMD_READ, 0, 1 << 19, 1 << 20);
        let (_, kind, payload) = c.chunk();
        assert_eq!(kind, p::REPLY_TYPE_ERROR);
        assert_eq!(&payload[..4], &p::EINVAL.to_be_bytes());
        c.request(p::CMD_READ, 0, 0, p::MAX_REQUEST + 1);
        let (_, _, payload) = c.chunk();
        assert_eq!(&payload[..4], &p::EOVERFLOW.to_be_bytes());

        // A write is refused after its payload was read away: the next request still works.
        c.request(p::CMD_WRITE, 0, 0, 5);
        c.s.write_all(b"hello").unwrap();
        let (_, _, payload) = c.chunk();
        assert_eq!(&payload[..4], &p::EPERM.to_be_bytes());
        c.request(p::CMD_READ, 0, 0, 4);
        let (_, kind, _) = c.chunk();
        assert_eq!(kind, p::REPLY_TYPE_OFFSET_DATA);
        c.request(p::CMD_DISC, 0, 0, 0);
        server.close();
        assert!(!path.exists(), "the socket is removed on close");
    }

    #[test]
    fn simple_replies_and_several_connections_at_once() {
        let data = noise(1 << 20, 2);
        let (_dir, server, path) = server(MemoryImage::from_bytes(data.clone()));
        let mut a = Client::connect(&path, false);
        let mut b = Client::connect(&path, false);
        for (c, offset) in [(&mut a, 0u64), (&mut b, 4096)] {
            c.request(p::CMD_READ, 0, offset, 512);
            let mut h = [0u8; 16];
            c.s.read_exact(&mut h).unwrap();
            assert_eq!(h, p::simple_reply(42, 0));
            let mut got = vec![0u8; 512];
            c.s.read_exact(&mut got).unwrap();
            assert_eq!(got, data[offset as usize..offset as usize + 512]);
        }
        // Block status without base:allocation: EINVAL in a simple reply.
        a.request(p::CMD_BLOCK_STATUS, 0, 0, 512);
        let mut h = [0u8; 16];
        a.s.read_exact(&mut h).unwrap();
        assert_eq!(h, p::simple_reply(42, p::EINVAL));
        assert_eq!(server.connections(), 2);
        // close() ends connections that are still attached.
        server.close();
        let mut rest = Vec::new();
        assert_eq!(b.s.read_to_end(&mut rest).unwrap_or(0), 0);
    }

    #[test]
    fn a_silent_client_is_dropped_after_the_handshake_timeout() {
        let (_dir, server, path) = server(MemoryImage::from_bytes(vec![0u8; 4096]));
        let mut s = UnixStream::connect(&path).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let started = std::time::Instant::now();
        let mut all = Vec::new();
        s.read_to_end(&mut all).unwrap();
        assert_eq!(all, p::greeting(), "greeting, then closed");
        assert!(started.elapsed() < Duration::from_secs(3));
        drop(server);
    }
}
