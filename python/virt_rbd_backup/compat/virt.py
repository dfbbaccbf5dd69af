"""The original tool's ``virt`` module: the RBD images of libvirt domains.

``VirtConnection(uri).list_virtrbd_images()`` returns one list per domain that has RBD disks,
each holding a :class:`VirtRBDImage` per disk, in the original's shape
``VirtRBDImage(domain, name, pool, username, secret, snapshot_name)``, and prints the
original's ``Ignoring ... for domain: NAME`` line for each disk it leaves out. Discovery is the
Rust core's (the same as ``virt-rbd-backup list``).

Differences from the original, on purpose:

- ``domain`` was a libvirt domain object; here it is a :class:`Domain` that answers the calls
  scripts made on it (``name()``, ``UUIDString()``, ``isActive()``) and holds no connection.
- ``secret`` held the Ceph key in clear, and so did every ``repr`` and log line of a record.
  Here it is :data:`REDACTED` unless the connection is made with ``reveal_secrets=True``, and
  even then a record's ``repr`` does not show it (``record.secret`` does).
- ``snapshot_name`` is the name the tool's snapshot would have if the backup started when the
  list was made; the real one is named when it is taken (they differ by the time in between).
- ``pool`` of a disk in a RADOS namespace is ``pool/namespace``, so that ``f"{pool}/{name}"``
  is the image's full ``rbd`` spec, and ``username`` is empty for a disk without ``<auth>``.
"""

from __future__ import annotations

import time
from typing import NamedTuple

from .. import DEFAULT_CONNECT, DomainListing, RbdDisk, _native
from .. import list_domains as _list_domains
from ..cli import format_event

__all__ = ["REDACTED", "Domain", "VirtConnection", "VirtRBDImage"]

REDACTED = "<redacted>"
"""What ``secret`` holds unless the key was asked for."""

SNAPSHOT_OWNER = "restic"
"""The owner part of the snapshot names: the original backed up into restic."""


class Domain:
    """Stands in for the libvirt domain object of the original's records.

    Answers what scripts asked a domain: ``name()``, ``UUIDString()``, ``isActive()`` (as of
    the listing). Two are equal when their UUIDs are.
    """

    __slots__ = ("_active", "_name", "_uuid")

    def __init__(self, name: str, uuid: str, active: bool) -> None:
        self._name = name
        self._uuid = uuid
        self._active = active

    def name(self) -> str:
        """Return the domain's name."""
        return self._name

    def UUIDString(self) -> str:
        """Return the domain's UUID."""
        return self._uuid

    def isActive(self) -> int:
        """Return 1 if the domain was running when listed, else 0 (libvirt answers an int)."""
        return 1 if self._active else 0

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Domain) and other._uuid == self._uuid

    def __hash__(self) -> int:
        return hash(self._uuid)

    def __repr__(self) -> str:
        return f"Domain(name={self._name!r}, uuid={self._uuid!r})"

    def __str__(self) -> str:
        return self._name


class VirtRBDImage(NamedTuple):
    """One RBD disk of a domain, in the original's shape."""

    domain: Domain
    """The domain (see :class:`Domain`)."""
    name: str
    """The RBD image."""
    pool: str
    """Its pool (``pool/namespace`` in a RADOS namespace)."""
    username: str
    """The Ceph user of the disk's ``<auth>`` (empty without one)."""
    secret: str
    """The Ceph key, or :data:`REDACTED` unless the connection reveals secrets."""
    snapshot_name: str
    """The name the tool's snapshot would have (see the module doc)."""

    def __repr__(self) -> str:
        secret = self.secret if self.secret == REDACTED else "<hidden: read .secret>"
        return (
            f"VirtRBDImage(domain={self.domain!r}, name={self.name!r}, pool={self.pool!r}, "
            f"username={self.username!r}, secret={secret!r}, snapshot_name={self.snapshot_name!r})"
        )


class VirtConnection:
    """A libvirt URI to list domains from, as the original's ``VirtConnection``.

    Args:
        uri: libvirt URI (default ``qemu:///system``).
        reveal_secrets: Put each disk's Ceph key (read from its libvirt secret) into
            ``secret``, as the original did. Off by default: the key is then never read.
    """

    def __init__(self, uri: str | None = None, *, reveal_secrets: bool = False) -> None:
        self.uri = uri or DEFAULT_CONNECT
        self.reveal_secrets = reveal_secrets

    def __enter__(self) -> VirtConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Do nothing: every call opens and closes its own libvirt connection."""

    def list_virtrbd_images(self) -> list[list[VirtRBDImage]]:
        """Return the RBD images of every domain, one list per domain that has any.

        Prints the original's ``Ignoring ... for domain: NAME`` line for each disk left out.

        Raises:
            LibvirtError: libvirt cannot be reached (or a secret cannot be read when revealing).
        """
        snapshot = _native.snapshot_name(SNAPSHOT_OWNER, time.time())
        result: list[list[VirtRBDImage]] = []
        for listing in _list_domains(connect=self.uri):
            for skipped in listing.skipped_disks:
                line = format_event(
                    {
                        "event": "disk_skipped",
                        "domain": listing.name,
                        "uuid": listing.uuid,
                        "target": skipped.target,
                        "reason": skipped.reason,
                    }
                )
                if line is not None:
                    print(line[1], flush=True)
            images = [self._image(listing, disk, snapshot) for disk in listing.rbd_disks]
            if images:
                result.append(images)
        return result

    def _image(self, listing: DomainListing, disk: RbdDisk, snapshot: str) -> VirtRBDImage:
        secret = REDACTED
        if self.reveal_secrets and disk.auth is not None:
            secret = _native.ceph_key(
                self.uri, listing.name, disk.auth.username, disk.auth.secret_uuid, disk.auth.secret_usage
            )
        return VirtRBDImage(
            domain=Domain(listing.name, listing.uuid, listing.active),
            name=disk.image,
            pool=f"{disk.pool}/{disk.namespace}" if disk.namespace else disk.pool,
            username=disk.auth.username if disk.auth is not None else "",
            secret=secret,
            snapshot_name=snapshot,
        )
