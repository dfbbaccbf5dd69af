//! The block layout of a repository (issue 18; `docs/design-block-layout.md`): every 4 MiB
//! block stored once under its id, a backup a complete list of blocks per disk, on any
//! [`ObjectStore`] (a folder, S3).
//!
//! This module is the repository side: open or create a repository (its `config` object and,
//! when encrypted, the wrapped data key), store and fetch blocks (a block already stored is
//! not uploaded again: that is the deduplication), write a backup (block lists and block
//! tables first, the manifest last), list, read and delete backups, and sweep unreferenced
//! blocks under the lock rule of the design. Reading from Ceph is the engine's
//! (`engine::export::export_blocks`); uploading in parallel is [`upload`]; reading a disk back
//! is [`disk_reader`].
//!
//! Objects (all in the envelope of `objstore::object_format`):
//! ```text
//! config                                      kind config: RepoConfig as JSON
//! keys/<key id>                               the data key wrapped by one key file
//! blocks/<2 hex>/<64 hex>                     kind block
//! backups/<domain uuid>/<backup id>.manifest  kind manifest: BlockManifest as JSON
//! backups/<domain uuid>/<backup id>/<disk>.blocklist   kind manifest: objstore::block_list
//! backups/<domain uuid>/<backup id>/<disk>.blocktable  kind manifest: the plain BLAKE3 of
//!                                             each block (32 bytes each; the content checksum
//!                                             `blake3-4m` is BLAKE3 of this table)
//! locks/<kind>-<host>-<pid>-<random>          kind config: RepoLockRecord as JSON
//! ```
//! The block table exists because in an encrypted repository a block's id is a keyed hash:
//! the plain hashes, needed for the checksum that `rbd export` can be compared with and carried
//! forward by incrementals, are kept apart (encrypted like every manifest object).

mod error;
pub mod lock;
pub mod sweep;
pub mod upload;

pub mod block_image;
pub mod disk_reader;

pub use error::BlockRepoError;

use serde::{Deserialize, Serialize};

use crate::objstore::block_list::BlockList;
use crate::objstore::object_format::{BlockId, DataKey, KeyFileKey, ObjectCodec, ObjectKind};
use crate::objstore::{ObjectStore, StoreError};
use crate::repo::manifest::{BackupKind, Consistency, DomainRecord, FreezeReport, SnapshotRecord};

/// The `format` of the config object and of manifests.
pub const REPO_FORMAT: &str = "virt-rbd-backup-block-repository";
/// The manifest format name.
pub const MANIFEST_FORMAT: &str = "virt-rbd-backup-block-manifest";
/// Versions this code writes and reads.
pub const REPO_VERSION: u32 = 1;
/// The block size of the layout.
pub const BLOCK_SIZE: u32 = 4 * 1024 * 1024;
/// Bounds against absurd objects (decompression bombs, damaged sizes).
const MAX_CONFIG_BYTES: usize = 64 * 1024;
const MAX_MANIFEST_BYTES: usize = 256 * 1024 * 1024;

/// The repository's `config` object.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RepoConfig {
    /// Always [`REPO_FORMAT`].
    pub format: String,
    /// [`REPO_VERSION`].
    pub version: u32,
    /// A random id, in snapshot names like the folder repository's.
    pub id: String,
    /// Block size in bytes (4 MiB).
    pub block_size: u32,
    /// Whether every object is encrypted.
    pub encrypted: bool,
    /// zstd level for blocks and manifests, or none.
    pub zstd_level: Option<i32>,
}

/// One disk of a backup in the block layout.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BlockDiskRecord {
    /// Device target (`vda`).
    pub target: String,
    /// Pool, namespace, image and image id as in the folder layout's manifest.
    pub pool: String,
    #[serde(default)]
    pub namespace: Option<String>,
    pub image: String,
    pub image_id: String,
    /// Disk size in bytes.
    pub size: u64,
    /// The snapshot read.
    pub snapshot: SnapshotRecord,
    /// Full (every allocated block read) or incremental (the changed blocks read).
    pub kind: BackupKind,
    /// For an incremental: the backup and snapshot whose blocks were carried over.
    #[serde(default)]
    pub parent_backup: Option<String>,
    #[serde(default)]
    pub base_snapshot: Option<SnapshotRecord>,
    /// Content checksum (`blake3-4m:<hex>`), comparable with `rbd export` of the snapshot.
    pub checksum: String,
    /// Bytes read from the cluster.
    pub bytes_read: u64,
    /// Blocks that hold data (not holes).
    pub blocks: u64,
    /// Blocks this backup uploaded (the others were already stored).
    pub new_blocks: u64,
    /// Bytes this backup added to the store (blocks as stored, after zstd and encryption).
    pub bytes_stored: u64,
    /// BLAKE3 of the block list's encoded content, checked when it is read.
    pub block_list_checksum: String,
    /// BLAKE3 of the block table's content.
    pub block_table_checksum: String,
}

