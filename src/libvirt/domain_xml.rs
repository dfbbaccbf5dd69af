//! Pure parsing of libvirt domain XML into the disk specs a backup needs.
//!
//! This is the only place that knows libvirt's XML shapes, so the rest of the tool works with
//! typed [`RbdDiskSpec`]s. It takes text and returns values (no libvirt, no I/O) so every odd
//! shape met in the field can be pinned by a unit test.
//!
//! Rules, following what libvirt itself accepts and writes:
//! - Only direct children are looked at (`<domain>` → `<devices>` → `<disk>` → `<source>`), so a
//!   `<backingStore>`'s own `<source>` or an element in a foreign namespace (`<qemu:...>`) is
//!   never mistaken for the disk's.
//! - A disk without `type` is a file disk (libvirt's default).
//! - `<source protocol='rbd' name='pool/image'>` or `name='pool/namespace/image'`; the name is
//!   split on `/` and taken verbatim otherwise: hostile characters (`..`, spaces, newlines) are
//!   kept, making them safe for paths is the repository's job.
//! - `<auth>` may sit in `<disk>` (classic) or in `<source>` (newer libvirt keeps it there when
//!   it was defined there); the one in `<source>` wins.
//! - A disk whose source is an RBD snapshot (`<source><snapshot name=.../>`) is skipped: the
//!   guest sees the snapshot's frozen content, not the image head a backup would export.

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
    /// UUID of the libvirt secret holding the key, lower case, when the XML names it by UUID
    /// (the parser does not resolve usage names; `ceph_key` does).
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
    /// An RBD disk whose source is a snapshot (`<source protocol='rbd'><snapshot name=.../>`):
    /// the guest sees an immutable snapshot, so exporting the image head would save other data
    /// than the guest uses, and there is nothing of the guest's to lose.
    RbdSnapshot,
}

/// One `<disk>` element, classified.
// A domain has a handful of disks; boxing the spec would only make every user unwrap a Box.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskEntry {
    /// An RBD disk to back up.
    Rbd(RbdDiskSpec),
    /// A disk that is skipped, with its target if it has one.
    Skipped {
        /// `<target dev=...>`, if present.
        target: Option<String>,
        /// Why it is skipped.
        reason: SkipReason,
    },
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

/// Upper bound on XML nodes: a real domain has a few hundred; this keeps a hostile or broken
/// document from eating memory while leaving room for domains with thousands of devices.
const MAX_XML_NODES: u32 = 1_000_000;

/// Upper bound on element nesting. roxmltree parses nested elements by recursion, so a deeply
/// nested document would overflow the stack and abort the process instead of returning an
/// error; libvirt's deepest domain XML is about ten levels.
const MAX_XML_DEPTH: usize = 256;

/// Parses a domain's XML.
///
/// `domain` is how the caller knows the domain (its listed name); it only serves error
/// messages, so an operator can tell which domain's XML was bad.
pub fn parse_domain_xml(domain: &str, xml: &str) -> Result<DomainDescription, LibvirtError> {
    let malformed = |message: String| LibvirtError::MalformedXml {
        domain: domain.to_string(),
        message,
    };

    if nesting_exceeds(xml, MAX_XML_DEPTH) {
        return Err(malformed(format!(
            "elements nested more than {MAX_XML_DEPTH} deep; this is not libvirt output"
        )));
    }
    let options = roxmltree::ParsingOptions {
        allow_dtd: false,
        nodes_limit: MAX_XML_NODES,
    };
    let doc = roxmltree::Document::parse_with_options(xml, options)
        .map_err(|e| malformed(format!("not well-formed XML: {e}")))?;
    let root = doc.root_element();
    if !is_element(root, "domain") {
        return Err(malformed(format!(
            "root element is <{}>, expected <domain>",
            root.tag_name().name()
        )));
    }

    let name = child(root, "name").map(element_text).unwrap_or_default();
    if name.trim().is_empty() {
        return Err(malformed("no <name> element or it is empty".into()));
    }
    let raw_uuid = child(root, "uuid").map(element_text).unwrap_or_default();
    if raw_uuid.trim().is_empty() {
        return Err(malformed("no <uuid> element or it is empty".into()));
    }
    let uuid = canonical_uuid(&raw_uuid)
        .ok_or_else(|| malformed(format!("<uuid> {:?} is not a UUID", raw_uuid.trim())))?;

    let mut disks = Vec::new();
    for devices in children(root, "devices") {
        for (index, disk) in children(devices, "disk").enumerate() {
            disks.push(parse_disk(disk, index).map_err(malformed)?);
        }
    }
    Ok(DomainDescription { name, uuid, disks })
}

