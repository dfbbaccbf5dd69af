//! The manifest: the one record that makes a backup a backup.
//!
//! Format (JSON, `manifest.json` in the backup's folder), version 2:
//! - `format`: always `"virt-rbd-backup-manifest"`; `version`: 2 (1 before `sequence`).
//! - `backup_id`, `kind` (`"full"` when every disk is full, else `"incremental"`), `parent`
//!   (the backup id an incremental builds on, or null), `tool_version`.
//! - `sequence` (version 2; required there): the backup's place in its domain's history, 1 for
//!   the first backup written with a sequence, then the largest sequence in the domain's folder
//!   plus 1, taken under the domain's lock. The order of backups (latest, retention, the base of
//!   the next incremental, listings) is by sequence, then by id: backups of version 1 have none
//!   and come before every backup that has one, in id order as they always were. The id stays
//!   the wall-clock start time, so after the clock steps back a newer backup may have a smaller
//!   id; only the sequence says which is newer.
//! - `domain`: `name`, `uuid`, `xml` (as libvirt returned it; holds no secret values).
//! - `started_at`, `completed_at`: Unix seconds (float).
//! - `consistency` (`Consistency`): `"frozen"`, `"crash_consistent_group"`,
//!   `"crash_consistent_per_disk"` or `"shut_off"`; `freeze` (`FreezeReport`): the freeze
//!   report (attempted, frozen_filesystems, window_ms, frozen_at, thawed_at).
//! - `disks[]`: `target`, `pool`, `namespace`, `image`, `image_id`, `size`, `object_size`,
//!   `snapshot` {`name`, `id`, `timestamp`}, `bytes_read`, `bytes_written`, and:
//!   - `kind`: `"full"` or `"incremental"`; `chain_position`: 0 for a full, parent's + 1;
//!     `parent_backup` and `base_snapshot` {`name`, `id`, `timestamp`}: what an incremental
//!     was taken against.
//!   - `file` (a plain name inside the backup folder) and `format` (`DiskFormat`): `"raw"` (a
//!     sparse raw image of exactly `size` bytes), `"rbd-diff-v1"` (Ceph's `rbd export-diff`
//!     stream, from `base_snapshot`, or from nothing for a full, to `snapshot`: `rbd
//!     import-diff` replays it) or `"rbd-diff-v1+zstd"` (that stream in zstd frames). Files are
//!     named by `repo::disk_writer`, the one place that writes them. `file_size` in bytes.
//!   - `checksum`: content checksum of the image at `snapshot` (`blake3-4m:<hex>`, see
//!     `plan::blocks`), and `blocks_file`: the table of its 4 MiB block hashes (32 bytes each,
//!     in order; BLAKE3 of the table's bytes is the checksum), carried forward by the next
//!     incremental and used by verify and restore to name a bad offset.
//!   - `file_checksum`: `blake3-4m` of the stored file's bytes (for `"raw"` it equals
//!     `checksum`), and for diff files `file_chunks`: that checksum's 4 MiB chunk table.
//!   - `leaves_file` (optional): the 64 KiB leaf chaining values of the blocks this backup
//!     hashed (`repo::leaf_table`), so the next incremental reads only the changed leaves.
//!     Never trusted on its own: each record must merge to the block hash it stands for.
//!   - `group_snapshot` (only when `consistency` is `"crash_consistent_group"`): {`pool`,
//!     `group`, `name`, `id`}: the RBD group snapshot the content was read from, `id` being this
//!     image's member snapshot. `snapshot` is then a marker taken just before the group
//!     snapshot: the start of the next incremental's diff (librbd diffs only from snapshots it
//!     can name, and group member snapshots have internal names), a superset of what changed.
//!
//! Fields added in later versions get serde defaults so older manifests keep reading, and
//! every field added bumps `version`: a build that finds a version above its own refuses the
//! manifest with `RepoError::NewerManifest` ("upgrade") instead of reading it as damaged, and
//! `prune` keeps such a backup and its chain. (serde ignores unknown fields, so without the bump
//! an older build would silently drop what it does not know.)
//! A manifest is only ever written by `write_manifest` (temporary file, fsync, rename), and
//! read by `read_manifest` through `stored_file` (no links, no FIFOs, at most
//! `MAX_MANIFEST_BYTES`).

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::error::RepoError;
use super::stored_file::{read_stored_file, MAX_MANIFEST_BYTES};

