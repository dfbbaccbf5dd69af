"""restic targets never yield a truncated disk that looks complete (issue 15), against the real
lab and Debian's real restic.

A run killed mid-export (SIGKILL, at the `exporting` test hook) must leave no restic snapshot
that restore takes: its restic dies with it (PR_SET_PDEATHSIG), and even a restic that outlives
it and commits what it read (started through a wrapper that shields it from the signal) leaves
only an unsealed snapshot, which `list` marks incomplete, `restore --backup latest` passes over
(and says so) and `restore --backup ID` refuses by name. The next run removes the killed run's
Ceph snapshot. Snapshots made by hand with the tool's tags, or with a forged seal, are refused
on restore. The truths compared with: `rbd export` of the shut-off lab-off's image (its content
does not change), restic's own `snapshots --json`, `rbd snap ls`, and /proc for restic's life.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lab_support import (
    FaultRecord,
    cli,
    domain_uuid,
    file_sha256,
    rbd_export_sha256,
    rbd_json,
    require_lab,
    run,
    tool_snapshots,
    wait_for,
)

pytestmark = pytest.mark.lab

PASSWORD = "vrb-lab-restic-faults-pw-8c1e4b"
IMAGE = "rbd/lab-off-a"
FILE = "lab-off-a.img"
RESTIC_SNAPSHOT_PREFIX = "virt-rbd-backup-restic-"

# Runs restic in a session of its own, so the parent-death signal that kills this wrapper
# when the tool dies does not reach it: restic then reads EOF and commits what it got, as
# restic without PR_SET_PDEATHSIG would. (A background job's stdin is /dev/null unless given.)
SHIELDING_WRAPPER = """#!/bin/bash
exec 3<&0
setsid restic "$@" <&3 3<&- &
wait $!
"""


class Restic:
    """A fresh local restic repository, and the tool's options for it."""

    def __init__(self, folder: Path) -> None:
        self.password_file = folder / "password"
        self.password_file.write_text(PASSWORD + "\n")
        self.password_file.chmod(0o600)
        self.repo = folder / "repo"
        self.run("init")

    def run(self, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
        proc = subprocess.run(
            ["restic", "--repo", str(self.repo), "--password-file", str(self.password_file), *args],
            input=stdin,
            capture_output=True,
            check=False,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr.decode()
        return proc

    def snapshots(self) -> list[dict[str, Any]]:
        return json.loads(self.run("snapshots", "--json").stdout) or []

    def options(self, binary: str = "restic") -> list[str]:
        return [
            "--restic-repo",
            str(self.repo),
            "--restic-password-file",
            str(self.password_file),
            "--restic-binary",
            binary,
        ]

    def listed(self) -> list[dict[str, Any]]:
        result = cli("list", *self.options(), "--json")
        assert result.returncode == 0, result.stderr
        return result.json()  # type: ignore[no-any-return]


@pytest.fixture
def restic(tmp_path: Path) -> Restic:
    require_lab()
    return Restic(tmp_path)


@pytest.fixture(scope="module")
def head() -> str:
    """SHA-256 of `rbd export` of lab-off's image: what every complete backup of it holds."""
    require_lab()
    return rbd_export_sha256(IMAGE)


def restic_ceph_snapshots() -> list[str]:
    return [s for s in tool_snapshots(IMAGE) if s.startswith(RESTIC_SNAPSHOT_PREFIX)]


def watchers() -> int:
    return len(rbd_json("status", IMAGE)["watchers"])


def children(pid: int) -> list[int]:
    """Child processes of `pid` (every thread's), from /proc."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except FileNotFoundError:
            continue
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def backup(restic: Restic, binary: str = "restic") -> None:
    result = cli("backup", *restic.options(binary), "--domain", "lab-off", "--json")
    assert result.returncode == 0, result.stdout + result.stderr


def restore(restic: Restic, target: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return run(
        [sys.executable, "-m", "virt_rbd_backup", "restore", "lab-off", *restic.options(), "--to", str(target), *extra],
        check=False,
    )


@pytest.fixture
def killed_mid_export(restic: Restic, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    """A good backup of lab-off, then a run SIGKILLed mid-export (restic given by the test's
    `binary` parameter); yields what was seen. Waits for the dead run's watch to expire after."""
    binary: str = request.param
    if binary == "shielded":
        wrapper = tmp_path / "restic-shielded"
        wrapper.write_text(SHIELDING_WRAPPER)
        wrapper.chmod(0o755)
        binary = str(wrapper)
    before_watchers = watchers()
    backup(restic)
    (good,) = restic.listed()
    assert good["complete"]
    env = dict(os.environ, VIRT_RBD_BACKUP_TEST_PAUSE="exporting:60")
    proc = subprocess.Popen(
        [sys.executable, "-m", "virt_rbd_backup", "backup", *restic.options(binary), "--domain", "lab-off"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: bool(restic_ceph_snapshots()), 60, "the run's Ceph snapshot")
        wait_for(lambda: bool(children(proc.pid)), 30, "restic to start")
        restic_pids = children(proc.pid)
        # Paused after the first 4 MiB block went into restic's pipe.
        time.sleep(2)
        leftover = restic_ceph_snapshots()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    killed_at = time.monotonic()
    try:
        yield {
            "good": good,
            "restic_pids": restic_pids,
            "killed_at": killed_at,
            "leftover": leftover,
            "binary": binary,
        }
    finally:
        wait_for(lambda: watchers() <= before_watchers, 90, "the killed run's watch to expire")
        # A shielded restic may still be running: it must end before the repository goes.
        for pid in restic_pids:
            wait_for(lambda pid=pid: not alive(pid), 60, f"restic {pid} to end")


@pytest.mark.parametrize("killed_mid_export", ["restic"], indirect=True)
def test_sigkill_mid_export_kills_restic_seals_nothing_and_the_next_run_sweeps_its_snapshot(
    restic: Restic, killed_mid_export: dict[str, Any], head: str, tmp_path: Path, fault: FaultRecord
) -> None:
    fault.injected = "SIGKILL of a backup into restic mid-export, after a complete one"
    # restic dies with us (PR_SET_PDEATHSIG): it does not read EOF and commit.
    for pid in killed_mid_export["restic_pids"]:
        wait_for(lambda pid=pid: not alive(pid), 5, f"restic {pid} to die with the tool")
    died_in = time.monotonic() - killed_mid_export["killed_at"]
    time.sleep(3)
    assert [s["paths"] for s in restic.snapshots()] == [[f"/{FILE}"], [f"/{FILE}.seal.json"]], (
        "only the good backup and its seal: the killed run's restic committed nothing"
    )
    assert [(s["id"], s["complete"]) for s in restic.listed()] == [(killed_mid_export["good"]["id"], True)]
    # restore latest is the good one, byte for byte.
    target = tmp_path / "restored.raw"
    restored = restore(restic, target)
    assert restored.returncode == 0, restored.stderr
    assert killed_mid_export["good"]["id"] in restored.stdout
    assert "checksum verified" in restored.stdout
    assert file_sha256(target) == head
    # The killed run's Ceph snapshot is still there; the next run removes it.
    assert killed_mid_export["leftover"] and restic_ceph_snapshots() == killed_mid_export["leftover"]
    wait_for(lambda: watchers() == 0, 90, "the killed run's watch to expire")
    backup(restic)
    fault.leaks = len(restic_ceph_snapshots())
    assert restic_ceph_snapshots() == []
    complete = [s for s in restic.listed() if s["complete"]]
    assert len(complete) == 2
    fault.outcome = (
        f"restic died {died_in:.1f} s after the kill, committed nothing; restore latest = the previous "
        "backup; the next run removed the Ceph snapshot"
    )
    fault.data_lost = "none (restore of the previous backup equals rbd export)"


@pytest.mark.parametrize("killed_mid_export", ["shielded"], indirect=True)
def test_a_restic_that_outlives_the_killed_run_commits_a_short_snapshot_that_restore_refuses(
    restic: Restic, killed_mid_export: dict[str, Any], head: str, tmp_path: Path, fault: FaultRecord
) -> None:
    fault.injected = "SIGKILL mid-export, restic shielded from PR_SET_PDEATHSIG (commits on EOF)"
    good = killed_mid_export["good"]
    # The shielded restic reads EOF and commits what it got: the truncated disk exists in restic.
    wait_for(lambda: len(restic.snapshots()) == 3, 60, "the shielded restic to commit")
    (short,) = [s for s in restic.snapshots() if s["paths"] == [f"/{FILE}"] and s["id"] != good["id"]]
    size = int(rbd_json("info", IMAGE)["size"])
    stored = int(json.loads(restic.run("ls", "--json", short["id"]).stdout.splitlines()[-1])["size"])
    assert stored < size, f"restic stored {stored} of {size} bytes: the snapshot is truncated"
    assert f"size={size}" in short["tags"]
    # Listed, marked incomplete.
    listed = {s["id"]: s for s in restic.listed()}
    assert (listed[good["id"]]["complete"], listed[short["id"]]["complete"]) == (True, False)
    text = cli("list", *restic.options())
    assert [line.endswith("INCOMPLETE (no seal)") for line in text.stdout.splitlines()] == [False, True]
    # restore latest passes over it, says so, and restores the good one.
    target = tmp_path / "restored.raw"
    restored = restore(restic, target)
    assert restored.returncode == 0, restored.stderr
    assert good["id"] in restored.stdout
    assert f"Skipped: restic snapshot {short['id']}" in restored.stderr
    assert file_sha256(target) == head
    # Asked for by id: refused, naming it; nothing written.
    refused_target = tmp_path / "refused.raw"
    refused = restore(restic, refused_target, "--backup", short["short_id"])
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert f"restic snapshot {short['id']} cannot be trusted" in refused.stderr
    assert "no seal" in refused.stderr
    assert not refused_target.exists()
    wait_for(lambda: watchers() == 0, 90, "the killed run's watch to expire")
    backup(restic)
    fault.leaks = len(restic_ceph_snapshots())
    assert restic_ceph_snapshots() == []
    fault.outcome = (
        f"restic committed {stored} of {size} bytes, unsealed: listed INCOMPLETE, restore latest skipped it "
        "(said so), restore by id exit 1; next run removed the Ceph snapshot"
    )
    fault.data_lost = "none (restore latest equals rbd export)"


def test_snapshots_made_by_hand_or_with_a_forged_seal_are_refused_on_restore(
    restic: Restic, head: str, tmp_path: Path, fault: FaultRecord
) -> None:
    fault.injected = "restic snapshots with the tool's tags: unsealed, a forged seal on a short one, on altered bytes"
    backup(restic)
    (good,) = restic.listed()
    size = good["size"]
    uuid = domain_uuid("lab-off")
    image = tmp_path / "image.raw"
    run(["rbd", "--conf", os.environ["CEPH_CONF"], "export", "--no-progress", IMAGE, str(image)])
    data = image.read_bytes()
    tags = ["virt-rbd-backup", f"domain={uuid}", "disk=vda", "name=lab-off", f"size={size}"]

    def plain_backup(content: bytes, name: str, extra_tags: list[str]) -> str:
        args = ["backup", "--stdin", "--stdin-filename", name, "--json", "--quiet"]
        out = restic.run(*args, *(a for t in extra_tags for a in ("--tag", t)), stdin=content).stdout
        return str(json.loads(out.decode().splitlines()[-1])["snapshot_id"])

    def forged_seal(snapshot: str) -> None:
        seal_tags = [
            "virt-rbd-backup-seal",
            f"snapshot={snapshot}",
            f"domain={uuid}",
            "disk=vda",
            f"size={size}",
            f"checksum={good['checksum']}",
        ]
        plain_backup(b"{}", f"{FILE}.seal.json", seal_tags)

    # 1. The first MiB, tagged like the tool's, no seal.
    unsealed = plain_backup(data[: 1 << 20], FILE, tags)
    # 2. The first MiB again (other bytes: its own snapshot), with a seal copied from the good one.
    short = plain_backup(data[: 1 << 20] + b"\1", FILE, tags)
    forged_seal(short)
    # 3. All the bytes, one altered, with the good seal's size and checksum.
    altered = bytearray(data)
    altered[size // 2] ^= 0xFF
    changed = plain_backup(bytes(altered), FILE, tags)
    forged_seal(changed)

    listed = {s["id"][:8]: s["complete"] for s in restic.listed()}
    assert listed == {good["id"][:8]: True, unsealed: False, short: True, changed: True}
    outcomes = []
    for snapshot, expected in [(unsealed, "no seal"), (short, "seal records"), (changed, "checksum")]:
        target = tmp_path / f"{snapshot}.raw"
        refused = restore(restic, target, "--backup", snapshot)
        assert refused.returncode == 1, refused.stdout + refused.stderr
        assert f"restic snapshot {snapshot}" in refused.stderr and "cannot be trusted" in refused.stderr
        assert expected in refused.stderr, refused.stderr
        assert not target.exists()
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(target.name)], "a temporary file was left"
        outcomes.append(f"{expected!r}")
    # By id the good one still restores, byte for byte.
    target = tmp_path / "good.raw"
    restored = restore(restic, target, "--backup", good["id"][:8])
    assert restored.returncode == 0, restored.stderr
    assert file_sha256(target) == head
    fault.outcome = f"restore by id exit 1 for each ({', '.join(outcomes)}); the real backup restores"
    fault.leaks = len(restic_ceph_snapshots())
    fault.data_lost = "none (the real backup equals rbd export)"


def test_sigkill_between_restics_commit_and_the_seal_leaves_an_incomplete_snapshot(
    restic: Restic, head: str, tmp_path: Path, fault: FaultRecord
) -> None:
    fault.injected = "SIGKILL after restic committed the disk, before its seal (test hook `sealing`)"
    before_watchers = watchers()
    backup(restic)
    (good,) = restic.listed()
    env = dict(os.environ, VIRT_RBD_BACKUP_TEST_PAUSE="sealing:60")
    proc = subprocess.Popen(
        [sys.executable, "-m", "virt_rbd_backup", "backup", *restic.options(), "--domain", "lab-off"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: len(restic.snapshots()) == 3, 120, "restic to commit the disk")
        time.sleep(1)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    try:
        # Nothing more is written: no seal.
        time.sleep(2)
        assert len(restic.snapshots()) == 3
        listed = restic.listed()
        assert [(s["id"] == good["id"], s["complete"]) for s in listed] == [(True, True), (False, False)]
        unsealed = listed[1]
        # Its bytes happen to be whole, but nothing vouches for them: latest passes over it.
        target = tmp_path / "restored.raw"
        restored = restore(restic, target)
        assert restored.returncode == 0, restored.stderr
        assert good["id"] in restored.stdout
        assert f"Skipped: restic snapshot {unsealed['id']}" in restored.stderr
        assert file_sha256(target) == head
        assert len(restic_ceph_snapshots()) == 1
        wait_for(lambda: watchers() <= before_watchers, 90, "the killed run's watch to expire")
        backup(restic)
        fault.leaks = len(restic_ceph_snapshots())
        assert restic_ceph_snapshots() == []
    finally:
        wait_for(lambda: watchers() <= before_watchers, 90, "the killed run's watch to expire")
    fault.outcome = "the committed disk is listed INCOMPLETE, restore latest skipped it (said so); next run swept"
    fault.data_lost = "none (restore latest equals rbd export)"
