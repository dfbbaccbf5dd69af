//! Pure parsing of libvirt domain XML into the disk specs a backup needs.
//! (Contract: filled in by the libvirt work; see the types.)

use serde::{Deserialize, Serialize};

use super::error::LibvirtError;

/// A Ceph monitor named in a disk's `<host>` element.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MonitorHost {
    /// Host name or IP address as written in the XML (IPv6 without brackets).
    pub name: String,
    /// Port, if given.
    pub port: Option<u16>,
}

/// `<auth username='...'><secret type='ceph' uuid='...'/></auth>` of a disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RbdAuth {
    /// Ceph user without the `client.` prefix.
    pub username: String,
    /// UUID of the libvirt secret holding the key (`usage` lookups are resolved to a UUID by the parser only when given as uuid).
    pub secret_uuid: Option<String>,
    /// `<secret usage='...'>` if the secret is named by usage instead of UUID.
    pub secret_usage: Option<String>,
}

/// One RBD disk of a domain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RbdDiskSpec {
    /// Guest device name (`<target dev='vda'>`).
    pub target: String,
    /// Pool name.
    pub pool: String,
    /// RADOS namespace (`pool/namespace/image`), if any.
    pub namespace: Option<String>,
    /// Image name.
    pub image: String,
    /// Monitors from `<host>` elements (empty: use ceph.conf).
    pub hosts: Vec<MonitorHost>,
    /// `<config file='...'/>` inside `<source>`, if any.
    pub config_file: Option<String>,
    /// Authentication, if any.
    pub auth: Option<RbdAuth>,
    /// `device='disk'|'cdrom'|...`
    pub device: String,
    /// `<readonly/>` present.
    pub readonly: bool,
}

/// Why a disk is not backed up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SkipReason {
    /// `<disk type='file'|'block'|...>`: the original tool printed `Ignoring non-network disk for domain: NAME`.
    NotNetwork,
    /// A network disk with another protocol: `Ignoring non-RBD network disk for domain: NAME`.
    NotRbd,
}

/// One `<disk>` element, classified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskEntry {
    /// An RBD disk to back up.
    Rbd(RbdDiskSpec),
    /// A disk that is skipped, with its target if it has one.
    Skipped { target: Option<String>, reason: SkipReason },
}

/// What the backup needs from a domain's XML.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainDescription {
    /// `<name>`.
    pub name: String,
    /// `<uuid>`, lower case.
    pub uuid: String,
    /// Every `<devices><disk>`, in document order.
    pub disks: Vec<DiskEntry>,
}

/// Parses a domain's XML.
pub fn parse_domain_xml(domain: &str, xml: &str) -> Result<DomainDescription, LibvirtError> {
    let _ = (domain, xml);
    todo!("libvirt work")
}