/// Classifies one `<disk>`; `index` (within its `<devices>`) names disks that have no target.
fn parse_disk(disk: roxmltree::Node<'_, '_>, index: usize) -> Result<DiskEntry, String> {
    let target = child(disk, "target")
        .and_then(|t| t.attribute("dev"))
        .map(str::to_string);
    // How a disk is named in messages: by target when it has one, else by position and source.
    let label = |source_name: Option<&str>| match (&target, source_name) {
        (Some(t), _) => format!("disk {t:?}"),
        (None, Some(s)) => format!("disk #{} (source {s:?})", index + 1),
        (None, None) => format!("disk #{}", index + 1),
    };

    // libvirt treats a missing type as 'file'.
    if disk.attribute("type").unwrap_or("file") != "network" {
        return Ok(DiskEntry::Skipped {
            target,
            reason: SkipReason::NotNetwork,
        });
    }
    let Some(source) = child(disk, "source") else {
        // Nothing to back up and not an RBD disk; failing the whole domain for it would be worse.
        return Ok(DiskEntry::Skipped {
            target,
            reason: SkipReason::NotRbd,
        });
    };
    if source.attribute("protocol") != Some("rbd") {
        return Ok(DiskEntry::Skipped {
            target,
            reason: SkipReason::NotRbd,
        });
    }

    let source_name = source.attribute("name");
    let Some(source_name) = source_name.filter(|n| !n.is_empty()) else {
        return Err(format!(
            "{}: RBD <source> has no name='pool/image'",
            label(None)
        ));
    };
    let (pool, namespace, image) = split_rbd_name(source_name)
        .map_err(|why| format!("{}: {why}", label(Some(source_name))))?;

    let Some(target) = target.clone() else {
        return Err(format!(
            "{}: RBD disk has no <target dev=...>",
            label(Some(source_name))
        ));
    };

    if child(source, "snapshot").is_some() {
        return Ok(DiskEntry::Skipped {
            target: Some(target),
            reason: SkipReason::RbdSnapshot,
        });
    }

    let mut hosts = Vec::new();
    for host in children(source, "host") {
        hosts.push(parse_host(host).map_err(|why| format!("{}: {why}", label(Some(source_name))))?);
    }
    let config_file = child(source, "config")
        .and_then(|c| c.attribute("file"))
        .map(str::to_string);
    let auth = match child(source, "auth").or_else(|| child(disk, "auth")) {
        Some(auth) => {
            Some(parse_auth(auth).map_err(|why| format!("{}: {why}", label(Some(source_name))))?)
        }
        None => None,
    };

    Ok(DiskEntry::Rbd(RbdDiskSpec {
        target,
        pool,
        namespace,
        image,
        hosts,
        config_file,
        auth,
        device: disk.attribute("device").unwrap_or("disk").to_string(),
        readonly: child(disk, "readonly").is_some(),
    }))
}

/// Splits `pool/image` or `pool/namespace/image`.
fn split_rbd_name(name: &str) -> Result<(String, Option<String>, String), String> {
    let parts: Vec<&str> = name.split('/').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(format!("RBD source name {name:?} has an empty part; expected pool/image or pool/namespace/image"));
    }
    match parts.as_slice() {
        [pool, image] => Ok((pool.to_string(), None, image.to_string())),
        [pool, namespace, image] => Ok((
            pool.to_string(),
            Some(namespace.to_string()),
            image.to_string(),
        )),
        _ => Err(format!(
            "RBD source name {name:?} has {} parts; expected pool/image or pool/namespace/image",
            parts.len()
        )),
    }
}

