"""Measuring the benchmark's child processes, and the runs of both sides of a backup case.

Each run is a child process whose wall time, CPU time (user + sys) and peak RSS come from
`os.wait4`; runs that commit on the monitor start in a quiet moment of it (`lab_monitor`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lab_images import NAME_PREFIX, ImageSpec, log, run
from lab_monitor import wait_for_quiet_monitor

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
    bytes_written: int | None = None
    """Ours: bytes the report says were written (a block repository: new bytes uploaded)."""


@dataclass
class Finished:
    """A finished child process."""

    wall: float
    cpu: float
    rss_mib: float
    stdout: str


def _feed(proc: subprocess.Popen[bytes], data: bytes) -> None:
    """Write `data` to the child's standard input and close it."""
    assert proc.stdin is not None
    try:
        proc.stdin.write(data)
        proc.stdin.close()
    except BrokenPipeError:
        pass  # the child exited early; its status tells why


def run_measured(
    argvs: Sequence[Sequence[str]], concurrency: int, workdir: Path, stdin: bytes | None = None
) -> list[Finished]:
    """Run the commands, at most `concurrency` at once; each one's wall, CPU and peak RSS.

    `stdin`, if given, is every command's standard input (through a pipe: a secret a command
    needs never lands on its command line or in a file). A failing command stops the
    benchmark with its stderr.
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
                proc = subprocess.Popen(
                    list(argv), stdout=out, stderr=err, stdin=subprocess.DEVNULL if stdin is None else subprocess.PIPE
                )
            if stdin is not None:
                threading.Thread(target=_feed, args=(proc, stdin), daemon=True).start()
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

    def ours_argv(
        self, repo: Path | str, images: Sequence[ImageSpec], workers: int, extra: Sequence[str] = ()
    ) -> list[str]:
        """Our backup command for the domains of `images` into `repo`, with `extra` options.

        `repo` is a folder, or `s3://...` with the store's options in `extra`.
        """
        argv = [sys.executable, "-m", "virt_rbd_backup", "backup", "--repo", str(repo), "--json", *extra]
        argv += ["--connect", os.environ["LAB_LIBVIRT_URI"], "--workers", str(workers)]
        if self.queue_depth is not None:
            argv += ["--queue-depth", str(self.queue_depth)]
        for spec in images:
            argv += ["--domain", spec.name]
        return argv

    def ours(
        self, repo: Path | str, images: Sequence[ImageSpec], workers: int, kind: str, extra: Sequence[str] = ()
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
                if kind == "full" and isinstance(repo, Path):
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
        bytes_written = 0
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
                bytes_written += int(disk["bytes_written"])
        sample = Sample(
            wall=finished.wall,
            cpu=finished.cpu,
            rss_mib=finished.rss_mib,
            engine=float(report["finished_at"]) - float(report["started_at"]),
            export=max(exports),
            snapshot_create=max(creates),
            bytes_read=bytes_read,
            bytes_written=bytes_written,
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
# The samples of a case.


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
    daemon_cpu: dict[str, list[float]] = field(default_factory=dict)
    """Object-store cases: CPU seconds the lab's daemons spent during a run ("SIDE DAEMON")."""
    stored: dict[str, list[int]] = field(default_factory=dict)
    """Object-store cases: bytes each side's run added to its repository, measured from outside
    (the S3 listing's object sizes, the folder's file sizes), by side ("ours", "theirs")."""
