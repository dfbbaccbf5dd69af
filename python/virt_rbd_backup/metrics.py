"""Metrics of backup, prune and verify runs for node_exporter's textfile collector (``--metrics-file PATH``).

After each run the file is replaced as a whole (written under a temporary name in the same
folder, which the collector ignores since it does not end in ``.prom``, then renamed), so the
collector never reads half a file. Names carry their unit (``_seconds``, ``_bytes``) as
node_exporter's conventions ask; every value describes the last run, so all are gauges. A
backup run writes::

    virt_rbd_backup_build_info{version,librbd,librados,libvirt}  1
    virt_rbd_backup_last_run_timestamp_seconds                 when the last run ended
    virt_rbd_backup_last_run_success                            1: it ran and no domain failed
    virt_rbd_backup_last_success_timestamp_seconds{domain}      when the domain's last good backup ended
    virt_rbd_backup_duration_seconds{domain}                    seconds the domain took in the last run
    virt_rbd_backup_read_bytes{domain}                          bytes read from Ceph for it in the last run
    virt_rbd_backup_bytes_read{domain}                          the same, under its old name (deprecated)
    virt_rbd_backup_disk_read_bytes{domain,disk,kind}           bytes read for one disk (kind: full, incremental)
    virt_rbd_backup_disk_stored_bytes{domain,disk,kind}         bytes stored for one disk
    virt_rbd_backup_domain_status{domain,status}                1 for its status in the last run, 0 for the others
    virt_rbd_backup_domain_consistency{domain,consistency}      1 for its snapshots' consistency, 0 for the others
    virt_rbd_backup_freeze_window_seconds{domain}               how long its guest was frozen (if it was)

``domain_consistency{consistency="frozen"} == 0`` on a running guest is the alert for a backup
that fell back from a guest freeze to crash-consistent snapshots. Prune and verify runs write
files of their own (:func:`render_prune_metrics`, :func:`render_verify_metrics`).

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

from .report import BackupReport, Consistency, DomainStatus, PruneReport, VerifyReport

__all__ = [
    "PREFIX",
    "read_last_success",
    "render_metrics",
    "render_prune_metrics",
    "render_verify_metrics",
    "write_metrics",
    "write_metrics_text",
]

PREFIX = "virt_rbd_backup_"
"""Every metric's name starts with this."""

_STATUSES: tuple[DomainStatus, ...] = ("succeeded", "failed", "skipped")
_CONSISTENCIES: tuple[Consistency, ...] = ("frozen", "crash_consistent_group", "crash_consistent_per_disk", "shut_off")

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