/// The `format` field's value.
pub const MANIFEST_FORMAT: &str = "virt-rbd-backup-manifest";
/// The manifest version this code writes (and the highest it reads).
pub const MANIFEST_VERSION: u32 = 2;
/// The first version that records `sequence`.
pub const SEQUENCE_VERSION: u32 = 2;

/// What consistency the snapshots of a domain have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Consistency {
    /// Guest filesystems were frozen while the snapshots were taken.
    Frozen,
    /// No freeze; each disk's snapshot is crash-consistent on its own.
    CrashConsistentPerDisk,
    /// No freeze; all disks were snapshotted at one instant by an RBD group snapshot.
    CrashConsistentGroup,
    /// The domain was shut off: its disks were not in use.
    ShutOff,
}

/// The freeze of one domain.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FreezeReport {
    /// Whether a freeze was attempted.
    pub attempted: bool,
    /// Filesystems the agent froze.
    pub frozen_filesystems: u32,
    /// From the freeze call returning to the thaw call returning, in milliseconds.
    pub window_ms: Option<f64>,
    /// Wall-clock time (Unix seconds) when the freeze call returned.
    pub frozen_at: Option<f64>,
    /// Wall-clock time (Unix seconds) when the thaw call returned.
    pub thawed_at: Option<f64>,
}

/// How a disk's content is stored: the manifest's `format`, serialized as the strings every
/// version wrote (`"raw"`, `"rbd-diff-v1"`, `"rbd-diff-v1+zstd"`). A value outside these makes
/// the manifest unreadable (damaged, or written by a version that should have bumped
/// `MANIFEST_VERSION` for a new format).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DiskFormat {
    /// A sparse raw image of exactly the disk's `size` bytes (full backups, uncompressed).
    #[serde(rename = "raw")]
    SparseRaw,
    /// An `rbd export-diff` v1 stream from `base_snapshot` (or from nothing, for a full) to
    /// `snapshot`: `rbd import-diff` replays it.
    #[serde(rename = "rbd-diff-v1")]
    RbdDiffV1,
    /// The same stream as a sequence of zstd frames (`zstd -dc FILE | rbd import-diff - IMG`);
    /// compressed repositories store full backups this way too.
    #[serde(rename = "rbd-diff-v1+zstd")]
    RbdDiffV1Zstd,
}

impl DiskFormat {
    /// The format a disk is stored in: a full backup is a raw image unless compressed (a raw
    /// image cannot be compressed and stay usable as a disk, a diff stream can), an
    /// incremental is always a diff.
    pub fn for_backup(kind: BackupKind, compressed: bool) -> Self {
        match (kind, compressed) {
            (BackupKind::Full, false) => DiskFormat::SparseRaw,
            (BackupKind::Incremental, false) => DiskFormat::RbdDiffV1,
            (_, true) => DiskFormat::RbdDiffV1Zstd,
        }
    }

    /// The string the manifest records.
    pub fn as_str(self) -> &'static str {
        match self {
            DiskFormat::SparseRaw => "raw",
            DiskFormat::RbdDiffV1 => "rbd-diff-v1",
            DiskFormat::RbdDiffV1Zstd => "rbd-diff-v1+zstd",
        }
    }
}

impl std::fmt::Display for DiskFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Full or incremental.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackupKind {
    /// Every allocated block.
    Full,
    /// What changed since the base snapshot, as an rbd diff.
    Incremental,
}

fn full() -> BackupKind {
    BackupKind::Full
}

/// The domain a backup belongs to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DomainRecord {
    /// Name at backup time.
    pub name: String,
    /// UUID.
    pub uuid: String,
    /// Domain XML at backup time.
    pub xml: String,
}

/// The snapshot a disk was exported from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotRecord {
    /// Snapshot name.
    pub name: String,
    /// Snapshot id.
    pub id: u64,
    /// Creation time Ceph recorded, Unix seconds.
    pub timestamp: Option<f64>,
}

