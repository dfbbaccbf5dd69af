//! Restoring a disk from a backup chain into a file or an RBD image.
//!
//! The full backup at the start of the chain is copied block by block (each block checked
//! against its hash as it is read; holes stay holes), then each incremental's rbd diff is
//! checked against its checksum and replayed. The result is then compared, block by block,
//! with the block table of the chosen backup: a restore either reproduces that exact content
//! or fails, never "succeeds" with other data. It is written under a temporary name and
//! renamed into place only then.
//!
//! # The check of the result
//!
//! By default the hash of each block is worked out from the bytes handed to the target as they
//! are written (`plan::WrittenContent`): blocks of the full backup written once, in order, are
//! hashed on the way, blocks never written are zeros on a new target, and only the blocks an
//! incremental wrote over (or a resize cut) are read back from the target. With `read_back`
//! every block is read back from the target instead, which also catches storage that
//! acknowledged a write and kept other bytes (README, "Safety": what each one proves).
//!
//! Everything is written through `block_io::ExtentSink` (the file target here, an RBD image
//! through `block_io::RbdSink`, which keeps several writes in flight): `write_data`,
//! `replay_diff` and `check_restored` are the replay, tested with `block_io::MemorySink`. A target that is refused is a `TargetError`.
//!
//! # What a target may replace
//!
//! - A file target is written as `NAME.virt-rbd-backup-restoring` beside it (created with
//!   `O_EXCL`: a leftover of a killed restore is named in the error, never removed or reused)
//!   and renamed onto the name with `renameat2(RENAME_NOREPLACE)` (`link` + `unlink` where the
//!   filesystem lacks it): without `--force`, a file that appeared at the name during the
//!   restore stays, and the restore fails. With `--force` a regular file is replaced; a block
//!   device (also through a symlink, as `/dev/disk/by-id/...` are) is opened with `O_EXCL`
//!   (refused while mounted or held) and written in place: the node is never replaced by a
//!   regular file, the range the image covers is zeroed first where the image has holes, and
//!   it is read back from the device, not the page cache, for the check. Anything else at the
//!   name (a directory, a FIFO) is never replaced.
//! - An RBD target is written as `IMAGE.virt-rbd-backup-restoring` (created exclusively,
//!   likewise) and renamed onto the name; `rbd_rename` fails with `EEXIST` on an existing name,
//!   so without `--force` an image that appeared during the restore is never touched. With
//!   `--force` the old image is renamed to `IMAGE.virt-rbd-backup-replaced` first, the new one
//!   onto the name, and only then is the old one removed (kept, with a warning, when it cannot
//!   be: snapshots, a guest still using it). RBD has no atomic exchange, so between the two
//!   renames (one OSD round trip) the name resolves to nothing; it never names a partial image,
//!   and the old data exists until the new is in place.
//! - `restore_define` keeps the replaced images until the new domain is defined; when a disk,
//!   the checks or the definition fail, it removes the images it made (each only if the name
//!   still has the id it made) and renames the replaced ones back.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::ceph::{PoolContext, RadosCluster, RbdImage};
use crate::error::Error;
use crate::libvirt::HypervisorConnection;
use crate::plan::{checksum_of_table, StreamHasher, WrittenContent, HASH_BLOCK_SIZE};
use crate::repo::chain::{open_diff_link, verify_stored_file, ChainLink, RawBlockReader};
use crate::repo::file_hashes::{hash_file_blocks, Holes};
use crate::repo::image_file::nonzero_runs;
use crate::repo::manifest::sync_dir;
use crate::repo::rbd_diff::{DiffRecord, RbdDiffReader};
use crate::repo::{RepoError, Repository};

use super::block_io::{ExtentSink, RbdSink};
use super::ceph_access::{connect, CephAccess};
use super::restic::{choose_restic_snapshot, list_restic, unsealed, ResticTarget};
use super::CancelToken;

/// Why a restore target was refused or left alone: nothing of it was replaced. Each names
/// the target (a path, or `image POOL/IMAGE`) and says what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    /// `--to ""`.
    #[error("the restore target is empty")]
    Empty,
    /// An `rbd:` target that is not `rbd:POOL/IMAGE` or `rbd:POOL/NAMESPACE/IMAGE`.
    #[error("bad RBD target {text:?}: expected rbd:POOL/IMAGE or rbd:POOL/NAMESPACE/IMAGE")]
    BadRbdSpec {
        /// The target as given.
        text: String,
    },
    /// The target exists and `--force` was not given.
    #[error("{target} exists{note}; use --force to replace it")]
    Exists {
        /// The path, or `image POOL/IMAGE`.
        target: String,
        /// What it is, where that matters (" (a symbolic link to nothing)").
        note: &'static str,
    },
    /// The image an earlier `--force` restore replaced is still aside under its name.
    #[error("{leftover} exists: an earlier --force restore into {target} could not remove the image it replaced; remove or rename it first")]
    ReplacedImageLeft {
        /// `image POOL/IMAGE.virt-rbd-backup-replaced`.
        leftover: String,
        /// The target image.
        target: String,
    },
    /// The temporary name of a restore into the target is taken: another restore runs, or a
    /// killed one left it (it is never removed or reused).
    #[error("{leftover} exists: another restore into {target} is running, or one was killed; remove it{how} if none runs")]
    RestoreInProgress {
        /// The temporary file or image.
        leftover: String,
        /// The target.
        target: String,
        /// How to remove it (" with `rbd rm`"), or "".
        how: &'static str,
    },
    /// Something was created under the target's name during the restore (without `--force`).
    #[error("{target} appeared during the restore (created by someone else); it was not replaced, and the restored copy was discarded")]
    Appeared {
        /// The path, or `image POOL/IMAGE`.
        target: String,
    },
    /// A block device target without `--force`.
    #[error("{} is a block device; use --force to write the restore into it (what it holds is overwritten)", path.display())]
    BlockDeviceNeedsForce {
        /// The device (as given; may be a link to it).
        path: PathBuf,
    },
    /// A directory, FIFO or socket at the target's name: never replaced, even with `--force`.
    #[error("{} is neither a regular file nor a block device; it is not replaced", path.display())]
    NotReplaceable {
        /// The target.
        path: PathBuf,
    },
    /// A target path with no file name (`/`, `..`).
    #[error("{} names no file", path.display())]
    NamesNoFile {
        /// The target.
        path: PathBuf,
    },
    /// The block device is mounted or held (`EBUSY` on an exclusive open).
    #[error("{} is in use (mounted, or held by another program); it was not written", path.display())]
    DeviceInUse {
        /// The device.
        path: PathBuf,
    },
    /// The name stopped being a block device between the check and the open.
    #[error("{} stopped being a block device while the restore opened it; nothing was written", path.display())]
    StoppedBeingADevice {
        /// The target.
        path: PathBuf,
    },
    /// With `--force`, the target turned into something other than a regular file meanwhile.
    #[error("{} changed into something that is not a regular file during the restore; it was not replaced, and the restored copy was discarded", path.display())]
    ChangedDuringRestore {
        /// The target.
        path: PathBuf,
    },
    /// The block device is smaller than the image.
    #[error("block device {} holds {capacity} bytes, the image {size}: it is too small", path.display())]
    DeviceTooSmall {
        /// The device.
        path: PathBuf,
        /// Its size.
        capacity: u64,
        /// The image's size.
        size: u64,
    },
    /// A restore from restic into RBD without `--ceph-conf`: restic keeps no domain XML to
    /// find the cluster with.
    #[error("invalid option: restoring from restic into RBD needs --ceph-conf (restic keeps no domain XML)")]
    ResticNeedsCephConf,
}

/// Where a restore goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RestoreTarget {
    /// A sparse raw image file.
    File { path: PathBuf },
    /// An RBD image.
    Rbd {
        pool: String,
        namespace: Option<String>,
        image: String,
    },
}

impl std::str::FromStr for RestoreTarget {
    type Err = TargetError;
    /// `rbd:POOL/IMAGE`, `rbd:POOL/NAMESPACE/IMAGE`, or a file path.
    fn from_str(s: &str) -> Result<Self, TargetError> {
        let bad = || TargetError::BadRbdSpec {
            text: s.to_string(),
        };
        let Some(spec) = s.strip_prefix("rbd:") else {
            if s.is_empty() {
                return Err(TargetError::Empty);
            }
            return Ok(RestoreTarget::File {
                path: PathBuf::from(s),
            });
        };
        let parts: Vec<&str> = spec.split('/').collect();
        if parts.iter().any(|p| p.is_empty()) {
            return Err(bad());
        }
        match parts.as_slice() {
            [pool, image] => Ok(RestoreTarget::Rbd {
                pool: pool.to_string(),
                namespace: None,
                image: image.to_string(),
            }),
            [pool, ns, image] => Ok(RestoreTarget::Rbd {
                pool: pool.to_string(),
                namespace: Some(ns.to_string()),
                image: image.to_string(),
            }),
            _ => Err(bad()),
        }
    }
}

/// What to restore.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreOptions {
    /// Backup repository.
    pub repo: PathBuf,
    /// Domain name or UUID.
    pub domain: String,
    /// Disk target (vda); may be left out when the backup has one disk.
    #[serde(default)]
    pub disk: Option<String>,
    /// Backup id, or `None`/`"latest"`.
    #[serde(default)]
    pub backup: Option<String>,
    /// Where to.
    pub to: RestoreTarget,
    /// Overwrite an existing target.
    #[serde(default)]
    pub force: bool,
    /// For RBD targets: how to reach the cluster (a ceph.conf, or the saved XML and libvirt).
    #[serde(default)]
    pub ceph: CephAccess,
    /// Restore from this restic repository instead of the repository folder; `backup` is then
    /// a restic snapshot id (or `latest`).
    #[serde(default)]
    pub restic: Option<ResticTarget>,
    /// How to open `repo` when it is a block repository (S3, key file).
    #[serde(default)]
    pub access: super::repo_access::RepoAccess,
    /// Check the result by reading every block back from the target, instead of hashing what
    /// is written and reading back only the blocks incrementals wrote over (module doc).
    #[serde(default)]
    pub read_back: bool,
}

/// The outcome of a restore.
#[derive(Debug, Clone, Serialize)]
pub struct RestoreReport {
    /// Domain name at backup time.
    pub domain: String,
    /// The backup restored.
    pub backup_id: String,
    /// The disk.
    pub disk: String,
    /// The backups replayed, full first.
    pub chain: Vec<String>,
    /// Where it went (`rbd:pool/image` or a path).
    pub target: String,
    /// Image size.
    pub size: u64,
    /// Bytes of data written.
    pub bytes_written: u64,
    /// The content checksum, verified on the result.
    pub checksum: String,
    /// Seconds.
    pub seconds: f64,
    /// What went wrong after the restore was in place (an old image that could not be removed).
    pub warnings: Vec<String>,
    /// Newer backups `latest` passed over, and why (restic: snapshots without a seal).
    pub skipped: Vec<String>,
}

