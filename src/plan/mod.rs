//! Pure decisions, taken on values and unit-tested without a cluster: which blocks of an image
//! to read, how a content checksum is formed, how backups and snapshots are named.

pub mod blocks;
pub mod consistency;
pub mod incremental;
pub mod leaves;
pub mod naming;
pub mod rate;
pub mod retention;
pub mod written_content;

pub use blocks::{
    blocks_to_read, checksum_of_table, ByteRange, ContentHasher, StreamHasher, HASH_BLOCK_SIZE,
};
pub use consistency::{choose_group, domain_group_name, GroupChoice, GroupMembership};
pub use incremental::{plan_disk, BackupMode, BaseCandidate, DiskPlan, ImageState};
pub use leaves::{
    block_leaves, leaf_cv, leaf_runs, root_of, zero_block_root, zero_leaves, BlockLeaves,
    LEAF_SIZE, LEAVES_PER_BLOCK,
};
pub use naming::{
    backup_id_from_unix, domain_snapshot_name, is_owned_snapshot, is_stale_for_domain,
    is_tool_snapshot, snapshot_backup_id, snapshot_domain, snapshot_name, SNAPSHOT_PREFIX,
};
pub use rate::{parse_rate, TokenBucket};
pub use retention::{
    compute_prune, parse_backup_id, BackupEntry, KeepOptions, KeepReason, PruneDecision, PruneMark,
    RemoveReason, RetentionError,
};
pub use written_content::WrittenContent;
