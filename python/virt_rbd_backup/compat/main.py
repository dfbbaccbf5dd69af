"""The original tool's ``main`` module: ``process_backup``, ``worker`` and ``run_parallel``.

They back up into the restic repository of :mod:`virt_rbd_backup.compat.config`
(``TARGET_REPO``, password file ``TARGET_KEYFILE``), each disk streamed from a snapshot into
``restic backup --stdin`` as the original did, through the Rust core's backup engine: guests
are frozen around the snapshots, all disks of a domain are snapshotted at once, and the
snapshots are removed on every path (success, failure, Ctrl-C), where the original left them
behind whenever something failed.

- ``process_backup(domain_images)`` takes the :class:`~virt_rbd_backup.compat.virt.VirtRBDImage`
  records of one domain (``domain`` is its UUID) and returns ``(True, "No error occurred for
  domain UUID")`` or ``(False, "domain UUID (NAME): MESSAGE")``, the text of the original's
  ``Backup failed: ...`` line naming the domain. It backs up *all* RBD disks of the domain
  together, for one consistent set of snapshots: records that leave some out are refused rather
  than silently backing up more or less than asked. ``snapshot_name`` of the records is not
  used (the engine names its snapshots when it takes them). Warnings go to stderr.
- ``worker(input_queue, output_queue)`` is the original's worker process body: it prints
  ``Processing N images for domain UUID`` and puts each ``process_backup`` result.
- ``run_parallel()`` backs up every domain, ``NUMBER_OF_PROCESSES`` at once, printing the
  original's lines as ``virt-rbd-backup`` does (without its summary line), and returns the
  ``(ok, message)`` of each domain that has RBD disks, in libvirt's order (the original
  returned nothing; the list is there for scripts that want it).
"""

from __future__ import annotations

import multiprocessing
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from .. import BackupError, backup, list_domains
from ..cli import EventPrinter, failure_message, format_event
from . import config
from .virt import VirtRBDImage

__all__ = ["process_backup", "run_parallel", "success_message", "worker"]


def success_message(uuid: str) -> str:
    """Return the message of a successful backup, as in ``Backup successful: MESSAGE``."""
    return f"No error occurred for domain {uuid}"


def _print_warnings(event: Mapping[str, Any]) -> None:
    """Print what the engine warns about while it works on a domain (to stderr)."""
    if event.get("event") != "domain_warning":
        return
    formatted = format_event(event)
    if formatted is not None:
        print(formatted[1], file=sys.stderr, flush=True)


def process_backup(domain_images: Sequence[VirtRBDImage]) -> tuple[bool, str]:
    """Back up the domain of ``domain_images`` into the configured restic repository.

    Returns:
        ``(True, "No error occurred for domain UUID")``, or ``(False, MESSAGE)`` naming the
        domain and saying what went wrong. An empty list has nothing to back up and succeeds.

    Raises:
        KeyboardInterrupt: Ctrl-C, after the guest was thawed and the snapshots removed.
    """
    if not domain_images:
        return True, "No error occurred"
    uuids = sorted({image.domain for image in domain_images})
    if len(uuids) != 1:
        return False, f"process_backup takes the images of one domain, not of {len(uuids)} ({', '.join(uuids)})"
    uuid = uuids[0]
    name = ""
    try:
        connect = config.LIBVIRT_CONNECTION
        (listing,) = list_domains(connect=connect, domains=[uuid])
        name = listing.name
        disks = {(f"{d.pool}/{d.namespace}" if d.namespace else d.pool, d.image) for d in listing.rbd_disks}
        given = {(image.pool, image.name) for image in domain_images}
        if given != disks:
            return False, failure_message(
                uuid,
                name,
                f"the domain has the RBD disks {', '.join(sorted('/'.join(d) for d in disks)) or 'none'}; "
                "they are backed up together (one consistent set of snapshots): pass all of the "
                "domain's records from list_virtrbd_images()",
            )
        report = backup(
            connect=connect,
            domains=[uuid],
            workers=1,
            restic=config.restic_target(),
            on_event=_print_warnings,
        )
    except BackupError as exc:
        return False, failure_message(uuid, name, str(exc))
    domain = report.domains[0]
    if domain.status == "failed":
        return False, failure_message(uuid, domain.name, domain.error or "unknown error")
    return True, success_message(uuid)


def worker(input_queue: multiprocessing.Queue[Any], output_queue: multiprocessing.Queue[Any]) -> None:
    """Back up the domains taken from ``input_queue`` until ``None``; put each result.

    The body of the original's worker processes.
    """
    for domain_images in iter(input_queue.get, None):
        print(f"Processing {len(domain_images)} images for domain {domain_images[0].domain}", flush=True)
        output_queue.put(process_backup(domain_images))


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
        (True, success_message(d.uuid))
        if d.status == "succeeded"
        else (False, failure_message(d.uuid, d.name, d.error or "unknown error"))
        for d in report.domains
        if d.status != "skipped"
    ]
