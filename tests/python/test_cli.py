"""The ``virt-rbd-backup`` command (python/virt_rbd_backup/cli.py) without the lab: flags and
their defaults, the original tool's output lines, the summary, the lines of restore, verify and
prune, exit statuses and ``--json``.

The core is replaced by a scripted stand-in that emits events and returns a report, so every
outcome can be produced on demand.
"""

from __future__ import annotations

import ctypes.util
import io
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

import virt_rbd_backup
from virt_rbd_backup import BackupReport, DefineReport, PruneReport, RestoreReport, VerifyReport, cli, config

UUID_A = "6695eb01-f6a4-8304-79aa-97f2502e193f"
UUID_B = "0b5ac0ff-ee01-4f6e-9c41-5e3c0b1a7a2d"
UUID_C = "11111111-2222-3333-4444-555555555555"


@pytest.fixture(autouse=True)
def no_configuration_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Runs see no configuration file: none in /etc, no config.py in the current directory."""
    monkeypatch.setattr(config, "DEFAULT_CONFIG", tmp_path / "no-such-config.toml")
    monkeypatch.chdir(tmp_path)


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


def test_backup_mode_and_full_every() -> None:
    args = cli.parse_args([])
    assert (args.mode, args.full_every) == ("auto", None)
    args = cli.parse_args(["backup", "--mode", "full", "--full-every", "7"])
    assert (args.mode, args.full_every) == ("full", 7)
    assert cli.parse_args(["--mode", "auto"]).mode == "auto"


@pytest.mark.parametrize("command", ["backup", "restore", "verify", "prune"])
def test_repo_defaults_to_var_lib_everywhere(command: str) -> None:
    extra = {"restore": ["web1", "--to", "/tmp/x.raw"], "prune": ["--keep-last", "1"]}.get(command, [])
    assert cli.parse_args([command, *extra]).repo == "/var/lib/virt-rbd-backup"


def test_restore_subcommand_defaults() -> None:
    args = cli.parse_args(["restore", "web1", "--to", "rbd:rbd/web1-root"])
    assert args.command == "restore"
    assert args.domain == "web1"
    assert args.to == "rbd:rbd/web1-root"
    assert args.disk is None
    assert args.backup is None
    assert not args.force
    assert args.ceph_conf is None
    assert args.ceph_user is None
    assert args.connect == "qemu:///system"
    assert not args.json


def test_restore_subcommand_takes_every_option() -> None:
    args = cli.parse_args(
        [
            "restore",
            UUID_A,
            "--to",
            "rbd:rbd/tenant/web1-root",
            "--disk",
            "vdb",
            "--backup",
            "latest",
            "--force",
            "--ceph-conf",
            "/etc/ceph/backup.conf",
            "--ceph-user",
            "backup",
            "--connect",
            "qemu+ssh://h/system",
            "--repo",
            "/srv/b",
            "--json",
        ]
    )
    assert (args.domain, args.to, args.disk, args.backup, args.force) == (
        UUID_A,
        "rbd:rbd/tenant/web1-root",
        "vdb",
        "latest",
        True,
    )
    assert (args.ceph_conf, args.ceph_user, args.connect, args.repo, args.json) == (
        "/etc/ceph/backup.conf",
        "backup",
        "qemu+ssh://h/system",
        "/srv/b",
        True,
    )


def test_verify_subcommand() -> None:
    args = cli.parse_args(["verify"])
    assert (args.command, args.domain, args.backup, args.json) == ("verify", None, None, False)
    args = cli.parse_args(["verify", "web1", "--backup", "20261126T100000.000Z", "--repo", "/srv/b", "--json"])
    assert (args.domain, args.backup, args.repo, args.json) == ("web1", "20261126T100000.000Z", "/srv/b", True)


def test_prune_subcommand_takes_every_keep_option() -> None:
    args = cli.parse_args(
        [
            "prune",
            "web1",
            "--keep-last",
            "1",
            "--keep-hourly",
            "2",
            "--keep-daily",
            "3",
            "--keep-weekly",
            "4",
            "--keep-monthly",
            "5",
            "--keep-yearly",
            "6",
            "--keep-within",
            "7d",
            "--dry-run",
        ]
    )
    assert args.domain == "web1"
    assert [args.keep_last, args.keep_hourly, args.keep_daily, args.keep_weekly] == [1, 2, 3, 4]
    assert [args.keep_monthly, args.keep_yearly, args.keep_within] == [5, 6, 7 * 86400]
    assert args.dry_run


def test_prune_subcommand_defaults() -> None:
    # No keep option parses: refusing it is the core's decision (one message, one place).
    args = cli.parse_args(["prune"])
    assert args.domain is None
    assert [args.keep_last, args.keep_daily, args.keep_within] == [None, None, None]
    assert not args.dry_run


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("90min", 5400), ("12h", 43200), ("7d", 604800), ("2w", 1209600), ("1w3d12h", 907200), ("0d", 0)],
)
def test_durations(text: str, seconds: int) -> None:
    assert virt_rbd_backup.parse_duration(text) == seconds
    assert cli.parse_args(["prune", "--keep-within", text]).keep_within == seconds


@pytest.mark.parametrize("text", ["", "7", "d", "7D", "7 d", "-1d", "1.5d", "6m", "1y", "7d12"])
def test_bad_durations_are_usage_errors(text: str) -> None:
    with pytest.raises(virt_rbd_backup.UsageError, match="bad duration"):
        virt_rbd_backup.parse_duration(text)


def test_month_suffix_is_refused_with_a_hint(capsys: pytest.CaptureFixture[str]) -> None:
    # restic reads "6m" as six months, other tools as six minutes: refused rather than guessed.
    with pytest.raises(SystemExit) as exit_info:
        cli.parse_args(["prune", "--keep-within", "6m"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--keep-within" in err
    assert "give days" in err


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
        ["--mode", "incremental"],
        ["--full-every", "0"],
        ["--full-every", "x"],
        ["restore", "web1"],
        ["restore", "--to", "/tmp/x.raw"],
        ["restore", "web1", "--to", "/tmp/x.raw", "--domain", "db1"],
        ["restore", "web1", "--to", "/tmp/x.raw", "--keep-last", "1"],
        ["verify", "web1", "db1"],
        ["verify", "--dry-run"],
        ["prune", "--keep-daily", "0"],
        ["prune", "--keep-last", "-1"],
        ["prune", "--keep-weekly", "many"],
        ["prune", "--keep-within", "soon"],
        ["prune", "--keep-last", "1", "--force"],
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
    line = capsys.readouterr().out.strip()
    # The libraries actually loaded, compared with what the dynamic loader resolves them to.
    match = re.fullmatch(
        rf"virt-rbd-backup {re.escape(virt_rbd_backup.__version__)} "
        r"\(librbd (\d+)\.\d+\.\d+, librados (\d+)\.\d+\.\d+, libvirt (\d+\.\d+\.\d+)\)",
        line,
    )
    assert match, line
    # librbd's API major is its soname's (1); librados' API (3.x) and soname (2) differ.
    librbd_so = ctypes.util.find_library("rbd")
    assert librbd_so == f"librbd.so.{match.group(1)}", librbd_so
    virsh = subprocess.run(["virsh", "--version"], capture_output=True, text=True, check=False)
    if virsh.returncode == 0:
        assert virsh.stdout.strip() == match.group(3)


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
            {"event": "disk_skipped", "domain": "web1", "uuid": UUID_A, "target": "vdc", "reason": "rbd_snapshot"},
            ("out", "Ignoring RBD snapshot disk for domain: web1"),
        ),
        (
            {"event": "disk_skipped", "domain": "web1", "uuid": UUID_A, "target": "vdd", "reason": "from_the_future"},
            ("out", "Ignoring disk vdd (from_the_future) for domain: web1"),
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
            ("out", f"Backup failed: domain {UUID_B} (db1): rbd_open failed for rbd/db1"),
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


def test_a_domain_skipped_because_another_host_holds_it_prints_why() -> None:
    line = f"Skipping domain db1 ({UUID_B}): shut off here but its image rbd/db1 is open by another client"
    report = {**domain("db1", UUID_B, "skipped"), "skip_reason": line}
    assert cli.format_event({"event": "domain_finished", "report": report}) == ("out", line)


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
        f"Backup failed: domain {UUID_B} (db1): cannot freeze",
    ]
    assert err == "warning: domain web1: agent did not answer\n"


def test_printer_draws_progress_only_when_asked() -> None:
    _, err = run_printer(RUN_EVENTS, progress=True)
    assert "web1 vda: 5 B / 10 B 50%" in err
    _, err = run_printer(RUN_EVENTS, progress=False)
    assert "vda" not in err


def test_quiet_printer_keeps_only_failures() -> None:
    out, err = run_printer(RUN_EVENTS, quiet=True, progress=True)
    assert out.splitlines() == [f"Backup failed: domain {UUID_B} (db1): cannot freeze"]
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
        "consistency": "auto",
        "repo": "/var/lib/virt-rbd-backup",
        "mode": "auto",
        "full_every": None,
        "agent_timeout": 30,
        "freeze_timeout": 60,
        "ceph_timeout": 60,
        "compress": None,
        "bwlimit": None,
        "restic": None,
        "access": None,
    }
    assert capsys.readouterr().out == "Summary: 0 succeeded, 0 failed, 0 skipped\n"


def test_repository_access_options_reach_the_core_as_one_value(fake_core: dict[str, Any]) -> None:
    argv = ["backup", "--repo", "s3://vrb/hv1", "--s3-endpoint", "https://rgw:7443", "--s3-region", "default"]
    argv += ["--s3-credentials", "/etc/vrb/s3.cred", "--s3-ca-file", "/etc/vrb/ca.pem", "--repo-key-file", "/etc/vrb/k"]
    assert cli.main(argv) == 0
    access = fake_core["options"]["access"]
    assert access == virt_rbd_backup.RepoAccess(
        key_file="/etc/vrb/k",
        s3_endpoint="https://rgw:7443",
        s3_region="default",
        s3_credentials="/etc/vrb/s3.cred",
        s3_ca_file="/etc/vrb/ca.pem",
    )
    assert access.to_dict() == {
        "key_file": "/etc/vrb/k",
        "s3_endpoint": "https://rgw:7443",
        "s3_region": "default",
        "s3_credentials": "/etc/vrb/s3.cred",
        "s3_ca_file": "/etc/vrb/ca.pem",
    }
    assert fake_core["options"]["repo"] == "s3://vrb/hv1"


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
        f"Backup failed: domain {UUID_B} (db1): cannot freeze",
        "Summary: 1 succeeded, 1 failed, 0 skipped",
    ]
    assert "warning: domain web1: agent did not answer" in captured.err
    # stderr is no terminal here: no progress drawing.
    assert "\r" not in captured.err


def test_legacy_exit_status_exits_0_with_a_failed_domain_and_still_prints_the_failed_line(
    fake_core: dict[str, Any], capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    fake_core["events"] = RUN_EVENTS
    fake_core["result"] = report(domain("web1", UUID_A, "succeeded"), domain("db1", UUID_B, "failed", "cannot freeze"))
    assert cli.main(["--legacy-exit-status"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert f"Backup failed: domain {UUID_B} (db1): cannot freeze" in out
    assert "Summary: 1 succeeded, 1 failed, 0 skipped" in out
    # Without the flag the same run fails; the flag changes only the status.
    assert cli.main([]) == 1
    # From config.toml, and from the original's config.py (with LEGACY_EXIT_STATUS).
    toml = tmp_path / "c.toml"
    toml.write_text("legacy_exit_status = true\n")
    assert cli.main(["--config", str(toml)]) == 0
    legacy = tmp_path / "config.py"
    legacy.write_text('TARGET_REPO = "/srv/restic"\nLEGACY_EXIT_STATUS = True\n')
    monkeypatch.setenv("RESTIC_PASSWORD_FILE", "/dev/null")
    assert cli.main([]) == 0
    legacy.write_text('TARGET_REPO = "/srv/restic"\n')
    assert cli.main([]) == 1


def test_legacy_exit_status_keeps_2_for_a_run_that_cannot_start(
    fake_core: dict[str, Any], capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    fake_core["result"] = virt_rbd_backup.LibvirtError("cannot connect to qemu:///system")
    assert cli.main(["--legacy-exit-status"]) == 2


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
        "skipped_disks": [{"target": "hdc", "reason": "not_network"}, {"target": "vdc", "reason": "rbd_snapshot"}],
        "error": None,
    }
    monkeypatch.setattr(cli, "_list_domains_json", lambda connect, domains: [listing])
    assert cli.main(["list"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"web1 {UUID_A} (running)",
        "  vda: rbd rbd/web1-root",
        "  hdc: skipped, not a network disk",
        "  vdc: skipped, its source is an RBD snapshot",
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
    monkeypatch.setattr(cli, "_list_backups_json", lambda repo, domain, access: backups)
    assert cli.main(["list", "--repo", "/repo", "--domain", "db1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == [backups[1]]


# -------------------------------------------------------------------------- restore, verify, prune

B_FULL = "20261120T100000.000Z"
B_INC1 = "20261121T100000.000Z"
B_INC2 = "20261122T100000.000Z"


def restore_report(chain: list[str], target: str = "rbd:rbd/web1-restored") -> dict[str, Any]:
    return {
        "domain": "web1",
        "backup_id": chain[-1],
        "disk": "vda",
        "chain": chain,
        "target": target,
        "size": 10737418240,
        "bytes_written": 2147483648,
        "checksum": "blake3-4m:00ff",
        "seconds": 3.5,
    }


def verify_report(problems: list[dict[str, str]], checked: int = 2) -> dict[str, Any]:
    return {"checked": [["web1", f"b{i}"] for i in range(checked)], "problems": problems}


def domain_prune(
    name: str | None,
    kept: list[tuple[str, list[str]]],
    removed: list[tuple[str, str]],
    status: str = "done",
    message: str | None = None,
    errors: list[str] | None = None,
) -> dict[str, Any]:
    return {
        "uuid": UUID_A,
        "name": name,
        "status": status,
        "message": message,
        "kept": [{"backup_id": b, "reasons": r} for b, r in kept],
        "removed": [{"backup_id": b, "path": f"/repo/{UUID_A}/{b}", "reason": r} for b, r in removed],
        "errors": errors or [],
    }


def prune_report(*domains: dict[str, Any], dry_run: bool = False) -> dict[str, Any]:
    return {"version": 1, "dry_run": dry_run, "domains": list(domains)}


def test_restore_line_names_the_chain_full_first() -> None:
    r = RestoreReport.from_dict(restore_report([B_FULL, B_INC1, B_INC2]))
    assert cli.format_restore(r) == (
        f"Restored web1 disk vda from backup {B_INC2} (chain: {B_FULL} <- {B_INC1} <- {B_INC2}) "
        "to rbd:rbd/web1-restored: 10737418240 bytes, checksum verified"
    )


def test_restore_line_of_a_full_backup() -> None:
    r = RestoreReport.from_dict(restore_report([B_FULL], target="/srv/restore/vda.raw"))
    assert cli.format_restore(r) == (
        f"Restored web1 disk vda from backup {B_FULL} (chain: {B_FULL}) "
        "to /srv/restore/vda.raw: 10737418240 bytes, checksum verified"
    )


def test_verify_lines() -> None:
    assert cli.format_verify(VerifyReport.from_dict(verify_report([], checked=3))) == ["OK: 3 backups verified"]
    assert cli.format_verify(VerifyReport.from_dict(verify_report([])), quiet=True) == []
    problems = [
        {
            "backup_id": B_INC1,
            "disk": "vda",
            "message": "/repo/x/vda.diff is corrupt at offset 4096: checksum mismatch",
        },
        {"backup_id": B_INC2, "disk": "", "message": "unusable manifest /repo/x/manifest.json: EOF"},
    ]
    expected = [
        f"CORRUPT backup {B_INC1} disk vda: /repo/x/vda.diff is corrupt at offset 4096: checksum mismatch",
        f"CORRUPT backup {B_INC2}: unusable manifest /repo/x/manifest.json: EOF",
    ]
    report_ = VerifyReport.from_dict(verify_report(problems))
    assert cli.format_verify(report_) == expected
    assert cli.format_verify(report_, quiet=True) == expected


PRUNED = prune_report(
    domain_prune(
        "web1",
        kept=[(B_INC1, ["needed by " + B_INC2]), (B_INC2, ["keep-last", "keep-daily"])],
        removed=[(B_FULL, "not selected by any keep option")],
    ),
    domain_prune(None, kept=[], removed=[], status="skipped", message="another run holds the lock"),
    domain_prune("db1", kept=[(B_FULL, ["keep-daily"])], removed=[], errors=["/repo/y: left alone"]),
)


def test_prune_lines_in_time_order_with_reasons() -> None:
    assert cli.format_prune(PruneReport.from_dict(PRUNED)) == [
        f"remove web1 {B_FULL}: not selected by any keep option",
        f"keep web1 {B_INC1}: needed by {B_INC2}",
        f"keep web1 {B_INC2}: keep-last, keep-daily",
        f"skipped {UUID_A}: another run holds the lock",
        f"keep db1 {B_FULL}: keep-daily",
        "error db1: /repo/y: left alone",
    ]


def test_dry_run_prune_lines_say_would_remove() -> None:
    dry = prune_report(*PRUNED["domains"][:1], dry_run=True)
    assert (
        cli.format_prune(PruneReport.from_dict(dry))[0]
        == f"would remove web1 {B_FULL}: not selected by any keep option"
    )


def test_quiet_prune_keeps_removals_and_problems() -> None:
    assert cli.format_prune(PruneReport.from_dict(PRUNED), quiet=True) == [
        f"remove web1 {B_FULL}: not selected by any keep option",
        f"skipped {UUID_A}: another run holds the lock",
        "error db1: /repo/y: left alone",
    ]


@pytest.mark.parametrize(
    ("report_", "expected"),
    [
        (RestoreReport.from_dict(restore_report([B_FULL])), 0),
        (VerifyReport.from_dict(verify_report([])), 0),
        (VerifyReport.from_dict(verify_report([{"backup_id": B_FULL, "disk": "vda", "message": "x"}])), 1),
        (PruneReport.from_dict(prune_report()), 0),
        (PruneReport.from_dict(prune_report(domain_prune("web1", [], [(B_FULL, "x")]), dry_run=True)), 0),
        (PruneReport.from_dict(prune_report(domain_prune("web1", [], [], status="skipped", message="busy"))), 1),
        (PruneReport.from_dict(prune_report(domain_prune("web1", [], [], status="failed", message="EACCES"))), 1),
        (PruneReport.from_dict(prune_report(domain_prune("web1", [], [], errors=["left alone"]))), 1),
    ],
    ids=[
        "restore",
        "verify-ok",
        "verify-corrupt",
        "prune-empty",
        "prune-dry",
        "prune-skipped",
        "prune-failed",
        "prune-errors",
    ],
)
def test_exit_status_of_the_repository_commands(report_: Any, expected: int) -> None:
    assert cli.exit_status(report_) == expected


@pytest.mark.parametrize(
    ("command", "error", "expected"),
    [
        ("backup", virt_rbd_backup.UsageError("x"), 2),
        ("backup", virt_rbd_backup.RepositoryError("x"), 2),
        ("list", virt_rbd_backup.LibvirtError("x"), 2),
        ("restore", virt_rbd_backup.UsageError("x"), 2),
        ("restore", virt_rbd_backup.RepositoryError("x"), 1),
        ("restore", virt_rbd_backup.CephError("x"), 1),
        ("restore", virt_rbd_backup.LibvirtError("x"), 1),
        ("restore", virt_rbd_backup.BackupError("x"), 1),
        ("verify", virt_rbd_backup.UsageError("x"), 2),
        ("verify", virt_rbd_backup.RepositoryError("x"), 1),
        ("prune", virt_rbd_backup.UsageError("x"), 2),
        ("prune", virt_rbd_backup.RepositoryError("x"), 1),
    ],
)
def test_error_status(command: str, error: virt_rbd_backup.BackupError, expected: int) -> None:
    assert cli.error_status(command, error) == expected


@pytest.fixture
def fake_repo_core(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Replace restore, verify and prune in the core: `state[name]` is returned (or raised);
    `state["calls"]` records (name, args, kwargs) of each call."""
    state: dict[str, Any] = {"calls": []}

    def fake(name: str) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            state["calls"].append((name, args, kwargs))
            result = state[name]
            if isinstance(result, BaseException):
                raise result
            return result

        return call

    for name in ("restore", "restore_define", "verify", "prune"):
        monkeypatch.setattr(cli, f"_{name}_json", fake(name))
    return state


