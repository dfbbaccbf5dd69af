//! Freezing guest filesystems through the QEMU guest agent, held by a guard that thaws.
//!
//! The `virt` crate has no wrapper for `virDomainFSFreeze`/`virDomainFSThaw` or
//! `virDomainAgentSetResponseTimeout`, so they are called through `virt::sys`, each in one small
//! function below with its `// SAFETY:` note.
//!
//! **Agent timeout.** libvirt waits for the agent's answer to a freeze or thaw forever by
//! default (only its `guest-sync` handshake is bounded, to 5 s). An agent that answers the
//! handshake and then hangs (a stuck fsfreeze hook, a filesystem that cannot flush) would hang
//! the backup with it. So before freezing, the domain's agent response timeout is set to
//! [`DEFAULT_AGENT_TIMEOUT`] (30 s: flushing dirty data of a busy guest to Ceph can take
//! several seconds, and a freeze that fails too eagerly fails the backup of exactly the busy
//! guests; 30 s still bounds a hang). After the thaw it is set back to libvirt's own default
//! (block), since libvirt offers no way to read the previous value and "block" is what the
//! domain had unless someone changed it by hand.
//!
//! **A freeze that times out may still happen.** When libvirt gives up waiting, the guest
//! agent keeps working and may freeze the filesystems afterwards, with nobody left to thaw
//! them. So a freeze that failed because the agent did not answer in time is followed by a
//! thaw (the agent runs commands in order, so the thaw lands after the late freeze). A freeze
//! the agent refused (already frozen, a hook failed) is not: the agent undoes partial freezes
//! itself, and a guest that was already frozen may be held by someone else.
//!
//! **Thaw takes no mountpoints.** The QEMU driver rejects `virDomainFSThaw` with mountpoints
//! ("specifying mountpoints is not supported"), and the agent's thaw always thaws everything it
//! froze, so the guard thaws without a list even when it froze only some mountpoints.

use std::ffi::{c_char, c_uint, CString};
use std::ptr;
use std::time::{Duration, Instant};

use virt::domain::Domain;
use virt::sys;

use super::connection::HypervisorConnection;
use super::error::LibvirtError;

/// How long libvirt waits for the guest agent to answer a freeze or thaw; see the module doc.
pub const DEFAULT_AGENT_TIMEOUT: Duration = Duration::from_secs(30);

/// How many times a thaw is tried when the agent does not answer in time: a thaw queued behind
/// a slow freeze in the guest answers only once that freeze is done.
const THAW_ATTEMPTS: u32 = 3;

/// What a freeze call did.
#[derive(Debug, Clone, Copy)]
pub struct FreezeOutcome {
    /// Filesystems frozen (the return of virDomainFSFreeze).
    pub frozen_filesystems: u32,
    /// When the freeze call returned.
    pub frozen_at: Instant,
}

/// Guest filesystems held frozen; dropping it thaws them (errors are logged).
pub struct FreezeGuard<'c> {
    // Ties the guard to the connection its domain handle came from.
    #[allow(dead_code)]
    conn: &'c HypervisorConnection,
    domain: Domain,
    domain_uuid: String,
    domain_name: String,
    outcome: FreezeOutcome,
    thawed: bool,
    // Whether the agent timeout was set, so it is put back only then.
    timeout_set: bool,
}

impl<'c> FreezeGuard<'c> {
    /// Freezes the filesystems of a running domain (all, or only `mountpoints`).
    ///
    /// Uses [`DEFAULT_AGENT_TIMEOUT`]; see [`FreezeGuard::freeze_with_timeout`].
    pub fn freeze(
        conn: &'c HypervisorConnection,
        domain_uuid: &str,
        domain_name: &str,
        mountpoints: &[String],
    ) -> Result<Self, LibvirtError> {
        Self::freeze_with_timeout(
            conn,
            domain_uuid,
            domain_name,
            mountpoints,
            DEFAULT_AGENT_TIMEOUT,
        )
    }

