"""A run killed at any point leaves nothing that looks like a backup, no guest frozen, and
nothing the next run cannot clean up. The backup process is paused at a phase by its test hook
(`VIRT_RBD_BACKUP_TEST_PAUSE=PHASE:SECONDS`) and killed there with SIGKILL."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from lab_support import (
    FaultRecord,
    agent,
    backup_command,
    cli,
    domain_outcome,
    domain_report,
    domain_uuid,
    rbd_json,
    repo_snapshots,
    require_lab,
    tool_snapshots,
)

pytestmark = pytest.mark.lab


def start_paused(repo: Path, phase: str, domain: str, seconds: int = 60) -> subprocess.Popen[bytes]:
    """Starts a full backup (a full always reads, so it reaches every phase) paused at `phase`."""
    env = dict(os.environ, VIRT_RBD_BACKUP_TEST_PAUSE=f"{phase}:{seconds}")
    return subprocess.Popen(
        backup_command(repo, domain),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def wait_for(condition: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def watchers(image: str) -> int:
    return len(rbd_json("status", image)["watchers"])


def partials(repo: Path, domain: str) -> list[Path]:
    folder = repo / domain_uuid(domain)
    return [p for p in folder.iterdir() if p.name.startswith(".partial-")] if folder.exists() else []


def complete_backups(repo: Path, domain: str) -> list[str]:
    folder = repo / domain_uuid(domain)
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def test_sigkill_while_frozen_thaws_the_guest_within_seconds(tmp_path: Path, fault: FaultRecord) -> None:
    require_lab()
    repo = tmp_path / "repo"
    before = watchers("rbd/lab-guest-a")
    proc = start_paused(repo, "frozen", "lab-guest")
    try:
        wait_for(lambda: agent("lab-guest", "guest-fsfreeze-status") == "frozen", 60, "the guest to be frozen")
    finally:
        proc.kill()
        proc.wait()
    started = time.monotonic()
    wait_for(lambda: agent("lab-guest", "guest-fsfreeze-status") == "thawed", 10, "the watchdog to thaw the guest")
    thawed_after = time.monotonic() - started
    print(f"thawed {thawed_after:.2f} s after SIGKILL")
    fault.injected = "SIGKILL of the backup while the guest is frozen"
    assert partials(repo, "lab-guest"), "the killed run should have left its partial folder"
    # The killed process still has a watch on the images until the OSD times it out (30 s);
    # a snapshot create waits for every watcher, so the next run waits for that too.
    wait_for(
        lambda: watchers("rbd/lab-guest-a") == before and watchers("rbd/lab-guest-b") == before,
        60,
        "the dead watch to expire",
    )
    # The next run cleans up and succeeds.
    result = cli("backup", "--repo", str(repo), "--json", "--domain", "lab-guest")
    assert result.returncode == 0, result.stderr
    assert any("interrupted run" in w for w in domain_report(result.json(), "lab-guest")["warnings"])
    assert not partials(repo, "lab-guest")
    fault.outcome = f"guest thawed {thawed_after:.1f} s after the kill; next run {domain_outcome(result, 'lab-guest')}"
    fault.measure(repo, ["rbd/lab-guest-a", "rbd/lab-guest-b"])
    assert fault.leaks == 0


@pytest.mark.parametrize("phase", ["exported", "committing"])
def test_sigkill_after_the_snapshot_leaves_no_backup_and_no_leak(
    tmp_path: Path, phase: str, fault: FaultRecord
) -> None:
    require_lab()
    repo = tmp_path / "repo"
    good = cli("backup", "--repo", str(repo), "--json", "--domain", "lab-off")
    assert good.returncode == 0, good.stderr
    base = domain_report(good.json(), "lab-off")["disks"][0]["snapshot"]
    proc = start_paused(repo, phase, "lab-off")
    try:
        wait_for(lambda: len(repo_snapshots("rbd/lab-off-a", repo)) == 2, 60, "the killed run's snapshot")
        wait_for(lambda: bool(partials(repo, "lab-off")), 30, "the partial folder")
        if phase == "committing":
            # Paused just before the manifest is written: every disk file is complete.
            wait_for(lambda: any(p.glob("*.blocks") for p in partials(repo, "lab-off")), 30, "the disk files")
    finally:
        proc.kill()
        proc.wait()
    fault.injected = f"SIGKILL of the backup at {phase}, after a good backup"
    # Nothing of the killed run counts: the listing and verify see the good backup only.
    listed = json.loads(cli("list", "--repo", str(repo), "--json").stdout)
    assert [b["backup_id"] for b in listed] == complete_backups(repo, "lab-off")
    assert len(listed) == 1
    assert cli("verify", "--repo", str(repo)).returncode == 0
    # The next run removes the partial folder and the orphaned snapshot, and says so.
    result = cli("backup", "--repo", str(repo), "--json", "--domain", "lab-off")
    assert result.returncode == 0, result.stderr
    dom = domain_report(result.json(), "lab-off")
    assert any("interrupted run" in w for w in dom["warnings"]), dom["warnings"]
    assert not partials(repo, "lab-off")
    assert repo_snapshots("rbd/lab-off-a", repo) == [dom["disks"][0]["snapshot"]]
    assert base not in repo_snapshots("rbd/lab-off-a", repo)
    fault.outcome = f"killed run not listed, verify exit 0; next run {domain_outcome(result, 'lab-off')}"
    fault.measure(repo, ["rbd/lab-off-a"])
    assert fault.leaks == 0


def test_a_second_run_on_the_same_domain_is_refused_while_the_first_runs(tmp_path: Path, fault: FaultRecord) -> None:
    require_lab()
    repo = tmp_path / "repo"
    # Paused long enough for the second run (it is refused in about a second), then goes on.
    proc = start_paused(repo, "exported", "lab-off", seconds=12)
    try:
        wait_for(lambda: bool(partials(repo, "lab-off")), 60, "the first run to start writing")
        second = cli("backup", "--repo", str(repo), "--json", "--domain", "lab-off")
        fault.injected = "a second run of the same domain while the first runs"
        assert proc.poll() is None, "the first run ended before the second was refused"
        assert second.returncode == 1
        dom = domain_report(second.json(), "lab-off")
        assert "another virt-rbd-backup run" in dom["error"], dom["error"]
        # The first run was not disturbed: it completes.
        assert proc.wait(timeout=120) == 0
    finally:
        proc.kill()
        proc.wait()
    fault.outcome = f"first run exit {proc.returncode}; second run {domain_outcome(second, 'lab-off')}"
    assert len(complete_backups(repo, "lab-off")) == 1
    fault.measure(repo, ["rbd/lab-off-a"])
    assert fault.leaks == 0


def test_full_target_fails_the_domain_cleanly_and_keeps_older_backups(tmp_path: Path, fault: FaultRecord) -> None:
    require_lab()
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m,mode=0700", "tmpfs", str(mount)], check=True)
    try:
        repo = mount / "repo"
        first = cli("backup", "--repo", str(repo), "--json", "--domain", "lab-off")
        assert first.returncode == 0, first.stderr
        snapshots_before = tool_snapshots("rbd/lab-off-a")
        # Leave almost nothing free, then try a full backup.
        free = os.statvfs(mount).f_bavail * os.statvfs(mount).f_frsize
        (mount / "filler").write_bytes(b"x" * max(0, free - 64 * 1024))
        full = cli("backup", "--repo", str(repo), "--json", "--mode", "full", "--domain", "lab-off")
        fault.injected = "target full (6 MiB tmpfs, 64 KiB free) during a full backup"
        fault.outcome = domain_outcome(full, "lab-off")
        assert full.returncode == 1, full.stdout + full.stderr
        dom = domain_report(full.json(), "lab-off")
        assert dom["status"] == "failed"
        assert "No space left on device" in dom["error"], dom["error"]
        assert not partials(repo, "lab-off")
        assert tool_snapshots("rbd/lab-off-a") == snapshots_before
        (mount / "filler").unlink()
        # The older backup is intact and restores.
        assert cli("verify", "--repo", str(repo)).returncode == 0
        out = tmp_path / "restored.raw"
        restored = cli("restore", "lab-off", "--repo", str(repo), "--to", str(out))
        assert restored.returncode == 0, restored.stderr
        fault.measure(repo, ["rbd/lab-off-a"])
        assert fault.leaks == 0
    finally:
        subprocess.run(["umount", str(mount)], check=False)
