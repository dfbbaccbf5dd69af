"""What the check at the end of a restore to RBD catches (src/engine/restore.rs, "The check of
the result"; README, "Safety"), against the real lab.

By default a restore works out the hash of each block from the bytes it hands to the target
and reads back only the blocks an incremental wrote over; `--read-back` reads every block back.
The fault: after the restore wrote everything and before it checks, another client overwrites
4 KiB of the image being restored (`rbd import-diff` of a stream made here), as storage that
acknowledged a write and then held other bytes would. The restore is paused there by its test
hook (`VIRT_RBD_BACKUP_TEST_PAUSE=written:SECONDS`). What is pinned:

- in a block an incremental wrote over, the default check catches it (that block is read back);
- in a block only the full backup wrote, the default check does not (it trusts the target's
  acknowledgement there, as `rbd import` does); the restored image then differs from the
  backup, which `rbd export` of both shows;
- `--read-back` catches it anywhere.

From a block repository (`--layout blocks`, src/engine/block_restore.rs) every stored block is
written once, whole, so the default check knows every block from what it wrote and reads
nothing back: the same fault is not caught by default, in any block, and `--read-back` catches
it. Both layouts check with the same code (`restore::check_restored`).

A caught fault fails the restore (exit 1) and leaves no image behind. The backups are of a
shut-off scratch domain of our own (`vrb-check-*`), removed at the end."""

from __future__ import annotations

import os
import queue
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lab_support import (
    BLOCK,
    FaultRecord,
    cli,
    domain_xml,
    make_image,
    rbd_export_sha256,
    rbd_json,
    remove_image,
    require_lab,
    virsh,
)

pytestmark = pytest.mark.lab

PAUSE = 6
INCREMENTAL_OFFSET = 2 * BLOCK + 64 * 1024
"""Where the incremental writes (block 2): the default check reads that block back."""
FULL_ONLY_OFFSET = 3 * BLOCK + 8192
"""A block the incremental does not touch: the default check trusts the full backup's writes there."""


@dataclass
class Chain:
    domain: str
    image: str
    repo: Path
    full: str  # backup id of the full backup
    latest: str  # backup id of the incremental on top of it
    sha256: dict[str, str]  # backup id -> SHA-256 of `rbd export` of the image as it was backed up


def write_at(image: str, offset: int, data: bytes) -> None:
    """Write `data` at `offset` of `image` with `rbd import-diff` (an "rbd diff v1" stream)."""
    size = int(rbd_json("info", image)["size"])
    stream = b"rbd diff v1\n" + b"s" + struct.pack("<Q", size)
    stream += b"w" + struct.pack("<QQ", offset, len(data)) + data + b"e"
    proc = subprocess.run(
        ["rbd", "--conf", os.environ["CEPH_CONF"], "import-diff", "--no-progress", "-", image],
        input=stream,
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")


def backup(repo: Path, domain: str, kind: str, *extra: str) -> tuple[str, str]:
    """A backup of `domain`; its id and the pool/image@snapshot it recorded."""
    result = cli("backup", "--repo", str(repo), "--json", "--domain", domain, *extra)
    assert result.returncode == 0, result.stdout + result.stderr
    (dom,) = result.json()["domains"]
    (disk,) = dom["disks"]
    assert disk["kind"] == kind, disk
    return str(dom["backup_id"]), f"{disk['image']}@{disk['snapshot']}"


def make_chain(repo: Path, name: str, image: str, *extra: str) -> Chain:
    """A full backup of `name` into `repo`, 64 KiB written in block 2, an incremental."""
    full, _ = backup(repo, name, "full", *extra)
    # The domain is shut off: its image stays as the full backup read it until we write.
    full_sha = rbd_export_sha256(image)
    write_at(image, INCREMENTAL_OFFSET, os.urandom(64 * 1024))
    latest, latest_snap = backup(repo, name, "incremental", *extra)
    return Chain(name, image, repo, full, latest, {full: full_sha, latest: rbd_export_sha256(latest_snap)})


@pytest.fixture(scope="module")
def block_chain(chain: Chain, tmp_path_factory: pytest.TempPathFactory) -> Chain:
    """The same domain backed up into a block repository in a folder: a full and an incremental."""
    repo = tmp_path_factory.mktemp("restore-check-blocks") / "repo"
    return make_chain(repo, chain.domain, chain.image, "--layout", "blocks")


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chain]:
    """A shut-off domain with one 64 MiB disk: a full backup, 64 KiB written in block 2, an incremental."""
    require_lab()
    tmp = tmp_path_factory.mktemp("restore-check")
    name = f"vrb-check-{uuid.uuid4().hex[:8]}"
    image = f"rbd/{name}-a"
    try:
        make_image(image, tmp, size_mib=64, data_mib=20)
        xml = tmp / f"{name}.xml"
        xml.write_text(domain_xml(name, [image], running=False))
        virsh("define", str(xml))
        yield make_chain(tmp / "repo", name, image)
    finally:
        virsh("undefine", name, check=False)
        remove_image(image)


