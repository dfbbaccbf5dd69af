//! The block layout on a folder store, without a cluster: backups from in-memory disks, an
//! incremental, dedup across clones, restore, verify finding a deleted and a flipped block,
//! prune removing exactly the unreferenced blocks, keys, and the lock rule.

use std::sync::atomic::AtomicBool;
use std::time::Duration;

use super::disk_reader::{restore_to_file, verify, ReadSample};
use super::lock::RepoLock;
use super::sweep::prune;
use super::upload::{assemble_disk, upload_blocks, UploadedBlock};
use super::*;
use crate::objstore::object_format::KeyFileKey;
use crate::objstore::FolderStore;

const DOMAIN: &str = "0b6c3f0e-8a3e-4d1a-9e55-3a1f2c6d7e80";

fn store(dir: &std::path::Path) -> Box<dyn ObjectStore> {
    Box::new(FolderStore::new(dir.to_path_buf()))
}

/// A disk of `blocks` 4 MiB blocks (the last `tail` bytes short when `tail` > 0), block i
/// filled from `seed + i`, except the blocks in `holes` (zeros).
fn disk(blocks: usize, tail: usize, seed: u8, holes: &[usize]) -> Vec<u8> {
    let block = BLOCK_SIZE as usize;
    let mut data = vec![0u8; blocks * block - tail];
    for (i, chunk) in data.chunks_mut(block).enumerate() {
        if !holes.contains(&i) {
            for (j, b) in chunk.iter_mut().enumerate() {
                *b = seed.wrapping_add(i as u8).wrapping_add((j % 251) as u8);
            }
        }
    }
    data
}

fn upload(repo: &BlockRepository, data: &[u8], indexes: &[u64]) -> Vec<UploadedBlock> {
    let block = BLOCK_SIZE as usize;
    upload_blocks(repo, 3, |submit| -> Result<(), BlockRepoError> {
        for &i in indexes {
            let start = i as usize * block;
            let end = (start + block).min(data.len());
            submit.submit(i, data[start..end].to_vec())?;
        }
        Ok(())
    })
    .unwrap()
}

fn record(
    target: &str,
    size: u64,
    kind: BackupKind,
    blocks: &upload::DiskBlocks,
) -> BlockDiskRecord {
    BlockDiskRecord {
        target: target.into(),
        pool: "rbd".into(),
        namespace: None,
        image: format!("img-{target}"),
        image_id: "1234".into(),
        size,
        snapshot: SnapshotRecord {
            name: "snap".into(),
            id: 1,
            timestamp: None,
        },
        kind,
        parent_backup: None,
        base_snapshot: None,
        checksum: blocks.checksum.clone(),
        bytes_read: 0,
        blocks: blocks.data_blocks,
        new_blocks: blocks.new_blocks,
        bytes_stored: blocks.bytes_stored,
        block_list_checksum: String::new(),
        block_table_checksum: String::new(),
    }
}

fn commit(
    repo: &BlockRepository,
    backup: &str,
    sequence: u64,
    disks: Vec<(BlockDiskRecord, upload::DiskBlocks)>,
) -> BlockManifest {
    let mut records = Vec::new();
    for (mut record, blocks) in disks {
        repo.put_disk(DOMAIN, backup, &mut record, &blocks.blocks, &blocks.table)
            .unwrap();
        records.push(record);
    }
    let manifest = BlockManifest {
        format: MANIFEST_FORMAT.into(),
        version: REPO_VERSION,
        backup_id: backup.into(),
        sequence,
        kind: BackupKind::Full,
        parent: None,
        tool_version: "test".into(),
        domain: DomainRecord {
            name: "vm".into(),
            uuid: DOMAIN.into(),
            xml: "<domain/>".into(),
        },
        started_at: 0.0,
        completed_at: 1.0,
        consistency: Consistency::Frozen,
        freeze: FreezeReport::default(),
        disks: records,
    };
    repo.put_manifest(&manifest).unwrap();
    manifest
}

