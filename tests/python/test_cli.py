"""The ``virt-rbd-backup`` command (python/virt_rbd_backup/cli.py) without the lab: flags and
their defaults, the original tool's output lines, the summary, exit statuses and ``--json``.

The core is replaced by a scripted stand-in that emits events and returns a report, so every
outcome can be produced on demand.
"""

from __future__ import annotations

import io
import json
from typing import Any

import pytest

import virt_rbd_backup
from virt_rbd_backup import BackupReport, cli

UUID_A = "6695eb01-f6a4-8304-79aa-97f2502e193f"
UUID_B = "0b5ac0ff-ee01-4f6e-9c41-5e3c0b1a7a2d"
UUID_C = "11111111-2222-3333-4444-555555555555"


def domain(name: str, uuid: str, status: str, error: str | None = None) -> dict[str, Any]:
    return {
        "name": name,
        "uuid": uuid,
        "status": status,
        "error": error,
        "warnings": [],
        "backup_id": "b1" if status == "succeeded" else None,
        "kind": "full" if status == "succeeded" else None,
        "path": f"/repo/{uuid}/b1" if status == "succeeded" else None,
        "consistency": "frozen" if status == "succeeded" else None,
        "freeze": {
            "attempted": False,
            "frozen_filesystems": 0,
            "window_ms": None,
            "frozen_at": None,
            "thawed_at": None,
        },
        "disks": [],
        "seconds": 1.0,
    }


def report(*domains: dict[str, Any]) -> dict[str, Any]:
    return {"version": 1, "started_at": 1.0, "finished_at": 2.0, "domains": list(domains)}


# -------------------------------------------------------------------------- parsing


def test_no_arguments_is_a_backup_with_the_original_defaults() -> None:
    args = cli.parse_args([])
    assert args.command == "backup"
    assert args.connect == "qemu:///system"
    assert args.domains == []
    assert args.workers == 4
    assert args.queue_depth == 8
    assert args.freeze == "auto"
    assert args.freeze_mountpoints == []
    assert args.repo == "/var/lib/virt-rbd-backup"
    assert not args.json
    assert args.verbose == 0
    assert not args.quiet


def test_options_without_a_subcommand_are_backup_options() -> None:
    args = cli.parse_args(["--domain", "web1", "--domain", "db1", "--workers", "2", "--repo", "/srv/b"])
    assert args.command == "backup"
    assert args.domains == ["web1", "db1"]
    assert args.workers == 2
    assert args.repo == "/srv/b"


def test_backup_subcommand_takes_every_option() -> None:
    args = cli.parse_args(
        [
            "backup",
            "--connect",
            "qemu+ssh://h/system",
            "--queue-depth",
            "16",
            "--freeze",
            "required",
            "--freeze-mountpoint",
            "/",
            "--freeze-mountpoint",
            "/var",
            "--json",
            "-vv",
        ]
    )
    assert args.connect == "qemu+ssh://h/system"
    assert args.queue_depth == 16
    assert args.freeze == "required"
    assert args.freeze_mountpoints == ["/", "/var"]
    assert args.json
    assert args.verbose == 2


def test_list_subcommand_defaults() -> None:
    args = cli.parse_args(["list"])
    assert args.command == "list"
    assert args.connect == "qemu:///system"
    assert args.repo is None
    assert not args.json


@pytest.mark.parametrize(
    "argv",
    [
        ["--workers", "0"],
        ["--workers", "two"],
        ["--queue-depth", "-1"],
        ["--freeze", "sometimes"],
        ["--no-such-flag"],
        ["-v", "-q"],
        ["list", "--workers", "2"],
    ],
)
def test_bad_flags_exit_with_status_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.parse_args(argv)
    assert exit_info.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_version_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.parse_args(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"virt-rbd-backup {virt_rbd_backup.__version__}"


# -------------------------------------------------------------------------- event lines


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        (
            {"event": "disk_skipped", "domain": "web1", "uuid": UUID_A, "target": "hdc", "reason": "not_network"},
            ("out", "Ignoring non-network disk for domain: web1"),
        ),
        (
            {"event": "disk_skipped", "domain": "web1", "uuid": UUID_A, "target": "vdb", "reason": "not_rbd"},
            ("out", "Ignoring non-RBD network disk for domain: web1"),
        ),
        (
            {"event": "domain_started", "domain": "web1", "uuid": UUID_A, "images": 2},
            ("out", f"Processing 2 images for domain {UUID_A}"),
        ),
        (
            {"event": "domain_finished", "report": domain("web1", UUID_A, "succeeded")},
            ("out", f"Backup successful: No error occurred for domain {UUID_A}"),
        ),
        (
            {"event": "domain_finished", "report": domain("db1", UUID_B, "failed", "rbd_open failed for rbd/db1")},
            ("out", "Backup failed: rbd_open failed for rbd/db1"),
        ),
        (
            {"event": "domain_warning", "domain": "web1", "uuid": UUID_A, "message": "agent did not answer"},
            ("err", "warning: domain web1: agent did not answer"),
        ),
    ],
)
def test_each_event_prints_the_original_line(event: dict[str, Any], expected: tuple[str, str]) -> None:
    assert cli.format_event(event) == expected


