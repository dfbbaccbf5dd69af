"""Instant access (src/nbd, src/repo/chain_image.rs, src/fuse, python/virt_rbd_backup/access.py)
against the lab: what `serve` gives over NBD is byte for byte `rbd export` of the backup's
snapshot (a full backup, and the end of a chain of incrementals, one of them zstd), the holes
`nbdinfo --map` reports read as zeros there, a byte flipped in the repository is an I/O error
on the reads of its block and nothing else, and `mount` shows a file a running guest wrote
before its backup.

Independent truths: `rbd export` of the snapshot each manifest records, `qemu-img compare`,
`qemu-io` and `nbdinfo` as NBD clients, the guest's own file. Scratch domains are named
`vrb-nbd-*` and removed at the end."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from lab_support import (
    FaultRecord,
    cli,
    guest_exec,
    rbd,
    run,
    scratch_domain,
)
from test_repo_trust_lab import write_random

pytestmark = pytest.mark.lab

MIB = 1024 * 1024


def backup(repo: Path, domain: str, *extra: str) -> dict[str, Any]:
    result = cli("backup", "--repo", str(repo), "--json", "--domain", domain, *extra)
    assert result.returncode == 0, result.stderr + result.stdout
    report: dict[str, Any] = result.json()
    return report


def manifest_of(repo: Path, backup_id: str) -> dict[str, Any]:
    [path] = list(repo.glob(f"*/{backup_id}/manifest.json"))
    manifest: dict[str, Any] = json.loads(path.read_text())
    return manifest


def latest_id(repo: Path) -> str:
    ids = sorted((json.loads(p.read_text())["sequence"], p.parent.name) for p in repo.glob("*/*/manifest.json"))
    return ids[-1][1]


def export_snapshot(repo: Path, backup_id: str, disk: str, out: Path) -> Path:
    d = next(d for d in manifest_of(repo, backup_id)["disks"] if d["target"] == disk)
    rbd("export", "--no-progress", f"{d['pool']}/{d['image']}@{d['snapshot']['name']}", str(out))
    return out


class Served:
    """`virt-rbd-backup serve` as its own process, as an operator runs it."""

    def __init__(self, repo: Path, domain: str, disk: str, socket: Path, *extra: str) -> None:
        self.socket = socket
        self.uri = f"nbd+unix:///{disk}?socket={socket}"
        self.log = socket.with_suffix(".log")
        started = time.monotonic()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "virt_rbd_backup",
                "serve",
                "--repo",
                str(repo),
                "--disk",
                disk,
                "--listen",
                f"unix:{socket}",
                *extra,
                domain,
            ],
            stdout=subprocess.PIPE,
            stderr=open(self.log, "w"),  # noqa: SIM115 - closed with the process
            text=True,
        )
        assert self.proc.stdout is not None
        self.banner = self.proc.stdout.readline()
        self.start_seconds = time.monotonic() - started
        assert socket.exists(), f"serve did not start: {self.banner} {self.log.read_text()}"

    def stop(self) -> str:
        self.proc.terminate()
        self.proc.wait(timeout=30)
        return self.log.read_text()


def qemu_img_compare(uri: str, raw: Path) -> subprocess.CompletedProcess[str]:
    return run(["qemu-img", "compare", "-f", "raw", "-F", "raw", uri, str(raw)], check=False)


def holes_read_as_zeros(uri: str, raw: Path) -> int:
    """Checks every range `nbdinfo --map` calls a hole against the exported image; returns the
    bytes of holes."""
    mapped = json.loads(run(["nbdinfo", "--map", "--json", uri]).stdout)
    holes = 0
    with raw.open("rb") as f:
        for extent in mapped:
            if extent["type"] & 1:  # hole
                f.seek(extent["offset"])
                left = extent["length"]
                while left:
                    chunk = f.read(min(left, 4 * MIB))
                    assert chunk.count(0) == len(chunk), f"hole at {extent['offset']} holds data"
                    left -= len(chunk)
                holes += extent["length"]
    return holes


def test_serve_matches_rbd_export_for_a_full_and_a_chain_of_incrementals(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    with scratch_domain(tmp_path, running=False, prefix="vrb-nbd") as dom:
        image = dom.images[0]
        # Each snapshot is exported as soon as it is taken: the next backup removes it.
        backup(repo, dom.name)
        full_id = latest_id(repo)
        exports = {full_id: export_snapshot(repo, full_id, "vda", tmp_path / "full.raw")}
        write_random(image, 3 * MIB + 12345, 700_000, tmp_path)  # across a block boundary
        backup(repo, dom.name)
        write_random(image, 40 * MIB, 2 * MIB, tmp_path)  # into what was a hole
        backup(repo, dom.name, "--compress", "zstd")
        last_id = latest_id(repo)
        exports[last_id] = export_snapshot(repo, last_id, "vda", tmp_path / "last.raw")
        assert manifest_of(repo, last_id)["disks"][0]["kind"] == "incremental"
        assert manifest_of(repo, last_id)["disks"][0]["format"].endswith("+zstd")

        for backup_id, label in ((full_id, "full"), (last_id, "end of chain")):
            raw = exports[backup_id]
            served = Served(repo, dom.name, "vda", tmp_path / f"{label.replace(' ', '-')}.sock", "--backup", backup_id)
            try:
                compared = qemu_img_compare(served.uri, raw)
                assert compared.returncode == 0, f"{label}: {compared.stdout} {compared.stderr}"
                holes = holes_read_as_zeros(served.uri, raw)
                # 64 MiB image, 20 MiB of data and the filesystem's metadata: most is holes.
                assert holes >= 24 * MIB, f"{label}: only {holes} bytes of holes reported"
                # A read through a third client, of a range the full backup holds as a hole.
                a = run(["qemu-io", "-r", "-f", "raw", "-c", "read -P 0 60M 1M", served.uri], check=False)
                assert "read 1048576/1048576" in a.stdout, a.stdout + a.stderr
            finally:
                log = served.stop()
            assert "Serving disk vda" in served.banner, served.banner
            print(f"{label}: serve up in {served.start_seconds:.2f} s; log: {log.strip()[-200:]}")
        assert not (tmp_path / "full.sock").exists(), "the socket is removed on exit"


def test_a_flipped_byte_is_an_io_error_on_its_block_only(tmp_path: Path, fault: FaultRecord) -> None:
    repo = tmp_path / "repo"
    with scratch_domain(tmp_path, running=False, prefix="vrb-nbd") as dom:
        backup(repo, dom.name)
        backup_id = latest_id(repo)
        raw_export = export_snapshot(repo, backup_id, "vda", tmp_path / "export.raw")
        [stored] = list(repo.glob(f"*/{backup_id}/vda.raw"))
        # The first 4 MiB block holding data past the superblock: flip one byte of it.
        data = raw_export.read_bytes()
        offset = next(o for o in range(8 * MIB, len(data), 4096) if any(data[o : o + 4096]))
        block = offset // (4 * MIB) * (4 * MIB)
        with stored.open("r+b") as f:
            f.seek(offset)
            byte = f.read(1)
            f.seek(offset)
            f.write(bytes([byte[0] ^ 0x20]))
        fault.injected = f"one byte flipped at offset {offset} of the full backup's vda.raw"

        served = Served(repo, dom.name, "vda", tmp_path / "bad.sock")
        try:
            bad = run(["qemu-io", "-r", "-f", "raw", "-c", f"read {offset} 4096", served.uri], check=False)
            good = run(["qemu-io", "-r", "-f", "raw", "-c", f"read -v {block - 4 * MIB} 512", served.uri], check=False)
            compared = qemu_img_compare(served.uri, raw_export)
        finally:
            log = served.stop()
        assert "Input/output error" in bad.stdout + bad.stderr, bad.stdout + bad.stderr
        assert "read 512/512" in good.stdout, good.stdout + good.stderr
        assert compared.returncode != 0 and "Content mismatch" not in compared.stdout, (
            "a damaged block must be an error, never different data: " + compared.stdout + compared.stderr
        )
        assert str(stored) in log and "does not match its checksum" in log, log

        # The same through the FUSE file that `mount` attaches: EIO from read(2).
        fuse_dir = tmp_path / "fuse"
        fuse_dir.mkdir()
        import virt_rbd_backup._native as native

        server = native.fuse_disk(str(repo), dom.name, str(fuse_dir), disk="vda")
        try:
            with open(server.address, "rb", buffering=0) as f:
                f.seek(block - 4 * MIB)
                assert f.read(4096) == data[block - 4 * MIB : block - 4 * MIB + 4096]
                f.seek(offset)
                with pytest.raises(OSError, match="Input/output error") as err:
                    f.read(4096)
                assert err.value.errno == 5
        finally:
            server.close()
        fault.outcome = "NBD read of the block: EIO (qemu-io), its neighbour reads; FUSE read: EIO; log names the file"
        # Measured, not assumed: snapshots left on the domain's images, frozen guests; and
        # verify, which must find the injected damage and nothing else.
        fault.measure(repo, dom.images)
        verified = cli("verify", "--repo", str(repo))
        said = verified.stdout + verified.stderr
        assert verified.returncode == 1 and str(stored.name) in said and "vdb.raw" not in said, said
        fault.data_lost = (
            "none beyond the flipped block, which is refused, never served as other bytes "
            "(verify exit 1 naming that file)"
        )


def test_mount_shows_a_file_the_guest_wrote_before_the_backup(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    marker = os.urandom(16).hex()
    with scratch_domain(tmp_path, running=True, prefix="vrb-nbd") as dom:
        guest_exec(dom.name, f"echo {marker} > /mnt/a/marker.txt && sync")
        backup(repo, dom.name)
        guest_exec(dom.name, "echo changed-after > /mnt/a/marker.txt && sync")
        started = time.monotonic()
        mounted = cli("mount", "--repo", str(repo), "--disk", "vda", "--json", dom.name, str(mountpoint))
        took = time.monotonic() - started
        assert mounted.returncode == 0, mounted.stderr + mounted.stdout
        state = mounted.json()
        try:
            assert state["fs_type"] == "ext2" and state["loop_device"].startswith("/dev/loop")
            assert (mountpoint / "marker.txt").read_text().strip() == marker
            assert (mountpoint / "random.bin").stat().st_size == 20 * MIB
            # Read-only all the way down.
            with pytest.raises(OSError, match="Read-only file system"):
                (mountpoint / "new.txt").write_text("x")
            again = cli("mount", "--repo", str(repo), "--disk", "vda", dom.name, str(mountpoint))
            assert again.returncode == 2, again.stderr
        finally:
            unmounted = cli("umount", str(mountpoint))
        assert unmounted.returncode == 0, unmounted.stderr
        assert not os.path.ismount(mountpoint)
        losetup = run(["losetup", "--list", "--json"]).stdout
        assert state["loop_device"] not in losetup, losetup
        assert not os.path.ismount(state["fuse_dir"])
        assert not Path(state["fuse_dir"]).parent.exists(), "state folder removed"
        print(f"mount took {took:.2f} s")
    shutil.rmtree(repo, ignore_errors=True)