/// Restores one disk.
pub fn restore(options: &RestoreOptions, cancel: &CancelToken) -> Result<RestoreReport, Error> {
    let (mut report, placed) = match &options.restic {
        Some(restic) => restore_from_restic(options, restic, cancel)?,
        None => {
            let location = options.repo.to_string_lossy();
            match super::repo_access::open_repository(&location, &options.access, false)? {
                super::repo_access::AnyRepository::Folder(_) => restore_disk(options, cancel)?,
                super::repo_access::AnyRepository::Blocks(repo) => {
                    super::block_restore::restore_disk(options, &repo, cancel)?
                }
            }
        }
    };
    if let Some(placed) = placed {
        report.warnings.extend(placed.finish());
    }
    Ok(report)
}

/// The disk a command works on: `disk`, or the backup's only disk (`DiskNotChosen` when it
/// has several and none was named).
pub(super) fn chosen_disk(
    disk: Option<&str>,
    targets: Vec<String>,
    backup_id: &str,
    domain: &str,
) -> Result<String, Error> {
    match (disk, targets.as_slice()) {
        (Some(d), _) => Ok(d.to_string()),
        (None, [only]) => Ok(only.clone()),
        (None, _) => Err(Error::DiskNotChosen {
            backup_id: backup_id.to_string(),
            domain: domain.to_string(),
            disks: targets,
        }),
    }
}

/// Restores one disk from the repository; an RBD target is placed but the image it replaced,
/// if any, is still aside (`PlacedImage`).
fn restore_disk(
    options: &RestoreOptions,
    cancel: &CancelToken,
) -> Result<(RestoreReport, Option<PlacedImage>), Error> {
    let started = Instant::now();
    let repo = Repository::open(&options.repo)?;
    let uuid = repo
        .resolve_domain(&options.domain)
        .map_err(Error::NotInRepository)?;
    let (folder, manifest) = repo.find_backup(&uuid, options.backup.as_deref())?;
    let target = chosen_disk(
        options.disk.as_deref(),
        manifest.disks.iter().map(|d| d.target.clone()).collect(),
        &manifest.backup_id,
        &manifest.domain.name,
    )?;
    let chain = repo.disk_chain(&uuid, &folder, &manifest, &target)?;
    let last = chain
        .last()
        .expect("a chain holds at least the chosen backup")
        .clone();
    let expected = last.block_table()?;

    let (target_text, bytes_written, placed) = restore_into(
        options,
        last.disk.size,
        || {
            options
                .ceph
                .connect_for_disk(&manifest.domain.xml, &manifest.domain.name, &target)
        },
        |sink| replay(&chain, sink, &expected, options.read_back, cancel),
    )?;
    let report = RestoreReport {
        domain: manifest.domain.name.clone(),
        backup_id: manifest.backup_id.clone(),
        disk: target,
        chain: chain.iter().map(|l| l.backup_id.clone()).collect(),
        target: target_text,
        size: last.disk.size,
        bytes_written,
        checksum: last.disk.checksum.clone(),
        seconds: started.elapsed().as_secs_f64(),
        warnings: Vec::new(),
        skipped: Vec::new(),
    };
    Ok((report, placed))
}

/// Restores a disk from a restic snapshot made by this tool (`restic dump` streamed into the
/// target, zeros left as holes). Only a sealed snapshot is restored (see the `restic` module):
/// `latest` passes over incomplete ones (the report names them), one asked for by id is
/// refused. What restic returns is checked against the seal's size and content checksum as it
/// streams, and the result read back and checked again, before it is renamed into place.
fn restore_from_restic(
    options: &RestoreOptions,
    restic: &ResticTarget,
    cancel: &CancelToken,
) -> Result<(RestoreReport, Option<PlacedImage>), Error> {
    let started = Instant::now();
    let candidates = list_restic(restic, Some(&options.domain))?;
    let (chosen, skipped) = choose_restic_snapshot(
        candidates,
        &options.domain,
        options.disk.as_deref(),
        options.backup.as_deref(),
    )?;
    let (Some(size), Some(checksum)) = (chosen.size, chosen.checksum.clone()) else {
        return Err(unsealed(&chosen));
    };
    let untrusted = |reason: String| Error::ResticUntrusted {
        snapshot: chosen.id.clone(),
        reason,
    };
    let (target_text, bytes_written, placed) = restore_into(
        options,
        size,
        || match options.ceph.from_conf() {
            Some(address) => connect(&address, None),
            None => Err(TargetError::ResticNeedsCephConf.into()),
        },
        |sink| {
            let mut child = restic.start_dump(&chosen.id, &chosen.file)?;
            let mut stdout = child
                .stdout
                .take()
                .ok_or_else(|| Error::Restic("restic dump gave no output".into()))?;
            let mut buf = vec![0u8; HASH_BLOCK_SIZE as usize];
            let mut offset = 0u64;
            let mut written = 0u64;
            let mut hasher = StreamHasher::new();
            loop {
                if cancel.is_cancelled() {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(Error::Cancelled);
                }
                let mut filled = 0;
                while filled < buf.len() {
                    let n = stdout
                        .read(&mut buf[filled..])
                        .map_err(|e| Error::Restic(format!("reading restic dump: {e}")))?;
                    if n == 0 {
                        break;
                    }
                    filled += n;
                }
                if filled == 0 {
                    break;
                }
                // More than the seal records: stop before writing past the image's end.
                if offset + filled as u64 > size {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(untrusted(format!(
                        "restic dump returned more than the {size} bytes its seal records"
                    )));
                }
                hasher.update(&buf[..filled]);
                written += write_data(sink, offset, &buf[..filled])?;
                offset += filled as u64;
            }
            let status = child
                .wait()
                .map_err(|e| Error::Restic(format!("waiting for restic dump: {e}")))?;
            if !status.success() {
                let mut stderr = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = e.read_to_string(&mut stderr);
                }
                return Err(Error::Restic(format!(
                    "restic dump {} failed ({status}): {}",
                    chosen.id,
                    stderr.trim()
                )));
            }
            if offset != size {
                return Err(untrusted(format!(
                    "restic dump returned {offset} bytes, its seal records {size}"
                )));
            }
            let (returned, _) = hasher.finish();
            if returned != checksum {
                return Err(untrusted(format!(
                    "what restic dump returned has the checksum {returned}, its seal records {checksum}"
                )));
            }
            // The target holds what restic returned (an RBD write is not trusted blindly).
            let landed = checksum_of_table(&sink.read_back_hashes(size)?);
            if landed != checksum {
                return Err(untrusted(format!(
                    "restic returned the sealed content, but the target reads back as {landed}; the target's storage lost writes"
                )));
            }
            Ok(written)
        },
    )?;
    let report = RestoreReport {
        domain: chosen.domain.clone(),
        backup_id: chosen.id.clone(),
        disk: chosen.disk.clone(),
        chain: vec![chosen.id.clone()],
        target: target_text,
        size,
        bytes_written,
        checksum,
        seconds: started.elapsed().as_secs_f64(),
        warnings: Vec::new(),
        skipped: skipped
            .iter()
            .map(|s| {
                format!(
                    "restic snapshot {} of {} is incomplete (no seal)",
                    s.id, s.time
                )
            })
            .collect(),
    };
    Ok((report, placed))
}

/// Writes a restore into `options.to` (under a temporary name, or into a block device in
/// place), with `fill` doing the writing, and puts it under the target's name only when `fill`
/// succeeded (module doc: what may be replaced). Returns the target's text, what `fill`
/// returned and, for an RBD target, where the image went.
pub(super) fn restore_into(
    options: &RestoreOptions,
    size: u64,
    cluster: impl FnOnce() -> Result<RadosCluster, Error>,
    fill: impl FnOnce(&mut dyn ExtentSink) -> Result<u64, Error>,
) -> Result<(String, u64, Option<PlacedImage>), Error> {
    match &options.to {
        RestoreTarget::File { path } => {
            let mut sink = FileSink::create(path, options.force)?;
            sink.resize(size)?;
            let written = fill(&mut sink)?;
            super::thaw_guard::test_pause("restored");
            sink.commit()?;
            Ok((path.display().to_string(), written, None))
        }
        RestoreTarget::Rbd {
            pool,
            namespace,
            image,
        } => {
            let cluster = cluster()?;
            let (spec, written, id, aside) = {
                let ctx = cluster.open_pool(pool, namespace.as_deref())?;
                let (written, id, aside) = restore_image(&ctx, image, size, options.force, fill)?;
                (ctx.image_spec(image), written, id, aside)
            };
            Ok((
                format!("rbd:{spec}"),
                written,
                Some(PlacedImage {
                    cluster,
                    pool: pool.clone(),
                    namespace: namespace.clone(),
                    image: image.clone(),
                    id,
                    aside,
                }),
            ))
        }
    }
}

/// The temporary name an RBD restore is written under.
fn restoring_name(image: &str) -> String {
    format!("{image}.virt-rbd-backup-restoring")
}

/// The name an image replaced with `--force` has until the new one is in place.
fn replaced_name(image: &str) -> String {
    format!("{image}.virt-rbd-backup-replaced")
}

/// Writes the restore into a new image beside `image` and places it (`place_image`). Returns
/// what `fill` returned, the new image's id and the name of the image it replaced, if any.
fn restore_image(
    ctx: &PoolContext<'_>,
    image: &str,
    size: u64,
    force: bool,
    fill: impl FnOnce(&mut dyn ExtentSink) -> Result<u64, Error>,
) -> Result<(u64, String, Option<String>), Error> {
    let spec = ctx.image_spec(image);
    let tmp = restoring_name(image);
    if ctx.image_exists(image)? {
        if !force {
            return Err(TargetError::Exists {
                target: format!("image {spec}"),
                note: "",
            }
            .into());
        }
        if ctx.image_exists(&replaced_name(image))? {
            return Err(TargetError::ReplacedImageLeft {
                leftover: format!("image {}", ctx.image_spec(&replaced_name(image))),
                target: spec,
            }
            .into());
        }
    }
    // Created exclusively: another restore's image is never removed or written into.
    match ctx.create_image(&tmp, size) {
        Err(e) if e.errno() == Some(-libc::EEXIST) => {
            return Err(TargetError::RestoreInProgress {
                leftover: format!("image {}", ctx.image_spec(&tmp)),
                target: spec,
                how: " with `rbd rm`",
            }
            .into())
        }
        other => other?,
    }
    let filled = (|| {
        let handle = RbdImage::open(ctx, &tmp)?;
        let written = {
            let mut sink = RbdSink::new(&handle);
            let written = fill(&mut sink)?;
            sink.finish()?;
            written
        };
        Ok::<_, Error>((written, handle.info()?.id))
    })();
    let placed = filled.and_then(|(written, id)| {
        super::thaw_guard::test_pause("restored");
        let aside = place_image(ctx, &tmp, image, force)?;
        Ok((written, id, aside))
    });
    if placed.is_err() {
        match ctx.remove_image(&tmp) {
            Ok(()) => {}
            Err(e) if e.errno() == Some(-libc::ENOENT) => {}
            Err(cleanup) => log::error!(
                "could not remove the partial restore {}: {cleanup}",
                ctx.image_spec(&tmp)
            ),
        }
    }
    placed
}

