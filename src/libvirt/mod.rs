//! Everything the tool asks of libvirt: which domains exist, their XML, the Ceph keys kept
//! in libvirt secrets, and freezing/thawing guest filesystems through the QEMU guest agent.
//!
//! `domain_xml` is pure (XML text in, disk specs out) and unit-tested without libvirt; the
//! rest wraps the `virt` crate. Calls that `virt` lacks (virDomainFSFreeze/Thaw) go through
//! `virt::sys` in `freeze.rs` only.

pub mod connection;
pub mod domain_xml;
pub mod error;
pub mod freeze;

pub use connection::{DomainInfo, HypervisorConnection};
pub use domain_xml::{
    parse_domain_xml, DiskEntry, DomainDescription, MonitorHost, RbdAuth, RbdDiskSpec, SkipReason,
};
pub use error::LibvirtError;
pub use freeze::{FreezeGuard, FreezeOutcome};
