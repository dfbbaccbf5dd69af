"""Consistent, sparse, parallel backups of libvirt/QEMU domains whose disks live in Ceph RBD.

The work is done by the Rust core (``virt_rbd_backup._native``, private); this package is its
public Python face::

    import virt_rbd_backup

    report = virt_rbd_backup.backup(domains=["web1"], repo="/srv/backups")
    for domain in report.domains:
        print(domain.name, domain.status, domain.error or "")
    virt_rbd_backup.restore("web1", disk="vda", to="/srv/restore/web1-vda.raw", repo="/srv/backups")
    assert virt_rbd_backup.verify(repo="/srv/backups").ok
    # A new domain "web1-copy" on restored images rbd/web1-copy-vda, ...:
    virt_rbd_backup.restore_define("web1", name="web1-copy", repo="/srv/backups")
    virt_rbd_backup.prune(keep_daily=7, keep_weekly=4, repo="/srv/backups")

    # restic as the target, as the original tool used it; the password from a file (or the
    # RESTIC_PASSWORD* environment), never as a value:
    restic = virt_rbd_backup.ResticTarget(repository="/srv/restic", password_file="/etc/restic.pass")
    virt_rbd_backup.backup(restic=restic)
    for snapshot in virt_rbd_backup.list_restic(restic, domain="web1"):
        print(snapshot.id, snapshot.disk)

    # What a backup would do, touching nothing:
    print(virt_rbd_backup.plan(repo="/srv/backups").estimated_bytes)

Every error raised here derives from :class:`BackupError`. Log records of the core go to the
standard :mod:`logging` logger ``virt_rbd_backup`` (and its children).
"""

from __future__ import annotations

import dataclasses
import datetime
import inspect
import os
import re
from collections.abc import Callable, Iterable
from typing import Any, Literal, overload

from . import _native
from ._native import (
    BackupError,
    CancelledError,
    CephError,
    InconsistentError,
    LibvirtError,
    RepositoryError,
    ResticError,
    UsageError,
    parse_rate,
)
from .access import DiskServer, MountState, mount, mount_status, serve, umount
from .report import (
    BackupDiskListing,
    BackupListing,
    BackupPlan,
    BackupReport,
    DefineReport,
    DiskReport,
    DomainListing,
    DomainPruneReport,
    DomainReport,
    FreezeReport,
    KeptBackup,
    LiveDisk,
    LiveRestoreReport,
    MonitorHost,
    OrphanThaw,
    PlannedDisk,
    PlannedDomain,
    PruneReport,
    RbdAuth,
    RbdDisk,
    RekeyReport,
    RemovedBackup,
    ResticSnapshot,
    RestoreReport,
    SkippedDisk,
    SweepSummary,
    VerifyProblem,
    VerifyReport,
)

