"""The PyO3 boundary (src/python/mod.rs) on the installed wheel, without the lab.

What the module exposes is checked against the stub it ships, errors against the one exception
hierarchy, and Ctrl-C handling against a libvirt "server" that never answers (a Unix socket
that accepts and stays silent), so no real libvirtd is needed.
"""

from __future__ import annotations

import ast
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import virt_rbd_backup
from virt_rbd_backup import _native

STUB = Path(_native.__file__).with_name("_native.pyi")
EXCEPTIONS = (
    "UsageError",
    "LibvirtError",
    "CephError",
    "RepositoryError",
    "ResticError",
    "InconsistentError",
    "CancelledError",
)


def stub_names() -> tuple[set[str], set[str]]:
    """Functions and classes the shipped stub declares."""
    tree = ast.parse(STUB.read_text())
    functions = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    classes = {n.name for n in tree.body if isinstance(n, ast.ClassDef)}
    return functions, classes


def test_stub_is_shipped_next_to_the_extension() -> None:
    assert STUB.is_file()
    assert Path(_native.__file__).with_name("py.typed").is_file()


def test_native_exposes_every_function_and_exception_of_the_stub() -> None:
    functions, classes = stub_names()
    assert functions == {
        "backup",
        "plan",
        "list_domains",
        "list_backups",
        "list_restic",
        "restore",
        "restore_define",
        "restore_live",
        "verify",
        "prune",
        "rekey",
        "ceph_key",
        "snapshot_name",
        "parse_rate",
        "thaw_orphans",
        "library_versions",
        "remove_leftover_snapshots",
        "serve",
        "fuse_disk",
    }
    for name in functions:
        assert callable(getattr(_native, name)), name
    assert classes == {"BackupError", "CephSession", "DiskServer", *EXCEPTIONS}
    for name in classes:
        assert isinstance(getattr(_native, name), type), name
    assert set(_native.__all__) == functions | classes | {"__version__"}


def test_exceptions_form_one_hierarchy_re_exported_by_the_package() -> None:
    assert issubclass(_native.BackupError, Exception)
    for name in EXCEPTIONS:
        cls = getattr(_native, name)
        assert issubclass(cls, _native.BackupError), name
        assert getattr(virt_rbd_backup, name) is cls
    assert virt_rbd_backup.BackupError is _native.BackupError
    # Shown to users as virt_rbd_backup.UsageError, where they import it from.
    assert _native.UsageError.__module__ == "virt_rbd_backup"


def test_version_is_the_crates() -> None:
    cargo = Path(__file__).resolve().parents[2] / "Cargo.toml"
    version_line = next(line for line in cargo.read_text().splitlines() if line.startswith("version"))
    assert virt_rbd_backup.__version__ == _native.__version__ == version_line.split('"')[1]


def test_public_all_names_exist() -> None:
    for name in virt_rbd_backup.__all__:
        assert hasattr(virt_rbd_backup, name), name


def test_unknown_option_is_a_usage_error_naming_it() -> None:
    with pytest.raises(virt_rbd_backup.UsageError, match="colour"):
        _native.backup({"colour": "blue"})


def test_options_as_json_text_are_read_too() -> None:
    with pytest.raises(virt_rbd_backup.UsageError, match="sometimes"):
        _native.backup('{"freeze": "sometimes"}')


def test_bad_freeze_policy_through_the_public_api_is_a_usage_error() -> None:
    with pytest.raises(virt_rbd_backup.UsageError):
        virt_rbd_backup.backup(freeze="sometimes")  # type: ignore[arg-type]


def test_bad_backup_mode_is_a_usage_error_naming_it() -> None:
    with pytest.raises(virt_rbd_backup.UsageError, match="incremental"):
        virt_rbd_backup.backup(mode="incremental")  # type: ignore[arg-type]


def test_negative_full_every_is_a_usage_error() -> None:
    with pytest.raises(virt_rbd_backup.UsageError, match="integer `-1`"):
        _native.backup({"full_every": -1})


