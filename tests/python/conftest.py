"""Fixtures shared by the tests: an empty repository for the unit tests that run the real engine
without the lab, and the `fault` record of the fault tests with the `--fault-report` table."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

import virt_rbd_backup
from lab_support import FaultRecord


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


def _cell(value: Any, width: int) -> str:
    text = "-" if value is None or value == "" else " ".join(str(value).split())
    return text if len(text) <= width else text[: width - 3] + "..."


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    if not config.getoption("--fault-report"):
        return
    rows = [(nodeid.split("::", 1)[-1], e["test"], e["fault"]) for nodeid, e in _FAULT_RESULTS.items() if "fault" in e]
    widths = (62, 8, 60, 70, 5, 32)
    header = ("case", "test", "injected", "outcome", "leaks", "data lost")
    write = terminalreporter.write_line
    terminalreporter.section("fault report")
    write("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    for case, test, f in rows:
        cells = (case, test, f["injected"], f["outcome"], f["leaks"], f["data_lost"])
        write("  ".join(_cell(c, w).ljust(w) for c, w in zip(cells, widths, strict=True)))
    measured = [f for _, _, f in rows if f["leaks"] is not None]
    leaks = sum(f["leaks"] for f in measured)
    lost = [f for f in measured if not str(f["data_lost"]).startswith("none")]
    write(
        f"{len(rows)} fault cases, {sum(t == 'passed' for _, t, _ in rows)} passed; "
        f"leaked snapshots: {leaks} (in {len(measured)} measured); cases with data lost: {len(lost)}"
    )
