"""The ``virt-rbd-backup`` command: flags in, one library call, the outcome as an exit status.

It replaces the original ``python3 main.py``: run without a subcommand it backs up every domain
and prints the original tool's lines, as events arrive::

    Ignoring non-network disk for domain: NAME
    Ignoring non-RBD network disk for domain: NAME
    Ignoring RBD snapshot disk for domain: NAME
    Processing N images for domain UUID
    Backup successful: No error occurred for domain UUID
    Backup failed: domain UUID (NAME): MESSAGE

followed by a one-line summary (the RBD snapshot line is new: the original tool had no such
case). ``list`` shows the domains and their disks, ``list --repo DIR`` the backups a repository
holds, ``list --restic-repo REPO`` the disk backups in a restic repository. ``plan`` (or
``backup --dry-run``) prints what a backup would do, touching nothing. Warnings go to stderr;
progress is drawn on stderr only when it is a terminal.

Settings come from the command line, then a configuration file (``--config PATH``, else the
original tool's ``config.py`` in the current directory or next to the program run, else
``/etc/virt-rbd-backup/config.toml``; see :mod:`virt_rbd_backup.config`), then the defaults.
With the original's ``config.py`` the tool does the original's job: every domain into the
restic repository ``TARGET_REPO``, with the same lines.

The other subcommands work on the repository::

    restore DOMAIN --to TARGET [--disk vda] [--backup ID|latest] [--force] [--read-back] [--restic-repo REPO]
        Restored DOMAIN disk vda from backup ID (chain: A <- B) to TARGET: N bytes, checksum verified
        Restored DOMAIN disk vda from restic snapshot ID to TARGET: N bytes
    restore DOMAIN --define NAME [--pool POOL] [--backup ID|latest] [--force] [--allow-host-passthrough]
        Defined NAME (UUID) from backup ID of DOMAIN: vda -> rbd/NAME-vda, vdb -> rbd/NAME-vdb
        (and on stderr a warning naming the disks the new domain does not get)
    restore DOMAIN --define NAME --live [--pool POOL] [--backup ID|latest]
        Restored NAME (UUID) live from backup ID of DOMAIN: running after S s, on its own images after T s: ...
    verify [DOMAIN] [--backup ID|latest] [--source [--ceph-conf PATH] [--ceph-user NAME]]
        OK: N backups verified  |  CORRUPT backup ID disk vda: MESSAGE (one line per problem)
        SOURCE OK backup ID disk vda: equals rbd snapshot (--source, one line per disk)
    prune [DOMAIN] --keep-daily N ... [--keep-within 7d] [--dry-run]
        keep DOMAIN ID: REASONS  |  remove DOMAIN ID: REASON  |  would remove DOMAIN ID: REASON
    rekey --new-key-file FILE [--keep-old]   (an encrypted block repository)
        Rekeyed REPO: key NEW opens it; old key OLD removed
    thaw-orphans
        Thawed domain NAME (UUID), left frozen by a run that died (pid N): 2 filesystems

SIGTERM and SIGHUP do what Ctrl-C does (cancel, thaw, remove this run's snapshots, then exit
128 + the signal's number), so ``systemctl stop`` and a closed terminal clean up too.

Exit status: 0 success; 1 some domain failed (``backup``), the restore failed, verify found
damage, prune had problems; 2 bad flags or options (an existing restore target without
``--force``, no keep option), and for ``backup`` and ``list`` anything that stops the run before
it starts (unusable repository, libvirt unreachable, restic without a password, a bad
configuration file); 130 interrupted by Ctrl-C, 143 by SIGTERM, 129 by SIGHUP (after
clean-up). ``plan`` exits 1 when a domain cannot be planned. A metrics file that cannot be
written makes a backup exit 1. ``--legacy-exit-status`` (``legacy_exit_status`` in the file,
``LEGACY_EXIT_STATUS`` in the original's ``config.py``) makes a backup in which domains failed
exit 0, as the original always did; the ``Backup failed`` lines are still printed.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import IO, Any, Literal, TypeVar

from . import (
    DEFAULT_CONNECT,
    DEFAULT_REPO,
    BackupError,
    BackupListing,
    BackupPlan,
    BackupReport,
    CancelledError,
    DefineReport,
    DomainListing,
    OrphanThaw,
    PruneReport,
    RekeyReport,
    RepoAccess,
    ResticSnapshot,
    ResticTarget,
    RestoreReport,
    UsageError,
    VerifyReport,
    __version__,
    _backup_json,
    _keep_options,
    _list_backups_json,
    _list_domains_json,
    _list_restic_json,
    _native,
    _plan_json,
    _prune_json,
    _rekey_json,
    _restore_define_json,
    _restore_json,
    _verify_json,
    access,
    backup,
    journal,
    parse_duration,
    parse_rate,
    prune,
    rekey,
    restore,
    restore_define,
    restore_live,
    thaw_orphans,
    verify,
)
from .config import BackupConfig, find_config
from .metrics import render_prune_metrics, render_verify_metrics, write_metrics, write_metrics_text

__all__ = [
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "EventPrinter",
    "build_parser",
    "error_status",
    "exit_status",
    "failure_message",
    "format_backup_listing",
    "format_define",
    "format_event",
    "format_listing",
    "format_plan",
    "format_prune",
    "format_restic_listing",
    "format_restore",
    "format_verify",
    "main",
    "parse_args",
    "summary_line",
]

EXIT_OK = 0
"""Every domain succeeded (or was skipped); the restore, verify or prune found nothing wrong."""
EXIT_FAILED = 1
"""At least one domain failed; the restore failed; verify found damage; prune had problems."""
EXIT_USAGE = 2
"""Bad flags or options; for ``backup`` and ``list`` also an unusable repository or no libvirt."""
EXIT_INTERRUPTED = 130
"""Interrupted by Ctrl-C, after clean-up (128 + SIGINT, as shells report it); SIGTERM and
SIGHUP give 128 + their number (143, 129)."""

SUBCOMMANDS = (
    "backup",
    "plan",
    "list",
    "restore",
    "verify",
    "prune",
    "rekey",
    "thaw-orphans",
    "serve",
    "mount",
    "umount",
)
"""Subcommands; ``backup`` is assumed when the first argument is none of them."""

Stream = Literal["out", "err"]
"""Where a line goes: stdout (the original tool's lines) or stderr (warnings)."""

_SKIP_LINES = {
    "not_network": "Ignoring non-network disk for domain: {domain}",
    "not_rbd": "Ignoring non-RBD network disk for domain: {domain}",
    "rbd_snapshot": "Ignoring RBD snapshot disk for domain: {domain}",
}

_SKIP_REASONS = {
    "not_network": "not a network disk",
    "not_rbd": "network disk that is not RBD",
    "rbd_snapshot": "its source is an RBD snapshot",
}

_COMMANDS_THAT_START = ("backup", "plan", "list")
"""Commands for which any error is "the run could not start" (2); for the others only a usage
error is 2 and any other error is a failure of the operation (1)."""


def failure_message(uuid: str, name: str, error: str) -> str:
    """Return what follows ``Backup failed: ``: the domain (UUID and name), then the error.

    The original's message named the domain's UUID; the name is there for the operator. An
    empty ``name`` (libvirt could not be asked) leaves it out.
    """
    return f"domain {uuid} ({name}): {error}" if name else f"domain {uuid}: {error}"


def format_event(event: Mapping[str, Any]) -> tuple[Stream, str] | None:
    """Return the line an event prints, and where, or None for events without a line.

    The lines of the original tool are kept exactly. ``disk_progress`` has no line (progress is
    drawn separately) and neither has a ``domain_finished`` of a domain skipped for having no RBD
    disk or an event type this version does not know; a domain skipped because another client
    holds its images prints its ``skip_reason``.
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
            message = failure_message(report["uuid"], report["name"], report.get("error") or "unknown error")
            return "out", f"Backup failed: {message}"
        if report["status"] == "skipped" and report.get("skip_reason"):
            return "out", str(report["skip_reason"])
    return None


def summary_line(report: BackupReport) -> str:
    """Return the closing line, for example ``Summary: 2 succeeded, 1 failed, 1 skipped``."""
    return (
        f"Summary: {report.count('succeeded')} succeeded, {report.count('failed')} failed, "
        f"{report.count('skipped')} skipped"
    )


def exit_status(
    report: BackupReport | BackupPlan | RestoreReport | DefineReport | VerifyReport | PruneReport,
) -> int:
    """Return the exit status of a finished command from its report.

    1 if a domain failed (backup) or cannot be planned (plan), damage was found (verify) or a
    domain could not be pruned completely (prune); otherwise, and always for a restore (also
    ``--define``) that returned a report, 0.
    """
    if isinstance(report, BackupReport):
        failed = report.any_failed
    elif isinstance(report, BackupPlan):
        failed = report.has_errors
    elif isinstance(report, VerifyReport):
        failed = not report.ok
    elif isinstance(report, PruneReport):
        failed = report.has_problems
    else:
        failed = False
    return EXIT_FAILED if failed else EXIT_OK


def error_status(command: str, error: BackupError) -> int:
    """Return the exit status of ``command`` stopped by ``error``.

    A :class:`UsageError` is 2 everywhere. Any other error is 2 for ``backup``, ``plan`` and
    ``list`` (the run could not start; a failure during a backup is in its report) and 1 for
    ``restore``, ``verify`` and ``prune`` (the operation itself failed: damaged data, Ceph,
    restic, the repository).
    """
    if isinstance(error, UsageError) or command in _COMMANDS_THAT_START:
        return EXIT_USAGE
    return EXIT_FAILED


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


def _rate(text: str) -> int:
    try:
        return parse_rate(text)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _duration(text: str) -> int:
    try:
        return parse_duration(text)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


class _RefusePassword(argparse.Action):
    """``--restic-password``: refused without echoing the value (argparse would print it)."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        parser.error(
            f"{option_string}: a password is never taken on the command line (every user can read it "
            "in ps); use --restic-password-file FILE, or RESTIC_PASSWORD_FILE in the environment"
        )


