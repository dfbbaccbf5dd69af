"""The restore, verify and serve cases of issue 19, against what an operator has without us.

One chain is made once on the fully allocated image (`RestoreChain`): our full backup, then
three times a change of `change_fraction` of the image and our incremental. Its files are then
what both sides read:

- restore to RBD of the full (and, with `--read-back`, of the full checked by reading all of it
  back) against `rbd import` of the full's raw file; of the full + 3 incrementals against `rbd
  import` of the raw file, `rbd snap create` of the first diff's from-snapshot (which `rbd
  import-diff` requires on the image) and `rbd import-diff` of the three diff files;
- restore to a file, of the full and of the chain, against `cp --sparse=always` of the raw file
  and the replay of the diffs (`rbd_diff_replay.py`, there being no stock tool for it); their
  output is fsynced after they exit (the `fsync s` column), ours fsyncs itself;
- verify of the repository against `b3sum` of the same files;
- `serve` of the chain's end: the time from starting it to the first NBD read answered
  (a minimal NBD client here: handshake with `NBD_OPT_EXPORT_NAME`, one 512-byte read), against
  `qemu-nbd` serving the raw file; then a sequential read of the whole disk through it with
  `nbdcopy ... null:` against `nbdcopy` of the raw file (`serve-read`), and against the same
  read through `qemu-nbd` serving the raw file (`serve-read-q`: what going through NBD costs
  any server) and through nbdkit's `file` plugin (`serve-read-k`: the leanest server at hand,
  no checks). Server rows count the server's CPU and peak RSS with the client's.

Every run is a child process measured by `os.wait4`, as the backup cases are; restored images
and files are removed between runs (not timed).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from lab_images import BLOCK, MIB, NAME_PREFIX, POOL, ImageSpec, Scale, ensure_space, log, run, write_extents
from measure import PAUSE, CaseResult, Runner, Sample, fsync_files, merge, run_measured
from report import summary_line

INCREMENTALS = 3
"""Incrementals on top of the full in the chain."""
SideRun = Callable[[], Sample]
"""One measured run of one side of a case."""
SERVE_TIMEOUT = 30.0
"""Seconds a server may take to answer its first read before the benchmark gives up."""


@dataclass
class RestoreChain:
    """The chain both sides restore from, and the files it is made of."""

    spec: ImageSpec
    repo: Path
    backups: list[str]
    """Backup ids, the full first."""
    raw: Path
    """The full backup's sparse raw file."""
    diffs: list[Path]
    """The incrementals' rbd diff files, in order."""
    from_snapshot: str
    """The snapshot the first diff starts from (`rbd import-diff` wants it on the image)."""


def first_from_snapshot(diff: Path) -> str:
    """The `f` record of an rbd diff v1 file."""
    with diff.open("rb") as stream:
        if stream.read(12) != b"rbd diff v1\n":
            raise RuntimeError(f"{diff} is not an rbd diff v1")
        while (tag := stream.read(1)) in (b"f", b"t", b"s"):
            if tag == b"s":
                stream.read(8)
                continue
            (length,) = struct.unpack("<I", stream.read(4))
            name = stream.read(length).decode()
            if tag == b"f":
                return name
    raise RuntimeError(f"{diff} has no from-snapshot")


