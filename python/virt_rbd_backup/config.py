"""Configuration files: the native TOML file and the original tool's ``config.py``.

Reading a configuration file is argument conversion: it yields the same settings the command
line sets, and the command line overrides them. Two kinds exist:

**The native file** (TOML, default ``/etc/virt-rbd-backup/config.toml``)::

    connect = "qemu:///system"          # libvirt URI
    domains = ["web1", "db1"]           # default: every domain
    workers = 4                         # domains at once
    queue_depth = 8                     # reads in flight per image
    freeze = "auto"                     # auto | required | off
    freeze_mountpoints = ["/", "/var"]  # default: all
    agent_timeout = 30                  # seconds
    freeze_timeout = 30                 # seconds
    ceph_timeout = 60                   # seconds per Ceph monitor or OSD operation
    compress = "zstd:3"                 # zstd or zstd:LEVEL (1-19); default: uncompressed
    bwlimit = "200M"                    # read rate of the run: "200M", "1.5G", or bytes per second
    repo = "/var/lib/virt-rbd-backup"   # the repository: a folder or "s3://BUCKET/PREFIX"
    layout = "blocks"                   # a new folder repository: folder (default) | blocks
    repo_key_file = "/etc/virt-rbd-backup/repo.key"   # encrypts a new block repository (0600)
    s3_endpoint = "https://rgw.backup.example:7443"   # S3 settings of an s3:// repository;
    s3_region = "default"                             #   the keys go into an AWS credentials
    s3_credentials = "/etc/virt-rbd-backup/s3.credentials"  # file (0600), never in here
    s3_ca_file = "/etc/virt-rbd-backup/s3-ca.pem"
    mode = "auto"                       # auto | full
    full_every = 7                      # a new chain every N backups of a disk
    metrics_file = "/var/lib/prometheus/node-exporter/virt-rbd-backup.prom"
    json = false                        # print the JSON report instead of lines
    on_failure = "/usr/local/sbin/page-oncall"   # run when a domain failed; JSON report on stdin
    keep_daily = 7                      # prune: keep_last, keep_hourly, keep_daily, keep_weekly,
    keep_weekly = 4                     #   keep_monthly, keep_yearly (counts) and
    keep_within = "3d"                  #   keep_within (a duration)
    legacy_exit_status = false          # exit 0 even when domains failed (the original's status)

    [restic]                            # present: back up into restic instead of `repo`
    repository = "/srv/restic"
    password_file = "/etc/virt-rbd-backup/restic.pass"
    binary = "restic"

Every key is optional. An unknown key, a value of the wrong type, or a password written into
the file is an error naming the key and the file.

**The original tool's** ``config.py``: a Python file setting ``NUMBER_OF_PROCESSES``,
``LIBVIRT_CONNECTION``, ``TARGET_REPO`` and ``TARGET_KEYFILE``. It is run, as the original
imported it, in a namespace of its own (``runpy.run_path``), and mapped to ``workers``,
``connect``, and a restic target (``TARGET_REPO`` with the password file ``TARGET_KEYFILE``).
One name of ours may be added to it: ``LEGACY_EXIT_STATUS = True`` (``legacy_exit_status``).
Other names in it are ignored, as the original ignored them. Since it is code run with the
tool's privileges, it must belong to root or to the user running the tool and must not be
writable by everyone.

Which file is used (:func:`find_config`): ``--config PATH`` if given (a name ending in ``.py``
is the original's kind, a folder means its ``config.py``, anything else TOML); otherwise the
original's ``config.py`` where the original's ``import config`` found it, next to the
``main.py`` being replaced (:func:`legacy_config_candidates`): the current directory (the
unit's ``WorkingDirectory=``), then the folder of the program being run (a console script
installed or linked there), as given and with symlinks resolved; otherwise
``/etc/virt-rbd-backup/config.toml`` if it exists. When both a ``config.py`` of the original
tool and the ``/etc`` file exist, ``config.py`` wins (it is what the replaced unit ran with) and
a warning names both.

A ``config.py`` found there is the original's if it sets one of the four names outside a
function or class (:func:`looks_like_legacy_config`); it is then run, and any problem with it
(it cannot be read, is not Python, raises, lacks ``TARGET_REPO``, has a wrong type, belongs to
someone else) stops the tool with a message naming the file: a run that found the original's
configuration never falls back to the ``/etc`` file or the default repository. A ``config.py``
that is plainly another project's (none of the names) is not run, with a warning naming it.
"""

