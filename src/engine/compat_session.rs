//! The original tool's `CephConnection` state machine, for its scripting API
//! (`virt_rbd_backup.compat.ceph`): one cluster, at most one pool and one image open at a
//! time, snapshots created, protected, unprotected and removed by name, an image read by
//! offset or streamed into `restic backup --stdin`.
//!
//! The C library's lifetimes (an image borrows its pool, a pool its cluster) are kept without
//! `unsafe` by giving each session a thread of its own: the cluster lives in that thread's
//! frame, an open pool in the frame of a call nested in it, an open image one level deeper.
//! Requests travel over a channel; a request the current level does not serve (opening another
//! pool while an image is open) makes the inner levels return, which closes what they hold, in
//! order, before the outer level serves it.
//!
//! # Snapshots a script forgets
//!
//! The original's `main.py` removes its snapshots only on the success path, so every failure
//! leaked a protected snapshot. Every snapshot created through a session is therefore recorded
//! here (process id, cluster, key, pool, image, name) until it is removed through a session;
//! [`remove_leftover_snapshots`] removes what this process created and did not remove (the
//! Python side calls it when the process exits). The original's flow creates the snapshots on
//! one connection and removes them on another, so closing a session must not remove them.
//! Records carry the process id: a forked child (the original's worker processes) inherits its
//! parent's records and must leave them to the parent.

use std::sync::Mutex;
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender};

use super::export::{export_stream, ExportProgress, ReadPipeline};
use super::restic::{host_name, ResticTarget};
use super::CancelToken;
use crate::buffer::AlignedBuf;
use crate::ceph::{CephError, CephTimeouts, ClusterAddress, PoolContext, RadosCluster, RbdImage};
use crate::error::Error;
use crate::secret::SecretString;

/// Reads in flight while streaming an image into restic (as a backup run's default).
const STREAM_QUEUE_DEPTH: usize = 8;

/// The largest single `read` a script may ask for; the original read 4 MiB at a time.
pub const MAX_READ: u64 = 256 << 20;

type Reply<T> = Sender<Result<T, Error>>;

/// What a session's thread is asked to do.
enum Request {
    PoolExists(String, Reply<bool>),
    OpenPool {
        pool: String,
        namespace: Option<String>,
        reply: Reply<()>,
    },
    ClosePool(Reply<()>),
    OpenImage {
        name: String,
        snapshot: Option<String>,
        read_only: bool,
        reply: Reply<()>,
    },
    CloseImage(Reply<()>),
    CreateSnapshot(String, Reply<()>),
    ProtectSnapshot(String, Reply<()>),
    UnprotectSnapshot(String, Reply<()>),
    IsProtected(String, Reply<bool>),
    RemoveSnapshot(String, Reply<()>),
    Size(Reply<u64>),
    Read {
        offset: u64,
        length: u64,
        reply: Reply<Vec<u8>>,
    },
    StreamToRestic {
        target: ResticTarget,
        filename: String,
        cancel: CancelToken,
        reply: Reply<String>,
    },
}

/// A connection with at most one open pool and image, as the original's `CephConnection`.
pub struct CephSession {
    requests: Option<Sender<Request>>,
    thread: Option<JoinHandle<()>>,
    address: ClusterAddress,
    key: Option<SecretString>,
    timeouts: CephTimeouts,
    pool: Option<(String, Option<String>)>,
    image: Option<String>,
}

impl CephSession {
    /// Connects to the cluster at `address` as its user, with `key` (base64) or, without one,
    /// whatever keyring the configuration names.
    pub fn connect(
        address: ClusterAddress,
        key: Option<SecretString>,
        timeouts: CephTimeouts,
    ) -> Result<Self, Error> {
        let cluster = RadosCluster::connect(&address, key.as_ref(), timeouts)?;
        let (sender, receiver) = crossbeam_channel::unbounded();
        let thread = std::thread::Builder::new()
            .name("ceph-session".into())
            .spawn(move || serve_cluster(&cluster, &receiver))
            .map_err(|e| Error::Usage(format!("cannot start a thread: {e}")))?;
        Ok(CephSession {
            requests: Some(sender),
            thread: Some(thread),
            address,
            key,
            timeouts,
            pool: None,
            image: None,
        })
    }

    fn ask<T>(&self, request: impl FnOnce(Reply<T>) -> Request) -> Result<T, Error> {
        let (reply, answer) = crossbeam_channel::bounded(1);
        let gone = || Error::Usage("the Ceph session's thread has ended (a bug)".into());
        self.requests
            .as_ref()
            .ok_or_else(gone)?
            .send(request(reply))
            .map_err(|_| gone())?;
        answer.recv().map_err(|_| gone())?
    }

