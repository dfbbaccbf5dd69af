"""Rust core of virt-rbd-backup (private: use the ``virt_rbd_backup`` package).

Options go in and reports come out as JSON-shaped values (dicts, lists, str, int, float, bool,
None), the same shape as the CLI's ``--json`` output. Every exception raised derives from
:class:`BackupError`.
"""

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, final

__all__ = [
    "BackupError",
    "CancelledError",
    "CephError",
    "CephSession",
    "DiskServer",
    "InconsistentError",
    "LibvirtError",
    "RepositoryError",
    "ResticError",
    "UsageError",
    "__version__",
    "backup",
    "ceph_key",
    "fuse_disk",
    "library_versions",
    "list_backups",
    "list_domains",
    "list_restic",
    "parse_rate",
    "plan",
    "prune",
    "rekey",
    "remove_leftover_snapshots",
    "restore",
    "restore_define",
    "restore_live",
    "serve",
    "snapshot_name",
    "thaw_orphans",
    "verify",
]

__version__: str
"""Version of the Rust crate the module was built from."""

class BackupError(Exception):
    """Base class of every error raised by virt_rbd_backup."""

class UsageError(BackupError):
    """Options that make no sense (an unknown option, a bad value); exit status 2."""

class LibvirtError(BackupError):
    """libvirt could not be used: connection, domain lookup, secret or freeze."""

class CephError(BackupError):
    """A librados/librbd call failed."""

class RepositoryError(BackupError):
    """The backup repository could not be read or written."""

class ResticError(BackupError):
    """restic could not run or failed, or a restic snapshot cannot be trusted as a disk.

    restic's own message is quoted; an untrusted snapshot has no seal, or its size or checksum differ.
    """

class InconsistentError(BackupError):
    """The snapshots cannot be trusted to be consistent (the guest stayed frozen too long)."""

class CancelledError(BackupError):
    """The run was cancelled before it finished."""

def backup(
    options: str | Mapping[str, Any],
    on_event: Callable[[dict[str, Any]], object] | None = None,
) -> dict[str, Any]:
    """Back up domains; see ``virt_rbd_backup.backup`` for the friendly face.

    ``options`` is a JSON object (str) or a mapping with the fields of ``BackupOptions``
    (``connect``, ``domains``, ``workers``, ``queue_depth``, ``freeze``,
    ``freeze_mountpoints``, ``consistency`` (``"auto"``, ``"group"`` or ``"per-disk"``), ``repo``,
    ``mode`` (``"auto"`` or ``"full"``), ``full_every``
    (int or None), ``agent_timeout``, ``freeze_timeout`` and ``ceph_timeout`` (seconds),
    ``compress`` (None, ``"zstd"`` or ``"zstd:LEVEL"``, 1 to 19), ``bwlimit`` (None or bytes per
    second for the whole run; :func:`parse_rate` reads ``"200M"``), ``restic`` (None or
    ``{"repository": ..., "password_file": ..., "binary": ...}``), ``access`` (how to open the
    repository: the fields of ``RepoAccess``, see ``list_backups``)); missing fields take their
    defaults and an unknown one is a :class:`UsageError`. ``on_event`` is called with each event
    as a dict, from worker threads; an exception it raises is logged on the ``virt_rbd_backup``
    logger and the run goes on.

    The GIL is released for the whole run. On Ctrl-C (or any exception from a signal handler)
    the run is cancelled, the call waits until guests are thawed and snapshots removed, and then
    re-raises that exception.

    Returns the report as a dict. Per-domain failures are in the report; an exception means the
    run could not start.
    """

def plan(options: str | Mapping[str, Any]) -> dict[str, Any]:
    """Plan a backup without changing anything; return the plan as a dict.

    ``options`` are those of :func:`backup`. Per domain: the disks, full or incremental and
    why, the bytes a backup would read. Nothing is locked, frozen, snapshotted or written. The
    GIL is released while libvirt and Ceph are asked; Ctrl-C interrupts at once.
    """

def list_restic(target: str | Mapping[str, Any], domain: str | None = None) -> list[dict[str, Any]]:
    """List this tool's disk backups in a restic repository (oldest first), as a list of dicts.

    ``target`` is a JSON object (str) or a mapping with the fields of ``ResticTarget``
    (``repository``, ``password_file``, ``binary``); ``domain`` (name or UUID) keeps only that
    domain's. restic's failure is a :class:`ResticError`. Ctrl-C interrupts at once.
    """

def ceph_key(
    connect: str,
    domain: str,
    username: str,
    secret_uuid: str | None = None,
    secret_usage: str | None = None,
) -> str:
    """Read the Ceph key of a disk's ``<auth>`` from its libvirt secret, base64 as Ceph wants it.

    The secret is looked up by ``secret_uuid``, else by ``secret_usage``; ``domain`` and
    ``username`` only name it in errors (:class:`LibvirtError`). The key is returned as a plain
    string: only for callers that ask for it outright.
    """

