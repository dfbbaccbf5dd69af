//! Names of backups and of the tool's snapshots.
//!
//! A backup id is the UTC time the backup started, `YYYYMMDDTHHMMSS.mmmZ`: it sorts by time,
//! is safe as a file name, and is readable. Tool snapshots are
//! `virt-rbd-backup-<owner>-<backup id>`, where the owner is the repository's id (or `restic`),
//! so an operator can tell them from anyone else's snapshots, and a run only ever removes
//! snapshots of its own repository.
//!
//! A repository's snapshots also carry the domain's UUID,
//! `virt-rbd-backup-<repository id>-<domain uuid>-<backup id>`: one image can be a disk of
//! several domains (a shareable disk, an ISO in RBD), and one domain's run must not take another
//! domain's incremental base on that image for a leftover of its own. Names without a UUID
//! (written by versions before it) are claimed by a domain only when its own manifests name
//! them (`is_stale_for_domain`).

/// Prefix of every snapshot this tool creates.
pub const SNAPSHOT_PREFIX: &str = "virt-rbd-backup-";

/// The snapshot name for a backup by `owner` (a repository id, or `restic`).
pub fn snapshot_name(owner: &str, backup_id: &str) -> String {
    format!("{SNAPSHOT_PREFIX}{owner}-{backup_id}")
}

/// The snapshot name for a backup of domain `domain_uuid` into repository `repo_id`.
pub fn domain_snapshot_name(repo_id: &str, domain_uuid: &str, backup_id: &str) -> String {
    format!("{SNAPSHOT_PREFIX}{repo_id}-{domain_uuid}-{backup_id}")
}

/// For a snapshot of repository `repo_id`: `Some(uuid)` of the domain its name carries, or
/// `None` for a name without one (an older version's). `None` too for other names.
pub fn snapshot_domain<'n>(name: &'n str, repo_id: &str) -> Option<&'n str> {
    let rest = name
        .strip_prefix(SNAPSHOT_PREFIX)?
        .strip_prefix(repo_id)?
        .strip_prefix('-')?;
    let uuid = rest.get(..36)?;
    (is_uuid(uuid) && rest[36..].starts_with('-')).then_some(uuid)
}

/// The backup id a snapshot of repository `repo_id` names, with or without the domain's UUID
/// in it (older versions wrote none). `None` for other names.
pub fn snapshot_backup_id<'n>(name: &'n str, repo_id: &str) -> Option<&'n str> {
    let rest = name
        .strip_prefix(SNAPSHOT_PREFIX)?
        .strip_prefix(repo_id)?
        .strip_prefix('-')?;
    Some(match snapshot_domain(name, repo_id) {
        Some(uuid) => &rest[uuid.len() + 1..],
        None => rest,
    })
}

/// Whether snapshot `name` on a disk of domain `domain_uuid` is an old snapshot of that domain
/// in repository `repo_id`, to remove once `current` (this backup's snapshot) is complete.
/// `recorded` holds the snapshot names this domain's manifests name: it decides for names
/// without a domain (older versions), which are otherwise left alone (they may be another
/// domain's base on a shared image).
pub fn is_stale_for_domain(
    name: &str,
    repo_id: &str,
    domain_uuid: &str,
    current: &str,
    recorded: &std::collections::HashSet<String>,
) -> bool {
    if name == current || !is_owned_snapshot(name, repo_id) {
        return false;
    }
    match snapshot_domain(name, repo_id) {
        Some(uuid) => uuid.eq_ignore_ascii_case(domain_uuid),
        None => recorded.contains(name),
    }
}

/// A UUID in its canonical 8-4-4-4-12 hex form.
fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// Whether a snapshot was made by this tool for `owner`.
pub fn is_owned_snapshot(name: &str, owner: &str) -> bool {
    name.strip_prefix(SNAPSHOT_PREFIX)
        .and_then(|rest| rest.strip_prefix(owner))
        .is_some_and(|rest| rest.starts_with('-'))
}

/// Whether a snapshot was made by this tool.
pub fn is_tool_snapshot(name: &str) -> bool {
    name.starts_with(SNAPSHOT_PREFIX)
}