/// A backup in the block layout: complete on its own (no chain).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BlockManifest {
    /// Always [`MANIFEST_FORMAT`].
    pub format: String,
    /// [`REPO_VERSION`].
    pub version: u32,
    pub backup_id: String,
    /// Order in the domain's history (see `repo::manifest`).
    pub sequence: u64,
    pub kind: BackupKind,
    #[serde(default)]
    pub parent: Option<String>,
    pub tool_version: String,
    pub domain: DomainRecord,
    pub started_at: f64,
    pub completed_at: f64,
    pub consistency: Consistency,
    pub freeze: FreezeReport,
    pub disks: Vec<BlockDiskRecord>,
}

/// A backup's disk as stored: its record with its block list and block table.
pub struct StoredDisk {
    pub record: BlockDiskRecord,
    pub blocks: BlockList,
    pub table: Vec<[u8; 32]>,
}

/// What a block upload did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockPut {
    /// The block was already stored.
    Present,
    /// Uploaded; this many bytes as stored.
    Stored(u64),
}

/// A repository in the block layout on an object store.
pub struct BlockRepository {
    store: std::sync::Arc<dyn ObjectStore>,
    codec: ObjectCodec,
    config: RepoConfig,
}

/// A store shared by two repository handles.
struct SharedStore(std::sync::Arc<dyn ObjectStore>);

