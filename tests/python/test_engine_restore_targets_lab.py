"""What a restore may replace (src/engine/restore.rs, module doc), against the real lab: a file or
RBD image that appears at the target's name while the restore runs is never replaced; `--force`
onto an RBD image keeps the old image until the new one is under the name; `--force` onto a block
device writes into it and the node stays a block device; `restore --define` refuses saved XML
that hands the domain host resources, and removes the images it made when a later disk fails.

The restore is paused after its data is written and checked, before it takes the name, by its
test hook (`VIRT_RBD_BACKUP_TEST_PAUSE=restored:SECONDS`), and the fault is injected there. The
backups are of a shut-off scratch domain of our own (`vrb-restore-*`), removed at the end."""

from __future__ import annotations

import hashlib
import json
import os
import queue
import stat
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
    MIB,
    FaultRecord,
    cli,
    domain_xml,
    make_image,
    rbd,
    rbd_export_sha256,
    rbd_json,
    remove_image,
    require_lab,
    run,
    virsh,
)

pytestmark = pytest.mark.lab

# Harmless to run (an environment variable for QEMU), and what the passthrough check refuses.
QEMU_COMMANDLINE = (
    "<qemu:commandline xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>"
    "<qemu:env name='VRB_RESTORE_TEST' value='1'/></qemu:commandline>"
)
PAUSE = 6


@dataclass
class Backed:
    domain: str
    images: list[str]  # pool/image of vda, vdb
    repo: Path
    snapshots: dict[str, str]  # disk -> pool/image@snapshot
    size: int  # of each image


@pytest.fixture(scope="module")
def backed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backed]:
    """A shut-off domain with two 64 MiB disks and a `qemu:commandline` in its XML, backed up once."""
    require_lab()
    tmp = tmp_path_factory.mktemp("restore-targets")
    name = f"vrb-restore-{uuid.uuid4().hex[:8]}"
    images = [f"rbd/{name}-a", f"rbd/{name}-b"]
    try:
        for image in images:
            make_image(image, tmp, size_mib=64, data_mib=8)
        xml = tmp / f"{name}.xml"
        xml.write_text(domain_xml(name, images, running=False).replace("</domain>", QEMU_COMMANDLINE + "\n</domain>"))
        virsh("define", str(xml))
        repo = tmp / "repo"
        result = cli("backup", "--repo", str(repo), "--json", "--domain", name)
        assert result.returncode == 0, result.stdout + result.stderr
        dom = result.json()["domains"][0]
        manifest = json.loads((Path(dom["path"]) / "manifest.json").read_text())
        snapshots = {d["target"]: f"{d['pool']}/{d['image']}@{d['snapshot']['name']}" for d in manifest["disks"]}
        yield Backed(name, images, repo, snapshots, 64 * MIB)
    finally:
        virsh("undefine", name, check=False)
        for image in images:
            remove_image(image)