    /// Freezes the filesystems of a running domain (all, or only `mountpoints`), with the
    /// guest agent's response timeout set to `agent_timeout` (whole seconds, at least 1) until
    /// the thaw.
    pub fn freeze_with_timeout(
        conn: &'c HypervisorConnection,
        domain_uuid: &str,
        domain_name: &str,
        mountpoints: &[String],
        agent_timeout: Duration,
    ) -> Result<Self, LibvirtError> {
        let freeze_error = |message: String| LibvirtError::Freeze {
            domain: domain_name.to_string(),
            message,
        };
        let domain = conn.lookup_uuid(domain_uuid)?;
        let mountpoints = mountpoints
            .iter()
            .map(|m| CString::new(m.as_str()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| freeze_error("a mountpoint contains a NUL byte".into()))?;

        let seconds = i32::try_from(agent_timeout.as_secs().max(1)).unwrap_or(i32::MAX);
        let timeout_set = match set_agent_timeout(&domain, seconds) {
            Ok(()) => true,
            // Not running: the freeze below says so.
            Err(e) if e.code().to_raw() == sys::VIR_ERR_OPERATION_INVALID => false,
            // Older libvirt (< 5.10) lacks the call; freezing still works, only unbounded.
            Err(e) => {
                log::warn!(
                    "cannot bound the guest agent timeout of domain {domain_name} ({}); the \
                     freeze will wait for the agent as long as it takes",
                    e.message()
                );
                false
            }
        };
        let restore = |domain: &Domain| {
            if timeout_set {
                restore_agent_timeout(domain, domain_name);
            }
        };

        match fs_freeze(&domain, &mountpoints) {
            Ok(frozen) => Ok(FreezeGuard {
                conn,
                domain,
                domain_uuid: domain_uuid.to_string(),
                domain_name: domain_name.to_string(),
                outcome: FreezeOutcome {
                    frozen_filesystems: frozen,
                    frozen_at: Instant::now(),
                },
                thawed: false,
                timeout_set,
            }),
            Err(e) if freeze_may_be_pending(&e) => {
                let after = match thaw_with_retries(&domain) {
                    Ok(_) => "the guest may have frozen after libvirt stopped waiting, so a thaw \
                              was sent and succeeded"
                        .to_string(),
                    Err(t) => format!(
                        "the guest may have frozen after libvirt stopped waiting, and the thaw \
                         sent after it failed too ({}): check with `virsh qemu-agent-command \
                         {domain_name} '{{\"execute\":\"guest-fsfreeze-status\"}}'` and thaw \
                         with `virsh domfsthaw {domain_name}`",
                        t.message()
                    ),
                };
                restore(&domain);
                Err(freeze_error(format!(
                    "the guest agent did not answer within {seconds} s ({}); {after}; check \
                     that qemu-guest-agent runs in the guest",
                    e.message()
                )))
            }
            Err(e) => {
                restore(&domain);
                let code = e.code().to_raw();
                let hint = if code == sys::VIR_ERR_OPERATION_INVALID {
                    // "domain is not running" says it all.
                    String::new()
                } else if code == sys::VIR_ERR_AGENT_UNRESPONSIVE {
                    "; check that qemu-guest-agent runs in the guest and that the domain has an \
                     org.qemu.guest_agent.0 channel"
                        .to_string()
                } else {
                    format!(
                        "; check the agent with `virsh qemu-agent-command {domain_name} \
                         '{{\"execute\":\"guest-fsfreeze-status\"}}'`: if it says frozen and \
                         no other backup is running, an earlier run left it frozen and `virsh \
                         domfsthaw {domain_name}` thaws it"
                    )
                };
                Err(freeze_error(format!("{}{hint}", e.message())))
            }
        }
    }

    /// The freeze's outcome.
    pub fn outcome(&self) -> FreezeOutcome {
        self.outcome
    }

    /// The UUID of the frozen domain.
    pub fn domain_uuid(&self) -> &str {
        &self.domain_uuid
    }

    /// Thaws now and reports the result; returns when the thaw call returned.
    pub fn thaw(mut self) -> Result<Instant, LibvirtError> {
        self.thawed = true;
        self.thaw_now()
    }

    /// Thaws (retrying while the agent does not answer in time) and puts the agent timeout back.
    fn thaw_now(&self) -> Result<Instant, LibvirtError> {
        let result = thaw_with_retries(&self.domain);
        let thawed_at = Instant::now();
        if self.timeout_set {
            restore_agent_timeout(&self.domain, &self.domain_name);
        }
        match result {
            Ok(_) => Ok(thawed_at),
            Err(e) => Err(LibvirtError::Thaw {
                domain: self.domain_name.clone(),
                message: e.message().to_string(),
            }),
        }
    }
}

impl Drop for FreezeGuard<'_> {
    fn drop(&mut self) {
        if !self.thawed {
            self.thawed = true;
            if let Err(e) = self.thaw_now() {
                log::error!("{e}");
            }
        }
    }
}

