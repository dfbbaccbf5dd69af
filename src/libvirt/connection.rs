//! A connection to libvirt (contract: filled in by the libvirt work).

use crate::secret::SecretString;

use super::error::LibvirtError;

/// A domain as listed: what the engine needs before touching it.
#[derive(Debug)]
pub struct DomainInfo {
    /// Domain name.
    pub name: String,
    /// Domain UUID, lower case.
    pub uuid: String,
    /// Whether it is running (only running domains are frozen).
    pub active: bool,
    /// Its inactive-or-live XML (`virDomainGetXMLDesc` with flags 0) or the error reading it.
    pub xml: Result<String, LibvirtError>,
}

/// An open libvirt connection; `Send + Sync`, shared by the worker threads.
pub struct HypervisorConnection {
    _private: (),
}

impl HypervisorConnection {
    /// Opens `uri` (for example `qemu:///system`).
    pub fn open(uri: &str) -> Result<Self, LibvirtError> {
        let _ = uri;
        todo!("libvirt work")
    }

    /// Lists all domains (active and inactive), or only those in `selection` (names or UUIDs,
    /// in the given order). A name that matches nothing is `LibvirtError::NoSuchDomain`.
    pub fn list_domains(&self, selection: &[String]) -> Result<Vec<DomainInfo>, LibvirtError> {
        let _ = selection;
        todo!("libvirt work")
    }

    /// Reads a Ceph key from the secret with `uuid` (or usage name) and returns it base64-encoded,
    /// as Ceph's `key` option wants it.
    pub fn ceph_key(&self, domain: &str, user: &str, uuid: Option<&str>, usage: Option<&str>) -> Result<SecretString, LibvirtError> {
        let _ = (domain, user, uuid, usage);
        todo!("libvirt work")
    }

    /// Whether the domain is running right now.
    pub fn is_active(&self, uuid: &str) -> Result<bool, LibvirtError> {
        let _ = uuid;
        todo!("libvirt work")
    }
}