/// Renames the restored image `tmp` onto `image`. Without `force` only if no image has that
/// name (`rbd_rename` refuses an existing name). With `force` an image there is renamed aside
/// first and its new name returned; it is renamed back if the new one cannot be placed.
fn place_image(
    ctx: &PoolContext<'_>,
    tmp: &str,
    image: &str,
    force: bool,
) -> Result<Option<String>, Error> {
    let spec = ctx.image_spec(image);
    let appeared = || -> Error {
        TargetError::Appeared {
            target: format!("image {spec}"),
        }
        .into()
    };
    if !force {
        return match ctx.rename_image(tmp, image) {
            Ok(()) => Ok(None),
            Err(e) if e.errno() == Some(-libc::EEXIST) => Err(appeared()),
            Err(e) => Err(e.into()),
        };
    }
    let aside = replaced_name(image);
    let set_aside = match ctx.rename_image(image, &aside) {
        Ok(()) => true,
        // Removed meanwhile: nothing to keep.
        Err(e) if e.errno() == Some(-libc::ENOENT) => false,
        Err(e) => return Err(e.into()),
    };
    let emptied = Instant::now();
    super::thaw_guard::test_pause("replacing");
    match ctx.rename_image(tmp, image) {
        Ok(()) => {
            log::debug!(
                "{spec} named no image for {:?} between the two renames",
                emptied.elapsed()
            );
            Ok(set_aside.then_some(aside))
        }
        Err(e) => {
            if set_aside {
                if let Err(back) = ctx.rename_image(&aside, image) {
                    log::error!(
                        "could not rename {} back to {spec} ({back}); the old image is there",
                        ctx.image_spec(&aside)
                    );
                }
            }
            if e.errno() == Some(-libc::EEXIST) {
                Err(appeared())
            } else {
                Err(e.into())
            }
        }
    }
}

/// An RBD image a restore put under its name, and the image it replaced, kept aside until
/// `finish` removes it or `undo` puts it back.
pub(super) struct PlacedImage {
    cluster: RadosCluster,
    pool: String,
    namespace: Option<String>,
    image: String,
    /// The restored image's id: `undo` removes what has the name only if it is this image.
    id: String,
    /// The replaced image's name while it is aside.
    aside: Option<String>,
}

impl PlacedImage {
    /// Removes the replaced image. A failure is a warning: the restore is in place and the old
    /// image stays aside, nothing is lost.
    fn finish(self) -> Vec<String> {
        let Some(aside) = &self.aside else {
            return Vec::new();
        };
        let removed = self
            .cluster
            .open_pool(&self.pool, self.namespace.as_deref())
            .and_then(|ctx| ctx.remove_image(aside));
        match removed {
            Ok(()) => Vec::new(),
            Err(e) => {
                let message = format!(
                    "the restore is in place, but the image it replaced was kept as {aside} ({e}); remove it with `rbd rm` once nothing uses it"
                );
                log::warn!("{message}");
                vec![message]
            }
        }
    }

    /// Removes the restored image, if the name still has it, and renames the replaced one
    /// back. Failures are logged: they leave an image too many, never one too few.
    fn undo(self) {
        let ctx = match self
            .cluster
            .open_pool(&self.pool, self.namespace.as_deref())
        {
            Ok(ctx) => ctx,
            Err(e) => {
                log::error!(
                    "could not remove the restored image {}/{}: {e}",
                    self.pool,
                    self.image
                );
                return;
            }
        };
        let spec = ctx.image_spec(&self.image);
        match ctx.image_id(&self.image) {
            Ok(Some(id)) if id == self.id => {
                if let Err(e) = ctx.remove_image(&self.image) {
                    log::error!("could not remove the restored image {spec}: {e}");
                }
            }
            Ok(_) => log::warn!("{spec} is not the image this restore made any more; left alone"),
            Err(e) => log::error!("could not look up the restored image {spec}: {e}"),
        }
        if let Some(aside) = &self.aside {
            if let Err(e) = ctx.rename_image(aside, &self.image) {
                log::error!(
                    "could not rename {} back to {spec}: {e}; the old image is there",
                    ctx.image_spec(aside)
                );
            }
        }
    }
}

/// Replays `chain` into `sink` and checks the result against `expected` (`check_restored`:
/// with `read_back` every block is read back). Returns data bytes written.
fn replay(
    chain: &[ChainLink],
    sink: &mut dyn ExtentSink,
    expected: &[[u8; 32]],
    read_back: bool,
    cancel: &CancelToken,
) -> Result<u64, Error> {
    let mut followed = FollowedSink::new(sink);
    let sink = &mut followed;
    let mut written = 0u64;
    let mut copied_raw: Vec<&ChainLink> = Vec::new();
    for link in chain {
        if cancel.is_cancelled() {
            return Err(Error::Cancelled);
        }
        match link.disk.format {
            crate::repo::DiskFormat::SparseRaw => {
                let mut reader = RawBlockReader::open(link)?;
                sink.resize(reader.size())?;
                if let Some(copied) = copy_raw(&reader, sink, cancel)? {
                    written += copied;
                    copied_raw.push(link);
                    continue;
                }
                let mut buf = sink.spare_buffer();
                while let Some((offset, checked)) = reader.next_block(&mut buf)? {
                    if let Some(hash) = checked {
                        written += sink.write_checked_block(offset, &mut buf, hash)?;
                    }
                    if cancel.is_cancelled() {
                        return Err(Error::Cancelled);
                    }
                }
            }
            crate::repo::DiskFormat::RbdDiffV1 | crate::repo::DiskFormat::RbdDiffV1Zstd => {
                verify_stored_file(link)?;
                written += replay_diff(&mut open_diff_link(link)?, sink, cancel)?;
            }
        }
    }
    let size = chain.last().map_or(0, |l| l.disk.size);
    let path = chain.last().map(|l| l.data_path()).unwrap_or_default();
    let (sink, written_content) = followed.into_parts();
    if let Err(mismatch) = check_restored(sink, written_content, read_back, size, expected, &path) {
        // A raw file copied unseen may be what is damaged: name it and its block if so.
        for link in copied_raw {
            RawBlockReader::open(link)?.check_all()?;
        }
        return Err(mismatch);
    }
    Ok(written)
}

/// Copies the data extents of a full backup's raw file into `sink` inside the kernel, where
/// the sink can (a file); `None` when it cannot (nothing copied), and the caller reads,
/// checks and writes block by block. The copied bytes are never in this process: their blocks
/// are read back from the target and checked against the block table at the end
/// (`check_restored`), which also finds a damaged block of the raw file. Returns the bytes
/// copied.
fn copy_raw(
    reader: &RawBlockReader,
    sink: &mut dyn ExtentSink,
    cancel: &CancelToken,
) -> Result<Option<u64>, Error> {
    let mut copied = 0u64;
    for (offset, length) in reader.data_extents()? {
        if !sink.copy_from(reader.file(), offset, offset, length)? {
            if copied == 0 {
                return Ok(None);
            }
            // Part of the image is copied already: no fallback mixes in now.
            return Err(RepoError::Io {
                action: "copy",
                path: reader.path().to_path_buf(),
                source: std::io::Error::other(format!(
                    "the target stopped accepting copies after {copied} bytes"
                )),
            }
            .into());
        }
        copied += length;
        if cancel.is_cancelled() {
            return Err(Error::Cancelled);
        }
    }
    Ok(Some(copied))
}

/// Writes the non-zero 4 KiB runs of `data` at `offset`; its zero runs are left alone (holes
/// of a new image). Returns the bytes written.
fn write_data(sink: &mut dyn ExtentSink, offset: u64, data: &[u8]) -> Result<u64, Error> {
    let mut written = 0;
    for (start, end) in nonzero_runs(data, 4096) {
        sink.write_at(offset + start as u64, &data[start..end])?;
        written += (end - start) as u64;
    }
    Ok(written)
}

/// Applies an rbd diff to `sink`: resized to the diff's image size, data records written
/// (their zero runs zeroed, as they replace older data), zero records zeroed. Returns the data
/// bytes written.
fn replay_diff<R: Read>(
    reader: &mut RbdDiffReader<R>,
    sink: &mut dyn ExtentSink,
    cancel: &CancelToken,
) -> Result<u64, Error> {
    sink.resize(reader.image_size())?;
    let mut written = 0u64;
    while let Some(record) = reader.next_record()? {
        match record {
            DiffRecord::Data { offset, data } => {
                let mut pos = 0;
                for (start, end) in nonzero_runs(&data, 4096) {
                    if start > pos {
                        sink.zero(offset + pos as u64, (start - pos) as u64)?;
                    }
                    sink.write_at(offset + start as u64, &data[start..end])?;
                    written += (end - start) as u64;
                    pos = end;
                }
                if pos < data.len() {
                    sink.zero(offset + pos as u64, (data.len() - pos) as u64)?;
                }
            }
            DiffRecord::Zero { offset, length } => sink.zero(offset, length)?,
        }
        if cancel.is_cancelled() {
            return Err(Error::Cancelled);
        }
    }
    Ok(written)
}

/// Compares what `sink` holds (an image of `size` bytes), block by block, with `expected`
/// (the backup's block table); the first block that differs fails the restore, naming `path`
/// (the chain's last file, or the block repository's disk) and the offset.
///
/// Every restore layout checks this way (module doc, "The check of the result"): a block's hash
/// comes from `written` (what was handed to the target, followed by `FollowedSink`) where that
/// says what the target holds; the other blocks are read back from the target. With
/// `read_back`, every block is read back.
pub(super) fn check_restored(
    sink: &mut dyn ExtentSink,
    written: WrittenContent,
    read_back: bool,
    size: u64,
    expected: &[[u8; 32]],
    path: &Path,
) -> Result<(), Error> {
    // Every write finished before the check (and the test hook that changes the target there).
    sink.read_back_blocks(size, &[])?;
    super::thaw_guard::test_pause("written");
    let blocks = size.div_ceil(HASH_BLOCK_SIZE) as usize;
    let mut known = written.finish();
    if read_back || known.len() != blocks {
        // Asked for, or the writes were followed for another size: nothing is taken as known.
        known = vec![None; blocks];
    }
    let unknown: Vec<u64> = (0..blocks as u64)
        .filter(|&i| known[i as usize].is_none())
        .collect();
    let read = sink.read_back_blocks(size, &unknown)?;
    for (index, hash) in unknown.iter().zip(read) {
        known[*index as usize] = Some(hash);
    }
    log::debug!(
        "restore check: {} of {} blocks read back from the target",
        unknown.len(),
        blocks
    );
    let actual: Vec<[u8; 32]> = known.into_iter().flatten().collect();
    if let Some(offset) = first_difference(expected, &actual) {
        return Err(RepoError::Corrupt {
            path: path.to_path_buf(),
            offset: Some(offset),
            message: "the restored image differs from the backup's checksum there; the restore is incomplete and was discarded".into(),
        }
        .into());
    }
    Ok(())
}

