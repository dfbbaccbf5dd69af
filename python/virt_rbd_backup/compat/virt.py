"""The original tool's ``virt`` module: a libvirt connection and the RBD images of its domains.

Same shapes as the original: ``VirtConnection(connection_string)`` with ``open()`` and
``close()``, attributes it does not have itself looked up on the libvirt connection (raising
:class:`LibvirtConnectionException` while closed), and ``list_virtrbd_images()`` returning one
flat list of :class:`VirtRBDImage` (``domain`` the UUID string, ``name``, ``pool``,
``username``, ``secret``, a settable ``snapshot_name`` starting empty), printing the original's
``Ignoring ... for domain: NAME`` line for each disk it leaves out. Discovery is the Rust
core's (the same as ``virt-rbd-backup list``).

Differences from the original, on purpose:

- The libvirt connection behind the attribute proxy is :class:`LibvirtConnection`, a stand-in
  backed by the Rust core (libvirt's Python binding is not needed): it answers
  ``lookupByUUIDString``, ``lookupByName``, ``listAllDomains`` and ``getURI``, with domains
  that answer ``name()``, ``UUIDString()`` and ``isActive()``. Other libvirt calls raise
  ``AttributeError`` naming what is offered.
- ``secret`` held the Ceph key (the raw bytes of the libvirt secret) and every ``repr`` of a
  record showed it. Here it is a :class:`RedactedSecret` unless the connection is made with
  ``reveal_secrets=True``: bytes that say ``<redacted>`` and remember which libvirt secret
  holds the key, so that :class:`virt_rbd_backup.compat.ceph.CephConnection` reads the key in
  the Rust core and it never enters Python. Revealed, ``secret`` is the key's raw bytes, as
  the original's; a record's ``repr`` never shows it.
- ``pool`` of a disk in a RADOS namespace is ``pool/namespace`` (the original failed on such
  disks); ``CephConnection.open_pool`` takes that form.
"""

from __future__ import annotations

import base64
import dataclasses
from typing import Any

from .. import DEFAULT_CONNECT, DomainListing, RbdDisk, _native
from .. import list_domains as _list_domains
from .._native import LibvirtError
from ..cli import format_event

__all__ = [
    "REDACTED",
    "Domain",
    "LibvirtConnection",
    "LibvirtConnectionException",
    "RedactedSecret",
    "VirtConnection",
    "VirtRBDImage",
]

REDACTED = b"<redacted>"
"""The bytes of a :class:`RedactedSecret`."""


class LibvirtConnectionException(Exception):
    """Raised when methods are called on a closed connection (as the original's)."""


class RedactedSecret(bytes):
    """A Ceph key left in libvirt: the bytes ``<redacted>`` and where the key is.

    ``uri``, ``domain`` (name, for messages), ``username``, and the libvirt secret's
    ``secret_uuid`` or ``secret_usage`` (both ``None``: the disk has no ``<auth>``, the keyring
    of the Ceph configuration applies). Pickles with these fields, so records can be sent to
    worker processes as the original's ``main.py`` does.
    """

    uri: str
    domain: str
    username: str
    secret_uuid: str | None
    secret_usage: str | None

    def __new__(
        cls, uri: str, domain: str, username: str, secret_uuid: str | None, secret_usage: str | None
    ) -> RedactedSecret:
        """Make the stand-in for the key of ``username`` in libvirt secret ``secret_uuid``/``secret_usage``."""
        self = super().__new__(cls, REDACTED)
        self.uri = uri
        self.domain = domain
        self.username = username
        self.secret_uuid = secret_uuid
        self.secret_usage = secret_usage
        return self

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.uri, self.domain, self.username, self.secret_uuid, self.secret_usage))

    def __repr__(self) -> str:
        return "RedactedSecret(<redacted>)"

    @property
    def in_libvirt(self) -> bool:
        """Whether a libvirt secret holds the key (else the Ceph configuration's keyring)."""
        return self.secret_uuid is not None or self.secret_usage is not None


@dataclasses.dataclass
class VirtRBDImage:
    """An RBD image attached to the libvirt domain ``domain`` (its UUID string), as the original's."""

    domain: str
    name: str
    pool: str
    username: str
    secret: bytes = dataclasses.field(repr=False)
    snapshot_name: str = ""


