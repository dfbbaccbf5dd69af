//! Secrets (Ceph keys) held only in memory.
//!
//! A `SecretString` never prints its content: `Debug` and `Display` show `<redacted>`, it is
//! not serializable, and its bytes are zeroed when dropped. Keys read from libvirt travel
//! through the program in this type so that no log line, report or error can carry them.

use std::fmt;
use zeroize::Zeroizing;

/// A secret value that cannot be printed or serialized by accident.
#[derive(Clone)]
pub struct SecretString(Zeroizing<String>);

impl SecretString {
    /// Wraps a secret.
    pub fn new(value: String) -> Self {
        SecretString(Zeroizing::new(value))
    }

    /// The secret itself, for the one call that needs it (for example `rados_conf_set("key")`).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Reads a file that holds a secret, refusing one that other users may read (mode & 077).
pub fn read_private_file(path: &std::path::Path) -> std::io::Result<Zeroizing<String>> {
    use std::os::unix::fs::PermissionsExt;
    let metadata = std::fs::metadata(path)?;
    let mode = metadata.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!("mode {mode:04o} lets other users read the key: chmod 600 it"),
        ));
    }
    Ok(Zeroizing::new(std::fs::read_to_string(path)?))
}

/// Creates a new file (mode 0600, never over an existing one) holding a secret, fsynced.
pub fn write_private_file(path: &std::path::Path, content: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(content)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_never_formats_its_value() {
        let s = SecretString::new("AQBsecretkey==".into());
        assert_eq!(format!("{s:?}"), "<redacted>");
        assert_eq!(format!("{s}"), "<redacted>");
        assert_eq!(s.expose(), "AQBsecretkey==");
    }
}
