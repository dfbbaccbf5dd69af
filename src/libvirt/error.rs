//! Errors of the libvirt layer.

use thiserror::Error;

/// What went wrong talking to libvirt or reading a domain's XML.
#[derive(Debug, Error)]
pub enum LibvirtError {
    /// Connecting to the hypervisor failed.
    #[error("cannot connect to libvirt at {uri}: {message} (is libvirtd running, and may this user use it?)")]
    Connect { uri: String, message: String },
    /// A call on a domain failed.
    #[error("libvirt call {call} failed for domain {domain}: {message}")]
    DomainCall { domain: String, call: &'static str, message: String },
    /// A domain named on the command line does not exist.
    #[error("no libvirt domain named or with UUID {0:?}; `virsh list --all` shows the defined domains")]
    NoSuchDomain(String),
    /// The domain XML could not be parsed.
    #[error("malformed domain XML for {domain}: {message}")]
    MalformedXml { domain: String, message: String },
    /// The secret holding a Ceph key could not be read.
    #[error("cannot read libvirt secret {uuid} (Ceph key of user {user:?}) for domain {domain}: {message}; the secret must exist and be defined with private='no'")]
    Secret { domain: String, user: String, uuid: String, message: String },
    /// Freezing the guest filesystems failed.
    #[error("cannot freeze filesystems of domain {domain}: {message}")]
    Freeze { domain: String, message: String },
    /// Thawing the guest filesystems failed.
    #[error("cannot thaw filesystems of domain {domain}: {message}; check `virsh domfsinfo {domain}` and thaw by hand with `virsh domfsthaw {domain}`")]
    Thaw { domain: String, message: String },
}
