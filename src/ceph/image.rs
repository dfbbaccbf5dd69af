//! An open RBD image: its facts, its snapshots, its allocated extents and pipelined reads.

use std::ffi::CStr;
use std::marker::PhantomData;
use std::os::raw::{c_char, c_int, c_void};
use std::ptr;

use crate::buffer::AlignedBuf;

use super::cluster::PoolContext;
use super::error::{cstring, errno_hint, errno_message, CephError};
use super::ffi;

/// A byte range of an image, as `rbd_diff_iterate2` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// Offset in bytes.
    pub offset: u64,
    /// Length in bytes.
    pub length: u64,
    /// `true`: data there; `false`: discarded/zeroed since the base snapshot.
    pub exists: bool,
}

/// Facts about an image that a backup records.
#[derive(Debug, Clone)]
pub struct ImageInfo {
    /// Size in bytes (of the open snapshot, if one is open).
    pub size: u64,
    /// Object size in bytes.
    pub object_size: u64,
    /// Feature bits.
    pub features: u64,
    /// Flags (object map invalid, ...).
    pub flags: u64,
    /// The image id: changes when an image is deleted and recreated under the same name.
    pub id: String,
}

impl ImageInfo {
    /// Whether the object map or fast-diff state is flagged invalid.
    pub fn object_map_invalid(&self) -> bool {
        self.flags & (ffi::RBD_FLAG_OBJECT_MAP_INVALID | ffi::RBD_FLAG_FAST_DIFF_INVALID) != 0
    }

    /// Whether `rbd_diff_iterate2` may use the object map (whole-object mode is then cheap).
    pub fn fast_diff_usable(&self) -> bool {
        self.features & ffi::RBD_FEATURE_FAST_DIFF != 0
            && self.features & ffi::RBD_FEATURE_OBJECT_MAP != 0
            && self.flags & (ffi::RBD_FLAG_OBJECT_MAP_INVALID | ffi::RBD_FLAG_FAST_DIFF_INVALID)
                == 0
    }
}

/// A snapshot as `rbd_snap_list` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// Snapshot id.
    pub id: u64,
    /// Image size at the snapshot.
    pub size: u64,
    /// Name.
    pub name: String,
}

/// A client watching an image's header: one that has the image open for writing (QEMU, `rbd
/// map`, a read-write `rbd_open`). Read-only opens do not watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageWatcher {
    /// The client's network address.
    pub address: String,
    /// The client's global id (the `N` of `client.N`).
    pub id: i64,
    /// The watch's cookie.
    pub cookie: u64,
}

/// An open image; closed on drop. Borrowing the pool keeps the pool open as long as this is.
pub struct RbdImage<'p> {
    handle: ffi::rbd_image_t,
    spec: String,
    _pool: PhantomData<&'p PoolContext<'p>>,
}

// SAFETY: librbd image handles are thread-safe for I/O and metadata calls (librbd serialises
// internally); QEMU and `rbd` itself issue I/O on one handle from several threads.
unsafe impl Send for RbdImage<'_> {}
// SAFETY: see above.
unsafe impl Sync for RbdImage<'_> {}

impl<'p> RbdImage<'p> {
    /// Opens `name` for writing metadata (snapshot create/remove) at its head.
    pub fn open(pool: &'p PoolContext<'_>, name: &str) -> Result<Self, CephError> {
        Self::open_inner(pool, name, None, false)
    }

    /// Opens `name` read-only at `snapshot`.
    pub fn open_at_snapshot(
        pool: &'p PoolContext<'_>,
        name: &str,
        snapshot: &str,
    ) -> Result<Self, CephError> {
        Self::open_inner(pool, name, Some(snapshot), true)
    }

