//! Errors of the libvirt layer.
//!
//! Each variant carries the domain (or URI) it is about and says what the operator can do,
//! because these messages end up in backup reports read by someone who did not write the
//! command line. No variant ever carries a secret value: Ceph keys travel as
//! [`crate::secret::SecretString`] and libvirt's own messages never contain them.

use thiserror::Error;

/// What went wrong talking to libvirt or reading a domain's XML.
#[derive(Debug, Error)]
pub enum LibvirtError {
    /// Connecting to the hypervisor failed.
    #[error("cannot connect to libvirt at {uri}: {message} (is libvirtd running, and may this user use it?)")]
    Connect {
        /// The URI that was opened.
        uri: String,
        /// libvirt's message.
        message: String,
    },
    /// A call on a domain failed.
    #[error("libvirt call {call} failed for domain {domain}: {message}")]
    DomainCall {
        /// Domain name (or the UUID when the name is not known).
        domain: String,
        /// The libvirt function that failed.
        call: &'static str,
        /// libvirt's message.
        message: String,
    },
    /// A domain named on the command line does not exist.
    #[error(
        "no libvirt domain named or with UUID {0:?}; `virsh list --all` shows the defined domains"
    )]
    NoSuchDomain(String),
    /// The domain XML could not be parsed.
    #[error("malformed domain XML for {domain}: {message}")]
    MalformedXml {
        /// Domain name as listed.
        domain: String,
        /// What is wrong, naming the disk when it is about one.
        message: String,
    },
    /// The secret holding a Ceph key could not be read.
    #[error("cannot read libvirt secret {uuid} (Ceph key of user {user:?}) for domain {domain}: {message}; the secret must exist and be defined with private='no'")]
    Secret {
        /// Domain whose disk needs the key.
        domain: String,
        /// Ceph user of the disk's `<auth>`.
        user: String,
        /// The secret's UUID, or `usage "NAME"` when it is named by usage.
        uuid: String,
        /// libvirt's message (never the key).
        message: String,
    },
    /// The QEMU guest agent did not answer.
    #[error("the QEMU guest agent of domain {domain} does not answer: {message}; check that qemu-guest-agent runs in the guest and that the domain has an org.qemu.guest_agent.0 channel (`virsh qemu-agent-command {domain} '{{\"execute\":\"guest-ping\"}}'`)")]
    Agent {
        /// Domain name.
        domain: String,
        /// libvirt's message.
        message: String,
    },
    /// Freezing the guest filesystems failed.
    #[error("cannot freeze filesystems of domain {domain}: {message}")]
    Freeze {
        /// Domain name.
        domain: String,
        /// What failed and what to do about it.
        message: String,
    },
    /// Thawing the guest filesystems failed.
    #[error("cannot thaw filesystems of domain {domain}: {message}; check `virsh domfsinfo {domain}` and thaw by hand with `virsh domfsthaw {domain}`")]
    Thaw {
        /// Domain name.
        domain: String,
        /// libvirt's message.
        message: String,
    },
}
