//! A backup's disk as one read-only file in a FUSE filesystem, for machines without the `nbd`
//! kernel module: `mount` attaches that file to a loop device (`losetup --read-only
//! --partscan`) and mounts the filesystem found on it.
//!
//! The filesystem has a root folder with one file, [`DISK_FILE`], of the image's size (mode
//! 0400, root's). Reads go straight to the [`ExtentSource`] (a `ChainImage`, verified block by
//! block): a block that fails its checksum is `EIO` to the reader and a log line naming the
//! file and offset, never other bytes. Opening the file for writing is `EROFS`.
//!
//! Mounted with the pure-Rust `fuser` crate, which as root mounts with `mount(2)` directly
//! (no `fusermount` needed); unmounted when the [`FuseDisk`] is dropped.

use std::ffi::OsStr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner,
    MountOption, OpenAccMode, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEntry,
    ReplyOpen, Request,
};

use crate::repo::extent_source::ExtentSource;

/// The name of the one file.
pub const DISK_FILE: &str = "disk";
const DISK_INO: u64 = 2;
/// Attributes never change: the kernel may cache them for long.
const TTL: Duration = Duration::from_secs(3600);

struct DiskFs {
    source: Arc<dyn ExtentSource>,
    name: String,
}

impl DiskFs {
    fn attr(&self, ino: u64) -> FileAttr {
        let (kind, perm, size, nlink) = if ino == DISK_INO {
            (FileType::RegularFile, 0o400, self.source.size(), 1)
        } else {
            (FileType::Directory, 0o500, 0, 2)
        };
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: UNIX_EPOCH,
            mtime: UNIX_EPOCH,
            ctime: UNIX_EPOCH,
            crtime: UNIX_EPOCH,
            kind,
            perm,
            nlink,
            uid: 0,
            gid: 0,
            rdev: 0,
            flags: 0,
            blksize: 4096,
        }
    }
}

impl Filesystem for DiskFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        if u64::from(parent) == 1 && name == DISK_FILE {
            reply.entry(&TTL, &self.attr(DISK_INO), Generation(0));
        } else {
            reply.error(Errno::ENOENT);
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match u64::from(ino) {
            1 | DISK_INO => reply.attr(&TTL, &self.attr(u64::from(ino))),
            _ => reply.error(Errno::ENOENT),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if u64::from(ino) != DISK_INO {
            reply.error(Errno::EISDIR);
        } else if !matches!(flags.acc_mode(), OpenAccMode::O_RDONLY) {
            reply.error(Errno::EROFS);
        } else {
            reply.opened(FileHandle(0), FopenFlags::empty());
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        if u64::from(ino) != DISK_INO {
            reply.error(Errno::EISDIR);
            return;
        }
        let end = offset
            .saturating_add(u64::from(size))
            .min(self.source.size());
        if offset >= end {
            reply.data(&[]);
            return;
        }
        let mut buf = vec![0u8; (end - offset) as usize];
        match self.source.read_at(offset, &mut buf) {
            Ok(()) => reply.data(&buf),
            Err(e) => {
                log::error!(
                    "FUSE file of {}: read of {} bytes at offset {offset} failed: {e}",
                    self.name,
                    end - offset
                );
                reply.error(Errno::EIO);
            }
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        if u64::from(ino) != 1 {
            reply.error(Errno::ENOTDIR);
            return;
        }
        let entries = [
            (1, FileType::Directory, "."),
            (1, FileType::Directory, ".."),
            (DISK_INO, FileType::RegularFile, DISK_FILE),
        ];
        for (i, (ino, kind, name)) in entries.into_iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(ino), (i + 1) as u64, kind, name) {
                break;
            }
        }
        reply.ok();
    }
}

/// A mounted FUSE filesystem holding a disk image file; unmounted on drop.
pub struct FuseDisk {
    session: Option<fuser::BackgroundSession>,
}

impl FuseDisk {
    /// Mounts at `mountpoint` (an empty folder) a filesystem whose file [`DISK_FILE`] reads
    /// `source`. `name` names it in logs and in the mount table (`virt-rbd-backup:NAME`).
    pub fn mount(
        source: Arc<dyn ExtentSource>,
        name: &str,
        mountpoint: &Path,
    ) -> std::io::Result<Self> {
        let mut config = fuser::Config::default();
        config.mount_options = vec![
            MountOption::RO,
            MountOption::FSName(format!("virt-rbd-backup:{name}")),
            MountOption::Subtype("virt-rbd-backup".into()),
            MountOption::NoExec,
            MountOption::NoSuid,
            MountOption::NoDev,
        ];
        // Several threads, so a loop device's concurrent reads are served in parallel.
        config.n_threads = Some(4);
        let fs = DiskFs {
            source,
            name: name.to_string(),
        };
        let session = fuser::spawn_mount(fs, mountpoint, &config)?;
        Ok(FuseDisk {
            session: Some(session),
        })
    }

    /// Unmounts and waits for the filesystem's threads.
    pub fn unmount(mut self) -> std::io::Result<()> {
        match self.session.take() {
            Some(s) => s.umount_and_join(),
            None => Ok(()),
        }
    }
}

impl Drop for FuseDisk {
    fn drop(&mut self) {
        if let Some(s) = self.session.take() {
            if let Err(e) = s.umount_and_join() {
                log::warn!("could not unmount a FUSE disk file: {e}");
            }
        }
    }
}