__all__ = [
    "DEFAULT_CONNECT",
    "DEFAULT_REPO",
    "BackupDiskListing",
    "BackupError",
    "BackupListing",
    "BackupMode",
    "BackupPlan",
    "BackupReport",
    "CancelledError",
    "CephError",
    "ConsistencyPolicy",
    "DefineReport",
    "DiskReport",
    "DiskServer",
    "DomainListing",
    "DomainPruneReport",
    "DomainReport",
    "EventCallback",
    "FreezePolicy",
    "FreezeReport",
    "InconsistentError",
    "KeptBackup",
    "LibvirtError",
    "LiveDisk",
    "LiveRestoreReport",
    "MonitorHost",
    "MountState",
    "OrphanThaw",
    "PlannedDisk",
    "PlannedDomain",
    "PruneReport",
    "RbdAuth",
    "RbdDisk",
    "RekeyReport",
    "RemovedBackup",
    "RepoAccess",
    "RepositoryError",
    "ResticError",
    "ResticSnapshot",
    "ResticTarget",
    "RestoreReport",
    "SkippedDisk",
    "SweepSummary",
    "UsageError",
    "VerifyProblem",
    "VerifyReport",
    "__version__",
    "backup",
    "list_backups",
    "list_domains",
    "list_restic",
    "mount",
    "mount_status",
    "parse_duration",
    "parse_rate",
    "plan",
    "prune",
    "rekey",
    "restore",
    "restore_define",
    "restore_live",
    "serve",
    "thaw_orphans",
    "umount",
    "verify",
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

ConsistencyPolicy = Literal["auto", "group", "per-disk"]
"""How a domain's disks get one instant when no guest freeze gives it: ``auto`` takes an RBD
group snapshot when all disks of a running domain are in one RBD group, ``group`` also puts
disks that are in no group into a group per domain (``virt-rbd-backup-<uuid>``; this changes
the images' group membership), ``per-disk`` never uses groups."""

BackupMode = Literal["auto", "full"]
"""What kind of backup to take of each disk.

``auto``: incremental (the blocks changed since the disk's previous backup, as an rbd diff)
when the previous backup and its snapshot can serve as base, otherwise full, with the reason as
a warning. ``full``: always full, starting a new chain.
"""

EventCallback = Callable[[dict[str, Any]], object]
"""Receives each event of a run as a dict with an ``"event"`` key; called from worker threads."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class ResticTarget:
    """A restic repository as a backup target (and a source for ``list_restic`` and ``restore``).

    The password is never a value here: it comes from ``password_file`` or, without one, from
    restic's own ``RESTIC_PASSWORD``, ``RESTIC_PASSWORD_FILE`` or ``RESTIC_PASSWORD_COMMAND`` in
    the environment. The repository reaches restic through its environment, not its command
    line (a REST URL may carry credentials).
    """

    repository: str
    """The restic repository: a path, ``sftp:...``, ``rest:...``, ``s3:...``."""
    password_file: str | None = None
    """A file holding the repository's password."""
    binary: str = "restic"
    """The restic program (looked up in ``PATH`` unless a path)."""

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON shape of the core's ``ResticTarget``."""
        return {"repository": self.repository, "password_file": self.password_file, "binary": self.binary}


@dataclasses.dataclass(frozen=True)
class RepoAccess:
    """How to open a repository beyond its location (``repo``): its layout, key and S3 settings.

    ``repo`` is a folder or ``s3://BUCKET/PREFIX``. S3 always holds the block layout (each
    4 MiB block stored once under its hash: deduplicated, every backup complete on its own); a
    folder holds the layout it was created with, by default the folder layout (sparse raw
    images and rbd diffs, readable with stock tools). No field is a secret: the S3 keys come
    from ``s3_credentials`` (an AWS credentials file, mode 0600) or the ``AWS_*`` environment,
    the encryption key from ``key_file`` (mode 0600).
    """

    layout: Literal["folder", "blocks"] | None = None
    """The layout of a new repository in a folder (``"blocks"`` for dedup and encryption)."""
    key_file: str | os.PathLike[str] | None = None
    """Key file of an encrypted block repository; a new repository creates it (0600). Keep a
    copy off the host: without it the backups cannot be read."""
    s3_endpoint: str | None = None
    """``https://host:port`` of an S3-compatible store (RADOS Gateway, MinIO)."""
    s3_region: str | None = None
    """The region the endpoint signs for."""
    s3_credentials: str | os.PathLike[str] | None = None
    """An AWS shared credentials file (0600) with the S3 keys."""
    s3_ca_file: str | os.PathLike[str] | None = None
    """CA certificates (PEM) for the endpoint's TLS."""

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON shape of the core's ``RepoAccess``."""
        return {
            field.name: (os.fspath(value) if isinstance(value, os.PathLike) else value)
            for field in dataclasses.fields(self)
            if (value := getattr(self, field.name)) is not None
        }


def _access(access: RepoAccess | None) -> dict[str, Any] | None:
    """The core's JSON of repository access options, if any."""
    return None if access is None else access.to_dict()


@overload
def _restic(target: ResticTarget | str) -> dict[str, Any]: ...
@overload
def _restic(target: ResticTarget | str | None) -> dict[str, Any] | None: ...
def _restic(target: ResticTarget | str | None) -> dict[str, Any] | None:
    """The core's JSON of a restic target given as a :class:`ResticTarget` or a repository."""
    if target is None:
        return None
    if not isinstance(target, ResticTarget):
        target = ResticTarget(repository=os.fspath(target))
    return target.to_dict()


def _rate(value: int | str | None) -> int | None:
    """Bytes per second of a ``bwlimit`` given as a number or as text such as ``"200M"``."""
    if isinstance(value, str):
        return parse_rate(value)
    return value


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
    consistency: ConsistencyPolicy = "auto",
    repo: str | os.PathLike[str] = DEFAULT_REPO,
    mode: BackupMode = "auto",
    full_every: int | None = None,
    agent_timeout: int = 30,
    freeze_timeout: int = 60,
    ceph_timeout: int = 60,
    compress: str | None = None,
    bwlimit: int | str | None = None,
    restic: ResticTarget | str | None = None,
    access: RepoAccess | None = None,
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
        consistency: Consistency across disks without a freeze: ``"auto"``, ``"group"`` or
            ``"per-disk"`` (see :data:`ConsistencyPolicy`). A group-consistent backup records
            ``crash_consistent_group``; restic targets always take per-disk snapshots.
        repo: The backup repository directory.
        mode: ``"auto"`` (incremental when a sound base exists) or ``"full"`` (see
            :data:`BackupMode`).
        full_every: Take a full backup (a new chain) of a disk every this many backups of it;
            ``None``: only when no incremental is possible.
        agent_timeout: Seconds to wait for the guest agent to answer a freeze or thaw.
        freeze_timeout: Longest a guest may stay frozen, in seconds, counted from before the
            freeze call (so it must be longer than ``agent_timeout``): past it a watchdog thaws
            it and the domain fails as inconsistent.
        ceph_timeout: Seconds a Ceph monitor or OSD operation may take before the domain fails
            (a hung monitor or OSD then costs one domain, not the run).
        compress: Compress the stored files with zstd: ``"zstd"`` (level 3) or ``"zstd:LEVEL"``
            (1 to 19); ``None``: stored uncompressed. A compressed file is still the stock
            format once decompressed (``zstd -dc FILE | rbd import-diff - IMAGE``).
        bwlimit: The most the whole run reads from the cluster, all disks together, in bytes
            per second: a number, or text such as ``"200M"``, ``"1.5G"`` or ``"512K"`` (binary
            units, see :func:`parse_rate`); ``None``: no limit.
        restic: Send each disk to this restic repository (``restic backup --stdin``, tagged
            with the domain UUID, name and disk) instead of ``repo``; a string is a
            repository whose password comes from the environment. Every backup is then full
            (restic deduplicates) and the tool's snapshots are removed after the upload.
        access: How to open ``repo`` when it is ``s3://BUCKET/PREFIX`` or a block repository
            in a folder: layout, key file, S3 endpoint and credentials (:class:`RepoAccess`).
        on_event: Called with each event as it happens, as a dict whose ``"event"`` key is
            ``disk_skipped``, ``domain_started``, ``domain_warning``, ``disk_progress`` or
            ``domain_finished``. It runs on worker threads and must return quickly; an exception
            it raises is logged and the run goes on.

    Returns:
        The report. Domains that failed are in it with status ``"failed"``; check
        :attr:`BackupReport.any_failed`.

    Raises:
        UsageError: An option makes no sense (also: restic without a password source, an
            unknown compression, a bad rate).
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
    # Every parameter, by name: the list of options is written once, in the signature above.
    return BackupReport.from_dict(_backup_json(**locals()))


_OPTION_TO_NATIVE: dict[str, Callable[[Any], Any]] = {
    "domains": lambda value: _names(value, "domains"),
    "freeze_mountpoints": lambda value: _names(value, "freeze_mountpoints"),
    "repo": os.fspath,
    "bwlimit": _rate,
    "restic": _restic,
    "access": lambda value: _access(value) or {},
}
"""How the value of a backup (or plan) option is given to the core, where it is not as it is."""


def _unchanged(value: Any) -> Any:
    return value


def _native_options(options: dict[str, Any]) -> dict[str, Any]:
    """The core's ``BackupOptions`` as JSON (a plan reads them too), from keyword arguments of :func:`backup`.

    The one place where backup options are converted: the keys stay the parameter names and
    keep their order (so a bad value is reported for the first bad option, as given); the core
    rejects a name it does not know.
    """
    return {name: _OPTION_TO_NATIVE.get(name, _unchanged)(value) for name, value in options.items()}


def _backup_json(*, on_event: EventCallback | None, **options: Any) -> dict[str, Any]:
    """Run :func:`backup` and return the report exactly as the core wrote it (``--json``)."""
    return _native.backup(_native_options(options), on_event)


def plan(
    *,
    connect: str = DEFAULT_CONNECT,
    domains: Iterable[str] = (),
    freeze: FreezePolicy = "auto",
    freeze_mountpoints: Iterable[str] = (),
    consistency: ConsistencyPolicy = "auto",
    repo: str | os.PathLike[str] = DEFAULT_REPO,
    mode: BackupMode = "auto",
    full_every: int | None = None,
    ceph_timeout: int = 60,
    restic: ResticTarget | str | None = None,
    access: RepoAccess | None = None,
) -> BackupPlan:
    """Say what :func:`backup` with the same options would do, without doing any of it.

    Per domain: the RBD disks it would take and those it would skip, whether each disk would be
    a full or an incremental backup (with the reason when a full one replaces an incremental),
    the backup an incremental would build on, and the bytes it would read (whole 4 MiB blocks;
    the image may change until the real run). Nothing is locked, frozen, snapshotted or
    written.

    Args:
        connect: libvirt URI.
        domains: Domain names or UUIDs; empty means every defined domain.
        freeze: The freeze policy (only decides whether the plan says a guest would be frozen).
        freeze_mountpoints: As for :func:`backup` (accepted so that the same options fit both).
        consistency: As for :func:`backup` (accepted so that the same options fit both).
        repo: The backup repository whose latest backups incrementals would build on.
        mode: ``"auto"`` or ``"full"``.
        full_every: As for :func:`backup`.
        ceph_timeout: As for :func:`backup` (a domain whose cluster does not answer in time
            has its ``error`` set).
        restic: As for :func:`backup`.
        access: As for :func:`backup`: how to open a block repository (its newest backup is
            what incrementals would build on).

    Returns:
        The plan; a domain that cannot be planned has its ``error`` set.

    Raises:
        UsageError: An option makes no sense.
        LibvirtError: libvirt cannot be reached, or a named domain does not exist.

    Example:
        >>> p = virt_rbd_backup.plan(domains=["web1"], repo="/srv/backups")  # doctest: +SKIP
        >>> [(d.target, d.kind, d.estimated_bytes) for d in p.domains[0].disks]  # doctest: +SKIP
        [('vda', 'incremental', 41943040)]
    """
    # Every parameter, by name, as in backup().
    return BackupPlan.from_dict(_plan_json(**locals()))


_PLAN_OPTIONS = frozenset(inspect.signature(plan).parameters)
"""The backup options a plan takes: the parameters of :func:`plan`."""


def _plan_json(**options: Any) -> dict[str, Any]:
    """Run :func:`plan` and return the plan exactly as the core wrote it (``plan --json``).

    Backup options that do not change a plan (workers, the agent and freeze timeouts,
    compression, the rate limit) are accepted and ignored, so the CLI hands
    ``backup --dry-run`` the options of the backup.
    """
    return _native.plan(_native_options({name: value for name, value in options.items() if name in _PLAN_OPTIONS}))


def thaw_orphans() -> list[OrphanThaw]:
    """Thaw guests left frozen by backup runs of this host that died with their thaw watchdog.

    Each run writes a record before it freezes a guest (under ``$VIRT_RBD_BACKUP_RUNTIME_DIR``,
    default ``/run/virt-rbd-backup``) and removes it once the guest is thawed. When systemd
    kills the unit's whole cgroup, the run's out-of-process thaw watchdog dies with it; the
    unit's ``ExecStopPost=virt-rbd-backup thaw-orphans`` then calls this. A guest is thawed
    only when every record of it belongs to a process that is gone, so a live run's freeze is
    never undone. Every backup run does the same before its first freeze.

    Returns:
        One entry per domain with a record of a dead run (an empty list: nothing to do).

    Raises:
        BackupError: the records cannot be read.
    """
    return [OrphanThaw.from_dict(o) for o in _native.thaw_orphans()]


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


def list_backups(
    *, repo: str | os.PathLike[str] = DEFAULT_REPO, domain: str | None = None, access: RepoAccess | None = None
) -> list[BackupListing]:
    """List the complete backups in a repository, per domain, oldest first.

    Needs no libvirt: only the repository is read. A backup whose manifest cannot be read is
    listed with its ``error`` set.

    Args:
        repo: The backup repository: a folder or ``s3://BUCKET/PREFIX``.
        domain: Keep only the backups of this domain (name or UUID).
        access: How to open a block repository (:class:`RepoAccess`).

    Returns:
        One listing per backup.

    Raises:
        RepositoryError: The repository cannot be read.

    Example:
        >>> for b in virt_rbd_backup.list_backups(repo="/srv/backups"):  # doctest: +SKIP
        ...     print(b.domain, b.backup_id, [d.target for d in b.disks])
        web1 20261126T100000Z-1a2b ['vda', 'vdb']
    """
    return [BackupListing.from_dict(b) for b in _list_backups_json(repo, domain, access)]


def _list_backups_json(
    repo: str | os.PathLike[str], domain: str | None, access: RepoAccess | None = None
) -> list[dict[str, Any]]:
    """Return the listings exactly as the core wrote them (``list --repo --json``)."""
    return _native.list_backups(os.fspath(repo), domain, _access(access))


def list_restic(restic: ResticTarget | str, domain: str | None = None) -> list[ResticSnapshot]:
    """List this tool's disk backups in a restic repository, oldest first.

    Only snapshots tagged ``virt-rbd-backup`` are listed; each is one disk of one domain, and
    ``complete`` says whether a seal vouches for it (restore takes only those; an incomplete one
    was left by a run that did not finish and may hold only the start of the disk).

    Args:
        restic: The restic repository (a string: its password from the environment).
        domain: Keep only this domain's (name or UUID).

    Returns:
        One entry per restic snapshot.

    Raises:
        ResticError: restic cannot be run or fails (a wrong password, no repository).
        UsageError: The target makes no sense.

    Example:
        >>> for s in virt_rbd_backup.list_restic("/srv/restic", domain="web1"):  # doctest: +SKIP
        ...     print(s.id[:8], s.disk, s.time)
        4f1c2a9e vda 2026-11-26T10:34:00.123+01:00
    """
    return [ResticSnapshot.from_dict(s) for s in _list_restic_json(restic, domain)]


def _list_restic_json(restic: ResticTarget | str, domain: str | None) -> list[dict[str, Any]]:
    """Return the snapshots exactly as the core wrote them (``list --restic-repo --json``)."""
    return _native.list_restic(_restic(restic), domain)


def restore(
    domain: str,
    *,
    to: str | os.PathLike[str],
    disk: str | None = None,
    backup: str | None = None,
    force: bool = False,
    repo: str | os.PathLike[str] = DEFAULT_REPO,
    ceph_conf: str | os.PathLike[str] | None = None,
    ceph_user: str | None = None,
    connect: str = DEFAULT_CONNECT,
    restic: ResticTarget | str | None = None,
    access: RepoAccess | None = None,
    read_back: bool = False,
) -> RestoreReport:
    """Restore one disk of a backup into a sparse raw file or an RBD image.

    The backup's chain (its full backup, then each incremental) is replayed, every stored file
    checked against its checksum on the way, and the result is compared with the backup's
    content checksum: a restore either reproduces the backed-up disk exactly or fails. By
    default the result's block hashes come from the bytes as they are written, and only blocks
    an incremental wrote over are read back from the target; ``read_back`` reads every block
    back (README, "Safety"). It is
    written under a temporary name and renamed into place only then, so a failure or Ctrl-C
    leaves no partial target.

    Args:
        domain: Domain name or UUID, as the repository knows it (the domain may be gone from
            libvirt).
        to: Where to: a string in the CLI syntax, ``rbd:POOL/IMAGE``, ``rbd:POOL/NAMESPACE/IMAGE``
            or a file path; a path object is always a file.
        disk: The disk (``vda``); may be left out when the backup has one disk.
        backup: Backup id; ``None`` or ``"latest"``: the newest complete backup.
        force: Replace an existing target.
        repo: The backup repository directory.
        ceph_conf: For RBD targets: a ceph.conf (with its keyring) to connect with, instead of
            the monitors and the libvirt secret the domain's saved XML names.
        ceph_user: The Ceph user with ``ceph_conf`` (default ``admin``).
        connect: libvirt URI, to read the domain's Ceph key when no ``ceph_conf`` is given.
        restic: Restore from this restic repository instead of ``repo``: ``backup`` is then a
            restic snapshot id (a prefix will do) or ``latest``, and an RBD target needs
            ``ceph_conf`` (restic keeps no domain XML). Only sealed (complete) snapshots are
            restored: ``latest`` passes over the others (listed in the report's ``skipped``),
            one asked for by id is refused; what ``restic dump`` returns and the restored data
            are checked against the seal's size and checksum.
        access: How to open ``repo`` when it is ``s3://...`` or a block repository
            (:class:`RepoAccess`); such a backup is complete on its own (its chain is itself).
        read_back: Check the result by reading all of it back from the target (also catches
            storage that acknowledged a write and holds other bytes); slower.

    Returns:
        The report: the chain replayed, bytes written, the checksum verified.

    Raises:
        UsageError: A bad target, a target that exists without ``force``, a backup with several
            disks and no ``disk``.
        RepositoryError: The backup does not exist or its data is damaged.
        ResticError: restic failed (a wrong password, a damaged pack), or the snapshot has no
            seal, or what restic returned differs from its seal (a short or altered dump).
        CephError: The RBD target cannot be written.
        LibvirtError: The domain's Ceph key cannot be read.
        KeyboardInterrupt: Ctrl-C; raised only after the partial target was removed.

    Example:
        >>> r = virt_rbd_backup.restore(
        ...     "web1", disk="vda", to="rbd:rbd/web1-root-restored", repo="/srv/backups"
        ... )  # doctest: +SKIP
        >>> r.chain, r.target  # doctest: +SKIP
        (('20261126T100000Z', '20261127T100000Z'), 'rbd:rbd/web1-root-restored')
    """
    # Every parameter, by name: the list of options is written once, in the signature above.
    return RestoreReport.from_dict(_restore_json(**locals()))


def _restore_json(domain: str, **options: Any) -> dict[str, Any]:
    """Run :func:`restore` and return the report exactly as the core wrote it (``--json``).

    ``options`` are the keyword arguments of :func:`restore`.
    """
    to = options.pop("to")
    # A string is read by the core in the CLI syntax; a path object is a file, even one whose
    # name starts with "rbd:".
    options["to"] = to if isinstance(to, str) else {"type": "file", "path": os.fspath(to)}
    options["restic"] = _restic(options.pop("restic", None))
    return _native.restore(_repository_options(domain, options))


def restore_define(
    domain: str,
    *,
    name: str,
    backup: str | None = None,
    pool: str | None = None,
    force: bool = False,
    repo: str | os.PathLike[str] = DEFAULT_REPO,
    ceph_conf: str | os.PathLike[str] | None = None,
    ceph_user: str | None = None,
    connect: str = DEFAULT_CONNECT,
    allow_host_passthrough: bool = False,
    access: RepoAccess | None = None,
    read_back: bool = False,
) -> DefineReport:
    """Restore every RBD disk of a backup into new images and define a new domain on them.

    Each RBD disk of the backup is restored (as :func:`restore` does, checksum verified; the
    disks at once) into the image ``POOL/NAME-TARGET`` (``rbd/web1-copy-vda``); then a domain
    ``name`` is defined from the domain XML saved with the backup, with a new UUID and new MAC
    addresses and its disks pointing at the new images. It is defined, not started. Writable disks that are not
    in the backup (local files) are left out of the new domain, never shared with the original;
    the report lists them.

    Before any image is written, the saved XML is checked for what would give the new domain
    resources of this host: ``<hostdev>``, ``<interface type='hostdev'>``, ``<filesystem>``
    passthrough, an ``<emulator>`` this host's libvirt does not list, ``qemu:commandline`` and
    other passthrough namespaces, ``<shmem>``, file-backed memory devices, host input, TPM,
    smartcard and character devices, interface scripts, read-only host block devices. Any of
    them is refused (:class:`UsageError` listing them all) unless ``allow_host_passthrough``.
    If a disk fails, the others stop; if a disk or the definition fails, the images made so
    far are removed (and images replaced with ``force`` renamed back), and the error raised is
    the failed disk's.

    Args:
        domain: Domain name or UUID, as the repository knows it.
        name: Name of the new domain (up to 64 letters, digits, ``-``, ``_`` or ``.``); it also
            names its images.
        backup: Backup id; ``None`` or ``"latest"``: the newest complete backup.
        pool: Pool for the new images; ``None``: each disk's own pool.
        force: Replace existing images of those names.
        repo: The backup repository directory.
        ceph_conf: A ceph.conf (with its keyring) to connect with, instead of the monitors and
            the libvirt secret the domain's saved XML names.
        ceph_user: The Ceph user with ``ceph_conf`` (default ``admin``).
        connect: libvirt URI: where the new domain is defined (and the Ceph key read from).
        allow_host_passthrough: Define the domain even if its saved XML gives it host resources.
        access: How to open ``repo`` when it is ``s3://...`` or a block repository
            (:class:`RepoAccess`).
        read_back: Check each image by reading all of it back (as :func:`restore`'s).

    Returns:
        The report: the new domain's name and UUID, one restore report per disk, the disks
        left out.

    Raises:
        UsageError: A bad name, a domain of that name exists already, an image exists without
            ``force`` (also one that appeared during the restore), the domain has no backups,
            the saved XML gives host resources without ``allow_host_passthrough``.
        RepositoryError: The backup does not exist or its data is damaged.
        CephError: An image cannot be written.
        LibvirtError: libvirt cannot be reached, the Ceph key cannot be read, or the domain
            cannot be defined.
        KeyboardInterrupt: Ctrl-C; raised only after the partial image was removed (no domain
            is defined then).

    Example:
        >>> r = virt_rbd_backup.restore_define("web1", name="web1-copy", repo="/srv/backups")  # doctest: +SKIP
        >>> [d.target for d in r.disks], r.dropped_disks  # doctest: +SKIP
        (['rbd:rbd/web1-copy-vda', 'rbd:rbd/web1-copy-vdb'], ('vdc',))
    """
    return DefineReport.from_dict(_restore_define_json(**locals()))


def _restore_define_json(domain: str, **options: Any) -> dict[str, Any]:
    """Run :func:`restore_define` and return the report exactly as the core wrote it (``--json``).

    ``options`` are the keyword arguments of :func:`restore_define`.
    """
    return _native.restore_define(_repository_options(domain, options))


def restore_live(
    domain: str,
    *,
    name: str,
    backup: str | None = None,
    pool: str | None = None,
    repo: str | os.PathLike[str] = DEFAULT_REPO,
    ceph_conf: str | os.PathLike[str] | None = None,
    ceph_user: str | None = None,
    connect: str = DEFAULT_CONNECT,
    allow_host_passthrough: bool = False,
    access: RepoAccess | None = None,
) -> LiveRestoreReport:
    """Restore a backup live under a new domain ``name``: it boots at once, on the backup.

    The new domain (the saved XML rewritten as :func:`restore_define` does, checked the same
    way) starts as a transient domain whose disks are qcow2 overlays backed by this process's
    NBD export of each disk of the backup (every block checked as it is read); libvirt copies
    each disk into a new, empty image ``POOL/NAME-TARGET`` while the guest runs, and once every
    copy is ready pivots the guest onto the images; the domain is then defined persistently on
    them, and the servers and overlays are removed. The call returns then. Nothing is ever
    replaced: an existing image or domain of those names is refused.

    On any failure or Ctrl-C before the end, everything made is undone: the transient domain
    destroyed (nothing of it stays defined), the new images removed, the servers stopped, the
    overlays removed. If this process is killed (SIGKILL), there is no resume: see the README
    for the recovery by hand. The arguments are those of :func:`restore_define` but ``force``.

    Raises:
        UsageError: As for :func:`restore_define`, and when an image of the new names exists.
        LibvirtError: The domain cannot start, a block copy cannot start or pivot.
        BackupError: The run failed once under way (``live restore of NAME failed: ...``): a
            block copy stopped (when reads of the backup failed their checks, the message says
            so: run :func:`verify`), the runtime folder or an overlay could not be made.
        KeyboardInterrupt: Ctrl-C; raised once everything is undone.
    """
    options = dict(locals())
    return LiveRestoreReport.from_dict(_native.restore_live(_repository_options(options.pop("domain"), options)))


def _repository_options(domain: str, options: dict[str, Any]) -> dict[str, Any]:
    """The core's ``RestoreOptions`` or ``DefineOptions`` from :func:`restore`'s or :func:`restore_define`'s arguments.

    The repository becomes a path string, the cluster options the core's ``CephAccess``; the
    others stay as they are.
    """
    ceph = _ceph_access(options.pop("ceph_conf"), options.pop("ceph_user"), options.pop("connect"))
    access = _access(options.pop("access", None)) or {}
    return {**options, "domain": domain, "repo": os.fspath(options["repo"]), "ceph": ceph, "access": access}


def verify(
    domain: str | None = None,
    *,
    backup: str | None = None,
    repo: str | os.PathLike[str] = DEFAULT_REPO,
    source: bool = False,
    ceph_conf: str | os.PathLike[str] | None = None,
    ceph_user: str | None = None,
    connect: str = DEFAULT_CONNECT,
    access: RepoAccess | None = None,
    read_data: bool | float = False,
) -> VerifyReport:
    """Check backups in a repository against their checksums and, if asked, against the cluster.

    Every stored file is read and checked against the checksum its manifest records, every
    block table against the manifest, every chain for completeness (an incremental whose
    parent is gone cannot be restored). Each file is read once even when several chains share
    it. This needs neither Ceph nor libvirt.

    With ``source``, the latest backup of each domain (or ``backup``) is also compared, block by
    block, with its snapshot still in the cluster (the base of the next incremental): a
    difference, or a snapshot that is gone, is a problem; each disk found equal is in
    :attr:`VerifyReport.source_checked`.

    Args:
        domain: Only this domain's backups (name or UUID); ``None``: every domain.
        backup: Only this backup (an id, or ``"latest"``) and the chain it depends on.
        repo: The backup repository directory.
        source: Also compare with the snapshots in the cluster.
        ceph_conf: With ``source``: a ceph.conf (with its keyring) to connect with, instead of
            the monitors and the libvirt secret the domain's saved XML names.
        ceph_user: The Ceph user with ``ceph_conf`` (default ``admin``).
        connect: With ``source``: libvirt URI, to read the domain's Ceph key when no
            ``ceph_conf`` is given.
        access: How to open a block repository (:class:`RepoAccess`). There verify checks
            every manifest, block list and table and that every block they name exists.
        read_data: In a block repository, also read blocks and check each against its id and
            its block table: ``True`` every block, a float between 0 and 1 that fraction of
            them, a new random sample each run (a folder repository's verify always reads
            every byte).

    Returns:
        The report; damage is in :attr:`VerifyReport.problems` and :attr:`VerifyReport.ok`
        tells whether there is none.

    Raises:
        UsageError: ``ceph_conf`` or ``ceph_user`` without ``source``; the domain or backup does
            not exist.
        RepositoryError: The repository cannot be read.
        CephError: With ``source``: the cluster cannot be reached or read.
        LibvirtError: With ``source``: the domain's Ceph key cannot be read.
        KeyboardInterrupt: Ctrl-C, at once (verification only reads).

    Example:
        >>> report = virt_rbd_backup.verify("web1", repo="/srv/backups", source=True)  # doctest: +SKIP
        >>> report.ok, len(report.checked), report.source_checked  # doctest: +SKIP
        (True, 14, (('20261126T100000.000Z', 'vda'),))
    """
    return VerifyReport.from_dict(_verify_json(**locals()))


def _verify_json(domain: str | None, **options: Any) -> dict[str, Any]:
    """Run :func:`verify` and return the report exactly as the core wrote it (``--json``).

    ``options`` are the keyword arguments of :func:`verify`.
    """
    repo, backup = os.fspath(options.pop("repo")), options.pop("backup")
    access, read_data = _access(options.pop("access", None)), _read_fraction(options.pop("read_data", False))
    ceph = _ceph_access(options.pop("ceph_conf"), options.pop("ceph_user"), options.pop("connect"))
    if not options.pop("source"):
        if ceph["ceph_conf"] is not None or ceph["ceph_user"] is not None:
            raise UsageError("ceph_conf and ceph_user are for comparing with the cluster: add source (--source)")
        return _native.verify(repo, domain, backup, None, access, read_data)
    return _native.verify(repo, domain, backup, ceph, access, read_data)


def _read_fraction(read_data: bool | float) -> float:
    """The fraction of blocks a verify reads, from ``read_data``."""
    if isinstance(read_data, bool):
        return 1.0 if read_data else 0.0
    if not 0 < read_data <= 1:
        raise UsageError(f"read_data must be True, False or a fraction in (0, 1], not {read_data!r}")
    return float(read_data)


def _ceph_access(
    ceph_conf: str | os.PathLike[str] | None, ceph_user: str | None, connect: str
) -> dict[str, str | None]:
    """The core's ``CephAccess`` (how restore and ``verify --source`` reach a cluster)."""
    return {
        "connect": connect,
        "ceph_conf": None if ceph_conf is None else os.fspath(ceph_conf),
        "ceph_user": ceph_user,
    }


_DURATION_UNITS = {"s": 1, "min": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION_PART = re.compile(r"(\d+)([a-z]+)")


def parse_duration(text: str) -> int:
    """Read a duration such as ``7d``, ``12h`` or ``1w3d12h`` as seconds.

    Units: ``s``, ``min``, ``h``, ``d`` (24 h), ``w`` (7 d). Months and years are refused
    (their length varies; give days), and so is ``m``, which restic reads as months and others
    as minutes.

    >>> parse_duration("1d12h")
    129600

    Raises:
        UsageError: The text is not such a duration.
    """
    parts = _DURATION_PART.findall(text)
    if not text or "".join(n + unit for n, unit in parts) != text:
        raise UsageError(
            f"bad duration {text!r}: expected a number and a unit (s, min, h, d, w), for example 7d or 12h"
        )
    seconds = 0
    for number, unit in parts:
        if unit not in _DURATION_UNITS:
            raise UsageError(
                f"bad duration {text!r}: unknown unit {unit!r}; use s, min, h, d or w "
                "(months and years vary in length: give days, for example 30d)"
            )
        seconds += int(number) * _DURATION_UNITS[unit]
    return seconds


def _seconds(value: int | datetime.timedelta | str) -> int:
    """Seconds of a ``keep_within`` value."""
    if isinstance(value, str):
        return parse_duration(value)
    if isinstance(value, datetime.timedelta):
        return int(value.total_seconds())
    return int(value)


def prune(
    domain: str | None = None,
    *,
    keep_last: int | None = None,
    keep_hourly: int | None = None,
    keep_daily: int | None = None,
    keep_weekly: int | None = None,
    keep_monthly: int | None = None,
    keep_yearly: int | None = None,
    keep_within: int | datetime.timedelta | str | None = None,
    dry_run: bool = False,
    repo: str | os.PathLike[str] = DEFAULT_REPO,
    access: RepoAccess | None = None,
) -> PruneReport:
    """Remove the backups no keep option selects (restic's ``forget --prune`` rules).

    Each rule keeps on its own and a backup kept by several lists every reason. The ancestors
    of a kept incremental are kept with it; backups whose chain is broken are removed. Each
    domain is pruned under its repository lock, so never while it is backed up; a domain that
    is busy is skipped and reported.

    Args:
        domain: Only this domain (name or UUID); ``None``: every domain in the repository.
        keep_last: Keep the N newest backups.
        keep_hourly: Keep the newest backup of each of the last N hours that have backups.
        keep_daily: Keep the newest backup of each of the last N days (UTC) that have backups.
        keep_weekly: Keep the newest backup of each of the last N ISO weeks that have backups.
        keep_monthly: Keep the newest backup of each of the last N months that have backups.
        keep_yearly: Keep the newest backup of each of the last N years that have backups.
        keep_within: Keep every backup this much older than the newest at most: seconds, a
            :class:`datetime.timedelta` or a string such as ``"7d"`` (see :func:`parse_duration`).
        dry_run: Remove nothing; the report lists what would be removed.
        repo: The backup repository: a folder or ``s3://BUCKET/PREFIX``.
        access: How to open a block repository (:class:`RepoAccess`); there the blocks no
            backup names any more are removed too, never while a backup runs.

    Returns:
        The report; :attr:`PruneReport.has_problems` tells whether a domain was skipped or
        failed or a folder could not be handled.

    Raises:
        UsageError: No keep option (or only zeros): that would remove everything, so it is
            refused; or a named domain has no backups.
        RepositoryError: The repository cannot be read.
        KeyboardInterrupt: Ctrl-C; raised after the prune has finished (it has no point where
            it can stop half-way).

    Example:
        >>> report = virt_rbd_backup.prune(keep_daily=7, keep_weekly=4, dry_run=True)  # doctest: +SKIP
        >>> [r.backup_id for d in report.domains for r in d.removed]  # doctest: +SKIP
        ['20261101T100000Z']
    """
    options = dict(locals())
    del options["domain"]
    return PruneReport.from_dict(_prune_json(domain, keep=_keep_options(options), **options))


def _keep_options(options: dict[str, Any]) -> dict[str, int | None]:
    """The core's ``KeepOptions`` from the ``keep_*`` keyword arguments of :func:`prune`.

    They are taken out of ``options``; ``keep_within`` becomes seconds.
    """
    keep: dict[str, int | None] = {
        name.removeprefix("keep_"): options.pop(name) for name in list(options) if name.startswith("keep_")
    }
    within = keep.pop("within")
    keep["within_seconds"] = None if within is None else _seconds(within)
    return keep


def _prune_json(
    domain: str | None,
    *,
    keep: dict[str, int | None],
    dry_run: bool,
    repo: str | os.PathLike[str],
    access: RepoAccess | None = None,
) -> dict[str, Any]:
    """Run :func:`prune` and return the report exactly as the core wrote it (``--json``)."""
    return _native.prune(os.fspath(repo), keep, domain, dry_run, _access(access))


def rekey(
    *,
    new_key_file: str | os.PathLike[str],
    keep_old: bool = False,
    repo: str | os.PathLike[str] = DEFAULT_REPO,
    access: RepoAccess | None = None,
) -> RekeyReport:
    """Give an encrypted block repository a new key file (key rotation).

    The repository's data key is stored once more, wrapped by the new key file; no block is
    rewritten. The new key file is created (mode 0600) when it does not exist. Unless
    ``keep_old``, the current key file opens the repository no more once the new one was
    shown to open it. Keep a copy of the new key file off the host.

    Args:
        new_key_file: The new key file.
        keep_old: Leave the current key file working too (two keys, for a handover).
        repo: The block repository: a folder or ``s3://BUCKET/PREFIX``.
        access: Its access options; ``key_file`` is the current key file.

    Returns:
        The report: the old and new key ids.

    Raises:
        UsageError: No current key file, the folder layout, or the new key is the old one.
        RepositoryError: The repository cannot be opened with the current key.
    """
    return RekeyReport.from_dict(_rekey_json(**locals()))


def _rekey_json(**options: Any) -> dict[str, Any]:
    """Run :func:`rekey` and return the report exactly as the core wrote it (``--json``)."""
    return _native.rekey(
        os.fspath(options["repo"]), os.fspath(options["new_key_file"]), _access(options["access"]), options["keep_old"]
    )
