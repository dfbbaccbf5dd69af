"""Typed, immutable views of what the Rust core returns: reports, plans and listings.

Reports of backup, restore (also ``restore --define``), verify and prune; the plan of a backup (dry run); listings of
domains, of backups in a repository and of backups in a restic repository.

The core hands back plain JSON-shaped dicts (the ``--json`` report format, which is the core's
own serialization). These frozen dataclasses are built from them with ``from_dict`` and turn
back into the same shape with ``to_dict``; their fields mirror the Rust structs one to one
(a unit test compares them with the Rust source). Reading is tolerant: fields a newer core adds
are ignored and optional fields may be missing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal, TypeAlias, cast

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

__all__ = [
    "BackupDiskListing",
    "BackupKind",
    "BackupListing",
    "BackupPlan",
    "BackupReport",
    "Consistency",
    "DefineReport",
    "DiskReport",
    "DomainListing",
    "DomainPruneReport",
    "DomainReport",
    "DomainStatus",
    "FreezeReport",
    "KeptBackup",
    "LiveDisk",
    "LiveRestoreReport",
    "MonitorHost",
    "OrphanThaw",
    "PlannedDisk",
    "PlannedDomain",
    "PruneReport",
    "PruneStatus",
    "RbdAuth",
    "RbdDisk",
    "RemovedBackup",
    "ResticSnapshot",
    "RestoreReport",
    "SkipReason",
    "SkippedDisk",
    "VerifyProblem",
    "VerifyReport",
]

DomainStatus: TypeAlias = Literal["succeeded", "failed", "skipped"]
"""Outcome of one domain: ``succeeded``, ``failed`` or ``skipped`` (no RBD disk, or another client
holds its images: ``skip_reason``)."""

Consistency: TypeAlias = Literal["frozen", "crash_consistent_per_disk", "crash_consistent_group", "shut_off"]
"""Consistency of a domain's snapshots: guest filesystems ``frozen``, crash-consistent per disk
(running guest, no freeze), crash-consistent across all disks at one instant (an RBD group
snapshot), or ``shut_off`` (the disks were not in use)."""

BackupKind: TypeAlias = Literal["full", "incremental"]
"""A full backup (every allocated block) or an incremental one (what changed since the base)."""

SkipReason: TypeAlias = Literal["not_network", "not_rbd", "rbd_snapshot"]
"""Why a disk is not backed up: not a network disk, a network disk that is not RBD, or an RBD
disk whose source is a snapshot (immutable: nothing of the guest's to lose)."""

PruneStatus: TypeAlias = Literal["done", "skipped", "failed"]
"""How a domain's prune ended: ``done``, ``skipped`` (another run holds the domain's lock) or
``failed`` (its folder unreadable, the lock failed)."""


def _plain(value: Any) -> Any:
    """Turn tuples (and nested dataclass dicts) into the lists and dicts JSON has."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


class _JsonShaped:
    """``to_dict`` for the dataclasses below."""

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-shaped dict this value was read from (lists, not tuples)."""
        result: dict[str, Any] = _plain(dataclasses.asdict(cast("DataclassInstance", self)))
        return result


@dataclasses.dataclass(frozen=True, kw_only=True)
class FreezeReport(_JsonShaped):
    """How a domain's guest filesystems were frozen around its snapshots."""

    attempted: bool = False
    """Whether a freeze was attempted (running guest, freeze policy not ``off``)."""
    frozen_filesystems: int = 0
    """Filesystems the guest agent froze."""
    window_ms: float | None = None
    """From the freeze call returning to the thaw call returning, in milliseconds."""
    frozen_at: float | None = None
    """Wall-clock time (Unix seconds) when the freeze call returned."""
    thawed_at: float | None = None
    """Wall-clock time (Unix seconds) when the thaw call returned."""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FreezeReport:
        """Read the ``freeze`` object of a domain report."""
        return cls(
            attempted=bool(data.get("attempted", False)),
            frozen_filesystems=int(data.get("frozen_filesystems", 0)),
            window_ms=_opt_float(data.get("window_ms")),
            frozen_at=_opt_float(data.get("frozen_at")),
            thawed_at=_opt_float(data.get("thawed_at")),
        )


@dataclasses.dataclass(frozen=True, kw_only=True)
class DiskReport(_JsonShaped):
    """The backup of one disk."""

    target: str
    """Guest device, for example ``vda``."""
    image: str
    """``pool/image`` or ``pool/namespace/image``."""
    size: int
    """Image size in bytes."""
    kind: BackupKind = "full"
    """``full`` or ``incremental``."""
    bytes_read: int
    """Bytes read from the cluster."""
    bytes_written: int
    """Bytes of non-zero data written to the repository."""
    snapshot: str
    """The RBD snapshot that was exported."""
    snapshot_timestamp: float | None = None
    """Wall-clock time (Unix seconds) Ceph recorded for the snapshot."""
    file: str | None = None
    """The file in the repository."""
    checksum: str | None = None
    """Checksum of the content (see the manifest format)."""
    seconds: float = 0.0
    """Seconds spent exporting."""
    snapshot_create_ms: float | None = None
    """How long creating the snapshot took (ms); the freeze window is mostly this."""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DiskReport:
        """Read one element of a domain report's ``disks``."""
        return cls(
            target=str(data["target"]),
            image=str(data["image"]),
            size=int(data["size"]),
            kind=data.get("kind", "full"),
            bytes_read=int(data.get("bytes_read", 0)),
            bytes_written=int(data.get("bytes_written", 0)),
            snapshot=str(data.get("snapshot", "")),
            snapshot_timestamp=_opt_float(data.get("snapshot_timestamp")),
            file=data.get("file"),
            checksum=data.get("checksum"),
            seconds=float(data.get("seconds", 0.0)),
            snapshot_create_ms=_opt_float(data.get("snapshot_create_ms")),
        )


@dataclasses.dataclass(frozen=True, kw_only=True)
class DomainReport(_JsonShaped):
    """The outcome of one domain."""

    name: str
    """Domain name."""
    uuid: str
    """Domain UUID."""
    status: DomainStatus
    """``succeeded``, ``failed`` or ``skipped`` (no RBD disk, or another client holds its images)."""
    error: str | None = None
    """The first error, for a failed domain."""
    skip_reason: str | None = None
    """Why a domain with RBD disks was skipped: another host backs it up or runs it."""
    warnings: tuple[str, ...] = ()
    """Warnings, for example a freeze that fell back to crash-consistent snapshots."""
    backup_id: str | None = None
    """Backup id, for a succeeded domain."""
    kind: BackupKind | None = None
    """``full`` (every disk full) or ``incremental``, for a succeeded domain."""
    path: str | None = None
    """The backup's folder in the repository, for a succeeded domain."""
    consistency: Consistency | None = None
    """Consistency of the snapshots, if they were taken."""
    freeze: FreezeReport = FreezeReport()
    """The freeze."""
    disks: tuple[DiskReport, ...] = ()
    """Disks backed up."""
    seconds: float = 0.0
    """Seconds for the domain."""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DomainReport:
        """Read one domain report (also the ``report`` of a ``domain_finished`` event)."""
        return cls(
            name=str(data["name"]),
            uuid=str(data["uuid"]),
            status=data["status"],
            error=data.get("error"),
            skip_reason=data.get("skip_reason"),
            warnings=tuple(str(w) for w in data.get("warnings", ())),
            backup_id=data.get("backup_id"),
            kind=data.get("kind"),
            path=data.get("path"),
            consistency=data.get("consistency"),
            freeze=FreezeReport.from_dict(data.get("freeze") or {}),
            disks=tuple(DiskReport.from_dict(d) for d in data.get("disks", ())),
            seconds=float(data.get("seconds", 0.0)),
        )


@dataclasses.dataclass(frozen=True, kw_only=True)
class BackupReport(_JsonShaped):
    """A whole backup run: what ``backup()`` returns and ``--json`` prints."""

    version: int
    """Report format version."""
    started_at: float
    """Start, Unix seconds."""
    finished_at: float
    """End, Unix seconds."""
    domains: tuple[DomainReport, ...] = ()
    """Per domain, in discovery order."""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BackupReport:
        """Read a report in the ``--json`` format.

        >>> report = BackupReport.from_dict(
        ...     {"version": 1, "started_at": 0.0, "finished_at": 1.0, "domains": []}
        ... )
        >>> report.any_failed
        False
        """
        return cls(
            version=int(data["version"]),
            started_at=float(data["started_at"]),
            finished_at=float(data["finished_at"]),
            domains=tuple(DomainReport.from_dict(d) for d in data.get("domains", ())),
        )

    @property
    def any_failed(self) -> bool:
        """Whether any domain failed (the CLI then exits with status 1)."""
        return any(d.status == "failed" for d in self.domains)

    def count(self, status: DomainStatus) -> int:
        """Count the domains with ``status``."""
        return sum(1 for d in self.domains if d.status == status)


OrphanOutcome: TypeAlias = Literal["thawed", "not_running", "waiting", "failed"]
"""What ``thaw-orphans`` did with a domain a dead run left a freeze record for."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class OrphanThaw(_JsonShaped):
    """A domain whose freeze records were left by runs that died (``thaw-orphans``)."""

    domain: str
    """The domain's name, as recorded."""
    uuid: str
    """The domain's UUID."""
    pids: tuple[int, ...] = ()
    """The dead processes that froze it."""
    outcome: OrphanOutcome = "thawed"
    """``thawed``, ``not_running`` (nothing to thaw), ``waiting`` (another live run holds a
    freeze of it) or ``failed`` (the records stay for the next try)."""
    filesystems: int | None = None
    """With ``thawed``: the filesystems the agent thawed (0: it was not frozen any more)."""
    error: str | None = None
    """With ``failed``: why."""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> OrphanThaw:
        """Read one entry of ``thaw-orphans --json``."""
        filesystems = data.get("filesystems")
        return cls(
            domain=str(data["domain"]),
            uuid=str(data["uuid"]),
            pids=tuple(int(p) for p in data.get("pids", ())),
            outcome=cast("OrphanOutcome", data.get("outcome", "thawed")),
            filesystems=None if filesystems is None else int(filesystems),
            error=data.get("error"),
        )


@dataclasses.dataclass(frozen=True, kw_only=True)
class MonitorHost(_JsonShaped):
    """A Ceph monitor named in a disk's ``<host>`` element."""

    name: str
    """Host name or IP address as written in the XML (IPv6 without brackets)."""
    port: int | None = None
    """Port, if given."""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MonitorHost:
        """Read one element of a disk's ``hosts``."""
        port = data.get("port")
        return cls(name=str(data["name"]), port=None if port is None else int(port))


@dataclasses.dataclass(frozen=True, kw_only=True)
class RbdAuth(_JsonShaped):
    """The ``<auth>`` of an RBD disk: Ceph user and the libvirt secret holding its key."""

    username: str
    """Ceph user without the ``client.`` prefix."""
    secret_uuid: str | None = None
    """UUID of the libvirt secret holding the key."""
    secret_usage: str | None = None
    """Usage name of the secret, if it is named by usage instead of UUID."""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RbdAuth:
        """Read a disk's ``auth``."""
        return cls(
            username=str(data["username"]),
            secret_uuid=data.get("secret_uuid"),
            secret_usage=data.get("secret_usage"),
        )


@dataclasses.dataclass(frozen=True, kw_only=True)
class RbdDisk(_JsonShaped):
    """An RBD disk of a domain, as a backup would see it."""

    target: str
    """Guest device (``<target dev='vda'>``)."""
    pool: str
    """Pool name."""
    namespace: str | None = None
    """RADOS namespace, if any."""
    image: str
    """Image name."""
    hosts: tuple[MonitorHost, ...] = ()
    """Monitors from ``<host>`` elements (empty: those of ceph.conf)."""
    config_file: str | None = None
    """``<config file='...'/>`` inside ``<source>``, if any."""
    auth: RbdAuth | None = None
    """Authentication, if any."""
    device: str = "disk"
    """``disk``, ``cdrom``, ..."""
    readonly: bool = False
    """Whether the disk is ``<readonly/>``."""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RbdDisk:
        """Read one element of a listing's ``rbd_disks``."""
        auth = data.get("auth")
        return cls(
            target=str(data["target"]),
            pool=str(data["pool"]),
            image=str(data["image"]),
            namespace=data.get("namespace"),
            hosts=tuple(MonitorHost.from_dict(h) for h in data.get("hosts", ())),
            config_file=data.get("config_file"),
            auth=None if auth is None else RbdAuth.from_dict(auth),
            device=str(data.get("device", "disk")),
            readonly=bool(data.get("readonly", False)),
        )

    @property
    def spec(self) -> str:
        """``pool/image`` or ``pool/namespace/image``, as ``rbd`` names it."""
        if self.namespace:
            return f"{self.pool}/{self.namespace}/{self.image}"
        return f"{self.pool}/{self.image}"


@dataclasses.dataclass(frozen=True, kw_only=True)
class SkippedDisk(_JsonShaped):
    """A disk that a backup skips, and why."""

    target: str | None
    """Guest device, if the disk has one."""
    reason: SkipReason
    """``not_network``, ``not_rbd`` or ``rbd_snapshot``."""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SkippedDisk:
        """Read one element of a listing's ``skipped_disks``."""
        return cls(target=data.get("target"), reason=data["reason"])


@dataclasses.dataclass(frozen=True, kw_only=True)
class DomainListing(_JsonShaped):
    """A domain and what a backup would do with its disks (``list_domains``)."""

    name: str
    """Domain name."""
    uuid: str
    """Domain UUID."""
    active: bool
    """Whether the domain is running."""
    rbd_disks: tuple[RbdDisk, ...] = ()
    """RBD disks that would be backed up."""
    skipped_disks: tuple[SkippedDisk, ...] = ()
    """Disks that would be skipped."""
    error: str | None = None
    """Why the domain cannot be backed up, if it cannot (for example malformed XML)."""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DomainListing:
        """Read one element of what ``_native.list_domains`` returns."""
        return cls(
            name=str(data["name"]),
            uuid=str(data["uuid"]),
            active=bool(data["active"]),
            rbd_disks=tuple(RbdDisk.from_dict(d) for d in data.get("rbd_disks", ())),
            skipped_disks=tuple(SkippedDisk.from_dict(d) for d in data.get("skipped_disks", ())),
            error=data.get("error"),
        )


@dataclasses.dataclass(frozen=True, kw_only=True)
class BackupDiskListing(_JsonShaped):
    """One disk of a backup in the repository."""

    target: str
    """Guest device."""
    image: str
    """``pool/image`` or ``pool/namespace/image``."""
    size: int
    """Image size in bytes."""
    bytes_written: int
    """Bytes of data stored."""
    file: str
    """The raw image file."""
    checksum: str
    """Checksum of the content (see the manifest format)."""
    kind: str = "full"
    """``full`` or ``incremental``."""
    chain_position: int = 0
    """Place in its chain: 0 for a full, the parent's + 1 for an incremental."""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BackupDiskListing:
        """Read one element of a backup listing's ``disks``."""
        return cls(
            target=str(data["target"]),
            image=str(data["image"]),
            size=int(data["size"]),
            bytes_written=int(data.get("bytes_written", 0)),
            file=str(data.get("file", "")),
            checksum=str(data.get("checksum", "")),
            kind=str(data.get("kind", "full")),
            chain_position=int(data.get("chain_position", 0)),
        )


@dataclasses.dataclass(frozen=True, kw_only=True)
class BackupListing(_JsonShaped):
    """A complete backup in the repository (``list_backups``)."""

    domain: str
    """Domain name at backup time (empty if the backup cannot be read)."""
    uuid: str
    """Domain UUID."""
    backup_id: str
    """Backup id."""
    kind: str
    """``full`` (or ``incremental``)."""
    path: str
    """The backup's folder."""
    completed_at: float
    """When it completed, Unix seconds."""
    consistency: Consistency | None = None
    """Consistency of its snapshots."""
    disks: tuple[BackupDiskListing, ...] = ()
    """Disks."""
    error: str | None = None
    """Why the backup cannot be read, if it cannot."""
    parent: str | None = None
    """The backup an incremental builds on."""
    sequence: int | None = None
    """Its place in the domain's history (newer backups have larger numbers, whatever the clock
    said when their ids were taken); ``None`` for backups of older versions."""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BackupListing:
        """Read one element of what ``_native.list_backups`` returns."""
        return cls(
            domain=str(data.get("domain", "")),
            uuid=str(data["uuid"]),
            backup_id=str(data["backup_id"]),
            kind=str(data.get("kind", "")),
            path=str(data["path"]),
            completed_at=float(data.get("completed_at", 0.0)),
            consistency=data.get("consistency"),
            disks=tuple(BackupDiskListing.from_dict(d) for d in data.get("disks", ())),
            error=data.get("error"),
            parent=data.get("parent"),
            sequence=data.get("sequence"),
        )


@dataclasses.dataclass(frozen=True, kw_only=True)
class RestoreReport(_JsonShaped):
    """A restore of one disk: what ``restore()`` returns and ``restore --json`` prints."""

    domain: str
    """Domain name at backup time."""
    backup_id: str
    """The backup restored."""
    disk: str
    """The disk (guest device, for example ``vda``)."""
    chain: tuple[str, ...] = ()
    """The backups replayed, the full one first and the restored one last."""
    target: str
    """Where it went: ``rbd:pool/image``, ``rbd:pool/namespace/image`` or a file path."""
    size: int
    """Image size in bytes."""
    bytes_written: int = 0
    """Bytes of data written (holes are not written)."""
    checksum: str
    """The backup's content checksum, verified on the restored data (from restic: the one its
    seal records, verified on what ``restic dump`` returned and on the restored data)."""
    seconds: float = 0.0
    """Seconds for the restore."""
    warnings: tuple[str, ...] = ()
    """What went wrong after the restore was in place: an image replaced with ``force`` that
    could not be removed (it is kept under the name the warning gives)."""
    skipped: tuple[str, ...] = ()
    """Newer backups ``latest`` passed over, and why (restic: snapshots without a seal, left by
    runs that did not finish)."""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RestoreReport:
        """Read what ``_native.restore`` returns."""
        return cls(
            domain=str(data["domain"]),
            backup_id=str(data["backup_id"]),
            disk=str(data["disk"]),
            chain=tuple(str(b) for b in data.get("chain", ())),
            target=str(data["target"]),
            size=int(data["size"]),
            bytes_written=int(data.get("bytes_written", 0)),
            checksum=str(data["checksum"]),
            seconds=float(data.get("seconds", 0.0)),
            warnings=tuple(str(w) for w in data.get("warnings", ())),
            skipped=tuple(str(s) for s in data.get("skipped", ())),
        )


@dataclasses.dataclass(frozen=True, kw_only=True)
class DefineReport(_JsonShaped):
    """A new domain on restored images: what ``restore_define()`` returns and ``restore --define --json`` prints."""

    name: str
    """The new domain's name."""
    uuid: str
    """Its UUID (new, made by libvirt)."""
    disks: tuple[RestoreReport, ...] = ()
    """One restore per RBD disk of the backup; ``target`` is the new image."""
    dropped_disks: tuple[str, ...] = ()
    """Writable disks of the original (targets) that the new domain does not get: they are not
    in the backup, and sharing them with the original would corrupt them."""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DefineReport:
        """Read what ``_native.restore_define`` returns."""
        return cls(
            name=str(data["name"]),
            uuid=str(data["uuid"]),
            disks=tuple(RestoreReport.from_dict(d) for d in data.get("disks", ())),
            dropped_disks=tuple(str(t) for t in data.get("dropped_disks", ())),
        )


@dataclasses.dataclass(frozen=True, kw_only=True)
class LiveDisk(_JsonShaped):
    """One disk of a live restore."""

    disk: str
    """The target (``vda``)."""
    target: str
    """The new image, ``rbd:POOL/IMAGE``."""
    size: int
    """Size in bytes."""
    copy_seconds: float
    """Seconds from the domain's start until the copy was ready to pivot."""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LiveDisk:
        """Read one element of a live restore report's ``disks``."""
        return cls(
            disk=str(data["disk"]),
            target=str(data["target"]),
            size=int(data["size"]),
            copy_seconds=float(data["copy_seconds"]),
        )


@dataclasses.dataclass(frozen=True, kw_only=True)
class LiveRestoreReport(_JsonShaped):
    """A domain restored live: what ``restore_live()`` returns and ``restore --define --live --json`` prints."""

    name: str
    """The new domain's name."""
    uuid: str
    """Its UUID (made by libvirt)."""
    backup_id: str
    """The backup restored."""
    boot_seconds: float
    """Seconds from the call until the domain was started on the backup."""
    total_seconds: float
    """Seconds from the call until it ran on the new images, defined persistently."""
    disks: tuple[LiveDisk, ...] = ()
    """The disks, each on its new image."""
    dropped_disks: tuple[str, ...] = ()
    """Writable disks of the original that the new domain does not get (as for ``restore_define``)."""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LiveRestoreReport:
        """Read what ``_native.restore_live`` returns."""
        return cls(
            name=str(data["name"]),
            uuid=str(data["uuid"]),
            backup_id=str(data["backup_id"]),
            boot_seconds=float(data["boot_seconds"]),
            total_seconds=float(data["total_seconds"]),
            disks=tuple(LiveDisk.from_dict(d) for d in data.get("disks", ())),
            dropped_disks=tuple(str(t) for t in data.get("dropped_disks", ())),
        )


@dataclasses.dataclass(frozen=True, kw_only=True)
class VerifyProblem(_JsonShaped):
    """Damage found by ``verify()``."""

    backup_id: str
    """The backup (the folder name, if its manifest cannot be read)."""
    disk: str
    """The disk, or empty when the problem is the backup's manifest itself."""
    message: str
    """What is wrong; names the file and, where known, the offset."""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> VerifyProblem:
        """Read one element of a verify report's ``problems``."""
        return cls(
            backup_id=str(data["backup_id"]),
            disk=str(data.get("disk", "")),
            message=str(data["message"]),
        )


@dataclasses.dataclass(frozen=True, kw_only=True)
class VerifyReport(_JsonShaped):
    """What ``verify()`` returns and ``verify --json`` prints."""

    checked: tuple[tuple[str, str], ...] = ()
    """The backups checked, as (domain name, backup id)."""
    problems: tuple[VerifyProblem, ...] = ()
    """Damage found; empty when everything checked is intact."""
    source_checked: tuple[tuple[str, str], ...] = ()
    """Disks compared with their snapshot in the cluster (``--source``), as (backup id, disk)."""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> VerifyReport:
        """Read what ``_native.verify`` returns.

        >>> VerifyReport.from_dict({"checked": [["web1", "20261126T100000Z"]], "problems": []}).ok
        True
        """
        return cls(
            checked=tuple((str(name), str(backup_id)) for name, backup_id in data.get("checked", ())),
            problems=tuple(VerifyProblem.from_dict(p) for p in data.get("problems", ())),
            source_checked=tuple((str(b), str(d)) for b, d in data.get("source_checked", ())),
        )

    @property
    def ok(self) -> bool:
        """Whether everything checked is intact (the CLI then exits with status 0)."""
        return not self.problems


@dataclasses.dataclass(frozen=True, kw_only=True)
class KeptBackup(_JsonShaped):
    """A backup that a prune keeps."""

    backup_id: str
    """Backup id."""
    reasons: tuple[str, ...] = ()
    """Every reason, for example ``keep-daily`` or ``needed by 20261126T095243.007Z``."""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> KeptBackup:
        """Read one element of a domain prune report's ``kept``."""
        return cls(backup_id=str(data["backup_id"]), reasons=tuple(str(r) for r in data.get("reasons", ())))


@dataclasses.dataclass(frozen=True, kw_only=True)
class RemovedBackup(_JsonShaped):
    """A folder that a prune removed (or would remove, in a dry run)."""

    backup_id: str
    """Backup id (for an interrupted run's folder, the id it was being written as)."""
    path: str
    """The folder."""
    reason: str
    """Why, for example ``not selected by any keep option``."""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RemovedBackup:
        """Read one element of a domain prune report's ``removed``."""
        return cls(backup_id=str(data["backup_id"]), path=str(data["path"]), reason=str(data["reason"]))


@dataclasses.dataclass(frozen=True, kw_only=True)
class DomainPruneReport(_JsonShaped):
    """The prune of one domain."""

    uuid: str
    """Domain UUID (the folder name)."""
    name: str | None = None
    """Domain name in the newest readable manifest."""
    status: PruneStatus
    """``done``, ``skipped`` or ``failed``."""
    message: str | None = None
    """Why the domain was skipped or failed."""
    kept: tuple[KeptBackup, ...] = ()
    """Backups kept, oldest first."""
    removed: tuple[RemovedBackup, ...] = ()
    """Folders removed (or that would be, in a dry run), oldest first."""
    errors: tuple[str, ...] = ()
    """Problems with single folders; each says what was done about it."""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DomainPruneReport:
        """Read one element of a prune report's ``domains``."""
        return cls(
            uuid=str(data["uuid"]),
            name=data.get("name"),
            status=data["status"],
            message=data.get("message"),
            kept=tuple(KeptBackup.from_dict(k) for k in data.get("kept", ())),
            removed=tuple(RemovedBackup.from_dict(r) for r in data.get("removed", ())),
            errors=tuple(str(e) for e in data.get("errors", ())),
        )

    @property
    def display_name(self) -> str:
        """The domain's name, or its UUID when no manifest names it."""
        return self.name or self.uuid


@dataclasses.dataclass(frozen=True, kw_only=True)
class SweepSummary(_JsonShaped):
    """What the sweep of a block repository did (or would do): blocks no backup names go."""

    kept: int
    """Blocks the remaining backups name."""
    removed: int
    """Unreferenced blocks removed."""
    bytes_removed: int
    """Their stored bytes."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class PruneReport(_JsonShaped):
    """What ``prune()`` returns and ``prune --json`` prints."""

    version: int
    """Report format version."""
    dry_run: bool = False
    """Nothing was removed; ``removed`` lists what would have been."""
    domains: tuple[DomainPruneReport, ...] = ()
    """One entry per domain folder considered."""
    blocks: SweepSummary | None = None
    """A block repository's sweep; ``None`` for the folder layout."""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PruneReport:
        """Read what ``_native.prune`` returns.

        >>> PruneReport.from_dict({"version": 1, "dry_run": True, "domains": []}).has_problems
        False
        """
        return cls(
            version=int(data["version"]),
            dry_run=bool(data.get("dry_run", False)),
            domains=tuple(DomainPruneReport.from_dict(d) for d in data.get("domains", ())),
            blocks=None if data.get("blocks") is None else SweepSummary(**data["blocks"]),
        )

    @property
    def has_problems(self) -> bool:
        """Whether a domain failed, was skipped or has errors (the CLI then exits with status 1)."""
        return any(d.status != "done" or d.errors for d in self.domains)


@dataclasses.dataclass(frozen=True, kw_only=True)
class PlannedDisk(_JsonShaped):
    """One disk of a :class:`PlannedDomain`: what a backup would do with it."""

    target: str
    """Guest device, for example ``vda``."""
    image: str
    """``pool/image`` or ``pool/namespace/image``."""
    size: int
    """Image size in bytes."""
    kind: BackupKind
    """``full`` or ``incremental``."""
    reason: str | None = None
    """Why a full backup, when an incremental would have been possible in principle."""
    parent_backup: str | None = None
    """The backup an incremental would build on."""
    estimated_bytes: int = 0
    """Bytes the backup would read (whole 4 MiB blocks; the image may change until then)."""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PlannedDisk:
        """Read one element of a planned domain's ``disks``."""
        return cls(
            target=str(data["target"]),
            image=str(data["image"]),
            size=int(data["size"]),
            kind=data["kind"],
            reason=data.get("reason"),
            parent_backup=data.get("parent_backup"),
            estimated_bytes=int(data.get("estimated_bytes", 0)),
        )


@dataclasses.dataclass(frozen=True, kw_only=True)
class PlannedDomain(_JsonShaped):
    """One domain of a :class:`BackupPlan`."""

    name: str
    """Domain name."""
    uuid: str
    """Domain UUID."""
    active: bool
    """Whether the domain is running now."""
    would_freeze: bool = False
    """Whether its guest filesystems would be frozen (running, RBD disks, policy not ``off``)."""
    disks: tuple[PlannedDisk, ...] = ()
    """The RBD disks a backup would take."""
    skipped_disks: tuple[SkippedDisk, ...] = ()
    """The disks it would skip."""
    error: str | None = None
    """Why the domain cannot be planned (a backup would fail the same way)."""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PlannedDomain:
        """Read one element of a plan's ``domains``."""
        return cls(
            name=str(data["name"]),
            uuid=str(data["uuid"]),
            active=bool(data["active"]),
            would_freeze=bool(data.get("would_freeze", False)),
            disks=tuple(PlannedDisk.from_dict(d) for d in data.get("disks", ())),
            skipped_disks=tuple(SkippedDisk.from_dict(d) for d in data.get("skipped_disks", ())),
            error=data.get("error"),
        )


@dataclasses.dataclass(frozen=True, kw_only=True)
class BackupPlan(_JsonShaped):
    """What ``plan()`` returns and ``plan --json`` (or ``backup --dry-run --json``) prints."""

    domains: tuple[PlannedDomain, ...] = ()
    """Per domain, in discovery order."""
    estimated_bytes: int = 0
    """Sum of the disks' estimated bytes."""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BackupPlan:
        """Read what ``_native.plan`` returns.

        >>> BackupPlan.from_dict({"domains": [], "estimated_bytes": 0}).has_errors
        False
        """
        return cls(
            domains=tuple(PlannedDomain.from_dict(d) for d in data.get("domains", ())),
            estimated_bytes=int(data.get("estimated_bytes", 0)),
        )

    @property
    def has_errors(self) -> bool:
        """Whether some domain cannot be planned (the CLI then exits with status 1)."""
        return any(d.error for d in self.domains)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ResticSnapshot(_JsonShaped):
    """One disk backup in a restic repository (``list_restic``): a restic snapshot this tool made."""

    id: str
    """restic's snapshot id (``restore --backup`` takes a prefix of it)."""
    time: str
    """When restic took it, RFC 3339 as restic prints it."""
    host: str
    """The host that made it."""
    domain_uuid: str
    """Domain UUID (tag ``domain=``)."""
    domain: str
    """Domain name (tag ``name=``)."""
    disk: str
    """Guest device (tag ``disk=``)."""
    file: str
    """The file inside the snapshot, ``IMAGE.img`` as the original tool named it."""
    complete: bool = False
    """Whether a seal vouches for it: written after the whole disk was sent, restic committed
    it and the Ceph snapshot was checked. ``restore`` takes only complete snapshots (``latest``
    passes over the others); an incomplete one may hold only the start of the disk."""
    size: int | None = None
    """Image size in bytes (the seal's, else the snapshot's ``size=`` tag; None for snapshots
    made before seals existed)."""
    checksum: str | None = None
    """The sealed ``blake3-4m:`` content checksum (complete snapshots only)."""
    seal: str | None = None
    """restic's id of the seal (complete snapshots only)."""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ResticSnapshot:
        """Read one element of what ``_native.list_restic`` returns."""
        size = data.get("size")
        checksum = data.get("checksum")
        seal = data.get("seal")
        return cls(
            id=str(data["id"]),
            time=str(data.get("time", "")),
            host=str(data.get("host", "")),
            domain_uuid=str(data.get("domain_uuid", "")),
            domain=str(data.get("domain", "")),
            disk=str(data.get("disk", "")),
            file=str(data.get("file", "")),
            complete=bool(data.get("complete", False)),
            size=None if size is None else int(size),
            checksum=None if checksum is None else str(checksum),
            seal=None if seal is None else str(seal),
        )


@dataclasses.dataclass(frozen=True, kw_only=True)
class RekeyReport(_JsonShaped):
    """What ``rekey()`` returns and ``rekey --json`` prints."""

    repo: str
    """The repository."""
    old_key_id: str
    """Id of the key file the repository was opened with."""
    new_key_id: str
    """Id of the new key file, which now opens the repository."""
    created: bool
    """Whether the new key file was created (mode 0600)."""
    old_removed: bool
    """Whether the old key file opens the repository no more."""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RekeyReport:
        """Read what ``_native.rekey`` returns."""
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls)})
