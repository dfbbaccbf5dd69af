"""Incremental backups, restore, verify and prune against the real lab.

Each point in time is compared with Ceph's own export of the snapshot it was taken from
(`rbd export`), a chain is replayed with the stock `rbd import-diff`, restored filesystems are
checked with `e2fsck` and `debugfs`, and corruption is made by flipping real bytes."""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path
from typing import Any

import pytest

from lab_support import (
    FaultRecord,
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


def backup(repo: Path, *extra: str, domain: str = "lab-guest") -> dict[str, Any]:
    result = cli("backup", "--repo", str(repo), "--json", "--domain", domain, *extra)
    assert result.returncode == 0, result.stdout + result.stderr
    return domain_report(result.json(), domain)


def manifest(dom: dict[str, Any]) -> dict[str, Any]:
    return json.loads((Path(dom["path"]) / "manifest.json").read_text())  # type: ignore[no-any-return]


def disk(dom: dict[str, Any], target: str) -> dict[str, Any]:
    return next(d for d in manifest(dom)["disks"] if d["target"] == target)


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A full backup, a change inside the guest, an incremental; Ceph's export of each
    snapshot is recorded while the snapshot still exists."""
    require_lab()
    repo = tmp_path_factory.mktemp("inc") / "repo"
    first = backup(repo, "--mode", "full")
    export1 = {
        "vda": rbd_export_sha256(f"rbd/lab-guest-a@{disk(first, 'vda')['snapshot']['name']}"),
        "vdb": rbd_export_sha256(f"rbd/lab-guest-b@{disk(first, 'vdb')['snapshot']['name']}"),
    }
    content = uuid.uuid4().hex
    guest_exec(
        "lab-guest",
        f"dd if=/dev/urandom of=/mnt/a/grown.bin bs=1M count=2 2>/dev/null; echo {content} > /mnt/a/changed.txt; rm -f /mnt/b/marker.txt; sync",
    )
    second = backup(repo)
    export2 = {
        "vda": rbd_export_sha256(f"rbd/lab-guest-a@{disk(second, 'vda')['snapshot']['name']}"),
        "vdb": rbd_export_sha256(f"rbd/lab-guest-b@{disk(second, 'vdb')['snapshot']['name']}"),
    }
    return {"repo": repo, "first": first, "second": second, "export1": export1, "export2": export2, "content": content}


def test_second_backup_is_incremental_and_reads_only_what_changed(chain: dict[str, Any]) -> None:
    second = chain["second"]
    assert second["kind"] == "incremental"
    m = manifest(second)
    assert m["parent"] == chain["first"]["backup_id"]
    for d in m["disks"]:
        assert d["kind"] == "incremental"
        assert d["format"] == "rbd-diff-v1"
        assert d["parent_backup"] == chain["first"]["backup_id"]
        assert d["base_snapshot"]["name"] == disk(chain["first"], d["target"])["snapshot"]["name"]
    full_read = sum(d["bytes_read"] for d in chain["first"]["disks"])
    inc_read = sum(d["bytes_read"] for d in second["disks"])
    assert inc_read < full_read, (inc_read, full_read)
    # Only the new base snapshots are left in the cluster.
    assert repo_snapshots("rbd/lab-guest-a", chain["repo"]) == [disk(second, "vda")["snapshot"]["name"]]


def test_each_point_in_time_restores_to_exactly_its_snapshot(chain: dict[str, Any], tmp_path: Path) -> None:
    for point, export in (("first", "export1"), ("second", "export2")):
        for target in ("vda", "vdb"):
            out = tmp_path / f"{point}-{target}.raw"
            result = cli(
                "restore",
                "lab-guest",
                "--repo",
                str(chain["repo"]),
                "--disk",
                target,
                "--backup",
                chain[point]["backup_id"],
                "--to",
                str(out),
            )
            assert result.returncode == 0, result.stdout + result.stderr
            assert file_sha256(out) == chain[export][target], f"{point} {target}"
            assert out.stat().st_blocks * 512 < out.stat().st_size / 2, "restored file is not sparse"


def test_restored_filesystem_holds_what_the_guest_wrote(chain: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "vda.raw"
    result = cli("restore", "lab-guest", "--repo", str(chain["repo"]), "--disk", "vda", "--to", str(out))
    assert result.returncode == 0, result.stderr
    fsck = run(["e2fsck", "-fn", str(out)], check=False)
    assert fsck.returncode == 0, fsck.stdout
    assert run(["debugfs", "-R", "cat /changed.txt", str(out)]).stdout.strip() == chain["content"]


def test_restore_to_rbd_equals_the_snapshot_and_refuses_to_overwrite(chain: dict[str, Any]) -> None:
    import os

    image = f"restored-{uuid.uuid4().hex[:8]}"
    try:
        args = [
            "restore",
            "lab-guest",
            "--repo",
            str(chain["repo"]),
            "--disk",
            "vdb",
            "--to",
            f"rbd:rbd/{image}",
            "--ceph-conf",
            os.environ["CEPH_CONF"],
        ]
        result = cli(*args)
        assert result.returncode == 0, result.stdout + result.stderr
        assert rbd_export_sha256(f"rbd/{image}") == chain["export2"]["vdb"]
        again = cli(*args)
        assert again.returncode == 2 and "--force" in again.stderr, again.stderr
        forced = cli(*args, "--force", "--backup", chain["first"]["backup_id"])
        assert forced.returncode == 0, forced.stderr
        assert rbd_export_sha256(f"rbd/{image}") == chain["export1"]["vdb"]
    finally:
        rbd("rm", "--no-progress", f"rbd/{image}", check=False)


def test_chain_replays_with_stock_rbd_import_diff(chain: dict[str, Any]) -> None:
    first, second = disk(chain["first"], "vda"), disk(chain["second"], "vda")
    image = f"importdiff-{uuid.uuid4().hex[:8]}"
    try:
        rbd("import", "--no-progress", str(Path(chain["first"]["path"]) / first["file"]), f"rbd/{image}")
        rbd("snap", "create", f"rbd/{image}@{first['snapshot']['name']}")
        rbd("import-diff", "--no-progress", str(Path(chain["second"]["path"]) / second["file"]), f"rbd/{image}")
        assert rbd_export_sha256(f"rbd/{image}") == chain["export2"]["vda"]
    finally:
        rbd("snap", "purge", "--no-progress", f"rbd/{image}", check=False)
        rbd("rm", "--no-progress", f"rbd/{image}", check=False)


def flip_byte(path: Path, offset: int) -> None:
    with path.open("r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0xFF]))


BLOCK = 4 << 20


def full_blocks_by_fate(chain: dict[str, Any], tmp_path: Path) -> tuple[list[int], list[int]]:
    """The 4 MiB blocks of vda's full raw file that hold data, split into those the incremental
    left as they were and those it changed (compared with a clean restore of the chain's end)."""
    full = chain["repo"] / domain_uuid("lab-guest") / chain["first"]["backup_id"] / disk(chain["first"], "vda")["file"]
    end = tmp_path / "end.raw"
    restored = cli("restore", "lab-guest", "--repo", str(chain["repo"]), "--disk", "vda", "--to", str(end))
    assert restored.returncode == 0, restored.stderr
    kept, changed = [], []
    with full.open("rb") as a, end.open("rb") as b:
        index = 0
        while block := a.read(BLOCK):
            if block.strip(b"\0"):
                (kept if block == b.read(BLOCK) else changed).append(index)
            else:
                b.seek(BLOCK, 1)
            index += 1
    end.unlink()
    assert kept and changed, (kept, changed)
    return kept, changed


def first_data_in_block(path: Path, index: int) -> int:
    with path.open("rb") as f:
        f.seek(index * BLOCK)
        block = f.read(BLOCK)
    return index * BLOCK + len(block) - len(block.lstrip(b"\0"))


@pytest.mark.parametrize("which", ["first", "second"])
def test_verify_finds_a_flipped_byte_and_restore_refuses(
    chain: dict[str, Any], tmp_path: Path, which: str, fault: FaultRecord
) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(chain["repo"], repo)
    assert cli("verify", "--repo", str(repo)).returncode == 0
    dom = chain[which]
    folder = repo / domain_uuid("lab-guest") / dom["backup_id"]
    stored = folder / disk(dom, "vda")["file"]
    if which == "first":
        # A block of the full that the incremental did not replace: the restored image would
        # hold the flipped byte.
        kept, _ = full_blocks_by_fate(chain, tmp_path)
        offset = first_data_in_block(stored, kept[0])
    else:
        offset = stored.stat().st_size // 2
    flip_byte(stored, offset)
    fault.injected = f"one byte flipped at offset {offset} of the {which} backup's {stored.name}" + (
        " (in a block the incremental kept)" if which == "first" else ""
    )
    result = cli("verify", "--repo", str(repo))
    assert result.returncode == 1, result.stdout + result.stderr
    assert stored.name in result.stdout and f"offset {offset // BLOCK * BLOCK}" in result.stdout, result.stdout
    out = tmp_path / "restored.raw"
    restored = cli("restore", "lab-guest", "--repo", str(repo), "--disk", "vda", "--to", str(out))
    assert restored.returncode == 1, restored.stdout + restored.stderr
    assert "corrupt" in restored.stderr.lower(), restored.stderr
    if which == "first":
        # The restore copied the full unseen and found the damage in its check: it names the
        # damaged file and block, not only the restored image's.
        assert stored.name in restored.stderr and f"offset {offset // BLOCK * BLOCK}" in restored.stderr, (
            restored.stderr
        )
    assert not out.exists()
    fault.outcome = "verify exit 1 naming the file and block; restore of the chain's end exit 1, no file left"
    fault.data_lost = "none restored: the damaged backup is refused, never restored wrong"


def test_damage_in_a_block_an_incremental_replaced_does_not_stop_its_restore(
    chain: dict[str, Any], tmp_path: Path, fault: FaultRecord
) -> None:
    """A restore into a file checks the image it produced against the backup's block table:
    a flipped byte in a block of the full that the incremental replaced is not in that image,
    so the restore of the chain's end succeeds with exactly the snapshot's content, while
    verify reports the damaged file (and a restore of the full itself refuses)."""
    repo = tmp_path / "repo"
    shutil.copytree(chain["repo"], repo)
    _, changed = full_blocks_by_fate(chain, tmp_path)
    stored = repo / domain_uuid("lab-guest") / chain["first"]["backup_id"] / disk(chain["first"], "vda")["file"]
    offset = first_data_in_block(stored, changed[0])
    flip_byte(stored, offset)
    fault.injected = (
        f"one byte flipped at offset {offset} of the full's {stored.name}, in a block the incremental replaced"
    )
    result = cli("verify", "--repo", str(repo))
    assert result.returncode == 1 and stored.name in result.stdout, result.stdout + result.stderr
    out = tmp_path / "restored.raw"
    restored = cli("restore", "lab-guest", "--repo", str(repo), "--disk", "vda", "--to", str(out))
    assert restored.returncode == 0, restored.stdout + restored.stderr
    assert file_sha256(out) == chain["export2"]["vda"]
    full_out = tmp_path / "full.raw"
    first_id = chain["first"]["backup_id"]
    refused = cli(
        "restore", "lab-guest", "--repo", str(repo), "--disk", "vda", "--backup", first_id, "--to", str(full_out)
    )
    assert refused.returncode == 1 and stored.name in refused.stderr, refused.stdout + refused.stderr
    assert not full_out.exists()
    fault.outcome = "verify exit 1 naming the file; the chain's end restores (equal to rbd export); the full refuses"
    fault.data_lost = "none: the chain's end equals rbd export of its snapshot"


def test_deleted_base_snapshot_falls_back_to_full(tmp_path: Path) -> None:
    require_lab()
    repo = tmp_path / "repo"
    first = backup(repo, domain="lab-off")
    rbd("snap", "rm", "--no-progress", f"rbd/lab-off-a@{disk(first, 'vda')['snapshot']['name']}")
    second = backup(repo, domain="lab-off")
    assert second["kind"] == "full"
    assert any("no longer exists" in w for w in second["warnings"]), second["warnings"]
    third = backup(repo, "--full-every", "2", domain="lab-off")
    assert third["kind"] == "incremental"
    fourth = backup(repo, "--full-every", "2", domain="lab-off")
    assert fourth["kind"] == "full"


def test_prune_keeps_what_the_kept_backups_need(tmp_path: Path) -> None:
    require_lab()
    repo = tmp_path / "repo"
    ids = [backup(repo, domain="lab-off")["backup_id"] for _ in range(3)]
    dry = cli("prune", "lab-off", "--repo", str(repo), "--keep-last", "1", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    folder = repo / domain_uuid("lab-off")
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) == sorted(ids)
    result = cli("prune", "lab-off", "--repo", str(repo), "--keep-last", "1", "--json")
    assert result.returncode == 0, result.stderr
    # The newest is an incremental: it needs its whole chain, so nothing can go.
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) == sorted(ids)
    full = backup(repo, "--mode", "full", domain="lab-off")["backup_id"]
    result = cli("prune", "lab-off", "--repo", str(repo), "--keep-last", "1", "--json")
    assert result.returncode == 0, result.stderr
    assert [p.name for p in folder.iterdir() if not p.name.startswith(".")] == [full]
    assert cli("verify", "--repo", str(repo)).returncode == 0
    out = tmp_path / "vda.raw"
    assert cli("restore", "lab-off", "--repo", str(repo), "--to", str(out)).returncode == 0
    assert file_sha256(out) == rbd_export_sha256(f"rbd/lab-off-a@{repo_snapshots('rbd/lab-off-a', repo)[0]}")


def test_scattered_small_writes_are_stored_as_exact_extents_like_rbd_export_diff(tmp_path: Path) -> None:
    """With the object map the diff names whole 4 MiB objects; what is stored must still be only
    what changed, as Ceph's own `rbd export-diff` (exact extents) stores it."""
    with scratch_domain(tmp_path, running=False) as scratch:
        repo = tmp_path / "repo"
        image = scratch.images[0]
        first = backup(repo, "--mode", "full", domain=scratch.name)
        assert first["status"] == "succeeded"
        # Our base goes once the next backup is complete: rbd export-diff gets its own twin.
        rbd("snap", "create", f"{image}@stock-base")
        # Eight 64 KiB writes at random places of the 64 MiB image.
        rbd("bench", "--io-type", "write", "--io-size", "64K", "--io-total", "512K", "--io-pattern", "rand", image)
        second = backup(repo, domain=scratch.name)
        record = disk(second, "vda")
        assert record["kind"] == "incremental"
        stock = tmp_path / "stock.rbdiff"
        rbd(
            "export-diff",
            "--no-progress",
            "--from-snap",
            "stock-base",
            f"{image}@{record['snapshot']['name']}",
            str(stock),
        )
        stored = (Path(second["path"]) / record["file"]).stat().st_size
        assert stored <= stock.stat().st_size + 4096, (stored, stock.stat().st_size)
        # At least what changed is read (the 64 KiB leaves around it, to re-hash the blocks).
        assert record["bytes_read"] >= 512 * 1024
        out = tmp_path / "vda.raw"
        restored = cli(
            "restore",
            scratch.name,
            "--repo",
            str(repo),
            "--disk",
            "vda",
            "--to",
            str(out),
            "--backup",
            second["backup_id"],
        )
        assert restored.returncode == 0, restored.stderr
        assert file_sha256(out) == rbd_export_sha256(f"{image}@{record['snapshot']['name']}")


KIB = 1024
LEAF = 64 * KIB
BLOCK = 4 * 1024 * KIB


def write_4k(image: str, total: str, pattern: str) -> None:
    """`total` bytes of 4 KiB writes with `rbd bench`: at random offsets, or from offset 0 on."""
    threads = ["--io-threads", "1"] if pattern == "seq" else []
    rbd("bench", "--io-type", "write", "--io-size", "4K", "--io-total", total, "--io-pattern", pattern, *threads, image)


def restore_equals_snapshot(repo: Path, dom: str, backup_id: str, image: str, snapshot: str, out: Path) -> None:
    restored = cli("restore", dom, "--repo", str(repo), "--disk", "vda", "--to", str(out), "--backup", backup_id)
    assert restored.returncode == 0, restored.stderr
    assert file_sha256(out) == rbd_export_sha256(f"{image}@{snapshot}")
    out.unlink()


def test_incrementals_read_only_the_leaves_around_small_writes(tmp_path: Path) -> None:
    """A 4 KiB write costs a 64 KiB read, not its 4 MiB block: the block hash is re-formed from
    the base's leaf chaining values (from the full's table, or from an incremental's for a block
    that changed since), and each point in time still restores to `rbd export` of its snapshot.
    Without leaf tables (a repository of an older version) the whole blocks are read."""
    with scratch_domain(tmp_path, running=False) as scratch:
        repo = tmp_path / "repo"
        image = scratch.images[0]
        # Every object exists: a write into an object the base did not have is reported by
        # librbd (and `rbd export-diff`) as the object's whole extent up to the write.
        rbd("bench", "--io-type", "write", "--io-size", "4M", "--io-total", "64M", "--io-pattern", "seq", image)
        first = backup(repo, "--mode", "full", domain=scratch.name)
        assert (Path(first["path"]) / disk(first, "vda")["leaves_file"]).is_file()
        writes = 16
        # 16 random 4 KiB writes, and 4 KiB at offset 0 (block 0, leaf 0).
        write_4k(image, f"{writes * 4}K", "rand")
        write_4k(image, "4K", "seq")
        second = backup(repo, domain=scratch.name)
        record = disk(second, "vda")
        assert record["kind"] == "incremental"
        assert 4 * KIB <= record["bytes_read"] <= (writes + 1) * LEAF, record["bytes_read"]
        restore_equals_snapshot(
            repo, scratch.name, second["backup_id"], image, record["snapshot"]["name"], tmp_path / "2.raw"
        )

        # Block 0 changed in the second backup: its leaves now come from the second's table.
        write_4k(image, "8K", "seq")
        third = backup(repo, domain=scratch.name)
        record = disk(third, "vda")
        assert record["kind"] == "incremental" and record["chain_position"] == 2
        assert 8 * KIB <= record["bytes_read"] <= LEAF, record["bytes_read"]
        restore_equals_snapshot(
            repo, scratch.name, third["backup_id"], image, record["snapshot"]["name"], tmp_path / "3.raw"
        )
        assert cli("verify", scratch.name, "--repo", str(repo)).returncode == 0

        # A damaged leaf table is a verify finding naming it; restores do not depend on it.
        third_leaves = Path(third["path"]) / record["leaves_file"]
        flip_byte(third_leaves, 100)
        verified = cli("verify", scratch.name, "--repo", str(repo), "--json")
        assert verified.returncode == 1, verified.stdout + verified.stderr
        assert third_leaves.name in verified.stdout and "offset 0" in verified.stdout, verified.stdout

        # Backups of a version without leaf tables: every touched block is read whole, with the
        # same result.
        for path in repo.glob("*/*/manifest.json"):
            m = json.loads(path.read_text())
            for d in m["disks"]:
                (path.parent / d.pop("leaves_file")).unlink()
            path.write_text(json.dumps(m))
        write_4k(image, "4K", "seq")
        fourth = backup(repo, domain=scratch.name)
        record = disk(fourth, "vda")
        assert record["kind"] == "incremental"
        assert record["bytes_read"] == BLOCK, record["bytes_read"]
        restore_equals_snapshot(
            repo, scratch.name, fourth["backup_id"], image, record["snapshot"]["name"], tmp_path / "4.raw"
        )
        verified = cli("verify", scratch.name, "--repo", str(repo))
        assert verified.returncode == 0, verified.stdout + verified.stderr
