#!/usr/bin/env python3
"""Benchmark of virt-rbd-backup against the tools Ceph ships (`rbd export`, `rbd export-diff`).

Why it exists: the claim that the tool is fast is only worth something next to the baseline an
operator would otherwise use, measured in the same run, on the same data, into the same
filesystem. On the lab cluster (`bash lab/lab.sh up`) this script:

1. creates RBD images of controlled size and allocated fraction (random data written through
   `rbd import-diff` of a stream it generates, so exactly the chosen 4 MiB blocks hold data) and
   a shut-off libvirt domain for each (the tool discovers disks through libvirt);
2. for every case, repeatedly runs our backup (`python -m virt_rbd_backup backup --json`) and
   Ceph's tool on the snapshot our run created, into the same target folder, deleting the
   outputs between runs; each run is a child process whose wall time, CPU time (user + sys) and
   peak RSS come from `os.wait4`;
3. prints a table of medians and the ratios ours/theirs, checks the targets of the issue, and
   with `--json FILE` writes the same for tracking;
4. deletes every image, snapshot, domain and file it created, also when interrupted
   (`--cleanup` removes the leftovers of a killed run).

How the two sides read the same change in the incremental case: after our full backup (snapshot
S1) the script takes its own snapshot B of the unchanged image, writes the change, and runs our
incremental (which creates S2 and then removes S1). `rbd export-diff --from-snap B rbd/IMG@S2`
then reads exactly the change our tool read from S1 to S2. The same change is then also taken
with Ceph's tools alone (`rbd snap create` of S3, `rbd export-diff --from-snap B`, `rbd snap rm`
of B), which pays the monitor commits our incremental pays.

The lab's memstore OSD holds a few GiB in RAM; `--disk` runs its own cases on 24 GiB images in
the pool of a BlueStore OSD that `lab.sh disk-osd up` adds, where a run's fixed costs no longer
dominate.

Usage: `python3 bench/run.py [--quick] [--repeat N] [--json out.json] [--disk [GIB]]`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from lab_monitor import wait_for_quiet_monitor

MIB = 1 << 20
GIB = 1 << 30
BLOCK = 4 * MIB
"""RBD object size of the images (and the tool's block size)."""
POOL = "rbd"
DISK_POOL = "rbd-disk"
"""Pool of the lab's BlueStore OSD (`lab.sh disk-osd up`), used by the `--disk` cases."""
DISK_OSD = "osd.1"
MEMSTORE_OSD = "osd.0"
"""The lab's own OSD, which holds pool POOL."""
NAME_PREFIX = "vrb-bench-"
"""Every image, domain and snapshot the benchmark creates starts with this."""
DATA_BUDGET = 3 * GIB
"""Most allocated data alive at once: the lab's memstore OSD holds ~6 GiB in RAM."""
NEARFULL_RATIO = 0.85
"""Ceph's default `mon_osd_nearfull_ratio`: the benchmark never fills the OSD past it."""
REPO_ROOT = Path(__file__).resolve().parent.parent
REPORT_VERSION = 1


def log(message: str) -> None:
    """Print a progress line on stderr."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# Environment: the lab, rbd and virsh.


def load_lab_env() -> None:
    """Take the lab's variables (`lab.sh env`) into our environment unless already set."""
    status = subprocess.run(["bash", str(REPO_ROOT / "lab/lab.sh"), "status"], capture_output=True, text=True)
    if status.returncode != 0:
        sys.exit(f"the lab is not up (bash lab/lab.sh up):\n{status.stdout}{status.stderr}")
    out = subprocess.run(
        ["bash", str(REPO_ROOT / "lab/lab.sh"), "env"], capture_output=True, text=True, check=True
    ).stdout
    for line in out.splitlines():
        if line.startswith("export ") and "=" in line:
            key, _, value = line.removeprefix("export ").partition("=")
            os.environ.setdefault(key, value.strip().strip("'\""))


def run(argv: Sequence[str], stdin: bytes | None = None) -> str:
    """Run a set-up command; its failure stops the benchmark with its stderr."""
    proc = subprocess.run(list(argv), input=stdin, capture_output=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.decode(errors='replace')}")
    return proc.stdout.decode()


def timed(argv: Sequence[str]) -> float:
    """Run a set-up command; its wall seconds."""
    started = time.perf_counter()
    run(argv)
    return time.perf_counter() - started


def virsh(*args: str) -> str:
    """Run virsh against the lab's libvirt."""
    return run(["virsh", "-q", "-c", os.environ["LAB_LIBVIRT_URI"], *args])


def domain_xml(name: str, image: str) -> str:
    """A shut-off domain whose one disk is `image` (POOL/NAME), authenticated as the lab's client."""
    mon_host, _, mon_port = os.environ.get("LAB_MON_HOST", "127.0.0.1:6789").partition(":")
    return (
        f"<domain type='qemu'><name>{name}</name><memory unit='MiB'>64</memory>"
        "<os><type arch='x86_64'>hvm</type></os><devices>"
        "<disk type='network' device='disk'><driver name='qemu' type='raw'/>"
        f"<auth username='{os.environ.get('LAB_CEPH_USER', 'libvirt')}'>"
        f"<secret type='ceph' uuid='{os.environ['LAB_SECRET_UUID']}'/></auth>"
        f"<source protocol='rbd' name='{image}'><host name='{mon_host}' port='{mon_port or 6789}'/></source>"
        "<target dev='vda' bus='virtio'/></disk></devices></domain>"
    )


# --------------------------------------------------------------------------------------------
# Images with controlled content.


def spread(count: int, total: int) -> list[int]:
    """`count` indices out of `range(total)`, evenly spread (the first is 0)."""
    count = min(count, total)
    return [i * total // count for i in range(count)] if count > 0 else []


class DiffStream:
    """Writes an "rbd diff v1" stream (the format `rbd import-diff` reads) to a pipe."""

    def __init__(self, out: IO[bytes], size: int) -> None:
        self._out = out
        out.write(b"rbd diff v1\n")
        out.write(b"s" + struct.pack("<Q", size))

    def write(self, offset: int, data: bytes | memoryview) -> None:
        """A `w` record: `data` at `offset`."""
        self._out.write(b"w" + struct.pack("<QQ", offset, len(data)))
        self._out.write(data)

    def end(self) -> None:
        """The `e` record."""
        self._out.write(b"e")


def write_extents(image: str, size: int, extents: Sequence[tuple[int, int]], salt: int) -> None:
    """Write random, non-zero data into `extents` ((offset, length), ascending) of `image` (POOL/NAME).

    One random 4 MiB pattern is drawn per call; each extent starts with its offset and `salt`, so
    every written block differs from every other and from what was there before.
    """
    pattern = os.urandom(BLOCK)
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(["rbd", "import-diff", "--no-progress", "-", image], stdin=subprocess.PIPE, stderr=err)
        assert proc.stdin is not None
        with contextlib.suppress(BrokenPipeError), proc.stdin:
            stream = DiffStream(proc.stdin, size)
            view = memoryview(pattern)
            for offset, length in extents:
                head = struct.pack("<QQ", offset, salt)
                stream.write(offset, head + view[len(head) : length].tobytes())
            stream.end()
        if proc.wait() != 0:
            err.seek(0)
            raise RuntimeError(f"rbd import-diff into {image} failed: {err.read().decode(errors='replace')}")


@dataclass(frozen=True)
class ImageSpec:
    """An image of the benchmark and the domain that has it as its disk."""

    key: str
    size: int
    allocated_blocks: int
    pool: str = POOL

    @property
    def name(self) -> str:
        """Image and domain name."""
        return NAME_PREFIX + self.key

    @property
    def image(self) -> str:
        """POOL/NAME, as `rbd` takes it."""
        return f"{self.pool}/{self.name}"

    @property
    def osd(self) -> str:
        """The OSD that holds the image (the lab has one per pool)."""
        return DISK_OSD if self.pool == DISK_POOL else MEMSTORE_OSD

    @property
    def allocated(self) -> int:
        """Bytes of allocated data."""
        return self.allocated_blocks * BLOCK

    def blocks(self) -> list[int]:
        """Indices of the allocated 4 MiB blocks."""
        return spread(self.allocated_blocks, self.size // BLOCK)


class Lab:
    """The benchmark's images and domains on the lab; removes all of them on `close`."""

    def __init__(self) -> None:
        self.images: dict[str, ImageSpec] = {}

    def create(self, spec: ImageSpec) -> None:
        """Create the image, fill its allocated blocks, define its domain."""
        ensure_space(spec.allocated, spec.osd)
        log(f"creating {spec.image}: {spec.size // MIB} MiB, {spec.allocated // MIB} MiB allocated")
        run(["rbd", "create", "--size", f"{spec.size // MIB}M", spec.image])
        self.images[spec.key] = spec
        write_extents(spec.image, spec.size, [(b * BLOCK, BLOCK) for b in spec.blocks()], salt=0)
        with tempfile.NamedTemporaryFile("w", suffix=".xml") as xml:
            xml.write(domain_xml(spec.name, spec.image))
            xml.flush()
            virsh("define", xml.name)

    def remove(self, key: str) -> None:
        """Undefine the domain and delete the image with all its snapshots."""
        spec = self.images.pop(key)
        remove_image_and_domain(spec.name, [spec.pool])

    def close(self) -> None:
        """Remove everything still there."""
        for key in list(self.images):
            try:
                self.remove(key)
            except (RuntimeError, OSError) as err:
                log(f"clean-up of {key}: {err}")


def lab_pools() -> list[str]:
    """The pools benchmark images can be in: POOL, and DISK_POOL while the lab has it."""
    return [POOL, *([DISK_POOL] if DISK_POOL in run(["ceph", "osd", "pool", "ls"]).split() else [])]


def remove_image_and_domain(name: str, pools: Sequence[str]) -> None:
    """Undefine domain `name` and delete image `name` with its snapshots from those of `pools` that have it."""
    with contextlib.suppress(RuntimeError):
        virsh("undefine", name)
    for pool in pools:
        with contextlib.suppress(RuntimeError):
            run(["rbd", "snap", "purge", "--no-progress", f"{pool}/{name}"])
        with contextlib.suppress(RuntimeError):
            run(["rbd", "rm", "--no-progress", f"{pool}/{name}"])


def osd_space(osd: str) -> tuple[int, int] | None:
    """Bytes used and total of an OSD of the lab (its admin socket), or None if unknown."""
    try:
        dump = json.loads(run(["ceph", "daemon", osd, "perf", "dump"]))
        return int(dump["osd"]["stat_bytes_used"]), int(dump["osd"]["stat_bytes"])
    except (RuntimeError, OSError, ValueError, KeyError):
        return None


def ensure_space(needed: int, osd: str = MEMSTORE_OSD, patience: float = 180.0) -> None:
    """Wait until `needed` more bytes keep the OSD below its nearfull ratio, or give up.

    The lab's memstore OSD is shared with the test suite; a full OSD blocks every client. Freed
    space comes back with a delay (the OSD trims removed snapshots in the background).
    """
    deadline = time.monotonic() + patience
    while (space := osd_space(osd)) is not None:
        used, total = space
        free = int(total * NEARFULL_RATIO) - used
        if free >= needed:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"the lab's {osd} has {max(free, 0) // MIB} MiB below its nearfull ratio and the benchmark needs "
                f"{needed // MIB} MiB: free space (old snapshots of lab images) or use --quick"
            )
        log(f"waiting for space on the OSD: {max(free, 0) // MIB} MiB free below nearfull, {needed // MIB} MiB needed")
        time.sleep(10)


def leftovers() -> list[str]:
    """Names of benchmark images and domains left by an earlier run."""
    images = [name for pool in lab_pools() for name in run(["rbd", "ls", pool]).split()]
    domains = virsh("list", "--all", "--name").split()
    return sorted({n for n in images + domains if n.startswith(NAME_PREFIX)})


# --------------------------------------------------------------------------------------------
# Measuring child processes.


@dataclass
class Sample:
    """One measured run of one side of a case."""

    wall: float
    """Seconds from start to the last process's exit."""
    cpu: float
    """User + system seconds of the process(es)."""
    rss_mib: float
    """Peak resident set of the largest process, MiB."""
    engine: float | None = None
    """Ours: seconds inside the engine (report's finished_at - started_at)."""
    export: float | None = None
    """Ours: seconds exporting (disks[].seconds; the longest for several disks)."""
    fsync: float | None = None
    """Theirs: seconds to fsync the output after `rbd` exited (`rbd` does not; we do)."""
    bytes_read: int | None = None
    """Ours: bytes read from the cluster, as reported."""
    snapshot_create: float | None = None
    """Ours: seconds of the snapshot create (disks[].snapshot_create_ms; the longest)."""


@dataclass
class Finished:
    """A finished child process."""

    wall: float
    cpu: float
    rss_mib: float
    stdout: str


def run_measured(argvs: Sequence[Sequence[str]], concurrency: int, workdir: Path) -> list[Finished]:
    """Run the commands, at most `concurrency` at once; each one's wall, CPU and peak RSS.

    A failing command stops the benchmark with its stderr.
    """
    pending = list(enumerate(argvs))
    running: dict[int, tuple[int, subprocess.Popen[bytes], float, Path, Path]] = {}
    results: dict[int, Finished] = {}
    while pending or running:
        while pending and len(running) < concurrency:
            index, argv = pending.pop(0)
            out_path, err_path = workdir / f"child-{index}.out", workdir / f"child-{index}.err"
            with out_path.open("wb") as out, err_path.open("wb") as err:
                started = time.perf_counter()
                proc = subprocess.Popen(list(argv), stdout=out, stderr=err, stdin=subprocess.DEVNULL)
            running[proc.pid] = (index, proc, started, out_path, err_path)
        pid, status, usage = os.wait4(-1, 0)
        ended = time.perf_counter()
        if pid not in running:
            continue
        index, proc, started, out_path, err_path = running.pop(pid)
        proc.returncode = os.waitstatus_to_exitcode(status)
        stdout = out_path.read_text()
        stderr = err_path.read_text()
        out_path.unlink()
        err_path.unlink()
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(argvs[index])} exited {proc.returncode}: {stderr}{stdout[-4000:]}")
        results[index] = Finished(ended - started, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, stdout)
    return [results[i] for i in range(len(argvs))]


def merge(finished: Sequence[Finished], started: float, ended: float) -> Sample:
    """One sample of a group of processes run together: total wall, summed CPU, largest RSS."""
    return Sample(wall=ended - started, cpu=sum(f.cpu for f in finished), rss_mib=max(f.rss_mib for f in finished))


PAUSE = 1.5
"""Seconds of idle before a timed run that commits nothing on the monitor."""


def let_monitor_settle() -> None:
    """Start in a quiet moment of the monitor (`lab_monitor.wait_for_quiet_monitor`).

    A snapshot create or remove waits for the monitor's next proposal, at most one
    `paxos_propose_interval` (1 s) after its last commit. A nightly run starts on a monitor
    that is quiet; a benchmark that just removed a snapshot, or a create that lands right after
    the lab monitor's own commits every 5 s, would make our create pay up to a second that no
    work of ours explains. Runs that commit on the monitor (ours, and the incremental with
    Ceph's tools alone) start in such a moment; `rbd export` and `export-diff` of existing
    snapshots commit nothing and do not wait. What a busy monitor costs is measured apart:
    `rbd snap create` / `rm` right after a commit, printed under the table, and our create's
    own time is in the table (`snap s`).
    """
    wait_for_quiet_monitor()


def fsync_files(paths: Sequence[Path]) -> float:
    """Seconds to fsync the files."""
    started = time.perf_counter()
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return time.perf_counter() - started


# --------------------------------------------------------------------------------------------
# The two sides.


@dataclass
class OurRun:
    """One run of our backup and what its report said."""

    sample: Sample
    snapshots: dict[str, str]
    """Image name -> the snapshot this run exported (kept as the next base)."""


class Runner:
    """Runs both sides into one target folder, deleting outputs between runs."""

    def __init__(self, target: Path, queue_depth: int | None) -> None:
        self.target = target
        self.queue_depth = queue_depth
        self.scratch = target / "scratch"
        self.scratch.mkdir(parents=True, exist_ok=True)
        self.repo_count = 0
        self.retries = 0

    def new_repo(self) -> Path:
        """A path for a new, empty repository (so the next backup is a full one)."""
        self.repo_count += 1
        path = self.target / f"repo-{self.repo_count}"
        shutil.rmtree(path, ignore_errors=True)
        return path

    def drop_repo(self, repo: Path) -> None:
        """Delete a repository."""
        shutil.rmtree(repo, ignore_errors=True)

    def ours_argv(self, repo: Path, images: Sequence[ImageSpec], workers: int, extra: Sequence[str] = ()) -> list[str]:
        """Our backup command for the domains of `images`, with `extra` options."""
        argv = [sys.executable, "-m", "virt_rbd_backup", "backup", "--repo", str(repo), "--json", *extra]
        argv += ["--connect", os.environ["LAB_LIBVIRT_URI"], "--workers", str(workers)]
        if self.queue_depth is not None:
            argv += ["--queue-depth", str(self.queue_depth)]
        for spec in images:
            argv += ["--domain", spec.name]
        return argv

    def ours(
        self, repo: Path, images: Sequence[ImageSpec], workers: int, kind: str, extra: Sequence[str] = ()
    ) -> OurRun:
        """Back up the domains of `images` into `repo`; the report must say `kind` for each disk.

        A failed run is tried once more (the lab is shared with fault tests that stop its
        daemons); the retry is logged and counted in `retries`.
        """
        for attempt in (1, 2):
            os.sync()
            let_monitor_settle()
            try:
                (finished,) = run_measured([self.ours_argv(repo, images, workers, extra)], 1, self.scratch)
                return self.parse_report(finished, kind)
            except RuntimeError as err:
                if attempt == 2:
                    raise
                self.retries += 1
                log(f"our backup failed, trying once more in 10 s: {str(err)[-600:]}")
                if kind == "full":
                    shutil.rmtree(repo, ignore_errors=True)  # domains that succeeded must be full again
                time.sleep(10)
        raise AssertionError("unreachable")

    def parse_report(self, finished: Finished, kind: str) -> OurRun:
        """The sample and snapshots of a finished run of ours; a failed domain stops the benchmark."""
        report = json.loads(finished.stdout)
        snapshots: dict[str, str] = {}
        exports: list[float] = []
        creates: list[float] = []
        bytes_read = 0
        for domain in report["domains"]:
            if domain["status"] != "succeeded":
                raise RuntimeError(f"our backup of {domain['name']} {domain['status']}: {domain.get('error')}")
            for disk in domain["disks"]:
                if disk["kind"] != kind:
                    raise RuntimeError(f"expected a {kind} backup of {disk['image']}, got {disk['kind']}")
                snapshots[disk["image"].split("/")[-1]] = disk["snapshot"]
                exports.append(float(disk["seconds"]))
                creates.append(float(disk["snapshot_create_ms"]) / 1000)
                bytes_read += int(disk["bytes_read"])
        sample = Sample(
            wall=finished.wall,
            cpu=finished.cpu,
            rss_mib=finished.rss_mib,
            engine=float(report["finished_at"]) - float(report["started_at"]),
            export=max(exports),
            snapshot_create=max(creates),
            bytes_read=bytes_read,
        )
        return OurRun(sample, snapshots)

    def theirs_export(self, snapshots: Sequence[tuple[ImageSpec, str]], concurrency: int) -> Sample:
        """`rbd export` of each (image, snapshot), `concurrency` at once."""
        outputs = [self.target / f"theirs-{spec.name}.raw" for spec, _ in snapshots]
        argvs = [
            ["rbd", "export", "--no-progress", f"{spec.image}@{snap}", str(out)]
            for (spec, snap), out in zip(snapshots, outputs, strict=True)
        ]
        return self._theirs(argvs, outputs, concurrency)

    def theirs_export_diff(self, spec: ImageSpec, from_snap: str, to_snap: str) -> Sample:
        """`rbd export-diff --from-snap` of one image."""
        out = self.target / f"theirs-{spec.name}.rbdiff"
        argv = ["rbd", "export-diff", "--no-progress", "--from-snap", from_snap, f"{spec.image}@{to_snap}", str(out)]
        return self._theirs([argv], [out], 1)

    def stock_incremental(self, spec: ImageSpec, base: str) -> Sample:
        """What an incremental costs with Ceph's tools alone: snapshot, export-diff, drop the old base.

        `rbd snap create IMG@next`, `rbd export-diff --from-snap base IMG@next`, `rbd snap rm
        IMG@base`, one after the other as a script would run them; the two snapshot operations
        are the monitor commits our incremental pays too. `next` is then removed (not timed).
        """
        nxt = f"{NAME_PREFIX}next"
        out = self.target / f"theirs-{spec.name}.rbdiff"
        argvs = [
            ["rbd", "snap", "create", "--no-progress", f"{spec.image}@{nxt}"],
            ["rbd", "export-diff", "--no-progress", "--from-snap", base, f"{spec.image}@{nxt}", str(out)],
            ["rbd", "snap", "rm", "--no-progress", f"{spec.image}@{base}"],
        ]
        sample = self._theirs(argvs, [out], 1, commits=True)
        run(["rbd", "snap", "rm", "--no-progress", f"{spec.image}@{nxt}"])
        return sample

    def _theirs(
        self, argvs: Sequence[Sequence[str]], outputs: Sequence[Path], concurrency: int, commits: bool = False
    ) -> Sample:
        """Run Ceph's commands measured; `commits`: they commit on the monitor (see `let_monitor_settle`)."""
        for out in outputs:
            out.unlink(missing_ok=True)
        os.sync()
        if commits:
            let_monitor_settle()
        else:
            time.sleep(PAUSE)
        started = time.perf_counter()
        finished = run_measured(argvs, concurrency, self.scratch)
        sample = merge(finished, started, time.perf_counter())
        sample.fsync = fsync_files(outputs)
        for out in outputs:
            out.unlink()
        return sample


# --------------------------------------------------------------------------------------------
# Cases.


@dataclass
class CaseResult:
    """Samples of both sides of one case."""

    name: str
    description: str
    data_bytes: int
    """Bytes that matter: allocated data (full) or changed data (incremental)."""
    logical_bytes: int
    """Sum of the image sizes."""
    theirs_tool: str
    image_count: int = 1
    ours: list[Sample] = field(default_factory=list)
    theirs: list[Sample] = field(default_factory=list)
    ours_full: list[Sample] = field(default_factory=list)
    """Incremental cases: our full backup of the same image in the same repeat."""
    snapshot_ops: dict[str, list[float]] = field(default_factory=dict)
    """Seconds of `rbd snap create` run by the benchmark right after our full (a monitor round trip)."""
    stock: list[Sample] = field(default_factory=list)
    """Incremental cases: the same incremental with Ceph's tools (`Runner.stock_incremental`)."""


@dataclass(frozen=True)
class Scale:
    """Image sizes of one benchmark scale."""

    full: int
    """Fully allocated single image (also the incremental's and one of the four mixed)."""
    mixed: tuple[int, int, int]
    """The other three images of the mixed case (fully allocated)."""
    large: int
    """The single large image."""
    sparse_fraction: float = 0.25
    sparse_factor: int = 16
    change_fraction: float = 0.01
    small_write: int = 64 * 1024
    """Write size of the scattered small-writes incremental (on an image of `full` / 4)."""


SCALES = {
    "default": Scale(full=1 * GIB, mixed=(128 * MIB, 256 * MIB, 512 * MIB), large=2 * GIB),
    "quick": Scale(full=256 * MIB, mixed=(32 * MIB, 64 * MIB, 128 * MIB), large=512 * MIB),
}


DISK_SIZE = 24 * GIB
"""Default image size of the `--disk` cases: a full read from disk lasts long enough (about 40 s on
the lab) that the fixed costs of a run, the monitor's proposal interval above all, stop
dominating, as on a real cluster. Fits a 40 GiB OSD file (lab.sh's default) with both images."""


def blocks_of(size: int) -> int:
    """Number of 4 MiB blocks of an image of `size` bytes."""
    return size // BLOCK


def image_specs(scale: Scale) -> dict[str, ImageSpec]:
    """The benchmark's images at a scale."""
    sparse_blocks = round(blocks_of(scale.full) * scale.sparse_fraction)
    specs = [
        ImageSpec("full", scale.full, blocks_of(scale.full)),
        ImageSpec("sparse", scale.full, sparse_blocks),
        ImageSpec("sparse16", scale.full * scale.sparse_factor, sparse_blocks),
        ImageSpec("large", scale.large, blocks_of(scale.large)),
        ImageSpec("small", scale.full // 4, blocks_of(scale.full // 4)),
    ]
    specs += [ImageSpec(f"mix-{i}", size, blocks_of(size)) for i, size in enumerate(scale.mixed)]
    return {s.key: s for s in specs}


def disk_specs(size: int) -> dict[str, ImageSpec]:
    """The images of the `--disk` cases, in the BlueStore pool."""
    specs = [
        ImageSpec("disk-full", size, blocks_of(size), DISK_POOL),
        ImageSpec("disk-sparse", size, round(blocks_of(size) * Scale.sparse_fraction), DISK_POOL),
    ]
    return {s.key: s for s in specs}


class Bench:
    """The cases, in order, sharing images; an image is deleted after its last case."""

    def __init__(self, lab: Lab, runner: Runner, scale: Scale, repeat: int, disk_size: int | None = None) -> None:
        self.lab = lab
        self.runner = runner
        self.scale = scale
        self.repeat = repeat
        self.disk = disk_size is not None
        self.specs = disk_specs(disk_size) if disk_size is not None else image_specs(scale)
        self.results: list[CaseResult] = []

    def cases(self) -> list[tuple[str, list[str], Callable[[], list[CaseResult]]]]:
        """(name, image keys used, function) in the order they run."""
        if self.disk:
            return [
                (
                    "full-25-disk",
                    ["disk-sparse"],
                    lambda: [self.full_case("full-25-disk", "disk-sparse", "25% allocated image, BlueStore OSD")],
                ),
                (
                    "full-100-disk",
                    ["disk-full"],
                    lambda: [self.full_case("full-100-disk", "disk-full", "fully allocated image, BlueStore OSD")],
                ),
                ("incremental-disk", ["disk-full"], lambda: [self.incremental_case("incr-1-disk", "disk-full", BLOCK)]),
            ]
        mixed = ["full", "mix-0", "mix-1", "mix-2"]
        return [
            ("full-100", ["full"], lambda: [self.full_case("full-100", "full", "fully allocated image")]),
            ("full-25", ["sparse"], lambda: [self.full_case("full-25", "sparse", "25% allocated image")]),
            (
                "sparse-16x",
                ["sparse16"],
                lambda: [self.full_case("sparse-16x", "sparse16", "16x larger image, same allocated data as full-25")],
            ),
            ("incremental", ["full"], lambda: [self.incremental_case("incr-1", "full", BLOCK)]),
            (
                "incremental-small",
                ["small"],
                lambda: [self.incremental_case("incr-1-small", "small", self.scale.small_write)],
            ),
            ("mixed", mixed, lambda: [self.mixed_case(w, mixed) for w in (1, 2, 4)]),
            ("compress", ["full"], lambda: [self.compression_case("zstd", "full")]),
            ("large", ["large"], lambda: [self.full_case("large", "large", "single large image")]),
        ]

    def run(self, only: set[str] | None) -> list[CaseResult]:
        """Run the selected cases (all when `only` is None)."""
        selected = [c for c in self.cases() if only is None or c[0] in only]
        last_use: dict[str, int] = {}
        for index, (_, keys, _) in enumerate(selected):
            for key in keys:
                last_use[key] = index
        for index, (name, keys, function) in enumerate(selected):
            for key in keys:
                if key not in self.lab.images:
                    spec = self.specs[key]
                    alive = sum(s.allocated for s in self.lab.images.values() if s.pool == spec.pool) + spec.allocated
                    # The disk OSD is checked by `ensure_space` alone (its size is set by lab.sh).
                    if spec.pool == POOL and alive > DATA_BUDGET:
                        raise RuntimeError(f"{alive // MIB} MiB of data at once is over the lab's budget")
                    self.lab.create(self.specs[key])
            log(f"case {name}")
            self.results += function()
            for key in keys:
                if last_use[key] == index:
                    self.lab.remove(key)
        return self.results

    def warm_up(self, images: Sequence[ImageSpec]) -> dict[str, str]:
        """One untimed backup: its snapshots are there for `rbd export`; warms both caches."""
        repo = self.runner.new_repo()
        result = self.runner.ours(repo, images, workers=len(images), kind="full")
        self.runner.drop_repo(repo)
        return result.snapshots

    def full_case(self, name: str, key: str, description: str) -> CaseResult:
        """Our full backup of one image against `rbd export` of the same snapshot."""
        spec = self.specs[key]
        result = CaseResult(name, description, spec.allocated, spec.size, "rbd export")
        snaps = self.warm_up([spec])
        for i in range(self.repeat):
            # Alternate the order: noise that drifts over time then hits both sides alike.
            for side in ("ours", "theirs") if i % 2 == 0 else ("theirs", "ours"):
                if side == "ours":
                    repo = self.runner.new_repo()
                    run_ = self.runner.ours(repo, [spec], workers=1, kind="full")
                    self.runner.drop_repo(repo)
                    snaps = run_.snapshots
                    result.ours.append(run_.sample)
                else:
                    result.theirs.append(self.runner.theirs_export([(spec, snaps[spec.name])], 1))
            log(f"  {name} {i + 1}/{self.repeat}: {summary_line(result)}")
        return result

    def compression_case(self, name: str, key: str) -> CaseResult:
        """Our full backup with `--compress zstd` (default level) against ours without.

        The images hold random data, which does not compress: zstd's worst case for time per
        byte stored.
        """
        spec = self.specs[key]
        result = CaseResult(
            name, "fully allocated image, --compress zstd vs none", spec.allocated, spec.size, "ours, uncompressed"
        )
        self.warm_up([spec])
        for i in range(self.repeat):
            for side in ("ours", "theirs") if i % 2 == 0 else ("theirs", "ours"):
                repo = self.runner.new_repo()
                extra = ["--compress", "zstd"] if side == "ours" else []
                run_ = self.runner.ours(repo, [spec], workers=1, kind="full", extra=extra)
                self.runner.drop_repo(repo)
                (result.ours if side == "ours" else result.theirs).append(run_.sample)
            log(f"  {name} {i + 1}/{self.repeat}: {summary_line(result)}")
        return result

    def mixed_case(self, workers: int, keys: Sequence[str]) -> CaseResult:
        """Four images of mixed sizes in one run of ours with `workers`; `workers` rbd exports at once."""
        specs = [self.specs[k] for k in keys]
        result = CaseResult(
            f"mixed-w{workers}",
            f"4 images ({'+'.join(str(s.size // MIB) for s in specs)} MiB), {workers} at once",
            sum(s.allocated for s in specs),
            sum(s.size for s in specs),
            f"rbd export x{workers}",
            image_count=len(specs),
        )
        snaps = self.warm_up(specs)
        for i in range(self.repeat):
            for side in ("ours", "theirs") if i % 2 == 0 else ("theirs", "ours"):
                if side == "ours":
                    repo = self.runner.new_repo()
                    run_ = self.runner.ours(repo, specs, workers=workers, kind="full")
                    self.runner.drop_repo(repo)
                    snaps = run_.snapshots
                    result.ours.append(run_.sample)
                else:
                    pairs = [(s, snaps[s.name]) for s in specs]
                    result.theirs.append(self.runner.theirs_export(pairs, workers))
            log(f"  {result.name} {i + 1}/{self.repeat}: {summary_line(result)}")
        return result

    def incremental_case(self, name: str, key: str, write: int) -> CaseResult:
        """Our incremental against `rbd export-diff` of the same change.

        Each repeat: a full backup into a new repository, our snapshot B of the unchanged image,
        a change of `change_fraction` of the image in writes of `write` bytes spread evenly over
        it, our incremental, then `rbd export-diff` from B to our new snapshot.
        """
        spec = self.specs[key]
        count = max(1, round(spec.size * self.scale.change_fraction / write))
        extents = [(i * (spec.size // count) // write * write, write) for i in range(count)]
        touched = len({offset // BLOCK for offset, _ in extents})
        kind = "whole 4 MiB blocks" if write == BLOCK else f"scattered {write // 1024} KiB writes"
        case = CaseResult(
            name,
            f"{self.scale.change_fraction:.0%} of {spec.size // MIB} MiB changed: {count} {kind}",
            count * write,
            spec.size,
            "rbd export-diff",
        )
        base = f"{NAME_PREFIX}base"
        for i in range(self.repeat):
            # The change copies every touched object (the snapshot keeps the old one).
            ensure_space(touched * BLOCK, spec.osd)
            repo = self.runner.new_repo()
            full = self.runner.ours(repo, [spec], workers=1, kind="full")
            case.snapshot_ops.setdefault("rbd snap create", []).append(
                timed(["rbd", "snap", "create", "--no-progress", f"{spec.image}@{base}"])
            )
            write_extents(spec.image, spec.size, extents, salt=1 + i)
            incr = self.runner.ours(repo, [spec], workers=1, kind="incremental")
            case.ours.append(incr.sample)
            case.ours_full.append(full.sample)
            case.theirs.append(self.runner.theirs_export_diff(spec, base, incr.snapshots[spec.name]))
            # Removes base: the next repeat takes it again.
            case.stock.append(self.runner.stock_incremental(spec, base))
            self.runner.drop_repo(repo)
            log(f"  {case.name} {i + 1}/{self.repeat}: {summary_line(case)}")
        return case


# --------------------------------------------------------------------------------------------
# Summaries, targets, output.


def median(values: Sequence[float | None]) -> float | None:
    """Median of the values that are present."""
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


@dataclass
class SideSummary:
    """Medians of one side of a case."""

    wall: float
    cpu: float
    rss_mib: float
    data_mib_s: float
    logical_mib_s: float
    engine: float | None
    export: float | None
    fsync: float | None
    snapshot_create: float | None


def summarize(samples: Sequence[Sample], data_bytes: int, logical_bytes: int) -> SideSummary:
    """Medians; throughputs are of the median wall time."""
    wall = statistics.median(s.wall for s in samples)
    return SideSummary(
        wall=wall,
        cpu=statistics.median(s.cpu for s in samples),
        rss_mib=statistics.median(s.rss_mib for s in samples),
        data_mib_s=data_bytes / MIB / wall,
        logical_mib_s=logical_bytes / MIB / wall,
        engine=median([s.engine for s in samples]),
        export=median([s.export for s in samples]),
        fsync=median([s.fsync for s in samples]),
        snapshot_create=median([s.snapshot_create for s in samples]),
    )


def summary_line(case: CaseResult) -> str:
    """Latest samples of a case, for the progress log."""
    parts = []
    if case.ours:
        parts.append(f"ours {case.ours[-1].wall:.2f}s")
    if case.theirs:
        parts.append(f"theirs {case.theirs[-1].wall:.2f}s")
    return ", ".join(parts)


@dataclass
class CaseSummary:
    """A case with both sides' medians and the ratios."""

    name: str
    description: str
    theirs_tool: str
    data_bytes: int
    logical_bytes: int
    ours: SideSummary
    theirs: SideSummary
    speedup: float
    """Theirs' wall / ours' wall: above 1 we are faster."""
    speedup_vs_fsynced: float
    """Theirs' wall plus the fsync it skips / ours' wall."""
    data_path_speedup: float | None
    """Theirs' wall / ours' export phase (no snapshot, start-up or commit), single-image cases."""
    cpu_ratio: float
    """Ours' CPU / theirs'."""
    rss_ratio: float
    """Ours' peak RSS / theirs'."""
    ours_full_wall: float | None
    ours_full_export: float | None
    snapshot_ops: dict[str, float]
    """Median seconds of the benchmark's own `rbd snap create` (same kind of work as ours)."""
    stock_wall: float | None
    """Incremental cases: median wall of the same incremental with Ceph's tools alone."""
    samples: dict[str, list[dict[str, Any]]]


def summarize_case(case: CaseResult) -> CaseSummary:
    """Medians and ratios of a case."""
    ours = summarize(case.ours, case.data_bytes, case.logical_bytes)
    theirs = summarize(case.theirs, case.data_bytes, case.logical_bytes)
    single = case.image_count == 1
    return CaseSummary(
        name=case.name,
        description=case.description,
        theirs_tool=case.theirs_tool,
        data_bytes=case.data_bytes,
        logical_bytes=case.logical_bytes,
        ours=ours,
        theirs=theirs,
        speedup=theirs.wall / ours.wall,
        speedup_vs_fsynced=(theirs.wall + (theirs.fsync or 0.0)) / ours.wall,
        data_path_speedup=theirs.wall / ours.export if ours.export and single else None,
        cpu_ratio=ours.cpu / theirs.cpu if theirs.cpu > 0 else float("inf"),
        rss_ratio=ours.rss_mib / theirs.rss_mib,
        ours_full_wall=statistics.median(s.wall for s in case.ours_full) if case.ours_full else None,
        ours_full_export=median([s.export for s in case.ours_full]),
        snapshot_ops={op: statistics.median(times) for op, times in case.snapshot_ops.items()},
        stock_wall=statistics.median(s.wall for s in case.stock) if case.stock else None,
        samples={
            "ours": [asdict(s) for s in case.ours],
            "theirs": [asdict(s) for s in case.theirs],
            "ours_full": [asdict(s) for s in case.ours_full],
            "stock": [asdict(s) for s in case.stock],
        },
    )


@dataclass
class Target:
    """A target of the issue, checked on this run's medians."""

    name: str
    measured: str
    met: bool


def data_path(case: CaseSummary) -> str:
    """The data-path ratio of a case, for a target line."""
    return "-" if case.data_path_speedup is None else f"x{case.data_path_speedup:.2f}"


POOL_VARIANTS = (("", ""), ("-disk", " [disk OSD]"))
"""(case name suffix, label in target lines): the memstore cases and their `--disk` twins."""


def full_targets(full: CaseSummary | None, sparse: CaseSummary | None, where: str) -> list[Target]:
    """Targets of the full backups of one fully and one 25% allocated image."""
    targets: list[Target] = []
    if full:
        targets.append(
            Target(
                f"full, fully allocated{where}: at least as fast as rbd export (>= 1.0), peak RSS < 256 MiB",
                f"wall x{full.speedup:.2f}, data path {data_path(full)}, RSS {full.ours.rss_mib:.0f} MiB",
                full.speedup >= 1.0 and full.ours.rss_mib < 256,
            )
        )
    if full and full.data_path_speedup is not None:
        targets.append(
            Target(
                f"checksums not the bottleneck{where}: our export phase (BLAKE3 of every byte) >= rbd export (none)",
                f"data path x{full.data_path_speedup:.2f}",
                full.data_path_speedup >= 1.0,
            )
        )
    if sparse:
        targets.append(
            Target(
                f"full, 25% allocated{where}: at least 2x faster than rbd export",
                f"wall x{sparse.speedup:.2f}, data path {data_path(sparse)}",
                sparse.speedup >= 2.0,
            )
        )
    return targets


def incremental_targets(incr: CaseSummary, where: str) -> list[Target]:
    """Targets of a 1% incremental (a case with `ours_full_wall`)."""
    assert incr.ours_full_wall is not None
    share = incr.ours.wall / incr.ours_full_wall
    export_share = (incr.ours.export or 0.0) / (incr.ours_full_export or 1.0)
    stock_ratio = (incr.stock_wall or 0.0) / incr.ours.wall
    stock = f"; against Ceph's tools alone (snap create + export-diff + snap rm) x{stock_ratio:.2f}"
    return [
        Target(
            f"1% incremental{where}: < 5% of the full's time",
            f"wall {incr.ours.wall:.2f} s vs full {incr.ours_full_wall:.2f} s = {share:.1%}, "
            f"export phase {export_share:.1%}",
            share < 0.05,
        ),
        Target(
            f"1% incremental{where}: at least as fast as rbd export-diff",
            f"wall x{incr.speedup:.2f}, data path {data_path(incr)}" + (stock if incr.stock_wall else ""),
            incr.speedup >= 1.0,
        ),
    ]


def check_targets(cases: dict[str, CaseSummary]) -> list[Target]:
    """The issue's targets, for the cases that ran, on wall time (the issue's definition).

    Each line also gives the same comparison on our export phase alone ("data path": our
    snapshot creation, start-up and commit left out, as they are on rbd's side).
    """
    targets: list[Target] = []
    for suffix, where in POOL_VARIANTS:
        targets += full_targets(cases.get(f"full-100{suffix}"), cases.get(f"full-25{suffix}"), where)
    singles = [c for name in ("full-100", "large") if (c := cases.get(name))]
    mixed = cases.get("mixed-w4")
    if mixed and singles:
        best = max(singles, key=lambda c: c.ours.data_mib_s)
        targets.append(
            Target(
                "four images, 4 workers: total throughput >= best single stream",
                f"{mixed.ours.data_mib_s:.0f} MiB/s vs {best.ours.data_mib_s:.0f} MiB/s ({best.name}); "
                f"export phase of {best.name}: {best.data_bytes / MIB / (best.ours.export or best.ours.wall):.0f}"
                " MiB/s",
                mixed.ours.data_mib_s >= best.ours.data_mib_s,
            )
        )
    if (large := cases.get("large")) and mixed:
        share = large.ours.data_mib_s / mixed.ours.data_mib_s
        targets.append(
            Target(
                "one large image alone: >= 80% of the four-image throughput",
                f"{large.ours.data_mib_s:.0f} vs {mixed.ours.data_mib_s:.0f} MiB/s = {share:.0%}",
                share >= 0.8,
            )
        )
    if (sparse := cases.get("full-25")) and (big := cases.get("sparse-16x")):
        growth = big.ours.wall / sparse.ours.wall
        export_growth = (big.ours.export or 0.0) / (sparse.ours.export or 1.0)
        targets.append(
            Target(
                "16x larger image, same allocated data: <= 1.5x the time",
                f"wall {big.ours.wall:.2f} s vs {sparse.ours.wall:.2f} s = {growth:.2f}x, "
                f"export phase {export_growth:.2f}x",
                growth <= 1.5,
            )
        )
    if zstd := cases.get("zstd"):
        targets.append(
            Target(
                "compression not the bottleneck: --compress zstd within 1.25x of none",
                f"zstd {zstd.ours.wall:.2f} s vs none {zstd.theirs.wall:.2f} s = {1 / zstd.speedup:.2f}x, "
                f"CPU {zstd.ours.cpu:.2f} vs {zstd.theirs.cpu:.2f} s",
                1 / zstd.speedup <= 1.25,
            )
        )
    for suffix, where in POOL_VARIANTS:
        if (incr := cases.get(f"incr-1{suffix}")) and incr.ours_full_wall:
            targets += incremental_targets(incr, where)
    return targets


def fmt(value: float | None, spec: str) -> str:
    """A number, or '-'."""
    return "-" if value is None else format(value, spec)


def table(cases: Sequence[CaseSummary]) -> str:
    """The results table (medians), one row per side and one of ratios per case."""
    header = (
        f"{'case':<13} {'tool':<16} {'wall s':>7} {'data MiB/s':>10} {'logical MiB/s':>13} "
        f"{'CPU s':>6} {'peak RSS MiB':>12} {'snap s':>6} {'export s':>8} {'fsync s':>7}"
    )
    lines = [header, "-" * len(header)]
    for c in cases:
        for label, side in (("virt-rbd-backup", c.ours), (c.theirs_tool, c.theirs)):
            lines.append(
                f"{c.name:<13} {label:<16} {side.wall:>7.2f} {side.data_mib_s:>10.0f} "
                f"{side.logical_mib_s:>13.0f} {side.cpu:>6.2f} {side.rss_mib:>12.0f} "
                f"{fmt(side.snapshot_create, '.2f'):>6} {fmt(side.export, '.2f'):>8} {fmt(side.fsync, '.2f'):>7}"
            )
        path = "" if c.data_path_speedup is None else f", data path x{c.data_path_speedup:.2f}"
        lines.append(
            f"{'':<13} {'ours/theirs':<16} speed x{c.speedup:.2f} (x{c.speedup_vs_fsynced:.2f} if rbd fsynced)"
            f"{path}, CPU x{c.cpu_ratio:.2f}, RSS x{c.rss_ratio:.2f}"
        )
    return "\n".join(lines)


def environment() -> dict[str, str]:
    """What ran: versions, commit, machine."""

    def output(argv: Sequence[str]) -> str:
        try:
            return subprocess.run(list(argv), capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return "?"

    return {
        "tool": output([sys.executable, "-m", "virt_rbd_backup", "--version"]),
        "tool_path": output([sys.executable, "-c", "import virt_rbd_backup; print(virt_rbd_backup.__file__)"]),
        "checkout": output(["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"]),
        "rbd": output(["rbd", "--version"]),
        "cpus": str(os.cpu_count()),
        "kernel": platform.release(),
        "loadavg": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def profile(out_dir: Path, runner: Runner, lab: Lab, scale: Scale) -> None:
    """`perf record` of one full backup of the fully allocated image, and the top of its report.

    Sampled on the cpu-clock software event (works in VMs without hardware counters), with
    DWARF call graphs (the release build has debug info but no frame pointers).
    """
    if shutil.which("perf") is None:
        sys.exit("perf is not installed (apt-get install linux-perf)")
    spec = image_specs(scale)["full"]
    lab.create(spec)
    warm = runner.new_repo()
    runner.ours(warm, [spec], workers=1, kind="full")
    runner.drop_repo(warm)
    repo = runner.new_repo()
    out_dir.mkdir(parents=True, exist_ok=True)
    data = out_dir / "perf.data"
    perf = ["perf", "record", "-q", "-e", "cpu-clock", "-F", "997", "--call-graph", "dwarf,16384", "-o", str(data)]
    os.sync()
    (finished,) = run_measured([[*perf, "--", *runner.ours_argv(repo, [spec], 1)]], 1, runner.scratch)
    sample = runner.parse_report(finished, "full").sample
    runner.drop_repo(repo)
    print(
        f"profiled: full backup of {spec.size // MIB} MiB, fully allocated: wall {sample.wall:.2f} s "
        f"(under perf), export phase {fmt(sample.export, '.2f')} s, CPU {sample.cpu:.2f} s; perf data in {data}"
    )
    for sort in ("comm,dso", "sym"):
        report = run(["perf", "report", "-i", str(data), "--no-children", "--sort", sort, "--stdio", "-g", "none"])
        rows = [line for line in report.splitlines() if line.strip() and not line.startswith("#")]
        print(f"\nperf report --no-children --sort {sort} (top 15):")
        print("\n".join(rows[:15]))


# --------------------------------------------------------------------------------------------
# Command line.


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The flags."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="images 4x smaller (a run of a few minutes)")
    parser.add_argument("--repeat", type=int, default=5, metavar="N", help="runs per case and side (default: 5)")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    parser.add_argument(
        "--target",
        default="/var/tmp/virt-rbd-backup-bench",
        metavar="DIR",
        help="folder both sides write into (created and removed; default: %(default)s)",
    )
    parser.add_argument("--queue-depth", type=int, metavar="N", help="our --queue-depth (default: the tool's)")
    parser.add_argument(
        "--case",
        action="append",
        choices=[
            "full-100",
            "full-25",
            "sparse-16x",
            "incremental",
            "incremental-small",
            "mixed",
            "compress",
            "large",
            "full-25-disk",
            "full-100-disk",
            "incremental-disk",
        ],
        help="run only these cases (repeatable; sparse-16x is compared with full-25; *-disk need --disk)",
    )
    parser.add_argument(
        "--disk",
        nargs="?",
        const=DISK_SIZE // GIB,
        type=int,
        metavar="GIB",
        help="instead of the memstore cases: the *-disk cases, on images of GIB GiB (default "
        f"{DISK_SIZE // GIB}) in the pool of the lab's BlueStore OSD (bash lab/lab.sh disk-osd up)",
    )
    parser.add_argument("--cleanup", action="store_true", help="remove leftovers of a killed run and exit")
    parser.add_argument(
        "--profile",
        metavar="DIR",
        help="instead of the cases: perf record of one full backup of the fully allocated image, into DIR",
    )
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if args.disk is not None and args.disk < 1:
        parser.error("--disk must be at least 1 GiB")
    disk_cases = {c for c in args.case or [] if c.endswith("-disk")}
    if disk_cases and args.disk is None:
        parser.error(f"{', '.join(sorted(disk_cases))} need --disk")
    if args.disk is not None and args.case and len(disk_cases) != len(args.case):
        parser.error("with --disk, only the *-disk cases run")
    return args


def check_disk_room(size: int, backup: int, target: Path) -> None:
    """Stop early unless the lab's BlueStore pool is there and the disk can hold a `--disk` run.

    The OSD's sparse file fills up to its full size over a run (BlueStore does not reuse freed
    space compactly, nor punch holes in its file), and the target folder holds one full backup
    or `rbd export` (`backup` bytes of data) at a time.
    """
    if DISK_POOL not in lab_pools():
        sys.exit(f"pool {DISK_POOL} is missing: bring up the lab's BlueStore OSD first (bash lab/lab.sh disk-osd up)")
    block = Path(os.environ["LAB_DISK_OSD_BLOCK"])
    st = block.stat()
    growth = max(st.st_size - st.st_blocks * 512, 0)
    probe = target
    while not probe.exists():
        probe = probe.parent
    # The OSD file's filesystem and the target's may be one.
    if probe.stat().st_dev == st.st_dev:
        needs = [(block.parent, growth + backup)]
    else:
        needs = [(block.parent, growth), (probe, backup)]
    for folder, needed in needs:
        needed += 2 * GIB
        free = shutil.disk_usage(folder).free
        if free < needed:
            sys.exit(
                f"--disk {size // GIB} needs about {needed // GIB} GiB free on the filesystem of {folder} "
                f"({growth // GIB} GiB for {block} to fill, {backup // GIB} GiB for a backup in {probe}, "
                f"2 GiB spare), {free // GIB} GiB are: use a smaller --disk, or a smaller OSD "
                "(lab.sh disk-osd down; lab.sh disk-osd up GIB)"
            )
    space = osd_space(DISK_OSD)
    if space is not None and space[1] * NEARFULL_RATIO < size * 5 // 4:
        sys.exit(
            f"{DISK_OSD} holds {space[1] // GIB} GiB, too small for --disk {size // GIB} "
            "(both images, below the nearfull ratio): lab.sh disk-osd down, then up with a bigger size"
        )


@contextlib.contextmanager
def target_folder(path: Path) -> Iterator[Path]:
    """A fresh target folder, removed afterwards."""
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; 0 when it ran (targets missed are reported, not an error)."""
    args = parse_args(argv)
    load_lab_env()
    if args.cleanup:
        pools = lab_pools()
        for name in leftovers():
            log(f"removing {name}")
            remove_image_and_domain(name, pools)
        shutil.rmtree(args.target, ignore_errors=True)
        return 0
    if found := leftovers():
        sys.exit(f"leftovers of an earlier run: {', '.join(found)} (remove them with --cleanup)")
    scale = SCALES["quick" if args.quick else "default"]
    env = environment()
    started = time.time()
    lab = Lab()
    if args.profile:
        try:
            with target_folder(Path(args.target)) as target:
                profile(Path(args.profile), Runner(target, args.queue_depth), lab, scale)
        finally:
            lab.close()
        return 0
    if args.disk is not None:
        # Only full-25-disk: a backup holds a quarter of the image.
        backup = args.disk * GIB // (4 if args.case and set(args.case) == {"full-25-disk"} else 1)
        check_disk_room(args.disk * GIB, backup, Path(args.target))
    try:
        with target_folder(Path(args.target)) as target:
            runner = Runner(target, args.queue_depth)
            bench = Bench(lab, runner, scale, args.repeat, args.disk * GIB if args.disk is not None else None)
            results = bench.run(set(args.case) if args.case else None)
    finally:
        lab.close()
    env["loadavg_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    cases = [summarize_case(r) for r in results]
    targets = check_targets({c.name: c for c in cases})
    print(
        f"virt-rbd-backup benchmark: {env['tool']} (checkout {env['checkout']}), {env['rbd'].split(' (')[0]}, "
        f"{env['cpus']} CPUs, {args.repeat} runs per side, medians, target {args.target}"
    )
    print(table(cases))
    for c in cases:
        if c.snapshot_ops:
            ops = ", ".join(f"{op} {t:.2f} s" for op, t in c.snapshot_ops.items())
            print(f"monitor round trips measured in {c.name}: {ops} (right after our full's commit)")
        if c.stock_wall is not None:
            print(
                f"{c.name} with Ceph's tools alone (rbd snap create, export-diff, snap rm of the old base): "
                f"{c.stock_wall:.2f} s, ours {c.ours.wall:.2f} s"
            )
    print("\nTargets:")
    for t in targets:
        print(f"  [{'met' if t.met else 'MISSED'}] {t.name}: {t.measured}")
    if args.json:
        document = {
            "version": REPORT_VERSION,
            "started_at": started,
            "finished_at": time.time(),
            "scale": f"disk {args.disk} GiB" if args.disk is not None else "quick" if args.quick else "default",
            "repeat": args.repeat,
            "retries": runner.retries,
            "queue_depth": args.queue_depth,
            "environment": env,
            "cases": [asdict(c) for c in cases],
            "targets": [asdict(t) for t in targets],
        }
        Path(args.json).write_text(json.dumps(document, indent=2) + "\n")
    if runner.retries:
        print(f"\n{runner.retries} failed run(s) of ours were retried (see the log on stderr)")
    log(f"done in {time.time() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
