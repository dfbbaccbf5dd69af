//! restic as a backup target, as the original tool used it: each disk's snapshot is streamed
//! into `restic backup --stdin`, one restic process per disk, several disks at once.
//!
//! Secrets stay off command lines: the repository location goes to restic through
//! `RESTIC_REPOSITORY` in its environment (a REST URL may carry credentials) and the password
//! through `--password-file FILE` or the `RESTIC_PASSWORD*` variables already in our
//! environment. restic's exit status decides; its stderr (which never holds the password) is
//! quoted in the error.
//!
//! # Complete snapshots: the seal
//!
//! `restic backup --stdin` commits whatever it read when its input ends, so a run killed
//! mid-export could leave a snapshot holding the first part of a disk that looks like any
//! other. Two things stop that from ever being restored as a disk:
//!
//! - Every restic we start gets `PR_SET_PDEATHSIG` = `SIGKILL`: when the thread that started it
//!   dies (we were killed), restic is killed too instead of reading EOF and committing.
//!   `SIGKILL` rather than `SIGTERM`: the kernel closes our end of the pipe *before* it sends
//!   the parent-death signal, so restic sees EOF first; a signal restic handles (newer restic
//!   cancels on `SIGTERM`) would leave it a window to go on and save; `SIGKILL` leaves none.
//!   (restic 0.14 does not handle `SIGTERM` either: it dies the same way.) The cost: restic
//!   leaves its lock file in the repository; it is a shared lock, other backups go on, and
//!   restic treats it as stale (its process is gone) and `restic unlock` removes it.
//! - That alone is not trusted (a restic started through a wrapper, a restic that outlives us
//!   some other way): a disk's snapshot counts as complete only with a **seal**, a second,
//!   small restic snapshot written after restic committed the disk, the export read every
//!   block, restic counted as many bytes as the image has, and the Ceph snapshot was checked to
//!   still be the one we created. `restic tag` cannot do this: it takes restic's exclusive
//!   lock (it fails while any other disk's backup runs) and rewrites the snapshot under a new
//!   id.
//!
//! The disk's snapshot: path `/IMAGE.img`, tags `virt-rbd-backup`, `domain=UUID`, `name=NAME`,
//! `disk=DEV`, `size=BYTES` (the image size, known before the upload). Its seal: path
//! `/IMAGE.img.seal.json`, tags `virt-rbd-backup-seal`, `snapshot=ID` (restic's short id of
//! the disk's snapshot, as its summary prints it), `domain=UUID`, `disk=DEV`, `size=BYTES`,
//! `checksum=blake3-4m:HEX` (the content checksum of the repository format, over the bytes
//! sent); its content is [`ResticSeal`] as JSON, for people: the listing reads the tags only,
//! so one `restic snapshots` call lists everything. A disk snapshot is complete when a seal
//! names it (id prefix, same domain and disk) with a well-formed checksum and, if the snapshot
//! has a `size=` tag, the same size. Restore checks the size and the checksum of what
//! `restic dump` returns against the seal before the result is renamed into place.
//! To forget old snapshots with restic, give both tags: `restic forget --tag virt-rbd-backup
//! --tag virt-rbd-backup-seal --keep-daily 7` (restic groups by host and path, so seals age out
//! in step with their disks).

