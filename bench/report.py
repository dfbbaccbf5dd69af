"""The benchmark's report: medians, ratios, targets, the table, what ran.

Medians and ratios of each case, the issue's targets checked on them, the table, and what ran
(versions, machine).
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from lab_images import MIB, REPO_ROOT
from measure import CaseResult, Sample

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
    stored: dict[str, float]
    """Object-store cases: median bytes each side's run added to its repository."""
    bytes_read: float | None
    """Ours: median bytes read from the cluster, as reported."""
    daemon_cpu: dict[str, float]
    """Object-store cases: median CPU seconds of the lab's daemons during a run, by side and daemon."""
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
        stored={side: statistics.median(values) for side, values in case.stored.items() if values},
        bytes_read=median([s.bytes_read for s in case.ours]),
        daemon_cpu={key: statistics.median(values) for key, values in case.daemon_cpu.items() if values},
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
    return targets + restore_targets(cases) + objstore_targets(cases)


RESTORE_TARGETS: tuple[tuple[str, str, float], ...] = (
    ("rst-rbd", "restore of a full to RBD: at least as fast as rbd import", 1.0),
    ("rst-rbd-ch", "restore of a full + 3 incrementals to RBD: at least as fast as rbd import + import-diff", 1.0),
    ("rst-file", "restore of a full to a file: at least as fast as cp --sparse=always", 1.0),
    ("rst-file-ch", "restore of a full + 3 incrementals to a file: at least as fast as cp + replay", 1.0),
    ("verify", "verify: >= 0.8x of b3sum of the same files", 0.8),
    ("serve-read", "sequential read through serve's NBD: >= 0.5x of reading the raw file", 0.5),
)
"""(case, target line, least speed ratio): the issue 19 targets that are ratios."""


def restore_targets(cases: dict[str, CaseSummary]) -> list[Target]:
    """The targets of issue 19 for the restore, verify and serve cases that ran."""
    targets: list[Target] = []
    for name, line, least in RESTORE_TARGETS:
        if case := cases.get(name):
            fsynced = f"x{case.speedup_vs_fsynced:.2f} if theirs fsynced"
            measured = f"x{case.speedup:.2f} ({fsynced}), RSS {case.ours.rss_mib:.0f} MiB"
            targets.append(Target(line, measured, case.speedup >= least))
    if first := cases.get("serve-first"):
        targets.append(
            Target(
                "first byte served by serve: < 1 s",
                f"{first.ours.wall:.3f} s (qemu-nbd of the raw file {first.theirs.wall:.3f} s)",
                first.ours.wall < 1.0,
            )
        )
    return targets


def objstore_targets(cases: dict[str, CaseSummary]) -> list[Target]:
    """The targets of issue 18's benchmark for the object-store cases that ran."""
    targets: list[Target] = []
    for name, how in (("s3-full", ""), ("s3-full-enc", ", encrypted"), ("s3-full-http", ", plain HTTP")):
        if full := cases.get(name):
            targets.append(
                Target(
                    f"full into the RGW block repository{how}: >= 0.7x the folder repository's throughput,"
                    " peak RSS < 256 MiB",
                    f"x{full.speedup:.2f} ({full.ours.data_mib_s:.0f} vs {full.theirs.data_mib_s:.0f} MiB/s), "
                    f"RSS {full.ours.rss_mib:.0f} MiB (folder {full.theirs.rss_mib:.0f} MiB)",
                    full.speedup >= 0.7 and full.ours.rss_mib < 256,
                )
            )
    if (incr := cases.get("s3-incr")) and incr.ours_full_wall:
        stored = incr.stored.get("ours", 0.0)
        read = incr.bytes_read or 0.0
        changed = incr.data_bytes
        # What changed, plus the new manifest and block lists (a few KiB): 10% of slack.
        costs_change = stored <= changed * 1.1 + MIB and read <= changed * 1.1
        targets.append(
            Target(
                "1% incremental into the RGW block repository: costs what changed (bytes read and stored"
                " within 1.1x of the change), peak RSS < 256 MiB",
                f"changed {changed / MIB:.1f} MiB, read {read / MIB:.1f} MiB, stored {stored / MIB:.1f} MiB "
                f"(folder {incr.stored.get('theirs', 0.0) / MIB:.1f} MiB); wall {incr.ours.wall:.2f} s = "
                f"{incr.ours.wall / incr.ours_full_wall:.1%} of its full, x{incr.speedup:.2f} of the folder's "
                f"incremental; RSS {incr.ours.rss_mib:.0f} MiB",
                costs_change and incr.ours.rss_mib < 256,
            )
        )
    if (dedup := cases.get("s3-dedup")) and dedup.stored.get("theirs"):
        ratio = dedup.stored.get("ours", 0.0) / dedup.stored["theirs"]
        targets.append(
            Target(
                "dedup of two copies of one image: stored bytes of the second <= 5% of the first, peak RSS < 256 MiB",
                f"{dedup.stored.get('ours', 0.0) / MIB:.3f} MiB / {dedup.stored['theirs'] / MIB:.1f} MiB = "
                f"{ratio:.3%}; RSS {max(dedup.ours.rss_mib, dedup.theirs.rss_mib):.0f} MiB",
                ratio <= 0.05 and max(dedup.ours.rss_mib, dedup.theirs.rss_mib) < 256,
            )
        )
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
            f"{'':<13} {'ours/theirs':<16} speed x{c.speedup:.2f} (x{c.speedup_vs_fsynced:.2f} if theirs fsynced)"
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
