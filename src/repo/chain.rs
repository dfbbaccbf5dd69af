//! Finding backups and the chain a disk's backup depends on, and reading stored files with
//! their checksums verified.

use std::fs::File;
use std::io::{BufReader, Read};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::block_table::read_block_table;
use super::error::RepoError;
use super::file_hashes;
use super::manifest::{BackupKind, BackupManifest, DiskFormat, DiskRecord};
use super::rbd_diff::RbdDiffReader;
use super::stored_file::open_stored_file;
use super::Repository;
use crate::plan::{ContentHasher, StreamHasher, HASH_BLOCK_SIZE};

/// One backup of one disk in a chain.
#[derive(Debug, Clone)]
pub struct ChainLink {
    /// The backup's folder.
    pub folder: PathBuf,
    /// Its id.
    pub backup_id: String,
    /// The disk's record.
    pub disk: DiskRecord,
}

impl ChainLink {
    /// The stored data file.
    pub fn data_path(&self) -> PathBuf {
        self.folder.join(&self.disk.file)
    }

    /// The verified block table of the content at this backup.
    pub fn block_table(&self) -> Result<Vec<[u8; 32]>, RepoError> {
        let name = self
            .disk
            .blocks_file
            .as_ref()
            .ok_or_else(|| RepoError::BadManifest {
                path: self.folder.join(super::layout::MANIFEST_FILE),
                message: format!("disk {} records no block table", self.disk.target),
            })?;
        read_block_table(
            &self.folder.join(name),
            &self.disk.checksum,
            self.disk.size.div_ceil(HASH_BLOCK_SIZE),
        )
    }
}

/// A link's rbd diff as a stream of records (decompressed when the link's file is zstd), after
/// checking that the diff goes from the snapshot the link's base names to the link's own: a diff
/// of other snapshots in its place would replay onto the wrong image without a word.
pub fn open_diff_link(link: &ChainLink) -> Result<RbdDiffReader<Box<dyn Read>>, RepoError> {
    let path = link.data_path();
    let (file, _) = open_stored_file(&path, None)?;
    let buffered = BufReader::with_capacity(1 << 20, file);
    let stream: Box<dyn Read> = if link.disk.format == DiskFormat::RbdDiffV1Zstd {
        Box::new(
            zstd::Decoder::with_buffer(buffered).map_err(|source| RepoError::Io {
                action: "decompress",
                path: path.clone(),
                source,
            })?,
        )
    } else {
        Box::new(buffered)
    };
    let reader = RbdDiffReader::new(stream)?;
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
        });
    }
    Ok(reader)
}

impl Repository {
    /// The UUID folder of a domain given by name or UUID.
    pub fn resolve_domain(&self, name_or_uuid: &str) -> Result<String, RepoError> {
        let uuids = self.domain_uuids()?;
        if uuids.iter().any(|u| u == name_or_uuid) {
            return Ok(name_or_uuid.to_string());
        }
        let mut found = Vec::new();
        for uuid in uuids {
            let named = self
                .backups_of(&uuid)?
                .into_iter()
                .any(|(_, m)| m.is_ok_and(|m| m.domain.name == name_or_uuid));
            if named {
                found.push(uuid);
            }
        }
        match found.len() {
            1 => Ok(found.remove(0)),
            0 => Err(RepoError::NoSuchDomain {
                name: name_or_uuid.to_string(),
                repo: self.root().to_path_buf(),
            }),
            _ => Err(RepoError::AmbiguousDomain {
                name: name_or_uuid.to_string(),
                uuids: found,
            }),
        }
    }

    /// A backup of a domain: `id`, or the latest when `None` or `"latest"`.
    pub fn find_backup(
        &self,
        uuid: &str,
        id: Option<&str>,
    ) -> Result<(PathBuf, BackupManifest), RepoError> {
        let backups = self.backups_of(uuid)?;
        let wanted = id.filter(|i| *i != "latest");
        let pick = match wanted {
            Some(id) => backups
                .into_iter()
                .find(|(path, _)| path.file_name().is_some_and(|n| n == id)),
            None => backups.into_iter().rev().find(|(_, m)| m.is_ok()),
        };
        match pick {
            Some((path, manifest)) => Ok((path, manifest?)),
            None => Err(RepoError::NoSuchBackup {
                uuid: uuid.to_string(),
                id: wanted.map(str::to_string),
            }),
        }
    }

