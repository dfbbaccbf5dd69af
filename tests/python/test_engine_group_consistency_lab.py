"""Without a guest freeze, an RBD group snapshot gives all disks of a domain one instant.

Inside `lab-guest` a writer stamps the same sequence number on both disks over and over, disk
a first, each write synced to the RBD image. A backup taken at one instant sees disk b equal to
disk a or one behind, never anything else. Backups run with `--freeze off`, as for a guest
without an agent."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lab_support import (
    cli,
    domain_report,
    domain_uuid,
    file_sha256,
    guest_exec,
    rbd,
    rbd_export_sha256,
    repo_snapshots,
    require_lab,
    run,
    scratch_domain,
)

pytestmark = pytest.mark.lab

DOMAIN = "lab-guest"
DISKS = {"vda": "lab-guest-a", "vdb": "lab-guest-b"}


def start_writer(first: int = 1) -> str:
    """The guest shell command that starts the writer, counting from `first`."""
    return (
        "for d in a b; do dd if=/dev/zero of=/mnt/$d/seq bs=4096 count=1 conv=fsync 2>/dev/null; done; "
        "rm -f /tmp/stop-seq; "
        f"(i={first - 1}; while [ ! -e /tmp/stop-seq ]; do i=$((i+1)); "
        'printf "%010d" $i | dd of=/mnt/a/seq bs=4096 count=1 conv=notrunc,sync,fsync 2>/dev/null; '
        'printf "%010d" $i | dd of=/mnt/b/seq bs=4096 count=1 conv=notrunc,sync,fsync 2>/dev/null; '
        "done) </dev/null >/dev/null 2>&1 &"
    )


STOP_WRITER = "touch /tmp/stop-seq; sleep 0.5; sync"


def group_name() -> str:
    return f"virt-rbd-backup-{domain_uuid(DOMAIN)}"


def remove_group(name: str) -> None:
    for snap in json.loads(rbd("group", "snap", "ls", f"rbd/{name}", "--format", "json", check=False).stdout or "[]"):
        rbd("group", "snap", "rm", f"rbd/{name}@{snap['snapshot']}", check=False)
    for image in DISKS.values():
        rbd("group", "image", "rm", f"rbd/{name}", f"rbd/{image}", check=False)
    rbd("group", "rm", f"rbd/{name}", check=False)


@pytest.fixture
def writer() -> Iterator[None]:
    """The guest's disks not in any group, a writer running; afterwards no group and no writer."""
    require_lab()
    name = group_name()
    remove_group(name)
    guest_exec(DOMAIN, start_writer())
    time.sleep(1)
    try:
        yield
    finally:
        guest_exec(DOMAIN, STOP_WRITER)
        remove_group(name)


def backup(repo: Path, *extra: str) -> dict[str, Any]:
    result = cli("backup", "--repo", str(repo), "--freeze", "off", "--json", "--domain", DOMAIN, *extra)
    assert result.returncode == 0, result.stdout + result.stderr
    return domain_report(result.json(), DOMAIN)


