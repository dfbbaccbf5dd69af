"""Configuration files (python/virt_rbd_backup/config.py): the native TOML file, the original
tool's config.py, which file applies, and how the command line overrides them (cli.parse_args).

Every error must name the file and the key (or variable) at fault, since an operator reads it
in a systemd journal with nothing else to go on.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from virt_rbd_backup import ResticTarget, UsageError, cli, config
from virt_rbd_backup.config import BackupConfig, find_config, load_config, load_legacy_config, load_toml_config

EXAMPLE = Path(__file__).resolve().parents[2] / "contrib" / "config.toml.example"

FULL_TOML = """
connect = "qemu+ssh://hv1/system"
domains = ["web1", "db1"]
workers = 2
queue_depth = 16
freeze = "required"
freeze_mountpoints = ["/", "/var"]
agent_timeout = 10
freeze_timeout = 20
ceph_timeout = 30
compress = "zstd:5"
bwlimit = "200M"
repo = "/srv/backups"
mode = "full"
full_every = 7
metrics_file = "/var/lib/node-exporter/virt-rbd-backup.prom"
json = true

[restic]
repository = "/srv/restic"
password_file = "/etc/virt-rbd-backup/restic.pass"
binary = "/usr/local/bin/restic"
"""


@pytest.fixture(autouse=True)
def no_etc_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """/etc/virt-rbd-backup/config.toml is a path under tmp that tests may create."""
    etc = tmp_path / "etc" / "config.toml"
    monkeypatch.setattr(config, "DEFAULT_CONFIG", etc)
    return etc


def write(path: Path, text: str, mode: int = 0o644) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)
    return path


# -------------------------------------------------------------------------- TOML


def test_every_key_of_the_toml_file_is_read(tmp_path: Path) -> None:
    cfg = load_toml_config(write(tmp_path / "c.toml", FULL_TOML))
    assert cfg.settings() == {
        "connect": "qemu+ssh://hv1/system",
        "domains": ["web1", "db1"],
        "workers": 2,
        "queue_depth": 16,
        "freeze": "required",
        "freeze_mountpoints": ["/", "/var"],
        "agent_timeout": 10,
        "freeze_timeout": 20,
        "ceph_timeout": 30,
        "compress": "zstd:5",
        "bwlimit": 200 << 20,
        "repo": "/srv/backups",
        "mode": "full",
        "full_every": 7,
        "metrics_file": "/var/lib/node-exporter/virt-rbd-backup.prom",
        "json": True,
        "restic_repo": "/srv/restic",
        "restic_password_file": "/etc/virt-rbd-backup/restic.pass",
        "restic_binary": "/usr/local/bin/restic",
    }
    assert not cfg.legacy


def test_every_setting_is_an_option_of_backup_or_prune() -> None:
    # A setting the CLI does not know would be read and then silently dropped.
    backup, prune = cli.parse_args([]), cli.parse_args(["prune"])
    for field in BackupConfig.__dataclass_fields__:
        if field not in ("path", "legacy"):
            owner = prune if field.startswith("keep_") else backup
            assert hasattr(owner, field), field


def test_keep_settings_fill_prune_and_flags_override_them(tmp_path: Path) -> None:
    conf = BackupConfig(path=tmp_path / "c.toml", keep_daily=7, keep_weekly=4, keep_within=86400)
    args = cli.parse_args(["prune", "--keep-weekly", "2"], config=conf)
    assert (args.keep_daily, args.keep_weekly, args.keep_within, args.keep_last) == (7, 2, 86400, None)


def test_an_empty_file_sets_nothing(tmp_path: Path) -> None:
    assert load_toml_config(write(tmp_path / "c.toml", "")).settings() == {}


def test_the_shipped_example_is_valid_and_documents_every_key(tmp_path: Path) -> None:
    text = EXAMPLE.read_text()
    # Settings are commented out as `#key = value` (prose as `# ...`): with every one of them
    # uncommented the example must be a complete, valid file.
    lines = [line[1:] if line.startswith("#") and line[1:2] not in (" ", "") else line for line in text.splitlines()]
    uncommented = write(tmp_path / "example.toml", "\n".join(lines))
    assert set(load_toml_config(uncommented).settings()) == set(BackupConfig.__dataclass_fields__) - {
        "path",
        "legacy",
    }


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('colour = "blue"', "colour"),
        ("worker = 4", "worker"),
        ('[restic]\nrepository = "/r"\nkeyfile = "/k"', "restic.keyfile"),
        ("[prune]\nkeep_daily = 7", "prune"),
    ],
)
def test_unknown_keys_are_errors_naming_the_key_and_the_file(tmp_path: Path, text: str, key: str) -> None:
    path = write(tmp_path / "c.toml", text)
    with pytest.raises(UsageError) as info:
        load_toml_config(path)
    message = str(info.value)
    assert str(path) in message
    assert f"unknown key '{key}'" in message
    assert "workers" in message or "restic.repository" in message, "lists the known keys"


@pytest.mark.parametrize(
    ("text", "key", "got"),
    [
        ('workers = "4"', "workers", "'4' (a string)"),
        ("workers = 0", "workers", "0 (a whole number)"),
        ("workers = true", "workers", "True (a boolean)"),
        ("queue_depth = 2.5", "queue_depth", "2.5 (a decimal number)"),
        ('domains = "web1"', "domains", "'web1' (a string)"),
        ("domains = [1, 2]", "domains", "[1, 2] (a list)"),
        ('freeze = "sometimes"', "freeze", "'sometimes' (a string)"),
        ('mode = "incremental"', "mode", "'incremental'"),
        ('json = "yes"', "json", "'yes' (a string)"),
        ("repo = 7", "repo", "7 (a whole number)"),
        ('connect = ""', "connect", "''"),
        ('restic = "/srv/restic"', "restic", "'/srv/restic' (a string)"),
        ("[restic]\nrepository = 7", "restic.repository", "7 (a whole number)"),
        ("ceph_timeout = 0", "ceph_timeout", "0 (a whole number)"),
        ("compress = 5", "compress", "5 (a whole number)"),
        ('bwlimit = "fast"', "bwlimit", "'fast' (a string)"),
        ("bwlimit = 0", "bwlimit", "0 (a whole number)"),
        ("bwlimit = 1.5", "bwlimit", "1.5 (a decimal number)"),
        ("bwlimit = true", "bwlimit", "True (a boolean)"),
    ],
)
def test_wrong_types_are_errors_naming_the_key_and_the_file(tmp_path: Path, text: str, key: str, got: str) -> None:
    path = write(tmp_path / "c.toml", text)
    with pytest.raises(UsageError) as info:
        load_toml_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: key '{key}' must be ")
    assert got in message


def test_a_password_in_the_file_is_refused_without_echoing_it(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", '[restic]\nrepository = "/r"\npassword = "hunter2"')
    with pytest.raises(UsageError, match="password_file") as info:
        load_toml_config(path)
    assert "hunter2" not in str(info.value)
    assert str(path) in str(info.value)


def test_a_restic_table_without_repository_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", '[restic]\npassword_file = "/k"')
    with pytest.raises(UsageError, match=r"\[restic\] table needs 'repository'"):
        load_toml_config(path)


def test_toml_syntax_errors_name_the_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", "workers = 4\nrepo = /srv/backups\n")
    with pytest.raises(UsageError, match=rf"^{path}: not valid TOML: .*line 2"):
        load_toml_config(path)


def test_an_unreadable_file_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="does not exist"):
        load_config(tmp_path / "missing.toml")
    with pytest.raises(UsageError, match="cannot read"):
        load_toml_config(tmp_path)


# -------------------------------------------------------------------------- the original's config.py

ORIGINAL = """
# The original tool's config.py, as operators wrote it.
import os

