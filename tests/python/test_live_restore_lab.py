"""Live restore (`restore --define NAME --live`, issue 19) against the lab: the new domain boots
on the backup served by the tool, libvirt copies it into new RBD images, and it ends persistent
on plain RBD images with nothing left of the server or the overlays; what the guest writes
while its disks are being copied is on those images after a power-off; a damaged backup block
fails the copy and leaves nothing; Ctrl-C in the middle leaves nothing at all.

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
    FaultRecord,
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


def live_restore_process(repo: Path, name: str, original: str, pause: str | None = None) -> subprocess.Popen[str]:
    """`restore --define NAME --live` of `original`'s latest backup, started in the background."""
    env = {**os.environ, "VIRT_RBD_BACKUP_TEST_PAUSE": pause} if pause else dict(os.environ)
    argv = [sys.executable, "-m", "virt_rbd_backup", "restore", "--repo", str(repo)]
    argv += ["--define", name, "--live", original]
    return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def lines_in_guest_file(domain: str, path: str) -> int:
    return int(guest_exec(domain, f"cat {path} 2>/dev/null | wc -l").strip() or 0)


# Writes 60 files of 256 KiB (15 MiB: the 64 MiB filesystem holds 20 MiB already), one a second or so, each fsynced and then its checksum appended (and fsynced) to `sums`:
# a checksum in `sums` promises its file reached the disk. Detached from guest-exec's pipes.
GUEST_WRITER = (
    "cd /mnt/a && rm -f w* sums done && "
    "( i=0; while [ $i -lt 60 ]; do i=$((i+1)); "
    "dd if=/dev/urandom of=w$i bs=64k count=4 2>/dev/null && sync && sha256sum w$i >> sums && sync; "
    "sleep 1; done; touch done; sync ) </dev/null >/dev/null 2>&1 &"
)


def test_what_the_guest_writes_during_the_copy_survives_a_power_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The guest writes files (each fsynced, then its checksum recorded) while libvirt copies its
    disks from the backup and through the pivot; after the restore the domain is powered off
    (`virsh destroy`: nothing but what reached the RBD images counts) and started again, and
    every recorded file is there with its checksum."""
    monkeypatch.setenv("VIRT_RBD_BACKUP_RUNTIME_DIR", "/run/virt-rbd-backup-test")
    repo = tmp_path / "repo"
    with guest_on_vda_only(tmp_path) as (original, _):
        snapshots = backup_of(repo, original)
        name = f"{original}-busy"
        with removed_at_end(name) as images:
            # The copies wait 40 s after they started: the guest boots on the backup and starts
            # writing, for about a minute: before the copies end, through the pivot and after it.
            proc = live_restore_process(repo, name, original, pause="live-copying:40")
            try:
                wait_for(lambda: name in virsh("list", "--name").stdout.split(), 120, f"{name} running on the backup")
                booting = time.monotonic()
                wait_for(lambda: agent_answers(name), 35, f"{name}'s guest agent, booted on the backup")
                print(f"the guest's agent answered {time.monotonic() - booting:.1f} s after the domain ran")
                guest_exec(name, GUEST_WRITER)
                wait_for(lambda: lines_in_guest_file(name, "/mnt/a/sums") >= 2, 40, "the guest's first writes")
                assert proc.poll() is None, "the writes happened while the disks were being copied"
                out, err = proc.communicate(timeout=300)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.communicate()
            assert proc.returncode == 0, out + err
            written_while_copying = lines_in_guest_file(name, "/mnt/a/sums")
            wait_for(
                lambda: guest_exec(name, "test -f /mnt/a/done && echo yes || true").strip() == "yes", 180, "the writer"
            )
            assert lines_in_guest_file(name, "/mnt/a/sums") == 60, "every write succeeded in the guest"
            assert written_while_copying < 60, "the writes went on after the pivot"
            assert "nbd" not in virsh("dumpxml", name).stdout
            virsh("destroy", name)
            virsh("start", name)
            wait_for(lambda: agent_answers(name), 120, f"{name}'s guest agent after the power-off")
            assert lines_in_guest_file(name, "/mnt/a/sums") == 60
            checked = guest_exec(name, "cd /mnt/a && sha256sum -c sums")
            assert checked.count(": OK") == 60, checked
            # vdb, never written by the guest: byte for byte the backup's.
            assert rbd_export_sha256(images[1]) == rbd_export_sha256(snapshots["vdb"])
            print(f"{written_while_copying} of 60 files were written before the restore ended, the rest after")


def test_a_damaged_backup_block_fails_the_copy_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fault: FaultRecord
) -> None:
    """A byte flipped in vdb's full (a block the guest never reads, so it boots): the server
    answers the copy's read of that block with an I/O error, the copy stops, and the restore
    exits 1 saying which disk, with no domain, image, socket or overlay left."""
    monkeypatch.setenv("VIRT_RBD_BACKUP_RUNTIME_DIR", "/run/virt-rbd-backup-test")
    repo = tmp_path / "repo"
    with guest_on_vda_only(tmp_path) as (original, original_images):
        backup_of(repo, original)
        [raw] = list(repo.glob("*/*/vdb.raw"))
        with raw.open("r+b") as f:
            f.seek(8 << 20)  # inside the 20 MiB random file make_image puts in the filesystem
            byte = f.read(1)
            assert byte, "the full holds data at 8 MiB"
            f.seek(8 << 20)
            f.write(bytes([byte[0] ^ 0xFF]))
        fault.injected = (
            "one byte flipped at offset 8 MiB of vdb's full (a disk the guest does not mount) before a live restore"
        )
        name = f"{original}-bad"
        with removed_at_end(name) as images:
            proc = live_restore_process(repo, name, original)
            out, err = proc.communicate(timeout=300)
            assert proc.returncode == 1, out + err
            assert f"live restore of {name} failed: the block copy of vdb stopped" in err, err
            assert "reads of the backup's data failed their checks" in err and "verify" in err, err
            assert "everything it made is undone: no domain is defined" in err, "said after the undo: " + err
            assert f"{raw}" in err and "does not match its checksum" in err, "the log names the damaged file: " + err
            assert virsh("dominfo", name, check=False).returncode != 0, "no domain left, running or defined"
            assert not any(image_exists(i) for i in images), "the new images are removed"
            assert not Path(f"/run/virt-rbd-backup-test/live/{name}").exists(), "overlays and sockets removed"
        fault.outcome = "the copy of vdb stops on the server's EIO; exit 1 naming vdb, the file and `verify`; no domain, image, socket or overlay left"
        # Measured, not assumed: snapshots left on the original's images, frozen guests; and
        # verify, which must find the injected damage and nothing else.
        fault.measure(repo, original_images)
        verified = cli("verify", "--repo", str(repo))
        said = verified.stdout + verified.stderr
        only_the_flip = verified.returncode == 1 and "vdb.raw" in said and "vda.raw" not in said
        fault.data_lost = (
            "none beyond the flipped block (verify exit 1 naming vdb.raw only)"
            if only_the_flip
            else f"verify exit {verified.returncode}: {said.strip()[-200:]}"
        )
