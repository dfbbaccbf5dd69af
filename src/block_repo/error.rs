//! Errors of the block repository, each naming the store and the object or backup concerned.

use crate::objstore::object_format::FormatError;
use crate::objstore::StoreError;

/// What went wrong in a block-layout repository.
#[derive(Debug, thiserror::Error)]
pub enum BlockRepoError {
    /// The store failed (network, permissions, a missing object).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// An object does not open: a wrong key, a changed or moved object, damage.
    #[error(transparent)]
    Format(#[from] FormatError),
    /// No repository at this location.
    #[error("{store} is not a virt-rbd-backup block repository (no 'config' object); create one with `virt-rbd-backup init --layout blocks`, or check the location")]
    NotARepository { store: String },
    /// `init` on a location that already holds a repository.
    #[error("{store} already holds a repository; nothing was changed")]
    AlreadyExists { store: String },
    /// An encrypted repository opened without a key file.
    #[error(
        "{store} is encrypted: give its key file (repo_key_file in config.toml, --repo-key-file)"
    )]
    KeyNeeded { store: String },
    /// A key file whose wrapped data key is not in the repository.
    #[error("the key file with id {key_id} does not open {store} (no keys/{key_id} there): a key file of another repository, or one that was rotated out")]
    WrongKey { store: String, key_id: String },
    /// A key file given for a repository that is not encrypted.
    #[error("{store} is not encrypted, but a key file was given: refused, so that nobody believes these backups are encrypted; drop the key file option, or back up into an encrypted repository")]
    NotEncrypted { store: String },
    /// An object opened but its content does not make sense.
    #[error("{store}: object {object} is damaged: {reason}")]
    Damaged {
        store: String,
        object: String,
        reason: String,
    },
    /// A block a manifest names is not in the store.
    #[error("{store}: block {object} named by backup {backup} (disk {disk}) is missing")]
    MissingBlock {
        store: String,
        object: String,
        backup: String,
        disk: String,
    },
    /// No such backup.
    #[error("{store}: no backup {backup} of domain {domain}")]
    NoSuchBackup {
        store: String,
        domain: String,
        backup: String,
    },
    /// A prune holds the repository and did not let go in time.
    #[error("{store}: a prune ({holder}) holds the repository and did not finish within {waited_s} s; run the backup again later")]
    PruneRunning {
        store: String,
        holder: String,
        waited_s: u64,
    },
    /// This run's lock was removed by someone else (it was found stale): blocks it reused may
    /// have been swept, so nothing it wrote is committed.
    #[error("{store}: this run's lock {lock} was removed by another host (it took the run for dead); nothing was committed, run the backup again")]
    LockLost { store: String, lock: String },
    /// No backups of a domain of that name or UUID.
    #[error("no backups of domain {domain} in {store}; give a name or UUID that `list` shows")]
    NoBackupsOfDomain { store: String, domain: String },
    /// Backups of several domains carry the name.
    #[error("more than one domain in {store} is named {name}: give its UUID")]
    AmbiguousDomain { store: String, name: String },
    /// A backup has no disk of that target.
    #[error("backup {backup} of {domain} in {store} has no disk {target}; it has {}", disks.join(", "))]
    NoSuchDisk {
        store: String,
        domain: String,
        backup: String,
        target: String,
        disks: Vec<String>,
    },
    /// A new block repository was asked for in a folder that holds something else.
    #[error("{store} is not empty and holds no repository: refused, so that a typo never fills a random folder")]
    FolderNotEmpty { store: String },
    /// The location holds the other layout than the one asked for.
    #[error("repository {store} has the {found} layout, not the {asked} layout asked for (layout option); s3:// holds only the blocks layout")]
    LayoutMismatch {
        store: String,
        found: &'static str,
        asked: &'static str,
    },
    /// The key file cannot be used (missing, readable by others, not a key file).
    #[error("repository key file {path}: {reason}")]
    KeyFile { path: String, reason: String },
    /// Another host created the repository at the same moment, with another key.
    #[error("{store} was created by another host at the same moment and does not open with this host's key file ({reason}); give every host the same key file, then run again")]
    LostCreation { store: String, reason: String },
    /// `rekey` cannot do what was asked.
    #[error("rekey of {store}: {reason}")]
    Rekey { store: String, reason: String },
    /// A local file (a restore target) failed.
    #[error("{path}: {source}")]
    File {
        path: String,
        source: std::io::Error,
    },
    /// Cancelled (a signal).
    #[error("cancelled")]
    Cancelled,
}
