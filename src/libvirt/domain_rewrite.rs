//! Pure rewriting of a saved domain XML for `restore --define`: a new name, no UUID (libvirt
//! makes one), no MAC addresses (libvirt makes them), RBD disks pointed at their restored
//! images, and every other writable disk left out, so the new domain can never write to the
//! original's disks.
//!
//! Edits are spliced into the original text at the byte ranges roxmltree reports, so everything
//! else (devices, comments, formatting, elements this tool does not know) stays exactly as the
//! operator had it.
//!
//! # What `host_passthrough` refuses
//!
//! The saved XML comes out of the backup repository and is defined on whatever host runs the
//! restore, as a new domain next to the original. Parts of it name resources of the host
//! rather than of the guest: defined blindly, the copy would take the original's PCI device,
//! share its directories or NVDIMM file, run another emulator binary or arbitrary QEMU
//! arguments. `host_passthrough` lists, in the rewritten XML (so only what libvirt would really
//! get), every one of these, and `restore --define` refuses them unless the operator says
//! `--allow-host-passthrough`:
//!
//! - `<hostdev>` (PCI, USB, SCSI, mdev, host storage/char/net) and `<interface type='hostdev'>`
//!   (an SR-IOV function);
//! - `<filesystem>` of any type but `ram` (a host directory, file or block device shared with
//!   the guest);
//! - an `<emulator>` that is not one the host's libvirt lists in its capabilities;
//! - any element in an XML namespace outside `<metadata>`: libvirt reads only its hypervisor
//!   passthrough namespaces there (`qemu:commandline`, `qemu:capabilities`, `qemu:override`,
//!   the lxc/bhyve/xen equivalents); everything in them reaches the hypervisor unchecked;
//! - `<shmem>` (memory shared with whatever else maps that name, the original first) and
//!   `<memory>` devices backed by a host file (`nvdimm`, `virtio-pmem`: the original's file);
//! - host input devices (`<input type='passthrough'|'evdev'>`), a host TPM
//!   (`<backend type='passthrough'>`), host smartcard readers or certificates
//!   (`<smartcard mode='host'|'host-certificates'>`);
//! - character devices on a host device node (`type='dev'` on serial, parallel, console,
//!   channel, smartcard, redirdev, or an rng's backend);
//! - `<script>`/`<downscript>` of an interface (a host program run when the domain starts);
//! - kept (read-only) disks of type `block`, `nvme` or `dir`: a host device or directory.
//!
//! Not refused: read-only file disks (install media; the guest can read that host file),
//! character devices on host files, pipes or sockets (`type='file'|'pipe'|'unix'`),
//! `<interface type='direct'|'bridge'|'network'|'vhostuser'>`, graphics, `<seclabel>`,
//! `<nvram>` (a UEFI domain's copy names the original's NVRAM file and would share it: edit it
//! before the first start). A refusal lists every finding, not the first.

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

fn parse<'input>(
    xml: &'input str,
    domain: &str,
) -> Result<roxmltree::Document<'input>, LibvirtError> {
    let doc = roxmltree::Document::parse_with_options(
        xml,
        roxmltree::ParsingOptions {
            allow_dtd: false,
            nodes_limit: 1_000_000,
        },
    )
    .map_err(|e| LibvirtError::MalformedXml {
        domain: domain.to_string(),
        message: format!("saved domain XML is not well-formed: {e}"),
    })?;
    if doc.root_element().tag_name().name() != "domain" {
        return Err(LibvirtError::MalformedXml {
            domain: domain.to_string(),
            message: "saved XML has no <domain> root".into(),
        });
    }
    Ok(doc)
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
    let doc = parse(xml, new_name)?;
    let root = doc.root_element();
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

