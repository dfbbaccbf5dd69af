"""The block layout on the lab's RADOS Gateway (issue 18): backups into s3:// over HTTPS with the
lab's CA, encrypted with a key file, as an operator runs them (the CLI in its own process).

Every check has an independent truth: `rbd export` of the snapshot a backup read (the content
checksum recomputed from its definition, and restores compared byte for byte), curl signing its
own S3 requests (to list, delete and damage objects behind the tool's back), `rbd snap ls` for
leaked snapshots.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import urllib.parse
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lab_support import (
    BLOCK,
    FaultRecord,
    blake3_4m,
    cli,
    domain_report,
    domain_xml,
    frozen_guests,
    guest_exec,
    make_image,
    rbd,
    remove_image,
    require_lab,
    run,
    tool_snapshots,
    tool_snapshots_removed_after,
    virsh,
)

pytestmark = pytest.mark.lab


def exported(spec: str, tmp: Path) -> Path:
    out = tmp / f"{spec.replace('/', '_').replace('@', '_')}.raw"
    out.unlink(missing_ok=True)
    rbd("export", "--no-progress", spec, str(out))
    return out


class S3:
    """The lab's gateway, through curl (an S3 client independent of the tool); the keys reach
    curl on its standard input, never on a command line."""

    def __init__(self, prefix: str) -> None:
        self.endpoint = os.environ["LAB_S3_ENDPOINT"]
        self.bucket = os.environ["LAB_S3_BUCKET"]
        self.region = os.environ["LAB_S3_REGION"]
        self.prefix = prefix
        text = Path(os.environ["LAB_S3_CREDENTIALS"]).read_text()
        self.key_id = re.search(r"aws_access_key_id\s*=\s*(\S+)", text).group(1)  # type: ignore[union-attr]
        self.secret = re.search(r"aws_secret_access_key\s*=\s*(\S+)", text).group(1)  # type: ignore[union-attr]

    def request(self, method: str, path: str, body: bytes | None = None, query: str = "") -> bytes:
        config = f'user = "{self.key_id}:{self.secret}"\nrequest = "{method}"\n'
        config += f'url = "{self.endpoint}/{self.bucket}/{path}{query}"\n'
        args = ["curl", "-sS", "-f", "--aws-sigv4", f"aws:amz:{self.region}:s3"]
        args += ["-H", "x-amz-content-sha256: UNSIGNED-PAYLOAD", "-K", "-"]
        body_file = Path(f"/tmp/vrb-curl-{uuid.uuid4().hex}.body")
        try:
            if body is not None:
                body_file.write_bytes(body)
                config += f'data-binary = "@{body_file}"\n'
            proc = subprocess.run(args, input=config.encode(), capture_output=True, timeout=60)
        finally:
            body_file.unlink(missing_ok=True)
        assert proc.returncode == 0, f"curl {method} {path}: {proc.stderr.decode()}"
        return proc.stdout

    def keys(self, under: str) -> list[str]:
        """Every object key under PREFIX/UNDER, relative to the prefix."""
        found: list[str] = []
        token = ""
        while True:
            # Percent-encoded as SigV4's canonical query wants ('/' too), names sorted.
            query = "?"
            if token:
                query += "continuation-token=" + urllib.parse.quote(token, safe="") + "&"
            query += "list-type=2&prefix=" + urllib.parse.quote(f"{self.prefix}/{under}", safe="")
            root = ET.fromstring(self.request("GET", "", query=query))
            ns = {"s3": root.tag.split("}")[0].strip("{")}
            found += [k.text[len(self.prefix) + 1 :] for k in root.findall("s3:Contents/s3:Key", ns) if k.text]
            next_token = root.find("s3:NextContinuationToken", ns)
            if next_token is None or not next_token.text:
                return found
            token = next_token.text

    def get(self, key: str) -> bytes:
        return self.request("GET", f"{self.prefix}/{key}")

    def put(self, key: str, body: bytes) -> None:
        self.request("PUT", f"{self.prefix}/{key}", body=body)

    def delete(self, key: str) -> None:
        self.request("DELETE", f"{self.prefix}/{key}")


class Repo:
    """One s3:// repository of the test: its location and access options."""

    def __init__(self, tmp: Path, key_file: Path | None = None) -> None:
        self.prefix = f"test-{uuid.uuid4().hex[:10]}"
        self.key_file = key_file or tmp / "repo.key"
        self.s3 = S3(self.prefix)

    def args(self, *, endpoint: str | None = None, key_file: Path | None = None) -> list[str]:
        return [
            "--repo",
            f"s3://{os.environ['LAB_S3_BUCKET']}/{self.prefix}",
            "--s3-endpoint",
            endpoint or os.environ["LAB_S3_TLS_ENDPOINT"],
            "--s3-region",
            os.environ["LAB_S3_REGION"],
            "--s3-credentials",
            os.environ["LAB_S3_CREDENTIALS"],
            "--s3-ca-file",
            os.environ["LAB_S3_CA"],
            "--repo-key-file",
            str(key_file or self.key_file),
        ]

    def backup(self, *domains: str, extra: tuple[str, ...] = ()) -> dict[str, Any]:
        argv = ["backup", *self.args(), "--json", *extra]
        for d in domains:
            argv += ["--domain", d]
        result = cli(*argv)
        assert result.returncode == 0, result.stderr
        report: dict[str, Any] = result.json()
        return report


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Repo]:
    require_lab()
    if "LAB_S3_ENDPOINT" not in os.environ:
        pytest.fail('VRB_LAB=1 but LAB_S3_ENDPOINT is not set: eval "$(lab/lab.sh env)" (the lab starts its gateway)')
    # Every repository of this module keeps its bases on the lab's images: removed at the end.
    with tool_snapshots_removed_after():
        yield Repo(tmp_path_factory.mktemp("s3repo"))


