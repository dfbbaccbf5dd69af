"""How the run is stopped from outside, as systemd and operators stop it: the unit's whole
cgroup SIGKILLed (the thaw watchdog with it), SIGTERM and SIGHUP, and a freeze that fails
because someone else holds one. No guest may stay frozen, no snapshot may leak, and nobody
else's freeze may be undone."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
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
    virsh,
    wait_for,
)

pytestmark = pytest.mark.lab

GUEST = "lab-guest"
IMAGES = ("rbd/lab-guest-a", "rbd/lab-guest-b")
# cgroup v1's pids hierarchy is writable here (the lab runs without systemd as PID 1); v2's
# unified hierarchy is the fallback.
CGROUP_ROOTS = (Path("/sys/fs/cgroup/pids"), Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup"))


def freeze_status() -> str:
    return str(agent(GUEST, "guest-fsfreeze-status"))


def watchers(image: str) -> int:
    return len(rbd_json("status", image)["watchers"])


def wait_for_dead_watches(before: dict[str, int]) -> None:
    # A SIGKILLed client keeps its watch on the images until the OSD times it out (30 s), and
    # a snapshot create waits for every watcher: the next run would wait for that too.
    wait_for(lambda: all(watchers(i) <= before[i] for i in IMAGES), 60, "the dead watches to expire")


@pytest.fixture
def guest_thawed_afterwards() -> Iterator[None]:
    """Whatever a failing test leaves, the shared guest is thawed for the tests after it."""
    yield
    if freeze_status() == "frozen":
        virsh("domfsthaw", GUEST, check=False)


@pytest.fixture
def cgroup() -> Iterator[Path]:
    """A cgroup of its own, as systemd gives each unit; removed at the end."""
    for root in CGROUP_ROOTS:
        if (root / "cgroup.procs").exists() and os.access(root, os.W_OK):
            path = root / f"vrb-stop-test-{os.getpid()}"
            try:
                path.mkdir()
            except OSError:
                continue
            break
    else:
        pytest.fail("no writable cgroup hierarchy (tried cgroup v1 pids and v2)")
    try:
        yield path
    finally:
        for _ in range(50):
            try:
                path.rmdir()
                break
            except OSError:
                time.sleep(0.1)


def members(cgroup: Path) -> list[int]:
    return [int(p) for p in (cgroup / "cgroup.procs").read_text().split()]


def kill_cgroup(cgroup: Path, main_pid: int) -> None:
    """SIGKILL every member, as systemd does when it kills a unit's cgroup; the watchdog before
    the main process, the worst order for us (killed first, it never sees our pipe close)."""
    while processes := members(cgroup):
        for pid in sorted(processes, key=lambda p: p == main_pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)


def start_in(cgroup: Path | None, repo: Path, pause: str, *extra: str) -> subprocess.Popen[str]:
    """A full backup of the guest paused at `pause`; in `cgroup` (every child inherits it)."""
    command = backup_command(repo, GUEST, *extra)
    if cgroup is not None:
        # Join the cgroup first, then become the backup: as systemd starts a unit's process.
        command = ["sh", "-c", f'echo $$ > {cgroup}/cgroup.procs && exec "$@"', "sh", *command]
    env = dict(os.environ, VIRT_RBD_BACKUP_TEST_PAUSE=pause)
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def kill_cgroup_while_frozen(cgroup: Path, repo: Path) -> int:
    """Starts a run in `cgroup`, waits until the guest is frozen, SIGKILLs the whole cgroup and
    checks that nothing thawed it (the watchdog died with the run); returns the run's pid."""
    proc = start_in(cgroup, repo, "frozen:120")
    try:
        wait_for(lambda: freeze_status() == "frozen", 60, "the guest to be frozen")
        processes = members(cgroup)
        assert proc.pid in processes and len(processes) >= 2, f"the run and its watchdog: {processes}"
        kill_cgroup(cgroup, proc.pid)
    finally:
        proc.kill()
        proc.communicate()
    time.sleep(2)
    assert freeze_status() == "frozen", "with its watchdog killed too, nothing in the run could have thawed"
    return proc.pid