def _add_target(parser: argparse.ArgumentParser, *, repo_default: str | None = DEFAULT_REPO) -> None:
    """``--repo DIR`` or ``--restic-repo REPO`` (one of them), the restic password file and binary."""
    target = parser.add_mutually_exclusive_group()
    target.add_argument(
        "--repo",
        metavar="DIR",
        default=repo_default,
        help=f"backup repository (default: {repo_default})"
        if repo_default
        else "list the backups in this repository instead of the domains",
    )
    target.add_argument(
        "--restic-repo",
        metavar="REPO",
        default=None,
        help="a restic repository instead of --repo (path, sftp:, rest:, s3: ...); its password "
        "from --restic-password-file or RESTIC_PASSWORD/RESTIC_PASSWORD_FILE in the environment",
    )
    parser.add_argument(
        "--restic-password-file",
        metavar="FILE",
        default=None,
        help="file holding the restic repository's password (never give the password itself)",
    )
    parser.add_argument("--restic-password", nargs="?", action=_RefusePassword, help=argparse.SUPPRESS)
    parser.add_argument(
        "--restic-binary", metavar="PATH", default="restic", help="the restic program (default: restic)"
    )
    _add_repo_access(parser)


_BACKUP_ARGUMENTS: dict[str, tuple[str, dict[str, Any]]] = {
    "workers": ("--workers", {"metavar": "N", "type": _positive_int, "help": "domains backed up at once"}),
    "queue_depth": ("--queue-depth", {"metavar": "N", "type": _positive_int, "help": "reads in flight per image"}),
    "freeze": (
        "--freeze",
        {
            "choices": ("auto", "required", "off"),
            "help": "freeze guest filesystems: auto (fall back to crash-consistent with a warning), "
            "required (a failed freeze fails the domain) or off",
        },
    ),
    "freeze_mountpoints": (
        "--freeze-mountpoint",
        {
            "metavar": "PATH",
            "action": "append",
            "help": "freeze only this guest mountpoint; repeat for several (default: all)",
        },
    ),
    "consistency": (
        "--consistency",
        {
            "choices": ("auto", "group", "per-disk"),
            "help": "one instant for all disks of a domain when no freeze gives it: auto (an RBD group "
            "snapshot when all its disks are in one RBD group), group (also put ungrouped disks into "
            "a group per domain, virt-rbd-backup-UUID) or per-disk",
        },
    ),
    "mode": (
        "--mode",
        {
            "choices": ("auto", "full"),
            "help": "auto: incremental when the previous backup can serve as base, else full (with "
            "the reason as a warning); full: always full",
        },
    ),
    "full_every": (
        "--full-every",
        {
            "metavar": "N",
            "type": _positive_int,
            "help": "take a full backup (a new chain) of a disk every N backups of it "
            "(default: only when no incremental is possible)",
        },
    ),
    "agent_timeout": (
        "--agent-timeout",
        {
            "metavar": "S",
            "type": _positive_int,
            "help": "seconds to wait for the guest agent to answer a freeze or thaw",
        },
    ),
    "freeze_timeout": (
        "--freeze-timeout",
        {
            "metavar": "S",
            "type": _positive_int,
            "help": "longest a guest may stay frozen, counted from before the freeze call and longer than "
            "--agent-timeout: past it a watchdog thaws it and the domain fails",
        },
    ),
    "ceph_timeout": (
        "--ceph-timeout",
        {
            "metavar": "S",
            "type": _positive_int,
            "help": "seconds a Ceph monitor or OSD operation may take before the domain fails",
        },
    ),
    "compress": (
        "--compress",
        {
            "metavar": "zstd[:LEVEL]",
            "help": "compress the stored files with zstd, level 1-19 (zstd alone: level 3); "
            "'zstd -dc FILE' gives the stock file back (default: uncompressed)",
        },
    ),
    "bwlimit": (
        "--bwlimit",
        {
            "metavar": "RATE",
            "type": _rate,
            "help": "read at most RATE bytes per second from the cluster, all disks together: "
            "200M, 1.5G, 512K or a number of bytes (binary units; default: no limit)",
        },
    ),
}
"""The command-line option of each keyword argument of :func:`backup` (and of ``plan``), by the
argument's name; its default is the signature's. A new argument of :func:`backup` needs its
entry here (or in ``_BACKUP_ARGUMENTS_ELSEWHERE``): building the parser fails otherwise."""

_BACKUP_ARGUMENTS_ELSEWHERE = frozenset({"connect", "domains", "repo", "restic", "access", "on_event"})
"""Keyword arguments of :func:`backup` whose options other commands share (the connection and
selection options, ``_add_target``, which also adds the flags of ``access``), or that have none
(``on_event``: a callback)."""

_API_ONLY = frozenset({"on_event"})
"""Keyword arguments of the API functions that no command-line option gives."""


def _add_backup_options(parser: argparse.ArgumentParser) -> None:
    """The options of a backup (also taken by ``plan``, so one command line fits both).

    One per keyword argument of :func:`backup`, in its order, with its default.
    """
    for name, parameter in inspect.signature(backup).parameters.items():
        if name in _BACKUP_ARGUMENTS_ELSEWHERE:
            continue
        flag, spec = _BACKUP_ARGUMENTS[name]
        default = list(parameter.default) if isinstance(parameter.default, tuple) else parameter.default
        help_text = (
            spec["help"] if default is None or "(default:" in spec["help"] else f"{spec['help']} (default: {default})"
        )
        parser.add_argument(flag, dest=name, **{**spec, "default": default, "help": help_text})
    parser.add_argument(
        "--legacy-exit-status",
        action="store_true",
        default=False,
        help="exit 0 even when domains failed, as the original tool did (their 'Backup failed' "
        "lines are still printed; errors that stop the run still exit 2)",
    )
    _add_target(parser)