/// What in domain `xml` gives the guest the host's resources (see the module doc for the
/// list); empty when nothing does. `host_emulators` are the emulator paths the host's libvirt
/// lists (`emulators_in_capabilities`); an `<emulator>` not among them is a finding. `domain`
/// names the XML in errors. Each finding says what it is and where, for the operator.
pub fn host_passthrough(
    xml: &str,
    domain: &str,
    host_emulators: &[String],
) -> Result<Vec<String>, LibvirtError> {
    let doc = parse(xml, domain)?;
    let root = doc.root_element();
    let mut found = Vec::new();
    fn attr<'a>(node: roxmltree::Node<'a, '_>, name: &str) -> &'a str {
        node.attribute(name).unwrap_or("")
    }
    let source_text = |node: roxmltree::Node<'_, '_>| {
        elements(node, "source")
            .next()
            .and_then(|s| {
                ["dir", "file", "dev", "path", "name", "evdev"]
                    .iter()
                    .find_map(|a| s.attribute(*a))
            })
            .map(|p| format!(" {p}"))
            .unwrap_or_default()
    };

    // Namespaced elements: libvirt keeps foreign namespaces only in <metadata> (application
    // data it never interprets) and in its hypervisor passthrough namespaces.
    for node in root.descendants().filter(|n| n.is_element()) {
        let Some(uri) = node.tag_name().namespace() else {
            continue;
        };
        let in_metadata = node.ancestors().any(|a| {
            a.is_element()
                && a.tag_name().name() == "metadata"
                && a.tag_name().namespace().is_none()
        });
        // Only the outermost element of a namespaced subtree is reported.
        let parent_namespaced = node
            .parent_element()
            .is_some_and(|p| p.tag_name().namespace().is_some());
        if !in_metadata && !parent_namespaced {
            let prefix = node.lookup_prefix(uri).unwrap_or("");
            let shown = if prefix.is_empty() {
                node.tag_name().name().to_string()
            } else {
                format!("{prefix}:{}", node.tag_name().name())
            };
            found.push(format!(
                "<{shown}> (hypervisor passthrough namespace {uri})"
            ));
        }
    }

    for devices in elements(root, "devices") {
        for emulator in elements(devices, "emulator") {
            let path = emulator.text().unwrap_or("").trim();
            if !host_emulators.iter().any(|e| e == path) {
                let known = if host_emulators.is_empty() {
                    "none".to_string()
                } else {
                    host_emulators.join(", ")
                };
                found.push(format!(
                    "<emulator>{path}</emulator> (not one of this host's emulators: {known})"
                ));
            }
        }
        for device in devices.children().filter(|n| n.is_element()) {
            let tag = device.tag_name().name();
            let kind = attr(device, "type");
            let finding = match tag {
                "hostdev" => Some(format!("<hostdev type='{kind}'> (a host device)")),
                "interface" if kind == "hostdev" => {
                    Some("<interface type='hostdev'> (a host network function)".to_string())
                }
                "filesystem" if kind != "ram" => Some(format!(
                    "<filesystem type='{}'>{} (host storage shared with the guest)",
                    if kind.is_empty() { "mount" } else { kind },
                    source_text(device)
                )),
                "shmem" => Some(format!(
                    "<shmem name='{}'> (memory shared with other processes and domains)",
                    attr(device, "name")
                )),
                "memory"
                    if elements(device, "source").any(|s| elements(s, "path").next().is_some()) =>
                {
                    let path = elements(device, "source")
                        .flat_map(|s| elements(s, "path"))
                        .next()
                        .and_then(|p| p.text())
                        .unwrap_or("");
                    Some(format!(
                        "<memory model='{}'> backed by host file {path}",
                        attr(device, "model")
                    ))
                }
                "input" if kind == "passthrough" || kind == "evdev" => Some(format!(
                    "<input type='{kind}'>{} (a host input device)",
                    source_text(device)
                )),
                "smartcard" if matches!(attr(device, "mode"), "host" | "host-certificates") => {
                    Some(format!(
                        "<smartcard mode='{}'> (the host's smartcard readers or certificates)",
                        attr(device, "mode")
                    ))
                }
                "disk" if matches!(kind, "block" | "nvme" | "dir") => Some(format!(
                    "<disk type='{kind}'>{} (a host device or directory)",
                    source_text(device)
                )),
                _ => None,
            };
            found.extend(finding);
            if matches!(
                tag,
                "serial" | "parallel" | "console" | "channel" | "smartcard" | "redirdev"
            ) && kind == "dev"
            {
                found.push(format!(
                    "<{tag} type='dev'>{} (a host device node)",
                    source_text(device)
                ));
            }
            for backend in elements(device, "backend") {
                let backend_kind = attr(backend, "type");
                if tag == "tpm" && backend_kind == "passthrough" {
                    found.push(format!(
                        "<tpm> <backend type='passthrough'>{} (the host's TPM)",
                        elements(backend, "device")
                            .next()
                            .and_then(|d| d.attribute("path"))
                            .map(|p| format!(" {p}"))
                            .unwrap_or_default()
                    ));
                }
                if tag == "rng" && backend_kind == "dev" {
                    found.push(format!(
                        "<rng> <backend type='dev'>{} (a host device node)",
                        source_text(backend)
                    ));
                }
            }
            if tag == "interface" {
                for script in device.children().filter(|n| {
                    n.is_element() && matches!(n.tag_name().name(), "script" | "downscript")
                }) {
                    found.push(format!(
                        "<interface> <{} path='{}'> (a host program run when the domain starts or stops)",
                        script.tag_name().name(),
                        attr(script, "path")
                    ));
                }
            }
        }
    }
    Ok(found)
}

