"""Faults of the cluster and the hypervisor during a run: every case ends in bounded time with a
clear per-domain error (or a clear run error when libvirt itself is gone), leaks nothing that
the next run does not clean up, and the next run succeeds once the fault is gone.

Daemons are stopped with SIGSTOP (a hang, the hard case for timeouts) and resumed with SIGCONT.
The OSD is left alone: the lab's OSD keeps its data in memory, and after a SIGSTOP of ~20 s the
monitor marked it down and it took over a minute to rejoin, failing the tests after it (the
engine's part, reads timing out after --ceph-timeout and the next run cleaning up, was seen
working by hand; see the issue notes)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from lab_support import FaultRecord, cli, domain_outcome, domain_report, require_lab, virsh

pytestmark = pytest.mark.lab


def pids(name: str) -> list[int]:
    out = subprocess.run(["pgrep", "-x", name], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


@contextmanager
def stopped(name: str) -> Iterator[None]:
    targets = pids(name)
    assert targets, f"no {name} process"
    for pid in targets:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in targets:
            os.kill(pid, signal.SIGCONT)


def restart_libvirtd() -> None:
    """Starts libvirtd again the way lab/lab.sh does, and records it as the lab's, so
    `lab.sh down` still stops it."""
    lab_dir = Path(os.environ.get("LAB_DIR", "/var/lib/virt-rbd-backup-lab"))
    env = dict(os.environ, LIBVIRT_LOG_OUTPUTS=f"3:file:{lab_dir}/log/libvirtd.log")
    subprocess.run(["libvirtd", "-d"], cwd="/", env=env, check=True)
    marker = lab_dir / "run" / "libvirtd.lab-started"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        pid = Path("/run/libvirtd.pid").read_text().strip() if Path("/run/libvirtd.pid").exists() else ""
        if pid and Path(f"/proc/{pid}").exists():
            if marker.parent.exists():
                marker.write_text(pid + "\n")
            return
        time.sleep(0.2)


def test_a_hung_monitor_fails_the_domain_within_the_ceph_timeout(tmp_path: Path, fault: FaultRecord) -> None:
    require_lab()
    repo = tmp_path / "repo"
    with stopped("ceph-mon"):
        started = time.monotonic()
        result = cli("backup", "--repo", str(repo), "--json", "--ceph-timeout", "5", "--domain", "lab-off")
        elapsed = time.monotonic() - started
    fault.injected = "ceph-mon SIGSTOPped during the run (--ceph-timeout 5)"
    fault.outcome = f"after {elapsed:.0f} s: {domain_outcome(result, 'lab-off')}"
    assert result.returncode == 1, result.stdout + result.stderr
    dom = domain_report(result.json(), "lab-off")
    assert dom["status"] == "failed"
    assert "cannot connect to Ceph" in dom["error"], dom["error"]
    assert elapsed < 30, elapsed
    again = cli("backup", "--repo", str(repo), "--json", "--domain", "lab-off")
    assert again.returncode == 0, again.stderr
    fault.measure(repo, ["rbd/lab-off-a"])
    assert fault.leaks == 0


def test_libvirtd_gone_is_a_clear_run_error_and_the_next_run_works(tmp_path: Path, fault: FaultRecord) -> None:
    require_lab()
    daemons = pids("libvirtd")
    assert daemons
    for pid in daemons:
        os.kill(pid, signal.SIGTERM)
    try:
        deadline = time.monotonic() + 30
        while pids("libvirtd") and time.monotonic() < deadline:
            time.sleep(0.2)
        result = cli("backup", "--repo", str(tmp_path / "repo"), "--domain", "lab-off")
        fault.injected = "libvirtd stopped (SIGTERM) before the run"
        fault.outcome = domain_outcome(result, "lab-off")
        assert result.returncode == 2, result.stdout + result.stderr
        assert "libvirt" in result.stderr and "libvirtd" in result.stderr, result.stderr
    finally:
        restart_libvirtd()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if virsh("version", check=False).returncode == 0:
                break
            time.sleep(0.5)
    # The running guest survived (QEMU does not depend on libvirtd) and backups work again.
    assert "running" in virsh("domstate", "lab-guest").stdout
    again = cli("backup", "--repo", str(tmp_path / "repo"), "--domain", "lab-off")
    assert again.returncode == 0, again.stderr
    fault.measure(tmp_path / "repo", ["rbd/lab-off-a"])
    assert fault.leaks == 0
