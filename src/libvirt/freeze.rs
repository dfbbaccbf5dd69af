//! Freezing guest filesystems (contract: filled in by the libvirt work).

use std::time::Instant;

use super::connection::HypervisorConnection;
use super::error::LibvirtError;

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
    conn: &'c HypervisorConnection,
    domain_uuid: String,
    outcome: FreezeOutcome,
    thawed: bool,
}

impl<'c> FreezeGuard<'c> {
    /// Freezes the filesystems of a running domain (all, or only `mountpoints`).
    pub fn freeze(conn: &'c HypervisorConnection, domain_uuid: &str, domain_name: &str, mountpoints: &[String]) -> Result<Self, LibvirtError> {
        let _ = (conn, domain_uuid, domain_name, mountpoints);
        todo!("libvirt work")
    }

    /// The freeze's outcome.
    pub fn outcome(&self) -> FreezeOutcome {
        self.outcome
    }

    /// Thaws now and reports the result; returns when the thaw call returned.
    pub fn thaw(mut self) -> Result<Instant, LibvirtError> {
        self.thawed = true;
        let _ = (self.conn, &self.domain_uuid);
        todo!("libvirt work")
    }
}

impl Drop for FreezeGuard<'_> {
    fn drop(&mut self) {
        if !self.thawed {
            todo!("libvirt work: thaw, log errors")
        }
    }
}
