//! Repository locations: a folder path or `s3://BUCKET/PREFIX` (pure: text in, location out).
//!
//! A location is written on command lines, in config.toml and in unit files, all of which end
//! up in logs and `ps`: so it never carries credentials, and a location that tries
//! (`s3://KEY:SECRET@bucket`) is refused with a message that says where keys go instead.

use std::path::PathBuf;

use super::StoreError;

/// Where a repository lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RepoLocation {
    /// A local (or NFS) folder.
    Folder(PathBuf),
    /// A bucket on an S3-compatible store and a prefix in it (`""` for the bucket's root; no
    /// leading or trailing `/`).
    S3 { bucket: String, prefix: String },
}

impl RepoLocation {
    /// The location as an operator writes it.
    pub fn display(&self) -> String {
        match self {
            RepoLocation::Folder(path) => path.display().to_string(),
            RepoLocation::S3 { bucket, prefix } if prefix.is_empty() => format!("s3://{bucket}"),
            RepoLocation::S3 { bucket, prefix } => format!("s3://{bucket}/{prefix}"),
        }
    }
}

/// Parses a repository location: `s3://BUCKET[/PREFIX]`, anything else is a folder path.
pub fn parse_location(text: &str) -> Result<RepoLocation, StoreError> {
    let bad = |reason: String| StoreError::BadLocation {
        // Never echo what could be a secret: the part before '@' is cut.
        location: match text.rfind('@') {
            Some(at) if text.starts_with("s3://") => format!("s3://…{}", &text[at..]),
            _ => text.to_string(),
        },
        reason,
    };
    let Some(rest) = text.strip_prefix("s3://") else {
        if text.contains("://") {
            return Err(bad(
                "only s3:// is supported besides folder paths".to_string()
            ));
        }
        if text.is_empty() {
            return Err(bad("empty".to_string()));
        }
        return Ok(RepoLocation::Folder(PathBuf::from(text)));
    };
    if rest.contains('@') {
        return Err(bad("credentials do not belong in a location (it shows in logs and ps): put them in a credentials file (s3_credentials) or the AWS_* environment".to_string()));
    }
    if rest.contains('?') || rest.contains('#') {
        return Err(bad(
            "no query or fragment: the endpoint, region and options are settings of their own (s3_endpoint, s3_region, s3_ca_file)".to_string(),
        ));
    }
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    check_bucket(bucket).map_err(bad)?;
    let prefix = prefix.trim_end_matches('/');
    if !prefix.is_empty() {
        super::check_key(prefix).map_err(|e| bad(format!("prefix: {e}")))?;
    }
    Ok(RepoLocation::S3 {
        bucket: bucket.to_string(),
        prefix: prefix.to_string(),
    })
}

/// S3's bucket naming rules (3 to 63 lowercase letters, digits, dots and hyphens, starting
/// and ending with a letter or digit), which RGW enforces too.
fn check_bucket(bucket: &str) -> Result<(), String> {
    if bucket.is_empty() {
        return Err("no bucket: write s3://BUCKET/PREFIX".to_string());
    }
    if !(3..=63).contains(&bucket.len()) {
        return Err(format!("bucket '{bucket}' must have 3 to 63 characters"));
    }
    let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-';
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if !bucket.chars().all(allowed) || !edge(bucket.chars().next()) || !edge(bucket.chars().last())
    {
        return Err(format!("bucket '{bucket}' may hold only lowercase letters, digits, '.' and '-', and must start and end with a letter or digit"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s3(bucket: &str, prefix: &str) -> RepoLocation {
        RepoLocation::S3 {
            bucket: bucket.into(),
            prefix: prefix.into(),
        }
    }

    #[test]
    fn folders_and_buckets() {
        assert_eq!(
            parse_location("/var/backups/vms").unwrap(),
            RepoLocation::Folder("/var/backups/vms".into())
        );
        assert_eq!(parse_location("s3://vms").unwrap(), s3("vms", ""));
        assert_eq!(parse_location("s3://vms/").unwrap(), s3("vms", ""));
        assert_eq!(
            parse_location("s3://vm-backups.site1/hv/node-3/").unwrap(),
            s3("vm-backups.site1", "hv/node-3")
        );
        assert_eq!(
            parse_location("s3://vm-backups.site1/hv/node-3")
                .unwrap()
                .display(),
            "s3://vm-backups.site1/hv/node-3"
        );
    }

    #[test]
    fn refuses_what_would_go_wrong_later() {
        for (text, says) in [
            ("", "empty"),
            ("s3://", "no bucket"),
            ("s3://ab", "3 to 63"),
            ("s3://Backups", "lowercase"),
            ("s3://-vms", "start and end"),
            ("s3://vms/a//b", "prefix"),
            ("s3://vms/../x", "prefix"),
            ("s3://vms?region=x", "no query"),
            ("gs://vms", "only s3://"),
        ] {
            let err = parse_location(text).unwrap_err().to_string();
            assert!(err.contains(says), "{text:?}: {err}");
        }
    }

    #[test]
    fn credentials_in_a_location_are_refused_and_not_echoed() {
        let err = parse_location("s3://AKIAXYZ:s3cr3tKey@vms/prefix")
            .unwrap_err()
            .to_string();
        assert!(err.contains("credentials file"), "{err}");
        assert!(
            !err.contains("s3cr3tKey") && !err.contains("AKIAXYZ"),
            "{err}"
        );
    }
}