def test_cgroup_killed_while_frozen_is_thawed_by_the_units_stop_path(
    tmp_path: Path, cgroup: Path, fault: FaultRecord, guest_thawed_afterwards: None
) -> None:
    require_lab()
    repo = tmp_path / "repo"
    before = {image: watchers(image) for image in IMAGES}
    pid = kill_cgroup_while_frozen(cgroup, repo)
    fault.injected = "SIGKILL of every process of the run's cgroup (the watchdog first) while the guest is frozen"

    # What the unit's ExecStopPost= runs.
    stop_post = cli("thaw-orphans", "--json")
    assert stop_post.returncode == 0, stop_post.stderr
    orphans = json.loads(stop_post.stdout)
    assert [(o["uuid"], o["outcome"], o["pids"]) for o in orphans] == [(domain_uuid(GUEST), "thawed", [pid])]
    assert orphans[0]["filesystems"] >= 1
    assert freeze_status() == "thawed"
    # Done: a second call has nothing left to do.
    again = cli("thaw-orphans", "--json")
    assert again.returncode == 0 and json.loads(again.stdout) == []

    wait_for_dead_watches(before)
    result = cli("backup", "--repo", str(repo), "--json", "--domain", GUEST)
    assert result.returncode == 0, result.stderr
    assert any("interrupted run" in w for w in domain_report(result.json(), GUEST)["warnings"])
    fault.outcome = (
        f"thaw-orphans thawed {orphans[0]['filesystems']} filesystems; next run {domain_outcome(result, GUEST)}"
    )
    fault.measure(repo, IMAGES)
    assert fault.leaks == 0
    assert fault.frozen == 0


def test_the_next_backup_thaws_a_guest_left_frozen_by_a_killed_cgroup(
    tmp_path: Path, cgroup: Path, fault: FaultRecord, guest_thawed_afterwards: None
) -> None:
    """Without ExecStopPost= (cron, a unit file of an older version): the next run thaws first."""
    require_lab()
    repo = tmp_path / "repo"
    before = {image: watchers(image) for image in IMAGES}
    pid = kill_cgroup_while_frozen(cgroup, repo)
    fault.injected = "cgroup SIGKILLed while frozen, no stop path run; the next backup is the first to run"
    wait_for_dead_watches(before)
    result = cli("backup", "--repo", str(repo), "--json", "--domain", GUEST)
    assert result.returncode == 0, result.stderr
    dom = domain_report(result.json(), GUEST)
    assert dom["consistency"] == "frozen", "the run's own freeze worked after the orphan's thaw"
    orphan_warnings = [w for w in dom["warnings"] if "left a freeze record" in w]
    assert orphan_warnings and f"pid {pid}" in orphan_warnings[0] and "was thawed" in orphan_warnings[0]
    assert freeze_status() == "thawed"
    fault.outcome = f"next run thawed it first, then {domain_outcome(result, GUEST)}"
    fault.measure(repo, IMAGES)
    assert fault.leaks == 0
    assert fault.frozen == 0


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGTERM, 143), (signal.SIGHUP, 129)], ids=["SIGTERM", "SIGHUP"])
def test_sigterm_and_sighup_clean_up_like_ctrl_c(
    tmp_path: Path, signum: signal.Signals, status: int, fault: FaultRecord, guest_thawed_afterwards: None
) -> None:
    require_lab()
    repo = tmp_path / "repo"
    # Paused after the first block of each disk: the snapshots exist and the guest is thawed.
    proc = start_in(None, repo, "exported:20")
    try:
        wait_for(
            lambda: (
                (repo / "virt-rbd-backup-repo.json").exists() and all(len(repo_snapshots(i, repo)) == 1 for i in IMAGES)
            ),
            60,
            "the run's snapshots",
        )
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    fault.injected = f"{signum.name} to the backup during the export"
    assert proc.returncode == status, f"stdout: {out}\nstderr: {err}"
    assert f"terminated by {signum.name}" in err
    assert freeze_status() == "thawed"
    # Cleaned up by the run itself, not left to the next run.
    assert {image: repo_snapshots(image, repo) for image in IMAGES} == {image: [] for image in IMAGES}
    partials = list(repo.glob("*/.partial-*"))
    assert not partials, partials
    fault.outcome = f"exit {proc.returncode} after clean-up: snapshots removed, no partial folder"
    fault.measure(repo, IMAGES)
    assert fault.leaks == 0
    assert fault.frozen == 0


