"""restic as a target, against the real lab and Debian's real restic: `backup --restic-repo`,
`list --restic-repo`, `restore --restic-repo`, on a local restic repository made with
`restic init`.

The truths compared with: restic's own `snapshots --json` and `dump`, `rbd export` of the
shut-off lab-off's image (whose content does not change, so it equals what was backed up;
in restic mode the tool removes its snapshots after the upload, leaving nothing else to
compare with), `rbd snap ls`, and `ps` sampled while restic runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import blake3
import pytest

from lab_support import (
    cli,
    domain_report,
    domain_uuid,
    file_sha256,
    rbd,
    rbd_export_sha256,
    rbd_json,
    require_lab,
    run,
    tool_snapshots,
)

pytestmark = pytest.mark.lab

PASSWORD = "vrb-lab-restic-pw-3f9d2c71e0"
RESTIC_SNAPSHOT_PREFIX = "virt-rbd-backup-restic-"
IMAGES = {"lab-off": ["rbd/lab-off-a"], "lab-guest": ["rbd/lab-guest-a", "rbd/lab-guest-b"]}


def restic(repo: Path, password_file: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run(["restic", "--repo", str(repo), "--password-file", str(password_file), *args])


def restic_snapshots(repo: Path, password_file: Path) -> list[dict[str, Any]]:
    return json.loads(restic(repo, password_file, "snapshots", "--json").stdout) or []  # type: ignore[no-any-return]


def restic_owned_snapshots(image: str) -> list[str]:
    """The tool's restic-mode snapshots of pool/image (they must be gone after a run)."""
    return [s for s in tool_snapshots(image) if s.startswith(RESTIC_SNAPSHOT_PREFIX)]