def test_mode_and_full_every_are_backup_options() -> None:
    # Accepted by the options parser: the run then stops at the engine's own check of workers.
    with pytest.raises(virt_rbd_backup.UsageError, match="workers"):
        _native.backup({"mode": "full", "full_every": 7, "workers": 0})


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"compress": "gzip"}, "unknown compression"),
        ({"compress": "zstd:20"}, "bad zstd level"),
        ({"bwlimit": 0}, "bwlimit must be positive"),
        ({"bwlimit": "200M"}, "invalid type"),
        ({"ceph_timeout": 0}, "Ceph timeout must be between 1 and 86400"),
        (
            {"agent_timeout": 30, "freeze_timeout": 30},
            r"agent timeout \(30 s\) must be shorter than the freeze timeout",
        ),
        ({"agent_timeout": 90}, r"agent timeout \(90 s\) must be shorter than the freeze timeout \(60 s\)"),
    ],
    ids=[
        "unknown-compression",
        "zstd-level",
        "zero-rate",
        "rate-as-text",
        "zero-ceph-timeout",
        "agent-equals-freeze-timeout",
        "agent-exceeds-default-freeze-timeout",
    ],
)
def test_compress_bwlimit_and_ceph_timeout_are_checked_by_the_core(options: dict[str, Any], message: str) -> None:
    # Refused before libvirt or the repository are touched.
    with pytest.raises(virt_rbd_backup.UsageError, match=message):
        _native.backup({**options, "repo": "/nonexistent/never-created"})


def test_compress_bwlimit_and_ceph_timeout_are_backup_options() -> None:
    # Accepted by the options parser: the run then stops at the engine's own check of workers.
    with pytest.raises(virt_rbd_backup.UsageError, match="workers"):
        _native.backup({"compress": "zstd:19", "bwlimit": 1 << 20, "ceph_timeout": 5, "workers": 0})


@pytest.mark.parametrize(
    ("text", "rate"),
    [("200M", 200 << 20), ("1.5G", 3 << 29), ("512K", 512 << 10), ("512KiB/s", 512 << 10), ("1048576", 1 << 20)],
)
def test_rates_are_read_by_the_cores_parser(text: str, rate: int) -> None:
    assert _native.parse_rate(text) == rate
    assert virt_rbd_backup.parse_rate(text) == rate


@pytest.mark.parametrize("text", ["0", "-1M", "fast", "10X", ""])
def test_bad_rates_are_usage_errors(text: str) -> None:
    with pytest.raises(virt_rbd_backup.UsageError, match="bad rate"):
        _native.parse_rate(text)