    /// Whether pool `pool` exists.
    pub fn pool_exists(&self, pool: &str) -> Result<bool, Error> {
        self.ask(|reply| Request::PoolExists(pool.to_string(), reply))
    }

    /// Opens `pool` (in `namespace`), closing the image and pool open before.
    pub fn open_pool(&mut self, pool: &str, namespace: Option<&str>) -> Result<(), Error> {
        self.image = None;
        self.pool = None;
        self.ask(|reply| Request::OpenPool {
            pool: pool.to_string(),
            namespace: namespace.map(str::to_string),
            reply,
        })?;
        self.pool = Some((pool.to_string(), namespace.map(str::to_string)));
        Ok(())
    }

    /// Closes the pool (and the image open in it); nothing to do if none is open.
    pub fn close_pool(&mut self) -> Result<(), Error> {
        self.image = None;
        self.pool = None;
        self.ask(Request::ClosePool)
    }

    /// Opens image `name` of the open pool, at `snapshot` (read-only) or at its head,
    /// closing the image open before.
    pub fn open_image(
        &mut self,
        name: &str,
        snapshot: Option<&str>,
        read_only: bool,
    ) -> Result<(), Error> {
        self.image = None;
        self.ask(|reply| Request::OpenImage {
            name: name.to_string(),
            snapshot: snapshot.map(str::to_string),
            read_only,
            reply,
        })?;
        self.image = Some(name.to_string());
        Ok(())
    }

    /// Closes the image; nothing to do if none is open.
    pub fn close_image(&mut self) -> Result<(), Error> {
        self.image = None;
        self.ask(Request::CloseImage)
    }

    /// Creates snapshot `name` of the open image and records it until it is removed (see the
    /// module doc); `keep` leaves it unrecorded, for a script that keeps it on purpose.
    pub fn create_snapshot(&self, name: &str, keep: bool) -> Result<(), Error> {
        self.ask(|reply| Request::CreateSnapshot(name.to_string(), reply))?;
        if !keep {
            if let Some(record) = self.record(name) {
                created().push(record);
            }
        }
        Ok(())
    }

    /// Protects snapshot `name` of the open image.
    pub fn protect_snapshot(&self, name: &str) -> Result<(), Error> {
        self.ask(|reply| Request::ProtectSnapshot(name.to_string(), reply))
    }

    /// Lifts the protection of snapshot `name` of the open image.
    pub fn unprotect_snapshot(&self, name: &str) -> Result<(), Error> {
        self.ask(|reply| Request::UnprotectSnapshot(name.to_string(), reply))
    }

    /// Whether snapshot `name` of the open image is protected.
    pub fn snapshot_is_protected(&self, name: &str) -> Result<bool, Error> {
        self.ask(|reply| Request::IsProtected(name.to_string(), reply))
    }

    /// Removes snapshot `name` of the open image (protected ones fail; unprotect first).
    pub fn remove_snapshot(&self, name: &str) -> Result<(), Error> {
        self.ask(|reply| Request::RemoveSnapshot(name.to_string(), reply))?;
        if let Some(record) = self.record(name) {
            created().retain(|r| !r.same_snapshot(&record));
        }
        Ok(())
    }

    /// The open image's size in bytes (at its snapshot, if opened at one).
    pub fn size(&self) -> Result<u64, Error> {
        self.ask(Request::Size)
    }

    /// Reads `length` bytes at `offset` of the open image; fewer at its end, none past it.
    pub fn read(&self, offset: u64, length: u64) -> Result<Vec<u8>, Error> {
        if length > MAX_READ {
            return Err(Error::Usage(format!(
                "a read of {length} bytes is more than the {MAX_READ} a single read may ask for; read in pieces"
            )));
        }
        self.ask(|reply| Request::Read {
            offset,
            length,
            reply,
        })
    }

    /// Streams the whole open image into `restic backup --stdin --stdin-filename FILENAME`
    /// of `target` and returns restic's snapshot id. Unallocated blocks are sent as zeros
    /// without being read. Cancelling stops restic before it records a snapshot.
    pub fn stream_to_restic(
        &self,
        target: &ResticTarget,
        filename: &str,
        cancel: &CancelToken,
    ) -> Result<String, Error> {
        target.validate()?;
        self.ask(|reply| Request::StreamToRestic {
            target: target.clone(),
            filename: filename.to_string(),
            cancel: cancel.clone(),
            reply,
        })
    }

