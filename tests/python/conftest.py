"""Fixtures shared by the unit tests that run the real engine without the lab."""

from __future__ import annotations

from pathlib import Path

import pytest

import virt_rbd_backup


@pytest.fixture
def empty_repo(tmp_path: Path) -> Path:
    """A repository without backups, made by the engine (a backup of libvirt's test driver,
    whose only domain has no RBD disk)."""
    repo = tmp_path / "repo"
    report = virt_rbd_backup.backup(connect="test:///default", repo=repo)
    assert [d.status for d in report.domains] == ["skipped"]
    return repo