def restore_with_fault(chain: Chain, backup_id: str, target: str, offset: int, *extra: str) -> tuple[int, str]:
    """Restore `backup_id` into rbd/`target`, overwriting 4 KiB at `offset` of the image being
    restored while the restore is paused after writing; its exit status and stderr."""
    env = dict(os.environ, VIRT_RBD_BACKUP_TEST_PAUSE=f"written:{PAUSE}")
    args = ["restore", chain.domain, "--repo", str(chain.repo), "--backup", backup_id, "--to", f"rbd:rbd/{target}"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "virt_rbd_backup", *args, "--ceph-conf", os.environ["CEPH_CONF"], *extra],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    seen: list[str] = []
    deadline = time.monotonic() + 120
    while not any("test hook: pausing" in line for line in seen):
        assert time.monotonic() < deadline, f"the restore did not pause: {''.join(seen)}"
        try:
            seen.append(lines.get(timeout=1))
        except queue.Empty:
            continue
    write_at(f"rbd/{target}.virt-rbd-backup-restoring", offset, b"\xa5" * 4096)
    proc.wait(timeout=300)
    time.sleep(0.2)  # the pump thread drains the pipe
    while not lines.empty():
        seen.append(lines.get())
    return proc.returncode, "".join(seen)


def images_named(prefix: str) -> list[str]:
    return sorted(str(i["image"]) for i in rbd_json("ls", "-l", "rbd") if str(i["image"]).startswith(prefix))


def test_default_check_catches_a_bad_write_in_a_block_an_incremental_wrote(chain: Chain, fault: FaultRecord) -> None:
    target = f"vrb-check-target-{uuid.uuid4().hex[:6]}"
    try:
        code, stderr = restore_with_fault(chain, chain.latest, target, INCREMENTAL_OFFSET + 4096)
        fault.injected = (
            "4 KiB of the image being restored overwritten by another client after the restore wrote it, "
            "in a block the incremental wrote over (default check)"
        )
        assert code == 1, stderr
        assert "differs from the backup's checksum" in stderr, stderr
        assert f"offset {2 * BLOCK}" in stderr, stderr
        assert images_named(target) == [], "a failed restore leaves no image"
        fault.outcome = f"exit {code}: caught (block 2 read back), no image left"
        fault.measure(chain.repo, [chain.image])
    finally:
        remove_image(f"rbd/{target}")
        remove_image(f"rbd/{target}.virt-rbd-backup-restoring")


def test_default_check_trusts_the_target_where_only_the_full_wrote(chain: Chain, fault: FaultRecord) -> None:
    target = f"vrb-check-target-{uuid.uuid4().hex[:6]}"
    try:
        code, stderr = restore_with_fault(chain, chain.full, target, FULL_ONLY_OFFSET)
        fault.injected = (
            "4 KiB of the image being restored overwritten by another client after the restore wrote it, "
            "in a block only the full backup wrote (default check)"
        )
        assert code == 0, stderr
        restored = rbd_export_sha256(f"rbd/{target}")
        assert restored != chain.sha256[chain.full], "the overwrite is in the restored image"
        fault.outcome = (
            f"exit {code}: not caught (the default check hashes what the restore wrote, and trusts the "
            "target's acknowledgement there); --read-back catches it"
        )
        fault.data_lost = "the restored image differs from the backup in the 4 KiB overwritten"
    finally:
        remove_image(f"rbd/{target}")
        remove_image(f"rbd/{target}.virt-rbd-backup-restoring")