/// `<host name='mon1' port='6789'/>`.
fn parse_host(host: roxmltree::Node<'_, '_>) -> Result<MonitorHost, String> {
    let name = host
        .attribute("name")
        .filter(|n| !n.is_empty())
        .ok_or("a <host> has no name")?;
    // libvirt writes IPv6 addresses bare; accept the bracketed form people type by hand.
    let name = name
        .strip_prefix('[')
        .and_then(|n| n.strip_suffix(']'))
        .unwrap_or(name);
    let port =
        match host.attribute("port") {
            None => None,
            Some(p) => Some(p.trim().parse::<u16>().map_err(|_| {
                format!("<host name={name:?}> has port {p:?}, not a number 0-65535")
            })?),
        };
    Ok(MonitorHost {
        name: name.to_string(),
        port,
    })
}

/// `<auth username='u'><secret type='ceph' uuid='...'|usage='...'/></auth>`.
fn parse_auth(auth: roxmltree::Node<'_, '_>) -> Result<RbdAuth, String> {
    let username = auth
        .attribute("username")
        .filter(|u| !u.is_empty())
        .ok_or("<auth> has no username")?;
    let secret = child(auth, "secret")
        .ok_or_else(|| format!("<auth username={username:?}> has no <secret>"))?;
    if let Some(kind) = secret.attribute("type") {
        if kind != "ceph" {
            return Err(format!(
                "<auth username={username:?}> names a secret of type {kind:?}, expected 'ceph'"
            ));
        }
    }
    let secret_uuid = secret
        .attribute("uuid")
        .filter(|u| !u.is_empty())
        .map(|u| u.to_ascii_lowercase());
    let secret_usage = secret
        .attribute("usage")
        .filter(|u| !u.is_empty())
        .map(str::to_string);
    if secret_uuid.is_none() && secret_usage.is_none() {
        return Err(format!(
            "<auth username={username:?}> has a <secret> with neither uuid nor usage"
        ));
    }
    Ok(RbdAuth {
        username: username.to_string(),
        secret_uuid,
        secret_usage,
    })
}

/// Whether `node` is the libvirt element `name` (no namespace: `<qemu:disk>` is not `<disk>`).
fn is_element(node: roxmltree::Node<'_, '_>, name: &str) -> bool {
    node.is_element() && node.tag_name().name() == name && node.tag_name().namespace().is_none()
}

/// Direct children of `node` that are the libvirt element `name`.
fn children<'a, 'input: 'a>(
    node: roxmltree::Node<'a, 'input>,
    name: &'a str,
) -> impl Iterator<Item = roxmltree::Node<'a, 'input>> + 'a {
    node.children().filter(move |c| is_element(*c, name))
}

/// The first direct child `name`.
fn child<'a, 'input: 'a>(
    node: roxmltree::Node<'a, 'input>,
    name: &str,
) -> Option<roxmltree::Node<'a, 'input>> {
    node.children().find(|c| is_element(*c, name))
}

/// All text directly inside an element, joined (a comment may split it into several nodes).
fn element_text(node: roxmltree::Node<'_, '_>) -> String {
    node.children()
        .filter(|c| c.is_text())
        .filter_map(|c| c.text())
        .collect()
}

