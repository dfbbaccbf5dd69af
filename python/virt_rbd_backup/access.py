"""Instant access to backups: serve a disk over NBD, or mount its filesystem, without a restore.

:func:`serve` starts the core's read-only NBD server for one disk of a backup and returns a
:class:`DiskServer` (its ``address`` is the NBD URI; ``close()`` stops it). :func:`mount` makes
the disk a file in a FUSE filesystem (the core's, verified block by block like the NBD
server), attaches it to a loop device (``losetup --read-only --partscan``), finds the
filesystem on the device or its partitions (``blkid``) and mounts it read-only; a background
process (``virt-rbd-backup mount --foreground``) keeps the FUSE file served, and its state
(pid, loop device, FUSE folder) lives in ``$VIRT_RBD_BACKUP_RUNTIME_DIR/mounts/`` (default
``/run/virt-rbd-backup``) so that :func:`umount` finds it. The kernel's NBD client
(``nbd-client``, ``qemu-nbd --connect``) is not used: the hosts this was built on have no
``nbd`` module; FUSE and loop devices are everywhere.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from . import _native
from ._native import UsageError

if TYPE_CHECKING:
    from . import RepoAccess

__all__ = [
    "DiskServer",
    "MountEntry",
    "MountState",
    "default_listen",
    "mount",
    "mount_status",
    "parse_mountinfo",
    "serve",
    "umount",
]

DEFAULT_RUNTIME_DIR = "/run/virt-rbd-backup"
#: How long :func:`mount` waits for its background process to have the filesystem mounted.
MOUNT_TIMEOUT = 120.0


def _runtime_dir() -> Path:
    return Path(os.environ.get("VIRT_RBD_BACKUP_RUNTIME_DIR") or DEFAULT_RUNTIME_DIR)


def default_listen(domain: str, disk: str | None) -> str:
    """``unix:RUNTIME_DIR/serve/DOMAIN-DISK.sock``: where :func:`serve` listens by default."""
    name = f"{domain}-{disk or 'disk'}".replace("/", "_")
    return f"unix:{_runtime_dir() / 'serve' / name}.sock"


class DiskServer:
    """A backup's disk being served (NBD, or the FUSE file of a mount) until :meth:`close`.

    Usable as a context manager. ``info`` holds the domain, uuid, backup_id, disk, size (bytes),
    chain (the backup ids whose files make the image, full first) and warnings.
    """

    def __init__(self, native: _native.DiskServer) -> None:
        self._native = native
        self.info: dict[str, Any] = native.info()

    @property
    def address(self) -> str:
        """The NBD URI (``nbd+unix:///vda?socket=PATH``, ``nbd://HOST:PORT/vda``) or the FUSE file."""
        return self._native.address

    @property
    def serving(self) -> bool:
        """Whether it still serves."""
        return self._native.serving

    def close(self) -> None:
        """Stop serving (close connections and remove the socket, or unmount the FUSE file)."""
        self._native.close()

    def __enter__(self) -> DiskServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def serve(
    *,
    repo: str | os.PathLike[str],
    domain: str,
    disk: str | None = None,
    backup: str | None = None,
    listen: str | None = None,
    access: RepoAccess | None = None,
) -> DiskServer:
    """Serve one disk of a backup over NBD, read-only; return the running :class:`DiskServer`.

    ``backup``: an id, or ``None``/``"latest"``. ``disk``: a target such as ``vda`` (``None``:
    the backup's only disk). ``listen``: ``unix:PATH`` or ``HOST:PORT`` (default
    :func:`default_listen`; TCP has no TLS nor authentication). Each 4 MiB block is checked
    against the backup's block table as it is read: a block that does not match is an I/O
    error (EIO) to the client and a log line naming the file and offset, never other bytes.
    ``access`` opens a block repository (``s3://`` or a folder of that layout), whose backups
    are served from their block lists, each block checked against its id and block table.
    """
    address = listen or default_listen(domain, disk)
    native = _native.serve(
        os.fspath(repo), domain, address, disk=disk, backup=backup, access=None if access is None else access.to_dict()
    )
    return DiskServer(native)


@dataclasses.dataclass
class MountState:
    """A mounted backup, as recorded in ``RUNTIME_DIR/mounts/KEY/state.json``."""

    mountpoint: str
    pid: int
    fuse_dir: str
    loop_device: str | None = None
    device: str | None = None
    fs_type: str | None = None
    domain: str = ""
    disk: str = ""
    backup_id: str = ""
    ready: bool = False
    #: What :func:`umount` did, in order (empty in the state file).
    undone: list[str] = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The state as a JSON-shaped dict."""
        return dataclasses.asdict(self)


def _state_dir(mountpoint: str | os.PathLike[str]) -> Path:
    real = os.path.realpath(os.fspath(mountpoint))
    return _runtime_dir() / "mounts" / hashlib.sha256(real.encode()).hexdigest()[:16]


def _read_state(folder: Path) -> MountState | None:
    try:
        raw = json.loads((folder / "state.json").read_text())
    except (OSError, ValueError):
        return None
    fields = {f.name for f in dataclasses.fields(MountState)}
    try:
        return MountState(**{k: v for k, v in raw.items() if k in fields})
    except TypeError:
        return None


def _write_state(folder: Path, state: MountState) -> None:
    tmp = folder / "state.json.tmp"
    tmp.write_text(json.dumps(state.to_dict()))
    os.replace(tmp, folder / "state.json")


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, killed but not yet reaped, does not)."""
    try:
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return False
    except (OSError, IndexError):
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _tool(name: str, why: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/bin:/bin")
    if path is None:
        raise UsageError(f"{name} is not installed; it is needed to {why} (Debian: util-linux / mount)")
    return path


def _run(argv: list[str], what: str) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise UsageError(f"cannot {what}: {' '.join(argv)} failed: {done.stderr.strip() or done.returncode}")
    return done.stdout.strip()


def _fs_type(device: str) -> str | None:
    blkid = _tool("blkid", "find the filesystem")
    done = subprocess.run(
        [blkid, "-p", "-o", "value", "-s", "TYPE", device], capture_output=True, text=True, check=False
    )
    value = done.stdout.strip()
    return value or None


def _partitions(loop_device: str) -> list[str]:
    name = Path(loop_device).name
    sysfs = Path("/sys/block") / name
    # Partition nodes appear a moment after --partscan (devtmpfs); wait for sysfs to settle.
    for _ in range(20):
        parts = sorted(p.name for p in sysfs.glob(f"{name}p*"))
        if parts and all(Path("/dev", p).exists() for p in parts):
            return [f"/dev/{p}" for p in sorted(parts, key=lambda n: int(n.rsplit("p", 1)[1]))]
        time.sleep(0.05)
    return []


def _find_filesystem(loop_device: str, partition: int | None) -> tuple[str, str]:
    """The device holding the filesystem (the whole device or a partition) and its type."""
    if partition is not None:
        device = f"{loop_device}p{partition}"
        _partitions(loop_device)
        if not Path(device).exists():
            raise UsageError(f"the disk has no partition {partition} ({device} does not exist)")
        kind = _fs_type(device)
        if kind is None:
            raise UsageError(f"no filesystem found on partition {partition} of the disk")
        return device, kind
    kind = _fs_type(loop_device)
    if kind is not None and kind not in ("dos", "gpt", "PMBR"):
        return loop_device, kind
    found = [(p, _fs_type(p)) for p in _partitions(loop_device)]
    with_fs = [(p, k) for p, k in found if k is not None and k != "swap"]
    if not with_fs:
        raise UsageError("no filesystem found on the disk or its partitions (blkid); serve it with `serve` instead")
    return with_fs[0]


def _mount_options(fs_type: str) -> str:
    # Never replay a journal: the device is read-only, and replay would write.
    if fs_type in ("ext3", "ext4"):
        return "ro,noload,nodev,nosuid,noexec"
    if fs_type == "xfs":
        return "ro,norecovery,nodev,nosuid,noexec"
    return "ro,nodev,nosuid,noexec"


@dataclasses.dataclass(frozen=True)
class MountEntry:
    """One line of ``/proc/self/mountinfo``: where, what type, from which source."""

    mountpoint: str
    fs_type: str
    source: str


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo (octal).
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def parse_mountinfo(text: str) -> list[MountEntry]:
    """The mounts of a ``/proc/PID/mountinfo`` text, in order (the last one at a path is on top).

    Unlike :func:`os.path.ismount`, this sees a FUSE mount whose server died (``stat`` of it
    fails with ENOTCONN or ECONNABORTED, so ``ismount`` says no).
    """
    entries: list[MountEntry] = []
    for line in text.splitlines():
        fields = line.split(" ")
        if "-" not in fields:
            continue
        dash = fields.index("-")
        if dash < 5 or len(fields) < dash + 3:
            continue
        entries.append(MountEntry(_unescape(fields[4]), fields[dash + 1], _unescape(fields[dash + 2])))
    return entries


def _mounts() -> list[MountEntry]:
    try:
        return parse_mountinfo(Path("/proc/self/mountinfo").read_text())
    except OSError:
        return []


def _mounted(path: str) -> MountEntry | None:
    """The top mount at ``path`` (a real path), or ``None``."""
    found = [m for m in _mounts() if m.mountpoint == path]
    return found[-1] if found else None


def _loop_backing_file(loop_device: str) -> str | None:
    """The file a loop device reads (sysfs), or ``None`` if the device is not attached."""
    try:
        text = (Path("/sys/block") / Path(loop_device).name / "loop" / "backing_file").read_text()
    except OSError:
        return None
    return text.strip() or None


def _recover_state(target: str, folder: Path) -> MountState | None:
    """Rebuild the state of a mount whose state file is gone, from the kernel's tables.

    Found when ``target`` is mounted from a loop device whose backing file is this mount's FUSE
    file.
    """
    entry = _mounted(target)
    if entry is None or not entry.source.startswith("/dev/loop"):
        return None
    loop_device = re.sub(r"p[0-9]+$", "", entry.source)
    backing = _loop_backing_file(loop_device)
    fuse_dir = folder / "fuse"
    if backing is None or not backing.startswith(str(fuse_dir) + "/"):
        return None
    return MountState(
        mountpoint=target,
        pid=0,
        fuse_dir=str(fuse_dir),
        loop_device=loop_device,
        device=entry.source,
        fs_type=entry.fs_type,
    )


def _quiet(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=False)


def _cleanup(state: MountState, folder: Path, server: DiskServer | None, undone: list[str] | None = None) -> list[str]:
    """Undo a mount in reverse order; return what could not be undone.

    ``server`` is ``None`` when the serving process is gone (SIGKILL): then the filesystem and
    the FUSE folder are unmounted lazily if a plain unmount fails, since the file under them
    can no longer be read. What was done is appended to ``undone``. The kernel's tables
    (``/proc/self/mountinfo``, the loop device's backing file) decide what is left to undo,
    never ``stat`` of a path (which fails on a dead FUSE mount).
    """
    undone = [] if undone is None else undone
    problems: list[str] = []
    if state.device is not None and _mounted(state.mountpoint) is not None:
        done = _quiet(["umount", state.mountpoint])
        if done.returncode == 0:
            undone.append(f"unmounted {state.mountpoint}")
        elif server is None and _quiet(["umount", "-l", state.mountpoint]).returncode == 0:
            undone.append(f"unmounted {state.mountpoint} lazily (umount -l: {done.stderr.strip()})")
        else:
            problems.append(f"umount {state.mountpoint}: {done.stderr.strip()}")
    backing = None if state.loop_device is None else _loop_backing_file(state.loop_device)
    if state.loop_device is not None and backing is not None and backing.startswith(state.fuse_dir + "/"):
        done = _quiet(["losetup", "-d", state.loop_device])
        if done.returncode == 0:
            undone.append(f"detached {state.loop_device}")
        elif "No such device" not in done.stderr:
            problems.append(f"losetup -d {state.loop_device}: {done.stderr.strip()}")
    if server is not None:
        try:
            server.close()
        except Exception as exc:
            problems.append(f"FUSE unmount of {state.fuse_dir}: {exc}")
    elif _mounted(state.fuse_dir) is not None:
        if _quiet(["umount", state.fuse_dir]).returncode == 0:
            undone.append(f"unmounted the FUSE folder {state.fuse_dir}")
        else:
            done = _quiet(["umount", "-l", state.fuse_dir])
            if done.returncode == 0:
                undone.append(f"unmounted the FUSE folder {state.fuse_dir} lazily (its server is gone)")
            else:
                problems.append(f"umount -l {state.fuse_dir}: {done.stderr.strip()}")
    if not problems and folder.exists():
        shutil.rmtree(folder, ignore_errors=True)
        undone.append(f"removed the state {folder}")
    return problems


def mount_foreground(
    *,
    repo: str | os.PathLike[str],
    domain: str,
    mountpoint: str | os.PathLike[str],
    disk: str | None = None,
    backup: str | None = None,
    partition: int | None = None,
    ready: Any = None,
    access: RepoAccess | None = None,
) -> None:
    """Mount a backup's filesystem and keep serving it in this process until SIGTERM/SIGINT.

    ``ready``, if given, is called with the :class:`MountState` once mounted. Everything is
    undone (filesystem, loop device, FUSE file, state) when this returns or raises.
    """
    target = os.path.realpath(os.fspath(mountpoint))
    if not os.path.isdir(target):
        raise UsageError(f"{target} is not a folder; create it first")
    if os.path.ismount(target):
        raise UsageError(f"{target} is already a mount point")
    if not Path("/dev/fuse").exists():
        raise UsageError("/dev/fuse is missing: this kernel has no FUSE (modprobe fuse)")
    if not Path("/dev/loop-control").exists():
        raise UsageError("/dev/loop-control is missing: this kernel has no loop devices (modprobe loop)")
    losetup = _tool("losetup", "attach the disk to a loop device")
    mount_tool = _tool("mount", "mount the filesystem")
    folder = _state_dir(target)
    previous = _read_state(folder)
    if previous is not None and _alive(previous.pid):
        raise UsageError(f"{target} is already served by virt-rbd-backup (pid {previous.pid}); umount it first")
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(mode=0o700, parents=True)
    fuse_dir = folder / "fuse"
    fuse_dir.mkdir(mode=0o700)
    state = MountState(mountpoint=target, pid=os.getpid(), fuse_dir=str(fuse_dir))
    _write_state(folder, state)
    server: DiskServer | None = None
    try:
        native = _native.fuse_disk(
            os.fspath(repo),
            domain,
            str(fuse_dir),
            disk=disk,
            backup=backup,
            access=None if access is None else access.to_dict(),
        )
        server = DiskServer(native)
        state.domain, state.disk = server.info["domain"], server.info["disk"]
        state.backup_id = server.info["backup_id"]
        state.loop_device = _run(
            [losetup, "--find", "--show", "--read-only", "--partscan", server.address],
            "attach the disk to a loop device",
        )
        _write_state(folder, state)
        device, fs_type = _find_filesystem(state.loop_device, partition)
        _run(
            [mount_tool, "-t", fs_type, "-o", _mount_options(fs_type), device, target],
            f"mount the {fs_type} filesystem of {device}",
        )
        state.device, state.fs_type, state.ready = device, fs_type, True
        _write_state(folder, state)
        if ready is not None:
            ready(state)
        stop = {"now": False}

        def _stop(_signum: int, _frame: object) -> None:
            stop["now"] = True

        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, _stop)
        while not stop["now"] and os.path.ismount(target):
            time.sleep(0.2)
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN)  # finish the clean-up whatever comes
        problems = _cleanup(state, folder, server)
        for problem in problems:
            print(f"virt-rbd-backup mount: could not undo: {problem}", file=sys.stderr)