def dump_checksum(repo: Path, password_file: Path, snapshot: str, file: str) -> str:
    """The `blake3-4m:` content checksum (README § The repository) of a file restic dumps,
    computed here from the README's definition, not by the tool."""
    proc = subprocess.Popen(
        ["restic", "--repo", str(repo), "--password-file", str(password_file), "dump", snapshot, f"/{file}"],
        stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None
    table = blake3.blake3()
    while block := proc.stdout.read(4 << 20):
        while len(block) < 4 << 20 and (more := proc.stdout.read((4 << 20) - len(block))):
            block += more
        table.update(blake3.blake3(block).digest())
    assert proc.wait() == 0
    return f"blake3-4m:{table.hexdigest()}"


def dump_sha256(repo: Path, password_file: Path, snapshot: str, file: str) -> str:
    proc = subprocess.Popen(
        ["restic", "--repo", str(repo), "--password-file", str(password_file), "dump", snapshot, f"/{file}"],
        stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None
    digest = hashlib.sha256()
    while chunk := proc.stdout.read(1 << 20):
        digest.update(chunk)
    assert proc.wait() == 0
    return digest.hexdigest()


class ProcessWatcher:
    """Samples every process's command line (as `ps` shows them to any user) until stopped."""

    def __init__(self) -> None:
        self.seen: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self._stop.is_set():
            out = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=False).stdout
            self.seen.update(line.strip() for line in out.splitlines())

    def __enter__(self) -> ProcessWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@pytest.fixture(scope="module")
def restic_repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A fresh local restic repository and its password file."""
    require_lab()
    folder = tmp_path_factory.mktemp("restic")
    password_file = folder / "password"
    password_file.write_text(PASSWORD + "\n")
    password_file.chmod(0o600)
    repo = folder / "repo"
    run(["restic", "init", "--repo", str(repo), "--password-file", str(password_file)])
    return repo, password_file


@pytest.fixture(scope="module")
def backed_up(restic_repo: tuple[Path, Path]) -> dict[str, Any]:
    """lab-off and lab-guest backed up into restic with the CLI, `ps` watched meanwhile."""
    repo, password_file = restic_repo
    heads = {image: rbd_export_sha256(image) for image in IMAGES["lab-off"]}
    env = {k: v for k, v in os.environ.items() if not k.startswith("RESTIC_")}
    with ProcessWatcher() as watcher:
        proc = run(
            [
                sys.executable,
                "-m",
                "virt_rbd_backup",
                "backup",
                "--restic-repo",
                str(repo),
                "--restic-password-file",
                str(password_file),
                "--domain",
                "lab-off",
                "--domain",
                "lab-guest",
                "--json",
            ],
            check=False,
            env=env,
        )
    assert proc.returncode == 0, proc.stderr
    return {
        "report": json.loads(proc.stdout),
        "stdout": proc.stdout,
        "stderr": proc.stderr,
        "seen": watcher.seen,
        "heads": heads,
    }


def test_each_disk_is_one_restic_snapshot_with_the_tags(
    restic_repo: tuple[Path, Path], backed_up: dict[str, Any]
) -> None:
    repo, password_file = restic_repo
    everything = restic_snapshots(repo, password_file)
    snapshots = [s for s in everything if "virt-rbd-backup-seal" not in s["tags"]]
    seals = [s for s in everything if "virt-rbd-backup-seal" in s["tags"]]
    found = sorted((s["paths"][0], sorted(s["tags"]), s["hostname"]) for s in snapshots)
    expected = []
    expected_seals = []
    for domain, images in IMAGES.items():
        uuid = domain_uuid(domain)
        for index, image in enumerate(images):
            disk = "vd" + "ab"[index]
            size = rbd_json("info", image)["size"]
            tags = sorted(["virt-rbd-backup", f"domain={uuid}", f"disk={disk}", f"name={domain}", f"size={size}"])
            expected.append((f"/{image.split('/')[1]}.img", tags, socket.gethostname()))
            expected_seals.append((f"/{image.split('/')[1]}.img.seal.json", uuid, disk, size))
    assert found == sorted(expected)
    # One seal per disk snapshot, naming it, with the size and the checksum of its content.
    found_seals = []
    for seal in seals:
        tags = dict(t.split("=", 1) for t in seal["tags"] if "=" in t)
        (sealed,) = [s for s in snapshots if s["id"].startswith(tags["snapshot"])]
        file = sealed["paths"][0].removeprefix("/")
        assert tags["checksum"] == dump_checksum(repo, password_file, sealed["id"], file)
        found_seals.append((seal["paths"][0], tags["domain"], tags["disk"], int(tags["size"])))
    assert sorted(found_seals) == sorted(expected_seals)
    # The report names each disk's restic snapshot.
    for domain in IMAGES:
        report = domain_report(backed_up["report"], domain)
        assert report["status"] == "succeeded"
        ids = {s["short_id"] for s in snapshots} | {s["id"] for s in snapshots}
        for disk in report["disks"]:
            assert disk["file"].startswith("restic:")
            assert disk["file"].removeprefix("restic:") in ids


def test_restic_dump_equals_rbd_export_of_the_image(restic_repo: tuple[Path, Path], backed_up: dict[str, Any]) -> None:
    repo, password_file = restic_repo
    (snapshot,) = [s for s in restic_snapshots(repo, password_file) if s["paths"] == ["/lab-off-a.img"]]
    assert dump_sha256(repo, password_file, snapshot["id"], "lab-off-a.img") == backed_up["heads"]["rbd/lab-off-a"]


def test_no_snapshot_is_left_after_the_upload(backed_up: dict[str, Any]) -> None:
    for images in IMAGES.values():
        for image in images:
            assert restic_owned_snapshots(image) == [], image


def test_the_password_is_never_on_a_command_line_or_in_the_output(backed_up: dict[str, Any]) -> None:
    restic_lines = [line for line in backed_up["seen"] if "restic" in line.split(" ")[0]]
    assert restic_lines, "ps never saw restic running: the check below would prove nothing"
    for line in backed_up["seen"]:
        assert PASSWORD not in line
    # The repository goes through restic's environment, not its command line.
    assert not any("--repo" in line or "-r " in line for line in restic_lines), restic_lines
    assert PASSWORD not in backed_up["stdout"]
    assert PASSWORD not in backed_up["stderr"]


def test_list_shows_the_disk_backups(restic_repo: tuple[Path, Path], backed_up: dict[str, Any]) -> None:
    repo, password_file = restic_repo
    base = ["list", "--restic-repo", str(repo), "--restic-password-file", str(password_file)]
    listed = cli(*base, "--json")
    assert listed.returncode == 0, listed.stderr
    by_restic = {s["id"]: s for s in restic_snapshots(repo, password_file) if "virt-rbd-backup-seal" not in s["tags"]}
    assert {s["id"] for s in listed.json()} == set(by_restic)
    assert all(s["complete"] for s in listed.json())
    assert sorted((s["domain"], s["disk"], s["file"]) for s in listed.json()) == [
        ("lab-guest", "vda", "lab-guest-a.img"),
        ("lab-guest", "vdb", "lab-guest-b.img"),
        ("lab-off", "vda", "lab-off-a.img"),
    ]
    text = cli(*base, "lab-off")
    assert text.returncode == 0, text.stderr
    (line,) = text.stdout.splitlines()
    (snapshot,) = [s for s in by_restic.values() if s["paths"] == ["/lab-off-a.img"]]
    assert line.startswith(f"lab-off {domain_uuid('lab-off')} vda {snapshot['short_id']} ")
    assert line.endswith(" lab-off-a.img")


def test_restore_into_a_file_equals_the_image(
    restic_repo: tuple[Path, Path], backed_up: dict[str, Any], tmp_path: Path
) -> None:
    repo, password_file = restic_repo
    target = tmp_path / "lab-off-vda.raw"
    result = cli(
        "restore",
        "lab-off",
        "--restic-repo",
        str(repo),
        "--restic-password-file",
        str(password_file),
        "--to",
        str(target),
    )
    assert result.returncode == 0, result.stderr
    assert file_sha256(target) == backed_up["heads"]["rbd/lab-off-a"]
    assert result.stdout.startswith("Restored lab-off disk vda from restic snapshot ")
    assert result.stdout.rstrip().endswith("checksum verified")
    # Sparse: the zeros of the image were left as holes.
    assert target.stat().st_blocks * 512 < target.stat().st_size


def test_restore_into_rbd_needs_ceph_conf_and_then_equals_the_image(
    restic_repo: tuple[Path, Path], backed_up: dict[str, Any]
) -> None:
    repo, password_file = restic_repo
    target = "rbd/lab-restic-restored"
    base = ["restore", "lab-off", "--restic-repo", str(repo), "--restic-password-file", str(password_file)]
    refused = cli(*base, "--to", f"rbd:{target}")
    assert refused.returncode == 2
    assert "--ceph-conf" in refused.stderr
    try:
        result = cli(*base, "--to", f"rbd:{target}", "--ceph-conf", os.environ["CEPH_CONF"], "--force")
        assert result.returncode == 0, result.stderr
        assert rbd_export_sha256(target) == backed_up["heads"]["rbd/lab-off-a"]
    finally:
        rbd("rm", "--no-progress", target, check=False)


def test_a_wrong_password_fails_the_domain_and_leaves_no_snapshot(
    restic_repo: tuple[Path, Path], backed_up: dict[str, Any], tmp_path: Path
) -> None:
    repo, password_file = restic_repo
    wrong = tmp_path / "wrong-password"
    wrong.write_text("not-the-password\n")
    wrong.chmod(0o600)
    before = len(restic_snapshots(repo, password_file))
    result = cli("backup", "--restic-repo", str(repo), "--restic-password-file", str(wrong), "--domain", "lab-off")
    assert result.returncode == 1, result.stdout + result.stderr
    (failed,) = [line for line in result.stdout.splitlines() if line.startswith("Backup failed: ")]
    assert "restic" in failed
    assert restic_owned_snapshots("rbd/lab-off-a") == []
    assert len(restic_snapshots(repo, password_file)) == before
    # Listing with the wrong password cannot start: exit 2, restic's reason quoted.
    listed = cli("list", "--restic-repo", str(repo), "--restic-password-file", str(wrong))
    assert listed.returncode == 2
    assert "restic" in listed.stderr


def test_no_password_source_at_all_is_a_usage_error(restic_repo: tuple[Path, Path]) -> None:
    repo, _ = restic_repo
    env = {k: v for k, v in os.environ.items() if not k.startswith("RESTIC_")}
    proc = run(
        [sys.executable, "-m", "virt_rbd_backup", "backup", "--restic-repo", str(repo), "--domain", "lab-off"],
        check=False,
        env=env,
    )
    assert proc.returncode == 2
    assert "restic needs a password" in proc.stderr
    assert restic_owned_snapshots("rbd/lab-off-a") == []