/// One disk of a backup.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiskRecord {
    /// Guest device.
    pub target: String,
    /// Pool.
    pub pool: String,
    /// RADOS namespace.
    #[serde(default)]
    pub namespace: Option<String>,
    /// Image name.
    pub image: String,
    /// Image id.
    pub image_id: String,
    /// Size in bytes.
    pub size: u64,
    /// Object size in bytes.
    pub object_size: u64,
    /// The exported snapshot.
    pub snapshot: SnapshotRecord,
    /// File name inside the backup folder.
    pub file: String,
    /// How the file stores the content.
    pub format: DiskFormat,
    /// Bytes read from the cluster.
    pub bytes_read: u64,
    /// Bytes of data written (the rest are holes).
    pub bytes_written: u64,
    /// Content checksum of the image at the snapshot.
    pub checksum: String,
    /// Full or incremental.
    #[serde(default = "full")]
    pub kind: BackupKind,
    /// 0 for a full, parent's + 1 for an incremental.
    #[serde(default)]
    pub chain_position: u32,
    /// The backup an incremental builds on.
    #[serde(default)]
    pub parent_backup: Option<String>,
    /// The snapshot an incremental was taken against.
    #[serde(default)]
    pub base_snapshot: Option<SnapshotRecord>,
    /// Size of the stored file in bytes.
    #[serde(default)]
    pub file_size: u64,
    /// `blake3-4m` of the stored file's bytes (equals `checksum` for raw files).
    #[serde(default)]
    pub file_checksum: Option<String>,
    /// Table of the content's block hashes.
    #[serde(default)]
    pub blocks_file: Option<String>,
    /// Table of the stored file's chunk hashes (diff files only).
    #[serde(default)]
    pub file_chunks: Option<String>,
    /// Leaf table of the blocks this backup hashed (`repo::leaf_table`); an optimisation for
    /// the next incremental, absent in backups of older versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leaves_file: Option<String>,
    /// The group snapshot the content was read from (group-consistent backups only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_snapshot: Option<GroupSnapshotRecord>,
}

/// A disk's snapshot within an RBD group snapshot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupSnapshotRecord {
    /// Pool (and namespace) of the group.
    pub pool: String,
    /// Group name.
    pub group: String,
    /// Group snapshot name.
    pub name: String,
    /// Id of this image's member snapshot.
    pub id: u64,
}

impl DiskRecord {
    /// The stored file's checksum.
    pub fn stored_checksum(&self) -> &str {
        self.file_checksum.as_deref().unwrap_or(&self.checksum)
    }

    /// `pool/image` or `pool/namespace/image`.
    pub fn image_spec(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{}/{}/{}", self.pool, ns, self.image),
            None => format!("{}/{}", self.pool, self.image),
        }
    }
}

/// A complete backup of one domain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackupManifest {
    /// Always `MANIFEST_FORMAT`.
    pub format: String,
    /// Format version.
    pub version: u32,
    /// Backup id.
    pub backup_id: String,
    /// Place in the domain's history (version 2 on; see the module doc).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sequence: Option<u64>,
    /// Kind.
    pub kind: BackupKind,
    /// Parent backup, for incrementals.
    #[serde(default)]
    pub parent: Option<String>,
    /// Version of the tool that wrote it.
    pub tool_version: String,
    /// The domain.
    pub domain: DomainRecord,
    /// Start, Unix seconds.
    pub started_at: f64,
    /// End, Unix seconds.
    pub completed_at: f64,
    /// Consistency of the snapshots.
    pub consistency: Consistency,
    /// The freeze.
    pub freeze: FreezeReport,
    /// The disks.
    pub disks: Vec<DiskRecord>,
}

impl BackupManifest {
    /// Checks what serde cannot: the format marker and version.
    pub fn validate(&self, path: &Path) -> Result<(), RepoError> {
        if self.format != MANIFEST_FORMAT {
            return Err(RepoError::BadManifest {
                path: path.to_path_buf(),
                message: format!("format is {:?}, not {MANIFEST_FORMAT:?}", self.format),
            });
        }
        if self.version > MANIFEST_VERSION {
            return Err(RepoError::NewerManifest {
                path: path.to_path_buf(),
                version: u64::from(self.version),
                supported: MANIFEST_VERSION,
            });
        }
        if self.version == 0 {
            return Err(RepoError::BadManifest {
                path: path.to_path_buf(),
                message: "version 0 does not exist".into(),
            });
        }
        if self.version >= SEQUENCE_VERSION && self.sequence.is_none() {
            return Err(RepoError::BadManifest {
                path: path.to_path_buf(),
                message: format!("version {} must record a sequence", self.version),
            });
        }
        for disk in &self.disks {
            let names = [
                Some(&disk.file),
                disk.blocks_file.as_ref(),
                disk.file_chunks.as_ref(),
                disk.leaves_file.as_ref(),
            ];
            for name in names.into_iter().flatten() {
                if !is_plain_file_name(name) {
                    return Err(RepoError::BadManifest {
                        path: path.to_path_buf(),
                        message: format!("disk file name {name:?} is not a plain file name"),
                    });
                }
            }
            if disk.kind == BackupKind::Incremental
                && (disk.parent_backup.is_none() || disk.base_snapshot.is_none())
            {
                return Err(RepoError::BadManifest {
                    path: path.to_path_buf(),
                    message: format!(
                        "incremental disk {} names no parent backup or base snapshot",
                        disk.target
                    ),
                });
            }
        }
        Ok(())
    }
}

