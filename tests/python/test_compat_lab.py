"""The drop-in for the original `python3 main.py` and its scripting API, against the real lab
and Debian's restic.

The original was configured by a `config.py` next to it and sent each image to restic; its
systemd unit ran it in that directory. Here the same `config.py` drives `virt-rbd-backup` run
bare in that directory and with `--config PATH`, and a script written against the original's
`virt` and `main` modules runs on `virt_rbd_backup.compat`. Truths: restic's own snapshot
list, `rbd export`, `rbd snap ls`, virsh for the domains and their UUIDs and the key.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import pytest

from lab_support import domain_uuid, rbd_export_sha256, require_lab, run, tool_snapshots, virsh

pytestmark = pytest.mark.lab

PASSWORD = "vrb-lab-compat-pw-81c4a6d2f5"

# The original's lines, and the summary virt-rbd-backup adds after them.
ORIGINAL_LINE = re.compile(
    r"^(Ignoring non-network disk for domain: \S+"
    r"|Ignoring non-RBD network disk for domain: \S+"
    r"|Processing \d+ images for domain [0-9a-f-]{36}"
    r"|Backup successful: No error occurred for domain [0-9a-f-]{36}"
    r"|Backup failed: .*)$"
)
SUMMARY_LINE = re.compile(r"^Summary: \d+ succeeded, \d+ failed, \d+ skipped$")

SCRIPT = """
# A script in the original's style: only the import line differs from one written for the
# original (`import virt, main`).
import sys

from virt_rbd_backup.compat import config, main, virt

connection = virt.VirtConnection(config.LIBVIRT_CONNECTION)
connection.open()
by_domain = {}
for image in connection.list_virtrbd_images():
    by_domain.setdefault(image.domain, []).append(image)
for uuid, domain_images in by_domain.items():
    domain = connection.lookupByUUIDString(uuid)
    for image in domain_images:
        print("image", domain.name(), image.domain, image.pool, image.name, image.username,
              image.secret.decode(), repr(image.snapshot_name))
    if domain.name() != "lab-off":
        continue
    ok, message = main.process_backup(domain_images)
    print("process_backup", domain.name(), ok, message)
    print("repr", repr(domain_images[0]))
connection.close()