/// Thaws every frozen filesystem of a running domain, for a freeze this process does not hold
/// a guard for (one left by a run that died: `engine::freeze_ledger`). Returns how many
/// filesystems the agent thawed (0 when none was frozen).
pub fn thaw_domain(conn: &HypervisorConnection, domain_uuid: &str) -> Result<u32, LibvirtError> {
    let domain = conn.lookup_uuid(domain_uuid)?;
    let name = domain.name().unwrap_or_else(|_| domain_uuid.to_string());
    thaw_with_retries(&domain).map_err(|e| LibvirtError::Thaw {
        domain: name,
        message: e.message().to_string(),
    })
}

/// Whether a failed freeze may still take effect in the guest: libvirt stopped waiting for
/// the agent (it then reports "agent unresponsive"/"command timeout"), as opposed to the agent
/// refusing, or the agent not being connected at all (nothing was sent).
fn freeze_may_be_pending(e: &virt::error::Error) -> bool {
    agent_may_still_act(e.code().to_raw(), e.message())
}

/// [`freeze_may_be_pending`] on libvirt's error number and message.
fn agent_may_still_act(code: sys::virErrorNumber, message: &str) -> bool {
    (code == sys::VIR_ERR_AGENT_UNRESPONSIVE || code == sys::VIR_ERR_AGENT_COMMAND_TIMEOUT)
        && !message.contains("not connected")
}

