"""The original tool's ``main`` module: ``process_backup`` and ``run_parallel``.

Both back up into the restic repository of :mod:`virt_rbd_backup.compat.config`
(``TARGET_REPO``, password file ``TARGET_KEYFILE``), each disk streamed from a snapshot into
``restic backup --stdin`` as the original did, through the Rust core: guests are frozen around
the snapshots, all disks of a domain are snapshotted at once, and the snapshots are removed
after the upload.

- ``process_backup(domain_images)`` backs up the domain of the records and returns
  ``(True, "No error occurred")`` or ``(False, MESSAGE)``; it prints ``Processing N images for
  domain UUID`` as it starts (warnings go to stderr). It backs up *all* RBD disks of the domain
  together, for one consistent set of snapshots: records that leave some out are refused with
  ``(False, MESSAGE)`` rather than silently backing up more or less than asked.
- ``run_parallel()`` backs up every domain, ``NUMBER_OF_PROCESSES`` at once, printing the
  original's lines as ``virt-rbd-backup`` does (without its summary line), and returns the
  ``(ok, message)`` of each domain that has RBD disks, in libvirt's order (the original
  returned nothing; the list is there for scripts that want it).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from typing import Any

from .. import BackupError, backup, list_domains
from ..cli import EventPrinter, format_event
from . import config
from .virt import VirtRBDImage

__all__ = ["SUCCESS_MESSAGE", "process_backup", "run_parallel"]

SUCCESS_MESSAGE = "No error occurred"
"""The message of a successful backup, as in ``Backup successful: No error occurred ...``."""


def _print_progress_lines(event: Mapping[str, Any]) -> None:
    """Print what the original printed while working on a domain: the Processing line, warnings."""
    if event.get("event") not in ("domain_started", "domain_warning"):
        return
    formatted = format_event(event)
    if formatted is not None:
        stream, text = formatted
        print(text, file=sys.stdout if stream == "out" else sys.stderr, flush=True)


def process_backup(domain_images: Sequence[VirtRBDImage]) -> tuple[bool, str]:
    """Back up the domain of ``domain_images`` into the configured restic repository.

    Returns:
        ``(True, "No error occurred")``, or ``(False, MESSAGE)`` saying what went wrong. An
        empty list has nothing to back up and succeeds.

    Raises:
        KeyboardInterrupt: Ctrl-C, after the guest was thawed and the snapshots removed.
    """
    if not domain_images:
        return True, SUCCESS_MESSAGE
    uuids = {image.domain.UUIDString() for image in domain_images}
    if len(uuids) != 1:
        return False, f"process_backup takes the images of one domain, not of {len(uuids)}"
    uuid = uuids.pop()
    try:
        connect = config.LIBVIRT_CONNECTION
        listings = list_domains(connect=connect, domains=[uuid])
        disks = {(f"{d.pool}/{d.namespace}" if d.namespace else d.pool, d.image) for d in listings[0].rbd_disks}
        given = {(image.pool, image.name) for image in domain_images}
        if given != disks:
            return False, (
                f"domain {uuid} has the RBD disks {', '.join(sorted('/'.join(d) for d in disks)) or 'none'}; "
                "they are backed up together (one consistent set of snapshots): pass the domain's "
                "whole list from list_virtrbd_images()"
            )
        report = backup(
            connect=connect,
            domains=[uuid],
            workers=1,
            restic=config.restic_target(),
            on_event=_print_progress_lines,
        )
    except BackupError as exc:
        return False, str(exc)
    domain = report.domains[0]
    if domain.status == "failed":
        return False, domain.error or "unknown error"
    return True, SUCCESS_MESSAGE


def run_parallel() -> list[tuple[bool, str]]:
    """Back up every domain into the configured restic repository, ``NUMBER_OF_PROCESSES`` at once.

    Prints the original's lines as they happen. A domain that fails is reported and the others
    go on.

    Returns:
        ``(ok, message)`` per domain with RBD disks, in libvirt's order.

    Raises:
        BackupError: The run could not start (libvirt unreachable, no restic password); the
            message says why.
        KeyboardInterrupt: Ctrl-C, after guests were thawed and snapshots removed.
    """
    printer = EventPrinter(sys.stdout, sys.stderr)
    try:
        report = backup(
            connect=config.LIBVIRT_CONNECTION,
            workers=config.NUMBER_OF_PROCESSES,
            restic=config.restic_target(),
            on_event=printer,
        )
    finally:
        printer.close()
    return [
        (True, SUCCESS_MESSAGE) if d.status == "succeeded" else (False, d.error or "unknown error")
        for d in report.domains
        if d.status != "skipped"
    ]
