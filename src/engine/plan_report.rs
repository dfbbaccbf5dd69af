//! What a backup would do, without doing it (`plan`, `backup --dry-run`, Ansible check mode):
//! which domains and disks, full or incremental and why, and the bytes it would read. Only
//! reads: no lock, no snapshot, no file, no freeze.

use serde::Serialize;

use crate::ceph::RbdImage;
use crate::error::Error;
use crate::libvirt::{HypervisorConnection, RbdDiskSpec};
use crate::plan::{blocks_to_read, ByteRange, DiskPlan, HASH_BLOCK_SIZE};
use crate::repo::BackupKind;

use super::block_backup::block_base;
use super::repo_access::AnyRepository;

use super::ceph_session::{cluster_address, ConnectionCache};
use super::discovery::{discover_domains, SkippedDisk};
use super::disk_plan::{prepare_disk, readable_backups};
use super::options::{BackupOptions, FreezePolicy};

/// One disk in a plan.
#[derive(Debug, Clone, Serialize)]
pub struct PlannedDisk {
    /// Guest device.
    pub target: String,
    /// `pool/image`.
    pub image: String,
    /// Image size.
    pub size: u64,
    /// Full or incremental.
    pub kind: BackupKind,
    /// Why full when an incremental was possible in principle.
    pub reason: Option<String>,
    /// The backup an incremental would build on.
    pub parent_backup: Option<String>,
    /// Bytes the backup would read (whole 4 MiB blocks; the image may change until then).
    pub estimated_bytes: u64,
}

/// One domain in a plan.
#[derive(Debug, Clone, Serialize)]
pub struct PlannedDomain {
    /// Name.
    pub name: String,
    /// UUID.
    pub uuid: String,
    /// Running now.
    pub active: bool,
    /// Whether its filesystems would be frozen.
    pub would_freeze: bool,
    /// RBD disks.
    pub disks: Vec<PlannedDisk>,
    /// Disks that would be skipped.
    pub skipped_disks: Vec<SkippedDisk>,
    /// Why this domain could not be planned (it would fail the same way).
    pub error: Option<String>,
}

/// A plan.
#[derive(Debug, Clone, Serialize)]
pub struct BackupPlan {
    /// Domains in discovery order.
    pub domains: Vec<PlannedDomain>,
    /// Sum of the estimated bytes.
    pub estimated_bytes: u64,
}

/// Plans a backup with `options` without changing anything.
pub fn plan_backup(options: &BackupOptions) -> Result<BackupPlan, Error> {
    let libvirt = HypervisorConnection::open(&options.connect)?;
    // restic backups are always full: no repository to look for a base in. A repository
    // that cannot be opened (not made yet) has no base either: everything is full.
    let repo = match &options.restic {
        Some(_) => None,
        None => {
            let access = options.repo_access().map_err(Error::Usage)?;
            match super::repo_access::open_repository(
                &options.repo.to_string_lossy(),
                &access,
                false,
            ) {
                Ok(repo) => Some(repo),
                Err(e) => {
                    log::info!("plan: no repository to build on ({e}): every disk would be full");
                    None
                }
            }
        }
    };
    let ceph = ConnectionCache::new(options.ceph_timeouts());
    let mut domains = Vec::new();
    for found in discover_domains(&libvirt, &options.domains)? {
        let mut planned = PlannedDomain {
            name: found.name.clone(),
            uuid: found.uuid.clone(),
            active: found.active,
            would_freeze: found.active && options.freeze != FreezePolicy::Off,
            disks: Vec::new(),
            skipped_disks: Vec::new(),
            error: None,
        };
        match found.disks {
            Ok(disks) => {
                planned.skipped_disks = disks.skipped;
                if disks.rbd.is_empty() {
                    planned.would_freeze = false;
                }
                if let Err(e) = plan_disks(
                    options,
                    &libvirt,
                    repo.as_ref(),
                    &ceph,
                    &found.uuid,
                    &found.name,
                    &disks.rbd,
                    &mut planned.disks,
                ) {
                    planned.error = Some(e.to_string());
                }
            }
            Err(e) => planned.error = Some(e.to_string()),
        }
        domains.push(planned);
    }
    let estimated_bytes = domains
        .iter()
        .flat_map(|d| &d.disks)
        .map(|d| d.estimated_bytes)
        .sum();
    Ok(BackupPlan {
        domains,
        estimated_bytes,
    })
}

#[allow(clippy::too_many_arguments)]
fn plan_disks(
    options: &BackupOptions,
    libvirt: &HypervisorConnection,
    repo: Option<&AnyRepository>,
    ceph: &ConnectionCache,
    uuid: &str,
    name: &str,
    disks: &[RbdDiskSpec],
    out: &mut Vec<PlannedDisk>,
) -> Result<(), Error> {
    let backups = match repo {
        Some(AnyRepository::Folder(repo)) => readable_backups(repo, uuid)?.0,
        _ => Vec::new(),
    };
    // A block repository: the newest backup is the base of every disk that still matches it.
    let block_parent = match repo {
        Some(AnyRepository::Blocks(repo)) => repo.readable_backups(uuid)?.0.pop(),
        _ => None,
    };
    for disk in disks {
        let key = match &disk.auth {
            Some(auth) => Some(libvirt.ceph_key(
                name,
                &auth.username,
                auth.secret_uuid.as_deref(),
                auth.secret_usage.as_deref(),
            )?),
            None => None,
        };
        let cluster = ceph.get(&cluster_address(disk), key.as_ref())?;
        let pool = cluster.open_pool(&disk.pool, disk.namespace.as_deref())?;
        let image = RbdImage::open_read_only(&pool, &disk.image)?;
        let info = image.info()?;
        let plan = match repo {
            Some(AnyRepository::Blocks(_)) => {
                let has_snapshot = |name: &str| image.snapshot_id(name).is_ok();
                let parent = block_parent.as_ref();
                match block_base(
                    options.mode,
                    parent,
                    &disk.target,
                    &info.id,
                    info.size,
                    has_snapshot,
                ) {
                    Ok(record) => DiskPlan::Incremental {
                        parent_backup: parent.map(|p| p.backup_id.clone()).unwrap_or_default(),
                        base_snapshot: record.snapshot.name.clone(),
                        base_snapshot_id: record.snapshot.id,
                        chain_position: 1,
                    },
                    Err(reason) => DiskPlan::Full { reason },
                }
            }
            _ => prepare_disk(options, &image, disk, &backups)?.plan,
        };
        let (kind, reason, parent_backup, base) = match plan {
            DiskPlan::Full { reason } => (BackupKind::Full, reason, None, None),
            DiskPlan::Incremental {
                parent_backup,
                base_snapshot,
                ..
            } => (
                BackupKind::Incremental,
                None,
                Some(parent_backup),
                Some(base_snapshot),
            ),
        };
        let extents = image.diff_extents(base.as_deref(), info.size, info.fast_diff_usable())?;
        let ranges: Vec<ByteRange> = extents
            .iter()
            .filter(|e| e.exists || base.is_some())
            .map(|e| ByteRange {
                offset: e.offset,
                length: e.length,
            })
            .collect();
        let estimated_bytes = blocks_to_read(&ranges, info.size, HASH_BLOCK_SIZE)
            .iter()
            .map(|&b| (info.size - b * HASH_BLOCK_SIZE).min(HASH_BLOCK_SIZE))
            .sum();
        out.push(PlannedDisk {
            target: disk.target.clone(),
            image: image.spec().to_string(),
            size: info.size,
            kind,
            reason,
            parent_backup,
            estimated_bytes,
        });
    }
    Ok(())
}
