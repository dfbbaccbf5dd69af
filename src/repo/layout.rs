//! Where things live in a repository, and how untrusted names become safe path components.
//!
//! ```text
//! REPO/
//!   virt-rbd-backup-repo.json        marker: {"format": "virt-rbd-backup-repo", "version": 1}
//!   <domain uuid>/
//!     .lock                           flock held by the run backing up this domain
//!     <backup id>/                    a complete backup (renamed into place last)
//!       manifest.json
//!       <disk target>.raw, .rbdiff[.zst], .b3, .blocks, .leaves
//!                                     one disk's files (named by `disk_writer`, which lists
//!                                     them; the manifest records each name)
//!     .partial-<backup id>/           a backup being written; never read as a backup
//!     .quarantine-<backup id>/        a backup whose manifest could not be read, set aside by
//!                                     prune (never removed by the tool; see `engine::prune`)
//! ```
//! Domain folders are named by UUID, which survives renames; names from domain XML (disk
//! targets) pass through `safe_component` before they touch a path.

/// Name of the repository marker file.
pub const MARKER_FILE: &str = "virt-rbd-backup-repo.json";
/// Name of a backup's manifest.
pub const MANIFEST_FILE: &str = "manifest.json";
/// Prefix of a backup folder that is still being written.
pub const PARTIAL_PREFIX: &str = ".partial-";
/// Prefix of a backup folder that prune set aside because its manifest could not be read.
pub const QUARANTINE_PREFIX: &str = ".quarantine-";
/// Per-domain lock file.
pub const LOCK_FILE: &str = ".lock";

/// Turns any string into one path component that stays inside its folder: bytes outside
/// `[A-Za-z0-9._+-]` become `%XX`, a leading dot is escaped (no hidden files, no `.`/`..`),
/// and names longer than 128 bytes are cut and suffixed with a hash so they stay unique.
pub fn safe_component(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for (i, b) in name.bytes().enumerate() {
        let keep =
            b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'+') || (b == b'.' && i > 0);
        if keep {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    if out.is_empty() {
        out.push_str("%00");
    }
    if out.len() > 128 {
        let digest = blake3::hash(name.as_bytes()).to_hex();
        out.truncate(100);
        // Cutting may split a %XX escape; that is harmless: the hash keeps the name unique.
        out.push('~');
        out.push_str(&digest[..16]);
    }
    out
}

/// Whether `s` is a libvirt UUID in canonical form (used as a folder name as is).
pub fn is_canonical_uuid(s: &str) -> bool {
    let bytes = s.as_bytes();
    bytes.len() == 36
        && bytes.iter().enumerate().all(|(i, &b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit() && !b.is_ascii_uppercase(),
        })
}

/// The folder name of a domain.
pub fn domain_folder(uuid: &str) -> String {
    if is_canonical_uuid(uuid) {
        uuid.to_string()
    } else {
        safe_component(uuid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_names_stay_readable() {
        assert_eq!(safe_component("vda"), "vda");
        assert_eq!(safe_component("disk-1_a.b"), "disk-1_a.b");
    }

    #[test]
    fn traversal_and_separators_are_escaped() {
        assert_eq!(safe_component(".."), "%2E.");
        assert_eq!(safe_component("."), "%2E");
        assert_eq!(safe_component("../etc/passwd"), "%2E.%2Fetc%2Fpasswd");
        assert_eq!(safe_component("pool/image"), "pool%2Fimage");
        assert_eq!(safe_component("a b\nc"), "a%20b%0Ac");
        assert_eq!(safe_component(""), "%00");
    }

    #[test]
    fn escaped_names_never_leave_the_folder() {
        for name in ["..", "/", "a/../../b", ".hidden", "\0", "x/."] {
            let c = safe_component(name);
            assert!(
                !c.contains('/') && c != "." && c != ".." && !c.starts_with('.'),
                "{name:?} -> {c:?}"
            );
        }
    }

    #[test]
    fn distinct_names_stay_distinct() {
        assert_ne!(safe_component("a/b"), safe_component("a%2Fb"));
        let long_a = "a".repeat(300);
        let long_b = format!("{}b", "a".repeat(299));
        assert_ne!(safe_component(&long_a), safe_component(&long_b));
        assert!(safe_component(&long_a).len() <= 128);
    }

    #[test]
    fn uuids_are_recognised() {
        assert!(is_canonical_uuid("3b1f9b7e-8c43-4b71-9a5d-0c2d7f1e6a10"));
        assert!(!is_canonical_uuid("3B1F9B7E-8C43-4B71-9A5D-0C2D7F1E6A10"));
        assert!(!is_canonical_uuid("../../../../../../../../../../../.."));
        assert_eq!(domain_folder("../x"), "%2E.%2Fx");
    }
}
