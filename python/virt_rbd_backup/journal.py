"""Syslog priorities for the lines we print, when systemd's journal reads them.

Under systemd, stdout and stderr are streams into journald, which stores every line at the
unit's default priority (info) unless the line starts with ``<N>`` (``SyslogLevelPrefix=``, on
by default): then ``N`` is its priority. systemd says a process is talking to the journal by
setting ``JOURNAL_STREAM=DEVICE:INODE`` of that stream; the prefixes are written only when
stdout or stderr is that very stream (a pipe into ``tee`` or a file gets plain lines, even
from a process started by systemd).

So ``journalctl -u virt-rbd-backup -p warning`` shows exactly the warnings (priority 4) and
failures (3): ``Backup failed: ...``, ``error: ...``, ``FAILED``/``CORRUPT`` lines, and log
records at WARNING and above; everything else (``Processing ...``, ``Backup successful``, the
summary, ``Ignoring non-network disk ...``) is info (6), and a stop by a signal is a notice (5).
"""

from __future__ import annotations

import io
import os
import sys
from typing import IO, Literal

__all__ = ["PriorityStream", "install", "journal_stream", "priority"]

Stream = Literal["out", "err"]

ERR, WARNING, NOTICE, INFO, DEBUG = 3, 4, 5, 6, 7

# Failures: a backup's, an error that stopped a command, verify's findings, prune's domains
# that failed or had errors, a thaw-orphans that could not thaw, a crash.
_FAILURE_PREFIXES = ("Backup failed", "error:", "error ", "failed ", "FAILED", "CORRUPT", "Traceback")
_WARNING_PREFIXES = ("skipped ",)
_LOG_LEVELS = (
    (": CRITICAL: ", ERR),
    (": ERROR: ", ERR),
    (": WARNING: ", WARNING),
    (": INFO: ", INFO),
    (": DEBUG: ", DEBUG),
)
_NOTICE_PREFIXES = ("interrupted", "terminated by")


def priority(line: str, stream: Stream) -> int:
    """Return the syslog priority of one line we print on ``stream``."""
    if line.startswith(_FAILURE_PREFIXES):
        return ERR
    for marker, level in _LOG_LEVELS:
        if marker in line:
            return level
    if line.startswith(_NOTICE_PREFIXES):
        return NOTICE
    if line.startswith(_WARNING_PREFIXES):
        return WARNING
    # stderr carries warnings (and log records, matched above); stdout the command's own lines.
    return WARNING if stream == "err" else INFO


def journal_stream(stream: IO[str]) -> bool:
    """Whether ``stream`` is the stream ``JOURNAL_STREAM`` names (systemd connected it to journald)."""
    wanted = os.environ.get("JOURNAL_STREAM", "")
    device, _, inode = wanted.partition(":")
    try:
        status = os.fstat(stream.fileno())
    except (OSError, ValueError, io.UnsupportedOperation):
        return False
    return f"{status.st_dev}:{status.st_ino}" == f"{device}:{inode}" and bool(device and inode)


class PriorityStream(io.TextIOBase):
    """A text stream that writes ``<N>`` before each line, ``N`` from :func:`priority`.

    A partial line is held until its newline (or a flush), so the priority is chosen from the
    line's beginning even when it is written in pieces.
    """

    def __init__(self, inner: IO[str], stream: Stream) -> None:
        """Wrap ``inner``, the process's stdout (``stream="out"``) or stderr (``"err"``)."""
        super().__init__()
        self._inner = inner
        self._stream: Stream = stream
        self._pending = ""
        self._mid_line = False  # a flushed partial line was written with its prefix

    def write(self, text: str) -> int:
        """Write ``text``; complete lines go out with their priority prefix."""
        self._pending += text
        while "\n" in self._pending:
            line, self._pending = self._pending.split("\n", 1)
            self._emit(line + "\n")
            self._mid_line = False
        return len(text)

    def _emit(self, text: str) -> None:
        if self._mid_line:
            self._inner.write(text)
        else:
            self._inner.write(f"<{priority(text, self._stream)}>{text}")

    def flush(self) -> None:
        """Write a held partial line too, then flush the stream below."""
        if self._pending:
            self._emit(self._pending)
            self._pending = ""
            self._mid_line = True
        self._inner.flush()

    def fileno(self) -> int:
        """The file descriptor below."""
        return self._inner.fileno()

    def isatty(self) -> bool:
        """Never a terminal: the journal is on the other end."""
        return False

    def writable(self) -> bool:
        """Always."""
        return True


def install() -> None:
    """Wrap ``sys.stdout`` and ``sys.stderr`` in :class:`PriorityStream` where each is the journal's stream.

    Call before logging is configured, so its handler writes through the wrapper.
    """
    if not os.environ.get("JOURNAL_STREAM"):
        return
    if journal_stream(sys.stdout) and not isinstance(sys.stdout, PriorityStream):
        sys.stdout = PriorityStream(sys.stdout, "out")
    if journal_stream(sys.stderr) and not isinstance(sys.stderr, PriorityStream):
        sys.stderr = PriorityStream(sys.stderr, "err")
