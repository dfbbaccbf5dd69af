//! Live restore (`restore --define NAME --live`, issue 19): the new domain boots at once on
//! the backup, served by this process over NBD, while libvirt copies it into new RBD images;
//! it ends as a persistent domain on plain RBD images, with nothing left of the server or the
//! overlays.
//!
//! Order of operations (each step undone, newest first, if a later one fails or Ctrl-C comes
//! before the end):
//!
//! 1. Everything is checked before anything is made: the name, no domain of that name, the
//!    saved XML rewritten as `restore --define` would (`domain_rewrite`), host passthrough
//!    refused unless allowed, and no image of the new names exists (`--force` is refused: a
//!    live restore never replaces anything).
//! 2. A private folder `RUNTIME_DIR/live/NAME` (owned by the DAC user of QEMU processes, from
//!    libvirt's capabilities) holds, per disk, the NBD socket of an in-process server of the
//!    backup's disk (every block checked against the backup's table as it is read) and a qcow2
//!    overlay backed by it (`qemu-img create -f qcow2 -b nbd+unix://... -F raw`).
//! 3. Each new RBD image is created empty, exclusively, at the disk's size.
//! 4. A transient domain (`virDomainCreateXML`) starts on the overlays: a failure or a destroy
//!    leaves nothing defined.
//! 5. Each disk's block copy into its image (`REUSE_EXT | TRANSIENT_JOB`); once every copy is
//!    ready (mirroring), each is pivoted: the guest now reads and writes only the RBD images.
//! 6. The domain is defined persistently with the rewritten XML and its UUID (it keeps running).
//! 7. Servers stopped, overlays and the folder removed.
//!
//! After SIGKILL there is no resume: the README says how to clean up by hand.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::ceph::RadosCluster;
use crate::error::Error;
use crate::libvirt::live_domain::{CopyProgress, LiveDomain};
use crate::libvirt::{live_xml, HypervisorConnection};
use crate::nbd::server::ServerLimits;
use crate::nbd::{ListenAddress, NbdServer};

use super::restore::{prepare_define, DefineOptions, PreparedDefine};
use super::CancelToken;

/// One disk of a live restore.
#[derive(Debug, Clone, Serialize)]
pub struct LiveDiskReport {
    /// Target (`vda`).
    pub disk: String,
    /// The new image, `rbd:POOL/IMAGE`.
    pub target: String,
    /// Size in bytes.
    pub size: u64,
    /// Seconds from the domain's start until its copy was ready to pivot.
    pub copy_seconds: f64,
}

/// The outcome of a live restore.
#[derive(Debug, Clone, Serialize)]
pub struct LiveRestoreReport {
    /// The new domain's name.
    pub name: String,
    /// Its UUID (made by libvirt).
    pub uuid: String,
    /// The backup restored.
    pub backup_id: String,
    /// Seconds from the call until the domain was started on the overlays.
    pub boot_seconds: f64,
    /// Seconds from the call until it ran on the RBD images, defined persistently.
    pub total_seconds: f64,
    /// The disks.
    pub disks: Vec<LiveDiskReport>,
    /// Writable non-RBD disks of the original that the new domain does not get.
    pub dropped_disks: Vec<String>,
}

/// The folder of live restores' sockets and overlays.
fn runtime_dir() -> PathBuf {
    std::env::var_os("VIRT_RBD_BACKUP_RUNTIME_DIR")
        .filter(|v| !v.is_empty())
        .map_or_else(|| PathBuf::from("/run/virt-rbd-backup"), PathBuf::from)
}

fn usage(message: String) -> Error {
    Error::Usage(message)
}

/// A failure of the live restore `name` while it ran (not of its options: exit status 1).
fn failed(name: &str, reason: String) -> Error {
    Error::LiveRestore {
        name: name.to_string(),
        reason,
    }
}