/// The offset of the first block whose hash differs between two block tables (one longer than
/// the other differs at the first block only one has).
pub(super) fn first_difference(expected: &[[u8; 32]], actual: &[[u8; 32]]) -> Option<u64> {
    (0..expected.len().max(actual.len()))
        .find(|&i| expected.get(i) != actual.get(i))
        .map(|index| index as u64 * HASH_BLOCK_SIZE)
}

/// A sink whose writes are followed by `WrittenContent`, so that the check of the result
/// knows the hashes of the blocks it can without reading the target back (`check_restored`).
pub(super) struct FollowedSink<'a> {
    inner: &'a mut dyn ExtentSink,
    content: WrittenContent,
}

impl<'a> FollowedSink<'a> {
    /// Follows the writes into `inner`, a new target that reads as zeros (of size 0 until
    /// resized).
    pub(super) fn new(inner: &'a mut dyn ExtentSink) -> Self {
        FollowedSink {
            inner,
            content: WrittenContent::new(0),
        }
    }

    /// The target and what was written into it, for `check_restored`.
    pub(super) fn into_parts(self) -> (&'a mut dyn ExtentSink, WrittenContent) {
        (self.inner, self.content)
    }

    /// Writes the whole block at `offset` held in `buf`, whose bytes the caller checked
    /// against `hash` (a full backup's block): the check of the result takes that hash
    /// instead of hashing the bytes again (`WrittenContent::write_checked_block`). Only its
    /// non-zero 4 KiB runs are written (holes of a new image); a block without zero runs is
    /// handed over as it is, and `buf` becomes a spare buffer of the target's. Returns the
    /// bytes written.
    pub(super) fn write_checked_block(
        &mut self,
        offset: u64,
        buf: &mut Vec<u8>,
        hash: [u8; 32],
    ) -> Result<u64, Error> {
        if !self
            .content
            .write_checked_block(offset, buf.len() as u64, hash)
        {
            return write_data(self, offset, buf);
        }
        let runs = nonzero_runs(buf, 4096);
        if runs == [(0, buf.len())] {
            let len = buf.len() as u64;
            let data = std::mem::replace(buf, self.inner.spare_buffer());
            self.inner.write_owned(offset, data)?;
            return Ok(len);
        }
        let mut written = 0;
        for (start, end) in runs {
            self.inner
                .write_at(offset + start as u64, &buf[start..end])?;
            written += (end - start) as u64;
        }
        Ok(written)
    }
}

impl ExtentSink for FollowedSink<'_> {
    fn resize(&mut self, size: u64) -> Result<(), Error> {
        self.inner.resize(size)?;
        self.content.resize(size);
        Ok(())
    }

    fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<(), Error> {
        self.content.write(offset, data);
        self.inner.write_at(offset, data)
    }

    fn write_owned(&mut self, offset: u64, data: Vec<u8>) -> Result<(), Error> {
        self.content.write(offset, &data);
        self.inner.write_owned(offset, data)
    }

    fn spare_buffer(&mut self) -> Vec<u8> {
        self.inner.spare_buffer()
    }

    fn zero(&mut self, offset: u64, length: u64) -> Result<(), Error> {
        self.content.zero(offset, length);
        self.inner.zero(offset, length)
    }

    fn read_back_hashes(&mut self, size: u64) -> Result<Vec<[u8; 32]>, Error> {
        self.inner.read_back_hashes(size)
    }

    fn read_back_blocks(&mut self, size: u64, blocks: &[u64]) -> Result<Vec<[u8; 32]>, Error> {
        self.inner.read_back_blocks(size, blocks)
    }

    fn copy_from(
        &mut self,
        from: &File,
        from_offset: u64,
        offset: u64,
        length: u64,
    ) -> Result<bool, Error> {
        let copied = self.inner.copy_from(from, from_offset, offset, length)?;
        if copied {
            self.content.copied(offset, length);
        }
        Ok(copied)
    }
}

/// How a `FileSink` writes.
enum FileMode {
    /// A new sparse file `tmp` beside the target, renamed onto it by `commit`: over a regular
    /// file with `replace` (`--force`), otherwise only while nothing has the name.
    Renamed { tmp: PathBuf, replace: bool },
    /// A block device written in place (`--force`); the node is never replaced. `capacity` is
    /// its size; bytes below `valid_to` are this restore's (written or zeroed), the rest is
    /// whatever the device held.
    Device { capacity: u64, valid_to: u64 },
}

/// A file target: a sparse file renamed into place on `commit`, or a block device.
struct FileSink {
    file: File,
    path: PathBuf,
    mode: FileMode,
    committed: bool,
    /// The kernel refused to copy into this file (another file system): writes only.
    copy_refused: bool,
    /// Bytes written or copied since the kernel was last asked to start writing them out.
    not_yet_written_out: u64,
}

/// Bytes a `FileSink` lets pile up in the page cache before it asks the kernel to start
/// writing them out. The kernel would otherwise wait until 10% of RAM is dirty (or 30 s), so
/// `commit`'s fsync would write the whole image after the copy and its check; started every
/// 64 MiB, the disk writes while the restore copies and hashes, and the fsync waits for the
/// last step only.
const WRITE_OUT_STEP: u64 = 64 << 20;

fn exists_error(path: &Path, note: &'static str) -> Error {
    TargetError::Exists {
        target: path.display().to_string(),
        note,
    }
    .into()
}

impl FileSink {
    fn create(path: &Path, force: bool) -> Result<Self, Error> {
        // Follows symbolic links: /dev/disk/by-id/... and LVM names are links to the node.
        match fs::metadata(path) {
            Ok(meta) if meta.file_type().is_block_device() => {
                if !force {
                    return Err(TargetError::BlockDeviceNeedsForce {
                        path: path.to_path_buf(),
                    }
                    .into());
                }
                return Self::open_device(path);
            }
            Ok(meta) => {
                if !force {
                    return Err(exists_error(path, ""));
                }
                if !meta.is_file() {
                    return Err(TargetError::NotReplaceable {
                        path: path.to_path_buf(),
                    }
                    .into());
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if !force && fs::symlink_metadata(path).is_ok() {
                    return Err(exists_error(path, " (a symbolic link to nothing)"));
                }
            }
            Err(source) => {
                return Err(RepoError::Io {
                    action: "inspect",
                    path: path.to_path_buf(),
                    source,
                }
                .into())
            }
        }
        let mut tmp_name =
            path.file_name()
                .map(|n| n.to_os_string())
                .ok_or_else(|| TargetError::NamesNoFile {
                    path: path.to_path_buf(),
                })?;
        tmp_name.push(".virt-rbd-backup-restoring");
        let tmp = path.with_file_name(tmp_name);
        // Exclusive: a file of the same name belongs to another restore (running, or killed);
        // removing it could make that one rename a file it did not write.
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|source| {
                if source.kind() == std::io::ErrorKind::AlreadyExists {
                    Error::Target(TargetError::RestoreInProgress {
                        leftover: tmp.display().to_string(),
                        target: path.display().to_string(),
                        how: "",
                    })
                } else {
                    RepoError::Io {
                        action: "create",
                        path: tmp.clone(),
                        source,
                    }
                    .into()
                }
            })?;
        Ok(FileSink {
            file,
            path: path.to_path_buf(),
            mode: FileMode::Renamed {
                tmp,
                replace: force,
            },
            committed: false,
            copy_refused: false,
            not_yet_written_out: 0,
        })
    }

    /// Opens block device `path` for writing in place. `O_EXCL` on a block device (without
    /// `O_CREAT`) is Linux's exclusive open: it fails with `EBUSY` while the device is mounted
    /// or held by another exclusive opener (a partition table in use, LVM, md).
    fn open_device(path: &Path) -> Result<Self, Error> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_EXCL)
            .open(path)
            .map_err(|source| {
                if source.raw_os_error() == Some(libc::EBUSY) {
                    Error::Target(TargetError::DeviceInUse {
                        path: path.to_path_buf(),
                    })
                } else {
                    RepoError::Io {
                        action: "open",
                        path: path.to_path_buf(),
                        source,
                    }
                    .into()
                }
            })?;
        let io = |action| {
            let path = path.to_path_buf();
            move |source| {
                Error::from(RepoError::Io {
                    action,
                    path,
                    source,
                })
            }
        };
        // The name may have changed between the check and the open.
        if !file
            .metadata()
            .map_err(io("inspect"))?
            .file_type()
            .is_block_device()
        {
            return Err(TargetError::StoppedBeingADevice {
                path: path.to_path_buf(),
            }
            .into());
        }
        let capacity = file.seek(SeekFrom::End(0)).map_err(io("size"))?;
        Ok(FileSink {
            file,
            path: path.to_path_buf(),
            mode: FileMode::Device {
                capacity,
                valid_to: 0,
            },
            committed: false,
            copy_refused: false,
            not_yet_written_out: 0,
        })
    }

    /// What is being written: the temporary file, or the device.
    fn written(&self) -> &Path {
        match &self.mode {
            FileMode::Renamed { tmp, .. } => tmp,
            FileMode::Device { .. } => &self.path,
        }
    }

    fn io(&self, action: &'static str) -> impl FnOnce(std::io::Error) -> Error + '_ {
        move |source| {
            RepoError::Io {
                action,
                path: self.written().to_path_buf(),
                source,
            }
            .into()
        }
    }

    /// Zeros `length` bytes of the device at `offset`: discarded where the device guarantees
    /// zeros after a discard, zeroed by the kernel otherwise, written as zeros as a last resort
    /// (an unaligned range). The read-back check proves which ever was used.
    fn zero_device(&mut self, offset: u64, length: u64) -> Result<(), Error> {
        if length == 0 {
            return Ok(());
        }
        for mode in [
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
        ] {
            // SAFETY: fallocate on a descriptor we own; no memory is involved.
            let rc = unsafe {
                libc::fallocate(
                    self.file.as_raw_fd(),
                    mode,
                    offset as libc::off_t,
                    length as libc::off_t,
                )
            };
            if rc == 0 {
                return Ok(());
            }
        }
        let zeros = vec![0u8; (1 << 20).min(length) as usize];
        let mut done = 0;
        while done < length {
            let n = (length - done).min(zeros.len() as u64) as usize;
            self.file
                .write_all_at(&zeros[..n], offset + done)
                .map_err(self.io("zero"))?;
            done += n as u64;
        }
        Ok(())
    }

    /// Counts `length` bytes just written, and every `WRITE_OUT_STEP` starts writing out
    /// what is dirty (`sync_file_range` without waiting; `commit` fsyncs). Best effort: an
    /// error here is the fsync's to report.
    fn wrote(&mut self, length: u64) {
        self.not_yet_written_out += length;
        if self.not_yet_written_out >= WRITE_OUT_STEP {
            self.start_write_out();
        }
    }

    /// Asks the kernel to start writing out every dirty page of the file, without waiting.
    fn start_write_out(&mut self) {
        self.not_yet_written_out = 0;
        // SAFETY: sync_file_range on a descriptor we own; no memory is involved.
        unsafe { libc::sync_file_range(self.file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE) };
    }

    fn commit(mut self) -> Result<(), Error> {
        self.file.sync_all().map_err(self.io("fsync"))?;
        let FileMode::Renamed { tmp, replace } = &self.mode else {
            // A device is written in place; nothing to rename.
            self.committed = true;
            return Ok(());
        };
        let renamed = if *replace {
            // --force replaces a regular file (or a symlink); never a node that turned into
            // something else since the check.
            match fs::symlink_metadata(&self.path) {
                Ok(meta) if !(meta.is_file() || meta.file_type().is_symlink()) => {
                    return Err(TargetError::ChangedDuringRestore {
                        path: self.path.clone(),
                    }
                    .into());
                }
                _ => fs::rename(tmp, &self.path),
            }
        } else {
            rename_noreplace(tmp, &self.path)
        };
        renamed.map_err(|source| {
            if source.kind() == std::io::ErrorKind::AlreadyExists {
                Error::Target(TargetError::Appeared {
                    target: self.path.display().to_string(),
                })
            } else {
                RepoError::Io {
                    action: "rename into place",
                    path: self.path.clone(),
                    source,
                }
                .into()
            }
        })?;
        self.committed = true;
        if let Some(parent) = self.path.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_dir(parent)?;
        }
        Ok(())
    }
}

