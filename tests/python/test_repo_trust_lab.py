"""Repository trust and time (src/repo/manifest.rs, src/repo/stored_file.rs, src/engine/prune.rs),
against the lab: a wall clock stepped back between backups changes nothing about which backup is
the latest, the base of the next incremental or the one `prune --keep-last` keeps; a truncated
manifest in the middle of a chain is quarantined by prune, nothing of the chain is deleted and
the chain restores once the manifest is repaired; a block table replaced by a link to /dev/zero
or a FIFO gives a clear error at once.

The machine's clock is never touched (it is shared): the backup process shifts the clock it takes
ids from through its test hook `VIRT_RBD_BACKUP_TEST_CLOCK_OFFSET=SECONDS`. Every restore is
compared with `rbd export` of the snapshot the backup recorded. Scratch domains are named
`vrb-repotrust-*` and removed at the end."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from lab_support import (
    FaultRecord,
    cli,
    domain_report,
    file_sha256,
    rbd,
    rbd_export_sha256,
    scratch_domain,
)

pytestmark = pytest.mark.lab

MIB = 1024 * 1024


def write_random(image: str, offset: int, length: int, tmp: Path) -> None:
    """Writes `length` random bytes at `offset` of the (unused) image with `rbd import-diff` of a
    stream made here (rbd diff v1: size record, one data record, end), so every backup of the
    test has content of its own."""
    size = int(json.loads(rbd("info", image, "--format", "json").stdout)["size"])
    stream = b"rbd diff v1\n" + b"s" + struct.pack("<Q", size)
    stream += b"w" + struct.pack("<QQ", offset, length) + os.urandom(length) + b"e"
    diff = tmp / "change.rbdiff"
    diff.write_bytes(stream)
    rbd("import-diff", "--no-progress", str(diff), image)
    diff.unlink()


def backup(repo: Path, domain: str, *extra: str, clock_offset: int = 0) -> dict[str, Any]:
    """One backup of `domain` as its own process, its ids taken `clock_offset` s off the clock."""
    env = dict(os.environ, VIRT_RBD_BACKUP_TEST_CLOCK_OFFSET=str(clock_offset))
    proc = subprocess.run(
        [sys.executable, "-m", "virt_rbd_backup", "backup", "--repo", str(repo), "--json", "--domain", domain, *extra],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    dom = domain_report(json.loads(proc.stdout), domain)
    assert dom["status"] == "succeeded", dom
    return dom  # type: ignore[no-any-return]


def manifest_of(dom: dict[str, Any]) -> dict[str, Any]:
    return json.loads((Path(dom["path"]) / "manifest.json").read_text())  # type: ignore[no-any-return]


def vda(dom: dict[str, Any]) -> dict[str, Any]:
    return next(d for d in manifest_of(dom)["disks"] if d["target"] == "vda")


def snapshot_sha256(dom: dict[str, Any]) -> str:
    """SHA-256 of `rbd export` of the snapshot the backup recorded for vda (while it exists)."""
    return rbd_export_sha256(f"{vda(dom)['pool']}/{vda(dom)['image']}@{vda(dom)['snapshot']['name']}")


def restored_sha256(repo: Path, domain: str, backup: str, out: Path) -> str:
    restored = cli("restore", domain, "--repo", str(repo), "--disk", "vda", "--backup", backup, "--to", str(out))
    assert restored.returncode == 0, restored.stderr
    digest = file_sha256(out)
    out.unlink()
    return digest


def restores_to_its_snapshot(repo: Path, domain: str, backup: str, expected: dict[str, Any], out: Path) -> None:
    """`restore --backup BACKUP` of vda equals `rbd export` of the snapshot `expected` recorded."""
    assert restored_sha256(repo, domain, backup, out) == snapshot_sha256(expected), f"restore of {backup}"


def test_a_clock_stepped_back_changes_neither_latest_nor_base_nor_keep_last(tmp_path: Path, fault: FaultRecord) -> None:
    with scratch_domain(tmp_path, running=False, prefix="vrb-repotrust") as scratch:
        repo = tmp_path / "repo"
        name, image = scratch.name, scratch.images[0]
        out = tmp_path / "vda.raw"
        fault.injected = "wall clock stepped back 1 h, then 2 h, then 3 h between four backups (id clock test hook)"

        b1 = backup(repo, name, "--mode", "full")
        write_random(image, 0, MIB, tmp_path)
        b2 = backup(repo, name, clock_offset=-3600)
        assert b2["backup_id"] < b1["backup_id"], "the stepped-back id sorts before the older backup"
        assert (manifest_of(b1)["sequence"], manifest_of(b2)["sequence"]) == (1, 2)
        # The base of the incremental was the really newest backup (then, the only one).
        assert (b2["kind"], manifest_of(b2)["parent"]) == ("incremental", b1["backup_id"])
        restores_to_its_snapshot(repo, name, "latest", b2, out)

        write_random(image, 8 * MIB, MIB, tmp_path)
        b3 = backup(repo, name, clock_offset=-7200)
        # Id order would make b1 the base (and, its snapshot being gone, a full with a warning).
        assert (b3["kind"], manifest_of(b3)["parent"], manifest_of(b3)["sequence"]) == (
            "incremental",
            b2["backup_id"],
            3,
        )
        assert not b3["warnings"], b3["warnings"]
        restores_to_its_snapshot(repo, name, "latest", b3, out)
        listed = json.loads(cli("list", "--repo", str(repo), "--json").stdout)
        assert [b["backup_id"] for b in listed] == [b1["backup_id"], b2["backup_id"], b3["backup_id"]]
        assert [b["sequence"] for b in listed] == [1, 2, 3]

        write_random(image, 16 * MIB, MIB, tmp_path)
        b4 = backup(repo, name, "--mode", "full", clock_offset=-10800)
        assert b4["backup_id"] < b3["backup_id"] < b2["backup_id"] < b1["backup_id"]
        pruned = cli("prune", "--repo", str(repo), "--keep-last", "1", "--json")
        assert pruned.returncode == 0, pruned.stdout + pruned.stderr
        (dom,) = pruned.json()["domains"]
        assert [k["backup_id"] for k in dom["kept"]] == [b4["backup_id"]]
        assert [r["backup_id"] for r in dom["removed"]] == [b1["backup_id"], b2["backup_id"], b3["backup_id"]]
        left = sorted(p.name for p in Path(b4["path"]).parent.iterdir() if not p.name.startswith("."))
        assert left == [b4["backup_id"]]
        restores_to_its_snapshot(repo, name, "latest", b4, out)

        fault.outcome = (
            "latest, the incremental bases and keep-last followed the sequence (1..4), not the ids; "
            "every restore equals rbd export of its snapshot"
        )
        fault.measure(repo, scratch.images)
        assert fault.leaks == 0


def test_prune_quarantines_a_truncated_manifest_mid_chain_and_deletes_nothing(
    tmp_path: Path, fault: FaultRecord
) -> None:
    with scratch_domain(tmp_path, running=False, prefix="vrb-repotrust") as scratch:
        repo = tmp_path / "repo"
        name, image = scratch.name, scratch.images[0]
        out = tmp_path / "vda.raw"
        b1 = backup(repo, name, "--mode", "full")
        write_random(image, 0, MIB, tmp_path)
        b2 = backup(repo, name)
        write_random(image, 8 * MIB, MIB, tmp_path)
        b3 = backup(repo, name)
        assert [b["kind"] for b in (b1, b2, b3)] == ["full", "incremental", "incremental"]
        middle = Path(b2["path"]) / "manifest.json"
        original = middle.read_bytes()
        middle.write_bytes(original[: len(original) // 3])
        fault.injected = (
            "manifest of the middle backup of a 3-backup chain truncated to a third, then prune --keep-last 1"
        )

        started = time.monotonic()
        pruned = cli("prune", "--repo", str(repo), "--keep-last", "1", "--json")
        assert pruned.returncode == 1, "a quarantine is a problem to report"
        (dom,) = pruned.json()["domains"]
        assert dom["removed"] == []
        reasons = {k["backup_id"]: k["reasons"] for k in dom["kept"]}
        # b1 is the one restorable backup left, so keep-last takes it; b2 needs it anyway.
        assert reasons == {
            b1["backup_id"]: ["keep-last", f"needed by {b2['backup_id']}"],
            b2["backup_id"]: ["its manifest cannot be read"],
            b3["backup_id"]: [f"depends on {b2['backup_id']}, whose manifest cannot be read"],
        }
        quarantined = Path(b2["path"]).parent / f".quarantine-{b2['backup_id']}"
        (error,) = dom["errors"]
        assert f"quarantined as {quarantined}" in error
        assert Path(b1["path"]).is_dir() and Path(b3["path"]).is_dir() and quarantined.is_dir()
        assert not Path(b2["path"]).exists()
        listed = cli("list", "--repo", str(repo))
        assert listed.returncode == 1
        assert f"{b2['backup_id']}: unreadable: quarantined by prune in {quarantined}" in listed.stdout
        verified = cli("verify", "--repo", str(repo))
        assert verified.returncode == 1 and "quarantined by prune" in verified.stdout

        # A backup now cannot build on b3 (its chain needs b2): it is a full, and says why.
        # (It removes b3's snapshot, the old base: take its export first.)
        b3_truth = snapshot_sha256(b3)
        write_random(image, 16 * MIB, MIB, tmp_path)
        b4 = backup(repo, name)
        assert b4["kind"] == "full"
        assert any(f"needs backup {b2['backup_id']}" in w for w in b4["warnings"]), b4["warnings"]
        # A second prune keeps the chain again (b4 is kept by keep-last).
        again = cli("prune", "--repo", str(repo), "--keep-last", "1", "--json")
        (dom,) = again.json()["domains"]
        assert dom["removed"] == [], dom
        assert {k["backup_id"] for k in dom["kept"]} == {b["backup_id"] for b in (b1, b2, b3, b4)}
        took = time.monotonic() - started

        # The operator repairs the manifest and renames the folder back: nothing was lost.
        (quarantined / "manifest.json").write_bytes(original)
        quarantined.rename(b2["path"])
        assert restored_sha256(repo, name, b3["backup_id"], out) == b3_truth
        restores_to_its_snapshot(repo, name, "latest", b4, out)
        fault.outcome = (
            f"prune exit {pruned.returncode}: 0 removed, middle backup quarantined, chain kept "
            f"(second prune too; {took:.0f} s); after repair b3 restores to its snapshot"
        )
        fault.measure(repo, scratch.images)
        # The snapshot of b3 was the base until b4 (a full) replaced it: only b4's is left.
        assert fault.leaks == 0


@pytest.mark.parametrize("planted", ["symlink-dev-zero", "fifo"])
def test_a_block_table_replaced_by_a_link_or_fifo_fails_at_once(
    tmp_path: Path, planted: str, fault: FaultRecord
) -> None:
    with scratch_domain(tmp_path, running=False, prefix="vrb-repotrust") as scratch:
        repo = tmp_path / "repo"
        name = scratch.name
        b1 = backup(repo, name, "--mode", "full")
        table = Path(b1["path"]) / vda(b1)["blocks_file"]
        saved = table.read_bytes()
        table.unlink()
        if planted == "fifo":
            os.mkfifo(table, 0o600)
        else:
            table.symlink_to("/dev/zero")
        fault.injected = (
            f"vda.blocks of a full backup replaced by {'a FIFO' if planted == 'fifo' else 'a link to /dev/zero'}"
        )
        started = time.monotonic()
        verified = cli("verify", "--repo", str(repo), timeout=60)
        restored = cli(
            "restore", name, "--repo", str(repo), "--disk", "vda", "--to", str(tmp_path / "r.raw"), timeout=60
        )
        # The next backup cannot use it as a base: vda is backed up in full, with the reason.
        b2 = backup(repo, name)
        took = time.monotonic() - started
        found = "a FIFO" if planted == "fifo" else "a symbolic link"
        assert verified.returncode == 1 and f"{table} is {found}" in verified.stdout, verified.stdout
        assert restored.returncode == 1 and f"{table} is {found}" in restored.stderr, restored.stderr
        assert vda(b2)["kind"] == "full" and any(f"{table} is {found}" in w for w in b2["warnings"]), b2["warnings"]
        assert not (tmp_path / "r.raw").exists()
        fault.outcome = (
            f"verify and restore exit 1 naming the file ({found}), next backup full; {took:.1f} s for all three"
        )
        table.unlink()
        table.write_bytes(saved)
        fault.measure(repo, scratch.images)
        assert fault.leaks == 0