    /// Opens `name` read-only at the snapshot with id `snap_id`, whatever its namespace (a
    /// group snapshot's image snapshots cannot be opened by name).
    pub fn open_at_snapshot_id(
        pool: &'p PoolContext<'_>,
        name: &str,
        snap_id: u64,
    ) -> Result<Self, CephError> {
        let image = Self::open_inner(pool, name, None, true)?;
        // SAFETY: valid handle.
        let rc = unsafe { ffi::rbd_snap_set_by_id(image.handle, snap_id) };
        if rc < 0 {
            return Err(CephError::OpenImage {
                image: format!("{} at snapshot id {snap_id}", image.spec),
                errno: rc,
                message: errno_message(rc),
                hint: errno_hint(rc),
            });
        }
        Ok(image)
    }

    /// Opens `name` read-only at its head (to look, never to write).
    pub fn open_read_only(pool: &'p PoolContext<'_>, name: &str) -> Result<Self, CephError> {
        Self::open_inner(pool, name, None, true)
    }

    fn open_inner(
        pool: &'p PoolContext<'_>,
        name: &str,
        snapshot: Option<&str>,
        read_only: bool,
    ) -> Result<Self, CephError> {
        let spec = pool.image_spec(name);
        let name_c = cstring("image name", name)?;
        let snap_c = snapshot.map(|s| cstring("snapshot name", s)).transpose()?;
        let snap_ptr = snap_c.as_ref().map_or(ptr::null(), |s| s.as_ptr());
        let mut handle: ffi::rbd_image_t = ptr::null_mut();
        // SAFETY: valid ioctx (borrowed for 'p), C strings and out-pointer to a local.
        let rc = unsafe {
            if read_only {
                ffi::rbd_open_read_only(pool.io, name_c.as_ptr(), &mut handle, snap_ptr)
            } else {
                ffi::rbd_open(pool.io, name_c.as_ptr(), &mut handle, snap_ptr)
            }
        };
        if rc < 0 {
            let image = match snapshot {
                Some(s) => format!("{spec}@{s}"),
                None => spec,
            };
            return Err(CephError::OpenImage {
                image,
                errno: rc,
                message: errno_message(rc),
                hint: errno_hint(rc),
            });
        }
        Ok(RbdImage {
            handle,
            spec,
            _pool: PhantomData,
        })
    }

    fn call_failed(&self, call: &'static str, rc: i32) -> CephError {
        CephError::Call {
            call,
            target: self.spec.clone(),
            errno: rc,
            message: errno_message(rc),
            hint: errno_hint(rc),
        }
    }

    /// `pool/image` for messages.
    pub fn spec(&self) -> &str {
        &self.spec
    }

    /// Size, object size, features, flags and id.
    pub fn info(&self) -> Result<ImageInfo, CephError> {
        // SAFETY: zeroed is a valid bit pattern for this plain C struct.
        let mut stat: ffi::rbd_image_info_t = unsafe { std::mem::zeroed() };
        // SAFETY: valid handle; the size argument matches the struct we pass.
        let rc = unsafe {
            ffi::rbd_stat(
                self.handle,
                &mut stat,
                std::mem::size_of::<ffi::rbd_image_info_t>(),
            )
        };
        if rc < 0 {
            return Err(self.call_failed("rbd_stat", rc));
        }
        let mut features = 0u64;
        // SAFETY: valid handle, out-pointer to a local.
        let rc = unsafe { ffi::rbd_get_features(self.handle, &mut features) };
        if rc < 0 {
            return Err(self.call_failed("rbd_get_features", rc));
        }
        let mut flags = 0u64;
        // SAFETY: valid handle, out-pointer to a local.
        let rc = unsafe { ffi::rbd_get_flags(self.handle, &mut flags) };
        if rc < 0 {
            return Err(self.call_failed("rbd_get_flags", rc));
        }
        let mut id_buf = [0 as c_char; 64];
        // SAFETY: valid handle; librbd writes at most `len` bytes including the NUL.
        let rc = unsafe { ffi::rbd_get_id(self.handle, id_buf.as_mut_ptr(), id_buf.len()) };
        if rc < 0 {
            return Err(self.call_failed("rbd_get_id", rc));
        }
        // SAFETY: librbd NUL-terminated the id inside the buffer.
        let id = unsafe { CStr::from_ptr(id_buf.as_ptr()) }
            .to_string_lossy()
            .into_owned();
        Ok(ImageInfo {
            size: stat.size,
            object_size: stat.obj_size,
            features,
            flags,
            id,
        })
    }