    fn record(&self, snapshot: &str) -> Option<CreatedSnapshot> {
        let (pool, namespace) = self.pool.clone()?;
        Some(CreatedSnapshot {
            pid: std::process::id(),
            address: self.address.clone(),
            key: self.key.clone(),
            timeouts: self.timeouts,
            pool,
            namespace,
            image: self.image.clone()?,
            snapshot: snapshot.to_string(),
        })
    }
}

impl Drop for CephSession {
    fn drop(&mut self) {
        // Closing the channel makes every level return: image, pool, cluster are closed in order.
        self.requests = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// What a level of the session's thread does next.
enum Leave {
    /// The channel is closed: the session is gone.
    Stop,
    /// This request belongs to an outer level (after this level's resource is closed).
    Forward(Request),
}

fn serve_cluster(cluster: &RadosCluster, requests: &Receiver<Request>) {
    let mut pending = requests.recv().ok();
    while let Some(request) = pending.take() {
        match request {
            Request::PoolExists(pool, reply) => send(&reply, cluster.pool_exists(&pool)),
            Request::OpenPool {
                pool,
                namespace,
                reply,
            } => match cluster.open_pool(&pool, namespace.as_deref()) {
                Ok(ctx) => {
                    send::<(), Error>(&reply, Ok(()));
                    match serve_pool(cluster, &ctx, requests) {
                        Leave::Stop => return,
                        Leave::Forward(request) => {
                            drop(ctx);
                            pending = Some(request);
                            continue;
                        }
                    }
                }
                Err(e) => send(&reply, Err(e)),
            },
            Request::ClosePool(reply) | Request::CloseImage(reply) => {
                send::<(), Error>(&reply, Ok(()))
            }
            other => refuse(other, "no pool is open"),
        }
        pending = requests.recv().ok();
    }
}

fn serve_pool(
    cluster: &RadosCluster,
    pool: &PoolContext<'_>,
    requests: &Receiver<Request>,
) -> Leave {
    let mut pending = requests.recv().ok();
    while let Some(request) = pending.take() {
        match request {
            Request::PoolExists(name, reply) => send(&reply, cluster.pool_exists(&name)),
            Request::OpenImage {
                name,
                snapshot,
                read_only,
                reply,
            } => {
                let opened = match (snapshot.as_deref(), read_only) {
                    (Some(snap), _) => RbdImage::open_at_snapshot(pool, &name, snap),
                    (None, true) => RbdImage::open_read_only(pool, &name),
                    (None, false) => RbdImage::open(pool, &name),
                };
                match opened {
                    Ok(image) => {
                        send::<(), Error>(&reply, Ok(()));
                        match serve_image(cluster, &image, requests) {
                            Leave::Stop => return Leave::Stop,
                            Leave::Forward(request) => {
                                drop(image);
                                pending = Some(request);
                                continue;
                            }
                        }
                    }
                    Err(e) => send(&reply, Err(e)),
                }
            }
            Request::CloseImage(reply) => send::<(), Error>(&reply, Ok(())),
            request @ (Request::OpenPool { .. } | Request::ClosePool(_)) => {
                return Leave::Forward(request)
            }
            other => refuse(other, "no image is open"),
        }
        pending = requests.recv().ok();
    }
    Leave::Stop
}

fn serve_image(
    cluster: &RadosCluster,
    image: &RbdImage<'_>,
    requests: &Receiver<Request>,
) -> Leave {
    while let Ok(request) = requests.recv() {
        match request {
            Request::PoolExists(name, reply) => send(&reply, cluster.pool_exists(&name)),
            Request::CreateSnapshot(name, reply) => send(&reply, image.create_snapshot(&name)),
            Request::ProtectSnapshot(name, reply) => send(&reply, image.protect_snapshot(&name)),
            Request::UnprotectSnapshot(name, reply) => {
                send(&reply, image.unprotect_snapshot(&name))
            }
            Request::IsProtected(name, reply) => send(&reply, image.snapshot_is_protected(&name)),
            Request::RemoveSnapshot(name, reply) => send(&reply, image.remove_snapshot(&name)),
            Request::Size(reply) => send(&reply, image.info().map(|i| i.size)),
            Request::Read {
                offset,
                length,
                reply,
            } => send(&reply, read_at(image, offset, length)),
            Request::StreamToRestic {
                target,
                filename,
                cancel,
                reply,
            } => send(&reply, stream_to_restic(image, &target, &filename, &cancel)),
            request => return Leave::Forward(request),
        }
    }
    Leave::Stop
}

fn send<T, E: Into<Error>>(reply: &Reply<T>, result: Result<T, E>) {
    // The asker waits for this answer; if it went away there is nobody left to tell.
    let _ = reply.send(result.map_err(Into::into));
}

/// Answers a request that needs something the session has not opened.
fn refuse(request: Request, missing: &str) {
    let error = || Error::Usage(missing.to_string());
    match request {
        Request::PoolExists(_, reply) | Request::IsProtected(_, reply) => {
            send::<bool, Error>(&reply, Err(error()))
        }
        Request::OpenPool { reply, .. }
        | Request::ClosePool(reply)
        | Request::OpenImage { reply, .. }
        | Request::CloseImage(reply)
        | Request::CreateSnapshot(_, reply)
        | Request::ProtectSnapshot(_, reply)
        | Request::UnprotectSnapshot(_, reply)
        | Request::RemoveSnapshot(_, reply) => send::<(), Error>(&reply, Err(error())),
        Request::Size(reply) => send::<u64, Error>(&reply, Err(error())),
        Request::Read { reply, .. } => send::<Vec<u8>, Error>(&reply, Err(error())),
        Request::StreamToRestic { reply, .. } => send::<String, Error>(&reply, Err(error())),
    }
}

/// How many bytes a read of `length` at `offset` returns from an image of `size` bytes:
/// librbd refuses reads past the end, the original's Python binding returned what there was.
pub fn clipped_read_length(offset: u64, length: u64, size: u64) -> u64 {
    length.min(size.saturating_sub(offset))
}

fn read_at(image: &RbdImage<'_>, offset: u64, length: u64) -> Result<Vec<u8>, Error> {
    let size = image.info()?.size;
    let length = clipped_read_length(offset, length, size);
    if length == 0 {
        return Ok(Vec::new());
    }
    let length = usize::try_from(length)
        .map_err(|_| Error::Usage(format!("a read of {length} bytes does not fit in memory")))?;
    let buf = image
        .start_read(offset, AlignedBuf::zeroed(length))?
        .wait()?;
    Ok(buf.to_vec())
}

struct NoProgress;

impl ExportProgress for NoProgress {
    fn progress(&self, _done: u64, _total: u64) {}
}

fn stream_to_restic(
    image: &RbdImage<'_>,
    target: &ResticTarget,
    filename: &str,
    cancel: &CancelToken,
) -> Result<String, Error> {
    let info = image.info()?;
    // No tags: the original tagged nothing, and the tool's own listing (`list --restic-repo`)
    // only shows snapshots it can attribute to a domain and disk.
    let mut upload = target.start_backup(filename, &[], &host_name())?;
    let pipeline = ReadPipeline {
        queue_depth: STREAM_QUEUE_DEPTH,
        limit: None,
        cancel,
        progress: &NoProgress,
    };
    // Dropping the upload on an error kills restic before it records a truncated image.
    export_stream(
        image,
        info.size,
        info.fast_diff_usable(),
        upload.input()?,
        &pipeline,
    )?;
    let summary = upload.finish()?;
    // The original committed whatever restic read; a snapshot shorter than the image is an
    // error here, naming it (it stays in the repository: `restic forget` removes it).
    if let Some(bytes) = summary.bytes_processed.filter(|&b| b != info.size) {
        return Err(Error::Restic(format!(
            "restic snapshot {} of {} holds {bytes} bytes, the image has {}; do not restore it",
            summary.snapshot_id,
            image.spec(),
            info.size
        )));
    }
    Ok(summary.snapshot_id)
}

/// A snapshot created through a session and not (yet) removed through one.
struct CreatedSnapshot {
    pid: u32,
    address: ClusterAddress,
    key: Option<SecretString>,
    timeouts: CephTimeouts,
    pool: String,
    namespace: Option<String>,
    image: String,
    snapshot: String,
}

impl CreatedSnapshot {
    fn same_snapshot(&self, other: &CreatedSnapshot) -> bool {
        self.pid == other.pid
            && self.address == other.address
            && self.pool == other.pool
            && self.namespace == other.namespace
            && self.image == other.image
            && self.snapshot == other.snapshot
    }

    /// `pool[/namespace]/image@snapshot`.
    fn spec(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{}/{ns}/{}@{}", self.pool, self.image, self.snapshot),
            None => format!("{}/{}@{}", self.pool, self.image, self.snapshot),
        }
    }
}

static CREATED: Mutex<Vec<CreatedSnapshot>> = Mutex::new(Vec::new());

fn created() -> std::sync::MutexGuard<'static, Vec<CreatedSnapshot>> {
    // A panic while holding the lock leaves a valid list; keep using it.
    CREATED.lock().unwrap_or_else(|p| p.into_inner())
}

