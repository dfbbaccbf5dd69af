//! Names of backups and of the tool's snapshots.
//!
//! A backup id is the UTC time the backup started, `YYYYMMDDTHHMMSS.mmmZ`: it sorts by time,
//! is safe as a file name, and is readable. Tool snapshots are
//! `virt-rbd-backup-<owner>-<backup id>`, where the owner is the repository's id (or `restic`),
//! so an operator can tell them from anyone else's snapshots, and a run only ever removes
//! snapshots of its own repository.

/// Prefix of every snapshot this tool creates.
pub const SNAPSHOT_PREFIX: &str = "virt-rbd-backup-";

/// The snapshot name for a backup by `owner` (a repository id, or `restic`).
pub fn snapshot_name(owner: &str, backup_id: &str) -> String {
    format!("{SNAPSHOT_PREFIX}{owner}-{backup_id}")
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

    #[test]
    fn a_repository_owns_only_its_own_snapshots() {
        let name = snapshot_name("a1b2c3d4e5f6", "20261126T095243.007Z");
        assert!(is_owned_snapshot(&name, "a1b2c3d4e5f6"));
        assert!(!is_owned_snapshot(&name, "a1b2c3"));
        assert!(!is_owned_snapshot(&name, "ffffffffffff"));
        assert!(!is_owned_snapshot("nightly", "a1b2c3d4e5f6"));
    }
}
