//! Advisory RADOS object locks (`cls_lock`), the cluster-side exclusion between hosts.
//!
//! A lock lives on one object under a name; it is held by a (client, cookie) pair, optionally
//! for a lease after which the OSD forgets it (a dead holder cannot block others forever).
//! Every client of the cluster sees the same lock, so two hypervisors sharing the cluster
//! exclude each other without sharing anything else. The lock is advisory: only clients that
//! ask for it are stopped by it.

use std::os::raw::{c_char, c_int};
use std::time::Duration;

use super::cluster::PoolContext;
use super::error::{cstring, errno_hint, errno_message, CephError};
use super::ffi;

/// One holder of a lock, as `rados_list_lockers` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Locker {
    /// The holder's entity, `client.<global id>`.
    pub client: String,
    /// The cookie it locked with.
    pub cookie: String,
    /// Its network address.
    pub address: String,
}

/// The outcome of trying to take a lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockAttempt {
    /// We hold it (taken, or our lease renewed).
    Acquired,
    /// Another (client, cookie) holds it.
    Busy,
}

impl PoolContext<'_> {
    fn object_call_failed(&self, call: &'static str, oid: &str, rc: i32) -> CephError {
        CephError::Call {
            call,
            target: format!("object {}/{oid}", self.describe()),
            errno: rc,
            message: errno_message(rc),
            hint: errno_hint(rc),
        }
    }

    /// Takes the exclusive lock `name` on object `oid` as `cookie` for `lease` (renewing it if
    /// this client already holds it with this cookie). The object is created if missing.
    pub fn lock_exclusive(
        &self,
        oid: &str,
        name: &str,
        cookie: &str,
        description: &str,
        lease: Duration,
    ) -> Result<LockAttempt, CephError> {
        let oid_c = cstring("object name", oid)?;
        let name_c = cstring("lock name", name)?;
        let cookie_c = cstring("lock cookie", cookie)?;
        let desc_c = cstring("lock description", description)?;
        let mut duration = libc::timeval {
            tv_sec: lease.as_secs() as libc::time_t,
            tv_usec: libc::suseconds_t::from(lease.subsec_micros() as i32),
        };
        // SAFETY: valid ioctx, C strings and a pointer to a local timeval that librados reads
        // during the call only.
        let rc = unsafe {
            ffi::rados_lock_exclusive(
                self.io,
                oid_c.as_ptr(),
                name_c.as_ptr(),
                cookie_c.as_ptr(),
                desc_c.as_ptr(),
                &mut duration,
                ffi::LIBRADOS_LOCK_FLAG_MAY_RENEW,
            )
        };
        match rc {
            0 => Ok(LockAttempt::Acquired),
            rc if rc == -libc::EBUSY => Ok(LockAttempt::Busy),
            rc => Err(self.object_call_failed("rados_lock_exclusive", oid, rc)),
        }
    }

    /// Releases our lock `name` on `oid`; `Ok(false)` if we did not hold it (any more).
    pub fn unlock(&self, oid: &str, name: &str, cookie: &str) -> Result<bool, CephError> {
        let oid_c = cstring("object name", oid)?;
        let name_c = cstring("lock name", name)?;
        let cookie_c = cstring("lock cookie", cookie)?;
        // SAFETY: valid ioctx and C strings.
        let rc = unsafe {
            ffi::rados_unlock(self.io, oid_c.as_ptr(), name_c.as_ptr(), cookie_c.as_ptr())
        };
        match rc {
            0 => Ok(true),
            rc if rc == -libc::ENOENT => Ok(false),
            rc => Err(self.object_call_failed("rados_unlock", oid, rc)),
        }
    }

    /// Who holds lock `name` on `oid` now (expired leases are not listed).
    pub fn lockers(&self, oid: &str, name: &str) -> Result<Vec<Locker>, CephError> {
        let oid_c = cstring("object name", oid)?;
        let name_c = cstring("lock name", name)?;
        let mut sizes = [256usize; 4];
        // Bounded: each round either fits or learns the sizes it needs; a lock changing between
        // two rounds can need a third.
        for _ in 0..8 {
            let mut tag = vec![0 as c_char; sizes[0]];
            let mut clients = vec![0 as c_char; sizes[1]];
            let mut cookies = vec![0 as c_char; sizes[2]];
            let mut addrs = vec![0 as c_char; sizes[3]];
            let mut exclusive: c_int = 0;
            let [mut tag_len, mut clients_len, mut cookies_len, mut addrs_len] = sizes;
            // SAFETY: every buffer has the length passed with it; librados writes at most that
            // many bytes, or returns -ERANGE with the sizes it needs.
            let rc = unsafe {
                ffi::rados_list_lockers(
                    self.io,
                    oid_c.as_ptr(),
                    name_c.as_ptr(),
                    &mut exclusive,
                    tag.as_mut_ptr(),
                    &mut tag_len,
                    clients.as_mut_ptr(),
                    &mut clients_len,
                    cookies.as_mut_ptr(),
                    &mut cookies_len,
                    addrs.as_mut_ptr(),
                    &mut addrs_len,
                )
            };
            if rc == -libc::ERANGE as isize {
                let needed = [tag_len, clients_len, cookies_len, addrs_len];
                for (size, need) in sizes.iter_mut().zip(needed) {
                    *size = (*size).max(need).max(1) * 2;
                }
                continue;
            }
            if rc == -libc::ENOENT as isize {
                // No object, so no lock.
                return Ok(Vec::new());
            }
            if rc < 0 {
                return Err(self.object_call_failed("rados_list_lockers", oid, rc as i32));
            }
            let count = rc as usize;
            let clients = split_nul(&clients[..clients_len.min(clients.len())], count);
            let cookies = split_nul(&cookies[..cookies_len.min(cookies.len())], count);
            let addrs = split_nul(&addrs[..addrs_len.min(addrs.len())], count);
            return Ok(clients
                .into_iter()
                .zip(cookies)
                .zip(addrs)
                .map(|((client, cookie), address)| Locker {
                    client,
                    cookie,
                    address,
                })
                .collect());
        }
        Err(self.object_call_failed("rados_list_lockers", oid, -libc::ERANGE))
    }

    /// Breaks `client`'s lock `name` on `oid` taken with `cookie`; `Ok(false)` if it was not
    /// held (any more).
    pub fn break_lock(
        &self,
        oid: &str,
        name: &str,
        client: &str,
        cookie: &str,
    ) -> Result<bool, CephError> {
        let oid_c = cstring("object name", oid)?;
        let name_c = cstring("lock name", name)?;
        let client_c = cstring("lock client", client)?;
        let cookie_c = cstring("lock cookie", cookie)?;
        // SAFETY: valid ioctx and C strings.
        let rc = unsafe {
            ffi::rados_break_lock(
                self.io,
                oid_c.as_ptr(),
                name_c.as_ptr(),
                client_c.as_ptr(),
                cookie_c.as_ptr(),
            )
        };
        match rc {
            0 => Ok(true),
            rc if rc == -libc::ENOENT => Ok(false),
            rc => Err(self.object_call_failed("rados_break_lock", oid, rc)),
        }
    }
}

/// The first `count` NUL-terminated strings of `buf` (fewer if it ends early).
fn split_nul(buf: &[c_char], count: usize) -> Vec<String> {
    // c_char is i8 or u8 depending on the target; the bytes are the same.
    let bytes: Vec<u8> = buf.iter().map(|&c| c as u8).collect();
    bytes
        .split(|&b| b == 0)
        .take(count)
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lockers_come_from_nul_separated_lists() {
        let raw: Vec<c_char> = b"client.41\0client.42\0"
            .iter()
            .map(|&b| b as c_char)
            .collect();
        assert_eq!(split_nul(&raw, 2), vec!["client.41", "client.42"]);
        assert_eq!(split_nul(&raw, 1), vec!["client.41"]);
        // A count larger than what the buffer holds never reads past it.
        assert_eq!(split_nul(&raw, 5).len(), 3);
    }
}
