//! Pure rewriting of a saved domain XML for `restore --define`: a new name, no UUID (libvirt
//! makes one), no MAC addresses (libvirt makes them), RBD disks pointed at their restored
//! images, and every other writable disk left out, so the new domain can never write to the
//! original's disks.
//!
//! Edits are spliced into the original text at the byte ranges roxmltree reports, so everything
//! else (devices, comments, formatting, elements this tool does not know) stays exactly as the
//! operator had it.

use std::collections::HashMap;

use super::error::LibvirtError;

/// What `rewrite_for_restore` changed, for the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RewriteOutcome {
    /// The new XML.
    pub xml: String,
    /// Targets of disks that were left out (not restored and writable).
    pub dropped_disks: Vec<String>,
}

fn elements<'a, 'input>(
    parent: roxmltree::Node<'a, 'input>,
    name: &'static str,
) -> impl Iterator<Item = roxmltree::Node<'a, 'input>> {
    parent
        .children()
        .filter(move |n| n.is_element() && n.tag_name().name() == name)
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

/// Rewrites `xml`: name `new_name`; the RBD disk with target T gets source name `images[T]`
/// (`pool/image` or `pool/namespace/image`).
pub fn rewrite_for_restore(
    xml: &str,
    new_name: &str,
    images: &HashMap<String, String>,
) -> Result<RewriteOutcome, LibvirtError> {
    let malformed = |message: String| LibvirtError::MalformedXml {
        domain: new_name.to_string(),
        message,
    };
    let doc = roxmltree::Document::parse_with_options(
        xml,
        roxmltree::ParsingOptions {
            allow_dtd: false,
            nodes_limit: 1_000_000,
        },
    )
    .map_err(|e| malformed(format!("saved domain XML is not well-formed: {e}")))?;
    let root = doc.root_element();
    if root.tag_name().name() != "domain" {
        return Err(malformed("saved XML has no <domain> root".into()));
    }
    let mut edits: Vec<(std::ops::Range<usize>, String)> = Vec::new();

    let name = elements(root, "name")
        .next()
        .ok_or_else(|| malformed("saved XML has no <name>".into()))?;
    edits.push((name.range(), format!("<name>{}</name>", escape(new_name))));
    for uuid in elements(root, "uuid") {
        edits.push((uuid.range(), String::new()));
    }
    let mut restored = Vec::new();
    let mut dropped = Vec::new();
    for devices in elements(root, "devices") {
        for interface in elements(devices, "interface") {
            for mac in elements(interface, "mac") {
                edits.push((mac.range(), String::new()));
            }
        }
        for disk in elements(devices, "disk") {
            let target = elements(disk, "target")
                .next()
                .and_then(|t| t.attribute("dev"))
                .unwrap_or_default()
                .to_string();
            let source = elements(disk, "source").next();
            let is_rbd = disk.attribute("type") == Some("network")
                && source.and_then(|s| s.attribute("protocol")) == Some("rbd");
            let device = disk.attribute("device").unwrap_or("disk");
            let readonly = elements(disk, "readonly").next().is_some()
                || device == "cdrom"
                || device == "floppy";
            match (is_rbd, images.get(&target), source) {
                (true, Some(image), Some(source)) => {
                    let attr = source
                        .attributes()
                        .find(|a| a.name() == "name")
                        .ok_or_else(|| {
                            malformed(format!("RBD disk {target} has no source name"))
                        })?;
                    edits.push((attr.range_value(), escape(image)));
                    restored.push(target);
                }
                _ if readonly => {}
                _ => {
                    edits.push((disk.range(), String::new()));
                    dropped.push(if target.is_empty() {
                        "(no target)".to_string()
                    } else {
                        target
                    });
                }
            }
        }
    }
    for target in images.keys() {
        if !restored.contains(target) {
            return Err(malformed(format!("the saved XML has no RBD disk {target}")));
        }
    }
    edits.sort_by_key(|(range, _)| std::cmp::Reverse(range.start));
    let mut out = xml.to_string();
    for (range, text) in edits {
        out.replace_range(range, &text);
    }
    Ok(RewriteOutcome {
        xml: out,
        dropped_disks: dropped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const XML: &str = r#"<domain type='kvm'>
  <name>web</name>
  <uuid>3b1f9b7e-8c43-4b71-9a5d-0c2d7f1e6a10</uuid>
  <!-- keep me -->
  <devices>
    <disk type='network' device='disk'>
      <auth username='libvirt'><secret type='ceph' uuid='5e3c0b1a-7a2d-4f6e-9c41-0b5ac0ffee01'/></auth>
      <source protocol='rbd' name='rbd/web-a'><host name='10.0.0.1' port='6789'/></source>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='file' device='disk'><source file='/var/lib/libvirt/images/scratch.qcow2'/><target dev='vdb'/></disk>
    <disk type='file' device='cdrom'><source file='/iso/install.iso'/><target dev='sda'/><readonly/></disk>
    <interface type='network'><mac address='52:54:00:aa:bb:cc'/><source network='default'/></interface>
  </devices>
</domain>"#;

    fn images() -> HashMap<String, String> {
        HashMap::from([("vda".to_string(), "rbd/web-copy-vda".to_string())])
    }

    #[test]
    fn the_copy_gets_a_new_name_no_uuid_no_mac_and_the_restored_image() {
        let out = rewrite_for_restore(XML, "web-copy", &images()).unwrap();
        let parsed = super::super::parse_domain_xml(
            "x",
            &out.xml.replace(
                "<name>",
                "<uuid>11111111-1111-1111-1111-111111111111</uuid><name>",
            ),
        );
        let parsed = parsed.unwrap();
        assert_eq!(parsed.name, "web-copy");
        assert!(!out.xml.contains("3b1f9b7e"));
        assert!(!out.xml.contains("52:54:00"));
        assert!(out.xml.contains("name='rbd/web-copy-vda'"));
        assert!(out.xml.contains("<!-- keep me -->"));
        assert!(out.xml.contains("secret type='ceph'"));
    }

    #[test]
    fn writable_disks_that_were_not_restored_are_left_out_but_cdroms_stay() {
        let out = rewrite_for_restore(XML, "web-copy", &images()).unwrap();
        assert_eq!(out.dropped_disks, vec!["vdb"]);
        assert!(!out.xml.contains("scratch.qcow2"));
        assert!(out.xml.contains("/iso/install.iso"));
    }

    #[test]
    fn names_are_escaped() {
        let out = rewrite_for_restore(XML, "a<b&'c", &HashMap::new()).unwrap();
        assert!(out.xml.contains("<name>a&lt;b&amp;&apos;c</name>"));
        // Not restored: the RBD disk is left out too.
        assert_eq!(out.dropped_disks, vec!["vda", "vdb"]);
    }

    #[test]
    fn a_restored_disk_missing_from_the_xml_is_an_error() {
        let wrong = HashMap::from([("vdz".to_string(), "rbd/x".to_string())]);
        assert!(rewrite_for_restore(XML, "c", &wrong).is_err());
        assert!(rewrite_for_restore("<notdomain/>", "c", &HashMap::new()).is_err());
        assert!(rewrite_for_restore("<domain>", "c", &HashMap::new()).is_err());
    }
}