/// Renames `from` to `to` only if nothing has the name `to`, atomically: `EEXIST`
/// (`ErrorKind::AlreadyExists`) otherwise, and `to` is untouched. Filesystems without
/// `RENAME_NOREPLACE` (`EINVAL`) get `link` + `unlink`: `link` refuses an existing name too.
fn rename_noreplace(from: &Path, to: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| {
        std::ffi::CString::new(p.as_os_str().as_bytes())
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))
    };
    let (from_c, to_c) = (c(from)?, c(to)?);
    // SAFETY: two valid NUL-terminated paths relative to the working directory; no memory is
    // kept by the call.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            from_c.as_ptr(),
            libc::AT_FDCWD,
            to_c.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    if !matches!(err.raw_os_error(), Some(libc::EINVAL | libc::ENOSYS)) {
        return Err(err);
    }
    fs::hard_link(from, to)?;
    if let Err(e) = fs::remove_file(from) {
        log::warn!(
            "the restore is in place as {}, but its temporary name {} could not be removed: {e}",
            to.display(),
            from.display()
        );
    }
    Ok(())
}

impl Drop for FileSink {
    fn drop(&mut self) {
        if let FileMode::Renamed { tmp, .. } = &self.mode {
            if !self.committed {
                let _ = fs::remove_file(tmp);
            }
        }
    }
}

impl ExtentSink for FileSink {
    fn resize(&mut self, size: u64) -> Result<(), Error> {
        match self.mode {
            FileMode::Renamed { .. } => self.file.set_len(size).map_err(self.io("resize")),
            FileMode::Device { capacity, valid_to } => {
                if size > capacity {
                    return Err(TargetError::DeviceTooSmall {
                        path: self.path.clone(),
                        capacity,
                        size,
                    }
                    .into());
                }
                // A device is not sparse: the image's holes must read as zeros.
                if size > valid_to {
                    self.zero_device(valid_to, size - valid_to)?;
                }
                self.mode = FileMode::Device {
                    capacity,
                    valid_to: size,
                };
                Ok(())
            }
        }
    }

    fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<(), Error> {
        self.file
            .write_all_at(data, offset)
            .map_err(self.io("write"))?;
        self.wrote(data.len() as u64);
        Ok(())
    }

    fn zero(&mut self, offset: u64, length: u64) -> Result<(), Error> {
        if let FileMode::Device { .. } = self.mode {
            return self.zero_device(offset, length);
        }
        // SAFETY: fallocate on a descriptor we own; no memory is involved.
        let rc = unsafe {
            libc::fallocate(
                self.file.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                offset as libc::off_t,
                length as libc::off_t,
            )
        };
        if rc != 0 {
            return Err(self.io("punch a hole in")(std::io::Error::last_os_error()));
        }
        Ok(())
    }

    fn read_back_hashes(&mut self, size: u64) -> Result<Vec<[u8; 32]>, Error> {
        let all: Vec<u64> = (0..size.div_ceil(HASH_BLOCK_SIZE)).collect();
        self.read_back_blocks(size, &all)
    }

    fn read_back_blocks(&mut self, size: u64, blocks: &[u64]) -> Result<Vec<[u8; 32]>, Error> {
        if blocks.is_empty() {
            return Ok(Vec::new());
        }
        let holes = match self.mode {
            FileMode::Renamed { .. } => {
                // Start writing out the rest now: `commit`'s fsync then waits for less, as the
                // disk works while the blocks are hashed.
                self.start_write_out();
                Holes::Skip
            }
            FileMode::Device { .. } => {
                // Read back what the device holds, not the page cache's copy of our writes:
                // write it out, then drop the cached pages (best effort: pages in use stay
                // cached).
                self.file.sync_all().map_err(self.io("fsync"))?;
                // SAFETY: posix_fadvise on a descriptor we own; no memory is involved.
                unsafe {
                    libc::posix_fadvise(
                        self.file.as_raw_fd(),
                        0,
                        size as libc::off_t,
                        libc::POSIX_FADV_DONTNEED,
                    )
                };
                Holes::Read
            }
        };
        hash_file_blocks(&self.file, size, blocks, holes)
            .map_err(|(_, source)| self.io("read back")(source))
    }

    fn copy_from(
        &mut self,
        from: &File,
        from_offset: u64,
        offset: u64,
        length: u64,
    ) -> Result<bool, Error> {
        if !matches!(self.mode, FileMode::Renamed { .. }) || self.copy_refused {
            return Ok(false);
        }
        let mut done = 0u64;
        while done < length {
            let mut from_at = (from_offset + done) as libc::loff_t;
            let mut to_at = (offset + done) as libc::loff_t;
            // In steps, so that writing out starts while the copy goes on (`wrote`).
            let step = (length - done).min(WRITE_OUT_STEP);
            // SAFETY: copy_file_range between two descriptors we own, with offsets in locals
            // the call updates; no other memory is involved.
            let n = unsafe {
                libc::copy_file_range(
                    from.as_raw_fd(),
                    &mut from_at,
                    self.file.as_raw_fd(),
                    &mut to_at,
                    step as usize,
                    0,
                )
            };
            if n < 0 {
                let error = std::io::Error::last_os_error();
                let unsupported = matches!(
                    error.raw_os_error(),
                    Some(libc::EXDEV | libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP)
                );
                if unsupported && done == 0 {
                    // Another file system, or one that cannot: the caller reads and writes
                    // (and fails the restore if it had copied before: `copy_raw`).
                    self.copy_refused = true;
                    return Ok(false);
                }
                return Err(self.io("copy into")(error));
            }
            if n == 0 {
                return Err(self.io("copy into")(std::io::Error::new(
                    ErrorKind::UnexpectedEof,
                    "the backup's file ended before the copy did",
                )));
            }
            done += n as u64;
            self.wrote(n as u64);
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::ContentHasher;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn restore_targets_parse() {
        assert_eq!(
            "rbd:rbd/web".parse(),
            Ok(RestoreTarget::Rbd {
                pool: "rbd".into(),
                namespace: None,
                image: "web".into()
            })
        );
        assert_eq!(
            "rbd:rbd/ns/web".parse(),
            Ok(RestoreTarget::Rbd {
                pool: "rbd".into(),
                namespace: Some("ns".into()),
                image: "web".into()
            })
        );
        assert_eq!(
            "/tmp/x.raw".parse(),
            Ok(RestoreTarget::File {
                path: "/tmp/x.raw".into()
            })
        );
        assert!("rbd:rbd".parse::<RestoreTarget>().is_err());
        assert!("rbd:/x".parse::<RestoreTarget>().is_err());
        assert!("rbd:a/b/c/d".parse::<RestoreTarget>().is_err());
        assert!("".parse::<RestoreTarget>().is_err());
    }

    #[test]
    fn target_and_restore_errors_say_what_happened_and_what_to_do() {
        let p = || PathBuf::from("/srv/vda.raw");
        let cases: Vec<(Error, &str)> = vec![
            (TargetError::Empty.into(), "the restore target is empty"),
            (
                TargetError::BadRbdSpec { text: "rbd:x".into() }.into(),
                r#"bad RBD target "rbd:x": expected rbd:POOL/IMAGE or rbd:POOL/NAMESPACE/IMAGE"#,
            ),
            (
                TargetError::Exists { target: "image rbd/web".into(), note: "" }.into(),
                "image rbd/web exists; use --force to replace it",
            ),
            (
                TargetError::Exists { target: "/srv/vda.raw".into(), note: " (a symbolic link to nothing)" }.into(),
                "/srv/vda.raw exists (a symbolic link to nothing); use --force to replace it",
            ),
            (
                TargetError::ReplacedImageLeft {
                    leftover: "image rbd/web.virt-rbd-backup-replaced".into(),
                    target: "rbd/web".into(),
                }
                .into(),
                "image rbd/web.virt-rbd-backup-replaced exists: an earlier --force restore into rbd/web could not remove the image it replaced; remove or rename it first",
            ),
            (
                TargetError::RestoreInProgress {
                    leftover: "image rbd/web.virt-rbd-backup-restoring".into(),
                    target: "rbd/web".into(),
                    how: " with `rbd rm`",
                }
                .into(),
                "image rbd/web.virt-rbd-backup-restoring exists: another restore into rbd/web is running, or one was killed; remove it with `rbd rm` if none runs",
            ),
            (
                TargetError::Appeared { target: "image rbd/web".into() }.into(),
                "image rbd/web appeared during the restore (created by someone else); it was not replaced, and the restored copy was discarded",
            ),
            (
                TargetError::BlockDeviceNeedsForce { path: "/dev/sdx".into() }.into(),
                "/dev/sdx is a block device; use --force to write the restore into it (what it holds is overwritten)",
            ),
            (
                TargetError::NotReplaceable { path: p() }.into(),
                "/srv/vda.raw is neither a regular file nor a block device; it is not replaced",
            ),
            (TargetError::NamesNoFile { path: "/".into() }.into(), "/ names no file"),
            (
                TargetError::DeviceInUse { path: "/dev/sdx".into() }.into(),
                "/dev/sdx is in use (mounted, or held by another program); it was not written",
            ),
            (
                TargetError::StoppedBeingADevice { path: p() }.into(),
                "/srv/vda.raw stopped being a block device while the restore opened it; nothing was written",
            ),
            (
                TargetError::ChangedDuringRestore { path: p() }.into(),
                "/srv/vda.raw changed into something that is not a regular file during the restore; it was not replaced, and the restored copy was discarded",
            ),
            (
                TargetError::DeviceTooSmall { path: "/dev/sdx".into(), capacity: 10, size: 20 }.into(),
                "block device /dev/sdx holds 10 bytes, the image 20: it is too small",
            ),
            (
                TargetError::ResticNeedsCephConf.into(),
                "invalid option: restoring from restic into RBD needs --ceph-conf (restic keeps no domain XML)",
            ),
            (
                Error::NotInRepository(RepoError::NoSuchDomain { name: "web".into(), repo: "/r".into() }),
                r#"invalid option: no backup of a domain named or with UUID "web" in /r"#,
            ),
            (
                Error::NotInRepository(RepoError::AmbiguousDomain { name: "web".into(), uuids: vec!["u1".into(), "u2".into()] }),
                r#"invalid option: several domains were named "web" (u1, u2); give the UUID"#,
            ),
            (
                Error::NotInRepository(RepoError::NoSuchBackup { uuid: "u1".into(), id: Some("20261126T100000Z".into()) }),
                "invalid option: no backup 20261126T100000Z of domain u1; `virt-rbd-backup list` shows the backups",
            ),
            (
                Error::DiskNotChosen { backup_id: "b1".into(), domain: "web".into(), disks: vec!["vda".into(), "vdb".into()] },
                "invalid option: backup b1 of web has 2 disks (vda, vdb); choose one with --disk",
            ),
            (
                Error::NoRbdDiskInSavedXml { domain: "web".into(), target: "vdc".into() },
                "invalid option: the saved XML of web has no RBD disk vdc; give --ceph-conf",
            ),
            (
                Error::BadDomainName { name: "a b".into() },
                r#"invalid option: "a b" cannot name the new domain and its images: use up to 64 letters, digits, '-', '_' or '.'"#,
            ),
            (
                Error::NoResticSnapshot { domain: "web".into() },
                "invalid option: no restic snapshot of web matches; `virt-rbd-backup list --restic-repo ...` shows them",
            ),
            (
                Error::ResticDiskNotChosen { domain: "web".into(), disks: vec!["vda".into(), "vdb".into()] },
                "invalid option: the restic repository holds several disks of web (vda, vdb); choose one with --disk",
            ),
            (
                Error::NoBackupsOfDomain { domain: "web".into(), repo: "/r".into() },
                "invalid option: no backups of domain web in /r; give a name or UUID that `list` shows",
            ),
            (
                Error::DomainExists { name: "web-copy".into() },
                "a domain named web-copy exists already; choose another name",
            ),
        ];
        for (error, message) in cases {
            assert_eq!(error.to_string(), message);
        }
        assert_eq!(
            "rbd:a/b/c/d".parse::<RestoreTarget>(),
            Err(TargetError::BadRbdSpec {
                text: "rbd:a/b/c/d".into()
            })
        );
        assert_eq!("".parse::<RestoreTarget>(), Err(TargetError::Empty));
    }

    fn usage_message<T>(result: Result<T, Error>) -> String {
        match result {
            Err(Error::Target(e)) => e.to_string(),
            Err(other) => panic!("expected a target error, got {other:?}"),
            Ok(_) => panic!("expected a target error, got success"),
        }
    }

    fn leftovers(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains("virt-rbd-backup"))
            .collect();
        names.sort();
        names
    }

    #[test]
    fn rename_noreplace_refuses_an_existing_name_and_leaves_it_alone() {
        let dir = tempfile::tempdir().unwrap();
        let (from, to) = (dir.path().join("new"), dir.path().join("target"));
        fs::write(&from, b"restored").unwrap();
        fs::write(&to, b"theirs").unwrap();
        let err = rename_noreplace(&from, &to).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read(&to).unwrap(), b"theirs");
        assert_eq!(fs::read(&from).unwrap(), b"restored");
        fs::remove_file(&to).unwrap();
        rename_noreplace(&from, &to).unwrap();
        assert_eq!(fs::read(&to).unwrap(), b"restored");
        assert!(!from.exists());
    }

