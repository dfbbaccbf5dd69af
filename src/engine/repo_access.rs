//! Which repository a location names, and opening it: the folder layout (sparse raw + rbd
//! diffs, `repo`) or the block layout (`block_repo`) on a folder or on S3.
//!
//! A location is a folder path or `s3://BUCKET/PREFIX`. S3 always holds the block layout. A
//! folder holds whichever layout it was created with: a `config` object marks the block
//! layout, the folder repository's marker file the folder layout; a new folder gets the
//! layout asked for (`layout = "blocks"`), else the folder layout, which stays the default
//! because it is readable with stock tools. Asking for one layout where the other is found is
//! an error, never a silent switch.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::block_repo::{BlockRepoError, BlockRepository};
use crate::error::Error;
use crate::objstore::object_format::KeyFileKey;
use crate::objstore::{parse_location, FolderStore, ObjectStore, RepoLocation, S3Options, S3Store};
use crate::repo::Repository;

/// How to open a repository besides its location: layout, key file, S3 settings. None of
/// these carries a secret: keys live in files (0600) or the `AWS_*` environment.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RepoAccess {
    /// `folder` or `blocks`, for a new repository in a folder; checked against an existing one.
    pub layout: Option<String>,
    /// Key file of an encrypted block repository (`init` creates it when it is missing).
    pub key_file: Option<PathBuf>,
    /// zstd level of blocks in a new block repository (`compress` of the backup options).
    #[serde(skip)]
    pub zstd_level: Option<i32>,
    /// S3 endpoint (`https://host:port`); `AWS_ENDPOINT_URL` or AWS when not set.
    pub s3_endpoint: Option<String>,
    /// S3 region.
    pub s3_region: Option<String>,
    /// AWS shared credentials file (0600).
    pub s3_credentials: Option<PathBuf>,
    /// CA certificates (PEM) for the endpoint.
    pub s3_ca_file: Option<PathBuf>,
}

/// A repository of either layout.
pub enum AnyRepository {
    /// Sparse raw files and rbd diffs in a folder.
    Folder(Repository),
    /// Blocks on an object store.
    Blocks(BlockRepository),
}

/// The layout asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    Folder,
    Blocks,
}

impl RepoAccess {
    fn layout(&self) -> Result<Option<Layout>, Error> {
        match self.layout.as_deref() {
            None => Ok(None),
            Some("folder") => Ok(Some(Layout::Folder)),
            Some("blocks") => Ok(Some(Layout::Blocks)),
            Some(other) => Err(Error::Usage(format!(
                "unknown repository layout {other:?}: use folder or blocks"
            ))),
        }
    }

    fn s3_options(&self) -> S3Options {
        S3Options {
            endpoint: self.s3_endpoint.clone(),
            region: self.s3_region.clone(),
            credentials_file: self.s3_credentials.clone(),
            ca_file: self.s3_ca_file.clone(),
            ..S3Options::default()
        }
    }

    /// The key file's key, if one is configured and exists; `create` makes a missing one
    /// (mode 0600) for a new repository.
    fn key(&self, create: bool) -> Result<Option<KeyFileKey>, Error> {
        let Some(path) = &self.key_file else {
            return Ok(None);
        };
        let bad = |reason: String| {
            Error::from(BlockRepoError::KeyFile {
                path: path.display().to_string(),
                reason,
            })
        };
        match crate::secret::read_private_file(path) {
            Ok(text) => KeyFileKey::parse(&text)
                .map(Some)
                .map_err(|e| bad(e.to_string())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
                let (key, text) = KeyFileKey::generate().map_err(|e| bad(e.to_string()))?;
                crate::secret::write_private_file(path, text.as_bytes())
                    .map_err(|e| bad(format!("cannot create it: {e}")))?;
                log::warn!(
                    "created the repository key file {} (key id {}): keep a copy off this host; without a key file the repository cannot be read",
                    path.display(),
                    key.id()
                );
                Ok(Some(key))
            }
            Err(e) => Err(bad(e.to_string())),
        }
    }
}