    /// All snapshots of the image.
    pub fn snapshots(&self) -> Result<Vec<SnapshotInfo>, CephError> {
        let mut capacity: c_int = 16;
        loop {
            let mut buf: Vec<ffi::rbd_snap_info_t> = Vec::with_capacity(capacity as usize);
            let mut max = capacity;
            // SAFETY: `buf` has room for `max` entries; librbd fills at most that many and
            // returns -ERANGE with the needed count in `max` when they do not fit.
            let rc = unsafe { ffi::rbd_snap_list(self.handle, buf.as_mut_ptr(), &mut max) };
            if rc == -libc::ERANGE {
                capacity = max.max(capacity * 2);
                continue;
            }
            if rc < 0 {
                return Err(self.call_failed("rbd_snap_list", rc));
            }
            // SAFETY: librbd initialised `rc` entries.
            unsafe { buf.set_len(rc as usize) };
            let snaps = buf
                .iter()
                .map(|s| SnapshotInfo {
                    id: s.id,
                    size: s.size,
                    // SAFETY: librbd gives a NUL-terminated name valid until rbd_snap_list_end.
                    name: unsafe { CStr::from_ptr(s.name) }
                        .to_string_lossy()
                        .into_owned(),
                })
                .collect();
            // SAFETY: frees the names librbd allocated for these entries.
            unsafe { ffi::rbd_snap_list_end(buf.as_mut_ptr()) };
            return Ok(snaps);
        }
    }

    /// The RBD group the image belongs to, as (pool id, group name).
    pub fn group(&self) -> Result<Option<(i64, String)>, CephError> {
        let mut info = ffi::rbd_group_info_t {
            name: ptr::null_mut(),
            pool: -1,
        };
        let size = std::mem::size_of::<ffi::rbd_group_info_t>();
        // SAFETY: valid handle; the size argument matches the struct we pass.
        let rc = unsafe { ffi::rbd_get_group(self.handle, &mut info, size) };
        if rc < 0 {
            return Err(self.call_failed("rbd_get_group", rc));
        }
        let name = if info.name.is_null() {
            String::new()
        } else {
            // SAFETY: librbd allocated a NUL-terminated name, freed by the cleanup below.
            unsafe { CStr::from_ptr(info.name) }
                .to_string_lossy()
                .into_owned()
        };
        let pool = info.pool;
        // SAFETY: frees what rbd_get_group allocated in `info`.
        unsafe { ffi::rbd_group_info_cleanup(&mut info, size) };
        Ok((pool >= 0 && !name.is_empty()).then_some((pool, name)))
    }

    /// The id of this image's snapshot that belongs to snapshot `group_snapshot` of group
    /// `group` (image snapshots of a group snapshot live in the group namespace, under an
    /// internal name).
    pub fn group_snapshot_id(
        &self,
        group: &str,
        group_snapshot: &str,
    ) -> Result<Option<u64>, CephError> {
        for snap in self.snapshots()? {
            if !snap.name.starts_with(".group.") {
                continue;
            }
            // SAFETY: zeroed (null pointers) is a valid value of this plain C struct.
            let mut ns: ffi::rbd_snap_group_namespace_t = unsafe { std::mem::zeroed() };
            let size = std::mem::size_of::<ffi::rbd_snap_group_namespace_t>();
            // SAFETY: valid handle; the size argument matches the struct we pass.
            let rc =
                unsafe { ffi::rbd_snap_get_group_namespace(self.handle, snap.id, &mut ns, size) };
            if rc == -libc::EINVAL || rc == -libc::ENOENT {
                continue; // not a group snapshot after all, or removed meanwhile
            }
            if rc < 0 {
                return Err(self.call_failed("rbd_snap_get_group_namespace", rc));
            }
            let text = |p: *mut c_char| {
                if p.is_null() {
                    String::new()
                } else {
                    // SAFETY: librbd allocated NUL-terminated strings, freed below.
                    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
                }
            };
            let matches =
                text(ns.group_name) == group && text(ns.group_snap_name) == group_snapshot;
            // SAFETY: frees what rbd_snap_get_group_namespace allocated in `ns`.
            unsafe { ffi::rbd_snap_group_namespace_cleanup(&mut ns, size) };
            if matches {
                return Ok(Some(snap.id));
            }
        }
        Ok(None)
    }

