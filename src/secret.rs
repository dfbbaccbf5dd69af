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