@pytest.mark.parametrize(
    "event",
    [
        {"event": "disk_progress", "domain": "web1", "uuid": UUID_A, "target": "vda", "done": 1, "total": 2},
        {"event": "domain_finished", "report": domain("local", UUID_C, "skipped")},
        {"event": "an_event_from_the_future", "domain": "web1"},
    ],
)
def test_events_without_a_line(event: dict[str, Any]) -> None:
    assert cli.format_event(event) is None


def run_printer(events: list[dict[str, Any]], **kwargs: Any) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    printer = cli.EventPrinter(out, err, **kwargs)
    for event in events:
        printer(event)
    printer.close()
    return out.getvalue(), err.getvalue()


RUN_EVENTS: list[dict[str, Any]] = [
    {"event": "disk_skipped", "domain": "web1", "uuid": UUID_A, "target": "hdc", "reason": "not_network"},
    {"event": "domain_started", "domain": "web1", "uuid": UUID_A, "images": 1},
    {"event": "domain_warning", "domain": "web1", "uuid": UUID_A, "message": "agent did not answer"},
    {"event": "disk_progress", "domain": "web1", "uuid": UUID_A, "target": "vda", "done": 5, "total": 10},
    {"event": "domain_finished", "report": domain("web1", UUID_A, "succeeded")},
    {"event": "domain_started", "domain": "db1", "uuid": UUID_B, "images": 3},
    {"event": "domain_finished", "report": domain("db1", UUID_B, "failed", "cannot freeze")},
]


def test_printer_writes_the_original_lines_in_event_order_and_warnings_to_stderr() -> None:
    out, err = run_printer(RUN_EVENTS)
    assert out.splitlines() == [
        "Ignoring non-network disk for domain: web1",
        f"Processing 1 images for domain {UUID_A}",
        f"Backup successful: No error occurred for domain {UUID_A}",
        f"Processing 3 images for domain {UUID_B}",
        "Backup failed: cannot freeze",
    ]
    assert err == "warning: domain web1: agent did not answer\n"


def test_printer_draws_progress_only_when_asked() -> None:
    _, err = run_printer(RUN_EVENTS, progress=True)
    assert "web1 vda: 5 B / 10 B 50%" in err
    _, err = run_printer(RUN_EVENTS, progress=False)
    assert "vda" not in err


def test_quiet_printer_keeps_only_failures() -> None:
    out, err = run_printer(RUN_EVENTS, quiet=True, progress=True)
    assert out.splitlines() == ["Backup failed: cannot freeze"]
    assert err == ""


def test_json_printer_prints_no_line_on_stdout_but_warnings() -> None:
    out, err = run_printer(RUN_EVENTS, lines=False)
    assert out == ""
    assert err == "warning: domain web1: agent did not answer\n"


# -------------------------------------------------------------------------- summary and exit


def test_summary_line() -> None:
    r = BackupReport.from_dict(
        report(
            domain("a", UUID_A, "succeeded"),
            domain("b", UUID_B, "succeeded"),
            domain("c", UUID_C, "failed", "x"),
            domain("d", UUID_C, "skipped"),
        )
    )
    assert cli.summary_line(r) == "Summary: 2 succeeded, 1 failed, 1 skipped"


@pytest.mark.parametrize(
    ("statuses", "expected"),
    [
        ([], 0),
        (["succeeded"], 0),
        (["succeeded", "skipped"], 0),
        (["skipped"], 0),
        (["succeeded", "failed"], 1),
        (["failed"], 1),
    ],
)
def test_exit_status_from_a_report(statuses: list[str], expected: int) -> None:
    data = report(*(domain(f"d{i}", UUID_A, s, "e" if s == "failed" else None) for i, s in enumerate(statuses)))
    assert cli.exit_status(BackupReport.from_dict(data)) == expected


# -------------------------------------------------------------------------- whole runs


