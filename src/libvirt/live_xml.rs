//! Pure XML for a live restore (`restore --define NAME --live`): the transient domain that
//! boots at once on qcow2 overlays backed by the tool's NBD export of the backup, the
//! destination of each disk's block copy, and the persistent definition that follows the
//! pivot. Text in, text out, unit-tested without libvirt.
//!
//! Every function takes the XML `domain_rewrite::rewrite_for_restore` made (new name, no UUID,
//! RBD disks on the new images, other writable disks dropped), so what the running guest ends
//! on is exactly what `restore --define` would have defined. Edits are spliced into the text at
//! the byte ranges roxmltree reports; the rest stays as the operator had it.

use std::collections::HashMap;
use std::path::PathBuf;

use super::error::LibvirtError;

fn malformed(name: &str, message: String) -> LibvirtError {
    LibvirtError::MalformedXml {
        domain: name.to_string(),
        message,
    }
}

fn parse<'input>(
    xml: &'input str,
    name: &str,
) -> Result<roxmltree::Document<'input>, LibvirtError> {
    roxmltree::Document::parse_with_options(
        xml,
        roxmltree::ParsingOptions {
            allow_dtd: false,
            nodes_limit: 1_000_000,
        },
    )
    .map_err(|e| malformed(name, format!("domain XML is not well-formed: {e}")))
}