def make_chain(runner: Runner, spec: ImageSpec, scale: Scale) -> RestoreChain:
    """Our full backup of `spec` and INCREMENTALS incrementals, each after a change of the image."""
    repo = runner.new_repo()
    backups: list[str] = []
    folders: list[Path] = []
    count = max(1, round(spec.size * scale.change_fraction / BLOCK))
    for i in range(INCREMENTALS + 1):
        if i > 0:
            extents = [((j * spec.size // count + i * BLOCK) % spec.size // BLOCK * BLOCK, BLOCK) for j in range(count)]
            ensure_space(count * BLOCK, spec.osd)
            write_extents(spec.image, spec.size, sorted(set(extents)), salt=100 + i)
        report = json.loads(run(runner.ours_argv(repo, [spec], 1)))
        (domain,) = report["domains"]
        if domain["status"] != "succeeded":
            raise RuntimeError(f"the chain's backup {i} of {spec.name} {domain['status']}: {domain.get('error')}")
        kind = domain["disks"][0]["kind"]
        if kind != ("full" if i == 0 else "incremental"):
            raise RuntimeError(f"backup {i} of the chain is a {kind} backup")
        backups.append(str(domain["backup_id"]))
        folders.append(Path(domain["path"]))
    (raw,) = folders[0].glob("*.raw")
    diffs = [next(folder.glob("*.rbdiff")) for folder in folders[1:]]
    return RestoreChain(spec, repo, backups, raw, diffs, first_from_snapshot(diffs[0]))


def measured(argvs: Sequence[Sequence[str]], runner: Runner) -> Sample:
    """The commands run one after the other after a pause, as one sample."""
    os.sync()
    time.sleep(PAUSE)
    started = time.perf_counter()
    finished = run_measured(argvs, 1, runner.scratch)
    return merge(finished, started, time.perf_counter())


def remove_image(image: str) -> None:
    """Delete an image with its snapshots (not timed)."""
    subprocess.run(["rbd", "snap", "purge", "--no-progress", image], capture_output=True, check=False)
    run(["rbd", "rm", "--no-progress", image])


def nbd_read_first_block(path: Path) -> bool:
    """One 512-byte read at offset 0 from the NBD server at Unix socket `path`; False if it is not listening yet.

    Fixed newstyle handshake with `NBD_OPT_EXPORT_NAME` of the default export, then one
    `NBD_CMD_READ`, answered by a simple reply (no structured replies asked for).
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError):
            return False
        sock.settimeout(SERVE_TIMEOUT)

        def exact(count: int) -> bytes:
            data = b""
            while len(data) < count:
                piece = sock.recv(count - len(data))
                if not piece:
                    raise RuntimeError(f"the NBD server at {path} closed the connection")
                data += piece
            return data

        hello = exact(18)
        if hello[:16] != b"NBDMAGICIHAVEOPT":
            raise RuntimeError(f"not an NBD newstyle server at {path}")
        (server_flags,) = struct.unpack(">H", hello[16:])
        no_zeroes = bool(server_flags & 2)
        sock.sendall(struct.pack(">I", 1 | (2 if no_zeroes else 0)))
        sock.sendall(b"IHAVEOPT" + struct.pack(">II", 1, 0))
        exact(10 if no_zeroes else 134)
        sock.sendall(struct.pack(">IHHQQI", 0x25609513, 0, 0, 1, 0, 512))
        magic, error, _ = struct.unpack(">IIQ", exact(16))
        if magic != 0x67446698 or error != 0:
            raise RuntimeError(f"the NBD server at {path} answered the read with magic {magic:#x}, error {error}")
        exact(512)
        return True


@dataclass
class Served:
    """A server process started for a case and the time its first read was answered."""

    proc: subprocess.Popen[bytes]
    first_byte: float


def start_server(argv: Sequence[str], sock: Path, log_path: Path) -> Served:
    """Start a server listening on `sock`; returns once its first NBD read was answered."""
    sock.unlink(missing_ok=True)
    os.sync()
    time.sleep(PAUSE)
    with log_path.open("wb") as out:
        started = time.perf_counter()
        proc = subprocess.Popen(list(argv), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    while not nbd_read_first_block(sock):
        if proc.poll() is not None or time.perf_counter() - started > SERVE_TIMEOUT:
            proc.kill()
            proc.wait()
            raise RuntimeError(f"{' '.join(argv)} did not serve: {log_path.read_text()[-2000:]}")
        time.sleep(0.002)
    return Served(proc, time.perf_counter() - started)


def stop_server(served: Served) -> tuple[float, float]:
    """SIGTERM the server; its CPU seconds and peak RSS (MiB) over its life."""
    served.proc.send_signal(signal.SIGTERM)
    _, status, usage = os.wait4(served.proc.pid, 0)
    served.proc.returncode = os.waitstatus_to_exitcode(status)
    return usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


class RestoreCases:
    """The cases of this module on one image, sharing one chain (made on first use)."""

    def __init__(self, runner: Runner, scale: Scale, repeat: int, spec: ImageSpec) -> None:
        self.runner = runner
        self.scale = scale
        self.repeat = repeat
        self.spec = spec
        self._chain: RestoreChain | None = None

    @property
    def chain(self) -> RestoreChain:
        """The chain, made on first use."""
        if self._chain is None:
            log(f"making the restore chain: a full and {INCREMENTALS} incrementals of {self.spec.image}")
            self._chain = make_chain(self.runner, self.spec, self.scale)
        return self._chain

    def close(self) -> None:
        """Delete the chain's repository."""
        if self._chain is not None:
            self.runner.drop_repo(self._chain.repo)
            self._chain = None

    def ours_argv(self, command: str, *args: str) -> list[str]:
        """Our CLI on the chain's repository and domain."""
        return [sys.executable, "-m", "virt_rbd_backup", command, self.spec.name, "--repo", str(self.chain.repo), *args]

    def result(self, name: str, description: str, theirs_tool: str, data_bytes: int | None = None) -> CaseResult:
        """An empty result of a case on the chain's image."""
        data = self.spec.allocated if data_bytes is None else data_bytes
        return CaseResult(name, description, data, self.spec.size, theirs_tool)

    def alternate(self, result: CaseResult, ours: SideRun, theirs: SideRun) -> CaseResult:
        """`repeat` samples of each side, in alternating order."""
        for i in range(self.repeat):
            for side in ("ours", "theirs") if i % 2 == 0 else ("theirs", "ours"):
                if side == "ours":
                    result.ours.append(ours())
                else:
                    result.theirs.append(theirs())
            log(f"  {result.name} {i + 1}/{self.repeat}: {summary_line(result)}")
        return result

    def rbd_cases(self) -> list[CaseResult]:
        """Restore to RBD: the full, the full checked by a whole read-back, the chain."""
        chain = self.chain
        target = f"{POOL}/{NAME_PREFIX}restored"
        conf = ["--ceph-conf", os.environ["CEPH_CONF"]]

        def ours(backup: str, *extra: str) -> SideRun:
            def side() -> Sample:
                ensure_space(self.spec.allocated, self.spec.osd)
                argv = self.ours_argv("restore", "--backup", backup, "--to", f"rbd:{target}", *conf, *extra)
                sample = measured([argv], self.runner)
                remove_image(target)
                return sample

            return side

        def theirs(diffs: Sequence[Path]) -> SideRun:
            def side() -> Sample:
                ensure_space(self.spec.allocated, self.spec.osd)
                argvs = [["rbd", "import", "--no-progress", str(chain.raw), target]]
                if diffs:
                    argvs.append(["rbd", "snap", "create", "--no-progress", f"{target}@{chain.from_snapshot}"])
                    argvs += [["rbd", "import-diff", "--no-progress", str(d), target] for d in diffs]
                sample = measured(argvs, self.runner)
                remove_image(target)
                return sample

            return side

        full, latest = chain.backups[0], chain.backups[-1]
        # Untimed, as the backup cases' warm-up: the first image written after the chain was
        # made took 2-3x longer on the lab, on either side.
        ours(full)()
        theirs([])()
        return [
            self.alternate(
                self.result("rst-rbd", "restore of a full backup to a new RBD image", "rbd import"),
                ours(full),
                theirs([]),
            ),
            self.alternate(
                self.result(
                    "rst-rbd-rb",
                    "restore of a full backup to RBD, --read-back (every block read back)",
                    "rbd import",
                ),
                ours(full, "--read-back"),
                theirs([]),
            ),
            self.alternate(
                self.result(
                    "rst-rbd-ch",
                    f"restore of a full + {INCREMENTALS} incrementals to a new RBD image",
                    "import+diff x3",
                ),
                ours(latest),
                theirs(chain.diffs),
            ),
        ]

    def file_cases(self) -> list[CaseResult]:
        """Restore to a file: the full, and the chain."""
        chain = self.chain
        out = self.runner.target / "restored.raw"
        replay = [sys.executable, str(Path(__file__).resolve().parent / "rbd_diff_replay.py"), str(out)]

        def ours(backup: str) -> SideRun:
            def side() -> Sample:
                out.unlink(missing_ok=True)
                sample = measured([self.ours_argv("restore", "--backup", backup, "--to", str(out))], self.runner)
                out.unlink()
                return sample

            return side

        def theirs(diffs: Sequence[Path]) -> SideRun:
            def side() -> Sample:
                out.unlink(missing_ok=True)
                argvs = [["cp", "--sparse=always", str(chain.raw), str(out)]]
                if diffs:
                    argvs.append([*replay, *map(str, diffs)])
                sample = measured(argvs, self.runner)
                sample.fsync = fsync_files([out])
                out.unlink()
                return sample

            return side

        full, latest = chain.backups[0], chain.backups[-1]
        ours(full)()  # untimed warm-up, as for RBD
        return [
            self.alternate(
                self.result("rst-file", "restore of a full backup to a sparse file", "cp --sparse"),
                ours(full),
                theirs([]),
            ),
            self.alternate(
                self.result(
                    "rst-file-ch",
                    f"restore of a full + {INCREMENTALS} incrementals to a sparse file",
                    "cp+replay x3",
                ),
                ours(latest),
                theirs(chain.diffs),
            ),
        ]

    def verify_case(self) -> CaseResult:
        """Verify of the chain's repository against `b3sum` of its files."""
        chain = self.chain
        files = [chain.raw, *chain.diffs]
        stored = sum(f.stat().st_blocks * 512 for f in files)
        return self.alternate(
            self.result(
                "verify",
                f"verify of a full + {INCREMENTALS} incrementals ({stored // MIB} MiB stored)",
                "b3sum",
                data_bytes=stored,
            ),
            lambda: measured([self.ours_argv("verify")], self.runner),
            lambda: measured([["b3sum", *map(str, files)]], self.runner),
        )

    def serve_cases(self) -> list[CaseResult]:
        """Serve the chain's end: first byte against qemu-nbd; sequential read against the raw file."""
        chain = self.chain
        sock = self.runner.target / "serve.sock"
        log_path = self.runner.target / "serve.log"
        first = self.result(
            "serve-first",
            f"serve of a full + {INCREMENTALS} incrementals: start to first NBD read answered",
            "qemu-nbd raw",
            data_bytes=0,
        )
        read = self.result(
            "serve-read",
            "sequential read of the served disk (nbdcopy to null:)",
            "nbdcopy raw",
        )
        read_nbd = self.result(
            "serve-read-q",
            "sequential read of the served disk (nbdcopy to null:), against qemu-nbd serving the raw file",
            "qemu-nbd raw",
        )
        read_kit = self.result(
            "serve-read-k",
            "sequential read of the served disk (nbdcopy to null:), against nbdkit's file plugin serving the raw file",
            "nbdkit file raw",
        )
        uri = f"nbd+unix:///?socket={sock}"
        ours_serve = self.ours_argv("serve", "--backup", chain.backups[-1], "--listen", f"unix:{sock}")
        theirs_serve = ["qemu-nbd", "-r", "-t", "-f", "raw", "-k", str(sock), str(chain.raw)]
        # The leanest NBD server at hand: pread and send, no format layer, no checks.
        kit_serve = ["nbdkit", "-f", "-r", "-U", str(sock), "file", str(chain.raw)]

        def read_through(server: Sequence[str]) -> tuple[Sample, Sample]:
            """Start `server`, read the whole disk through it, stop it: its first byte, the read."""
            served = start_server(server, sock, log_path)
            copy = run_measured([["nbdcopy", uri, "null:"]], 1, self.runner.scratch)[0]
            cpu, rss = stop_server(served)
            return (
                Sample(wall=served.first_byte, cpu=cpu, rss_mib=rss),
                Sample(wall=copy.wall, cpu=copy.cpu + cpu, rss_mib=max(copy.rss_mib, rss)),
            )

        for i in range(self.repeat):
            for side in ("ours", "theirs") if i % 2 == 0 else ("theirs", "ours"):
                if side == "ours":
                    first_byte, whole = read_through(ours_serve)
                    first.ours.append(first_byte)
                    for case in (read, read_nbd, read_kit):
                        case.ours.append(whole)
                else:
                    first_byte, whole = read_through(theirs_serve)
                    first.theirs.append(first_byte)
                    read_nbd.theirs.append(whole)
                    read.theirs.append(measured([["nbdcopy", str(chain.raw), "null:"]], self.runner))
                    read_kit.theirs.append(read_through(kit_serve)[1])
            log(f"  serve {i + 1}/{self.repeat}: first byte {summary_line(first)}; read {summary_line(read)}")
        return [first, read, read_nbd, read_kit]
