//! Full or incremental, per disk.
//!
//! An incremental is only taken when its base is sound on both sides: the repository holds the
//! previous backup of the disk intact, and the cluster still has the snapshot that backup was
//! taken from, on the same image. Anything else falls back to a full backup with the reason,
//! which the report shows as a warning.

use serde::{Deserialize, Serialize};

/// What the operator asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum BackupMode {
    /// Incremental when a sound base exists, otherwise full.
    #[default]
    Auto,
    /// Always full.
    Full,
}

impl std::str::FromStr for BackupMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "full" => Ok(Self::Full),
            other => Err(format!(
                "unknown backup mode {other:?}: expected auto or full"
            )),
        }
    }
}

/// The previous backup of a disk, as the repository records it.
#[derive(Debug, Clone)]
pub struct BaseCandidate {
    /// Backup id of the previous backup.
    pub backup_id: String,
    /// Image id recorded then.
    pub image_id: String,
    /// Snapshot the previous backup was taken from.
    pub snapshot_name: String,
    /// Its id.
    pub snapshot_id: u64,
    /// Position in its chain: 0 for a full, parent's + 1 for an incremental.
    pub chain_position: u32,
    /// Why the previous backup cannot serve as a base, if it cannot (missing file, checksum).
    pub repository_problem: Option<String>,
}

/// The image as the cluster shows it now.
#[derive(Debug, Clone)]
pub struct ImageState {
    /// Current image id.
    pub image_id: String,
    /// Snapshots: (name, id).
    pub snapshots: Vec<(String, u64)>,
    /// Whether the object map or fast-diff is flagged invalid.
    pub object_map_invalid: bool,
}

/// The decision for one disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskPlan {
    /// Read every allocated block. `reason` says why no incremental, when one was possible in
    /// principle (a warning for the report); `None` for a first backup or `--mode full`.
    Full { reason: Option<String> },
    /// Read what changed since `base_snapshot`.
    Incremental {
        parent_backup: String,
        base_snapshot: String,
        base_snapshot_id: u64,
        chain_position: u32,
    },
}

/// Decides full or incremental for one disk.
pub fn plan_disk(
    mode: BackupMode,
    full_every: Option<u32>,
    previous: Option<&BaseCandidate>,
    image: &ImageState,
) -> DiskPlan {
    let Some(prev) = previous else {
        return DiskPlan::Full { reason: None };
    };
    if mode == BackupMode::Full {
        return DiskPlan::Full { reason: None };
    }
    if let Some(n) = full_every {
        if prev.chain_position + 1 >= n {
            return DiskPlan::Full { reason: None };
        }
    }
    let fallback = |why: String| DiskPlan::Full { reason: Some(why) };
    if let Some(problem) = &prev.repository_problem {
        return fallback(format!(
            "the previous backup {} cannot serve as base: {problem}",
            prev.backup_id
        ));
    }
    if prev.image_id != image.image_id {
        return fallback(format!(
            "the image was recreated (id {}, was {} at backup {})",
            image.image_id, prev.image_id, prev.backup_id
        ));
    }
    match image
        .snapshots
        .iter()
        .find(|(name, _)| *name == prev.snapshot_name)
    {
        None => {
            return fallback(format!(
                "the base snapshot {} no longer exists",
                prev.snapshot_name
            ))
        }
        Some((_, id)) if *id != prev.snapshot_id => {
            return fallback(format!(
                "the base snapshot {} was recreated (id {id}, was {})",
                prev.snapshot_name, prev.snapshot_id
            ))
        }
        Some(_) => {}
    }
    if image.object_map_invalid {
        return fallback(
            "the image's object map is flagged invalid (`rbd object-map rebuild` repairs it)"
                .into(),
        );
    }
    DiskPlan::Incremental {
        parent_backup: prev.backup_id.clone(),
        base_snapshot: prev.snapshot_name.clone(),
        base_snapshot_id: prev.snapshot_id,
        chain_position: prev.chain_position + 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prev() -> BaseCandidate {
        BaseCandidate {
            backup_id: "B1".into(),
            image_id: "abc".into(),
            snapshot_name: "virt-rbd-backup-B1".into(),
            snapshot_id: 7,
            chain_position: 0,
            repository_problem: None,
        }
    }

    fn image() -> ImageState {
        ImageState {
            image_id: "abc".into(),
            snapshots: vec![("virt-rbd-backup-B1".into(), 7)],
            object_map_invalid: false,
        }
    }

    fn reason(plan: DiskPlan) -> String {
        match plan {
            DiskPlan::Full { reason: Some(r) } => r,
            other => panic!("expected a full backup with a reason, got {other:?}"),
        }
    }

    #[test]
    fn sound_base_gives_an_incremental() {
        assert_eq!(
            plan_disk(BackupMode::Auto, None, Some(&prev()), &image()),
            DiskPlan::Incremental {
                parent_backup: "B1".into(),
                base_snapshot: "virt-rbd-backup-B1".into(),
                base_snapshot_id: 7,
                chain_position: 1
            }
        );
    }

    #[test]
    fn first_backup_and_forced_full_are_full_without_warning() {
        assert_eq!(
            plan_disk(BackupMode::Auto, None, None, &image()),
            DiskPlan::Full { reason: None }
        );
        assert_eq!(
            plan_disk(BackupMode::Full, None, Some(&prev()), &image()),
            DiskPlan::Full { reason: None }
        );
    }

    #[test]
    fn full_every_starts_a_new_chain_after_n_backups() {
        let mut p = prev();
        p.chain_position = 2; // full, inc, inc: the next is the 4th
        assert!(matches!(
            plan_disk(BackupMode::Auto, Some(4), Some(&p), &image()),
            DiskPlan::Incremental {
                chain_position: 3,
                ..
            }
        ));
        p.chain_position = 3;
        assert_eq!(
            plan_disk(BackupMode::Auto, Some(4), Some(&p), &image()),
            DiskPlan::Full { reason: None }
        );
        assert_eq!(
            plan_disk(BackupMode::Auto, Some(1), Some(&prev()), &image()),
            DiskPlan::Full { reason: None }
        );
    }

    #[test]
    fn deleted_base_snapshot_falls_back_to_full() {
        let mut img = image();
        img.snapshots.clear();
        assert!(
            reason(plan_disk(BackupMode::Auto, None, Some(&prev()), &img))
                .contains("no longer exists")
        );
    }

    #[test]
    fn recreated_image_or_snapshot_falls_back_to_full() {
        let mut img = image();
        img.image_id = "def".into();
        assert!(
            reason(plan_disk(BackupMode::Auto, None, Some(&prev()), &img)).contains("recreated")
        );
        let mut img = image();
        img.snapshots[0].1 = 9;
        assert!(
            reason(plan_disk(BackupMode::Auto, None, Some(&prev()), &img)).contains("recreated")
        );
    }

    #[test]
    fn invalid_object_map_falls_back_to_full() {
        let mut img = image();
        img.object_map_invalid = true;
        assert!(
            reason(plan_disk(BackupMode::Auto, None, Some(&prev()), &img)).contains("object map")
        );
    }

    #[test]
    fn damaged_previous_backup_falls_back_to_full() {
        let mut p = prev();
        p.repository_problem = Some("vda.blocks does not match its checksum".into());
        assert!(
            reason(plan_disk(BackupMode::Auto, None, Some(&p), &image()))
                .contains("cannot serve as base")
        );
    }
}
