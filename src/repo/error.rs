//! Errors of the repository layer; each names the path involved.

use std::path::PathBuf;

use thiserror::Error;

/// What went wrong reading or writing the repository.
#[derive(Debug, Error)]
pub enum RepoError {
    /// An I/O error on a path.
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// The folder is not a repository and not empty.
    #[error("{path} is not empty and holds no virt-rbd-backup repository (no {marker}); choose an empty or new folder with --repo")]
    NotARepository { path: PathBuf, marker: &'static str },
    /// A manifest or marker that cannot be used.
    #[error("unusable manifest {path}: {message}")]
    BadManifest { path: PathBuf, message: String },
    /// A manifest written by a newer version of the tool: not damage, so never quarantined or
    /// removed; only a newer build can read it.
    #[error("{path} was written by a newer virt-rbd-backup (manifest version {version}; this one reads up to {supported}); upgrade virt-rbd-backup to use this backup")]
    NewerManifest {
        path: PathBuf,
        version: u64,
        supported: u32,
    },
    /// A repository path that is a symbolic link, FIFO, device (or a folder where a file must
    /// be): refused without reading it (it could hang, never end, or be someone else's file).
    #[error("{path} is {found}, where the repository holds only plain files and folders; it is damaged or was tampered with (repository paths are never followed through links nor read from FIFOs or devices)")]
    NotARegularFile { path: PathBuf, found: &'static str },
    /// A repository file larger than what it can legitimately hold: refused before it is read.
    #[error("{path} holds {size} bytes, more than the {limit} it can hold; the file is damaged or is not what its name says")]
    TooLarge {
        path: PathBuf,
        size: u64,
        limit: u64,
    },
    /// Something asked for is not in the repository.
    #[error("{what}")]
    NotFound { what: String },
    /// No backup in the repository is of a domain of that name or UUID.
    #[error("no backup of a domain named or with UUID {name:?} in {}", repo.display())]
    NoSuchDomain { name: String, repo: PathBuf },
    /// Backups of several domains (UUIDs) carry the name.
    #[error("several domains were named {name:?} ({}); give the UUID", uuids.join(", "))]
    AmbiguousDomain { name: String, uuids: Vec<String> },
    /// The domain has no backup `id` (or, for `None`, no complete backup at all).
    #[error("{}", match id {
        Some(id) => format!("no backup {id} of domain {uuid}; `virt-rbd-backup list` shows the backups"),
        None => format!("no complete backup of domain {uuid}"),
    })]
    NoSuchBackup { uuid: String, id: Option<String> },
    /// A backup has no disk of that target name.
    #[error("backup {backup_id} (in {}) has no disk {target:?}", folder.display())]
    NoSuchDisk {
        backup_id: String,
        folder: PathBuf,
        target: String,
    },
    /// An incremental's parent backup is missing or unreadable.
    #[error("backup {backup_id} of disk {target} needs backup {parent_id}, which is missing or unreadable: the chain is broken")]
    BrokenChain {
        backup_id: String,
        target: String,
        parent_id: String,
    },
    /// A file's content does not match its checksum.
    #[error("{path} is corrupt{}: {message}", offset.map(|o| format!(" at offset {o}")).unwrap_or_default())]
    Corrupt {
        path: PathBuf,
        offset: Option<u64>,
        message: String,
    },
    /// Another run holds the domain's lock.
    #[error("another virt-rbd-backup run is backing up domain {domain} into this repository (lock {path} is held); wait for it to finish")]
    Locked { domain: String, path: PathBuf },
    /// An rbd diff stream that is not valid rbd diff v1; `offset` is the stream byte where
    /// the problem is.
    #[error("unusable rbd diff stream at byte {offset}: {problem}; the file is damaged or is not an `rbd export-diff` v1 stream")]
    BadRbdDiff {
        offset: u64,
        problem: super::rbd_diff::RbdDiffProblem,
    },
    /// A record the rbd diff writer refused, because the stream would be invalid; `offset` is
    /// the stream byte where it would have gone.
    #[error("refusing to write an invalid rbd diff record at stream byte {offset}: {problem}; this is a bug in virt-rbd-backup, please report it")]
    RbdDiffRefused {
        offset: u64,
        problem: super::rbd_diff::RbdDiffProblem,
    },
    /// A read of a served image that does not lie inside it.
    #[error(
        "a read of {length} bytes at offset {offset} goes past the end of the image ({size} bytes)"
    )]
    ReadPastEnd { offset: u64, length: u64, size: u64 },
    /// An I/O error while reading or writing an rbd diff stream, at stream byte `offset`.
    #[error("cannot {action} rbd diff stream at byte {offset}: {source}")]
    RbdDiffIo {
        action: &'static str,
        offset: u64,
        source: std::io::Error,
    },
}