    #[test]
    fn a_file_that_appears_during_the_restore_is_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vda.raw");
        let mut sink = FileSink::create(&path, false).unwrap();
        sink.resize(8192).unwrap();
        sink.write_at(0, b"restored data").unwrap();
        // Someone creates the target between the check and the rename.
        fs::write(&path, b"created meanwhile").unwrap();
        let message = usage_message(sink.commit());
        assert!(message.contains("appeared during the restore"), "{message}");
        assert_eq!(fs::read(&path).unwrap(), b"created meanwhile");
        assert_eq!(leftovers(dir.path()), Vec::<String>::new());
    }

    #[test]
    fn a_symlink_that_appears_during_the_restore_is_not_replaced_either() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vda.raw");
        let sink = FileSink::create(&path, false).unwrap();
        std::os::unix::fs::symlink("/nonexistent", &path).unwrap();
        assert!(usage_message(sink.commit()).contains("appeared"));
        assert_eq!(fs::read_link(&path).unwrap(), Path::new("/nonexistent"));
    }

    #[test]
    fn without_force_an_existing_target_is_refused_before_anything_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        fs::write(&file, b"keep").unwrap();
        assert!(usage_message(FileSink::create(&file, false)).contains("use --force"));
        let dangling = dir.path().join("dangling");
        std::os::unix::fs::symlink(dir.path().join("nothing"), &dangling).unwrap();
        assert!(usage_message(FileSink::create(&dangling, false)).contains("symbolic link"));
        assert_eq!(fs::read(&file).unwrap(), b"keep");
        assert_eq!(leftovers(dir.path()), Vec::<String>::new());
    }

    fn read_write_file(path: &Path) -> File {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)
            .unwrap()
    }

    #[test]
    fn a_copy_into_a_file_keeps_the_holes_and_its_blocks_are_read_back() {
        let block = HASH_BLOCK_SIZE;
        let dir = tempfile::tempdir().unwrap();
        // The source: a sparse file with data in block 0 and the middle of block 2.
        let source_path = dir.path().join("source.raw");
        let source = read_write_file(&source_path);
        source.set_len(3 * block).unwrap();
        source.write_all_at(&[7u8; 8192], 0).unwrap();
        source
            .write_all_at(&[9u8; 4096], 2 * block + 65536)
            .unwrap();
        let mut image = vec![0u8; 3 * block as usize];
        image[..8192].fill(7);
        image[2 * block as usize + 65536..2 * block as usize + 65536 + 4096].fill(9);

        let target = dir.path().join("vda.raw");
        let mut file_sink = FileSink::create(&target, false).unwrap();
        let mut followed = FollowedSink::new(&mut file_sink);
        followed.resize(3 * block).unwrap();
        assert!(followed.copy_from(&source, 0, 0, 8192).unwrap());
        assert!(followed
            .copy_from(&source, 2 * block + 65536, 2 * block + 65536, 4096)
            .unwrap());
        let (sink, content) = followed.into_parts();
        // Blocks 0 and 2 were copied unseen: unknown until read back; block 1 is untouched.
        let known = content.clone().finish();
        assert_eq!(
            known.iter().map(Option::is_some).collect::<Vec<_>>(),
            [false, true, false]
        );
        let mut table = ContentHasher::new(image.len() as u64);
        for (i, b) in image.chunks(block as usize).enumerate() {
            table.add_block(i as u64, b);
        }
        let expected = table.finish_with_hashes().1;
        check_restored(sink, content, false, 3 * block, &expected, Path::new("x")).unwrap();
        file_sink.commit().unwrap();
        assert_eq!(fs::read(&target).unwrap(), image);
        // Only the copied 12 KiB are allocated: the holes stayed holes.
        let allocated = fs::metadata(&target).unwrap().blocks() * 512;
        assert!(allocated <= 64 * 1024, "{allocated} bytes allocated");
    }

    #[test]
    fn a_copied_block_that_differs_from_the_table_fails_the_check() {
        let dir = tempfile::tempdir().unwrap();
        let source = read_write_file(&dir.path().join("source.raw"));
        source.write_all_at(&[1u8; 4096], 0).unwrap();
        let mut file_sink = FileSink::create(&dir.path().join("vda.raw"), false).unwrap();
        let mut followed = FollowedSink::new(&mut file_sink);
        followed.resize(4096).unwrap();
        assert!(followed.copy_from(&source, 0, 0, 4096).unwrap());
        let (sink, content) = followed.into_parts();
        let other = *blake3::hash(&[2u8; 4096]).as_bytes();
        let error =
            check_restored(sink, content, false, 4096, &[other], Path::new("x")).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("differs from the backup's checksum"),
            "{error}"
        );
    }

    #[test]
    fn force_replaces_a_regular_file_with_the_restore() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vda.raw");
        fs::write(&path, b"old content that is longer").unwrap();
        let mut sink = FileSink::create(&path, true).unwrap();
        sink.resize(4).unwrap();
        sink.write_at(0, b"new!").unwrap();
        sink.commit().unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"new!");
        assert_eq!(leftovers(dir.path()), Vec::<String>::new());
    }

    #[test]
    fn force_never_replaces_a_directory_or_a_fifo() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("sub");
        fs::create_dir(&sub).unwrap();
        assert!(usage_message(FileSink::create(&sub, true)).contains("neither a regular file"));
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().to_str().unwrap()).unwrap();
        // SAFETY: a valid path; mkfifo keeps no memory.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert!(usage_message(FileSink::create(&fifo, true)).contains("neither a regular file"));
        assert!(sub.is_dir());
    }

    #[test]
    fn with_force_a_target_that_became_a_directory_during_the_restore_is_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vda.raw");
        fs::write(&path, b"old").unwrap();
        let sink = FileSink::create(&path, true).unwrap();
        fs::remove_file(&path).unwrap();
        fs::create_dir(&path).unwrap();
        assert!(usage_message(sink.commit()).contains("not replaced"));
        assert!(path.is_dir());
        assert_eq!(leftovers(dir.path()), Vec::<String>::new());
    }

    #[test]
    fn a_leftover_temporary_file_is_named_and_never_removed_or_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vda.raw");
        let tmp = dir.path().join("vda.raw.virt-rbd-backup-restoring");
        fs::write(&tmp, b"another restore's data").unwrap();
        let message = usage_message(FileSink::create(&path, false));
        assert!(
            message.contains("vda.raw.virt-rbd-backup-restoring exists"),
            "{message}"
        );
        assert_eq!(fs::read(&tmp).unwrap(), b"another restore's data");
        assert!(!path.exists());
    }

    /// Export and restore through the block I/O seams, in memory: an image exported as an
    /// rbd diff (full, then incrementals) and replayed as a restore replays it must come back
    /// byte for byte, and its block table must equal one computed from the bytes directly.
    mod through_memory {
        use super::super::*;
        use crate::engine::block_io::{block_table_of, MemorySink, MemorySnapshot};
        use crate::engine::export::{
            export_full_diff, export_incremental, ExportProgress, IncrementalBase, ReadPipeline,
        };
        use crate::repo::leaf_table::BaseLeaves;
        use crate::repo::rbd_diff::RbdDiffWriter;

        const B: usize = HASH_BLOCK_SIZE as usize;

        struct Quiet;
        impl ExportProgress for Quiet {
            fn progress(&self, _done: u64, _total: u64) {}
        }

        /// `size` bytes, zero but for `fills` (`start`, `end`, byte).
        fn image(size: usize, fills: &[(usize, usize, u8)]) -> Vec<u8> {
            let mut data = vec![0u8; size];
            for &(start, end, byte) in fills {
                data[start..end].fill(byte);
            }
            data
        }

        /// Backs `now` up as a diff (from nothing, or from `base`: its bytes and table) and
        /// replays it into `sink`, its writes followed by `content` (which followed the
        /// replays into `sink` before this one). Returns the export's block table.
        fn back_up_and_replay_into(
            sink: &mut MemorySink,
            content: &mut WrittenContent,
            now: &[u8],
            base: Option<(&[u8], &[[u8; 32]])>,
            use_object_map: bool,
        ) -> Result<Vec<[u8; 32]>, Error> {
            let cancel = CancelToken::new();
            let pipeline = ReadPipeline {
                queue_depth: 3,
                limit: None,
                cancel: &cancel,
                progress: &Quiet,
            };
            let size = now.len() as u64;
            let (stats, stream) = match base {
                None => export_full_diff(
                    &MemorySnapshot::new("rbd/m@s", now.to_vec()),
                    "s",
                    size,
                    use_object_map,
                    Vec::new(),
                    None,
                    &pipeline,
                )?,
                Some((base_data, base_table)) => {
                    let leaves = BaseLeaves::none();
                    let source = MemorySnapshot::new("rbd/m@s", now.to_vec())
                        .with_base("b", base_data.to_vec());
                    export_incremental(
                        &source,
                        "s",
                        size,
                        &IncrementalBase {
                            snapshot: "b",
                            size: base_data.len() as u64,
                            block_table: base_table,
                            leaves: &leaves,
                        },
                        use_object_map,
                        Vec::new(),
                        None,
                        &pipeline,
                    )?
                }
            };
            let mut reader = RbdDiffReader::new(&stream[..])?;
            let mut followed = FollowedSink {
                inner: sink,
                content: std::mem::replace(content, WrittenContent::new(0)),
            };
            let replayed = replay_diff(&mut reader, &mut followed, &cancel);
            *content = followed.content;
            replayed?;
            debug_assert_eq!(size, now.len() as u64);
            Ok(stats.block_table)
        }

        /// `back_up_and_replay_into`, then the check of the result, every block read back
        /// (the sink may hold what earlier replays wrote, which nothing here followed).
        fn back_up_and_replay(
            sink: &mut MemorySink,
            now: &[u8],
            base: Option<(&[u8], &[[u8; 32]])>,
            use_object_map: bool,
        ) -> Result<Vec<[u8; 32]>, Error> {
            let mut content = WrittenContent::new(0);
            let table = back_up_and_replay_into(sink, &mut content, now, base, use_object_map)?;
            let size = now.len() as u64;
            check_restored(sink, content, true, size, &table, Path::new("(memory)"))?;
            Ok(table)
        }

        /// A full backup of 4 blocks of data and an incremental over it that rewrites part of
        /// block 1 and discards part of block 3.
        fn full_and_incremental() -> (Vec<u8>, Vec<u8>) {
            let s0 = image(4 * B, &[(0, 4 * B, 1)]);
            let mut s1 = s0.clone();
            s1[B + 100..B + 5000].fill(9);
            s1[3 * B..3 * B + 8192].fill(0);
            (s0, s1)
        }

        #[test]
        fn the_default_check_reads_back_only_the_blocks_an_incremental_wrote_over() {
            let (s0, s1) = full_and_incremental();
            let size = s0.len() as u64;
            let path = Path::new("(memory)");
            let mut sink = MemorySink::default();
            let mut content = WrittenContent::new(0);
            let t0 = back_up_and_replay_into(&mut sink, &mut content, &s0, None, false).unwrap();
            check_restored(&mut sink, content.clone(), false, size, &t0, path).unwrap();
            assert_eq!(sink.blocks_read_back, 0, "a full alone is known as written");

            let t1 = back_up_and_replay_into(&mut sink, &mut content, &s1, Some((&s0, &t0)), false)
                .unwrap();
            assert!(sink.data == s1);
            assert_eq!(t1, block_table_of(&s1));
            check_restored(&mut sink, content.clone(), false, size, &t1, path).unwrap();
            assert_eq!(
                sink.blocks_read_back, 2,
                "blocks 1 and 3, which the incremental changed"
            );

            sink.blocks_read_back = 0;
            check_restored(&mut sink, content, true, size, &t1, path).unwrap();
            assert_eq!(sink.blocks_read_back, 4, "read_back reads every block");
        }

        #[test]
        fn a_bad_write_is_caught_by_default_where_an_incremental_wrote_and_anywhere_with_read_back()
        {
            let (s0, s1) = full_and_incremental();
            let size = s0.len() as u64;
            let path = Path::new("/r/vda.rbdiff");
            let mut sink = MemorySink::default();
            let mut content = WrittenContent::new(0);
            let t0 = back_up_and_replay_into(&mut sink, &mut content, &s0, None, false).unwrap();
            let t1 = back_up_and_replay_into(&mut sink, &mut content, &s1, Some((&s0, &t0)), false)
                .unwrap();
            let corrupt_at = |at: u64, read_back: bool| {
                // Storage that acknowledged the writes and holds other bytes at `at`.
                let mut bad = sink.clone();
                bad.data[at as usize] ^= 0x40;
                match check_restored(&mut bad, content.clone(), read_back, size, &t1, path) {
                    Ok(()) => None,
                    Err(Error::Repo(RepoError::Corrupt { offset, .. })) => offset,
                    Err(other) => panic!("expected a corrupt restore, got {other:?}"),
                }
            };
            // Block 1: the incremental wrote over it, so it is read back.
            assert_eq!(corrupt_at(B as u64 + 17, false), Some(B as u64));
            // Block 0: only the full wrote it; the default check trusts the acknowledged write
            // (README, Safety), read_back does not.
            assert_eq!(corrupt_at(17, false), None);
            assert_eq!(corrupt_at(17, true), Some(0));
        }

        #[test]
        fn a_full_backup_comes_back_with_its_holes_and_its_short_last_block() {
            // Block 0: data with a hole inside; block 1: all hole; block 2 (half a block, the
            // short last one): data up to the last byte.
            let size = 2 * B + B / 2;
            let now = image(
                size,
                &[(100, 9000, 1), (65536, 70000, 2), (size - 5000, size, 3)],
            );
            let mut sink = MemorySink::default();
            let table = back_up_and_replay(&mut sink, &now, None, false).unwrap();
            assert!(sink.data == now, "restored bytes differ");
            assert_eq!(table, block_table_of(&now));
            // Only the non-zero 4 KiB pieces were written: the holes stayed holes.
            let pieces = now
                .chunks(4096)
                .filter(|c| c.iter().any(|&b| b != 0))
                .count();
            let last_piece = size % 4096; // the last piece is short when the size is not 4 KiB aligned
            assert_eq!(
                sink.written,
                (pieces * 4096 - (4096 - last_piece) % 4096) as u64
            );
        }

        #[test]
        fn incrementals_follow_a_shrink_then_a_grow_and_the_regrown_part_reads_zeros() {
            for use_object_map in [false, true] {
                // 3.5 blocks, data nearly everywhere.
                let s0 = image(3 * B + B / 2, &[(0, 3 * B + B / 2, 7)]);
                // Shrunk to 1.5 blocks; a range in block 0 zeroed, one in block 1 rewritten.
                let s1 = image(
                    B + B / 2,
                    &[
                        (0, B + B / 2, 7),
                        (8192, 65536, 0),
                        (B + 4096, B + 12288, 9),
                    ],
                );
                // Grown to 4 blocks: only block 3 gets data; 1.5..3 must read as zeros, not as
                // the data s0 had there.
                let mut s2 = s1.clone();
                s2.resize(4 * B, 0);
                s2[3 * B + 10..3 * B + 20].fill(5);

                let mut sink = MemorySink::default();
                let t0 = back_up_and_replay(&mut sink, &s0, None, use_object_map).unwrap();
                let t1 =
                    back_up_and_replay(&mut sink, &s1, Some((&s0, &t0)), use_object_map).unwrap();
                assert!(
                    sink.data == s1,
                    "after the shrink (object map: {use_object_map})"
                );
                assert_eq!(t1, block_table_of(&s1));
                let t2 =
                    back_up_and_replay(&mut sink, &s2, Some((&s1, &t1)), use_object_map).unwrap();
                assert!(
                    sink.data == s2,
                    "after the grow (object map: {use_object_map})"
                );
                assert_eq!(t2, block_table_of(&s2));
            }
        }

        #[test]
        fn zero_runs_inside_a_data_record_replace_older_data() {
            let mut diff = RbdDiffWriter::new(Vec::new(), Some("a"), "b", 3 * 4096).unwrap();
            let mut data = vec![4u8; 3 * 4096];
            data[4096..8192].fill(0);
            diff.write_data(0, &data).unwrap();
            let stream = diff.finish().unwrap();
            let mut sink = MemorySink {
                data: vec![0xff; 3 * 4096],
                ..MemorySink::default()
            };
            let mut reader = RbdDiffReader::new(&stream[..]).unwrap();
            let written = replay_diff(&mut reader, &mut sink, &CancelToken::new()).unwrap();
            assert!(sink.data == data);
            assert_eq!(written, 2 * 4096);
        }

        #[test]
        fn a_failing_sink_fails_the_restore() {
            let now = image(B, &[(0, B, 1)]);
            let mut sink = MemorySink {
                fail_write_at: Some(B as u64 / 2),
                ..MemorySink::default()
            };
            let err = back_up_and_replay(&mut sink, &now, None, false).unwrap_err();
            assert!(err.to_string().contains("write of"), "{err}");
        }

        #[test]
        fn a_sink_that_lost_a_write_fails_the_check_at_that_block() {
            let now = image(2 * B, &[(0, 2 * B, 1)]);
            let mut sink = MemorySink::default();
            let table = back_up_and_replay(&mut sink, &now, None, false).unwrap();
            sink.data[B + 17] = 0;
            match check_restored(
                &mut sink,
                WrittenContent::new(0),
                true,
                now.len() as u64,
                &table,
                Path::new("/r/vda.rbdiff"),
            ) {
                Err(Error::Repo(RepoError::Corrupt { offset, path, .. })) => {
                    assert_eq!(
                        (offset, path),
                        (Some(B as u64), PathBuf::from("/r/vda.rbdiff"))
                    );
                }
                other => panic!("expected a corrupt restore, got {other:?}"),
            }
        }

        #[test]
        fn a_failing_read_fails_the_export() {
            let now = image(2 * B, &[(0, 2 * B, 1)]);
            let cancel = CancelToken::new();
            let pipeline = ReadPipeline {
                queue_depth: 2,
                limit: None,
                cancel: &cancel,
                progress: &Quiet,
            };
            let source = MemorySnapshot::new("rbd/m@s", now).failing_at(B as u64 + 1);
            let result = export_full_diff(
                &source,
                "s",
                2 * B as u64,
                false,
                Vec::new(),
                None,
                &pipeline,
            );
            assert!(result.is_err());
        }
    }

    #[test]
    fn a_failed_restore_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vda.raw");
        let mut sink = FileSink::create(&path, false).unwrap();
        sink.write_at(0, b"partial").unwrap();
        drop(sink);
        assert_eq!(leftovers(dir.path()), Vec::<String>::new());
        assert!(!path.exists());
    }
}

