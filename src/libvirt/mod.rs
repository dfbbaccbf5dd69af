//! Everything the tool asks of libvirt: which domains exist, their XML, the Ceph keys kept
//! in libvirt secrets, and freezing/thawing guest filesystems through the QEMU guest agent.
//!
//! `domain_xml` is pure (XML text in, disk specs out) and unit-tested without libvirt; the
//! rest wraps the `virt` crate and is unit-tested against libvirt's built-in `test:///default`
//! driver, then proven on the lab by `tests/lab_libvirt.rs`. Raw `virt::sys` calls are few and
//! each sits in one small function with its `// SAFETY:` note: freeze, thaw and the agent
//! timeout in `freeze.rs` (`virt` has no wrappers), and reading a secret in `connection.rs`
//! (`virt`'s wrapper leaks the key's buffer without wiping it).

pub mod connection;
pub mod domain_rewrite;
pub mod domain_xml;
pub mod error;
pub mod freeze;
pub mod live_domain;
pub mod live_xml;

pub use connection::{library_version, DomainInfo, HypervisorConnection};
pub use domain_xml::{
    parse_domain_xml, DiskEntry, DomainDescription, MonitorHost, RbdAuth, RbdDiskSpec, SkipReason,
};
pub use error::LibvirtError;
pub use freeze::{thaw_domain, FreezeGuard, FreezeOutcome, DEFAULT_AGENT_TIMEOUT};