from __future__ import annotations

import ast
import dataclasses
import logging
import os
import runpy
import stat
import sys
import tomllib
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ._native import UsageError, parse_rate

__all__ = [
    "DEFAULT_CONFIG",
    "LEGACY_CONFIG_NAME",
    "LEGACY_NAMES",
    "BackupConfig",
    "LegacyConfig",
    "find_config",
    "legacy_config_candidates",
    "load_config",
    "load_legacy_config",
    "load_toml_config",
    "looks_like_legacy_config",
]

log = logging.getLogger(__name__)

DEFAULT_CONFIG = Path("/etc/virt-rbd-backup/config.toml")
"""The native configuration file read when no ``--config`` is given and it exists."""

LEGACY_CONFIG_NAME = "config.py"
"""The original tool's configuration file, looked for in the current directory."""

LEGACY_NAMES = ("NUMBER_OF_PROCESSES", "LIBVIRT_CONNECTION", "TARGET_REPO", "TARGET_KEYFILE")
"""The variables of the original tool's ``config.py``."""

LEGACY_EXIT_STATUS_NAME = "LEGACY_EXIT_STATUS"
"""The one variable of ours a ``config.py`` may set: ``True`` for ``--legacy-exit-status``."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class BackupConfig:
    """Settings read from a configuration file; ``None`` means "not set in the file".

    The field names are those of the command line's options (``restic_repo`` is
    ``--restic-repo``), so the command line can override them one by one.
    """

    path: Path
    """The file they were read from."""
    legacy: bool = False
    """Whether it is the original tool's ``config.py``."""
    connect: str | None = None
    domains: tuple[str, ...] | None = None
    workers: int | None = None
    queue_depth: int | None = None
    freeze: str | None = None
    freeze_mountpoints: tuple[str, ...] | None = None
    consistency: str | None = None
    agent_timeout: int | None = None
    freeze_timeout: int | None = None
    ceph_timeout: int | None = None
    compress: str | None = None
    bwlimit: int | None = None
    repo: str | None = None
    mode: str | None = None
    full_every: int | None = None
    metrics_file: str | None = None
    json: bool | None = None
    legacy_exit_status: bool | None = None
    restic_repo: str | None = None
    restic_password_file: str | None = None
    restic_binary: str | None = None
    on_failure: str | None = None
    keep_last: int | None = None
    keep_hourly: int | None = None
    keep_daily: int | None = None
    keep_weekly: int | None = None
    keep_monthly: int | None = None
    keep_yearly: int | None = None
    keep_within: int | None = None
    """Seconds (the file says ``"7d"``)."""
    layout: str | None = None
    repo_key_file: str | None = None
    s3_endpoint: str | None = None
    s3_region: str | None = None
    s3_credentials: str | None = None
    s3_ca_file: str | None = None

    def settings(self) -> dict[str, Any]:
        """Return the settings the file sets, by option name (lists for the list options)."""
        result: dict[str, Any] = {}
        for field in dataclasses.fields(self):
            if field.name in ("path", "legacy"):
                continue
            value = getattr(self, field.name)
            if value is not None:
                result[field.name] = list(value) if isinstance(value, tuple) else value
        return result