/// Whether elements in `xml` may nest deeper than `limit`, decided without recursion.
///
/// This is an upper bound on how deep roxmltree would recurse: it counts start tags that are not
/// self-closing and end tags the way roxmltree's grammar reads them (comments, CDATA and
/// processing instructions hold no elements; quoted attribute values may hold `>`). Where the
/// scan and roxmltree could disagree (a `<` inside an attribute value), roxmltree stops with an
/// error right there, so the scan stops too.
fn nesting_exceeds(xml: &str, limit: usize) -> bool {
    let b = xml.as_bytes();
    let find = |from: usize, pat: &[u8]| -> usize {
        b.get(from..)
            .and_then(|rest| rest.windows(pat.len()).position(|w| w == pat))
            .map_or(b.len(), |p| from + p + pat.len())
    };
    let mut depth = 0usize;
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'<' {
            i += 1;
            continue;
        }
        let rest = &b[i..];
        if rest.starts_with(b"<!--") {
            i = find(i + 4, b"-->");
        } else if rest.starts_with(b"<![CDATA[") {
            i = find(i + 9, b"]]>");
        } else if rest.starts_with(b"<?") {
            i = find(i + 2, b"?>");
        } else if rest.starts_with(b"</") {
            depth = depth.saturating_sub(1);
            i = find(i + 2, b">");
        } else if rest.starts_with(b"<!") {
            // A DOCTYPE: the parser rejects it before reading any element.
            i = find(i + 2, b">");
        } else {
            let mut j = i + 1;
            let mut quote: Option<u8> = None;
            while j < b.len() {
                match (quote, b[j]) {
                    (Some(_), b'<') => return false,
                    (Some(q), c) if c == q => quote = None,
                    (None, c @ (b'"' | b'\'')) => quote = Some(c),
                    (None, b'>') => break,
                    _ => {}
                }
                j += 1;
            }
            if j >= b.len() || b[j - 1] != b'/' {
                depth += 1;
                if depth > limit {
                    return true;
                }
            }
            i = j + 1;
        }
    }
    false
}

