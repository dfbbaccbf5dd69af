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
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::ceph::{CephTimeouts, ClusterAddress, ImageWriter, PoolContext, RadosCluster, RbdImage};
use crate::error::Error;
use crate::libvirt::{parse_domain_xml, DiskEntry, HypervisorConnection};
use crate::plan::{
    checksum_of_table, ContentHasher, StreamHasher, WrittenContent, HASH_BLOCK_SIZE,
};
use crate::repo::chain::{data_in, open_diff_link, verify_stored_file, ChainLink, RawBlockReader};
use crate::repo::image_file::nonzero_runs;
use crate::repo::manifest::sync_dir;
use crate::repo::rbd_diff::DiffRecord;
use crate::repo::{RepoError, Repository};

use super::ceph_session::cluster_address;
use super::export::image_block_table;
use super::restic::{choose_restic_snapshot, list_restic, unsealed, ResticTarget};
use super::CancelToken;

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
    type Err = String;
    /// `rbd:POOL/IMAGE`, `rbd:POOL/NAMESPACE/IMAGE`, or a file path.
    fn from_str(s: &str) -> Result<Self, String> {
        let Some(spec) = s.strip_prefix("rbd:") else {
            if s.is_empty() {
                return Err("the restore target is empty".into());
            }
            return Ok(RestoreTarget::File {
                path: PathBuf::from(s),
            });
        };
        let parts: Vec<&str> = spec.split('/').collect();
        if parts.iter().any(|p| p.is_empty()) {
            return Err(format!(
                "bad RBD target {s:?}: expected rbd:POOL/IMAGE or rbd:POOL/NAMESPACE/IMAGE"
            ));
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
            _ => Err(format!(
                "bad RBD target {s:?}: expected rbd:POOL/IMAGE or rbd:POOL/NAMESPACE/IMAGE"
            )),
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
    /// For RBD targets: a ceph.conf (with its keyring) instead of the domain's monitors and key.
    #[serde(default)]
    pub ceph_conf: Option<PathBuf>,
    /// For RBD targets: the Ceph user with `ceph_conf` (default `admin`).
    #[serde(default)]
    pub ceph_user: Option<String>,
    /// libvirt URI, to read the domain's Ceph key when no `ceph_conf` is given.
    #[serde(default = "default_connect")]
    pub connect: String,
    /// Restore from this restic repository instead of the repository folder; `backup` is then
    /// a restic snapshot id (or `latest`).
    #[serde(default)]
    pub restic: Option<ResticTarget>,
    /// Check the result by reading every block back from the target, instead of hashing what
    /// is written and reading back only the blocks incrementals wrote over (module doc).
    #[serde(default)]
    pub read_back: bool,
}

fn default_connect() -> String {
    "qemu:///system".into()
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

/// A place blocks are written to: a sparse file or an RBD image.
trait BlockSink {
    fn set_size(&mut self, size: u64) -> Result<(), Error>;
    fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), Error>;
    fn zero(&mut self, offset: u64, length: u64) -> Result<(), Error>;
    /// Hash of every block of the result, for the final check.
    fn block_hashes(&mut self, size: u64) -> Result<Vec<[u8; 32]>, Error>;
    /// Finishes the writes and reads `blocks` (of an image of `size` bytes) back from the
    /// target: their hashes, in the same order.
    fn read_back(&mut self, size: u64, blocks: &[u64]) -> Result<Vec<[u8; 32]>, Error>;
}

/// Restores one disk.
pub fn restore(options: &RestoreOptions, cancel: &CancelToken) -> Result<RestoreReport, Error> {
    let (mut report, placed) = match &options.restic {
        Some(restic) => restore_from_restic(options, restic, cancel)?,
        None => restore_disk(options, cancel)?,
    };
    if let Some(placed) = placed {
        report.warnings.extend(placed.finish());
    }
    Ok(report)
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
        .map_err(|e| Error::Usage(e.to_string()))?;
    let (folder, manifest) = repo.find_backup(&uuid, options.backup.as_deref())?;
    let target = match &options.disk {
        Some(t) => t.clone(),
        None if manifest.disks.len() == 1 => manifest.disks[0].target.clone(),
        None => {
            let names: Vec<&str> = manifest.disks.iter().map(|d| d.target.as_str()).collect();
            return Err(Error::Usage(format!(
                "backup {} has {} disks ({}); choose one with --disk",
                manifest.backup_id,
                names.len(),
                names.join(", ")
            )));
        }
    };
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
            rbd_target_cluster(
                options,
                &manifest.domain.xml,
                &manifest.domain.name,
                &target,
            )
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
        || match &options.ceph_conf {
            Some(conf) => Ok((
                ClusterAddress {
                    monitors: Vec::new(),
                    conf_file: Some(conf.display().to_string()),
                    user: options.ceph_user.clone().unwrap_or_else(|| "admin".into()),
                },
                None,
            )),
            None => Err(Error::Usage(
                "restoring from restic into RBD needs --ceph-conf (restic keeps no domain XML)"
                    .into(),
            )),
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
                for (start, end) in nonzero_runs(&buf[..filled], 4096) {
                    sink.write(offset + start as u64, &buf[start..end])?;
                    written += (end - start) as u64;
                }
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
            let landed = checksum_of_table(&sink.block_hashes(size)?);
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
fn restore_into(
    options: &RestoreOptions,
    size: u64,
    cluster: impl FnOnce() -> Result<(ClusterAddress, Option<crate::secret::SecretString>), Error>,
    fill: impl FnOnce(&mut dyn BlockSink) -> Result<u64, Error>,
) -> Result<(String, u64, Option<PlacedImage>), Error> {
    match &options.to {
        RestoreTarget::File { path } => {
            let mut sink = FileSink::create(path, options.force)?;
            sink.set_size(size)?;
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
            let (address, key) = cluster()?;
            let cluster = RadosCluster::connect(&address, key.as_ref(), CephTimeouts::default())?;
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
    fill: impl FnOnce(&mut dyn BlockSink) -> Result<u64, Error>,
) -> Result<(u64, String, Option<String>), Error> {
    let spec = ctx.image_spec(image);
    let tmp = restoring_name(image);
    if ctx.image_exists(image)? {
        if !force {
            return Err(Error::Usage(format!(
                "image {spec} exists; use --force to replace it"
            )));
        }
        if ctx.image_exists(&replaced_name(image))? {
            return Err(Error::Usage(format!(
                "image {} exists: an earlier --force restore into {spec} could not remove the image it replaced; remove or rename it first",
                ctx.image_spec(&replaced_name(image))
            )));
        }
    }
    // Created exclusively: another restore's image is never removed or written into.
    match ctx.create_image(&tmp, size) {
        Err(e) if e.errno() == Some(-libc::EEXIST) => {
            return Err(Error::Usage(format!(
                "image {} exists: another restore into {spec} is running, or one was killed; remove it with `rbd rm` if none runs",
                ctx.image_spec(&tmp)
            )))
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
    let appeared = || {
        Error::Usage(format!(
            "image {spec} appeared during the restore (created by someone else); it was not replaced, and the restored copy was discarded"
        ))
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
struct PlacedImage {
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

/// The cluster and key a saved domain XML names for disk `target` (key read from libvirt).
pub(super) fn cluster_from_saved_xml(
    connect: &str,
    xml: &str,
    domain: &str,
    target: &str,
) -> Result<(ClusterAddress, Option<crate::secret::SecretString>), Error> {
    let description = parse_domain_xml(domain, xml)?;
    let spec = description
        .disks
        .into_iter()
        .find_map(|d| match d {
            DiskEntry::Rbd(spec) if spec.target == target => Some(spec),
            _ => None,
        })
        .ok_or_else(|| {
            Error::Usage(format!(
                "the saved XML of {domain} has no RBD disk {target}; give --ceph-conf"
            ))
        })?;
    let key = match &spec.auth {
        Some(auth) => {
            let libvirt = HypervisorConnection::open(connect)?;
            Some(libvirt.ceph_key(
                domain,
                &auth.username,
                auth.secret_uuid.as_deref(),
                auth.secret_usage.as_deref(),
            )?)
        }
        None => None,
    };
    Ok((cluster_address(&spec), key))
}

/// The cluster and key for an RBD restore target.
fn rbd_target_cluster(
    options: &RestoreOptions,
    xml: &str,
    domain: &str,
    target: &str,
) -> Result<(ClusterAddress, Option<crate::secret::SecretString>), Error> {
    if let Some(conf) = &options.ceph_conf {
        let address = ClusterAddress {
            monitors: Vec::new(),
            conf_file: Some(conf.display().to_string()),
            user: options.ceph_user.clone().unwrap_or_else(|| "admin".into()),
        };
        return Ok((address, None));
    }
    cluster_from_saved_xml(&options.connect, xml, domain, target)
}

/// Replays `chain` into `sink` and checks the result against `expected` (module doc: with
/// `read_back` every block is read back). Returns data bytes written.
fn replay(
    chain: &[ChainLink],
    sink: &mut dyn BlockSink,
    expected: &[[u8; 32]],
    read_back: bool,
    cancel: &CancelToken,
) -> Result<u64, Error> {
    let sink = &mut FollowedSink {
        inner: sink,
        content: WrittenContent::new(0),
    };
    let mut written = 0u64;
    for link in chain {
        if cancel.is_cancelled() {
            return Err(Error::Cancelled);
        }
        match link.disk.format {
            crate::repo::DiskFormat::SparseRaw => {
                let mut reader = RawBlockReader::open(link)?;
                sink.set_size(reader.size())?;
                let mut buf = Vec::new();
                while let Some((offset, has_data)) = reader.next_block(&mut buf)? {
                    if has_data {
                        for (start, end) in nonzero_runs(&buf, 4096) {
                            sink.write(offset + start as u64, &buf[start..end])?;
                            written += (end - start) as u64;
                        }
                    }
                    if cancel.is_cancelled() {
                        return Err(Error::Cancelled);
                    }
                }
            }
            crate::repo::DiskFormat::RbdDiffV1 | crate::repo::DiskFormat::RbdDiffV1Zstd => {
                verify_stored_file(link)?;
                let mut reader = open_diff_link(link)?;
                sink.set_size(reader.image_size())?;
                while let Some(record) = reader.next_record()? {
                    match record {
                        DiffRecord::Data { offset, data } => {
                            let mut pos = 0;
                            for (start, end) in nonzero_runs(&data, 4096) {
                                if start > pos {
                                    sink.zero(offset + pos as u64, (start - pos) as u64)?;
                                }
                                sink.write(offset + start as u64, &data[start..end])?;
                                written += (end - start) as u64;
                                pos = end;
                            }
                            if pos < data.len() {
                                sink.zero(offset + pos as u64, (data.len() - pos) as u64)?;
                            }
                        }
                        DiffRecord::Zero { offset, length } => sink.zero(offset, length)?,
                    }
                }
            }
        }
    }
    let size = chain.last().map_or(0, |l| l.disk.size);
    let FollowedSink {
        inner: sink,
        content,
    } = sink;
    // Every write finished, before the check (and the test hook that changes the target there).
    sink.read_back(size, &[])?;
    super::thaw_guard::test_pause("written");
    let mut known = std::mem::replace(content, WrittenContent::new(0)).finish();
    if read_back {
        known.fill(None);
    }
    let unknown: Vec<u64> = (0..known.len() as u64)
        .filter(|&i| known[i as usize].is_none())
        .collect();
    let read = sink.read_back(size, &unknown)?;
    for (index, hash) in unknown.iter().zip(read) {
        known[*index as usize] = Some(hash);
    }
    log::debug!(
        "restore check: {} of {} blocks read back from the target",
        unknown.len(),
        known.len()
    );
    let actual: Vec<[u8; 32]> = known.into_iter().flatten().collect();
    if let Some(index) =
        (0..expected.len().max(actual.len())).find(|&i| expected.get(i) != actual.get(i))
    {
        return Err(RepoError::Corrupt {
            path: chain.last().map(|l| l.data_path()).unwrap_or_default(),
            offset: Some(index as u64 * HASH_BLOCK_SIZE),
            message: "the restored image differs from the backup's checksum there; the restore is incomplete and was discarded".into(),
        }
        .into());
    }
    Ok(written)
}

/// A sink whose writes are followed by `WrittenContent`, so the result's hashes are known
/// without reading the target back where they can be.
struct FollowedSink<'a> {
    inner: &'a mut dyn BlockSink,
    content: WrittenContent,
}

impl BlockSink for FollowedSink<'_> {
    fn set_size(&mut self, size: u64) -> Result<(), Error> {
        self.inner.set_size(size)?;
        self.content.resize(size);
        Ok(())
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), Error> {
        self.content.write(offset, data);
        self.inner.write(offset, data)
    }

    fn zero(&mut self, offset: u64, length: u64) -> Result<(), Error> {
        self.content.zero(offset, length);
        self.inner.zero(offset, length)
    }

    fn block_hashes(&mut self, size: u64) -> Result<Vec<[u8; 32]>, Error> {
        self.inner.block_hashes(size)
    }

    fn read_back(&mut self, size: u64, blocks: &[u64]) -> Result<Vec<[u8; 32]>, Error> {
        self.inner.read_back(size, blocks)
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
}

fn exists_error(path: &Path, what: &str) -> Error {
    Error::Usage(format!(
        "{} exists{what}; use --force to replace it",
        path.display()
    ))
}

impl FileSink {
    fn create(path: &Path, force: bool) -> Result<Self, Error> {
        // Follows symbolic links: /dev/disk/by-id/... and LVM names are links to the node.
        match fs::metadata(path) {
            Ok(meta) if meta.file_type().is_block_device() => {
                if !force {
                    return Err(Error::Usage(format!(
                        "{} is a block device; use --force to write the restore into it (what it holds is overwritten)",
                        path.display()
                    )));
                }
                return Self::open_device(path);
            }
            Ok(meta) => {
                if !force {
                    return Err(exists_error(path, ""));
                }
                if !meta.is_file() {
                    return Err(Error::Usage(format!(
                        "{} is neither a regular file nor a block device; it is not replaced",
                        path.display()
                    )));
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
        let mut tmp_name = path
            .file_name()
            .map(|n| n.to_os_string())
            .ok_or_else(|| Error::Usage(format!("{} names no file", path.display())))?;
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
                    Error::Usage(format!(
                        "{} exists: another restore into {} is running, or one was killed; remove it if none runs",
                        tmp.display(),
                        path.display()
                    ))
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
                    Error::Usage(format!(
                        "{} is in use (mounted, or held by another program); it was not written",
                        path.display()
                    ))
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
            return Err(Error::Usage(format!(
                "{} stopped being a block device while the restore opened it; nothing was written",
                path.display()
            )));
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
                    return Err(Error::Usage(format!(
                        "{} changed into something that is not a regular file during the restore; it was not replaced, and the restored copy was discarded",
                        self.path.display()
                    )));
                }
                _ => fs::rename(tmp, &self.path),
            }
        } else {
            rename_noreplace(tmp, &self.path)
        };
        renamed.map_err(|source| {
            if source.kind() == std::io::ErrorKind::AlreadyExists {
                Error::Usage(format!(
                    "{} appeared during the restore (created by someone else); it was not replaced, and the restored copy was discarded",
                    self.path.display()
                ))
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

impl BlockSink for FileSink {
    fn set_size(&mut self, size: u64) -> Result<(), Error> {
        match self.mode {
            FileMode::Renamed { .. } => self.file.set_len(size).map_err(self.io("resize")),
            FileMode::Device { capacity, valid_to } => {
                if size > capacity {
                    return Err(Error::Usage(format!(
                        "block device {} holds {capacity} bytes, the image {size}: it is too small",
                        self.path.display()
                    )));
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

    fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), Error> {
        self.file
            .write_all_at(data, offset)
            .map_err(self.io("write"))
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

    fn block_hashes(&mut self, size: u64) -> Result<Vec<[u8; 32]>, Error> {
        let device = matches!(self.mode, FileMode::Device { .. });
        if device {
            // Read back what the device holds, not the page cache's copy of our writes: write
            // it out, then drop the cached pages (best effort: pages in use stay cached).
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
        }
        let mut hasher = ContentHasher::new(size);
        let mut buf = Vec::new();
        for index in 0..hasher.block_count() {
            let offset = index * HASH_BLOCK_SIZE;
            let len = hasher.block_len(index);
            if device || data_in(&self.file, offset, len).map_err(self.io("seek in"))? {
                buf.resize(len as usize, 0);
                self.file
                    .read_exact_at(&mut buf, offset)
                    .map_err(self.io("read back"))?;
                hasher.add_block(index, &buf);
            }
        }
        Ok(hasher.finish_with_hashes().1)
    }

    fn read_back(&mut self, size: u64, blocks: &[u64]) -> Result<Vec<[u8; 32]>, Error> {
        if blocks.is_empty() {
            return Ok(Vec::new());
        }
        if blocks.len() as u64 == size.div_ceil(HASH_BLOCK_SIZE) {
            return self.block_hashes(size);
        }
        if let FileMode::Device { .. } = self.mode {
            // As in `block_hashes`: what the device holds, not the page cache.
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
        }
        let hasher = ContentHasher::new(size);
        let mut buf = Vec::new();
        let mut hashes = Vec::with_capacity(blocks.len());
        for &index in blocks {
            buf.resize(hasher.block_len(index) as usize, 0);
            self.file
                .read_exact_at(&mut buf, index * HASH_BLOCK_SIZE)
                .map_err(self.io("read back"))?;
            hashes.push(*blake3::hash(&buf).as_bytes());
        }
        Ok(hashes)
    }
}

/// Writes and discards a restore keeps in flight on an RBD image: `rbd import` keeps several
/// in flight too; 4 brought a full restore from about 0.5x to 0.8x of `rbd import` on the lab.
const RBD_WRITES_IN_FLIGHT: usize = 4;

/// An RBD image being restored.
struct RbdSink<'a> {
    image: &'a RbdImage<'a>,
    writer: ImageWriter<'a>,
}

impl<'a> RbdSink<'a> {
    fn new(image: &'a RbdImage<'a>) -> Self {
        RbdSink {
            image,
            writer: ImageWriter::new(image, RBD_WRITES_IN_FLIGHT),
        }
    }

    /// Waits for every write in flight and flushes the image.
    fn finish(&mut self) -> Result<(), Error> {
        self.writer.finish()?;
        Ok(self.image.flush()?)
    }
}

impl BlockSink for RbdSink<'_> {
    fn set_size(&mut self, size: u64) -> Result<(), Error> {
        if self.image.info()?.size != size {
            self.writer.finish()?;
            self.image.resize(size)?;
        }
        Ok(())
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), Error> {
        Ok(self.writer.write(offset, data.to_vec())?)
    }

    fn zero(&mut self, offset: u64, length: u64) -> Result<(), Error> {
        Ok(self.writer.discard(offset, length)?)
    }

    fn block_hashes(&mut self, size: u64) -> Result<Vec<[u8; 32]>, Error> {
        self.finish()?;
        image_block_table(self.image, size, false)
    }

    fn read_back(&mut self, size: u64, blocks: &[u64]) -> Result<Vec<[u8; 32]>, Error> {
        if blocks.len() as u64 == size.div_ceil(HASH_BLOCK_SIZE) {
            return self.block_hashes(size);
        }
        self.finish()?;
        let hasher = ContentHasher::new(size);
        let mut hashes = Vec::with_capacity(blocks.len());
        for &index in blocks {
            let buf = crate::buffer::AlignedBuf::zeroed(hasher.block_len(index) as usize);
            let data = self
                .image
                .start_read(index * HASH_BLOCK_SIZE, buf)?
                .wait()?;
            hashes.push(*blake3::hash(&data).as_bytes());
        }
        Ok(hashes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    fn usage_message<T>(result: Result<T, Error>) -> String {
        match result {
            Err(Error::Usage(message)) => message,
            Err(other) => panic!("expected a usage error, got {other:?}"),
            Ok(_) => panic!("expected a usage error, got success"),
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
        sink.set_size(8192).unwrap();
        sink.write(0, b"restored data").unwrap();
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

    #[test]
    fn force_replaces_a_regular_file_with_the_restore() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vda.raw");
        fs::write(&path, b"old content that is longer").unwrap();
        let mut sink = FileSink::create(&path, true).unwrap();
        sink.set_size(4).unwrap();
        sink.write(0, b"new!").unwrap();
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

    #[test]
    fn a_failed_restore_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vda.raw");
        let mut sink = FileSink::create(&path, false).unwrap();
        sink.write(0, b"partial").unwrap();
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
    /// A ceph.conf (with its keyring) instead of the domain's monitors and key.
    #[serde(default)]
    pub ceph_conf: Option<PathBuf>,
    /// The Ceph user with `ceph_conf`.
    #[serde(default)]
    pub ceph_user: Option<String>,
    /// libvirt URI.
    #[serde(default = "default_connect")]
    pub connect: String,
    /// Check each restored image by reading it back whole (`RestoreOptions::read_back`).
    #[serde(default)]
    pub read_back: bool,
    /// Define the domain even if its saved XML gives it host resources
    /// (`libvirt::domain_rewrite::host_passthrough`); refused otherwise.
    #[serde(default)]
    pub allow_host_passthrough: bool,
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
/// `allow_host_passthrough`) before any image is written. If a disk or the definition fails,
/// the images made so far are removed and images replaced with `force` are renamed back.
pub fn restore_define(
    options: &DefineOptions,
    cancel: &CancelToken,
) -> Result<DefineReport, Error> {
    let valid = !options.name.is_empty()
        && options.name.len() <= 64
        && options
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !options.name.starts_with('.');
    if !valid {
        return Err(Error::Usage(format!(
            "{:?} cannot name the new domain and its images: use up to 64 letters, digits, '-', '_' or '.'",
            options.name
        )));
    }
    let repo = Repository::open(&options.repo)?;
    let uuid = repo
        .resolve_domain(&options.domain)
        .map_err(|e| Error::Usage(e.to_string()))?;
    let (_, manifest) = repo.find_backup(&uuid, options.backup.as_deref())?;
    let libvirt = HypervisorConnection::open(&options.connect)?;
    if libvirt.domain_exists(&options.name) {
        return Err(Error::Usage(format!(
            "a domain named {} exists already; choose another name",
            options.name
        )));
    }
    // Every image name and the new XML, checked, before any image is written: a refusal
    // leaves nothing behind.
    let mut images = std::collections::HashMap::new();
    let mut restores = Vec::new();
    for disk in &manifest.disks {
        let image = format!(
            "{}-{}",
            options.name,
            crate::repo::layout::safe_component(&disk.target)
        );
        let pool = options.pool.clone().unwrap_or_else(|| disk.pool.clone());
        let spec = match &disk.namespace {
            Some(ns) => format!("{pool}/{ns}/{image}"),
            None => format!("{pool}/{image}"),
        };
        images.insert(disk.target.clone(), spec);
        restores.push(RestoreOptions {
            repo: options.repo.clone(),
            domain: uuid.clone(),
            disk: Some(disk.target.clone()),
            backup: Some(manifest.backup_id.clone()),
            to: RestoreTarget::Rbd {
                pool,
                namespace: disk.namespace.clone(),
                image,
            },
            force: options.force,
            ceph_conf: options.ceph_conf.clone(),
            ceph_user: options.ceph_user.clone(),
            connect: options.connect.clone(),
            restic: None,
            read_back: options.read_back,
        });
    }
    let rewritten = crate::libvirt::domain_rewrite::rewrite_for_restore(
        &manifest.domain.xml,
        &options.name,
        &images,
    )?;
    if !options.allow_host_passthrough {
        let findings = crate::libvirt::domain_rewrite::host_passthrough(
            &rewritten.xml,
            &options.name,
            &libvirt.host_emulators()?,
        )?;
        if !findings.is_empty() {
            return Err(Error::HostPassthrough {
                domain: manifest.domain.name.clone(),
                name: options.name.clone(),
                findings,
            });
        }
    }
    let mut disks = Vec::new();
    let mut placed = Vec::new();
    let defined = restores
        .iter()
        .try_for_each(|restore| {
            let (report, image) = restore_disk(restore, cancel)?;
            disks.push(report);
            placed.extend(image);
            Ok::<_, Error>(())
        })
        .and_then(|()| Ok(libvirt.define(&options.name, &rewritten.xml)?));
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
