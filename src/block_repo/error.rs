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