def _access_flags(access: RepoAccess | None) -> list[str]:
    """Return the command-line flags that give ``access`` to the background process.

    No secret is among them: keys stay in their files.
    """
    flags: list[str] = []
    for name, value in (access.to_dict() if access is not None else {}).items():
        flag = "--repo-key-file" if name == "key_file" else "--" + name.replace("_", "-")
        flags += [flag, str(value)]
    return flags


def mount(
    *,
    repo: str | os.PathLike[str],
    domain: str,
    mountpoint: str | os.PathLike[str],
    disk: str | None = None,
    backup: str | None = None,
    partition: int | None = None,
    timeout: float = MOUNT_TIMEOUT,
    access: RepoAccess | None = None,
) -> MountState:
    """Mount the filesystem of one disk of a backup read-only at ``mountpoint``, in the background.

    Starts ``virt-rbd-backup mount --foreground`` as a process of its own session (it serves
    the FUSE file the loop device reads) and returns its :class:`MountState` once the
    filesystem is mounted. ``partition``: the partition number (default: the whole device if it
    holds a filesystem, else the first partition that does). Undo with :func:`umount`. A block
    that fails its checksum reads as EIO through the filesystem, never as other bytes.
    """
    target = os.path.realpath(os.fspath(mountpoint))
    folder = _state_dir(target)
    argv = [sys.executable, "-m", "virt_rbd_backup", "mount", "--foreground", "--repo", os.fspath(repo)]
    if disk is not None:
        argv += ["--disk", disk]
    if backup is not None:
        argv += ["--backup", backup]
    if partition is not None:
        argv += ["--partition", str(partition)]
    argv += _access_flags(access)
    argv += [domain, target]
    log_path = _runtime_dir() / "mounts" / f"{folder.name}.log"
    log_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with open(log_path, "w") as log:
        child = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = _read_state(folder)
        if state is not None and state.ready and state.pid == child.pid:
            return state
        if child.poll() is not None:
            text = log_path.read_text().strip()
            raise UsageError(f"mount failed: {text.splitlines()[-1] if text else f'exit status {child.returncode}'}")
        time.sleep(0.1)
    child.terminate()
    raise UsageError(f"mount did not complete within {timeout:.0f} s (log: {log_path})")


