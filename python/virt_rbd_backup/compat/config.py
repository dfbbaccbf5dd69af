"""The original tool's ``config.py`` as a module: ``config.TARGET_REPO`` and the others.

Scripts of the original imported their ``config.py`` (the one next to them); here it is read
on first use of an attribute, from the first of:

1. the file given to :func:`load`;
2. ``config.py`` in the folder of the running script (``sys.argv[0]``), as given and with
   symlinks resolved, where the original's ``import config`` found it;
3. ``config.py`` in the current directory (a unit's ``WorkingDirectory=``).

It is run in a namespace of its own and checked as the command line checks it
(:func:`virt_rbd_backup.config.load_legacy_config`): it must belong to root or to the user
running it, ``TARGET_REPO`` must be set, and wrong types are errors naming the file and the
variable. A variable the file leaves out reads as the tool's default: ``NUMBER_OF_PROCESSES``
4, ``LIBVIRT_CONNECTION`` ``qemu:///system``, ``TARGET_KEYFILE`` ``None`` (the password then
comes from ``RESTIC_PASSWORD*`` in the environment).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from .. import DEFAULT_CONNECT, ResticTarget
from .._native import UsageError
from ..config import LEGACY_CONFIG_NAME, LEGACY_NAMES, LegacyConfig, legacy_config_candidates, load_legacy_config

__all__ = [
    "LIBVIRT_CONNECTION",
    "NUMBER_OF_PROCESSES",
    "TARGET_KEYFILE",
    "TARGET_REPO",
    "load",
    "path",
    "restic_target",
]

DEFAULT_PROCESSES = 4
"""``NUMBER_OF_PROCESSES`` when the file leaves it out (the tool's default workers)."""

# Declared for readers and type checkers; the values come from `__getattr__` on first use.
NUMBER_OF_PROCESSES: int
"""Domains backed up at once."""
LIBVIRT_CONNECTION: str
"""libvirt URI."""
TARGET_REPO: str
"""The restic repository."""
TARGET_KEYFILE: str | None
"""The file holding the restic repository's password (``None``: from the environment)."""

_loaded: LegacyConfig | None = None


def _candidates() -> list[Path]:
    script = sys.argv[0] if sys.argv and sys.argv[0] else None
    return legacy_config_candidates(Path.cwd(), script, script_first=True)


def load(file: str | os.PathLike[str] | None = None) -> LegacyConfig:
    """Read the configuration (again): ``file``, or the first ``config.py`` found (see above).

    Raises:
        UsageError: No ``config.py`` was found, or it is not a valid configuration.
    """
    global _loaded
    if file is None:
        for candidate in _candidates():
            if candidate.is_file():
                file = candidate
                break
        else:
            searched = ", ".join(str(c) for c in _candidates())
            raise UsageError(f"no {LEGACY_CONFIG_NAME} of the original tool found (looked for {searched})")
    _loaded = load_legacy_config(file)
    return _loaded


def _config() -> LegacyConfig:
    return _loaded if _loaded is not None else load()


def path() -> Path:
    """Return the file the configuration was read from."""
    return _config().path


def restic_target() -> ResticTarget:
    """Return the restic target of the configuration (``TARGET_REPO``, ``TARGET_KEYFILE``)."""
    config = _config()
    return ResticTarget(repository=config.TARGET_REPO, password_file=config.TARGET_KEYFILE)


def __getattr__(name: str) -> Any:
    """``NUMBER_OF_PROCESSES`` and the others, read from the file on first use."""
    if name not in LEGACY_NAMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(_config(), name)
    if value is None and name == "NUMBER_OF_PROCESSES":
        return DEFAULT_PROCESSES
    if value is None and name == "LIBVIRT_CONNECTION":
        return DEFAULT_CONNECT
    return value