/// What has been made so far, undone newest first by `undo`.
struct Made {
    folder: Option<PathBuf>,
    servers: Vec<NbdServer>,
    /// (cluster, pool, namespace, image) of each created image.
    images: Vec<(RadosCluster, String, Option<String>, String)>,
    domain: Option<LiveDomain>,
    copying: Vec<String>,
}

impl Made {
    /// Undoes everything made, newest first. Returns what could not be undone (each also
    /// logged with its error), empty when nothing is left.
    fn undo(&mut self) -> Vec<String> {
        let mut left = Vec::new();
        if let Some(domain) = self.domain.take() {
            for target in self.copying.drain(..) {
                let _ = domain.end_copy(&target, false);
            }
            if let Err(e) = domain.destroy() {
                log::error!("live restore: could not destroy the transient domain: {e}");
                left.push("the transient domain (still running)".to_string());
            }
        }
        for server in self.servers.drain(..) {
            server.close();
        }
        for (cluster, pool, namespace, image) in self.images.drain(..).rev() {
            let removed = (|| {
                let ctx = cluster.open_pool(&pool, namespace.as_deref())?;
                // QEMU lets go of the image a moment after the destroy: retry a little.
                let deadline = Instant::now() + Duration::from_secs(30);
                loop {
                    match ctx.remove_image(&image) {
                        Ok(()) => return Ok(()),
                        Err(e) if Instant::now() < deadline && e.errno() == Some(-libc::EBUSY) => {
                            std::thread::sleep(Duration::from_millis(500));
                        }
                        Err(e) => return Err(e),
                    }
                }
            })();
            if let Err(e) = removed {
                log::error!("live restore: could not remove the new image {pool}/{image}: {e}; remove it with `rbd rm`");
                left.push(format!("the new image {pool}/{image}"));
            }
        }
        if let Some(folder) = self.remove_folder() {
            left.push(format!("the folder {}", folder.display()));
        }
        left
    }

    /// Removes the runtime folder; returns it if it could not be removed (the error logged).
    fn remove_folder(&mut self) -> Option<PathBuf> {
        let folder = self.folder.take()?;
        if let Err(e) = std::fs::remove_dir_all(&folder) {
            log::error!("live restore: could not remove {}: {e}", folder.display());
            return Some(folder);
        }
        None
    }
}

/// What the undo of a failed live restore left, as the end of its message: the operator
/// reads whether there is anything to clean up by hand.
fn undo_outcome(left: &[String]) -> String {
    if left.is_empty() {
        "everything it made is undone: no domain is defined and the new images are removed".into()
    } else {
        format!(
            "its undo left {} (the errors above say why): remove them by hand",
            left.join(", ")
        )
    }
}

/// Hands `path` to the QEMU user (`owner`), if libvirt names one.
fn give_to(name: &str, path: &Path, owner: Option<(u32, u32)>) -> Result<(), Error> {
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(|e| {
            failed(
                name,
                format!(
                    "cannot give {} to the QEMU user {uid}:{gid}: {e}",
                    path.display()
                ),
            )
        })?;
    }
    Ok(())
}