fn children<'a, 'input>(
    parent: roxmltree::Node<'a, 'input>,
    tag: &'static str,
) -> impl Iterator<Item = roxmltree::Node<'a, 'input>> {
    parent
        .children()
        .filter(move |n| n.is_element() && n.tag_name().name() == tag)
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

/// The `<disk>` elements of the domain's devices with their target dev.
fn disks<'a, 'input>(
    doc: &'a roxmltree::Document<'input>,
) -> Vec<(String, roxmltree::Node<'a, 'input>)> {
    let mut found = Vec::new();
    for devices in children(doc.root_element(), "devices") {
        for disk in children(devices, "disk") {
            let target = children(disk, "target")
                .next()
                .and_then(|t| t.attribute("dev"))
                .unwrap_or_default()
                .to_string();
            found.push((target, disk));
        }
    }
    found
}

/// The transient domain's XML: each disk whose target is in `overlays` becomes a qcow2 file
/// disk on its overlay (its `<target>`, `<boot>`, `<address>`, `<serial>` and `<wwn>` kept, so
/// the guest sees the same device at the same place); the rest is `xml` unchanged.
pub fn overlay_domain_xml(
    xml: &str,
    name: &str,
    overlays: &HashMap<String, PathBuf>,
) -> Result<String, LibvirtError> {
    const KEPT: [&str; 5] = ["target", "boot", "address", "serial", "wwn"];
    let doc = parse(xml, name)?;
    let mut edits = Vec::new();
    let mut placed = Vec::new();
    for (target, disk) in disks(&doc) {
        let Some(overlay) = overlays.get(&target) else {
            continue;
        };
        placed.push(target.clone());
        let mut text = format!(
            "<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='{}'/>",
            escape(&overlay.to_string_lossy())
        );
        for child in disk.children().filter(|n| n.is_element()) {
            if KEPT.contains(&child.tag_name().name()) {
                text.push_str(&xml[child.range()]);
            }
        }
        text.push_str("</disk>");
        edits.push((disk.range(), text));
    }
    for target in overlays.keys() {
        if !placed.contains(target) {
            return Err(malformed(
                name,
                format!("the domain XML has no disk {target}"),
            ));
        }
    }
    Ok(splice(xml, edits))
}

/// The destination of disk `target`'s block copy: its `<disk>` element in `xml` (the RBD disk
/// on the new image, with its auth and monitors), as `virDomainBlockCopy` takes it.
pub fn copy_destination_xml(xml: &str, name: &str, target: &str) -> Result<String, LibvirtError> {
    let doc = parse(xml, name)?;
    let disk = disks(&doc)
        .into_iter()
        .find(|(t, _)| t == target)
        .map(|(_, d)| d)
        .ok_or_else(|| malformed(name, format!("the domain XML has no disk {target}")))?;
    let is_rbd = disk.attribute("type") == Some("network")
        && children(disk, "source")
            .next()
            .and_then(|s| s.attribute("protocol"))
            == Some("rbd");
    if !is_rbd {
        return Err(malformed(name, format!("disk {target} is not an RBD disk")));
    }
    Ok(xml[disk.range()].to_string())
}

/// `xml` with `<uuid>UUID</uuid>` after its `<name>`: defining it makes the running transient
/// domain of that name and UUID persistent (libvirt keeps it running, on this definition).
pub fn with_uuid(xml: &str, name: &str, uuid: &str) -> Result<String, LibvirtError> {
    let doc = parse(xml, name)?;
    let root = doc.root_element();
    if children(root, "uuid").next().is_some() {
        return Err(malformed(
            name,
            "the domain XML already has a <uuid>".into(),
        ));
    }
    let name_element = children(root, "name")
        .next()
        .ok_or_else(|| malformed(name, "the domain XML has no <name>".into()))?;
    let end = name_element.range().end;
    let mut out = xml.to_string();
    out.insert_str(end, &format!("<uuid>{}</uuid>", escape(uuid)));
    Ok(out)
}

/// The owner (uid, gid) the host's libvirt gives QEMU processes of domain type `virt_type`
/// (`kvm`, `qemu`), from its capabilities' DAC `<baselabel>` (`+64055:+108`). The NBD sockets
/// and overlays of a live restore are handed to this owner, and to no one else.
pub fn dac_base_label(capabilities: &str, virt_type: &str) -> Option<(u32, u32)> {
    let doc = roxmltree::Document::parse(capabilities).ok()?;
    let host = children(doc.root_element(), "host").next()?;
    for secmodel in children(host, "secmodel") {
        let model = children(secmodel, "model").next().and_then(|m| m.text());
        if model != Some("dac") {
            continue;
        }
        for label in children(secmodel, "baselabel") {
            if label.attribute("type") != Some(virt_type) {
                continue;
            }
            let (uid, gid) = label.text()?.trim().split_once(':')?;
            let number = |s: &str| s.trim_start_matches('+').parse::<u32>().ok();
            return Some((number(uid)?, number(gid)?));
        }
    }
    None
}

/// The domain type (`<domain type='kvm'>`) of `xml`.
pub fn domain_type(xml: &str, name: &str) -> Result<String, LibvirtError> {
    let doc = parse(xml, name)?;
    Ok(doc
        .root_element()
        .attribute("type")
        .unwrap_or("qemu")
        .to_string())
}

fn splice(xml: &str, mut edits: Vec<(std::ops::Range<usize>, String)>) -> String {
    edits.sort_by_key(|(range, _)| std::cmp::Reverse(range.start));
    let mut out = xml.to_string();
    for (range, text) in edits {
        out.replace_range(range, &text);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const XML: &str = r#"<domain type='kvm'>
  <name>web-copy</name>
  <devices>
    <disk type='network' device='disk'>
      <driver name='qemu' type='raw' cache='writeback'/>
      <auth username='libvirt'><secret type='ceph' uuid='5e3c0b1a-7a2d-4f6e-9c41-0b5ac0ffee01'/></auth>
      <source protocol='rbd' name='rbd/web-copy-vda'><host name='10.0.0.1' port='6789'/></source>
      <target dev='vda' bus='virtio'/>
      <boot order='1'/>
      <address type='pci' domain='0x0000' bus='0x00' slot='0x04' function='0x0'/>
    </disk>
    <disk type='file' device='cdrom'>
      <source file='/iso/install.iso'/>
      <target dev='sda' bus='sata'/>
      <readonly/>
    </disk>
  </devices>
</domain>"#;

    #[test]
    fn overlay_xml_puts_the_disk_on_its_qcow2_overlay_at_the_same_place() {
        let overlays = HashMap::from([("vda".to_string(), PathBuf::from("/run/x/vda.qcow2"))]);
        let out = overlay_domain_xml(XML, "web-copy", &overlays).unwrap();
        let doc = roxmltree::Document::parse(&out).unwrap();
        let found = disks(&doc);
        let (_, vda) = found.iter().find(|(t, _)| t == "vda").unwrap();
        assert_eq!(vda.attribute("type"), Some("file"));
        let source = children(*vda, "source").next().unwrap();
        assert_eq!(source.attribute("file"), Some("/run/x/vda.qcow2"));
        let driver = children(*vda, "driver").next().unwrap();
        assert_eq!(driver.attribute("type"), Some("qcow2"));
        assert!(
            children(*vda, "auth").next().is_none(),
            "no RBD auth on a file disk"
        );
        assert_eq!(
            children(*vda, "boot").next().unwrap().attribute("order"),
            Some("1")
        );
        assert_eq!(
            children(*vda, "address").next().unwrap().attribute("slot"),
            Some("0x04")
        );
        // The CD-ROM is untouched.
        assert!(out.contains("<source file='/iso/install.iso'/>"));
        assert!(!out.contains("rbd/web-copy-vda"));
    }

    #[test]
    fn overlay_xml_refuses_a_disk_the_domain_does_not_have() {
        let overlays = HashMap::from([("vdz".to_string(), PathBuf::from("/run/x/vdz.qcow2"))]);
        let err = overlay_domain_xml(XML, "web-copy", &overlays).unwrap_err();
        assert!(err.to_string().contains("no disk vdz"), "{err}");
    }

    #[test]
    fn copy_destination_is_the_rbd_disk_of_the_target() {
        let dest = copy_destination_xml(XML, "web-copy", "vda").unwrap();
        assert!(dest.starts_with("<disk type='network'") && dest.ends_with("</disk>"));
        assert!(
            dest.contains("name='rbd/web-copy-vda'") && dest.contains("<auth username='libvirt'>")
        );
        let err = copy_destination_xml(XML, "web-copy", "sda").unwrap_err();
        assert!(err.to_string().contains("not an RBD disk"), "{err}");
    }

    #[test]
    fn with_uuid_adds_the_uuid_after_the_name_once() {
        let out = with_uuid(XML, "web-copy", "0b1c2d3e-0000-4000-8000-000000000001").unwrap();
        assert!(
            out.contains("<name>web-copy</name><uuid>0b1c2d3e-0000-4000-8000-000000000001</uuid>")
        );
        assert!(with_uuid(&out, "web-copy", "x").is_err());
    }

    #[test]
    fn dac_base_label_reads_the_owner_of_qemu_processes() {
        let caps = "<capabilities><host><secmodel><model>none</model><doi>0</doi></secmodel>\
            <secmodel><model>dac</model><doi>0</doi><baselabel type='kvm'>+64055:+108</baselabel>\
            <baselabel type='qemu'>+64055:+108</baselabel></secmodel></host></capabilities>";
        assert_eq!(dac_base_label(caps, "kvm"), Some((64055, 108)));
        assert_eq!(dac_base_label(caps, "xen"), None);
        assert_eq!(dac_base_label("<capabilities/>", "kvm"), None);
        assert_eq!(domain_type(XML, "web-copy").unwrap(), "kvm");
    }
}