def test_a_rate_as_text_reaches_the_core_as_bytes_per_second(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[dict[str, Any]] = []

    def backup(options: dict[str, Any], on_event: Any = None) -> dict[str, Any]:
        seen.append(options)
        return {"version": 1, "started_at": 0.0, "finished_at": 0.0, "domains": []}

    monkeypatch.setattr(_native, "backup", backup)
    virt_rbd_backup.backup(bwlimit="8M", compress="zstd", ceph_timeout=5)
    virt_rbd_backup.backup(bwlimit=4096)
    assert [(o["bwlimit"], o["compress"], o["ceph_timeout"]) for o in seen] == [(8 << 20, "zstd", 5), (4096, None, 60)]
    with pytest.raises(virt_rbd_backup.UsageError, match="bad rate"):
        virt_rbd_backup.backup(bwlimit="8 parsecs")


@pytest.mark.parametrize(
    "options",
    [
        {"domain": "web1", "name": "copy"},
        {"repo": "/r", "name": "copy"},
        {"repo": "/r", "domain": "web1"},
        {"repo": "/r", "domain": "web1", "name": "copy", "to": "/tmp/x.raw"},
        {"repo": "/r", "domain": "web1", "name": "copy", "force": "yes"},
    ],
    ids=["no-repo", "no-domain", "no-name", "unknown-field", "force-not-a-bool"],
)
def test_bad_define_options_are_usage_errors(options: dict[str, Any]) -> None:
    with pytest.raises(virt_rbd_backup.UsageError, match="invalid define options"):
        _native.restore_define(options)


@pytest.mark.parametrize("source", [{"ceph_cnf": "/etc/ceph/ceph.conf"}, {"ceph_user": 7}, '"yes"'])
def test_bad_source_options_are_usage_errors(source: Any, tmp_path: Path) -> None:
    with pytest.raises(virt_rbd_backup.UsageError, match="invalid source options"):
        _native.verify(str(tmp_path), None, None, source)


@pytest.mark.parametrize(
    "options",
    [
        {"domain": "web1", "to": "/tmp/x.raw"},
        {"repo": "/r", "to": "/tmp/x.raw"},
        {"repo": "/r", "domain": "web1"},
        {"repo": "/r", "domain": "web1", "to": "/tmp/x.raw", "colour": "blue"},
        {"repo": "/r", "domain": "web1", "to": {"type": "tape", "path": "/dev/st0"}},
        {"repo": "/r", "domain": "web1", "to": 7},
    ],
    ids=["no-repo", "no-domain", "no-to", "unknown-field", "unknown-target-type", "target-not-a-string"],
)
def test_bad_restore_options_are_usage_errors(options: dict[str, Any]) -> None:
    with pytest.raises(virt_rbd_backup.UsageError, match="invalid restore options"):
        _native.restore(options)


def test_restore_target_as_a_tagged_object_reaches_the_engine(tmp_path: Path) -> None:
    # Past option parsing, the engine finds no repository: the object was accepted.
    for to in ({"type": "file", "path": "/tmp/x.raw"}, {"type": "rbd", "pool": "rbd", "namespace": None, "image": "x"}):
        with pytest.raises(virt_rbd_backup.RepositoryError):
            _native.restore({"repo": str(tmp_path / "none"), "domain": "web1", "to": to})


@pytest.mark.parametrize(
    "keep",
    [{"dayly": 7}, {"daily": -1}, {"daily": "7"}, {"within_seconds": 1.5}, [7], "7", '{"daily": 7,}'],
    ids=["misspelt", "negative", "string-number", "fraction", "list", "json-number", "bad-json"],
)
def test_bad_keep_options_are_usage_errors(keep: Any, tmp_path: Path) -> None:
    with pytest.raises(virt_rbd_backup.UsageError, match="keep options"):
        _native.prune(str(tmp_path), keep)


def test_unknown_keep_option_error_lists_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(virt_rbd_backup.UsageError) as info:
        _native.prune(str(tmp_path), {"dayly": 7})
    for field in ("last", "hourly", "daily", "weekly", "monthly", "yearly", "within_seconds"):
        assert f"`{field}`" in str(info.value)


def test_keep_options_as_json_text_are_read_too(tmp_path: Path) -> None:
    # Accepted by the parser; the engine then refuses a keep-nothing set as a usage error.
    with pytest.raises(virt_rbd_backup.UsageError, match="no keep option"):
        _native.prune(str(tmp_path), '{"daily": 0, "within_seconds": null}')


def test_a_lone_string_is_not_taken_as_a_list_of_domains() -> None:
    with pytest.raises(virt_rbd_backup.UsageError, match="web1"):
        virt_rbd_backup.backup(domains="web1")


def test_engine_usage_error_crosses_the_worker_thread(tmp_path: Path) -> None:
    # Checked by the engine itself (on its thread) before libvirt or the repository are touched.
    with pytest.raises(virt_rbd_backup.UsageError, match="workers"):
        virt_rbd_backup.backup(workers=0, repo=tmp_path / "repo")


def test_unusable_repository_is_a_repository_error(tmp_path: Path) -> None:
    not_a_repo = tmp_path / "full"
    not_a_repo.mkdir()
    (not_a_repo / "somebody-elses-file").write_text("x")
    with pytest.raises(virt_rbd_backup.RepositoryError, match="full"):
        virt_rbd_backup.backup(repo=not_a_repo, connect="test:///default")


def test_list_backups_of_a_folder_that_is_no_repository_is_a_repository_error(tmp_path: Path) -> None:
    with pytest.raises(virt_rbd_backup.RepositoryError):
        virt_rbd_backup.list_backups(repo=tmp_path)


@contextlib.contextmanager
def silent_libvirt_socket(tmp_path: Path, hold_seconds: float) -> Iterator[str]:
    """A Unix socket that accepts connections and answers nothing for `hold_seconds`, then
    closes them: libvirt's client waits on it, then fails. Yields a libvirt URI for it."""
    path = tmp_path / "libvirt-sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(8)
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.1)
        held: list[tuple[socket.socket, float]] = []
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                conn, _ = server.accept()
                held.append((conn, time.monotonic()))
            for conn, since in list(held):
                if time.monotonic() - since >= hold_seconds:
                    conn.close()
                    held.remove((conn, since))
        for conn, _ in held:
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"qemu+unix:///system?socket={path}"
    finally:
        stop.set()
        thread.join()
        server.close()


