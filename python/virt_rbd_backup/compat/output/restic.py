"""The original tool's ``output.restic`` module: ``backup(repo, keyfile, src, filename, progress)``.

Streams the image ``src`` (the ``image`` of a
:class:`virt_rbd_backup.compat.ceph.CephConnection`) into ``restic backup --stdin
--stdin-filename FILENAME`` of ``target_repo`` with the password file ``keyfile``, as the
original did, through the Rust core's restic driver: allocated blocks are read several at a
time and holes are sent as zeros without being read. A failure raises :class:`BackupException`
(restic is stopped before it records a truncated image).

Differences from the original, on purpose:

- The repository reaches restic through its environment (``RESTIC_REPOSITORY``), not its
  command line: a REST or SFTP URL may carry credentials. ``keyfile`` ``None`` takes the
  password from ``RESTIC_PASSWORD*`` in the environment.
- ``src`` must be a :class:`~virt_rbd_backup.compat.ceph.Image`; another object with
  ``size()`` and ``read()`` (a ``rbd.Image`` of Ceph's Python binding) is refused with
  ``TypeError``.
- The error message quotes restic's own (the original said "see log"), with any credentials
  in a URL repository left out; ``progress`` is accepted and, as in the original (whose restic
  wrote to /dev/null), shows nothing.
"""

from __future__ import annotations

import os
import re

from ..._native import BackupError
from ..ceph import Image

__all__ = ["CHUNK_SIZE", "BackupException", "backup"]

CHUNK_SIZE = 4194304
"""The original's read size (4 MiB); the core reads whole 4 MiB blocks too."""


class BackupException(Exception):
    """Raised when the backup process experiences an I/O or execution error (as the original's)."""


def _shown(repository: str) -> str:
    """The repository for a message: ``user:password@`` of a URL left out."""
    return re.sub(r"(//)[^/@]*@", r"\1", repository)


def backup(
    target_repo: str,
    keyfile: str | os.PathLike[str] | None,
    src: Image,
    filename: str = "stdin",
    progress: bool = False,
) -> str:
    """Back up the image ``src`` into restic as the file ``filename``.

    Returns:
        restic's snapshot id (the original returned nothing).

    Raises:
        BackupException: restic could not be run or failed, or the image could not be read.
        TypeError: ``src`` is not an image of a compat ``CephConnection``.
    """
    del progress  # Accepted for the original's signature; it showed nothing either.
    if not isinstance(src, Image):
        raise TypeError(
            "virt_rbd_backup.compat.output.restic.backup reads the image of a "
            f"virt_rbd_backup.compat.ceph.CephConnection, not {type(src).__name__}"
        )
    target = {
        "repository": os.fspath(target_repo),
        "password_file": None if keyfile is None else os.fspath(keyfile),
    }
    try:
        return src.stream_to_restic(target, filename)
    except BackupError as exc:
        shown = _shown(str(target_repo))
        raise BackupException(f"Backup error for repository {shown}, image {filename}: {exc}") from exc
