//! Restoring a disk from a backup chain into a file or an RBD image.
//!
//! The full backup at the start of the chain is copied block by block (each block checked
//! against its hash as it is read; holes stay holes), then each incremental's rbd diff is
//! checked against its checksum and replayed. The result is read back and compared, block by
//! block, with the content checksum of the chosen backup: a restore either reproduces that
//! exact content or fails, never "succeeds" with other data. It is written under a temporary
//! name and renamed into place only then.

use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, Read};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::ceph::{CephTimeouts, ClusterAddress, PoolContext, RadosCluster, RbdImage};
use crate::error::Error;
use crate::libvirt::{parse_domain_xml, DiskEntry, HypervisorConnection};
use crate::plan::{ContentHasher, HASH_BLOCK_SIZE};
use crate::repo::chain::{data_in, verify_stored_file, ChainLink, RawBlockReader};
use crate::repo::image_file::nonzero_runs;
use crate::repo::manifest::sync_dir;
use crate::repo::rbd_diff::{DiffRecord, RbdDiffReader};
use crate::repo::{RepoError, Repository};

use super::ceph_session::cluster_address;
use super::export::image_block_table;
use super::restic::{list_restic, ResticTarget};
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
}

/// A place blocks are written to: a sparse file or an RBD image.
trait BlockSink {
    fn set_size(&mut self, size: u64) -> Result<(), Error>;
    fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), Error>;
    fn zero(&mut self, offset: u64, length: u64) -> Result<(), Error>;
    /// Hash of every block of the result, for the final check.
    fn block_hashes(&mut self, size: u64) -> Result<Vec<[u8; 32]>, Error>;
}