/// Restores a backup live under a new domain `options.name` (see the module doc).
pub fn restore_live(
    options: &DefineOptions,
    cancel: &CancelToken,
) -> Result<LiveRestoreReport, Error> {
    let started = Instant::now();
    if options.force {
        return Err(usage(
            "--force with --live is refused: a live restore never replaces an image; remove it first".into(),
        ));
    }
    // The backup, the new names and XML, checked before anything is made (as --define).
    let PreparedDefine {
        repository,
        source,
        libvirt,
        places,
        rewritten,
    } = prepare_define(options)?;
    drop(repository);
    let capabilities = LiveDomain::capabilities(&libvirt)?;
    let owner = live_xml::dac_base_label(
        &capabilities,
        &live_xml::domain_type(&rewritten.xml, &options.name)?,
    );
    let mut made = Made {
        folder: None,
        servers: Vec::new(),
        images: Vec::new(),
        domain: None,
        copying: Vec::new(),
    };
    let result = run(
        options,
        &source,
        &rewritten.xml,
        &places,
        owner,
        &libvirt,
        &mut made,
        cancel,
        started,
    );
    match result {
        Ok((uuid, disks, boot_seconds)) => {
            for server in made.servers.drain(..) {
                server.close();
            }
            let _ = made.remove_folder(); // logged if it could not be removed
            Ok(LiveRestoreReport {
                name: options.name.clone(),
                uuid,
                backup_id: source.backup_id.clone(),
                boot_seconds,
                total_seconds: started.elapsed().as_secs_f64(),
                disks,
                dropped_disks: rewritten.dropped_disks,
            })
        }
        Err(e) => {
            let left = made.undo();
            // Said after the undo, so that the message tells what it did.
            Err(match e {
                Error::LiveRestore { name, reason } => Error::LiveRestore {
                    name,
                    reason: format!("{reason}; {}", undo_outcome(&left)),
                },
                other => other,
            })
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn run(
    options: &DefineOptions,
    source: &super::restore::DefineSource,
    rewritten: &str,
    places: &[(String, String, Option<String>, String, String)],
    owner: Option<(u32, u32)>,
    libvirt: &HypervisorConnection,
    made: &mut Made,
    cancel: &CancelToken,
    started: Instant,
) -> Result<(String, Vec<LiveDiskReport>, f64), Error> {
    let fail = |reason: String| failed(&options.name, reason);
    let check = |cancel: &CancelToken| {
        if cancel.is_cancelled() {
            Err(Error::Cancelled)
        } else {
            Ok(())
        }
    };
    // Every image must be new; checked before anything is made.
    let mut clusters = Vec::new();
    for (target, pool, namespace, image, spec) in places {
        let cluster = options
            .ceph
            .connect_for_disk(&source.xml, &source.domain_name, target)?;
        {
            let ctx = cluster.open_pool(pool, namespace.as_deref())?;
            if ctx.image_exists(image)? {
                return Err(usage(format!(
                    "image {spec} exists; a live restore never replaces one (remove it, or choose another name)"
                )));
            }
        }
        clusters.push(cluster);
    }
    let live = runtime_dir().join("live");
    std::fs::create_dir_all(&live)
        .map_err(|e| fail(format!("cannot create {}: {e}", live.display())))?;
    // QEMU must reach the folder below: search permission only, no listing.
    std::fs::set_permissions(&live, std::fs::Permissions::from_mode(0o711))
        .map_err(|e| fail(format!("cannot set the mode of {}: {e}", live.display())))?;
    let folder = live.join(&options.name);
    std::fs::create_dir(&folder).map_err(|e| {
        usage(format!(
            "cannot create {}: {e} (a live restore of that name is running, or was killed: see the README's recovery)",
            folder.display()
        ))
    })?;
    made.folder = Some(folder.clone());
    std::fs::set_permissions(&folder, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| fail(format!("cannot set the mode of {}: {e}", folder.display())))?;
    give_to(&options.name, &folder, owner)?;

    let mut overlays = HashMap::new();
    let mut sizes = HashMap::new();
    for (target, ..) in places {
        check(cancel)?;
        let (image, info) = super::serve::open_backup_disk(
            &options.repo,
            &options.access,
            &source.uuid,
            Some(&source.backup_id),
            Some(target),
        )?;
        let socket = folder.join(format!(
            "{}.sock",
            crate::repo::layout::safe_component(target)
        ));
        let server = NbdServer::start(
            image,
            target,
            &ListenAddress::Unix(socket.clone()),
            ServerLimits::default(),
        )?;
        let uri = server.uri().to_string();
        made.servers.push(server);
        give_to(&options.name, &socket, owner)?;
        let overlay = folder.join(format!(
            "{}.qcow2",
            crate::repo::layout::safe_component(target)
        ));
        let created = Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-b", &uri, "-F", "raw"])
            .arg(&overlay)
            .output()
            .map_err(|e| fail(format!("cannot run qemu-img (is it installed?): {e}")))?;
        if !created.status.success() {
            return Err(fail(format!(
                "qemu-img create of the overlay of {target} failed: {}",
                String::from_utf8_lossy(&created.stderr).trim()
            )));
        }
        give_to(&options.name, &overlay, owner)?;
        overlays.insert(target.clone(), overlay);
        sizes.insert(target.clone(), info.size);
    }
    for ((target, pool, namespace, image, _), cluster) in places.iter().zip(clusters) {
        check(cancel)?;
        {
            let ctx = cluster.open_pool(pool, namespace.as_deref())?;
            ctx.create_image(image, sizes[target])?;
        }
        made.images
            .push((cluster, pool.clone(), namespace.clone(), image.clone()));
    }
    check(cancel)?;
    let transient = live_xml::overlay_domain_xml(rewritten, &options.name, &overlays)?;
    made.domain = Some(LiveDomain::start(libvirt, &options.name, &transient)?);
    let boot_seconds = started.elapsed().as_secs_f64();
    log::info!(
        "live restore: {} started on the backup after {boot_seconds:.1} s; copying",
        options.name
    );
    let domain = made.domain.as_ref().expect("just set");
    for (target, ..) in places {
        let dest = live_xml::copy_destination_xml(rewritten, &options.name, target)?;
        domain.start_copy(target, &dest)?;
        made.copying.push(target.clone());
    }
    let copying_since = Instant::now();
    super::thaw_guard::test_pause("live-copying");
    let mut ready_after: HashMap<String, f64> = HashMap::new();
    while ready_after.len() < places.len() {
        check(cancel)?;
        for (target, ..) in places {
            if ready_after.contains_key(target) {
                continue;
            }
            match domain.copy_progress(target)? {
                p if p.ready() => {
                    ready_after.insert(target.clone(), copying_since.elapsed().as_secs_f64());
                }
                CopyProgress::NoJob => {
                    // The servers were started in the order of `places`, one per disk.
                    let bad_reads = places
                        .iter()
                        .zip(&made.servers)
                        .find(|((t, ..), _)| t == target)
                        .map_or(0, |(_, server)| server.failed_reads());
                    let reason = if bad_reads > 0 {
                        format!(
                            "the block copy of {target} stopped: {bad_reads} reads of the backup's data failed their checks \
                             (the errors above name the file and block); run `virt-rbd-backup verify` on the repository \
                             and restore another backup of this domain"
                        )
                    } else {
                        format!("the block copy of {target} stopped before it was complete (see libvirtd's log)")
                    };
                    return Err(fail(reason));
                }
                CopyProgress::Copying { .. } => {}
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    for (target, ..) in places {
        domain.end_copy(target, true)?;
        made.copying.retain(|t| t != target);
    }
    let uuid = domain.uuid()?;
    let persistent = live_xml::with_uuid(rewritten, &options.name, &uuid)?;
    domain.make_persistent(libvirt, &persistent)?;
    // Persistent now: nothing of it is undone any more.
    made.domain = None;
    made.images.clear();
    let disks = places
        .iter()
        .map(|(target, _, _, _, spec)| LiveDiskReport {
            disk: target.clone(),
            target: format!("rbd:{spec}"),
            size: sizes[target],
            copy_seconds: ready_after[target],
        })
        .collect();
    Ok((uuid, disks, boot_seconds))
}

#[cfg(test)]
mod tests {
    use super::undo_outcome;

    #[test]
    fn the_undo_outcome_says_what_was_left_to_remove_by_hand() {
        assert_eq!(
            undo_outcome(&[]),
            "everything it made is undone: no domain is defined and the new images are removed"
        );
        let left = undo_outcome(&[
            "the new image rbd/web-copy-vda".into(),
            "the folder /run/x".into(),
        ]);
        assert!(
            left.contains("the new image rbd/web-copy-vda, the folder /run/x"),
            "{left}"
        );
        assert!(left.ends_with("remove them by hand"), "{left}");
        assert!(!left.contains("everything"), "{left}");
    }
}
