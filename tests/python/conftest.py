"""Fixtures shared by the tests: an empty repository for the unit tests that run the real engine
without the lab, and the `fault` record of the fault tests with the `--fault-report` table."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

import virt_rbd_backup
from lab_support import FaultRecord

# The Ctrl-C tests send SIGINT to the tool. A suite started in the background by a
# non-interactive shell (`cmd &`) inherits SIGINT ignored, and an ignored signal stays ignored
# in every child; Python's own handler here is reset to the default in children instead.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture
def empty_repo(tmp_path: Path) -> Path:
    """A repository without backups, made by the engine (a backup of libvirt's test driver,
    whose only domain has no RBD disk)."""
    repo = tmp_path / "repo"
    report = virt_rbd_backup.backup(connect="test:///default", repo=repo)
    assert [d.status for d in report.domains] == ["skipped"]
    return repo


@pytest.fixture
def fault(request: pytest.FixtureRequest) -> Iterator[FaultRecord]:
    """Filled by a fault test with what it injected and measured; kept in the test's
    user_properties (also in --junitxml), shown by --fault-report."""
    record = FaultRecord()
    yield record
    request.node.user_properties.append(("fault", asdict(record)))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--fault-report",
        action="store_true",
        help="after the run, print a table of the fault tests: injected, outcome, leaks, data lost",
    )


_FAULT_RESULTS: dict[str, dict[str, Any]] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    entry = _FAULT_RESULTS.setdefault(report.nodeid, {"test": "passed"})
    if report.failed:
        entry["test"] = "FAILED" if report.when == "call" else f"ERROR ({report.when})"
    elif report.skipped:
        entry["test"] = "skipped"
    for name, value in report.user_properties:
        if name == "fault":
            entry["fault"] = value


def _cell(value: Any, limit: int) -> str:
    text = "-" if value is None or value == "" else " ".join(str(value).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    """With --fault-report: one row per test that used the `fault` fixture, from what it recorded."""
    if not config.getoption("--fault-report"):
        return
    header = ("case", "test", "injected", "outcome", "leaks", "frozen", "data lost")
    limits = (110, 12, 80, 110, 5, 6, 40)
    rows = []
    for nodeid, entry in _FAULT_RESULTS.items():
        if "fault" not in entry:
            continue
        f = entry["fault"]
        case = nodeid.split("::", 1)[-1].removeprefix("test_")
        values = (case, entry["test"], f["injected"], f["outcome"], f["leaks"], f.get("frozen"), f["data_lost"])
        rows.append(tuple(_cell(v, n) for v, n in zip(values, limits, strict=True)))
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(header)]
    write = terminalreporter.write_line
    terminalreporter.section("fault report")
    for row in [header, tuple("-" * w for w in widths), *rows]:
        write("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    measured = [e["fault"] for e in _FAULT_RESULTS.values() if "fault" in e and e["fault"]["leaks"] is not None]
    lost = [f for f in measured if not str(f["data_lost"]).startswith("none")]
    passed = sum(1 for e in _FAULT_RESULTS.values() if "fault" in e and e["test"] == "passed")
    write(
        f"{len(rows)} fault cases, {passed} passed; leaked snapshots: {sum(f['leaks'] for f in measured)} "
        f"(measured in {len(measured)}); guests left frozen: {sum(f.get('frozen') or 0 for f in measured)}; "
        f"cases with data lost: {len(lost)}"
    )