use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::thread::JoinHandle;

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// Tag of the disks' snapshots.
pub const DISK_TAG: &str = "virt-rbd-backup";
/// Tag of the seals.
pub const SEAL_TAG: &str = "virt-rbd-backup-seal";
/// `format` of a seal's JSON.
pub const SEAL_FORMAT: &str = "virt-rbd-backup-restic-seal";
/// `version` of a seal's JSON.
pub const SEAL_VERSION: u32 = 1;

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

    /// A restic command that dies with the thread that starts it (see the module doc: every
    /// caller waits for its restic on the thread that started it).
    fn command(&self) -> Command {
        let mut command = Command::new(&self.binary);
        command
            .env("RESTIC_REPOSITORY", &self.repository)
            .env_remove("RESTIC_REPOSITORY_FILE");
        if let Some(file) = &self.password_file {
            command.arg("--password-file").arg(file);
        }
        // SAFETY: `getpid` is async-signal-safe and runs here, before the fork.
        let parent = unsafe { libc::getpid() };
        // SAFETY: the closure runs between fork and exec and only makes system calls
        // (`prctl`, `getppid`), which are async-signal-safe; it touches no lock or allocation.
        unsafe {
            command.pre_exec(move || {
                if libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    libc::SIGKILL as libc::c_ulong,
                    0,
                    0,
                    0,
                ) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                // We died between the fork and the prctl: no signal will come, so stop now.
                if libc::getppid() != parent {
                    return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
                }
                Ok(())
            });
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

    /// Writes the seal of a disk's snapshot (see the module doc); returns the seal's id.
    pub fn seal(&self, seal: &ResticSeal, host: &str) -> Result<String, Error> {
        let json = serde_json::to_vec_pretty(seal)
            .map_err(|e| Error::Restic(format!("cannot write the seal of {}: {e}", seal.file)))?;
        let mut upload =
            self.start_backup(&format!("{}.seal.json", seal.file), &seal.tags(), host)?;
        upload
            .input()?
            .write_all(&json)
            .map_err(|e| Error::Restic(format!("writing the seal to restic failed: {e}")))?;
        Ok(upload.finish()?.snapshot_id)
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

    /// Closes the input, waits for restic and returns what its summary says.
    pub fn finish(mut self) -> Result<ResticSummary, Error> {
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
        backup_summary(&stdout).ok_or_else(|| {
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

/// What `restic backup --json` says in its summary line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResticSummary {
    /// The snapshot it made (restic prints the short id).
    pub snapshot_id: String,
    /// Bytes it read from its input (`total_bytes_processed`), if it says.
    pub bytes_processed: Option<u64>,
}

/// The summary of restic's JSON output (its last `summary` line).
pub fn backup_summary(stdout: &[u8]) -> Option<ResticSummary> {
    String::from_utf8_lossy(stdout)
        .lines()
        .rev()
        .find_map(|line| {
            let value: serde_json::Value = serde_json::from_str(line).ok()?;
            if value.get("message_type")?.as_str()? == "summary" {
                Some(ResticSummary {
                    snapshot_id: value.get("snapshot_id")?.as_str()?.to_string(),
                    bytes_processed: value.get("total_bytes_processed").and_then(|b| b.as_u64()),
                })
            } else {
                None
            }
        })
}

/// What a seal records (its JSON content; the same facts are in its tags). See the module doc.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResticSeal {
    /// Always [`SEAL_FORMAT`].
    pub format: String,
    /// Always [`SEAL_VERSION`] for this layout.
    pub version: u32,
    /// restic's id of the disk's snapshot (short, as its summary prints it).
    pub snapshot: String,
    /// The file in that snapshot (`IMAGE.img`).
    pub file: String,
    /// Image size in bytes: what the file must hold.
    pub size: u64,
    /// `blake3-4m:` content checksum of the file.
    pub checksum: String,
    /// Domain UUID.
    pub domain_uuid: String,
    /// Domain name.
    pub domain: String,
    /// Disk target (`vda`).
    pub disk: String,
    /// `pool/image` (or `pool/namespace/image`) that was read.
    pub image: String,
    /// The Ceph snapshot that was read.
    pub ceph_snapshot: String,
    /// Its id, checked after the export.
    pub ceph_snapshot_id: u64,
}

impl ResticSeal {
    /// The seal's tags (restic splits tags at commas: none of these values holds one).
    pub fn tags(&self) -> Vec<String> {
        vec![
            SEAL_TAG.to_string(),
            format!("snapshot={}", self.snapshot),
            format!("domain={}", self.domain_uuid),
            format!("disk={}", self.disk),
            format!("size={}", self.size),
            format!("checksum={}", self.checksum),
        ]
    }
}

/// Whether `text` is a `blake3-4m:` checksum (64 lower-case hex digits).
fn is_checksum(text: &str) -> bool {
    text.strip_prefix("blake3-4m:").is_some_and(|hex| {
        hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
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
    fn snapshot_id_and_bytes_come_from_the_summary_line() {
        // restic 0.14's own output.
        let out = br#"{"message_type":"status","percent_done":0.5}
{"message_type":"summary","files_new":1,"files_changed":0,"files_unmodified":0,"dirs_new":0,"dirs_changed":0,"dirs_unmodified":0,"data_blobs":8,"tree_blobs":1,"data_added":10000757,"total_files_processed":1,"total_bytes_processed":10000000,"total_duration":0.313922902,"snapshot_id":"6c00bec8"}
"#;
        assert_eq!(
            backup_summary(out),
            Some(ResticSummary {
                snapshot_id: "6c00bec8".into(),
                bytes_processed: Some(10_000_000)
            })
        );
        let old = br#"{"message_type":"summary","files_new":1,"snapshot_id":"4f1c2a9e"}"#;
        assert_eq!(backup_summary(old).map(|s| s.bytes_processed), Some(None));
        assert_eq!(backup_summary(b"not json\n"), None);
    }

    const SUM: &str = "blake3-4m:00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

    fn seal_json(id: &str, tags: &[&str]) -> String {
        format!(
            r#"{{"id":"{id}","time":"2026-11-26T10:35:00Z","hostname":"hv1","tags":{},"paths":["/web-a.img.seal.json"]}}"#,
            serde_json::to_string(tags).unwrap()
        )
    }

    fn disk_json(id: &str, time: &str, size: Option<&str>) -> String {
        let mut tags = vec!["virt-rbd-backup", "domain=u-1", "disk=vda", "name=web"];
        let size_tag = size.map(|s| format!("size={s}"));
        if let Some(t) = &size_tag {
            tags.push(t);
        }
        format!(
            r#"{{"id":"{id}","time":"{time}","hostname":"hv1","tags":{},"paths":["/web-a.img"]}}"#,
            serde_json::to_string(&tags).unwrap()
        )
    }

    #[test]
    fn a_disk_snapshot_is_complete_only_with_a_matching_well_formed_seal() {
        let checksum = format!("checksum={SUM}");
        let list = format!(
            "[{}]",
            [
                // Sealed: complete.
                disk_json("aa11aa11ffff", "2026-11-26T10:34:00Z", Some("1048576")),
                seal_json(
                    "5ea15ea1",
                    &[
                        "virt-rbd-backup-seal",
                        "snapshot=aa11aa11",
                        "domain=u-1",
                        "disk=vda",
                        "size=1048576",
                        &checksum
                    ],
                ),
                // No seal (a killed run's, or a plain `restic backup` with our tags).
                disk_json("bb22bb22ffff", "2026-11-26T10:36:00Z", Some("1048576")),
                // A seal for another size than the snapshot was tagged with.
                disk_json("cc33cc33ffff", "2026-11-26T10:37:00Z", Some("1048576")),
                seal_json(
                    "5ea25ea2",
                    &[
                        "virt-rbd-backup-seal",
                        "snapshot=cc33cc33",
                        "domain=u-1",
                        "disk=vda",
                        "size=4096",
                        &checksum
                    ],
                ),
                // A seal without a well-formed checksum.
                disk_json("dd44dd44ffff", "2026-11-26T10:38:00Z", None),
                seal_json(
                    "5ea35ea3",
                    &[
                        "virt-rbd-backup-seal",
                        "snapshot=dd44dd44",
                        "domain=u-1",
                        "disk=vda",
                        "size=4096",
                        "checksum=sha256:00"
                    ],
                ),
                // A seal naming the right id but another disk.
                disk_json("ee55ee55ffff", "2026-11-26T10:39:00Z", Some("1048576")),
                seal_json(
                    "5ea45ea4",
                    &[
                        "virt-rbd-backup-seal",
                        "snapshot=ee55ee55",
                        "domain=u-1",
                        "disk=vdb",
                        "size=1048576",
                        &checksum
                    ],
                ),
            ]
            .join(",")
        );
        let parsed = parse_restic_snapshots(list.as_bytes()).unwrap();
        let complete: Vec<(&str, bool)> = parsed.iter().map(|s| (&s.id[..4], s.complete)).collect();
        assert_eq!(
            complete,
            vec![
                ("aa11", true),
                ("bb22", false),
                ("cc33", false),
                ("dd44", false),
                ("ee55", false)
            ]
        );
        assert_eq!(parsed[0].checksum.as_deref(), Some(SUM));
        assert_eq!(parsed[0].seal.as_deref(), Some("5ea15ea1"));
        assert_eq!(parsed[0].size, Some(1_048_576));
        // An unsealed snapshot keeps the size it was tagged with, and has no checksum.
        assert_eq!(
            (parsed[1].size, parsed[1].checksum.as_deref()),
            (Some(1_048_576), None)
        );
        // restic prints `null` for an empty list.
        assert!(parse_restic_snapshots(b"null").unwrap().is_empty());
    }

    fn snapshot(id: &str, disk: &str, complete: bool) -> ResticSnapshot {
        ResticSnapshot {
            id: id.into(),
            time: String::new(),
            host: "hv1".into(),
            domain_uuid: "u-1".into(),
            domain: "web".into(),
            disk: disk.into(),
            file: "web-a.img".into(),
            complete,
            size: Some(4096),
            checksum: complete.then(|| SUM.to_string()),
            seal: complete.then(|| format!("seal-{id}")),
        }
    }

    fn ids(list: &[ResticSnapshot]) -> Vec<&str> {
        list.iter().map(|s| s.id.as_str()).collect()
    }

    #[test]
    fn latest_is_the_newest_complete_snapshot_and_the_newer_incomplete_ones_are_reported() {
        let list = vec![
            snapshot("a1", "vda", true),
            snapshot("b2", "vda", true),
            snapshot("c3", "vda", false),
            snapshot("d4", "vda", false),
        ];
        let (chosen, skipped) = choose_restic_snapshot(list.clone(), "web", None, None).unwrap();
        assert_eq!(
            (chosen.id.as_str(), ids(&skipped)),
            ("b2", vec!["c3", "d4"])
        );
        let (chosen, skipped) =
            choose_restic_snapshot(list.clone(), "web", None, Some("latest")).unwrap();
        assert_eq!((chosen.id.as_str(), skipped.len()), ("b2", 2));
        // By id: a complete one is taken, an incomplete one is refused by name.
        let (chosen, _) = choose_restic_snapshot(list.clone(), "web", None, Some("a")).unwrap();
        assert_eq!(chosen.id, "a1");
        let refused = choose_restic_snapshot(list.clone(), "web", None, Some("c3")).unwrap_err();
        assert!(matches!(&refused, Error::ResticUntrusted { snapshot, .. } if snapshot == "c3"));
        assert!(refused.to_string().contains("no seal"), "{refused}");
        // Nothing complete: an error naming the newest, not an older incomplete restore.
        let none = choose_restic_snapshot(list[2..].to_vec(), "web", None, None).unwrap_err();
        assert!(matches!(&none, Error::ResticUntrusted { snapshot, .. } if snapshot == "d4"));
        assert!(matches!(
            choose_restic_snapshot(Vec::new(), "web", None, None),
            Err(Error::NoResticSnapshot { .. })
        ));
    }

    #[test]
    fn several_disks_need_a_choice() {
        let list = vec![snapshot("a1", "vda", true), snapshot("b2", "vdb", true)];
        assert!(matches!(
            choose_restic_snapshot(list.clone(), "web", None, None),
            Err(e @ Error::ResticDiskNotChosen { .. }) if e.to_string().contains("(vda, vdb); choose one with --disk")
        ));
        let (chosen, _) = choose_restic_snapshot(list, "web", Some("vdb"), None).unwrap();
        assert_eq!(chosen.id, "b2");
    }

    #[test]
    fn a_seal_tags_what_the_listing_reads() {
        let seal = ResticSeal {
            format: SEAL_FORMAT.into(),
            version: SEAL_VERSION,
            snapshot: "aa11aa11".into(),
            file: "web-a.img".into(),
            size: 1_048_576,
            checksum: SUM.into(),
            domain_uuid: "u-1".into(),
            domain: "web".into(),
            disk: "vda".into(),
            image: "rbd/web-a".into(),
            ceph_snapshot: "virt-rbd-backup-restic-x".into(),
            ceph_snapshot_id: 7,
        };
        let snapshot = disk_json("aa11aa11ffff", "2026-11-26T10:34:00Z", Some("1048576"));
        let owned = seal.tags();
        let tags: Vec<&str> = owned.iter().map(String::as_str).collect();
        let list = format!("[{snapshot},{}]", seal_json("5ea1", &tags));
        let parsed = parse_restic_snapshots(list.as_bytes()).unwrap();
        assert_eq!(parsed.len(), 1, "the seal is not listed as a disk");
        assert!(parsed[0].complete);
        assert!(seal.tags().iter().all(|t| !t.contains(',')));
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
    /// Whether a seal vouches for it (see the module doc); restore takes only these.
    pub complete: bool,
    /// Image size: the seal's, else the snapshot's `size=` tag (older snapshots have none).
    pub size: Option<u64>,
    /// The sealed content checksum (`blake3-4m:`), for a complete snapshot.
    pub checksum: Option<String>,
    /// restic's id of the seal, for a complete snapshot.
    pub seal: Option<String>,
}

fn tag_value(tags: &[String], key: &str) -> String {
    tags.iter()
        .find_map(|t| t.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
        .unwrap_or_default()
        .to_string()
}

/// Parses `restic snapshots --json` output into the tool's disk backups, each marked complete
/// if a well-formed seal in the same list vouches for it.
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
    struct Seal {
        id: String,
        snapshot: String,
        domain_uuid: String,
        disk: String,
        size: u64,
        checksum: String,
    }
    // restic prints `null` for an empty repository.
    let raw: Option<Vec<Raw>> = serde_json::from_slice(json)
        .map_err(|e| Error::Restic(format!("cannot read restic's snapshot list: {e}")))?;
    let raw = raw.unwrap_or_default();
    let has = |r: &Raw, tag: &str| r.tags.iter().any(|t| t == tag);
    // A seal with a missing or malformed field vouches for nothing.
    let seals: Vec<Seal> = raw
        .iter()
        .filter(|r| has(r, SEAL_TAG))
        .filter_map(|r| {
            let snapshot = tag_value(&r.tags, "snapshot");
            let checksum = tag_value(&r.tags, "checksum");
            let size = tag_value(&r.tags, "size").parse().ok()?;
            (snapshot.len() >= 8 && is_checksum(&checksum)).then(|| Seal {
                id: r.id.clone(),
                snapshot,
                domain_uuid: tag_value(&r.tags, "domain"),
                disk: tag_value(&r.tags, "disk"),
                size,
                checksum,
            })
        })
        .collect();
    Ok(raw
        .iter()
        .filter(|r| has(r, DISK_TAG) && !has(r, SEAL_TAG))
        .map(|r| {
            let domain_uuid = tag_value(&r.tags, "domain");
            let disk = tag_value(&r.tags, "disk");
            let tagged_size: Option<u64> = tag_value(&r.tags, "size").parse().ok();
            let seal = seals.iter().find(|s| {
                r.id.starts_with(&s.snapshot)
                    && s.domain_uuid == domain_uuid
                    && s.disk == disk
                    && tagged_size.is_none_or(|size| size == s.size)
            });
            ResticSnapshot {
                domain: tag_value(&r.tags, "name"),
                file: r
                    .paths
                    .first()
                    .map(|p| p.trim_start_matches('/').to_string())
                    .unwrap_or_default(),
                id: r.id.clone(),
                time: r.time.clone(),
                host: r.hostname.clone(),
                complete: seal.is_some(),
                size: seal.map(|s| s.size).or(tagged_size),
                checksum: seal.map(|s| s.checksum.clone()),
                seal: seal.map(|s| s.id.clone()),
                domain_uuid,
                disk,
            }
        })
        .collect())
}

/// The disk snapshot a restore takes from `candidates` (one domain's, oldest first), and the
/// incomplete ones newer than it that `latest` passed over.
///
/// `wanted` is an id prefix (`None` or `latest`: the newest complete one); `disk` narrows to one
/// disk, and must be given when the candidates hold several. An incomplete snapshot asked for
/// by id is an error naming it, as is a `latest` with none complete.
pub fn choose_restic_snapshot(
    mut candidates: Vec<ResticSnapshot>,
    domain: &str,
    disk: Option<&str>,
    wanted: Option<&str>,
) -> Result<(ResticSnapshot, Vec<ResticSnapshot>), Error> {
    if let Some(disk) = disk {
        candidates.retain(|s| s.disk == disk);
    }
    let none_matches = || Error::NoResticSnapshot {
        domain: domain.to_string(),
    };
    if let Some(id) = wanted.filter(|w| *w != "latest") {
        let chosen = candidates
            .into_iter()
            .find(|s| s.id.starts_with(id))
            .ok_or_else(none_matches)?;
        if !chosen.complete {
            return Err(unsealed(&chosen));
        }
        return Ok((chosen, Vec::new()));
    }
    let disks: std::collections::BTreeSet<&str> =
        candidates.iter().map(|s| s.disk.as_str()).collect();
    if disks.len() > 1 {
        return Err(Error::ResticDiskNotChosen {
            domain: domain.to_string(),
            disks: disks.into_iter().map(str::to_string).collect(),
        });
    }
    let Some(newest) = candidates.iter().rposition(|s| s.complete) else {
        return match candidates.last() {
            None => Err(none_matches()),
            Some(last) => Err(Error::ResticUntrusted {
                snapshot: last.id.clone(),
                reason: format!(
                    "no snapshot of {domain} is complete: {} (the newest) and {} older ones have no seal; back the domain up again",
                    last.id,
                    candidates.len() - 1
                ),
            }),
        };
    };
    let skipped = candidates.split_off(newest + 1);
    let chosen = candidates.swap_remove(newest);
    Ok((chosen, skipped))
}

/// The error for a disk snapshot without a seal.
pub fn unsealed(snapshot: &ResticSnapshot) -> Error {
    Error::ResticUntrusted {
        snapshot: snapshot.id.clone(),
        reason: format!(
            "it has no seal: the run that made it did not finish (killed, or it failed after restic committed), so it may hold only the start of the disk; choose a complete one (`virt-rbd-backup list --restic-repo ...` marks the others incomplete), or, unchecked, `restic dump {} /{}`",
            snapshot.id, snapshot.file
        ),
    }
}

/// The tool's disk backups in a restic repository, oldest first; only those of `domain`
/// (name or UUID) when given.
pub fn list_restic(
    target: &ResticTarget,
    domain: Option<&str>,
) -> Result<Vec<ResticSnapshot>, Error> {
    // Repeated `--tag` options select snapshots with either tag.
    let out = target.run(&["snapshots", "--json", "--tag", DISK_TAG, "--tag", SEAL_TAG])?;
    let mut snapshots = parse_restic_snapshots(&out)?;
    if let Some(d) = domain {
        snapshots.retain(|s| s.domain == d || s.domain_uuid == d);
    }
    snapshots.sort_by(|a, b| a.time.cmp(&b.time));
    Ok(snapshots)
}