def interrupt_after(seconds: float) -> threading.Timer:
    """Send SIGINT to this process after `seconds`, as a Ctrl-C would."""
    timer = threading.Timer(seconds, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    return timer


def test_ctrl_c_interrupts_a_listing_at_once(tmp_path: Path) -> None:
    with silent_libvirt_socket(tmp_path, hold_seconds=30) as uri:
        timer = interrupt_after(0.3)
        started = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            _native.list_domains(uri, [])
        elapsed = time.monotonic() - started
        timer.join()
    assert elapsed < 5, f"KeyboardInterrupt came {elapsed:.1f} s after Ctrl-C"


def test_ctrl_c_during_a_backup_waits_for_the_engine_then_raises(tmp_path: Path) -> None:
    # The engine is stuck in libvirt's connect for 2 s; Ctrl-C at 0.3 s must cancel and then
    # wait for the engine to return (its clean-up) before KeyboardInterrupt reaches Python.
    with silent_libvirt_socket(tmp_path, hold_seconds=2.0) as uri:
        timer = interrupt_after(0.3)
        started = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            _native.backup({"connect": uri, "repo": str(tmp_path / "repo")})
        elapsed = time.monotonic() - started
        timer.join()
    assert elapsed >= 1.9, f"returned after {elapsed:.1f} s, before the engine had finished"


def test_the_gil_is_released_while_the_engine_works(tmp_path: Path) -> None:
    ticks = 0
    done = threading.Event()

    def count() -> None:
        nonlocal ticks
        while not done.is_set():
            ticks += 1
            time.sleep(0.01)

    counter = threading.Thread(target=count)
    with silent_libvirt_socket(tmp_path, hold_seconds=1.0) as uri:
        counter.start()
        with pytest.raises(virt_rbd_backup.BackupError):
            _native.list_domains(uri, [])
        done.set()
        counter.join()
    # About 100 ticks in a second when Python threads can run; a held GIL would allow ~10
    # (one per poll) at most.
    assert ticks > 40


def test_python_dash_m_help_works_on_the_installed_package(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "virt_rbd_backup", "--help"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: virt-rbd-backup")
    assert "backup" in proc.stdout
    assert "list" in proc.stdout


def test_core_log_records_reach_python_logging_under_their_module_names(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # libvirt's in-process test driver: a run with no RBD disk creates the repository.
    repo = tmp_path / "repo"
    report = virt_rbd_backup.backup(repo=repo, connect="test:///default")
    assert [d.status for d in report.domains] == ["skipped"]
    (repo / "not-a-domain").mkdir()
    with caplog.at_level(logging.DEBUG, logger="virt_rbd_backup"):
        virt_rbd_backup.prune(keep_last=1, repo=repo, dry_run=True)
    assert [(r.name, r.levelno) for r in caplog.records if "not-a-domain" in r.getMessage()] == [
        ("virt_rbd_backup.engine.prune", logging.DEBUG)
    ]
    # Configured after the import and changed between calls: the level is honoured each time.
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="virt_rbd_backup"):
        virt_rbd_backup.prune(keep_last=1, repo=repo, dry_run=True)
    assert not [r for r in caplog.records if "not-a-domain" in r.getMessage()]


def test_cli_verbosity_flags_decide_which_core_records_are_shown(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    virt_rbd_backup.backup(repo=repo, connect="test:///default")
    (repo / "not-a-domain").mkdir()

    def stderr_of(*flags: str) -> str:
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "virt_rbd_backup",
                "prune",
                *flags,
                "--keep-last",
                "1",
                "--dry-run",
                "--repo",
                str(repo),
            ],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            timeout=60,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        return proc.stderr

    record = f"virt_rbd_backup.engine.prune: DEBUG: prune: not-a-domain in {repo} is not a domain folder"
    assert record in stderr_of("-vv").splitlines()
    assert "not-a-domain" not in stderr_of("-v")
    assert "not-a-domain" not in stderr_of()
    assert "not-a-domain" not in stderr_of("-q")