fn full_backup(
    repo: &BlockRepository,
    target: &str,
    data: &[u8],
) -> (BlockDiskRecord, upload::DiskBlocks) {
    let count = data.len().div_ceil(BLOCK_SIZE as usize) as u64;
    let all: Vec<u64> = (0..count).collect();
    let uploaded = upload(repo, data, &all);
    let blocks = assemble_disk(data.len() as u64, None, &uploaded).unwrap();
    (
        record(target, data.len() as u64, BackupKind::Full, &blocks),
        blocks,
    )
}

fn restored(repo: &BlockRepository, manifest: &BlockManifest, target: &str) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.raw");
    restore_to_file(repo, manifest, target, &path, 2, &AtomicBool::new(false)).unwrap();
    std::fs::read(path).unwrap()
}

fn checksum_of(data: &[u8]) -> String {
    let mut hasher = crate::plan::ContentHasher::new(data.len() as u64);
    for (i, chunk) in data.chunks(BLOCK_SIZE as usize).enumerate() {
        hasher.add_block(i as u64, chunk);
    }
    hasher.finish()
}

#[test]
fn full_then_incremental_restore_exactly_and_cost_what_changed() {
    let dir = tempfile::tempdir().unwrap();
    let repo = BlockRepository::init(store(dir.path()), None, Some(3)).unwrap();
    let first = disk(5, 1000, 7, &[2]);
    let (rec, blocks) = full_backup(&repo, "vda", &first);
    assert_eq!(blocks.data_blocks, 4, "the hole is not stored");
    assert_eq!(blocks.new_blocks, 4);
    assert_eq!(blocks.checksum, checksum_of(&first));
    let m1 = commit(&repo, "b1", 1, vec![(rec, blocks)]);
    assert_eq!(restored(&repo, &m1, "vda"), first);

    // Change block 1, fill the hole, zero block 4 (the short tail).
    let mut second = first.clone();
    let block = BLOCK_SIZE as usize;
    second[block..2 * block].fill(0x55);
    second[2 * block + 17] = 1;
    second[4 * block..].fill(0);
    let parent = repo.disk(&m1, "vda").unwrap();
    let uploaded = upload(&repo, &second, &[1, 2, 4]);
    let blocks = assemble_disk(second.len() as u64, Some(&parent), &uploaded).unwrap();
    assert_eq!(
        blocks.new_blocks, 2,
        "block 4 became a hole, 1 and 2 are new"
    );
    assert_eq!(blocks.data_blocks, 4, "0 and 3 carried over, 1 and 2 new");
    assert_eq!(blocks.checksum, checksum_of(&second));
    let rec = record("vda", second.len() as u64, BackupKind::Incremental, &blocks);
    let m2 = commit(&repo, "b2", 2, vec![(rec, blocks)]);
    assert_eq!(restored(&repo, &m2, "vda"), second);
    // The first backup is still whole on its own.
    assert_eq!(restored(&repo, &m1, "vda"), first);
    let listed: Vec<String> = repo
        .backups(DOMAIN)
        .unwrap()
        .into_iter()
        .map(|m| m.backup_id)
        .collect();
    assert_eq!(listed, ["b1", "b2"]);
}

#[test]
fn a_clone_of_a_disk_costs_nothing_but_its_lists() {
    let dir = tempfile::tempdir().unwrap();
    let repo = BlockRepository::init(store(dir.path()), None, None).unwrap();
    let golden = disk(6, 0, 3, &[]);
    let (rec_a, a) = full_backup(&repo, "vda", &golden);
    let (rec_b, b) = full_backup(&repo, "vdb", &golden);
    assert_eq!(a.new_blocks, 6);
    assert_eq!(b.new_blocks, 0);
    assert_eq!(b.bytes_stored, 0);
    assert!(b.bytes_stored * 20 <= a.bytes_stored);
    commit(&repo, "b1", 1, vec![(rec_a, a), (rec_b, b)]);
}