class Domain:
    """Stands in for a libvirt domain object: ``name()``, ``UUIDString()``, ``isActive()``.

    ``isActive()`` is as of the lookup. Two are equal when their UUIDs are.
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
        """Return 1 if the domain was running when looked up, else 0 (libvirt answers an int)."""
        return 1 if self._active else 0

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Domain) and other._uuid == self._uuid

    def __hash__(self) -> int:
        return hash(self._uuid)

    def __repr__(self) -> str:
        return f"Domain(name={self._name!r}, uuid={self._uuid!r})"


def _domain(listing: DomainListing) -> Domain:
    return Domain(listing.name, listing.uuid, listing.active)


class LibvirtConnection:
    """Stands in for ``libvirt.virConnect`` behind :class:`VirtConnection`'s attribute proxy.

    Each call asks the Rust core (which opens its own libvirt connection); errors are
    :class:`virt_rbd_backup.LibvirtError`, where the original raised ``libvirt.libvirtError``.
    """

    OFFERED = ("lookupByUUIDString", "lookupByName", "listAllDomains", "getURI", "close")

    def __init__(self, uri: str) -> None:
        self._uri = uri
        # Connect now, as libvirt.open() did: an unreachable URI fails open(), not a later call.
        _list_domains(connect=uri)

    def getURI(self) -> str:
        """Return the URI."""
        return self._uri

    def close(self) -> int:
        """Do nothing (every call opens and closes its own connection); return 0 as libvirt does."""
        return 0

    def listAllDomains(self, flags: int = 0) -> list[Domain]:
        """Return every domain (``flags`` other than 0 are refused: the stand-in filters nothing)."""
        if flags:
            raise LibvirtError("listAllDomains: flags are not supported by virt_rbd_backup.compat (pass 0)")
        return [_domain(listing) for listing in _list_domains(connect=self._uri)]

    def lookupByUUIDString(self, uuid: str) -> Domain:
        """Return the domain with this UUID (:class:`LibvirtError` if there is none)."""
        return self._lookup(uuid)

    def lookupByName(self, name: str) -> Domain:
        """Return the domain with this name (:class:`LibvirtError` if there is none)."""
        return self._lookup(name)

    def _lookup(self, selector: str) -> Domain:
        listings = _list_domains(connect=self._uri, domains=[selector])
        if len(listings) != 1:
            raise LibvirtError(f"no domain {selector!r} on {self._uri}")
        return _domain(listings[0])

    def __getattr__(self, attr: str) -> Any:
        raise AttributeError(
            f"{attr!r}: the libvirt connection of virt_rbd_backup.compat offers only {', '.join(self.OFFERED)}"
        )


class VirtConnection:
    """A connection to a hypervisor, as the original's ``VirtConnection``.

    Args:
        connection_string: libvirt URI (default ``qemu:///system``).
        reveal_secrets: Put each disk's Ceph key (the raw bytes of its libvirt secret) into
            ``secret``, as the original did. Off by default: ``secret`` is then a
            :class:`RedactedSecret` and the key is never read into Python.
    """

    def __init__(self, connection_string: str | None = None, *, reveal_secrets: bool = False) -> None:
        self.connection_string = connection_string or DEFAULT_CONNECT
        self.reveal_secrets = reveal_secrets
        self.conn: LibvirtConnection | None = None

    def open(self) -> None:
        """Open the hypervisor management connection."""
        self.conn = LibvirtConnection(self.connection_string)

    def close(self) -> None:
        """Close the connection, marking it closed with ``None``."""
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def __enter__(self) -> VirtConnection:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getattr__(self, attr: str) -> Any:
        """Look attributes this class lacks up on the libvirt connection (the original's proxy)."""
        if attr.startswith("__") or attr in ("conn", "connection_string", "reveal_secrets"):
            # Not set yet (unpickling, copying): not a libvirt call.
            raise AttributeError(attr)
        if self.conn is None:
            raise LibvirtConnectionException("invalid connection")
        return getattr(self.conn, attr)

    def __repr__(self) -> str:
        return f"VirtConnection(connection_string={self.connection_string!r}, open={self.conn is not None})"

    def list_virtrbd_images(self) -> list[VirtRBDImage]:
        """Return the RBD images of every domain, one :class:`VirtRBDImage` per disk.

        Prints the original's ``Ignoring ... for domain: NAME`` line for each disk left out.

        Raises:
            LibvirtConnectionException: The connection is not open.
            LibvirtError: libvirt cannot be reached (or a secret cannot be read when revealing).
        """
        if self.conn is None:
            raise LibvirtConnectionException("invalid connection")
        images: list[VirtRBDImage] = []
        for listing in _list_domains(connect=self.connection_string):
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
            images.extend(self._image(listing, disk) for disk in listing.rbd_disks)
        return images

    def _image(self, listing: DomainListing, disk: RbdDisk) -> VirtRBDImage:
        auth = disk.auth
        username = auth.username if auth is not None else ""
        secret: bytes
        if self.reveal_secrets and auth is not None:
            key = _native.ceph_key(
                self.connection_string, listing.name, auth.username, auth.secret_uuid, auth.secret_usage
            )
            secret = base64.b64decode(key)
        else:
            secret = RedactedSecret(
                self.connection_string,
                listing.name,
                username,
                auth.secret_uuid if auth is not None else None,
                auth.secret_usage if auth is not None else None,
            )
        return VirtRBDImage(
            domain=listing.uuid,
            name=disk.image,
            pool=f"{disk.pool}/{disk.namespace}" if disk.namespace else disk.pool,
            username=username,
            secret=secret,
        )
