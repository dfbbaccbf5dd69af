//! How restore, `restore --define` and `verify --source` reach a cluster outside a backup run:
//! one options struct and one place that turns it into a connection.
//!
//! A backup run reads each disk's monitors and key from the live domain (`ceph_session`).
//! The commands that work from a repository have only the domain XML saved with the backup,
//! or an operator's ceph.conf: `CephAccess` is that choice. With `ceph_conf` the cluster is
//! the one that file names, as `ceph_user` (default `admin`) with the keyring the file names;
//! without it, the monitors and user of the disk in the saved XML, with the key of the
//! libvirt secret it names, read through `connect`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::ceph::{CephTimeouts, ClusterAddress, RadosCluster};
use crate::error::Error;
use crate::libvirt::{parse_domain_xml, DiskEntry, HypervisorConnection};
use crate::secret::SecretString;

use super::ceph_session::cluster_address;

/// The Ceph user when neither the operator nor the domain XML names one.
pub const DEFAULT_CEPH_USER: &str = "admin";

/// How to reach the cluster of a disk that was backed up. The field names are the Python
/// keyword arguments and the CLI's `--ceph-conf`, `--ceph-user` and `--connect`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CephAccess {
    /// libvirt URI, to read the domain's Ceph key when no `ceph_conf` is given.
    #[serde(default = "default_connect")]
    pub connect: String,
    /// A ceph.conf (with its keyring) instead of the domain's monitors and key.
    #[serde(default)]
    pub ceph_conf: Option<PathBuf>,
    /// The Ceph user with `ceph_conf` (default `admin`).
    #[serde(default)]
    pub ceph_user: Option<String>,
}

/// The default libvirt URI.
pub(super) fn default_connect() -> String {
    "qemu:///system".into()
}

impl Default for CephAccess {
    fn default() -> Self {
        CephAccess {
            connect: default_connect(),
            ceph_conf: None,
            ceph_user: None,
        }
    }
}

/// Where a cluster is and the key to use there (`None`: the keyring the config names).
pub type ResolvedCluster = (ClusterAddress, Option<SecretString>);

impl CephAccess {
    /// The address `ceph_conf` and `ceph_user` give, if a `ceph_conf` is given.
    pub fn from_conf(&self) -> Option<ClusterAddress> {
        self.ceph_conf.as_ref().map(|conf| ClusterAddress {
            monitors: Vec::new(),
            conf_file: Some(conf.display().to_string()),
            user: self
                .ceph_user
                .clone()
                .unwrap_or_else(|| DEFAULT_CEPH_USER.into()),
        })
    }

    /// The cluster of disk `target` of `domain`, whose saved XML is `xml`: from `ceph_conf`
    /// when given, otherwise from the XML (the key read from libvirt).
    pub fn resolve(&self, xml: &str, domain: &str, target: &str) -> Result<ResolvedCluster, Error> {
        match self.from_conf() {
            Some(address) => Ok((address, None)),
            None => cluster_from_saved_xml(&self.connect, xml, domain, target),
        }
    }

    /// `resolve`, connected.
    pub fn connect_for_disk(
        &self,
        xml: &str,
        domain: &str,
        target: &str,
    ) -> Result<RadosCluster, Error> {
        let (address, key) = self.resolve(xml, domain, target)?;
        connect(&address, key.as_ref())
    }
}

/// Connects with the timeouts of commands that run outside a backup (the defaults).
pub fn connect(
    address: &ClusterAddress,
    key: Option<&SecretString>,
) -> Result<RadosCluster, Error> {
    Ok(RadosCluster::connect(
        address,
        key,
        CephTimeouts::default(),
    )?)
}

/// The cluster and key a saved domain XML names for disk `target` (key read from libvirt).
fn cluster_from_saved_xml(
    connect: &str,
    xml: &str,
    domain: &str,
    target: &str,
) -> Result<ResolvedCluster, Error> {
    let description = parse_domain_xml(domain, xml)?;
    let spec = description
        .disks
        .into_iter()
        .find_map(|d| match d {
            DiskEntry::Rbd(spec) if spec.target == target => Some(spec),
            _ => None,
        })
        .ok_or_else(|| Error::NoRbdDiskInSavedXml {
            domain: domain.to_string(),
            target: target.to_string(),
        })?;
    let key = match &spec.auth {
        Some(auth) => {
            let libvirt = HypervisorConnection::open(connect)?;
            Some(libvirt.ceph_key(
                domain,
                &auth.username,
                auth.secret_uuid.as_deref(),
                auth.secret_usage.as_deref(),
            )?)
        }
        None => None,
    };
    Ok((cluster_address(&spec), key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ceph_conf_without_a_user_connects_as_admin() {
        let access = CephAccess {
            ceph_conf: Some("/etc/ceph/ceph.conf".into()),
            ..CephAccess::default()
        };
        let (address, key) = access.resolve("not read", "web1", "vda").unwrap();
        assert_eq!(
            address,
            ClusterAddress {
                monitors: Vec::new(),
                conf_file: Some("/etc/ceph/ceph.conf".into()),
                user: "admin".into(),
            }
        );
        assert!(key.is_none());
        let access = CephAccess {
            ceph_user: Some("backup".into()),
            ..access
        };
        assert_eq!(access.from_conf().unwrap().user, "backup");
    }

    #[test]
    fn without_a_ceph_conf_the_saved_xml_names_the_cluster() {
        let xml = "<domain type='kvm'><name>web1</name><uuid>0b5d8e8e-1c6a-4c56-9a53-2f8a5b0e0c11</uuid><devices>\
            <disk type='network' device='disk'><source protocol='rbd' name='rbd/web1'>\
            <host name='10.0.0.1' port='6789'/></source><target dev='vda' bus='virtio'/></disk>\
            </devices></domain>";
        let (address, key) = CephAccess::default().resolve(xml, "web1", "vda").unwrap();
        assert_eq!(address.monitors, vec!["10.0.0.1:6789"]);
        assert_eq!(address.user, DEFAULT_CEPH_USER);
        assert!(key.is_none(), "no <auth>: no key, no libvirt");
        let message = CephAccess::default()
            .resolve(xml, "web1", "vdb")
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("has no RBD disk vdb; give --ceph-conf"),
            "{message}"
        );
    }

    #[test]
    fn the_json_fields_are_the_keyword_arguments() {
        let access: CephAccess =
            serde_json::from_str(r#"{"ceph_conf": "/c", "ceph_user": "u"}"#).unwrap();
        assert_eq!(access.connect, "qemu:///system");
        assert!(serde_json::from_str::<CephAccess>(r#"{"ceph_cnf": "/c"}"#).is_err());
    }
}
