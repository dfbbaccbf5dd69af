//! The raw librados/librbd C API: only the functions this project calls.
//!
//! Every `unsafe extern "C"` declaration of the project lives here; the safe owners in
//! `cluster.rs` and `image.rs` are the only callers. Signatures follow `rados/librados.h` and
//! `rbd/librbd.h` of Ceph 16 (Pacific); Debian ships no pkg-config files for them, so
//! `build.rs` links `rados` and `rbd` by name.

#![allow(non_camel_case_types)]

use libc::{c_char, c_int, c_void, size_t, ssize_t, timespec, timeval};

/// `rados_t`: a cluster handle.
pub type rados_t = *mut c_void;
/// `rados_ioctx_t`: a pool I/O context.
pub type rados_ioctx_t = *mut c_void;
/// `rbd_image_t`: an open image.
pub type rbd_image_t = *mut c_void;
/// `rbd_completion_t`: an asynchronous operation.
pub type rbd_completion_t = *mut c_void;
/// `rbd_callback_t`.
pub type rbd_callback_t = Option<unsafe extern "C" fn(cb: rbd_completion_t, arg: *mut c_void)>;
/// Callback of `rbd_diff_iterate2`: (offset, length, exists, arg) -> 0 to go on.
pub type rbd_diff_cb = unsafe extern "C" fn(u64, size_t, c_int, *mut c_void) -> c_int;

/// `RBD_MAX_BLOCK_NAME_SIZE`.
pub const RBD_MAX_BLOCK_NAME_SIZE: usize = 24;
/// `RBD_MAX_IMAGE_NAME_SIZE`.
pub const RBD_MAX_IMAGE_NAME_SIZE: usize = 96;
/// `RBD_FEATURE_OBJECT_MAP`.
pub const RBD_FEATURE_OBJECT_MAP: u64 = 1 << 3;
/// `RBD_FEATURE_FAST_DIFF`.
pub const RBD_FEATURE_FAST_DIFF: u64 = 1 << 4;
/// `RBD_FLAG_OBJECT_MAP_INVALID`.
pub const RBD_FLAG_OBJECT_MAP_INVALID: u64 = 1 << 0;
/// `RBD_FLAG_FAST_DIFF_INVALID`.
pub const RBD_FLAG_FAST_DIFF_INVALID: u64 = 1 << 1;
/// `LIBRADOS_OP_FLAG_FADVISE_SEQUENTIAL`.
pub const LIBRADOS_OP_FLAG_FADVISE_SEQUENTIAL: c_int = 0x8;
/// `LIBRADOS_OP_FLAG_FADVISE_NOCACHE`.
pub const LIBRADOS_OP_FLAG_FADVISE_NOCACHE: c_int = 0x40;

/// `LIBRADOS_LOCK_FLAG_MAY_RENEW`: taking a lock already held by the same client and cookie
/// renews its lease instead of failing with `-EEXIST`.
pub const LIBRADOS_LOCK_FLAG_MAY_RENEW: u8 = 1;

/// `rbd_image_watcher_t`: a client watching an image's header (one that has it open for writing).
#[repr(C)]
pub struct rbd_image_watcher_t {
    pub addr: *mut c_char,
    pub id: i64,
    pub cookie: u64,
}

/// `rbd_image_info_t`.
#[repr(C)]
pub struct rbd_image_info_t {
    pub size: u64,
    pub obj_size: u64,
    pub num_objs: u64,
    pub order: c_int,
    pub block_name_prefix: [c_char; RBD_MAX_BLOCK_NAME_SIZE],
    pub parent_pool: i64,
    pub parent_name: [c_char; RBD_MAX_IMAGE_NAME_SIZE],
}

/// `rbd_snap_info_t`.
#[repr(C)]
pub struct rbd_snap_info_t {
    pub id: u64,
    pub size: u64,
    pub name: *const c_char,
}

/// `rbd_group_info_t`.
#[repr(C)]
pub struct rbd_group_info_t {
    pub name: *mut c_char,
    pub pool: i64,
}

/// `rbd_group_snap_info_t` (`state` is the `rbd_group_snap_state_t` enum).
#[repr(C)]
pub struct rbd_group_snap_info_t {
    pub name: *mut c_char,
    pub state: c_int,
}

/// `RBD_GROUP_SNAP_STATE_COMPLETE`.
pub const RBD_GROUP_SNAP_STATE_COMPLETE: c_int = 1;

/// `rbd_snap_group_namespace_t`.
#[repr(C)]
pub struct rbd_snap_group_namespace_t {
    pub group_pool: i64,
    pub group_name: *mut c_char,
    pub group_snap_name: *mut c_char,
}