    /// The clients watching the image's header (this handle's own watch included).
    pub fn watchers(&self) -> Result<Vec<ImageWatcher>, CephError> {
        let mut capacity: usize = 8;
        // Bounded: the list can grow between two calls, but not forever.
        for _ in 0..8 {
            let mut buf: Vec<ffi::rbd_image_watcher_t> = Vec::with_capacity(capacity);
            let mut max = capacity;
            // SAFETY: `buf` has room for `max` entries; librbd fills at most that many and
            // returns -ERANGE with the needed count in `max` when they do not fit.
            let rc = unsafe { ffi::rbd_watchers_list(self.handle, buf.as_mut_ptr(), &mut max) };
            if rc == -libc::ERANGE {
                capacity = max.max(capacity * 2);
                continue;
            }
            if rc < 0 {
                return Err(self.call_failed("rbd_watchers_list", rc));
            }
            let count = max.min(capacity);
            // SAFETY: librbd initialised `max` entries (at most the capacity).
            unsafe { buf.set_len(count) };
            let watchers = buf
                .iter()
                .map(|w| ImageWatcher {
                    address: if w.addr.is_null() {
                        String::new()
                    } else {
                        // SAFETY: a NUL-terminated string librbd allocated, valid until the
                        // cleanup below.
                        unsafe { CStr::from_ptr(w.addr) }
                            .to_string_lossy()
                            .into_owned()
                    },
                    id: w.id,
                    cookie: w.cookie,
                })
                .collect();
            // SAFETY: frees the addresses librbd allocated for these `count` entries.
            unsafe { ffi::rbd_watchers_list_cleanup(buf.as_mut_ptr(), count) };
            return Ok(watchers);
        }
        Err(self.call_failed("rbd_watchers_list", -libc::ERANGE))
    }

    /// Creates snapshot `name` of the image head.
    pub fn create_snapshot(&self, name: &str) -> Result<(), CephError> {
        let name_c = cstring("snapshot name", name)?;
        // SAFETY: valid handle and C string.
        let rc = unsafe { ffi::rbd_snap_create(self.handle, name_c.as_ptr()) };
        if rc < 0 {
            return Err(self.call_failed("rbd_snap_create", rc));
        }
        Ok(())
    }

    /// Removes snapshot `name`.
    pub fn remove_snapshot(&self, name: &str) -> Result<(), CephError> {
        let name_c = cstring("snapshot name", name)?;
        // SAFETY: valid handle and C string.
        let rc = unsafe { ffi::rbd_snap_remove(self.handle, name_c.as_ptr()) };
        if rc < 0 {
            return Err(self.call_failed("rbd_snap_remove", rc));
        }
        Ok(())
    }

    /// Protects snapshot `name` from removal (what the original tool did to its snapshots;
    /// librbd refuses to remove a protected snapshot until it is unprotected).
    pub fn protect_snapshot(&self, name: &str) -> Result<(), CephError> {
        let name_c = cstring("snapshot name", name)?;
        // SAFETY: valid handle and C string.
        let rc = unsafe { ffi::rbd_snap_protect(self.handle, name_c.as_ptr()) };
        if rc < 0 {
            return Err(self.snapshot_call_failed("rbd_snap_protect", name, rc));
        }
        Ok(())
    }

    /// Lifts the protection of snapshot `name` (fails while clones of it exist).
    pub fn unprotect_snapshot(&self, name: &str) -> Result<(), CephError> {
        let name_c = cstring("snapshot name", name)?;
        // SAFETY: valid handle and C string.
        let rc = unsafe { ffi::rbd_snap_unprotect(self.handle, name_c.as_ptr()) };
        if rc < 0 {
            return Err(self.snapshot_call_failed("rbd_snap_unprotect", name, rc));
        }
        Ok(())
    }