def start(*args: str, pause: int = PAUSE) -> tuple[subprocess.Popen[str], queue.Queue[str]]:
    """Starts the CLI with the restore paused at `restored`; its stderr lines go to the queue."""
    env = dict(os.environ, VIRT_RBD_BACKUP_TEST_PAUSE=f"restored:{pause}")
    proc = subprocess.Popen(
        [sys.executable, "-m", "virt_rbd_backup", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    return proc, lines


def wait_paused(lines: queue.Queue[str], seen: list[str], timeout: float = 120) -> None:
    """Waits for the next `test hook: pausing` line; every line read is appended to `seen`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=1)
        except queue.Empty:
            continue
        seen.append(line)
        if "test hook: pausing" in line:
            return
    raise AssertionError(f"the restore did not pause; stderr so far: {''.join(seen)}")


def finish(proc: subprocess.Popen[str], lines: queue.Queue[str], seen: list[str]) -> tuple[int, str]:
    proc.wait(timeout=300)
    time.sleep(0.2)  # the pump thread drains the pipe
    while not lines.empty():
        seen.append(lines.get())
    return proc.returncode, "".join(seen)


def image_names(pool: str = "rbd") -> set[str]:
    return {str(i["image"]) for i in rbd_json("ls", "-l", pool) if "snapshot" not in i}


def image_id(spec: str) -> str | None:
    proc = rbd("info", "--format", "json", spec, check=False)
    return str(json.loads(proc.stdout)["id"]) if proc.returncode == 0 else None


def ours_left(name_prefix: str) -> list[str]:
    """Temporary and set-aside images of a restore whose names start with `name_prefix`."""
    return sorted(n for n in image_names() if n.startswith(name_prefix) and "virt-rbd-backup" in n)


def ceph_conf() -> list[str]:
    return ["--ceph-conf", os.environ["CEPH_CONF"]]


def test_rbd_image_appearing_during_the_restore_is_not_replaced(backed: Backed, fault: FaultRecord) -> None:
    target = f"vrb-restore-target-{uuid.uuid4().hex[:6]}"
    seen: list[str] = []
    try:
        proc, lines = start(
            "restore",
            backed.domain,
            "--repo",
            str(backed.repo),
            "--disk",
            "vda",
            "--to",
            f"rbd:rbd/{target}",
            *ceph_conf(),
        )
        wait_paused(lines, seen)
        rbd("create", "--size", "1M", f"rbd/{target}")
        theirs = image_id(f"rbd/{target}")
        fault.injected = "rbd create of the target image while the restore runs (after the check, before the rename)"
        code, stderr = finish(proc, lines, seen)
        assert code == 2, stderr
        assert "appeared during the restore" in stderr, stderr
        assert image_id(f"rbd/{target}") == theirs, "the image created meanwhile must stay"
        assert rbd_json("info", f"rbd/{target}")["size"] == MIB
        left = ours_left(target)
        assert left == [], left
        fault.outcome = (
            f"exit {code}: refused ('appeared during the restore'); their image kept (same id), no temporary image left"
        )
        fault.measure(backed.repo, backed.images)
    finally:
        remove_image(f"rbd/{target}")


def test_force_keeps_the_old_image_until_the_new_one_has_the_name(backed: Backed, fault: FaultRecord) -> None:
    target = f"vrb-restore-target-{uuid.uuid4().hex[:6]}"
    aside = f"{target}.virt-rbd-backup-replaced"
    args = ["restore", backed.domain, "--repo", str(backed.repo), "--disk", "vda", "--to", f"rbd:rbd/{target}"]
    # What the pool's directory lists at each moment, from another client (`rbd ls` reads the
    # directory in one operation; `rbd ls -l` also opens each image and fails on one renamed
    # in between).
    observed: list[tuple[bool, bool]] = []  # (name listed, aside listed)
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            names = set(rbd_json("ls", "rbd"))
            observed.append((target in names, aside in names))

    poller = threading.Thread(target=poll, daemon=True)
    seen: list[str] = []
    try:
        rbd("create", "--size", "1M", f"rbd/{target}")
        old_id = image_id(f"rbd/{target}")
        poller.start()
        # 1. Unpaused, with the debug log that times the moment between the two renames.
        quick = cli(*args, "--force", "-vv", *ceph_conf())
        assert quick.returncode == 0, quick.stderr
        window = [line for line in quick.stderr.splitlines() if "between the two renames" in line]
        first_id = image_id(f"rbd/{target}")
        assert first_id not in (None, old_id)
        # 2. Paused between the renames: the old image is aside (same id), the new not yet named.
        env_pause = dict(os.environ, VIRT_RBD_BACKUP_TEST_PAUSE="replacing:3")
        paused = subprocess.Popen(
            [sys.executable, "-m", "virt_rbd_backup", *args, "--force", *ceph_conf()],
            env=env_pause,
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
        )
        assert paused.stderr is not None
        for line in paused.stderr:
            seen.append(line)
            if "test hook: pausing" in line:
                break
        assert image_id(f"rbd/{aside}") == first_id, "the old image is renamed aside, not removed"
        assert image_id(f"rbd/{target}") is None
        seen.append(paused.stderr.read())
        assert paused.wait(timeout=120) == 0, "".join(seen)
        time.sleep(0.5)
        stop.set()
        poller.join()
        fault.injected = (
            "restore --force onto an existing image (twice) while another client lists the pool continuously"
        )
        assert image_id(f"rbd/{target}") not in (None, first_id)
        assert rbd_export_sha256(f"rbd/{target}") == rbd_export_sha256(backed.snapshots["vda"])
        assert aside not in image_names(), "the replaced image is removed once the new one is in place"
        # Every listing: an image has the name (old before the renames, new after), or the old
        # one is aside.
        gone = [i for i, (present, has_aside) in enumerate(observed) if not present and not has_aside]
        empty_name = sum(1 for present, _ in observed if not present)
        took = window[0].split(" for ")[-1].split(" ")[0] if window else "?"
        fault.outcome = (
            f"exit 0 twice; {len(observed)} listings: an image had the name in {len(observed) - empty_name}, "
            f"the old one was aside in {empty_name} (the 3 s pause), neither in {len(gone)}; unpaused, the name "
            f"was empty between the renames for {took}"
        )
        print(fault.outcome)
        assert not gone, f"the old image was gone before the new one had the name at listings {gone}"
        assert empty_name > 0 and len(observed) >= 10, "the listings did not cover the replacement"
        fault.measure(backed.repo, backed.images)
    finally:
        stop.set()
        remove_image(f"rbd/{target}")
        remove_image(f"rbd/{aside}")


def test_file_appearing_during_the_restore_is_not_replaced(backed: Backed, tmp_path: Path, fault: FaultRecord) -> None:
    target = tmp_path / "vda.raw"
    seen: list[str] = []
    proc, lines = start("restore", backed.domain, "--repo", str(backed.repo), "--disk", "vda", "--to", str(target))
    wait_paused(lines, seen)
    target.write_bytes(b"created meanwhile")
    fault.injected = "a file created at the target path while the restore runs (after the check, before the rename)"
    code, stderr = finish(proc, lines, seen)
    assert code == 2, stderr
    assert "appeared during the restore" in stderr, stderr
    assert target.read_bytes() == b"created meanwhile"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vda.raw"]
    fault.outcome = f"exit {code}: refused; the file created meanwhile kept, no temporary file left"
    fault.measure(backed.repo, backed.images)


@pytest.fixture
def loop_device(tmp_path: Path) -> Iterator[Path]:
    """A 72 MiB loop device full of 0xff (so holes the restore fails to zero would show)."""
    backing = tmp_path / "loop.img"
    with backing.open("wb") as f:
        for _ in range(72):
            f.write(b"\xff" * MIB)
    device = Path(run(["losetup", "--find", "--show", str(backing)]).stdout.strip())
    try:
        yield device
    finally:
        run(["losetup", "-d", str(device)], check=False)


def test_force_onto_a_block_device_writes_into_it_and_checks_it(
    backed: Backed, loop_device: Path, tmp_path: Path, fault: FaultRecord
) -> None:
    args = ["restore", backed.domain, "--repo", str(backed.repo), "--disk", "vda", "--to", str(loop_device)]
    refused = cli(*args)
    assert refused.returncode == 2 and "is a block device; use --force" in refused.stderr, refused.stderr
    # Held open exclusively by someone else (as a mount holds it): not written.
    holder = os.open(loop_device, os.O_RDONLY | os.O_EXCL)
    try:
        busy = cli(*args, "--force")
    finally:
        os.close(holder)
    assert busy.returncode == 2 and "is in use" in busy.stderr, busy.stderr
    fault.injected = "--force onto a loop device full of 0xff (and once while it is held with O_EXCL)"
    link = tmp_path / "by-id-link"
    link.symlink_to(loop_device)
    done = cli("restore", backed.domain, "--repo", str(backed.repo), "--disk", "vda", "--to", str(link), "--force")
    assert done.returncode == 0, done.stdout + done.stderr
    assert stat.S_ISBLK(os.stat(loop_device).st_mode) and link.is_symlink(), "the node and the link stay"
    with open(loop_device, "rb") as f:
        digest = hashlib.sha256()
        for _ in range(backed.size // MIB):
            digest.update(f.read(MIB))
        rest = f.read()
    assert digest.hexdigest() == rbd_export_sha256(backed.snapshots["vda"])
    assert rest == b"\xff" * (8 * MIB), "bytes past the image are left as they were"
    fault.outcome = (
        "plain: exit 2 (use --force); held: exit 2 (in use); --force through a symlink: exit 0, "
        "device equals rbd export of the snapshot, still a block device"
    )
    fault.measure(backed.repo, backed.images)


def test_define_refuses_host_passthrough_before_writing_and_defines_with_the_flag(
    backed: Backed, fault: FaultRecord
) -> None:
    name = f"vrb-restore-copy-{uuid.uuid4().hex[:6]}"
    try:
        refused = cli("restore", backed.domain, "--repo", str(backed.repo), "--define", name, *ceph_conf())
        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert "<qemu:commandline>" in refused.stderr and "--allow-host-passthrough" in refused.stderr, refused.stderr
        assert not [n for n in image_names() if n.startswith(name)], "nothing is written before the check"
        assert virsh("dominfo", name, check=False).returncode != 0
        allowed = cli(
            "restore",
            backed.domain,
            "--repo",
            str(backed.repo),
            "--define",
            name,
            "--allow-host-passthrough",
            *ceph_conf(),
        )
        assert allowed.returncode == 0, allowed.stdout + allowed.stderr
        xml = virsh("dumpxml", name).stdout
        assert "VRB_RESTORE_TEST" in xml and f"rbd/{name}-vda" in xml
        assert rbd_export_sha256(f"rbd/{name}-vdb") == rbd_export_sha256(backed.snapshots["vdb"])
        fault.injected = "saved XML with a <qemu:commandline> (QEMU environment variable), restore --define"
        fault.outcome = (
            "exit 2 naming <qemu:commandline>, no image or domain made; with the flag: exit 0, defined as saved"
        )
        fault.measure(backed.repo, backed.images)
    finally:
        virsh("undefine", name, check=False)
        for disk in ("vda", "vdb"):
            remove_image(f"rbd/{name}-{disk}")


def test_define_removes_the_images_it_made_when_a_disk_fails(backed: Backed, fault: FaultRecord) -> None:
    name = f"vrb-restore-copy-{uuid.uuid4().hex[:6]}"
    seen: list[str] = []
    try:
        # The flag only because this backup's XML has a qemu:commandline (the test above).
        proc, lines = start(
            "restore",
            backed.domain,
            "--repo",
            str(backed.repo),
            "--define",
            name,
            "--allow-host-passthrough",
            *ceph_conf(),
        )
        # The disks are restored at once: both are written, under their temporary names,
        # and neither has its name yet.
        wait_paused(lines, seen)
        wait_paused(lines, seen)
        names = image_names()
        assert {f"{name}-vda.virt-rbd-backup-restoring", f"{name}-vdb.virt-rbd-backup-restoring"} <= names, names
        assert not {f"{name}-vda", f"{name}-vdb"} & names, names
        rbd("create", "--size", "1M", f"rbd/{name}-vdb")
        theirs = image_id(f"rbd/{name}-vdb")
        fault.injected = "vdb's image name created by someone else while restore --define writes both disks"
        code, stderr = finish(proc, lines, seen)
        assert code == 2 and "appeared during the restore" in stderr, stderr
        left = sorted(n for n in image_names() if n.startswith(name))
        assert left == [f"{name}-vdb"], left
        assert image_id(f"rbd/{name}-vdb") == theirs
        assert virsh("dominfo", name, check=False).returncode != 0, "no domain is defined"
        fault.outcome = f"exit {code}; images left: {left} (theirs, untouched); {name}-vda removed; no domain defined"
        fault.measure(backed.repo, backed.images)
    finally:
        virsh("undefine", name, check=False)
        for disk in ("vda", "vdb"):
            remove_image(f"rbd/{name}-{disk}")


def test_define_with_one_damaged_disk_names_it_and_leaves_nothing(backed: Backed, tmp_path: Path) -> None:
    """The disks restore in parallel; a damaged block of vdb's full fails vdb, which stops vda:
    the error is vdb's (not the other disk's cancellation), and no image or domain is left."""
    repo = tmp_path / "repo"
    subprocess.run(["cp", "-a", str(backed.repo), str(repo)], check=True)
    [raw] = list(repo.glob("*/*/vdb.raw"))
    with raw.open("r+b") as f:
        f.seek(4 * MIB)  # inside the 8 MiB of random data make_image wrote
        byte = f.read(1)
        assert byte, "the full holds data at 4 MiB"
        f.seek(4 * MIB)
        f.write(bytes([byte[0] ^ 0x01]))
    name = f"vrb-restore-bad-{uuid.uuid4().hex[:6]}"
    try:
        result = cli(
            "restore", backed.domain, "--repo", str(repo), "--define", name, "--allow-host-passthrough", *ceph_conf()
        )
        said = result.stdout + result.stderr
        assert result.returncode == 1, said
        assert str(raw) in said and "cancel" not in said.lower(), said
        assert not [n for n in image_names() if n.startswith(name)], "every image it made is removed"
        assert virsh("dominfo", name, check=False).returncode != 0, "no domain is defined"
    finally:
        virsh("undefine", name, check=False)
        for disk in ("vda", "vdb"):
            remove_image(f"rbd/{name}-{disk}")
