//! Pure decisions, taken on values and unit-tested without a cluster: which blocks of an image
//! to read, how a content checksum is formed, how backups and snapshots are named.

pub mod blocks;
pub mod naming;

pub use blocks::{blocks_to_read, ByteRange, ContentHasher, HASH_BLOCK_SIZE};
pub use naming::{backup_id_from_unix, is_tool_snapshot, snapshot_name, SNAPSHOT_PREFIX};