fn open_blocks(
    store: Box<dyn ObjectStore>,
    access: &RepoAccess,
    create: bool,
) -> Result<BlockRepository, Error> {
    let exists = store.head("config")?.is_some();
    if exists {
        return Ok(BlockRepository::open(store, access.key(false)?.as_ref())?);
    }
    if !create {
        return Ok(BlockRepository::open(store, None)?);
    }
    let key = access.key(true)?;
    let description = store.describe();
    let created = BlockRepository::init(store, key.as_ref(), access.zstd_level)?;
    // Hypervisors of a fleet start their first backups at the same minute: another host may
    // have created the repository between our look and our config (stores offer no portable
    // create-if-absent). The config read back is the one that counts; a run whose config lost
    // writes nothing more with its own data key.
    let reopened = BlockRepository::open(created.reopen_store(), key.as_ref()).map_err(|e| {
        BlockRepoError::LostCreation {
            store: description.clone(),
            reason: e.to_string(),
        }
    })?;
    if reopened.config().id != created.config().id {
        log::info!(
            "{description} was created by another host at the same moment; using its configuration"
        );
    }
    Ok(reopened)
}

/// Opens the repository at `location`; with `create`, a missing one (or an empty folder) is
/// created in the layout asked for.
pub fn open_repository(
    location: &str,
    access: &RepoAccess,
    create: bool,
) -> Result<AnyRepository, Error> {
    let layout = access.layout()?;
    match parse_location(location)? {
        RepoLocation::S3 { bucket, prefix } => {
            if layout == Some(Layout::Folder) {
                return Err(BlockRepoError::LayoutMismatch {
                    store: location.to_string(),
                    found: "blocks",
                    asked: "folder",
                }
                .into());
            }
            let store = S3Store::open(&bucket, &prefix, &access.s3_options())?;
            Ok(AnyRepository::Blocks(open_blocks(
                Box::new(store),
                access,
                create,
            )?))
        }
        RepoLocation::Folder(path) => {
            let is_blocks = path.join("config").is_file();
            let is_folder = path.join(crate::repo::layout::MARKER_FILE).is_file();
            let wanted_blocks = match (layout, is_blocks, is_folder) {
                (Some(Layout::Folder), true, _) | (Some(Layout::Blocks), _, true) => {
                    return Err(BlockRepoError::LayoutMismatch {
                        store: location.to_string(),
                        found: if is_blocks { "blocks" } else { "folder" },
                        asked: if is_blocks { "folder" } else { "blocks" },
                    }
                    .into())
                }
                (_, true, _) => true,
                (_, _, true) => false,
                (asked, false, false) => asked == Some(Layout::Blocks),
            };
            if !wanted_blocks {
                let repo = if create {
                    Repository::open_or_create(&path)?
                } else {
                    Repository::open(&path)?
                };
                return Ok(AnyRepository::Folder(repo));
            }
            if !is_blocks && create && path.read_dir().is_ok_and(|mut d| d.next().is_some()) {
                return Err(BlockRepoError::FolderNotEmpty {
                    store: location.to_string(),
                }
                .into());
            }
            let store = FolderStore::new(path);
            Ok(AnyRepository::Blocks(open_blocks(
                Box::new(store),
                access,
                create,
            )?))
        }
    }
}

/// How long a block repository's lock lives without renewal before other hosts take it for
/// dead, and how long a backup waits for a running prune.
pub const LOCK_LEASE: Duration = Duration::from_secs(600);
/// How long a backup waits for a running prune before its domains fail.
pub const PRUNE_WAIT: Duration = Duration::from_secs(1800);

/// `list` on a repository of either layout.
pub fn list_backups_at(
    location: &str,
    access: &RepoAccess,
    domain: Option<&str>,
) -> Result<Vec<super::listing::BackupListing>, Error> {
    match open_repository(location, access, false)? {
        AnyRepository::Folder(_) => super::listing::list_backups(location.as_ref(), domain),
        AnyRepository::Blocks(repo) => super::block_commands::list(&repo, domain),
    }
}

