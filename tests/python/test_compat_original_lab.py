"""The original tool's own `main.py`, unchanged, on `virt_rbd_backup.compat`, against the lab.

The test builds what an operator would: a folder of shim modules named as the original's
(`virt`, `ceph`, `output/restic.py`) that re-export `virt_rbd_backup.compat.*`, and a
`config.py` with the lab's URI, a fresh restic repository and a password file. Then
`/work/shared/original/main.py` (read from the original's checkout, never copied) runs with
that folder on `PYTHONPATH` (`python -P`, so the original's own modules next to it are not
imported instead). Truths: the original's lines, restic's snapshot list and `restic dump`
against `rbd export` of the shut-off `lab-off-a`, and `rbd snap ls` for leftover snapshots.

The original leaked a protected snapshot whenever a backup failed after its first pass; the
fault cases here make it fail (an image missing, restic refusing the password) and check that
the snapshots it created are gone when the run ends.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lab_support import (
    FaultRecord,
    domain_uuid,
    frozen_guests,
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


def find_original() -> Path:
    """The original tool's checkout: $VRB_ORIGINAL, else `shared/original` beside this checkout,
    else beside the checkout it was cloned from (a fresh clone in a temporary folder, as the
    README's test command makes, has git's `origin` pointing back at the working one)."""
    if "VRB_ORIGINAL" in os.environ:
        return Path(os.environ["VRB_ORIGINAL"])
    checkout = Path(__file__).resolve().parents[2]
    candidates = [checkout.parent / "shared" / "original"]
    origin = subprocess.run(
        ["git", "-C", str(checkout), "config", "--get", "remote.origin.url"], capture_output=True, text=True
    ).stdout.strip()
    if origin.startswith("/"):
        candidates.append(Path(origin).resolve().parent / "shared" / "original")
    return next((c for c in candidates if (c / "main.py").is_file()), candidates[0])


ORIGINAL = find_original()
PASSWORD = "vrb-lab-original-pw-3e9b7c1d"

# The original's snapshot names: IMAGE-backup-%Y_%m_%d_%s.
ORIGINAL_SNAPSHOT = re.compile(r".+-backup-\d{4}_\d{2}_\d{2}_\d+$")

# What the original's main.py prints, and nothing else on stdout.
ORIGINAL_LINE = re.compile(
    r"^(Ignoring non-network disk for domain: \S+"
    r"|Ignoring non-RBD network disk for domain: \S+"
    r"|Processing \d+ images for domain [0-9a-f-]{36}"
    r"|Backup successful: No error occurred for domain [0-9a-f-]{36}"
    r"|Backup failed: Error (creating snapshot|during backup copy|during libvirt connection or operation) "
    r"for domain: [0-9a-f-]{36}\. Exception: .*)$"
)

SHIMS = {
    "virt.py": "from virt_rbd_backup.compat.virt import *  # noqa: F403\n",
    "ceph.py": "from virt_rbd_backup.compat.ceph import *  # noqa: F403\n",
    "output/__init__.py": "",
    "output/restic.py": "from virt_rbd_backup.compat.output.restic import *  # noqa: F403\n",
}


def restic(repo: Path, password_file: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run(["restic", "--no-cache", "--repo", str(repo), "--password-file", str(password_file), *args])


def restic_dump_sha256(repo: Path, password_file: Path, snapshot: str, path: str) -> tuple[str, int]:
    """SHA-256 and size of a file restored from restic (`restic dump`)."""
    proc = subprocess.Popen(
        ["restic", "--no-cache", "--repo", str(repo), "--password-file", str(password_file), "dump", snapshot, path],
        stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None
    digest, size = hashlib.sha256(), 0
    while chunk := proc.stdout.read(1 << 20):
        digest.update(chunk)
        size += len(chunk)
    assert proc.wait() == 0, f"restic dump {snapshot} {path} failed"
    return digest.hexdigest(), size


def original_snapshots(image: str) -> list[str]:
    """Snapshots of pool/image named as the original named its own."""
    return [s["name"] for s in rbd_json("snap", "ls", image) if ORIGINAL_SNAPSHOT.match(s["name"])]


def leaked(images: list[str]) -> dict[str, list[str]]:
    return {image: snaps for image in images if (snaps := original_snapshots(image))}


def clean_env(shims: Path) -> dict[str, str]:
    """No restic password in the environment (it must come from TARGET_KEYFILE); the shims first."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RESTIC_")}
    env["PYTHONPATH"] = str(shims)
    return env