def test_sigterm_while_frozen_thaws_and_exits_143(
    tmp_path: Path, fault: FaultRecord, guest_thawed_afterwards: None
) -> None:
    require_lab()
    repo = tmp_path / "repo"
    proc = start_in(None, repo, "frozen:3")
    try:
        wait_for(lambda: freeze_status() == "frozen", 60, "the guest to be frozen")
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    fault.injected = "SIGTERM while the guest is frozen"
    assert proc.returncode == 143, f"stdout: {out}\nstderr: {err}"
    assert freeze_status() == "thawed"
    assert not list(repo.glob("*/.partial-*"))
    assert not any(repo_snapshots(image, repo) for image in IMAGES)
    fault.outcome = "exit 143; thawed, snapshots removed"
    fault.measure(repo, IMAGES)
    assert fault.leaks == 0
    assert fault.frozen == 0


@pytest.mark.parametrize("policy", ["required", "auto"])
def test_a_failed_freeze_never_thaws_someone_elses_freeze(
    tmp_path: Path, policy: str, fault: FaultRecord, guest_thawed_afterwards: None
) -> None:
    require_lab()
    repo = tmp_path / "repo"
    virsh("domfsfreeze", GUEST)  # an administrator's freeze, or another tool's
    try:
        result = cli("backup", "--repo", str(repo), "--json", "--domain", GUEST, "--freeze", policy)
        fault.injected = f"guest frozen by someone else; backup with --freeze {policy}"
        # Our freeze is refused; the watchdog and the freeze record must not thaw theirs, now or
        # after the run: give the watchdog's pipe time to close.
        time.sleep(2)
        still = freeze_status()
        orphans = cli("thaw-orphans", "--json")
        after_stop_path = freeze_status()
    finally:
        virsh("domfsthaw", GUEST, check=False)
    dom = domain_report(result.json(), GUEST)
    if policy == "required":
        assert result.returncode == 1 and dom["status"] == "failed", result.stdout
        assert "cannot freeze" in (dom["error"] or "")
    else:
        assert result.returncode == 0 and dom["status"] == "succeeded", result.stderr
        assert dom["consistency"] in ("crash_consistent_per_disk", "crash_consistent_group")
        assert any("cannot freeze" in w for w in dom["warnings"]), dom["warnings"]
    assert still == "frozen", "the run thawed a freeze it did not hold"
    assert json.loads(orphans.stdout) == [], "a refused freeze must leave no record behind"
    assert after_stop_path == "frozen"
    fault.outcome = f"{domain_outcome(result, GUEST)}; the other freeze still held after the run and thaw-orphans"
    fault.measure(repo, IMAGES)
    assert fault.leaks == 0
    assert fault.frozen == 0


def test_a_freeze_call_slower_than_the_freeze_timeout_discards_the_backup(
    tmp_path: Path, fault: FaultRecord, guest_thawed_afterwards: None
) -> None:
    """The freeze timeout counts from the watchdog's start, not from when the freeze returned:
    a freeze call that takes longer than the timeout may have been thawed by the watchdog
    before the snapshots, so such a backup must not be recorded as `frozen`."""
    require_lab()
    repo = tmp_path / "repo"
    proc = start_in(None, repo, "freezing:4", "--agent-timeout", "1", "--freeze-timeout", "3")
    out, err = proc.communicate(timeout=120)
    fault.injected = "freeze call held 4 s (test hook) with --freeze-timeout 3"
    dom = domain_report(json.loads(out), GUEST)
    assert proc.returncode == 1, err
    assert dom["status"] == "failed" and "inconsistent" in (dom["error"] or ""), dom
    assert "since the thaw watchdog started" in dom["error"]
    assert freeze_status() == "thawed"
    assert not any(repo_snapshots(image, repo) for image in IMAGES)
    fault.outcome = f"exit {proc.returncode}, failed as inconsistent; thawed, snapshots removed"
    fault.measure(repo, IMAGES)
    assert fault.leaks == 0
    assert fault.frozen == 0
