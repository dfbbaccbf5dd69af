"""The core backup path against the real lab: discovery, freeze, snapshots, sparse export,
repository layout. Every assertion compares with an independent truth: `rbd export`, `rbd du`,
`rbd snap ls`, the guest agent, `e2fsck` and `debugfs`."""

from __future__ import annotations

import json
import math
import os
import secrets
import subprocess
from pathlib import Path
from typing import Any

import pytest

from lab_support import (
    agent,
    blake3_4m,
    cli,
    domain_report,
    domain_uuid,
    file_sha256,
    guest_exec,
    rbd_export_sha256,
    rbd_json,
    repo_snapshots,
    require_lab,
    run,
)

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def backup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Writes a fresh marker into both guest filesystems, then backs up the three lab domains
    with the CLI in JSON mode."""
    require_lab()
    marker = f"marker-{secrets.token_hex(8)}"
    guest_exec("lab-guest", f"echo {marker} > /mnt/a/marker.txt && echo {marker} > /mnt/b/marker.txt && sync")
    repo = tmp_path_factory.mktemp("repo") / "r"
    result = cli(
        "backup", "--repo", str(repo), "--json", "--domain", "lab-guest", "--domain", "lab-off", "--domain", "lab-local"
    )
    assert result.returncode == 0, result.stderr
    return {"report": result.json(), "repo": repo, "marker": marker, "stderr": result.stderr}


def manifest_of(domain: dict[str, Any]) -> dict[str, Any]:
    return json.loads((Path(domain["path"]) / "manifest.json").read_text())  # type: ignore[no-any-return]


def test_each_rbd_domain_gets_one_complete_backup(backup: dict[str, Any]) -> None:
    report = backup["report"]
    assert domain_report(report, "lab-guest")["status"] == "succeeded"
    assert domain_report(report, "lab-off")["status"] == "succeeded"
    assert domain_report(report, "lab-local")["status"] == "skipped"
    repo: Path = backup["repo"]
    for name in ("lab-guest", "lab-off"):
        folder = repo / domain_uuid(name)
        backups = [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")]
        assert len(backups) == 1, backups
        assert (backups[0] / "manifest.json").is_file()
        assert not [p for p in folder.iterdir() if p.name.startswith(".partial-")]
    assert not (repo / domain_uuid("lab-local")).exists()


def test_raw_files_equal_rbd_export_of_the_same_snapshot(backup: dict[str, Any]) -> None:
    for name, images in (
        ("lab-guest", {"vda": "rbd/lab-guest-a", "vdb": "rbd/lab-guest-b"}),
        ("lab-off", {"vda": "rbd/lab-off-a"}),
    ):
        dom = domain_report(backup["report"], name)
        manifest = manifest_of(dom)
        assert {d["target"] for d in manifest["disks"]} == set(images)
        for disk in manifest["disks"]:
            image = images[disk["target"]]
            assert f"{disk['pool']}/{disk['image']}" == image
            raw = Path(dom["path"]) / disk["file"]
            snap = disk["snapshot"]["name"]
            assert file_sha256(raw) == rbd_export_sha256(f"{image}@{snap}"), (
                f"{raw} differs from rbd export {image}@{snap}"
            )
            assert raw.stat().st_size == disk["size"]
            assert disk["checksum"] == blake3_4m(raw)


def test_raw_files_are_sparse(backup: dict[str, Any]) -> None:
    dom = domain_report(backup["report"], "lab-guest")
    for disk in manifest_of(dom)["disks"]:
        raw = Path(dom["path"]) / disk["file"]
        allocated = raw.stat().st_blocks * 512
        du = rbd_json("du", f"{disk['pool']}/{disk['image']}@{disk['snapshot']['name']}")
        used = sum(i["used_size"] for i in du["images"] if i.get("snapshot") == disk["snapshot"]["name"])
        # Never more than Ceph has allocated (plus filesystem rounding), and only the
        # non-zero data: the file holds exactly the 4 KiB blocks that are not zero.
        assert allocated <= used + 1024 * 1024, (allocated, used)
        with raw.open("rb") as f:
            nonzero = sum(1 for chunk in iter(lambda: f.read(4096), b"") if chunk.strip(b"\0"))
        assert allocated <= nonzero * 4096 + 64 * 1024, (allocated, nonzero * 4096)
        assert allocated < disk["size"] / 2


def test_running_guest_was_frozen_around_its_snapshots(backup: dict[str, Any]) -> None:
    dom = domain_report(backup["report"], "lab-guest")
    freeze = dom["freeze"]
    assert freeze["attempted"] is True
    assert freeze["frozen_filesystems"] == 2
    assert dom["consistency"] == "frozen"
    assert 0 < freeze["window_ms"] < 10_000
    frozen_at, thawed_at = freeze["frozen_at"], freeze["thawed_at"]
    for disk in manifest_of(dom)["disks"]:
        # Ceph's own record of when the snapshot was taken, read back with the rbd tool.
        snaps = {s["name"]: s for s in rbd_json("snap", "ls", f"{disk['pool']}/{disk['image']}")}
        assert disk["snapshot"]["name"] in snaps
        ts = subprocess.run(
            ["date", "-d", snaps[disk["snapshot"]["name"]]["timestamp"], "+%s"],
            capture_output=True,
            text=True,
            check=True,
        )
        ceph_seconds = int(ts.stdout)
        assert math.floor(frozen_at) <= ceph_seconds <= math.ceil(thawed_at), (frozen_at, ceph_seconds, thawed_at)
        assert frozen_at - 0.01 <= disk["snapshot"]["timestamp"] <= thawed_at + 0.01
    assert agent("lab-guest", "guest-fsfreeze-status") == "thawed"


def test_backup_holds_what_the_guest_wrote(backup: dict[str, Any]) -> None:
    dom = domain_report(backup["report"], "lab-guest")
    for disk in manifest_of(dom)["disks"]:
        raw = Path(dom["path"]) / disk["file"]
        fsck = run(["e2fsck", "-fn", str(raw)], check=False)
        assert fsck.returncode == 0, fsck.stdout + fsck.stderr
        content = run(["debugfs", "-R", "cat /marker.txt", str(raw)]).stdout
        assert content.strip() == backup["marker"]


def test_shut_off_domain_is_backed_up_without_a_freeze(backup: dict[str, Any]) -> None:
    dom = domain_report(backup["report"], "lab-off")
    assert dom["freeze"]["attempted"] is False
    assert dom["consistency"] == "shut_off"


def test_only_the_latest_backup_snapshot_is_kept_as_base(backup: dict[str, Any]) -> None:
    first = manifest_of(domain_report(backup["report"], "lab-off"))["disks"][0]["snapshot"]["name"]
    assert first in repo_snapshots("rbd/lab-off-a", backup["repo"])
    again = cli("backup", "--repo", str(backup["repo"]), "--json", "--domain", "lab-off")
    assert again.returncode == 0, again.stderr
    second = manifest_of(domain_report(again.json(), "lab-off"))["disks"][0]["snapshot"]["name"]
    assert second != first
    assert repo_snapshots("rbd/lab-off-a", backup["repo"]) == [second]


def test_text_output_has_the_original_tool_lines(tmp_path: Path) -> None:
    require_lab()
    result = cli("backup", "--repo", str(tmp_path / "r"), "--domain", "lab-local", "--domain", "lab-off")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    uuid = domain_uuid("lab-off")
    assert "Ignoring non-network disk for domain: lab-local" in lines
    assert f"Processing 1 images for domain {uuid}" in lines
    assert f"Backup successful: No error occurred for domain {uuid}" in lines


def test_list_shows_what_was_written(backup: dict[str, Any]) -> None:
    result = cli("list", "--repo", str(backup["repo"]), "--json")
    assert result.returncode == 0, result.stderr
    listed = result.json()
    ids = {(b["domain"], b["backup_id"]) for b in listed}
    for name in ("lab-guest", "lab-off"):
        assert (name, domain_report(backup["report"], name)["backup_id"]) in ids


def test_python_api_lists_domains_and_their_disks() -> None:
    require_lab()
    import virt_rbd_backup

    listing = {
        d.name: d for d in virt_rbd_backup.list_domains(connect=os.environ.get("LAB_LIBVIRT_URI", "qemu:///system"))
    }
    assert [f"{d.pool}/{d.image}" for d in listing["lab-guest"].rbd_disks] == ["rbd/lab-guest-a", "rbd/lab-guest-b"]
    assert listing["lab-guest"].active is True
    assert listing["lab-off"].active is False
    assert listing["lab-local"].rbd_disks == ()


def test_repository_is_private(backup: dict[str, Any]) -> None:
    repo: Path = backup["repo"]
    for path in repo.rglob("*"):
        mode = path.stat().st_mode & 0o777
        if path.is_dir():
            assert mode == 0o700, (path, oct(mode))
        else:
            assert mode == 0o600, (path, oct(mode))


def test_the_ceph_key_appears_nowhere(tmp_path: Path) -> None:
    require_lab()
    key = run(
        [
            "virsh",
            "-c",
            os.environ.get("LAB_LIBVIRT_URI", "qemu:///system"),
            "secret-get-value",
            os.environ["LAB_SECRET_UUID"],
        ]
    ).stdout.strip()
    assert len(key) > 20
    repo = tmp_path / "r"
    result = cli("backup", "-vv", "--repo", str(repo), "--json", "--domain", "lab-off")
    assert result.returncode == 0, result.stderr
    assert key not in result.stdout and key not in result.stderr
    for path in repo.rglob("*"):
        if path.is_file() and path.suffix not in (".raw",):
            assert key.encode() not in path.read_bytes(), path
    listing = cli("list", "-vv", "--json")
    assert key not in listing.stdout and key not in listing.stderr
