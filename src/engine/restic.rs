//! restic as a backup target, as the original tool used it: each disk's snapshot is streamed
//! into `restic backup --stdin`, one restic process per disk, several disks at once.
//!
//! Secrets stay off command lines: the repository location goes to restic through
//! `RESTIC_REPOSITORY` in its environment (a REST URL may carry credentials) and the password
//! through `--password-file FILE` or the `RESTIC_PASSWORD*` variables already in our
//! environment. restic's exit status decides; its stderr (which never holds the password) is
//! quoted in the error.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::thread::JoinHandle;

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// Where and how to run restic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResticTarget {
    /// The restic repository (`/srv/restic`, `sftp:...`, `rest:...`).
    pub repository: String,
    /// File holding the password; without it restic reads `RESTIC_PASSWORD*` from the environment.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// The restic binary.
    #[serde(default = "default_binary")]
    pub binary: String,
}

fn default_binary() -> String {
    "restic".into()
}

impl ResticTarget {
    /// Checks that a password source exists, so a run fails at the start rather than per disk.
    pub fn validate(&self) -> Result<(), Error> {
        if self.repository.is_empty() {
            return Err(Error::Usage("the restic repository is empty".into()));
        }
        match &self.password_file {
            Some(path) if !path.is_file() => {
                Err(Error::Usage(format!("the restic password file {} does not exist", path.display())))
            }
            Some(_) => Ok(()),
            None if ["RESTIC_PASSWORD", "RESTIC_PASSWORD_FILE", "RESTIC_PASSWORD_COMMAND"]
                .iter()
                .any(|v| std::env::var_os(v).is_some()) =>
            {
                Ok(())
            }
            None => Err(Error::Usage(
                "restic needs a password: give a password file, or set RESTIC_PASSWORD_FILE in the environment".into(),
            )),
        }
    }

    fn command(&self) -> Command {
        let mut command = Command::new(&self.binary);
        command
            .env("RESTIC_REPOSITORY", &self.repository)
            .env_remove("RESTIC_REPOSITORY_FILE");
        if let Some(file) = &self.password_file {
            command.arg("--password-file").arg(file);
        }
        command
    }

    /// Starts `restic backup --stdin` for one disk.
    pub fn start_backup(
        &self,
        filename: &str,
        tags: &[String],
        host: &str,
    ) -> Result<ResticUpload, Error> {
        let mut command = self.command();
        command
            .args([
                "backup",
                "--stdin",
                "--stdin-filename",
                filename,
                "--host",
                host,
                "--json",
                "--quiet",
            ])
            .args(tags.iter().flat_map(|t| ["--tag", t.as_str()]))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().map_err(|e| {
            Error::Restic(format!(
                "cannot run {}: {e}; is restic installed?",
                self.binary
            ))
        })?;
        let stdin = child.stdin.take();
        // Drained in the background: restic must never block on a full pipe while we feed it.
        let stdout = drain(child.stdout.take());
        let stderr = drain(child.stderr.take());
        Ok(ResticUpload {
            child,
            stdin,
            stdout,
            stderr,
            filename: filename.to_string(),
        })
    }

    /// Runs a restic command to completion and returns its stdout.
    pub fn run(&self, args: &[&str]) -> Result<Vec<u8>, Error> {
        let output = self
            .command()
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| {
                Error::Restic(format!(
                    "cannot run {}: {e}; is restic installed?",
                    self.binary
                ))
            })?;
        if !output.status.success() {
            return Err(Error::Restic(format!(
                "restic {} failed ({}): {}",
                args.first().unwrap_or(&""),
                output.status,
                tail(&output.stderr)
            )));
        }
        Ok(output.stdout)
    }

    /// Starts `restic dump SNAPSHOT FILE` and returns the process with its stdout to read.
    pub fn start_dump(&self, snapshot: &str, filename: &str) -> Result<Child, Error> {
        let path = format!("/{filename}");
        self.command()
            .args(["dump", snapshot, &path])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                Error::Restic(format!(
                    "cannot run {}: {e}; is restic installed?",
                    self.binary
                ))
            })
    }
}

fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> Option<JoinHandle<Vec<u8>>> {
    pipe.map(|mut p| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = p.read_to_end(&mut buf);
            buf
        })
    })
}

/// The last lines of restic's stderr, for an error message.
fn tail(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(5)..].join("; ")
}

/// A running `restic backup --stdin`.
pub struct ResticUpload {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Option<JoinHandle<Vec<u8>>>,
    stderr: Option<JoinHandle<Vec<u8>>>,
    filename: String,
}

impl ResticUpload {
    /// Where the image's bytes go.
    pub fn input(&mut self) -> Result<&mut ChildStdin, Error> {
        self.stdin
            .as_mut()
            .ok_or_else(|| Error::Restic("restic's input is already closed".into()))
    }

    /// Closes the input, waits for restic and returns the snapshot id it made.
    pub fn finish(mut self) -> Result<String, Error> {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.flush();
        }
        let status = self
            .child
            .wait()
            .map_err(|e| Error::Restic(format!("waiting for restic: {e}")))?;
        let stdout = self
            .stdout
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        let stderr = self
            .stderr
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        if !status.success() {
            return Err(Error::Restic(format!(
                "restic backup of {} failed ({status}): {}",
                self.filename,
                tail(&stderr)
            )));
        }
        summary_snapshot_id(&stdout).ok_or_else(|| {
            Error::Restic(format!(
                "restic backup of {} reported no snapshot id: {}",
                self.filename,
                tail(&stdout)
            ))
        })
    }
}

