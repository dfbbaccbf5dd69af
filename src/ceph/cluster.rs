//! A connection to a Ceph cluster and I/O contexts on its pools.

use std::ffi::CString;
use std::ptr;
use std::time::Duration;

use super::error::{cstring, errno_hint, errno_message, CephError};
use super::ffi;
use crate::secret::SecretString;

/// Where the cluster is and who we are: the key of `RadosCluster`'s connection cache.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClusterAddress {
    /// Monitors as `host:port` (brackets around IPv6); empty means "from the config file".
    pub monitors: Vec<String>,
    /// A ceph.conf to read; `None` reads Ceph's default search path only when `monitors` is empty.
    pub conf_file: Option<String>,
    /// Ceph user without `client.`.
    pub user: String,
}

impl ClusterAddress {
    /// The monitors for messages.
    pub fn describe(&self) -> String {
        if self.monitors.is_empty() {
            match &self.conf_file {
                Some(f) => format!("from {f}"),
                None => "from the default ceph.conf".to_string(),
            }
        } else {
            self.monitors.join(",")
        }
    }
}

/// Bounds on how long Ceph calls may block, so a dead cluster fails a run instead of hanging it.
#[derive(Debug, Clone, Copy)]
pub struct CephTimeouts {
    /// `client_mount_timeout` and `rados_mon_op_timeout`.
    pub monitor: Duration,
    /// `rados_osd_op_timeout` (0 = none).
    pub osd: Duration,
}

impl Default for CephTimeouts {
    fn default() -> Self {
        CephTimeouts {
            monitor: Duration::from_secs(30),
            osd: Duration::from_secs(120),
        }
    }
}

/// A connected `rados_t`; shut down on drop. Thread-safe, shared by the workers.
pub struct RadosCluster {
    handle: ffi::rados_t,
    address: ClusterAddress,
}

// SAFETY: librados cluster handles are documented as thread-safe once connected; we never
// change configuration after `connect` returns.
unsafe impl Send for RadosCluster {}
// SAFETY: see above.
unsafe impl Sync for RadosCluster {}

impl RadosCluster {
    /// Connects as `address.user` with `key` (base64, from a libvirt secret) if given,
    /// otherwise with whatever keyring the config names.
    pub fn connect(
        address: &ClusterAddress,
        key: Option<&SecretString>,
        timeouts: CephTimeouts,
    ) -> Result<Self, CephError> {
        let fail = |rc: i32| CephError::Connect {
            monitors: address.describe(),
            user: address.user.clone(),
            errno: rc,
            message: errno_message(rc),
            hint: errno_hint(rc),
        };
        let name = cstring("Ceph user", &format!("client.{}", address.user))?;
        let cluster_name = cstring("cluster name", "ceph")?;
        let mut handle: ffi::rados_t = ptr::null_mut();
        // SAFETY: out-pointer to a local; strings are valid NUL-terminated C strings.
        let rc =
            unsafe { ffi::rados_create2(&mut handle, cluster_name.as_ptr(), name.as_ptr(), 0) };
        if rc < 0 {
            return Err(fail(rc));
        }
        // From here on `cluster` owns the handle and shuts it down on every error path.
        let cluster = RadosCluster {
            handle,
            address: address.clone(),
        };
        match &address.conf_file {
            Some(path) => {
                let path_c = cstring("config file", path)?;
                // SAFETY: valid handle and C string.
                let rc = unsafe { ffi::rados_conf_read_file(cluster.handle, path_c.as_ptr()) };
                if rc < 0 {
                    return Err(fail(rc));
                }
            }
            None if address.monitors.is_empty() => {
                // SAFETY: a null path makes librados search its default locations.
                let rc = unsafe { ffi::rados_conf_read_file(cluster.handle, ptr::null()) };
                if rc < 0 {
                    return Err(fail(rc));
                }
            }
            None => {}
        }
        let monitor_secs = timeouts.monitor.as_secs().max(1).to_string();
        let osd_secs = timeouts.osd.as_secs().to_string();
        let mut settings: Vec<(&str, String)> = vec![
            ("client_mount_timeout", monitor_secs.clone()),
            ("rados_mon_op_timeout", monitor_secs),
            ("rados_osd_op_timeout", osd_secs),
            // A backup client needs no admin socket; with a shared path every client after the
            // first logs bind errors.
            ("admin_socket", String::new()),
            ("log_to_stderr", "false".into()),
            ("err_to_stderr", "false".into()),
        ];
        if !address.monitors.is_empty() {
            settings.push(("mon_host", address.monitors.join(",")));
        }
        for (option, value) in &settings {
            cluster.set(option, value).map_err(&fail)?;
        }
        if let Some(key) = key {
            // The key goes straight from memory into librados; it is never written anywhere.
            let value = CString::new(key.expose()).map_err(|_| CephError::NulByte {
                what: "Ceph key",
                value: "<redacted>".into(),
            })?;
            let option = cstring("option", "key")?;
            // SAFETY: valid handle and C strings.
            let rc =
                unsafe { ffi::rados_conf_set(cluster.handle, option.as_ptr(), value.as_ptr()) };
            if rc < 0 {
                return Err(fail(rc));
            }
        }
        // SAFETY: valid, configured handle.
        let rc = unsafe { ffi::rados_connect(cluster.handle) };
        if rc < 0 {
            return Err(fail(rc));
        }
        Ok(cluster)
    }