#[test]
fn verify_names_a_deleted_and_a_flipped_block_and_restore_refuses_them() {
    for key in [None, Some(KeyFileKey::generate().unwrap().0)] {
        let dir = tempfile::tempdir().unwrap();
        let repo = BlockRepository::init(store(dir.path()), key.as_ref(), Some(1)).unwrap();
        let data = disk(4, 0, 11, &[]);
        let (rec, blocks) = full_backup(&repo, "vda", &data);
        let ids: Vec<_> = (0..4).map(|i| blocks.blocks.get(i).unwrap()).collect();
        let m = commit(&repo, "b1", 1, vec![(rec, blocks)]);
        let clean = verify(&repo, ReadSample::all(), 2, &AtomicBool::new(false)).unwrap();
        assert_eq!(clean.problems, Vec::<String>::new());
        assert_eq!(
            (clean.backups, clean.blocks_referenced, clean.blocks_read),
            (1, 4, 4)
        );

        std::fs::remove_file(dir.path().join(ids[1].object_key())).unwrap();
        let flipped = dir.path().join(ids[2].object_key());
        let mut bytes = std::fs::read(&flipped).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 1;
        std::fs::write(&flipped, bytes).unwrap();

        let quick = verify(&repo, ReadSample::none(), 2, &AtomicBool::new(false)).unwrap();
        assert_eq!(quick.problems.len(), 1, "{:?}", quick.problems);
        assert!(quick.problems[0].contains(&ids[1].object_key()));
        let full = verify(&repo, ReadSample::all(), 2, &AtomicBool::new(false)).unwrap();
        assert_eq!(full.problems.len(), 2, "{:?}", full.problems);
        assert!(full.problems.iter().any(|p| p.contains(&ids[2].hex())));

        let out = tempfile::tempdir().unwrap();
        let path = out.path().join("x.raw");
        let err = restore_to_file(&repo, &m, "vda", &path, 2, &AtomicBool::new(false));
        assert!(err.is_err());
        assert!(!path.exists(), "a failed restore leaves no file");
    }
}

#[test]
fn prune_removes_exactly_the_unreferenced_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let repo = BlockRepository::init(store(dir.path()), None, None).unwrap();
    let first = disk(3, 0, 1, &[]);
    let (rec, blocks) = full_backup(&repo, "vda", &first);
    let old_ids = blocks.blocks.referenced();
    let m1 = commit(&repo, "b1", 1, vec![(rec, blocks)]);
    let mut second = first.clone();
    second[..10].fill(9);
    let parent = repo.disk(&m1, "vda").unwrap();
    let blocks = assemble_disk(
        second.len() as u64,
        Some(&parent),
        &upload(&repo, &second, &[0]),
    )
    .unwrap();
    let new_ids = blocks.blocks.referenced();
    let rec = record("vda", second.len() as u64, BackupKind::Incremental, &blocks);
    let m2 = commit(&repo, "b2", 2, vec![(rec, blocks)]);
    // A stray object under blocks/ (a foreign file) goes too.
    repo.store()
        .put("blocks/zz/not-a-block", vec![1, 2, 3])
        .unwrap();

    let dry = prune(
        &repo,
        "host",
        std::slice::from_ref(&m1),
        true,
        Duration::from_secs(60),
    )
    .unwrap();
    assert_eq!(dry.blocks_removed, 2);
    assert_eq!(
        repo.backups(DOMAIN).unwrap().len(),
        2,
        "a dry run removes nothing"
    );

    let report = prune(
        &repo,
        "host",
        std::slice::from_ref(&m1),
        false,
        Duration::from_secs(60),
    )
    .unwrap();
    let gone: Vec<_> = old_ids.difference(&new_ids).collect();
    assert_eq!(gone.len(), 1);
    assert_eq!(
        report.blocks_removed, 2,
        "the old block 0 and the stray object"
    );
    assert_eq!(report.blocks_kept, 3);
    assert!(!dir.path().join(gone[0].object_key()).exists());
    assert_eq!(restored(&repo, &m2, "vda"), second);
    assert!(
        repo.store().list("locks").unwrap().is_empty(),
        "the prune lock is released"
    );
}