def mount_status(mountpoint: str | os.PathLike[str]) -> MountState | None:
    """The :class:`MountState` of a mount made by :func:`mount` and still served at ``mountpoint``.

    ``None`` when nothing of ours is mounted there. A mount whose serving process is gone
    (killed) is not served: it is returned with ``ready`` false, for :func:`umount` to undo.
    """
    target = os.path.realpath(os.fspath(mountpoint))
    folder = _state_dir(target)
    state = _read_state(folder) or _recover_state(target, folder)
    if state is None:
        return None
    if not (state.ready and state.pid > 0 and _alive(state.pid) and _mounted(target) is not None):
        state.ready = False
    return state


def umount(mountpoint: str | os.PathLike[str], *, timeout: float = 30.0) -> MountState:
    """Undo :func:`mount`: unmount the filesystem, detach the loop device, stop the server.

    Also after the serving process was killed (SIGKILL, OOM): the filesystem (lazily if it
    must), the loop device and the dead FUSE mount are undone from the state in
    ``RUNTIME_DIR/mounts`` and the kernel's mount table, and the state removed; if the state
    file is gone too, a mount whose loop device reads this mount point's FUSE file is still
    found. The returned state's ``undone`` lists what was done, in order.
    """
    target = os.path.realpath(os.fspath(mountpoint))
    folder = _state_dir(target)
    state = _read_state(folder)
    undone: list[str] = []
    if state is None:
        state = _recover_state(target, folder)
        if state is None:
            if _mounted(target) is not None:
                raise UsageError(
                    f"{target} is mounted, but not by virt-rbd-backup mount (no state in {folder.parent}); "
                    "use umount(8)"
                )
            raise UsageError(
                f"{target} is not mounted (nothing there, and no virt-rbd-backup state in {folder.parent})"
            )
        undone.append(f"no state file: found the mount of {state.loop_device} in /proc/self/mountinfo")
    state.undone = undone
    serving = 0 < state.pid != os.getpid() and _alive(state.pid)
    if serving and _mounted(target) is not None:
        done = _quiet(["umount", target])
        if done.returncode != 0:
            raise UsageError(f"cannot unmount {target}: {done.stderr.strip()} (is it in use?)")
        undone.append(f"unmounted {target}")
    problems: list[str] = []
    if serving:
        os.kill(state.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _alive(state.pid) and time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(state.pid, os.WNOHANG)
            time.sleep(0.1)
        if _alive(state.pid):
            problems.append(f"the serving process {state.pid} did not stop")
        else:
            undone.append(f"stopped the serving process {state.pid} (it undoes its loop device and FUSE file)")
    elif state.pid > 0:
        undone.append(f"the serving process {state.pid} was gone (killed?): undoing what it left")
    if not problems:
        # What a dead process left, or what a stopped one failed to undo.
        problems += _cleanup(state, folder, None, undone)
    if problems:
        raise UsageError("; ".join(problems))
    (folder.parent / f"{folder.name}.log").unlink(missing_ok=True)
    return state