NUMBER_OF_PROCESSES = 3
LIBVIRT_CONNECTION = "qemu:///system"
TARGET_REPO = "/srv/restic"
TARGET_KEYFILE = os.path.join("/etc", "restic.key")
HELPER = "anything else is ignored"
"""


def test_legacy_config_maps_onto_the_options(tmp_path: Path) -> None:
    path = write(tmp_path / "config.py", ORIGINAL)
    cfg = load_config(path)
    assert cfg.legacy
    assert cfg.path == path
    assert cfg.settings() == {
        "connect": "qemu:///system",
        "workers": 3,
        "restic_repo": "/srv/restic",
        "restic_password_file": "/etc/restic.key",
    }


def test_legacy_config_runs_in_its_own_namespace(tmp_path: Path) -> None:
    path = write(tmp_path / "config.py", ORIGINAL + "\nassert __name__ == 'config'\nleak = 1\n")
    load_legacy_config(path)
    assert "leak" not in globals()


def test_legacy_config_may_leave_out_all_but_target_repo(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path / "config.py", 'TARGET_REPO = "/srv/restic"\n'))
    assert cfg.settings() == {"restic_repo": "/srv/restic"}


def test_a_relative_keyfile_is_found_next_to_the_config_as_the_original_found_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path / "opt" / "config.py", 'TARGET_REPO = "/r"\nTARGET_KEYFILE = "restic.key"\n')
    monkeypatch.chdir(tmp_path)
    keyfile = str(tmp_path / "opt" / "restic.key")
    found = [load_legacy_config(p).TARGET_KEYFILE for p in (path, Path("opt/config.py"))]
    assert found == [keyfile, keyfile]


def test_legacy_keyfile_may_be_a_path_object(tmp_path: Path) -> None:
    text = 'from pathlib import Path\nTARGET_REPO = "/r"\nTARGET_KEYFILE = Path("/etc/k")\n'
    assert load_legacy_config(write(tmp_path / "config.py", text)).TARGET_KEYFILE == "/etc/k"


@pytest.mark.parametrize(
    ("text", "name", "got"),
    [
        ('NUMBER_OF_PROCESSES = "4"\nTARGET_REPO = "/r"', "NUMBER_OF_PROCESSES", "'4' (a string)"),
        ('NUMBER_OF_PROCESSES = 0\nTARGET_REPO = "/r"', "NUMBER_OF_PROCESSES", "0 (a whole number)"),
        ('NUMBER_OF_PROCESSES = True\nTARGET_REPO = "/r"', "NUMBER_OF_PROCESSES", "True (a boolean)"),
        ('LIBVIRT_CONNECTION = None\nTARGET_REPO = "/r"', "LIBVIRT_CONNECTION", "None (a NoneType)"),
        ("TARGET_REPO = ['/r']", "TARGET_REPO", "['/r'] (a list)"),
        ('TARGET_REPO = "/r"\nTARGET_KEYFILE = 5', "TARGET_KEYFILE", "5 (a whole number)"),
    ],
)
def test_legacy_wrong_types_name_the_file_and_the_variable(tmp_path: Path, text: str, name: str, got: str) -> None:
    path = write(tmp_path / "config.py", text)
    with pytest.raises(UsageError) as info:
        load_legacy_config(path)
    assert str(info.value).startswith(f"{path}: {name} must be ")
    assert got in str(info.value)


def test_legacy_config_without_target_repo_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path / "config.py", "NUMBER_OF_PROCESSES = 2\n")
    with pytest.raises(UsageError, match=rf"^{path}: TARGET_REPO is not set"):
        load_legacy_config(path)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('TARGET_REPO = "/r"\nx = 1 / 0\n', r", line 2: ZeroDivisionError: division by zero"),
        ('TARGET_REPO = "/r"\nimport sys\nsys.exit(3)\n', r", line 3: SystemExit: 3"),
        ("TARGET_REPO = (\n", r", line 1: SyntaxError: "),
    ],
)
def test_a_legacy_config_that_fails_names_its_line(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path / "config.py", text)
    with pytest.raises(UsageError) as info:
        load_legacy_config(path)
    assert str(info.value).startswith(f"{path}{expected}")


def test_a_world_writable_legacy_config_is_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    path = write(tmp_path / "config.py", f'open("{marker}", "w").close()\nTARGET_REPO = "/r"\n', mode=0o666)
    with pytest.raises(UsageError, match="writable by everyone"):
        load_legacy_config(path)
    assert not marker.exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give the file to another user")
def test_a_legacy_config_of_another_user_is_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    path = write(tmp_path / "config.py", f'open("{marker}", "w").close()\nTARGET_REPO = "/r"\n')
    os.chown(path, 65534, 65534)
    with pytest.raises(UsageError, match="belongs to uid 65534"):
        load_legacy_config(path)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (ORIGINAL, True),
        ("TARGET_REPO: str = '/r'\n", True),
        ("DEBUG = True\nDATABASES = {}\n", False),
        ("def f():\n    TARGET_REPO = 1\n", False),
        ("this is not python", False),
        ("import os\ntry:\n    TARGET_REPO = os.environ['R']\nexcept KeyError:\n    TARGET_REPO = '/r'\n", True),
        ("from site_settings import *\n", True),
        ("globals()['TARGET_REPO'] = '/r'\n", True),
    ],
    ids=["original", "annotated", "other-project", "in-a-function", "not-python", "in-try", "star-import", "globals"],
)
def test_only_the_originals_config_py_is_recognised(tmp_path: Path, text: str, expected: bool) -> None:
    assert config.looks_like_legacy_config(write(tmp_path / "config.py", text)) is expected


# -------------------------------------------------------------------------- which file


def test_no_file_no_config(tmp_path: Path) -> None:
    assert find_config(None, tmp_path) is None


def test_the_etc_file_is_read_when_it_exists(tmp_path: Path, no_etc_config: Path) -> None:
    write(no_etc_config, "workers = 2\n")
    cfg = find_config(None, tmp_path)
    assert cfg is not None
    assert cfg.path == no_etc_config
    assert cfg.workers == 2


def test_the_originals_config_py_in_the_current_directory_wins_with_a_warning(
    tmp_path: Path, no_etc_config: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write(no_etc_config, "workers = 2\n")
    write(tmp_path / "config.py", ORIGINAL)
    cfg = find_config(None, tmp_path)
    assert cfg is not None
    assert cfg.legacy
    assert cfg.workers == 3
    assert str(no_etc_config) in caplog.text
    assert "ignored" in caplog.text


def test_another_projects_config_py_is_never_run(tmp_path: Path, no_etc_config: Path) -> None:
    marker = tmp_path / "ran"
    write(tmp_path / "config.py", f'open("{marker}", "w").close()\nDEBUG = True\n')
    assert find_config(None, tmp_path) is None
    write(no_etc_config, "workers = 2\n")
    cfg = find_config(None, tmp_path)
    assert cfg is not None
    assert cfg.path == no_etc_config
    assert not marker.exists()


def test_an_explicit_file_wins_over_both(tmp_path: Path, no_etc_config: Path) -> None:
    write(no_etc_config, "workers = 2\n")
    write(tmp_path / "config.py", ORIGINAL)
    explicit = write(tmp_path / "mine.toml", "workers = 5\n")
    cfg = find_config(explicit, tmp_path)
    assert cfg is not None
    assert cfg.workers == 5


def test_an_explicit_py_file_is_the_originals_kind(tmp_path: Path) -> None:
    # Named anything: `--config /opt/virt-rbd-backup/config.py` or a copy under another name.
    cfg = find_config(write(tmp_path / "old-settings.py", ORIGINAL), tmp_path / "elsewhere")
    assert cfg is not None
    assert cfg.legacy


def test_the_config_py_next_to_the_program_run_is_found_as_the_originals_import_found_it(
    tmp_path: Path, no_etc_config: Path
) -> None:
    # The unit runs elsewhere; the console script was installed (or linked) where main.py was.
    install = tmp_path / "opt"
    write(install / "config.py", ORIGINAL)
    program = write(install / "virt-rbd-backup", "#!/bin/sh\n", 0o755)
    cfg = find_config(None, tmp_path / "elsewhere", program)
    assert cfg is not None
    assert (cfg.legacy, cfg.path) == (True, install / "config.py")
    # A symlink to the program: its own folder first, then the folder it resolves to.
    links = tmp_path / "bin"
    links.mkdir()
    (links / "main.py").symlink_to(program)
    assert config.legacy_config_candidates(tmp_path / "wd", links / "main.py") == [
        tmp_path / "wd" / "config.py",
        links / "config.py",
        install / "config.py",
    ]
    cfg = find_config(None, tmp_path / "wd", links / "main.py")
    assert cfg is not None
    assert cfg.path == install / "config.py"


def test_the_working_directory_comes_before_the_programs_folder(tmp_path: Path, no_etc_config: Path) -> None:
    write(tmp_path / "wd" / "config.py", ORIGINAL.replace("NUMBER_OF_PROCESSES = 3", "NUMBER_OF_PROCESSES = 7"))
    write(tmp_path / "opt" / "config.py", ORIGINAL)
    program = write(tmp_path / "opt" / "virt-rbd-backup", "", 0o755)
    cfg = find_config(None, tmp_path / "wd", program)
    assert cfg is not None
    assert cfg.workers == 7
    # A script's own `import config` searched its folder first.
    assert config.legacy_config_candidates(tmp_path / "wd", program, script_first=True)[0] == (
        tmp_path / "opt" / "config.py"
    )


def test_config_given_as_a_folder_means_its_config_py(tmp_path: Path, no_etc_config: Path) -> None:
    write(tmp_path / "opt" / "config.py", ORIGINAL)
    cfg = find_config(tmp_path / "opt", tmp_path / "elsewhere")
    assert cfg is not None
    assert (cfg.legacy, cfg.path) == (True, tmp_path / "opt" / "config.py")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match=r"folder without a config\.py"):
        find_config(tmp_path / "empty", tmp_path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("TARGET_REPO = '/srv/restic'\nNUMBER_OF_PROCESSES = (\n", "not valid Python"),
        ("try:\n    TARGET_REPO = undefined_name\nexcept KeyError:\n    pass\n", "NameError"),
        ("NUMBER_OF_PROCESSES = 2\n", "TARGET_REPO is not set"),
        ("TARGET_REPO = '/srv/restic'\nLEGACY_EXIT_STATUS = 'yes'\n", "LEGACY_EXIT_STATUS must be True or False"),
    ],
    ids=["syntax-error", "raises", "no-target", "bad-legacy-exit-status"],
)
def test_a_config_py_that_cannot_be_used_never_falls_back_to_the_default_repository(
    tmp_path: Path,
    no_etc_config: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    text: str,
    message: str,
) -> None:
    write(no_etc_config, 'repo = "/srv/local"\n')
    write(tmp_path / "config.py", text)
    with pytest.raises(UsageError, match=message):
        find_config(None, tmp_path)
    # The command: exit 2 naming the file, and no backup at all (not into repo, not into /etc's).
    monkeypatch.chdir(tmp_path)
    ran: list[Any] = []
    monkeypatch.setattr(cli, "_backup_json", lambda **options: ran.append(options))
    assert cli.main([]) == 2
    assert str(tmp_path / "config.py") in capsys.readouterr().err
    assert ran == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_config_py_stops_the_run(tmp_path: Path, no_etc_config: Path) -> None:
    write(tmp_path / "config.py", ORIGINAL, 0o000)
    with pytest.raises(UsageError, match="cannot read it"):
        find_config(None, tmp_path)


def test_a_config_py_that_is_a_folder_stops_the_run(tmp_path: Path, no_etc_config: Path) -> None:
    (tmp_path / "config.py").mkdir()
    with pytest.raises(UsageError, match="not a regular file"):
        find_config(None, tmp_path)


def test_another_projects_config_py_is_passed_over_with_a_warning(
    tmp_path: Path, no_etc_config: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write(tmp_path / "config.py", "DEBUG = True\n")
    assert find_config(None, tmp_path) is None
    assert f"ignoring {tmp_path / 'config.py'}" in caplog.text


def test_python_dash_m_does_not_take_the_packages_own_config_module(tmp_path: Path, no_etc_config: Path) -> None:
    # `python -m virt_rbd_backup`: argv[0] is the package's __main__.py, next to its config.py.
    main_py = Path(config.__file__).with_name("__main__.py")
    assert find_config(None, tmp_path, main_py) is None


# -------------------------------------------------------------------------- precedence


@pytest.mark.parametrize(("text", "rate"), [('bwlimit = "1.5G"', 3 << 29), ("bwlimit = 1048576", 1 << 20)])
def test_bwlimit_is_a_rate_or_bytes_per_second(tmp_path: Path, text: str, rate: int) -> None:
    # Text is read by the core's parser, as --bwlimit is; the setting is then what the flag gives.
    assert load_toml_config(write(tmp_path / "c.toml", text)).bwlimit == rate


def cfg_of(tmp_path: Path, text: str) -> BackupConfig:
    return load_toml_config(write(tmp_path / "c.toml", text))


def test_the_file_overrides_the_defaults(tmp_path: Path) -> None:
    args = cli.parse_args([], config=cfg_of(tmp_path, FULL_TOML))
    assert (args.connect, args.workers, args.queue_depth, args.freeze) == ("qemu+ssh://hv1/system", 2, 16, "required")
    assert args.domains == ["web1", "db1"]
    assert args.freeze_mountpoints == ["/", "/var"]
    assert (args.agent_timeout, args.freeze_timeout, args.mode, args.full_every) == (10, 20, "full", 7)
    assert (args.ceph_timeout, args.compress, args.bwlimit) == (30, "zstd:5", 200 << 20)
    assert args.repo == "/srv/backups"
    assert args.metrics_file == "/var/lib/node-exporter/virt-rbd-backup.prom"
    assert args.json
    assert (args.restic_repo, args.restic_password_file, args.restic_binary) == (
        "/srv/restic",
        "/etc/virt-rbd-backup/restic.pass",
        "/usr/local/bin/restic",
    )


def test_flags_override_the_file(tmp_path: Path) -> None:
    argv = [
        "--workers",
        "8",
        "--domain",
        "mail1",
        "--freeze",
        "off",
        "--agent-timeout",
        "5",
        "--connect",
        "qemu:///session",
        "--freeze-mountpoint",
        "/srv",
    ]
    args = cli.parse_args(argv, config=cfg_of(tmp_path, FULL_TOML))
    assert args.workers == 8
    # A list given on the command line replaces the file's; it is not added to it.
    assert args.domains == ["mail1"]
    assert args.freeze_mountpoints == ["/srv"]
    assert (args.freeze, args.agent_timeout, args.connect) == ("off", 5, "qemu:///session")
    assert args.queue_depth == 16, "what the flags leave alone still comes from the file"


def test_a_flag_equal_to_the_default_still_overrides_the_file(tmp_path: Path) -> None:
    args = cli.parse_args(["--workers", "4", "--mode", "auto"], config=cfg_of(tmp_path, FULL_TOML))
    assert (args.workers, args.mode) == (4, "auto")


def test_repo_on_the_command_line_replaces_the_files_restic_target(tmp_path: Path) -> None:
    args = cli.parse_args(["--repo", "/mnt/b"], config=cfg_of(tmp_path, FULL_TOML))
    assert args.repo == "/mnt/b"
    assert args.restic_repo is None
    assert args.restic_password_file is None


def test_another_restic_repo_does_not_get_the_files_password_file(tmp_path: Path) -> None:
    cfg = cfg_of(tmp_path, FULL_TOML)
    args = cli.parse_args(["--restic-repo", "/mnt/other"], config=cfg)
    assert (args.restic_repo, args.restic_password_file) == ("/mnt/other", None)
    args = cli.parse_args(["--restic-repo", "/srv/restic"], config=cfg)
    assert args.restic_password_file == "/etc/virt-rbd-backup/restic.pass"


def test_plan_takes_the_same_settings_as_backup(tmp_path: Path) -> None:
    args = cli.parse_args(["plan"], config=cfg_of(tmp_path, FULL_TOML))
    assert (args.workers, args.domains, args.restic_repo) == (2, ["web1", "db1"], "/srv/restic")


def test_list_takes_neither_target_nor_domains_from_the_file(tmp_path: Path) -> None:
    args = cli.parse_args(["list"], config=cfg_of(tmp_path, FULL_TOML))
    assert (args.repo, args.restic_repo, args.domains) == (None, None, [])
    assert args.connect == "qemu+ssh://hv1/system"
    args = cli.parse_args(["list", "--restic-repo", "/srv/restic"], config=cfg_of(tmp_path, FULL_TOML))
    assert args.restic_password_file == "/etc/virt-rbd-backup/restic.pass"


def test_repository_commands_take_the_files_repository(tmp_path: Path) -> None:
    cfg = cfg_of(tmp_path, 'repo = "/srv/backups"\njson = true\n')
    assert cli.parse_args(["verify"], config=cfg).repo == "/srv/backups"
    assert not cli.parse_args(["verify"], config=cfg).json, "json is a backup setting"
    assert cli.parse_args(["prune", "--keep-last", "1"], config=cfg).repo == "/srv/backups"
    assert cli.parse_args(["restore", "web1", "--to", "/x"], config=cfg).repo == "/srv/backups"
    assert cli.parse_args(["verify", "--repo", "/b"], config=cfg).repo == "/b"


def test_verify_takes_the_files_libvirt_uri_for_source(tmp_path: Path) -> None:
    cfg = cfg_of(tmp_path, FULL_TOML)
    args = cli.parse_args(["verify", "--source"], config=cfg)
    assert (args.connect, args.repo) == ("qemu+ssh://hv1/system", "/srv/backups")
    assert cli.parse_args(["plan"], config=cfg).ceph_timeout == 30


def test_restore_reads_from_the_configured_restic_repository(tmp_path: Path) -> None:
    args = cli.parse_args(["restore", "web1", "--to", "/x"], config=cfg_of(tmp_path, FULL_TOML))
    assert (args.restic_repo, args.restic_password_file) == ("/srv/restic", "/etc/virt-rbd-backup/restic.pass")


def test_main_reads_the_file_and_flags_override_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    seen: dict[str, object] = {}

    def backup_json(**options: object) -> dict[str, object]:
        options.pop("on_event")
        seen.update(options)
        return {"version": 1, "started_at": 0.0, "finished_at": 1.0, "domains": []}

    monkeypatch.setattr(cli, "_backup_json", backup_json)
    monkeypatch.chdir(tmp_path)
    path = write(tmp_path / "c.toml", 'workers = 2\nqueue_depth = 3\n[restic]\nrepository = "/srv/restic"\n')
    assert cli.main(["--config", str(path), "--workers", "6"]) == 0
    assert (seen["workers"], seen["queue_depth"]) == (6, 3)
    assert seen["restic"] == ResticTarget(repository="/srv/restic")


def test_a_bad_file_exits_2_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    path = write(tmp_path / "c.toml", "colour = 1\n")
    for argv in (["--config", str(path)], ["verify", "--config", str(path)]):
        assert cli.main(argv) == 2
        assert capsys.readouterr().err == (
            f"error: {path}: unknown key 'colour'; known keys: agent_timeout, bwlimit, ceph_timeout, compress, "
            "connect, consistency, domains, freeze, "
            "freeze_mountpoints, freeze_timeout, full_every, json, keep_daily, keep_hourly, keep_last, "
            "keep_monthly, keep_weekly, keep_within, keep_yearly, layout, legacy_exit_status, metrics_file, "
            "mode, on_failure, queue_depth, repo, repo_key_file, restic, s3_ca_file, s3_credentials, "
            "s3_endpoint, s3_region, workers\n"
        )


def test_a_config_py_in_the_current_directory_makes_a_bare_run_the_originals_job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, object] = {}

    def backup_json(**options: object) -> dict[str, object]:
        options.pop("on_event")
        seen.update(options)
        return {"version": 1, "started_at": 0.0, "finished_at": 1.0, "domains": []}

    monkeypatch.setattr(cli, "_backup_json", backup_json)
    write(tmp_path / "config.py", ORIGINAL)
    monkeypatch.chdir(tmp_path)
    assert cli.main([]) == 0
    assert (seen["connect"], seen["workers"], seen["domains"]) == ("qemu:///system", 3, [])
    assert seen["restic"] == ResticTarget(repository="/srv/restic", password_file="/etc/restic.key")
