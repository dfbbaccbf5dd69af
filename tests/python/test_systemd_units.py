"""The shipped systemd units (contrib/systemd): systemd itself accepts them, and what they run
is a command line this version of the CLI parses."""

from __future__ import annotations

import configparser
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from virt_rbd_backup import cli

UNITS = Path(__file__).resolve().parents[2] / "contrib" / "systemd"
SERVICES = sorted(UNITS.glob("*.service"))
TIMERS = sorted(UNITS.glob("*.timer"))


def unit(path: Path) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(path)
    return parser


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
@pytest.mark.parametrize("path", SERVICES + TIMERS, ids=lambda p: p.name)
def test_systemd_analyze_verify_finds_nothing(path: Path) -> None:
    # Unknown keys are only warnings (exit 0): any output at all is a finding.
    proc = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(path)], capture_output=True, text=True, check=False
    )
    assert (proc.returncode, proc.stdout + proc.stderr) == (0, "")


@pytest.mark.parametrize("path", SERVICES, ids=lambda p: p.name)
def test_each_command_of_a_service_parses(path: Path) -> None:
    service = unit(path)["Service"]
    commands = [service[key] for key in ("ExecStart", "ExecStopPost") if key in service]
    assert commands
    for command in commands:
        argv = shlex.split(command)
        assert argv[0] == "/usr/local/bin/virt-rbd-backup"
        cli.parse_args(argv[1:])  # exits 2 on an unknown flag


def test_every_service_has_its_timer() -> None:
    assert [p.stem for p in SERVICES] == [p.stem for p in TIMERS]
    for timer in TIMERS:
        assert unit(timer)["Timer"]["Persistent"] == "true"


def test_the_backup_unit_thaws_orphans_after_a_stop() -> None:
    service = unit(UNITS / "virt-rbd-backup.service")["Service"]
    assert service["ExecStopPost"] == "/usr/local/bin/virt-rbd-backup thaw-orphans"
    # The records live in the runtime folder; it must outlive the stop for ExecStopPost.
    assert service["RuntimeDirectory"] == "virt-rbd-backup"
    assert service["RuntimeDirectoryPreserve"] == "yes"