results = main.run_parallel()
print("run_parallel", results)
sys.exit(0 if all(ok for ok, _ in results) else 1)
"""


def restic_snapshots(repo: Path, password_file: Path) -> list[dict[str, Any]]:
    """The disk snapshots (not their seals, the tool's completeness records), oldest first."""
    out = run(["restic", "--repo", str(repo), "--password-file", str(password_file), "snapshots", "--json"]).stdout
    snapshots: list[dict[str, Any]] = json.loads(out) or []
    return [s for s in snapshots if "virt-rbd-backup-seal" not in (s.get("tags") or [])]


def lab_domains() -> dict[str, str]:
    """Every defined domain (a bare run backs up all of them) by name, with its UUID."""
    names = [n for n in virsh("list", "--all", "--name").stdout.split() if n]
    return {name: domain_uuid(name) for name in names}


def restic_owned_snapshots(image: str) -> list[str]:
    return [s for s in tool_snapshots(image) if s.startswith("virt-rbd-backup-restic-")]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The original's installation folder: config.py naming a fresh restic repository."""
    require_lab()
    folder = tmp_path_factory.mktemp("opt-virt-rbd-backup")
    password_file = folder / "restic.key"
    password_file.write_text(PASSWORD + "\n")
    password_file.chmod(0o600)
    repo = folder / "restic-repo"
    run(["restic", "init", "--repo", str(repo), "--password-file", str(password_file)])
    (folder / "config.py").write_text(
        "NUMBER_OF_PROCESSES = 2\n"
        f"LIBVIRT_CONNECTION = {os.environ.get('LAB_LIBVIRT_URI', 'qemu:///system')!r}\n"
        f"TARGET_REPO = {str(repo)!r}\n"
        f"TARGET_KEYFILE = {str(password_file)!r}\n"
    )
    return {"folder": folder, "repo": repo, "password_file": password_file}


def clean_env() -> dict[str, str]:
    """No restic password in the environment: it must come from TARGET_KEYFILE."""
    return {k: v for k, v in os.environ.items() if not k.startswith("RESTIC_")}


def check_original_run(stdout: str, domains: dict[str, str]) -> None:
    lines = stdout.splitlines()
    for line in lines[:-1]:
        assert ORIGINAL_LINE.match(line), f"not one of the original's lines: {line!r}"
    assert SUMMARY_LINE.match(lines[-1]), lines[-1]
    assert "Ignoring non-network disk for domain: lab-local" in lines
    assert "Ignoring non-network disk for domain: lab-guest" in lines  # its local vdc
    for name, images in (("lab-off", 1), ("lab-guest", 2)):
        uuid = domains[name]
        processing = lines.index(f"Processing {images} images for domain {uuid}")
        assert lines.index(f"Backup successful: No error occurred for domain {uuid}") > processing
    assert not any(domains["lab-local"] in line for line in lines), "a domain without RBD disk is not processed"


@pytest.mark.parametrize("how", ["bare-in-its-folder", "with---config"])
def test_the_originals_config_py_does_the_originals_job(setup: dict[str, Path], how: str, tmp_path: Path) -> None:
    domains = lab_domains()
    before = len(restic_snapshots(setup["repo"], setup["password_file"]))
    if how == "bare-in-its-folder":
        command, cwd = [sys.executable, "-m", "virt_rbd_backup"], setup["folder"]
    else:
        command, cwd = (
            [sys.executable, "-m", "virt_rbd_backup", "--config", str(setup["folder"] / "config.py")],
            tmp_path,
        )
    proc = run(command, check=False, cwd=cwd, env=clean_env(), timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    check_original_run(proc.stdout, domains)
    # Into TARGET_REPO: one restic snapshot per RBD disk of every domain that has some.
    after = restic_snapshots(setup["repo"], setup["password_file"])
    new = [s for s in after if s["id"] not in {x["id"] for x in after[:before]}]
    new_paths = sorted(s["paths"][0] for s in new)
    assert {"/lab-off-a.img", "/lab-guest-a.img", "/lab-guest-b.img"} <= set(new_paths)
    for snapshot in new:
        tags = dict(tag.split("=", 1) for tag in snapshot["tags"] if "=" in tag)
        assert tags["domain"] == domains[tags["name"]], snapshot["tags"]
    for image in ("rbd/lab-off-a", "rbd/lab-guest-a", "rbd/lab-guest-b"):
        assert restic_owned_snapshots(image) == [], image


def test_a_script_in_the_originals_style_runs_on_compat(setup: dict[str, Path]) -> None:
    domains = lab_domains()
    script = setup["folder"] / "nightly.py"
    script.write_text(SCRIPT)
    before = len(restic_snapshots(setup["repo"], setup["password_file"]))
    head = rbd_export_sha256("rbd/lab-off-a")
    proc = run([sys.executable, str(script)], check=False, cwd=setup["folder"], env=clean_env(), timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()

    # list_virtrbd_images: one record per RBD disk, in the original's shape, key redacted.
    images = [line.split(" ") for line in lines if line.startswith("image ")]
    by_name = {fields[4]: fields for fields in images}
    assert {"lab-off-a", "lab-guest-a", "lab-guest-b"} <= set(by_name)
    _, name, uuid, pool, image, username, secret, snapshot_name = by_name["lab-off-a"]
    assert (name, uuid, pool, username, secret) == ("lab-off", domains["lab-off"], "rbd", "libvirt", "<redacted>")
    assert snapshot_name == "''", "empty until the script names the snapshot, as in the original"
    assert "Ignoring non-network disk for domain: lab-local" in lines

    # process_backup: (ok, message) as the original's.
    uuid_off = domains["lab-off"]
    assert f"process_backup lab-off True No error occurred for domain {uuid_off}" in lines
    # run_parallel: the original's lines for every domain, then the results.
    assert f"Backup successful: No error occurred for domain {domains['lab-guest']}" in lines
    (result_line,) = [line for line in lines if line.startswith("run_parallel ")]
    assert f"(True, 'No error occurred for domain {uuid_off}')" in result_line
    assert "False" not in result_line

    # Into restic: lab-off twice (process_backup, then run_parallel), the same content as the image.
    after = restic_snapshots(setup["repo"], setup["password_file"])[before:]
    assert sorted(s["paths"][0] for s in after).count("/lab-off-a.img") == 2
    assert rbd_export_sha256("rbd/lab-off-a") == head
    for image in ("rbd/lab-off-a", "rbd/lab-guest-a", "rbd/lab-guest-b"):
        assert restic_owned_snapshots(image) == [], image

    # The Ceph key never reaches the output (the original printed it in records).
    key = virsh("secret-get-value", os.environ["LAB_SECRET_UUID"]).stdout.strip()
    assert key
    assert key not in proc.stdout
    assert key not in proc.stderr
    assert PASSWORD not in proc.stdout + proc.stderr


def test_secrets_are_revealed_only_when_asked(setup: dict[str, Path]) -> None:
    key = virsh("secret-get-value", os.environ["LAB_SECRET_UUID"]).stdout.strip()
    code = (
        "from virt_rbd_backup.compat import virt\n"
        "import base64\n"
        "connection = virt.VirtConnection(reveal_secrets=True)\n"
        "connection.open()\n"
        "image = [i for i in connection.list_virtrbd_images() if i.name == 'lab-off-a'][0]\n"
        "print('secret', base64.b64encode(image.secret).decode())\n"
        "print('repr', repr(image))\n"
    )
    proc = run([sys.executable, "-c", code], cwd=setup["folder"])
    lines = proc.stdout.splitlines()
    assert f"secret {key}" in lines
    (repr_line,) = [line for line in lines if line.startswith("repr ")]
    assert key not in repr_line
