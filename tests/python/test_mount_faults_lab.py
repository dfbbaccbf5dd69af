"""`umount` after the process serving a `mount` was killed (issue 19): SIGKILL leaves a
filesystem mounted on a loop device that reads a FUSE file whose server is dead; `umount
MOUNTPOINT` must still undo all of it and say what it did. And `umount` of a folder that was
never mounted is a clear error.

Independent truths: the kernel's mount table (/proc/self/mountinfo, which also lists a dead FUSE
mount that `stat` cannot reach), `losetup --list`, the runtime folder on disk. Each test uses its
own runtime folder (VIRT_RBD_BACKUP_RUNTIME_DIR) so that no other mount is touched."""

from __future__ import annotations

import errno
import json
import os
import signal
import time
from pathlib import Path

import pytest

from lab_support import FaultRecord, cli, run, scratch_domain

pytestmark = pytest.mark.lab


def mounted_at(path: str) -> list[str]:
    """The mount points in the kernel's table that are `path` or below it."""
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split(" ")[4].replace("\\040", " ")
        if point == path or point.startswith(path + "/"):
            points.append(point)
    return points


def loop_devices() -> dict[str, str]:
    listed = json.loads(run(["losetup", "--list", "--json"]).stdout or '{"loopdevices": []}')
    return {d["name"]: d.get("back-file") or "" for d in listed.get("loopdevices", [])}


def process_gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_umount_undoes_a_mount_whose_server_was_sigkilled(
    tmp_path: Path, fault: FaultRecord, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime = tmp_path / "run"
    monkeypatch.setenv("VIRT_RBD_BACKUP_RUNTIME_DIR", str(runtime))
    repo = tmp_path / "repo"
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    with scratch_domain(tmp_path, running=False, prefix="vrb-mnt") as dom:
        backed = cli("backup", "--repo", str(repo), "--domain", dom.name)
        assert backed.returncode == 0, backed.stderr + backed.stdout
        mounted = cli("mount", "--repo", str(repo), "--disk", "vda", "--json", dom.name, str(mountpoint))
        assert mounted.returncode == 0, mounted.stderr + mounted.stdout
        state = mounted.json()
        try:
            assert (mountpoint / "random.bin").stat().st_size == 20 * 1024 * 1024
            os.kill(state["pid"], signal.SIGKILL)
            deadline = time.monotonic() + 30
            while not process_gone(state["pid"]) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert process_gone(state["pid"])
            fault.injected = "SIGKILL of the mount's serving process (virt-rbd-backup mount --foreground)"
            # What SIGKILL leaves: the filesystem, the loop device on the dead FUSE file.
            assert mounted_at(str(mountpoint)) == [str(mountpoint)]
            assert mounted_at(state["fuse_dir"]) == [state["fuse_dir"]]
            assert state["loop_device"] in loop_devices()
            # Its server is dead: ENOTCONN, or ECONNABORTED when the kernel aborted the
            # connection first (both seen on the lab, depending on timing).
            with pytest.raises(
                OSError, match=r"Transport endpoint is not connected|Software caused connection abort"
            ) as dead:
                os.stat(Path(state["fuse_dir"]) / "vda")
            assert dead.value.errno in (errno.ENOTCONN, errno.ECONNABORTED), dead.value
        finally:
            unmounted = cli("umount", str(mountpoint))
        assert unmounted.returncode == 0, unmounted.stderr + unmounted.stdout
        said = unmounted.stdout
        assert "was gone" in said and f"detached {state['loop_device']}" in said, said
        assert "unmounted the FUSE folder" in said and "removed the state" in said, said
        assert mounted_at(str(mountpoint)) == [] and mounted_at(str(runtime)) == []
        deadline = time.monotonic() + 10  # a lazy unmount lets the loop device go a moment later
        while state["loop_device"] in loop_devices() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert state["loop_device"] not in loop_devices(), loop_devices()
        assert not any(back.startswith(str(runtime)) for back in loop_devices().values())
        assert list((runtime / "mounts").iterdir()) == [], "no state nor log left"
        fault.outcome = "umount exit 0: " + "; ".join(line.strip() for line in said.splitlines()[1:])
        fault.leaks = 0
        fault.data_lost = "none (read-only access; the repository is not written)"

        again = cli("umount", str(mountpoint))
        assert again.returncode == 2 and "is not mounted" in again.stderr, again.stderr


def test_umount_of_a_folder_never_mounted_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIRT_RBD_BACKUP_RUNTIME_DIR", str(tmp_path / "run"))
    folder = tmp_path / "never"
    folder.mkdir()
    result = cli("umount", str(folder))
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"{folder} is not mounted" in result.stderr, result.stderr
    # A mount point that is not ours is named as such, and left alone.
    result = cli("umount", "/proc")
    assert result.returncode == 2 and "not by virt-rbd-backup" in result.stderr, result.stderr
    assert mounted_at("/proc")