#[test]
fn keys_open_only_their_repository_and_rotate() {
    let dir = tempfile::tempdir().unwrap();
    let (key, _) = KeyFileKey::generate().unwrap();
    let (other, _) = KeyFileKey::generate().unwrap();
    BlockRepository::init(store(dir.path()), Some(&key), Some(3)).unwrap();
    assert!(matches!(
        BlockRepository::open(store(dir.path()), None),
        Err(BlockRepoError::KeyNeeded { .. })
    ));
    assert!(matches!(
        BlockRepository::open(store(dir.path()), Some(&other)),
        Err(BlockRepoError::WrongKey { .. })
    ));
    let repo = BlockRepository::open(store(dir.path()), Some(&key)).unwrap();
    let data = disk(2, 0, 5, &[]);
    let (rec, blocks) = full_backup(&repo, "vda", &data);
    // Keyed ids: not the plain hashes the store could recognise.
    assert_ne!(blocks.blocks.get(0).unwrap().0, blocks.table[0]);
    let m = commit(&repo, "b1", 1, vec![(rec, blocks)]);
    repo.add_key(&other).unwrap();
    repo.remove_key(key.id()).unwrap();
    assert!(matches!(
        BlockRepository::open(store(dir.path()), Some(&key)),
        Err(BlockRepoError::WrongKey { .. })
    ));
    let rotated = BlockRepository::open(store(dir.path()), Some(&other)).unwrap();
    assert_eq!(restored(&rotated, &m, "vda"), data);
    assert!(
        rotated.remove_key(other.id()).is_err(),
        "the last key stays"
    );

    let plain = tempfile::tempdir().unwrap();
    BlockRepository::init(store(plain.path()), None, None).unwrap();
    assert!(matches!(
        BlockRepository::open(store(plain.path()), Some(&key)),
        Err(BlockRepoError::NotEncrypted { .. })
    ));
    assert!(matches!(
        BlockRepository::init(store(plain.path()), None, None),
        Err(BlockRepoError::AlreadyExists { .. })
    ));
    let empty = tempfile::tempdir().unwrap();
    assert!(matches!(
        BlockRepository::open(store(empty.path()), None),
        Err(BlockRepoError::NotARepository { .. })
    ));
}

#[test]
fn a_backup_lock_holds_off_a_prune_and_a_prune_lock_a_backup() {
    let dir = tempfile::tempdir().unwrap();
    let repo = BlockRepository::init(store(dir.path()), None, None).unwrap();
    let lease = Duration::from_secs(60);
    let backup = RepoLock::for_backup(&repo, "hv1", lease, Duration::ZERO).unwrap();
    let report = prune(&repo, "hv2", &[], false, lease).unwrap();
    assert_eq!(report.held_off_by.len(), 1);
    assert!(report.held_off_by[0].contains("backup on hv1"));
    backup.check_held().unwrap();
    drop(backup);

    let prune_lock = RepoLock::for_prune(&repo, "hv2", lease).unwrap().unwrap();
    let err = RepoLock::for_backup(&repo, "hv1", lease, Duration::from_millis(600))
        .err()
        .unwrap();
    assert!(matches!(err, BlockRepoError::PruneRunning { .. }), "{err}");
    drop(prune_lock);
    assert!(repo.store().list("locks").unwrap().is_empty());

    // A lock removed by another host (taken for stale) is lost: nothing may be committed.
    let backup = RepoLock::for_backup(&repo, "hv1", lease, Duration::ZERO).unwrap();
    repo.store().delete(backup.key()).unwrap();
    assert!(matches!(
        backup.check_held(),
        Err(BlockRepoError::LockLost { .. })
    ));
}

