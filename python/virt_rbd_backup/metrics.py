"""Metrics of a backup run for node_exporter's textfile collector (``--metrics-file PATH``).

After each run the file is replaced as a whole (written under a temporary name in the same
folder, which the collector ignores since it does not end in ``.prom``, then renamed), so the
collector never reads half a file. The metrics, all gauges::

    virt_rbd_backup_last_run_timestamp_seconds                 when the last run ended
    virt_rbd_backup_last_run_success                            1: it ran and no domain failed
    virt_rbd_backup_last_success_timestamp_seconds{domain}      when the domain's last good backup ended
    virt_rbd_backup_duration_seconds{domain}                    seconds the domain took in the last run
    virt_rbd_backup_bytes_read{domain}                          bytes read from Ceph for it in the last run
    virt_rbd_backup_domain_status{domain,status}                1 for its status in the last run, 0 for the others
    virt_rbd_backup_freeze_window_seconds{domain}               how long its guest was frozen (if it was)

A domain that failed keeps the ``last_success`` time of the previous file, so
``time() - virt_rbd_backup_last_success_timestamp_seconds > 26 * 3600`` alerts on a domain
whose backups have been failing for a day; a run that could not start at all (libvirt down, a
bad option) keeps every domain's. Domains that are not in the last run's report are dropped
(a domain that was deleted must not alert forever): give each differently selected run
(``--domain``) a metrics file of its own.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

from .report import BackupReport, DomainStatus

__all__ = ["PREFIX", "read_last_success", "render_metrics", "write_metrics"]

PREFIX = "virt_rbd_backup_"
"""Every metric's name starts with this."""

_STATUSES: tuple[DomainStatus, ...] = ("succeeded", "failed", "skipped")

_LAST_SUCCESS = f"{PREFIX}last_success_timestamp_seconds"
_LAST_SUCCESS_LINE = re.compile(
    rf'^{_LAST_SUCCESS}\{{domain="((?:[^"\\]|\\.)*)"\}} (\S+)$',
)


def _escape(value: str) -> str:
    """Escape a label value as the exposition format wants: backslash, quote, newline."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _unescape(value: str) -> str:
    return re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), value)


def _number(value: float) -> str:
    if isinstance(value, int) or value.is_integer():
        return str(int(value))
    return repr(float(value))


def _labels(**labels: str) -> str:
    return "{" + ",".join(f'{key}="{_escape(value)}"' for key, value in labels.items()) + "}"


def read_last_success(path: str | os.PathLike[str]) -> dict[str, float]:
    """Read the ``last_success`` time of each domain from a metrics file this module wrote.

    A missing or unreadable file, or lines that do not parse, give nothing: the previous file
    only carries times over, it is not a source of truth to fail on.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return {}
    found: dict[str, float] = {}
    for line in text.splitlines():
        match = _LAST_SUCCESS_LINE.match(line)
        if match:
            with contextlib.suppress(ValueError):
                value = float(match.group(2))
                if math.isfinite(value):
                    found[_unescape(match.group(1))] = value
    return found


def render_metrics(
    report: BackupReport | None,
    *,
    now: float,
    previous_last_success: Mapping[str, float] | None = None,
) -> str:
    """Return the text of the metrics file after a run.

    Args:
        report: The run's report; ``None`` when the run could not start.
        now: The time to record as the run's end when there is no report.
        previous_last_success: ``last_success`` times of the previous file, by domain name.
    """
    previous = dict(previous_last_success or {})
    out: list[str] = []

    def metric(name: str, help_text: str, samples: Iterable[tuple[str, float]]) -> None:
        out.append(f"# HELP {PREFIX}{name} {help_text}")
        out.append(f"# TYPE {PREFIX}{name} gauge")
        out.extend(f"{PREFIX}{name}{labels} {_number(value)}" for labels, value in samples)

    ended = report.finished_at if report is not None else now
    metric("last_run_timestamp_seconds", "When the last backup run ended (Unix seconds).", [("", ended)])
    ok = report is not None and not report.any_failed
    metric(
        "last_run_success",
        "1 if the last run started and no domain failed, else 0.",
        [("", 1 if ok else 0)],
    )

    domains = report.domains if report is not None else ()
    last_success: dict[str, float] = {}
    if report is None:
        last_success = previous
    else:
        for d in domains:
            if d.status == "succeeded":
                last_success[d.name] = report.finished_at
            elif d.name in previous:
                last_success[d.name] = previous[d.name]
    metric(
        "last_success_timestamp_seconds",
        "When the domain's last successful backup ended (Unix seconds).",
        [(_labels(domain=name), value) for name, value in sorted(last_success.items())],
    )
    metric(
        "duration_seconds",
        "Seconds the domain's backup took in the last run.",
        [(_labels(domain=d.name), d.seconds) for d in domains],
    )
    metric(
        "bytes_read",
        "Bytes read from Ceph for the domain in the last run.",
        [(_labels(domain=d.name), sum(disk.bytes_read for disk in d.disks)) for d in domains],
    )
    metric(
        "domain_status",
        "1 for the domain's status in the last run (succeeded, failed, skipped), 0 for the others.",
        [(_labels(domain=d.name, status=s), 1 if d.status == s else 0) for d in domains for s in _STATUSES],
    )
    metric(
        "freeze_window_seconds",
        "Seconds the domain's guest filesystems stayed frozen in the last run.",
        [(_labels(domain=d.name), d.freeze.window_ms / 1000) for d in domains if d.freeze.window_ms is not None],
    )
    return "\n".join(out) + "\n"


def write_metrics(path: str | os.PathLike[str], report: BackupReport | None, *, now: float) -> None:
    """Write the metrics of a run to ``path`` atomically.

    ``last_success`` times are carried over from the file it replaces. The file is written
    under a temporary name in the same folder (mode 0644: the collector runs as another user),
    synced, and renamed over ``path``.

    Raises:
        OSError: The file cannot be written; ``path`` is then unchanged.
    """
    target = Path(path)
    text = render_metrics(report, now=now, previous_last_success=read_last_success(target))
    fd, temp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fchmod(f.fileno(), 0o644)
            os.fsync(f.fileno())
        os.replace(temp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    # The rename is durable once the folder is synced.
    with contextlib.suppress(OSError):
        dir_fd = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