#[link(name = "rados")]
extern "C" {
    pub fn rados_create2(
        cluster: *mut rados_t,
        clustername: *const c_char,
        name: *const c_char,
        flags: u64,
    ) -> c_int;
    pub fn rados_conf_read_file(cluster: rados_t, path: *const c_char) -> c_int;
    pub fn rados_conf_set(cluster: rados_t, option: *const c_char, value: *const c_char) -> c_int;
    pub fn rados_connect(cluster: rados_t) -> c_int;
    pub fn rados_shutdown(cluster: rados_t);
    pub fn rados_ioctx_create(
        cluster: rados_t,
        pool_name: *const c_char,
        ioctx: *mut rados_ioctx_t,
    ) -> c_int;
    pub fn rados_ioctx_destroy(io: rados_ioctx_t);
    pub fn rados_ioctx_set_namespace(io: rados_ioctx_t, nspace: *const c_char);
    pub fn rados_ioctx_get_id(io: rados_ioctx_t) -> i64;
    pub fn rados_version(major: *mut c_int, minor: *mut c_int, extra: *mut c_int);
    pub fn rados_get_instance_id(cluster: rados_t) -> u64;
    pub fn rados_lock_exclusive(
        io: rados_ioctx_t,
        oid: *const c_char,
        name: *const c_char,
        cookie: *const c_char,
        desc: *const c_char,
        duration: *mut timeval,
        flags: u8,
    ) -> c_int;
    pub fn rados_unlock(
        io: rados_ioctx_t,
        oid: *const c_char,
        name: *const c_char,
        cookie: *const c_char,
    ) -> c_int;
    pub fn rados_list_lockers(
        io: rados_ioctx_t,
        oid: *const c_char,
        name: *const c_char,
        exclusive: *mut c_int,
        tag: *mut c_char,
        tag_len: *mut size_t,
        clients: *mut c_char,
        clients_len: *mut size_t,
        cookies: *mut c_char,
        cookies_len: *mut size_t,
        addrs: *mut c_char,
        addrs_len: *mut size_t,
    ) -> ssize_t;
    pub fn rados_break_lock(
        io: rados_ioctx_t,
        oid: *const c_char,
        name: *const c_char,
        client: *const c_char,
        cookie: *const c_char,
    ) -> c_int;
    pub fn rados_pool_lookup(cluster: rados_t, pool_name: *const c_char) -> i64;
}

