"""The original tool's ``ceph`` module: a RADOS/RBD connection with one pool and image open.

``CephConnection(rados_id, key, config)`` with ``connect()``, ``pool_exists``, ``open_pool``,
``open_image(name, snapshot=None, read_only=False)``, ``create_snapshot(name,
protected=False)``, ``remove_snapshot(name, force_protected=False)``, ``close_image``,
``close_pool``, ``close_cluster``, ``close`` and the ``require_*`` checks, as the original's,
backed by the Rust core (:class:`virt_rbd_backup._native.CephSession`). ``image`` is an
:class:`Image` with ``size()`` and ``read(offset, length)``, what the original's
``output.restic.backup`` read from.

Differences from the original, on purpose:

- **Snapshots are never left behind by this process.** The original's ``main.py`` removes its
  snapshots only when everything succeeded, so each failure leaked a protected snapshot. Every
  snapshot created here is recorded until it is removed through a ``CephConnection``; what is
  left when the process ends (normally, on an exception, or a ``multiprocessing`` worker's end)
  is unprotected and removed then, with a line on stderr for each. The original's flow creates
  the snapshots on one connection and reads and removes them on another, so closing a
  connection does not remove them. ``create_snapshot(..., keep=True)`` keeps one on purpose.
  A process killed by a signal (SIGKILL, or SIGTERM without a handler) leaves its snapshots.
- ``key`` may be a :class:`virt_rbd_backup.compat.virt.RedactedSecret` (what
  ``list_virtrbd_images()`` gives by default): the key is then read from libvirt in the Rust
  core and never enters Python. ``None`` uses the keyring of the Ceph configuration.
- ``config`` ``None`` (the default) reads librados's default places (``$CEPH_CONF``, then
  ``/etc/ceph/ceph.conf``, ...), where the original read only ``/etc/ceph/ceph.conf``.
- ``cluster`` is ``None`` until ``connect()`` (the original created it unconnected in the
  constructor), so a call before ``connect()`` raises :class:`CephConnectionException`.
- Errors are :class:`virt_rbd_backup.CephError` (or ``LibvirtError`` for the key) with the
  call, image and errno, where the original raised the ``rados``/``rbd`` modules' exceptions.
- ``print_stats`` and ``print_pools`` (unused by the original's ``main.py``) are not offered.
- A pool ``pool/namespace`` (as ``VirtRBDImage.pool`` names a disk in a RADOS namespace)
  opens the namespace.
"""

from __future__ import annotations

import atexit
import multiprocessing.util
import os
import sys
from typing import Any

from .._native import CephSession, remove_leftover_snapshots
from .virt import RedactedSecret

__all__ = ["CephConnection", "CephConnectionException", "Image", "Pool", "remove_leftovers"]

DEFAULT_CEPH_TIMEOUT = 60
"""Seconds each monitor or OSD operation may take (the tool's ``--ceph-timeout`` default)."""


class CephConnectionException(Exception):
    """Raised if a method is called on a closed or invalid Ceph property (as the original's)."""


def remove_leftovers() -> None:
    """Remove the snapshots this process created and did not remove, saying so on stderr.

    Runs by itself when the process ends; idempotent.
    """
    for done in remove_leftover_snapshots():
        if done["outcome"] == "removed":
            print(
                f"virt_rbd_backup.compat.ceph: removed snapshot {done['snapshot']}, which this process "
                "created and did not remove",
                file=sys.stderr,
                flush=True,
            )
        elif done["outcome"] == "failed":
            print(
                f"virt_rbd_backup.compat.ceph: could not remove snapshot {done['snapshot']}, which this "
                f"process created and did not remove: {done['error']}; remove it with "
                f"`rbd snap unprotect` and `rbd snap rm`",
                file=sys.stderr,
                flush=True,
            )


_cleanup_pid: int | None = None


def _arm_cleanup() -> None:
    """Make sure :func:`remove_leftovers` runs when this process ends.

    ``atexit`` serves the main process; a ``multiprocessing`` child ends with ``os._exit``,
    which skips ``atexit`` but runs ``multiprocessing.util`` finalizers. Armed per process: a
    forked child inherits its parent's flag but must arm its own finalizer.
    """
    global _cleanup_pid
    if _cleanup_pid == os.getpid():
        return
    _cleanup_pid = os.getpid()
    atexit.register(remove_leftovers)
    multiprocessing.util.Finalize(None, remove_leftovers, exitpriority=100)


class Pool:
    """The open pool (the original's ``rados.Ioctx``): ``name`` and ``namespace``."""

    def __init__(self, name: str, namespace: str | None) -> None:
        self.name = name
        self.namespace = namespace

    def __repr__(self) -> str:
        return f"Pool(name={self.name!r}, namespace={self.namespace!r})"


class Image:
    """The open image (the original's ``rbd.Image``): what ``output.restic.backup`` reads.

    Valid while it is the connection's open image; afterwards every call raises
    :class:`CephConnectionException`.
    """

    def __init__(self, connection: CephConnection, name: str, snapshot: str | None, read_only: bool) -> None:
        self._connection = connection
        self.name = name
        self.snapshot = snapshot
        self.read_only = read_only

    def _session(self) -> CephSession:
        if self._connection.image is not self:
            raise CephConnectionException("image closed")
        return self._connection._session()

    def size(self) -> int:
        """Return the image's size in bytes (at its snapshot, if opened at one)."""
        return self._session().size()

    def read(self, offset: int, length: int) -> bytes:
        """Read ``length`` bytes at ``offset`` (fewer at the end of the image, none past it)."""
        return self._session().read(offset, length)

    def stream_to_restic(self, target: dict[str, Any], filename: str) -> str:
        """Stream the whole image into ``restic backup --stdin``; return restic's snapshot id.

        ``target``: ``repository``, ``password_file`` (and optionally ``binary``).
        """
        return self._session().stream_to_restic(target, filename)

    def close(self) -> None:
        """Close the image (the connection's ``close_image``)."""
        if self._connection.image is self:
            self._connection.close_image()

    def __repr__(self) -> str:
        at = f"@{self.snapshot}" if self.snapshot else ""
        return f"Image({self.name}{at})"


