//! Opening files of the repository for reading without trusting what is there.
//!
//! A repository is a folder other people and programs can write into (a restore host, an NFS
//! export, an attacker with access to the backup volume, a confused operator). Whatever a
//! path of the repository turns out to be, reading it must end quickly with an error that names
//! the path, never hang or exhaust memory:
//! - a symbolic link is not followed (`O_NOFOLLOW`): `manifest.json -> /dev/zero` or
//!   `vda.blocks -> /etc/shadow` is refused, not read;
//! - the file is opened with `O_NONBLOCK`, so a FIFO does not block the open until a writer
//!   appears, and then `fstat` must show a regular file (a FIFO, socket or device is refused);
//! - its size is checked against a bound the caller derives from what the file must hold (the
//!   manifest's fixed limit, the block count of the image) before anything is read into memory.
//!
//! `O_NONBLOCK` is harmless on regular files (Linux ignores it for them), so the descriptor is
//! used as it is. Only the last path component is protected from symbolic links; the
//! repository root (an operator's choice, often a link to a mount) and the domain folders are
//! followed as the operator laid them out.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

use super::error::RepoError;

/// A manifest larger than this is refused before it is read. Real ones are a few KiB plus the
/// domain XML (rarely more than 100 KiB); libvirt itself caps XML documents at 10 MiB.
pub const MAX_MANIFEST_BYTES: u64 = 16 << 20;

/// The repository marker holds a format name, a version and an id.
pub const MAX_MARKER_BYTES: u64 = 64 << 10;

/// What a path turned out to be, for messages.
fn kind_of(file_type: std::fs::FileType) -> &'static str {
    if file_type.is_symlink() {
        "a symbolic link"
    } else if file_type.is_fifo() {
        "a FIFO"
    } else if file_type.is_socket() {
        "a socket"
    } else if file_type.is_char_device() {
        "a character device"
    } else if file_type.is_block_device() {
        "a block device"
    } else if file_type.is_dir() {
        "a folder"
    } else {
        "not a regular file"
    }
}

/// Opens `path` for reading if it is a regular file and not a symbolic link; returns the file
/// and its size. `max_bytes`, if given, is the largest size the caller accepts.
pub fn open_stored_file(path: &Path, max_bytes: Option<u64>) -> Result<(File, u64), RepoError> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|source| {
            // ELOOP is what O_NOFOLLOW gives for a symbolic link as the last component.
            if source.raw_os_error() == Some(libc::ELOOP) {
                RepoError::NotARegularFile {
                    path: path.to_path_buf(),
                    found: "a symbolic link",
                }
            } else {
                RepoError::Io {
                    action: "open",
                    path: path.to_path_buf(),
                    source,
                }
            }
        })?;
    let meta = file.metadata().map_err(|source| RepoError::Io {
        action: "stat",
        path: path.to_path_buf(),
        source,
    })?;
    if !meta.file_type().is_file() {
        return Err(RepoError::NotARegularFile {
            path: path.to_path_buf(),
            found: kind_of(meta.file_type()),
        });
    }
    let size = meta.len();
    if let Some(limit) = max_bytes {
        if size > limit {
            return Err(RepoError::TooLarge {
                path: path.to_path_buf(),
                size,
                limit,
            });
        }
    }
    Ok((file, size))
}

/// Reads a whole small file (a manifest, the marker) after `open_stored_file`'s checks.
pub fn read_stored_file(path: &Path, max_bytes: u64) -> Result<Vec<u8>, RepoError> {
    let (file, size) = open_stored_file(path, Some(max_bytes))?;
    let mut bytes = Vec::with_capacity(size as usize);
    // `take`: a file that grows after the fstat still cannot make us read more than the bound.
    std::io::Read::read_to_end(&mut std::io::Read::take(file, max_bytes + 1), &mut bytes).map_err(
        |source| RepoError::Io {
            action: "read",
            path: path.to_path_buf(),
            source,
        },
    )?;
    if bytes.len() as u64 > max_bytes {
        return Err(RepoError::TooLarge {
            path: path.to_path_buf(),
            size: bytes.len() as u64,
            limit: max_bytes,
        });
    }
    Ok(bytes)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    /// Makes a FIFO at `path` (no writer ever opens it).
    pub(crate) fn make_fifo(path: &Path) {
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: mkfifo with a valid NUL-terminated path; no memory is retained.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    }

    #[test]
    fn a_regular_file_opens_with_its_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"hello").unwrap();
        assert_eq!(open_stored_file(&path, Some(5)).unwrap().1, 5);
        assert_eq!(read_stored_file(&path, 5).unwrap(), b"hello");
        let err = read_stored_file(&path, 4).unwrap_err();
        assert!(
            matches!(
                err,
                RepoError::TooLarge {
                    size: 5,
                    limit: 4,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn a_symlink_to_dev_zero_a_fifo_and_a_device_are_refused_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
        let fifo = dir.path().join("fifo");
        make_fifo(&fifo);
        let started = Instant::now();
        for (path, found) in [
            (&link, "a symbolic link"),
            (&fifo, "a FIFO"),
            (&Path::new("/dev/zero").to_path_buf(), "a character device"),
            (&dir.path().to_path_buf(), "a folder"),
        ] {
            let err = read_stored_file(path, 1 << 20).unwrap_err();
            assert!(
                matches!(&err, RepoError::NotARegularFile { found: f, .. } if *f == found),
                "{}: {err}",
                path.display()
            );
            assert!(err.to_string().contains(&path.display().to_string()));
        }
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}