@dataclasses.dataclass(frozen=True, kw_only=True)
class LegacyConfig:
    """The four variables of the original tool's ``config.py``, checked."""

    path: Path
    """The file."""
    NUMBER_OF_PROCESSES: int | None = None
    """Domains backed up at once."""
    LIBVIRT_CONNECTION: str | None = None
    """libvirt URI."""
    TARGET_REPO: str
    """The restic repository."""
    TARGET_KEYFILE: str | None = None
    """The file holding the restic repository's password."""
    LEGACY_EXIT_STATUS: bool | None = None
    """Ours, not the original's: ``True`` exits 0 even when domains failed."""

    def to_backup_config(self) -> BackupConfig:
        """Map the variables onto the tool's settings."""
        return BackupConfig(
            path=self.path,
            legacy=True,
            connect=self.LIBVIRT_CONNECTION,
            workers=self.NUMBER_OF_PROCESSES,
            restic_repo=self.TARGET_REPO,
            restic_password_file=self.TARGET_KEYFILE,
            legacy_exit_status=self.LEGACY_EXIT_STATUS,
        )


def _kind(value: object) -> str:
    """Name a value's type the way an operator reads it."""
    names = {
        bool: "a boolean",
        int: "a whole number",
        float: "a decimal number",
        str: "a string",
        list: "a list",
        dict: "a table",
    }
    return names.get(type(value), f"a {type(value).__name__}")


def _describe(value: object) -> str:
    return f"{value!r} ({_kind(value)})"


# ---------------------------------------------------------------------------- value checks
# Each returns the converted value or raises ValueError with what was expected.


