"""The lab monitor's quiet moments, for the benchmarks that time snapshot creates.

A snapshot create (or remove) is a monitor commit, and the monitor proposes it at once only if
its last commit is more than `paxos_propose_interval` (1 s by default) old; otherwise the create
waits for the next proposal, up to a second. Besides the benchmarks' own commits, the lab's
monitor commits on its own every 5 s: the lab runs no ceph-mgr, so each monitor tick commits a
new mgrmap (`ceph log last 8 debug cluster`: "mgrmap eN: no daemons active"), and the cluster log
entry about it is committed in the proposal after, about a second later. A create that happens
to start in the two seconds after that tick pays up to a second that the tool's own work does
not explain (measured: 66 to 947 ms for the same create on a quiet lab). A benchmark that wants
the tool's own cost starts its run in the quiet part of that cycle; what a busy monitor costs is
measured apart.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

LAB_DIR = Path(os.environ.get("LAB_DIR", "/var/lib/virt-rbd-backup-lab"))
TICK_PATIENCE = 7.0
"""Seconds to watch for the mgrmap epoch to move (the monitor ticks every 5 s)."""
AFTER_TICK = 2.0
"""Seconds after the mgrmap commit: its cluster log entry's commit and a propose interval."""


def lab_ceph_conf() -> str:
    """The lab's ceph.conf, looked up at each call.

    `CEPH_CONF` as `lab.sh env` exports it (bench/run.py loads that after importing this
    module), else the one in LAB_DIR.
    """
    return os.environ.get("CEPH_CONF", str(LAB_DIR / "ceph.conf"))


def mgrmap_epoch() -> int | None:
    """The monitor's mgrmap epoch, if it can be read."""
    out = subprocess.run(
        ["ceph", "--conf", lab_ceph_conf(), "mgr", "stat", "-f", "json"],
        capture_output=True,
        text=True,
        check=False,
    )
    try:
        return int(json.loads(out.stdout)["epoch"])
    except (ValueError, KeyError, TypeError):
        return None


def wait_for_quiet_monitor() -> None:
    """Waits for a quiet monitor.

    Returns about 2 s after the monitor's periodic mgrmap commit, so about 3 s before the next
    (after 3 s of sleep when the epoch cannot be read or does not move within 7 s).
    """
    first = mgrmap_epoch()
    deadline = time.monotonic() + TICK_PATIENCE
    while first is not None and time.monotonic() < deadline:
        time.sleep(0.1)
        if mgrmap_epoch() != first:
            time.sleep(AFTER_TICK)
            return
    time.sleep(3)