#[test]
fn a_failing_store_stops_the_upload_with_its_error() {
    let dir = tempfile::tempdir().unwrap();
    let repo = BlockRepository::init(store(dir.path()), None, None).unwrap();
    // The blocks folder cannot be made: a file is in its way.
    std::fs::write(dir.path().join("blocks"), b"in the way").unwrap();
    let data = disk(8, 0, 2, &[]);
    let result = upload_blocks(&repo, 2, |submit| -> Result<(), BlockRepoError> {
        for i in 0..8u64 {
            let start = i as usize * BLOCK_SIZE as usize;
            submit.submit(i, data[start..start + BLOCK_SIZE as usize].to_vec())?;
        }
        Ok(())
    });
    let err = result.err().unwrap();
    assert!(matches!(err, BlockRepoError::Store(_)), "{err}");
}

#[test]
fn block_ids_parse_only_from_their_own_names() {
    let id = BlockId([0xab; 32]);
    assert_eq!(sweep::parse_id(&id.hex()), Some(id));
    assert_eq!(sweep::parse_id("ab"), None);
    assert_eq!(sweep::parse_id(&id.hex().to_uppercase()), None);
}

#[test]
fn a_block_image_reads_any_range_reports_holes_and_refuses_a_damaged_block() {
    use crate::repo::extent_source::ExtentSource;
    let dir = tempfile::tempdir().unwrap();
    let repo = BlockRepository::init(store(dir.path()), None, Some(1)).unwrap();
    let data = disk(4, 4096 * 3 + 17, 9, &[1]);
    let (rec, blocks) = full_backup(&repo, "vda", &data);
    let flipped_id = blocks.blocks.get(2).unwrap();
    let m = commit(&repo, "b1", 1, vec![(rec, blocks)]);
    let repo = std::sync::Arc::new(repo);
    let image = block_image::BlockImage::new(repo.clone(), repo.disk(&m, "vda").unwrap());
    assert_eq!(image.size(), data.len() as u64);
    let block = BLOCK_SIZE as usize;
    for (offset, len) in [
        (0, 4096),
        (block - 100, 300),
        (block + 5, 4096),
        (data.len() - 517, 517),
        (0, data.len()),
    ] {
        let mut buf = vec![0xAA; len];
        image.read_at(offset as u64, &mut buf).unwrap();
        assert_eq!(buf, data[offset..offset + len], "{offset}+{len}");
    }
    let extents = image.allocation(0, data.len() as u64);
    let holes: Vec<_> = extents
        .iter()
        .filter(|e| !e.allocated)
        .map(|e| (e.offset, e.length))
        .collect();
    assert_eq!(holes, [(block as u64, block as u64)]);
    assert!(
        image.read_at(data.len() as u64 - 1, &mut [0u8; 2]).is_err(),
        "past the end"
    );

    let path = dir.path().join(flipped_id.object_key());
    let mut bytes = std::fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 4;
    std::fs::write(&path, bytes).unwrap();
    let fresh = block_image::BlockImage::new(repo.clone(), repo.disk(&m, "vda").unwrap());
    let err = fresh
        .read_at(2 * block as u64 + 10, &mut [0u8; 10])
        .unwrap_err();
    assert!(err.to_string().contains(&flipped_id.hex()), "{err}");
    let mut first = vec![0u8; 100];
    fresh.read_at(0, &mut first).unwrap();
    assert_eq!(first, data[..100], "the other blocks still read");
}

#[test]
fn a_read_sample_takes_about_its_fraction_and_another_seed_another_sample() {
    let ids: Vec<BlockId> = (0..4000u32)
        .map(|i| BlockId(*blake3::hash(&i.to_le_bytes()).as_bytes()))
        .collect();
    let tenth = ReadSample::new(0.1, [1; 32]);
    let taken: Vec<_> = ids.iter().filter(|id| tenth.takes(id)).collect();
    assert!((300..500).contains(&taken.len()), "{}", taken.len());
    let other = ReadSample::new(0.1, [2; 32]);
    let overlap = taken.iter().filter(|id| other.takes(id)).count();
    assert!(overlap < taken.len() / 3, "{overlap} of {}", taken.len());
    assert!(ids.iter().all(|id| ReadSample::all().takes(id)));
    assert!(!ids.iter().any(|id| ReadSample::none().takes(id)));
}

