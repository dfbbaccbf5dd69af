//! Which domains a command sees, and what a backup would do with their disks: the one walk
//! over libvirt's domains that `run_backup`, `plan_backup` and `list_domains` share, so the
//! three never disagree on which disks are backed up and which are skipped.

use serde::Serialize;

use crate::error::Error;
use crate::libvirt::{parse_domain_xml, DiskEntry, HypervisorConnection, RbdDiskSpec, SkipReason};

/// A disk that a backup skips.
#[derive(Debug, Clone, Serialize)]
pub struct SkippedDisk {
    /// Guest device, if it has one.
    pub target: Option<String>,
    /// Why.
    pub reason: SkipReason,
}

/// A domain as discovery sees it.
pub(crate) struct DiscoveredDomain {
    /// Name.
    pub name: String,
    /// UUID, lower case.
    pub uuid: String,
    /// Running now (`false` also when libvirt could not say: `disks` then holds the error).
    pub active: bool,
    /// Its XML and disks, or why they cannot be read (the domain cannot be backed up).
    pub disks: Result<DomainDisks, Error>,
}

/// A domain's XML and what a backup does with each of its disks.
pub(crate) struct DomainDisks {
    /// The domain XML, as libvirt returned it.
    pub xml: String,
    /// The RBD disks, backed up.
    pub rbd: Vec<RbdDiskSpec>,
    /// The others, skipped.
    pub skipped: Vec<SkippedDisk>,
}

/// The domains of `selection` (every domain when empty), in libvirt's order, with their disks
/// sorted into backed up and skipped. `Err` only when the list itself cannot be had (libvirt
/// unreachable, a named domain that does not exist); a domain whose XML cannot be read or
/// parsed is listed with the error.
pub(crate) fn discover_domains(
    libvirt: &HypervisorConnection,
    selection: &[String],
) -> Result<Vec<DiscoveredDomain>, Error> {
    Ok(libvirt
        .list_domains(selection)?
        .into_iter()
        .map(|info| {
            let disks = info.xml.map_err(Error::from).and_then(|xml| {
                let description = parse_domain_xml(&info.name, &xml)?;
                Ok(sort_disks(xml, description.disks))
            });
            DiscoveredDomain {
                name: info.name,
                uuid: info.uuid,
                active: info.active,
                disks,
            }
        })
        .collect())
}

/// Splits a domain's disk entries into backed up and skipped, in XML order.
fn sort_disks(xml: String, entries: Vec<DiskEntry>) -> DomainDisks {
    let mut disks = DomainDisks {
        xml,
        rbd: Vec::new(),
        skipped: Vec::new(),
    };
    for entry in entries {
        match entry {
            DiskEntry::Rbd(spec) => disks.rbd.push(spec),
            DiskEntry::Skipped { target, reason } => {
                disks.skipped.push(SkippedDisk { target, reason })
            }
        }
    }
    disks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disks_are_sorted_into_backed_up_and_skipped_in_xml_order() {
        let xml = r#"<domain type='kvm'><name>web</name><uuid>3b1f9b7e-8c43-4b71-9a5d-0c2d7f1e6a10</uuid><devices>
            <disk type='file' device='disk'><source file='/var/a.img'/><target dev='vda'/></disk>
            <disk type='network' device='disk'><source protocol='rbd' name='rbd/web-b'>
              <host name='10.0.0.1' port='6789'/></source><target dev='vdb'/></disk>
            <disk type='network' device='disk'><source protocol='nbd' name='x'/><target dev='vdc'/></disk>
            <disk type='network' device='disk'><source protocol='rbd' name='rbd/web-d'/><target dev='vdd'/></disk>
            </devices></domain>"#;
        let description = parse_domain_xml("web", xml).unwrap();
        let disks = sort_disks(xml.to_string(), description.disks);
        let rbd: Vec<&str> = disks.rbd.iter().map(|d| d.target.as_str()).collect();
        assert_eq!(rbd, ["vdb", "vdd"]);
        let skipped: Vec<(Option<&str>, SkipReason)> = disks
            .skipped
            .iter()
            .map(|s| (s.target.as_deref(), s.reason))
            .collect();
        assert_eq!(
            skipped,
            [
                (Some("vda"), SkipReason::NotNetwork),
                (Some("vdc"), SkipReason::NotRbd)
            ]
        );
        assert_eq!(disks.xml, xml);
    }
}