    /// Whether snapshot `name` is protected.
    pub fn snapshot_is_protected(&self, name: &str) -> Result<bool, CephError> {
        let name_c = cstring("snapshot name", name)?;
        let mut protected: libc::c_int = 0;
        // SAFETY: valid handle, C string, out-pointer to a local.
        let rc =
            unsafe { ffi::rbd_snap_is_protected(self.handle, name_c.as_ptr(), &mut protected) };
        if rc < 0 {
            return Err(self.snapshot_call_failed("rbd_snap_is_protected", name, rc));
        }
        Ok(protected != 0)
    }

    fn snapshot_call_failed(&self, call: &'static str, snapshot: &str, rc: i32) -> CephError {
        CephError::Call {
            call,
            target: format!("{}@{snapshot}", self.spec),
            errno: rc,
            message: errno_message(rc),
            hint: errno_hint(rc),
        }
    }

    /// The id of snapshot `name`.
    pub fn snapshot_id(&self, name: &str) -> Result<u64, CephError> {
        let name_c = cstring("snapshot name", name)?;
        let mut id = 0u64;
        // SAFETY: valid handle, C string, out-pointer to a local.
        let rc = unsafe { ffi::rbd_snap_get_id(self.handle, name_c.as_ptr(), &mut id) };
        if rc < 0 {
            return Err(self.call_failed("rbd_snap_get_id", rc));
        }
        Ok(id)
    }

    /// When Ceph created snapshot `snap_id`, as Unix seconds.
    pub fn snapshot_timestamp(&self, snap_id: u64) -> Result<f64, CephError> {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: valid handle, out-pointer to a local.
        let rc = unsafe { ffi::rbd_snap_get_timestamp(self.handle, snap_id, &mut ts) };
        if rc < 0 {
            return Err(self.call_failed("rbd_snap_get_timestamp", rc));
        }
        Ok(ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9)
    }

    /// The extents that differ from `from_snapshot` (or are allocated, when `None`) in
    /// `[0, length)`. `whole_object` reports whole objects from the object map (fast, but only
    /// exact when fast-diff is valid; see `ImageInfo::fast_diff_usable`).
    pub fn diff_extents(
        &self,
        from_snapshot: Option<&str>,
        length: u64,
        whole_object: bool,
    ) -> Result<Vec<Extent>, CephError> {
        self.diff_extents_in(from_snapshot, 0, length, whole_object)
    }

    /// As `diff_extents`, within `[offset, offset + length)`.
    pub fn diff_extents_in(
        &self,
        from_snapshot: Option<&str>,
        offset: u64,
        length: u64,
        whole_object: bool,
    ) -> Result<Vec<Extent>, CephError> {
        unsafe extern "C" fn collect(
            offset: u64,
            len: libc::size_t,
            exists: c_int,
            arg: *mut c_void,
        ) -> c_int {
            // SAFETY: `arg` is the `&mut Vec<Extent>` passed below, alive for the whole call.
            let extents = unsafe { &mut *(arg as *mut Vec<Extent>) };
            extents.push(Extent {
                offset,
                length: len as u64,
                exists: exists != 0,
            });
            0
        }
        let from_c = from_snapshot
            .map(|s| cstring("snapshot name", s))
            .transpose()?;
        let from_ptr = from_c.as_ref().map_or(ptr::null(), |s| s.as_ptr());
        let mut extents: Vec<Extent> = Vec::new();
        // SAFETY: valid handle; the callback only touches `extents`, which outlives the call;
        // librbd calls the callback synchronously before returning.
        let rc = unsafe {
            ffi::rbd_diff_iterate2(
                self.handle,
                from_ptr,
                offset,
                length,
                1,
                u8::from(whole_object),
                collect,
                &mut extents as *mut Vec<Extent> as *mut c_void,
            )
        };
        if rc < 0 {
            return Err(self.call_failed("rbd_diff_iterate2", rc));
        }
        Ok(extents)
    }

