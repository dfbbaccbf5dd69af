//! Block hash tables (`*.blocks`, `*.b3`): 32-byte BLAKE3 hashes of consecutive 4 MiB blocks,
//! nothing else. BLAKE3 of a table's bytes is the `blake3-4m` checksum it belongs to, so a
//! table is verified against the manifest before it is trusted, and its size against the
//! block count before it is read (`stored_file`: no links, FIFOs or devices).

use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::error::RepoError;
use super::stored_file::open_stored_file;
use super::{create_new_file, io_err};
use crate::plan::checksum_of_table;

/// Writes a table (new file, mode 0600, fsynced).
pub fn write_block_table(path: &Path, table: &[[u8; 32]]) -> Result<(), RepoError> {
    let mut file = create_new_file(path)?;
    let bytes: Vec<u8> = table.iter().flatten().copied().collect();
    file.write_all(&bytes).map_err(io_err("write", path))?;
    file.sync_all().map_err(io_err("fsync", path))
}

/// Reads a table and checks it against `checksum` and the expected number of blocks.
pub fn read_block_table(
    path: &Path,
    checksum: &str,
    blocks: u64,
) -> Result<Vec<[u8; 32]>, RepoError> {
    let corrupt = |message: String| RepoError::Corrupt {
        path: path.to_path_buf(),
        offset: None,
        message,
    };
    let expected = blocks
        .checked_mul(32)
        .ok_or_else(|| corrupt(format!("{blocks} blocks cannot be a table")))?;
    // Size checked on the open descriptor before anything is read: a link to /dev/zero, a
    // FIFO or a huge file is refused here, not read into memory.
    let (file, size) = open_stored_file(path, None)?;
    if size != expected {
        return Err(corrupt(format!(
            "holds {size} bytes, expected {expected} ({blocks} blocks of 32)"
        )));
    }
    let mut bytes = vec![0u8; expected as usize];
    file.read_exact_at(&mut bytes, 0)
        .map_err(|source| RepoError::Io {
            action: "read",
            path: path.to_path_buf(),
            source,
        })?;
    let table: Vec<[u8; 32]> = bytes
        .chunks_exact(32)
        .map(|c| c.try_into().expect("chunks_exact yields 32 bytes"))
        .collect();
    let actual = checksum_of_table(&table);
    if actual != checksum {
        return Err(corrupt(format!(
            "does not match the manifest's checksum ({actual} instead of {checksum})"
        )));
    }
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_round_trip_and_tampering_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vda.blocks");
        let table = vec![[1u8; 32], [2u8; 32]];
        write_block_table(&path, &table).unwrap();
        let sum = checksum_of_table(&table);
        assert_eq!(read_block_table(&path, &sum, 2).unwrap(), table);
        assert!(read_block_table(&path, &sum, 3).is_err());
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[40] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let err = read_block_table(&path, &sum, 2).unwrap_err().to_string();
        assert!(err.contains("does not match"), "{err}");
    }

    #[test]
    fn a_table_that_is_a_link_to_dev_zero_a_fifo_or_oversized_fails_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let sum = checksum_of_table(&[[1u8; 32]]);
        let started = std::time::Instant::now();
        let link = dir.path().join("link.blocks");
        std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
        let fifo = dir.path().join("fifo.blocks");
        crate::repo::stored_file::tests::make_fifo(&fifo);
        for path in [&link, &fifo] {
            let err = read_block_table(path, &sum, 1).unwrap_err();
            assert!(matches!(err, RepoError::NotARegularFile { .. }), "{err}");
        }
        // A sparse 1 TiB file for a 1-block image: refused by size, never read.
        let huge = dir.path().join("huge.blocks");
        std::fs::File::create(&huge)
            .unwrap()
            .set_len(1 << 40)
            .unwrap();
        let err = read_block_table(&huge, &sum, 1).unwrap_err().to_string();
        assert!(err.contains("expected 32"), "{err}");
        assert!(read_block_table(&huge, &sum, u64::MAX).is_err());
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
    }
}