@final
class CephSession:
    """A Ceph connection with at most one pool and one image open (the original's ``CephConnection``).

    For :mod:`virt_rbd_backup.compat.ceph`, which keeps the original's shape; this class only
    converts. The key is ``key`` (the raw bytes of a libvirt secret, as the original took them),
    or read from the libvirt secret ``libvirt_secret`` names (``(uri, domain, secret_uuid,
    secret_usage)``) without entering Python, or with neither the keyring ``conf_file`` names.
    ``conf_file`` ``None`` searches librados's default places (``$CEPH_CONF``,
    ``/etc/ceph/ceph.conf``, ...). Connects on construction; ``ceph_timeout`` bounds each monitor
    and OSD operation (seconds). Errors are :class:`CephError`, :class:`LibvirtError` (the key),
    :class:`ResticError` and :class:`UsageError` (nothing open to act on).
    """

    def __new__(
        cls,
        user: str,
        conf_file: str | None = None,
        key: bytes | None = None,
        libvirt_secret: tuple[str, str, str | None, str | None] | None = None,
        ceph_timeout: int = 60,
    ) -> CephSession: ...
    def pool_exists(self, pool: str) -> bool:
        """Return whether pool ``pool`` exists."""
    def open_pool(self, pool: str, namespace: str | None = None) -> None:
        """Open ``pool`` (in ``namespace``), closing the pool and image open before."""
    def close_pool(self) -> None:
        """Close the pool and the image open in it, if any."""
    def open_image(self, name: str, snapshot: str | None = None, read_only: bool = False) -> None:
        """Open image ``name`` of the open pool, read-only at ``snapshot`` or at its head."""
    def close_image(self) -> None:
        """Close the image, if one is open."""
    def create_snapshot(self, name: str, keep: bool = False) -> None:
        """Create snapshot ``name`` of the open image.

        Unless ``keep``, it is recorded until it is removed through a session, and
        :func:`remove_leftover_snapshots` removes it if nothing did.
        """
    def protect_snapshot(self, name: str) -> None:
        """Protect snapshot ``name`` of the open image."""
    def unprotect_snapshot(self, name: str) -> None:
        """Lift the protection of snapshot ``name`` of the open image."""
    def snapshot_is_protected(self, name: str) -> bool:
        """Return whether snapshot ``name`` of the open image is protected."""
    def remove_snapshot(self, name: str) -> None:
        """Remove snapshot ``name`` of the open image (a protected one must be unprotected first)."""
    def size(self) -> int:
        """Return the open image's size in bytes (at its snapshot, if opened at one)."""
    def read(self, offset: int, length: int) -> bytes:
        """Read ``length`` bytes (at most 256 MiB) at ``offset`` of the open image; fewer at its end."""
    def stream_to_restic(self, target: Mapping[str, Any] | str, filename: str) -> str:
        """Stream the open image into ``restic backup --stdin --stdin-filename FILENAME``.

        ``target`` has ``repository``, ``password_file`` and ``binary`` (as for
        :func:`list_restic`). Returns restic's snapshot id. On Ctrl-C restic is stopped before it
        records a snapshot, then ``KeyboardInterrupt`` is raised.
        """

def remove_leftover_snapshots() -> list[dict[str, Any]]:
    """Remove the snapshots this process created through a :class:`CephSession` and did not remove.

    Protected ones are unprotected first. Returns one dict per snapshot: ``snapshot``
    (``pool[/namespace]/image@name``), ``outcome`` (``removed``, ``already_gone``, ``failed``)
    and ``error``. Snapshots recorded by another process (a forked child's copy of its parent's
    records) are left alone.
    """

def snapshot_name(owner: str, unix_time: float) -> str:
    """Return the name of this tool's snapshot for a backup by ``owner`` started at ``unix_time``.

    ``owner`` is a repository id, or ``"restic"`` for backups into restic; the name is
    ``virt-rbd-backup-OWNER-YYYYMMDDTHHMMSS.mmmZ`` (UTC). A negative or infinite time is a
    :class:`UsageError`.
    """

def parse_rate(text: str) -> int:
    """Read a rate such as ``"200M"``, ``"1.5G"``, ``"512K"`` or ``"1048576"`` as bytes per second.

    Units are binary (``K`` is 1024) and may be followed by ``B``, ``iB`` and ``/s``
    (``"512KiB/s"``). The core's own parser, so ``--bwlimit`` and the ``bwlimit`` option have
    one definition. Zero, a negative number or an unknown unit is a :class:`UsageError`.
    """