    /// Writes `data` at `offset` (synchronously).
    pub fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), CephError> {
        // SAFETY: valid handle; librbd copies or finishes with `data` before returning.
        let rc = unsafe {
            ffi::rbd_write(
                self.handle,
                offset,
                data.len(),
                data.as_ptr() as *const c_char,
            )
        };
        if rc < 0 {
            return Err(self.call_failed("rbd_write", rc as i32));
        }
        if rc as usize != data.len() {
            return Err(CephError::ShortRead {
                image: self.spec.clone(),
                offset,
                wanted: data.len(),
                got: rc as usize,
            });
        }
        Ok(())
    }

    /// Discards (zeroes, deallocates) `length` bytes at `offset`.
    pub fn discard(&self, offset: u64, length: u64) -> Result<(), CephError> {
        // SAFETY: valid handle.
        let rc = unsafe { ffi::rbd_discard(self.handle, offset, length) };
        if rc < 0 {
            return Err(self.call_failed("rbd_discard", rc));
        }
        Ok(())
    }

    /// Changes the image size.
    pub fn resize(&self, size: u64) -> Result<(), CephError> {
        // SAFETY: valid handle.
        let rc = unsafe { ffi::rbd_resize(self.handle, size) };
        if rc < 0 {
            return Err(self.call_failed("rbd_resize", rc));
        }
        Ok(())
    }

    /// Flushes cached writes to the cluster.
    pub fn flush(&self) -> Result<(), CephError> {
        // SAFETY: valid handle.
        let rc = unsafe { ffi::rbd_flush(self.handle) };
        if rc < 0 {
            return Err(self.call_failed("rbd_flush", rc));
        }
        Ok(())
    }

    /// Starts reading `buf.len()` bytes at `offset`; the buffer is handed back by `wait`.
    pub fn start_read(
        &self,
        offset: u64,
        mut buf: AlignedBuf,
    ) -> Result<PendingRead<'_>, CephError> {
        let mut completion: ffi::rbd_completion_t = ptr::null_mut();
        // SAFETY: out-pointer to a local; no callback.
        let rc = unsafe { ffi::rbd_aio_create_completion(ptr::null_mut(), None, &mut completion) };
        if rc < 0 {
            return Err(self.call_failed("rbd_aio_create_completion", rc));
        }
        let len = buf.len();
        // SAFETY: valid handle; the buffer's heap memory stays put and alive until the
        // completion finished: `PendingRead` owns both and waits before releasing either, and an
        // `AlignedBuf` is not resized while it is owned there.
        let rc = unsafe {
            ffi::rbd_aio_read2(
                self.handle,
                offset,
                len,
                buf.as_mut_ptr() as *mut c_char,
                completion,
                ffi::LIBRADOS_OP_FLAG_FADVISE_SEQUENTIAL | ffi::LIBRADOS_OP_FLAG_FADVISE_NOCACHE,
            )
        };
        if rc < 0 {
            // SAFETY: the read was not queued, so nobody else references the completion.
            unsafe { ffi::rbd_aio_release(completion) };
            return Err(self.call_failed("rbd_aio_read2", rc));
        }
        Ok(PendingRead {
            completion,
            buf: Some(buf),
            offset,
            image: self,
        })
    }
}

impl Drop for RbdImage<'_> {
    fn drop(&mut self) {
        // SAFETY: the handle came from rbd_open*; every PendingRead borrows `self`, so none is
        // in flight any more.
        let rc = unsafe { ffi::rbd_close(self.handle) };
        if rc < 0 {
            log::warn!("closing image {} failed: {}", self.spec, errno_message(rc));
        }
    }
}

/// A read in flight. Dropping it without `wait` still waits, because librbd writes into the
/// buffer until the completion fires.
pub struct PendingRead<'i> {
    completion: ffi::rbd_completion_t,
    buf: Option<AlignedBuf>,
    offset: u64,
    image: &'i RbdImage<'i>,
}

// SAFETY: the completion is only waited on and released by the owner; librbd completions may be
// waited on from any thread.
unsafe impl Send for PendingRead<'_> {}

