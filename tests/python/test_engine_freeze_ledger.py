"""`thaw-orphans` end to end without a lab: freeze records of dead and live processes in a
runtime folder, thawed through libvirt's built-in test driver (`test:///default`)."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

import virt_rbd_backup
from virt_rbd_backup import cli

TEST_URI = "test:///default"


def uuid_of_the_test_domain() -> str:
    listing = virt_rbd_backup.list_domains(connect=TEST_URI, domains=["test"])
    return listing[0].uuid


def start_time(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rindex(")") + 1 :].split()[19])


def write_record(runtime: Path, uuid: str, pid: int, process_start: int) -> Path:
    folder = runtime / "frozen"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{uuid}.{pid}.json"
    path.write_text(
        json.dumps(
            {
                "version": 1,
                "uri": TEST_URI,
                "domain_uuid": uuid,
                "domain_name": "test",
                "pid": pid,
                "process_start": process_start,
                "boot_id": Path("/proc/sys/kernel/random/boot_id").read_text().strip(),
                "recorded_at": time.time(),
            }
        )
    )
    return path


@pytest.fixture
def runtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("VIRT_RBD_BACKUP_RUNTIME_DIR", str(tmp_path))
    return tmp_path


def dead_pid() -> tuple[int, int]:
    """A pid and start time of a process that has exited."""
    proc = subprocess.Popen(["sleep", "30"])
    started = start_time(proc.pid)
    proc.kill()
    proc.wait()
    return proc.pid, started


def test_a_dead_runs_record_is_thawed_and_removed(runtime: Path) -> None:
    uuid = uuid_of_the_test_domain()
    pid, started = dead_pid()
    record = write_record(runtime, uuid, pid, started)
    orphans = virt_rbd_backup.thaw_orphans()
    assert [(o.uuid, o.outcome, o.pids) for o in orphans] == [(uuid, "thawed", (pid,))]
    assert orphans[0].filesystems is not None
    assert not record.exists()
    assert virt_rbd_backup.thaw_orphans() == []


def test_a_live_runs_record_is_left_alone_and_holds_back_a_dead_ones(runtime: Path) -> None:
    uuid = uuid_of_the_test_domain()
    pid, started = dead_pid()
    dead = write_record(runtime, uuid, pid, started)
    live = write_record(runtime, uuid, os.getpid(), start_time(os.getpid()))
    orphans = virt_rbd_backup.thaw_orphans()
    assert [(o.outcome, o.pids) for o in orphans] == [("waiting", (pid,))]
    assert dead.exists() and live.exists()
    # A pid reused by another process is not the owner: a record with our pid but another
    # start time is dead.
    live.unlink()
    write_record(runtime, uuid, os.getpid(), start_time(os.getpid()) - 1)
    assert [o.outcome for o in virt_rbd_backup.thaw_orphans()] == ["thawed"]


def test_the_cli_prints_one_line_per_domain_and_fails_when_a_thaw_fails(
    runtime: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pid, started = dead_pid()
    gone = "00000000-0000-0000-0000-00000000dead"
    write_record(runtime, gone, pid, started)
    assert cli.main(["thaw-orphans"]) == 0
    out = capsys.readouterr().out
    assert (
        out.strip()
        == f"Dropped the record of domain test ({gone}), left frozen by a run that died (pid {pid}): it does not run here any more"
    )
    # An unreachable libvirt: the thaw fails, the record stays, exit status 1.
    failing = write_record(runtime, "x", pid, started)
    data = json.loads(failing.read_text())
    failing.write_text(json.dumps({**data, "uri": "test:///nonexistent-file.xml"}))
    assert cli.main(["thaw-orphans", "--json"]) == 1
    (entry,) = json.loads(capsys.readouterr().out)
    assert entry["outcome"] == "failed" and "libvirt" in entry["error"]
    assert failing.exists()


def test_format_orphan_lines() -> None:
    thawed = virt_rbd_backup.OrphanThaw(domain="web", uuid="u", pids=(7,), outcome="thawed", filesystems=2)
    assert cli.format_orphan(thawed) == "Thawed domain web (u), left frozen by a run that died (pid 7): 2 filesystems"
    failed = virt_rbd_backup.OrphanThaw(domain="web", uuid="u", pids=(7, 8), outcome="failed", error="boom")
    assert cli.format_orphan(failed) == "FAILED to thaw domain web (u), left frozen by a run that died (pid 7, 8): boom"