fn is_plain_file_name(name: &str) -> bool {
    !name.is_empty() && !name.contains('/') && !name.starts_with('.') && !name.contains('\0')
}

/// Reads and validates a manifest. One written by a newer version is
/// `RepoError::NewerManifest`, recognised before its fields are interpreted (a newer version
/// may change what they mean).
pub fn read_manifest(path: &Path) -> Result<BackupManifest, RepoError> {
    let bytes = read_stored_file(path, MAX_MANIFEST_BYTES)?;
    let bad = |e: serde_json::Error| RepoError::BadManifest {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    let value: serde_json::Value = serde_json::from_slice(&bytes).map_err(bad)?;
    let hints = ManifestHints::of(&value);
    if let (true, Some(version)) = (hints.ours, hints.version) {
        if version > u64::from(MANIFEST_VERSION) {
            return Err(RepoError::NewerManifest {
                path: path.to_path_buf(),
                version,
                supported: MANIFEST_VERSION,
            });
        }
    }
    let manifest: BackupManifest = serde_json::from_value(value).map_err(bad)?;
    manifest.validate(path)?;
    Ok(manifest)
}

/// What can be told of a manifest this build cannot read in full (one of a newer version):
/// enough for `prune` to keep its chain and for the next backup to take a larger sequence.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ManifestHints {
    /// `format` is ours.
    pub ours: bool,
    /// `version`, if a number.
    pub version: Option<u64>,
    /// `sequence`, if a number.
    pub sequence: Option<u64>,
    /// `parent`, if a string.
    pub parent: Option<String>,
}

impl ManifestHints {
    fn of(value: &serde_json::Value) -> Self {
        ManifestHints {
            ours: value.get("format").and_then(serde_json::Value::as_str) == Some(MANIFEST_FORMAT),
            version: value.get("version").and_then(serde_json::Value::as_u64),
            sequence: value.get("sequence").and_then(serde_json::Value::as_u64),
            parent: value
                .get("parent")
                .and_then(serde_json::Value::as_str)
                .map(str::to_string),
        }
    }

    /// The hints of the manifest at `path`, if it is JSON at all (read with the same checks as
    /// `read_manifest`).
    pub fn read(path: &Path) -> Option<Self> {
        let bytes = read_stored_file(path, MAX_MANIFEST_BYTES).ok()?;
        let value: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
        Some(Self::of(&value))
    }
}

/// Writes `manifest` to `path` durably: a temporary file in the same folder, fsync, rename,
/// fsync of the folder. Mode 0600.
pub fn write_manifest(path: &Path, manifest: &BackupManifest) -> Result<(), RepoError> {
    let folder = path.parent().unwrap_or(Path::new("."));
    let tmp = folder.join(".manifest.json.tmp");
    let io = |action: &'static str, p: &Path| {
        let p = p.to_path_buf();
        move |source| RepoError::Io {
            action,
            path: p,
            source,
        }
    };
    let body = serde_json::to_vec_pretty(manifest).map_err(|e| RepoError::BadManifest {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io("create", &tmp))?;
    file.write_all(&body).map_err(io("write", &tmp))?;
    file.write_all(b"\n").map_err(io("write", &tmp))?;
    file.sync_all().map_err(io("fsync", &tmp))?;
    drop(file);
    fs::rename(&tmp, path).map_err(io("rename into place", path))?;
    sync_dir(folder)
}