@pytest.mark.parametrize(("which", "offset"), [("full", FULL_ONLY_OFFSET), ("latest", INCREMENTAL_OFFSET + 4096)])
def test_read_back_catches_a_bad_write_anywhere(chain: Chain, which: str, offset: int, fault: FaultRecord) -> None:
    target = f"vrb-check-target-{uuid.uuid4().hex[:6]}"
    backup_id = chain.full if which == "full" else chain.latest
    try:
        code, stderr = restore_with_fault(chain, backup_id, target, offset, "--read-back")
        fault.injected = (
            f"4 KiB of the image being restored overwritten by another client after the restore wrote it, "
            f"at offset {offset} of a restore of the {which} backup, with --read-back"
        )
        assert code == 1, stderr
        assert "differs from the backup's checksum" in stderr, stderr
        assert f"offset {offset // BLOCK * BLOCK}" in stderr, stderr
        assert images_named(target) == [], "a failed restore leaves no image"
        fault.outcome = f"exit {code}: caught (every block read back), no image left"
        fault.measure(chain.repo, [chain.image])
    finally:
        remove_image(f"rbd/{target}")
        remove_image(f"rbd/{target}.virt-rbd-backup-restoring")


def test_restores_without_a_fault_match_rbd_export_with_either_check(chain: Chain) -> None:
    """The check does not refuse a good restore: the result equals `rbd export` of the snapshot."""
    for backup_id in (chain.full, chain.latest):
        for extra in ((), ("--read-back",)):
            target = f"vrb-check-target-{uuid.uuid4().hex[:6]}"
            try:
                args = ["restore", chain.domain, "--repo", str(chain.repo), "--backup", backup_id]
                result = cli(*args, "--to", f"rbd:rbd/{target}", "--ceph-conf", os.environ["CEPH_CONF"], *extra)
                assert result.returncode == 0, result.stderr
                assert rbd_export_sha256(f"rbd/{target}") == chain.sha256[backup_id]
            finally:
                remove_image(f"rbd/{target}")


def test_block_layout_default_check_reads_nothing_back_and_read_back_catches_the_fault(
    block_chain: Chain, fault: FaultRecord
) -> None:
    """From a block repository every block is known from what was written: by default a bad
    write is not caught in any block (even one the incremental changed), `--read-back` catches it."""
    offset = INCREMENTAL_OFFSET + 4096
    target = f"vrb-check-target-{uuid.uuid4().hex[:6]}"
    try:
        code, stderr = restore_with_fault(block_chain, block_chain.latest, target, offset)
        assert code == 0, stderr
        assert rbd_export_sha256(f"rbd/{target}") != block_chain.sha256[block_chain.latest]
    finally:
        remove_image(f"rbd/{target}")
        remove_image(f"rbd/{target}.virt-rbd-backup-restoring")
    target = f"vrb-check-target-{uuid.uuid4().hex[:6]}"
    try:
        code, stderr = restore_with_fault(block_chain, block_chain.latest, target, offset, "--read-back")
        fault.injected = (
            "4 KiB of the image being restored from a block repository overwritten by another client "
            "after the restore wrote it (default check, then --read-back)"
        )
        assert code == 1, stderr
        assert "differs from the backup's checksum" in stderr, stderr
        assert f"offset {offset // BLOCK * BLOCK}" in stderr, stderr
        assert images_named(target) == [], "a failed restore leaves no image"
        fault.outcome = (
            f"default: exit 0, not caught (nothing read back); --read-back: exit {code}, caught, no image left"
        )
        fault.data_lost = "with the default check, the restored image differs from the backup in the 4 KiB overwritten"
    finally:
        remove_image(f"rbd/{target}")
        remove_image(f"rbd/{target}.virt-rbd-backup-restoring")


def test_block_layout_restores_without_a_fault_match_rbd_export_with_either_check(block_chain: Chain) -> None:
    for backup_id in (block_chain.full, block_chain.latest):
        for extra in ((), ("--read-back",)):
            target = f"vrb-check-target-{uuid.uuid4().hex[:6]}"
            try:
                args = ["restore", block_chain.domain, "--repo", str(block_chain.repo), "--backup", backup_id]
                result = cli(*args, "--to", f"rbd:rbd/{target}", "--ceph-conf", os.environ["CEPH_CONF"], *extra)
                assert result.returncode == 0, result.stderr
                assert rbd_export_sha256(f"rbd/{target}") == block_chain.sha256[backup_id]
            finally:
                remove_image(f"rbd/{target}")