def restored_sequence(repo: Path, backup_id: str, target: str, out: Path) -> int:
    """The sequence number disk `target` held in backup `backup_id`, read from its restore."""
    result = cli("restore", DOMAIN, "--repo", str(repo), "--disk", target, "--backup", backup_id, "--to", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    text = run(["debugfs", "-R", "cat /seq", str(out)]).stdout
    match = re.match(r"\d{10}", text)
    assert match, f"{target}: /seq holds {text[:40]!r}"
    return int(match.group())


def assert_one_instant(repo: Path, dom: dict[str, Any], tmp_path: Path) -> int:
    a = restored_sequence(repo, dom["backup_id"], "vda", tmp_path / f"{dom['backup_id']}-vda.raw")
    b = restored_sequence(repo, dom["backup_id"], "vdb", tmp_path / f"{dom['backup_id']}-vdb.raw")
    assert a > 0, "the writer had not written yet"
    # Disk a is written first: at one instant b equals a or is one behind.
    assert b <= a <= b + 1, f"disks of one backup are from different instants: vda={a} vdb={b}"
    return a


def test_group_snapshots_give_all_disks_one_instant_and_chain_incrementally(writer: None, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    name = group_name()

    first = backup(repo, "--consistency", "group", "--mode", "full")
    assert first["consistency"] == "crash_consistent_group"
    members = json.loads(rbd("group", "image", "ls", f"rbd/{name}", "--format", "json").stdout)
    assert sorted(m["image"] for m in members) == sorted(DISKS.values())
    assert assert_one_instant(repo, first, tmp_path) < 1_000_000

    # Idle guest: the group snapshot and the marker before it hold the same data, so the
    # incremental (diffed from the first marker to the second group snapshot) must restore to
    # exactly what `rbd export` of the second marker gives.
    guest_exec(DOMAIN, STOP_WRITER)
    time.sleep(1)
    second = backup(repo, "--consistency", "group")
    assert second["kind"] == "incremental"
    assert second["consistency"] == "crash_consistent_group"
    for target, image in DISKS.items():
        out = tmp_path / f"second-{target}.raw"
        result = cli(
            "restore", DOMAIN, "--repo", str(repo), "--disk", target, "--backup", second["backup_id"], "--to", str(out)
        )
        assert result.returncode == 0, result.stderr
        snap = next(d["snapshot"] for d in second["disks"] if d["target"] == target)
        assert file_sha256(out) == rbd_export_sha256(f"rbd/{image}@{snap}"), target
    verify = cli("verify", DOMAIN, "--repo", str(repo), "--source", "--json")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert len(verify.json()["source_checked"]) == 2

    # Default consistency (auto) uses the group now that the disks are in one.
    # The writer starts again from a million: the third backup must see its writes.
    guest_exec(DOMAIN, start_writer(1_000_000))
    time.sleep(1)
    third = backup(repo)
    assert third["kind"] == "incremental"
    assert third["consistency"] == "crash_consistent_group"
    assert assert_one_instant(repo, third, tmp_path) > 1_000_000

    # Only the latest backup's snapshots stay: one marker per image, one group snapshot.
    for image in DISKS.values():
        assert len(repo_snapshots(image, repo)) == 1, image
    group_snaps = json.loads(rbd("group", "snap", "ls", f"rbd/{name}", "--format", "json").stdout)
    assert [s["snapshot"] for s in group_snaps] == [third["disks"][0]["snapshot"]]
    manifest = json.loads(Path(third["path"], "manifest.json").read_text())
    assert all(d["group_snapshot"]["group"] == name for d in manifest["disks"])
    assert cli("verify", DOMAIN, "--repo", str(repo)).returncode == 0

    per_disk = backup(repo, "--consistency", "per-disk")
    assert per_disk["consistency"] == "crash_consistent_per_disk"
    # The group snapshot of the third backup went with it.
    assert json.loads(rbd("group", "snap", "ls", f"rbd/{name}", "--format", "json").stdout) == []


def test_disks_split_over_groups_fail_group_consistency_and_warn_in_auto_mode(tmp_path: Path) -> None:
    """A group snapshot covers a group, not a domain: with one disk in a group and the other in
    none, `--consistency group` must refuse and say how to regroup; `auto` backs up per disk and
    says why it did not use the group."""
    with scratch_domain(tmp_path, running=False) as scratch:
        group = f"rbd/{scratch.name}-grp"
        rbd("group", "create", group)
        try:
            rbd("group", "image", "add", group, scratch.images[0])
            repo = tmp_path / "repo"
            args = ("backup", "--repo", str(repo), "--json", "--domain", scratch.name)

            required = cli(*args, "--consistency", "group")
            assert required.returncode == 1, required.stdout + required.stderr
            dom = domain_report(required.json(), scratch.name)
            assert dom["status"] == "failed"
            for image in scratch.images:
                assert image in dom["error"], dom["error"]
            assert "rbd group image add" in dom["error"], dom["error"]
            assert repo_snapshots(scratch.images[0], repo) == []

            auto = cli(*args)
            assert auto.returncode == 0, auto.stdout + auto.stderr
            dom = domain_report(auto.json(), scratch.name)
            assert dom["status"] == "succeeded"
            assert any("not all in one RBD group" in w for w in dom["warnings"]), dom["warnings"]

            per_disk = cli(*args, "--consistency", "per-disk")
            assert per_disk.returncode == 0, per_disk.stdout + per_disk.stderr
            assert domain_report(per_disk.json(), scratch.name)["warnings"] == []
        finally:
            rbd("group", "image", "rm", group, scratch.images[0], check=False)
            rbd("group", "rm", group, check=False)