/// What `restore --define` is asked to do.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DefineOptions {
    /// Backup repository.
    pub repo: PathBuf,
    /// Domain name or UUID in the repository.
    pub domain: String,
    /// Backup id, or `None`/`"latest"`.
    #[serde(default)]
    pub backup: Option<String>,
    /// Name of the new domain; its disks become `POOL/NAME-TARGET`.
    pub name: String,
    /// Pool for the restored images (default: each disk's own pool).
    #[serde(default)]
    pub pool: Option<String>,
    /// Replace existing images of those names.
    #[serde(default)]
    pub force: bool,
    /// How to reach the cluster; its `connect` is also the libvirt the domain is defined on.
    #[serde(default)]
    pub ceph: CephAccess,
    /// Check each restored image by reading it back whole (`RestoreOptions::read_back`).
    #[serde(default)]
    pub read_back: bool,
    /// Define the domain even if its saved XML gives it host resources
    /// (`libvirt::domain_rewrite::host_passthrough`); refused otherwise.
    #[serde(default)]
    pub allow_host_passthrough: bool,
    /// How to open `repo` when it is a block repository (S3, key file).
    #[serde(default)]
    pub access: super::repo_access::RepoAccess,
}

/// What `restore --define` needs of a backup, from a repository of either layout.
pub(super) struct DefineSource {
    pub(super) uuid: String,
    pub(super) backup_id: String,
    pub(super) domain_name: String,
    pub(super) xml: String,
    /// Target, pool, namespace of each disk.
    pub(super) disks: Vec<(String, String, Option<String>)>,
}

