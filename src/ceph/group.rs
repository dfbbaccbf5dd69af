//! RBD groups: snapshots of several images at one instant (crash-consistent across disks).
//!
//! A group snapshot creates one snapshot per member image in the group snapshot namespace,
//! under internal names (`.group.<pool>_<group id>_<snap id>`): such a snapshot is found
//! through `RbdImage::group_snapshot_id` and opened by id, never by name.

use std::ffi::{CStr, CString};

use super::cluster::PoolContext;
use super::error::{cstring, errno_hint, errno_message, CephError};
use super::ffi;
use super::image::RbdImage;

/// A group snapshot as `rbd_group_snap_list` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupSnapshotInfo {
    /// Name.
    pub name: String,
    /// Whether every member's snapshot was created (an interrupted create leaves it incomplete).
    pub complete: bool,
}

/// A named group in a pool (a name only: librbd has no group handle).
pub struct RbdGroup<'p> {
    pool: &'p PoolContext<'p>,
    name: String,
    name_c: CString,
}

impl<'p> RbdGroup<'p> {
    /// The group `name` of `pool` (no call is made: it may not exist yet).
    pub fn new(pool: &'p PoolContext<'p>, name: &str) -> Result<Self, CephError> {
        Ok(RbdGroup {
            pool,
            name: name.to_string(),
            name_c: cstring("group name", name)?,
        })
    }

    /// `pool/group` for messages.
    pub fn spec(&self) -> String {
        self.pool.image_spec(&self.name)
    }

    /// The group's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The pool the group lives in.
    pub fn pool(&self) -> &'p PoolContext<'p> {
        self.pool
    }

    fn check(&self, call: &'static str, rc: i32) -> Result<(), CephError> {
        if rc < 0 {
            return Err(CephError::Call {
                call,
                target: self.spec(),
                errno: rc,
                message: errno_message(rc),
                hint: errno_hint(rc),
            });
        }
        Ok(())
    }

    /// Creates the group; an existing group of that name is fine.
    pub fn create(&self) -> Result<(), CephError> {
        // SAFETY: valid ioctx and C string.
        let rc = unsafe { ffi::rbd_group_create(self.pool.io, self.name_c.as_ptr()) };
        if rc == -libc::EEXIST {
            return Ok(());
        }
        self.check("rbd_group_create", rc)
    }

    /// Adds image `image` of `image_pool` to the group.
    pub fn add_image(&self, image_pool: &PoolContext<'_>, image: &str) -> Result<(), CephError> {
        let image_c = cstring("image name", image)?;
        // SAFETY: valid ioctxs and C strings.
        let rc = unsafe {
            ffi::rbd_group_image_add(
                self.pool.io,
                self.name_c.as_ptr(),
                image_pool.io,
                image_c.as_ptr(),
            )
        };
        self.check("rbd_group_image_add", rc)
    }

    /// Snapshots every member image at one instant.
    pub fn create_snapshot(&self, name: &str) -> Result<(), CephError> {
        let snap_c = cstring("group snapshot name", name)?;
        // SAFETY: valid ioctx and C strings.
        let rc = unsafe {
            ffi::rbd_group_snap_create(self.pool.io, self.name_c.as_ptr(), snap_c.as_ptr())
        };
        self.check("rbd_group_snap_create", rc)
    }

    /// Removes group snapshot `name` and its member snapshots.
    pub fn remove_snapshot(&self, name: &str) -> Result<(), CephError> {
        let snap_c = cstring("group snapshot name", name)?;
        // SAFETY: valid ioctx and C strings.
        let rc = unsafe {
            ffi::rbd_group_snap_remove(self.pool.io, self.name_c.as_ptr(), snap_c.as_ptr())
        };
        self.check("rbd_group_snap_remove", rc)
    }

    /// The group's snapshots.
    pub fn snapshots(&self) -> Result<Vec<GroupSnapshotInfo>, CephError> {
        let size = std::mem::size_of::<ffi::rbd_group_snap_info_t>();
        let mut capacity = 16usize;
        loop {
            let mut buf: Vec<ffi::rbd_group_snap_info_t> = Vec::with_capacity(capacity);
            let mut count = capacity;
            // SAFETY: `buf` has room for `count` entries; librbd fills at most that many and
            // returns -ERANGE with the needed count when they do not fit.
            let rc = unsafe {
                ffi::rbd_group_snap_list(
                    self.pool.io,
                    self.name_c.as_ptr(),
                    buf.as_mut_ptr(),
                    size,
                    &mut count,
                )
            };
            if rc == -libc::ERANGE && count > capacity {
                capacity = count;
                continue;
            }
            self.check("rbd_group_snap_list", rc)?;
            // SAFETY: librbd initialised `count` entries.
            unsafe { buf.set_len(count) };
            let snaps = buf
                .iter()
                .map(|s| GroupSnapshotInfo {
                    name: if s.name.is_null() {
                        String::new()
                    } else {
                        // SAFETY: NUL-terminated, valid until the cleanup below.
                        unsafe { CStr::from_ptr(s.name) }
                            .to_string_lossy()
                            .into_owned()
                    },
                    complete: s.state == ffi::RBD_GROUP_SNAP_STATE_COMPLETE,
                })
                .collect();
            // SAFETY: frees the names librbd allocated for these entries.
            unsafe { ffi::rbd_group_snap_list_cleanup(buf.as_mut_ptr(), size, count) };
            return Ok(snaps);
        }
    }

    /// The member snapshot of `image` that belongs to group snapshot `snapshot`.
    pub fn image_snapshot_id(
        &self,
        image: &RbdImage<'_>,
        snapshot: &str,
    ) -> Result<u64, CephError> {
        image
            .group_snapshot_id(&self.name, snapshot)?
            .ok_or_else(|| CephError::Call {
                call: "rbd_snap_get_group_namespace",
                target: format!("{}@{}", image.spec(), snapshot),
                errno: -libc::ENOENT,
                message: format!(
                    "the image has no snapshot of group snapshot {}@{snapshot}",
                    self.spec()
                ),
                hint: "",
            })
    }
}
