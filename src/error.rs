//! The crate-wide error, built from the layer errors.

use thiserror::Error;

/// Any error of virt-rbd-backup.
#[derive(Debug, Error)]
pub enum Error {
    /// From libvirt.
    #[error(transparent)]
    Libvirt(#[from] crate::libvirt::LibvirtError),
    /// From Ceph.
    #[error(transparent)]
    Ceph(#[from] crate::ceph::CephError),
    /// From the backup repository.
    #[error(transparent)]
    Repo(#[from] crate::repo::RepoError),
    /// From a repository in the block layout (`block_repo`).
    #[error(transparent)]
    BlockRepo(#[from] crate::block_repo::BlockRepoError),
    /// From the NBD server (`serve`).
    #[error(transparent)]
    Nbd(#[from] crate::nbd::NbdError),
    /// A restore target that cannot be written or placed (exists, is in use, appeared or
    /// changed meanwhile, a bad `--to`); exit status 2, nothing was replaced.
    #[error(transparent)]
    Target(#[from] crate::engine::restore::TargetError),
    /// Options that make no sense (exit status 2), in free form; conditions the code knows
    /// have their own variants.
    #[error("invalid option: {0}")]
    Usage(String),
    /// A domain, backup or disk named in the options that the repository does not hold (or a
    /// name that fits several domains): exit status 2, like `Usage`.
    #[error("invalid option: {0}")]
    NotInRepository(#[source] crate::repo::RepoError),
    /// A backup of several disks, and no `--disk` to say which.
    #[error("invalid option: backup {backup_id} of {domain} has {} disks ({}); choose one with --disk", disks.len(), disks.join(", "))]
    DiskNotChosen {
        /// The backup.
        backup_id: String,
        /// The domain's name.
        domain: String,
        /// Its disks' targets.
        disks: Vec<String>,
    },
    /// The domain XML saved with a backup names no RBD disk of that target, so it cannot say
    /// where the cluster is.
    #[error(
        "invalid option: the saved XML of {domain} has no RBD disk {target}; give --ceph-conf"
    )]
    NoRbdDiskInSavedXml {
        /// The domain's name.
        domain: String,
        /// The disk's target.
        target: String,
    },
    /// A name `restore --define` cannot give a domain and its images.
    #[error("invalid option: {name:?} cannot name the new domain and its images: use up to 64 letters, digits, '-', '_' or '.'")]
    BadDomainName {
        /// The name given.
        name: String,
    },
    /// No restic snapshot of the domain (and `--disk`, `--backup`) is in the restic repository.
    #[error("invalid option: no restic snapshot of {domain} matches; `virt-rbd-backup list --restic-repo ...` shows them")]
    NoResticSnapshot {
        /// The domain as given.
        domain: String,
    },
    /// The restic repository holds several disks of the domain, and no `--disk` says which.
    #[error("invalid option: the restic repository holds several disks of {domain} ({}); choose one with --disk", disks.join(", "))]
    ResticDiskNotChosen {
        /// The domain as given.
        domain: String,
        /// Its disks in the restic repository.
        disks: Vec<String>,
    },
    /// `prune DOMAIN` names no domain the repository has backups of.
    #[error("invalid option: no backups of domain {domain} in {}; give a name or UUID that `list` shows", repo.display())]
    NoBackupsOfDomain {
        /// The domain as given.
        domain: String,
        /// The repository.
        repo: std::path::PathBuf,
    },
    /// `restore --define` was given the name of a domain libvirt already has.
    #[error("a domain named {name} exists already; choose another name")]
    DomainExists {
        /// The name given.
        name: String,
    },
    /// The snapshots cannot be trusted to be consistent (the freeze outlived its timeout).
    #[error("inconsistent: {0}")]
    Inconsistent(String),
    /// A snapshot this run created was removed (or replaced) by someone else before its export
    /// ended: reads at a removed snapshot are not guaranteed to return its data (the OSDs trim
    /// its objects), so what was read cannot be trusted.
    #[error("snapshot {image}@{snapshot} was removed while this backup read it (`rbd snap rm` or `rbd snap purge` by someone else, or the image was deleted); what was read cannot be trusted, so this backup of the domain is discarded and no snapshot of it is kept; run the backup again")]
    SnapshotRemoved {
        /// pool/image.
        image: String,
        /// The snapshot's name.
        snapshot: String,
    },
    /// The domain stopped (shut down, destroyed, crashed) while its filesystems were frozen for
    /// the snapshots: there is nothing left to thaw, and the snapshots are discarded.
    #[error("domain {domain} stopped (shut down, destroyed or crashed) while its filesystems were frozen for the snapshots; nothing is left frozen, and this run's snapshots were removed; run the backup again (a shut-off domain is backed up without a freeze)")]
    DomainStoppedWhileFrozen {
        /// The domain's name.
        domain: String,
    },
    /// The host's freeze records (`engine::freeze_ledger`) could not be read.
    #[error("cannot read the freeze records under {}: {source}; guests left frozen by a killed run cannot be found (check the folder's permissions, or set VIRT_RBD_BACKUP_RUNTIME_DIR as the backup runs had it)", dir.display())]
    FreezeLedger {
        /// The folder of the records.
        dir: std::path::PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// `restore --define` refused a saved domain XML that gives the guest host resources
    /// (`libvirt::domain_rewrite::host_passthrough`); nothing was restored or defined.
    #[error("the saved XML of domain {domain} would give the new domain {name} resources of this host: {}; a copy defined with them could take devices, files or programs of the original or of this host, so nothing was restored; restore with --allow-host-passthrough to define it as saved (then check it with `virsh edit {name}` before starting it), or restore the disks with --to and define the domain by hand", findings.join("; "))]
    HostPassthrough {
        /// The domain the backup is of.
        domain: String,
        /// The new domain's name.
        name: String,
        /// What the XML hands over, one entry each.
        findings: Vec<String>,
    },
    /// A live restore failed while it ran (its steps are undone; `engine::live_restore`).
    #[error("live restore of {name} failed: {reason}")]
    LiveRestore {
        /// The new domain's name.
        name: String,
        /// What failed, and what to do.
        reason: String,
    },
    /// The domain is not backed up by this run, and that is no failure: another client holds
    /// its images (a backup elsewhere, or the domain runs on another host). The message is the
    /// operator's line.
    #[error("{0}")]
    Skipped(String),
    /// The cluster-side lock of an image was lost during the backup (its lease ran out): another
    /// host may have backed up or cleaned up the image meanwhile.
    #[error("lost the backup lock on image {image}: {reason}; this backup of the domain is discarded; run it again (is the cluster or this host overloaded?)")]
    ClusterLockLost {
        /// pool/image.
        image: String,
        /// Why.
        reason: String,
    },
    /// restic failed.
    #[error("{0}")]
    Restic(String),
    /// A restic snapshot that cannot be restored as a disk: no seal vouches for it (a killed
    /// run's: it may hold only the start of the disk), or what restic returned differs from
    /// what its seal records. Nothing was written to the target.
    #[error("restic snapshot {snapshot} cannot be trusted as a disk: {reason}; nothing was written to the target")]
    ResticUntrusted {
        /// restic's snapshot id.
        snapshot: String,
        /// Why, and what to do.
        reason: String,
    },
    /// The run was cancelled (Ctrl-C).
    #[error("cancelled")]
    Cancelled,
    /// A numeric option outside what the tool accepts (exit status 2, like `Usage`).
    #[error("invalid option: {option} must be between {min} and {max}{unit}, not {value}")]
    OptionOutOfRange {
        /// The option as the message names it ("workers", "the Ceph timeout").
        option: &'static str,
        /// What was given.
        value: u64,
        /// Smallest allowed.
        min: u64,
        /// Largest allowed.
        max: u64,
        /// Unit after the bounds, with its leading space ("" or " seconds").
        unit: &'static str,
    },
    /// A backup was asked for with neither a repository nor a restic repository to write to.
    #[error("invalid option: no backup target: give a repository or a restic repository")]
    NoBackupTarget,
    /// `verify --backup ID` named a backup the repository does not hold.
    #[error("invalid option: no backup {id} in the repository; `virt-rbd-backup list` shows the backups")]
    NoSuchBackup {
        /// The id asked for.
        id: String,
    },
    /// restic committed a disk's snapshot with another size than the image's: it is left
    /// unsealed, so restore never takes it for a disk.
    #[error("restic snapshot {snapshot} of {image} holds {stored} bytes, the image has {size}; it is left unsealed (incomplete: restore ignores it)")]
    ResticSizeMismatch {
        /// restic's snapshot id.
        snapshot: String,
        /// pool/image.
        image: String,
        /// Bytes restic says it stored.
        stored: u64,
        /// The image's size.
        size: u64,
    },
}

/// Result with the crate error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<crate::objstore::StoreError> for Error {
    fn from(e: crate::objstore::StoreError) -> Self {
        Error::BlockRepo(crate::block_repo::BlockRepoError::Store(e))
    }
}
