#!/usr/bin/env python3
"""Guest freeze windows, as the guests themselves see them (issue 7's benchmark).

For each lab guest and each condition it backs the guest up several times and reads, from the
guest's serial console, how long its qemu-ga kept the filesystems frozen (`disabling logging
due to filesystem freeze` .. `logging re-enabled due to filesystem unfreeze`, qemu-ga's own
timestamps), next to the window the tool reports. Conditions:

- quiet: the monitor committed nothing for about two seconds before the backup (the best
  case): the lab's monitor commits a new mgrmap every 5 s on its own, and the bench starts the
  backup in the quiet seconds before the next (`lab_monitor.wait_for_quiet_monitor`);
- busy: another client creates and removes snapshots of a scratch image all the time, so the
  monitor commits continuously and every snapshot create waits for the next proposal (the
  worst case Ceph allows with the default paxos_propose_interval of 1 s).

Usage (after scripts/setup.sh; `LAB_GUEST4=1 bash lab/lab.sh up` adds the 4-disk guest):
    python3 bench/freeze_window.py [--repeat 5] [--domain lab-guest --domain lab-guest4] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from lab_monitor import LAB_DIR, wait_for_quiet_monitor

FREEZE = re.compile(rb"^(\d+\.\d+): \w+: disabling logging due to filesystem freeze", re.M)
THAW = re.compile(rb"^(\d+\.\d+): \w+: logging re-enabled due to filesystem unfreeze", re.M)


def rbd(*args: str) -> None:
    """Runs the rbd tool on the lab cluster."""
    subprocess.run(["rbd", "--conf", str(LAB_DIR / "ceph.conf"), *args], check=True, capture_output=True)


def guest_window(log: Path, since: int) -> float | None:
    """The one freeze window (ms) the guest logged after byte `since`, if exactly one."""
    data = log.read_bytes()[since:]
    freezes = [float(m.group(1)) for m in FREEZE.finditer(data)]
    thaws = [float(m.group(1)) for m in THAW.finditer(data)]
    if len(freezes) != 1 or len(thaws) != 1:
        return None
    return (thaws[0] - freezes[0]) * 1000


class MonitorLoad:
    """Keeps the monitor committing: snapshot create/remove on a scratch image, in a loop."""

    def __init__(self) -> None:
        self.image = f"rbd/bench-monitor-load-{os.getpid()}"
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def __enter__(self) -> MonitorLoad:
        rbd("create", "--size", "4M", self.image)
        self.thread.start()
        time.sleep(2)
        return self

    def run(self) -> None:
        """Creates and removes snapshots until stopped."""
        n = 0
        while not self.stop.is_set():
            rbd("snap", "create", f"{self.image}@s{n}")
            rbd("snap", "rm", "--no-progress", f"{self.image}@s{n}")
            n += 1

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()
        subprocess.run(
            ["rbd", "--conf", str(LAB_DIR / "ceph.conf"), "snap", "purge", "--no-progress", self.image],
            capture_output=True,
        )
        rbd("rm", "--no-progress", self.image)


def one_backup(domain: str, repo: Path) -> tuple[float | None, float | None, int, float]:
    """Backs `domain` up and measures its freeze.

    Returns the guest's window, the tool's window, the frozen count and the slowest disk's
    snapshot create (ms: most of the tool's window is that).
    """
    log = LAB_DIR / f"{domain}.console.log"
    since = log.stat().st_size
    proc = subprocess.run(
        [sys.executable, "-m", "virt_rbd_backup", "backup", "--repo", str(repo), "--json", "--domain", domain],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"backup of {domain} failed: {proc.stdout}{proc.stderr}")
    report = json.loads(proc.stdout)["domains"][0]
    time.sleep(0.5)  # let the console log catch up
    create = max(float(d["snapshot_create_ms"] or 0.0) for d in report["disks"])
    return guest_window(log, since), report["freeze"]["window_ms"], report["freeze"]["frozen_filesystems"], create


def _ms(value: float | None) -> str:
    return f"{value:.0f} ms" if value is not None else "-"


def main() -> int:
    """Runs the cases and prints the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--domain", action="append", default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    domains = args.domain or ["lab-guest", "lab-guest4"]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="vrb-freeze-") as tmp:
        for domain in domains:
            if not (LAB_DIR / f"{domain}.console.log").exists():
                print(f"skipping {domain}: not in the lab (LAB_GUEST4=1 bash lab/lab.sh up adds lab-guest4)")
                continue
            for condition in ("quiet", "busy"):
                guest: list[float] = []
                tool: list[float] = []
                creates: list[float] = []
                filesystems = 0
                repo = Path(tmp) / f"{domain}-{condition}"
                for _ in range(args.repeat):
                    if condition == "quiet":
                        wait_for_quiet_monitor()
                        g, t, filesystems, c = one_backup(domain, repo)
                    else:
                        with MonitorLoad():
                            g, t, filesystems, c = one_backup(domain, repo)
                    creates.append(c)
                    if g is not None:
                        guest.append(g)
                    if t is not None:
                        tool.append(t)
                rows.append(
                    {
                        "domain": domain,
                        "condition": condition,
                        "filesystems": filesystems,
                        "runs": len(guest),
                        "guest_median_ms": statistics.median(guest) if guest else None,
                        "guest_max_ms": max(guest) if guest else None,
                        "tool_median_ms": statistics.median(tool) if tool else None,
                        "create_median_ms": statistics.median(creates) if creates else None,
                    }
                )
    header = ("domain", "condition", "fs", "runs", "guest median", "guest max", "tool median", "create median")
    print(
        f"{header[0]:<12} {header[1]:<9} {header[2]:>3} {header[3]:>4} {header[4]:>13} {header[5]:>10} {header[6]:>12}"
        f" {header[7]:>14}"
    )
    for r in rows:
        g_med, g_max, t_med, c_med = (
            _ms(r[k]) for k in ("guest_median_ms", "guest_max_ms", "tool_median_ms", "create_median_ms")
        )
        name, cond, fs, runs = r["domain"], r["condition"], r["filesystems"], r["runs"]
        print(f"{name:<12} {cond:<9} {fs:>3} {runs:>4} {g_med:>13} {g_max:>10} {t_med:>12} {c_med:>14}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
