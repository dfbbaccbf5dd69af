"""Consistent, sparse, parallel backups of libvirt/QEMU domains whose disks live in Ceph RBD.

The work is done by the Rust core (``virt_rbd_backup._native``, private); this package is its
public Python face::

    import virt_rbd_backup

    report = virt_rbd_backup.backup(domains=["web1"], repo="/srv/backups")
    for domain in report.domains:
        print(domain.name, domain.status, domain.error or "")

Every error raised here derives from :class:`BackupError`. Log records of the core go to the
standard :mod:`logging` logger ``virt_rbd_backup`` (and its children).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any, Literal

from . import _native
from ._native import (
    BackupError,
    CancelledError,
    CephError,
    LibvirtError,
    RepositoryError,
    UsageError,
)
from .report import (
    BackupDiskListing,
    BackupListing,
    BackupReport,
    DiskReport,
    DomainListing,
    DomainReport,
    FreezeReport,
    MonitorHost,
    RbdAuth,
    RbdDisk,
    SkippedDisk,
)

__all__ = [
    "DEFAULT_CONNECT",
    "DEFAULT_REPO",
    "BackupDiskListing",
    "BackupError",
    "BackupListing",
    "BackupReport",
    "CancelledError",
    "CephError",
    "DiskReport",
    "DomainListing",
    "DomainReport",
    "EventCallback",
    "FreezePolicy",
    "FreezeReport",
    "LibvirtError",
    "MonitorHost",
    "RbdAuth",
    "RbdDisk",
    "RepositoryError",
    "SkippedDisk",
    "UsageError",
    "__version__",
    "backup",
    "list_backups",
    "list_domains",
]

__version__: str = _native.__version__

DEFAULT_CONNECT = "qemu:///system"
"""The libvirt URI used when none is given."""

DEFAULT_REPO = "/var/lib/virt-rbd-backup"
"""The backup repository used when none is given."""

FreezePolicy = Literal["auto", "required", "off"]
"""How guest filesystems are frozen around the snapshots.