@pytest.fixture
def fake_core(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Replace the core: `state["events"]` are emitted, then `state["result"]` is returned
    (or raised, if an exception); `state["options"]` records what the CLI asked for."""
    state: dict[str, Any] = {"events": [], "result": report()}

    def backup_json(**options: Any) -> dict[str, Any]:
        on_event = options.pop("on_event")
        state["options"] = options
        for event in state["events"]:
            on_event(event)
        if isinstance(state["result"], BaseException):
            raise state["result"]
        return state["result"]  # type: ignore[no-any-return]

    monkeypatch.setattr(cli, "_backup_json", backup_json)
    return state


def test_bare_command_runs_a_backup_with_the_defaults(
    fake_core: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main([]) == 0
    assert fake_core["options"] == {
        "connect": "qemu:///system",
        "domains": [],
        "workers": 4,
        "queue_depth": 8,
        "freeze": "auto",
        "freeze_mountpoints": [],
        "repo": "/var/lib/virt-rbd-backup",
        "mode": "auto",
        "full_every": None,
    }
    assert capsys.readouterr().out == "Summary: 0 succeeded, 0 failed, 0 skipped\n"


def test_a_run_prints_lines_as_events_arrive_then_the_summary(
    fake_core: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    fake_core["events"] = RUN_EVENTS
    fake_core["result"] = report(domain("web1", UUID_A, "succeeded"), domain("db1", UUID_B, "failed", "cannot freeze"))
    assert cli.main(["--domain", "web1", "--domain", "db1"]) == 1
    captured = capsys.readouterr()
    assert captured.out.splitlines() == [
        "Ignoring non-network disk for domain: web1",
        f"Processing 1 images for domain {UUID_A}",
        f"Backup successful: No error occurred for domain {UUID_A}",
        f"Processing 3 images for domain {UUID_B}",
        "Backup failed: cannot freeze",
        "Summary: 1 succeeded, 1 failed, 0 skipped",
    ]
    assert "warning: domain web1: agent did not answer" in captured.err
    # stderr is no terminal here: no progress drawing.
    assert "\r" not in captured.err


def test_json_prints_only_the_cores_report(fake_core: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    fake_core["events"] = RUN_EVENTS
    core_report = report(domain("web1", UUID_A, "succeeded"))
    core_report["field_from_a_newer_core"] = {"kept": True}
    fake_core["result"] = core_report
    assert cli.main(["--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out) == core_report
    assert "Summary" not in captured.out


@pytest.mark.parametrize(
    "error",
    [
        virt_rbd_backup.UsageError("invalid option: workers must be between 1 and 64"),
        virt_rbd_backup.LibvirtError("cannot connect to libvirt at qemu:///system: no socket"),
        virt_rbd_backup.RepositoryError("/srv/b is not a repository"),
        virt_rbd_backup.BackupError("internal error: something"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_errors_that_stop_the_run_exit_with_status_2(
    error: Exception, fake_core: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    fake_core["result"] = error
    assert cli.main([]) == 2
    captured = capsys.readouterr()
    assert captured.err == f"error: {error}\n"
    assert captured.out == ""


@pytest.mark.parametrize("interruption", [KeyboardInterrupt(), virt_rbd_backup.CancelledError("cancelled")])
def test_interrupted_run_exits_with_status_130(
    interruption: BaseException, fake_core: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    fake_core["result"] = interruption
    assert cli.main([]) == 130
    assert "interrupted" in capsys.readouterr().err


def test_list_prints_domains_and_their_disks(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    listing = {
        "name": "web1",
        "uuid": UUID_A,
        "active": True,
        "rbd_disks": [
            {
                "target": "vda",
                "pool": "rbd",
                "namespace": None,
                "image": "web1-root",
                "hosts": [],
                "config_file": None,
                "auth": None,
                "device": "disk",
                "readonly": False,
            }
        ],
        "skipped_disks": [{"target": "hdc", "reason": "not_network"}],
        "error": None,
    }
    monkeypatch.setattr(cli, "_list_domains_json", lambda connect, domains: [listing])
    assert cli.main(["list"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"web1 {UUID_A} (running)",
        "  vda: rbd rbd/web1-root",
        "  hdc: skipped, not a network disk",
    ]
    assert cli.main(["list", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == [listing]


def test_list_with_repo_lists_backups_filtered_by_domain(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    backups: list[dict[str, Any]] = [
        {
            "domain": name,
            "uuid": uuid,
            "backup_id": "b1",
            "kind": "full",
            "path": f"/repo/{uuid}/b1",
            "completed_at": 0.0,
            "consistency": "frozen",
            "disks": [],
            "error": None,
        }
        for name, uuid in (("web1", UUID_A), ("db1", UUID_B))
    ]
    monkeypatch.setattr(cli, "_list_backups_json", lambda repo, domain: backups)
    assert cli.main(["list", "--repo", "/repo", "--domain", "db1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == [backups[1]]