/// What [`remove_leftover_snapshots`] did with one snapshot.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LeftoverSnapshot {
    /// `pool[/namespace]/image@snapshot`.
    pub snapshot: String,
    /// `removed`, `already_gone` or `failed`.
    pub outcome: &'static str,
    /// Why it failed.
    pub error: Option<String>,
}

/// Removes (unprotecting first) every snapshot this process created through a session and did
/// not remove; see the module doc. Records of other processes (a forked child's copy of its
/// parent's) are left alone.
pub fn remove_leftover_snapshots() -> Vec<LeftoverSnapshot> {
    let pid = std::process::id();
    let mine: Vec<CreatedSnapshot> = {
        let mut all = created();
        let (mine, others) = all.drain(..).partition(|r| r.pid == pid);
        *all = others;
        mine
    };
    mine.iter()
        .map(|record| {
            let (outcome, error) = match remove_one(record) {
                Ok(true) => ("removed", None),
                Ok(false) => ("already_gone", None),
                Err(e) => ("failed", Some(e.to_string())),
            };
            LeftoverSnapshot {
                snapshot: record.spec(),
                outcome,
                error,
            }
        })
        .collect()
}

/// Removes one recorded snapshot; `false` if it (or its image) is already gone.
fn remove_one(record: &CreatedSnapshot) -> Result<bool, CephError> {
    let gone = |e: &CephError| e.errno() == Some(-libc::ENOENT);
    let cluster = RadosCluster::connect(&record.address, record.key.as_ref(), record.timeouts)?;
    let pool = cluster.open_pool(&record.pool, record.namespace.as_deref())?;
    let image = match RbdImage::open(&pool, &record.image) {
        Ok(image) => image,
        Err(e) if gone(&e) => return Ok(false),
        Err(e) => return Err(e),
    };
    match image.snapshot_is_protected(&record.snapshot) {
        Ok(true) => image.unprotect_snapshot(&record.snapshot)?,
        Ok(false) => {}
        Err(e) if gone(&e) => return Ok(false),
        Err(e) => return Err(e),
    }
    match image.remove_snapshot(&record.snapshot) {
        Ok(()) => Ok(true),
        Err(e) if gone(&e) => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_are_clipped_at_the_end_of_the_image() {
        assert_eq!(clipped_read_length(0, 4096, 10_000), 4096);
        assert_eq!(clipped_read_length(8192, 4096, 10_000), 1808);
        assert_eq!(clipped_read_length(10_000, 4096, 10_000), 0);
        assert_eq!(clipped_read_length(20_000, 4096, 10_000), 0);
    }

    fn record(pid: u32, snapshot: &str) -> CreatedSnapshot {
        CreatedSnapshot {
            pid,
            address: ClusterAddress {
                monitors: vec!["127.0.0.1:1".into()],
                conf_file: None,
                user: "nobody".into(),
            },
            key: None,
            timeouts: CephTimeouts::default(),
            pool: "rbd".into(),
            namespace: Some("ns".into()),
            image: "img".into(),
            snapshot: snapshot.into(),
        }
    }

    #[test]
    fn records_name_the_snapshot_and_match_only_the_same_one() {
        let a = record(1, "a");
        assert_eq!(a.spec(), "rbd/ns/img@a");
        assert!(a.same_snapshot(&record(1, "a")));
        assert!(!a.same_snapshot(&record(1, "b")));
        // Another process's record of the same name is not ours to drop.
        assert!(!a.same_snapshot(&record(2, "a")));
    }

    #[test]
    fn leftovers_of_other_processes_are_left_alone() {
        let other = std::process::id().wrapping_add(1);
        created().push(record(other, "of-the-parent"));
        // Nothing of this process is recorded: nothing is touched (no cluster is contacted).
        assert!(remove_leftover_snapshots()
            .iter()
            .all(|l| l.snapshot != "rbd/ns/img@of-the-parent"));
        assert!(created()
            .iter()
            .any(|r| r.pid == other && r.snapshot == "of-the-parent"));
        created().retain(|r| r.pid != other);
    }
}