pub(super) fn define_source(
    repository: &super::repo_access::AnyRepository,
    options: &DefineOptions,
) -> Result<DefineSource, Error> {
    match repository {
        super::repo_access::AnyRepository::Folder(repo) => {
            let uuid = repo
                .resolve_domain(&options.domain)
                .map_err(Error::NotInRepository)?;
            let (_, m) = repo.find_backup(&uuid, options.backup.as_deref())?;
            Ok(DefineSource {
                uuid,
                backup_id: m.backup_id,
                domain_name: m.domain.name,
                xml: m.domain.xml,
                disks: m
                    .disks
                    .into_iter()
                    .map(|d| (d.target, d.pool, d.namespace))
                    .collect(),
            })
        }
        super::repo_access::AnyRepository::Blocks(repo) => {
            let m = super::block_restore::find_backup(
                repo,
                &options.domain,
                options.backup.as_deref(),
            )?;
            Ok(DefineSource {
                uuid: m.domain.uuid,
                backup_id: m.backup_id,
                domain_name: m.domain.name,
                xml: m.domain.xml,
                disks: m
                    .disks
                    .into_iter()
                    .map(|d| (d.target, d.pool, d.namespace))
                    .collect(),
            })
        }
    }
}

/// Where one disk of a `--define` goes: target, pool, namespace, image name, `pool/image` spec.
pub(super) type DefinePlace = (String, String, Option<String>, String, String);

/// What `restore --define` (also `--live`) decides before anything is written: the backup, the
/// new images' names (`POOL/NAME-TARGET`) and the new domain's XML, checked for host
/// passthrough unless allowed. A refusal here leaves nothing behind.
pub(super) struct PreparedDefine {
    pub repository: super::repo_access::AnyRepository,
    pub source: DefineSource,
    pub libvirt: HypervisorConnection,
    pub places: Vec<DefinePlace>,
    pub rewritten: crate::libvirt::domain_rewrite::RewriteOutcome,
}

/// Checks the new name, reads the backup and prepares the images and the XML (`PreparedDefine`).
pub(super) fn prepare_define(options: &DefineOptions) -> Result<PreparedDefine, Error> {
    let valid = !options.name.is_empty()
        && options.name.len() <= 64
        && options
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !options.name.starts_with('.');
    if !valid {
        return Err(Error::BadDomainName {
            name: options.name.clone(),
        });
    }
    let repository = super::repo_access::open_repository(
        &options.repo.to_string_lossy(),
        &options.access,
        false,
    )?;
    let source = define_source(&repository, options)?;
    let libvirt = HypervisorConnection::open(&options.ceph.connect)?;
    if libvirt.domain_exists(&options.name) {
        return Err(Error::DomainExists {
            name: options.name.clone(),
        });
    }
    let mut images = std::collections::HashMap::new();
    let mut places = Vec::new();
    for (target, disk_pool, namespace) in &source.disks {
        let image = format!(
            "{}-{}",
            options.name,
            crate::repo::layout::safe_component(target)
        );
        let pool = options.pool.clone().unwrap_or_else(|| disk_pool.clone());
        let spec = match namespace {
            Some(ns) => format!("{pool}/{ns}/{image}"),
            None => format!("{pool}/{image}"),
        };
        images.insert(target.clone(), spec.clone());
        places.push((target.clone(), pool, namespace.clone(), image, spec));
    }
    let rewritten =
        crate::libvirt::domain_rewrite::rewrite_for_restore(&source.xml, &options.name, &images)?;
    if !options.allow_host_passthrough {
        let findings = crate::libvirt::domain_rewrite::host_passthrough(
            &rewritten.xml,
            &options.name,
            &libvirt.host_emulators()?,
        )?;
        if !findings.is_empty() {
            return Err(Error::HostPassthrough {
                domain: source.domain_name.clone(),
                name: options.name.clone(),
                findings,
            });
        }
    }
    Ok(PreparedDefine {
        repository,
        source,
        libvirt,
        places,
        rewritten,
    })
}

/// Restores one disk from a repository of either layout.
fn restore_disk_from(
    repository: &super::repo_access::AnyRepository,
    options: &RestoreOptions,
    cancel: &CancelToken,
) -> Result<(RestoreReport, Option<PlacedImage>), Error> {
    match repository {
        super::repo_access::AnyRepository::Folder(_) => restore_disk(options, cancel),
        super::repo_access::AnyRepository::Blocks(repo) => {
            super::block_restore::restore_disk(options, repo, cancel)
        }
    }
}

/// The outcome of `restore --define`.
#[derive(Debug, Clone, Serialize)]
pub struct DefineReport {
    /// The new domain's name.
    pub name: String,
    /// Its UUID (new, made by libvirt).
    pub uuid: String,
    /// One restore per RBD disk.
    pub disks: Vec<RestoreReport>,
    /// Writable non-RBD disks of the original that the new domain does not get.
    pub dropped_disks: Vec<String>,
}

/// Restores every RBD disk of a backup into new images and defines a new domain (new name,
/// new UUID, new MACs) from the saved XML, pointing at them. It is defined, not started.
///
/// The XML is rewritten and checked (`host_passthrough`, unless
/// `allow_host_passthrough`) before any image is written. The disks are restored in
/// parallel. If a disk or the definition fails, the other disks stop, the images made are
/// removed and images replaced with `force` are renamed back.
pub fn restore_define(
    options: &DefineOptions,
    cancel: &CancelToken,
) -> Result<DefineReport, Error> {
    // Every image name and the new XML, checked, before any image is written: a refusal
    // leaves nothing behind.
    let PreparedDefine {
        repository,
        source,
        libvirt,
        places,
        rewritten,
    } = prepare_define(options)?;
    let restores: Vec<RestoreOptions> = places
        .into_iter()
        .map(|(target, pool, namespace, image, _)| RestoreOptions {
            repo: options.repo.clone(),
            domain: source.uuid.clone(),
            disk: Some(target),
            backup: Some(source.backup_id.clone()),
            to: RestoreTarget::Rbd {
                pool,
                namespace,
                image,
            },
            force: options.force,
            ceph: options.ceph.clone(),
            restic: None,
            access: options.access.clone(),
            read_back: options.read_back,
        })
        .collect();
    // The disks at once, one thread each, as a backup exports them. The first to fail stops
    // the others (`stop`): their images are removed with it anyway.
    let stop = cancel.child();
    let outcomes: Vec<Result<(RestoreReport, Option<PlacedImage>), Error>> =
        std::thread::scope(|scope| {
            let handles: Vec<_> = restores
                .iter()
                .map(|restore| {
                    let (repository, stop) = (&repository, &stop);
                    scope.spawn(move || {
                        let outcome = restore_disk_from(repository, restore, stop);
                        if outcome.is_err() {
                            stop.cancel();
                        }
                        outcome
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|handle| {
                    handle
                        .join()
                        .unwrap_or_else(|p| std::panic::resume_unwind(p))
                })
                .collect()
        });
    let mut disks = Vec::new();
    let mut placed = Vec::new();
    let mut failed: Option<Error> = None;
    for outcome in outcomes {
        match outcome {
            Ok((report, image)) => {
                disks.push(report);
                placed.extend(image);
            }
            // The failure that stopped the others is reported, not their `Cancelled` (unless
            // Ctrl-C stopped them all); another disk's own failure is logged.
            Err(e) => {
                if matches!(failed, None | Some(Error::Cancelled)) {
                    failed = Some(e);
                } else if !matches!(e, Error::Cancelled) {
                    log::warn!("restore --define: another disk failed as well: {e}");
                }
            }
        }
    }
    let defined = match failed {
        Some(e) => Err(e),
        None => libvirt
            .define(&options.name, &rewritten.xml)
            .map_err(Error::from),
    };
    let new_uuid = match defined {
        Ok(uuid) => uuid,
        Err(e) => {
            // Undone newest first, so a replaced image goes back under its name last.
            for image in placed.into_iter().rev() {
                image.undo();
            }
            return Err(e);
        }
    };
    for (report, image) in disks.iter_mut().zip(placed) {
        report.warnings.extend(image.finish());
    }
    Ok(DefineReport {
        name: options.name.clone(),
        uuid: new_uuid,
        disks,
        dropped_disks: rewritten.dropped_disks,
    })
}