``auto``: freeze running guests through the QEMU guest agent; if it does not answer, warn and
take crash-consistent snapshots. ``required``: the same, but a failed freeze fails the domain.
``off``: never freeze.
"""

EventCallback = Callable[[dict[str, Any]], object]
"""Receives each event of a run as a dict with an ``"event"`` key; called from worker threads."""


def _names(values: Iterable[str] | str, what: str) -> list[str]:
    """Refuse a lone string where a collection of names is meant ("web1" is not 4 domains)."""
    if isinstance(values, str):
        raise UsageError(f"{what} must be a collection of strings, not the string {values!r}")
    return [str(v) for v in values]


def backup(
    *,
    connect: str = DEFAULT_CONNECT,
    domains: Iterable[str] = (),
    workers: int = 4,
    queue_depth: int = 8,
    freeze: FreezePolicy = "auto",
    freeze_mountpoints: Iterable[str] = (),
    repo: str | os.PathLike[str] = DEFAULT_REPO,
    on_event: EventCallback | None = None,
) -> BackupReport:
    """Back up the RBD disks of libvirt domains into a repository.

    Each domain's disks are snapshotted together (inside a guest filesystem freeze when the
    policy allows), exported in parallel, and the snapshots removed. A failure on one domain is
    recorded in the report and the run goes on with the others.

    Args:
        connect: libvirt URI.
        domains: Domain names or UUIDs; empty means every defined domain.
        workers: Domains backed up at once.
        queue_depth: Reads in flight per image.
        freeze: ``"auto"``, ``"required"`` or ``"off"`` (see :data:`FreezePolicy`).
        freeze_mountpoints: Only these guest mountpoints are frozen (empty: all).
        repo: The backup repository directory.
        on_event: Called with each event as it happens, as a dict whose ``"event"`` key is
            ``disk_skipped``, ``domain_started``, ``domain_warning``, ``disk_progress`` or
            ``domain_finished``. It runs on worker threads and must return quickly; an exception
            it raises is logged and the run goes on.

    Returns:
        The report. Domains that failed are in it with status ``"failed"``; check
        :attr:`BackupReport.any_failed`.

    Raises:
        UsageError: An option makes no sense.
        LibvirtError: libvirt cannot be reached.
        RepositoryError: The repository cannot be used.
        BackupError: Any other reason the run could not start.
        KeyboardInterrupt: Ctrl-C; raised only after the guests were thawed and the snapshots
            removed.

    Example:
        >>> import virt_rbd_backup
        >>> def show(event):
        ...     if event["event"] == "domain_finished":
        ...         print(event["report"]["name"], event["report"]["status"])
        >>> report = virt_rbd_backup.backup(
        ...     domains=["web1", "db1"], repo="/srv/backups", on_event=show
        ... )  # doctest: +SKIP
        web1 succeeded
        db1 succeeded
        >>> report.any_failed  # doctest: +SKIP
        False
    """
    return BackupReport.from_dict(
        _backup_json(
            connect=connect,
            domains=domains,
            workers=workers,
            queue_depth=queue_depth,
            freeze=freeze,
            freeze_mountpoints=freeze_mountpoints,
            repo=repo,
            on_event=on_event,
        )
    )


def _backup_json(
    *,
    connect: str,
    domains: Iterable[str],
    workers: int,
    queue_depth: int,
    freeze: FreezePolicy,
    freeze_mountpoints: Iterable[str],
    repo: str | os.PathLike[str],
    on_event: EventCallback | None,
) -> dict[str, Any]:
    """Run :func:`backup` and return the report exactly as the core wrote it (``--json``)."""
    options = {
        "connect": connect,
        "domains": _names(domains, "domains"),
        "workers": workers,
        "queue_depth": queue_depth,
        "freeze": freeze,
        "freeze_mountpoints": _names(freeze_mountpoints, "freeze_mountpoints"),
        "repo": os.fspath(repo),
    }
    return _native.backup(options, on_event)


def list_domains(*, connect: str = DEFAULT_CONNECT, domains: Iterable[str] = ()) -> list[DomainListing]:
    """List domains with the RBD disks a backup would take and the disks it would skip.

    Args:
        connect: libvirt URI.
        domains: Domain names or UUIDs; empty means every defined domain.

    Returns:
        One listing per domain, in libvirt's order (or the order given).

    Raises:
        LibvirtError: libvirt cannot be reached, or a named domain does not exist.

    Example:
        >>> for d in virt_rbd_backup.list_domains():  # doctest: +SKIP
        ...     print(d.name, [disk.spec for disk in d.rbd_disks])
        web1 ['rbd/web1-root', 'rbd/web1-data']
    """
    return [DomainListing.from_dict(d) for d in _list_domains_json(connect, domains)]


def _list_domains_json(connect: str, domains: Iterable[str]) -> list[dict[str, Any]]:
    """Return the listings exactly as the core wrote them (``list --json``)."""
    return _native.list_domains(connect, _names(domains, "domains"))


def list_backups(*, repo: str | os.PathLike[str] = DEFAULT_REPO, domain: str | None = None) -> list[BackupListing]:
    """List the complete backups in a repository, per domain, oldest first.

    Needs no libvirt: only the repository is read. A backup whose manifest cannot be read is
    listed with its ``error`` set.

    Args:
        repo: The backup repository directory.
        domain: Keep only the backups of this domain (name or UUID).

    Returns:
        One listing per backup.

    Raises:
        RepositoryError: The repository cannot be read.

    Example:
        >>> for b in virt_rbd_backup.list_backups(repo="/srv/backups"):  # doctest: +SKIP
        ...     print(b.domain, b.backup_id, [d.target for d in b.disks])
        web1 20261126T100000Z-1a2b ['vda', 'vdb']
    """
    return [BackupListing.from_dict(b) for b in _list_backups_json(repo, domain)]


def _list_backups_json(repo: str | os.PathLike[str], domain: str | None) -> list[dict[str, Any]]:
    """Return the listings exactly as the core wrote them (``list --repo --json``)."""
    return _native.list_backups(os.fspath(repo), domain)