/// Thaws all frozen filesystems, trying again while the agent does not answer in time.
fn thaw_with_retries(domain: &Domain) -> Result<u32, virt::error::Error> {
    let mut attempt = 1;
    loop {
        match fs_thaw(domain) {
            Err(e) if attempt < THAW_ATTEMPTS && freeze_may_be_pending(&e) => {
                log::warn!(
                    "thaw attempt {attempt} of {THAW_ATTEMPTS} got no answer from the guest \
                     agent ({}); trying again",
                    e.message()
                );
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// Puts the domain's agent timeout back to libvirt's default; failures are only logged, since
/// the value only matters for later agent calls.
fn restore_agent_timeout(domain: &Domain, domain_name: &str) {
    if let Err(e) = set_agent_timeout(domain, sys::VIR_DOMAIN_AGENT_RESPONSE_TIMEOUT_BLOCK) {
        log::warn!(
            "cannot reset the guest agent timeout of domain {domain_name} to libvirt's default \
             ({}); agent calls on it keep a bounded timeout until it is restarted",
            e.message()
        );
    }
}

/// `virDomainFSFreeze(dom, mountpoints or NULL, n, 0)`: the number of frozen filesystems.
fn fs_freeze(domain: &Domain, mountpoints: &[CString]) -> Result<u32, virt::error::Error> {
    let mut pointers: Vec<*const c_char> = mountpoints.iter().map(|m| m.as_ptr()).collect();
    let (list, count) = if pointers.is_empty() {
        (ptr::null_mut(), 0)
    } else {
        (pointers.as_mut_ptr(), pointers.len())
    };
    // More than u32::MAX mountpoints cannot occur; if it did, libvirt would read fewer.
    let count = c_uint::try_from(count).unwrap_or(c_uint::MAX);
    // SAFETY: `domain.as_ptr()` is a valid virDomainPtr kept alive by `domain`; `list` is
    // NULL with `count` 0, or points to `count` pointers to NUL-terminated strings owned by
    // `mountpoints`, all alive until the call returns. libvirt only reads them.
    let frozen = unsafe { sys::virDomainFSFreeze(domain.as_ptr(), list, count, 0) };
    u32::try_from(frozen).map_err(|_| virt::error::Error::last_error())
}

/// `virDomainFSThaw(dom, NULL, 0, 0)`: the number of thawed filesystems.
fn fs_thaw(domain: &Domain) -> Result<u32, virt::error::Error> {
    // SAFETY: `domain.as_ptr()` is a valid virDomainPtr kept alive by `domain`; a NULL list
    // with count 0 means "all".
    let thawed = unsafe { sys::virDomainFSThaw(domain.as_ptr(), ptr::null_mut(), 0, 0) };
    u32::try_from(thawed).map_err(|_| virt::error::Error::last_error())
}

/// `virDomainAgentSetResponseTimeout(dom, seconds, 0)`.
fn set_agent_timeout(domain: &Domain, seconds: i32) -> Result<(), virt::error::Error> {
    // SAFETY: `domain.as_ptr()` is a valid virDomainPtr kept alive by `domain`.
    let rc = unsafe { sys::virDomainAgentSetResponseTimeout(domain.as_ptr(), seconds, 0) };
    if rc < 0 {
        Err(virt::error::Error::last_error())
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// libvirt's test driver keeps a frozen flag per filesystem ("/" and "/boot") and counts
    /// only newly frozen ones, which is enough to pin the call sequence without a guest; the
    /// lab test proves it against a real agent. One test, because `test:///default` is shared
    /// by every connection in the process.
    #[test]
    fn guard_freezes_thaws_and_drop_thaws_on_the_test_driver() {
        let conn = HypervisorConnection::open("test:///default").expect("test driver");
        let info = conn
            .list_domains(&["test".into()])
            .expect("lists")
            .remove(0);

        let guard = FreezeGuard::freeze(&conn, &info.uuid, &info.name, &[]).expect("freezes");
        assert_eq!(guard.outcome().frozen_filesystems, 2);
        guard.thaw().expect("thaws");

        let only_root = ["/".to_string()];
        let guard =
            FreezeGuard::freeze(&conn, &info.uuid, &info.name, &only_root).expect("freezes root");
        assert_eq!(guard.outcome().frozen_filesystems, 1);
        drop(guard);
        // 2 again: the drop thawed "/".
        let guard = FreezeGuard::freeze(&conn, &info.uuid, &info.name, &[]).expect("freezes");
        assert_eq!(guard.outcome().frozen_filesystems, 2);
    }

    #[test]
    fn only_unanswered_freezes_are_followed_by_a_thaw() {
        // Messages as libvirt's qemu_agent.c words them.
        let cases = [
            (sys::VIR_ERR_AGENT_UNRESPONSIVE, "Guest agent is not responding: Guest agent not available for now", true),
            (sys::VIR_ERR_AGENT_UNRESPONSIVE, "Guest agent is not responding: Guest agent disappeared while executing command", true),
            (sys::VIR_ERR_AGENT_COMMAND_TIMEOUT, "Guest agent command timed out", true),
            (sys::VIR_ERR_AGENT_UNRESPONSIVE, "Guest agent is not responding: QEMU guest agent is not connected", false),
            (sys::VIR_ERR_INTERNAL_ERROR, "internal error: unable to execute QEMU agent command 'guest-fsfreeze-freeze': The command guest-fsfreeze-freeze has been disabled for this instance", false),
            (sys::VIR_ERR_OPERATION_INVALID, "Requested operation is not valid: domain is not running", false),
        ];
        for (code, message, pending) in cases {
            assert_eq!(agent_may_still_act(code, message), pending, "{message}");
        }
    }

    #[test]
    fn freezing_an_unknown_domain_is_no_such_domain() {
        let conn = HypervisorConnection::open("test:///default").expect("test driver");
        let uuid = "00000000-0000-0000-0000-0000000000aa";
        assert!(matches!(
            FreezeGuard::freeze(&conn, uuid, "ghost", &[]),
            Err(LibvirtError::NoSuchDomain(_))
        ));
    }
}