/// The emulator paths in libvirt's host capabilities XML (`virsh capabilities`): what
/// `<guest><arch><emulator>` and `<guest><arch><domain><emulator>` name. Sorted, no
/// duplicates. XML that does not parse yields none (then every `<emulator>` is refused).
pub fn emulators_in_capabilities(xml: &str) -> Vec<String> {
    let Ok(doc) = roxmltree::Document::parse_with_options(
        xml,
        roxmltree::ParsingOptions {
            allow_dtd: false,
            nodes_limit: 1_000_000,
        },
    ) else {
        return Vec::new();
    };
    let mut found: Vec<String> = doc
        .root_element()
        .children()
        .filter(|n| n.is_element() && n.tag_name().name() == "guest")
        .flat_map(|guest| elements(guest, "arch"))
        .flat_map(|arch| {
            elements(arch, "emulator")
                .chain(elements(arch, "domain").flat_map(|d| elements(d, "emulator")))
        })
        .filter_map(|e| e.text().map(|t| t.trim().to_string()))
        .filter(|t| !t.is_empty())
        .collect();
    found.sort();
    found.dedup();
    found
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

    fn emulators() -> Vec<String> {
        vec!["/usr/bin/qemu-system-x86_64".to_string()]
    }

    /// A domain with `devices` inside <devices> and `extra` after it.
    fn domain_with(devices: &str, extra: &str) -> String {
        format!(
            "<domain type='kvm' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>\
             <name>web</name><devices>\
             <emulator>/usr/bin/qemu-system-x86_64</emulator>{devices}</devices>{extra}</domain>"
        )
    }

    fn findings(devices: &str, extra: &str) -> Vec<String> {
        host_passthrough(&domain_with(devices, extra), "web", &emulators()).unwrap()
    }

    #[test]
    fn an_ordinary_domain_passes_the_host_passthrough_check() {
        let out = rewrite_for_restore(XML, "web-copy", &images()).unwrap();
        assert_eq!(
            host_passthrough(&out.xml, "web-copy", &[]).unwrap(),
            Vec::<String>::new()
        );
        let ordinary = "<disk type='file' device='cdrom'><source file='/iso/x.iso'/><readonly/></disk>\
            <interface type='bridge'><source bridge='br0'/></interface>\
            <interface type='direct'><source dev='eth0' mode='bridge'/></interface>\
            <serial type='pty'><target port='0'/></serial>\
            <channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>\
            <filesystem type='ram'><source usage='1024'/><target dir='tmp'/></filesystem>\
            <input type='tablet' bus='usb'/><smartcard mode='passthrough' type='spicevmc'/>\
            <redirdev bus='usb' type='spicevmc'/>\
            <tpm model='tpm-crb'><backend type='emulator' version='2.0'/></tpm>\
            <rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>\
            <memory model='dimm'><target><size unit='MiB'>512</size><node>0</node></target></memory>";
        let metadata =
            "<metadata><app:info xmlns:app='http://example.com/app'><app:x/></app:info></metadata>\
            <seclabel type='dynamic' model='dac' relabel='yes'/>";
        assert_eq!(findings(ordinary, metadata), Vec::<String>::new());
    }

    #[test]
    fn host_devices_and_host_network_functions_are_refused() {
        let f = findings(
            "<hostdev mode='subsystem' type='pci' managed='yes'><source><address domain='0' bus='3' slot='0' function='0'/></source></hostdev>\
             <hostdev mode='subsystem' type='usb'><source><vendor id='0x1234'/></source></hostdev>\
             <interface type='hostdev' managed='yes'><source><address type='pci' bus='4'/></source></interface>",
            "",
        );
        assert_eq!(f.len(), 3, "{f:?}");
        assert!(f[0].starts_with("<hostdev type='pci'>"), "{f:?}");
        assert!(f[1].starts_with("<hostdev type='usb'>"), "{f:?}");
        assert!(f[2].starts_with("<interface type='hostdev'>"), "{f:?}");
    }

    #[test]
    fn filesystem_passthrough_is_refused_naming_the_host_path() {
        let f = findings(
            "<filesystem type='mount' accessmode='passthrough'><driver type='virtiofs'/><source dir='/srv/share'/><target dir='share'/></filesystem>\
             <filesystem><source dir='/home'/><target dir='home'/></filesystem>\
             <filesystem type='block'><source dev='/dev/sdb'/><target dir='b'/></filesystem>",
            "",
        );
        assert_eq!(
            f,
            vec![
                "<filesystem type='mount'> /srv/share (host storage shared with the guest)",
                "<filesystem type='mount'> /home (host storage shared with the guest)",
                "<filesystem type='block'> /dev/sdb (host storage shared with the guest)",
            ]
        );
    }

    #[test]
    fn an_emulator_the_host_does_not_list_is_refused() {
        let xml = domain_with("", "").replace("qemu-system-x86_64<", "qemu-evil<");
        let f = host_passthrough(&xml, "web", &emulators()).unwrap();
        assert_eq!(
            f,
            vec!["<emulator>/usr/bin/qemu-evil</emulator> (not one of this host's emulators: /usr/bin/qemu-system-x86_64)"]
        );
        // No <emulator> at all: libvirt picks the host's default.
        let none = "<domain><name>web</name><devices/></domain>";
        assert!(host_passthrough(none, "web", &[]).unwrap().is_empty());
    }

    #[test]
    fn qemu_commandline_and_other_passthrough_namespaces_are_refused_outside_metadata() {
        let f = findings(
            "",
            "<qemu:commandline><qemu:arg value='-device'/><qemu:arg value='vfio-pci,host=03:00.0'/></qemu:commandline>\
             <qemu:capabilities><qemu:add capability='blockdev'/></qemu:capabilities>\
             <lxc:namespace xmlns:lxc='http://libvirt.org/schemas/domain/lxc/1.0'><lxc:sharenet type='netns' value='red'/></lxc:namespace>",
        );
        assert_eq!(f.len(), 3, "one finding per outermost element: {f:?}");
        assert!(f[0].starts_with("<qemu:commandline> (hypervisor passthrough namespace http://libvirt.org/schemas/domain/qemu/1.0)"));
        assert!(f[1].starts_with("<qemu:capabilities>"));
        assert!(f[2].starts_with("<lxc:namespace>"));
        // A default namespace declared on an element counts too.
        let g = findings("", "<commandline xmlns='http://libvirt.org/schemas/domain/qemu/1.0'><arg value='-S'/></commandline>");
        assert_eq!(g.len(), 1, "{g:?}");
        assert!(g[0].starts_with("<commandline> (hypervisor passthrough namespace"));
    }

    #[test]
    fn shared_memory_host_files_input_tpm_smartcard_char_devices_scripts_and_host_disks_are_refused(
    ) {
        let f = findings(
            "<shmem name='ivshmem0'><model type='ivshmem-plain'/><size unit='M'>4</size></shmem>\
             <memory model='nvdimm'><source><path>/var/lib/nvdimm/web.img</path></source><target><size unit='KiB'>524288</size></target></memory>\
             <input type='passthrough' bus='virtio'><source evdev='/dev/input/event1'/></input>\
             <input type='evdev'><source dev='/dev/input/event2'/></input>\
             <tpm model='tpm-tis'><backend type='passthrough'><device path='/dev/tpm0'/></backend></tpm>\
             <smartcard mode='host'/>\
             <serial type='dev'><source path='/dev/ttyS0'/><target port='0'/></serial>\
             <rng model='virtio'><backend model='egd' type='dev'><source path='/dev/hwrng'/></backend></rng>\
             <interface type='ethernet'><script path='/etc/qemu-ifup'/></interface>\
             <disk type='block' device='cdrom'><source dev='/dev/sr0'/><target dev='hdc'/><readonly/></disk>",
            "",
        );
        let expected = [
            "<shmem name='ivshmem0'>",
            "<memory model='nvdimm'> backed by host file /var/lib/nvdimm/web.img",
            "<input type='passthrough'> /dev/input/event1",
            "<input type='evdev'> /dev/input/event2",
            "<tpm> <backend type='passthrough'> /dev/tpm0",
            "<smartcard mode='host'>",
            "<serial type='dev'> /dev/ttyS0",
            "<rng> <backend type='dev'> /dev/hwrng",
            "<interface> <script path='/etc/qemu-ifup'>",
            "<disk type='block'> /dev/sr0",
        ];
        assert_eq!(f.len(), expected.len(), "{f:?}");
        for (finding, start) in f.iter().zip(expected) {
            assert!(
                finding.starts_with(start),
                "{finding:?} should start with {start:?}"
            );
        }
    }

    #[test]
    fn writable_host_disks_are_dropped_by_the_rewrite_so_the_check_does_not_see_them() {
        let xml = domain_with(
            "<disk type='block' device='disk'><source dev='/dev/vg/data'/><target dev='vdc'/></disk>",
            "",
        );
        let out = rewrite_for_restore(&xml, "web-copy", &HashMap::new()).unwrap();
        assert_eq!(out.dropped_disks, vec!["vdc"]);
        assert!(host_passthrough(&out.xml, "web-copy", &emulators())
            .unwrap()
            .is_empty());
        assert!(!host_passthrough(&xml, "web", &emulators())
            .unwrap()
            .is_empty());
    }

    #[test]
    fn the_check_refuses_malformed_xml_instead_of_passing_it() {
        assert!(host_passthrough("<domain>", "web", &[]).is_err());
        assert!(host_passthrough("<notdomain/>", "web", &[]).is_err());
    }

    #[test]
    fn emulators_come_from_every_guest_arch_of_the_capabilities() {
        let caps = "<capabilities><host><cpu><arch>x86_64</arch></cpu></host>\
            <guest><os_type>hvm</os_type><arch name='i686'><emulator>/usr/bin/qemu-system-i386</emulator>\
            <domain type='qemu'/><domain type='kvm'><emulator>/usr/libexec/qemu-kvm</emulator></domain></arch></guest>\
            <guest><os_type>hvm</os_type><arch name='x86_64'><emulator>/usr/bin/qemu-system-x86_64</emulator></arch></guest>\
            <guest><arch name='aarch64'><emulator>/usr/bin/qemu-system-i386</emulator></arch></guest></capabilities>";
        assert_eq!(
            emulators_in_capabilities(caps),
            vec![
                "/usr/bin/qemu-system-i386",
                "/usr/bin/qemu-system-x86_64",
                "/usr/libexec/qemu-kvm"
            ]
        );
        assert!(emulators_in_capabilities("not xml").is_empty());
    }
}