def _api_options(function: Callable[..., Any], args: argparse.Namespace, **given: Any) -> dict[str, Any]:
    """The keyword arguments of the API ``function`` from the parsed options.

    Each keyword-only parameter of ``function`` takes the option of the same name (``given``
    overrides, for the options the command line spells otherwise): the list of options is the
    function's signature, written once.
    """
    options: dict[str, Any] = {}
    for name, parameter in inspect.signature(function).parameters.items():
        if parameter.kind is not inspect.Parameter.KEYWORD_ONLY or name in _API_ONLY:
            continue
        options[name] = given.pop(name) if name in given else getattr(args, name)
    if given:
        raise TypeError(f"{function.__name__}() takes no {', '.join(sorted(given))}")
    return options


def _subparser(
    commands: Any, name: str, parents: list[argparse.ArgumentParser], **kwargs: Any
) -> argparse.ArgumentParser:
    # No abbreviations: `--restic-password` must not pass for `--restic-password-file`.
    parser: argparse.ArgumentParser = commands.add_parser(name, parents=parents, allow_abbrev=False, **kwargs)
    return parser


def version_line() -> str:
    """Return ``virt-rbd-backup VERSION (librbd X, librados Y, libvirt Z)``.

    The libraries are those loaded, which must match the host's Ceph and libvirt (the wheel
    does not bundle them).
    """
    libs = _native.library_versions()
    return (
        f"virt-rbd-backup {__version__} (librbd {libs['librbd']}, librados {libs['librados']}, "
        f"libvirt {libs['libvirt']})"
    )


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser (subcommands ``backup``, ``plan``, ``list``, ``restore``, ``verify``, ``prune``)."""
    parser = argparse.ArgumentParser(
        prog="virt-rbd-backup",
        allow_abbrev=False,
        description="Back up libvirt/QEMU domains whose disks live in Ceph RBD.",
        epilog="Without a subcommand, 'backup' is run: 'virt-rbd-backup --domain web1' is "
        "'virt-rbd-backup backup --domain web1'. Settings not given on the command line come "
        "from --config PATH, else from the original tool's config.py in the current directory, "
        "else from /etc/virt-rbd-backup/config.toml if it exists. Exit status: 0 success, 1 some "
        "domain failed (backup), the restore failed, verify found damage or prune had problems, "
        "2 bad flags or options (for backup, plan and list: anything that stops the run before "
        "it starts), 130 interrupted.",
    )
    parser.add_argument("--version", action="version", version=version_line())

    configuration = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    configuration.add_argument(
        "--config",
        metavar="PATH",
        default=None,
        help="configuration file: TOML, or the original tool's config.py (a name ending in .py, or "
        "a folder holding it); default: the original's config.py in the current directory or next to "
        "the program run, else /etc/virt-rbd-backup/config.toml if it exists",
    )
    connection = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    connection.add_argument(
        "--connect",
        metavar="URI",
        default=DEFAULT_CONNECT,
        help=f"libvirt URI (default: {DEFAULT_CONNECT})",
    )
    selection = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    selection.add_argument(
        "--domain",
        metavar="NAME",
        dest="domains",
        action="append",
        default=[],
        help="a domain name or UUID; repeat for several (default: every domain)",
    )
    output = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    output.add_argument("--json", action="store_true", help="print only JSON on stdout (no progress, no lines)")
    verbosity = output.add_mutually_exclusive_group()
    verbosity.add_argument("-v", "--verbose", action="count", default=0, help="log more (-vv for debug)")
    verbosity.add_argument(
        "-q", "--quiet", action="store_true", help="print only failures and problems (and the backup summary)"
    )
    common = [configuration, connection, selection, output]

    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    run = _subparser(
        commands,
        "backup",
        common,
        help="back up domains (the default)",
        description="Back up the RBD disks of libvirt domains into a repository, or into a "
        "restic repository with --restic-repo (each disk streamed into 'restic backup --stdin', "
        "tagged with the domain UUID, name and disk).",
    )
    _add_backup_options(run)
    run.add_argument(
        "--dry-run", action="store_true", help="back up nothing; print what would be done (as 'plan' does)"
    )
    run.add_argument(
        "--metrics-file",
        metavar="PATH",
        default=None,
        help="after the run, write node_exporter textfile-collector metrics to PATH (atomically)",
    )
    run.add_argument(
        "--on-failure",
        metavar="COMMAND",
        default=None,
        help="when a domain failed or the run could not start, run COMMAND (with /bin/sh) with the "
        "JSON report on its standard input, for example to page someone",
    )

    planning = _subparser(
        commands,
        "plan",
        common,
        help="say what a backup would do, touching nothing",
        description="For each domain a backup would take: its RBD disks, full or incremental "
        "(and why full), and the bytes it would read. Nothing is locked, frozen, snapshotted or "
        "written. Takes the options of 'backup'. Exit status 1 if some domain cannot be planned.",
    )
    _add_backup_options(planning)

    listing = _subparser(
        commands,
        "list",
        common,
        help="list domains and their disks, or the backups in a repository or a restic repository",
        description="List domains with the RBD disks a backup would take and those it skips; "
        "with --repo, the complete backups in that repository, with --restic-repo the disk "
        "backups in that restic repository (libvirt is not asked then). Exit status 1 if some "
        "domain cannot be backed up or some backup is unreadable.",
    )
    listing.add_argument("domain", metavar="DOMAIN", nargs="?", default=None, help="only this domain (name or UUID)")
    _add_target(listing, repo_default=None)

    restoring = _subparser(
        commands,
        "restore",
        [configuration, connection, output],
        help="restore a disk of a backup into a file or an RBD image, or a whole domain",
        description="Restore one disk of a backup (replaying its chain of incrementals) into a "
        "sparse raw file or an RBD image, and check the result against the backup's checksum; "
        "with --restic-repo, from a sealed restic snapshot, checked against its seal's size and "
        "checksum (latest passes over incomplete ones and names them on stderr). "
        "The target is written under a temporary name and renamed into place only then. "
        "With --define NAME instead of --to, every RBD disk is restored into POOL/NAME-DISK and "
        "a new domain NAME (new UUID and MACs) is defined on them from the saved XML, not started; "
        "saved XML that would give it host resources (host devices, shared host directories, "
        "another emulator, qemu:commandline, ...) is refused before anything is written, "
        "unless --allow-host-passthrough. If a disk or the definition fails, the images made "
        "are removed. "
        "Exit status 1 if the restore failed (damaged data, Ceph, restic, libvirt), 2 on bad "
        "options (an existing target without --force, several disks without --disk, a bad "
        "target, an existing domain NAME, host passthrough in the saved XML).",
    )
    restoring.add_argument("domain", metavar="DOMAIN", help="domain name or UUID, as the repository knows it")
    destination = restoring.add_mutually_exclusive_group(required=True)
    destination.add_argument(
        "--to",
        metavar="TARGET",
        help="rbd:POOL/IMAGE, rbd:POOL/NAMESPACE/IMAGE or a file path (./rbd:x for a file named so)",
    )
    destination.add_argument(
        "--define",
        metavar="NAME",
        default=None,
        help="restore every RBD disk into POOL/NAME-DISK and define a new domain NAME on them "
        "(writable disks not in the backup are left out)",
    )
    restoring.add_argument(
        "--pool", metavar="POOL", default=None, help="with --define: the pool of the new images (default: each disk's)"
    )
    restoring.add_argument("--disk", metavar="DEV", help="the disk, for example vda (needed if the backup has several)")
    restoring.add_argument(
        "--backup",
        metavar="ID",
        default=None,
        help="backup id (with --restic-repo: a restic snapshot id or a prefix of it), or 'latest' "
        "(default: the latest backup)",
    )
    restoring.add_argument(
        "--force",
        action="store_true",
        help="replace an existing file or image (kept aside until the new one is in place), or "
        "write into a block device (with --define: replace existing images)",
    )
    restoring.add_argument(
        "--read-back",
        action="store_true",
        help="check the result by reading all of it back from the target, instead of hashing what "
        "is written and reading back only what incrementals wrote over (slower; see the README's Safety)",
    )
    restoring.add_argument(
        "--live",
        action="store_true",
        help="with --define: start the new domain at once on the backup (served by this process) while "
        "libvirt copies it into the new images, then run it on them, defined persistently; the command "
        "returns then (Ctrl-C undoes everything; not with --force)",
    )
    restoring.add_argument(
        "--allow-host-passthrough",
        action="store_true",
        help="with --define: define the domain even if its saved XML gives it host devices, host "
        "directories, another emulator or qemu:commandline (check it with virsh edit before starting it)",
    )
    _add_ceph_conf(restoring, "for an RBD target", " (needed with --restic-repo)")
    _add_target(restoring)

    verifying = _subparser(
        commands,
        "verify",
        [configuration, connection, output],
        help="check backups against their checksums (and with --source against the cluster)",
        description="Read every stored file of the backups and check it against its checksum, "
        "and every chain for completeness; only the repository is read. With --source, also "
        "compare the latest backup of each domain (or --backup) with its snapshot still in the "
        "cluster, block by block. Exit status 1 if any damage or difference was found or the "
        "repository or cluster could not be read, 2 on bad options.",
    )
    verifying.add_argument(
        "domain", metavar="DOMAIN", nargs="?", default=None, help="only this domain (default: every domain)"
    )
    verifying.add_argument(
        "--backup", metavar="ID", default=None, help="only this backup (or 'latest') and the chain it depends on"
    )
    verifying.add_argument(
        "--source",
        action="store_true",
        help="also compare the latest backup (or --backup) with its RBD snapshot in the cluster",
    )
    reading = verifying.add_mutually_exclusive_group()
    reading.add_argument(
        "--read-data",
        action="store_true",
        help="block repositories: also read every block and check it against its id and block "
        "table (folder repositories always read every byte)",
    )
    reading.add_argument(
        "--read-data-subset",
        metavar="PERCENT",
        dest="read_data",
        type=_percent,
        help="block repositories: read and check PERCENT%% of the blocks, a new random sample each run",
    )
    _add_ceph_conf(verifying, "with --source")
    _add_repo(verifying)
    _add_metrics_file(verifying, "verify")

    pruning = _subparser(
        commands,
        "prune",
        [configuration, output],
        help="remove the backups no keep option selects",
        description="Keep the backups selected by the keep options (each on its own, as restic "
        "does; a kept incremental keeps its chain) and remove the others and leftovers of "
        "interrupted runs. At least one keep option is required. Exit status 1 if a domain was "
        "skipped or failed or a folder could not be handled, 2 on bad options.",
    )
    pruning.add_argument(
        "domain", metavar="DOMAIN", nargs="?", default=None, help="only this domain (default: every domain)"
    )
    for name, what in (
        ("last", "the N newest backups"),
        ("hourly", "the newest backup of each of the last N hours with backups"),
        ("daily", "the newest backup of each of the last N days (UTC) with backups"),
        ("weekly", "the newest backup of each of the last N ISO weeks with backups"),
        ("monthly", "the newest backup of each of the last N months with backups"),
        ("yearly", "the newest backup of each of the last N years with backups"),
    ):
        pruning.add_argument(f"--keep-{name}", metavar="N", type=_positive_int, default=None, help=f"keep {what}")
    pruning.add_argument(
        "--keep-within",
        metavar="DURATION",
        type=_duration,
        default=None,
        help="keep every backup at most this much older than the newest, for example 7d, 12h "
        "or 1w3d (units s, min, h, d, w)",
    )
    pruning.add_argument("--dry-run", action="store_true", help="remove nothing; print what would be removed")
    _add_repo(pruning)
    _add_metrics_file(pruning, "prune (not with --dry-run)")

    rekeying = _subparser(
        commands,
        "rekey",
        [configuration, output],
        help="give an encrypted block repository a new key file (key rotation)",
        description="Store the repository's data key once more, wrapped by a new key file "
        "(created with mode 0600 when missing), and unless --keep-old take the current key "
        "file's access away once the new one opens the repository. No block is rewritten. "
        "--repo-key-file names the current key file. Exit status 1 if the repository could not "
        "be changed, 2 on bad options.",
    )
    rekeying.add_argument("--new-key-file", metavar="FILE", required=True, help="the new key file")
    rekeying.add_argument(
        "--keep-old", action="store_true", help="leave the current key file working too (for a handover)"
    )
    _add_repo(rekeying)

    _subparser(
        commands,
        "thaw-orphans",
        [output],
        help="thaw guests left frozen by backup runs that died (the unit's ExecStopPost=)",
        description="Thaw guests that a backup run of this host froze and could not thaw because "
        "it was killed together with its thaw watchdog (systemd kills the unit's whole cgroup). "
        "Each run records its freezes under $VIRT_RBD_BACKUP_RUNTIME_DIR (default "
        "/run/virt-rbd-backup); a guest is thawed only when every record of it belongs to a "
        "process that is gone. Every backup run does this too before it freezes. Exit status 1 "
        "if a thaw failed (its record stays for the next try).",
    )
    _add_access_commands(commands, [configuration, output])
    return parser


def _add_access_commands(commands: Any, parents: list[argparse.ArgumentParser]) -> None:
    """``serve``, ``mount`` and ``umount`` (issue 19: instant access to a backup)."""
    which = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    which.add_argument("domain", metavar="DOMAIN", help="domain name or UUID")
    which.add_argument(
        "--repo",
        metavar="DIR",
        default=DEFAULT_REPO,
        help=f"backup repository: a folder or s3://BUCKET/PREFIX (default: {DEFAULT_REPO})",
    )
    _add_repo_access(which)
    which.add_argument(
        "--disk", metavar="TARGET", default=None, help="the disk, e.g. vda (default: the backup's only disk)"
    )
    which.add_argument("--backup", metavar="ID", default=None, help="a backup id or 'latest' (default: latest)")
    serving = _subparser(
        commands,
        "serve",
        [*parents, which],
        help="serve a disk of a backup over NBD, read-only, until Ctrl-C",
        description="Serve one disk as it was at a backup over NBD (read-only; structured replies, "
        "block status with base:allocation, several connections), assembled from the chain's "
        "files. Every 4 MiB block is checked against the backup's block table as it is read: a "
        "block that does not match is an I/O error to the client and a log line naming the file "
        "and offset. Clients: qemu-img, nbdinfo, nbdfuse, qemu-nbd --connect, a guest.",
    )
    serving.add_argument(
        "--listen",
        metavar="ADDRESS",
        default=None,
        help="unix:PATH or HOST:PORT (TCP: no TLS, no authentication; a trusted network only); "
        "default: unix:$VIRT_RBD_BACKUP_RUNTIME_DIR/serve/DOMAIN-DISK.sock",
    )
    mounting = _subparser(
        commands,
        "mount",
        [*parents, which],
        help="mount a disk's filesystem from a backup, read-only",
        description="Mount the filesystem of one disk as it was at a backup, read-only, without "
        "restoring it: the disk becomes a file in a FUSE filesystem, attached to a loop device "
        "(losetup --read-only --partscan), and the filesystem found on it or on its partitions "
        "(blkid) is mounted read-only (ext3/4 with noload, xfs with norecovery). A background "
        "process serves the file until 'virt-rbd-backup umount MOUNTPOINT'.",
    )
    mounting.add_argument("mountpoint", metavar="MOUNTPOINT", help="an existing empty folder")
    mounting.add_argument(
        "--partition",
        metavar="N",
        type=_positive_int,
        default=None,
        help="mount partition N (default: the first with a filesystem)",
    )
    mounting.add_argument(
        "--foreground", action="store_true", help="serve in this process until SIGTERM or Ctrl-C, then unmount"
    )
    unmounting = _subparser(
        commands,
        "umount",
        parents,
        help="undo 'mount': unmount, detach the loop device, stop the server",
        description="Unmount a backup mounted with 'virt-rbd-backup mount', detach its loop device and "
        "stop the process serving it. Also after that process was killed (SIGKILL): the filesystem "
        "(lazily if need be), the loop device and the dead FUSE mount are undone and the state removed; "
        "it prints what it did.",
    )
    unmounting.add_argument("mountpoint", metavar="MOUNTPOINT")


def _run_serve(args: argparse.Namespace, out: IO[str]) -> int:
    server = access.serve(
        repo=args.repo,
        domain=args.domain,
        disk=args.disk,
        backup=args.backup,
        listen=args.listen,
        access=args.access,
    )
    info = dict(server.info)
    if args.json:
        _print_json(info, out)
    else:
        print(
            f"Serving disk {info['disk']} of backup {info['backup_id']} of {info['domain']} "
            f"({_size(info['size'])}, chain of {len(info['chain'])}) at {server.address}",
            file=out,
        )
        for warning in info["warnings"]:
            print(f"warning: {warning}", file=out)
    out.flush()
    try:
        while True:
            time.sleep(3600)
    finally:
        server.close()


def _run_mount(args: argparse.Namespace, out: IO[str]) -> int:
    def ready(state: access.MountState) -> None:
        if args.json:
            _print_json(state.to_dict(), out)
        else:
            print(
                f"Mounted {state.fs_type} of {state.device} (disk {state.disk} of backup {state.backup_id} "
                f"of {state.domain}) read-only at {state.mountpoint}",
                file=out,
            )
        out.flush()

    if args.foreground:
        access.mount_foreground(
            repo=args.repo,
            domain=args.domain,
            mountpoint=args.mountpoint,
            disk=args.disk,
            backup=args.backup,
            partition=args.partition,
            ready=ready,
            access=args.access,
        )
        return EXIT_OK
    ready(
        access.mount(
            repo=args.repo,
            domain=args.domain,
            mountpoint=args.mountpoint,
            disk=args.disk,
            backup=args.backup,
            partition=args.partition,
            access=args.access,
        )
    )
    return EXIT_OK


def _run_rekey(args: argparse.Namespace, out: IO[str]) -> int:
    raw = _rekey_json(**_api_options(rekey, args))
    report = RekeyReport.from_dict(raw)
    if args.json:
        _print_json(raw, out)
    elif not args.quiet:
        old = "removed" if report.old_removed else "still opens it too"
        made = " (created: keep a copy off this host)" if report.created else ""
        print(
            f"Rekeyed {report.repo}: key {report.new_key_id} opens it{made}; old key {report.old_key_id} {old}",
            file=out,
        )
    return EXIT_OK


def _run_umount(args: argparse.Namespace, out: IO[str]) -> int:
    state = access.umount(args.mountpoint)
    if args.json:
        _print_json(state.to_dict(), out)
    else:
        print(f"Unmounted {state.mountpoint}:", file=out)
        for step in state.undone:
            print(f"  {step}", file=out)
    return EXIT_OK


def _add_ceph_conf(parser: argparse.ArgumentParser, when: str, note: str = "") -> None:
    """``--ceph-conf`` and ``--ceph-user``: reach the cluster without the domain's saved XML."""
    parser.add_argument(
        "--ceph-conf",
        metavar="PATH",
        default=None,
        help=f"{when}: connect with this ceph.conf and its keyring instead of the monitors and "
        f"libvirt secret of the domain's saved XML{note}",
    )
    parser.add_argument("--ceph-user", metavar="NAME", default=None, help="Ceph user with --ceph-conf (default: admin)")