    fn set(&self, option: &str, value: &str) -> Result<(), i32> {
        let option_c = CString::new(option).map_err(|_| -libc::EINVAL)?;
        let value_c = CString::new(value).map_err(|_| -libc::EINVAL)?;
        // SAFETY: valid handle and C strings.
        let rc = unsafe { ffi::rados_conf_set(self.handle, option_c.as_ptr(), value_c.as_ptr()) };
        if rc < 0 {
            Err(rc)
        } else {
            Ok(())
        }
    }

    /// This connection's global id in the cluster (the `N` of `client.N`), as image watchers
    /// and lock holders name it.
    pub fn instance_id(&self) -> u64 {
        // SAFETY: connected handle; a pure accessor.
        unsafe { ffi::rados_get_instance_id(self.handle) }
    }

    /// Where this connection goes.
    pub fn address(&self) -> &ClusterAddress {
        &self.address
    }

    /// Whether pool `pool` exists (`rados_pool_lookup`; any error other than "no such pool"
    /// is an error, so a cluster that cannot answer is never taken for a missing pool).
    pub fn pool_exists(&self, pool: &str) -> Result<bool, CephError> {
        let pool_c = cstring("pool name", pool)?;
        // SAFETY: connected handle and valid C string.
        let rc = unsafe { ffi::rados_pool_lookup(self.handle, pool_c.as_ptr()) };
        if rc >= 0 {
            return Ok(true);
        }
        let rc = i32::try_from(rc).unwrap_or(-libc::EIO);
        if rc == -libc::ENOENT {
            return Ok(false);
        }
        Err(CephError::Call {
            call: "rados_pool_lookup",
            target: pool.to_string(),
            errno: rc,
            message: errno_message(rc),
            hint: errno_hint(rc),
        })
    }

    /// Opens an I/O context on `pool`, in `namespace` if given.
    pub fn open_pool(
        &self,
        pool: &str,
        namespace: Option<&str>,
    ) -> Result<PoolContext<'_>, CephError> {
        let pool_c = cstring("pool name", pool)?;
        let mut io: ffi::rados_ioctx_t = ptr::null_mut();
        // SAFETY: connected handle, valid C string, out-pointer to a local.
        let rc = unsafe { ffi::rados_ioctx_create(self.handle, pool_c.as_ptr(), &mut io) };
        if rc < 0 {
            return Err(CephError::OpenPool {
                pool: pool.to_string(),
                errno: rc,
                message: errno_message(rc),
                hint: errno_hint(rc),
            });
        }
        let ctx = PoolContext {
            io,
            pool: pool.to_string(),
            namespace: namespace.map(str::to_string),
            cluster: self,
        };
        if let Some(ns) = namespace {
            let ns_c = cstring("namespace", ns)?;
            // SAFETY: valid ioctx and C string; librados copies the namespace.
            unsafe { ffi::rados_ioctx_set_namespace(ctx.io, ns_c.as_ptr()) };
        }
        Ok(ctx)
    }
}