    /// The chain of a disk's backups, from the full it starts with to `backup`.
    pub fn disk_chain(
        &self,
        uuid: &str,
        folder: &Path,
        manifest: &BackupManifest,
        target: &str,
    ) -> Result<Vec<ChainLink>, RepoError> {
        let find_disk = |m: &BackupManifest, folder: &Path| {
            m.disks
                .iter()
                .find(|d| d.target == target)
                .cloned()
                .ok_or_else(|| RepoError::NoSuchDisk {
                    backup_id: m.backup_id.clone(),
                    folder: folder.to_path_buf(),
                    target: target.to_string(),
                })
        };
        let mut link = ChainLink {
            folder: folder.to_path_buf(),
            backup_id: manifest.backup_id.clone(),
            disk: find_disk(manifest, folder)?,
        };
        let mut chain = Vec::new();
        // A chain cannot be longer than the number of backups: guards against a loop in tampered manifests.
        let limit = self.backups_of(uuid)?.len() + 1;
        while link.disk.kind == BackupKind::Incremental {
            if chain.len() > limit {
                return Err(RepoError::BadManifest {
                    path: folder.to_path_buf(),
                    message: "the chain of parents loops".into(),
                });
            }
            let parent_id = link.disk.parent_backup.clone().unwrap_or_default();
            let (parent_folder, parent) =
                self.find_backup(uuid, Some(&parent_id))
                    .map_err(|_| RepoError::BrokenChain {
                        backup_id: link.backup_id.clone(),
                        target: target.to_string(),
                        parent_id: parent_id.clone(),
                    })?;
            let next = ChainLink {
                folder: parent_folder.clone(),
                backup_id: parent.backup_id.clone(),
                disk: find_disk(&parent, &parent_folder)?,
            };
            chain.push(link);
            link = next;
        }
        chain.push(link);
        chain.reverse();
        Ok(chain)
    }
}

/// Reads a raw image file block by block, checking each block against the block table.
pub struct RawBlockReader {
    file: File,
    path: PathBuf,
    size: u64,
    table: Vec<[u8; 32]>,
    zero: ContentHasher,
    next: u64,
}

impl RawBlockReader {
    /// Opens `link`'s raw file (its block table verified against the manifest).
    pub fn open(link: &ChainLink) -> Result<Self, RepoError> {
        let path = link.data_path();
        let (file, len) = open_stored_file(&path, None)?;
        if len != link.disk.size {
            return Err(RepoError::Corrupt {
                path,
                offset: None,
                message: format!("holds {len} bytes, the image had {}", link.disk.size),
            });
        }
        let table = link.block_table()?;
        Ok(RawBlockReader {
            file,
            path,
            size: link.disk.size,
            table,
            zero: ContentHasher::new(link.disk.size),
            next: 0,
        })
    }

    /// Reads the next block into `buf`; `None` at the end. `Some((offset, None))` means the
    /// block is a hole (all zeros, `buf` untouched); `Some((offset, Some(hash)))` means `buf`
    /// holds it and its bytes hash to `hash`, the block table's.
    #[allow(clippy::type_complexity)]
    pub fn next_block(
        &mut self,
        buf: &mut Vec<u8>,
    ) -> Result<Option<(u64, Option<[u8; 32]>)>, RepoError> {
        let index = self.next;
        if index >= self.table.len() as u64 {
            return Ok(None);
        }
        self.next += 1;
        let offset = index * HASH_BLOCK_SIZE;
        let len = self.zero.block_len(index);
        let has_data = data_in(&self.file, offset, len).map_err(|source| RepoError::Io {
            action: "seek in",
            path: self.path.clone(),
            source,
        })?;
        let actual = if has_data {
            buf.resize(len as usize, 0);
            self.file
                .read_exact_at(buf, offset)
                .map_err(|source| RepoError::Io {
                    action: "read",
                    path: self.path.clone(),
                    source,
                })?;
            *blake3::hash(buf).as_bytes()
        } else {
            self.zero.zero_block_hash(index)
        };
        if actual != self.table[index as usize] {
            return Err(self.mismatch(index));
        }
        Ok(Some((offset, has_data.then_some(actual))))
    }

    /// Image size.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Checks every block against the block table, on several threads
    /// (`file_hashes`): what `next_block` to the end checks, without handing out the data.
    pub fn check_all(self) -> Result<(), RepoError> {
        let hashes = file_hashes::hash_file(&self.file, self.size, file_hashes::Holes::Skip)
            .map_err(|(_, source)| RepoError::Io {
                action: "read",
                path: self.path.clone(),
                source,
            })?;
        match hashes.iter().zip(&self.table).position(|(a, b)| a != b) {
            Some(index) => Err(self.mismatch(index as u64)),
            None => Ok(()),
        }
    }

    /// The raw file (for a copy that checks the result instead).
    pub fn file(&self) -> &File {
        &self.file
    }

    /// The raw file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The error for a block that does not match its checksum.
    fn mismatch(&self, index: u64) -> RepoError {
        RepoError::Corrupt {
            path: self.path.clone(),
            offset: Some(index * HASH_BLOCK_SIZE),
            message: "the 4 MiB block there does not match its checksum".into(),
        }
    }

    /// The data extents of the raw file (offset, length), in order: where it is not a hole.
    /// A file system that cannot tell holes reports the whole file as one extent.
    pub fn data_extents(&self) -> Result<Vec<(u64, u64)>, RepoError> {
        let io = |source| RepoError::Io {
            action: "seek in",
            path: self.path.clone(),
            source,
        };
        let mut extents = Vec::new();
        let mut at = 0u64;
        while at < self.size {
            let Some(start) = seek(&self.file, at, libc::SEEK_DATA).map_err(io)? else {
                break;
            };
            if start >= self.size {
                break;
            }
            let end = seek(&self.file, start, libc::SEEK_HOLE)
                .map_err(io)?
                .unwrap_or(self.size)
                .min(self.size);
            extents.push((start, end - start));
            at = end;
        }
        Ok(extents)
    }
}