def test_restore_run_passes_every_option_and_prints_its_line(
    fake_repo_core: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    fake_repo_core["restore"] = restore_report([B_FULL, B_INC1])
    argv = ["restore", "web1", "--to", "rbd:rbd/web1-restored", "--disk", "vda", "--backup", B_INC1, "--force"]
    assert cli.main([*argv, "--read-back"]) == 0
    assert fake_repo_core["calls"] == [
        (
            "restore",
            ("web1",),
            {
                "to": "rbd:rbd/web1-restored",
                "disk": "vda",
                "backup": B_INC1,
                "force": True,
                "repo": "/var/lib/virt-rbd-backup",
                "ceph_conf": None,
                "ceph_user": None,
                "connect": "qemu:///system",
                "restic": None,
                "access": None,
                "read_back": True,
            },
        )
    ]
    assert capsys.readouterr().out == (
        f"Restored web1 disk vda from backup {B_INC1} (chain: {B_FULL} <- {B_INC1}) "
        "to rbd:rbd/web1-restored: 10737418240 bytes, checksum verified\n"
    )


def test_restore_json_prints_the_cores_report(
    fake_repo_core: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    fake_repo_core["restore"] = restore_report([B_FULL])
    assert cli.main(["restore", "web1", "--to", "/tmp/x.raw", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == restore_report([B_FULL])


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (virt_rbd_backup.UsageError("invalid option: /tmp/x.raw exists; use --force to replace it"), 2),
        (virt_rbd_backup.UsageError('invalid restore target: bad RBD target "rbd:x"'), 2),
        (virt_rbd_backup.RepositoryError("/repo/x/vda.raw is corrupt at offset 0: checksum mismatch"), 1),
        (virt_rbd_backup.CephError("rbd_create failed for rbd/x: Permission denied (errno 13)"), 1),
        (KeyboardInterrupt(), 130),
        (virt_rbd_backup.CancelledError("cancelled"), 130),
    ],
    ids=["exists", "bad-target", "corrupt", "ceph", "ctrl-c", "cancelled"],
)
def test_restore_failures_exit_status(
    error: BaseException, expected: int, fake_repo_core: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    fake_repo_core["restore"] = error
    assert cli.main(["restore", "web1", "--to", "/tmp/x.raw"]) == expected
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == ("interrupted\n" if expected == 130 else f"error: {error}\n")


def test_verify_run(fake_repo_core: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    fake_repo_core["verify"] = verify_report([])
    assert cli.main(["verify", "web1", "--backup", "latest", "--repo", "/srv/b"]) == 0
    assert fake_repo_core["calls"] == [
        (
            "verify",
            ("web1",),
            {
                "backup": "latest",
                "repo": "/srv/b",
                "source": False,
                "ceph_conf": None,
                "ceph_user": None,
                "connect": "qemu:///system",
                "access": None,
                "read_data": False,
            },
        )
    ]
    assert capsys.readouterr().out == "OK: 2 backups verified\n"


def test_verify_run_with_damage_exits_1_also_with_json(
    fake_repo_core: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    fake_repo_core["verify"] = verify_report([{"backup_id": B_FULL, "disk": "vda", "message": "checksum mismatch"}])
    assert cli.main(["verify"]) == 1
    assert capsys.readouterr().out == f"CORRUPT backup {B_FULL} disk vda: checksum mismatch\n"
    assert cli.main(["verify", "--json"]) == 1
    assert json.loads(capsys.readouterr().out) == fake_repo_core["verify"]


def test_verify_that_cannot_read_the_repository_exits_1(
    fake_repo_core: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    fake_repo_core["verify"] = virt_rbd_backup.RepositoryError("no backup of a domain named web9")
    assert cli.main(["verify", "web9"]) == 1
    assert capsys.readouterr().err == "error: no backup of a domain named web9\n"


def test_prune_run_passes_keep_options_as_the_core_names_them(
    fake_repo_core: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    fake_repo_core["prune"] = prune_report(*PRUNED["domains"][:1], dry_run=True)
    assert cli.main(["prune", "web1", "--keep-daily", "7", "--keep-within", "12h", "--dry-run"]) == 0
    assert fake_repo_core["calls"] == [
        (
            "prune",
            ("web1",),
            {
                "keep": {
                    "last": None,
                    "hourly": None,
                    "daily": 7,
                    "weekly": None,
                    "monthly": None,
                    "yearly": None,
                    "within_seconds": 43200,
                },
                "dry_run": True,
                "repo": "/var/lib/virt-rbd-backup",
                "access": None,
            },
        )
    ]
    assert capsys.readouterr().out.splitlines() == [
        f"would remove web1 {B_FULL}: not selected by any keep option",
        f"keep web1 {B_INC1}: needed by {B_INC2}",
        f"keep web1 {B_INC2}: keep-last, keep-daily",
    ]


def test_prune_with_problems_exits_1(fake_repo_core: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    fake_repo_core["prune"] = PRUNED
    assert cli.main(["prune", "--keep-last", "3"]) == 1
    capsys.readouterr()
    assert cli.main(["prune", "--keep-last", "3", "--json"]) == 1
    assert json.loads(capsys.readouterr().out) == PRUNED


def test_prune_without_keep_option_exits_2_with_the_cores_message(
    fake_repo_core: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    message = "invalid option: no keep option given; nothing would be kept (give at least one of --keep-last, ...)"
    fake_repo_core["prune"] = virt_rbd_backup.UsageError(message)
    assert cli.main(["prune"]) == 2
    assert capsys.readouterr().err == f"error: {message}\n"


# -------------------------------------------------------------------------- restic, plan, timeouts


def test_backup_timeouts_and_restic_flags() -> None:
    args = cli.parse_args(
        [
            "--agent-timeout",
            "5",
            "--freeze-timeout",
            "12",
            "--restic-repo",
            "/srv/restic",
            "--restic-password-file",
            "/etc/pw",
        ]
    )
    assert (args.agent_timeout, args.freeze_timeout) == (5, 12)
    assert (args.restic_repo, args.restic_password_file, args.restic_binary) == ("/srv/restic", "/etc/pw", "restic")
    assert (cli.parse_args([]).agent_timeout, cli.parse_args([]).freeze_timeout) == (30, 60)


def test_backup_into_restic_passes_the_target(fake_core: dict[str, Any]) -> None:
    assert cli.main(["--restic-repo", "/srv/restic", "--restic-password-file", "/etc/pw", "--agent-timeout", "5"]) == 0
    assert fake_core["options"]["restic"] == virt_rbd_backup.ResticTarget(
        repository="/srv/restic", password_file="/etc/pw"
    )
    assert fake_core["options"]["agent_timeout"] == 5


@pytest.mark.parametrize("flag", ["--restic-password", "--restic-password=hunter2"])
def test_a_password_on_the_command_line_is_refused_without_echoing_it(
    flag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["backup", "--restic-repo", "/srv/restic", flag]
    if "=" not in flag:
        argv.append("hunter2")
    with pytest.raises(SystemExit) as info:
        cli.parse_args(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "never taken on the command line" in err
    assert "hunter2" not in err


def test_option_prefixes_are_not_taken_for_options(capsys: pytest.CaptureFixture[str]) -> None:
    # Without this, argparse would read `--restic-pass SECRET` as the password *file* SECRET.
    with pytest.raises(SystemExit):
        cli.parse_args(["backup", "--restic-pass", "x"])
    with pytest.raises(SystemExit):
        cli.parse_args(["backup", "--work", "2"])


def test_repo_and_restic_repo_exclude_each_other(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.parse_args(["backup", "--repo", "/b", "--restic-repo", "/r"])
    assert "not allowed with" in capsys.readouterr().err


def test_a_password_file_without_restic_repo_is_a_usage_error(
    fake_core: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["--restic-password-file", "/etc/pw"]) == 2
    assert "--restic-password-file needs --restic-repo" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        (["backup"], 2),
        (["list", "--restic-repo", "/r"], 2),
        (["restore", "web1", "--restic-repo", "/r", "--to", "/x"], 1),
    ],
)
def test_restic_failures_exit_status(command: list[str], expected: int) -> None:
    # Wrong password, no repository: the run could not start (backup, list); the restore failed.
    assert cli.error_status(command[0], virt_rbd_backup.ResticError("restic snapshots failed")) == expected
    assert cli.error_status(command[0], virt_rbd_backup.UsageError("no password")) == 2


PLAN = {
    "domains": [
        {
            "name": "web1",
            "uuid": UUID_A,
            "active": True,
            "would_freeze": True,
            "disks": [
                {
                    "target": "vda",
                    "image": "rbd/web1-a",
                    "size": 10 * 1024**3,
                    "kind": "incremental",
                    "reason": None,
                    "parent_backup": "20261126T100000.000Z",
                    "estimated_bytes": 40 * 1024**2,
                },
                {
                    "target": "vdb",
                    "image": "rbd/web1-b",
                    "size": 1024**3,
                    "kind": "full",
                    "reason": "the base snapshot is gone",
                    "parent_backup": None,
                    "estimated_bytes": 8 * 1024**2,
                },
            ],
            "skipped_disks": [{"target": "hdc", "reason": "not_network"}],
            "error": None,
        },
        {
            "name": "off1",
            "uuid": UUID_B,
            "active": False,
            "would_freeze": False,
            "disks": [
                {
                    "target": "vda",
                    "image": "rbd/off1-a",
                    "size": 1024**3,
                    "kind": "full",
                    "reason": None,
                    "parent_backup": None,
                    "estimated_bytes": 4 * 1024**2,
                }
            ],
            "skipped_disks": [],
            "error": None,
        },
        {
            "name": "db1",
            "uuid": UUID_C,
            "active": True,
            "would_freeze": True,
            "disks": [],
            "skipped_disks": [],
            "error": "rbd_open failed for rbd/db1: No such file or directory (errno 2)",
        },
    ],
    "estimated_bytes": 52 * 1024**2,
}

PLAN_LINES = [
    f"web1 {UUID_A} (running, would freeze)",
    "  vda: rbd/web1-a 10.0 GiB, incremental on 20261126T100000.000Z, about 40.0 MiB to read",
    "  vdb: rbd/web1-b 1.0 GiB, full (the base snapshot is gone), about 8.0 MiB to read",
    "  hdc: skipped, not a network disk",
    f"off1 {UUID_B} (shut off)",
    "  vda: rbd/off1-a 1.0 GiB, full, about 4.0 MiB to read",
    f"db1 {UUID_C} (running, would freeze)",
    "  error: rbd_open failed for rbd/db1: No such file or directory (errno 2)",
    "Estimated: about 52.0 MiB to read from 3 disks of 3 domains; nothing was changed",
]


def test_plan_lines() -> None:
    assert cli.format_plan(virt_rbd_backup.BackupPlan.from_dict(PLAN)) == PLAN_LINES
    assert cli.format_plan(virt_rbd_backup.BackupPlan.from_dict(PLAN), quiet=True) == PLAN_LINES[6:8]


@pytest.fixture
def fake_plan(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    state: dict[str, Any] = {"calls": [], "result": PLAN}

    def plan_json(**options: Any) -> dict[str, Any]:
        state["calls"].append(options)
        return state["result"]  # type: ignore[no-any-return]

    monkeypatch.setattr(cli, "_plan_json", plan_json)
    return state


@pytest.mark.parametrize("argv", [["plan"], ["backup", "--dry-run"], ["--dry-run"]])
def test_plan_and_dry_run_print_the_plan_and_exit_1_when_a_domain_cannot_be_planned(
    argv: list[str], fake_plan: dict[str, Any], fake_core: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main([*argv, "--domain", "web1", "--mode", "full", "--restic-repo", "/r"]) == 1
    assert capsys.readouterr().out.splitlines() == PLAN_LINES
    assert "options" not in fake_core, "no backup was run"
    (options,) = fake_plan["calls"]
    assert (options["domains"], options["mode"]) == (["web1"], "full")
    assert options["restic"] == virt_rbd_backup.ResticTarget(repository="/r")
    fake_plan["result"] = {**PLAN, "domains": PLAN["domains"][:2]}  # type: ignore[index]
    assert cli.main(argv) == 0


def test_plan_json_prints_the_cores_plan(fake_plan: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["plan", "--json"]) == 1
    assert json.loads(capsys.readouterr().out) == PLAN


RESTIC_SNAPSHOTS = [
    {
        "id": "4f1c2a9e0b5ac0ffee015e3c0b1a7a2d4f1c2a9e0b5ac0ffee015e3c0b1a7a2d",
        "time": "2026-11-26T10:34:00.123456789Z",
        "host": "hv1",
        "domain_uuid": UUID_A,
        "domain": "web1",
        "disk": "vda",
        "file": "web1-a.img",
        "complete": True,
        "size": 4096,
        "checksum": "blake3-4m:" + "0" * 64,
        "seal": "5ea1",
    },
    {
        "id": "bb22aa11" + "0" * 56,
        "time": "2026-11-26T10:35:00Z",
        "host": "hv1",
        "domain_uuid": UUID_B,
        "domain": "db1",
        "disk": "vda",
        "file": "db1-a.img",
        "complete": False,
        "size": None,
        "checksum": None,
        "seal": None,
    },
]


def test_list_restic_lines_filtered_by_domain(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    calls: list[Any] = []

    def list_restic(target: Any, domain: Any) -> list[dict[str, Any]]:
        calls.append((target, domain))
        return RESTIC_SNAPSHOTS

    monkeypatch.setattr(cli, "_list_restic_json", list_restic)
    assert cli.main(["list", "--restic-repo", "/srv/restic", "--restic-password-file", "/etc/pw", "web1"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"web1 {UUID_A} vda 4f1c2a9e 2026-11-26T10:34:00.123456789Z hv1 web1-a.img"
    ]
    assert calls == [(virt_rbd_backup.ResticTarget(repository="/srv/restic", password_file="/etc/pw"), None)]
    assert cli.main(["list", "--restic-repo", "/srv/restic", "--domain", UUID_B, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == RESTIC_SNAPSHOTS[1:]
    # An incomplete snapshot is listed, marked.
    assert cli.main(["list", "--restic-repo", "/srv/restic", "db1"]) == 0
    assert capsys.readouterr().out.endswith(" db1-a.img INCOMPLETE (no seal)\n")


def test_restore_from_restic_passes_the_target_and_reports_what_latest_skipped(
    fake_repo_core: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    report_ = restore_report(["4f1c2a9e"], target="/srv/x.raw")
    report_["skipped"] = ["restic snapshot bb22 of 2026-11-27T10:00:00Z is incomplete (no seal)"]
    fake_repo_core["restore"] = report_
    argv = ["restore", "web1", "--restic-repo", "/srv/restic", "--to", "/srv/x.raw"]
    assert cli.main(argv) == 0
    assert fake_repo_core["calls"][0][2]["restic"] == virt_rbd_backup.ResticTarget(repository="/srv/restic")
    captured = capsys.readouterr()
    assert captured.out == (
        f"Restored web1 disk vda from restic snapshot {report_['backup_id']} to /srv/x.raw: 10737418240 bytes, "
        "checksum verified\n"
    )
    assert captured.err == "Skipped: restic snapshot bb22 of 2026-11-27T10:00:00Z is incomplete (no seal)\n"


# -------------------------------------------------------------------------- compression, rate, Ceph timeout


def test_compress_bwlimit_and_ceph_timeout_flags() -> None:
    args = cli.parse_args([])
    assert (args.compress, args.bwlimit, args.ceph_timeout) == (None, None, 60)
    args = cli.parse_args(["backup", "--compress", "zstd:5", "--bwlimit", "1.5G", "--ceph-timeout", "5"])
    assert (args.compress, args.bwlimit, args.ceph_timeout) == ("zstd:5", 3 << 29, 5)
    # The rate is read by the core's parser: units K, M, G, binary.
    assert cli.parse_args(["--bwlimit", "512K"]).bwlimit == 512 << 10
    assert cli.parse_args(["--bwlimit", "1048576"]).bwlimit == 1 << 20


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--bwlimit", "fast"], "bad rate"),
        (["--bwlimit", "0"], "bad rate"),
        (["--ceph-timeout", "0"], "must be at least 1"),
    ],
)
def test_bad_rates_and_timeouts_exit_2(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.parse_args(argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_backup_passes_compress_bwlimit_and_ceph_timeout(fake_core: dict[str, Any]) -> None:
    assert cli.main(["--compress", "zstd", "--bwlimit", "8M", "--ceph-timeout", "5"]) == 0
    options = fake_core["options"]
    assert (options["compress"], options["bwlimit"], options["ceph_timeout"]) == ("zstd", 8 << 20, 5)


@pytest.mark.parametrize("argv", [["plan"], ["backup", "--dry-run"]])
def test_plan_takes_the_ceph_timeout(argv: list[str], fake_plan: dict[str, Any]) -> None:
    cli.main([*argv, "--ceph-timeout", "7", "--compress", "zstd", "--bwlimit", "8M"])
    (options,) = fake_plan["calls"]
    assert options["ceph_timeout"] == 7


# -------------------------------------------------------------------------- verify --source


def test_verify_source_flags() -> None:
    args = cli.parse_args(["verify"])
    assert (args.source, args.ceph_conf, args.ceph_user, args.connect) == (False, None, None, "qemu:///system")
    args = cli.parse_args(
        [
            "verify",
            "web1",
            "--source",
            "--ceph-conf",
            "/etc/ceph/backup.conf",
            "--ceph-user",
            "backup",
            "--connect",
            "qemu+ssh://h/system",
        ]
    )
    assert (args.source, args.ceph_conf, args.ceph_user, args.connect) == (
        True,
        "/etc/ceph/backup.conf",
        "backup",
        "qemu+ssh://h/system",
    )


def test_verify_source_lines() -> None:
    data = {**verify_report([], checked=1), "source_checked": [[B_INC1, "vda"], [B_INC1, "vdb"]]}
    assert cli.format_verify(VerifyReport.from_dict(data)) == [
        "OK: 1 backups verified",
        f"SOURCE OK backup {B_INC1} disk vda: equals rbd snapshot",
        f"SOURCE OK backup {B_INC1} disk vdb: equals rbd snapshot",
    ]
    assert cli.format_verify(VerifyReport.from_dict(data), quiet=True) == []


def test_verify_source_run_passes_the_cluster_options(
    fake_repo_core: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    fake_repo_core["verify"] = {**verify_report([], checked=1), "source_checked": [[B_INC1, "vda"]]}
    argv = ["verify", "--source", "--ceph-conf", "/etc/ceph/ceph.conf", "--ceph-user", "backup", "--repo", "/srv/b"]
    assert cli.main(argv) == 0
    assert fake_repo_core["calls"][0][2] == {
        "backup": None,
        "repo": "/srv/b",
        "source": True,
        "ceph_conf": "/etc/ceph/ceph.conf",
        "ceph_user": "backup",
        "connect": "qemu:///system",
        "access": None,
        "read_data": False,
    }
    assert capsys.readouterr().out.splitlines() == [
        "OK: 1 backups verified",
        f"SOURCE OK backup {B_INC1} disk vda: equals rbd snapshot",
    ]


def test_a_source_that_differs_is_a_corrupt_line_and_exits_1(
    fake_repo_core: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    message = "differs from its source snapshot rbd/web1-root@virt-rbd-backup-x at offset 4194304"
    fake_repo_core["verify"] = verify_report([{"backup_id": B_INC1, "disk": "vda", "message": message}])
    assert cli.main(["verify", "--source"]) == 1
    assert capsys.readouterr().out == f"CORRUPT backup {B_INC1} disk vda: {message}\n"


def test_ceph_options_without_source_exit_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert cli.main(["verify", "--ceph-conf", "/etc/ceph/ceph.conf", "--repo", str(tmp_path)]) == 2
    assert "--source" in capsys.readouterr().err


# -------------------------------------------------------------------------- restore --define

UUID_NEW = "3b1f9b7e-8c43-4b71-9a5d-0c2d7f1e6a10"


def define_report(dropped: list[str]) -> dict[str, Any]:
    disks = []
    for disk in ("vda", "vdb"):
        r = restore_report([B_FULL, B_INC1], target=f"rbd:rbd/web1-copy-{disk}")
        r["disk"] = disk
        disks.append(r)
    return {"name": "web1-copy", "uuid": UUID_NEW, "disks": disks, "dropped_disks": dropped}


def test_restore_define_flags() -> None:
    args = cli.parse_args(["restore", "web1", "--define", "web1-copy"])
    assert (args.define, args.to, args.pool, args.backup, args.force) == ("web1-copy", None, None, None, False)
    args = cli.parse_args(
        [
            "restore",
            "web1",
            "--define",
            "web1-copy",
            "--pool",
            "fast",
            "--backup",
            B_INC1,
            "--force",
            "--ceph-conf",
            "/etc/ceph/ceph.conf",
            "--ceph-user",
            "backup",
            "--connect",
            "qemu+ssh://h/system",
            "--repo",
            "/srv/b",
            "--json",
            "--allow-host-passthrough",
        ]
    )
    assert (args.define, args.pool, args.backup, args.force, args.json) == ("web1-copy", "fast", B_INC1, True, True)
    assert args.allow_host_passthrough
    assert (args.ceph_conf, args.ceph_user, args.connect, args.repo) == (
        "/etc/ceph/ceph.conf",
        "backup",
        "qemu+ssh://h/system",
        "/srv/b",
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["restore", "web1"], "one of the arguments --to --define is required"),
        (["restore", "web1", "--to", "/x.raw", "--define", "copy"], "not allowed with"),
    ],
)
def test_restore_takes_either_to_or_define(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.parse_args(argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_define_line_and_warning() -> None:
    lines = cli.format_define(DefineReport.from_dict(define_report(["vdc", "vdd"])), "web1")
    assert lines == [
        (
            "out",
            f"Defined web1-copy ({UUID_NEW}) from backup {B_INC1} of web1: "
            "vda -> rbd/web1-copy-vda, vdb -> rbd/web1-copy-vdb",
        ),
        (
            "err",
            "warning: web1-copy was defined without vdc, vdd: writable disks that are not in the backup "
            "are left out, never shared with the original",
        ),
    ]
    assert len(cli.format_define(DefineReport.from_dict(define_report([])), "web1")) == 1


def test_restore_define_run_passes_every_option_and_prints_its_lines(
    fake_repo_core: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    fake_repo_core["restore_define"] = define_report(["vdc"])
    argv = ["restore", "web1", "--define", "web1-copy", "--pool", "fast", "--backup", B_INC1, "--force"]
    assert cli.main(argv) == 0
    assert fake_repo_core["calls"] == [
        (
            "restore_define",
            ("web1",),
            {
                "name": "web1-copy",
                "backup": B_INC1,
                "pool": "fast",
                "force": True,
                "repo": "/var/lib/virt-rbd-backup",
                "ceph_conf": None,
                "ceph_user": None,
                "connect": "qemu:///system",
                "allow_host_passthrough": False,
                "access": None,
                "read_back": False,
            },
        )
    ]
    captured = capsys.readouterr()
    assert captured.out.startswith(f"Defined web1-copy ({UUID_NEW}) from backup {B_INC1} of web1: vda -> ")
    assert captured.err.startswith("warning: web1-copy was defined without vdc")


def test_allow_host_passthrough_reaches_the_core(fake_repo_core: dict[str, Any]) -> None:
    fake_repo_core["restore_define"] = define_report([])
    assert cli.main(["restore", "web1", "--define", "web1-copy", "--allow-host-passthrough"]) == 0
    assert fake_repo_core["calls"][0][2]["allow_host_passthrough"] is True


def test_restore_prints_the_cores_warnings_on_stderr(
    fake_repo_core: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    report = restore_report([B_FULL])
    report["warnings"] = ["the restore is in place, but the image it replaced was kept as x"]
    fake_repo_core["restore"] = report
    assert cli.main(["restore", "web1", "--to", "rbd:rbd/web1-restored", "--force"]) == 0
    captured = capsys.readouterr()
    assert captured.err == "warning: the restore is in place, but the image it replaced was kept as x\n"
    assert captured.out.startswith("Restored")


def test_restore_define_json_prints_the_cores_report_and_the_warning_on_stderr(
    fake_repo_core: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    fake_repo_core["restore_define"] = define_report(["vdc"])
    assert cli.main(["restore", "web1", "--define", "web1-copy", "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out) == define_report(["vdc"])
    assert "vdc" in captured.err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["restore", "web1", "--define", "copy", "--disk", "vda"], "--disk does not go with --define"),
        (["restore", "web1", "--define", "copy", "--restic-repo", "/r"], "not from restic"),
        (["restore", "web1", "--to", "/x.raw", "--pool", "fast"], "--pool goes with --define"),
        (["restore", "web1", "--to", "/x.raw", "--allow-host-passthrough"], "goes with --define"),
    ],
)
def test_restore_flags_that_do_not_fit_exit_2(
    argv: list[str], message: str, fake_repo_core: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(argv) == 2
    assert message in capsys.readouterr().err
    assert fake_repo_core["calls"] == []


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (virt_rbd_backup.UsageError("a domain named web1-copy exists already; choose another name"), 2),
        (virt_rbd_backup.UsageError("rbd/web1-copy-vda exists; use --force to replace it"), 2),
        (virt_rbd_backup.LibvirtError("cannot define web1-copy: invalid XML"), 1),
        (virt_rbd_backup.CephError("rbd_create failed for rbd/x: Permission denied (errno 13)"), 1),
        (KeyboardInterrupt(), 130),
    ],
    ids=["domain-exists", "image-exists", "define-failed", "ceph", "ctrl-c"],
)
def test_restore_define_failures_exit_status(
    error: BaseException, expected: int, fake_repo_core: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    fake_repo_core["restore_define"] = error
    assert cli.main(["restore", "web1", "--define", "web1-copy"]) == expected
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == ("interrupted\n" if expected == 130 else f"error: {error}\n")