#[link(name = "rbd")]
extern "C" {
    pub fn rbd_version(major: *mut c_int, minor: *mut c_int, extra: *mut c_int);
    pub fn rbd_create(
        io: rados_ioctx_t,
        name: *const c_char,
        size: u64,
        order: *mut c_int,
    ) -> c_int;
    pub fn rbd_remove(io: rados_ioctx_t, name: *const c_char) -> c_int;
    pub fn rbd_rename(
        src_io_ctx: rados_ioctx_t,
        srcname: *const c_char,
        destname: *const c_char,
    ) -> c_int;
    pub fn rbd_resize(image: rbd_image_t, size: u64) -> c_int;
    pub fn rbd_write(image: rbd_image_t, ofs: u64, len: size_t, buf: *const c_char) -> ssize_t;
    pub fn rbd_discard(image: rbd_image_t, ofs: u64, len: u64) -> c_int;
    pub fn rbd_flush(image: rbd_image_t) -> c_int;
    pub fn rbd_open(
        io: rados_ioctx_t,
        name: *const c_char,
        image: *mut rbd_image_t,
        snap_name: *const c_char,
    ) -> c_int;
    pub fn rbd_open_read_only(
        io: rados_ioctx_t,
        name: *const c_char,
        image: *mut rbd_image_t,
        snap_name: *const c_char,
    ) -> c_int;
    pub fn rbd_close(image: rbd_image_t) -> c_int;
    pub fn rbd_stat(image: rbd_image_t, info: *mut rbd_image_info_t, infosize: size_t) -> c_int;
    pub fn rbd_get_features(image: rbd_image_t, features: *mut u64) -> c_int;
    pub fn rbd_get_flags(image: rbd_image_t, flags: *mut u64) -> c_int;
    pub fn rbd_get_id(image: rbd_image_t, id: *mut c_char, id_len: size_t) -> c_int;
    pub fn rbd_watchers_list(
        image: rbd_image_t,
        watchers: *mut rbd_image_watcher_t,
        max_watchers: *mut size_t,
    ) -> c_int;
    pub fn rbd_watchers_list_cleanup(watchers: *mut rbd_image_watcher_t, num_watchers: size_t);
    pub fn rbd_snap_list(
        image: rbd_image_t,
        snaps: *mut rbd_snap_info_t,
        max_snaps: *mut c_int,
    ) -> c_int;
    pub fn rbd_snap_list_end(snaps: *mut rbd_snap_info_t);
    pub fn rbd_snap_create(image: rbd_image_t, snapname: *const c_char) -> c_int;
    pub fn rbd_snap_remove(image: rbd_image_t, snapname: *const c_char) -> c_int;
    pub fn rbd_snap_protect(image: rbd_image_t, snap_name: *const c_char) -> c_int;
    pub fn rbd_snap_unprotect(image: rbd_image_t, snap_name: *const c_char) -> c_int;
    pub fn rbd_snap_is_protected(
        image: rbd_image_t,
        snap_name: *const c_char,
        is_protected: *mut c_int,
    ) -> c_int;
    pub fn rbd_snap_get_timestamp(
        image: rbd_image_t,
        snap_id: u64,
        timestamp: *mut timespec,
    ) -> c_int;
    pub fn rbd_snap_get_id(image: rbd_image_t, snapname: *const c_char, snap_id: *mut u64)
        -> c_int;
    pub fn rbd_diff_iterate2(
        image: rbd_image_t,
        fromsnapname: *const c_char,
        ofs: u64,
        len: u64,
        include_parent: u8,
        whole_object: u8,
        cb: rbd_diff_cb,
        arg: *mut c_void,
    ) -> c_int;
    pub fn rbd_aio_create_completion(
        cb_arg: *mut c_void,
        complete_cb: rbd_callback_t,
        c: *mut rbd_completion_t,
    ) -> c_int;
    pub fn rbd_aio_read2(
        image: rbd_image_t,
        off: u64,
        len: size_t,
        buf: *mut c_char,
        c: rbd_completion_t,
        op_flags: c_int,
    ) -> c_int;
    pub fn rbd_aio_write(
        image: rbd_image_t,
        off: u64,
        len: size_t,
        buf: *const c_char,
        c: rbd_completion_t,
    ) -> c_int;
    pub fn rbd_aio_discard(image: rbd_image_t, off: u64, len: u64, c: rbd_completion_t) -> c_int;
    pub fn rbd_aio_wait_for_complete(c: rbd_completion_t) -> c_int;
    pub fn rbd_aio_get_return_value(c: rbd_completion_t) -> ssize_t;
    pub fn rbd_aio_release(c: rbd_completion_t);
    pub fn rbd_snap_set_by_id(image: rbd_image_t, snap_id: u64) -> c_int;
    pub fn rbd_snap_get_group_namespace(
        image: rbd_image_t,
        snap_id: u64,
        group_snap: *mut rbd_snap_group_namespace_t,
        group_snap_size: size_t,
    ) -> c_int;
    pub fn rbd_snap_group_namespace_cleanup(
        group_snap: *mut rbd_snap_group_namespace_t,
        group_snap_size: size_t,
    ) -> c_int;
    pub fn rbd_get_group(
        image: rbd_image_t,
        group_info: *mut rbd_group_info_t,
        group_info_size: size_t,
    ) -> c_int;
    pub fn rbd_group_info_cleanup(
        group_info: *mut rbd_group_info_t,
        group_info_size: size_t,
    ) -> c_int;
    pub fn rbd_group_create(io: rados_ioctx_t, name: *const c_char) -> c_int;
    pub fn rbd_group_image_add(
        group_p: rados_ioctx_t,
        group_name: *const c_char,
        image_p: rados_ioctx_t,
        image_name: *const c_char,
    ) -> c_int;
    pub fn rbd_group_snap_create(
        group_p: rados_ioctx_t,
        group_name: *const c_char,
        snap_name: *const c_char,
    ) -> c_int;
    pub fn rbd_group_snap_remove(
        group_p: rados_ioctx_t,
        group_name: *const c_char,
        snap_name: *const c_char,
    ) -> c_int;
    pub fn rbd_group_snap_list(
        group_p: rados_ioctx_t,
        group_name: *const c_char,
        snaps: *mut rbd_group_snap_info_t,
        group_snap_info_size: size_t,
        num_entries: *mut size_t,
    ) -> c_int;
    pub fn rbd_group_snap_list_cleanup(
        snaps: *mut rbd_group_snap_info_t,
        group_snap_info_size: size_t,
        num_entries: size_t,
    ) -> c_int;
}