@pytest.fixture
def original(tmp_path: Path) -> dict[str, Path]:
    """The original's installation: shim modules, config.py, a fresh restic repository."""
    require_lab()
    if not (ORIGINAL / "main.py").is_file():
        pytest.skip(f"the original tool is not at {ORIGINAL} (set VRB_ORIGINAL)")
    shims = tmp_path / "shims"
    for name, text in SHIMS.items():
        (shims / name).parent.mkdir(parents=True, exist_ok=True)
        (shims / name).write_text(text)
    password_file = tmp_path / "restic.key"
    password_file.write_text(PASSWORD + "\n")
    password_file.chmod(0o600)
    repo = tmp_path / "restic-repo"
    run(["restic", "init", "--repo", str(repo), "--password-file", str(password_file)])
    write_config(shims, repo, password_file)
    return {"shims": shims, "repo": repo, "password_file": password_file}


def write_config(shims: Path, repo: Path, password_file: Path) -> None:
    (shims / "config.py").write_text(
        "NUMBER_OF_PROCESSES = 2\n"
        f"LIBVIRT_CONNECTION = {os.environ.get('LAB_LIBVIRT_URI', 'qemu:///system')!r}\n"
        f"TARGET_REPO = {str(repo)!r}\n"
        f"TARGET_KEYFILE = {str(password_file)!r}\n"
    )


def run_original(setup: dict[str, Path], cwd: Path) -> subprocess.CompletedProcess[str]:
    # -P: not the original's folder first on sys.path, so `import virt` finds the shim.
    return run(
        [sys.executable, "-P", str(ORIGINAL / "main.py")],
        check=False,
        cwd=cwd,
        env=clean_env(setup["shims"]),
        timeout=900,
    )


LINE_START = re.compile(r"(?<!\n)(?=Ignoring |Processing \d|Backup successful: |Backup failed: )")


def check_lines(stdout: str) -> list[str]:
    # The original's worker processes print into one pipe without flushing; their lines can run
    # into each other (seen on the lab: "...domain UUIDProcessing 1 images..."). That is the
    # original's code, unchanged here: split where a line of it starts.
    lines = LINE_START.sub("\n", stdout).splitlines()
    lines = [line for line in lines if line]
    for line in lines:
        assert ORIGINAL_LINE.match(line), f"not one of the original's lines: {line!r}"
    return lines


def test_the_originals_main_py_runs_unchanged_on_compat(original: dict[str, Path], tmp_path: Path) -> None:
    off_before = rbd_export_sha256("rbd/lab-off-a")
    off_size = rbd_json("info", "rbd/lab-off-a")["size"]
    uuids = {name: domain_uuid(name) for name in ("lab-off", "lab-guest", "lab-local")}
    key = virsh("secret-get-value", os.environ["LAB_SECRET_UUID"]).stdout.strip()

    proc = run_original(original, tmp_path)
    # The original always exits 0; its lines say what happened.
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = check_lines(proc.stdout)
    assert "Ignoring non-network disk for domain: lab-local" in lines
    assert "Ignoring non-network disk for domain: lab-guest" in lines  # its local vdc
    for name, images in (("lab-off", 1), ("lab-guest", 2)):
        uuid_ = uuids[name]
        assert lines.index(f"Processing {images} images for domain {uuid_}") < lines.index(
            f"Backup successful: No error occurred for domain {uuid_}"
        ), proc.stdout + proc.stderr
    assert not any(uuids["lab-local"] in line for line in lines), "a domain without RBD disk is not processed"

    # Into restic, as the original: one snapshot per RBD disk, file IMAGE.img.
    snapshots = json.loads(restic(original["repo"], original["password_file"], "snapshots", "--json").stdout)
    by_path = {s["paths"][0]: s for s in snapshots}
    assert {"/lab-off-a.img", "/lab-guest-a.img", "/lab-guest-b.img"} <= set(by_path), sorted(by_path)
    # lab-off is shut off: restored bytes equal `rbd export` of its image now and before.
    assert rbd_export_sha256("rbd/lab-off-a") == off_before
    assert restic_dump_sha256(
        original["repo"], original["password_file"], by_path["/lab-off-a.img"]["id"], "/lab-off-a.img"
    ) == (
        off_before,
        off_size,
    )
    # lab-guest runs (no freeze in the original's main.py): at least the whole image came through.
    for image in ("lab-guest-a", "lab-guest-b"):
        _, size = restic_dump_sha256(
            original["repo"], original["password_file"], by_path[f"/{image}.img"]["id"], f"/{image}.img"
        )
        assert size == rbd_json("info", f"rbd/{image}")["size"]

    # The snapshots it created are gone, and were removed by the script itself (success path).
    assert leaked(["rbd/lab-off-a", "rbd/lab-guest-a", "rbd/lab-guest-b"]) == {}
    assert "removed snapshot" not in proc.stderr, proc.stderr
    # Neither the Ceph key nor the restic password shows anywhere.
    assert key and key not in proc.stdout + proc.stderr
    assert PASSWORD not in proc.stdout + proc.stderr