/// Restores one disk.
pub fn restore(options: &RestoreOptions, cancel: &CancelToken) -> Result<RestoreReport, Error> {
    if let Some(restic) = &options.restic {
        return restore_from_restic(options, restic, cancel);
    }
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

    let (target_text, bytes_written) = restore_into(
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
        |sink| replay(&chain, sink, &expected, cancel),
    )?;
    Ok(RestoreReport {
        domain: manifest.domain.name.clone(),
        backup_id: manifest.backup_id.clone(),
        disk: target,
        chain: chain.iter().map(|l| l.backup_id.clone()).collect(),
        target: target_text,
        size: last.disk.size,
        bytes_written,
        checksum: last.disk.checksum.clone(),
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Restores a disk from a restic snapshot made by this tool (`restic dump` streamed into the
/// target, zeros left as holes). restic checks its own data while it reads; there is no chain.
fn restore_from_restic(
    options: &RestoreOptions,
    restic: &ResticTarget,
    cancel: &CancelToken,
) -> Result<RestoreReport, Error> {
    let started = Instant::now();
    let mut candidates = list_restic(restic, Some(&options.domain))?;
    if let Some(disk) = &options.disk {
        candidates.retain(|s| &s.disk == disk);
    }
    let wanted = options.backup.as_deref().filter(|b| *b != "latest");
    let chosen = match wanted {
        Some(id) => candidates.into_iter().find(|s| s.id.starts_with(id)),
        None => {
            let disks: std::collections::BTreeSet<&str> =
                candidates.iter().map(|s| s.disk.as_str()).collect();
            if disks.len() > 1 {
                return Err(Error::Usage(format!(
                    "the restic repository holds several disks of {} ({}); choose one with --disk",
                    options.domain,
                    disks.into_iter().collect::<Vec<_>>().join(", ")
                )));
            }
            candidates.pop()
        }
    }
    .ok_or_else(|| {
        Error::Usage(format!(
            "no restic snapshot of {} matches; `virt-rbd-backup list --restic-repo ...` shows them",
            options.domain
        ))
    })?;

    let listing = restic.run(&["ls", "--json", &chosen.id])?;
    let path = format!("/{}", chosen.file);
    let size = String::from_utf8_lossy(&listing)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v.get("path").and_then(|p| p.as_str()) == Some(path.as_str()))
        .and_then(|v| v.get("size").and_then(|s| s.as_u64()))
        .ok_or_else(|| {
            Error::Restic(format!(
                "restic snapshot {} holds no file {path}",
                chosen.id
            ))
        })?;
    let (target_text, bytes_written) = restore_into(
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
                return Err(Error::Restic(format!(
                    "restic dump {} gave {offset} bytes, the file has {size}",
                    chosen.id
                )));
            }
            Ok(written)
        },
    )?;
    Ok(RestoreReport {
        domain: chosen.domain.clone(),
        backup_id: chosen.id.clone(),
        disk: chosen.disk.clone(),
        chain: vec![chosen.id.clone()],
        target: target_text,
        size,
        bytes_written,
        checksum: String::new(),
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Writes a restore into `options.to` under a temporary name, with `fill` doing the writing,
/// and renames it into place only when `fill` succeeded. Returns the target's text and what
/// `fill` returned.
fn restore_into(
    options: &RestoreOptions,
    size: u64,
    cluster: impl FnOnce() -> Result<(ClusterAddress, Option<crate::secret::SecretString>), Error>,
    fill: impl FnOnce(&mut dyn BlockSink) -> Result<u64, Error>,
) -> Result<(String, u64), Error> {
    match &options.to {
        RestoreTarget::File { path } => {
            let mut sink = FileSink::create(path, options.force)?;
            sink.set_size(size)?;
            let written = fill(&mut sink)?;
            sink.commit()?;
            Ok((path.display().to_string(), written))
        }
        RestoreTarget::Rbd {
            pool,
            namespace,
            image,
        } => {
            let (address, key) = cluster()?;
            let cluster = RadosCluster::connect(&address, key.as_ref(), CephTimeouts::default())?;
            let ctx = cluster.open_pool(pool, namespace.as_deref())?;
            let spec = ctx.image_spec(image);
            if ctx.image_exists(image)? && !options.force {
                return Err(Error::Usage(format!(
                    "image {spec} exists; use --force to replace it"
                )));
            }
            let tmp = format!("{image}.virt-rbd-backup-restoring");
            if ctx.image_exists(&tmp)? {
                ctx.remove_image(&tmp)?;
            }
            ctx.create_image(&tmp, size)?;
            let result = {
                let handle = RbdImage::open(&ctx, &tmp)?;
                let mut sink = RbdSink { image: &handle };
                fill(&mut sink)
            };
            match result {
                Ok(written) => {
                    replace_image(&ctx, &tmp, image)?;
                    Ok((format!("rbd:{spec}"), written))
                }
                Err(e) => {
                    if let Err(cleanup) = ctx.remove_image(&tmp) {
                        log::error!(
                            "could not remove the partial restore {}: {cleanup}",
                            ctx.image_spec(&tmp)
                        );
                    }
                    Err(e)
                }
            }
        }
    }
}

fn replace_image(ctx: &PoolContext<'_>, tmp: &str, image: &str) -> Result<(), Error> {
    if ctx.image_exists(image)? {
        ctx.remove_image(image)?;
    }
    ctx.rename_image(tmp, image)?;
    Ok(())
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

/// Replays `chain` into `sink` and checks the result against `expected`. Returns data bytes written.
fn replay(
    chain: &[ChainLink],
    sink: &mut dyn BlockSink,
    expected: &[[u8; 32]],
    cancel: &CancelToken,
) -> Result<u64, Error> {
    let mut written = 0u64;
    for link in chain {
        if cancel.is_cancelled() {
            return Err(Error::Cancelled);
        }
        match link.disk.format.as_str() {
            "raw" => {
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
            _ => {
                verify_stored_file(link)?;
                let path = link.data_path();
                let (file, _) = crate::repo::stored_file::open_stored_file(&path, None)?;
                let buffered = BufReader::with_capacity(1 << 20, file);
                let stream: Box<dyn Read> = if link.disk.format.ends_with("+zstd") {
                    Box::new(zstd::Decoder::with_buffer(buffered).map_err(|source| {
                        RepoError::Io {
                            action: "decompress",
                            path: path.clone(),
                            source,
                        }
                    })?)
                } else {
                    Box::new(buffered)
                };
                let mut reader = RbdDiffReader::new(stream)?;
                let expected_base = link.disk.base_snapshot.as_ref().map(|b| b.name.as_str());
                if reader.from_snap() != expected_base
                    || reader.to_snap() != Some(link.disk.snapshot.name.as_str())
                {
                    return Err(RepoError::Corrupt {
                        path,
                        offset: None,
                        message: format!(
                            "it is a diff from {:?} to {:?}, but the chain needs {:?} to {:?}",
                            reader.from_snap(),
                            reader.to_snap(),
                            expected_base,
                            link.disk.snapshot.name
                        ),
                    }
                    .into());
                }
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
    let actual = sink.block_hashes(size)?;
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

/// A sparse file written under a temporary name and renamed on `commit`.
struct FileSink {
    file: File,
    tmp: PathBuf,
    path: PathBuf,
    committed: bool,
}

impl FileSink {
    fn create(path: &Path, force: bool) -> Result<Self, Error> {
        if path.exists() && !force {
            return Err(Error::Usage(format!(
                "{} exists; use --force to replace it",
                path.display()
            )));
        }
        let mut tmp_name = path
            .file_name()
            .map(|n| n.to_os_string())
            .ok_or_else(|| Error::Usage(format!("{} names no file", path.display())))?;
        tmp_name.push(".virt-rbd-backup-restoring");
        let tmp = path.with_file_name(tmp_name);
        let _ = fs::remove_file(&tmp);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|source| RepoError::Io {
                action: "create",
                path: tmp.clone(),
                source,
            })?;
        Ok(FileSink {
            file,
            tmp,
            path: path.to_path_buf(),
            committed: false,
        })
    }

    fn io(&self, action: &'static str) -> impl FnOnce(std::io::Error) -> Error + '_ {
        move |source| {
            RepoError::Io {
                action,
                path: self.tmp.clone(),
                source,
            }
            .into()
        }
    }

    fn commit(mut self) -> Result<(), Error> {
        self.file.sync_all().map_err(self.io("fsync"))?;
        fs::rename(&self.tmp, &self.path).map_err(|source| RepoError::Io {
            action: "rename into place",
            path: self.path.clone(),
            source,
        })?;
        self.committed = true;
        if let Some(parent) = self.path.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_dir(parent)?;
        }
        Ok(())
    }
}

impl Drop for FileSink {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

impl BlockSink for FileSink {
    fn set_size(&mut self, size: u64) -> Result<(), Error> {
        self.file.set_len(size).map_err(self.io("resize"))
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), Error> {
        self.file
            .write_all_at(data, offset)
            .map_err(self.io("write"))
    }

    fn zero(&mut self, offset: u64, length: u64) -> Result<(), Error> {
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
        let mut hasher = ContentHasher::new(size);
        let mut buf = Vec::new();
        for index in 0..hasher.block_count() {
            let offset = index * HASH_BLOCK_SIZE;
            let len = hasher.block_len(index);
            if data_in(&self.file, offset, len).map_err(self.io("seek in"))? {
                buf.resize(len as usize, 0);
                self.file
                    .read_exact_at(&mut buf, offset)
                    .map_err(self.io("read back"))?;
                hasher.add_block(index, &buf);
            }
        }
        Ok(hasher.finish_with_hashes().1)
    }
}

/// An RBD image being restored.
struct RbdSink<'a> {
    image: &'a RbdImage<'a>,
}

impl BlockSink for RbdSink<'_> {
    fn set_size(&mut self, size: u64) -> Result<(), Error> {
        if self.image.info()?.size != size {
            self.image.resize(size)?;
        }
        Ok(())
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), Error> {
        Ok(self.image.write_at(offset, data)?)
    }

    fn zero(&mut self, offset: u64, length: u64) -> Result<(), Error> {
        Ok(self.image.discard(offset, length)?)
    }

    fn block_hashes(&mut self, size: u64) -> Result<Vec<[u8; 32]>, Error> {
        self.image.flush()?;
        image_block_table(self.image, size, false)
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
    let mut images = std::collections::HashMap::new();
    let mut disks = Vec::new();
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
        let report = restore(
            &RestoreOptions {
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
            },
            cancel,
        )?;
        images.insert(disk.target.clone(), spec);
        disks.push(report);
    }
    let rewritten = crate::libvirt::domain_rewrite::rewrite_for_restore(
        &manifest.domain.xml,
        &options.name,
        &images,
    )?;
    let new_uuid = libvirt.define(&options.name, &rewritten.xml)?;
    Ok(DefineReport {
        name: options.name.clone(),
        uuid: new_uuid,
        disks,
        dropped_disks: rewritten.dropped_disks,
    })
}
