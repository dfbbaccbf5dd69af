"""The ``virt-rbd-backup`` command: flags in, one library call, the outcome as an exit status.

It replaces the original ``python3 main.py``: run without a subcommand it backs up every domain
and prints the original tool's lines, as events arrive::

    Ignoring non-network disk for domain: NAME
    Ignoring non-RBD network disk for domain: NAME
    Processing N images for domain UUID
    Backup successful: No error occurred for domain UUID
    Backup failed: MESSAGE

followed by a one-line summary. ``list`` shows the domains and their disks, ``list --repo DIR``
the backups a repository holds. Warnings go to stderr; progress is drawn on stderr only when it
is a terminal. Exit status: 0 all domains succeeded, 1 some failed, 2 the run could not start
(bad flags, unusable repository, libvirt unreachable), 130 interrupted (after clean-up).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from typing import IO, Any, Literal

from . import (
    DEFAULT_CONNECT,
    DEFAULT_REPO,
    BackupError,
    BackupListing,
    BackupReport,
    CancelledError,
    DomainListing,
    __version__,
    _backup_json,
    _list_backups_json,
    _list_domains_json,
)

__all__ = [
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "EventPrinter",
    "build_parser",
    "exit_status",
    "format_backup_listing",
    "format_event",
    "format_listing",
    "main",
    "parse_args",
    "summary_line",
]

EXIT_OK = 0
"""Every domain succeeded (or was skipped)."""
EXIT_FAILED = 1
"""At least one domain failed."""
EXIT_USAGE = 2
"""The run could not start: bad flags or configuration, unusable repository, no libvirt."""
EXIT_INTERRUPTED = 130
"""Interrupted by Ctrl-C, after clean-up (128 + SIGINT, as shells report it)."""

SUBCOMMANDS = ("backup", "list")
"""Subcommands; ``backup`` is assumed when the first argument is none of them."""

Stream = Literal["out", "err"]
"""Where a line goes: stdout (the original tool's lines) or stderr (warnings)."""

_SKIP_LINES = {
    "not_network": "Ignoring non-network disk for domain: {domain}",
    "not_rbd": "Ignoring non-RBD network disk for domain: {domain}",
}

_SKIP_REASONS = {
    "not_network": "not a network disk",
    "not_rbd": "network disk that is not RBD",
}


def format_event(event: Mapping[str, Any]) -> tuple[Stream, str] | None:
    """Return the line an event prints, and where, or None for events without a line.

    The lines of the original tool are kept exactly. ``disk_progress`` has no line (progress is
    drawn separately) and neither has a skipped domain's ``domain_finished`` or an event type
    this version does not know.
    """
    kind = event.get("event")
    if kind == "disk_skipped":
        reason = str(event.get("reason"))
        template = _SKIP_LINES.get(
            reason, f"Ignoring disk {event.get('target') or '?'} ({reason}) for domain: {{domain}}"
        )
        return "out", template.format(domain=event["domain"])
    if kind == "domain_started":
        return "out", f"Processing {event['images']} images for domain {event['uuid']}"
    if kind == "domain_warning":
        return "err", f"warning: domain {event['domain']}: {event['message']}"
    if kind == "domain_finished":
        report = event["report"]
        if report["status"] == "succeeded":
            return "out", f"Backup successful: No error occurred for domain {report['uuid']}"
        if report["status"] == "failed":
            return "out", f"Backup failed: {report.get('error') or 'unknown error'}"
    return None


def summary_line(report: BackupReport) -> str:
    """Return the closing line, for example ``Summary: 2 succeeded, 1 failed, 1 skipped``."""
    return (
        f"Summary: {report.count('succeeded')} succeeded, {report.count('failed')} failed, "
        f"{report.count('skipped')} skipped"
    )


def exit_status(report: BackupReport) -> int:
    """Return the exit status of a finished run: 1 if any domain failed, else 0."""
    return EXIT_FAILED if report.any_failed else EXIT_OK


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


class _Progress:
    """One status line on a terminal: the disk updated last, its bytes, total and rate."""

    _INTERVAL = 0.1

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream
        self._started: dict[tuple[str, str], float] = {}
        self._active: dict[tuple[str, str], tuple[int, int]] = {}
        self._drawn = False
        self._last_draw = 0.0

    def update(self, event: Mapping[str, Any]) -> None:
        key = (str(event["domain"]), str(event["target"]))
        done, total = int(event["done"]), int(event["total"])
        now = time.monotonic()
        started = self._started.setdefault(key, now)
        self._active.pop(key, None)
        if total and done >= total:
            self._started.pop(key, None)
            return
        self._active[key] = (done, total)
        if now - self._last_draw < self._INTERVAL:
            return
        self._last_draw = now
        elapsed = now - started
        rate = f"{_size(done / elapsed)}/s" if elapsed > 0 else "-"
        pct = f"{100 * done / total:.0f}%" if total else "-"
        more = f" (+{len(self._active) - 1} more)" if len(self._active) > 1 else ""
        line = f"{key[0]} {key[1]}: {_size(done)} / {_size(total)} {pct} {rate}{more}"
        self._stream.write(f"\r\x1b[K{line}")
        self._stream.flush()
        self._drawn = True

    def forget_domain(self, domain: str) -> None:
        for key in [k for k in self._started if k[0] == domain]:
            self._started.pop(key, None)
            self._active.pop(key, None)

    def clear(self) -> None:
        if self._drawn:
            self._stream.write("\r\x1b[K")
            self._stream.flush()
            self._drawn = False


class EventPrinter:
    """Prints events as they arrive; safe to call from the engine's worker threads."""

    def __init__(
        self,
        out: IO[str],
        err: IO[str],
        *,
        progress: bool = False,
        quiet: bool = False,
        lines: bool = True,
    ) -> None:
        """Print to ``out``/``err``.

        ``progress`` draws a status line on ``err`` (only sensible on a terminal); ``quiet``
        keeps only the ``Backup failed`` lines; ``lines=False`` prints no line at all (for
        ``--json``) but warnings.
        """
        self._out = out
        self._err = err
        self._quiet = quiet
        self._lines = lines
        self._progress = _Progress(err) if progress and not quiet else None
        self._lock = threading.Lock()

    def __call__(self, event: Mapping[str, Any]) -> None:
        """Handle one event."""
        with self._lock:
            kind = event.get("event")
            if kind == "disk_progress":
                if self._progress is not None:
                    self._progress.update(event)
                return
            if kind == "domain_finished" and self._progress is not None:
                self._progress.forget_domain(str(event["report"]["name"]))
            formatted = format_event(event)
            if formatted is None:
                return
            stream, text = formatted
            if not self._wanted(event, stream):
                return
            self._print(self._out if stream == "out" else self._err, text)

    def _wanted(self, event: Mapping[str, Any], stream: Stream) -> bool:
        if stream == "out" and not self._lines:
            return False
        if self._quiet:
            return event.get("event") == "domain_finished" and event["report"]["status"] == "failed"
        return True

    def _print(self, stream: IO[str], text: str) -> None:
        if self._progress is not None:
            self._progress.clear()
        print(text, file=stream, flush=True)

    def line(self, text: str) -> None:
        """Print a line of the command itself (the summary) on ``out``."""
        with self._lock:
            self._print(self._out, text)

    def close(self) -> None:
        """Clear the status line."""
        with self._lock:
            if self._progress is not None:
                self._progress.clear()


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser (subcommands ``backup`` and ``list``)."""
    parser = argparse.ArgumentParser(
        prog="virt-rbd-backup",
        description="Back up libvirt/QEMU domains whose disks live in Ceph RBD.",
        epilog="Without a subcommand, 'backup' is run: 'virt-rbd-backup --domain web1' is "
        "'virt-rbd-backup backup --domain web1'. Exit status: 0 all succeeded, 1 some domain "
        "failed, 2 the run could not start, 130 interrupted.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--connect",
        metavar="URI",
        default=DEFAULT_CONNECT,
        help=f"libvirt URI (default: {DEFAULT_CONNECT})",
    )
    common.add_argument(
        "--domain",
        metavar="NAME",
        dest="domains",
        action="append",
        default=[],
        help="a domain name or UUID; repeat for several (default: every domain)",
    )
    common.add_argument("--json", action="store_true", help="print only JSON on stdout (no progress, no lines)")
    verbosity = common.add_mutually_exclusive_group()
    verbosity.add_argument("-v", "--verbose", action="count", default=0, help="log more (-vv for debug)")
    verbosity.add_argument("-q", "--quiet", action="store_true", help="print only failures and the summary")

    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    run = commands.add_parser(
        "backup",
        parents=[common],
        help="back up domains (the default)",
        description="Back up the RBD disks of libvirt domains into a repository.",
    )
    run.add_argument(
        "--workers",
        metavar="N",
        type=_positive_int,
        default=4,
        help="domains backed up at once (default: 4)",
    )
    run.add_argument(
        "--queue-depth",
        metavar="N",
        type=_positive_int,
        default=8,
        help="reads in flight per image (default: 8)",
    )
    run.add_argument(
        "--freeze",
        choices=("auto", "required", "off"),
        default="auto",
        help="freeze guest filesystems: auto (fall back to crash-consistent with a warning), "
        "required (a failed freeze fails the domain) or off (default: auto)",
    )
    run.add_argument(
        "--freeze-mountpoint",
        metavar="PATH",
        dest="freeze_mountpoints",
        action="append",
        default=[],
        help="freeze only this guest mountpoint; repeat for several (default: all)",
    )
    run.add_argument(
        "--repo",
        metavar="DIR",
        default=DEFAULT_REPO,
        help=f"backup repository (default: {DEFAULT_REPO})",
    )
    listing = commands.add_parser(
        "list",
        parents=[common],
        help="list domains and their disks, or with --repo the backups in a repository",
        description="List domains with the RBD disks a backup would take and those it skips; "
        "with --repo, list the complete backups in that repository instead (libvirt is not "
        "asked). Exit status 1 if some domain cannot be backed up or some backup is unreadable.",
    )
    listing.add_argument(
        "--repo",
        metavar="DIR",
        default=None,
        help="list the backups in this repository instead of the domains",
    )
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse ``argv`` (default: ``sys.argv[1:]``), assuming ``backup`` without a subcommand."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or (args[0] not in SUBCOMMANDS and args[0] not in ("-h", "--help", "--version")):
        args.insert(0, "backup")
    return build_parser().parse_args(args)


def _configure_logging(args: argparse.Namespace) -> None:
    if args.quiet:
        level = logging.ERROR
    elif args.verbose >= 2:
        level = logging.DEBUG
    elif args.verbose == 1:
        level = logging.INFO
    else:
        level = logging.WARNING
    logging.basicConfig(level=level, format="%(name)s: %(levelname)s: %(message)s")


def format_listing(listing: DomainListing) -> list[str]:
    """Return the lines ``list`` prints for one domain."""
    state = "running" if listing.active else "shut off"
    lines = [f"{listing.name} {listing.uuid} ({state})"]
    for disk in listing.rbd_disks:
        extra = " (read-only)" if disk.readonly else ""
        lines.append(f"  {disk.target}: rbd {disk.spec}{extra}")
    for skipped in listing.skipped_disks:
        reason = _SKIP_REASONS.get(skipped.reason, skipped.reason)
        lines.append(f"  {skipped.target or '-'}: skipped, {reason}")
    if listing.error:
        lines.append(f"  error: {listing.error}")
    return lines


def format_backup_listing(listing: BackupListing) -> list[str]:
    """Return the lines ``list --repo`` prints for one backup."""
    if listing.error:
        return [f"{listing.uuid} {listing.backup_id}: unreadable: {listing.error}"]
    completed = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(listing.completed_at))
    consistency = listing.consistency or "-"
    lines = [
        f"{listing.domain} {listing.uuid} {listing.backup_id} {listing.kind} {consistency} {completed} {listing.path}"
    ]
    for disk in listing.disks:
        lines.append(f"  {disk.target}: {disk.image} {_size(disk.size)} ({_size(disk.bytes_written)} stored)")
    return lines


def _run_list(args: argparse.Namespace, out: IO[str]) -> int:
    raw: list[dict[str, Any]]
    listings: Sequence[DomainListing | BackupListing]
    if args.repo is None:
        raw = _list_domains_json(args.connect, args.domains)
        listings = [DomainListing.from_dict(d) for d in raw]
    else:
        wanted = set(args.domains)
        raw = [
            b
            for b in _list_backups_json(args.repo, None)
            if not wanted or b.get("domain") in wanted or b.get("uuid") in wanted
        ]
        listings = [BackupListing.from_dict(b) for b in raw]
    if args.json:
        _print_json(raw, out)
    else:
        for listing in listings:
            lines = format_listing(listing) if isinstance(listing, DomainListing) else format_backup_listing(listing)
            for line in lines:
                print(line, file=out)
    return EXIT_FAILED if any(listing.error for listing in listings) else EXIT_OK


def _print_json(value: Any, out: IO[str]) -> None:
    """Print the core's own JSON (fields this package does not know included)."""
    json.dump(value, out, indent=2)
    out.write("\n")
    out.flush()


def _run_backup(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    printer = EventPrinter(
        out,
        err,
        progress=err.isatty() and not args.json,
        quiet=args.quiet,
        lines=not args.json,
    )
    try:
        raw = _backup_json(
            connect=args.connect,
            domains=args.domains,
            workers=args.workers,
            queue_depth=args.queue_depth,
            freeze=args.freeze,
            freeze_mountpoints=args.freeze_mountpoints,
            repo=args.repo,
            on_event=printer,
        )
    finally:
        printer.close()
    report = BackupReport.from_dict(raw)
    if args.json:
        _print_json(raw, out)
    else:
        printer.line(summary_line(report))
    return exit_status(report)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; return its exit status (argparse errors exit with 2 themselves)."""
    args = parse_args(argv)
    _configure_logging(args)
    try:
        if args.command == "list":
            return _run_list(args, sys.stdout)
        return _run_backup(args, sys.stdout, sys.stderr)
    except (KeyboardInterrupt, CancelledError):
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BackupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