#[test]
fn a_damaged_manifest_is_named_kept_out_of_the_readable_ones_and_stops_a_sweep() {
    let dir = tempfile::tempdir().unwrap();
    let repo = BlockRepository::init(store(dir.path()), None, None).unwrap();
    let data = disk(2, 0, 4, &[]);
    let (rec, blocks) = full_backup(&repo, "vda", &data);
    commit(&repo, "b1", 1, vec![(rec.clone(), blocks.clone())]);
    let m2 = commit(&repo, "b2", 2, vec![(rec, blocks)]);
    let path = dir.path().join(format!("backups/{DOMAIN}/b1.manifest"));
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&path, bytes).unwrap();

    let (readable, unreadable) = repo.readable_backups(DOMAIN).unwrap();
    assert_eq!(readable, vec![m2.clone()]);
    assert_eq!(unreadable.len(), 1);
    assert_eq!(unreadable[0].0, "b1");
    assert!(repo.backups(DOMAIN).is_err(), "the strict listing refuses");
    // The sweep cannot mark what the damaged manifest names: it removes nothing.
    let before = repo.store().list("blocks").unwrap();
    assert!(prune(&repo, "host", &[], false, Duration::from_secs(60)).is_err());
    assert_eq!(repo.store().list("blocks").unwrap(), before);
    assert_eq!(
        restored(&repo, &m2, "vda"),
        data,
        "the other backup still restores"
    );
}

#[test]
fn a_second_init_that_lost_the_race_reads_the_winners_config() {
    let dir = tempfile::tempdir().unwrap();
    let (key, _) = KeyFileKey::generate().unwrap();
    // Two hosts looked, found nothing, and both initialise: the config written last counts.
    let first = BlockRepository::init(store(dir.path()), Some(&key), None).unwrap();
    std::fs::remove_file(dir.path().join("config")).unwrap();
    let second = BlockRepository::init(store(dir.path()), Some(&key), None).unwrap();
    let reread = BlockRepository::open(first.reopen_store(), Some(&key)).unwrap();
    assert_eq!(reread.config().id, second.config().id);
    assert_ne!(first.config().id, second.config().id);
}

#[test]
fn lookup_and_access_errors_name_what_was_asked_and_where() {
    let store = "s3://vrb/hv1 at https://rgw:7443".to_string();
    let cases = [
        (
            BlockRepoError::NoBackupsOfDomain { store: store.clone(), domain: "web1".into() },
            "no backups of domain web1 in s3://vrb/hv1 at https://rgw:7443; give a name or UUID that `list` shows",
        ),
        (
            BlockRepoError::NoSuchDisk {
                store: store.clone(),
                domain: "web1".into(),
                backup: "20261205T010203.004Z".into(),
                target: "vdc".into(),
                disks: vec!["vda".into(), "vdb".into()],
            },
            "backup 20261205T010203.004Z of web1 in s3://vrb/hv1 at https://rgw:7443 has no disk vdc; it has vda, vdb",
        ),
        (
            BlockRepoError::LayoutMismatch { store: "/srv/b".into(), found: "folder", asked: "blocks" },
            "repository /srv/b has the folder layout, not the blocks layout asked for (layout option); s3:// holds only the blocks layout",
        ),
        (
            BlockRepoError::KeyFile { path: "/etc/k".into(), reason: "mode 0644 lets other users read the key: chmod 600 it".into() },
            "repository key file /etc/k: mode 0644 lets other users read the key: chmod 600 it",
        ),
    ];
    for (error, message) in cases {
        assert_eq!(error.to_string(), message);
    }
}