/// `verify` on a repository of either layout; `read_data` (the fraction of the blocks read and
/// checked, 0 to 1) applies to the block layout (the folder layout always reads every byte).
pub fn verify_at(
    location: &str,
    access: &RepoAccess,
    domain: Option<&str>,
    backup: Option<&str>,
    source: Option<&super::ceph_access::CephAccess>,
    read_data: f64,
) -> Result<super::verify::VerifyReport, Error> {
    if !(0.0..=1.0).contains(&read_data) {
        return Err(Error::Usage(format!(
            "read_data must be a fraction of the blocks between 0 and 1, not {read_data}"
        )));
    }
    match open_repository(location, access, false)? {
        AnyRepository::Folder(_) => {
            super::verify::verify_with_source(location.as_ref(), domain, backup, source)
        }
        AnyRepository::Blocks(repo) => {
            if source.is_some() {
                return Err(Error::Usage(
                    "verify --source is not available for block repositories yet".into(),
                ));
            }
            super::block_commands::verify(&repo, domain, backup, read_data)
        }
    }
}

/// `prune` on a repository of either layout.
pub fn prune_at(
    location: &str,
    access: &RepoAccess,
    domain: Option<&str>,
    keep: &crate::plan::retention::KeepOptions,
    dry_run: bool,
) -> Result<super::prune::PruneReport, Error> {
    // Before the repository is opened: no keep option is the first thing to hear about.
    keep.validate().map_err(|e| Error::Usage(e.to_string()))?;
    match open_repository(location, access, false)? {
        AnyRepository::Folder(_) => super::prune::prune(location.as_ref(), domain, keep, dry_run),
        AnyRepository::Blocks(repo) => {
            super::block_commands::prune(&repo, &super::restic::host_name(), domain, keep, dry_run)
        }
    }
}

/// What `rekey` did.
#[derive(Debug, Clone, Serialize)]
pub struct RekeyReport {
    /// The repository.
    pub repo: String,
    /// Id of the key file the repository was opened with.
    pub old_key_id: String,
    /// Id of the new key file, which now opens the repository.
    pub new_key_id: String,
    /// Whether the new key file was created by this call (mode 0600).
    pub created: bool,
    /// Whether the old key file was removed from the repository (it opens it no more).
    pub old_removed: bool,
}

/// Gives an encrypted block repository a new key file (`new_key_file`, created 0600 when
/// missing) and, unless `keep_old`, takes the old one's access away. No block is rewritten:
/// only the wrapped data key is stored once more (`objstore::object_format`, "Keys").
pub fn rekey(
    location: &str,
    access: &RepoAccess,
    new_key_file: &std::path::Path,
    keep_old: bool,
) -> Result<RekeyReport, Error> {
    let old = access.key(false)?.ok_or_else(|| BlockRepoError::Rekey {
        store: location.to_string(),
        reason: "give the repository's current key file (repo_key_file)".into(),
    })?;
    let repo = match open_repository(location, access, false)? {
        AnyRepository::Blocks(repo) => repo,
        AnyRepository::Folder(_) => {
            return Err(BlockRepoError::Rekey {
                store: location.to_string(),
                reason: "it has the folder layout, which is not encrypted: nothing to rekey".into(),
            }
            .into())
        }
    };
    let new_access = RepoAccess {
        key_file: Some(new_key_file.to_path_buf()),
        ..access.clone()
    };
    let created = !new_key_file.exists();
    let new = new_access.key(true)?.expect("a key file was given");
    if new.id() == old.id() {
        return Err(BlockRepoError::Rekey {
            store: location.to_string(),
            reason: format!(
                "{} is the key file the repository is opened with: give a new one",
                new_key_file.display()
            ),
        }
        .into());
    }
    repo.add_key(&new)?;
    // Reopened with the new key before the old one goes: never left without a working key.
    BlockRepository::open(reopen_store(location, access)?, Some(&new))?;
    if !keep_old {
        repo.remove_key(old.id())?;
    }
    Ok(RekeyReport {
        repo: repo.describe(),
        old_key_id: old.id().to_string(),
        new_key_id: new.id().to_string(),
        created,
        old_removed: !keep_old,
    })
}

fn reopen_store(location: &str, access: &RepoAccess) -> Result<Box<dyn ObjectStore>, Error> {
    Ok(match parse_location(location)? {
        RepoLocation::S3 { bucket, prefix } => {
            Box::new(S3Store::open(&bucket, &prefix, &access.s3_options())?)
        }
        RepoLocation::Folder(path) => Box::new(FolderStore::new(path)),
    })
}