class CephConnection:
    """A RADOS/RBD connection with at most one pool and one image open, as the original's.

    Args:
        rados_id: Ceph user without ``client.`` (``None``: ``admin``).
        key: The key's raw bytes (base64-encoded for Ceph, as the original did), a
            :class:`~virt_rbd_backup.compat.virt.RedactedSecret`, or ``None`` for the keyring
            of the configuration.
        config: A ``ceph.conf`` (``None``: librados's default places).
        ceph_timeout: Seconds each monitor or OSD operation may take.
    """

    def __init__(
        self,
        rados_id: str | None,
        key: bytes | None,
        config: str | None = None,
        *,
        ceph_timeout: int = DEFAULT_CEPH_TIMEOUT,
    ) -> None:
        if key is not None and not isinstance(key, bytes):
            raise TypeError(f"key must be bytes (the raw key, as libvirt's secret value), not {type(key).__name__}")
        self.rados_id = rados_id or "admin"
        self.key = key
        self.config = config
        self.ceph_timeout = ceph_timeout
        self.cluster: CephSession | None = None
        self.ioctx: Pool | None = None
        self.image: Image | None = None

    def __repr__(self) -> str:
        # Never the key.
        connected = self.cluster is not None
        return f"CephConnection(rados_id={self.rados_id!r}, config={self.config!r}, connected={connected})"

    def _session(self) -> CephSession:
        self.require_cluster_connection()
        assert self.cluster is not None
        return self.cluster

    def connect(self) -> None:
        """Connect to the Ceph monitors."""
        key = self.key
        libvirt_secret = None
        if isinstance(key, RedactedSecret):
            if key.in_libvirt:
                libvirt_secret = (key.uri, key.domain, key.secret_uuid, key.secret_usage)
            key = None
        self.close()
        self.cluster = CephSession(
            self.rados_id,
            conf_file=self.config,
            key=key,
            libvirt_secret=libvirt_secret,
            ceph_timeout=self.ceph_timeout,
        )

    def close_image(self) -> None:
        """Close the image if one is open."""
        if self.image is not None:
            self.image = None
            if self.cluster is not None:
                self.cluster.close_image()

    def close_pool(self) -> None:
        """Close the pool if one is open (and the image open in it)."""
        if self.ioctx is not None:
            self.image = None
            self.ioctx = None
            if self.cluster is not None:
                self.cluster.close_pool()

    def close_cluster(self) -> None:
        """Close the cluster connection if one is open (and what is open in it)."""
        if self.cluster is not None:
            self.image = None
            self.ioctx = None
            session, self.cluster = self.cluster, None
            del session

    def close(self) -> None:
        """Close everything open."""
        self.close_image()
        self.close_pool()
        self.close_cluster()

    def __enter__(self) -> CephConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def require_cluster_connection(self) -> None:
        """Raise :class:`CephConnectionException` unless connected."""
        if self.cluster is None:
            raise CephConnectionException("Not connected to cluster")

    def require_pool_opened(self) -> None:
        """Raise :class:`CephConnectionException` unless a pool is open."""
        self.require_cluster_connection()
        if self.ioctx is None:
            raise CephConnectionException("No pool opened")

    def require_image_opened(self) -> None:
        """Raise :class:`CephConnectionException` unless an image is open."""
        self.require_pool_opened()
        if self.image is None:
            raise CephConnectionException("No image opened")

    def pool_exists(self, pool_name: str) -> bool:
        """Return whether pool ``pool_name`` exists (its pool part, for ``pool/namespace``)."""
        return self._session().pool_exists(pool_name.split("/", 1)[0])

    def open_pool(self, pool_name: str) -> None:
        """Open pool ``pool_name`` (``pool/namespace`` opens the namespace)."""
        session = self._session()
        pool, _, namespace = pool_name.partition("/")
        self.image = None
        self.ioctx = None
        session.open_pool(pool, namespace or None)
        self.ioctx = Pool(pool, namespace or None)

    def open_image(self, image_name: str, snapshot: str | None = None, read_only: bool = False) -> None:
        """Open image ``image_name`` of the open pool, read-only at ``snapshot`` or at its head."""
        self.require_pool_opened()
        session = self._session()
        self.image = None
        session.open_image(image_name, snapshot, read_only)
        self.image = Image(self, image_name, snapshot, read_only)

    def create_snapshot(self, snapshot_name: str, protected: bool = False, *, keep: bool = False) -> None:
        """Create snapshot ``snapshot_name`` of the open image, protected if asked.

        Unless ``keep``, the snapshot is removed when this process ends if nothing removed it
        before (see the module doc).
        """
        self.require_image_opened()
        session = self._session()
        if not keep:
            _arm_cleanup()
        session.create_snapshot(snapshot_name, keep)
        if protected:
            session.protect_snapshot(snapshot_name)

    def remove_snapshot(self, snapshot_name: str, force_protected: bool = False) -> None:
        """Remove snapshot ``snapshot_name``, unprotecting it first if ``force_protected``."""
        self.require_image_opened()
        session = self._session()
        if force_protected and session.snapshot_is_protected(snapshot_name):
            session.unprotect_snapshot(snapshot_name)
        session.remove_snapshot(snapshot_name)
