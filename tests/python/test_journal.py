"""Syslog priority prefixes for journald (python/virt_rbd_backup/journal.py): which line gets
which priority, when the prefixes are written at all, and a real CLI run whose stderr is the
stream JOURNAL_STREAM names."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from virt_rbd_backup import journal


@pytest.mark.parametrize(
    ("line", "stream", "expected"),
    [
        ("Backup failed: domain web (uuid): boom", "out", 3),
        ("error: cannot write the metrics file /x: Permission denied", "err", 3),
        ("CORRUPT backup 20261126T100000Z disk vda: block 3 differs", "out", 3),
        ("error web: cannot remove /r/x", "out", 3),
        ("failed web: manifest unreadable", "out", 3),
        ("FAILED to thaw domain web (u), left frozen by a run that died (pid 7): boom", "out", 3),
        ("virt_rbd_backup.engine: ERROR: thaw failed", "err", 3),
        ("virt_rbd_backup.engine: WARNING: cannot remove snapshot", "err", 4),
        ("web: the guest agent does not answer; taking crash-consistent snapshots", "err", 4),
        ("skipped web: no keep option matched", "out", 4),
        ("terminated by SIGTERM", "err", 5),
        ("interrupted", "err", 5),
        ("Processing 2 images for domain 1234", "out", 6),
        ("Backup successful: No error occurred for domain 1234", "out", 6),
        ("Ignoring non-network disk for domain: web", "out", 6),
        ("Summary: 2 succeeded, 1 failed, 0 skipped", "out", 6),
        ("virt_rbd_backup.engine: INFO: connected", "err", 6),
        ("virt_rbd_backup.engine: DEBUG: read 4 MiB", "err", 7),
    ],
)
def test_priority_of_each_kind_of_line(line: str, stream: journal.Stream, expected: int) -> None:
    assert journal.priority(line, stream) == expected


def test_lines_written_in_pieces_get_one_prefix_from_their_beginning() -> None:
    inner = io.StringIO()
    out = journal.PriorityStream(inner, "out")
    out.write("Backup ")
    out.write("failed: boom\nProcessing 1 images")
    out.write(" for domain u\n")
    out.write("Summ")
    out.flush()
    out.write("ary: 1 succeeded\n")
    assert inner.getvalue() == "<3>Backup failed: boom\n<6>Processing 1 images for domain u\n<6>Summary: 1 succeeded\n"


def test_prefixes_only_for_the_stream_journal_stream_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with open(tmp_path / "a", "w") as a, open(tmp_path / "b", "w") as b:
        st = os.fstat(a.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        assert journal.journal_stream(a)
        assert not journal.journal_stream(b)
        monkeypatch.setenv("JOURNAL_STREAM", "")
        assert not journal.journal_stream(a)


def cli_into_pipe(args: list[str], *, journal_stream: bool) -> str:
    """Runs the CLI with stdout and stderr on one pipe, as systemd connects a unit's to journald."""
    read_end, write_end = os.pipe()
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    if journal_stream:
        st = os.fstat(write_end)
        env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "virt_rbd_backup", *args], stdout=write_end, stderr=write_end, env=env
    )
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        text = pipe.read()
    proc.wait(timeout=60)
    return text


def test_a_cli_run_under_journald_prefixes_every_line(tmp_path: Path) -> None:
    args = ["backup", "--connect", "test:///default", "--repo", str(tmp_path / "r"), "--domain", "missing-domain"]
    lines = cli_into_pipe(args, journal_stream=True).splitlines()
    assert lines, "the run says why it failed"
    assert all(line[:3] in ("<3>", "<4>", "<5>", "<6>", "<7>") for line in lines), lines
    assert any(line.startswith("<3>error: ") and "missing-domain" in line for line in lines), lines
    plain = cli_into_pipe(args, journal_stream=False).splitlines()
    assert [line[3:] for line in lines] == plain