impl Drop for ResticUpload {
    fn drop(&mut self) {
        // Not finished (an error while streaming): stop restic so it does not save a truncated
        // image as a snapshot.
        if self.stdin.is_some() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The `snapshot_id` of restic's JSON summary line.
pub fn summary_snapshot_id(stdout: &[u8]) -> Option<String> {
    String::from_utf8_lossy(stdout)
        .lines()
        .rev()
        .find_map(|line| {
            let value: serde_json::Value = serde_json::from_str(line).ok()?;
            if value.get("message_type")?.as_str()? == "summary" {
                value.get("snapshot_id")?.as_str().map(str::to_string)
            } else {
                None
            }
        })
}

/// This host's name, as restic records it.
pub fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `len` bytes into our buffer.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr() as *mut libc::c_char, buf.len()) };
    if rc != 0 {
        return "localhost".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_id_comes_from_the_summary_line() {
        let out = br#"{"message_type":"status","percent_done":0.5}
{"message_type":"summary","files_new":1,"snapshot_id":"4f1c2a9e"}
"#;
        assert_eq!(summary_snapshot_id(out), Some("4f1c2a9e".into()));
        assert_eq!(summary_snapshot_id(b"not json\n"), None);
    }

    #[test]
    fn snapshot_lists_keep_only_this_tools_disks() {
        let json = br#"[
          {"id":"aa11","time":"2026-11-26T10:34:00Z","hostname":"hv1","tags":["virt-rbd-backup","domain=u-1","disk=vda","name=web"],"paths":["/web-a.img"]},
          {"id":"bb22","time":"2026-11-26T10:35:00Z","hostname":"hv1","tags":["other"],"paths":["/etc"]}
        ]"#;
        let list = parse_restic_snapshots(json).unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(
            (
                list[0].domain.as_str(),
                list[0].disk.as_str(),
                list[0].file.as_str()
            ),
            ("web", "vda", "web-a.img")
        );
        assert!(parse_restic_snapshots(b"garbage").is_err());
    }

    #[test]
    fn a_missing_password_source_is_a_usage_error() {
        let t = ResticTarget {
            repository: "/x".into(),
            password_file: Some("/nonexistent/pw".into()),
            binary: "restic".into(),
        };
        assert!(t
            .validate()
            .unwrap_err()
            .to_string()
            .contains("does not exist"));
    }
}

/// A disk backup in a restic repository, as `restic snapshots` lists it.
#[derive(Debug, Clone, Serialize)]
pub struct ResticSnapshot {
    /// restic's snapshot id.
    pub id: String,
    /// When restic took it (RFC 3339, as restic prints it).
    pub time: String,
    /// Host that made it.
    pub host: String,
    /// Domain UUID (tag `domain=`).
    pub domain_uuid: String,
    /// Domain name (tag `name=`).
    pub domain: String,
    /// Disk target (tag `disk=`).
    pub disk: String,
    /// The file inside the snapshot (`IMAGE.img`).
    pub file: String,
}

fn tag_value(tags: &[String], key: &str) -> String {
    tags.iter()
        .find_map(|t| t.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
        .unwrap_or_default()
        .to_string()
}

/// Parses `restic snapshots --json` output into the tool's disk backups.
pub fn parse_restic_snapshots(json: &[u8]) -> Result<Vec<ResticSnapshot>, Error> {
    #[derive(Deserialize)]
    struct Raw {
        id: String,
        time: String,
        #[serde(default)]
        hostname: String,
        #[serde(default)]
        tags: Vec<String>,
        #[serde(default)]
        paths: Vec<String>,
    }
    let raw: Vec<Raw> = serde_json::from_slice(json)
        .map_err(|e| Error::Restic(format!("cannot read restic's snapshot list: {e}")))?;
    Ok(raw
        .into_iter()
        .filter(|r| r.tags.iter().any(|t| t == "virt-rbd-backup"))
        .map(|r| ResticSnapshot {
            domain_uuid: tag_value(&r.tags, "domain"),
            domain: tag_value(&r.tags, "name"),
            disk: tag_value(&r.tags, "disk"),
            file: r
                .paths
                .first()
                .map(|p| p.trim_start_matches('/').to_string())
                .unwrap_or_default(),
            id: r.id,
            time: r.time,
            host: r.hostname,
        })
        .collect())
}

/// The tool's disk backups in a restic repository, oldest first; only those of `domain`
/// (name or UUID) when given.
pub fn list_restic(
    target: &ResticTarget,
    domain: Option<&str>,
) -> Result<Vec<ResticSnapshot>, Error> {
    let out = target.run(&["snapshots", "--json", "--tag", "virt-rbd-backup"])?;
    let mut snapshots = parse_restic_snapshots(&out)?;
    if let Some(d) = domain {
        snapshots.retain(|s| s.domain == d || s.domain_uuid == d);
    }
    snapshots.sort_by(|a, b| a.time.cmp(&b.time));
    Ok(snapshots)
}