@pytest.fixture(scope="module")
def two_backups(repo: Repo, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A full backup of the running lab guest (frozen) and of the shut-off domain, then, after
    the guest wrote a file, an incremental."""
    first = repo.backup("lab-guest", "lab-off", extra=("--compress", "zstd"))
    guest_exec("lab-guest", f"head -c 1048576 /dev/urandom > /mnt/a/blob-{uuid.uuid4().hex[:6]} && sync")
    second = repo.backup("lab-guest", "lab-off")
    return {"first": first, "second": second, "tmp": tmp_path_factory.mktemp("exports")}


def test_a_full_then_an_incremental_read_only_what_changed_and_match_rbd_export(
    repo: Repo, two_backups: dict[str, Any]
) -> None:
    first = domain_report(two_backups["first"], "lab-guest")
    second = domain_report(two_backups["second"], "lab-guest")
    assert (first["status"], first["kind"], first["consistency"]) == ("succeeded", "full", "frozen")
    assert (second["status"], second["kind"]) == ("succeeded", "incremental")
    assert repo.key_file.stat().st_mode & 0o777 == 0o600, "the new repository's key file is private"
    for disk in second["disks"]:
        assert disk["kind"] == "incremental"
        # A 1 MiB file and its metadata touch a handful of 4 MiB blocks, not the disk.
        assert disk["bytes_read"] <= 5 * BLOCK, disk
        assert disk["bytes_read"] < disk["size"] // 8
        spec = f"{disk['image']}@{disk['snapshot']}"
        assert disk["checksum"] == blake3_4m(exported(spec, two_backups["tmp"])), spec
    off = domain_report(two_backups["second"], "lab-off")
    assert off["disks"][0]["bytes_read"] == 0, "nothing changed on the shut-off domain"
    # Each disk keeps exactly one snapshot of this repository: the base of the next incremental.
    for disk in second["disks"]:
        mine = [s for s in tool_snapshots(disk["image"]) if s == disk["snapshot"]]
        assert mine == [disk["snapshot"]]
    assert disk["snapshot"] not in [d["snapshot"] for d in first["disks"]]
    assert not [s for d in first["disks"] for s in tool_snapshots(d["image"]) if s == d["snapshot"]]


def test_the_store_holds_only_sealed_objects_and_no_plain_content(repo: Repo, two_backups: dict[str, Any]) -> None:
    keys = repo.s3.keys("")
    assert "config" in keys
    assert [k for k in keys if k.startswith("keys/")], "the data key is stored wrapped"
    blocks = [k for k in keys if k.startswith("blocks/")]
    assert blocks
    for key in blocks[:5] + [k for k in keys if k.endswith(".manifest")][:2]:
        body = repo.s3.get(key)
        assert body[:4] == b"VRBO" and body[5] & 2, f"{key} is not an encrypted object"
        assert b"lab-guest" not in body and b"<domain" not in body


def test_list_and_verify_read_data_are_clean(repo: Repo, two_backups: dict[str, Any]) -> None:
    listed = cli("list", *repo.args(), "--json")
    assert listed.returncode == 0, listed.stderr
    ids = {b["backup_id"] for b in listed.json() if b["domain"] == "lab-guest"}
    wanted = {domain_report(two_backups[k], "lab-guest")["backup_id"] for k in ("first", "second")}
    assert ids == wanted
    verified = cli("verify", *repo.args(), "--read-data", "--json")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert verified.json()["problems"] == []
    sampled = cli("verify", *repo.args(), "--read-data-subset", "50%", "--json")
    assert sampled.returncode == 0 and sampled.json()["problems"] == [], sampled.stdout + sampled.stderr
    # plan builds on the newest backup of the block repository, as the backup would.
    planned = cli("plan", *repo.args(), "--domain", "lab-off", "--json")
    assert planned.returncode == 0, planned.stderr
    (disk,) = planned.json()["domains"][0]["disks"]
    assert disk["kind"] == "incremental"
    assert disk["parent_backup"] == domain_report(two_backups["second"], "lab-off")["backup_id"]


def test_a_wrong_key_and_a_missing_key_are_refused_before_any_snapshot(
    repo: Repo, two_backups: dict[str, Any], tmp_path: Path, fault: FaultRecord
) -> None:
    fault.injected = "S3 block repository: backup with another repository's key file; list without a key file"
    other = tmp_path / "other.key"
    other.write_text("virt-rbd-backup key v1\n" + "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUE=\n")
    other.chmod(0o600)
    before = tool_snapshots("rbd/lab-off-a")
    result = cli("backup", *repo.args(key_file=other), "--domain", "lab-off")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "does not open" in result.stderr and repo.prefix in result.stderr
    args = [a for a in repo.args() if a != str(repo.key_file)]
    args.remove("--repo-key-file")
    result = cli("list", *args)
    assert result.returncode == 2 and "encrypted" in result.stderr, result.stderr
    assert tool_snapshots("rbd/lab-off-a") == before
    fault.outcome = "exit 2 before any snapshot: 'the key file with id ... does not open s3://...'; 'is encrypted: give its key file'"
    fault.leaks = 0
    fault.frozen = len(frozen_guests())
    fault.data_lost = "none (nothing written)"


def test_an_unreachable_endpoint_fails_naming_it_and_leaks_nothing(
    repo: Repo, two_backups: dict[str, Any], fault: FaultRecord
) -> None:
    fault.injected = "S3 block repository: endpoint nobody listens on (https://127.0.0.1:9)"
    before = tool_snapshots("rbd/lab-off-a")
    result = cli("backup", *repo.args(endpoint="https://127.0.0.1:9"), "--domain", "lab-off", timeout=300)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "127.0.0.1:9" in result.stderr
    secret = S3(repo.prefix).secret
    assert secret not in result.stderr and secret not in result.stdout
    assert tool_snapshots("rbd/lab-off-a") == before
    fault.outcome = "exit 2 after the store's retries, the error names the endpoint, no secret in the output"
    fault.leaks = 0
    fault.frozen = len(frozen_guests())
    fault.data_lost = "none (nothing written)"


@pytest.fixture
def clones(tmp_path: Path) -> Iterator[str]:
    """A shut-off domain whose two disks are copies of one image (clones of a golden image)."""
    require_lab()
    name = f"vrb-clones-{uuid.uuid4().hex[:8]}"
    images = [f"rbd/{name}-a", f"rbd/{name}-b"]
    try:
        make_image(images[0], tmp_path, size_mib=64, data_mib=24)
        rbd("cp", "--no-progress", images[0], images[1])
        xml = tmp_path / f"{name}.xml"
        xml.write_text(domain_xml(name, images, running=False))
        virsh("define", str(xml))
        yield name
    finally:
        virsh("undefine", name, check=False)
        for image in images:
            remove_image(image)


def test_two_clones_of_one_image_are_stored_once(repo: Repo, clones: str) -> None:
    report = repo.backup(clones)
    disks = {d["target"]: d for d in domain_report(report, clones)["disks"]}
    assert disks["vda"]["checksum"] == disks["vdb"]["checksum"]
    assert disks["vda"]["bytes_written"] >= 20 * 1024 * 1024 // 2, disks["vda"]
    # The second copy stores nothing new: at most 5 % of the first (issue 18).
    assert disks["vdb"]["bytes_written"] <= disks["vda"]["bytes_written"] // 20, disks


def test_verify_names_a_deleted_and_a_flipped_block(
    repo: Repo, two_backups: dict[str, Any], fault: FaultRecord
) -> None:
    fault.injected = "S3 block repository: one block object deleted, one with a flipped byte (curl)"
    # A repository of its own: the damage must not spoil the other tests' repository.
    damaged = Repo(two_backups["tmp"], key_file=two_backups["tmp"] / "damaged.key")
    damaged.backup("lab-off")
    blocks = damaged.s3.keys("blocks/")
    assert len(blocks) >= 2, blocks
    deleted, flipped = blocks[0], blocks[1]
    damaged.s3.delete(deleted)
    body = bytearray(damaged.s3.get(flipped))
    body[len(body) // 2] ^= 1
    damaged.s3.put(flipped, bytes(body))

    quick = cli("verify", *damaged.args(), "--json")
    assert quick.returncode == 1
    problems = [p["message"] for p in quick.json()["problems"]]
    assert len(problems) == 1 and deleted in problems[0], problems
    full = cli("verify", *damaged.args(), "--read-data", "--json")
    assert full.returncode == 1
    problems = [p["message"] for p in full.json()["problems"]]
    assert len(problems) == 2, problems
    assert any(flipped.rsplit("/", 1)[1] in p for p in problems), problems
    fault.outcome = "verify exit 1 naming the missing block; verify --read-data exit 1 naming both"
    fault.leaks = 0
    fault.frozen = len(frozen_guests())
    fault.data_lost = "none beyond the two damaged blocks, which are found and named, never restored as other bytes"


def test_prune_keeps_the_newest_and_sweeps_only_unreferenced_blocks(repo: Repo, two_backups: dict[str, Any]) -> None:
    pruned_repo = Repo(two_backups["tmp"], key_file=two_backups["tmp"] / "pruned.key")
    pruned_repo.backup("lab-guest")
    guest_exec("lab-guest", f"head -c 2097152 /dev/urandom > /mnt/b/blob-{uuid.uuid4().hex[:6]} && sync")
    pruned_repo.backup("lab-guest", extra=("--mode", "full"))
    before = set(pruned_repo.s3.keys("blocks/"))
    dry = cli("prune", *pruned_repo.args(), "--keep-last", "1", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    assert set(pruned_repo.s3.keys("blocks/")) == before, "a dry run removes nothing"
    result = cli("prune", *pruned_repo.args(), "--keep-last", "1", "--json")
    assert result.returncode == 0, result.stderr
    report = result.json()
    after = set(pruned_repo.s3.keys("blocks/"))
    assert after < before
    assert report["blocks"]["removed"] == len(before - after) == dry.json()["blocks"]["removed"]
    assert report["blocks"]["kept"] == len(after)
    listed = cli("list", *pruned_repo.args(), "--json").json()
    assert len(listed) == 1
    verified = cli("verify", *pruned_repo.args(), "--read-data", "--json")
    assert verified.returncode == 0 and verified.json()["problems"] == [], verified.stdout
    assert not pruned_repo.s3.keys("locks/"), "the prune lock is released"


def test_a_run_killed_mid_upload_leaves_no_backup_and_the_next_run_is_clean(
    repo: Repo, two_backups: dict[str, Any], fault: FaultRecord
) -> None:
    fault.injected = "S3 block repository: backup SIGKILLed while uploading blocks"
    killed_repo = Repo(two_backups["tmp"], key_file=two_backups["tmp"] / "killed.key")
    before = set(tool_snapshots("rbd/lab-off-a"))
    env = {**os.environ, "VIRT_RBD_BACKUP_TEST_PAUSE": "exporting:60"}
    argv = [sys.executable, "-m", "virt_rbd_backup", "backup", *killed_repo.args(), "--domain", "lab-off"]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # The repository and the run's lock exist once blocks are being read and uploaded.
        for _ in range(120):
            if killed_repo.s3.keys("locks/") and killed_repo.s3.keys("blocks/"):
                break
            if proc.poll() is not None:
                break
            run(["sleep", "0.5"])
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert not [k for k in killed_repo.s3.keys("backups/") if k.endswith(".manifest")], "no backup committed"
    assert killed_repo.s3.keys("locks/"), "the killed run's lock stays until it goes stale"
    report = killed_repo.backup("lab-off")
    assert domain_report(report, "lab-off")["status"] == "succeeded"
    verified = cli("verify", *killed_repo.args(), "--read-data", "--json")
    assert verified.returncode == 0 and verified.json()["problems"] == [], verified.stdout
    # The killed run's snapshot is removed by the next run; only the new base remains.
    new_base = domain_report(report, "lab-off")["disks"][0]["snapshot"]
    assert set(tool_snapshots("rbd/lab-off-a")) - before == {new_base}
    # Its lock holds prune off (it could still be uploading) until stale: said, nothing removed.
    held = cli("prune", *killed_repo.args(), "--keep-last", "1", "--json")
    assert held.returncode == 1
    assert all(d["status"] == "skipped" and "backup is running" in d["message"] for d in held.json()["domains"])
    fault.outcome = "no manifest committed; next run succeeds, verify --read-data clean; prune held off by the dead lock until stale"
    fault.leaks = len(set(tool_snapshots("rbd/lab-off-a")) - before - {new_base})
    fault.frozen = len(frozen_guests())
    fault.data_lost = "none (the killed run's blocks are unreferenced until prune sweeps them)"


def test_restore_of_the_full_and_of_the_incremental_equal_rbd_export(
    repo: Repo, two_backups: dict[str, Any], tmp_path: Path
) -> None:
    for which in ("first", "second"):
        dom = domain_report(two_backups[which], "lab-guest")
        for disk in dom["disks"]:
            out = tmp_path / f"{which}-{disk['target']}.raw"
            result = cli(
                "restore", "lab-guest", "--disk", disk["target"], "--backup", dom["backup_id"], "--to", str(out),
                *repo.args(), "--json",
            )  # fmt: skip
            assert result.returncode == 0, result.stderr
            assert result.json()["chain"] == [dom["backup_id"]], "a block backup is complete on its own"
            # The base snapshot of the newest backup is still in the cluster: the truth.
            if which == "second":
                truth = exported(f"{disk['image']}@{disk['snapshot']}", tmp_path)
                assert out.read_bytes() == truth.read_bytes()
            assert blake3_4m(out) == disk["checksum"]
            # Holes stay holes: the file is sparse.
            assert out.stat().st_blocks * 512 < out.stat().st_size


def test_restore_into_rbd_and_define_a_domain_from_the_block_repository(
    repo: Repo, two_backups: dict[str, Any], tmp_path: Path
) -> None:
    dom = domain_report(two_backups["second"], "lab-off")
    disk = dom["disks"][0]
    target = f"rbd/vrb-blockrestore-{uuid.uuid4().hex[:6]}"
    name = f"vrb-blockdefine-{uuid.uuid4().hex[:6]}"
    try:
        result = cli("restore", "lab-off", "--to", f"rbd:{target}", *repo.args())
        assert result.returncode == 0, result.stderr
        restored = exported(target, tmp_path)
        truth = exported(f"{disk['image']}@{disk['snapshot']}", tmp_path)
        assert restored.read_bytes() == truth.read_bytes()
        result = cli("restore", "lab-off", "--define", name, *repo.args(), "--json")
        assert result.returncode == 0, result.stderr
        assert virsh("domuuid", name).returncode == 0
        new_image = result.json()["disks"][0]["target"].removeprefix("rbd:")
        assert exported(new_image, tmp_path).read_bytes() == truth.read_bytes()
    finally:
        virsh("undefine", name, check=False)
        remove_image(target)
        remove_image(f"rbd/{name}-vda")


def test_a_flipped_block_fails_the_restore_and_leaves_nothing(
    repo: Repo, two_backups: dict[str, Any], tmp_path: Path, fault: FaultRecord
) -> None:
    fault.injected = "S3 block repository: a flipped byte in a block object, then restore"
    damaged = Repo(two_backups["tmp"], key_file=two_backups["tmp"] / "flip.key")
    damaged.backup("lab-off")
    block = damaged.s3.keys("blocks/")[0]
    body = bytearray(damaged.s3.get(block))
    body[-20] ^= 0x40
    damaged.s3.put(block, bytes(body))
    out = tmp_path / "never.raw"
    result = cli("restore", "lab-off", "--to", str(out), *damaged.args())
    assert result.returncode == 1, result.stdout + result.stderr
    assert block.rsplit("/", 1)[1] in result.stderr or "does not open" in result.stderr, result.stderr
    assert not out.exists() and not list(tmp_path.glob("*never*")), "no partial target"
    fault.outcome = "restore exit 1 naming the object; no partial file"
    fault.leaks = 0
    fault.frozen = len(frozen_guests())
    fault.data_lost = "none beyond the damaged block, which is refused, never written as other bytes"


def test_rekey_gives_a_new_key_and_takes_the_old_ones_access_away(
    repo: Repo, two_backups: dict[str, Any], tmp_path: Path
) -> None:
    rekeyed = Repo(two_backups["tmp"], key_file=two_backups["tmp"] / "rekey-old.key")
    rekeyed.backup("lab-off")
    blocks_before = {k: rekeyed.s3.get(k) for k in rekeyed.s3.keys("blocks/")}
    new_key = tmp_path / "new.key"
    result = cli("rekey", *rekeyed.args(), "--new-key-file", str(new_key), "--json")
    assert result.returncode == 0, result.stderr
    report = result.json()
    assert report["created"] and report["old_removed"] and report["old_key_id"] != report["new_key_id"]
    assert new_key.stat().st_mode & 0o777 == 0o600
    assert [k for k in rekeyed.s3.keys("keys/")] == [f"keys/{report['new_key_id']}"]
    # No block was rewritten: the same objects, byte for byte.
    assert {k: rekeyed.s3.get(k) for k in rekeyed.s3.keys("blocks/")} == blocks_before
    old = cli("list", *rekeyed.args())
    assert old.returncode == 2 and report["old_key_id"] in old.stderr, old.stderr
    new = cli("verify", *rekeyed.args(key_file=new_key), "--read-data", "--json")
    assert new.returncode == 0 and new.json()["problems"] == [], new.stdout + new.stderr


def test_serve_and_mount_a_block_backup(repo: Repo, two_backups: dict[str, Any], tmp_path: Path) -> None:
    """The NBD export of a block backup equals rbd export of its snapshot (qemu-img compare),
    nbdinfo --map sees its holes, and mount reads the file the guest wrote before the backup."""
    dom = domain_report(two_backups["second"], "lab-guest")
    disk = next(d for d in dom["disks"] if d["target"] == "vda")
    truth = exported(f"{disk['image']}@{disk['snapshot']}", tmp_path)
    sock = tmp_path / "nbd.sock"
    argv = [sys.executable, "-m", "virt_rbd_backup", "serve", "lab-guest", "--disk", "vda", *repo.args()]
    server = subprocess.Popen([*argv, "--listen", f"unix:{sock}"], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        assert "Serving disk vda" in line and "chain of 1" in line, line
        uri = f"nbd+unix:///vda?socket={sock}"
        run(["qemu-img", "compare", "-f", "raw", "-F", "raw", str(truth), uri])
        mapped = run(["nbdinfo", "--map", uri]).stdout
        assert "hole" in mapped, mapped
    finally:
        server.terminate()
        server.wait(timeout=30)
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    mounted = cli("mount", "lab-guest", "--disk", "vda", str(mountpoint), *repo.args())
    try:
        assert mounted.returncode == 0, mounted.stderr
        assert list(mountpoint.glob("blob-*")), list(mountpoint.iterdir())
    finally:
        done = cli("umount", str(mountpoint))
        assert done.returncode == 0, done.stderr


def test_a_damaged_manifest_is_listed_warned_about_and_keeps_prune_from_sweeping(
    repo: Repo, two_backups: dict[str, Any], tmp_path: Path, fault: FaultRecord
) -> None:
    fault.injected = "S3 block repository: one manifest with a flipped byte (curl)"
    damaged = Repo(two_backups["tmp"], key_file=two_backups["tmp"] / "manifest.key")
    first = domain_report(damaged.backup("lab-off"), "lab-off")["backup_id"]
    second = domain_report(damaged.backup("lab-off"), "lab-off")["backup_id"]
    key = next(k for k in damaged.s3.keys("backups/") if k.endswith(f"{first}.manifest"))
    body = bytearray(damaged.s3.get(key))
    body[len(body) // 2] ^= 1
    damaged.s3.put(key, bytes(body))
    listed = cli("list", *damaged.args(), "--json")
    entries = {b["backup_id"]: b for b in listed.json()}
    assert entries[first]["error"] and not entries[second]["error"], entries
    out = tmp_path / "second.raw"
    restored = cli("restore", "lab-off", "--backup", second, "--to", str(out), *damaged.args())
    assert restored.returncode == 0, restored.stderr
    third = damaged.backup("lab-off")
    warnings = domain_report(third, "lab-off")["warnings"]
    assert any(first in w and "cannot be read" in w for w in warnings), warnings
    blocks = set(damaged.s3.keys("blocks/"))
    pruned = cli("prune", *damaged.args(), "--keep-last", "1")
    assert pruned.returncode == 1 and key.rsplit("/", 1)[1].split(".")[0] in pruned.stderr, pruned.stderr
    assert set(damaged.s3.keys("blocks/")) == blocks, "nothing swept"
    fault.outcome = "list names it with its error; restore of another backup and a new backup work (warning); prune exit 1, nothing swept"
    fault.leaks = 0
    fault.frozen = len(frozen_guests())
    fault.data_lost = "none beyond the damaged backup, which is named, never removed by the tool"
