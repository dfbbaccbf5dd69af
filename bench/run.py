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

Restore, verify and serve (issue 19; `restore_cases.py`): on a chain of our full backup and three
incrementals of the fully allocated image, our restore to RBD against `rbd import` (+ `rbd
import-diff` of the same diff files), our restore to a file against `cp --sparse=always` (+ a
replay of the diffs), `verify` against `b3sum` of the same files, and `serve`'s first byte and
sequential read against `qemu-nbd` and `nbdcopy` of the raw file.

Object storage (issue 18; `objstore_cases.py`): the fully allocated image backed up, full and
1% incremental, into an `s3://` block repository on the lab's RADOS Gateway against a folder
repository, the same full against `curl --parallel` uploading its blocks from RAM (`s3-put`:
the gateway's ceiling on this machine), and the bytes the second of two copies of one image
adds to the same prefix.

The code: `lab_images.py` makes and removes the images and domains, `measure.py` runs and
measures child processes (both sides of a backup run), `backup_cases.py`, `restore_cases.py` and
`objstore_cases.py` hold the cases (`Bench` their order), `report.py` the medians, targets and table; this file is
the command line.

The lab's memstore OSD holds a few GiB in RAM; `--disk` runs its own cases on 24 GiB images in
the pool of a BlueStore OSD that `lab.sh disk-osd up` adds, where a run's fixed costs no longer
dominate.

Usage: `python3 bench/run.py [--quick] [--repeat N] [--json out.json] [--disk [GIB]] [--case NAME]...`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path

from backup_cases import Bench
from lab_images import (
    DISK_OSD,
    DISK_POOL,
    DISK_SIZE,
    GIB,
    MIB,
    NEARFULL_RATIO,
    SCALES,
    Lab,
    Scale,
    image_specs,
    lab_pools,
    leftovers,
    load_lab_env,
    log,
    osd_space,
    remove_image_and_domain,
    run,
)
from measure import Runner, run_measured
from objstore_cases import S3Bucket
from report import check_targets, environment, fmt, summarize_case, table

REPORT_VERSION = 1


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
            "s3-full",
            "s3-full-enc",
            "s3-full-http",
            "s3-put",
            "s3-incr",
            "s3-dedup",
            "restore-rbd",
            "restore-file",
            "verify",
            "serve",
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


# The third-party tools a case compares with that the lab's packages do not bring, and how
# to get them (b3sum is not packaged in Debian 12; nbdkit is only a reference for serve).
CASE_TOOLS = {
    "verify": {"b3sum": "cargo install --locked b3sum"},
    "serve": {"nbdkit": "apt-get install nbdkit"},
}


def check_case_tools(cases: set[str] | None) -> None:
    """Stop before the lab work when a case's reference tool is missing."""
    for case, tools in CASE_TOOLS.items():
        if cases is not None and case not in cases:
            continue
        for tool, install in tools.items():
            if shutil.which(tool) is None:
                sys.exit(
                    f"case {case} compares with {tool}, which is not installed: {install} (or leave out --case {case})"
                )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; 0 when it ran (targets missed are reported, not an error)."""
    args = parse_args(argv)
    if not args.cleanup and not args.profile and args.disk is None:
        check_case_tools(set(args.case) if args.case else None)
    load_lab_env()
    if args.cleanup:
        pools = lab_pools()
        for name in leftovers():
            log(f"removing {name}")
            remove_image_and_domain(name, pools)
        shutil.rmtree(args.target, ignore_errors=True)
        if "LAB_S3_BUCKET" in os.environ:
            bucket = S3Bucket()
            for prefix in bucket.leftover_prefixes():
                log(f"removing s3 prefix {prefix}")
                bucket.remove(prefix)
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
    by_name = {c.name: c for c in cases}
    targets = check_targets(by_name)
    print(
        f"virt-rbd-backup benchmark: {env['tool']} (checkout {env['checkout']}), {env['rbd'].split(' (')[0]}, "
        f"{env['cpus']} CPUs, {args.repeat} runs per side, medians, target {args.target}"
    )
    print(table(cases))
    for c in cases:
        if c.snapshot_ops:
            ops = ", ".join(f"{op} {t:.2f} s" for op, t in c.snapshot_ops.items())
            print(f"monitor round trips measured in {c.name}: {ops} (right after our full's commit)")
        if c.stored:
            sides = {"ours": "virt-rbd-backup", "theirs": c.theirs_tool}
            stored = ", ".join(f"{sides[side]} {value / MIB:.2f} MiB" for side, value in c.stored.items())
            read = "" if c.bytes_read is None else f"; read from Ceph {c.bytes_read / MIB:.1f} MiB"
            print(f"{c.name}: bytes added to the repository (from outside the tool): {stored}{read}")
        if c.daemon_cpu:
            spent = ", ".join(f"{key} {value:.2f} s" for key, value in c.daemon_cpu.items())
            who = f"ours = virt-rbd-backup's run, theirs = {c.theirs_tool}'s"
            print(f"{c.name}: CPU of the lab's daemons during a run ({who}): {spent}")
        if c.stock_wall is not None:
            print(
                f"{c.name} with Ceph's tools alone (rbd snap create, export-diff, snap rm of the old base): "
                f"{c.stock_wall:.2f} s, ours {c.ours.wall:.2f} s"
            )
    if (put := by_name.get("s3-put")) and (full := by_name.get("s3-full")):
        print(
            f"gateway ceiling: curl alone uploads the blocks in {put.theirs.wall:.2f} s, the folder full takes "
            f"{full.theirs.wall:.2f} s: no client reaches more than x{full.theirs.wall / put.theirs.wall:.2f} of the "
            "folder's throughput into this gateway (issue 18's target: 0.7)"
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