def library_versions() -> dict[str, str]:
    """Versions of this module and of the libraries it runs with.

    Keys ``virt_rbd_backup`` (the crate), ``librbd`` and ``librados`` (API versions from
    ``rbd_version``/``rados_version``: 1.16.0 and 3.0.0 in Ceph 16) and ``libvirt``.
    """

def thaw_orphans() -> list[dict[str, Any]]:
    """Thaw guests left frozen by runs of this host that died with their thaw watchdog.

    Reads the freeze records under ``$VIRT_RBD_BACKUP_RUNTIME_DIR`` (default
    ``/run/virt-rbd-backup``); a domain is thawed only when every record of it belongs to a
    process that is gone. One dict per domain with a dead record: ``domain``, ``uuid``,
    ``pids``, ``outcome`` (``thawed``, ``not_running``, ``waiting``, ``failed``) and
    ``filesystems`` (thawed) or ``error`` (failed). Ctrl-C waits for the thaws to finish.
    """

def list_domains(connect: str, domains: Sequence[str]) -> list[dict[str, Any]]:
    """List domains and what a backup would do with their disks, as a list of dicts.

    ``domains`` are names or UUIDs; empty means every defined domain. The GIL is released while
    libvirt is asked; Ctrl-C interrupts at once (nothing needs cleaning up).
    """