impl PendingRead<'_> {
    /// The offset this read started at.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Waits for the read and returns the filled buffer.
    pub fn wait(mut self) -> Result<AlignedBuf, CephError> {
        let rc = self.finish();
        let buf = self.buf.take().unwrap_or_default();
        if rc < 0 {
            return Err(self.image.call_failed("rbd_aio_read2", rc as i32));
        }
        if (rc as usize) != buf.len() {
            return Err(CephError::ShortRead {
                image: self.image.spec.clone(),
                offset: self.offset,
                wanted: buf.len(),
                got: rc as usize,
            });
        }
        Ok(buf)
    }

    fn finish(&mut self) -> isize {
        if self.completion.is_null() {
            return 0;
        }
        // SAFETY: the completion is live and owned by us; after the wait librbd no longer
        // touches the buffer, so releasing both is sound.
        let rc = unsafe {
            ffi::rbd_aio_wait_for_complete(self.completion);
            let rc = ffi::rbd_aio_get_return_value(self.completion);
            ffi::rbd_aio_release(self.completion);
            rc
        };
        self.completion = ptr::null_mut();
        rc
    }
}

impl Drop for PendingRead<'_> {
    fn drop(&mut self) {
        self.finish();
    }
}

/// What a write in flight is.
enum WriteOp {
    /// `rbd_aio_write` of the owned buffer.
    Write(Vec<u8>),
    /// `rbd_aio_discard` of `length` bytes.
    Discard { length: u64 },
}

impl WriteOp {
    fn call(&self) -> &'static str {
        match self {
            WriteOp::Write(_) => "rbd_aio_write",
            WriteOp::Discard { .. } => "rbd_aio_discard",
        }
    }

    fn length(&self) -> u64 {
        match self {
            WriteOp::Write(buf) => buf.len() as u64,
            WriteOp::Discard { length } => *length,
        }
    }
}

/// A write or discard in flight, with the buffer librbd reads from until it completes.
struct InFlight {
    completion: ffi::rbd_completion_t,
    offset: u64,
    op: WriteOp,
}

/// Writes and discards into an image with up to `depth` of them in flight.
///
/// Why: a synchronous `rbd_write` waits for the OSD round trip of every block, so a restore
/// wrote at a fraction of what `rbd import` (which keeps several writes in flight) does.
/// Operations are started in the order they are given and waited for in that order (oldest
/// first, when `depth` are in flight, and all of them in `finish`); the first failure is
/// returned with its offset and length, and nothing more is started after it. An operation
/// that overlaps one still in flight waits until that one completed, so overlapping writes
/// (an incremental replayed over the full) land in the order given whatever order librbd and
/// the OSDs complete concurrent requests in. Dropping the writer waits for everything still in flight, because
/// librbd reads the buffers until then.
pub struct ImageWriter<'i> {
    image: &'i RbdImage<'i>,
    depth: usize,
    in_flight: std::collections::VecDeque<InFlight>,
    /// Buffers of completed writes, handed out again by `spare_buffer` (at most `depth`).
    spare: Vec<Vec<u8>>,
}

// SAFETY: completions are only waited on and released by the owner; librbd completions may be
// waited on from any thread, and the buffers are owned.
unsafe impl Send for ImageWriter<'_> {}

impl<'i> ImageWriter<'i> {
    /// A writer into `image` with at most `depth` (at least 1) operations in flight.
    pub fn new(image: &'i RbdImage<'i>, depth: usize) -> Self {
        ImageWriter {
            image,
            depth: depth.max(1),
            in_flight: std::collections::VecDeque::new(),
            spare: Vec::new(),
        }
    }

    /// An empty buffer to fill and pass to `write`: one of a completed write where there is
    /// one, so that a caller writing block after block neither allocates nor faults in new
    /// memory for each.
    pub fn spare_buffer(&mut self) -> Vec<u8> {
        let mut buf = self.spare.pop().unwrap_or_default();
        buf.clear();
        buf
    }

    /// Starts writing `data` at `offset` (the writer keeps the buffer until it completed).
    pub fn write(&mut self, offset: u64, data: Vec<u8>) -> Result<(), CephError> {
        if data.is_empty() {
            return Ok(());
        }
        self.start(offset, WriteOp::Write(data))
    }