impl Drop for RadosCluster {
    fn drop(&mut self) {
        // SAFETY: the handle came from rados_create2 and every borrower (PoolContext) has a
        // lifetime bound to `self`, so none outlives this shutdown.
        unsafe { ffi::rados_shutdown(self.handle) };
    }
}

/// An I/O context on one pool (and namespace); destroyed on drop.
pub struct PoolContext<'c> {
    pub(super) io: ffi::rados_ioctx_t,
    pool: String,
    namespace: Option<String>,
    cluster: &'c RadosCluster,
}

// SAFETY: librados I/O contexts may be used from several threads for I/O; the namespace is set
// once before the context is shared.
unsafe impl Send for PoolContext<'_> {}
// SAFETY: see above.
unsafe impl Sync for PoolContext<'_> {}

impl PoolContext<'_> {
    /// `pool` or `pool/namespace`, for messages.
    pub fn describe(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{}/{}", self.pool, ns),
            None => self.pool.clone(),
        }
    }

    /// `pool/image` or `pool/namespace/image`, for messages.
    pub fn image_spec(&self, image: &str) -> String {
        format!("{}/{}", self.describe(), image)
    }

    /// The pool's numeric id (what `rbd_get_group` reports a group's pool as).
    pub fn pool_id(&self) -> i64 {
        // SAFETY: valid ioctx; a pure accessor.
        unsafe { ffi::rados_ioctx_get_id(self.io) }
    }

    /// The namespace, if any.
    pub fn namespace(&self) -> Option<&str> {
        self.namespace.as_deref()
    }

    /// The connection this context belongs to.
    pub fn cluster(&self) -> &RadosCluster {
        self.cluster
    }
}

impl PoolContext<'_> {
    fn call_failed(&self, call: &'static str, image: &str, rc: i32) -> CephError {
        CephError::Call {
            call,
            target: self.image_spec(image),
            errno: rc,
            message: errno_message(rc),
            hint: errno_hint(rc),
        }
    }

    /// Creates image `name` of `size` bytes with the cluster's default features and order.
    pub fn create_image(&self, name: &str, size: u64) -> Result<(), CephError> {
        let name_c = cstring("image name", name)?;
        let mut order: libc::c_int = 0;
        // SAFETY: valid ioctx, C string, out-pointer to a local.
        let rc = unsafe { ffi::rbd_create(self.io, name_c.as_ptr(), size, &mut order) };
        if rc < 0 {
            return Err(self.call_failed("rbd_create", name, rc));
        }
        Ok(())
    }

    /// Removes image `name` (it must have no snapshots).
    pub fn remove_image(&self, name: &str) -> Result<(), CephError> {
        let name_c = cstring("image name", name)?;
        // SAFETY: valid ioctx and C string.
        let rc = unsafe { ffi::rbd_remove(self.io, name_c.as_ptr()) };
        if rc < 0 {
            return Err(self.call_failed("rbd_remove", name, rc));
        }
        Ok(())
    }

    /// Renames image `from` to `to` within this pool.
    pub fn rename_image(&self, from: &str, to: &str) -> Result<(), CephError> {
        let from_c = cstring("image name", from)?;
        let to_c = cstring("image name", to)?;
        // SAFETY: valid ioctx and C strings.
        let rc = unsafe { ffi::rbd_rename(self.io, from_c.as_ptr(), to_c.as_ptr()) };
        if rc < 0 {
            return Err(self.call_failed("rbd_rename", from, rc));
        }
        Ok(())
    }

    /// The id of image `name`, or `None` if no image has that name.
    pub fn image_id(&self, name: &str) -> Result<Option<String>, CephError> {
        match super::image::RbdImage::open_read_only(self, name) {
            Ok(image) => Ok(Some(image.info()?.id)),
            Err(e) if e.errno() == Some(-libc::ENOENT) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Whether image `name` exists.
    pub fn image_exists(&self, name: &str) -> Result<bool, CephError> {
        match super::image::RbdImage::open_read_only(self, name) {
            Ok(_) => Ok(true),
            Err(e) if e.errno() == Some(-libc::ENOENT) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

impl Drop for PoolContext<'_> {
    fn drop(&mut self) {
        // SAFETY: the ioctx came from rados_ioctx_create; images opened on it borrow `self`.
        unsafe { ffi::rados_ioctx_destroy(self.io) };
    }
}
