//! A guard outside this process that thaws a guest if we die while it is frozen.
//!
//! Every thaw inside the process runs from a `Drop`, but nothing runs after SIGKILL or the OOM
//! killer, and libvirt does not thaw on its own: the guest would stay frozen, its writes blocked,
//! until someone notices. So before each freeze we start a tiny watchdog in its own session:
//!
//! ```text
//! bash -c 'read -r -t TIMEOUT line; [ "$line" = done ] || virsh -c URI domfsthaw UUID'
//! ```
//!
//! Its stdin is a pipe from us. We write `done` after our own thaw; if we die, the pipe closes
//! (`read` fails at EOF) and the watchdog thaws; if the freeze outlives `TIMEOUT` (Ceph stopped
//! answering during the snapshot), the watchdog thaws too and the domain's backup fails as
//! inconsistent. It needs only bash and virsh, both present on any libvirt host, carries no
//! secret, and is a separate process, so it survives whatever kills ours.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

/// The running watchdog; `disarm` after the thaw. Dropped without `disarm`, it thaws.
pub struct ThawWatchdog {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl ThawWatchdog {
    /// Starts a watchdog that thaws `uuid` on `uri` unless disarmed within `timeout`.
    pub fn start(uri: &str, uuid: &str, timeout: Duration) -> std::io::Result<Self> {
        let script = r#"read -r -t "$1" line; [ "$line" = done ] || exec virsh -q -c "$2" domfsthaw "$3" >/dev/null 2>&1"#;
        let mut command = Command::new("bash");
        command
            .arg("-c")
            .arg(script)
            .arg("virt-rbd-backup-thaw-watchdog")
            .arg(timeout.as_secs().max(1).to_string())
            .arg(uri)
            .arg(uuid)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own session: a Ctrl-C or kill of our process group does not reach it.
            .process_group(0);
        let mut child = command.spawn()?;
        let stdin = child.stdin.take();
        Ok(ThawWatchdog { child, stdin })
    }

    /// Tells the watchdog the guest was thawed by us; waits for it to exit.
    pub fn disarm(mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.write_all(b"done\n");
        }
        let _ = self.child.wait();
    }
}

impl Drop for ThawWatchdog {
    fn drop(&mut self) {
        // Not disarmed: closing the pipe makes the watchdog thaw. Reap it in the background of
        // the OS (it is in its own process group); waiting here could block a failing path.
        self.stdin.take();
        let _ = self.child.try_wait();
    }
}

/// Test hook: `VIRT_RBD_BACKUP_TEST_PAUSE=PHASE:SECONDS` makes a run sleep at `PHASE`
/// (`freezing` after the thaw watchdog started and before the freeze call, `frozen`, `exported`
/// after the first block of each disk, `exporting` after the first block of the first disk
/// only, `committing`; `written`: a restore from the repository, after its data is written and
/// before it is checked; `restored`: a restore, after its data is written and checked, before it
/// is put under the target's name; `replacing`: a `--force` RBD restore, between renaming the
/// old image aside and the new one onto the name; `live-copying`: a live restore, once the
/// domain runs on the backup and its block copies started) so fault-injection tests can kill it there or change
/// the cluster under it. It is read from the environment of the backup process only and does
/// nothing unless set.
pub fn test_pause(phase: &str) {
    let Ok(spec) = std::env::var("VIRT_RBD_BACKUP_TEST_PAUSE") else {
        return;
    };
    let Some((wanted, seconds)) = spec.split_once(':') else {
        return;
    };
    // `exporting` pauses once per process: a test injects one fault at one point.
    static EXPORTING_PAUSED: std::sync::atomic::AtomicBool =
        std::sync::atomic::AtomicBool::new(false);
    if wanted == phase
        && !(phase == "exporting"
            && EXPORTING_PAUSED.swap(true, std::sync::atomic::Ordering::SeqCst))
    {
        if let Ok(seconds) = seconds.parse::<u64>() {
            log::warn!("test hook: pausing {seconds} s at {phase}");
            std::thread::sleep(Duration::from_secs(seconds));
        }
    }
}