    /// Starts discarding (zeroing) `length` bytes at `offset`.
    pub fn discard(&mut self, offset: u64, length: u64) -> Result<(), CephError> {
        if length == 0 {
            return Ok(());
        }
        self.start(offset, WriteOp::Discard { length })
    }

    /// Waits for every operation in flight; the first failure, if any.
    pub fn finish(&mut self) -> Result<(), CephError> {
        while !self.in_flight.is_empty() {
            self.wait_oldest()?;
        }
        Ok(())
    }

    fn start(&mut self, offset: u64, op: WriteOp) -> Result<(), CephError> {
        let end = offset.saturating_add(op.length());
        while self.in_flight.len() >= self.depth
            || self
                .in_flight
                .iter()
                .any(|f| f.offset < end && offset < f.offset.saturating_add(f.op.length()))
        {
            self.wait_oldest()?;
        }
        let mut completion: ffi::rbd_completion_t = ptr::null_mut();
        // SAFETY: out-pointer to a local; no callback.
        let rc = unsafe { ffi::rbd_aio_create_completion(ptr::null_mut(), None, &mut completion) };
        if rc < 0 {
            return Err(self.image.call_failed("rbd_aio_create_completion", rc));
        }
        let rc = match &op {
            // SAFETY: valid handle; the buffer is owned by the `InFlight` pushed below, whose
            // heap memory does not move and which is only dropped after the completion fired
            // (`wait_oldest`, `Drop`).
            WriteOp::Write(buf) => unsafe {
                ffi::rbd_aio_write(
                    self.image.handle,
                    offset,
                    buf.len(),
                    buf.as_ptr() as *const c_char,
                    completion,
                )
            },
            // SAFETY: valid handle; no memory is involved.
            WriteOp::Discard { length } => unsafe {
                ffi::rbd_aio_discard(self.image.handle, offset, *length, completion)
            },
        };
        if rc < 0 {
            // SAFETY: the operation was not queued, so nobody else references the completion.
            unsafe { ffi::rbd_aio_release(completion) };
            return Err(self.failed(op.call(), offset, op.length(), rc));
        }
        self.in_flight.push_back(InFlight {
            completion,
            offset,
            op,
        });
        Ok(())
    }

    fn wait_oldest(&mut self) -> Result<(), CephError> {
        let Some(oldest) = self.in_flight.pop_front() else {
            return Ok(());
        };
        let rc = wait_and_release(oldest.completion);
        if rc < 0 {
            return Err(self.failed(
                oldest.op.call(),
                oldest.offset,
                oldest.op.length(),
                rc as i32,
            ));
        }
        if let WriteOp::Write(buf) = oldest.op {
            if self.spare.len() < self.depth {
                self.spare.push(buf);
            }
        }
        Ok(())
    }

    fn failed(&self, call: &'static str, offset: u64, length: u64, rc: i32) -> CephError {
        CephError::Write {
            call,
            image: self.image.spec.clone(),
            offset,
            length,
            errno: rc,
            message: errno_message(rc),
            hint: errno_hint(rc),
        }
    }
}

impl Drop for ImageWriter<'_> {
    fn drop(&mut self) {
        for op in self.in_flight.drain(..) {
            let rc = wait_and_release(op.completion);
            if rc < 0 {
                log::warn!(
                    "{} at offset {} of {} failed after an earlier error: {}",
                    op.op.call(),
                    op.offset,
                    self.image.spec,
                    errno_message(rc as i32)
                );
            }
        }
    }
}

/// Waits for a completion, releases it and returns its value.
fn wait_and_release(completion: ffi::rbd_completion_t) -> isize {
    // SAFETY: the completion is live and owned by the caller, who gives it up here; after the
    // wait librbd no longer touches the operation's buffer.
    unsafe {
        ffi::rbd_aio_wait_for_complete(completion);
        let rc = ffi::rbd_aio_get_return_value(completion);
        ffi::rbd_aio_release(completion);
        rc
    }
}