class _Exposition:
    """Gauges in the text exposition format: HELP and TYPE, then the samples."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def metric(self, name: str, help_text: str, samples: Iterable[tuple[str, float]]) -> None:
        self.lines.append(f"# HELP {PREFIX}{name} {help_text}")
        self.lines.append(f"# TYPE {PREFIX}{name} gauge")
        self.lines.extend(f"{PREFIX}{name}{labels} {_number(value)}" for labels, value in samples)

    def build_info(self, versions: Mapping[str, str]) -> None:
        self.metric(
            "build_info",
            "1, labelled with the version of virt-rbd-backup and of the libraries it ran with.",
            [
                (
                    _labels(
                        version=versions.get("virt_rbd_backup", ""),
                        librbd=versions.get("librbd", ""),
                        librados=versions.get("librados", ""),
                        libvirt=versions.get("libvirt", ""),
                    ),
                    1,
                )
            ],
        )

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def render_metrics(
    report: BackupReport | None,
    *,
    now: float,
    previous_last_success: Mapping[str, float] | None = None,
    versions: Mapping[str, str] | None = None,
) -> str:
    """Return the text of the metrics file after a run.

    Args:
        report: The run's report; ``None`` when the run could not start.
        now: The time to record as the run's end when there is no report.
        previous_last_success: ``last_success`` times of the previous file, by domain name.
        versions: :func:`virt_rbd_backup._native.library_versions`, for ``build_info``.
    """
    previous = dict(previous_last_success or {})
    exposition = _Exposition()
    metric = exposition.metric
    if versions is not None:
        exposition.build_info(versions)

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
    read = [(_labels(domain=d.name), sum(disk.bytes_read for disk in d.disks)) for d in domains]
    metric("read_bytes", "Bytes read from Ceph for the domain in the last run.", read)
    metric("bytes_read", "Deprecated name of read_bytes (removed in a later version).", read)
    metric(
        "disk_read_bytes",
        "Bytes read from Ceph for one disk in the last run; kind is full or incremental.",
        [(_labels(domain=d.name, disk=k.target, kind=k.kind), k.bytes_read) for d in domains for k in d.disks],
    )
    metric(
        "disk_stored_bytes",
        "Bytes stored in the repository for one disk in the last run; kind is full or incremental.",
        [(_labels(domain=d.name, disk=k.target, kind=k.kind), k.bytes_written) for d in domains for k in d.disks],
    )
    metric(
        "domain_status",
        "1 for the domain's status in the last run (succeeded, failed, skipped), 0 for the others.",
        [(_labels(domain=d.name, status=s), 1 if d.status == s else 0) for d in domains for s in _STATUSES],
    )
    metric(
        "domain_consistency",
        "1 for the consistency of the domain's snapshots in the last run (frozen, crash_consistent_group, "
        "crash_consistent_per_disk, shut_off), 0 for the others.",
        [
            (_labels(domain=d.name, consistency=c), 1 if d.consistency == c else 0)
            for d in domains
            if d.consistency is not None
            for c in _CONSISTENCIES
        ],
    )
    metric(
        "freeze_window_seconds",
        "Seconds the domain's guest filesystems stayed frozen in the last run.",
        [(_labels(domain=d.name), d.freeze.window_ms / 1000) for d in domains if d.freeze.window_ms is not None],
    )
    return exposition.text()


def render_prune_metrics(report: PruneReport | None, *, now: float, versions: Mapping[str, str] | None = None) -> str:
    """Return the text of a prune run's metrics file (``prune --metrics-file``).

    ``report`` is ``None`` when the prune could not start (no repository, bad options): then
    ``prune_last_run_success`` is 0 and no domain is listed. A dry run writes nothing (the
    caller does not call this).
    """
    exposition = _Exposition()
    if versions is not None:
        exposition.build_info(versions)
    domains = report.domains if report is not None else ()
    exposition.metric("prune_last_run_timestamp_seconds", "When the last prune ended (Unix seconds).", [("", now)])
    exposition.metric(
        "prune_last_run_success",
        "1 if the last prune ran and every domain was pruned without error, else 0.",
        [("", 1 if report is not None and not report.has_problems else 0)],
    )
    exposition.metric(
        "prune_kept_backups",
        "Backups the last prune kept, per domain.",
        [(_labels(domain=d.display_name), len(d.kept)) for d in domains],
    )
    exposition.metric(
        "prune_removed_backups",
        "Backups (and leftovers) the last prune removed, per domain.",
        [(_labels(domain=d.display_name), len(d.removed)) for d in domains],
    )
    return exposition.text()


def render_verify_metrics(report: VerifyReport | None, *, now: float, versions: Mapping[str, str] | None = None) -> str:
    """Return the text of a verify run's metrics file (``verify --metrics-file``).

    ``report`` is ``None`` when verify could not run at all (no repository): then
    ``verify_last_run_success`` is 0.
    """
    exposition = _Exposition()
    if versions is not None:
        exposition.build_info(versions)
    exposition.metric("verify_last_run_timestamp_seconds", "When the last verify ended (Unix seconds).", [("", now)])
    exposition.metric(
        "verify_last_run_success",
        "1 if the last verify ran and found nothing wrong, else 0.",
        [("", 1 if report is not None and report.ok else 0)],
    )
    exposition.metric(
        "verify_backups_checked",
        "Backups the last verify read and checked.",
        [("", len(report.checked) if report is not None else 0)],
    )
    exposition.metric(
        "verify_problems",
        "Problems (damaged or missing files, broken chains, differences from the cluster) the last verify found.",
        [("", len(report.problems) if report is not None else 0)],
    )
    return exposition.text()


def write_metrics(
    path: str | os.PathLike[str], report: BackupReport | None, *, now: float, versions: Mapping[str, str] | None = None
) -> None:
    """Write the metrics of a backup run to ``path`` atomically.

    ``last_success`` times are carried over from the file it replaces; see
    :func:`write_metrics_text`.

    Raises:
        OSError: The file cannot be written; ``path`` is then unchanged.
    """
    target = Path(path)
    write_metrics_text(
        target, render_metrics(report, now=now, previous_last_success=read_last_success(target), versions=versions)
    )


def write_metrics_text(path: str | os.PathLike[str], text: str) -> None:
    """Replace ``path`` with ``text`` atomically.

    The file is written under a temporary name in the same folder (mode 0644: the collector
    runs as another user), synced, and renamed over ``path``.

    Raises:
        OSError: The file cannot be written; ``path`` is then unchanged.
    """
    target = Path(path)
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