def list_backups(
    repo: str | os.PathLike[str],
    domain: str | None = None,
    access: str | Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """List the complete backups in a repository (oldest first per domain), as a list of dicts.

    ``domain`` (name or UUID) keeps only that domain's backups. Only the repository is read.
    ``access`` (a JSON object (str) or a mapping with the fields of ``RepoAccess``:
    ``layout``, ``key_file``, ``s3_endpoint``, ``s3_region``, ``s3_credentials``,
    ``s3_ca_file``) opens a block repository (``s3://BUCKET/PREFIX`` or a folder).
    """

def restore(options: str | Mapping[str, Any]) -> dict[str, Any]:
    """Restore one disk of a backup into a file or an RBD image; return the report as a dict.

    ``options`` is a JSON object (str) or a mapping with the fields of ``RestoreOptions``:
    ``repo``, ``domain`` and ``to`` are required; ``disk``, ``backup`` (an id or ``"latest"``),
    ``force``, ``ceph`` (a ``CephAccess`` object: ``connect``, ``ceph_conf``, ``ceph_user``,
    each optional), ``access`` (a ``RepoAccess`` object), ``read_back`` (check by reading the
    whole result back) and ``restic`` (a ``ResticTarget``
    object: restore from restic, ``backup`` then being a snapshot id prefix) are optional; an
    unknown field is a :class:`UsageError`. ``to`` is either a string in the CLI syntax (``rbd:POOL/IMAGE``,
    ``rbd:POOL/NAMESPACE/IMAGE``, or a file path), a malformed one being a
    :class:`UsageError`, or the object ``{"type": "file", "path": ...}`` or
    ``{"type": "rbd", "pool": ..., "namespace": ..., "image": ...}``.

    The GIL is released for the whole restore. On Ctrl-C (or any exception from a signal
    handler) the restore is cancelled, the call waits until the engine has removed the partial
    target, and then re-raises that exception.
    """

def restore_live(options: str | Mapping[str, Any]) -> dict[str, Any]:
    """Restore a backup live under a new domain: it boots at once on the backup, served by this process.

    ``options`` as for :func:`restore_define` (``force`` is refused). The new domain starts on
    qcow2 overlays backed by this process's NBD export of each disk, libvirt copies each disk
    into a new image ``POOL/NAME-TARGET`` (block copy), pivots, and the domain is defined
    persistently on the images. Returns the report: ``name``, ``uuid``, ``backup_id``,
    ``boot_seconds``, ``total_seconds``, ``disks`` (``disk``, ``target``, ``size``,
    ``copy_seconds``), ``dropped_disks``. On Ctrl-C everything made is undone before the
    exception is raised.
    """

def restore_define(options: str | Mapping[str, Any]) -> dict[str, Any]:
    """Restore every RBD disk of a backup into new images and define a new domain on them.

    ``options`` is a JSON object (str) or a mapping with the fields of ``DefineOptions``:
    ``repo``, ``domain`` and ``name`` (the new domain; its images are ``POOL/NAME-TARGET``) are
    required; ``backup`` (an id or ``"latest"``), ``pool`` (default: each disk's own),
    ``force``, ``ceph`` (a ``CephAccess`` object, as for :func:`restore`; its ``connect`` is
    also where the domain is defined), ``access``, ``read_back`` and ``allow_host_passthrough`` are
    optional; a missing or unknown field is a :class:`UsageError`, and so are a domain of that
    name that exists already and saved XML that gives the domain host resources (host devices,
    filesystem passthrough, another emulator, qemu:commandline, ...) without
    ``allow_host_passthrough``: refused before any image is written. When a disk or the
    definition fails, the images made are removed. The
    new domain gets a new UUID and new MACs and is defined, not started. Returns the report as
    a dict (``name``, ``uuid``, ``disks``: one restore report each, ``dropped_disks``).

    The GIL is released for the whole call. On Ctrl-C (or any exception from a signal handler)
    the restore is cancelled, the call waits until the engine has removed the partial image,
    and then re-raises that exception; no domain is defined then.
    """

def verify(
    repo: str | os.PathLike[str],
    domain: str | None = None,
    backup: str | None = None,
    source: str | Mapping[str, Any] | None = None,
    access: str | Mapping[str, Any] | None = None,
    read_data: float = 0.0,
) -> dict[str, Any]:
    """Verify the backups in a repository; return the report as a dict.

    ``access`` opens a block repository (see ``list_backups``); ``read_data`` (0 to 1) is the
    fraction of its blocks also read and checked, a new random sample each run (a folder
    repository's verify always reads every byte).

    ``domain`` (name or UUID) limits it to that domain, ``backup`` (an id or ``"latest"``) to
    that backup and the chain it depends on. With ``source`` (a JSON object (str) or a mapping
    with the fields of ``CephAccess``: ``connect``, ``ceph_conf``, ``ceph_user``, each
    optional; an unknown one is a :class:`UsageError`), the latest backup of each domain (or
    ``backup``) is also compared with its snapshot still in the cluster; the disks found equal
    are in the report's ``source_checked``. Damage is in the report's ``problems``; an
    exception means the verification could not run. The GIL is released while files and
    images are read; Ctrl-C interrupts at once (verification only reads).
    """

def prune(
    repo: str | os.PathLike[str],
    keep: str | Mapping[str, Any],
    domain: str | None = None,
    dry_run: bool = False,
    access: str | Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Remove the backups that no keep option selects; return the report as a dict.

    ``access`` opens a block repository (see ``list_backups``), where the blocks no backup
    names any more are then removed too (under a prune lock; a running backup holds it off).

    ``keep`` is a JSON object (str) or a mapping with the fields of ``KeepOptions``
    (``last``, ``hourly``, ``daily``, ``weekly``, ``monthly``, ``yearly``,
    ``within_seconds``: int or None each); an unknown field, a negative value or no keep option
    at all is a :class:`UsageError`. ``domain`` (name or UUID) limits it to that domain; with
    ``dry_run`` nothing is removed and the report lists what would be.

    The GIL is released for the whole prune. On Ctrl-C the call waits until the prune has
    finished (it cannot stop half-way) and then raises the exception.
    """

def rekey(
    repo: str | os.PathLike[str],
    new_key_file: str | os.PathLike[str],
    access: str | Mapping[str, Any] | None = None,
    keep_old: bool = False,
) -> dict[str, Any]:
    """Give an encrypted block repository a new key file; return the report as a dict.

    ``access`` names the current key file (``key_file``) and the S3 settings (see
    ``list_backups``). The new key file is created (0600) when missing; unless ``keep_old`` the
    current key file opens the repository no more. No block is rewritten.
    """

@final
class DiskServer:
    """A backup's disk being served (NBD server, or the FUSE file of a mount) until ``close()``."""

    @property
    def address(self) -> str:
        """The NBD URI clients connect to, or the path of the FUSE file."""
    @property
    def serving(self) -> bool:
        """Whether it still serves."""
    def info(self) -> dict[str, Any]:
        """What is served: domain, uuid, backup_id, disk, size, chain, warnings, address."""
    def close(self) -> None:
        """Stop serving (close connections, remove the socket; or unmount the FUSE file). Idempotent."""

def serve(
    repo: str | os.PathLike[str],
    domain: str,
    listen: str,
    disk: str | None = None,
    backup: str | None = None,
    access: str | Mapping[str, Any] | None = None,
) -> DiskServer:
    """Serve one disk of a backup over NBD, read-only, on ``listen`` (``unix:PATH`` or ``HOST:PORT``).

    ``backup`` None or ``"latest"`` serves the latest backup; ``disk`` None the backup's only disk.
    Every 4 MiB block is checked against the backup's block table as it is read.
    """

def fuse_disk(
    repo: str | os.PathLike[str],
    domain: str,
    mountpoint: str | os.PathLike[str],
    disk: str | None = None,
    backup: str | None = None,
    access: str | Mapping[str, Any] | None = None,
) -> DiskServer:
    """Mount at ``mountpoint`` a read-only FUSE filesystem whose one file, ``disk``, is a backup's disk."""
