"""The PyO3 boundary (src/python/mod.rs) against the real lab: events reach a Python callback
from the engine's threads, a failing callback costs no backup, and Ctrl-C stops a run only after
the guest is thawed and no snapshot is left behind (checked with the guest agent and `rbd`)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import virt_rbd_backup
from lab_support import agent, require_lab, tool_snapshots

pytestmark = pytest.mark.lab

URI = os.environ.get("LAB_LIBVIRT_URI", "qemu:///system")


def test_events_reach_the_callback_as_dicts_from_worker_threads(tmp_path: Path) -> None:
    require_lab()
    events: list[tuple[dict[str, Any], bool]] = []

    def on_event(event: dict[str, Any]) -> None:
        events.append((event, threading.current_thread() is threading.main_thread()))

    report = virt_rbd_backup.backup(connect=URI, domains=["lab-off"], repo=tmp_path / "r", on_event=on_event)
    assert [d.status for d in report.domains] == ["succeeded"]
    kinds = [e["event"] for e, _ in events]
    assert kinds[0] == "domain_started"
    assert kinds[-1] == "domain_finished"
    assert events[-1][0]["report"]["backup_id"] == report.domains[0].backup_id
    assert not any(on_main for _, on_main in events)


def test_a_callback_that_raises_is_logged_and_the_backup_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    require_lab()
    calls = 0

    def broken(event: dict[str, Any]) -> None:
        nonlocal calls
        calls += 1
        raise RuntimeError("display broke")

    with caplog.at_level(logging.ERROR, logger="virt_rbd_backup"):
        report = virt_rbd_backup.backup(connect=URI, domains=["lab-off"], repo=tmp_path / "r", on_event=broken)
    assert [d.status for d in report.domains] == ["succeeded"]
    assert calls >= 2
    logged = [r for r in caplog.records if r.name == "virt_rbd_backup" and "on_event" in r.getMessage()]
    assert len(logged) == calls
    assert logged[0].exc_info is not None
    assert isinstance(logged[0].exc_info[1], RuntimeError)
    # The backup is really there.
    listed = virt_rbd_backup.list_backups(repo=tmp_path / "r", domain="lab-off")
    assert [b.backup_id for b in listed] == [report.domains[0].backup_id]


def test_ctrl_c_exits_130_after_thawing_and_removing_the_new_snapshots(tmp_path: Path) -> None:
    require_lab()
    images = ("rbd/lab-guest-a", "rbd/lab-guest-b")
    before = {image: tool_snapshots(image) for image in images}
    proc = subprocess.Popen(
        [sys.executable, "-m", "virt_rbd_backup", "--repo", str(tmp_path / "r"), "--domain", "lab-guest"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    seen = []
    started = time.monotonic()
    while time.monotonic() - started < 120:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line.rstrip("\n"))
        if line.startswith("Processing"):
            # The domain's backup has begun: freeze and snapshots are next or under way.
            proc.send_signal(signal.SIGINT)
            break
    out, err = proc.communicate(timeout=300)
    assert any(s.startswith("Processing 2 images for domain") for s in seen), seen
    assert proc.returncode == 130, f"stdout: {seen} {out}\nstderr: {err}"
    assert "interrupted" in err
    assert "Summary" not in out
    assert agent("lab-guest", "guest-fsfreeze-status") == "thawed"
    assert {image: tool_snapshots(image) for image in images} == before