def _string(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError("a non-empty string")
    return value


def _positive(value: object) -> int:
    # bool is an int in Python; `workers = true` is a mistake, not 1.
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError("a whole number of at least 1")
    return value


def _boolean(value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError("true or false")
    return value


def _strings(value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ValueError("a list of non-empty strings")
    return tuple(value)


def _rate(value: object) -> int:
    # Text is read by the core's parser (as --bwlimit is); a number is bytes per second.
    if isinstance(value, str):
        try:
            return parse_rate(value)
        except UsageError:
            pass
    elif isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    raise ValueError('a rate such as "200M", "1.5G" or "512K", or a whole number of bytes per second')


def _duration(value: object) -> int:
    # The parser --keep-within uses (the package's; imported here since the package imports
    # nothing of this module but is loaded first).
    from . import parse_duration

    if isinstance(value, str):
        try:
            return parse_duration(value)
        except UsageError:
            pass
    raise ValueError('a duration such as "7d", "12h" or "1w3d"')


def _choice(*choices: str) -> Callable[[object], str]:
    def check(value: object) -> str:
        if value not in choices:
            raise ValueError("one of " + ", ".join(f'"{c}"' for c in choices))
        assert isinstance(value, str)
        return value

    return check


# TOML key -> (BackupConfig field, check). Keys are the option names with underscores.
_TOP_LEVEL: dict[str, tuple[str, Callable[[object], Any]]] = {
    "connect": ("connect", _string),
    "domains": ("domains", _strings),
    "workers": ("workers", _positive),
    "queue_depth": ("queue_depth", _positive),
    "freeze": ("freeze", _choice("auto", "required", "off")),
    "freeze_mountpoints": ("freeze_mountpoints", _strings),
    "consistency": ("consistency", _choice("auto", "group", "per-disk")),
    "agent_timeout": ("agent_timeout", _positive),
    "freeze_timeout": ("freeze_timeout", _positive),
    "ceph_timeout": ("ceph_timeout", _positive),
    "compress": ("compress", _string),
    "bwlimit": ("bwlimit", _rate),
    "repo": ("repo", _string),
    "mode": ("mode", _choice("auto", "full")),
    "full_every": ("full_every", _positive),
    "metrics_file": ("metrics_file", _string),
    "json": ("json", _boolean),
    "on_failure": ("on_failure", _string),
    "keep_last": ("keep_last", _positive),
    "keep_hourly": ("keep_hourly", _positive),
    "keep_daily": ("keep_daily", _positive),
    "keep_weekly": ("keep_weekly", _positive),
    "keep_monthly": ("keep_monthly", _positive),
    "keep_yearly": ("keep_yearly", _positive),
    "keep_within": ("keep_within", _duration),
    "legacy_exit_status": ("legacy_exit_status", _boolean),
    "layout": ("layout", _choice("folder", "blocks")),
    "repo_key_file": ("repo_key_file", _string),
    "s3_endpoint": ("s3_endpoint", _string),
    "s3_region": ("s3_region", _string),
    "s3_credentials": ("s3_credentials", _string),
    "s3_ca_file": ("s3_ca_file", _string),
}
_RESTIC: dict[str, tuple[str, Callable[[object], Any]]] = {
    "repository": ("restic_repo", _string),
    "password_file": ("restic_password_file", _string),
    "binary": ("restic_binary", _string),
}
_PASSWORD_KEYS = ("password", "restic_password", "key")


def _unknown_key(path: Path, key: str, known: Mapping[str, object], table: str = "") -> UsageError:
    name = f"{table}.{key}" if table else key
    if table == "restic" and key in _PASSWORD_KEYS:
        return UsageError(
            f"{path}: unknown key '{name}': a password never goes into the configuration; "
            "put it into a file of its own (mode 0600) and name it with password_file"
        )
    expected = ", ".join(sorted(f"{table}.{k}" if table else k for k in known))
    return UsageError(f"{path}: unknown key '{name}'; known keys: {expected}")


def load_toml_config(path: str | os.PathLike[str]) -> BackupConfig:
    """Read the native TOML configuration file.

    Raises:
        UsageError: The file cannot be read or is not TOML, or a key is unknown or its value
            of the wrong type; the message names the file and the key.
    """
    path = Path(path)
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise UsageError(f"cannot read the configuration file {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{path}: not valid TOML: {exc}") from None

    values: dict[str, Any] = {}
    for key, value in data.items():
        if key == "restic":
            if not isinstance(value, dict):
                raise UsageError(f"{path}: key 'restic' must be a table ([restic]), not {_describe(value)}")
            for sub_key, sub_value in value.items():
                if sub_key not in _RESTIC:
                    raise _unknown_key(path, sub_key, _RESTIC, "restic")
                field, check = _RESTIC[sub_key]
                values[field] = _checked(path, f"restic.{sub_key}", sub_value, check)
            continue
        if key not in _TOP_LEVEL:
            raise _unknown_key(path, key, {**_TOP_LEVEL, "restic": None})
        field, check = _TOP_LEVEL[key]
        values[field] = _checked(path, key, value, check)
    if ("restic_password_file" in values or "restic_binary" in values) and "restic_repo" not in values:
        raise UsageError(f"{path}: the [restic] table needs 'repository'")
    return BackupConfig(path=path, **values)


def _checked(path: Path, key: str, value: object, check: Callable[[object], Any]) -> Any:
    try:
        return check(value)
    except ValueError as exc:
        raise UsageError(f"{path}: key '{key}' must be {exc}, not {_describe(value)}") from None


def _mentions_legacy_names(tree: ast.Module) -> bool:
    """Whether a module sets one of :data:`LEGACY_NAMES` outside functions and classes.

    Assignments nested in ``if``/``try``/``with`` at module level count, and so do a star
    import or a name in a string (``globals()["TARGET_REPO"] = ...``): such a file is the
    original's, run to find out, rather than silently passed over.
    """
    stack: list[ast.AST] = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.Lambda):
            continue
        if isinstance(node, ast.Name) and node.id in LEGACY_NAMES:
            return True
        if isinstance(node, ast.Constant) and node.value in LEGACY_NAMES:
            return True
        if isinstance(node, ast.ImportFrom) and any(alias.name == "*" for alias in node.names):
            return True
        stack.extend(ast.iter_child_nodes(node))
    return False


def _is_legacy_config(path: Path) -> bool:
    """Tell whether a found ``config.py`` is the original tool's, without running it.

    Raises:
        UsageError: It cannot be read, or is not Python: it may be the original's, and a run
            must not go on as if it were not there.
    """
    try:
        source = path.read_bytes()
    except OSError as exc:
        raise UsageError(
            f"found {path} but cannot read it ({exc.strerror or exc}); it may be the original tool's "
            "configuration, so the backup does not run without it: fix it, or pass --config"
        ) from None
    try:
        tree = ast.parse(source, filename=os.fspath(path))
    except (SyntaxError, ValueError) as exc:
        line = getattr(exc, "lineno", None)
        where = f"{path}, line {line}" if line else str(path)
        raise UsageError(
            f"{where}: not valid Python ({exc}); it may be the original tool's configuration, so "
            "the backup does not run without it: fix it, or pass --config"
        ) from None
    return _mentions_legacy_names(tree)


def looks_like_legacy_config(path: str | os.PathLike[str]) -> bool:
    """Tell whether a ``config.py`` is the original tool's, without running it.

    It is if it sets one of :data:`LEGACY_NAMES` outside functions and classes (read from its
    syntax tree); a file that cannot be read or parsed is not.
    """
    try:
        return _is_legacy_config(Path(path))
    except UsageError:
        return False


def _check_trusted(path: Path) -> None:
    """Refuse to run a file that someone other than root or us could have written."""
    try:
        info = path.stat()
    except OSError as exc:
        raise UsageError(f"cannot read the configuration file {path}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(info.st_mode):
        raise UsageError(f"the configuration file {path} is not a regular file")
    if info.st_uid not in (0, os.geteuid()):
        raise UsageError(
            f"{path} belongs to uid {info.st_uid}: refusing to run it as Python code "
            "(it must belong to root or to the user running virt-rbd-backup)"
        )
    if info.st_mode & stat.S_IWOTH:
        raise UsageError(f"{path} is writable by everyone: refusing to run it as Python code (chmod o-w)")


def _run_error(path: Path, exc: BaseException) -> UsageError:
    """An error raised while running config.py, with the line of that file it came from."""
    line: int | None = None
    if isinstance(exc, SyntaxError):
        line = exc.lineno
    else:
        for frame in traceback.extract_tb(exc.__traceback__):
            if Path(frame.filename) == path:
                line = frame.lineno
    where = f"{path}, line {line}" if line else str(path)
    return UsageError(f"{where}: {type(exc).__name__}: {exc}")


def load_legacy_config(path: str | os.PathLike[str]) -> LegacyConfig:
    """Run the original tool's ``config.py`` in a namespace of its own and check its variables.

    ``TARGET_REPO`` is required (the original had no other target); the others may be left
    out and then take the tool's defaults (``TARGET_KEYFILE``: the password comes from
    ``RESTIC_PASSWORD*`` in the environment). A relative ``TARGET_KEYFILE`` is taken relative
    to the file's folder, where the original ran.

    Raises:
        UsageError: The file is not trusted (see the module doc), raises when run, or a
            variable is missing or of the wrong type; the message names the file and the
            variable.
    """
    path = Path(path).absolute()
    _check_trusted(path)
    try:
        namespace = runpy.run_path(os.fspath(path), run_name="config")
    except (Exception, SystemExit) as exc:
        # Whatever the operator's file raises (or exits with) is reported as its failure.
        raise _run_error(path, exc) from None

    def get(name: str, check: Callable[[object], Any], expected: str) -> Any:
        if name not in namespace:
            return None
        value = namespace[name]
        try:
            return check(value)
        except ValueError:
            raise UsageError(f"{path}: {name} must be {expected}, not {_describe(value)}") from None

    def path_like(value: object) -> str:
        if isinstance(value, os.PathLike):
            value = os.fspath(value)
        if not isinstance(value, str) or not value:
            raise ValueError
        return value

    repo = get("TARGET_REPO", _string, "a non-empty string (the restic repository)")
    if repo is None:
        raise UsageError(f"{path}: TARGET_REPO is not set; the original tool's config.py names its restic repository")
    keyfile = get("TARGET_KEYFILE", path_like, "a path (the restic password file)")
    if keyfile is not None and not os.path.isabs(keyfile):
        # The original ran in its own folder, where a relative key file was found; so does
        # `--config /opt/virt-rbd-backup/config.py` run from anywhere.
        keyfile = os.fspath(path.parent / keyfile)
    return LegacyConfig(
        path=path,
        LEGACY_EXIT_STATUS=get(LEGACY_EXIT_STATUS_NAME, _boolean, "True or False"),
        NUMBER_OF_PROCESSES=get("NUMBER_OF_PROCESSES", _positive, "a whole number of at least 1"),
        LIBVIRT_CONNECTION=get("LIBVIRT_CONNECTION", _string, "a non-empty string (a libvirt URI)"),
        TARGET_REPO=repo,
        TARGET_KEYFILE=keyfile,
    )


def load_config(path: str | os.PathLike[str]) -> BackupConfig:
    """Read a configuration file of either kind.

    A name ending in ``.py`` is the original tool's ``config.py``, anything else TOML.

    Raises:
        UsageError: The file does not exist or is not a valid configuration.
    """
    path = Path(path)
    if not path.exists():
        raise UsageError(f"the configuration file {path} does not exist")
    if path.suffix == ".py":
        return load_legacy_config(path).to_backup_config()
    return load_toml_config(path)


def legacy_config_candidates(
    cwd: str | os.PathLike[str], script: str | os.PathLike[str] | None, *, script_first: bool = False
) -> list[Path]:
    """Where the original tool's ``config.py`` is looked for, in order, without repeats.

    The folder of the ``main.py`` being replaced: the current directory ``cwd`` (the unit's
    ``WorkingDirectory=``), then the folder of ``script`` (the program run, ``sys.argv[0]``: a
    console script installed or linked next to ``config.py``) as given, then with symlinks
    resolved (the folder Python's ``import config`` searched for a linked ``main.py``).
    ``script_first`` puts the script's folders first, the order of a script's own ``import``.
    """
    here = [Path(cwd).absolute() / LEGACY_CONFIG_NAME]
    beside: list[Path] = []
    if script:
        script = Path(script)
        if script.is_file():
            beside.append(script.absolute().parent / LEGACY_CONFIG_NAME)
            beside.append(script.resolve().parent / LEGACY_CONFIG_NAME)
    ordered = beside + here if script_first else here + beside
    result: list[Path] = []
    for candidate in ordered:
        if candidate not in result:
            result.append(candidate)
    return result


def find_config(
    explicit: str | os.PathLike[str] | None,
    cwd: str | os.PathLike[str] | None = None,
    script: str | os.PathLike[str] | None = None,
) -> BackupConfig | None:
    """Find and read the configuration file that applies (see the module doc for the order).

    Args:
        explicit: ``--config PATH``, if given (a folder: its ``config.py``).
        cwd: The current directory (default: the process's).
        script: The program being run (default: ``sys.argv[0]``).

    Returns:
        The settings, or ``None`` when no configuration file applies.

    Raises:
        UsageError: The file that applies is not a valid configuration, or a ``config.py`` was
            found that may be the original's but cannot be read.
    """
    if explicit is not None:
        explicit = Path(explicit)
        if explicit.is_dir():
            legacy = explicit / LEGACY_CONFIG_NAME
            if not legacy.is_file():
                raise UsageError(f"--config {explicit} is a folder without a {LEGACY_CONFIG_NAME} of the original tool")
            return load_legacy_config(legacy).to_backup_config()
        return load_config(explicit)
    if script is None and sys.argv and sys.argv[0]:
        script = sys.argv[0]
    if script is not None and Path(script).resolve().parent == Path(__file__).resolve().parent:
        # `python -m virt_rbd_backup`: the program is this package's __main__.py, whose folder
        # holds this very module (config.py), not the original's.
        script = None
    for legacy in legacy_config_candidates(os.getcwd() if cwd is None else cwd, script):
        if not os.path.lexists(legacy):
            continue
        if not legacy.is_file():
            raise UsageError(f"found {legacy} but it is not a regular file; fix it, or pass --config")
        if not _is_legacy_config(legacy):
            log.warning(
                "ignoring %s: it sets none of %s, so it is not the original tool's configuration",
                legacy,
                ", ".join(LEGACY_NAMES),
            )
            continue
        if DEFAULT_CONFIG.exists():
            log.warning(
                "using %s (the original tool's configuration); %s is ignored",
                legacy,
                DEFAULT_CONFIG,
            )
        return load_legacy_config(legacy).to_backup_config()
    if DEFAULT_CONFIG.exists():
        return load_toml_config(DEFAULT_CONFIG)
    return None