/// fsyncs a folder so that entries created or renamed in it survive a crash.
pub fn sync_dir(folder: &Path) -> Result<(), RepoError> {
    File::open(folder)
        .and_then(|d| d.sync_all())
        .map_err(|source| RepoError::Io {
            action: "fsync folder",
            path: folder.to_path_buf(),
            source,
        })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample() -> BackupManifest {
        BackupManifest {
            format: MANIFEST_FORMAT.into(),
            version: MANIFEST_VERSION,
            backup_id: "20261126T095243.007Z".into(),
            sequence: Some(7),
            kind: BackupKind::Full,
            parent: None,
            tool_version: "0.1.0".into(),
            domain: DomainRecord {
                name: "web".into(),
                uuid: "3b1f9b7e-8c43-4b71-9a5d-0c2d7f1e6a10".into(),
                xml: "<domain/>".into(),
            },
            started_at: 1.5,
            completed_at: 2.5,
            consistency: Consistency::Frozen,
            freeze: FreezeReport {
                attempted: true,
                frozen_filesystems: 2,
                window_ms: Some(80.0),
                frozen_at: Some(1.6),
                thawed_at: Some(1.7),
            },
            disks: vec![DiskRecord {
                target: "vda".into(),
                pool: "rbd".into(),
                namespace: None,
                image: "web-a".into(),
                image_id: "10f2a3b4c5d6".into(),
                size: 1 << 30,
                object_size: 1 << 22,
                snapshot: SnapshotRecord {
                    name: "virt-rbd-backup-20261126T095243.007Z".into(),
                    id: 4,
                    timestamp: Some(1.65),
                },
                file: "vda.raw".into(),
                format: DiskFormat::SparseRaw,
                bytes_read: 8 << 20,
                bytes_written: 5 << 20,
                checksum: "blake3-4m:00".into(),
                kind: BackupKind::Full,
                chain_position: 0,
                parent_backup: None,
                base_snapshot: None,
                file_size: 1 << 30,
                file_checksum: None,
                blocks_file: Some("vda.blocks".into()),
                file_chunks: None,
                leaves_file: Some("vda.leaves".into()),
                group_snapshot: None,
            }],
        }
    }

    #[test]
    fn manifest_round_trips_through_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(MANIFEST_FILE_NAME);
        write_manifest(&path, &sample()).unwrap();
        assert_eq!(read_manifest(&path).unwrap(), sample());
        assert!(!dir.path().join(".manifest.json.tmp").exists());
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    const MANIFEST_FILE_NAME: &str = "manifest.json";

    #[test]
    fn foreign_or_future_manifests_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(MANIFEST_FILE_NAME);
        let mut m = sample();
        m.version = MANIFEST_VERSION + 1;
        fs::write(&path, serde_json::to_string(&m).unwrap()).unwrap();
        let err = read_manifest(&path).unwrap_err();
        assert!(
            matches!(err, RepoError::NewerManifest { version, supported: MANIFEST_VERSION, .. } if version == u64::from(MANIFEST_VERSION) + 1),
            "{err}"
        );
        assert!(err.to_string().contains("upgrade virt-rbd-backup"), "{err}");
        // A newer version may change what a field is: still "newer", never "damaged".
        let mut value = serde_json::to_value(sample()).unwrap();
        value["version"] = 9.into();
        value["disks"] = "moved to disks.json".into();
        value["sequence"] = 40.into();
        fs::write(&path, value.to_string()).unwrap();
        assert!(matches!(
            read_manifest(&path),
            Err(RepoError::NewerManifest { version: 9, .. })
        ));
        let hints = ManifestHints::read(&path).unwrap();
        assert_eq!(
            (hints.ours, hints.version, hints.sequence),
            (true, Some(9), Some(40))
        );
        let mut m = sample();
        m.format = "something".into();
        fs::write(&path, serde_json::to_string(&m).unwrap()).unwrap();
        assert!(read_manifest(&path).is_err());
    }

    #[test]
    fn tampered_disk_file_names_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(MANIFEST_FILE_NAME);
        for bad in ["../../etc/shadow", "/etc/shadow", ".partial", ""] {
            let mut m = sample();
            m.disks[0].file = bad.into();
            fs::write(&path, serde_json::to_string(&m).unwrap()).unwrap();
            assert!(read_manifest(&path).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn truncated_or_garbage_manifests_are_errors_not_panics() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(MANIFEST_FILE_NAME);
        let full = serde_json::to_string(&sample()).unwrap();
        for cut in [0, 1, full.len() / 2, full.len() - 1] {
            fs::write(&path, &full[..cut]).unwrap();
            assert!(read_manifest(&path).is_err());
        }
        fs::write(&path, [0xff, 0xfe, 0x00]).unwrap();
        assert!(read_manifest(&path).is_err());
    }

    /// Fixtures of every manifest version ever written (tests/fixtures/manifest-vN.json): each
    /// must keep reading, with what it did not record read as absent. Add the new one whenever
    /// `MANIFEST_VERSION` grows.
    #[test]
    fn manifests_of_every_version_keep_reading() {
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        let v1 = read_manifest(&fixtures.join("manifest-v1.json")).unwrap();
        assert_eq!((v1.version, v1.sequence), (1, None));
        assert_eq!(v1.parent.as_deref(), Some("20261125T095243.001Z"));
        assert_eq!(v1.disks[0].leaves_file.as_deref(), Some("vda.leaves"));
        assert_eq!(v1.disks[0].format, DiskFormat::RbdDiffV1);
        let current =
            read_manifest(&fixtures.join(format!("manifest-v{MANIFEST_VERSION}.json"))).unwrap();
        assert_eq!((current.version, current.sequence), (2, Some(12)));
        assert_eq!(current.disks, v1.disks);
        // Nothing of a version is lost when this build writes it again.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(MANIFEST_FILE_NAME);
        write_manifest(&path, &current).unwrap();
        assert_eq!(read_manifest(&path).unwrap(), current);
    }

    #[test]
    fn disk_formats_read_the_strings_every_version_wrote_and_round_trip() {
        for (text, format) in [
            ("raw", DiskFormat::SparseRaw),
            ("rbd-diff-v1", DiskFormat::RbdDiffV1),
            ("rbd-diff-v1+zstd", DiskFormat::RbdDiffV1Zstd),
        ] {
            let json = format!("{text:?}");
            assert_eq!(serde_json::from_str::<DiskFormat>(&json).unwrap(), format);
            assert_eq!(serde_json::to_string(&format).unwrap(), json);
            assert_eq!(format.as_str(), text);
        }
        assert!(serde_json::from_str::<DiskFormat>("\"qcow2\"").is_err());
        // A manifest with an unknown format is unusable, not read as some other format.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(MANIFEST_FILE_NAME);
        let mut value = serde_json::to_value(sample()).unwrap();
        value["disks"][0]["format"] = "qcow2".into();
        fs::write(&path, value.to_string()).unwrap();
        assert!(matches!(
            read_manifest(&path),
            Err(RepoError::BadManifest { .. })
        ));
    }

    #[test]
    fn the_stored_format_follows_kind_and_compression() {
        use BackupKind::{Full, Incremental};
        assert_eq!(DiskFormat::for_backup(Full, false), DiskFormat::SparseRaw);
        assert_eq!(
            DiskFormat::for_backup(Incremental, false),
            DiskFormat::RbdDiffV1
        );
        assert_eq!(
            DiskFormat::for_backup(Full, true),
            DiskFormat::RbdDiffV1Zstd
        );
        assert_eq!(
            DiskFormat::for_backup(Incremental, true),
            DiskFormat::RbdDiffV1Zstd
        );
    }

    #[test]
    fn a_current_manifest_without_its_sequence_is_damaged() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(MANIFEST_FILE_NAME);
        let mut m = sample();
        m.sequence = None;
        fs::write(&path, serde_json::to_string(&m).unwrap()).unwrap();
        let err = read_manifest(&path).unwrap_err();
        assert!(matches!(err, RepoError::BadManifest { .. }), "{err}");
    }

    #[test]
    fn a_manifest_that_is_a_link_to_dev_zero_or_a_fifo_or_huge_fails_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let started = std::time::Instant::now();
        let link = dir.path().join("link.json");
        std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
        let fifo = dir.path().join("fifo.json");
        super::super::stored_file::tests::make_fifo(&fifo);
        for path in [&link, &fifo] {
            let err = read_manifest(path).unwrap_err();
            assert!(matches!(err, RepoError::NotARegularFile { .. }), "{err}");
            assert!(ManifestHints::read(path).is_none());
        }
        let huge = dir.path().join("huge.json");
        File::create(&huge)
            .unwrap()
            .set_len(MAX_MANIFEST_BYTES + 1)
            .unwrap();
        let err = read_manifest(&huge).unwrap_err();
        assert!(matches!(err, RepoError::TooLarge { .. }), "{err}");
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
    }
}