/// Lower-case 8-4-4-4-12 form, accepting what libvirt's own UUID parser accepts for the digits
/// (dashes anywhere, any case, surrounding whitespace); `None` if it is not 32 hex digits.
fn canonical_uuid(raw: &str) -> Option<String> {
    let digits: String = raw.trim().chars().filter(|c| *c != '-').collect();
    if digits.len() != 32 || !digits.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let d = digits.to_ascii_lowercase();
    Some(format!(
        "{}-{}-{}-{}-{}",
        &d[0..8],
        &d[8..12],
        &d[12..16],
        &d[16..20],
        &d[20..32]
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A domain with the given `<devices>` content, shaped like `virsh dumpxml` output.
    fn domain_with(devices: &str) -> String {
        format!(
            "<domain type='kvm' id='3'>\n  <name>vm1</name>\n  <uuid>6F2A1B3C-0000-4D5E-8F90-123456789ABC</uuid>\n  <devices>\n{devices}\n  </devices>\n</domain>"
        )
    }

    fn parse_ok(xml: &str) -> DomainDescription {
        match parse_domain_xml("vm1", xml) {
            Ok(d) => d,
            Err(e) => panic!("expected a parse, got {e}"),
        }
    }

    fn only_rbd(xml: &str) -> RbdDiskSpec {
        let d = parse_ok(xml);
        match d.disks.as_slice() {
            [DiskEntry::Rbd(spec)] => spec.clone(),
            other => panic!("expected one RBD disk, got {other:?}"),
        }
    }

    fn malformed_message(xml: &str) -> String {
        match parse_domain_xml("vm1", xml) {
            Err(LibvirtError::MalformedXml { domain, message }) => {
                assert_eq!(domain, "vm1", "error must name the domain");
                message
            }
            other => panic!("expected MalformedXml, got {other:?}"),
        }
    }

    const RBD_DISK: &str = "
    <disk type='network' device='disk'>
      <driver name='qemu' type='raw' cache='writeback' discard='unmap'/>
      <auth username='libvirt'>
        <secret type='ceph' uuid='3D5E0F6A-1111-2222-3333-444455556666'/>
      </auth>
      <source protocol='rbd' name='rbd/vm1-disk0'>
        <host name='10.0.0.1' port='6789'/>
        <host name='10.0.0.2' port='3300'/>
        <host name='mon3.example.org'/>
        <config file='/etc/ceph/other.conf'/>
      </source>
      <target dev='vda' bus='virtio'/>
      <alias name='virtio-disk0'/>
      <address type='pci' domain='0x0000' bus='0x04' slot='0x00' function='0x0'/>
    </disk>";

    #[test]
    fn typical_rbd_disk_is_fully_described() {
        let d = parse_ok(&domain_with(RBD_DISK));
        assert_eq!(d.name, "vm1");
        assert_eq!(d.uuid, "6f2a1b3c-0000-4d5e-8f90-123456789abc");
        assert_eq!(
            d.disks,
            vec![DiskEntry::Rbd(RbdDiskSpec {
                target: "vda".into(),
                pool: "rbd".into(),
                namespace: None,
                image: "vm1-disk0".into(),
                hosts: vec![
                    MonitorHost {
                        name: "10.0.0.1".into(),
                        port: Some(6789)
                    },
                    MonitorHost {
                        name: "10.0.0.2".into(),
                        port: Some(3300)
                    },
                    MonitorHost {
                        name: "mon3.example.org".into(),
                        port: None
                    },
                ],
                config_file: Some("/etc/ceph/other.conf".into()),
                auth: Some(RbdAuth {
                    username: "libvirt".into(),
                    secret_uuid: Some("3d5e0f6a-1111-2222-3333-444455556666".into()),
                    secret_usage: None,
                }),
                device: "disk".into(),
                readonly: false,
            })]
        );
    }

    #[test]
    fn disks_are_classified_in_document_order() {
        let xml = domain_with(&format!(
            "
    <disk type='file' device='disk'><source file='/var/lib/libvirt/images/a.qcow2'/><target dev='vdb'/></disk>
    {RBD_DISK}
    <disk type='block' device='disk'><source dev='/dev/sdb'/><target dev='vdc'/></disk>
    <disk type='network' device='disk'><source protocol='nbd' name='export'><host name='nbd.local' port='10809'/></source><target dev='vdd'/></disk>
    <disk type='network' device='disk'><source protocol='iscsi' name='iqn.2013-07.com.example:iscsi-nopool/1'><host name='example.com' port='3260'/></source><target dev='sda'/></disk>
    <disk type='network' device='disk'><source protocol='gluster' name='Volume/Image'><host name='example.org' port='24007'/></source><target dev='vde'/></disk>
    <disk type='network' device='cdrom'><source protocol='http' name='/isos/x.iso'><host name='iso.example.org' port='80'/></source><target dev='hdc'/><readonly/></disk>
    <disk type='volume' device='disk'><source pool='default' volume='v1'/><target dev='vdf'/></disk>
    <disk type='dir' device='floppy'><source dir='/tmp/floppy'/><target dev='fda'/></disk>
    <disk device='disk'><source file='/no/type/means/file.img'/><target dev='vdg'/></disk>
    "
        ));
        let d = parse_ok(&xml);
        let summary: Vec<(Option<String>, Option<SkipReason>)> = d
            .disks
            .iter()
            .map(|e| match e {
                DiskEntry::Rbd(s) => (Some(s.target.clone()), None),
                DiskEntry::Skipped { target, reason } => (target.clone(), Some(*reason)),
            })
            .collect();
        let s = |t: &str| Some(t.to_string());
        assert_eq!(
            summary,
            vec![
                (s("vdb"), Some(SkipReason::NotNetwork)),
                (s("vda"), None),
                (s("vdc"), Some(SkipReason::NotNetwork)),
                (s("vdd"), Some(SkipReason::NotRbd)),
                (s("sda"), Some(SkipReason::NotRbd)),
                (s("vde"), Some(SkipReason::NotRbd)),
                (s("hdc"), Some(SkipReason::NotRbd)),
                (s("vdf"), Some(SkipReason::NotNetwork)),
                (s("fda"), Some(SkipReason::NotNetwork)),
                (s("vdg"), Some(SkipReason::NotNetwork)),
            ]
        );
    }

    #[test]
    fn qemu_namespace_elements_are_ignored() {
        let xml = format!(
            "<domain type='kvm' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>vm1</name><uuid>6f2a1b3c-0000-4d5e-8f90-123456789abc</uuid>
  <devices>{RBD_DISK}
    <qemu:disk type='network'><source protocol='rbd' name='evil/disk'/><target dev='vdz'/></qemu:disk>
  </devices>
  <qemu:commandline><qemu:arg value='-drive'/><qemu:arg value='file=rbd:rbd/hidden'/></qemu:commandline>
</domain>"
        );
        assert_eq!(only_rbd(&xml).image, "vm1-disk0");
    }

    #[test]
    fn rbd_cdrom_is_rbd_with_its_device_and_readonly() {
        let spec = only_rbd(&domain_with(
            "<disk type='network' device='cdrom'>
               <source protocol='rbd' name='isos/debian-12.iso'><host name='mon1'/></source>
               <target dev='sda' bus='sata'/><readonly/>
             </disk>",
        ));
        assert_eq!(spec.device, "cdrom");
        assert!(spec.readonly);
        assert_eq!(
            (spec.pool.as_str(), spec.image.as_str()),
            ("isos", "debian-12.iso")
        );
        assert_eq!(spec.auth, None);
    }

    #[test]
    fn device_defaults_to_disk() {
        let spec = only_rbd(&domain_with(
            "<disk type='network'><source protocol='rbd' name='p/i'/><target dev='vda'/></disk>",
        ));
        assert_eq!(spec.device, "disk");
        assert!(!spec.readonly);
        assert!(spec.hosts.is_empty(), "no <host>: use ceph.conf");
    }

    #[test]
    fn rbd_disk_without_target_is_an_error_naming_the_source() {
        let msg = malformed_message(&domain_with(
            "<disk type='network'><source protocol='rbd' name='rbd/img'/></disk>",
        ));
        assert!(msg.contains("rbd/img") && msg.contains("target"), "{msg}");
    }

    #[test]
    fn skipped_disk_without_target_has_no_target() {
        let d = parse_ok(&domain_with(
            "<disk type='file' device='cdrom'><readonly/></disk>",
        ));
        assert_eq!(
            d.disks,
            vec![DiskEntry::Skipped {
                target: None,
                reason: SkipReason::NotNetwork
            }]
        );
    }

    #[test]
    fn ipv6_hosts_are_kept_without_brackets() {
        let spec = only_rbd(&domain_with(
            "<disk type='network'><source protocol='rbd' name='p/i'>
               <host name='2001:db8::1' port='6789'/><host name='[2001:db8::2]' port='3300'/><host name='::1'/>
             </source><target dev='vda'/></disk>",
        ));
        assert_eq!(
            spec.hosts,
            vec![
                MonitorHost {
                    name: "2001:db8::1".into(),
                    port: Some(6789)
                },
                MonitorHost {
                    name: "2001:db8::2".into(),
                    port: Some(3300)
                },
                MonitorHost {
                    name: "::1".into(),
                    port: None
                },
            ]
        );
    }

    #[test]
    fn bad_port_is_an_error_naming_the_disk() {
        let msg = malformed_message(&domain_with(
            "<disk type='network'><source protocol='rbd' name='p/i'><host name='m' port='67890'/></source><target dev='vdb'/></disk>",
        ));
        assert!(msg.contains("vdb") && msg.contains("67890"), "{msg}");
    }

    #[test]
    fn rbd_snapshot_source_is_skipped() {
        let d = parse_ok(&domain_with(
            "<disk type='network' device='disk'><source protocol='rbd' name='golden/base'><snapshot name='v1'/><host name='m'/></source><target dev='vdb'/><readonly/></disk>",
        ));
        assert_eq!(
            d.disks,
            vec![DiskEntry::Skipped {
                target: Some("vdb".into()),
                reason: SkipReason::RbdSnapshot
            }]
        );
    }

    #[test]
    fn backing_store_source_is_not_the_disk_source() {
        let spec = only_rbd(&domain_with(
            "<disk type='network' device='disk'>
               <source protocol='rbd' name='rbd/top' index='2'><host name='m1' port='6789'/></source>
               <backingStore type='network' index='1'>
                 <format type='raw'/>
                 <source protocol='rbd' name='rbd/parent'><host name='m2'/><snapshot name='s'/></source>
                 <backingStore/>
               </backingStore>
               <target dev='vda'/>
             </disk>",
        ));
        assert_eq!(spec.image, "top");
        assert_eq!(
            spec.hosts,
            vec![MonitorHost {
                name: "m1".into(),
                port: Some(6789)
            }]
        );
    }

    #[test]
    fn auth_inside_source_is_found_and_wins() {
        let spec = only_rbd(&domain_with(
            "<disk type='network'>
               <auth username='old'><secret type='ceph' uuid='00000000-0000-0000-0000-000000000000'/></auth>
               <source protocol='rbd' name='p/i'>
                 <auth username='newer'><secret type='ceph' usage='client.newer secret'/></auth>
               </source>
               <target dev='vda'/>
             </disk>",
        ));
        assert_eq!(
            spec.auth,
            Some(RbdAuth {
                username: "newer".into(),
                secret_uuid: None,
                secret_usage: Some("client.newer secret".into())
            })
        );
    }

    #[test]
    fn auth_without_secret_or_with_wrong_type_is_an_error() {
        let msg = malformed_message(&domain_with(
            "<disk type='network'><auth username='u'/><source protocol='rbd' name='p/i'/><target dev='vda'/></disk>",
        ));
        assert!(msg.contains("vda") && msg.contains("<secret>"), "{msg}");
        let msg = malformed_message(&domain_with(
            "<disk type='network'><auth username='u'><secret type='iscsi' usage='x'/></auth><source protocol='rbd' name='p/i'/><target dev='vda'/></disk>",
        ));
        assert!(msg.contains("iscsi"), "{msg}");
    }

    #[test]
    fn comments_and_cdata_are_transparent() {
        let xml = "<?xml version='1.0'?>
<!-- generated by hand -->
<domain type='kvm'>
  <name><![CDATA[vm<1>]]></name>
  <uuid>6f2a1b3c-0000-4d5e-<!-- split -->8f90-123456789abc</uuid>
  <devices>
    <!-- <disk type='network'><source protocol='rbd' name='commented/out'/><target dev='vdx'/></disk> -->
    <disk type='network'><source protocol='rbd' name='p/i'><!-- mon --><host name='m'/></source><target dev='vda'/></disk>
  </devices>
</domain>";
        let d = parse_domain_xml("vm<1>", xml).expect("parses");
        assert_eq!(d.name, "vm<1>");
        assert_eq!(d.uuid, "6f2a1b3c-0000-4d5e-8f90-123456789abc");
        assert_eq!(d.disks.len(), 1);
    }

    #[test]
    fn network_disk_without_source_is_skipped_as_not_rbd() {
        let d = parse_ok(&domain_with(
            "<disk type='network' device='cdrom'><target dev='hdc'/><readonly/></disk>",
        ));
        assert_eq!(
            d.disks,
            vec![DiskEntry::Skipped {
                target: Some("hdc".into()),
                reason: SkipReason::NotRbd
            }]
        );
    }

    #[test]
    fn three_part_name_carries_the_namespace() {
        let spec = only_rbd(&domain_with("<disk type='network'><source protocol='rbd' name='pool/tenant-a/img'/><target dev='vda'/></disk>"));
        assert_eq!(
            (
                spec.pool.as_str(),
                spec.namespace.as_deref(),
                spec.image.as_str()
            ),
            ("pool", Some("tenant-a"), "img")
        );
    }

    #[test]
    fn bad_rbd_names_are_errors_naming_the_disk() {
        for name in ["noslash", "pool//img", "/img", "pool/", "a/b/c/d", "p/ns/"] {
            let msg = malformed_message(&domain_with(&format!(
                "<disk type='network'><source protocol='rbd' name='{name}'/><target dev='vdq'/></disk>"
            )));
            assert!(msg.contains("vdq") && msg.contains(name), "{name}: {msg}");
        }
        let msg = malformed_message(&domain_with(
            "<disk type='network'><source protocol='rbd'/><target dev='vdq'/></disk>",
        ));
        assert!(msg.contains("vdq") && msg.contains("name"), "{msg}");
    }

    #[test]
    fn hostile_names_are_parsed_faithfully() {
        let spec = only_rbd(&domain_with(
            "<disk type='network'><source protocol='rbd' name='..&#10;pool/../.. etc passwd&#9;x'/><target dev='vda'/></disk>",
        ));
        assert_eq!(spec.pool, "..\npool");
        assert_eq!(spec.namespace.as_deref(), Some(".."));
        assert_eq!(spec.image, ".. etc passwd\tx");
        // A literal newline in an attribute is normalized to a space by XML itself.
        let spec = only_rbd(&domain_with(
            "<disk type='network'><source protocol='rbd' name='p/a\nb'/><target dev='vda'/></disk>",
        ));
        assert_eq!(spec.image, "a b");
    }

    #[test]
    fn missing_name_or_uuid_is_an_error() {
        let msg =
            malformed_message("<domain><uuid>6f2a1b3c-0000-4d5e-8f90-123456789abc</uuid></domain>");
        assert!(msg.contains("<name>"), "{msg}");
        let msg = malformed_message(
            "<domain><name>  </name><uuid>6f2a1b3c-0000-4d5e-8f90-123456789abc</uuid></domain>",
        );
        assert!(msg.contains("<name>"), "{msg}");
        let msg = malformed_message("<domain><name>vm1</name></domain>");
        assert!(msg.contains("<uuid>"), "{msg}");
        let msg = malformed_message("<domain><name>vm1</name><uuid>not-a-uuid</uuid></domain>");
        assert!(msg.contains("not-a-uuid"), "{msg}");
    }

    #[test]
    fn uuid_without_dashes_is_canonicalized() {
        let d = parse_ok(
            "<domain><name>vm1</name><uuid> 6F2A1B3C00004D5E8F90123456789ABC </uuid></domain>",
        );
        assert_eq!(d.uuid, "6f2a1b3c-0000-4d5e-8f90-123456789abc");
        assert!(d.disks.is_empty());
    }

    #[test]
    fn not_xml_or_wrong_root_is_an_error() {
        for xml in [
            "",
            "not xml",
            "<domain><name>x</name>",
            "<network><name>x</name></network>",
            "<a/><b/>",
        ] {
            let msg = malformed_message(xml);
            assert!(!msg.is_empty(), "{xml:?}");
        }
    }

    #[test]
    fn dtd_and_entity_bombs_are_rejected() {
        let xml = "<?xml version='1.0'?><!DOCTYPE domain [<!ENTITY a 'aaaaaaaaaa'><!ENTITY b '&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;'>]><domain><name>&b;</name></domain>";
        malformed_message(xml);
    }

    /// A domain whose `<devices>` holds `depth` nested `<x>` elements.
    fn nested(depth: usize, open: &str, close: &str) -> String {
        format!(
            "<domain><name>vm1</name><uuid>6f2a1b3c-0000-4d5e-8f90-123456789abc</uuid><devices>{}{}</devices></domain>",
            open.repeat(depth),
            close.repeat(depth)
        )
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        // Regression: roxmltree recurses per level and aborted the process at ~200 000 levels.
        let msg = malformed_message(&nested(200_000, "<x>", "</x>"));
        assert!(msg.contains("nested"), "{msg}");
        malformed_message(&format!("<domain>{}", "<x a='>'>".repeat(200_000)));
        // Up to the limit (3 levels are domain and devices and the root's parent) it parses.
        assert!(parse_ok(&nested(MAX_XML_DEPTH - 2, "<x>", "</x>"))
            .disks
            .is_empty());
        malformed_message(&nested(MAX_XML_DEPTH - 1, "<x>", "</x>"));
    }

    #[test]
    fn nesting_scan_ignores_what_holds_no_elements() {
        let xml = nested(
            1000,
            "<x/><!-- <y> --><![CDATA[<z>]]><?pi <w>?><v a='>' b=\"<\"/>",
            "",
        );
        assert!(!nesting_exceeds(&xml, 5));
        assert!(nesting_exceeds(&nested(6, "<x a='/'>", "</x>"), 5));
        assert!(!nesting_exceeds(&nested(3, "<x a='/'>", "</x>"), 5));
    }

    #[test]
    fn huge_input_is_an_error_not_a_crash() {
        let xml = format!(
            "<domain><name>vm1</name><uuid>6f2a1b3c-0000-4d5e-8f90-123456789abc</uuid><devices>{}</devices></domain>",
            "<disk/>".repeat(MAX_XML_NODES as usize + 1)
        );
        let msg = malformed_message(&xml);
        assert!(msg.contains("not well-formed"), "{msg}");
    }
}