impl ObjectStore for SharedStore {
    fn describe(&self) -> String {
        self.0.describe()
    }
    fn put(&self, key: &str, data: Vec<u8>) -> Result<(), StoreError> {
        self.0.put(key, data)
    }
    fn get(&self, key: &str) -> Result<Vec<u8>, StoreError> {
        self.0.get(key)
    }
    fn head(&self, key: &str) -> Result<Option<u64>, StoreError> {
        self.0.head(key)
    }
    fn list(&self, prefix: &str) -> Result<Vec<crate::objstore::ObjectInfo>, StoreError> {
        self.0.list(prefix)
    }
    fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.0.delete(key)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl BlockRepository {
    /// Creates a repository on `store`: encrypted when `key` is given (a new random data key,
    /// wrapped by it), blocks and manifests compressed with zstd at `zstd_level`.
    pub fn init(
        store: Box<dyn ObjectStore>,
        key: Option<&KeyFileKey>,
        zstd_level: Option<i32>,
    ) -> Result<Self, BlockRepoError> {
        if store.head("config")?.is_some() || !store.list("backups")?.is_empty() {
            return Err(BlockRepoError::AlreadyExists {
                store: store.describe(),
            });
        }
        let mut random = [0u8; 6];
        getrandom::getrandom(&mut random).map_err(|e| {
            BlockRepoError::Format(crate::objstore::object_format::FormatError::Random(
                e.to_string(),
            ))
        })?;
        let data_key = match key {
            Some(key) => {
                let data_key = DataKey::generate()?;
                store.put(&key.wrapped_key_name(), key.wrap(&data_key)?)?;
                Some(data_key)
            }
            None => None,
        };
        let config = RepoConfig {
            format: REPO_FORMAT.into(),
            version: REPO_VERSION,
            id: hex(&random),
            block_size: BLOCK_SIZE,
            encrypted: data_key.is_some(),
            zstd_level,
        };
        let codec = ObjectCodec::new(data_key, zstd_level);
        let text = serde_json::to_vec_pretty(&config).expect("config serializes");
        // The config last: a repository without it is not one, so a failed init leaves
        // nothing that looks usable.
        store.put("config", codec.encode(ObjectKind::Config, "config", &text)?)?;
        Ok(BlockRepository {
            store: store.into(),
            codec,
            config,
        })
    }

    /// Opens the repository on `store`, with its key file when it is encrypted.
    pub fn open(
        store: Box<dyn ObjectStore>,
        key: Option<&KeyFileKey>,
    ) -> Result<Self, BlockRepoError> {
        let describe = store.describe();
        let stored = match store.get("config") {
            Ok(bytes) => bytes,
            Err(StoreError::NotFound { .. }) => {
                return Err(BlockRepoError::NotARepository { store: describe })
            }
            Err(e) => return Err(e.into()),
        };
        let data_key = match key {
            Some(key) => match store.get(&key.wrapped_key_name()) {
                Ok(wrapped) => Some(key.unwrap_key(&wrapped)?),
                Err(StoreError::NotFound { .. }) => {
                    // A plain repository has no keys at all.
                    if store.list("keys")?.is_empty() {
                        return Err(BlockRepoError::NotEncrypted { store: describe });
                    }
                    return Err(BlockRepoError::WrongKey {
                        store: describe,
                        key_id: key.id().to_string(),
                    });
                }
                Err(e) => return Err(e.into()),
            },
            None => None,
        };
        let has_key = data_key.is_some();
        let codec = ObjectCodec::new(data_key, None);
        let text = match codec.decode(ObjectKind::Config, "config", &stored, MAX_CONFIG_BYTES) {
            Ok(text) => text,
            Err(crate::objstore::object_format::FormatError::NoKey { .. }) => {
                return Err(BlockRepoError::KeyNeeded { store: describe })
            }
            Err(e) => return Err(e.into()),
        };
        let config: RepoConfig =
            serde_json::from_slice(&text).map_err(|e| BlockRepoError::Damaged {
                store: describe.clone(),
                object: "config".into(),
                reason: e.to_string(),
            })?;
        if config.format != REPO_FORMAT || config.version > REPO_VERSION {
            return Err(BlockRepoError::Damaged {
                store: describe,
                object: "config".into(),
                reason: format!(
                    "format {} version {}: not one this version reads (upgrade virt-rbd-backup)",
                    config.format, config.version
                ),
            });
        }
        if config.encrypted != has_key {
            // An encrypted config decodes only with the key, so this is a plain repository
            // opened with a key (caught above) or a config that lies about itself.
            return Err(BlockRepoError::Damaged {
                store: describe,
                object: "config".into(),
                reason: "says encrypted but was stored plain".into(),
            });
        }
        let data_key = codec.into_key();
        Ok(BlockRepository {
            store: store.into(),
            codec: ObjectCodec::new(data_key, config.zstd_level),
            config,
        })
    }

    /// Where the repository is, for messages.
    pub fn describe(&self) -> String {
        self.store.describe()
    }

    /// The repository's config.
    pub fn config(&self) -> &RepoConfig {
        &self.config
    }

    /// The store underneath (for the lock and sweep code).
    pub(crate) fn store(&self) -> &dyn ObjectStore {
        self.store.as_ref()
    }

    /// The store again, to open the repository anew (after `init`, to read back the config
    /// that won a race with another host).
    pub fn reopen_store(&self) -> Box<dyn ObjectStore> {
        Box::new(SharedStore(self.store.clone()))
    }

    /// The store, shared with a lock's renewal thread.
    pub(crate) fn shared_store(&self) -> std::sync::Arc<dyn ObjectStore> {
        self.store.clone()
    }

    /// Adds another key file to an encrypted repository (rotation: add the new one, then
    /// remove the old one with [`Self::remove_key`]; no block is rewritten).
    pub fn add_key(&self, new_key: &KeyFileKey) -> Result<(), BlockRepoError> {
        let data_key = self
            .codec
            .key()
            .ok_or_else(|| BlockRepoError::NotEncrypted {
                store: self.describe(),
            })?;
        self.store
            .put(&new_key.wrapped_key_name(), new_key.wrap(data_key)?)?;
        Ok(())
    }

    /// Removes a key file's access; refuses to remove the last one.
    pub fn remove_key(&self, key_id: &str) -> Result<(), BlockRepoError> {
        let keys = self.store.list("keys")?;
        if keys.len() <= 1 {
            return Err(BlockRepoError::Damaged {
                store: self.describe(),
                object: format!("keys/{key_id}"),
                reason: "it is the last key: removing it would make every backup unreadable".into(),
            });
        }
        self.store.delete(&format!("keys/{key_id}"))?;
        Ok(())
    }

    /// The id of a block with this content (keyed in an encrypted repository).
    pub fn block_id(&self, content: &[u8]) -> BlockId {
        self.codec.block_id(content)
    }

    /// Whether the repository's block ids are the plain BLAKE3 hashes.
    pub fn plain_ids(&self) -> bool {
        !self.config.encrypted
    }

    /// Stores a block under `id` unless it is there already (deduplication).
    pub fn put_block(&self, id: &BlockId, content: &[u8]) -> Result<BlockPut, BlockRepoError> {
        let key = id.object_key();
        if self.store.head(&key)?.is_some() {
            return Ok(BlockPut::Present);
        }
        let sealed = self.codec.encode(ObjectKind::Block, &id.hex(), content)?;
        let stored = sealed.len() as u64;
        self.store.put(&key, sealed)?;
        Ok(BlockPut::Stored(stored))
    }

    /// A block's content, checked against its id; `len` is the length it must have.
    pub fn get_block(&self, id: &BlockId, len: usize) -> Result<Vec<u8>, BlockRepoError> {
        let stored = self.store.get(&id.object_key())?;
        let content = self.codec.decode_block(id, &stored, len)?;
        if content.len() != len {
            return Err(BlockRepoError::Damaged {
                store: self.describe(),
                object: id.object_key(),
                reason: format!("{} bytes where the block list says {len}", content.len()),
            });
        }
        Ok(content)
    }

    fn put_manifest_object(&self, key: &str, content: &[u8]) -> Result<(), BlockRepoError> {
        let sealed = self.codec.encode(ObjectKind::Manifest, key, content)?;
        self.store.put(key, sealed)?;
        Ok(())
    }

    fn get_manifest_object(&self, key: &str) -> Result<Vec<u8>, BlockRepoError> {
        let stored = self.store.get(key)?;
        Ok(self
            .codec
            .decode(ObjectKind::Manifest, key, &stored, MAX_MANIFEST_BYTES)?)
    }

    fn manifest_key(domain: &str, backup: &str) -> String {
        format!("backups/{domain}/{backup}.manifest")
    }

    fn disk_key(domain: &str, backup: &str, target: &str, what: &str) -> String {
        format!("backups/{domain}/{backup}/{target}.{what}")
    }

    /// Stores a disk's block list and block table (before the manifest that names them) and
    /// fills in their checksums in `record`.
    pub fn put_disk(
        &self,
        domain: &str,
        backup: &str,
        record: &mut BlockDiskRecord,
        blocks: &BlockList,
        table: &[[u8; 32]],
    ) -> Result<(), BlockRepoError> {
        let list = blocks.encode();
        record.block_list_checksum = blake3::hash(&list).to_hex().to_string();
        let table_bytes: Vec<u8> = table.iter().flatten().copied().collect();
        record.block_table_checksum = blake3::hash(&table_bytes).to_hex().to_string();
        self.put_manifest_object(
            &Self::disk_key(domain, backup, &record.target, "blocklist"),
            &list,
        )?;
        self.put_manifest_object(
            &Self::disk_key(domain, backup, &record.target, "blocktable"),
            &table_bytes,
        )
    }

    /// Commits a backup: its manifest, written last, after every block and block list it
    /// names was stored (a returned put is durable: the store contract).
    pub fn put_manifest(&self, manifest: &BlockManifest) -> Result<(), BlockRepoError> {
        let text = serde_json::to_vec_pretty(manifest).expect("manifest serializes");
        self.put_manifest_object(
            &Self::manifest_key(&manifest.domain.uuid, &manifest.backup_id),
            &text,
        )
    }

    /// The domains that have backups (their UUIDs).
    pub fn domains(&self) -> Result<Vec<String>, BlockRepoError> {
        let mut domains: Vec<String> = self
            .store
            .list("backups")?
            .into_iter()
            .filter_map(|o| o.key.split('/').nth(1).map(str::to_string))
            .collect();
        domains.dedup();
        Ok(domains)
    }

    /// The manifests of a domain, oldest first (by sequence, then id). A manifest that does
    /// not open is an error naming it: a backup never silently disappears (prune must not
    /// sweep what it cannot mark). `readable_backups` is for those who can go on without it.
    pub fn backups(&self, domain: &str) -> Result<Vec<BlockManifest>, BlockRepoError> {
        let (manifests, mut unreadable) = self.readable_backups(domain)?;
        match unreadable.pop() {
            Some((_, error)) => Err(error),
            None => Ok(manifests),
        }
    }

    /// The readable manifests of a domain, oldest first, and for each manifest that does not
    /// open its backup id and why.
    #[allow(clippy::type_complexity)]
    pub fn readable_backups(
        &self,
        domain: &str,
    ) -> Result<(Vec<BlockManifest>, Vec<(String, BlockRepoError)>), BlockRepoError> {
        let mut manifests = Vec::new();
        let mut unreadable = Vec::new();
        for object in self.store.list(&format!("backups/{domain}"))? {
            let Some(rest) = object.key.strip_suffix(".manifest") else {
                continue;
            };
            let backup = rest.rsplit('/').next().unwrap_or(rest);
            match self.manifest(domain, backup) {
                Ok(m) => manifests.push(m),
                // The store itself failing is not a property of this backup.
                Err(e @ BlockRepoError::Store(_)) => return Err(e),
                Err(e) => unreadable.push((backup.to_string(), e)),
            }
        }
        manifests.sort_by(|a, b| (a.sequence, &a.backup_id).cmp(&(b.sequence, &b.backup_id)));
        Ok((manifests, unreadable))
    }

    /// One backup's manifest.
    pub fn manifest(&self, domain: &str, backup: &str) -> Result<BlockManifest, BlockRepoError> {
        let key = Self::manifest_key(domain, backup);
        let text = match self.get_manifest_object(&key) {
            Ok(text) => text,
            Err(BlockRepoError::Store(StoreError::NotFound { .. })) => {
                return Err(BlockRepoError::NoSuchBackup {
                    store: self.describe(),
                    domain: domain.into(),
                    backup: backup.into(),
                })
            }
            Err(e) => return Err(e),
        };
        let manifest: BlockManifest =
            serde_json::from_slice(&text).map_err(|e| self.damaged(&key, e.to_string()))?;
        if manifest.format != MANIFEST_FORMAT || manifest.version > REPO_VERSION {
            return Err(self.damaged(&key, "not a manifest this version reads".into()));
        }
        if manifest.backup_id != backup || !manifest.domain.uuid.eq_ignore_ascii_case(domain) {
            return Err(self.damaged(&key, "its backup id or domain is not its name's".into()));
        }
        Ok(manifest)
    }

    fn damaged(&self, object: &str, reason: String) -> BlockRepoError {
        BlockRepoError::Damaged {
            store: self.describe(),
            object: object.into(),
            reason,
        }
    }

    /// A disk of a backup with its block list and table, both checked against the record.
    pub fn disk(
        &self,
        manifest: &BlockManifest,
        target: &str,
    ) -> Result<StoredDisk, BlockRepoError> {
        let (domain, backup) = (&manifest.domain.uuid, &manifest.backup_id);
        let record = manifest
            .disks
            .iter()
            .find(|d| d.target == target)
            .cloned()
            .ok_or_else(|| {
                self.damaged(
                    &Self::manifest_key(domain, backup),
                    format!("no disk {target} in this backup"),
                )
            })?;
        let list_key = Self::disk_key(domain, backup, target, "blocklist");
        let list = self.get_manifest_object(&list_key)?;
        if blake3::hash(&list).to_hex().as_str() != record.block_list_checksum {
            return Err(self.damaged(&list_key, "its checksum is not the manifest's".into()));
        }
        let blocks = BlockList::decode(&list).map_err(|e| self.damaged(&list_key, e))?;
        if blocks.size() != record.size {
            return Err(self.damaged(&list_key, "its size is not the manifest's".into()));
        }
        let table_key = Self::disk_key(domain, backup, target, "blocktable");
        let table_bytes = self.get_manifest_object(&table_key)?;
        if blake3::hash(&table_bytes).to_hex().as_str() != record.block_table_checksum
            || table_bytes.len() != blocks.len() * 32
        {
            return Err(self.damaged(&table_key, "its checksum is not the manifest's".into()));
        }
        let table = table_bytes
            .chunks_exact(32)
            .map(|c| c.try_into().expect("32-byte chunks"))
            .collect();
        Ok(StoredDisk {
            record,
            blocks,
            table,
        })
    }

    /// Removes a backup: the manifest first (it stops being a backup), then its disks'
    /// objects. Its blocks stay until a sweep finds them unreferenced.
    pub fn delete_backup(&self, manifest: &BlockManifest) -> Result<(), BlockRepoError> {
        let (domain, backup) = (&manifest.domain.uuid, &manifest.backup_id);
        self.store.delete(&Self::manifest_key(domain, backup))?;
        for object in self.store.list(&format!("backups/{domain}/{backup}"))? {
            self.store.delete(&object.key)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
