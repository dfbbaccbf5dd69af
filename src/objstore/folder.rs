//! A folder as an object store: one file per object, written whole or not at all.
//!
//! A put writes `.put-<pid>-<n>-<name>` beside the object, fsyncs it, renames it over the
//! object and fsyncs the folder, so a crash leaves the old object or the new one, never a
//! part, and a returned put survives a power cut. Folders made for a key are fsynced into
//! their parents too. Listing skips the temporary files of puts in flight (or of a crashed
//! writer: they are not objects).

use std::fs::{self, File};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::{check_key, ObjectInfo, ObjectStore, StoreError};

const TEMP_PREFIX: &str = ".put-";

/// Objects as files under a root folder.
pub struct FolderStore {
    root: PathBuf,
    next_temp: AtomicU64,
}

impl FolderStore {
    /// A store rooted at `root` (made on the first put if missing).
    pub fn new(root: PathBuf) -> Self {
        FolderStore {
            root,
            next_temp: AtomicU64::new(0),
        }
    }

    fn path_of(&self, key: &str) -> Result<PathBuf, StoreError> {
        check_key(key)?;
        Ok(self.root.join(key))
    }

    fn io(&self, operation: &'static str, key: &str, e: impl std::fmt::Display) -> StoreError {
        StoreError::Io {
            store: self.describe(),
            operation,
            key: key.to_string(),
            reason: e.to_string(),
        }
    }

    /// Makes `dir` and its missing parents, fsyncing each new folder into its parent.
    fn make_dirs(&self, dir: &Path) -> std::io::Result<()> {
        if dir.is_dir() {
            return Ok(());
        }
        if let Some(parent) = dir.parent() {
            self.make_dirs(parent)?;
        }
        match fs::create_dir(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::AlreadyExists => return Ok(()),
            Err(e) => return Err(e),
        }
        if let Some(parent) = dir.parent() {
            File::open(parent)?.sync_all()?;
        }
        Ok(())
    }
}

impl ObjectStore for FolderStore {
    fn describe(&self) -> String {
        self.root.display().to_string()
    }

    fn put(&self, key: &str, data: Vec<u8>) -> Result<(), StoreError> {
        let path = self.path_of(key)?;
        let dir = path.parent().unwrap_or(&self.root).to_path_buf();
        self.make_dirs(&dir).map_err(|e| self.io("put", key, e))?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let temp = dir.join(format!(
            "{TEMP_PREFIX}{}-{}-{name}",
            std::process::id(),
            self.next_temp.fetch_add(1, Ordering::Relaxed)
        ));
        let written = (|| {
            let mut file = File::create(&temp)?;
            file.write_all(&data)?;
            file.sync_all()?;
            fs::rename(&temp, &path)?;
            File::open(&dir)?.sync_all()
        })();
        if let Err(e) = written {
            let _ = fs::remove_file(&temp);
            return Err(self.io("put", key, e));
        }
        Ok(())
    }

    fn get(&self, key: &str) -> Result<Vec<u8>, StoreError> {
        let path = self.path_of(key)?;
        fs::read(&path).map_err(|e| match e.kind() {
            ErrorKind::NotFound => StoreError::NotFound {
                store: self.describe(),
                key: key.to_string(),
            },
            _ => self.io("get", key, e),
        })
    }

    fn head(&self, key: &str) -> Result<Option<u64>, StoreError> {
        let path = self.path_of(key)?;
        match fs::metadata(&path) {
            Ok(m) if m.is_file() => Ok(Some(m.len())),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.io("head", key, e)),
        }
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        let start = if prefix.is_empty() {
            self.root.clone()
        } else {
            self.path_of(prefix.trim_end_matches('/'))?
        };
        let mut found = Vec::new();
        let mut pending = vec![start];
        while let Some(dir) = pending.pop() {
            let entries = match fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                // The prefix may name one object rather than a folder.
                Err(_) if dir.is_file() => {
                    push_file(&self.root, &dir, &mut found);
                    continue;
                }
                Err(e) => return Err(self.io("list", prefix, e)),
            };
            for entry in entries {
                let entry = entry.map_err(|e| self.io("list", prefix, e))?;
                let kind = entry.file_type().map_err(|e| self.io("list", prefix, e))?;
                if kind.is_dir() {
                    pending.push(entry.path());
                } else if kind.is_file()
                    && !entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX)
                {
                    push_file(&self.root, &entry.path(), &mut found);
                }
            }
        }
        found.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(found)
    }

    fn delete(&self, key: &str) -> Result<(), StoreError> {
        let path = self.path_of(key)?;
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(self.io("delete", key, e)),
        }
        if let Some(dir) = path.parent() {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| self.io("delete", key, e))?;
        }
        Ok(())
    }
}

fn push_file(root: &Path, path: &Path, found: &mut Vec<ObjectInfo>) {
    let (Ok(relative), Ok(metadata)) = (path.strip_prefix(root), fs::metadata(path)) else {
        return;
    };
    found.push(ObjectInfo {
        key: relative.to_string_lossy().into_owned(),
        size: metadata.len(),
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_store_contract() {
        let dir = tempfile::tempdir().unwrap();
        let store = FolderStore::new(dir.path().join("repo"));
        super::super::conformance::check_store(&store, "conformance");
    }

    #[test]
    fn a_crashed_put_leaves_no_object() {
        let dir = tempfile::tempdir().unwrap();
        let store = FolderStore::new(dir.path().to_path_buf());
        store.put("a/b", b"whole".to_vec()).unwrap();
        // What a writer killed before its rename leaves behind.
        fs::write(dir.path().join("a/.put-1-0-c"), b"part").unwrap();
        let keys: Vec<_> = store.list("").unwrap().into_iter().map(|o| o.key).collect();
        assert_eq!(keys, ["a/b"]);
        assert_eq!(store.head("a/c").unwrap(), None);
    }
}