/// `lseek(fd, offset, whence)`; `None` for ENXIO (no data, or no hole, at or after `offset`).
fn seek(file: &File, offset: u64, whence: libc::c_int) -> std::io::Result<Option<u64>> {
    // SAFETY: lseek on a descriptor we own; no memory is involved.
    let pos = unsafe { libc::lseek(file.as_raw_fd(), offset as libc::off_t, whence) };
    if pos < 0 {
        let err = std::io::Error::last_os_error();
        return if err.raw_os_error() == Some(libc::ENXIO) {
            Ok(None)
        } else {
            Err(err)
        };
    }
    Ok(Some(pos as u64))
}

/// Whether `[offset, offset + len)` of `file` holds any data (not only a hole).
pub fn data_in(file: &File, offset: u64, len: u64) -> std::io::Result<bool> {
    Ok(seek(file, offset, libc::SEEK_DATA)?.is_some_and(|pos| pos < offset + len))
}

/// Checks a stored diff file against its size, checksum and chunk table; names the offset of
/// the first bad 4 MiB chunk.
pub fn verify_stored_file(link: &ChainLink) -> Result<(), RepoError> {
    let path = link.data_path();
    let expected = link.disk.stored_checksum().to_string();
    let chunk_table = match &link.disk.file_chunks {
        Some(name) => Some(read_block_table(
            &link.folder.join(name),
            &expected,
            link.disk.file_size.div_ceil(HASH_BLOCK_SIZE),
        )?),
        None => None,
    };
    // A regular file, not a link or FIFO: reading it ends. Its size is checked at the end with
    // its content (the file is streamed, never held in memory).
    let (mut file, _) = open_stored_file(&path, None)?;
    let mut hasher = StreamHasher::new();
    let mut buf = vec![0u8; HASH_BLOCK_SIZE as usize];
    let mut offset = 0u64;
    loop {
        let mut filled = 0;
        while filled < buf.len() {
            let n = file
                .read(&mut buf[filled..])
                .map_err(|source| RepoError::Io {
                    action: "read",
                    path: path.clone(),
                    source,
                })?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        if filled == 0 {
            break;
        }
        if let Some(table) = &chunk_table {
            let index = (offset / HASH_BLOCK_SIZE) as usize;
            if table.get(index) != Some(blake3::hash(&buf[..filled]).as_bytes()) {
                return Err(RepoError::Corrupt {
                    path,
                    offset: Some(offset),
                    message: "the 4 MiB chunk there does not match its checksum".into(),
                });
            }
        }
        hasher.update(&buf[..filled]);
        offset += filled as u64;
    }
    if offset != link.disk.file_size && link.disk.file_size != 0 {
        return Err(RepoError::Corrupt {
            path,
            offset: None,
            message: format!(
                "holds {offset} bytes, the manifest says {}",
                link.disk.file_size
            ),
        });
    }
    let (actual, _) = hasher.finish();
    if actual != expected {
        return Err(RepoError::Corrupt {
            path,
            offset: None,
            message: format!("checksum {actual} instead of {expected}"),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::manifest::tests::sample;
    use crate::repo::stored_file::tests::make_fifo;
    use crate::repo::DiskFormat;
    use std::time::{Duration, Instant};

    fn link_in(folder: &Path, file: &str, format: DiskFormat) -> ChainLink {
        let mut disk = sample().disks.remove(0);
        disk.file = file.into();
        disk.format = format;
        disk.size = 8 << 20;
        disk.file_size = 8 << 20;
        ChainLink {
            folder: folder.to_path_buf(),
            backup_id: "20261126T095243.007Z".into(),
            disk,
        }
    }

    #[test]
    fn data_files_that_are_links_to_dev_zero_or_fifos_fail_at_once() {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/dev/zero", dir.path().join("vda.raw")).unwrap();
        std::os::unix::fs::symlink("/dev/zero", dir.path().join("vda.rbdiff")).unwrap();
        make_fifo(&dir.path().join("vdb.raw"));
        make_fifo(&dir.path().join("vdb.rbdiff"));
        let started = Instant::now();
        for (file, format) in [
            ("vda.raw", DiskFormat::SparseRaw),
            ("vdb.raw", DiskFormat::SparseRaw),
        ] {
            let err = RawBlockReader::open(&link_in(dir.path(), file, format))
                .err()
                .expect("must fail");
            assert!(
                matches!(err, RepoError::NotARegularFile { .. }),
                "{file}: {err}"
            );
        }
        for file in ["vda.rbdiff", "vdb.rbdiff"] {
            let err =
                verify_stored_file(&link_in(dir.path(), file, DiskFormat::RbdDiffV1)).unwrap_err();
            assert!(
                matches!(err, RepoError::NotARegularFile { .. }),
                "{file}: {err}"
            );
        }
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}
