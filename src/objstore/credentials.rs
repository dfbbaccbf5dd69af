//! S3 credentials: from an AWS shared credentials file or from the `AWS_*` environment.
//!
//! The file is the format the AWS tools write (`[profile]` sections with
//! `aws_access_key_id`, `aws_secret_access_key`, optionally `aws_session_token`), so an
//! operator can reuse one they have. Like ssh with its keys, a file others can read is
//! refused: a key that leaked to every local user is not a secret any more.

use std::path::Path;

use crate::secret::SecretString;

use super::StoreError;

/// An access key and its secret (and a session token for temporary credentials).
#[derive(Debug, Clone)]
pub struct S3Credentials {
    /// The access key id; not secret on its own, but kept out of messages anyway.
    pub access_key_id: SecretString,
    /// The secret access key.
    pub secret_access_key: SecretString,
    /// The session token of temporary credentials.
    pub session_token: Option<SecretString>,
}

/// Parses the text of a shared credentials file and returns `profile`'s credentials; the
/// error says what is missing (never a value).
pub fn parse_credentials(text: &str, profile: &str) -> Result<S3Credentials, String> {
    let mut in_profile = false;
    let mut seen_profile = false;
    let (mut id, mut secret, mut token) = (None, None, None);
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(section) = line.strip_prefix('[') {
            let name = section
                .strip_suffix(']')
                .ok_or_else(|| format!("line {}: a section header must end with ']'", number + 1))?
                .trim();
            // ~/.aws/config writes "[profile NAME]"; the credentials file "[NAME]".
            let name = name.strip_prefix("profile ").unwrap_or(name).trim();
            in_profile = name == profile;
            seen_profile |= in_profile;
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err(format!(
                "line {}: expected 'key = value' or '[profile]'",
                number + 1
            ));
        };
        if !in_profile {
            continue;
        }
        let value = SecretString::new(value.trim().to_string());
        match key.trim() {
            "aws_access_key_id" => id = Some(value),
            "aws_secret_access_key" => secret = Some(value),
            "aws_session_token" => token = Some(value),
            _ => {}
        }
    }
    if !seen_profile {
        return Err(format!("has no [{profile}] section"));
    }
    match (id, secret) {
        (Some(access_key_id), Some(secret_access_key))
            if !access_key_id.expose().is_empty() && !secret_access_key.expose().is_empty() =>
        {
            Ok(S3Credentials {
                access_key_id,
                secret_access_key,
                session_token: token,
            })
        }
        _ => Err(format!(
            "section [{profile}] needs both aws_access_key_id and aws_secret_access_key"
        )),
    }
}

/// Reads `profile`'s credentials from a file, refusing a file that others may read.
pub fn load_credentials_file(path: &Path, profile: &str) -> Result<S3Credentials, StoreError> {
    let fail = |reason: String| StoreError::Credentials {
        path: path.to_path_buf(),
        reason,
    };
    let metadata = std::fs::metadata(path).map_err(|e| fail(e.to_string()))?;
    check_private(&metadata).map_err(fail)?;
    let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
    parse_credentials(&text, profile).map_err(fail)
}

#[cfg(unix)]
fn check_private(metadata: &std::fs::Metadata) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = metadata.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "mode {mode:04o} lets other users read the keys: chmod 600 it"
        ));
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private(_: &std::fs::Metadata) -> Result<(), String> {
    Ok(())
}

/// Credentials from `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY` (and `AWS_SESSION_TOKEN`),
/// when both are set.
pub fn credentials_from_env() -> Option<S3Credentials> {
    let get = |name: &str| {
        std::env::var(name)
            .ok()
            .filter(|v| !v.is_empty())
            .map(SecretString::new)
    };
    Some(S3Credentials {
        access_key_id: get("AWS_ACCESS_KEY_ID")?,
        secret_access_key: get("AWS_SECRET_ACCESS_KEY")?,
        session_token: get("AWS_SESSION_TOKEN"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "# lab keys\n[default]\naws_access_key_id = AK1\naws_secret_access_key = SK1\n\n[profile backup]\naws_access_key_id=AK2\naws_secret_access_key=SK2\naws_session_token = TOK\n[other]\nregion = x\n";

    #[test]
    fn reads_profiles() {
        let d = parse_credentials(FILE, "default").unwrap();
        assert_eq!(
            (d.access_key_id.expose(), d.secret_access_key.expose()),
            ("AK1", "SK1")
        );
        assert!(d.session_token.is_none());
        let b = parse_credentials(FILE, "backup").unwrap();
        assert_eq!(b.secret_access_key.expose(), "SK2");
        assert_eq!(b.session_token.unwrap().expose(), "TOK");
    }

    #[test]
    fn says_what_is_missing_without_values() {
        assert!(parse_credentials(FILE, "nope")
            .unwrap_err()
            .contains("no [nope] section"));
        let err = parse_credentials(FILE, "other").unwrap_err();
        assert!(err.contains("needs both"), "{err}");
        let err = parse_credentials("[default]\naws_access_key_id SK\n", "default").unwrap_err();
        assert!(err.contains("line 2"), "{err}");
        assert!(!err.contains("SK"), "{err}");
        assert!(format!("{:?}", parse_credentials(FILE, "default").unwrap()).contains("<redacted>"));
    }

    #[test]
    fn refuses_a_file_others_can_read() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("creds");
        std::fs::write(&path, FILE).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = load_credentials_file(&path, "default")
            .unwrap_err()
            .to_string();
        assert!(err.contains("chmod 600"), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(load_credentials_file(&path, "default").is_ok());
    }
}
