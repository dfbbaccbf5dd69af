//! Arbitrary bytes as a backup manifest: reading must give a manifest that passes validation
//! (plain file names only) or an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = std::env::temp_dir().join(format!("vrb-fuzz-manifest-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join("manifest.json");
    if std::fs::write(&path, data).is_ok() {
        if let Ok(manifest) = virt_rbd_backup::repo::read_manifest(&path) {
            for disk in &manifest.disks {
                assert!(!disk.file.contains('/') && !disk.file.starts_with('.') && !disk.file.is_empty());
            }
        }
    }
});