def _add_metrics_file(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--metrics-file",
        metavar="PATH",
        default=None,
        help=f"after the {what}, write node_exporter textfile-collector metrics to PATH (atomically)",
    )


def _percent(text: str) -> float:
    """A percentage such as ``10`` or ``10%`` as a fraction (0 to 1]."""
    try:
        value = float(text.removesuffix("%"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a percentage: {text!r}") from None
    if not 0 < value <= 100:
        raise argparse.ArgumentTypeError(f"{text!r} is not between 0 and 100 %")
    return value / 100


def _add_repo(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--repo",
        metavar="DIR",
        default=DEFAULT_REPO,
        help=f"backup repository: a folder or s3://BUCKET/PREFIX (default: {DEFAULT_REPO})",
    )
    _add_repo_access(parser)


# The options of `RepoAccess`, by their CLI and config.toml names (`repo_key_file` is the
# access's `key_file`).
_REPO_ACCESS_OPTIONS = ("layout", "repo_key_file", "s3_endpoint", "s3_region", "s3_credentials", "s3_ca_file")


def _add_repo_access(parser: argparse.ArgumentParser) -> None:
    """How to open a block repository: layout, key file, S3 endpoint and credentials."""
    parser.add_argument(
        "--layout",
        choices=("folder", "blocks"),
        default=None,
        help="layout of a new repository in a folder: folder (sparse raw + rbd diffs, readable "
        "with stock tools; the default) or blocks (deduplicated 4 MiB blocks, optionally "
        "encrypted; always on s3://)",
    )
    parser.add_argument(
        "--repo-key-file",
        metavar="FILE",
        default=None,
        help="key file (0600) of an encrypted block repository; a new repository creates it: keep a copy off this host",
    )
    parser.add_argument("--s3-endpoint", metavar="URL", default=None, help="S3 endpoint, https://HOST[:PORT]")
    parser.add_argument("--s3-region", metavar="REGION", default=None, help="S3 region the endpoint signs for")
    parser.add_argument(
        "--s3-credentials",
        metavar="FILE",
        default=None,
        help="AWS credentials file (0600) with the S3 keys (default: the AWS_* environment)",
    )
    parser.add_argument("--s3-ca-file", metavar="FILE", default=None, help="CA certificates (PEM) for the S3 endpoint")


def _repo_access(args: argparse.Namespace) -> RepoAccess | None:
    """The repository access options given, if any."""
    values = {name: getattr(args, name, None) for name in _REPO_ACCESS_OPTIONS}
    if all(value is None for value in values.values()):
        return None
    values["key_file"] = values.pop("repo_key_file")
    return RepoAccess(**values)


_SETTINGS = frozenset(f.name for f in dataclasses.fields(BackupConfig)) - {"path", "legacy"}
"""Every setting a configuration file may hold (``BackupConfig``'s fields)."""

_RESTIC_SETTINGS = frozenset({"restic_repo", "restic_password_file", "restic_binary"})


def _config_settings(function: Callable[..., Any], *cli_only: str) -> frozenset[str]:
    """The settings of a configuration file a command takes.

    They are the keyword arguments of its API ``function`` that are settings (``restic`` as the
    three restic settings), and the settings of options only the command line has (``cli_only``).
    """
    names = set(inspect.signature(function).parameters)
    if "restic" in names:
        names |= _RESTIC_SETTINGS
    if "access" in names:
        names |= set(_REPO_ACCESS_OPTIONS)
    return frozenset((names | set(cli_only)) & _SETTINGS)


# Settings of a configuration file each subcommand takes (when it has the option at all).
# `list` takes no target and no domains from it (they would change what it lists), nor do
# the repository commands take the backup's output format; restore, verify and prune take
# only what names the place (connect, repo, restic) and prune its keep rules, never what
# names the backup or disk.
_CONFIG_SETTINGS: dict[str, frozenset[str]] = {
    "backup": _config_settings(backup, "metrics_file", "on_failure", "json", "legacy_exit_status"),
    "list": frozenset({"connect", "restic_password_file", "restic_binary", *_REPO_ACCESS_OPTIONS}),
    "restore": _config_settings(restore),
    "verify": _config_settings(verify),
    "prune": _config_settings(prune),
    "rekey": _config_settings(rekey),
}
_CONFIG_SETTINGS["plan"] = _CONFIG_SETTINGS["backup"]


def _with_subcommand(argv: Sequence[str] | None) -> list[str]:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or (args[0] not in SUBCOMMANDS and args[0] not in ("-h", "--help", "--version")):
        args.insert(0, "backup")
    return args


def _explicit_options(args: list[str]) -> set[str]:
    """The options given on the command line (their ``dest``), without the defaults."""
    parser = build_parser()
    stack = [parser]
    while stack:
        current = stack.pop()
        for action in current._actions:
            action.default = argparse.SUPPRESS
            if isinstance(action, argparse._SubParsersAction):
                stack.extend(action.choices.values())
    return set(vars(parser.parse_args(args)))


def _apply_config(args: argparse.Namespace, given: set[str], config: BackupConfig) -> None:
    """Fill the options not given on the command line from ``config``.

    A target on the command line (``--repo`` or ``--restic-repo``) replaces the file's restic
    target as a whole; the file's password file goes only with the file's restic repository.
    """
    wanted = _CONFIG_SETTINGS.get(args.command, frozenset())
    settings = config.settings()
    for key, value in settings.items():
        if key not in wanted or key in given or not hasattr(args, key):
            continue
        if key == "restic_repo" and ("repo" in given or "restic_repo" in given):
            continue
        if key == "restic_password_file" and getattr(args, "restic_repo", None) != settings.get("restic_repo"):
            continue
        setattr(args, key, value)


def parse_args(argv: Sequence[str] | None = None, *, config: BackupConfig | None = None) -> argparse.Namespace:
    """Parse ``argv`` (default: ``sys.argv[1:]``), assuming ``backup`` without a subcommand.

    With ``config``, options not given in ``argv`` take the file's settings (flags override
    the file, the file overrides the defaults).
    """
    args_list = _with_subcommand(argv)
    args = build_parser().parse_args(args_list)
    if config is not None:
        _apply_config(args, _explicit_options(args_list), config)
    # The API's one `access` argument, from the flags (and settings) that spell it out.
    args.access = _repo_access(args)
    return args


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
    chain = f" (on {listing.parent})" if listing.parent else ""
    age = _age(time.time() - listing.completed_at)
    lines = [
        f"{listing.domain} {listing.uuid} {listing.backup_id} {listing.kind}{chain} {consistency} "
        f"{completed} ({age} ago) {listing.path}"
    ]
    for disk in listing.disks:
        link = f"{disk.kind} #{disk.chain_position}" if disk.kind == "incremental" else disk.kind
        lines.append(f"  {disk.target}: {disk.image} {_size(disk.size)} {link} ({_size(disk.bytes_written)} stored)")
    return lines


def _age(seconds: float) -> str:
    """A short human age: 45s, 12min, 5h, 3d."""
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def format_restic_listing(snapshot: ResticSnapshot) -> str:
    """Return the line ``list --restic-repo`` prints for one restic snapshot.

    ``DOMAIN UUID DISK ID TIME HOST FILE``, the id shortened to 8 characters as restic shows it
    (``restore --backup`` takes such a prefix), and ``INCOMPLETE (no seal)`` after a snapshot
    that no seal vouches for (``restore`` refuses it; ``latest`` passes over it).
    """
    line = (
        f"{snapshot.domain or '-'} {snapshot.domain_uuid or '-'} {snapshot.disk or '-'} {snapshot.id[:8]} "
        f"{snapshot.time} {snapshot.host or '-'} {snapshot.file}"
    )
    return line if snapshot.complete else f"{line} INCOMPLETE (no seal)"


def _restic_target(args: argparse.Namespace) -> ResticTarget | None:
    """The restic target of the options, or None; a password file without a repository is an error."""
    repository = getattr(args, "restic_repo", None)
    if repository is None:
        if getattr(args, "restic_password_file", None) is not None:
            raise UsageError("--restic-password-file needs --restic-repo (or [restic] repository in the configuration)")
        return None
    return ResticTarget(
        repository=repository,
        password_file=args.restic_password_file,
        binary=args.restic_binary,
    )


def _domain_filter(args: argparse.Namespace) -> list[str]:
    return [*args.domains, *([args.domain] if args.domain else [])]


def _run_list(args: argparse.Namespace, out: IO[str]) -> int:
    raw: list[dict[str, Any]]
    listings: Sequence[DomainListing | BackupListing | ResticSnapshot]
    wanted = set(_domain_filter(args))
    restic = _restic_target(args)
    if restic is not None:
        raw = [
            s
            for s in _list_restic_json(restic, None)
            if not wanted or s.get("domain") in wanted or s.get("domain_uuid") in wanted
        ]
        listings = [ResticSnapshot.from_dict(s) for s in raw]
    elif args.repo is None:
        raw = _list_domains_json(args.connect, list(dict.fromkeys(_domain_filter(args))))
        listings = [DomainListing.from_dict(d) for d in raw]
    else:
        raw = [
            b
            for b in _list_backups_json(args.repo, None, args.access)
            if not wanted or b.get("domain") in wanted or b.get("uuid") in wanted
        ]
        listings = [BackupListing.from_dict(b) for b in raw]
    if args.json:
        _print_json(raw, out)
    else:
        for listing in listings:
            if isinstance(listing, DomainListing):
                lines = format_listing(listing)
            elif isinstance(listing, BackupListing):
                lines = format_backup_listing(listing)
            else:
                lines = [format_restic_listing(listing)]
            for line in lines:
                print(line, file=out)
    failed = any(isinstance(listing, DomainListing | BackupListing) and listing.error for listing in listings)
    return EXIT_FAILED if failed else EXIT_OK


def format_plan(plan: BackupPlan, *, quiet: bool = False) -> list[str]:
    """Return the lines ``plan`` (and ``backup --dry-run``) prints.

    Per domain a line with its state, one per disk (``vda: rbd/web1-root 10.0 GiB, incremental
    on ID, about 1.2 GiB to read`` or ``full (REASON)``), the skipped disks and an error if it
    cannot be planned; then the total. ``quiet`` keeps only the domains that cannot be planned.
    """
    lines: list[str] = []
    disks = 0
    for domain in plan.domains:
        if quiet and not domain.error:
            continue
        if domain.active:
            state = "running, would freeze" if domain.would_freeze else "running, no freeze"
        else:
            state = "shut off"
        lines.append(f"{domain.name} {domain.uuid} ({state})")
        for disk in domain.disks:
            disks += 1
            if disk.kind == "incremental":
                kind = f"incremental on {disk.parent_backup}" if disk.parent_backup else "incremental"
            else:
                kind = f"full ({disk.reason})" if disk.reason else "full"
            lines.append(
                f"  {disk.target}: {disk.image} {_size(disk.size)}, {kind}, about {_size(disk.estimated_bytes)} to read"
            )
        for skipped in domain.skipped_disks:
            reason = _SKIP_REASONS.get(skipped.reason, skipped.reason)
            lines.append(f"  {skipped.target or '-'}: skipped, {reason}")
        if domain.error:
            lines.append(f"  error: {domain.error}")
    if not quiet:
        lines.append(
            f"Estimated: about {_size(plan.estimated_bytes)} to read from {disks} disks of "
            f"{len(plan.domains)} domains; nothing was changed"
        )
    return lines


def format_restore(report: RestoreReport, *, restic: bool = False) -> str:
    """Return the line ``restore`` prints.

    For example ``Restored web1 disk vda from backup B (chain: A <- B) to rbd:rbd/web1-root:
    10737418240 bytes, checksum verified``: the chain full backup first, the image size. A
    restore from restic (``restic=True``) checks the checksum its seal records:
    ``Restored web1 disk vda from restic snapshot ID to /srv/x.raw: 10737418240 bytes, checksum
    verified``.
    """
    if restic:
        return (
            f"Restored {report.domain} disk {report.disk} from restic snapshot {report.backup_id} "
            f"to {report.target}: {report.size} bytes, checksum verified"
        )
    chain = " <- ".join(report.chain) or report.backup_id
    return (
        f"Restored {report.domain} disk {report.disk} from backup {report.backup_id} (chain: {chain}) "
        f"to {report.target}: {report.size} bytes, checksum verified"
    )


def format_define(report: DefineReport, domain: str) -> list[tuple[Stream, str]]:
    """Return the lines ``restore --define`` prints, and where.

    On stdout ``Defined NAME (UUID) from backup ID of DOMAIN: vda -> rbd/NAME-vda, vdb ->
    rbd/NAME-vdb``; on stderr, if the new domain was defined without some disks of the
    original (writable disks that are not in the backup), a warning naming them. ``domain`` is
    the domain as given, named when the report has no disk to take the backup's name from.
    """
    first = report.disks[0] if report.disks else None
    origin = f"backup {first.backup_id} of {first.domain}" if first else f"a backup of {domain}"
    disks = ", ".join(f"{d.disk} -> {d.target.removeprefix('rbd:')}" for d in report.disks) or "no disk"
    lines: list[tuple[Stream, str]] = [("out", f"Defined {report.name} ({report.uuid}) from {origin}: {disks}")]
    if report.dropped_disks:
        lines.append(
            (
                "err",
                f"warning: {report.name} was defined without {', '.join(report.dropped_disks)}: writable "
                "disks that are not in the backup are left out, never shared with the original",
            )
        )
    return lines


def format_verify(report: VerifyReport, *, quiet: bool = False) -> list[str]:
    """Return the lines ``verify`` prints.

    ``OK: N backups verified`` and with ``--source`` one ``SOURCE OK backup ID disk DEV: equals
    rbd snapshot`` line per disk compared (nothing when ``quiet``), or one ``CORRUPT backup ID
    disk DEV: MESSAGE`` line per problem (``CORRUPT backup ID: MESSAGE`` for a manifest that
    cannot be read; a disk that differs from its snapshot, or whose snapshot is gone, is such a
    problem too).
    """
    if report.ok:
        if quiet:
            return []
        return [
            f"OK: {len(report.checked)} backups verified",
            *(
                f"SOURCE OK backup {backup_id} disk {disk}: equals rbd snapshot"
                for backup_id, disk in report.source_checked
            ),
        ]
    return [
        f"CORRUPT backup {p.backup_id} disk {p.disk}: {p.message}"
        if p.disk
        else f"CORRUPT backup {p.backup_id}: {p.message}"
        for p in report.problems
    ]


def format_prune(report: PruneReport, *, quiet: bool = False) -> list[str]:
    """Return the lines ``prune`` prints.

    Per domain: a line if it was skipped or failed, one per backup, oldest first, saying what
    happens to it and why (``keep DOMAIN ID: REASONS``, ``remove DOMAIN ID: REASON`` or in a dry
    run ``would remove DOMAIN ID: REASON``), then its problems (``error DOMAIN: MESSAGE``).
    ``quiet`` leaves out the ``keep`` lines.
    """
    remove = "would remove" if report.dry_run else "remove"
    lines: list[str] = []
    for domain in report.domains:
        name = domain.display_name
        if domain.status != "done":
            lines.append(f"{domain.status} {name}: {domain.message or 'no reason given'}")
        marks = [(k.backup_id, f"keep {name} {k.backup_id}: {', '.join(k.reasons)}") for k in domain.kept if not quiet]
        marks += [(r.backup_id, f"{remove} {name} {r.backup_id}: {r.reason}") for r in domain.removed]
        # Backup ids are UTC timestamps: sorting them interleaves keeps and removals in time.
        lines.extend(line for _, line in sorted(marks, key=lambda mark: mark[0]))
        lines.extend(f"error {name}: {error}" for error in domain.errors)
    if report.blocks is not None:
        verb = "would remove" if report.dry_run else "removed"
        lines.append(
            f"blocks: {verb} {report.blocks.removed} unreferenced ({report.blocks.bytes_removed} bytes), "
            f"{report.blocks.kept} referenced"
        )
    return lines


def _print_json(value: Any, out: IO[str]) -> None:
    """Print the core's own JSON (fields this package does not know included)."""
    json.dump(value, out, indent=2)
    out.write("\n")
    out.flush()


_Report = TypeVar("_Report", BackupPlan, RestoreReport, VerifyReport, PruneReport)


def _print_report(
    raw: dict[str, Any],
    report: _Report,
    lines: Callable[[_Report], Sequence[str]],
    args: argparse.Namespace,
    out: IO[str],
) -> int:
    """Print a command's report, the core's own JSON with ``--json``, else its ``lines``; return the exit status."""
    if args.json:
        _print_json(raw, out)
    else:
        _print_lines(lines(report), out)
    return exit_status(report)


def _backup_options(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of a backup (and of its plan) from the options."""
    return _api_options(backup, args, restic=_restic_target(args))


def _run_plan(args: argparse.Namespace, out: IO[str]) -> int:
    raw = _plan_json(**_backup_options(args))
    return _print_report(raw, BackupPlan.from_dict(raw), lambda plan: format_plan(plan, quiet=args.quiet), args, out)


def _write_metrics(path: str, report: BackupReport | None, err: IO[str]) -> bool:
    """Write the metrics file of a backup; on failure say so on ``err`` and return False."""
    try:
        write_metrics(path, report, now=time.time(), versions=_native.library_versions())
    except OSError as exc:
        print(f"error: cannot write the metrics file {path}: {exc.strerror or exc}", file=err)
        return False
    return True


def _write_metrics_text(path: str, text: str, err: IO[str]) -> bool:
    """Write a prune or verify metrics file; on failure say so on ``err`` and return False."""
    try:
        write_metrics_text(path, text)
    except OSError as exc:
        print(f"error: cannot write the metrics file {path}: {exc.strerror or exc}", file=err)
        return False
    return True


ON_FAILURE_TIMEOUT = 300
"""Seconds an ``--on-failure`` command may run before it is killed."""


def run_on_failure(command: str, report: Mapping[str, Any], err: IO[str]) -> bool:
    """Run ``command`` with ``/bin/sh -c`` and the JSON report on its standard input.

    Its output goes where ours goes (the journal under systemd). Returns whether it exited 0;
    a command that fails or hangs is reported on ``err``, never raised: the run's own exit
    status already says that it failed.
    """
    try:
        proc = subprocess.run(
            ["/bin/sh", "-c", command],
            input=json.dumps(report, indent=2).encode(),
            timeout=ON_FAILURE_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        print(f"error: the --on-failure command could not run to its end: {exc}", file=err)
        return False
    if proc.returncode != 0:
        print(f"error: the --on-failure command exited with status {proc.returncode}", file=err)
        return False
    return True


def _run_backup(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    if args.dry_run:
        return _run_plan(args, out)
    options = _backup_options(args)
    printer = EventPrinter(
        out,
        err,
        progress=err.isatty() and not args.json,
        quiet=args.quiet,
        lines=not args.json,
    )
    try:
        raw = _backup_json(**options, on_event=printer)
    except BaseException as exc:
        # The run did not happen: the metrics say so and keep each domain's last success.
        if args.metrics_file:
            _write_metrics(args.metrics_file, None, err)
        if args.on_failure and isinstance(exc, BackupError):
            printer.close()
            run_on_failure(args.on_failure, {"version": 1, "error": str(exc), "domains": []}, err)
        raise
    finally:
        printer.close()
    report = BackupReport.from_dict(raw)
    if args.json:
        _print_json(raw, out)
    else:
        printer.line(summary_line(report))
    status = exit_status(report)
    if args.legacy_exit_status and status == EXIT_FAILED:
        # The original's main.py ended with 0 whatever happened; units may rely on it.
        status = EXIT_OK
    if args.metrics_file and not _write_metrics(args.metrics_file, report, err):
        status = max(status, EXIT_FAILED)
    if args.on_failure and status != EXIT_OK:
        run_on_failure(args.on_failure, raw, err)
    return status


def _print_lines(lines: Sequence[str], out: IO[str]) -> None:
    for line in lines:
        print(line, file=out)
    out.flush()


def _run_restore(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    if args.define is not None:
        return _run_restore_define(args, out, err)
    if args.pool is not None:
        raise UsageError("--pool goes with --define (with --to, the target names its pool: rbd:POOL/IMAGE)")
    if args.allow_host_passthrough:
        raise UsageError("--allow-host-passthrough goes with --define (with --to, no domain is defined)")
    raw = _restore_json(args.domain, **_api_options(restore, args, restic=_restic_target(args)))
    report = RestoreReport.from_dict(raw)
    _print_lines([f"warning: {w}" for w in report.warnings], err)
    for skipped in report.skipped:
        print(f"Skipped: {skipped}", file=err)
    restic = args.restic_repo is not None
    return _print_report(raw, report, lambda r: [] if args.quiet else [format_restore(r, restic=restic)], args, out)


def _run_restore_define(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    if args.disk is not None:
        raise UsageError("--disk does not go with --define: every RBD disk of the backup is restored")
    if args.restic_repo is not None:
        raise UsageError(
            "--define restores from a backup repository (--repo), not from restic: restic keeps no domain XML"
        )
    if args.live:
        return _run_restore_live(args, out)
    raw = _restore_define_json(args.domain, **_api_options(restore_define, args, name=args.define))
    report = DefineReport.from_dict(raw)
    _print_lines([f"warning: {w}" for d in report.disks for w in d.warnings], err)
    if args.json:
        _print_json(raw, out)
    for stream, line in format_define(report, args.domain):
        if stream == "err":
            _print_lines([line], err)
        elif not args.json and not args.quiet:
            _print_lines([line], out)
    return exit_status(report)


def _run_restore_live(args: argparse.Namespace, out: IO[str]) -> int:
    if args.force:
        raise UsageError("--force does not go with --live: a live restore never replaces an image or a domain")
    report = restore_live(args.domain, **_api_options(restore_live, args, name=args.define))
    if args.json:
        _print_json(report.to_dict(), out)
    elif not args.quiet:
        disks = ", ".join(f"{d.disk} -> {d.target.removeprefix('rbd:')}" for d in report.disks) or "no disk"
        _print_lines(
            [
                f"Restored {report.name} ({report.uuid}) live from backup {report.backup_id} of {args.domain}: "
                f"running after {report.boot_seconds:.1f} s, on its own images after {report.total_seconds:.1f} s: "
                f"{disks}"
            ],
            out,
        )
    return EXIT_OK


def _with_metrics(
    path: str | None, render: Callable[[Any], str], run: Callable[[], tuple[int, Any]], err: IO[str]
) -> int:
    """Run a prune or verify (``run`` returns its exit status and report); write its metrics.

    With ``path``, a run that raised writes the metrics of a run that failed to start.
    """
    if path is None:
        return run()[0]
    try:
        status, report = run()
    except BaseException:
        _write_metrics_text(path, render(None), err)
        raise
    if not _write_metrics_text(path, render(report), err):
        status = max(status, EXIT_FAILED)
    return status


def _run_verify(args: argparse.Namespace, out: IO[str]) -> int:
    def run() -> tuple[int, VerifyReport]:
        raw = _verify_json(args.domain, **_api_options(verify, args))
        report = VerifyReport.from_dict(raw)
        status = _print_report(raw, report, lambda r: format_verify(r, quiet=args.quiet), args, out)
        return status, report

    def render(report: VerifyReport | None) -> str:
        return render_verify_metrics(report, now=time.time(), versions=_native.library_versions())

    return _with_metrics(args.metrics_file, render, run, sys.stderr)


def _run_prune(args: argparse.Namespace, out: IO[str]) -> int:
    options = _api_options(prune, args)
    keep = _keep_options(options)

    def run() -> tuple[int, PruneReport]:
        raw = _prune_json(args.domain, keep=keep, **options)
        report = PruneReport.from_dict(raw)
        return _print_report(raw, report, lambda r: format_prune(r, quiet=args.quiet), args, out), report

    def render(report: PruneReport | None) -> str:
        return render_prune_metrics(report, now=time.time(), versions=_native.library_versions())

    # A dry run removes nothing: it must not look like the last prune.
    return _with_metrics(None if args.dry_run else args.metrics_file, render, run, sys.stderr)


class Terminated(Exception):
    """SIGTERM or SIGHUP arrived: handled as Ctrl-C is (the run cancels and cleans up first)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_terminated(signum: int, _frame: object) -> None:
    raise Terminated(signum)


def _terminate_like_ctrl_c() -> dict[int, Any]:
    """Make SIGTERM and SIGHUP stop a run as Ctrl-C does.

    SIGTERM (systemd's stop, ``kill``) and SIGHUP (a closed terminal or ssh session) raise
    :class:`Terminated` in the main thread, which the core handles as it handles Ctrl-C:
    cancel, thaw, remove this run's snapshots, then return. Python's default would end the
    process at once, the thaw left to the watchdog and the snapshots to the next run.

    Returns the handlers replaced, for :func:`signal.signal` to put back.
    """
    replaced: dict[int, Any] = {}
    if threading.current_thread() is not threading.main_thread():
        return replaced  # only the main thread may set handlers; a caller's thread keeps its own
    for signum in (signal.SIGTERM, signal.SIGHUP):
        previous = signal.getsignal(signum)
        # SIG_IGN inherited (nohup) stays ignored, as a shell's job would.
        if previous is not signal.SIG_IGN:
            replaced[signum] = previous
            signal.signal(signum, _raise_terminated)
    return replaced


def format_orphan(orphan: OrphanThaw) -> str:
    """One line for ``thaw-orphans``."""
    pids = ", ".join(str(p) for p in orphan.pids)
    who = f"domain {orphan.domain} ({orphan.uuid}), left frozen by a run that died (pid {pids})"
    if orphan.outcome == "thawed":
        if orphan.filesystems == 0:
            return f"Checked {who}: it was not frozen any more"
        return f"Thawed {who}: {orphan.filesystems} filesystems"
    if orphan.outcome == "not_running":
        return f"Dropped the record of {who}: it does not run here any more"
    if orphan.outcome == "waiting":
        return f"Waiting with {who}: another run of this host holds a freeze of it now"
    return f"FAILED to thaw {who}: {orphan.error}"


def _run_thaw_orphans(args: argparse.Namespace, out: IO[str]) -> int:
    orphans = thaw_orphans()
    if args.json:
        _print_json([o.to_dict() for o in orphans], out)
    else:
        for orphan in orphans:
            if not args.quiet or orphan.outcome == "failed":
                print(format_orphan(orphan), file=out)
    return EXIT_FAILED if any(o.outcome == "failed" for o in orphans) else EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; return its exit status (argparse errors exit with 2 themselves)."""
    args = parse_args(argv)
    journal.install()  # before logging: its handler then writes through the journal's prefixes
    _configure_logging(args)
    replaced = _terminate_like_ctrl_c()
    try:
        return _run_command(args, argv)
    except Terminated as terminated:
        # Inside a core call, raised once the run has cancelled and cleaned up, as Ctrl-C is.
        print(f"terminated by {terminated}", file=sys.stderr)
        return 128 + terminated.signum
    finally:
        for signum, handler in replaced.items():
            signal.signal(signum, handler)


def _run_command(args: argparse.Namespace, argv: Sequence[str] | None) -> int:
    try:
        if args.command == "thaw-orphans":
            return _run_thaw_orphans(args, sys.stdout)
        config = find_config(args.config)
        if config is not None:
            kind = "the original tool's configuration" if config.legacy else "configuration"
            logging.getLogger(__name__).info("%s: %s", kind, config.path)
            args = parse_args(argv, config=config)
        if args.command == "plan":
            return _run_plan(args, sys.stdout)
        if args.command == "list":
            return _run_list(args, sys.stdout)
        if args.command == "restore":
            return _run_restore(args, sys.stdout, sys.stderr)
        if args.command == "verify":
            return _run_verify(args, sys.stdout)
        if args.command == "prune":
            return _run_prune(args, sys.stdout)
        if args.command == "rekey":
            return _run_rekey(args, sys.stdout)
        if args.command == "serve":
            return _run_serve(args, sys.stdout)
        if args.command == "mount":
            return _run_mount(args, sys.stdout)
        if args.command == "umount":
            return _run_umount(args, sys.stdout)
        return _run_backup(args, sys.stdout, sys.stderr)
    except (KeyboardInterrupt, CancelledError):
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BackupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return error_status(args.command, exc)
    except BrokenPipeError:
        # Whoever read our output went away (`| head`): nothing left to tell them. Point stdout
        # at /dev/null so the interpreter's final flush does not raise again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
