//! Instant access to a backup: a disk as it was at one backup, served over NBD or as a file in
//! a FUSE filesystem, without restoring it.
//!
//! Both paths read through `repo::extent_source::ExtentSource`: for the folder layout a
//! `repo::chain_image::ChainImage` (the chain is indexed once when the server starts (a read is then one `pread` per stored piece of a 4 MiB block), and every
//! block is checked against the backup's block table as it is read, so a client gets the
//! backup's bytes or an I/O error, never other bytes. Nothing is written to the repository and
//! no lock is taken: backups are immutable once committed. A `prune` that removes a served
//! backup does not disturb open servers (their files stay open), but a server started after
//! it cannot find the backup.

use std::path::Path;
use std::sync::Arc;

use serde::Serialize;

use crate::block_repo::block_image::BlockImage;
use crate::block_repo::BlockRepository;
use crate::error::Error;
use crate::fuse::FuseDisk;
use crate::nbd::server::ServerLimits;
use crate::nbd::{ListenAddress, NbdServer};
use crate::repo::chain_image::ChainImage;
use crate::repo::extent_source::ExtentSource;

use super::repo_access::{open_repository, AnyRepository, RepoAccess};
use super::restore::chosen_disk;

/// What is served.
#[derive(Debug, Clone, Serialize)]
pub struct ServedDisk {
    /// Domain name at the backup.
    pub domain: String,
    /// Domain UUID.
    pub uuid: String,
    /// The backup served.
    pub backup_id: String,
    /// The disk (target) served.
    pub disk: String,
    /// Image size in bytes.
    pub size: u64,
    /// The backups whose files make up the image, full first.
    pub chain: Vec<String>,
    /// Problems that do not stop serving (a diff file failing its own checksum: the blocks it
    /// reaches fail their reads).
    pub warnings: Vec<String>,
    /// Where clients connect (NBD) or the file to read (FUSE).
    pub address: String,
}

/// Opens disk `disk` (the only disk when `None`) of backup `backup` (`None`/"latest": the
/// latest) of `domain` (name or UUID) in the repository at `repo` (a folder, or with `access`
/// a block repository on a folder or S3).
pub fn open_backup_disk(
    repo: &Path,
    access: &RepoAccess,
    domain: &str,
    backup: Option<&str>,
    disk: Option<&str>,
) -> Result<(Arc<dyn ExtentSource>, ServedDisk), Error> {
    let repo = match open_repository(&repo.to_string_lossy(), access, false)? {
        AnyRepository::Folder(repo) => repo,
        AnyRepository::Blocks(blocks) => return open_block_disk(blocks, domain, backup, disk),
    };
    let uuid = repo.resolve_domain(domain)?;
    let (folder, manifest) = repo.find_backup(&uuid, backup)?;
    let target = chosen_disk(
        disk,
        manifest.disks.iter().map(|d| d.target.clone()).collect(),
        &manifest.backup_id,
        &manifest.domain.name,
    )?;
    let chain = repo.disk_chain(&uuid, &folder, &manifest, &target)?;
    let image = ChainImage::open(&chain)?;
    for w in image.warnings() {
        log::warn!("{w}");
    }
    let info = ServedDisk {
        domain: manifest.domain.name.clone(),
        uuid,
        backup_id: manifest.backup_id.clone(),
        disk: target,
        size: image.size(),
        chain: chain.iter().map(|l| l.backup_id.clone()).collect(),
        warnings: image.warnings().to_vec(),
        address: String::new(),
    };
    Ok((Arc::new(image), info))
}

/// `open_backup_disk` on a block repository: the backup's block list is the whole image.
fn open_block_disk(
    repo: BlockRepository,
    domain: &str,
    backup: Option<&str>,
    disk: Option<&str>,
) -> Result<(Arc<dyn ExtentSource>, ServedDisk), Error> {
    let manifest = super::block_restore::find_backup(&repo, domain, backup)?;
    let target = chosen_disk(
        disk,
        manifest.disks.iter().map(|d| d.target.clone()).collect(),
        &manifest.backup_id,
        &manifest.domain.name,
    )?;
    let stored = repo.disk(&manifest, &target)?;
    let info = ServedDisk {
        domain: manifest.domain.name.clone(),
        uuid: manifest.domain.uuid.clone(),
        backup_id: manifest.backup_id.clone(),
        disk: target,
        size: stored.record.size,
        chain: vec![manifest.backup_id.clone()],
        warnings: Vec::new(),
        address: String::new(),
    };
    Ok((Arc::new(BlockImage::new(Arc::new(repo), stored)), info))
}

/// Starts an NBD server for a backup's disk (see `open_backup_disk`) on `listen`; the export
/// is named after the disk. The server runs on its own threads until closed or dropped.
pub fn serve_nbd(
    repo: &Path,
    access: &RepoAccess,
    domain: &str,
    backup: Option<&str>,
    disk: Option<&str>,
    listen: &str,
) -> Result<(NbdServer, ServedDisk), Error> {
    let listen: ListenAddress = listen.parse()?;
    let (image, mut info) = open_backup_disk(repo, access, domain, backup, disk)?;
    let server = NbdServer::start(image, &info.disk, &listen, ServerLimits::default())?;
    info.address = server.uri().to_string();
    log::info!(
        "serving disk {} of backup {} of {} ({} bytes) at {}",
        info.disk,
        info.backup_id,
        info.domain,
        info.size,
        info.address
    );
    Ok((server, info))
}

/// Mounts a FUSE filesystem at `mountpoint` whose one file is a backup's disk (see
/// `open_backup_disk`); unmounted when the returned `FuseDisk` is dropped.
pub fn serve_fuse(
    repo: &Path,
    access: &RepoAccess,
    domain: &str,
    backup: Option<&str>,
    disk: Option<&str>,
    mountpoint: &Path,
) -> Result<(FuseDisk, ServedDisk), Error> {
    let (image, mut info) = open_backup_disk(repo, access, domain, backup, disk)?;
    let name = format!("{}-{}-{}", info.domain, info.disk, info.backup_id);
    let fuse = FuseDisk::mount(image, &name, mountpoint).map_err(|source| {
        let hint = if !Path::new("/dev/fuse").exists() {
            " (/dev/fuse is missing: load the fuse module, `modprobe fuse`)"
        } else {
            ""
        };
        Error::Usage(format!(
            "cannot mount a FUSE filesystem at {}: {source}{hint}",
            mountpoint.display()
        ))
    })?;
    info.address = mountpoint
        .join(crate::fuse::DISK_FILE)
        .display()
        .to_string();
    Ok((fuse, info))
}