@pytest.fixture
def half_missing_domain(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A shut-off domain with two RBD disks of which only the first image exists."""
    require_lab()
    name = f"vrb-compat-{uuid.uuid4().hex[:8]}"
    present, missing = f"rbd/{name}-a", f"rbd/{name}-missing"
    disks = "".join(
        f"""
    <disk type='network' device='disk'>
      <driver name='qemu' type='raw'/>
      <auth username='{os.environ.get("LAB_CEPH_USER", "libvirt")}'><secret type='ceph' uuid='{os.environ["LAB_SECRET_UUID"]}'/></auth>
      <source protocol='rbd' name='{image}'><host name='127.0.0.1' port='6789'/></source>
      <target dev='vd{dev}' bus='virtio'/>
    </disk>"""
        for image, dev in ((present, "a"), (missing, "b"))
    )
    xml = tmp_path / f"{name}.xml"
    xml.write_text(
        f"<domain type='qemu'><name>{name}</name><memory unit='MiB'>64</memory>"
        f"<os><type arch='x86_64'>hvm</type></os><devices>{disks}</devices></domain>"
    )
    try:
        make_image(present, tmp_path, size_mib=16, data_mib=4)
        virsh("define", str(xml))
        yield {"name": name, "uuid": domain_uuid(name), "present": present, "missing": missing}
    finally:
        virsh("undefine", name, check=False)
        remove_image(present)


@pytest.mark.parametrize("failure", ["image-missing", "restic-refuses"])
def test_a_failure_mid_backup_of_the_originals_main_py_leaves_no_snapshot(
    original: dict[str, Path], half_missing_domain: dict[str, Any], tmp_path: Path, fault: FaultRecord, failure: str
) -> None:
    dom = half_missing_domain
    watched = [dom["present"], "rbd/lab-off-a", "rbd/lab-guest-a", "rbd/lab-guest-b"]
    if failure == "restic-refuses":
        # A wrong password: every restic upload fails in the original's second pass, after the
        # first pass created and protected every snapshot.
        wrong = tmp_path / "wrong.key"
        wrong.write_text("not the password\n")
        wrong.chmod(0o600)
        write_config(original["shims"], original["repo"], wrong)
        fault.injected = "the original's main.py with a restic password restic refuses (every upload fails in pass 2)"
    else:
        fault.injected = (
            f"the original's main.py on a domain whose second image is missing ({dom['name']}: "
            f"{dom['present']} exists, {dom['missing']} does not), next to the lab's domains"
        )

    proc = run_original(original, tmp_path)
    lines = check_lines(proc.stdout)
    off_uuid = domain_uuid("lab-off")
    # Pass 1 fails on the missing image (after the first disk's snapshot); with the wrong
    # password every domain with images fails in pass 2, after all its snapshots were taken.
    first_pass = f"Backup failed: Error creating snapshot for domain: {dom['uuid']}."
    second_pass = f"Backup failed: Error during backup copy for domain: {off_uuid}."
    expected = first_pass if failure == "image-missing" else second_pass
    failed = [line for line in lines if line.startswith(expected)]
    fault.outcome = f"exit {proc.returncode}; " + (failed[0][:160] if failed else f"no line {expected}")
    assert proc.returncode == 0, "the original's main.py always exits 0"
    assert failed, proc.stdout + proc.stderr
    if failure == "image-missing":
        assert dom["missing"].split("/")[1] in failed[0]
        # The other domains were backed up as usual.
        assert f"Backup successful: No error occurred for domain {off_uuid}" in lines
    else:
        assert "BackupException" in failed[0]
        assert "rbd/lab-off-a" in " ".join(line for line in proc.stderr.splitlines() if "removed snapshot" in line)

    # The original left a protected snapshot behind here; compat removed it when the worker ended.
    left = leaked(watched)
    fault.leaks = sum(len(v) for v in left.values())
    fault.frozen = len(frozen_guests())
    assert left == {}, left
    removed = [line for line in proc.stderr.splitlines() if "removed snapshot" in line]
    assert any(dom["present"] in line for line in removed), proc.stderr
    assert "could not remove" not in proc.stderr, proc.stderr
    # Nothing it backed up before is lost: lab-off's restic snapshot (if any) restores to its image.
    snapshots = json.loads(restic(original["repo"], original["password_file"], "snapshots", "--json").stdout)
    off = [s for s in snapshots if s["paths"] == ["/lab-off-a.img"]]
    if off:
        restored, _ = restic_dump_sha256(original["repo"], original["password_file"], off[-1]["id"], "/lab-off-a.img")
        assert restored == rbd_export_sha256("rbd/lab-off-a")
        fault.data_lost = "none (lab-off's restic snapshot restores to rbd export)"
    else:
        fault.data_lost = "none (nothing was stored)"
    assert rbd("info", dom["missing"], check=False).returncode != 0


def test_compat_ceph_reads_snapshots_as_rbd_export_does() -> None:
    """The calls of the original's CephConnection beyond main.py's path: read by offset, size,
    protection refusing a plain remove, a kept snapshot left alone at the end of the process."""
    require_lab()
    code = """
import hashlib
from virt_rbd_backup.compat import ceph, virt
from virt_rbd_backup import CephError

connection = virt.VirtConnection()
connection.open()
(image,) = [i for i in connection.list_virtrbd_images() if i.name == "lab-off-a"]
conn = ceph.CephConnection(image.username, image.secret)
conn.connect()
print("pool_exists", conn.pool_exists("rbd"), conn.pool_exists("no-such-pool"))
conn.open_pool(image.pool)
conn.open_image(image.name)
conn.create_snapshot("vrb-compat-read", protected=True)
conn.create_snapshot("vrb-compat-kept", keep=True)
try:
    conn.remove_snapshot("vrb-compat-read")
    print("removed a protected snapshot")
except CephError as exc:
    print("protected", "rbd_snap_remove" in str(exc))
conn.open_image(image.name, snapshot="vrb-compat-read", read_only=True)
size = conn.image.size()
digest = hashlib.sha256()
offset = 0
while offset < size:
    data = conn.image.read(offset, 3 * 1024 * 1024 + 7)  # not block-aligned on purpose
    assert data, offset
    digest.update(data)
    offset += len(data)
print("past_end", len(conn.image.read(size, 4096)), len(conn.image.read(size - 10, 4096)))
print("sha256", digest.hexdigest(), size)
conn.open_image(image.name)
# The protected one is left to the end of the process: it must go then, the kept one not.
conn.close()
"""
    before = rbd_export_sha256("rbd/lab-off-a")
    try:
        proc = run([sys.executable, "-c", code], check=False, timeout=300)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        lines = proc.stdout.splitlines()
        assert "pool_exists True False" in lines
        assert "protected True" in lines
        assert "past_end 0 10" in lines
        assert f"sha256 {before} {rbd_json('info', 'rbd/lab-off-a')['size']}" in lines
        names = [s["name"] for s in rbd_json("snap", "ls", "rbd/lab-off-a")]
        assert "vrb-compat-read" not in names, "left to the end of the process: removed then"
        assert "removed snapshot rbd/lab-off-a@vrb-compat-read" in proc.stderr
        assert "vrb-compat-kept" in names, "keep=True is kept"
    finally:
        for snap in ("vrb-compat-read", "vrb-compat-kept"):
            rbd("snap", "unprotect", f"rbd/lab-off-a@{snap}", check=False)
            rbd("snap", "rm", "--no-progress", f"rbd/lab-off-a@{snap}", check=False)
