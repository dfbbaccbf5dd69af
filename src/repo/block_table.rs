//! Block hash tables (`*.blocks`, `*.b3`): 32-byte BLAKE3 hashes of consecutive 4 MiB blocks,
//! nothing else. BLAKE3 of a table's bytes is the `blake3-4m` checksum it belongs to, so a
//! table is verified against the manifest before it is trusted.

use std::fs;
use std::io::Write;
use std::path::Path;

use super::error::RepoError;
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
    let bytes = fs::read(path).map_err(|source| RepoError::Io {
        action: "read",
        path: path.to_path_buf(),
        source,
    })?;
    let corrupt = |message: String| RepoError::Corrupt {
        path: path.to_path_buf(),
        offset: None,
        message,
    };
    if bytes.len() as u64 != blocks * 32 {
        return Err(corrupt(format!(
            "holds {} bytes, expected {} ({} blocks of 32)",
            bytes.len(),
            blocks * 32,
            blocks
        )));
    }
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
        let mut bytes = fs::read(&path).unwrap();
        bytes[40] ^= 1;
        fs::write(&path, &bytes).unwrap();
        let err = read_block_table(&path, &sum, 2).unwrap_err().to_string();
        assert!(err.contains("does not match"), "{err}");
    }
}
