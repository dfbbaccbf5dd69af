"""Live restore (`restore --define NAME --live`, issue 19) against the lab: the new domain boots
on the backup served by the tool, libvirt copies it into new RBD images, and it ends persistent
on plain RBD images with nothing left of the server or the overlays; Ctrl-C in the middle
leaves nothing at all.

Independent truths: the guest itself (its agent answers and reads a file it wrote before the
backup), `virsh domblklist`/`dumpxml`/`dominfo`, `rbd export` of the new images against `rbd
export` of the snapshot the backup read, `rbd info` and `virsh` for leftovers. The scratch
domain mounts only vda (`lab_mounts=vda`), so its vdb is never written by the guest and must
come out byte for byte the backup's."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from lab_support import (
    agent_answers,
    cli,
    domain_xml,
    guest_exec,
    make_image,
    rbd,
    rbd_export_sha256,
    remove_image,
    require_lab,
    virsh,
    wait_for,
)

pytestmark = pytest.mark.lab


@contextmanager
def guest_on_vda_only(tmp_path: Path) -> Iterator[tuple[str, list[str]]]:
    """A running scratch domain whose guest mounts vda only (vdb stays as imported)."""
    require_lab()
    name = f"vrb-live-{uuid.uuid4().hex[:8]}"
    images = [f"rbd/{name}-a", f"rbd/{name}-b"]
    xml = tmp_path / f"{name}.xml"
    try:
        for image in images:
            make_image(image, tmp_path)
        xml.write_text(domain_xml(name, images, True).replace("lab_mounts=vda,vdb", "lab_mounts=vda"))
        virsh("define", str(xml))
        virsh("start", name)
        wait_for(lambda: agent_answers(name), 90, f"{name}'s guest agent")
        yield name, images
    finally:
        virsh("destroy", name, check=False)
        virsh("undefine", name, check=False)
        for image in images:
            remove_image(image)


@contextmanager
def removed_at_end(name: str) -> Iterator[list[str]]:
    """The restored domain `name` and its images, removed at the end whatever happened."""
    images = [f"rbd/{name}-vda", f"rbd/{name}-vdb"]
    try:
        yield images
    finally:
        virsh("destroy", name, check=False)
        virsh("undefine", name, check=False)
        for image in images:
            remove_image(image)


def backup_of(repo: Path, domain: str) -> dict[str, str]:
    """Backs `domain` up; returns the snapshot spec of each disk (target -> pool/image@snap)."""
    result = cli("backup", "--repo", str(repo), "--domain", domain)
    assert result.returncode == 0, result.stderr + result.stdout
    [manifest] = list(repo.glob("*/*/manifest.json"))
    disks = json.loads(manifest.read_text())["disks"]
    return {d["target"]: f"{d['pool']}/{d['image']}@{d['snapshot']['name']}" for d in disks}


def image_exists(image: str) -> bool:
    return rbd("info", image, check=False).returncode == 0


def test_live_restore_boots_on_the_backup_and_ends_on_plain_rbd_images(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VIRT_RBD_BACKUP_RUNTIME_DIR", "/run/virt-rbd-backup-test")
    repo = tmp_path / "repo"
    marker = os.urandom(16).hex()
    with guest_on_vda_only(tmp_path) as (original, _):
        guest_exec(original, f"echo {marker} > /mnt/a/marker.txt && sync")
        snapshots = backup_of(repo, original)
        guest_exec(original, "echo changed-after > /mnt/a/marker.txt && sync")
        name = f"{original}-live"
        with removed_at_end(name) as images:
            started = time.monotonic()
            done = cli("restore", "--repo", str(repo), "--define", name, "--live", "--json", original)
            took = time.monotonic() - started
            assert done.returncode == 0, done.stderr + done.stdout
            report = done.json()
            assert [d["target"] for d in report["disks"]] == [f"rbd:{i}" for i in images]
            # Persistent, running, on plain RBD images only.
            info = virsh("dominfo", name).stdout
            assert "Persistent:     yes" in info and "running" in info, info
            blklist = virsh("domblklist", name).stdout
            assert f"{name}-vda" in blklist and f"{name}-vdb" in blklist, blklist
            live_xml = virsh("dumpxml", name).stdout
            assert "nbd" not in live_xml and "qcow2" not in live_xml, live_xml
            assert "nbd" not in virsh("dumpxml", "--inactive", name).stdout
            assert not Path(f"/run/virt-rbd-backup-test/live/{name}").exists(), "overlays and sockets removed"
            # The guest booted on it and sees what it wrote before the backup.
            wait_for(lambda: agent_answers(name), 120, f"{name}'s guest agent")
            assert guest_exec(name, "cat /mnt/a/marker.txt").strip() == marker
            # vdb, never written by the guest: byte for byte the backup's.
            assert rbd_export_sha256(images[1]) == rbd_export_sha256(snapshots["vdb"])
            print(
                f"live restore: running after {report['boot_seconds']:.2f} s, on RBD after "
                f"{report['total_seconds']:.2f} s (command {took:.2f} s); copies ready after "
                + ", ".join(f"{d['disk']} {d['copy_seconds']:.2f} s" for d in report["disks"])
            )
            refused = cli("restore", "--repo", str(repo), "--define", f"{name}2", "--live", "--force", original)
            assert refused.returncode == 2 and "--force" in refused.stderr, refused.stderr


def test_ctrl_c_during_a_live_restore_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIRT_RBD_BACKUP_RUNTIME_DIR", "/run/virt-rbd-backup-test")
    repo = tmp_path / "repo"
    with guest_on_vda_only(tmp_path) as (original, _):
        backup_of(repo, original)
        name = f"{original}-undo"
        with removed_at_end(name) as images:
            env = {**os.environ, "VIRT_RBD_BACKUP_TEST_PAUSE": "live-copying:30"}
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "virt_rbd_backup",
                    "restore",
                    "--repo",
                    str(repo),
                    "--define",
                    name,
                    "--live",
                    original,
                ],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            wait_for(lambda: name in virsh("list", "--name").stdout.split(), 120, f"{name} running on the backup")
            assert all(image_exists(i) for i in images)
            assert "Persistent:     no" in virsh("dominfo", name).stdout
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=120)
            assert proc.returncode != 0, out + err
            assert virsh("dominfo", name, check=False).returncode != 0, "no domain left, running or defined"
            assert not any(image_exists(i) for i in images), "the new images are removed"
            assert not Path(f"/run/virt-rbd-backup-test/live/{name}").exists(), "overlays and sockets removed"
