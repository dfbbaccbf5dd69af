//! Arbitrary bytes as a libvirt domain XML: parsing and the restore rewrite must return an
//! error or a result, never panic, hang or blow the stack.
#![no_main]

use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(description) = virt_rbd_backup::libvirt::parse_domain_xml("fuzz", text) {
            let mut images = HashMap::new();
            for disk in &description.disks {
                if let virt_rbd_backup::libvirt::DiskEntry::Rbd(spec) = disk {
                    images.insert(spec.target.clone(), "rbd/restored".to_string());
                }
            }
            let _ = virt_rbd_backup::libvirt::domain_rewrite::rewrite_for_restore(text, "copy", &images);
        }
    }
});