/// The backup id for a start time given as Unix seconds and milliseconds.
pub fn backup_id_from_unix(secs: i64, millis: u32) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}.{millis:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's `civil_from_days`).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {

    #[test]
    fn the_backup_id_of_a_snapshot_name_with_or_without_the_domain() {
        let uuid = "0b2f5f0e-8f7a-4c53-9d1e-2f6f4e0c1a77";
        let id = "20261204T175425.812Z";
        assert_eq!(
            snapshot_backup_id(&domain_snapshot_name("r1", uuid, id), "r1"),
            Some(id)
        );
        assert_eq!(snapshot_backup_id(&snapshot_name("r1", id), "r1"), Some(id));
        assert_eq!(snapshot_backup_id(&snapshot_name("r2", id), "r1"), None);
        assert_eq!(snapshot_backup_id("nightly", "r1"), None);
    }

    use super::*;

    #[test]
    fn backup_id_is_utc_time_with_millis() {
        // 2026-11-26 09:52:43 UTC, checked with `date -u -d @1795686763`.
        assert_eq!(
            backup_id_from_unix(1_795_686_763, 7),
            "20261126T095243.007Z"
        );
        assert_eq!(backup_id_from_unix(0, 0), "19700101T000000.000Z");
        // Leap day.
        assert_eq!(
            backup_id_from_unix(951_782_400, 999),
            "20000229T000000.999Z"
        );
    }

    #[test]
    fn backup_ids_sort_by_time() {
        let a = backup_id_from_unix(1_700_000_000, 0);
        let b = backup_id_from_unix(1_700_000_000, 1);
        let c = backup_id_from_unix(1_800_000_000, 0);
        assert!(a < b && b < c);
    }

    #[test]
    fn tool_snapshots_are_recognised_by_prefix() {
        let name = snapshot_name("a1b2c3d4e5f6", "20261126T095243.007Z");
        assert_eq!(name, "virt-rbd-backup-a1b2c3d4e5f6-20261126T095243.007Z");
        assert!(is_tool_snapshot(&name));
        assert!(!is_tool_snapshot("nightly"));
    }

    const A: &str = "6f1c0a2e-1b3d-4c5e-8f70-9a1b2c3d4e5f";
    const B: &str = "0d9e8f7a-6b5c-4d3e-a2f1-0e9d8c7b6a59";

    #[test]
    fn domain_snapshots_name_their_domain() {
        let name = domain_snapshot_name("a1b2c3d4e5f6", A, "20261126T095243.007Z");
        assert_eq!(
            name,
            format!("virt-rbd-backup-a1b2c3d4e5f6-{A}-20261126T095243.007Z")
        );
        assert!(is_owned_snapshot(&name, "a1b2c3d4e5f6"));
        assert_eq!(snapshot_domain(&name, "a1b2c3d4e5f6"), Some(A));
        // An older version's name carries no domain.
        let legacy = snapshot_name("a1b2c3d4e5f6", "20261126T095243.007Z");
        assert_eq!(snapshot_domain(&legacy, "a1b2c3d4e5f6"), None);
        assert_eq!(snapshot_domain(&name, "ffffffffffff"), None);
        assert_eq!(snapshot_domain("nightly", "a1b2c3d4e5f6"), None);
    }

    #[test]
    fn another_domains_base_on_a_shared_image_is_never_stale() {
        // Regression: domain A's run removed domain B's base on an image both use.
        let none = std::collections::HashSet::new();
        let current = domain_snapshot_name("r1", A, "20261127T000000.000Z");
        let old_a = domain_snapshot_name("r1", A, "20261126T000000.000Z");
        let base_b = domain_snapshot_name("r1", B, "20261126T120000.000Z");
        let other_repo = domain_snapshot_name("r2", A, "20261126T000000.000Z");
        assert!(is_stale_for_domain(&old_a, "r1", A, &current, &none));
        assert!(!is_stale_for_domain(&current, "r1", A, &current, &none));
        assert!(!is_stale_for_domain(&base_b, "r1", A, &current, &none));
        assert!(!is_stale_for_domain(&other_repo, "r1", A, &current, &none));
        assert!(!is_stale_for_domain("nightly", "r1", A, &current, &none));
    }

    #[test]
    fn an_older_versions_snapshot_is_stale_only_when_this_domain_recorded_it() {
        let current = domain_snapshot_name("r1", A, "20261127T000000.000Z");
        let legacy = snapshot_name("r1", "20261126T000000.000Z");
        let mut recorded = std::collections::HashSet::new();
        assert!(!is_stale_for_domain(&legacy, "r1", A, &current, &recorded));
        recorded.insert(legacy.clone());
        assert!(is_stale_for_domain(&legacy, "r1", A, &current, &recorded));
    }

    #[test]
    fn a_repository_owns_only_its_own_snapshots() {
        let name = snapshot_name("a1b2c3d4e5f6", "20261126T095243.007Z");
        assert!(is_owned_snapshot(&name, "a1b2c3d4e5f6"));
        assert!(!is_owned_snapshot(&name, "a1b2c3"));
        assert!(!is_owned_snapshot(&name, "ffffffffffff"));
        assert!(!is_owned_snapshot("nightly", "a1b2c3d4e5f6"));
    }
}
